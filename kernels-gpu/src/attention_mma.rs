//! Causal prefill attention over the f16 KV cache on the tensor cores (reference:
//! `cpu::attention`; the CUDA-core kernel `attention_prefill_f16` in `attention.rs` computes the
//! same function and stays for the f32 cache).
//!
//! `attention_prefill_mma_f16`: grid = (ceil(n_tok / BM), n_head), BM = 16 ·
//! `PREFILL_MMA_ROW_WARPS` query rows of one head per block, block = `PREFILL_MMA_THREADS`
//! threads (`PREFILL_MMA_KEY_SPLIT` warps per 16 rows), dynamic shared memory =
//! `shapes::prefill_mma_smem_bytes(head_dim)`. Query `i` (of `n_tok`) sits at position `pos0 + i`
//! and attends to cache positions `0 ..= pos0 + i` of KV head `h / group`. Block `x` takes the
//! query tile `gridDim.x − 1 − x` (the longest first). Flash-attention style: each round stages
//! `PREFILL_MMA_KEY_SPLIT` key tiles of `BN = shapes::prefill_mma_bn(d)` positions through
//! registers into shared memory (`k_s`, `v_s`: `[SPLIT · BN][d + 8]` f16, rows padded so that
//! `ldmatrix` is free of bank conflicts), the next round's loads in flight while the current one
//! is computed; warp `w` owns rows `16 (w % ROW_WARPS) ..` and computes tile `w / ROW_WARPS` of
//! each round, keeping its rows' online softmax (log2 domain: Q is scaled by `scale · log2 e`,
//! probabilities by `ex2`) and output in registers; at the end the key splits' states are merged
//! (the maxima aligned, sums and accumulators added) through shared memory and split 0 writes.
//!
//! Arithmetic: `mma.sync.m16n8k16` with f16 operands and f32 accumulation, every operand split
//! in two f16 terms so that nothing is rounded to f16 precision: the cache's keys and values are
//! f16 already (exact operands); the scaled query `q = q_hi + q_lo` and each probability
//! `p = p_hi + p_lo` (`hi = f16(x)`, `lo = f16(x − hi)`, ≈ 2^-22 relative together) take two
//! products each, the f16 × f16 products are exact in f32 and accumulate in f32. So the scores
//! and the weighted sums carry about f32 accuracy (the property tests hold this kernel to the
//! CUDA-core kernel's 1e-4), at twice the tensor-core work of a plain f16 attention. The row
//! sums are of the f32 probabilities (each lane its columns, the row's 4 lanes added at the end);
//! `out = acc / sum` (IEEE division).
//!
//! Fragments (PTX ISA, `mma.m16n8k16` `.f16`): lane `l`, `g = l / 4`, `c = l % 4`; a warp's
//! accumulators hold rows `g` and `g + 8` at columns `8 j + 2 c, + 1`. The scores' accumulator
//! layout is the probabilities' A-operand layout, so `P` never leaves registers. The keys'
//! B operands come from `k_s` by `ldmatrix.x4` (rows = keys), the values' by `ldmatrix.x4.trans`
//! (rows = keys, transposed to dims).
//!
//! Limits: `head_dim` in {32, 64, 96, 128}; `pos0 + n_tok ≤ n_ctx`; `q`, `out` and the cache
//! 16-byte aligned (the launcher checks); sm_80 or later.

use crate::attention::{PrefillTile, prefill_tile};
use crate::gpu;
use crate::shapes::{
    PREFILL_MMA_KEY_SPLIT, PREFILL_MMA_ROW_WARPS, PREFILL_MMA_THREADS, prefill_mma_bn,
};
use core::arch::asm;

/// Threads per block.
const THREADS: usize = PREFILL_MMA_THREADS;
/// Warps that share a block's key tiles, each every `SPLIT`-th.
const SPLIT: usize = PREFILL_MMA_KEY_SPLIT;
/// Query rows per block (16 per row warp: one `m16` tile).
const BM: usize = 16 * PREFILL_MMA_ROW_WARPS;
/// Most k-steps of 16 dims (head_dim ≤ 128).
const MAX_KS: usize = 8;
/// Most n-tiles of 8 output dims (head_dim ≤ 128).
const MAX_DT: usize = 16;
/// Most n-tiles of 8 keys per key tile (BN ≤ 64).
const MAX_KT: usize = 8;
/// Most staged 16-byte chunks per thread per tile and matrix (`BN · d / 8 / THREADS`).
const MAX_CH: usize = 6;

