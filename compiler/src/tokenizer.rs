//! Reads a GGUF file's `tokenizer.ggml.*` metadata into the runtime's tokenizer.
//!
//! Besides reading the keys, this applies what llama.cpp's vocabulary loader
//! (`llama_vocab::impl::load`) decides that the file does not say: default special tokens and
//! flags per model and pre-tokenizer, and the end-of-generation tokens it recognises by their text
//! (such tokens are also made control tokens, which changes how they tokenize and print).

use llamart::tokenizer::{
    PreTokenizer, TokenType, Tokenizer, TokenizerData, TokenizerError, TokenizerModel,
};

use crate::gguf::{Array, GgufFile, Value};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerReadError {
    #[error("the file has no tokenizer: metadata key '{key}' is missing")]
    Missing { key: &'static str },
    #[error("metadata key '{key}' should be {expected}, but is {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("metadata key '{key}' has {len} entries for {n_tokens} tokens")]
    TooShort {
        key: &'static str,
        len: usize,
        n_tokens: usize,
    },
    #[error("unsupported tokenizer model '{0}' (tokenizer.ggml.model); supported: gpt2 (byte-level BPE), llama (SentencePiece)")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer '{0}' (tokenizer.ggml.pre); supported: {supported}", supported = supported_pre_names())]
    UnsupportedPre(String),
    #[error(transparent)]
    Invalid(#[from] TokenizerError),
}

const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPES: &str = "tokenizer.ggml.token_type";
const SCORES: &str = "tokenizer.ggml.scores";
const MERGES: &str = "tokenizer.ggml.merges";

/// llama.cpp's pre-tokenizer names for each regex list we implement, with whether the name also
/// sets `ignore_merges` and makes adding BOS the default.
const PRE_TOKENIZERS: &[(&[&str], PreTokenizer, bool)] = &[
    (&["default"], PreTokenizer::Default, false),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
        ],
        PreTokenizer::Gpt2,
        false,
    ),
    (
        &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        PreTokenizer::Starcoder,
        false,
    ),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        PreTokenizer::Llama3,
        true,
    ),
    (&["dbrx", "smaug-bpe"], PreTokenizer::Llama3, false),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "stablelm2",
            "megrez",
            "hunyuan",
        ],
        PreTokenizer::Qwen2,
        false,
    ),
];

