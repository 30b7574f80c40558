//! The generation loop on top of any [`Backend`]: prefill in batches, sample, feed back, stream
//! text, stop.
//!
//! A [`Session`] owns a backend and remembers which tokens its KV cache holds, so a multi-turn
//! chat (or any prompt sharing a prefix with the previous one) only runs the new tokens.
//!
//! Stops: on a token of the end-of-generation set, on a stop string (matched on the generated
//! bytes; the text up to it is emitted, the stop string is not), at `max_tokens`, and when the
//! context is full ([`StopReason::ContextFull`], not an error: the text so far is kept).

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::backend::{Backend, BackendError, Logits};
use crate::sample::{SampleError, Sampler};

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(
        "the prompt is {n_prompt} tokens; the context holds {n_ctx} (nothing left to generate)"
    )]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error("the prompt is empty: nothing to predict from")]
    EmptyPrompt,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Sample(#[from] SampleError),
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "value")]
pub enum StopReason {
    /// A token of the end-of-generation set (not part of the text).
    EndOfGeneration(u32),
    /// A stop string appeared (the text ends before it).
    StopString(String),
    MaxTokens,
    /// The KV cache is full.
    ContextFull,
}

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// End-of-generation token ids.
    pub eog: Vec<u32>,
    pub stop_strings: Vec<String>,
    /// Tokens per prefill forward.
    pub batch: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            eog: Vec::new(),
            stop_strings: Vec::new(),
            batch: 128,
        }
    }
}

/// One finished generation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Sampled tokens, including an end-of-generation token that stopped it.
    pub generated_ids: Vec<u32>,
    /// The streamed text (empty when no token text was given).
    pub text: String,
    pub stop: StopReason,
    pub timings: Timings,
}

/// Where the time went.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    /// Prompt tokens actually run (the cached prefix is not run again).
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    /// Forward passes of single generated tokens.
    pub decode_tokens: usize,
    pub decode_secs: f64,
    pub sample_secs: f64,
}

