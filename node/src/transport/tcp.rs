//! The TCP transport: length-prefixed frames (`nymstr_proto::framing`) on a stream, one fresh
//! random [`SenderTag`] per accepted client connection, and node-to-node connections
//! (federation) opened by a [`PREFACE_MAGIC`] preface and authenticated with the node keys
//! (Noise XX, `transport/noise.rs`). Normative text: `specs/tcp.md`.
//!
//! Nodes: a frame for `Peer::Address(a)` goes only on the connection this transport dialed
//! to `a` (`host:port` text); if there is none a dial to `a` is started and the frame waits
//! for it (a few frames at most). A dial that fails puts `a` in back-off (1 s doubling to
//! 60 s); frames for it meanwhile are dropped (the federation core retries). The first dial
//! to `a` that completes its handshake pins `a` to the node id of the key that answered
//! there; a later answer at `a` with another key is refused. A connection another node
//! dialed to us is authenticated by its handshake, and its frames reach the core as
//! `Peer::Address(a)` (the address its preface claims) only once `a` is pinned to the same
//! node id (this transport dials `a` to check); otherwise it is closed unheard, and nothing
//! is ever sent on it but its own error frames. So an address speaks, and is spoken to, only
//! with the key that answers at that address.
//!
//! It emulates the mixnet's reply contract: the node core sees only the tag, replies to
//! the tag go back on that connection, and the socket address of a client is dropped at
//! `accept` (it is never logged, stored or handed to the core). A frame for a tag whose
//! connection is gone is dropped silently, as a mixnet drops a reply whose SURBs ran out.
//!
//! Tasks: one accept loop, one dispatcher (outbound frames to per-connection write
//! queues), and per connection a reader (framing, rate limit, idle timeout) and a writer.
//! Limits and what happens at each:
//!
//! | limit | at the limit |
//! | --- | --- |
//! | `max_connections` | a new connection is accepted and closed at once |
//! | `rate_limit_*` (token bucket per tag) | the frame is dropped and answered `Error{Busy}` (the frame's request id) |
//! | framing (`FRAME_BYTES_MAX`, empty frame) | one `Error{FrameTooLarge or Malformed}`, request id 0, then close |
//! | `idle_timeout_secs` with no byte received | close |
//! | `write_queue_frames` full (the peer does not read) | close (slow consumer) |
//! | `write_timeout_secs` for one batch of writes | close |
//!
//! Shutdown (the contract of `transport/mod.rs`): when the node closes its inbound
//! receiver the transport stops accepting and stops reading; when every outbound sender
//! is dropped it writes what is queued, closes every connection and drops its last
//! inbound sender.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand_core::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::runtime::os::monotonic;

use super::noise::{self, NoiseIdentity, Session};
use super::{Inbound, OUTBOUND_QUEUE_MAX, Outbound, TransportHandle};
use ed25519_dalek::SigningKey;
use nymstr_node_core::actors::{Address, Peer, SenderTag};
use nymstr_proto::codec;
use nymstr_proto::federation::NodeId;
use nymstr_proto::framing::{self, FramingError};
use nymstr_proto::wire::{Body, Envelope, ErrorCode};

/// Settings of the TCP transport (`[transport.tcp]` in `config.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// Address and port to listen on. Port 0 picks a free port (the bound address is
    /// printed at start and written to `status.json`).
    pub listen: SocketAddr,
    /// Connections served at once; a connection beyond this is closed as soon as it is
    /// accepted.
    pub max_connections: usize,
    /// Sustained frames per second accepted from one connection (one sender tag);
    /// 0 disables the limit.
    pub rate_limit_frames_per_sec: u32,
    /// Frames one connection may send in a burst above the sustained rate.
    pub rate_limit_burst_frames: u32,
    /// A connection that sends no byte for this long is closed; 0 disables the timeout.
    pub idle_timeout_secs: u64,
    /// A connection whose pending replies cannot be written within this time is closed.
    pub write_timeout_secs: u64,
    /// Replies queued for one connection; a peer that lets the queue fill is closed.
    pub write_queue_frames: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            max_connections: 1024,
            rate_limit_frames_per_sec: 50,
            rate_limit_burst_frames: 200,
            idle_timeout_secs: 900,
            write_timeout_secs: 30,
            write_queue_frames: 256,
        }
    }
}

