//! Tokenizer conformance with llama.cpp: its tokenizer test vocabularies (test-tokenizer-0's
//! `.inp`/`.out` pairs), the golden prompts and perplexity text of the test models, decoding,
//! streaming detokenization and the tokenizer's serialized form.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use llama_e2e::{golden, model, models_dir, repo_root};
use llamac::gguf::GgufFile;
use llamac::tokenizer::tokenizer_from_gguf;
use llamart::tokenizer::{Detokenizer, Tokenizer};

const MODELS: [&str; 3] = [
    "smollm2-135m-q4_1",
    "qwen2.5-0.5b-q4_k_m",
    "gemma3-270m-q4_k_m",
];

/// The tokenizer of a GGUF file, read once per test process.
fn tokenizer(path: &Path) -> &'static Tokenizer {
    static CACHE: Mutex<Vec<(PathBuf, &'static Tokenizer)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = cache.iter().find(|(p, _)| p == path) {
        return t;
    }
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t: &'static Tokenizer = Box::leak(Box::new(
        tokenizer_from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    ));
    cache.push((path.to_path_buf(), t));
    t
}

/// One of llama.cpp's tokenizer test vocabularies; a missing one fails with the fetch command.
fn vocab_file(name: &str) -> PathBuf {
    let path = models_dir()
        .join("vocab")
        .join(format!("ggml-vocab-{name}.gguf"));
    assert!(
        path.is_file(),
        "test vocabulary {} is missing: run tools/fetch-models (or set LLAMA_MODELS_DIR)",
        path.display()
    );
    path
}

/// The (text, expected ids) cases of a test vocabulary, read as test-tokenizer-0 reads them: the
/// texts end at each "\n__ggml_vocab_test__\n", the ids are one space-separated line per text.
fn vocab_cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let path = vocab_file(name);
    let read = |ext: &str| {
        let p = PathBuf::from(format!("{}.{ext}", path.display()));
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (run tools/fetch-models)", p.display()))
    };
    let (inp, out) = (read("inp"), read("out"));
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        let (text, after) = rest.split_once(sep).unwrap_or((rest, ""));
        texts.push(text.to_string());
        rest = after;
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|id| id.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: {} texts but {} id lines",
        texts.len(),
        ids.len()
    );
    assert!(!texts.is_empty(), "{name}: no test cases");
    texts.into_iter().zip(ids).collect()
}

