//! Merkle trees of the transparency log (`specs/transparency.md`): presence and absence
//! proofs of the directory tree, inclusion and consistency proofs of the head log, their
//! rejection when tampered with, an independent naive RFC 6962 implementation to compare
//! against, and the published test vectors (§5).

use nymstr_proto::federation::merkle::{
    DirEnd, DirProof, DirTree, LABEL_DIR_ENTRY, LABEL_DIR_NODE, LABEL_LOG_NODE, LogTree, ProofError, dir_empty_root,
    dir_index, dir_leaf_hash, hash, log_empty_root, log_leaf_hash, verify_consistency, verify_dir,
    verify_log_inclusion,
};
use nymstr_proto::federation::{EpochLeaf, Hash, PROOF_HASHES_MAX};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------
// Naive RFC 6962 §2.1 reference (MTH, PATH, PROOF/SUBPROOF as the RFC text defines them).

fn k_split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn naive_mth(d: &[Hash], node: &str, empty: Hash) -> Hash {
    match d.len() {
        0 => empty,
        1 => d[0],
        n => {
            let k = k_split(n);
            hash(node, &[&naive_mth(&d[..k], node, empty), &naive_mth(&d[k..], node, empty)])
        }
    }
}

fn naive_path(m: usize, d: &[Hash], node: &str) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return vec![];
    }
    let k = k_split(n);
    let e = [0u8; 32];
    if m < k {
        let mut p = naive_path(m, &d[..k], node);
        p.push(naive_mth(&d[k..], node, e));
        p
    } else {
        let mut p = naive_path(m - k, &d[k..], node);
        p.push(naive_mth(&d[..k], node, e));
        p
    }
}

fn naive_subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    let e = [0u8; 32];
    if m == n {
        return if b { vec![] } else { vec![naive_mth(d, LABEL_LOG_NODE, e)] };
    }
    let k = k_split(n);
    if m <= k {
        let mut p = naive_subproof(m, &d[..k], b);
        p.push(naive_mth(&d[k..], LABEL_LOG_NODE, e));
        p
    } else {
        let mut p = naive_subproof(m - k, &d[k..], false);
        p.push(naive_mth(&d[..k], LABEL_LOG_NODE, e));
        p
    }
}

fn naive_proof(m: usize, d: &[Hash]) -> Vec<Hash> {
    if m == 0 {
        return vec![];
    }
    naive_subproof(m, d, true)
}

// ---------------------------------------------------------------------------------------
// Naive sparse Merkle tree (`specs/transparency.md` §2): leaves placed by position, any
// positions at all (a malicious node places them where it likes), and a prover that walks
// down any position it is asked for.

fn bit_of(h: &Hash, i: usize) -> bool {
    h[i / 8] & (0x80 >> (i % 8)) != 0
}

/// Root of the subtree of `leaves` (position, leaf hash) at `depth`, recomputed from scratch.
fn naive_smt(leaves: &[(Hash, Hash)], depth: usize) -> Hash {
    match leaves {
        [] => dir_empty_root(),
        [(_, h)] => *h,
        _ => {
            let (l, r): (Vec<_>, Vec<_>) = leaves.iter().partition(|(p, _)| !bit_of(p, depth));
            hash(LABEL_DIR_NODE, &[&naive_smt(&l, depth + 1), &naive_smt(&r, depth + 1)])
        }
    }
}

/// The path down `pos` in the naive tree: the proof a prover of that tree can give, ending
/// on what it finds there (a leaf made with the index `pos` is the key's own).
fn naive_prove_at(leaves: &[(Hash, Hash, Hash)], pos: &Hash) -> DirProof {
    // (position, index the leaf hash was made with, value hash)
    let mut here: Vec<(Hash, Hash, Hash)> = leaves.to_vec();
    let mut depth = 0usize;
    let mut bitmap = [0u8; 32];
    let mut siblings = Vec::new();
    while here.len() > 1 {
        let (l, r): (Vec<_>, Vec<_>) = here.iter().partition(|(p, _, _)| !bit_of(p, depth));
        let (next, other) = if bit_of(pos, depth) { (r, l) } else { (l, r) };
        if !other.is_empty() {
            bitmap[depth / 8] |= 0x80 >> (depth % 8);
            let o: Vec<(Hash, Hash)> = other.iter().map(|(p, i, v)| (*p, dir_leaf_hash(i, v))).collect();
            siblings.push(naive_smt(&o, depth + 1));
        }
        here = next;
        depth += 1;
    }
    let end = match here.first() {
        None => DirEnd::Empty,
        Some((_, i, _)) if i == pos => DirEnd::Leaf,
        Some((_, i, v)) => DirEnd::Other { index: *i, value_hash: *v },
    };
    DirProof { depth: depth as u16, bitmap, siblings, end }
}

