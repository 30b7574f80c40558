//! The per-thread pieces of the matvec kernels (`matvec.rs`): the dot product of one slice of a
//! quantized block with the matching activations, decoded in registers straight from the block
//! bytes (no decode buffer, so nothing spills to local memory).
//!
//! Legacy formats (32-element blocks): 4 threads share a block, thread `q` (0..4) takes the quants
//! in bytes `4q .. 4q + 4` of the nibble array (elements `4q..4q+4` and `16+4q..16+4q+4`), or for
//! Q8_0 bytes `8q .. 8q + 8`. K-quants (256-element super-blocks): the 32 lanes of a warp share a
//! super-block, 8 elements each.
//!
//! The same loaded bits also decode to the lane's 8 values (`values`, bit-identical to the block's
//! own `dequantize`): the dequantization kernels (`dequant.rs`) write those.
//!
//! Byte layouts are those of the block structs in [`crate::quant`] (offsets from their docs,
//! checked against the structs' field offsets below). Blocks are only 2-byte aligned in a GGUF
//! tensor, so multi-byte reads are `u16` loads. Compiled for the host too, where the tests below
//! check every piece against the block's own `dequantize`.

use crate::quant::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, f16_to_f32,
};

/// Reads a little-endian u16 at `p`.
///
/// # Safety
/// `p` is 2-byte aligned and 2 bytes are readable there.
#[inline(always)]
pub(crate) unsafe fn ld16(p: *const u8) -> u32 {
    // SAFETY: caller contract.
    u16::from_le(unsafe { *(p as *const u16) }) as u32
}

/// Reads a little-endian u32 at a 2-byte aligned `p`, as two u16 loads.
///
/// # Safety
/// `p` is 2-byte aligned and 4 bytes are readable there.
#[inline(always)]
pub(crate) unsafe fn ld32(p: *const u8) -> u32 {
    // SAFETY: caller contract (p and p + 2 are 2-byte aligned and readable).
    unsafe { ld16(p) | (ld16(p.add(2)) << 16) }
}

/// Reads the 16 bytes at `p` as 4 little-endian u32 in one load (`ld.v4.u32`) on the device.
///
/// # Safety
/// `p` is 16-byte aligned on the device and 16 bytes are readable there.
#[inline(always)]
pub(crate) unsafe fn ld128(p: *const u8) -> [u32; 4] {
    #[repr(C, align(16))]
    #[derive(Clone, Copy)]
    struct U4([u32; 4]);
    // SAFETY: caller contract (host tests' buffers are only 2-byte aligned: read unaligned).
    unsafe {
        #[cfg(target_arch = "nvptx64")]
        let v = *(p as *const U4);
        #[cfg(not(target_arch = "nvptx64"))]
        let v = core::ptr::read_unaligned(p as *const U4);
        v.0.map(u32::from_le)
    }
}

/// Reads the little-endian u32 at `p` in one load on the device.
///
/// # Safety
/// `p` is 4-byte aligned on the device and 4 bytes are readable there.
#[inline(always)]
unsafe fn ld32a(p: *const u8) -> u32 {
    // SAFETY: caller contract.
    unsafe {
        #[cfg(target_arch = "nvptx64")]
        let v = *(p as *const u32);
        #[cfg(not(target_arch = "nvptx64"))]
        let v = core::ptr::read_unaligned(p as *const u32);
        u32::from_le(v)
    }
}

/// 4 f32 as one 16-byte vector load (`ld.v4.f32`) on the device.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct F4([f32; 4]);

/// 2 f32 as one 8-byte vector load (`ld.v2.f32`) on the device.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct F2([f32; 2]);

/// `x[n .. n + 4]` in one load: activations are read in vectors, so a warp's x loads cost a
/// quarter of the L1 transactions of scalar loads (with 8 lanes reading 8 different 128-byte
/// lines per instruction, scalar loads made the activations, not the weights, the bottleneck).
///
/// # Safety
/// `x + n` is 16-byte aligned on the device (the matvec launcher checks `x`; every offset used
/// is a multiple of 4 elements) and 4 f32 are readable there.
#[inline(always)]
pub(crate) unsafe fn xa4(x: *const f32, n: usize) -> [f32; 4] {
    // SAFETY: caller contract (host builds, whose test vectors are only 4-byte aligned, read
    // unaligned).
    unsafe {
        #[cfg(target_arch = "nvptx64")]
        let v = *(x.add(n) as *const F4);
        #[cfg(not(target_arch = "nvptx64"))]
        let v = core::ptr::read_unaligned(x.add(n) as *const F4);
        v.0
    }
}

