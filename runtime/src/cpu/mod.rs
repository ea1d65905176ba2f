//! The CPU interpreter: replays a plan's steps with every buffer allocated once, at load.

mod attention;
pub mod dot;
mod kernels;
mod matmul;
mod ops;

use thiserror::Error;

use crate::batch::{Logits, SeqStep};
use crate::plan::{Buf, Epilogue, Kernel, LoadedPlan, PartialsInto, MAX_STACKED_WEIGHTS};
use crate::GgmlType;
use dot::Packed;
use ops::Operands;

pub use matmul::{matmul_supports, MatMul, Part, MATMUL_TYPES};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("invalid plan: step {step} ({kernel}): {why}")]
    InvalidStep {
        step: usize,
        kernel: String,
        why: String,
    },
    #[error("invalid plan: {0}")]
    Invalid(String),
    #[error("cannot start {threads} threads: {why}")]
    Threads { threads: usize, why: String },
}

#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    #[error("no tokens to evaluate")]
    Empty,
    #[error("{n} tokens in one step, but the plan evaluates at most {max} at a time")]
    BatchTooLarge { n: usize, max: usize },
    #[error("context full: {past} tokens cached + {n} new exceed the plan's context of {ctx} (compile with a larger --ctx)")]
    ContextFull { past: usize, n: usize, ctx: usize },
    #[error("token id {id} is outside the vocabulary (0..{n_vocab})")]
    BadToken { id: u32, n_vocab: u32 },
    #[error("{n} sequences in one step, but the plan evaluates at most {max} together")]
    TooManySequences { n: usize, max: usize },
    #[error("bad page table: {0}")]
    PageTable(String),
    #[error("scheduler: {0}")]
    Scheduler(String),
    #[error("the GPU failed: {0}")]
    Device(String),
}

/// The checks a single-sequence backend makes before evaluating `tokens` after `n_past` cached
/// ones (the sequence's positions are its slots in the cache, so the pool bounds them too).
pub fn check_step(
    h: &crate::plan::PlanHeader,
    n_past: usize,
    tokens: &[u32],
) -> Result<(), EvalError> {
    let (n, max, ctx) = (
        tokens.len(),
        h.limits.max_batch as usize,
        h.limits.sequence_tokens() as usize,
    );
    if n == 0 {
        return Err(EvalError::Empty);
    }
    if n > max {
        return Err(EvalError::BatchTooLarge { n, max });
    }
    if n_past + n > ctx {
        return Err(EvalError::ContextFull {
            past: n_past,
            n,
            ctx,
        });
    }
    if let Some(&id) = tokens.iter().find(|&&id| id >= h.model.n_vocab) {
        return Err(EvalError::BadToken {
            id,
            n_vocab: h.model.n_vocab,
        });
    }
    Ok(())
}

/// `out = x + parts[0] + ... + parts[count - 1]`, row by row (rows of `len`), adding in the order
/// of the parts, as a chain of unfused adds would.
fn add_parts(x: &[f32], (parts, count): (&[f32], usize), out: &mut [f32], len: usize) {
    for ((xr, pr), or) in x
        .chunks_exact(len)
        .zip(parts.chunks_exact(count * len))
        .zip(out.chunks_exact_mut(len))
    {
        or.copy_from_slice(xr);
        for part in pr.chunks_exact(len) {
            for (o, &p) in or.iter_mut().zip(part) {
                *o += p;
            }
        }
    }
}

/// `out = parts[0] + ... + parts[count - 1]` row by row, over the matrix products' threads: the
/// projection the parts of an attention step sum to.
fn sum_parts_in_parallel(
    matmul: &matmul::MatMul,
    (parts, count): (&[f32], usize),
    out: &mut [f32],
    len: usize,
) {
    par_rows(matmul, out, len, |r, o| {
        let parts = &parts[r.start * count * len..r.end * count * len];
        for (pr, or) in parts.chunks_exact(count * len).zip(o.chunks_exact_mut(len)) {
            let (first, rest) = pr.split_at(len);
            or.copy_from_slice(first);
            for part in rest.chunks_exact(len) {
                for (o, &p) in or.iter_mut().zip(part) {
                    *o += p;
                }
            }
        }
    });
}

/// Values a thread should get at least in pointwise work spread over the threads: less is not
/// worth handing out.
const MIN_VALUES_PER_THREAD: usize = 4096;

/// `f(rows, out_rows)` over ranges of the rows of `out` (`row_len` values each), spread over
/// the matrix products' threads; `out_rows` is those rows of `out`.
fn par_rows(
    matmul: &matmul::MatMul,
    out: &mut [f32],
    row_len: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    let rows = out.len() / row_len;
    let out = Disjoint::new(out);
    matmul.split(rows, MIN_VALUES_PER_THREAD.div_ceil(row_len), &|r| {
        // SAFETY: `split` hands out disjoint row ranges.
        let o = unsafe { out.range(r.start * row_len, r.len() * row_len) };
        f(r, o)
    });
}

/// [`add_parts`] over ranges of rows on the matrix products' threads.
fn add_parts_in_parallel(
    matmul: &matmul::MatMul,
    x: &[f32],
    (parts, count): (&[f32], usize),
    out: &mut [f32],
    len: usize,
) {
    par_rows(matmul, out, len, |r, o| {
        let parts = &parts[r.start * count * len..r.end * count * len];
        add_parts(&x[r.start * len..r.end * len], (parts, count), o, len)
    });
}