impl Timings {
    pub fn prompt_tok_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_secs)
    }

    pub fn decode_tok_per_sec(&self) -> f64 {
        rate(self.decode_tokens, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// The bytes of a token's text, for streaming and stop strings (the tokenizer's pieces).
pub type TokenBytes<'a> = &'a dyn Fn(u32) -> Vec<u8>;

/// A backend plus the tokens its cache holds.
pub struct Session {
    backend: Box<dyn Backend>,
    cached: Vec<u32>,
}

impl Session {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Session {
            backend,
            cached: Vec::new(),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The tokens the KV cache holds.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }

    pub fn reset(&mut self) {
        self.cached.clear();
        self.backend.reset();
    }

    /// Brings the cache to exactly `tokens` and returns the last token's logits. The prefix
    /// shared with what the cache held is not run again (at least one token always runs, to have
    /// logits). Returns the number of tokens run.
    pub fn prefill(
        &mut self,
        tokens: &[u32],
        batch: usize,
    ) -> Result<(Vec<f32>, usize), GenerateError> {
        if tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let n_ctx = self.backend.capacity();
        if tokens.len() > n_ctx {
            return Err(GenerateError::PromptTooLong {
                n_prompt: tokens.len(),
                n_ctx,
            });
        }
        let common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len() - 1);
        self.cached.truncate(common);
        let mut pos = common;
        let mut logits = Vec::new();
        for chunk in tokens[common..].chunks(batch.max(1)) {
            let last = pos + chunk.len() == tokens.len();
            let want = if last { Logits::Last } else { Logits::None };
            let out = self.backend.forward(chunk, pos, want);
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    self.cached.truncate(pos.min(self.backend.n_past()));
                    return Err(e.into());
                }
            };
            self.cached.extend_from_slice(chunk);
            pos += chunk.len();
            if last {
                logits = out;
            }
        }
        Ok((logits, tokens.len() - common))
    }

    /// Generates from `prompt` (the whole sequence: a cached prefix is reused), calling `on_text`
    /// with each piece of text as soon as it is complete UTF-8 and cannot be the start of a stop
    /// string.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        sampler: &mut Sampler,
        opts: &GenerateOptions,
        token_bytes: Option<TokenBytes<'_>>,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, GenerateError> {
        let n_ctx = self.backend.capacity();
        if prompt.len() >= n_ctx {
            return Err(GenerateError::PromptTooLong {
                n_prompt: prompt.len(),
                n_ctx,
            });
        }
        let mut t = Timings::default();
        let start = Instant::now();
        let (mut logits, ran) = self.prefill(prompt, opts.batch)?;
        t.prompt_tokens = ran;
        t.prompt_secs = start.elapsed().as_secs_f64();

        let mut acc = Accepted {
            history: prompt.to_vec(),
            generated: Vec::new(),
            text: TextStream::new(&opts.stop_strings),
            out: String::new(),
            on_text,
        };
        let mut sample_time = Duration::ZERO;
        let mut decode_time = Duration::ZERO;
        let c = sampler.config();
        let pipelined = self.backend.device_steps().is_some_and(|s| s.can_choose(c));
        let run = if opts.max_tokens == 0 {
            Ok(StopReason::MaxTokens)
        } else if pipelined {
            let ts = Instant::now();
            let first = sampler.sample(&logits, &acc.history);
            sample_time += ts.elapsed();
            first.map_err(GenerateError::from).and_then(|first| {
                self.decode_pipelined(
                    first,
                    sampler,
                    opts,
                    token_bytes,
                    &mut acc,
                    &mut t,
                    &mut decode_time,
                )
            })
        } else {
            let mut step = || -> Result<StopReason, GenerateError> {
                loop {
                    let ts = Instant::now();
                    let next = sampler.sample(&logits, &acc.history)?;
                    sample_time += ts.elapsed();
                    if let Some(stop) = acc.accept(next, opts, token_bytes) {
                        return Ok(stop);
                    }
                    let pos = self.cached.len();
                    if pos + 1 > n_ctx {
                        return Ok(StopReason::ContextFull);
                    }
                    let td = Instant::now();
                    logits = self.backend.forward(&[next], pos, Logits::Last)?;
                    decode_time += td.elapsed();
                    t.decode_tokens += 1;
                    self.cached.push(next);
                }
            };
            step()
        };
        let stop = match run {
            Ok(s) => s,
            Err(e) => {
                // The cache vouches for what the backend holds, never more.
                let held = self.backend.n_past();
                self.cached.truncate(held);
                return Err(e);
            }
        };
        let Accepted {
            generated,
            mut text,
            mut out,
            on_text,
            ..
        } = acc;
        if !matches!(stop, StopReason::StopString(_)) {
            let s = text.finish();
            emit(on_text, &s, &mut out);
        }
        t.decode_secs = decode_time.as_secs_f64();
        t.sample_secs = sample_time.as_secs_f64();
        Ok(Generation {
            prompt_ids: prompt.to_vec(),
            generated_ids: generated,
            text: out,
            stop,
            timings: t,
        })
    }

    /// Decoding through the backend's [`crate::backend::DeviceSteps`], one step ahead: the step
    /// that runs the accepted token `next` is queued, then (when another token may follow) the
    /// step fed the token that one chooses, and only then is `next`'s successor read, so the
    /// device runs the next step while the host streams this one's text. Each step is handed the
    /// uniform draw `sampler` would make for it, in the same order, so the tokens are the host
    /// loop's (up to the rounding of the device's arithmetic at an interval's edge); a draw for a
    /// step queued ahead of a stop is given back. A step queued ahead of a stop ran: its token is
    /// in the cache like every other token run.
    #[allow(clippy::too_many_arguments)]
    fn decode_pipelined(
        &mut self,
        mut next: u32,
        sampler: &mut Sampler,
        opts: &GenerateOptions,
        token_bytes: Option<TokenBytes<'_>>,
        acc: &mut Accepted<'_>,
        t: &mut Timings,
        decode_time: &mut Duration,
    ) -> Result<StopReason, GenerateError> {
        let n_ctx = self.backend.capacity();
        let Some(steps) = self.backend.device_steps() else {
            return Err(GenerateError::Backend(BackendError::Device(
                "the backend has no device-side decoding".into(),
            )));
        };
        let greedy = sampler.config().is_greedy();
        let draw = |s: &mut Sampler| if greedy { 0.0 } else { s.draw() };
        // Whether the step of `next` is already queued (fed on the device).
        let mut ahead = false;
        let mut rule_set = false;
        let stop = loop {
            if let Some(stop) = acc.accept(next, opts, token_bytes) {
                break stop;
            }
            let pos = self.cached.len();
            if pos + 1 > n_ctx {
                break StopReason::ContextFull;
            }
            let td = Instant::now();
            if !rule_set {
                // The history so far ends with `next`, the first token the device runs.
                steps.set_rule(sampler.config(), &acc.history)?;
                rule_set = true;
            }
            if !ahead {
                steps.queue_step(Some(next), pos, draw(sampler))?;
            }
            self.cached.push(next);
            t.decode_tokens += 1;
            // The step after this one is needed unless the token it runs ends the generation:
            // at max_tokens or a full context (known now), or as a stop (known later).
            ahead = acc.generated.len() + 1 < opts.max_tokens && pos + 2 <= n_ctx;
            if ahead {
                steps.queue_step(None, pos + 1, draw(sampler))?;
            }
            next = steps.take_step()?;
            *decode_time += td.elapsed();
        };
        if ahead {
            // The step of the stopping token ran; its choice is not needed, nor its draw.
            self.cached.push(next);
            t.decode_tokens += 1;
            steps.take_step()?;
            if !greedy {
                sampler.undraw();
            }
        }
        Ok(stop)
    }
}

/// The tokens generated so far and their streamed text.
struct Accepted<'a> {
    history: Vec<u32>,
    generated: Vec<u32>,
    text: TextStream,
    out: String,
    on_text: &'a mut dyn FnMut(&str),
}

