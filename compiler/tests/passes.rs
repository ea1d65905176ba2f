//! Per-pass snapshots, like MLC-LLM's per-pass tests: the tiny model's graph just before and just
//! after each optional pass, so what a pass rewrites reads as a diff of two listings (review with
//! `cargo insta review`). Listings are in schedule order with dense ids.

mod common;

use llamac::gguf::GgufFile;
use llamac::passes::{run_pipeline_observed, schedule, PassSet, PipelineOptions, REWRITES};
use llamac::synthetic::TinyLlama;

/// One layer keeps the listings short; the passes treat every layer alike.
fn one_layer() -> TinyLlama {
    TinyLlama {
        n_layer: 1,
        ..TinyLlama::default()
    }
}

fn listings(model: TinyLlama) -> Vec<(String, String)> {
    listings_of(&GgufFile::from_bytes(model.to_gguf()).unwrap())
}

fn listings_of(file: &GgufFile) -> Vec<(String, String)> {
    let (graph, _) = llamac::lower::lower(file).unwrap();
    let options = PipelineOptions {
        ctx: 64,
        max_batch: 8,
        kv_tokens: 64,
        max_seqs: 8,
        disabled: PassSet::NONE,
        kv_type: llamart::plan::KvType::F16,
    };
    let mut seen = Vec::new();
    run_pipeline_observed(graph, file, options, &mut |pass, g| {
        seen.push((pass.to_string(), g.listing(Some(&schedule::run(g)))));
    })
    .unwrap();
    seen
}

/// `before` and `after` of pass `name` in one text.
fn before_after(seen: &[(String, String)], name: &str) -> String {
    let at = seen.iter().position(|(p, _)| p == name).unwrap();
    format!(
        "# before {name}\n{}\n# after {name}\n{}",
        seen[at - 1].1,
        seen[at].1
    )
}

#[test]
fn every_optional_pass_before_and_after() {
    let seen = listings(one_layer());
    for (name, _) in REWRITES {
        insta::assert_snapshot!(format!("tiny_{name}"), before_after(&seen, name));
    }
}

/// The Q/K/V fusion with biases (as in Qwen2): the three biases stack into one.
#[test]
fn fuse_qkv_with_biases_before_and_after() {
    let seen = listings(TinyLlama {
        qkv_bias: true,
        ..one_layer()
    });
    insta::assert_snapshot!(before_after(&seen, "fuse_qkv"));
}

/// A pass that rewrites nothing leaves the graph as it was: constant folding on a model without
/// weight arithmetic.
#[test]
fn a_pass_with_nothing_to_do_changes_nothing() {
    let seen = listings(one_layer());
    let at = seen.iter().position(|(p, _)| p == "constant_fold").unwrap();
    assert_eq!(seen[at - 1].1, seen[at].1);
    // The fusions all change it.
    for name in [
        "fuse_qkv",
        "fuse_gated_ffn",
        "fuse_residual_add",
        "fold_rms_norm",
    ] {
        let at = seen.iter().position(|(p, _)| p == name).unwrap();
        assert_ne!(seen[at - 1].1, seen[at].1, "{name} changed nothing");
    }
}

/// The ops of a real model's first two layers and of its ends, without the weights: where the
/// passes act on a family's own blocks, in a listing short enough to read.
fn first_layers(listing: &str) -> String {
    listing
        .lines()
        .filter(|line| !line.contains("= weight("))
        .filter(|line| {
            let layer = line
                .split("# blk.")
                .nth(1)
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<u32>().ok());
            layer.is_none_or(|l| l < 2)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Per-pass snapshots of the qwen2 and gemma3 graphs, real files: the same pass list serves every
/// family, so what each pass matches in each family reads here (Q4_K_M's mixed Q/K/V types,
/// Qwen's biases, Gemma's head norms and post-norms).
#[test]
fn every_pass_on_qwen2_and_gemma3() {
    for (family, id) in [
        ("qwen2", "qwen2.5-0.5b-q4_k_m"),
        ("gemma3", "gemma3-270m-q4_k_m"),
    ] {
        let file = GgufFile::open(common::model(id)).unwrap();
        let seen: Vec<(String, String)> = listings_of(&file)
            .into_iter()
            .map(|(pass, listing)| (pass, first_layers(&listing)))
            .collect();
        for (name, _) in REWRITES {
            insta::assert_snapshot!(format!("{family}_{name}"), before_after(&seen, name));
        }
    }
}
