//! Dot products of a weight row (any supported type, as stored in GGUF) with an activation
//! vector, and the matrix-vector product built on them: the hot loop of the CPU backend.
//!
//! Quantized weights are dotted with quantized activations ([`QuantizedVec`]) in integer
//! arithmetic: per block, the sum of `q_w * q_x` is exact in i32 and one float multiply-add by
//! `d_w * d_x` accumulates it (ggml's scheme). The weights' offsets (Q4_0's 8, Q5_0's 16, Q6_K's
//! 32, Q3_K's 4) and minimums (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) are applied with the precomputed sums
//! of the activation quants, so unsigned weight quants meet signed activation quants in one
//! `u8 x i8` multiply.
//!
//! Implementations ([`Isa`]): a portable scalar one; AVX2 (x86_64 with AVX2, FMA and F16C); and
//! AVX-512 (F/BW/VL, for Q5_0 and Q5_1). The best one the CPU has is selected at run
//! time. All compute the same exact integer sums per block; they differ only in the order of the
//! float accumulation.
//!
//! [`vec_dot_reference`] is the yardstick: dequantize, then dot in f64.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::borrow::Cow;

use rayon::prelude::*;

use super::{ActKind, BlockQ8K, Q8Blocks, QuantError, QuantizedVec, dequantize_row_to_vec};
use crate::gguf::GgmlType;
use kernels_gpu::quant::{Block, read_block};

/// A dot-product implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust; runs everywhere.
    Scalar,
    /// x86_64 AVX2 + FMA + F16C.
    Avx2,
    /// x86_64 AVX-512 F/BW/VL on 256-bit vectors (plus AVX2, FMA, F16C): Q5_0 and Q5_1 use mask
    /// registers for their fifth bits; the other types run their AVX2 kernels.
    Avx512,
}

impl Isa {
    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The fastest implementation this CPU can run.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// Every implementation this CPU can run (for tests that compare them).
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.is_available())
            .collect()
    }
}

/// One dot-product kernel: weight row bytes (validated length) with activations of its kind.
///
/// `unsafe fn` because SIMD kernels may only run on a CPU that has their features; [`kernel`]
/// hands out only kernels of an available [`Isa`].
#[derive(Clone, Copy)]
enum Kernel {
    F32(unsafe fn(&[u8], &[f32]) -> f32),
    Q8(unsafe fn(&[u8], &Q8Blocks) -> f32),
    Q8K(unsafe fn(&[u8], &[BlockQ8K]) -> f32),
}

/// The kernel of `isa` for weights of type `ty`, or an error if the CPU cannot run `isa`.
fn kernel(isa: Isa, ty: GgmlType) -> Result<Kernel, QuantError> {
    if !isa.is_available() {
        return Err(QuantError::IsaUnavailable(isa));
    }
    Ok(match isa {
        Isa::Scalar => scalar::kernel(ty),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::kernel(ty),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::kernel_avx512(ty),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => scalar::kernel(ty), // unreachable: not available
    })
}

impl Kernel {
    /// Runs the kernel on one row. The caller validated the row length and the activation kind.
    #[inline]
    fn run(self, row: &[u8], x: &QuantizedVec) -> f32 {
        // SAFETY (all arms): `self` came from `kernel`, which checked that this CPU supports the
        // kernel's instruction set.
        match (self, x) {
            (Kernel::F32(f), QuantizedVec::F32(x)) => unsafe { f(row, x) },
            (Kernel::Q8(f), QuantizedVec::Q8(x)) => unsafe { f(row, x) },
            (Kernel::Q8K(f), QuantizedVec::Q8K(x)) => unsafe { f(row, x) },
            // Ruled out by `check_dot` before any kernel runs.
            _ => f32::NAN,
        }
    }
}

/// Checks that `row` holds exactly `x.len()` elements of `ty` and that `x` has the activation
/// kind `ty` is dotted with.
fn check_dot(ty: GgmlType, row: &[u8], x: &QuantizedVec) -> Result<(), QuantError> {
    let expected = ActKind::for_weights(ty);
    if x.kind() != expected {
        return Err(QuantError::ActivationKind {
            ty,
            expected,
            found: x.kind(),
        });
    }
    QuantError::check_row(ty, x.len(), row)
}

/// Dot product of one weight row (type `ty`, raw GGUF bytes) with prepared activations, using
/// the fastest implementation this CPU has.
pub fn vec_dot(ty: GgmlType, row: &[u8], x: &QuantizedVec) -> Result<f32, QuantError> {
    vec_dot_with(Isa::best(), ty, row, x)
}

/// [`vec_dot`] with a chosen implementation (errors if this CPU cannot run it).
pub fn vec_dot_with(
    isa: Isa,
    ty: GgmlType,
    row: &[u8],
    x: &QuantizedVec,
) -> Result<f32, QuantError> {
    check_dot(ty, row, x)?;
    Ok(kernel(isa, ty)?.run(row, x))
}

/// The reference dot product: the row dequantized exactly (as [`super::dequantize_row`]), then
/// dotted with the unquantized `x`, accumulated in f64.
pub fn vec_dot_reference(ty: GgmlType, row: &[u8], x: &[f32]) -> Result<f64, QuantError> {
    let w = dequantize_row_to_vec(ty, row, x.len())?;
    Ok(w.iter()
        .zip(x)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum::<f64>())
}

