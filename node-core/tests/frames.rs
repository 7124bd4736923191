//! Frame-level robustness of `NodeCore::handle_frame`: whatever bytes arrive, the node
//! answers with a typed error (never panics), and keeps serving the next valid request.

mod common;

use common::*;
use nymstr_node_core::actors::Address;
use nymstr_node_core::{NodeConfig, Peer};
use nymstr_proto::codec::encode_frame;
use nymstr_proto::limits::FRAME_BYTES_MAX;
use nymstr_proto::wire::{Body, Envelope, ErrorCode, WIRE_VERSION};
use proptest::prelude::*;

const CLIENT: u8 = 9;

fn node_with_alice() -> Harness {
    let mut h = Harness::new();
    h.register(&User::new("alice", 1));
    h.flush();
    h
}

/// Feeds `bytes` and returns the single error code the node answers with. The answer
/// echoes the request id when the frame's first bytes still hold one, else 0.
fn garbage(h: &mut Harness, bytes: &[u8]) -> ErrorCode {
    let rejected = h.node.stats.frames_rejected;
    let out = h.raw(Peer::Tag(tag(CLIENT)), bytes);
    assert_eq!(out.len(), 1, "exactly one answer: {out:?}");
    assert_eq!(out[0].to, tag(CLIENT));
    assert_eq!(out[0].rid(), nymstr_proto::codec::peek_request_id(bytes));
    assert_eq!(out[0].durable_after, 0);
    assert_eq!(h.node.stats.frames_rejected, rejected + 1);
    let Body::Error { code, detail } = out[0].body() else { panic!("expected an error: {out:?}") };
    assert!(detail.len() <= nymstr_proto::limits::ERROR_DETAIL_BYTES_MAX);
    *code
}

/// The node still answers a lookup correctly.
fn still_serves(h: &mut Harness) {
    assert!(
        matches!(h.lookup(tag(CLIENT), "alice"), Body::LookupResult { ref username, .. } if username == "alice"),
        "the node stopped serving"
    );
}

fn valid_lookup_frame() -> Vec<u8> {
    encode_frame(&Envelope { request_id: 77, body: Body::Lookup { username: "alice".into() } }).unwrap()
}

#[test]
fn an_empty_frame_is_malformed() {
    let mut h = node_with_alice();
    assert_eq!(garbage(&mut h, &[]), ErrorCode::Malformed);
    still_serves(&mut h);
}

#[test]
fn an_unknown_version_is_unsupported() {
    let mut h = node_with_alice();
    let mut frame = valid_lookup_frame();
    for v in [0, WIRE_VERSION + 1, 0xff] {
        frame[0] = v;
        assert_eq!(garbage(&mut h, &frame), ErrorCode::UnsupportedVersion, "version {v}");
    }
    still_serves(&mut h);
}

#[test]
fn every_truncation_of_a_valid_frame_is_malformed() {
    let mut h = node_with_alice();
    let frame = valid_lookup_frame();
    for cut in 0..frame.len() {
        assert_eq!(garbage(&mut h, &frame[..cut]), ErrorCode::Malformed, "cut at {cut}");
    }
    still_serves(&mut h);
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut h = node_with_alice();
    let mut frame = valid_lookup_frame();
    frame.push(0);
    assert_eq!(garbage(&mut h, &frame), ErrorCode::Malformed);
    still_serves(&mut h);
}

#[test]
fn an_oversized_frame_is_refused_as_too_large() {
    let mut h = node_with_alice();
    // A well-formed lookup padded past the limit, and plain junk past the limit.
    let mut padded = valid_lookup_frame();
    padded.resize(FRAME_BYTES_MAX + 1, 0);
    assert_eq!(garbage(&mut h, &padded), ErrorCode::FrameTooLarge);
    assert_eq!(garbage(&mut h, &vec![0xaa; 4 * FRAME_BYTES_MAX]), ErrorCode::FrameTooLarge);
    still_serves(&mut h);
}

#[test]
fn a_frame_exactly_at_the_limit_is_decoded() {
    // The limit counts the version byte: a frame of FRAME_BYTES_MAX bytes is not "too large".
    let mut h = node_with_alice();
    let mut frame = valid_lookup_frame();
    frame.resize(FRAME_BYTES_MAX, 0);
    assert_eq!(garbage(&mut h, &frame), ErrorCode::Malformed, "decoded, then refused for its trailing bytes");
}

#[test]
fn a_length_prefix_larger_than_the_frame_is_malformed() {
    let mut h = node_with_alice();
    // request id 0, Lookup (variant 7), then a username claiming u64::MAX bytes.
    let mut frame = vec![WIRE_VERSION, 0, 7, 0xff];
    frame.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(garbage(&mut h, &frame), ErrorCode::Malformed);
    // A claimed length just inside the limit but with nothing behind it.
    let mut frame = vec![WIRE_VERSION, 0, 7, 0xfc];
    frame.extend_from_slice(&(FRAME_BYTES_MAX as u32 - 16).to_le_bytes());
    assert_eq!(garbage(&mut h, &frame), ErrorCode::Malformed);
    still_serves(&mut h);
}

