//! CPU attention: the KV cache in the plan's element type, and causal attention over it for a
//! tile of consecutive tokens at a time, so that every key and value row read from the cache
//! (and converted to f32 once) serves all the tile's tokens and all the query heads sharing its
//! KV head.
//!
//! Each query's arithmetic depends only on its own row, position and the cache, never on the
//! tile it shares: its scores are taken in position order, its softmax over exactly the
//! positions it sees, its values summed in position order. So a token evaluated alone (decode)
//! gets every bit it gets inside a prefill tile.

use half::f16;

use crate::plan::KvType;

/// Cache rows converted to f32 at a time: few enough to stay in the core's first-level cache.
const CHUNK: usize = 32;
/// Most tokens in one tile (prefill): each key row read serves this many queries per head.
pub const TILE: usize = 8;

/// Every layer's keys and values: one allocation of zeroed memory, so pages are only touched
/// when a position is first written.
pub struct KvCache {
    words: Vec<u32>,
    ty: KvType,
}

impl KvCache {
    pub fn new(bytes: u64, ty: KvType) -> Self {
        KvCache {
            words: vec![0; bytes.div_ceil(4) as usize],
            ty,
        }
    }

    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.words)
    }

    /// Stores `rows` (whole rows of `row_len` values) at positions `pos`, `pos + 1`, ... of the
    /// region that starts at byte `offset`.
    pub fn store(&mut self, offset: u64, row_len: usize, pos: usize, rows: &[f32]) {
        let row_bytes = self.ty.row_bytes(row_len);
        let start = offset as usize + pos * row_bytes;
        let ty = self.ty;
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut self.words);
        let dst = &mut dst[start..start + rows.len() / row_len * row_bytes];
        for (src, dst) in rows
            .chunks_exact(row_len)
            .zip(dst.chunks_exact_mut(row_bytes))
        {
            match ty {
                KvType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
                KvType::F16 => {
                    use half::slice::HalfFloatSliceExt;
                    let halves: &mut [f16] = bytemuck::cast_slice_mut(dst);
                    halves.convert_from_f32_slice(src);
                }
                KvType::Q8_0 => store_q8_0(src, dst),
            }
        }
    }

    /// Loads values `col .. col + out.len()` of row `pos` of the region at byte `offset`
    /// (`col` and the length whole Q8_0 blocks for that type).
    pub fn load(&self, offset: u64, row_len: usize, pos: usize, col: usize, out: &mut [f32]) {
        let row_bytes = self.ty.row_bytes(row_len);
        let row = &self.bytes()[offset as usize + pos * row_bytes..][..row_bytes];
        match self.ty {
            KvType::F32 => {
                let values: &[f32] = bytemuck::cast_slice(row);
                out.copy_from_slice(&values[col..col + out.len()]);
            }
            KvType::F16 => {
                use half::slice::HalfFloatSliceExt;
                let values: &[f16] = bytemuck::cast_slice(row);
                values[col..col + out.len()].convert_to_f32_slice(out);
            }
            KvType::Q8_0 => load_q8_0(row, row_len, col, out),
        }
    }
}

/// One row as Q8_0: the row's integers, then its scales, block by block as ggml rounds them.
fn store_q8_0(src: &[f32], dst: &mut [u8]) {
    let (quants, scales) = dst.split_at_mut(src.len());
    for (b, block) in src.chunks_exact(KvType::Q8_0_BLOCK).enumerate() {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &x) in quants[b * KvType::Q8_0_BLOCK..].iter_mut().zip(block) {
            *q = (x * id).round() as i8 as u8;
        }
        scales[2 * b..2 * b + 2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    }
}

