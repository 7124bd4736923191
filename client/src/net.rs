//! TCP for the CLI client: the connection to the home node, one-frame direct exchanges
//! with a contact, and the listener that receives direct frames. Frames are
//! `nymstr_proto::framing` (u32 big-endian length prefix); decoding them is the core's job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nymstr_proto::codec::{self, CodecError};
use nymstr_proto::framing::{self, Decoder, FramingError};
use nymstr_proto::wire::Envelope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame may take to write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Direct connections accepted at once; more are closed at once.
pub const DIRECT_CONNECTIONS_MAX: usize = 64;
/// A direct connection silent this long is closed.
pub const DIRECT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames read from one connection and not yet taken by the client.
const INBOUND_FRAMES_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} unreachable: no answer to the connection attempt in {secs} s")]
    ConnectTimeout { addr: String, secs: u64 },
    #[error("{addr} closed the connection")]
    Closed { addr: String },
    #[error("{addr}: {reason}")]
    Io { addr: String, reason: String },
    #[error("{addr} sent an invalid frame: {source}")]
    Framing { addr: String, source: FramingError },
    #[error("{addr}: no answer in {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("frame does not encode: {0}")]
    Encode(CodecError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        TimedOut => "timed out".into(),
        AddrNotAvailable => "address not available".into(),
        AddrInUse => "address already in use".into(),
        PermissionDenied => "permission denied".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        _ => {
            let s = e.to_string();
            // Drop the "(os error N)" suffix the OS adds.
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

fn frame_bytes(envelope: &Envelope) -> Result<Vec<u8>, NetError> {
    let frame = codec::encode_frame(envelope).map_err(NetError::Encode)?;
    framing::encode(&frame).map_err(|e| NetError::Encode(CodecError::Malformed(e.to_string())))
}

async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, NetError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(NetError::ConnectTimeout { addr: addr.to_string(), secs: timeout.as_secs() }),
        Ok(Err(e)) => Err(NetError::Unreachable { addr: addr.to_string(), reason: describe(&e) }),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

async fn write_frame(w: &mut OwnedWriteHalf, addr: &str, bytes: &[u8]) -> Result<(), NetError> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes)).await {
        Err(_) => Err(NetError::Timeout { addr: addr.to_string(), secs: WRITE_TIMEOUT.as_secs() }),
        Ok(Err(e)) => Err(NetError::Io { addr: addr.to_string(), reason: describe(&e) }),
        Ok(Ok(())) => Ok(()),
    }
}

/// Reads frames until the stream ends or breaks; the last item is the reason it ended.
async fn read_frames(
    mut r: OwnedReadHalf,
    addr: String,
    idle: Option<Duration>,
    tx: mpsc::Sender<Result<Vec<u8>, NetError>>,
) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = match idle {
            Some(idle) => match tokio::time::timeout(idle, r.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = tx.send(Err(NetError::Timeout { addr, secs: idle.as_secs() })).await;
                    return;
                }
            },
            None => r.read(&mut buf).await,
        };
        let n = match read {
            Ok(0) => {
                let _ = tx.send(Err(NetError::Closed { addr })).await;
                return;
            }
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(NetError::Io { addr, reason: describe(&e) })).await;
                return;
            }
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    let _ = tx.send(Err(NetError::Framing { addr, source })).await;
                    return;
                }
            }
        }
    }
}

/// A connection to the home node.
pub struct Connection {
    addr: String,
    writer: OwnedWriteHalf,
    frames: mpsc::Receiver<Result<Vec<u8>, NetError>>,
    reader: JoinHandle<()>,
}

impl Connection {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, NetError> {
        let stream = connect(addr, timeout).await?;
        let (r, writer) = stream.into_split();
        let (tx, frames) = mpsc::channel(INBOUND_FRAMES_MAX);
        let reader = tokio::spawn(read_frames(r, addr.to_string(), None, tx));
        Ok(Self { addr: addr.to_string(), writer, frames, reader })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn send(&mut self, envelope: &Envelope) -> Result<(), NetError> {
        let bytes = frame_bytes(envelope)?;
        write_frame(&mut self.writer, &self.addr, &bytes).await
    }

    /// The next frame from the node (cancel-safe).
    pub async fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        match self.frames.recv().await {
            Some(r) => r,
            None => Err(NetError::Closed { addr: self.addr.clone() }),
        }
    }

