//! AVX-512 kernels: byte products through VNNI's `vpdpbusd`, and the fifth bits of Q5 quants
//! through byte masks (AVX-512 BW/VL).
//!
//! The shared 256-bit kernels (see `simd.rs`) are compiled here with those instructions; for the
//! legacy types, the row kernels are replaced by 512-bit ones that take two blocks per
//! instruction, and the packed kernels by ones that take two groups of rows per instruction.

super::simd::simd_kernels!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    crate::cpu::dot::Level::Avx512
);

pub(super) const KERNELS: Kernels = Kernels {
    q4_0: tile512_q4_0,
    q4_1: tile512_q4_1,
    q5_0: tile512_q5_0,
    q5_1: tile512_q5_1,
    q8_0: tile512_q8_0,
    packed_q4_0: Some(packed512_q4_0),
    packed_q4_1: Some(packed512_q4_1),
    packed_q5_0: Some(packed512_q5_0),
    packed_q5_1: Some(packed512_q5_1),
    packed_q8_0: Some(packed512_q8_0),
    ..SIMD256
};

/// Two consecutive blocks of 32-value quants, decoded for a 512-bit product: the quants as
/// unsigned bytes (block `b` in the low 256 bits, `b + 1` in the high ones), and each block's
/// scale `d` and offset (weights are `d * q + offset`) in lanes 0 and 1 of two vectors.
struct Pair {
    q: __m512i,
    d: __m128,
    offset: __m128,
}

/// 16 bytes at `p` and at `p + stride`, as one 256-bit vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn two_halves(p: *const u8, stride: usize) -> __m256i {
    let lo = _mm_loadu_si128(p.cast());
    _mm256_inserti128_si256(
        _mm256_castsi128_si256(lo),
        _mm_loadu_si128(p.add(stride).cast()),
        1,
    )
}

/// The two f16 values at `p` and `p + stride` (the blocks' `d`) and the two after them (`m`):
/// `([d0, d1, _, _], [m0, m1, _, _])`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn two_scales(p: *const u8, stride: usize) -> (__m128, __m128) {
    let a = p.cast::<i32>().read_unaligned();
    let b = p.add(stride).cast::<i32>().read_unaligned();
    let v = _mm_cvtph_ps(_mm_setr_epi32(a, b, 0, 0)); // [d0, m0, d1, m1]
    let v = _mm_shuffle_ps(v, v, 0b11_01_10_00); // [d0, d1, m0, m1]
    (v, _mm_movehl_ps(v, v))
}

/// The nibbles of two blocks' 16 quant bytes (at `p` and `p + stride`) in value order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn two_nibbles(p: *const u8, stride: usize) -> __m512i {
    let q = two_halves(p, stride);
    // [qs0, qs1, qs0 >> 4, qs1 >> 4], masked, then 128-bit lanes reordered to
    // [lo0, hi0, lo1, hi1]: each block's low nibbles (values 0..16) before its high ones.
    let z = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
    let z = _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
    _mm512_shuffle_i64x2(z, z, 0b11_01_10_00)
}

