//! [`CpuBackend`]: the full forward pass of `qwen2` and `llama` on the CPU.
//!
//! Weights stay in the memory-mapped file (matrix products read quantized rows directly); only
//! the small vectors (norm weights, biases) are decoded to f32 at load. The KV cache ([`super::kv`])
//! is one `[position][n_head_kv * head_dim]` array per layer for keys and one for values, f32 (the
//! default) or f16 ([`CpuOptions::kv`]), grown as positions are filled (so resident memory is the
//! file's touched pages plus the positions used).

use std::sync::Arc;

use rayon::prelude::*;

use super::kv::{KvCache, KvPrecision};
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
    /// Precision of the stored keys and values: f32 (default) or f16 (half the memory; rounded
    /// as the GPU's f16 cache rounds them).
    pub kv: KvPrecision,
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
    /// Per layer: `n_past * kv_dim` keys and values.
    kv: KvCache,
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
            kv: KvCache::new(opts.kv, cfg.n_layer, cfg.kv_dim()),
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

    /// Precision of the KV cache.
    pub fn kv_precision(&self) -> KvPrecision {
        self.kv.precision()
    }

    /// Bytes the KV cache holds for the filled positions: `2 · n_layer · kv_dim` elements per
    /// position, 4 or 2 bytes each (an f16 cache also keeps one layer's keys and values in f32
    /// while attention reads them, not counted here).
    pub fn kv_bytes(&self) -> usize {
        self.kv.bytes()
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
            self.kv.store(li, pos, &k, &v);
            let (kc, vc) = self.kv.load(li, pos + n);
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
        self.kv.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlType, GgufWriter, TensorSpec, Value};

    /// A tiny qwen2 model with f32 weights (q/k/v biases included), random values.
    fn tiny_qwen2() -> Arc<Gguf> {
        let (d, n_head, n_head_kv, ff, n_layer, n_vocab) = (64u64, 4u64, 2u64, 128u64, 2, 96u64);
        let kv = d / n_head * n_head_kv;
        let mut w = GgufWriter::new();
        let u = |x: u64| Value::U32(x as u32);
        w.set("general.architecture", Value::String("qwen2".into()));
        w.set("qwen2.context_length", u(64));
        w.set("qwen2.embedding_length", u(d));
        w.set("qwen2.block_count", u(n_layer));
        w.set("qwen2.feed_forward_length", u(ff));
        w.set("qwen2.attention.head_count", u(n_head));
        w.set("qwen2.attention.head_count_kv", u(n_head_kv));
        w.set("qwen2.attention.layer_norm_rms_epsilon", Value::F32(1e-6));
        w.set("qwen2.vocab_size", u(n_vocab));
        let mut t = |name: String, dims: &[u64]| {
            w.tensor(TensorSpec::new(name, GgmlType::F32, dims));
        };
        t("token_embd.weight".into(), &[d, n_vocab]);
        for i in 0..n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            t(n("attn_norm.weight"), &[d]);
            t(n("attn_q.weight"), &[d, d]);
            t(n("attn_k.weight"), &[d, kv]);
            t(n("attn_v.weight"), &[d, kv]);
            t(n("attn_q.bias"), &[d]);
            t(n("attn_k.bias"), &[kv]);
            t(n("attn_v.bias"), &[kv]);
            t(n("attn_output.weight"), &[d, d]);
            t(n("ffn_norm.weight"), &[d]);
            t(n("ffn_gate.weight"), &[d, ff]);
            t(n("ffn_up.weight"), &[d, ff]);
            t(n("ffn_down.weight"), &[ff, d]);
        }
        t("output_norm.weight".into(), &[d]);
        t("output.weight".into(), &[d, n_vocab]);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let data: Vec<Vec<u8>> = w
            .tensors
            .iter()
            .map(|s| {
                let n: u64 = s.dims.iter().product();
                // Norm weights around 1, biases and matrices around 0 (keys with a bias of a few
                // units, as qwen2's, so the f16 rounding of the cache is not negligible).
                let (center, scale) = if s.name.contains("norm") {
                    (1.0, 0.2)
                } else if s.name.contains("bias") {
                    (0.0, 4.0)
                } else {
                    (0.0, 2.0 / (s.dims[0] as f32).sqrt())
                };
                (0..n)
                    .flat_map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let u = (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                        (center + scale * u).to_le_bytes()
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        Arc::new(Gguf::from_bytes(w.to_bytes(&refs)).unwrap())
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The f16 cache changes nothing but the stored values' rounding: a backend with it gives
    /// bit-identical logits to one whose f32 cache stores the keys and values rounded to f16,
    /// through prefill, decode and a rewind; it differs from the f32 cache (not vacuous), holds
    /// half its bytes, and refuses bad input the same way.
    #[test]
    fn f16_cache_is_the_f32_cache_of_rounded_keys_and_values() {
        let g = tiny_qwen2();
        for arith in [Arith::Exact, Arith::Quantized] {
            let opts = |kv| CpuOptions {
                n_ctx: 48,
                threads: 2,
                arith,
                kv,
            };
            let mut f32c = CpuBackend::load(g.clone(), &opts(KvPrecision::F32)).unwrap();
            let mut f16c = CpuBackend::load(g.clone(), &opts(KvPrecision::F16)).unwrap();
            let mut rounded = CpuBackend::load(g.clone(), &opts(KvPrecision::F32)).unwrap();
            rounded.kv = KvCache::f32_rounded_to_f16(2, rounded.cfg.kv_dim());
            assert_eq!(f16c.kv_precision(), KvPrecision::F16);
            let toks: Vec<u32> = (0..30u32).map(|i| (i * 37 + 5) % 96).collect();
            // (tokens, position, logits): prefill, decode steps, a rewind, a chunk after it.
            let schedule: Vec<(&[u32], usize, Logits)> = vec![
                (&toks[..20], 0, Logits::All),
                (&toks[20..21], 20, Logits::Last),
                (&toks[21..22], 21, Logits::Last),
                (&toks[22..26], 10, Logits::All),
                (&toks[26..30], 14, Logits::All),
            ];
            let mut max_rel = 0.0f64;
            for (ts, pos, which) in schedule {
                let a = f16c.forward(ts, pos, which).unwrap();
                let b = rounded.forward(ts, pos, which).unwrap();
                let c = f32c.forward(ts, pos, which).unwrap();
                assert_eq!(
                    bits(&a),
                    bits(&b),
                    "{arith:?} at {pos}: f16 cache vs rounded f32 cache"
                );
                let num: f64 = a
                    .iter()
                    .zip(&c)
                    .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                    .sum();
                let den: f64 = c.iter().map(|y| (*y as f64).powi(2)).sum();
                max_rel = max_rel.max((num / den).sqrt());
                assert_eq!(2 * f16c.kv_bytes(), f32c.kv_bytes());
                assert_eq!(f32c.kv_bytes(), 4 * 2 * 2 * 32 * f32c.n_past());
            }
            eprintln!("{arith:?}: f16 vs f32 cache, max rel L2 {max_rel:e}");
            assert!(
                max_rel > 0.0,
                "{arith:?}: the f16 cache must round something"
            );
            assert!(
                max_rel < 2e-3,
                "{arith:?}: f16 vs f32 cache rel L2 {max_rel:e}"
            );
            for be in [&mut f16c, &mut f32c] {
                assert!(matches!(
                    be.forward(&[96], 18, Logits::Last),
                    Err(BackendError::BadToken { id: 96, .. })
                ));
                assert!(matches!(
                    be.forward(&[1], 19, Logits::Last),
                    Err(BackendError::BadPosition {
                        pos: 19,
                        filled: 18
                    })
                ));
                assert_eq!(be.n_past(), 18);
                be.reset();
                assert_eq!((be.n_past(), be.kv_bytes()), (0, 0));
            }
        }
    }
}