/// `x[n .. n + 2]` in one load.
///
/// # Safety
/// `x + n` is 8-byte aligned on the device and 2 f32 are readable there.
#[inline(always)]
unsafe fn xa2(x: *const f32, n: usize) -> [f32; 2] {
    // SAFETY: caller contract.
    unsafe {
        #[cfg(target_arch = "nvptx64")]
        let v = *(x.add(n) as *const F2);
        #[cfg(not(target_arch = "nvptx64"))]
        let v = core::ptr::read_unaligned(x.add(n) as *const F2);
        v.0
    }
}

/// `2^23` as f32: `f32::from_bits(0x4B00_0000 | b)` is exactly `2^23 + b` for `b < 2^23`.
pub const MAGIC: f32 = 8_388_608.0;

/// Byte `i` (0..4) of `w` as the f32 `2^23 + byte`: the byte moved into the mantissa of 2^23
/// (one byte permute or shift-and-or), so a quant becomes a float without an integer-to-float
/// conversion (a quarter-rate instruction, and the matvecs were bound by their instruction
/// count). Subtracting `MAGIC + offset` afterwards gives `byte - offset` exactly.
#[inline(always)]
pub fn byte_magic(w: u32, i: u32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    let bits = {
        let r: u32;
        // Result bytes: byte i of w, then bytes 0, 1 and 3 of 0x4B00_0000 (selector nibbles
        // i, 4, 5, 7). SAFETY: a pure register permute.
        unsafe {
            core::arch::asm!("prmt.b32 {r}, {a}, {b}, {c};", r = out(reg32) r, a = in(reg32) w,
                             b = in(reg32) 0x4B00_0000u32, c = in(reg32) 0x7540 | i,
                             options(pure, nomem, nostack, preserves_flags));
        }
        r
    };
    #[cfg(not(target_arch = "nvptx64"))]
    let bits = ((w >> (8 * i)) & 0xff) | 0x4B00_0000;
    f32::from_bits(bits)
}

/// Bits 0..4 of `h`, bit `i` moved to bit 4 of byte `i` (the 5th bits of 4 nibble quants, to
/// OR onto 4 bytes of nibbles): one multiply, as the products of the 4 bits with
/// `2^4 + 2^11 + 2^18 + 2^25` land on distinct bits (`i + 7j + 4` is distinct for `i, j < 4`).
#[inline(always)]
pub fn spread4(h: u32) -> u32 {
    ((h & 15).wrapping_mul(0x0204_0810)) & 0x1010_1010
}

/// `v` unchanged, but the value must exist here: an empty volatile `asm` that reads and
/// "writes" it, so the compiler can neither drop the loads that produce `v` nor move them past
/// this point into the conditional code that uses them. The matvec loops load several blocks
/// first and guard each block's arithmetic with `if block < n`; without this LLVM sank every
/// block's loads into its guarded branch, and a lane then waited for DRAM once per block instead
/// of once per loop step (PERF.md change 26).
#[inline(always)]
pub fn pin(v: u32) -> u32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let mut v = v;
        // SAFETY: no instructions (a PTX comment); it only constrains code motion.
        unsafe {
            core::arch::asm!("// pin {0}", inout(reg32) v, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[cfg(not(target_arch = "nvptx64"))]
    v
}

/// [`pin`] for each word of a [`Raw`].
#[inline(always)]
pub fn pin_raw((a, b, c): Raw) -> Raw {
    (pin(a), pin(b), pin(c))
}

/// `a · b + c`, fused (one rounding) on the device.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    // SAFETY: a pure arithmetic intrinsic (fma.rn.f32).
    let r = unsafe { core::intrinsics::fmaf32(a, b, c) };
    #[cfg(not(target_arch = "nvptx64"))]
    let r = a * b + c;
    r
}

