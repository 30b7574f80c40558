//! Launch geometry that a kernel and its host launcher must agree on (compiled for both, so the
//! numbers are written once).

/// Rows (a warp each) per block of the warp-per-row matvec kernels (`matvec_swiglu_*`, and
/// `matvec_<type>` for F32, F16, BF16, Q2_K, Q3_K, Q5_K): blocks of `32 · MATVEC_ROWS_PER_BLOCK`
/// threads.
pub const MATVEC_ROWS_PER_BLOCK: usize = 4;

/// Warps per row (and per block) of the block-per-row matvec kernels: `matvec_<type>` for the
/// legacy types, Q4_K and Q6_K, and `matvec_qkv_*`.
pub const MATVEC_KWARP_WARPS: usize = 4;

/// The matvec kernels' `mode` argument (`matvec_*`, `matvec_qkv_*`, `matvec_attn_*`,
/// `matvec_a8_*`): `y = W x`.
pub const MATVEC_STORE: u32 = 0;
/// `mode`: `y = W x + add` (a bias).
pub const MATVEC_ADD: u32 = 1;
/// `mode`: `y += W x` (a residual; `add` unread).
pub const MATVEC_ACCUMULATE: u32 = 2;

/// Rows per warp of `matvec_q8p` (the planar Q8_0 LM head): their loads are in flight together.
pub const Q8P_ROWS: usize = 4;
/// Warps per block of `matvec_q8p`.
pub const Q8P_WARPS: usize = 8;
/// Blocks of `matvec_q8p` resident per SM (its launch bounds in host/build.rs cap its registers
/// for this many); its grid is this many per SM.
pub const Q8P_BLOCKS_PER_SM: usize = 2;

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

/// Warps of query rows per block of `attention_prefill_mma_f16` (16 rows each): a block takes
/// `16 · PREFILL_MMA_ROW_WARPS` query rows of one head.
pub const PREFILL_MMA_ROW_WARPS: usize = 4;
/// Warps per query-row warp of `attention_prefill_mma_f16` (1 or 2): each takes every
/// `PREFILL_MMA_KEY_SPLIT`-th key tile, and the partial softmax states are merged at the end.
pub const PREFILL_MMA_KEY_SPLIT: usize = 2;
/// Threads per block of `attention_prefill_mma_f16`.
pub const PREFILL_MMA_THREADS: usize = 32 * PREFILL_MMA_ROW_WARPS * PREFILL_MMA_KEY_SPLIT;

/// Keys per warp's tile of `attention_prefill_mma_f16` for `head_dim`: 64, or 32 above 64
/// (registers).
pub const fn prefill_mma_bn(head_dim: usize) -> usize {
    if head_dim > 64 { 32 } else { 64 }
}

/// Dynamic shared memory of `attention_prefill_mma_f16`, bytes: `k_s` and `v_s`, each
/// `[PREFILL_MMA_KEY_SPLIT · BN][head_dim + 8]` f16, and at least the merge of the key splits'
/// states (`[4 + head_dim / 2][32 · PREFILL_MMA_ROW_WARPS]` f32) that reuses them.
pub const fn prefill_mma_smem_bytes(head_dim: usize) -> usize {
    let tiles = 2 * PREFILL_MMA_KEY_SPLIT * prefill_mma_bn(head_dim) * (head_dim + 8) * 2;
    let merge = 4 * (4 + head_dim / 2) * 32 * PREFILL_MMA_ROW_WARPS;
    if PREFILL_MMA_KEY_SPLIT > 1 && merge > tiles {
        merge
    } else {
        tiles
    }
}

// Every head_dim's staged keys are a whole number of 16-byte chunks per thread (at most 6).
const _: () = {
    assert!(PREFILL_MMA_KEY_SPLIT == 1 || PREFILL_MMA_KEY_SPLIT == 2);
    let mut d = 32;
    while d <= 128 {
        let chunks = PREFILL_MMA_KEY_SPLIT * prefill_mma_bn(d) * d / 8;
        assert!(chunks.is_multiple_of(PREFILL_MMA_THREADS) && chunks / PREFILL_MMA_THREADS <= 6);
        assert!(prefill_mma_smem_bytes(d) <= 48 * 1024);
        d += 32;
    }
};

