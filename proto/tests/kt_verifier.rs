//! Node identity, signed-head evidence, the witness check and the client's transparency
//! verifier (`specs/trust.md`). Logs are built by hand from `merkle::DirTree` / `LogTree`.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use nymstr_proto::codec;
use nymstr_proto::federation::descriptor::{self, DescriptorError, QualifiedName, QualifiedNameError};
use nymstr_proto::federation::evidence::{self, EvidenceError, WitnessVerdict, WitnessView};
use nymstr_proto::federation::merkle::{self, DirEnd, DirTree, LogTree};
use nymstr_proto::federation::verify::{Outcome, TrustPolicy, Verifier};
use nymstr_proto::federation::{
    Cosignature, DirEntry, EntryStatus, EpochLeaf, LookupProof, NodeDescriptor, NodeId, Roles, SignedHead, TreeHead,
};
use nymstr_proto::identity::{UsernameError, generate_signing_key};
use nymstr_proto::wire::PublicKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

// --- a hand-built log ---

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn public(k: &SigningKey) -> PublicKey {
    k.verifying_key().to_bytes()
}

fn descriptor_of(k: &SigningKey) -> NodeDescriptor {
    descriptor::sign(k, b"node.example:4000".to_vec(), Roles { discovery: true, group: false }, "tofu".into(), 1, 1)
}

fn entry(username: &str, key: PublicKey, seq: u64, epoch: u64, status: EntryStatus) -> DirEntry {
    DirEntry { username: username.into(), account_key: key, installations: vec![], status, seq, epoch }
}

/// One node's log: the directory of every epoch, the head log, the signed heads.
struct Log {
    key: SigningKey,
    id: NodeId,
    dir: BTreeMap<String, DirEntry>,
    snapshots: Vec<BTreeMap<String, DirEntry>>,
    log: LogTree,
    heads: Vec<SignedHead>,
}

impl Log {
    fn new(key: SigningKey) -> Self {
        let id = descriptor::node_id(&public(&key));
        Log { key, id, dir: BTreeMap::new(), snapshots: vec![], log: LogTree::new(), heads: vec![] }
    }

    fn put(&mut self, e: DirEntry) -> &mut Self {
        self.dir.insert(e.username.clone(), e);
        self
    }

    fn tree(dir: &BTreeMap<String, DirEntry>) -> DirTree {
        DirTree::build(dir.iter().map(|(k, e)| (k.as_bytes().to_vec(), merkle::entry_hash(e))).collect())
    }

    /// Closes the next epoch and signs its head.
    fn publish(&mut self) -> SignedHead {
        let epoch = self.heads.len() as u64;
        let tree = Self::tree(&self.dir);
        self.log.push(merkle::log_leaf_hash(&EpochLeaf { epoch, dir_root: tree.root(), dir_size: tree.len() }));
        let head = TreeHead {
            node_id: self.id,
            epoch,
            dir_root: tree.root(),
            dir_size: tree.len(),
            log_root: self.log.root_at(epoch + 1),
            issued_at_us: 1_000 * (epoch + 1),
        };
        let signed = evidence::sign_head(&self.key, head);
        self.snapshots.push(self.dir.clone());
        self.heads.push(signed.clone());
        signed
    }

    /// The node's honest answer for `username` at `epoch`, consistency from `from_size`.
    fn lookup(&self, epoch: u64, username: &str, from_size: u64) -> LookupProof {
        let dir = &self.snapshots[epoch as usize];
        let tree = Self::tree(dir);
        let consistency = if from_size > 0 && from_size < epoch + 1 {
            self.log.consistency_proof(from_size, epoch + 1)
        } else {
            vec![]
        };
        LookupProof {
            head: self.heads[epoch as usize].clone(),
            cosignatures: vec![],
            entry: dir.get(username).cloned(),
            dir_proof: tree.prove(username.as_bytes()),
            from_log_size: from_size,
            consistency,
        }
    }
}

struct World {
    log: Log,
    alice_k1: PublicKey,
    alice_k2: PublicKey,
    witnesses: Vec<SigningKey>,
}

/// Epoch 0: alice (k1, seq 1), bob. Epoch 1: alice (k2, seq 2). Epoch 2: carol added.
fn world() -> World {
    let mut r = rng(42);
    let mut log = Log::new(generate_signing_key(&mut r));
    let alice_k1 = public(&generate_signing_key(&mut r));
    let alice_k2 = public(&generate_signing_key(&mut r));
    let bob = public(&generate_signing_key(&mut r));
    let witnesses = (0..4).map(|_| generate_signing_key(&mut r)).collect();
    log.put(entry("alice", alice_k1, 1, 0, EntryStatus::Active)).put(entry("bob", bob, 1, 0, EntryStatus::Active));
    log.publish();
    log.put(entry("alice", alice_k2, 2, 1, EntryStatus::Active));
    log.publish();
    log.put(entry("carol", bob, 1, 2, EntryStatus::Active));
    log.publish();
    World { log, alice_k1, alice_k2, witnesses }
}