/// The weight bits one lane needs for its piece of a block: loaded first (for every block a lane
/// will use, so the loads are in flight together), decoded afterwards.
pub type Raw = (u32, u32, u32);

/// A legacy (32-element block) type whose blocks 4 threads share.
pub trait Legacy4 {
    /// Bytes per block.
    const BYTES: usize;
    /// The bits of thread `q`'s quarter of the block at `blk`.
    ///
    /// # Safety
    /// `blk` points to a whole, 2-byte aligned block; `q < 4`.
    unsafe fn load(blk: *const u8, q: usize) -> Raw;
    /// `Σ w_i x_i` over thread `q`'s quarter, from its [`Legacy4::load`]ed bits and its 8
    /// activations `xs` (the block's elements at [`Legacy4::x_at`]`(q, 0)` and `(q, 1)`, 4 each).
    fn dot_vals(r: Raw, q: usize, xs: [[f32; 4]; 2]) -> f32;
    /// Offset in the block of the `j`-th (0 or 1) 4-element run of thread `q`'s activations.
    #[inline(always)]
    fn x_at(q: usize, j: usize) -> usize {
        if Self::RUN == 8 {
            Self::run_start(q, 0) + 4 * j
        } else {
            Self::run_start(q, j)
        }
    }
    /// Length of the runs of consecutive elements in [`Legacy4::values`]: 4 for the nibble types
    /// (elements `4q .. 4q + 4`, then `16 + 4q .. 16 + 4q + 4`), 8 for Q8_0 (`8q .. 8q + 8`).
    const RUN: usize = 4;
    /// First element (in the block) of run `j` of thread `q`'s values.
    #[inline(always)]
    fn run_start(q: usize, j: usize) -> usize {
        4 * q + 16 * j
    }
    /// Thread `q`'s 8 values from its [`Legacy4::load`]ed bits, run after run: the same f32
    /// operations as the block's `dequantize`, so the same bits.
    fn values(r: Raw, q: usize) -> [f32; 8];
}

/// The 8 quants of a nibble lane: the low nibbles of the 4 bytes of `v` (bit `i` of `h_lo` as
/// their 5th bit), then the high nibbles (5th bits from `h_hi`), each plus `off`.
#[inline(always)]
fn nibble_quants(v: u32, h_lo: u32, h_hi: u32, off: i32) -> [i32; 8] {
    core::array::from_fn(|e| {
        let (i, high) = (e % 4, e >= 4);
        let b = v >> (8 * i);
        let n = if high {
            ((b >> 4) & 15) | (((h_hi >> i) & 1) << 4)
        } else {
            (b & 15) | (((h_lo >> i) & 1) << 4)
        };
        n as i32 + off
    })
}

/// Σ over 4 nibble pairs: `(lo_i + off) xl[i]` and `(hi_i + off) xh[i]` (`lo_i`, `hi_i` the
/// low and high nibbles of byte `i` of `v`), with 5th bits `h_lo`, `h_hi` (bit i of each) added
/// as bit 4; returns (Σ q x, Σ x). The 4 quants of each half are built in the bytes of one word
/// and turned into floats by [`byte_magic`].
#[inline(always)]
fn nibbles4(v: u32, h_lo: u32, h_hi: u32, off: i32, [xl, xh]: [[f32; 4]; 2]) -> (f32, f32) {
    let lo = (v & 0x0F0F_0F0F) | spread4(h_lo);
    let hi = ((v >> 4) & 0x0F0F_0F0F) | spread4(h_hi);
    // 2^23 - off: exact (|off| ≤ 16), and `byte_magic(..) - bias` is `q + off` exactly.
    let bias = MAGIC - off as f32;
    let mut s = 0.0f32;
    let mut sx = 0.0f32;
    for i in 0..4 {
        s = fma(byte_magic(lo, i) - bias, xl[i as usize], s);
        s = fma(byte_magic(hi, i) - bias, xh[i as usize], s);
        sx += xl[i as usize] + xh[i as usize];
    }
    (s, sx)
}