/// What an attention step attends with.
#[derive(Clone, Copy)]
struct Heads {
    layer: u32,
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,
    scale: f32,
    window: Option<u32>,
}

impl Heads {
    /// The heads of an attention kernel.
    fn of(kernel: &Kernel) -> Heads {
        match *kernel {
            Kernel::Attention {
                layer,
                n_head,
                n_kv_head,
                head_dim,
                scale,
                window,
                ..
            }
            | Kernel::AttentionProject {
                layer,
                n_head,
                n_kv_head,
                head_dim,
                scale,
                window,
                ..
            } => Heads {
                layer,
                n_head,
                n_kv_head,
                head_dim,
                scale,
                window,
            },
            _ => unreachable!("not an attention kernel"),
        }
    }
}

/// A slice that parallel items write in disjoint ranges (attention's head rows, pointwise
/// steps' row ranges).
struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the items write through it only in ranges no other item touches (see `range`).
unsafe impl Sync for Disjoint<'_> {}

impl<'a> Disjoint<'a> {
    fn new(slice: &'a mut [f32]) -> Self {
        Disjoint {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// # Safety
    /// No other live slice from this `Disjoint` overlaps `at..at + len`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, at: usize, len: usize) -> &'a mut [f32] {
        assert!(at + len <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(at), len)
    }
}

/// Aligned, zeroed f32 storage (16-byte rows are what the memory planner guarantees).
struct Arena(Vec<f32>);

impl Arena {
    fn new(bytes: u64) -> Self {
        Arena(vec![0.0; bytes.div_ceil(4) as usize])
    }
}

/// A model loaded for evaluation: the plan, its arena, its KV cache and the number of tokens the
/// cache holds.
pub struct Session<'p> {
    plan: &'p LoadedPlan,
    arena: Arena,
    kv: attention::KvCache,
    /// One row of keys after RoPE, before the cache stores it in its type.
    rotated: Vec<f32>,
    rope: Vec<kernels::RopeTable>,
    /// Per worker thread: attention scores and tiles.
    scratch: Vec<std::sync::Mutex<attention::Scratch>>,
    /// A decoded token's attention per query head and cache segment, before the merge.
    partials: Vec<f32>,
    /// The matrix products' threads, kernels, quantized-activation buffers and packed weights.
    matmul: matmul::MatMul,
    /// The normalized inputs of fused products with an RMSNorm prologue (max_batch rows).
    normed: Vec<f32>,
    /// The inputs that fused products with a post-norm prologue form, where no later step reads
    /// them (max_batch rows).
    formed: Vec<f32>,
    /// The raw products of fused products whose epilogue reshapes them (GLU, RoPE + KV), and of
    /// the projection after attention.
    wide: Vec<f32>,
    /// Operands of fused products with their parts added (max_batch rows).
    summed: Vec<f32>,
    /// Attention outputs before their projection (max_batch rows).
    attended: Vec<f32>,
    /// One row of an embedding table stored packed, re-laid for the lookup.
    embed_row: Vec<u8>,
    /// The head: the steps from this index on (after the last attention or rope, the only
    /// kernels whose rows depend on other rows or on positions) work row by row and
    /// feed only the logits, so they run only on the rows whose logits are wanted.
    head_from: usize,
    /// The arena buffers written before the head (by the body or the host) that head steps
    /// read, as (offset, values a row): the wanted rows are gathered to the front of each.
    head_reads: Vec<(usize, usize)>,
    /// The current step: each row's position and cache slot, each sequence's run of rows, the
    /// sequences' page tables back to back, and the rows whose logits are wanted.
    rows: Vec<RowAt>,
    runs: Vec<Run>,
    step_pages: Vec<u32>,
    wanted: Vec<usize>,
    /// The single-sequence interface's page table: position p in slot p.
    identity_pages: Vec<u32>,
    /// Tokens the single-sequence interface has cached.
    n_past: usize,
    /// Only ever non-zero in the test that proves the prefill/decode check can fail.
    kv_write_shift: usize,
}

/// Where a row of the current step is: its position in its sequence and the cache slot its keys
/// and values go to.
#[derive(Clone, Copy, Default)]
struct RowAt {
    pos: usize,
    slot: usize,
}

/// One sequence's rows in the current step: `len` rows from `first_row`, at positions from
/// `start`, with its page table at `pages` in `step_pages`.
#[derive(Clone, Default)]
struct Run {
    first_row: usize,
    len: usize,
    start: usize,
    pages: std::ops::Range<usize>,
}