impl TcpConfig {
    /// Range checks; on failure, the offending key and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1".into()));
        }
        if self.rate_limit_frames_per_sec > 0 && self.rate_limit_burst_frames == 0 {
            return Err(("rate_limit_burst_frames", "must be at least 1 while a rate limit is set".into()));
        }
        if self.write_timeout_secs == 0 {
            return Err(("write_timeout_secs", "must be at least 1".into()));
        }
        if self.write_queue_frames == 0 {
            return Err(("write_queue_frames", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("cannot listen on {addr}: the address is already in use (is another node running?)")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: permission denied (ports below 1024 need privileges)")]
    PermissionDenied { addr: SocketAddr },
    #[error("cannot listen on {addr}: the address is not available on this host")]
    AddrNotAvailable { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("invalid [transport.tcp] setting `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("cannot seed the sender-tag generator from the operating system: {0}")]
    Entropy(String),
}

/// Starts listening on `config.listen`; inbound frames go to `inbound`. `advertise` is
/// this node's own address as other nodes know it (sent in the preface of every
/// connection it dials); `None` uses the bound address.
pub async fn start(
    config: TcpConfig,
    advertise: Option<String>,
    node_key: &SigningKey,
    inbound: mpsc::Sender<Inbound>,
) -> Result<TransportHandle, TcpError> {
    config.check().map_err(|(key, message)| TcpError::Config { key, message })?;
    let addr = config.listen;
    let listener = TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => TcpError::AddrInUse { addr },
        io::ErrorKind::PermissionDenied => TcpError::PermissionDenied { addr },
        io::ErrorKind::AddrNotAvailable => TcpError::AddrNotAvailable { addr },
        _ => TcpError::Bind { addr, source },
    })?;
    let local = listener.local_addr().map_err(|source| TcpError::Bind { addr, source })?;
    let rng = crate::runtime::os::os_seeded_rng().map_err(|e| TcpError::Entropy(e.to_string()))?;
    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_MAX);
    let (stop_tx, stop_rx) = watch::channel(false);
    let own = advertise.unwrap_or_else(|| local.to_string());
    let noise = NoiseIdentity::new(node_key).map_err(|e| TcpError::Entropy(e.to_string()))?;
    let shared = Arc::new(Shared {
        config,
        preface: preface_body(own.as_bytes()),
        noise,
        dials_done: Notify::new(),
        conns: Mutex::new(BTreeMap::new()),
        nodes: Mutex::new(Nodes::default()),
        next_conn_id: AtomicU64::new(1),
        counters: Counters::default(),
    });
    tokio::spawn(dispatch(outbound_rx, shared.clone(), stop_tx, inbound.clone(), stop_rx.clone()));
    tokio::spawn(accept_loop(listener, shared, inbound, rng, stop_rx));
    tracing::info!(address = %local, "tcp transport listening");
    Ok(TransportHandle { outbound, address: local.to_string() })
}

/// A served connection, as the dispatcher sees it.
struct Conn {
    /// Length-prefixed frames for the writer.
    queue: mpsc::Sender<Vec<u8>>,
    /// Closes the connection at once (slow consumer).
    kill: Arc<Notify>,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused_at_limit: AtomicU64,
    rate_limited: AtomicU64,
    framing_errors: AtomicU64,
    slow_consumers: AtomicU64,
    idle_closed: AtomicU64,
    /// Node connections refused: a handshake that failed, or an address not the peer's own.
    handshakes_failed: AtomicU64,
}

struct Shared {
    config: TcpConfig,
    /// The preface this node sends first on every connection it dials (unframed: it is
    /// also the Noise prologue).
    preface: Vec<u8>,
    /// This process's Noise static key and its node key's proof.
    noise: NoiseIdentity,
    /// Woken whenever a dial ends (pinned, refused or failed).
    dials_done: Notify,
    conns: Mutex<BTreeMap<SenderTag, Conn>>,
    nodes: Mutex<Nodes>,
    next_conn_id: AtomicU64,
    counters: Counters,
}

/// A node-to-node connection, as the dispatcher sees it.
struct NodeConn {
    /// Tells this connection apart from a newer one to the same address.
    id: u64,
    queue: mpsc::Sender<Vec<u8>>,
    kill: Arc<Notify>,
    /// Dialed only to check an accepted connection's claim, and not used by the core since:
    /// such connections are capped (`CLAIM_DIALED_MAX`), the oldest closed first.
    claim_only: bool,
}

/// A dial in progress: frames waiting for it.
struct Dialing {
    waiting: Vec<Vec<u8>>,
    /// Started to check a claim (no frame of the core asked for it).
    claim: bool,
}

/// The node id an address answered with, and whether the core has sent to that address
/// (pins the core relies on are never evicted to make room).
struct Pin {
    node: NodeId,
    by_core: bool,
}

/// When a failed address may be dialed again.
struct Backoff {
    next: Instant,
    delay: Duration,
}

/// Node connections.
#[derive(Default)]
struct Nodes {
    /// Connections this node dialed, by address: the only ones frames are sent on.
    outbound: BTreeMap<Address, NodeConn>,
    /// Connections other nodes dialed, authenticated and verified, by connection id (never
    /// by the address they claim: a claim neither replaces nor shadows another connection).
    accepted: BTreeMap<u64, NodeConn>,
    dialing: BTreeMap<Address, Dialing>,
    backoff: BTreeMap<Address, Backoff>,
    /// The node id of the key that answered the first completed dial to each address.
    pins: BTreeMap<Address, Pin>,
}

impl Nodes {
    /// Makes room for one more pin: forgets a pin the core never used whose address has no
    /// connection or dial; `false` if every pin is in use (the new one is then refused).
    fn room_for_pin(&mut self) -> bool {
        if self.pins.len() < PINS_MAX {
            return true;
        }
        let spare = self
            .pins
            .iter()
            .find(|(a, p)| !p.by_core && !self.outbound.contains_key(*a) && !self.dialing.contains_key(*a))
            .map(|(a, _)| a.clone());
        spare.is_some_and(|a| self.pins.remove(&a).is_some())
    }

    /// Puts `address` in back-off; past `BACKOFF_ENTRIES_MAX` entries, expired ones go first,
    /// then the one due soonest.
    fn back_off(&mut self, address: &Address, now: Instant) -> Duration {
        let delay = self.backoff.get(address).map_or(BACKOFF_FIRST, |b| (b.delay * 2).min(BACKOFF_MAX));
        if !self.backoff.contains_key(address) && self.backoff.len() >= BACKOFF_ENTRIES_MAX {
            self.backoff.retain(|_, b| now < b.next);
            if self.backoff.len() >= BACKOFF_ENTRIES_MAX {
                let soonest = self.backoff.iter().min_by_key(|(_, b)| b.next).map(|(a, _)| a.clone());
                if let Some(a) = soonest {
                    self.backoff.remove(&a);
                }
            }
        }
        self.backoff.insert(address.clone(), Backoff { next: now + delay, delay });
        delay
    }

    /// Closes the oldest claim-only dialed connections until fewer than `CLAIM_DIALED_MAX`
    /// remain, so one more fits.
    fn room_for_claim_dial(&mut self) {
        loop {
            let claim_only = self.outbound.iter().filter(|(_, c)| c.claim_only);
            if claim_only.clone().count() < CLAIM_DIALED_MAX {
                return;
            }
            let Some(oldest) = claim_only.min_by_key(|(_, c)| c.id).map(|(a, _)| a.clone()) else { return };
            if let Some(conn) = self.outbound.remove(&oldest) {
                conn.kill.notify_one();
            }
        }
    }
}

/// First bytes of a node-to-node preface frame (`specs/tcp.md` §6). A wire frame starts
/// with its version byte (`WIRE_VERSION`), never with 0, so a preface cannot be mistaken for one.
pub const PREFACE_MAGIC: &[u8; 16] = b"\0nymstr-node/v1\0";
/// Longest address a preface may name (`federation::descriptor::ADDRESS_BYTES_MAX`).
pub const PREFACE_ADDRESS_MAX: usize = 256;
/// Frames kept for a peer while it is being dialed; more are dropped.
const DIAL_WAITING_MAX: usize = 64;
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Addresses kept in back-off at most (any accepted connection may name a new one).
const BACKOFF_ENTRIES_MAX: usize = 4_096;
/// Address pins kept at most (`specs/tcp.md` §6.3).
const PINS_MAX: usize = 4_096;
/// Dials checking claims that may be in progress at once; a claim past it is refused.
const CLAIM_DIALS_IN_FLIGHT_MAX: usize = 16;
/// Connections dialed only to check a claim (the core has not used them) kept open at once.
const CLAIM_DIALED_MAX: usize = 64;
/// Node connections get this many times a client's rate limit (gossip comes in bursts).
const NODE_RATE_FACTOR: u32 = 20;

/// How long an accepted node connection may take to finish its handshake and have its
/// claimed address checked (a dial to it, `DIAL_TIMEOUT` each).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(12);

/// The preface naming `address`, without the length prefix: `PREFACE_MAGIC || address`.
pub fn preface_body(address: &[u8]) -> Vec<u8> {
    let mut body = PREFACE_MAGIC.to_vec();
    body.extend_from_slice(address);
    body
}

/// The preface frame naming `address`, length prefix included:
/// `u32 len || PREFACE_MAGIC || address`.
pub fn preface_frame(address: &[u8]) -> Vec<u8> {
    framing::encode(&preface_body(address)).expect("a preface is never empty and fits in a frame")
}

/// The address a (de-framed) preface names, if `frame` is a valid preface.
pub fn parse_preface(frame: &[u8]) -> Option<Address> {
    let address = frame.strip_prefix(PREFACE_MAGIC.as_slice())?;
    (!address.is_empty() && address.len() <= PREFACE_ADDRESS_MAX).then(|| Address(address.to_vec()))
}

impl Shared {
    fn nodes(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets a node connection that ended (unless a newer one took its place).
    fn unregister_node(&self, address: &Address, id: u64) {
        let mut nodes = self.nodes();
        if nodes.outbound.get(address).is_some_and(|c| c.id == id) {
            nodes.outbound.remove(address);
        }
        nodes.accepted.remove(&id);
    }

    fn conns(&self) -> MutexGuard<'_, BTreeMap<SenderTag, Conn>> {
        // A panic while holding the lock cannot leave the map inconsistent (every
        // operation on it is a single insert, get or remove).
        self.conns.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, counter: impl Fn(&Counters) -> &AtomicU64) {
        counter(&self.counters).fetch_add(1, Ordering::Relaxed);
    }
}

fn short(tag: &SenderTag) -> String {
    tag.0[..4].iter().map(|b| format!("{b:02x}")).collect()
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
    mut rng: rand_chacha::ChaCha20Rng,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut last_limit_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = inbound.closed() => break,
            _ = stop.changed() => break,
        };
        // The peer's socket address is dropped here: nothing past this line can log it.
        let stream = match accepted {
            Ok((stream, _peer_address)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.count(|c| &c.refused_at_limit);
            let now = monotonic();
            if last_limit_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                last_limit_warning = Some(now);
                tracing::warn!(
                    max_connections = shared.config.max_connections,
                    refused_total = shared.counters.refused_at_limit.load(Ordering::Relaxed),
                    "connection limit reached: closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        shared.count(|c| &c.accepted);
        let (queue, queue_rx) = mpsc::channel(shared.config.write_queue_frames);
        let kill = Arc::new(Notify::new());
        let tag = {
            let mut conns = shared.conns();
            let tag = loop {
                let mut t = [0u8; 16];
                rng.fill_bytes(&mut t);
                let t = SenderTag(t);
                if !conns.contains_key(&t) {
                    break t;
                }
            };
            conns.insert(tag, Conn { queue: queue.clone(), kill: kill.clone() });
            tag
        };
        tracing::debug!(tag = %short(&tag), "connection opened");
        let conn = Served { queue, queue_rx, kill, permit: Some(permit), decoder: framing::Decoder::new() };
        tokio::spawn(serve_accepted(stream, tag, shared.clone(), inbound.clone(), conn, stop.clone()));
    }
    tracing::debug!("tcp transport stopped accepting");
}

/// Why a connection's reader stopped.
#[derive(Debug)]
enum End {
    PeerClosed,
    ReadError(io::ErrorKind),
    Idle,
    Framing(FramingError),
    NodeStopping,
    WriterEnded,
    SlowConsumer,
    /// A node connection's record did not authenticate (or was malformed).
    BadRecord(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => write!(f, "closed by the peer"),
            End::ReadError(kind) => write!(f, "read error: {kind}"),
            End::Idle => write!(f, "idle timeout"),
            End::Framing(e) => write!(f, "framing error: {e}"),
            End::NodeStopping => write!(f, "node stopping"),
            End::WriterEnded => write!(f, "write failed or timed out"),
            End::SlowConsumer => write!(f, "write queue full (the peer does not read)"),
            End::BadRecord(e) => write!(f, "bad sealed record: {e}"),
        }
    }
}

/// Who a connection's frames come from: a client (a tag), or an authenticated node.
enum Remote {
    Client(SenderTag),
    /// A node connection: its peer's address and its id in `Nodes`.
    Node(Address, u64),
}

impl Remote {
    fn describe(&self) -> String {
        match self {
            Remote::Client(tag) => format!("client {}", short(tag)),
            Remote::Node(a, _) => format!("node {}", String::from_utf8_lossy(&a.0)),
        }
    }
}

/// A connection's queues and reader state, handed to [`serve`].
struct Served {
    queue: mpsc::Sender<Vec<u8>>,
    queue_rx: mpsc::Receiver<Vec<u8>>,
    kill: Arc<Notify>,
    permit: Option<OwnedSemaphorePermit>,
    /// Bytes already read (past the first frame or the handshake).
    decoder: framing::Decoder,
}

/// An accepted connection: a client, unless its first frame is a preface; then a node
/// connection, which must complete the Noise handshake and whose claimed address must be
/// pinned to the key it authenticated with before any of its frames reach the core.
async fn serve_accepted(
    mut stream: TcpStream,
    tag: SenderTag,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
    mut conn: Served,
    stop: watch::Receiver<bool>,
) {
    let idle = (shared.config.idle_timeout_secs > 0).then(|| Duration::from_secs(shared.config.idle_timeout_secs));
    let first = tokio::select! {
        r = first_frame(&mut stream, &mut conn.decoder, idle) => r,
        _ = inbound.closed() => Err(End::NodeStopping),
    };
    let first = match first {
        Ok(first) => first,
        Err(end) => {
            unregister(&shared, tag);
            tracing::debug!(tag = %short(&tag), reason = %end, "connection closed");
            return;
        }
    };
    let Some(address) = first.as_deref().and_then(parse_preface) else {
        serve(stream, Remote::Client(tag), shared, inbound, conn, first, None).await;
        return;
    };
    // A node. The core never saw this tag (no frame reached it), so nothing is owed to it.
    unregister(&shared, tag);
    let name = String::from_utf8_lossy(&address.0).into_owned();
    let body = first.expect("a preface");
    let session =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, noise::respond(&mut stream, &mut conn.decoder, &shared.noise, &body))
            .await
            .unwrap_or_else(|_| Err("handshake timed out".into()));
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            shared.count(|c| &c.handshakes_failed);
            tracing::debug!(claimed = %name, error = %e, "node connection refused: handshake failed");
            return;
        }
    };
    if let Err(e) = verify_claim(&shared, &address, session.peer, &inbound, &stop).await {
        shared.count(|c| &c.handshakes_failed);
        tracing::warn!(claimed = %name, node = %session.peer, error = %e, "node connection refused: address not its own");
        return;
    }
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (queue, queue_rx) = mpsc::channel(shared.config.write_queue_frames);
    let kill = Arc::new(Notify::new());
    shared.nodes().accepted.insert(id, NodeConn { id, queue: queue.clone(), kill: kill.clone(), claim_only: false });
    tracing::debug!(node = %name, id = %session.peer, "node connection (accepted, authenticated)");
    let conn = Served { queue, queue_rx, kill, permit: conn.permit, decoder: conn.decoder };
    serve(stream, Remote::Node(address, id), shared, inbound, conn, None, Some(session)).await;
}

