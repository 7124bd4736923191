//! Merkle trees of the transparency log (`specs/transparency.md` §1–§5).
//!
//! * [`DirTree`]: the directory, leaves `(key, value_hash)` sorted by key bytes, hashed as an
//!   RFC 6962 tree (split at the largest power of two below the size) with the `dir-*`
//!   labels; [`DirTree::prove`] gives presence and absence proofs ([`DirProof`]) that
//!   [`verify_dir`] checks.
//! * [`LogTree`]: the append-only head log, an RFC 9162 tree over leaf hashes already made
//!   by [`log_leaf_hash`]; inclusion and consistency proofs per RFC 9162 §2.1.3 and §2.1.4
//!   with the `log-*` labels in place of the `0x00` / `0x01` prefixes.
//!
//! Both trees keep every level of complete, aligned subtrees, so a subtree hash costs
//! O(log n), a proof O(log² n) at worst, `LogTree::push` O(1) amortised and
//! `DirTree::build` O(n log n) (the sort).
//!
//! Verifiers take untrusted proofs straight off the wire and never panic: every malformed
//! proof is a [`ProofError`]. Provers panic on out-of-range arguments (a caller bug).

use serde::{Deserialize, Serialize};

use super::{DirEntry, EpochLeaf, Hash, PROOF_HASHES_MAX};

pub use crate::limits::DIR_KEY_MAX;

pub const LABEL_DIR_ENTRY: &str = "nymstr/v1/kt/dir-entry";
pub const LABEL_DIR_LEAF: &str = "nymstr/v1/kt/dir-leaf";
pub const LABEL_DIR_NODE: &str = "nymstr/v1/kt/dir-node";
pub const LABEL_DIR_EMPTY: &str = "nymstr/v1/kt/dir-empty";
pub const LABEL_LOG_LEAF: &str = "nymstr/v1/kt/log-leaf";
pub const LABEL_LOG_NODE: &str = "nymstr/v1/kt/log-node";
pub const LABEL_LOG_EMPTY: &str = "nymstr/v1/kt/log-empty";

/// `blake3` in key-derivation mode: context `label`, key material the concatenated parts.
pub fn hash(label: &str, parts: &[&[u8]]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(label);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// `hash(LABEL_DIR_ENTRY, codec(entry))`.
pub fn entry_hash(entry: &DirEntry) -> Hash {
    hash(LABEL_DIR_ENTRY, &[&crate::codec::encode(entry)])
}

/// `hash(LABEL_LOG_LEAF, codec(leaf))`.
pub fn log_leaf_hash(leaf: &EpochLeaf) -> Hash {
    hash(LABEL_LOG_LEAF, &[&crate::codec::encode(leaf)])
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("proof does not lead to the root")]
    RootMismatch,
    #[error("proof has the wrong shape: {0}")]
    Shape(&'static str),
    #[error("absence proof neighbours do not bracket the key")]
    NotBracketing,
}

/// One neighbour in an absence proof: a present leaf with its inclusion path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub value_hash: Hash,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, PROOF_HASHES_MAX>")]
    pub path: Vec<Hash>,
}

/// Proof that a key is, or is not, in a directory tree of known root and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirProof {
    /// The key's leaf is at `index`; `path` is its audit path (leaf to root).
    Present {
        index: u64,
        #[serde(deserialize_with = "crate::bounded::vec::<_, _, PROOF_HASHES_MAX>")]
        path: Vec<Hash>,
    },
    /// The tree is empty.
    AbsentEmpty,
    /// The key sorts before the first leaf (index 0).
    AbsentBefore(Neighbour),
    /// The key sorts after the last leaf (index size-1).
    AbsentAfter(Neighbour),
    /// The key sorts between two adjacent leaves (indices i and i+1).
    AbsentBetween(Neighbour, Neighbour),
}

/// `hash(LABEL_DIR_LEAF, u16_le(key.len()) || key || value_hash)`: the length prefix makes
/// the encoding injective. `None` if `key` is longer than [`DIR_KEY_MAX`].
pub fn dir_leaf_hash(key: &[u8], value_hash: &Hash) -> Option<Hash> {
    let len = u16::try_from(key.len()).ok()?;
    Some(hash(LABEL_DIR_LEAF, &[&len.to_le_bytes(), key, value_hash]))
}

