//! Many sequences in one step (SmolLM2): batch invariance at the level of steps, then the
//! engine's scheduling, prefix reuse, preemption and cancelling against solo runs, on the CPU;
//! on the GPU, mixes against solo runs within its tolerance.

use llama_e2e::*;
use llamart::batch::{Logits, SeqStep};
use llamart::cpu::{EvalError, Session};
use llamart::engine::{BatchEvaluator, Engine, Event, Finish, Request, RequestError};
use llamart::gpu::GpuSession;
use llamart::plan::LoadedPlan;
use llamart::sampling::SamplingParams;

const MODEL: &str = "smollm2-135m-q4_1";

/// A plan with a small context and pool, so page tables are short and pages run out.
fn plan(kv_tokens: u32) -> LoadedPlan {
    let kv = kv_tokens.to_string();
    let flags = ["--ctx", "512", "--kv-tokens", &kv, "--batch", "64"];
    LoadedPlan::open(&compiled_plan(MODEL, &flags)).unwrap()
}

/// Real text to draw sequences from.
fn text() -> Vec<u32> {
    ids_of(&golden(MODEL)["perplexity"][0]["token_ids"])
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn bits(row: &[f32]) -> Vec<u32> {
    row.iter().map(|v| v.to_bits()).collect()
}

/// Every row's logits of `tokens` evaluated alone, in one prefill chunk after another of `chunk`
/// tokens, with the pages in order.
fn solo(session: &mut impl BatchEvaluator, tokens: &[u32], chunk: usize) -> Vec<Vec<u32>> {
    let n_vocab = session.header().model.n_vocab as usize;
    let page = session.header().limits.page_tokens as usize;
    let pages: Vec<u32> = (0..tokens.len().div_ceil(page) as u32).collect();
    let mut rows = Vec::new();
    for (c, part) in tokens.chunks(chunk).enumerate() {
        let seq = SeqStep {
            tokens: part,
            start: c * chunk,
            pages: &pages,
            logits: Logits::All,
        };
        let logits = session.step(&[seq]).unwrap();
        rows.extend(logits.chunks_exact(n_vocab).map(bits));
    }
    rows
}

/// Sequences of random lengths advanced together in steps of random mixes (some decoding one
/// token, some reading chunks), their pages scattered over the pool. Returns every sequence's
/// rows. With `corrupt`, one page-table entry of the first sequence points at another page
/// once its keys are written there.
fn mixed(
    session: &mut impl BatchEvaluator,
    seqs: &[&[u32]],
    rng: &mut Rng,
    corrupt: bool,
) -> Vec<Vec<Vec<u32>>> {
    let h = session.header().clone();
    let (n_vocab, page) = (h.model.n_vocab as usize, h.limits.page_tokens as usize);
    let mut free: Vec<u32> = (0..h.limits.kv_pages()).collect();
    // Scatter: take pages from random places in the pool.
    let mut pages: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| {
            (0..s.len().div_ceil(page))
                .map(|_| free.swap_remove(rng.below(free.len())))
                .collect()
        })
        .collect();
    let mut done = vec![0usize; seqs.len()];
    let mut rows: Vec<Vec<Vec<u32>>> = vec![Vec::new(); seqs.len()];
    let mut corrupted = false;
    while done.iter().zip(seqs).any(|(d, s)| d < &s.len()) {
        let mut budget = h.limits.max_batch as usize;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            let left = s.len() - done[i];
            if left == 0 || budget == 0 || rng.below(4) == 0 {
                continue;
            }
            // Decode-sized steps half the time, prefill chunks of up to 40 tokens otherwise.
            let len = if rng.below(2) == 0 {
                1
            } else {
                1 + rng.below(40)
            }
            .min(left)
            .min(budget);
            budget -= len;
            plan.push((i, len));
        }
        if plan.is_empty() {
            continue;
        }
        if corrupt && !corrupted && done[0] > 2 * page {
            pages[0].swap(0, 1);
            corrupted = true;
        }
        let steps: Vec<SeqStep> = plan
            .iter()
            .map(|&(i, len)| SeqStep {
                tokens: &seqs[i][done[i]..done[i] + len],
                start: done[i],
                pages: &pages[i],
                logits: Logits::All,
            })
            .collect();
        let logits = session.step(&steps).unwrap();
        let mut at = 0;
        for &(i, len) in &plan {
            for r in 0..len {
                rows[i].push(bits(&logits[(at + r) * n_vocab..][..n_vocab]));
            }
            at += len;
            done[i] += len;
        }
    }
    rows
}

