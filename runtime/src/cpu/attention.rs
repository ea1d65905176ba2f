//! CPU attention: the KV cache in the plan's element type, and causal attention over it for a
//! tile of consecutive tokens at a time, so that every key and value row read from the cache
//! (and converted to f32 once) serves all the tile's tokens and all the query heads sharing its
//! KV head.
//!
//! A query's softmax is taken per segment of the cache (`SEGMENT` positions, at multiples of it)
//! and the segments are merged in order, flash-attention style. A decoded token's segments can
//! so go to different threads ([`attend_segment`], then [`merge`]), and a prefill tile walks
//! them itself ([`attend`]): each query's arithmetic depends only on its own row, position and
//! the cache, never on the tile it shares or the thread that took a segment, so a token
//! evaluated alone gets every bit it gets inside a prefill tile.

use std::ops::Range;

use half::f16;

use super::kernels::exp;
use crate::plan::KvType;

/// Cache rows converted to f32 at a time: few enough to stay in the core's first-level cache; a
/// multiple of 8 (the score kernel takes rows 8 at a time).
const CHUNK: usize = 32;
/// Positions per softmax segment.
pub const SEGMENT: usize = 256;
/// Most tokens in one tile (prefill): each key row read serves this many queries per head.
pub const TILE: usize = 8;

/// Every layer's keys and values: one allocation of zeroed memory, so memory pages are only
/// touched when a slot is first written. A layer's K (or V) region holds each KV head's `slots`
/// rows back to back, so reading one head's keys streams through contiguous memory (a KV page's
/// rows at a time).
pub struct KvCache {
    words: Vec<u32>,
    ty: KvType,
    slots: usize,
}

