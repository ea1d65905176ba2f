//! AVX2 kernels (with FMA and F16C): byte products through `vpmaddubsw` + `vpmaddwd`.

super::simd::simd_kernels!("avx2,fma,f16c", crate::cpu::dot::Level::Avx2);

pub(super) const KERNELS: Kernels = SIMD256;

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

/// `vpmaddubsw` saturates pairs of products above `i16::MAX`, so unsigned operands must stay
/// below 128 and Q8_0 has no packed kernel here.
const UNSIGNED_Q8: bool = false;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(acc, dot_u8_i8(u, s))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// [`super::RawActs::quantize_rows`] with the 32-value blocks quantized in AVX2.
///
/// # Safety
/// As for [`super::RawActs::quantize_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_rows(
    acts: &super::RawActs,
    x: &[f32],
    tokens: std::ops::Range<usize>,
) {
    super::quantize_rows_with(acts, x, tokens, |x| quantize_q8(x))
}

/// `quantize_row_q8_1_ref` for one block, vectorized: the same operations in the same order on
/// every value, so the results are identical for finite input (NaNs may pick other maxima).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8(x: &[f32; QK]) -> super::Q8 {
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let a: [__m256; 4] = std::array::from_fn(|i| _mm256_and_ps(v[i], abs_mask));
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    // C's roundf: truncate, then step away from zero where the dropped part is at least a half
    // (`p - trunc(p)` is exact).
    let half = _mm256_set1_ps(0.5);
    let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let q: [__m256i; 4] = std::array::from_fn(|i| {
        let p = _mm256_mul_ps(v[i], id);
        let t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let up = _mm256_cmp_ps(
            _mm256_and_ps(_mm256_sub_ps(p, t), abs_mask),
            half,
            _CMP_GE_OQ,
        );
        let step = _mm256_or_ps(_mm256_and_ps(p, sign_mask), _mm256_set1_ps(1.0));
        _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, step)))
    });
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let sum = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256(sum, 1),
    );
    let sum = _mm_add_epi32(sum, _mm_unpackhi_epi64(sum, sum));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 1)));
    // Saturating packs keep the order within 128-bit halves; the permutation restores it.
    let bytes = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; QK];
    _mm256_storeu_si256(qs.as_mut_ptr().cast(), bytes);
    super::Q8 {
        d: to_f16(d),
        s: to_f16(sum as f32 * d),
        qs,
        sum,
    }
}

/// f32 to f16, rounding to nearest even like `half::f16::from_f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn to_f16(v: f32) -> half::f16 {
    let h = _mm_cvtps_ph(_mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT);
    half::f16::from_bits(_mm_extract_epi16(h, 0) as u16)
}
