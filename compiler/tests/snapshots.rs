//! Snapshots of compiled graphs: the op listing after all passes, in schedule order. A change in
//! lowering or in any pass shows up here as a readable diff (review with `cargo insta review`).

mod common;

use llamac::gguf::GgufFile;
use llamac::passes::PipelineOptions;
use llamac::synthetic::TinyLlama;

const OPTIONS: PipelineOptions = PipelineOptions {
    ctx: 64,
    max_batch: 8,
    kv_tokens: 64,
    max_seqs: 8,
    disabled: llamac::passes::PassSet::NONE,
    kv_type: llamart::plan::KvType::F16,
};

#[test]
fn tiny_llama_graph() {
    let file = GgufFile::from_bytes(TinyLlama::default().to_gguf()).unwrap();
    insta::assert_snapshot!(llamac::compile::graph_listing(&file, OPTIONS).unwrap());
}

#[test]
fn tiny_llama_with_biases_and_untied_head_graph() {
    let model = TinyLlama {
        qkv_bias: true,
        untied_head: true,
        n_layer: 1,
        ..TinyLlama::default()
    };
    let file = GgufFile::from_bytes(model.to_gguf()).unwrap();
    insta::assert_snapshot!(llamac::compile::graph_listing(&file, OPTIONS).unwrap());
}

#[test]
fn smollm2_graph() {
    let file = GgufFile::open(common::model("smollm2-135m-q4_1")).unwrap();
    insta::assert_snapshot!(llamac::compile::graph_listing(&file, OPTIONS).unwrap());
}

/// qwen2: Q/K/V biases, an untied head, rope base 1e6.
#[test]
fn qwen2_graph() {
    let file = GgufFile::open(common::model("qwen2.5-0.5b-q4_k_m")).unwrap();
    insta::assert_snapshot!(llamac::compile::graph_listing(&file, OPTIONS).unwrap());
}

/// gemma3: scaled embeddings, (1 + weight) norms as the GGUF stores them, q/k norms, post-norms,
/// GeGLU, local layers with a 512-token window and rope base 1e4, every sixth layer global.
#[test]
fn gemma3_graph() {
    let file = GgufFile::open(common::model("gemma3-270m-q4_k_m")).unwrap();
    insta::assert_snapshot!(llamac::compile::graph_listing(&file, OPTIONS).unwrap());
}

#[test]
fn listing_is_stable_from_run_to_run() {
    let file = GgufFile::from_bytes(TinyLlama::default().to_gguf()).unwrap();
    let a = llamac::compile::graph_listing(&file, OPTIONS).unwrap();
    let b = llamac::compile::graph_listing(&file, OPTIONS).unwrap();
    assert_eq!(a, b);
}

/// The Metal translation of the tiny model's kernels: checks the MSL path (with real buffer slots)
/// without a Mac.
#[test]
fn tiny_llama_kernels_in_msl() {
    let file = GgufFile::from_bytes(TinyLlama::default().to_gguf()).unwrap();
    let dir = common::scratch_dir("msl");
    let (gguf, plan) = (dir.join("tiny.gguf"), dir.join("tiny.plan"));
    std::fs::write(&gguf, TinyLlama::default().to_gguf()).unwrap();
    let options = llamac::compile::CompileOptions {
        ctx: Some(64),
        max_batch: 8,
        kv_tokens: None,
        max_seqs: llamart::plan::DEFAULT_MAX_SEQS,
        activations: llamart::plan::Activations::Q8,
        kv_type: llamart::plan::KvType::F16,
        bandwidth_gbps: None,
        disabled: llamac::passes::PassSet::NONE,
    };
    llamac::compile::compile(&gguf, &plan, options).unwrap();
    let plan = llamart::plan::LoadedPlan::open(&plan).unwrap();
    drop(file);
    let mut all = String::new();
    for k in &plan.header.gpu.kernels {
        let msl = llamac::wgsl::to_msl(&k.wgsl).unwrap();
        assert!(
            msl.contains("[[buffer(0)]]") && msl.contains("[[buffer(1)]]"),
            "{}: no buffer slots",
            k.label
        );
        all.push_str(&format!("// ===== {} =====\n{msl}\n", k.label));
    }
    insta::assert_snapshot!(all);
}