/// The central property: a sequence's logits are the same bits alone or in any mix of others,
/// at any positions, prefill and decode; and a wrong page-table entry shows.
#[test]
fn a_sequence_gets_the_same_bits_alone_or_in_any_mix() {
    let plan = plan(2048);
    let text = text();
    let mut session = Session::new(&plan, 2).unwrap();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut largest = 0;
    for round in 0..6 {
        let n_seqs = 1 + rng.below(8);
        largest = largest.max(n_seqs);
        let seqs: Vec<&[u32]> = (0..n_seqs)
            .map(|_| {
                let len = 1 + rng.below(150);
                let from = rng.below(text.len() - len);
                &text[from..from + len]
            })
            .collect();
        let alone: Vec<Vec<Vec<u32>>> = seqs.iter().map(|s| solo(&mut session, s, 64)).collect();
        let together = mixed(&mut session, &seqs, &mut rng, false);
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            let first_diff = a.iter().zip(t).position(|(a, t)| a != t);
            assert_eq!(
                first_diff,
                None,
                "round {round}: sequence {i} of {n_seqs} (length {}) differs in a mix",
                seqs[i].len()
            );
        }
    }
    eprintln!("largest mix: {largest} sequences");
    assert!(largest >= 6, "the mixes should include large ones");

    // The guard: the same comparison fails when a page-table entry is wrong.
    let seqs: Vec<&[u32]> = vec![&text[..120], &text[200..260], &text[300..301]];
    let alone = solo(&mut session, seqs[0], 64);
    let together = mixed(&mut session, &seqs, &mut rng, true);
    assert_ne!(
        alone, together[0],
        "a wrong page-table entry went unnoticed"
    );
}

#[test]
fn malformed_steps_are_refused_with_a_reason() {
    let plan = plan(256);
    let mut session = Session::new(&plan, 1).unwrap();
    let tokens = [1u32, 2, 3];
    let step = |pages: &'static [u32], start: usize| SeqStep {
        tokens: &[1, 2, 3],
        start,
        pages,
        logits: Logits::Last,
    };
    let _ = tokens;
    let err = session.step(&[step(&[], 0)]).unwrap_err();
    assert!(matches!(err, EvalError::PageTable(_)), "{err}");
    let err = session.step(&[step(&[99], 0)]).unwrap_err();
    assert!(err.to_string().contains("page 99"), "{err}");
    let err = session.step(&[step(&[0], 0), step(&[0], 0)]).unwrap_err();
    assert!(err.to_string().contains("both write page 0"), "{err}");
    let err = session.step(&[step(&[0; 20], 510)]).unwrap_err();
    assert!(matches!(err, EvalError::ContextFull { .. }), "{err}");
    let nine: Vec<SeqStep> = (0..9u32).map(|_| step(&[1], 0)).collect();
    let err = session.step(&nine).unwrap_err();
    assert!(
        matches!(err, EvalError::TooManySequences { n: 9, max: 8 }),
        "{err}"
    );
}

/// A second sequence that starts with the pages of a first one's prompt gets, for its own
/// tokens, the logits of a cold run of its whole prompt.
#[test]
fn a_reused_prefix_gives_the_logits_of_a_cold_run() {
    let plan = plan(512);
    let text = text();
    let mut session = Session::new(&plan, 2).unwrap();
    let n_vocab = plan.header.model.n_vocab as usize;
    let (prefix, a, b) = (&text[..96], &text[96..130], &text[400..437]);
    let whole_b: Vec<u32> = prefix.iter().chain(b).copied().collect();
    let cold = solo(&mut session, &whole_b, 64);
    // The first sequence writes the prefix (pages 5, 6, 7) and its own tokens.
    let pages_a = [5u32, 6, 7, 8, 9];
    let whole_a: Vec<u32> = prefix.iter().chain(a).copied().collect();
    for (c, part) in whole_a.chunks(50).enumerate() {
        let seq = SeqStep {
            tokens: part,
            start: c * 50,
            pages: &pages_a,
            logits: Logits::None,
        };
        session.step(&[seq]).unwrap();
    }
    // The second reads the prefix from the first's pages and writes its own elsewhere.
    let pages_b = [5u32, 6, 7, 1, 2];
    let seq = SeqStep {
        tokens: b,
        start: prefix.len(),
        pages: &pages_b,
        logits: Logits::All,
    };
    let warm: Vec<Vec<u32>> = session
        .step(&[seq])
        .unwrap()
        .chunks_exact(n_vocab)
        .map(bits)
        .collect();
    assert_eq!(warm, cold[prefix.len()..]);
}

