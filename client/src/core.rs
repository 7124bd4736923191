//! The sans-IO client core: registration, login, lookups with a contact cache, sending
//! sealed direct messages, receiving, verifying and acknowledging them.
//!
//! Shape (quinn-proto style): the host calls the request methods (`register`, `login`,
//! `lookup`, `send_dm`), feeds frames from the home node with `handle_frame`, runs
//! `handle_timeout` at `poll_timeout`, and drains `transmits` (envelopes for the node)
//! and `events` (what the application sees). Every request is retried until answered:
//! the transport may lose anything and the node may restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;
use nymstr_node::codec;
use nymstr_node::identity::{self, UsernameError};
use nymstr_node::wire::{
    Body, Envelope, ErrorCode, InstallationCert, InstallationId, InstallationPayload, MsgId, Nonce, PublicKey, SendDm,
};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use x25519_dalek::StaticSecret;

use crate::seal::{self, OpenError, Recipient, Sender};

pub type TimeUs = u64;

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
        }
    }
}

/// A contact as last looked up: its account key and installations.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A request failed for good.
    Failed {
        what: Operation,
        code: ErrorCode,
        detail: String,
    },
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
}

/// Largest plaintext body accepted by `send_dm` (sealing adds headers and a certificate).
pub const BODY_BYTES_MAX: usize = nymstr_node::limits::DM_PAYLOAD_BYTES_MAX - 1024;

#[derive(Clone, Debug)]
struct OutgoingDm {
    to: String,
    msg_id: MsgId,
    body: Vec<u8>,
    sent_at_us: TimeUs,
}

#[derive(Clone, Debug)]
enum Step {
    RegisterAwaitChallenge,
    RegisterAwaitResult,
    LoginAwaitChallenge,
    LoginAwaitResult,
    Lookup(String),
    Send(MsgId),
}

#[derive(Clone, Debug)]
struct Pending {
    step: Step,
    retry_at_us: TimeUs,
    backoff_us: TimeUs,
}

#[derive(Clone, Debug)]
struct InboundDm {
    delivery_id: u64,
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
    /// username -> account key first seen (trust on first use), in pin order for eviction.
    pins: BTreeMap<String, PublicKey>,
    pin_order: VecDeque<String>,
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
    acks: Vec<u64>,
    transmits: Vec<Envelope>,
    events: VecDeque<Event>,
}

