//! Q6_K: 256 weights in 16 groups of 16; 6-bit quants (4 low bits + 2 high bits) with an offset of
//! 32, a signed 8-bit scale per group, one f16 super-scale.

use super::{Block, QK_K, assert_block_layout, f16_to_f32};

/// Q6_K super-block (210 bytes, ggml `block_q6_K`).
///
/// ```text
/// offset  size  field
///      0   128  ql      low 4 bits: element i is nibble r/64 (low first) of ql[64*h + r % 64],
///                       where h = i / 128, r = i % 128
///    128    64  qh      high 2 bits: bits 2s..2s+2 of qh[32*h + r % 32], s = r / 32
///    192    16  scales  i8 scale per group of 16
///    208     2  d       f16 super-scale
/// ```
/// Element `i` of group `g = i / 16` = `(d * sc_g) * (q_i - 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    /// Super-scale, f16 bits.
    pub d: u16,
}
assert_block_layout!(BlockQ6K, 210);

impl BlockQ6K {
    /// The super-scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le(self.d))
    }

    /// The signed scale of group `g` (0..16, 16 elements each).
    #[inline]
    pub fn scale(&self, g: usize) -> i32 {
        self.scales[g] as i32
    }

    /// The signed quant of element `i` (0..256), in -32..32.
    #[inline]
    pub fn quant(&self, i: usize) -> i32 {
        let (h, r) = (i / 128, i % 128);
        let low = (self.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        let high = (self.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        (low | (high << 4)) as i32 - 32
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
        let (h, s) = (j / 4, j % 4);
        let ql = &self.ql[64 * h + 32 * (s % 2)..64 * h + 32 * (s % 2) + 32];
        let qh = &self.qh[32 * h..32 * h + 32];
        let lshift = 4 * (s / 2);
        let hshift = 2 * s;
        for half in 0..2 {
            let dl = d * self.scale(2 * j + half) as f32;
            for l in 16 * half..16 * half + 16 {
                let v = ((ql[l] >> lshift) & 0x0f) | (((qh[l] >> hshift) & 3) << 4);
                out[l] = dl * (v as i32 - 32) as f32;
            }
        }
    }
}

// SAFETY: repr(C), fields [u8; 128], [u8; 64], [i8; 16], u16 (no padding, every bit pattern
// valid), 210 bytes, align 2 (asserted above).
unsafe impl Block<QK_K> for BlockQ6K {
    const BYTES: usize = 210;
    const NAME: &'static str = "Q6_K";

    #[inline]
    fn dequantize(&self, out: &mut [f32; QK_K]) {
        for (j, chunk) in out.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            self.dequantize_sub(j, chunk);
        }
    }
}
