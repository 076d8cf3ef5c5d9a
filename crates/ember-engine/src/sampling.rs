//! Picks each sequence's next token from its row of logits, in the order
//! vLLM and the OpenAI API imply: penalties -> logits processor (grammar
//! mask) -> temperature -> top-k -> top-p -> min-p -> a draw from a
//! per-request RNG. Greedy at temperature 0.
//!
//! Logprobs are reported from the distribution after penalties, the
//! processor and temperature (temperature 1 when greedy), before top-k/p/min-p
//! truncation, so a greedy request still gets informative alternatives.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

/// The most `top_logprobs` a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Temperatures below this sample greedily. Dividing by a subnormal
/// temperature such as 1e-40 overflows every logit to infinity; vLLM uses the
/// same threshold (`_SAMPLING_EPS` in `vllm/sampling_params.py`).
pub const MIN_TEMPERATURE: f32 = 1e-5;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or anything below `MIN_TEMPERATURE`) is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Hugging Face style, over prompt and output tokens; 1 is off.
    pub repetition_penalty: f32,
    /// OpenAI style, over output tokens: subtracted once per seen token.
    pub presence_penalty: f32,
    /// OpenAI style, over output tokens: subtracted per occurrence.
    pub frequency_penalty: f32,
    /// Same seed and same request give the same output; random when `None`.
    pub seed: Option<u64>,
    /// Report the chosen token's logprob.
    pub logprobs: bool,
    /// Also report this many most likely alternatives (needs `logprobs`).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding, nothing else.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Rejects values no sampler could honour, naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &'static str, reason: String| Err(EngineError::InvalidParameter { field, reason });
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return invalid("temperature", format!("{t} is not a non-negative number"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid("min_p", format!("{} is not in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return invalid("repetition_penalty", format!("{} is not a positive number", self.repetition_penalty));
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return invalid(field, format!("{value} is not in [-2, 2]"));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return invalid("top_logprobs", format!("{} is more than {MAX_TOP_LOGPROBS}", self.top_logprobs));
        }
        Ok(())
    }
}

/// Masks or biases logits before sampling; the constrained-decoding layer
/// (JSON schemas, tool calls) plugs in here. One instance per sequence.
pub trait LogitsProcessor: Send {
    /// Does the costly part of the next `process` ahead of time. The
    /// scheduler calls it on a helper thread while the forward pass runs, so
    /// computing a grammar mask overlaps the model. Returns the time spent,
    /// when there was work to do.
    fn prepare(&mut self) -> Option<std::time::Duration> {
        None
    }
    /// Adjusts the logits of the next position (a banned token gets `-inf`).
    fn process(&mut self, logits: &mut [f32]) -> std::result::Result<(), String>;
    /// Takes the chosen token; returns true when the output is complete and
    /// generation must stop.
    fn accept(&mut self, token: u32) -> std::result::Result<bool, String>;
}

/// Makes a fresh processor for each sequence of a request (`n > 1`).
pub trait LogitsProcessorFactory: Send + Sync {
    fn create(&self) -> Box<dyn LogitsProcessor>;
}

/// The chosen token's logprob and, if asked, the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<TokenLogprob>,
}

/// Token counts a sequence's penalties need. The prompt's distinct ids are
/// shared by the choices of a request.
#[derive(Debug, Clone, Default)]
pub struct TokenHistory {
    prompt: Arc<[u32]>,
    output_counts: HashMap<u32, u32>,
}

impl TokenHistory {
    pub fn new(prompt: &[u32]) -> Self {
        let mut prompt = prompt.to_vec();
        prompt.sort_unstable();
        prompt.dedup();
        Self {
            prompt: prompt.into(),
            output_counts: HashMap::new(),
        }
    }

    pub fn push_output(&mut self, token: u32) {
        *self.output_counts.entry(token).or_default() += 1;
    }
}