/// test-tokenizer-0 tokenizes with add_special = false and parse_special = false; every case must
/// give exactly llama.cpp's ids, and decode back to its text.
fn check_vocab(name: &str) {
    let t = tokenizer(&vocab_file(name));
    let mut failures = Vec::new();
    let cases = vocab_cases(name);
    for (text, expected) in &cases {
        let ids = t.encode(text, false, false).unwrap();
        if &ids != expected {
            failures.push(format!("{text:?}: expected {expected:?}, got {ids:?}"));
            continue;
        }
        let decoded = t.decode(&ids).unwrap();
        if decoded != text.as_bytes() {
            failures.push(format!(
                "{text:?} decodes to {:?}",
                String::from_utf8_lossy(&decoded)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn vocab_gpt2() {
    check_vocab("gpt-2");
}

#[test]
fn vocab_llama_bpe() {
    check_vocab("llama-bpe");
}

#[test]
fn vocab_llama_spm() {
    check_vocab("llama-spm");
}

#[test]
fn vocab_qwen2() {
    check_vocab("qwen2");
}

/// Every golden prompt tokenizes to llama.cpp's `prompt_ids` (BOS included where the model adds it).
#[test]
fn golden_prompts() {
    for id in MODELS {
        let t = tokenizer(&model(id));
        let g = golden(id);
        let cases = g["cases"].as_array().unwrap();
        assert!(!cases.is_empty());
        for case in cases {
            let prompt = case["prompt"].as_str().unwrap();
            let parse_special = case["parse_special"].as_bool().unwrap();
            let expected: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
            assert_eq!(
                t.add_bos(),
                case["add_bos"].as_bool().unwrap(),
                "{id}: add_bos"
            );
            assert_eq!(
                t.encode(prompt, true, parse_special).unwrap(),
                expected,
                "{id}: {prompt:?}"
            );
        }
    }
}

/// The perplexity text (a Debian license, over 7000 tokens) tokenizes to llama.cpp's ids, the way
/// llama-perplexity reads it: one trailing newline dropped, add_special on, parse_special off.
#[test]
fn golden_perplexity_text() {
    let path = repo_root().join("tests/fixtures/GPL-3.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = text.strip_suffix('\n').unwrap_or(&text);
    for id in MODELS {
        let t = tokenizer(&model(id));
        let g = golden(id);
        let entry = g["perplexity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p.get("token_ids").is_some())
            .unwrap();
        assert_eq!(entry["text_name"], "GPL-3");
        let expected: Vec<u32> = serde_json::from_value(entry["token_ids"].clone()).unwrap();
        let ids = t.encode(text, true, false).unwrap();
        let first_difference = ids.iter().zip(&expected).position(|(a, b)| a != b);
        assert!(
            ids == expected,
            "{id}: {} ids, expected {}; first difference at {first_difference:?}",
            ids.len(),
            expected.len()
        );
    }
}

/// Streams `ids` through a detokenizer and returns the pieces it emitted.
fn stream(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut detok = Detokenizer::new(t);
    let mut pieces: Vec<String> = ids.iter().map(|&id| detok.push(id)).collect();
    pieces.push(detok.finish());
    pieces
}

/// Emoji and CJK characters span several tokens in all three models (byte-level BPE pieces or
/// SentencePiece byte tokens); the detokenizer must hold their first bytes rather than emit them.
#[test]
fn streaming_never_splits_a_character() {
    let text = "Grüße aus München! 東京タワー 🗼 costs ¥3000 🦙🧑‍🚀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⅧⅨ";
    for id in MODELS {
        let t = tokenizer(&model(id));
        let ids = t.encode(text, false, false).unwrap();
        let pieces = stream(t, &ids);
        assert_eq!(pieces.concat(), text, "{id}");
        assert!(
            pieces
                .iter()
                .all(|p| !p.contains(char::REPLACEMENT_CHARACTER)),
            "{id}: {pieces:?}"
        );
        let split_chars = ids
            .iter()
            .filter(|&&i| std::str::from_utf8(t.token_bytes(i).unwrap()).is_err())
            .count();
        assert!(
            split_chars > 0,
            "{id}: no token ends inside a character, so nothing was held"
        );
    }
}

#[test]
fn streaming_flushes_an_incomplete_character_as_replacement() {
    let t = tokenizer(&model("smollm2-135m-q4_1"));
    let ids = t.encode("🦙", false, false).unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    let pieces = stream(t, &ids[..ids.len() - 1]);
    assert!(
        pieces[..pieces.len() - 1].iter().all(String::is_empty),
        "{pieces:?}"
    );
    assert_eq!(pieces.last().unwrap(), "\u{FFFD}");
}

/// Control tokens print nothing while streaming (like llama.cpp's generation output), but decode
/// to their text.
#[test]
fn control_tokens_are_hidden_when_streaming() {
    let t = tokenizer(&model("qwen2.5-0.5b-q4_k_m"));
    let ids = t
        .encode("<|im_start|>user\nHi<|im_end|>", false, true)
        .unwrap();
    assert_eq!(ids.first(), Some(&151644));
    assert_eq!(stream(t, &ids).concat(), "user\nHi");
    assert_eq!(t.decode(&ids).unwrap(), b"<|im_start|>user\nHi<|im_end|>");
    assert!(t.is_end_of_generation(151645), "<|im_end|> ends generation");
}

#[test]
fn ids_out_of_range_are_errors() {
    let t = tokenizer(&model("smollm2-135m-q4_1"));
    let n = t.n_vocab() as u32;
    assert!(t.token_bytes(n).is_err());
    let err = t.decode(&[1, n]).unwrap_err().to_string();
    assert!(
        err.contains(&n.to_string()) && err.contains("out of range"),
        "{err}"
    );
}

/// The tokenizer as stored in a plan (JSON) loads back to one that tokenizes the same.
#[test]
fn serialized_tokenizer_encodes_the_same() {
    let texts: Vec<String> = vocab_cases("qwen2")
        .into_iter()
        .map(|(text, _)| text)
        .collect();
    for id in MODELS {
        let t = tokenizer(&model(id));
        let json = serde_json::to_vec(t).unwrap();
        let loaded: Tokenizer = serde_json::from_slice(&json).unwrap();
        assert_eq!(loaded.data(), t.data(), "{id}");
        for text in &texts {
            for parse_special in [false, true] {
                assert_eq!(
                    loaded.encode(text, true, parse_special).unwrap(),
                    t.encode(text, true, parse_special).unwrap()
                );
            }
        }
    }
}

/// Control tokens such as `<|im_start|>` are parsed from the text only when asked to; otherwise
/// their text is tokenized as ordinary text.
#[test]
fn special_tokens_are_parsed_only_when_asked() {
    let t = tokenizer(&model("smollm2-135m-q4_1"));
    assert_eq!(t.encode("<|im_start|>", false, true).unwrap(), [1]);
    let plain = t.encode("<|im_start|>", false, false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&1), "{plain:?}");
    let parsed = t.encode("a<|endoftext|>b", false, true).unwrap();
    assert_eq!((parsed.len(), parsed[1]), (3, 0), "{parsed:?}");
}

/// Random mixes of the characters pre-tokenizers treat specially never fail to encode, and decode
/// back to the text (SentencePiece cannot tell a literal U+2581 from an escaped space, so texts
/// holding one are only encoded).
#[test]
fn random_text_round_trips() {
    let alphabet: Vec<char> = " \t\n\r\u{a0}\u{3000}\u{85}aZé東ー🗼🦙'sStT09½٣!?.,<>|$+=^~`\u{301}\u{200d}\u{fe0f}\0\u{10ffff}▁"
        .chars()
        .collect();
    let specials = ["<|im_end|>", "<start_of_turn>", "<unused3>"];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: usize| {
        // xorshift64: deterministic, so a failure reproduces.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    for id in MODELS {
        let t = tokenizer(&model(id));
        for _ in 0..1000 {
            let chars: Vec<char> = (0..next(24))
                .map(|_| alphabet[next(alphabet.len())])
                .collect();
            let (before, after) = chars.split_at(next(chars.len() + 1));
            let special = specials[next(specials.len())];
            let text = format!(
                "{}{special}{}",
                String::from_iter(before),
                String::from_iter(after)
            );
            let text = text.as_str();
            for parse_special in [false, true] {
                let ids = t.encode(text, false, parse_special).unwrap();
                if !(id.starts_with("gemma") && text.contains('▁')) {
                    assert_eq!(
                        t.decode(&ids).unwrap(),
                        text.as_bytes(),
                        "{id}: {text:?} -> {ids:?}"
                    );
                }
            }
        }
    }
}
