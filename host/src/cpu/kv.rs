//! The CPU backend's KV cache: per layer, one `[position][n_head_kv * head_dim]` array of keys
//! and one of values, stored in f32 or f16 ([`KvPrecision`]), grown as positions are filled.
//!
//! The f16 cache rounds each key and value to nearest, ties to even (IEEE 754 `roundTiesToEven`,
//! overflow to ±infinity): the rounding of the GPU's `kv_append_f16` kernel (`cvt.rn.f16.f32`),
//! so a CPU run with an f16 cache is the reference for a GPU run with one. Attention reads the
//! values back as f32 (exact): before a layer's attention its filled positions are converted into
//! one f32 scratch pair shared by all layers, and the f32 attention runs on that. The stored cache
//! is half the f32 cache's size; the scratch adds one layer's f32 keys and values.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Precision of the keys and values a KV cache stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// f32: the computed values, unrounded (the reference).
    #[default]
    F32,
    /// f16, rounded to nearest even as the GPU's f16 cache rounds them: half the memory.
    F16,
}

impl KvPrecision {
    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F32 => 4,
            KvPrecision::F16 => 2,
        }
    }
}

enum Layers {
    F32 {
        k: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        /// Tests only: store the values rounded to f16 (the f32 path fed what the f16 cache
        /// holds, to show that rounding is the only difference between the two).
        #[cfg(test)]
        round: bool,
    },
    F16 {
        k: Vec<Vec<f16>>,
        v: Vec<Vec<f16>>,
        /// The f32 copies the attention reads (one layer at a time).
        k32: Vec<f32>,
        v32: Vec<f32>,
    },
}

/// Keys and values of every layer, one row of `kv_dim` values per position.
pub(crate) struct KvCache {
    kv_dim: usize,
    layers: Layers,
}

/// Converting more elements than this is split over the thread pool.
const PAR_CONVERT: usize = 1 << 16;

fn to_f32(src: &[f16], dst: &mut Vec<f32>) {
    dst.resize(src.len(), 0.0);
    if src.len() < PAR_CONVERT {
        src.convert_to_f32_slice(dst);
    } else {
        dst.par_chunks_mut(PAR_CONVERT / 4)
            .zip(src.par_chunks(PAR_CONVERT / 4))
            .for_each(|(d, s)| s.convert_to_f32_slice(d));
    }
}

impl KvCache {
    pub(crate) fn new(precision: KvPrecision, n_layer: usize, kv_dim: usize) -> Self {
        let layers = match precision {
            KvPrecision::F32 => Layers::F32 {
                k: vec![Vec::new(); n_layer],
                v: vec![Vec::new(); n_layer],
                #[cfg(test)]
                round: false,
            },
            KvPrecision::F16 => Layers::F16 {
                k: vec![Vec::new(); n_layer],
                v: vec![Vec::new(); n_layer],
                k32: Vec::new(),
                v32: Vec::new(),
            },
        };
        KvCache { kv_dim, layers }
    }

    pub(crate) fn precision(&self) -> KvPrecision {
        match self.layers {
            Layers::F32 { .. } => KvPrecision::F32,
            Layers::F16 { .. } => KvPrecision::F16,
        }
    }

