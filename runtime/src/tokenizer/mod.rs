//! Text to token ids and back, reproducing llama.cpp's tokenizers id for id.
//!
//! The compiler reads a GGUF file's `tokenizer.ggml.*` metadata into a [`TokenizerData`] and
//! stores it in the plan; the runtime builds a [`Tokenizer`] from it, which derives its lookup
//! tables (token text to id, merge ranks, decoded pieces) once, so the plan holds each piece of
//! vocabulary data only once.
//!
//! Two vocabulary models are supported:
//! - byte-level BPE (`tokenizer.ggml.model = gpt2`: GPT-2, Llama 3, Qwen 2, SmolLM, ...), whose
//!   text is first split by a [`PreTokenizer`];
//! - SentencePiece BPE (`llama`: Llama 2, Gemma, ...), merged by token score with byte fallback.
//!
//! Encoding first splits special tokens out of the text (llama.cpp's `tokenizer_st_partition`),
//! then tokenizes the text between them.

mod bpe;
mod detokenize;
mod pre_tokenize;
mod spm;
mod symbols;

use std::collections::HashMap;
use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use detokenize::Detokenizer;
pub use pre_tokenize::PreTokenizer;

/// SentencePiece's escaped space, U+2581 LOWER ONE EIGHTH BLOCK.
const SPM_SPACE: char = '\u{2581}';

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("token id {id} is out of range: the vocabulary has {n_vocab} tokens")]
    IdOutOfRange { id: u32, n_vocab: usize },
    #[error("the text needs byte fallback for byte 0x{byte:02X}, but the vocabulary has no token <0x{byte:02X}>")]
    NoByteToken { byte: u8 },
    #[error("invalid tokenizer data: {0}")]
    Invalid(String),
}

/// A token's type, with the codes of GGUF's `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
#[repr(u8)]
pub enum TokenType {
    /// A code GGUF does not define; llama.cpp neither matches nor renders such tokens specially.
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    /// Markup such as `<|im_start|>`: only parsed from text when asked to, and hidden in output.
    Control = 3,
    /// Added tokens that are always split out of the text, even without special-token parsing.
    UserDefined = 4,
    Unused = 5,
    /// SentencePiece byte fallback tokens `<0xXX>`.
    Byte = 6,
}

impl TokenType {
    /// The type of a GGUF `token_type` code; unknown codes are `Undefined`, as in llama.cpp.
    pub fn from_gguf(code: i32) -> TokenType {
        u8::try_from(code)
            .ok()
            .and_then(|c| TokenType::try_from(c).ok())
            .unwrap_or(TokenType::Undefined)
    }

    /// Control, unknown and user-defined tokens: the ones whose text is split out of the input.
    fn is_special(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::Unknown | TokenType::UserDefined
        )
    }
}

impl From<TokenType> for u8 {
    fn from(t: TokenType) -> u8 {
        t as u8
    }
}

impl TryFrom<u8> for TokenType {
    type Error = String;

    fn try_from(code: u8) -> Result<TokenType, String> {
        Ok(match code {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return Err(format!("unknown token type {code}")),
        })
    }
}

/// The tokenization algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum TokenizerModel {
    /// Byte-level BPE (`gpt2`).
    Bpe {
        pre: PreTokenizer,
        /// A pre-tokenized word that is itself a token becomes that token without merging
        /// (llama.cpp's `ignore_merges`, set for Llama 3).
        ignore_merges: bool,
    },
    /// SentencePiece BPE (`llama`).
    Spm,
}

/// Everything a tokenizer is made of: what the plan stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerData {
    pub model: TokenizerModel,
    /// Token texts, indexed by id (byte-level BPE texts are in GPT-2's byte alphabet, SentencePiece
    /// ones have U+2581 for spaces).
    pub tokens: Vec<String>,
    pub token_types: Vec<TokenType>,
    /// Merge priorities of SentencePiece tokens (higher merges first); empty for BPE, or for a
    /// SentencePiece vocabulary without scores, where every score is 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<f32>,
    /// BPE merges as `"left right"`, in rank order; empty for SentencePiece.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Tokens that end generation (EOS, EOT and the like).
    pub eog: Vec<u32>,
    /// Whether `encode(.., add_special = true, ..)` adds BOS first and EOS last.
    pub add_bos: bool,
    pub add_eos: bool,
    /// SentencePiece: prefix a space to the text (and to text after a special token).
    pub add_space_prefix: bool,
}

