//! Typed launchers, one per kernel, named after the kernel and its CPU reference
//! (`rms_norm` kernel ↔ [`rms_norm`] ↔ `cpu::rms_norm`). Each validates every buffer against the
//! shapes the kernel will index and returns `Result`; the kernels assume validated input. Work is
//! queued on the device's stream; nothing here synchronizes (except in sync-each-launch mode).

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchConfig};

use super::device::{Gpu, launch};
use super::error::CudaError;
use super::kernels::{
    dequant_kernel, matvec_a8_kernel, matvec_attn_kernel, matvec_kernel, matvec_qkv_kernel,
    matvec_swiglu_kernel, swiglu_a8_kernel,
};
use crate::gguf::GgmlType;
use crate::model::RopeStyle;
use kernels_gpu::shapes::{
    MATVEC_ACCUMULATE, MATVEC_ADD, MATVEC_STORE, PREFILL_BM, SMEM_DEFAULT_MAX, SWIGLU_A8_MAX_COLS,
    SWIGLU_A8_ROWS, SWIGLU_A8_WARPS, prefill_smem_bytes, stage_bytes, swiglu_a8_smem_bytes,
};

type Result<T> = std::result::Result<T, CudaError>;

fn shape_err(kernel: &'static str, problem: String) -> CudaError {
    CudaError::Shape { kernel, problem }
}

fn ensure(kernel: &'static str, ok: bool, problem: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(shape_err(kernel, problem()))
    }
}

fn to_u32(kernel: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| shape_err(kernel, format!("{what} = {v} does not fit in 32 bits")))
}