/// The f16 in the low (`hi = false`) or high half of `v`, as f32.
#[inline(always)]
fn half(v: u32, hi: bool) -> f32 {
    f16_to_f32(if hi { (v >> 16) as u16 } else { v as u16 })
}

impl Legacy4 for BlockQ4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn load(blk: *const u8, q: usize) -> Raw {
        // SAFETY: d at 0, qs at 2 (+4q + 4 ≤ 18).
        unsafe { (ld16(blk), 0, ld32(blk.add(2 + 4 * q))) }
    }
    #[inline(always)]
    fn dot_vals((d, _, v): Raw, _q: usize, xs: [[f32; 4]; 2]) -> f32 {
        half(d, false) * nibbles4(v, 0, 0, -8, xs).0
    }
    #[inline(always)]
    fn values((d, _, v): Raw, _q: usize) -> [f32; 8] {
        let d = half(d, false);
        nibble_quants(v, 0, 0, -8).map(|q| d * q as f32)
    }
}

impl Legacy4 for BlockQ4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn load(blk: *const u8, q: usize) -> Raw {
        // SAFETY: d at 0, m at 2, qs at 4 (+4q + 4 ≤ 20).
        unsafe { (ld32(blk), 0, ld32(blk.add(4 + 4 * q))) }
    }
    #[inline(always)]
    fn dot_vals((dm, _, v): Raw, _q: usize, xs: [[f32; 4]; 2]) -> f32 {
        let (s, sx) = nibbles4(v, 0, 0, 0, xs);
        half(dm, false) * s + half(dm, true) * sx
    }
    #[inline(always)]
    fn values((dm, _, v): Raw, _q: usize) -> [f32; 8] {
        let (d, m) = (half(dm, false), half(dm, true));
        nibble_quants(v, 0, 0, 0).map(|q| d * q as f32 + m)
    }
}

impl Legacy4 for BlockQ5_0 {
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn load(blk: *const u8, q: usize) -> Raw {
        // SAFETY: d at 0, qh at 2 (4 bytes), qs at 6 (+4q + 4 ≤ 22).
        unsafe { (ld16(blk), ld32(blk.add(2)), ld32(blk.add(6 + 4 * q))) }
    }
    #[inline(always)]
    fn dot_vals((d, qh, v): Raw, q: usize, xs: [[f32; 4]; 2]) -> f32 {
        let (h_lo, h_hi) = (qh >> (4 * q), qh >> (16 + 4 * q));
        half(d, false) * nibbles4(v, h_lo, h_hi, -16, xs).0
    }
    #[inline(always)]
    fn values((d, qh, v): Raw, q: usize) -> [f32; 8] {
        let d = half(d, false);
        nibble_quants(v, qh >> (4 * q), qh >> (16 + 4 * q), -16).map(|q| d * q as f32)
    }
}

impl Legacy4 for BlockQ5_1 {
    const BYTES: usize = 24;
    #[inline(always)]
    unsafe fn load(blk: *const u8, q: usize) -> Raw {
        // SAFETY: d at 0, m at 2, qh at 4 (4 bytes), qs at 8 (+4q + 4 ≤ 24).
        unsafe { (ld32(blk), ld32(blk.add(4)), ld32(blk.add(8 + 4 * q))) }
    }
    #[inline(always)]
    fn dot_vals((dm, qh, v): Raw, q: usize, xs: [[f32; 4]; 2]) -> f32 {
        let (h_lo, h_hi) = (qh >> (4 * q), qh >> (16 + 4 * q));
        let (s, sx) = nibbles4(v, h_lo, h_hi, 0, xs);
        half(dm, false) * s + half(dm, true) * sx
    }
    #[inline(always)]
    fn values((dm, qh, v): Raw, q: usize) -> [f32; 8] {
        let (d, m) = (half(dm, false), half(dm, true));
        nibble_quants(v, qh >> (4 * q), qh >> (16 + 4 * q), 0).map(|q| d * q as f32 + m)
    }
}

