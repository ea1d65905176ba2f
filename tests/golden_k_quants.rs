//! Qwen2.5-Coder-0.5B (qwen2) and Gemma 3 270M (gemma3), both Q4_K_M (Q5_0, Q8_0, Q4_K, Q6_K
//! weights), against the golden references on the CPU: teacher-forced logits inside the envelope,
//! and perplexity, including Gemma's 2048-token entry where its sliding window matters.

use llama_e2e::*;
use llamart::plan::LoadedPlan;
use llamart::tokenizer::Tokenizer;

fn plan(model: &str) -> LoadedPlan {
    LoadedPlan::open(&compiled_plan(model, &[])).unwrap()
}

fn perplexity(model: &str) {
    let plan = plan(model);
    let tokenizer: Tokenizer = serde_json::from_slice(plan.tokenizer_json()).unwrap();
    let bos = tokenizer.add_bos().then(|| tokenizer.bos()).flatten();
    check_perplexity(
        &plan,
        model,
        |text| tokenizer.encode(text, true, false).unwrap(),
        bos,
    );
}

macro_rules! golden_tests {
    ($module:ident, $model:literal) => {
        mod $module {
            #[test]
            fn teacher_forced_logits_are_inside_the_envelope() {
                llama_e2e::check_teacher_forced(&super::plan($model), $model);
            }

            #[test]
            fn perplexity_is_within_half_a_percent_of_hf() {
                super::perplexity($model);
            }
        }
    };
}

golden_tests!(qwen2, "qwen2.5-0.5b-q4_k_m");
golden_tests!(gemma3, "gemma3-270m-q4_k_m");
