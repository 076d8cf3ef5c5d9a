//! Execution: the one forward pass of a step, behind a trait so the
//! scheduler's policy can be tested against a fake model.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ember_model::{CausalLm, KvPool, LogitsMode, SequenceInput, Tensor};

/// Runs a step's forward pass over the KV pool.
pub(crate) trait ModelRunner {
    fn block_size(&self) -> usize;
    fn num_blocks(&self) -> usize;
    /// Computes `inputs` into the pool and returns the next-token logits of
    /// the inputs at the positions in `sample`, in that order. A panic inside
    /// the model is caught and returned as an error.
    fn forward(&mut self, inputs: &[SequenceInput<'_>], sample: &[usize]) -> Result<Vec<Vec<f32>>, String>;
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

    fn forward(&mut self, inputs: &[SequenceInput<'_>], sample: &[usize]) -> Result<Vec<Vec<f32>>, String> {
        let (model, pool) = (&self.model, &mut self.pool);
        let logits = catch_unwind(AssertUnwindSafe(|| model.forward(pool, inputs, LogitsMode::Last)))
            .map_err(|panic| panic_message(&panic))?
            .map_err(|e| e.to_string())?;
        if sample.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Tensor<2>> = sample.iter().map(|&k| logits[k].clone()).collect();
        let flat: Vec<f32> = catch_unwind(AssertUnwindSafe(|| Tensor::cat(rows, 0).into_data()))
            .map_err(|panic| panic_message(&panic))?
            .try_into_vec::<f32>()
            .map_err(|e| format!("cannot read logits: {e:?}"))?;
        let vocab = flat.len() / sample.len();
        Ok(flat.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    fn is_intact(&self) -> bool {
        self.pool.is_intact()
    }

    fn reset_pool(&mut self) {
        self.pool = self.model.new_pool(self.pool.num_blocks(), self.pool.block_size());
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in the engine: {detail}")
}
