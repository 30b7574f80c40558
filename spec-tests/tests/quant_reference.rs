//! Dequantization matches gguf-py's numpy dequantizers bit for bit, for every supported type.
//!
//! The vectors in spec-tests/data/quant/ were made by fixtures/scripts/gen_quant_refs.py: random
//! but valid blocks of each type, and rows of tensors of the two real models, each with gguf-py's
//! dequantization. When the model files are present (`GGUF_MODEL_CACHE` or
//! `~/.cache/gguf-models`), the committed model rows are also checked against the files.

use std::path::{Path, PathBuf};

use host::gguf::{GgmlType, Gguf};
use host::quant::dequantize_row;
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/quant")
}

fn model_dir() -> PathBuf {
    match std::env::var_os("GGUF_MODEL_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gguf-models")
        }
    }
}

struct Vector {
    name: String,
    ty: GgmlType,
    n: usize,
    raw: Vec<u8>,
    expected: Vec<f32>,
    entry: Value,
}

fn vectors() -> Vec<Vector> {
    let dir = data_dir();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    manifest["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let ty = GgmlType::from_name(e["type"].as_str().unwrap()).unwrap();
            let n = e["n"].as_u64().unwrap() as usize;
            let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
            let expected: Vec<f32> = std::fs::read(dir.join(format!("{name}.f32")))
                .unwrap()
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b))
                .collect();
            assert_eq!(expected.len(), n, "{name}: expected-value count");
            Vector {
                name,
                ty,
                n,
                raw,
                expected,
                entry: e.clone(),
            }
        })
        .collect()
}

/// Bit-exact comparison; on failure names the first differing index and both values.
fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mismatches: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = mismatches.first() {
        panic!(
            "{name}: {} of {} values differ; first at index {i}: got {:e} ({:#010x}), gguf-py {:e} ({:#010x})",
            mismatches.len(),
            got.len(),
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn dequantize_row_matches_gguf_py_for_every_type() {
    let vs = vectors();
    for ty in GgmlType::ALL {
        let v = vs
            .iter()
            .find(|v| v.ty == ty && v.entry["source"] == "random")
            .unwrap_or_else(|| panic!("no random reference vector for {ty}"));
        // Never compare against an all-zero expectation: it would hide a decoder that writes
        // nothing.
        assert!(
            v.expected.iter().filter(|x| **x != 0.0).count() > v.n / 2,
            "{}: reference is mostly zeros",
            v.name
        );
        let mut got = vec![f32::NAN; v.n];
        dequantize_row(ty, &v.raw, &mut got).unwrap();
        assert_bits_eq(&v.name, &got, &v.expected);
    }
}

#[test]
fn dequantize_row_matches_gguf_py_on_real_model_rows() {
    let vs: Vec<Vector> = vectors()
        .into_iter()
        .filter(|v| v.entry["source"] == "model")
        .collect();
    // The types the two real models use.
    for ty in [
        GgmlType::F32,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        assert!(vs.iter().any(|v| v.ty == ty), "no real-model row of {ty}");
    }
    for v in &vs {
        let mut got = vec![f32::NAN; v.n];
        dequantize_row(v.ty, &v.raw, &mut got).unwrap();
        assert_bits_eq(&v.name, &got, &v.expected);
    }
}

/// The committed model rows are the real files' bytes (so the vectors above are real data).
#[test]
fn model_rows_match_the_model_files() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v.entry["source"] == "model") {
        let path = model_dir().join(v.entry["model"].as_str().unwrap());
        if !path.exists() {
            eprintln!("SKIP {}: {} not present", v.name, path.display());
            continue;
        }
        let g = Gguf::open(&path).unwrap();
        let (info, data) = g.tensor(v.entry["tensor"].as_str().unwrap()).unwrap();
        assert_eq!(info.ggml_type, v.ty, "{}", v.name);
        assert_eq!(info.row_len() as usize, v.n, "{}", v.name);
        let row = v.entry["row"].as_u64().unwrap() as usize;
        let row_bytes = v.ty.row_bytes(v.n).unwrap();
        let file_row = &data[row * row_bytes..(row + 1) * row_bytes];
        assert_eq!(
            file_row,
            &v.raw[..],
            "{}: fixture bytes differ from the model file",
            v.name
        );
        // And the file's row (zero-copy, as the engine reads it) dequantizes to the reference.
        let mut got = vec![f32::NAN; v.n];
        dequantize_row(v.ty, file_row, &mut got).unwrap();
        assert_bits_eq(&v.name, &got, &v.expected);
        checked += 1;
    }
    eprintln!("checked {checked} model rows against the model files");
}