/// The fifth bits of two Q5 blocks (little-endian u32s at `p` and `p + stride`) as `0x10` bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn two_high_bits(p: *const u8, stride: usize) -> __m512i {
    let lo = u64::from(p.cast::<u32>().read_unaligned());
    let hi = u64::from(p.add(stride).cast::<u32>().read_unaligned());
    _mm512_maskz_mov_epi8(lo | (hi << 32), _mm512_set1_epi8(0x10))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_q4_0(blk: *const u8) -> Pair {
    let (d, _) = two_scales(blk, 18);
    let q = two_nibbles(blk.add(2), 18);
    Pair {
        q,
        d,
        offset: _mm_mul_ps(d, _mm_set1_ps(-8.0)),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_q4_1(blk: *const u8) -> Pair {
    let (d, m) = two_scales(blk, 20);
    Pair {
        q: two_nibbles(blk.add(4), 20),
        d,
        offset: m,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_q5_0(blk: *const u8) -> Pair {
    let (d, _) = two_scales(blk, 22);
    let q = _mm512_or_si512(two_nibbles(blk.add(6), 22), two_high_bits(blk.add(2), 22));
    Pair {
        q,
        d,
        offset: _mm_mul_ps(d, _mm_set1_ps(-16.0)),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_q5_1(blk: *const u8) -> Pair {
    let (d, m) = two_scales(blk, 24);
    let q = _mm512_or_si512(two_nibbles(blk.add(8), 24), two_high_bits(blk.add(4), 24));
    Pair { q, d, offset: m }
}

/// Q8_0's signed quants with the sign bit flipped (plus 128, unsigned), offset by -128 d.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_q8_0(blk: *const u8) -> Pair {
    let (d, _) = two_scales(blk, 34);
    let lo = _mm256_loadu_si256(blk.add(2).cast());
    let q = _mm512_inserti64x4(
        _mm512_castsi256_si512(lo),
        _mm256_loadu_si256(blk.add(36).cast()),
        1,
    );
    let q = _mm512_xor_si512(q, _mm512_set1_epi8(-128));
    Pair {
        q,
        d,
        offset: _mm_mul_ps(d, _mm_set1_ps(-128.0)),
    }
}

/// A 512-bit row kernel: blocks two at a time through `$pair`, an odd last block through the
/// 256-bit `$decode`.
macro_rules! row512 {
    ($name:ident, $bytes:expr, $act_bytes:expr, $pair:ident, $decode:ident) => {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name<const N: usize>(w: *const u8, x: &ActView, t0: usize) -> [f32; N] {
            // Spreads lane 0 over the low 256 bits and lane 1 over the high ones.
            let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let mut acc = [_mm512_setzero_ps(); N];
            let mut off = [_mm_setzero_ps(); N];
            let mut b = 0;
            while b + 2 <= x.nb {
                let pair = $pair(w.add(b * $bytes));
                for i in 0..N {
                    let t = t0 + i;
                    let a = x
                        .blocks
                        .add(t * x.row_bytes + b * $act_bytes + ($act_bytes - QK));
                    let y = _mm512_inserti64x4(
                        _mm512_castsi256_si512(load(a)),
                        load(a.add($act_bytes)),
                        1,
                    );
                    let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), pair.q, y);
                    let j = t * x.nb + b;
                    // [dx0, dx1, 0, 0] and [s0, s1, 0, 0] of the two activation blocks.
                    let dx = _mm_castpd_ps(_mm_load_sd(x.d.add(j).cast()));
                    let s = _mm_castpd_ps(_mm_load_sd(x.s.add(j).cast()));
                    let scale = _mm512_castps128_ps512(_mm_mul_ps(pair.d, dx));
                    let scale = _mm512_permutexvar_ps(spread, scale);
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[i]);
                    off[i] = _mm_fmadd_ps(pair.offset, s, off[i]);
                }
                b += 2;
            }
            let mut last = [_mm256_setzero_ps(); N];
            let mut last_off = [0.0f32; N];
            if b < x.nb {
                let q = $decode(w.add(b * $bytes));
                block_products::<N, $act_bytes, false>(q, x, t0, b, &mut last, &mut last_off);
            }
            std::array::from_fn(|i| {
                let o = _mm_add_ss(off[i], _mm_movehdup_ps(off[i]));
                _mm512_reduce_add_ps(acc[i]) + _mm_cvtss_f32(o) + hsum(last[i]) + last_off[i]
            })
        }
    };
}

row512!(row512_q4_0, 18, 34, pair_q4_0, decode_q4_0);
row512!(row512_q4_1, 20, 36, pair_q4_1, decode_q4_1);
row512!(row512_q5_0, 22, 34, pair_q5_0, decode_q5_0);
row512!(row512_q5_1, 24, 36, pair_q5_1, decode_q5_1);
row512!(row512_q8_0, 34, 34, pair_q8_0, decode_q8_0_unsigned);

/// [`pair_q8_0`]'s form for one block, for the 256-bit tail of [`row512_q8_0`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn decode_q8_0_unsigned(blk: *const u8) -> (__m256i, f32, f32) {
    let d = f16_pair(blk).0;
    (
        _mm256_xor_si256(load(blk.add(2)), _mm256_set1_epi8(-128)),
        d,
        -128.0 * d,
    )
}

tile!(tile512_q4_0, row512_q4_0);
tile!(tile512_q4_1, row512_q4_1);
tile!(tile512_q5_0, row512_q5_0);
tile!(tile512_q5_1, row512_q5_1);
tile!(tile512_q8_0, row512_q8_0);

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

/// `vpdpbusd` sums its four products in 32 bits, so unsigned operands may use all 8 bits.
const UNSIGNED_Q8: bool = true;

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, a, b)
}