impl KvCache {
    pub fn new(bytes: u64, ty: KvType, slots: usize) -> Self {
        KvCache {
            words: vec![0; bytes.div_ceil(4) as usize],
            ty,
            slots,
        }
    }

    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.words)
    }

    /// Where head `head`'s row for slot `slot` starts in the region at byte `region`.
    fn row_start(&self, region: u64, head_dim: usize, head: usize, slot: usize) -> usize {
        region as usize + (head * self.slots + slot) * self.ty.row_bytes(head_dim)
    }

    /// Stores one token's keys (or values), `heads` heads of `head_dim` values, in `slot`.
    pub fn store(&mut self, region: u64, head_dim: usize, slot: usize, token: &[f32]) {
        let row_bytes = self.ty.row_bytes(head_dim);
        for (head, src) in token.chunks_exact(head_dim).enumerate() {
            let start = self.row_start(region, head_dim, head, slot);
            let ty = self.ty;
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.words);
            let dst = &mut bytes[start..start + row_bytes];
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

    /// Head `head`'s row in slot `slot`, as stored.
    fn row(&self, region: u64, head_dim: usize, head: usize, slot: usize) -> &[u8] {
        let start = self.row_start(region, head_dim, head, slot);
        &self.bytes()[start..start + self.ty.row_bytes(head_dim)]
    }

    /// Loads head `head`'s row in slot `slot` (`out.len()` values).
    pub fn load(&self, region: u64, head: usize, slot: usize, out: &mut [f32]) {
        let row = self.row(region, out.len(), head, slot);
        match self.ty {
            KvType::F32 => out.copy_from_slice(bytemuck::cast_slice(row)),
            KvType::F16 => {
                use half::slice::HalfFloatSliceExt;
                let values: &[f16] = bytemuck::cast_slice(row);
                values.convert_to_f32_slice(out);
            }
            KvType::Q8_0 => load_q8_0(row, out),
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

fn load_q8_0(row: &[u8], out: &mut [f32]) {
    let (quants, scales) = row.split_at(out.len());
    for (b, block) in out.chunks_exact_mut(KvType::Q8_0_BLOCK).enumerate() {
        let d = f16::from_le_bytes([scales[2 * b], scales[2 * b + 1]]).to_f32();
        for (o, &q) in block.iter_mut().zip(&quants[b * KvType::Q8_0_BLOCK..]) {
            *o = f32::from(q as i8) * d;
        }
    }
}

/// Where one layer's keys and values are, and which KV head an item reads.
#[derive(Clone, Copy)]
pub struct KvHead {
    pub k_offset: u64,
    pub v_offset: u64,
    pub head: usize,
    pub head_dim: usize,
}

/// The queries of one item: `tokens` consecutive tokens of one sequence from its step token
/// `first_token`, each with `heads` query heads (of `head_dim` values) that share one KV head.
#[derive(Clone, Copy)]
pub struct Queries<'a> {
    pub first_token: usize,
    pub tokens: usize,
    pub heads: usize,
    /// Tokens of the sequence cached before the step: its step token t is at position `past + t`.
    pub past: usize,
    /// Positions a token sees: its own and up to `window - 1` before it (`None`: all).
    pub window: Option<usize>,
    pub scale: f32,
    /// The sequence's page table, and log2 of the tokens per page (a power of two, so that
    /// finding a position's slot, once per cached row read, costs a shift and a mask).
    pub pages: &'a [u32],
    pub page_shift: u32,
}

impl Queries<'_> {
    /// The cache slot of position `pos`.
    #[inline(always)]
    fn slot(&self, pos: usize) -> usize {
        let mask = (1 << self.page_shift) - 1;
        ((self.pages[pos >> self.page_shift] as usize) << self.page_shift) | (pos & mask)
    }

    /// The positions token `t` (of the step) sees.
    fn seen(&self, t: usize) -> Range<usize> {
        let pos = self.past + t;
        let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        lo..pos + 1
    }

    /// The segments holding a position some token of the item sees.
    pub fn segments(&self) -> Range<usize> {
        let first = self.seen(self.first_token).start;
        let last = self.seen(self.first_token + self.tokens - 1).end;
        first / SEGMENT..last.div_ceil(SEGMENT)
    }
}

/// Positions of segment `s`.
fn segment(s: usize) -> Range<usize> {
    s * SEGMENT..(s + 1) * SEGMENT
}

fn intersect(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    let r = a.start.max(b.start)..a.end.min(b.end);
    if r.is_empty() {
        0..0
    } else {
        r
    }
}

/// A worker's buffers, sized at load for the plan's widest tile and head.
pub struct Scratch {
    /// Per query (token, head) of the item: its scores over a segment, then their exponentials.
    scores: Vec<f32>,
    /// A chunk of cache rows in f32.
    rows: Vec<f32>,
    /// Per query: the current segment's softmax, unnormalized ([`Partial`]).
    seg_max: Vec<f32>,
    seg_sum: Vec<f32>,
    seg_out: Vec<f32>,
    /// Per query: the segments so far, merged; `out` ends normalized, `[token][head][head_dim]`.
    run_max: Vec<f32>,
    run_sum: Vec<f32>,
    pub out: Vec<f32>,
}

impl Scratch {
    pub fn new(heads_per_kv_head: usize, head_dim: usize) -> Self {
        let queries = TILE * heads_per_kv_head;
        Scratch {
            scores: vec![0.0; queries * SEGMENT],
            rows: vec![0.0; CHUNK * head_dim],
            seg_max: vec![0.0; queries],
            seg_sum: vec![0.0; queries],
            seg_out: vec![0.0; queries * head_dim],
            run_max: vec![0.0; queries],
            run_sum: vec![0.0; queries],
            out: vec![0.0; queries * head_dim],
        }
    }

    /// Query `i`'s softmax over the segment [`attend_segment`] computed last.
    pub fn segment_partial(&self, i: usize, head_dim: usize) -> Partial<'_> {
        Partial {
            max: self.seg_max[i],
            sum: self.seg_sum[i],
            out: &self.seg_out[i * head_dim..][..head_dim],
        }
    }
}

/// A query's softmax over some positions, unnormalized: the largest score, the sum of
/// `exp(score - max)`, and the values weighted by those exponentials.
#[derive(Clone, Copy)]
pub struct Partial<'a> {
    pub max: f32,
    pub sum: f32,
    pub out: &'a [f32],
}

/// Folds `part` into the running softmax (`first`: there is none yet). Plain multiplies and adds
/// only, so every caller, whatever it was compiled for, computes the same bits.
pub fn merge(max: &mut f32, sum: &mut f32, out: &mut [f32], part: Partial, first: bool) {
    if first {
        *max = part.max;
        *sum = part.sum;
        out.copy_from_slice(part.out);
        return;
    }
    let m = max.max(part.max);
    let (a, b) = (exp(*max - m), exp(part.max - m));
    *sum = *sum * a + part.sum * b;
    for (o, &p) in out.iter_mut().zip(part.out) {
        *o = *o * a + p * b;
    }
    *max = m;
}