/// Threads per block of `attention_decode_*` (the same as every attention kernel).
pub const DECODE_THREADS: usize = 128;
/// Positions per split of decode attention: one per thread in the score phase.
pub const DECODE_CHUNK: usize = DECODE_THREADS;
/// Fewest positions per used split of decode attention (short contexts use fewer splits: each
/// used split costs its block's fixed latency and a share of the combine).
pub const DECODE_MIN_CHUNK: usize = 32;
/// Most query heads per KV head in decode attention.
pub const DECODE_MAX_GROUP: usize = 8;
/// Most used splits of decode attention whose partials the output projection combines itself
/// (`matvec_attn_*`, after an attention launched with this value as `defer`), with no
/// `attention_combine` launch in between (contexts up to `DECODE_DEFER_SPLITS · DECODE_MIN_CHUNK`
/// = 128 positions).
pub const DECODE_DEFER_SPLITS: usize = 4;

/// The split plan of decode attention for `n_kv` positions over a grid of `n_split` splits:
/// `(chunk, n_used)`, split `s` covering positions `s · chunk .. min((s + 1) · chunk, n_kv)` and
/// the first `n_used` splits holding any. Every kernel that reads the attention's partials plans
/// with this one function. `n_kv ≥ 1`, `n_split ≥ 1`.
pub const fn decode_plan(n_kv: u32, n_split: u32) -> (u32, u32) {
    let chunk = n_kv.div_ceil(n_split);
    let chunk = if chunk > DECODE_MIN_CHUNK as u32 {
        chunk
    } else {
        DECODE_MIN_CHUNK as u32
    };
    (chunk, n_kv.div_ceil(chunk))
}
/// Threads per block of `attention_combine`.
pub const COMBINE_THREADS: usize = 256;
/// Blocks of `attention_combine` per query head, each a quarter of the head's columns: every
/// block sums all the splits for its columns, so the per-thread loads are a quarter of what one
/// block per head would need.
pub const COMBINE_HEAD_BLOCKS: usize = 4;
/// Most splits one `attention_combine` thread sums (its loads all in flight together).
pub const COMBINE_MAX_PER: usize = 4;

/// Most splits of decode attention for `head_dim`: what `attention_combine` sums
/// (`COMBINE_MAX_PER` per lane of splits, `COMBINE_THREADS / (head_dim / 4 / COMBINE_HEAD_BLOCKS)`
/// lanes): 512, 256 and 128 for head_dim 32, 64 and 128. With at most `DECODE_CHUNK` positions per
/// split, the longest context is `DECODE_CHUNK` times this.
pub const fn decode_max_splits(head_dim: usize) -> usize {
    COMBINE_MAX_PER * COMBINE_THREADS * 4 * COMBINE_HEAD_BLOCKS / head_dim
}
/// Dynamic shared memory of `attention_combine`, bytes: the warps' maxima, `[warps][columns]`
/// sums (at most 32 columns per block, at head_dim 128) and the warps' denominators.
pub const COMBINE_SMEM_BYTES: usize = 4 * (COMBINE_THREADS / 32) * (2 + 128 / COMBINE_HEAD_BLOCKS);

/// Warps per decode block.
pub const DECODE_WARPS: usize = DECODE_THREADS / 32;

/// f32 offsets of the decode kernel's dynamic shared memory regions for `group` query heads of
/// `d` dims: `q_s [group][d]`, `kn_s [d]`, `vn_s [d]`, `sc [group][DECODE_CHUNK]`,
/// `red [DECODE_WARPS][group]`, `tot [2][group]`, `acc_s [DECODE_WARPS][group][d]`; the last
/// value is the total (the launcher's size, ×4 bytes).
pub const fn decode_smem_layout(group: usize, d: usize) -> [usize; 8] {
    let q_s = 0;
    let kn_s = q_s + group * d;
    let vn_s = kn_s + d;
    let sc = vn_s + d;
    let red = sc + group * DECODE_CHUNK;
    let tot = red + DECODE_WARPS * group;
    let acc_s = tot + 2 * group;
    let end = acc_s + DECODE_WARPS * group * d;
    [q_s, kn_s, vn_s, sc, red, tot, acc_s, end]
}

