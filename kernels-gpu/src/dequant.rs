//! Dequantization kernels: the embedding gather and the weight decode of the GEMM path
//! (reference: `host::quant::dequantize_row`, bit-exact: the same f32 operations as the shared
//! block decode, no fused multiply-adds; the f16 outputs are those values rounded to nearest even).
//!
//! `dequant_<type>_<out>(w, ids, out, n_rows, cols)`: output row `r` is input row `ids[r]` (or `r`
//! when `ids` is null) of the row-major tensor `w` (`cols` elements per row, in GGUF blocks),
//! decoded. With `ids` = token ids this is the embedding lookup; without, it decodes a weight
//! matrix for cuBLAS. `<out>`:
//! - `f32`, `f16`: `n_rows × cols` values;
//! - `f16x3`: the split-f16 operand of the `F16x3` GEMM (`split.rs`): rows of `3 · cols` f16,
//!   `[hi(w)·2^S | hi(w) | lo(w)]`.
//!
//! Work split: a warp decodes 256 consecutive elements of the output per step, each lane 8 of them
//! in registers from the block bytes (no decode buffer): 4 lanes per 32-element block for the
//! legacy types (`matvec_dot::Legacy4`, 8 blocks per warp), a warp per 256-element K-quant
//! super-block (`matvec_dot::KWarp`). The lanes write their values as runs of 2, 4 or 8
//! consecutive elements with one vector store each (the warp's stores of one run cover whole
//! 32-byte sectors). F32/F16/BF16 read their 8 elements directly; Q2_K, Q3_K and Q5_K (no
//! register decode yet) decode their 32-element piece through `formats::decode_sub` into a local
//! buffer and keep 8 of it (4 lanes per piece).
//!
//! Launch: any 1-D grid of whole warps (grid-stride over the warp steps); the launcher uses
//! 256-thread blocks and `ceil(n_rows · cols / 256)` warps, covering the output once.
//! Limits: `cols` a multiple of the type's block size (and of 32); `n_rows · cols / 32 < 2^31`;
//! ids in range (the backend checks token ids on the host before a forward); `out` 16-byte
//! aligned (the launcher checks).

use core::marker::PhantomData;

use crate::formats::{Bf16x32, F16x32, F32x32, Sub32, decode_sub};
use crate::gpu;
use crate::matvec_dot::{KWarp, Legacy4};
use crate::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, bf16_to_f32, f16_to_f32,
};
use crate::split::{split_hi_scaled, split_lo};

/// A tensor type as the dequant kernels see it: blocks of `ELEMS` elements, `BYTES` bytes each,
/// shared by `LANES` lanes of a warp (`32 / LANES` blocks per warp step); part `p` of a block
/// (`p < LANES`) is 8 elements in runs of `RUN` consecutive ones.
trait Lanes {
    const ELEMS: usize;
    const BYTES: usize;
    const LANES: usize;
    const RUN: usize;
    /// First element (within the block) of run `j` of part `p`.
    fn start(p: usize, j: usize) -> usize;
    /// Part `p`'s 8 values, run after run, bit-identical to the CPU decode.
    ///
    /// # Safety
    /// `blk` points to a whole block of the type, 2-byte aligned (4 for F32).
    unsafe fn decode(blk: *const u8, p: usize) -> [f32; 8];
}

/// Legacy 32-element blocks, 4 lanes each ([`Legacy4`]).
struct Leg<B>(PhantomData<B>);
impl<B: Legacy4> Lanes for Leg<B> {
    const ELEMS: usize = 32;
    const BYTES: usize = B::BYTES;
    const LANES: usize = 4;
    const RUN: usize = B::RUN;
    #[inline(always)]
    fn start(p: usize, j: usize) -> usize {
        B::run_start(p, j)
    }
    #[inline(always)]
    unsafe fn decode(blk: *const u8, p: usize) -> [f32; 8] {
        // SAFETY: forwarded contract; p < 4.
        B::values(unsafe { B::load(blk, p) }, p)
    }
}