fn naive_root(leaves: &[(Hash, Hash, Hash)]) -> Hash {
    let v: Vec<(Hash, Hash)> = leaves.iter().map(|(p, i, v)| (*p, dir_leaf_hash(i, v))).collect();
    naive_smt(&v, 0)
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn value_of(key: &[u8]) -> Hash {
    hash(LABEL_DIR_ENTRY, &[key])
}

/// Keys `[2], [4], …, [2n]`: every odd byte, 0, 1 and everything above `2n` is absent.
fn even_tree(n: usize) -> DirTree {
    DirTree::build((0..n).map(|i| (vec![2 * i as u8 + 2], value_of(&[2 * i as u8 + 2]))).collect())
}

fn probes(n: usize) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..=2 * n as u8 + 4).map(|b| vec![b]).collect();
    v.push(vec![]);
    v.push(vec![1, 0]);
    v.push(vec![2, 0]);
    v.push(vec![255, 255]);
    v
}

/// The honest tree as positioned leaves (position = index).
fn positioned(t: &DirTree) -> Vec<(Hash, Hash, Hash)> {
    t.iter().map(|(k, v)| (dir_index(k), dir_index(k), *v)).collect()
}

fn check_honest(t: &DirTree, key: &[u8]) {
    let root = t.root();
    let proof = t.prove(key);
    let v = t.get(key);
    verify_dir(&root, key, v.as_ref(), &proof).unwrap_or_else(|e| panic!("n={} key={key:?}: {e}", t.len()));
    assert!(proof.siblings.len() <= PROOF_HASHES_MAX);
    // The opposite claim never verifies.
    match v {
        Some(v) => {
            assert_eq!(proof.end, DirEnd::Leaf);
            assert!(verify_dir(&root, key, None, &proof).is_err());
            let mut w = v;
            w[0] ^= 1;
            assert_eq!(verify_dir(&root, key, Some(&w), &proof), Err(ProofError::RootMismatch));
        }
        None => {
            assert_ne!(proof.end, DirEnd::Leaf);
            assert!(verify_dir(&root, key, Some(&value_of(key)), &proof).is_err());
        }
    }
}

fn flip(h: &mut Hash, byte: usize) {
    h[byte % 32] ^= 0x80;
}

/// Every single tampering of an honest proof.
fn tampered(proof: &DirProof) -> Vec<DirProof> {
    let mut out = Vec::new();
    let d = usize::from(proof.depth);
    for j in 0..proof.siblings.len() {
        for byte in [0, 17, 31] {
            let mut p = proof.clone();
            flip(&mut p.siblings[j], byte);
            out.push(p);
        }
        let mut p = proof.clone();
        p.siblings.remove(j);
        out.push(p);
        let mut p = proof.clone();
        p.siblings.insert(j, [j as u8; 32]);
        out.push(p);
    }
    if proof.siblings.len() >= 2 && proof.siblings[0] != proof.siblings[1] {
        let mut p = proof.clone();
        p.siblings.swap(0, 1);
        out.push(p);
    }
    for i in 0..d.min(256) {
        // Move a sibling to empty or an empty one to a made-up hash.
        let mut p = proof.clone();
        p.bitmap[i / 8] ^= 0x80 >> (i % 8);
        out.push(p.clone());
        let set = (0..i).filter(|b| proof.bitmap[b / 8] & (0x80 >> (b % 8)) != 0).count();
        if proof.bitmap[i / 8] & (0x80 >> (i % 8)) == 0 {
            p.siblings.insert(set, [0x5a; 32]);
        } else {
            p.siblings.remove(set);
        }
        out.push(p);
    }
    for depth in [d.wrapping_sub(1), d + 1, 0, 256, 257] {
        if depth != d && depth <= u16::MAX as usize {
            let mut p = proof.clone();
            p.depth = depth as u16;
            out.push(p);
        }
    }
    // The end swapped for each other kind, or with one byte flipped.
    let any = [0x33; 32];
    for end in [DirEnd::Leaf, DirEnd::Empty, DirEnd::Other { index: any, value_hash: any }] {
        if end != proof.end {
            out.push(DirProof { end, ..proof.clone() });
        }
    }
    if let DirEnd::Other { index, value_hash } = &proof.end {
        for byte in [0, 31] {
            let (mut i, mut v) = (*index, *value_hash);
            flip(&mut i, byte);
            out.push(DirProof { end: DirEnd::Other { index: i, value_hash: *value_hash }, ..proof.clone() });
            flip(&mut v, byte);
            out.push(DirProof { end: DirEnd::Other { index: *index, value_hash: v }, ..proof.clone() });
        }
    }
    out.retain(|p| p != proof);
    out
}