/// `body` for `i = 0 .. N` (N = 2, 4, 8 or 16), written out: every index into the fragment arrays
/// is then a constant and the arrays stay in registers (LLVM does not unroll nests this large).
macro_rules! unroll {
    ($i:ident < 2 => $b:block) => {{
        { let $i: usize = 0; $b }
        { let $i: usize = 1; $b }
    }};
    ($i:ident < 4 => $b:block) => {{
        unroll!($i < 2 => $b);
        { let $i: usize = 2; $b }
        { let $i: usize = 3; $b }
    }};
    ($i:ident < 8 => $b:block) => {{
        unroll!($i < 4 => $b);
        { let $i: usize = 4; $b }
        { let $i: usize = 5; $b }
        { let $i: usize = 6; $b }
        { let $i: usize = 7; $b }
    }};
    ($i:ident < 16 => $b:block) => {{
        unroll!($i < 8 => $b);
        unroll!(__j < 8 => {
            let $i = __j + 8;
            $b
        });
    }};
}

/// `d = a · b + c`, one m16n8k16 tile (f16 × f16 → f32).
#[inline(always)]
fn mma(c: [f32; 4], a: [u32; 4], b0: u32, b1: u32) -> [f32; 4] {
    let (r0, r1, r2, r3): (u32, u32, u32, u32);
    // SAFETY: a register-only warp-wide instruction; every lane of the warp executes it (the
    // callers are warp-uniform).
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};",
            d0 = out(reg32) r0, d1 = out(reg32) r1, d2 = out(reg32) r2, d3 = out(reg32) r3,
            a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
            b0 = in(reg32) b0, b1 = in(reg32) b1,
            c0 = in(reg32) c[0].to_bits(), c1 = in(reg32) c[1].to_bits(),
            c2 = in(reg32) c[2].to_bits(), c3 = in(reg32) c[3].to_bits(),
            options(pure, nomem, nostack),
        );
    }
    [r0, r1, r2, r3].map(f32::from_bits)
}

/// Four 8×8 b16 matrices from shared memory (`ldmatrix.x4`), lane `l` giving the address of row
/// `l % 8` of matrix `l / 8`; `TRANS` transposes each.
///
/// # Safety
/// `addr` is a shared-space address of 16 readable, 16-byte aligned bytes; warp-uniform call.
#[inline(always)]
unsafe fn ldmatrix_x4<const TRANS: bool>(addr: u32) -> [u32; 4] {
    let (r0, r1, r2, r3): (u32, u32, u32, u32);
    // SAFETY: caller contract.
    unsafe {
        if TRANS {
            asm!(
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{r0}, {r1}, {r2}, {r3}}}, [{a}];",
                r0 = out(reg32) r0, r1 = out(reg32) r1, r2 = out(reg32) r2, r3 = out(reg32) r3,
                a = in(reg32) addr, options(readonly, nostack),
            );
        } else {
            asm!(
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{r0}, {r1}, {r2}, {r3}}}, [{a}];",
                r0 = out(reg32) r0, r1 = out(reg32) r1, r2 = out(reg32) r2, r3 = out(reg32) r3,
                a = in(reg32) addr, options(readonly, nostack),
            );
        }
    }
    [r0, r1, r2, r3]
}

/// `(x0, x1)` as two f16 pairs `(hi, lo)` with `x ≈ hi + lo` to ≈ 2^-22 relative: `hi = f16(x)`,
/// `lo = f16(x − hi)`; element 0 in the low half of each (the fragment order).
#[inline(always)]
fn split2(x0: f32, x1: f32) -> (u32, u32) {
    let (h0, h1) = (gpu::f32_to_f16(x0), gpu::f32_to_f16(x1));
    let hi = h0 as u32 | (h1 as u32) << 16;
    let (l0, l1) = (x0 - gpu::f16_to_f32(h0), x1 - gpu::f16_to_f32(h1));
    let lo: u32;
    // SAFETY: a pure conversion instruction (`cvt.rn.f16x2.f32 d, a, b`: a to the upper half).
    unsafe {
        asm!("cvt.rn.f16x2.f32 {d}, {a}, {b};", d = out(reg32) lo, a = in(reg32) l1.to_bits(),
             b = in(reg32) l0.to_bits(), options(pure, nomem, nostack));
    }
    (hi, lo)
}

