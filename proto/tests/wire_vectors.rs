//! Checks the test vectors of `specs/wire.md` byte for byte.
//!
//! Every fenced ```text block of the spec that contains a `vector:` line is one vector:
//!
//! ```text
//! vector: lookup_alice
//! kind: frame
//! value: Envelope { request_id: 7, body: Lookup { username: "alice" } }
//! hex: 03 07 07 05 616c696365
//! ```
//!
//! * `kind: frame` — `hex` is `codec::encode_frame` of the value the test builds for the
//!   vector's name; decoding `hex` with `codec::decode_frame` gives the value back.
//! * `kind: bytes` — `hex` is the output of a codec or identity function (signed bytes,
//!   derived ids) the test computes for the vector's name.
//! * `kind: reject` — `codec::decode_frame(hex)` fails with the class named by `error:`.
//!
//! A line `key: value` starts a field; any other line continues the previous field (so
//! `hex` may span lines). In `hex`, whitespace and `#` comments (to the end of the line)
//! are ignored. An unknown vector name fails the test, so the spec and this file must
//! change together.

use ed25519_dalek::SigningKey;
use nymstr_proto::codec::{self, CodecError};
use nymstr_proto::federation::{
    Cosignature, DirEntry, EntryStatus, NodeDescriptor, NodeId, Promise, Roles, SignedHead, TreeHead, descriptor,
    evidence, merkle,
};
use nymstr_proto::identity;
use nymstr_proto::wire::{
    Body, Envelope, ErrorCode, GossipItem, GroupAdvert, GroupEntry, GroupId, InstallationCert, InstallationPayload,
    InviteToken, SendDm,
};

const SPEC: &str = include_str!("../../specs/wire.md");

// --- deterministic inputs (documented in specs/wire.md, "Test vectors") ---

/// Fixed 32-byte secrets: ed25519 seeds and an X25519 scalar.
fn ed25519(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

fn x25519_public(byte: u8) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([byte; 32])).to_bytes()
}

const ALICE_CREATED_AT_US: u64 = 1_700_000_000_000_000;
const BOB_CREATED_AT_US: u64 = 1_700_000_000_500_000;

fn alice_account() -> SigningKey {
    ed25519(0x01)
}
fn alice_installation() -> SigningKey {
    ed25519(0x02)
}
fn alice_cert() -> InstallationCert {
    let inst = alice_installation().verifying_key().to_bytes();
    identity::issue_cert(&alice_account(), &inst, &x25519_public(0x03), ALICE_CREATED_AT_US)
}
fn alice_installation_id() -> [u8; 32] {
    identity::installation_id(&alice_installation().verifying_key().to_bytes())
}

fn bob_cert() -> InstallationCert {
    let inst = ed25519(0x05).verifying_key().to_bytes();
    identity::issue_cert(&ed25519(0x04), &inst, &x25519_public(0x06), BOB_CREATED_AT_US)
}
fn bob_installation_id() -> [u8; 32] {
    identity::installation_id(&ed25519(0x05).verifying_key().to_bytes())
}

/// `00 01 02 .. 1f`.
fn nonce() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

/// `a0 a1 .. af`.
fn msg_id() -> [u8; 16] {
    std::array::from_fn(|i| 0xa0 + i as u8)
}

fn send_dm() -> SendDm {
    let from = alice_installation_id();
    let payloads =
        vec![InstallationPayload { installation: bob_installation_id(), sealed: b"sealed-for-bob".to_vec() }];
    let signed = identity::send_dm_fields_bytes(&from, "bob", &msg_id(), &payloads);
    let sig = identity::sign(&alice_installation(), &signed);
    SendDm { from, to: "bob".into(), msg_id: msg_id(), payloads, sig }
}

// --- group inputs (specs/wire.md §8.6) ---

const ADVERT_ISSUED_AT_US: u64 = 1_700_000_000_000_000;
const TOKEN_EXPIRES_AT_US: u64 = 1_700_604_800_000_000;

/// `b0 b1 .. bf`.
fn group_id() -> GroupId {
    std::array::from_fn(|i| 0xb0 + i as u8)
}