/// Reads until the first whole frame (`Ok(None)`: a framing error, left in `decoder` for
/// the client reader to report).
async fn first_frame(
    stream: &mut TcpStream,
    decoder: &mut framing::Decoder,
    idle: Option<Duration>,
) -> Result<Option<Vec<u8>>, End> {
    let mut buf = [0u8; 4096];
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
        let read = async {
            match idle {
                Some(d) => tokio::time::timeout(d, stream.read(&mut buf)).await.ok(),
                None => Some(stream.read(&mut buf).await),
            }
        };
        match read.await {
            None => return Err(End::Idle),
            Some(Ok(0)) => return Err(End::PeerClosed),
            Some(Ok(n)) => decoder.push(&buf[..n]),
            Some(Err(e)) => return Err(End::ReadError(e.kind())),
        }
    }
}

/// Waits until `address` is pinned to `peer`, dialing it if needed. An address pinned to
/// another node, or that cannot be reached in time, is refused.
async fn verify_claim(
    shared: &Arc<Shared>,
    address: &Address,
    peer: NodeId,
    inbound: &mpsc::Sender<Inbound>,
    stop: &watch::Receiver<bool>,
) -> Result<(), String> {
    let deadline = monotonic() + VERIFY_TIMEOUT;
    loop {
        let done = shared.dials_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        {
            let mut nodes = shared.nodes();
            match nodes.pins.get(address) {
                Some(pin) if pin.node == peer => return Ok(()),
                Some(pin) => return Err(format!("the address answers as node {}", pin.node)),
                None => {}
            }
            if !nodes.dialing.contains_key(address) {
                if nodes.backoff.get(address).is_some_and(|b| monotonic() < b.next) {
                    return Err("the address is unreachable (back-off)".into());
                }
                if nodes.dialing.values().filter(|d| d.claim).count() >= CLAIM_DIALS_IN_FLIGHT_MAX {
                    return Err("too many addresses being checked".into());
                }
                nodes.dialing.insert(address.clone(), Dialing { waiting: Vec::new(), claim: true });
                tokio::spawn(dial(shared.clone(), address.clone(), inbound.clone(), stop.clone()));
            }
        }
        let now = monotonic();
        if now >= deadline {
            return Err("the address could not be checked in time".into());
        }
        tokio::select! {
            _ = done => {}
            _ = tokio::time::sleep(deadline - now) => {}
            _ = inbound.closed() => return Err("node stopping".into()),
        }
    }
}

