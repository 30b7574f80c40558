//! Activations quantized for integer dot products, as ggml does on the CPU (its `vec_dot_type`):
//! the input vector of a matvec is quantized once to 8 bits per element, then every weight row is
//! dotted with it in integer arithmetic, one float multiply per block.
//!
//! The formats are this engine's own (nothing is stored in files): an f32 scale per block and
//! precomputed sums of the quants, which the dot products use to apply the weights' offsets and
//! minimums without touching the quants twice.

use super::QuantError;
use crate::gguf::GgmlType;
use kernels_gpu::quant::{QK_K, QK32};

/// Activations for the 32-element weight formats (Q4_0 … Q8_0): per block of 32, a scale and
/// i8 quants, element `i` ≈ `d * qs[i]` with `|qs[i]| <= 127`.
///
/// Stored as a structure of arrays, so that SIMD kernels load the scales of 8 consecutive blocks
/// with one instruction.
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Blocks {
    d: Vec<f32>,
    s: Vec<f32>,
    sum: Vec<i32>,
    qs: Vec<[i8; QK32]>,
}

impl Q8Blocks {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.d.len()
    }

    pub fn is_empty(&self) -> bool {
        self.d.is_empty()
    }

    /// Scale of each block: max |x| / 127 (0 for an all-zero block; NaN if the block had a NaN or
    /// an infinity).
    pub fn d(&self) -> &[f32] {
        &self.d
    }

    /// `d * sum` of each block (for the minimums of Q4_1 and Q5_1, and the offsets of Q4_0 and
    /// Q5_0).
    pub fn s(&self) -> &[f32] {
        &self.s
    }

    /// Sum of the quants of each block.
    pub fn sum(&self) -> &[i32] {
        &self.sum
    }

    /// The quants of each block.
    pub fn qs(&self) -> &[[i8; QK32]] {
        &self.qs
    }

    /// The GPU's layout of these blocks (`kernels-gpu/src/q8_act.rs`): the quants as bytes, and
    /// `[d, s]` per block.
    pub fn device_layout(&self) -> (Vec<u8>, Vec<f32>) {
        let qs = self.qs.iter().flatten().map(|&q| q as u8).collect();
        let ds = self
            .d
            .iter()
            .zip(&self.s)
            .flat_map(|(&d, &s)| [d, s])
            .collect();
        (qs, ds)
    }
}

/// An activation super-block for the K-quants.
///
/// Element `i` ≈ `d * qs[i]`; `|qs[i]| <= 127`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    /// Scale: max |x| / 127 (0 for an all-zero block; NaN if the block had a NaN or infinity).
    pub d: f32,
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 quants (for the K-quants' minimums and offsets).
    pub bsums: [i16; QK_K / 16],
}

/// Which activation format a weight type is dotted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Plain f32 (weights F32, F16, BF16).
    F32,
    /// [`Q8Blocks`] (weights Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
    Q8,
    /// [`BlockQ8K`] (weights Q2_K … Q6_K).
    Q8K,
}

impl ActKind {
    /// The activation format for weights of type `ty`.
    pub fn for_weights(ty: GgmlType) -> ActKind {
        match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActKind::F32,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                ActKind::Q8
            }
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
                ActKind::Q8K
            }
        }
    }

    /// Elements per activation block.
    pub fn block_size(self) -> usize {
        match self {
            ActKind::F32 => 1,
            ActKind::Q8 => QK32,
            ActKind::Q8K => QK_K,
        }
    }
}

/// An activation vector prepared for dot products with one kind of weights. Build it once per
/// input vector and reuse it for every row (and every matrix of the same weight kind).
#[derive(Clone, Debug, PartialEq)]
pub enum QuantizedVec {
    F32(Vec<f32>),
    Q8(Q8Blocks),
    Q8K(Vec<BlockQ8K>),
}

impl QuantizedVec {
    /// Prepares `x` for dot products with weights of type `ty`.
    pub fn for_weights(ty: GgmlType, x: &[f32]) -> Result<Self, QuantError> {
        Self::new(ActKind::for_weights(ty), x)
    }

