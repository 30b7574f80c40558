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

/// All 8 scales (bytes 0..8) and 8 mins (bytes 8..16) of the packed 12 bytes at once, with the
/// same result as [`k_scale_min`] for each `j`, in a handful of u32 operations.
#[inline]
pub fn k_scales_mins(scales: &[u8; 12]) -> [u8; 16] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([scales[i], scales[i + 1], scales[i + 2], scales[i + 3]]);
    let (a, b, c) = (w(0), w(4), w(8));
    // Byte k of each word: scale k, scale 4+k, min k, min 4+k.
    let sc_lo = a & LOW6;
    let sc_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let mn_lo = b & LOW6;
    let mn_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&sc_lo.to_le_bytes());
    out[4..8].copy_from_slice(&sc_hi.to_le_bytes());
    out[8..12].copy_from_slice(&mn_lo.to_le_bytes());
    out[12..16].copy_from_slice(&mn_hi.to_le_bytes());
    out
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
