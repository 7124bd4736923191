//! Shared harness for the node integration tests: a `NodeCore<MemStore>` driven only
//! through its public, host-facing API (encoded frames in, `Output`s out), and users
//! who build correctly (or deliberately incorrectly) signed requests.
//!
//! Every output the node produces is checked on the way out: it must be encodable as a
//! frame (a host must be able to send it) and must go to a sender tag, never an address.

#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use nymstr_node_core::actors::SenderTag;
use nymstr_node_core::store::{MemStore, Store};
use nymstr_node_core::{NodeConfig, NodeCore, Output, Peer};
use nymstr_proto::codec::{decode_frame, encode_frame};
use nymstr_proto::federation::NodeId;
use nymstr_proto::identity::{self, generate_signing_key};
use nymstr_proto::wire::{
    Body, Envelope, ErrorCode, InstallationCert, InstallationId, InstallationPayload, MsgId, Nonce, SendDm, Sig,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The instant every test starts at (an arbitrary, realistic Unix time in µs).
pub const T0: u64 = 1_700_000_000_000_000;

thread_local! {
    /// The node each challenge seen so far named, by nonce: a user's answer signs it.
    static CHALLENGE_NODES: std::cell::RefCell<std::collections::BTreeMap<Nonce, NodeId>> =
        Default::default();
}

/// Notes the node a `Challenge` names, so the answer to it can sign that node's id.
pub fn remember_challenge(body: &Body) {
    if let Body::Challenge { nonce, node, .. } = body {
        CHALLENGE_NODES.with(|m| m.borrow_mut().insert(*nonce, *node));
    }
}

/// The node that issued `nonce` (all zeros for a nonce no node issued).
pub fn challenge_node(nonce: &Nonce) -> NodeId {
    CHALLENGE_NODES.with(|m| m.borrow().get(nonce).copied()).unwrap_or(NodeId([0; 32]))
}

/// One output of the node, flattened for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub to: SenderTag,
    pub envelope: Envelope,
    pub durable_after: u64,
}

impl Sent {
    pub fn body(&self) -> &Body {
        &self.envelope.body
    }
    pub fn rid(&self) -> u64 {
        self.envelope.request_id
    }
}

pub fn tag(n: u8) -> SenderTag {
    SenderTag([n; 16])
}

