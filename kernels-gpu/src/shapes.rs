//! Launch geometry that a kernel and its host launcher must agree on (compiled for both, so the
//! numbers are written once).

/// Query rows (positions of one head) per block of `attention_prefill_*`.
pub const PREFILL_BM: usize = 32;

/// Keys per tile of `attention_prefill_*` for `head_dim`: 32, or 16 above 96 (so that the
/// shared memory stays under the 48 KB a launch gets without opting in).
pub const fn prefill_bn(head_dim: usize) -> usize {
    if head_dim > 96 { 16 } else { 32 }
}

/// Dynamic shared memory of `attention_prefill_*`, bytes: `q_s [BM][d + 4]`, `k_s [BN][d + 4]`,
/// `v_s [BN][d]`, `p_s [BM][BN + 4]`, all f32.
pub const fn prefill_smem_bytes(head_dim: usize) -> usize {
    let bn = prefill_bn(head_dim);
    4 * (PREFILL_BM * (head_dim + 4) + bn * (head_dim + 4) + bn * head_dim + PREFILL_BM * (bn + 4))
}

const _: () = assert!(prefill_smem_bytes(128) <= 48 * 1024 && prefill_smem_bytes(96) <= 48 * 1024);
