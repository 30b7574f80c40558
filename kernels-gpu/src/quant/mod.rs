//! GGUF block formats: one `#[repr(C)]` struct per ggml quantization type, with the decode
//! functions that both the CPU path (host) and the GPU kernels call. A format is defined here and
//! nowhere else.
//!
//! | type   | struct        | QK  | bytes | value of element `i`                                  |
//! | ------ | ------------- | --- | ----- | ----------------------------------------------------- |
//! | Q4_0   | [`BlockQ4_0`] | 32  | 18    | `d * (q - 8)`, q in 0..16                              |
//! | Q4_1   | [`BlockQ4_1`] | 32  | 20    | `d * q + m`, q in 0..16                                |
//! | Q5_0   | [`BlockQ5_0`] | 32  | 22    | `d * (q - 16)`, q in 0..32                             |
//! | Q5_1   | [`BlockQ5_1`] | 32  | 24    | `d * q + m`, q in 0..32                                |
//! | Q8_0   | [`BlockQ8_0`] | 32  | 34    | `d * q`, q in -128..128                                |
//! | Q2_K   | [`BlockQ2K`]  | 256 | 84    | `(d * sc) * q - dmin * m`, 16 groups of 16, q in 0..4   |
//! | Q3_K   | [`BlockQ3K`]  | 256 | 110   | `(d * sc) * q`, 16 groups of 16, q in -4..4, sc 6-bit   |
//! | Q4_K   | [`BlockQ4K`]  | 256 | 144   | `(d * sc) * q - dmin * m`, 8 groups of 32, q in 0..16   |
//! | Q5_K   | [`BlockQ5K`]  | 256 | 176   | `(d * sc) * q - dmin * m`, 8 groups of 32, q in 0..32   |
//! | Q6_K   | [`BlockQ6K`]  | 256 | 210   | `(d * sc) * q`, 16 groups of 16, q in -32..32, sc i8    |
//!
//! The float operations (and their order) are exactly ggml's reference dequantization, so a
//! decoded value is bit-identical to what ggml and gguf-py produce; the spec tests check this
//! against vectors made by gguf-py.
//!
//! Invariants every block struct keeps (and [`Block`]'s safety contract states):
//! - `#[repr(C)]`, fields only `u16` (an f16 or raw bits), `u8`/`i8` arrays: no padding, any bit
//!   pattern is a valid value, `align_of` is 2 (1 for none here) — blocks in a GGUF file are only
//!   2-byte aligned (18-, 22-, 34-byte blocks), so nothing may require more.
//! - `size_of` is exactly ggml's block size (checked by `const` assertions).
//! - Multi-byte fields are little-endian in the file; the accessors convert (a no-op on x86_64
//!   and nvptx64).
//!
//! Everything here is `no_std`, uses no `f16` type, and compiles for the host and for nvptx64.

mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;

pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::{BlockQ4K, k_scale_min, k_scales_mins};
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;

/// Elements per block of the legacy formats (Q4_0 … Q8_0).
pub const QK32: usize = 32;
/// Elements per super-block of the K-quants (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// An IEEE 754 binary16 value (given as its bits) converted to f32, exactly: [`f16_to_f32_bits`]
/// on the host, the hardware conversion (`cvt.f32.f16`, one instruction instead of a dozen and
/// two branches) on the device. Both give the same f32 for every input that is not a NaN (and a
/// NaN for a NaN).
#[cfg(not(target_arch = "nvptx64"))]
#[inline]
pub const fn f16_to_f32(h: u16) -> f32 {
    f16_to_f32_bits(h)
}

/// See the host version.
#[cfg(target_arch = "nvptx64")]
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    crate::gpu::f16_to_f32(h)
}