fn verifier(w: &World, policy: TrustPolicy) -> Verifier {
    let mut v = Verifier::new(policy);
    v.learn_node(&descriptor_of(&w.log.key)).unwrap();
    for k in &w.witnesses {
        v.learn_node(&descriptor_of(k)).unwrap();
    }
    v
}

/// Looks `username` up at `epoch`, consistency from what `v` already holds.
fn look(v: &mut Verifier, w: &World, epoch: u64, username: &str) -> Outcome {
    let p = w.log.lookup(epoch, username, v.known_log_size(&w.log.id));
    v.check_lookup(&w.log.id, username, &p)
}

// --- the verifier: outcomes ---

#[test]
fn verified_pins_on_first_use_and_advances_the_head() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::Tofu);
    assert_eq!(v.known_log_size(&w.log.id), 0);
    assert!(v.pin(&w.log.id, "alice").is_none());
    let out = look(&mut v, &w, 0, "alice");
    assert!(matches!(&out, Outcome::Verified(e) if e.account_key == w.alice_k1), "{out:?}");
    assert_eq!(out.name(), "verified");
    let pin = v.pin(&w.log.id, "ALICE").unwrap();
    assert_eq!((pin.account_key, pin.seq, pin.epoch), (w.alice_k1, 1, 0));
    assert_eq!(v.known_log_size(&w.log.id), 1);
    // Same head again, and a newer head with the same key: both verify.
    assert!(matches!(look(&mut v, &w, 0, "alice"), Outcome::Verified(_)));
    assert!(matches!(look(&mut v, &w, 2, "bob"), Outcome::Verified(_)));
    assert_eq!(v.known_log_size(&w.log.id), 3);
}

#[test]
fn key_change_is_reported_and_pin_kept_until_accepted() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::Tofu);
    assert!(matches!(look(&mut v, &w, 0, "alice"), Outcome::Verified(_)));
    let out = look(&mut v, &w, 1, "alice");
    let Outcome::KeyChanged { old, new, entry } = out.clone() else { panic!("{out:?}") };
    assert_eq!((old, new), (w.alice_k1, w.alice_k2));
    assert_eq!(out.name(), "key_changed");
    assert_eq!(v.pin(&w.log.id, "alice").unwrap().account_key, w.alice_k1);
    // Asked again: still a change, the pin did not move by itself.
    assert!(matches!(look(&mut v, &w, 1, "alice"), Outcome::KeyChanged { .. }));
    assert!(v.accept_key_change(&w.log.id, "alice", &entry));
    assert_eq!(v.pin(&w.log.id, "alice").unwrap().account_key, w.alice_k2);
    assert!(matches!(look(&mut v, &w, 2, "alice"), Outcome::Verified(e) if e.account_key == w.alice_k2));
}

#[test]
fn older_epoch_is_a_rollback() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::Tofu);
    assert!(matches!(look(&mut v, &w, 2, "bob"), Outcome::Verified(_)));
    let p = w.log.lookup(1, "bob", 0);
    assert_eq!(v.check_lookup(&w.log.id, "bob", &p), Outcome::Rollback);
    assert_eq!(v.known_log_size(&w.log.id), 3);
}

#[test]
fn lower_seq_than_the_pin_is_a_rollback() {
    let mut r = rng(7);
    let mut log = Log::new(generate_signing_key(&mut r));
    let k = public(&generate_signing_key(&mut r));
    log.put(entry("alice", k, 5, 0, EntryStatus::Active));
    log.publish();
    // The node rewinds alice's entry to an older version under a newer head.
    log.put(entry("alice", k, 4, 1, EntryStatus::Active));
    log.publish();
    let mut v = Verifier::new(TrustPolicy::Tofu);
    v.learn_node(&descriptor_of(&log.key)).unwrap();
    assert!(matches!(v.check_lookup(&log.id, "alice", &log.lookup(0, "alice", 0)), Outcome::Verified(_)));
    let out = v.check_lookup(&log.id, "alice", &log.lookup(1, "alice", 1));
    assert_eq!(out, Outcome::Rollback);
    assert_eq!(v.pin(&log.id, "alice").unwrap().seq, 5);
}

