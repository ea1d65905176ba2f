//! What the commands do with a session: evaluate long sequences in chunks, generate, score.

use crate::cpu::{EvalError, Session};
use crate::sampling::Sampler;

/// Evaluates `tokens` after what is cached, in chunks of the plan's batch size, calling
/// `on_logits(position_in_tokens, logits_row)` for every token.
pub fn eval_all(
    session: &mut dyn Evaluator,
    tokens: &[u32],
    max_batch: usize,
    n_vocab: usize,
    mut on_logits: impl FnMut(usize, &[f32]),
) -> Result<(), EvalError> {
    for (c, chunk) in tokens.chunks(max_batch).enumerate() {
        let logits = session.eval(chunk)?;
        for (i, row) in logits.chunks_exact(n_vocab).enumerate() {
            on_logits(c * max_batch + i, row);
        }
    }
    Ok(())
}

/// log(sum(exp(x))) in f64.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// The `n` largest logits as (id, logit), largest first, ties to the lower id.
pub fn top_logits(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut out = Vec::with_capacity(row.len());
    top_logits_into(row, n, &mut out);
    out
}

/// `top_logits` into `out`, which needs room for `2 * n` entries (at least 64) to work without
/// allocating.
///
/// One pass that keeps only logits above the `n`-th best seen so far: sampling asks for a few
/// candidates out of a vocabulary of up to 262144, where copying the whole row out to select
/// from it cost 2 % of a decoded token.
pub fn top_logits_into(row: &[f32], n: usize, out: &mut Vec<(u32, f32)>) {
    let by = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    out.clear();
    let n = n.min(row.len());
    if n == 0 {
        return;
    }
    let prune_at = (2 * n).max(64);
    // Ids only grow, so a logit equal to the floor ranks below the floor's own entry.
    let mut floor = None;
    for (i, &l) in row.iter().enumerate() {
        if floor.is_some_and(|f: f32| l.total_cmp(&f).is_le()) {
            continue;
        }
        out.push((i as u32, l));
        if out.len() == prune_at {
            out.select_nth_unstable_by(n - 1, by);
            out.truncate(n);
            floor = Some(out[n - 1].1);
        }
    }
    if out.len() > n {
        out.select_nth_unstable_by(n - 1, by);
        out.truncate(n);
    }
    out.sort_unstable_by(by);
}

#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub chunk_ppl: Vec<f64>,
    pub tokens_scored: usize,
}

