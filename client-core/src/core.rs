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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;
use nymstr_proto::codec;
use nymstr_proto::federation::descriptor::QualifiedName;
use nymstr_proto::federation::verify::{Outcome, TrustPolicy, Verifier};
use nymstr_proto::federation::{LookupProof, NodeDescriptor};
use nymstr_proto::identity::{self, UsernameError};
use nymstr_proto::wire::GossipItem;
use nymstr_proto::wire::{
    Body, Envelope, ErrorCode, InstallationCert, InstallationId, InstallationPayload, MsgId, Nonce, PublicKey, SendDm,
};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;

use crate::seal::{self, DirectAddress, DmContent, OpenError, Recipient, Sender};

pub use nymstr_proto::time::TimeUs;

/// An account with one installation (this device).
pub struct Identity {
    pub account: SigningKey,
    pub installation: SigningKey,
    pub dh: StaticSecret,
    pub cert: InstallationCert,
    pub installation_id: InstallationId,
}

impl Identity {
    pub fn generate(rng: &mut impl Rng, now: TimeUs) -> Self {
        let account = identity::generate_signing_key(rng);
        let installation = identity::generate_signing_key(rng);
        let mut dh_bytes = [0u8; 32];
        rng.fill_bytes(&mut dh_bytes);
        let dh = StaticSecret::from(dh_bytes);
        let dh_pub = x25519_dalek::PublicKey::from(&dh).to_bytes();
        let inst_pub = installation.verifying_key().to_bytes();
        let cert = identity::issue_cert(&account, &inst_pub, &dh_pub, now);
        let installation_id = identity::installation_id(&inst_pub);
        Self { account, installation, dh, cert, installation_id }
    }

    /// The secret material, for a host to persist.
    pub fn to_state(&self) -> IdentityState {
        IdentityState {
            account_secret: self.account.to_bytes(),
            installation_secret: self.installation.to_bytes(),
            dh_secret: self.dh.to_bytes(),
            cert: self.cert.clone(),
        }
    }

    /// Rebuilds an identity, checking that the certificate belongs to the keys.
    pub fn from_state(state: &IdentityState) -> Result<Self, RestoreError> {
        let account = SigningKey::from_bytes(&state.account_secret);
        let installation = SigningKey::from_bytes(&state.installation_secret);
        let dh = StaticSecret::from(state.dh_secret);
        let cert = state.cert.clone();
        if cert.account_key != account.verifying_key().to_bytes()
            || cert.signing_key != installation.verifying_key().to_bytes()
            || cert.dh_key != x25519_dalek::PublicKey::from(&dh).to_bytes()
            || identity::verify_cert(&cert).is_err()
        {
            return Err(RestoreError::IdentityMismatch);
        }
        let installation_id = identity::installation_id(&cert.signing_key);
        Ok(Self { account, installation, dh, cert, installation_id })
    }
}

/// An identity's secret keys and certificate, as persisted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityState {
    pub account_secret: [u8; 32],
    pub installation_secret: [u8; 32],
    pub dh_secret: [u8; 32],
    pub cert: InstallationCert,
}

impl std::fmt::Debug for IdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityState").field("cert", &self.cert).finish_non_exhaustive()
    }
}

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
            head_max_age_epochs: 3,
            head_age_slack_us: 60_000_000,
        }
    }
}

/// A contact as last looked up: its account key and installations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub account_key: PublicKey,
    pub installations: Vec<InstallationCert>,
    pub fetched_at_us: TimeUs,
}

/// What the application learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Registered {
        username: String,
    },
    LoggedIn {
        queued: u32,
    },
    LookedUp {
        username: String,
    },
    /// The node holds the message durably.
    SendAcked {
        to: String,
        msg_id: MsgId,
    },
    Received {
        from: String,
        msg_id: MsgId,
        sent_at_us: TimeUs,
        body: Vec<u8>,
        via: Via,
    },
    /// A delivery failed verification and was discarded (and acknowledged so the node
    /// stops redelivering it).
    Rejected {
        from: String,
        msg_id: MsgId,
        reason: OpenError,
    },
    /// A lookup answered with an account key other than the one pinned for that user:
    /// the answer is refused, and messages to or from the user wait no longer.
    KeyChanged {
        username: String,
        pinned: PublicKey,
        offered: PublicKey,
    },
    /// A transparency lookup of `username` (`user@node`) did not verify, or showed a
    /// change the user must see: `outcome` is the verifier's outcome name (`key_changed`,
    /// `rollback`, `inconsistent`, `revoked`, `migrated`, `absent`, `forked`,
    /// `not_enough_witnesses`, `not_allowed`, `unknown_node`). Sends to and deliveries from
    /// the user fail.
    Transparency {
        username: String,
        outcome: &'static str,
        detail: String,
    },
    /// A request failed for good.
    Failed {
        what: Operation,
        code: ErrorCode,
        detail: String,
    },
    /// A contact invited us to a group (the token is not yet redeemed).
    GroupInvited {
        from: String,
        msg_id: MsgId,
        invite: seal::GroupInvite,
    },
    /// A contact revealed a direct address we have not agreed to use (we are not
    /// listening directly); `offer_direct` or `set_direct_address` agrees.
    DirectOffered {
        peer: String,
        addr: DirectAddress,
    },
    /// Messages to `peer` may now go directly to `addr`.
    DirectReady {
        peer: String,
        addr: DirectAddress,
    },
    /// `peer` withdrew a direct address: messages to it go through the relay.
    DirectWithdrawn {
        peer: String,
    },
    /// One installation of `to` acknowledged the message directly.
    DirectDelivered {
        to: String,
        msg_id: MsgId,
    },
    /// A direct attempt failed; the message goes through the relay.
    DirectFailed {
        to: String,
        msg_id: MsgId,
        addr: DirectAddress,
        reason: String,
    },
}

/// How a message reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    Relay,
    Direct,
}

/// The request an error refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Register,
    Login,
    Lookup(String),
    Send { to: String, msg_id: MsgId },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Username(#[from] UsernameError),
    #[error("not registered yet")]
    NotRegistered,
    #[error("already registered or registering")]
    AlreadyRegistered,
    #[error("message body of {len} bytes exceeds {max}")]
    TooLarge { len: usize, max: usize },
    #[error("too many messages waiting for {0}")]
    Backlog(String),
    #[error("direct mode is off: no direct address of our own to offer")]
    NoDirectAddress,
    #[error("no address of {0} is known")]
    NoRoute(String),
    #[error("bad name: {0}")]
    BadName(String),
}

/// Why a persisted state cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("identity keys do not match their certificate")]
    IdentityMismatch,
    #[error("registered state without an identity or username")]
    Incomplete,
}

/// Largest plaintext body accepted by `send_dm` (sealing adds headers and a certificate).
pub const BODY_BYTES_MAX: usize = nymstr_proto::limits::DM_PAYLOAD_BYTES_MAX - 1024;

/// A message not yet acknowledged (by the node, or directly by every installation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingDm {
    pub to: String,
    pub msg_id: MsgId,
    pub content: DmContent,
    pub sent_at_us: TimeUs,
    /// A `SendDm` carried it: it is never tried directly again (the node dedupes by
    /// `(from, msg_id)`, so every relayed copy must cover the same installations).
    pub relayed: bool,
    /// Installations that acknowledged it directly.
    pub direct_done: BTreeSet<InstallationId>,
}

/// What we agreed with one contact about direct delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectPeer {
    /// We consented (offered, or accepted an offer): we send to its routes directly and
    /// accept its direct frames. Sending directly reveals our transport address to it.
    pub enabled: bool,
    /// Addresses its installations revealed to us, by installation.
    pub routes: BTreeMap<InstallationId, DirectRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRoute {
    pub addr: DirectAddress,
    /// The sender's `sent_at_us` of the message that announced it (newest wins).
    pub announced_at_us: TimeUs,
    /// Consecutive failed attempts, and until when the route rests because of them.
    pub failures: u32,
    pub down_until_us: TimeUs,
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

#[derive(Clone, Debug)]
struct DirectAttempt {
    msg_id: MsgId,
    installation: InstallationId,
    addr: DirectAddress,
    deadline_us: TimeUs,
}

/// The received-message ids remembered for de-duplication, oldest first; `first_seq`
/// numbers the oldest so a host can store the log incrementally.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenLog {
    pub first_seq: u64,
    pub ids: Vec<(InstallationId, MsgId)>,
}

