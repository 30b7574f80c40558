//! Q4_1: 32 weights, an f16 scale and an f16 minimum, 4-bit unsigned quants.

use super::{Block, QK32, assert_block_layout, f16_to_f32};

/// Q4_1 block (20 bytes, ggml `block_q4_1`).
///
/// ```text
/// offset  size  field
///      0     2  d       f16 scale
///      2     2  m       f16 minimum (added to every element)
///      4    16  qs      4-bit quants: byte j holds element j (low nibble) and j+16 (high nibble)
/// ```
/// Element `i` = `d * q_i + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Minimum, f16 bits.
    pub m: u16,
    pub qs: [u8; QK32 / 2],
}
assert_block_layout!(BlockQ4_1, 20);

impl BlockQ4_1 {
    /// The scale `d`.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le(self.d))
    }

    /// The minimum `m`.
    #[inline]
    pub fn m(&self) -> f32 {
        f16_to_f32(u16::from_le(self.m))
    }

    /// The unsigned quant of element `i` (0..32), in 0..16.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let byte = self.qs[i % 16];
        (if i < 16 { byte & 0x0f } else { byte >> 4 }) as i32
    }

    /// The quants of all 32 elements, in element order (0..16 each).
    #[inline]
    pub fn quants(&self, out: &mut [i8; QK32]) {
        for j in 0..16 {
            out[j] = (self.qs[j] & 0x0f) as i8;
            out[j + 16] = (self.qs[j] >> 4) as i8;
        }
    }

    /// Element `i` (0..32), decoded.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.d() * self.quant(i) as f32 + self.m()
    }
}

// SAFETY: repr(C), fields u16, u16, [u8; 16] (no padding, every bit pattern valid), 20 bytes,
// align 2 (asserted above).
unsafe impl Block<QK32> for BlockQ4_1 {
    const BYTES: usize = 20;
    const NAME: &'static str = "Q4_1";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK32]) {
        let (d, m) = (self.d(), self.m());
        for j in 0..16 {
            out[j] = d * (self.qs[j] & 0x0f) as f32 + m;
            out[j + 16] = d * (self.qs[j] >> 4) as f32 + m;
        }
    }
}