/// `c0 c1 .. cf`.
fn upload_id() -> [u8; 16] {
    std::array::from_fn(|i| 0xc0 + i as u8)
}

/// `d0 d1 .. df`.
fn token_id() -> [u8; 16] {
    std::array::from_fn(|i| 0xd0 + i as u8)
}

fn alice_installation_key() -> [u8; 32] {
    alice_installation().verifying_key().to_bytes()
}

/// `ADVERT`: signed by `ALICE_INSTALLATION_KEY` over `group_advert_bytes`.
fn advert() -> GroupAdvert {
    let mut a = GroupAdvert {
        group_id: group_id(),
        name: "chat".into(),
        description: "test".into(),
        open: true,
        group_node: b"127.0.0.1:7000".to_vec(),
        issued_at_us: ADVERT_ISSUED_AT_US,
        admin_key: alice_installation_key(),
        sig: nymstr_proto::wire::Sig([0; 64]),
        host: nymstr_proto::federation::NodeId([0; 32]),
        host_sig: nymstr_proto::wire::Sig([0; 64]),
    };
    a.sig = identity::sign(&alice_installation(), &identity::group_advert_bytes(&a));
    a
}

/// The invitee of `TOKEN`: `BOB_ACCOUNT_KEY`.
fn bob_account_key() -> [u8; 32] {
    ed25519(0x04).verifying_key().to_bytes()
}

/// `HOSTED_ADVERT`: `ADVERT` as node A hosts it, `host_sig` by node A over
/// `group_advert_host_bytes` (what peers gossip and `Directory` lists).
fn hosted_advert() -> GroupAdvert {
    let mut a = advert();
    a.host = node_a();
    a.host_sig = identity::sign(&node_a_key(), &identity::group_advert_host_bytes(&a));
    a
}

fn invite_token_bytes() -> Vec<u8> {
    identity::invite_token_bytes(
        &group_id(),
        &token_id(),
        TOKEN_EXPIRES_AT_US,
        &alice_installation_key(),
        &Some(bob_account_key()),
    )
}

/// `TOKEN`: signed by `ALICE_INSTALLATION_KEY` over `invite_token_bytes`.
fn token() -> InviteToken {
    InviteToken {
        group_id: group_id(),
        token_id: token_id(),
        expires_at_us: TOKEN_EXPIRES_AT_US,
        admin_key: alice_installation_key(),
        invitee: Some(bob_account_key()),
        sig: identity::sign(&alice_installation(), &invite_token_bytes()),
    }
}

fn entry(seq: u64, epoch: u64, mls: &[u8]) -> GroupEntry {
    GroupEntry { seq, epoch, mls: mls.to_vec() }
}

// --- federation inputs (specs/wire.md §8.7) ---

const NODE_ISSUED_AT_US: u64 = 1_700_000_000_000_000;
const HEAD_ISSUED_AT_US: u64 = 1_700_000_060_000_000;

/// Node A: ed25519 seed `07 07 .. 07`; node B: seed `08 08 .. 08`.
fn node_a_key() -> SigningKey {
    ed25519(0x07)
}
fn node_b_key() -> SigningKey {
    ed25519(0x08)
}
fn node_a() -> NodeId {
    descriptor::node_id(&node_a_key().verifying_key().to_bytes())
}
fn node_b() -> NodeId {
    descriptor::node_id(&node_b_key().verifying_key().to_bytes())
}

/// `NODE_A_DESCRIPTOR`.
fn node_a_descriptor() -> NodeDescriptor {
    descriptor::sign(
        &node_a_key(),
        b"127.0.0.1:7001".to_vec(),
        Roles { discovery: true, group: false },
        "witness-quorum:3".into(),
        30_000_000,
        NODE_ISSUED_AT_US,
    )
}

/// `HEAD_A5`: node A's head of epoch 5.
fn head_a5() -> SignedHead {
    evidence::sign_head(
        &node_a_key(),
        TreeHead {
            node_id: node_a(),
            epoch: 5,
            dir_root: [0x01; 32],
            dir_size: 2,
            log_root: [0x02; 32],
            issued_at_us: HEAD_ISSUED_AT_US,
        },
    )
}

