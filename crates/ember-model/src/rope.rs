//! Rotary position embedding, NeoX "rotate-half" layout, with the scaling kinds
//! of Hugging Face's `modeling_rope_utils.py` (default, linear, dynamic NTK,
//! YaRN, Llama 3). Frequencies follow that file formula for formula, so the
//! tables match the reference; cos/sin tables are built lazily up to the
//! largest position in use rather than for the whole 256K window.

use std::sync::Mutex;

use burn::tensor::{DType, Int, Tensor, TensorData};
use burn::tensor::Device;
use serde_json::{Map, Value};

use crate::cpu::ops::rotary_in_place;
use crate::cpu::tensor::{HostF32, from_vec};

/// How positions are stretched beyond the trained window.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware base growth once the sequence passes `max_position_embeddings`.
    Dynamic {
        factor: f64,
        max_position_embeddings: usize,
    },
    /// YaRN: per-dimension blend of interpolation and extrapolation, plus an
    /// attention factor multiplying cos and sin.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Everything RoPE needs from the model config.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub head_dim: usize,
    pub scaling: RopeScaling,
}

fn number(p: &Map<String, Value>, key: &str) -> Option<f64> {
    p.get(key).and_then(Value::as_f64)
}

fn required(p: &Map<String, Value>, key: &str) -> Result<f64, String> {
    number(p, key).ok_or_else(|| format!("`{key}` is required for this rope type"))
}

/// YaRN's magnitude correction, `0.1 * mscale * ln(scale) + 1` (1 when not scaling up).
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

impl RopeScaling {
    /// Reads a `rope_scaling` / `rope_parameters` object. `max_pos` is the
    /// config's `max_position_embeddings`, the fallback for the original window.
    pub fn from_params(p: &Map<String, Value>, max_pos: usize) -> Result<Self, String> {
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let original_max = || {
            p.get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .map(|v| v as usize)
        };
        let factor = || -> Result<f64, String> {
            let f = required(p, "factor")?;
            if f.is_finite() && f > 0.0 { Ok(f) } else { Err("`factor` must be positive".into()) }
        };
        Ok(match kind {
            "default" => Self::Default,
            "linear" => Self::Linear { factor: factor()? },
            "dynamic" => Self::Dynamic {
                factor: factor()?,
                max_position_embeddings: max_pos,
            },
            "yarn" => {
                let factor = factor()?;
                let attention_factor = match number(p, "attention_factor") {
                    Some(a) => a,
                    None => match (number(p, "mscale"), number(p, "mscale_all_dim")) {
                        (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                            yarn_mscale(factor, m) / yarn_mscale(factor, all)
                        }
                        _ => yarn_mscale(factor, 1.0),
                    },
                };
                Self::Yarn {
                    factor,
                    original_max_position_embeddings: original_max().unwrap_or(max_pos),
                    beta_fast: number(p, "beta_fast").unwrap_or(32.0),
                    beta_slow: number(p, "beta_slow").unwrap_or(1.0),
                    attention_factor,
                    truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                }
            }
            "llama3" => Self::Llama3 {
                factor: factor()?,
                low_freq_factor: required(p, "low_freq_factor")?,
                high_freq_factor: required(p, "high_freq_factor")?,
                original_max_position_embeddings: original_max()
                    .ok_or("`original_max_position_embeddings` is required for llama3")?,
            },
            other => return Err(format!("rope type `{other}` is not supported")),
        })
    }
}

