//! Quantized matrix-vector product for decode: `y[r] = Σ_c W[r, c] · x[c]`, reading `W` in its
//! GGUF blocks (no repacking), f32 activations and accumulation (reference: the row dequantized by
//! `host::quant::dequantize_row`, dotted with `x` in f64).
//!
//! `matvec_<type>(w, x, y, rows, cols, add, mode)`: `W` is row-major, `rows` rows of `cols`
//! elements; `mode` 0 stores `y = W x`, 1 stores `y = W x + add` (a bias, `add` holds rows floats),
//! 2 stores `y += W x` (a residual; `add` unused but a valid pointer).
//! Three lane layouts:
//! - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: 4 lanes per 32-element block, each decoding its quarter in
//!   registers (`matvec_dot::Legacy4`); one row per block of W warps, warp `w` taking blocks
//!   `8 w + l / 4, + 8 W, …`, a block reduction summing the row. The fused gate/up/SwiGLU kernel
//!   keeps a warp per row (8 blocks per warp step), R rows per block: its 4,864 rows give enough
//!   warps, and its block count is what its launch bounds size (host/build.rs).
//! - Q4_K, Q6_K: a block of W warps per row, a warp's 32 lanes share a 256-element super-block,
//!   8 elements each (`matvec_dot::KWarp`); a block reduction sums the warps.
//! - the others (F32, F16, BF16, Q2_K, Q3_K, Q5_K): a warp per row, lane `l` decodes the
//!   32-element pieces `l, l + 32, …` of the row through the shared decode functions into a
//!   buffer.
//!
//! Launch: grid = (rows, 1, 1), block = (32 W, 1, 1) (W = `shapes::MATVEC_KWARP_WARPS` = 4) for
//! the legacy and K-quant types; for the others and `matvec_swiglu_*` grid = (ceil(rows / R), 1,
//! 1), block = (32 R, 1, 1) (a warp per row, R = `shapes::MATVEC_ROWS_PER_BLOCK` = 4). 8 or 16
//! rows per block and 8 warps per K-quant row measured slower (PERF.md change 15).
//! Limits: `cols` a multiple of the type's block size (and of 32); `rows < 2^32`.

use crate::elementwise::silu_mul;
use crate::formats::{Bf16x32, F16x32, F32x32, Sub32, decode_sub};
use crate::gpu;
use crate::matvec_dot::{KWarp, Legacy4, Raw, fma, pin_raw, xa4};
use crate::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0,
};

/// Rows (warps) per block, except for the K-quant kernels (Q4_K, Q6_K).
pub const ROWS_PER_BLOCK: usize = crate::shapes::MATVEC_ROWS_PER_BLOCK;
/// Blocks (legacy types) whose weight loads a lane issues before any of their arithmetic: the
/// kernels are bound by DRAM latency, so the loads of one loop step should all be in flight
/// together.
pub const UNROLL: usize = 4; // the loops below are written out for 4
/// Super-blocks whose loads a lane of the K-quant kernels issues before their arithmetic: 5, so
/// that a row of 4,864 columns (19 super-blocks, the qwen FFN down projection) is one round of
/// loads for the 4 warps, not two.
pub const KWARP_UNROLL: usize = 5; // the loop below is written out for 5
/// Warps per block (and per row) of the legacy-type and K-quant kernels: one row per block.
pub const KWARP_WARPS: usize = crate::shapes::MATVEC_KWARP_WARPS;

#[inline(always)]
unsafe fn matvec<B: Sub32>(
    w: *const u8,
    x: *const f32,
    y: *mut f32,
    rows: u32,
    cols: u32,
    add: *const f32,
    mode: u32,
) {
    gpu::pdl_wait(); // the shared decode functions load weights and activations together
    let row = gpu::block_x() as usize * ROWS_PER_BLOCK + gpu::warp() as usize;
    if row >= rows as usize {
        return; // warp-uniform; no barriers below
    }
    let cols = cols as usize;
    let subs = cols / 32;
    let row_bytes = cols / B::QK * B::BYTES;
    // SAFETY: row < rows: inside W.
    let wr = unsafe { w.add(row * row_bytes) };
    let mut v = [0.0f32; 32];
    let mut acc = 0.0f32;
    let mut s = gpu::lane() as usize;
    while s < subs {
        // SAFETY: s < cols / 32.
        unsafe { decode_sub::<B>(wr, s, &mut v) };
        for (k, &wv) in v.iter().enumerate() {
            // SAFETY: 32 * s + k < cols; x holds cols floats.
            acc += wv * unsafe { *x.add(32 * s + k) };
        }
        s += 32;
    }
    let acc = gpu::warp_sum(acc);
    if gpu::lane() == 0 {
        // SAFETY: row < rows; y holds rows floats.
        unsafe { store(y, row, acc, add, mode) };
    }
}