/// A 1-D grid of `threads`-wide blocks covering `n` items once (grid-stride kernels handle the
/// rest if the cap applies).
fn grid_1d(n: usize, threads: u32) -> LaunchConfig {
    let blocks = n.div_ceil(threads as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Where the forward takes its token position from: the host, or a u32 in device memory (a
/// decode step replayed from a CUDA graph reads its position there; the step's sampler advances
/// it). A device position cannot be checked on the host: [`attention_decode`], the one kernel
/// that takes one, clamps it to the cache.
#[derive(Clone, Copy)]
pub enum Pos<'a> {
    Host(usize),
    Device(&'a CudaView<'a, u32>),
}

/// `y = a * x + y` (the pipeline smoke test).
pub fn axpy(gpu: &Gpu, a: f32, x: &CudaView<f32>, y: &mut CudaViewMut<f32>) -> Result<()> {
    const K: &str = "axpy_f32";
    ensure(K, x.len() == y.len(), || {
        format!("x has {} elements, y {}", x.len(), y.len())
    })?;
    let n = to_u32(K, "n", x.len())?;
    launch!(gpu, K, grid_1d(x.len(), 256), &a, x, y, &n);
    Ok(())
}

/// RMSNorm of each row of `x` (rows of `w.len()`), into `out` (reference: `cpu::rms_norm`).
pub fn rms_norm(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    eps: f32,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    const K: &str = "rms_norm_f32";
    let (cfg, n32) = norm_launch(K, x, w, out.len(), 1)?;
    launch!(gpu, K, cfg, x, w, out, &n32, &eps);
    Ok(())
}

/// [`rms_norm`] written as the split-f16 activation operand of
/// [`super::gemm::GemmKind::F16x3`] (rows of `3n` halves, `[hi | lo | hi]`): the bits of
/// `rms_norm` followed by [`f32_to_f16x3`], in one launch.
pub fn rms_norm_f16x3(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    eps: f32,
    out: &mut CudaViewMut<u16>,
) -> Result<()> {
    const K: &str = "rms_norm_f16x3";
    let (cfg, n32) = norm_launch(K, x, w, out.len(), 3)?;
    launch!(gpu, K, cfg, x, w, out, &n32, &eps);
    Ok(())
}

/// The norm kernels' checks (`x` whole rows of `w.len()`, `out_len` = `per` × `x.len()`) and
/// launch: a block per row, a thread per element up to 1024 (one load each for the models'
/// widths: the norm is bound by the latency of its loads, not their number). Returns the launch
/// and the row length.
fn norm_launch(
    k: &'static str,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    out_len: usize,
    per: usize,
) -> Result<(LaunchConfig, u32)> {
    let n = w.len();
    ensure(k, n > 0 && x.len() % n == 0 && !x.is_empty(), || {
        format!("x has {} elements, not whole rows of {n}", x.len())
    })?;
    ensure(k, out_len == per * x.len(), || {
        format!("out has {out_len}, x {} ({per} x expected)", x.len())
    })?;
    let rows = to_u32(k, "rows", x.len() / n)?;
    ensure(k, rows < (1 << 31), || {
        format!("{rows} rows exceed the grid")
    })?;
    to_u32(k, "out", out_len)?;
    let cfg = LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (n.next_multiple_of(32).min(1024) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((cfg, to_u32(k, "n", n)?))
}

/// `dst += src`, `src` repeated over every row of `dst` when shorter (residual and bias add;
/// reference: `cpu::add`).
pub fn add(gpu: &Gpu, dst: &mut CudaViewMut<f32>, src: &CudaView<f32>) -> Result<()> {
    const K: &str = "add_f32";
    let m = src.len();
    ensure(K, m > 0 && dst.len() % m == 0, || {
        format!("dst has {} elements, not whole rows of src {m}", dst.len())
    })?;
    let n = to_u32(K, "n", dst.len())?;
    let m32 = to_u32(K, "m", m)?;
    let cfg = grid_1d(dst.len(), 256);
    launch!(gpu, K, cfg, dst, src, &n, &m32);
    Ok(())
}

/// `out = silu(gate) * up` (reference: `cpu::swiglu`).
pub fn swiglu(
    gpu: &Gpu,
    gate: &CudaView<f32>,
    up: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    const K: &str = "swiglu_f32";
    ensure(K, gate.len() == up.len() && out.len() == up.len(), || {
        format!(
            "gate {}, up {}, out {} differ",
            gate.len(),
            up.len(),
            out.len()
        )
    })?;
    let n = to_u32(K, "n", up.len())?;
    launch!(gpu, K, grid_1d(up.len(), 256), gate, up, out, &n);
    Ok(())
}

/// [`swiglu`] written as the split-f16 activation operand of [`super::gemm::GemmKind::F16x3`]
/// (rows of `k` → `3k` halves): the bits of `swiglu` followed by [`f32_to_f16x3`], in one launch.
pub fn swiglu_f16x3(
    gpu: &Gpu,
    gate: &CudaView<f32>,
    up: &CudaView<f32>,
    k: usize,
    out: &mut CudaViewMut<u16>,
) -> Result<()> {
    const K: &str = "swiglu_f16x3";
    ensure(
        K,
        gate.len() == up.len() && k > 0 && k.is_multiple_of(2) && up.len().is_multiple_of(k),
        || {
            format!(
                "gate {} / up {} are not the same rows of an even k = {k}",
                gate.len(),
                up.len()
            )
        },
    )?;
    ensure(K, out.len() == 3 * up.len(), || {
        format!("up {}, out {} (3 x expected)", up.len(), out.len())
    })?;
    let (ga, ua, oa) = (addr(gpu, gate), addr(gpu, up), addr(gpu, &*out));
    ensure(
        K,
        ga.is_multiple_of(8) && ua.is_multiple_of(8) && oa.is_multiple_of(4),
        || format!("gate at {ga:#x}, up at {ua:#x} (8-byte alignment needed), out at {oa:#x} (4)"),
    )?;
    let n = to_u32(K, "n", up.len())?;
    let (rows, k32) = (n / k as u32, k as u32);
    launch!(
        gpu,
        K,
        grid_1d(up.len() / 2, 256),
        gate,
        up,
        out,
        &rows,
        &k32
    );
    Ok(())
}

/// f32 → f16 (as bits), round to nearest even.
pub fn f32_to_f16(gpu: &Gpu, x: &CudaView<f32>, out: &mut CudaViewMut<u16>) -> Result<()> {
    const K: &str = "f32_to_f16";
    ensure(K, out.len() == x.len(), || {
        format!("x {}, out {}", x.len(), out.len())
    })?;
    let n = to_u32(K, "n", x.len())?;
    launch!(gpu, K, grid_1d(x.len(), 256), x, out, &n);
    Ok(())
}

/// `x` (`rows` rows of `k` floats) → the split-f16 activation operand of
/// [`super::gemm::GemmKind::F16x3`]: `rows` rows of `3k` f16, `[hi | lo | hi]` (see
/// `kernels-gpu/src/split.rs`).
pub fn f32_to_f16x3(
    gpu: &Gpu,
    x: &CudaView<f32>,
    k: usize,
    out: &mut CudaViewMut<u16>,
) -> Result<()> {
    const K: &str = "f32_to_f16x3";
    ensure(
        K,
        k > 0 && k.is_multiple_of(2) && x.len().is_multiple_of(k),
        || format!("x has {} elements, not rows of an even k = {k}", x.len()),
    )?;
    ensure(K, out.len() == 3 * x.len(), || {
        format!("x {}, out {} (3 x expected)", x.len(), out.len())
    })?;
    let (xa, oa) = (addr(gpu, x), addr(gpu, &*out));
    ensure(K, xa.is_multiple_of(8) && oa.is_multiple_of(4), || {
        format!("x at {xa:#x} (8-byte alignment needed), out at {oa:#x} (4)")
    })?;
    let n = to_u32(K, "n", x.len())?;
    let (rows, k32) = (n / k as u32, k as u32);
    launch!(gpu, K, grid_1d(x.len() / 2, 256), x, out, &rows, &k32);
    Ok(())
}

/// The cosines and sines RoPE turns by, for positions `0 .. n_pos`: `[pos][head_dim/2][cos, sin]`,
/// computed with the CPU reference's angle ([`crate::cpu::rope_angle`], f64) and rounded once.
pub struct RopeTable {
    pub data: CudaSlice<f32>,
    pub n_pos: usize,
    pub head_dim: usize,
    pub theta: f32,
}

impl RopeTable {
    pub fn new(gpu: &Gpu, n_pos: usize, head_dim: usize, theta: f32) -> Result<RopeTable> {
        let half = head_dim / 2;
        let mut t = Vec::with_capacity(n_pos * half * 2);
        for pos in 0..n_pos {
            for i in 0..half {
                let (s, c) = crate::cpu::rope_angle(pos, i, head_dim, theta).sin_cos();
                t.push(c as f32);
                t.push(s as f32);
            }
        }
        Ok(RopeTable {
            data: gpu.upload(&t, "the RoPE table")?,
            n_pos,
            head_dim,
            theta,
        })
    }
}

/// RoPE in place on `x` = `n_tok` rows of `n_head` heads, row `t` at position `pos0 + t`
/// (reference: `cpu::rope`); with `bias` (one row, `n_head * head_dim`) the bias is added first,
/// as [`add`] would.
pub fn rope(
    gpu: &Gpu,
    x: &mut CudaViewMut<f32>,
    bias: Option<&CudaView<f32>>,
    table: &RopeTable,
    n_head: usize,
    pos0: usize,
    style: RopeStyle,
) -> Result<()> {
    const K: &str = "rope_f32";
    let d = table.head_dim;
    let row = n_head * d;
    ensure(
        K,
        row > 0 && d.is_multiple_of(2) && x.len() % row == 0 && !x.is_empty(),
        || {
            format!(
                "x has {} elements, not rows of {n_head} heads x {d} (even)",
                x.len()
            )
        },
    )?;
    let n_tok = x.len() / row;
    if let Some(b) = bias {
        ensure(K, b.len() == row, || {
            format!("bias has {}, not one row of {row}", b.len())
        })?;
    }
    ensure(K, pos0 + n_tok <= table.n_pos, || {
        format!(
            "positions up to {} but the table covers {}",
            pos0 + n_tok,
            table.n_pos
        )
    })?;
    let pairs = n_tok * n_head * d / 2;
    let (n_tok32, nh, d32, p0) = (
        to_u32(K, "n_tok", n_tok)?,
        to_u32(K, "n_head", n_head)?,
        to_u32(K, "head_dim", d)?,
        to_u32(K, "pos0", pos0)?,
    );
    let neox: u32 = matches!(style, RopeStyle::Neox) as u32;
    let tv = table.data.as_view();
    // Without a bias the kernel's `bias` is (unread) the table, a valid pointer.
    let has_bias = bias.is_some() as u32;
    launch!(
        gpu,
        K,
        grid_1d(pairs, 256),
        x,
        bias.unwrap_or(&tv),
        &has_bias,
        &tv,
        &n_tok32,
        &nh,
        &d32,
        &p0,
        &neox
    );
    Ok(())
}

/// An element type of the KV cache: `u16` (f16 bits, the default) or `f32` (reference precision).
pub trait KvElem: cudarc::driver::DeviceRepr + Copy + Default + 'static {
    /// `kv_append_*`, `attention_decode_*`, `attention_prefill_*` for this element type.
    const KERNELS: (&'static str, &'static str, &'static str);
    /// The tensor-core prefill kernel for this cache type ([`attention_prefill_mma`]), if any.
    const PREFILL_MMA: Option<&'static str>;
}

impl KvElem for u16 {
    const KERNELS: (&'static str, &'static str, &'static str) = (
        "kv_append_f16",
        "attention_decode_f16",
        "attention_prefill_f16",
    );
    const PREFILL_MMA: Option<&'static str> = Some("attention_prefill_mma_f16");
}

impl KvElem for f32 {
    const KERNELS: (&'static str, &'static str, &'static str) = (
        "kv_append_f32",
        "attention_decode_f32",
        "attention_prefill_f32",
    );
    const PREFILL_MMA: Option<&'static str> = None;
}

/// One layer's KV cache: `[n_head_kv][n_ctx][head_dim]` for keys and for values, of f16 bits
/// (`T = u16`) or f32.
pub struct KvLayer<T: KvElem = u16> {
    pub k: CudaSlice<T>,
    pub v: CudaSlice<T>,
}

/// Shape of every layer of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ctx: usize,
}

impl KvShape {
    /// Elements per layer and per K or V.
    pub fn elems(&self) -> usize {
        self.n_head_kv * self.n_ctx * self.head_dim
    }
}

impl<T: KvElem> KvLayer<T> {
    pub fn new(gpu: &Gpu, s: KvShape) -> Result<KvLayer<T>> {
        Ok(KvLayer {
            k: gpu.alloc::<T>(s.elems(), "the KV cache")?,
            v: gpu.alloc::<T>(s.elems(), "the KV cache")?,
        })
    }

    fn check(&self, kernel: &'static str, s: KvShape) -> Result<()> {
        ensure(
            kernel,
            self.k.len() >= s.elems() && self.v.len() >= s.elems(),
            || {
                format!(
                    "cache holds {}/{} elements, {} needed for {s:?}",
                    self.k.len(),
                    self.v.len(),
                    s.elems()
                )
            },
        )
    }
}

/// Writes `n_tok` rows of keys and values (`n_head_kv * head_dim` f32 each) at positions
/// `pos0 ..` of the cache (rounded to f16 for an f16 cache); with `v_bias` (one row) the values'
/// bias is added first, as [`add`] would.
pub fn kv_append<T: KvElem>(
    gpu: &Gpu,
    k: &CudaView<f32>,
    v: &CudaView<f32>,
    v_bias: Option<&CudaView<f32>>,
    cache: &mut KvLayer<T>,
    s: KvShape,
    pos0: usize,
) -> Result<()> {
    let kname = T::KERNELS.0;
    cache.check(kname, s)?;
    let row = s.n_head_kv * s.head_dim;
    ensure(
        kname,
        row > 0 && k.len() == v.len() && k.len().is_multiple_of(row) && !k.is_empty(),
        || format!("k {} / v {} are not rows of {row}", k.len(), v.len()),
    )?;
    let n_tok = k.len() / row;
    if let Some(b) = v_bias {
        ensure(kname, b.len() == row, || {
            format!("v bias has {}, not one row of {row}", b.len())
        })?;
    }
    ensure(kname, pos0 + n_tok <= s.n_ctx, || {
        format!(
            "positions {pos0}..{} exceed the cache's {}",
            pos0 + n_tok,
            s.n_ctx
        )
    })?;
    let args = (
        to_u32(kname, "pos0", pos0)?,
        to_u32(kname, "n_tok", n_tok)?,
        to_u32(kname, "n_head_kv", s.n_head_kv)?,
        to_u32(kname, "head_dim", s.head_dim)?,
        to_u32(kname, "n_ctx", s.n_ctx)?,
    );
    let (mut kc, mut vc) = (cache.k.as_view_mut(), cache.v.as_view_mut());
    // Without a bias the kernel's `v_bias` is (unread) `k`, a valid pointer.
    let has_bias = v_bias.is_some() as u32;
    launch!(
        gpu,
        kname,
        grid_1d(k.len(), 256),
        k,
        v,
        v_bias.unwrap_or(k),
        &has_bias,
        &mut kc,
        &mut vc,
        &args.0,
        &args.1,
        &args.2,
        &args.3,
        &args.4
    );
    Ok(())
}

fn check_heads(kernel: &'static str, n_head: usize, s: KvShape) -> Result<usize> {
    ensure(
        kernel,
        s.head_dim.is_multiple_of(32) && (32..=128).contains(&s.head_dim),
        || {
            format!(
                "head_dim {} must be a multiple of 32, at most 128",
                s.head_dim
            )
        },
    )?;
    ensure(
        kernel,
        s.n_head_kv > 0 && n_head.is_multiple_of(s.n_head_kv),
        || format!("{} KV heads do not divide {n_head} heads", s.n_head_kv),
    )?;
    Ok(n_head / s.n_head_kv)
}

/// Most positions per split of decode attention (the shared-memory score buffer).
pub const DECODE_CHUNK: usize = kernels_gpu::shapes::DECODE_CHUNK;

/// Splits of decode attention for a cache of `n_ctx` positions and heads of `head_dim`: one per
/// `DECODE_MIN_CHUNK` positions, at most `shapes::decode_max_splits(head_dim)` (so that a split
/// holds at most `DECODE_MIN_CHUNK` positions up to that many times `DECODE_MIN_CHUNK`, and at
/// most [`DECODE_CHUNK`] up to [`decode_max_ctx`]). Many splits keep many blocks busy at long
/// contexts; the kernel uses only as many as hold `DECODE_MIN_CHUNK` positions each.
pub fn decode_splits(n_ctx: usize, head_dim: usize) -> usize {
    n_ctx
        .div_ceil(kernels_gpu::shapes::DECODE_MIN_CHUNK)
        .clamp(1, kernels_gpu::shapes::decode_max_splits(head_dim))
}

/// The longest context decode attention takes for heads of `head_dim`.
pub fn decode_max_ctx(head_dim: usize) -> usize {
    DECODE_CHUNK * kernels_gpu::shapes::decode_max_splits(head_dim)
}

/// Whether a decode over `n_kv` positions of an `n_ctx` cache may leave the combine of its
/// attention's splits to the output projection ([`attention_decode`] with `defer`, then
/// [`matvec_attn`]): it uses at most `DECODE_DEFER_SPLITS` splits, as the kernels plan it.
pub fn decode_defers(n_kv: usize, n_ctx: usize, head_dim: usize) -> bool {
    let n_split = decode_splits(n_ctx, head_dim) as u32;
    let (_, n_used) = kernels_gpu::shapes::decode_plan(n_kv.clamp(1, n_ctx) as u32, n_split);
    n_used as usize <= kernels_gpu::shapes::DECODE_DEFER_SPLITS
}

/// Scratch of decode attention for contexts up to `n_ctx`: the per-split partials
/// (`n_head * n_split * (head_dim + 2)` floats).
pub struct DecodeScratch {
    pub part: CudaSlice<f32>,
    n_head: usize,
    head_dim: usize,
    n_ctx: usize,
    /// The plan of the last [`attention_decode`] queued with this scratch, which
    /// [`matvec_attn`] reads its partials by: `[n_kv, n_ctx, n_split, head_dim, n_head, defer]`
    /// and the device position's address (0: none).
    last: Option<([u32; 6], u64)>,
}

impl DecodeScratch {
    pub fn new(gpu: &Gpu, n_head: usize, head_dim: usize, n_ctx: usize) -> Result<DecodeScratch> {
        let part = gpu.alloc::<f32>(
            n_head * decode_splits(n_ctx, head_dim) * (head_dim + 2),
            "attention partials",
        )?;
        Ok(DecodeScratch {
            part,
            n_head,
            head_dim,
            n_ctx,
            last: None,
        })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.part.len()
    }
}

/// Which keys one decode query attends to.
#[derive(Clone, Copy)]
pub enum DecodeAt<'a> {
    /// Cache positions `0 .. n_kv` (the query sits at `n_kv − 1`).
    Kv(usize),
    /// The query sits at the position in device memory: positions `0 ..= *pos`, clamped to the
    /// cache (a decode step replayed from a CUDA graph).
    Device(&'a CudaView<'a, u32>),
}

/// The new token's projections for [`attention_decode`], before RoPE.
#[derive(Clone, Copy)]
pub struct NewToken<'a> {
    /// `n_head * head_dim` query values.
    pub q: &'a CudaView<'a, f32>,
    /// `n_head_kv * head_dim` key values.
    pub k: &'a CudaView<'a, f32>,
    /// `n_head_kv * head_dim` values.
    pub v: &'a CudaView<'a, f32>,
    pub rope: &'a RopeTable,
    pub style: RopeStyle,
}

