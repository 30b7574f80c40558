//! 8-bit activations and integer dot products for decode (ggml's MMVQ scheme, this engine's own
//! code): an activation vector is quantized once per block of 32 (`d = max |x| / 127`,
//! `q = round_half_even(x / d)`, and `s = d · Σ q`, exactly the CPU's `quant::Q8Blocks`), and
//! each weight row is then dotted with it four elements per `dp4a` instruction: the quants are
//! never converted to floats, one float multiply per block remains. The matvecs of decode were
//! bound by their instruction count (about 13 lane instructions per weight with f32
//! activations; PERF.md), not by DRAM.
//!
//! Device layout of a quantized vector of `n` elements: `qs`, `n` bytes (i8), 16-byte aligned;
//! `ds`, `n / 32` pairs `[d, s]` of f32.
//!
//! The lane layouts are those of `matvec_dot`: 4 lanes per 32-element legacy block (lane `q`
//! takes words `x_word(q, 0)` and `x_word(q, 1)` of the block's 8 activation words), and for the
//! K-quants 32 lanes per 256-element super-block, 8 elements each. Offsets and minimums that
//! apply to a whole block (Q4_0's 8, Q5_0's 16, Q4_1/Q5_1/Q4_K's minimums) go through the
//! activation block's `s`, a share of it per lane, so no lane sums its own activations. Compiled
//! for the host too, where the tests below check every piece against the dequantized block.

use crate::matvec_dot::{KWarp, Legacy4, Raw, fma, ld16, ld32};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0};

/// `1.5 · 2^23`: `v + ROUND` (|v| < 2^22) is `ROUND + round_half_even(v)`, whose bits are
/// `0x4B40_0000 + round(v)`.
const ROUND: f32 = 12_582_912.0;

/// The scale and its reciprocal for a block whose largest magnitude is `amax` (as the CPU's
/// `quant::act`: `d = amax / 127`, reciprocal 0 for an all-zero block).
#[inline(always)]
pub fn q8_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// `round_half_even(v · id)` (|v · id| ≤ 127.5): the CPU's `(v * id + ROUND) - ROUND`, read
/// from the sum's bits instead of converting it (the multiply and the add round separately, as
/// there: no FMA contraction in Rust).
#[inline(always)]
pub fn q8_round(v: f32, id: f32) -> i32 {
    ((v * id + ROUND).to_bits() as i32) - 0x4B40_0000
}

/// `c + Σ_i a_i · b_i` over the 4 bytes, `a` unsigned and `b` signed (`dp4a.u32.s32`).
#[inline(always)]
pub fn dp4a_us(a: u32, b: u32, c: i32) -> i32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: i32;
        // SAFETY: a pure register instruction.
        unsafe {
            core::arch::asm!("dp4a.u32.s32 {r}, {a}, {b}, {c};", r = out(reg32) r,
                             a = in(reg32) a, b = in(reg32) b, c = in(reg32) c,
                             options(pure, nomem, nostack, preserves_flags));
        }
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        (0..4).fold(c, |s, i| {
            s + ((a >> (8 * i)) & 0xff) as i32 * ((b >> (8 * i)) as u8 as i8) as i32
        })
    }
}

/// `c + Σ_i a_i · b_i` over the 4 bytes, both signed (`dp4a.s32.s32`).
#[inline(always)]
pub fn dp4a_ss(a: u32, b: u32, c: i32) -> i32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: i32;
        // SAFETY: a pure register instruction.
        unsafe {
            core::arch::asm!("dp4a.s32.s32 {r}, {a}, {b}, {c};", r = out(reg32) r,
                             a = in(reg32) a, b = in(reg32) b, c = in(reg32) c,
                             options(pure, nomem, nostack, preserves_flags));
        }
        r
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        (0..4).fold(c, |s, i| {
            s + ((a >> (8 * i)) as u8 as i8) as i32 * ((b >> (8 * i)) as u8 as i8) as i32
        })
    }
}