/// Writes row `row`'s result: `mode` [`STORE`] `y = acc`, [`ADD`] `y = acc + add[row]` (a bias),
/// [`ACCUMULATE`] `y = y + acc` (a residual: the same f32 additions, operand for operand, as a
/// separate `add_f32` launch after a plain store).
///
/// # Safety
/// `row` < rows; `y` holds rows floats, and so does `add` when `mode` is [`ADD`].
#[inline(always)]
unsafe fn store(y: *mut f32, row: usize, acc: f32, add: *const f32, mode: u32) {
    // SAFETY: caller contract.
    unsafe {
        match mode {
            ADD => *y.add(row) = acc + *add.add(row),
            ACCUMULATE => *y.add(row) += acc,
            _ => *y.add(row) = acc,
        }
    }
}

/// The second operand of a row's epilogue in the block-per-row kernels — `add[row]` (a bias) or
/// `y[row]` (the residual's old value) — loaded by thread 0 right after the wait for the
/// previous kernel, so that its latency overlaps the dot product instead of following the block
/// reduction (`y` is the previous kernel's output: it may not be read earlier).
#[derive(Clone, Copy)]
pub(crate) struct Epilogue(*const f32);

impl Epilogue {
    /// The operand's address for thread 0 when `mode` has one, else none.
    ///
    /// # Safety
    /// As [`store`].
    #[inline(always)]
    pub(crate) unsafe fn new(y: *const f32, row: usize, add: *const f32, mode: u32) -> Self {
        // SAFETY: caller contract: row < rows.
        let src = unsafe {
            match mode {
                ADD => add.add(row),
                ACCUMULATE => y.add(row),
                _ => core::ptr::null(),
            }
        };
        Epilogue(if gpu::thread_x() == 0 {
            src
        } else {
            core::ptr::null()
        })
    }

    /// The operand (0 where there is none). Call it after `gpu::pdl_wait`.
    #[inline(always)]
    pub(crate) fn load(self) -> f32 {
        if self.0.is_null() {
            0.0
        } else {
            // SAFETY: `new`'s contract.
            unsafe { *self.0 }
        }
    }
}

/// The row's value from each thread's share `acc` (a block reduction), written by thread 0 as
/// [`store`] does, with `operand` the [`Epilogue`] it loaded: `acc`, `acc + add[row]` or
/// `y[row] + acc` (the same f32 additions). Every thread of the block calls it.
///
/// # Safety
/// As [`store`].
#[inline(always)]
pub(crate) unsafe fn store_block_sum(y: *mut f32, row: usize, acc: f32, operand: f32, mode: u32) {
    let acc = gpu::block_sum(acc);
    if gpu::thread_x() == 0 {
        // SAFETY: caller contract.
        unsafe { store_with(y, row, acc, operand, mode) };
    }
}

/// `y[row] = acc`, or `acc + operand` when `mode` has an [`Epilogue`] operand.
///
/// # Safety
/// As [`store`].
#[inline(always)]
unsafe fn store_with(y: *mut f32, row: usize, acc: f32, operand: f32, mode: u32) {
    // SAFETY: caller contract.
    unsafe {
        *y.add(row) = match mode {
            ADD | ACCUMULATE => acc + operand,
            _ => acc,
        }
    };
}

pub use crate::shapes::{
    MATVEC_ACCUMULATE as ACCUMULATE, MATVEC_ADD as ADD, MATVEC_STORE as STORE,
};

/// Where a lane's activations come from in the legacy-type kernels.
trait Acts {
    /// The 4 activations at `n .. n + 4` (`n` a multiple of 4).
    ///
    /// # Safety
    /// `n + 4` ≤ the row length the source was made for.
    unsafe fn get(&mut self, n: usize) -> [f32; 4];
    /// The row's value from each thread's share `dot` of its dot product, the block's threads
    /// sharing the row (a block reduction; every thread of the block calls this).
    fn finish_block(self, dot: f32) -> f32;
}

/// The activation vector itself.
#[derive(Clone, Copy)]
struct Plain(*const f32);

