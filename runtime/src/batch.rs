//! What one step evaluates: the new tokens of one or more sequences, each at its own positions,
//! reading and writing the KV cache through its own page table.

use crate::cpu::EvalError;
use crate::plan::PlanHeader;

/// One sequence's share of a step: `tokens` at positions `start`, `start + 1`, ...
#[derive(Clone, Copy, Debug)]
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    /// Tokens the sequence has cached before this step: the position of `tokens[0]`.
    pub start: usize,
    /// The sequence's page table: entry i is the pool page holding positions
    /// `i * page_tokens .. (i + 1) * page_tokens`. It covers at least `start + tokens.len()`
    /// positions; the pages of the new positions are written, the others only read.
    pub pages: &'a [u32],
    pub logits: Logits,
}

/// Which rows of a sequence's share the step returns logits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: the tokens only fill the cache (a prefill chunk that does not end the prompt).
    None,
    /// The last token's row (what sampling needs).
    Last,
    /// Every token's row (scoring, teacher forcing).
    All,
}

/// The checks every backend makes before evaluating a step: sizes within the plan's limits,
/// ids within the vocabulary, page tables that cover every position within the pool, and no
/// page written by two sequences of the step.
pub fn check(h: &PlanHeader, seqs: &[SeqStep]) -> Result<(), EvalError> {
    let limits = &h.limits;
    if seqs.is_empty() || seqs.iter().any(|s| s.tokens.is_empty()) {
        return Err(EvalError::Empty);
    }
    if seqs.len() > limits.max_seqs as usize {
        return Err(EvalError::TooManySequences {
            n: seqs.len(),
            max: limits.max_seqs as usize,
        });
    }
    let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
    let max = limits.max_batch as usize;
    if n > max {
        return Err(EvalError::BatchTooLarge { n, max });
    }
    let page = limits.page_tokens as usize;
    let written = |s: &SeqStep| s.start / page..(s.start + s.tokens.len()).div_ceil(page);
    for (i, s) in seqs.iter().enumerate() {
        let ctx = limits.ctx as usize;
        if s.start + s.tokens.len() > ctx {
            return Err(EvalError::ContextFull {
                past: s.start,
                n: s.tokens.len(),
                ctx,
            });
        }
        if let Some(&id) = s.tokens.iter().find(|&&id| id >= h.model.n_vocab) {
            return Err(EvalError::BadToken {
                id,
                n_vocab: h.model.n_vocab,
            });
        }
        let needed = written(s).end;
        if s.pages.len() < needed {
            return Err(EvalError::PageTable(format!(
                "sequence {i} has {} pages for {} positions (pages of {page})",
                s.pages.len(),
                s.start + s.tokens.len()
            )));
        }
        if let Some(&p) = s.pages[..needed].iter().find(|&&p| p >= limits.kv_pages()) {
            return Err(EvalError::PageTable(format!(
                "sequence {i} names page {p}, but the pool has {}",
                limits.kv_pages()
            )));
        }
        for (j, other) in seqs[..i].iter().enumerate() {
            let clash = s.pages[written(s)]
                .iter()
                .find(|p| other.pages[written(other)].contains(p));
            if let Some(p) = clash {
                return Err(EvalError::PageTable(format!(
                    "sequences {j} and {i} both write page {p}"
                )));
            }
        }
    }
    Ok(())
}
