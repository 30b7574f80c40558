//! GPU ≡ CPU end to end, on full-size twins of the real models (their exact headers, synthetic
//! weights; `fixtures twin`): teacher-forced, the same token sequence into both backends, a
//! 512-token prefill (all logits) then 64 decode steps (last logits). At every position the
//! relative L2 error of the GPU logits against the CPU's is ≤ 2e-3, and the argmax is the same
//! wherever the CPU's top-1/top-2 margin exceeds 0.1. The last decode steps also go through the
//! device-side argmax (`forward_next`), which must agree the same way.
//!
//! Twins are generated on first use into `$GPU_TWIN_DIR` (default: the temp dir) from the headers
//! in `$GPU_FIXTURE_HEADERS` (default: `fixtures/headers` of this checkout).

mod gpu_common;

use std::sync::Arc;

use gpu_common::e2e::{cpu_run, gpu_check, rel_l2, twin, verdict};
use host::backend::{Backend, Logits};
use host::cuda::gemm::GemmKind;
use host::cuda::{CudaBackend, CudaOptions};
use host::gguf::Gguf;

fn check_model(header: &str, seed: u64) {
    let path = twin(header);
    let g = Arc::new(Gguf::open(&path).unwrap());
    let r = cpu_run(&g, seed);
    let base = CudaOptions {
        n_ctx: 1024,
        ..CudaOptions::default()
    };
    let reports = [
        gpu_check(
            &format!("{header} default (f16 GEMM + f16 LM head)"),
            &g,
            base,
            &r,
        ),
        gpu_check(
            &format!("{header} f32 GEMM + f32 LM head"),
            &g,
            CudaOptions {
                gemm: GemmKind::F32,
                lm_head: GemmKind::F32,
                ..base
            },
            &r,
        ),
    ];
    verdict(&reports);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn qwen_twin_gpu_matches_cpu() {
    check_model("qwen2.5-coder-0.5b-instruct-q4_k_m.header.gguf", 11);
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn smollm2_twin_gpu_matches_cpu() {
    check_model("smollm2-135m-instruct-q4_1.header.gguf", 12);
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
