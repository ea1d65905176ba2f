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

/// Attention for the query heads that share one KV head (`q` and `out` hold one row of
/// `head_dim` values per head) at position `pos` over cached positions `[lo, pos]`. `k`/`v` are the layer's caches
/// with rows of `kv_row` values; the KV head reads `head_dim` values at `kv_head_offset` in each
/// row. Each key and value row is read once for all the heads. `scores` is scratch of at least
/// `heads * (pos + 1 - lo)` values.
///
/// Every head's arithmetic is the same whichever heads it shares the call with, so the results
/// do not depend on how a step groups them.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    head_dim: usize,
    kv_row: usize,
    kv_head_offset: usize,
    lo: usize,
    pos: usize,
    scale: f32,
    scores: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe {
            attend_avx2(
                q,
                k,
                v,
                out,
                head_dim,
                kv_row,
                kv_head_offset,
                lo,
                pos,
                scale,
                scores,
            )
        };
    }
    attend_body(
        q,
        k,
        v,
        out,
        head_dim,
        kv_row,
        kv_head_offset,
        lo,
        pos,
        scale,
        scores,
    )
}

/// [`attend_body`] compiled for AVX2: the same operations in 8-wide registers (no fused
/// multiply-adds, which would round differently).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    head_dim: usize,
    kv_row: usize,
    kv_head_offset: usize,
    lo: usize,
    pos: usize,
    scale: f32,
    scores: &mut [f32],
) {
    attend_body(
        q,
        k,
        v,
        out,
        head_dim,
        kv_row,
        kv_head_offset,
        lo,
        pos,
        scale,
        scores,
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_body(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    head_dim: usize,
    kv_row: usize,
    kv_head_offset: usize,
    lo: usize,
    pos: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = head_dim;
    let len = pos + 1 - lo;
    let scores = &mut scores[..q.len() / hd * len];
    for (i, j) in (lo..=pos).enumerate() {
        let kr = &k[j * kv_row + kv_head_offset..][..hd];
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            scores[h * len + i] = dot(qh, kr) * scale;
        }
    }
    // Each head's row becomes its softmax: the weights of the values.
    for row in scores.chunks_exact_mut(len) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0.0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for s in row.iter_mut() {
            *s /= sum;
        }
    }
    out.fill(0.0);
    for (i, j) in (lo..=pos).enumerate() {
        let vr = &v[j * kv_row + kv_head_offset..][..hd];
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            let w = scores[h * len + i];
            for (o, &x) in o.iter_mut().zip(vr) {
                *o += w * x;
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

    #[test]
    fn attention_averages_values_by_softmax_of_scores() {
        let q = [1.0, 0.0];
        let k = [1.0, 0.0, 0.0, 0.0];
        let v = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0.0; 2];
        let mut scratch = [0.0; 2];
        attend(&q, &k, &v, &mut out, 2, 2, 0, 0, 1, 1.0, &mut scratch);
        let e = 1f32.exp();
        let w0 = e / (e + 1.0);
        assert!((out[0] - (w0 + 3.0 * (1.0 - w0))).abs() < 1e-6);
        attend(&q, &k, &v, &mut out, 2, 2, 0, 1, 1, 1.0, &mut scratch);
        assert_eq!(
            out,
            [3.0, 4.0],
            "a window starting at 1 sees only position 1"
        );
    }

    #[test]
    fn heads_sharing_a_call_get_the_bits_they_get_alone() {
        let (hd, heads, positions) = (8, 3, 5);
        let kv_row = 2 * hd;
        let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 7.0;
        let q: Vec<f32> = (0..heads * hd).map(value).collect();
        let k: Vec<f32> = (0..positions * kv_row).map(|i| value(i + 5)).collect();
        let v: Vec<f32> = (0..positions * kv_row).map(|i| value(i + 9)).collect();
        let mut scratch = vec![0.0; heads * positions];
        let mut together = vec![0.0; heads * hd];
        attend(
            &q,
            &k,
            &v,
            &mut together,
            hd,
            kv_row,
            hd,
            1,
            4,
            0.3,
            &mut scratch,
        );
        for h in 0..heads {
            let mut alone = vec![0.0; hd];
            let qh = &q[h * hd..(h + 1) * hd];
            attend(
                qh,
                &k,
                &v,
                &mut alone,
                hd,
                kv_row,
                hd,
                1,
                4,
                0.3,
                &mut scratch,
            );
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&alone),
                bits(&together[h * hd..(h + 1) * hd]),
                "head {h}"
            );
        }
    }
}