/// The output of a merged softmax.
pub fn normalize(out: &mut [f32], sum: f32) {
    for o in out {
        *o /= sum;
    }
}

/// Attention of one item's queries over every segment they see, merged in order, into
/// `scratch.out`. `q(t, h)` is the query row of step token t and head h of the item.
pub fn attend<'q>(
    cache: &KvCache,
    kv: KvHead,
    queries: Queries<'_>,
    q: &dyn Fn(usize, usize) -> &'q [f32],
    scratch: &mut Scratch,
) {
    let hd = kv.head_dim;
    for s in queries.segments() {
        attend_segment(cache, kv, queries, q, s, scratch);
        for t in 0..queries.tokens {
            let token = queries.first_token + t;
            let seen = queries.seen(token);
            if intersect(&seen, &segment(s)).is_empty() {
                continue;
            }
            let first = seen.start >= s * SEGMENT;
            for head in 0..queries.heads {
                let i = t * queries.heads + head;
                let Scratch {
                    seg_max,
                    seg_sum,
                    seg_out,
                    run_max,
                    run_sum,
                    out,
                    ..
                } = &mut *scratch;
                let part = Partial {
                    max: seg_max[i],
                    sum: seg_sum[i],
                    out: &seg_out[i * hd..][..hd],
                };
                let out = &mut out[i * hd..][..hd];
                merge(&mut run_max[i], &mut run_sum[i], out, part, first);
            }
        }
    }
    for i in 0..queries.tokens * queries.heads {
        normalize(&mut scratch.out[i * hd..][..hd], scratch.run_sum[i]);
    }
}

/// The softmax of every query of the item over segment `s`, unnormalized, into the scratch's
/// segment partials ([`Scratch::segment_partial`]); queries that see no position of it are left
/// as they were.
pub fn attend_segment<'q>(
    cache: &KvCache,
    kv: KvHead,
    queries: Queries<'_>,
    q: &dyn Fn(usize, usize) -> &'q [f32],
    s: usize,
    scratch: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    if kv.head_dim.is_multiple_of(8)
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has AVX2, FMA and F16C.
        return unsafe { segment_avx2(cache, kv, queries, q, s, scratch) };
    }
    segment_body::<Portable>(cache, kv, queries, q, s, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn segment_avx2<'q>(
    cache: &KvCache,
    kv: KvHead,
    queries: Queries<'_>,
    q: &dyn Fn(usize, usize) -> &'q [f32],
    s: usize,
    scratch: &mut Scratch,
) {
    segment_body::<avx2::Avx2>(cache, kv, queries, q, s, scratch)
}

/// The inner loops of attention, per instruction set.
trait Products {
    /// [`KvCache::load`].
    #[inline(always)]
    fn load(cache: &KvCache, region: u64, head: usize, slot: usize, out: &mut [f32]) {
        cache.load(region, head, slot, out)
    }
    /// `q . rows[k]` for the 8 rows of `head_dim` values in `rows`.
    fn scores8(q: &[f32], rows: &[f32], head_dim: usize) -> [f32; 8];
    /// `out += w[j] * rows[j]` for each j in order.
    fn accumulate(out: &mut [f32], w: &[f32], rows: &[f32], head_dim: usize);
}

struct Portable;

impl Products for Portable {
    #[inline(always)]
    fn scores8(q: &[f32], rows: &[f32], head_dim: usize) -> [f32; 8] {
        std::array::from_fn(|k| super::kernels::dot(q, &rows[k * head_dim..][..head_dim]))
    }

    #[inline(always)]
    fn accumulate(out: &mut [f32], w: &[f32], rows: &[f32], head_dim: usize) {
        for (&w, row) in w.iter().zip(rows.chunks_exact(head_dim)) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o += w * x;
            }
        }
    }
}