impl Acts for Plain {
    #[inline(always)]
    unsafe fn get(&mut self, n: usize) -> [f32; 4] {
        // SAFETY: caller contract; x is 16-byte aligned (launcher) and n a multiple of 4.
        unsafe { xa4(self.0, n) }
    }
    #[inline(always)]
    fn finish_block(self, dot: f32) -> f32 {
        gpu::block_sum(dot)
    }
}

/// The RMSNorm of the residual stream `h` with weight `g`, folded into the dot product:
/// `Σ_c W[r, c] · (h_c · g_c · s) = s · Σ_c W[r, c] · (h_c · g_c)` with
/// `s = 1 / sqrt(Σ h² / n + eps)`. The lanes of a warp read each element of `h` exactly once
/// for the dot product, so the sum of squares is gathered on the way and the scale applied to the
/// warp's sum at the end: no separate norm launch, no barrier, and the weight loads do not wait
/// for it.
struct Normed {
    h: *const f32,
    g: *const f32,
    ss: f32,
    n: u32,
    eps: f32,
}

impl Normed {
    #[inline(always)]
    fn new(h: *const f32, g: *const f32, n: u32, eps: f32) -> Self {
        Normed {
            h,
            g,
            ss: 0.0,
            n,
            eps,
        }
    }

    /// The norm's scale `s` once the lanes sharing the row have read all of it, `reduce` summing
    /// over them (every lane calls this).
    #[inline(always)]
    fn scale(&self, reduce: impl Fn(f32) -> f32) -> f32 {
        self.scale_of(reduce(self.ss))
    }

    /// The norm's scale from the row's whole sum of squares `ss`.
    #[inline(always)]
    fn scale_of(&self, ss: f32) -> f32 {
        // As `rms_norm_f32`: IEEE sqrt and division.
        1.0 / core::f32::math::sqrt(ss / self.n as f32 + self.eps)
    }
}

impl Acts for Normed {
    #[inline(always)]
    unsafe fn get(&mut self, n: usize) -> [f32; 4] {
        // SAFETY: caller contract; h and g hold the row's n floats, 16-byte aligned (launcher).
        let (h, g) = unsafe { (xa4(self.h, n), xa4(self.g, n)) };
        self.ss += h[0] * h[0] + h[1] * h[1] + h[2] * h[2] + h[3] * h[3];
        [h[0] * g[0], h[1] * g[1], h[2] * g[2], h[3] * g[3]]
    }
    #[inline(always)]
    fn finish_block(self, dot: f32) -> f32 {
        // The dot product and the sum of squares reduced together: one wait for the block.
        let (dot, ss) = gpu::block_sum2(dot, self.ss);
        dot * self.scale_of(ss)
    }
}

/// The attention's output assembled from its per-split partials (`attention_decode_*` launched
/// with `defer`, which then leaves the combine to this kernel): element `n` of query head
/// `h = n / D` is `Σ_s w_s · acc_s[n] / Σ_s w_s · sum_s` with `w_s = e^(m_s − M)`,
/// `M = max_s m_s`, over the `n_used ≤ DECODE_DEFER_SPLITS` used splits in order — the
/// attention's own combine (the same `exp` and fused multiply-adds; the division as one IEEE
/// reciprocal and products), done where the output projection reads its activations instead of
/// by a separate launch (`attention_combine`, for longer contexts).
/// Layout as the attention writes it: `acc_s` at `part[(h · n_split + s) · D ..]`, `[m_s, sum_s]`
/// at `ms[2 (h · n_split + s) ..]`.
struct Combined {
    part: *const f32,
    ms: *const f32,
    n_split: usize,
    n_used: usize,
    d_log2: u32,
}