/// `COSIG_B`: node B's cosignature of `HEAD_A5`.
fn cosig_b() -> Cosignature {
    evidence::cosign(&node_b_key(), &head_a5())
}

/// `ALICE_ENTRY`: alice's first directory entry, staged for epoch 1.
fn alice_entry() -> DirEntry {
    DirEntry {
        username: "alice".into(),
        account_key: alice_account().verifying_key().to_bytes(),
        installations: vec![alice_cert()],
        status: EntryStatus::Active,
        seq: 1,
        epoch: 1,
    }
}

/// `PROMISE`: node A promises `ALICE_ENTRY` by epoch 1.
fn promise() -> Promise {
    let e = alice_entry();
    evidence::sign_promise(&node_a_key(), "alice", merkle::entry_hash(&e), e.seq, e.epoch)
}

/// `FORWARDED_DM`: alice's DM to `bob@<node B>`, as her home node A forwards it.
/// `FORWARD_SENT_AT_US`: when node A forwarded `FORWARDED_DM`.
const FORWARD_SENT_AT_US: u64 = 1_700_000_100_000_000;

/// What node A signs to forward `FORWARDED_DM` to node B.
fn forward_dm_bytes() -> Vec<u8> {
    identity::forward_dm_bytes(&format!("alice@{}", node_a().to_hex()), &node_b(), FORWARD_SENT_AT_US, &forwarded_dm())
}

fn forwarded_dm() -> SendDm {
    let from = alice_installation_id();
    let to = format!("bob@{}", node_b().to_hex());
    let payloads =
        vec![InstallationPayload { installation: bob_installation_id(), sealed: b"sealed-for-bob".to_vec() }];
    let signed = identity::send_dm_fields_bytes(&from, &to, &msg_id(), &payloads);
    let sig = identity::sign(&alice_installation(), &signed);
    SendDm { from, to, msg_id: msg_id(), payloads, sig }
}

fn env(request_id: u64, body: Body) -> Envelope {
    Envelope { request_id, body }
}