/// `y = W x` for a row-major matrix `W` of `rows` rows of `cols` elements of type `ty` (GGUF
/// layout: `weights` is `rows` consecutive rows). Quantizes `x` for `ty`, then runs the rows in
/// parallel (rayon) with the fastest implementation.
pub fn matvec(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), QuantError> {
    if x.len() != cols {
        return Err(QuantError::Length {
            what: "matvec input x",
            expected: cols,
            found: x.len(),
        });
    }
    let xq = QuantizedVec::for_weights(ty, x)?;
    matvec_quantized(ty, weights, rows, &xq, y)
}

/// [`matvec`] with activations already prepared (share one [`QuantizedVec`] between the
/// matrices that read the same input, such as Q, K and V).
pub fn matvec_quantized(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    x: &QuantizedVec,
    y: &mut [f32],
) -> Result<(), QuantError> {
    matvec_with(Isa::best(), ty, weights, rows, x, y)
}

/// Rows per parallel task: enough work per task (~64 KiB of weights) to amortize scheduling.
fn rows_per_task(row_bytes: usize, rows: usize) -> usize {
    (65536 / row_bytes.max(1)).clamp(1, rows.max(1))
}

/// [`matvec_quantized`] with a chosen implementation.
pub fn matvec_with(
    isa: Isa,
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    x: &QuantizedVec,
    y: &mut [f32],
) -> Result<(), QuantError> {
    let cols = x.len();
    let row_bytes = ty.row_bytes(cols).ok_or(QuantError::PartialBlock {
        ty,
        n: cols,
        block_size: ty.block_size(),
    })?;
    if y.len() != rows {
        return Err(QuantError::Length {
            what: "matvec output y",
            expected: rows,
            found: y.len(),
        });
    }
    let expected = rows.saturating_mul(row_bytes);
    if weights.len() != expected {
        return Err(QuantError::ByteLength {
            ty,
            n: rows.saturating_mul(cols),
            expected,
            found: weights.len(),
        });
    }
    if rows == 0 {
        return Ok(());
    }
    check_dot(ty, &weights[..row_bytes], x)?;
    let k = kernel(isa, ty)?;
    let per_task = rows_per_task(row_bytes, rows);
    let run = |(ys, ws): (&mut [f32], &[u8])| {
        for (yi, row) in ys.iter_mut().zip(ws.chunks_exact(row_bytes)) {
            *yi = k.run(row, x);
        }
    };
    if per_task >= rows {
        run((y, weights));
    } else {
        y.par_chunks_mut(per_task)
            .zip(weights.par_chunks(per_task * row_bytes))
            .for_each(run);
    }
    Ok(())
}

/// `out[i][r] = W[r] · x[i]` for a batch of `n = x.len() / cols` activation rows (row-major
/// `n × cols`) and the same `W` as [`matvec`]; `out` is row-major `n × rows`. Every weight row is
/// read once for the whole batch (prefill). Each activation row is quantized once; row `i` of
/// the result equals `matvec` of `x[i]` exactly.
pub fn matmul(
    ty: GgmlType,
    weights: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<(), QuantError> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(QuantError::Length {
            what: "matmul input x (a whole number of rows of `cols`)",
            expected: cols.max(1) * (x.len() / cols.max(1)),
            found: x.len(),
        });
    }
    let n = x.len() / cols;
    if out.len() != n * rows {
        return Err(QuantError::Length {
            what: "matmul output (n x rows)",
            expected: n * rows,
            found: out.len(),
        });
    }
    let xs = x
        .chunks_exact(cols)
        .map(|xi| QuantizedVec::for_weights(ty, xi))
        .collect::<Result<Vec<_>, _>>()?;
    if n == 1 {
        return matvec_quantized(ty, weights, rows, &xs[0], out);
    }
    let row_bytes = ty.row_bytes(cols).ok_or(QuantError::PartialBlock {
        ty,
        n: cols,
        block_size: ty.block_size(),
    })?;
    let expected = rows.saturating_mul(row_bytes);
    if weights.len() != expected {
        return Err(QuantError::ByteLength {
            ty,
            n: rows.saturating_mul(cols),
            expected,
            found: weights.len(),
        });
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    check_dot(ty, &weights[..row_bytes], &xs[0])?;
    let k = kernel(Isa::best(), ty)?;
    // Computed transposed (weight row major), so that each task writes one contiguous range.
    let mut t = vec![0.0f32; rows * n];
    let per_task = rows_per_task(row_bytes * n, rows);
    t.par_chunks_mut(per_task * n)
        .zip(weights.par_chunks(per_task * row_bytes))
        .for_each(|(ts, ws)| {
            for (tr, row) in ts.chunks_exact_mut(n).zip(ws.chunks_exact(row_bytes)) {
                for (o, xi) in tr.iter_mut().zip(&xs) {
                    *o = k.run(row, xi);
                }
            }
        });
    for (r, tr) in t.chunks_exact(n).enumerate() {
        for (i, &v) in tr.iter().enumerate() {
            out[i * rows + r] = v;
        }
    }
    Ok(())
}

/// Views a row as blocks: borrowed when the row is 2-byte aligned (always, for GGUF tensor data),
/// copied otherwise. The caller checked that the length is a whole number of blocks.
#[inline]
fn blocks<const QK: usize, B: Block<QK>>(row: &[u8]) -> Cow<'_, [B]> {
    match kernels_gpu::quant::cast_blocks::<QK, B>(row) {
        Ok(b) => Cow::Borrowed(b),
        Err(_) => Cow::Owned(
            row.chunks_exact(B::BYTES)
                .filter_map(read_block::<QK, B>)
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