impl Acts for Combined {
    #[inline(always)]
    unsafe fn get(&mut self, n: usize) -> [f32; 4] {
        const S: usize = crate::shapes::DECODE_DEFER_SPLITS;
        const _: () = assert!(S == 4, "the split loads below are written out for 4");
        let (h, j) = (n >> self.d_log2, n & ((1 << self.d_log2) - 1));
        let row0 = h * self.n_split;
        // All S splits' loads at once (those past n_used repeat the last one, weight 0).
        let ld = |s: usize| {
            let r = row0 + core::cmp::min(s, self.n_used - 1);
            // SAFETY: r < n_head · n_split: a partial row of D floats (j + 4 ≤ D, 16-byte
            // aligned) and its [m, s] pair (8-byte aligned): the kernel's contract.
            unsafe {
                (
                    *(self.ms.add(2 * r) as *const [f32; 2]),
                    xa4(self.part, (r << self.d_log2) + j),
                )
            }
        };
        let v = [ld(0), ld(1), ld(2), ld(3)];
        let mut mx = v[0].0[0];
        for (s, x) in v.iter().enumerate().skip(1) {
            if s < self.n_used {
                mx = mx.max(x.0[0]);
            }
        }
        let mut den = 0.0f32;
        let mut num = [0.0f32; 4];
        for (s, x) in v.iter().enumerate() {
            if s < self.n_used {
                let w = gpu::exp(x.0[0] - mx);
                den += w * x.0[1];
                for (a, &xv) in num.iter_mut().zip(&x.1) {
                    *a = fma(w, xv, *a);
                }
            }
        }
        let inv = 1.0 / den;
        num.map(|a| a * inv)
    }
    #[inline(always)]
    fn finish_block(self, dot: f32) -> f32 {
        gpu::block_sum(dot)
    }
}

/// Legacy types: one row per block of [`KWARP_WARPS`] warps; lane `l` of warp `w` takes quarter
/// `l % 4` of blocks `8 w + l / 4, 8 w + l / 4 + 8 W, …` (W = [`KWARP_WARPS`]), a block reduction
/// sums the row. A row of 896 columns (28 blocks) is then one block quarter per lane instead of
/// seven: the dependent arithmetic after the loads arrive is a seventh as long, which is what
/// the short q/k/v and o projections of decode wait on (PERF.md change 20).
#[inline(always)]
unsafe fn matvec_legacy<B: Legacy4>(
    w: *const u8,
    x: *const f32,
    y: *mut f32,
    rows: u32,
    cols: u32,
    add: *const f32,
    mode: u32,
) {
    // SAFETY: forwarded contract.
    unsafe {
        matvec_legacy_at::<B, _, UNROLL>(
            gpu::block_x() as usize,
            w,
            Plain(x),
            y,
            rows,
            cols,
            add,
            mode,
        )
    }
}

/// [`matvec_legacy`] for row `row` (the block's), activations from `acts` (a fresh source).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matvec_legacy_at<B: Legacy4, A: Acts, const U: usize>(
    row: usize,
    w: *const u8,
    acts: A,
    y: *mut f32,
    rows: u32,
    cols: u32,
    add: *const f32,
    mode: u32,
) {
    if row >= rows as usize {
        return; // block-uniform: the barriers of block_sum are reached by all or none
    }
    let nb = cols as usize / 32;
    // SAFETY: row < rows: inside W.
    let wr = unsafe { w.add(row * nb * B::BYTES) };
    let lane = gpu::lane() as usize;
    let first = 8 * gpu::warp() as usize + lane / 4;
    let mut acts = acts;
    // SAFETY: row < rows; y (and add) hold rows floats.
    let epi = unsafe { Epilogue::new(y, row, add, mode) };
    // SAFETY: forwarded: wr is a whole row of nb blocks, acts reads 32 nb floats.
    let (acc, operand) =
        unsafe { row_dot_legacy::<B, A, U>(wr, nb, lane, first, 8 * KWARP_WARPS, &mut acts, epi) };
    let acc = acts.finish_block(acc);
    if gpu::thread_x() == 0 {
        // SAFETY: row < rows; y holds rows floats.
        unsafe { store_with(y, row, acc, operand, mode) };
    }
}

/// Lane `lane`'s 8 activations of block `bb` (thread `q = lane % 4`'s runs).
///
/// # Safety
/// `acts` reads at least `32 (bb + 1)` floats.
#[inline(always)]
unsafe fn block_acts<B: Legacy4, A: Acts>(acts: &mut A, bb: usize, q: usize) -> [[f32; 4]; 2] {
    // SAFETY: caller contract; x_at(q, j) + 4 ≤ 32, multiples of 4.
    unsafe {
        [
            acts.get(32 * bb + B::x_at(q, 0)),
            acts.get(32 * bb + B::x_at(q, 1)),
        ]
    }
}