fn supported_pre_names() -> String {
    PRE_TOKENIZERS
        .iter()
        .flat_map(|(names, ..)| names.iter().copied())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Special tokens llama.cpp finds by their text when the metadata does not name them.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Tokens that end generation, by text.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// The tokenizer of `f`, as llama.cpp would load it.
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerReadError> {
    let meta = Meta(f);
    let model_name = meta
        .string("tokenizer.ggml.model")?
        .ok_or(TokenizerReadError::Missing {
            key: "tokenizer.ggml.model",
        })?;
    // The model, and the defaults llama.cpp sets for it before reading the rest of the metadata.
    let (model, mut ids, mut add_bos, mut add_space_prefix) = match model_name {
        "gpt2" => {
            let pre_name = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
            let &(_, pre, llama3_flags) = PRE_TOKENIZERS
                .iter()
                .find(|(names, ..)| names.contains(&pre_name))
                .ok_or_else(|| TokenizerReadError::UnsupportedPre(pre_name.to_string()))?;
            let model = TokenizerModel::Bpe {
                pre,
                ignore_merges: llama3_flags,
            };
            (
                model,
                SpecialIds::defaults(Some(11), Some(11), None),
                llama3_flags,
                false,
            )
        }
        "llama" => (
            TokenizerModel::Spm,
            SpecialIds::defaults(Some(1), Some(2), Some(0)),
            true,
            true,
        ),
        other => return Err(TokenizerReadError::UnsupportedModel(other.to_string())),
    };

    let mut tokens = match meta.array(TOKENS)? {
        Some(Array::String(tokens)) => tokens.clone(),
        Some(other) => return Err(wrong_array(TOKENS, "an array of strings", other)),
        None => return Err(TokenizerReadError::Missing { key: TOKENS }),
    };
    let n = tokens.len();
    for (i, token) in tokens.iter_mut().enumerate() {
        // llama.cpp renames empty tokens so that every token has a distinct, non-empty text.
        if token.is_empty() {
            *token = format!("[EMPTY_{i}]");
        }
    }
    let mut token_types = match meta.array(TOKEN_TYPES)? {
        Some(Array::I32(codes)) => per_token(TOKEN_TYPES, codes, n)?
            .iter()
            .map(|&c| TokenType::from_gguf(c))
            .collect(),
        Some(other) => return Err(wrong_array(TOKEN_TYPES, "an array of i32", other)),
        None => vec![TokenType::Normal; n],
    };
    // Each model reads only what it uses: merges for BPE, scores for SentencePiece.
    let (scores, merges) = match model {
        TokenizerModel::Bpe { .. } => match meta.array(MERGES)? {
            Some(Array::String(merges)) => (Vec::new(), merges.clone()),
            Some(other) => return Err(wrong_array(MERGES, "an array of strings", other)),
            None => return Err(TokenizerReadError::Missing { key: MERGES }),
        },
        TokenizerModel::Spm => match meta.array(SCORES)? {
            Some(Array::F32(scores)) => (per_token(SCORES, scores, n)?.to_vec(), Vec::new()),
            Some(Array::I32(scores)) => (
                per_token(SCORES, scores, n)?
                    .iter()
                    .map(|&s| s as f32)
                    .collect(),
                Vec::new(),
            ),
            Some(other) => return Err(wrong_array(SCORES, "an array of f32 or i32", other)),
            None => (Vec::new(), Vec::new()),
        },
    };
    if let Some(flag) = meta.bool("tokenizer.ggml.add_space_prefix")? {
        add_space_prefix = flag;
    }

    ids.disable_out_of_range(n);
    // An id outside the vocabulary leaves the default in place, as in llama.cpp.
    let read_id = |key: &'static str, slot: &mut Option<u32>| -> Result<(), TokenizerReadError> {
        if let Some(id) = meta.id(key)?.filter(|&id| (id as usize) < n) {
            *slot = Some(id);
        }
        Ok(())
    };
    for (key, slot) in [
        ("tokenizer.ggml.bos_token_id", &mut ids.bos),
        ("tokenizer.ggml.eos_token_id", &mut ids.eos),
        ("tokenizer.ggml.eot_token_id", &mut ids.eot),
        ("tokenizer.ggml.eom_token_id", &mut ids.eom),
        ("tokenizer.ggml.unknown_token_id", &mut ids.unk),
        ("tokenizer.ggml.padding_token_id", &mut ids.pad),
        ("tokenizer.ggml.fim_pre_token_id", &mut ids.fim_pre),
        ("tokenizer.ggml.fim_suf_token_id", &mut ids.fim_suf),
        ("tokenizer.ggml.fim_mid_token_id", &mut ids.fim_mid),
        ("tokenizer.ggml.fim_pad_token_id", &mut ids.fim_pad),
        ("tokenizer.ggml.fim_rep_token_id", &mut ids.fim_rep),
        ("tokenizer.ggml.fim_sep_token_id", &mut ids.fim_sep),
    ] {
        read_id(key, slot)?;
    }
    // The deprecated names of the first three FIM ids, read after the current ones as llama.cpp does.
    for (key, slot) in [
        ("tokenizer.ggml.prefix_token_id", &mut ids.fim_pre),
        ("tokenizer.ggml.suffix_token_id", &mut ids.fim_suf),
        ("tokenizer.ggml.middle_token_id", &mut ids.fim_mid),
    ] {
        read_id(key, slot)?;
    }
    if let Some(flag) = meta.bool("tokenizer.ggml.add_bos_token")? {
        add_bos = flag;
    }
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    // Special tokens recognised by text, made control tokens if they are not.
    let find = |texts: &[&str]| {
        tokens
            .iter()
            .position(|t| texts.contains(&t.as_str()))
            .map(|i| i as u32)
    };
    for (slot, texts) in [
        (&mut ids.eot, EOT_TEXTS),
        (&mut ids.eom, EOM_TEXTS),
        (&mut ids.fim_pre, FIM_PRE_TEXTS),
        (&mut ids.fim_suf, FIM_SUF_TEXTS),
        (&mut ids.fim_mid, FIM_MID_TEXTS),
        (&mut ids.fim_pad, FIM_PAD_TEXTS),
        (&mut ids.fim_rep, FIM_REP_TEXTS),
        (&mut ids.fim_sep, FIM_SEP_TEXTS),
    ] {
        if slot.is_none() {
            *slot = find(texts);
            if let Some(id) = *slot {
                token_types[id as usize] = TokenType::Control;
            }
        }
    }
    let eog = end_of_generation(&tokens, &mut token_types, &ids);

    let data = TokenizerData {
        model,
        tokens,
        token_types,
        scores,
        merges,
        bos: ids.bos,
        eos: ids.eos,
        eot: ids.eot,
        unk: ids.unk,
        pad: ids.pad,
        eog,
        add_bos,
        add_eos,
        add_space_prefix,
    };
    Ok(Tokenizer::new(data)?)
}