/// The envelope of a `kind: frame` vector.
fn frame(name: &str) -> Option<Envelope> {
    let n = nonce();
    let alice = alice_installation_id();
    let g = group_id();
    Some(match name {
        "lookup_alice" => env(7, Body::Lookup { username: "alice".into() }),
        "register_request" => env(1, Body::RegisterRequest { username: "alice".into(), cert: alice_cert() }),
        "challenge" => {
            env(1, Body::Challenge { nonce: n, expires_at_us: ALICE_CREATED_AT_US + 60_000_000, node: node_a() })
        }
        "register_response" => env(
            2,
            Body::RegisterResponse {
                nonce: n,
                account_sig: identity::sign(
                    &alice_account(),
                    &identity::register_account_bytes(&n, &node_a(), "alice", &alice),
                ),
                installation_sig: identity::sign(
                    &alice_installation(),
                    &identity::register_installation_bytes(&n, &node_a(), "alice", &alice),
                ),
            },
        ),
        "registered" => env(2, Body::Registered { username: "alice".into(), installation: alice }),
        "login_request" => env(300, Body::LoginRequest { installation: alice }),
        "login_response" => env(
            301,
            Body::LoginResponse {
                nonce: n,
                installation_sig: identity::sign(&alice_installation(), &identity::login_bytes(&n, &node_a(), &alice)),
            },
        ),
        "logged_in" => env(301, Body::LoggedIn { installation: alice, queued: 70_000 }),
        "lookup_result_bob" => env(
            8,
            Body::LookupResult {
                username: "bob".into(),
                account_key: ed25519(0x04).verifying_key().to_bytes(),
                installations: vec![bob_cert()],
            },
        ),
        "send_dm" => env(9, Body::SendDm(send_dm())),
        "send_ack" => env(9, Body::SendAck { msg_id: msg_id() }),
        "deliver" => env(
            0,
            Body::Deliver {
                delivery_id: 1,
                from_username: "alice".into(),
                from: alice,
                msg_id: msg_id(),
                sealed: b"sealed-for-bob".to_vec(),
            },
        ),
        "ack_delivery" => env(0, Body::AckDelivery { delivery_ids: vec![1, 250, 251, 65_536, u64::MAX] }),
        "error_busy" => env(1, Body::Error { code: ErrorCode::Busy, detail: "retry later".into() }),
        "error_internal" => env(u64::MAX, Body::Error { code: ErrorCode::Internal, detail: String::new() }),
        // §8.6 group messages.
        "group_create" => {
            env(20, Body::GroupCreate { group_id: g, group_info: b"group-info".to_vec(), advert: Some(advert()) })
        }
        "group_created" => env(20, Body::GroupCreated { group_id: g, epoch: 0 }),
        "group_subscribe" => {
            env(21, Body::GroupSubscribe { group_id: g, member_key: alice_installation_key(), from_seq: 1 })
        }
        "group_subscribe_proof" => env(
            22,
            Body::GroupSubscribeProof {
                group_id: g,
                nonce: n,
                sig: identity::sign(&alice_installation(), &identity::group_subscribe_bytes(&g, &n)),
            },
        ),
        "group_subscribed" => env(22, Body::GroupSubscribed { group_id: g, epoch: 3, next_seq: 300 }),
        "group_upload" => env(
            23,
            Body::GroupUpload {
                group_id: g,
                upload_id: upload_id(),
                mls: b"mls-commit".to_vec(),
                group_info: b"group-info".to_vec(),
                invite: Some(token()),
            },
        ),
        "group_upload_ack" => env(23, Body::GroupUploadAck { group_id: g, upload_id: upload_id(), seq: 300, epoch: 3 }),
        "group_push" => env(0, Body::GroupPush { group_id: g, entry: entry(300, 3, b"mls-commit") }),
        "group_fetch" => env(24, Body::GroupFetch { group_id: g, from_seq: 251, max: 64 }),
        "group_entries" => env(
            24,
            Body::GroupEntries { group_id: g, entries: vec![entry(251, 2, b"a"), entry(253, 3, b"b")], next_seq: 301 },
        ),
        "group_info_request" => env(25, Body::GroupInfoRequest { group_id: g }),
        "group_info_reply" => {
            env(25, Body::GroupInfoReply { group_id: g, epoch: 3, open: false, group_info: b"group-info".to_vec() })
        }
        "directory_request" => env(26, Body::DirectoryRequest),
        "directory" => env(26, Body::Directory { adverts: vec![hosted_advert()] }),
        "group_unsubscribe" => env(0, Body::GroupUnsubscribe { group_id: g }),
        "error_wrong_epoch" => env(23, Body::Error { code: ErrorCode::WrongEpoch, detail: "current epoch 3".into() }),
        "error_not_subscribed" => env(24, Body::Error { code: ErrorCode::NotSubscribed, detail: String::new() }),
        // §8.7 federation messages.
        "peer_hello" => env(0, Body::PeerHello { descriptor: node_a_descriptor(), nonce: n }),
        "peer_proof" => env(
            0,
            Body::PeerProof {
                answer: identity::sign(&node_a_key(), &identity::peer_challenge_bytes(&n, &node_b(), &node_a())),
            },
        ),
        "gossip_head" => {
            env(0, Body::Gossip { items: vec![GossipItem::Head { head: head_a5(), cosignatures: vec![cosig_b()] }] })
        }
        "cosign_request" => env(40, Body::CosignRequest { head: head_a5(), from_log_size: 0, consistency: Vec::new() }),
        "cosigned" => env(40, Body::Cosigned { cosignature: cosig_b() }),
        "kt_lookup" => env(41, Body::KtLookup { name: format!("bob@{}", node_b().to_hex()), from_log_size: 3 }),
        "forward_dm" => env(
            42,
            Body::ForwardDm {
                from_username: format!("alice@{}", node_a().to_hex()),
                cert: alice_cert(),
                dm: forwarded_dm(),
                sent_at_us: FORWARD_SENT_AT_US,
                sig: identity::sign(&node_a_key(), &forward_dm_bytes()),
            },
        ),
        "include_promise" => env(2, Body::IncludePromise { promise: promise() }),
        "nodes_request" => env(43, Body::NodesRequest),
        "error_unreachable" => env(41, Body::Error { code: ErrorCode::Unreachable, detail: String::new() }),
        _ => return None,
    })
}

