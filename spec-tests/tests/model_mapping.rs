//! Metadata → config and tensor names → weights: the real models map as documented in
//! docs/GGUF_TENSOR_MAPPING.md (pinned by snapshots), and every kind of mismatch is refused with an
//! error naming the key or tensor.

use fixtures::tiny::{TinySpec, build};
use host::fetch::{QWEN, SMOLLM2};
use host::gguf::{GgmlType, Gguf, GgufWriter, TensorSpec, Value};
use host::model::{Arch, Config, ModelError, RopeStyle, Weights};
use spec_tests::real_model;

fn load(w: &GgufWriter, data: &[Vec<u8>]) -> Gguf {
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    Gguf::from_bytes(w.to_bytes(&refs)).unwrap()
}

fn map(w: &GgufWriter, data: &[Vec<u8>]) -> Result<(Config, Weights), ModelError> {
    let g = load(w, data);
    let cfg = Config::from_header(&g.header)?;
    let weights = Weights::from_header(&g.header, &cfg)?;
    Ok((cfg, weights))
}

#[test]
fn inspect_reports_of_the_real_models() {
    for (m, name) in [(&QWEN, "inspect_qwen"), (&SMOLLM2, "inspect_smollm2")] {
        let path = real_model(m);
        let g = Gguf::open(&path).unwrap();
        let report = host::cli::inspect::report(&g, &path);
        insta::assert_json_snapshot!(name, report);
    }
}

#[test]
fn inspect_reports_of_tiny_fixtures() {
    for arch in [Arch::Qwen2, Arch::Llama] {
        let mut spec = TinySpec::new(arch, GgmlType::Q4K);
        spec.matrix_types = vec![GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0];
        let (w, data) = build(&spec);
        let g = load(&w, &data);
        let report = host::cli::inspect::report(&g, std::path::Path::new("tiny.gguf"));
        insta::assert_json_snapshot!(format!("inspect_tiny_{}", arch.name()), report);
        // The text form renders every section.
        let text = host::cli::inspect::render_text(&report);
        for section in ["metadata (", "config", "tensors (", "mapping", "LM head"] {
            assert!(text.contains(section), "missing {section:?} in\n{text}");
        }
    }
}

#[test]
fn real_model_configs() {
    let g = Gguf::open(real_model(&QWEN)).unwrap();
    let c = Config::from_header(&g.header).unwrap();
    assert_eq!(
        (
            c.arch,
            c.n_embd,
            c.n_layer,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_ff,
            c.n_vocab
        ),
        (Arch::Qwen2, 896, 24, 14, 2, 64, 4864, 151936)
    );
    assert_eq!(
        (c.rope_style, c.rope_theta, c.n_ctx_train),
        (RopeStyle::Neox, 1_000_000.0, 32768)
    );
    let w = Weights::from_header(&g.header, &c).unwrap();
    assert!(!w.output_tied);
    assert_eq!(w.output.ggml_type, GgmlType::Q8_0);
    assert!(
        w.layers
            .iter()
            .all(|l| l.attn_q_bias.is_some() && l.attn_k_bias.is_some() && l.attn_v_bias.is_some())
    );

    let g = Gguf::open(real_model(&SMOLLM2)).unwrap();
    let c = Config::from_header(&g.header).unwrap();
    assert_eq!(
        (
            c.arch,
            c.n_embd,
            c.n_layer,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_ff,
            c.n_vocab
        ),
        (Arch::Llama, 576, 30, 9, 3, 64, 1536, 49152)
    );
    assert_eq!((c.rope_style, c.rope_theta), (RopeStyle::Normal, 100_000.0));
    let w = Weights::from_header(&g.header, &c).unwrap();
    assert!(
        w.output_tied,
        "smollm2 has no output.weight: the LM head is the embedding"
    );
    assert_eq!(w.output.name, "token_embd.weight");
    assert!(w.layers.iter().all(|l| l.attn_q_bias.is_none()));
}

#[test]
fn tiny_models_map_in_every_type() {
    for t in GgmlType::ALL {
        for arch in [Arch::Qwen2, Arch::Llama] {
            let (w, data) = build(&TinySpec::new(arch, t));
            let (cfg, weights) = map(&w, &data).unwrap_or_else(|e| panic!("{t} {arch:?}: {e}"));
            assert_eq!(cfg.arch, arch);
            assert_eq!(weights.layers.len(), 2);
            assert_eq!(weights.output_tied, arch == Arch::Llama);
        }
    }
}

#[test]
fn unknown_architecture_is_refused_by_name() {
    let (mut w, data) = build(&TinySpec::new(Arch::Llama, GgmlType::Q8_0));
    w.set("general.architecture", Value::String("gemma2".into()));
    let e = map(&w, &data).unwrap_err();
    assert!(matches!(&e, ModelError::UnsupportedArch(a) if a == "gemma2"));
    assert!(e.to_string().contains("gemma2"));
}

