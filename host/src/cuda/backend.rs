//! [`CudaBackend`]: the forward pass on the GPU, behind the same [`Backend`] trait as the CPU.
//!
//! Per forward call (`T` tokens at positions `pos ..`), in chunks of at most
//! [`CudaOptions::max_batch`] tokens:
//!
//! ```text
//! ids ─embedding─► x ─┬─ rms_norm ─ q,k,v = linear (+bias) ─ rope(q,k) ─ kv_append ─ attention ─ linear(o) ─┐
//!                     └──────────────────────────────────── add ◄──────────────────────────────────────────┘
//!                     ┬─ rms_norm ─ gate,up = linear ─ swiglu ─ linear(down) ─┐
//!                     └──────────────────── add ◄─────────────────────────────┘   (× n_layer)
//! x ─ rms_norm(output_norm) ─ LM head (cuBLAS) ─► logits      (only the rows asked for)
//! ```
//!
//! `linear` is the quantized matvec kernel when `T = 1` (decode; with
//! [`CudaOptions::fuse_epilogues`] and legacy block types the norm before q/k/v and before
//! gate/up is folded into one launch with them, the biases, the SwiGLU and the residual adds
//! likewise), and otherwise the weight
//! decoded into a scratch buffer plus a cuBLAS GEMM, per [`CudaOptions::gemm`]: split f16 (hi/lo
//! pairs, one tensor-core GEMM of 3K, near-f32 accuracy; the default), f32, or plain f16.
//! The LM head is the Q8_0 output matrix in planar form (`matvec_q8p`, one matvec per logits
//! row) when the file has it as Q8_0, and otherwise a copy decoded once at load (f16 or f32,
//! [`CudaOptions::lm_head`]) multiplied through cuBLAS.
//! The KV cache is f16, `[layer][n_head_kv][n_ctx][head_dim]`.
//! Weights stay in their GGUF blocks on the device, uploaded once.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use super::device::Gpu;
use super::error::CudaError;
use super::gemm::{GemmKind, gemm, gemm_accumulate};
use super::ops::{
    self, DecodeAt, DecodeScratch, DequantOut, DeviceTensor, KvElem, KvLayer, KvShape, MatvecOut,
    NormedInput, Pos, RopeTable, SampleParams, SelectScratch,
};
use crate::backend::{Backend, BackendError, DeviceSteps, Logits, check_forward};
use crate::gguf::{Gguf, TensorInfo};
use crate::model::{Config, Weights};
use crate::sample::SamplerConfig;

/// Settings of a [`CudaBackend`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// KV-cache capacity in positions (capped at the model's training context).
    pub n_ctx: usize,
    /// Most tokens per internal chunk of a forward (sizes the scratch buffers).
    pub max_batch: usize,
    /// Arithmetic of the prefill GEMMs (T > 1): [`GemmKind::F16x3`] (the default: split f16 on
    /// tensor cores, f32 accumulation, operands represented to ~2^-22 relative — near-f32
    /// accuracy, see `kernels-gpu/src/split.rs`), [`GemmKind::F32`] (f32 without tensor cores:
    /// the reference-precision path), [`GemmKind::F16F32`] (plain f16 tensor cores: a third of
    /// F16x3's tensor-core work, ~2^-11 relative operand rounding and a larger logits error, see
    /// docs/GPU_ENGINE.md) or [`GemmKind::Tf32`].
    pub gemm: GemmKind,
    /// Arithmetic of the LM head: [`GemmKind::F16F32`] (f16 copy of the output matrix) or
    /// [`GemmKind::F32`] (f32 copy).
    pub lm_head: GemmKind,
    /// KV cache in f32 instead of f16 (twice the memory; for reference-precision comparisons).
    pub kv_f32: bool,
    /// Decode (T = 1): add the q/k/v biases and the residuals inside the matvec launches instead
    /// of separate `add` launches, and run gate, up and SwiGLU as one launch where the types allow
    /// (the same f32 operations either way; off only to measure the difference).
    pub fuse_epilogues: bool,
    /// Decode steps through [`CudaBackend::forward_next`] replay one CUDA graph of the whole
    /// step (embedding to LM head), captured at the first such step, with the token and position
    /// in device memory (the sampler writes the next token and advances the position there), so
    /// a step costs one graph launch instead of a few hundred kernel launches. Off: every kernel
    /// launched from the host (the same kernels and arithmetic).
    pub decode_graph: bool,
    /// The LM head from the Q8_0 output matrix itself, re-laid out in planar form (the same
    /// bytes) and multiplied by `matvec_q8p`, instead of the [`CudaOptions::lm_head`] copy and
    /// cuBLAS; applies when that matrix is Q8_0 (otherwise the copy is used). On by default:
    /// faster (PERF.md change 16), 138 MiB instead of a 260 MiB f16 copy for qwen, and exact
    /// weights (the f16 copy rounds them).
    pub lm_head_q8: bool,
    /// Decode (T = 1): the FFN on 8-bit activations where the types allow (gate/up of a legacy
    /// type, down of a legacy type, Q4_K or Q6_K): the normed row and the SwiGLU output
    /// quantized per block of 32 as the CPU's `Q8Blocks`, integer dot products (`swiglu_a8`,
    /// `matvec_a8`). On by default (PERF.md change 26): the activation rounding moves the
    /// decode logits by up to ≈ 1e-2 relative on the real models (p99 7.5e-3 qwen, 9.5e-3
    /// SmolLM2; docs/GPU_ENGINE.md), as llama.cpp's own integer matvecs do.
    pub ffn_a8: bool,
    /// Programmatic dependent launch inside the decode graph (the sm_90 module; see
    /// [`Gpu::set_pdl`]): each kernel of the step is scheduled while the previous one runs and
    /// issues its weight loads before it waits for it. The same kernels and arithmetic either
    /// way.
    pub pdl: bool,
    /// Prefill attention on the tensor cores where the cache is f16
    /// (`attention_prefill_mma_f16`: split-f16 operands, about f32 accuracy) instead of the
    /// CUDA-core kernel (the previous default; off only to measure the difference).
    pub prefill_mma: bool,
}

impl CudaOptions {
    /// Every step in f32 (f32 GEMMs without tensor cores, f32 LM head, f32 KV cache): the
    /// configuration that computes the CPU reference's function up to f32 rounding.
    pub fn reference_precision(self) -> CudaOptions {
        CudaOptions {
            gemm: GemmKind::F32,
            lm_head: GemmKind::F32,
            lm_head_q8: false,
            ffn_a8: false,
            kv_f32: true,
            ..self
        }
    }
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            n_ctx: 4096,
            max_batch: 512,
            gemm: GemmKind::F16x3,
            lm_head: GemmKind::F16F32,
            kv_f32: false,
            fuse_epilogues: true,
            decode_graph: true,
            lm_head_q8: true,
            ffn_a8: true,
            pdl: true,
            prefill_mma: true,
        }
    }
}

struct LayerW {
    attn_norm: CudaSlice<f32>,
    wq: DeviceTensor,
    wk: DeviceTensor,
    wv: DeviceTensor,
    bq: Option<CudaSlice<f32>>,
    bk: Option<CudaSlice<f32>>,
    bv: Option<CudaSlice<f32>>,
    wo: DeviceTensor,
    ffn_norm: CudaSlice<f32>,
    gate: DeviceTensor,
    up: DeviceTensor,
    down: DeviceTensor,
}

/// The KV cache of every layer, f16 (default) or f32.
enum KvCache {
    F16(Vec<KvLayer<u16>>),
    F32(Vec<KvLayer<f32>>),
}

/// The LM head matrix: decoded once to f16 bits or f32 (for cuBLAS), or the Q8_0 matrix in
/// planar form; `n_vocab` rows of `n_embd`.
enum LmHead {
    F16(CudaSlice<u16>),
    F32(CudaSlice<f32>),
    Q8(Arc<ops::Q8Planar>),
}

