//! Where Ember's default model lives: SmolLM2-135M-Instruct as a Q4_1 GGUF,
//! fetched once by `scripts/fetch-default-model.sh` into the cache folder.

use std::path::PathBuf;

/// The default model's path inside the cache folder.
pub const DEFAULT_MODEL_FILE: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$EMBER_CACHE_DIR`, else `$XDG_CACHE_HOME/ember`, else `~/.cache/ember`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMBER_CACHE_DIR") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("ember")
}

/// Where the default model is (or would be, once fetched).
pub fn default_model_path() -> PathBuf {
    cache_dir().join(DEFAULT_MODEL_FILE)
}

/// Whether `path` is the default model's file (however it was named).
pub fn is_default_model(path: &std::path::Path) -> bool {
    match (path.canonicalize(), default_model_path().canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