/// The end-of-generation tokens llama.cpp derives: FIM padding/repository/file separators, tokens
/// with an end-of-turn-like text, and EOS, EOT and EOM.
fn end_of_generation(
    tokens: &[String],
    token_types: &mut [TokenType],
    ids: &SpecialIds,
) -> Vec<u32> {
    let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    for (id, text) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&text.as_str()) {
            eog.push(id as u32);
            token_types[id] = TokenType::Control;
        }
    }
    eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
    let find =
        |eog: &[u32], text: &str| eog.iter().copied().find(|&id| tokens[id as usize] == text);
    // Vocabularies with `<|return|>` and `<|call|>` (gpt-oss), or `<|calls|>` and `<|flush|>`,
    // use `<|end|>` between messages, not to end generation.
    if let Some(end) = find(&eog, "<|end|>") {
        let has = |text| find(&eog, text).is_some();
        if (has("<|call|>") || has("<|calls|>")) && (has("<|return|>") || has("<|flush|>")) {
            eog.retain(|&id| id != end);
            token_types[end as usize] = TokenType::UserDefined;
        }
    }
    // Vocabularies with `<|tool_response>` use `</s>` as ordinary text.
    if let (Some(_), Some(s)) = (find(&eog, "<|tool_response>"), find(&eog, "</s>")) {
        eog.retain(|&id| id != s);
        token_types[s as usize] = TokenType::Normal;
    }
    eog.sort_unstable();
    eog.dedup();
    eog
}

/// The special token ids llama.cpp tracks.
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

impl SpecialIds {
    fn defaults(bos: Option<u32>, eos: Option<u32>, unk: Option<u32>) -> SpecialIds {
        SpecialIds {
            bos,
            eos,
            eot: None,
            eom: None,
            unk,
            pad: None,
            fim_pre: None,
            fim_suf: None,
            fim_mid: None,
            fim_pad: None,
            fim_rep: None,
            fim_sep: None,
        }
    }

    /// Drops default ids that a small vocabulary does not have.
    fn disable_out_of_range(&mut self, n_tokens: usize) {
        for id in [&mut self.bos, &mut self.eos, &mut self.unk] {
            if id.is_some_and(|id| id as usize >= n_tokens) {
                *id = None;
            }
        }
    }
}

/// Typed access to the metadata, with errors naming the key and what it holds.
struct Meta<'a>(&'a GgufFile);

