//! The real node process: an actix host for the node core, over sled and a transport.
//!
//! ```text
//!  transport (tcp | nym) ──Inbound──► bounded channel ──► forwarder ──Frames──► NodeActor
//!        ▲                                                                     │ NodeCore<SledStore>
//!        └──────────────── Outbound (released after the flush covering it) ◄───┘
//! ```
//!
//! The registry and the relay stay one core in one actor: they share one store and each
//! step reads the other's tables (a `SendDm` checks the sender's binding and the
//! recipient's installations; a login re-delivers the queue). See `ARCHITECTURE.md`.
//!
//! [`run`] blocks the calling thread until the node stops (a signal, a [`StopHandle`], or a
//! fatal error). Shutdown: stop accepting and reading, flush the store, release the last
//! replies, let the transport write them (at most `shutdown_grace_secs`), exit.

mod actor;
pub mod logging;
pub mod os;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot, watch};

pub use actor::{Frames, Identity, NodeActor, Shutdown};

use crate::config::{self, Config, ConfigError, DataDir, NodeKey, TransportKind};
use crate::sled_store::{SledOpenError, SledStore};
use crate::transport::{INBOUND_QUEUE_MAX, Inbound, TransportHandle, tcp};
use nymstr_node_core::actors::federation::NodeIdentity;
use nymstr_node_core::actors::{Address, NodeCore, StartError};
use nymstr_node_core::store::StoreError;

/// Frames handed to the actor in one message at most.
const FRAMES_PER_BATCH: usize = 256;
/// How long `run` waits for the database lock (held briefly by `nymstr-node info`).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The node is serving.
#[derive(Clone, Debug)]
pub struct Ready {
    pub node_id: String,
    pub transport: &'static str,
    /// Where clients reach the node (`host:port` for tcp, the nym address for nym).
    pub address: String,
}

/// Stops a node started by [`run`] from another thread.
#[derive(Clone)]
pub struct StopHandle(watch::Sender<bool>);

/// The receiving side of a [`StopHandle`], given to [`run`].
pub struct StopSignal(watch::Receiver<bool>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

pub fn stop_pair() -> (StopHandle, StopSignal) {
    let (tx, rx) = watch::channel(false);
    (StopHandle(tx), StopSignal(rx))
}

/// Called once with the node's address when it starts serving.
pub type OnReady = Box<dyn FnOnce(&Ready) + Send>;

/// How [`run`] is controlled.
#[derive(Default)]
pub struct RunOptions {
    /// Stop on SIGINT and SIGTERM (the binary); off for in-process nodes (benches).
    pub handle_signals: bool,
    /// Stop when this fires.
    pub stop: Option<StopSignal>,
    /// Called once the node serves.
    pub on_ready: Option<OnReady>,
}

/// Why the node could not run. [`RunError::exit_code`] maps each to the process's exit
/// code: 2 for what the operator must fix in the configuration, 1 for runtime failures.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tcp(#[from] tcp::TcpError),
    #[cfg(feature = "nym")]
    #[error("nym transport: {0}")]
    Nym(#[from] crate::transport::nym::NymError),
    #[error("another process holds the database in {path} (is this node already running?)", path = .0.display())]
    Locked(PathBuf),
    #[error(transparent)]
    Open(SledOpenError),
    #[error("cannot recover the node's state from its database: {0}")]
    Start(#[from] StartError),
    #[error("the final store flush failed: {0}")]
    Flush(StoreError),
    #[error("cannot seed the node's random generator from the operating system: {0}")]
    Entropy(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the node stopped unexpectedly: {0}")]
    Crashed(String),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_) => 2,
            RunError::Tcp(tcp::TcpError::Entropy(_)) => 1,
            RunError::Tcp(_) => 2,
            #[cfg(feature = "nym")]
            RunError::Nym(crate::transport::nym::NymError::Config { .. }) => 2,
            #[cfg(feature = "nym")]
            RunError::Nym(_) => 1,
            RunError::Locked(_)
            | RunError::Open(_)
            | RunError::Start(_)
            | RunError::Flush(_)
            | RunError::Entropy(_)
            | RunError::Runtime(_)
            | RunError::Crashed(_) => 1,
        }
    }
}

