//! Choosing the next token from logits: greedy, or a chain of filters and a seeded random draw.
//!
//! The chain, in order (the order llama.cpp's default sampler uses):
//! 1. repetition penalty over the last `repeat_last_n` tokens (CTRL-style: a positive logit is
//!    divided by the penalty, a negative one multiplied);
//! 2. `temperature <= 0`: greedy, the argmax (ties go to the lower id); stop here;
//! 3. top-k: keep the k largest logits (`0` = off);
//! 4. top-p: keep the smallest prefix of the sorted candidates whose probability reaches p
//!    (`1` = off);
//! 5. min-p: drop candidates whose probability is below `min_p` × the top probability (`0` = off);
//! 6. temperature: divide the remaining logits by it;
//! 7. draw from their softmax with the sampler's own generator (seeded: the same seed, logits and
//!    history give the same token on any machine).

use thiserror::Error;

/// Sampling settings. `Default` is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// A sampling setting out of its range.
#[derive(Debug, Error, PartialEq)]
pub enum SampleError {
    #[error("invalid {name} {value}: {expected}")]
    Invalid {
        name: &'static str,
        value: f32,
        expected: &'static str,
    },
    #[error("no logits to sample from")]
    Empty,
}

impl SamplerConfig {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), SampleError> {
        let bad = |name, value, expected| {
            Err(SampleError::Invalid {
                name,
                value,
                expected,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                self.temperature,
                "must be a finite number >= 0 (0 = greedy)",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p", self.top_p, "must be in (0, 1] (1 = off)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p", self.min_p, "must be in [0, 1] (0 = off)");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(
                "repeat penalty",
                self.repeat_penalty,
                "must be a finite number > 0 (1 = off)",
            );
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// The argmax of `logits`, ties to the lower id. NaN never wins.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// SplitMix64: small, fast, and identical on every platform.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Steps back over the last [`Rng::next_u64`].
    fn back(&mut self) {
        self.0 = self.0.wrapping_sub(0x9e37_79b9_7f4a_7c15);
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sampler: settings plus its random generator's state.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    /// Scratch: (id, logit) candidates.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Self, SampleError> {
        cfg.validate()?;
        let rng = Rng(cfg.seed);
        Ok(Sampler {
            cfg,
            rng,
            cand: Vec::new(),
        })
    }

    /// A greedy sampler.
    pub fn greedy() -> Self {
        Sampler::new(SamplerConfig::default()).expect("the default settings are valid")
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token. `history` is the sequence so far (prompt and generated tokens); the
    /// repetition penalty reads its tail. Draws one uniform from the generator unless greedy.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, SampleError> {
        let u = if self.cfg.is_greedy() {
            0.0
        } else {
            self.draw()
        };
        choose_into(&self.cfg, logits, history, u, &mut self.cand)
    }

    /// The uniform in `[0, 1)` that the next [`Sampler::sample`] would draw, taken from the
    /// generator: for a sampler that runs elsewhere by the same rule ([`choose`],
    /// `crate::backend::DeviceSteps`).
    pub fn draw(&mut self) -> f64 {
        self.rng.next_f64()
    }

    /// Gives the last [`Sampler::draw`] back: the generator is where it was before it.
    pub fn undraw(&mut self) {
        self.rng.back();
    }
}

/// The token `cfg`'s chain (see the module docs) picks from `logits` after `history`, with the
/// uniform draw `u` in `[0, 1)` (unused when greedy): what [`Sampler::sample`] returns when its
/// generator yields `u`.
pub fn choose(
    cfg: &SamplerConfig,
    logits: &[f32],
    history: &[u32],
    u: f64,
) -> Result<u32, SampleError> {
    choose_into(cfg, logits, history, u, &mut Vec::new())
}

fn choose_into(
    c: &SamplerConfig,
    logits: &[f32],
    history: &[u32],
    u: f64,
    cand: &mut Vec<(u32, f32)>,
) -> Result<u32, SampleError> {
    let kept = candidates_into(c, logits, history, cand)?;
    if c.is_greedy() {
        return Ok(kept);
    }
    let t = c.temperature;
    let probs = softmax_f64(cand.iter().map(|e| e.1 / t));
    let mut cum = 0.0;
    for (e, p) in cand.iter().zip(&probs) {
        cum += p;
        if u < cum {
            return Ok(e.0);
        }
    }
    // Rounding left `cum` a hair under 1: the last candidate.
    Ok(cand.last().map(|e| e.0).unwrap_or(0))
}

/// The candidates `cfg`'s chain draws from, most likely first, with their probabilities at the
/// temperature (they sum to 1): for checking another implementation of the draw. Greedy: the one
/// token, probability 1.
pub fn candidates(
    cfg: &SamplerConfig,
    logits: &[f32],
    history: &[u32],
) -> Result<Vec<(u32, f64)>, SampleError> {
    let mut cand = Vec::new();
    let kept = candidates_into(cfg, logits, history, &mut cand)?;
    if cfg.is_greedy() {
        return Ok(vec![(kept, 1.0)]);
    }
    let t = cfg.temperature;
    let probs = softmax_f64(cand.iter().map(|e| e.1 / t));
    Ok(cand.iter().map(|e| e.0).zip(probs).collect())
}

/// Steps 1–5 of the chain into `cand` (sorted, most likely first); returns the argmax when greedy
/// (then `cand` is not filtered), else the first candidate.
fn candidates_into(
    c: &SamplerConfig,
    logits: &[f32],
    history: &[u32],
    cand: &mut Vec<(u32, f32)>,
) -> Result<u32, SampleError> {
    if logits.is_empty() {
        return Err(SampleError::Empty);
    }
    cand.clear();
    cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
    if c.repeat_penalty != 1.0 && c.repeat_last_n > 0 {
        let tail = &history[history.len().saturating_sub(c.repeat_last_n)..];
        let mut seen = std::collections::HashSet::new();
        for &t in tail {
            if let Some(e) = cand.get_mut(t as usize)
                && seen.insert(t)
            {
                e.1 = if e.1 > 0.0 {
                    e.1 / c.repeat_penalty
                } else {
                    e.1 * c.repeat_penalty
                };
            }
        }
    }
    if c.is_greedy() {
        let l: Vec<f32> = cand.iter().map(|e| e.1).collect();
        return argmax(&l).ok_or(SampleError::Empty);
    }
    // NaN logits can never be drawn.
    cand.retain(|e| !e.1.is_nan());
    if cand.is_empty() {
        return Err(SampleError::Empty);
    }
    // Sorted by logit, descending; ties by id so the order is fully determined.
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if c.top_k > 0 && c.top_k < cand.len() {
        cand.select_nth_unstable_by(c.top_k - 1, by_logit);
        cand.truncate(c.top_k);
    }
    cand.sort_unstable_by(by_logit);
    if c.top_p < 1.0 || c.min_p > 0.0 {
        let probs = softmax_f64(cand.iter().map(|e| e.1));
        let mut keep = cand.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= c.top_p as f64 {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = probs[0] * c.min_p as f64;
            let n = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            keep = keep.min(n);
        }
        cand.truncate(keep);
    }
    Ok(cand[0].0)
}

fn softmax_f64(x: impl Iterator<Item = f32> + Clone) -> Vec<f64> {
    let max = x.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.map(|v| (v as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32) -> SamplerConfig {
        SamplerConfig {
            temperature,
            seed: 42,
            ..Default::default()
        }
    }

    #[test]
    fn argmax_ties_go_to_the_lower_id_and_nan_never_wins() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN, 0.5]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn greedy_ignores_the_seed() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        for seed in 0..5 {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.sample(&logits, &[]).unwrap(), 1);
        }
    }