impl RopeConfig {
    /// Inverse frequencies (one per rotated pair) and the factor multiplying
    /// cos and sin, for a forward pass whose largest position is `seq_len - 1`.
    /// Only dynamic NTK depends on `seq_len`, as in Hugging Face.
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f64>, f64) {
        let dim = self.head_dim as f64;
        let plain = |base: f64| -> Vec<f64> {
            (0..self.head_dim / 2)
                .map(|i| 1.0 / base.powf((2 * i) as f64 / dim))
                .collect()
        };
        match &self.scaling {
            RopeScaling::Default => (plain(self.theta), 1.0),
            RopeScaling::Linear { factor } => {
                (plain(self.theta).into_iter().map(|f| f / factor).collect(), 1.0)
            }
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => {
                let max = *max_position_embeddings as f64;
                let len = (seq_len as f64).max(max);
                let base = self.theta * ((factor * len / max) - (factor - 1.0)).powf(dim / (dim - 2.0));
                (plain(base), 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                let orig = *original_max_position_embeddings as f64;
                let correction_dim = |rotations: f64| {
                    dim * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(dim - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let extrapolation = plain(self.theta);
                let inv = extrapolation
                    .iter()
                    .enumerate()
                    .map(|(i, &extra)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation_weight = 1.0 - ramp;
                        let inter = extra / factor;
                        inter * (1.0 - extrapolation_weight) + extra * extrapolation_weight
                    })
                    .collect();
                (inv, *attention_factor)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let inv = plain(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
        }
    }

    /// cos and sin rows (`[len, head_dim]`, halves duplicated as in rotate-half)
    /// for positions `0..len`, computed as Hugging Face does: f32 frequencies
    /// times f32 positions.
    fn tables(&self, len: usize, seq_len: usize) -> (Vec<f32>, Vec<f32>) {
        let (inv_freq, attention_factor) = self.inv_freq(seq_len);
        let inv_freq: Vec<f32> = inv_freq.into_iter().map(|f| f as f32).collect();
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for pos in 0..len {
            let row_start = cos.len();
            for &f in &inv_freq {
                let angle = f64::from(pos as f32 * f);
                cos.push((angle.cos() * attention_factor) as f32);
                sin.push((angle.sin() * attention_factor) as f32);
            }
            cos.extend_from_within(row_start..row_start + half);
            sin.extend_from_within(row_start..row_start + half);
        }
        (cos, sin)
    }
}

struct Tables {
    /// Positions covered.
    len: usize,
    /// The `seq_len` the frequencies were computed for (matters for dynamic NTK only).
    seq_len: usize,
    cos: Tensor<2>,
    sin: Tensor<2>,
}

/// Lazily grown cos/sin tables on the model's device and dtype.
pub struct RotaryEmbedding {
    config: RopeConfig,
    device: Device,
    dtype: DType,
    tables: Mutex<Option<Tables>>,
}

impl RotaryEmbedding {
    pub fn new(config: RopeConfig, device: &Device, dtype: DType) -> Self {
        Self {
            config,
            device: device.clone(),
            dtype,
            tables: Mutex::new(None),
        }
    }

    /// Tables covering at least positions `0..end`, doubling so growth is rare.
    fn build(&self, end: usize, seq_len: usize) -> Tables {
        let len = end.next_power_of_two().max(64);
        let (cos, sin) = self.config.tables(len, seq_len);
        let shape = [len, self.config.head_dim];
        let opts = (&self.device, self.dtype);
        Tables {
            len,
            seq_len,
            cos: Tensor::from_data(TensorData::new(cos, shape), opts),
            sin: Tensor::from_data(TensorData::new(sin, shape), opts),
        }
    }

    /// cos and sin rows (`[n, head_dim]`) for the given positions.
    pub fn cos_sin(&self, positions: &[usize]) -> (Tensor<2>, Tensor<2>) {
        let end = positions.iter().copied().max().map_or(1, |p| p + 1);
        // Only dynamic NTK frequencies depend on the length, and only past the window.
        let seq_len = match self.config.scaling {
            RopeScaling::Dynamic {
                max_position_embeddings,
                ..
            } => end.max(max_position_embeddings),
            _ => 0,
        };
        // A poisoned lock only means another call panicked mid-build; the
        // tables are rebuilt below whenever they do not fit.
        let mut guard = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let tables = match guard.take() {
            Some(t) if t.len >= end && t.seq_len == seq_len => t,
            _ => self.build(end, seq_len),
        };
        let (cos, sin) = (tables.cos.clone(), tables.sin.clone());
        *guard = Some(tables);
        drop(guard);
        let index: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [positions.len()]), &self.device);
        (cos.select(0, index.clone()), sin.select(0, index))
    }
}

/// Rotates `x` (`[tokens, heads, head_dim]`) by per-token `cos`/`sin` (`[tokens, head_dim]`).
pub fn apply_rotary(x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<3> {
    let [tokens, heads, head_dim] = x.dims();
    // The CPU fast path rotates in place on the host.
    if let (Some(host), Some(cos), Some(sin)) = (HostF32::new(&x), HostF32::new(cos), HostF32::new(sin)) {
        drop(x);
        let mut values = host.into_vec();
        rotary_in_place(&mut values, heads, head_dim, cos.as_slice(), sin.as_slice());
        return from_vec(values, [tokens, heads, head_dim]);
    }
    let half = head_dim / 2;
    let x1 = x.clone().slice([0..tokens, 0..heads, 0..half]);
    let x2 = x.clone().slice([0..tokens, 0..heads, half..head_dim]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
    let cos = cos.clone().unsqueeze_dim::<3>(1);
    let sin = sin.clone().unsqueeze_dim::<3>(1);
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scaling: RopeScaling) -> RopeConfig {
        RopeConfig {
            theta: 10_000.0,
            head_dim: 8,
            scaling,
        }
    }

    #[test]
    fn default_frequencies_are_theta_powers() {
        let (inv, att) = config(RopeScaling::Default).inv_freq(1);
        let expected = [1.0, 0.1, 0.01, 0.001];
        assert_eq!(inv.len(), expected.len());
        for (a, b) in inv.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(att, 1.0);
    }

    #[test]
    fn dynamic_ntk_only_changes_past_the_window() {
        let c = config(RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 16,
        });
        assert_eq!(c.inv_freq(10).0, config(RopeScaling::Default).inv_freq(1).0);
        // base' = base * (2 * 32 / 16 - 1)^(8/6)
        let base = 10_000.0 * 3.0f64.powf(8.0 / 6.0);
        let (inv, _) = c.inv_freq(32);
        assert!((inv[1] - 1.0 / base.powf(0.25)).abs() < 1e-12);
    }

    #[test]
    fn yarn_attention_factor_and_extremes() {
        let c = config(RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: yarn_mscale(4.0, 1.0),
            truncate: true,
        });
        let (inv, att) = c.inv_freq(1);
        assert!((att - (0.1 * 4.0f64.ln() + 1.0)).abs() < 1e-12);
        // The highest frequency is extrapolated, the lowest interpolated.
        assert!((inv[0] - 1.0).abs() < 1e-12);
        assert!((inv[3] - 0.001 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let c = config(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        });
        let (inv, _) = c.inv_freq(1);
        assert_eq!(inv[0], 1.0);
        assert!((inv[3] - 0.001 / 8.0).abs() < 1e-15);
    }

    #[test]
    fn unknown_rope_type_is_an_error() {
        let p = serde_json::json!({"rope_type": "longrope", "factor": 2.0});
        let map = p.as_object().cloned().unwrap_or_default();
        assert!(RopeScaling::from_params(&map, 8).is_err_and(|e| e.contains("longrope")));
    }
}
