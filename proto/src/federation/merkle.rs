//! Merkle trees of the transparency log (`specs/transparency.md` §1–§5).
//!
//! * [`DirTree`]: the directory, a sparse Merkle tree of depth 256 in which a key's leaf
//!   sits at the position [`dir_index`]`(key)`, so one root holds at most one leaf per key;
//!   empty subtrees hash to one constant and a subtree of one leaf to the leaf itself.
//!   [`DirTree::prove`] gives presence and absence proofs ([`DirProof`]: the key's path,
//!   empty siblings left out by a bitmap) that [`verify_dir`] checks.
//! * [`LogTree`]: the append-only head log, an RFC 9162 tree over leaf hashes already made
//!   by [`log_leaf_hash`]; inclusion and consistency proofs per RFC 9162 §2.1.3 and §2.1.4
//!   with the `log-*` labels in place of the `0x00` / `0x01` prefixes.
//!
//! The head log keeps every level of complete, aligned subtrees, so a subtree hash costs
//! O(log n), a proof O(log² n) at worst and `LogTree::push` O(1) amortised; the directory
//! keeps every node, so `DirTree::build` is O(n log n) and a proof O(depth).
//!
//! Verifiers take untrusted proofs straight off the wire and never panic: every malformed
//! proof is a [`ProofError`]. Provers panic on out-of-range arguments (a caller bug).

use serde::{Deserialize, Serialize};

use super::{DirEntry, EpochLeaf, Hash, PROOF_HASHES_MAX};

pub const LABEL_DIR_ENTRY: &str = "nymstr/v1/kt/dir-entry";
pub const LABEL_DIR_INDEX: &str = "nymstr/v1/kt/dir-index";
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
}

/// `hash(LABEL_DIR_INDEX, key)`: where `key` lives in the directory tree. Bit `i` of the
/// index (bit `7 − i mod 8` of byte `i / 8`, most significant first) chooses the side at
/// depth `i`: 0 left, 1 right.
pub fn dir_index(key: &[u8]) -> Hash {
    hash(LABEL_DIR_INDEX, &[key])
}

/// `hash(LABEL_DIR_LEAF, index || value_hash)`: the leaf of the entry at `index`.
pub fn dir_leaf_hash(index: &Hash, value_hash: &Hash) -> Hash {
    hash(LABEL_DIR_LEAF, &[index, value_hash])
}

/// Hash of every empty subtree, and root of the empty directory: `hash(LABEL_DIR_EMPTY, [])`.
pub fn dir_empty_root() -> Hash {
    hash(LABEL_DIR_EMPTY, &[])
}

/// Bit `i` (0 = most significant bit of byte 0) of a 256-bit string.
fn bit(h: &[u8; 32], i: usize) -> bool {
    h[i / 8] & (0x80 >> (i % 8)) != 0
}

/// Whether `a` and `b` agree on their first `n` bits.
fn same_prefix(a: &Hash, b: &Hash, n: usize) -> bool {
    (0..n).all(|i| bit(a, i) == bit(b, i))
}

/// What a directory proof ends on, at the key's position and depth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirEnd {
    /// The key's own leaf: presence (the value hash is the caller's).
    Leaf,
    /// An empty subtree: absence.
    Empty,
    /// A subtree holding one leaf, of another index sharing the key's first `depth` bits:
    /// absence.
    Other { index: Hash, value_hash: Hash },
}

/// Proof that a key is, or is not, in a directory tree of known root: the path from the
/// root down the key's index to depth `depth`, where it ends on `end`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirProof {
    /// How many levels the path goes down (0: the root is `end`); at most [`DIR_DEPTH`].
    pub depth: u16,
    /// Bit `i` set: the sibling at depth `i + 1` is a non-empty subtree, in `siblings`;
    /// clear: it is empty (the constant [`dir_empty_root`]). Bits from `depth` on are clear.
    pub bitmap: Hash,
    /// The non-empty siblings, root side first.
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, PROOF_HASHES_MAX>")]
    pub siblings: Vec<Hash>,
    pub end: DirEnd,
}

/// Depth of the directory tree: one level per bit of an index.
pub const DIR_DEPTH: usize = 256;

fn dir_node(l: &Hash, r: &Hash) -> Hash {
    hash(LABEL_DIR_NODE, &[l, r])
}