async fn serve(
    stream: TcpStream,
    remote: Remote,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
    conn: Served,
    first: Option<Vec<u8>>,
    session: Option<Session>,
) {
    let Served { queue: replies, queue_rx, kill, permit: _permit, decoder } = conn;
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let write_timeout = Duration::from_secs(shared.config.write_timeout_secs);
    let (sealer, opener) = match session {
        Some(s) => (Some(s.sealer), Some(s.opener)),
        None => (None, None),
    };
    let mut writer = tokio::spawn(write_loop(wr, queue_rx, write_timeout, sealer));
    let reader = Reader { decoder, first, opener };
    let end = tokio::select! {
        end = read_loop(&mut rd, &remote, &inbound, replies, &shared, reader) => end,
        _ = &mut writer => End::WriterEnded,
        _ = kill.notified() => End::SlowConsumer,
    };
    let forget = |remote: &Remote| match remote {
        Remote::Client(tag) => unregister(&shared, *tag),
        Remote::Node(address, id) => shared.unregister_node(address, *id),
    };
    match end {
        // Stay registered: the node's last replies (released by its final flush) still go
        // out; the dispatcher drops the queue once the node has sent everything.
        End::NodeStopping => {
            let _ = writer.await;
        }
        End::WriterEnded | End::SlowConsumer => {
            forget(&remote);
            writer.abort();
        }
        _ => {
            forget(&remote);
            // Write what is queued (e.g. the framing error), then close.
            if let Ok(Ok(())) = writer.await
                && matches!(end, End::Framing(_))
            {
                // Read and discard what the peer still sends for a moment, so that
                // closing with unread input does not reset the connection before the
                // peer has read our error frame.
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut total = 0usize;
                    while let Ok(n) = rd.read(&mut sink).await {
                        total += n;
                        if n == 0 || total > 1 << 20 {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }
    match &end {
        End::Idle => shared.count(|c| &c.idle_closed),
        End::SlowConsumer => shared.count(|c| &c.slow_consumers),
        End::Framing(_) => shared.count(|c| &c.framing_errors),
        _ => {}
    }
    tracing::debug!(peer = %remote.describe(), reason = %end, "connection closed");
    // `inbound` is dropped only now: the node learns that every connection finished
    // when its inbound channel has no sender left.
    drop(inbound);
}

fn unregister(shared: &Shared, tag: SenderTag) {
    shared.conns().remove(&tag);
}

/// What a reader starts with: bytes already read, the first frame if it was read already,
/// and for a node connection the session's receiving half.
struct Reader {
    decoder: framing::Decoder,
    first: Option<Vec<u8>>,
    opener: Option<noise::Opener>,
}

async fn read_loop(
    rd: &mut OwnedReadHalf,
    remote: &Remote,
    inbound: &mpsc::Sender<Inbound>,
    replies: mpsc::Sender<Vec<u8>>,
    shared: &Shared,
    reader: Reader,
) -> End {
    let config = &shared.config;
    let idle = (config.idle_timeout_secs > 0).then(|| Duration::from_secs(config.idle_timeout_secs));
    let mut bucket = match remote {
        Remote::Client(_) => TokenBucket::new(config.rate_limit_frames_per_sec, config.rate_limit_burst_frames),
        Remote::Node(..) => TokenBucket::new(
            config.rate_limit_frames_per_sec.saturating_mul(NODE_RATE_FACTOR),
            config.rate_limit_burst_frames.saturating_mul(NODE_RATE_FACTOR),
        ),
    };
    let Reader { mut decoder, first, mut opener } = reader;
    let mut pending = first;
    let mut buf = vec![0u8; 16 * 1024];
    let mut started = false;
    loop {
        if std::mem::replace(&mut started, true) {
            let read = async {
                match idle {
                    Some(d) => tokio::time::timeout(d, rd.read(&mut buf)).await.ok(),
                    None => Some(rd.read(&mut buf).await),
                }
            };
            let n = tokio::select! {
                r = read => match r {
                    None => return End::Idle,
                    Some(Ok(0)) => return End::PeerClosed,
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return End::ReadError(e.kind()),
                },
                _ = inbound.closed() => return End::NodeStopping,
            };
            decoder.push(&buf[..n]);
        }
        loop {
            let next = match pending.take() {
                Some(frame) => Ok(Some(frame)),
                None => decoder.next_frame(),
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        FramingError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                        FramingError::Empty => ErrorCode::Malformed,
                    };
                    let _ = replies.try_send(error_frame(0, code, &e.to_string()));
                    return End::Framing(e);
                }
            };
            // A node connection carries sealed records: a frame is whole once its last
            // record is opened.
            let frame = match opener.as_mut().map(|o| o.open(&frame)) {
                None => frame,
                Some(Ok(Some(frame))) => frame,
                Some(Ok(None)) => continue,
                Some(Err(e)) => return End::BadRecord(e),
            };
            if !bucket.take(monotonic()) {
                shared.count(|c| &c.rate_limited);
                let detail =
                    format!("rate limit of {} frames/s exceeded; frame dropped", config.rate_limit_frames_per_sec);
                // Best effort: a peer that floods and does not read loses these too.
                let _ = replies.try_send(error_frame(codec::peek_request_id(&frame), ErrorCode::Busy, &detail));
                continue;
            }
            let from = match remote {
                Remote::Client(tag) => Peer::Tag(*tag),
                Remote::Node(address, _) => Peer::Address(address.clone()),
            };
            // Back-pressure: a node that cannot keep up slows every reader down here.
            let sent = tokio::select! {
                r = inbound.send(Inbound { from, bytes: frame }) => r.is_ok(),
                _ = inbound.closed() => false,
            };
            if !sent {
                return End::NodeStopping;
            }
        }
    }
}

/// Writes queued length-prefixed frames; on a node connection each is sealed first.
async fn write_loop(
    wr: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
    mut sealer: Option<noise::Sealer>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, wr);
    let mut seal = |framed: Vec<u8>| -> io::Result<Vec<u8>> {
        match sealer.as_mut() {
            None => Ok(framed),
            Some(s) => s.seal(&framed[framing::PREFIX_BYTES..]).map_err(io::Error::other),
        }
    };
    while let Some(first) = queue.recv().await {
        let first = seal(first)?;
        let mut more = Vec::new();
        // Coalesce whatever else is already queued into the same flush.
        for _ in 0..64 {
            match queue.try_recv() {
                Ok(frame) => more.push(seal(frame)?),
                Err(_) => break,
            }
        }
        let batch = async {
            w.write_all(&first).await?;
            for m in &more {
                w.write_all(m).await?;
            }
            w.flush().await
        };
        tokio::time::timeout(timeout, batch).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    }
    // Every sender is gone: nothing more will be written. Half-close politely.
    let _ = tokio::time::timeout(timeout, w.shutdown()).await;
    Ok(())
}

async fn dispatch(
    mut outbound: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    inbound: mpsc::Sender<Inbound>,
    stop_rx: watch::Receiver<bool>,
) {
    let mut last_slow_warning: Option<Instant> = None;
    while let Some(Outbound { to, bytes }) = outbound.recv().await {
        let framed = match framing::encode(&bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "outbound frame dropped: cannot be framed");
                continue;
            }
        };
        let tag = match to {
            Peer::Tag(tag) => tag,
            Peer::Address(address) => {
                send_to_node(&shared, address, framed, &inbound, &stop_rx);
                continue;
            }
        };
        let mut conns = shared.conns();
        // A tag with no connection (closed, or never ours) is dropped silently, as a
        // mixnet drops a reply whose SURBs are gone.
        let Some(conn) = conns.get(&tag) else { continue };
        match conn.queue.try_send(framed) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(conn) = conns.remove(&tag) {
                    conn.kill.notify_one();
                }
                drop(conns);
                shared.count(|c| &c.slow_consumers);
                let now = monotonic();
                if last_slow_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    last_slow_warning = Some(now);
                    tracing::warn!(
                        tag = %short(&tag),
                        write_queue_frames = shared.config.write_queue_frames,
                        "closing a connection that does not read its replies"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                conns.remove(&tag);
            }
        }
    }
    // The node dropped every outbound sender: it has stopped. Stop accepting, and let
    // each connection write what it has queued and close.
    let _ = stop.send(true);
    shared.conns().clear();
    {
        let mut nodes = shared.nodes();
        nodes.outbound.clear();
        nodes.accepted.clear();
        nodes.dialing.clear();
    }
    drop(inbound);
    let c = &shared.counters;
    tracing::info!(
        accepted = c.accepted.load(Ordering::Relaxed),
        refused_at_limit = c.refused_at_limit.load(Ordering::Relaxed),
        rate_limited_frames = c.rate_limited.load(Ordering::Relaxed),
        framing_errors = c.framing_errors.load(Ordering::Relaxed),
        slow_consumers = c.slow_consumers.load(Ordering::Relaxed),
        idle_closed = c.idle_closed.load(Ordering::Relaxed),
        node_handshakes_failed = c.handshakes_failed.load(Ordering::Relaxed),
        "tcp transport stopped"
    );
}

