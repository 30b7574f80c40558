//! Row dequantization: bytes of one GGUF row (any supported type) to f32, bit-exact with ggml's
//! reference dequantization.

use super::QuantError;
use crate::gguf::GgmlType;
use kernels_gpu::quant::{
    Block, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, bf16_to_f32, f16_to_f32, read_block,
};

/// Dequantizes one row: `src` holds `dst.len()` elements of type `ty` (whole blocks), `dst`
/// receives them as f32.
///
/// Works at any alignment of `src`. Errors when `dst.len()` is not a whole number of blocks or
/// `src` is not exactly the bytes of `dst.len()` elements.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    QuantError::check_row(ty, dst.len(), src)?;
    match ty {
        GgmlType::F32 => {
            for (o, b) in dst.iter_mut().zip(src.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        GgmlType::F16 => {
            for (o, b) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
                *o = f16_to_f32(u16::from_le_bytes(*b));
            }
        }
        GgmlType::BF16 => {
            for (o, b) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
                *o = bf16_to_f32(u16::from_le_bytes(*b));
            }
        }
        GgmlType::Q4_0 => blocks::<32, BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => blocks::<32, BlockQ4_1>(src, dst),
        GgmlType::Q5_0 => blocks::<32, BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => blocks::<32, BlockQ5_1>(src, dst),
        GgmlType::Q8_0 => blocks::<32, BlockQ8_0>(src, dst),
        GgmlType::Q2K => blocks::<256, BlockQ2K>(src, dst),
        GgmlType::Q3K => blocks::<256, BlockQ3K>(src, dst),
        GgmlType::Q4K => blocks::<256, BlockQ4K>(src, dst),
        GgmlType::Q5K => blocks::<256, BlockQ5K>(src, dst),
        GgmlType::Q6K => blocks::<256, BlockQ6K>(src, dst),
    }
    Ok(())
}

/// [`dequantize_row`] into a new vector of `n` elements.
pub fn dequantize_row_to_vec(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    let mut out = vec![0.0; n];
    dequantize_row(ty, src, &mut out)?;
    Ok(out)
}

/// Decodes whole blocks; the caller checked that `src` holds exactly the blocks of `dst`.
fn blocks<const QK: usize, B: Block<QK>>(src: &[u8], dst: &mut [f32]) {
    let out = dst.as_chunks_mut::<QK>().0;
    for (o, bytes) in out.iter_mut().zip(src.chunks_exact(B::BYTES)) {
        // Blocks are read by copy: `src` may sit at any address (an odd offset into a buffer).
        let b: B = read_block(bytes).expect("chunks_exact gives whole blocks");
        b.dequantize(o);
    }
}