/// The token embedding on the device.
enum Embedding {
    /// Its own copy in GGUF blocks (`ops::embedding`).
    Blocks(DeviceTensor),
    /// The LM head's planar Q8_0 matrix, when the model ties the two (`ops::embedding_q8p`): one
    /// device copy of the 145 MB matrix instead of two.
    Planar(Arc<ops::Q8Planar>),
}

impl Embedding {
    /// Rows `ids` into `out` (`ids.len()` rows of `n_embd`).
    fn lookup(
        &self,
        gpu: &Gpu,
        ids: &CudaView<u32>,
        out: &mut CudaViewMut<f32>,
    ) -> Result<(), CudaError> {
        match self {
            Embedding::Blocks(t) => ops::embedding(gpu, t, ids, out),
            Embedding::Planar(w) => ops::embedding_q8p(gpu, w, ids, out),
        }
    }

    /// Device bytes held apart from the LM head.
    fn own_bytes(&self) -> usize {
        match self {
            Embedding::Blocks(t) => t.data.num_bytes(),
            Embedding::Planar(_) => 0,
        }
    }
}

struct Scratch {
    ids: CudaSlice<u32>,
    x: CudaSlice<f32>,
    xn: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    /// One row of a projection's output before its residual add: only the unfused one-token
    /// path uses it ([`CudaOptions::fuse_epilogues`] off; prefill GEMMs add into the residual).
    proj: CudaSlice<f32>,
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    h: CudaSlice<f32>,
    /// `h` quantized to 8 bits for the down projection (`CudaOptions::ffn_a8`): quants and
    /// `[d, s]` pairs of one token.
    hq: CudaSlice<u8>,
    hqd: CudaSlice<f32>,
    /// The GEMM path's decoded weights and f16 activations.
    gemm: GemmScratch,
    logits: CudaSlice<f32>,
    /// Decode attention's per-split partials.
    dec: DecodeScratch,
    /// The device samplers' partials and counter.
    sel: SelectScratch,
    /// The repetition-penalty window of the device sampler, `[count, tokens; MAX_HISTORY]`
    /// ([`CudaBackend::set_window`]).
    window: CudaSlice<u32>,
    /// The decode step's input in device memory, `[token, position]`, and the id the last step
    /// chose, `[2]` (the sampler of a graph-replayed step also writes the next token to `[0]` and
    /// advances `[1]`).
    step: CudaSlice<u32>,
}

/// Scratch of the GEMM path (`T > 1`, [`Linear::gemm_converted`]): a decoded weight matrix, f32
/// or f16 (as hi/lo pairs for the split-f16 GEMM), and the activations as f16.
struct GemmScratch {
    w32: CudaSlice<f32>,
    w16: CudaSlice<u16>,
    x16: CudaSlice<u16>,
}

/// Rows of logits computed per LM-head GEMM when all rows are asked for.
const LOGIT_ROWS: usize = 64;

/// The forward pass on one CUDA device.
pub struct CudaBackend {
    gpu: Gpu,
    cfg: Config,
    opts: CudaOptions,
    tok_embd: Embedding,
    output_norm: CudaSlice<f32>,
    lm_head: LmHead,
    layers: Vec<LayerW>,
    kv: KvCache,
    kv_shape: KvShape,
    rope: RopeTable,
    s: Scratch,
    n_past: usize,
    /// The captured decode step ([`CudaOptions::decode_graph`]), `[greedy + 2 · short]`: it ends
    /// with the logits (a sampler launched after it chooses) or with their argmax fed to the next
    /// step (`greedy`: one graph launch per step); `short` for the positions whose attention the
    /// output projection combines (`ops::decode_defers`). Each captured at its first use.
    graphs: [Option<cudarc::driver::CudaGraph>; 4],
    /// What `s.step` holds once the queued work has run: the next decode step's token (`None`:
    /// chosen by a queued step, not yet read) and position; `None` when unknown.
    step_on_device: Option<(Option<u32>, usize)>,
    /// Page-locked slots the chosen ids are copied into ([`CudaBackend::queue_next`]).
    id_slots: Vec<super::device::HostSlot>,
    /// The steps queued and not yet taken, oldest first.
    queued: std::collections::VecDeque<Queued>,
    /// Tokens the sampler's penalty window holds ([`CudaBackend::set_window`]; 0: none set).
    window_cap: usize,
    /// How [`DeviceSteps::queue_step`] chooses: `None` greedy (the argmax the greedy graph ends
    /// with), else the device sampler with these settings.
    rule: Option<SampleParams>,
}

/// A decode step queued by [`CudaBackend::queue_next`]: the slot its id is copied into and the
/// position of the token whose successor it chooses.
struct Queued {
    slot: usize,
    pos: usize,
}

/// Most steps [`CudaBackend::queue_next`] keeps waiting to be taken.
pub const MAX_QUEUED: usize = 4;

/// The input of a step queued by [`CudaBackend::queue_next`].
#[derive(Clone, Copy, Debug)]
pub enum Feed<'a> {
    /// Token ids from the host.
    Tokens(&'a [u32]),
    /// One token: the one the step queued last chose, read on the device (that step ran the
    /// decode graph at the position before).
    Chosen,
}

fn upload_matrix(gpu: &Gpu, g: &Gguf, t: &TensorInfo) -> Result<DeviceTensor, BackendError> {
    let data = g.tensor_data(t);
    Ok(DeviceTensor::upload(
        gpu,
        &t.name,
        t.ggml_type,
        t.n_rows() as usize,
        t.row_len() as usize,
        data,
    )?)
}

fn upload_vector(gpu: &Gpu, g: &Gguf, t: &TensorInfo) -> Result<CudaSlice<f32>, BackendError> {
    let n = t.n_elements as usize;
    let v = crate::quant::dequantize_row_to_vec(t.ggml_type, g.tensor_data(t), n).map_err(|e| {
        BackendError::Tensor {
            tensor: t.name.clone(),
            problem: e.to_string(),
        }
    })?;
    Ok(gpu.upload(&v, &t.name)?)
}

impl CudaBackend {
    /// Loads the model in `g` onto the GPU: maps the tensors, checks device memory, uploads every
    /// weight once (quantized), decodes the LM head, allocates the KV cache and scratch.
    pub fn load(g: &Gguf, opts: CudaOptions) -> Result<CudaBackend, BackendError> {
        let cfg = Config::from_header(&g.header)?;
        let w = Weights::from_header(&g.header, &cfg)?;
        let gpu = Gpu::new(opts.device)?;
        Self::load_on(gpu, g, cfg, w, opts)
    }

