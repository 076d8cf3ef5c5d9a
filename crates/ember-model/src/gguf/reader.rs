//! The GGUF container (version 2 and 3): header, metadata key/values and
//! tensor descriptors, parsed with bounds checks on every read so that a
//! truncated or hostile file is an error, never a panic or a huge allocation.
//!
//! Written here rather than taken from a crate: the GGUF crates on crates.io
//! are small, thinly maintained, and either read through `std::io` (copying
//! tensor data) or panic on malformed input; the container itself is ~200
//! lines of straightforward little-endian reads.

use std::collections::HashMap;

/// Why the bytes are not a valid GGUF file. The caller adds the path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufFormatError {
    #[error("not a GGUF file (magic {0:#010x})")]
    Magic(u32),
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    Version(u32),
    #[error("truncated while reading {what} at byte {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("metadata key `{key}` has unknown value type {value_type}")]
    ValueType { key: String, value_type: u32 },
    #[error("{what} is not valid UTF-8")]
    Utf8 { what: &'static str },
    #[error("tensor `{tensor}` has {dims} dimensions (at most 4)")]
    Dimensions { tensor: String, dims: u32 },
    #[error("tensor `{tensor}` has an unknown type {ggml_type}")]
    TensorType { tensor: String, ggml_type: u32 },
    #[error("tensor `{tensor}`: {reason}")]
    TensorLayout { tensor: String, reason: String },
    #[error("metadata nests arrays too deeply")]
    Nesting,
}

type Result<T> = std::result::Result<T, GgufFormatError>;

/// A metadata value. Arrays of numbers are kept typed-erased as `Array`.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
}

impl MetadataValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::UInt(v) => Some(v),
            Self::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::UInt(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The GGML tensor types Ember can dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGML order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte range of the data in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    /// The shape in PyTorch order (outermost first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: HashMap<String, MetadataValue>,
    pub tensors: HashMap<String, TensorInfo>,
}

const MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: usize = 32;
const MAX_ARRAY_NESTING: usize = 4;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(GgufFormatError::Truncated {
            what,
            offset: self.pos,
        })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in the remaining bytes at `min_size` bytes each,
    /// so a lying count cannot trigger a huge allocation.
    fn count(&mut self, min_size: usize, what: &'static str) -> Result<usize> {
        let offset = self.pos;
        let n = self.u64(what)?;
        let remaining = self.bytes.len() - self.pos;
        usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_size.max(1)) <= remaining)
            .ok_or(GgufFormatError::Truncated { what, offset })
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        let len = self.count(1, what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufFormatError::Utf8 { what })
    }

    fn value(&mut self, key: &str, value_type: u32, depth: usize) -> Result<MetadataValue> {
        const W: &str = "metadata value";
        Ok(match value_type {
            0 => MetadataValue::UInt(u64::from(self.array::<1>(W)?[0])),
            1 => MetadataValue::Int(i64::from(self.array::<1>(W)?[0] as i8)),
            2 => MetadataValue::UInt(u64::from(u16::from_le_bytes(self.array(W)?))),
            3 => MetadataValue::Int(i64::from(i16::from_le_bytes(self.array(W)?))),
            4 => MetadataValue::UInt(u64::from(self.u32(W)?)),
            5 => MetadataValue::Int(i64::from(i32::from_le_bytes(self.array(W)?))),
            6 => MetadataValue::Float(f64::from(f32::from_le_bytes(self.array(W)?))),
            7 => MetadataValue::Bool(self.array::<1>(W)?[0] != 0),
            8 => MetadataValue::String(self.string(W)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufFormatError::Nesting);
                }
                let item_type = self.u32("array type")?;
                let len = self.count(1, "array length")?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value(key, item_type, depth + 1)?);
                }
                MetadataValue::Array(items)
            }
            10 => MetadataValue::UInt(self.u64(W)?),
            11 => MetadataValue::Int(i64::from_le_bytes(self.array(W)?)),
            12 => MetadataValue::Float(f64::from_le_bytes(self.array(W)?)),
            other => {
                return Err(GgufFormatError::ValueType {
                    key: key.to_owned(),
                    value_type: other,
                });
            }
        })
    }
}

/// Parses the header of a whole GGUF file held in `bytes` (usually a memory map),
/// checking that every tensor's data lies inside the file.
pub fn parse(bytes: &[u8]) -> Result<GgufHeader> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.u32("magic")?;
    if magic != MAGIC {
        return Err(GgufFormatError::Magic(magic));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufFormatError::Version(version));
    }
    // Each tensor descriptor is at least 24 bytes, each key/value at least 12.
    let tensor_count = c.count(24, "tensor count")?;
    let kv_count = c.count(12, "metadata count")?;

    let mut metadata = HashMap::with_capacity(kv_count);
    for _ in 0..kv_count {
        let key = c.string("metadata key")?;
        let value_type = c.u32("metadata type")?;
        let value = c.value(&key, value_type, 0)?;
        metadata.insert(key, value);
    }

    let mut raw = Vec::with_capacity(tensor_count);
    for _ in 0..tensor_count {
        let name = c.string("tensor name")?;
        let n_dims = c.u32("tensor dimensions")?;
        if n_dims > 4 {
            return Err(GgufFormatError::Dimensions { tensor: name, dims: n_dims });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64("tensor shape")?;
            dims.push(usize::try_from(d).map_err(|_| GgufFormatError::TensorLayout {
                tensor: name.clone(),
                reason: format!("dimension {d} is too large"),
            })?);
        }
        let type_id = c.u32("tensor type")?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufFormatError::TensorType {
            tensor: name.clone(),
            ggml_type: type_id,
        })?;
        let offset = c.u64("tensor offset")?;
        raw.push((name, dims, ggml_type, offset));
    }

    let alignment = metadata
        .get("general.alignment")
        .and_then(MetadataValue::as_u64)
        .and_then(|a| usize::try_from(a).ok())
        .filter(|&a| a > 0 && a.is_power_of_two())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let data_start = c.pos.div_ceil(alignment) * alignment;

    let mut tensors = HashMap::with_capacity(raw.len());
    for (name, dims, ggml_type, offset) in raw {
        let layout_err = |reason: String| GgufFormatError::TensorLayout {
            tensor: name.clone(),
            reason,
        };
        let elements = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| layout_err("element count overflows".into()))?;
        let (block_elems, block_bytes) = ggml_type.block();
        let inner = dims.first().copied().unwrap_or(1);
        if inner % block_elems != 0 {
            return Err(layout_err(format!(
                "innermost dimension {inner} is not a multiple of the {ggml_type:?} block size {block_elems}"
            )));
        }
        let len = (elements / block_elems)
            .checked_mul(block_bytes)
            .ok_or_else(|| layout_err("byte size overflows".into()))?;
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data_start))
            .ok_or_else(|| layout_err(format!("offset {offset} is too large")))?;
        if start.checked_add(len).is_none_or(|end| end > bytes.len()) {
            return Err(layout_err(format!(
                "data [{start}, +{len}) runs past the end of the file ({} bytes)",
                bytes.len()
            )));
        }
        tensors.insert(
            name,
            TensorInfo {
                dims,
                ggml_type,
                start,
                len,
            },
        );
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
    })
}
