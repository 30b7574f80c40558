//! Micro benchmark of the CPU matvec (not a test; run explicitly, in release):
//!
//!     cargo test --release -p spec-tests --test quant_bench -- --ignored --nocapture
//!
//! Prints, per weight type and shape, the time per matvec and the weight bytes streamed per
//! second, for each implementation, on rayon's global pool (all cores), next to a plain memory
//! read of a buffer larger than the last-level cache (the ceiling for the large matrices). Uses the
//! real tensors when the model files are present, random blocks of the same type otherwise.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use host::gguf::{GgmlType, Gguf};
use host::quant::{Isa, QuantizedVec, matvec_with, vec_dot_with};

fn model_dir() -> PathBuf {
    match std::env::var_os("GGUF_MODEL_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gguf-models")
        }
    }
}

/// Median seconds of `iters` runs after one warm-up.
fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

/// Nanoseconds this thread has spent on a CPU (Linux: /proc/thread-self/schedstat), so that a
/// single-thread measurement is not skewed by other processes competing for the cores.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Best on-CPU seconds per call of `f` on this thread, over `reps` batches of at least 0.2 s each
/// (the kernel updates the counter at scheduler ticks, so short batches would read 0).
fn cpu_time(reps: usize, mut f: impl FnMut()) -> Option<f64> {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t0 = thread_cpu_ns()?;
        let wall = Instant::now();
        let mut n = 0;
        while wall.elapsed().as_secs_f64() < 0.2 {
            f();
            n += 1;
        }
        best = best.min((thread_cpu_ns()? - t0) as f64 / 1e9 / n as f64);
    }
    Some(best)
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// Random bytes with every f16 scale field set to a small finite value (0x2c00 = 2^-4).
fn random_weights(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = ty.row_bytes(cols).unwrap();
    let mut w = random_bytes(rows * rb, 7);
    let offs: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[],
    };
    for b in w.chunks_exact_mut(ty.block_bytes()) {
        for &o in offs {
            b[o..o + 2].copy_from_slice(&0x2c00u16.to_le_bytes());
        }
    }
    if ty == GgmlType::F32 {
        // Small finite values.
        w = (0..rows * cols)
            .flat_map(|i| ((i % 17) as f32 * 0.01).to_le_bytes())
            .collect();
    }
    w
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn matvec_throughput() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("threads: {threads}, best ISA: {:?}", Isa::best());

    // Memory read ceiling: XOR-fold a 512 MiB buffer, one slice per thread.
    let buf: Vec<u64> = (0..64u64 << 20).map(|i| i.wrapping_mul(31)).collect();
    let t = time(5, || {
        std::thread::scope(|s| {
            for c in buf.chunks(buf.len().div_ceil(threads)) {
                s.spawn(move || black_box(c.iter().fold(0u64, |a, &b| a ^ b)));
            }
        });
    });
    println!(
        "memory read (512 MiB, {threads} threads): {:.1} GB/s",
        512.0 * 1048576.0 / t / 1e9
    );
    drop(buf);

    let qwen = Gguf::open(model_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")).ok();
    let smol = Gguf::open(model_dir().join("smollm2-135m-instruct-q4_1.gguf")).ok();
    // (model, tensor) or a random matrix of (type, cols, rows).
    let cases: [(Option<&Gguf>, &str, GgmlType, usize, usize); 9] = [
        (
            qwen.as_ref(),
            "blk.0.ffn_gate.weight",
            GgmlType::Q5_0,
            896,
            4864,
        ),
        (
            qwen.as_ref(),
            "blk.0.ffn_down.weight",
            GgmlType::Q6K,
            4864,
            896,
        ),
        (
            qwen.as_ref(),
            "blk.2.ffn_down.weight",
            GgmlType::Q4K,
            4864,
            896,
        ),
        (qwen.as_ref(), "output.weight", GgmlType::Q8_0, 896, 151936),
        (
            qwen.as_ref(),
            "token_embd.weight",
            GgmlType::Q5_0,
            896,
            151936,
        ),
        (
            smol.as_ref(),
            "blk.0.ffn_gate.weight",
            GgmlType::Q4_1,
            576,
            1536,
        ),
        (None, "random F32", GgmlType::F32, 896, 4864),
        (None, "random Q2_K", GgmlType::Q2K, 4864, 896),
        (None, "random Q3_K", GgmlType::Q3K, 4864, 896),
    ];
    for (model, name, ty, cols, rows) in cases {
        let owned;
        let (weights, src): (&[u8], &str) = match model.and_then(|g| g.tensor(name).ok()) {
            Some((info, data)) => {
                assert_eq!((info.ggml_type, info.row_len() as usize), (ty, cols));
                (data, "real")
            }
            None => {
                owned = random_weights(ty, rows, cols);
                (&owned, "random")
            }
        };
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let xq = QuantizedVec::for_weights(ty, &x).unwrap();
        let mut y = vec![0.0f32; rows];
        let iters = if weights.len() > 50 << 20 { 10 } else { 200 };
        for isa in Isa::available() {
            let t = time(iters, || {
                matvec_with(isa, ty, weights, rows, &xq, &mut y).unwrap();
            });
            println!(
                "{ty:>5} {cols:>6}x{rows:<7} ({src:>6} {name:<22}) {isa:?}: {:>8.1} us  {:>6.1} GB/s",
                t * 1e6,
                weights.len() as f64 / t / 1e9
            );
        }
        // One thread, on-CPU time: the kernel's own speed, whatever else the machine runs.
        let sub_rows = rows.min(8192);
        let rb = ty.row_bytes(cols).unwrap();
        for isa in Isa::available() {
            let t = cpu_time(3, || {
                for (yr, row) in y[..sub_rows].iter_mut().zip(weights.chunks_exact(rb)) {
                    *yr = vec_dot_with(isa, ty, row, &xq).unwrap();
                }
            });
            if let Some(t) = t {
                println!(
                    "      1 thread, on-CPU, {sub_rows} rows, {isa:?}: {:>6.1} GB/s",
                    (sub_rows * rb) as f64 / t / 1e9
                );
            }
        }
        let tq = time(iters, || {
            black_box(QuantizedVec::for_weights(ty, black_box(&x)).unwrap());
        });
        println!("      quantizing x ({cols}): {:.2} us", tq * 1e6);
    }
}
