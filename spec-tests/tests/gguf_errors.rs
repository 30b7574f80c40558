//! Malformed GGUF input: every kind of damage gets its own typed error that says where, and no
//! input makes the reader panic.

use host::gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, TensorSpec, Value};
use proptest::prelude::*;

/// Hand-assembled GGUF bytes, for damage a well-behaved writer cannot produce.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 and appends `n` data bytes.
    fn data(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len().div_ceil(32) * 32, 0);
        v.extend(std::iter::repeat_n(0x11, n));
        v
    }
}

fn err(bytes: Vec<u8>) -> GgufError {
    match Gguf::from_bytes(bytes) {
        Ok(_) => panic!("malformed file was accepted"),
        Err(e) => e,
    }
}

/// A valid file using every metadata value type, nested arrays and two tensors.
fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("u8", Value::U8(7))
        .set("i8", Value::I8(-7))
        .set("u16", Value::U16(700));
    w.set("i16", Value::I16(-700))
        .set("u32", Value::U32(70_000))
        .set("i32", Value::I32(-70_000));
    w.set("f32", Value::F32(0.5))
        .set("bool", Value::Bool(true))
        .set("u64", Value::U64(1 << 40));
    w.set("i64", Value::I64(-(1 << 40)))
        .set("f64", Value::F64(-0.25));
    w.set(
        "strings",
        Value::Array(Array::String(vec!["a".into(), "ßé".into()])),
    );
    w.set(
        "nested",
        Value::Array(Array::Array(vec![
            Array::I32(vec![1, 2]),
            Array::Array(vec![Array::Bool(vec![true])]),
        ])),
    );
    w.tensor(TensorSpec::new("a", GgmlType::Q8_0, &[64, 2]));
    w.tensor(TensorSpec::new("b", GgmlType::F32, &[3]));
    let a = vec![0x22u8; 2 * 2 * 34];
    let b = vec![0x33u8; 12];
    w.to_bytes(&[&a, &b])
}

#[test]
fn valid_file_parses_with_every_value_type() {
    let g = Gguf::from_bytes(valid_file()).unwrap();
    let h = &g.header;
    assert_eq!(h.get("i16"), Some(&Value::I16(-700)));
    assert_eq!(h.get("f64"), Some(&Value::F64(-0.25)));
    assert_eq!(h.get("u64").and_then(Value::as_u64), Some(1 << 40));
    assert_eq!(
        h.get("strings")
            .and_then(Value::as_array)
            .and_then(|a| a.as_strings())
            .unwrap()[1],
        "ßé"
    );
    match h.get("nested") {
        Some(Value::Array(Array::Array(v))) => {
            assert_eq!(v[1], Array::Array(vec![Array::Bool(vec![true])]))
        }
        other => panic!("nested array read as {other:?}"),
    }
    let (info, data) = g.tensor("a").unwrap();
    assert_eq!((info.dims.as_slice(), data.len()), (&[64u64, 2][..], 136));
    assert!(data.iter().all(|&b| b == 0x22));
    assert!(g.tensor("b").unwrap().1.iter().all(|&b| b == 0x33));
    assert!(matches!(g.tensor("c"), Err(GgufError::NoSuchTensor(n)) if n == "c"));
}

#[test]
fn bad_magic_and_versions() {
    let mut f = valid_file();
    f[..4].copy_from_slice(b"GGML");
    assert!(matches!(err(f), GgufError::BadMagic { found } if &found == b"GGML"));
    for (v, hint) in [(1u32, "version 1"), (0x0300_0000, "big-endian"), (4, "")] {
        let mut f = valid_file();
        f[4..8].copy_from_slice(&v.to_le_bytes());
        let e = err(f);
        assert!(matches!(e, GgufError::UnsupportedVersion { version, .. } if version == v));
        assert!(e.to_string().contains(hint), "{e}");
    }
    // Version 2 has the same layout as 3 and is read.
    let mut f = valid_file();
    f[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(Gguf::from_bytes(f).unwrap().header.version, 2);
}

#[test]
fn every_truncation_is_an_error_with_an_offset() {
    let f = valid_file();
    // Everything up to the end of the last tensor's data is needed (the padding after it is not).
    let g = Gguf::from_bytes(f.clone()).unwrap();
    let last = g
        .header
        .tensors
        .iter()
        .map(|t| g.header.data_start + t.offset + t.n_bytes)
        .max()
        .unwrap();
    assert_eq!(
        last as usize,
        f.len() - 20,
        "the file ends with 20 bytes of padding"
    );
    assert!(Gguf::from_bytes(f[..last as usize].to_vec()).is_ok());
    for len in 0..last as usize {
        let e = err(f[..len].to_vec());
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::TensorOutOfBounds { .. }
                    | GgufError::CountTooLarge { .. }
            ),
            "prefix {len}: unexpected {msg}"
        );
        assert!(
            msg.chars().any(|c| c.is_ascii_digit()),
            "prefix {len}: no position in {msg}"
        );
    }
}

#[test]
fn lengths_and_counts_running_past_the_file() {
    // A string length far beyond the file.
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX).bytes(b"key and some more bytes");
    assert!(matches!(
        err(r.0),
        GgufError::Truncated {
            offset: 32,
            needed: u64::MAX,
            ..
        }
    ));
    // Metadata and tensor counts that cannot fit.
    let r = Raw::header(3, 0, 1 << 60);
    assert!(matches!(err(r.0), GgufError::CountTooLarge { count, .. } if count == 1 << 60));
    let r = Raw::header(3, u64::MAX, 0);
    assert!(matches!(err(r.0), GgufError::CountTooLarge { .. }));
    // An array count that cannot fit: refused before allocating.
    let mut r = Raw::header(3, 0, 1);
    r.str("arr").u32(9).u32(10).u64(u64::MAX / 2);
    let e = err(r.0);
    assert!(
        matches!(&e, GgufError::CountTooLarge { what, .. } if what.contains("\"arr\"")),
        "{e}"
    );
}