/// K-quant super-blocks, a warp each ([`KWarp`]).
struct Kw<B>(PhantomData<B>);
impl<B: KWarp> Lanes for Kw<B> {
    const ELEMS: usize = 256;
    const BYTES: usize = B::BYTES;
    const LANES: usize = 32;
    const RUN: usize = B::RUN;
    #[inline(always)]
    fn start(p: usize, j: usize) -> usize {
        B::run_start(p, j)
    }
    #[inline(always)]
    unsafe fn decode(blk: *const u8, p: usize) -> [f32; 8] {
        // SAFETY: forwarded contract; p < 32.
        B::values(unsafe { B::load(blk, p) }, p)
    }
}

/// A plain element type (F32, F16, BF16) in "blocks" of 32: part `p` is elements `8p .. 8p + 8`.
trait Plain {
    const SIZE: usize;
    /// Element `i` at `p`.
    ///
    /// # Safety
    /// `p` points to at least `i + 1` elements, aligned for the type.
    unsafe fn get(p: *const u8, i: usize) -> f32;
}
impl Plain for F32x32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        // SAFETY: caller contract.
        unsafe { *(p as *const f32).add(i) }
    }
}
impl Plain for F16x32 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        // SAFETY: caller contract.
        f16_to_f32(u16::from_le(unsafe { *(p as *const u16).add(i) }))
    }
}
impl Plain for Bf16x32 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        // SAFETY: caller contract.
        bf16_to_f32(u16::from_le(unsafe { *(p as *const u16).add(i) }))
    }
}
struct Pl<B>(PhantomData<B>);
impl<B: Plain> Lanes for Pl<B> {
    const ELEMS: usize = 32;
    const BYTES: usize = 32 * B::SIZE;
    const LANES: usize = 4;
    const RUN: usize = 8;
    #[inline(always)]
    fn start(p: usize, _j: usize) -> usize {
        8 * p
    }
    #[inline(always)]
    unsafe fn decode(blk: *const u8, p: usize) -> [f32; 8] {
        // SAFETY: elements 8p .. 8p + 8 < 32 of the block (caller contract).
        core::array::from_fn(|i| unsafe { B::get(blk, 8 * p + i) })
    }
}

/// Any [`Sub32`] type through its 32-element decode: 4 lanes per 32-element piece, part `p` is
/// elements `8p .. 8p + 8` of the block (piece `p / 4`).
struct Gen<B>(PhantomData<B>);
impl<B: Sub32> Lanes for Gen<B> {
    const ELEMS: usize = B::QK;
    const BYTES: usize = B::BYTES;
    const LANES: usize = 4 * B::QK / 32;
    const RUN: usize = 8;
    #[inline(always)]
    fn start(p: usize, _j: usize) -> usize {
        8 * p
    }
    #[inline(always)]
    unsafe fn decode(blk: *const u8, p: usize) -> [f32; 8] {
        let mut v = [0.0f32; 32];
        // SAFETY: the block is whole (caller contract); piece p / 4 < QK / 32.
        unsafe { decode_sub::<B>(blk, p / 4, &mut v) };
        let o = 8 * (p % 4);
        core::array::from_fn(|i| v[o + i])
    }
}

/// 8-byte and 16-byte aligned groups of words, for vector stores.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct W2([u32; 2]);
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct W4([u32; 4]);

/// Stores `n` (1, 2, 4 or 8) words of `w` at `p` with vector stores.
///
/// # Safety
/// `p` is aligned to `4n` bytes (16 for n = 8) and `n` words are writable there.
#[inline(always)]
unsafe fn store_words(p: *mut u32, w: [u32; 8], n: usize) {
    // SAFETY: caller contract.
    unsafe {
        match n {
            1 => *p = w[0],
            2 => (p as *mut W2).write(W2([w[0], w[1]])),
            4 => (p as *mut W4).write(W4([w[0], w[1], w[2], w[3]])),
            _ => {
                (p as *mut W4).write(W4([w[0], w[1], w[2], w[3]]));
                (p.add(4) as *mut W4).write(W4([w[4], w[5], w[6], w[7]]));
            }
        }
    }
}