/// The lookup tables derived from [`TokenizerData`].
#[derive(Clone)]
struct Vocab {
    ids: HashMap<Box<str>, u32>,
    /// Each token's bytes as llama.cpp renders it with `special = true`, back to back.
    pieces: Vec<u8>,
    piece_ends: Vec<usize>,
    /// SentencePiece byte fallback: the token for each byte.
    byte_tokens: Vec<Option<u32>>,
}

impl Vocab {
    fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    fn byte_token(&self, byte: u8) -> Option<u32> {
        self.byte_tokens.get(usize::from(byte)).copied().flatten()
    }

    fn piece(&self, id: usize) -> &[u8] {
        let start = if id == 0 { 0 } else { self.piece_ends[id - 1] };
        &self.pieces[start..self.piece_ends[id]]
    }
}

/// A tokenizer ready to encode and decode. Serializes as its [`TokenizerData`].
#[derive(Clone)]
pub struct Tokenizer {
    data: TokenizerData,
    vocab: Vocab,
    merges: bpe::MergeRanks,
    /// Control, user-defined and unknown tokens, longest text first (then by id): the order
    /// llama.cpp splits them out of the text in.
    specials: Vec<u32>,
}

/// A stretch of the input after special tokens were split out.
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl Tokenizer {
    /// Checks `data` and builds the lookup tables.
    pub fn new(mut data: TokenizerData) -> Result<Tokenizer, TokenizerError> {
        let invalid = |msg: String| Err(TokenizerError::Invalid(msg));
        let n = data.tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return invalid(format!("a vocabulary of {n} tokens"));
        }
        if data.token_types.len() != n {
            return invalid(format!(
                "{} token types for {n} tokens",
                data.token_types.len()
            ));
        }
        if !data.scores.is_empty() && data.scores.len() != n {
            return invalid(format!("{} scores for {n} tokens", data.scores.len()));
        }
        let named = [
            ("bos", data.bos),
            ("eos", data.eos),
            ("eot", data.eot),
            ("unk", data.unk),
            ("pad", data.pad),
        ];
        for (name, id) in named
            .into_iter()
            .chain(data.eog.iter().map(|&id| ("end-of-generation", Some(id))))
        {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return invalid(format!(
                    "{name} token id {id} is out of range for {n} tokens"
                ));
            }
        }
        if data.add_bos && data.bos.is_none() {
            return invalid("add_bos is set but there is no BOS token".into());
        }
        if data.add_eos && data.eos.is_none() {
            return invalid("add_eos is set but there is no EOS token".into());
        }
        data.eog.sort_unstable();
        data.eog.dedup();

        let mut ids = HashMap::with_capacity(n);
        let mut pieces = Vec::new();
        let mut piece_ends = Vec::with_capacity(n);
        for (id, (text, &ty)) in data.tokens.iter().zip(&data.token_types).enumerate() {
            if text.is_empty() {
                return invalid(format!("token {id} is empty"));
            }
            if let Some(other) = ids.insert(text.as_str().into(), id as u32) {
                return invalid(format!(
                    "duplicate token {text:?} with ids {other} and {id}"
                ));
            }
            render_piece(data.model, text, ty, &mut pieces)
                .map_err(|msg| TokenizerError::Invalid(format!("token {id}: {msg}")))?;
            piece_ends.push(pieces.len());
        }
        let byte_tokens = match data.model {
            TokenizerModel::Spm => (0..=255u8)
                .map(|b| {
                    // llama.cpp's `byte_to_token`: `<0xXX>`, else the byte itself as a token
                    // (passed as a C string: a non-ASCII byte or NUL finds nothing).
                    let fallback = (b.is_ascii() && b != 0)
                        .then(|| ids.get(char::from(b).encode_utf8(&mut [0; 4]) as &str))
                        .flatten();
                    ids.get(format!("<0x{b:02X}>").as_str())
                        .or(fallback)
                        .copied()
                })
                .collect(),
            TokenizerModel::Bpe { .. } => Vec::new(),
        };
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| data.token_types[id as usize].is_special())
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(data.tokens[id as usize].len()));
        let merges = bpe::MergeRanks::new(&data.merges);
        Ok(Tokenizer {
            vocab: Vocab {
                ids,
                pieces,
                piece_ends,
                byte_tokens,
            },
            merges,
            specials,
            data,
        })
    }

    pub fn data(&self) -> &TokenizerData {
        &self.data
    }

    pub fn n_vocab(&self) -> usize {
        self.data.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.data.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.data.eos
    }

    /// Whether `encode` with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.data.add_bos
    }

    /// Whether generating `id` ends generation.
    /// The ids that end a generation, sorted.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.data.eog
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.data.eog.binary_search(&id).is_ok()
    }

    /// Tokenizes `text` like llama.cpp's `llama_tokenize(vocab, text, add_special, parse_special)`:
    /// `add_special` adds BOS and EOS as the vocabulary asks for them; `parse_special` turns text
    /// equal to a control token's (such as `<|im_start|>`) into that token. User-defined tokens are
    /// always split out of the text.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        if add_special && self.data.add_bos {
            out.extend(self.data.bos);
        }
        let fragments = self.split_special(text, parse_special);
        match self.data.model {
            TokenizerModel::Spm => {
                // The space prefix goes before the text and before text that follows a special token.
                let mut after_special = true;
                let mut escaped = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(range) => {
                            escaped.clear();
                            if self.data.add_space_prefix && after_special {
                                escaped.push(SPM_SPACE);
                            }
                            escaped.extend(text[range].chars().map(|c| {
                                if c == ' ' {
                                    SPM_SPACE
                                } else {
                                    c
                                }
                            }));
                            spm::encode(&self.vocab, &self.data.scores, &escaped, &mut out)?;
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
            }
            TokenizerModel::Bpe { pre, ignore_merges } => {
                let mut word = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(range) => {
                            let text = &text[range];
                            for word_range in pre.split(text) {
                                word.clear();
                                bpe::encode_bytes(&text[word_range], &mut word);
                                bpe::encode_word(
                                    &self.vocab,
                                    &self.merges,
                                    ignore_merges,
                                    &word,
                                    &mut out,
                                );
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.data.add_eos {
            out.extend(self.data.eos);
        }
        Ok(out)
    }

    /// The bytes token `id` stands for, with special tokens as their text (llama.cpp's
    /// `token_to_piece(.., special = true)`). A piece may be part of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8], TokenizerError> {
        if id as usize >= self.n_vocab() {
            return Err(TokenizerError::IdOutOfRange {
                id,
                n_vocab: self.n_vocab(),
            });
        }
        Ok(self.vocab.piece(id as usize))
    }

    /// The bytes of a token sequence, special tokens included as their text. As llama.cpp's
    /// `llama_detokenize`, drops the first piece's leading space when encoding adds a space prefix,
    /// so that decoding what `encode` made gives the text back; unlike it, leaves spaces before
    /// punctuation alone (`clean_up_tokenization_spaces`), which would lose text.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.token_bytes(id)?;
            let piece = match piece.strip_prefix(b" ") {
                Some(rest) if i == 0 && self.data.add_space_prefix => rest,
                _ => piece,
            };
            out.extend_from_slice(piece);
        }
        Ok(out)
    }

    /// The special tokens in `text` (control and unknown ones only with `parse_special`), split
    /// out like llama.cpp's `tokenizer_st_partition`: each token in turn, longest first, claims
    /// its leftmost non-overlapping occurrences in the text still left between earlier ones.
    fn split_special(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = if text.is_empty() {
            Vec::new()
        } else {
            vec![Fragment::Text(0..text.len())]
        };
        for &id in &self.specials {
            if !parse_special && self.data.token_types[id as usize] != TokenType::UserDefined {
                continue;
            }
            let needle = self.data.tokens[id as usize].as_str();
            if !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(needle)))
            {
                continue;
            }
            let mut split = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(range) = fragment else {
                    split.push(fragment);
                    continue;
                };
                let mut start = range.start;
                while let Some(at) = text[start..range.end].find(needle) {
                    if at > 0 {
                        split.push(Fragment::Text(start..start + at));
                    }
                    split.push(Fragment::Token(id));
                    start += at + needle.len();
                }
                if start < range.end {
                    split.push(Fragment::Text(start..range.end));
                }
            }
            fragments = split;
        }
        fragments
    }
}

