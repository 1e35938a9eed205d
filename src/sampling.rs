//! Next-token sampling: greedy, temperature, top-k, top-p, with a seeded generator so runs repeat.

use crate::util::Rng;

/// Sampling settings. `temperature <= 0` means greedy (argmax).
#[derive(Debug, Clone, Copy)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 42 }
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Scratch: (probability, token) candidates.
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler { params, rng: Rng::new(params.seed), cand: Vec::new() }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        self.cand.clear();
        // Subtract the max before dividing: a tiny temperature must not push logits to infinity.
        let lmax = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| ((l - lmax) / p.temperature, i as u32)));
        // Highest logits first; keep top-k before the softmax (it does not change their order).
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_logit_desc);
        let max = self.cand[0].0;
        let mut sum = 0.0;
        for c in self.cand.iter_mut() {
            c.0 = (c.0 - max).exp();
            sum += c.0;
        }
        // Top-p: the smallest prefix whose probability mass reaches top_p.
        let mut keep = self.cand.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.0 / sum;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.cand[..keep].iter().map(|c| c.0).sum();
        let mut r = self.rng.next_f32() * total;
        for c in &self.cand[..keep] {
            r -= c.0;
            if r < 0.0 {
                return c.1;
            }
        }
        self.cand[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_sampling_repeats_for_a_seed() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&logits), 1);
        let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 };
        let a: Vec<u32> = (0..50).scan(Sampler::new(params), |s, _| Some(s.sample(&logits))).collect();
        let b: Vec<u32> = (0..50).scan(Sampler::new(params), |s, _| Some(s.sample(&logits))).collect();
        assert_eq!(a, b);
        assert!(a.contains(&1) && a.contains(&3), "both likely tokens appear: {a:?}");
    }

    #[test]
    fn a_tiny_temperature_is_still_argmax_not_nan() {
        let logits = [1.0, 3.0, 2.0, -5.0];
        let mut s = Sampler::new(SamplingParams { temperature: 1e-39, top_k: 40, top_p: 0.95, seed: 3 });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [5.0, 4.9, 0.0, -3.0];
        let mut k1 = Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 1 });
        assert!((0..100).all(|_| k1.sample(&logits) == 0));
        let mut p = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 1 });
        assert!((0..100).all(|_| p.sample(&logits) == 0), "token 0 alone holds > 50% of the mass");
        let mut p2 = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9, seed: 1 });
        let seen: Vec<u32> = (0..200).map(|_| p2.sample(&logits)).collect();
        assert!(seen.iter().all(|&t| t <= 1) && seen.contains(&1));
    }
}