/// Root of the empty head log: `hash(LABEL_LOG_EMPTY, [])`.
pub fn log_empty_root() -> Hash {
    hash(LABEL_LOG_EMPTY, &[])
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

/// One node of a [`DirTree`]: an empty subtree, a subtree of one leaf (the leaf itself),
/// or an interior node over two children (indices into the node arena).
#[derive(Clone, Copy, Debug)]
enum DirNode {
    Empty,
    Leaf(usize),
    Inner(usize, usize),
}

/// The directory: a sparse Merkle tree of depth [`DIR_DEPTH`] over the leaves
/// `(key, value_hash)`, each at the position [`dir_index`]`(key)`. Empty subtrees hash to
/// [`dir_empty_root`], a subtree of one leaf to that leaf's hash, any other to
/// `hash(LABEL_DIR_NODE, left || right)`. Keeps every node, so a proof costs O(depth).
#[derive(Clone, Debug, Default)]
pub struct DirTree {
    /// `(index, key, value_hash)` sorted by index, indices unique.
    leaves: Vec<(Hash, Vec<u8>, Hash)>,
    /// Hash and shape of every node; the root is the last (empty when there are no leaves).
    nodes: Vec<(Hash, DirNode)>,
}

impl DirTree {
    /// Builds from leaves in any order; duplicate keys are an error of the caller (last
    /// wins). O(n log n).
    pub fn build(leaves: Vec<(Vec<u8>, Hash)>) -> Self {
        let mut leaves: Vec<(Hash, Vec<u8>, Hash)> = leaves.into_iter().map(|(k, v)| (dir_index(&k), k, v)).collect();
        // Stable: among equal keys the input order survives, so the last one is last.
        leaves.sort_by_key(|l| l.0);
        let mut unique: Vec<(Hash, Vec<u8>, Hash)> = Vec::with_capacity(leaves.len());
        for l in leaves {
            match unique.last_mut() {
                Some(last) if last.0 == l.0 => *last = l,
                _ => unique.push(l),
            }
        }
        let mut tree = DirTree { leaves: unique, nodes: Vec::new() };
        if !tree.leaves.is_empty() {
            tree.nodes.reserve(2 * tree.leaves.len());
            tree.build_node(0, tree.leaves.len(), 0);
        }
        tree
    }

    /// Pushes the subtree of leaves `lo..hi` (all sharing their first `depth` bits) and
    /// returns its node.
    fn build_node(&mut self, lo: usize, hi: usize, depth: usize) -> usize {
        let node = match hi - lo {
            0 => (dir_empty_root(), DirNode::Empty),
            1 => {
                let (index, _, value) = &self.leaves[lo];
                (dir_leaf_hash(index, value), DirNode::Leaf(lo))
            }
            _ => {
                // Distinct indices differ in some bit, so two leaves never reach DIR_DEPTH.
                let mid = lo + self.leaves[lo..hi].partition_point(|l| !bit(&l.0, depth));
                let l = self.build_node(lo, mid, depth + 1);
                let r = self.build_node(mid, hi, depth + 1);
                (dir_node(&self.nodes[l].0, &self.nodes[r].0), DirNode::Inner(l, r))
            }
        };
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn len(&self) -> u64 {
        self.leaves.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }
    pub fn root(&self) -> Hash {
        self.nodes.last().map_or_else(dir_empty_root, |n| n.0)
    }
    /// The value hash under `key`, if present.
    pub fn get(&self, key: &[u8]) -> Option<Hash> {
        let index = dir_index(key);
        self.leaves.binary_search_by(|l| l.0.cmp(&index)).ok().map(|i| self.leaves[i].2)
    }
    /// The leaves `(key, value_hash)` in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Hash)> {
        self.leaves.iter().map(|(_, k, v)| (k.as_slice(), v))
    }
    /// The proof for `key`: its own leaf if present, else the empty subtree or the one
    /// other leaf where its path ends.
    pub fn prove(&self, key: &[u8]) -> DirProof {
        let index = dir_index(key);
        let mut proof = DirProof { depth: 0, bitmap: [0; 32], siblings: Vec::new(), end: DirEnd::Empty };
        let Some(mut at) = self.nodes.len().checked_sub(1) else { return proof };
        let mut depth = 0usize;
        loop {
            match self.nodes[at].1 {
                DirNode::Empty => break,
                DirNode::Leaf(i) => {
                    let (other, _, value_hash) = &self.leaves[i];
                    proof.end = if *other == index {
                        DirEnd::Leaf
                    } else {
                        DirEnd::Other { index: *other, value_hash: *value_hash }
                    };
                    break;
                }
                DirNode::Inner(l, r) => {
                    let (next, sibling) = if bit(&index, depth) { (r, l) } else { (l, r) };
                    if !matches!(self.nodes[sibling].1, DirNode::Empty) {
                        proof.bitmap[depth / 8] |= 0x80 >> (depth % 8);
                        proof.siblings.push(self.nodes[sibling].0);
                    }
                    at = next;
                    depth += 1;
                }
            }
        }
        proof.depth = u16::try_from(depth).expect("depth ≤ DIR_DEPTH");
        proof
    }
}

/// Checks `proof` for `key` against the directory root `root`. `value_hash` is `Some` to
/// check presence of exactly that value, `None` to check absence. One root admits at most
/// one verifying outcome per key: the path is the key's index, and leaf, node and empty
/// hashes are told apart by their labels.
pub fn verify_dir(root: &Hash, key: &[u8], value_hash: Option<&Hash>, proof: &DirProof) -> Result<(), ProofError> {
    let depth = usize::from(proof.depth);
    if depth > DIR_DEPTH {
        return Err(ProofError::Shape("path deeper than the tree"));
    }
    if proof.siblings.len() > PROOF_HASHES_MAX {
        return Err(ProofError::Shape("too many siblings"));
    }
    if (depth..DIR_DEPTH).any(|i| bit(&proof.bitmap, i)) {
        return Err(ProofError::Shape("bitmap marks a sibling below the path"));
    }
    let marked: u32 = proof.bitmap.iter().map(|b| b.count_ones()).sum();
    if marked as usize != proof.siblings.len() {
        return Err(ProofError::Shape("bitmap and siblings disagree"));
    }
    let index = dir_index(key);
    let mut h = match (value_hash, &proof.end) {
        (Some(v), DirEnd::Leaf) => dir_leaf_hash(&index, v),
        (Some(_), _) => return Err(ProofError::Shape("absence proof offered for presence")),
        (None, DirEnd::Leaf) => return Err(ProofError::Shape("presence proof offered for absence")),
        (None, DirEnd::Empty) => dir_empty_root(),
        (None, DirEnd::Other { index: other, value_hash }) => {
            if *other == index {
                return Err(ProofError::Shape("the other leaf is the key's own"));
            }
            if !same_prefix(other, &index, depth) {
                return Err(ProofError::Shape("the other leaf is off the key's path"));
            }
            dir_leaf_hash(other, value_hash)
        }
    };
    let mut next = proof.siblings.len();
    for i in (0..depth).rev() {
        let sibling = if bit(&proof.bitmap, i) {
            next -= 1;
            proof.siblings[next]
        } else {
            dir_empty_root()
        };
        h = if bit(&index, i) { dir_node(&sibling, &h) } else { dir_node(&h, &sibling) };
    }
    if h == *root { Ok(()) } else { Err(ProofError::RootMismatch) }
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
        verify_dir(&root, b"b", Some(&v(3)), &t.prove(b"b")).unwrap();
        assert!(verify_dir(&root, b"b", Some(&v(1)), &t.prove(b"b")).is_err());
        for k in [&b""[..], b"aa", b"c"] {
            verify_dir(&root, k, None, &t.prove(k)).unwrap();
        }
        assert_eq!(DirTree::build(vec![]).root(), dir_empty_root());
        verify_dir(&dir_empty_root(), b"x", None, &DirTree::default().prove(b"x")).unwrap();
    }

    #[test]
    fn verifiers_survive_extreme_arguments() {
        let h = [7u8; 32];
        assert!(verify_log_inclusion(&h, u64::MAX, u64::MAX, &[h; 64], &h).is_err());
        assert!(verify_log_inclusion(&h, 0, u64::MAX, &[h; 200], &h).is_err());
        assert!(verify_consistency(u64::MAX, &h, u64::MAX, &h, &[h]).is_err());
        assert!(verify_consistency(u64::MAX - 1, &h, u64::MAX, &h, &[h; 130]).is_err());
        assert!(verify_consistency(1, &h, u64::MAX, &h, &[h; 64]).is_err());
        let deep = DirProof { depth: u16::MAX, bitmap: [0xff; 32], siblings: vec![h; 256], end: DirEnd::Empty };
        assert!(verify_dir(&h, &[0; 70_000], None, &deep).is_err());
        let full = DirProof { depth: 256, bitmap: [0xff; 32], siblings: vec![h; 256], end: DirEnd::Empty };
        assert!(verify_dir(&h, b"k", None, &full).is_err());
        let all =
            DirProof { depth: 256, bitmap: [0; 32], siblings: vec![], end: DirEnd::Other { index: h, value_hash: h } };
        assert!(verify_dir(&h, b"k", None, &all).is_err());
    }
}
