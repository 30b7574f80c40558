//! The backend's matrix products: quantized weight rows against a batch of activation rows,
//! multithreaded over weight rows (rayon).
//!
//! Two arithmetics ([`Arith`]):
//! - [`Arith::Quantized`] (default): each activation row is quantized once to 8 bits per element
//!   for the weight type (`quant::QuantizedVec`, ggml's scheme) and dotted with the weight blocks
//!   in integer arithmetic with SIMD (`quant::matvec_quantized`). Fast, and numerically what
//!   llama.cpp's CPU backend computes.
//! - [`Arith::Exact`]: each weight row is dequantized to f32 and dotted with the f32 activations
//!   (f32 accumulation): the reference arithmetic, matching an f32 dequantized model (HF) closely.
//!
//! Batches are tiled: a task takes a block of weight rows small enough to stay in L1 and runs
//! every activation row against it, so the weights are read from memory once per batch.

use rayon::prelude::*;

use super::gemm::{self, Fmt, KFmt, PackedX, PackedXK};
use crate::gguf::GgmlType;
use crate::quant::{
    ActKind, BlockQ8K, Q8Blocks, QuantError, QuantizedVec, dequantize_row, matvec_quantized,
};

/// Which arithmetic the matrix products use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arith {
    /// 8-bit quantized activations, integer dot products (ggml's CPU scheme).
    #[default]
    Quantized,
    /// Weights dequantized to f32, f32 activations and accumulation.
    Exact,
}

/// A weight matrix in the file: `rows` rows of `cols` elements of type `ty`, `row_bytes` each.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A batch of activation rows, with its quantized forms made on first use and shared by every
/// matrix that reads the same input (Q, K and V; gate and up).
pub struct Input<'a> {
    x: &'a [f32],
    cols: usize,
    quantized: [Option<Vec<QuantizedVec>>; 3],
}

impl<'a> Input<'a> {
    pub fn new(x: &'a [f32], cols: usize) -> Self {
        Input {
            x,
            cols,
            quantized: [None, None, None],
        }
    }

    pub fn n(&self) -> usize {
        self.x.len() / self.cols
    }

    fn quantized(&mut self, kind: ActKind) -> Result<&[QuantizedVec], QuantError> {
        let slot = match kind {
            ActKind::F32 => 0,
            ActKind::Q8 => 1,
            ActKind::Q8K => 2,
        };
        if self.quantized[slot].is_none() {
            let v = self
                .x
                .par_chunks(self.cols)
                .map(|row| QuantizedVec::new(kind, row))
                .collect::<Result<Vec<_>, _>>()?;
            self.quantized[slot] = Some(v);
        }
        Ok(self.quantized[slot].as_deref().unwrap_or_default())
    }
}

/// Weight rows per task when a batch is tiled: a tile of rows stays in L1 while every activation
/// row passes over it.
const TILE_ROWS: usize = 16;
/// Weight rows per task of the exact path.
const EXACT_ROWS: usize = 16;

