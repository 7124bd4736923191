//! Merkle trees of the transparency log (`specs/transparency.md`): presence and absence
//! proofs of the directory tree, inclusion and consistency proofs of the head log, their
//! rejection when tampered with, an independent naive RFC 6962 implementation to compare
//! against, and the published test vectors (§5).

use nymstr_node::federation::merkle::{
    DirProof, DirTree, LABEL_DIR_ENTRY, LABEL_DIR_NODE, LABEL_LOG_NODE, LogTree, Neighbour, ProofError, dir_empty_root,
    dir_leaf_hash, hash, log_empty_root, log_leaf_hash, verify_consistency, verify_dir, verify_log_inclusion,
};
use nymstr_node::federation::{EpochLeaf, Hash};
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

fn leaf_hashes(t: &DirTree) -> Vec<Hash> {
    t.iter().map(|(k, v)| dir_leaf_hash(k, v).unwrap()).collect()
}

fn neighbour(t: &DirTree, i: u64) -> Neighbour {
    let (k, v) = t.iter().nth(i as usize).unwrap();
    Neighbour { index: i, key: k.to_vec(), value_hash: *v, path: t.inclusion_path(i) }
}

fn claim(t: &DirTree, key: &[u8]) -> Option<Hash> {
    t.get(key)
}

fn check_honest(t: &DirTree, key: &[u8]) {
    let (root, n) = (t.root(), t.len());
    let proof = t.prove(key);
    let v = claim(t, key);
    verify_dir(&root, n, key, v.as_ref(), &proof).unwrap_or_else(|e| panic!("n={n} key={key:?}: {e}"));
    // The opposite claim never verifies.
    match v {
        Some(v) => {
            assert!(matches!(proof, DirProof::Present { .. }));
            assert!(verify_dir(&root, n, key, None, &proof).is_err());
            let mut w = v;
            w[0] ^= 1;
            assert_eq!(verify_dir(&root, n, key, Some(&w), &proof), Err(ProofError::RootMismatch));
        }
        None => {
            assert!(!matches!(proof, DirProof::Present { .. }));
            assert!(verify_dir(&root, n, key, Some(&value_of(key)), &proof).is_err());
        }
    }
}

fn flip(h: &mut Hash, byte: usize) {
    h[byte % 32] ^= 0x80;
}

/// Every single-neighbour tampering.
fn tampered_neighbours(n: &Neighbour) -> Vec<Neighbour> {
    let mut out = Vec::new();
    for j in 0..n.path.len() {
        for byte in [0, 17, 31] {
            let mut m = n.clone();
            flip(&mut m.path[j], byte);
            out.push(m);
        }
    }
    let mut m = n.clone();
    flip(&mut m.value_hash, 3);
    out.push(m);
    let mut m = n.clone();
    m.key.push(0);
    out.push(m);
    for idx in [n.index.wrapping_add(1), n.index.wrapping_sub(1), n.index ^ 2, u64::MAX] {
        let mut m = n.clone();
        m.index = idx;
        out.push(m);
    }
    if !n.path.is_empty() {
        let mut m = n.clone();
        m.path.pop();
        out.push(m);
        let mut m = n.clone();
        m.path.remove(0);
        out.push(m);
        let mut m = n.clone();
        m.path.swap(0, n.path.len() - 1);
        if m.path != n.path {
            out.push(m);
        }
    }
    let mut m = n.clone();
    m.path.push([0; 32]);
    out.push(m);
    let mut m = n.clone();
    m.path.insert(0, [9; 32]);
    out.push(m);
    out
}