/// Each byte of `v` (all < 128) minus `k` (< 128), as signed bytes, without borrows between
/// bytes: the high bit set first keeps every byte's difference non-negative, flipping it back
/// gives the two's-complement result.
#[inline(always)]
fn sub_bytes(v: u32, k: u32) -> u32 {
    ((v | 0x8080_8080).wrapping_sub(k * 0x0101_0101)) ^ 0x8080_8080
}

#[inline(always)]
fn half(v: u32, hi: bool) -> f32 {
    crate::quant::f16_to_f32(if hi { (v >> 16) as u16 } else { v as u16 })
}

/// A legacy type whose quarter-block pieces (`Legacy4::load`) dot with 8-bit activations.
pub trait LegacyQ8: Legacy4 {
    /// Index (0..8) of the `j`-th (0 or 1) activation word of thread `q`'s piece.
    #[inline(always)]
    fn x_word(q: usize, j: usize) -> usize {
        Self::x_at(q, j) / 4
    }
    /// Thread `q`'s share of `Σ w_i x_i` over the block: its 8 quants against its activation
    /// words `xw` (see [`LegacyQ8::x_word`]), with the activation block's `[d, s]`. The 4
    /// threads' shares sum to the block's value.
    fn dot_q8(r: Raw, q: usize, xw: [u32; 2], ds: [f32; 2]) -> f32;
}

/// The low and high nibbles of `v` with the fifth bits of `h_lo` / `h_hi` (bits 0..4) on top.
#[inline(always)]
fn nibble_words(v: u32, h_lo: u32, h_hi: u32) -> (u32, u32) {
    use crate::matvec_dot::spread4;
    (
        (v & 0x0F0F_0F0F) | spread4(h_lo),
        ((v >> 4) & 0x0F0F_0F0F) | spread4(h_hi),
    )
}

impl LegacyQ8 for BlockQ4_0 {
    #[inline(always)]
    fn dot_q8((d, _, v): Raw, _q: usize, [x0, x1]: [u32; 2], [dx, sx]: [f32; 2]) -> f32 {
        let (lo, hi) = nibble_words(v, 0, 0);
        let i = dp4a_us(hi, x1, dp4a_us(lo, x0, 0));
        // Σ (q - 8) x = d_x Σ q q_x - 8 s, a quarter of the offset per thread.
        half(d, false) * fma(dx, i as f32, -2.0 * sx)
    }
}

impl LegacyQ8 for BlockQ4_1 {
    #[inline(always)]
    fn dot_q8((dm, _, v): Raw, _q: usize, [x0, x1]: [u32; 2], [dx, sx]: [f32; 2]) -> f32 {
        let (lo, hi) = nibble_words(v, 0, 0);
        let i = dp4a_us(hi, x1, dp4a_us(lo, x0, 0));
        fma(half(dm, false), dx * i as f32, half(dm, true) * (0.25 * sx))
    }
}

impl LegacyQ8 for BlockQ5_0 {
    #[inline(always)]
    fn dot_q8((d, qh, v): Raw, q: usize, [x0, x1]: [u32; 2], [dx, sx]: [f32; 2]) -> f32 {
        let (lo, hi) = nibble_words(v, qh >> (4 * q), qh >> (16 + 4 * q));
        let i = dp4a_us(hi, x1, dp4a_us(lo, x0, 0));
        half(d, false) * fma(dx, i as f32, -4.0 * sx)
    }
}

impl LegacyQ8 for BlockQ5_1 {
    #[inline(always)]
    fn dot_q8((dm, qh, v): Raw, q: usize, [x0, x1]: [u32; 2], [dx, sx]: [f32; 2]) -> f32 {
        let (lo, hi) = nibble_words(v, qh >> (4 * q), qh >> (16 + 4 * q));
        let i = dp4a_us(hi, x1, dp4a_us(lo, x0, 0));
        fma(half(dm, false), dx * i as f32, half(dm, true) * (0.25 * sx))
    }
}

