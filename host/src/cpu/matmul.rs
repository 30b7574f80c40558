//! The backend's matrix products: quantized weight rows against a batch of activation rows,
//! multithreaded over weight rows (rayon), each weight row read once per batch.

use rayon::prelude::*;

use crate::gguf::GgmlType;
use crate::quant::{QuantError, dequantize_row};

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

/// Weight rows per parallel task: enough work per task to amortize scheduling, enough tasks to
/// balance threads.
const ROWS_PER_TASK: usize = 16;

/// `out[i][r] = w[r] · x[i]` for `n = x.len() / cols` activation rows; `out` is `n × rows`.
/// `scratch` is reused between calls (it ends up `n × rows`).
pub fn matmul(
    m: &Matrix,
    w: &[u8],
    x: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), QuantError> {
    let (rows, cols) = (m.rows, m.cols);
    let n = x.len() / cols;
    if x.len() != n * cols || out.len() != n * rows || w.len() != rows * m.row_bytes {
        return Err(QuantError::Length {
            what: "matmul shapes (x, out, weights)",
            expected: n * rows,
            found: out.len(),
        });
    }
    // Transposed result: row-major by weight row, so each task writes one contiguous range.
    scratch.clear();
    scratch.resize(n * rows, 0.0);
    scratch
        .par_chunks_mut(ROWS_PER_TASK * n)
        .zip(w.par_chunks(ROWS_PER_TASK * m.row_bytes))
        .try_for_each_init(
            || vec![0.0f32; cols],
            |wr, (dst, wchunk)| -> Result<(), QuantError> {
                for (d, wb) in dst
                    .chunks_exact_mut(n)
                    .zip(wchunk.chunks_exact(m.row_bytes))
                {
                    dequantize_row(m.ty, wb, wr)?;
                    for (o, xi) in d.iter_mut().zip(x.chunks_exact(cols)) {
                        *o = dot(wr, xi);
                    }
                }
                Ok(())
            },
        )?;
    if n == 1 {
        out.copy_from_slice(scratch);
    } else {
        for (r, col) in scratch.chunks_exact(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * rows + r] = v;
            }
        }
    }
    Ok(())
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