#[test]
fn an_unknown_variant_or_error_code_is_malformed() {
    let mut h = node_with_alice();
    assert_eq!(garbage(&mut h, &[WIRE_VERSION, 0, 200]), ErrorCode::Malformed, "variant 200");
    // Body::Error (variant 13) with error code 777, which does not exist.
    let mut frame = vec![WIRE_VERSION, 0, 13, 251];
    frame.extend_from_slice(&777u16.to_le_bytes());
    frame.push(0);
    assert_eq!(garbage(&mut h, &frame), ErrorCode::Malformed);
    still_serves(&mut h);
}

#[test]
fn a_node_only_message_from_a_client_is_unexpected_and_echoes_the_request_id() {
    let mut h = node_with_alice();
    for body in [
        Body::SendAck { msg_id: [0; 16] },
        Body::Challenge { nonce: [0; 32], expires_at_us: 0, node: nymstr_proto::federation::NodeId([0; 32]) },
        Body::Registered { username: "alice".into(), installation: [0; 32] },
        Body::LoggedIn { installation: [0; 32], queued: 0 },
        Body::Deliver { delivery_id: 1, from_username: "x".into(), from: [0; 32], msg_id: [0; 16], sealed: vec![] },
        Body::LookupResult { username: "alice".into(), account_key: [0; 32], installations: vec![] },
    ] {
        let kind = body.kind();
        assert_eq!(h.ask_err(tag(CLIENT), body), ErrorCode::UnexpectedMessage, "{kind}");
    }
    still_serves(&mut h);
}

#[test]
fn an_error_is_never_answered_from_a_tag_or_an_address() {
    // Answering errors would let two peers bounce them forever.
    let mut h = node_with_alice();
    let error =
        encode_frame(&Envelope { request_id: 5, body: Body::Error { code: ErrorCode::Internal, detail: "?".into() } })
            .unwrap();
    for from in [Peer::Tag(tag(CLIENT)), Peer::Address(Address(b"some-node".to_vec()))] {
        let rejected = h.node.stats.frames_rejected;
        assert!(h.raw(from, &error).is_empty(), "an error was answered");
        assert_eq!(h.node.stats.frames_rejected, rejected + 1);
    }
    still_serves(&mut h);
}

#[test]
fn an_undecodable_frame_echoes_its_request_id_when_it_can() {
    let mut h = node_with_alice();
    let mut frame = valid_lookup_frame();
    frame.push(0);
    let out = h.raw(Peer::Tag(tag(CLIENT)), &frame);
    assert_eq!(out[0].rid(), 77, "the trailing-byte error names request 77");
    still_serves(&mut h);
}

#[test]
fn a_client_request_from_a_node_address_is_unexpected_until_federation() {
    let mut h = node_with_alice();
    let from = Peer::Address(Address(b"some-node".to_vec()));
    h.node.handle_frame(h.now, from.clone(), &valid_lookup_frame());
    let out: Vec<_> = h.node.drain_outputs().collect();
    assert_eq!(out.len(), 1, "{out:?}");
    let nymstr_node_core::Output::Send { to, envelope, .. } = &out[0];
    assert_eq!(to, &from, "the answer goes back to the address");
    assert_eq!(envelope.request_id, 77);
    assert!(matches!(envelope.body, Body::Error { code: ErrorCode::UnexpectedMessage, .. }));
    still_serves(&mut h);
}

#[test]
fn garbage_does_not_disturb_a_registration_in_progress() {
    let mut h = Harness::with_config(NodeConfig { challenges_pending_max: 1, ..NodeConfig::default() });
    let bob = User::new("bob", 2);
    let nonce = h.challenge_for_register(&bob);
    for junk in [&[][..], &[1, 2, 3][..], &[WIRE_VERSION, 0, 5][..]] {
        let _ = h.raw(Peer::Tag(bob.tag), junk);
    }
    assert!(matches!(h.ask(bob.tag, bob.register_response(&nonce)).body(), Body::Registered { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Arbitrary bytes after a valid version byte: the node answers each frame with at
    /// most one message to the sender (an error unless the bytes happen to form a valid
    /// request), every output is sendable, and a valid lookup still works afterwards.
    #[test]
    fn arbitrary_frames_never_break_the_node(frames in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..512), 1..8)) {
        let mut h = node_with_alice();
        for mut bytes in frames {
            if !bytes.is_empty() {
                bytes[0] = WIRE_VERSION;
            }
            let out = h.raw(Peer::Tag(tag(CLIENT)), &bytes);
            prop_assert!(out.len() <= 1, "{:?}", out);
        }
        still_serves(&mut h);
    }

    /// Single bit flips of a valid registration request never panic the node, and never
    /// yield anything but an error or a challenge.
    #[test]
    fn bit_flipped_requests_yield_an_error_or_a_challenge(bit in any::<usize>()) {
        let mut h = node_with_alice();
        let bob = User::new("bob", 2);
        let mut frame = encode_frame(&Envelope { request_id: 5, body: bob.register_request() }).unwrap();
        let i = bit % (frame.len() * 8);
        frame[i / 8] ^= 1 << (i % 8);
        let out = h.raw(Peer::Tag(tag(CLIENT)), &frame);
        prop_assert_eq!(out.len(), 1);
        prop_assert!(matches!(out[0].body(), Body::Error { .. } | Body::Challenge { .. }), "{:?}", out[0]);
        still_serves(&mut h);
    }
}