/// Root of the empty directory tree: `hash(LABEL_DIR_EMPTY, [])`.
pub fn dir_empty_root() -> Hash {
    hash(LABEL_DIR_EMPTY, &[])
}

/// Root of the empty head log: `hash(LABEL_LOG_EMPTY, [])`.
pub fn log_empty_root() -> Hash {
    hash(LABEL_LOG_EMPTY, &[])
}

fn dir_node(l: &Hash, r: &Hash) -> Hash {
    hash(LABEL_DIR_NODE, &[l, r])
}

fn log_node(l: &Hash, r: &Hash) -> Hash {
    hash(LABEL_LOG_NODE, &[l, r])
}

/// Largest power of two strictly below `n` (`n ≥ 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

fn to_usize(x: u64) -> usize {
    usize::try_from(x).expect("merkle: index exceeds the address space")
}

/// Every level of complete, aligned subtrees: `levels[h][j]` is the hash of leaves
/// `j·2^h .. (j+1)·2^h`. Level 0 holds the leaf hashes.
#[derive(Clone, Debug, Default)]
struct Levels {
    levels: Vec<Vec<Hash>>,
}

impl Levels {
    fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    fn push(&mut self, leaf: Hash, node: fn(&Hash, &Hash) -> Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut h = 0;
        while self.levels[h].len().is_multiple_of(2) {
            let n = self.levels[h].len();
            let parent = node(&self.levels[h][n - 2], &self.levels[h][n - 1]);
            if self.levels.len() == h + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[h + 1].push(parent);
            h += 1;
        }
    }

    fn from_leaves(leaves: Vec<Hash>, node: fn(&Hash, &Hash) -> Hash) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() >= 2) {
            let prev = levels.last().expect("non-empty");
            let next: Vec<Hash> = prev.chunks_exact(2).map(|c| node(&c[0], &c[1])).collect();
            levels.push(next);
        }
        Levels { levels }
    }

    /// MTH of leaves `lo..hi` (`lo < hi ≤ len`), RFC 6962 shape.
    fn mth(&self, lo: u64, hi: u64, node: fn(&Hash, &Hash) -> Hash) -> Hash {
        let n = hi - lo;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            return self.levels[n.trailing_zeros() as usize][to_usize(lo / n)];
        }
        let k = split(n);
        node(&self.mth(lo, lo + k, node), &self.mth(lo + k, hi, node))
    }

    fn root(&self, size: u64, node: fn(&Hash, &Hash) -> Hash, empty: fn() -> Hash) -> Hash {
        if size == 0 { empty() } else { self.mth(0, size, node) }
    }

    /// RFC 6962 PATH(m, D[0:size]), leaf to root.
    fn path(&self, m: u64, size: u64, node: fn(&Hash, &Hash) -> Hash) -> Vec<Hash> {
        let (mut lo, mut hi) = (0u64, size);
        let mut top_down = Vec::new();
        while hi - lo > 1 {
            let k = split(hi - lo);
            if m < lo + k {
                top_down.push(self.mth(lo + k, hi, node));
                hi = lo + k;
            } else {
                top_down.push(self.mth(lo, lo + k, node));
                lo += k;
            }
        }
        top_down.reverse();
        top_down
    }

    /// RFC 6962 PROOF(m, D[0:n]) (`0 < m < n`).
    fn consistency(&self, m: u64, n: u64, node: fn(&Hash, &Hash) -> Hash) -> Vec<Hash> {
        let (mut lo, mut hi) = (0u64, n);
        let mut complete = true;
        let mut outer = Vec::new();
        loop {
            if m == hi {
                let mut proof = if complete { Vec::new() } else { vec![self.mth(lo, hi, node)] };
                outer.reverse();
                proof.extend(outer);
                return proof;
            }
            let k = split(hi - lo);
            if m - lo <= k {
                outer.push(self.mth(lo + k, hi, node));
                hi = lo + k;
            } else {
                outer.push(self.mth(lo, lo + k, node));
                lo += k;
                complete = false;
            }
        }
    }
}

