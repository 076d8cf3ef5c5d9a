//! Picks the next token from a row of logits: greedy at temperature 0,
//! otherwise a draw from the temperature-scaled softmax with a seeded RNG.
//! (Top-k/top-p/penalties arrive with the batching engine.)

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};

pub struct Sampler {
    temperature: f32,
    rng: StdRng,
}

impl Sampler {
    pub fn new(temperature: f32, seed: u64) -> Result<Self> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(EngineError::InvalidParameter {
                field: "temperature",
                reason: format!("{temperature} is not a non-negative number"),
            });
        }
        Ok(Self {
            temperature,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| f64::from((l - max) / self.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut target = self.rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            target -= w;
            if target <= 0.0 {
                return i as u32;
            }
        }
        argmax(logits)
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
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() -> Result<()> {
        let mut s = Sampler::new(0.0, 0)?;
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
        Ok(())
    }

    #[test]
    fn same_seed_same_draws_and_low_temperature_is_near_greedy() -> Result<()> {
        let logits = [1.0, 2.0, 0.5, 1.5];
        let draws = |seed| -> Result<Vec<u32>> {
            let mut s = Sampler::new(1.0, seed)?;
            Ok((0..50).map(|_| s.sample(&logits)).collect())
        };
        assert_eq!(draws(7)?, draws(7)?);
        assert!(draws(7)?.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        let mut cold = Sampler::new(1e-3, 1)?;
        assert!((0..50).all(|_| cold.sample(&logits) == 1));
        Ok(())
    }

    #[test]
    fn negative_temperature_is_rejected() {
        assert!(Sampler::new(-1.0, 0).is_err());
        assert!(Sampler::new(f32::NAN, 0).is_err());
    }
}