impl Legacy4 for BlockQ8_0 {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn load(blk: *const u8, q: usize) -> Raw {
        // SAFETY: d at 0, qs at 2 (+8q + 8 ≤ 34).
        unsafe {
            (
                ld16(blk),
                ld32(blk.add(2 + 8 * q)),
                ld32(blk.add(6 + 8 * q)),
            )
        }
    }
    #[inline(always)]
    fn dot_vals((d, v0, v1): Raw, _q: usize, xs: [[f32; 4]; 2]) -> f32 {
        let mut s = 0.0f32;
        for (v, xv) in [v0, v1].into_iter().zip(xs) {
            // Signed bytes + 128 (flipping each sign bit) are 0..256: byte_magic, then - 128.
            let u = v ^ 0x8080_8080;
            for (i, &xi) in xv.iter().enumerate() {
                s = fma(byte_magic(u, i as u32) - (MAGIC + 128.0), xi, s);
            }
        }
        half(d, false) * s
    }
    const RUN: usize = 8;
    #[inline(always)]
    fn run_start(q: usize, _j: usize) -> usize {
        8 * q
    }
    #[inline(always)]
    fn values((d, v0, v1): Raw, _q: usize) -> [f32; 8] {
        let d = half(d, false);
        core::array::from_fn(|e| {
            let v = if e < 4 { v0 } else { v1 };
            ((v >> (8 * (e % 4))) & 0xff) as u8 as i8 as f32 * d
        })
    }
}

/// A K-quant type whose 256-element super-blocks the 32 lanes of a warp share.
pub trait KWarp {
    /// Bytes per super-block.
    const BYTES: usize;
    /// The bits of lane `l`'s 8 elements of the super-block at `blk`.
    ///
    /// # Safety
    /// `blk` points to a whole, 2-byte aligned super-block; `l < 32`.
    unsafe fn load(blk: *const u8, l: usize) -> Raw;
    /// `Σ w_i x_i` over lane `l`'s 8 elements, from its [`KWarp::load`]ed bits.
    ///
    /// # Safety
    /// `x` points to the super-block's 256 activations; `l < 32`.
    unsafe fn dot_raw(r: Raw, l: usize, x: *const f32) -> f32;
    /// Both steps.
    ///
    /// # Safety
    /// As [`KWarp::load`] and [`KWarp::dot_raw`].
    #[inline(always)]
    unsafe fn dot(blk: *const u8, l: usize, x: *const f32) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { Self::dot_raw(Self::load(blk, l), l, x) }
    }
    /// Length of the runs of consecutive elements in [`KWarp::values`] (8 / RUN runs).
    const RUN: usize;
    /// First element (in the super-block) of run `j` of lane `l`'s values.
    fn run_start(l: usize, j: usize) -> usize;
    /// Lane `l`'s 8 values from its [`KWarp::load`]ed bits, run after run: the same f32
    /// operations as the block's `dequantize`, so the same bits.
    fn values(r: Raw, l: usize) -> [f32; 8];
}