#[test]
fn bad_head_signature_is_inconsistent() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::Tofu);
    let mut p = w.log.lookup(0, "alice", 0);
    p.head.sig.0[5] ^= 1;
    assert!(matches!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Inconsistent(_)));
    // A head signed by another key but naming this node.
    let mut p = w.log.lookup(0, "alice", 0);
    p.head = evidence::sign_head(&w.witnesses[0], p.head.head.clone());
    assert!(matches!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Inconsistent(_)));
    // A tampered head field under the old signature.
    let mut p = w.log.lookup(0, "alice", 0);
    p.head.head.dir_size += 1;
    let out = v.check_lookup(&w.log.id, "alice", &p);
    assert_eq!(out.name(), "inconsistent");
    assert!(v.pin(&w.log.id, "alice").is_none());
    assert_eq!(v.known_log_size(&w.log.id), 0);
}

#[test]
fn tampered_directory_proof_is_inconsistent() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::Tofu);
    // Substituted key under the honest proof.
    let mut p = w.log.lookup(0, "alice", 0);
    p.entry.as_mut().unwrap().account_key = w.alice_k2;
    assert!(matches!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Inconsistent(_)));
    // A flipped path hash.
    let mut p = w.log.lookup(0, "alice", 0);
    assert_eq!(p.dir_proof.end, DirEnd::Leaf, "presence proof expected");
    p.dir_proof.siblings.first_mut().expect("a sibling (bob)")[0] ^= 1;
    assert!(matches!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Inconsistent(_)));
    // Bob's honest entry and proof offered as alice's.
    let p = w.log.lookup(0, "bob", 0);
    assert!(matches!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Inconsistent(_)));
    // Alice hidden: "absent" with alice's presence proof.
    let mut p = w.log.lookup(0, "alice", 0);
    p.entry = None;
    assert!(matches!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Inconsistent(_)));
    assert!(v.pin(&w.log.id, "alice").is_none());
    assert!(matches!(look(&mut v, &w, 0, "alice"), Outcome::Verified(_)));
}

#[test]
fn bad_consistency_proof_or_wrong_start_is_inconsistent() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::Tofu);
    assert!(matches!(look(&mut v, &w, 0, "bob"), Outcome::Verified(_)));
    let mut p = w.log.lookup(2, "bob", 1);
    assert!(!p.consistency.is_empty());
    p.consistency[0][3] ^= 1;
    assert!(matches!(v.check_lookup(&w.log.id, "bob", &p), Outcome::Inconsistent(_)));
    let mut p = w.log.lookup(2, "bob", 1);
    p.consistency.clear();
    assert!(matches!(v.check_lookup(&w.log.id, "bob", &p), Outcome::Inconsistent(_)));
    // An honest proof, but from a size the client never held.
    let p = w.log.lookup(2, "bob", 2);
    assert!(matches!(v.check_lookup(&w.log.id, "bob", &p), Outcome::Inconsistent(_)));
    assert_eq!(v.known_log_size(&w.log.id), 1);
    // A rewritten history: same key, a different epoch 0, so no proof links it.
    let mut alt = Log::new(w.log.key.clone());
    alt.put(entry("bob", w.alice_k2, 1, 0, EntryStatus::Active));
    alt.publish();
    alt.publish();
    alt.publish();
    let p = alt.lookup(2, "bob", 1);
    assert!(matches!(v.check_lookup(&w.log.id, "bob", &p), Outcome::Inconsistent(_)));
    assert!(matches!(look(&mut v, &w, 2, "bob"), Outcome::Verified(_)));
}

#[test]
fn revoked_migrated_and_absent() {
    let mut r = rng(9);
    let mut log = Log::new(generate_signing_key(&mut r));
    let k = public(&generate_signing_key(&mut r));
    let there = NodeId([3; 32]);
    log.put(entry("alice", k, 1, 0, EntryStatus::Active)).put(entry("dave", k, 1, 0, EntryStatus::Active));
    log.publish();
    log.put(entry("alice", k, 2, 1, EntryStatus::Revoked)).put(entry(
        "dave",
        k,
        2,
        1,
        EntryStatus::Migrated { to: there },
    ));
    log.publish();
    let mut v = Verifier::new(TrustPolicy::Tofu);
    v.learn_node(&descriptor_of(&log.key)).unwrap();
    assert!(matches!(v.check_lookup(&log.id, "alice", &log.lookup(0, "alice", 0)), Outcome::Verified(_)));
    assert_eq!(v.check_lookup(&log.id, "zed", &log.lookup(0, "zed", 1)), Outcome::Absent);
    assert_eq!(v.check_lookup(&log.id, "aaron", &log.lookup(0, "aaron", 1)), Outcome::Absent);
    assert_eq!(v.check_lookup(&log.id, "bert", &log.lookup(0, "bert", 1)), Outcome::Absent);
    assert_eq!(v.check_lookup(&log.id, "alice", &log.lookup(1, "alice", 1)), Outcome::Revoked);
    assert_eq!(v.check_lookup(&log.id, "dave", &log.lookup(1, "dave", 2)), Outcome::Migrated { to: there });
    // An empty directory proves absence too; a pin survives it.
    log.dir.clear();
    log.publish();
    assert_eq!(v.check_lookup(&log.id, "alice", &log.lookup(2, "alice", 2)), Outcome::Absent);
    assert_eq!(v.pin(&log.id, "alice").unwrap().seq, 1);
    assert_eq!(v.known_log_size(&log.id), 3);
}

