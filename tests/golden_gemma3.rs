//! Gemma 3 270M (gemma3, Q4_K_M), including the 2048-token perplexity entry where the sliding window matters against the golden references: teacher-forced logits inside the envelope and
//! perplexity.

use llama_e2e::*;
use llamart::plan::LoadedPlan;
use llamart::tokenizer::Tokenizer;

const MODEL: &str = "gemma3-270m-q4_k_m";

fn plan() -> LoadedPlan {
    LoadedPlan::open(&compiled_plan(MODEL, &[])).unwrap()
}

#[test]
fn teacher_forced_logits_are_inside_the_envelope() {
    check_teacher_forced(&plan(), MODEL);
}

#[test]
fn perplexity_is_within_half_a_percent_of_hf() {
    let plan = plan();
    let tokenizer: Tokenizer = serde_json::from_slice(plan.tokenizer_json()).unwrap();
    let bos = tokenizer.add_bos().then(|| tokenizer.bos()).flatten();
    check_perplexity(
        &plan,
        MODEL,
        |text| tokenizer.encode(text, true, false).unwrap(),
        bos,
    );
}