/// RFC 9162 §2.1.3.2: the root `path` leads to from `leaf` at `index` in a tree of `size`.
fn root_from_path(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    node: fn(&Hash, &Hash) -> Hash,
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::Shape("leaf index not below tree size"));
    }
    if path.len() > PROOF_HASHES_MAX {
        return Err(ProofError::Shape("path too long"));
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return Err(ProofError::Shape("path too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Shape("path too short"));
    }
    Ok(r)
}

/// The directory: leaves `(key, value_hash)` sorted by key bytes, hashed as an RFC 6962
/// tree. Keeps every level so proofs cost O(log n).
#[derive(Clone, Debug, Default)]
pub struct DirTree {
    keys: Vec<Vec<u8>>,
    values: Vec<Hash>,
    levels: Levels,
}

impl DirTree {
    /// Builds from leaves in any order; duplicate keys are an error of the caller (last wins).
    ///
    /// # Panics
    /// If a key is longer than [`DIR_KEY_MAX`] bytes.
    pub fn build(mut leaves: Vec<(Vec<u8>, Hash)>) -> Self {
        // Stable: among equal keys the input order survives, so the last one is last.
        leaves.sort_by(|a, b| a.0.cmp(&b.0));
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(leaves.len());
        let mut values: Vec<Hash> = Vec::with_capacity(leaves.len());
        for (k, v) in leaves {
            if keys.last() == Some(&k) {
                *values.last_mut().expect("parallel vectors") = v;
            } else {
                keys.push(k);
                values.push(v);
            }
        }
        let hashes = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| dir_leaf_hash(k, v).expect("directory key longer than DIR_KEY_MAX"))
            .collect();
        DirTree { keys, values, levels: Levels::from_leaves(hashes, dir_node) }
    }
    pub fn len(&self) -> u64 {
        self.keys.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn root(&self) -> Hash {
        self.levels.root(self.len(), dir_node, dir_empty_root)
    }
    /// The value hash under `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<Hash> {
        self.keys.binary_search_by(|k| k.as_slice().cmp(key)).ok().map(|i| self.values[i])
    }
    /// The leaves in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Hash)> {
        self.keys.iter().map(Vec::as_slice).zip(&self.values)
    }
    /// Audit path (leaf to root) of the leaf at `index`.
    ///
    /// # Panics
    /// If `index ≥ len`.
    pub fn inclusion_path(&self, index: u64) -> Vec<Hash> {
        assert!(index < self.len(), "DirTree::inclusion_path: index {index} out of range");
        self.levels.path(index, self.len(), dir_node)
    }
    fn neighbour(&self, i: usize) -> Neighbour {
        Neighbour {
            index: i as u64,
            key: self.keys[i].clone(),
            value_hash: self.values[i],
            path: self.inclusion_path(i as u64),
        }
    }
    pub fn prove(&self, key: &[u8]) -> DirProof {
        let n = self.keys.len();
        match self.keys.binary_search_by(|k| k.as_slice().cmp(key)) {
            Ok(i) => DirProof::Present { index: i as u64, path: self.inclusion_path(i as u64) },
            Err(_) if n == 0 => DirProof::AbsentEmpty,
            Err(0) => DirProof::AbsentBefore(self.neighbour(0)),
            Err(i) if i == n => DirProof::AbsentAfter(self.neighbour(n - 1)),
            Err(i) => DirProof::AbsentBetween(self.neighbour(i - 1), self.neighbour(i)),
        }
    }
}

/// Checks that `(key, value_hash)` is leaf `index` of the directory tree `(root, size)`.
fn verify_dir_leaf(
    root: &Hash,
    size: u64,
    key: &[u8],
    value_hash: &Hash,
    index: u64,
    path: &[Hash],
) -> Result<(), ProofError> {
    let leaf = dir_leaf_hash(key, value_hash).ok_or(ProofError::Shape("key too long"))?;
    if root_from_path(&leaf, index, size, path, dir_node)? == *root { Ok(()) } else { Err(ProofError::RootMismatch) }
}

fn verify_neighbour(root: &Hash, size: u64, n: &Neighbour) -> Result<(), ProofError> {
    verify_dir_leaf(root, size, &n.key, &n.value_hash, n.index, &n.path)
}