/// Everything a client must keep across restarts (`export_state` / `restore`).
/// Requests in flight are not part of it: unacknowledged messages are, and go again
/// after the next login.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    pub identity: Option<IdentityState>,
    pub username: Option<String>,
    pub registered: bool,
    pub contacts: BTreeMap<String, Contact>,
    /// Pinned account keys by pin sequence (oldest first, evicted first).
    pub pins: BTreeMap<u64, (String, PublicKey)>,
    pub seen: SeenLog,
    pub outgoing: BTreeMap<MsgId, OutgoingDm>,
    pub direct: BTreeMap<String, DirectPeer>,
    /// Node keys, accepted heads, pins and fork certificates of key transparency.
    #[serde(default)]
    pub transparency: Option<Verifier>,
}

#[derive(Clone, Debug)]
enum Step {
    RegisterAwaitChallenge,
    RegisterAwaitResult,
    LoginAwaitChallenge,
    LoginAwaitResult,
    Lookup(String),
    Send(MsgId),
    Nodes,
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
    /// Our own direct address while the host listens, and whether offers are accepted.
    direct_addr: Option<DirectAddress>,
    accept_offers: bool,
    direct: BTreeMap<String, DirectPeer>,
    direct_attempts: BTreeMap<u64, DirectAttempt>,
    direct_transmits: Vec<DirectTransmit>,
    direct_replies: Vec<DirectReply>,
    verifier: Verifier,
    /// Lookups answered with too few witnesses so far, by name (see `on_kt_result`).
    witness_waits: BTreeMap<String, u32>,
}

/// Times a lookup is asked again while its answer lacks witnesses before it fails.
pub const WITNESS_WAITS_MAX: u32 = 3;

/// A contact name as used for routing: `user` on the home node, or `user@<node id hex>`
/// (canonical: folded user, lower-case hex).
pub fn contact_name(raw: &str) -> Result<String, ClientError> {
    if raw.contains('@') {
        QualifiedName::parse(raw).map(|q| q.to_string()).map_err(|e| ClientError::BadName(e.to_string()))
    } else {
        Ok(identity::normalize_username(raw)?)
    }
}

/// The user part of a contact name: what the end-to-end seal binds (the node part is
/// routing; the account key the seal checks was verified for the qualified name).
fn local_part(name: &str) -> &str {
    name.split_once('@').map_or(name, |(user, _)| user)
}

