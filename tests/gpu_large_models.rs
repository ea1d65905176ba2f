//! Qwen2.5-0.5B and Gemma 3 270M on the GPU. On a software adapter (lavapipe) these take many
//! minutes, so CI skips them (`#[ignore]`); run them with
//! `cargo test --release -p llama-e2e --test gpu_large_models -- --ignored`.

use llama_e2e::*;
use llamart::gpu::GpuSession;
use llamart::plan::LoadedPlan;

fn teacher_forced_on_gpu(model: &str) {
    if !gpu_available() {
        return;
    }
    let plan = LoadedPlan::open(&compiled_plan(model, &["--ctx", "512"])).unwrap();
    let mut gpu = GpuSession::new(&plan).unwrap();
    check_teacher_forced_on(&mut gpu, &plan, model, |_, _| {});
}

#[test]
#[ignore = "minutes on a software GPU; run with --ignored"]
fn qwen2_teacher_forced_logits_on_the_gpu_are_inside_the_envelope() {
    teacher_forced_on_gpu("qwen2.5-0.5b-q4_k_m");
}

#[test]
#[ignore = "minutes on a software GPU; run with --ignored"]
fn gemma3_teacher_forced_logits_on_the_gpu_are_inside_the_envelope() {
    teacher_forced_on_gpu("gemma3-270m-q4_k_m");
}
