//! Pre-tokenization for byte-level BPE: splitting text into the words that merges stay within.
//!
//! llama.cpp selects a list of regexes by `tokenizer.ggml.pre` and applies them one after the
//! other, each one splitting every piece the previous one produced (the text between two matches
//! becomes a piece of its own too). It runs the common GPT-2 and Llama 3 regexes through
//! hand-written matchers, and the others through `std::regex` over a "collapsed" copy of the text
//! in which every non-ASCII code point is replaced by a stand-in byte for its class. Both see a code
//! point only through its class (`CharClass`), so each regex here is a function that, given the
//! class of every code point, returns where the match starting at a position ends. The functions
//! follow llama.cpp's matchers branch for branch, since that is the behaviour token ids must match.

use std::ops::Range;

use serde::{Deserialize, Serialize};

#[path = "char_classes.rs"]
mod char_classes;

/// The regex list a BPE vocabulary's text is split with, named after llama.cpp's
/// `LLAMA_VOCAB_PRE_TYPE_*` whose regexes it reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreTokenizer {
    /// llama.cpp's fallback: punctuation runs, the GPT-2 regex, number runs, then ASCII digit
    /// triples.
    Default,
    /// The GPT-2 regex: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Every digit on its own (`\p{N}`), then the GPT-2 regex (StarCoder, SmolLM, ...).
    Starcoder,
    /// The Llama 3 regex: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3,
    /// The Llama 3 regex with single digits (`\p{N}` for `\p{N}{1,3}`), as Qwen 2 uses it.
    Qwen2,
}

impl PreTokenizer {
    /// Splits `text` into words, returned as byte ranges that cover it in order.
    pub(super) fn split(self, text: &str) -> Vec<Range<usize>> {
        let chars = Chars::new(text);
        // The whole text is one piece to begin with (none at all if it is empty).
        let mut pieces: Vec<Range<usize>> = std::iter::once(0..chars.len()).collect();
        let stages: &[Matcher] = match self {
            PreTokenizer::Default => &[punctuation_run, gpt2, number_run, ascii_digit_triple],
            PreTokenizer::Gpt2 => &[gpt2],
            PreTokenizer::Starcoder => &[single_number, gpt2],
            PreTokenizer::Llama3 => &[llama3],
            PreTokenizer::Qwen2 => &[qwen2],
        };
        for &stage in stages {
            pieces = refine(&chars, &pieces, stage);
        }
        pieces.into_iter().map(|r| chars.byte_range(r)).collect()
    }
}

