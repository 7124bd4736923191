//! The sans-IO client core: registration, login, lookups with a contact cache, sending
//! sealed direct messages, receiving, verifying and acknowledging them.
//!
//! Shape (quinn-proto style): the host calls the request methods (`register`, `login`,
//! `lookup`, `send_dm`), feeds frames from the home node with `handle_frame`, runs
//! `handle_timeout` at `poll_timeout`, and drains `transmits` (envelopes for the node)
//! and `events` (what the application sees). Every request is retried until answered:
//! the transport may lose anything and the node may restart.
//!
//! Direct mode (`specs/direct.md`): contacts that agreed to it exchange transport
//! addresses inside sealed messages and then hand sealed messages to each other without
//! the node. The core decides; the host connects: it performs `drain_direct_transmits()`
//! (one frame to a peer's address, one answer back, reported with `handle_direct_answer`
//! or `direct_failed`), and feeds frames arriving on its own listener to
//! `handle_direct_frame`, writing back `drain_direct_replies()`.
//!
//! A host persists the client with `export_state()` and restarts it with `restore()`.
//!
//! This file holds the `ClientCore` struct, its configuration, the tables it keeps in
//! memory, and the host-facing frame router. The protocol lives in the submodules, each
//! an `impl ClientCore` block: `session` (register, login, the request table and its
//! retries), `contacts` (lookups, the contact cache, pins), `dm` (send, receive, verify,
//! acknowledge), `direct` (direct mode), `transparency` (key transparency lookups,
//! nodes, evidence) and `state` (export and restore). `events`, `identity` and
//! `records` hold plain types and use nothing else of this module.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use nymstr_proto::codec;
use nymstr_proto::federation::NodeId;
use nymstr_proto::federation::descriptor::QualifiedName;
use nymstr_proto::federation::verify::{TrustPolicy, Verifier};
use nymstr_proto::wire::{Body, Envelope, InstallationId, MsgId, PublicKey};
use rand_chacha::ChaCha20Rng;

use crate::seal::DirectAddress;

mod contacts;
mod direct;
mod dm;
mod events;
mod identity;
mod records;
mod session;
mod state;
mod transparency;

pub use self::events::{ClientError, Event, Operation, RestoreError, Via};
pub use self::identity::{Identity, IdentityState};
pub use self::records::{ClientState, Contact, DirectPeer, DirectRoute, OutgoingDm, SeenLog};
pub use nymstr_proto::time::TimeUs;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// First retry of an unanswered request; doubles up to the max.
    pub retry_after_us: TimeUs,
    pub retry_after_max_us: TimeUs,
    /// Contacts remembered (oldest lookup evicted first).
    pub contacts_max: usize,
    /// Account keys pinned on first use (kept when a contact is evicted).
    pub pins_max: usize,
    /// Received message ids remembered for de-duplication.
    pub seen_max: usize,
    /// Messages waiting for a lookup (to send or to verify), per contact.
    pub waiting_per_contact_max: usize,
    /// A direct attempt unanswered after this long has failed (the relay takes over).
    pub direct_timeout_us: TimeUs,
    /// After a failed direct attempt the route rests this long, doubling up to the max.
    pub direct_backoff_us: TimeUs,
    pub direct_backoff_max_us: TimeUs,
    /// How much evidence a remote node's signed head needs (`specs/trust.md` §5) before a
    /// lookup of `user@node` is believed.
    pub trust: TrustPolicy,
    /// The nodes whose cosignatures count (`specs/trust.md` §5): the client's configured
    /// witnesses, learnt at start and on every restore. Nodes met otherwise (a `Nodes`
    /// answer, the server of a lookup) never become witnesses; `add_witness` adds more.
    pub witnesses: Vec<nymstr_proto::federation::NodeDescriptor>,
    /// A head older than this many of its node's epochs (plus `head_age_slack_us` for
    /// clock skew) is refused as a rollback: a node replaying an old head looks like this.
    pub head_max_age_epochs: u64,
    pub head_age_slack_us: TimeUs,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            retry_after_us: 10_000_000,
            retry_after_max_us: 60_000_000,
            contacts_max: 10_000,
            pins_max: 100_000,
            seen_max: 100_000,
            waiting_per_contact_max: 1_000,
            direct_timeout_us: 10_000_000,
            direct_backoff_us: 30_000_000,
            direct_backoff_max_us: 3_600_000_000,
            trust: TrustPolicy::Tofu,
            witnesses: Vec::new(),
            head_max_age_epochs: 3,
            head_age_slack_us: 60_000_000,
        }
    }
}

