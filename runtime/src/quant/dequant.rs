//! Dequantization, one function per format.
//!
//! Every formula is evaluated in f32 with the operations and operand order of ggml's
//! `dequantize_row_*` (and of gguf-py's NumPy port, which the golden tests compare against bit for
//! bit). The results do not depend on FMA contraction or association order: an f16 scale times
//! the small integers involved (6- or 8-bit sub-block scales, up to 6-bit quants) is exact in f32,
//! so each value is one correctly rounded operation on exact inputs. (Q8_K's f32 scale times an
//! 8-bit quant is likewise a single rounding.)

use super::blocks::*;
use super::f16_to_f32;

/// Splits `out` into one fixed-size array per block.
///
/// # Panics
/// If `out.len() != n_blocks * N`.
#[inline]
fn per_block<'a, const N: usize>(
    what: &str,
    n_blocks: usize,
    out: &'a mut [f32],
) -> impl Iterator<Item = &'a mut [f32; N]> {
    assert_eq!(
        out.len(),
        n_blocks * N,
        "{what}: output length must be {n_blocks} blocks x {N} values"
    );
    out.chunks_exact_mut(N)
        .map(|c| c.try_into().expect("chunks_exact_mut yields N values"))
}

macro_rules! slice_fns {
    ($($(#[$doc:meta])* $fn:ident($block:ident, $n:expr);)*) => {
        $(
            $(#[$doc])*
            ///
            /// # Panics
            /// If `out.len()` is not `blocks.len()` times the block length.
            pub fn $fn(blocks: &[$block], out: &mut [f32]) {
                let outs = per_block::<{ $n }>(stringify!($fn), blocks.len(), out);
                for (b, o) in blocks.iter().zip(outs) {
                    b.dequantize(o);
                }
            }
        )*
    };
}

slice_fns! {
    /// Dequantizes Q4_0 blocks into `out`.
    dequantize_q4_0(BlockQ4_0, QK);
    /// Dequantizes Q4_1 blocks into `out`.
    dequantize_q4_1(BlockQ4_1, QK);
    /// Dequantizes Q5_0 blocks into `out`.
    dequantize_q5_0(BlockQ5_0, QK);
    /// Dequantizes Q5_1 blocks into `out`.
    dequantize_q5_1(BlockQ5_1, QK);
    /// Dequantizes Q8_0 blocks into `out`.
    dequantize_q8_0(BlockQ8_0, QK);
    /// Dequantizes Q8_1 blocks into `out` (`d * qs`; the `s` field is redundant and ignored).
    dequantize_q8_1(BlockQ8_1, QK);
    /// Dequantizes Q2_K blocks into `out`.
    dequantize_q2_k(BlockQ2K, QK_K);
    /// Dequantizes Q3_K blocks into `out`.
    dequantize_q3_k(BlockQ3K, QK_K);
    /// Dequantizes Q4_K blocks into `out`.
    dequantize_q4_k(BlockQ4K, QK_K);
    /// Dequantizes Q5_K blocks into `out`.
    dequantize_q5_k(BlockQ5K, QK_K);
    /// Dequantizes Q6_K blocks into `out`.
    dequantize_q6_k(BlockQ6K, QK_K);
    /// Dequantizes Q8_K blocks into `out` (`d * qs`; `bsums` is redundant and ignored).
    dequantize_q8_k(BlockQ8K, QK_K);
}

impl BlockQ4_0 {
    /// The 32 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = f16_to_f32(self.d);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = ((q & 0x0F) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl BlockQ4_1 {
    /// The 32 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = (q & 0x0F) as f32 * d + m;
            *h = (q >> 4) as f32 * d + m;
        }
    }
}

impl BlockQ5_0 {
    /// The 32 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = f16_to_f32(self.d);
        let qh = u32::from_le_bytes(self.qh);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for (j, ((&q, l), h)) in self.qs.iter().zip(lo).zip(hi).enumerate() {
            let h0 = ((qh >> j) << 4) as u8 & 0x10;
            let h1 = (qh >> (j + 12)) as u8 & 0x10;
            *l = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
            *h = (((q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

impl BlockQ5_1 {
    /// The 32 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let qh = u32::from_le_bytes(self.qh);
        let (lo, hi) = out.split_at_mut(QK / 2);
        for (j, ((&q, l), h)) in self.qs.iter().zip(lo).zip(hi).enumerate() {
            let h0 = ((qh >> j) << 4) as u8 & 0x10;
            let h1 = (qh >> (j + 12)) as u8 & 0x10;
            *l = ((q & 0x0F) | h0) as f32 * d + m;
            *h = ((q >> 4) | h1) as f32 * d + m;
        }
    }
}

impl BlockQ8_0 {
    /// The 32 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = f16_to_f32(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl BlockQ8_1 {
    /// The 32 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = f16_to_f32(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl BlockQ2K {
    /// The 256 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        let dmin = f16_to_f32(self.dmin);
        // 16 sub-blocks of 16: sub-block `s` lives in half `s / 8`, bit pair `(s % 8) / 2`, and
        // bytes `16 * (s % 2)..` of that half's 32 quant bytes.
        for (s, o) in out.chunks_exact_mut(16).enumerate() {
            let sc = self.scales[s];
            let dl = d * (sc & 0x0F) as f32;
            let ml = dmin * (sc >> 4) as f32;
            let shift = 2 * ((s % 8) / 2);
            let q = &self.qs[32 * (s / 8) + 16 * (s % 2)..][..16];
            for (o, &q) in o.iter_mut().zip(q) {
                *o = dl * ((q >> shift) & 3) as f32 - ml;
            }
        }
    }
}

impl BlockQ3K {
    /// The 256 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d_all = f16_to_f32(self.d);
        let scales = unpack_q3_k_scales(&self.scales);
        // Sub-block `s` (16 values): half `s / 8`, bit pair `(s % 8) / 2` of its 32 `qs` bytes
        // and bit `s / 2` of the `hmask` bytes, bytes `16 * (s % 2)..` in both.
        for (s, o) in out.chunks_exact_mut(16).enumerate() {
            let dl = d_all * (scales[s] as i32 - 32) as f32;
            let shift = 2 * ((s % 8) / 2);
            let m = 1u8 << (s / 2);
            let q = &self.qs[32 * (s / 8) + 16 * (s % 2)..][..16];
            let hm = &self.hmask[16 * (s % 2)..][..16];
            for ((o, &q), &h) in o.iter_mut().zip(q).zip(hm) {
                let v = ((q >> shift) & 3) as i32 - if h & m != 0 { 0 } else { 4 };
                *o = dl * v as f32;
            }
        }
    }
}

impl BlockQ4K {
    /// The 256 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for (c, (o, q)) in out
            .chunks_exact_mut(64)
            .zip(self.qs.chunks_exact(32))
            .enumerate()
        {
            let (sc1, m1) = get_scale_min_k4(2 * c, &self.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (lo, hi) = o.split_at_mut(32);
            for ((&q, l), h) in q.iter().zip(lo).zip(hi) {
                *l = d1 * (q & 0x0F) as f32 - m1;
                *h = d2 * (q >> 4) as f32 - m2;
            }
        }
    }
}

impl BlockQ5K {
    /// The 256 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for (c, (o, q)) in out
            .chunks_exact_mut(64)
            .zip(self.qs.chunks_exact(32))
            .enumerate()
        {
            let (sc1, m1) = get_scale_min_k4(2 * c, &self.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let (lo, hi) = o.split_at_mut(32);
            for (((&q, &h), l), hv) in q.iter().zip(&self.qh).zip(lo).zip(hi) {
                let q1 = (q & 0x0F) + if h & u1 != 0 { 16 } else { 0 };
                let q2 = (q >> 4) + if h & u2 != 0 { 16 } else { 0 };
                *l = d1 * q1 as f32 - m1;
                *hv = d2 * q2 as f32 - m2;
            }
        }
    }
}

impl BlockQ6K {
    /// The 256 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        let d = f16_to_f32(self.d);
        for (h, o) in out.chunks_exact_mut(128).enumerate() {
            let ql = &self.ql[64 * h..][..64];
            let qh = &self.qh[32 * h..][..32];
            let sc = &self.scales[8 * h..][..8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                o[l] = d * sc[is] as f32 * q1 as f32;
                o[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                o[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                o[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

impl BlockQ8K {
    /// The 256 values of this block.
    #[inline]
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = self.d * q as f32;
        }
    }
}