#[test]
fn metadata_problems_name_the_key() {
    let base = || build(&TinySpec::new(Arch::Qwen2, GgmlType::Q8_0));
    let (mut w, data) = base();
    w.metadata.retain(|(k, _)| k != "qwen2.block_count");
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::MissingKey(k) if k == "qwen2.block_count")
    );

    let (mut w, data) = base();
    w.set("qwen2.embedding_length", Value::String("896".into()));
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::WrongType { key, .. } if key == "qwen2.embedding_length")
    );

    let (mut w, data) = base();
    w.set("qwen2.attention.head_count_kv", Value::U32(3));
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::BadValue { key, .. } if key == "qwen2.attention.head_count_kv")
    );

    let (mut w, data) = base();
    w.set("qwen2.feed_forward_length", Value::U32(0));
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::BadValue { key, .. } if key == "qwen2.feed_forward_length")
    );

    let (mut w, data) = base();
    w.set("qwen2.rope.scaling.type", Value::String("yarn".into()));
    let e = map(&w, &data).unwrap_err();
    assert!(e.to_string().contains("yarn"), "{e}");

    let (mut w, data) = base();
    w.set(
        "qwen2.attention.layer_norm_rms_epsilon",
        Value::F32(f32::NAN),
    );
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::BadValue { key, .. } if key.ends_with("epsilon"))
    );

    // Vocabulary size from the token list when {arch}.vocab_size is absent (qwen2 files).
    let (w, data) = base();
    assert!(w.metadata.iter().all(|(k, _)| k != "qwen2.vocab_size"));
    let (cfg, _) = map(&w, &data).unwrap();
    assert_eq!(cfg.n_vocab, fixtures::tiny::tiny_vocab().0.len());
}

#[test]
fn tensor_problems_name_the_tensor() {
    let base = || build(&TinySpec::new(Arch::Qwen2, GgmlType::Q8_0));

    // Missing required tensor.
    let (mut w, mut data) = base();
    let i = w
        .tensors
        .iter()
        .position(|t| t.name == "blk.1.ffn_up.weight")
        .unwrap();
    w.tensors.remove(i);
    data.remove(i);
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::MissingTensor(n) if n == "blk.1.ffn_up.weight")
    );

    // Wrong shape: expected and found both in the message.
    let (mut w, mut data) = base();
    let i = w
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_k.weight")
        .unwrap();
    w.tensors[i].dims = vec![256, 64];
    data[i].truncate(w.tensors[i].n_bytes() as usize);
    let e = map(&w, &data).unwrap_err();
    assert!(
        matches!(&e, ModelError::TensorShape { name, expected, found } if name == "blk.0.attn_k.weight" && expected == "256x128" && found == "256x64"),
        "{e}"
    );

    // A norm stored quantized.
    let (mut w, mut data) = base();
    let i = w
        .tensors
        .iter()
        .position(|t| t.name == "output_norm.weight")
        .unwrap();
    w.tensors[i].ggml_type = GgmlType::Q8_0;
    data[i] = vec![0; w.tensors[i].n_bytes() as usize];
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::TensorType { name, .. } if name == "output_norm.weight")
    );

    // Fused QKV is refused clearly.
    let (mut w, mut data) = base();
    w.tensor(TensorSpec::new(
        "blk.0.attn_qkv.weight",
        GgmlType::F32,
        &[256, 512],
    ));
    data.push(vec![0; 256 * 512 * 4]);
    let e = map(&w, &data).unwrap_err();
    assert!(
        e.to_string().contains("attn_qkv") && e.to_string().contains("fused"),
        "{e}"
    );

    // A tensor the mapping does not use is not silently ignored.
    for extra in [
        "rope_freqs.weight",
        "blk.2.attn_norm.weight",
        "mystery.weight",
    ] {
        let (mut w, mut data) = base();
        w.tensor(TensorSpec::new(extra, GgmlType::F32, &[32]));
        data.push(vec![0; 128]);
        let e = map(&w, &data).unwrap_err();
        assert!(
            matches!(&e, ModelError::UnexpectedTensor { name, .. } if name == extra),
            "{e}"
        );
    }

    // A bias of the wrong length.
    let (mut w, mut data) = base();
    let i = w
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_v.bias")
        .unwrap();
    w.tensors[i].dims = vec![64];
    data[i].truncate(256);
    assert!(
        matches!(map(&w, &data).unwrap_err(), ModelError::TensorShape { name, .. } if name == "blk.0.attn_v.bias")
    );
}
