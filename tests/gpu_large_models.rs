//! Qwen2.5-0.5B and Gemma 3 270M on the GPU, against the same golden envelope as the CPU.
//!
//! On a software adapter (lavapipe, two cores) these models run at well under a token per second,
//! so CI checks one short teacher-forced case of Gemma 3 (head norms, post-norms, sliding windows:
//! the most unusual of the three families); Qwen2.5's kernels (mixed-type fused products, biases)
//! are checked one by one in gpu_ops. Qwen2.5's case, the other cases and the perplexity entries
//! (4096 tokens for Gemma's 2048-token window entry alone) are `#[ignore]`d. Run all of them with
//! `cargo test --release -p llama-e2e --test gpu_large_models -- --include-ignored`.

use llama_e2e::*;
use llamart::gpu::GpuSession;
use llamart::plan::LoadedPlan;
use llamart::tokenizer::Tokenizer;

const QWEN2: &str = "qwen2.5-0.5b-q4_k_m";
const GEMMA3: &str = "gemma3-270m-q4_k_m";

/// Plans with room for the longest golden case (about 340 tokens).
fn plan(model: &str) -> LoadedPlan {
    LoadedPlan::open(&compiled_plan(model, &["--ctx", "512"])).unwrap()
}

fn teacher_forced_on_gpu(model: &str, only: &[&str]) {
    if !gpu_available() {
        return;
    }
    let plan = plan(model);
    let mut gpu = GpuSession::new(&plan).unwrap();
    check_teacher_forced_cases_on(&mut gpu, &plan, model, only, |_, _| {});
}

/// The golden perplexity entries of `model` with a context of `n_ctx` tokens, on the GPU.
fn perplexity_on_gpu(model: &str, n_ctx: u64) {
    if !gpu_available() {
        return;
    }
    // The perplexity entries need contexts of up to 2048 tokens.
    let plan = LoadedPlan::open(&compiled_plan(model, &["--ctx", "2048"])).unwrap();
    let tokenizer: Tokenizer = serde_json::from_slice(plan.tokenizer_json()).unwrap();
    let bos = tokenizer.add_bos().then(|| tokenizer.bos()).flatten();
    let mut gpu = GpuSession::new(&plan).unwrap();
    check_perplexity_on(
        &mut gpu,
        &plan,
        model,
        |text| tokenizer.encode(text, true, false).unwrap(),
        bos,
        |entry| entry["n_ctx"] == n_ctx,
    );
}

#[test]
#[ignore = "minutes on a software GPU"]
fn qwen2_capital_case_on_the_gpu_is_inside_the_envelope() {
    teacher_forced_on_gpu(QWEN2, &["capital"]);
}

#[test]
fn gemma3_capital_case_on_the_gpu_is_inside_the_envelope() {
    teacher_forced_on_gpu(GEMMA3, &["capital"]);
}

#[test]
#[ignore = "minutes on a software GPU; run with --include-ignored"]
fn qwen2_every_case_on_the_gpu_is_inside_the_envelope() {
    teacher_forced_on_gpu(QWEN2, &[]);
}

#[test]
#[ignore = "minutes on a software GPU; run with --include-ignored"]
fn gemma3_every_case_on_the_gpu_is_inside_the_envelope() {
    teacher_forced_on_gpu(GEMMA3, &[]);
}

#[test]
#[ignore = "tens of minutes on a software GPU; run with --include-ignored"]
fn qwen2_perplexity_on_the_gpu_is_within_half_a_percent_of_hf() {
    perplexity_on_gpu(QWEN2, 512);
}

#[test]
#[ignore = "tens of minutes on a software GPU; run with --include-ignored"]
fn gemma3_perplexity_on_the_gpu_is_within_half_a_percent_of_hf() {
    perplexity_on_gpu(GEMMA3, 512);
}

/// The only entry where Gemma's 512-token sliding window matters: 4096 tokens.
#[test]
#[ignore = "tens of minutes on a software GPU; run with --include-ignored"]
fn gemma3_perplexity_at_2048_on_the_gpu_is_within_half_a_percent_of_hf() {
    perplexity_on_gpu(GEMMA3, 2048);
}
