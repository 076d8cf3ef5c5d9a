//! `--attention dense|sparse` and the sparse layout's `--sparse-*` flags,
//! shared by every subcommand that loads a model, and the same settings
//! from the `[attention]` table of `ember serve --config`.

use anyhow::{Result, bail};
use ember_engine::MarkerPolicy;
use ember_model::sparse::SparseLayout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttentionChoice {
    /// Every query sees every earlier position (the model as trained).
    Dense,
    /// Block-sparse past `--sparse-dense-below` positions: sinks, a window
    /// of local blocks, strided blocks and global spans (docs/LONG_CONTEXT.md).
    Sparse,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct AttentionArgs {
    /// [default: dense]
    #[arg(long, value_enum)]
    pub attention: Option<AttentionChoice>,
    /// Tokens per sparse block, a multiple of the KV block size [default: 64].
    #[arg(long)]
    pub sparse_block: Option<usize>,
    /// Blocks before a query's own that it sees [default: 16].
    #[arg(long)]
    pub sparse_local: Option<usize>,
    /// Leading positions every query sees [default: 64].
    #[arg(long)]
    pub sparse_sinks: Option<usize>,
    /// Every N-th block stays visible to later queries; 0 is off [default: 0].
    #[arg(long)]
    pub sparse_stride: Option<usize>,
    /// Queries before this position attend densely [default: 4096].
    #[arg(long)]
    pub sparse_dense_below: Option<usize>,
    /// Keep `[IMPORTANT]` / `[/IMPORTANT]` in the prompt text instead of
    /// removing them (their spans are global either way).
    #[arg(long)]
    pub keep_markers: bool,
}

impl AttentionArgs {
    /// The sparse layout these settings ask for (`None`: dense). `--sparse-*`
    /// without `--attention sparse` is an error rather than silently unused.
    pub fn layout(&self) -> Result<Option<SparseLayout>> {
        let given = [
            ("sparse_block", self.sparse_block),
            ("sparse_local", self.sparse_local),
            ("sparse_sinks", self.sparse_sinks),
            ("sparse_stride", self.sparse_stride),
            ("sparse_dense_below", self.sparse_dense_below),
            ("keep_markers", self.keep_markers.then_some(1)),
        ];
        if self.attention != Some(AttentionChoice::Sparse) {
            if let Some((name, _)) = given.iter().find(|(_, v)| v.is_some()) {
                bail!("{name} is set but attention is dense: add --attention sparse (or mode = \"sparse\" under [attention])");
            }
            return Ok(None);
        }
        let d = SparseLayout::default();
        let layout = SparseLayout {
            block: self.sparse_block.unwrap_or(d.block),
            local: self.sparse_local.unwrap_or(d.local),
            sinks: self.sparse_sinks.unwrap_or(d.sinks),
            stride: self.sparse_stride.unwrap_or(d.stride),
            dense_below: self.sparse_dense_below.unwrap_or(d.dense_below),
        };
        if layout.block == 0 {
            bail!("sparse_block must be positive");
        }
        Ok(Some(layout))
    }

    /// What `[IMPORTANT]` markers do: global spans under sparse attention,
    /// plain text under dense (`None`).
    pub fn markers(&self) -> Result<Option<MarkerPolicy>> {
        Ok(self.layout()?.map(|_| MarkerPolicy {
            keep_markers: self.keep_markers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_by_default_and_sparse_with_defaults() -> Result<()> {
        assert_eq!(AttentionArgs::default().layout()?, None);
        let sparse = AttentionArgs {
            attention: Some(AttentionChoice::Sparse),
            sparse_local: Some(2),
            ..AttentionArgs::default()
        };
        assert_eq!(sparse.layout()?, Some(SparseLayout { local: 2, ..SparseLayout::default() }));
        Ok(())
    }

    #[test]
    fn sparse_flags_without_sparse_attention_are_an_error() {
        let stray = AttentionArgs {
            sparse_stride: Some(4),
            ..AttentionArgs::default()
        };
        let error = stray.layout().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("sparse_stride"), "{error}");
    }
}
