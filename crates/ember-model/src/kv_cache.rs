//! The key/value cache of one sequence, owned by the caller rather than by
//! the attention modules, so a scheduler can hold one per sequence and batch
//! sequences of different lengths through the same `&self` model.
//!
//! Contiguous per layer for now; the engine's paged block pool replaces it.

use burn::tensor::Tensor;

/// Keys and values of one layer, `[kv_heads, len, head_dim]` each.
#[derive(Clone)]
pub(crate) struct LayerKv {
    pub k: Tensor<3>,
    pub v: Tensor<3>,
}

/// Cached keys and values of every layer for one sequence.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
        }
    }

    /// Tokens cached so far; the next token's position.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends this step's keys and values to `layer` and returns the whole history.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor<3>, v: Tensor<3>) -> LayerKv {
        let merged = match self.layers[layer].take() {
            None => LayerKv { k, v },
            Some(past) => LayerKv {
                k: Tensor::cat(vec![past.k, k], 1),
                v: Tensor::cat(vec![past.v, v], 1),
            },
        };
        self.layers[layer] = Some(merged.clone());
        merged
    }

    /// Records that `tokens` more positions are now cached in every layer.
    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
    }
}
