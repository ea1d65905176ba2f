//! `llamac compile --emit`: the intermediate forms on the tiny model.

mod common;

use std::process::Command;

use llamac::synthetic::TinyLlama;

/// Compiles the tiny model into `common::scratch_dir(dir)` with `extra` flags; returns (exit
/// code, stdout, stderr).
fn compile(dir: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = common::scratch_dir(dir);
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, TinyLlama::default().to_gguf()).unwrap();
    let plan = dir.join("tiny.plan");
    let out = Command::new(env!("CARGO_BIN_EXE_llamac"))
        .args([
            "compile",
            gguf.to_str().unwrap(),
            "-o",
            plan.to_str().unwrap(),
        ])
        .args(["--ctx", "64", "--batch", "8"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The DOT form has a box per op of the listing and an edge per operand.
#[test]
fn dot_has_every_op_and_operand() {
    let (code, dot, stderr) = compile("emit-dot", &["--emit", "dot"]);
    assert_eq!(code, 0, "{stderr}");
    let (_, listing, _) = compile("emit-dot", &["--emit", "graph"]);
    assert!(dot.starts_with("digraph {") && dot.trim_end().ends_with('}'));
    let ops = listing.lines().filter(|l| l.starts_with('%')).count();
    let boxes = dot.lines().filter(|l| l.contains("shape=box")).count();
    assert_eq!(boxes, ops);
    let operands: usize = listing
        .lines()
        .filter(|l| l.starts_with('%'))
        .map(|l| l.split(" : ").next().unwrap().matches('%').count() - 1)
        .sum();
    assert_eq!(dot.lines().filter(|l| l.contains(" -> ")).count(), operands);
}

/// `--emit plan` prints the header that was written, in RON.
#[test]
fn plan_prints_the_written_header() {
    let (code, text, stderr) = compile("emit-plan", &["--emit", "plan"]);
    assert_eq!(code, 0, "{stderr}");
    let printed: llamart::plan::PlanHeader = ron::from_str(&text).unwrap();
    let plan = common::scratch_dir("emit-plan").join("tiny.plan");
    let written = llamart::plan::LoadedPlan::open(&plan).unwrap();
    assert_eq!(printed, written.header);
}

#[test]
fn unknown_forms_are_refused() {
    for args in [&["--emit", "svg"][..], &["--emit", "wgsl"]] {
        let (code, _, stderr) = compile("emit-bad", args);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("--emit"), "{stderr}");
    }
}