/// Run `j` (`run` values) of `v`, as f16 bits packed in pairs (`run` even).
#[inline(always)]
fn pack16(v: &[f32; 8], j: usize, run: usize, f: impl Fn(f32) -> u16) -> [u32; 8] {
    core::array::from_fn(|i| {
        if 2 * i < run {
            let a = f(v[run * j + 2 * i]);
            let b = f(v[run * j + 2 * i + 1]);
            a as u32 | (b as u32) << 16
        } else {
            0
        }
    })
}

/// The output layouts.
trait Out {
    /// Writes run `j` of `v` (`run` values) at column `col` (a multiple of `run`) of row `row`.
    ///
    /// # Safety
    /// `out` is the kernel's output (16-byte aligned); `row < n_rows`, `col + run ≤ cols`,
    /// `cols` a multiple of 32.
    unsafe fn store(
        out: *mut u8,
        row: usize,
        cols: usize,
        col: usize,
        v: &[f32; 8],
        j: usize,
        run: usize,
    );
}

/// `f32`, `n_rows × cols`.
struct OutF32;
impl Out for OutF32 {
    #[inline(always)]
    unsafe fn store(
        out: *mut u8,
        row: usize,
        cols: usize,
        col: usize,
        v: &[f32; 8],
        j: usize,
        run: usize,
    ) {
        let w: [u32; 8] =
            core::array::from_fn(|i| if i < run { v[run * j + i].to_bits() } else { 0 });
        // SAFETY: element row·cols + col is a multiple of run (cols % 32 = 0), so 4·run-byte
        // aligned (16 for run 8) from the 16-aligned base; run floats are in the row.
        unsafe { store_words((out as *mut u32).add(row * cols + col), w, run) };
    }
}

/// f16 bits, `n_rows × cols`.
struct OutF16;
impl Out for OutF16 {
    #[inline(always)]
    unsafe fn store(
        out: *mut u8,
        row: usize,
        cols: usize,
        col: usize,
        v: &[f32; 8],
        j: usize,
        run: usize,
    ) {
        let w = pack16(v, j, run, gpu::f32_to_f16);
        // SAFETY: element row·cols + col is a multiple of run, so 2·run-byte aligned; run halves
        // are in the row.
        unsafe {
            store_words(
                (out as *mut u16).add(row * cols + col) as *mut u32,
                w,
                run / 2,
            )
        };
    }
}

/// The split-f16 weight operand (`split.rs`): rows of `3 · cols` f16, `[hi·2^S | hi | lo]`.
struct OutF16x3;
impl Out for OutF16x3 {
    #[inline(always)]
    unsafe fn store(
        out: *mut u8,
        row: usize,
        cols: usize,
        col: usize,
        v: &[f32; 8],
        j: usize,
        run: usize,
    ) {
        let hs = pack16(v, j, run, |x| split_hi_scaled(gpu::f32_to_f16(x)));
        let hi = pack16(v, j, run, gpu::f32_to_f16);
        let lo = pack16(v, j, run, split_lo);
        // SAFETY: the three elements are multiples of run (cols % 32 = 0), inside the output row
        // of 3·cols; alignment as for OutF16.
        unsafe {
            let base = (out as *mut u16).add(3 * row * cols + col);
            store_words(base as *mut u32, hs, run / 2);
            store_words(base.add(cols) as *mut u32, hi, run / 2);
            store_words(base.add(2 * cols) as *mut u32, lo, run / 2);
        }
    }
}

