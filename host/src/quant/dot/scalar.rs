//! Portable dot products: the exact integer sum of each block, then one float multiply-add per
//! block (`sum += (d_w * d_x) * isum`). The SIMD versions compute the same integer sums.

use super::{Kernel, blocks};
use crate::gguf::GgmlType;
use crate::quant::{BlockQ8K, Q8Blocks};
use kernels_gpu::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, bf16_to_f32, f16_to_f32, k_scales_mins,
};

pub(super) fn kernel(ty: GgmlType) -> Kernel {
    match ty {
        GgmlType::F32 => Kernel::F32(dot_f32),
        GgmlType::F16 => Kernel::F32(dot_f16),
        GgmlType::BF16 => Kernel::F32(dot_bf16),
        GgmlType::Q4_0 => Kernel::Q8(dot_q4_0),
        GgmlType::Q4_1 => Kernel::Q8(dot_q4_1),
        GgmlType::Q5_0 => Kernel::Q8(dot_q5_0),
        GgmlType::Q5_1 => Kernel::Q8(dot_q5_1),
        GgmlType::Q8_0 => Kernel::Q8(dot_q8_0),
        GgmlType::Q2K => Kernel::Q8K(dot_q2k),
        GgmlType::Q3K => Kernel::Q8K(dot_q3k),
        GgmlType::Q4K => Kernel::Q8K(dot_q4k),
        GgmlType::Q5K => Kernel::Q8K(dot_q5k),
        GgmlType::Q6K => Kernel::Q8K(dot_q6k),
    }
}

/// f32 dot with 8 independent partial sums (vectorizable), combined pairwise at the end.
fn dot_float<const W: usize>(row: &[u8], x: &[f32], decode: impl Fn([u8; W]) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (wc, wt) = row.as_chunks::<W>();
    let n8 = x.len() / 8 * 8;
    for (ws, xs) in wc[..n8].chunks_exact(8).zip(x[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += decode(ws[l]) * xs[l];
        }
    }
    debug_assert!(wt.is_empty());
    let mut tail = 0.0f32;
    for (w, &xv) in wc[n8..].iter().zip(&x[n8..]) {
        tail += decode(*w) * xv;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

pub(super) fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    dot_float::<4>(row, x, f32::from_le_bytes)
}

pub(super) fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    dot_float::<2>(row, x, |b| f16_to_f32(u16::from_le_bytes(b)))
}

pub(super) fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    dot_float::<2>(row, x, |b| bf16_to_f32(u16::from_le_bytes(b)))
}

/// Σ lo_nibble(qs[j]) * x[j] + hi_nibble(qs[j]) * x[j + 16], plus the fifth bits from `qh`.
#[inline]
fn isum_32(qs: &[u8; 16], qh: u32, x: &[i8; 32]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) as i32 | (((qh >> j) & 1) << 4) as i32;
        let hi = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
        s += lo * x[j] as i32 + hi * x[j + 16] as i32;
    }
    s
}

/// Σ_b f(block b, its quants, index b) over the blocks of a 32-element row.
#[inline]
fn sum_blocks<B: Copy + kernels_gpu::quant::Block<32>>(
    row: &[u8],
    x: &Q8Blocks,
    f: impl Fn(&B, &[i8; 32], usize) -> f32,
) -> f32 {
    let mut sumf = 0.0f32;
    for (b, (w, xq)) in blocks::<32, B>(row).iter().zip(x.qs()).enumerate() {
        sumf += f(w, xq, b);
    }
    sumf
}

pub(super) fn dot_q4_0(row: &[u8], x: &Q8Blocks) -> f32 {
    sum_blocks::<BlockQ4_0>(row, x, |w, xq, b| {
        // Quants are stored + 8: Σ (q - 8) x = Σ q x - 8 Σ x.
        let isum = isum_32(&w.qs, 0, xq) - 8 * x.sum()[b];
        (w.d() * x.d()[b]) * isum as f32
    })
}

pub(super) fn dot_q4_1(row: &[u8], x: &Q8Blocks) -> f32 {
    sum_blocks::<BlockQ4_1>(row, x, |w, xq, b| {
        let isum = isum_32(&w.qs, 0, xq);
        (w.d() * x.d()[b]) * isum as f32 + w.m() * x.s()[b]
    })
}

pub(super) fn dot_q5_0(row: &[u8], x: &Q8Blocks) -> f32 {
    sum_blocks::<BlockQ5_0>(row, x, |w, xq, b| {
        let isum = isum_32(&w.qs, w.qh(), xq) - 16 * x.sum()[b];
        (w.d() * x.d()[b]) * isum as f32
    })
}

pub(super) fn dot_q5_1(row: &[u8], x: &Q8Blocks) -> f32 {
    sum_blocks::<BlockQ5_1>(row, x, |w, xq, b| {
        let isum = isum_32(&w.qs, w.qh(), xq);
        (w.d() * x.d()[b]) * isum as f32 + w.m() * x.s()[b]
    })
}