/// Appends the bytes llama.cpp's `token_to_piece(.., special = true)` gives for a token.
fn render_piece(
    model: TokenizerModel,
    text: &str,
    ty: TokenType,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match ty {
        TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
            out.extend_from_slice(text.as_bytes())
        }
        TokenType::Normal => match model {
            TokenizerModel::Spm => out.extend(text.replace(SPM_SPACE, " ").bytes()),
            TokenizerModel::Bpe { .. } => {
                for c in text.chars() {
                    match bpe::char_to_byte(c) {
                        Some(b) => out.push(b),
                        // llama.cpp's marker for a character outside GPT-2's byte alphabet.
                        None => {
                            let mut utf8 = [0; 4];
                            let hex: String = c
                                .encode_utf8(&mut utf8)
                                .bytes()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            out.extend(format!("[UNK_BYTE_0x{hex}{text}]").bytes());
                        }
                    }
                }
            }
        },
        TokenType::Byte => {
            let hex = text
                .strip_prefix("<0x")
                .and_then(|rest| rest.strip_suffix('>'))
                .filter(|hex| hex.len() == 2)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("byte token {text:?} is not of the form <0xXX>"))?;
            out.push(hex);
        }
        TokenType::Unused | TokenType::Undefined => {}
    }
    Ok(())
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.data.model)
            .field("n_vocab", &self.n_vocab())
            .field("n_merges", &self.data.merges.len())
            .field("bos", &self.data.bos)
            .field("eos", &self.data.eos)
            .finish_non_exhaustive()
    }
}

