//! Dot products: every implementation against the scalar one and against the f64 reference, with
//! tolerances derived from how each result is computed.

use super::*;
use crate::quant::tests::random_blocks;
use crate::quant::{QuantizedVec, dequantize_row_to_vec, read_block};
use kernels_gpu::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0,
};
use proptest::prelude::*;

/// A tiny deterministic generator (xorshift) for test data.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1), never exactly 0.
    fn unit(&mut self) -> f32 {
        let v = (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        if v == 0.0 { 0.5 } else { v }
    }
}

/// Random non-zero activations of magnitude around `scale`, with some outliers (as real
/// activations have).
fn random_x(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed ^ 0x5eed);
    (0..n)
        .map(|i| {
            let v = r.unit() * scale;
            if i % 97 == 13 { v * 20.0 } else { v }
        })
        .collect()
}

/// A random row of `n` elements of `ty` (valid blocks for quantized types, finite values for
/// float types).
fn random_row(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    if ty.is_quantized() {
        return random_blocks(ty, n / ty.block_size(), seed);
    }
    let mut r = Rng::new(seed);
    let v: Vec<f32> = (0..n).map(|_| r.unit() * 3.0).collect();
    match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// An upper bound on the magnitude of every partial product the kernels form for block `b`: the
/// largest |scale part| + |min part| a weight of that block can have. Rounding errors of any
/// summation order are bounded relative to Σ over blocks of this times Σ|x̂| of the block.
fn block_weight_bound(ty: GgmlType, b: &[u8]) -> f64 {
    fn rb<const QK: usize, B: Block<QK>>(b: &[u8]) -> B {
        read_block(b).unwrap()
    }
    let f = |v: f32| v.abs() as f64;
    match ty {
        GgmlType::Q4_0 => f(rb::<32, BlockQ4_0>(b).d()) * 8.0,
        GgmlType::Q4_1 => {
            let w = rb::<32, BlockQ4_1>(b);
            f(w.d()) * 15.0 + f(w.m())
        }
        GgmlType::Q5_0 => f(rb::<32, BlockQ5_0>(b).d()) * 16.0,
        GgmlType::Q5_1 => {
            let w = rb::<32, BlockQ5_1>(b);
            f(w.d()) * 31.0 + f(w.m())
        }
        GgmlType::Q8_0 => f(rb::<32, BlockQ8_0>(b).d()) * 128.0,
        GgmlType::Q2K => {
            let w = rb::<256, BlockQ2K>(b);
            f(w.d()) * 15.0 * 3.0 + f(w.dmin()) * 15.0
        }
        GgmlType::Q3K => f(rb::<256, BlockQ3K>(b).d()) * 32.0 * 4.0,
        GgmlType::Q4K => {
            let w = rb::<256, BlockQ4K>(b);
            f(w.d()) * 63.0 * 15.0 + f(w.dmin()) * 63.0
        }
        GgmlType::Q5K => {
            let w = rb::<256, BlockQ5K>(b);
            f(w.d()) * 63.0 * 31.0 + f(w.dmin()) * 63.0
        }
        GgmlType::Q6K => f(rb::<256, BlockQ6K>(b).d()) * 128.0 * 32.0,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("per element"),
    }
}

/// S = Σ_b bound_b Σ_{i in b} |x̂_i| (Σ |w_i x_i| for float types) and the number of terms the
/// float accumulation adds up.
fn magnitude(ty: GgmlType, row: &[u8], xq: &QuantizedVec) -> (f64, usize) {
    let xhat = xq.dequantize();
    if !ty.is_quantized() {
        let w = dequantize_row_to_vec(ty, row, xhat.len()).unwrap();
        let s = w
            .iter()
            .zip(&xhat)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        return (s, xhat.len());
    }
    let bs = ty.block_size();
    let s = row
        .chunks_exact(ty.block_bytes())
        .zip(xhat.chunks_exact(bs))
        .map(|(b, x)| block_weight_bound(ty, b) * x.iter().map(|v| v.abs() as f64).sum::<f64>())
        .sum();
    (s, xhat.len() / bs)
}

/// Float-rounding tolerance of a dot product whose exact value is a sum of `terms` block terms
/// bounded in total by `s`: each path's f32 result is within about (terms + 8) eps s of the exact
/// value (recursive summation plus a few roundings per term); two paths differ by at most twice
/// that.
fn rounding_tol(s: f64, terms: usize) -> f64 {
    2.0 * (terms as f64 + 8.0) * f32::EPSILON as f64 * s + 1e-30
}

fn check_row(ty: GgmlType, n: usize, seed: u64, xscale: f32) -> Result<(), TestCaseError> {
    check_dot_case(ty, &random_row(ty, n, seed), &random_x(n, seed, xscale))
}

/// Checks one row against one activation vector: every implementation against the scalar one,
/// the scalar one against the exact dot with the quantized activations, and against the exact
/// dot with the original activations within the activation-rounding bound.
fn check_dot_case(ty: GgmlType, row: &[u8], x: &[f32]) -> Result<(), TestCaseError> {
    let (row, n) = (row.to_vec(), x.len());
    let x = x.to_vec();
    let xq = QuantizedVec::for_weights(ty, &x).unwrap();
    let (s, terms) = magnitude(ty, &row, &xq);
    let tol = rounding_tol(s, terms);

    // 1. Every implementation agrees with the scalar one.
    let scalar = vec_dot_with(Isa::Scalar, ty, &row, &xq).unwrap();
    prop_assert!(scalar.is_finite());
    for isa in Isa::available() {
        let v = vec_dot_with(isa, ty, &row, &xq).unwrap();
        prop_assert!(
            ((v as f64) - (scalar as f64)).abs() <= tol,
            "{ty} n={n} {isa:?}: {v} vs scalar {scalar} (tol {tol:e}, S {s:e})"
        );
    }

    // 2. The quantized dot is the exact dot of the weights with the quantized activations, up
    //    to float rounding.
    let xhat = xq.dequantize();
    let exact_q = vec_dot_reference(ty, &row, &xhat).unwrap();
    prop_assert!(
        (scalar as f64 - exact_q).abs() <= tol / 2.0,
        "{ty} n={n}: scalar {scalar} vs exact dot with quantized x {exact_q} (tol {:e})",
        tol / 2.0
    );

    // 3. Against the exact dot with the original x: the activation rounding error, bounded by
    //    Σ |w_i| h d_b: each x̂_i is within h = 1/2 + 200 eps steps d_b of x_i (x_i / d_b is
    //    computed as x_i * (1 / d_b), two roundings of a value <= 127 in magnitude: 127 eps; then
    //    rounded to the nearest integer: 1/2; and x̂_i = d_b * q_i rounds once more: 64 eps).
    let h = 0.5 + 200.0 * f32::EPSILON as f64;
    let w = dequantize_row_to_vec(ty, &row, n).unwrap();
    let steps = xq.block_scales();
    let bs = xq.kind().block_size();
    let act_bound: f64 = if steps.is_empty() {
        0.0
    } else {
        w.iter()
            .enumerate()
            .map(|(i, wi)| wi.abs() as f64 * steps[i / bs] as f64 * h)
            .sum()
    };
    for (i, (a, b)) in x.iter().zip(&xhat).enumerate() {
        if !steps.is_empty() {
            let step = steps[i / bs];
            prop_assert!(
                ((a - b).abs() as f64) <= step as f64 * h,
                "x[{i}] = {a} quantized to {b}, step {step}"
            );
        }
    }
    let exact = vec_dot_reference(ty, &row, &x).unwrap();
    prop_assert!(
        (scalar as f64 - exact).abs() <= act_bound + tol / 2.0,
        "{ty} n={n}: {scalar} vs exact {exact} (bound {act_bound:e} + {:e})",
        tol / 2.0
    );
    Ok(())
}

proptest! {

    #[test]
    fn dot_products_agree_and_stay_within_bounds(
        ty_idx in 0usize..13,
        n_blocks in 1usize..24,
        tail in 0usize..8,
        seed in any::<u64>(),
        xexp in -6i32..6,
    ) {
        let ty = GgmlType::ALL[ty_idx];
        // Float rows get lengths that are not multiples of the SIMD width.
        let n = if ty.is_quantized() { n_blocks * ty.block_size() } else { n_blocks * 13 + tail };
        check_row(ty, n, seed, 2f32.powi(xexp))?;
    }
}

/// The shapes of the real models (896, 4864, 576, 1536 columns) for every type.
#[test]
fn dot_products_at_real_shapes() {
    for ty in GgmlType::ALL {
        for n in [896usize, 4864, 576, 1536] {
            if ty.row_bytes(n).is_none() {
                continue;
            }
            for seed in 0..3 {
                check_row(ty, n, seed, 0.7).unwrap();
            }
        }
    }
}

#[test]
fn matvec_equals_rowwise_dots_for_every_isa() {
    for ty in GgmlType::ALL {
        let cols = if ty.block_size() == 256 { 512 } else { 96 };
        // Enough rows for several parallel tasks, and a count no task size divides.
        let rows = 2 * 65536 / ty.row_bytes(cols).unwrap() + 7;
        let w = random_row(ty, rows * cols, 11);
        let x = random_x(cols, 3, 1.0);
        let xq = QuantizedVec::for_weights(ty, &x).unwrap();
        let rb = ty.row_bytes(cols).unwrap();
        for isa in Isa::available() {
            let mut y = vec![f32::NAN; rows];
            matvec_with(isa, ty, &w, rows, &xq, &mut y).unwrap();
            for (r, yr) in y.iter().enumerate() {
                let want = vec_dot_with(isa, ty, &w[r * rb..(r + 1) * rb], &xq).unwrap();
                assert_eq!(yr.to_bits(), want.to_bits(), "{ty} {isa:?} row {r}");
            }
        }
        // The convenience entry point quantizes x itself and uses the best implementation.
        let mut y1 = vec![f32::NAN; rows];
        let mut y2 = vec![f32::NAN; rows];
        matvec(ty, &w, rows, cols, &x, &mut y1).unwrap();
        matvec_quantized(ty, &w, rows, &xq, &mut y2).unwrap();
        assert_eq!(y1, y2, "{ty}");
    }
}

#[test]
fn misaligned_rows_give_the_same_result() {
    for ty in GgmlType::ALL {
        let n = 512;
        let row = random_row(ty, n, 5);
        let mut shifted = vec![0u8; row.len() + 1];
        shifted[1..].copy_from_slice(&row);
        let xq = QuantizedVec::for_weights(ty, &random_x(n, 9, 1.0)).unwrap();
        for isa in Isa::available() {
            let a = vec_dot_with(isa, ty, &row, &xq).unwrap();
            let b = vec_dot_with(isa, ty, &shifted[1..], &xq).unwrap();
            assert_eq!(a.to_bits(), b.to_bits(), "{ty} {isa:?}");
        }
    }
}

#[test]
fn non_finite_activations_propagate() {
    for ty in GgmlType::ALL {
        let n = 256;
        let row = random_row(ty, n, 1);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = random_x(n, 2, 1.0);
            x[77] = bad;
            let xq = QuantizedVec::for_weights(ty, &x).unwrap();
            for isa in Isa::available() {
                let v = vec_dot_with(isa, ty, &row, &xq).unwrap();
                assert!(!v.is_finite(), "{ty} {isa:?}: {bad} in x gave {v}");
            }
        }
    }
}

