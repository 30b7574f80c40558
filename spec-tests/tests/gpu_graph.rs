//! The decode step replayed from a CUDA graph (`CudaOptions::decode_graph`: token and position in
//! device memory, the sampler writing the next token and advancing the position there) computes
//! exactly what launching every kernel from the host computes: the same kernels with the same
//! launch shapes, so the same arithmetic, bit for bit. The graph also launches its kernels with
//! programmatic dependent launch (`CudaOptions::pdl`, on by default on sm_90: each kernel starts
//! while the previous one runs and waits for it after issuing its weight loads), so these tests
//! are also its race check: a kernel that read another's output before its wait would differ.
//!
//! On full-size twins (see `gpu_e2e.rs`): chained greedy decoding through `forward_next` (the
//! device feeds itself the token it chose) must give, at every step, logits identical bit for bit
//! to those the host-launched path (`forward`, graph off) computes for the same tokens, and their
//! argmax; rewinding (the device holds a stale token and position, which must be replaced) and
//! device-side sampling give the same ids with and without the graph.
//!
//! Pipelined decoding (`DeviceSteps`: each step queued before the previous one's choice is read,
//! and fed that choice on the device) chooses the same ids as the chain of `forward_next` calls,
//! and `Session::generate` through it generates what the host-sampled loop (graph off, logits
//! copied back) generates, greedy and sampled (the device sampler handed the host generator's
//! draws), stopping at the same token with the cache it reports.

mod gpu_common;

use gpu_common::e2e::twin;
use host::backend::{Backend, Logits};
use host::cuda::ops::SampleParams;
use host::cuda::{CudaBackend, CudaOptions};
use host::generate::{GenerateOptions, Session, StopReason};
use host::gguf::Gguf;
use host::sample::{Sampler, SamplerConfig};

/// Index of the largest logit, ties to the lower index (the device argmax's rule).
fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn graph_case(header: &str) {
    let path = twin(header);
    let g = Gguf::open(&path).unwrap();
    let opts = CudaOptions {
        n_ctx: 1024,
        ..CudaOptions::default()
    };
    assert!(opts.decode_graph, "the graph is the default");
    let mut graph = CudaBackend::load(&g, opts).unwrap();
    let mut plain = CudaBackend::load(
        &g,
        CudaOptions {
            decode_graph: false,
            ..opts
        },
    )
    .unwrap();
    let n_vocab = graph.config().n_vocab as u32;
    let prompt: Vec<u32> = (0..20u32).map(|i| (i * 7919 + 11) % n_vocab).collect();
    let n = prompt.len();

    // Chained greedy decoding: the prompt (not graphed: several tokens), then 48 single-token
    // steps, each fed the id the previous one returned (the device already holds it).
    let mut ids = vec![graph.forward_next(&prompt, 0, None).unwrap()];
    let mut step_logits = Vec::new();
    for i in 0..48 {
        let last = *ids.last().unwrap();
        ids.push(graph.forward_next(&[last], n + i, None).unwrap());
        step_logits.push(graph.next_logits().unwrap());
    }
    assert_eq!(graph.n_past(), n + 48);

    // The host-launched path on the same tokens: the same logits, bit for bit, and their argmax
    // is every chosen id.
    let l = plain.forward(&prompt, 0, Logits::Last).unwrap();
    assert_eq!(argmax(&l), ids[0], "{header}: after the prompt");
    for i in 0..48 {
        let l = plain.forward(&ids[i..][..1], n + i, Logits::Last).unwrap();
        let differ = l
            .iter()
            .zip(&step_logits[i])
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{header}: decode step {i}: {differ} of {} logits differ from the launched path's",
            l.len()
        );
        assert_eq!(argmax(&l), ids[i + 1], "{header}: decode step {i}");
    }
    // The same chain without the graph.
    let mut plain_ids = vec![plain.forward_next(&prompt, 0, None).unwrap()];
    for i in 0..48 {
        let last = *plain_ids.last().unwrap();
        plain_ids.push(plain.forward_next(&[last], n + i, None).unwrap());
    }
    assert_eq!(plain_ids, ids, "{header}: graph vs host-launched chains");

    // Rewind: step 10 again (the device holds step 48's token and position: replaced).
    let again = graph.forward_next(&ids[10..][..1], n + 10, None).unwrap();
    assert_eq!(again, ids[11], "{header}: rewound step");
    // A token the device did not choose, at the next position (teacher forcing).
    let forced = (ids[11] + 1) % n_vocab;
    let a = graph.forward_next(&[forced], n + 11, None).unwrap();
    let l = plain.forward(&[forced], n + 11, Logits::Last).unwrap();
    // `plain` is at n + 48; forward rewinds it: its cache up to n + 11 holds the same tokens.
    assert_eq!(a, argmax(&l), "{header}: teacher-forced step");

    // Device-side sampling through the graph, with a repetition penalty over a window of recent
    // tokens: the same draw as without it.
    let p = SampleParams {
        top_k: 40,
        top_p: 0.9,
        min_p: 0.05,
        temperature: 0.8,
        repeat_penalty: 1.3,
    };
    graph.set_window(&ids[..12], 16).unwrap();
    plain.set_window(&ids[..12], 16).unwrap();
    for (k, u) in [0.1f32, 0.5, 0.93].into_iter().enumerate() {
        let pos = n + 12 + k;
        let tok = ids[12 + k];
        let s1 = graph.forward_next(&[tok], pos, Some((p, u))).unwrap();
        let s2 = plain.forward_next(&[tok], pos, Some((p, u))).unwrap();
        assert_eq!(s1, s2, "{header}: sampled step at {pos} (u = {u})");
    }
    // Bad input is refused before the graph runs.
    assert!(graph.forward_next(&[n_vocab], n, None).is_err());
    assert!(graph.forward_next(&[1], 1024, None).is_err());
}