/// Runs the node in `dir` with `config` until it is stopped. Blocks the calling thread:
/// it builds its own actix system (the node core on this thread, network I/O on
/// `runtime.io_threads` workers).
pub fn run(dir: &DataDir, config: &Config, options: RunOptions) -> Result<(), RunError> {
    let threads = config.runtime.io_threads;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("nymstr-io")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let system = System::with_tokio_rt(move || runtime);
    let result = system.block_on(serve(dir.clone(), config.clone(), options));
    System::current().stop();
    result
}

enum StopReason {
    Signal(&'static str),
    Requested,
    TransportClosed,
    ActorGone,
}

async fn serve(dir: DataDir, config: Config, options: RunOptions) -> Result<(), RunError> {
    let key = NodeKey::load(&dir.key())?;
    let node_id = key.node_id();
    let store = open_store(&dir, &config).await?;
    let rng = os::os_seeded_rng().map_err(|e| RunError::Entropy(e.to_string()))?;

    // Installed before the transport starts: from here on a signal means a clean stop.
    let mut signals = Signals::new(options.handle_signals)?;
    let (inbound_tx, mut inbound) = mpsc::channel::<Inbound>(INBOUND_QUEUE_MAX);
    let kind = config.transport.kind;
    // The transport starts first: a federated core needs the address it is reached at.
    // Frames that arrive meanwhile wait in the inbound channel.
    let transport = start_transport(&dir, &config, key.signing_key(), inbound_tx).await?;
    let TransportHandle { outbound, address } = transport;
    let started_at_us = os::now_us();
    let core = if config.federation.enabled {
        let advertised = config::advertised_address(&config, &address);
        let identity = NodeIdentity {
            key: key.signing_key().clone(),
            address: advertised.as_bytes().to_vec(),
            roles: config.federation.roles(),
            bootstrap: config.federation.bootstrap.iter().map(|b| Address(b.as_bytes().to_vec())).collect(),
        };
        let core = NodeCore::start_federated(started_at_us, store, rng, config.core.clone(), identity)?;
        if let Some(fed) = core.federation() {
            let path = dir.descriptor();
            if let Err(e) = config::DescriptorJson::from_descriptor(fed.descriptor()).write(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the descriptor file");
            }
            tracing::info!(
                node_id = %fed.id(),
                address = %advertised,
                bootstrap = config.federation.bootstrap.len(),
                "federation enabled"
            );
        }
        core
    } else {
        NodeCore::start(started_at_us, store, rng, config.core.clone())?
    };
    let ready = Ready { node_id: node_id.clone(), transport: kind.name(), address: address.clone() };

    let (alive, mut actor_gone) = oneshot::channel::<()>();
    let actor = NodeActor::new(
        core,
        outbound,
        alive,
        Identity {
            node_id,
            transport: kind.name().to_string(),
            address,
            started_at_us,
            status_path: dir.status(),
            status_every: Duration::from_secs(config.runtime.status_every_secs),
        },
    )
    .start();
    if let Some(on_ready) = options.on_ready {
        on_ready(&ready);
    }

    let mut stop = options.stop.map(|s| s.0);
    let mut batch = Vec::with_capacity(FRAMES_PER_BATCH);
    let reason = loop {
        tokio::select! {
            biased;
            name = signals.next() => break StopReason::Signal(name),
            _ = wait_stop(&mut stop) => break StopReason::Requested,
            _ = &mut actor_gone => break StopReason::ActorGone,
            n = inbound.recv_many(&mut batch, FRAMES_PER_BATCH) => {
                if n == 0 {
                    break StopReason::TransportClosed;
                }
                if actor.send(Frames(std::mem::take(&mut batch))).await.is_err() {
                    break StopReason::ActorGone;
                }
            }
        }
    };
    match &reason {
        StopReason::Signal(name) => tracing::info!(signal = name, "stopping: no new connections or frames"),
        StopReason::Requested => tracing::info!("stop requested: no new connections or frames"),
        StopReason::TransportClosed => tracing::error!("the transport stopped; stopping the node"),
        StopReason::ActorGone => tracing::error!("the node core stopped; stopping"),
    }

    // 1. Stop accepting and reading: the transport sees its inbound channel closed.
    inbound.close();
    // 2. Frames already received are still served, then the final flush releases every
    //    held reply and the actor drops its outbound sender.
    let mut flushed = Ok(());
    if !matches!(reason, StopReason::ActorGone) {
        while let Ok(frame) = inbound.try_recv() {
            batch.push(frame);
        }
        if !batch.is_empty() {
            let _ = actor.send(Frames(std::mem::take(&mut batch))).await;
        }
        flushed = match actor.send(Shutdown).await {
            Ok(result) => result.map_err(RunError::Flush),
            Err(e) => Err(RunError::Crashed(e.to_string())),
        };
    }
    // 3. The transport writes those replies and closes; it is done when the last inbound
    //    sender is gone. A second signal cuts the wait short.
    let grace = Duration::from_secs(config.runtime.shutdown_grace_secs);
    let finished = tokio::select! {
        r = tokio::time::timeout(grace, async { while inbound.recv().await.is_some() {} }) => r.is_ok(),
        name = signals.next() => {
            tracing::warn!(signal = name, "second signal: exiting without waiting for connections");
            false
        }
    };
    if !finished {
        tracing::warn!(grace = ?grace, "connections still open at exit");
    }
    flushed?;
    match reason {
        StopReason::Signal(_) | StopReason::Requested => {
            tracing::info!("node stopped");
            Ok(())
        }
        StopReason::TransportClosed => Err(RunError::Crashed("the transport stopped".into())),
        StopReason::ActorGone => Err(RunError::Crashed("the node core stopped".into())),
    }
}

async fn wait_stop(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            if rx.wait_for(|stop| *stop).await.is_err() {
                // The handle was dropped without stopping: never stop through it.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Opens the database, waiting a little if `nymstr-node info` holds it for a moment.
async fn open_store(dir: &DataDir, config: &Config) -> Result<SledStore, RunError> {
    let path = dir.db();
    let options = config.store.sled_options();
    let mut waited = Duration::ZERO;
    loop {
        match SledStore::open(&path, &options) {
            Ok(store) => return Ok(store),
            Err(SledOpenError::Locked { .. }) if waited < LOCK_WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                waited += Duration::from_millis(100);
            }
            Err(SledOpenError::Locked { .. }) => return Err(RunError::Locked(path)),
            Err(e) => return Err(RunError::Open(e)),
        }
    }
}

async fn start_transport(
    dir: &DataDir,
    config: &Config,
    node_key: &ed25519_dalek::SigningKey,
    inbound: mpsc::Sender<Inbound>,
) -> Result<TransportHandle, RunError> {
    match config.transport.kind {
        TransportKind::Tcp => {
            Ok(tcp::start(config.transport.tcp.clone(), config.federation.advertise.clone(), node_key, inbound).await?)
        }
        #[cfg(feature = "nym")]
        TransportKind::Nym => Ok(crate::transport::nym::start(config.transport.nym.clone(), &dir.root, inbound).await?),
        #[cfg(not(feature = "nym"))]
        TransportKind::Nym => {
            let _ = (dir, node_key);
            Err(RunError::Config(ConfigError::Invalid {
                path: dir.config(),
                key: "transport.kind".into(),
                line: None,
                message: "= \"nym\" needs a node built with `--features nym`".into(),
            }))
        }
    }
}

/// SIGINT and SIGTERM, when enabled.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    enabled: bool,
}

impl Signals {
    /// Installs the handlers (from here on the signals no longer kill the process).
    fn new(enabled: bool) -> Result<Self, RunError> {
        #[cfg(unix)]
        let unix = if enabled {
            use tokio::signal::unix::{SignalKind, signal};
            Some((
                signal(SignalKind::interrupt()).map_err(RunError::Runtime)?,
                signal(SignalKind::terminate()).map_err(RunError::Runtime)?,
            ))
        } else {
            None
        };
        Ok(Self {
            #[cfg(unix)]
            unix,
            enabled,
        })
    }

    /// The next signal; never resolves when disabled. Cancel-safe.
    async fn next(&mut self) -> &'static str {
        if !self.enabled {
            return std::future::pending().await;
        }
        #[cfg(unix)]
        {
            let (int, term) = self.unix.as_mut().expect("enabled");
            tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            loop {
                if tokio::signal::ctrl_c().await.is_ok() {
                    return "SIGINT";
                }
            }
        }
    }
}

/// The address a tcp node listens on, from its configuration (for `info` when the node
/// is not running).
pub fn configured_address(config: &Config) -> String {
    match config.transport.kind {
        TransportKind::Tcp => config.transport.tcp.listen.to_string(),
        TransportKind::Nym => "(nym address: known once the node has connected)".into(),
    }
}

/// Parses a `--listen` argument.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s:?} is not an address with a port, like 127.0.0.1:7000 or [::1]:7000 ({e})"))
}