/// Every tampering of an honest proof for `key` in `t`; none may verify for the honest claim.
fn tampered(t: &DirTree, key: &[u8], proof: &DirProof) -> Vec<DirProof> {
    let mut out = Vec::new();
    match proof {
        DirProof::Present { index, path } => {
            for j in 0..path.len() {
                for byte in [0, 13, 31] {
                    let mut p = path.clone();
                    flip(&mut p[j], byte);
                    out.push(DirProof::Present { index: *index, path: p });
                }
            }
            for idx in [index.wrapping_add(1), index.wrapping_sub(1), index ^ 1, u64::MAX] {
                out.push(DirProof::Present { index: idx, path: path.clone() });
            }
            if !path.is_empty() {
                out.push(DirProof::Present { index: *index, path: path[..path.len() - 1].to_vec() });
                out.push(DirProof::Present { index: *index, path: path[1..].to_vec() });
            }
            let mut p = path.clone();
            p.push(t.root());
            out.push(DirProof::Present { index: *index, path: p });
            // Absence proofs built from the real leaves around the present key.
            let i = *index;
            if i > 0 {
                out.push(DirProof::AbsentBetween(neighbour(t, i - 1), neighbour(t, i)));
            }
            if i + 1 < t.len() {
                out.push(DirProof::AbsentBetween(neighbour(t, i), neighbour(t, i + 1)));
            }
            if i > 0 && i + 1 < t.len() {
                out.push(DirProof::AbsentBetween(neighbour(t, i - 1), neighbour(t, i + 1)));
            }
            out.push(DirProof::AbsentBefore(neighbour(t, 0)));
            out.push(DirProof::AbsentAfter(neighbour(t, t.len() - 1)));
            out.push(DirProof::AbsentEmpty);
        }
        DirProof::AbsentEmpty => {
            out.push(DirProof::Present { index: 0, path: vec![] });
        }
        DirProof::AbsentBefore(n) => {
            out.extend(tampered_neighbours(n).into_iter().map(DirProof::AbsentBefore));
            out.push(DirProof::AbsentAfter(n.clone()));
            out.push(DirProof::AbsentBetween(n.clone(), n.clone()));
            out.push(DirProof::AbsentEmpty);
            out.push(DirProof::Present { index: 0, path: n.path.clone() });
            if t.len() > 1 {
                out.push(DirProof::AbsentBefore(neighbour(t, 1)));
                out.push(DirProof::AbsentBetween(neighbour(t, 0), neighbour(t, 1)));
            }
        }
        DirProof::AbsentAfter(n) => {
            out.extend(tampered_neighbours(n).into_iter().map(DirProof::AbsentAfter));
            out.push(DirProof::AbsentBefore(n.clone()));
            out.push(DirProof::AbsentEmpty);
            out.push(DirProof::Present { index: n.index, path: n.path.clone() });
            if t.len() > 1 {
                let l = t.len();
                out.push(DirProof::AbsentAfter(neighbour(t, l - 2)));
                out.push(DirProof::AbsentBetween(neighbour(t, l - 2), neighbour(t, l - 1)));
            }
        }
        DirProof::AbsentBetween(l, r) => {
            for m in tampered_neighbours(l) {
                out.push(DirProof::AbsentBetween(m, r.clone()));
            }
            for m in tampered_neighbours(r) {
                out.push(DirProof::AbsentBetween(l.clone(), m));
            }
            // Swapped, non-adjacent, and neighbours of other gaps.
            out.push(DirProof::AbsentBetween(r.clone(), l.clone()));
            if r.index + 1 < t.len() {
                out.push(DirProof::AbsentBetween(l.clone(), neighbour(t, r.index + 1)));
                out.push(DirProof::AbsentBetween(r.clone(), neighbour(t, r.index + 1)));
            }
            if l.index > 0 {
                out.push(DirProof::AbsentBetween(neighbour(t, l.index - 1), r.clone()));
                out.push(DirProof::AbsentBetween(neighbour(t, l.index - 1), l.clone()));
            }
            out.push(DirProof::AbsentBefore(l.clone()));
            out.push(DirProof::AbsentBefore(r.clone()));
            out.push(DirProof::AbsentAfter(l.clone()));
            out.push(DirProof::AbsentAfter(r.clone()));
            out.push(DirProof::AbsentEmpty);
            out.push(DirProof::Present { index: l.index, path: l.path.clone() });
        }
    }
    let _ = key;
    out
}

fn check_tampered(t: &DirTree, key: &[u8]) -> usize {
    let (root, n) = (t.root(), t.len());
    let proof = t.prove(key);
    let v = claim(t, key);
    let mut count = 0;
    for bad in tampered(t, key, &proof) {
        assert_ne!(bad, proof);
        assert!(verify_dir(&root, n, key, v.as_ref(), &bad).is_err(), "n={n} key={key:?} accepted {bad:?}");
        count += 1;
    }
    // The honest proof against another root, or a size whose shape cannot match.
    let mut other = root;
    flip(&mut other, 5);
    assert!(verify_dir(&other, n, key, v.as_ref(), &proof).is_err());
    assert!(verify_dir(&root, 2 * n + 1, key, v.as_ref(), &proof).is_err());
    if n > 0 {
        assert!(verify_dir(&root, 0, key, v.as_ref(), &proof).is_err());
        assert!(verify_dir(&root, u64::MAX, key, v.as_ref(), &proof).is_err());
    }
    count
}

// ---------------------------------------------------------------------------------------
// Directory tree.

#[test]
fn dir_roots_match_naive_rfc6962() {
    for n in 0..=33 {
        let t = even_tree(n);
        assert_eq!(t.len(), n as u64);
        assert_eq!(t.root(), naive_mth(&leaf_hashes(&t), LABEL_DIR_NODE, dir_empty_root()), "n={n}");
        for i in 0..n {
            assert_eq!(t.inclusion_path(i as u64), naive_path(i, &leaf_hashes(&t), LABEL_DIR_NODE));
        }
    }
    assert_eq!(DirTree::build(vec![]).root(), hash("nymstr/v1/kt/dir-empty", &[]));
    // One leaf: the root is the leaf hash.
    let t = even_tree(1);
    assert_eq!(t.root(), dir_leaf_hash(&[2], &value_of(&[2])).unwrap());
}

