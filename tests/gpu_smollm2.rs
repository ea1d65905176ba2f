//! SmolLM2 replayed on the GPU (lavapipe in CI): inside the golden envelope, within KL 1e-4 of the
//! CPU interpreter at every position, and the same greedy tokens.

use llama_e2e::*;
use llamart::cpu::Session;
use llamart::eval::Evaluator;
use llamart::gpu::GpuSession;
use llamart::plan::LoadedPlan;

const MODEL: &str = "smollm2-135m-q4_1";

#[test]
fn gpu_logits_match_the_references_and_the_cpu() {
    if !gpu_available() {
        return;
    }
    let plan = LoadedPlan::open(&compiled_plan(MODEL, &[])).unwrap();
    let mut cpu = Session::new(&plan, 2).unwrap();
    let mut gpu = GpuSession::new(&plan).unwrap();
    let mut worst_kl = 0f64;
    check_teacher_forced_on(&mut gpu, &plan, MODEL, |case, gpu_rows| {
        let ids = ids_of(&case["teacher_forced"]["ids"]);
        let cpu_rows = eval_rows(&mut cpu, &plan, &ids);
        for (pos, (g, c)) in gpu_rows.iter().zip(&cpu_rows).enumerate() {
            let kl = kl_divergence(g, c);
            worst_kl = worst_kl.max(kl);
            assert!(
                kl <= 1e-4,
                "{}: KL(GPU || CPU) = {kl:e} at position {pos}",
                case["name"]
            );
        }
    });
    eprintln!("worst KL(GPU || CPU) over all golden positions: {worst_kl:e}");
}

fn greedy(session: &mut dyn Evaluator, plan: &LoadedPlan, prompt: &[u32], n: usize) -> Vec<u32> {
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32
    };
    let mut next = argmax(eval_rows(session, plan, prompt).last().unwrap());
    let mut out = vec![next];
    while out.len() < n {
        next = argmax(session.eval(&[next]).unwrap());
        out.push(next);
    }
    out
}

#[test]
fn gpu_and_cpu_generate_the_same_greedy_tokens() {
    if !gpu_available() {
        return;
    }
    let plan = LoadedPlan::open(&compiled_plan(MODEL, &[])).unwrap();
    let mut cpu = Session::new(&plan, 2).unwrap();
    let mut gpu = GpuSession::new(&plan).unwrap();
    for case in golden(MODEL)["cases"].as_array().unwrap() {
        let prompt = ids_of(&case["prompt_ids"]);
        let on_cpu = greedy(&mut cpu, &plan, &prompt, 8);
        let on_gpu = greedy(&mut gpu, &plan, &prompt, 8);
        assert_eq!(on_gpu, on_cpu, "{}", case["name"]);
        let stats = gpu.last_step;
        assert_eq!((stats.submits, stats.compute_passes), (1, 1));
        assert_eq!(stats.bytes_read_back, 49152 * 4);
    }
}

#[test]
fn gpu_top_k_candidates_equal_the_cpu_ones() {
    if !gpu_available() {
        return;
    }
    let plan = LoadedPlan::open(&compiled_plan(MODEL, &["--ctx", "512"])).unwrap();
    let mut cpu = Session::new(&plan, 2).unwrap();
    let mut gpu = GpuSession::new(&plan).unwrap();
    let prompt = ids_of(&golden(MODEL)["cases"][0]["prompt_ids"]);
    for k in [1usize, 2, 40, 104] {
        let (mut a, mut b) = (Vec::with_capacity(49152), Vec::with_capacity(49152));
        cpu.reset();
        gpu.reset();
        let lse_cpu = cpu.eval_top(&prompt, k, &mut a).unwrap();
        let lse_gpu = gpu.eval_top(&prompt, k, &mut b).unwrap();
        let ids = |v: &[(u32, f32)]| v.iter().map(|c| c.0).collect::<Vec<_>>();
        assert_eq!(ids(&b), ids(&a), "k = {k}");
        for (x, y) in a.iter().zip(&b) {
            assert!((x.1 - y.1).abs() < 1e-3, "k = {k}: {x:?} vs {y:?}");
        }
        assert!(
            (lse_cpu - lse_gpu).abs() < 1e-3,
            "k = {k}: lse {lse_cpu} vs {lse_gpu}"
        );
        assert_eq!(gpu.last_step.bytes_read_back, (2 * k as u64 + 1) * 4);
    }
}
