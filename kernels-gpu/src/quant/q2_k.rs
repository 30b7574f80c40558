//! Q2_K: 256 weights in 16 groups of 16; 2-bit quants, a 4-bit scale and a 4-bit min per group,
//! and two f16 super-scales.

use super::{Block, QK_K, assert_block_layout, f16_to_f32};

/// Q2_K super-block (84 bytes, ggml `block_q2_K`).
///
/// ```text
/// offset  size  field
///      0    16  scales  byte g: low nibble = scale of group g, high nibble = min of group g
///     16    64  qs      2-bit quants: element i is bits 2s..2s+2 of qs[32*h + l], where
///                       h = i / 128, s = (i % 128) / 32, l = i % 32
///     80     2  d       f16 super-scale of the scales
///     82     2  dmin    f16 super-scale of the mins
/// ```
/// Element `i` of group `g = i / 16` = `(d * sc_g) * q_i - dmin * m_g`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    /// Super-scale of the scales, f16 bits.
    pub d: u16,
    /// Super-scale of the mins, f16 bits.
    pub dmin: u16,
}
assert_block_layout!(BlockQ2K, 84);

impl BlockQ2K {
    /// The super-scale of the scales.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le(self.d))
    }

    /// The super-scale of the mins.
    #[inline]
    pub fn dmin(&self) -> f32 {
        f16_to_f32(u16::from_le(self.dmin))
    }

    /// The 4-bit scale and 4-bit min of group `g` (0..16, 16 elements each).
    #[inline]
    pub fn scale_min(&self, g: usize) -> (u8, u8) {
        (self.scales[g] & 0x0f, self.scales[g] >> 4)
    }

    /// The quant of element `i` (0..256), in 0..4.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let byte = self.qs[32 * (i / 128) + i % 32];
        ((byte >> (2 * ((i % 128) / 32))) & 3) as i32
    }

    /// Element `i` (0..256), decoded.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        let (sc, m) = self.scale_min(i / 16);
        let dl = self.d() * sc as f32;
        let ml = self.dmin() * m as f32;
        dl * self.quant(i) as f32 - ml
    }

    /// Decodes elements `32 * j .. 32 * j + 32` (j in 0..8: groups 2j and 2j+1).
    #[inline]
    pub fn dequantize_sub(&self, j: usize, out: &mut [f32; 32]) {
        let (d, dmin) = (self.d(), self.dmin());
        let q = &self.qs[32 * (j / 4)..32 * (j / 4) + 32];
        let shift = 2 * (j % 4);
        for half in 0..2 {
            let (sc, m) = self.scale_min(2 * j + half);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            for l in 16 * half..16 * half + 16 {
                out[l] = dl * ((q[l] >> shift) & 3) as f32 - ml;
            }
        }
    }
}

// SAFETY: repr(C), fields [u8; 16], [u8; 64], u16, u16 (no padding, every bit pattern valid),
// 84 bytes, align 2 (asserted above).
unsafe impl Block<QK_K> for BlockQ2K {
    const BYTES: usize = 84;
    const NAME: &'static str = "Q2_K";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK_K]) {
        for (j, chunk) in out.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            self.dequantize_sub(j, chunk);
        }
    }
}
