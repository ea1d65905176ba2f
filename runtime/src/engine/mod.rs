//! The engine: many requests through one plan, each step carrying the next token of every
//! running sequence and, in the rest of the plan's batch, chunks of the prompts still to be
//! read (chunked prefill, so a long prompt never stalls the others' decode).
//!
//! Sequences take KV cache pages as they grow. A new request is admitted when the pages its
//! prompt needs now are available (after reusing the cached pages of any prefix it shares with
//! earlier sequences). When pages run out mid-generation, the youngest running sequence is
//! preempted: its pages are let go and it waits to be recomputed from its tokens so far, which
//! gives the same logits (a sequence's results do not depend on what shares its steps) and so
//! the same tokens.

mod pages;

use std::collections::VecDeque;

use crate::batch::{Logits, SeqStep};
use crate::cpu::EvalError;
use crate::plan::PlanHeader;
use crate::sampling::{Sampler, SamplingParams};

pub use pages::PagePool;

/// A backend that evaluates steps of several sequences.
pub trait BatchEvaluator {
    fn header(&self) -> &PlanHeader;
    /// [`crate::cpu::Session::step`].
    fn step(&mut self, seqs: &[SeqStep]) -> Result<&[f32], EvalError>;
}

/// A backend lent to an engine: several engines in turn can share one loaded session.
impl<B: BatchEvaluator + ?Sized> BatchEvaluator for &mut B {
    fn header(&self) -> &PlanHeader {
        (**self).header()
    }
    fn step(&mut self, seqs: &[SeqStep]) -> Result<&[f32], EvalError> {
        (**self).step(seqs)
    }
}

impl BatchEvaluator for crate::cpu::Session<'_> {
    fn header(&self) -> &PlanHeader {
        self.plan_header()
    }
    fn step(&mut self, seqs: &[SeqStep]) -> Result<&[f32], EvalError> {
        crate::cpu::Session::step(self, seqs)
    }
}

impl BatchEvaluator for crate::gpu::GpuSession<'_> {
    fn header(&self) -> &PlanHeader {
        self.plan_header()
    }
    fn step(&mut self, seqs: &[SeqStep]) -> Result<&[f32], EvalError> {
        crate::gpu::GpuSession::step(self, seqs)
    }
}

/// What to generate for one prompt.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens that end the generation (not emitted): the model's end-of-generation ids, say.
    pub stop_ids: Vec<u32>,
    /// Report each generated token's log-probability and this many of the likeliest
    /// alternatives' (under the model's distribution, before sampling's adjustments).
    pub logprobs: Option<usize>,
    /// What the output must match (structured output); the sequence ends when it is complete.
    pub constraint: Option<crate::constraint::Constraint>,
}

pub type RequestId = u64;

/// Why a request stopped generating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// It sampled one of its stop ids.
    Stop,
    /// It generated `max_tokens` tokens.
    Length,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event<'a> {
    /// The request's next token.
    Token {
        id: RequestId,
        token: u32,
        /// When the request asked for them.
        logprobs: Option<Logprobs<'a>>,
    },
    /// The request is done; its pages are let go.
    Finished(RequestId, Finish),
}

/// Natural-log probabilities of a generated token and of the likeliest tokens at its position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Logprobs<'a> {
    pub token: f32,
    /// The likeliest first, ties by id.
    pub top: &'a [(u32, f32)],
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt of {prompt} tokens + {max_tokens} to generate exceed the plan's context of {ctx} tokens a sequence")]
    TooLongForContext {
        prompt: usize,
        max_tokens: usize,
        ctx: usize,
    },
    #[error("prompt of {prompt} tokens + {max_tokens} to generate need {pages} KV pages, but the pool has {pool} (compile with a larger --kv-tokens)")]
    TooLongForPool {
        prompt: usize,
        max_tokens: usize,
        pages: usize,
        pool: usize,
    },
    #[error("token id {id} is outside the vocabulary (0..{n_vocab})")]
    BadToken { id: u32, n_vocab: u32 },
    #[error("bad sampling parameters: {0}")]
    Sampling(String),
}

/// A request on its way: its tokens so far (prompt, then generated), how many of them the cache
/// holds, and its pages.
struct Sequence {
    id: RequestId,
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose keys and values are in the pages.
    cached: usize,
    pages: Vec<u32>,
    /// Leading pages registered with the pool for reuse.
    registered: usize,
    sampler: Sampler,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    logprobs: Option<usize>,
    constraint: Option<crate::constraint::Constraint>,
    finished: Option<Finish>,
}