#[test]
fn dir_every_key_and_every_gap_sizes_0_to_33() {
    for n in 0..=33 {
        let t = even_tree(n);
        for key in probes(n) {
            check_honest(&t, &key);
            let proof = t.prove(&key);
            let expect = match (t.get(&key), key.as_slice()) {
                (Some(_), _) => "present",
                (None, _) if n == 0 => "empty",
                (None, k) if k < &[2u8][..] => "before",
                (None, k) if k > &[2 * n as u8][..] => "after",
                _ => "between",
            };
            let got = match proof {
                DirProof::Present { .. } => "present",
                DirProof::AbsentEmpty => "empty",
                DirProof::AbsentBefore(_) => "before",
                DirProof::AbsentAfter(_) => "after",
                DirProof::AbsentBetween(..) => "between",
            };
            assert_eq!(got, expect, "n={n} key={key:?}");
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
    assert_eq!(t.root(), naive_mth(&leaf_hashes(&t), LABEL_DIR_NODE, dir_empty_root()));
    for k in &keys {
        check_honest(&t, k);
    }
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
        assert!(verify_dir(&b.root(), 10, &key, v.as_ref(), &a.prove(&key)).is_err(), "{key:?}");
    }
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
        for m in 0..n {
            let p = log.inclusion_proof(m as u64, n as u64);
            assert_eq!(p, naive_path(m, d, LABEL_LOG_NODE), "path {m} of {n}");
            verify_log_inclusion(&leaves[m], m as u64, n as u64, &p, &root).unwrap();
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

fn arb_neighbour() -> impl Strategy<Value = Neighbour> {
    (
        arb_index(),
        proptest::collection::vec(any::<u8>(), 0..8),
        arb_hash(),
        proptest::collection::vec(arb_hash(), 0..70),
    )
        .prop_map(|(index, key, value_hash, path)| Neighbour { index, key, value_hash, path })
}

fn arb_proof() -> impl Strategy<Value = DirProof> {
    prop_oneof![
        (arb_index(), proptest::collection::vec(arb_hash(), 0..70))
            .prop_map(|(index, path)| DirProof::Present { index, path }),
        Just(DirProof::AbsentEmpty),
        arb_neighbour().prop_map(DirProof::AbsentBefore),
        arb_neighbour().prop_map(DirProof::AbsentAfter),
        (arb_neighbour(), arb_neighbour()).prop_map(|(l, r)| DirProof::AbsentBetween(l, r)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn prop_honest_proofs_verify_and_lies_do_not(
        keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..60),
        lookups in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 1..20),
    ) {
        let t = DirTree::build(keys.iter().map(|k| (k.clone(), value_of(k))).collect());
        let (root, n) = (t.root(), t.len());
        for k in keys.iter().chain(&lookups) {
            let proof = t.prove(k);
            let present = keys.contains(k);
            prop_assert_eq!(t.get(k).is_some(), present);
            let truth = present.then(|| value_of(k));
            prop_assert!(verify_dir(&root, n, k, truth.as_ref(), &proof).is_ok());
            let lie = if present { None } else { Some(value_of(k)) };
            prop_assert!(verify_dir(&root, n, k, lie.as_ref(), &proof).is_err());
            if present {
                let mut w = value_of(k);
                w[31] ^= 1;
                prop_assert!(verify_dir(&root, n, k, Some(&w), &proof).is_err());
            }
        }
    }

    #[test]
    fn prop_garbage_dir_proofs_never_panic(
        root in arb_hash(),
        size in arb_index(),
        key in proptest::collection::vec(any::<u8>(), 0..8),
        value in proptest::option::of(arb_hash()),
        proof in arb_proof(),
    ) {
        let _ = verify_dir(&root, size, &key, value.as_ref(), &proof);
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

#[test]
fn print_vectors() {
    let t = vector_dir();
    println!("dir_empty {}", hx(&dir_empty_root()));
    println!("log_empty {}", hx(&log_empty_root()));
    for (k, v) in t.iter() {
        println!("value {} {}", String::from_utf8_lossy(k), hx(v));
        println!("leaf {} {}", String::from_utf8_lossy(k), hx(&dir_leaf_hash(k, v).unwrap()));
    }
    println!("dir_root {}", hx(&t.root()));
    for k in ["alice", "bob", "carol", "aaron", "bobby", "dave"] {
        println!("prove {k} {:?}", t.prove(k.as_bytes()));
    }
    let log = vector_log();
    for i in 0..5 {
        println!("log_leaf {i} {}", hx(&log.leaf(i).unwrap()));
    }
    for s in 1..=5 {
        println!("log_root {s} {}", hx(&log.root_at(s)));
    }
    println!("incl 2 5 {:?}", log.inclusion_proof(2, 5).iter().map(hx).collect::<Vec<_>>());
    println!("incl 4 5 {:?}", log.inclusion_proof(4, 5).iter().map(hx).collect::<Vec<_>>());
    println!("cons 3 5 {:?}", log.consistency_proof(3, 5).iter().map(hx).collect::<Vec<_>>());
    println!("cons 2 5 {:?}", log.consistency_proof(2, 5).iter().map(hx).collect::<Vec<_>>());
    println!(
        "codec leaf 1 {}",
        hex::encode(nymstr_node::codec::encode(&EpochLeaf { epoch: 1, dir_root: [1; 32], dir_size: 1 }))
    );
}
