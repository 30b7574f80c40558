//! The one seam between model-agnostic code (generation, sampling, perplexity, the CLI) and
//! compute. A backend owns the weights and the KV cache of one sequence; callers feed it tokens at
//! positions and get logits back. Nothing above this trait knows which backend runs.
//!
//! Cache semantics: after `forward(tokens, pos, _)` returns `Ok`, the cache holds exactly the
//! positions `0 .. pos + tokens.len()`. `pos` may be anything up to the number of positions
//! already held: a smaller `pos` rewinds (drops the positions from `pos` on) before the new tokens
//! are written, which is how a chat reuses a shared prefix or how a caller retries. `reset()` is
//! `pos = 0` without a forward.

use thiserror::Error;

use crate::model::Config;
use crate::sample::SamplerConfig;

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill of a chunk whose predictions nobody reads): an empty vector.
    None,
    /// The last token's row only: `n_vocab` values.
    Last,
    /// One row per input token, in order: `tokens.len() * n_vocab` values, row-major. Needed for
    /// perplexity and teacher forcing.
    All,
}

/// What a backend can refuse or fail at.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error(
        "context is full: {needed} positions needed, the KV cache holds {capacity} (use a larger context or a shorter prompt)"
    )]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {id} at input index {index} is outside the vocabulary (n_vocab = {n_vocab})")]
    BadToken {
        id: u32,
        index: usize,
        n_vocab: usize,
    },
    #[error("position {pos} is past the {filled} positions the cache holds")]
    BadPosition { pos: usize, filled: usize },
    #[error("forward called with no tokens")]
    NoTokens,
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
    #[error("tensor {tensor:?}: {problem}")]
    Tensor { tensor: String, problem: String },
    #[error("{0}")]
    Device(String),
}

/// A compute backend running one sequence of one model.
pub trait Backend {
    /// Short name for messages: `cpu`, `cuda`.
    fn name(&self) -> &'static str;

    /// The model's hyper-parameters.
    fn config(&self) -> &Config;

    /// How many positions the KV cache can hold (the context length this backend was built for).
    fn capacity(&self) -> usize;

    /// How many positions the KV cache holds now.
    fn n_past(&self) -> usize;

    /// Runs `tokens` at positions `pos .. pos + tokens.len()` (see the module docs for the cache
    /// semantics) and returns the requested logits. Errors leave the cache holding `0 .. pos` at
    /// most (never garbage that a later call would read as valid).
    fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        logits: Logits,
    ) -> Result<Vec<f32>, BackendError>;

    /// Empties the KV cache.
    fn reset(&mut self);

    /// Decoding that runs ahead of the host, the next token chosen on the device, where the
    /// backend has it (see [`DeviceSteps`]); `None` otherwise.
    fn device_steps(&mut self) -> Option<&mut dyn DeviceSteps> {
        None
    }
}

/// Decoding the backend runs without the host between steps: each queued step chooses its
/// successor itself — by the host sampler's rule ([`crate::sample::choose`]) with the uniform draw
/// the host hands it, greedy (the argmax, ties to the lower id, NaN never chosen) until
/// [`DeviceSteps::set_rule`] says otherwise — and the following step can take that choice as its
/// input where it is computed, so the host queues step `k + 1` before it reads step `k`'s choice
/// and the device never waits for the host. The cache semantics are those of
/// [`Backend::forward`], counted from the moment a step is queued.
pub trait DeviceSteps {
    /// Whether the steps can choose by `cfg` exactly (a backend may not take every setting: the
    /// caller then samples on the host from the logits).
    fn can_choose(&self, cfg: &SamplerConfig) -> bool;

    /// The rule the steps queued from now on choose by; `history` is the sequence so far (prompt
    /// and generated tokens: the repetition penalty reads its tail, and each choice joins it).
    fn set_rule(&mut self, cfg: &SamplerConfig, history: &[u32]) -> Result<(), BackendError>;

    /// Queues the forward of one token at `pos` — `Some(id)` from the host, or `None`: the
    /// choice of the step queued last, which ran at `pos − 1` — and its choice, drawn with the
    /// uniform `u` in `[0, 1)` (unused when greedy).
    fn queue_step(&mut self, token: Option<u32>, pos: usize, u: f64) -> Result<(), BackendError>;

    /// The choice of the oldest queued step (waits for it).
    fn take_step(&mut self) -> Result<u32, BackendError>;
}

/// The checks every backend makes before a forward: tokens present and in the vocabulary, `pos`
/// not past what the cache holds, the result within capacity.
pub fn check_forward(
    tokens: &[u32],
    pos: usize,
    n_past: usize,
    capacity: usize,
    n_vocab: usize,
) -> Result<(), BackendError> {
    if tokens.is_empty() {
        return Err(BackendError::NoTokens);
    }
    if pos > n_past {
        return Err(BackendError::BadPosition {
            pos,
            filled: n_past,
        });
    }
    let needed = pos + tokens.len();
    if needed > capacity {
        return Err(BackendError::ContextFull { needed, capacity });
    }
    if let Some((index, &id)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= n_vocab)
    {
        return Err(BackendError::BadToken { id, index, n_vocab });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_forward_refuses_each_bad_input() {
        assert!(matches!(
            check_forward(&[], 0, 0, 8, 10),
            Err(BackendError::NoTokens)
        ));
        assert!(matches!(
            check_forward(&[1], 3, 2, 8, 10),
            Err(BackendError::BadPosition { pos: 3, filled: 2 })
        ));
        assert!(matches!(
            check_forward(&[1, 2, 3], 6, 6, 8, 10),
            Err(BackendError::ContextFull {
                needed: 9,
                capacity: 8
            })
        ));
        assert!(matches!(
            check_forward(&[1, 10], 0, 0, 8, 10),
            Err(BackendError::BadToken {
                id: 10,
                index: 1,
                n_vocab: 10
            })
        ));
        assert!(check_forward(&[1, 9], 2, 6, 8, 10).is_ok());
    }
}