/// The body for head dimension `D` and key tile `BN` (see the module header).
///
/// # Safety
/// Shapes as in the module header, validated by the launcher; dynamic shared memory of
/// `shapes::prefill_mma_smem_bytes(D)` bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn prefill_mma<const D: usize, const BN: usize>(
    q: *const f32,
    k_cache: *const u16,
    v_cache: *const u16,
    out: *mut f32,
    n_tok: u32,
    pos0: u32,
    n_ctx: u32,
    n_head: u32,
    group: u32,
    scale: f32,
) {
    let ks: usize = D / 16; // k-steps of Q·Kᵀ
    let dt: usize = D / 8; // n-tiles of output dims
    let kt_n: usize = BN / 8; // n-tiles of keys
    let c8: usize = D / 8; // 16-byte chunks per cache row
    let bn2: usize = SPLIT * BN; // keys staged per round: a tile for each key split
    let nch: usize = bn2 * c8 / THREADS; // staged chunks per thread and matrix
    let rs: usize = D + 8; // padded row stride of k_s and v_s (f16)

    let t = gpu::thread_x() as usize;
    let (w, l) = (t / 32, t % 32);
    // Query-row warp rw; key split sp takes the round's tile sp.
    let (rw, sp) = (w % PREFILL_MMA_ROW_WARPS, w / PREFILL_MMA_ROW_WARPS);
    let (g, c) = (l / 4, l % 4);
    let nh = n_head as usize;
    let PrefillTile { q0, h, kvh, n_q } = prefill_tile(BM, n_tok, group);
    let smem = gpu::dyn_smem::<u16>();
    // SAFETY: two [SPLIT · BN][D + 8] f16 arrays inside the launch's dynamic shared memory.
    let (k_s, v_s) = unsafe { (smem, smem.add(bn2 * rs)) };
    let (k_sa, v_sa) = (
        gpu::smem_addr(k_s as *const u8),
        gpu::smem_addr(v_s as *const u8),
    );

    // This warp's rows: ra = 16 rw + g and rb = ra + 8 of the tile; their positions.
    let (ra, rb) = (16 * rw + g, 16 * rw + g + 8);
    let base = pos0 as usize + q0;
    let (pa, pb) = (base + ra, base + rb);
    let warp_rows = (16 * rw) < n_q;
    // The warp's last visible key (its last real row's position).
    let warp_last = base + core::cmp::min(16 * rw + 15, n_q.saturating_sub(1));

    // The scaled query rows as A fragments, split hi / lo (rows past n_tok are zeros).
    let sl = scale * core::f32::consts::LOG2_E;
    let load_pair = |r: usize, col: usize| -> (f32, f32) {
        if r < n_q {
            // SAFETY: q0 + r < n_tok; col + 2 ≤ D; the row holds n_head · D floats; 8-byte
            // aligned (q 16-byte aligned, col even).
            let v = unsafe { *(q.add(((q0 + r) * nh + h) * D + col) as *const [f32; 2]) };
            (v[0] * sl, v[1] * sl)
        } else {
            (0.0, 0.0)
        }
    };
    let mut qh = [[0u32; 4]; MAX_KS];
    let mut ql = [[0u32; 4]; MAX_KS];
    unroll!(kk < 8 => {
        if kk < ks {
            let col = 16 * kk + 2 * c;
            let frag = [(ra, col), (rb, col), (ra, col + 8), (rb, col + 8)].map(|(r, cc)| {
                let (x0, x1) = load_pair(r, cc);
                split2(x0, x1)
            });
            qh[kk] = frag.map(|f| f.0);
            ql[kk] = frag.map(|f| f.1);
        }
    });

    let kbase = kvh * n_ctx as usize * D;
    let n_keys = base + n_q; // positions 0 .. n_keys are visible to some row of the block
    let n_rounds = n_keys.div_ceil(bn2);
    // Chunk i: key ch / c8, dims 8 (ch % c8) .. + 8, ch = t + THREADS · i.
    let stage = |kt: usize, src: *const u16| -> [u128; MAX_CH] {
        core::array::from_fn(|i| {
            let ch = t + THREADS * i;
            let (j, col) = (ch / c8, 8 * (ch % c8));
            if i < nch && kt + j < n_keys {
                // SAFETY: kt + j < n_keys ≤ n_ctx, col + 8 ≤ D: inside this head's cache; 16-byte
                // aligned (the cache and its rows are).
                unsafe { *(src.add(kbase + (kt + j) * D + col) as *const u128) }
            } else {
                // Past the last visible key: zeros (a cache slot may hold anything, even NaN).
                0
            }
        })
    };
    let mut rk = stage(0, k_cache);
    let mut rv = stage(0, v_cache);

    let mut acc = [[0.0f32; 4]; MAX_DT];
    let (mut ma, mut mb) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    let (mut la, mut lb) = (0.0f32, 0.0f32);
    for round in 0..n_rounds {
        let kt0 = round * bn2;
        gpu::sync_threads(); // the previous round's tiles are consumed
        for (i, (&k8, &v8)) in rk.iter().zip(&rv).enumerate() {
            if i < nch {
                let ch = t + THREADS * i;
                let (j, col) = (ch / c8, 8 * (ch % c8));
                // SAFETY: j < SPLIT · BN, col + 8 ≤ D: inside k_s / v_s; 16-byte aligned
                // (rs · 2 bytes is a multiple of 16).
                unsafe {
                    *(k_s.add(j * rs + col) as *mut u128) = k8;
                    *(v_s.add(j * rs + col) as *mut u128) = v8;
                }
            }
        }
        gpu::sync_threads();
        if round + 1 < n_rounds {
            // In flight while this round's tiles are computed.
            rk = stage(kt0 + bn2, k_cache);
            rv = stage(kt0 + bn2, v_cache);
        }
        // This warp's tile: keys kt .. kt + BN, rows sp · BN .. of k_s and v_s.
        let kt = kt0 + sp * BN;
        if !warp_rows || kt > warp_last {
            continue; // nothing of this tile is visible to the warp's rows (warp-uniform)
        }
        let (k_ta, v_ta) = (
            k_sa + (2 * sp * BN * rs) as u32,
            v_sa + (2 * sp * BN * rs) as u32,
        );

        // Scores S = Q Kᵀ (log2 domain): n-tile j holds keys kt + 8 j + 2 c, + 1.
        let mut s = [[0.0f32; 4]; MAX_KT];
        unroll!(j < 8 => {
            if j < kt_n {
                unroll!(kp < 4 => {
                    if kp < ks / 2 {
                        // Matrices m = 0..4: keys 8 j .. + 8 × dims 32 kp + 8 m (k-steps 2 kp,
                        // 2 kp + 1).
                        let (row, col) = (8 * j + l % 8, 32 * kp + 8 * (l / 8));
                        // SAFETY: row < BN, col + 8 ≤ D: inside k_s.
                        let b = unsafe {
                            ldmatrix_x4::<false>(k_ta + (2 * (row * rs + col)) as u32)
                        };
                        let mut sj = s[j];
                        sj = mma(sj, qh[2 * kp], b[0], b[1]);
                        sj = mma(sj, ql[2 * kp], b[0], b[1]);
                        sj = mma(sj, qh[2 * kp + 1], b[2], b[3]);
                        s[j] = mma(sj, ql[2 * kp + 1], b[2], b[3]);
                    }
                });
            }
        });

        // The causal mask where the tile reaches past the warp's first row.
        if kt + BN > base + 16 * rw + 1 {
            unroll!(j < 8 => {
                if j < kt_n {
                    let key = kt + 8 * j + 2 * c;
                    unroll!(e < 2 => {
                        if key + e > pa {
                            s[j][e] = f32::NEG_INFINITY;
                        }
                        if key + e > pb {
                            s[j][2 + e] = f32::NEG_INFINITY;
                        }
                    });
                }
            });
        }

        // Online softmax of rows ra (elements 0, 1) and rb (2, 3); a row's 4 lanes share it.
        let (mut ta, mut tb) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        unroll!(j < 8 => {
            if j < kt_n {
                ta = ta.max(s[j][0]).max(s[j][1]);
                tb = tb.max(s[j][2]).max(s[j][3]);
            }
        });
        ta = ta.max(gpu::shfl_xor(ta, 1));
        tb = tb.max(gpu::shfl_xor(tb, 1));
        ta = ta.max(gpu::shfl_xor(ta, 2));
        tb = tb.max(gpu::shfl_xor(tb, 2));
        // A row may have seen no visible key yet (a key split's first tiles can all lie past
        // it): its maximum stays −∞ and its probabilities and rescale 0 (shifted by 0, not
        // −∞, which would give NaN).
        let (na, nb) = (ma.max(ta), mb.max(tb));
        let fin = |m: f32| if m == f32::NEG_INFINITY { 0.0 } else { m };
        let (ua, ub) = (fin(na), fin(nb));
        let (aa, ab) = (gpu::ex2(ma - ua), gpu::ex2(mb - ub));
        (ma, mb) = (na, nb);
        let (mut sa, mut sb) = (0.0f32, 0.0f32);
        unroll!(j < 8 => {
            if j < kt_n {
                let sj = &mut s[j];
                sj[0] = gpu::ex2(sj[0] - ua);
                sj[1] = gpu::ex2(sj[1] - ua);
                sj[2] = gpu::ex2(sj[2] - ub);
                sj[3] = gpu::ex2(sj[3] - ub);
                sa += sj[0] + sj[1];
                sb += sj[2] + sj[3];
            }
        });
        la = la * aa + sa;
        lb = lb * ab + sb;
        unroll!(j < 16 => {
            if j < dt {
                let a = &mut acc[j];
                a[0] *= aa;
                a[1] *= aa;
                a[2] *= ab;
                a[3] *= ab;
            }
        });

        // acc += P V: k-step kk covers keys 16 kk .. + 16 (score n-tiles 2 kk, 2 kk + 1).
        unroll!(kk < 4 => {
            if kk < kt_n / 2 {
                let (s0, s1) = (s[2 * kk], s[2 * kk + 1]);
                let (h0, l0) = split2(s0[0], s0[1]);
                let (h1, l1) = split2(s0[2], s0[3]);
                let (h2, l2) = split2(s1[0], s1[1]);
                let (h3, l3) = split2(s1[2], s1[3]);
                let (ph, pl) = ([h0, h1, h2, h3], [l0, l1, l2, l3]);
                unroll!(jp < 8 => {
                    if jp < dt / 2 {
                        // Matrices m = 0..4: keys 16 kk + 8 (m % 2) .. + 8 × dims 16 jp +
                        // 8 (m / 2) (output n-tiles 2 jp, 2 jp + 1).
                        let row = 16 * kk + 8 * ((l / 8) % 2) + l % 8;
                        let col = 16 * jp + 8 * (l / 16);
                        // SAFETY: row < BN, col + 8 ≤ D: inside v_s.
                        let b = unsafe {
                            ldmatrix_x4::<true>(v_ta + (2 * (row * rs + col)) as u32)
                        };
                        let a = mma(acc[2 * jp], ph, b[0], b[1]);
                        acc[2 * jp] = mma(a, pl, b[0], b[1]);
                        let a = mma(acc[2 * jp + 1], ph, b[2], b[3]);
                        acc[2 * jp + 1] = mma(a, pl, b[2], b[3]);
                    }
                });
            }
        });
    }

    if SPLIT > 1 {
        // Key split 1 hands its rows' state (per lane: both maxima, its partial sums and its
        // accumulator columns) to split 0 through the tiles' shared memory, field-major.
        let buf = smem as *mut f32;
        let (slot, n_slots) = (32 * rw + l, 32 * PREFILL_MMA_ROW_WARPS);
        // SAFETY: field f < 4 + 4 dt, slot < n_slots: inside the merge buffer
        // (prefill_mma_smem_bytes).
        let at = |f: usize| unsafe { buf.add(f * n_slots + slot) };
        gpu::sync_threads(); // every warp is done with the tiles
        if sp == 1 && warp_rows {
            // SAFETY: as `at`; only this thread writes its slot.
            unsafe {
                *at(0) = ma;
                *at(1) = mb;
                *at(2) = la;
                *at(3) = lb;
                unroll!(j < 16 => {
                    if j < dt {
                        *at(4 + 4 * j) = acc[j][0];
                        *at(5 + 4 * j) = acc[j][1];
                        *at(6 + 4 * j) = acc[j][2];
                        *at(7 + 4 * j) = acc[j][3];
                    }
                });
            }
        }
        gpu::sync_threads();
        if sp == 1 || !warp_rows {
            return;
        }
        // SAFETY: as `at`; written by the partner lane before the barrier.
        let (m1a, m1b, l1a, l1b) = unsafe { (*at(0), *at(1), *at(2), *at(3)) };
        // Split 0 always holds key 0, so its maxima are finite; split 1's may be −∞ (no tile).
        let (na, nb) = (ma.max(m1a), mb.max(m1b));
        let (f0a, f0b) = (gpu::ex2(ma - na), gpu::ex2(mb - nb));
        let (f1a, f1b) = (gpu::ex2(m1a - na), gpu::ex2(m1b - nb));
        la = la * f0a + l1a * f1a;
        lb = lb * f0b + l1b * f1b;
        unroll!(j < 16 => {
            if j < dt {
                // SAFETY: as `at`.
                let o = unsafe { [*at(4 + 4 * j), *at(5 + 4 * j), *at(6 + 4 * j), *at(7 + 4 * j)] };
                let a = &mut acc[j];
                a[0] = a[0] * f0a + o[0] * f1a;
                a[1] = a[1] * f0a + o[1] * f1a;
                a[2] = a[2] * f0b + o[2] * f1b;
                a[3] = a[3] * f0b + o[3] * f1b;
            }
        });
    }
    if !warp_rows {
        return;
    }
    la += gpu::shfl_xor(la, 1);
    lb += gpu::shfl_xor(lb, 1);
    la += gpu::shfl_xor(la, 2);
    lb += gpu::shfl_xor(lb, 2);
    let (ia, ib) = (1.0 / la, 1.0 / lb);
    unroll!(j < 16 => {
        if j < dt {
            let (a, col) = (acc[j], 8 * j + 2 * c);
            let at = |r: usize| ((q0 + r) * nh + h) * D + col;
            // SAFETY: q0 + r < n_tok for r < n_q, col + 2 ≤ D; 8-byte aligned.
            unsafe {
                if ra < n_q {
                    *(out.add(at(ra)) as *mut [f32; 2]) = [a[0] * ia, a[1] * ia];
                }
                if rb < n_q {
                    *(out.add(at(rb)) as *mut [f32; 2]) = [a[2] * ib, a[3] * ib];
                }
            }
        }
    });
}

/// # Safety
/// Shapes as in the module header, validated by the launcher; dynamic shared memory of
/// `shapes::prefill_mma_smem_bytes(head_dim)` bytes.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn attention_prefill_mma_f16(
    q: *const f32,
    k_cache: *const u16,
    v_cache: *const u16,
    out: *mut f32,
    n_tok: u32,
    pos0: u32,
    n_ctx: u32,
    n_head: u32,
    head_dim: u32,
    group: u32,
    scale: f32,
) {
    let a = (q, k_cache, v_cache, out);
    let b = (n_tok, pos0, n_ctx, n_head, group, scale);
    // SAFETY: forwarded contract; each arm's smem size is prefill_mma_smem_bytes(head_dim).
    unsafe {
        match head_dim {
            32 => prefill_mma::<32, { prefill_mma_bn(32) }>(
                a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3, b.4, b.5,
            ),
            64 => prefill_mma::<64, { prefill_mma_bn(64) }>(
                a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3, b.4, b.5,
            ),
            96 => prefill_mma::<96, { prefill_mma_bn(96) }>(
                a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3, b.4, b.5,
            ),
            _ => prefill_mma::<128, { prefill_mma_bn(128) }>(
                a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3, b.4, b.5,
            ),
        }
    }
}
