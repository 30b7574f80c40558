//! Quantized matrix-vector product on 8-bit activations (decode): `y[r] = Σ_c W[r, c] · x̂[c]`
//! with `x̂` the activation vector as quantized by its producer (`q8_act`: per block of 32, `i8`
//! quants `xq` and `[d, s]` pairs `xd`), integer dot products per 4 elements (`dp4a`). Reference:
//! the row dequantized, dotted with the dequantized activations in f64.
//!
//! `matvec_a8_<type>(w, xq, xd, y, rows, cols, add, mode)`, `mode` as `matvec` (STORE, ADD a
//! bias, ACCUMULATE into a residual). One row per block of `MATVEC_KWARP_WARPS` warps, the lane
//! layouts of the f32-activation kernels (`matvec.rs`): legacy types 4 lanes per 32-element
//! block, warp `w` taking blocks `8 w + l / 4, + 8 W, …`; Q4_K and Q6_K a warp per super-block,
//! warp `w` taking super-blocks `w, w + W, …`. The activations (a few KB) stay in L1 across the
//! rows of an SM. Each block first copies its row into shared memory (`stage_row`) when
//! the launch gives it room.
//!
//! Launch: grid = (rows, 1, 1), block = (32 W, 1, 1), dynamic shared memory
//! `shapes::stage_bytes(row_bytes)` or 0. Limits: `cols` a multiple of the type's
//! block size; `xq` 4-byte and `xd` 8-byte aligned (the launcher checks).

use crate::gpu;
use crate::matvec::{Epilogue, KWARP_UNROLL, KWARP_WARPS, UNROLL, store_block_sum};
use crate::matvec_dot::{Raw, pin_raw};
use crate::q8_act::{KQ8, LegacyQ8};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0};

/// The `[d, s]` of activation block `b`, one 8-byte load.
///
/// # Safety
/// `xd` holds more than `2 b + 1` floats, 8-byte aligned.
#[inline(always)]
unsafe fn ds_at(xd: *const f32, b: usize) -> [f32; 2] {
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    struct F2([f32; 2]);
    // SAFETY: caller contract.
    unsafe { (*(xd.add(2 * b) as *const F2)).0 }
}

/// The row at `src` (`len` bytes), copied into the block's shared memory in coalesced 16-byte
/// words (`gpu::stage`, keeping the row's alignment modulo 16) when the launch gave the block
/// room for it (`shapes::stage_bytes(len)` of dynamic shared memory), else `src`
/// itself. The lanes' narrow, strided reads of their blocks then hit shared memory instead of
/// each costing several global-memory transactions;
/// staging the f32-activation kernels measured slower (PERF.md change 26). Every thread of the block calls
/// it. It also waits for the previous kernel (`gpu::pdl_wait`), while the copies are in flight.
///
/// # Safety
/// `src .. src + len` is inside a device tensor (padded to 16 bytes).
#[inline(always)]
unsafe fn stage_row(src: *const u8, len: usize) -> *const u8 {
    if (gpu::dyn_smem_size() as usize) < crate::shapes::stage_bytes(len) {
        gpu::pdl_wait();
        return src; // launch-uniform
    }
    // SAFETY: caller contract; the shared memory holds the covering words (checked above).
    let p = unsafe { gpu::stage(src, len, gpu::dyn_smem::<u8>()) };
    gpu::pdl_wait();
    gpu::cp_async_wait_all();
    gpu::sync_threads();
    p
}

/// Legacy types: the layout of `matvec_legacy`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matvec_a8_legacy<B: LegacyQ8>(
    w: *const u8,
    xq: *const u32,
    xd: *const f32,
    y: *mut f32,
    rows: u32,
    cols: u32,
    add: *const f32,
    mode: u32,
) {
    let row = gpu::block_x() as usize;
    if row >= rows as usize {
        return; // block-uniform: the barriers of block_sum are reached by all or none
    }
    let nb = cols as usize / 32;
    // SAFETY: row < rows: inside W.
    let wr = unsafe { stage_row(w.add(row * nb * B::BYTES), nb * B::BYTES) };
    // SAFETY: row < rows; y (and add) hold rows floats; stage_row has waited.
    let operand = unsafe { Epilogue::new(y, row, add, mode) }.load();
    let lane = gpu::lane() as usize;
    let q = lane % 4;
    let (w0, w1) = (B::x_word(q, 0), B::x_word(q, 1));
    let stride = 8 * KWARP_WARPS;
    let mut b = 8 * gpu::warp() as usize + lane / 4;
    let mut acc = 0.0f32;
    while b < nb {
        // Weights and activations of UNROLL blocks in flight together (indices past the row
        // clamped to its last block, loaded but not counted), then the arithmetic.
        let ld = |u: usize| {
            let bb = (b + stride * u).min(nb - 1);
            // SAFETY: bb < nb: a whole 2-byte aligned block of the row; xq holds 8 nb words and
            // xd 2 nb floats.
            unsafe {
                let r: Raw = B::load(wr.add(bb * B::BYTES), q);
                (
                    r,
                    [*xq.add(8 * bb + w0), *xq.add(8 * bb + w1)],
                    ds_at(xd, bb),
                )
            }
        };
        // Written out (a loop over an array of them would put it in local memory).
        let (v0, v1, v2, v3) = (ld(0), ld(1), ld(2), ld(3));
        let mut step = |u: usize, (r, xw, ds): (Raw, [u32; 2], [f32; 2])| {
            if b + stride * u < nb {
                acc += B::dot_q8(r, q, xw, ds);
            }
        };
        step(0, v0);
        step(1, v1);
        step(2, v2);
        step(3, v3);
        b += stride * UNROLL;
    }
    // SAFETY: row < rows; y (and add) as the kernel's contract.
    unsafe { store_block_sum(y, row, acc, operand, mode) };
}

