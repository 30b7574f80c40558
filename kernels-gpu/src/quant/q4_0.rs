//! Q4_0: 32 weights, one f16 scale, 4-bit quants with an implicit offset of 8.

use super::{Block, QK32, assert_block_layout, f16_to_f32};

/// Q4_0 block (18 bytes, ggml `block_q4_0`).
///
/// ```text
/// offset  size  field
///      0     2  d       f16 scale
///      2    16  qs      4-bit quants: byte j holds element j (low nibble) and j+16 (high nibble)
/// ```
/// Element `i` = `d * (q_i - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16 bits (little-endian in the file).
    pub d: u16,
    pub qs: [u8; QK32 / 2],
}
assert_block_layout!(BlockQ4_0, 18);

impl BlockQ4_0 {
    /// The scale `d`.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le(self.d))
    }

    /// The signed quant of element `i` (0..32), in -8..8.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let byte = self.qs[i % 16];
        let nib = if i < 16 { byte & 0x0f } else { byte >> 4 };
        nib as i32 - 8
    }

    /// The signed quants of all 32 elements, in element order.
    #[inline]
    pub fn quants(&self, out: &mut [i8; QK32]) {
        for j in 0..16 {
            out[j] = (self.qs[j] & 0x0f) as i8 - 8;
            out[j + 16] = (self.qs[j] >> 4) as i8 - 8;
        }
    }

    /// Element `i` (0..32), decoded.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.d() * self.quant(i) as f32
    }
}

// SAFETY: repr(C), fields u16 + [u8; 16] (no padding, every bit pattern valid), 18 bytes,
// align 2 (asserted above).
unsafe impl Block<QK32> for BlockQ4_0 {
    const BYTES: usize = 18;
    const NAME: &'static str = "Q4_0";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK32]) {
        let d = self.d();
        for j in 0..16 {
            out[j] = d * ((self.qs[j] & 0x0f) as i32 - 8) as f32;
            out[j + 16] = d * ((self.qs[j] >> 4) as i32 - 8) as f32;
        }
    }
}
