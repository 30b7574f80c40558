//! Reference ops of the forward pass: plain, obviously-correct functions with f32 accumulation.
//! Every GPU kernel is checked against the function of the same name here (`rms_norm` kernel ↔
//! `cuda::rms_norm` launcher ↔ `cpu::rms_norm`).
//!
//! Layout conventions: activations are row-major, one row per token. A "row of heads" is
//! `n_head * head_dim` values, head `h` at `h * head_dim ..`. Shapes are the caller's contract
//! (these are internal functions fed by the backend, which validated the model): a mismatch is a
//! programming error and panics with the sizes involved.

use crate::gguf::GgmlType;
use crate::model::RopeStyle;
use crate::quant::{QuantError, dequantize_row};

/// RMSNorm of each row of `x` (row length `w.len()`): `out = x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    assert!(
        n > 0 && x.len().is_multiple_of(n) && out.len() == x.len(),
        "rms_norm: x {} and out {} must be whole rows of {n}",
        x.len(),
        out.len()
    );
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let scale = 1.0 / (ss / n as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// The rotation angle of pair `i` (of `head_dim / 2`) at position `pos`:
/// `pos * theta^(-2i / head_dim)`, computed in f64 so long contexts keep their precision.
pub fn rope_angle(pos: usize, i: usize, head_dim: usize, theta: f32) -> f64 {
    pos as f64 * (theta as f64).powf(-2.0 * i as f64 / head_dim as f64)
}

/// Rotary position embedding, in place. `x` holds `positions.len()` rows of `n_head` heads of
/// `head_dim` values; row `r` is rotated for position `positions[r]`.
///
/// Pair `i` of a head is `(2i, 2i+1)` for [`RopeStyle::Normal`] and `(i, i + head_dim/2)` for
/// [`RopeStyle::Neox`]; both rotate by [`rope_angle`]: `(a, b) → (a cos − b sin, a sin + b cos)`.
pub fn rope(
    x: &mut [f32],
    n_head: usize,
    head_dim: usize,
    positions: &[usize],
    theta: f32,
    style: RopeStyle,
) {
    let row = n_head * head_dim;
    assert!(
        head_dim.is_multiple_of(2) && x.len() == positions.len() * row,
        "rope: x {} must be {} rows of {n_head} x {head_dim} (even)",
        x.len(),
        positions.len()
    );
    let half = head_dim / 2;
    let mut sc = vec![(0.0f32, 0.0f32); half];
    for (xr, &pos) in x.chunks_exact_mut(row).zip(positions) {
        // The angles depend on the position and the pair only: once per row, for every head.
        for (i, v) in sc.iter_mut().enumerate() {
            let (sin, cos) = rope_angle(pos, i, head_dim, theta).sin_cos();
            *v = (sin as f32, cos as f32);
        }
        for head in xr.chunks_exact_mut(head_dim) {
            for (i, &(sin, cos)) in sc.iter().enumerate() {
                let (ia, ib) = match style {
                    RopeStyle::Normal => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * cos - b * sin;
                head[ib] = a * sin + b * cos;
            }
        }
    }
}

/// SwiGLU feed-forward gate: `out = silu(gate) * up`, with `silu(g) = g / (1 + e^-g)`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && out.len() == up.len(),
        "swiglu: gate {}, up {}, out {} differ",
        gate.len(),
        up.len(),
        out.len()
    );
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Softmax in place, max-subtracted. An all `-inf` input (nothing to attend to) is a caller bug.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `dst += src`, with `src` repeated over every row of `dst` when it is shorter (a bias added to
/// each token's row); `dst.len()` must be a multiple of `src.len()`.
pub fn add(dst: &mut [f32], src: &[f32]) {
    assert!(
        !src.is_empty() && dst.len().is_multiple_of(src.len()),
        "add: dst {} is not whole rows of src {}",
        dst.len(),
        src.len()
    );
    for row in dst.chunks_exact_mut(src.len()) {
        for (d, &s) in row.iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// Causal grouped-query attention over a KV cache.
///
/// - `q`: `n_q` rows of `n_head * head_dim` (already RoPE'd); query row `i` sits at position
///   `pos0 + i` and attends to cache positions `0 ..= pos0 + i`.
/// - `k_cache`, `v_cache`: one row of `n_head_kv * head_dim` per position, at least
///   `pos0 + n_q` rows (extra rows are ignored).
/// - Query head `h` reads KV head `h / (n_head / n_head_kv)`.
/// - `out`: `n_q` rows of `n_head * head_dim`: `softmax(q·kᵀ / sqrt(head_dim)) · v` per head.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    pos0: usize,
    out: &mut [f32],
) {
    let (q_row, kv_row) = (n_head * head_dim, n_head_kv * head_dim);
    assert!(
        n_head_kv > 0 && n_head.is_multiple_of(n_head_kv),
        "attention: {n_head_kv} KV heads do not divide {n_head} heads"
    );
    assert!(
        q.len().is_multiple_of(q_row) && out.len() == q.len(),
        "attention: q {} / out {} are not rows of {q_row}",
        q.len(),
        out.len()
    );
    let n_q = q.len() / q_row;
    let n_kv = pos0 + n_q;
    assert!(
        k_cache.len() >= n_kv * kv_row && v_cache.len() >= n_kv * kv_row,
        "attention: cache holds {} / {} values, {n_kv} rows of {kv_row} needed",
        k_cache.len(),
        v_cache.len()
    );
    let group = n_head / n_head_kv;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut scores = vec![0.0f32; n_kv];
    for i in 0..n_q {
        let seen = pos0 + i + 1;
        for h in 0..n_head {
            let kvh = h / group;
            let qh = &q[i * q_row + h * head_dim..][..head_dim];
            for (t, s) in scores[..seen].iter_mut().enumerate() {
                let kh = &k_cache[t * kv_row + kvh * head_dim..][..head_dim];
                *s = qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            softmax(&mut scores[..seen]);
            let oh = &mut out[i * q_row + h * head_dim..][..head_dim];
            oh.fill(0.0);
            for (t, &p) in scores[..seen].iter().enumerate() {
                let vh = &v_cache[t * kv_row + kvh * head_dim..][..head_dim];
                for (o, &v) in oh.iter_mut().zip(vh) {
                    *o += p * v;
                }
            }
        }
    }
}

/// Embedding lookup: row `id` of a `[n_embd, n_vocab]` table of type `ty` (`table` holds all
/// its rows), dequantized into `out` (`n_embd` values).
pub fn embedding(ty: GgmlType, table: &[u8], id: u32, out: &mut [f32]) -> Result<(), QuantError> {
    let row_bytes = ty.row_bytes(out.len()).ok_or(QuantError::PartialBlock {
        ty,
        n: out.len(),
        block_size: ty.block_size(),
    })?;
    let start = id as usize * row_bytes;
    let row = table
        .get(start..start + row_bytes)
        .ok_or(QuantError::Length {
            what: "embedding table (rows)",
            expected: (id as usize + 1) * row_bytes,
            found: table.len(),
        })?;
    dequantize_row(ty, row, out)
}

/// Matrix product with a quantized weight matrix, the plain way: `w` holds `rows` rows of `cols`
/// elements of type `ty`; `x` holds `n` input rows of `cols`; `out` gets `n` rows of `rows`:
/// `out[i][r] = Σ_c w[r][c] · x[i][c]`, each weight row dequantized to f32, f32 accumulation.
pub fn matmul(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) -> Result<(), QuantError> {
    let row_bytes = ty.row_bytes(cols).ok_or(QuantError::PartialBlock {
        ty,
        n: cols,
        block_size: ty.block_size(),
    })?;
    if w.len() != rows * row_bytes {
        return Err(QuantError::ByteLength {
            ty,
            n: rows * cols,
            expected: rows * row_bytes,
            found: w.len(),
        });
    }
    if !x.len().is_multiple_of(cols) || out.len() != x.len() / cols * rows {
        return Err(QuantError::Length {
            what: "matmul output (n x rows)",
            expected: x.len() / cols * rows,
            found: out.len(),
        });
    }
    let mut wr = vec![0.0f32; cols];
    for (r, wb) in w.chunks_exact(row_bytes).enumerate() {
        dequantize_row(ty, wb, &mut wr)?;
        for (xi, oi) in x.chunks_exact(cols).zip(out.chunks_exact_mut(rows)) {
            oi[r] = wr.iter().zip(xi).map(|(a, b)| a * b).sum();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 3.0, -2.0, 3.5, 100.0, 99.0];
        softmax(&mut x);
        let sum: f32 = x.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "sum {sum}");
        assert!(x[4] > x[5] && x[5] > x[3] && x[3] > x[1] && x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_pair_norms() {
        let x0: Vec<f32> = (0..2 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let mut x = x0.clone();
            rope(&mut x, 2, 8, &[0], 10_000.0, style);
            assert_eq!(x, x0);
            let mut x = x0.clone();
            rope(&mut x, 2, 8, &[37], 10_000.0, style);
            assert_ne!(x, x0);
            let n0: f32 = x0.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4 * n0, "{n0} vs {n1}");
        }
    }
}
