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
    /// Added to the logits of these tokens before anything else (OpenAI's `logit_bias`: -100
    /// bans a token, +100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
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
            logit_bias: Vec::new(),
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
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return Err(format!(
                "the logit bias of token {id} must be finite, got {b}"
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

    /// How many of the largest logits `sample_candidates` needs to decide exactly as `sample`
    /// would on the whole row, or `None` when it needs the whole row (no top-k, or penalties that
    /// can raise a logit). Penalties only lower the logits of at most `penalty_last_n` tokens, so
    /// the top k after them lie within the top k + penalty_last_n before.
    pub fn candidates_needed(&self) -> Option<usize> {
        let p = &self.params;
        let k = if p.temperature <= 0.0 { 1 } else { p.top_k };
        if k == 0
            || p.repeat_penalty < 1.0
            || p.frequency_penalty < 0.0
            || p.presence_penalty < 0.0
            || !p.logit_bias.is_empty()
        {
            return None;
        }
        Some(
            k + if self.penalizes() {
                p.penalty_last_n
            } else {
                0
            },
        )
    }

    fn penalizes(&self) -> bool {
        let p = &self.params;
        p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        for &(id, bias) in &self.params.logit_bias {
            if let Some(c) = self.candidates.get_mut(id as usize) {
                c.1 += bias;
            }
        }
        self.pick()
    }

    /// Picks the next token from the row's largest logits, at least `candidates_needed()` of them.
    pub fn sample_candidates(&mut self, candidates: &[(u32, f32)]) -> u32 {
        self.candidates.clear();
        self.candidates.extend_from_slice(candidates);
        self.pick()
    }

    fn pick(&mut self) -> u32 {
        let p = &self.params;
        if self.penalizes() {
            for (id, l) in self.candidates.iter_mut() {
                let c = self.counts[*id as usize];
                if c == 0 {
                    continue;
                }
                *l = if *l > 0.0 {
                    *l / p.repeat_penalty
                } else {
                    *l * p.repeat_penalty
                };
                *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
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

/// The largest logit; among equal ones the lowest id, whatever order the candidates come in.
fn greedy(candidates: &[(u32, f32)]) -> u32 {
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        if c.1 > best.1 || (c.1 == best.1 && c.0 < best.0) {
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

    #[test]
    fn logit_bias_bans_and_forces_tokens() {
        let l = logits();
        let best = Sampler::new(SamplingParams::greedy(), 100).sample_once(&l);
        let banned = SamplingParams {
            logit_bias: vec![(best, -100.0)],
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(banned.clone(), 100);
        assert_eq!(s.candidates_needed(), None, "a bias needs the whole row");
        assert_ne!(s.sample(&l), best);
        let forced = SamplingParams {
            temperature: 1.0,
            logit_bias: vec![(17, 100.0)],
            ..Default::default()
        };
        let mut s = Sampler::new(forced, 100);
        for _ in 0..20 {
            assert_eq!(s.sample(&l), 17);
        }
        let bad = SamplingParams {
            logit_bias: vec![(1, f32::NAN)],
            ..banned
        };
        assert!(bad.validate().unwrap_err().contains("token 1"));
    }

    impl Sampler {
        fn sample_once(mut self, l: &[f32]) -> u32 {
            self.sample(l)
        }
    }

    /// From the top candidates_needed() logits, every setting picks what it picks from the row.
    #[test]
    fn candidates_decide_like_the_whole_row() {
        let row: Vec<f32> = (0..500).map(|i| ((i * 7919) % 500) as f32 / 37.0).collect();
        let settings = [
            SamplingParams::greedy(),
            SamplingParams {
                temperature: 0.9,
                seed: 3,
                ..Default::default()
            },
            SamplingParams {
                temperature: 0.0,
                repeat_penalty: 1.3,
                penalty_last_n: 8,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.1,
                top_k: 20,
                top_p: 0.8,
                repeat_penalty: 1.2,
                frequency_penalty: 0.1,
                presence_penalty: 0.1,
                penalty_last_n: 6,
                seed: 9,
                ..Default::default()
            },
        ];
        for params in settings {
            let (mut whole, mut partial) = (
                Sampler::new(params.clone(), 500),
                Sampler::new(params.clone(), 500),
            );
            let k = partial
                .candidates_needed()
                .expect("these settings work from candidates");
            for step in 0..30 {
                let mut row = row.clone();
                row.rotate_left(step * 13);
                let a = whole.sample(&row);
                let b = partial.sample_candidates(&crate::eval::top_logits(&row, k));
                assert_eq!(a, b, "{params:?} step {step}");
                whole.accept(a);
                partial.accept(b);
            }
        }
        let no_top_k = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            ..Default::default()
        };
        assert_eq!(Sampler::new(no_top_k, 10).candidates_needed(), None);
        let raising = SamplingParams {
            repeat_penalty: 0.8,
            ..Default::default()
        };
        assert_eq!(Sampler::new(raising, 10).candidates_needed(), None);
    }
}