/// Lane `lane`'s part of the dot product of the row at `wr` (`nb` blocks) with the activations:
/// quarter `lane % 4` of blocks `first, first + stride, …` (sum the lanes for the row's value),
/// and the [`Epilogue`] operand, loaded right after the wait (0 on a lane with no block).
///
/// # Safety
/// `wr` points to a whole row of `nb ≥ 1` blocks, 2-byte aligned; `acts` reads `32 nb` floats.
#[inline(always)]
unsafe fn row_dot_legacy<B: Legacy4, A: Acts, const U: usize>(
    wr: *const u8,
    nb: usize,
    lane: usize,
    first: usize,
    stride: usize,
    acts: &mut A,
    epi: Epilogue,
) -> (f32, f32) {
    const { assert!(U == 1 || U == UNROLL) };
    let q = lane % 4;
    let mut b = first;
    let mut acc = 0.0f32;
    let mut operand = 0.0f32;
    while b < nb {
        // Loads first: U blocks' bits in flight at once (indices past the row clamped to its
        // last block, loaded but not counted), then the arithmetic.
        let ld = |u: usize| {
            let bb = (b + stride * u).min(nb - 1);
            // SAFETY: bb < cols / 32: a whole block of the row, 2-byte aligned (even block
            // sizes, device allocations).
            unsafe { B::load(wr.add(bb * B::BYTES), q) }
        };
        // Block `b` is in the row: its load goes out before the wait for the previous kernel
        // (`gpu::pdl_wait`, which also keeps it from being sunk into the guarded arithmetic);
        // the clamped ones after, as before.
        let r0 = ld(0);
        gpu::pdl_wait();
        if b == first {
            operand = epi.load();
        }
        let raw: [Raw; UNROLL] = if U > 1 {
            [r0, ld(1), ld(2), ld(3)]
        } else {
            [r0; UNROLL]
        };
        let mut step = |u: usize| {
            let bb = b + stride * u;
            if bb < nb {
                // SAFETY: bb < nb: acts reads 32 nb floats.
                acc += B::dot_vals(raw[u], q, unsafe { block_acts::<B, A>(acts, bb, q) });
            }
        };
        step(0);
        if U > 1 {
            step(1);
            step(2);
            step(3);
        }
        b += stride * U;
    }
    gpu::pdl_wait(); // lanes without a block wait too: the caller may write
    (acc, operand)
}

/// [`row_dot_legacy`] of two rows at once (gate and up): both rows' loads are issued before any
/// arithmetic, so the warp waits for memory once, not twice, and each activation is read once
/// for both. The same per-row sums, in the same order, as two calls.
///
/// # Safety
/// As [`row_dot_legacy`], for both rows.
#[inline(always)]
unsafe fn row_dot2_legacy<B: Legacy4, A: Acts>(
    wa: *const u8,
    wb: *const u8,
    nb: usize,
    lane: usize,
    acts: &mut A,
) -> (f32, f32) {
    let q = lane % 4;
    let mut b = lane / 4;
    let (mut acc_a, mut acc_b) = (0.0f32, 0.0f32);
    while b < nb {
        let ld = |w: *const u8, u: usize| {
            let bb = (b + 8 * u).min(nb - 1);
            // SAFETY: bb < cols / 32: a whole block of the row, 2-byte aligned.
            unsafe { B::load(w.add(bb * B::BYTES), q) }
        };
        let (a0, b0) = (ld(wa, 0), ld(wb, 0));
        gpu::pdl_wait(); // as in `row_dot_legacy`
        let ra: [Raw; UNROLL] = [a0, ld(wa, 1), ld(wa, 2), ld(wa, 3)];
        let rb: [Raw; UNROLL] = [b0, ld(wb, 1), ld(wb, 2), ld(wb, 3)];
        // Written out for the 4 steps (a loop over the arrays would put them in local memory).
        let mut step = |u: usize| {
            let bb = b + 8 * u;
            if bb < nb {
                // SAFETY: bb < nb: acts reads 32 nb floats.
                let xs = unsafe { block_acts::<B, A>(acts, bb, q) };
                acc_a += B::dot_vals(ra[u], q, xs);
                acc_b += B::dot_vals(rb[u], q, xs);
            }
        };
        step(0);
        step(1);
        step(2);
        step(3);
        b += 8 * UNROLL;
    }
    gpu::pdl_wait();
    (acc_a, acc_b)
}

