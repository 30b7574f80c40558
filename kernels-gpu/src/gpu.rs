//! The small prelude cuda_std would have given us: thread/block ids, barriers, warp shuffles,
//! fast math. Everything here is `#[inline(always)]` and compiles to one or two PTX instructions.
#![allow(dead_code)]

use core::arch::asm;
use core::arch::nvptx;

/// threadIdx.x
#[inline(always)]
pub fn thread_x() -> u32 {
    // SAFETY: reading a special register has no side effects.
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// blockIdx.x
#[inline(always)]
pub fn block_x() -> u32 {
    // SAFETY: reading a special register has no side effects.
    unsafe { nvptx::_block_idx_x() as u32 }
}

/// blockDim.x
#[inline(always)]
pub fn block_dim_x() -> u32 {
    // SAFETY: reading a special register has no side effects.
    unsafe { nvptx::_block_dim_x() as u32 }
}

/// gridDim.x
#[inline(always)]
pub fn grid_dim_x() -> u32 {
    // SAFETY: reading a special register has no side effects.
    unsafe { nvptx::_grid_dim_x() as u32 }
}

/// Global thread index along x.
#[inline(always)]
pub fn global_x() -> usize {
    block_x() as usize * block_dim_x() as usize + thread_x() as usize
}

/// Total threads along x (grid-stride loops).
#[inline(always)]
pub fn stride_x() -> usize {
    grid_dim_x() as usize * block_dim_x() as usize
}

/// __syncthreads(). Every thread of the block must reach it.
#[inline(always)]
pub fn sync_threads() {
    // SAFETY: a block-wide barrier; callers keep it in uniform control flow.
    unsafe { nvptx::_syncthreads() }
}

/// __syncwarp(): orders the shared-memory accesses of the warp's lanes before and after it. Every
/// lane of the warp must reach it.
#[inline(always)]
pub fn sync_warp() {
    // SAFETY: a warp-wide barrier with the full member mask; callers keep it in warp-uniform
    // control flow.
    unsafe {
        asm!(
            "bar.warp.sync 0xffffffff;",
            options(nostack, preserves_flags)
        )
    }
}

/// Butterfly shuffle over the full warp (all 32 lanes must participate).
#[inline(always)]
pub fn shfl_xor(v: f32, lane_mask: u32) -> f32 {
    let r: u32;
    // SAFETY: `shfl.sync` with the full member mask only exchanges registers within the warp.
    unsafe {
        asm!("shfl.sync.bfly.b32 {r}, {v}, {m}, 0x1f, 0xffffffff;",
             r = out(reg32) r, v = in(reg32) v.to_bits(), m = in(reg32) lane_mask,
             options(nomem, nostack, preserves_flags));
    }
    f32::from_bits(r)
}

/// Sum over the 32 lanes of a warp; every lane gets the result.
#[inline(always)]
pub fn warp_sum(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v += shfl_xor(v, m);
        m >>= 1;
    }
    v
}

/// Max over the 32 lanes of a warp; every lane gets the result.
#[inline(always)]
pub fn warp_max(mut v: f32) -> f32 {
    let mut m = 16;
    while m > 0 {
        v = v.max(shfl_xor(v, m));
        m >>= 1;
    }
    v
}

/// Lane index within the warp (0..32).
#[inline(always)]
pub fn lane() -> u32 {
    thread_x() & 31
}

/// Warp index within the block.
#[inline(always)]
pub fn warp() -> u32 {
    thread_x() >> 5
}

/// Butterfly shuffle of raw bits over the full warp (all 32 lanes must participate).
#[inline(always)]
pub fn shfl_xor_u32(v: u32, lane_mask: u32) -> u32 {
    let r: u32;
    // SAFETY: `shfl.sync` with the full member mask only exchanges registers within the warp.
    unsafe {
        asm!("shfl.sync.bfly.b32 {r}, {v}, {m}, 0x1f, 0xffffffff;",
             r = out(reg32) r, v = in(reg32) v, m = in(reg32) lane_mask,
             options(nomem, nostack, preserves_flags));
    }
    r
}

