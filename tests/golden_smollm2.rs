//! SmolLM2-135M (llama, Q4_1) against the golden references: teacher-forced logits inside the
//! envelope, perplexity, and prefill/decode consistency.

use llama_e2e::*;
use llamart::cpu::Session;
use llamart::plan::LoadedPlan;

const MODEL: &str = "smollm2-135m-q4_1";

fn plan() -> LoadedPlan {
    LoadedPlan::open(&compiled_plan(MODEL, &[])).unwrap()
}

#[test]
fn teacher_forced_logits_are_inside_the_envelope() {
    check_teacher_forced(&plan(), MODEL);
}

/// The plan that keeps activations in f32 (the one the GPU comparisons use) is a model of its
/// own on the CPU, and must meet the same envelope.
#[test]
fn f32_activation_logits_are_inside_the_envelope() {
    let plan = LoadedPlan::open(&compiled_plan(MODEL, &["--activations", "f32"])).unwrap();
    assert_eq!(plan.header.activations, llamart::plan::Activations::F32);
    check_teacher_forced(&plan, MODEL);
}

/// The KV cache choices other than the default f16 meet the same envelope: `q8_0` (about a
/// quarter of f32's bytes) and `f32`.
#[test]
fn q8_0_and_f32_cache_logits_are_inside_the_envelope() {
    for kv in ["q8_0", "f32"] {
        let plan = LoadedPlan::open(&compiled_plan(MODEL, &["--kv-type", kv])).unwrap();
        assert_eq!(plan.header.kv.ty.to_string(), kv);
        check_teacher_forced(&plan, MODEL);
    }
}

#[test]
fn perplexity_is_within_half_a_percent_of_hf() {
    check_perplexity(
        &plan(),
        MODEL,
        |_| unreachable!("the golden entries carry token ids"),
        None,
    );
}

/// The largest absolute difference between the logits of evaluating `ids` in one sequence and of
/// prefilling all but the last `decode` tokens, then decoding those one at a time.
fn prefill_decode_difference(
    session: &mut Session,
    plan: &LoadedPlan,
    ids: &[u32],
    decode: usize,
) -> f32 {
    let full = eval_rows(session, plan, ids);
    let split = ids.len() - decode;
    eval_rows(session, plan, &ids[..split]);
    let mut worst = 0f32;
    for (i, &id) in ids[split..].iter().enumerate() {
        let row = session.eval(&[id]).unwrap();
        for (a, b) in row.iter().zip(&full[split + i]) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

#[test]
fn prefill_then_decode_equals_one_full_evaluation() {
    let golden = golden(MODEL);
    let plan = plan();
    let ids = ids_of(&golden["cases"][1]["teacher_forced"]["ids"]);
    let mut session = Session::new(&plan, 2).unwrap();
    let diff = prefill_decode_difference(&mut session, &plan, &ids, 12);
    eprintln!("max |prefill+decode - full| = {diff:e}");
    assert!(
        diff <= 1e-3,
        "prefill then decode differs from the full evaluation by {diff}"
    );

    // The guard: the same check must catch a KV cache written one position off.
    session.misplace_kv_writes_for_testing(1);
    let diff = prefill_decode_difference(&mut session, &plan, &ids, 12);
    eprintln!("with KV writes shifted by one: {diff}");
    assert!(
        diff > 1e-3,
        "a KV write off by one went unnoticed (difference {diff})"
    );
}

/// The same over 600 positions of real text: a decoded token's keys span three cache segments
/// of the CPU attention, which split over the threads and are merged afterwards, while the full
/// evaluation walks them within its tiles.
#[test]
fn prefill_then_decode_equals_one_full_evaluation_across_cache_segments() {
    let golden = golden(MODEL);
    let ids = ids_of(&golden["perplexity"][0]["token_ids"]);
    let plan = plan();
    let mut session = Session::new(&plan, 2).unwrap();
    let diff = prefill_decode_difference(&mut session, &plan, &ids[..600], 12);
    eprintln!("max |prefill+decode - full| over 600 positions = {diff:e}");
    assert!(
        diff <= 1e-3,
        "prefill then decode differs from the full evaluation by {diff}"
    );
}

#[test]
fn longer_batches_than_the_plan_allows_and_full_contexts_are_errors() {
    let plan = LoadedPlan::open(&compiled_plan(MODEL, &["--ctx", "64", "--batch", "16"])).unwrap();
    let mut session = Session::new(&plan, 1).unwrap();
    let err = session.eval(&[1; 17]).unwrap_err();
    assert_eq!(
        err,
        llamart::cpu::EvalError::BatchTooLarge { n: 17, max: 16 }
    );
    for _ in 0..4 {
        session.eval(&[1; 16]).unwrap();
    }
    assert!(matches!(
        session.eval(&[1]).unwrap_err(),
        llamart::cpu::EvalError::ContextFull { past: 64, .. }
    ));
    session.reset();
    assert!(matches!(
        session.eval(&[49152]).unwrap_err(),
        llamart::cpu::EvalError::BadToken { id: 49152, .. }
    ));
    assert!(matches!(
        session.eval(&[]).unwrap_err(),
        llamart::cpu::EvalError::Empty
    ));
}

/// The head (final norm and LM head) on the last row alone, and a prefill that skips it, give
/// exactly the logits of full evaluations: rows never depend on other rows of a step.
#[test]
fn last_row_and_prefill_paths_equal_full_evaluation() {
    let golden = golden(MODEL);
    let plan = plan();
    let ids = ids_of(&golden["cases"][1]["teacher_forced"]["ids"]);
    let n_vocab = plan.header.model.n_vocab as usize;
    let mut session = Session::new(&plan, 2).unwrap();
    let full = session.eval(&ids).unwrap().to_vec();
    let last_row = &full[(ids.len() - 1) * n_vocab..];

    session.reset();
    assert_eq!(session.eval_last(&ids).unwrap(), last_row);

    // Prefill all but 3 tokens, in two chunks, then take the last of the rest in one step.
    let split = ids.len() - 3;
    session.reset();
    session.prefill(&ids[..split / 2]).unwrap();
    session.prefill(&ids[split / 2..split]).unwrap();
    assert_eq!(session.n_past(), split);
    assert_eq!(session.eval_last(&ids[split..]).unwrap(), last_row);

    // And decoding after a prefill: each single-token step as in the full evaluation.
    session.reset();
    session.prefill(&ids[..split]).unwrap();
    for (i, &id) in ids[split..].iter().enumerate() {
        let row = session.eval(&[id]).unwrap();
        let want = &full[(split + i) * n_vocab..][..n_vocab];
        let worst = row
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-3, "token {}: {worst}", split + i);
    }
}