impl<'p> Session<'p> {
    /// Checks the plan's steps against its buffers and allocates everything it will ever use.
    pub fn new(plan: &'p LoadedPlan, threads: usize) -> Result<Self, LoadError> {
        let h = &plan.header;
        validate(plan)?;
        let ctx = h.limits.ctx as usize;
        let mut rope: Vec<kernels::RopeTable> = Vec::new();
        let mut max_k = 0usize;
        let (mut normed_len, mut wide_len) = (0usize, 0usize);
        let (mut summed_len, mut attended_len) = (0usize, 0usize);
        // Every product's weights: (weight, k, rows).
        let mut products: Vec<(u32, u32, u32)> = Vec::new();
        let mut formed_len = 0usize;
        for step in &h.steps {
            let rope_of = match step.kernel {
                Kernel::Rope { n_rot, base, .. } => Some((n_rot, base)),
                Kernel::FusedMatMul {
                    epilogue: Epilogue::RopeKv { n_rot, base, .. },
                    ..
                } => Some((n_rot, base)),
                _ => None,
            };
            if let Some((n_rot, base)) = rope_of {
                if !rope
                    .iter()
                    .any(|t| t.base == base && t.n_rot == n_rot as usize)
                {
                    rope.push(kernels::RopeTable::new(base, n_rot as usize, ctx));
                }
            }
            let weight_at = |i: usize| match step.inputs[i] {
                Buf::Weight(w) => w,
                _ => unreachable!("validated"),
            };
            match step.kernel {
                Kernel::MatMul { k, n } => products.push((weight_at(1), k, n)),
                Kernel::FusedMatMul {
                    k,
                    n,
                    post_norm,
                    norm,
                    epilogue,
                    partials,
                    ..
                } => {
                    let layout = step.kernel.fused_inputs().expect("a fused product");
                    for i in layout.weights {
                        let w = weight_at(i);
                        products.push((w, k, h.weights[w as usize].dims[1] as u32));
                    }
                    if norm.is_some() {
                        normed_len = normed_len.max(k as usize);
                    }
                    if post_norm.is_some() && step.formed.is_none() {
                        formed_len = formed_len.max(k as usize);
                    }
                    if matches!(epilogue, Epilogue::Glu(_) | Epilogue::RopeKv { .. }) {
                        wide_len = wide_len.max(n as usize);
                    }
                    if partials.is_some() {
                        summed_len = summed_len.max(k.max(n) as usize);
                    }
                }
                Kernel::AttentionProject {
                    n_head,
                    head_dim,
                    n,
                    ..
                } => {
                    let k = n_head * head_dim;
                    products.push((weight_at(1), k, n));
                    attended_len = attended_len.max(k as usize);
                    wide_len = wide_len.max(n as usize);
                }
                _ => {}
            }
        }
        let matmul_types: Vec<GgmlType> = products
            .iter()
            .map(|&(w, k, _)| {
                max_k = max_k.max(k as usize);
                h.weights[w as usize].ty
            })
            .collect();
        let threads = threads.max(1);
        let max_batch = h.limits.max_batch as usize;
        let (mut heads_per_kv_head, mut head_dim, mut n_head_max) = (1, 1, 0);
        for step in &h.steps {
            if let Kernel::Attention {
                n_head,
                n_kv_head,
                head_dim: hd,
                ..
            }
            | Kernel::AttentionProject {
                n_head,
                n_kv_head,
                head_dim: hd,
                ..
            } = step.kernel
            {
                heads_per_kv_head = heads_per_kv_head.max((n_head / n_kv_head) as usize);
                head_dim = head_dim.max(hd as usize);
                n_head_max = n_head_max.max(n_head as usize);
            }
        }
        let scratch = (0..threads + 1)
            .map(|_| std::sync::Mutex::new(attention::Scratch::new(heads_per_kv_head, head_dim)))
            .collect();
        let kv_row_len = h.kv.layers.iter().map(|l| l.row_len()).max().unwrap_or(0);
        let mut matmul =
            matmul::MatMul::new(threads, max_k, max_batch, &matmul_types, h.activations).map_err(
                |e| LoadError::Threads {
                    threads,
                    why: e.to_string(),
                },
            )?;
        for (w, k, n) in products {
            let info = &h.weights[w as usize];
            matmul.prepare(
                w as usize,
                info.ty,
                plan.weight(w),
                k as usize,
                n as usize,
                info.packed,
            );
        }
        let head_from = h
            .steps
            .iter()
            .rposition(|s| {
                matches!(
                    s.kernel,
                    Kernel::Attention { .. }
                        | Kernel::AttentionProject { .. }
                        | Kernel::Rope { .. }
                        | Kernel::FusedMatMul {
                            epilogue: Epilogue::RopeKv { .. },
                            ..
                        }
                )
            })
            .map_or(0, |i| i + 1);
        let embed_row_len = h
            .steps
            .iter()
            .filter_map(|step| match (&step.kernel, step.inputs.first()) {
                (&Kernel::Embed { n, .. }, Some(&Buf::Weight(w)))
                    if h.weights[w as usize].packed =>
                {
                    h.weights[w as usize].ty.bytes_for(u64::from(n))
                }
                _ => None,
            })
            .max()
            .unwrap_or(0) as usize;
        let mut head_reads: Vec<(usize, usize)> = Vec::new();
        for i in head_from..h.steps.len() {
            let written_in_head = |b: &Buf| {
                h.steps[head_from..i]
                    .iter()
                    .any(|s| s.output == *b || s.formed == Some(*b))
            };
            for b in &h.steps[i].inputs {
                let Buf::Arena { offset, .. } = *b else {
                    continue;
                };
                if written_in_head(b) {
                    continue;
                }
                // Values a row, as the last writer before the head (or the host) laid it out.
                let len = if *b == h.token_ids {
                    1
                } else {
                    let writer = h.steps[..head_from]
                        .iter()
                        .rev()
                        .find(|s| s.output == *b || s.formed == Some(*b))
                        .ok_or_else(|| {
                            LoadError::Invalid(format!("step {i} reads {b:?}, which nothing wrote"))
                        })?;
                    match writer.kernel {
                        Kernel::FusedMatMul { k, .. } if writer.formed == Some(*b) => k as usize,
                        ref k => k.output_len() as usize,
                    }
                };
                let entry = (offset as usize / 4, len);
                if !head_reads.contains(&entry) {
                    head_reads.push(entry);
                }
            }
        }
        if head_from == h.steps.len() {
            // The logits come out of the body itself: the wanted rows are gathered from them.
            let Buf::Arena { offset, .. } = h.logits else {
                unreachable!("validated")
            };
            head_reads.push((offset as usize / 4, h.model.n_vocab as usize));
        }
        let page = h.limits.page_tokens as usize;
        let seq_pages = (h.limits.ctx as usize).div_ceil(page);
        let max_seqs = h.limits.max_seqs as usize;
        Ok(Session {
            plan,
            arena: Arena::new(h.arena.bytes),
            kv: attention::KvCache::new(h.kv.bytes, h.kv.ty, h.limits.kv_tokens as usize),
            rotated: vec![0.0; kv_row_len],
            partials: vec![0.0; n_head_max * ctx.div_ceil(attention::SEGMENT) * (head_dim + 2)],
            rope,
            scratch,
            matmul,
            normed: vec![0.0; normed_len * max_batch],
            formed: vec![0.0; formed_len * max_batch],
            wide: vec![0.0; wide_len * max_batch],
            summed: vec![0.0; summed_len * max_batch],
            attended: vec![0.0; attended_len * max_batch],
            embed_row: vec![0; embed_row_len],
            head_from,
            head_reads,
            rows: vec![RowAt::default(); max_batch],
            runs: Vec::with_capacity(max_seqs),
            step_pages: Vec::with_capacity(max_seqs * seq_pages),
            wanted: Vec::with_capacity(max_batch),
            identity_pages: (0..h.limits.sequence_tokens().div_ceil(page as u32)).collect(),
            n_past: 0,
            kv_write_shift: 0,
        })
    }

