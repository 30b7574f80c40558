//! The merge loop of byte-level BPE, on token ids.
//!
//! A piece starts as one symbol per byte (the id of that byte's alphabet character). Then, while
//! some adjacent pair of symbols is a merge, the pair with the lowest rank (position in
//! `tokenizer.ggml.merges`) is replaced by the merged token, the leftmost first among equal ranks.
//! Since every merge's parts and result are vocabulary tokens (checked at load), working on ids
//! is the same as llama.cpp's and HF's work on strings.
//!
//! Short pieces (the usual word) use a flat scan per step; long ones (whitespace runs, long CJK
//! runs, repeated characters) a heap with a linked list, O(n log n). Both pick the same pair at
//! every step: `tests::scan_and_heap_agree`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// A symbol that is no token: a byte whose alphabet character is not in the vocabulary. It takes
/// part in no merge and is dropped from the output, as llama.cpp drops it.
pub const NO_TOKEN: u32 = u32::MAX;

/// Longest piece (in symbols) merged with the flat scan.
const SCAN_MAX: usize = 48;

/// `(left, right)` → `(rank, merged)`.
#[derive(Default)]
pub struct Merges {
    map: FxHashMap<u64, (u32, u32)>,
}

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

impl Merges {
    pub fn with_capacity(n: usize) -> Self {
        let mut map = FxHashMap::default();
        map.reserve(n);
        Merges { map }
    }

    /// Adds a merge; the first one given for a pair wins (its rank is the lower).
    pub fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.map.entry(key(left, right)).or_insert((rank, merged));
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[inline(always)]
    pub fn get(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        if left == NO_TOKEN || right == NO_TOKEN {
            return None;
        }
        self.map.get(&key(left, right)).copied()
    }

    /// Merges `syms` in place (see the module docs).
    pub fn apply(&self, syms: &mut Vec<u32>) {
        if syms.len() < 2 {
            return;
        }
        if syms.len() <= SCAN_MAX {
            self.apply_scan(syms)
        } else {
            self.apply_heap(syms)
        }
    }

    /// Flat scan: `ranks[i]` is the rank of the pair (i, i+1), `u32::MAX` if none.
    pub fn apply_scan(&self, syms: &mut Vec<u32>) {
        let mut ranks: Vec<(u32, u32)> = Vec::with_capacity(syms.len());
        for w in syms.windows(2) {
            ranks.push(self.get(w[0], w[1]).unwrap_or((u32::MAX, 0)));
        }
        loop {
            // The lowest rank, leftmost among equals.
            let mut best = u32::MAX;
            let mut at = usize::MAX;
            for (i, &(r, _)) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if at == usize::MAX {
                break;
            }
            syms[at] = ranks[at].1;
            syms.remove(at + 1);
            ranks.remove(at);
            if at < ranks.len() {
                ranks[at] = self.get(syms[at], syms[at + 1]).unwrap_or((u32::MAX, 0));
            }
            if at > 0 {
                ranks[at - 1] = self.get(syms[at - 1], syms[at]).unwrap_or((u32::MAX, 0));
            }
        }
    }

    /// Heap of candidate pairs ordered by (rank, left position), over a linked list of symbols.
    /// A popped candidate is stale when either side has changed since it was pushed.
    pub fn apply_heap(&self, syms: &mut Vec<u32>) {
        let n = syms.len();
        const NIL: u32 = u32::MAX;
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NIL;
        let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NIL;
        let mut alive = vec![true; n];
        // (rank, left, left id, right id)
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>> = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some((r, _)) = self.get(syms[i], syms[i + 1]) {
                heap.push(Reverse((r, i as u32, syms[i], syms[i + 1])));
            }
        }
        while let Some(Reverse((_, l, lid, rid))) = heap.pop() {
            let l = l as usize;
            let r = next[l];
            if !alive[l] || syms[l] != lid || r == NIL || syms[r as usize] != rid {
                continue;
            }
            let r = r as usize;
            let Some((_, merged)) = self.get(lid, rid) else {
                continue;
            };
            syms[l] = merged;
            alive[r] = false;
            next[l] = next[r];
            if next[r] != NIL {
                prev[next[r] as usize] = l as u32;
            }
            if prev[l] != NIL {
                let p = prev[l] as usize;
                if let Some((rk, _)) = self.get(syms[p], syms[l]) {
                    heap.push(Reverse((rk, p as u32, syms[p], syms[l])));
                }
            }
            if next[l] != NIL {
                let q = next[l] as usize;
                if let Some((rk, _)) = self.get(syms[l], syms[q]) {
                    heap.push(Reverse((rk, l as u32, syms[l], syms[q])));
                }
            }
        }
        let mut k = 0;
        for i in 0..n {
            if alive[i] {
                syms[k] = syms[i];
                k += 1;
            }
        }
        syms.truncate(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small vocabulary over ids 0..4 (single symbols) with merges building longer tokens, with
    /// overlapping and repeated pairs so that the order of merges matters.
    fn toy() -> Merges {
        let mut m = Merges::default();
        // ids: 0 a, 1 b, 2 c, 3 d; 10 aa, 11 ab, 12 ba, 13 aab, 14 aaaa, 15 bc, 16 abc, 17 cd
        let rules = [
            (0, 0, 10),
            (0, 1, 11),
            (1, 0, 12),
            (10, 1, 13),
            (10, 10, 14),
            (1, 2, 15),
            (11, 2, 16),
            (2, 3, 17),
            (14, 13, 18),
            (12, 12, 19),
            (17, 17, 20),
        ];
        for (rank, (a, b, c)) in rules.into_iter().enumerate() {
            m.insert(a, b, rank as u32, c);
        }
        m
    }

    proptest! {
        #[test]
        fn scan_and_heap_agree(word in prop::collection::vec(0u32..4, 0..120)) {
            let m = toy();
            let mut a = word.clone();
            let mut b = word.clone();
            if a.len() >= 2 {
                m.apply_scan(&mut a);
                m.apply_heap(&mut b);
            }
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn lowest_rank_then_leftmost() {
        let m = toy();
        // "aaa": (a,a) rank 0 at both positions; the leftmost goes first → [aa, a].
        let mut w = vec![0, 0, 0];
        m.apply(&mut w);
        assert_eq!(w, vec![10, 0]);
        // "aab": aa (rank 0) then (aa,b) rank 3 → aab.
        let mut w = vec![0, 0, 1];
        m.apply(&mut w);
        assert_eq!(w, vec![13]);
        // "abc": ab (rank 1) before bc (rank 5), then (ab,c) → abc.
        let mut w = vec![0, 1, 2];
        m.apply(&mut w);
        assert_eq!(w, vec![16]);
        // A byte with no token never merges.
        let mut w = vec![0, NO_TOKEN, 0];
        m.apply(&mut w);
        assert_eq!(w, vec![0, NO_TOKEN, 0]);
    }
}