fn load_q8_0(row: &[u8], row_len: usize, col: usize, out: &mut [f32]) {
    let (quants, scales) = row.split_at(row_len);
    for (i, block) in out.chunks_exact_mut(KvType::Q8_0_BLOCK).enumerate() {
        let b = col / KvType::Q8_0_BLOCK + i;
        let d = f16::from_le_bytes([scales[2 * b], scales[2 * b + 1]]).to_f32();
        for (o, &q) in block.iter_mut().zip(&quants[b * KvType::Q8_0_BLOCK..]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// Where one layer's keys and values are, and which head an item reads.
#[derive(Clone, Copy)]
pub struct KvHead {
    pub k_offset: u64,
    pub v_offset: u64,
    /// Values per cached position (all KV heads).
    pub row_len: usize,
    /// The KV head's first value within a row.
    pub col: usize,
    pub head_dim: usize,
}

/// The queries of one item: `tokens` consecutive tokens from step row `first_token`, each with
/// `heads` query heads (of `head_dim` values) that share one KV head.
#[derive(Clone, Copy)]
pub struct Queries {
    pub first_token: usize,
    pub tokens: usize,
    pub heads: usize,
    /// Tokens cached before the step: token t is at position `past + t`.
    pub past: usize,
    /// Positions a token sees: its own and up to `window - 1` before it (`None`: all).
    pub window: Option<usize>,
    pub scale: f32,
}

impl Queries {
    /// The positions token `t` (of the step) sees.
    fn seen(&self, t: usize) -> std::ops::RangeInclusive<usize> {
        let pos = self.past + t;
        let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        lo..=pos
    }
}

/// A worker's buffers, sized at load for the plan's context, widest tile and head.
pub struct Scratch {
    /// Per query (token, head) of the tile: its scores, then its softmax weights.
    scores: Vec<f32>,
    /// A chunk of cache rows in f32.
    rows: Vec<f32>,
    /// The tile's outputs, `[token][head][head_dim]`.
    pub out: Vec<f32>,
}

impl Scratch {
    pub fn new(ctx: usize, heads_per_kv_head: usize, head_dim: usize) -> Self {
        Scratch {
            scores: vec![0.0; TILE * heads_per_kv_head * ctx],
            rows: vec![0.0; CHUNK * head_dim],
            out: vec![0.0; TILE * heads_per_kv_head * head_dim],
        }
    }
}

/// Attention of one item's queries over the cache into `scratch.out`. `q(t, h)` is the query row
/// of step token t and head h of the item.
pub fn attend<'q>(
    cache: &KvCache,
    kv: KvHead,
    queries: Queries,
    q: &dyn Fn(usize, usize) -> &'q [f32],
    scratch: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { attend_avx2(cache, kv, queries, q, scratch) };
    }
    attend_body(cache, kv, queries, q, scratch)
}

/// [`attend_body`] compiled for AVX2: the same operations in 8-wide registers (no fused
/// multiply-adds, which would round differently).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2<'q>(
    cache: &KvCache,
    kv: KvHead,
    queries: Queries,
    q: &dyn Fn(usize, usize) -> &'q [f32],
    scratch: &mut Scratch,
) {
    attend_body(cache, kv, queries, q, scratch)
}