#[inline(always)]
fn segment_body<'q, P: Products>(
    cache: &KvCache,
    kv: KvHead,
    queries: Queries<'_>,
    q: &dyn Fn(usize, usize) -> &'q [f32],
    s: usize,
    scratch: &mut Scratch,
) {
    let hd = kv.head_dim;
    let tokens = queries.first_token..queries.first_token + queries.tokens;
    // The positions of the segment some query sees.
    let all = queries.seen(tokens.start).start..queries.seen(tokens.end - 1).end;
    let span = intersect(&all, &segment(s));
    let base = s * SEGMENT;
    let Scratch {
        scores,
        rows,
        seg_max,
        seg_sum,
        seg_out,
        ..
    } = scratch;
    // The K and V passes below share their shape but not a helper: a closure does not inherit
    // this function's target features, and the intrinsics would no longer inline (20x slower).
    // The positions of chunk `c` (its first position and length) that token t sees, as offsets
    // into the chunk.
    let visible = |t: usize, c: usize, n: usize| {
        let r = intersect(&queries.seen(t), &(c..c + n));
        r.start.saturating_sub(c)..r.end.saturating_sub(c)
    };

    for c in span.clone().step_by(CHUNK) {
        let n = CHUNK.min(span.end - c);
        for (j, row) in rows[..n * hd].chunks_exact_mut(hd).enumerate() {
            P::load(cache, kv.k_offset, kv.head, queries.slot(c + j), row);
        }
        for (ti, t) in tokens.clone().enumerate() {
            let seen = visible(t, c, n);
            if seen.is_empty() {
                continue;
            }
            for head in 0..queries.heads {
                let qh = q(t, head);
                let row = &mut scores[(ti * queries.heads + head) * SEGMENT..][..SEGMENT];
                // Groups of 8 rows aligned in the chunk (CHUNK is a multiple of 8): rows past
                // `n` hold stale values whose scores are never stored.
                for g in (seen.start / 8 * 8..seen.end).step_by(8) {
                    let s8 = P::scores8(qh, &rows[g * hd..][..8 * hd], hd);
                    if g >= seen.start && g + 8 <= seen.end {
                        let out = &mut row[c + g - base..][..8];
                        for (o, s) in out.iter_mut().zip(s8) {
                            *o = s * queries.scale;
                        }
                    } else {
                        for j in g.max(seen.start)..(g + 8).min(seen.end) {
                            row[c + j - base] = s8[j - g] * queries.scale;
                        }
                    }
                }
            }
        }
    }
    // Each query's scores over the positions it sees become exponentials relative to their
    // maximum, and their sum.
    for (ti, t) in tokens.clone().enumerate() {
        let seen = intersect(&queries.seen(t), &span);
        if seen.is_empty() {
            continue;
        }
        for head in 0..queries.heads {
            let i = ti * queries.heads + head;
            let row = &mut scores[i * SEGMENT..][seen.start - base..seen.end - base];
            let max = max_in_lanes(row);
            for x in row.iter_mut() {
                *x = exp(*x - max);
            }
            seg_max[i] = max;
            seg_sum[i] = sum_in_lanes(row);
            seg_out[i * hd..][..hd].fill(0.0);
        }
    }
    for c in span.clone().step_by(CHUNK) {
        let n = CHUNK.min(span.end - c);
        for (j, row) in rows[..n * hd].chunks_exact_mut(hd).enumerate() {
            P::load(cache, kv.v_offset, kv.head, queries.slot(c + j), row);
        }
        for (ti, t) in tokens.clone().enumerate() {
            let seen = visible(t, c, n);
            if seen.is_empty() {
                continue;
            }
            for head in 0..queries.heads {
                let i = ti * queries.heads + head;
                let w = &scores[i * SEGMENT + c - base..][seen.clone()];
                let v = &rows[seen.start * hd..seen.end * hd];
                P::accumulate(&mut seg_out[i * hd..][..hd], w, v, hd);
            }
        }
    }
}

/// The largest value, in 8 interleaved lanes (vectorizes; a maximum is exact in any order).
#[inline(always)]
fn max_in_lanes(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    lanes.iter().fold(tail, |m, &v| m.max(v))
}

