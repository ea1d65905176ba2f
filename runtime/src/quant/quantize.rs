//! Quantization of activations to the 8-bit formats that quantized dot products consume.
//!
//! These are transcriptions of ggml's reference C functions (`quantize_row_q8_0_ref`,
//! `quantize_row_q8_1_ref`, `quantize_row_q8_K_ref`) that keep every rounding step:
//!
//! - Q8_0 and Q8_1 scale by `1/d` and round with C's `roundf` (half away from zero, Rust's
//!   [`f32::round`]); `d` is computed in f32 and only then rounded to f16 (nearest, ties to even).
//! - Q8_K scales by `iscale = -127/max` where `max` is the signed value of largest magnitude and
//!   rounds with ggml's `nearest_int` (the `+ 1.5 * 2^23` trick: half to even); `d = 1/iscale`
//!   stays f32.
//! - Comparisons are C's (`MAX(a, b)` is `a > b ? a : b`), so even NaN inputs give ggml's answer
//!   rather than whatever `f32::max` would.

use half::f16;

use super::blocks::*;

/// ggml's `MAX(a, b)`: `a > b ? a : b`.
#[inline(always)]
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// ggml's `nearest_int`: round to nearest, ties to even, for `|x| <= 2^22`; outside that range
/// (or for NaN) the same bit pattern arithmetic as the C code, which never panics.
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Absolute maximum of a block with C semantics, and `(d, 1/d or 0)` for a 127-level scale.
#[inline(always)]
fn q8_scale(x: &[f32; QK]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |amax, &v| c_max(amax, v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

impl BlockQ8_0 {
    /// Quantizes 32 values (`quantize_row_q8_0_ref`).
    #[inline]
    pub fn quantize(x: &[f32; QK]) -> Self {
        let (d, id) = q8_scale(x);
        let mut qs = [0i8; QK];
        for (q, &v) in qs.iter_mut().zip(x) {
            // Float to int conversion: in range for finite input; `as` saturates otherwise.
            *q = (v * id).round() as i8;
        }
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs,
        }
    }
}

impl BlockQ8_1 {
    /// Quantizes 32 values (`quantize_row_q8_1_ref`), with `s = d * sum(qs)`.
    #[inline]
    pub fn quantize(x: &[f32; QK]) -> Self {
        let (d, id) = q8_scale(x);
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        BlockQ8_1 {
            d: f16::from_f32(d),
            s: f16::from_f32(sum as f32 * d),
            qs,
        }
    }
}

impl BlockQ8K {
    /// Quantizes 256 values (`quantize_row_q8_K_ref`).
    ///
    /// An all-zero block gets `d = 0` and zero quants; ggml leaves `bsums` untouched there, this
    /// sets them to zero (which is what they would sum to).
    #[inline]
    pub fn quantize(x: &[f32; QK_K]) -> Self {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            return BlockQ8K::default();
        }
        let iscale = -127.0 / max;
        let mut qs = [0i8; QK_K];
        for (q, &v) in qs.iter_mut().zip(x) {
            // `MIN(127, v)` stored to int8_t: the value is >= -128 for any finite input.
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        let mut bsums = [0i16; QK_K / 16];
        for (s, q) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
            *s = q.iter().map(|&q| i16::from(q)).sum();
        }
        BlockQ8K {
            d: 1.0 / iscale,
            qs,
            bsums,
        }
    }
}

macro_rules! quantize_fns {
    ($($(#[$doc:meta])* $fn:ident($block:ident, $n:expr);)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Panics
            /// If `src.len()` is not `dst.len()` times the block length.
            pub fn $fn(src: &[f32], dst: &mut [$block]) {
                assert_eq!(
                    src.len(),
                    dst.len() * $n,
                    concat!(stringify!($fn), ": input length must be a whole number of output blocks")
                );
                let src: &[[f32; $n]] = bytemuck::cast_slice(src);
                for (b, x) in dst.iter_mut().zip(src) {
                    *b = $block::quantize(x);
                }
            }
        )*
    };
}

quantize_fns! {
    /// Quantizes `src` to Q8_0 blocks, bit-exact with ggml's `quantize_row_q8_0_ref`.
    quantize_q8_0(BlockQ8_0, QK);
    /// Quantizes `src` to Q8_1 blocks, bit-exact with ggml's `quantize_row_q8_1_ref`.
    quantize_q8_1(BlockQ8_1, QK);
    /// Quantizes `src` to Q8_K blocks, bit-exact with ggml's `quantize_row_q8_K_ref` (except that
    /// all-zero blocks get zero `bsums` rather than whatever was in memory).
    quantize_q8_k(BlockQ8K, QK_K);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-126.5), -126);
        assert_eq!(nearest_int(127.49), 127);
        // Garbage in, no panic out.
        let _ = nearest_int(f32::NAN);
        let _ = nearest_int(f32::INFINITY);
        let _ = nearest_int(1e30);
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        let mut x = [0.0f32; QK];
        x[0] = 127.0; // d = 1 exactly
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        x[4] = -0.5;
        let b = BlockQ8_0::quantize(&x);
        assert_eq!(b.d.to_f32(), 1.0);
        assert_eq!(&b.qs[..5], &[127, 3, -3, 1, -1]);
    }

    #[test]
    fn q8_1_sum_and_zero_block() {
        let mut x = [0.0f32; QK];
        x[0] = -127.0;
        x[1] = 3.0;
        let b = BlockQ8_1::quantize(&x);
        assert_eq!(b.qs[0], -127);
        assert_eq!(b.s.to_f32(), -124.0);
        let z = BlockQ8_1::quantize(&[0.0; QK]);
        assert_eq!((z.d.to_bits(), z.s.to_bits(), z.qs), (0, 0, [0; QK]));
    }

    #[test]
    fn q8_k_ties_to_even_and_bsums() {
        let mut x = [0.0f32; QK_K];
        x[0] = -127.0; // iscale = 1 exactly
        x[1] = 2.5;
        x[2] = 3.5;
        x[17] = -0.5;
        let b = BlockQ8K::quantize(&x);
        assert_eq!(b.d, 1.0);
        assert_eq!(&b.qs[..3], &[-127, 2, 4]);
        assert_eq!(b.qs[17], 0);
        assert_eq!(b.bsums[0], -121);
        assert_eq!(BlockQ8K::quantize(&[0.0; QK_K]), BlockQ8K::default());
    }

    #[test]
    #[should_panic(expected = "whole number")]
    fn typed_quantize_checks_lengths() {
        quantize_q8_0(&[0.0; 33], &mut [BlockQ8_0::default(); 1]);
    }
}