fn pipeline_case(header: &str) {
    let path = twin(header);
    let g = Gguf::open(&path).unwrap();
    let opts = CudaOptions {
        n_ctx: 256,
        ..CudaOptions::default()
    };
    let mut chain = CudaBackend::load(&g, opts).unwrap();
    let mut piped = CudaBackend::load(&g, opts).unwrap();
    let n_vocab = chain.config().n_vocab as u32;
    let prompt: Vec<u32> = (0..12u32).map(|i| (i * 104_729 + 3) % n_vocab).collect();
    let n = prompt.len();

    // 41 steps, each fed the previous id by the host (the device already holds it) …
    let mut want = vec![chain.forward_next(&prompt, 0, None).unwrap()];
    for i in 0..41 {
        let last = *want.last().unwrap();
        want.push(chain.forward_next(&[last], n + i, None).unwrap());
    }
    // … and queued one ahead, fed on the device.
    let first = piped.forward_next(&prompt, 0, None).unwrap();
    assert_eq!(first, want[0], "{header}: after the prompt");
    let steps = piped
        .device_steps()
        .expect("the graph decodes on the device");
    steps.queue_step(Some(first), n, 0.0).unwrap();
    let mut got = vec![first];
    for i in 1..40 {
        steps.queue_step(None, n + i, 0.0).unwrap();
        got.push(steps.take_step().unwrap());
    }
    got.push(steps.take_step().unwrap());
    assert_eq!(got, want[..41], "{header}: pipelined vs one step at a time");
    assert_eq!(piped.n_past(), n + 40);
    // Nothing queued: nothing to take; a chosen token is only fed at the next position.
    let steps = piped.device_steps().unwrap();
    assert!(steps.take_step().is_err());
    assert!(steps.queue_step(None, n + 10, 0.0).is_err());
    assert!(steps.queue_step(None, n + 40, 0.0).is_ok());
    assert_eq!(
        steps.take_step().unwrap(),
        want[41],
        "{header}: the step after a take"
    );

    // Session::generate: through the pipeline (graph on) and the host-sampled loop (graph off).
    let run_with = |graph: bool, eog: Vec<u32>, rule: SamplerConfig| {
        let b = CudaBackend::load(
            &g,
            CudaOptions {
                decode_graph: graph,
                ..opts
            },
        )
        .unwrap();
        let mut session = Session::new(Box::new(b));
        let gen_opts = GenerateOptions {
            max_tokens: 24,
            eog,
            ..GenerateOptions::default()
        };
        let out = session
            .generate(
                &prompt,
                &mut Sampler::new(rule).unwrap(),
                &gen_opts,
                None,
                &mut |_| {},
            )
            .unwrap();
        (out, session)
    };
    let run = |graph: bool, eog: Vec<u32>| run_with(graph, eog, SamplerConfig::default());
    let (a, sa) = run(true, vec![]);
    let (b, sb) = run(false, vec![]);
    assert_eq!(a.generated_ids, b.generated_ids, "{header}: generate");
    assert_eq!(
        a.generated_ids[..],
        want[..24],
        "{header}: generate vs the chain"
    );
    assert_eq!(a.stop, StopReason::MaxTokens);
    assert_eq!(sa.cached(), sb.cached());
    assert_eq!(sa.cached().len(), sa.backend().n_past());
    // Stopping at an end-of-generation token: the same tokens; the pipelined session's cache
    // also holds the stopping token (its step ran ahead), and says so.
    let stop_at = a.generated_ids[9];
    let (a, sa) = run(true, vec![stop_at]);
    let (b, _) = run(false, vec![stop_at]);
    assert_eq!(
        a.generated_ids, b.generated_ids,
        "{header}: generate to a stop"
    );
    assert_eq!(a.stop, StopReason::EndOfGeneration(stop_at));
    assert_eq!(sa.cached().len(), sa.backend().n_past());
    assert_eq!(sa.cached()[..n], prompt[..]);
    assert_eq!(sa.cached()[n..], a.generated_ids[..sa.cached().len() - n]);

    // Sampled (`host run`'s default chain, and with a repetition penalty): the device sampler,
    // handed the host generator's draws, generates what the host sampler does from the logits.
    for rule in [
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            seed: 7,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            temperature: 1.2,
            top_k: 200,
            top_p: 0.9,
            min_p: 0.0,
            repeat_penalty: 1.3,
            repeat_last_n: 64,
            seed: 8,
        },
        SamplerConfig {
            repeat_penalty: 1.5,
            ..SamplerConfig::default()
        },
    ] {
        let (a, sa) = run_with(true, vec![], rule.clone());
        let (b, _) = run_with(false, vec![], rule.clone());
        assert_eq!(a.generated_ids, b.generated_ids, "{header}: {rule:?}");
        assert_eq!(sa.cached().len(), sa.backend().n_past());
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn qwen_twin_pipelined_decoding_equals_one_step_at_a_time() {
    pipeline_case("qwen2.5-coder-0.5b-instruct-q4_k_m.header.gguf");
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn smollm2_twin_pipelined_decoding_equals_one_step_at_a_time() {
    pipeline_case("smollm2-135m-instruct-q4_1.header.gguf");
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn qwen_twin_graph_equals_launches() {
    graph_case("qwen2.5-coder-0.5b-instruct-q4_k_m.header.gguf");
}

#[test]
#[ignore = "needs an NVIDIA GPU: run with --ignored on a GPU machine"]
fn smollm2_twin_graph_equals_launches() {
    graph_case("smollm2-135m-instruct-q4_1.header.gguf");
}
