//! The generation session, sampling and perplexity on tiny models with the CPU backend: greedy
//! generation equals a hand-written argmax loop, prefix reuse changes nothing but the work done,
//! every stop condition, seeded determinism, and perplexity against a direct computation; the
//! pipelined loop (a backend with `DeviceSteps`, here the CPU backend behind a queue choosing by
//! the host sampler's rule) generates what the host-sampled loop generates under every stop
//! condition, greedy and sampled.

use std::sync::Arc;

use fixtures::tiny::{TinySpec, build_bytes};
use std::collections::VecDeque;

use host::backend::{Backend, BackendError, DeviceSteps, Logits};
use host::cli::perplexity;
use host::cpu::{Arith, CpuBackend, CpuOptions};
use host::generate::{GenerateError, GenerateOptions, Session, StopReason};
use host::gguf::{GgmlType, Gguf};
use host::model::Arch;
use host::sample::{Sampler, SamplerConfig, argmax, choose};

fn backend(arch: Arch, n_ctx: usize) -> CpuBackend {
    let g = Gguf::from_bytes(build_bytes(&TinySpec::new(arch, GgmlType::Q8_0))).unwrap();
    CpuBackend::load(
        Arc::new(g),
        &CpuOptions {
            n_ctx,
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

fn opts(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        eog: Vec::new(),
        stop_strings: Vec::new(),
        batch: 3,
    }
}

const PROMPT: [u32; 7] = [10, 200, 33, 47, 5, 90, 120];

fn no_text(_: &str) {}

#[test]
fn greedy_generation_equals_a_hand_written_argmax_loop() {
    for arch in [Arch::Qwen2, Arch::Llama] {
        let mut be = backend(arch, 64);
        let mut logits = be.forward(&PROMPT, 0, Logits::Last).unwrap();
        let mut want = Vec::new();
        for i in 0..12 {
            let t = argmax(&logits).unwrap();
            want.push(t);
            logits = be.forward(&[t], PROMPT.len() + i, Logits::Last).unwrap();
        }
        let mut s = Session::new(Box::new(backend(arch, 64)));
        let g = s
            .generate(
                &PROMPT,
                &mut Sampler::greedy(),
                &opts(12),
                None,
                &mut no_text,
            )
            .unwrap();
        assert_eq!(g.generated_ids, want, "{arch:?}");
        assert_eq!(g.stop, StopReason::MaxTokens);
        assert_eq!(g.timings.prompt_tokens, PROMPT.len());
        // The last sampled token is not run: 11 decode steps for 12 tokens.
        assert_eq!(g.timings.decode_tokens, 11);
        assert_eq!(s.cached().len(), PROMPT.len() + 11);
    }
}

#[test]
fn a_shared_prefix_is_not_run_again_and_changes_nothing() {
    let mut s = Session::new(Box::new(backend(Arch::Qwen2, 64)));
    let first = s
        .generate(
            &PROMPT,
            &mut Sampler::greedy(),
            &opts(5),
            None,
            &mut no_text,
        )
        .unwrap();
    // Next turn: the whole previous sequence plus new tokens.
    let mut next: Vec<u32> = PROMPT.to_vec();
    next.extend(&first.generated_ids);
    next.extend([7, 8, 9]);
    let cont = s
        .generate(&next, &mut Sampler::greedy(), &opts(6), None, &mut no_text)
        .unwrap();
    // The cache held PROMPT + 4 generated tokens: the 5th generated one and the 3 new ones run.
    assert_eq!(cont.timings.prompt_tokens, 4);
    let mut fresh = Session::new(Box::new(backend(Arch::Qwen2, 64)));
    let want = fresh
        .generate(&next, &mut Sampler::greedy(), &opts(6), None, &mut no_text)
        .unwrap();
    assert_eq!(want.timings.prompt_tokens, next.len());
    assert_eq!(cont.generated_ids, want.generated_ids);
    // A prompt that diverges early rewinds to the divergence.
    let mut other = PROMPT.to_vec();
    other[3] = 1;
    let g = s
        .generate(&other, &mut Sampler::greedy(), &opts(2), None, &mut no_text)
        .unwrap();
    assert_eq!(g.timings.prompt_tokens, PROMPT.len() - 3);
}

#[test]
fn stops_on_end_of_generation_at_max_tokens_and_when_the_context_is_full() {
    let mut s = Session::new(Box::new(backend(Arch::Llama, 64)));
    let free = s
        .generate(
            &PROMPT,
            &mut Sampler::greedy(),
            &opts(8),
            None,
            &mut no_text,
        )
        .unwrap();
    // Make the 4th greedy token an end-of-generation token (one not generated before it).
    let eog = free.generated_ids[3];
    let k = free.generated_ids.iter().position(|&t| t == eog).unwrap();
    let mut o = opts(8);
    o.eog = vec![eog];
    let g = s
        .generate(&PROMPT, &mut Sampler::greedy(), &o, None, &mut no_text)
        .unwrap();
    assert_eq!(g.stop, StopReason::EndOfGeneration(eog));
    assert_eq!(g.generated_ids, free.generated_ids[..=k]);

    // Context of 10: 7 prompt tokens, then 3 more positions; the 4th sampled token has no room.
    let mut s = Session::new(Box::new(backend(Arch::Llama, 10)));
    let g = s
        .generate(
            &PROMPT,
            &mut Sampler::greedy(),
            &opts(50),
            None,
            &mut no_text,
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(g.generated_ids.len(), 4);
    assert_eq!(g.generated_ids, free.generated_ids[..4]);

    // A prompt that fills the context is refused with a clear error, not a crash.
    let long = vec![3u32; 10];
    let e = s
        .generate(&long, &mut Sampler::greedy(), &opts(5), None, &mut no_text)
        .unwrap_err();
    assert!(matches!(
        e,
        GenerateError::PromptTooLong {
            n_prompt: 10,
            n_ctx: 10
        }
    ));
    assert!(e.to_string().contains("10 tokens"));
}

#[test]
fn stop_strings_end_generation_and_the_text_streams() {
    // Token text: each id is one letter, 'a' + id % 26.
    let text_of = |id: u32| vec![b'a' + (id % 26) as u8];
    let mut s = Session::new(Box::new(backend(Arch::Qwen2, 64)));
    let mut streamed = String::new();
    let free = s
        .generate(
            &PROMPT,
            &mut Sampler::greedy(),
            &opts(10),
            Some(&text_of),
            &mut |t: &str| streamed.push_str(t),
        )
        .unwrap();
    assert_eq!(streamed, free.text);
    assert_eq!(free.text.len(), 10);
    let stop = free.text[4..6].to_string();
    let cut = free.text.find(&stop).unwrap();
    let mut o = opts(10);
    o.stop_strings = vec![stop.clone()];
    let g = s
        .generate(
            &PROMPT,
            &mut Sampler::greedy(),
            &o,
            Some(&text_of),
            &mut |_: &str| {},
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::StopString(stop));
    assert_eq!(g.text, free.text[..cut]);
}

/// The CPU backend with `DeviceSteps`: a queued step runs at once and its choice (the host
/// sampler's rule with the draw it is handed) waits in a queue (what a GPU does later, in order);
/// `None` feeds the last queued step's choice. Like the GPU it takes no `top_k` of 0 (the
/// caller then samples on the host).
struct Ahead {
    inner: CpuBackend,
    chosen: VecDeque<u32>,
    /// The last queued step's choice and the position it is fed at.
    last: Option<(u32, usize)>,
    rule: SamplerConfig,
    /// The sequence the steps chose after (the penalty's window), as `set_rule` gave it plus
    /// every choice since.
    history: Vec<u32>,
}

impl Backend for Ahead {
    fn name(&self) -> &'static str {
        "ahead"
    }
    fn config(&self) -> &host::model::Config {
        self.inner.config()
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn n_past(&self) -> usize {
        self.inner.n_past()
    }
    fn forward(&mut self, t: &[u32], pos: usize, l: Logits) -> Result<Vec<f32>, BackendError> {
        self.chosen.clear();
        self.last = None;
        self.inner.forward(t, pos, l)
    }
    fn reset(&mut self) {
        self.chosen.clear();
        self.last = None;
        self.inner.reset();
    }
    fn device_steps(&mut self) -> Option<&mut dyn DeviceSteps> {
        Some(self)
    }
}

impl DeviceSteps for Ahead {
    fn can_choose(&self, cfg: &SamplerConfig) -> bool {
        cfg.is_greedy() || cfg.top_k > 0
    }
    fn set_rule(&mut self, cfg: &SamplerConfig, history: &[u32]) -> Result<(), BackendError> {
        if !self.can_choose(cfg) {
            return Err(BackendError::Device(format!("not on the device: {cfg:?}")));
        }
        self.rule = cfg.clone();
        self.history = history.to_vec();
        Ok(())
    }
    fn queue_step(&mut self, token: Option<u32>, pos: usize, u: f64) -> Result<(), BackendError> {
        let t = match (token, self.last) {
            (Some(t), _) => t,
            (None, Some((c, p))) if p == pos => c,
            (None, _) => return Err(BackendError::Device(format!("nothing chosen for {pos}"))),
        };
        let l = self.inner.forward(&[t], pos, Logits::Last)?;
        let c = choose(&self.rule, &l, &self.history, u)
            .map_err(|e| BackendError::Device(e.to_string()))?;
        self.history.push(c);
        self.chosen.push_back(c);
        self.last = Some((c, pos + 1));
        Ok(())
    }
    fn take_step(&mut self) -> Result<u32, BackendError> {
        self.chosen
            .pop_front()
            .ok_or_else(|| BackendError::Device("nothing queued".into()))
    }
}

#[test]
fn pipelined_decoding_generates_what_the_host_loop_generates() {
    let text_of = |id: u32| vec![b'a' + (id % 26) as u8];
    let ahead = |n_ctx| Ahead {
        inner: backend(Arch::Qwen2, n_ctx),
        chosen: VecDeque::new(),
        last: None,
        rule: SamplerConfig::default(),
        history: Vec::new(),
    };
    let sampled = SamplerConfig {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        seed: 3,
        ..SamplerConfig::default()
    };
    let rules = [
        SamplerConfig::default(),
        sampled.clone(),
        SamplerConfig {
            temperature: 1.5,
            top_k: 7,
            top_p: 0.6,
            min_p: 0.0,
            repeat_penalty: 1.3,
            repeat_last_n: 5,
            seed: 11,
        },
        // Greedy after a penalty.
        SamplerConfig {
            repeat_penalty: 1.3,
            ..SamplerConfig::default()
        },
    ];
    for (r, rule) in rules.iter().enumerate() {
        let free = Session::new(Box::new(backend(Arch::Qwen2, 64)))
            .generate(
                &PROMPT,
                &mut Sampler::new(rule.clone()).unwrap(),
                &opts(12),
                Some(&text_of),
                &mut no_text,
            )
            .unwrap();
        let stop = free.text[5..7].to_string();
        let cases: Vec<(usize, GenerateOptions)> = vec![
            (64, opts(12)),
            (64, opts(1)),
            (64, opts(0)),
            (
                64,
                GenerateOptions {
                    eog: vec![free.generated_ids[4]],
                    ..opts(12)
                },
            ),
            (
                64,
                GenerateOptions {
                    eog: vec![free.generated_ids[0]],
                    ..opts(12)
                },
            ),
            (
                64,
                GenerateOptions {
                    stop_strings: vec![stop],
                    ..opts(12)
                },
            ),
            (10, opts(50)),
            (8, opts(50)),
        ];
        for (i, (n_ctx, o)) in cases.into_iter().enumerate() {
            let mut host = Session::new(Box::new(backend(Arch::Qwen2, n_ctx)));
            let mut host_sampler = Sampler::new(rule.clone()).unwrap();
            let want = host
                .generate(&PROMPT, &mut host_sampler, &o, Some(&text_of), &mut no_text)
                .unwrap();
            let mut piped = Session::new(Box::new(ahead(n_ctx)));
            let mut piped_sampler = Sampler::new(rule.clone()).unwrap();
            let mut streamed = String::new();
            let got = piped
                .generate(
                    &PROMPT,
                    &mut piped_sampler,
                    &o,
                    Some(&text_of),
                    &mut |t: &str| streamed.push_str(t),
                )
                .unwrap();
            let case = format!("rule {r}, case {i}");
            assert_eq!(got.generated_ids, want.generated_ids, "{case}");
            assert_eq!(got.stop, want.stop, "{case}");
            assert_eq!((&got.text, &streamed), (&want.text, &want.text), "{case}");
            // The sampler's generator is where the host loop left it (a draw for a step queued
            // ahead of the stop was given back): the next generation draws the same.
            assert_eq!(piped_sampler.draw(), host_sampler.draw(), "{case}");
            // The cache it reports is what the backend holds: the host loop's, plus at most the
            // stopping token, whose step was queued ahead.
            let held = piped.cached().to_vec();
            assert_eq!(held.len(), piped.backend().n_past(), "{case}");
            assert!(held.starts_with(host.cached()), "{case}");
            assert!(held.len() <= host.cached().len() + 1, "{case}");
            assert_eq!(held[..PROMPT.len()], PROMPT, "{case}");
            assert!(
                want.generated_ids.starts_with(&held[PROMPT.len()..]),
                "{case}"
            );
            assert_eq!(
                got.timings.decode_tokens,
                held.len() - PROMPT.len(),
                "{case}"
            );
        }
    }
    // The sampled rules draw differently from greedy (the comparison above is not vacuous), and
    // the penalty changes the greedy choice.
    let ids = |rule: &SamplerConfig| {
        Session::new(Box::new(ahead(64)))
            .generate(
                &PROMPT,
                &mut Sampler::new(rule.clone()).unwrap(),
                &opts(12),
                None,
                &mut no_text,
            )
            .unwrap()
            .generated_ids
    };
    let greedy = ids(&rules[0]);
    assert_ne!(ids(&rules[1]), greedy);
    assert_ne!(ids(&rules[3]), greedy);
    // A rule the backend does not take (top-k off; `set_rule` refuses it) runs the host loop.
    let off = SamplerConfig {
        top_k: 0,
        ..sampled
    };
    let mut piped = Session::new(Box::new(ahead(64)));
    let got = piped
        .generate(
            &PROMPT,
            &mut Sampler::new(off.clone()).unwrap(),
            &opts(6),
            None,
            &mut no_text,
        )
        .unwrap();
    let want = Session::new(Box::new(backend(Arch::Qwen2, 64)))
        .generate(
            &PROMPT,
            &mut Sampler::new(off).unwrap(),
            &opts(6),
            None,
            &mut no_text,
        )
        .unwrap();
    assert_eq!(got.generated_ids, want.generated_ids);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let cfg = |seed| SamplerConfig {
        temperature: 1.5,
        top_k: 50,
        top_p: 0.95,
        min_p: 0.01,
        repeat_penalty: 1.1,
        repeat_last_n: 16,
        seed,
    };
    let run = |seed| {
        let mut s = Session::new(Box::new(backend(Arch::Qwen2, 64)));
        s.generate(
            &PROMPT,
            &mut Sampler::new(cfg(seed)).unwrap(),
            &opts(20),
            None,
            &mut no_text,
        )
        .unwrap()
        .generated_ids
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn perplexity_matches_a_direct_computation() {
    let n_ctx = 8;
    let tokens: Vec<u32> = (0..27).map(|i| (i * 37 + 5) % 300).collect();
    // Exact arithmetic: a token's logits do not depend on how the chunk is split into forwards,
    // so the method is checked to rounding.
    let g = Gguf::from_bytes(build_bytes(&TinySpec::new(Arch::Llama, GgmlType::Q8_0))).unwrap();
    let mut be = CpuBackend::load(
        Arc::new(g),
        &CpuOptions {
            n_ctx,
            threads: 2,
            arith: Arith::Exact,
            ..Default::default()
        },
    )
    .unwrap();
    let bos = Some(299);
    let mut seen = Vec::new();
    let r = perplexity::compute(&mut be, &tokens, n_ctx, 0, 3, bos, &mut |i, p| {
        seen.push((i, p))
    })
    .unwrap();
    // Direct: each chunk from scratch in one pass, BOS first, second half scored.
    let nv = be.config().n_vocab;
    let (mut nll, mut n) = (0.0f64, 0);
    for c in 0..3 {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        chunk[0] = 299;
        be.reset();
        let all = be.forward(&chunk, 0, Logits::All).unwrap();
        for j in n_ctx / 2..n_ctx - 1 {
            let row = &all[j * nv..][..nv];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            nll += lse - row[chunk[j + 1] as usize] as f64;
            n += 1;
        }
    }
    let want = (nll / n as f64).exp();
    assert_eq!(r.n_chunks, 3);
    assert_eq!(r.count, n);
    assert!((r.ppl - want).abs() < 1e-4 * want, "{} vs {want}", r.ppl);
    assert!(r.stderr > 0.0);
    assert_eq!(seen.len(), 3);
    assert!((seen[2].1 - r.ppl).abs() < 1e-12);

    let short = perplexity::compute(&mut be, &tokens[..15], n_ctx, 0, 8, None, &mut |_, _| {});
    assert!(matches!(
        short,
        Err(perplexity::PerplexityError::TooShort { n_tokens: 15, .. })
    ));
}
