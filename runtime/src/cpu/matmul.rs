//! Matrix products `y[t] = W x[t]` over weights in their stored (quantized) format.
//!
//! For the types with a quantized kernel (see [`super::dot`]) the activations are quantized once
//! per product to the weight type's 8-bit partner format, in one or two terms as the plan says
//! ([`Activations::terms`]; the second is the first's rounding residual, multiplied as an extra
//! row of activations in the same pass over the weights), and the products are integer dot
//! products on the blocks. The other types (f32, f16, bf16, Q2_K, Q3_K) are multiplied in f32,
//! f16/bf16/Q2_K/Q3_K rows being dequantized first.
//!
//! Work is split over output rows (rows of W) in chunks handed out through an atomic counter, so
//! each thread streams its own part of the weights once for all tokens of the step. The threads
//! are a [`pool::Pool`] of spinning workers rather than rayon's, whose wake-ups cost more than a
//! small product does.

mod pool;

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::dot::{ActFormat, Kernels, Packed, QuantActs, TileFn, PACK_ROWS};
use super::kernels::dot;
use crate::plan::Activations;
use crate::GgmlType;

/// Weight types the CPU matrix product reads directly.
pub const MATMUL_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

pub fn matmul_supports(ty: GgmlType) -> bool {
    MATMUL_TYPES.contains(&ty)
}

/// Chunks per thread a product is cut into: enough for threads that start late or run slow to
/// even out, few enough that taking a chunk (one contended atomic) stays negligible.
const CHUNKS_PER_THREAD: usize = 8;
/// Fewest rows in a chunk.
const MIN_CHUNK_ROWS: usize = 16;
/// Tokens from which the activations are quantized by all threads rather than by the caller.
const PARALLEL_QUANTIZE_TOKENS: usize = 8;
/// Rows a two-term product computes at a time into a worker's scratch, both terms in one pass
/// over the weights, before adding them into the output: few enough that the scratch stays in
/// the core's cache.
const TWO_TERM_ROWS: usize = 64;

/// An f32 buffer per worker (a weight row for the types multiplied in f32, or a two-term
/// product's partial results); worker `i` only touches buffer `i`.
struct RowBuf(UnsafeCell<Vec<f32>>);

// SAFETY: each buffer is used by one worker at a time (the one whose index it has).
unsafe impl Sync for RowBuf {}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the workers write disjoint output elements (distinct rows of W).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Element `i` of the output (a method, so closures capture the whole `Sync` wrapper).
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The kernel, activation format and number of 8-bit terms of weights of type `ty`, where they
/// have a quantized product and the plan quantizes their activations.
fn quantized(
    kernels: &Kernels,
    activations: Activations,
    ty: GgmlType,
) -> Option<(TileFn, ActFormat, u8)> {
    let terms = activations.terms(ty)?;
    Some((kernels.tile(ty)?, ActFormat::vec_dot_type(ty)?, terms))
}

fn workers_buffers(threads: usize, len: usize) -> Vec<RowBuf> {
    (0..threads)
        .map(|_| RowBuf(UnsafeCell::new(vec![0.0; len])))
        .collect()
}

/// One weight of a stacked product ([`MatMul::run_stacked`]): as [`MatMul::run`]'s `id`, `ty`,
/// `w` and `n`.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub id: usize,
    pub ty: GgmlType,
    pub w: &'a [u8],
    pub n: usize,
}

/// How a weight's bytes are laid out, as [`MatMul::prepare`] was told.
enum Stored {
    /// Plain rows (what [`MatMul::run`] assumes of a weight it was not told about).
    Rows,
    /// The plan's packed layout, which this CPU's packed kernels read as it is.
    Packed,
    /// The plan packed the weight but this CPU has no packed kernel for it: its rows, re-laid
    /// once at load.
    Unpacked(Vec<u8>),
}

/// Everything a matrix product needs besides its operands, allocated once per session: the
/// threads, the kernels, the quantized-activation buffers, and the rows of packed weights that
/// this CPU cannot read packed.
pub struct MatMul {
    kernels: Kernels,
    activations: Activations,
    pool: pool::Pool,
    acts: QuantActs,
    rows: Vec<RowBuf>,
    /// Per worker, [`TWO_TERM_ROWS`] rows of both terms of every token.
    two_term: Vec<RowBuf>,
    max_tokens: usize,
    /// By the weight ids of [`MatMul::prepare`].
    stored: Vec<Stored>,
}