fn check_tampered(t: &DirTree, key: &[u8]) -> usize {
    let root = t.root();
    let proof = t.prove(key);
    let v = t.get(key);
    let mut count = 0;
    for bad in tampered(&proof) {
        assert!(verify_dir(&root, key, v.as_ref(), &bad).is_err(), "n={} key={key:?} accepted {bad:?}", t.len());
        count += 1;
    }
    // The honest proof against another root.
    let mut other = root;
    flip(&mut other, 5);
    assert!(verify_dir(&other, key, v.as_ref(), &proof).is_err());
    count
}

// ---------------------------------------------------------------------------------------
// Directory tree.

#[test]
fn dir_roots_and_proofs_match_naive_sparse_tree() {
    for n in 0..=33 {
        let t = even_tree(n);
        assert_eq!(t.len(), n as u64);
        let leaves = positioned(&t);
        assert_eq!(t.root(), naive_root(&leaves), "n={n}");
        for key in probes(n) {
            assert_eq!(t.prove(&key), naive_prove_at(&leaves, &dir_index(&key)), "n={n} key={key:?}");
        }
    }
    assert_eq!(DirTree::build(vec![]).root(), hash("nymstr/v1/kt/dir-empty", &[]));
    // One leaf: the root is the leaf hash; its proof has no siblings.
    let t = even_tree(1);
    assert_eq!(t.root(), dir_leaf_hash(&dir_index(&[2]), &value_of(&[2])));
    assert_eq!(t.prove(&[2]), DirProof { depth: 0, bitmap: [0; 32], siblings: vec![], end: DirEnd::Leaf });
    assert_eq!(dir_index(b"alice"), hash("nymstr/v1/kt/dir-index", &[b"alice"]));
}

#[test]
fn dir_every_key_and_every_gap_sizes_0_to_33() {
    for n in 0..=33 {
        let t = even_tree(n);
        for key in probes(n) {
            check_honest(&t, &key);
            let proof = t.prove(&key);
            if n == 0 {
                assert_eq!(proof, DirProof { depth: 0, bitmap: [0; 32], siblings: vec![], end: DirEnd::Empty });
            }
            if let DirEnd::Other { index, .. } = proof.end {
                assert!(t.iter().any(|(k, _)| dir_index(k) == index), "n={n} key={key:?}");
            }
        }
    }
}

#[test]
fn dir_tampered_proofs_rejected_sizes_0_to_33() {
    let mut total = 0;
    for n in 0..=33 {
        let t = even_tree(n);
        for key in probes(n) {
            total += check_tampered(&t, &key);
        }
    }
    assert!(total > 10_000, "{total} tamperings");
}

#[test]
fn dir_large_random_tree() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x6b74);
    let mut keys = Vec::new();
    for _ in 0..3000 {
        let len = 1 + (rng.next_u32() % 64) as usize;
        let mut k = vec![0u8; len];
        rng.fill_bytes(&mut k);
        k[0] = b'a' + (k[0] % 26);
        keys.push(k);
    }
    let t = DirTree::build(keys.iter().map(|k| (k.clone(), value_of(k))).collect());
    assert_eq!(t.root(), naive_root(&positioned(&t)));
    let mut longest = 0;
    for k in &keys {
        check_honest(&t, k);
        longest = longest.max(t.prove(k).siblings.len());
    }
    // About log2(3000) ≈ 12 siblings, far below the bound.
    assert!(longest < 40, "{longest} siblings");
    for (i, k) in keys.iter().enumerate().take(300) {
        check_tampered(&t, k);
        let mut absent = k.clone();
        absent.push(i as u8);
        check_honest(&t, &absent);
        check_tampered(&t, &absent);
    }
    for k in [&b""[..], b"A", b"zzzzzzzzzz", &[0xff; 64]] {
        check_honest(&t, k);
        check_tampered(&t, k);
    }
}

#[test]
fn dir_duplicates_last_wins() {
    let t = DirTree::build(vec![(b"x".to_vec(), [1; 32]), (b"y".to_vec(), [2; 32]), (b"x".to_vec(), [3; 32])]);
    assert_eq!(t.len(), 2);
    assert_eq!(t.get(b"x"), Some([3; 32]));
    assert_eq!(t.root(), DirTree::build(vec![(b"y".to_vec(), [2; 32]), (b"x".to_vec(), [3; 32])]).root());
}