/// Checks `proof` for `key` against `(root, size)`. `value_hash` is `Some` to check
/// presence of exactly that value, `None` to check absence.
pub fn verify_dir(
    root: &Hash,
    size: u64,
    key: &[u8],
    value_hash: Option<&Hash>,
    proof: &DirProof,
) -> Result<(), ProofError> {
    match (value_hash, proof) {
        (Some(v), DirProof::Present { index, path }) => verify_dir_leaf(root, size, key, v, *index, path),
        (Some(_), _) => Err(ProofError::Shape("absence proof offered for presence")),
        (None, DirProof::Present { .. }) => Err(ProofError::Shape("presence proof offered for absence")),
        (None, DirProof::AbsentEmpty) => {
            if size != 0 {
                Err(ProofError::Shape("empty-tree proof for a non-empty tree"))
            } else if *root != dir_empty_root() {
                Err(ProofError::RootMismatch)
            } else {
                Ok(())
            }
        }
        (None, DirProof::AbsentBefore(n)) => {
            if n.index != 0 {
                return Err(ProofError::Shape("before-neighbour is not leaf 0"));
            }
            if key >= n.key.as_slice() {
                return Err(ProofError::NotBracketing);
            }
            verify_neighbour(root, size, n)
        }
        (None, DirProof::AbsentAfter(n)) => {
            if size == 0 || n.index != size - 1 {
                return Err(ProofError::Shape("after-neighbour is not the last leaf"));
            }
            if key <= n.key.as_slice() {
                return Err(ProofError::NotBracketing);
            }
            verify_neighbour(root, size, n)
        }
        (None, DirProof::AbsentBetween(l, r)) => {
            if l.index.checked_add(1) != Some(r.index) {
                return Err(ProofError::Shape("neighbours are not adjacent"));
            }
            if !(l.key.as_slice() < key && key < r.key.as_slice()) {
                return Err(ProofError::NotBracketing);
            }
            verify_neighbour(root, size, l)?;
            verify_neighbour(root, size, r)
        }
    }
}

/// The append-only head log: an RFC 6962 / RFC 9162 Merkle tree over leaf hashes.
#[derive(Clone, Debug, Default)]
pub struct LogTree {
    levels: Levels,
}

impl LogTree {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a leaf hash (from [`log_leaf_hash`]; it is not hashed again). O(1) amortised.
    pub fn push(&mut self, leaf_hash: Hash) {
        self.levels.push(leaf_hash, log_node);
    }
    pub fn len(&self) -> u64 {
        self.levels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The leaf hash at `index`, if any.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = usize::try_from(index).ok()?;
        self.levels.levels.first()?.get(i).copied()
    }
    /// Root of the first `size` leaves (`size` ≤ len). O(log n).
    ///
    /// # Panics
    /// If `size > len`.
    pub fn root_at(&self, size: u64) -> Hash {
        assert!(size <= self.len(), "LogTree::root_at: size {size} > len {}", self.len());
        self.levels.root(size, log_node, log_empty_root)
    }
    /// Root of the whole log.
    pub fn root(&self) -> Hash {
        self.root_at(self.len())
    }
    /// RFC 9162 §2.1.3 inclusion proof of leaf `index` in the tree of `size` leaves.
    ///
    /// # Panics
    /// Unless `index < size ≤ len`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Vec<Hash> {
        assert!(index < size && size <= self.len(), "LogTree::inclusion_proof: bad index {index} / size {size}");
        self.levels.path(index, size, log_node)
    }
    /// RFC 9162 §2.1.4 consistency proof from `old_size` to `new_size` (0 < old ≤ new ≤ len).
    ///
    /// Empty when `old_size == 0` or `old_size == new_size`.
    ///
    /// # Panics
    /// Unless `old_size ≤ new_size ≤ len`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Vec<Hash> {
        assert!(
            old_size <= new_size && new_size <= self.len(),
            "LogTree::consistency_proof: bad sizes {old_size} -> {new_size}"
        );
        if old_size == 0 || old_size == new_size {
            return Vec::new();
        }
        self.levels.consistency(old_size, new_size, log_node)
    }
}

