//! `host kernel-bench [NAME|all] [--type T] [--shape A,B,…] [--reps N]`: the kernel sandbox.
//!
//! Runs one kernel (or every one, `all`) on the real models' shapes with random data, checks its
//! output against the CPU reference, and prints the median time per launch, the achieved GB/s (or
//! TFLOP/s for compute-bound kernels) and the fraction of the device ceiling measured at start:
//! a device-to-device copy (bytes read + written) for bandwidth, cuBLAS GEMMs for arithmetic.
//! Weight matrices are replicated and rotated so that repeated launches do not just hit L2.
//!
//! Benchmarks and their `--shape` (defaults are qwen2.5-0.5B's):
//!
//! | name | shape | bound by |
//! | --- | --- | --- |
//! | `rms_norm` | rows,n (512,896) | bandwidth |
//! | `add` | rows,n (512,896) | bandwidth |
//! | `swiglu` | rows,n_ff (512,4864) | bandwidth |
//! | `rope` | n_tok,n_head,head_dim (512,14,64) | bandwidth |
//! | `kv_append` | n_tok,n_head_kv,head_dim (512,2,64) | bandwidth |
//! | `attention_decode` | n_kv,n_head,n_head_kv,head_dim (4096,14,2,64) | bandwidth (the cache) |
//! | `attention_prefill` | n_tok,n_head,n_head_kv,head_dim,depth (512,14,2,64,0) | f32 arithmetic |
//! | `attention_prefill_mma` | as `attention_prefill` | tensor-core arithmetic (split f16) |
//! | `matvec` | rows,cols (4864,896), `--type` (q5_0) | bandwidth (the weights) |
//! | `matvec_a8` | rows,cols (896,4864), `--type` (q6_k) | bandwidth (the weights) |
//! | `embedding` | n_tok,rows,cols (512,151936,896), `--type` (q5_0) | bandwidth |
//! | `dequant` | rows,cols (4864,896), `--type` (q5_0); f32, f16 and f16x3 out | bandwidth |
//! | `argmax` | n (151936) | bandwidth |
//! | `sample` | n,top_k (151936,40) | latency |
//! | `gemm` | n,k,t (4864,896,512), `--type` f16\|f32\|tf32\|f16x3 | tensor-core arithmetic |
//! | `linear` | n,k,t (4864,896,512), `--type` (q5_0) | the prefill projection: decode + GEMM, per kind |
//! | `lm_head` | n_vocab,n_embd (151936,896), `--type` f16\|f32 | bandwidth (t = 1) |
//! | `q8p` | n_vocab,n_embd (151936,896) | bandwidth: the decode LM head (`matvec_q8p`) |
//!
//! `--type` for `gemm`/`lm_head`: `f16` (f16 inputs, f32 output and accumulation), `f32` (no tensor
//! cores), `tf32`, `f16acc` (f16 accumulation), `f16x3` (split f16, `gemm` only: f32 data, three
//! products per product), each optionally `-nn` (weight stored transposed; not `f16x3`).
//! `linear` times what the backend runs per prefill projection (`Linear::convert`,
//! `Linear::gemm_converted`) for each GEMM kind: the weight decode, the activation conversion and
//! the GEMM, checked against f64.
//! `kernel-bench cublas` runs every combination on the models' shapes (docs/CUBLAS.md).

use std::time::Instant;

use cudarc::driver::{CudaSlice, sys};

use super::CliResult;
use crate::cpu;
use crate::cuda::gemm::{GemmKind, SplitOperand, gemm, gemm_layout, split_f16x3};
use crate::cuda::ops::{
    self, DequantOut, DeviceTensor, KvLayer, KvShape, MatvecOut, RopeTable, SampleParams,
};
use crate::cuda::{CudaError, Gpu};
use crate::gguf::GgmlType;
use crate::model::RopeStyle;
use crate::quant::{ActKind, QuantizedVec};

/// A random matrix for a benchmark row: its bytes, its values, and its device copies (as
/// `DeviceTensor`s, or in another device layout).
struct BenchMatrix<W = DeviceTensor> {
    bytes: Vec<u8>,
    deq: Vec<f32>,
    ws: Vec<W>,
}

#[derive(clap::Args)]
pub struct Args {
    /// Benchmark name (see the module docs), or `all`, or `ceiling` (only the ceilings), or
    /// `cublas` (the GEMM sweep of docs/CUBLAS.md).
    #[arg(default_value = "all")]
    pub name: String,
    /// Tensor type for matvec/embedding/dequant (q5_0, q8_0, q4_k, q6_k, q4_1, f16, …), or the
    /// GEMM kind for gemm/lm_head (f16, f32, tf32).
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Comma-separated sizes, as listed in the module docs.
    #[arg(long)]
    pub shape: Option<String>,
    /// Launches per timed batch (5 batches; the median batch mean is reported).
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
}

/// Measured device ceilings.
struct Ceilings {
    copy_gbs: f64,
    f16_tflops: f64,
    f32_tflops: f64,
    l2_bytes: usize,
}

struct Bench<'a> {
    gpu: &'a Gpu,
    ceil: Ceilings,
    reps: usize,
    rng: u64,
}

const ALL: &[&str] = &[
    "rms_norm",
    "add",
    "swiglu",
    "rope",
    "kv_append",
    "attention_decode",
    "attention_prefill",
    "attention_prefill_mma",
    "matvec",
    "matvec_a8",
    "embedding",
    "dequant",
    "argmax",
    "sample",
    "gemm",
    "linear",
    "lm_head",
    "q8p",
];