/// A node core over an in-memory store, with its own clock.
pub struct Harness {
    pub node: NodeCore<MemStore>,
    pub now: u64,
    next_rid: u64,
    seed: u64,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(NodeConfig::default())
    }

    pub fn with_config(config: NodeConfig) -> Self {
        let node = NodeCore::start(T0, MemStore::new(), ChaCha20Rng::seed_from_u64(7), config).expect("start");
        Self { node, now: T0, next_rid: 1, seed: 7 }
    }

    pub fn config(&self) -> NodeConfig {
        self.node.config().clone()
    }

    /// Feeds raw bytes from `from`.
    pub fn raw(&mut self, from: Peer, bytes: &[u8]) -> Vec<Sent> {
        self.node.handle_frame(self.now, from, bytes);
        self.drain()
    }

    /// Sends `body` from `tag` as a properly encoded frame; returns the request id used
    /// and everything the node emitted in answer.
    pub fn request(&mut self, from: SenderTag, body: Body) -> (u64, Vec<Sent>) {
        let rid = self.next_rid;
        self.next_rid += 1;
        let bytes = encode_frame(&Envelope { request_id: rid, body }).expect("encode request");
        (rid, self.raw(Peer::Tag(from), &bytes))
    }

    /// Sends `body` and returns the single reply to it (asserting it goes back to `from`).
    pub fn ask(&mut self, from: SenderTag, body: Body) -> Sent {
        let (rid, out) = self.request(from, body);
        let replies: Vec<_> = out.iter().filter(|s| s.rid() == rid).cloned().collect();
        assert_eq!(replies.len(), 1, "expected exactly one reply to request {rid}, got {out:#?}");
        assert_eq!(replies[0].to, from, "a reply goes back to the tag that asked");
        replies.into_iter().next().expect("one reply")
    }

    /// Sends `body` and returns the error code of the (single) reply.
    pub fn ask_err(&mut self, from: SenderTag, body: Body) -> ErrorCode {
        let reply = self.ask(from, body);
        match reply.envelope.body {
            Body::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Takes every pending output, checking each one is sendable.
    pub fn drain(&mut self) -> Vec<Sent> {
        self.node
            .drain_outputs()
            .collect::<Vec<_>>()
            .into_iter()
            .map(|Output::Send { to, envelope, durable_after }| {
                let bytes = encode_frame(&envelope).expect("every output encodes as a frame");
                assert_eq!(decode_frame(&bytes).expect("and decodes back"), envelope);
                let Peer::Tag(to) = to else { panic!("a client-facing output went to an address: {to:?}") };
                remember_challenge(&envelope.body);
                Sent { to, envelope, durable_after }
            })
            .collect()
    }

    pub fn timeout(&mut self, at: u64) -> Vec<Sent> {
        self.now = at;
        self.node.handle_timeout(at);
        self.drain()
    }

    pub fn flush(&mut self) {
        self.node.store_mut().flush().expect("flush");
    }

    pub fn durable_seq(&self) -> u64 {
        self.node.store().durable_seq()
    }

    pub fn is_released(&self, sent: &Sent) -> bool {
        sent.durable_after <= self.durable_seq()
    }

    /// Power loss: the core stops, unflushed writes are lost, and the node starts again
    /// over what survived. Returns what the restarted node emits on start.
    pub fn crash_and_restart(&mut self) -> Vec<Sent> {
        let config = self.config();
        let placeholder =
            NodeCore::start(self.now, MemStore::new(), ChaCha20Rng::seed_from_u64(0), config.clone()).expect("start");
        let old = std::mem::replace(&mut self.node, placeholder);
        let mut store = old.into_store();
        store.crash();
        self.seed += 1;
        self.node = NodeCore::start(self.now, store, ChaCha20Rng::seed_from_u64(self.seed), config).expect("restart");
        self.drain()
    }

    // --- registry flows ---

    /// Registers `user` from `user.tag`; panics unless it succeeds. Returns the reply.
    pub fn register(&mut self, user: &User) -> Sent {
        let nonce = self.challenge_for_register(user);
        let reply = self.ask(user.tag, user.register_response(&nonce));
        assert!(matches!(reply.body(), Body::Registered { .. }), "registration failed: {reply:?}");
        reply
    }

    /// Sends a `RegisterRequest` and returns the nonce of the challenge it gets.
    pub fn challenge_for_register(&mut self, user: &User) -> Nonce {
        let reply = self.ask(user.tag, user.register_request());
        match reply.envelope.body {
            Body::Challenge { nonce, .. } => nonce,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// Logs `user` in from `from`; panics unless it succeeds. Returns everything emitted.
    pub fn login(&mut self, user: &User, from: SenderTag) -> Vec<Sent> {
        let reply = self.ask(from, Body::LoginRequest { installation: user.installation });
        let Body::Challenge { nonce, .. } = reply.envelope.body else { panic!("expected a challenge, got {reply:?}") };
        let (rid, out) = self.request(from, user.login_response(&nonce));
        assert!(
            out.iter().any(|s| s.rid() == rid && matches!(s.body(), Body::LoggedIn { .. })),
            "login failed: {out:#?}"
        );
        out
    }

    pub fn lookup(&mut self, from: SenderTag, username: &str) -> Body {
        self.ask(from, Body::Lookup { username: username.to_string() }).envelope.body
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// A would-be account holder with one installation, speaking from one tag.
#[derive(Clone)]
pub struct User {
    pub username: String,
    pub account: SigningKey,
    pub installation_key: SigningKey,
    pub cert: InstallationCert,
    pub installation: InstallationId,
    pub tag: SenderTag,
}

impl User {
    pub fn new(username: &str, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let account = generate_signing_key(&mut rng);
        Self::with_account(username, seed, account)
    }

    /// A new installation of the account `account`.
    pub fn with_account(username: &str, seed: u64, account: SigningKey) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(1));
        let installation_key = generate_signing_key(&mut rng);
        let inst_pub = installation_key.verifying_key().to_bytes();
        let cert = identity::issue_cert(&account, &inst_pub, &[seed as u8; 32], T0);
        Self {
            username: username.to_string(),
            account,
            installation: identity::installation_id(&inst_pub),
            installation_key,
            cert,
            tag: tag(seed as u8),
        }
    }

    pub fn register_request(&self) -> Body {
        Body::RegisterRequest { username: self.username.clone(), cert: self.cert.clone() }
    }

    pub fn folded(&self) -> String {
        self.username.to_ascii_lowercase()
    }

    pub fn account_sig(&self, nonce: &Nonce) -> Sig {
        identity::sign(
            &self.account,
            &identity::register_account_bytes(nonce, &challenge_node(nonce), &self.folded(), &self.installation),
        )
    }

    pub fn installation_sig(&self, nonce: &Nonce) -> Sig {
        identity::sign(
            &self.installation_key,
            &identity::register_installation_bytes(nonce, &challenge_node(nonce), &self.folded(), &self.installation),
        )
    }

    pub fn register_response(&self, nonce: &Nonce) -> Body {
        Body::RegisterResponse {
            nonce: *nonce,
            account_sig: self.account_sig(nonce),
            installation_sig: self.installation_sig(nonce),
        }
    }

    pub fn login_response(&self, nonce: &Nonce) -> Body {
        let installation_sig = identity::sign(
            &self.installation_key,
            &identity::login_bytes(nonce, &challenge_node(nonce), &self.installation),
        );
        Body::LoginResponse { nonce: *nonce, installation_sig }
    }

    /// A correctly signed `SendDm` to `to`, one opaque payload per given installation.
    pub fn dm(&self, to: &str, msg_id: MsgId, targets: &[(InstallationId, Vec<u8>)]) -> SendDm {
        let payloads: Vec<InstallationPayload> = targets
            .iter()
            .map(|(installation, sealed)| InstallationPayload { installation: *installation, sealed: sealed.clone() })
            .collect();
        let mut dm = SendDm { from: self.installation, to: to.to_string(), msg_id, payloads, sig: Sig([0; 64]) };
        self.sign_dm(&mut dm);
        dm
    }

    /// (Re-)signs `dm` with this installation's key.
    pub fn sign_dm(&self, dm: &mut SendDm) {
        dm.sig = identity::sign(&self.installation_key, &identity::send_dm_signing_bytes(dm));
    }

    /// A `SendDm` to `recipient`'s single installation carrying `sealed`.
    pub fn dm_to(&self, recipient: &User, msg_id: MsgId, sealed: &[u8]) -> Body {
        Body::SendDm(self.dm(&recipient.folded(), msg_id, &[(recipient.installation, sealed.to_vec())]))
    }
}

pub fn msg_id(n: u8) -> MsgId {
    [n; 16]
}

pub fn error_code(body: &Body) -> Option<ErrorCode> {
    match body {
        Body::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// The `Deliver`s in `out`, as (to, delivery id, msg id, sealed).
pub fn delivers(out: &[Sent]) -> Vec<(SenderTag, u64, MsgId, Vec<u8>)> {
    out.iter()
        .filter_map(|s| match s.body() {
            Body::Deliver { delivery_id, msg_id, sealed, .. } => Some((s.to, *delivery_id, *msg_id, sealed.clone())),
            _ => None,
        })
        .collect()
}