#[test]
fn dir_proof_of_another_tree_rejected() {
    let a = even_tree(10);
    let b = DirTree::build((0..10u8).map(|i| (vec![2 * i + 2], [i; 32])).collect());
    for key in probes(10) {
        let v = a.get(&key);
        assert!(verify_dir(&b.root(), &key, v.as_ref(), &a.prove(&key)).is_err(), "{key:?}");
    }
}

/// Every claim about `key` that some path of the malicious tree `leaves` proves: what a
/// node holding that tree can show anyone. `values` are the values it may claim.
fn provable_claims(leaves: &[(Hash, Hash, Hash)], key: &[u8], values: &[Hash]) -> Vec<Option<Hash>> {
    let root = naive_root(leaves);
    let mut positions: Vec<Hash> = leaves.iter().map(|l| l.0).collect();
    positions.push(dir_index(key));
    let mut claims = Vec::new();
    for pos in &positions {
        let mut proof = naive_prove_at(leaves, pos);
        // Whatever the walk ended on, the prover may call it the key's leaf or not.
        let ends = [DirEnd::Leaf, DirEnd::Empty, proof.end.clone()];
        for end in ends {
            proof.end = end;
            for claim in values.iter().map(Some).chain([None]) {
                if verify_dir(&root, key, claim, &proof).is_ok() && !claims.contains(&claim.copied()) {
                    claims.push(claim.copied());
                }
            }
        }
    }
    claims
}

/// Issue 10 item 4 (split view): a node that signs one root whose tree holds a name twice
/// (its real leaf, and a substitute placed at another position, or at any depth) can
/// make at most one claim about that name verify under that root.
#[test]
fn dir_one_root_proves_one_value_per_name() {
    let (real, forged) = (value_of(b"alice's key"), value_of(b"mallory's key"));
    let alice = dir_index(b"alice");
    let honest: Vec<(Hash, Hash, Hash)> =
        [&b"bob"[..], b"carol", b"dave"].iter().map(|k| (dir_index(k), dir_index(k), value_of(k))).collect();
    let mut attempts: Vec<Vec<(Hash, Hash, Hash)>> = Vec::new();
    // The substitute (made with alice's index, so that it would verify for her) placed at
    // another name's position, or at a position sharing 1..255 bits of her index.
    attempts.push([honest.clone(), vec![(alice, alice, real), (dir_index(b"mallory"), alice, forged)]].concat());
    for shared in [1usize, 2, 8, 100, 255] {
        let mut pos = alice;
        pos[shared / 8] ^= 0x80 >> (shared % 8);
        attempts.push([honest.clone(), vec![(alice, alice, real), (pos, alice, forged)]].concat());
    }
    // Alice's position holds the substitute and the real leaf sits elsewhere.
    attempts.push([honest.clone(), vec![(alice, alice, forged), (dir_index(b"mallory"), alice, real)]].concat());
    for leaves in &attempts {
        let claims = provable_claims(leaves, b"alice", &[real, forged]);
        assert_eq!(claims.len(), 1, "two claims about alice under one root: {claims:?}");
    }
    // The honest tree: exactly her value.
    let t = DirTree::build(vec![(b"alice".to_vec(), real), (b"bob".to_vec(), value_of(b"bob"))]);
    assert_eq!(provable_claims(&positioned(&t), b"alice", &[real, forged]), vec![Some(real)]);
}

// ---------------------------------------------------------------------------------------
// Head log.

fn log_leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| log_leaf_hash(&EpochLeaf { epoch: i, dir_root: [i as u8; 32], dir_size: i })).collect()
}

#[test]
fn log_matches_naive_rfc6962_all_sizes_to_33() {
    let leaves = log_leaves(33);
    let mut log = LogTree::new();
    assert!(log.is_empty());
    assert_eq!(log.root_at(0), log_empty_root());
    for l in &leaves {
        log.push(*l);
    }
    for n in 0..=33usize {
        let d = &leaves[..n];
        let root = log.root_at(n as u64);
        assert_eq!(root, naive_mth(d, LABEL_LOG_NODE, log_empty_root()), "root {n}");
        for (m, leaf) in d.iter().enumerate() {
            let p = log.inclusion_proof(m as u64, n as u64);
            assert_eq!(p, naive_path(m, d, LABEL_LOG_NODE), "path {m} of {n}");
            verify_log_inclusion(leaf, m as u64, n as u64, &p, &root).unwrap();
        }
        for m in 0..=n {
            let p = log.consistency_proof(m as u64, n as u64);
            if m < n {
                assert_eq!(p, naive_proof(m, d), "proof {m} -> {n}");
            } else {
                assert!(p.is_empty());
            }
            verify_consistency(m as u64, &log.root_at(m as u64), n as u64, &root, &p)
                .unwrap_or_else(|e| panic!("{m} -> {n}: {e}"));
        }
    }
}