#[test]
fn two_heads_for_one_epoch_fork_the_node() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::Tofu);
    assert!(matches!(look(&mut v, &w, 0, "alice"), Outcome::Verified(_)));
    // The node shows a second epoch-0 head (bob removed) to the same client.
    let mut alt = Log::new(w.log.key.clone());
    alt.put(entry("alice", w.alice_k1, 1, 0, EntryStatus::Active));
    alt.publish();
    let p = alt.lookup(0, "alice", 0);
    assert_eq!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Forked);
    assert!(v.is_distrusted(&w.log.id));
    let cert = v.fork_certificate(&w.log.id).unwrap().clone();
    assert_eq!(evidence::verify_fork(&cert, &public(&w.log.key)), Ok(()));
    assert!(evidence::head_hash(&cert.a.head) < evidence::head_hash(&cert.b.head));
    // Every later lookup, even an honest one, is refused.
    assert_eq!(look(&mut v, &w, 2, "bob"), Outcome::Forked);
    // Gossip: another client learns the fork once.
    let mut other = verifier(&w, TrustPolicy::Tofu);
    assert!(other.on_fork_certificate(&cert));
    assert!(!other.on_fork_certificate(&cert));
    assert_eq!(look(&mut other, &w, 0, "alice"), Outcome::Forked);
    // A certificate that is not a fork, or for an unknown node, changes nothing.
    let mut third = verifier(&w, TrustPolicy::Tofu);
    let same = evidence::fork_certificate(&cert.a, &cert.a);
    assert!(same.is_none());
    let mut forged = cert.clone();
    forged.b.sig.0[0] ^= 1;
    assert!(!third.on_fork_certificate(&forged));
    let mut stranger = Verifier::new(TrustPolicy::Tofu);
    assert!(!stranger.on_fork_certificate(&cert));
    assert!(!third.is_distrusted(&w.log.id));
}

fn with_cosigs(mut p: LookupProof, cosigs: Vec<Cosignature>) -> LookupProof {
    p.cosignatures = cosigs;
    p
}

#[test]
fn witness_quorum_counts_distinct_known_valid_witnesses() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::WitnessQuorum { required: 2 });
    let p = w.log.lookup(0, "alice", 0);
    let c = |k: &SigningKey| evidence::cosign(k, &p.head);
    let need = |have| Outcome::NotEnoughWitnesses { have, need: 2 };
    let id = w.log.id;
    assert_eq!(v.check_lookup(&id, "alice", &p), need(0));
    // The same witness twice counts once.
    let dup = with_cosigs(p.clone(), vec![c(&w.witnesses[0]), c(&w.witnesses[0])]);
    assert_eq!(v.check_lookup(&id, "alice", &dup), need(1));
    // The node cosigning itself does not count.
    let own = with_cosigs(p.clone(), vec![c(&w.witnesses[0]), c(&w.log.key)]);
    assert_eq!(v.check_lookup(&id, "alice", &own), need(1));
    // A witness the client does not know does not count.
    let stranger = generate_signing_key(&mut rng(99));
    let unknown = with_cosigs(p.clone(), vec![c(&w.witnesses[0]), c(&stranger)]);
    assert_eq!(v.check_lookup(&id, "alice", &unknown), need(1));
    // A bad signature, or a cosignature of another head, does not count.
    let mut bad = c(&w.witnesses[1]);
    bad.sig[0] ^= 1;
    let other_head = evidence::cosign(&w.witnesses[2], &w.log.heads[1]);
    let bad = with_cosigs(p.clone(), vec![c(&w.witnesses[0]), bad, other_head]);
    assert_eq!(v.check_lookup(&id, "alice", &bad), need(1));
    assert_eq!(need(1).name(), "not_enough_witnesses");
    assert!(v.pin(&id, "alice").is_none());
    let good = with_cosigs(p.clone(), vec![c(&w.witnesses[0]), c(&w.witnesses[0]), c(&w.witnesses[3])]);
    assert!(matches!(v.check_lookup(&id, "alice", &good), Outcome::Verified(_)));
}

