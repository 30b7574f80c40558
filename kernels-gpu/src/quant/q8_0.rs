//! Q8_0: 32 weights, one f16 scale, signed 8-bit quants.

use super::{Block, QK32, assert_block_layout, f16_to_f32};

/// Q8_0 block (34 bytes, ggml `block_q8_0`).
///
/// ```text
/// offset  size  field
///      0     2  d       f16 scale
///      2    32  qs      i8 quants, element order
/// ```
/// Element `i` = `d * q_i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 bits.
    pub d: u16,
    pub qs: [i8; QK32],
}
assert_block_layout!(BlockQ8_0, 34);

impl BlockQ8_0 {
    /// The scale `d`.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le(self.d))
    }

    /// The quant of element `i` (0..32).
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        self.qs[i] as i32
    }

    /// Element `i` (0..32), decoded.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.qs[i] as f32 * self.d()
    }
}

// SAFETY: repr(C), fields u16 + [i8; 32] (no padding, every bit pattern valid), 34 bytes,
// align 2 (asserted above).
unsafe impl Block<QK32> for BlockQ8_0 {
    const BYTES: usize = 34;
    const NAME: &'static str = "Q8_0";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK32]) {
        let d = self.d();
        for (o, q) in out.iter_mut().zip(self.qs) {
            *o = q as f32 * d;
        }
    }
}