/// The kernel body: warp steps of 256 output elements (see the module header).
///
/// # Safety
/// Shapes as in the module header, validated by the launcher.
#[inline(always)]
unsafe fn dequant<U: Lanes, O: Out>(
    w: *const u8,
    ids: *const u32,
    out: *mut u8,
    n_rows: u32,
    cols: u32,
) {
    let per_row = cols / U::ELEMS as u32;
    let total = n_rows * per_row; // < 2^31 (launcher)
    let lane = gpu::lane() as usize;
    let p = lane % U::LANES;
    let per_warp = (32 / U::LANES) as u32;
    let mut b = (gpu::global_x() / 32) as u32 * per_warp + (lane / U::LANES) as u32;
    let step = (gpu::stride_x() / 32) as u32 * per_warp;
    while b < total {
        let row = b / per_row;
        let j = b - row * per_row;
        let src = if ids.is_null() {
            b as usize
        } else {
            // SAFETY: row < n_rows; ids holds n_rows in-range row indices (launcher).
            (unsafe { *ids.add(row as usize) }) as usize * per_row as usize + j as usize
        };
        // SAFETY: block src lies inside w (row ids[row] or row < the tensor's rows).
        let v = unsafe { U::decode(w.add(src * U::BYTES), p) };
        let c0 = j as usize * U::ELEMS;
        for r in 0..8 / U::RUN {
            // SAFETY: row < n_rows; c0 + start + RUN ≤ cols; start is a multiple of RUN.
            unsafe {
                O::store(
                    out,
                    row as usize,
                    cols as usize,
                    c0 + U::start(p, r),
                    &v,
                    r,
                    U::RUN,
                )
            };
        }
        b += step;
    }
}

macro_rules! dequant_kernels {
    ($($f32name:ident, $f16name:ident, $x3name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// Shapes as in the module header, validated by the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $f32name(
            w: *const u8, ids: *const u32, out: *mut f32, n_rows: u32, cols: u32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { dequant::<$t, OutF32>(w, ids, out as *mut u8, n_rows, cols) }
        }
        /// # Safety
        /// Shapes as in the module header, validated by the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $f16name(
            w: *const u8, ids: *const u32, out: *mut u16, n_rows: u32, cols: u32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { dequant::<$t, OutF16>(w, ids, out as *mut u8, n_rows, cols) }
        }
        /// # Safety
        /// Shapes as in the module header (`out` holds `3 · n_rows · cols` halves), validated by
        /// the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $x3name(
            w: *const u8, ids: *const u32, out: *mut u16, n_rows: u32, cols: u32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { dequant::<$t, OutF16x3>(w, ids, out as *mut u8, n_rows, cols) }
        }
    )*};
}

dequant_kernels! {
    dequant_f32_f32, dequant_f32_f16, dequant_f32_f16x3 => Pl<F32x32>;
    dequant_f16_f32, dequant_f16_f16, dequant_f16_f16x3 => Pl<F16x32>;
    dequant_bf16_f32, dequant_bf16_f16, dequant_bf16_f16x3 => Pl<Bf16x32>;
    dequant_q4_0_f32, dequant_q4_0_f16, dequant_q4_0_f16x3 => Leg<BlockQ4_0>;
    dequant_q4_1_f32, dequant_q4_1_f16, dequant_q4_1_f16x3 => Leg<BlockQ4_1>;
    dequant_q5_0_f32, dequant_q5_0_f16, dequant_q5_0_f16x3 => Leg<BlockQ5_0>;
    dequant_q5_1_f32, dequant_q5_1_f16, dequant_q5_1_f16x3 => Leg<BlockQ5_1>;
    dequant_q8_0_f32, dequant_q8_0_f16, dequant_q8_0_f16x3 => Leg<BlockQ8_0>;
    dequant_q2_k_f32, dequant_q2_k_f16, dequant_q2_k_f16x3 => Gen<BlockQ2K>;
    dequant_q3_k_f32, dequant_q3_k_f16, dequant_q3_k_f16x3 => Gen<BlockQ3K>;
    dequant_q4_k_f32, dequant_q4_k_f16, dequant_q4_k_f16x3 => Kw<BlockQ4K>;
    dequant_q5_k_f32, dequant_q5_k_f16, dequant_q5_k_f16x3 => Gen<BlockQ5K>;
    dequant_q6_k_f32, dequant_q6_k_f16, dequant_q6_k_f16x3 => Kw<BlockQ6K>;
}
