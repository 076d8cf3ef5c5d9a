//! Execution: the one forward pass of a step, behind a trait so the
//! scheduler's policy can be tested against a fake model.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ember_model::{CausalLm, KvPool, SequenceInput, Tensor};

use crate::request::Pooling;

/// What a step's forward pass returns besides the pool's new contents.
#[derive(Debug, Default)]
pub(crate) struct StepOutputs {
    /// Next-token logits, one row per `sample` entry, in that order.
    pub logits: Vec<Vec<f32>>,
    /// Pooled hidden states, one per `pool` entry, in that order: the sum
    /// of the chunk's rows (mean) or its last row (last), in f32.
    pub pooled: Vec<Vec<f32>>,
}

/// Runs a step's forward pass over the KV pool.
pub(crate) trait ModelRunner {
    fn block_size(&self) -> usize;
    fn num_blocks(&self) -> usize;
    /// Computes `inputs` into the pool and returns the next-token logits of
    /// the inputs at the positions in `sample` and the pooled hidden states
    /// of those in `pool`. A panic inside the model is caught and returned
    /// as an error.
    fn forward(&mut self, inputs: &[SequenceInput<'_>], sample: &[usize], pool: &[(usize, Pooling)]) -> Result<StepOutputs, String>;
    /// False when a failed write lost the pool's contents.
    fn is_intact(&self) -> bool;
    /// Replaces the pool with an empty one.
    fn reset_pool(&mut self);
}

/// The real runner: a Burn model and its pool.
pub(crate) struct CausalLmRunner {
    model: CausalLm,
    pool: KvPool,
}

impl CausalLmRunner {
    pub fn new(model: CausalLm, num_blocks: usize, block_size: usize) -> Self {
        let pool = model.new_pool(num_blocks, block_size);
        Self { model, pool }
    }
}

impl ModelRunner for CausalLmRunner {
    fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    fn forward(&mut self, inputs: &[SequenceInput<'_>], sample: &[usize], pool: &[(usize, Pooling)]) -> Result<StepOutputs, String> {
        let (model, kv) = (&self.model, &mut self.pool);
        catch_unwind(AssertUnwindSafe(|| -> Result<StepOutputs, String> {
            let (hidden, rows) = model.hidden_states(kv, inputs).map_err(|e| e.to_string())?;
            let logits = if sample.is_empty() {
                Vec::new()
            } else {
                let last: Vec<usize> = sample.iter().map(|&k| rows[k].end - 1).collect();
                host_rows(model.head(hidden.clone(), &last))?
            };
            let pooled = if pool.is_empty() {
                Vec::new()
            } else {
                let parts: Vec<Tensor<2>> = pool
                    .iter()
                    .map(|&(k, pooling)| {
                        let r = &rows[k];
                        match pooling {
                            Pooling::Mean => hidden.clone().narrow(0, r.start, r.len()).sum_dim(0),
                            Pooling::Last => hidden.clone().narrow(0, r.end - 1, 1),
                        }
                    })
                    .collect();
                host_rows(Tensor::cat(parts, 0).cast(ember_model::DType::F32))?
            };
            Ok(StepOutputs { logits, pooled })
        }))
        .map_err(|panic| panic_message(&panic))?
    }

    fn is_intact(&self) -> bool {
        self.pool.is_intact()
    }

    fn reset_pool(&mut self) {
        self.pool = self.model.new_pool(self.pool.num_blocks(), self.pool.block_size());
    }
}

/// The rows of an f32 matrix as host vectors.
fn host_rows(matrix: Tensor<2>) -> Result<Vec<Vec<f32>>, String> {
    let [rows, cols] = matrix.dims();
    let flat = matrix.into_data().try_into_vec::<f32>().map_err(|e| format!("cannot read the model's output: {e:?}"))?;
    if flat.len() != rows * cols {
        return Err(format!("the model's output has {} values, not {rows} x {cols}", flat.len()));
    }
    Ok(flat.chunks(cols.max(1)).map(<[f32]>::to_vec).collect())
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in the engine: {detail}")
}
