//! The CPU interpreter's non-matmul kernels. Each works on `n_tokens` rows; rows are contiguous
//! `n`-value slices.

use crate::plan::UnaryOp;

pub fn rms_norm(x: &[f32], w: &[f32], y: &mut [f32], n: usize, eps: f32) {
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let scale = inverse_rms(xr, eps);
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// [`rms_norm`] over groups of `n` values in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], n: usize, eps: f32) {
    for xr in x.chunks_exact_mut(n) {
        let scale = inverse_rms(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// `out = x + rmsnorm(y) * w` row by row (rows of `n`): a post-norm residual sum, with the bits
/// of the unfused norm and add.
pub fn post_norm_add(x: &[f32], y: &[f32], w: &[f32], out: &mut [f32], n: usize, eps: f32) {
    for ((xr, yr), or) in x
        .chunks_exact(n)
        .zip(y.chunks_exact(n))
        .zip(out.chunks_exact_mut(n))
    {
        let scale = inverse_rms(yr, eps);
        for (((o, &r), &v), &g) in or.iter_mut().zip(xr).zip(yr).zip(w) {
            *o = r + v * scale * g;
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)`, the squares summed in f64 (as ggml sums them), in four
/// interleaved lanes so the sum vectorizes; a fixed function of the row wherever it runs.
fn inverse_rms(xr: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f64; 4];
    let chunks = xr.chunks_exact(4);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f64::from(v) * f64::from(v);
        }
    }
    let sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail;
    (1.0 / (sum / xr.len() as f64 + f64::from(eps)).sqrt()) as f32
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

/// `y = op(x)`, value by value.
pub fn unary(x: &[f32], y: &mut [f32], op: UnaryOp) {
    // The value function of `glu`, so an unfused activation followed by the product with `up`
    // gives the fused epilogue's bits.
    gated(x, None, y, op);
}

/// `out = op(gate) * up`, value by value: the gated linear unit of a fused FFN product.
pub fn glu(gate: &[f32], up: &[f32], out: &mut [f32], op: UnaryOp) {
    gated(gate, Some(up), out, op);
}

fn gated(gate: &[f32], up: Option<&[f32]>, out: &mut [f32], op: UnaryOp) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { gated_avx2(gate, up, out, op) };
    }
    gated_lanes(gate, up, out, op);
}

/// The same loop compiled for AVX2 (eight lanes instead of four); Rust never contracts a
/// multiply and an add into an FMA, so the bits are those of [`gated_lanes`] elsewhere.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gated_avx2(gate: &[f32], up: Option<&[f32]>, out: &mut [f32], op: UnaryOp) {
    gated_lanes(gate, up, out, op);
}

#[inline(always)]
fn gated_lanes(gate: &[f32], up: Option<&[f32]>, out: &mut [f32], op: UnaryOp) {
    // One loop per function, so each vectorizes without a branch inside.
    macro_rules! each {
        ($op:expr) => {
            match up {
                Some(up) => {
                    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                        *o = activation(g, $op) * u;
                    }
                }
                None => {
                    for (o, &g) in out.iter_mut().zip(gate) {
                        *o = activation(g, $op);
                    }
                }
            }
        };
    }
    match op {
        UnaryOp::Silu => each!(UnaryOp::Silu),
        UnaryOp::GeluTanh => each!(UnaryOp::GeluTanh),
    }
}

/// One value through an activation function. Both are `v * sigmoid(k a)`: SiLU with `a = v`,
/// `k = 1`, and GELU's tanh form (`0.5 v (1 + tanh a) = v sigmoid(2a)`, `a = sqrt(2/pi) (v +
/// 0.044715 v^3)`), with `k = 2`. The sigmoid is `1 / (1 + e)` or `e / (1 + e)` with `e =
/// exp(-k |a|)`, which never overflows, and [`exp`] is plain arithmetic, so the loops over it
/// vectorize.
#[inline(always)]
pub fn activation(v: f32, op: UnaryOp) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let (a, k) = match op {
        UnaryOp::Silu => (v, 1.0),
        UnaryOp::GeluTanh => (SQRT_2_OVER_PI * v * (1.0 + 0.044_715 * v * v), 2.0),
    };
    let e = exp(-k * a.abs());
    let numerator = if a >= 0.0 { v } else { v * e };
    numerator / (1.0 + e)
}

/// `e^x` for `x <= 0` (0 below -87.3), to about 2 ulp: Cephes' polynomial on
/// `x - n ln 2`, scaled by `2^n` through the exponent bits. Plain multiplies and adds, so it
/// vectorizes and gives the same bits wherever it is compiled.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding and subtracting it rounds to an integer (nearest, ties to even).
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.max(-87.3);
    let n = (clamped * LOG2E + ROUND) - ROUND;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = (p * r * r + r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        e * scale
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
    fn exp_is_within_2_ulp_for_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let ulp = f64::from(f32::EPSILON) * want;
            worst = worst.max((exp(x) as f64 - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn activations_match_their_definitions() {
        let mut worst = [0f64; 2];
        for i in -40_000..=40_000 {
            let v = i as f32 / 2000.0;
            let x = f64::from(v);
            let silu = x / (1.0 + (-x).exp());
            let gelu = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            for (w, (got, want)) in worst.iter_mut().zip([
                (activation(v, UnaryOp::Silu), silu),
                (activation(v, UnaryOp::GeluTanh), gelu),
            ]) {
                *w = w.max((f64::from(got) - want).abs() / want.abs().max(1e-3));
            }
        }
        assert!(worst.iter().all(|&w| w < 1e-5), "relative error {worst:?}");
        assert_eq!(activation(0.0, UnaryOp::GeluTanh), 0.0);
        assert_eq!(activation(1e30, UnaryOp::Silu), 1e30);
        assert_eq!(activation(-1e30, UnaryOp::GeluTanh), 0.0);
    }

    #[test]
    fn the_glu_loop_is_the_value_function_on_every_lane() {
        let gate: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let up: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.11).cos()).collect();
        for op in [UnaryOp::Silu, UnaryOp::GeluTanh] {
            let mut out = vec![0.0; gate.len()];
            glu(&gate, &up, &mut out, op);
            let mut act = vec![0.0; gate.len()];
            unary(&gate, &mut act, op);
            for i in 0..gate.len() {
                let want = activation(gate[i], op) * up[i];
                assert_eq!(out[i].to_bits(), want.to_bits(), "{op:?} at {i}");
                assert_eq!((act[i] * up[i]).to_bits(), want.to_bits(), "{op:?} at {i}");
            }
        }
    }

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