/// The bytes of a `kind: bytes` vector.
fn bytes(name: &str) -> Option<Vec<u8>> {
    let n = nonce();
    let alice = alice_installation_id();
    let cert = alice_cert();
    Some(match name {
        "alice_account_key" => alice_account().verifying_key().to_bytes().to_vec(),
        "alice_installation_key" => alice_installation().verifying_key().to_bytes().to_vec(),
        "alice_dh_key" => x25519_public(0x03).to_vec(),
        "alice_installation_id" => alice.to_vec(),
        "alice_cert_signing_bytes" => {
            identity::cert_signing_bytes(&cert.account_key, &cert.signing_key, &cert.dh_key, cert.created_at_us)
        }
        "alice_cert_codec" => codec::encode(&cert),
        "register_account_bytes" => identity::register_account_bytes(&n, &node_a(), "alice", &alice),
        "register_installation_bytes" => identity::register_installation_bytes(&n, &node_a(), "alice", &alice),
        "login_bytes" => identity::login_bytes(&n, &node_a(), &alice),
        "send_dm_signing_bytes" => identity::send_dm_signing_bytes(&send_dm()),
        // §8.6 group signed bytes.
        "group_subscribe_bytes" => identity::group_subscribe_bytes(&group_id(), &n),
        "invite_token_bytes" => invite_token_bytes(),
        "group_advert_bytes" => identity::group_advert_bytes(&advert()),
        "group_advert_host_bytes" => identity::group_advert_host_bytes(&hosted_advert()),
        // §8.7 federation signed bytes.
        "peer_challenge_bytes" => identity::peer_challenge_bytes(&n, &node_b(), &node_a()),
        "node_a_descriptor_signing_bytes" => descriptor::signing_bytes(&node_a_descriptor()),
        "forward_dm_bytes" => forward_dm_bytes(),
        _ => return None,
    })
}

/// The error class a `kind: reject` vector names.
fn error_class(e: &CodecError) -> &'static str {
    match e {
        CodecError::Empty => "Empty",
        CodecError::TooLarge { .. } => "TooLarge",
        CodecError::UnsupportedVersion(_) => "UnsupportedVersion",
        CodecError::Malformed(_) => "Malformed",
        CodecError::Trailing(_) => "Trailing",
    }
}

struct Vector {
    name: String,
    kind: String,
    error: Option<String>,
    hex: Vec<u8>,
}

fn parse_hex(s: &str, name: &str) -> Vec<u8> {
    let clean: String = s
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    hex::decode(&clean).unwrap_or_else(|e| panic!("vector {name}: bad hex: {e}"))
}

fn is_field_line(line: &str) -> Option<(&str, &str)> {
    let (key, rest) = line.split_once(':')?;
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some((key, rest))
}

