//! Integration tests of the federation core (`actors::federation`): several `NodeCore`s
//! wired into a tiny deterministic network that routes encoded frames between node
//! addresses, hands client-facing outputs to per-(node, tag) inboxes, releases every
//! output only once the sender's store is durable, and advances a virtual clock to the
//! earliest timer when the network is idle. Links can be cut and nodes crashed/restarted.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{T0, User, msg_id, remember_challenge, tag};
use ed25519_dalek::SigningKey;
use nymstr_node_core::actors::federation::{Federation, FederationConfig, NodeIdentity};
use nymstr_node_core::actors::{Address, SenderTag};
use nymstr_node_core::store::{MemStore, Store, Table};
use nymstr_node_core::{NodeConfig, NodeCore, Output, Peer};
use nymstr_proto::codec::{self, decode_frame, encode_frame};
use nymstr_proto::federation::descriptor;
use nymstr_proto::federation::evidence::{self, WitnessView};
use nymstr_proto::federation::verify::{Outcome, TrustPolicy, Verifier};
use nymstr_proto::federation::{DirEntry, LookupProof, NodeDescriptor, NodeId, Roles, SignedHead, TreeHead};
use nymstr_proto::identity::{self, generate_signing_key};
use nymstr_proto::limits::{FRAME_BYTES_MAX, WITNESS_IDLE_US, WITNESS_NODES_MAX, WITNESS_RECENT_HEADS};
use nymstr_proto::wire::{Body, Envelope, ErrorCode, GossipItem, InstallationCert, InstallationId, SendDm};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const EPOCH: u64 = 10_000_000;

fn test_config() -> NodeConfig {
    NodeConfig {
        federation: FederationConfig { epoch_us: EPOCH, serve_quorum: 2, ..Default::default() },
        ..Default::default()
    }
}

fn addr(i: usize) -> Address {
    Address(format!("node{i}").into_bytes())
}

fn node_key(i: usize) -> SigningKey {
    generate_signing_key(&mut ChaCha20Rng::seed_from_u64(1_000 + i as u64))
}

fn node_identity(i: usize, key: &SigningKey) -> NodeIdentity {
    NodeIdentity {
        key: key.clone(),
        address: format!("node{i}").into_bytes(),
        roles: Roles { discovery: true, group: true },
        bootstrap: if i == 0 { Vec::new() } else { vec![Address(b"node0".to_vec())] },
    }
}

fn frame(rid: u64, body: Body) -> Vec<u8> {
    encode_frame(&Envelope { request_id: rid, body }).expect("encode")
}