    /// Prepares `x` in the format `kind`. Its length must be a whole number of blocks.
    pub fn new(kind: ActKind, x: &[f32]) -> Result<Self, QuantError> {
        if !x.len().is_multiple_of(kind.block_size()) {
            return Err(QuantError::ActivationLength {
                kind,
                n: x.len(),
                block_size: kind.block_size(),
            });
        }
        Ok(match kind {
            ActKind::F32 => QuantizedVec::F32(x.to_vec()),
            ActKind::Q8 => QuantizedVec::Q8(quantize_q8(x)),
            ActKind::Q8K => QuantizedVec::Q8K(
                x.as_chunks::<QK_K>()
                    .0
                    .iter()
                    .map(quantize_block_q8k)
                    .collect(),
            ),
        })
    }

    pub fn kind(&self) -> ActKind {
        match self {
            QuantizedVec::F32(_) => ActKind::F32,
            QuantizedVec::Q8(_) => ActKind::Q8,
            QuantizedVec::Q8K(_) => ActKind::Q8K,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            QuantizedVec::F32(v) => v.len(),
            QuantizedVec::Q8(v) => v.len() * QK32,
            QuantizedVec::Q8K(v) => v.len() * QK_K,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values the integer dot products actually see (`d * q`), for error analysis in tests.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            QuantizedVec::F32(v) => v.clone(),
            QuantizedVec::Q8(v) => {
                v.qs.iter()
                    .zip(&v.d)
                    .flat_map(|(qs, &d)| qs.map(|q| d * q as f32))
                    .collect()
            }
            QuantizedVec::Q8K(v) => v
                .iter()
                .flat_map(|b| b.qs.map(|q| b.d * q as f32))
                .collect(),
        }
    }

    /// The scale of each block, in order (empty for F32).
    pub fn block_scales(&self) -> Vec<f32> {
        match self {
            QuantizedVec::F32(_) => Vec::new(),
            QuantizedVec::Q8(v) => v.d.clone(),
            QuantizedVec::Q8K(v) => v.iter().map(|b| b.d).collect(),
        }
    }
}

/// Scale and quants of one block: `d = max |x| / 127`, `q = round_half_even(x / d)`.
///
/// A NaN or infinity in the block makes `d` NaN, so the dot products return NaN instead of
/// silently dropping it.
#[inline]
fn quantize_into<const N: usize>(x: &[f32; N], qs: &mut [i8; N]) -> f32 {
    // Written as plain comparisons and ORs so that the loops vectorize.
    let mut amax = 0.0f32;
    let mut nan = false;
    for &v in x {
        let a = v.abs();
        amax = if a > amax { a } else { amax };
        nan |= v.is_nan();
    }
    if nan || amax == f32::INFINITY {
        *qs = [0; N];
        return f32::NAN;
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // 1.5 * 2^23: adding and subtracting it rounds |v| < 2^22 to the nearest integer, ties to
    // even, in plain f32 arithmetic (portable and vectorizable, unlike a libm call).
    const ROUND: f32 = 12_582_912.0;
    for (q, &v) in qs.iter_mut().zip(x) {
        let r = (v * id + ROUND) - ROUND;
        // |v * id| <= 127 up to rounding, so r is an integer in -127..=127 and both
        // conversions are exact.
        *q = r as i32 as i8;
    }
    d
}

fn quantize_q8(x: &[f32]) -> Q8Blocks {
    let n = x.len() / QK32;
    let mut out = Q8Blocks {
        d: Vec::with_capacity(n),
        s: Vec::with_capacity(n),
        sum: Vec::with_capacity(n),
        qs: Vec::with_capacity(n),
    };
    for block in x.as_chunks::<QK32>().0 {
        let mut qs = [0i8; QK32];
        let d = quantize_into(block, &mut qs);
        let sum = qs.iter().map(|&q| q as i32).sum::<i32>();
        out.d.push(d);
        out.s.push(d * sum as f32);
        out.sum.push(sum);
        out.qs.push(qs);
    }
    out
}

fn quantize_block_q8k(x: &[f32; QK_K]) -> BlockQ8K {
    let mut qs = [0i8; QK_K];
    let d = quantize_into(x, &mut qs);
    let mut bsums = [0i16; QK_K / 16];
    for (s, g) in bsums.iter_mut().zip(qs.as_chunks::<16>().0) {
        *s = g.iter().map(|&q| q as i16).sum();
    }
    BlockQ8K { d, qs, bsums }
}
