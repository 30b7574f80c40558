//! GPU ≡ CPU end to end, on full-size twins of the real models (their exact headers, synthetic
//! weights; `fixtures twin`): teacher-forced, the same token sequence into both backends, a
//! 512-token prefill (all logits) then 64 decode steps (last logits; the final 8 through the
//! device-side argmax, `forward_next`, which copies back one id).
//!
//! Bars (`gpu_common::e2e::check_model`): each GPU configuration against the CPU (exact
//! arithmetic) with the same KV-cache precision, at every position: logits relative L2 ≤ 2e-3
//! and the same argmax wherever the CPU's top-1/top-2 margin exceeds 0.1,
//! - for the GPU in reference precision (f32 KV cache, f32 GEMMs, f32 LM head), and for the same
//!   with the split-f16 GEMMs (`GemmKind::F16x3`) in place of the f32 ones, against the CPU with
//!   an f32 cache;
//! - for reference precision with an f16 cache and for the default configuration with the f16
//!   LM head copy and f32 FFN activations against the CPU with an f16 cache (rounded as the
//!   GPU's); for the default configuration (f16 KV cache, split-f16 GEMMs, Q8_0 LM head, 8-bit
//!   FFN activations in decode) and the plain f16 tensor-core GEMM configuration the same way
//!   with a bar of 3e-2 and an argmax margin of 0.25 (`A8_REL_L2`, `A8_MARGIN`). At a
//!   position where the f16 cache alone moves the CPU's logits by `s` (f16 vs f32 cache), these
//!   bars are at least `2·s`: on the qwen twin a few positions amplify any last-bit difference in
//!   the rounded keys and values like the rounding itself (position 222: `s` = 6.0e-2; see
//!   `F16_CACHE_ALLOWANCE` and docs/GPU_ENGINE.md).
//!
//! Twins are generated on first use into `$GPU_TWIN_DIR` (default: the temp dir) from the headers
//! in `$GPU_FIXTURE_HEADERS` (default: `fixtures/headers` of this checkout).

mod gpu_common;

use std::sync::Arc;

use gpu_common::e2e::{check_model, cpu_run, rel_l2, twin};
use host::backend::{Backend, Logits};
use host::cuda::{CudaBackend, CudaOptions};
use host::gguf::Gguf;

fn check_twin(header: &str, seed: u64) {
    let path = twin(header);
    let g = Arc::new(Gguf::open(&path).unwrap());
    let r = cpu_run(&g, seed);
    check_model(header.trim_end_matches(".header.gguf"), &g, &r);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn qwen_twin_gpu_matches_cpu() {
    check_twin("qwen2.5-coder-0.5b-instruct-q4_k_m.header.gguf", 11);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn smollm2_twin_gpu_matches_cpu() {
    check_twin("smollm2-135m-instruct-q4_1.header.gguf", 12);
}

/// Rewinding and re-running gives the same logits (the cache is overwritten, never appended to).
#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn rewind_and_chunked_prefill_agree() {
    let path = twin("smollm2-135m-instruct-q4_1.header.gguf");
    let g = Gguf::open(&path).unwrap();
    // Chunks of 100: a 300-token prefill runs as 100 + 100 + 100 inside the backend.
    let mut gpu = CudaBackend::load(
        &g,
        CudaOptions {
            n_ctx: 1024,
            max_batch: 100,
            ..CudaOptions::default()
        },
    )
    .unwrap();
    let mut whole = CudaBackend::load(
        &g,
        CudaOptions {
            n_ctx: 1024,
            ..CudaOptions::default()
        },
    )
    .unwrap();
    let n_vocab = gpu.config().n_vocab;
    let tokens: Vec<u32> = (0..300u32)
        .map(|i| (i * 7919 + 3) % n_vocab as u32)
        .collect();
    let a = gpu.forward(&tokens, 0, Logits::All).unwrap();
    let b = whole.forward(&tokens, 0, Logits::All).unwrap();
    for p in 0..300 {
        let e = rel_l2(&a[p * n_vocab..][..n_vocab], &b[p * n_vocab..][..n_vocab]);
        assert!(
            e <= 1e-3,
            "chunked vs whole prefill, position {p}: rel L2 {e:e}"
        );
    }
    // Rewind to 250 and feed other tokens, then the original ones again: same as before.
    let other: Vec<u32> = (0..50u32).map(|i| (i * 31 + 5) % n_vocab as u32).collect();
    gpu.forward(&other, 250, Logits::None).unwrap();
    assert_eq!(gpu.n_past(), 300);
    let again = gpu.forward(&tokens[250..], 250, Logits::All).unwrap();
    for p in 0..50 {
        let e = rel_l2(
            &again[p * n_vocab..][..n_vocab],
            &a[(250 + p) * n_vocab..][..n_vocab],
        );
        assert!(
            e <= 1e-3,
            "rewound rerun, position {}: rel L2 {e:e}",
            250 + p
        );
    }
    // Bad input is refused before touching the device.
    assert!(gpu.forward(&[n_vocab as u32], 0, Logits::Last).is_err());
    assert!(gpu.forward(&[1], 301, Logits::Last).is_err());
}
