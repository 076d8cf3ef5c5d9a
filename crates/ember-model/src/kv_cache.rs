//! Paged key/value storage (PagedAttention's layout): every layer keeps one
//! pool of `num_blocks * block_size` token slots for keys and one for values.
//! A sequence owns a *block table* (which blocks hold its positions, in
//! order), so sequences of any length share one pool and a common prefix can
//! be stored once and referenced by many tables. Which blocks are free,
//! shared or cached is the engine's business; this module only stores.
//!
//! Slots are rows of a `[slots, kv_heads * head_dim]` tensor: new keys are
//! written with one `select_assign` per layer (in place on flex when the pool
//! is uniquely owned, which is why the pools sit in `Option`s that are taken
//! for the write and put back), and a sequence's history is one `select`.

//! On the CPU fast path the pool is host memory instead
//! ([`HostKv`](crate::cpu::kv::HostKv)): committed as it is written, and
//! read in place by the paged-attention kernel.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use burn::tensor::IndexingUpdateOp;

use crate::config::ModelConfig;
use crate::cpu::kv::{HostKv, KvDtype};

/// The key and value pools of every layer.
pub struct KvPool {
    storage: Storage,
    block_size: usize,
    num_blocks: usize,
    num_layers: usize,
    width: usize,
    device: Device,
    dtype: DType,
}

enum Storage {
    /// Burn tensors on the model's device, one pair per layer.
    Tensors {
        keys: Vec<Option<Tensor<2>>>,
        values: Vec<Option<Tensor<2>>>,
    },
    /// Host memory for the CPU kernels.
    Host(HostKv),
}

impl KvPool {
    /// A zeroed pool of `num_blocks` blocks of `block_size` tokens for
    /// `config`: Burn tensors in `dtype` on `device`, or with `host` set (the
    /// CPU fast path), host memory holding that element type.
    pub fn new(
        config: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        device: &Device,
        dtype: DType,
        host: Option<KvDtype>,
    ) -> Self {
        let width = config.num_key_value_heads * config.head_dim;
        let block_size = block_size.max(1);
        let layers = config.num_hidden_layers;
        // Out of address space, the host pool falls back to tensors (which
        // will then fail to allocate the way they always have).
        let host = host.and_then(|kv_dtype| HostKv::new(layers, num_blocks, block_size, width, kv_dtype).ok());
        let storage = match host {
            Some(host) => Storage::Host(host),
            None => {
                let slots = num_blocks * block_size;
                let zeros = || Some(Tensor::<2>::zeros([slots, width], (device, dtype)));
                Storage::Tensors {
                    keys: (0..layers).map(|_| zeros()).collect(),
                    values: (0..layers).map(|_| zeros()).collect(),
                }
            }
        };
        Self {
            storage,
            block_size,
            num_blocks,
            num_layers: layers,
            width,
            device: device.clone(),
            dtype,
        }
    }

    /// Bytes one block takes over all layers, keys and values.
    pub fn bytes_per_block(config: &ModelConfig, block_size: usize, element_bytes: usize) -> usize {
        2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim * element_bytes
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The host storage, when the pool lives on the CPU fast path.
    pub(crate) fn host_mut(&mut self) -> Option<&mut HostKv> {
        match &mut self.storage {
            Storage::Host(host) => Some(host),
            Storage::Tensors { .. } => None,
        }
    }

    pub(crate) fn is_host(&self) -> bool {
        matches!(self.storage, Storage::Host(_))
    }

    /// Appends `extra` zeroed blocks (a single growing sequence's cache).
    pub fn grow(&mut self, extra: usize) {
        let (block_size, width) = (self.block_size, self.width);
        match &mut self.storage {
            Storage::Host(host) => match host.grown(extra) {
                Ok(bigger) => *host = bigger,
                // Out of address space: leave the pool as it was; the step
                // that needed the room fails with BlockTableTooShort.
                Err(_) => return,
            },
            Storage::Tensors { keys, values } => {
                let zeros = Tensor::<2>::zeros([extra * block_size, width], (&self.device, self.dtype));
                for pool in keys.iter_mut().chain(values.iter_mut()) {
                    if let Some(t) = pool.take() {
                        *pool = Some(Tensor::cat(vec![t, zeros.clone()], 0));
                    }
                }
            }
        }
        self.num_blocks += extra;
    }

    /// Whether every layer's pools are present: false only after a panic
    /// inside a write, after which the engine must rebuild the pool.
    pub fn is_intact(&self) -> bool {
        match &self.storage {
            Storage::Host(_) => true,
            Storage::Tensors { keys, values } => keys.iter().chain(values.iter()).all(Option::is_some),
        }
    }

    /// An index tensor of slot numbers.
    pub(crate) fn slot_tensor(&self, slots: impl Iterator<Item = usize>) -> Tensor<1, Int> {
        let slots: Vec<i64> = slots.map(|s| s as i64).collect();
        let n = slots.len();
        Tensor::from_data(TensorData::new(slots, [n]), &self.device)
    }

    /// Writes `[n, kv_heads * head_dim]` keys and values into `slots` of `layer`.
    pub(crate) fn write(&mut self, layer: usize, slots: &Tensor<1, Int>, keys: Tensor<2>, values: Tensor<2>) {
        let Storage::Tensors { keys: key_pools, values: value_pools } = &mut self.storage else { return };
        for (pool, new) in [(&mut key_pools[layer], keys), (&mut value_pools[layer], values)] {
            if let Some(t) = pool.take() {
                *pool = Some(t.select_assign(0, slots.clone(), new, IndexingUpdateOp::Assign));
            }
        }
    }

    /// Reads the keys and values at `slots` of `layer`, `[n, kv_heads * head_dim]`.
    /// `None` when the pool was lost (see `is_intact`) or lives on the host.
    pub(crate) fn read(&self, layer: usize, slots: &Tensor<1, Int>) -> Option<(Tensor<2>, Tensor<2>)> {
        let Storage::Tensors { keys, values } = &self.storage else { return None };
        let k = keys[layer].as_ref()?.clone().select(0, slots.clone());
        let v = values[layer].as_ref()?.clone().select(0, slots.clone());
        Some((k, v))
    }
}

/// The cache of one sequence on its own: a private pool whose blocks are
/// used in order, doubled when full. For tests and one-off scoring
/// (`CausalLm::logits`); the engine, and so every `ember` command, shares
/// one `KvPool` instead.
pub struct KvCache {
    pool: KvPool,
    len: usize,
}

impl KvCache {
    /// A cache over `pool`, whose blocks it uses in order.
    pub fn new(pool: KvPool) -> Self {
        Self { pool, len: 0 }
    }

    /// Tokens cached so far; the next token's position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `total` tokens and returns the pool and its block table.
    pub(crate) fn reserve(&mut self, total: usize) -> (&mut KvPool, Vec<u32>) {
        let needed = total.div_ceil(self.pool.block_size());
        if needed > self.pool.num_blocks() {
            let extra = needed.max(2 * self.pool.num_blocks()) - self.pool.num_blocks();
            self.pool.grow(extra);
        }
        let table = (0..self.pool.num_blocks() as u32).collect();
        (&mut self.pool, table)
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}