pub fn run(args: Args) -> CliResult {
    let mut gpu = Gpu::new(0)?;
    gpu.set_sync_each_launch(false);
    println!(
        "device: {} (compute capability {}.{})",
        gpu.name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1
    );
    let ceil = ceilings(&gpu)?;
    println!(
        "ceilings: copy {:.0} GB/s (read + write), cuBLAS f16→f32 {:.0} TFLOP/s, f32 {:.1} TFLOP/s, L2 {} MiB",
        ceil.copy_gbs,
        ceil.f16_tflops,
        ceil.f32_tflops,
        ceil.l2_bytes >> 20
    );
    let mut b = Bench {
        gpu: &gpu,
        ceil,
        reps: args.reps.max(1),
        rng: 0x1234_5678,
    };
    let shape: Option<Vec<usize>> = args
        .shape
        .as_deref()
        .map(|s| s.split(',').map(|v| v.trim().parse::<usize>()).collect())
        .transpose()
        .map_err(|e| format!("--shape: {e}"))?;
    if args.name == "cublas" {
        // The sweep behind docs/CUBLAS.md: every kind and weight layout on the prefill and
        // LM-head shapes of both models.
        let mut failed = 0;
        for (name, shape) in [
            ("gemm", [4864usize, 896, 512]),
            ("gemm", [896, 4864, 512]),
            ("gemm", [896, 896, 512]),
            ("gemm", [1536, 576, 512]),
            ("gemm", [151936, 896, 64]),
            ("lm_head", [151936, 896, 1]),
            ("lm_head", [49152, 576, 1]),
        ] {
            for ty in ["f16", "f16-nn", "f32", "tf32", "f16acc", "f16x3"] {
                if ty == "f16x3" && name == "lm_head" {
                    continue;
                }
                for r in b.one(name, Some(ty), Some(&shape[..]))? {
                    failed += r.contains("CHECK FAILED") as usize;
                    println!("{r}");
                }
            }
        }
        if failed > 0 {
            return Err(format!("{failed} benchmark checks failed").into());
        }
        return Ok(());
    }
    let names: Vec<&str> = match args.name.as_str() {
        "all" => ALL.to_vec(),
        "ceiling" => vec![],
        n if ALL.contains(&n) => vec![n],
        n => {
            return Err(format!(
                "unknown benchmark {n:?}; one of: all, ceiling, {}",
                ALL.join(", ")
            )
            .into());
        }
    };
    let mut failed = 0;
    for name in names {
        let sh = if ALL.len() > 1 && args.name == "all" {
            None
        } else {
            shape.clone()
        };
        let rows = b.one(name, args.ty.as_deref(), sh.as_deref())?;
        for r in rows {
            println!("{r}");
            if r.contains("CHECK FAILED") {
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} benchmark checks failed").into());
    }
    Ok(())
}

fn ceilings(gpu: &Gpu) -> Result<Ceilings, CudaError> {
    let l2 = gpu
        .context()
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .map_err(CudaError::driver("reading the L2 size"))? as usize;
    let n = 256 << 20; // 1 GiB of f32
    let src = gpu.alloc::<f32>(n, "copy ceiling")?;
    let mut dst = gpu.alloc::<f32>(n, "copy ceiling")?;
    let t = time(gpu, 5, || {
        gpu.stream()
            .memcpy_dtod(&src, &mut dst)
            .map_err(CudaError::driver("device copy"))
    })?;
    let copy_gbs = 2.0 * (n * 4) as f64 / t / 1e9;
    drop((src, dst));
    let gemm_rate = |kind: GemmKind, m: usize| -> Result<f64, CudaError> {
        // Inputs: small random values (never zeros: zeros can run faster than real data).
        let mut y = gpu.alloc::<f32>(m * m, "gemm ceiling")?;
        let t = if kind.in_bytes() == 2 {
            let w = gpu.upload(&rand_f16(m * m, 1), "gemm ceiling")?;
            let x = gpu.upload(&rand_f16(m * m, 2), "gemm ceiling")?;
            time(gpu, 3, || {
                gemm(
                    gpu,
                    kind,
                    &w.as_view(),
                    &x.as_view(),
                    &mut y.as_view_mut(),
                    m,
                    m,
                    m,
                )
            })?
        } else {
            let w = gpu.upload(&rand_f32(m * m, 1), "gemm ceiling")?;
            let x = gpu.upload(&rand_f32(m * m, 2), "gemm ceiling")?;
            time(gpu, 3, || {
                gemm(
                    gpu,
                    kind,
                    &w.as_view(),
                    &x.as_view(),
                    &mut y.as_view_mut(),
                    m,
                    m,
                    m,
                )
            })?
        };
        Ok(2.0 * (m as f64).powi(3) / t / 1e12)
    };
    let f16_tflops = gemm_rate(GemmKind::F16F32, 8192)?;
    let f32_tflops = gemm_rate(GemmKind::F32, 4096)?;
    Ok(Ceilings {
        copy_gbs,
        f16_tflops,
        f32_tflops,
        l2_bytes: l2,
    })
}

fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n).map(|_| 0.1 * uniform(&mut s)).collect()
}

fn rand_f16(n: usize, seed: u64) -> Vec<u16> {
    let mut s = seed;
    (0..n)
        .map(|_| half::f16::from_f32(0.1 * uniform(&mut s)).to_bits())
        .collect()
}

/// SplitMix64 step → uniform in [-1, 1).
fn uniform(s: &mut u64) -> f32 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Median over 5 batches of the mean time of `reps` calls, in seconds (device events).
fn time(
    gpu: &Gpu,
    reps: usize,
    mut f: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    for _ in 0..3 {
        f()?;
    }
    gpu.synchronize()?;
    let ctx = gpu.context();
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut means = Vec::new();
    for _ in 0..5 {
        let a = ctx
            .new_event(flags)
            .map_err(CudaError::driver("creating an event"))?;
        let b = ctx
            .new_event(flags)
            .map_err(CudaError::driver("creating an event"))?;
        a.record(gpu.stream())
            .map_err(CudaError::driver("recording an event"))?;
        for _ in 0..reps {
            f()?;
        }
        b.record(gpu.stream())
            .map_err(CudaError::driver("recording an event"))?;
        let ms = a.elapsed_ms(&b).map_err(CudaError::driver("timing"))? as f64;
        means.push(ms / 1e3 / reps as f64);
    }
    means.sort_by(f64::total_cmp);
    Ok(means[2])
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(&s.to_uppercase()).ok_or_else(|| format!("unknown tensor type {s:?}"))
}

/// The f64 dot product of each row of `deq` (`cols` wide) with `x`: the matvec references.
fn row_dots(deq: &[f32], cols: usize, x: &[f32]) -> Vec<f64> {
    deq.chunks_exact(cols)
        .map(|r| r.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum())
        .collect()
}

/// Relative error of `got` against `want`: max |diff| / max |want|; NaN counts as infinite.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_finite() {
                (g as f64 - w).abs() / scale
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max)
}

fn verdict(err: f64, tol: f64) -> String {
    if err <= tol {
        format!("check ok (rel err {err:.1e} ≤ {tol:.0e})")
    } else {
        format!("CHECK FAILED (rel err {err:.1e} > {tol:.0e})")
    }
}

