//! Shared by the GPU test files: one device for the whole test binary, random inputs, poisoned
//! outputs and the closeness check.
//!
//! Every GPU test is `#[ignore]`d with the reason below, so a machine without a GPU reports it as
//! ignored; on a GPU machine run the suite with `--ignored` (`scripts/gpu-bundle.sh` builds a
//! bundle whose runner does that). Run on a machine without a device, an ignored test fails (it
//! panics in [`gpu`]): it never passes without having run.
#![allow(dead_code)]

pub mod e2e;

use std::sync::{Mutex, MutexGuard, OnceLock};

use cudarc::driver::{CudaSlice, DeviceRepr};
pub use fixtures::synth::Rng;
use host::cuda::Gpu;

/// The `ignore` reason of every GPU test.
pub const NEEDS_GPU: &str = "needs an NVIDIA GPU: run with --ignored on a GPU machine";

static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();

/// The device, opened once per test binary (tests take turns: the guard serializes them).
pub fn gpu() -> MutexGuard<'static, Gpu> {
    let m = GPU.get_or_init(|| {
        let mut g = match Gpu::new(0) {
            Ok(g) => g,
            Err(e) => panic!("GPU test run without a usable GPU: {e}"),
        };
        // Report asynchronous faults under the kernel that caused them.
        g.set_sync_each_launch(true);
        eprintln!(
            "device: {} (sm_{}{})",
            g.name(),
            g.compute_capability().0,
            g.compute_capability().1
        );
        Mutex::new(g)
    });
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * rng.uniform()).collect()
}

/// `n` values that are exactly representable in f16, uniform in about `[-scale, scale)`.
pub fn random_f16_exact(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| half::f16::from_f32(scale * rng.uniform()).to_f32())
        .collect()
}

/// A device buffer of `n` elements filled with `poison` (NaN for floats), so that any element a
/// kernel fails to write is caught by the check.
pub fn poisoned<T: DeviceRepr + Copy>(g: &Gpu, n: usize, poison: T) -> CudaSlice<T> {
    g.upload(&vec![poison; n], "poisoned output")
        .expect("upload")
}

pub fn upload<T: DeviceRepr>(g: &Gpu, v: &[T]) -> CudaSlice<T> {
    g.upload(v, "test input").expect("upload")
}

pub fn download<T: DeviceRepr + Default + Clone>(g: &Gpu, s: &CudaSlice<T>) -> Vec<T> {
    g.download(s).expect("download")
}

/// Checks `|got − want| ≤ atol + rtol·|want|` elementwise, with `atol` given relative to the RMS
/// of `want` (so cancellation near zero is judged against the data's scale). NaN or infinity in
/// `got` fails unless `want` holds the same infinity. Reports the worst element and the relative
/// L2 error of the whole output.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol_rms: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let rms =
        (want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let atol = atol_rms * rms;
    let mut worst = (0usize, f64::NEG_INFINITY);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() && !(g.is_infinite() && g == w) {
            panic!("{what}: element {i} is {g} (want {w}): unwritten or invalid");
        }
        let (g, w) = (g as f64, w as f64);
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
        num += (g - w).powi(2);
        den += w.powi(2);
    }
    let rel_l2 = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}: element {i}: got {} want {} (|diff| {:e} > atol {atol:e} + rtol {rtol:e}·|want|); rel L2 {rel_l2:e}",
        got[i],
        want[i],
        (got[i] as f64 - want[i] as f64).abs()
    );
}

/// Bit-for-bit equality, naming the first difference.
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got
        .iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
    {
        panic!(
            "{what}: element {i}: got {} want {} (not bit-equal)",
            got[i], want[i]
        );
    }
}