#[test]
fn allowlist_refuses_unlisted_nodes_and_unknown_nodes_are_unknown() {
    let w = world();
    let listed = descriptor::node_id(&public(&w.witnesses[0]));
    let mut v = verifier(&w, TrustPolicy::Allowlist { nodes: BTreeSet::from([listed]) });
    assert_eq!(look(&mut v, &w, 0, "alice"), Outcome::NotAllowed);
    let mut v = verifier(&w, TrustPolicy::Allowlist { nodes: BTreeSet::from([listed, w.log.id]) });
    assert!(matches!(look(&mut v, &w, 0, "alice"), Outcome::Verified(_)));
    let mut fresh = Verifier::new(TrustPolicy::Tofu);
    assert_eq!(look(&mut fresh, &w, 0, "alice"), Outcome::UnknownNode);
}

#[test]
fn verifier_state_persists_through_the_codec() {
    let w = world();
    let mut v = verifier(&w, TrustPolicy::WitnessQuorum { required: 1 });
    let p = w.log.lookup(0, "alice", 0);
    let p = with_cosigs(p.clone(), vec![evidence::cosign(&w.witnesses[0], &p.head)]);
    assert!(matches!(v.check_lookup(&w.log.id, "alice", &p), Outcome::Verified(_)));
    let back: Verifier = codec::decode(&codec::encode(&v)).unwrap();
    assert_eq!(back, v);
    assert_eq!(back.pin(&w.log.id, "alice").unwrap().account_key, w.alice_k1);
    assert_eq!(back.known_log_size(&w.log.id), 1);
}

#[test]
fn trust_policies_parse_and_print() {
    let a = NodeId([0xab; 32]);
    let b = NodeId([0x01; 32]);
    for p in [
        TrustPolicy::Tofu,
        TrustPolicy::WitnessQuorum { required: 3 },
        TrustPolicy::Allowlist { nodes: BTreeSet::from([a, b]) },
    ] {
        assert_eq!(p.to_string().parse::<TrustPolicy>(), Ok(p.clone()));
    }
    assert_eq!("witness-quorum:3".parse(), Ok(TrustPolicy::WitnessQuorum { required: 3 }));
    assert_eq!(TrustPolicy::Allowlist { nodes: BTreeSet::from([a, b]) }.to_string(), format!("allowlist:{b},{a}"));
    assert!("witness-quorum:0".parse::<TrustPolicy>().is_err());
    assert!("witness-quorum:x".parse::<TrustPolicy>().is_err());
    assert!("allowlist:abcd".parse::<TrustPolicy>().is_err());
    assert!("trust-me".parse::<TrustPolicy>().is_err());
}

// --- evidence ---

#[test]
fn cosignatures_promises_and_fork_certificates_verify_strictly() {
    let w = world();
    let node = public(&w.log.key);
    let head = &w.log.heads[1];
    assert_eq!(evidence::verify_head(head, &node), Ok(()));
    assert_eq!(evidence::verify_head(head, &public(&w.witnesses[0])), Err(EvidenceError::WrongNode));
    let wk = public(&w.witnesses[0]);
    let c = evidence::cosign(&w.witnesses[0], head);
    assert_eq!(c.witness, descriptor::node_id(&wk));
    assert_eq!(evidence::verify_cosignature(&c, &wk, &head.head), Ok(()));
    assert_eq!(
        evidence::verify_cosignature(&c, &public(&w.witnesses[1]), &head.head),
        Err(EvidenceError::WrongWitness)
    );
    assert_eq!(evidence::verify_cosignature(&c, &wk, &w.log.heads[2].head), Err(EvidenceError::HeadMismatch));
    let mut bad = c.clone();
    bad.sig[10] ^= 1;
    assert_eq!(evidence::verify_cosignature(&bad, &wk, &head.head), Err(EvidenceError::BadSignature));

    let eh = merkle::entry_hash(&entry("alice", w.alice_k2, 2, 1, EntryStatus::Active));
    let pr = evidence::sign_promise(&w.log.key, "alice", eh, 2, 3);
    assert_eq!(evidence::verify_promise(&pr, &node), Ok(()));
    let mut later = pr.clone();
    later.deadline_epoch = 4;
    assert_eq!(evidence::verify_promise(&later, &node), Err(EvidenceError::BadSignature));
    assert_eq!(evidence::verify_promise(&pr, &wk), Err(EvidenceError::WrongNode));

    // Fork certificates: canonical whichever way round, only for one node and epoch.
    let mut alt = head.head.clone();
    alt.issued_at_us += 1;
    let alt = evidence::sign_head(&w.log.key, alt);
    let ab = evidence::fork_certificate(head, &alt).unwrap();
    assert_eq!(Some(ab.clone()), evidence::fork_certificate(&alt, head));
    assert_eq!(evidence::verify_fork(&ab, &node), Ok(()));
    assert_eq!(evidence::verify_fork(&ab, &wk), Err(EvidenceError::WrongNode));
    assert!(evidence::fork_certificate(head, &w.log.heads[2]).is_none());
    assert!(evidence::fork_certificate(head, head).is_none());
    let same = nymstr_proto::federation::ForkCertificate { a: head.clone(), b: head.clone() };
    assert_eq!(evidence::verify_fork(&same, &node), Err(EvidenceError::SameHead));
    let apart = nymstr_proto::federation::ForkCertificate { a: head.clone(), b: w.log.heads[2].clone() };
    assert_eq!(evidence::verify_fork(&apart, &node), Err(EvidenceError::NotSameEpoch));
    let mut unsigned = ab.clone();
    unsigned.b.head.dir_size += 7;
    assert_eq!(evidence::verify_fork(&unsigned, &node), Err(EvidenceError::BadSignature));
}

