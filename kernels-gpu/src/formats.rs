//! The tensor types as the GPU kernels see them: every type decodes 32 consecutive elements at a
//! time (one legacy block, or one 32-element sub-block of a 256-element K-quant super-block),
//! through the decode functions of [`crate::quant`] — the same code the CPU path runs, so a format
//! is defined once. F32, F16 and BF16 are treated as "blocks" of 32 plain values.
//!
//! Used by `dequant.rs` (embedding gather, dequantization for the GEMM path) and `matvec.rs`.

use crate::quant::{
    Block, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, bf16_to_f32, f16_to_f32,
};

/// A tensor type decodable 32 elements at a time.
pub trait Sub32: Copy {
    /// Elements per block.
    const QK: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Decodes elements `32 * j .. 32 * j + 32` of the block (`j < QK / 32`).
    fn decode32(&self, j: usize, out: &mut [f32; 32]);
}

macro_rules! legacy {
    ($($t:ty),*) => {$(
        impl Sub32 for $t {
            const QK: usize = 32;
            const BYTES: usize = <$t as Block<32>>::BYTES;
            #[inline(always)]
            fn decode32(&self, _j: usize, out: &mut [f32; 32]) {
                self.dequantize(out);
            }
        }
    )*};
}
legacy!(BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0);

macro_rules! k_quant {
    ($($t:ty),*) => {$(
        impl Sub32 for $t {
            const QK: usize = 256;
            const BYTES: usize = <$t as Block<256>>::BYTES;
            #[inline(always)]
            fn decode32(&self, j: usize, out: &mut [f32; 32]) {
                self.dequantize_sub(j, out);
            }
        }
    )*};
}
k_quant!(BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K);

/// 32 f32 values (an F32 tensor seen in blocks).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct F32x32(pub [f32; 32]);
/// 32 f16 values, as bits.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct F16x32(pub [u16; 32]);
/// 32 bf16 values, as bits.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Bf16x32(pub [u16; 32]);

impl Sub32 for F32x32 {
    const QK: usize = 32;
    const BYTES: usize = 128;
    #[inline(always)]
    fn decode32(&self, _j: usize, out: &mut [f32; 32]) {
        *out = self.0;
    }
}

impl Sub32 for F16x32 {
    const QK: usize = 32;
    const BYTES: usize = 64;
    #[inline(always)]
    fn decode32(&self, _j: usize, out: &mut [f32; 32]) {
        *out = core::array::from_fn(|i| f16_to_f32(self.0[i]));
    }
}

impl Sub32 for Bf16x32 {
    const QK: usize = 32;
    const BYTES: usize = 64;
    #[inline(always)]
    fn decode32(&self, _j: usize, out: &mut [f32; 32]) {
        for (o, &h) in out.iter_mut().zip(&self.0) {
            *o = bf16_to_f32(h);
        }
    }
}

/// Decodes the 32 elements `32 * s .. 32 * s + 32` of a row starting at `row` (bytes).
///
/// # Safety
/// `row` points to a whole row of blocks of type `B` in device memory, aligned for `B`, holding at
/// least `32 * (s + 1)` elements.
#[inline(always)]
pub unsafe fn decode_sub<B: Sub32>(row: *const u8, s: usize, out: &mut [f32; 32]) {
    let per = B::QK / 32;
    // SAFETY: the block holding element 32 * s lies inside the row (caller contract); GGUF
    // blocks need 2-byte alignment (4 for F32), which device allocations and even block sizes
    // give.
    let blk = unsafe { &*(row.add((s / per) * B::BYTES) as *const B) };
    blk.decode32(s % per, out);
}
