//! Q4_K: 256 weights in 8 groups of 32; 4-bit quants, a 6-bit scale and a 6-bit min per group,
//! two f16 super-scales.

use super::{Block, QK_K, assert_block_layout, f16_to_f32};

/// The 6-bit scale and min of group `j` (0..8) from the 12 packed bytes Q4_K and Q5_K share
/// (ggml's `get_scale_min_k4`):
///
/// ```text
/// j < 4:  scale = s[j] & 63                          min = s[j + 4] & 63
/// j >= 4: scale = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4
///         min   = (s[j + 4] >> 4) | (s[j]     >> 6) << 4
/// ```
#[inline]
pub fn k_scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Q4_K super-block (144 bytes, ggml `block_q4_K`).
///
/// ```text
/// offset  size  field
///      0     2  d       f16 super-scale of the scales
///      2     2  dmin    f16 super-scale of the mins
///      4    12  scales  8 6-bit scales and 8 6-bit mins, packed (see [`k_scale_min`])
///     16   128  qs      4-bit quants: group j (elements 32j..32j+32) is the low (j even) or high
///                       (j odd) nibbles of qs[32*(j/2) .. 32*(j/2) + 32]
/// ```
/// Element `i` of group `j = i / 32` = `(d * sc_j) * q_i - dmin * m_j`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4K {
    /// Super-scale of the scales, f16 bits.
    pub d: u16,
    /// Super-scale of the mins, f16 bits.
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
assert_block_layout!(BlockQ4K, 144);

impl BlockQ4K {
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

    /// The 6-bit scale and 6-bit min of group `j` (0..8, 32 elements each).
    #[inline]
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        k_scale_min(&self.scales, j)
    }

    /// The quant of element `i` (0..256), in 0..16.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let byte = self.qs[32 * (i / 64) + i % 32];
        ((byte >> (4 * ((i / 32) % 2))) & 0x0f) as i32
    }

    /// Element `i` (0..256), decoded.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        let (sc, m) = self.scale_min(i / 32);
        let d1 = self.d() * sc as f32;
        let m1 = self.dmin() * m as f32;
        d1 * self.quant(i) as f32 - m1
    }

    /// Decodes group `j` (0..8): elements `32 * j .. 32 * j + 32`.
    #[inline]
    pub fn dequantize_sub(&self, j: usize, out: &mut [f32; 32]) {
        let (sc, m) = self.scale_min(j);
        let d1 = self.d() * sc as f32;
        let m1 = self.dmin() * m as f32;
        let q = &self.qs[32 * (j / 2)..32 * (j / 2) + 32];
        let shift = 4 * (j % 2);
        for l in 0..32 {
            out[l] = d1 * ((q[l] >> shift) & 0x0f) as f32 - m1;
        }
    }
}

// SAFETY: repr(C), fields u16, u16, [u8; 12], [u8; 128] (no padding, every bit pattern valid),
// 144 bytes, align 2 (asserted above).
unsafe impl Block<QK_K> for BlockQ4K {
    const BYTES: usize = 144;
    const NAME: &'static str = "Q4_K";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK_K]) {
        for (j, chunk) in out.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            self.dequantize_sub(j, chunk);
        }
    }
}
