//! The compile report: its numbers on the tiny model (snapshot), the invariants that tie them
//! together on SmolLM2, and the CLI flags that produce it.

mod common;

use std::process::Command;

use llamac::report::Report;
use llamac::synthetic::TinyLlama;

fn compile(gguf: &std::path::Path, bandwidth: Option<f64>) -> Report {
    let plan = gguf.with_extension("plan");
    let options = llamac::compile::CompileOptions {
        ctx: Some(64),
        max_batch: 8,
        kv_tokens: None,
        max_seqs: llamart::plan::DEFAULT_MAX_SEQS,
        activations: llamart::plan::Activations::Q8,
        kv_type: llamart::plan::KvType::F16,
        bandwidth_gbps: bandwidth,
        disabled: llamac::passes::PassSet::NONE,
    };
    llamac::compile::compile(gguf, &plan, options)
        .unwrap()
        .report
}

#[test]
fn tiny_llama_report() {
    let dir = common::scratch_dir("report");
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, TinyLlama::default().to_gguf()).unwrap();
    let report = compile(&gguf, Some(100.0));
    insta::assert_snapshot!(serde_json::to_string_pretty(&report).unwrap());
}

/// Per-layer and outside-layer dispatches account for all of them, the weights are read once per
/// decode token (the tied embedding table only by the head), and the roofline follows.
#[test]
fn smollm2_report_adds_up() {
    let r = compile(&common::model("smollm2-135m-q4_1"), Some(50.0));
    let n_layer = 30;
    assert_eq!(
        r.dispatches_per_layer * n_layer + r.dispatches_outside_layers,
        r.dispatches_per_decode_token
    );
    assert_eq!(r.op_counts.values().sum::<usize>(), r.steps);
    // The target of the fusion issue. A layer is QKV (norm, RoPE, KV write), attention with the
    // output projection per head, gate/up (the heads' parts and the residual added, norm, GLU)
    // and down (the same residual); outside the layers: the embedding, the head with the final
    // norm, and the argmax.
    assert_eq!(r.dispatches_per_layer, 4);
    assert_eq!(r.dispatches_outside_layers, 3);
    assert!(r.bytes_read_per_decode_token >= r.weight_bytes);
    // The target of the fusion issue: weights plus activations within 5 % of the weights.
    assert!(
        r.bytes_read_per_decode_token * 100 <= r.weight_bytes * 105,
        "{} bytes read for {} of weights",
        r.bytes_read_per_decode_token,
        r.weight_bytes
    );
    // A multiply-add per parameter (134.5M; the head reuses the embedding table) is the bulk.
    assert!(
        (2 * 134_000_000..2 * 136_000_000).contains(&r.flops_per_decode_token),
        "{}",
        r.flops_per_decode_token
    );
    let roofline = r.roofline_tokens_per_second.unwrap();
    assert!((roofline - 50e9 / r.bytes_read_per_decode_token as f64).abs() < 1e-6);
    assert_eq!(r.kv_bytes_per_token * u64::from(r.ctx), r.kv_bytes);
    assert_eq!(
        r.resident_bytes_at_ctx,
        r.weight_bytes + r.arena_bytes + r.kv_bytes
    );
}

fn llamac(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llamac"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn report_json_has_the_keys_scripts_read() {
    let dir = common::scratch_dir("report-cli");
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, TinyLlama::default().to_gguf()).unwrap();
    let (plan, json) = (dir.join("tiny.plan"), dir.join("report.json"));
    let (code, stderr) = llamac(&[
        "compile",
        gguf.to_str().unwrap(),
        "-o",
        plan.to_str().unwrap(),
        "--bandwidth",
        "20",
        "--report-json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("dispatches:")
            && stderr.contains("roofline:")
            && stderr.contains("resident when decoding"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in [
        "dispatches_per_decode_token",
        "dispatches_per_layer",
        "weight_bytes",
        "bytes_read_per_decode_token",
        "flops_per_decode_token",
        "arena_bytes",
        "kv_bytes",
        "resident_bytes_at_ctx",
    ] {
        assert!(v[key].as_u64().is_some_and(|n| n > 0), "{key}: {}", v[key]);
    }
    assert!(v["passes"].as_array().is_some_and(|p| !p.is_empty()));

    // Disabling a pass: it leaves the report's list; a name that is not an optional pass is
    // refused with the list of those that are.
    let (code, stderr) = llamac(&[
        "compile",
        gguf.to_str().unwrap(),
        "-o",
        plan.to_str().unwrap(),
        "--disable-pass",
        "fuse_qkv",
        "--disable-pass",
        "fold_rms_norm",
        "--report-json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let passes: Vec<&str> = v["passes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(passes.contains(&"fuse_gated_ffn") && !passes.contains(&"fuse_qkv"));
    assert!(!passes.contains(&"fold_rms_norm"), "{passes:?}");
    // `--help` names every pass that can be disabled.
    let help = Command::new(env!("CARGO_BIN_EXE_llamac"))
        .args(["compile", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, _) in llamac::passes::REWRITES {
        assert!(help.contains(name), "--help does not name {name}");
    }
    for (bad, why) in [
        ("fuse_everything", "does not exist"),
        ("memory", "is required"),
    ] {
        let (code, stderr) = llamac(&[
            "compile",
            gguf.to_str().unwrap(),
            "-o",
            plan.to_str().unwrap(),
            "--disable-pass",
            bad,
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("--disable-pass")
                && stderr.contains(why)
                && stderr.contains("fuse_residual_add"),
            "{stderr}"
        );
    }

    for bad in ["0", "-3", "fast"] {
        let (code, stderr) = llamac(&[
            "compile",
            gguf.to_str().unwrap(),
            "-o",
            plan.to_str().unwrap(),
            &format!("--bandwidth={bad}"),
        ]);
        assert_eq!(code, if bad == "fast" { 2 } else { 1 }, "{stderr}");
        assert!(stderr.contains("--bandwidth"), "{stderr}");
    }
}