/// The value of `v` held by lane `src` (all 32 lanes must participate).
#[inline(always)]
pub fn shfl_idx(v: f32, src: u32) -> f32 {
    let r: u32;
    // SAFETY: `shfl.sync` with the full member mask only exchanges registers within the warp.
    unsafe {
        asm!("shfl.sync.idx.b32 {r}, {v}, {s}, 0x1f, 0xffffffff;",
             r = out(reg32) r, v = in(reg32) v.to_bits(), s = in(reg32) src,
             options(nomem, nostack, preserves_flags));
    }
    f32::from_bits(r)
}

/// The value of `v` held by the lane `delta` below this one; lanes below `delta` keep their own
/// (all 32 lanes must participate).
#[inline(always)]
pub fn shfl_up_u32(v: u32, delta: u32) -> u32 {
    let r: u32;
    // SAFETY: `shfl.sync` with the full member mask only exchanges registers within the warp.
    unsafe {
        asm!("shfl.sync.up.b32 {r}, {v}, {d}, 0x0, 0xffffffff;",
             r = out(reg32) r, v = in(reg32) v, d = in(reg32) delta,
             options(nomem, nostack, preserves_flags));
    }
    r
}

/// Inclusive prefix sum over the lanes of a warp (lane `l` gets lanes `0..=l`; all 32 lanes must
/// participate).
#[inline(always)]
pub fn warp_scan_u32(mut v: u32) -> u32 {
    let mut d = 1;
    while d < 32 {
        let o = shfl_up_u32(v, d);
        if lane() >= d {
            v += o;
        }
        d <<= 1;
    }
    v
}

/// [`warp_scan_u32`] for f32 (the additions in a fixed order).
#[inline(always)]
pub fn warp_scan_f32(mut v: f32) -> f32 {
    let mut d = 1;
    while d < 32 {
        let o = f32::from_bits(shfl_up_u32(v.to_bits(), d));
        if lane() >= d {
            v += o;
        }
        d <<= 1;
    }
    v
}

/// Block-wide sum; every thread gets the result. `blockDim.x` must be a multiple of 32 (≤ 1024)
/// and every thread of the block must call it (it contains barriers).
#[inline(always)]
pub fn block_sum(v: f32) -> f32 {
    let s = red_smem();
    let v = warp_sum(v);
    // SAFETY: `s` is the 64-word shared scratch; warp w writes slot w (< 32 since blockDim ≤ 1024),
    // the barriers order the writes before the reads and the reads before the next reuse.
    unsafe {
        if lane() == 0 {
            *s.add(warp() as usize) = v;
        }
        sync_threads();
        let n_warps = block_dim_x() >> 5;
        let t = if lane() < n_warps {
            *s.add(lane() as usize)
        } else {
            0.0
        };
        let r = warp_sum(t);
        sync_threads();
        r
    }
}

/// Two [`block_sum`]s at once — each the same bits as its own call — with one pair of barriers
/// instead of two: the warps' shuffles of both values interleave, and a block that needs both
/// sums (a dot product and a norm's sum of squares) waits for the block once. Same contract as
/// [`block_sum`].
#[inline(always)]
pub fn block_sum2(a: f32, b: f32) -> (f32, f32) {
    let s = red_smem();
    let (a, b) = (warp_sum(a), warp_sum(b));
    // SAFETY: `s` is the 64-word shared scratch; warp w writes slots w and 32 + w (w < 32 since
    // blockDim ≤ 1024), the barriers order the writes before the reads and the reads before the
    // next reuse.
    unsafe {
        if lane() == 0 {
            *s.add(warp() as usize) = a;
            *s.add(32 + warp() as usize) = b;
        }
        sync_threads();
        let n_warps = block_dim_x() >> 5;
        let (ta, tb) = if lane() < n_warps {
            (*s.add(lane() as usize), *s.add(32 + lane() as usize))
        } else {
            (0.0, 0.0)
        };
        let r = (warp_sum(ta), warp_sum(tb));
        sync_threads();
        r
    }
}