#[test]
fn log_tampered_inclusion_rejected() {
    let leaves = log_leaves(33);
    let mut log = LogTree::new();
    leaves.iter().for_each(|l| log.push(*l));
    for n in 1..=33u64 {
        let root = log.root_at(n);
        for m in 0..n {
            let leaf = &leaves[m as usize];
            let p = log.inclusion_proof(m, n);
            let bad = |proof: &[Hash], idx: u64, size: u64, root: &Hash| {
                assert!(verify_log_inclusion(leaf, idx, size, proof, root).is_err(), "{m}/{n}: {idx} {size}");
            };
            for j in 0..p.len() {
                let mut q = p.clone();
                flip(&mut q[j], j);
                bad(&q, m, n, &root);
            }
            for idx in [m + 1, m.wrapping_sub(1), m ^ 1, n, u64::MAX] {
                bad(&p, idx, n, &root);
            }
            bad(&p, m, 2 * n + 1, &root);
            bad(&p, m, 0, &root);
            if !p.is_empty() {
                bad(&p[1..], m, n, &root);
                bad(&p[..p.len() - 1], m, n, &root);
            }
            let mut q = p.clone();
            q.push(root);
            bad(&q, m, n, &root);
            let mut other = root;
            flip(&mut other, 0);
            bad(&p, m, n, &other);
            let mut l2 = *leaf;
            flip(&mut l2, 1);
            assert!(verify_log_inclusion(&l2, m, n, &p, &root).is_err());
        }
    }
}