impl LegacyQ8 for BlockQ8_0 {
    #[inline(always)]
    fn dot_q8((d, v0, v1): Raw, _q: usize, [x0, x1]: [u32; 2], [dx, _]: [f32; 2]) -> f32 {
        let i = dp4a_ss(v1, x1, dp4a_ss(v0, x0, 0));
        half(d, false) * (dx * i as f32)
    }
}

/// A whole legacy block's bits for one lane: `d` (or `d` and `m`), `qh` (the fifth bits, 0 where
/// none), and the quant bytes as little-endian words (4 for the nibble types, 8 for Q8_0).
pub type Whole = (u32, u32, [u32; 8]);

/// A legacy type whose blocks a lane takes whole (32 elements, 8 `dp4a`): the fused gate/up
/// kernel (`swiglu_a8`), where a quarter-block per lane needed twice the registers (each lane
/// holding the block's scale and fifth bits) and spilled.
pub trait LegacyWhole: Legacy4 {
    /// The block at `blk`.
    ///
    /// # Safety
    /// `blk` points to a whole, 2-byte aligned block.
    unsafe fn load_whole(blk: *const u8) -> Whole;
    /// `Σ w_i x_i` over the block, with the activation block's 8 words and `[d, s]`.
    fn dot_whole(w: Whole, xw: [u32; 8], ds: [f32; 2]) -> f32;
}

/// The block's 4 quant words at `qs`.
///
/// # Safety
/// 16 bytes readable at the 2-byte aligned `qs`.
#[inline(always)]
unsafe fn words4(qs: *const u8) -> [u32; 8] {
    // SAFETY: caller contract.
    unsafe { core::array::from_fn(|i| if i < 4 { ld32(qs.add(4 * i)) } else { 0 }) }
}

/// `Σ q_i x_i` over a nibble block (elements `4i..` in the low nibbles of word `i`, `16 + 4i..`
/// in the high ones), fifth bits from `qh` (0 for none).
#[inline(always)]
fn nibble_sum(qh: u32, v: &[u32; 8], xw: &[u32; 8]) -> i32 {
    let mut s = 0;
    for i in 0..4 {
        let (lo, hi) = nibble_words(v[i], qh >> (4 * i), qh >> (16 + 4 * i));
        s = dp4a_us(hi, xw[4 + i], dp4a_us(lo, xw[i], s));
    }
    s
}

impl LegacyWhole for BlockQ4_0 {
    #[inline(always)]
    unsafe fn load_whole(blk: *const u8) -> Whole {
        // SAFETY: d at 0, qs at 2..18.
        unsafe { (ld16(blk), 0, words4(blk.add(2))) }
    }
    #[inline(always)]
    fn dot_whole((d, _, v): Whole, xw: [u32; 8], [dx, sx]: [f32; 2]) -> f32 {
        half(d, false) * fma(dx, nibble_sum(0, &v, &xw) as f32, -8.0 * sx)
    }
}

impl LegacyWhole for BlockQ4_1 {
    #[inline(always)]
    unsafe fn load_whole(blk: *const u8) -> Whole {
        // SAFETY: d, m at 0..4, qs at 4..20.
        unsafe { (ld32(blk), 0, words4(blk.add(4))) }
    }
    #[inline(always)]
    fn dot_whole((dm, _, v): Whole, xw: [u32; 8], [dx, sx]: [f32; 2]) -> f32 {
        let i = nibble_sum(0, &v, &xw);
        fma(half(dm, false), dx * i as f32, half(dm, true) * sx)
    }
}

impl LegacyWhole for BlockQ5_0 {
    #[inline(always)]
    unsafe fn load_whole(blk: *const u8) -> Whole {
        // SAFETY: d at 0, qh at 2..6, qs at 6..22.
        unsafe { (ld16(blk), ld32(blk.add(2)), words4(blk.add(6))) }
    }
    #[inline(always)]
    fn dot_whole((d, qh, v): Whole, xw: [u32; 8], [dx, sx]: [f32; 2]) -> f32 {
        half(d, false) * fma(dx, nibble_sum(qh, &v, &xw) as f32, -16.0 * sx)
    }
}