const _: () = assert!(4 * decode_smem_layout(DECODE_MAX_GROUP, 128)[7] <= 48 * 1024);

/// Warps per block of `swiglu_a8_*` (the FFN's gate/up on 8-bit activations).
pub const SWIGLU_A8_WARPS: usize = 16;
/// Rows per warp of `swiglu_a8_*`: a block computes `SWIGLU_A8_WARPS · SWIGLU_A8_ROWS_PER_WARP`
/// = 32 rows, one activation block of the down projection.
pub const SWIGLU_A8_ROWS_PER_WARP: usize = 2;
/// Rows per block of `swiglu_a8_*`.
pub const SWIGLU_A8_ROWS: usize = SWIGLU_A8_WARPS * SWIGLU_A8_ROWS_PER_WARP;
const _: () = assert!(SWIGLU_A8_ROWS == 32);

/// Shared memory that `gpu::stage` needs for `len` bytes at any alignment: the 16-byte words
/// covering them.
pub const fn stage_bytes(len: usize) -> usize {
    (len + 15).div_ceil(16) * 16
}

/// Dynamic shared memory of `swiglu_a8_*` for rows of `cols` elements, `row_bytes` bytes each,
/// bytes: when `staged`, the block's 32 gate rows and 32 up rows (each a contiguous, 64-byte
/// aligned run), then the quantized row (`cols` bytes), its `[d, s]` pairs (`cols / 32` of 8
/// bytes) and the block's 32 results (f32).
pub const fn swiglu_a8_smem_bytes(cols: usize, row_bytes: usize, staged: bool) -> usize {
    let slabs = if staged {
        2 * stage_bytes(SWIGLU_A8_ROWS * row_bytes)
    } else {
        0
    };
    slabs + cols + 8 * (cols / 32) + 4 * SWIGLU_A8_ROWS
}

/// Most dynamic shared memory a launch gets without opting in (48 KB); `swiglu_a8_*` stages its
/// weights when they fit under it.
pub const SMEM_DEFAULT_MAX: usize = 48 * 1024;

/// Most columns `swiglu_a8_*` takes (unstaged, its shared memory then stays under 48 KB).
pub const SWIGLU_A8_MAX_COLS: usize = 32768;
const _: () = assert!(swiglu_a8_smem_bytes(SWIGLU_A8_MAX_COLS, 0, false) <= SMEM_DEFAULT_MAX);

/// Threads per block of the samplers (`argmax_f32`, `sample_f32`).
pub const SAMPLE_THREADS: usize = 1024;
/// Largest `top_k` of `sample_f32` (one candidate per thread in its final scan).
pub const SAMPLE_MAX_TOP_K: usize = SAMPLE_THREADS;
/// Candidate slots of `sample_f32`'s final sort: every block's `top_k` candidates together (a
/// power of two, 8-byte keys in shared memory).
pub const SAMPLE_CAND: usize = 2048;
/// Most blocks of `sample_f32`.
pub const SAMPLE_MAX_BLOCKS: usize = 64;
/// Longest repetition-penalty window of `sample_f32` (its tokens are checked for repeats in
/// shared memory, one per thread).
pub const SAMPLE_MAX_HISTORY: usize = SAMPLE_THREADS;

/// Blocks of `sample_f32` for `n` logits and `top_k` (`1 ≤ top_k ≤ SAMPLE_MAX_TOP_K`): each block
/// selects the `top_k` largest of its share, and all of theirs must fit `SAMPLE_CAND`; at least
/// a thousand logits per block.
pub const fn sample_blocks(n: usize, top_k: usize) -> usize {
    let by_cand = SAMPLE_CAND / top_k;
    let by_n = n.div_ceil(SAMPLE_THREADS);
    let g = if by_cand < by_n { by_cand } else { by_n };
    let g = if g < SAMPLE_MAX_BLOCKS {
        g
    } else {
        SAMPLE_MAX_BLOCKS
    };
    if g < 1 { 1 } else { g }
}

const _: () = assert!(SAMPLE_CAND >= 2 * SAMPLE_MAX_TOP_K && SAMPLE_CAND.is_power_of_two());