#[test]
fn shape_and_kind_errors() {
    let ty = GgmlType::Q5_0;
    let x = random_x(64, 1, 1.0);
    let xq = QuantizedVec::for_weights(ty, &x).unwrap();
    let row = random_row(ty, 64, 1);
    assert!(matches!(
        vec_dot(ty, &row[..row.len() - 1], &xq),
        Err(QuantError::ByteLength { .. })
    ));
    let xk = QuantizedVec::for_weights(GgmlType::Q4K, &random_x(256, 1, 1.0)).unwrap();
    assert_eq!(
        vec_dot(ty, &row, &xk),
        Err(QuantError::ActivationKind {
            ty,
            expected: ActKind::Q8,
            found: ActKind::Q8K
        })
    );
    assert!(matches!(
        QuantizedVec::for_weights(GgmlType::Q4K, &x),
        Err(QuantError::ActivationLength { .. })
    ));
    let mut y = vec![0.0; 3];
    let w = random_row(ty, 64 * 2, 1);
    assert!(matches!(
        matvec(ty, &w, 2, 64, &x, &mut y),
        Err(QuantError::Length {
            what: "matvec output y",
            ..
        })
    ));
    let mut y = vec![0.0; 2];
    assert!(matches!(
        matvec(ty, &w[1..], 2, 64, &x, &mut y),
        Err(QuantError::ByteLength { .. })
    ));
    assert!(matches!(
        matvec(ty, &w, 2, 63, &x, &mut y),
        Err(QuantError::Length { .. })
    ));
    matvec(ty, &w, 2, 64, &x, &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_finite() && *v != 0.0));
}