impl LegacyWhole for BlockQ5_1 {
    #[inline(always)]
    unsafe fn load_whole(blk: *const u8) -> Whole {
        // SAFETY: d, m at 0..4, qh at 4..8, qs at 8..24.
        unsafe { (ld32(blk), ld32(blk.add(4)), words4(blk.add(8))) }
    }
    #[inline(always)]
    fn dot_whole((dm, qh, v): Whole, xw: [u32; 8], [dx, sx]: [f32; 2]) -> f32 {
        let i = nibble_sum(qh, &v, &xw);
        fma(half(dm, false), dx * i as f32, half(dm, true) * sx)
    }
}

impl LegacyWhole for BlockQ8_0 {
    #[inline(always)]
    unsafe fn load_whole(blk: *const u8) -> Whole {
        // SAFETY: d at 0, qs at 2..34.
        unsafe {
            (
                ld16(blk),
                0,
                core::array::from_fn(|i| ld32(blk.add(2 + 4 * i))),
            )
        }
    }
    #[inline(always)]
    fn dot_whole((d, _, v): Whole, xw: [u32; 8], [dx, _]: [f32; 2]) -> f32 {
        let mut s = 0;
        for i in 0..8 {
            s = dp4a_ss(v[i], xw[i], s);
        }
        half(d, false) * (dx * s as f32)
    }
}

/// A K-quant whose super-blocks the 32 lanes of a warp dot with 8-bit activations, 8 elements
/// per lane.
pub trait KQ8 {
    /// Bytes per super-block.
    const BYTES: usize;
    /// The bits of lane `l`'s piece of the super-block at `blk`.
    ///
    /// # Safety
    /// `blk` points to a whole super-block, 2-byte aligned (16-byte for Q4_K: its header is one
    /// 16-byte load, see `KWarp for BlockQ4K`); `l < 32`.
    unsafe fn load_q8(blk: *const u8, l: usize) -> Raw;
    /// Block (0..8 in the super-block) and word (0..8) of the `j`-th (0 or 1) activation word of
    /// lane `l`'s piece.
    fn x_pos(l: usize, j: usize) -> (usize, usize);
    /// Lane `l`'s share of `Σ w_i x_i` over the super-block, given its activation words and the
    /// `[d, s]` of their blocks (in [`KQ8::x_pos`] order). The 32 lanes' shares sum to the
    /// super-block's value.
    fn dot_q8(r: Raw, l: usize, xw: [u32; 2], ds: [[f32; 2]; 2]) -> f32;
}

impl KQ8 for BlockQ4K {
    const BYTES: usize = 144;
    #[inline(always)]
    unsafe fn load_q8(blk: *const u8, l: usize) -> Raw {
        // SAFETY: forwarded contract (the f32-activation kernels' lane layout).
        unsafe { <BlockQ4K as KWarp>::load(blk, l) }
    }
    #[inline(always)]
    fn x_pos(l: usize, j: usize) -> (usize, usize) {
        // Lane l = 8p + k: elements 64p + 4k.. (low nibbles, group 2p) and 64p + 32 + 4k.. (high
        // nibbles, group 2p + 1).
        (2 * (l / 8) + j, l % 8)
    }
    #[inline(always)]
    fn dot_q8((dd, sm, v): Raw, _l: usize, [x0, x1]: [u32; 2], ds: [[f32; 2]; 2]) -> f32 {
        let b = |i: u32| ((sm >> (8 * i)) & 0xff) as f32;
        let i0 = dp4a_us(v & 0x0F0F_0F0F, x0, 0);
        let i1 = dp4a_us((v >> 4) & 0x0F0F_0F0F, x1, 0);
        // Group g: d·sc_g·d_x·Σ q q_x - dmin·m_g·s, an eighth of the minimum term per lane.
        let scaled = fma(b(0) * ds[0][0], i0 as f32, b(2) * ds[1][0] * i1 as f32);
        let mins = fma(b(1), ds[0][1], b(3) * ds[1][1]);
        fma(half(dd, false), scaled, -(half(dd, true) * 0.125) * mins)
    }
}

