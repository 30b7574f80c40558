//! Q8_0 weights in planar form, for the LM head's matrix-vector product (`matvec_q8p`).
//!
//! A GGUF Q8_0 row is a run of 34-byte blocks (`d: f16`, `qs: [i8; 32]`), only 2-byte aligned, so
//! a lane can load it only in 2-byte pieces. The planar form keeps the same values in two arrays:
//! the quants of each row contiguous (`qs[r · cols + c]`, one byte each) and the scales apart
//! (`d[r · cols / 32 + b]`, f16 bits of block `b`). With `cols` a multiple of 16 every row of `qs`
//! starts 16-byte aligned, and a lane loads 16 quants with one 16-byte load. The re-layout is
//! lossless: element `c` of row `r` is `f16(d[r][c / 32]) · qs[r][c]`, as in the block.
//!
//! Compiled for the host too: the host repacks with [`repack`], and the tests below check the
//! lane arithmetic ([`dot16`]) against the blocks' own dequantization.

use crate::matvec_dot::{MAGIC, byte_magic, fma};
use crate::quant::f16_to_f32;

/// Bytes of a GGUF Q8_0 block.
pub const BLOCK_BYTES: usize = 34;

/// Splits whole Q8_0 blocks (`blocks.len() / 34` of them, one or more rows) into `qs` (32 bytes
/// per block) and `d` (one f16 per block), in order. Returns `None` (and writes nothing) when the
/// lengths do not match.
pub fn repack(blocks: &[u8], qs: &mut [u8], d: &mut [u16]) -> Option<()> {
    let n = blocks.len() / BLOCK_BYTES;
    if blocks.len() != n * BLOCK_BYTES || qs.len() != 32 * n || d.len() != n {
        return None;
    }
    for ((b, q), dd) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(qs.chunks_exact_mut(32))
        .zip(d.iter_mut())
    {
        *dd = u16::from_le_bytes([b[0], b[1]]);
        q.copy_from_slice(&b[2..]);
    }
    Some(())
}

/// `Σ_i q_i · x_i` over 16 signed 8-bit quants packed little-endian in `q` (byte `i` of the
/// 16) and their 16 activations, in f32 (fused multiply-adds, left to right), each quant made a
/// float by [`byte_magic`] (sign bit flipped: `q + 128` in 0..256) rather than converted.
#[inline(always)]
pub fn dot16(q: [u32; 4], x: &[f32; 16]) -> f32 {
    let mut s = 0.0f32;
    for (w, word) in q.iter().enumerate() {
        let u = word ^ 0x8080_8080;
        for k in 0..4 {
            s = fma(byte_magic(u, k as u32) - (MAGIC + 128.0), x[4 * w + k], s);
        }
    }
    s
}

/// The value of a planar element from its quant byte and its block's scale bits.
#[inline(always)]
pub fn value(q: u8, d: u16) -> f32 {
    f16_to_f32(d) * q as i8 as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Block, BlockQ8_0, read_block};

    use crate::test_rng::Lcg;

    const N: usize = 56;

    /// `N` random blocks with normal f16 scales (no_std: fixed arrays).
    fn blocks(r: &mut Lcg) -> [u8; N * BLOCK_BYTES] {
        let mut v = [0u8; N * BLOCK_BYTES];
        for b in v.chunks_exact_mut(BLOCK_BYTES) {
            let d = ((r.next() & 1) << 15) | ((7 + r.next() % 8) << 10) | (r.next() & 0x3ff);
            b[..2].copy_from_slice(&(d as u16).to_le_bytes());
            for q in &mut b[2..] {
                *q = r.next() as u8;
            }
        }
        v
    }

    #[test]
    fn repack_keeps_every_value() {
        let mut r = Lcg(3);
        let raw = blocks(&mut r);
        let (mut qs, mut d) = ([0u8; N * 32], [0u16; N]);
        repack(&raw, &mut qs, &mut d).unwrap();
        for (b, bytes) in raw.chunks_exact(BLOCK_BYTES).enumerate() {
            let blk = read_block::<32, BlockQ8_0>(bytes).unwrap();
            let mut want = [0.0f32; 32];
            blk.dequantize(&mut want);
            for (i, w) in want.iter().enumerate() {
                let got = value(qs[32 * b + i], d[b]);
                assert_eq!(got.to_bits(), w.to_bits(), "block {b} element {i}");
            }
        }
        // Lengths that do not match are refused.
        assert!(repack(&raw[..34], &mut qs[..31], &mut d[..1]).is_none());
        assert!(repack(&raw[..33], &mut qs[..32], &mut d[..1]).is_none());
        assert!(repack(&raw[..34], &mut qs[..32], &mut d[..2]).is_none());
    }

    #[test]
    fn dot16_is_the_dot_of_the_quants() {
        let mut r = Lcg(5);
        for _ in 0..200 {
            let bytes: [u8; 16] = core::array::from_fn(|_| r.next() as u8);
            let x: [f32; 16] = core::array::from_fn(|_| (r.next() % 2001) as f32 / 1000.0 - 1.0);
            let q: [u32; 4] = core::array::from_fn(|w| {
                u32::from_le_bytes([
                    bytes[4 * w],
                    bytes[4 * w + 1],
                    bytes[4 * w + 2],
                    bytes[4 * w + 3],
                ])
            });
            let (mut want, mut mag) = (0.0f64, 0.0f64);
            for i in 0..16 {
                let t = bytes[i] as i8 as f64 * x[i] as f64;
                want += t;
                mag += t.abs();
            }
            // 16 f32 roundings: ≤ 16 · 2^-24 of Σ|q x|.
            let got = dot16(q, &x) as f64;
            assert!((got - want).abs() <= 1e-6 * mag, "got {got}, want {want}");
        }
    }
}
