//! Quantization formats on the CPU: row dequantization for every tensor type the engine reads,
//! and the dot products and matrix-vector products of the CPU reference backend.
//!
//! The block layouts and their decode functions live in `kernels_gpu::quant` (one definition,
//! shared with the GPU kernels); this module adds the shape checks, the float types (F32, F16,
//! BF16) and the fast paths.

mod act;
mod dequant;
mod dot;
mod error;

pub use act::{ActKind, BlockQ8K, Q8Blocks, QuantizedVec};
pub use dequant::{dequantize_row, dequantize_row_to_vec};
pub use dot::{
    Isa, matmul, matvec, matvec_quantized, matvec_with, vec_dot, vec_dot_reference, vec_dot_with,
};
pub use error::QuantError;
pub use kernels_gpu::quant::{
    Block, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, CastError, QK_K, QK32, bf16_to_f32, blocks_as_bytes, cast_blocks,
    f16_to_f32, read_block,
};

#[cfg(test)]
mod tests;