#[test]
fn witness_view_verdicts() {
    let w = world();
    let node = public(&w.log.key);
    let h = &w.log.heads;
    let mut view = WitnessView::new();
    // First head: accepted on its signature alone.
    assert_eq!(view.check(&h[1], &node, &[]), Ok(WitnessVerdict::Cosign));
    assert_eq!(view.last_size(&w.log.id), 2);
    assert_eq!(view.check(&h[1], &node, &[]), Ok(WitnessVerdict::AlreadyCosigned));
    // Older epoch, never seen: stale.
    assert_eq!(view.check(&h[0], &node, &[]), Ok(WitnessVerdict::Stale));
    // Newer epoch: needs a consistency proof from size 2.
    assert_eq!(view.check(&h[2], &node, &[]), Ok(WitnessVerdict::Inconsistent));
    let mut tampered = w.log.log.consistency_proof(2, 3);
    tampered[0][0] ^= 1;
    assert_eq!(view.check(&h[2], &node, &tampered), Ok(WitnessVerdict::Inconsistent));
    assert_eq!(view.last_size(&w.log.id), 2);
    assert_eq!(view.check(&h[2], &node, &w.log.log.consistency_proof(2, 3)), Ok(WitnessVerdict::Cosign));
    assert_eq!(view.last_size(&w.log.id), 3);
    // A bad signature is an error, not a verdict.
    let mut forged = h[2].clone();
    forged.sig.0[1] ^= 1;
    assert_eq!(view.check(&forged, &node, &[]), Err(EvidenceError::BadSignature));
    // A different head for an older epoch the witness kept: a fork, and the node stays forked.
    let mut other = h[1].head.clone();
    other.dir_size += 1;
    let other = evidence::sign_head(&w.log.key, other);
    let Ok(WitnessVerdict::Fork(cert)) = view.check(&other, &node, &[]) else { panic!("fork expected") };
    assert_eq!(evidence::verify_fork(&cert, &node), Ok(()));
    assert!(matches!(view.check(&h[2], &node, &[]), Ok(WitnessVerdict::Fork(_))));
    assert_eq!(view.fork(&w.log.id), Some(&cert));
    // Same epoch as the last, different head: a fork too.
    let mut view = WitnessView::new();
    assert_eq!(view.check(&h[1], &node, &[]), Ok(WitnessVerdict::Cosign));
    assert!(matches!(view.check(&other, &node, &[]), Ok(WitnessVerdict::Fork(_))));
    let back: WitnessView = codec::decode(&codec::encode(&view)).unwrap();
    assert_eq!(back, view);
}

#[test]
fn witness_view_keeps_a_bounded_history() {
    let mut r = rng(5);
    let mut log = Log::new(generate_signing_key(&mut r));
    let node = public(&log.key);
    let mut view = WitnessView::new();
    for e in 0..(evidence::WITNESS_RECENT_HEADS as u64 + 10) {
        let h = log.publish();
        let proof = if e == 0 { vec![] } else { log.log.consistency_proof(e, e + 1) };
        assert_eq!(view.check(&h, &node, &proof), Ok(WitnessVerdict::Cosign), "epoch {e}");
    }
    let fork_of = |epoch: usize| {
        let mut alt = log.heads[epoch].head.clone();
        alt.issued_at_us += 1;
        evidence::sign_head(&log.key, alt)
    };
    // Epoch 0 fell out of the window: only stale; a recent epoch is still caught.
    assert_eq!(view.check(&fork_of(0), &node, &[]), Ok(WitnessVerdict::Stale));
    assert!(matches!(view.check(&fork_of(log.heads.len() - 5), &node, &[]), Ok(WitnessVerdict::Fork(_))));
}

// --- descriptors and names ---

