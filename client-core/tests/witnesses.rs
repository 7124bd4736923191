//! The client's witnesses (`specs/trust.md` §5): only its configuration and what its user
//! adds count; descriptors the home node lists (`fetch_nodes`) or that gossip brought it
//! are node keys, never witnesses.

use ed25519_dalek::SigningKey;
use nymstr_client_core::{ClientConfig, ClientCore};
use nymstr_proto::codec;
use nymstr_proto::federation::verify::TrustPolicy;
use nymstr_proto::federation::{NodeDescriptor, Roles, descriptor};
use nymstr_proto::identity::generate_signing_key;
use nymstr_proto::wire::{Body, Envelope};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_700_000_000_000_000;

fn node(seed: u64) -> NodeDescriptor {
    let key: SigningKey = generate_signing_key(&mut ChaCha20Rng::seed_from_u64(seed));
    let address = format!("node{seed}").into_bytes();
    descriptor::sign(&key, address, Roles { discovery: true, group: false }, "witness-quorum:2".into(), 30_000_000, T0)
}

fn client(witnesses: Vec<NodeDescriptor>) -> ClientCore {
    let config = ClientConfig { trust: TrustPolicy::WitnessQuorum { required: 2 }, witnesses, ..Default::default() };
    ClientCore::new(ChaCha20Rng::seed_from_u64(1), config)
}

/// The home node answers `fetch_nodes` with itself and every descriptor it knows, sybils
/// included: the client learns their keys, and its witnesses stay the configured ones.
#[test]
fn nodes_from_the_home_never_become_witnesses() {
    let configured = vec![node(1), node(2)];
    let mut c = client(configured.clone());
    c.fetch_nodes(T0);
    let request = c.drain_transmits().find(|e| matches!(e.body, Body::NodesRequest)).expect("a NodesRequest");
    let home = node(3);
    let sybils: Vec<NodeDescriptor> = (100..110).map(node).collect();
    let mut descriptors = vec![home.clone()];
    descriptors.extend(sybils.iter().cloned());
    let answer = Envelope { request_id: request.request_id, body: Body::Nodes { descriptors } };
    c.handle_frame(T0, &codec::encode_frame(&answer).unwrap());
    let v = c.transparency();
    let witnesses: Vec<_> = v.witnesses().iter().copied().collect();
    let mut expected: Vec<_> = configured.iter().map(|d| d.node_id).collect();
    expected.sort();
    assert_eq!(witnesses, expected, "only the configured witnesses count");
    for d in sybils.iter().chain([&home]) {
        assert_eq!(v.node_key(&d.node_id), Some(&d.key), "the node key is learnt");
    }
    assert_eq!(c.home_node(), Some(&home.node_id));
}

/// A witness the user adds (`add_witness`, e.g. `nymstr witness add`) counts, survives a
/// restore, and a configured witness is there again after a restore of an older state.
#[test]
fn added_and_configured_witnesses_count_and_survive_a_restore() {
    let mut c = client(vec![node(1)]);
    let extra = node(5);
    c.add_witness(&extra).expect("a valid descriptor");
    let mut forged = node(6);
    forged.address = b"elsewhere".to_vec();
    assert!(c.add_witness(&forged).is_err(), "a descriptor that does not verify is refused");
    let state = c.export_state();
    let config = ClientConfig {
        trust: TrustPolicy::WitnessQuorum { required: 2 },
        witnesses: vec![node(1), node(7)],
        ..Default::default()
    };
    let restored = ClientCore::restore(ChaCha20Rng::seed_from_u64(2), config, state).expect("restores");
    let w = restored.transparency().witnesses();
    for id in [node(1).node_id, extra.node_id, node(7).node_id] {
        assert!(w.contains(&id), "{id:?} is a witness");
    }
    assert!(!w.contains(&forged.node_id));
}
