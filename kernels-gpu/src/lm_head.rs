//! The kernels over a Q8_0 matrix in planar form (`q8_planar`): the LM head and, when the model
//! ties it to the token embedding, the embedding lookup (one device copy serves both).
//!
//! `matvec_q8p`: `y = W x`, the decode LM head (reference: the row dequantized by
//! `host::quant::dequantize_row`, dotted with `x` in f64).
//!
//! Launch: grid = (ceil(rows / (Q8P_WARPS · Q8P_ROWS)), 1, 1), block = (32 · Q8P_WARPS, 1, 1)
//! (`shapes`). Warp `w` of block `b` takes rows `(b · Q8P_WARPS + w) · Q8P_ROWS ..` (Q8P_ROWS of
//! them); lane `l` takes the 16-quant chunks `l, l + 32, …` of each row, two chunks per step with
//! the loads of both for all the warp's rows issued before their arithmetic (one 16-byte load of
//! quants and one f16 scale per row and chunk, the activations in 16-byte vectors); each chunk's
//! dot ([`dot16`]) is scaled by its block's `d`, and a warp sum gives each row.
//! Limits: `rows ≥ 1`; `cols` a multiple of 32; `qs` and `x` 16-byte aligned.

use crate::gpu;
use crate::matvec_dot::{ld128, pin, xa4};
use crate::q8_planar::{dot16, value};
use crate::quant::f16_to_f32;
use crate::shapes::{Q8P_ROWS, Q8P_WARPS};

const _: () = assert!(
    Q8P_ROWS == 4,
    "the row steps below are written out for 4 rows"
);

/// 4 f32 as one 16-byte store.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct F4([f32; 4]);

/// The 16 activations of chunk `c`, in 4 vector loads.
///
/// # Safety
/// `x + 16 c` is 16-byte aligned with 16 floats readable.
#[inline(always)]
unsafe fn x16(x: *const f32, c: usize) -> [f32; 16] {
    // SAFETY: caller contract.
    let v: [[f32; 4]; 4] = unsafe { core::array::from_fn(|i| xa4(x, 16 * c + 4 * i)) };
    core::array::from_fn(|i| v[i / 4][i % 4])
}

/// # Safety
/// Shapes as in the module header, validated by the launcher (`ops::matvec_q8p`).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn matvec_q8p(
    qs: *const u8,
    d: *const u16,
    x: *const f32,
    y: *mut f32,
    rows: u32,
    cols: u32,
) {
    gpu::pdl_trigger();
    let (rows, cols) = (rows as usize, cols as usize);
    let lane = gpu::lane() as usize;
    let row0 = (gpu::block_x() as usize * Q8P_WARPS + gpu::warp() as usize) * Q8P_ROWS;
    if row0 >= rows {
        return; // warp-uniform; no barriers below
    }
    let (chunks, nb) = (cols / 16, cols / 32);
    // Rows past the matrix and chunks past the row are clamped to the last ones: loaded, not
    // counted.
    let ld = |r: usize, c: usize| {
        let rr = core::cmp::min(row0 + r, rows - 1);
        let cc = core::cmp::min(c, chunks - 1);
        // SAFETY: rr < rows, cc < chunks: inside qs (16-byte aligned rows: cols % 16 == 0) and d.
        unsafe { (ld128(qs.add(rr * cols + 16 * cc)), *d.add(rr * nb + cc / 2)) }
    };
    let mut acc = [0.0f32; Q8P_ROWS];
    let mut c = lane;
    while c < chunks {
        let c2 = c + 32;
        // Written out for the 4 rows (a loop over these arrays put them in local memory).
        let a = [ld(0, c), ld(1, c), ld(2, c), ld(3, c)];
        // The second chunk's words pinned (`matvec_dot::pin`): its arithmetic is conditional,
        // and LLVM otherwise sank these loads into it, a second round trip to DRAM.
        let ldp = |r: usize| {
            let (q, dd) = ld(r, c2);
            (
                [pin(q[0]), pin(q[1]), pin(q[2]), pin(q[3])],
                pin(dd as u32) as u16,
            )
        };
        let b = [ldp(0), ldp(1), ldp(2), ldp(3)];
        gpu::pdl_wait(); // the weights' loads are out; now the activations
        // SAFETY: c < chunks and the clamped c2 < chunks: inside x (cols floats, aligned).
        let (xa, xb) = unsafe { (x16(x, c), x16(x, core::cmp::min(c2, chunks - 1))) };
        let mut step = |r: usize| {
            acc[r] += f16_to_f32(a[r].1) * dot16(a[r].0, &xa);
            if c2 < chunks {
                acc[r] += f16_to_f32(b[r].1) * dot16(b[r].0, &xb);
            }
        };
        step(0);
        step(1);
        step(2);
        step(3);
        c += 64;
    }
    gpu::pdl_wait();
    let store = |r: usize, s: f32| {
        let v = gpu::warp_sum(s);
        if lane == 0 && row0 + r < rows {
            // SAFETY: row0 + r < rows; y holds rows floats.
            unsafe { *y.add(row0 + r) = v };
        }
    };
    store(0, acc[0]);
    store(1, acc[1]);
    store(2, acc[2]);
    store(3, acc[3]);
}

/// 4 f32 as one 16-byte store.
///
/// # Safety
/// `p` is 16-byte aligned with 4 floats writable.
#[inline(always)]
unsafe fn st4(p: *mut f32, v: [f32; 4]) {
    // SAFETY: caller contract.
    unsafe { *(p as *mut F4) = F4(v) };
}

/// `embedding_q8p`: `out[t][c] = f16(d[id][c / 32]) · qs[id][c]` with `id = ids[t]` — rows of the
/// planar matrix decoded to f32 (reference: the rows dequantized by
/// `host::quant::dequantize_row`, bit for bit: [`value`] is the block's own arithmetic).
///
/// Launch: grid = (n_ids, 1, 1), block = (T, 1, 1); thread `i` decodes elements `4i .. 4i + 4`,
/// then `4 (i + T) ..`, one 4-byte load of quants and one 16-byte store each.
/// Limits: `ids[t] < rows` (the backend checks token ids on the host; the decode graph's ids are
/// sampled on the device from `n_vocab` logits); `cols` a multiple of 32; `out` 16-byte aligned.
///
/// # Safety
/// As the limits, validated by the launcher (`ops::embedding_q8p`).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn embedding_q8p(
    qs: *const u8,
    d: *const u16,
    ids: *const u32,
    out: *mut f32,
    cols: u32,
) {
    gpu::pdl_trigger();
    gpu::pdl_wait();
    let cols = cols as usize;
    let t = gpu::block_x() as usize;
    // SAFETY: t < n_ids (the grid).
    let id = unsafe { *ids.add(t) } as usize;
    let (nb, step) = (cols / 32, 4 * gpu::block_dim_x() as usize);
    let mut c = 4 * gpu::thread_x() as usize;
    while c < cols {
        // SAFETY: id < rows, c + 4 ≤ cols: inside the row's quants (4-byte aligned: cols % 32 ==
        // 0) and scales; out holds n_ids rows of cols floats, 16-byte aligned.
        unsafe {
            let q = *(qs.add(id * cols + c) as *const u32);
            let dd = *d.add(id * nb + c / 32);
            let v = core::array::from_fn(|i| value((q >> (8 * i)) as u8, dd));
            st4(out.add(t * cols + c), v);
        }
        c += step;
    }
}
