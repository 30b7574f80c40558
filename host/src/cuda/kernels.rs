//! The names of the kernels in the PTX module, and which kernel serves which tensor type.

use crate::gguf::GgmlType;

/// Every kernel the host launches; [`super::Gpu::new`] looks each one up, and a CPU-only test
/// checks this list against the `.entry` points of both embedded PTX modules.
pub const KERNELS: &[&str] = &[
    "axpy_f32",
    "rms_norm_f32",
    "rms_norm_f16x3",
    "add_f32",
    "swiglu_f32",
    "swiglu_f16x3",
    "f32_to_f16",
    "f32_to_f16x3",
    "rope_f32",
    "kv_append_f16",
    "kv_append_f32",
    "attention_combine",
    "attention_decode_f16",
    "attention_decode_f32",
    "attention_prefill_f16",
    "attention_prefill_f32",
    "attention_prefill_mma_f16",
    "argmax_f32",
    "sample_f32",
    "matvec_f32",
    "matvec_f16",
    "matvec_bf16",
    "matvec_q4_0",
    "matvec_q4_1",
    "matvec_q5_0",
    "matvec_q5_1",
    "matvec_q8_0",
    "matvec_swiglu_q4_0",
    "matvec_swiglu_q4_1",
    "matvec_swiglu_q5_0",
    "matvec_swiglu_q5_1",
    "matvec_swiglu_q8_0",
    "matvec_qkv_q4_0_q4_0",
    "matvec_qkv_q4_1_q4_1",
    "matvec_qkv_q5_0_q5_0",
    "matvec_qkv_q5_1_q5_1",
    "matvec_qkv_q8_0_q8_0",
    "matvec_qkv_q4_0_q8_0",
    "matvec_qkv_q4_1_q8_0",
    "matvec_qkv_q5_0_q8_0",
    "matvec_qkv_q5_1_q8_0",
    "matvec_attn_q4_0",
    "matvec_attn_q4_1",
    "matvec_attn_q5_0",
    "matvec_attn_q5_1",
    "matvec_attn_q8_0",
    "matvec_q2_k",
    "matvec_q3_k",
    "matvec_q4_k",
    "matvec_q5_k",
    "matvec_q6_k",
    "matvec_q8p",
    "embedding_q8p",
    "swiglu_a8_q4_0",
    "swiglu_a8_q4_1",
    "swiglu_a8_q5_0",
    "swiglu_a8_q5_1",
    "swiglu_a8_q8_0",
    "matvec_a8_q4_0",
    "matvec_a8_q4_1",
    "matvec_a8_q5_0",
    "matvec_a8_q5_1",
    "matvec_a8_q8_0",
    "matvec_a8_q4_k",
    "matvec_a8_q6_k",
    "dequant_f32_f32",
    "dequant_f32_f16",
    "dequant_f32_f16x3",
    "dequant_f16_f32",
    "dequant_f16_f16",
    "dequant_f16_f16x3",
    "dequant_bf16_f32",
    "dequant_bf16_f16",
    "dequant_bf16_f16x3",
    "dequant_q4_0_f32",
    "dequant_q4_0_f16",
    "dequant_q4_0_f16x3",
    "dequant_q4_1_f32",
    "dequant_q4_1_f16",
    "dequant_q4_1_f16x3",
    "dequant_q5_0_f32",
    "dequant_q5_0_f16",
    "dequant_q5_0_f16x3",
    "dequant_q5_1_f32",
    "dequant_q5_1_f16",
    "dequant_q5_1_f16x3",
    "dequant_q8_0_f32",
    "dequant_q8_0_f16",
    "dequant_q8_0_f16x3",
    "dequant_q2_k_f32",
    "dequant_q2_k_f16",
    "dequant_q2_k_f16x3",
    "dequant_q3_k_f32",
    "dequant_q3_k_f16",
    "dequant_q3_k_f16x3",
    "dequant_q4_k_f32",
    "dequant_q4_k_f16",
    "dequant_q4_k_f16x3",
    "dequant_q5_k_f32",
    "dequant_q5_k_f16",
    "dequant_q5_k_f16x3",
    "dequant_q6_k_f32",
    "dequant_q6_k_f16",
    "dequant_q6_k_f16x3",
];

/// Whether kernel `name` waits for the previous kernel itself (`gpu::pdl_wait` before its first
/// access to memory another kernel writes), so that it may be launched with programmatic
/// serialization ([`super::Gpu::set_pdl`]): the kernels of a decode step after its first.
pub fn waits_for_previous(name: &str) -> bool {
    name == "rms_norm_f32"
        || name.starts_with("matvec_")
        || name.starts_with("swiglu_a8_")
        || name.starts_with("attention_decode_")
        || name == "attention_combine"
        || name == "argmax_f32"
        || name == "sample_f32"
}