    /// The plan's header.
    pub fn plan_header(&self) -> &'p crate::plan::PlanHeader {
        &self.plan.header
    }

    /// Tokens in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forgets the cached tokens (the cache is overwritten by the next evaluation).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Deliberately corrupts the session: the keys and values of single-token (decode) steps are
    /// written `by` positions later than they belong, while prefill stays right. Exists so a test can show that the prefill/decode equivalence check
    /// catches an off-by-one in the KV cache.
    #[doc(hidden)]
    pub fn misplace_kv_writes_for_testing(&mut self, by: usize) {
        self.kv_write_shift = by;
    }

    /// Rolls the cache back to its first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
    }

    /// Evaluates `tokens` after the cached ones and returns their logits, one row of `n_vocab`
    /// values per token.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        self.eval_single(tokens, Logits::All)
    }

    /// Evaluates `tokens` after the cached ones for their keys and values only: the head (the
    /// steps after the last attention, which only make logits) does not run.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<(), EvalError> {
        self.eval_single(tokens, Logits::None).map(drop)
    }

    /// Evaluates `tokens` after the cached ones and returns the last token's logits, running the
    /// head on that token alone (at prefill the head of every other token is wasted work: about a
    /// fifth of SmolLM2's multiply-adds at 128 tokens).
    pub fn eval_last(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        self.eval_single(tokens, Logits::Last)
    }

    /// One step of the single sequence, whose positions are its cache slots.
    fn eval_single(&mut self, tokens: &[u32], logits: Logits) -> Result<&[f32], EvalError> {
        check_step(&self.plan.header, self.n_past + self.kv_write_shift, tokens)?;
        let pages = std::mem::take(&mut self.identity_pages);
        let seq = SeqStep {
            tokens,
            start: self.n_past,
            pages: &pages,
            logits,
        };
        let result = self.run_batch(&[seq]);
        self.identity_pages = pages;
        result?;
        self.n_past += tokens.len();
        Ok(self.logits_rows(self.wanted.len()))
    }

    /// Evaluates one step of several sequences (each with its own positions and page table,
    /// [`crate::batch::check`]ed) and returns the wanted logits rows, sequence after sequence.
    /// Every row's result depends only on its own sequence: a sequence gets the same bits alone
    /// or with any others.
    pub fn step(&mut self, seqs: &[SeqStep]) -> Result<&[f32], EvalError> {
        crate::batch::check(&self.plan.header, seqs)?;
        self.run_batch(seqs)?;
        Ok(self.logits_rows(self.wanted.len()))
    }

    /// Lays out the step's rows, runs the body on all of them and the head on the wanted ones.
    fn run_batch(&mut self, seqs: &[SeqStep]) -> Result<(), EvalError> {
        let h = &self.plan.header;
        let page = h.limits.page_tokens as usize;
        let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let Buf::Arena { offset, .. } = h.token_ids else {
            unreachable!("validated")
        };
        let ids = &mut self.arena.0[offset as usize / 4..][..n];
        self.runs.clear();
        self.step_pages.clear();
        self.wanted.clear();
        let mut row = 0;
        for s in seqs {
            let len = s.tokens.len();
            for (slot, &id) in ids[row..row + len].iter_mut().zip(s.tokens) {
                *slot = f32::from_bits(id);
            }
            let pages = self.step_pages.len()..self.step_pages.len() + s.pages.len();
            self.step_pages.extend_from_slice(s.pages);
            for t in 0..len {
                let pos = s.start + t;
                let write = if n == 1 {
                    pos + self.kv_write_shift
                } else {
                    pos
                };
                self.rows[row + t] = RowAt {
                    pos,
                    slot: s.pages[write / page] as usize * page + write % page,
                };
            }
            self.runs.push(Run {
                first_row: row,
                len,
                start: s.start,
                pages,
            });
            match s.logits {
                Logits::None => {}
                Logits::Last => self.wanted.push(row + len - 1),
                Logits::All => self.wanted.extend(row..row + len),
            }
            row += len;
        }
        for step in 0..self.head_from {
            self.run_step(step, n);
        }
        let wanted = self.wanted.len();
        if wanted == 0 {
            return Ok(());
        }
        if wanted < n {
            for &(at, len) in &self.head_reads {
                for (i, &r) in self.wanted.iter().enumerate() {
                    if r != i {
                        // Rows only move forward (wanted rows are in order), never over one
                        // still to be moved.
                        self.arena
                            .0
                            .copy_within(at + r * len..at + (r + 1) * len, at + i * len);
                    }
                }
            }
        }
        for step in self.head_from..self.plan.header.steps.len() {
            self.run_step(step, wanted);
        }
        Ok(())
    }

    fn logits_rows(&self, rows: usize) -> &[f32] {
        let h = &self.plan.header;
        let Buf::Arena { offset, .. } = h.logits else {
            unreachable!("validated")
        };
        &self.arena.0[offset as usize / 4..][..rows * h.model.n_vocab as usize]
    }

    /// Runs step `index` on the first `n_tokens` rows of its operands: each kernel's CPU code is
    /// the method of its name in `ops.rs`.
    fn run_step(&mut self, index: usize, n_tokens: usize) {
        let ops = Operands::new(self.plan, index, &mut self.arena.0, n_tokens);
        match ops.step.kernel {
            Kernel::Embed { n, scale } => self.embed(&ops, n, scale),
            Kernel::RmsNorm { n, groups, eps } => self.rms_norm(&ops, n, groups, eps),
            Kernel::MatMul { k, n } => self.matmul(&ops, k, n),
            Kernel::Add { n, broadcast } => kernels::binary(
                ops.read(&ops.step.inputs[0], n as usize),
                ops.operand(1, n as usize),
                ops.write(n as usize),
                n as usize,
                broadcast,
                |a, b| a + b,
            ),
            Kernel::Mul { n, broadcast } => kernels::binary(
                ops.read(&ops.step.inputs[0], n as usize),
                ops.operand(1, n as usize),
                ops.write(n as usize),
                n as usize,
                broadcast,
                |a, b| a * b,
            ),
            Kernel::Scale { n, factor } => {
                for (o, &v) in ops
                    .write(n as usize)
                    .iter_mut()
                    .zip(ops.read(&ops.step.inputs[0], n as usize))
                {
                    *o = v * factor;
                }
            }
            Kernel::Unary { n, op } => kernels::unary(
                ops.read(&ops.step.inputs[0], n as usize),
                ops.write(n as usize),
                op,
            ),
            Kernel::Rope {
                n_head,
                head_dim,
                n_rot,
                base,
                neox,
            } => self.rope(&ops, n_head, head_dim, n_rot, base, neox),
            Kernel::Attention { append, .. } => {
                self.attention(&ops, Heads::of(&ops.step.kernel), append)
            }
            Kernel::AttentionProject { n, .. } => {
                self.attention_project(&ops, Heads::of(&ops.step.kernel), n)
            }
            Kernel::FusedMatMul {
                k,
                n,
                post_norm,
                norm,
                epilogue,
                partials,
                ..
            } => self.fused_matmul(&ops, k, n, post_norm, norm, epilogue, partials),
        }
    }

    /// Attention of the step's query rows `q`, each over its sequence's positions in the layer's
    /// cache, into `out`, spread over the threads by (tile of one sequence's tokens, KV head,
    /// part of its query heads), or, for a single token whose keys span several segments, by
    /// (KV head, segment), merged here afterwards: the same bits either way.
    fn attend(&mut self, heads: Heads, q: &[f32], out: &mut [f32]) {
        let (hd, h) = (heads.head_dim as usize, heads.n_head as usize);
        let lay = self.plan.header.kv.layers[heads.layer as usize];
        let n_kv_head = heads.n_kv_head as usize;
        let group = h / n_kv_head;
        let tile = attention::TILE;
        let runs = &self.runs;
        let tiles: usize = runs.iter().map(|r| r.len.div_ceil(tile)).sum();
        // Tile `i` of the step, counted from the last: its sequence and its first token there.
        let tile_at = |i: usize| {
            let mut from_end = i;
            for run in runs.iter().rev() {
                let count = run.len.div_ceil(tile);
                if from_end < count {
                    return (run, (count - 1 - from_end) * tile);
                }
                from_end -= count;
            }
            unreachable!("fewer than {tiles} tiles")
        };
        let page_shift = self.plan.header.limits.page_tokens.trailing_zeros();
        let queries_of =
            |run: &Run, first_token: usize, tokens: usize, count: usize| attention::Queries {
                first_token,
                tokens,
                heads: count,
                past: run.start,
                window: heads.window.map(|w| w as usize),
                scale: heads.scale,
                pages: &self.step_pages[run.pages.clone()],
                page_shift,
            };
        let kv_of = |kv_head: usize| attention::KvHead {
            k_offset: lay.k_offset,
            v_offset: lay.v_offset,
            head: kv_head,
            head_dim: hd,
        };
        let segments = queries_of(&runs[0], 0, 1, 1).segments();
        let threads = self.matmul.threads();
        let split = runs.len() == 1 && runs[0].len == 1 && segments.len() > 1;
        // Each item reads its KV head's rows once for all its tokens and heads; a decoded token
        // still has an item per thread.
        let per_item = if split { segments.len() } else { tiles };
        let parts = threads.div_ceil(per_item * n_kv_head).clamp(1, group);
        let per_part = group.div_ceil(parts);
        let items_per_tile = n_kv_head * parts;
        let heads_of = |item: usize| {
            let (kv_head, part) = (item / parts, item % parts);
            let first = kv_head * group + part * per_part;
            (
                kv_head,
                first,
                per_part.min(((kv_head + 1) * group).saturating_sub(first)),
            )
        };
        let scratch = &self.scratch;
        if split {
            let n_seg = segments.len();
            // Per query head and segment: the segment's max, sum and weighted values.
            let slot = hd + 2;
            let partials = Disjoint::new(&mut self.partials);
            let partials = &partials;
            self.matmul.for_each(n_seg * items_per_tile, &|i, worker| {
                let (seg, item) = (i / items_per_tile, i % items_per_tile);
                let (kv_head, first, count) = heads_of(item);
                if count == 0 {
                    return;
                }
                let query = |_: usize, head: usize| &q[(first + head) * hd..][..hd];
                let mut s = scratch[worker].lock().expect("not poisoned");
                let queries = queries_of(&runs[0], 0, 1, count);
                let segment = segments.start + seg;
                attention::attend_segment(
                    &self.kv,
                    kv_of(kv_head),
                    queries,
                    &query,
                    segment,
                    &mut s,
                );
                for head in 0..count {
                    let part = s.segment_partial(head, hd);
                    let at = ((first + head) * n_seg + seg) * slot;
                    // SAFETY: item i is the only one writing its heads' slots of segment seg.
                    let p = unsafe { partials.range(at, slot) };
                    p[0] = part.max;
                    p[1] = part.sum;
                    p[2..].copy_from_slice(part.out);
                }
            });
            for (head, o) in out[..h * hd].chunks_exact_mut(hd).enumerate() {
                let (mut max, mut sum) = (0.0, 0.0);
                for seg in 0..n_seg {
                    let p = &self.partials[(head * n_seg + seg) * slot..][..slot];
                    let part = attention::Partial {
                        max: p[0],
                        sum: p[1],
                        out: &p[2..],
                    };
                    attention::merge(&mut max, &mut sum, o, part, seg == 0);
                }
                attention::normalize(o, sum);
            }
            return;
        }
        let out = Disjoint::new(out);
        let out = &out;
        self.matmul.for_each(tiles * items_per_tile, &|i, worker| {
            // Later tiles see more positions: they go first, so the last items are short.
            let (run, first_token) = tile_at(i / items_per_tile);
            let tokens = tile.min(run.len - first_token);
            let (kv_head, first, count) = heads_of(i % items_per_tile);
            if count == 0 {
                return;
            }
            let row0 = run.first_row;
            let query = |t: usize, head: usize| &q[((row0 + t) * h + first + head) * hd..][..hd];
            let mut s = scratch[worker].lock().expect("not poisoned");
            let queries = queries_of(run, first_token, tokens, count);
            attention::attend(&self.kv, kv_of(kv_head), queries, &query, &mut s);
            for t in 0..tokens {
                let at = ((row0 + first_token + t) * h + first) * hd;
                // SAFETY: item i is the only one writing these head rows of the output.
                let o = unsafe { out.range(at, count * hd) };
                o.copy_from_slice(&s.out[t * count * hd..][..count * hd]);
            }
        });
    }
}

