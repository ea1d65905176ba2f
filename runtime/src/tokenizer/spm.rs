//! SentencePiece BPE (`tokenizer.ggml.model = llama`), as llama.cpp's `llm_tokenizer_spm_session`.
//!
//! The text (spaces already escaped to U+2581) starts as one symbol per code point; the adjacent
//! pair whose concatenation is the highest-scoring vocabulary token is merged first (ties:
//! leftmost first), until no adjacent pair forms a token. Symbols that are not tokens in the end
//! (only single code points can be) fall back to byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::symbols::Symbols;
use super::{TokenizerError, Vocab};

/// A candidate merge; `size` lets `Symbols::merge` tell stale entries from live ones.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Bigram {
    /// Highest score first, then leftmost first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// Tokenizes `text` (whitespace escaped, space prefix added) into `out`.
pub(super) fn encode(
    vocab: &Vocab,
    scores: &[f32],
    text: &str,
    out: &mut Vec<u32>,
) -> Result<(), TokenizerError> {
    let mut symbols = Symbols::new(text);
    let add_bigram =
        |symbols: &Symbols, queue: &mut BinaryHeap<Bigram>, (left, right): (usize, usize)| {
            let range = symbols.range(left).start..symbols.range(right).end;
            let size = range.len();
            if let Some(id) = vocab.id(&text[range]) {
                // Vocabularies without scores score every token 0.
                let score = scores.get(id as usize).copied().unwrap_or(0.0);
                queue.push(Bigram {
                    score,
                    left,
                    right,
                    size,
                });
            }
        };
    let mut queue = BinaryHeap::new();
    for pair in symbols.initial_pairs() {
        add_bigram(&symbols, &mut queue, pair);
    }
    while let Some(b) = queue.pop() {
        if let Some(new_pairs) = symbols.merge(b.left, b.right, b.size) {
            for pair in new_pairs.into_iter().flatten() {
                add_bigram(&symbols, &mut queue, pair);
            }
        }
    }

    for range in symbols.ranges() {
        let piece = &text[range];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                for b in piece.bytes() {
                    out.push(
                        vocab
                            .byte_token(b)
                            .ok_or(TokenizerError::NoByteToken { byte: b })?,
                    );
                }
            }
        }
    }
    Ok(())
}