pub(super) fn dot_q8_0(row: &[u8], x: &Q8Blocks) -> f32 {
    sum_blocks::<BlockQ8_0>(row, x, |w, xq, b| {
        let isum: i32 =
            w.qs.iter()
                .zip(xq)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
        (w.d() * x.d()[b]) * isum as f32
    })
}

/// Σ over 16 elements of u[l] * x[l], with unsigned weight quants `u`.
#[inline]
fn isum_16(u: impl Fn(usize) -> i32, x: &[i8]) -> i32 {
    (0..16).map(|l| u(l) * x[l] as i32).sum()
}

pub(super) fn dot_q2k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (w, x) in blocks::<256, BlockQ2K>(row).iter().zip(x) {
        let (mut sumi, mut summ) = (0i32, 0i32);
        for g in 0..16 {
            let (sc, m) = w.scale_min(g);
            // Group g: elements 16g..16g+16 are bits 2s of qs[32h + l], h = g/8, s = (g%8)/2.
            let (h, s, l0) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let q = &w.qs[32 * h + l0..32 * h + l0 + 16];
            let isum = isum_16(|l| ((q[l] >> (2 * s)) & 3) as i32, &x.qs[16 * g..]);
            sumi += sc as i32 * isum;
            summ += m as i32 * x.bsums[g] as i32;
        }
        sumf += (w.d() * x.d) * sumi as f32 - (w.dmin() * x.d) * summ as f32;
    }
    sumf
}

pub(super) fn dot_q3k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (w, x) in blocks::<256, BlockQ3K>(row).iter().zip(x) {
        let mut sumi = 0i32;
        for g in 0..16 {
            let (h, s, l0) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let q = &w.qs[32 * h + l0..32 * h + l0 + 16];
            let hm = &w.hmask[l0..l0 + 16];
            let bit = g / 2; // element i's high bit is bit i/32 of hmask[i % 32]
            // u = low | high << 2 in 0..8; the quant is u - 4.
            let isum = isum_16(
                |l| (((q[l] >> (2 * s)) & 3) | (((hm[l] >> bit) & 1) << 2)) as i32,
                &x.qs[16 * g..],
            );
            sumi += w.scale(g) * (isum - 4 * x.bsums[g] as i32);
        }
        sumf += (w.d() * x.d) * sumi as f32;
    }
    sumf
}

/// The Q4_K / Q5_K integer sums: Σ_j sc_j Σ q x and Σ_j m_j Σ x, for quants `q(i)` in 0..32.
#[inline]
fn k_sums(scales: &[u8; 12], q: impl Fn(usize) -> i32, x: &BlockQ8K) -> (i32, i32) {
    let sm = k_scales_mins(scales);
    let (mut sumi, mut summ) = (0i32, 0i32);
    for j in 0..8 {
        let isum: i32 = (0..32)
            .map(|l| q(32 * j + l) * x.qs[32 * j + l] as i32)
            .sum();
        sumi += sm[j] as i32 * isum;
        summ += sm[8 + j] as i32 * (x.bsums[2 * j] as i32 + x.bsums[2 * j + 1] as i32);
    }
    (sumi, summ)
}

pub(super) fn dot_q4k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (w, x) in blocks::<256, BlockQ4K>(row).iter().zip(x) {
        let q = |i: usize| ((w.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0x0f) as i32;
        let (sumi, summ) = k_sums(&w.scales, q, x);
        sumf += (w.d() * x.d) * sumi as f32 - (w.dmin() * x.d) * summ as f32;
    }
    sumf
}

pub(super) fn dot_q5k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (w, x) in blocks::<256, BlockQ5K>(row).iter().zip(x) {
        let q = |i: usize| {
            let lo = (w.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0x0f;
            let hi = (w.qh[i % 32] >> (i / 32)) & 1;
            (lo | (hi << 4)) as i32
        };
        let (sumi, summ) = k_sums(&w.scales, q, x);
        sumf += (w.d() * x.d) * sumi as f32 - (w.dmin() * x.d) * summ as f32;
    }
    sumf
}

pub(super) fn dot_q6k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0.0f32;
    for (w, x) in blocks::<256, BlockQ6K>(row).iter().zip(x) {
        let mut sumi = 0i32;
        for g in 0..16 {
            // Elements 16g..16g+16: half h, 32-element group s inside the half.
            let (h, s, l0) = (g / 8, (g % 8) / 2, 16 * (g % 2));
            let ql = &w.ql[64 * h + 32 * (s % 2) + l0..];
            let qh = &w.qh[32 * h + l0..];
            let u = |l: usize| {
                let lo = (ql[l] >> (4 * (s / 2))) & 0x0f;
                let hi = (qh[l] >> (2 * s)) & 3;
                (lo | (hi << 4)) as i32
            };
            // Quants are stored + 32: Σ (u - 32) x = Σ u x - 32 Σ x.
            let isum = isum_16(u, &x.qs[16 * g..]) - 32 * x.bsums[g] as i32;
            sumi += w.scale(g) * isum;
        }
        sumf += (w.d() * x.d) * sumi as f32;
    }
    sumf
}
