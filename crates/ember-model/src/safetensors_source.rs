//! Weights from a Hugging Face directory: `model.safetensors`, or
//! `model.safetensors.index.json` plus shards.
//!
//! Files are memory-mapped and tensors are copied out one at a time, so
//! loading never holds two full copies of the weights: the mapping is page
//! cache the kernel can drop, and each tensor's host copy is freed once it is
//! on the device.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use half::{bf16, f16};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use crate::error::{ModelError, Result};
use crate::weights::WeightSource;

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (after the 8-byte length and the header).
    data_start: usize,
    metadata: Metadata,
}

/// A memory-mapped safetensors checkpoint, one file or many shards.
pub struct SafetensorsSource {
    files: Vec<MappedFile>,
    /// Tensor name -> index into `files`.
    location: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Opens the weights of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            Self::open_index(&index)
        } else if single.is_file() {
            Self::open_files(&[single])
        } else {
            Err(ModelError::NoWeights {
                path: dir.to_owned(),
            })
        }
    }

    fn open_index(index: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
            path: index.to_owned(),
            source,
        })?;
        let parsed: Index = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: index.to_owned(),
            source,
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<&String> = parsed.weight_map.values().collect();
        shards.sort();
        shards.dedup();
        let paths: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
        Self::open_files(&paths)
    }

    /// Maps each file and indexes its tensors by name.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut location = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let io_err = |source| ModelError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io_err)?;
            // SAFETY: the mapping is read-only; a checkpoint changed on disk
            // while the server loads it is outside what we can defend against,
            // as for every mmap-based loader.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|source| ModelError::Safetensors {
                    path: path.clone(),
                    source,
                })?;
            for name in metadata.tensors().keys() {
                location.insert(name.clone(), i);
            }
            files.push(MappedFile {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(Self { files, location })
    }
}

impl SafetensorsSource {
    /// The file, or the shards' directory, to name in messages.
    fn describe(&self) -> PathBuf {
        match self.files.as_slice() {
            [one] => one.path.clone(),
            _ => self
                .files
                .first()
                .and_then(|f| f.path.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }
}

impl WeightSource for SafetensorsSource {
    fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    fn read(&self, name: &str, expected_shape: &[usize]) -> Result<TensorData> {
        let file = self
            .location
            .get(name)
            .and_then(|&i| self.files.get(i))
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.describe(),
                tensor: name.to_owned(),
            })?;
        let info = file
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: file.path.clone(),
                tensor: name.to_owned(),
            })?;
        if info.shape != expected_shape {
            return Err(ModelError::ShapeMismatch {
                path: file.path.clone(),
                tensor: name.to_owned(),
                expected: expected_shape.to_vec(),
                actual: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        // read_metadata checked that offsets lie inside the file.
        let bytes = &file.mmap[file.data_start + start..file.data_start + end];
        let count: usize = info.shape.iter().product();
        let elem_size = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(ModelError::UnsupportedTensorDtype {
                    path: file.path.clone(),
                    tensor: name.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        if bytes.len() != count * elem_size {
            return Err(ModelError::TensorSize {
                path: file.path.clone(),
                tensor: name.to_owned(),
                expected: count * elem_size,
                actual: bytes.len(),
            });
        }
        let shape = info.shape.clone();
        let data = match info.dtype {
            Dtype::F32 => TensorData::new(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<f32>>(),
                shape,
            ),
            Dtype::F16 => TensorData::new(
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect::<Vec<f16>>(),
                shape,
            ),
            // BF16: the only dtype left after the size check above.
            _ => TensorData::new(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                    .collect::<Vec<bf16>>(),
                shape,
            ),
        };
        // The pages just copied are not needed again: drop them from this
        // process so peak memory is the model plus one tensor, not the model
        // plus the whole file. Purely advisory, so a failure is ignored.
        // SAFETY: the mapping is read-only and file-backed; after DONTNEED a
        // later read of the range faults the same bytes back in from the file,
        // and no slice into the range outlives this function.
        let _ = unsafe {
            file.mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, file.data_start + start, end - start)
        };
        Ok(data)
    }
}