/// A frame for another node: on the connection we dialed to its address, else after a
/// dial (unless the address is in back-off: then the frame is dropped). Never on a
/// connection another node dialed: only the key that answers at an address hears it.
fn send_to_node(
    shared: &Arc<Shared>,
    address: Address,
    framed: Vec<u8>,
    inbound: &mpsc::Sender<Inbound>,
    stop: &watch::Receiver<bool>,
) {
    let mut nodes = shared.nodes();
    if let Some(pin) = nodes.pins.get_mut(&address) {
        pin.by_core = true;
    }
    let Some(conn) = nodes.outbound.get_mut(&address) else {
        return send_after_close(shared, nodes, address, framed, inbound, stop);
    };
    conn.claim_only = false;
    match conn.queue.try_send(framed) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            // A peer that does not read: close it; the core retries later.
            if let Some(conn) = nodes.outbound.remove(&address) {
                conn.kill.notify_one();
            }
            shared.count(|c| &c.slow_consumers);
        }
        Err(mpsc::error::TrySendError::Closed(back)) => {
            nodes.outbound.remove(&address);
            send_after_close(shared, nodes, address, back, inbound, stop);
        }
    }
}

/// No live connection to `address`: wait for a dial in progress, or start one.
fn send_after_close(
    shared: &Arc<Shared>,
    mut nodes: MutexGuard<'_, Nodes>,
    address: Address,
    framed: Vec<u8>,
    inbound: &mpsc::Sender<Inbound>,
    stop: &watch::Receiver<bool>,
) {
    if let Some(d) = nodes.dialing.get_mut(&address) {
        if d.waiting.len() < DIAL_WAITING_MAX {
            d.waiting.push(framed);
        }
        return;
    }
    if nodes.backoff.get(&address).is_some_and(|b| monotonic() < b.next) {
        tracing::trace!(node = %String::from_utf8_lossy(&address.0), "frame dropped: peer unreachable (back-off)");
        return;
    }
    nodes.dialing.insert(address.clone(), Dialing { waiting: vec![framed], claim: false });
    drop(nodes);
    tokio::spawn(dial(shared.clone(), address, inbound.clone(), stop.clone()));
}

