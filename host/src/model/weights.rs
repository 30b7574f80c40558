//! The tensor-name mapping: which GGUF tensor is which weight, with every type and shape checked
//! against the config.
//!
//! Names (both architectures): `token_embd.weight`, `output_norm.weight`, `output.weight`
//! (optional: absent means the LM head is tied to `token_embd`), and per layer N
//! `blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up,
//! ffn_down}.weight` plus the optional biases `blk.N.attn_{q,k,v}.bias` (qwen2 has them).

use std::collections::HashSet;

use crate::gguf::{GgmlType, Header, TensorInfo};

use super::{Config, ModelError};

/// One transformer block's tensors.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: TensorInfo,
    pub attn_q: TensorInfo,
    pub attn_k: TensorInfo,
    pub attn_v: TensorInfo,
    pub attn_q_bias: Option<TensorInfo>,
    pub attn_k_bias: Option<TensorInfo>,
    pub attn_v_bias: Option<TensorInfo>,
    pub attn_output: TensorInfo,
    pub ffn_norm: TensorInfo,
    pub ffn_gate: TensorInfo,
    pub ffn_up: TensorInfo,
    pub ffn_down: TensorInfo,
}

/// Every weight of a model, as tensor infos (the data stays in the file until a backend loads it).
#[derive(Clone, Debug)]
pub struct Weights {
    pub token_embd: TensorInfo,
    pub output_norm: TensorInfo,
    /// The LM head: `output.weight`, or `token_embd.weight` when the file has no output tensor.
    pub output: TensorInfo,
    /// True when `output` is `token_embd` (tied embeddings).
    pub output_tied: bool,
    pub layers: Vec<LayerWeights>,
}

/// Types a 1-D vector (norm weight, bias) may have.
const VECTOR_TYPES: &str = "F32, F16, BF16";

struct Mapper<'a> {
    h: &'a Header,
    used: HashSet<&'a str>,
}

impl<'a> Mapper<'a> {
    fn get(&mut self, name: &str) -> Option<&'a TensorInfo> {
        let t = self.h.tensor(name)?;
        self.used.insert(t.name.as_str());
        Some(t)
    }

    /// A matrix of `ne0 = cols` by `ne1 = rows`, any supported type.
    fn matrix(&mut self, name: &str, cols: usize, rows: usize) -> Result<TensorInfo, ModelError> {
        let t = self
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        check_shape(t, &[cols as u64, rows as u64])?;
        Ok(t.clone())
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<TensorInfo, ModelError> {
        let t = self
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        check_vector(t, len)?;
        Ok(t.clone())
    }

    fn opt_vector(&mut self, name: &str, len: usize) -> Result<Option<TensorInfo>, ModelError> {
        match self.get(name) {
            None => Ok(None),
            Some(t) => {
                check_vector(t, len)?;
                Ok(Some(t.clone()))
            }
        }
    }
}

fn check_vector(t: &TensorInfo, len: usize) -> Result<(), ModelError> {
    if !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(ModelError::TensorType {
            name: t.name.clone(),
            expected: VECTOR_TYPES,
            found: t.ggml_type.to_string(),
        });
    }
    check_shape(t, &[len as u64])
}

