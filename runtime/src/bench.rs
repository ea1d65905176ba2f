//! `llamart bench`: prompt processing and generation speed in llama-bench's pp/tg style.

use std::time::Instant;

use crate::cpu::EvalError;
use crate::eval::Evaluator;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub n: usize,
    pub tps_mean: f64,
    pub tps_std: f64,
}

fn stat(n: usize, seconds: &[f64]) -> Stat {
    let tps: Vec<f64> = seconds.iter().map(|s| n as f64 / s).collect();
    let mean = tps.iter().sum::<f64>() / tps.len() as f64;
    let var = if tps.len() > 1 {
        tps.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (tps.len() - 1) as f64
    } else {
        0.0
    };
    Stat {
        n,
        tps_mean: mean,
        tps_std: var.sqrt(),
    }
}

#[derive(Clone, Debug)]
pub struct BenchResult {
    pub pp: Stat,
    pub tg: Stat,
    /// Mean time from an empty cache to the first generated token's logits: the prompt's
    /// evaluation (its last row gives the first token).
    pub ttft_ms: f64,
}

/// Deterministic token ids spread over the vocabulary (the content does not change the work).
fn tokens(n: usize, n_vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab)
        .collect()
}

/// Runs one warm-up of each test, then `reps` measured repetitions. Like llama-bench, the pp test
/// evaluates `n_prompt` tokens in batches, and the tg test decodes `n_gen` tokens one at a time,
/// reading back only the best candidate; each starts from a cache holding `depth` tokens (llama-
/// bench's `-d`), filled before the clock starts.
#[allow(clippy::too_many_arguments)]
pub fn run(
    session: &mut dyn Evaluator,
    n_prompt: usize,
    n_gen: usize,
    depth: usize,
    reps: usize,
    max_batch: usize,
    n_vocab: u32,
) -> Result<BenchResult, EvalError> {
    let prompt = tokens(n_prompt, n_vocab);
    let gen = tokens(n_gen, n_vocab);
    let context = tokens(depth, n_vocab);
    let fill = |s: &mut dyn Evaluator| -> Result<(), EvalError> {
        s.reset();
        for chunk in context.chunks(max_batch) {
            s.prefill(chunk)?;
        }
        Ok(())
    };
    let pp_once = |s: &mut dyn Evaluator| -> Result<f64, EvalError> {
        fill(s)?;
        let start = Instant::now();
        // As llama-bench does: each chunk's last token's logits are computed.
        for chunk in prompt.chunks(max_batch) {
            s.eval_last(chunk)?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    // Decoding as generation does it: only the best candidate leaves the backend.
    let mut best = Vec::with_capacity(n_vocab as usize);
    let mut tg_once = |s: &mut dyn Evaluator| -> Result<f64, EvalError> {
        fill(s)?;
        let start = Instant::now();
        for &t in &gen {
            s.eval_top(&[t], 1, &mut best)?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    if n_prompt > 0 {
        pp_once(session)?;
        for _ in 0..reps {
            pp.push(pp_once(session)?);
        }
    }
    if n_gen > 0 {
        tg_once(session)?;
        for _ in 0..reps {
            tg.push(tg_once(session)?);
        }
    }
    let ttft_ms = if pp.is_empty() {
        0.0
    } else {
        pp.iter().sum::<f64>() / pp.len() as f64 * 1e3
    };
    Ok(BenchResult {
        pp: if pp.is_empty() {
            Stat {
                n: 0,
                tps_mean: 0.0,
                tps_std: 0.0,
            }
        } else {
            stat(n_prompt, &pp)
        },
        tg: if tg.is_empty() {
            Stat {
                n: 0,
                tps_mean: 0.0,
                tps_std: 0.0,
            }
        } else {
            stat(n_gen, &tg)
        },
        ttft_ms,
    })
}

/// `parallel` sequences together, as llama.cpp's `llama-batched-bench` measures them: the pp
/// test reads every sequence's `n_prompt` prompt tokens, packed into steps of the plan's batch
/// (each sequence's last prompt row gives logits); the tg test then decodes `n_gen` tokens of
/// every sequence, one step per round carrying one token of each, reading back each row's best
/// candidate. `pp` and `tg` are aggregates: tokens of all sequences per second. The sequences'
/// pages lie side by side in the pool.
pub fn run_parallel(
    session: &mut crate::cpu::Session,
    n_prompt: usize,
    n_gen: usize,
    parallel: usize,
    reps: usize,
) -> Result<BenchResult, String> {
    use crate::batch::{Logits, SeqStep};
    let h = session.plan_header();
    let l = h.limits;
    let (page, n_vocab) = (l.page_tokens as usize, h.model.n_vocab as usize);
    if parallel == 0 || parallel > l.max_seqs as usize {
        return Err(format!(
            "--parallel {parallel}: the plan runs 1 to {} sequences a step (llamac compile --max-seqs)",
            l.max_seqs
        ));
    }
    if n_prompt == 0 {
        return Err("--parallel needs prompts to decode after: -p must be at least 1".into());
    }
    let per_seq = (n_prompt + n_gen).div_ceil(page);
    if n_prompt + n_gen > l.ctx as usize || parallel * per_seq > l.kv_pages() as usize {
        return Err(format!(
            "{parallel} sequences of {n_prompt} + {n_gen} tokens need {} KV pages of {page} tokens \
             (at most {} tokens a sequence), but the plan has {} pages and a context of {} \
             (llamac compile --kv-tokens, --ctx)",
            parallel * per_seq,
            n_prompt + n_gen,
            l.kv_pages(),
            l.ctx
        ));
    }
    let pages: Vec<Vec<u32>> = (0..parallel)
        .map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect())
        .collect();
    let prompts: Vec<Vec<u32>> = (0..parallel)
        .map(|i| {
            let all = tokens(n_prompt + i, h.model.n_vocab);
            all[i..].to_vec()
        })
        .collect();
    let max_batch = l.max_batch as usize;
    let err = |e: EvalError| e.to_string();
    let mut steps: Vec<SeqStep> = Vec::with_capacity(parallel);
    let mut which: Vec<usize> = Vec::with_capacity(parallel);
    let mut pp_once = |s: &mut crate::cpu::Session| -> Result<f64, String> {
        let start = Instant::now();
        let mut done = vec![0usize; parallel];
        let mut next = 0;
        while next < parallel {
            steps.clear();
            which.clear();
            let mut budget = max_batch;
            for (i, prompt) in prompts.iter().enumerate().skip(next) {
                if budget == 0 {
                    break;
                }
                let len = (n_prompt - done[i]).min(budget);
                let last = done[i] + len == n_prompt;
                steps.push(SeqStep {
                    tokens: &prompt[done[i]..done[i] + len],
                    start: done[i],
                    pages: &pages[i],
                    logits: if last { Logits::Last } else { Logits::None },
                });
                which.push(i);
                budget -= len;
            }
            s.step(&steps).map_err(err)?;
            for (&i, st) in which.iter().zip(&steps) {
                done[i] += st.tokens.len();
            }
            while next < parallel && done[next] == n_prompt {
                next += 1;
            }
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let mut pp = Vec::new();
    pp_once(session)?;
    for _ in 0..reps {
        pp.push(pp_once(session)?);
    }
    let mut tg = Vec::new();
    if n_gen > 0 {
        let mut next: Vec<u32> = vec![0; parallel];
        let mut best = Vec::with_capacity(64);
        for rep in 0..=reps {
            // The prompts are in the cache: each round decodes after them again.
            let start = Instant::now();
            for g in 0..n_gen {
                let steps: Vec<SeqStep> = (0..parallel)
                    .map(|i| SeqStep {
                        tokens: std::slice::from_ref(&next[i]),
                        start: n_prompt + g,
                        pages: &pages[i],
                        logits: Logits::Last,
                    })
                    .collect();
                let logits = session.step(&steps).map_err(err)?;
                let picked: Vec<u32> = logits
                    .chunks_exact(n_vocab)
                    .map(|row| {
                        crate::eval::top_logits_into(row, 1, &mut best);
                        best[0].0
                    })
                    .collect();
                next.copy_from_slice(&picked);
            }
            if rep > 0 {
                tg.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let empty = Stat {
        n: 0,
        tps_mean: 0.0,
        tps_std: 0.0,
    };
    Ok(BenchResult {
        ttft_ms: pp.iter().sum::<f64>() / pp.len() as f64 * 1e3,
        pp: stat(parallel * n_prompt, &pp),
        tg: if tg.is_empty() {
            empty
        } else {
            stat(parallel * n_gen, &tg)
        },
    })
}

/// The machine's memory read bandwidth in GB/s, as `threads` threads streaming through a buffer
/// far larger than the caches see it: the best of a few passes. Allocates (and frees) 256 MiB,
/// so measure peak RSS before calling it.
pub fn read_bandwidth_gbps(threads: usize) -> f64 {
    const BYTES: usize = 256 << 20;
    // Written once, so every page is resident before the timed reads.
    let words: Vec<u64> = (0..(BYTES / 8) as u64).collect();
    let share = words.len().div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let sum = std::thread::scope(|scope| {
            let parts: Vec<_> = words
                .chunks(share)
                .map(|part| scope.spawn(move || sum_words(part)))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().expect("the probe does not panic"))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.min(start.elapsed().as_secs_f64());
    }
    BYTES as f64 / best / 1e9
}

/// A sum in eight independent lanes, so the loads are not serialized by the additions.
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &w| a.wrapping_add(w));
    for c in chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

/// Peak resident memory of this process (Linux `VmHWM`), if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bandwidth_probe_reads_every_word() {
        let words: Vec<u64> = (1..=1001).collect();
        assert_eq!(sum_words(&words), 1001 * 1002 / 2);
        let gbps = read_bandwidth_gbps(2);
        assert!(gbps.is_finite() && gbps > 0.1, "{gbps} GB/s");
    }

    #[test]
    fn stats_are_tokens_per_second() {
        let s = stat(100, &[1.0, 0.5]);
        assert_eq!(s.tps_mean, 150.0);
        assert!((s.tps_std - 70.710678).abs() < 1e-5);
        assert_eq!(stat(10, &[2.0]).tps_std, 0.0);
    }

    #[test]
    fn bench_tokens_stay_in_the_vocabulary() {
        assert!(tokens(1000, 7).iter().all(|&t| t < 7));
    }
}
