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

impl RopeScaling {
    /// The usable context window, derived as vLLM does
    /// (`_get_and_verify_max_len` in vllm/config.py): YaRN stretches its
    /// original window by `factor`, linear and dynamic NTK stretch
    /// `max_position_embeddings` by it, and Llama 3 (whose config already
    /// states the long window) leaves it as is.
    pub fn context_window(&self, max_position_embeddings: usize) -> usize {
        let stretch = |window: usize, factor: f64| (window as f64 * factor) as usize;
        match self {
            Self::Default | Self::Llama3 { .. } => max_position_embeddings,
            Self::Linear { factor } | Self::Dynamic { factor, .. } => stretch(max_position_embeddings, *factor),
            Self::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => stretch(*original_max_position_embeddings, *factor),
        }
    }
}

/// A `rope_scaling` object given at load time (`--rope-scaling`, in vLLM's
/// spelling, or `rope_scaling` under `[model]`) that replaces the
/// checkpoint's, so a window can be extended without editing model files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Value")]
pub struct RopeScalingOverride(Map<String, Value>);

impl RopeScalingOverride {
    /// The scaling it names for a model whose config states `max_position_embeddings`.
    pub fn resolve(&self, max_position_embeddings: usize) -> Result<RopeScaling, String> {
        RopeScaling::from_params(&self.0, max_position_embeddings)
    }
}

impl TryFrom<Value> for RopeScalingOverride {
    type Error = String;

    /// Checks the object against a nominal window, so a typo is refused when
    /// the flag or the config is read rather than at load.
    fn try_from(value: Value) -> Result<Self, String> {
        match value {
            Value::Object(map) => {
                let parsed = Self(map);
                parsed.resolve(1)?;
                Ok(parsed)
            }
            _ => Err("must be a JSON object such as {\"rope_type\":\"yarn\",\"factor\":4}".into()),
        }
    }
}

impl std::str::FromStr for RopeScalingOverride {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        Self::try_from(value)
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
    /// for positions `0..len`.
    fn tables(&self, len: usize, seq_len: usize) -> (Vec<f32>, Vec<f32>) {
        let frequencies = self.frequencies(seq_len);
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for pos in 0..len {
            frequencies.push_row(pos, &mut cos, &mut sin);
        }
        (cos, sin)
    }

    fn frequencies(&self, seq_len: usize) -> Frequencies {
        let (inv_freq, attention_factor) = self.inv_freq(seq_len);
        Frequencies {
            inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(),
            attention_factor,
        }
    }

    /// The original window past which dynamic NTK grows its base; `None` for
    /// every other kind, whose frequencies do not depend on the length.
    fn dynamic_window(&self) -> Option<usize> {
        match self.scaling {
            RopeScaling::Dynamic {
                max_position_embeddings,
                ..
            } => Some(max_position_embeddings),
            _ => None,
        }
    }
}

/// One frequency set, as f32 the way Hugging Face multiplies it.
struct Frequencies {
    inv_freq: Vec<f32>,
    attention_factor: f64,
}

impl Frequencies {
    /// Appends the cos and sin rows of `pos`: f32 frequency times f32
    /// position, as Hugging Face computes the angle.
    fn push_row(&self, pos: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        let row_start = cos.len();
        for &f in &self.inv_freq {
            let angle = f64::from(pos as f32 * f);
            cos.push((angle.cos() * self.attention_factor) as f32);
            sin.push((angle.sin() * self.attention_factor) as f32);
        }
        let half = self.inv_freq.len();
        cos.extend_from_within(row_start..row_start + half);
        sin.extend_from_within(row_start..row_start + half);
    }
}

struct Tables {
    /// Positions covered.
    len: usize,
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
    fn build(&self, end: usize) -> Tables {
        // Within the window dynamic NTK's frequencies are those at the window.
        let seq_len = self.config.dynamic_window().unwrap_or(0);
        let len = end.next_power_of_two().max(64);
        let (cos, sin) = self.config.tables(len, seq_len);
        let shape = [len, self.config.head_dim];
        let opts = (&self.device, self.dtype);
        Tables {
            len,
            cos: Tensor::from_data(TensorData::new(cos, shape), opts),
            sin: Tensor::from_data(TensorData::new(sin, shape), opts),
        }
    }