/// Rows of the real models' tensors (every type they use), when the model files are present.
#[test]
fn real_model_rows_within_bounds() {
    let dir = match std::env::var_os("GGUF_MODEL_CACHE") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/gguf-models"),
    };
    let cases = [
        (
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "blk.0.ffn_gate.weight",
        ),
        (
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "blk.0.ffn_down.weight",
        ),
        (
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "blk.2.ffn_down.weight",
        ),
        ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "output.weight"),
        ("smollm2-135m-instruct-q4_1.gguf", "blk.0.attn_q.weight"),
    ];
    let mut checked = 0;
    for (file, tensor) in cases {
        let Ok(g) = crate::gguf::Gguf::open(dir.join(file)) else {
            eprintln!("SKIP {file}: not present in {}", dir.display());
            continue;
        };
        let (info, data) = g.tensor(tensor).unwrap();
        let n = info.row_len() as usize;
        let rb = info.ggml_type.row_bytes(n).unwrap();
        for (k, r) in [0usize, 1, 17, 400].into_iter().enumerate() {
            let x = random_x(n, k as u64, 1.5);
            check_dot_case(info.ggml_type, &data[r * rb..(r + 1) * rb], &x)
                .unwrap_or_else(|e| panic!("{file} {tensor} row {r}: {e}"));
            checked += 1;
        }
    }
    eprintln!("checked {checked} real rows");
}

#[test]
fn matmul_rows_equal_matvec() {
    for ty in GgmlType::ALL {
        let cols = if ty.block_size() == 256 { 512 } else { 96 };
        let rows = 65536 / ty.row_bytes(cols).unwrap() + 5;
        let w = random_row(ty, rows * cols, 21);
        for n in [1usize, 3] {
            let x = random_x(n * cols, 8, 1.0);
            let mut out = vec![f32::NAN; n * rows];
            matmul(ty, &w, rows, cols, &x, &mut out).unwrap();
            for i in 0..n {
                let mut y = vec![f32::NAN; rows];
                matvec(ty, &w, rows, cols, &x[i * cols..(i + 1) * cols], &mut y).unwrap();
                let got: Vec<u32> = out[i * rows..(i + 1) * rows]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                let want: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{ty} n={n} row {i}");
            }
        }
    }
    let mut out = vec![0.0; 5];
    assert!(matches!(
        matmul(GgmlType::F32, &[0; 16], 2, 2, &[1.0; 5], &mut out),
        Err(QuantError::Length { .. })
    ));
}