impl Bench<'_> {
    fn rand(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * uniform(&mut self.rng)).collect()
    }

    fn up<T: cudarc::driver::DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.gpu.upload(v, "bench input")
    }

    fn down<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        s: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        self.gpu.download(s)
    }

    /// A line of the report.
    fn row(
        &self,
        name: &str,
        shape: &str,
        secs: f64,
        bytes: f64,
        flops: f64,
        check: String,
    ) -> String {
        let us = secs * 1e6;
        let gbs = bytes / secs / 1e9;
        let mut s = format!(
            "{name:<18} {shape:<34} {us:>9.2} us  {gbs:>7.0} GB/s ({:>3.0}% of copy)",
            100.0 * gbs / self.ceil.copy_gbs
        );
        if flops > 0.0 {
            let tf = flops / secs / 1e12;
            s += &format!(
                "  {tf:>6.2} TFLOP/s ({:.0}% of f16 GEMM, {:.0}% of f32)",
                100.0 * tf / self.ceil.f16_tflops,
                100.0 * tf / self.ceil.f32_tflops
            );
        }
        s + "  " + &check
    }

    /// Random quantized rows: random bytes with every f16 scale field set to a small positive
    /// value (the field offsets come from the block structs themselves).
    fn random_matrix(
        &mut self,
        t: GgmlType,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<u8>, Vec<f32>), String> {
        use kernels_gpu::quant::*;
        use std::mem::offset_of;
        let rb = t
            .row_bytes(cols)
            .ok_or("row length not a whole number of blocks")?;
        let mut bytes = vec![0u8; rows * rb];
        for c in bytes.chunks_mut(8) {
            let v = {
                self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.rng;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z ^ (z >> 27)
            };
            c.copy_from_slice(&v.to_le_bytes()[..c.len()]);
        }
        let fields: &[usize] = match t {
            GgmlType::Q4_0 => &[offset_of!(BlockQ4_0, d)],
            GgmlType::Q4_1 => &[offset_of!(BlockQ4_1, d), offset_of!(BlockQ4_1, m)],
            GgmlType::Q5_0 => &[offset_of!(BlockQ5_0, d)],
            GgmlType::Q5_1 => &[offset_of!(BlockQ5_1, d), offset_of!(BlockQ5_1, m)],
            GgmlType::Q8_0 => &[offset_of!(BlockQ8_0, d)],
            GgmlType::Q2K => &[offset_of!(BlockQ2K, d), offset_of!(BlockQ2K, dmin)],
            GgmlType::Q3K => &[offset_of!(BlockQ3K, d)],
            GgmlType::Q4K => &[offset_of!(BlockQ4K, d), offset_of!(BlockQ4K, dmin)],
            GgmlType::Q5K => &[offset_of!(BlockQ5K, d), offset_of!(BlockQ5K, dmin)],
            GgmlType::Q6K => &[offset_of!(BlockQ6K, d)],
            GgmlType::F32 => {
                for c in bytes.chunks_exact_mut(4) {
                    c.copy_from_slice(&(0.1 * uniform(&mut self.rng)).to_le_bytes());
                }
                &[]
            }
            GgmlType::F16 | GgmlType::BF16 => {
                for c in bytes.chunks_exact_mut(2) {
                    let v = 0.1 * uniform(&mut self.rng);
                    let b = if t == GgmlType::F16 {
                        half::f16::from_f32(v).to_bits()
                    } else {
                        half::bf16::from_f32(v).to_bits()
                    };
                    c.copy_from_slice(&b.to_le_bytes());
                }
                &[]
            }
        };
        for blk in bytes.chunks_exact_mut(t.block_bytes()) {
            for &f in fields {
                let s = 0.002 * (1.5 + uniform(&mut self.rng));
                blk[f..f + 2].copy_from_slice(&half::f16::from_f32(s).to_bits().to_le_bytes());
            }
        }
        let mut deq = vec![0.0f32; rows * cols];
        for (r, o) in deq.chunks_exact_mut(cols).enumerate() {
            crate::quant::dequantize_row(t, &bytes[r * rb..(r + 1) * rb], o)
                .map_err(|e| e.to_string())?;
        }
        Ok((bytes, deq))
    }

    /// Copies of a weight so that rotating through them touches at least twice the L2.
    fn copies(&self, bytes: usize) -> usize {
        (2 * self.ceil.l2_bytes).div_ceil(bytes.max(1)).clamp(1, 64)
    }

    /// A random matrix ([`Self::random_matrix`]: its bytes and values) on the device as
    /// [`Self::copies`] copies, which a timed loop rotates through.
    fn weight_copies(
        &mut self,
        t: GgmlType,
        rows: usize,
        cols: usize,
    ) -> Result<BenchMatrix, Box<dyn std::error::Error>> {
        let g = self.gpu;
        self.weight_copies_as(t, rows, cols, |bytes| {
            DeviceTensor::upload(g, "bench", t, rows, cols, bytes)
        })
    }

    /// [`Self::weight_copies`] uploaded by `up` (another device layout of the same bytes).
    fn weight_copies_as<W>(
        &mut self,
        t: GgmlType,
        rows: usize,
        cols: usize,
        up: impl Fn(&[u8]) -> Result<W, CudaError>,
    ) -> Result<BenchMatrix<W>, Box<dyn std::error::Error>> {
        let (bytes, deq) = self.random_matrix(t, rows, cols)?;
        let ws = (0..self.copies(bytes.len()))
            .map(|_| up(&bytes))
            .collect::<Result<_, _>>()?;
        Ok(BenchMatrix { bytes, deq, ws })
    }

    fn one(
        &mut self,
        name: &str,
        ty: Option<&str>,
        shape: Option<&[usize]>,
    ) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let g = self.gpu;
        let sh = |i: usize, d: usize| shape.and_then(|s| s.get(i).copied()).unwrap_or(d);
        let reps = self.reps;
        let mut out = Vec::new();
        match name {
            "rms_norm" => {
                let (rows, n) = (sh(0, 512), sh(1, 896));
                let x = self.rand(rows * n, 3.0);
                let w = self.rand(n, 1.0);
                let (dx, dw) = (self.up(&x)?, self.up(&w)?);
                let mut dy = g.alloc::<f32>(x.len(), "bench")?;
                let t = time(g, reps, || {
                    ops::rms_norm(g, &dx.as_view(), &dw.as_view(), 1e-6, &mut dy.as_view_mut())
                })?;
                let mut want = vec![0.0; x.len()];
                cpu::rms_norm(&x, &w, 1e-6, &mut want);
                let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
                let e = rel_err(&self.down(&dy)?, &want);
                out.push(self.row(
                    name,
                    &format!("{rows}x{n}"),
                    t,
                    (8 * rows * n + 4 * n) as f64,
                    0.0,
                    verdict(e, 1e-4),
                ));
            }
            "add" => {
                let (rows, n) = (sh(0, 512), sh(1, 896));
                let a = self.rand(rows * n, 1.0);
                let b = self.rand(rows * n, 1.0);
                let mut da = self.up(&a)?;
                let db = self.up(&b)?;
                let mut want: Vec<f32> = a.clone();
                cpu::add(&mut want, &b);
                ops::add(g, &mut da.as_view_mut(), &db.as_view())?;
                let got = self.down(&da)?;
                let e = rel_err(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
                let t = time(g, reps, || {
                    ops::add(g, &mut da.as_view_mut(), &db.as_view())
                })?;
                out.push(self.row(
                    name,
                    &format!("{rows}x{n}"),
                    t,
                    (12 * rows * n) as f64,
                    0.0,
                    verdict(e, 0.0),
                ));
            }
            "swiglu" => {
                let (rows, n) = (sh(0, 512), sh(1, 4864));
                let a = self.rand(rows * n, 6.0);
                let b = self.rand(rows * n, 2.0);
                let (da, db) = (self.up(&a)?, self.up(&b)?);
                let mut dy = g.alloc::<f32>(a.len(), "bench")?;
                let t = time(g, reps, || {
                    ops::swiglu(g, &da.as_view(), &db.as_view(), &mut dy.as_view_mut())
                })?;
                let mut want = vec![0.0; a.len()];
                cpu::swiglu(&a, &b, &mut want);
                let e = rel_err(
                    &self.down(&dy)?,
                    &want.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                );
                out.push(self.row(
                    name,
                    &format!("{rows}x{n}"),
                    t,
                    (12 * rows * n) as f64,
                    0.0,
                    verdict(e, 1e-5),
                ));
            }
            "rope" => {
                let (n_tok, nh, d) = (sh(0, 512), sh(1, 14), sh(2, 64));
                let x = self.rand(n_tok * nh * d, 2.0);
                let table = RopeTable::new(g, n_tok, d, 1e6)?;
                let mut dx = self.up(&x)?;
                let rope = |dx: &mut CudaSlice<f32>| {
                    let neox = RopeStyle::Neox;
                    ops::rope(g, &mut dx.as_view_mut(), None, &table, nh, 0, neox)
                };
                rope(&mut dx)?;
                let got = self.down(&dx)?;
                let mut want = x.clone();
                let pos: Vec<usize> = (0..n_tok).collect();
                cpu::rope(&mut want, nh, d, &pos, 1e6, RopeStyle::Neox);
                let e = rel_err(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
                let t = time(g, reps, || rope(&mut dx))?;
                out.push(self.row(
                    name,
                    &format!("{n_tok}x{nh}x{d}"),
                    t,
                    (8 * x.len() + 4 * x.len()) as f64,
                    0.0,
                    verdict(e, 0.0),
                ));
            }
            "kv_append" => {
                let (n_tok, nkv, d) = (sh(0, 512), sh(1, 2), sh(2, 64));
                let s = KvShape {
                    n_head_kv: nkv,
                    head_dim: d,
                    n_ctx: n_tok,
                };
                let k = self.rand(n_tok * nkv * d, 2.0);
                let (dk, dv) = (self.up(&k)?, self.up(&k)?);
                let mut cache = KvLayer::<u16>::new(g, s)?;
                ops::kv_append(g, &dk.as_view(), &dv.as_view(), None, &mut cache, s, 0)?;
                let got = self.down(&cache.k)?;
                let bad = (0..n_tok * nkv * d)
                    .filter(|&i| {
                        let (t, h, j) = (i / (nkv * d), (i / d) % nkv, i % d);
                        got[(h * n_tok + t) * d + j] != half::f16::from_f32(k[i]).to_bits()
                    })
                    .count();
                let t = time(g, reps, || {
                    ops::kv_append(g, &dk.as_view(), &dv.as_view(), None, &mut cache, s, 0)
                })?;
                out.push(self.row(
                    name,
                    &format!("{n_tok}x{nkv}x{d}"),
                    t,
                    (12 * k.len()) as f64,
                    0.0,
                    verdict(bad as f64, 0.0),
                ));
            }
            "attention_decode" | "attention_prefill" | "attention_prefill_mma" => {
                let prefill = name != "attention_decode";
                let mma = name == "attention_prefill_mma";
                let (n, nh, nkv, d) = (
                    sh(0, if prefill { 512 } else { 4096 }),
                    sh(1, 14),
                    sh(2, 2),
                    sh(3, 64),
                );
                // Prefill: the n queries follow `depth` cached positions.
                let depth = if prefill { sh(4, 0) } else { 0 };
                let n_all = n + depth;
                let s = KvShape {
                    n_head_kv: nkv,
                    head_dim: d,
                    n_ctx: n_all,
                };
                let k: Vec<f32> = self
                    .rand(n_all * nkv * d, 2.0)
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_f32())
                    .collect();
                let v: Vec<f32> = self
                    .rand(n_all * nkv * d, 2.0)
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_f32())
                    .collect();
                let mut cache = KvLayer::<u16>::new(g, s)?;
                ops::kv_append(
                    g,
                    &self.up(&k)?.as_view(),
                    &self.up(&v)?.as_view(),
                    None,
                    &mut cache,
                    s,
                    0,
                )?;
                let nq = if prefill { n } else { 1 };
                let q = self.rand(nq * nh * d, 2.0);
                let dq = self.up(&q)?;
                // Decode: the new token (position n − 1) comes as projections before RoPE; the
                // kernel rotates q and k and writes k, v to the cache (the CPU side does the same
                // to its copies).
                let theta = 1e6;
                let table = RopeTable::new(g, n, d, theta)?;
                let kn = self.rand(nkv * d, 2.0);
                let vn = self.rand(nkv * d, 2.0);
                let (dkn, dvn) = (self.up(&kn)?, self.up(&vn)?);
                let (mut qc, mut k, mut v) = (q.clone(), k, v);
                if !prefill {
                    let row = nkv * d;
                    let mut kr = kn.clone();
                    cpu::rope(&mut kr, nkv, d, &[n - 1], theta, RopeStyle::Neox);
                    cpu::rope(&mut qc, nh, d, &[n - 1], theta, RopeStyle::Neox);
                    let f16 = |x: f32| half::f16::from_f32(x).to_f32();
                    for j in 0..row {
                        k[(n - 1) * row + j] = f16(kr[j]);
                        v[(n - 1) * row + j] = f16(vn[j]);
                    }
                }
                let mut dout = g.alloc::<f32>(q.len(), "bench")?;
                let mut scratch = ops::DecodeScratch::new(g, nh, d, n)?;
                let mut run = |dout: &mut CudaSlice<f32>, scratch: &mut ops::DecodeScratch| {
                    if prefill {
                        let kernel = if mma {
                            ops::attention_prefill_mma::<u16>
                        } else {
                            ops::attention_prefill::<u16>
                        };
                        kernel(
                            g,
                            &dq.as_view(),
                            &cache,
                            s,
                            nh,
                            depth,
                            &mut dout.as_view_mut(),
                        )
                    } else {
                        let (qv, kv, vv) = (dq.as_view(), dkn.as_view(), dvn.as_view());
                        let tok = ops::NewToken {
                            q: &qv,
                            k: &kv,
                            v: &vv,
                            rope: &table,
                            style: RopeStyle::Neox,
                        };
                        ops::attention_decode(
                            g,
                            tok,
                            &mut cache,
                            s,
                            nh,
                            ops::DecodeAt::Kv(n),
                            scratch,
                            &mut dout.as_view_mut(),
                            false,
                        )?;
                        // The splits' partials into the output (a second launch).
                        ops::attention_combine(g, scratch, &mut dout.as_view_mut())
                    }
                };
                run(&mut dout, &mut scratch)?;
                let got = self.down(&dout)?;
                let mut want = vec![0.0; q.len()];
                let c0 = Instant::now();
                cpu::attention(
                    &qc,
                    &k,
                    &v,
                    nh,
                    nkv,
                    d,
                    if prefill { depth } else { n - 1 },
                    &mut want,
                );
                let cpu_s = c0.elapsed().as_secs_f64();
                let e = rel_err(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>());
                let t = time(g, reps, || run(&mut dout, &mut scratch))?;
                let (bytes, flops) = if prefill {
                    (
                        (4 * nkv * d * n_all + 8 * q.len()) as f64,
                        4.0 * (nh * d) as f64 * (n * depth + n * (n + 1) / 2) as f64,
                    )
                } else {
                    ((4 * nkv * d * n + 8 * q.len()) as f64, 0.0)
                };
                out.push(self.row(
                    name,
                    &format!("n={n} @ d{depth} heads {nh}/{nkv}x{d}"),
                    t,
                    bytes,
                    flops,
                    format!("{} (cpu ref {:.0} ms)", verdict(e, 1e-4), cpu_s * 1e3),
                ));
            }
            "matvec_a8" => {
                // The matvec on 8-bit activations: x quantized by the CPU (`Q8Blocks`), checked
                // against the dequantized row and activations in f64.
                let t_ty = parse_type(ty.unwrap_or("q6_k"))?;
                let (rows, cols) = (sh(0, 896), sh(1, 4864));
                let BenchMatrix { bytes, deq, ws } = self.weight_copies(t_ty, rows, cols)?;
                let nc = ws.len();
                let x = self.rand(cols, 3.0);
                let xv =
                    QuantizedVec::new(ActKind::Q8, &x).map_err(|e| format!("matvec_a8: {e}"))?;
                let QuantizedVec::Q8(xb) = &xv else {
                    return Err("matvec_a8: ActKind::Q8 gave another format".into());
                };
                let (qs, ds) = xb.device_layout();
                let xq = xv.dequantize();
                let (dq, dd) = (self.up(&qs)?, self.up(&ds)?);
                let (dqv, ddv) = (dq.as_view(), dd.as_view());
                let a8 = ops::A8 { qs: &dqv, ds: &ddv };
                let mut dy = g.alloc::<f32>(rows, "bench")?;
                ops::matvec_a8(g, &ws[0], a8, &mut dy.as_view_mut(), MatvecOut::Store)?;
                let got = self.down(&dy)?;
                let want = row_dots(&deq, cols, &xq);
                let e = rel_err(&got, &want);
                let mut i = 0;
                let t = time(g, reps, || {
                    i += 1;
                    ops::matvec_a8(g, &ws[i % nc], a8, &mut dy.as_view_mut(), MatvecOut::Store)
                })?;
                out.push(self.row(
                    name,
                    &format!("{t_ty} {rows}x{cols} ({nc} copies)"),
                    t,
                    (bytes.len() + cols + 8 * (cols / 32) + 4 * rows) as f64,
                    2.0 * (rows * cols) as f64,
                    verdict(e, 1e-5),
                ));
            }
            "matvec" | "dequant" => {
                let t_ty = parse_type(ty.unwrap_or("q5_0"))?;
                let (rows, cols) = (sh(0, 4864), sh(1, 896));
                let BenchMatrix { bytes, deq, ws } = self.weight_copies(t_ty, rows, cols)?;
                let nc = ws.len();
                let x = self.rand(cols, 3.0);
                let dx = self.up(&x)?;
                if name == "matvec" {
                    let mut dy = g.alloc::<f32>(rows, "bench")?;
                    ops::matvec(g, &ws[0], &dx.as_view(), &mut dy.as_view_mut())?;
                    let got = self.down(&dy)?;
                    let want = row_dots(&deq, cols, &x);
                    let e = rel_err(&got, &want);
                    let mut i = 0;
                    let t = time(g, reps, || {
                        i += 1;
                        ops::matvec(g, &ws[i % nc], &dx.as_view(), &mut dy.as_view_mut())
                    })?;
                    out.push(self.row(
                        name,
                        &format!("{t_ty} {rows}x{cols} ({nc} copies)"),
                        t,
                        (bytes.len() + 4 * (rows + cols)) as f64,
                        2.0 * (rows * cols) as f64,
                        verdict(e, 1e-5),
                    ));
                } else {
                    // Every output layout: f32, f16, and the split-f16 operand of the F16x3 GEMM,
                    // each checked bit for bit against the CPU decode (rounded/split on the CPU).
                    let want16: Vec<u16> = deq
                        .iter()
                        .map(|&v| half::f16::from_f32(v).to_bits())
                        .collect();
                    let want3 = split_f16x3(&deq, cols, SplitOperand::Weight);
                    for (label, factor) in [("f32", 1usize), ("f16", 1), ("f16x3", 3)] {
                        let mut d32 =
                            g.alloc::<f32>(if label == "f32" { rows * cols } else { 1 }, "bench")?;
                        let mut d16 = g.alloc::<u16>(
                            if label == "f32" {
                                1
                            } else {
                                factor * rows * cols
                            },
                            "bench",
                        )?;
                        let launch = |w: &DeviceTensor,
                                      d32: &mut CudaSlice<f32>,
                                      d16: &mut CudaSlice<u16>|
                         -> Result<(), CudaError> {
                            match label {
                                "f32" => ops::dequant(
                                    g,
                                    w,
                                    None,
                                    DequantOut::F32(&mut d32.as_view_mut()),
                                ),
                                "f16" => ops::dequant(
                                    g,
                                    w,
                                    None,
                                    DequantOut::F16(&mut d16.as_view_mut()),
                                ),
                                _ => ops::dequant(
                                    g,
                                    w,
                                    None,
                                    DequantOut::F16x3(&mut d16.as_view_mut()),
                                ),
                            }
                        };
                        launch(&ws[0], &mut d32, &mut d16)?;
                        let bad = match label {
                            "f32" => self
                                .down(&d32)?
                                .iter()
                                .zip(&deq)
                                .filter(|(g, w)| g.to_bits() != w.to_bits())
                                .count(),
                            "f16" => self
                                .down(&d16)?
                                .iter()
                                .zip(&want16)
                                .filter(|(g, w)| g != w)
                                .count(),
                            _ => self
                                .down(&d16)?
                                .iter()
                                .zip(&want3)
                                .filter(|(g, w)| g != w)
                                .count(),
                        };
                        let mut i = 0;
                        let t = time(g, reps, || {
                            i += 1;
                            launch(&ws[i % nc], &mut d32, &mut d16)
                        })?;
                        let out_bytes = if label == "f32" { 4 } else { 2 * factor };
                        out.push(self.row(
                            name,
                            &format!("{t_ty} {rows}x{cols} → {label}"),
                            t,
                            (bytes.len() + out_bytes * rows * cols) as f64,
                            0.0,
                            verdict(bad as f64, 0.0),
                        ));
                    }
                }
            }
            "embedding" => {
                let t_ty = parse_type(ty.unwrap_or("q5_0"))?;
                let (n_tok, rows, cols) = (sh(0, 512), sh(1, 151936), sh(2, 896));
                let (bytes, deq) = self.random_matrix(t_ty, rows, cols)?;
                let w = DeviceTensor::upload(g, "bench", t_ty, rows, cols, &bytes)?;
                let ids: Vec<u32> = (0..n_tok)
                    .map(|i| ((i * 7919 + 13) % rows) as u32)
                    .collect();
                let dids = self.up(&ids)?;
                let mut dout = g.alloc::<f32>(n_tok * cols, "bench")?;
                ops::embedding(g, &w, &dids.as_view(), &mut dout.as_view_mut())?;
                let got = self.down(&dout)?;
                let want: Vec<f64> = ids
                    .iter()
                    .flat_map(|&i| {
                        deq[i as usize * cols..(i as usize + 1) * cols]
                            .iter()
                            .map(|&v| v as f64)
                    })
                    .collect();
                let e = rel_err(&got, &want);
                let t = time(g, reps, || {
                    ops::embedding(g, &w, &dids.as_view(), &mut dout.as_view_mut())
                })?;
                let rb = t_ty.row_bytes(cols).unwrap_or(0);
                out.push(self.row(
                    name,
                    &format!("{t_ty} {n_tok} of {rows}x{cols}"),
                    t,
                    (n_tok * (rb + 4 * cols)) as f64,
                    0.0,
                    verdict(e, 0.0),
                ));
            }
            "argmax" | "sample" => {
                let n = sh(0, 151936);
                let x = self.rand(n, 10.0);
                let mut dx = self.up(&x)?;
                let mut dout = g.alloc::<u32>(1, "bench")?;
                let mut sel = ops::SelectScratch::new(g)?;
                if name == "argmax" {
                    ops::argmax(g, &dx.as_view(), &mut sel, &mut dout.as_view_mut(), None)?;
                    let got = self.down(&dout)?[0] as usize;
                    let want = x
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, &v)| if v > x[b] { i } else { b });
                    let t = time(g, reps, || {
                        ops::argmax(g, &dx.as_view(), &mut sel, &mut dout.as_view_mut(), None)
                    })?;
                    out.push(self.row(
                        name,
                        &format!("n={n}"),
                        t,
                        (4 * n) as f64,
                        0.0,
                        verdict((got != want) as u8 as f64, 0.0),
                    ));
                } else {
                    // `host run`'s default chain (no penalty: the logits stay as uploaded).
                    let defaults = super::run::default_sampling();
                    let cfg = crate::sample::SamplerConfig {
                        top_k: sh(1, defaults.top_k),
                        ..defaults
                    };
                    let p = SampleParams::of(&cfg).ok_or("the default sampling is greedy")?;
                    let mut dxm = dx.as_view_mut();
                    let (mut o, sel) = (dout.as_view_mut(), &mut sel);
                    ops::sample(g, &mut dxm, p, 0.37, None, sel, &mut o, None)?;
                    let got = self.down(&dout)?[0];
                    let kept = crate::sample::candidates(&cfg, &x, &[])
                        .map_err(|e| format!("the host sampler: {e}"))?;
                    let ok = kept.iter().any(|c| c.0 == got);
                    let t = time(g, reps, || {
                        let mut o = dout.as_view_mut();
                        ops::sample(g, &mut dx.as_view_mut(), p, 0.37, None, sel, &mut o, None)
                    })?;
                    out.push(self.row(
                        name,
                        &format!(
                            "n={n} top_k={} top_p={} min_p={}",
                            p.top_k, p.top_p, p.min_p
                        ),
                        t,
                        (4 * n) as f64,
                        0.0,
                        if ok {
                            "check ok (drawn id among the host chain's candidates)".into()
                        } else {
                            "CHECK FAILED (drawn id not among the host chain's candidates)".into()
                        },
                    ));
                }
            }
            "linear" => {
                let t_ty = parse_type(ty.unwrap_or("q5_0"))?;
                let (n, k, t_) = (sh(0, 4864), sh(1, 896), sh(2, 512));
                out.extend(self.linear_rows(t_ty, n, k, t_)?);
            }
            "gemm" | "lm_head" => {
                let spec = ty.unwrap_or("f16");
                let (spec, w_t) = match spec.strip_suffix("-nn") {
                    Some(s) => (s, true),
                    None => (spec, false),
                };
                let kind = match spec {
                    "f16" => GemmKind::F16F32,
                    "f32" => GemmKind::F32,
                    "tf32" => GemmKind::Tf32,
                    "f16acc" => GemmKind::F16F16,
                    "f16x3" => GemmKind::F16x3,
                    other => {
                        return Err(format!(
                            "gemm kind {other:?}: f16, f32, tf32, f16acc or f16x3, optionally with -nn (weight stored transposed; not f16x3)"
                        )
                        .into());
                    }
                };
                let (n, k, t_) = if name == "gemm" {
                    (sh(0, 4864), sh(1, 896), sh(2, 512))
                } else {
                    (sh(0, 151936), sh(1, 896), 1)
                };
                out.push(self.gemm_row(name, kind, w_t, n, k, t_)?);
            }
            "q8p" => {
                // The decode LM head: a Q8_0 matrix in planar form (`matvec_q8p`).
                let (rows, cols) = (sh(0, 151936), sh(1, 896));
                let BenchMatrix { bytes, deq, ws } =
                    self.weight_copies_as(GgmlType::Q8_0, rows, cols, |bytes| {
                        ops::Q8Planar::upload(g, "bench", rows, cols, bytes)
                    })?;
                let nc = ws.len();
                let x = self.rand(cols, 3.0);
                let dx = self.up(&x)?;
                let mut dy = g.alloc::<f32>(rows, "bench")?;
                ops::matvec_q8p(g, &ws[0], &dx.as_view(), &mut dy.as_view_mut())?;
                let e = rel_err(&self.down(&dy)?, &row_dots(&deq, cols, &x));
                let mut i = 0;
                let t = time(g, reps, || {
                    i += 1;
                    ops::matvec_q8p(g, &ws[i % nc], &dx.as_view(), &mut dy.as_view_mut())
                })?;
                out.push(self.row(
                    name,
                    &format!("q8_0 planar {rows}x{cols} ({nc} copies)"),
                    t,
                    (bytes.len() + 4 * (rows + cols)) as f64,
                    2.0 * (rows * cols) as f64,
                    verdict(e, 1e-5),
                ));
            }
            other => return Err(format!("unknown benchmark {other}").into()),
        }
        Ok(out)
    }

    /// The prefill projection `Y = X·Wᵀ` of a quantized `n × k` weight for `t` tokens, as
    /// `Linear::convert` and `Linear::gemm_converted` do it, per GEMM kind: F32 (decode to f32,
    /// f32 GEMM), F16F32 (decode to f16, activations to f16, f16 GEMM), F16x3 (split decode,
    /// split activations, one GEMM of 3k; its three steps are timed alone too). Checked against
    /// f64 on the first rows.
    fn linear_rows(
        &mut self,
        ty: GgmlType,
        n: usize,
        k: usize,
        t: usize,
    ) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let g = self.gpu;
        let BenchMatrix { bytes, deq, ws } = self.weight_copies(ty, n, k)?;
        let nc = ws.len();
        let x = self.rand(t * k, 2.0);
        let dx = self.up(&x)?;
        let rows_checked = t.min((1usize << 26) / (n * k)).max(1);
        let want: Vec<f64> = (0..rows_checked * n)
            .map(|i| {
                let (a, c) = (i / n, i % n);
                x[a * k..(a + 1) * k]
                    .iter()
                    .zip(&deq[c * k..(c + 1) * k])
                    .map(|(&p, &q)| p as f64 * q as f64)
                    .sum()
            })
            .collect();
        let mut w32 = g.alloc::<f32>(n * k, "bench")?;
        let mut w16 = g.alloc::<u16>(3 * n * k, "bench")?;
        let mut x16 = g.alloc::<u16>(3 * t * k, "bench")?;
        let mut dy = g.alloc::<f32>(t * n, "bench")?;
        let flops = 2.0 * (n * k * t) as f64;
        let shape = format!("{ty} n={n} k={k} t={t}");
        let mut rows = Vec::new();
        for kind in [GemmKind::F32, GemmKind::F16F32, GemmKind::F16x3] {
            let run = |w: &DeviceTensor,
                       w32: &mut CudaSlice<f32>,
                       w16: &mut CudaSlice<u16>,
                       x16: &mut CudaSlice<u16>,
                       dy: &mut CudaSlice<f32>|
             -> Result<(), CudaError> {
                let y = &mut dy.as_view_mut();
                match kind {
                    GemmKind::F32 => {
                        ops::dequant(g, w, None, DequantOut::F32(&mut w32.as_view_mut()))?;
                        gemm(g, kind, &w32.as_view(), &dx.as_view(), y, n, k, t)
                    }
                    GemmKind::F16F32 => {
                        let mut wv = w16.slice_mut(..n * k);
                        ops::dequant(g, w, None, DequantOut::F16(&mut wv))?;
                        ops::f32_to_f16(g, &dx.as_view(), &mut x16.slice_mut(..t * k))?;
                        gemm(
                            g,
                            kind,
                            &w16.slice(..n * k),
                            &x16.slice(..t * k),
                            y,
                            n,
                            k,
                            t,
                        )
                    }
                    _ => {
                        ops::dequant(g, w, None, DequantOut::F16x3(&mut w16.as_view_mut()))?;
                        ops::f32_to_f16x3(g, &dx.as_view(), k, &mut x16.as_view_mut())?;
                        gemm(g, kind, &w16.as_view(), &x16.as_view(), y, n, k, t)
                    }
                }
            };
            run(&ws[0], &mut w32, &mut w16, &mut x16, &mut dy)?;
            let e = rel_err(&self.down(&dy)?[..rows_checked * n], &want);
            let mut i = 0;
            let secs = time(g, self.reps, || {
                i += 1;
                run(&ws[i % nc], &mut w32, &mut w16, &mut x16, &mut dy)
            })?;
            let tol = match kind {
                GemmKind::F32 => 1e-5,
                GemmKind::F16F32 => 3e-3,
                _ => 3e-5,
            };
            rows.push(self.row(
                &format!("linear {kind:?}"),
                &shape,
                secs,
                (bytes.len() + 4 * t * (k + n)) as f64,
                flops,
                verdict(e, tol),
            ));
        }
        // The F16x3 steps alone (the GEMM reads the operands the two kernels just wrote).
        let mut i = 0;
        let secs = time(g, self.reps, || {
            i += 1;
            ops::dequant(
                g,
                &ws[i % nc],
                None,
                DequantOut::F16x3(&mut w16.as_view_mut()),
            )
        })?;
        rows.push(self.row(
            "  dequant f16x3",
            &shape,
            secs,
            (bytes.len() + 6 * n * k) as f64,
            0.0,
            "(step of linear F16x3)".into(),
        ));
        let secs = time(g, self.reps, || {
            ops::f32_to_f16x3(g, &dx.as_view(), k, &mut x16.as_view_mut())
        })?;
        rows.push(self.row(
            "  f32_to_f16x3",
            &shape,
            secs,
            (4 * t * k + 6 * t * k) as f64,
            0.0,
            "(step of linear F16x3)".into(),
        ));
        let secs = time(g, self.reps, || {
            gemm(
                g,
                GemmKind::F16x3,
                &w16.as_view(),
                &x16.as_view(),
                &mut dy.as_view_mut(),
                n,
                k,
                t,
            )
        })?;
        rows.push(self.row(
            "  gemm F16x3",
            &shape,
            secs,
            (6 * (n * k + t * k) + 4 * t * n) as f64,
            flops,
            "(step of linear F16x3; TFLOP/s counts 2nkt, the tensor cores do 3x)".into(),
        ));
        Ok(rows)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_row(
        &mut self,
        name: &str,
        kind: GemmKind,
        w_t: bool,
        n: usize,
        k: usize,
        t: usize,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let g = self.gpu;
        let w = self.rand(n * k, 0.1);
        // The weight as uploaded: GGUF's N rows of K, or its transpose (K rows of N).
        let w_up: Vec<f32> = if w_t {
            (0..n * k).map(|i| w[(i % n) * k + i / n]).collect()
        } else {
            w.clone()
        };
        let x = self.rand(t * k, 2.0);
        let h = |v: &[f32]| -> Vec<u16> {
            v.iter()
                .map(|&a| half::f16::from_f32(a).to_bits())
                .collect()
        };
        let r = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect()
        };
        let f16in = kind.in_bytes() == 2;
        // F16x3 is checked against the f32 inputs themselves: that is its claim.
        let (wr, xr) = if f16in && kind != GemmKind::F16x3 {
            (r(&w), r(&x))
        } else {
            (w.clone(), x.clone())
        };
        // Reference (f64, on the CPU) on the first rows of Y: about 2^26 multiply-adds.
        let rows_checked = t.min((1usize << 26) / (n * k)).max(1);
        let want: Vec<f64> = (0..rows_checked * n)
            .map(|i| {
                let (a, c) = (i / n, i % n);
                xr[a * k..(a + 1) * k]
                    .iter()
                    .zip(&wr[c * k..(c + 1) * k])
                    .map(|(&p, &q)| p as f64 * q as f64)
                    .sum()
            })
            .collect();
        let wbytes = n * k * kind.in_bytes() * kind.in_factor();
        let nc = self.copies(wbytes);
        let secs;
        let got: Vec<f32>;
        if kind == GemmKind::F16F16 {
            let ws: Vec<CudaSlice<u16>> = (0..nc)
                .map(|_| self.up(&h(&w_up)))
                .collect::<Result<_, _>>()?;
            let dx = self.up(&h(&x))?;
            let mut dy = g.alloc::<u16>(t * n, "bench")?;
            gemm_layout(
                g,
                kind,
                w_t,
                &ws[0].as_view(),
                &dx.as_view(),
                &mut dy.as_view_mut(),
                n,
                k,
                t,
            )?;
            got = self
                .down(&dy)?
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect();
            let mut i = 0;
            secs = time(g, self.reps, || {
                i += 1;
                gemm_layout(
                    g,
                    kind,
                    w_t,
                    &ws[i % nc].as_view(),
                    &dx.as_view(),
                    &mut dy.as_view_mut(),
                    n,
                    k,
                    t,
                )
            })?;
        } else if f16in {
            let (wh, xh) = if kind == GemmKind::F16x3 {
                (
                    split_f16x3(&w_up, k, SplitOperand::Weight),
                    split_f16x3(&x, k, SplitOperand::Activation),
                )
            } else {
                (h(&w_up), h(&x))
            };
            let ws: Vec<CudaSlice<u16>> =
                (0..nc).map(|_| self.up(&wh)).collect::<Result<_, _>>()?;
            let dx = self.up(&xh)?;
            let mut dy = g.alloc::<f32>(t * n, "bench")?;
            gemm_layout(
                g,
                kind,
                w_t,
                &ws[0].as_view(),
                &dx.as_view(),
                &mut dy.as_view_mut(),
                n,
                k,
                t,
            )?;
            got = self.down(&dy)?;
            let mut i = 0;
            secs = time(g, self.reps, || {
                i += 1;
                gemm_layout(
                    g,
                    kind,
                    w_t,
                    &ws[i % nc].as_view(),
                    &dx.as_view(),
                    &mut dy.as_view_mut(),
                    n,
                    k,
                    t,
                )
            })?;
        } else {
            let ws: Vec<CudaSlice<f32>> =
                (0..nc).map(|_| self.up(&w_up)).collect::<Result<_, _>>()?;
            let dx = self.up(&x)?;
            let mut dy = g.alloc::<f32>(t * n, "bench")?;
            gemm_layout(
                g,
                kind,
                w_t,
                &ws[0].as_view(),
                &dx.as_view(),
                &mut dy.as_view_mut(),
                n,
                k,
                t,
            )?;
            got = self.down(&dy)?;
            let mut i = 0;
            secs = time(g, self.reps, || {
                i += 1;
                gemm_layout(
                    g,
                    kind,
                    w_t,
                    &ws[i % nc].as_view(),
                    &dx.as_view(),
                    &mut dy.as_view_mut(),
                    n,
                    k,
                    t,
                )
            })?;
        }
        let e = rel_err(&got[..rows_checked * n], &want);
        let tol = match kind {
            GemmKind::F32 => 1e-5,
            GemmKind::Tf32 => 5e-3,
            GemmKind::F16F32 => 1e-4,
            GemmKind::F16F16 => 5e-3,
            // f32 data (not f16-exact): plain f16 operands would be ~3e-4 here.
            GemmKind::F16x3 => 3e-5,
        };
        let bytes =
            (wbytes + t * k * kind.in_bytes() * kind.in_factor() + t * n * kind.out_bytes()) as f64;
        Ok(self.row(
            name,
            &format!(
                "{kind:?}{} n={n} k={k} t={t}",
                if w_t { " NN" } else { " TN" }
            ),
            secs,
            bytes,
            2.0 * (n * k * t) as f64,
            verdict(e, tol),
        ))
    }
}