/// Block-wide max; every thread gets the result. Same contract as [`block_sum`].
#[inline(always)]
pub fn block_max(v: f32) -> f32 {
    let s = red_smem();
    let v = warp_max(v);
    // SAFETY: as in `block_sum`.
    unsafe {
        if lane() == 0 {
            *s.add(warp() as usize) = v;
        }
        sync_threads();
        let n_warps = block_dim_x() >> 5;
        let t = if lane() < n_warps {
            *s.add(lane() as usize)
        } else {
            f32::NEG_INFINITY
        };
        let r = warp_max(t);
        sync_threads();
        r
    }
}

// The 64-word scratch the block reductions share: a module-scope `.shared` array (one copy per
// block of every kernel that uses it). `#[link_section = ".shared"]` does not work (the array lands
// in global memory), so it is declared in PTX and its address converted to a generic pointer.
core::arch::global_asm!(".shared .align 16 .b8 GPU_RED_SMEM[256];");

/// Generic pointer to the 64 f32 of block-reduction scratch in shared memory.
#[inline(always)]
pub fn red_smem() -> *mut f32 {
    let p: u64;
    // SAFETY: `cvta.shared` only converts the address of a symbol declared above.
    unsafe {
        asm!("cvta.shared.u64 {p}, GPU_RED_SMEM;", p = out(reg64) p,
             options(nomem, nostack, pure));
    }
    p as *mut f32
}

/// The dynamic shared memory of this launch (its size is the launch's `shared_mem_bytes`),
/// 16-byte aligned.
#[inline(always)]
pub fn dyn_smem<T>() -> *mut T {
    core::intrinsics::gpu::gpu_launch_sized_workgroup_mem::<T>()
}

/// 2^x with the MUFU unit (`ex2.approx.ftz`): max relative error about 2^-22, subnormal results
/// flushed to zero.
#[inline(always)]
pub fn ex2(x: f32) -> f32 {
    let r: u32;
    // SAFETY: a pure arithmetic instruction.
    unsafe {
        asm!("ex2.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x.to_bits(),
             options(pure, nomem, nostack));
    }
    f32::from_bits(r)
}

/// 1/x with the MUFU unit (`rcp.approx.ftz`): at most 1 ulp from the rounded reciprocal,
/// subnormal inputs and results flushed to zero.
#[inline(always)]
pub fn rcp(x: f32) -> f32 {
    let r: u32;
    // SAFETY: a pure arithmetic instruction.
    unsafe {
        asm!("rcp.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x.to_bits(),
             options(pure, nomem, nostack));
    }
    f32::from_bits(r)
}

/// e^x through [`ex2`]: relative error about 2^-21 plus |x|·2^-24 from scaling the argument.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    ex2(x * core::f32::consts::LOG2_E)
}

/// f32 → f16 bits, round to nearest even (`cvt.rn.f16.f32`; overflow gives ±inf).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    let r: u16;
    // SAFETY: a pure conversion instruction.
    unsafe {
        asm!("cvt.rn.f16.f32 {r}, {x};", r = out(reg16) r, x = in(reg32) x.to_bits(),
             options(pure, nomem, nostack));
    }
    r
}

/// f16 bits → f32, exact (`cvt.f32.f16`).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let r: u32;
    // SAFETY: a pure conversion instruction.
    unsafe {
        asm!("cvt.f32.f16 {r}, {h};", r = out(reg32) r, h = in(reg16) h,
             options(pure, nomem, nostack));
    }
    f32::from_bits(r)
}

