//! Token sampling: greedy, or penalties -> top-k -> top-p -> min-p -> temperature -> a seeded draw
//! (llama.cpp's default order). All buffers are allocated once, when the sampler is made.

use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 (or less) means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables. Divides positive logits (multiplies negative ones) of recent tokens.
    pub repeat_penalty: f32,
    /// Subtracted once per earlier occurrence of a token.
    pub frequency_penalty: f32,
    /// Subtracted once from every token that occurred.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0x5eed,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top-p must be in [0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !self.temperature.is_finite() {
            return Err(format!(
                "temperature must be finite, got {}",
                self.temperature
            ));
        }
        if self.repeat_penalty <= 0.0 || !self.repeat_penalty.is_finite() {
            return Err(format!(
                "repeat penalty must be positive, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// splitmix64: small, fast, and the same stream on every platform for a given seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
    recent: VecDeque<u32>,
    counts: Vec<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, n_vocab: usize) -> Self {
        Sampler {
            rng: Rng(params.seed),
            candidates: Vec::with_capacity(n_vocab),
            recent: VecDeque::with_capacity(params.penalty_last_n + 1),
            counts: vec![0; n_vocab],
            params,
        }
    }

    /// Records a token as part of the history the penalties see (prompt tokens included).
    pub fn accept(&mut self, token: u32) {
        if self.params.penalty_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.penalty_last_n {
            if let Some(old) = self.recent.pop_front() {
                self.counts[old as usize] -= 1;
            }
        }
        self.recent.push_back(token);
        self.counts[token as usize] += 1;
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let penalize =
            p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        if penalize {
            for &t in &self.recent {
                let c = self.counts[t as usize];
                let l = &mut self.candidates[t as usize].1;
                // A token repeated in the window is visited once per occurrence; penalize once.
                if c == 0 || l.is_nan() {
                    continue;
                }
                *l = if *l > 0.0 {
                    *l / p.repeat_penalty
                } else {
                    *l * p.repeat_penalty
                };
                *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
                self.counts[t as usize] = 0;
            }
            for &t in &self.recent {
                self.counts[t as usize] += 1;
            }
        }
        if p.temperature <= 0.0 {
            return greedy(&self.candidates);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if p.top_k > 0 {
            p.top_k.min(self.candidates.len())
        } else {
            self.candidates.len()
        };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        // Probabilities at temperature 1 decide top-p and min-p, as in llama.cpp's chain.
        let max = self.candidates[0].1;
        let sum: f64 = self
            .candidates
            .iter()
            .map(|c| f64::from(c.1 - max).exp())
            .sum();
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cumulative += f64::from(c.1 - max).exp() / sum;
                if cumulative >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            // p(token) >= min_p * p(top)  <=>  logit >= max + ln(min_p)
            let floor = max + p.min_p.ln();
            let keep = self.candidates.iter().take_while(|c| c.1 >= floor).count();
            self.candidates.truncate(keep.max(1));
        }
        let weights_sum: f64 = self
            .candidates
            .iter()
            .map(|c| f64::from((c.1 - max) / p.temperature).exp())
            .sum();
        let mut target = self.rng.next_f64() * weights_sum;
        for c in &self.candidates {
            target -= f64::from((c.1 - max) / p.temperature).exp();
            if target <= 0.0 {
                return c.0;
            }
        }
        self.candidates.last().expect("at least one candidate").0
    }
}

fn greedy(candidates: &[(u32, f32)]) -> u32 {
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::greedy(), 100);
        let l = logits();
        let best = l
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        assert_eq!(s.sample(&l), best);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let run = |seed| {
            let params = SamplingParams {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            };
            let mut s = Sampler::new(params, 100);
            (0..50).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(params, 100);
        let greedy = Sampler::new(SamplingParams::greedy(), 100).sample_once(&logits());
        for _ in 0..20 {
            assert_eq!(s.sample(&logits()), greedy);
        }
    }

    #[test]
    fn min_p_and_top_p_exclude_unlikely_tokens() {
        let mut l = vec![-100.0f32; 10];
        l[3] = 5.0;
        l[4] = 4.9;
        for params in [
            SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.5,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
                min_p: 0.0,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params, 10);
            for _ in 0..50 {
                assert!(matches!(s.sample(&l), 3 | 4));
            }
        }
    }

    #[test]
    fn repeat_penalty_discourages_recent_tokens() {
        let mut l = vec![0.0f32; 4];
        l[1] = 2.0;
        l[2] = 1.5;
        let params = SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(params, 4);
        assert_eq!(s.sample(&l), 1);
        s.accept(1);
        assert_eq!(s.sample(&l), 2, "2.0 / 2 = 1.0 < 1.5");
        let params = SamplingParams {
            temperature: 0.0,
            frequency_penalty: 0.2,
            presence_penalty: 0.2,
            ..Default::default()
        };
        let mut s = Sampler::new(params, 4);
        s.accept(1);
        assert_eq!(s.sample(&l), 1, "2.0 - 0.2 - 0.2 = 1.6 > 1.5");
        s.accept(1);
        assert_eq!(s.sample(&l), 2, "2.0 - 2 * 0.2 - 0.2 = 1.4 < 1.5");
    }

    impl Sampler {
        fn sample_once(mut self, l: &[f32]) -> u32 {
            self.sample(l)
        }
    }
}
