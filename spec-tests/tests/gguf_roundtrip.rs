//! GGUF write → read → write is byte-exact, for synthetic models of every type and for both real
//! models (header and whole file).

use std::io::Write;

use fixtures::tiny::{TinySpec, build_bytes};
use host::fetch::{QWEN, SMOLLM2};
use host::gguf::{DataCheck, GgmlType, Gguf, GgufWriter, parse_header};
use host::model::Arch;
use sha2::{Digest, Sha256};
use spec_tests::real_model;

#[test]
fn tiny_models_of_every_type_round_trip() {
    for t in GgmlType::ALL {
        for arch in [Arch::Qwen2, Arch::Llama] {
            let bytes = build_bytes(&TinySpec::new(arch, t));
            let g = Gguf::from_bytes(bytes.clone()).unwrap_or_else(|e| panic!("{t} {arch:?}: {e}"));
            let w = GgufWriter::from_header(&g.header);
            let data: Vec<&[u8]> = g
                .header
                .tensors
                .iter()
                .map(|ti| g.tensor_data(ti))
                .collect();
            let again = w.to_bytes(&data);
            assert_eq!(again.len(), bytes.len(), "{t} {arch:?}: length");
            assert!(again == bytes, "{t} {arch:?}: rewritten bytes differ");
        }
    }
}

#[test]
fn mixed_type_model_round_trips() {
    let mut spec = TinySpec::new(Arch::Qwen2, GgmlType::Q4K);
    spec.matrix_types = GgmlType::ALL.to_vec();
    spec.embd_type = GgmlType::Q6K;
    let bytes = build_bytes(&spec);
    let g = Gguf::from_bytes(bytes.clone()).unwrap();
    let used: std::collections::BTreeSet<_> =
        g.header.tensors.iter().map(|t| t.ggml_type).collect();
    assert_eq!(
        used.len(),
        GgmlType::ALL.len(),
        "every type appears in the mixed model"
    );
    let data: Vec<&[u8]> = g
        .header
        .tensors
        .iter()
        .map(|ti| g.tensor_data(ti))
        .collect();
    assert!(GgufWriter::from_header(&g.header).to_bytes(&data) == bytes);
}

struct HashSink(Sha256, u64);
impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn real_models_round_trip_byte_exact() {
    for m in [&QWEN, &SMOLLM2] {
        let g = Gguf::open(real_model(m)).unwrap();
        let w = GgufWriter::from_header(&g.header);
        let header = w.header_bytes();
        assert_eq!(
            header.len() as u64,
            g.header.data_start,
            "{}: header length",
            m.file
        );
        assert!(
            header[..] == g.bytes()[..header.len()],
            "{}: header bytes differ",
            m.file
        );
        // The whole file, hashed as it is written: equal to the published checksum.
        let mut sink = HashSink(Sha256::new(), 0);
        w.write(&mut sink, |i, out| {
            out.write_all(g.tensor_data(&g.header.tensors[i]))
        })
        .unwrap();
        let sum: String = sink
            .0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sink.1, m.bytes, "{}: rewritten length", m.file);
        assert_eq!(
            sum, m.sha256,
            "{}: rewritten file differs from the original",
            m.file
        );
    }
}

#[test]
fn committed_headers_are_the_real_headers() {
    for m in [&QWEN, &SMOLLM2] {
        let g = Gguf::open(real_model(m)).unwrap();
        let path = fixtures::headers_dir().join(m.file.replace(".gguf", ".header.gguf"));
        let committed = std::fs::read(&path).unwrap();
        assert!(
            committed[..] == g.bytes()[..g.header.data_start as usize],
            "{}",
            path.display()
        );
        // And they parse as header-only files.
        let h = parse_header(&committed, DataCheck::HeaderOnly).unwrap();
        assert_eq!(h.tensors, g.header.tensors);
    }
}

#[test]
fn twin_has_the_real_layout_and_valid_data() {
    let header = fixtures::headers_dir().join("smollm2-135m-instruct-q4_1.header.gguf");
    let h = fixtures::twin::load_header(&header).unwrap();
    let mut out = Vec::new();
    fixtures::twin::write_twin(&h, 7, &mut out).unwrap();
    assert_eq!(out.len() as u64, SMOLLM2.bytes);
    let g = Gguf::from_bytes(out).unwrap();
    assert_eq!(g.header.tensors, h.tensors);
    // Deterministic: same seed, same bytes; another seed, other bytes.
    let mut again = Vec::new();
    fixtures::twin::write_twin(&h, 7, &mut again).unwrap();
    assert!(again == g.bytes());
    let mut other = Vec::new();
    fixtures::twin::write_twin(&h, 8, &mut other).unwrap();
    assert!(other[h.data_start as usize..] != g.bytes()[h.data_start as usize..]);
    // Norm weights near 1, everything finite.
    let (_, norm) = g.tensor("output_norm.weight").unwrap();
    for c in norm.chunks_exact(4) {
        let v = f32::from_le_bytes(c.try_into().unwrap());
        assert!((0.7..=1.3).contains(&v), "norm weight {v}");
    }
}