fn greedy(prompt: &[u32], max_tokens: usize) -> Request {
    Request {
        prompt: prompt.to_vec(),
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop_ids: Vec::new(),
        logprobs: None,
        constraint: None,
    }
}

/// Each request's tokens, and how it finished, in request order.
fn run_all<B: BatchEvaluator>(
    engine: &mut Engine<B>,
    requests: &[Request],
    mut between_steps: impl FnMut(&mut Engine<B>, usize),
) -> Vec<(Vec<u32>, Option<Finish>)> {
    let ids: Vec<u64> = requests
        .iter()
        .map(|r| engine.add(r.clone()).unwrap())
        .collect();
    let mut out = vec![(Vec::new(), None); requests.len()];
    let mut step = 0;
    while engine.busy() {
        between_steps(engine, step);
        step += 1;
        engine
            .step(|e| match e {
                Event::Token { id, token, .. } => out[ids.iter().position(|&i| i == id).unwrap()]
                    .0
                    .push(token),
                Event::Finished(id, f) => {
                    out[ids.iter().position(|&i| i == id).unwrap()].1 = Some(f)
                }
            })
            .unwrap();
    }
    out
}

fn solo_tokens(plan: &LoadedPlan, request: &Request) -> Vec<u32> {
    let mut engine = Engine::new(Session::new(plan, 2).unwrap());
    let out = run_all(&mut engine, std::slice::from_ref(request), |_, _| {});
    out[0].0.clone()
}

/// Eight requests through a pool too small for all of them: the engine admits what fits,
/// preempts the youngest when pages run out and recomputes it later, and every request ends
/// with the tokens it gets alone. A request sharing a prompt prefix reuses its pages.
#[test]
fn the_engine_matches_solo_runs_through_preemption_and_prefix_reuse() {
    // 12 pages of 32 tokens; each request needs 2-4 of them.
    let plan = plan(384);
    let text = text();
    let requests: Vec<Request> = (0..8)
        .map(|i| {
            let prompt = match i {
                // Shares its first two pages with request 0.
                5 => text[..64].iter().chain(&text[500..510]).copied().collect(),
                _ => text[i * 70..i * 70 + 20 + 9 * i].to_vec(),
            };
            greedy(&prompt, 40 + 5 * i)
        })
        .collect();
    let mut requests = requests;
    requests[0] = greedy(&text[..70], 40);
    let mut engine = Engine::new(Session::new(&plan, 2).unwrap());
    let together = run_all(&mut engine, &requests, |_, _| {});
    let stats = engine.stats();
    eprintln!("{stats:?}");
    assert!(stats.preemptions > 0, "the pool was meant to run out");
    assert!(
        stats.tokens_reused >= 64,
        "request 5 should reuse request 0's prefix"
    );
    assert_eq!(engine.pool().held(), 0, "every page let go");
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(together[i].1, Some(Finish::Length));
        assert_eq!(together[i].0.len(), r.max_tokens);
        assert_eq!(together[i].0, solo_tokens(&plan, r), "request {i}");
    }
}

/// Choices of one prompt added together share its pages: the later ones wait for the first to
/// compute the prompt's whole pages and take them, instead of computing them beside it, and each
/// still gets the tokens it gets alone.
#[test]
fn choices_of_one_prompt_wait_for_its_pages_and_share_them() {
    let plan = plan(2048);
    let text = text();
    // Three whole pages and four tokens; the plan's batch (64) reads it in two steps.
    let requests: Vec<Request> = (0..4)
        .map(|seed| Request {
            sampling: SamplingParams {
                temperature: 0.9,
                seed,
                ..SamplingParams::default()
            },
            ..greedy(&text[..100], 8)
        })
        .collect();
    let mut engine = Engine::new(Session::new(&plan, 2).unwrap());
    let together = run_all(&mut engine, &requests, |_, _| {});
    let stats = engine.stats();
    assert_eq!(stats.tokens_reused, 3 * 96, "{stats:?}");
    // The prompt once, the other choices' last four tokens, and 7 decode steps of each.
    assert_eq!(stats.tokens_evaluated, 100 + 3 * 4 + 4 * 7, "{stats:?}");
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(together[i].0, solo_tokens(&plan, r), "choice {i}");
    }
}

