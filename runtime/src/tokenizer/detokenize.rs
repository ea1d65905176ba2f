//! Streaming detokenization: text as tokens arrive, never a partial UTF-8 character.
//!
//! A token's bytes can end inside a multi-byte character (byte-level BPE splits emoji and CJK
//! characters across tokens; SentencePiece byte fallback emits one byte per token), so the
//! detokenizer holds an incomplete trailing sequence until the bytes that complete it arrive.

use super::{TokenType, Tokenizer};

/// Turns a stream of token ids into text, the way llama.cpp's generation loop prints them
/// (`common_token_to_piece(.., special = false)`): control and unknown tokens show nothing.
pub struct Detokenizer<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
}

impl<'t> Detokenizer<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Detokenizer<'t> {
        Detokenizer {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// Adds token `id` and returns the text it completes: everything held so far up to an
    /// incomplete character at the end, with invalid byte sequences as U+FFFD. An id outside the
    /// vocabulary (which a sampler over the model's logits cannot produce) reads as U+FFFD.
    pub fn push(&mut self, id: u32) -> String {
        match self.tokenizer.token_bytes(id) {
            Ok(piece) => {
                let ty = self.tokenizer.data.token_types[id as usize];
                if !matches!(ty, TokenType::Control | TokenType::Unknown) {
                    self.pending.extend_from_slice(piece);
                }
            }
            Err(_) => self.pending.extend_from_slice(
                char::REPLACEMENT_CHARACTER
                    .encode_utf8(&mut [0; 4])
                    .as_bytes(),
            ),
        }
        self.take_complete()
    }

    /// Ends the stream: returns what is still held, an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(s) => {
                    out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid_up_to` bytes are valid UTF-8 by definition.
                    out.push_str(
                        std::str::from_utf8(&self.pending[consumed..consumed + valid])
                            .unwrap_or_default(),
                    );
                    consumed += valid;
                    match e.error_len() {
                        // Bytes that no continuation can make valid.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            consumed += n;
                        }
                        // An incomplete character at the end: hold it.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        out
    }
}