#[test]
fn bad_metadata_values() {
    let mut r = Raw::header(3, 0, 2);
    r.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    assert!(matches!(err(r.0), GgufError::DuplicateKey { key, offset: 41 } if key == "k"));

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u32(1);
    assert!(matches!(
        err(r.0),
        GgufError::UnknownValueType {
            type_id: 13,
            offset: 33,
            ..
        }
    ));

    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(77).u64(0);
    assert!(matches!(
        err(r.0),
        GgufError::UnknownValueType { type_id: 77, .. }
    ));

    let mut r = Raw::header(3, 0, 1);
    r.str("flag").u32(7).bytes(&[2]);
    assert!(matches!(
        err(r.0),
        GgufError::BadBool {
            value: 2,
            offset: 40,
            ..
        }
    ));

    let mut r = Raw::header(3, 0, 1);
    r.str("s").u32(8).u64(2).bytes(&[0xff, 0xfe]);
    assert!(matches!(err(r.0), GgufError::BadUtf8 { offset: 45, .. }));

    // Arrays nested too deep.
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..20 {
        r.u32(9).u64(1);
    }
    assert!(matches!(err(r.0), GgufError::NestingTooDeep { .. }));
}

#[test]
fn bad_alignment() {
    for (ty, val, what) in [
        (4u32, 24u32, "power of two"),
        (4, 0, "power of two"),
        (5, 32, "must be a u32"),
    ] {
        let mut r = Raw::header(3, 0, 1);
        r.str("general.alignment").u32(ty).u32(val);
        let e = err(r.0);
        assert!(
            matches!(&e, GgufError::BadMetadata { key, .. } if key == "general.alignment"),
            "{e}"
        );
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn bad_tensor_infos() {
    let one = |name: &str, dims: &[u64], ty: u32, off: u64, data: usize| {
        let mut r = Raw::header(3, 1, 0);
        r.tensor(name, dims, ty, off);
        err(r.data(data))
    };
    let e = one("t", &[32], 16, 0, 64);
    assert!(
        e.to_string().contains("IQ2_XXS") && e.to_string().contains("\"t\""),
        "{e}"
    );
    let e = one("t", &[32], 99, 0, 64);
    assert!(
        matches!(&e, GgufError::BadTensorType { type_id: 99, .. }),
        "{e}"
    );
    assert!(
        matches!(one("z", &[32, 0], 0, 0, 64), GgufError::BadTensorShape { problem, .. } if problem.contains("dimension 1 is zero"))
    );
    assert!(
        matches!(one("big", &[1 << 32, 1 << 32], 0, 0, 64), GgufError::BadTensorShape { problem, .. } if problem.contains("overflows"))
    );
    assert!(
        matches!(one("five", &[1, 1, 1, 1, 1], 0, 0, 64), GgufError::BadTensorShape { problem, .. } if problem.contains("n_dims is 5"))
    );
    assert!(
        matches!(one("q", &[31], 8, 0, 64), GgufError::BadTensorShape { problem, .. } if problem.contains("block size 32"))
    );
    assert!(matches!(
        one("m", &[4], 0, 4, 64),
        GgufError::MisalignedTensor {
            data_offset: 4,
            alignment: 32,
            ..
        }
    ));
    assert!(
        matches!(one("oob", &[32], 0, 0, 100), GgufError::TensorOutOfBounds { name, .. } if name == "oob")
    );
    assert!(matches!(
        one("far", &[1], 0, u64::MAX - 31, 64),
        GgufError::TensorOutOfBounds { .. }
    ));

    let mut r = Raw::header(3, 2, 0);
    r.tensor("x", &[16], 0, 0).tensor("x", &[16], 0, 64);
    assert!(matches!(err(r.data(128)), GgufError::DuplicateTensor { name, .. } if name == "x"));

    let mut r = Raw::header(3, 2, 0);
    r.tensor("x", &[16], 0, 0).tensor("y", &[16], 0, 32);
    assert!(
        matches!(err(r.data(128)), GgufError::TensorOverlap { name, other, .. } if name == "y" && other == "x")
    );
}

#[test]
fn unreadable_path_names_the_file() {
    let e = Gguf::open("/nonexistent/model.gguf").err().unwrap();
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any damage — truncation, flipped bytes, inflated lengths — gives an error or a valid parse,
    /// never a panic; and whatever parses has its tensors inside the file.
    #[test]
    fn mutated_files_never_panic(
        cut in 0usize..400,
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..6),
        inflate in proptest::option::of((0usize..400, any::<u64>())),
    ) {
        let mut f = valid_file();
        for (at, b) in flips {
            let i = at % f.len();
            f[i] ^= b;
        }
        if let Some((at, v)) = inflate {
            let i = (at % (f.len() - 8)) & !7;
            f[i..i + 8].copy_from_slice(&v.to_le_bytes());
        }
        let len = f.len().saturating_sub(cut % 64);
        f.truncate(len);
        if let Ok(g) = Gguf::from_bytes(f) {
            for t in &g.header.tensors {
                prop_assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
            }
        }
    }
}