impl ClientCore {
    pub fn new(rng: ChaCha20Rng, config: ClientConfig) -> Self {
        let verifier = Verifier::new(config.trust.clone());
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
            accept_offers: false,
            direct: BTreeMap::new(),
            direct_attempts: BTreeMap::new(),
            direct_transmits: Vec::new(),
            direct_replies: Vec::new(),
            verifier,
            witness_waits: BTreeMap::new(),
        }
    }

    /// Restarts a client from a state exported earlier. A registration that had not
    /// finished is forgotten (the username is registered again from the start); every
    /// unacknowledged message goes again after the next login.
    pub fn restore(rng: ChaCha20Rng, config: ClientConfig, state: ClientState) -> Result<Self, RestoreError> {
        let mut c = Self::new(rng, config);
        c.identity = state.identity.as_ref().map(Identity::from_state).transpose()?;
        if state.registered && (c.identity.is_none() || state.username.is_none()) {
            return Err(RestoreError::Incomplete);
        }
        c.registered = state.registered;
        c.username = if state.registered { state.username } else { None };
        c.contacts = state.contacts;
        for (seq, (name, key)) in state.pins {
            c.pins.insert(name.clone(), (seq, key));
            c.pin_order.insert(seq, name);
            c.next_pin_seq = seq + 1;
        }
        c.seen_first_seq = state.seen.first_seq;
        for id in state.seen.ids {
            c.seen.insert(id);
            c.seen_order.push_back(id);
        }
        c.unacked = state.outgoing;
        c.direct = state.direct;
        if let Some(v) = state.transparency {
            c.verifier = v;
        }
        Ok(c)
    }

    /// A snapshot of everything `restore` needs.
    pub fn export_state(&self) -> ClientState {
        let mut outgoing = self.unacked.clone();
        for dm in self.outbox.values().flatten() {
            outgoing.insert(dm.msg_id, dm.clone());
        }
        ClientState {
            identity: self.identity.as_ref().map(Identity::to_state),
            username: self.username.clone(),
            registered: self.registered,
            contacts: self.contacts.clone(),
            pins: self.pins.iter().map(|(name, (seq, key))| (*seq, (name.clone(), *key))).collect(),
            seen: SeenLog { first_seq: self.seen_first_seq, ids: self.seen_order.iter().copied().collect() },
            outgoing,
            direct: self.direct.clone(),
            transparency: Some(self.verifier.clone()),
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

    pub fn contact(&self, username: &str) -> Option<&Contact> {
        self.contacts.get(username)
    }

    pub fn contacts(&self) -> impl Iterator<Item = (&str, &Contact)> {
        self.contacts.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// The account key pinned for `username` (trust on first use).
    pub fn pinned(&self, username: &str) -> Option<&PublicKey> {
        self.pins.get(username).map(|(_, k)| k)
    }

    /// Every pin, oldest first.
    pub fn pins(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.pin_order.values().filter_map(|n| self.pins.get(n).map(|(_, k)| (n.as_str(), k)))
    }

    /// Replaces the pin of `username` with `account_key` (the user checked it out of
    /// band after a `KeyChanged`) and forgets the cached contact so it is looked up again.
    pub fn trust(&mut self, username: &str, account_key: PublicKey) -> Result<(), ClientError> {
        let username = identity::normalize_username(username)?;
        if let Some((seq, _)) = self.pins.remove(&username) {
            self.pin_order.remove(&seq);
        }
        self.contacts.remove(&username);
        self.pin(username, account_key);
        Ok(())
    }

    pub fn direct_peer(&self, username: &str) -> Option<&DirectPeer> {
        self.direct.get(username)
    }

    pub fn direct_address(&self) -> Option<&DirectAddress> {
        self.direct_addr.as_ref()
    }

    /// Sends not yet acknowledged by the node (including those waiting for a lookup).
    pub fn unacked_sends(&self) -> usize {
        self.unacked.len() + self.outbox.values().map(Vec::len).sum::<usize>()
    }

    /// Whether `msg_id` still waits for an acknowledgement.
    pub fn is_unacked(&self, msg_id: &MsgId) -> bool {
        self.unacked.contains_key(msg_id) || self.outbox.values().flatten().any(|d| d.msg_id == *msg_id)
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

    /// Generates keys (if needed) and registers `username` with the home node.
    pub fn register(&mut self, now: TimeUs, username: &str) -> Result<(), ClientError> {
        if self.registered || self.username.is_some() {
            return Err(ClientError::AlreadyRegistered);
        }
        let username = identity::normalize_username(username)?;
        if self.identity.is_none() {
            self.identity = Some(Identity::generate(&mut self.rng, now));
        }
        self.username = Some(username);
        self.start_register(now);
        Ok(())
    }

    /// Proves this installation to the node and binds the current sender tag.
    pub fn login(&mut self, now: TimeUs) -> Result<(), ClientError> {
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        self.pending.retain(|_, p| !matches!(p.step, Step::LoginAwaitChallenge | Step::LoginAwaitResult));
        let installation = self.identity.as_ref().expect("registered implies identity").installation_id;
        self.request(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation });
        Ok(())
    }

    pub fn lookup(&mut self, now: TimeUs, username: &str) -> Result<(), ClientError> {
        let username = contact_name(username)?;
        self.start_lookup(now, username);
        Ok(())
    }

    /// Seals and sends `body` to every installation of `to`; returns the message id.
    pub fn send_dm(&mut self, now: TimeUs, to: &str, body: &[u8]) -> Result<MsgId, ClientError> {
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        if body.len() > BODY_BYTES_MAX {
            return Err(ClientError::TooLarge { len: body.len(), max: BODY_BYTES_MAX });
        }
        self.send_content(now, to, DmContent::Text { body: body.to_vec() })
    }

    /// Sends a group invitation to `to` as an end-to-end sealed DM (like a text).
    pub fn send_group_invite(
        &mut self,
        now: TimeUs,
        to: &str,
        invite: seal::GroupInvite,
    ) -> Result<MsgId, ClientError> {
        self.send_content(now, to, DmContent::GroupInvite(invite))
    }

    /// Our own direct address (the host listens there), or `None` when it stops
    /// listening. With an address, every contact we agreed direct delivery with is told
    /// the address again (it may have changed), and with `accept_offers` an offer from
    /// any contact is accepted by revealing the address to it. Returns the message ids.
    pub fn set_direct_address(
        &mut self,
        now: TimeUs,
        addr: Option<DirectAddress>,
        accept_offers: bool,
    ) -> Result<Vec<MsgId>, ClientError> {
        self.direct_addr = addr.clone();
        self.accept_offers = accept_offers;
        let mut sent = Vec::new();
        if let Some(addr) = addr {
            let peers: Vec<String> = self.direct.iter().filter(|(_, p)| p.enabled).map(|(n, _)| n.clone()).collect();
            for peer in peers {
                sent.push(self.send_content(now, &peer, DmContent::DirectOffer { addr: addr.clone() })?);
            }
        }
        Ok(sent)
    }

    /// Agrees to direct delivery with `peer` and reveals our direct address to it (inside
    /// the end-to-end encryption). Its answer arrives as `DirectReady`.
    pub fn offer_direct(&mut self, now: TimeUs, peer: &str) -> Result<MsgId, ClientError> {
        let addr = self.direct_addr.clone().ok_or(ClientError::NoDirectAddress)?;
        let peer = identity::normalize_username(peer)?;
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        self.direct.entry(peer.clone()).or_default().enabled = true;
        self.send_content(now, &peer, DmContent::DirectOffer { addr })
    }

    /// Stops direct delivery with `peer` (both ways) and asks it to forget our address.
    pub fn disable_direct(&mut self, now: TimeUs, peer: &str) -> Result<MsgId, ClientError> {
        let peer = identity::normalize_username(peer)?;
        let Some(p) = self.direct.get_mut(&peer) else { return Err(ClientError::NoRoute(peer)) };
        p.enabled = false;
        self.send_content(now, &peer, DmContent::DirectWithdraw)
    }

    /// We stop listening: every contact we agreed direct delivery with is asked to use the
    /// relay again (until we offer anew). Returns the message ids.
    pub fn withdraw_direct(&mut self, now: TimeUs) -> Result<Vec<MsgId>, ClientError> {
        self.direct_addr = None;
        let peers: Vec<String> = self.direct.iter().filter(|(_, p)| p.enabled).map(|(n, _)| n.clone()).collect();
        peers.iter().map(|peer| self.send_content(now, peer, DmContent::DirectWithdraw)).collect()
    }

    fn send_content(&mut self, now: TimeUs, to: &str, content: DmContent) -> Result<MsgId, ClientError> {
        if !self.registered {
            return Err(ClientError::NotRegistered);
        }
        let to = contact_name(to)?;
        let mut msg_id = [0u8; 16];
        self.rng.fill_bytes(&mut msg_id);
        let dm = OutgoingDm {
            to: to.clone(),
            msg_id,
            content,
            sent_at_us: now,
            relayed: false,
            direct_done: BTreeSet::new(),
        };
        if self.contacts.contains_key(&to) {
            self.transmit_dm(now, dm);
        } else {
            let waiting = self.outbox.entry(to.clone()).or_default();
            if waiting.len() >= self.config.waiting_per_contact_max {
                return Err(ClientError::Backlog(to));
            }
            waiting.push(dm);
            self.start_lookup(now, to);
        }
        Ok(msg_id)
    }

    /// Feeds one frame received from the home node.
    pub fn handle_frame(&mut self, now: TimeUs, bytes: &[u8]) {
        let Ok(envelope) = codec::decode_frame(bytes) else { return };
        self.handle_envelope(now, envelope);
        self.flush_acks();
    }

    /// Feeds one frame that arrived on our direct listener, on the host's connection
    /// `conn`. Answers go out through `drain_direct_replies`.
    pub fn handle_direct_frame(&mut self, now: TimeUs, conn: u64, bytes: &[u8]) {
        let envelope = match codec::decode_frame(bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                let request_id = codec::peek_request_id(bytes);
                self.direct_error(conn, request_id, ErrorCode::Malformed, e.to_string());
                return;
            }
        };
        let request_id = envelope.request_id;
        match envelope.body {
            Body::Deliver { from_username, from, msg_id, sealed, .. } => {
                if !self.registered || !self.direct.get(&from_username).is_some_and(|p| p.enabled) {
                    self.direct_error(
                        conn,
                        request_id,
                        ErrorCode::UnexpectedMessage,
                        "direct messages are accepted only from contacts that agreed to them".into(),
                    );
                    return;
                }
                let source = Source::Direct { conn, request_id };
                self.on_deliver(now, InboundDm { source, from_username, from, msg_id, sealed });
                self.flush_acks();
            }
            Body::Error { .. } => {}
            other => self.direct_error(
                conn,
                request_id,
                ErrorCode::UnexpectedMessage,
                format!("{} is not a direct message", other.kind()),
            ),
        }
    }

    /// The peer's answer to direct attempt `attempt`.
    pub fn handle_direct_answer(&mut self, now: TimeUs, attempt: u64, bytes: &[u8]) {
        let Some(a) = self.direct_attempts.get(&attempt) else { return };
        match codec::decode_frame(bytes).map(|e| e.body) {
            Ok(Body::SendAck { msg_id }) if msg_id == a.msg_id => self.direct_succeeded(now, attempt),
            Ok(Body::Error { code, detail }) => self.direct_failed(now, attempt, &format!("{code:?}: {detail}")),
            Ok(other) => self.direct_failed(now, attempt, &format!("unexpected answer {}", other.kind())),
            Err(e) => self.direct_failed(now, attempt, &format!("answer does not decode: {e}")),
        }
    }

    /// Direct attempt `attempt` failed (no connection, timeout, closed): the message goes
    /// through the relay and the route rests.
    pub fn direct_failed(&mut self, now: TimeUs, attempt: u64, reason: &str) {
        let Some(a) = self.direct_attempts.remove(&attempt) else { return };
        let Some(dm) = self.unacked.get(&a.msg_id) else { return };
        let to = dm.to.clone();
        if let Some(route) = self.direct.get_mut(&to).and_then(|p| p.routes.get_mut(&a.installation))
            && route.addr == a.addr
        {
            let base = self.config.direct_backoff_us;
            let rest = base.saturating_mul(1 << route.failures.min(20)).min(self.config.direct_backoff_max_us);
            route.failures = route.failures.saturating_add(1);
            route.down_until_us = now.saturating_add(rest);
        }
        self.events.push_back(Event::DirectFailed { to, msg_id: a.msg_id, addr: a.addr, reason: reason.to_string() });
        self.settle(now, a.msg_id);
    }

    /// Frames for the host to deliver directly, each answered by one frame.
    pub fn drain_direct_transmits(&mut self) -> std::vec::Drain<'_, DirectTransmit> {
        self.direct_transmits.drain(..)
    }

    /// Answers to frames that arrived on our direct listener.
    pub fn drain_direct_replies(&mut self) -> std::vec::Drain<'_, DirectReply> {
        self.direct_replies.drain(..)
    }

    /// The transport to the node was replaced (reconnected, new sender tag): every
    /// request goes again now, after a fresh login.
    pub fn reconnected(&mut self, now: TimeUs) {
        let login = self.registered
            && !self.pending.values().any(|p| matches!(p.step, Step::LoginAwaitChallenge | Step::LoginAwaitResult));
        for p in self.pending.values_mut() {
            p.retry_at_us = now;
            p.backoff_us = self.config.retry_after_us / 2;
        }
        if login {
            let _ = self.login(now);
        }
        self.handle_timeout(now);
    }

    pub fn poll_timeout(&self) -> Option<TimeUs> {
        let requests = self.pending.values().map(|p| p.retry_at_us).min();
        let direct = self.direct_attempts.values().map(|a| a.deadline_us).min();
        [requests, direct].into_iter().flatten().min()
    }

    /// Retries every request whose answer is overdue.
    pub fn handle_timeout(&mut self, now: TimeUs) {
        let expired: Vec<u64> =
            self.direct_attempts.iter().filter(|(_, a)| a.deadline_us <= now).map(|(id, _)| *id).collect();
        for attempt in expired {
            self.direct_failed(now, attempt, "no answer in time");
        }
        let due: Vec<(u64, Pending)> =
            self.pending.iter().filter(|(_, p)| p.retry_at_us <= now).map(|(r, p)| (*r, p.clone())).collect();
        for (rid, p) in due {
            self.pending.remove(&rid);
            let backoff_us = (p.backoff_us * 2).min(self.config.retry_after_max_us);
            match p.step {
                Step::RegisterAwaitChallenge | Step::RegisterAwaitResult => self.start_register_with(now, backoff_us),
                Step::LoginAwaitChallenge | Step::LoginAwaitResult => {
                    let installation = self.identity.as_ref().expect("identity").installation_id;
                    self.request_with(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation }, backoff_us);
                }
                Step::Lookup(name) => {
                    let body = self.lookup_body(&name);
                    self.request_with(now, Step::Lookup(name), body, backoff_us)
                }
                Step::Send(msg_id) => {
                    if let Some(dm) = self.unacked.get(&msg_id).cloned() {
                        self.transmit_dm_with(now, dm, backoff_us);
                    }
                }
                Step::Nodes => self.request_with(now, Step::Nodes, Body::NodesRequest, backoff_us),
            }
        }
    }

    /// Envelopes to send to the home node, in order.
    pub fn drain_transmits(&mut self) -> std::vec::Drain<'_, Envelope> {
        self.transmits.drain(..)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // --- internals ---

    fn start_register(&mut self, now: TimeUs) {
        let backoff = self.config.retry_after_us;
        self.start_register_with(now, backoff);
    }

    fn start_register_with(&mut self, now: TimeUs, backoff_us: TimeUs) {
        let id = self.identity.as_ref().expect("identity");
        let body = Body::RegisterRequest { username: self.username.clone().expect("username"), cert: id.cert.clone() };
        self.request_with(now, Step::RegisterAwaitChallenge, body, backoff_us);
    }

    fn start_lookup(&mut self, now: TimeUs, username: String) {
        if !self.lookups.insert(username.clone()) {
            return;
        }
        let body = self.lookup_body(&username);
        self.request(now, Step::Lookup(username), body);
    }

    /// `KtLookup` for `user@node` (with the log size we accepted from that node), plain
    /// `Lookup` for a user of the home node.
    fn lookup_body(&self, username: &str) -> Body {
        match QualifiedName::parse(username) {
            Ok(q) if username.contains('@') => {
                Body::KtLookup { name: username.to_string(), from_log_size: self.verifier.known_log_size(&q.node) }
            }
            _ => Body::Lookup { username: username.to_string() },
        }
    }

    /// Asks the home node for the node descriptors it knows and learns them as witnesses
    /// (`specs/trust.md` §5: the witness set is what the client learnt at set-up, or what
    /// its operator configured; nodes met later are not added by themselves).
    pub fn fetch_nodes(&mut self, now: TimeUs) {
        self.request(now, Step::Nodes, Body::NodesRequest);
    }

    /// The transparency verifier (pins, accepted heads, distrusted nodes).
    pub fn transparency(&self) -> &Verifier {
        &self.verifier
    }

    fn request(&mut self, now: TimeUs, step: Step, body: Body) {
        let backoff = self.config.retry_after_us;
        self.request_with(now, step, body, backoff);
    }

    fn request_with(&mut self, now: TimeUs, step: Step, body: Body, backoff_us: TimeUs) {
        let rid = self.next_rid;
        self.next_rid += 1;
        self.pending.insert(rid, Pending { step, retry_at_us: now + backoff_us, backoff_us });
        self.transmits.push(Envelope { request_id: rid, body });
    }

    fn transmit_dm(&mut self, now: TimeUs, dm: OutgoingDm) {
        let backoff = self.config.retry_after_us;
        self.transmit_dm_with(now, dm, backoff);
    }

    /// Seals for the contact's current installations and sends (or re-sends) the DM:
    /// directly when every installation still waiting for it has a usable route and no
    /// relayed copy exists, else through the node to all of them. Nothing goes while a
    /// direct attempt for the message is in flight (`settle` decides when they end).
    fn transmit_dm_with(&mut self, now: TimeUs, mut dm: OutgoingDm, backoff_us: TimeUs) {
        if self.direct_attempts.values().any(|a| a.msg_id == dm.msg_id) {
            self.unacked.insert(dm.msg_id, dm);
            return;
        }
        let Some(contact) = self.contacts.get(&dm.to).cloned() else {
            self.outbox.entry(dm.to.clone()).or_default().push(dm.clone());
            self.unacked.remove(&dm.msg_id);
            self.start_lookup(now, dm.to);
            return;
        };
        let targets: Vec<&InstallationCert> = contact
            .installations
            .iter()
            .filter(|c| !dm.direct_done.contains(&identity::installation_id(&c.signing_key)))
            .collect();
        if targets.is_empty() {
            self.complete(dm);
            return;
        }
        let content = codec::encode(&dm.content);
        let id = self.identity.as_ref().expect("identity");
        let username = self.username.clone().expect("username");
        let sender = Sender { username: &username, key: &id.installation, cert: &id.cert };
        let routes: Option<Vec<DirectAddress>> = match self.direct.get(&dm.to) {
            Some(peer) if peer.enabled && !dm.relayed => targets
                .iter()
                .map(|c| {
                    peer.routes
                        .get(&identity::installation_id(&c.signing_key))
                        .filter(|r| r.down_until_us <= now)
                        .map(|r| r.addr.clone())
                })
                .collect(),
            _ => None,
        };
        if let Some(routes) = routes {
            for (cert, addr) in targets.iter().zip(routes) {
                let installation = identity::installation_id(&cert.signing_key);
                let sealed =
                    seal::seal(&mut self.rng, &sender, local_part(&dm.to), cert, &dm.msg_id, dm.sent_at_us, &content);
                let attempt = self.next_rid;
                self.next_rid += 1;
                let body = Body::Deliver {
                    delivery_id: 0,
                    from_username: username.clone(),
                    from: id.installation_id,
                    msg_id: dm.msg_id,
                    sealed,
                };
                self.direct_attempts.insert(
                    attempt,
                    DirectAttempt {
                        msg_id: dm.msg_id,
                        installation,
                        addr: addr.clone(),
                        deadline_us: now + self.config.direct_timeout_us,
                    },
                );
                self.direct_transmits.push(DirectTransmit {
                    attempt,
                    to: dm.to.clone(),
                    addr,
                    envelope: Envelope { request_id: attempt, body },
                });
            }
            self.unacked.insert(dm.msg_id, dm);
            return;
        }
        let payloads: Vec<InstallationPayload> = targets
            .iter()
            .map(|cert| InstallationPayload {
                installation: identity::installation_id(&cert.signing_key),
                sealed: seal::seal(
                    &mut self.rng,
                    &sender,
                    local_part(&dm.to),
                    cert,
                    &dm.msg_id,
                    dm.sent_at_us,
                    &content,
                ),
            })
            .collect();
        let signed = identity::send_dm_fields_bytes(&id.installation_id, &dm.to, &dm.msg_id, &payloads);
        let sig = identity::sign(&id.installation, &signed);
        let body =
            Body::SendDm(SendDm { from: id.installation_id, to: dm.to.clone(), msg_id: dm.msg_id, payloads, sig });
        // One pending retry per message, whatever rid carried it.
        self.pending.retain(|_, p| !matches!(&p.step, Step::Send(m) if *m == dm.msg_id));
        // One sealed copy per installation travels in one frame: with many installations
        // a large body may not fit. Fail the send rather than emit an unencodable frame
        // (and retry it forever). Frame = version byte + request id (at most 9) + body.
        let frame_len = codec::try_encode(&body).map_or(usize::MAX, |b| b.len().saturating_add(1 + 9));
        if frame_len > nymstr_proto::limits::FRAME_BYTES_MAX {
            self.unacked.remove(&dm.msg_id);
            let installations = contact.installations.len();
            self.events.push_back(Event::Failed {
                what: Operation::Send { to: dm.to, msg_id: dm.msg_id },
                code: ErrorCode::FrameTooLarge,
                detail: format!("sealed for {installations} installations the message exceeds one frame"),
            });
            return;
        }
        self.request_with(now, Step::Send(dm.msg_id), body, backoff_us);
        dm.relayed = true;
        self.unacked.insert(dm.msg_id, dm);
    }

    /// Every installation has the message: it is done.
    fn complete(&mut self, dm: OutgoingDm) {
        self.unacked.remove(&dm.msg_id);
        self.pending.retain(|_, p| !matches!(&p.step, Step::Send(m) if *m == dm.msg_id));
        self.events.push_back(Event::SendAcked { to: dm.to, msg_id: dm.msg_id });
    }

    fn direct_succeeded(&mut self, now: TimeUs, attempt: u64) {
        let Some(a) = self.direct_attempts.remove(&attempt) else { return };
        let Some(dm) = self.unacked.get_mut(&a.msg_id) else { return };
        dm.direct_done.insert(a.installation);
        let to = dm.to.clone();
        if let Some(route) = self.direct.get_mut(&to).and_then(|p| p.routes.get_mut(&a.installation)) {
            route.failures = 0;
            route.down_until_us = 0;
        }
        self.events.push_back(Event::DirectDelivered { to, msg_id: a.msg_id });
        self.settle(now, a.msg_id);
    }

    /// Once no direct attempt of a message is in flight: done, or relay the rest.
    fn settle(&mut self, now: TimeUs, msg_id: MsgId) {
        if self.direct_attempts.values().any(|a| a.msg_id == msg_id) {
            return;
        }
        if let Some(dm) = self.unacked.get(&msg_id).cloned() {
            self.transmit_dm(now, dm);
        }
    }

    fn handle_envelope(&mut self, now: TimeUs, envelope: Envelope) {
        let rid = envelope.request_id;
        match envelope.body {
            Body::Challenge { nonce, .. } => self.on_challenge(now, rid, nonce),
            Body::Registered { username, .. } => self.on_registered(rid, username),
            Body::LoggedIn { queued, .. } => self.on_logged_in(now, rid, queued),
            Body::LookupResult { username, account_key, installations } => {
                self.on_lookup_result(now, rid, username, account_key, installations, "")
            }
            Body::SendAck { msg_id } => {
                // Only a relayed copy is acknowledged by the node; it covers every
                // installation not reached directly.
                if let Some(dm) = self.unacked.get(&msg_id).filter(|d| d.relayed).cloned() {
                    self.complete(dm);
                }
            }
            Body::Deliver { delivery_id, from_username, from, msg_id, sealed } => {
                let source = Source::Node { delivery_id };
                self.on_deliver(now, InboundDm { source, from_username, from, msg_id, sealed })
            }
            Body::Error { code, detail } => self.on_error(now, rid, code, detail),
            Body::KtLookupResult { descriptor, proof } => self.on_kt_result(now, rid, descriptor, *proof),
            Body::Nodes { descriptors } if self.pending.remove(&rid).is_some() => {
                for d in &descriptors {
                    let _ = self.verifier.learn_node(d);
                }
            }
            Body::Gossip { items } => self.on_evidence(rid, items),
            // Requests are never sent to clients; ignore them.
            _ => {}
        }
    }

    fn on_registered(&mut self, rid: u64, username: String) {
        if self.pending.remove(&rid).is_some() && !self.registered {
            self.registered = true;
            self.events.push_back(Event::Registered { username });
        }
    }

    fn on_logged_in(&mut self, now: TimeUs, rid: u64, queued: u32) {
        if self.pending.remove(&rid).is_some() {
            self.events.push_back(Event::LoggedIn { queued });
            // Sends refused while the tag was unbound go again now, from the bound tag, in
            // the order they were written (the node queues them in arrival order).
            let mut unacked: Vec<OutgoingDm> = self.unacked.values().cloned().collect();
            unacked.sort_by_key(|d| (d.sent_at_us, d.msg_id));
            for dm in unacked {
                self.transmit_dm(now, dm);
            }
        }
    }

    fn on_challenge(&mut self, now: TimeUs, rid: u64, nonce: Nonce) {
        let Some(p) = self.pending.remove(&rid) else { return };
        let id = self.identity.as_ref().expect("identity");
        match p.step {
            Step::RegisterAwaitChallenge => {
                let username = self.username.clone().expect("username");
                let account_sig = identity::sign(
                    &id.account,
                    &identity::register_account_bytes(&nonce, &username, &id.installation_id),
                );
                let installation_sig = identity::sign(
                    &id.installation,
                    &identity::register_installation_bytes(&nonce, &username, &id.installation_id),
                );
                let body = Body::RegisterResponse { nonce, account_sig, installation_sig };
                self.request_with(now, Step::RegisterAwaitResult, body, p.backoff_us);
            }
            Step::LoginAwaitChallenge => {
                let installation_sig =
                    identity::sign(&id.installation, &identity::login_bytes(&nonce, &id.installation_id));
                self.request_with(
                    now,
                    Step::LoginAwaitResult,
                    Body::LoginResponse { nonce, installation_sig },
                    p.backoff_us,
                );
            }
            other => {
                self.pending.insert(rid, Pending { step: other, ..p });
            }
        }
    }

    /// A transparency lookup answer for `user@node`: verified by the client itself
    /// (the home node that relayed it cannot forge the remote node's signature).
    fn on_kt_result(&mut self, now: TimeUs, rid: u64, descriptor: NodeDescriptor, proof: LookupProof) {
        let Some(Pending { step: Step::Lookup(asked), .. }) = self.pending.get(&rid).cloned() else { return };
        let Ok(q) = QualifiedName::parse(&asked) else { return };
        if descriptor.node_id != q.node {
            self.pending.remove(&rid);
            self.lookups.remove(&asked);
            self.transparency_failed(&asked, "unknown_node", "the answer came from another node".into());
            return;
        }
        if self.verifier.node_key(&q.node).is_none() {
            let _ = self.verifier.learn_serving_node(&descriptor);
        }
        // Freshness: a node keeps signing a head every epoch; one much older than that is a
        // replay (or a node that stopped), never the current state.
        let age = now.saturating_sub(proof.head.head.issued_at_us);
        let max_age = descriptor
            .epoch_us
            .saturating_mul(self.config.head_max_age_epochs)
            .saturating_add(self.config.head_age_slack_us);
        if nymstr_proto::federation::descriptor::verify(&descriptor).is_ok() && age > max_age {
            self.pending.remove(&rid);
            self.lookups.remove(&asked);
            let detail = format!("head of epoch {} is {} s old", proof.head.head.epoch, age / 1_000_000);
            self.transparency_failed(&asked, "rollback", detail);
            return;
        }
        // Report the head we were shown, so nodes can compare what each client saw.
        self.transmits.push(Envelope {
            request_id: 0,
            body: Body::Gossip {
                items: vec![GossipItem::Head { head: proof.head.clone(), cosignatures: proof.cosignatures.clone() }],
            },
        });
        match self.verifier.check_lookup(&q.node, &q.username, &proof) {
            // Monitoring our own entry: a key we never had means the node (or whoever
            // holds its key) put another key under our name.
            Outcome::Verified(entry)
                if Some(q.username.as_str()) == self.username.as_deref()
                    && self.identity.as_ref().is_some_and(|id| id.cert.account_key != entry.account_key) =>
            {
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                self.transparency_failed(&asked, "impersonated", "our own name maps to a key we do not hold".into());
            }
            Outcome::Verified(entry) => {
                self.witness_waits.remove(&asked);
                self.on_lookup_result(now, rid, asked.clone(), entry.account_key, entry.installations, &asked)
            }
            Outcome::KeyChanged { old, new, .. } => {
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                self.events.push_back(Event::KeyChanged { username: asked.clone(), pinned: old, offered: new });
                self.transparency_failed(&asked, "key_changed", "account key differs from the pinned one".into());
            }
            // Two lookups of one node crossed: ask again from the head accepted since.
            Outcome::Stale => {
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                self.start_lookup(now, asked);
            }
            // Too few cosignatures from our witnesses may be transient (the head was served
            // before ours cosigned it): the request stays pending and is asked again at its
            // deadline, up to `WITNESS_WAITS_MAX` times, then it fails for good.
            Outcome::NotEnoughWitnesses { .. }
                if {
                    let waits = self.witness_waits.entry(asked.clone()).or_insert(0);
                    *waits += 1;
                    *waits <= WITNESS_WAITS_MAX
                } => {}
            other => {
                self.witness_waits.remove(&asked);
                self.pending.remove(&rid);
                self.lookups.remove(&asked);
                let detail = format!("{other:?}");
                self.transparency_failed(&asked, other.name(), detail);
            }
        }
    }

    /// Evidence from the home node (a fork certificate against the node of a lookup).
    fn on_evidence(&mut self, rid: u64, items: Vec<GossipItem>) {
        for item in items {
            if let GossipItem::Fork(cert) = item {
                self.verifier.on_fork_certificate(&cert);
            }
        }
        if let Some(Pending { step: Step::Lookup(asked), .. }) = self.pending.get(&rid).cloned()
            && let Ok(q) = QualifiedName::parse(&asked)
            && self.verifier.is_distrusted(&q.node)
        {
            self.pending.remove(&rid);
            self.lookups.remove(&asked);
            self.transparency_failed(&asked, "forked", "the node signed two heads for one epoch".into());
        }
    }

    fn transparency_failed(&mut self, name: &str, outcome: &'static str, detail: String) {
        self.events.push_back(Event::Transparency { username: name.to_string(), outcome, detail: detail.clone() });
        self.fail_contact(name, ErrorCode::BadCertificate, &detail);
    }

    fn on_lookup_result(
        &mut self,
        now: TimeUs,
        rid: u64,
        username: String,
        account_key: PublicKey,
        installations: Vec<InstallationCert>,
        _via: &str,
    ) {
        let Some(p) = self.pending.remove(&rid) else { return };
        let Step::Lookup(asked) = p.step else { return };
        self.lookups.remove(&asked);
        // Keep only certificates the account key really signed: a node cannot add devices.
        let installations: Vec<_> = installations
            .into_iter()
            .filter(|c| {
                c.account_key == account_key
                    && identity::verify_cert(c).is_ok()
                    && identity::dh_key_is_usable(&c.dh_key)
            })
            .collect();
        if asked != username || installations.is_empty() {
            self.fail_contact(&asked, ErrorCode::BadCertificate, "lookup answer has no valid installation");
            return;
        }
        match self.pins.get(&username).map(|(_, k)| k) {
            Some(pinned) if *pinned != account_key => {
                let pinned = *pinned;
                self.events.push_back(Event::KeyChanged { username: username.clone(), pinned, offered: account_key });
                self.fail_contact(&asked, ErrorCode::BadCertificate, "account key differs from the pinned one");
                return;
            }
            Some(_) => {}
            None => self.pin(username.clone(), account_key),
        }
        if self.contacts.len() >= self.config.contacts_max && !self.contacts.contains_key(&username) {
            let oldest = self.contacts.iter().min_by_key(|(_, c)| c.fetched_at_us).map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.contacts.remove(&oldest);
            }
        }
        self.contacts.insert(username.clone(), Contact { account_key, installations, fetched_at_us: now });
        self.events.push_back(Event::LookedUp { username: username.clone() });
        for dm in self.outbox.remove(&username).unwrap_or_default() {
            self.transmit_dm(now, dm);
        }
        for inbound in self.unverified.remove(&username).unwrap_or_default() {
            self.open_and_ack(now, inbound);
        }
    }

    fn pin(&mut self, username: String, account_key: PublicKey) {
        if self.pins.len() >= self.config.pins_max
            && let Some((_, oldest)) = self.pin_order.pop_first()
        {
            self.pins.remove(&oldest);
        }
        let seq = self.next_pin_seq;
        self.next_pin_seq += 1;
        self.pins.insert(username.clone(), (seq, account_key));
        self.pin_order.insert(seq, username);
    }

    fn on_deliver(&mut self, now: TimeUs, dm: InboundDm) {
        if self.seen.contains(&(dm.from, dm.msg_id)) {
            self.answer(dm.source, dm.msg_id, Ok(()));
            return;
        }
        let known_installation = self
            .contacts
            .get(&dm.from_username)
            .is_some_and(|c| c.installations.iter().any(|i| identity::installation_id(&i.signing_key) == dm.from));
        if known_installation {
            self.open_and_ack(now, dm);
        } else {
            // Unknown sender or a device we have not seen: look the sender up first.
            let name = dm.from_username.clone();
            if contact_name(&name).as_deref() != Ok(name.as_str()) {
                self.answer(dm.source, dm.msg_id, Err((ErrorCode::UsernameInvalid, "sender name is not normalized")));
                return;
            }
            let waiting = self.unverified.entry(name.clone()).or_default();
            if waiting.iter().any(|w| w.source == dm.source) || waiting.len() >= self.config.waiting_per_contact_max {
                return;
            }
            waiting.push(dm);
            self.contacts.remove(&name);
            self.start_lookup(now, name);
        }
    }

    fn open_and_ack(&mut self, now: TimeUs, dm: InboundDm) {
        let id = self.identity.as_ref().expect("identity");
        let username = self.username.as_deref().expect("username");
        let Some(contact) = self.contacts.get(&dm.from_username) else { return };
        let recipient = Recipient { username, installation: id.installation_id, dh_secret: &id.dh };
        let result = seal::open(
            &recipient,
            local_part(&dm.from_username),
            &dm.from,
            &dm.msg_id,
            &contact.account_key,
            &dm.sealed,
        )
        .and_then(|opened| match codec::decode::<DmContent>(&opened.body) {
            Ok(content) => Ok((opened, content)),
            Err(_) => Err(OpenError::Content),
        });
        let answer = match &result {
            Ok(_) => Ok(()),
            Err(OpenError::BadCertificate) => Err((ErrorCode::BadCertificate, "sender certificate refused")),
            Err(OpenError::BadSignature) => Err((ErrorCode::BadSignature, "inner signature refused")),
            Err(_) => Err((ErrorCode::Malformed, "sealed message refused")),
        };
        self.answer(dm.source, dm.msg_id, answer);
        if self.seen.contains(&(dm.from, dm.msg_id)) {
            return;
        }
        let via = match dm.source {
            Source::Node { .. } => Via::Relay,
            Source::Direct { .. } => Via::Direct,
        };
        match result {
            Ok((opened, content)) => {
                self.remember(dm.from, dm.msg_id);
                // The routing name (`user@node` for a remote sender) names the contact.
                let from = dm.from_username.clone();
                match content {
                    DmContent::Text { body } => self.events.push_back(Event::Received {
                        from,
                        msg_id: opened.msg_id,
                        sent_at_us: opened.sent_at_us,
                        body,
                        via,
                    }),
                    DmContent::DirectOffer { addr } => {
                        self.on_route(now, from, dm.from, dm.msg_id, opened.sent_at_us, addr, true)
                    }
                    DmContent::DirectAccept { addr } => {
                        self.on_route(now, from, dm.from, dm.msg_id, opened.sent_at_us, addr, false)
                    }
                    DmContent::GroupInvite(invite) => {
                        self.events.push_back(Event::GroupInvited { from, msg_id: opened.msg_id, invite })
                    }
                    DmContent::DirectWithdraw => {
                        let removed = self.direct.get_mut(&from).and_then(|p| p.routes.remove(&dm.from)).is_some();
                        if removed {
                            self.events.push_back(Event::DirectWithdrawn { peer: from });
                        }
                    }
                }
            }
            Err(reason) => self.events.push_back(Event::Rejected { from: dm.from_username, msg_id: dm.msg_id, reason }),
        }
    }

    /// Answers one delivery: `AckDelivery` to the node (always, valid or not, so it stops
    /// redelivering), or `SendAck` / `Error` on the direct connection it came from.
    fn answer(&mut self, source: Source, msg_id: MsgId, result: Result<(), (ErrorCode, &str)>) {
        match (source, result) {
            (Source::Node { delivery_id }, _) => {
                self.acks.push(delivery_id);
                self.deliveries_handled += 1;
            }
            (Source::Direct { conn, request_id }, Ok(())) => self
                .direct_replies
                .push(DirectReply { conn, envelope: Envelope { request_id, body: Body::SendAck { msg_id } } }),
            (Source::Direct { conn, request_id }, Err((code, detail))) => {
                self.direct_error(conn, request_id, code, detail.to_string())
            }
        }
    }

    fn direct_error(&mut self, conn: u64, request_id: u64, code: ErrorCode, detail: String) {
        let body = Body::Error { code, detail };
        self.direct_replies.push(DirectReply { conn, envelope: Envelope { request_id, body } });
    }

    /// A contact's installation revealed (or moved) its direct address.
    #[allow(clippy::too_many_arguments)]
    fn on_route(
        &mut self,
        now: TimeUs,
        peer: String,
        installation: InstallationId,
        msg_id: MsgId,
        announced_at_us: TimeUs,
        addr: DirectAddress,
        is_offer: bool,
    ) {
        if !addr.is_valid() {
            self.events.push_back(Event::Rejected { from: peer, msg_id, reason: OpenError::Content });
            return;
        }
        if !self.direct.contains_key(&peer) && self.direct.len() >= self.config.contacts_max {
            return;
        }
        let ours = self.direct_addr.clone();
        let accept_offers = self.accept_offers;
        let p = self.direct.entry(peer.clone()).or_default();
        if p.routes.get(&installation).is_some_and(|r| r.announced_at_us > announced_at_us) {
            return; // an older announcement overtaken by a newer one
        }
        p.routes
            .insert(installation, DirectRoute { addr: addr.clone(), announced_at_us, failures: 0, down_until_us: 0 });
        let became_enabled = !p.enabled && ours.is_some() && accept_offers;
        p.enabled |= became_enabled;
        let enabled = p.enabled;
        if enabled {
            self.events.push_back(Event::DirectReady { peer: peer.clone(), addr });
        } else {
            self.events.push_back(Event::DirectOffered { peer: peer.clone(), addr });
        }
        if let Some(ours) = ours
            && enabled
            && (is_offer || became_enabled)
        {
            let _ = self.send_content(now, &peer, DmContent::DirectAccept { addr: ours });
        }
    }

    fn remember(&mut self, from: InstallationId, msg_id: MsgId) {
        if self.seen.insert((from, msg_id)) {
            self.seen_order.push_back((from, msg_id));
            if self.seen_order.len() > self.config.seen_max
                && let Some(old) = self.seen_order.pop_front()
            {
                self.seen.remove(&old);
                self.seen_first_seq += 1;
            }
        }
    }

    fn on_error(&mut self, now: TimeUs, rid: u64, code: ErrorCode, detail: String) {
        let Some(p) = self.pending.remove(&rid) else { return };
        match (p.step, code) {
            // The node lost or expired the challenge (e.g. it restarted): start again.
            (
                Step::RegisterAwaitChallenge | Step::RegisterAwaitResult,
                ErrorCode::UnknownChallenge | ErrorCode::ChallengeExpired,
            ) => self.start_register_with(now, p.backoff_us),
            (
                Step::LoginAwaitChallenge | Step::LoginAwaitResult,
                ErrorCode::UnknownChallenge | ErrorCode::ChallengeExpired,
            ) => {
                let installation = self.identity.as_ref().expect("identity").installation_id;
                self.request_with(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation }, p.backoff_us);
            }
            // Transient: keep the request and retry at its next deadline.
            (step, ErrorCode::Busy | ErrorCode::QueueFull | ErrorCode::Internal | ErrorCode::Unreachable) => {
                self.pending.insert(rid, Pending { step, ..p });
            }
            // Our tag is not (or no longer) bound, e.g. the node lost the binding or we
            // came back with a new tag: log in; every unacknowledged send goes again after.
            (Step::Send(msg_id), ErrorCode::NotLoggedIn) => {
                self.pending.insert(rid, Pending { step: Step::Send(msg_id), ..p });
                let logging_in =
                    self.pending.values().any(|q| matches!(q.step, Step::LoginAwaitChallenge | Step::LoginAwaitResult));
                if !logging_in {
                    let installation = self.identity.as_ref().expect("identity").installation_id;
                    self.request(now, Step::LoginAwaitChallenge, Body::LoginRequest { installation });
                }
            }
            (Step::Send(msg_id), ErrorCode::StaleRecipient) => {
                if let Some(dm) = self.unacked.remove(&msg_id) {
                    self.contacts.remove(&dm.to);
                    self.outbox.entry(dm.to.clone()).or_default().push(dm.clone());
                    self.start_lookup(now, dm.to);
                }
            }
            (Step::RegisterAwaitChallenge | Step::RegisterAwaitResult, code) => {
                self.username = None;
                self.events.push_back(Event::Failed { what: Operation::Register, code, detail });
            }
            (Step::LoginAwaitChallenge | Step::LoginAwaitResult, code) => {
                self.events.push_back(Event::Failed { what: Operation::Login, code, detail });
            }
            (Step::Lookup(name), code) => {
                self.lookups.remove(&name);
                self.fail_contact(&name, code, &detail);
            }
            (Step::Send(msg_id), code) => {
                if let Some(dm) = self.unacked.remove(&msg_id) {
                    self.events.push_back(Event::Failed { what: Operation::Send { to: dm.to, msg_id }, code, detail });
                }
            }
            // A node that does not federate: no witnesses to learn.
            (Step::Nodes, _) => {}
        }
    }

    /// A contact could not be resolved: fail sends to it, discard deliveries from it.
    fn fail_contact(&mut self, name: &str, code: ErrorCode, detail: &str) {
        self.events.push_back(Event::Failed {
            what: Operation::Lookup(name.to_string()),
            code,
            detail: detail.to_string(),
        });
        for dm in self.outbox.remove(name).unwrap_or_default() {
            self.events.push_back(Event::Failed {
                what: Operation::Send { to: dm.to, msg_id: dm.msg_id },
                code,
                detail: detail.to_string(),
            });
        }
        for inbound in self.unverified.remove(name).unwrap_or_default() {
            self.answer(inbound.source, inbound.msg_id, Err((ErrorCode::BadCertificate, "sender not verified")));
            self.events.push_back(Event::Rejected {
                from: inbound.from_username,
                msg_id: inbound.msg_id,
                reason: OpenError::BadCertificate,
            });
        }
    }

    fn flush_acks(&mut self) {
        for chunk in self.acks.chunks(nymstr_proto::limits::ACK_IDS_MAX) {
            self.transmits.push(Envelope { request_id: 0, body: Body::AckDelivery { delivery_ids: chunk.to_vec() } });
        }
        self.acks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    const T0: TimeUs = 1_700_000_000_000_000;

    fn rng(n: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(n)
    }

    fn frame(request_id: u64, body: Body) -> Vec<u8> {
        codec::encode_frame(&Envelope { request_id, body }).unwrap()
    }

    /// A registered alice who looked bob up, has one message from him, one unacknowledged
    /// message to him, a direct route to him, and a pin for carol.
    fn alice_with_history() -> (ClientCore, Identity) {
        let alice_id = Identity::generate(&mut rng(1), T0);
        let bob = Identity::generate(&mut rng(2), T0);
        let mut alice = ClientCore::with_identity(rng(3), ClientConfig::default(), alice_id, "alice".into());
        alice.lookup(T0, "bob").unwrap();
        let rid = alice.drain_transmits().next_back().unwrap().request_id;
        let result = Body::LookupResult {
            username: "bob".into(),
            account_key: bob.cert.account_key,
            installations: vec![bob.cert.clone()],
        };
        alice.handle_frame(T0, &frame(rid, result));
        alice.pin("carol".into(), [7; 32]);
        let content = codec::encode(&DmContent::Text { body: b"hi alice".to_vec() });
        let sender = Sender { username: "bob", key: &bob.installation, cert: &bob.cert };
        let alice_cert = alice.identity().unwrap().cert.clone();
        let sealed = seal::seal(&mut rng(4), &sender, "alice", &alice_cert, &[5; 16], T0, &content);
        let deliver = Body::Deliver {
            delivery_id: 1,
            from_username: "bob".into(),
            from: bob.installation_id,
            msg_id: [5; 16],
            sealed,
        };
        alice.handle_frame(T0, &frame(0, deliver));
        alice.send_dm(T0 + 1, "bob", b"hello bob").unwrap();
        alice.direct.entry("bob".into()).or_default().routes.insert(
            bob.installation_id,
            DirectRoute {
                addr: DirectAddress::Tcp("127.0.0.1:7001".into()),
                announced_at_us: T0,
                failures: 1,
                down_until_us: T0 + 5,
            },
        );
        alice.direct.get_mut("bob").unwrap().enabled = true;
        alice.drain_transmits().for_each(drop);
        while alice.poll_event().is_some() {}
        (alice, bob)
    }

    #[test]
    fn state_round_trips_through_the_codec_and_restore() {
        let (alice, _) = alice_with_history();
        let state = alice.export_state();
        assert!(state.registered);
        assert_eq!(state.contacts.len(), 1);
        assert_eq!(state.pins.len(), 2, "bob (first use) and carol");
        assert_eq!(state.seen.ids.len(), 1);
        assert_eq!(state.outgoing.len(), 1);
        assert_eq!(state.direct.len(), 1);
        let bytes = codec::encode(&state);
        let decoded: ClientState = codec::decode(&bytes).unwrap();
        assert_eq!(decoded, state);
        let restored = ClientCore::restore(rng(9), ClientConfig::default(), decoded).unwrap();
        assert_eq!(restored.export_state(), state);
        assert_eq!(restored.pins().map(|(n, _)| n).collect::<Vec<_>>(), vec!["bob", "carol"], "pin order survives");
        assert_eq!(restored.identity().unwrap().installation_id, alice.identity().unwrap().installation_id);
    }

    #[test]
    fn a_restored_client_sends_its_unacknowledged_messages_after_login() {
        let (alice, _) = alice_with_history();
        let msg_id = *alice.export_state().outgoing.keys().next().unwrap();
        let mut state = alice.export_state();
        state.direct.clear(); // relay only, for this test
        let mut restored = ClientCore::restore(rng(10), ClientConfig::default(), state).unwrap();
        assert_eq!(restored.unacked_sends(), 1);
        restored.login(T0 + 10).unwrap();
        let rid = restored.drain_transmits().next().unwrap().request_id;
        restored.handle_frame(T0 + 10, &frame(rid, Body::Challenge { nonce: [1; 32], expires_at_us: T0 + 60_000_000 }));
        let rid = restored.drain_transmits().next().unwrap().request_id;
        restored.handle_frame(T0 + 10, &frame(rid, Body::LoggedIn { installation: [0; 32], queued: 0 }));
        let sends: Vec<_> = restored
            .drain_transmits()
            .filter_map(|e| match e.body {
                Body::SendDm(dm) => Some(dm.msg_id),
                _ => None,
            })
            .collect();
        assert_eq!(sends, vec![msg_id], "same message id: the node and bob deduplicate");
        restored.handle_frame(T0 + 11, &frame(0, Body::SendAck { msg_id }));
        assert!(restored.poll_event().is_some_and(|e| matches!(e, Event::LoggedIn { .. })));
        assert_eq!(restored.poll_event(), Some(Event::SendAcked { to: "bob".into(), msg_id }));
        assert_eq!(restored.unacked_sends(), 0);
    }

    #[test]
    fn a_seen_message_stays_seen_across_a_restore() {
        let (alice, bob) = alice_with_history();
        let mut restored = ClientCore::restore(rng(11), ClientConfig::default(), alice.export_state()).unwrap();
        let content = codec::encode(&DmContent::Text { body: b"hi alice".to_vec() });
        let sender = Sender { username: "bob", key: &bob.installation, cert: &bob.cert };
        let cert = restored.identity().unwrap().cert.clone();
        let sealed = seal::seal(&mut rng(12), &sender, "alice", &cert, &[5; 16], T0, &content);
        let deliver = Body::Deliver {
            delivery_id: 2,
            from_username: "bob".into(),
            from: bob.installation_id,
            msg_id: [5; 16],
            sealed,
        };
        restored.handle_frame(T0 + 20, &frame(0, deliver));
        assert_eq!(restored.poll_event(), None, "a redelivered message surfaces once");
        let acks: Vec<_> = restored.drain_transmits().map(|e| e.body).collect();
        assert_eq!(acks, vec![Body::AckDelivery { delivery_ids: vec![2] }]);
    }

    #[test]
    fn the_seen_log_numbers_survive_eviction() {
        let config = ClientConfig { seen_max: 2, ..ClientConfig::default() };
        let mut c = ClientCore::new(rng(13), config.clone());
        for i in 0..5u8 {
            c.remember([i; 32], [i; 16]);
        }
        let state = c.export_state();
        assert_eq!(state.seen.first_seq, 3);
        assert_eq!(state.seen.ids, vec![([3; 32], [3; 16]), ([4; 32], [4; 16])]);
        let mut restored = ClientCore::restore(rng(14), config, state).unwrap();
        restored.remember([5; 32], [5; 16]);
        let state = restored.export_state();
        assert_eq!(state.seen.first_seq, 4);
        assert_eq!(state.seen.ids.len(), 2);
    }

    #[test]
    fn a_mismatched_identity_is_refused() {
        let (alice, _) = alice_with_history();
        let mut state = alice.export_state();
        state.identity.as_mut().unwrap().dh_secret = [1; 32];
        assert_eq!(
            ClientCore::restore(rng(15), ClientConfig::default(), state).err(),
            Some(RestoreError::IdentityMismatch)
        );
    }

    #[test]
    fn an_unfinished_registration_starts_over() {
        let mut c = ClientCore::new(rng(16), ClientConfig::default());
        c.register(T0, "alice").unwrap();
        let state = c.export_state();
        assert!(!state.registered);
        let mut restored = ClientCore::restore(rng(17), ClientConfig::default(), state).unwrap();
        assert_eq!(restored.username(), None);
        restored.register(T0, "alice").unwrap();
        assert_eq!(
            restored.identity().unwrap().installation_id,
            c.identity().unwrap().installation_id,
            "the keys are kept"
        );
    }
}
