//! Plain-Rust quantized dot products, one weight row and one token at a time.
//!
//! The formulas are ggml's `ggml_vec_dot_*_generic`, arranged as every level computes them: each
//! weight is `d * q + offset` with an unsigned quant `q`, and the offset multiplies the
//! activation block's sum (see [`super::ActView`]). This is the reference the SIMD levels are
//! tested against.

use bytemuck::Pod;

use super::{ActView, Kernels, Level};
use crate::quant::{
    f16_to_f32, get_scale_min_k4, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1,
    BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, QK, QK_K,
};

pub(super) const KERNELS: Kernels = Kernels {
    level: Level::Portable,
    q4_0: tile_q4_0,
    q4_1: tile_q4_1,
    q5_0: tile_q5_0,
    q5_1: tile_q5_1,
    q8_0: tile_q8_0,
    q4_k: tile_q4_k,
    q5_k: tile_q5_k,
    q6_k: tile_q6_k,
    // One row at a time is all plain Rust does well; the packed layout is for SIMD lanes.
    packed_q4_0: None,
    packed_q4_1: None,
    packed_q5_0: None,
    packed_q5_1: None,
    packed_q8_0: None,
    packed_q4_k: None,
    packed_q5_k: None,
    packed_q6_k: None,
};

/// Block `b` of a weight row, read from bytes at any alignment.
#[inline(always)]
fn weight_block<B: Pod>(row: &[u8], b: usize) -> B {
    let size = size_of::<B>();
    bytemuck::pod_read_unaligned(&row[b * size..(b + 1) * size])
}

/// Activation block `b` of token `t`.
///
/// # Safety
/// `x` must hold blocks of type `B` for token `t`.
#[inline(always)]
unsafe fn act_block<B>(x: &ActView, t: usize, b: usize) -> &B {
    &*x.blocks.add(t * x.row_bytes).cast::<B>().add(b)
}

/// The 32 nibbles of a legacy block in value order: byte `j` holds value `j` low, `j + 16` high.
#[inline(always)]
fn nibbles(qs: &[u8; QK / 2]) -> [u8; QK] {
    std::array::from_fn(|i| {
        if i < QK / 2 {
            qs[i] & 0x0F
        } else {
            qs[i - QK / 2] >> 4
        }
    })
}

/// Adds the fifth bits of Q5_0/Q5_1: bit `i` of `qh` is bit 4 of value `i`.
#[inline(always)]
fn with_high_bits(mut q: [u8; QK], qh: [u8; 4]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    for (i, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> i) & 1) << 4) as u8;
    }
    q
}