fn parse_vectors(spec: &str) -> Vec<Vector> {
    let mut vectors = Vec::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```text" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if !block.iter().any(|l| l.starts_with("vector:")) {
            continue;
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        for l in block {
            match is_field_line(l) {
                Some((k, v)) => fields.push((k.to_string(), v.to_string())),
                None => {
                    let (_, v) = fields.last_mut().unwrap_or_else(|| panic!("vector block starts with {l:?}"));
                    v.push('\n');
                    v.push_str(l);
                }
            }
        }
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim().to_string());
        for (k, _) in &fields {
            assert!(["vector", "kind", "value", "error", "hex"].contains(&k.as_str()), "unknown vector field {k:?}");
        }
        let name = get("vector").expect("vector name");
        let kind = get("kind").unwrap_or_else(|| panic!("vector {name}: no kind"));
        let hex = parse_hex(&get("hex").unwrap_or_else(|| panic!("vector {name}: no hex")), &name);
        vectors.push(Vector { error: get("error"), name, kind, hex });
    }
    vectors
}

/// Checks one `frame` or `bytes` vector; `Err` says how it differs.
fn check(v: &Vector) -> Result<(), String> {
    match v.kind.as_str() {
        "frame" => {
            let value = frame(&v.name).unwrap_or_else(|| panic!("unknown frame vector {:?}", v.name));
            let encoded = codec::encode_frame(&value).expect("vector encodes");
            if encoded != v.hex {
                return Err(format!("encoding differs: {} != {}", hex::encode(&encoded), hex::encode(&v.hex)));
            }
            if codec::decode_frame(&v.hex).as_ref() != Ok(&value) {
                return Err("decoding differs".into());
            }
            Ok(())
        }
        "bytes" => {
            let expected = bytes(&v.name).unwrap_or_else(|| panic!("unknown bytes vector {:?}", v.name));
            if expected != v.hex {
                return Err(format!("bytes differ: {} != {}", hex::encode(&expected), hex::encode(&v.hex)));
            }
            Ok(())
        }
        other => panic!("vector {}: not a frame or bytes vector ({other:?})", v.name),
    }
}

/// The group vectors of §8.6: every group frame and the group signed bytes.
const GROUP_VECTORS: [&str; 21] = [
    "group_create",
    "group_created",
    "group_subscribe",
    "group_subscribe_proof",
    "group_subscribed",
    "group_upload",
    "group_upload_ack",
    "group_push",
    "group_fetch",
    "group_entries",
    "group_info_request",
    "group_info_reply",
    "directory_request",
    "directory",
    "group_unsubscribe",
    "error_wrong_epoch",
    "error_not_subscribed",
    "group_subscribe_bytes",
    "invite_token_bytes",
    "group_advert_bytes",
    "group_advert_host_bytes",
];

/// The federation vectors of §8.7: a frame of most federation messages and the peer
/// challenge's signed bytes.
const FEDERATION_VECTORS: [&str; 13] = [
    "peer_hello",
    "peer_proof",
    "gossip_head",
    "cosign_request",
    "cosigned",
    "kt_lookup",
    "forward_dm",
    "include_promise",
    "nodes_request",
    "error_unreachable",
    "peer_challenge_bytes",
    "node_a_descriptor_signing_bytes",
    "forward_dm_bytes",
];

#[test]
fn spec_vectors_match_the_codec() {
    let vectors = parse_vectors(SPEC);
    let mut names = std::collections::BTreeSet::new();
    let (mut frames, mut byte_vectors, mut rejects) = (0, 0, 0);
    for v in &vectors {
        assert!(names.insert(v.name.clone()), "duplicate vector {}", v.name);
        match v.kind.as_str() {
            "frame" | "bytes" => {
                if let Err(e) = check(v) {
                    panic!("vector {}: {e}", v.name);
                }
                if v.kind == "frame" {
                    frames += 1;
                } else {
                    byte_vectors += 1;
                }
            }
            "reject" => {
                let want = v.error.as_deref().unwrap_or_else(|| panic!("vector {}: no error", v.name));
                match codec::decode_frame(&v.hex) {
                    Ok(env) => panic!("vector {}: decoded to {env:?}, expected {want}", v.name),
                    Err(e) => assert_eq!(error_class(&e), want, "vector {}: {e}", v.name),
                }
                rejects += 1;
            }
            other => panic!("vector {}: unknown kind {other:?}", v.name),
        }
    }
    assert!(frames >= 8, "only {frames} frame vectors parsed from specs/wire.md");
    assert!(byte_vectors >= 1 && rejects >= 1, "bytes and reject vectors missing");
    for name in GROUP_VECTORS {
        assert!(names.contains(name), "group vector {name} is not in specs/wire.md");
    }
    for name in FEDERATION_VECTORS {
        assert!(names.contains(name), "federation vector {name} is not in specs/wire.md");
    }
}

/// Changing any one byte of a `frame` or `bytes` vector (here: every byte of the group
/// vectors, and the first and last byte of the others) makes its check fail.
#[test]
fn a_changed_byte_fails_its_vector() {
    let vectors = parse_vectors(SPEC);
    let mut checked = 0;
    for v in vectors.iter().filter(|v| v.kind == "frame" || v.kind == "bytes") {
        let every_byte = GROUP_VECTORS.contains(&v.name.as_str()) || FEDERATION_VECTORS.contains(&v.name.as_str());
        let positions: Vec<usize> = if every_byte { (0..v.hex.len()).collect() } else { vec![0, v.hex.len() - 1] };
        for i in positions {
            let mut hex = v.hex.clone();
            hex[i] ^= 0x01;
            let mutated = Vector { name: v.name.clone(), kind: v.kind.clone(), error: None, hex };
            assert!(check(&mutated).is_err(), "vector {}: byte {i} changed and the check still passes", v.name);
            checked += 1;
        }
    }
    assert!(checked > GROUP_VECTORS.len(), "no vectors mutated");
}

/// Every cryptographic value in the vectors is consistent (the signatures verify), so the
/// vectors double as a check of the signed-bytes rules of `specs/registry.md`.
#[test]
fn vector_signatures_verify() {
    let n = nonce();
    let alice = alice_installation_id();
    assert_eq!(identity::verify_cert(&alice_cert()), Ok(()));
    assert_eq!(identity::verify_cert(&bob_cert()), Ok(()));
    let Some(Envelope { body: Body::RegisterResponse { account_sig, installation_sig, .. }, .. }) =
        frame("register_response")
    else {
        panic!("register_response vector")
    };
    let cert = alice_cert();
    identity::verify(
        &cert.account_key,
        &identity::register_account_bytes(&n, &node_a(), "alice", &alice),
        &account_sig,
    )
    .unwrap();
    identity::verify(
        &cert.signing_key,
        &identity::register_installation_bytes(&n, &node_a(), "alice", &alice),
        &installation_sig,
    )
    .unwrap();
    let dm = send_dm();
    identity::verify(&cert.signing_key, &identity::send_dm_signing_bytes(&dm), &dm.sig).unwrap();
    // §8.7: the federation evidence verifies under the node keys.
    let (a_key, b_key) = (node_a_key().verifying_key().to_bytes(), node_b_key().verifying_key().to_bytes());
    descriptor::verify(&node_a_descriptor()).unwrap();
    evidence::verify_head(&head_a5(), &a_key).unwrap();
    evidence::verify_cosignature(&cosig_b(), &b_key, &head_a5().head).unwrap();
    evidence::verify_promise(&promise(), &a_key).unwrap();
    let Some(Envelope { body: Body::PeerProof { answer }, .. }) = frame("peer_proof") else { panic!("peer_proof") };
    identity::verify(&a_key, &identity::peer_challenge_bytes(&n, &node_b(), &node_a()), &answer).unwrap();
    let fwd = forwarded_dm();
    identity::verify(&cert.signing_key, &identity::send_dm_signing_bytes(&fwd), &fwd.sig).unwrap();
    let Some(Envelope { body: Body::ForwardDm { sig, .. }, .. }) = frame("forward_dm") else { panic!("forward_dm") };
    identity::verify(&a_key, &forward_dm_bytes(), &sig).unwrap();
    // §8.6: the advert's admin signature, and its host's under node A's key.
    let hosted = hosted_advert();
    identity::verify(&hosted.admin_key, &identity::group_advert_bytes(&hosted), &hosted.sig).unwrap();
    identity::verify(&a_key, &identity::group_advert_host_bytes(&hosted), &hosted.host_sig).unwrap();
}

/// Prints the hex of the advert vectors (run with `--ignored --nocapture` to re-derive
/// §8.6 after a change to `GroupAdvert`).
#[test]
#[ignore]
fn print_advert_vectors() {
    for name in ["group_create", "directory"] {
        println!("{name}: {}", hex::encode(codec::encode_frame(&frame(name).unwrap()).unwrap()));
    }
    println!("host_bytes: {}", hex::encode(identity::group_advert_host_bytes(&hosted_advert())));
    println!("node_a: {}", hex::encode(node_a().0));
}

#[test]
fn parser_rejects_an_emptied_spec() {
    assert!(parse_vectors("# wire\n\nno vectors here\n").is_empty());
}