impl MatMul {
    /// Buffers for products of up to `max_k` inputs and `max_tokens` tokens over weights of
    /// `weight_types`, `threads` workers, and the best kernels of this CPU; `activations` is the
    /// plan's choice of how products take their inputs.
    pub fn new(
        threads: usize,
        max_k: usize,
        max_tokens: usize,
        weight_types: &[GgmlType],
        activations: Activations,
    ) -> std::io::Result<Self> {
        Self::with_kernels(
            *Kernels::best(),
            threads,
            max_k,
            max_tokens,
            weight_types,
            activations,
        )
    }

    /// As [`MatMul::new`], with the given kernels (tests compare the levels with it).
    pub fn with_kernels(
        kernels: Kernels,
        threads: usize,
        max_k: usize,
        max_tokens: usize,
        weight_types: &[GgmlType],
        activations: Activations,
    ) -> std::io::Result<Self> {
        let pool = pool::Pool::new(threads)?;
        let terms = |ty| quantized(&kernels, activations, ty).map(|q| q.2);
        let needs_row = weight_types
            .iter()
            .any(|&ty| ty != GgmlType::F32 && terms(ty).is_none());
        let two_terms = weight_types.iter().any(|&ty| terms(ty) == Some(2));
        let acts = QuantActs::new(
            max_k,
            max_tokens,
            weight_types.iter().filter_map(|&ty| Some((ty, terms(ty)?))),
        );
        Ok(MatMul {
            kernels,
            activations,
            acts,
            rows: workers_buffers(pool.threads(), if needs_row { max_k } else { 0 }),
            two_term: workers_buffers(
                pool.threads(),
                if two_terms {
                    TWO_TERM_ROWS * 2 * max_tokens
                } else {
                    0
                },
            ),
            max_tokens,
            pool,
            stored: Vec::new(),
        })
    }

