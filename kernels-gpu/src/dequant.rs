//! Dequantization kernels: the embedding gather and the weight decode of the GEMM path
//! (reference: `host::quant::dequantize_row`, bit-exact: the same decode functions, no fused
//! multiply-adds; the f16 outputs are those values rounded to nearest even).
//!
//! `dequant_<type>_f32(w, ids, out, n_rows, cols)` and `dequant_<type>_f16(...)`: output row `r`
//! is input row `ids[r]` (or `r` when `ids` is null) of the row-major tensor `w` (`cols` elements
//! per row, in GGUF blocks), decoded to f32 or f16. With `ids` = token ids this is the embedding
//! lookup; without, it decodes a weight matrix for cuBLAS.
//!
//! Launch: any 1-D grid, one thread per 32-element piece (grid-stride over
//! `n_rows * cols / 32`); the launcher uses 256-thread blocks covering them once.
//! Limits: `cols` a multiple of the type's block size (and of 32); ids in range (the launcher
//! checks the token ids on the host before a forward).

use crate::formats::{Bf16x32, F16x32, F32x32, Sub32, decode_sub};
use crate::gpu;
use crate::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0,
};

#[inline(always)]
unsafe fn dequant_rows<B: Sub32, const F16: bool>(
    w: *const u8,
    ids: *const u32,
    out: *mut u8,
    n_rows: u32,
    cols: u32,
) {
    let cols = cols as usize;
    let subs = cols / 32;
    let row_bytes = cols / B::QK * B::BYTES;
    let total = n_rows as usize * subs;
    let mut i = gpu::global_x();
    let mut v = [0.0f32; 32];
    while i < total {
        let (r, s) = (i / subs, i % subs);
        // SAFETY: r < n_rows; ids (when given) holds n_rows in-range row indices.
        let src = if ids.is_null() {
            r
        } else {
            (unsafe { *ids.add(r) }) as usize
        };
        // SAFETY: row `src` of w holds `cols` elements; s < cols / 32.
        unsafe { decode_sub::<B>(w.add(src * row_bytes), s, &mut v) };
        let o = r * cols + s * 32;
        for (k, &x) in v.iter().enumerate() {
            // SAFETY: o + k < n_rows * cols; out holds that many f32 or f16.
            unsafe {
                if F16 {
                    *(out as *mut u16).add(o + k) = gpu::f32_to_f16(x);
                } else {
                    *(out as *mut f32).add(o + k) = x;
                }
            }
        }
        i += gpu::stride_x();
    }
}

macro_rules! dequant_kernels {
    ($($f32name:ident, $f16name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// Shapes as in the module header, validated by the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $f32name(
            w: *const u8, ids: *const u32, out: *mut f32, n_rows: u32, cols: u32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { dequant_rows::<$t, false>(w, ids, out as *mut u8, n_rows, cols) }
        }
        /// # Safety
        /// Shapes as in the module header, validated by the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $f16name(
            w: *const u8, ids: *const u32, out: *mut u16, n_rows: u32, cols: u32,
        ) {
            // SAFETY: forwarded contract.
            unsafe { dequant_rows::<$t, true>(w, ids, out as *mut u8, n_rows, cols) }
        }
    )*};
}

dequant_kernels! {
    dequant_f32_f32, dequant_f32_f16 => F32x32;
    dequant_f16_f32, dequant_f16_f16 => F16x32;
    dequant_bf16_f32, dequant_bf16_f16 => Bf16x32;
    dequant_q4_0_f32, dequant_q4_0_f16 => BlockQ4_0;
    dequant_q4_1_f32, dequant_q4_1_f16 => BlockQ4_1;
    dequant_q5_0_f32, dequant_q5_0_f16 => BlockQ5_0;
    dequant_q5_1_f32, dequant_q5_1_f16 => BlockQ5_1;
    dequant_q8_0_f32, dequant_q8_0_f16 => BlockQ8_0;
    dequant_q2_k_f32, dequant_q2_k_f16 => BlockQ2K;
    dequant_q3_k_f32, dequant_q3_k_f16 => BlockQ3K;
    dequant_q4_k_f32, dequant_q4_k_f16 => BlockQ4K;
    dequant_q5_k_f32, dequant_q5_k_f16 => BlockQ5K;
    dequant_q6_k_f32, dequant_q6_k_f16 => BlockQ6K;
}
