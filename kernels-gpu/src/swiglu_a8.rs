//! The FFN's first half for one token on 8-bit activations: RMSNorm, quantization of the normed
//! row (`q8_act`), gate and up projections by integer dot products, SwiGLU, and the quantization
//! of the result for the down projection (`matvec_a8`), in one launch.
//! `out[r] = silu((Wg x̂)[r]) · (Wu x̂)[r]` with `x̂` = `Q8(rms_norm(h) ∘ g)`; reference: the
//! CPU's norm, its `Q8Blocks` quantization, the rows dequantized and dotted in f64.
//!
//! `swiglu_a8_<type>(wg, wu, h, g, eps, out, oq, od, cols, staged)`: a block computes the 32 rows
//! `32 b .. 32 b + 32` (`SWIGLU_A8_WARPS` = 16 warps of `SWIGLU_A8_ROWS_PER_WARP` = 2 rows), so the
//! 32 results are one activation block of the down projection: they are written as f32 (`out`)
//! and quantized (`oq`: 32 bytes, `od`: `[d, s]`). Every block first reads the whole row `h` (the
//! sum of squares, then 8 lanes per 32-element block quantize `h · scale · g` into shared memory)
//! while its weights are on their way: when `staged` (the launcher's choice: they fit in 48 KB)
//! its 32 gate and 32 up rows are copied into shared memory in coalesced 16-byte words
//! (`gpu::stage`), else the first round of each lane's loads is issued. Lane `l` of a warp takes blocks
//! `l, l + 32, …` of its 2 gate and 2 up rows whole (`q8_act::LegacyWhole`), a round of loads per
//! 32 blocks.
//!
//! Launch: grid = (rows / 32, 1, 1), block = (512, 1, 1), dynamic shared memory
//! `shapes::swiglu_a8_smem_bytes(cols, row_bytes, staged)`. Limits: `rows` and `cols` multiples of 32; `h` and `g`
//! 16-byte aligned; `od` 8-byte aligned (the launcher checks).

use crate::elementwise::silu_mul;
use crate::gpu;
use crate::matvec_dot::{ld128, xa4};
use crate::q8_act::{LegacyWhole, Whole, q8_round, q8_scale};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::shapes::{
    SWIGLU_A8_ROWS, SWIGLU_A8_ROWS_PER_WARP as RPW, SWIGLU_A8_WARPS as WARPS, stage_bytes,
};

/// Quantizes one block of 32 values held one per lane, as the CPU's `Q8Blocks`: the lane's quant
/// and the block's `d` and `s = d · Σ q` (every lane gets them). A NaN or infinity in the block
/// gives quants 0 and `d` = `s` = NaN, as there. Every lane of the warp must call it.
#[inline(always)]
pub(crate) fn quantize_warp(v: f32) -> (i32, f32, f32) {
    let bad = gpu::warp_sum(if v.is_nan() || v.is_infinite() {
        1.0
    } else {
        0.0
    }) > 0.0;
    let (d, id) = q8_scale(gpu::warp_max(v.abs()));
    if bad {
        return (0, f32::NAN, f32::NAN); // warp-uniform
    }
    let q = q8_round(v, id);
    // Sums of at most 32 values of magnitude ≤ 127: exact in f32.
    (q, d, d * gpu::warp_sum(q as f32))
}

/// [`quantize_warp`] for a block of 32 values held 4 per lane by 8 adjacent lanes (lanes
/// `8 k .. 8 k + 8` of the warp hold block `k`'s elements in order): the lane's 4 quants and the
/// block's `d` and `s` — the same values, bit for bit (the maximum and the integer sum do not
/// depend on the order). Every lane of the warp must call it.
#[inline(always)]
pub(crate) fn quantize_lanes8(v: [f32; 4]) -> ([i32; 4], f32, f32) {
    let over8 = |mut x: f32, op: fn(f32, f32) -> f32| {
        for m in [1, 2, 4] {
            x = op(x, gpu::shfl_xor(x, m));
        }
        x
    };
    let bad = v.iter().any(|x| x.is_nan() || x.is_infinite());
    let bad = over8(if bad { 1.0 } else { 0.0 }, f32::max) > 0.0;
    let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let (d, id) = q8_scale(over8(amax, f32::max));
    let q = v.map(|x| q8_round(x, id));
    // Sums of at most 32 values of magnitude ≤ 127: exact in f32.
    let sum = over8((q[0] + q[1] + q[2] + q[3]) as f32, |a, b| a + b);
    if bad {
        ([0; 4], f32::NAN, f32::NAN) // after every shuffle: groups of a warp may differ
    } else {
        (q, d, d * sum)
    }
}