impl KQ8 for BlockQ6K {
    const BYTES: usize = 210;
    #[inline(always)]
    unsafe fn load_q8(blk: *const u8, l: usize) -> Raw {
        // Lane l = 16n + 2m + jp (n: 128-element half, m: 4 of its 32 columns, jp: which ql
        // half): ql[64n + 32jp + 4m ..+4] (elements 128n + 32jp + 4m.. from the low nibbles,
        // + 64 from the high ones), qh[32n + 4m ..+4] (2-bit pairs jp and jp + 2), the two
        // scales 8n + m/4 + 2jp and + 4, and d.
        let (n, m, jp) = (l / 16, (l / 2) % 8, l % 2);
        // SAFETY: ql at 0..128, qh at 128..192, scales at 192..208, d at 208..210; every u16
        // offset is even and inside those ranges.
        unsafe {
            let ql = blk.add(64 * n + 32 * jp + 4 * m);
            let qh = blk.add(128 + 32 * n + 4 * m);
            let sc = blk.add(192 + 8 * n + m / 4 + 2 * jp);
            let ld16 = |p: *const u8| u16::from_le(*(p as *const u16)) as u32;
            let lw = ld16(ql) | ld16(ql.add(2)) << 16;
            let hw = ld16(qh) | ld16(qh.add(2)) << 16;
            let scs = *sc as u32 | (*sc.add(4) as u32) << 8 | ld16(blk.add(208)) << 16;
            (lw, hw, scs)
        }
    }
    #[inline(always)]
    fn x_pos(l: usize, j: usize) -> (usize, usize) {
        let (n, m, jp) = (l / 16, (l / 2) % 8, l % 2);
        (4 * n + jp + 2 * j, m)
    }
    #[inline(always)]
    fn dot_q8((lw, hw, scs): Raw, l: usize, [x0, x1]: [u32; 2], ds: [[f32; 2]; 2]) -> f32 {
        let sh = 2 * (l % 2) as u32;
        let a = (lw & 0x0F0F_0F0F) | (((hw >> sh) & 0x0303_0303) << 4);
        let b = ((lw >> 4) & 0x0F0F_0F0F) | (((hw >> (sh + 4)) & 0x0303_0303) << 4);
        let i0 = dp4a_ss(sub_bytes(a, 32), x0, 0);
        let i1 = dp4a_ss(sub_bytes(b, 32), x1, 0);
        let sc = |k: u32| ((scs >> (8 * k)) & 0xff) as u8 as i8 as f32;
        half(scs, true) * fma(sc(0) * ds[0][0], i0 as f32, sc(1) * ds[1][0] * i1 as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Block, QK_K, QK32};
    use crate::test_rng::{Lcg, check_dot as check, random_block};

    /// The CPU's quantization of one block of 32 (`quant::act::quantize_into`), written the
    /// other way round (by the formula, with `round_ties_even`), to check `q8_round`.
    fn quantize(x: &[f32]) -> ([i8; 32], f32, f32) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (d, id) = q8_scale(amax);
        let q: [i8; 32] = core::array::from_fn(|i| (x[i] * id).round_ties_even() as i8);
        let s = d * q.iter().map(|&v| v as i32).sum::<i32>() as f32;
        (q, d, s)
    }

    fn words(q: &[i8]) -> [u32; 8] {
        core::array::from_fn(|w| u32::from_le_bytes(core::array::from_fn(|i| q[4 * w + i] as u8)))
    }

    #[test]
    fn q8_round_is_round_half_even() {
        let mut r = Lcg(3);
        for _ in 0..20_000 {
            let v = r.f() * 130.0;
            let id = 1.0 + (r.next() % 1000) as f32 / 1000.0;
            if (v * id).abs() <= 127.5 {
                assert_eq!(
                    q8_round(v, id),
                    (v * id).round_ties_even() as i32,
                    "{v} {id}"
                );
            }
        }
        // Ties go to even.
        assert_eq!((q8_round(2.5, 1.0), q8_round(-3.5, 1.0)), (2, -4));
    }