    /// Sends what is written and closes: the node reads every frame before the end.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.writer.shutdown()).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One direct exchange: connect to a contact's address, send one frame, read the answer.
pub async fn exchange(addr: &str, envelope: &Envelope, timeout: Duration) -> Result<Vec<u8>, NetError> {
    let bytes = frame_bytes(envelope)?;
    let work = async {
        let stream = connect(addr, timeout).await?;
        let (mut r, mut w) = stream.into_split();
        write_frame(&mut w, addr, &bytes).await?;
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 4096];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let _ = w.shutdown().await;
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(source) => return Err(NetError::Framing { addr: addr.to_string(), source }),
            }
            match r.read(&mut buf).await {
                Ok(0) => return Err(NetError::Closed { addr: addr.to_string() }),
                Ok(n) => decoder.push(&buf[..n]),
                Err(e) => return Err(NetError::Io { addr: addr.to_string(), reason: describe(&e) }),
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout { addr: addr.to_string(), secs: timeout.as_secs() }),
    }
}

enum ListenerEvent {
    Opened { conn: u64, writer: mpsc::Sender<Vec<u8>> },
    Frame { conn: u64, bytes: Vec<u8> },
    Closed { conn: u64 },
}

/// Our direct listener: contacts connect and hand over frames; answers go back on the
/// same connection.
pub struct DirectListener {
    local_addr: SocketAddr,
    events: mpsc::Receiver<ListenerEvent>,
    writers: std::collections::BTreeMap<u64, mpsc::Sender<Vec<u8>>>,
    acceptor: JoinHandle<()>,
}

impl DirectListener {
    pub async fn bind(addr: &str) -> Result<Self, NetError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| NetError::Bind { addr: addr.to_string(), reason: describe(&e) })?;
        let local_addr =
            listener.local_addr().map_err(|e| NetError::Bind { addr: addr.to_string(), reason: describe(&e) })?;
        let (tx, events) = mpsc::channel(INBOUND_FRAMES_MAX);
        let acceptor = tokio::spawn(accept_loop(listener, tx));
        Ok(Self { local_addr, events, writers: Default::default(), acceptor })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next frame from any direct connection, with its connection id (cancel-safe).
    pub async fn next(&mut self) -> Option<(u64, Vec<u8>)> {
        loop {
            match self.events.recv().await? {
                ListenerEvent::Opened { conn, writer } => {
                    self.writers.insert(conn, writer);
                }
                ListenerEvent::Closed { conn } => {
                    self.writers.remove(&conn);
                }
                ListenerEvent::Frame { conn, bytes } => return Some((conn, bytes)),
            }
        }
    }

    /// Answers on connection `conn` (dropped if it has closed).
    pub fn reply(&mut self, conn: u64, envelope: &Envelope) {
        if let (Some(w), Ok(bytes)) = (self.writers.get(&conn), frame_bytes(envelope)) {
            let _ = w.try_send(bytes);
        }
    }
}

