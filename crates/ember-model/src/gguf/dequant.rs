//! Dequantization of GGML block formats to f32, following ggml's reference
//! `dequantize_row_*` (and the `gguf` Python package, whose outputs the tests
//! compare against block by block).

use half::{bf16, f16};

use super::reader::GgmlType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `data` (a whole number of blocks of `ggml_type`) into `out`.
/// The caller guarantees `data.len()` is `out.len() / block_elems * block_bytes`.
pub fn dequantize(ggml_type: GgmlType, data: &[u8], out: &mut Vec<f32>) {
    let (block_elems, block_bytes) = ggml_type.block();
    out.reserve(data.len() / block_bytes * block_elems);
    for block in data.chunks_exact(block_bytes) {
        match ggml_type {
            GgmlType::F32 => out.push(f32::from_le_bytes([block[0], block[1], block[2], block[3]])),
            GgmlType::F16 => out.push(f16_at(block, 0)),
            GgmlType::BF16 => out.push(bf16::from_le_bytes([block[0], block[1]]).to_f32()),
            GgmlType::Q8_0 => q8_0(block, out),
            GgmlType::Q4_0 => q4_0(block, out),
            GgmlType::Q4_1 => q4_1(block, out),
            GgmlType::Q5_0 => q5_0(block, out),
            GgmlType::Q5_1 => q5_1(block, out),
            GgmlType::Q4K => q4_k(block, out),
            GgmlType::Q5K => q5_k(block, out),
            GgmlType::Q6K => q6_k(block, out),
        }
    }
}

/// `d: f16, qs: [i8; 32]`, x = d * q.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
}

/// `d: f16, qs: [u8; 16]`: low nibbles are elements 0..16, high nibbles 16..32; x = d * (q - 8).
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| d * (f32::from(q & 0x0F) - 8.0)));
    out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - 8.0)));
}

/// `d: f16, m: f16, qs: [u8; 16]`, x = d * q + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0F) + m));
    out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
}

/// The 32 five-bit values of a Q5_0/Q5_1 block: `qh: u32` holds the fifth
/// bit of element `j` at bit `j`; `qs` the low nibbles as in Q4_0.
fn five_bit_values(qh: &[u8], qs: &[u8]) -> impl Iterator<Item = f32> {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let low = qs.iter().map(|&q| q & 0x0F).chain(qs.iter().map(|&q| q >> 4));
    low.enumerate()
        .map(move |(j, q)| f32::from(q | (((qh >> j) & 1) as u8) << 4))
}

/// `d: f16, qh: [u8; 4], qs: [u8; 16]`, x = d * (q - 16).
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(five_bit_values(&b[2..6], &b[6..22]).map(|q| d * (q - 16.0)));
}

/// `d: f16, m: f16, qh: [u8; 4], qs: [u8; 16]`, x = d * q + m.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    out.extend(five_bit_values(&b[4..8], &b[8..24]).map(|q| d * q + m));
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block: 6-bit
/// factors unpacked from `s`, times the block's `d` and `dmin`.
fn scale_min_k4(j: usize, s: &[u8], d: f32, dmin: f32) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    };
    (d * f32::from(sc), dmin * f32::from(m))
}

/// The 32 bytes holding sub-block `sub`'s low 4 bits, and the shift to them:
/// sub-blocks pair up over one 32-byte group, low nibbles then high.
fn nibbles(qs: &[u8], sub: usize) -> (&[u8], usize) {
    (&qs[(sub / 2) * 32..(sub / 2) * 32 + 32], (sub % 2) * 4)
}

/// `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: 8 sub-blocks of 32,
/// x = d * sc * q - dmin * m.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for sub in 0..8 {
        let (scale, min) = scale_min_k4(sub, scales, d, dmin);
        let (group, shift) = nibbles(qs, sub);
        out.extend(group.iter().map(|&q| scale * f32::from((q >> shift) & 0x0F) - min));
    }
}

/// Q4_K plus a fifth bit per element in `qh: [u8; 32]` (bit `sub` of `qh[l]`).
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for sub in 0..8 {
        let (scale, min) = scale_min_k4(sub, scales, d, dmin);
        let (group, shift) = nibbles(qs, sub);
        out.extend(group.iter().zip(qh).map(|(&q, &h)| {
            let q = ((q >> shift) & 0x0F) | (((h >> sub) & 1) << 4);
            scale * f32::from(q) - min
        }));
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`: two halves of 128,
/// each four runs of 32; 16 scales, one per 16 elements; x = d * sc * (q - 32).
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let (ql, qh) = (&ql[half * 64..half * 64 + 64], &qh[half * 32..half * 32 + 32]);
        for run in 0..4 {
            let low_base = if run % 2 == 0 { 0 } else { 32 };
            let low_shift = if run < 2 { 0 } else { 4 };
            for l in 0..32 {
                let low = (ql[low_base + l] >> low_shift) & 0x0F;
                let high = (qh[l] >> (2 * run)) & 0x03;
                let q = i32::from(low | (high << 4)) - 32;
                let element = half * 128 + run * 32 + l;
                let sc = f32::from(scales[element / 16] as i8);
                out.push(d * sc * q as f32);
            }
        }
    }
}
