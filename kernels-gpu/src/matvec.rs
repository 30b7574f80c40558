//! Quantized matrix-vector product for decode: `y[r] = Σ_c W[r, c] · x[c]`, reading `W` in its
//! GGUF blocks (no repacking), f32 activations and accumulation (reference: the row dequantized by
//! `host::quant::dequantize_row`, dotted with `x` in f64).
//!
//! `matvec_<type>(w, x, y, rows, cols)`: `W` is row-major, `rows` rows of `cols` elements.
//! One warp per row: lane `l` decodes the 32-element pieces `l, l + 32, …` of the row through the
//! shared decode functions and dots them with `x`; a warp shuffle sums the lanes.
//!
//! Launch: grid = (ceil(rows / 4), 1, 1), block = (128, 1, 1) (4 warps = 4 rows per block).
//! Limits: `cols` a multiple of the type's block size (and of 32); `rows < 2^32`.

use crate::formats::{Bf16x32, F16x32, F32x32, Sub32, decode_sub};
use crate::gpu;
use crate::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0,
};

/// Rows (warps) per block.
pub const ROWS_PER_BLOCK: usize = 4;

#[inline(always)]
unsafe fn matvec<B: Sub32>(w: *const u8, x: *const f32, y: *mut f32, rows: u32, cols: u32) {
    let row = gpu::block_x() as usize * ROWS_PER_BLOCK + gpu::warp() as usize;
    if row >= rows as usize {
        return; // warp-uniform; no barriers below
    }
    let cols = cols as usize;
    let subs = cols / 32;
    let row_bytes = cols / B::QK * B::BYTES;
    // SAFETY: row < rows: inside W.
    let wr = unsafe { w.add(row * row_bytes) };
    let mut v = [0.0f32; 32];
    let mut acc = 0.0f32;
    let mut s = gpu::lane() as usize;
    while s < subs {
        // SAFETY: s < cols / 32.
        unsafe { decode_sub::<B>(wr, s, &mut v) };
        for (k, &wv) in v.iter().enumerate() {
            // SAFETY: 32 * s + k < cols; x holds cols floats.
            acc += wv * unsafe { *x.add(32 * s + k) };
        }
        s += 32;
    }
    let acc = gpu::warp_sum(acc);
    if gpu::lane() == 0 {
        // SAFETY: row < rows; y holds rows floats.
        unsafe { *y.add(row) = acc };
    }
}

macro_rules! matvec_kernels {
    ($($name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// Shapes as in the module header, validated by the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(
            w: *const u8, x: *const f32, y: *mut f32, rows: u32, cols: u32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { matvec::<$t>(w, x, y, rows, cols) }
        }
    )*};
}

matvec_kernels! {
    matvec_f32 => F32x32;
    matvec_f16 => F16x32;
    matvec_bf16 => Bf16x32;
    matvec_q4_0 => BlockQ4_0;
    matvec_q4_1 => BlockQ4_1;
    matvec_q5_0 => BlockQ5_0;
    matvec_q5_1 => BlockQ5_1;
    matvec_q8_0 => BlockQ8_0;
    matvec_q2_k => BlockQ2K;
    matvec_q3_k => BlockQ3K;
    matvec_q4_k => BlockQ4K;
    matvec_q5_k => BlockQ5K;
    matvec_q6_k => BlockQ6K;
}