#[inline(always)]
fn attend_body<'q>(
    cache: &KvCache,
    kv: KvHead,
    queries: Queries,
    q: &dyn Fn(usize, usize) -> &'q [f32],
    scratch: &mut Scratch,
) {
    let hd = kv.head_dim;
    let tokens = queries.first_token..queries.first_token + queries.tokens;
    let lo = *queries.seen(tokens.start).start();
    let hi = *queries.seen(tokens.end - 1).end();
    let span = hi + 1 - lo;
    let n_queries = queries.tokens * queries.heads;
    let Scratch { scores, rows, out } = scratch;
    let scores = &mut scores[..n_queries * span];
    let out = &mut out[..n_queries * hd];
    // The positions of chunk [c, c + n) that token t sees, as offsets into the chunk.
    let visible = |t: usize, c: usize, n: usize| {
        let seen = queries.seen(t);
        let from = (*seen.start()).max(c);
        let to = (*seen.end() + 1).min(c + n);
        if from < to {
            from - c..to - c
        } else {
            0..0
        }
    };

    for c in (lo..=hi).step_by(CHUNK) {
        let n = CHUNK.min(hi + 1 - c);
        for (j, row) in rows[..n * hd].chunks_exact_mut(hd).enumerate() {
            cache.load(kv.k_offset, kv.row_len, c + j, kv.col, row);
        }
        for (ti, t) in tokens.clone().enumerate() {
            let seen = visible(t, c, n);
            for head in 0..queries.heads {
                let qh = q(t, head);
                let s = &mut scores[(ti * queries.heads + head) * span + c - lo..][..n];
                for j in seen.clone() {
                    s[j] = super::kernels::dot(qh, &rows[j * hd..][..hd]) * queries.scale;
                }
            }
        }
    }
    // Each query's scores over the positions it sees become its softmax: the weights of the
    // values.
    for (ti, t) in tokens.clone().enumerate() {
        let seen = queries.seen(t);
        let range = seen.start() - lo..seen.end() + 1 - lo;
        for head in 0..queries.heads {
            let row = &mut scores[(ti * queries.heads + head) * span..][range.clone()];
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
    }
    out.fill(0.0);
    for c in (lo..=hi).step_by(CHUNK) {
        let n = CHUNK.min(hi + 1 - c);
        for (j, row) in rows[..n * hd].chunks_exact_mut(hd).enumerate() {
            cache.load(kv.v_offset, kv.row_len, c + j, kv.col, row);
        }
        for (ti, t) in tokens.clone().enumerate() {
            let seen = visible(t, c, n);
            for head in 0..queries.heads {
                let query = ti * queries.heads + head;
                let w = &scores[query * span + c - lo..][..n];
                let o = &mut out[query * hd..][..hd];
                for j in seen.clone() {
                    for (o, &x) in o.iter_mut().zip(&rows[j * hd..][..hd]) {
                        *o += w[j] * x;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(i: usize) -> f32 {
        ((i * 37 % 23) as f32 - 11.0) / 7.0
    }

    /// A cache of one layer with `positions` rows of `row_len` values, filled from `value`.
    fn filled(ty: KvType, positions: usize, row_len: usize) -> (KvCache, KvHead) {
        let region = (positions * ty.row_bytes(row_len)) as u64;
        let mut cache = KvCache::new(2 * region, ty);
        let k: Vec<f32> = (0..positions * row_len).map(|i| value(i + 5)).collect();
        let v: Vec<f32> = (0..positions * row_len).map(|i| value(i + 9)).collect();
        cache.store(0, row_len, 0, &k);
        cache.store(region, row_len, 0, &v);
        let kv = KvHead {
            k_offset: 0,
            v_offset: region,
            row_len,
            col: 0,
            head_dim: row_len,
        };
        (cache, kv)
    }

    #[test]
    fn every_type_stores_rows_it_loads_back_within_its_rounding() {
        let row_len = 64;
        let src: Vec<f32> = (0..3 * row_len).map(|i| value(i) * 3.0).collect();
        for (ty, tolerance) in [
            (KvType::F32, 0.0),
            (KvType::F16, 3.0 / 2048.0),
            (KvType::Q8_0, 3.0 / 127.0),
        ] {
            let mut cache = KvCache::new(8 * ty.row_bytes(row_len) as u64, ty);
            cache.store(64, row_len, 2, &src);
            for (r, want) in src.chunks_exact(row_len).enumerate() {
                let mut got = vec![0.0; 32];
                cache.load(64, row_len, 2 + r, 32, &mut got);
                for (g, w) in got.iter().zip(&want[32..]) {
                    assert!((g - w).abs() <= tolerance * 1.01, "{ty}: {g} vs {w}");
                }
            }
            let mut untouched = vec![1.0; row_len];
            cache.load(64, row_len, 1, 0, &mut untouched);
            assert!(untouched.iter().all(|&x| x == 0.0), "{ty}: row 1 unwritten");
        }
    }

    #[test]
    fn q8_0_rounds_blocks_as_ggml_does() {
        let mut src = vec![0.0f32; 64];
        src[0] = 2.54;
        src[1] = -1.0;
        src[40] = 0.5;
        let mut row = vec![0u8; KvType::Q8_0.row_bytes(64)];
        store_q8_0(&src, &mut row);
        assert_eq!(row[0] as i8, 127);
        assert_eq!(row[1] as i8, (-1.0f32 / (2.54 / 127.0)).round() as i8);
        assert_eq!(
            row[40] as i8, 127,
            "the second block scales by its own maximum"
        );
        let d0 = f16::from_le_bytes([row[64], row[65]]).to_f32();
        assert_eq!(d0, f16::from_f32(2.54 / 127.0).to_f32());
    }

    #[test]
    fn attention_averages_values_by_softmax_of_scores() {
        let mut cache = KvCache::new(32, KvType::F32);
        cache.store(0, 2, 0, &[1.0, 0.0, 0.0, 0.0]);
        cache.store(16, 2, 0, &[1.0, 2.0, 3.0, 4.0]);
        let kv = KvHead {
            k_offset: 0,
            v_offset: 16,
            row_len: 2,
            col: 0,
            head_dim: 2,
        };
        let q = [1.0, 0.0];
        let mut scratch = Scratch::new(2, 1, 2);
        let mut queries = Queries {
            first_token: 0,
            tokens: 1,
            heads: 1,
            past: 1,
            window: None,
            scale: 1.0,
        };
        attend(&cache, kv, queries, &|_, _| &q, &mut scratch);
        let e = 1f32.exp();
        let w0 = e / (e + 1.0);
        assert!((scratch.out[0] - (w0 + 3.0 * (1.0 - w0))).abs() < 1e-6);
        queries.window = Some(1);
        attend(&cache, kv, queries, &|_, _| &q, &mut scratch);
        assert_eq!(
            scratch.out[..2],
            [3.0, 4.0],
            "a window of 1 sees only the token's own position"
        );
    }

    /// Tokens and heads sharing a tile get the bits they get alone, on every cache type, with
    /// and without a window, for tiles that cross chunk boundaries.
    #[test]
    fn queries_sharing_a_tile_get_the_bits_they_get_alone() {
        let (hd, heads, past, tokens) = (32, 3, 37, 6);
        let positions = past + tokens;
        let q: Vec<f32> = (0..tokens * heads * hd).map(|i| value(i + 1)).collect();
        let query = |t: usize, h: usize| &q[(t * heads + h) * hd..][..hd];
        for ty in [KvType::F32, KvType::F16, KvType::Q8_0] {
            let (cache, kv) = filled(ty, positions, hd);
            for window in [None, Some(20)] {
                let mut together = Scratch::new(positions, heads, hd);
                let queries = Queries {
                    first_token: 0,
                    tokens,
                    heads,
                    past,
                    window,
                    scale: 0.3,
                };
                attend(&cache, kv, queries, &query, &mut together);
                for t in 0..tokens {
                    for h in 0..heads {
                        let mut alone = Scratch::new(positions, 1, hd);
                        let one = Queries {
                            first_token: t,
                            tokens: 1,
                            heads: 1,
                            ..queries
                        };
                        attend(&cache, kv, one, &|t, _| query(t, h), &mut alone);
                        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&alone.out[..hd]),
                            bits(&together.out[(t * heads + h) * hd..][..hd]),
                            "{ty} window {window:?} token {t} head {h}"
                        );
                    }
                }
            }
        }
    }

    /// Against attention computed in f64 from the values the cache holds.
    #[test]
    fn matches_an_f64_reference() {
        let (hd, past, positions) = (64, 70, 71);
        for ty in [KvType::F32, KvType::F16, KvType::Q8_0] {
            let (cache, kv) = filled(ty, positions, hd);
            let q: Vec<f32> = (0..hd).map(|i| value(i + 3)).collect();
            let mut scratch = Scratch::new(positions, 1, hd);
            let queries = Queries {
                first_token: 0,
                tokens: 1,
                heads: 1,
                past,
                window: None,
                scale: 0.125,
            };
            attend(&cache, kv, queries, &|_, _| &q, &mut scratch);
            let row = |offset: u64, j: usize| {
                let mut r = vec![0.0; hd];
                cache.load(offset, hd, j, 0, &mut r);
                r
            };
            let scores: Vec<f64> = (0..positions)
                .map(|j| {
                    let k = row(kv.k_offset, j);
                    q.iter()
                        .zip(&k)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * 0.125
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for d in 0..hd {
                let want: f64 = (0..positions)
                    .map(|j| (scores[j] - max).exp() / sum * row(kv.v_offset, j)[d] as f64)
                    .sum();
                assert!(
                    (scratch.out[d] as f64 - want).abs() < 1e-5,
                    "{ty} dim {d}: {} vs {want}",
                    scratch.out[d]
                );
            }
        }
    }
}
