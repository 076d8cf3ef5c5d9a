//! The causal language model: embeddings, decoder layers, final norm, head.
//! One implementation for Qwen3, Qwen2 and Llama, on whatever Burn device the
//! caller chose. The model holds no per-sequence state: caches are passed in.

use std::ops::Range;
use std::path::Path;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::attention::{Attention, AttentionBuffers, AttentionHost, SlotTensors, StepLayout};
use crate::cpu::attention::SequenceView;
use crate::config::ModelConfig;
use crate::cpu::QuantType;
use crate::cpu::kv::KvDtype;
use crate::embedding::Embedding;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvPool};
use crate::linear::Linear;
use crate::cpu::kv::HostKv;
use crate::cpu::ops::add_rms_norm;
use crate::cpu::tensor::{from_vec, into_host_vec};
use crate::mlp::{Mlp, MlpBuffers, MlpHost};
use crate::norm::RmsNorm;
use crate::rope::{RopeScalingOverride, RotaryEmbedding};
use crate::safetensors_source::SafetensorsSource;
use crate::sparse::SparseLayout;
use crate::weights::{Loader, WeightSource};

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(loader: &Loader<'_>, prefix: &str, c: &ModelConfig) -> Result<Self> {
        let eps = c.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::load(loader, &format!("{prefix}.input_layernorm"), c.hidden_size, eps)?,
            self_attn: Attention::load(loader, &format!("{prefix}.self_attn"), c)?,
            post_attention_layernorm: RmsNorm::load(
                loader,
                &format!("{prefix}.post_attention_layernorm"),
                c.hidden_size,
                eps,
            )?,
            mlp: Mlp::load(loader, &format!("{prefix}.mlp"), c)?,
        })
    }

    /// The layer as host data, when the fast path holds all of it.
    fn host(&self) -> Option<LayerHost<'_>> {
        Some(LayerHost {
            input_norm: self.input_layernorm.host()?,
            attention: self.self_attn.host()?,
            post_norm: self.post_attention_layernorm.host()?,
            mlp: self.mlp.host()?,
        })
    }
}

/// A decoder layer's weights on the host (norm weights with their epsilon).
struct LayerHost<'a> {
    input_norm: (&'a [f32], f64),
    attention: AttentionHost<'a>,
    post_norm: (&'a [f32], f64),
    mlp: MlpHost<'a>,
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Every input position (parity tests, prompt scoring).
    All,
    /// Only each sequence's last position (generation): skips the head on the rest.
    Last,
}

/// One sequence of a batched forward pass: new tokens continuing the
/// `past_len` positions already in the pool.
pub struct SequenceInput<'a> {
    pub tokens: &'a [u32],
    /// Positions already cached; the first new token's position.
    pub past_len: usize,
    /// The pool blocks that hold positions `0..past_len + tokens.len()`, in order.
    pub block_table: &'a [u32],
    /// Positions every later query sees under a sparse layout (the
    /// sequence's `[IMPORTANT]` spans); ignored by dense attention.
    pub global_spans: &'a [Range<usize>],
}

/// A loaded causal language model.
pub struct CausalLm {
    config: ModelConfig,
    device: Device,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    dtype: DType,
    options: LoadOptions,
}

/// How a model is run, beyond its device and dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Use the CPU fast path when the device is flex and the dtype f32
    /// (quantized weights kept in blocks, host KV pool, paged attention).
    /// Off, flex runs the generic Burn code that wgpu and CUDA run.
    pub cpu_fast_path: bool,
    /// Element type of the KV cache on the fast path.
    pub kv_cache_dtype: KvDtype,
    /// In-situ quantization on the fast path: float weight matrices of a
    /// Hugging Face checkpoint (or a float GGUF) are quantized to this at
    /// load (Q8_0 or Q4_0), as mistral.rs's ISQ does.
    pub quantize: Option<QuantType>,
    /// Block-sparse attention for long inputs; `None` is dense.
    pub sparse: Option<SparseLayout>,
    /// Replaces the checkpoint's RoPE scaling (and so its window).
    pub rope_scaling: Option<RopeScalingOverride>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            cpu_fast_path: true,
            kv_cache_dtype: KvDtype::F32,
            quantize: None,
            sparse: None,
            rope_scaling: None,
        }
    }
}

