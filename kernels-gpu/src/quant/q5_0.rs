//! Q5_0: 32 weights, one f16 scale, 5-bit quants (4 low bits + 1 high bit) with an offset of 16.

use super::{Block, QK32, assert_block_layout, f16_to_f32};

/// Q5_0 block (22 bytes, ggml `block_q5_0`).
///
/// ```text
/// offset  size  field
///      0     2  d       f16 scale
///      2     4  qh      fifth bits: bit i of the little-endian u32 is bit 4 of element i
///      6    16  qs      low 4 bits: byte j holds element j (low nibble) and j+16 (high nibble)
/// ```
/// Element `i` = `d * (q_i - 16)`. `qh` is a byte array because the block is only 2-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16 bits.
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK32 / 2],
}
assert_block_layout!(BlockQ5_0, 22);

impl BlockQ5_0 {
    /// The scale `d`.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le(self.d))
    }

    /// The 32 high bits, bit `i` belonging to element `i`.
    #[inline]
    pub fn qh(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }

    /// The signed quant of element `i` (0..32), in -16..16.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let byte = self.qs[i % 16];
        let lo = if i < 16 { byte & 0x0f } else { byte >> 4 } as u32;
        let hi = (self.qh() >> i) & 1;
        (lo | (hi << 4)) as i32 - 16
    }

    /// The signed quants of all 32 elements, in element order.
    #[inline]
    pub fn quants(&self, out: &mut [i8; QK32]) {
        let qh = self.qh();
        for j in 0..16 {
            let h0 = ((qh >> j) & 1) as u8;
            let h1 = ((qh >> (j + 16)) & 1) as u8;
            out[j] = ((self.qs[j] & 0x0f) | (h0 << 4)) as i8 - 16;
            out[j + 16] = ((self.qs[j] >> 4) | (h1 << 4)) as i8 - 16;
        }
    }

    /// Element `i` (0..32), decoded.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        self.d() * self.quant(i) as f32
    }
}

// SAFETY: repr(C), fields u16, [u8; 4], [u8; 16] (no padding, every bit pattern valid), 22 bytes,
// align 2 (asserted above).
unsafe impl Block<QK32> for BlockQ5_0 {
    const BYTES: usize = 22;
    const NAME: &'static str = "Q5_0";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK32]) {
        let mut q = [0i8; QK32];
        self.quants(&mut q);
        let d = self.d();
        for (o, q) in out.iter_mut().zip(q) {
            *o = d * q as f32;
        }
    }
}