    /// Keeps positions `0 .. pos` of `layer` and writes the rows of `k` and `v` (whole rows of
    /// `kv_dim`, the same number) after them, rounded to the cache's precision.
    pub(crate) fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let kd = self.kv_dim;
        assert!(
            k.len() == v.len() && k.len().is_multiple_of(kd),
            "kv store: k {} / v {} are not the same whole rows of {kd}",
            k.len(),
            v.len()
        );
        match &mut self.layers {
            Layers::F32 {
                k: kc,
                v: vc,
                #[cfg(test)]
                round,
            } => {
                for (c, x) in [(&mut kc[layer], k), (&mut vc[layer], v)] {
                    assert!(
                        c.len() >= pos * kd,
                        "kv store: position {pos} is not filled"
                    );
                    c.truncate(pos * kd);
                    #[cfg(test)]
                    if *round {
                        c.extend(x.iter().map(|&x| f16::from_f32(x).to_f32()));
                        continue;
                    }
                    c.extend_from_slice(x);
                }
            }
            Layers::F16 { k: kc, v: vc, .. } => {
                for (c, x) in [(&mut kc[layer], k), (&mut vc[layer], v)] {
                    assert!(
                        c.len() >= pos * kd,
                        "kv store: position {pos} is not filled"
                    );
                    c.truncate(pos * kd);
                    c.resize(pos * kd + x.len(), f16::ZERO);
                    c[pos * kd..].convert_from_f32_slice(x);
                }
            }
        }
    }

    /// Keys and values of positions `0 .. n` of `layer`, as f32 (`n * kv_dim` each).
    pub(crate) fn load(&mut self, layer: usize, n: usize) -> (&[f32], &[f32]) {
        let len = n * self.kv_dim;
        match &mut self.layers {
            Layers::F32 { k, v, .. } => (&k[layer][..len], &v[layer][..len]),
            Layers::F16 { k, v, k32, v32 } => {
                let (k, v) = (&k[layer][..len], &v[layer][..len]);
                rayon::join(|| to_f32(k, k32), || to_f32(v, v32));
                (&k32[..], &v32[..])
            }
        }
    }

    /// Bytes of keys and values stored (every layer's filled positions; not the f16 cache's
    /// one-layer f32 scratch).
    pub(crate) fn bytes(&self) -> usize {
        fn elems<T>(c: &[Vec<T>]) -> usize {
            c.iter().map(Vec::len).sum()
        }
        match &self.layers {
            Layers::F32 { k, v, .. } => 4 * (elems(k) + elems(v)),
            Layers::F16 { k, v, .. } => 2 * (elems(k) + elems(v)),
        }
    }

    pub(crate) fn clear(&mut self) {
        match &mut self.layers {
            Layers::F32 { k, v, .. } => k.iter_mut().chain(v).for_each(Vec::clear),
            Layers::F16 { k, v, k32, v32 } => {
                k.iter_mut().chain(v).for_each(Vec::clear);
                k32.clear();
                v32.clear();
            }
        }
    }
}