impl Drop for DirectListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(listener: TcpListener, events: mpsc::Sender<ListenerEvent>) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut next_conn = 1u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if open.load(Ordering::Relaxed) >= DIRECT_CONNECTIONS_MAX {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = next_conn;
        next_conn += 1;
        open.fetch_add(1, Ordering::Relaxed);
        let (r, mut w) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(16);
        if events.send(ListenerEvent::Opened { conn, writer: wtx }).await.is_err() {
            return;
        }
        let events = events.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let addr = peer.to_string();
            let (ftx, mut frx) = mpsc::channel(16);
            let reader = tokio::spawn(read_frames(r, addr.clone(), Some(DIRECT_IDLE_TIMEOUT), ftx));
            loop {
                tokio::select! {
                    frame = frx.recv() => match frame {
                        Some(Ok(bytes)) => {
                            if events.send(ListenerEvent::Frame { conn, bytes }).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    },
                    out = wrx.recv() => match out {
                        Some(bytes) => {
                            if write_frame(&mut w, &addr, &bytes).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            reader.abort();
            let _ = w.shutdown().await;
            open.fetch_sub(1, Ordering::Relaxed);
            let _ = events.send(ListenerEvent::Closed { conn }).await;
        });
    }
}

/// What happens on the connections to group nodes.
#[derive(Debug)]
pub enum LinkEvent {
    /// The connection to `addr` is up (generation `generation`).
    Connected {
        addr: String,
        generation: u64,
    },
    Frame {
        addr: String,
        generation: u64,
        bytes: Vec<u8>,
    },
    /// The connection could not be made or broke; queued frames to it are dropped.
    Lost {
        addr: String,
        generation: u64,
        error: NetError,
    },
}

struct Link {
    generation: u64,
    out: mpsc::UnboundedSender<Envelope>,
    task: JoinHandle<()>,
}

/// One TCP connection per group node address (each gets its own sender tag from the
/// node), separate from the home-node connection. Frames to a node with no connection
/// open one; a lost connection is reported once and replaced by the next frame to it.
pub struct GroupLinks {
    links: std::collections::BTreeMap<String, Link>,
    next_generation: u64,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events_rx: mpsc::UnboundedReceiver<LinkEvent>,
}

impl Default for GroupLinks {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupLinks {
    pub fn new() -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self { links: Default::default(), next_generation: 1, events_tx, events_rx }
    }

    /// Connects to `addr` now (if not connected), so an unreachable node is an error
    /// before anything is attempted.
    pub async fn connect(&mut self, addr: &str) -> Result<(), NetError> {
        if self.links.contains_key(addr) {
            return Ok(());
        }
        let conn = Connection::connect(addr, CONNECT_TIMEOUT).await?;
        self.spawn(addr, Some(conn));
        Ok(())
    }

    /// Opens a connection to `addr` in the background, unless one is open.
    pub fn ensure(&mut self, addr: &str) {
        if !self.links.contains_key(addr) {
            self.spawn(addr, None);
        }
    }

    pub fn is_open(&self, addr: &str) -> bool {
        self.links.contains_key(addr)
    }

    fn spawn(&mut self, addr: &str, conn: Option<Connection>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let (out, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve_link(addr.to_string(), generation, conn, rx, self.events_tx.clone()));
        self.links.insert(addr.to_string(), Link { generation, out, task });
    }

    /// Queues a frame for `addr` (connecting if needed).
    pub fn send(&mut self, addr: &str, envelope: Envelope) {
        self.ensure(addr);
        if let Some(link) = self.links.get(addr) {
            let _ = link.out.send(envelope);
        }
    }

    /// The next event of a current connection (cancel-safe). A `Lost` connection is
    /// forgotten: the next frame to its node opens a new one.
    pub async fn next(&mut self) -> LinkEvent {
        loop {
            let Some(ev) = self.events_rx.recv().await else { return std::future::pending().await };
            let (addr, generation) = match &ev {
                LinkEvent::Connected { addr, generation }
                | LinkEvent::Frame { addr, generation, .. }
                | LinkEvent::Lost { addr, generation, .. } => (addr, *generation),
            };
            if self.links.get(addr).is_none_or(|l| l.generation != generation) {
                continue;
            }
            if matches!(ev, LinkEvent::Lost { .. }) {
                self.links.remove(addr);
            }
            return ev;
        }
    }

    /// Writes what is queued and closes every connection (waiting at most `WRITE_TIMEOUT`).
    pub async fn close(&mut self) {
        let links = std::mem::take(&mut self.links);
        let mut tasks = Vec::new();
        for (_, link) in links {
            drop(link.out);
            tasks.push(link.task);
        }
        let all = async {
            for t in tasks.iter_mut() {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(WRITE_TIMEOUT, all).await.is_err() {
            for t in &tasks {
                t.abort();
            }
        }
    }
}

impl Drop for GroupLinks {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

async fn serve_link(
    addr: String,
    generation: u64,
    conn: Option<Connection>,
    mut out: mpsc::UnboundedReceiver<Envelope>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut conn = match conn {
        Some(c) => c,
        None => match Connection::connect(&addr, CONNECT_TIMEOUT).await {
            Ok(c) => c,
            Err(error) => {
                let _ = events.send(LinkEvent::Lost { addr, generation, error });
                return;
            }
        },
    };
    let _ = events.send(LinkEvent::Connected { addr: addr.clone(), generation });
    loop {
        tokio::select! {
            r = conn.recv() => match r {
                Ok(bytes) => {
                    let _ = events.send(LinkEvent::Frame { addr: addr.clone(), generation, bytes });
                }
                Err(error) => {
                    let _ = events.send(LinkEvent::Lost { addr, generation, error });
                    return;
                }
            },
            m = out.recv() => match m {
                Some(env) => {
                    if let Err(error) = conn.send(&env).await {
                        let _ = events.send(LinkEvent::Lost { addr, generation, error });
                        return;
                    }
                }
                None => {
                    conn.close().await;
                    return;
                }
            },
        }
    }
}
