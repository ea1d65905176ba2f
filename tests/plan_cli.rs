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
    let version = format!("format_version: {}", llamart::plan::FORMAT_VERSION);
    for needle in [
        version.as_str(),
        "activations: Q8x2",
        "ty: F16",
        "architecture: \"llama\"",
        "steps: [",
        "FusedMatMul(",
        "AttentionProject(",
    ] {
        assert!(stdout.contains(needle), "missing {needle}");
    }
}

/// A plan whose fused steps do not add up (written by hand, or by a buggy compiler) is refused at
/// load with the step and the reason, never run.
#[test]
fn inconsistent_fused_steps_are_refused_at_load() {
    use llamart::plan::{Epilogue, Kernel, LoadedPlan, PartialsInto, PlanWriter};
    let good = LoadedPlan::open(&tiny_plan()).unwrap();
    let bad = scratch_dir().join("inconsistent.plan");
    let find = |pred: &dyn Fn(&Kernel) -> bool| {
        good.header
            .steps
            .iter()
            .position(|s| pred(&s.kernel))
            .unwrap()
    };
    let parts_into_input = find(
        &|k| matches!(k, Kernel::FusedMatMul { partials: Some(p), .. } if p.into == PartialsInto::Input),
    );
    let rope_kv = find(&|k| {
        matches!(
            k,
            Kernel::FusedMatMul {
                epilogue: Epilogue::RopeKv { .. },
                ..
            }
        )
    });
    let project = find(&|k| matches!(k, Kernel::AttentionProject { .. }));
    type Breakage = Box<dyn Fn(&mut llamart::plan::Step)>;
    let cases: Vec<(usize, Breakage, &str)> = vec![
        (
            parts_into_input,
            Box::new(|s| {
                s.inputs.pop();
            }),
            "inputs, expected",
        ),
        (
            rope_kv,
            Box::new(|s| {
                if let Kernel::FusedMatMul {
                    epilogue: Epilogue::RopeKv { n_kv_head, .. },
                    ..
                } = &mut s.kernel
                {
                    *n_kv_head += 1;
                }
            }),
            "heads",
        ),
        (
            project,
            Box::new(|s| {
                if let Kernel::AttentionProject { n, .. } = &mut s.kernel {
                    *n += 1;
                }
            }),
            "weight",
        ),
    ];
    for (step, breakage, needle) in cases {
        let mut header = good.header.clone();
        breakage(&mut header.steps[step]);
        let weights: Vec<&[u8]> = (0..header.weights.len() as u32)
            .map(|i| good.weight(i))
            .collect();
        PlanWriter::write(&bad, &header, good.tokenizer_json(), weights).unwrap();
        let plan = LoadedPlan::open(&bad).unwrap();
        let err = match llamart::cpu::Session::new(&plan, 1) {
            Ok(_) => panic!("step {step} broken, yet the plan loads"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("step {step}")) && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn bench_reports_depth_roofline_load_and_memory_on_a_quiet_stderr() {
    let plan = tiny_plan();
    let plan = plan.to_str().unwrap();
    // The environment of a headless machine: no Wayland runtime directory.
    let out = Command::new(bin("llamart"))
        .args(["bench", plan, "-p", "8", "-n", "4", "-d", "16", "-r", "1"])
        .args(["-t", "2", "--json"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("XDG_RUNTIME_DIR"),
        "the GPU probe's window-system noise reached the user: {stderr}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["depth"], 16);
    assert_eq!(j["backend"], "cpu", "the tiny plan runs on the CPU");
    let positive = |key: &str| j[key].as_f64().is_some_and(|v| v > 0.0 && v.is_finite());
    for key in [
        "bandwidth_gbps",
        "roofline_tps",
        "roofline_fraction",
        "load_ms",
        "peak_rss_bytes",
    ] {
        assert!(positive(key), "{key}: {}", j[key]);
    }
    let fraction = j["roofline_fraction"].as_f64().unwrap();
    let tg = j["tg"]["tps_mean"].as_f64().unwrap();
    let roofline = j["roofline_tps"].as_f64().unwrap();
    assert!((fraction - tg / roofline).abs() < 1e-9 * fraction.max(1.0));

    // A cache already full leaves no room for the tests.
    let ctx = llamart::plan::LoadedPlan::open(std::path::Path::new(plan))
        .unwrap()
        .header
        .limits
        .ctx
        .to_string();
    let (code, _, stderr) = llamart(&["bench", plan, "-p", "8", "-n", "4", "-d", &ctx]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("-d {ctx} plus")) && stderr.contains("context"),
        "{stderr}"
    );
}

#[test]
fn packed_weights_are_checked_at_load() {
    use llamart::plan::{LoadedPlan, PlanWriter};
    use llamart::GgmlType;
    let good = LoadedPlan::open(&tiny_plan()).unwrap();
    let mut header = good.header.clone();
    let norm = header
        .weights
        .iter()
        .position(|w| w.ty == GgmlType::F32)
        .unwrap();
    header.weights[norm].packed = true;
    let bad = scratch_dir().join("wrongly-packed.plan");
    let weights: Vec<&[u8]> = (0..header.weights.len() as u32)
        .map(|i| good.weight(i))
        .collect();
    PlanWriter::write(&bad, &header, good.tokenizer_json(), weights).unwrap();
    let plan = LoadedPlan::open(&bad).unwrap();
    let name = &header.weights[norm].name;
    let err = llamart::cpu::Session::new(&plan, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(name) && err.contains("marked packed"), "{err}");
    if gpu_available() {
        let err = llamart::gpu::GpuSession::new(&plan)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(name) && err.contains("marked packed"), "{err}");
    }
}