#[test]
fn descriptors_verify_and_newest_wins() {
    let mut r = rng(3);
    let k = generate_signing_key(&mut r);
    let d = descriptor_of(&k);
    assert_eq!(descriptor::verify(&d), Ok(()));
    assert_eq!(d.node_id, descriptor::node_id(&public(&k)));
    let mut forged = d.clone();
    forged.address = b"evil.example:4000".to_vec();
    assert_eq!(descriptor::verify(&forged), Err(DescriptorError::BadSignature));
    let mut other = d.clone();
    other.node_id = NodeId([1; 32]);
    assert_eq!(descriptor::verify(&other), Err(DescriptorError::NodeIdMismatch));
    let roles = Roles { discovery: true, group: true };
    let signed =
        |addr: Vec<u8>, policy: &str, epoch_us, at| descriptor::sign(&k, addr, roles, policy.into(), epoch_us, at);
    assert_eq!(descriptor::verify(&signed(vec![], "tofu", 1, 1)), Err(DescriptorError::EmptyAddress));
    assert_eq!(descriptor::verify(&signed(vec![b'a'; 256], "tofu", 1, 1)), Ok(()));
    assert_eq!(descriptor::verify(&signed(vec![b'a'; 257], "tofu", 1, 1)), Err(DescriptorError::AddressTooLong(257)));
    assert_eq!(descriptor::verify(&signed(vec![1], &"p".repeat(65), 1, 1)), Err(DescriptorError::PolicyTooLong(65)));
    assert_eq!(descriptor::verify(&signed(vec![1], "tofu", 0, 1)), Err(DescriptorError::ZeroEpoch));
    // Newest wins: strictly later, same node.
    let later = signed(vec![1], "tofu", 1, 2);
    assert!(descriptor::newer(&d, &later));
    assert!(!descriptor::newer(&later, &d));
    assert!(!descriptor::newer(&d, &d));
    let stranger = descriptor::sign(&generate_signing_key(&mut r), vec![1], roles, "tofu".into(), 1, 9);
    assert!(!descriptor::newer(&d, &stranger));
    // The verifier refuses to learn a forged descriptor.
    let mut v = Verifier::new(TrustPolicy::Tofu);
    assert_eq!(v.learn_node(&forged), Err(DescriptorError::BadSignature));
    assert!(v.node_key(&d.node_id).is_none());
    assert_eq!(v.learn_node(&d), Ok(()));
    assert_eq!(v.node_key(&d.node_id), Some(&public(&k)));
}

#[test]
fn qualified_names_parse() {
    let id = NodeId([0x5c; 32]);
    let hex = id.to_hex();
    let q = QualifiedName::parse(&format!("Alice@{hex}")).unwrap();
    assert_eq!(q, QualifiedName { username: "alice".into(), node: id });
    assert_eq!(q.to_string(), format!("alice@{hex}"));
    assert_eq!(q.to_string().parse::<QualifiedName>(), Ok(q.clone()));
    assert_eq!(QualifiedName::parse(&format!("alice@{}", hex.to_uppercase())), Ok(q.clone()));
    assert_eq!(QualifiedName::parse("alice"), Err(QualifiedNameError::MissingAt));
    assert_eq!(QualifiedName::parse(&format!("alice@{}", &hex[..62])), Err(QualifiedNameError::NodeIdLength(62)));
    assert_eq!(QualifiedName::parse(&format!("alice@{}zz", &hex[..62])), Err(QualifiedNameError::NodeIdHex));
    assert_eq!(
        QualifiedName::parse(&format!("admin@{hex}")),
        Err(QualifiedNameError::Username(UsernameError::Reserved))
    );
    assert_eq!(QualifiedName::parse(&format!("a@b@{hex}")), Err(QualifiedNameError::Username(UsernameError::Length)));
    let aliases = BTreeMap::from([("home".to_string(), id)]);
    assert_eq!(QualifiedName::parse_with_aliases("alice@home", &aliases), Ok(q.clone()));
    assert_eq!(QualifiedName::parse_with_aliases(&format!("alice@{hex}"), &aliases), Ok(q.clone()));
    assert_eq!(
        QualifiedName::parse_with_aliases("alice@away", &aliases),
        Err(QualifiedNameError::UnknownAlias("away".into()))
    );
    assert!(QualifiedName::parse("alice@home").is_err());
}

// --- test vectors (specs/trust.md §7) ---