    #[test]
    fn same_seed_same_draws_different_seed_different_draws() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed, ..cfg(1.0) }).unwrap();
            (0..64)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_1_and_tiny_top_p_are_greedy() {
        let logits = [0.3, 0.1, 5.0, 4.9, -2.0];
        for c in [
            SamplerConfig {
                top_k: 1,
                ..cfg(1.5)
            },
            SamplerConfig {
                top_p: 1e-6,
                ..cfg(1.5)
            },
            SamplerConfig {
                min_p: 1.0,
                ..cfg(1.5)
            },
        ] {
            let mut s = Sampler::new(c).unwrap();
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[]).unwrap(), 2);
            }
        }
    }

    #[test]
    fn top_k_limits_the_support_and_frequencies_follow_the_softmax() {
        // Two candidates after top-k=2 with logits 1 and 0: p = e/(1+e) ≈ 0.731 at temperature 1.
        let logits = [1.0, 0.0, -0.5, -0.6];
        let mut s = Sampler::new(SamplerConfig {
            top_k: 2,
            ..cfg(1.0)
        })
        .unwrap();
        let n = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0);
        let p0 = counts[0] as f64 / n as f64;
        let want = 1f64.exp() / (1.0 + 1f64.exp());
        assert!((p0 - want).abs() < 0.02, "p0 {p0} vs {want}");
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        // probs ∝ e^0, e^-1, e^-5: relative to the top 1, 0.37, 0.0067. min_p 0.1 keeps two.
        let logits = [0.0, -1.0, -5.0];
        let mut s = Sampler::new(SamplerConfig {
            min_p: 0.1,
            ..cfg(1.0)
        })
        .unwrap();
        let mut seen = [false; 3];
        for _ in 0..2000 {
            seen[s.sample(&logits, &[]).unwrap() as usize] = true;
        }
        assert_eq!(seen, [true, true, false]);
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let logits = [2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 1.5,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&logits, &[0]).unwrap(), 1);
        assert_eq!(s.sample(&logits, &[2]).unwrap(), 0);
    }

    #[test]
    fn sample_is_choose_with_the_generators_draw_and_undraw_steps_back() {
        let logits: Vec<f32> = (0..60)
            .map(|i| ((i * 13) % 17) as f32 * 0.4 - 2.0)
            .collect();
        let c = SamplerConfig {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.9,
            min_p: 0.02,
            repeat_penalty: 1.2,
            repeat_last_n: 4,
            seed: 5,
        };
        // Tokens 13, 30 and 47 have the largest logit (4.4).
        let history = [3u32, 30, 30, 13, 47];
        let mut s = Sampler::new(c.clone()).unwrap();
        let mut twin = Sampler::new(c.clone()).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let u = twin.draw();
            let id = s.sample(&logits, &history).unwrap();
            assert_eq!(id, choose(&c, &logits, &history, u).unwrap());
            seen.insert(id);
        }
        assert!(seen.len() > 2, "{seen:?}");
        let a = twin.draw();
        twin.undraw();
        assert_eq!(twin.draw(), a);
        // The candidates: most likely first, probabilities summing to 1, and `choose` picks the
        // one whose interval holds u.
        let cand = candidates(&c, &logits, &history).unwrap();
        assert!(cand.len() > 1 && cand.len() <= 20);
        assert!((cand.iter().map(|e| e.1).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(cand.windows(2).all(|w| w[0].1 >= w[1].1));
        let mut lo = 0.0;
        for &(id, p) in &cand {
            let mid = lo + p / 2.0;
            assert_eq!(choose(&c, &logits, &history, mid).unwrap(), id);
            lo += p;
        }
        // The penalty moved token 13 (in the window of 4).
        let plain = SamplerConfig {
            repeat_penalty: 1.0,
            ..c.clone()
        };
        let p_of = |cfg: &SamplerConfig, id| {
            candidates(cfg, &logits, &history)
                .unwrap()
                .iter()
                .find(|e| e.0 == id)
                .map(|e| e.1)
        };
        assert!(p_of(&c, 13).unwrap() < p_of(&plain, 13).unwrap());
        assert_eq!(
            candidates(&SamplerConfig::default(), &logits, &[]).unwrap(),
            vec![(argmax(&logits).unwrap(), 1.0)]
        );
    }

    #[test]
    fn invalid_settings_are_refused() {
        for c in [
            cfg(-1.0),
            cfg(f32::NAN),
            SamplerConfig {
                top_p: 0.0,
                ..cfg(1.0)
            },
            SamplerConfig {
                top_p: 1.5,
                ..cfg(1.0)
            },
            SamplerConfig {
                min_p: -0.1,
                ..cfg(1.0)
            },
            SamplerConfig {
                repeat_penalty: 0.0,
                ..cfg(1.0)
            },
        ] {
            assert!(matches!(Sampler::new(c), Err(SampleError::Invalid { .. })));
        }
    }
}