#[test]
fn log_tampered_consistency_rejected() {
    let leaves = log_leaves(33);
    let mut log = LogTree::new();
    leaves.iter().for_each(|l| log.push(*l));
    for n in 1..=33u64 {
        let new_root = log.root_at(n);
        for m in 1..n {
            let old_root = log.root_at(m);
            let p = log.consistency_proof(m, n);
            let bad = |proof: &[Hash], m: u64, or: &Hash, n: u64, nr: &Hash| {
                assert!(verify_consistency(m, or, n, nr, proof).is_err(), "{m} -> {n}");
            };
            for j in 0..p.len() {
                let mut q = p.clone();
                flip(&mut q[j], j);
                bad(&q, m, &old_root, n, &new_root);
            }
            bad(&p[1..], m, &old_root, n, &new_root);
            bad(&p[..p.len() - 1], m, &old_root, n, &new_root);
            let mut q = p.clone();
            q.push(new_root);
            bad(&q, m, &old_root, n, &new_root);
            bad(&[], m, &old_root, n, &new_root);
            let mut o = old_root;
            flip(&mut o, 2);
            bad(&p, m, &o, n, &new_root);
            let mut o = new_root;
            flip(&mut o, 2);
            bad(&p, m, &old_root, n, &o);
            bad(&p, n, &new_root, m, &old_root);
            // A proof between other sizes.
            if m + 1 < n {
                bad(&log.consistency_proof(m + 1, n), m, &old_root, n, &new_root);
            }
            // Roots of a forked log.
            let mut forked = LogTree::new();
            for (i, l) in leaves[..n as usize].iter().enumerate() {
                let mut l = *l;
                if i as u64 == m - 1 {
                    flip(&mut l, 9);
                }
                forked.push(l);
            }
            bad(&p, m, &old_root, n, &forked.root_at(n));
            bad(&forked.consistency_proof(m, n), m, &old_root, n, &forked.root_at(n));
        }
        // Equal sizes and the empty old log.
        verify_consistency(n, &new_root, n, &new_root, &[]).unwrap();
        assert!(verify_consistency(n, &new_root, n, &new_root, &[new_root]).is_err());
        assert!(verify_consistency(n, &log_empty_root(), n, &new_root, &[]).is_err());
        verify_consistency(0, &log_empty_root(), n, &new_root, &[]).unwrap();
        assert!(verify_consistency(0, &log_empty_root(), n, &new_root, &[new_root]).is_err());
        assert!(verify_consistency(0, &new_root, n, &new_root, &[]).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Property tests.

fn arb_hash() -> impl Strategy<Value = Hash> {
    prop_oneof![Just([0u8; 32]), any::<[u8; 32]>()]
}

fn arb_index() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..40, any::<u64>(), Just(u64::MAX), Just(u64::MAX - 1)]
}

fn arb_proof() -> impl Strategy<Value = DirProof> {
    let end = prop_oneof![
        Just(DirEnd::Leaf),
        Just(DirEnd::Empty),
        (arb_hash(), arb_hash()).prop_map(|(index, value_hash)| DirEnd::Other { index, value_hash }),
    ];
    (
        prop_oneof![0u16..20, Just(255), Just(256), Just(257), any::<u16>()],
        arb_hash(),
        proptest::collection::vec(arb_hash(), 0..140),
        end,
    )
        .prop_map(|(depth, bitmap, siblings, end)| DirProof { depth, bitmap, siblings, end })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn prop_honest_proofs_verify_and_lies_do_not(
        keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..60),
        lookups in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 1..20),
    ) {
        let t = DirTree::build(keys.iter().map(|k| (k.clone(), value_of(k))).collect());
        let root = t.root();
        for k in keys.iter().chain(&lookups) {
            let proof = t.prove(k);
            let present = keys.contains(k);
            prop_assert_eq!(t.get(k).is_some(), present);
            let truth = present.then(|| value_of(k));
            prop_assert!(verify_dir(&root, k, truth.as_ref(), &proof).is_ok());
            let lie = if present { None } else { Some(value_of(k)) };
            prop_assert!(verify_dir(&root, k, lie.as_ref(), &proof).is_err());
            if present {
                let mut w = value_of(k);
                w[31] ^= 1;
                prop_assert!(verify_dir(&root, k, Some(&w), &proof).is_err());
            }
        }
    }

    #[test]
    fn prop_garbage_dir_proofs_never_panic(
        root in arb_hash(),
        key in proptest::collection::vec(any::<u8>(), 0..8),
        value in proptest::option::of(arb_hash()),
        proof in arb_proof(),
    ) {
        let _ = verify_dir(&root, &key, value.as_ref(), &proof);
    }

    #[test]
    fn prop_garbage_log_proofs_never_panic(
        a in arb_hash(),
        b in arb_hash(),
        i in arb_index(),
        j in arb_index(),
        proof in proptest::collection::vec(arb_hash(), 0..140),
    ) {
        let _ = verify_log_inclusion(&a, i, j, &proof, &b);
        let _ = verify_consistency(i, &a, j, &b, &proof);
    }

    #[test]
    fn prop_mutated_honest_proofs_rejected(
        n in 1u64..200,
        pick in any::<u64>(),
        mutation in 0usize..4,
        byte in 0usize..32,
    ) {
        let leaves = log_leaves(n);
        let mut log = LogTree::new();
        leaves.iter().for_each(|l| log.push(*l));
        let m = pick % n;
        let root = log.root();
        let mut p = log.inclusion_proof(m, n);
        let untouched = p.clone();
        match mutation {
            0 if !p.is_empty() => { let j = byte % p.len(); p[j][byte] ^= 1; }
            1 => p.push([byte as u8; 32]),
            2 if !p.is_empty() => { p.pop(); }
            _ => p.insert(0, [byte as u8; 32]),
        }
        prop_assume!(p != untouched);
        prop_assert!(verify_log_inclusion(&leaves[m as usize], m, n, &p, &root).is_err());
        // Consistency from every old size to n, with one byte flipped.
        let old = 1 + pick % n;
        let mut c = log.consistency_proof(old, n);
        prop_assert!(verify_consistency(old, &log.root_at(old), n, &root, &c).is_ok());
        if !c.is_empty() {
            let j = byte % c.len();
            c[j][byte] ^= 1;
            prop_assert!(verify_consistency(old, &log.root_at(old), n, &root, &c).is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test vectors (`specs/transparency.md` §5).

fn hx(h: &Hash) -> String {
    hex::encode(h)
}

fn vector_dir() -> DirTree {
    DirTree::build(["alice", "bob", "carol"].iter().map(|k| (k.as_bytes().to_vec(), value_of(k.as_bytes()))).collect())
}

fn vector_log() -> LogTree {
    let mut log = LogTree::new();
    for i in 0..5u64 {
        log.push(log_leaf_hash(&EpochLeaf { epoch: i, dir_root: [i as u8; 32], dir_size: i }));
    }
    log
}

fn hexes(v: &[Hash]) -> Vec<String> {
    v.iter().map(hx).collect()
}

const DIR_EMPTY: &str = "363a0848d4e1a5a7e0155e06cf4dba35e5fd1a64da287228e60ec75eccf2b39a";
const LOG_EMPTY: &str = "b514ccf06604015b815da21b8928f8cc9172d882c8bfd3979e02cc097f97f640";
const V_ALICE: &str = "c777bc2afae4019285d0fc710fa2ba12268265f3d6a2a9e7994060e2f37bb5a7";
const V_BOB: &str = "de2dfcc8bb7c55f8e9e9639a54581cfe96bcca7f06b1d17a14867804cfe92dcb";
const V_CAROL: &str = "a7949bffa68965237984066a5c18d04e577cc63809f4c2071be2b71cf2fd6cda";
const I_ALICE: &str = "043e15b768fab7a4c1fb73838cad5e5a580598271259c639d2695b7c3c0b5662";
const I_BOB: &str = "19485d7439727e016f20263ef240a35694da90cda1242b240600e1f8f1167eed";
const I_CAROL: &str = "77797f19c60b2229cde6c2a0899288a55096e9a7015a8da8aff351b6aef26b58";
const L_ALICE: &str = "638b979bd709e9a76e81ee644989a532c3b0677386341e70260acf4bb0f116e0";
const L_BOB: &str = "8c60ccb2c5adfeb9a46630df7aad1e96041e2834881d349876f1b0da60c711d7";
const L_CAROL: &str = "d585d45ab6a13b10b40e92918ec2dddf3e79e97f1114e87946334f4841149c5a";
const N_AB_E: &str = "1861c84825f1997126cd3c4b245fbc340f96aca82edf9ceb1a8abde1a65e82fc";
const N_ABC: &str = "f03d0cdd6af19f9539d81f1796876949e322c65226b82a771ee6fc3e5061075a";
const DIR_ROOT: &str = "dd33db7b13cac1a096f70f8b9ca625e7e23211e0024ba38e4eae6bee1bd212a2";
// depth, bitmap (32 bytes), siblings (count, hashes), end (0 Leaf, 1 Empty, 2 Other index value).
const PROOF_ALICE: &str = "045000000000000000000000000000000000000000000000000000000000000000\
    02d585d45ab6a13b10b40e92918ec2dddf3e79e97f1114e87946334f4841149c5a\
    8c60ccb2c5adfeb9a46630df7aad1e96041e2834881d349876f1b0da60c711d7\
    00";
const PROOF_DAVE: &str = "018000000000000000000000000000000000000000000000000000000000000000\
    01f03d0cdd6af19f9539d81f1796876949e322c65226b82a771ee6fc3e5061075a\
    01";
const PROOF_GRACE: &str = "024000000000000000000000000000000000000000000000000000000000000000\
    011861c84825f1997126cd3c4b245fbc340f96aca82edf9ceb1a8abde1a65e82fc\
    02\
    77797f19c60b2229cde6c2a0899288a55096e9a7015a8da8aff351b6aef26b58\
    a7949bffa68965237984066a5c18d04e577cc63809f4c2071be2b71cf2fd6cda";

const LOG_LEAVES: [&str; 5] = [
    "3dfbb612cb49db2940ab67962fc0cc7c6c46d7973492abcad71f6907437a8598",
    "a6285ae0e5133bff25ca3234003a72939a8d0fbdcd93274e88c8e02851cc4c40",
    "1e81f96ba79ab0b37a1321ea93498407c3134dfcd7fe4a4189b1b450f33a5c00",
    "48af7641c4b036f4ba6b62b9db62018caddeb452f373b3e98ef34cb4b7c55c81",
    "8f8e5da2f5838afea390b4eaec782a741dbbb4ae40c1441e095798fa4c3c8ad3",
];
const LOG_ROOTS: [&str; 5] = [
    "3dfbb612cb49db2940ab67962fc0cc7c6c46d7973492abcad71f6907437a8598",
    "7a6392d8380656da1db3212adf033d011e5069cec27ae170f1bc1e5460014545",
    "574883c56d1f2d70155bdc41a13dd888b034fda6aed30115f7b2109ae7769a3f",
    "ed3e16fe4450660cd57710594e116713849cfa19365950ca5c1604261c212970",
    "f1f0c6470e5795b57ece98ba58163ba7759d256b8d99968d5a1503a8b9e49fe6",
];
const N_23: &str = "747d83dc827fea8961cb4033bf57d8e2240fb3dbe46257cc5d60893150fc5997";

#[test]
fn vectors_directory() {
    assert_eq!(hx(&dir_empty_root()), DIR_EMPTY);
    let t = vector_dir();
    let h = |s: &str| -> Hash { hex::decode(s).unwrap().try_into().unwrap() };
    for (name, v, i, l) in
        [("alice", V_ALICE, I_ALICE, L_ALICE), ("bob", V_BOB, I_BOB, L_BOB), ("carol", V_CAROL, I_CAROL, L_CAROL)]
    {
        assert_eq!(hx(&value_of(name.as_bytes())), v);
        assert_eq!(hx(&dir_index(name.as_bytes())), i);
        assert_eq!(hx(&dir_leaf_hash(&h(i), &h(v))), l);
        // Leaf encoding by hand: index || value.
        assert_eq!(hash("nymstr/v1/kt/dir-leaf", &[&h(i), &h(v)]), h(l));
    }
    assert_eq!(hx(&t.root()), DIR_ROOT);
    // The root by hand. Indices begin 0000 0100 (alice), 0001 1001 (bob), 0111 0111
    // (carol): all go left at depth 0, carol right at depth 1, alice and bob part at 3.
    let e = dir_empty_root();
    let node = |a: &Hash, b: &Hash| hash(LABEL_DIR_NODE, &[a, b]);
    let n_ab = node(&h(L_ALICE), &h(L_BOB));
    assert_eq!(node(&n_ab, &e), h(N_AB_E));
    assert_eq!(node(&h(N_AB_E), &h(L_CAROL)), h(N_ABC));
    assert_eq!(node(&h(N_ABC), &e), h(DIR_ROOT));

    let bitmap = |b: u8| {
        let mut m = [0u8; 32];
        m[0] = b;
        m
    };
    let alice = t.prove(b"alice");
    assert_eq!(
        alice,
        DirProof { depth: 4, bitmap: bitmap(0x50), siblings: vec![h(L_CAROL), h(L_BOB)], end: DirEnd::Leaf }
    );
    let dave = t.prove(b"dave");
    assert_eq!(dave, DirProof { depth: 1, bitmap: bitmap(0x80), siblings: vec![h(N_ABC)], end: DirEnd::Empty });
    let grace = t.prove(b"grace");
    let other = DirEnd::Other { index: h(I_CAROL), value_hash: h(V_CAROL) };
    assert_eq!(grace, DirProof { depth: 2, bitmap: bitmap(0x40), siblings: vec![h(N_AB_E)], end: other });
    for (p, enc) in [(&alice, PROOF_ALICE), (&dave, PROOF_DAVE), (&grace, PROOF_GRACE)] {
        assert_eq!(hex::encode(nymstr_proto::codec::encode(p)), enc);
        assert_eq!(&nymstr_proto::codec::decode::<DirProof>(&hex::decode(enc).unwrap()).unwrap(), p);
    }
    verify_dir(&t.root(), b"alice", Some(&h(V_ALICE)), &alice).unwrap();
    verify_dir(&t.root(), b"dave", None, &dave).unwrap();
    verify_dir(&t.root(), b"grace", None, &grace).unwrap();
}

#[test]
fn vectors_log() {
    assert_eq!(hx(&log_empty_root()), LOG_EMPTY);
    assert_eq!(
        hex::encode(nymstr_proto::codec::encode(&EpochLeaf { epoch: 1, dir_root: [1; 32], dir_size: 1 })),
        "01".repeat(34)
    );
    let log = vector_log();
    assert_eq!((0..5).map(|i| hx(&log.leaf(i).unwrap())).collect::<Vec<_>>(), LOG_LEAVES);
    assert_eq!((1..=5).map(|s| hx(&log.root_at(s))).collect::<Vec<_>>(), LOG_ROOTS);
    assert_eq!(hexes(&log.inclusion_proof(2, 5)), [LOG_LEAVES[3], LOG_ROOTS[1], LOG_LEAVES[4]]);
    assert_eq!(hexes(&log.inclusion_proof(4, 5)), [LOG_ROOTS[3]]);
    assert_eq!(hexes(&log.consistency_proof(3, 5)), [LOG_LEAVES[2], LOG_LEAVES[3], LOG_ROOTS[1], LOG_LEAVES[4]]);
    assert_eq!(hexes(&log.consistency_proof(2, 5)), [N_23, LOG_LEAVES[4]]);
    assert_eq!(hexes(&log.consistency_proof(4, 5)), [LOG_LEAVES[4]]);
}