fn code_of(body: &Body) -> Option<ErrorCode> {
    match body {
        Body::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// One frame that went over the network: sender node, destination, envelope.
#[derive(Clone, Debug)]
struct Wired {
    from: usize,
    to: Peer,
    envelope: Envelope,
}

/// A deterministic network of federated nodes.
struct Net {
    nodes: Vec<Option<NodeCore<MemStore>>>,
    keys: Vec<SigningKey>,
    config: NodeConfig,
    now: u64,
    /// Directed links (from, to) whose frames are dropped.
    blocked: BTreeSet<(usize, usize)>,
    /// Client-facing outputs by (node, tag).
    inbox: BTreeMap<(usize, SenderTag), Vec<Envelope>>,
    /// Every frame any node sent (including to addresses outside the network).
    wire: Vec<Wired>,
    next_rid: u64,
    restarts: u64,
    /// Nodes whose stores are not flushed: their outputs wait (in `parked`) until durable.
    held: BTreeSet<usize>,
    parked: BTreeMap<usize, Vec<(Peer, Envelope, u64)>>,
}

impl Net {
    fn new(n: usize) -> Self {
        Self::with_config(n, test_config())
    }

    fn with_config(n: usize, config: NodeConfig) -> Self {
        let keys: Vec<SigningKey> = (0..n).map(node_key).collect();
        let nodes = (0..n)
            .map(|i| {
                Some(
                    NodeCore::start_federated(
                        T0,
                        MemStore::new(),
                        ChaCha20Rng::seed_from_u64(i as u64),
                        config.clone(),
                        node_identity(i, &keys[i]),
                    )
                    .expect("start"),
                )
            })
            .collect();
        let mut net = Net {
            nodes,
            keys,
            config,
            now: T0,
            blocked: BTreeSet::new(),
            inbox: BTreeMap::new(),
            wire: Vec::new(),
            next_rid: 1,
            restarts: 0,
            held: BTreeSet::new(),
            parked: BTreeMap::new(),
        };
        net.pump();
        net
    }

    fn node(&self, i: usize) -> &NodeCore<MemStore> {
        self.nodes[i].as_ref().expect("node is running")
    }

    fn fed(&self, i: usize) -> &Federation {
        self.node(i).federation().expect("federated")
    }

    fn id(&self, i: usize) -> NodeId {
        descriptor::node_id(&self.keys[i].verifying_key().to_bytes())
    }

    /// A `ForwardDm` as node `from` sends it to node `to` now (signed, dated `now`).
    fn forward(&self, from: usize, to: usize, from_username: String, cert: InstallationCert, dm: SendDm) -> Body {
        let sent_at_us = self.now;
        let sig = identity::sign(
            &self.keys[from],
            &identity::forward_dm_bytes(&from_username, &self.id(to), sent_at_us, &dm),
        );
        Body::ForwardDm { from_username, cert, dm, sent_at_us, sig }
    }

    fn hex(&self, i: usize) -> String {
        self.id(i).to_hex()
    }

    fn index_of(&self, a: &Address) -> Option<usize> {
        (0..self.nodes.len()).find(|i| addr(*i) == *a)
    }

    fn partition(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }

    fn heal(&mut self, a: usize, b: usize) {
        self.blocked.remove(&(a, b));
        self.blocked.remove(&(b, a));
    }

    /// Flushes every store, then delivers every released output until nothing moves.
    fn pump(&mut self) {
        for round in 0.. {
            assert!(round < 10_000, "the network does not quiesce");
            let mut queue = Vec::new();
            for (i, slot) in self.nodes.iter_mut().enumerate() {
                let Some(node) = slot.as_mut() else { continue };
                if !self.held.contains(&i) {
                    node.store_mut().flush().expect("flush");
                }
                let durable = node.store().durable_seq();
                let parked = self.parked.entry(i).or_default();
                parked.extend(node.drain_outputs().map(|Output::Send { to, envelope, durable_after }| {
                    let bytes = encode_frame(&envelope).expect("every output encodes as a frame");
                    assert_eq!(decode_frame(&bytes).expect("and decodes back"), envelope);
                    remember_challenge(&envelope.body);
                    (to, envelope, durable_after)
                }));
                let (ready, wait): (Vec<_>, Vec<_>) = parked.drain(..).partition(|(_, _, d)| *d <= durable);
                *parked = wait;
                for (to, envelope, _) in ready {
                    let bytes = encode_frame(&envelope).expect("encode");
                    queue.push((i, to, envelope, bytes));
                }
            }
            if queue.is_empty() {
                return;
            }
            for (from, to, envelope, bytes) in queue {
                self.wire.push(Wired { from, to: to.clone(), envelope: envelope.clone() });
                match to {
                    Peer::Tag(t) => self.inbox.entry((from, t)).or_default().push(envelope),
                    Peer::Address(a) => {
                        let Some(j) = self.index_of(&a) else { continue };
                        if self.blocked.contains(&(from, j)) {
                            continue;
                        }
                        if let Some(node) = self.nodes[j].as_mut() {
                            node.handle_frame(self.now, Peer::Address(addr(from)), &bytes);
                        }
                    }
                }
            }
        }
    }

    /// Runs timers and traffic until virtual time `t`.
    fn run_until(&mut self, t: u64) {
        self.pump();
        for _ in 0..1_000_000 {
            let next = self.nodes.iter().flatten().filter_map(|n| n.poll_timeout()).min();
            match next {
                Some(nx) if nx <= t => {
                    self.now = self.now.max(nx);
                    let now = self.now;
                    for node in self.nodes.iter_mut().flatten() {
                        if node.poll_timeout().is_some_and(|p| p <= now) {
                            node.handle_timeout(now);
                        }
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = self.now.max(t);
    }

    fn run_for(&mut self, d: u64) {
        self.run_until(self.now + d);
    }

    /// Raw bytes into node `i` from `from`, then the network runs to quiescence.
    fn inject(&mut self, i: usize, from: Peer, bytes: &[u8]) {
        let now = self.now;
        self.nodes[i].as_mut().expect("running").handle_frame(now, from, bytes);
        self.pump();
    }

    fn fresh_rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    /// A client request from `t` at node `i`; returns its request id.
    fn client(&mut self, i: usize, t: SenderTag, body: Body) -> u64 {
        let rid = self.fresh_rid();
        self.inject(i, Peer::Tag(t), &frame(rid, body));
        rid
    }

    /// Takes everything node `i` sent to tag `t` so far.
    fn take(&mut self, i: usize, t: SenderTag) -> Vec<Envelope> {
        self.inbox.remove(&(i, t)).unwrap_or_default()
    }

    /// Takes the replies to `rid` at `(i, t)` (the rest stay in the inbox).
    fn replies(&mut self, i: usize, t: SenderTag, rid: u64) -> Vec<Body> {
        let all = self.take(i, t);
        let (mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|e| e.request_id == rid);
        if !rest.is_empty() {
            self.inbox.insert((i, t), rest);
        }
        mine.into_iter().map(|e| e.body).collect()
    }

    fn ask(&mut self, i: usize, t: SenderTag, body: Body) -> (u64, Vec<Body>) {
        let rid = self.client(i, t, body);
        (rid, self.replies(i, t, rid))
    }

    /// Registers `u` at node `i` from `u.tag`; returns the request id of the response and
    /// the replies to it.
    fn register(&mut self, i: usize, u: &User) -> (u64, Vec<Body>) {
        let (_, r) = self.ask(i, u.tag, u.register_request());
        let Some(Body::Challenge { nonce, .. }) = r.first() else { panic!("expected a challenge, got {r:?}") };
        let nonce = *nonce;
        let (rid, r) = self.ask(i, u.tag, u.register_response(&nonce));
        assert!(matches!(r.first(), Some(Body::Registered { .. })), "registration failed: {r:?}");
        (rid, r)
    }

    /// Every descriptor node `i` knows (its own first), via a client `NodesRequest`.
    fn descriptors(&mut self, i: usize) -> Vec<NodeDescriptor> {
        let (_, r) = self.ask(i, tag(250), Body::NodesRequest);
        match r.as_slice() {
            [Body::Nodes { descriptors }] => descriptors.clone(),
            other => panic!("expected Nodes, got {other:?}"),
        }
    }

    /// A verifier with the given policy knowing every node's descriptor.
    fn verifier(&mut self, policy: TrustPolicy) -> Verifier {
        let mut v = Verifier::new(policy);
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                for d in self.descriptors(i) {
                    v.learn_node(&d).expect("descriptor verifies");
                }
            }
        }
        v
    }

    /// `KtLookup` from `t` at node `i`; the single reply.
    fn kt_lookup(&mut self, i: usize, t: SenderTag, name: &str, from_log_size: u64) -> (u64, Body) {
        let (rid, r) = self.ask(i, t, Body::KtLookup { name: name.to_string(), from_log_size });
        assert_eq!(r.len(), 1, "one answer to a lookup, got {r:?}");
        (rid, r.into_iter().next().unwrap())
    }

    fn kill(&mut self, i: usize) -> MemStore {
        self.parked.remove(&i);
        self.held.remove(&i);
        let mut store = self.nodes[i].take().expect("running").into_store();
        store.crash();
        store
    }

    fn restart(&mut self, i: usize, store: MemStore) {
        self.restarts += 1;
        let node = NodeCore::start_federated(
            self.now,
            store,
            ChaCha20Rng::seed_from_u64(100 + self.restarts),
            self.config.clone(),
            node_identity(i, &self.keys[i]),
        )
        .expect("restart recovers");
        self.nodes[i] = Some(node);
        self.pump();
    }

    /// Frames sent since wire index `mark` by node `from` to `to`.
    fn sent_since(&self, mark: usize, from: usize, to: &Peer) -> Vec<Envelope> {
        self.wire[mark..].iter().filter(|w| w.from == from && w.to == *to).map(|w| w.envelope.clone()).collect()
    }
}

fn proof_of(body: &Body) -> (&NodeDescriptor, &LookupProof) {
    match body {
        Body::KtLookupResult { descriptor, proof } => (descriptor, proof),
        other => panic!("expected a KtLookupResult, got {other:?}"),
    }
}

fn installations_of(entry: &DirEntry) -> Vec<InstallationId> {
    entry.installations.iter().map(|c| identity::installation_id(&c.signing_key)).collect()
}

/// Four nodes, peered and a few epochs old.
fn settled(n: usize) -> Net {
    let mut net = Net::new(n);
    net.run_until(T0 + 3 * EPOCH + EPOCH / 2);
    net
}

// ---------------------------------------------------------------------------------------
// 1. Peering

#[test]
fn four_nodes_bootstrapping_from_node0_peer_with_everyone() {
    let mut net = Net::new(4);
    net.run_until(T0 + 2 * EPOCH);
    for i in 0..4 {
        let peers: BTreeMap<NodeId, Address> = net.fed(i).peers().map(|(k, v)| (*k, v.clone())).collect();
        let want: BTreeMap<NodeId, Address> = (0..4).filter(|j| *j != i).map(|j| (net.id(j), addr(j))).collect();
        assert_eq!(peers, want, "node {i} peers with every other node at its own address");
        let known: BTreeSet<NodeId> = net.fed(i).known().map(|d| d.node_id).collect();
        assert_eq!(known, want.keys().copied().collect(), "node {i} knows every other descriptor");
    }
}

// ---------------------------------------------------------------------------------------
// 2. Heads and witnessing

#[test]
fn heads_are_witnessed_and_views_converge() {
    let mut net = settled(4);
    net.run_until(T0 + 5 * EPOCH + EPOCH / 2);
    for i in 0..4 {
        let latest = net.fed(i).log().latest().expect("a head").clone();
        assert!(latest.head.epoch >= 4, "node {i} sealed an epoch every {EPOCH}µs: {}", latest.head.epoch);
        let cosigs = net.fed(i).log().latest_cosignatures();
        assert!(cosigs.len() >= 2, "node {i}'s latest head has {} cosignatures", cosigs.len());
        for c in &cosigs {
            let w = (0..4).find(|j| net.id(*j) == c.witness).expect("a known witness");
            assert_ne!(w, i);
            evidence::verify_cosignature(c, &net.keys[w].verifying_key().to_bytes(), &latest.head)
                .expect("cosignature verifies");
        }
        for j in 0..4 {
            if i == j {
                continue;
            }
            let own = net.fed(j).log().latest().unwrap().clone();
            let (seen, _) = net.fed(i).head_of(&net.id(j)).expect("node i saw node j's head");
            assert_eq!(*seen, own, "node {i}'s view of node {j}'s head is node {j}'s latest");
        }
        assert_eq!(net.fed(i).forks().count(), 0, "no fork certificates among honest nodes");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Registration promise and inclusion

#[test]
fn registration_gets_a_promise_kept_at_the_next_epoch() {
    let mut net = settled(4);
    let alice = User::new("alice", 11);
    let mut v = net.verifier(TrustPolicy::WitnessQuorum { required: 2 });
    let id1 = net.id(1);

    let next = net.fed(1).log().next_epoch();
    let (rid, replies) = net.register(1, &alice);
    assert_eq!(replies.len(), 2, "Registered then IncludePromise: {replies:?}");
    let Body::IncludePromise { promise } = &replies[1] else { panic!("expected a promise, got {replies:?}") };
    evidence::verify_promise(promise, &net.keys[1].verifying_key().to_bytes()).expect("promise verifies");
    assert_eq!(promise.node_id, id1);
    assert_eq!(promise.username, "alice");
    assert_eq!(promise.deadline_epoch, next, "promised for the next epoch");
    assert!(net.take(1, alice.tag).is_empty(), "both answers carry the response's request id {rid}");

    // Before the seal: proven absent.
    let (_, r) = net.kt_lookup(1, tag(200), "alice", v.known_log_size(&id1));
    let (d, proof) = proof_of(&r);
    assert_eq!(d.node_id, id1);
    assert_eq!(v.check_lookup(&id1, "alice", proof), Outcome::Absent);

    // After the deadline epoch is sealed (and witnessed): proven present.
    net.run_for(EPOCH);
    assert!(net.fed(1).log().latest().unwrap().head.epoch >= next);
    let (_, r) = net.kt_lookup(1, tag(200), "alice", v.known_log_size(&id1));
    let (_, proof) = proof_of(&r);
    match v.check_lookup(&id1, "alice", proof) {
        Outcome::Verified(entry) => {
            assert_eq!(entry.account_key, alice.account.verifying_key().to_bytes());
            assert_eq!(installations_of(&entry), vec![alice.installation]);
            assert_eq!(merkle_entry_hash(&entry), promise.entry_hash, "the promised entry is the one included");
            assert!(entry.epoch <= promise.deadline_epoch);
        }
        other => panic!("expected Verified, got {other:?}"),
    }
}

fn merkle_entry_hash(e: &DirEntry) -> [u8; 32] {
    nymstr_proto::federation::merkle::entry_hash(e)
}

// ---------------------------------------------------------------------------------------
// 4. Cross-node lookup

/// Four settled nodes with alice registered (and sealed) on node 1.
fn with_alice() -> (Net, User) {
    let mut net = settled(4);
    let alice = User::new("alice", 11);
    net.register(1, &alice);
    net.run_for(EPOCH);
    net.take(1, alice.tag);
    (net, alice)
}

#[test]
fn lookup_of_a_remote_name_is_forwarded_and_answered_by_its_home() {
    let (mut net, alice) = with_alice();
    let mut v = net.verifier(TrustPolicy::WitnessQuorum { required: 2 });
    let id1 = net.id(1);
    let name = format!("alice@{}", net.hex(1));
    let client = tag(201);
    let (rid, r) = net.ask(0, client, Body::KtLookup { name, from_log_size: 0 });
    assert_eq!(r.len(), 1, "exactly one answer with the client's request id: {r:?}");
    let (d, proof) = proof_of(&r[0]);
    assert_eq!(d.node_id, id1, "the answer carries node 1's descriptor");
    assert_eq!(proof.head.head.node_id, id1);
    match v.check_lookup(&id1, "alice", proof) {
        Outcome::Verified(entry) => assert_eq!(installations_of(&entry), vec![alice.installation]),
        other => panic!("expected Verified, got {other:?}"),
    }
    assert!(net.take(0, client).is_empty(), "nothing else for the client (rid {rid})");
    // Node 1 learnt only node 0's address: no output of node 1 went to the client's tag.
    assert!(net.wire.iter().all(|w| !(w.from == 1 && w.to == Peer::Tag(client))));
}

// ---------------------------------------------------------------------------------------
// 5. Cross-node DM

/// alice on node 1, bob on node 0, both registered (hence bound) and sealed.
fn with_alice_and_bob() -> (Net, User, User, Vec<InstallationId>) {
    let (mut net, alice) = with_alice();
    let bob = User::new("bob", 12);
    net.register(0, &bob);
    net.take(0, bob.tag);
    let name = format!("alice@{}", net.hex(1));
    let (_, r) = net.kt_lookup(0, tag(202), &name, 0);
    let (_, proof) = proof_of(&r);
    let installs = installations_of(proof.entry.as_ref().expect("alice is in node 1's directory"));
    (net, alice, bob, installs)
}

#[test]
fn dm_to_a_user_on_another_node_is_acked_and_delivered_once() {
    let (mut net, alice, bob, installs) = with_alice_and_bob();
    let to = format!("alice@{}", net.hex(1));
    let targets: Vec<_> = installs.iter().map(|i| (*i, b"sealed for alice".to_vec())).collect();
    let dm = bob.dm(&to, msg_id(1), &targets);

    let (rid, r) = net.ask(0, bob.tag, Body::SendDm(dm.clone()));
    assert_eq!(r, vec![Body::SendAck { msg_id: msg_id(1) }], "bob's send is acked with his request id");
    let got = net.take(1, alice.tag);
    let delivers: Vec<_> = got
        .iter()
        .filter_map(|e| match &e.body {
            Body::Deliver { delivery_id, from_username, msg_id: m, sealed, .. } => {
                Some((*delivery_id, from_username.clone(), *m, sealed.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(delivers.len(), 1, "alice got one delivery: {got:?}");
    assert_eq!(delivers[0].1, format!("bob@{}", net.hex(0)), "qualified sender name");
    assert_eq!(delivers[0].2, msg_id(1));
    assert_eq!(delivers[0].3, b"sealed for alice".to_vec());
    assert!(net.take(0, bob.tag).is_empty(), "nothing for bob under another request id than {rid}");

    // Alice acknowledges; bob retries the same message: acked again, not delivered again.
    let (_, r) = net.ask(1, alice.tag, Body::AckDelivery { delivery_ids: vec![delivers[0].0] });
    assert!(r.iter().all(|b| code_of(b).is_none()), "ack accepted: {r:?}");
    let (_, r) = net.ask(0, bob.tag, Body::SendDm(dm));
    assert_eq!(r, vec![Body::SendAck { msg_id: msg_id(1) }], "a retried send is acked again");
    net.run_for(EPOCH);
    let again: Vec<_> = net.take(1, alice.tag).into_iter().filter(|e| matches!(e.body, Body::Deliver { .. })).collect();
    assert!(again.is_empty(), "the retry is not delivered a second time: {again:?}");
}

/// A forward captured on the way (or kept by anyone who saw it) and replayed once the
/// receiver's dedupe entry expired is refused: the forwarding node signed its time, and the
/// receiver accepts it only within a window shorter than its dedupe lifetime. A replay
/// inside the window is deduplicated (acked, not queued again); a forwarded DM whose date
/// or signature was altered is refused.
#[test]
fn a_forward_replayed_after_the_dedupe_window_is_refused() {
    let ttl = 120_000_000;
    let config = NodeConfig { seen_send_ttl_us: ttl, ..test_config() };
    let mut net = Net::with_config(2, config);
    net.run_until(T0 + 3 * EPOCH + EPOCH / 2);
    let alice = User::new("alice", 11);
    net.register(1, &alice);
    net.run_for(EPOCH);
    net.take(1, alice.tag);
    let bob = User::new("bob", 12);
    net.register(0, &bob);
    net.take(0, bob.tag);
    let to = format!("alice@{}", net.hex(1));
    let dm = bob.dm(&to, msg_id(1), &[(alice.installation, b"sealed for alice".to_vec())]);
    let mark = net.wire.len();
    let (_, r) = net.ask(0, bob.tag, Body::SendDm(dm));
    assert_eq!(r, vec![Body::SendAck { msg_id: msg_id(1) }], "{r:?}");
    let captured = net.wire[mark..]
        .iter()
        .find(|w| w.from == 0 && w.to == Peer::Address(addr(1)) && matches!(w.envelope.body, Body::ForwardDm { .. }))
        .expect("node 0 forwarded the DM to node 1")
        .envelope
        .clone();
    let delivered = |net: &mut Net| -> Vec<u64> {
        net.take(1, alice.tag)
            .into_iter()
            .filter_map(|e| match e.body {
                Body::Deliver { delivery_id, .. } => Some(delivery_id),
                _ => None,
            })
            .collect()
    };
    let first = delivered(&mut net);
    assert_eq!(first.len(), 1, "delivered once");
    let (_, r) = net.ask(1, alice.tag, Body::AckDelivery { delivery_ids: first });
    assert!(r.iter().all(|b| code_of(b).is_none()), "{r:?}");
    let from0 = Peer::Address(addr(0));
    let replay = |net: &mut Net, rid: u64, body: Body| -> Vec<Body> {
        let mark = net.wire.len();
        net.inject(1, from0.clone(), &frame(rid, body));
        net.sent_since(mark, 1, &from0).into_iter().filter(|e| e.request_id == rid).map(|e| e.body).collect()
    };

    // Within the window: deduplicated.
    net.run_for(EPOCH);
    let r = replay(&mut net, 901, captured.body.clone());
    assert_eq!(r, vec![Body::SendAck { msg_id: msg_id(1) }], "{r:?}");
    assert!(delivered(&mut net).is_empty(), "a replay inside the dedupe window is not queued again");

    // After the dedupe entry expired (and was swept): refused as stale.
    net.run_for(ttl + 2 * EPOCH);
    let r = replay(&mut net, 902, captured.body.clone());
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(code_of(&r[0]), Some(ErrorCode::BadSignature), "{r:?}");
    assert!(delivered(&mut net).is_empty(), "a replay after the dedupe window is not delivered");
    assert_eq!(net.fed(1).stats.forwards_stale, 1);

    // Re-dated without the forwarding node's key: refused.
    let Body::ForwardDm { from_username, cert, dm, sig, .. } = captured.body.clone() else { unreachable!() };
    let redated = Body::ForwardDm { from_username, cert, dm, sent_at_us: net.now, sig };
    let r = replay(&mut net, 903, redated);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(code_of(&r[0]), Some(ErrorCode::BadSignature), "{r:?}");
    assert!(delivered(&mut net).is_empty());
}

// ---------------------------------------------------------------------------------------
// 6. Failures of cross-node DMs

#[test]
fn dm_to_unknown_user_unknown_node_or_unreachable_node_fails_without_ack() {
    let (mut net, alice, bob, installs) = with_alice_and_bob();
    let targets: Vec<_> = installs.iter().map(|i| (*i, b"x".to_vec())).collect();

    // No such user on node 1: node 1's error is relayed to bob.
    let dm = bob.dm(&format!("nobody@{}", net.hex(1)), msg_id(2), &targets);
    let (_, r) = net.ask(0, bob.tag, Body::SendDm(dm));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(code_of(&r[0]), Some(ErrorCode::UnknownUser), "{r:?}");

    // No such node.
    let stranger = descriptor::node_id(&node_key(99).verifying_key().to_bytes());
    let dm = bob.dm(&format!("alice@{}", stranger.to_hex()), msg_id(3), &targets);
    let (_, r) = net.ask(0, bob.tag, Body::SendDm(dm));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(code_of(&r[0]), Some(ErrorCode::UnknownNode), "{r:?}");

    // Node 1 cut off from node 0: after the forward timeout, Unreachable and nothing acked.
    net.partition(0, 1);
    let dm = bob.dm(&format!("alice@{}", net.hex(1)), msg_id(4), &targets);
    let (rid, r) = net.ask(0, bob.tag, Body::SendDm(dm));
    assert!(r.is_empty(), "no answer before the timeout: {r:?}");
    let timeout = net.config.federation.forward_timeout_us;
    net.run_for(timeout + 1);
    let r = net.replies(0, bob.tag, rid);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(code_of(&r[0]), Some(ErrorCode::Unreachable), "{r:?}");
    assert!(net.take(0, bob.tag).iter().all(|e| !matches!(e.body, Body::SendAck { .. })), "nothing acked");
    assert!(net.take(1, alice.tag).iter().all(|e| !matches!(e.body, Body::Deliver { .. })), "nothing delivered");
    net.heal(0, 1);
}

// ---------------------------------------------------------------------------------------
// 7. Bad input from addresses

#[test]
fn frames_from_unauthenticated_or_lying_addresses_are_refused() {
    let mut net = settled(4);
    let evil = Address(b"evil".to_vec());
    let evil_key = node_key(66);
    let evil_id = descriptor::node_id(&evil_key.verifying_key().to_bytes());
    let from = Peer::Address(evil.clone());
    let head = net.fed(0).log().latest().unwrap().clone();
    let mallory = User::new("mallory", 50);
    let alice0 = User::new("alice", 51);
    net.register(0, &alice0);
    net.take(0, alice0.tag);

    let errors_to_evil = |net: &Net, mark: usize, rid: u64| -> Vec<ErrorCode> {
        net.sent_since(mark, 0, &Peer::Address(evil.clone()))
            .into_iter()
            .filter(|e| e.request_id == rid)
            .filter_map(|e| code_of(&e.body))
            .collect()
    };

    // Not peered: gossip, cosign requests and forwarded DMs get NotPeer.
    let dm = mallory.dm("alice", msg_id(9), &[(alice0.installation, b"x".to_vec())]);
    for (k, body) in [
        Body::Gossip { items: vec![GossipItem::Head { head: head.clone(), cosignatures: vec![] }] },
        Body::CosignRequest { head: head.clone(), from_log_size: 0, consistency: vec![] },
        Body::ForwardDm {
            from_username: format!("mallory@{}", evil_id.to_hex()),
            cert: mallory.cert.clone(),
            dm: dm.clone(),
            sent_at_us: net.now,
            sig: identity::sign(&evil_key, b"not a peer"),
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mark = net.wire.len();
        let rid = 500 + k as u64;
        net.inject(0, from.clone(), &frame(rid, body));
        assert_eq!(errors_to_evil(&net, mark, rid), vec![ErrorCode::NotPeer], "request {k}");
    }
    assert!(net.take(0, alice0.tag).is_empty(), "nothing delivered to alice");

    // A hello with a forged descriptor signature.
    let good = descriptor::sign(
        &evil_key,
        b"evil".to_vec(),
        Roles { discovery: true, group: true },
        "tofu".into(),
        EPOCH,
        net.now,
    );
    let mut forged = good.clone();
    forged.sig.0[0] ^= 1;
    let mark = net.wire.len();
    net.inject(0, from.clone(), &frame(510, Body::PeerHello { descriptor: forged, nonce: [3; 32] }));
    let sent = net.sent_since(mark, 0, &from);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(code_of(&sent[0].body), Some(ErrorCode::BadSignature), "{sent:?}");
    assert!(net.fed(0).peers().all(|(id, _)| *id != evil_id), "no peering on a forged descriptor");
    assert!(net.fed(0).known().all(|d| d.node_id != evil_id));

    // A welcome nobody asked for.
    let mark = net.wire.len();
    let answer = identity::sign(&evil_key, b"whatever");
    net.inject(0, from.clone(), &frame(511, Body::PeerWelcome { descriptor: good.clone(), answer, nonce: [4; 32] }));
    assert_eq!(errors_to_evil(&net, mark, 511), vec![ErrorCode::NotPeer]);

    // A proper hello, then a proof with a wrong signature: no peering; then the right
    // proof: peering (so the refusal above was about the signature).
    let mark = net.wire.len();
    net.inject(0, from.clone(), &frame(512, Body::PeerHello { descriptor: good.clone(), nonce: [5; 32] }));
    let sent = net.sent_since(mark, 0, &from);
    let Some(Body::PeerWelcome { descriptor: d0, answer, nonce }) = sent.first().map(|e| e.body.clone()) else {
        panic!("expected a welcome, got {sent:?}")
    };
    identity::verify(&d0.key, &identity::peer_challenge_bytes(&[5; 32], &evil_id, &net.id(0)), &answer)
        .expect("node 0 answered the challenge");
    let wrong = identity::sign(&evil_key, &identity::peer_challenge_bytes(&[0; 32], &net.id(0), &evil_id));
    net.inject(0, from.clone(), &frame(513, Body::PeerProof { answer: wrong }));
    assert!(net.fed(0).peers().all(|(id, _)| *id != evil_id), "no peering on a wrong proof");
    let right = identity::sign(&evil_key, &identity::peer_challenge_bytes(&nonce, &net.id(0), &evil_id));
    net.inject(0, from.clone(), &frame(515, Body::PeerProof { answer: right }));
    assert!(net.fed(0).peers().any(|(id, _)| *id == evil_id), "the right proof completes the peering");

    // A forwarded DM from peer node 2 whose sender claims node 1: refused, not delivered.
    let two = Peer::Address(addr(2));
    let lying = net.forward(2, 0, format!("mallory@{}", net.hex(1)), mallory.cert.clone(), dm);
    let mark = net.wire.len();
    net.inject(0, two.clone(), &frame(520, lying));
    let to_two: Vec<_> = net.sent_since(mark, 0, &two).into_iter().filter(|e| e.request_id == 520).collect();
    assert_eq!(to_two.len(), 1, "{to_two:?}");
    assert_eq!(code_of(&to_two[0].body), Some(ErrorCode::BadSignature), "{to_two:?}");
    assert!(net.take(0, alice0.tag).is_empty(), "nothing delivered to alice");
    // The same DM named as node 2's user is accepted (control).
    let dm = mallory.dm("alice", msg_id(10), &[(alice0.installation, b"y".to_vec())]);
    let honest = net.forward(2, 0, format!("mallory@{}", net.hex(2)), mallory.cert.clone(), dm);
    let mark = net.wire.len();
    net.inject(0, two.clone(), &frame(521, honest));
    let to_two: Vec<_> = net.sent_since(mark, 0, &two).into_iter().filter(|e| e.request_id == 521).collect();
    assert_eq!(to_two.iter().map(|e| e.body.clone()).collect::<Vec<_>>(), vec![Body::SendAck { msg_id: msg_id(10) }]);
    let got = net.take(0, alice0.tag);
    assert!(
        got.iter().any(|e| matches!(&e.body, Body::Deliver { from_username, .. }
            if *from_username == format!("mallory@{}", net.hex(2)))),
        "{got:?}"
    );

    // Random bytes from an address: Malformed, and the node keeps serving.
    let mark = net.wire.len();
    net.inject(0, from.clone(), &[0xff, 0x13, 0x37, 0x00, 0x42, 0x99, 0x01]);
    let sent = net.sent_since(mark, 0, &from);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(matches!(code_of(&sent[0].body), Some(ErrorCode::Malformed | ErrorCode::UnsupportedVersion)), "{sent:?}");
    let ds = net.descriptors(0);
    assert_eq!(ds[0].node_id, net.id(0), "still serving");
    net.run_for(EPOCH);
    assert!(net.fed(0).log().latest().unwrap().head.epoch > head.head.epoch, "still sealing");
}

// ---------------------------------------------------------------------------------------
// 8. Equivocation

#[test]
fn an_equivocating_node_is_caught_distrusted_and_dropped() {
    let mut net = settled(4);
    let id3 = net.id(3);
    let (seen, _) = net.fed(0).head_of(&id3).expect("node 0 saw node 3's head").clone();
    let mut other = seen.head.clone();
    other.dir_root = [7; 32];
    let forged = evidence::sign_head(&net.keys[3], other);
    let (_, r) =
        net.ask(0, tag(203), Body::Gossip { items: vec![GossipItem::Head { head: forged, cosignatures: vec![] }] });
    assert!(r.iter().all(|b| code_of(b).is_none()), "{r:?}");
    net.run_for(EPOCH);

    let key3 = net.keys[3].verifying_key().to_bytes();
    for i in 0..3 {
        let forks: Vec<_> = net.fed(i).forks().cloned().collect();
        assert_eq!(forks.len(), 1, "node {i} holds the certificate");
        assert_eq!(forks[0].a.head.node_id, id3);
        evidence::verify_fork(&forks[0], &key3).expect("certificate verifies");
        assert!(net.fed(i).peers().all(|(id, _)| *id != id3), "node {i} dropped node 3");
    }
    // Node 3 keeps saying hello; nobody peers with it again.
    net.run_for(4 * EPOCH);
    for i in 0..3 {
        assert!(net.fed(i).peers().all(|(id, _)| *id != id3), "node {i} did not re-peer with node 3");
        assert_eq!(net.fed(i).peers().count(), 2, "honest nodes still peer with each other");
    }

    // A lookup at node 0 for a user of node 3 is answered with the evidence.
    let (_, r) = net.kt_lookup(0, tag(204), &format!("xavier@{}", id3.to_hex()), 0);
    match r {
        Body::Gossip { items } => {
            assert_eq!(items.len(), 1);
            let GossipItem::Fork(cert) = &items[0] else { panic!("expected a fork, got {items:?}") };
            evidence::verify_fork(cert, &key3).expect("certificate verifies");
            let mut v = net.verifier(TrustPolicy::Tofu);
            assert!(v.on_fork_certificate(cert), "a client accepts the evidence");
            assert!(v.is_distrusted(&id3));
        }
        other => panic!("expected Gossip with a fork certificate, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 9. Restart

#[test]
fn a_restarted_node_keeps_its_log_repeers_and_stays_consistent() {
    let mut net = settled(4);
    let alice = User::new("alice", 11);
    net.register(2, &alice);
    net.run_for(EPOCH);
    let id2 = net.id(2);
    let mut v = net.verifier(TrustPolicy::WitnessQuorum { required: 2 });
    let (_, r) = net.kt_lookup(2, tag(205), "alice", 0);
    let Outcome::Verified(_) = v.check_lookup(&id2, "alice", proof_of(&r).1) else { panic!("pin alice first") };
    let pinned = v.pin(&id2, "alice").cloned().expect("pinned");
    let before = net.fed(2).log().latest().unwrap().clone();

    let store = net.kill(2);
    net.run_for(EPOCH / 2);
    net.restart(2, store);
    let after = net.fed(2).log().latest().unwrap().clone();
    assert!(after.head.epoch >= before.head.epoch);
    if after.head.epoch == before.head.epoch {
        assert_eq!(after, before, "the same head for the same epoch");
    }

    net.run_for(4 * EPOCH);
    for i in 0..4 {
        let peers: BTreeSet<NodeId> = net.fed(i).peers().map(|(k, _)| *k).collect();
        let want: BTreeSet<NodeId> = (0..4).filter(|j| *j != i).map(|j| net.id(j)).collect();
        assert_eq!(peers, want, "node {i} peers with all others after the restart");
        assert_eq!(net.fed(i).forks().count(), 0, "no fork certificate at node {i}");
    }
    assert!(net.fed(2).log().latest().unwrap().head.epoch > before.head.epoch, "node 2 seals again");
    assert!(net.fed(2).log().latest_cosignatures().len() >= 2, "and is witnessed again");

    let (_, r) = net.kt_lookup(2, tag(205), "alice", v.known_log_size(&id2));
    match v.check_lookup(&id2, "alice", proof_of(&r).1) {
        Outcome::Verified(entry) => {
            assert_eq!(entry.account_key, pinned.account_key);
            assert_eq!(entry.seq, pinned.seq);
        }
        other => panic!("expected Verified against the old pin, got {other:?}"),
    }
    // Also through another node.
    let (_, r) = net.kt_lookup(0, tag(206), &format!("alice@{}", id2.to_hex()), v.known_log_size(&id2));
    assert!(matches!(v.check_lookup(&id2, "alice", proof_of(&r).1), Outcome::Verified(_)));
}

/// One node past its first seal with alice, bob and carol registered and pending (the
/// crash tests of §10 start here).
fn one_node_with_three_registrations() -> (Net, NodeConfig, Vec<User>) {
    let config = NodeConfig {
        federation: FederationConfig { epoch_us: EPOCH, serve_quorum: 0, ..Default::default() },
        ..Default::default()
    };
    let mut net = Net::with_config(1, config.clone());
    net.run_until(T0 + EPOCH + EPOCH / 2);
    let users: Vec<User> =
        ["alice", "bob", "carol"].iter().enumerate().map(|(k, n)| User::new(n, 20 + k as u64)).collect();
    for u in &users {
        net.register(0, u);
    }
    (net, config, users)
}

// ---------------------------------------------------------------------------------------
// 10. Crash during a seal, at every cut point

#[test]
fn a_crash_at_any_point_of_a_seal_recovers_to_a_consistent_log() {
    let (mut net, config, users) = one_node_with_three_registrations();
    assert_eq!(net.fed(0).log().pending_len(), 3);
    let old_epoch = net.fed(0).log().latest().unwrap().head.epoch;
    let seal_at = net.node(0).federation().unwrap().next_timeout();
    net.pump(); // everything durable

    // Seal without flushing: the node's own writes are the cut candidates.
    let mut node = net.nodes[0].take().unwrap();
    let s0 = node.store().durable_seq();
    node.handle_timeout(seal_at.max(net.now));
    let s1 = node.store().write_seq();
    assert!(s1 > s0, "the seal wrote something");
    assert_eq!(node.federation().unwrap().log().latest().unwrap().head.epoch, old_epoch + 1);
    let sealed = node.into_store();
    let key = net.keys[0].clone();

    for cut in s0..=s1 {
        let mut store = sealed.clone();
        store.flush_upto(cut);
        store.crash();
        let t = seal_at + 1;
        let mut n = NodeCore::start_federated(
            t,
            store,
            ChaCha20Rng::seed_from_u64(cut),
            config.clone(),
            node_identity(0, &key),
        )
        .unwrap_or_else(|e| panic!("restart after a cut at {cut} of {s0}..={s1} failed: {e}"));
        let log = n.federation().unwrap().log();
        let epoch = log.latest().expect("a head").head.epoch;
        assert!(epoch == old_epoch || epoch == old_epoch + 1, "cut {cut}: epoch {epoch}");
        if epoch == old_epoch + 1 {
            assert_eq!(log.entries_len(), 3, "cut {cut}: the new head covers every staged user");
            assert_eq!(log.pending_len(), 0, "cut {cut}");
        } else {
            assert_eq!(log.pending_len(), 3, "cut {cut}: the staged users wait for the seal");
        }
        // Seal (again if needed): every user is then proven present under the head.
        n.handle_timeout(t + EPOCH);
        let _ = n.drain_outputs().count();
        let mut v = Verifier::new(TrustPolicy::Tofu);
        v.learn_node(n.federation().unwrap().descriptor()).unwrap();
        let id = n.federation().unwrap().id();
        for u in &users {
            let (head, proof) = {
                let log = n.federation().unwrap().log();
                let proof = log.lookup(&u.folded(), 0, t + 2 * EPOCH, 0, 0).expect("a head to serve");
                (log.latest().unwrap().clone(), proof)
            };
            assert_eq!(proof.head, head, "cut {cut}");
            match v.check_lookup(&id, &u.username, &proof) {
                Outcome::Verified(e) => assert_eq!(installations_of(&e), vec![u.installation], "cut {cut}"),
                other => panic!("cut {cut}: {} not verified: {other:?}", u.username),
            }
        }
        // Through the wire as well.
        n.handle_frame(
            t + EPOCH,
            Peer::Tag(tag(207)),
            &frame(1, Body::KtLookup { name: "carol".into(), from_log_size: 0 }),
        );
        n.store_mut().flush().unwrap();
        let outs: Vec<Output> = n.drain_outputs().collect();
        assert!(
            outs.iter().any(|Output::Send { envelope, .. }| matches!(&envelope.body,
                Body::KtLookupResult { proof, .. } if proof.entry.is_some())),
            "cut {cut}: {outs:?}"
        );
    }
}

#[test]
fn a_head_lost_in_a_crash_before_it_was_durable_is_never_seen_by_anyone() {
    let mut net = settled(4);
    let id2 = net.id(2);
    let alice = User::new("alice", 11);
    // Node 2 stops flushing; alice registers (her Registered waits for durability) and an
    // epoch is sealed: the new head is signed but not durable, so it must not leave.
    net.held.insert(2);
    let before = net.fed(2).log().latest().unwrap().clone();
    net.client(2, alice.tag, alice.register_request());
    net.run_for(EPOCH);
    let lost = net.fed(2).log().latest().unwrap().clone();
    assert_eq!(lost.head.epoch, before.head.epoch + 1, "node 2 sealed in memory");
    for i in [0, 1, 3] {
        let (seen, _) = net.fed(i).head_of(&id2).unwrap();
        assert_eq!(*seen, before, "node {i} never saw the non-durable head");
    }
    assert!(
        net.wire.iter().all(|w| w.from != 2
            || !matches!(&w.envelope.body, Body::Gossip { items } if items.iter().any(|it|
                matches!(it, GossipItem::Head { head, .. } if *head == lost)))),
        "the non-durable head was never gossiped"
    );

    let store = net.kill(2);
    net.run_for(EPOCH / 3);
    net.restart(2, store);
    assert_eq!(net.fed(2).log().latest().unwrap(), &before, "the lost epoch is gone");
    net.run_for(4 * EPOCH);
    let now_head = net.fed(2).log().latest().unwrap().clone();
    assert!(now_head.head.epoch > lost.head.epoch);
    for i in 0..4 {
        assert_eq!(net.fed(i).forks().count(), 0, "no fork certificate at node {i}");
        if i != 2 {
            assert!(net.fed(i).peers().any(|(id, _)| *id == id2), "node {i} peers with node 2");
            assert_eq!(net.fed(i).head_of(&id2).unwrap().0, now_head);
        }
    }
    assert!(net.fed(2).log().latest_cosignatures().len() >= 2);
}

/// The registration and its directory staging are separate writes of one request: a
/// crash that keeps a durable prefix must never leave a registered account (whose
/// `Registered` may already have been released) that no epoch will ever include.
#[test]
fn a_crash_inside_a_registration_never_leaves_an_account_out_of_the_directory() {
    let config = NodeConfig {
        federation: FederationConfig { epoch_us: EPOCH, serve_quorum: 0, ..Default::default() },
        ..Default::default()
    };
    let mut net = Net::with_config(1, config.clone());
    net.run_until(T0 + EPOCH / 2);
    let alice = User::new("alice", 11);
    let (_, r) = net.ask(0, alice.tag, alice.register_request());
    let Some(Body::Challenge { nonce, .. }) = r.first().cloned() else { panic!("{r:?}") };
    net.held.insert(0);
    net.client(0, alice.tag, alice.register_response(&nonce));
    let node = net.nodes[0].take().unwrap();
    let (s0, s1) = (node.store().durable_seq(), node.store().write_seq());
    let released: Vec<(&'static str, u64)> =
        net.parked.get(&0).into_iter().flatten().map(|(_, e, d)| (e.body.kind(), *d)).collect();
    let written = node.into_store();
    let key = net.keys[0].clone();
    let mut broken = Vec::new();
    for cut in s0..=s1 {
        let mut store = written.clone();
        store.flush_upto(cut);
        store.crash();
        let t = net.now + 1;
        let mut n = NodeCore::start_federated(
            t,
            store,
            ChaCha20Rng::seed_from_u64(cut),
            config.clone(),
            node_identity(0, &key),
        )
        .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        n.handle_frame(t, Peer::Tag(tag(208)), &frame(1, Body::Lookup { username: "alice".into() }));
        let registered =
            n.drain_outputs().any(|Output::Send { envelope, .. }| matches!(envelope.body, Body::LookupResult { .. }));
        n.handle_timeout(t + EPOCH);
        let _ = n.drain_outputs().count();
        let log = n.federation().unwrap().log();
        let proof = log.lookup("alice", 0, t + 2 * EPOCH, 0, 0).expect("a head");
        if registered != proof.entry.is_some() {
            broken.push((cut, registered, log.pending_len()));
        }
    }
    assert!(
        broken.is_empty(),
        "cuts (seq, account registered, pending) in {s0}..={s1} where the registry and the directory disagree \
         after the next seal: {broken:?}; outputs with their durable_after: {released:?}"
    );
}

/// Recovery itself writes (it finishes a cut seal); a second crash during those writes
/// recovers too.
#[test]
fn a_crash_during_recovery_of_a_cut_seal_recovers_again() {
    let (mut net, config, _users) = one_node_with_three_registrations();
    let seal_at = net.fed(0).next_timeout();
    let mut node = net.nodes[0].take().unwrap();
    let s0 = node.store().durable_seq();
    node.handle_timeout(seal_at);
    let s1 = node.store().write_seq();
    let sealed = node.into_store();
    let key = net.keys[0].clone();
    let mut restarts = 0u64;
    for cut in s0..=s1 {
        let mut store = sealed.clone();
        store.flush_upto(cut);
        store.crash();
        let t = seal_at + 1;
        let n = NodeCore::start_federated(
            t,
            store,
            ChaCha20Rng::seed_from_u64(cut),
            config.clone(),
            node_identity(0, &key),
        )
        .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let first = n.federation().unwrap().log().latest().unwrap().clone();
        let recovered = n.into_store();
        let (r0, r1) = (recovered.durable_seq(), recovered.write_seq());
        for cut2 in r0..=r1 {
            let mut store = recovered.clone();
            store.flush_upto(cut2);
            store.crash();
            restarts += 1;
            let n = NodeCore::start_federated(
                t + 1,
                store,
                ChaCha20Rng::seed_from_u64(restarts),
                config.clone(),
                node_identity(0, &key),
            )
            .unwrap_or_else(|e| panic!("cut {cut} then {cut2}: {e}"));
            let log = n.federation().unwrap().log();
            assert_eq!(log.latest().unwrap(), &first, "cut {cut} then {cut2}: the same head");
            assert_eq!(log.entries_len() + log.pending_len(), 3, "cut {cut} then {cut2}: no user lost");
        }
    }
}

/// Only the answer is lost (node 1 → node 0 cut): bob is told Unreachable although alice
/// got the message; his retry after the link heals is acked and not delivered twice.
#[test]
fn a_lost_ack_across_nodes_is_safe_to_retry() {
    let (mut net, alice, bob, installs) = with_alice_and_bob();
    let targets: Vec<_> = installs.iter().map(|i| (*i, b"once".to_vec())).collect();
    let dm = bob.dm(&format!("alice@{}", net.hex(1)), msg_id(5), &targets);
    net.blocked.insert((1, 0));
    let (rid, r) = net.ask(0, bob.tag, Body::SendDm(dm.clone()));
    assert!(r.is_empty(), "{r:?}");
    let timeout = net.config.federation.forward_timeout_us;
    net.run_for(timeout + 1);
    let r = net.replies(0, bob.tag, rid);
    assert_eq!(r.iter().map(code_of).collect::<Vec<_>>(), vec![Some(ErrorCode::Unreachable)], "{r:?}");
    let first: Vec<u64> = net
        .take(1, alice.tag)
        .iter()
        .filter_map(|e| match e.body {
            Body::Deliver { delivery_id, msg_id: m, .. } if m == msg_id(5) => Some(delivery_id),
            _ => None,
        })
        .collect();
    assert!(!first.is_empty(), "node 1 did queue and deliver it");
    let (_, r) = net.ask(1, alice.tag, Body::AckDelivery { delivery_ids: vec![first[0]] });
    assert!(r.iter().all(|b| code_of(b).is_none()), "{r:?}");

    net.heal(0, 1);
    let (_, r) = net.ask(0, bob.tag, Body::SendDm(dm));
    assert_eq!(r, vec![Body::SendAck { msg_id: msg_id(5) }]);
    net.run_for(EPOCH);
    let again = net.take(1, alice.tag).into_iter().filter(|e| matches!(e.body, Body::Deliver { .. })).count();
    assert_eq!(again, 0, "the retry is not delivered again");
}

/// A second installation of the same account: a new promise (seq 2), and after the seal
/// the entry lists both installations under the pinned key.
#[test]
fn a_second_installation_is_promised_and_included_under_the_same_pin() {
    let (mut net, alice) = with_alice();
    let id1 = net.id(1);
    let mut v = net.verifier(TrustPolicy::WitnessQuorum { required: 2 });
    let (_, r) = net.kt_lookup(1, tag(209), "alice", 0);
    assert!(matches!(v.check_lookup(&id1, "alice", proof_of(&r).1), Outcome::Verified(_)));

    let laptop = User::with_account("alice", 13, alice.account.clone());
    let next = net.fed(1).log().next_epoch();
    let (_, replies) = net.register(1, &laptop);
    let Some(Body::IncludePromise { promise }) = replies.get(1) else { panic!("expected a promise: {replies:?}") };
    evidence::verify_promise(promise, &net.keys[1].verifying_key().to_bytes()).unwrap();
    assert_eq!((promise.seq, promise.deadline_epoch), (2, next));

    net.run_for(EPOCH);
    let (_, r) = net.kt_lookup(1, tag(209), "alice", v.known_log_size(&id1));
    match v.check_lookup(&id1, "alice", proof_of(&r).1) {
        Outcome::Verified(e) => {
            assert_eq!(e.seq, 2);
            let got: BTreeSet<_> = installations_of(&e).into_iter().collect();
            assert_eq!(got, BTreeSet::from([alice.installation, laptop.installation]));
            assert_eq!(merkle_entry_hash(&e), promise.entry_hash);
        }
        other => panic!("expected Verified, got {other:?}"),
    }
}

/// A witness's `Cosigned` lost on the way back must not end its witnessing: the node's
/// next request starts its proof from the size it believes the witness cosigned, the
/// witness answers `CosignFrom` with the size it really did, and the node asks again.
#[test]
fn a_lost_cosignature_does_not_stop_a_witness() {
    let mut net = settled(2);
    let witness = net.id(1);
    let has_cosig = |net: &Net| net.fed(0).log().latest_cosignatures().iter().any(|c| c.witness == witness);
    assert!(has_cosig(&net), "node 1 witnesses node 0 to begin with");
    // Node 1 -> node 0 goes dark for one seal of node 0: its Cosigned is lost.
    net.blocked.insert((1, 0));
    net.run_for(EPOCH);
    assert!(!has_cosig(&net), "the cosignature of this epoch was lost");
    net.heal(0, 1);
    let mark = net.wire.len();
    net.run_for(2 * EPOCH);
    assert!(has_cosig(&net), "node 1 cosigns node 0's heads again");
    let asked_from = net.sent_since(mark, 1, &Peer::Address(addr(0)));
    assert!(
        asked_from.iter().any(|e| matches!(e.body, Body::CosignFrom { .. })),
        "the witness told the node where its proof must start"
    );
    assert!(
        !asked_from.iter().any(|e| code_of(&e.body) == Some(ErrorCode::Inconsistent)),
        "and never refused it as inconsistent"
    );
}

// ---------------------------------------------------------------------------------------
// Durability of a long-running witness (issue 10, item 1)

/// Node 0's witness view as the rows of its store: the view they make, and its size as
/// the single record of the previous layout.
fn witness_view_of(store: &MemStore) -> (WitnessView, usize) {
    let mut view = WitnessView::new();
    let rows = store.scan_prefix(Table::FedState, b"whead/").unwrap();
    for (_, v) in &rows {
        let (_, head): (u64, SignedHead) = codec::decode(v).expect("a witness row is small and decodes");
        view.restore(&head);
    }
    let encoded = codec::encode(&view).len();
    (view, encoded)
}

/// `n` nodes, each asking every peer to witness its heads.
fn every_peer_a_witness(n: usize) -> Net {
    let mut config = test_config();
    config.federation.witnesses_wanted = n;
    Net::with_config(n, config)
}

/// Nine nodes witnessing each other for 70 epochs: node 0's witness view holds 64 heads
/// of each of the 8 others (~74 KB as one record, past the 64 KiB decode limit that made
/// such a node unable to restart). Stored one row per head, it restarts, remembers what it
/// cosigned, and keeps witnessing.
#[test]
fn a_witness_of_many_nodes_for_many_epochs_restarts_from_its_store() {
    let mut net = every_peer_a_witness(9);
    net.run_until(T0 + 70 * EPOCH + EPOCH / 2);
    let store = net.kill(0);
    let (before, _) = witness_view_of(&store);
    net.restart(0, store);
    net.run_for(3 * EPOCH);
    let witnessed: Vec<NodeId> = (1..9).map(|j| net.id(j)).collect();
    assert_eq!(net.fed(0).forks().count(), 0, "no fork certificate after the restart");
    let store = net.kill(0);
    let (after, single_record) = witness_view_of(&store);
    assert!(single_record > FRAME_BYTES_MAX, "the view outgrew one record: {single_record} bytes");
    for id in &witnessed {
        assert!(after.last_size(id) > before.last_size(id), "node 0 kept witnessing {id:?} from where it was");
        assert_eq!(after.epochs(id).len(), WITNESS_RECENT_HEADS, "old heads' rows are deleted");
    }
}

/// A store written by the previous layout (the whole witness view as one record, past
/// 64 KiB) opens: the record is read once, rewritten as rows, and deleted.
#[test]
fn a_witness_view_stored_as_one_record_is_migrated_to_rows() {
    let mut net = every_peer_a_witness(9);
    net.run_until(T0 + 70 * EPOCH + EPOCH / 2);
    let mut store = net.kill(0);
    let (view, single_record) = witness_view_of(&store);
    assert!(single_record > FRAME_BYTES_MAX);
    for (k, _) in store.scan_prefix(Table::FedState, b"whead/").unwrap() {
        store.delete(Table::FedState, &k).unwrap();
    }
    store.put(Table::FedState, b"witness-view", &codec::encode(&view)).unwrap();
    store.flush().unwrap();
    net.restart(0, store);
    let store = net.kill(0);
    assert_eq!(store.get(Table::FedState, b"witness-view").unwrap(), None, "the old record is gone");
    let (migrated, _) = witness_view_of(&store);
    for id in (1..9).map(|j| net.id(j)) {
        assert!(migrated.last_size(&id) >= view.last_size(&id), "every head carried over");
    }
}

/// Review follow-up to issue 10 items 1 and 4: a store written before the sparse directory
/// tree holds heads whose `dir_root` is the old sorted tree's. Recovery compared the
/// rebuilt (sparse) root with the newest head and refused to start, so a node with any
/// registered user could not be upgraded. Now the old root is recognised, the node seals a
/// new epoch as it starts, and a lookup verifies against it.
#[test]
fn a_store_sealed_under_the_old_sorted_tree_starts_and_reseals() {
    use nymstr_proto::federation::merkle::{self, LogTree};
    use nymstr_proto::federation::{EpochLeaf, TreeHead};
    let (mut net, alice) = with_alice();
    let mut store = net.kill(1);
    // Rewrite node 1's newest head as wire version 1 sealed it: the sorted-tree root of the
    // same entries, and the head log's root over that leaf.
    let heads: Vec<SignedHead> =
        store.scan_prefix(Table::KtHeads, &[]).unwrap().iter().map(|(_, v)| codec::decode(v).unwrap()).collect();
    let entries: Vec<(String, DirEntry)> = store
        .scan_prefix(Table::KtEntries, &[])
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), codec::decode(&v).unwrap()))
        .collect();
    assert!(!entries.is_empty(), "alice is in the directory");
    let leaves: Vec<[u8; 32]> = entries
        .iter()
        .map(|(name, e)| {
            let len = (name.len() as u16).to_le_bytes();
            merkle::hash(merkle::LABEL_DIR_LEAF, &[&len, name.as_bytes(), &merkle::entry_hash(e)])
        })
        .collect();
    fn rfc6962(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => merkle::dir_empty_root(),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                merkle::hash(merkle::LABEL_DIR_NODE, &[&rfc6962(&leaves[..k]), &rfc6962(&leaves[k..])])
            }
        }
    }
    let old = heads.last().unwrap().head.clone();
    let mut log = LogTree::new();
    for h in &heads[..heads.len() - 1] {
        let h = &h.head;
        log.push(merkle::log_leaf_hash(&EpochLeaf { epoch: h.epoch, dir_root: h.dir_root, dir_size: h.dir_size }));
    }
    let dir_root = rfc6962(&leaves);
    assert_ne!(dir_root, old.dir_root, "the two trees' roots differ");
    log.push(merkle::log_leaf_hash(&EpochLeaf { epoch: old.epoch, dir_root, dir_size: old.dir_size }));
    let rewritten = TreeHead { dir_root, log_root: log.root_at(log.len()), ..old.clone() };
    let signed = evidence::sign_head(&node_key(1), rewritten);
    store.put(Table::KtHeads, &old.epoch.to_be_bytes(), &codec::encode(&signed)).unwrap();
    store.flush().unwrap();

    net.restart(1, store);
    let newest = net.fed(1).log().latest().unwrap().head.clone();
    assert_eq!(newest.epoch, old.epoch + 1, "a new epoch is sealed at once");
    assert_eq!(newest.dir_root, old.dir_root, "under the sparse tree");
    // The witnesses here saw the sparse head the rewrite replaced (on a real upgrade they
    // saw the old one), so they cannot vouch for the new head: check the proof against its
    // root alone.
    let mut v = net.verifier(TrustPolicy::Tofu);
    let id1 = net.id(1);
    let (_, r) = net.kt_lookup(0, tag(202), &format!("alice@{}", net.hex(1)), 0);
    let (_, proof) = proof_of(&r);
    match v.check_lookup(&id1, "alice", proof) {
        Outcome::Verified(entry) => assert_eq!(installations_of(&entry), vec![alice.installation]),
        other => panic!("expected Verified, got {other:?}"),
    }
}

// Bounds of the witness rows (issue 10, item 1)

/// `wsize/` || node id: how far a witness cosigned node 0's log.
fn wsize_key(id: &NodeId) -> Vec<u8> {
    [b"wsize/".as_slice(), &id.0].concat()
}

/// The node ids of `rows` under `prefix` (the 32 bytes after it), distinct.
fn ids_under(store: &MemStore, prefix: &[u8]) -> BTreeSet<NodeId> {
    let rows = store.scan_prefix(Table::FedState, prefix).unwrap();
    rows.iter().map(|(k, _)| NodeId(k[prefix.len()..prefix.len() + 32].try_into().unwrap())).collect()
}

/// `n` made-up nodes, each with a key of its own.
fn made_up_nodes(n: usize) -> Vec<(SigningKey, NodeId)> {
    (0..n)
        .map(|k| {
            let key = generate_signing_key(&mut ChaCha20Rng::seed_from_u64(50_000 + k as u64));
            let id = descriptor::node_id(&key.verifying_key().to_bytes());
            (key, id)
        })
        .collect()
}

/// Fills node 0's stored witness view with `WITNESS_NODES_MAX` made-up nodes, one head each
/// recorded at `at` (and, with `wsize`, each a witness of node 0's log since `at`).
fn fill_witness_view_with_idle_nodes(store: &mut MemStore, at: u64, wsize: bool) -> Vec<(SigningKey, NodeId)> {
    let idle = made_up_nodes(WITNESS_NODES_MAX);
    for (key, id) in &idle {
        let head =
            TreeHead { node_id: *id, epoch: 0, dir_root: [0; 32], dir_size: 0, log_root: [0; 32], issued_at_us: at };
        let head = evidence::sign_head(key, head);
        let whead = [b"whead/".as_slice(), &id.0, &0u64.to_be_bytes()].concat();
        store.put(Table::FedState, &whead, &codec::encode(&(at, head))).unwrap();
        if wsize {
            store.put(Table::FedState, &wsize_key(id), &codec::encode(&(1u64, at))).unwrap();
        }
    }
    store.flush().unwrap();
    idle
}

/// A full witness view of nodes idle for a day (one head each, and each a witness of
/// node 0's log): a new node evicts the idlest, whose `whead/` and `wsize/` rows are
/// deleted, and the node restarts from what is left.
#[test]
fn a_full_witness_view_evicts_an_idle_node_and_its_rows() {
    let mut net = Net::new(2);
    let mut store = net.kill(0);
    let idle = fill_witness_view_with_idle_nodes(&mut store, net.now - WITNESS_IDLE_US, true);
    net.restart(0, store);
    net.run_for(2 * EPOCH);

    let victim = idle.iter().map(|(_, id)| *id).min().expect("nodes");
    let store = net.kill(0);
    let viewed = ids_under(&store, b"whead/");
    assert_eq!(viewed.len(), WITNESS_NODES_MAX, "the view stays full");
    assert!(viewed.contains(&net.id(1)), "node 1 took a slot");
    assert!(!viewed.contains(&victim), "the idlest node's heads are deleted");
    assert_eq!(store.get(Table::FedState, &wsize_key(&victim)).unwrap(), None, "and so is its witness size");
    assert!(ids_under(&store, b"wsize/").len() == WITNESS_NODES_MAX, "the other rows are kept");
    net.restart(0, store);
    net.run_for(2 * EPOCH);
    let witness = net.id(0);
    assert!(
        net.fed(1).log().latest_cosignatures().iter().any(|c| c.witness == witness),
        "after the restart node 0 still witnesses node 1"
    );
}

/// `wsize/` rows are bounded like the witness view: with `WITNESS_NODES_MAX` witnesses
/// recorded, one idle for a day, the first new witness takes its place and the second is
/// not recorded; both keep cosigning (a request from 0, answered by `CosignFrom`).
#[test]
fn witness_size_rows_are_bounded_and_evict_only_an_idle_witness() {
    let mut net = Net::new(3);
    let mut store = net.kill(0);
    let others = made_up_nodes(WITNESS_NODES_MAX);
    for (k, (_, id)) in others.iter().enumerate() {
        let at = if k == 0 { net.now - WITNESS_IDLE_US } else { net.now };
        store.put(Table::FedState, &wsize_key(id), &codec::encode(&(1u64, at))).unwrap();
    }
    store.flush().unwrap();
    net.restart(0, store);
    net.run_for(4 * EPOCH);
    let cosigners: BTreeSet<NodeId> = net.fed(0).log().latest_cosignatures().iter().map(|c| c.witness).collect();
    assert_eq!(cosigners, BTreeSet::from([net.id(1), net.id(2)]), "both witnesses cosign node 0's heads");
    let store = net.kill(0);
    let rows = ids_under(&store, b"wsize/");
    assert_eq!(rows.len(), WITNESS_NODES_MAX, "the rows stay bounded");
    assert!(!rows.contains(&others[0].1), "the idle witness's row is deleted");
    let new = [net.id(1), net.id(2)].iter().filter(|id| rows.contains(id)).count();
    assert_eq!(new, 1, "one new witness took the idle slot, the other is not recorded");
    net.restart(0, store);
}

/// Review follow-up to issue 10 item 1: with the witness view full, a `CosignRequest` from a
/// node new to the view made room (evicting the idlest node, rows and all) before the
/// head's signature was checked, so each badly signed request cost an honest node its
/// place. A bad head is now refused first and evicts no one.
#[test]
fn a_badly_signed_head_evicts_no_one_from_a_full_witness_view() {
    let mut net = Net::new(2);
    let mut store = net.kill(0);
    let one = net.id(1);
    let prefix = [b"whead/".as_slice(), &one.0].concat();
    for (k, _) in store.scan_prefix(Table::FedState, &prefix).unwrap() {
        store.delete(Table::FedState, &k).unwrap();
    }
    let idle = fill_witness_view_with_idle_nodes(&mut store, net.now - WITNESS_IDLE_US, false);
    net.restart(0, store);
    assert!(net.fed(0).peers().any(|(id, _)| *id == one), "node 1 is a peer again");
    let mut head = net.fed(1).log().latest().expect("node 1 sealed").clone();
    head.head.epoch += 1; // no longer what the signature covers
    net.inject(
        0,
        Peer::Address(addr(1)),
        &frame(77, Body::CosignRequest { head, from_log_size: 0, consistency: vec![] }),
    );
    let store = net.kill(0);
    let viewed = ids_under(&store, b"whead/");
    assert_eq!(viewed.len(), WITNESS_NODES_MAX, "the view is still full");
    assert!(idle.iter().all(|(_, id)| viewed.contains(id)), "no node lost its place to a badly signed head");
}

// ---------------------------------------------------------------------------------------
// Bounds against a malicious peer (issue 10 item 8)

/// A fresh self-signed descriptor of a node nobody runs, at `sybil{n}`.
fn sybil(n: u64) -> NodeDescriptor {
    let key = generate_signing_key(&mut ChaCha20Rng::seed_from_u64(50_000 + n));
    let address = format!("sybil{n}").into_bytes();
    descriptor::sign(&key, address, Roles { discovery: true, group: false }, "tofu".into(), EPOCH, T0)
}

/// `n` sybil descriptors whose ids sort below every id of `net`'s nodes (cheap to find).
fn low_id_sybils(net: &Net, n: usize) -> Vec<NodeDescriptor> {
    let lowest = (0..net.nodes.len()).map(|i| net.id(i)).min().expect("nodes");
    (0..).map(sybil).filter(|d| d.node_id < lowest).take(n).collect()
}

fn gossip_from(net: &mut Net, to: usize, from: usize, items: Vec<GossipItem>) {
    for chunk in items.chunks(nymstr_proto::limits::GOSSIP_ITEMS_MAX) {
        net.inject(to, Peer::Address(addr(from)), &frame(0, Body::Gossip { items: chunk.to_vec() }));
    }
}

fn hellos_to_sybils(net: &Net, from: usize) -> usize {
    net.wire
        .iter()
        .filter(|w| {
            w.from == from
                && matches!(w.envelope.body, Body::PeerHello { .. })
                && matches!(&w.to, Peer::Address(a) if a.0.starts_with(b"sybil"))
        })
        .count()
}

/// Node 1, an authenticated peer of node 0, gossips 2,000 fresh self-signed descriptors.
/// Node 0 takes at most `KNOWN_PER_INTRODUCER_MAX` of them, keeps its real peers, and
/// greets only a few of them (a bounded number a round), not each one.
#[test]
fn a_peer_flooding_descriptors_gets_only_its_share_and_few_dials() {
    use nymstr_proto::limits::{HELLOS_PER_ROUND_MAX, KNOWN_PER_INTRODUCER_MAX};
    let mut net = settled(3);
    let flood: Vec<GossipItem> = (0..2_000).map(|n| GossipItem::Descriptor(sybil(n))).collect();
    gossip_from(&mut net, 0, 1, flood);
    net.run_for(2 * EPOCH);
    let known: Vec<NodeId> = net.fed(0).known().map(|d| d.node_id).collect();
    assert!(known.len() <= 2 + KNOWN_PER_INTRODUCER_MAX, "node 0 holds {} descriptors", known.len());
    assert!(known.contains(&net.id(1)) && known.contains(&net.id(2)), "the real peers stay");
    let stored = net.node(0).store().scan_prefix(Table::FedPeers, &[]).unwrap().len();
    assert_eq!(stored, known.len(), "the store holds what memory holds");
    let dials = hellos_to_sybils(&net, 0);
    assert!(dials <= 4 * HELLOS_PER_ROUND_MAX, "node 0 dialled {dials} sybils");
    // Node 2 heard them from node 0 (which passed on only what it took): the same share.
    assert!(net.fed(2).known().count() <= 2 + KNOWN_PER_INTRODUCER_MAX);
}

/// The `Nodes` answer ranks peers and verified nodes before unverified ones: descriptors
/// with cheap low node ids do not push the real federation out of the 128-descriptor cut.
#[test]
fn low_node_ids_do_not_win_the_nodes_cut() {
    let mut net = settled(3);
    let sybils = low_id_sybils(&net, 8);
    gossip_from(&mut net, 0, 1, sybils.iter().cloned().map(GossipItem::Descriptor).collect());
    let listed: Vec<NodeId> = net.descriptors(0).iter().map(|d| d.node_id).collect();
    let position = |id: &NodeId| listed.iter().position(|x| x == id).expect("listed");
    let last_real = position(&net.id(1)).max(position(&net.id(2)));
    let first_sybil = sybils.iter().filter_map(|d| listed.iter().position(|x| *x == d.node_id)).min();
    assert!(first_sybil.is_some(), "the sybils are known (within node 1's share)");
    assert!(last_real < first_sybil.unwrap(), "real peers first: {listed:?}");
}

/// Hellos from ever new addresses fill at most `HANDSHAKES_MAX` handshakes; the rest are
/// refused `Busy` rather than remembered.
#[test]
fn handshakes_are_bounded() {
    use nymstr_proto::limits::HANDSHAKES_MAX;
    let mut net = settled(2);
    let (mut welcomed, mut busy) = (0, 0);
    for n in 0..(HANDSHAKES_MAX as u64 + 40) {
        let d = sybil(n);
        let from = Address(d.address.clone());
        let rid = 1_000 + n;
        net.inject(0, Peer::Address(from.clone()), &frame(rid, Body::PeerHello { descriptor: d, nonce: [7; 32] }));
        let answer =
            net.wire.iter().rev().find(|w| w.to == Peer::Address(from.clone()) && w.envelope.request_id == rid);
        match answer.map(|w| &w.envelope.body) {
            Some(Body::PeerWelcome { .. }) => welcomed += 1,
            Some(Body::Error { code: ErrorCode::Busy, .. }) => busy += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(welcomed <= HANDSHAKES_MAX, "{welcomed} handshakes held");
    assert!(busy >= 40, "{busy} refused");
}

/// An advert as `host` vouches for it: the admin's signature, then the host's.
fn hosted_advert(
    group_id: [u8; 16],
    admin: &SigningKey,
    group_node: &[u8],
    issued_at_us: u64,
    host: (&SigningKey, NodeId),
) -> nymstr_proto::wire::GroupAdvert {
    let mut a = nymstr_proto::wire::GroupAdvert {
        group_id,
        name: "rustaceans".into(),
        description: "a public group".into(),
        open: true,
        group_node: group_node.to_vec(),
        issued_at_us,
        admin_key: admin.verifying_key().to_bytes(),
        sig: nymstr_proto::wire::Sig([0; 64]),
        host: host.1,
        host_sig: nymstr_proto::wire::Sig([0; 64]),
    };
    a.sig = identity::sign(admin, &identity::group_advert_bytes(&a));
    a.host_sig = identity::sign(host.0, &identity::group_advert_host_bytes(&a));
    a
}

/// Node 2 hosts a public group and its advert reaches node 0. Node 1, a malicious peer,
/// then gossips adverts for the same group pointing at itself: self-signed and dated
/// `u64::MAX`, host-signed by itself, claiming node 2 as host under its own signature, and
/// dated just within the clock skew. None replaces the entry; only node 2 can update it.
#[test]
fn a_hijack_advert_never_replaces_a_public_groups_entry() {
    let mut net = settled(3);
    let gid = [0x42; 16];
    let admin = generate_signing_key(&mut ChaCha20Rng::seed_from_u64(77));
    let mallory = generate_signing_key(&mut ChaCha20Rng::seed_from_u64(78));
    let (k1, k2) = (net.keys[1].clone(), net.keys[2].clone());
    let (id1, id2) = (net.id(1), net.id(2));
    let real = hosted_advert(gid, &admin, b"node2", net.now, (&k2, id2));
    gossip_from(&mut net, 0, 2, vec![GossipItem::Advert(real.clone())]);
    let entry = |net: &Net, i: usize| net.fed(i).remote_adverts().find(|a| a.group_id == gid).cloned();
    assert_eq!(entry(&net, 0), Some(real.clone()), "the real advert is listed");
    let far = u64::MAX;
    let soon = net.now + nymstr_proto::limits::ADVERT_CLOCK_SKEW_US - 1;
    let mut forged_host = hosted_advert(gid, &mallory, b"node1", soon, (&k1, id1));
    forged_host.host = id2;
    let hijacks = vec![
        hosted_advert(gid, &mallory, b"node1", far, (&k1, id1)),
        hosted_advert(gid, &mallory, b"node1", soon, (&k1, id1)),
        hosted_advert(gid, &admin, b"node1", soon, (&k1, id1)),
        forged_host,
    ];
    gossip_from(&mut net, 0, 1, hijacks.into_iter().map(GossipItem::Advert).collect());
    net.run_for(EPOCH);
    assert_eq!(entry(&net, 0).map(|a| (a.host, a.group_node)), Some((id2, b"node2".to_vec())));
    // The host lists its own groups from its steward, never a peer's claim to them.
    assert_eq!(entry(&net, 2), None, "node 2 took no advert for its own group");
    // An advert dated u64::MAX from the real host is refused too (it would pin the entry).
    gossip_from(&mut net, 0, 2, vec![GossipItem::Advert(hosted_advert(gid, &admin, b"node2", far, (&k2, id2)))]);
    assert_eq!(entry(&net, 0).map(|a| a.issued_at_us), Some(real.issued_at_us));
    // The host itself may update its advert.
    let update = hosted_advert(gid, &admin, b"node2b", net.now, (&k2, id2));
    gossip_from(&mut net, 0, 2, vec![GossipItem::Advert(update.clone())]);
    assert_eq!(entry(&net, 0), Some(update));
}
