//! The paged KV pool of the fast path, in host memory: for every layer, a
//! keys and a values array of `slots x (kv_heads * head_dim)`, in f32 or f16.
//!
//! The pool is one anonymous memory mapping: its whole size is reserved up
//! front but the kernel commits a page only when it is first written, so
//! resident memory follows the tokens actually cached (Burn's `zeros` would
//! write, and so commit, all of it at start).

use half::f16;
use half::slice::HalfFloatSliceExt;
use memmap2::MmapMut;

use super::kernels;

/// Element type of cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// Exact: what the generic path stores.
    #[default]
    F32,
    /// Half the memory; keys and values rounded to f16.
    F16,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }
}

/// Keys and values of every layer.
pub struct HostKv {
    map: MmapMut,
    layers: usize,
    block_size: usize,
    slots: usize,
    width: usize,
    dtype: KvDtype,
}

impl HostKv {
    /// Reserves `layers x 2 x (blocks * block_size) x width` elements
    /// (committed on first write).
    pub fn new(layers: usize, blocks: usize, block_size: usize, width: usize, dtype: KvDtype) -> std::io::Result<Self> {
        let slots = blocks * block_size;
        let bytes = (layers * 2 * slots * width * dtype.size()).max(1);
        Ok(Self {
            map: MmapMut::map_anon(bytes)?,
            layers,
            block_size,
            slots,
            width,
            dtype,
        })
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Element offset of `(layer, keys = 0 | values = 1, slot)`.
    fn offset(&self, layer: usize, which: usize, slot: usize) -> usize {
        ((layer * 2 + which) * self.slots + slot) * self.width
    }

    /// Writes one token's keys and values (`width` each) into `slot` of `layer`.
    pub fn write(&mut self, layer: usize, slot: usize, keys: &[f32], values: &[f32]) {
        let width = self.width;
        for (which, row) in [(0, keys), (1, values)] {
            let at = self.offset(layer, which, slot);
            match self.dtype {
                KvDtype::F32 => self.f32_mut()[at..at + width].copy_from_slice(row),
                KvDtype::F16 => self.f16_mut()[at..at + width].convert_from_f32_slice(row),
            }
        }
    }

    /// A read view of one layer.
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        KvLayer {
            kv: self,
            keys: self.offset(layer, 0, 0),
            values: self.offset(layer, 1, 0),
        }
    }

    /// A pool with `extra` more blocks and the same contents (one growing
    /// sequence's private cache).
    pub fn grown(&self, extra: usize) -> std::io::Result<Self> {
        let blocks = self.slots / self.block_size + extra;
        let mut bigger = Self::new(self.layers, blocks, self.block_size, self.width, self.dtype)?;
        let size = self.dtype.size();
        for layer in 0..self.layers {
            for which in 0..2 {
                let (from, to) = (self.offset(layer, which, 0) * size, bigger.offset(layer, which, 0) * size);
                let len = self.slots * self.width * size;
                bigger.map[to..to + len].copy_from_slice(&self.map[from..from + len]);
            }
        }
        Ok(bigger)
    }

    fn f32s(&self) -> &[f32] {
        // SAFETY: the mapping is page-aligned and a whole number of elements
        // long; every bit pattern is a valid f32.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.map.len() / 4) }
    }

    fn f32_mut(&mut self) -> &mut [f32] {
        // SAFETY: as `f32s`, and the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.map.len() / 4) }
    }

    fn f16s(&self) -> &[f16] {
        // SAFETY: as `f32s`, for 2-byte elements.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.map.len() / 2) }
    }

    fn f16_mut(&mut self) -> &mut [f16] {
        // SAFETY: as `f16s`, and the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.map.len() / 2) }
    }
}

/// One layer's keys and values, read by slot and KV head.
pub struct KvLayer<'a> {
    kv: &'a HostKv,
    keys: usize,
    values: usize,
}

impl KvLayer<'_> {
    pub fn block_size(&self) -> usize {
        self.kv.block_size
    }

    /// Elements per slot (all KV heads).
    pub fn width(&self) -> usize {
        self.kv.width
    }

    /// Head `head`'s key at `slot`; f16 caches convert into `scratch`.
    #[inline(always)]
    pub fn key<'s>(&'s self, slot: usize, head: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        self.row(self.keys, slot, head, scratch)
    }

    /// Head `head`'s keys of `n` consecutive slots from `slot` (one
    /// block's), as f32 rows of `d` and their stride: read in place from an
    /// f32 cache (the slice runs on to the layer's end), converted into
    /// `scratch` (`n * d` floats or more) from an f16 one.
    #[inline(always)]
    pub fn key_rows<'s>(&'s self, slot: usize, n: usize, head: usize, d: usize, scratch: &'s mut [f32]) -> (&'s [f32], usize) {
        self.rows(self.keys, slot, n, head, d, scratch)
    }

    /// [`KvLayer::key_rows`] for the values.
    #[inline(always)]
    pub fn value_rows<'s>(&'s self, slot: usize, n: usize, head: usize, d: usize, scratch: &'s mut [f32]) -> (&'s [f32], usize) {
        self.rows(self.values, slot, n, head, d, scratch)
    }

    #[inline(always)]
    fn rows<'s>(&'s self, base: usize, slot: usize, n: usize, head: usize, d: usize, scratch: &'s mut [f32]) -> (&'s [f32], usize) {
        let width = self.kv.width;
        match self.kv.dtype {
            KvDtype::F32 => (&self.kv.f32s()[base + slot * width + head * d..base + self.kv.slots * width], width),
            KvDtype::F16 => {
                for (p, out) in scratch.chunks_exact_mut(d).take(n).enumerate() {
                    let at = base + (slot + p) * width + head * d;
                    kernels::f16_to_f32(&self.kv.f16s()[at..at + d], out);
                }
                (scratch, d)
            }
        }
    }

    #[inline(always)]
    fn row<'s>(&'s self, base: usize, slot: usize, head: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        let d = scratch.len();
        let at = base + slot * self.kv.width + head * d;
        match self.kv.dtype {
            KvDtype::F32 => &self.kv.f32s()[at..at + d],
            KvDtype::F16 => {
                kernels::f16_to_f32(&self.kv.f16s()[at..at + d], scratch);
                scratch
            }
        }
    }
}
