//! `llamart` on damaged, foreign and valid plans through the command line.

use std::process::Command;

use llama_e2e::*;

fn llamart(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("llamart")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn tiny_plan() -> std::path::PathBuf {
    let dir = scratch_dir();
    let gguf = dir.join("tiny-cli.gguf");
    std::fs::write(&gguf, llamac::synthetic::TinyLlama::default().to_gguf()).unwrap();
    let plan = dir.join("tiny-cli.plan");
    let out = Command::new(bin("llamac"))
        .arg("compile")
        .arg(&gguf)
        .arg("-o")
        .arg(&plan)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    plan
}

#[test]
fn damaged_and_foreign_plans_are_refused_with_a_reason() {
    let plan = tiny_plan();
    let good = std::fs::read(&plan).unwrap();
    let dir = scratch_dir();
    let bad = dir.join("bad.plan");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() - 10].to_vec(), "truncated"),
        (
            "flipped byte",
            {
                let mut b = good.clone();
                let i = b.len() - 100;
                b[i] ^= 1;
                b
            },
            "content hash mismatch",
        ),
        (
            "other version",
            {
                let mut b = good.clone();
                b[8] = 99;
                b
            },
            "format version 99",
        ),
        (
            "gguf",
            llamac::synthetic::TinyLlama::default().to_gguf(),
            "not a llamac plan",
        ),
        ("empty", vec![], "not a llamac plan"),
        ("preamble only", good[..64].to_vec(), "damaged"),
    ];
    for (what, bytes, needle) in cases {
        std::fs::write(&bad, bytes).unwrap();
        for cmd in [vec!["inspect"], vec!["logits", "--ids", "1,2"]] {
            let mut args = cmd.clone();
            args.insert(1, bad.to_str().unwrap());
            let (code, _, stderr) = llamart(&args);
            assert_eq!(code, 1, "{what}: {stderr}");
            assert!(
                stderr.contains(needle),
                "{what}: {stderr:?} lacks {needle:?}"
            );
        }
    }
    let (code, _, stderr) = llamart(&["inspect", "/no/such.plan"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/no/such.plan"), "{stderr}");
}

#[test]
fn logits_prints_one_json_line_per_position_and_rejects_bad_ids() {
    let plan = tiny_plan();
    let (code, stdout, stderr) = llamart(&[
        "logits",
        plan.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--top",
        "5",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["pos"], i);
        assert_eq!(l["top"].as_array().unwrap().len(), 5);
        let top = TopLogits::from_json(l);
        assert!(top.lse >= f64::from(top.top[0].1));
    }
    let (code, _, stderr) = llamart(&["logits", plan.to_str().unwrap(), "--ids", "1,400"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("token id 400 is outside the vocabulary"),
        "{stderr}"
    );
    let (code, _, stderr) = llamart(&["logits", plan.to_str().unwrap(), "--ids", "1,x"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn inspect_prints_the_readable_header() {
    let plan = tiny_plan();
    let (code, stdout, stderr) = llamart(&["inspect", plan.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for needle in [
        "format_version: 3",
        "activations: Q8",
        "architecture: \"llama\"",
        "steps: [",
        "FusedMatMul(",
        "AttentionProject(",
    ] {
        assert!(stdout.contains(needle), "missing {needle}");
    }
}