/// RFC 9162 §2.1.3.2: checks that `leaf_hash` is leaf `index` of the log `(root, size)`.
/// The path must have exactly the length the algorithm consumes.
pub fn verify_log_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_path(leaf_hash, index, size, proof, log_node)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// RFC 9162 §2.1.4.2: checks that the log `(old_size, old_root)` is a prefix of
/// `(new_size, new_root)`.
///
/// * `old_size > new_size`: `Shape` error.
/// * `old_size == new_size`: the proof must be empty and the roots equal.
/// * `old_size == 0`: the proof must be empty and `old_root` the empty log root (the empty
///   log is a prefix of every log; `new_root` is not checked).
pub fn verify_consistency(
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::Shape("old size above new size"));
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::Shape("non-empty proof between equal sizes"));
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::Shape("non-empty proof from the empty log"));
        }
        return if *old_root == log_empty_root() { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(ProofError::Shape("empty consistency proof"));
    }
    if proof.len() > PROOF_HASHES_MAX {
        return Err(ProofError::Shape("consistency proof too long"));
    }
    // Step 2: a complete old tree is its own first node.
    let mut rest = proof;
    let first = if old_size.is_power_of_two() {
        *old_root
    } else {
        let (f, r) = proof.split_first().expect("non-empty");
        rest = r;
        *f
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::Shape("consistency proof too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = log_node(c, &fr);
            sr = log_node(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = log_node(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Shape("consistency proof too short"));
    }
    if fr != *old_root || sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> Hash {
        hash(LABEL_LOG_LEAF, &[&i.to_le_bytes()])
    }

    /// RFC 6962 §2.1 MTH, naive recursion.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => log_empty_root(),
            1 => d[0],
            n => {
                let k = split(n as u64) as usize;
                log_node(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    #[test]
    fn split_is_largest_power_of_two_below() {
        assert_eq!([2, 3, 4, 5, 8, 9, 1 << 40].map(split), [1, 2, 2, 4, 4, 8, 1 << 39]);
        assert_eq!(split(u64::MAX), 1 << 63);
    }

    #[test]
    fn log_roots_match_naive_and_proofs_verify() {
        let leaves: Vec<Hash> = (0..40).map(leaf).collect();
        let mut log = LogTree::new();
        assert_eq!(log.root(), log_empty_root());
        for (i, l) in leaves.iter().enumerate() {
            log.push(*l);
            assert_eq!(log.len(), i as u64 + 1);
        }
        for size in 0..=40u64 {
            let root = log.root_at(size);
            assert_eq!(root, mth(&leaves[..size as usize]), "size {size}");
            for index in 0..size {
                let p = log.inclusion_proof(index, size);
                verify_log_inclusion(&leaves[index as usize], index, size, &p, &root).unwrap();
                assert!(verify_log_inclusion(&leaves[index as usize], index, 2 * size + 1, &p, &root).is_err());
            }
            for old in 0..=size {
                let p = log.consistency_proof(old, size);
                verify_consistency(old, &log.root_at(old), size, &root, &p).unwrap();
            }
        }
    }

    #[test]
    fn dir_build_dedups_last_wins_and_proves() {
        let v = |b: u8| [b; 32];
        let t = DirTree::build(vec![(b"b".to_vec(), v(1)), (b"a".to_vec(), v(2)), (b"b".to_vec(), v(3))]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(b"b"), Some(v(3)));
        assert_eq!(t.get(b"c"), None);
        let root = t.root();
        verify_dir(&root, 2, b"b", Some(&v(3)), &t.prove(b"b")).unwrap();
        assert!(verify_dir(&root, 2, b"b", Some(&v(1)), &t.prove(b"b")).is_err());
        for k in [&b""[..], b"aa", b"c"] {
            verify_dir(&root, 2, k, None, &t.prove(k)).unwrap();
        }
        assert_eq!(DirTree::build(vec![]).root(), dir_empty_root());
        verify_dir(&dir_empty_root(), 0, b"x", None, &DirTree::default().prove(b"x")).unwrap();
    }

    #[test]
    fn verifiers_survive_extreme_arguments() {
        let h = [7u8; 32];
        assert!(verify_log_inclusion(&h, u64::MAX, u64::MAX, &[h; 64], &h).is_err());
        assert!(verify_log_inclusion(&h, 0, u64::MAX, &[h; 200], &h).is_err());
        assert!(verify_consistency(u64::MAX, &h, u64::MAX, &h, &[h]).is_err());
        assert!(verify_consistency(u64::MAX - 1, &h, u64::MAX, &h, &[h; 130]).is_err());
        assert!(verify_consistency(1, &h, u64::MAX, &h, &[h; 64]).is_err());
        let n = Neighbour { index: u64::MAX, key: vec![0; 70_000], value_hash: h, path: vec![] };
        let p = DirProof::AbsentBetween(n.clone(), n.clone());
        assert!(verify_dir(&h, u64::MAX, b"k", None, &p).is_err());
        assert!(verify_dir(&h, 0, b"k", None, &DirProof::AbsentAfter(n)).is_err());
    }
}