/// Largest plaintext body accepted by `send_dm` (sealing adds headers and a certificate).
pub const BODY_BYTES_MAX: usize = nymstr_proto::limits::DM_PAYLOAD_BYTES_MAX - 1024;

/// Times a lookup is asked again while its answer lacks witnesses before it fails.
pub const WITNESS_WAITS_MAX: u32 = 3;

pub struct ClientCore {
    rng: ChaCha20Rng,
    config: ClientConfig,
    identity: Option<Identity>,
    username: Option<String>,
    registered: bool,
    next_rid: u64,
    pending: BTreeMap<u64, Pending>,
    contacts: BTreeMap<String, Contact>,
    /// username -> (pin sequence, account key first seen): trust on first use.
    pins: BTreeMap<String, (u64, PublicKey)>,
    /// pin sequence -> username, oldest first for eviction.
    pin_order: BTreeMap<u64, String>,
    next_pin_seq: u64,
    /// Lookups in progress, so a burst of sends to one contact looks it up once.
    lookups: BTreeSet<String>,
    /// Sends waiting for the recipient's lookup.
    outbox: BTreeMap<String, Vec<OutgoingDm>>,
    /// Sends handed to the node and not yet acknowledged, by msg id.
    unacked: BTreeMap<MsgId, OutgoingDm>,
    /// Deliveries waiting for the sender's lookup before they can be verified.
    unverified: BTreeMap<String, Vec<InboundDm>>,
    seen: BTreeSet<(InstallationId, MsgId)>,
    seen_order: VecDeque<(InstallationId, MsgId)>,
    /// Sequence number of `seen_order`'s front.
    seen_first_seq: u64,
    acks: Vec<u64>,
    /// Node deliveries acknowledged so far (an inbox is drained when it reaches `queued`).
    deliveries_handled: u64,
    transmits: Vec<Envelope>,
    events: VecDeque<Event>,
    /// Our own direct address while the host listens.
    direct_addr: Option<DirectAddress>,
    direct: BTreeMap<String, DirectPeer>,
    direct_attempts: BTreeMap<u64, DirectAttempt>,
    direct_transmits: Vec<DirectTransmit>,
    direct_replies: Vec<DirectReply>,
    verifier: Verifier,
    /// The home node's id, which qualifies the names a seal signs (`seal::signed_name`):
    /// set by the host or learnt from the home's first `Nodes` answer (its own descriptor
    /// comes first), then kept. `None` for a node that does not federate.
    home: Option<NodeId>,
    /// Lookups answered with too few witnesses so far, by name (see `on_kt_result`).
    witness_waits: BTreeMap<String, u32>,
}

// The tables the core keeps in memory only (`records` holds what it persists).

/// What an outstanding request to the node waits for.
#[derive(Clone, Debug)]
enum Step {
    RegisterAwaitChallenge,
    RegisterAwaitResult,
    LoginAwaitChallenge,
    LoginAwaitResult,
    Lookup(String),
    Send(MsgId),
    Nodes,
    /// The home node's id, asked for before a first message to another node.
    Home,
}

#[derive(Clone, Debug)]
struct Pending {
    step: Step,
    retry_at_us: TimeUs,
    backoff_us: TimeUs,
}

/// Where a delivery came from, so the answer goes back there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// From the node: acknowledged with `AckDelivery`.
    Node { delivery_id: u64 },
    /// From a contact's direct connection: answered with `SendAck` or `Error`.
    Direct { conn: u64, request_id: u64 },
}

#[derive(Clone, Debug)]
struct InboundDm {
    source: Source,
    from_username: String,
    from: InstallationId,
    msg_id: MsgId,
    sealed: Vec<u8>,
}

#[derive(Clone, Debug)]
struct DirectAttempt {
    msg_id: MsgId,
    installation: InstallationId,
    addr: DirectAddress,
    deadline_us: TimeUs,
}

/// One frame for the host to hand to a contact's direct address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectTransmit {
    /// Report the outcome with this id (`handle_direct_answer` / `direct_failed`).
    pub attempt: u64,
    pub to: String,
    pub addr: DirectAddress,
    pub envelope: Envelope,
}

/// An answer for a frame that arrived on our direct listener, on connection `conn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectReply {
    pub conn: u64,
    pub envelope: Envelope,
}

