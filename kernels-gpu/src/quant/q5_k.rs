//! Q5_K: 256 weights in 8 groups of 32; 5-bit quants (4 low bits + 1 high bit), a 6-bit scale and
//! a 6-bit min per group, two f16 super-scales.

use super::{Block, QK_K, assert_block_layout, f16_to_f32, k_scale_min};

/// Q5_K super-block (176 bytes, ggml `block_q5_K`).
///
/// ```text
/// offset  size  field
///      0     2  d       f16 super-scale of the scales
///      2     2  dmin    f16 super-scale of the mins
///      4    12  scales  8 6-bit scales and 8 6-bit mins, packed as in Q4_K ([`k_scale_min`])
///     16    32  qh      fifth bits: bit j of qh[l] is bit 4 of element 32j + l
///     48   128  qs      low 4 bits, laid out as Q4_K's quants
/// ```
/// Element `i` of group `j = i / 32` = `(d * sc_j) * q_i - dmin * m_j`, with `q_i` in 0..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5K {
    /// Super-scale of the scales, f16 bits.
    pub d: u16,
    /// Super-scale of the mins, f16 bits.
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
assert_block_layout!(BlockQ5K, 176);

impl BlockQ5K {
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

    /// The quant of element `i` (0..256), in 0..32.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let low = (self.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0x0f;
        let high = (self.qh[i % 32] >> (i / 32)) & 1;
        (low | (high << 4)) as i32
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
            let v = ((q[l] >> shift) & 0x0f) | (((self.qh[l] >> j) & 1) << 4);
            out[l] = d1 * v as f32 - m1;
        }
    }
}

// SAFETY: repr(C), fields u16, u16, [u8; 12], [u8; 32], [u8; 128] (no padding, every bit pattern
// valid), 176 bytes, align 2 (asserted above).
unsafe impl Block<QK_K> for BlockQ5K {
    const BYTES: usize = 176;
    const NAME: &'static str = "Q5_K";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK_K]) {
        for (j, chunk) in out.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            self.dequantize_sub(j, chunk);
        }
    }
}