impl Sequence {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Counters for reports and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub steps: u64,
    /// Tokens evaluated (prompt and generated, recomputation included).
    pub tokens_evaluated: u64,
    /// Prompt tokens whose pages were reused instead of computed.
    pub tokens_reused: u64,
    pub preemptions: u64,
}

/// Where one sequence's share of the next step lies.
#[derive(Clone, Copy)]
struct Share {
    seq: usize,
    len: usize,
}

pub struct Engine<B> {
    backend: B,
    pool: PagePool,
    n_vocab: usize,
    ctx: usize,
    max_batch: usize,
    max_seqs: usize,
    next_id: RequestId,
    /// Admitted, oldest first.
    running: Vec<Sequence>,
    /// Not yet admitted or preempted, in the order they will be admitted.
    waiting: VecDeque<Sequence>,
    shares: Vec<Share>,
    /// A row's largest logits, for samplers that decide from those.
    candidates: Vec<(u32, f32)>,
    /// A row with a constraint's forbidden tokens masked out.
    masked: Vec<f32>,
    /// The recycled allocation of the step's list of shares.
    seq_steps: Vec<SeqStep<'static>>,
    stats: EngineStats,
}

impl<B: BatchEvaluator> Engine<B> {
    pub fn new(backend: B) -> Self {
        let h = backend.header();
        let (l, n_vocab) = (h.limits, h.model.n_vocab as usize);
        Engine {
            pool: PagePool::new(l.kv_pages(), l.page_tokens as usize),
            n_vocab,
            ctx: l.ctx as usize,
            max_batch: l.max_batch as usize,
            max_seqs: l.max_seqs as usize,
            backend,
            next_id: 0,
            running: Vec::with_capacity(l.max_seqs as usize),
            waiting: VecDeque::new(),
            shares: Vec::with_capacity(l.max_seqs as usize),
            candidates: Vec::with_capacity(n_vocab),
            masked: Vec::with_capacity(n_vocab),
            seq_steps: Vec::with_capacity(l.max_seqs as usize),
            stats: EngineStats::default(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn pool(&self) -> &PagePool {
        &self.pool
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Requests admitted and generating (or reading their prompt).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether any request is unfinished.
    pub fn busy(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Queues a request. Refused when it could not run even alone: prompt and generation longer
    /// than a sequence's context or than the whole pool.
    pub fn add(&mut self, request: Request) -> Result<RequestId, RequestError> {
        let Request {
            prompt,
            sampling,
            max_tokens,
            stop_ids,
            logprobs,
            constraint,
        } = request;
        if prompt.is_empty() {
            return Err(RequestError::EmptyPrompt);
        }
        let n_vocab = self.n_vocab as u32;
        if let Some(&id) = prompt.iter().find(|&&id| id >= n_vocab) {
            return Err(RequestError::BadToken { id, n_vocab });
        }
        sampling.validate().map_err(RequestError::Sampling)?;
        // The last generated token is never evaluated, so it needs no cache position.
        let positions = prompt.len() + max_tokens.saturating_sub(1);
        if positions > self.ctx {
            return Err(RequestError::TooLongForContext {
                prompt: prompt.len(),
                max_tokens,
                ctx: self.ctx,
            });
        }
        let pages = positions.div_ceil(self.pool.page_tokens());
        if pages > self.pool.pages() {
            return Err(RequestError::TooLongForPool {
                prompt: prompt.len(),
                max_tokens,
                pages,
                pool: self.pool.pages(),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut tokens = Vec::with_capacity(prompt.len() + max_tokens);
        tokens.extend_from_slice(&prompt);
        let mut sampler = Sampler::new(sampling, self.n_vocab);
        // The penalties see the prompt too.
        for &t in &prompt {
            sampler.accept(t);
        }
        self.waiting.push_back(Sequence {
            id,
            prompt_len: prompt.len(),
            tokens,
            cached: 0,
            pages: Vec::with_capacity(pages),
            registered: 0,
            sampler,
            max_tokens,
            stop_ids,
            logprobs,
            constraint,
            finished: None,
        });
        Ok(id)
    }

    /// Stops a request now, waiting or running; its pages are let go at once. False if it is
    /// not (or no longer) here.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            let seq = self.running.remove(i);
            self.pool.release(&seq.pages);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let seq = self.waiting.remove(i).expect("found");
            self.pool.release(&seq.pages);
            return true;
        }
        false
    }

    /// Runs one step: every running sequence's next token, then prompt chunks in the rest of
    /// the batch, admitting waiting requests while pages and room allow. Calls `on_event` for
    /// every token generated and every request finished. Returns the tokens evaluated (0 when
    /// there was nothing to do).
    pub fn step(&mut self, mut on_event: impl FnMut(Event<'_>)) -> Result<usize, EvalError> {
        // Nothing to generate: done before taking any memory.
        while let Some(i) = self.waiting.iter().position(|s| s.max_tokens == 0) {
            let s = self.waiting.remove(i).expect("found");
            on_event(Event::Finished(s.id, Finish::Length));
        }
        self.pool.tick();
        self.schedule();
        if self.shares.is_empty() {
            return if self.busy() {
                Err(EvalError::Scheduler(format!(
                    "no request could be scheduled ({} running, {} waiting, {} of {} pages available)",
                    self.running.len(),
                    self.waiting.len(),
                    self.pool.available(),
                    self.pool.pages()
                )))
            } else {
                Ok(0)
            };
        }
        let mut seq_steps = recycle(std::mem::take(&mut self.seq_steps));
        for share in &self.shares {
            let s = &self.running[share.seq];
            let done = s.cached + share.len == s.tokens.len();
            seq_steps.push(SeqStep {
                tokens: &s.tokens[s.cached..s.cached + share.len],
                start: s.cached,
                pages: &s.pages,
                logits: if done { Logits::Last } else { Logits::None },
            });
        }
        let evaluated: usize = self.shares.iter().map(|s| s.len).sum();
        let result = self.backend.step(&seq_steps);
        self.seq_steps = recycle(seq_steps);
        let logits = result?;
        self.stats.steps += 1;
        self.stats.tokens_evaluated += evaluated as u64;
        let mut row = 0;
        for share in &self.shares {
            let s = &mut self.running[share.seq];
            s.cached += share.len;
            if s.cached < s.tokens.len() {
                continue;
            }
            let logits = &logits[row * self.n_vocab..][..self.n_vocab];
            row += 1;
            let next = match (&mut s.constraint, s.sampler.candidates_needed()) {
                (Some(c), _) => {
                    self.masked.clear();
                    self.masked.extend_from_slice(logits);
                    match c.mask(&mut self.masked) {
                        Ok(()) => s.sampler.sample(&self.masked),
                        Err(e) => {
                            // The output so far is a valid prefix; end it there.
                            eprintln!("llamart: request {}: {e}", s.id);
                            s.finished = Some(Finish::Stop);
                            continue;
                        }
                    }
                }
                (None, Some(k)) => {
                    crate::eval::top_logits_into(logits, k, &mut self.candidates);
                    s.sampler.sample_candidates(&self.candidates)
                }
                (None, None) => s.sampler.sample(logits),
            };
            if s.stop_ids.contains(&next) {
                s.finished = Some(Finish::Stop);
                continue;
            }
            if let Some(c) = &mut s.constraint {
                if let Err(e) = c.accept(next) {
                    eprintln!("llamart: request {}: {e}", s.id);
                    s.finished = Some(Finish::Stop);
                    continue;
                }
                if c.finished() {
                    s.finished = Some(Finish::Stop);
                }
            }
            s.sampler.accept(next);
            s.tokens.push(next);
            let logprobs = s.logprobs.map(|k| {
                let lse = crate::eval::log_sum_exp(logits);
                crate::eval::top_logits_into(logits, k, &mut self.candidates);
                for c in &mut self.candidates {
                    c.1 = (f64::from(c.1) - lse) as f32;
                }
                Logprobs {
                    token: (f64::from(logits[next as usize]) - lse) as f32,
                    top: &self.candidates,
                }
            });
            on_event(Event::Token {
                id: s.id,
                token: next,
                logprobs,
            });
            if s.finished.is_none() && s.generated() == s.max_tokens {
                s.finished = Some(Finish::Length);
            }
        }
        // Register the pages that filled up, then retire the finished.
        let page = self.pool.page_tokens();
        for s in &mut self.running {
            while s.registered < s.cached / page {
                let r = s.registered;
                let parent = r.checked_sub(1).map(|p| s.pages[p]);
                self.pool
                    .register(s.pages[r], parent, &s.tokens[r * page..(r + 1) * page]);
                s.registered += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            match self.running[i].finished {
                Some(f) => {
                    let s = self.running.remove(i);
                    self.pool.release(&s.pages);
                    on_event(Event::Finished(s.id, f));
                }
                None => i += 1,
            }
        }
        Ok(evaluated)
    }

    /// Runs steps until every request is done.
    pub fn run_to_completion(
        &mut self,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), EvalError> {
        while self.busy() {
            self.step(&mut on_event)?;
        }
        Ok(())
    }

    /// Chooses the step's shares: the running sequences' next tokens (decodes first, then
    /// prompt chunks, oldest first), preempting the youngest while their pages do not fit; then
    /// admits waiting requests into what room is left.
    fn schedule(&mut self) {
        let page = self.pool.page_tokens();
        let mut budget;
        loop {
            self.shares.clear();
            budget = self.max_batch;
            for decode in [true, false] {
                for (seq, s) in self.running.iter().enumerate() {
                    let remaining = s.tokens.len() - s.cached;
                    if (remaining == 1) == decode && budget > 0 {
                        let len = remaining.min(budget);
                        self.shares.push(Share { seq, len });
                        budget -= len;
                    }
                }
            }
            let needed: usize = self
                .shares
                .iter()
                .map(|sh| {
                    let s = &self.running[sh.seq];
                    (s.cached + sh.len)
                        .div_ceil(page)
                        .saturating_sub(s.pages.len())
                })
                .sum();
            if needed <= self.pool.available() || self.running.is_empty() {
                break;
            }
            self.preempt(self.running.len() - 1);
        }
        for sh in &self.shares {
            let s = &mut self.running[sh.seq];
            while s.pages.len() < (s.cached + sh.len).div_ceil(page) {
                s.pages
                    .push(self.pool.take().expect("counted as available"));
            }
        }
        // Admit while there is room in the batch, in the step's sequences and in the pool.
        while budget > 0 && self.running.len() < self.max_seqs {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            if self.prefix_in_progress(&s.tokens) {
                self.waiting.push_front(s);
                break;
            }
            // Reuse whole cached pages of a shared prefix, keeping one token to evaluate.
            let reusable = (s.tokens.len() - 1) / page * page;
            self.pool.reuse_prefix(&s.tokens[..reusable], &mut s.pages);
            s.cached = s.pages.len() * page;
            s.registered = s.pages.len();
            let len = (s.tokens.len() - s.cached).min(budget);
            let need = (s.cached + len).div_ceil(page) - s.pages.len();
            if need > self.pool.available() {
                self.pool.release(&s.pages);
                s.pages.clear();
                s.cached = 0;
                s.registered = 0;
                self.waiting.push_front(s);
                break;
            }
            self.stats.tokens_reused += s.cached as u64;
            for _ in 0..need {
                s.pages
                    .push(self.pool.take().expect("counted as available"));
            }
            self.running.push(s);
            self.shares.push(Share {
                seq: self.running.len() - 1,
                len,
            });
            budget -= len;
        }
    }

    /// Whether a running sequence is still computing whole pages that `tokens` (a waiting
    /// request's) begins with: the request then waits for them to be registered and reuses them,
    /// instead of computing the same keys and values beside them (n choices of one prompt, or
    /// one system prompt sent by many clients at once).
    fn prefix_in_progress(&self, tokens: &[u32]) -> bool {
        let page = self.pool.page_tokens();
        let reusable = (tokens.len() - 1) / page;
        self.running.iter().any(|r| {
            let common = tokens
                .iter()
                .zip(&r.tokens)
                .take(reusable * page)
                .take_while(|(a, b)| a == b)
                .count();
            common / page > r.registered
        })
    }

    /// Lets go of a running sequence's pages and queues it first to be recomputed from its
    /// tokens so far.
    fn preempt(&mut self, i: usize) {
        let mut s = self.running.remove(i);
        self.pool.release(&s.pages);
        s.pages.clear();
        s.cached = 0;
        s.registered = 0;
        self.stats.preemptions += 1;
        self.waiting.push_front(s);
    }
}

/// An empty vector on the same allocation, for borrows of another step: the step list is
/// rebuilt every step without allocating.
fn recycle<'a>(mut v: Vec<SeqStep<'_>>) -> Vec<SeqStep<'a>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}