/// `out[i][r] = w[r] · x[i]` for the `n` rows of `input`; `out` is `n × rows`. `scratch` is
/// reused between calls.
pub fn matmul(
    arith: Arith,
    m: &Matrix,
    w: &[u8],
    input: &mut Input<'_>,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), QuantError> {
    let (rows, cols) = (m.rows, m.cols);
    let n = input.n();
    if input.cols != cols || out.len() != n * rows || w.len() != rows * m.row_bytes {
        return Err(QuantError::Length {
            what: "matmul shapes (x, out, weights)",
            expected: n * rows,
            found: out.len(),
        });
    }
    match arith {
        Arith::Quantized => {
            let xq = input.quantized(ActKind::for_weights(m.ty))?;
            if n == 1 {
                return matvec_quantized(m.ty, w, rows, &xq[0], out);
            }
            let kfmt = KFmt::of(m.ty).filter(|_| gemm::available());
            match Fmt::of(m.ty).filter(|_| gemm::available()) {
                // Each weight block unpacked once per group of activation rows.
                Some(fmt) => {
                    let q8: Vec<&Q8Blocks> = xq
                        .iter()
                        .filter_map(|x| match x {
                            QuantizedVec::Q8(b) => Some(b),
                            _ => None,
                        })
                        .collect();
                    if q8.len() != n {
                        return Err(QuantError::Length {
                            what: "8-bit activation rows",
                            expected: n,
                            found: q8.len(),
                        });
                    }
                    let rb = m.row_bytes;
                    let packed: Vec<PackedX> = q8.par_iter().map(|x| PackedX::new(x)).collect();
                    transposed(scratch, n, rows, TILE_ROWS, w, rb, |dst, wtile| {
                        gemm::dot_rows(fmt, wtile, rb, &packed, dst);
                        Ok(())
                    })?;
                }
                None if kfmt.is_some() => {
                    let qk: Vec<&[BlockQ8K]> = xq
                        .iter()
                        .filter_map(|x| match x {
                            QuantizedVec::Q8K(b) => Some(b.as_slice()),
                            _ => None,
                        })
                        .collect();
                    if qk.len() != n {
                        return Err(QuantError::Length {
                            what: "8-bit K activation rows",
                            expected: n,
                            found: qk.len(),
                        });
                    }
                    let (rb, fmt) = (m.row_bytes, kfmt.unwrap_or(KFmt::Q4K));
                    let packed: Vec<PackedXK> = qk.par_iter().map(|x| PackedXK::new(x)).collect();
                    transposed(scratch, n, rows, TILE_ROWS, w, rb, |dst, wtile| {
                        gemm::dot_rows_k(fmt, wtile, rb, &packed, dst);
                        Ok(())
                    })?;
                }
                None => {
                    transposed(scratch, n, rows, TILE_ROWS, w, m.row_bytes, |dst, wtile| {
                        let tile_rows = wtile.len() / m.row_bytes;
                        let mut col = [0.0f32; TILE_ROWS];
                        for (i, x) in xq.iter().enumerate() {
                            matvec_quantized(m.ty, wtile, tile_rows, x, &mut col[..tile_rows])?;
                            for (r, &v) in col[..tile_rows].iter().enumerate() {
                                dst[r * n + i] = v;
                            }
                        }
                        Ok(())
                    })?;
                }
            }
        }
        Arith::Exact => {
            let x = input.x;
            transposed(
                scratch,
                n,
                rows,
                EXACT_ROWS,
                w,
                m.row_bytes,
                |dst, wtile| {
                    let mut wr = vec![0.0f32; cols];
                    for (d, wb) in dst.chunks_exact_mut(n).zip(wtile.chunks_exact(m.row_bytes)) {
                        dequantize_row(m.ty, wb, &mut wr)?;
                        for (o, xi) in d.iter_mut().zip(x.chunks_exact(cols)) {
                            *o = dot(&wr, xi);
                        }
                    }
                    Ok(())
                },
            )?;
        }
    }
    // `scratch` is rows × n: transpose into out (n × rows).
    if n == 1 {
        out.copy_from_slice(scratch);
    } else {
        // In tiles of 32 weight rows, so both sides stay in cache.
        for (t, tile) in scratch.chunks(32 * n).enumerate() {
            let r0 = t * 32;
            let tr = tile.len() / n;
            for i in 0..n {
                let o = &mut out[i * rows + r0..][..tr];
                for (r, v) in o.iter_mut().enumerate() {
                    *v = tile[r * n + i];
                }
            }
        }
    }
    Ok(())
}

/// Runs `f(dst, weight_tile)` in parallel over tiles of `tile` weight rows; `dst` is the tile's
/// part of `scratch`, laid out `[row][n]`.
fn transposed<F>(
    scratch: &mut Vec<f32>,
    n: usize,
    rows: usize,
    tile: usize,
    w: &[u8],
    row_bytes: usize,
    f: F,
) -> Result<(), QuantError>
where
    F: Fn(&mut [f32], &[u8]) -> Result<(), QuantError> + Sync,
{
    scratch.clear();
    scratch.resize(n * rows, 0.0);
    scratch
        .par_chunks_mut(tile * n)
        .zip(w.par_chunks(tile * row_bytes))
        .try_for_each(|(dst, wtile)| f(dst, wtile))
}

/// f32 dot product with 8 independent accumulators (vectorizes well).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    for (x, y) in ac.iter().zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}
