//! The token embedding table. On the CPU fast path a quantized table stays
//! in its blocks and only the looked-up rows are dequantized; a tied head
//! multiplies by the same blocks.

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::cpu::QuantMatrix;
use crate::cpu::tensor::from_vec;
use crate::error::Result;
use crate::linear::Linear;
use crate::weights::Loader;

pub enum Embedding {
    /// `[vocab, hidden]` on the model's device.
    Dense(Tensor<2>),
    /// `[vocab, hidden]` GGML blocks.
    Quantized(Arc<QuantMatrix>),
}

impl Embedding {
    pub fn load(loader: &Loader<'_>, name: &str, vocab: usize, hidden: usize) -> Result<Self> {
        if let Some(q) = loader.quantized(name, [vocab, hidden])? {
            return Ok(Self::Quantized(Arc::new(q)));
        }
        Ok(Self::Dense(loader.tensor(name, [vocab, hidden])?))
    }

    /// The rows of `ids` (already checked against the vocabulary), `[n, hidden]`.
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Tensor<2> {
        match self {
            Self::Dense(table) => {
                let ids: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
                let n = ids.len();
                table.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), device))
            }
            Self::Quantized(table) => {
                let mut rows = Vec::with_capacity(ids.len() * table.cols());
                for &id in ids {
                    table.dequantize_row_into(id as usize, &mut rows);
                }
                from_vec(rows, [ids.len(), table.cols()])
            }
        }
    }

    /// The head of a model with tied embeddings: logits = hidden · tableᵀ.
    pub fn tied_head(&self) -> Linear {
        match self {
            Self::Dense(table) => Linear::from_weight(table.clone(), None),
            Self::Quantized(table) => Linear::quantized(Arc::clone(table), None),
        }
    }
}
