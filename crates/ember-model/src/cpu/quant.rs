//! Quantized weight matrices kept as GGML blocks, row by row, the way a
//! GGUF file stores them: `[rows, cols]` with each row a whole number of
//! blocks. Rows are the output features of a projection, so a
//! matrix-vector product reads each row once, dequantizing in registers.

use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

use crate::gguf::GgmlType;
use crate::gguf::dequant::dequantize;

/// The block formats the CPU kernels read directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    /// All formats, for tests and error messages.
    pub const ALL: [Self; 8] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
    ];

    /// The kernel format of a GGUF tensor type; `None` for float types,
    /// which are dequantized at load.
    pub fn from_ggml(ggml: GgmlType) -> Option<Self> {
        Some(match ggml {
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q5_1 => Self::Q5_1,
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4K => Self::Q4K,
            GgmlType::Q5K => Self::Q5K,
            GgmlType::Q6K => Self::Q6K,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
        })
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4K => GgmlType::Q4K,
            Self::Q5K => GgmlType::Q5K,
            Self::Q6K => GgmlType::Q6K,
        }
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        self.ggml().block()
    }
}

/// Where a matrix's bytes live: in the mapped model file (pages are shared
/// with the page cache and only count as resident once read) or owned.
#[derive(Clone)]
pub enum WeightBytes {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    Owned(Arc<[u8]>),
}

impl WeightBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped { map, range } => &map[range.clone()],
            Self::Owned(bytes) => bytes,
        }
    }
}

/// A `[rows, cols]` matrix of GGML blocks.
#[derive(Clone)]
pub struct QuantMatrix {
    ty: QuantType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    bytes: WeightBytes,
}

/// Why bytes cannot be a matrix of the given shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantShapeError {
    #[error("a row of {cols} is not a whole number of {ty:?} blocks of {block}")]
    PartialBlock { ty: QuantType, cols: usize, block: usize },
    #[error("{rows} x {cols} {ty:?} takes {expected} bytes, got {actual}")]
    Length {
        ty: QuantType,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
}

impl QuantMatrix {
    pub fn new(ty: QuantType, rows: usize, cols: usize, bytes: WeightBytes) -> Result<Self, QuantShapeError> {
        let (block, block_bytes) = ty.block();
        if !cols.is_multiple_of(block) {
            return Err(QuantShapeError::PartialBlock { ty, cols, block });
        }
        let row_bytes = cols / block * block_bytes;
        let actual = bytes.as_slice().len();
        if actual != rows * row_bytes {
            return Err(QuantShapeError::Length {
                ty,
                rows,
                cols,
                expected: rows * row_bytes,
                actual,
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            bytes,
        })
    }

    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All rows' blocks, row after row.
    pub fn data(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` as f32, appended to `out`.
    pub fn dequantize_row_into(&self, r: usize, out: &mut Vec<f32>) {
        dequantize(self.ty.ggml(), self.row(r), out);
    }

    /// The whole matrix as f32, `[rows, cols]` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        dequantize(self.ty.ggml(), self.data(), &mut out);
        out
    }

    /// The same matrix with its rows reordered: row `i` of the result is row
    /// `order[i]` of this one (llama.cpp's q/k permutation, undone).
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        let mut bytes = Vec::with_capacity(self.rows * self.row_bytes);
        for &r in order {
            bytes.extend_from_slice(self.row(r));
        }
        Self {
            bytes: WeightBytes::Owned(bytes.into()),
            ..self.clone()
        }
    }
}

/// Quantizes f32 rows to Q8_0 or Q4_0 as llama.cpp's reference quantizer
/// does (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref` in ggml-quants.c):
/// one f16 scale per 32 values, round to nearest.
pub fn quantize(ty: QuantType, values: &[f32], out: &mut Vec<u8>) -> Result<(), QuantizeError> {
    if !values.len().is_multiple_of(32) {
        return Err(QuantizeError::PartialBlock(values.len()));
    }
    for block in values.chunks_exact(32) {
        match ty {
            QuantType::Q8_0 => {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
            }
            QuantType::Q4_0 => {
                // The value of largest magnitude, with its sign, maps to -8.
                let max = block.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
            }
            other => return Err(QuantizeError::Unsupported(other)),
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantizeError {
    #[error("in-situ quantization supports q8_0 and q4_0, not {0:?}")]
    Unsupported(QuantType),
    #[error("{0} values are not a whole number of 32-value blocks")]
    PartialBlock(usize),
}