impl Accepted<'_> {
    /// Takes the chosen token `next`: its text is streamed; returns why generation stops here,
    /// if it does (an end-of-generation token, a stop string, `max_tokens` reached).
    fn accept(
        &mut self,
        next: u32,
        opts: &GenerateOptions,
        token_bytes: Option<TokenBytes<'_>>,
    ) -> Option<StopReason> {
        self.generated.push(next);
        self.history.push(next);
        if opts.eog.contains(&next) {
            return Some(StopReason::EndOfGeneration(next));
        }
        if let Some(tb) = token_bytes {
            let (s, hit) = self.text.push(&tb(next));
            emit(self.on_text, &s, &mut self.out);
            if let Some(i) = hit {
                return Some(StopReason::StopString(opts.stop_strings[i].clone()));
            }
        }
        if self.generated.len() >= opts.max_tokens {
            return Some(StopReason::MaxTokens);
        }
        None
    }
}

/// Streams a non-empty piece of text and keeps it.
fn emit(on_text: &mut dyn FnMut(&str), s: &str, out: &mut String) {
    if !s.is_empty() {
        on_text(s);
        out.push_str(s);
    }
}

/// Incremental text out of token bytes: holds back an incomplete UTF-8 sequence and any tail
/// that could be the start of a stop string.
#[derive(Debug)]
pub struct TextStream {
    bytes: Vec<u8>,
    emitted: usize,
    stops: Vec<Vec<u8>>,
}

impl TextStream {
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            bytes: Vec::new(),
            emitted: 0,
            stops: stops
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Adds a token's bytes; returns the text now safe to show, and the index of the stop string
    /// found (if any; the text returned then ends right before it).
    pub fn push(&mut self, piece: &[u8]) -> (String, Option<usize>) {
        self.bytes.extend_from_slice(piece);
        let pending = &self.bytes[self.emitted..];
        // The earliest stop string in the pending bytes.
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| find(pending, s).map(|p| (p, i)))
            .min();
        if let Some((p, i)) = hit {
            let end = self.emitted + p;
            let s = String::from_utf8_lossy(&self.bytes[self.emitted..end]).into_owned();
            self.emitted = end;
            return (s, Some(i));
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(pending.len() + 1))
                    .rev()
                    .find(|&k| pending.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let limit = self.bytes.len() - hold;
        (self.take_utf8(limit), None)
    }

    /// Everything still held back (a stop-string prefix that never completed, or a broken UTF-8
    /// tail, shown as U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.bytes[self.emitted..]).into_owned();
        self.emitted = self.bytes.len();
        s
    }

    /// Emits complete UTF-8 from `emitted` up to `limit`; an incomplete sequence at the end waits
    /// for more bytes, an invalid one becomes U+FFFD.
    fn take_utf8(&mut self, limit: usize) -> String {
        let mut out = String::new();
        while self.emitted < limit {
            let chunk = &self.bytes[self.emitted..limit];
            match std::str::from_utf8(chunk) {
                Ok(s) => {
                    out.push_str(s);
                    self.emitted = limit;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid_up_to` bytes are valid UTF-8 by definition.
                    out.push_str(std::str::from_utf8(&chunk[..valid]).unwrap_or_default());
                    self.emitted += valid;
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.emitted += n;
                        }
                        None => break,
                    }
                }
            }
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, Option<usize>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = TextStream::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let (s, hit) = t.push(p);
            out.push(s);
            if hit.is_some() {
                return (out, hit);
            }
        }
        out.push(t.finish());
        (out, None)
    }

    #[test]
    fn utf8_split_across_tokens_waits_for_its_last_byte() {
        // "é" is C3 A9; "€" is E2 82 AC.
        let (out, hit) = stream(&[], &[b"a\xC3", b"\xA9b\xE2\x82", b"\xAC"]);
        assert_eq!(out, ["a", "éb", "€", ""]);
        assert_eq!(hit, None);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (out, _) = stream(&[], &[b"x\xFFy", b"\xC3"]);
        assert_eq!(out.concat(), "x\u{FFFD}y\u{FFFD}");
    }

    #[test]
    fn stop_string_across_tokens_is_cut_and_never_shown() {
        let (out, hit) = stream(&["</end>"], &[b"hello </", b"en", b"d> more"]);
        assert_eq!(hit, Some(0));
        assert_eq!(out.concat(), "hello ");
        // The held-back prefix was not shown before the stop string completed.
        assert_eq!(out[0], "hello ");
        assert_eq!(out[1], "");
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released() {
        let (out, hit) = stream(&["STOP"], &[b"ST", b"ART", b" ok"]);
        assert_eq!(hit, None);
        assert_eq!(out, ["", "START", " ok", ""]);
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let (out, hit) = stream(&["bb", "a"], &[b"xxbba"]);
        assert_eq!(hit, Some(0));
        assert_eq!(out.concat(), "xx");
    }
}
