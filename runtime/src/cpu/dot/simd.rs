//! The 256-bit kernels, written once and compiled per instruction set.
//!
//! [`simd_kernels!`] expands inside an instruction-set module that defines, with its own
//! `#[target_feature]`s:
//!
//! - `dot_u8_i8(u, s) -> __m256i`: eight i32 sums of four `u8 * i8` products each;
//! - `dot_i8_i8(a, s) -> __m256i`: the same for two signed operands;
//! - `scales(a: i32, b: i32) -> __m256i`: signed sub-block scales (8 bits) in the layout
//!   `dot_scaled` wants, `a` for the first 16 bytes of a 32-byte operand and `b` for the last 16;
//! - `dot_scaled(u, s, scales) -> __m256i`: `dot_u8_i8` with each i32 multiplied by its scale;
//! - `high_bits(qh) -> __m256i`: `0x10` in byte `i` where bit `i` of `qh` is set, else 0;
//! - `dot_acc(acc, u, s) -> __m256i`: `acc + dot_u8_i8(u, s)`, for unsigned operands up to 255
//!   where `UNSIGNED_Q8` is true and up to 63 otherwise;
//! - `madd_acc(acc, a, b) -> __m256i`: `acc` plus, per i32 lane, the sum of the products of
//!   its two i16 halves in `a` and `b`.
//!
//! Every row kernel multiplies one weight row with `N` tokens at once (`N` = 1..=4), so a block
//! is loaded and unpacked once for up to four tokens; the tile functions run the tokens in groups
//! of four over all their rows.
//!
//! The packed kernels (see [`super::pack`]) multiply eight interleaved rows with a token at
//! once, one row per i32 lane: per block and token, eight `dot_acc`s and a few float operations
//! for all eight rows. The K-quant ones decode a group-block once into a scratch of unsigned
//! quants and per-row scales for up to [`K_TILE`] tokens, and per token take one `dot_acc` per
//! four values of the eight rows and one i32 multiply per sub-block.

