//! The CPU interpreter's non-matmul kernels. Each works on `n_tokens` rows; rows are contiguous
//! `n`-value slices.

use crate::plan::UnaryOp;

pub fn rms_norm(x: &[f32], w: &[f32], y: &mut [f32], n: usize, eps: f32) {
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        // Accumulate in f64 like ggml does, so long rows lose no precision.
        let sum: f64 = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let scale = (1.0 / (sum / n as f64 + f64::from(eps)).sqrt()) as f32;
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// `y = a (op) b`; `b` has one row shared by all rows of `a` when `broadcast`.
pub fn binary(
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    n: usize,
    broadcast: bool,
    op: impl Fn(f32, f32) -> f32,
) {
    for (t, (ar, yr)) in a.chunks_exact(n).zip(y.chunks_exact_mut(n)).enumerate() {
        let br = if broadcast {
            &b[..n]
        } else {
            &b[t * n..(t + 1) * n]
        };
        for ((o, &x), &z) in yr.iter_mut().zip(ar).zip(br) {
            *o = op(x, z);
        }
    }
}

pub fn unary(x: &[f32], y: &mut [f32], op: UnaryOp) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = activation(v, op);
    }
}

/// One value through an activation function (shared by `unary` and the fused GLU epilogue, so
/// both give the same bits).
#[inline]
pub fn activation(v: f32, op: UnaryOp) -> f32 {
    match op {
        UnaryOp::Silu => v / (1.0 + (-v).exp()),
        UnaryOp::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            0.5 * v * (1.0 + (SQRT_2_OVER_PI * v * (1.0 + 0.044_715 * v * v)).tanh())
        }
    }
}

/// cos/sin of `pos * base^(-2i/n_rot)` for every position and pair, computed once at load.
pub struct RopeTable {
    pub base: f32,
    pub n_rot: usize,
    /// `[pos][i]` as (cos, sin).
    pub cos_sin: Vec<(f32, f32)>,
}

impl RopeTable {
    pub fn new(base: f32, n_rot: usize, ctx: usize) -> Self {
        let half = n_rot / 2;
        let mut cos_sin = Vec::with_capacity(ctx * half);
        for pos in 0..ctx {
            for i in 0..half {
                let theta = pos as f64 * f64::from(base).powf(-2.0 * i as f64 / n_rot as f64);
                cos_sin.push((theta.cos() as f32, theta.sin() as f32));
            }
        }
        RopeTable {
            base,
            n_rot,
            cos_sin,
        }
    }

    /// Rotates rows of `n_head * head_dim` values; row t is at position `pos0 + t`.
    pub fn apply(
        &self,
        x: &[f32],
        y: &mut [f32],
        n_head: usize,
        head_dim: usize,
        neox: bool,
        pos0: usize,
    ) {
        let half = self.n_rot / 2;
        let row = n_head * head_dim;
        for (t, (xr, yr)) in x.chunks_exact(row).zip(y.chunks_exact_mut(row)).enumerate() {
            let table = &self.cos_sin[(pos0 + t) * half..(pos0 + t + 1) * half];
            for (xh, yh) in xr.chunks_exact(head_dim).zip(yr.chunks_exact_mut(head_dim)) {
                yh.copy_from_slice(xh);
                for (i, &(c, s)) in table.iter().enumerate() {
                    let (a, b) = if neox {
                        (i, i + half)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    yh[a] = xh[a] * c - xh[b] * s;
                    yh[b] = xh[a] * s + xh[b] * c;
                }
            }
        }
    }
}

/// An f32 dot product in 8 independent lanes (vectorizes, and sums in a fixed order).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_normalizes_each_row() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0];
        let mut y = [0.0; 6];
        rms_norm(&x, &[1.0, 2.0], &mut y, 2, 0.0);
        let r = (12.5f32).sqrt();
        assert_eq!(y[..2], [3.0 / r, 8.0 / r]);
        assert_eq!(y[4..], [1.0, 2.0]);
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        let t = RopeTable::new(10000.0, 2, 4);
        let mut y = [0.0; 2];
        t.apply(&[1.0, 0.0], &mut y, 1, 2, false, 1);
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6);
        t.apply(&[1.0, 0.0], &mut y, 1, 2, true, 0);
        assert_eq!(y, [1.0, 0.0]);
    }
}
