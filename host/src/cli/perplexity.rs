//! `host perplexity --model PATH --file TEXT --ctx N`: perplexity by llama.cpp's method, so the
//! numbers compare with its `llama-perplexity`:
//!
//! - the whole text is tokenized once with the model's special tokens (BOS if the model adds it),
//!   without parsing special-token text;
//! - it is cut into `len / N` non-overlapping chunks of N tokens (at least 2 chunks' worth is
//!   required); each chunk runs from an empty cache;
//! - for models that add BOS, the chunk's first token is replaced by BOS;
//! - only the second half is scored: the logits at positions `N/2 .. N-2` predict tokens
//!   `N/2+1 .. N-1`;
//! - PPL = exp(mean NLL); its standard error is `PPL · sqrt(var(NLL) / (count - 1))`.

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;

use super::CliResult;
use super::run::{Device, ModelArgs, load};
use crate::backend::{Backend, BackendError, Logits};

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file, or a known model's short name (`qwen`, `smollm2`); default: the qwen model.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// CPU threads; 0 = one per core.
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// CPU: f32 dequantized weights instead of 8-bit activations (see `host run --help`).
    #[arg(long)]
    pub exact: bool,
    /// The text to score.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Tokens per chunk (the context each chunk is scored in).
    #[arg(long, short = 'c', default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (0 = all).
    #[arg(long, default_value_t = 0)]
    pub chunks: usize,
    /// Tokens per forward pass within a chunk.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
}

/// The result: final perplexity, its standard error, and the running value after each chunk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    pub stderr: f64,
    pub n_tokens: usize,
    pub n_chunks: usize,
    /// Predictions scored.
    pub count: usize,
    pub running: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error(
        "the text is {n_tokens} tokens; a context of {n_ctx} needs at least {} (two chunks)",
        2 * n_ctx
    )]
    TooShort { n_tokens: usize, n_ctx: usize },
    #[error("chunk size {0} is too small (at least 4)")]
    ChunkTooSmall(usize),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// log p(target | logits), in f64.
fn log_prob(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits[target as usize] as f64 - max - sum.ln()
}

/// Perplexity of `tokens` (already tokenized with the model's special tokens) in chunks of
/// `n_ctx`; `bos` replaces each chunk's first token when given. `on_chunk(i, running_ppl)` is
/// called after each chunk.
pub fn compute(
    backend: &mut dyn Backend,
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: usize,
    batch: usize,
    bos: Option<u32>,
    on_chunk: &mut dyn FnMut(usize, f64),
) -> Result<Perplexity, PerplexityError> {
    if n_ctx < 4 {
        return Err(PerplexityError::ChunkTooSmall(n_ctx));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(PerplexityError::TooShort {
            n_tokens: tokens.len(),
            n_ctx,
        });
    }
    let mut n_chunks = tokens.len() / n_ctx;
    if max_chunks > 0 {
        n_chunks = n_chunks.min(max_chunks);
    }
    let first = n_ctx / 2;
    let n_vocab = backend.config().n_vocab;
    let batch = batch.max(1);
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running = Vec::with_capacity(n_chunks);
    for i in 0..n_chunks {
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        backend.reset();
        // Positions before `first` need no logits; the rest are asked for in batches.
        let mut pos = 0;
        while pos < first {
            let end = first.min(pos + batch);
            backend.forward(&chunk[pos..end], pos, Logits::None)?;
            pos = end;
        }
        while pos < n_ctx - 1 {
            let end = (n_ctx - 1).min(pos + batch);
            let logits = backend.forward(&chunk[pos..end], pos, Logits::All)?;
            for (j, row) in logits.chunks_exact(n_vocab).enumerate() {
                let v = -log_prob(row, chunk[pos + j + 1]);
                nll += v;
                nll2 += v * v;
                count += 1;
            }
            pos = end;
        }
        let ppl = (nll / count as f64).exp();
        running.push(ppl);
        on_chunk(i, ppl);
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let stderr = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(Perplexity {
        ppl,
        stderr,
        n_tokens: tokens.len(),
        n_chunks,
        count,
        running,
    })
}

pub fn run(args: Args) -> CliResult {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| -> Box<dyn Error> { format!("{}: {e}", args.file.display()).into() })?;
    let mut m = load(&ModelArgs {
        model: args.model.clone(),
        device: args.device,
        ctx: args.ctx,
        threads: args.threads,
        exact: args.exact,
    })?;
    let tok = &m.tokenizer;
    let tokens = tok.encode(&text, true, false);
    let bos = if tok.add_bos() { tok.bos_id() } else { None };
    eprintln!(
        "perplexity of {} ({} tokens) in chunks of {} on the {}",
        args.file.display(),
        tokens.len(),
        args.ctx,
        m.backend.name()
    );
    let start = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let r = compute(
        m.backend.as_mut(),
        &tokens,
        args.ctx,
        args.chunks,
        args.batch,
        bos,
        &mut |i, p| {
            let _ = write!(out, "[{}]{p:.4},", i + 1);
            let _ = out.flush();
        },
    )?;
    println!();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5}  ({} chunks, {} predictions, {:.1} s)",
        r.ppl,
        r.stderr,
        r.n_chunks,
        r.count,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