/// Orders f32 by value as u32 (larger float → larger key; -0 < +0; NaN above +inf when the sign
/// bit is clear). Used for radix selection.
#[inline(always)]
pub fn f32_order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Inverse of [`f32_order_key`].
#[inline(always)]
pub fn f32_from_order_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// Shared-memory atomic add on a u32 (`atom.add` through a generic address).
#[inline(always)]
pub fn atomic_add_u32(p: *mut u32, v: u32) -> u32 {
    let r: u32;
    // SAFETY: callers pass a valid, 4-byte aligned address; the atomic needs no other invariant.
    unsafe {
        asm!("atom.add.u32 {r}, [{p}], {v};", r = out(reg32) r, p = in(reg64) p as u64,
             v = in(reg32) v, options(nostack));
    }
    r
}

/// `__threadfence()`: this thread's global-memory writes are visible to the whole device before
/// any of its later writes (`membar.gl`). Used before announcing a finished block through an
/// atomic counter ("the last block to finish reduces": the argmax).
#[inline(always)]
pub fn fence_gpu() {
    // SAFETY: a memory barrier has no other effect.
    unsafe { asm!("membar.gl;", options(nostack, preserves_flags)) }
}

/// A load that bypasses the non-coherent L1 (`ld.volatile`): for data another block of the same
/// grid wrote and published through [`fence_gpu`] and an atomic.
///
/// # Safety
/// `p` is valid and aligned for a read of `T`.
#[inline(always)]
pub unsafe fn load_volatile<T: Copy>(p: *const T) -> T {
    // SAFETY: caller contract.
    unsafe { core::ptr::read_volatile(p) }
}

/// A load cached in L2 only (`ld.global.cg`): for data another block of the same grid wrote and
/// published through [`fence_gpu`] and an atomic (L1 is not coherent across blocks). Unlike
/// [`load_volatile`] the compiler may batch these.
///
/// # Safety
/// `p` is a valid, 4-byte aligned global address.
#[inline(always)]
pub unsafe fn load_cg(p: *const f32) -> f32 {
    let r: u32;
    // SAFETY: caller contract.
    unsafe {
        asm!("ld.global.cg.b32 {r}, [{p}];", r = out(reg32) r, p = in(reg64) p as u64,
             options(readonly, nostack, preserves_flags));
    }
    f32::from_bits(r)
}

/// Four consecutive floats in one `ld.global.cg.v4.f32` (see [`load_cg`]).
///
/// # Safety
/// `p` is a valid, 16-byte aligned global address of 4 floats.
#[inline(always)]
pub unsafe fn load_cg4(p: *const f32) -> [f32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: caller contract.
    unsafe {
        asm!("ld.global.cg.v4.b32 {{{a}, {b}, {c}, {d}}}, [{p}];", a = out(reg32) a,
             b = out(reg32) b, c = out(reg32) c, d = out(reg32) d, p = in(reg64) p as u64,
             options(readonly, nostack, preserves_flags));
    }
    [
        f32::from_bits(a),
        f32::from_bits(b),
        f32::from_bits(c),
        f32::from_bits(d),
    ]
}