/// `out[r] = silu((Wg xn)[r]) · (Wu xn)[r]` with `xn = rms_norm(h) ∘ g`: the FFN norm, the gate
/// and up projections and the SwiGLU in one launch (a warp per row, as `matvec_legacy`, the norm
/// folded in as [`Normed`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matvec_swiglu_legacy<B: Legacy4>(
    wg: *const u8,
    wu: *const u8,
    h: *const f32,
    g: *const f32,
    eps: f32,
    out: *mut f32,
    rows: u32,
    cols: u32,
) {
    let row = gpu::block_x() as usize * ROWS_PER_BLOCK + gpu::warp() as usize;
    if row >= rows as usize {
        return; // warp-uniform; no barriers below
    }
    let nb = cols as usize / 32;
    let lane = gpu::lane() as usize;
    let mut acts = Normed::new(h, g, cols, eps);
    // SAFETY: row < rows: both rows lie inside their matrices (same shape); h and g hold cols
    // floats.
    let (a, b) = unsafe {
        let off = row * nb * B::BYTES;
        row_dot2_legacy::<B, Normed>(wg.add(off), wu.add(off), nb, lane, &mut acts)
    };
    let (a, b, s) = (
        gpu::warp_sum(a),
        gpu::warp_sum(b),
        acts.scale(gpu::warp_sum),
    );
    if lane == 0 {
        // SAFETY: row < rows; out holds rows floats.
        unsafe { *out.add(row) = silu_mul(a * s, b * s) };
    }
}

macro_rules! matvec_swiglu_kernels {
    ($($name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// `wg`, `wu`: `rows × cols` matrices of the type; `h` and `g` hold cols floats (16-byte
        /// aligned), `out` rows; `cols` a multiple of 32 (validated by the launcher).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            wg: *const u8, wu: *const u8, h: *const f32, g: *const f32, eps: f32,
            out: *mut f32, rows: u32, cols: u32,
        ) {
            gpu::pdl_trigger();
            // SAFETY: forwarded contract.
            unsafe { matvec_swiglu_legacy::<$t>(wg, wu, h, g, eps, out, rows, cols) }
        }
    )*};
}

matvec_swiglu_kernels! {
    matvec_swiglu_q4_0 => BlockQ4_0;
    matvec_swiglu_q4_1 => BlockQ4_1;
    matvec_swiglu_q5_0 => BlockQ5_0;
    matvec_swiglu_q5_1 => BlockQ5_1;
    matvec_swiglu_q8_0 => BlockQ8_0;
}

/// The attention norm and the q, k and v projections of one token in one launch, a row per block
/// as in `matvec_legacy`: blocks `0 .. nq` compute `yq = Wq xn`, the next `nk` `yk = Wk xn`, the
/// rest `yv = Wv xn` (q and k of type `A`, v of type `B`), each plus its bias when `mode` is
/// [`ADD`], with `xn = rms_norm(h) ∘ g` folded in as [`Normed`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matvec_qkv_legacy<A: Legacy4, B: Legacy4>(
    wq: *const u8,
    wk: *const u8,
    wv: *const u8,
    h: *const f32,
    g: *const f32,
    eps: f32,
    yq: *mut f32,
    yk: *mut f32,
    yv: *mut f32,
    bq: *const f32,
    bk: *const f32,
    bv: *const f32,
    nq: u32,
    nk: u32,
    nv: u32,
    cols: u32,
    mode: u32,
) {
    let blk = gpu::block_x() as usize;
    let (bq_n, bk_n) = (nq as usize, nk as usize);
    let acts = Normed::new(h, g, cols, eps);
    // SAFETY: forwarded contract; each sub-range addresses its own matrix and output.
    unsafe {
        if blk < bq_n {
            matvec_legacy_at::<A, _, UNROLL>(blk, wq, acts, yq, nq, cols, bq, mode)
        } else if blk < bq_n + bk_n {
            matvec_legacy_at::<A, _, UNROLL>(blk - bq_n, wk, acts, yk, nk, cols, bk, mode)
        } else {
            matvec_legacy_at::<B, _, UNROLL>(blk - bq_n - bk_n, wv, acts, yv, nv, cols, bv, mode)
        }
    }
}

macro_rules! matvec_qkv_kernels {
    ($($name:ident => $a:ty, $b:ty;)*) => {$(
        /// # Safety
        /// `wq`, `wk`: `nq × cols` and `nk × cols` matrices of the first type, `wv` `nv × cols`
        /// of the second; `h` and `g` hold cols floats (16-byte aligned), `yq`/`yk`/`yv` (and the
        /// biases when `mode` is ADD) nq/nk/nv; grid = nq + nk + nv blocks of 32 W
        /// (validated by the launcher).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            wq: *const u8, wk: *const u8, wv: *const u8, h: *const f32, g: *const f32, eps: f32,
            yq: *mut f32, yk: *mut f32, yv: *mut f32,
            bq: *const f32, bk: *const f32, bv: *const f32,
            nq: u32, nk: u32, nv: u32, cols: u32, mode: u32,
        ) {
            gpu::pdl_trigger();
            // SAFETY: forwarded contract.
            unsafe {
                matvec_qkv_legacy::<$a, $b>(
                    wq, wk, wv, h, g, eps, yq, yk, yv, bq, bk, bv, nq, nk, nv, cols, mode,
                )
            }
        }
    )*};
}