/// Kernel-name suffix of a tensor type (`q4_k`, `f16`, …).
pub fn type_suffix(t: GgmlType) -> &'static str {
    match t {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::BF16 => "bf16",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q2K => "q2_k",
        GgmlType::Q3K => "q3_k",
        GgmlType::Q4K => "q4_k",
        GgmlType::Q5K => "q5_k",
        GgmlType::Q6K => "q6_k",
    }
}

/// The matvec kernel for weights of type `t`.
pub fn matvec_kernel(t: GgmlType) -> &'static str {
    find(&format!("matvec_{}", type_suffix(t)))
}

/// The fused gate/up/SwiGLU matvec kernel for weights of type `t`, where there is one (the
/// legacy 32-element block types).
pub fn matvec_swiglu_kernel(t: GgmlType) -> Option<&'static str> {
    let name = format!("matvec_swiglu_{}", type_suffix(t));
    lookup(&name)
}

/// The gate/up/SwiGLU kernel on 8-bit activations (`swiglu_a8_*`) for weights of type `t`,
/// where there is one (the legacy 32-element block types).
pub fn swiglu_a8_kernel(t: GgmlType) -> Option<&'static str> {
    let name = format!("swiglu_a8_{}", type_suffix(t));
    lookup(&name)
}

/// The matvec kernel on 8-bit activations (`matvec_a8_*`) for weights of type `t`, where there
/// is one (the legacy types, Q4_K and Q6_K).
pub fn matvec_a8_kernel(t: GgmlType) -> Option<&'static str> {
    let name = format!("matvec_a8_{}", type_suffix(t));
    lookup(&name)
}

/// The attention output projection that can combine the attention's partials itself
/// (`matvec_attn_*`) for weights of type `t`, where there is one (the legacy types).
pub fn matvec_attn_kernel(t: GgmlType) -> Option<&'static str> {
    let name = format!("matvec_attn_{}", type_suffix(t));
    lookup(&name)
}

/// The fused q/k/v matvec kernel for q and k of type `qk` and v of type `v`, where there is one
/// (legacy types, v of the same type or Q8_0).
pub fn matvec_qkv_kernel(qk: GgmlType, v: GgmlType) -> Option<&'static str> {
    let name = format!("matvec_qkv_{}_{}", type_suffix(qk), type_suffix(v));
    lookup(&name)
}

/// The dequantization kernel for type `t` writing `out`: `"f32"`, `"f16"` or `"f16x3"` (the
/// split-f16 GEMM operand).
pub fn dequant_kernel(t: GgmlType, out: &str) -> &'static str {
    find(&format!("dequant_{}_{out}", type_suffix(t)))
}

/// The kernel called `name`, if the module has one.
fn lookup(name: &str) -> Option<&'static str> {
    KERNELS.iter().copied().find(|k| *k == name)
}

fn find(name: &str) -> &'static str {
    lookup(name)
        .unwrap_or_else(|| panic!("kernel {name} missing from KERNELS (a test checks this list)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ptx: &str) -> Vec<&str> {
        ptx.split(".entry ")
            .skip(1)
            .map(|s| s.split('(').next().unwrap().trim())
            .collect()
    }

    #[test]
    fn kernel_list_matches_both_ptx_modules() {
        for ptx in [crate::kernels::PTX_SM90, crate::kernels::PTX_SM80] {
            let mut e = entries(ptx);
            e.sort_unstable();
            let mut k: Vec<&str> = KERNELS.to_vec();
            k.sort_unstable();
            assert_eq!(e, k);
        }
    }

    /// A kernel launched with programmatic serialization must wait for its predecessor itself:
    /// every kernel `waits_for_previous` names has `griddepcontrol.wait` in its sm_90 body, and
    /// lets its own successor start (`griddepcontrol.launch_dependents`); the sm_80 module, where
    /// the attribute is never used, has neither.
    #[test]
    fn programmatic_launches_only_for_kernels_that_wait() {
        let mut waiting = 0;
        for body in crate::kernels::PTX_SM90.split(".entry ").skip(1) {
            let name = body.split('(').next().unwrap().trim();
            if waits_for_previous(name) {
                assert!(
                    body.contains("griddepcontrol.wait"),
                    "{name} is launched with programmatic serialization but does not wait"
                );
                assert!(
                    body.contains("griddepcontrol.launch_dependents"),
                    "{name} does not let its successor start early"
                );
                waiting += 1;
            }
        }
        let listed = KERNELS.iter().filter(|k| waits_for_previous(k)).count();
        assert_eq!(waiting, listed, "every listed kernel is in the module once");
        assert!(
            listed > 30,
            "only {listed} kernels wait for their predecessor"
        );
        assert!(!crate::kernels::PTX_SM80.contains("griddepcontrol"));
    }

    #[test]
    fn every_type_has_matvec_and_dequant_kernels() {
        for t in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            assert!(matvec_kernel(t).ends_with(type_suffix(t)));
            for out in ["f32", "f16", "f16x3"] {
                assert!(dequant_kernel(t, out).ends_with(&format!("{}_{out}", type_suffix(t))));
            }
        }
    }
}