/// What a pre-tokenizer regex can tell code points apart by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CharClass {
    /// Unicode `White_Space`.
    Whitespace,
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\p{P}`.
    Punctuation,
    /// Every other category: marks, symbols, controls, separators that are not whitespace, and
    /// unassigned code points.
    Other,
}

impl CharClass {
    fn of(c: char) -> CharClass {
        let cp = c as u32;
        // `partition_point` finds the first range starting after `cp`; the one before holds it.
        let i = char_classes::RANGES.partition_point(|&(start, _)| start <= cp);
        char_classes::RANGES[i - 1].1
    }

    /// `[^\s\p{L}\p{N}]`.
    fn is_other_than_word_or_space(self) -> bool {
        matches!(self, CharClass::Punctuation | CharClass::Other)
    }
}

/// The text as code points, with each one's class and byte offset.
struct Chars {
    chars: Vec<char>,
    classes: Vec<CharClass>,
    /// Byte offset of each code point, and the text's length at the end.
    offsets: Vec<usize>,
}

impl Chars {
    fn new(text: &str) -> Chars {
        let n = text.chars().count();
        let mut chars = Vec::with_capacity(n);
        let mut classes = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(n + 1);
        for (offset, c) in text.char_indices() {
            chars.push(c);
            classes.push(CharClass::of(c));
            offsets.push(offset);
        }
        offsets.push(text.len());
        Chars {
            chars,
            classes,
            offsets,
        }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    fn byte_range(&self, r: Range<usize>) -> Range<usize> {
        self.offsets[r.start]..self.offsets[r.end]
    }
}

/// The part of the text one regex is matched against: matches never extend past `end`, and
/// lookaheads see nothing there (llama.cpp matches each piece of the previous stage on its own).
struct Piece<'a> {
    chars: &'a Chars,
    end: usize,
}

impl Piece<'_> {
    fn char(&self, pos: usize) -> Option<char> {
        (pos < self.end).then(|| self.chars.chars[pos])
    }

    fn class(&self, pos: usize) -> Option<CharClass> {
        (pos < self.end).then(|| self.chars.classes[pos])
    }

    fn is(&self, pos: usize, class: CharClass) -> bool {
        self.class(pos) == Some(class)
    }

    fn is_other_than_word_or_space(&self, pos: usize) -> bool {
        self.class(pos)
            .is_some_and(CharClass::is_other_than_word_or_space)
    }

    /// End of the run of `class` starting at `pos`.
    fn run_end(&self, mut pos: usize, class: CharClass) -> usize {
        while self.is(pos, class) {
            pos += 1;
        }
        pos
    }

    /// Length of an English contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) at `pos`,
    /// ASCII-case-insensitively when `any_case`.
    fn contraction(&self, pos: usize, any_case: bool) -> Option<usize> {
        if self.char(pos) != Some('\'') {
            return None;
        }
        let fold = |c: Option<char>| c.map(|c| if any_case { c.to_ascii_lowercase() } else { c });
        match (fold(self.char(pos + 1)), fold(self.char(pos + 2))) {
            (Some('s' | 't' | 'm' | 'd'), _) => Some(2),
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => Some(3),
            _ => None,
        }
    }

    /// Length of the whitespace run at `pos`, and the end of its last `\r` or `\n`, if any.
    fn whitespace_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut line_break_end = None;
        while self.is(pos + n, CharClass::Whitespace) {
            if matches!(self.char(pos + n), Some('\r' | '\n')) {
                line_break_end = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, line_break_end)
    }

    /// `\s+(?!\S)|\s+` at `pos`, given the whitespace run there: a run followed by a non-space
    /// leaves its last character to prefix the next word, unless that would leave nothing.
    fn trailing_whitespace(&self, pos: usize, n: usize) -> Option<usize> {
        match n {
            0 => None,
            n if n > 1 && pos + n < self.end => Some(pos + n - 1),
            n => Some(pos + n),
        }
    }
}

/// A regex: where the match starting at `pos` (`< piece.end`) ends, if one starts there.
type Matcher = fn(&Piece, usize) -> Option<usize>;

/// Splits every piece at the matches of `matcher`, found left to right without overlap; the text
/// between matches is kept as pieces too.
fn refine(chars: &Chars, pieces: &[Range<usize>], matcher: Matcher) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(pieces.len());
    for r in pieces {
        let piece = Piece { chars, end: r.end };
        let mut gap_start = r.start;
        let mut pos = r.start;
        while pos < r.end {
            match matcher(&piece, pos) {
                Some(end) if end > pos => {
                    if gap_start < pos {
                        out.push(gap_start..pos);
                    }
                    out.push(pos..end);
                    pos = end;
                    gap_start = end;
                }
                _ => pos += 1,
            }
        }
        if gap_start < r.end {
            out.push(gap_start..r.end);
        }
    }
    out
}

/// llama.cpp's `unicode_regex_split_custom_gpt2`.
fn gpt2(p: &Piece, pos: usize) -> Option<usize> {
    if let Some(n) = p.contraction(pos, false) {
        return Some(pos + n);
    }
    // ` ?\p{L}+`, ` ?\p{N}+` and ` ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one kind.
    let space = usize::from(p.char(pos) == Some(' '));
    match p.class(pos + space) {
        Some(class @ (CharClass::Letter | CharClass::Number)) => {
            return Some(p.run_end(pos + space, class))
        }
        Some(class) if class.is_other_than_word_or_space() => {
            let mut end = pos + space;
            while p.is_other_than_word_or_space(end) {
                end += 1;
            }
            return Some(end);
        }
        _ => {}
    }
    let (n, _) = p.whitespace_run(pos);
    // No branch matches only a lone space at the piece's end, which the whitespace run covers.
    Some(p.trailing_whitespace(pos, n).unwrap_or(pos + 1))
}