/// One round of weight loads: block `r0 + lane` of the warp's 2 gate and 2 up rows (`row0..`,
/// `row_bytes` each), clamped to the last block (loaded, not counted). Written out with constant
/// indices: arrays built or read in loops stayed in local memory.
///
/// # Safety
/// Rows `row0 .. row0 + RPW` of both matrices exist; `nb ≥ 1` blocks per row.
#[inline(always)]
unsafe fn load_round<B: LegacyWhole>(
    wg: *const u8,
    wu: *const u8,
    row0: usize,
    row_bytes: usize,
    bb: usize,
) -> [(Whole, Whole); RPW] {
    let ld = |i: usize| {
        let off = (row0 + i) * row_bytes + bb * B::BYTES;
        // SAFETY: caller contract (bb clamped by the caller): a whole 2-byte aligned block of
        // both matrices.
        unsafe { (B::load_whole(wg.add(off)), B::load_whole(wu.add(off))) }
    };
    [ld(0), ld(1)]
}

/// The dot products of one round of [`load_round`] (block `bb`, none past the row's `nb`) with
/// the quantized row, into the lane's gate and up sums.
///
/// # Safety
/// `xs` holds the quantized row (`nb` blocks of 32 bytes, 16-byte aligned), `xds` its `[d, s]`
/// pairs.
#[inline(always)]
unsafe fn round<B: LegacyWhole>(
    raw: [(Whole, Whole); RPW],
    bb: usize,
    nb: usize,
    xs: *const u8,
    xds: *const f32,
    acc_g: &mut [f32; RPW],
    acc_u: &mut [f32; RPW],
) {
    if bb >= nb {
        return;
    }
    // SAFETY: bb < nb: caller contract.
    let (xw, ds) = unsafe {
        let p = xs.add(32 * bb);
        let (a, b) = (ld128(p), ld128(p.add(16)));
        (
            [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]],
            [*xds.add(2 * bb), *xds.add(2 * bb + 1)],
        )
    };
    let mut row = |i: usize| {
        acc_g[i] += B::dot_whole(raw[i].0, xw, ds);
        acc_u[i] += B::dot_whole(raw[i].1, xw, ds);
    };
    row(0);
    row(1);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn swiglu_a8<B: LegacyWhole>(
    wg: *const u8,
    wu: *const u8,
    h: *const f32,
    g: *const f32,
    eps: f32,
    out: *mut f32,
    oq: *mut u8,
    od: *mut f32,
    cols: u32,
    staged: u32,
) {
    let blk = gpu::block_x() as usize;
    let cols = cols as usize;
    let nb = cols / 32;
    let (lane, warp) = (gpu::lane() as usize, gpu::warp() as usize);
    let row_bytes = nb * B::BYTES;
    let slab = SWIGLU_A8_ROWS * row_bytes;
    let smem = gpu::dyn_smem::<u8>();
    // Where the warp's rows are read from: the matrices themselves, or when `staged` the
    // block's 32 rows of each copied into shared memory in coalesced 16-byte words
    // (`gpu::stage`; the copies land while the row is normed and quantized below).
    let (wg, wu, row0, xs) = if staged != 0 {
        let off = SWIGLU_A8_ROWS * blk * row_bytes;
        // SAFETY: rows 32 blk .. 32 blk + 32 of both matrices; the launch's shared memory
        // holds swiglu_a8_smem_bytes(cols, row_bytes, true) bytes: the two slabs first.
        unsafe {
            let sg = gpu::stage(wg.add(off), slab, smem);
            let su = gpu::stage(wu.add(off), slab, smem.add(stage_bytes(slab)));
            (sg, su, RPW * warp, smem.add(2 * stage_bytes(slab)))
        }
    } else {
        (wg, wu, SWIGLU_A8_ROWS * blk + RPW * warp, smem)
    };
    // Shared memory (after the slabs): the quantized row (cols bytes), its [d, s] pairs, the
    // block's 32 results.
    // SAFETY: the launch's dynamic shared memory holds swiglu_a8_smem_bytes(cols, ..) bytes.
    let (xds, outs) = unsafe {
        let xds = xs.add(cols) as *mut f32;
        (xds, xds.add(2 * nb))
    };

    // Unstaged, the first round of weight loads goes out before the norm.
    const _: () = assert!(RPW == 2, "load_round and round are written out for 2 rows");
    const NONE: (Whole, Whole) = ((0, 0, [0; 8]), (0, 0, [0; 8]));
    let mut raw0 = if staged == 0 {
        // SAFETY: row0 + 4 ≤ rows (grid = rows / 32); the matrices are rows × cols.
        unsafe { load_round::<B>(wg, wu, row0, row_bytes, lane.min(nb - 1)) }
    } else {
        [NONE; RPW]
    };

    // Thread t holds elements c0 .. c0 + 4 of the row (c0 = 4 t; then c0 + SPAN, …): its norm
    // weights (constants, like the matrices) are loaded before the wait, its `h` right after,
    // kept in registers for the quantization, which 8 adjacent lanes do per block of 32.
    const SPAN: usize = 4 * 32 * WARPS;
    let c0 = 4 * gpu::thread_x() as usize;
    let at = |p: *const f32, c: usize| {
        if c < cols {
            // SAFETY: c + 4 ≤ cols (a multiple of 32); h and g are 16-byte aligned.
            unsafe { xa4(p, c) }
        } else {
            [0.0; 4]
        }
    };
    let g0 = at(g, c0);
    // The weights are on their way; from here on the previous kernel's output is read.
    gpu::pdl_wait();
    let h0 = at(h, c0);
    let sq = |v: [f32; 4]| v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3];
    let mut ss = sq(h0);
    let mut c = c0 + SPAN;
    while c < cols {
        ss += sq(at(h, c));
        c += SPAN;
    }
    // As `rms_norm_f32`: IEEE sqrt and division.
    let scale = 1.0 / core::f32::math::sqrt(gpu::block_sum(ss) / cols as f32 + eps);
    // The normed row quantized into shared memory. The loop runs while any lane of the warp has
    // elements (warp-uniform: every lane takes part in the shuffles); 32 divides cols, so a
    // group of 8 lanes is in the row or past it as a whole.
    let mut c = c0;
    while c - 4 * lane < cols {
        let (hv, gv) = if c == c0 {
            (h0, g0)
        } else {
            (at(h, c), at(g, c))
        };
        // As `rms_norm`: (h · scale) · g.
        let v = core::array::from_fn(|k| hv[k] * scale * gv[k]);
        let (q, d, s) = quantize_lanes8(v);
        if c < cols {
            let packed = (q[0] as u8 as u32)
                | ((q[1] as u8 as u32) << 8)
                | ((q[2] as u8 as u32) << 16)
                | ((q[3] as u8 as u32) << 24);
            // SAFETY: c + 4 ≤ cols: xs holds cols bytes (4-byte aligned), xds 2 nb floats.
            unsafe {
                *(xs.add(c) as *mut u32) = packed;
                if lane % 8 == 0 {
                    *xds.add(2 * (c / 32)) = d;
                    *xds.add(2 * (c / 32) + 1) = s;
                }
            }
        }
        c += SPAN;
    }
    gpu::cp_async_wait_all();
    gpu::sync_threads();
    if staged != 0 {
        // SAFETY: the slabs have landed (waited for, then the barrier).
        raw0 = unsafe { load_round::<B>(wg, wu, row0, row_bytes, lane.min(nb - 1)) };
    }

    let mut acc_g = [0.0f32; RPW];
    let mut acc_u = [0.0f32; RPW];
    // SAFETY (both rounds): xs and xds hold the quantized row, written before the barrier.
    unsafe { round::<B>(raw0, lane, nb, xs, xds, &mut acc_g, &mut acc_u) };
    let mut r0 = 32;
    while r0 < nb {
        let bb = r0 + lane;
        // SAFETY: as for the first round.
        unsafe {
            let raw = load_round::<B>(wg, wu, row0, row_bytes, bb.min(nb - 1));
            round::<B>(raw, bb, nb, xs, xds, &mut acc_g, &mut acc_u);
        }
        r0 += 32;
    }

    for i in 0..RPW {
        let (a, u) = (gpu::warp_sum(acc_g[i]), gpu::warp_sum(acc_u[i]));
        if lane == 0 {
            let o = silu_mul(a, u);
            // SAFETY: row0 + i < rows: out holds rows floats; outs 32.
            unsafe {
                *out.add(SWIGLU_A8_ROWS * blk + RPW * warp + i) = o;
                *outs.add(RPW * warp + i) = o;
            }
        }
    }
    gpu::sync_threads();
    if warp == 0 {
        // SAFETY: outs holds the block's 32 results (written before the barrier); oq holds rows
        // bytes and od rows / 16 floats.
        unsafe {
            let (qv, d, s) = quantize_warp(*outs.add(lane));
            *oq.add(32 * blk + lane) = qv as i8 as u8;
            if lane == 0 {
                *od.add(2 * blk) = d;
                *od.add(2 * blk + 1) = s;
            }
        }
    }
}

macro_rules! swiglu_a8_kernels {
    ($($name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// `wg`, `wu`: `rows × cols` matrices of the type; `h`, `g` cols floats (16-byte
        /// aligned); `out` rows floats, `oq` rows bytes, `od` rows / 16 floats (8-byte aligned);
        /// grid and shared memory as in the module header (validated by the launcher).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            wg: *const u8, wu: *const u8, h: *const f32, g: *const f32, eps: f32,
            out: *mut f32, oq: *mut u8, od: *mut f32, cols: u32, staged: u32,
        ) {
            gpu::pdl_trigger();
            // SAFETY: forwarded contract.
            unsafe { swiglu_a8::<$t>(wg, wu, h, g, eps, out, oq, od, cols, staged) }
        }
    )*};
}

swiglu_a8_kernels! {
    swiglu_a8_q4_0 => BlockQ4_0;
    swiglu_a8_q4_1 => BlockQ4_1;
    swiglu_a8_q5_0 => BlockQ5_0;
    swiglu_a8_q5_1 => BlockQ5_1;
    swiglu_a8_q8_0 => BlockQ8_0;
}
