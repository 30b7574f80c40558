//! The kernels over a Q8_0 matrix in planar form (`q8_planar`): the LM head and, when the model
//! ties it to the token embedding, the embedding lookup (one device copy serves both).
//!
//! `matvec_q8p`: `y = W x`, the decode LM head (reference: the row dequantized by
//! `host::quant::dequantize_row`, dotted with `x` in f64).
//!
//! Launch: grid = (G, 1, 1), block = (32 · Q8P_WARPS, 1, 1) (`shapes`), any `G ≥ 1` (the launcher:
//! as many blocks as the device holds at once, at most one group of rows per warp). Rows go in
//! groups of Q8P_ROWS; warp `w` of block `b` takes groups `b · Q8P_WARPS + w`, then every
//! `G · Q8P_WARPS`-th after it. Lane `l` takes the 16-quant chunks `l, l + 32, …` of each row, two
//! chunks per step, with the loads of both for all the group's rows issued before their
//! arithmetic (one 16-byte load of quants and one f16 scale per row and chunk, the activations in
//! 16-byte vectors) — and the next step's loads (the next chunks, or the warp's next group)
//! issued before this step's arithmetic, so each warp always has weights in flight; each chunk's
//! dot ([`dot16`]) is scaled by its block's `d`, and a warp sum gives each row (the same
//! arithmetic in the same order whatever `G`).
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

/// One step's weights: for each of the `Q8P_ROWS` rows, the lane's two chunks (quants, f16 scale).
type Step = [([u32; 4], u16, [u32; 4], u16); Q8P_ROWS];

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
    let groups = rows.div_ceil(Q8P_ROWS);
    let n_warps = gpu::grid_dim_x() as usize * Q8P_WARPS;
    let mut g = gpu::block_x() as usize * Q8P_WARPS + gpu::warp() as usize;
    if g >= groups {
        return; // warp-uniform; no barriers below
    }
    let (chunks, nb) = (cols / 16, cols / 32);
    // A warp's work is a sequence of steps: its groups of rows (`g`, `g + n_warps`, …), each in
    // `per_group` steps of two chunks per lane (`lane + 64 p` and `+ 32`).
    let per_group = chunks.div_ceil(64);
    // The step's loads, issued together and pinned (`matvec_dot::pin`: LLVM otherwise sinks the
    // second chunk's into its conditional arithmetic, a second round trip to DRAM). Rows past the
    // matrix and chunks past the row are clamped to the last ones: loaded, not counted.
    let load = |g: usize, p: usize| -> Step {
        let ld = |r: usize, c: usize| {
            let rr = core::cmp::min(g * Q8P_ROWS + r, rows - 1);
            let cc = core::cmp::min(c, chunks - 1);
            // SAFETY: rr < rows, cc < chunks: inside qs (16-byte aligned rows: cols % 16 == 0)
            // and d.
            let (q, dd) = unsafe { (ld128(qs.add(rr * cols + 16 * cc)), *d.add(rr * nb + cc / 2)) };
            (
                [pin(q[0]), pin(q[1]), pin(q[2]), pin(q[3])],
                pin(dd as u32) as u16,
            )
        };
        let c = lane + 64 * p;
        // Written out for the 4 rows (a loop over these arrays put them in local memory).
        let r = |r: usize| {
            let (a, da) = ld(r, c);
            let (b, db) = ld(r, c + 32);
            (a, da, b, db)
        };
        [r(0), r(1), r(2), r(3)]
    };
    let mut p = 0;
    let mut cur = load(g, 0);
    gpu::pdl_wait(); // the first weights' loads are out; now the activations
    let mut acc = [0.0f32; Q8P_ROWS];
    loop {
        // The next step's loads go out before this step's arithmetic: a warp always has a step
        // of weights in flight.
        let (ng, np) = if p + 1 < per_group {
            (g, p + 1)
        } else {
            (g + n_warps, 0)
        };
        let next = load(core::cmp::min(ng, groups - 1), np);
        let (c, c2) = (lane + 64 * p, lane + 64 * p + 32);
        if c < chunks {
            // SAFETY: c < chunks and the clamped c2 < chunks: inside x (cols floats, aligned).
            let (xa, xb) = unsafe { (x16(x, c), x16(x, core::cmp::min(c2, chunks - 1))) };
            let mut step = |r: usize| {
                let (a, da, b, db) = cur[r];
                acc[r] += f16_to_f32(da) * dot16(a, &xa);
                if c2 < chunks {
                    acc[r] += f16_to_f32(db) * dot16(b, &xb);
                }
            };
            step(0);
            step(1);
            step(2);
            step(3);
        }
        if np == 0 {
            let row0 = g * Q8P_ROWS;
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
            acc = [0.0; Q8P_ROWS];
            if ng >= groups {
                break;
            }
        }
        (g, p, cur) = (ng, np, next);
    }
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