fn check_shape(t: &TensorInfo, expected: &[u64]) -> Result<(), ModelError> {
    // Trailing dimensions of 1 are the same shape (some writers emit [n, 1]).
    let mut found: &[u64] = &t.dims;
    while found.len() > expected.len() && found.last() == Some(&1) {
        found = &found[..found.len() - 1];
    }
    if found != expected {
        let fmt = |d: &[u64]| {
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        return Err(ModelError::TensorShape {
            name: t.name.clone(),
            expected: fmt(expected),
            found: fmt(&t.dims),
        });
    }
    Ok(())
}

impl Weights {
    /// Maps and checks every tensor. A missing required tensor, a wrong shape or type, a fused
    /// `attn_qkv`, or any tensor this mapping does not use is an error naming the tensor.
    pub fn from_header(h: &Header, cfg: &Config) -> Result<Self, ModelError> {
        let mut m = Mapper {
            h,
            used: HashSet::new(),
        };
        let (d, q, kv, ff) = (cfg.n_embd, cfg.q_dim(), cfg.kv_dim(), cfg.n_ff);
        let token_embd = m.matrix("token_embd.weight", d, cfg.n_vocab)?;
        let output_norm = m.vector("output_norm.weight", d)?;
        let (output, output_tied) = match m.get("output.weight") {
            Some(_) => (m.matrix("output.weight", d, cfg.n_vocab)?, false),
            None => (token_embd.clone(), true),
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            if h.tensor(&n("attn_qkv.weight")).is_some() {
                return Err(ModelError::UnexpectedTensor {
                    name: n("attn_qkv.weight"),
                    arch: cfg.arch.name(),
                    hint: " (fused QKV projections are not supported; this engine expects attn_q, attn_k and attn_v)",
                });
            }
            layers.push(LayerWeights {
                attn_norm: m.vector(&n("attn_norm.weight"), d)?,
                attn_q: m.matrix(&n("attn_q.weight"), d, q)?,
                attn_k: m.matrix(&n("attn_k.weight"), d, kv)?,
                attn_v: m.matrix(&n("attn_v.weight"), d, kv)?,
                attn_q_bias: m.opt_vector(&n("attn_q.bias"), q)?,
                attn_k_bias: m.opt_vector(&n("attn_k.bias"), kv)?,
                attn_v_bias: m.opt_vector(&n("attn_v.bias"), kv)?,
                attn_output: m.matrix(&n("attn_output.weight"), q, d)?,
                ffn_norm: m.vector(&n("ffn_norm.weight"), d)?,
                ffn_gate: m.matrix(&n("ffn_gate.weight"), d, ff)?,
                ffn_up: m.matrix(&n("ffn_up.weight"), d, ff)?,
                ffn_down: m.matrix(&n("ffn_down.weight"), ff, d)?,
            });
        }
        if let Some(t) = h.tensors.iter().find(|t| !m.used.contains(t.name.as_str())) {
            let hint = if t.name == "rope_freqs.weight" {
                " (RoPE frequency factors are not supported)"
            } else if t.name.starts_with("blk.") {
                " (a layer beyond block_count, or a per-layer tensor this architecture does not have)"
            } else {
                ""
            };
            return Err(ModelError::UnexpectedTensor {
                name: t.name.clone(),
                arch: cfg.arch.name(),
                hint,
            });
        }
        Ok(Weights {
            token_embd,
            output_norm,
            output,
            output_tied,
            layers,
        })
    }

    /// Every mapped tensor with the role it plays, in model order (for `host inspect`).
    pub fn roles<'a>(&'a self) -> Vec<(String, &'a TensorInfo)> {
        let mut v = vec![("token embedding".to_string(), &self.token_embd)];
        for (i, l) in self.layers.iter().enumerate() {
            let mut push = |role: &str, t: &'a TensorInfo| v.push((format!("layer {i} {role}"), t));
            push("attention norm", &l.attn_norm);
            push("query projection", &l.attn_q);
            push("key projection", &l.attn_k);
            push("value projection", &l.attn_v);
            if let Some(b) = &l.attn_q_bias {
                push("query bias", b);
            }
            if let Some(b) = &l.attn_k_bias {
                push("key bias", b);
            }
            if let Some(b) = &l.attn_v_bias {
                push("value bias", b);
            }
            push("attention output", &l.attn_output);
            push("ffn norm", &l.ffn_norm);
            push("ffn gate", &l.ffn_gate);
            push("ffn up", &l.ffn_up);
            push("ffn down", &l.ffn_down);
        }
        v.push(("output norm".into(), &self.output_norm));
        let head = if self.output_tied {
            "LM head (tied to token embedding)"
        } else {
            "LM head"
        };
        v.push((head.into(), &self.output));
        v
    }
}