impl Serialize for Tokenizer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Tokenizer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Tokenizer, D::Error> {
        Tokenizer::new(TokenizerData::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SentencePiece vocabulary with byte fallback for the three bytes of "東" and for 0xFF.
    fn spm() -> TokenizerData {
        let tokens = [
            "<unk>", "<s>", "</s>", "<0xE6>", "<0x9D>", "<0xB1>", "<0xFF>", "▁", "a", "▁a",
        ];
        let types = [2, 3, 3, 6, 6, 6, 6, 1, 1, 1];
        TokenizerData {
            model: TokenizerModel::Spm,
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            token_types: types.iter().map(|&t| TokenType::from_gguf(t)).collect(),
            scores: vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -3.0, -2.0, -1.0],
            merges: Vec::new(),
            bos: Some(1),
            eos: Some(2),
            eot: None,
            unk: Some(0),
            pad: None,
            eog: vec![2],
            add_bos: true,
            add_eos: false,
            add_space_prefix: true,
        }
    }

    #[test]
    fn sentencepiece_merges_by_score_and_falls_back_to_bytes() {
        let t = Tokenizer::new(spm()).unwrap();
        assert_eq!(t.encode("a a", true, false).unwrap(), [1, 9, 9]);
        assert_eq!(t.encode("東", false, false).unwrap(), [7, 3, 4, 5]);
        assert_eq!(t.decode(&[7, 3, 4, 5]).unwrap(), "東".as_bytes());
        // "</s>" is a control token: plain text unless special tokens are parsed.
        assert_eq!(t.encode("a</s>", false, true).unwrap(), [9, 2]);
        assert!(matches!(
            t.encode("é", false, false),
            Err(TokenizerError::NoByteToken { byte: 0xC3 })
        ));
    }

    #[test]
    fn detokenizer_holds_incomplete_characters() {
        let t = Tokenizer::new(spm()).unwrap();
        let mut d = Detokenizer::new(&t);
        assert_eq!([d.push(8), d.push(3), d.push(4)], ["a", "", ""]);
        assert_eq!(d.push(5), "東");
        // 0xFF can never start a character: replaced at once, not held.
        assert_eq!(d.push(6), "\u{FFFD}");
        assert_eq!(d.push(3), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        // Control tokens print nothing; an id outside the vocabulary prints U+FFFD.
        assert_eq!([d.push(2), d.push(99)], ["", "\u{FFFD}"]);
    }

    #[test]
    fn invalid_data_is_rejected() {
        let rejects = |edit: fn(&mut TokenizerData), what: &str| {
            let mut data = spm();
            edit(&mut data);
            let err = Tokenizer::new(data).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        };
        rejects(
            |d| d.tokens[8] = "▁a".into(),
            "duplicate token \"▁a\" with ids 8 and 9",
        );
        rejects(
            |d| d.tokens[3] = "<0xZZ>".into(),
            "token 3: byte token \"<0xZZ>\"",
        );
        rejects(
            |d| d.token_types.pop().map(drop).unwrap_or(()),
            "9 token types for 10 tokens",
        );
        rejects(|d| d.bos = Some(10), "bos token id 10 is out of range");
        rejects(|d| d.eog.push(42), "end-of-generation token id 42");
        rejects(|d| d.tokens[7].clear(), "token 7 is empty");
        rejects(|d| d.bos = None, "add_bos is set but there is no BOS token");
        let json = serde_json::to_string(&spm())
            .unwrap()
            .replace("\"bos\":1", "\"bos\":77");
        let err = serde_json::from_str::<Tokenizer>(&json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bos token id 77"), "{err}");
    }
}