/// A contact name as used for routing: `user` on the home node, or `user@<node id hex>`
/// (canonical: folded user, lower-case hex).
pub fn contact_name(raw: &str) -> Result<String, ClientError> {
    if raw.contains('@') {
        QualifiedName::parse(raw).map(|q| q.to_string()).map_err(|e| ClientError::BadName(e.to_string()))
    } else {
        Ok(nymstr_proto::identity::normalize_username(raw)?)
    }
}

impl ClientCore {
    pub fn new(rng: ChaCha20Rng, config: ClientConfig) -> Self {
        let mut verifier = Verifier::new(config.trust.clone());
        for d in &config.witnesses {
            let _ = verifier.learn_node(d);
        }
        Self {
            rng,
            config,
            identity: None,
            username: None,
            registered: false,
            next_rid: 1,
            pending: BTreeMap::new(),
            contacts: BTreeMap::new(),
            pins: BTreeMap::new(),
            pin_order: BTreeMap::new(),
            next_pin_seq: 0,
            lookups: BTreeSet::new(),
            outbox: BTreeMap::new(),
            unacked: BTreeMap::new(),
            unverified: BTreeMap::new(),
            seen: BTreeSet::new(),
            seen_order: VecDeque::new(),
            seen_first_seq: 0,
            acks: Vec::new(),
            deliveries_handled: 0,
            transmits: Vec::new(),
            events: VecDeque::new(),
            direct_addr: None,
            direct: BTreeMap::new(),
            direct_attempts: BTreeMap::new(),
            direct_transmits: Vec::new(),
            direct_replies: Vec::new(),
            verifier,
            home: None,
            witness_waits: BTreeMap::new(),
        }
    }

    /// Restores a client from an identity it already registered.
    pub fn with_identity(rng: ChaCha20Rng, config: ClientConfig, identity: Identity, username: String) -> Self {
        let mut c = Self::new(rng, config);
        c.identity = Some(identity);
        c.username = Some(username);
        c.registered = true;
        c
    }

    /// A client holding keys that are not registered yet (`register` uses them).
    pub fn with_unregistered_identity(rng: ChaCha20Rng, config: ClientConfig, identity: Identity) -> Self {
        let mut c = Self::new(rng, config);
        c.identity = Some(identity);
        c
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Node deliveries acknowledged since this core started.
    pub fn deliveries_handled(&self) -> u64 {
        self.deliveries_handled
    }

    /// True when no request is waiting for an answer.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.unverified.is_empty()
            && self.outbox.is_empty()
            && self.direct_attempts.is_empty()
    }

    /// Feeds one frame received from the home node.
    pub fn handle_frame(&mut self, now: TimeUs, bytes: &[u8]) {
        let Ok(envelope) = codec::decode_frame(bytes) else { return };
        self.handle_envelope(now, envelope);
        self.flush_acks();
    }

    /// Envelopes to send to the home node, in order.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Envelope> {
        self.transmits.drain(..)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Routes one envelope from the home node to the handler of its concern.
    fn handle_envelope(&mut self, now: TimeUs, envelope: Envelope) {
        let rid = envelope.request_id;
        match envelope.body {
            Body::Challenge { nonce, node, .. } => self.on_challenge(now, rid, nonce, &node),
            Body::Registered { username, .. } => self.on_registered(rid, username),
            Body::LoggedIn { queued, .. } => self.on_logged_in(now, rid, queued),
            Body::LookupResult { username, account_key, installations } => {
                self.on_lookup_result(now, rid, username, account_key, installations)
            }
            Body::SendAck { msg_id } => self.on_send_ack(msg_id),
            Body::Deliver { delivery_id, from_username, from, msg_id, sealed } => {
                let source = Source::Node { delivery_id };
                self.on_deliver(now, InboundDm { source, from_username, from, msg_id, sealed })
            }
            Body::Error { code, detail } => self.on_error(now, rid, code, detail),
            Body::KtLookupResult { descriptor, proof } => self.on_kt_result(now, rid, descriptor, *proof),
            Body::Nodes { descriptors } => self.on_nodes(now, rid, &descriptors),
            Body::Gossip { items } => self.on_evidence(rid, items),
            // Requests are never sent to clients; ignore them.
            _ => {}
        }
    }

    fn flush_acks(&mut self) {
        for chunk in self.acks.chunks(nymstr_proto::limits::ACK_IDS_MAX) {
            self.transmits.push(Envelope { request_id: 0, body: Body::AckDelivery { delivery_ids: chunk.to_vec() } });
        }
        self.acks.clear();
    }
}