/// A sum in 8 interleaved lanes, added pairwise at the end: vectorizes, and is a fixed function
/// of the values.
#[inline(always)]
fn sum_in_lanes(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    pub struct Avx2;

    impl super::Products for Avx2 {
        /// f16 rows converted eight values at a time, inline.
        #[inline(always)]
        fn load(cache: &super::KvCache, region: u64, head: usize, slot: usize, out: &mut [f32]) {
            if cache.ty != super::KvType::F16 || !out.len().is_multiple_of(8) {
                return cache.load(region, head, slot, out);
            }
            let row = cache.row(region, out.len(), head, slot);
            for (src, dst) in row.chunks_exact(16).zip(out.chunks_exact_mut(8)) {
                // SAFETY: only reached from `segment_avx2`, which runs with F16C; 16 bytes are
                // read from `src` and 8 values written to `dst`.
                unsafe {
                    let h = _mm_loadu_si128(src.as_ptr().cast());
                    _mm256_storeu_ps(dst.as_mut_ptr(), _mm256_cvtph_ps(h));
                }
            }
        }

        #[inline(always)]
        fn scores8(q: &[f32], rows: &[f32], head_dim: usize) -> [f32; 8] {
            assert!(q.len() >= head_dim && rows.len() >= 8 * head_dim);
            // SAFETY: only reached from `segment_avx2`, which runs with AVX2 and FMA; the
            // loads stay inside `q` and the 8 rows (checked above, head_dim a multiple of 8).
            unsafe {
                let mut acc = [_mm256_setzero_ps(); 8];
                for d in (0..head_dim).step_by(8) {
                    let qv = _mm256_loadu_ps(q.as_ptr().add(d));
                    for (k, a) in acc.iter_mut().enumerate() {
                        let kv = _mm256_loadu_ps(rows.as_ptr().add(k * head_dim + d));
                        *a = _mm256_fmadd_ps(qv, kv, *a);
                    }
                }
                // Eight horizontal sums at once: lane k of the result is row k's.
                let t0 = _mm256_hadd_ps(acc[0], acc[1]);
                let t1 = _mm256_hadd_ps(acc[2], acc[3]);
                let t2 = _mm256_hadd_ps(acc[4], acc[5]);
                let t3 = _mm256_hadd_ps(acc[6], acc[7]);
                let u0 = _mm256_hadd_ps(t0, t1);
                let u1 = _mm256_hadd_ps(t2, t3);
                let lo = _mm256_permute2f128_ps(u0, u1, 0x20);
                let hi = _mm256_permute2f128_ps(u0, u1, 0x31);
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(lo, hi));
                out
            }
        }

        #[inline(always)]
        fn accumulate(out: &mut [f32], w: &[f32], rows: &[f32], head_dim: usize) {
            assert!(out.len() == head_dim && rows.len() >= w.len() * head_dim);
            // SAFETY: as in `scores8`; every load and store is inside `out` or row j of `rows`.
            unsafe {
                let mut d = 0;
                // Four registers of the output at a time stay in registers across the rows.
                while d + 32 <= head_dim {
                    let o = out.as_mut_ptr().add(d);
                    let mut acc = [
                        _mm256_loadu_ps(o),
                        _mm256_loadu_ps(o.add(8)),
                        _mm256_loadu_ps(o.add(16)),
                        _mm256_loadu_ps(o.add(24)),
                    ];
                    for (j, &wj) in w.iter().enumerate() {
                        let wv = _mm256_set1_ps(wj);
                        let r = rows.as_ptr().add(j * head_dim + d);
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(8 * i)), *a);
                        }
                    }
                    for (i, a) in acc.iter().enumerate() {
                        _mm256_storeu_ps(o.add(8 * i), *a);
                    }
                    d += 32;
                }
                while d < head_dim {
                    let o = out.as_mut_ptr().add(d);
                    let mut acc = _mm256_loadu_ps(o);
                    for (j, &wj) in w.iter().enumerate() {
                        let r = rows.as_ptr().add(j * head_dim + d);
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(wj), _mm256_loadu_ps(r), acc);
                    }
                    _mm256_storeu_ps(o, acc);
                    d += 8;
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

    /// Identity page tables: position p in slot p.
    const PAGE: usize = 32;
    static IDENTITY: [u32; 64] = {
        let mut pages = [0u32; 64];
        let mut i = 0;
        while i < 64 {
            pages[i] = i as u32;
            i += 1;
        }
        pages
    };

    /// Stores consecutive tokens' rows from `slot` on.
    fn store_rows(
        cache: &mut KvCache,
        region: u64,
        heads: usize,
        hd: usize,
        slot: usize,
        rows: &[f32],
    ) {
        for (t, token) in rows.chunks_exact(heads * hd).enumerate() {
            cache.store(region, hd, slot + t, token);
        }
    }

    /// A cache of one layer with `positions` positions of two KV heads of `head_dim` values,
    /// filled from `value`, and where its second head is.
    fn filled(ty: KvType, positions: usize, head_dim: usize) -> (KvCache, KvHead) {
        let region = (2 * positions * ty.row_bytes(head_dim)) as u64;
        let mut cache = KvCache::new(2 * region, ty, positions);
        let k: Vec<f32> = (0..positions * 2 * head_dim)
            .map(|i| value(i + 5))
            .collect();
        let v: Vec<f32> = (0..positions * 2 * head_dim)
            .map(|i| value(i + 9))
            .collect();
        store_rows(&mut cache, 0, 2, head_dim, 0, &k);
        store_rows(&mut cache, region, 2, head_dim, 0, &v);
        let kv = KvHead {
            k_offset: 0,
            v_offset: region,
            head: 1,
            head_dim,
        };
        (cache, kv)
    }

    #[test]
    fn every_type_stores_rows_it_loads_back_within_its_rounding() {
        let (head_dim, heads, ctx) = (64, 2, 8);
        // Three tokens of two heads each, stored at positions 2, 3 and 4.
        let src: Vec<f32> = (0..3 * heads * head_dim).map(|i| value(i) * 3.0).collect();
        for (ty, tolerance) in [
            (KvType::F32, 0.0),
            (KvType::F16, 3.0 / 2048.0),
            (KvType::Q8_0, 3.0 / 127.0),
        ] {
            let region = 64;
            let bytes = region + (heads * ctx * ty.row_bytes(head_dim)) as u64;
            let mut cache = KvCache::new(bytes, ty, ctx);
            store_rows(&mut cache, region, heads, head_dim, 2, &src);
            for (r, want) in src.chunks_exact(head_dim).enumerate() {
                let (t, head) = (r / heads, r % heads);
                let mut got = vec![0.0; head_dim];
                cache.load(region, head, 2 + t, &mut got);
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= tolerance * 1.01, "{ty}: {g} vs {w}");
                }
            }
            for head in 0..heads {
                let mut untouched = vec![1.0; head_dim];
                cache.load(region, head, 1, &mut untouched);
                assert!(untouched.iter().all(|&x| x == 0.0), "{ty}: row 1 unwritten");
            }
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
        let mut cache = KvCache::new(32, KvType::F32, 2);
        store_rows(&mut cache, 0, 1, 2, 0, &[1.0, 0.0, 0.0, 0.0]);
        store_rows(&mut cache, 16, 1, 2, 0, &[1.0, 2.0, 3.0, 4.0]);
        let kv = KvHead {
            k_offset: 0,
            v_offset: 16,
            head: 0,
            head_dim: 2,
        };
        let q = [1.0, 0.0];
        let mut scratch = Scratch::new(1, 2);
        let mut queries = Queries {
            first_token: 0,
            tokens: 1,
            heads: 1,
            past: 1,
            window: None,
            scale: 1.0,
            pages: &IDENTITY,
            page_shift: PAGE.trailing_zeros(),
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

    /// Tokens and heads sharing a tile get the bits they get alone, and a single token's
    /// segments computed apart (as decode spreads them over threads) and merged get them too, on
    /// every cache type, with and without a window, for tiles that cross chunk and segment
    /// boundaries, with head sizes that take the vector path and one that does not.
    #[test]
    fn queries_sharing_a_tile_get_the_bits_they_get_alone() {
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (hd, past) in [(64, SEGMENT + 37), (12, 2 * SEGMENT - 3)] {
            let (heads, tokens) = (3, 6);
            let positions = past + tokens;
            let q: Vec<f32> = (0..tokens * heads * hd).map(|i| value(i + 1)).collect();
            let query = |t: usize, h: usize| &q[(t * heads + h) * hd..][..hd];
            for ty in [KvType::F32, KvType::F16, KvType::Q8_0] {
                if ty.supports(hd as u32).is_err() {
                    continue;
                }
                let (cache, kv) = filled(ty, positions, hd);
                for window in [None, Some(300), Some(20)] {
                    let mut together = Scratch::new(heads, hd);
                    let queries = Queries {
                        first_token: 0,
                        tokens,
                        heads,
                        past,
                        window,
                        scale: 0.3,
                        pages: &IDENTITY,
                        page_shift: PAGE.trailing_zeros(),
                    };
                    attend(&cache, kv, queries, &query, &mut together);
                    for t in 0..tokens {
                        for h in 0..heads {
                            let label =
                                format!("{ty} hd {hd} window {window:?} token {t} head {h}");
                            let got = &together.out[(t * heads + h) * hd..][..hd];
                            let mut alone = Scratch::new(1, hd);
                            let one = Queries {
                                first_token: t,
                                tokens: 1,
                                heads: 1,
                                ..queries
                            };
                            let qh = |t: usize, _: usize| query(t, h);
                            attend(&cache, kv, one, &qh, &mut alone);
                            assert_eq!(bits(&alone.out[..hd]), bits(got), "alone: {label}");

                            let (mut max, mut sum, mut out) = (0.0, 0.0, vec![0.0; hd]);
                            for (i, s) in one.segments().enumerate() {
                                let mut apart = Scratch::new(1, hd);
                                attend_segment(&cache, kv, one, &qh, s, &mut apart);
                                let part = apart.segment_partial(0, hd);
                                merge(&mut max, &mut sum, &mut out, part, i == 0);
                            }
                            normalize(&mut out, sum);
                            assert_eq!(bits(&out), bits(got), "segments apart: {label}");
                        }
                    }
                }
            }
        }
    }

    /// Against attention computed in f64 from the values the cache holds.
    #[test]
    fn matches_an_f64_reference() {
        let (hd, past, positions) = (64, 600, 601);
        for ty in [KvType::F32, KvType::F16, KvType::Q8_0] {
            let (cache, kv) = filled(ty, positions, hd);
            let q: Vec<f32> = (0..hd).map(|i| value(i + 3)).collect();
            let mut scratch = Scratch::new(1, hd);
            let queries = Queries {
                first_token: 0,
                tokens: 1,
                heads: 1,
                past,
                window: None,
                scale: 0.125,
                pages: &IDENTITY,
                page_shift: PAGE.trailing_zeros(),
            };
            attend(&cache, kv, queries, &|_, _| &q, &mut scratch);
            let row = |offset: u64, j: usize| {
                let mut r = vec![0.0; hd];
                cache.load(offset, kv.head, j, &mut r);
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

    /// A sequence whose pages lie scattered over the pool attends to the same bits as one whose
    /// pages are in order, and a wrong page-table entry changes the result.
    #[test]
    fn attention_reads_positions_through_the_page_table() {
        let (hd, heads, positions) = (64, 2, 5 * PAGE + 7);
        let pool = 8 * PAGE;
        let rows: Vec<f32> = (0..positions * heads * hd).map(|i| value(i + 4)).collect();
        let scattered: [u32; 6] = [7, 2, 5, 0, 3, 6];
        let region = (heads * pool * KvType::F16.row_bytes(hd)) as u64;
        let mut in_order = KvCache::new(2 * region, KvType::F16, pool);
        let mut paged = KvCache::new(2 * region, KvType::F16, pool);
        for (p, token) in rows.chunks_exact(heads * hd).enumerate() {
            let slot = scattered[p / PAGE] as usize * PAGE + p % PAGE;
            in_order.store(0, hd, p, token);
            in_order.store(region, hd, p, token);
            paged.store(0, hd, slot, token);
            paged.store(region, hd, slot, token);
        }
        let kv = KvHead {
            k_offset: 0,
            v_offset: region,
            head: 1,
            head_dim: hd,
        };
        let q: Vec<f32> = (0..hd).map(|i| value(i + 2)).collect();
        let run = |cache: &KvCache, pages: &[u32]| {
            let mut s = Scratch::new(1, hd);
            let queries = Queries {
                first_token: 0,
                tokens: 1,
                heads: 1,
                past: positions - 1,
                window: None,
                scale: 0.125,
                pages,
                page_shift: PAGE.trailing_zeros(),
            };
            attend(cache, kv, queries, &|_, _| &q, &mut s);
            s.out[..hd].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let want = run(&in_order, &IDENTITY);
        assert_eq!(run(&paged, &scattered), want);
        let mut wrong = scattered;
        wrong[2] = 1;
        assert_ne!(run(&paged, &wrong), want, "a wrong page must show");
    }
}