impl KWarp for BlockQ4K {
    const BYTES: usize = 144;
    /// Lane `l`: pair `p = l / 8` of groups (2p low nibbles, 2p + 1 high nibbles of
    /// `qs[32p .. 32p + 32]`), bytes `4 (l % 8) .. + 4` of it. Raw: d | dmin << 16, the scales and
    /// mins of both groups (sc0 | m0 << 8 | sc1 << 16 | m1 << 24), the 4 quant bytes. Two loads:
    /// the 16-byte header (d, dmin and the 12 packed scale bytes, the same for the whole warp)
    /// and the quant word; the scales are unpacked in registers as [`crate::quant::k_scales_mins`] does.
    ///
    /// Needs `blk` 16-byte aligned on the device (super-blocks are 144 bytes and device
    /// allocations 256-byte aligned; the launchers check the matrix).
    #[inline(always)]
    unsafe fn load(blk: *const u8, l: usize) -> Raw {
        let (p, k) = (l / 8, l % 8);
        // SAFETY: header at 0..16; qs at 16 + 32p + 4k + 4 ≤ 144, 4-byte aligned.
        let ([dd, a, b, c], v) = unsafe { (ld128(blk), ld32a(blk.add(16 + 32 * p + 4 * k))) };
        const LOW6: u32 = 0x3f3f_3f3f;
        const LOW4: u32 = 0x0f0f_0f0f;
        const LOW2: u32 = 0x0303_0303;
        // Byte j of each: scale / min j (groups 0..4), then scale / min 4 + j (groups 4..8).
        let (sc, mn) = if p < 2 {
            (a & LOW6, b & LOW6)
        } else {
            (
                (c & LOW4) | (((a >> 6) & LOW2) << 4),
                ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4),
            )
        };
        let sh = 16 * (p % 2) as u32;
        let (sc, mn) = (sc >> sh, mn >> sh);
        let sm = (sc & 0xff) | (mn & 0xff) << 8 | (sc & 0xff00) << 8 | (mn & 0xff00) << 16;
        (dd, sm, v)
    }
    #[inline(always)]
    unsafe fn dot_raw((dd, sm, v): Raw, l: usize, x: *const f32) -> f32 {
        let (p, k) = (l / 8, l % 8);
        let b = |i: u32| ((sm >> (8 * i)) & 0xff) as f32;
        // SAFETY: the x offsets are < 256.
        unsafe {
            let x0 = x.add(64 * p + 4 * k);
            let x1 = x0.add(32);
            let (mut s0, mut s1, mut sx0, mut sx1) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            // x0 = x + 64p + 4k and x1 = x0 + 32: multiples of 4 elements.
            let (v0, v1) = (xa4(x0, 0), xa4(x1, 0));
            let (lo, hi) = (v & 0x0F0F_0F0F, (v >> 4) & 0x0F0F_0F0F);
            for i in 0..4 {
                let (a0, a1) = (v0[i], v1[i]);
                s0 = fma(byte_magic(lo, i as u32) - MAGIC, a0, s0);
                s1 = fma(byte_magic(hi, i as u32) - MAGIC, a1, s1);
                sx0 += a0;
                sx1 += a1;
            }
            half(dd, false) * (b(0) * s0 + b(2) * s1) - half(dd, true) * (b(1) * sx0 + b(3) * sx1)
        }
    }
    /// Runs: elements `64p + 4k .. + 4` (group 2p), then `64p + 32 + 4k .. + 4` (group 2p + 1).
    const RUN: usize = 4;
    #[inline(always)]
    fn run_start(l: usize, j: usize) -> usize {
        64 * (l / 8) + 4 * (l % 8) + 32 * j
    }
    #[inline(always)]
    fn values((dd, sm, v): Raw, _l: usize) -> [f32; 8] {
        let (d, dmin) = (half(dd, false), half(dd, true));
        let b = |i: u32| ((sm >> (8 * i)) & 0xff) as f32;
        // As BlockQ4K::dequantize_sub: d1 = d·sc, m1 = dmin·m, value = d1·q - m1.
        let (d0, m0, d1, m1) = (d * b(0), dmin * b(1), d * b(2), dmin * b(3));
        core::array::from_fn(|e| {
            let q = (v >> (8 * (e % 4) + 4 * (e / 4))) & 15;
            if e < 4 {
                d0 * q as f32 - m0
            } else {
                d1 * q as f32 - m1
            }
        })
    }
}