    /// Workers of [`MatMul::for_each`], the calling thread included.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Calls `f(item, worker)` for every item in `0..n`, spread over the matrix products'
    /// threads (`worker` < [`MatMul::threads`]; the calling thread is worker 0), for the
    /// interpreter's other parallel kernels. These threads spin between jobs rather than sleep,
    /// so a short parallel step costs a few hundred nanoseconds to hand out instead of the
    /// wake-ups of a sleeping pool: at decode, running attention through rayon's pool instead
    /// cost SmolLM2 a quarter of its speed on one thread.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let next = AtomicUsize::new(0);
        self.pool.run(&|worker| loop {
            let item = next.fetch_add(1, Ordering::Relaxed);
            if item >= n {
                break;
            }
            f(item, worker);
        });
    }

    /// Calls `f(range)` on contiguous ranges that cover `0..len`, one per thread, or on all of
    /// it on the calling thread when a thread would get fewer than `min_len`: for pointwise work
    /// between the products, which would otherwise leave the other threads spinning.
    pub fn split(&self, len: usize, min_len: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let parts = self.threads().min(len / min_len.max(1));
        if parts <= 1 {
            return f(0..len);
        }
        self.for_each(parts, &|part, _| {
            f(len * part / parts..len * (part + 1) / parts)
        });
    }

    /// Tells how weight `id` (`n` rows of `k` values of type `ty`, the plan's bytes `w`) is laid
    /// out: `packed` as the plan marks it. [`MatMul::run`] with the same `id` then reads it
    /// through the packed kernels, or, where this CPU has none for the type (the portable
    /// level), through rows re-laid here, once, at load.
    ///
    /// # Panics
    /// If `w` is not a packed weight of that shape (the plan validator checks it first).
    pub fn prepare(&mut self, id: usize, ty: GgmlType, w: &[u8], k: usize, n: usize, packed: bool) {
        if self.stored.len() <= id {
            self.stored.resize_with(id + 1, || Stored::Rows);
        }
        if !packed {
            return;
        }
        let view = Packed::new(ty, w, k, n).expect("a validated packed weight");
        let readable = quantized(&self.kernels, self.activations, ty).is_some()
            && self.kernels.packed(ty).is_some();
        self.stored[id] = if readable {
            Stored::Packed
        } else {
            Stored::Unpacked(view.unpack())
        };
    }

    /// `y[t * n + j] = dot(row j of w, x[t * k..(t + 1) * k])` for every token `t` of `x`; `w`
    /// holds `n` rows of `k` values of type `ty`, laid out as [`MatMul::prepare`] was told for
    /// weight `id` (plain rows if it was not).
    ///
    /// Each output depends only on its row and token, never on the other tokens of the call or
    /// on the number of threads, so evaluating tokens one at a time or together gives identical
    /// results.
    ///
    /// # Panics
    /// If `ty` is not in [`MATMUL_TYPES`], `k` is not a whole number of its blocks, or the
    /// product is larger than the buffers were made for.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        id: usize,
        ty: GgmlType,
        w: &[u8],
        x: &[f32],
        y: &mut [f32],
        k: usize,
        n: usize,
    ) {
        self.product(Part { id, ty, w, n }, x, y, k, n, true);
    }

    /// [`MatMul::run`] over weights stacked by rows: `y`'s rows hold every part's outputs, part
    /// p's from column `n_0 + ... + n_(p-1)` on. Each part is multiplied by its own type's kernel;
    /// parts whose types take the same activation format share one quantization of `x`.
    pub fn run_stacked(&mut self, parts: &[Part<'_>], x: &[f32], y: &mut [f32], k: usize) {
        let ldy: usize = parts.iter().map(|p| p.n).sum();
        let (kernels, activations) = (self.kernels, self.activations);
        let format = move |ty| {
            quantized(&kernels, activations, ty).map(|(_, format, terms)| (format, terms))
        };
        let mut first = 0;
        for (p, &part) in parts.iter().enumerate() {
            let this = format(part.ty);
            let quantize = this.is_none() || !parts[..p].iter().any(|e| format(e.ty) == this);
            self.product(part, x, &mut y[first..], k, ldy, quantize);
            first += part.n;
        }
    }

    /// The product of one part into `y`, whose rows are `ldy` values apart; with `quantize`
    /// false the activation buffers already hold `x` in this part's format.
    fn product(
        &mut self,
        Part { id, ty, w, n }: Part<'_>,
        x: &[f32],
        y: &mut [f32],
        k: usize,
        ldy: usize,
        quantize: bool,
    ) {
        assert!(matmul_supports(ty), "no CPU matrix product for {ty}");
        let (w, packed) = match self.stored.get(id) {
            Some(Stored::Unpacked(rows)) => (&rows[..], None),
            Some(Stored::Packed) => (
                w,
                Some(Packed::new(ty, w, k, n).expect("prepared as packed")),
            ),
            _ => (w, None),
        };
        let n_tokens = x.len() / k;
        let row_bytes = ty
            .bytes_for(k as u64)
            .expect("k is a whole number of blocks") as usize;
        assert!(
            w.len() >= n * row_bytes && n <= ldy && y.len() + ldy >= n_tokens * ldy + n,
            "operands too small"
        );
        let threads = self.pool.threads();
        // Whole packed groups, so that only the last chunk can have rows outside them.
        let chunk = (n / (threads * CHUNKS_PER_THREAD))
            .max(MIN_CHUNK_ROWS)
            .next_multiple_of(PACK_ROWS);
        let out = OutPtr(y.as_mut_ptr());
        let next = AtomicUsize::new(0);
        // Hands out row ranges of `chunk` until all `n` rows are taken.
        let rows = || {
            let r0 = next.fetch_add(chunk, Ordering::Relaxed);
            (r0 < n).then(|| r0..(r0 + chunk).min(n))
        };

        if let Some((tile, format, terms)) = quantized(&self.kernels, self.activations, ty) {
            let acts = self.acts.raw(format, terms, k, n_tokens);
            let level = self.kernels.level;
            if !quantize {
                // Quantized by an earlier part of the same stacked product.
            } else if n_tokens >= PARALLEL_QUANTIZE_TOKENS {
                let next_token = AtomicUsize::new(0);
                self.pool.run(&|_| loop {
                    let t0 = next_token.fetch_add(4, Ordering::Relaxed);
                    if t0 >= n_tokens {
                        break;
                    }
                    // SAFETY: each range of tokens is quantized by the one worker that took it.
                    unsafe { acts.quantize_rows(level, x, t0..(t0 + 4).min(n_tokens)) };
                });
            } else {
                // SAFETY: no other thread is using the buffers.
                unsafe { acts.quantize_rows(level, x, 0..n_tokens) };
            }
            let view = acts.view;
            let packed = packed.and_then(|p| Some((p, self.kernels.packed(ty)?)));
            // Rows `rows` of every row of the view into `y`, row `r` and view row `t` at
            // `y[t * stride + r - rows.start]`.
            let product = |rows: std::ops::Range<usize>, y: *mut f32, stride: usize| {
                let mut start = rows.start;
                // SAFETY: the view was filled for this k and format; the rows exist in w (whole
                // groups in its packed part, the others after them), and the caller gives `y`
                // room for them.
                unsafe {
                    if let Some((packed, kernel)) = packed {
                        let groups = start / PACK_ROWS..(rows.end / PACK_ROWS).min(packed.groups);
                        if !groups.is_empty() {
                            kernel(packed.groups(groups.clone()), &view, y, stride);
                            start = groups.end * PACK_ROWS;
                        }
                    }
                    if start < rows.end {
                        // Rows past the packed groups are plain rows, at the packed weight's end.
                        let (plain, first) =
                            packed.map_or((w, 0), |(p, _)| (p.tail_rows(), p.groups * PACK_ROWS));
                        let w = &plain[(start - first) * row_bytes..(rows.end - first) * row_bytes];
                        tile(w, row_bytes, &view, y.add(start - rows.start), stride);
                    }
                }
            };
            if terms == 1 {
                // The kernels write only their columns of y, which no other chunk has.
                self.pool.run(&|_| {
                    while let Some(r) = rows() {
                        product(r.clone(), out.at(r.start), ldy);
                    }
                });
            } else {
                let scratch = &self.two_term;
                let stride = TWO_TERM_ROWS;
                assert!(
                    n_tokens <= self.max_tokens,
                    "more tokens than the buffers hold"
                );
                self.pool.run(&|worker| {
                    // SAFETY: buffer `worker` belongs to this thread for the duration of the job.
                    let buf = unsafe { &mut *scratch[worker].0.get() };
                    while let Some(r) = rows() {
                        for lo in r.clone().step_by(TWO_TERM_ROWS) {
                            let part = lo..(lo + TWO_TERM_ROWS).min(r.end);
                            product(part.clone(), buf.as_mut_ptr(), stride);
                            let (value, residual) = buf.split_at(n_tokens * stride);
                            for t in 0..n_tokens {
                                let at = t * stride;
                                // SAFETY: elements (t, part) belong to the chunk holding `part`.
                                let o = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        out.at(t * ldy + part.start),
                                        part.len(),
                                    )
                                };
                                let (v, r) =
                                    (&value[at..at + o.len()], &residual[at..at + o.len()]);
                                for ((o, &v), &r) in o.iter_mut().zip(v).zip(r) {
                                    *o = v + r;
                                }
                            }
                        }
                    }
                });
            }
        } else {
            let row_bufs = &self.rows;
            self.pool.run(&|worker| {
                // SAFETY: buffer `worker` belongs to this thread for the duration of the job.
                let buf = unsafe { &mut *row_bufs[worker].0.get() };
                while let Some(r) = rows() {
                    for j in r {
                        let wrow = &w[j * row_bytes..(j + 1) * row_bytes];
                        let wf: &[f32] = if ty == GgmlType::F32 {
                            bytemuck::cast_slice(wrow)
                        } else {
                            crate::quant::dequantize(ty, wrow, &mut buf[..k])
                                .expect("validated at load");
                            &buf[..k]
                        };
                        for t in 0..n_tokens {
                            // SAFETY: element (t, j) belongs to the chunk holding row j.
                            unsafe { *out.at(t * ldy + j) = dot(wf, &x[t * k..(t + 1) * k]) };
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::dot::tests::{random_activations, random_weights, Rng};
    use crate::cpu::dot::{pack, Level};

    #[test]
    fn for_each_visits_every_item_once_on_valid_workers() {
        let mm = MatMul::new(3, 32, 1, &[], Activations::Q8).unwrap();
        let seen: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        mm.for_each(seen.len(), &|item, worker| {
            assert!(worker < mm.threads());
            seen[item].fetch_add(1, Ordering::Relaxed);
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }

    /// Every supported type through the whole product, threaded, at every level, against
    /// dequantized weights times f32 activations; odd sizes exercise the chunking.
    #[test]
    fn products_match_the_f32_reference() {
        let quantized = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ];
        for level in Level::ALL {
            let Some(kernels) = Kernels::for_level(level) else {
                eprintln!("skipping {level:?}: this CPU lacks its instructions");
                continue;
            };
            for (i, &ty) in MATMUL_TYPES.iter().enumerate() {
                let k = if ty.block_len() == 256 { 512 } else { 96 };
                let (n, n_tokens) = (75, 11);
                let mut rng = Rng::new(5);
                let w = if quantized.contains(&ty) {
                    random_weights(&mut rng, ty, n, k)
                } else {
                    // Any bytes of the rare types, with f32 weights kept finite and small.
                    let f: Vec<f32> = random_activations(&mut rng, n * k);
                    let mut bytes = vec![0u8; ty.bytes_for((n * k) as u64).unwrap() as usize];
                    if ty == GgmlType::F32 {
                        bytes.copy_from_slice(bytemuck::cast_slice(&f));
                    } else if ty == GgmlType::F16 || ty == GgmlType::BF16 {
                        for (o, v) in bytes.chunks_exact_mut(2).zip(&f) {
                            let h = if ty == GgmlType::F16 {
                                half::f16::from_f32(*v).to_bits()
                            } else {
                                half::bf16::from_f32(*v).to_bits()
                            };
                            o.copy_from_slice(&h.to_le_bytes());
                        }
                    } else {
                        // Q2_K/Q3_K: random quants, scale fields at the end of the block.
                        bytes.iter_mut().for_each(|b| *b = rng.next() as u8);
                        for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                            let len = block.len();
                            let fields = if ty == GgmlType::Q2_K {
                                len - 4..len
                            } else {
                                len - 2..len
                            };
                            for at in fields.step_by(2) {
                                block[at..at + 2]
                                    .copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                            }
                        }
                    }
                    bytes
                };
                let x = random_activations(&mut rng, n_tokens * k);
                // Cycle through the plan's activation choices so every path of every type runs.
                let choices = [Activations::Q8, Activations::Q8x2, Activations::F32];
                let activations = choices[(i + level as usize) % choices.len()];
                let terms = kernels.tile(ty).and(activations.terms(ty));
                let mut mm =
                    MatMul::with_kernels(kernels, 3, k, n_tokens, &[ty], activations).unwrap();
                let mut y = vec![f32::NAN; n * n_tokens];
                // Weights the compiler would pack are multiplied as a plan stores them: whole
                // groups packed, the last rows (75 is not a multiple of 8) after them.
                let packed = terms.is_some() && pack::can_pack(ty);
                let stored = if packed {
                    pack::pack(ty, &w, k, n).unwrap()
                } else {
                    w.clone()
                };
                mm.prepare(0, ty, &stored, k, n, packed);
                mm.run(0, ty, &stored, &x, &mut y, k, n);
                // Each token alone gives exactly what it gave in the batch.
                let mut alone = vec![f32::NAN; n];
                for t in [0, 3, n_tokens - 1] {
                    mm.run(0, ty, &stored, &x[t * k..(t + 1) * k], &mut alone, k, n);
                    let batched = &y[t * n..(t + 1) * n];
                    assert!(
                        alone
                            .iter()
                            .zip(batched)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{level:?} {ty}: token {t} alone differs from the batch"
                    );
                }
                let row_bytes = w.len() / n;
                let mut wf = vec![0.0; k];
                for j in 0..n {
                    crate::quant::dequantize(ty, &w[j * row_bytes..(j + 1) * row_bytes], &mut wf)
                        .unwrap();
                    for t in 0..n_tokens {
                        let xr = &x[t * k..(t + 1) * k];
                        let exact: f64 = wf
                            .iter()
                            .zip(xr)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum();
                        let magnitude: f64 = wf
                            .iter()
                            .zip(xr)
                            .map(|(&a, &b)| f64::from(a * b).abs())
                            .sum();
                        // Activations quantized to 8 bits: at most half a step of 1/127 of the
                        // block's largest value (2) per value; with the residual as a second
                        // term, under half a step of 1/254 of that.
                        let sum_w = wf.iter().map(|w| f64::from(w.abs())).sum::<f64>();
                        let tol = 1e-5 * magnitude
                            + match terms {
                                None => 1e-6,
                                Some(1) => sum_w * 2.0 / 127.0 / 2.0 * 1.01,
                                Some(_) => sum_w * 2.0 / 127.0 / 254.0 * 1.2,
                            };
                        let got = f64::from(y[t * n + j]);
                        assert!(
                            (got - exact).abs() <= tol,
                            "{level:?} {ty} row {j} token {t}: {got} vs {exact} (tolerance {tol})"
                        );
                    }
                }
            }
        }
    }
}