#[test]
fn byte_vectors() {
    let k = SigningKey::from_bytes(&[7u8; 32]);
    let d = descriptor::sign(
        &k,
        b"127.0.0.1:4000".to_vec(),
        Roles { discovery: true, group: false },
        "tofu".into(),
        60_000_000,
        1_700_000_000_000_000,
    );
    assert_eq!(hex::encode(public(&k)), "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c");
    assert_eq!(d.node_id.to_hex(), "6638ecd57287a4b58b0f976654b2ffbcd257d05e3fcc7caadb14fa590e084df5");
    assert_eq!(
        hex::encode(descriptor::signing_bytes(&d)),
        "6e796d7374722f76312f6e6f64652d64657363726970746f72006638ecd57287a4b58b0f976654b2ffbcd257d05e3fcc7caadb14fa590e084df5ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c0e3132372e302e302e313a34303030010004746f6675fc00879303fd00401e18240a0600"
    );
    assert_eq!(
        hex::encode(d.sig.0),
        "d58f03241bd5a8b82fd9f78539d2ae8e8017cf35152a448fa88077f11a299db188e6e8a30fd0e4fd32538554c2a7e474723e669a3abbb0c413c53e8962621c06"
    );
    let head = TreeHead {
        node_id: d.node_id,
        epoch: 5,
        dir_root: [1; 32],
        dir_size: 2,
        log_root: [2; 32],
        issued_at_us: 1_700_000_060_000_000,
    };
    assert_eq!(
        hex::encode(evidence::head_signing_bytes(&head)),
        "6e796d7374722f76312f6b742f737468006638ecd57287a4b58b0f976654b2ffbcd257d05e3fcc7caadb14fa590e084df5050101010101010101010101010101010101010101010101010101010101010101020202020202020202020202020202020202020202020202020202020202020202fd00c7b11b240a0600"
    );
    assert_eq!(
        hex::encode(evidence::head_hash(&head)),
        "a331f3b1067cac9593e8d49312b8a8e336eeaf4f21e77c1b8c1f1dcf91d699b5"
    );
    let witness = NodeId([9; 32]);
    let hh = evidence::head_hash(&head);
    assert_eq!(
        hex::encode(evidence::cosign_signing_bytes(&witness, &d.node_id, 5, &hh)),
        "6e796d7374722f76312f6b742f636f7369676e0009090909090909090909090909090909090909090909090909090909090909096638ecd57287a4b58b0f976654b2ffbcd257d05e3fcc7caadb14fa590e084df505a331f3b1067cac9593e8d49312b8a8e336eeaf4f21e77c1b8c1f1dcf91d699b5"
    );
    assert_eq!(
        hex::encode(evidence::promise_signing_bytes(&d.node_id, "alice", &[3; 32], 2, 6)),
        "6e796d7374722f76312f6b742f70726f6d697365006638ecd57287a4b58b0f976654b2ffbcd257d05e3fcc7caadb14fa590e084df505616c69636503030303030303030303030303030303030303030303030303030303030303030206"
    );
}

/// The verifier's tables are bounded and evict nothing: a full pin table takes no new pin
/// and keeps every old one (a flood of sybil names cannot push out an honest pin); a full
/// node table learns no new node.
#[test]
fn pins_and_nodes_are_bounded_without_evicting_honest_entries() {
    use nymstr_proto::limits::{KT_NODES_MAX, KT_PINS_MAX};
    let node = NodeId([3; 32]);
    let mut v = Verifier::new(TrustPolicy::Tofu);
    for i in 0..KT_PINS_MAX {
        let name = format!("u{i:07}");
        assert!(v.accept_key_change(&node, &name, &entry(&name, [1; 32], 1, 1, EntryStatus::Active)));
    }
    assert!(v.accept_key_change(&node, "sybil", &entry("sybil", [9; 32], 1, 1, EntryStatus::Active)));
    assert_eq!(v.pins().len(), KT_PINS_MAX);
    assert!(v.pin(&node, "sybil").is_none(), "no room, no pin");
    assert_eq!(v.pin(&node, "u0000000").map(|p| p.account_key), Some([1; 32]), "the first pin is kept");
    // An existing pin can still be updated.
    assert!(v.accept_key_change(&node, "u0000000", &entry("u0000000", [2; 32], 2, 2, EntryStatus::Active)));
    assert_eq!(v.pin(&node, "u0000000").map(|p| p.account_key), Some([2; 32]));

    let rebuilt = Verifier::from_parts(
        v.policy().clone(),
        v.nodes().clone(),
        v.witnesses().clone(),
        v.heads().clone(),
        v.pins().clone(),
        v.distrusted().clone(),
    );
    assert_eq!(rebuilt, v, "the parts a host stores make the verifier");

    let mut v = Verifier::new(TrustPolicy::Tofu);
    let keys: Vec<SigningKey> = (0..=KT_NODES_MAX as u64).map(|i| generate_signing_key(&mut rng(10_000 + i))).collect();
    for k in &keys[..KT_NODES_MAX] {
        v.learn_serving_node(&descriptor_of(k)).unwrap();
    }
    let last = descriptor_of(&keys[KT_NODES_MAX]);
    assert_eq!(v.learn_node(&last), Err(DescriptorError::TooManyNodes(KT_NODES_MAX)));
    assert!(v.node_key(&last.node_id).is_none());
    assert!(v.learn_node(&descriptor_of(&keys[0])).is_ok(), "a known node is learnt again");
}