impl KWarp for BlockQ6K {
    const BYTES: usize = 210;
    /// Lane `l`: half `n = l / 16`, positions `ll = 2 (l % 16) + {0, 1}` of it, each giving the
    /// elements `128n + ll + {0, 32, 64, 96}` (see [`BlockQ6K`]'s layout). Raw: the two ql u16s
    /// (a | b << 16), the qh u16 | d << 16, the 4 group scales (i8 bytes).
    #[inline(always)]
    unsafe fn load(blk: *const u8, l: usize) -> Raw {
        let (n, base) = (l / 16, 2 * (l % 16));
        // SAFETY: ql at 0..128, qh at 128..192, scales at 192..208, d at 208; every offset below
        // is even for the u16 loads and inside those ranges.
        unsafe {
            let a = ld16(blk.add(64 * n + base));
            let b = ld16(blk.add(64 * n + base + 32));
            let h = ld16(blk.add(128 + 32 * n + base));
            let d = ld16(blk.add(208));
            let sc = blk.add(192 + 8 * n + base / 16);
            let scs = *sc as u32
                | (*sc.add(2) as u32) << 8
                | (*sc.add(4) as u32) << 16
                | (*sc.add(6) as u32) << 24;
            (a | b << 16, h | d << 16, scs)
        }
    }
    #[inline(always)]
    unsafe fn dot_raw((ab, hd, scs): Raw, l: usize, x: *const f32) -> f32 {
        let (n, base) = (l / 16, 2 * (l % 16));
        let sc = |g: u32| ((scs >> (8 * g)) & 0xff) as u8 as i8 as f32;
        // SAFETY: x offsets < 256.
        unsafe {
            let xb = x.add(128 * n + base);
            // base is even: 8-byte aligned pairs.
            let (x0, x1, x2, x3) = (xa2(xb, 0), xa2(xb, 32), xa2(xb, 64), xa2(xb, 96));
            // The 8 quants (6 bits each) in the bytes of two words: ab's bytes are a0 a1 b0 b1,
            // so q01 holds [q0(0), q0(1), q1(0), q1(1)] (low nibbles; 2-bit pairs 0 and 1 of the
            // qh bytes h0 h1 as bits 4..6) and q23 [q2(0), q2(1), q3(0), q3(1)] (high nibbles,
            // pairs 2 and 3).
            let h = hd & 0xffff;
            let t01 = h | ((h >> 2) << 16);
            let t23 = (h >> 4) | ((h >> 6) << 16);
            let q01 = (ab & 0x0F0F_0F0F) | ((t01 << 4) & 0x3030_3030);
            let q23 = ((ab >> 4) & 0x0F0F_0F0F) | ((t23 << 4) & 0x3030_3030);
            let bias = MAGIC + 32.0;
            let (mut s0, mut s1, mut s2, mut s3) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            for kk in 0..2 {
                s0 = fma(byte_magic(q01, kk as u32) - bias, x0[kk], s0);
                s1 = fma(byte_magic(q01, 2 + kk as u32) - bias, x1[kk], s1);
                s2 = fma(byte_magic(q23, kk as u32) - bias, x2[kk], s2);
                s3 = fma(byte_magic(q23, 2 + kk as u32) - bias, x3[kk], s3);
            }
            let t = sc(0) * s0 + sc(1) * s1 + sc(2) * s2 + sc(3) * s3;
            half(hd, true) * t
        }
    }
    /// Runs: elements `128n + 2 (l % 16) + 32g + {0, 1}` for g = 0..4 (groups 8n + 2g + ..).
    const RUN: usize = 2;
    #[inline(always)]
    fn run_start(l: usize, j: usize) -> usize {
        128 * (l / 16) + 2 * (l % 16) + 32 * j
    }
    #[inline(always)]
    fn values((ab, hd, scs): Raw, _l: usize) -> [f32; 8] {
        let d = half(hd, true);
        core::array::from_fn(|e| {
            let (g, kk) = (e / 2, e % 2);
            // Quant g of byte kk: low nibbles of ql bytes a (g = 0) and b (g = 1), high nibbles
            // (g = 2, 3); 2-bit pair g of the qh byte.
            let src = if g % 2 == 0 {
                ab >> (8 * kk)
            } else {
                ab >> (16 + 8 * kk)
            };
            let lo = (src >> (4 * (g / 2))) & 15;
            let hi = (hd >> (8 * kk + 2 * g)) & 3;
            let q = (lo | (hi << 4)) as i32 - 32;
            // As BlockQ6K::dequantize_sub: dl = d·sc, value = dl·(q - 32).
            let dl = d * ((scs >> (8 * g)) & 0xff) as u8 as i8 as f32;
            dl * q as f32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Block, QK_K, QK32};
    use core::mem::offset_of;

    // The offsets used above are the structs' own.
    const _: () = {
        assert!(offset_of!(BlockQ4_0, qs) == 2);
        assert!(offset_of!(BlockQ4_1, m) == 2 && offset_of!(BlockQ4_1, qs) == 4);
        assert!(offset_of!(BlockQ5_0, qh) == 2 && offset_of!(BlockQ5_0, qs) == 6);
        assert!(offset_of!(BlockQ5_1, m) == 2);
        assert!(offset_of!(BlockQ5_1, qh) == 4 && offset_of!(BlockQ5_1, qs) == 8);
        assert!(offset_of!(BlockQ8_0, qs) == 2);
        assert!(offset_of!(BlockQ4K, dmin) == 2);
        assert!(offset_of!(BlockQ4K, scales) == 4 && offset_of!(BlockQ4K, qs) == 16);
        assert!(offset_of!(BlockQ6K, qh) == 128 && offset_of!(BlockQ6K, scales) == 192);
        assert!(offset_of!(BlockQ6K, d) == 208);
    };

    use crate::test_rng::{Lcg, check_dot as check, random_block};

    fn legacy<B: Block<32> + Legacy4, const N: usize>(fix: &[usize]) {
        let mut r = Lcg(7 + N as u64);
        for _ in 0..500 {
            let (buf, vals) = random_block::<QK32, B, N>(&mut r, fix);
            let p = buf.ptr();
            let x: [f32; 32] = core::array::from_fn(|_| r.f());
            // Each thread's load and dot over its activations at `x_at`, as the kernels do.
            let xs =
                |q: usize, j: usize| -> [f32; 4] { core::array::from_fn(|i| x[B::x_at(q, j) + i]) };
            // SAFETY: p holds a whole 2-byte aligned block.
            let got: f32 = (0..4)
                .map(|q| B::dot_vals(unsafe { B::load(p, q) }, q, [xs(q, 0), xs(q, 1)]))
                .sum();
            check(&vals, &x, got);
            // SAFETY: as above.
            let raw: [Raw; 4] = core::array::from_fn(|q| unsafe { B::load(p, q) });
            check_values(
                &vals,
                4,
                B::RUN,
                |q, j| B::run_start(q, j),
                |q| B::values(raw[q], q),
            );
        }
    }

    /// Every part's values, placed at its runs, are the block's dequantized values bit for bit,
    /// and the parts' runs cover every element exactly once.
    fn check_values<const QK: usize>(
        vals: &[f32; QK],
        parts: usize,
        run: usize,
        start: impl Fn(usize, usize) -> usize,
        values: impl Fn(usize) -> [f32; 8],
    ) {
        let mut seen = [0u8; QK];
        for p in 0..parts {
            let v = values(p);
            for j in 0..8 / run {
                let s = start(p, j);
                assert_eq!(s % run, 0, "part {p} run {j} starts at {s}");
                for i in 0..run {
                    seen[s + i] += 1;
                    assert_eq!(
                        v[run * j + i].to_bits(),
                        vals[s + i].to_bits(),
                        "part {p} run {j} element {}",
                        s + i
                    );
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "runs cover {seen:?}");
    }

    fn k_quant<B: Block<256> + KWarp, const N: usize>(fix: &[usize]) {
        let mut r = Lcg(11 + N as u64);
        for _ in 0..200 {
            let (buf, vals) = random_block::<QK_K, B, N>(&mut r, fix);
            let p = buf.ptr();
            let x: [f32; 256] = core::array::from_fn(|_| r.f());
            // SAFETY: p holds a whole 2-byte aligned super-block; x holds 256 floats.
            let got: f32 = (0..32).map(|l| unsafe { B::dot(p, l, x.as_ptr()) }).sum();
            check(&vals, &x, got);
            // SAFETY: as above.
            let raw: [Raw; 32] = core::array::from_fn(|l| unsafe { B::load(p, l) });
            check_values(
                &vals,
                32,
                B::RUN,
                |l, j| B::run_start(l, j),
                |l| B::values(raw[l], l),
            );
        }
    }

    #[test]
    fn legacy_pieces_sum_to_the_dequantized_dot_and_decode_to_its_values() {
        legacy::<BlockQ4_0, 18>(&[0]);
        legacy::<BlockQ4_1, 20>(&[0, 2]);
        legacy::<BlockQ5_0, 22>(&[0]);
        legacy::<BlockQ5_1, 24>(&[0, 2]);
        legacy::<BlockQ8_0, 34>(&[0]);
    }

    #[test]
    fn k_quant_lanes_sum_to_the_dequantized_dot_and_decode_to_its_values() {
        k_quant::<BlockQ4K, 144>(&[0, 2]);
        k_quant::<BlockQ6K, 210>(&[208]);
    }
}