matvec_qkv_kernels! {
    matvec_qkv_q4_0_q4_0 => BlockQ4_0, BlockQ4_0;
    matvec_qkv_q4_1_q4_1 => BlockQ4_1, BlockQ4_1;
    matvec_qkv_q5_0_q5_0 => BlockQ5_0, BlockQ5_0;
    matvec_qkv_q5_1_q5_1 => BlockQ5_1, BlockQ5_1;
    matvec_qkv_q8_0_q8_0 => BlockQ8_0, BlockQ8_0;
    matvec_qkv_q4_0_q8_0 => BlockQ4_0, BlockQ8_0;
    matvec_qkv_q4_1_q8_0 => BlockQ4_1, BlockQ8_0;
    matvec_qkv_q5_0_q8_0 => BlockQ5_0, BlockQ8_0;
    matvec_qkv_q5_1_q8_0 => BlockQ5_1, BlockQ8_0;
}

/// The attention's output projection, `y = Wo · attn (+ add)`, its activations [`Combined`] from
/// the partials the attention left (`n_used ≤ defer` splits for the step's position, planned as
/// the attention plans: `attention::decode_n_kv`, `shapes::decode_plan`). A position that needs
/// more splits than `defer` (a contract violation: the launcher refuses host positions, the
/// backend replays this only where it holds) makes `y` NaN rather than a wrong number. The
/// position is written before the step, so it is read before the wait for the previous kernel.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matvec_attn<B: Legacy4>(
    w: *const u8,
    part: *const f32,
    pos_dev: *const u32,
    plan: [u32; 6],
    y: *mut f32,
    rows: u32,
    add: *const f32,
    mode: u32,
) {
    let [n_kv, n_ctx, n_split, head_dim, n_head, defer] = plan;
    // SAFETY: pos_dev is null or one readable u32 (launcher contract).
    let n_kv = unsafe { crate::attention::decode_n_kv(n_kv, pos_dev, n_ctx) };
    let (_, n_used) = crate::shapes::decode_plan(n_kv, n_split);
    let cols = n_head * head_dim;
    let row = gpu::block_x() as usize;
    if n_used > defer {
        if gpu::thread_x() == 0 && row < rows as usize {
            gpu::pdl_wait();
            // SAFETY: y holds rows floats.
            unsafe { *y.add(row) = f32::NAN };
        }
        return;
    }
    // SAFETY: forwarded contract: part holds n_head · n_split · (head_dim + 2) floats.
    unsafe {
        let src = Combined {
            part,
            ms: part.add((n_head * n_split * head_dim) as usize),
            n_split: n_split as usize,
            n_used: n_used as usize,
            d_log2: head_dim.trailing_zeros(),
        };
        matvec_legacy_at::<B, _, 1>(row, w, src, y, rows, cols, add, mode)
    }
}

macro_rules! matvec_attn_kernels {
    ($($name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// `w`: `rows × (n_head · head_dim)` of the type; `part` the attention's partials for
        /// `n_split` splits (16-byte aligned); `pos_dev` null or one u32; `plan` = `[n_kv, n_ctx,
        /// n_split, head_dim, n_head, defer]` as the attention was launched with (`defer` > 0);
        /// `y` (and `add` when `mode` is ADD) rows floats; grid = rows blocks of 32 W (validated
        /// by the launcher).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            w: *const u8, part: *const f32, pos_dev: *const u32,
            n_kv: u32, n_ctx: u32, n_split: u32, head_dim: u32, n_head: u32, defer: u32,
            y: *mut f32, rows: u32, add: *const f32, mode: u32,
        ) {
            gpu::pdl_trigger();
            let plan = [n_kv, n_ctx, n_split, head_dim, n_head, defer];
            // SAFETY: forwarded contract.
            unsafe { matvec_attn::<$t>(w, part, pos_dev, plan, y, rows, add, mode) }
        }
    )*};
}