impl<'a> Meta<'a> {
    fn string(&self, key: &'static str) -> Result<Option<&'a str>, TokenizerReadError> {
        self.typed(key, "a string", Value::as_str)
    }

    fn bool(&self, key: &'static str) -> Result<Option<bool>, TokenizerReadError> {
        self.typed(key, "a bool", Value::as_bool)
    }

    fn id(&self, key: &'static str) -> Result<Option<u32>, TokenizerReadError> {
        self.typed(key, "a non-negative integer below 2^32", |v| {
            v.as_u64().and_then(|v| u32::try_from(v).ok())
        })
    }

    fn array(&self, key: &'static str) -> Result<Option<&'a Array>, TokenizerReadError> {
        self.typed(key, "an array", Value::as_array)
    }

    fn typed<T>(
        &self,
        key: &'static str,
        expected: &'static str,
        get: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, TokenizerReadError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(value) => get(value)
                .map(Some)
                .ok_or_else(|| TokenizerReadError::WrongType {
                    key,
                    expected,
                    found: value.describe(),
                }),
        }
    }
}

fn wrong_array(key: &'static str, expected: &'static str, found: &Array) -> TokenizerReadError {
    TokenizerReadError::WrongType {
        key,
        expected,
        found: format!(
            "an array of {} {}",
            found.len(),
            found.element_type().name()
        ),
    }
}

/// The first `n_tokens` entries of a per-token array (llama.cpp ignores any beyond).
fn per_token<'v, T>(
    key: &'static str,
    values: &'v [T],
    n_tokens: usize,
) -> Result<&'v [T], TokenizerReadError> {
    values.get(..n_tokens).ok_or(TokenizerReadError::TooShort {
        key,
        len: values.len(),
        n_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;

    fn strings(items: &[&str]) -> Value {
        Value::Array(Array::String(items.iter().map(|s| s.to_string()).collect()))
    }

    fn read(build: impl FnOnce(&mut GgufWriter)) -> Result<Tokenizer, TokenizerReadError> {
        let mut w = GgufWriter::new();
        build(&mut w);
        tokenizer_from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap())
    }

    /// A byte-level BPE vocabulary: `a`, `b`, `ab`, `Ġ` (space) and `<|im_end|>`, typed normal.
    fn bpe(w: &mut GgufWriter, pre: &str) {
        w.metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
            .metadata("tokenizer.ggml.pre", Value::String(pre.into()))
            .metadata(TOKENS, strings(&["a", "b", "ab", "Ġ", "<|im_end|>"]))
            .metadata(MERGES, strings(&["a b"]));
    }

    #[test]
    fn reads_a_bpe_vocabulary_with_llama_cpp_defaults() {
        let t = read(|w| bpe(w, "gpt-2")).unwrap();
        assert_eq!(t.encode("ab ab", true, false).unwrap(), [2, 3, 2]);
        // BPE's default BOS/EOS id 11 is outside this vocabulary; `<|im_end|>` is found by its
        // text, becomes a control token and ends generation.
        assert_eq!((t.bos(), t.eos(), t.add_bos()), (None, None, false));
        assert_eq!(t.data().eot, Some(4));
        assert_eq!(t.data().token_types[4], TokenType::Control);
        assert!(t.is_end_of_generation(4));
        assert_eq!(t.encode("a<|im_end|>", false, true).unwrap(), [0, 4]);
    }

    #[test]
    fn reads_a_sentencepiece_vocabulary_with_llama_cpp_defaults() {
        let t = read(|w| {
            w.metadata("tokenizer.ggml.model", Value::String("llama".into()))
                .metadata(TOKENS, strings(&["<unk>", "<s>", "</s>", "▁", "a", "▁a"]))
                .metadata(
                    SCORES,
                    Value::Array(Array::F32(vec![0.0, 0.0, 0.0, -2.0, -1.0, -0.5])),
                )
                .metadata(
                    TOKEN_TYPES,
                    Value::Array(Array::I32(vec![2, 3, 3, 1, 1, 1])),
                );
        })
        .unwrap();
        assert_eq!((t.bos(), t.eos(), t.add_bos()), (Some(1), Some(2), true));
        assert!(t.data().add_space_prefix);
        assert_eq!(t.encode("a a", true, false).unwrap(), [1, 5, 5]);
    }

    #[test]
    fn errors_name_the_key_and_what_was_found() {
        let err = read(|w| {
            bpe(w, "gpt-2");
            w.metadata(TOKEN_TYPES, Value::Array(Array::F32(vec![1.0; 5])));
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(TOKEN_TYPES) && err.contains("array of 5 f32"),
            "{err}"
        );

        let err = read(|w| {
            bpe(w, "gpt-2");
            w.metadata("tokenizer.ggml.add_bos_token", Value::U8(1));
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("add_bos_token") && err.contains("a bool") && err.contains("u8 1"),
            "{err}"
        );

        let err = read(|_| {}).unwrap_err().to_string();
        assert!(err.contains("'tokenizer.ggml.model' is missing"), "{err}");
    }

    #[test]
    fn unknown_models_and_pre_tokenizers_list_the_supported_ones() {
        let err = read(|w| {
            w.metadata("tokenizer.ggml.model", Value::String("t5".into()));
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("'t5'") && err.contains("gpt2") && err.contains("llama"),
            "{err}"
        );

        let err = read(|w| bpe(w, "tekken")).unwrap_err().to_string();
        assert!(
            err.contains("'tekken'") && err.contains("smollm") && err.contains("qwen2"),
            "{err}"
        );
    }
}
