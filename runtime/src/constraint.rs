//! Structured output: a constraint decides, before each sampled token, which tokens may come
//! next, so that what is generated matches a JSON Schema, a regular expression or a Lark grammar.
//! The parsing is llguidance's, over a byte trie of the plan's vocabulary built once per model.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::{TokenType, Tokenizer};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("the JSON schema cannot be used: {0}")]
    Schema(String),
    #[error("the regular expression cannot be used: {0}")]
    Regex(String),
    #[error("the grammar cannot be used: {0}")]
    Grammar(String),
    #[error("the vocabulary cannot be indexed for constraints: {0}")]
    Vocabulary(String),
    /// The constraint failed while generating (it allows no token, or its parser failed).
    #[error("the output constraint failed: {0}")]
    Failed(String),
}

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    JsonSchema(serde_json::Value),
    Regex(String),
    /// A Lark grammar as llguidance reads it (which takes much of GBNF's syntax too).
    Lark(String),
}

/// The model's vocabulary indexed for constraints; compiles [`Spec`]s into [`Constraint`]s.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    pub fn new(tokenizer: &Tokenizer) -> Result<Grammars, ConstraintError> {
        let n = tokenizer.n_vocab();
        let types = &tokenizer.data().token_types;
        // Control tokens are marked so that no grammar can spell them out as text.
        let words: Vec<Vec<u8>> = (0..n)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id as u32).unwrap_or(&[]);
                if matches!(types[id], TokenType::Control | TokenType::Unknown) {
                    let mut marked = Vec::with_capacity(bytes.len() + 1);
                    marked.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    marked.extend_from_slice(bytes);
                    marked
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let eos = tokenizer
            .end_of_generation_ids()
            .first()
            .copied()
            .or(tokenizer.eos())
            .ok_or_else(|| {
                ConstraintError::Vocabulary(
                    "the model has no end-of-generation token to end a constrained output".into(),
                )
            })?;
        let info = TokRxInfo::new(n as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    pub fn compile(&self, spec: &Spec) -> Result<Constraint, ConstraintError> {
        let (grammar, error): (_, fn(String) -> ConstraintError) = match spec {
            Spec::JsonSchema(schema) => (
                TopLevelGrammar::from_json_schema(schema.clone()),
                ConstraintError::Schema,
            ),
            Spec::Regex(re) => (TopLevelGrammar::from_regex(re), ConstraintError::Regex),
            Spec::Lark(lark) => (
                TopLevelGrammar::from_lark(lark.clone()),
                ConstraintError::Grammar,
            ),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| error(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(error(e));
        }
        Ok(Constraint { matcher })
    }
}

/// One sequence's constraint: its parser's state after the tokens generated so far.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Sets the logits of every token the constraint does not allow next to -infinity. Once the
    /// output is complete, only the end-of-generation token is allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Failed(e.to_string()))?;
        let words = allowed.as_slice();
        let mut any = false;
        for (chunk, &word) in logits.chunks_mut(32).zip(words) {
            for (bit, l) in chunk.iter_mut().enumerate() {
                if word >> bit & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                } else {
                    any = true;
                }
            }
        }
        // Tokens past the mask's words (none, when the vocabularies agree) are not allowed.
        for l in logits.iter_mut().skip(words.len() * 32) {
            *l = f32::NEG_INFINITY;
        }
        if any {
            Ok(())
        } else {
            Err(ConstraintError::Failed(
                "no token can continue the output".into(),
            ))
        }
    }

    /// Advances past a generated token.
    pub fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Failed(e.to_string()))
    }

    /// Whether the output is complete and nothing may follow.
    pub fn finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