matvec_attn_kernels! {
    matvec_attn_q4_0 => BlockQ4_0;
    matvec_attn_q4_1 => BlockQ4_1;
    matvec_attn_q5_0 => BlockQ5_0;
    matvec_attn_q5_1 => BlockQ5_1;
    matvec_attn_q8_0 => BlockQ8_0;
}

/// K-quants: one block (4 warps) per row; warp `w` takes super-blocks `w, w + 4, …`, all its
/// lanes on one; a block reduction sums the warps.
#[inline(always)]
unsafe fn matvec_kwarp<B: KWarp>(
    w: *const u8,
    x: *const f32,
    y: *mut f32,
    rows: u32,
    cols: u32,
    add: *const f32,
    mode: u32,
) {
    let row = gpu::block_x() as usize;
    if row >= rows as usize {
        return; // block-uniform: the barriers of block_sum are reached by all or none
    }
    let nb = cols as usize / 256;
    // SAFETY: row < rows: inside W.
    let wr = unsafe { w.add(row * nb * B::BYTES) };
    let lane = gpu::lane() as usize;
    let mut acc = 0.0f32;
    // SAFETY: row < rows; y (and add) hold rows floats.
    let epi = unsafe { Epilogue::new(y, row, add, mode) };
    let mut operand = 0.0f32;
    let mut b = gpu::warp() as usize;
    while b < nb {
        // Loads first, as in `matvec_legacy`.
        let ld = |u: usize| {
            let bb = (b + KWARP_WARPS * u).min(nb - 1);
            // SAFETY: bb < cols / 256: a whole super-block, 2-byte aligned.
            pin_raw(unsafe { B::load(wr.add(bb * B::BYTES), lane) })
        };
        let raw: [Raw; KWARP_UNROLL] = [ld(0), ld(1), ld(2), ld(3), ld(4)];
        gpu::pdl_wait(); // the weights' loads are out; now the activations
        if b < KWARP_WARPS {
            operand = epi.load();
        }
        let mut step = |u: usize| {
            let bb = b + KWARP_WARPS * u;
            if bb < nb {
                // SAFETY: x holds cols = 256 nb floats.
                acc += unsafe { B::dot_raw(raw[u], lane, x.add(256 * bb)) };
            }
        };
        step(0);
        step(1);
        step(2);
        step(3);
        step(4);
        b += KWARP_WARPS * KWARP_UNROLL;
    }
    gpu::pdl_wait();
    // SAFETY: row < rows; y (and add) as the kernel's contract.
    unsafe { store_block_sum(y, row, acc, operand, mode) };
}

macro_rules! matvec_kernels_with {
    ($f:ident: $($name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// Shapes as in the module header, validated by the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(
            w: *const u8, x: *const f32, y: *mut f32, rows: u32, cols: u32,
            add: *const f32, mode: u32,
        ) {
            gpu::pdl_trigger();
            // SAFETY: forwarded contract.
            unsafe { $f::<$t>(w, x, y, rows, cols, add, mode) }
        }
    )*};
}

matvec_kernels_with! { matvec_legacy:
    matvec_q4_0 => BlockQ4_0;
    matvec_q4_1 => BlockQ4_1;
    matvec_q5_0 => BlockQ5_0;
    matvec_q5_1 => BlockQ5_1;
    matvec_q8_0 => BlockQ8_0;
}

matvec_kernels_with! { matvec_kwarp:
    matvec_q4_k => BlockQ4K;
    matvec_q6_k => BlockQ6K;
}

macro_rules! matvec_kernels {
    ($($name:ident => $t:ty;)*) => {$(
        /// # Safety
        /// Shapes as in the module header, validated by the launcher.
        #[unsafe(no_mangle)]
        pub unsafe extern "ptx-kernel" fn $name(
            w: *const u8, x: *const f32, y: *mut f32, rows: u32, cols: u32,
            add: *const f32, mode: u32,
        ) {
            gpu::pdl_trigger();
            // SAFETY: forwarded contract.
            unsafe { matvec::<$t>(w, x, y, rows, cols, add, mode) }
        }
    )*};
}

matvec_kernels! {
    matvec_f32 => F32x32;
    matvec_f16 => F16x32;
    matvec_bf16 => Bf16x32;
    matvec_q2_k => BlockQ2K;
    matvec_q3_k => BlockQ3K;
    matvec_q5_k => BlockQ5K;
}
