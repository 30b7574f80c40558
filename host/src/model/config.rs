//! Hyper-parameters from `general.architecture` and the `{arch}.*` keys.

use crate::gguf::{Header, Value};

use super::ModelError;

/// The architectures this engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Qwen2 / Qwen2.5: llama-style blocks with Q/K/V biases and NEOX RoPE.
    Qwen2,
    /// Llama and its many derivatives (SmolLM, Mistral-style without sliding window, …).
    Llama,
}

impl Arch {
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        match name {
            "qwen2" => Ok(Arch::Qwen2),
            "llama" => Ok(Arch::Llama),
            other => Err(ModelError::UnsupportedArch(other.into())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }

    /// How rotary embeddings pair up dimensions in this architecture (ggml's rope type).
    pub fn rope_style(self) -> RopeStyle {
        match self {
            Arch::Qwen2 => RopeStyle::Neox,
            Arch::Llama => RopeStyle::Normal,
        }
    }
}

/// Which dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: the original llama layout (GGUF converters permute Q/K for it).
    Normal,
    /// Halves `(i, i + d/2)`: GPT-NeoX layout, used by qwen2.
    Neox,
}

/// Model hyper-parameters, named as in the GGUF keys.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    pub arch: Arch,
    /// `{arch}.context_length`: the context the model was trained for.
    pub n_ctx_train: usize,
    /// `{arch}.embedding_length`.
    pub n_embd: usize,
    /// `{arch}.block_count`.
    pub n_layer: usize,
    /// `{arch}.feed_forward_length`.
    pub n_ff: usize,
    /// `{arch}.attention.head_count`.
    pub n_head: usize,
    /// `{arch}.attention.head_count_kv` (defaults to `n_head`: no grouping).
    pub n_head_kv: usize,
    /// `{arch}.attention.key_length`, else `n_embd / n_head`.
    pub head_dim: usize,
    /// `{arch}.rope.dimension_count`, else `head_dim`.
    pub rope_dim: usize,
    /// `{arch}.rope.freq_base` (default 10000).
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// `{arch}.attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
    /// `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`.
    pub n_vocab: usize,
}