/// Bytes of dynamic shared memory this launch was given (`%dynamic_smem_size`).
#[inline(always)]
pub fn dyn_smem_size() -> u32 {
    let r: u32;
    // SAFETY: reads a special register.
    unsafe {
        asm!("mov.u32 {r}, %dynamic_smem_size;", r = out(reg32) r,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// The shared-space address of `p`, a generic pointer into shared memory.
#[inline(always)]
pub fn smem_addr(p: *const u8) -> u32 {
    let a: u64;
    // SAFETY: an address conversion; no memory access.
    unsafe {
        asm!("cvta.to.shared.u64 {a}, {p};", a = out(reg64) a, p = in(reg64) p as u64,
             options(pure, nomem, nostack, preserves_flags));
    }
    a as u32
}

/// Copies the 16 bytes at `src` to `dst` in shared memory asynchronously (`cp.async.cg`, no
/// registers, through L2 only); [`cp_async_wait_all`] waits for this thread's copies.
///
/// # Safety
/// `src` (global) and `dst` (shared, as a generic pointer) are 16-byte aligned with 16 bytes
/// readable / writable; nothing reads `dst` before the wait and a barrier.
#[inline(always)]
pub unsafe fn cp_async16(dst: *mut u8, src: *const u8) {
    // SAFETY: caller contract.
    unsafe {
        asm!("cp.async.cg.shared.global [{d}], [{s}], 16;", d = in(reg32) smem_addr(dst),
             s = in(reg64) src as u64, options(nostack, preserves_flags));
    }
}

/// Waits until this thread's [`cp_async16`] copies have landed.
#[inline(always)]
pub fn cp_async_wait_all() {
    // SAFETY: waits for the thread's own async copies; no other effect.
    unsafe { asm!("cp.async.wait_all;", options(nostack, preserves_flags)) }
}

/// Starts copying `len` bytes at `src` (global memory, any alignment) into the block's shared
/// memory at `dst` (16-byte aligned): the block's threads each issue 16-byte asynchronous copies
/// of the 16-byte words that cover the range, so the bytes arrive in whole coalesced lines, none
/// through registers. Returns where `src`'s first byte lands (`dst` plus `src`'s offset in its
/// word, so the copy keeps `src`'s alignment modulo 16). Every thread of the block calls it;
/// [`cp_async_wait_all`] then [`sync_threads`] before anyone reads the copy.
///
/// # Safety
/// The 16-byte words covering `src .. src + len` are readable (device tensors are padded to 16
/// bytes); `dst` has `len + 30` bytes of shared memory (at most 15 before and after).
#[inline(always)]
pub unsafe fn stage(src: *const u8, len: usize, dst: *mut u8) -> *const u8 {
    let lo = src as usize & !15;
    let n = (src as usize + len - lo).div_ceil(16);
    let mut i = thread_x() as usize;
    while i < n {
        // SAFETY: caller contract: word i of the covering range, inside the copy's space.
        unsafe { cp_async16(dst.add(16 * i), (lo + 16 * i) as *const u8) };
        i += block_dim_x() as usize;
    }
    // SAFETY: src - lo < 16 < the space's size.
    unsafe { dst.add(src as usize - lo) }
}

/// Programmatic dependent launch, the first half (sm_90; nothing on older targets): lets the next
/// kernel of the stream, when the host launched it with the programmatic-serialization attribute,
/// be scheduled as soon as every block of this grid has passed here
/// (`griddepcontrol.launch_dependents`). Its blocks then start while this grid runs, and do what
/// needs nothing from it (issue their weight loads) before they [`pdl_wait`]. The decode-step
/// kernels call it first thing.
#[inline(always)]
pub fn pdl_trigger() {
    #[cfg(target_feature = "sm_90")]
    // SAFETY: only lets the dependent grid be scheduled; this grid's memory is untouched.
    unsafe {
        asm!(
            "griddepcontrol.launch_dependents;",
            options(nostack, preserves_flags)
        )
    }
}

/// Programmatic dependent launch, the second half (sm_90; nothing on older targets): waits until
/// the grids this one depends on have completed and their writes are visible
/// (`griddepcontrol.wait`; immediate when the launch had no programmatic dependency). A kernel
/// the host launches with the programmatic-serialization attribute calls it before its first
/// read of memory another kernel writes and before its first global write; before it, only the
/// weights (never written during a forward) may be read. As an `asm` that may touch memory, it
/// also keeps the compiler from moving loads across it.
#[inline(always)]
pub fn pdl_wait() {
    #[cfg(target_feature = "sm_90")]
    // SAFETY: a wait; it makes the previous grids' writes visible, nothing else.
    unsafe {
        asm!("griddepcontrol.wait;", options(nostack, preserves_flags))
    }
}
