//! [`CpuBackend`]: the full forward pass of `qwen2` and `llama` on the CPU.
//!
//! Weights stay in the memory-mapped file (matrix products read quantized rows directly); only
//! the small vectors (norm weights, biases) are decoded to f32 at load. The KV cache is f32, one
//! `[position][n_head_kv * head_dim]` array per layer for keys and one for values, grown as
//! positions are filled (so resident memory is the file's touched pages plus the positions used).

use std::sync::Arc;

use rayon::prelude::*;

use super::matmul::{Arith, Input, Matrix, matmul};
use super::ops;
use crate::backend::{Backend, BackendError, Logits, check_forward};
use crate::gguf::{Gguf, TensorInfo};
use crate::model::{Config, Weights};
use crate::quant::dequantize_row_to_vec;

/// How to build a [`CpuBackend`].
#[derive(Clone, Debug, Default)]
pub struct CpuOptions {
    /// KV cache capacity in positions; 0 = the model's training context.
    pub n_ctx: usize,
    /// Worker threads; 0 = rayon's global pool (one per core).
    pub threads: usize,
    /// Arithmetic of the matrix products.
    pub arith: Arith,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    o: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The CPU backend for one sequence.
pub struct CpuBackend {
    gguf: Arc<Gguf>,
    cfg: Config,
    token_embd: Matrix,
    output_norm: Vec<f32>,
    output: Matrix,
    layers: Vec<Layer>,
    /// Per layer: `n_past * kv_dim` values.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    n_past: usize,
    capacity: usize,
    pool: Option<rayon::ThreadPool>,
    arith: Arith,
    scratch: Vec<f32>,
}

fn matrix(g: &Gguf, t: &TensorInfo) -> Result<Matrix, BackendError> {
    let cols = t.row_len() as usize;
    let rows = t.n_rows() as usize;
    let row_bytes = t
        .ggml_type
        .row_bytes(cols)
        .ok_or_else(|| BackendError::Tensor {
            tensor: t.name.clone(),
            problem: format!(
                "rows of {cols} are not whole {} blocks",
                t.ggml_type.block_size()
            ),
        })?;
    let start = (g.header.data_start + t.offset) as usize;
    Ok(Matrix {
        name: t.name.clone(),
        ty: t.ggml_type,
        rows,
        cols,
        row_bytes,
        start,
        end: start + rows * row_bytes,
    })
}

fn vector(g: &Gguf, t: &TensorInfo) -> Result<Vec<f32>, BackendError> {
    dequantize_row_to_vec(t.ggml_type, g.tensor_data(t), t.n_elements as usize).map_err(|e| {
        BackendError::Tensor {
            tensor: t.name.clone(),
            problem: e.to_string(),
        }
    })
}

impl CpuBackend {
    /// Maps the model's weights (checking every tensor) and sets up an empty KV cache.
    pub fn load(gguf: Arc<Gguf>, opts: &CpuOptions) -> Result<Self, BackendError> {
        let cfg = Config::from_header(&gguf.header)?;
        let w = Weights::from_header(&gguf.header, &cfg)?;
        let g = gguf.as_ref();
        let opt = |t: &Option<TensorInfo>| t.as_ref().map(|t| vector(g, t)).transpose();
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: vector(g, &l.attn_norm)?,
                    q: matrix(g, &l.attn_q)?,
                    k: matrix(g, &l.attn_k)?,
                    v: matrix(g, &l.attn_v)?,
                    q_bias: opt(&l.attn_q_bias)?,
                    k_bias: opt(&l.attn_k_bias)?,
                    v_bias: opt(&l.attn_v_bias)?,
                    o: matrix(g, &l.attn_output)?,
                    ffn_norm: vector(g, &l.ffn_norm)?,
                    gate: matrix(g, &l.ffn_gate)?,
                    up: matrix(g, &l.ffn_up)?,
                    down: matrix(g, &l.ffn_down)?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let pool = if opts.threads > 0 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(opts.threads)
                    .build()
                    .map_err(|e| BackendError::Device(format!("thread pool: {e}")))?,
            )
        } else {
            None
        };
        let capacity = if opts.n_ctx == 0 {
            cfg.n_ctx_train
        } else {
            opts.n_ctx
        };
        Ok(CpuBackend {
            token_embd: matrix(g, &w.token_embd)?,
            output_norm: vector(g, &w.output_norm)?,
            output: matrix(g, &w.output)?,
            k_cache: vec![Vec::new(); cfg.n_layer],
            v_cache: vec![Vec::new(); cfg.n_layer],
            layers,
            n_past: 0,
            capacity,
            pool,
            arith: opts.arith,
            scratch: Vec::new(),
            cfg,
            gguf,
        })
    }

    /// The file the weights live in.
    pub fn gguf(&self) -> &Arc<Gguf> {
        &self.gguf
    }

    fn forward_inner(
        &mut self,
        tokens: &[u32],
        pos: usize,
        which: Logits,
    ) -> Result<Vec<f32>, BackendError> {
        let c = &self.cfg;
        let (n, d) = (tokens.len(), c.n_embd);
        let (q_dim, kv_dim, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let bytes = self.gguf.bytes();
        let data = |m: &Matrix| &bytes[m.start..m.end];
        let scratch = &mut self.scratch;

        let mut x = vec![0.0f32; n * d];
        let embd = &self.token_embd;
        for (xi, &t) in x.chunks_exact_mut(d).zip(tokens) {
            ops::embedding(embd.ty, data(embd), t, xi)?;
        }
        let positions: Vec<usize> = (pos..pos + n).collect();
        let mut h = vec![0.0f32; n * d];
        let mut q = vec![0.0f32; n * q_dim];
        let mut k = vec![0.0f32; n * kv_dim];
        let mut v = vec![0.0f32; n * kv_dim];
        let mut att = vec![0.0f32; n * q_dim];
        let mut proj = vec![0.0f32; n * d];
        let mut gate = vec![0.0f32; n * c.n_ff];
        let mut up = vec![0.0f32; n * c.n_ff];
        let mut act = vec![0.0f32; n * c.n_ff];
        let ar = self.arith;
        for (li, l) in self.layers.iter().enumerate() {
            ops::rms_norm(&x, &l.attn_norm, c.rms_eps, &mut h);
            let mut hin = Input::new(&h, d);
            matmul(ar, &l.q, data(&l.q), &mut hin, &mut q, scratch)?;
            matmul(ar, &l.k, data(&l.k), &mut hin, &mut k, scratch)?;
            matmul(ar, &l.v, data(&l.v), &mut hin, &mut v, scratch)?;
            for (t, b) in [
                (&mut q, &l.q_bias),
                (&mut k, &l.k_bias),
                (&mut v, &l.v_bias),
            ] {
                if let Some(b) = b {
                    ops::add(t, b);
                }
            }
            ops::rope(&mut q, c.n_head, hd, &positions, c.rope_theta, c.rope_style);
            ops::rope(
                &mut k,
                c.n_head_kv,
                hd,
                &positions,
                c.rope_theta,
                c.rope_style,
            );
            let (kc, vc) = (&mut self.k_cache[li], &mut self.v_cache[li]);
            kc.truncate(pos * kv_dim);
            vc.truncate(pos * kv_dim);
            kc.extend_from_slice(&k);
            vc.extend_from_slice(&v);
            let (kc, vc) = (&kc[..], &vc[..]);
            // One task per query row (a row is every head of one position).
            att.par_chunks_mut(q_dim)
                .zip(q.par_chunks(q_dim))
                .enumerate()
                .for_each(|(i, (out, qi))| {
                    let seen = (pos + i + 1) * kv_dim;
                    ops::attention(
                        qi,
                        &kc[..seen],
                        &vc[..seen],
                        c.n_head,
                        c.n_head_kv,
                        hd,
                        pos + i,
                        out,
                    );
                });
            matmul(
                ar,
                &l.o,
                data(&l.o),
                &mut Input::new(&att, q_dim),
                &mut proj,
                scratch,
            )?;
            ops::add(&mut x, &proj);

            ops::rms_norm(&x, &l.ffn_norm, c.rms_eps, &mut h);
            let mut hin = Input::new(&h, d);
            matmul(ar, &l.gate, data(&l.gate), &mut hin, &mut gate, scratch)?;
            matmul(ar, &l.up, data(&l.up), &mut hin, &mut up, scratch)?;
            // SwiGLU into `act` (silu of the gate times the up projection).
            ops::swiglu(&gate, &up, &mut act);
            matmul(
                ar,
                &l.down,
                data(&l.down),
                &mut Input::new(&act, c.n_ff),
                &mut proj,
                scratch,
            )?;
            ops::add(&mut x, &proj);
        }
        let rows = match which {
            Logits::None => return Ok(Vec::new()),
            Logits::Last => &x[(n - 1) * d..],
            Logits::All => &x[..],
        };
        let mut normed = vec![0.0f32; rows.len()];
        ops::rms_norm(rows, &self.output_norm, c.rms_eps, &mut normed);
        let mut logits = vec![0.0f32; rows.len() / d * c.n_vocab];
        let out = &self.output;
        matmul(
            self.arith,
            out,
            data(out),
            &mut Input::new(&normed, d),
            &mut logits,
            scratch,
        )?;
        Ok(logits)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn config(&self) -> &Config {
        &self.cfg
    }

    fn capacity(&self) -> usize {
        self.capacity
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
        check_forward(tokens, pos, self.n_past, self.capacity, self.cfg.n_vocab)?;
        self.n_past = pos;
        let result = match self.pool.take() {
            Some(pool) => {
                let r = pool.install(|| self.forward_inner(tokens, pos, logits));
                self.pool = Some(pool);
                r
            }
            None => self.forward_inner(tokens, pos, logits),
        };
        if result.is_ok() {
            self.n_past = pos + tokens.len();
        }
        result
    }

    fn reset(&mut self) {
        self.n_past = 0;
        for c in self.k_cache.iter_mut().chain(self.v_cache.iter_mut()) {
            c.clear();
        }
    }
}