/// Decode step of one layer (reference: `cpu::rope` on q and k, the KV append, then
/// `cpu::attention` with one query): RoPE on the new token's query and key at its position
/// (`at`), its key and value written to the cache there, and its attention over the cache
/// positions up to it. One launch: the context is split across blocks, each leaving its partial
/// in `scratch`; with one split and no `defer` the block writes `out` itself. The partials are
/// combined by [`attention_combine`] (launched next, into `out`), or with `defer` by the output
/// projection, which must then be [`matvec_attn`] (it reads the plan recorded in `scratch`):
/// `defer` is for positions that need at most `DECODE_DEFER_SPLITS` splits
/// ([`decode_defers`]) — checked here for a host position; a device position must be one (the
/// backend replays the graph captured with `defer` only at those).
#[allow(clippy::too_many_arguments)]
pub fn attention_decode<T: KvElem>(
    gpu: &Gpu,
    tok: NewToken,
    cache: &mut KvLayer<T>,
    s: KvShape,
    n_head: usize,
    at: DecodeAt,
    scratch: &mut DecodeScratch,
    out: &mut CudaViewMut<f32>,
    defer: bool,
) -> Result<()> {
    let kname: &'static str = T::KERNELS.1;
    cache.check(kname, s)?;
    let group = check_heads(kname, n_head, s)?;
    let d = s.head_dim;
    let q = tok.q;
    ensure(kname, q.len() == n_head * d && out.len() == q.len(), || {
        format!("q {} / out {} must be {n_head} x {d}", q.len(), out.len())
    })?;
    let kvd = s.n_head_kv * d;
    ensure(kname, tok.k.len() == kvd && tok.v.len() == kvd, || {
        format!(
            "new k {} / v {} must be {} x {d}",
            tok.k.len(),
            tok.v.len(),
            s.n_head_kv
        )
    })?;
    ensure(kname, tok.rope.head_dim == d, || {
        format!(
            "the RoPE table is for head_dim {}, not {d}",
            tok.rope.head_dim
        )
    })?;
    let (n_kv, pdev) = match at {
        DecodeAt::Kv(n_kv) => {
            ensure(kname, n_kv >= 1 && n_kv <= s.n_ctx, || {
                format!("n_kv {n_kv} must be in 1..={}", s.n_ctx)
            })?;
            ensure(kname, n_kv <= tok.rope.n_pos, || {
                format!(
                    "position {} is past the RoPE table's {}",
                    n_kv - 1,
                    tok.rope.n_pos
                )
            })?;
            ensure(kname, !defer || decode_defers(n_kv, s.n_ctx, d), || {
                format!(
                    "{n_kv} positions need more than {} splits: the output projection cannot combine them (defer)",
                    kernels_gpu::shapes::DECODE_DEFER_SPLITS
                )
            })?;
            (n_kv, 0u64)
        }
        DecodeAt::Device(p) => {
            ensure(kname, !p.is_empty(), || "empty position buffer".into())?;
            (0, addr(gpu, p))
        }
    };
    // Splits sized for the whole cache in both modes, so a host-position launch and a replayed
    // graph step do the same arithmetic, bit for bit (splits past n_kv are empty and cheap).
    let bound = s.n_ctx;
    ensure(
        kname,
        scratch.n_head == n_head && scratch.head_dim == d && scratch.n_ctx >= bound,
        || {
            format!(
                "scratch made for {} heads x {} up to {} positions; {n_head} x {d} up to {bound} needed",
                scratch.n_head, scratch.head_dim, scratch.n_ctx
            )
        },
    )?;
    let n_split = decode_splits(bound, d);
    ensure(kname, d.is_power_of_two(), || {
        format!("head_dim {d}: decode attention takes 32, 64 or 128")
    })?;
    ensure(kname, s.n_ctx <= decode_max_ctx(d), || {
        format!(
            "a {}-position cache is longer than decode attention takes at head_dim {d} ({} positions)",
            s.n_ctx,
            decode_max_ctx(d)
        )
    })?;
    ensure(
        kname,
        group <= kernels_gpu::shapes::DECODE_MAX_GROUP,
        || {
            format!(
                "{group} query heads per KV head; at most {} supported",
                kernels_gpu::shapes::DECODE_MAX_GROUP
            )
        },
    )?;
    let smem = 4 * kernels_gpu::shapes::decode_smem_layout(group, d)[7];
    let args = (
        to_u32(kname, "n_kv", n_kv)?,
        to_u32(kname, "n_ctx", s.n_ctx)?,
        to_u32(kname, "n_pos", tok.rope.n_pos)?,
        d as u32,
        group as u32,
        matches!(tok.style, RopeStyle::Neox) as u32,
        1.0 / (d as f32).sqrt(),
        if defer {
            kernels_gpu::shapes::DECODE_DEFER_SPLITS as u32
        } else {
            0
        },
    );
    scratch.last = Some((
        [
            args.0,
            args.1,
            n_split as u32,
            args.3,
            to_u32(kname, "n_head", n_head)?,
            args.7,
        ],
        pdev,
    ));
    let cfg = LaunchConfig {
        grid_dim: (
            to_u32(kname, "n_head_kv", s.n_head_kv)?,
            to_u32(kname, "n_split", n_split)?,
            1,
        ),
        block_dim: (kernels_gpu::shapes::DECODE_THREADS as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let (mut kc, mut vc) = (cache.k.as_view_mut(), cache.v.as_view_mut());
    let table = tok.rope.data.as_view();
    // The kernel's idle load slots read the table as a dummy row (16-byte vector loads).
    ensure(kname, addr(gpu, &table).is_multiple_of(16), || {
        "the RoPE table must be 16-byte aligned".into()
    })?;
    let mut part = scratch.part.as_view_mut();
    launch!(
        gpu, kname, cfg, q, tok.k, tok.v, &mut kc, &mut vc, &table, &mut part, out, &args.0, &pdev,
        &args.1, &args.2, &args.3, &args.4, &args.5, &args.6, &args.7
    );
    Ok(())
}

/// The output of the [`attention_decode`] last queued with `scratch` (without `defer`) from its
/// splits' partials, into `out` (`n_head · head_dim`): nothing to do when the position used one
/// split (the attention wrote `out`). Decided on the device from the same position, by the plan
/// the attention recorded.
pub fn attention_combine(
    gpu: &Gpu,
    scratch: &DecodeScratch,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    const K: &str = "attention_combine";
    let (plan, pdev) = scratch.last.ok_or_else(|| CudaError::Shape {
        kernel: K,
        problem: "no decode attention was queued with this scratch".into(),
    })?;
    let [n_kv, n_ctx, n_split, head_dim, n_head, defer] = plan;
    ensure(K, defer == 0, || {
        "the attention left its partials to the output projection (defer)".into()
    })?;
    ensure(K, out.len() == (n_head * head_dim) as usize, || {
        format!("out {} must be {n_head} x {head_dim}", out.len())
    })?;
    let cfg = LaunchConfig {
        grid_dim: (
            n_head * kernels_gpu::shapes::COMBINE_HEAD_BLOCKS as u32,
            1,
            1,
        ),
        block_dim: (kernels_gpu::shapes::COMBINE_THREADS as u32, 1, 1),
        shared_mem_bytes: kernels_gpu::shapes::COMBINE_SMEM_BYTES as u32,
    };
    let part = scratch.part.as_view();
    launch!(
        gpu, K, cfg, &part, &pdev, &n_kv, &n_ctx, &n_split, &head_dim, out
    );
    Ok(())
}

/// Whether [`matvec_attn`] serves an output projection of this type (the legacy 32-element
/// block types).
pub fn matvec_attn_supported(wo: &DeviceTensor) -> bool {
    matvec_attn_kernel(wo.ty).is_some()
}

/// The attention's output projection added into the residual, `resid += Wo · attn`, after an
/// [`attention_decode`] queued with the same `scratch` and `defer` (a short context): the kernel
/// combines the attention's partials as it reads its activations (the attention's own combine,
/// `kernels-gpu/src/matvec.rs`), with the plan the attention recorded. After an attention that
/// combined its splits itself ([`attention_combine`]), the projection is a plain
/// [`matvec_with`] of its output.
pub fn matvec_attn(
    gpu: &Gpu,
    wo: &DeviceTensor,
    scratch: &DecodeScratch,
    resid: &mut CudaViewMut<f32>,
) -> Result<()> {
    let k = matvec_attn_kernel(wo.ty).ok_or_else(|| CudaError::Shape {
        kernel: "matvec_attn",
        problem: format!("{}: no matvec_attn kernel for {:?}", wo.name, wo.ty),
    })?;
    let (plan, pdev) = scratch.last.ok_or_else(|| CudaError::Shape {
        kernel: k,
        problem: "no decode attention was queued with this scratch".into(),
    })?;
    let cols = scratch.n_head * scratch.head_dim;
    ensure(k, wo.cols == cols && resid.len() == wo.rows, || {
        format!(
            "{}: resid {} for a {} x {} matrix after attention over {} heads x {}",
            wo.name,
            resid.len(),
            wo.rows,
            wo.cols,
            scratch.n_head,
            scratch.head_dim
        )
    })?;
    let rows = to_u32(k, "rows", wo.rows)?;
    let cfg = LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (32 * kernels_gpu::shapes::MATVEC_KWARP_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (wv, part) = (wo.data.as_view(), scratch.part.as_view());
    let [n_kv, n_ctx, n_split, head_dim, n_head, defer] = plan;
    ensure(k, defer > 0, || {
        "the attention was not launched with defer: its output is projected by matvec_with".into()
    })?;
    let mode = MATVEC_ACCUMULATE; // `add` unread (the partials stand in for it)
    launch!(
        gpu, k, cfg, &wv, &part, &pdev, &n_kv, &n_ctx, &n_split, &head_dim, &n_head, &defer, resid,
        &rows, &part, &mode
    );
    Ok(())
}

/// Causal prefill attention: `q` = `n_tok` rows of `n_head * head_dim` at positions
/// `pos0 .. pos0 + n_tok`, against cache positions `0 ..= pos0 + i` (reference: `cpu::attention`),
/// on the CUDA cores in f32 (`attention_prefill_{f16,f32}`).
pub fn attention_prefill<T: KvElem>(
    gpu: &Gpu,
    q: &CudaView<f32>,
    cache: &KvLayer<T>,
    s: KvShape,
    n_head: usize,
    pos0: usize,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    let kname: &'static str = T::KERNELS.2;
    let args = prefill_args(gpu, kname, q, cache, s, n_head, pos0, out)?;
    // kernels-gpu/src/attention.rs: a block of 128 threads per 32 query rows of one head.
    let cfg = LaunchConfig {
        grid_dim: (args.0.div_ceil(PREFILL_BM as u32), n_head as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: prefill_smem_bytes(s.head_dim) as u32,
    };
    launch_prefill(gpu, kname, cfg, q, cache, out, args)
}

/// [`attention_prefill`] on the tensor cores (`attention_prefill_mma_f16`: split-f16 operands,
/// f32 accumulation, about f32 accuracy; kernels-gpu/src/attention_mma.rs), for the caches that
/// have such a kernel ([`KvElem::PREFILL_MMA`]: the f16 cache).
pub fn attention_prefill_mma<T: KvElem>(
    gpu: &Gpu,
    q: &CudaView<f32>,
    cache: &KvLayer<T>,
    s: KvShape,
    n_head: usize,
    pos0: usize,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    let Some(kname) = T::PREFILL_MMA else {
        return Err(shape_err(
            T::KERNELS.2,
            "the tensor-core prefill takes an f16 cache only".into(),
        ));
    };
    let args = prefill_args(gpu, kname, q, cache, s, n_head, pos0, out)?;
    // The kernel's 16-byte loads of cache rows.
    let (ka, va) = (addr(gpu, &cache.k), addr(gpu, &cache.v));
    ensure(
        kname,
        ka.is_multiple_of(16) && va.is_multiple_of(16),
        || format!("the cache at {ka:#x} / {va:#x} is not 16-byte aligned"),
    )?;
    // kernels-gpu/src/attention_mma.rs: a block per 16 · PREFILL_MMA_ROW_WARPS query rows of
    // one head.
    use kernels_gpu::shapes::{PREFILL_MMA_ROW_WARPS, PREFILL_MMA_THREADS};
    let cfg = LaunchConfig {
        grid_dim: (
            args.0.div_ceil(16 * PREFILL_MMA_ROW_WARPS as u32),
            n_head as u32,
            1,
        ),
        block_dim: (PREFILL_MMA_THREADS as u32, 1, 1),
        shared_mem_bytes: kernels_gpu::shapes::prefill_mma_smem_bytes(s.head_dim) as u32,
    };
    launch_prefill(gpu, kname, cfg, q, cache, out, args)
}

/// Launches a prefill kernel (both take the same arguments).
fn launch_prefill<T: KvElem>(
    gpu: &Gpu,
    kname: &'static str,
    cfg: LaunchConfig,
    q: &CudaView<f32>,
    cache: &KvLayer<T>,
    out: &mut CudaViewMut<f32>,
    args: (u32, u32, u32, u32, u32, u32, f32),
) -> Result<()> {
    let (kc, vc) = (cache.k.as_view(), cache.v.as_view());
    launch!(
        gpu, kname, cfg, q, &kc, &vc, out, &args.0, &args.1, &args.2, &args.3, &args.4, &args.5,
        &args.6
    );
    Ok(())
}

/// The prefill kernels' checks and arguments: `(n_tok, pos0, n_ctx, n_head, head_dim, group,
/// scale)`.
#[allow(clippy::too_many_arguments)]
fn prefill_args<T: KvElem>(
    gpu: &Gpu,
    kname: &'static str,
    q: &CudaView<f32>,
    cache: &KvLayer<T>,
    s: KvShape,
    n_head: usize,
    pos0: usize,
    out: &CudaViewMut<f32>,
) -> Result<(u32, u32, u32, u32, u32, u32, f32)> {
    cache.check(kname, s)?;
    let group = check_heads(kname, n_head, s)?;
    let d = s.head_dim;
    let row = n_head * d;
    ensure(
        kname,
        !q.is_empty() && q.len() % row == 0 && out.len() == q.len(),
        || {
            format!(
                "q {} / out {} are not rows of {n_head} x {d}",
                q.len(),
                out.len()
            )
        },
    )?;
    let n_tok = q.len() / row;
    ensure(kname, pos0 + n_tok <= s.n_ctx, || {
        format!(
            "positions up to {} exceed the cache's {}",
            pos0 + n_tok,
            s.n_ctx
        )
    })?;
    // The kernels' 16-byte (8-byte) loads of q and stores of out.
    let (qa, oa) = (addr(gpu, q), addr(gpu, out));
    ensure(
        kname,
        qa.is_multiple_of(16) && oa.is_multiple_of(16),
        || format!("q at {qa:#x} / out at {oa:#x} are not 16-byte aligned"),
    )?;
    Ok((
        to_u32(kname, "n_tok", n_tok)?,
        to_u32(kname, "pos0", pos0)?,
        to_u32(kname, "n_ctx", s.n_ctx)?,
        to_u32(kname, "n_head", n_head)?,
        d as u32,
        group as u32,
        1.0 / (d as f32).sqrt(),
    ))
}

/// Rows per block of the legacy-type matvec kernels (a warp each).
const MATVEC_ROWS: usize = kernels_gpu::shapes::MATVEC_ROWS_PER_BLOCK;

/// A weight matrix on the device in its GGUF blocks: `rows` rows of `cols` elements, in an
/// allocation of its own ([`DeviceTensor::upload`] checks it is 16-byte aligned: the Q4_K
/// kernels load super-block headers 16 bytes at a time, `matvec_dot::BlockQ4K`).
pub struct DeviceTensor {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<u8>,
}

impl DeviceTensor {
    /// Uploads `bytes` (the tensor's data as in the file) as a `rows x cols` matrix.
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<DeviceTensor> {
        let unsupported = || CudaError::UnsupportedType {
            tensor: name.into(),
            ggml_type: ty.name().into(),
        };
        let row_bytes = ty.row_bytes(cols).ok_or_else(unsupported)?;
        if !cols.is_multiple_of(32) || !cols.is_multiple_of(ty.block_size()) {
            return Err(shape_err(
                "upload",
                format!("tensor {name:?}: rows of {cols} are not whole 32-element pieces"),
            ));
        }
        if bytes.len() != rows * row_bytes {
            return Err(shape_err(
                "upload",
                format!(
                    "tensor {name:?}: {} bytes, {rows} rows of {row_bytes} expected",
                    bytes.len()
                ),
            ));
        }
        // Padded to whole 16-byte words: the kernels that stage rows through shared memory
        // (`gpu::stage`) copy the 16-byte-aligned words that cover a row, up to 15 bytes past
        // the last row's end.
        let data = if bytes.len().is_multiple_of(16) {
            gpu.upload(bytes, &format!("tensor {name}"))?
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(16), 0);
            gpu.upload(&padded, &format!("tensor {name}"))?
        };
        let at = addr(gpu, &data);
        ensure("upload", at.is_multiple_of(16), || {
            format!("tensor {name:?}: device allocation at {at:#x} is not 16-byte aligned")
        })?;
        Ok(DeviceTensor {
            name: name.into(),
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).unwrap_or(0)
    }
}

/// What [`matvec_with`] does with `W x` (kernels-gpu/src/matvec.rs, `mode`).
#[derive(Clone, Copy)]
pub enum MatvecOut<'a, 'b> {
    /// `y = W x`.
    Store,
    /// `y = W x + bias` (`bias` has `rows` elements).
    Bias(&'a CudaView<'b, f32>),
    /// `y += W x` (a residual), with the same f32 additions as a separate [`add`].
    Accumulate,
}

/// Dynamic shared memory for [`matvec_a8`] over `w`: room to stage one row
/// (`kernels-gpu/src/matvec.rs` `stage_row`) when it fits a launch's default 48 KB, else 0 (the
/// kernel then reads the row in place).
fn row_stage_smem(w: &DeviceTensor) -> u32 {
    match w.ty.row_bytes(w.cols).map(stage_bytes) {
        Some(b) if b <= SMEM_DEFAULT_MAX => b as u32,
        _ => 0,
    }
}

/// `y = W x` for one vector `x` (`cols`), `y` (`rows`), reading `W` in its blocks.
pub fn matvec(
    gpu: &Gpu,
    w: &DeviceTensor,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
) -> Result<()> {
    matvec_with(gpu, w, x, y, MatvecOut::Store)
}

/// [`matvec`] with a bias added or the result added into `y` in the same launch.
/// The matvec kernels read the activations in 16-byte vectors (`kernels-gpu/src/matvec_dot.rs`).
fn x_aligned(gpu: &Gpu, k: &'static str, name: &str, x: &CudaView<f32>) -> Result<()> {
    let a = addr(gpu, x);
    ensure(k, a.is_multiple_of(16), || {
        format!("{name}: activations at {a:#x} are not 16-byte aligned")
    })
}

pub fn matvec_with(
    gpu: &Gpu,
    w: &DeviceTensor,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    out: MatvecOut,
) -> Result<()> {
    let k = matvec_kernel(w.ty);
    ensure(k, x.len() == w.cols && y.len() == w.rows, || {
        format!(
            "{}: x {} / y {} for a {} x {} matrix",
            w.name,
            x.len(),
            y.len(),
            w.rows,
            w.cols
        )
    })?;
    x_aligned(gpu, k, &w.name, x)?;
    let (rows, cols) = (to_u32(k, "rows", w.rows)?, to_u32(k, "cols", w.cols)?);
    // kernels-gpu/src/matvec.rs: the legacy types, Q4_K and Q6_K run one row per block of
    // MATVEC_KWARP_WARPS warps, the others a warp per row, MATVEC_ROWS_PER_BLOCK rows per block.
    let block_per_row = matches!(
        w.ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q6K
    );
    let (rows_per_block, threads) = if block_per_row {
        (1, 32 * kernels_gpu::shapes::MATVEC_KWARP_WARPS as u32)
    } else {
        (MATVEC_ROWS, 32 * MATVEC_ROWS as u32)
    };
    let cfg = LaunchConfig {
        grid_dim: (w.rows.div_ceil(rows_per_block) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let wv = w.data.as_view();
    // The kernel's `add` argument: the bias, or (unread) `x` as a valid pointer.
    let (add, mode) = match out {
        MatvecOut::Store => (x, MATVEC_STORE),
        MatvecOut::Bias(b) => {
            ensure(k, b.len() == w.rows, || {
                format!("{}: bias {} for {} rows", w.name, b.len(), w.rows)
            })?;
            (b, MATVEC_ADD)
        }
        MatvecOut::Accumulate => (x, MATVEC_ACCUMULATE),
    };
    launch!(gpu, k, cfg, &wv, x, y, &rows, &cols, add, &mode);
    Ok(())
}

/// Whether [`matvec_swiglu`] serves gate and up matrices of these types and shapes.
pub fn matvec_swiglu_supported(gate: &DeviceTensor, up: &DeviceTensor) -> bool {
    gate.ty == up.ty
        && gate.rows == up.rows
        && gate.cols == up.cols
        && matvec_swiglu_kernel(gate.ty).is_some()
}

/// The input of a fused launch that applies RMSNorm first: the residual stream row `x`, the
/// norm's weight and epsilon (`xn = x / sqrt(mean(x²) + eps) ∘ weight`, as [`rms_norm`]).
#[derive(Clone, Copy)]
pub struct NormedInput<'a, 'b> {
    /// The un-normalized row (`cols` floats).
    pub x: &'a CudaView<'b, f32>,
    /// The norm's weight (`cols` floats).
    pub weight: &'a CudaView<'b, f32>,
    pub eps: f32,
}

/// Checks a [`NormedInput`] for a matrix of `cols` columns (named `name`): lengths and the
/// 16-byte alignment of both vectors.
fn normed_input_ok(
    gpu: &Gpu,
    k: &'static str,
    name: &str,
    inp: &NormedInput,
    cols: usize,
) -> Result<()> {
    ensure(k, inp.x.len() == cols && inp.weight.len() == cols, || {
        format!(
            "{name}: x {} / norm weight {} for {cols} columns",
            inp.x.len(),
            inp.weight.len()
        )
    })?;
    x_aligned(gpu, k, name, inp.x)?;
    x_aligned(gpu, k, name, inp.weight)
}

/// The input and output of a fused gate/up launch (`matvec_swiglu`, `swiglu_a8`): the normed
/// input for the gate's columns ([`normed_input_ok`]) and one `h` value per gate row.
fn gate_up_io_ok(
    gpu: &Gpu,
    k: &'static str,
    gate: &DeviceTensor,
    inp: &NormedInput,
    h: &CudaViewMut<f32>,
) -> Result<()> {
    normed_input_ok(gpu, k, &gate.name, inp, gate.cols)?;
    ensure(k, h.len() == gate.rows, || {
        format!("{}: h {} for {} rows", gate.name, h.len(), gate.rows)
    })
}

/// `h = silu(Wg xn) · (Wu xn)` with `xn` the RMSNorm of `inp` (see [`NormedInput`]), in one
/// launch: the FFN norm, gate, up and SwiGLU. Legacy block types only (see
/// [`matvec_swiglu_supported`]).
pub fn matvec_swiglu(
    gpu: &Gpu,
    gate: &DeviceTensor,
    up: &DeviceTensor,
    inp: NormedInput,
    h: &mut CudaViewMut<f32>,
) -> Result<()> {
    const K: &str = "matvec_swiglu";
    let Some(k) = matvec_swiglu_kernel(gate.ty) else {
        return Err(shape_err(
            K,
            format!("{}: no fused gate/up kernel for {}", gate.name, gate.ty),
        ));
    };
    ensure(k, matvec_swiglu_supported(gate, up), || {
        format!(
            "{} ({} {} x {}) and {} ({} {} x {}) differ",
            gate.name, gate.ty, gate.rows, gate.cols, up.name, up.ty, up.rows, up.cols
        )
    })?;
    gate_up_io_ok(gpu, k, gate, &inp, h)?;
    let (rows, cols) = (to_u32(k, "rows", gate.rows)?, to_u32(k, "cols", gate.cols)?);
    let cfg = LaunchConfig {
        grid_dim: (gate.rows.div_ceil(MATVEC_ROWS) as u32, 1, 1),
        block_dim: (32 * MATVEC_ROWS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (gv, uv) = (gate.data.as_view(), up.data.as_view());
    let (x, g, eps) = (inp.x, inp.weight, inp.eps);
    launch!(gpu, k, cfg, &gv, &uv, x, g, &eps, h, &rows, &cols);
    Ok(())
}

/// An activation vector quantized to 8 bits on the device (`kernels-gpu/src/q8_act.rs`, the
/// CPU's `quant::Q8Blocks`): `n` quants (i8, as bytes) and `n / 32` `[d, s]` pairs.
#[derive(Clone, Copy)]
pub struct A8<'a, 'b> {
    pub qs: &'a CudaView<'b, u8>,
    pub ds: &'a CudaView<'b, f32>,
}

/// A destination for an [`A8`] vector.
pub struct A8Mut<'a, 'b> {
    pub qs: &'a mut CudaViewMut<'b, u8>,
    pub ds: &'a mut CudaViewMut<'b, f32>,
}

/// Checks an 8-bit activation vector of `n` elements (named `name`): lengths and alignment
/// (`qs` 16 bytes, `ds` 8).
fn a8_ok(
    k: &'static str,
    name: &str,
    (qs, ds): (u64, u64),
    (n_qs, n_ds): (usize, usize),
    n: usize,
) -> Result<()> {
    ensure(
        k,
        n.is_multiple_of(32) && n_qs == n && n_ds == n / 16,
        || {
            format!(
                "{name}: 8-bit activations of {n_qs} quants and {n_ds} scale floats for {n} elements (want {n} and {})",
                n / 16
            )
        },
    )?;
    ensure(k, qs.is_multiple_of(16) && ds.is_multiple_of(8), || {
        format!(
            "{name}: 8-bit activations at {qs:#x} / scales at {ds:#x} are not 16- / 8-byte aligned"
        )
    })
}

/// Whether [`swiglu_a8`] runs this gate/up pair: one legacy type, the same shape, rows and
/// columns multiples of 32, at most `SWIGLU_A8_MAX_COLS` columns.
pub fn swiglu_a8_supported(gate: &DeviceTensor, up: &DeviceTensor) -> bool {
    gate.ty == up.ty
        && gate.rows == up.rows
        && gate.cols == up.cols
        && gate.rows.is_multiple_of(SWIGLU_A8_ROWS)
        && gate.cols.is_multiple_of(32)
        && gate.cols <= SWIGLU_A8_MAX_COLS
        && swiglu_a8_kernel(gate.ty).is_some()
}

/// `h = silu(Wg x̂) · (Wu x̂)` with `x̂` the RMSNorm of `inp` quantized to 8 bits (as the CPU's
/// `Q8Blocks`), integer dot products, in one launch; `h` is also written quantized (`hq`, the
/// input of [`matvec_a8`] for the down projection). See [`swiglu_a8_supported`].
pub fn swiglu_a8(
    gpu: &Gpu,
    gate: &DeviceTensor,
    up: &DeviceTensor,
    inp: NormedInput,
    h: &mut CudaViewMut<f32>,
    hq: A8Mut,
) -> Result<()> {
    const K: &str = "swiglu_a8";
    let Some(k) = swiglu_a8_kernel(gate.ty) else {
        return Err(shape_err(
            K,
            format!(
                "{}: no 8-bit-activation gate/up kernel for {}",
                gate.name, gate.ty
            ),
        ));
    };
    ensure(k, swiglu_a8_supported(gate, up), || {
        format!(
            "{} ({} {} x {}) and {} ({} {} x {}): not one type and shape with rows a multiple of {SWIGLU_A8_ROWS} and at most {SWIGLU_A8_MAX_COLS} columns",
            gate.name, gate.ty, gate.rows, gate.cols, up.name, up.ty, up.rows, up.cols
        )
    })?;
    gate_up_io_ok(gpu, k, gate, &inp, h)?;
    a8_ok(
        k,
        &gate.name,
        (addr(gpu, hq.qs), addr(gpu, hq.ds)),
        (hq.qs.len(), hq.ds.len()),
        gate.rows,
    )?;
    let cols = to_u32(k, "cols", gate.cols)?;
    // The block's 64 weight rows staged through shared memory when they fit in a launch's
    // default 48 KB (the qwen FFN: 40 KB), else read in place.
    let row_bytes = gate.ty.row_bytes(gate.cols).unwrap_or(0);
    let staged = swiglu_a8_smem_bytes(gate.cols, row_bytes, true) <= SMEM_DEFAULT_MAX;
    let cfg = LaunchConfig {
        grid_dim: ((gate.rows / SWIGLU_A8_ROWS) as u32, 1, 1),
        block_dim: (32 * SWIGLU_A8_WARPS as u32, 1, 1),
        shared_mem_bytes: swiglu_a8_smem_bytes(gate.cols, row_bytes, staged) as u32,
    };
    let (gv, uv) = (gate.data.as_view(), up.data.as_view());
    let (x, g, eps) = (inp.x, inp.weight, inp.eps);
    let staged = staged as u32;
    launch!(
        gpu, k, cfg, &gv, &uv, x, g, &eps, h, hq.qs, hq.ds, &cols, &staged
    );
    Ok(())
}

/// Whether [`matvec_a8`] has a kernel for `w`'s type.
pub fn matvec_a8_supported(w: &DeviceTensor) -> bool {
    matvec_a8_kernel(w.ty).is_some()
}

/// `y = W x̂` (or plus a bias, or added into `y`, as [`matvec_with`]) for activations `x`
/// already quantized to 8 bits (an [`A8`] vector of `cols` elements), integer dot products.
pub fn matvec_a8(
    gpu: &Gpu,
    w: &DeviceTensor,
    x: A8,
    y: &mut CudaViewMut<f32>,
    out: MatvecOut,
) -> Result<()> {
    const K: &str = "matvec_a8";
    let Some(k) = matvec_a8_kernel(w.ty) else {
        return Err(shape_err(
            K,
            format!("{}: no 8-bit-activation matvec kernel for {}", w.name, w.ty),
        ));
    };
    a8_ok(
        k,
        &w.name,
        (addr(gpu, x.qs), addr(gpu, x.ds)),
        (x.qs.len(), x.ds.len()),
        w.cols,
    )?;
    ensure(k, y.len() == w.rows, || {
        format!("{}: y {} for {} rows", w.name, y.len(), w.rows)
    })?;
    let (rows, cols) = (to_u32(k, "rows", w.rows)?, to_u32(k, "cols", w.cols)?);
    let cfg = LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (32 * kernels_gpu::shapes::MATVEC_KWARP_WARPS as u32, 1, 1),
        shared_mem_bytes: row_stage_smem(w),
    };
    let wv = w.data.as_view();
    // The kernel's `add` argument: the bias, or (unread) the scales as a valid pointer.
    let (add, mode) = match out {
        MatvecOut::Store => (x.ds, MATVEC_STORE),
        MatvecOut::Bias(b) => {
            ensure(k, b.len() == w.rows, || {
                format!("{}: bias {} for {} rows", w.name, b.len(), w.rows)
            })?;
            (b, MATVEC_ADD)
        }
        MatvecOut::Accumulate => (x.ds, MATVEC_ACCUMULATE),
    };
    launch!(gpu, k, cfg, &wv, x.qs, x.ds, y, &rows, &cols, add, &mode);
    Ok(())
}

/// Whether [`matvec_qkv`] can run these three projections in one launch: q and k of one legacy
/// type, v of the same or Q8_0, all with `cols` columns, and biases on all three or none.
pub fn matvec_qkv_supported(
    wq: &DeviceTensor,
    wk: &DeviceTensor,
    wv: &DeviceTensor,
    biases: [bool; 3],
) -> bool {
    wq.ty == wk.ty
        && wq.cols == wk.cols
        && wq.cols == wv.cols
        && (biases == [true; 3] || biases == [false; 3])
        && matvec_qkv_kernel(wq.ty, wv.ty).is_some()
}

/// The RMSNorm of one token (`inp`, see [`NormedInput`]) and its q, k and v projections in one
/// launch, each plus its bias when `biases` is given (see [`matvec_qkv_supported`] for the
/// types it takes).
#[allow(clippy::too_many_arguments)]
pub fn matvec_qkv(
    gpu: &Gpu,
    w: [&DeviceTensor; 3],
    inp: NormedInput,
    yq: &mut CudaViewMut<f32>,
    yk: &mut CudaViewMut<f32>,
    yv: &mut CudaViewMut<f32>,
    biases: Option<[&CudaView<f32>; 3]>,
) -> Result<()> {
    const K: &str = "matvec_qkv";
    let [wq, wk, wv] = w;
    let Some(k) = matvec_qkv_kernel(wq.ty, wv.ty) else {
        return Err(shape_err(
            K,
            format!(
                "{}: no fused q/k/v kernel for {} with {}",
                wq.name, wq.ty, wv.ty
            ),
        ));
    };
    ensure(
        k,
        matvec_qkv_supported(wq, wk, wv, [biases.is_some(); 3]),
        || {
            format!(
                "{} ({} {} x {}), {} ({} {} x {}), {} ({} {} x {}) cannot share a launch",
                wq.name,
                wq.ty,
                wq.rows,
                wq.cols,
                wk.name,
                wk.ty,
                wk.rows,
                wk.cols,
                wv.name,
                wv.ty,
                wv.rows,
                wv.cols
            )
        },
    )?;
    normed_input_ok(gpu, k, &wq.name, &inp, wq.cols)?;
    for (wt, y) in [(wq, &*yq), (wk, &*yk), (wv, &*yv)] {
        ensure(k, y.len() == wt.rows, || {
            format!("{}: y {} for {} rows", wt.name, y.len(), wt.rows)
        })?;
    }
    if let Some(b) = &biases {
        for (wt, bb) in [wq, wk, wv].iter().zip(b) {
            ensure(k, bb.len() == wt.rows, || {
                format!("{}: bias of {} for {} rows", wt.name, bb.len(), wt.rows)
            })?;
        }
    }
    // One row per block of MATVEC_KWARP_WARPS warps (kernels-gpu/src/matvec.rs).
    let blocks = wq.rows + wk.rows + wv.rows;
    let cfg = LaunchConfig {
        grid_dim: (to_u32(k, "blocks", blocks)?, 1, 1),
        block_dim: (32 * kernels_gpu::shapes::MATVEC_KWARP_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (nq, nk, nv, cols) = (
        to_u32(k, "rows", wq.rows)?,
        to_u32(k, "rows", wk.rows)?,
        to_u32(k, "rows", wv.rows)?,
        to_u32(k, "cols", wq.cols)?,
    );
    let (dq, dk, dv) = (wq.data.as_view(), wk.data.as_view(), wv.data.as_view());
    // The kernel's modes (kernels-gpu/src/matvec.rs): 1 adds the bias, 0 stores.
    let mode = if biases.is_some() {
        MATVEC_ADD
    } else {
        MATVEC_STORE
    };
    let (x, g, eps) = (inp.x, inp.weight, inp.eps);
    // Without biases the kernel never reads them: any valid pointer does (x).
    let [bq, bk, bv] = biases.unwrap_or([x, x, x]);
    launch!(
        gpu, k, cfg, &dq, &dk, &dv, x, g, &eps, yq, yk, yv, bq, bk, bv, &nq, &nk, &nv, &cols, &mode
    );
    Ok(())
}

/// Output of [`dequant`].
pub enum DequantOut<'a, 'b> {
    /// `n_rows × cols` f32.
    F32(&'a mut CudaViewMut<'b, f32>),
    /// `n_rows × cols` f16 (bits).
    F16(&'a mut CudaViewMut<'b, u16>),
    /// The split-f16 operand of [`super::gemm::GemmKind::F16x3`]: `n_rows` rows of `3 · cols` f16,
    /// `[hi·2^S | hi | lo]` (see `kernels-gpu/src/split.rs`).
    F16x3(&'a mut CudaViewMut<'b, u16>),
}

/// The device address of a buffer (for the alignment the vector stores need).
fn addr<T>(gpu: &Gpu, v: &impl DevicePtr<T>) -> u64 {
    v.device_ptr(gpu.stream()).0
}

/// Decodes rows of `w` into `out` (row `r` of the output is row `ids[r]` of `w`, or row `r` when
/// `ids` is `None`): the embedding lookup (with token ids) and the weight decode for cuBLAS.
/// Token ids must be `< w.rows` (the backend checks them on the host before a forward).
pub fn dequant(
    gpu: &Gpu,
    w: &DeviceTensor,
    ids: Option<&CudaView<u32>>,
    out: DequantOut,
) -> Result<()> {
    let (suffix, out_len, factor, out_addr) = match &out {
        DequantOut::F32(o) => ("f32", o.len(), 1, addr(gpu, *o)),
        DequantOut::F16(o) => ("f16", o.len(), 1, addr(gpu, *o)),
        DequantOut::F16x3(o) => ("f16x3", o.len(), 3, addr(gpu, *o)),
    };
    let k = dequant_kernel(w.ty, suffix);
    let n_rows = ids.map_or(w.rows, |i| i.len());
    ensure(k, out_len == factor * n_rows * w.cols && n_rows > 0, || {
        format!(
            "{}: out has {out_len}, {n_rows} rows of {} expected",
            w.name,
            factor * w.cols
        )
    })?;
    // Whole 32-element pieces (DeviceTensor::upload checks this too), a piece count the kernel's
    // u32 block index holds, and the 16-byte alignment of the vector stores.
    ensure(k, w.cols.is_multiple_of(32), || {
        format!(
            "{}: rows of {} are not whole 32-element pieces",
            w.name, w.cols
        )
    })?;
    ensure(
        k,
        (n_rows * w.cols / 32) < (1 << 31) && w.rows * w.cols / 32 < (1 << 31),
        || format!("{}: {n_rows} x {} is too large", w.name, w.cols),
    )?;
    ensure(k, out_addr.is_multiple_of(16), || {
        format!("{}: output at {out_addr:#x} is not 16-byte aligned", w.name)
    })?;
    let (nr, cols) = (to_u32(k, "rows", n_rows)?, to_u32(k, "cols", w.cols)?);
    // kernels-gpu/src/dequant.rs: a warp per 256 output elements.
    let cfg = grid_1d(32 * (n_rows * w.cols).div_ceil(256), 256);
    let wv = w.data.as_view();
    let null = 0u64;
    match (ids, out) {
        (Some(ids), DequantOut::F32(o)) => launch!(gpu, k, cfg, &wv, ids, o, &nr, &cols),
        (None, DequantOut::F32(o)) => launch!(gpu, k, cfg, &wv, &null, o, &nr, &cols),
        (Some(ids), DequantOut::F16(o) | DequantOut::F16x3(o)) => {
            launch!(gpu, k, cfg, &wv, ids, o, &nr, &cols)
        }
        (None, DequantOut::F16(o) | DequantOut::F16x3(o)) => {
            launch!(gpu, k, cfg, &wv, &null, o, &nr, &cols)
        }
    }
    Ok(())
}

/// A Q8_0 matrix in planar form (`kernels_gpu::q8_planar`): `rows × cols` quant bytes, row after
/// row, and one f16 scale per 32 of them — the same values as the GGUF blocks, in the same bytes
/// (145 MB for the qwen LM head, against 272 MB for an f16 copy).
pub struct Q8Planar {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub qs: CudaSlice<u8>,
    pub d: CudaSlice<u16>,
}

impl Q8Planar {
    /// Re-lays out `bytes` (a Q8_0 tensor as in the file, `rows` rows of `cols`) on the host and
    /// uploads it.
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Q8Planar> {
        const K: &str = "matvec_q8p";
        ensure(K, cols > 0 && cols.is_multiple_of(32), || {
            format!("tensor {name:?}: rows of {cols} are not whole 32-element blocks")
        })?;
        let n_blocks = rows * cols / 32;
        ensure(
            K,
            bytes.len() == n_blocks * kernels_gpu::q8_planar::BLOCK_BYTES,
            || {
                format!(
                    "tensor {name:?}: {} bytes, {rows} x {cols} Q8_0 is {}",
                    bytes.len(),
                    n_blocks * kernels_gpu::q8_planar::BLOCK_BYTES
                )
            },
        )?;
        let (mut qs, mut d) = (vec![0u8; 32 * n_blocks], vec![0u16; n_blocks]);
        kernels_gpu::q8_planar::repack(bytes, &mut qs, &mut d)
            .ok_or_else(|| shape_err(K, format!("tensor {name:?}: repacking failed")))?;
        Ok(Q8Planar {
            name: name.into(),
            rows,
            cols,
            qs: gpu.upload(&qs, &format!("tensor {name} (planar quants)"))?,
            d: gpu.upload(&d, &format!("tensor {name} (planar scales)"))?,
        })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.qs.num_bytes() + self.d.num_bytes()
    }
}

/// `y = W x` for a planar Q8_0 matrix (`kernels-gpu/src/lm_head.rs`; reference: the dequantized
/// rows dotted with `x`).
pub fn matvec_q8p(
    gpu: &Gpu,
    w: &Q8Planar,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
) -> Result<()> {
    const K: &str = "matvec_q8p";
    ensure(K, x.len() == w.cols && y.len() == w.rows, || {
        format!(
            "{}: x has {}, y {} for a {} x {} matrix",
            w.name,
            x.len(),
            y.len(),
            w.rows,
            w.cols
        )
    })?;
    ensure(K, w.rows > 0, || format!("{}: no rows", w.name))?;
    x_aligned(gpu, K, &w.name, x)?;
    // As many blocks as are resident at once (each warp then goes through several groups of
    // rows, its next loads in flight while it computes), and no block without a group.
    let per_block = kernels_gpu::shapes::Q8P_ROWS * kernels_gpu::shapes::Q8P_WARPS;
    let resident = gpu.sm_count() * kernels_gpu::shapes::Q8P_BLOCKS_PER_SM;
    let blocks = w.rows.div_ceil(per_block).min(resident);
    let cfg = LaunchConfig {
        grid_dim: (to_u32(K, "blocks", blocks)?, 1, 1),
        block_dim: (32 * kernels_gpu::shapes::Q8P_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (rows, cols) = (to_u32(K, "rows", w.rows)?, to_u32(K, "cols", w.cols)?);
    let (qs, d) = (w.qs.as_view(), w.d.as_view());
    launch!(gpu, K, cfg, &qs, &d, x, y, &rows, &cols);
    Ok(())
}

/// Embedding lookup from a planar Q8_0 matrix (`kernels-gpu/src/lm_head.rs`, the LM head's copy
/// when the model ties the two): row `t` of `out` = row `ids[t]` of `w`, as f32, bit for bit the
/// blocks' dequantization. Token ids must be `< w.rows` (checked on the host before a forward,
/// sampled from `n_vocab` logits in the decode graph).
pub fn embedding_q8p(
    gpu: &Gpu,
    w: &Q8Planar,
    ids: &CudaView<u32>,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    const K: &str = "embedding_q8p";
    ensure(
        K,
        !ids.is_empty() && out.len() == ids.len() * w.cols,
        || {
            format!(
                "{}: {} ids and {} outputs for rows of {}",
                w.name,
                ids.len(),
                out.len(),
                w.cols
            )
        },
    )?;
    let at = addr(gpu, &*out);
    ensure(K, at.is_multiple_of(16), || {
        format!("{}: output at {at:#x} is not 16-byte aligned", w.name)
    })?;
    let cfg = LaunchConfig {
        grid_dim: (to_u32(K, "ids", ids.len())?, 1, 1),
        block_dim: (
            (w.cols / 4).clamp(32, 256).next_multiple_of(32) as u32,
            1,
            1,
        ),
        shared_mem_bytes: 0,
    };
    let cols = to_u32(K, "cols", w.cols)?;
    let (qs, d) = (w.qs.as_view(), w.d.as_view());
    launch!(gpu, K, cfg, &qs, &d, ids, out, &cols);
    Ok(())
}

/// Embedding lookup: row `t` of `out` = row `ids[t]` of `w`, as f32.
pub fn embedding(
    gpu: &Gpu,
    w: &DeviceTensor,
    ids: &CudaView<u32>,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    dequant(gpu, w, Some(ids), DequantOut::F32(out))
}

/// Most blocks of `argmax_f32` (the size of [`SelectScratch`]'s pair buffer).
pub const ARGMAX_MAX_BLOCKS: usize = 1024;
/// Loads per thread `argmax_f32` issues together (`kernels-gpu/src/sample.rs`).
const ARGMAX_UNROLL: usize = 8;

/// Words of [`SelectScratch`]'s partials: the argmax's (value, index) pair per block, or
/// `sample_f32`'s 8-byte candidates.
pub const SELECT_PART_WORDS: usize = {
    let a = 2 * ARGMAX_MAX_BLOCKS;
    let s = 2 * kernels_gpu::shapes::SAMPLE_CAND;
    if a > s { a } else { s }
};

/// Scratch of the device samplers: the blocks' partial results (the argmax's (value, index) pair
/// per block, `sample_f32`'s candidates) and the count of finished blocks (zeroed once; the
/// kernels leave it zeroed).
pub struct SelectScratch {
    part: CudaSlice<u32>,
    done: CudaSlice<u32>,
}

impl SelectScratch {
    pub fn new(gpu: &Gpu) -> Result<SelectScratch> {
        Ok(SelectScratch {
            part: gpu.alloc::<u32>(SELECT_PART_WORDS, "sampler partials")?,
            done: gpu.upload(&[0u32], "sampler counter")?,
        })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.part.len() + self.done.len())
    }
}

/// The `next` argument of the samplers: the `[token, position]` of the next decode step as a
/// device pointer, or 0 (null) for none.
fn next_ptr(gpu: &Gpu, kernel: &'static str, p: Option<&mut CudaViewMut<u32>>) -> Result<u64> {
    match p {
        None => Ok(0),
        Some(v) => {
            ensure(kernel, v.len() >= 2, || {
                format!("the next step's [token, position] has {} elements", v.len())
            })?;
            Ok(addr(gpu, &*v))
        }
    }
}

/// Index of the largest of `x` (ties to the lower index, NaN ignored; `u32::MAX` if every value is
/// NaN) into `out[0]`; with `next` (the `[token, position]` of the next decode step), also the id
/// into `next[0]` (0 instead of `u32::MAX`) and 1 added to `next[1]`.
/// Several blocks share the logits, the last one to finish reduces their results.
pub fn argmax(
    gpu: &Gpu,
    x: &CudaView<f32>,
    scratch: &mut SelectScratch,
    out: &mut CudaViewMut<u32>,
    next: Option<&mut CudaViewMut<u32>>,
) -> Result<()> {
    const K: &str = "argmax_f32";
    ensure(K, !x.is_empty() && !out.is_empty(), || {
        "empty input or output".into()
    })?;
    let n = to_u32(K, "n", x.len())?;
    ensure(K, n < u32::MAX, || "too many logits".into())?;
    let blocks = x
        .len()
        .div_ceil(1024 * ARGMAX_UNROLL)
        .clamp(1, ARGMAX_MAX_BLOCKS);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    let pinc = next_ptr(gpu, K, next)?;
    let mut part = scratch.part.as_view_mut();
    let mut done = scratch.done.as_view_mut();
    launch!(gpu, K, cfg, x, &n, &mut part, &mut done, out, &pinc);
    Ok(())
}

/// The settings of [`sample`]: the host sampler's chain (`crate::sample`), as the device runs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// Candidates kept by rank, `1..=SAMPLE_MAX_TOP_K` (1: greedy, after the penalty).
    pub top_k: usize,
    /// Cumulative probability kept (0 < top_p ≤ 1; 1 = off).
    pub top_p: f32,
    /// Least probability relative to the most likely candidate (0 ≤ min_p ≤ 1; 0 = off).
    pub min_p: f32,
    /// Softmax temperature of the draw (> 0).
    pub temperature: f32,
    /// Repetition penalty on the tokens of the window (> 0; 1 = off).
    pub repeat_penalty: f32,
}

impl SampleParams {
    /// What the device runs for the host sampler's settings `cfg` (assumed valid): `None` for
    /// greedy without a penalty (the argmax), top-k 1 for greedy after a penalty, else the chain
    /// as set (the penalty 1, off, when its window is empty).
    pub fn of(cfg: &crate::sample::SamplerConfig) -> Option<SampleParams> {
        let penalty = cfg.repeat_penalty != 1.0 && cfg.repeat_last_n > 0;
        let repeat_penalty = if penalty { cfg.repeat_penalty } else { 1.0 };
        if !cfg.is_greedy() {
            return Some(SampleParams {
                top_k: cfg.top_k,
                top_p: cfg.top_p,
                min_p: cfg.min_p,
                temperature: cfg.temperature,
                repeat_penalty,
            });
        }
        // The argmax after the penalty: the sampler's first candidate.
        penalty.then_some(SampleParams {
            repeat_penalty,
            ..SampleParams::top_k_top_p(1, 1.0, 1.0)
        })
    }

    /// Top-k and top-p at `temperature`, nothing else.
    pub fn top_k_top_p(top_k: usize, top_p: f32, temperature: f32) -> SampleParams {
        SampleParams {
            top_k,
            top_p,
            min_p: 0.0,
            temperature,
            repeat_penalty: 1.0,
        }
    }
}

/// Largest `top_k` the device sampler takes.
pub const MAX_TOP_K: usize = kernels_gpu::shapes::SAMPLE_MAX_TOP_K;
/// Longest repetition-penalty window the device sampler takes.
pub const MAX_HISTORY: usize = kernels_gpu::shapes::SAMPLE_MAX_HISTORY;

/// Draws a token from the logits `x` by the host sampler's chain (`crate::sample::Sampler`): the
/// repetition penalty on the tokens of `window` (`[count, tokens; cap]`, see
/// `kernels-gpu/src/sample.rs`; applied to `x` in place; the chosen id is appended), top-k, top-p
/// and min-p on the probabilities at temperature 1, then the draw at `p.temperature` with the
/// uniform `u` in `[0, 1)`. The id goes to `out[0]` (and with `next`, to the next decode step as
/// in [`argmax`]); `u32::MAX` when every logit is NaN.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    gpu: &Gpu,
    x: &mut CudaViewMut<f32>,
    p: SampleParams,
    u: f32,
    window: Option<&mut CudaViewMut<u32>>,
    scratch: &mut SelectScratch,
    out: &mut CudaViewMut<u32>,
    next: Option<&mut CudaViewMut<u32>>,
) -> Result<()> {
    const K: &str = "sample_f32";
    ensure(K, !x.is_empty() && !out.is_empty(), || {
        "empty input or output".into()
    })?;
    let n = to_u32(K, "n", x.len())?;
    ensure(K, n < u32::MAX, || "too many logits".into())?;
    ensure(K, (1..=MAX_TOP_K.min(x.len())).contains(&p.top_k), || {
        format!(
            "top_k {} must be in 1..={}",
            p.top_k,
            MAX_TOP_K.min(x.len())
        )
    })?;
    ensure(K, p.top_p > 0.0 && p.top_p <= 1.0, || {
        format!("top_p {} must be in (0, 1]", p.top_p)
    })?;
    ensure(K, (0.0..=1.0).contains(&p.min_p), || {
        format!("min_p {} must be in [0, 1]", p.min_p)
    })?;
    ensure(K, p.temperature > 0.0 && p.temperature.is_finite(), || {
        format!("temperature {} must be positive", p.temperature)
    })?;
    ensure(
        K,
        p.repeat_penalty > 0.0 && p.repeat_penalty.is_finite(),
        || format!("repeat penalty {} must be positive", p.repeat_penalty),
    )?;
    ensure(K, (0.0..1.0).contains(&u), || {
        format!("u = {u} must be in [0, 1)")
    })?;
    let (ring, cap) = match window {
        Some(w) => {
            ensure(K, (2..=MAX_HISTORY + 1).contains(&w.len()), || {
                format!(
                    "the penalty window has {} elements: [count, tokens] with 1..={MAX_HISTORY} tokens",
                    w.len()
                )
            })?;
            (addr(gpu, &*w), w.len() as u32 - 1)
        }
        None => {
            ensure(K, p.repeat_penalty == 1.0, || {
                format!(
                    "a repeat penalty of {} needs the window of recent tokens",
                    p.repeat_penalty
                )
            })?;
            (0, 0)
        }
    };
    let blocks = kernels_gpu::shapes::sample_blocks(x.len(), p.top_k);
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (kernels_gpu::shapes::SAMPLE_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let k = p.top_k as u32;
    let inv_t = 1.0 / p.temperature;
    let pinc = next_ptr(gpu, K, next)?;
    let mut part = scratch.part.as_view_mut();
    let mut done = scratch.done.as_view_mut();
    launch!(
        gpu,
        K,
        cfg,
        x,
        &n,
        &k,
        &p.top_p,
        &p.min_p,
        &inv_t,
        &p.repeat_penalty,
        &u,
        &ring,
        &cap,
        &mut part,
        &mut done,
        out,
        &pinc
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_gpu::shapes::{
        COMBINE_HEAD_BLOCKS, COMBINE_MAX_PER, COMBINE_THREADS, DECODE_DEFER_SPLITS,
        DECODE_MIN_CHUNK, decode_max_splits, decode_plan,
    };

    /// The split plan of decode attention stays inside what its kernels take: at most
    /// `DECODE_CHUNK` positions per split (the score buffer), at most `COMBINE_MAX_PER` splits per
    /// thread of `attention_combine`, `DECODE_MIN_CHUNK` positions per split while the cache
    /// allows, and the output projection combining exactly the contexts `decode_defers` names.
    #[test]
    fn decode_plans_fit_the_attention_and_its_combine() {
        for d in [32, 64, 128] {
            // Lanes of splits of one block: its columns (a COMBINE_HEAD_BLOCKS-th of the head's)
            // in groups of 4, one group per thread and lane.
            let lanes = COMBINE_THREADS / (d / 4 / COMBINE_HEAD_BLOCKS);
            assert_eq!(
                decode_max_splits(d),
                lanes * COMBINE_MAX_PER,
                "head_dim {d}"
            );
            let max_ctx = decode_max_ctx(d);
            for n_ctx in [
                1, 31, 32, 33, 128, 129, 4096, 4224, 8192, 8193, 20000, max_ctx,
            ] {
                if n_ctx > max_ctx {
                    continue;
                }
                let n_split = decode_splits(n_ctx, d);
                assert!(n_split <= decode_max_splits(d));
                for n_kv in [1, 2, 32, 33, 128, 129, n_ctx / 2, n_ctx - 1, n_ctx] {
                    if n_kv == 0 || n_kv > n_ctx {
                        continue;
                    }
                    let (chunk, n_used) = decode_plan(n_kv as u32, n_split as u32);
                    let (chunk, n_used) = (chunk as usize, n_used as usize);
                    let at = format!("head_dim {d}, n_ctx {n_ctx}, n_kv {n_kv}");
                    assert!(chunk <= DECODE_CHUNK && n_used <= n_split, "{at}");
                    assert!(
                        n_used * chunk >= n_kv && (n_used - 1) * chunk < n_kv,
                        "{at}"
                    );
                    assert!(n_used.div_ceil(lanes) <= COMBINE_MAX_PER, "{at}");
                    if n_ctx <= DECODE_MIN_CHUNK * decode_max_splits(d) {
                        assert_eq!(chunk, DECODE_MIN_CHUNK, "{at}");
                    }
                    assert_eq!(
                        decode_defers(n_kv, n_ctx, d),
                        n_used <= DECODE_DEFER_SPLITS,
                        "{at}"
                    );
                    let short = n_kv <= DECODE_DEFER_SPLITS * DECODE_MIN_CHUNK;
                    assert_eq!(decode_defers(n_kv, n_ctx, d), short, "{at}");
                }
            }
        }
    }
}
