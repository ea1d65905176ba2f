//! AVX2 kernels (with FMA and F16C): byte products through `vpmaddubsw` + `vpmaddwd`.

super::simd::simd_kernels!("avx2,fma,f16c", crate::cpu::dot::Level::Avx2);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    // No saturation: every caller's unsigned operand is below 64, so a pair sums to under 2^15.
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8_i8(a: __m256i, s: __m256i) -> __m256i {
    // |a| * (s with a's sign): the activations never hold -128 (they are quantized to +-127), so
    // negating them cannot overflow, and |a| <= 128 as u8 keeps a pair under 2^15.
    _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(s, a)),
        _mm256_set1_epi16(1),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales(a: i32, b: i32) -> __m256i {
    // i16 lanes: `vpmaddwd` applies them to the i16 pair sums of `vpmaddubsw`.
    _mm256_set_m128i(_mm_set1_epi16(b as i16), _mm_set1_epi16(a as i16))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_scaled(u: __m256i, s: __m256i, scales: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high_bits(qh: u32) -> __m256i {
    // ggml's `bytes_from_bits_32`: byte i gets the byte of qh holding bit i, every other bit is
    // forced to one, and the byte is all ones exactly when bit i was set.
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuffle);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_and_si256(
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)),
        _mm256_set1_epi8(0x10),
    )
}