/// 32 bytes at `p0 + at` and at `p1 + at`, as one 512-bit vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn load_pair(p0: *const u8, p1: *const u8, at: usize) -> __m512i {
    _mm512_inserti64x4(
        _mm512_castsi256_si512(load(p0.add(at))),
        load(p1.add(at)),
        1,
    )
}

/// Eight f16 values at `p0 + at` and eight at `p1 + at`, as sixteen f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f16_pair16(p0: *const u8, p1: *const u8, at: usize) -> __m512 {
    let lo = _mm_loadu_si128(p0.add(at).cast());
    _mm512_cvtph_ps(_mm256_set_m128i(_mm_loadu_si128(p1.add(at).cast()), lo))
}

/// [`decode_packed`] for the same block of two packed groups at once (group-blocks at `p0` and
/// `p1`): lanes 0..8 hold the first group's rows, lanes 8..16 the second's, each computed as
/// the 256-bit kernel computes it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn decode_packed_pair<const TY: u8>(
    p0: *const u8,
    p1: *const u8,
) -> ([__m512i; 8], __m512, __m512) {
    let d = f16_pair16(p0, p1, 0);
    let m4 = _mm512_set1_epi8(0x0F);
    let nibbles = |at: usize| -> [__m512i; 8] {
        let q: [__m512i; 4] = std::array::from_fn(|j| load_pair(p0, p1, at + 32 * j));
        std::array::from_fn(|j| {
            if j < 4 {
                _mm512_and_si512(q[j], m4)
            } else {
                _mm512_and_si512(_mm512_srli_epi16(q[j - 4], 4), m4)
            }
        })
    };
    let with_high_bits = |q: [__m512i; 8], at: usize| -> [__m512i; 8] {
        std::array::from_fn(|j| {
            let lo = u64::from(p0.add(at + 4 * j).cast::<u32>().read_unaligned());
            let hi = u64::from(p1.add(at + 4 * j).cast::<u32>().read_unaligned());
            let bits = _mm512_maskz_mov_epi8(lo | (hi << 32), _mm512_set1_epi8(0x10));
            _mm512_or_si512(q[j], bits)
        })
    };
    match TY {
        Q4_0 => (nibbles(16), d, _mm512_mul_ps(d, _mm512_set1_ps(-8.0))),
        Q4_1 => (nibbles(32), d, f16_pair16(p0, p1, 16)),
        Q5_0 => (
            with_high_bits(nibbles(48), 16),
            d,
            _mm512_mul_ps(d, _mm512_set1_ps(-16.0)),
        ),
        Q5_1 => (with_high_bits(nibbles(64), 32), d, f16_pair16(p0, p1, 16)),
        _ => (
            std::array::from_fn(|j| {
                _mm512_xor_si512(load_pair(p0, p1, 16 + 32 * j), _mm512_set1_epi8(-128))
            }),
            d,
            _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
        ),
    }
}

