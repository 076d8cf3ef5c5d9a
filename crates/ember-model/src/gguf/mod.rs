//! GGUF model files (llama.cpp's format): the container, dequantization of
//! its block formats, and a [`WeightSource`](crate::weights::WeightSource)
//! that serves tensors under Hugging Face names.

pub mod dequant;
pub mod reader;
mod source;

pub use reader::{GgmlType, GgufFormatError, GgufHeader, MetadataValue, TensorInfo};
pub use source::GgufFile;