/// One sequence's sampler: its parameters and its own RNG, so a seeded
/// request draws the same tokens whatever else shares the batch.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token; `logits` is modified in place.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        history: &TokenHistory,
        processor: Option<&mut (dyn LogitsProcessor + 'static)>,
    ) -> Result<Sampled> {
        self.apply_penalties(logits, history);
        if let Some(processor) = processor {
            processor.process(logits).map_err(EngineError::LogitsProcessor)?;
        }
        let greedy = self.params.temperature < MIN_TEMPERATURE;
        if !greedy {
            let inv = 1.0 / self.params.temperature;
            logits.iter_mut().for_each(|l| *l *= inv);
        }
        sanitize(logits);
        if !logits.iter().any(|l| l.is_finite()) {
            return Err(EngineError::LogitsProcessor("every token is masked".into()));
        }
        let token = if greedy { argmax(logits) } else { self.draw(logits) };
        Ok(Sampled {
            token,
            logprob: self.logprob(logits, token),
        })
    }

    /// Repetition penalty over prompt and output; presence and frequency over output.
    fn apply_penalties(&self, logits: &mut [f32], history: &TokenHistory) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let seen = history.prompt.iter().chain(history.output_counts.keys());
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &count) in &history.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }

    /// A draw from the top-k / top-p / min-p truncated softmax.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            return self.draw_untruncated(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            candidates.truncate(p.top_k);
        }
        candidates.sort_unstable_by(by_logit_desc);
        let max = candidates[0].1;
        let mut probs: Vec<f64> = candidates.iter().map(|&(_, l)| f64::from(l - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            keep = probs
                .iter()
                .position(|q| {
                    cumulative += q;
                    cumulative >= f64::from(p.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let kept_total: f64 = probs[..keep].iter().sum();
        let mut target = self.rng.random::<f64>() * kept_total;
        for (i, q) in probs[..keep].iter().enumerate() {
            target -= q;
            if target <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[keep - 1].0
    }

    /// A draw from the full softmax, without sorting the vocabulary.
    fn draw_untruncated(&mut self, logits: &[f32]) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let mut target = self.rng.random::<f64>() * total;
        let mut last = argmax(logits);
        for (i, &l) in logits.iter().enumerate() {
            if !l.is_finite() {
                continue;
            }
            last = i as u32;
            target -= f64::from(l - max).exp();
            if target <= 0.0 {
                return last;
            }
        }
        last
    }

    fn logprob(&self, logits: &[f32], token: u32) -> Option<TokenLogprob> {
        if !self.params.logprobs {
            return None;
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_total = logits.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln() as f32;
        let logprob = |l: f32| l - max - log_total;
        let mut top: Vec<(u32, f32)> = Vec::new();
        if self.params.top_logprobs > 0 {
            let mut ranked: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            let k = self.params.top_logprobs.min(ranked.len());
            let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            ranked.select_nth_unstable_by(k - 1, by_logit_desc);
            ranked.truncate(k);
            ranked.sort_unstable_by(by_logit_desc);
            top = ranked.into_iter().map(|(t, l)| (t, logprob(l))).collect();
        }
        Some(TokenLogprob {
            token,
            logprob: logprob(logits[token as usize]),
            top,
        })
    }
}

/// Keeps arithmetic on logits finite: NaN (from penalties on infinite
/// logits) bans the token, and +inf (an overflow) becomes the largest float.
fn sanitize(logits: &mut [f32]) {
    for l in logits.iter_mut() {
        if l.is_nan() {
            *l = f32::NEG_INFINITY;
        } else if *l == f32::INFINITY {
            *l = f32::MAX;
        }
    }
}

/// Index of the largest logit; the first one on ties, as `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn draws(params: SamplingParams, seed: u64, logits: &[f32], count: usize) -> Vec<u32> {
        let mut s = Sampler::new(params, seed);
        let history = TokenHistory::default();
        (0..count)
            .map(|_| s.sample(&mut logits.to_vec(), &history, None).map(|x| x.token).unwrap_or(u32::MAX))
            .collect()
    }

    fn with(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    const LOGITS: [f32; 5] = [1.0, 2.0, 0.5, 1.5, -1.0];

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(draws(SamplingParams::greedy(), 0, &[0.1, 3.0, 3.0, -1.0], 3), vec![1, 1, 1]);
    }

    #[test]
    fn same_seed_same_draws() {
        let p = SamplingParams::default();
        assert_eq!(draws(p.clone(), 7, &LOGITS, 100), draws(p.clone(), 7, &LOGITS, 100));
        assert_ne!(draws(p.clone(), 7, &LOGITS, 100), draws(p, 8, &LOGITS, 100));
    }

    #[test]
    fn top_k_keeps_only_the_k_most_likely() {
        let seen: HashSet<u32> = draws(with(|p| p.top_k = 2), 1, &LOGITS, 300).into_iter().collect();
        assert_eq!(seen, HashSet::from([1, 3]));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Softmax of LOGITS: 0.233, 0.383(1) 0.141, 0.232... top two reach ~0.62.
        let seen: HashSet<u32> = draws(with(|p| p.top_p = 0.6), 1, &LOGITS, 300).into_iter().collect();
        assert_eq!(seen, HashSet::from([1, 3]));
        let seen: HashSet<u32> = draws(with(|p| p.top_p = 0.3), 1, &LOGITS, 100).into_iter().collect();
        assert_eq!(seen, HashSet::from([1]));
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_best() {
        // exp(1.5-2)=0.61, exp(1-2)=0.37, exp(0.5-2)=0.22, exp(-3)=0.05 of the best.
        let seen: HashSet<u32> = draws(with(|p| p.min_p = 0.3), 1, &LOGITS, 500).into_iter().collect();
        assert_eq!(seen, HashSet::from([0, 1, 3]));
    }

    #[test]
    fn penalties_push_seen_tokens_down() -> Result<()> {
        let mut history = TokenHistory::new(&[1]);
        let mut s = Sampler::new(with(|p| { p.temperature = 0.0; p.repetition_penalty = 2.0; }), 0);
        // 2.0 / 2 = 1.0 < 1.5: token 3 wins.
        assert_eq!(s.sample(&mut LOGITS.to_vec(), &history, None)?.token, 3);
        history.push_output(3);
        history.push_output(3);
        let mut s = Sampler::new(with(|p| { p.temperature = 0.0; p.frequency_penalty = 0.5; }), 0);
        let mut logits = LOGITS.to_vec();
        s.sample(&mut logits, &history, None)?;
        assert_eq!(logits[3], 0.5);
        let mut s = Sampler::new(with(|p| { p.temperature = 0.0; p.presence_penalty = 0.5; }), 0);
        let mut logits = LOGITS.to_vec();
        s.sample(&mut logits, &history, None)?;
        assert_eq!(logits[3], 1.0);
        Ok(())
    }

    #[test]
    fn logprobs_are_a_normalized_log_softmax_with_ranked_alternatives() -> Result<()> {
        let mut s = Sampler::new(with(|p| { p.temperature = 0.0; p.logprobs = true; p.top_logprobs = 2; }), 0);
        let sampled = s.sample(&mut LOGITS.to_vec(), &TokenHistory::default(), None)?;
        let lp = sampled.logprob.ok_or(EngineError::EmptyPrompt)?;
        let total: f32 = LOGITS.iter().map(|l| l.exp()).sum();
        assert!((lp.logprob - (2.0f32.exp() / total).ln()).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        Ok(())
    }

    struct BanToken(u32);
    impl LogitsProcessor for BanToken {
        fn process(&mut self, logits: &mut [f32]) -> std::result::Result<(), String> {
            logits[self.0 as usize] = f32::NEG_INFINITY;
            Ok(())
        }
        fn accept(&mut self, _: u32) -> std::result::Result<bool, String> {
            Ok(false)
        }
    }

    #[test]
    fn a_processor_masks_before_sampling_and_a_full_mask_is_an_error() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0);
        let mut ban = BanToken(1);
        let got = s.sample(&mut LOGITS.to_vec(), &TokenHistory::default(), Some(&mut ban));
        assert_eq!(got.map(|x| x.token).ok(), Some(3));
        let mut all_masked = vec![f32::NEG_INFINITY; 2];
        all_masked[0] = 1.0;
        let mut ban = BanToken(0);
        assert!(s.sample(&mut all_masked, &TokenHistory::default(), Some(&mut ban)).is_err());
    }

    #[test]
    fn out_of_range_parameters_are_rejected_by_name() {
        let bad = [
            with(|p| p.temperature = -1.0),
            with(|p| p.temperature = f32::NAN),
            with(|p| p.top_p = 0.0),
            with(|p| p.min_p = 1.5),
            with(|p| p.repetition_penalty = 0.0),
            with(|p| p.presence_penalty = 3.0),
            with(|p| p.top_logprobs = 21),
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(SamplingParams::default().validate().is_ok());
    }

    /// Regression: `temperature: 1e-40` overflowed every logit to infinity
    /// and sampling panicked with "index out of bounds".
    #[test]
    fn a_subnormal_temperature_samples_greedily() {
        for t in [1e-40, 1e-6, f32::MIN_POSITIVE] {
            assert_eq!(draws(with(|p| p.temperature = t), 3, &LOGITS, 5), vec![1; 5], "{t}");
        }
        // Just above the threshold it still samples.
        let seen: HashSet<u32> = draws(with(|p| p.temperature = 10.0), 1, &LOGITS, 200).into_iter().collect();
        assert!(seen.len() > 2);
    }

    #[test]
    fn extreme_penalties_and_temperatures_keep_the_logits_usable() -> Result<()> {
        let mut history = TokenHistory::new(&[0, 1, 2, 3, 4]);
        history.push_output(1);
        for params in [
            with(|p| p.repetition_penalty = 1e-40),
            with(|p| p.repetition_penalty = f32::MAX),
            with(|p| { p.temperature = 1e-5; p.repetition_penalty = 1e-30; }),
            with(|p| { p.temperature = 1e30; p.top_p = 1e-30; p.logprobs = true; p.top_logprobs = 5; }),
        ] {
            let mut s = Sampler::new(params.clone(), 0);
            let sampled = s.sample(&mut LOGITS.to_vec(), &history, None)?;
            assert!((sampled.token as usize) < LOGITS.len(), "{params:?}");
            if let Some(lp) = sampled.logprob {
                assert!(!lp.logprob.is_nan(), "{params:?}");
            }
        }
        Ok(())
    }

    /// The unsorted draw used when nothing truncates follows the softmax.
    #[test]
    fn an_untruncated_draw_follows_the_softmax() {
        let counts = draws(SamplingParams::default(), 11, &LOGITS, 20_000).into_iter().fold([0usize; 5], |mut c, t| {
            c[t as usize] += 1;
            c
        });
        let total: f32 = LOGITS.iter().map(|l| l.exp()).sum();
        for (t, &c) in counts.iter().enumerate() {
            let expected = LOGITS[t].exp() / total;
            let got = c as f32 / 20_000.0;
            assert!((got - expected).abs() < 0.015, "token {t}: {got} vs {expected}");
        }
    }
}