/// [`packed_tokens`] for two adjacent packed groups (at `g0` and `g0 + group_bytes`): sixteen
/// rows, written to `y[t * y_stride..][..16]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn packed_pair_tokens<const N: usize, const TY: u8, const ACT_BYTES: usize>(
    g0: *const u8,
    group_bytes: usize,
    group_block_bytes: usize,
    x: &ActView,
    t0: usize,
    y: *mut f32,
    y_stride: usize,
) {
    let mut acc = [_mm512_setzero_ps(); N];
    // The two groups are read side by side, so "PREFETCH bytes ahead" of either is the block
    // that many bytes ahead in that reading order: past the end of this pair it lies in the
    // next pair, not in the other group of this one (which is already being read).
    let ahead = (PREFETCH / group_block_bytes).max(1);
    for b in 0..x.nb {
        let p0 = g0.add(b * group_block_bytes);
        let p1 = p0.add(group_bytes);
        let next = b + ahead;
        let f0 = if next < x.nb {
            g0.wrapping_add(next * group_block_bytes)
        } else {
            g0.wrapping_add(2 * group_bytes + (next - x.nb) * group_block_bytes)
        };
        for f in [f0, f0.wrapping_add(group_bytes)] {
            for line in (0..group_block_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(f.wrapping_add(line).cast());
            }
        }
        let (q, d, offset) = decode_packed_pair::<TY>(p0, p1);
        for (i, acc) in acc.iter_mut().enumerate() {
            let t = t0 + i;
            let a = x
                .blocks
                .add(t * x.row_bytes + b * ACT_BYTES + (ACT_BYTES - QK));
            let mut s = [_mm512_setzero_si512(); 2];
            for (j, &q) in q.iter().enumerate() {
                let four = _mm512_set1_epi32(a.add(4 * j).cast::<i32>().read_unaligned());
                s[j % 2] = _mm512_dpbusd_epi32(s[j % 2], q, four);
            }
            let k = t * x.nb + b;
            let p = _mm512_cvtepi32_ps(_mm512_add_epi32(s[0], s[1]));
            *acc = _mm512_fmadd_ps(p, _mm512_mul_ps(d, _mm512_set1_ps(*x.d.add(k))), *acc);
            *acc = _mm512_fmadd_ps(offset, _mm512_set1_ps(*x.s.add(k)), *acc);
        }
    }
    for (i, a) in acc.into_iter().enumerate() {
        _mm512_storeu_ps(y.add((t0 + i) * y_stride), a);
    }
}

/// Fewer tokens than this go through the 256-bit kernel (`$single`), one group at a time. With
/// few tokens a product streams its weights from memory, and one stream per thread reads them
/// about twice as fast as the pair kernel's two (a Q8_0 LM head of 178 MB, one thread, one
/// token: 18 GiB/s against 8.6); with more, the weights are reused from cache for every token
/// and the pair kernel computes faster (up to 17 % at 64 tokens).
const PAIR_MIN_TOKENS: usize = 8;

/// A [`super::PackedFn`] over pairs of groups (an odd last group through the 256-bit kernel), or
/// one group at a time for fewer than [`PAIR_MIN_TOKENS`] tokens.
macro_rules! packed512 {
    ($name:ident, $single:ident, $ty:ident, $act_bytes:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(packed: &[u8], x: &ActView, y: *mut f32, y_stride: usize) {
            if x.n_tokens < PAIR_MIN_TOKENS {
                return $single(packed, x, y, y_stride);
            }
            let gb = Packed::group_block_bytes(GgmlType::$ty);
            let group_bytes = x.nb * gb;
            let groups = packed.len() / group_bytes;
            for g in (0..groups).step_by(2) {
                let (group, y) = (packed.as_ptr().add(g * group_bytes), y.add(g * PACK_ROWS));
                let mut t = 0;
                macro_rules! tokens {
                    ($n:literal) => {
                        if g + 1 < groups {
                            packed_pair_tokens::<$n, $ty, $act_bytes>(
                                group,
                                group_bytes,
                                gb,
                                x,
                                t,
                                y,
                                y_stride,
                            )
                        } else {
                            packed_tokens::<$n, $ty, $act_bytes>(group, gb, x, t, y, y_stride)
                        }
                    };
                }
                while t + 4 <= x.n_tokens {
                    tokens!(4);
                    t += 4;
                }
                match x.n_tokens - t {
                    1 => tokens!(1),
                    2 => tokens!(2),
                    3 => tokens!(3),
                    _ => {}
                }
            }
        }
    };
}

packed512!(packed512_q4_0, packed_q4_0, Q4_0, 34);
packed512!(packed512_q4_1, packed_q4_1, Q4_1, 36);
packed512!(packed512_q5_0, packed_q5_0, Q5_0, 34);
packed512!(packed512_q5_1, packed_q5_1, Q5_1, 36);
packed512!(packed512_q8_0, packed_q8_0, Q8_0, 34);
