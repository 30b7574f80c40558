//! Q3_K: 256 weights in 16 groups of 16; 3-bit quants (2 low bits + 1 high bit), a signed 6-bit
//! scale per group, one f16 super-scale.

use super::{Block, QK_K, assert_block_layout, f16_to_f32};

/// Q3_K super-block (110 bytes, ggml `block_q3_K`).
///
/// ```text
/// offset  size  field
///      0    32  hmask   high bits: bit i/32 of hmask[i % 32] belongs to element i; a CLEAR bit
///                       subtracts 4 from the quant
///     32    64  qs      low 2 bits: bits 2s..2s+2 of qs[32*h + l], h = i/128, s = (i%128)/32,
///                       l = i % 32
///     96    12  scales  16 6-bit scales, stored + 32: low 4 bits of scale g are the low (g < 8)
///                       or high (g >= 8) nibble of byte g % 8; its top 2 bits are bits
///                       2*(g/4)..2*(g/4)+2 of byte 8 + g % 4
///    108     2  d       f16 super-scale
/// ```
/// Element `i` of group `g = i / 16` = `(d * (sc_g - 32)) * q_i`, with `q_i` in -4..4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    /// Super-scale, f16 bits.
    pub d: u16,
}
assert_block_layout!(BlockQ3K, 110);

impl BlockQ3K {
    /// The super-scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le(self.d))
    }

    /// The signed scale of group `g` (0..16, 16 elements each), in -32..32.
    #[inline]
    pub fn scale(&self, g: usize) -> i32 {
        let low = if g < 8 {
            self.scales[g] & 0x0f
        } else {
            self.scales[g - 8] >> 4
        };
        let high = (self.scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        (low | (high << 4)) as i32 - 32
    }

    /// The signed quant of element `i` (0..256), in -4..4.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let low = (self.qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
        let high = (self.hmask[i % 32] >> (i / 32)) & 1;
        low as i32 - if high == 0 { 4 } else { 0 }
    }

    /// Element `i` (0..256), decoded.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        let dl = self.d() * self.scale(i / 16) as f32;
        dl * self.quant(i) as f32
    }

    /// Decodes elements `32 * j .. 32 * j + 32` (j in 0..8: groups 2j and 2j+1).
    #[inline]
    pub fn dequantize_sub(&self, j: usize, out: &mut [f32; 32]) {
        let d = self.d();
        let q = &self.qs[32 * (j / 4)..32 * (j / 4) + 32];
        let shift = 2 * (j % 4);
        for half in 0..2 {
            let dl = d * self.scale(2 * j + half) as f32;
            for l in 16 * half..16 * half + 16 {
                let low = ((q[l] >> shift) & 3) as i32;
                let high = (self.hmask[l] >> j) & 1;
                let v = low - if high == 0 { 4 } else { 0 };
                out[l] = dl * v as f32;
            }
        }
    }
}

// SAFETY: repr(C), fields [u8; 32], [u8; 64], [u8; 12], u16 (no padding, every bit pattern
// valid), 110 bytes, align 2 (asserted above).
unsafe impl Block<QK_K> for BlockQ3K {
    const BYTES: usize = 110;
    const NAME: &'static str = "Q3_K";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK_K]) {
        for (j, chunk) in out.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            self.dequantize_sub(j, chunk);
        }
    }
}
