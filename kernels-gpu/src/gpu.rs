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