#[inline(always)]
fn dot_u8(q: &[u8; QK], y: &[i8; QK]) -> i32 {
    q.iter()
        .zip(y)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// A legacy (32-value) kernel: `block` gives a weight block's unsigned quants, its scale and the
/// value each quant is offset by (`m`, or `-8 d` / `-16 d` for the symmetric types), which
/// multiplies the activation block's sum `s`.
macro_rules! legacy_tile {
    ($name:ident, $block:ty, $act:ty, |$w:ident| $decode:expr) => {
        /// See [`super::TileFn`].
        ///
        /// # Safety
        /// As for [`super::TileFn`].
        pub unsafe fn $name(w: &[u8], row_bytes: usize, x: &ActView, y: *mut f32, y_stride: usize) {
            for (r, row) in w.chunks_exact(row_bytes).enumerate() {
                for t in 0..x.n_tokens {
                    let mut sum = 0.0f32;
                    for b in 0..x.nb {
                        let $w: $block = weight_block(row, b);
                        let (q, d, offset): ([u8; QK], f32, f32) = $decode;
                        let a: &$act = act_block(x, t, b);
                        let i = t * x.nb + b;
                        sum += d * *x.d.add(i) * dot_u8(&q, &a.qs) as f32 + offset * *x.s.add(i);
                    }
                    *y.add(t * y_stride + r) = sum;
                }
            }
        }
    };
}

legacy_tile!(tile_q4_0, BlockQ4_0, BlockQ8_0, |w| {
    let d = f16_to_f32(w.d);
    (nibbles(&w.qs), d, -8.0 * d)
});
legacy_tile!(tile_q4_1, BlockQ4_1, BlockQ8_1, |w| (
    nibbles(&w.qs),
    f16_to_f32(w.d),
    f16_to_f32(w.m)
));
legacy_tile!(tile_q5_0, BlockQ5_0, BlockQ8_0, |w| {
    let d = f16_to_f32(w.d);
    (with_high_bits(nibbles(&w.qs), w.qh), d, -16.0 * d)
});
legacy_tile!(tile_q5_1, BlockQ5_1, BlockQ8_1, |w| (
    with_high_bits(nibbles(&w.qs), w.qh),
    f16_to_f32(w.d),
    f16_to_f32(w.m)
));

/// See [`super::TileFn`].
///
/// # Safety
/// As for [`super::TileFn`].
pub unsafe fn tile_q8_0(w: &[u8], row_bytes: usize, x: &ActView, y: *mut f32, y_stride: usize) {
    for (r, row) in w.chunks_exact(row_bytes).enumerate() {
        for t in 0..x.n_tokens {
            let mut sum = 0.0f32;
            for b in 0..x.nb {
                let wb: BlockQ8_0 = weight_block(row, b);
                let a: &BlockQ8_0 = act_block(x, t, b);
                let sumi: i32 = wb
                    .qs
                    .iter()
                    .zip(&a.qs)
                    .map(|(&p, &q)| i32::from(p) * i32::from(q))
                    .sum();
                sum += f16_to_f32(wb.d) * *x.d.add(t * x.nb + b) * sumi as f32;
            }
            *y.add(t * y_stride + r) = sum;
        }
    }
}

/// A K-quant kernel: `$dot(&weight_block, &act_block) -> f32` per super-block.
macro_rules! k_tile {
    ($name:ident, $block:ty, $dot:ident) => {
        /// See [`super::TileFn`].
        ///
        /// # Safety
        /// As for [`super::TileFn`].
        pub unsafe fn $name(w: &[u8], row_bytes: usize, x: &ActView, y: *mut f32, y_stride: usize) {
            for (r, row) in w.chunks_exact(row_bytes).enumerate() {
                for t in 0..x.n_tokens {
                    let mut sum = 0.0f32;
                    for b in 0..x.nb {
                        let wb: $block = weight_block(row, b);
                        sum += $dot(&wb, act_block::<BlockQ8K>(x, t, b));
                    }
                    *y.add(t * y_stride + r) = sum;
                }
            }
        }
    };
}

k_tile!(tile_q4_k, BlockQ4K, dot_q4_k);
k_tile!(tile_q5_k, BlockQ5K, dot_q5_k);
k_tile!(tile_q6_k, BlockQ6K, dot_q6_k);

/// Shared by Q4_K and Q5_K: `q` holds the 256 unsigned quants in value order.
#[inline(always)]
fn dot_k_scale_min(q: &[u8; QK_K], scales: &[u8; 12], d: f32, dmin: f32, a: &BlockQ8K) -> f32 {
    let mut sumi = 0i32;
    let mut mins = 0i32;
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let s: i32 = q[32 * j..32 * (j + 1)]
            .iter()
            .zip(&a.qs[32 * j..32 * (j + 1)])
            .map(|(&p, &q)| i32::from(p) * i32::from(q))
            .sum();
        sumi += i32::from(sc) * s;
        mins += i32::from(m) * (i32::from(a.bsums[2 * j]) + i32::from(a.bsums[2 * j + 1]));
    }
    a.d * d * sumi as f32 - a.d * dmin * mins as f32
}

fn dot_q4_k(w: &BlockQ4K, a: &BlockQ8K) -> f32 {
    let mut q = [0u8; QK_K];
    for (c, qs) in w.qs.chunks_exact(32).enumerate() {
        for (l, &v) in qs.iter().enumerate() {
            q[64 * c + l] = v & 0x0F;
            q[64 * c + 32 + l] = v >> 4;
        }
    }
    dot_k_scale_min(&q, &w.scales, f16_to_f32(w.d), f16_to_f32(w.dmin), a)
}

fn dot_q5_k(w: &BlockQ5K, a: &BlockQ8K) -> f32 {
    let mut q = [0u8; QK_K];
    for (c, qs) in w.qs.chunks_exact(32).enumerate() {
        for (l, &v) in qs.iter().enumerate() {
            let h = w.qh[l];
            q[64 * c + l] = (v & 0x0F) | (((h >> (2 * c)) & 1) << 4);
            q[64 * c + 32 + l] = (v >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
        }
    }
    dot_k_scale_min(&q, &w.scales, f16_to_f32(w.d), f16_to_f32(w.dmin), a)
}

fn dot_q6_k(w: &BlockQ6K, a: &BlockQ8K) -> f32 {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        let (ql, qh) = (&w.ql[64 * h..64 * (h + 1)], &w.qh[32 * h..32 * (h + 1)]);
        let o = &mut q[128 * h..128 * (h + 1)];
        for l in 0..32 {
            o[l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            o[l + 32] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    let mut sumi = 0i32;
    for (j, &sc) in w.scales.iter().enumerate() {
        let s: i32 = q[16 * j..16 * (j + 1)]
            .iter()
            .zip(&a.qs[16 * j..16 * (j + 1)])
            .map(|(&p, &q)| i32::from(p) * i32::from(q))
            .sum();
        sumi += i32::from(sc) * s;
    }
    a.d * f16_to_f32(w.d) * sumi as f32
}