    #[test]
    fn sub_bytes_subtracts_per_byte() {
        let mut r = Lcg(5);
        for _ in 0..10_000 {
            let v = r.next() & 0x3f3f_3f3f;
            let got = sub_bytes(v, 32).to_le_bytes();
            for (i, g) in got.iter().enumerate() {
                assert_eq!(*g as i8 as i32, ((v >> (8 * i)) & 0xff) as i32 - 32);
            }
        }
    }

    fn legacy<B: Block<32> + LegacyQ8 + LegacyWhole, const N: usize>(fix: &[usize]) {
        let mut r = Lcg(11 + N as u64);
        for _ in 0..500 {
            let (buf, w) = random_block::<QK32, B, N>(&mut r, fix);
            let p = buf.ptr();
            let x: [f32; 32] = core::array::from_fn(|_| r.f());
            let (q, d, s) = quantize(&x);
            let xw = words(&q);
            let xq: [f32; 32] = core::array::from_fn(|i| d * q[i] as f32);
            let got: f32 = (0..4)
                .map(|t| {
                    // SAFETY: p holds a whole 2-byte aligned block.
                    let raw = unsafe { B::load(p, t) };
                    B::dot_q8(raw, t, [xw[B::x_word(t, 0)], xw[B::x_word(t, 1)]], [d, s])
                })
                .sum();
            check(&w, &xq, got);
            // SAFETY: as above.
            let whole = B::dot_whole(unsafe { B::load_whole(p) }, xw, [d, s]);
            check(&w, &xq, whole);
        }
    }

    #[test]
    fn legacy_dot_q8_matches_dequantized() {
        legacy::<BlockQ4_0, 18>(&[0]);
        legacy::<BlockQ4_1, 20>(&[0, 2]);
        legacy::<BlockQ5_0, 22>(&[0]);
        legacy::<BlockQ5_1, 24>(&[0, 2]);
        legacy::<BlockQ8_0, 34>(&[0]);
    }

    fn kquant<B: Block<256> + KQ8, const N: usize>(fix: &[usize]) {
        let mut r = Lcg(17 + N as u64);
        for _ in 0..300 {
            let (buf, w) = random_block::<QK_K, B, N>(&mut r, fix);
            let p = buf.ptr();
            let x: [f32; QK_K] = core::array::from_fn(|_| r.f());
            let mut xq = [0.0f32; QK_K];
            let mut xw = [[0u32; 8]; 8];
            let mut ds = [[0.0f32; 2]; 8];
            for b in 0..8 {
                let (q, d, s) = quantize(&x[32 * b..32 * b + 32]);
                xw[b] = words(&q);
                ds[b] = [d, s];
                for i in 0..32 {
                    xq[32 * b + i] = d * q[i] as f32;
                }
            }
            let mut seen = [0u8; QK_K];
            let got: f32 = (0..32)
                .map(|l| {
                    let (p0, p1) = (B::x_pos(l, 0), B::x_pos(l, 1));
                    for (b, wd) in [p0, p1] {
                        for i in 0..4 {
                            seen[32 * b + 4 * wd + i] += 1;
                        }
                    }
                    // SAFETY: p holds a whole 16-byte aligned super-block.
                    let raw = unsafe { B::load_q8(p, l) };
                    B::dot_q8(
                        raw,
                        l,
                        [xw[p0.0][p0.1], xw[p1.0][p1.1]],
                        [ds[p0.0], ds[p1.0]],
                    )
                })
                .sum();
            assert!(seen.iter().all(|&c| c == 1), "every element once");
            check(&w, &xq, got);
        }
    }

    #[test]
    fn kquant_dot_q8_matches_dequantized() {
        kquant::<BlockQ4K, 144>(&[0, 2]);
        kquant::<BlockQ6K, 210>(&[208]);
    }
}