macro_rules! simd_kernels {
    ($features:literal, $level:expr) => {
        use std::arch::x86_64::*;

        use crate::cpu::dot::{ActView, Kernels, Packed, PACK_ROWS};
        use crate::quant::{BlockQ8K, QK, QK_K};
        use crate::GgmlType;

        /// The 256-bit kernels of this instruction set.
        const SIMD256: Kernels = Kernels {
            level: $level,
            q4_0: tile_q4_0,
            q4_1: tile_q4_1,
            q5_0: tile_q5_0,
            q5_1: tile_q5_1,
            q8_0: tile_q8_0,
            q4_k: tile_q4_k,
            q5_k: tile_q5_k,
            q6_k: tile_q6_k,
            packed_q4_0: Some(packed_q4_0),
            packed_q4_1: Some(packed_q4_1),
            packed_q5_0: Some(packed_q5_0),
            packed_q5_1: Some(packed_q5_1),
            packed_q8_0: if UNSIGNED_Q8 { Some(packed_q8_0) } else { None },
            packed_q4_k: Some(packed_q4_k),
            packed_q5_k: Some(packed_q5_k),
            packed_q6_k: Some(packed_q6_k),
        };

        /// Horizontal sum of eight f32 lanes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }

        /// Two consecutive f16 values at `p` (a block's `d` and `m`), as f32.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
            let v = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }

        /// The 32 nibbles of 16 bytes in value order: low nibbles first, then high nibbles.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            let q = _mm_loadu_si128(p.cast());
            let v = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
            _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn load(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p.cast())
        }

        /// Adds the products of one legacy block with tokens `t0..t0 + N` to `acc` and `off`.
        /// `q` holds the block's quants (unsigned, or signed where `SIGNED`), which `d` scales;
        /// `offset` (every weight is `d * q + offset`) multiplies the activation block's sum.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn block_products<const N: usize, const ACT_BYTES: usize, const SIGNED: bool>(
            (q, d, offset): (__m256i, f32, f32),
            x: &ActView,
            t0: usize,
            b: usize,
            acc: &mut [__m256; N],
            off: &mut [f32; N],
        ) {
            let dv = _mm256_set1_ps(d);
            for i in 0..N {
                let j = (t0 + i) * x.nb + b;
                let a = x
                    .blocks
                    .add((t0 + i) * x.row_bytes + b * ACT_BYTES + (ACT_BYTES - QK));
                let p = if SIGNED {
                    dot_i8_i8(q, load(a))
                } else {
                    dot_u8_i8(q, load(a))
                };
                let scale = _mm256_mul_ps(dv, _mm256_set1_ps(*x.d.add(j)));
                acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc[i]);
                if !SIGNED {
                    off[i] = offset.mul_add(*x.s.add(j), off[i]);
                }
            }
        }

        /// A legacy (32-value block) row kernel over `$decode(block) -> (quants, d, offset)`.
        macro_rules! legacy_row {
            ($name:ident, $bytes:expr, $act_bytes:expr, $signed:expr, $decode:ident) => {
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn $name<const N: usize>(w: *const u8, x: &ActView, t0: usize) -> [f32; N] {
                    // Two accumulators per token, for even and odd blocks, so that one token's
                    // chain of dependent FMAs does not bound the loop.
                    let mut acc = [[_mm256_setzero_ps(); N]; 2];
                    let mut off = [0.0f32; N];
                    let mut b = 0;
                    while b + 2 <= x.nb {
                        let (q0, q1) =
                            ($decode(w.add(b * $bytes)), $decode(w.add((b + 1) * $bytes)));
                        block_products::<N, $act_bytes, $signed>(
                            q0,
                            x,
                            t0,
                            b,
                            &mut acc[0],
                            &mut off,
                        );
                        block_products::<N, $act_bytes, $signed>(
                            q1,
                            x,
                            t0,
                            b + 1,
                            &mut acc[1],
                            &mut off,
                        );
                        b += 2;
                    }
                    if b < x.nb {
                        let q = $decode(w.add(b * $bytes));
                        block_products::<N, $act_bytes, $signed>(
                            q,
                            x,
                            t0,
                            b,
                            &mut acc[0],
                            &mut off,
                        );
                    }
                    std::array::from_fn(|i| hsum(_mm256_add_ps(acc[0][i], acc[1][i])) + off[i])
                }
            };
        }

        /// A legacy block's quants as unsigned bytes in value order, its scale `d` and the value
        /// every quant is offset by, so that a weight is `d * q + offset`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode_q4_0(blk: *const u8) -> (__m256i, f32, f32) {
            let d = f16_pair(blk).0;
            (nibbles(blk.add(2)), d, -8.0 * d)
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode_q4_1(blk: *const u8) -> (__m256i, f32, f32) {
            let (d, m) = f16_pair(blk);
            (nibbles(blk.add(4)), d, m)
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode_q5_0(blk: *const u8) -> (__m256i, f32, f32) {
            let d = f16_pair(blk).0;
            let qh = blk.add(2).cast::<u32>().read_unaligned();
            (
                _mm256_or_si256(nibbles(blk.add(6)), high_bits(qh)),
                d,
                -16.0 * d,
            )
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode_q5_1(blk: *const u8) -> (__m256i, f32, f32) {
            let (d, m) = f16_pair(blk);
            let qh = blk.add(4).cast::<u32>().read_unaligned();
            (_mm256_or_si256(nibbles(blk.add(8)), high_bits(qh)), d, m)
        }

        /// Q8_0's quants are signed; they have no offset.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode_q8_0(blk: *const u8) -> (__m256i, f32, f32) {
            (load(blk.add(2)), f16_pair(blk).0, 0.0)
        }

        legacy_row!(row_q4_0, 18, 34, false, decode_q4_0);
        legacy_row!(row_q4_1, 20, 36, false, decode_q4_1);
        legacy_row!(row_q5_0, 22, 34, false, decode_q5_0);
        legacy_row!(row_q5_1, 24, 36, false, decode_q5_1);
        legacy_row!(row_q8_0, 34, 34, true, decode_q8_0);

        /// Token `t`'s Q8_K block `b`.
        #[inline(always)]
        unsafe fn q8k(x: &ActView, t: usize, b: usize) -> *const BlockQ8K {
            x.blocks.add(t * x.row_bytes).cast::<BlockQ8K>().add(b)
        }

        /// Q4_K's eight 6-bit scales and eight 6-bit mins, unpacked to bytes (ggml's `kmask`
        /// shuffle): `(scales, mins)`.
        #[inline(always)]
        fn q4_k_scales_mins(packed: *const u8) -> ([u8; 8], [u8; 8]) {
            const KMASK1: u32 = 0x3f3f_3f3f;
            const KMASK2: u32 = 0x0f0f_0f0f;
            const KMASK3: u32 = 0x0303_0303;
            // SAFETY (of the reads): a Q4_K/Q5_K block has 12 bytes of scales at `packed`.
            let word = |i: usize| unsafe { packed.add(4 * i).cast::<u32>().read_unaligned() };
            let (u0, u1, u2) = (word(0), word(1), word(2));
            let sc = [u0 & KMASK1, (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4)];
            let mn = [
                u1 & KMASK1,
                ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
            ];
            let bytes = |w: [u32; 2]| {
                let mut out = [0u8; 8];
                out[..4].copy_from_slice(&w[0].to_le_bytes());
                out[4..].copy_from_slice(&w[1].to_le_bytes());
                out
            };
            (bytes(sc), bytes(mn))
        }

        /// The sixteen `bsums` (16-value sums) of a Q8_K block as i16 lanes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn bsums(a: *const BlockQ8K) -> __m256i {
            _mm256_loadu_si256(std::ptr::addr_of!((*a).bsums).cast())
        }

        /// Q4_K and Q5_K: `$quants(c) -> (low, high)` are the unsigned quants of the 64 values
        /// of chunk `c`, whose sub-blocks are `2c` and `2c + 1`.
        macro_rules! k_scale_min_row {
            ($name:ident, $bytes:expr, |$blk:ident, $c:ident| $quants:expr) => {
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn $name<const N: usize>(w: *const u8, x: &ActView, t0: usize) -> [f32; N] {
                    let mut acc = [_mm256_setzero_ps(); N];
                    for b in 0..x.nb {
                        let $blk = w.add(b * $bytes);
                        let (d, dmin) = f16_pair($blk);
                        let (sc, mn) = q4_k_scales_mins($blk.add(4));
                        // Each min applies to two consecutive 16-value bsums.
                        let mn = _mm_cvtsi64_si128(i64::from_le_bytes(mn));
                        let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
                        let mut sumi = [_mm256_setzero_si256(); N];
                        for $c in 0..QK_K / 64 {
                            let (lo, hi): (__m256i, __m256i) = $quants;
                            let (sl, sh) = (sc[2 * $c].into(), sc[2 * $c + 1].into());
                            let (sl, sh) = (scales(sl, sl), scales(sh, sh));
                            for i in 0..N {
                                let qs = std::ptr::addr_of!((*q8k(x, t0 + i, b)).qs)
                                    .cast::<u8>()
                                    .add(64 * $c);
                                let p = _mm256_add_epi32(
                                    dot_scaled(lo, load(qs), sl),
                                    dot_scaled(hi, load(qs.add(32)), sh),
                                );
                                sumi[i] = _mm256_add_epi32(sumi[i], p);
                            }
                        }
                        for i in 0..N {
                            let a = q8k(x, t0 + i, b);
                            let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums(a), mins));
                            acc[i] = _mm256_fmadd_ps(
                                _mm256_set1_ps((*a).d * d),
                                _mm256_cvtepi32_ps(sumi[i]),
                                acc[i],
                            );
                            acc[i] = _mm256_fnmadd_ps(_mm256_set1_ps((*a).d * dmin), m, acc[i]);
                        }
                    }
                    std::array::from_fn(|i| hsum(acc[i]))
                }
            };
        }

        k_scale_min_row!(row_q4_k, 144, |blk, c| {
            let q = load(blk.add(16 + 32 * c));
            let m4 = _mm256_set1_epi8(0x0F);
            (
                _mm256_and_si256(q, m4),
                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
            )
        });
        k_scale_min_row!(row_q5_k, 176, |blk, c| {
            let q = load(blk.add(48 + 32 * c));
            let h = load(blk.add(16));
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            // Bit 2c of qh byte l is the fifth bit of value 64c + l, bit 2c + 1 that of
            // value 64c + 32 + l.
            let hl = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * c as i32)), one);
            let hh = _mm256_and_si256(
                _mm256_srl_epi16(h, _mm_cvtsi32_si128(2 * c as i32 + 1)),
                one,
            );
            (
                _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(hl, 4)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                    _mm256_slli_epi16(hh, 4),
                ),
            )
        });

        /// Q6_K: the quants are taken unsigned (0..64) and the `- 32` is applied through the
        /// activation's `bsums`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn row_q6_k<const N: usize>(w: *const u8, x: &ActView, t0: usize) -> [f32; N] {
            let mut acc = [_mm256_setzero_ps(); N];
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(3);
            for b in 0..x.nb {
                let blk = w.add(b * 210);
                let (ql, qh, sc) = (blk, blk.add(128), blk.add(192).cast::<i8>());
                let d = f16_pair(blk.add(208)).0;
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.cast()));
                let mut sumi = [_mm256_setzero_si256(); N];
                for h in 0..2 {
                    let (l0, l1, hb) = (
                        load(ql.add(64 * h)),
                        load(ql.add(64 * h + 32)),
                        load(qh.add(32 * h)),
                    );
                    let quants = [
                        _mm256_or_si256(
                            _mm256_and_si256(l0, m4),
                            _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(l1, m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4),
                        ),
                    ];
                    for (k, &q) in quants.iter().enumerate() {
                        let s = 8 * h + 2 * k;
                        let scale = scales((*sc.add(s)).into(), (*sc.add(s + 1)).into());
                        for i in 0..N {
                            let qs = std::ptr::addr_of!((*q8k(x, t0 + i, b)).qs)
                                .cast::<u8>()
                                .add(128 * h + 32 * k);
                            sumi[i] = _mm256_add_epi32(sumi[i], dot_scaled(q, load(qs), scale));
                        }
                    }
                }
                for i in 0..N {
                    let a = q8k(x, t0 + i, b);
                    // sum_j sc_j * 32 * bsum_j, the offset of the unsigned quants.
                    let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums(a), sc16), 5);
                    let total = _mm256_sub_epi32(sumi[i], offset);
                    acc[i] = _mm256_fmadd_ps(
                        _mm256_set1_ps((*a).d * d),
                        _mm256_cvtepi32_ps(total),
                        acc[i],
                    );
                }
            }
            std::array::from_fn(|i| hsum(acc[i]))
        }

        /// A tile function over a row kernel: tokens in groups of four, each group over all rows.
        macro_rules! tile {
            ($name:ident, $row:ident) => {
                #[target_feature(enable = $features)]
                unsafe fn $name(
                    w: &[u8],
                    row_bytes: usize,
                    x: &ActView,
                    y: *mut f32,
                    y_stride: usize,
                ) {
                    let n_rows = w.len() / row_bytes;
                    let w = w.as_ptr();
                    let mut t = 0;
                    macro_rules! group {
                        ($n:literal) => {
                            for r in 0..n_rows {
                                let v = $row::<$n>(w.add(r * row_bytes), x, t);
                                for (i, v) in v.into_iter().enumerate() {
                                    *y.add((t + i) * y_stride + r) = v;
                                }
                            }
                        };
                    }
                    while t + 4 <= x.n_tokens {
                        group!(4);
                        t += 4;
                    }
                    match x.n_tokens - t {
                        1 => group!(1),
                        2 => group!(2),
                        3 => group!(3),
                        _ => {}
                    }
                }
            };
        }

        /// A packed group-block at `p` of type `TY`: the eight rows' quants as unsigned bytes
        /// (vector `j` holds values `4j..4j + 4` of row `i` in lane `i`), scales and offsets.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode_packed<const TY: u8>(p: *const u8) -> ([__m256i; 8], __m256, __m256) {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
            let f16s = |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(p.add(at).cast()));
            let m4 = _mm256_set1_epi8(0x0F);
            // The 4-bit types: four vectors of quant bytes at `at`, low nibbles then high ones.
            let nibbles = |at: usize| -> [__m256i; 8] {
                let q: [__m256i; 4] = std::array::from_fn(|j| load(p.add(at + 32 * j)));
                std::array::from_fn(|j| {
                    if j < 4 {
                        _mm256_and_si256(q[j], m4)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16(q[j - 4], 4), m4)
                    }
                })
            };
            let with_high_bits = |q: [__m256i; 8], at: usize| -> [__m256i; 8] {
                std::array::from_fn(|j| {
                    let mask = p.add(at + 4 * j).cast::<u32>().read_unaligned();
                    _mm256_or_si256(q[j], high_bits(mask))
                })
            };
            match TY {
                Q4_0 => (nibbles(16), d, _mm256_mul_ps(d, _mm256_set1_ps(-8.0))),
                Q4_1 => (nibbles(32), d, f16s(16)),
                Q5_0 => (
                    with_high_bits(nibbles(48), 16),
                    d,
                    _mm256_mul_ps(d, _mm256_set1_ps(-16.0)),
                ),
                Q5_1 => (with_high_bits(nibbles(64), 32), d, f16s(16)),
                // Flipping the sign bit adds 128: unsigned quants offset by -128 d.
                _ => (
                    std::array::from_fn(|j| {
                        _mm256_xor_si256(load(p.add(16 + 32 * j)), _mm256_set1_epi8(-128))
                    }),
                    d,
                    _mm256_mul_ps(d, _mm256_set1_ps(-128.0)),
                ),
            }
        }

        /// Bytes ahead of the block being multiplied that the packed kernels prefetch.
        const PREFETCH: usize = 4096;

        // The packed types, as const parameters.
        const Q4_0: u8 = 0;
        const Q4_1: u8 = 1;
        const Q5_0: u8 = 2;
        const Q5_1: u8 = 3;
        const Q8_0: u8 = 4;

        /// One packed group's products with tokens `t0..t0 + N`, written to
        /// `y[t * y_stride..][..8]`. `ACT_BYTES` is the size of an activation block.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn packed_tokens<const N: usize, const TY: u8, const ACT_BYTES: usize>(
            group: *const u8,
            group_block_bytes: usize,
            x: &ActView,
            t0: usize,
            y: *mut f32,
            y_stride: usize,
        ) {
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..x.nb {
                let p = group.add(b * group_block_bytes);
                // Streaming from memory (decode), the hardware prefetcher alone leaves the loads
                // waiting; a prefetch per cache line of the block, well ahead, keeps them fed.
                for line in (0..group_block_bytes).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + line).cast());
                }
                let (q, d, offset) = decode_packed::<TY>(p);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let t = t0 + i;
                    let a = x
                        .blocks
                        .add(t * x.row_bytes + b * ACT_BYTES + (ACT_BYTES - QK));
                    // Two chains of four, so that the dependent accumulations overlap.
                    let mut s = [_mm256_setzero_si256(); 2];
                    for (j, &q) in q.iter().enumerate() {
                        let four = _mm256_set1_epi32(a.add(4 * j).cast::<i32>().read_unaligned());
                        s[j % 2] = dot_acc(s[j % 2], q, four);
                    }
                    let k = t * x.nb + b;
                    let p = _mm256_cvtepi32_ps(_mm256_add_epi32(s[0], s[1]));
                    *acc = _mm256_fmadd_ps(p, _mm256_mul_ps(d, _mm256_set1_ps(*x.d.add(k))), *acc);
                    *acc = _mm256_fmadd_ps(offset, _mm256_set1_ps(*x.s.add(k)), *acc);
                }
            }
            for (i, a) in acc.into_iter().enumerate() {
                _mm256_storeu_ps(y.add((t0 + i) * y_stride), a);
            }
        }

        /// A [`super::PackedFn`]: every group of `packed`, tokens four at a time.
        macro_rules! packed {
            ($name:ident, $ty:ident, $act_bytes:expr) => {
                #[target_feature(enable = $features)]
                unsafe fn $name(packed: &[u8], x: &ActView, y: *mut f32, y_stride: usize) {
                    let gb = Packed::group_block_bytes(GgmlType::$ty);
                    for (g, group) in packed.chunks_exact(x.nb * gb).enumerate() {
                        let (group, y) = (group.as_ptr(), y.add(g * PACK_ROWS));
                        let mut t = 0;
                        while t + 4 <= x.n_tokens {
                            packed_tokens::<4, $ty, $act_bytes>(group, gb, x, t, y, y_stride);
                            t += 4;
                        }
                        match x.n_tokens - t {
                            1 => packed_tokens::<1, $ty, $act_bytes>(group, gb, x, t, y, y_stride),
                            2 => packed_tokens::<2, $ty, $act_bytes>(group, gb, x, t, y, y_stride),
                            3 => packed_tokens::<3, $ty, $act_bytes>(group, gb, x, t, y, y_stride),
                            _ => {}
                        }
                    }
                }
            };
        }

        // The packed K-quant types, as const parameters.
        const Q4_K: u8 = 5;
        const Q5_K: u8 = 6;
        const Q6_K: u8 = 7;

        /// Tokens a decoded K-quant group-block serves before the next is decoded.
        const K_TILE: usize = 16;

        /// A packed K-quant group-block, decoded for the products of a tile of tokens.
        struct KBlock {
            /// Unsigned quants: vector `u` holds values `4u..4u + 4` of row `i` in lane `i`.
            q: [__m256i; 64],
            /// The rows' scale of each sub-block (i32 lanes): eight of 32 values (Q4_K, Q5_K)
            /// or sixteen of 16 (Q6_K).
            scales: [__m256i; 16],
            /// What multiplies the activations' `bsums` `2k` and `2k + 1` in the offset term, as
            /// the two i16 halves of each lane: the min of sub-block `k` twice (Q4_K, Q5_K), or
            /// the scales of sub-blocks `2k` and `2k + 1` (Q6_K, whose quants carry `+ 32`).
            offsets: [__m256i; 8],
            d: __m256,
            /// Q4_K, Q5_K.
            dmin: __m256,
        }

        /// Eight bytes at `p`, zero-extended to i32 lanes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn eight_u8(p: *const u8) -> __m256i {
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()))
        }

        /// Decodes the group-block at `p` of type `TY` into `k`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode_k<const TY: u8>(p: *const u8, k: &mut KBlock) {
            let m4 = _mm256_set1_epi8(0x0F);
            k.d = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
            if TY == Q6_K {
                for j in 0..8 {
                    // Row i's scales of sub-blocks 2j and 2j + 1 as the i16 halves of lane i.
                    let pair = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16 + 16 * j).cast()));
                    k.offsets[j] = pair;
                    k.scales[2 * j] = _mm256_srai_epi32(_mm256_slli_epi32(pair, 16), 16);
                    k.scales[2 * j + 1] = _mm256_srai_epi32(pair, 16);
                }
                let m2 = _mm256_set1_epi8(0x30);
                for h in 0..2 {
                    for u in 0..8 {
                        let triple = p.add(144 + 96 * (8 * h + u));
                        let (la, lb, hb) =
                            (load(triple), load(triple.add(32)), load(triple.add(64)));
                        // ql byte l: values l (low nibble) and l + 64 (high) of the half; ql byte
                        // l + 32: values l + 32 and l + 96; qh byte l: their top two bits, in
                        // that order from bit 0.
                        let top = |shift: i32| {
                            let v = match shift {
                                4 => _mm256_slli_epi16(hb, 4),
                                2 => _mm256_slli_epi16(hb, 2),
                                0 => hb,
                                _ => _mm256_srli_epi16(hb, 2),
                            };
                            _mm256_and_si256(v, m2)
                        };
                        let base = 32 * h + u;
                        k.q[base] = _mm256_or_si256(_mm256_and_si256(la, m4), top(4));
                        k.q[base + 8] = _mm256_or_si256(_mm256_and_si256(lb, m4), top(2));
                        k.q[base + 16] =
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(la, 4), m4), top(0));
                        k.q[base + 24] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(lb, 4), m4),
                            top(-2),
                        );
                    }
                }
                return;
            }
            k.dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast()));
            let low4 = _mm256_set1_epi32(0x0F);
            let two = _mm256_set1_epi32(3);
            for j in 0..8 {
                let low = eight_u8(p.add(32 + 8 * j));
                let high = eight_u8(p.add(96 + 8 * (j % 4)));
                let shift = _mm_cvtsi32_si128(2 * (j as i32 / 4));
                let shift_min = _mm_cvtsi32_si128(4 + 2 * (j as i32 / 4));
                let sc_high = _mm256_and_si256(_mm256_srl_epi32(high, shift), two);
                let mn_high = _mm256_and_si256(_mm256_srl_epi32(high, shift_min), two);
                k.scales[j] =
                    _mm256_or_si256(_mm256_and_si256(low, low4), _mm256_slli_epi32(sc_high, 4));
                let min = _mm256_or_si256(_mm256_srli_epi32(low, 4), _mm256_slli_epi32(mn_high, 4));
                k.offsets[j] = _mm256_or_si256(min, _mm256_slli_epi32(min, 16));
            }
            let qs = p.add(if TY == Q5_K { 128 + 256 } else { 128 });
            let one = _mm256_set1_epi8(1);
            for c in 0..4 {
                for u in 0..8 {
                    // Byte l of chunk c: values 64c + l (low nibble) and 64c + 32 + l (high).
                    let q = load(qs.add(32 * (8 * c + u)));
                    let (mut lo, mut hi) = (
                        _mm256_and_si256(q, m4),
                        _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                    );
                    if TY == Q5_K {
                        // Bits 2c and 2c + 1 of qh byte l are the fifth bits of those values.
                        let h = load(p.add(128 + 32 * u));
                        let bit = |n: i32| {
                            let b =
                                _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(n)), one);
                            _mm256_slli_epi16(b, 4)
                        };
                        lo = _mm256_or_si256(lo, bit(2 * c as i32));
                        hi = _mm256_or_si256(hi, bit(2 * c as i32 + 1));
                    }
                    k.q[16 * c + u] = lo;
                    k.q[16 * c + 8 + u] = hi;
                }
            }
        }

        /// `acc` plus the decoded group-block's products with token `t`'s Q8_K block `b`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn k_product<const TY: u8>(
            k: &KBlock,
            x: &ActView,
            t: usize,
            b: usize,
            acc: __m256,
        ) -> __m256 {
            let a = q8k(x, t, b);
            let qs = std::ptr::addr_of!((*a).qs).cast::<u8>();
            let four = |u: usize| _mm256_set1_epi32(qs.add(4 * u).cast::<i32>().read_unaligned());
            // Units per scale: eight (32 values) or four (16).
            let per_scale = if TY == Q6_K { 4 } else { 8 };
            let mut sumi = _mm256_setzero_si256();
            for g in 0..64 / per_scale {
                // Two chains, so that the dependent accumulations overlap.
                let mut s = [_mm256_setzero_si256(); 2];
                for u in 0..per_scale {
                    let unit = g * per_scale + u;
                    s[u % 2] = dot_acc(s[u % 2], k.q[unit], four(unit));
                }
                let s = _mm256_add_epi32(s[0], s[1]);
                sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(s, k.scales[g]));
            }
            let bsums = std::ptr::addr_of!((*a).bsums).cast::<u8>();
            let mut offset = _mm256_setzero_si256();
            for j in 0..8 {
                let pair = _mm256_set1_epi32(bsums.add(4 * j).cast::<i32>().read_unaligned());
                offset = madd_acc(offset, k.offsets[j], pair);
            }
            let dx = _mm256_set1_ps((*a).d);
            if TY == Q6_K {
                // The quants were taken unsigned: 32 times the scaled bsums come off.
                let total = _mm256_sub_epi32(sumi, _mm256_slli_epi32(offset, 5));
                _mm256_fmadd_ps(_mm256_mul_ps(k.d, dx), _mm256_cvtepi32_ps(total), acc)
            } else {
                let acc = _mm256_fmadd_ps(_mm256_mul_ps(k.d, dx), _mm256_cvtepi32_ps(sumi), acc);
                _mm256_fnmadd_ps(_mm256_mul_ps(k.dmin, dx), _mm256_cvtepi32_ps(offset), acc)
            }
        }

        /// A K-quant [`super::PackedFn`]: every group of `packed`, tokens [`K_TILE`] at a time,
        /// each group-block decoded once per tile.
        macro_rules! packed_k {
            ($name:ident, $ty:ident) => {
                #[target_feature(enable = $features)]
                unsafe fn $name(packed: &[u8], x: &ActView, y: *mut f32, y_stride: usize) {
                    let gb = Packed::group_block_bytes(GgmlType::$ty);
                    let mut k = KBlock {
                        q: [_mm256_setzero_si256(); 64],
                        scales: [_mm256_setzero_si256(); 16],
                        offsets: [_mm256_setzero_si256(); 8],
                        d: _mm256_setzero_ps(),
                        dmin: _mm256_setzero_ps(),
                    };
                    for (g, group) in packed.chunks_exact(x.nb * gb).enumerate() {
                        let (group, y) = (group.as_ptr(), y.add(g * PACK_ROWS));
                        for t0 in (0..x.n_tokens).step_by(K_TILE) {
                            let n = K_TILE.min(x.n_tokens - t0);
                            let mut acc = [_mm256_setzero_ps(); K_TILE];
                            for b in 0..x.nb {
                                let p = group.add(b * gb);
                                for line in (0..gb).step_by(64) {
                                    _mm_prefetch::<_MM_HINT_T0>(
                                        p.wrapping_add(PREFETCH + line).cast(),
                                    );
                                }
                                decode_k::<$ty>(p, &mut k);
                                for (i, acc) in acc[..n].iter_mut().enumerate() {
                                    *acc = k_product::<$ty>(&k, x, t0 + i, b, *acc);
                                }
                            }
                            for (i, a) in acc[..n].iter().enumerate() {
                                _mm256_storeu_ps(y.add((t0 + i) * y_stride), *a);
                            }
                        }
                    }
                }
            };
        }

        packed_k!(packed_q4_k, Q4_K);
        packed_k!(packed_q5_k, Q5_K);
        packed_k!(packed_q6_k, Q6_K);

        packed!(packed_q4_0, Q4_0, 34);
        packed!(packed_q4_1, Q4_1, 36);
        packed!(packed_q5_0, Q5_0, 34);
        packed!(packed_q5_1, Q5_1, 36);
        packed!(packed_q8_0, Q8_0, 34);

        tile!(tile_q4_0, row_q4_0);
        tile!(tile_q4_1, row_q4_1);
        tile!(tile_q5_0, row_q5_0);
        tile!(tile_q5_1, row_q5_1);
        tile!(tile_q8_0, row_q8_0);
        tile!(tile_q4_k, row_q4_k);
        tile!(tile_q5_k, row_q5_k);
        tile!(tile_q6_k, row_q6_k);
    };
}

pub(super) use simd_kernels;