/// llama.cpp's perplexity method: chunks of `n_ctx` tokens, each from an empty cache, the first
/// token replaced by BOS when the model adds one, the second half of each chunk scored.
pub fn perplexity(
    session: &mut dyn Evaluator,
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    max_batch: usize,
    n_vocab: usize,
) -> Result<Perplexity, String> {
    if n_ctx < 4 {
        return Err(format!("--ctx {n_ctx} is too small to score anything"));
    }
    let available = tokens.len() / n_ctx;
    let n_chunks = max_chunks.map_or(available, |m| m.min(available));
    if n_chunks == 0 {
        return Err(format!(
            "the text has {} tokens, fewer than one chunk of {n_ctx}",
            tokens.len()
        ));
    }
    let first = n_ctx / 2;
    let mut total_nll = 0.0;
    let mut chunk_ppl = Vec::with_capacity(n_chunks);
    let mut chunk = vec![0u32; n_ctx];
    for i in 0..n_chunks {
        chunk.copy_from_slice(&tokens[i * n_ctx..(i + 1) * n_ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.reset();
        let mut nll = 0.0;
        eval_all(session, &chunk, max_batch, n_vocab, |pos, row| {
            if pos >= first && pos + 1 < n_ctx {
                nll += log_sum_exp(row) - f64::from(row[chunk[pos + 1] as usize]);
            }
        })
        .map_err(|e| e.to_string())?;
        let scored = n_ctx - 1 - first;
        chunk_ppl.push((nll / scored as f64).exp());
        total_nll += nll;
    }
    let tokens_scored = n_chunks * (n_ctx - 1 - first);
    Ok(Perplexity {
        ppl: (total_nll / tokens_scored as f64).exp(),
        chunk_ppl,
        tokens_scored,
    })
}

/// Generation statistics.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub ids: Vec<u32>,
    pub prompt_seconds: f64,
    pub generate_seconds: f64,
    /// Why generation stopped: "eos", "length" or "context".
    pub stop: &'static str,
}

/// Prefills `prompt` and samples up to `max_new` tokens, calling `on_token` for each as it comes.
/// When the sampler can decide from the best candidates, only those leave the backend (on the
/// GPU: a few hundred bytes a token instead of the whole row).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    session: &mut dyn Evaluator,
    sampler: &mut Sampler,
    prompt: &[u32],
    max_new: usize,
    ctx: usize,
    max_batch: usize,
    n_vocab: usize,
    is_end: impl Fn(u32) -> bool,
    mut on_token: impl FnMut(u32),
) -> Result<Generated, EvalError> {
    let start = std::time::Instant::now();
    let needed = sampler.candidates_needed();
    let mut row = vec![0f32; n_vocab];
    let mut candidates: Vec<(u32, f32)> = Vec::with_capacity(n_vocab);
    let (init, last) = prompt.split_at(prompt.len() - prompt.len() % max_batch.max(1));
    let (init, last) = if last.is_empty() {
        init.split_at(init.len() - max_batch.min(init.len()))
    } else {
        (init, last)
    };
    for chunk in init.chunks(max_batch) {
        session.prefill(chunk)?;
    }
    let mut step = |session: &mut dyn Evaluator,
                    tokens: &[u32],
                    sampler: &mut Sampler|
     -> Result<u32, EvalError> {
        Ok(match needed {
            Some(k) => {
                session.eval_top(tokens, k, &mut candidates)?;
                sampler.sample_candidates(&candidates)
            }
            None => {
                row.copy_from_slice(session.eval_last(tokens)?);
                sampler.sample(&row)
            }
        })
    };
    for &t in prompt {
        sampler.accept(t);
    }
    let mut next = step(session, last, sampler)?;
    let mut out = Generated {
        prompt_seconds: start.elapsed().as_secs_f64(),
        stop: "length",
        ..Default::default()
    };
    let start = std::time::Instant::now();
    while out.ids.len() < max_new {
        if is_end(next) {
            out.stop = "eos";
            break;
        }
        out.ids.push(next);
        sampler.accept(next);
        on_token(next);
        if out.ids.len() == max_new {
            break;
        }
        if session.n_past() >= ctx {
            out.stop = "context";
            break;
        }
        next = step(session, &[next], sampler)?;
    }
    out.generate_seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// A loaded model that evaluates tokens: the CPU interpreter or the GPU backend.
pub trait Evaluator {
    /// Evaluates `tokens` after the cached ones; returns one row of logits per token.
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError>;
    /// Forgets the cached tokens.
    fn reset(&mut self);
    /// Tokens in the KV cache.
    fn n_past(&self) -> usize;
    /// Which backend this is, for reports.
    fn backend(&self) -> &'static str;
    /// Evaluates `tokens` for the cache only, where the backend can skip the logits.
    fn prefill(&mut self, tokens: &[u32]) -> Result<(), EvalError> {
        self.eval(tokens).map(|_| ())
    }
    /// Evaluates `tokens` and returns the last token's row of logits.
    fn eval_last(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        let logits = self.eval(tokens)?;
        Ok(&logits[logits.len() / tokens.len() * (tokens.len() - 1)..])
    }
    /// Evaluates `tokens` and puts the last token's `k` largest logits (largest first) in `out`
    /// (capacity for `max(2k, 64)` entries avoids allocation). The GPU does this on the device
    /// and reads back only the candidates. (No log-sum-exp: sampling does not use it, and over
    /// Gemma 3's 262144 logits it took about a seventh of a decoded token's time on the CPU.)
    fn eval_top(
        &mut self,
        tokens: &[u32],
        k: usize,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<(), EvalError> {
        let row = self.eval_last(tokens)?;
        top_logits_into(row, k, out);
        Ok(())
    }
    /// What the last step cost on the GPU (the CPU reports nothing).
    fn gpu_step_stats(&self) -> Option<crate::gpu::StepStats> {
        None
    }
}

impl Evaluator for Session<'_> {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        Session::eval(self, tokens)
    }
    fn reset(&mut self) {
        Session::reset(self)
    }
    fn n_past(&self) -> usize {
        Session::n_past(self)
    }
    fn backend(&self) -> &'static str {
        "cpu"
    }
    fn prefill(&mut self, tokens: &[u32]) -> Result<(), EvalError> {
        Session::prefill(self, tokens)
    }
    fn eval_last(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        Session::eval_last(self, tokens)
    }
}

impl Evaluator for crate::gpu::GpuSession<'_> {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        crate::gpu::GpuSession::eval(self, tokens)
    }
    fn reset(&mut self) {
        crate::gpu::GpuSession::reset(self)
    }
    fn n_past(&self) -> usize {
        crate::gpu::GpuSession::n_past(self)
    }
    fn backend(&self) -> &'static str {
        "gpu"
    }
    fn gpu_step_stats(&self) -> Option<crate::gpu::StepStats> {
        Some(self.last_step)
    }
    fn prefill(&mut self, tokens: &[u32]) -> Result<(), EvalError> {
        crate::gpu::GpuSession::prefill(self, tokens)
    }
    fn eval_last(&mut self, tokens: &[u32]) -> Result<&[f32], EvalError> {
        crate::gpu::GpuSession::eval_last(self, tokens)
    }
    fn eval_top(
        &mut self,
        tokens: &[u32],
        k: usize,
        out: &mut Vec<(u32, f32)>,
    ) -> Result<(), EvalError> {
        crate::gpu::GpuSession::eval_top(self, tokens, k, out).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logits_match_a_full_sort_with_ties_and_nans() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in [1usize, 7, 63, 64, 65, 200, 5000] {
            let row: Vec<f32> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Few distinct values, so ties are common; now and then a NaN or an infinity.
                    match state % 50 {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        v => (v % 13) as f32 * 0.5 - 3.0,
                    }
                })
                .collect();
            let mut sorted: Vec<(u32, f32)> = row
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for n in [0usize, 1, 2, 31, 32, 33, 100, len, len + 3] {
                let got = top_logits(&row, n);
                let want = &sorted[..n.min(len)];
                assert_eq!(got.len(), want.len(), "len {len} n {n}");
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        g.0 == w.0 && g.1.to_bits() == w.1.to_bits(),
                        "len {len} n {n}: {g:?} vs {w:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn top_and_lse() {
        let row = [1.0, 3.0, 2.0, 3.0];
        assert_eq!(top_logits(&row, 3), vec![(1, 3.0), (3, 3.0), (2, 2.0)]);
        let lse = log_sum_exp(&row);
        let direct = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((lse - direct).abs() < 1e-12);
    }
}