/// Cancelling a request frees its pages at once and leaves the others' tokens as they were.
#[test]
fn cancelling_one_request_changes_no_other() {
    let plan = plan(2048);
    let text = text();
    let requests: Vec<Request> = (0..3)
        .map(|i| greedy(&text[i * 90..i * 90 + 30], 24))
        .collect();
    let mut engine = Engine::new(Session::new(&plan, 2).unwrap());
    let mut held_before = 0;
    let out = run_all(&mut engine, &requests, |engine, step| {
        if step == 5 {
            held_before = engine.pool().held();
            assert!(engine.cancel(1));
            assert!(engine.pool().held() < held_before, "pages freed at once");
            assert!(!engine.cancel(1), "already gone");
        }
    });
    assert!(held_before > 0);
    assert_eq!(out[1].1, None, "a cancelled request does not finish");
    for i in [0, 2] {
        assert_eq!(out[i].0, solo_tokens(&plan, &requests[i]), "request {i}");
    }
}

/// Requests that cannot run even alone are refused with both numbers; stop ids end a request
/// without being emitted.
#[test]
fn requests_are_checked_and_stop_ids_end_them() {
    let plan = plan(256);
    let text = text();
    let mut engine = Engine::new(Session::new(&plan, 1).unwrap());
    let err = engine.add(greedy(&text[..500], 20)).unwrap_err();
    assert!(
        matches!(
            err,
            RequestError::TooLongForContext {
                prompt: 500,
                max_tokens: 20,
                ctx: 512
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("500") && err.to_string().contains("512"));
    let err = engine.add(greedy(&text[..200], 100)).unwrap_err();
    assert!(err.to_string().contains("the pool has 8"), "{err}");
    assert_eq!(
        engine.add(greedy(&[], 5)).unwrap_err(),
        RequestError::EmptyPrompt
    );

    let free_run = solo_tokens(&plan, &greedy(&text[..20], 10));
    let mut stopping = greedy(&text[..20], 10);
    stopping.stop_ids = vec![free_run[3]];
    let out = run_all(&mut engine, &[stopping, greedy(&text[..20], 0)], |_, _| {});
    let first_stop = free_run.iter().position(|&t| t == free_run[3]).unwrap();
    assert_eq!(out[0].0, free_run[..first_stop]);
    assert_eq!(out[0].1, Some(Finish::Stop));
    assert_eq!(out[1], (Vec::new(), Some(Finish::Length)));
}

fn from_bits(rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| r.iter().map(|&b| f32::from_bits(b)).collect())
        .collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// On the GPU a tile of rows from several sequences attends token by token, one sequence's
/// tokens together: within a mix, a sequence's logits stay within 1e-4 of its solo run, and
/// generation through the engine picks the same greedy tokens.
#[test]
fn gpu_sequences_in_a_mix_match_their_solo_runs() {
    if !gpu_available() {
        return;
    }
    let plan = plan(2048);
    let text = text();
    let mut gpu = GpuSession::new(&plan).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Short sequences: a software GPU (lavapipe in CI) runs a few tokens a second.
    let seqs: Vec<&[u32]> = vec![
        &text[..13],
        &text[100..105],
        &text[300..309],
        &text[500..502],
    ];
    let alone: Vec<Vec<Vec<f32>>> = seqs
        .iter()
        .map(|s| from_bits(&solo(&mut gpu, s, 64)))
        .collect();
    let together = mixed(&mut gpu, &seqs, &mut rng, false);
    let mut worst = 0f32;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        for (p, (a, t)) in a.iter().zip(from_bits(t)).enumerate() {
            let diff = a
                .iter()
                .zip(&t)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            worst = worst.max(diff);
            assert_eq!(argmax(a), argmax(&t), "sequence {i} position {p}");
        }
    }
    eprintln!("GPU: largest |logit difference| in a mix: {worst:e}");
    assert!(worst <= 1e-4, "a mix moved logits by {worst}");

    let requests: Vec<Request> = (0..2)
        .map(|i| greedy(&text[i * 60..i * 60 + 6 + 5 * i], 3))
        .collect();
    let out = run_all(&mut Engine::new(&mut gpu), &requests, |_, _| {});
    for (i, r) in requests.iter().enumerate() {
        let mut solo = Engine::new(&mut gpu);
        let want = run_all(&mut solo, std::slice::from_ref(r), |_, _| {});
        assert_eq!(out[i].0, want[0].0, "request {i}");
    }
}