/// llama.cpp's `unicode_regex_split_custom_llama3`; `max_digits` is 3 for Llama 3 (`\p{N}{1,3}`)
/// and 1 for Qwen 2 (`\p{N}`), whose regex is otherwise the same. llama.cpp runs the Qwen 2 regex
/// through `std::regex` instead; this matcher finds the same leftmost-first matches, which for
/// `\s+(?!\S)` means giving back the last whitespace character when a non-space follows.
fn llama3_like(p: &Piece, pos: usize, max_digits: usize) -> Option<usize> {
    if let Some(n) = p.contraction(pos, true) {
        return Some(pos + n);
    }
    let c = p.char(pos)?;
    let class = p.class(pos)?;
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if !(c == '\r' || c == '\n' || class == CharClass::Number)
        && (class == CharClass::Letter || p.is(pos + 1, CharClass::Letter))
    {
        return Some(p.run_end(pos + 1, CharClass::Letter));
    }
    // `\p{N}{1,max_digits}`
    if class == CharClass::Number {
        let mut end = pos;
        while end - pos < max_digits && p.is(end, CharClass::Number) {
            end += 1;
        }
        return Some(end);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`: llama.cpp enters this branch for a space whose next code point
    // is anything but whitespace, a letter or a number, the piece's end included.
    let space = usize::from(c == ' ');
    let next = if space == 1 {
        p.class(pos + 1)
    } else {
        Some(class)
    };
    if !matches!(
        next,
        Some(CharClass::Whitespace | CharClass::Letter | CharClass::Number)
    ) {
        let mut end = pos + space;
        while p.is_other_than_word_or_space(end) {
            end += 1;
        }
        while matches!(p.char(end), Some('\r' | '\n')) {
            end += 1;
        }
        return Some(end);
    }
    // `\s*[\r\n]+`, then `\s+(?!\S)|\s+`.
    let (n, line_break_end) = p.whitespace_run(pos);
    if let Some(end) = line_break_end {
        return Some(end);
    }
    Some(p.trailing_whitespace(pos, n).unwrap_or(pos + 1))
}

fn llama3(p: &Piece, pos: usize) -> Option<usize> {
    llama3_like(p, pos, 3)
}

fn qwen2(p: &Piece, pos: usize) -> Option<usize> {
    llama3_like(p, pos, 1)
}

/// `\p{N}`.
fn single_number(p: &Piece, pos: usize) -> Option<usize> {
    p.is(pos, CharClass::Number).then_some(pos + 1)
}

/// `\p{N}+`.
fn number_run(p: &Piece, pos: usize) -> Option<usize> {
    Some(p.run_end(pos, CharClass::Number))
}

/// `[\p{P}\$\+<=>\^~\|]+`.
fn punctuation_run(p: &Piece, pos: usize) -> Option<usize> {
    let is_punctuation = |pos| {
        p.is(pos, CharClass::Punctuation)
            || matches!(
                p.char(pos),
                Some('$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
            )
    };
    let mut end = pos;
    while is_punctuation(end) {
        end += 1;
    }
    Some(end)
}

/// `[0-9][0-9][0-9]`.
fn ascii_digit_triple(p: &Piece, pos: usize) -> Option<usize> {
    (0..3)
        .all(|i| p.char(pos + i).is_some_and(|c| c.is_ascii_digit()))
        .then_some(pos + 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        pre.split(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn classes_follow_unicode() {
        assert_eq!(CharClass::of('a'), CharClass::Letter);
        assert_eq!(CharClass::of('東'), CharClass::Letter);
        assert_eq!(CharClass::of('٣'), CharClass::Number);
        assert_eq!(CharClass::of('½'), CharClass::Number);
        assert_eq!(CharClass::of('\u{3000}'), CharClass::Whitespace);
        assert_eq!(CharClass::of('\u{85}'), CharClass::Whitespace);
        assert_eq!(CharClass::of('¿'), CharClass::Punctuation);
        assert_eq!(CharClass::of('\u{301}'), CharClass::Other);
        assert_eq!(CharClass::of('🗼'), CharClass::Other);
        assert_eq!(CharClass::of('\u{10FFFF}'), CharClass::Other);
    }

    #[test]
    fn gpt2_leaves_the_last_space_to_the_next_word() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello   world's 123!!  "),
            ["Hello", "  ", " world", "'s", " 123", "!!", "  "]
        );
    }

    #[test]
    fn starcoder_splits_digits() {
        assert_eq!(
            words(PreTokenizer::Starcoder, "x 2024."),
            ["x", " ", "2", "0", "2", "4", "."]
        );
    }

    #[test]
    fn llama3_groups_digits_by_three_and_keeps_line_breaks() {
        assert_eq!(
            words(PreTokenizer::Llama3, "1234567 don'T\n\n  x"),
            ["123", "456", "7", " don", "'T", "\n\n", " ", " x"]
        );
        assert_eq!(words(PreTokenizer::Qwen2, "12 ab"), ["1", "2", " ab"]);
    }

    #[test]
    fn default_splits_punctuation_and_digit_triples() {
        assert_eq!(
            words(PreTokenizer::Default, "a+=b 12345"),
            ["a", "+=", "b", " ", "123", "45"]
        );
    }
}