#[cfg(test)]
impl KvCache {
    /// An f32 cache that stores every value rounded to f16 (what the f16 cache holds, in f32).
    pub(crate) fn f32_rounded_to_f16(n_layer: usize, kv_dim: usize) -> Self {
        let mut c = KvCache::new(KvPrecision::F32, n_layer, kv_dim);
        if let Layers::F32 { round, .. } = &mut c.layers {
            *round = true;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Round to nearest f16, ties to even, overflow to infinity, computed from the definition:
    /// the positive finite f16 values in increasing order are the bit patterns 0 ..= 0x7BFF, so
    /// the two neighbours of |x| are found by binary search on their exact (f64) values.
    fn round_ties_even(x: f32) -> f16 {
        let a = (x as f64).abs();
        let val = |b: u16| f16::from_bits(b).to_f64();
        let max = val(0x7BFF);
        let bits = if a >= max + (max - val(0x7BFE)) / 2.0 {
            // At or past the midpoint between the largest finite value and the next step
            // (65520): the tie goes to the even significand, which is infinity.
            0x7C00
        } else if a >= max {
            0x7BFF
        } else {
            // Largest `lo` with val(lo) <= a.
            let (mut lo, mut hi) = (0u16, 0x7BFF);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if val(mid) <= a { lo = mid } else { hi = mid }
            }
            let (dl, dh) = (a - val(lo), val(hi) - a);
            if dl < dh || (dl == dh && lo % 2 == 0) {
                lo
            } else {
                hi
            }
        };
        f16::from_bits(bits | if x.is_sign_negative() { 0x8000 } else { 0 })
    }

    fn any_finite() -> impl Strategy<Value = f32> {
        prop_oneof![
            // Any finite bit pattern (most are far outside f16's range: zero or infinity).
            any::<u32>()
                .prop_map(f32::from_bits)
                .prop_filter("finite", |x| x.is_finite()),
            // The range keys and values live in.
            -300.0f32..300.0,
            // f16's subnormal range.
            -1e-4f32..1e-4,
            // Exact midpoints between adjacent f16 values (representable in f32), both signs.
            (0u16..0x7BFF, any::<bool>()).prop_map(|(b, neg)| {
                let m =
                    ((f16::from_bits(b).to_f64() + f16::from_bits(b + 1).to_f64()) / 2.0) as f32;
                if neg { -m } else { m }
            }),
            // Around the overflow threshold.
            65400.0f32..65600.0,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The cache's rounding (half's slice conversion, F16C where the CPU has it) is IEEE
        /// round-to-nearest-even, as the GPU's `cvt.rn.f16.f32`.
        #[test]
        fn f16_store_rounds_to_nearest_even(xs in proptest::collection::vec(any_finite(), 1..40)) {
            let mut c = KvCache::new(KvPrecision::F16, 1, xs.len());
            c.store(0, 0, &xs, &xs);
            let (k, v) = c.load(0, 1);
            for ((&x, &got), &gv) in xs.iter().zip(k).zip(v) {
                let want = round_ties_even(x).to_f32();
                prop_assert_eq!(got.to_bits(), want.to_bits(), "x = {:e} ({:#010x})", x, x.to_bits());
                prop_assert_eq!(gv.to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn rounding_reference_knows_the_edges() {
        // Ties to even: 1 + 2^-11 lies between 1 and 1 + 2^-10 and goes to 1 (even).
        assert_eq!(round_ties_even(1.0 + 2f32.powi(-11)).to_f32(), 1.0);
        // 1 + 3·2^-11 lies between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
        assert_eq!(
            round_ties_even(1.0 + 3.0 * 2f32.powi(-11)).to_f32(),
            1.0 + 2f32.powi(-9)
        );
        assert_eq!(round_ties_even(65519.0).to_f32(), 65504.0);
        assert_eq!(round_ties_even(65520.0).to_f32(), f32::INFINITY);
        assert_eq!(round_ties_even(-65520.0).to_f32(), f32::NEG_INFINITY);
        // Smallest subnormal 2^-24; half of it ties to zero (even), a bit more rounds up.
        assert_eq!(round_ties_even(2f32.powi(-25)).to_f32(), 0.0);
        assert_eq!(
            round_ties_even(2f32.powi(-25) * 1.5).to_f32(),
            2f32.powi(-24)
        );
        assert!(round_ties_even(-0.0).is_sign_negative());
    }

    /// A random schedule of stores (with rewinds) into an f16 cache and into an f32 cache fed
    /// the same values rounded to f16: every load is bit-identical, and the f16 cache holds
    /// half the bytes.
    #[test]
    fn f16_cache_equals_f32_cache_of_rounded_values() {
        let (n_layer, kv_dim) = (3, 24);
        let mut c16 = KvCache::new(KvPrecision::F16, n_layer, kv_dim);
        let mut c32 = KvCache::new(KvPrecision::F32, n_layer, kv_dim);
        let mut rc = KvCache::f32_rounded_to_f16(n_layer, kv_dim);
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut filled = [0usize; 3];
        let mut saw_difference = false;
        for step in 0..200 {
            let layer = next() as usize % n_layer;
            let pos = if step % 5 == 4 {
                next() as usize % (filled[layer] + 1)
            } else {
                filled[layer]
            };
            let n = 1 + next() as usize % 9;
            let vals: Vec<f32> = (0..2 * n * kv_dim)
                .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0)
                .collect();
            let (k, v) = vals.split_at(n * kv_dim);
            let rounded: Vec<f32> = vals.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
            let (kr, vr) = rounded.split_at(n * kv_dim);
            c16.store(layer, pos, k, v);
            c32.store(layer, pos, kr, vr);
            rc.store(layer, pos, k, v);
            filled[layer] = pos + n;
            for (l, &f) in filled.iter().enumerate() {
                let (a, b) = c16.load(l, f);
                let (a, b) = (a.to_vec(), b.to_vec());
                let (c, d) = c32.load(l, f);
                assert!(
                    a.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "step {step} layer {l} keys"
                );
                assert!(
                    b.iter().zip(d).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "step {step} layer {l} values"
                );
                let (e, g) = rc.load(l, f);
                assert!(a.iter().zip(e).all(|(x, y)| x.to_bits() == y.to_bits()));
                assert!(b.iter().zip(g).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
            saw_difference |= k.iter().zip(kr).any(|(a, b)| a != b);
            assert_eq!(2 * c16.bytes(), c32.bytes());
            assert_eq!(c32.bytes(), 4 * 2 * kv_dim * filled.iter().sum::<usize>());
        }
        assert!(saw_difference, "the values must not all be exact in f16");
        c16.clear();
        assert_eq!(c16.bytes(), 0);
        assert_eq!(c16.precision(), KvPrecision::F16);
    }
}
