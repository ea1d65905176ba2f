//! Byte-level BPE (`tokenizer.ggml.model = gpt2`), as llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Each pre-tokenized word is mapped byte by byte to GPT-2's printable alphabet, split into code
//! points, and adjacent symbols are merged lowest merge rank first (ties: leftmost first) until no
//! adjacent pair has a rank. A priority queue holds the candidate pairs, so a word of n symbols
//! costs O(n log n) rather than a rescan per merge.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::symbols::Symbols;
use super::Vocab;

/// GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100.. in byte order, so every byte string becomes printable text without spaces.
const BYTE_TO_CHAR: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut next = 0x100;
    let mut b = 0;
    while b < 256 {
        table[b] = if matches!(b as u8, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
            b as u8 as char
        } else {
            next += 1;
            match char::from_u32(next - 1) {
                Some(c) => c,
                None => panic!("U+0100..U+0143 are characters"),
            }
        };
        b += 1;
    }
    table
};

pub(super) fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[usize::from(b)]
}

/// The inverse of `BYTE_TO_CHAR`, indexed by code point (the alphabet ends at U+0143).
const CHAR_TO_BYTE: [Option<u8>; 0x144] = {
    let mut table = [None; 0x144];
    let mut b = 0;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = Some(b as u8);
        b += 1;
    }
    table
};

/// The byte GPT-2's alphabet maps to `c`, if `c` is in it.
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    CHAR_TO_BYTE.get(c as usize).copied().flatten()
}

/// Appends `text` mapped byte by byte to GPT-2's alphabet.
pub(super) fn encode_bytes(text: &str, out: &mut String) {
    out.extend(text.bytes().map(byte_to_char));
}

/// Merge ranks keyed by `"left right"`, the form GGUF stores merges in.
#[derive(Clone, Debug, Default)]
pub(super) struct MergeRanks(HashMap<Box<str>, u32>);

impl MergeRanks {
    pub(super) fn new(merges: &[String]) -> MergeRanks {
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte, and keeps the first rank
            // of a pair listed twice; a line without such a space can never match a symbol pair.
            if merge.bytes().skip(1).any(|b| b == b' ') {
                ranks.entry(merge.as_str().into()).or_insert(rank as u32);
            }
        }
        MergeRanks(ranks)
    }
}

/// A candidate merge of `left` with `right`; `size`, their summed length when queued, lets
/// `Symbols::merge` tell a stale entry from a live one.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
}

/// Tokenizes one word (already in GPT-2's alphabet) into `out`.
pub(super) fn encode_word(
    vocab: &Vocab,
    ranks: &MergeRanks,
    ignore_merges: bool,
    word: &str,
    out: &mut Vec<u32>,
) {
    if ignore_merges {
        if let Some(id) = vocab.id(word) {
            out.push(id);
            return;
        }
    }
    let mut symbols = Symbols::new(word);
    // Lowest rank first, then leftmost first.
    let mut queue = BinaryHeap::new();
    let mut key = String::new();
    let mut add_bigram = |symbols: &Symbols,
                          queue: &mut BinaryHeap<Reverse<Bigram>>,
                          (left, right): (usize, usize)| {
        let (l, r) = (symbols.range(left), symbols.range(right));
        key.clear();
        key.push_str(&word[l.clone()]);
        key.push(' ');
        key.push_str(&word[r.clone()]);
        if let Some(&rank) = ranks.0.get(key.as_str()) {
            let size = l.len() + r.len();
            queue.push(Reverse(Bigram {
                rank,
                left,
                right,
                size,
            }));
        }
    };
    for pair in symbols.initial_pairs() {
        add_bigram(&symbols, &mut queue, pair);
    }
    while let Some(Reverse(b)) = queue.pop() {
        if let Some(new_pairs) = symbols.merge(b.left, b.right, b.size) {
            for pair in new_pairs.into_iter().flatten() {
                add_bigram(&symbols, &mut queue, pair);
            }
        }
    }

    for range in symbols.ranges() {
        let text = &word[range];
        match vocab.id(text) {
            Some(id) => out.push(id),
            // A merge result missing from the vocabulary: llama.cpp looks each of its bytes up as
            // a one-byte token, which only ASCII bytes can be, and drops the others.
            None => {
                for b in text.bytes().filter(u8::is_ascii) {
                    out.extend(vocab.id(char::from(b).encode_utf8(&mut [0; 4])));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0), 'Ā');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('東'), None);
    }
}