/// An IEEE 754 binary16 value (given as its bits) converted to f32, exactly.
///
/// Integer-only, so it behaves the same on every target and with any denormal mode: subnormal
/// halves become normal f32, infinities stay infinite, NaNs stay NaN (payload shifted into the
/// top of the f32 mantissa, quiet bit not forced).
#[inline]
pub const fn f16_to_f32_bits(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let bits = if exp == 0x1f {
        // Inf or NaN.
        sign | 0x7f80_0000 | (man << 13)
    } else if exp != 0 {
        // Normal: rebias the exponent from 15 to 127.
        sign | ((exp + (127 - 15)) << 23) | (man << 13)
    } else if man == 0 {
        // ±0.
        sign
    } else {
        // Subnormal: man * 2^-24. Shift the leading one up to bit 10 (the implicit bit) and
        // lower the exponent accordingly.
        let shift = man.leading_zeros() - 21; // man < 2^10, so leading_zeros >= 22: shift >= 1
        let man = (man << shift) & 0x3ff;
        sign | ((127 - 15 + 1 - shift) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

/// A bfloat16 value (given as its bits) converted to f32, exactly: bf16 is the top half of an f32.
#[inline]
pub const fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A GGUF block format.
///
/// # Safety
/// Implementors guarantee: `#[repr(C)]` with no padding, `size_of::<Self>() == BYTES`,
/// `align_of::<Self>() <= 2`, and every bit pattern of `BYTES` bytes is a valid value (fields are
/// integers and integer arrays only). [`cast_blocks`] relies on all of this to view file bytes as
/// blocks.
pub unsafe trait Block<const QK: usize>: Copy + 'static {
    /// Bytes per block, as in ggml.
    const BYTES: usize;
    /// ggml's name for the type.
    const NAME: &'static str;

    /// Decodes the whole block into `out`.
    fn dequantize(&self, out: &mut [f32; QK]);
}

/// Why bytes could not be viewed as blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastError {
    /// The byte count is not a whole number of blocks.
    Length { len: usize, block_bytes: usize },
    /// The start address is not aligned for the block type (blocks need 2-byte alignment).
    Misaligned { addr: usize, align: usize },
}

impl core::fmt::Display for CastError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CastError::Length { len, block_bytes } => write!(
                f,
                "{len} bytes is not a whole number of {block_bytes}-byte blocks"
            ),
            CastError::Misaligned { addr, align } => {
                write!(f, "address {addr:#x} is not {align}-byte aligned")
            }
        }
    }
}

/// Views `bytes` as a slice of blocks, without copying.
///
/// Fails when `bytes.len()` is not a multiple of `B::BYTES` or the start is not aligned to
/// `align_of::<B>()` (2): GGUF tensor data is 32-byte aligned and every block size is even, so any
/// whole-block range of a tensor qualifies; a byte buffer at an odd address does not.
#[inline]
pub fn cast_blocks<const QK: usize, B: Block<QK>>(bytes: &[u8]) -> Result<&[B], CastError> {
    let size = core::mem::size_of::<B>();
    let align = core::mem::align_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(CastError::Length {
            len: bytes.len(),
            block_bytes: size,
        });
    }
    let addr = bytes.as_ptr() as usize;
    if !addr.is_multiple_of(align) {
        return Err(CastError::Misaligned { addr, align });
    }
    // SAFETY: the pointer is aligned for B (checked above), the length covers exactly
    // `len / size` blocks inside `bytes`, B has no padding and every bit pattern is a valid B
    // (the `Block` contract), and the lifetime is tied to `bytes`.
    Ok(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) })
}

/// The bytes of a slice of blocks (as they are laid out in a GGUF file).
#[inline]
pub fn blocks_as_bytes<const QK: usize, B: Block<QK>>(blocks: &[B]) -> &[u8] {
    // SAFETY: B has no padding (the `Block` contract), so all `size_of_val(blocks)` bytes are
    // initialized; u8 has alignment 1; the lifetime is tied to `blocks`.
    unsafe {
        core::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), core::mem::size_of_val(blocks))
    }
}

/// Reads one block from `bytes` (at least `B::BYTES` long) at any alignment, by copy.
#[inline]
pub fn read_block<const QK: usize, B: Block<QK>>(bytes: &[u8]) -> Option<B> {
    if bytes.len() < core::mem::size_of::<B>() {
        return None;
    }
    // SAFETY: at least size_of::<B>() bytes are readable (checked), read_unaligned has no
    // alignment requirement, and every bit pattern is a valid B (the `Block` contract).
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<B>()) })
}

/// Asserts at compile time that a block struct has ggml's size and an alignment of at most 2.
macro_rules! assert_block_layout {
    ($ty:ty, $bytes:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $bytes);
        const _: () = assert!(core::mem::align_of::<$ty>() <= 2);
    };
}
pub(crate) use assert_block_layout;