/// The runtime's validator: every step's operands must be where the kernel will look, so the
/// interpreter can index without checks and without unsafety leaking.
fn validate(plan: &LoadedPlan) -> Result<(), LoadError> {
    let h = &plan.header;
    let max_batch = u64::from(h.limits.max_batch);
    let l = &h.limits;
    if l.ctx == 0
        || l.max_batch == 0
        || l.max_seqs == 0
        || !l.page_tokens.is_power_of_two()
        || l.kv_tokens == 0
        || !l.kv_tokens.is_multiple_of(l.page_tokens)
    {
        return Err(LoadError::Invalid(format!("limits {l:?}")));
    }
    for (i, w) in h.weights.iter().enumerate() {
        let shape = (w.dims.len() == 2).then(|| (w.dims[0] as usize, w.dims[1] as usize));
        let whole = shape.and_then(|(k, n)| Packed::new(w.ty, plan.weight(i as u32), k, n));
        if w.packed && whole.is_none() {
            return Err(LoadError::Invalid(format!(
                "weight '{}' is marked packed, but {} {:?} in {} bytes has no packed layout",
                w.name, w.ty, w.dims, w.bytes
            )));
        }
    }
    let arena_region = |b: &Buf, per_row_values: u64| -> Result<(u64, u64), String> {
        match *b {
            Buf::Arena { offset, row_bytes } => {
                let need = per_row_values * 4;
                let end = offset.checked_add(
                    row_bytes
                        .max(need)
                        .checked_mul(max_batch)
                        .ok_or("size overflows")?,
                );
                if offset % 4 != 0 || row_bytes < need || end.is_none_or(|e| e > h.arena.bytes) {
                    return Err(format!("arena operand {b:?} ({per_row_values} values a row) outside the {}-byte arena", h.arena.bytes));
                }
                Ok((offset, offset + need * max_batch))
            }
            Buf::Weight(_) => Err(format!("{b:?} where an activation is expected")),
        }
    };
    let weight = |b: &Buf| -> Result<&crate::plan::WeightInfo, String> {
        match *b {
            Buf::Weight(i) => h
                .weights
                .get(i as usize)
                .ok_or_else(|| format!("weight {i} does not exist")),
            _ => Err(format!("{b:?} where a weight is expected")),
        }
    };
    // The weight of a product of k inputs and n outputs, of a type the products read.
    let product_weight = |b: &Buf, k: u32, n: u32| -> Result<(), String> {
        let w = weight(b)?;
        if w.dims != [u64::from(k), u64::from(n)] || !matmul_supports(w.ty) {
            return Err(format!("weight '{}' is {} {:?}", w.name, w.ty, w.dims));
        }
        Ok(())
    };
    let f32_weight = |b: &Buf, len: u64| -> Result<(), String> {
        let w = weight(b)?;
        if w.ty != GgmlType::F32 || w.dims.iter().product::<u64>() != len {
            return Err(format!(
                "weight '{}' should be f32 with {len} values, is {} {:?}",
                w.name, w.ty, w.dims
            ));
        }
        Ok(())
    };
    let check_kv_layer = |layer: u32, n_head: u32, n_kv_head: u32, head_dim: u32| {
        let lay =
            h.kv.layers
                .get(layer as usize)
                .ok_or_else(|| format!("no KV layer {layer}"))?;
        if lay.n_kv_head != n_kv_head
            || lay.head_dim != head_dim
            || n_kv_head == 0
            || !n_head.is_multiple_of(n_kv_head)
        {
            return Err(format!(
                "heads {n_head}/{n_kv_head}x{head_dim} vs KV layer {lay:?}"
            ));
        }
        h.kv.ty.supports(head_dim)?;
        let region = u64::from(h.limits.kv_tokens)
            * u64::from(n_kv_head)
            * h.kv.ty.row_bytes(head_dim as usize) as u64;
        for off in [lay.k_offset, lay.v_offset] {
            if off % 4 != 0 || off.checked_add(region).is_none_or(|e| e > h.kv.bytes) {
                return Err(format!(
                    "KV layer {layer} outside the {}-byte cache",
                    h.kv.bytes
                ));
            }
        }
        Ok(())
    };
    arena_region(&h.token_ids, 1).map_err(LoadError::Invalid)?;
    arena_region(&h.logits, u64::from(h.model.n_vocab)).map_err(LoadError::Invalid)?;
    for (i, step) in h.steps.iter().enumerate() {
        let check = || -> Result<(), String> {
            let arity = |n: usize| {
                if step.inputs.len() == n {
                    Ok(())
                } else {
                    Err(format!("{} inputs, expected {n}", step.inputs.len()))
                }
            };
            let mut regions = Vec::new();
            let mut formed = None;
            if step.formed.is_some() && !matches!(step.kernel, Kernel::FusedMatMul { .. }) {
                return Err("only a fused product stores its formed input".into());
            }
            let out = match step.kernel {
                Kernel::Embed { n, .. } => {
                    arity(2)?;
                    let w = weight(&step.inputs[0])?;
                    // Rows beyond the vocabulary are never read: ids are checked against it.
                    if w.dims.len() != 2
                        || w.dims[0] != u64::from(n)
                        || w.dims[1] < u64::from(h.model.n_vocab)
                        || !crate::quant::can_dequantize(w.ty)
                    {
                        return Err(format!("table '{}' is {} {:?}", w.name, w.ty, w.dims));
                    }
                    regions.push(arena_region(&step.inputs[1], 1)?);
                    arena_region(&step.output, u64::from(n))?
                }
                Kernel::RmsNorm { n, groups, .. } => {
                    arity(2)?;
                    f32_weight(&step.inputs[1], u64::from(n))?;
                    regions.push(arena_region(&step.inputs[0], u64::from(n * groups))?);
                    arena_region(&step.output, u64::from(n * groups))?
                }
                Kernel::MatMul { k, n } => {
                    arity(2)?;
                    product_weight(&step.inputs[1], k, n)?;
                    regions.push(arena_region(&step.inputs[0], u64::from(k))?);
                    arena_region(&step.output, u64::from(n))?
                }
                Kernel::Add { n, broadcast } | Kernel::Mul { n, broadcast } => {
                    arity(2)?;
                    regions.push(arena_region(&step.inputs[0], u64::from(n))?);
                    if broadcast {
                        f32_weight(&step.inputs[1], u64::from(n))?;
                    } else {
                        regions.push(arena_region(&step.inputs[1], u64::from(n))?);
                    }
                    arena_region(&step.output, u64::from(n))?
                }
                Kernel::Scale { n, .. } | Kernel::Unary { n, .. } => {
                    arity(1)?;
                    regions.push(arena_region(&step.inputs[0], u64::from(n))?);
                    arena_region(&step.output, u64::from(n))?
                }
                Kernel::Rope {
                    n_head,
                    head_dim,
                    n_rot,
                    ..
                } => {
                    arity(1)?;
                    if n_rot > head_dim || n_rot % 2 != 0 {
                        return Err(format!("n_rot {n_rot} with head_dim {head_dim}"));
                    }
                    regions.push(arena_region(&step.inputs[0], u64::from(n_head * head_dim))?);
                    arena_region(&step.output, u64::from(n_head * head_dim))?
                }
                Kernel::Attention {
                    layer,
                    n_head,
                    n_kv_head,
                    head_dim,
                    append,
                    ..
                } => {
                    check_kv_layer(layer, n_head, n_kv_head, head_dim)?;
                    regions.push(arena_region(&step.inputs[0], u64::from(n_head * head_dim))?);
                    if append {
                        arity(3)?;
                        for kv in &step.inputs[1..] {
                            regions.push(arena_region(kv, u64::from(n_kv_head * head_dim))?);
                        }
                    } else {
                        arity(1)?;
                    }
                    arena_region(&step.output, u64::from(n_head * head_dim))?
                }
                Kernel::AttentionProject {
                    layer,
                    n_head,
                    n_kv_head,
                    head_dim,
                    n,
                    ..
                } => {
                    arity(2)?;
                    check_kv_layer(layer, n_head, n_kv_head, head_dim)?;
                    product_weight(&step.inputs[1], n_head * head_dim, n)?;
                    regions.push(arena_region(&step.inputs[0], u64::from(n_head * head_dim))?);
                    arena_region(&step.output, u64::from(n_head * n))?
                }
                Kernel::FusedMatMul {
                    k,
                    n,
                    weights,
                    post_norm,
                    norm: _,
                    epilogue,
                    partials,
                } => {
                    if weights == 0 || weights as usize > MAX_STACKED_WEIGHTS {
                        return Err(format!("{weights} stacked weights"));
                    }
                    if let Epilogue::Glu(_) = epilogue {
                        if n % 2 != 0 {
                            return Err(format!("a GLU product of {n} rows"));
                        }
                    }
                    let layout = step.kernel.fused_inputs().expect("a fused product");
                    arity(layout.len)?;
                    let mut rows = 0u64;
                    for i in layout.weights.clone() {
                        let w = weight(&step.inputs[i])?;
                        let part_rows = w.dims.get(1).copied().unwrap_or(0);
                        product_weight(&step.inputs[i], k, part_rows as u32)?;
                        rows += part_rows;
                    }
                    if rows != u64::from(n) {
                        return Err(format!("stacked weights of {rows} rows for {n} outputs"));
                    }
                    if let Some(p) = partials {
                        let len = match p.into {
                            PartialsInto::Input => k,
                            PartialsInto::Residual if epilogue == Epilogue::Add => n,
                            PartialsInto::Residual => {
                                return Err("parts for a residual, without one".into())
                            }
                        };
                        let parts = &step.inputs[layout.parts.expect("with partials")];
                        regions.push(arena_region(parts, u64::from(p.count * len))?);
                    }
                    regions.push(arena_region(&step.inputs[0], u64::from(k))?);
                    if let Some(i) = layout.post_y {
                        regions.push(arena_region(&step.inputs[i], u64::from(k))?);
                    }
                    if let Some(i) = layout.post_weight {
                        f32_weight(&step.inputs[i], u64::from(k))?;
                    }
                    if let Some(i) = layout.norm_weight {
                        f32_weight(&step.inputs[i], u64::from(k))?;
                    }
                    match (step.formed, post_norm) {
                        (Some(b), Some(_)) => formed = Some(arena_region(&b, u64::from(k))?),
                        (Some(_), None) => {
                            return Err("stores a formed input, without a post-norm".into())
                        }
                        (None, _) => {}
                    }
                    match epilogue {
                        Epilogue::Add => {
                            let residual = &step.inputs[layout.epilogue.expect("with Add")];
                            regions.push(arena_region(residual, u64::from(n))?)
                        }
                        Epilogue::RopeKv {
                            layer,
                            n_head,
                            n_kv_head,
                            head_dim,
                            n_rot,
                            bias,
                            ..
                        } => {
                            check_kv_layer(layer, n_head, n_kv_head, head_dim)?;
                            if n != (n_head + 2 * n_kv_head) * head_dim
                                || n_rot > head_dim
                                || n_rot % 2 != 0
                            {
                                return Err(format!(
                                    "{n} rows for heads {n_head}/{n_kv_head}x{head_dim}, n_rot {n_rot}"
                                ));
                            }
                            if bias {
                                let b = &step.inputs[layout.epilogue.expect("with a bias")];
                                f32_weight(b, u64::from(n))?;
                            }
                            if let Some(i) = layout.qk_norm {
                                f32_weight(&step.inputs[i], u64::from(head_dim))?;
                                f32_weight(&step.inputs[i + 1], u64::from(head_dim))?;
                            }
                        }
                        Epilogue::Store | Epilogue::Glu(_) => {}
                    }
                    arena_region(&step.output, u64::from(epilogue.output_len(n)))?
                }
            };
            for out in [Some(out), formed].into_iter().flatten() {
                if let Some(r) = regions.iter().find(|r| r.0 < out.1 && out.0 < r.1) {
                    return Err(format!("output {out:?} overlaps input {r:?}"));
                }
            }
            if let (Some(f), o) = (formed, out) {
                if f.0 < o.1 && o.0 < f.1 {
                    return Err(format!("formed input {f:?} overlaps output {o:?}"));
                }
            }
            Ok(())
        };
        check().map_err(|why| LoadError::InvalidStep {
            step: i,
            kernel: format!("{:?}", step.kernel),
            why,
        })?;
    }
    Ok(())
}