impl CausalLm {
    /// Loads `config.json` and the safetensors weights of a Hugging Face directory.
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_dir_with(dir, device, dtype, LoadOptions::default())
    }

    pub fn from_dir_with(dir: &Path, device: &Device, dtype: DType, options: LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let source = SafetensorsSource::open_dir(dir)?;
        Self::load_with(config, &source, device, dtype, options)
    }

    /// Loads a GGUF file: config from its metadata, tensors dequantized.
    pub fn from_gguf(file: &GgufFile, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_gguf_with(file, device, dtype, LoadOptions::default())
    }

    pub fn from_gguf_with(file: &GgufFile, device: &Device, dtype: DType, options: LoadOptions) -> Result<Self> {
        Self::load_with(file.model_config()?, file, device, dtype, options)
    }

    /// Builds the network from any weight source, by Hugging Face key.
    pub fn load(config: ModelConfig, source: &dyn WeightSource, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(config, source, device, dtype, LoadOptions::default())
    }

    pub fn load_with(
        mut config: ModelConfig,
        source: &dyn WeightSource,
        device: &Device,
        dtype: DType,
        options: LoadOptions,
    ) -> Result<Self> {
        if !device.supports_dtype(dtype) {
            return Err(ModelError::UnsupportedDtype {
                dtype: format!("{dtype:?}"),
                device: format!("{device:?}"),
            });
        }
        if let Some(rope_scaling) = &options.rope_scaling {
            config.rope.scaling = rope_scaling
                .resolve(config.max_position_embeddings)
                .map_err(ModelError::InvalidRopeScaling)?;
        }
        let loader = Loader {
            source,
            device,
            dtype,
            keep_quantized: options.cpu_fast_path && crate::cpu::applies(device, dtype),
            quantize: options.quantize,
        };
        if let Some(ty) = options.quantize
            && !matches!(ty, QuantType::Q8_0 | QuantType::Q4_0)
        {
            return Err(ModelError::UnsupportedQuantization(format!("{ty:?}")));
        }
        // Options only the fast path can honour are refused elsewhere
        // rather than silently dropped.
        if !loader.keep_quantized && (options.quantize.is_some() || options.kv_cache_dtype != KvDtype::F32) {
            return Err(ModelError::NeedsCpuFastPath {
                device: format!("{device:?}"),
                dtype: format!("{dtype:?}"),
            });
        }
        let c = &config;
        // A bare decoder (transformers' `Qwen3Model`, as sentence-transformers
        // and Qwen3-Embedding save it) names its tensors without `model.`
        // and has no head; the head then reuses the embedding, unused by
        // the pooled outputs such a checkpoint is for.
        let bare = !source.contains("model.embed_tokens.weight") && source.contains("embed_tokens.weight");
        let base = if bare { "" } else { "model." };
        let embed_tokens = Embedding::load(&loader, &format!("{base}embed_tokens.weight"), c.vocab_size, c.hidden_size)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(&loader, &format!("{base}layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&loader, &format!("{base}norm"), c.hidden_size, c.rms_norm_eps)?;
        // A tied checkpoint has no lm_head.weight: the head reuses the embedding.
        let lm_head = if (c.tie_word_embeddings || bare) && !source.contains("lm_head.weight") {
            embed_tokens.tied_head()
        } else {
            Linear::load(&loader, "lm_head", c.hidden_size, c.vocab_size, false)?
        };
        let rotary = RotaryEmbedding::new(c.rope.clone(), device, dtype);
        Ok(Self {
            device: device.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            config,
            dtype,
            options: LoadOptions {
                cpu_fast_path: options.cpu_fast_path && crate::cpu::applies(device, dtype),
                ..options
            },
        })
    }

    /// The options in effect (the fast path only where it applies).
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Which code computes the model, for start-up reports.
    pub fn compute_summary(&self) -> String {
        let attention = match &self.options.sparse {
            Some(l) => format!(
                "; sparse attention past {} tokens (blocks of {}, {} local, {} sinks, stride {})",
                l.dense_below, l.block, l.local, l.sinks, l.stride
            ),
            None => String::new(),
        };
        format!("{}{attention}", self.compute_path())
    }

    fn compute_path(&self) -> String {
        if self.options.cpu_fast_path {
            format!(
                "CPU fast path: {} kernels on {} threads, KV cache {:?}{}",
                crate::cpu::matmul::kernel_name(),
                crate::cpu::pool::global().threads(),
                self.options.kv_cache_dtype,
                match self.options.quantize {
                    Some(ty) => format!(", float weights quantized to {ty:?} at load"),
                    None => String::new(),
                }
            )
        } else {
            format!("generic Burn path on {:?}", self.device)
        }
    }

    /// Bytes one KV block of `block_size` tokens takes, all layers.
    pub fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        let element = if self.options.cpu_fast_path { self.options.kv_cache_dtype.size() } else { self.dtype.size() };
        KvPool::bytes_per_block(&self.config, block_size, element)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty single-sequence cache shaped for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.new_pool(4, 16))
    }

    /// A zeroed paged pool of `num_blocks` blocks of `block_size` tokens.
    pub fn new_pool(&self, num_blocks: usize, block_size: usize) -> KvPool {
        let host = self.options.cpu_fast_path.then_some(self.options.kv_cache_dtype);
        KvPool::new(&self.config, num_blocks, block_size, &self.device, self.dtype, host)
    }

    /// The dtype of weights, activations and cache.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// One step over a batch of sequences sharing `pool`: each sequence's new
    /// tokens continue its history (a prompt, a chunk of one, or one decode
    /// token). Returns each sequence's logits, `[n, vocab]` in f32, where `n`
    /// is its token count (`LogitsMode::All`) or 1 (`LogitsMode::Last`).
    pub fn forward(&self, pool: &mut KvPool, batch: &[SequenceInput<'_>], mode: LogitsMode) -> Result<Vec<Tensor<2>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (hidden, rows) = self.hidden_states(pool, batch)?;
        let wanted: Vec<usize> = match mode {
            LogitsMode::All => (0..hidden.dims()[0]).collect(),
            LogitsMode::Last => rows.iter().map(|r| r.end - 1).collect(),
        };
        let logits = self.head(hidden, &wanted);
        Ok(match mode {
            LogitsMode::All => rows.into_iter().map(|r| logits.clone().narrow(0, r.start, r.len())).collect(),
            LogitsMode::Last => (0..rows.len()).map(|i| logits.clone().narrow(0, i, 1)).collect(),
        })
    }

    /// The head's next-token logits, f32, of the given rows of `hidden`
    /// (the output of `hidden_states`), in that order.
    pub fn head(&self, hidden: Tensor<2>, rows: &[usize]) -> Tensor<2> {
        let hidden = if rows.len() == hidden.dims()[0] && rows.iter().enumerate().all(|(i, &r)| i == r) {
            hidden
        } else {
            let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &self.device);
            hidden.select(0, index)
        };
        self.lm_head.forward(hidden).cast(DType::F32)
    }

    /// One step's decoder stack over a batch, as `forward` runs it, without
    /// the head: the final norm's output for every new token, `[tokens,
    /// hidden]` in the model's dtype, and each sequence's rows. Embedding
    /// models pool these; generation takes `head` of the last rows.
    pub fn hidden_states(&self, pool: &mut KvPool, batch: &[SequenceInput<'_>]) -> Result<(Tensor<2>, Vec<Range<usize>>)> {
        if batch.is_empty() {
            return Err(ModelError::EmptySequence);
        }
        if pool.num_layers() != self.layers.len() {
            return Err(ModelError::CacheMismatch {
                cache_layers: pool.num_layers(),
                model_layers: self.layers.len(),
            });
        }
        // 1. Flatten all new tokens, their positions and cache slots.
        let bs = pool.block_size();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut seq_lens = Vec::new();
        let mut write_slots = Vec::new();
        let mut sequences = Vec::with_capacity(batch.len());
        for seq in batch {
            if seq.tokens.is_empty() {
                return Err(ModelError::EmptySequence);
            }
            let total = seq.past_len + seq.tokens.len();
            if seq.block_table.len() * bs < total {
                return Err(ModelError::BlockTableTooShort {
                    tokens: total,
                    capacity: seq.block_table.len() * bs,
                });
            }
            if let Some(&block) = seq.block_table.iter().find(|&&b| b as usize >= pool.num_blocks()) {
                return Err(ModelError::BlockOutOfRange {
                    block,
                    num_blocks: pool.num_blocks(),
                });
            }
            let start = ids.len();
            for (i, &t) in seq.tokens.iter().enumerate() {
                if t as usize >= self.config.vocab_size {
                    return Err(ModelError::TokenOutOfRange {
                        token: t,
                        vocab_size: self.config.vocab_size,
                    });
                }
                let p = seq.past_len + i;
                ids.push(t);
                positions.push(p);
                seq_lens.push(total);
                write_slots.push(seq.block_table[p / bs] as usize * bs + p % bs);
            }
            sequences.push(SequenceView {
                rows: start..ids.len(),
                past_len: seq.past_len,
                block_table: seq.block_table,
                global_spans: seq.global_spans,
            });
        }
        if let Some(sparse) = &self.options.sparse {
            sparse.validate(bs)?;
        }
        let tensors = (!pool.is_host()).then(|| SlotTensors::new(pool, &write_slots, &sequences));
        let layout = StepLayout {
            write_slots,
            sequences,
            tensors,
            sparse: self.options.sparse.as_ref(),
        };

        // 2. Embeddings and per-token rotary tables.
        let mut hidden = self.embed_tokens.lookup(&ids, &self.device);
        let (cos, sin) = self.rotary.cos_sin(&positions, &seq_lens);

        // 3. Pre-norm decoder layers with residuals, then the final norm.
        let host = self.host_layers().zip(pool.host_mut());
        let hidden = match host {
            Some(((layers, final_norm), pool)) => {
                Self::layers_on_host(&layers, final_norm, hidden, (&cos, &sin), pool, &layout)
            }
            None => {
                for (i, layer) in self.layers.iter().enumerate() {
                    let attn = layer.self_attn.forward(
                        i,
                        layer.input_layernorm.forward(hidden.clone()),
                        &cos,
                        &sin,
                        pool,
                        &layout,
                    )?;
                    hidden = hidden + attn;
                    let mlp = layer.mlp.forward(layer.post_attention_layernorm.forward(hidden.clone()));
                    hidden = hidden + mlp;
                }
                self.norm.forward(hidden)
            }
        };

        Ok((hidden, layout.sequences.iter().map(|s| s.rows.clone()).collect()))
    }

    /// Every layer and the final norm as host data, when the fast path
    /// holds all of them (quantized projections; float ones stay on Burn).
    fn host_layers(&self) -> Option<(Vec<LayerHost<'_>>, (&[f32], f64))> {
        if !self.options.cpu_fast_path {
            return None;
        }
        let layers = self.layers.iter().map(DecoderLayer::host).collect::<Option<Vec<_>>>()?;
        Some((layers, self.norm.host()?))
    }

    /// The decoder layers on host rows, one set of buffers reused by every
    /// layer: Burn's tensor ops and their allocations cost a decode step of
    /// a small model more than its norms do. Each residual add is fused
    /// with the norm after it; returns the final norm's output.
    fn layers_on_host(
        layers: &[LayerHost<'_>],
        final_norm: (&[f32], f64),
        hidden: Tensor<2>,
        (cos, sin): (&Tensor<2>, &Tensor<2>),
        pool: &mut HostKv,
        layout: &StepLayout<'_>,
    ) -> Tensor<2> {
        let dims = hidden.dims();
        let (cos, sin) = (into_host_vec(cos.clone()), into_host_vec(sin.clone()));
        let (cos, sin) = (cos.as_slice(), sin.as_slice());
        let mut hidden = into_host_vec(hidden);
        let mut normed = vec![0.0; hidden.len()];
        let mut delta = Vec::with_capacity(hidden.len());
        let (mut attention, mut mlp) = (AttentionBuffers::default(), MlpBuffers::default());
        let tokens = layout.write_slots.len();
        let (first, eps) = layers.first().map_or(final_norm, |l| l.input_norm);
        crate::cpu::ops::rms_norm(&hidden, first, eps, &mut normed);
        for (i, layer) in layers.iter().enumerate() {
            layer.attention.forward(i, &normed, (cos, sin), pool, layout, &mut attention, &mut delta);
            let (weight, eps) = layer.post_norm;
            add_rms_norm(&mut hidden, &delta, weight, eps, &mut normed);
            layer.mlp.forward(&normed, tokens, &mut mlp, &mut delta);
            let (weight, eps) = layers.get(i + 1).map_or(final_norm, |next| next.input_norm);
            add_rms_norm(&mut hidden, &delta, weight, eps, &mut normed);
        }
        from_vec(normed, dims)
    }

    /// One step of a single sequence with its own cache: `tokens` continue
    /// `cache`, which grows as needed.
    pub fn forward_cached(&self, cache: &mut KvCache, tokens: &[u32], mode: LogitsMode) -> Result<Tensor<2>> {
        let past_len = cache.len();
        let (pool, block_table) = cache.reserve(past_len + tokens.len());
        let input = SequenceInput {
            tokens,
            past_len,
            block_table: &block_table,
            global_spans: &[],
        };
        let logits = self.forward(pool, &[input], mode)?.pop().ok_or(ModelError::EmptySequence)?;
        cache.advance(tokens.len());
        Ok(logits)
    }

    /// Logits at every position of `tokens` from an empty cache (a full recompute).
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor<2>> {
        self.forward_cached(&mut self.new_cache(), tokens, LogitsMode::All)
    }
}