/// Q4_K, Q6_K: the layout of `matvec_kwarp`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matvec_a8_k<B: KQ8>(
    w: *const u8,
    xq: *const u32,
    xd: *const f32,
    y: *mut f32,
    rows: u32,
    cols: u32,
    add: *const f32,
    mode: u32,
) {
    let row = gpu::block_x() as usize;
    if row >= rows as usize {
        return; // block-uniform
    }
    let nb = cols as usize / 256;
    // SAFETY: row < rows: inside W.
    let wr = unsafe { stage_row(w.add(row * nb * B::BYTES), nb * B::BYTES) };
    // SAFETY: row < rows; y (and add) hold rows floats; stage_row has waited.
    let operand = unsafe { Epilogue::new(y, row, add, mode) }.load();
    let lane = gpu::lane() as usize;
    let (p0, p1) = (B::x_pos(lane, 0), B::x_pos(lane, 1));
    let mut acc = 0.0f32;
    let mut b = gpu::warp() as usize;
    while b < nb {
        let ld = |u: usize| {
            let bb = (b + KWARP_WARPS * u).min(nb - 1);
            // SAFETY: bb < nb: a whole super-block; its 8 activation blocks are 8 bb .. 8 bb + 8
            // (xq holds 64 nb words, xd 16 nb floats).
            unsafe {
                let r: Raw = pin_raw(B::load_q8(wr.add(bb * B::BYTES), lane));
                let (a0, a1) = (8 * bb + p0.0, 8 * bb + p1.0);
                (
                    r,
                    [*xq.add(8 * a0 + p0.1), *xq.add(8 * a1 + p1.1)],
                    [ds_at(xd, a0), ds_at(xd, a1)],
                )
            }
        };
        let (v0, v1, v2, v3, v4) = (ld(0), ld(1), ld(2), ld(3), ld(4));
        let mut step = |u: usize, (r, xw, ds): (Raw, [u32; 2], [[f32; 2]; 2])| {
            if b + KWARP_WARPS * u < nb {
                acc += B::dot_q8(r, lane, xw, ds);
            }
        };
        step(0, v0);
        step(1, v1);
        step(2, v2);
        step(3, v3);
        step(4, v4);
        b += KWARP_WARPS * KWARP_UNROLL;
    }
    // SAFETY: row < rows; y (and add) as the kernel's contract.
    unsafe { store_block_sum(y, row, acc, operand, mode) };
}

macro_rules! matvec_a8_kernels {
    ($f:ident: $($name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// `w`: `rows × cols` of the type; `xq` cols bytes (4-byte aligned), `xd` cols / 16
        /// floats (8-byte aligned), `y` rows (and `add` rows when `mode` is ADD); grid = rows
        /// blocks of 32 `MATVEC_KWARP_WARPS` (validated by the launcher).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            w: *const u8, xq: *const u32, xd: *const f32, y: *mut f32, rows: u32, cols: u32,
            add: *const f32, mode: u32,
        ) {
            gpu::pdl_trigger();
            // SAFETY: forwarded contract.
            unsafe { $f::<$t>(w, xq, xd, y, rows, cols, add, mode) }
        }
    )*};
}

matvec_a8_kernels! { matvec_a8_legacy:
    matvec_a8_q4_0 => BlockQ4_0;
    matvec_a8_q4_1 => BlockQ4_1;
    matvec_a8_q5_0 => BlockQ5_0;
    matvec_a8_q5_1 => BlockQ5_1;
    matvec_a8_q8_0 => BlockQ8_0;
}

matvec_a8_kernels! { matvec_a8_k:
    matvec_a8_q4_k => BlockQ4K;
    matvec_a8_q6_k => BlockQ6K;
}
