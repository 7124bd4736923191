//! Merkle trees of the transparency log (`specs/transparency.md`): presence and absence
//! proofs of the directory tree, inclusion and consistency proofs of the head log, their
//! rejection when tampered with, an independent naive RFC 6962 implementation to compare
//! against, and the published test vectors (§5).

use nymstr_proto::federation::merkle::{
    DirProof, DirTree, LABEL_DIR_ENTRY, LABEL_DIR_NODE, LABEL_LOG_NODE, LogTree, Neighbour, ProofError, dir_empty_root,
    dir_leaf_hash, hash, log_empty_root, log_leaf_hash, verify_consistency, verify_dir, verify_log_inclusion,
};
use nymstr_proto::federation::{EpochLeaf, Hash};
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

fn hexes(v: &[Hash]) -> Vec<String> {
    v.iter().map(hx).collect()
}

const DIR_EMPTY: &str = "363a0848d4e1a5a7e0155e06cf4dba35e5fd1a64da287228e60ec75eccf2b39a";
const LOG_EMPTY: &str = "b514ccf06604015b815da21b8928f8cc9172d882c8bfd3979e02cc097f97f640";
const V_ALICE: &str = "c777bc2afae4019285d0fc710fa2ba12268265f3d6a2a9e7994060e2f37bb5a7";
const V_BOB: &str = "de2dfcc8bb7c55f8e9e9639a54581cfe96bcca7f06b1d17a14867804cfe92dcb";
const V_CAROL: &str = "a7949bffa68965237984066a5c18d04e577cc63809f4c2071be2b71cf2fd6cda";
const L_ALICE: &str = "15de1619366e8ce698b3f4be0d6a7b83a837fba62fcad45df14896dda013fc93";
const L_BOB: &str = "0ab3e5559ce616e75c7737b05db9a777bc5d8a35065e9527b5e61c605f8318e3";
const L_CAROL: &str = "257bf94db28caf6aecc3412c401f83c08fcc7958562d746fc6243cc6af81b45d";
const N_ALICE_BOB: &str = "f7c24bc25376c02da56c878c76b79da7f911ecbf7ad8e72dfc26f2cd87dfdcf1";
const DIR_ROOT: &str = "9afe4f5807a08335a932c62b62f7b86099845f76736a0f77b801fd4a204b614e";

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
    let got: Vec<(String, String)> = t.iter().map(|(k, v)| (hx(v), hx(&dir_leaf_hash(k, v).unwrap()))).collect();
    let want = [(V_ALICE, L_ALICE), (V_BOB, L_BOB), (V_CAROL, L_CAROL)];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(hx(&t.root()), DIR_ROOT);
    // The root by hand: node(node(alice, bob), carol).
    let h = |s: &str| -> Hash { hex::decode(s).unwrap().try_into().unwrap() };
    assert_eq!(hash(LABEL_DIR_NODE, &[&h(L_ALICE), &h(L_BOB)]), h(N_ALICE_BOB));
    assert_eq!(hash(LABEL_DIR_NODE, &[&h(N_ALICE_BOB), &h(L_CAROL)]), h(DIR_ROOT));
    // Leaf encoding by hand: u16_le(5) || "alice" || value.
    assert_eq!(hash("nymstr/v1/kt/dir-leaf", &[&[5, 0], b"alice", &h(V_ALICE)]), h(L_ALICE));

    let present = |k: &str| match t.prove(k.as_bytes()) {
        DirProof::Present { index, path } => (index, hexes(&path)),
        p => panic!("{p:?}"),
    };
    assert_eq!(present("alice"), (0, vec![L_BOB.to_string(), L_CAROL.to_string()]));
    assert_eq!(present("bob"), (1, vec![L_ALICE.to_string(), L_CAROL.to_string()]));
    assert_eq!(present("carol"), (2, vec![N_ALICE_BOB.to_string()]));
    let nb = |n: &Neighbour| (n.index, String::from_utf8(n.key.clone()).unwrap(), hx(&n.value_hash), hexes(&n.path));
    let DirProof::AbsentBefore(n) = t.prove(b"aaron") else { panic!() };
    assert_eq!(nb(&n), nb(&neighbour(&t, 0)));
    assert_eq!(n.path.len(), 2);
    let DirProof::AbsentBetween(l, r) = t.prove(b"bobby") else { panic!() };
    assert_eq!((nb(&l).0, nb(&l).1, nb(&r).0, nb(&r).1), (1, "bob".into(), 2, "carol".into()));
    assert_eq!(hexes(&r.path), vec![N_ALICE_BOB.to_string()]);
    let DirProof::AbsentAfter(n) = t.prove(b"dave") else { panic!() };
    assert_eq!((n.index, hexes(&n.path)), (2, vec![N_ALICE_BOB.to_string()]));
    assert_eq!(t.prove(b"zed"), DirProof::AbsentAfter(n));
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