impl ClientCore {
    pub fn new(rng: ChaCha20Rng, config: ClientConfig) -> Self {
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
            pin_order: VecDeque::new(),
            lookups: BTreeSet::new(),
            outbox: BTreeMap::new(),
            unacked: BTreeMap::new(),
            unverified: BTreeMap::new(),
            seen: BTreeSet::new(),
            seen_order: VecDeque::new(),
            acks: Vec::new(),
            transmits: Vec::new(),
            events: VecDeque::new(),
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

    /// Sends not yet acknowledged by the node (including those waiting for a lookup).
    pub fn unacked_sends(&self) -> usize {
        self.unacked.len() + self.outbox.values().map(Vec::len).sum::<usize>()
    }

    /// True when no request is waiting for an answer.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.unverified.is_empty() && self.outbox.is_empty()
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
        let username = identity::normalize_username(username)?;
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
        let to = identity::normalize_username(to)?;
        let mut msg_id = [0u8; 16];
        self.rng.fill_bytes(&mut msg_id);
        let dm = OutgoingDm { to: to.clone(), msg_id, body: body.to_vec(), sent_at_us: now };
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

    pub fn poll_timeout(&self) -> Option<TimeUs> {
        self.pending.values().map(|p| p.retry_at_us).min()
    }

    /// Retries every request whose answer is overdue.
    pub fn handle_timeout(&mut self, now: TimeUs) {
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
                    self.request_with(now, Step::Lookup(name.clone()), Body::Lookup { username: name }, backoff_us)
                }
                Step::Send(msg_id) => {
                    if let Some(dm) = self.unacked.get(&msg_id).cloned() {
                        self.transmit_dm_with(now, dm, backoff_us);
                    }
                }
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
        if self.lookups.insert(username.clone()) {
            self.request(now, Step::Lookup(username.clone()), Body::Lookup { username });
        }
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

    /// Seals for the contact's current installations and sends (or re-sends) the DM.
    fn transmit_dm_with(&mut self, now: TimeUs, dm: OutgoingDm, backoff_us: TimeUs) {
        let Some(contact) = self.contacts.get(&dm.to).cloned() else {
            self.outbox.entry(dm.to.clone()).or_default().push(dm.clone());
            self.unacked.remove(&dm.msg_id);
            self.start_lookup(now, dm.to);
            return;
        };
        let id = self.identity.as_ref().expect("identity");
        let username = self.username.clone().expect("username");
        let sender = Sender { username: &username, key: &id.installation, cert: &id.cert };
        let payloads: Vec<InstallationPayload> = contact
            .installations
            .iter()
            .map(|cert| InstallationPayload {
                installation: identity::installation_id(&cert.signing_key),
                sealed: seal::seal(&mut self.rng, &sender, &dm.to, cert, &dm.msg_id, dm.sent_at_us, &dm.body),
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
        if frame_len > nymstr_node::limits::FRAME_BYTES_MAX {
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
        self.unacked.insert(dm.msg_id, dm);
    }

    fn handle_envelope(&mut self, now: TimeUs, envelope: Envelope) {
        let rid = envelope.request_id;
        match envelope.body {
            Body::Challenge { nonce, .. } => self.on_challenge(now, rid, nonce),
            Body::Registered { username, .. } => self.on_registered(rid, username),
            Body::LoggedIn { queued, .. } => self.on_logged_in(now, rid, queued),
            Body::LookupResult { username, account_key, installations } => {
                self.on_lookup_result(now, rid, username, account_key, installations)
            }
            Body::SendAck { msg_id } => {
                if let Some(dm) = self.unacked.remove(&msg_id) {
                    self.pending.retain(|_, p| !matches!(&p.step, Step::Send(m) if *m == msg_id));
                    self.events.push_back(Event::SendAcked { to: dm.to, msg_id });
                }
            }
            Body::Deliver { delivery_id, from_username, from, msg_id, sealed } => {
                self.on_deliver(now, InboundDm { delivery_id, from_username, from, msg_id, sealed })
            }
            Body::Error { code, detail } => self.on_error(now, rid, code, detail),
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
            // Sends refused while the tag was unbound go again now, from the bound tag.
            let unacked: Vec<OutgoingDm> = self.unacked.values().cloned().collect();
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

    fn on_lookup_result(
        &mut self,
        now: TimeUs,
        rid: u64,
        username: String,
        account_key: PublicKey,
        installations: Vec<InstallationCert>,
    ) {
        let Some(p) = self.pending.remove(&rid) else { return };
        let Step::Lookup(asked) = p.step else { return };
        self.lookups.remove(&asked);
        // Keep only certificates the account key really signed: a node cannot add devices.
        let installations: Vec<_> = installations
            .into_iter()
            .filter(|c| {
                c.account_key == account_key && identity::verify_cert(c).is_ok() && seal::dh_key_is_usable(&c.dh_key)
            })
            .collect();
        if asked != username || installations.is_empty() {
            self.fail_contact(&asked, ErrorCode::BadCertificate, "lookup answer has no valid installation");
            return;
        }
        match self.pins.get(&username) {
            Some(pinned) if *pinned != account_key => {
                let pinned = *pinned;
                self.events.push_back(Event::KeyChanged { username: username.clone(), pinned, offered: account_key });
                self.fail_contact(&asked, ErrorCode::BadCertificate, "account key differs from the pinned one");
                return;
            }
            Some(_) => {}
            None => {
                if self.pins.len() >= self.config.pins_max
                    && let Some(oldest) = self.pin_order.pop_front()
                {
                    self.pins.remove(&oldest);
                }
                self.pins.insert(username.clone(), account_key);
                self.pin_order.push_back(username.clone());
            }
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
            self.open_and_ack(inbound);
        }
    }

    fn on_deliver(&mut self, now: TimeUs, dm: InboundDm) {
        if self.seen.contains(&(dm.from, dm.msg_id)) {
            self.acks.push(dm.delivery_id);
            return;
        }
        let known_installation = self
            .contacts
            .get(&dm.from_username)
            .is_some_and(|c| c.installations.iter().any(|i| identity::installation_id(&i.signing_key) == dm.from));
        if known_installation {
            self.open_and_ack(dm);
        } else {
            // Unknown sender or a device we have not seen: look the sender up first.
            let name = dm.from_username.clone();
            if identity::normalize_username(&name).as_deref() != Ok(name.as_str()) {
                self.acks.push(dm.delivery_id);
                return;
            }
            let waiting = self.unverified.entry(name.clone()).or_default();
            if waiting.iter().any(|w| w.delivery_id == dm.delivery_id)
                || waiting.len() >= self.config.waiting_per_contact_max
            {
                return;
            }
            waiting.push(dm);
            self.contacts.remove(&name);
            self.start_lookup(now, name);
        }
    }

    fn open_and_ack(&mut self, dm: InboundDm) {
        let id = self.identity.as_ref().expect("identity");
        let username = self.username.as_deref().expect("username");
        let Some(contact) = self.contacts.get(&dm.from_username) else { return };
        let recipient = Recipient { username, installation: id.installation_id, dh_secret: &id.dh };
        let result = seal::open(&recipient, &dm.from_username, &dm.from, &dm.msg_id, &contact.account_key, &dm.sealed);
        self.acks.push(dm.delivery_id);
        if self.seen.contains(&(dm.from, dm.msg_id)) {
            return;
        }
        match result {
            Ok(opened) => {
                self.remember(dm.from, dm.msg_id);
                self.events.push_back(Event::Received {
                    from: opened.from_username,
                    msg_id: opened.msg_id,
                    sent_at_us: opened.sent_at_us,
                    body: opened.body,
                });
            }
            Err(reason) => self.events.push_back(Event::Rejected { from: dm.from_username, msg_id: dm.msg_id, reason }),
        }
    }

    fn remember(&mut self, from: InstallationId, msg_id: MsgId) {
        if self.seen.insert((from, msg_id)) {
            self.seen_order.push_back((from, msg_id));
            if self.seen_order.len() > self.config.seen_max
                && let Some(old) = self.seen_order.pop_front()
            {
                self.seen.remove(&old);
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
            (step, ErrorCode::Busy | ErrorCode::QueueFull | ErrorCode::Internal) => {
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
            self.acks.push(inbound.delivery_id);
            self.events.push_back(Event::Rejected {
                from: inbound.from_username,
                msg_id: inbound.msg_id,
                reason: OpenError::BadCertificate,
            });
        }
    }

    fn flush_acks(&mut self) {
        for chunk in self.acks.chunks(nymstr_node::limits::ACK_IDS_MAX) {
            self.transmits.push(Envelope { request_id: 0, body: Body::AckDelivery { delivery_ids: chunk.to_vec() } });
        }
        self.acks.clear();
    }
}
