//! `llamac inspect` on the real test models.

mod common;

use std::process::Command;

fn inspect(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamac"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Hyperparameters as listed in shared/models.md.
/// Model id, architecture, and (key, value) pairs under the architecture's prefix.
type Expected = (&'static str, &'static str, &'static [(&'static str, u64)]);

const EXPECTED: [Expected; 3] = [
    (
        "smollm2-135m-q4_1",
        "llama",
        &[
            ("block_count", 30),
            ("embedding_length", 576),
            ("feed_forward_length", 1536),
            ("attention.head_count", 9),
            ("attention.head_count_kv", 3),
            ("context_length", 8192),
        ],
    ),
    (
        "qwen2.5-0.5b-q4_k_m",
        "qwen2",
        &[
            ("block_count", 24),
            ("embedding_length", 896),
            ("feed_forward_length", 4864),
            ("attention.head_count", 14),
            ("attention.head_count_kv", 2),
            ("context_length", 32768),
        ],
    ),
    (
        "gemma3-270m-q4_k_m",
        "gemma3",
        &[
            ("block_count", 18),
            ("embedding_length", 640),
            ("feed_forward_length", 2048),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 1),
            ("attention.key_length", 256),
            ("context_length", 32768),
            ("attention.sliding_window", 512),
        ],
    ),
];

#[test]
fn json_reports_the_documented_hyperparameters() {
    for (id, arch, hparams) in EXPECTED {
        let path = common::model(id);
        let (code, stdout, stderr) = inspect(&[path.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{id}: {stderr}");
        let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(j["version"], 3, "{id}");
        assert_eq!(j["architecture"], arch, "{id}");
        for (key, want) in hparams {
            let key = format!("{arch}.{key}");
            assert_eq!(j["metadata"][&key].as_u64(), Some(*want), "{id}: {key}");
        }
        let tensors = j["tensors"].as_array().unwrap();
        assert!(!tensors.is_empty());
        for t in tensors {
            assert!(
                t["name"].is_string()
                    && t["type"].is_string()
                    && t["shape"].is_array()
                    && t["bytes"].is_u64()
            );
        }
        let summarized = &j["metadata"]["tokenizer.ggml.tokens"];
        assert_eq!(
            summarized["element_type"], "string",
            "{id}: long arrays are summarized"
        );
    }
}

#[test]
fn smollm2_rope_and_norm_constants_and_tensor_types() {
    let (code, stdout, _) = inspect(&[
        common::model("smollm2-135m-q4_1").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        j["metadata"]["llama.rope.freq_base"].as_f64(),
        Some(100000.0)
    );
    assert_eq!(
        j["metadata"]["llama.attention.layer_norm_rms_epsilon"]
            .as_f64()
            .map(|e| e as f32),
        Some(1e-5)
    );
    assert_eq!(j["metadata"]["tokenizer.ggml.pre"], "smollm");
    assert_eq!(j["totals_by_type"]["q4_1"]["tensors"], 210);
    assert_eq!(j["totals_by_type"]["q8_0"]["tensors"], 1);
    assert_eq!(j["totals_by_type"]["f32"]["tensors"], 61);
}

#[test]
fn text_output_is_readable() {
    let (code, stdout, stderr) = inspect(&[common::model("gemma3-270m-q4_k_m").to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for needle in [
        "[gemma3]",
        "GGUF v3",
        "hyperparameters",
        "block_count",
        "attention.sliding_window",
        "model          llama",
        "262144 tokens",
        "chat template  none",
        "token_embd.weight",
        "totals by type",
        "q6_K",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn missing_file_and_bad_flags_are_errors() {
    let (code, _, stderr) = inspect(&["/nonexistent/model.gguf"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/model.gguf") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let (code, _, stderr) = inspect(&["--no-such-flag"]);
    assert_eq!(code, 2, "{stderr}");
}