    /// cos and sin rows (`[n, head_dim]`) for the given positions;
    /// `seq_lens[i]` is the length of the sequence token `i` belongs to in
    /// this step (its largest position + 1).
    ///
    /// Dynamic NTK depends on that length, as in Hugging Face, where each
    /// forward pass computes its frequencies from its own length. Past the
    /// original window its rows are computed per sequence, so a batch-mate's
    /// length never changes another sequence's positions; below it, and for
    /// every other kind, one lazily grown table serves all.
    pub fn cos_sin(&self, positions: &[usize], seq_lens: &[usize]) -> (Tensor<2>, Tensor<2>) {
        let head_dim = self.config.head_dim;
        if let Some(window) = self.config.dynamic_window()
            && seq_lens.iter().any(|&len| len > window)
        {
            let mut cos = Vec::with_capacity(positions.len() * head_dim);
            let mut sin = Vec::with_capacity(positions.len() * head_dim);
            let mut current: Option<(usize, Frequencies)> = None;
            for (&pos, &len) in positions.iter().zip(seq_lens) {
                let len = len.max(window);
                if current.as_ref().is_none_or(|(l, _)| *l != len) {
                    current = Some((len, self.config.frequencies(len)));
                }
                if let Some((_, frequencies)) = &current {
                    frequencies.push_row(pos, &mut cos, &mut sin);
                }
            }
            let shape = [positions.len(), head_dim];
            let opts = (&self.device, self.dtype);
            return (
                Tensor::from_data(TensorData::new(cos, shape), opts),
                Tensor::from_data(TensorData::new(sin, shape), opts),
            );
        }
        let end = positions.iter().copied().max().map_or(1, |p| p + 1);
        // A poisoned lock only means another call panicked mid-build; the
        // tables are rebuilt below whenever they do not fit.
        let mut guard = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let tables = match guard.take() {
            Some(t) if t.len >= end => t,
            _ => self.build(end),
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
    use std::str::FromStr;

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

    #[test]
    fn context_window_is_derived_as_vllm_does() {
        let yarn = RopeScalingOverride::from_str(r#"{"rope_type":"yarn","factor":4,"original_max_position_embeddings":32768}"#)
            .and_then(|o| o.resolve(40_960));
        assert_eq!(yarn.map(|s| s.context_window(40_960)), Ok(131_072));
        let linear = RopeScaling::Linear { factor: 2.0 };
        assert_eq!(linear.context_window(8192), 16_384);
        let dynamic = RopeScaling::Dynamic {
            factor: 8.0,
            max_position_embeddings: 8192,
        };
        assert_eq!(dynamic.context_window(8192), 65_536);
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        assert_eq!(llama3.context_window(131_072), 131_072);
        assert_eq!(RopeScaling::Default.context_window(4096), 4096);
    }

    #[test]
    fn override_refuses_what_it_cannot_use() {
        for (text, needle) in [
            ("yarn", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"rope_type":"yarn"}"#, "factor"),
            (r#"{"rope_type":"yarn","factor":-2}"#, "positive"),
            (r#"{"rope_type":"longrope","factor":2}"#, "longrope"),
            (r#"{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4}"#, "original"),
        ] {
            let err = RopeScalingOverride::from_str(text).err().unwrap_or_default();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn dynamic_rows_depend_on_their_own_sequence_only() {
        let rotary = RotaryEmbedding::new(
            config(RopeScaling::Dynamic {
                factor: 2.0,
                max_position_embeddings: 16,
            }),
            &Device::flex(),
            DType::F32,
        );
        let rows = |positions: &[usize], lens: &[usize]| -> Vec<f32> {
            let (cos, _) = rotary.cos_sin(positions, lens);
            cos.into_data().try_to_vec::<f32>().unwrap_or_default()
        };
        // Position 5 of a 6-token sequence: inside the window, whatever the batch holds.
        let alone = rows(&[5], &[6]);
        let batched = rows(&[5, 39], &[6, 40]);
        assert_eq!(alone[..], batched[..8]);
        // Position 39 of a 40-token sequence uses the grown base, batched or not.
        assert_eq!(rows(&[39], &[40])[..], batched[8..]);
        assert_ne!(batched[8..], rows(&[39], &[16])[..]);
    }
}
