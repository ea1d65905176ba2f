//! AVX-512 kernels: byte products through VNNI's `vpdpbusd`, and the fifth bits of Q5 quants
//! through byte masks (AVX-512 BW/VL), on 256-bit vectors.

super::simd::simd_kernels!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    crate::cpu::dot::Level::Avx512
);

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_i8_i8(a: __m256i, s: __m256i) -> __m256i {
    // |a| * (s with a's sign); the activations never hold -128, so the negation is exact.
    _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        _mm256_abs_epi8(a),
        _mm256_sign_epi8(s, a),
    )
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scales(a: i32, b: i32) -> __m256i {
    // i32 lanes: `vpdpbusd` sums four bytes per lane, four lanes per 16 bytes.
    _mm256_set_m128i(_mm_set1_epi32(b), _mm_set1_epi32(a))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_scaled(u: __m256i, s: __m256i, scales: __m256i) -> __m256i {
    _mm256_mullo_epi32(dot_u8_i8(u, s), scales)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn high_bits(qh: u32) -> __m256i {
    _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10))
}