impl Config {
    pub fn from_header(h: &Header) -> Result<Self, ModelError> {
        let arch_name = match h.get("general.architecture") {
            None => return Err(ModelError::MissingKey("general.architecture".into())),
            Some(Value::String(s)) => s.as_str(),
            Some(v) => return Err(wrong_type("general.architecture", "string", v)),
        };
        let arch = Arch::from_name(arch_name)?;
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");

        // Features that change the math and that this engine does not implement: refuse them
        // rather than compute something else.
        if let Some(v) = h.get(&key("rope.scaling.type")) {
            let t = v.as_str().unwrap_or("?");
            if t != "none" {
                return Err(ModelError::BadValue {
                    key: key("rope.scaling.type"),
                    problem: format!("RoPE scaling {t:?} is not supported"),
                });
            }
        }
        for k in ["attention.sliding_window", "expert_count"] {
            if let Some(v) = h.get(&key(k))
                && v.as_u64() != Some(0)
            {
                return Err(ModelError::BadValue {
                    key: key(k),
                    problem: "this feature is not supported".into(),
                });
            }
        }

        let n_embd = req_usize(h, &key("embedding_length"))?;
        let n_head = req_usize(h, &key("attention.head_count"))?;
        let n_head_kv = opt_usize(h, &key("attention.head_count_kv"))?.unwrap_or(n_head);
        if n_head % n_head_kv != 0 {
            return Err(ModelError::BadValue {
                key: key("attention.head_count_kv"),
                problem: format!("{n_head_kv} does not divide head_count {n_head}"),
            });
        }
        let head_dim = match opt_usize(h, &key("attention.key_length"))? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(ModelError::BadValue {
                    key: key("attention.head_count"),
                    problem: format!("{n_head} heads do not divide embedding_length {n_embd}"),
                });
            }
        };
        if let Some(v) = opt_usize(h, &key("attention.value_length"))?
            && v != head_dim
        {
            return Err(ModelError::BadValue {
                key: key("attention.value_length"),
                problem: format!("{v} differs from the key length {head_dim}; not supported"),
            });
        }
        let rope_dim = opt_usize(h, &key("rope.dimension_count"))?.unwrap_or(head_dim);
        if rope_dim != head_dim {
            return Err(ModelError::BadValue {
                key: key("rope.dimension_count"),
                problem: format!("partial RoPE ({rope_dim} of {head_dim} dims) is not supported"),
            });
        }
        if head_dim % 2 != 0 {
            return Err(ModelError::BadValue {
                key: key("attention.key_length"),
                problem: format!("head dimension {head_dim} is odd"),
            });
        }
        let n_vocab = match opt_usize(h, &key("vocab_size"))? {
            Some(n) => n,
            None => match h.get("tokenizer.ggml.tokens") {
                Some(Value::Array(arr)) => arr.len(),
                Some(v) => return Err(wrong_type("tokenizer.ggml.tokens", "array", v)),
                None => return Err(ModelError::MissingKey(key("vocab_size"))),
            },
        };
        let cfg = Config {
            arch,
            n_ctx_train: req_usize(h, &key("context_length"))?,
            n_embd,
            n_layer: req_usize(h, &key("block_count"))?,
            n_ff: req_usize(h, &key("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            rope_theta: opt_f32(h, &key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_style: arch.rope_style(),
            rms_eps: req_f32(h, &key("attention.layer_norm_rms_epsilon"))?,
            n_vocab,
        };
        for (k, v) in [
            ("context_length", cfg.n_ctx_train),
            ("embedding_length", cfg.n_embd),
            ("block_count", cfg.n_layer),
            ("feed_forward_length", cfg.n_ff),
            ("attention.head_count", cfg.n_head),
            ("attention.head_count_kv", cfg.n_head_kv),
            ("vocab_size", cfg.n_vocab),
        ] {
            if v == 0 {
                return Err(ModelError::BadValue {
                    key: key(k),
                    problem: "must not be zero".into(),
                });
            }
        }
        for (k, v) in [
            ("rope.freq_base", cfg.rope_theta),
            ("attention.layer_norm_rms_epsilon", cfg.rms_eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ModelError::BadValue {
                    key: key(k),
                    problem: format!("{v} is not a positive number"),
                });
            }
        }
        Ok(cfg)
    }

    /// Width of the query projection: `n_head * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the key and value projections: `n_head_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

fn wrong_type(key: &str, expected: &'static str, v: &Value) -> ModelError {
    ModelError::WrongType {
        key: key.into(),
        expected,
        found: v.value_type().to_string(),
    }
}

fn opt_usize(h: &Header, key: &str) -> Result<Option<usize>, ModelError> {
    match h.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => usize::try_from(n)
                .map(Some)
                .map_err(|_| ModelError::BadValue {
                    key: key.into(),
                    problem: format!("{n} is too large"),
                }),
            None => Err(wrong_type(key, "unsigned integer", v)),
        },
    }
}

fn req_usize(h: &Header, key: &str) -> Result<usize, ModelError> {
    opt_usize(h, key)?.ok_or_else(|| ModelError::MissingKey(key.into()))
}

fn opt_f32(h: &Header, key: &str) -> Result<Option<f32>, ModelError> {
    match h.get(key) {
        None => Ok(None),
        Some(v @ (Value::F32(_) | Value::F64(_))) => Ok(v.as_f64().map(|x| x as f32)),
        Some(v) => Err(wrong_type(key, "float", v)),
    }
}

fn req_f32(h: &Header, key: &str) -> Result<f32, ModelError> {
    opt_f32(h, key)?.ok_or_else(|| ModelError::MissingKey(key.into()))
}