/// Dials `address` (`host:port` text), runs the handshake (preface, Noise XX), pins the
/// address to the node that answered, sends the waiting frames, then serves the connection
/// (its frames come from `Peer::Address(address)`).
async fn dial(shared: Arc<Shared>, address: Address, inbound: mpsc::Sender<Inbound>, stop: watch::Receiver<bool>) {
    let name = String::from_utf8_lossy(&address.0).into_owned();
    let mut decoder = framing::Decoder::new();
    let connected = match std::str::from_utf8(&address.0) {
        Ok(target) => match tokio::time::timeout(DIAL_TIMEOUT, async {
            let mut stream = TcpStream::connect(target).await.map_err(|e| e.to_string())?;
            let session = noise::initiate(&mut stream, &mut decoder, &shared.noise, &shared.preface).await?;
            Ok::<_, String>((stream, session))
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        },
        Err(_) => Err("the address is not host:port text".to_string()),
    };
    let registered = register_dialed(&shared, &address, connected, &inbound, &stop);
    shared.dials_done.notify_waiters();
    let Some((stream, session, conn, id)) = registered else { return };
    tracing::debug!(node = %name, id = %session.peer, "node connection (dialed, authenticated)");
    let conn = Served { decoder, ..conn };
    serve(stream, Remote::Node(address, id), shared, inbound, conn, None, Some(session)).await;
}

type Dialed = (TcpStream, Session, Served, u64);

/// After a dial: on success (and if the address is not pinned to another node) pins the
/// address and registers the connection with the frames that waited for it queued; on
/// failure puts the address in back-off and drops those frames.
fn register_dialed(
    shared: &Shared,
    address: &Address,
    connected: Result<(TcpStream, Session), String>,
    inbound: &mpsc::Sender<Inbound>,
    stop: &watch::Receiver<bool>,
) -> Option<Dialed> {
    let mut nodes = shared.nodes();
    let (waiting, claim) = nodes.dialing.remove(address).map_or((Vec::new(), false), |d| (d.waiting, d.claim));
    let claim_only = claim && waiting.is_empty();
    let connected = connected.and_then(|(stream, session)| match nodes.pins.get(address).map(|p| p.node) {
        Some(pinned) if pinned != session.peer => {
            shared.count(|c| &c.handshakes_failed);
            Err(format!("answered as node {}, but the address is pinned to node {pinned}", session.peer))
        }
        Some(_) => Ok((stream, session)),
        None if nodes.room_for_pin() => Ok((stream, session)),
        None => Err("every address pin is in use".to_string()),
    });
    let (stream, session) = match connected {
        Ok(c) if !*stop.borrow() && !inbound.is_closed() => c,
        Ok(_) => return None,
        Err(e) => {
            let delay = nodes.back_off(address, monotonic());
            tracing::debug!(
                node = %String::from_utf8_lossy(&address.0),
                error = %e,
                retry_after = ?delay,
                dropped = waiting.len(),
                "cannot reach node"
            );
            return None;
        }
    };
    nodes.backoff.remove(address);
    let by_core = !claim_only || nodes.pins.get(address).is_some_and(|p| p.by_core);
    nodes.pins.insert(address.clone(), Pin { node: session.peer, by_core });
    if claim_only {
        nodes.room_for_claim_dial();
    }
    let capacity = shared.config.write_queue_frames.max(DIAL_WAITING_MAX + 1);
    let (queue, queue_rx) = mpsc::channel(capacity);
    for frame in waiting {
        let _ = queue.try_send(frame);
    }
    let kill = Arc::new(Notify::new());
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    nodes.outbound.insert(address.clone(), NodeConn { id, queue: queue.clone(), kill: kill.clone(), claim_only });
    let conn = Served { queue, queue_rx, kill, permit: None, decoder: framing::Decoder::new() };
    Some((stream, session, conn, id))
}

/// A length-prefixed `Error` frame with `request_id`.
fn error_frame(request_id: u64, code: ErrorCode, detail: &str) -> Vec<u8> {
    let mut detail = detail.to_string();
    let max = nymstr_proto::limits::ERROR_DETAIL_BYTES_MAX;
    if detail.len() > max {
        let mut cut = max;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    let envelope = Envelope { request_id, body: Body::Error { code, detail } };
    let frame = codec::encode_frame(&envelope).expect("an error frame with a bounded detail fits in a frame");
    framing::encode(&frame).expect("an encoded frame is never empty and fits")
}

/// Token bucket: `rate` tokens per second up to `burst`; rate 0 never refuses.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self { rate: f64::from(rate), burst: f64::from(burst), tokens: f64::from(burst), last: None }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 3);
        let t0 = monotonic();
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "burst exhausted");
        assert!(!b.take(t0 + Duration::from_millis(50)), "half a token");
        assert!(b.take(t0 + Duration::from_millis(100)), "one token after 1/rate");
        assert!(b.take(t0 + Duration::from_secs(100)) && b.take(t0 + Duration::from_secs(100)));
        assert!(b.take(t0 + Duration::from_secs(100)));
        assert!(!b.take(t0 + Duration::from_secs(100)), "refill is capped at the burst");
        let mut unlimited = TokenBucket::new(0, 0);
        assert!((0..10_000).all(|_| unlimited.take(t0)));
    }

    #[test]
    fn error_frames_decode_with_their_code_and_request_id() {
        let framed = error_frame(42, ErrorCode::Busy, &"x".repeat(1000));
        let mut d = framing::Decoder::new();
        d.push(&framed);
        let frame = d.next_frame().unwrap().unwrap();
        let env = codec::decode_frame(&frame).unwrap();
        assert_eq!(env.request_id, 42);
        match env.body {
            Body::Error { code, detail } => {
                assert_eq!(code, ErrorCode::Busy);
                assert_eq!(detail.len(), nymstr_proto::limits::ERROR_DETAIL_BYTES_MAX);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_preface_names_the_address_and_is_never_a_wire_frame() {
        let framed = preface_frame(b"127.0.0.1:7001");
        assert_eq!(&framed[..4], &((PREFACE_MAGIC.len() + 14) as u32).to_be_bytes());
        let mut d = framing::Decoder::new();
        d.push(&framed);
        let frame = d.next_frame().unwrap().unwrap();
        assert_eq!(parse_preface(&frame), Some(Address(b"127.0.0.1:7001".to_vec())));
        assert_ne!(frame[0], nymstr_proto::wire::WIRE_VERSION);
        assert_eq!(parse_preface(PREFACE_MAGIC), None, "an empty address");
        let long = [PREFACE_MAGIC.as_slice(), &[b'a'; PREFACE_ADDRESS_MAX + 1]].concat();
        assert_eq!(parse_preface(&long), None);
        let wire = codec::encode_frame(&Envelope { request_id: 1, body: Body::DirectoryRequest }).unwrap();
        assert_eq!(parse_preface(&wire), None);
    }

    #[test]
    fn pins_and_back_off_stay_bounded_and_keep_what_the_core_uses() {
        let addr = |i: usize| Address(format!("10.0.{}.{}:1", i / 250, i % 250).into_bytes());
        let mut nodes = Nodes::default();
        nodes.pins.insert(addr(0), Pin { node: NodeId([1; 32]), by_core: true });
        for i in 1..PINS_MAX + 100 {
            if nodes.room_for_pin() {
                nodes.pins.insert(addr(i), Pin { node: NodeId([2; 32]), by_core: false });
            }
        }
        assert_eq!(nodes.pins.len(), PINS_MAX);
        assert!(nodes.pins.contains_key(&addr(0)), "a pin the core used is never evicted");
        let now = monotonic();
        for i in 0..BACKOFF_ENTRIES_MAX + 100 {
            nodes.back_off(&addr(i), now);
        }
        assert_eq!(nodes.backoff.len(), BACKOFF_ENTRIES_MAX);
        assert!(nodes.backoff.contains_key(&addr(BACKOFF_ENTRIES_MAX + 99)), "the newest is kept");
    }

    #[test]
    fn config_checks_name_the_key() {
        assert!(TcpConfig::default().check().is_ok());
        let bad = TcpConfig { max_connections: 0, ..TcpConfig::default() };
        assert_eq!(bad.check().unwrap_err().0, "max_connections");
        let bad = TcpConfig { rate_limit_burst_frames: 0, ..TcpConfig::default() };
        assert_eq!(bad.check().unwrap_err().0, "rate_limit_burst_frames");
        let ok = TcpConfig { rate_limit_frames_per_sec: 0, rate_limit_burst_frames: 0, ..TcpConfig::default() };
        assert!(ok.check().is_ok());
    }
}