    fn load_on(
        mut gpu: Gpu,
        g: &Gguf,
        cfg: Config,
        w: Weights,
        mut opts: CudaOptions,
    ) -> Result<CudaBackend, BackendError> {
        gpu.set_pdl(opts.pdl);
        opts.n_ctx = opts.n_ctx.clamp(1, cfg.n_ctx_train);
        opts.max_batch = opts.max_batch.clamp(1, opts.n_ctx);
        let max_ctx = ops::decode_max_ctx(cfg.head_dim);
        if opts.n_ctx > max_ctx {
            return Err(BackendError::Device(format!(
                "a context of {} positions was asked for; the GPU decode attention supports at most {max_ctx}",
                opts.n_ctx
            )));
        }
        for (kind, lm) in [(opts.gemm, false), (opts.lm_head, true)] {
            let ok = matches!(kind, GemmKind::F16F32 | GemmKind::F32 | GemmKind::Tf32)
                || (!lm && kind == GemmKind::F16x3);
            if !ok {
                return Err(BackendError::Device(format!(
                    "GEMM kind {kind:?} is not supported for the {}",
                    if lm { "LM head" } else { "prefill GEMMs" }
                )));
            }
        }
        let kv_shape = KvShape {
            n_head_kv: cfg.n_head_kv,
            head_dim: cfg.head_dim,
            n_ctx: opts.n_ctx,
        };
        // Memory: weights as stored, the LM head copy, the KV cache, scratch, and a margin for
        // the context, cuBLAS workspace and the module.
        let mut weight_bytes: usize =
            w.token_embd.n_bytes as usize + 4 * w.output_norm.n_elements as usize;
        for l in &w.layers {
            for t in [
                &l.attn_q,
                &l.attn_k,
                &l.attn_v,
                &l.attn_output,
                &l.ffn_gate,
                &l.ffn_up,
                &l.ffn_down,
            ] {
                weight_bytes += t.n_bytes as usize;
            }
            for t in [Some(&l.attn_norm), Some(&l.ffn_norm)]
                .into_iter()
                .chain([&l.attn_q_bias, &l.attn_k_bias, &l.attn_v_bias].map(Option::as_ref))
                .flatten()
            {
                weight_bytes += 4 * t.n_elements as usize;
            }
        }
        let lm_q8 = opts.lm_head_q8 && w.output.ggml_type == crate::gguf::GgmlType::Q8_0;
        match (w.output_tied, lm_q8) {
            (false, false) => weight_bytes += w.output.n_bytes as usize, // quantized, while decoding
            (true, true) => weight_bytes -= w.token_embd.n_bytes as usize, // one copy for both
            _ => {}
        }
        let lm_bytes = if lm_q8 {
            w.output.n_bytes as usize
        } else {
            cfg.n_vocab * cfg.n_embd * opts.lm_head.in_bytes()
        };
        let kv_bytes = 2 * cfg.n_layer * kv_shape.elems() * if opts.kv_f32 { 4 } else { 2 };
        let b = opts.max_batch;
        let widest = cfg.n_embd.max(cfg.n_ff).max(cfg.q_dim());
        let max_w = [
            cfg.q_dim() * cfg.n_embd,
            cfg.n_ff * cfg.n_embd,
            cfg.kv_dim() * cfg.n_embd,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let scratch_f32 = b * (3 * cfg.n_embd + 2 * cfg.q_dim() + 2 * cfg.kv_dim() + 3 * cfg.n_ff)
            + LOGIT_ROWS * cfg.n_vocab
            + cfg.n_head * ops::decode_splits(opts.n_ctx, cfg.head_dim) * (cfg.head_dim + 2)
            + ops::SELECT_PART_WORDS
            + 1
            + ops::MAX_HISTORY
            + max_w;
        // f16 scratch: decoded weights and activations, three f16 per value for F16x3.
        let f16_factor = opts.gemm.in_factor();
        let scratch_bytes = 4 * scratch_f32 + 2 * f16_factor * (max_w + b * widest);
        let needed = weight_bytes + lm_bytes + kv_bytes + scratch_bytes + (256 << 20);
        gpu.ensure_free(needed, "the model, its KV cache and scratch")?;

        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in &w.layers {
            let opt = |t: &Option<TensorInfo>| -> Result<Option<CudaSlice<f32>>, BackendError> {
                t.as_ref().map(|t| upload_vector(&gpu, g, t)).transpose()
            };
            layers.push(LayerW {
                attn_norm: upload_vector(&gpu, g, &l.attn_norm)?,
                wq: upload_matrix(&gpu, g, &l.attn_q)?,
                wk: upload_matrix(&gpu, g, &l.attn_k)?,
                wv: upload_matrix(&gpu, g, &l.attn_v)?,
                bq: opt(&l.attn_q_bias)?,
                bk: opt(&l.attn_k_bias)?,
                bv: opt(&l.attn_v_bias)?,
                wo: upload_matrix(&gpu, g, &l.attn_output)?,
                ffn_norm: upload_vector(&gpu, g, &l.ffn_norm)?,
                gate: upload_matrix(&gpu, g, &l.ffn_gate)?,
                up: upload_matrix(&gpu, g, &l.ffn_up)?,
                down: upload_matrix(&gpu, g, &l.ffn_down)?,
            });
        }
        let output_norm = upload_vector(&gpu, g, &w.output_norm)?;
        let (tok_embd, lm_head) = if lm_q8 {
            let planar = Arc::new(ops::Q8Planar::upload(
                &gpu,
                &w.output.name,
                cfg.n_vocab,
                cfg.n_embd,
                g.tensor_data(&w.output),
            )?);
            let emb = if w.output_tied {
                Embedding::Planar(planar.clone())
            } else {
                Embedding::Blocks(upload_matrix(&gpu, g, &w.token_embd)?)
            };
            (emb, LmHead::Q8(planar))
        } else {
            let tok_embd = upload_matrix(&gpu, g, &w.token_embd)?;
            let out_q;
            let src = if w.output_tied {
                &tok_embd
            } else {
                out_q = upload_matrix(&gpu, g, &w.output)?;
                &out_q
            };
            let n = src.rows * src.cols;
            let head = match opts.lm_head {
                GemmKind::F16F32 => {
                    let mut d = gpu.alloc::<u16>(n, "the LM head")?;
                    ops::dequant(&gpu, src, None, DequantOut::F16(&mut d.as_view_mut()))?;
                    LmHead::F16(d)
                }
                _ => {
                    let mut d = gpu.alloc::<f32>(n, "the LM head")?;
                    ops::dequant(&gpu, src, None, DequantOut::F32(&mut d.as_view_mut()))?;
                    LmHead::F32(d)
                }
            };
            gpu.synchronize()?;
            (Embedding::Blocks(tok_embd), head)
        };
        let kv = if opts.kv_f32 {
            KvCache::F32(
                (0..cfg.n_layer)
                    .map(|_| KvLayer::new(&gpu, kv_shape))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        } else {
            KvCache::F16(
                (0..cfg.n_layer)
                    .map(|_| KvLayer::new(&gpu, kv_shape))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let rope = RopeTable::new(&gpu, opts.n_ctx, cfg.head_dim, cfg.rope_theta)?;
        let a32 = |n: usize, what: &str| gpu.alloc::<f32>(n, what);
        let s = Scratch {
            ids: gpu.alloc::<u32>(b, "token ids")?,
            x: a32(b * cfg.n_embd, "activations")?,
            xn: a32(b.max(LOGIT_ROWS) * cfg.n_embd, "activations")?,
            q: a32(b * cfg.q_dim(), "activations")?,
            k: a32(b * cfg.kv_dim(), "activations")?,
            v: a32(b * cfg.kv_dim(), "activations")?,
            attn: a32(b * cfg.q_dim(), "activations")?,
            proj: a32(cfg.n_embd, "activations")?,
            gate: a32(b * cfg.n_ff, "activations")?,
            up: a32(b * cfg.n_ff, "activations")?,
            h: a32(b * cfg.n_ff, "activations")?,
            hq: gpu.alloc::<u8>(cfg.n_ff, "8-bit activations")?,
            hqd: a32(cfg.n_ff.div_ceil(16), "8-bit activation scales")?,
            gemm: GemmScratch {
                w32: a32(
                    if matches!(opts.gemm, GemmKind::F16F32 | GemmKind::F16x3) {
                        1
                    } else {
                        max_w
                    },
                    "decoded weights",
                )?,
                w16: gpu.alloc::<u16>(
                    if matches!(opts.gemm, GemmKind::F16F32 | GemmKind::F16x3) {
                        f16_factor * max_w
                    } else {
                        1
                    },
                    "decoded weights",
                )?,
                x16: gpu
                    .alloc::<u16>(f16_factor * b.max(LOGIT_ROWS) * widest, "f16 activations")?,
            },
            logits: a32(LOGIT_ROWS * cfg.n_vocab, "logits")?,
            dec: DecodeScratch::new(&gpu, cfg.n_head, cfg.head_dim, opts.n_ctx)?,
            sel: SelectScratch::new(&gpu)?,
            window: gpu.upload(&[0u32; 1 + ops::MAX_HISTORY], "the penalty window")?,
            step: gpu.upload(
                &[0u32, 0, 0],
                "the decode step's token, position and choice",
            )?,
        };
        gpu.synchronize()?;
        Ok(CudaBackend {
            gpu,
            cfg,
            opts,
            tok_embd,
            output_norm,
            lm_head,
            layers,
            kv,
            kv_shape,
            rope,
            s,
            n_past: 0,
            graphs: [None, None, None, None],
            step_on_device: None,
            id_slots: Vec::new(),
            queued: std::collections::VecDeque::new(),
            window_cap: 0,
            rule: None,
        })
    }

    /// The device this backend runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn options(&self) -> &CudaOptions {
        &self.opts
    }

    /// Runs the forward pass of `tokens` at `pos ..`, leaving the final hidden rows (after the
    /// output norm) of the last chunk in `s.xn`; returns the logits asked for.
    fn run(&mut self, tokens: &[u32], pos: usize, want: Logits) -> Result<Vec<f32>, CudaError> {
        let mut out = Vec::new();
        let n = tokens.len();
        let mut done = 0;
        while done < n {
            let t = (n - done).min(self.opts.max_batch);
            let chunk = &tokens[done..done + t];
            let last_chunk = done + t == n;
            self.layers_forward(Input::Host(chunk, pos + done))?;
            match want {
                Logits::All => self.logits_rows(0, t, &mut out)?,
                Logits::Last if last_chunk => self.logits_rows(t - 1, 1, &mut out)?,
                _ => {}
            }
            done += t;
        }
        Ok(out)
    }

    /// Embedding and every layer for the tokens of `input`; the residual stream ends in `s.x`.
    fn layers_forward(&mut self, input: Input) -> Result<(), CudaError> {
        let t = match input {
            Input::Host(chunk, _) => chunk.len(),
            Input::DeviceStep { .. } => 1,
        };
        let c = &self.cfg;
        let (d, qd, kvd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let gpu = &self.gpu;
        let s = &mut self.s;
        let (ids, rest) = s.step.split_at_mut(1);
        let step_pos = rest.slice(..1);
        // Whether a decode's output projection may combine the attention's splits.
        let short = match input {
            Input::Host(_, pos) => ops::decode_defers(pos + 1, self.opts.n_ctx, c.head_dim),
            Input::DeviceStep { short } => short,
        };
        let pos = match input {
            Input::Host(chunk, pos) => {
                gpu.stream()
                    .memcpy_htod(chunk, &mut s.ids.slice_mut(..t))
                    .map_err(CudaError::driver("copying token ids"))?;
                self.tok_embd
                    .lookup(gpu, &s.ids.slice(..t), &mut s.x.slice_mut(..t * d))?;
                Pos::Host(pos)
            }
            Input::DeviceStep { .. } => {
                self.tok_embd
                    .lookup(gpu, &ids.as_view(), &mut s.x.slice_mut(..d))?;
                Pos::Device(&step_pos)
            }
        };
        let lin = Linear {
            gpu,
            kind: self.opts.gemm,
            fuse: self.opts.fuse_epilogues,
        };
        for (li, l) in self.layers.iter().enumerate() {
            let biases = [l.bq.is_some(), l.bk.is_some(), l.bv.is_some()];
            if t == 1 && lin.fuse && ops::matvec_qkv_supported(&l.wq, &l.wk, &l.wv, biases) {
                // The attention norm, q, k and v (and their biases) in one launch.
                let bias_views = match (&l.bq, &l.bk, &l.bv) {
                    (Some(bq), Some(bk), Some(bv)) => {
                        Some((bq.as_view(), bk.as_view(), bv.as_view()))
                    }
                    _ => None,
                };
                ops::matvec_qkv(
                    gpu,
                    [&l.wq, &l.wk, &l.wv],
                    NormedInput {
                        x: &s.x.slice(..d),
                        weight: &l.attn_norm.as_view(),
                        eps: c.rms_eps,
                    },
                    &mut s.q.slice_mut(..qd),
                    &mut s.k.slice_mut(..kvd),
                    &mut s.v.slice_mut(..kvd),
                    bias_views.as_ref().map(|(a, b, c)| [a, b, c]),
                )?;
            } else {
                lin.normed(
                    &s.x.slice(..t * d),
                    &l.attn_norm.as_view(),
                    c.rms_eps,
                    &mut s.xn.slice_mut(..t * d),
                    t,
                    &mut s.gemm,
                )?;
                let xn = s.xn.slice(..t * d);
                let src = lin.input(t, &xn);
                // A prefill adds the biases in its RoPE and KV-append launches (`AttnStep`).
                let decode = t == 1;
                let projs = [
                    (
                        &l.wq,
                        s.q.slice_mut(..t * qd),
                        l.bq.as_ref().filter(|_| decode),
                    ),
                    (
                        &l.wk,
                        s.k.slice_mut(..t * kvd),
                        l.bk.as_ref().filter(|_| decode),
                    ),
                    (
                        &l.wv,
                        s.v.slice_mut(..t * kvd),
                        l.bv.as_ref().filter(|_| decode),
                    ),
                ];
                lin.run_each(src, t, projs, &mut s.gemm)?;
            }
            let step = AttnStep {
                gpu,
                shape: self.kv_shape,
                n_head: c.n_head,
                t,
                pos,
                rope: &self.rope,
                style: c.rope_style,
                mma: self.opts.prefill_mma,
                biases: [l.bq.as_ref(), l.bk.as_ref(), l.bv.as_ref()],
            };
            let mut q = s.q.slice_mut(..t * qd);
            let mut k = s.k.slice_mut(..t * kvd);
            let v = s.v.slice(..t * kvd);
            let mut out = s.attn.slice_mut(..t * qd);
            let dec = &mut s.dec;
            // Decode: the attention leaves its per-split partials; at short contexts the output
            // projection combines them as it reads them, otherwise `attention_combine` does.
            let defer = t == 1 && short && lin.fuse && ops::matvec_attn_supported(&l.wo);
            match &mut self.kv {
                KvCache::F16(ls) => {
                    step.run(&mut ls[li], &mut q, &mut k, &v, dec, &mut out, defer)?
                }
                KvCache::F32(ls) => {
                    step.run(&mut ls[li], &mut q, &mut k, &v, dec, &mut out, defer)?
                }
            }
            if t == 1 && !defer {
                ops::attention_combine(gpu, &s.dec, &mut s.attn.slice_mut(..qd))?;
            }
            if defer {
                ops::matvec_attn(gpu, &l.wo, &s.dec, &mut s.x.slice_mut(..d))?;
            } else {
                lin.run_residual(
                    &l.wo,
                    ProjInput::Rows(&s.attn.slice(..t * qd)),
                    &mut s.x.slice_mut(..t * d),
                    &mut s.proj.as_view_mut(),
                    t,
                    &mut s.gemm,
                )?;
            }

            let a8 = t == 1
                && lin.fuse
                && self.opts.ffn_a8
                && ops::swiglu_a8_supported(&l.gate, &l.up)
                && ops::matvec_a8_supported(&l.down);
            if a8 {
                // The FFN norm, gate, up and SwiGLU in one launch on 8-bit activations; the
                // down projection from its quantized output, into the residual.
                let inp = NormedInput {
                    x: &s.x.slice(..d),
                    weight: &l.ffn_norm.as_view(),
                    eps: c.rms_eps,
                };
                let hq = ops::A8Mut {
                    qs: &mut s.hq.slice_mut(..),
                    ds: &mut s.hqd.slice_mut(..),
                };
                ops::swiglu_a8(gpu, &l.gate, &l.up, inp, &mut s.h.slice_mut(..ff), hq)?;
                let x8 = ops::A8 {
                    qs: &s.hq.slice(..),
                    ds: &s.hqd.slice(..),
                };
                ops::matvec_a8(
                    gpu,
                    &l.down,
                    x8,
                    &mut s.x.slice_mut(..d),
                    MatvecOut::Accumulate,
                )?;
                continue;
            }
            if t == 1 && lin.fuse && ops::matvec_swiglu_supported(&l.gate, &l.up) {
                // The FFN norm, gate, up and SwiGLU in one launch.
                let inp = NormedInput {
                    x: &s.x.slice(..d),
                    weight: &l.ffn_norm.as_view(),
                    eps: c.rms_eps,
                };
                ops::matvec_swiglu(gpu, &l.gate, &l.up, inp, &mut s.h.slice_mut(..ff))?;
            } else {
                lin.normed(
                    &s.x.slice(..t * d),
                    &l.ffn_norm.as_view(),
                    c.rms_eps,
                    &mut s.xn.slice_mut(..t * d),
                    t,
                    &mut s.gemm,
                )?;
                let xn = s.xn.slice(..t * d);
                let projs = [
                    (&l.gate, s.gate.slice_mut(..t * ff), None),
                    (&l.up, s.up.slice_mut(..t * ff), None),
                ];
                lin.run_each(lin.input(t, &xn), t, projs, &mut s.gemm)?;
                lin.swiglu(
                    &s.gate.slice(..t * ff),
                    &s.up.slice(..t * ff),
                    ff,
                    &mut s.h.slice_mut(..t * ff),
                    t,
                    &mut s.gemm,
                )?;
            }
            let h = s.h.slice(..t * ff);
            lin.run_residual(
                &l.down,
                lin.input(t, &h),
                &mut s.x.slice_mut(..t * d),
                &mut s.proj.as_view_mut(),
                t,
                &mut s.gemm,
            )?;
        }
        Ok(())
    }

    /// Output norm and LM head for rows `first .. first + rows` of the last chunk (in `s.x`),
    /// appended to `out` (row-major, `n_vocab` per row), `LOGIT_ROWS` rows per GEMM.
    fn logits_rows(
        &mut self,
        first: usize,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), CudaError> {
        let mut r = first;
        while r < first + rows {
            let m = (first + rows - r).min(LOGIT_ROWS);
            self.logits_device(r, m)?;
            let nv = self.cfg.n_vocab;
            let host = self.gpu.download(&self.s.logits.slice(..m * nv))?;
            out.extend_from_slice(&host);
            r += m;
        }
        Ok(())
    }

    /// Output norm and LM head for `m ≤ LOGIT_ROWS` rows starting at row `r` of `s.x`, into
    /// `s.logits[.. m * n_vocab]`, on the device.
    fn logits_device(&mut self, r: usize, m: usize) -> Result<(), CudaError> {
        let (d, nv) = (self.cfg.n_embd, self.cfg.n_vocab);
        let gpu = &self.gpu;
        let s = &mut self.s;
        ops::rms_norm(
            gpu,
            &s.x.slice(r * d..(r + m) * d),
            &self.output_norm.as_view(),
            self.cfg.rms_eps,
            &mut s.xn.slice_mut(..m * d),
        )?;
        let mut lv = s.logits.slice_mut(..m * nv);
        match &self.lm_head {
            LmHead::F16(w) => {
                ops::f32_to_f16(
                    gpu,
                    &s.xn.slice(..m * d),
                    &mut s.gemm.x16.slice_mut(..m * d),
                )?;
                gemm(
                    gpu,
                    GemmKind::F16F32,
                    &w.as_view(),
                    &s.gemm.x16.slice(..m * d),
                    &mut lv,
                    nv,
                    d,
                    m,
                )?;
            }
            LmHead::F32(w) => {
                gemm(
                    gpu,
                    self.opts.lm_head,
                    &w.as_view(),
                    &s.xn.slice(..m * d),
                    &mut lv,
                    nv,
                    d,
                    m,
                )?;
            }
            LmHead::Q8(w) => {
                for i in 0..m {
                    ops::matvec_q8p(
                        gpu,
                        w,
                        &s.xn.slice(i * d..(i + 1) * d),
                        &mut s.logits.slice_mut(i * nv..(i + 1) * nv),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn begin(&mut self, tokens: &[u32], pos: usize) -> Result<(), BackendError> {
        check_forward(tokens, pos, self.n_past, self.capacity(), self.cfg.n_vocab)?;
        // Positions from `pos` on are about to be rewritten; until the forward succeeds the cache
        // only vouches for `0 .. pos`.
        self.n_past = pos;
        Ok(())
    }

    /// Forward pass whose last row's next token is chosen on the device: greedy (`sample` =
    /// `None`) or by the sampler's chain with the uniform draw `u` ([`ops::sample`]; its
    /// repetition penalty applies to the window [`CudaBackend::set_window`] set, which each
    /// choice joins). Copies back one token id, not the logits. A single-token step replays the
    /// captured decode graph
    /// ([`CudaOptions::decode_graph`]); the token and position it reads are uploaded only when
    /// the device does not already hold them (it does when `tokens` is the id the previous step
    /// returned, at the next position). Steps still queued by [`CudaBackend::queue_next`] run
    /// first and their ids are dropped.
    pub fn forward_next(
        &mut self,
        tokens: &[u32],
        pos: usize,
        sample: Option<(SampleParams, f32)>,
    ) -> Result<u32, BackendError> {
        self.queue_next(Feed::Tokens(tokens), pos, sample)?;
        let mut id = self.take_next()?;
        while !self.queued.is_empty() {
            id = self.take_next()?;
        }
        Ok(id)
    }

    /// Queues what [`CudaBackend::forward_next`] does and returns as soon as the work is on the
    /// stream: the host can queue the next step, fed the token this one chooses
    /// ([`Feed::Chosen`]), before it reads this one's id with [`CudaBackend::take_next`]. Ids come
    /// back in order; at most [`MAX_QUEUED`] steps wait to be taken. The cache holds `pos + len`
    /// positions from the moment the step is queued.
    pub fn queue_next(
        &mut self,
        feed: Feed<'_>,
        pos: usize,
        sample: Option<(SampleParams, f32)>,
    ) -> Result<(), BackendError> {
        if self.queued.len() >= MAX_QUEUED {
            return Err(BackendError::Device(format!(
                "{MAX_QUEUED} decode steps are already queued: take their ids first"
            )));
        }
        if let Some((p, _)) = sample
            && p.repeat_penalty != 1.0
            && self.window_cap == 0
        {
            return Err(BackendError::Device(format!(
                "a repeat penalty of {} needs the window of recent tokens: set it first \
                 (`set_window`)",
                p.repeat_penalty
            )));
        }
        let n_tok = match feed {
            Feed::Tokens(tokens) => {
                self.begin(tokens, pos)?;
                tokens.len()
            }
            Feed::Chosen => {
                // The token is the one the step queued last chose, which the device holds with
                // its position; it comes from `n_vocab` logits (a "none" reads as token 0 and is
                // refused by `take_next`).
                if !self.opts.decode_graph || self.step_on_device.map(|s| s.1) != Some(pos) {
                    return Err(BackendError::Device(format!(
                        "no token chosen on the device for position {pos}: queue the step at \
                         position {} first (with the decode graph on)",
                        pos.saturating_sub(1)
                    )));
                }
                self.begin(&[0], pos)?;
                1
            }
        };
        let graphed = n_tok == 1 && self.opts.decode_graph;
        if graphed {
            if let Feed::Tokens(tokens) = feed {
                let want = (Some(tokens[0]), pos);
                if self.step_on_device != Some(want) {
                    // pos < n_ctx (checked by `begin`), which fits in u32 (the kernels' indices).
                    let p = u32::try_from(pos).map_err(|_| {
                        BackendError::Device(format!("position {pos} does not fit in 32 bits"))
                    })?;
                    self.gpu
                        .stream()
                        .memcpy_htod(&[tokens[0], p], &mut self.s.step.slice_mut(..2))
                        .map_err(CudaError::driver(
                            "copying the decode step's token and position",
                        ))?;
                }
            }
            self.step_on_device = None; // until this step is queued
            let greedy = sample.is_none();
            let short = ops::decode_defers(pos + 1, self.opts.n_ctx, self.cfg.head_dim);
            let which = usize::from(greedy) + 2 * usize::from(short);
            if self.graphs[which].is_none() {
                self.graphs[which] = Some(self.capture_step(greedy, short)?);
            }
            if let Some(g) = &self.graphs[which] {
                g.launch()
                    .map_err(CudaError::driver("launching the decode graph"))?;
            }
        } else {
            let Feed::Tokens(tokens) = feed else {
                unreachable!("a chosen token is only fed to the decode graph (checked above)")
            };
            self.step_on_device = None;
            self.run(tokens, pos, Logits::None)?;
            let t = (tokens.len() - 1) % self.opts.max_batch;
            self.logits_device(t, 1)?;
        }
        // The greedy graph ends with its argmax.
        if !(graphed && sample.is_none()) {
            self.choose_on_device(sample, graphed)?;
        }
        let (_, chosen) = self.s.step.split_at(2);
        let slot =
            match (0..self.id_slots.len()).find(|i| !self.queued.iter().any(|q| q.slot == *i)) {
                Some(i) => i,
                None => {
                    self.id_slots
                        .push(self.gpu.host_slot(1, "a chosen token id")?);
                    self.id_slots.len() - 1
                }
            };
        self.gpu
            .download_to_slot(&chosen, &mut self.id_slots[slot])?;
        self.queued.push_back(Queued {
            slot,
            pos: pos + n_tok - 1,
        });
        if graphed {
            self.step_on_device = Some((None, pos + 1));
        }
        self.n_past = pos + n_tok;
        Ok(())
    }

    /// Sets the device sampler's repetition-penalty window to the last `cap` of `tokens` (at most
    /// [`ops::MAX_HISTORY`]; 0 empties it). Each sampled choice joins it, the oldest token leaving.
    /// Steps still queued run first.
    pub fn set_window(&mut self, tokens: &[u32], cap: usize) -> Result<(), BackendError> {
        if cap > ops::MAX_HISTORY {
            return Err(BackendError::Device(format!(
                "a repetition-penalty window of {cap} tokens: the device sampler takes at most {}",
                ops::MAX_HISTORY
            )));
        }
        let tail = &tokens[tokens.len() - tokens.len().min(cap)..];
        let mut w = Vec::with_capacity(1 + tail.len());
        w.push(tail.len() as u32);
        w.extend_from_slice(tail);
        self.gpu
            .stream()
            .memcpy_htod(&w, &mut self.s.window.slice_mut(..w.len()))
            .map_err(CudaError::driver("copying the repetition-penalty window"))?;
        self.window_cap = cap;
        Ok(())
    }

    /// The id the oldest step queued by [`CudaBackend::queue_next`] chose (waits for it). A
    /// device sampler that found no candidate (every logit NaN) is an error, and the steps
    /// queued after it are dropped with the positions from its own on (they were fed no token).
    pub fn take_next(&mut self) -> Result<u32, BackendError> {
        let q = self.queued.pop_front().ok_or_else(|| {
            BackendError::Device("no decode step is queued: nothing to take".into())
        })?;
        let id = self.id_slots[q.slot].wait()?[0];
        if id as usize >= self.cfg.n_vocab {
            self.queued.clear();
            self.step_on_device = None;
            self.n_past = self.n_past.min(q.pos + 1);
            return Err(BackendError::Device(format!(
                "the device chose no token after position {} (id {id:#x}: every logit NaN?)",
                q.pos
            )));
        }
        if self.queued.is_empty()
            && let Some((None, p)) = self.step_on_device
        {
            self.step_on_device = Some((Some(id), p));
        }
        Ok(id)
    }

    /// The logits the last [`CudaBackend::forward_next`] computed (for tests: the graph-replayed
    /// step leaves them on the device), after the repetition penalty when it sampled with one.
    pub fn next_logits(&self) -> Result<Vec<f32>, BackendError> {
        Ok(self
            .gpu
            .download(&self.s.logits.slice(..self.cfg.n_vocab))?)
    }

    /// Chooses the next token from the last logits on the device into `s.step[2]`: their argmax
    /// (`sample` = `None`) or [`ops::sample`] with the penalty window [`CudaBackend::set_window`]
    /// set; with `feed`, also into the next decode step's `[token, position]` (`s.step[..2]`).
    fn choose_on_device(
        &mut self,
        sample: Option<(SampleParams, f32)>,
        feed: bool,
    ) -> Result<(), CudaError> {
        let nv = self.cfg.n_vocab;
        let (mut next, mut chosen) = self.s.step.split_at_mut(2);
        let next = feed.then_some(&mut next);
        match sample {
            None => {
                let lv = self.s.logits.slice(..nv);
                ops::argmax(&self.gpu, &lv, &mut self.s.sel, &mut chosen, next)
            }
            Some((p, u)) => {
                let mut lv = self.s.logits.slice_mut(..nv);
                let mut window = self.s.window.slice_mut(..1 + self.window_cap);
                let window = (p.repeat_penalty != 1.0).then_some(&mut window);
                ops::sample(
                    &self.gpu,
                    &mut lv,
                    p,
                    u,
                    window,
                    &mut self.s.sel,
                    &mut chosen,
                    next,
                )
            }
        }
    }

    /// Captures one decode step (embedding of `s.step[0]` at position `s.step[1]`, every layer,
    /// output norm, LM head into `s.logits`) as a CUDA graph; with `argmax`, also the logits'
    /// argmax into `s.step[2]`, fed to the next step (`s.step[0]`, position advanced). A `short`
    /// graph is for positions where the output projection combines the attention's splits
    /// (`ops::decode_defers`) and only replayed there.
    fn capture_step(
        &mut self,
        argmax: bool,
        short: bool,
    ) -> Result<cudarc::driver::CudaGraph, CudaError> {
        // Anything queued before (weights, uploads) runs first, outside the graph.
        self.gpu.synchronize()?;
        self.gpu.begin_capture()?;
        let r = self
            .layers_forward(Input::DeviceStep { short })
            .and_then(|()| self.logits_device(0, 1))
            .and_then(|()| {
                if argmax {
                    self.choose_on_device(None, true)
                } else {
                    Ok(())
                }
            });
        let g = self.gpu.end_capture();
        r?;
        g
    }
}

/// Where a forward's tokens and position come from.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// Token ids from the host at positions `pos ..`.
    Host(&'a [u32], usize),
    /// One token and its position in device memory (`s.step`): the replayable decode step, for
    /// positions where the attention may leave its combine to the output projection (`short`:
    /// `ops::decode_defers`) or for any.
    DeviceStep { short: bool },
}

/// RoPE, KV append and attention of one layer for `t` tokens at `pos ..`: decode (`t = 1`: one
/// fused launch) or prefill (RoPE on q and k, the append, the prefill kernel).
struct AttnStep<'a> {
    gpu: &'a Gpu,
    shape: KvShape,
    n_head: usize,
    t: usize,
    pos: Pos<'a>,
    rope: &'a RopeTable,
    style: crate::model::RopeStyle,
    /// [`CudaOptions::prefill_mma`].
    mma: bool,
    /// The q, k and v biases, which a prefill (`t > 1`) adds in its RoPE and KV-append launches
    /// (its projections leave them out); a decode's projections add them.
    biases: [Option<&'a CudaSlice<f32>>; 3],
}

impl AttnStep<'_> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: KvElem>(
        &self,
        cache: &mut KvLayer<T>,
        q: &mut CudaViewMut<f32>,
        k: &mut CudaViewMut<f32>,
        v: &CudaView<f32>,
        dec: &mut DecodeScratch,
        out: &mut CudaViewMut<f32>,
        defer: bool,
    ) -> Result<(), CudaError> {
        if self.t == 1 {
            let at = match self.pos {
                Pos::Host(pos) => DecodeAt::Kv(pos + 1),
                Pos::Device(p) => DecodeAt::Device(p),
            };
            let (qv, kv) = (q.as_view(), k.as_view());
            let tok = ops::NewToken {
                q: &qv,
                k: &kv,
                v,
                rope: self.rope,
                style: self.style,
            };
            return ops::attention_decode(
                self.gpu,
                tok,
                cache,
                self.shape,
                self.n_head,
                at,
                dec,
                out,
                defer,
            );
        }
        let Pos::Host(pos) = self.pos else {
            return Err(CudaError::Shape {
                kernel: "attention_prefill",
                problem: "a prefill takes its position from the host".into(),
            });
        };
        // The projections' biases are added here, by the launches that read q, k and v next.
        let [bq, bk, bv] = self.biases.map(|b| b.map(|b| b.as_view()));
        let rope = |x: &mut CudaViewMut<f32>, b: &Option<CudaView<f32>>, n_head| {
            ops::rope(self.gpu, x, b.as_ref(), self.rope, n_head, pos, self.style)
        };
        rope(q, &bq, self.n_head)?;
        rope(k, &bk, self.shape.n_head_kv)?;
        let kv = k.as_view();
        ops::kv_append(self.gpu, &kv, v, bv.as_ref(), cache, self.shape, pos)?;
        let prefill = if self.mma && T::PREFILL_MMA.is_some() {
            ops::attention_prefill_mma::<T>
        } else {
            ops::attention_prefill::<T>
        };
        prefill(
            self.gpu,
            &q.as_view(),
            cache,
            self.shape,
            self.n_head,
            pos,
            out,
        )
    }
}

/// One projection of [`Linear::run_each`]: the weight, its output rows and its bias.
type Projection<'a> = (
    &'a DeviceTensor,
    CudaViewMut<'a, f32>,
    Option<&'a CudaSlice<f32>>,
);

/// A projection's input rows: f32 rows, or already in the GEMM's split-f16 form in the GEMM
/// scratch (written there by a fused kernel: [`Linear::normed`], `swiglu_f16x3`).
#[derive(Clone, Copy)]
enum ProjInput<'a, 'b> {
    Rows(&'a CudaView<'b, f32>),
    Converted,
}

impl<'a, 'b> ProjInput<'a, 'b> {
    /// The f32 rows, for the paths that read them (matvecs, f32 GEMMs).
    fn rows(self, w: &DeviceTensor) -> Result<&'a CudaView<'b, f32>, CudaError> {
        match self {
            ProjInput::Rows(x) => Ok(x),
            ProjInput::Converted => Err(CudaError::Shape {
                kernel: "linear",
                problem: format!("{}: f32 rows needed, the input is split f16", w.name),
            }),
        }
    }
}

/// The `linear` step: `y[t, n] = x[t, k] · W[n, k]ᵀ`.
struct Linear<'a> {
    gpu: &'a Gpu,
    kind: GemmKind,
    /// [`CudaOptions::fuse_epilogues`].
    fuse: bool,
}

impl Linear<'_> {
    /// Whether a `t`-row projection input is written straight into the GEMM's split-f16 form by
    /// the fused kernels (`rms_norm_f16x3`, `swiglu_f16x3`): prefill chunks with
    /// [`GemmKind::F16x3`].
    fn split_input(&self, t: usize) -> bool {
        t > 1 && self.kind == GemmKind::F16x3
    }

    /// A projection's input for `t` rows: already in the GEMM scratch in split-f16 form when
    /// [`Linear::split_input`] (written there by [`Linear::normed`] or [`Linear::swiglu`]),
    /// otherwise the f32 `rows` they wrote.
    fn input<'a, 'b>(&self, t: usize, rows: &'a CudaView<'b, f32>) -> ProjInput<'a, 'b> {
        if self.split_input(t) {
            ProjInput::Converted
        } else {
            ProjInput::Rows(rows)
        }
    }

    /// `rms_norm(x) ∘ w` as the input of the projections that follow: into the GEMM scratch in
    /// split-f16 form when [`Linear::split_input`] (one launch), otherwise into `xn`.
    fn normed(
        &self,
        x: &CudaView<f32>,
        w: &CudaView<f32>,
        eps: f32,
        xn: &mut CudaViewMut<f32>,
        t: usize,
        g: &mut GemmScratch,
    ) -> Result<(), CudaError> {
        if self.split_input(t) {
            let mut x3 = g.x16.slice_mut(..3 * x.len());
            return ops::rms_norm_f16x3(self.gpu, x, w, eps, &mut x3);
        }
        ops::rms_norm(self.gpu, x, w, eps, xn)
    }

    /// `silu(gate) · up` (rows of `k`) as the input of the down projection: as
    /// [`Linear::normed`], into the GEMM scratch in split-f16 form when
    /// [`Linear::split_input`] (one launch), otherwise into `h`.
    fn swiglu(
        &self,
        gate: &CudaView<f32>,
        up: &CudaView<f32>,
        k: usize,
        h: &mut CudaViewMut<f32>,
        t: usize,
        g: &mut GemmScratch,
    ) -> Result<(), CudaError> {
        if self.split_input(t) {
            let mut h3 = g.x16.slice_mut(..3 * up.len());
            return ops::swiglu_f16x3(self.gpu, gate, up, k, &mut h3);
        }
        ops::swiglu(self.gpu, gate, up, h)
    }

    /// `resid += x Wᵀ`; for `t = 1` inside the matvec (or, unfused, through `tmp`, one row, and
    /// an add), otherwise by the GEMM adding to `resid` itself (the same f32 additions either
    /// way).
    fn run_residual(
        &self,
        w: &DeviceTensor,
        src: ProjInput,
        resid: &mut CudaViewMut<f32>,
        tmp: &mut CudaViewMut<f32>,
        t: usize,
        g: &mut GemmScratch,
    ) -> Result<(), CudaError> {
        if t == 1 {
            let x = src.rows(w)?;
            if self.fuse {
                return ops::matvec_with(self.gpu, w, x, resid, MatvecOut::Accumulate);
            }
            ops::matvec(self.gpu, w, x, tmp)?;
            return ops::add(self.gpu, resid, &tmp.as_view());
        }
        if let ProjInput::Rows(x) = src {
            self.convert(x, t, w.cols, g)?;
        }
        self.gemm_converted(w, src, resid, t, g, true)
    }

    /// Projections of the same rows (q, k and v; gate and up): `y = x Wᵀ + bias` each (the bias
    /// broadcast over the `t` rows); for `t > 1` the activations converted to the GEMM's input
    /// form once for all of them (or already converted: [`ProjInput::Converted`]), for `t = 1`
    /// matvecs.
    fn run_each<const N: usize>(
        &self,
        src: ProjInput,
        t: usize,
        projs: [Projection<'_>; N],
        g: &mut GemmScratch,
    ) -> Result<(), CudaError> {
        if t > 1 {
            let k = projs.first().map_or(0, |p| p.0.cols);
            if let Some(p) = projs.iter().find(|p| p.0.cols != k) {
                return Err(CudaError::Shape {
                    kernel: "linear",
                    problem: format!(
                        "{} has {} columns, not the shared input's {k}",
                        p.0.name, p.0.cols
                    ),
                });
            }
            if let ProjInput::Rows(x) = src {
                self.convert(x, t, k, g)?;
            }
        }
        for (w, mut y, bias) in projs {
            if t > 1 {
                self.gemm_converted(w, src, &mut y, t, g, false)?;
            } else if self.fuse {
                // The bias added inside the matvec (one launch, the same f32 addition).
                let bv = bias.map(|b| b.as_view());
                let out = bv.as_ref().map_or(MatvecOut::Store, MatvecOut::Bias);
                ops::matvec_with(self.gpu, w, src.rows(w)?, &mut y, out)?;
                continue;
            } else {
                ops::matvec(self.gpu, w, src.rows(w)?, &mut y)?;
            }
            if let Some(b) = bias {
                ops::add(self.gpu, &mut y, &b.as_view())?;
            }
        }
        Ok(())
    }

    /// The `t` rows of `k` activations `x` in the GEMM's input form, in `g.x16` (split f16 for
    /// [`GemmKind::F16x3`], f16 for [`GemmKind::F16F32`]; the f32 kinds read `x` itself).
    fn convert(
        &self,
        x: &CudaView<f32>,
        t: usize,
        k: usize,
        g: &mut GemmScratch,
    ) -> Result<(), CudaError> {
        match self.kind {
            GemmKind::F16x3 => {
                let mut xs = g.x16.slice_mut(..3 * t * k);
                ops::f32_to_f16x3(self.gpu, x, k, &mut xs)
            }
            GemmKind::F16F32 => {
                let mut xh = g.x16.slice_mut(..t * k);
                ops::f32_to_f16(self.gpu, x, &mut xh)
            }
            _ => Ok(()),
        }
    }

    /// `y = x Wᵀ` (`acc`: `y += x Wᵀ`) for `t > 1` rows: `W` decoded into `g`'s scratch, the
    /// activations as [`Linear::convert`] left them.
    fn gemm_converted(
        &self,
        w: &DeviceTensor,
        src: ProjInput,
        y: &mut CudaViewMut<f32>,
        t: usize,
        g: &mut GemmScratch,
        acc: bool,
    ) -> Result<(), CudaError> {
        let (n, k) = (w.rows, w.cols);
        if matches!(src, ProjInput::Converted) && self.kind != GemmKind::F16x3 {
            return Err(CudaError::Shape {
                kernel: "linear",
                problem: format!("{}: a split-f16 input for a {:?} GEMM", w.name, self.kind),
            });
        }
        // Store or accumulate, for f16-bit (u16) or f32 operands.
        let run16 = if acc {
            gemm_accumulate::<u16, f32>
        } else {
            gemm::<u16, f32>
        };
        let run32 = if acc {
            gemm_accumulate::<f32, f32>
        } else {
            gemm::<f32, f32>
        };
        match self.kind {
            GemmKind::F16x3 => {
                let mut wd = g.w16.slice_mut(..3 * n * k);
                ops::dequant(self.gpu, w, None, DequantOut::F16x3(&mut wd))?;
                let (wv, xv) = (g.w16.slice(..3 * n * k), g.x16.slice(..3 * t * k));
                run16(self.gpu, GemmKind::F16x3, &wv, &xv, y, n, k, t)
            }
            GemmKind::F16F32 => {
                let mut wd = g.w16.slice_mut(..n * k);
                ops::dequant(self.gpu, w, None, DequantOut::F16(&mut wd))?;
                let (wv, xv) = (g.w16.slice(..n * k), g.x16.slice(..t * k));
                run16(self.gpu, GemmKind::F16F32, &wv, &xv, y, n, k, t)
            }
            kind => {
                let mut wd = g.w32.slice_mut(..n * k);
                ops::dequant(self.gpu, w, None, DequantOut::F32(&mut wd))?;
                run32(
                    self.gpu,
                    kind,
                    &g.w32.slice(..n * k),
                    src.rows(w)?,
                    y,
                    n,
                    k,
                    t,
                )
            }
        }
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn capacity(&self) -> usize {
        self.opts.n_ctx
    }

    fn n_past(&self) -> usize {
        self.n_past
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logits: Logits,
    ) -> Result<Vec<f32>, BackendError> {
        self.begin(tokens, pos)?;
        let out = self.run(tokens, pos, logits)?;
        self.gpu.synchronize()?;
        // The steps still queued have run: their ids are dropped.
        self.queued.clear();
        self.n_past = pos + tokens.len();
        Ok(out)
    }

    fn reset(&mut self) {
        self.queued.clear();
        self.n_past = 0;
    }

    fn device_steps(&mut self) -> Option<&mut dyn DeviceSteps> {
        // A chosen token is fed to the next step only by the decode graph.
        if self.opts.decode_graph {
            Some(self)
        } else {
            None
        }
    }
}

impl DeviceSteps for CudaBackend {
    fn can_choose(&self, cfg: &SamplerConfig) -> bool {
        let penalty = cfg.repeat_penalty != 1.0 && cfg.repeat_last_n > 0;
        cfg.validate().is_ok()
            && (cfg.is_greedy() || (1..=ops::MAX_TOP_K.min(self.cfg.n_vocab)).contains(&cfg.top_k))
            && (!penalty || cfg.repeat_last_n <= ops::MAX_HISTORY)
    }

    fn set_rule(&mut self, cfg: &SamplerConfig, history: &[u32]) -> Result<(), BackendError> {
        if !self.can_choose(cfg) {
            return Err(BackendError::Device(format!(
                "the device sampler does not take {cfg:?} (top-k 1..={}, a penalty window of at \
                 most {} tokens)",
                ops::MAX_TOP_K,
                ops::MAX_HISTORY
            )));
        }
        let penalty = cfg.repeat_penalty != 1.0 && cfg.repeat_last_n > 0;
        self.rule = SampleParams::of(cfg);
        self.set_window(history, if penalty { cfg.repeat_last_n } else { 0 })
    }

    fn queue_step(&mut self, token: Option<u32>, pos: usize, u: f64) -> Result<(), BackendError> {
        // The largest f32 below 1: an f64 just under 1 must not round up to it.
        let u = (u as f32).min(1.0 - f32::EPSILON / 2.0);
        let choice = self.rule.map(|p| (p, u));
        match token {
            Some(t) => self.queue_next(Feed::Tokens(&[t]), pos, choice),
            None => self.queue_next(Feed::Chosen, pos, choice),
        }
    }

    fn take_step(&mut self) -> Result<u32, BackendError> {
        self.take_next()
    }
}

/// Device memory a [`CudaBackend`] holds, in bytes, by what it is for (the sizes of its buffers;
/// the CUDA context, the kernel module and cuBLAS's workspace are not included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The model's weights as uploaded (quantized matrices, f32 norms and biases).
    pub weights: usize,
    /// The LM head's decoded copy.
    pub lm_head: usize,
    /// The KV cache, every layer, K and V.
    pub kv_cache: usize,
    /// Activations, decoded-weight and logits buffers, attention partials, the RoPE table.
    pub scratch: usize,
}

impl MemoryUse {
    pub fn total(&self) -> usize {
        self.weights + self.lm_head + self.kv_cache + self.scratch
    }
}

impl CudaBackend {
    /// The device memory this backend's buffers occupy (allocated once at load).
    pub fn memory_use(&self) -> MemoryUse {
        let opt = |b: &Option<CudaSlice<f32>>| b.as_ref().map_or(0, |b| b.num_bytes());
        let weights = self.tok_embd.own_bytes()
            + self.output_norm.num_bytes()
            + self
                .layers
                .iter()
                .map(|l| {
                    [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                        .iter()
                        .map(|t| t.data.num_bytes())
                        .sum::<usize>()
                        + l.attn_norm.num_bytes()
                        + l.ffn_norm.num_bytes()
                        + opt(&l.bq)
                        + opt(&l.bk)
                        + opt(&l.bv)
                })
                .sum::<usize>();
        let lm_head = match &self.lm_head {
            LmHead::F16(w) => w.num_bytes(),
            LmHead::F32(w) => w.num_bytes(),
            LmHead::Q8(w) => w.bytes(),
        };
        let kv_cache = match &self.kv {
            KvCache::F16(ls) => ls.iter().map(|l| l.k.num_bytes() + l.v.num_bytes()).sum(),
            KvCache::F32(ls) => ls.iter().map(|l| l.k.num_bytes() + l.v.num_bytes()).sum(),
        };
        let s = &self.s;
        let scratch = s.ids.num_bytes()
            + [
                &s.x,
                &s.xn,
                &s.q,
                &s.k,
                &s.v,
                &s.attn,
                &s.proj,
                &s.gate,
                &s.up,
                &s.h,
                &s.gemm.w32,
                &s.logits,
            ]
            .iter()
            .map(|b| b.num_bytes())
            .sum::<usize>()
            + s.gemm.w16.num_bytes()
            + s.gemm.x16.num_bytes()
            + s.hq.num_bytes()
            + s.hqd.num_bytes()
            + s.dec.bytes()
            + s.sel.bytes()
            + s.window.num_bytes()
            + s.step.num_bytes()
            + self.rope.data.num_bytes();
        MemoryUse {
            weights,
            lm_head,
            kv_cache,
            scratch,
        }
    }
}
