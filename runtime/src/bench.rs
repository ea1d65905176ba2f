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
/// evaluates `n_prompt` tokens from an empty cache in batches, and the tg test decodes `n_gen`
/// tokens one at a time, also from an empty cache, reading back only the best candidate.
pub fn run(
    session: &mut dyn Evaluator,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    max_batch: usize,
    n_vocab: u32,
) -> Result<BenchResult, EvalError> {
    let prompt = tokens(n_prompt, n_vocab);
    let gen = tokens(n_gen, n_vocab);
    let pp_once = |s: &mut dyn Evaluator| -> Result<f64, EvalError> {
        s.reset();
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
        s.reset();
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
