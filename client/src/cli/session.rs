//! The driver: hosts a `ClientCore` over a TCP connection to the node, an optional direct
//! listener, and sled. One loop: take the core's events (record them, let the command
//! react), persist, then send what the core wants sent — in that order, so nothing is
//! acknowledged (to the node or a direct peer) before it is durable here — then wait for
//! the next frame, answer, timer, line of input or signal.

use std::time::Duration;

use nymstr_node::wire::Envelope;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::error::{CliError, describe_code};
use crate::cli::output::{Printer, hex};
use crate::core::{ClientConfig, ClientCore, Event, Operation, TimeUs, Via};
use crate::net::{self, Connection, DirectListener, NetError};
use crate::persist::{Direction, HistoryEntry, Home, Status};
use crate::seal::DirectAddress;

/// Microseconds since the Unix epoch: the core's `now`.
// The client crate bans `SystemTime::now` (cores take time from their host). This is the
// host: the CLI's one clock read.
#[allow(clippy::disallowed_methods)]
pub fn now_us() -> TimeUs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as TimeUs)
}

/// A ChaCha generator seeded from the OS.
// The client crate bans OS randomness (cores take a seeded ChaCha from their host). This is
// the host: the CLI's one draw of OS entropy.
#[allow(clippy::disallowed_methods)]
pub fn os_rng() -> Result<ChaCha20Rng, CliError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| CliError::Usage(format!("no OS randomness available: {e}")))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

/// The core's settings for TCP: a lost frame means a lost connection (reconnect, then
/// retry), so retries are for a slow node, and a direct peer that does not answer
/// within a few seconds is not there.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        retry_after_us: 5_000_000,
        retry_after_max_us: 30_000_000,
        direct_timeout_us: 5_000_000,
        ..ClientConfig::default()
    }
}

/// What a command tells the loop.
pub enum Flow {
    Continue,
    Done(Result<(), CliError>),
}

/// A command's logic, driven by the loop.
pub trait Goal {
    /// An event from the core, after the session recorded it (`entry`: the history entry
    /// it created or changed).
    fn on_event(&mut self, s: &mut Session, ev: &Event, entry: Option<&HistoryEntry>) -> Flow;
    /// Checked after every step.
    fn check(&mut self, _s: &mut Session) -> Flow {
        Flow::Continue
    }
    /// When `check` wants to run even if nothing happens.
    fn wake_at(&self) -> Option<Instant> {
        None
    }
    /// The command's deadline passed.
    fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError>;
    /// A line typed on standard input (`listen`).
    fn on_line(&mut self, _s: &mut Session, _line: &str) -> Flow {
        Flow::Continue
    }
    /// A message handed over by `nymstr send` from another process (`listen` only).
    #[cfg(unix)]
    fn on_control(&mut self, _s: &mut Session, req: crate::cli::control::ControlRequest) {
        let _ = req.reply.send(crate::cli::control::failure("busy", "this process does not take messages", 5));
    }
    /// Ctrl-C or SIGTERM.
    fn on_interrupt(&mut self, _s: &mut Session) -> Flow {
        Flow::Done(Err(CliError::Interrupted))
    }
}

enum Wake {
    Node(Result<Vec<u8>, NetError>),
    DirectAnswer(u64, Result<Vec<u8>, NetError>),
    DirectFrame(u64, Vec<u8>),
    Line(Option<String>),
    Timer,
    GoalTimer,
    Deadline,
    Reconnect,
    Interrupt,
    #[cfg(unix)]
    Control(crate::cli::control::ControlRequest),
}

pub struct Session {
    pub core: ClientCore,
    pub home: Home,
    pub out: Printer,
    pub node_addr: String,
    pub timeout: Duration,
    conn: Option<Connection>,
    /// `listen`: a lost node connection is re-established (with back-off).
    pub keep_connected: bool,
    reconnect_at: Option<Instant>,
    reconnect_backoff: Duration,
    listener: Option<DirectListener>,
    answers_tx: mpsc::UnboundedSender<(u64, Result<Vec<u8>, NetError>)>,
    answers_rx: mpsc::UnboundedReceiver<(u64, Result<Vec<u8>, NetError>)>,
    stdin: Option<mpsc::Receiver<String>>,
    signals: Signals,
    #[cfg(unix)]
    control: Option<crate::cli::control::ControlServer>,
}

impl Session {
    /// Opens the home and restores the client (no network yet).
    pub fn open(home: Home, out: Printer, node_addr: String, timeout: Duration) -> Result<Self, CliError> {
        let core = ClientCore::restore(os_rng()?, client_config(), home.state())
            .map_err(|e| CliError::Usage(format!("stored state of {} is unusable: {e}", home.dir().display())))?;
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        Ok(Self {
            core,
            home,
            out,
            node_addr,
            timeout,
            conn: None,
            keep_connected: false,
            reconnect_at: None,
            reconnect_backoff: Duration::from_secs(1),
            listener: None,
            answers_tx,
            answers_rx,
            stdin: None,
            signals: Signals::new(),
            #[cfg(unix)]
            control: None,
        })
    }

    pub async fn connect(&mut self) -> Result<(), CliError> {
        let conn = Connection::connect(&self.node_addr, net::CONNECT_TIMEOUT).await.map_err(CliError::Node)?;
        self.conn = Some(conn);
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Listens for direct frames on `addr`; returns the bound address.
    pub async fn listen_direct(&mut self, addr: &str) -> Result<std::net::SocketAddr, CliError> {
        let listener = DirectListener::bind(addr).await.map_err(CliError::Net)?;
        let local = listener.local_addr();
        self.listener = Some(listener);
        Ok(local)
    }

    /// Takes messages from `nymstr send` run while this process holds the home.
    pub fn serve_control(&mut self) -> Result<(), CliError> {
        #[cfg(unix)]
        {
            let server = crate::cli::control::ControlServer::bind(self.home.dir()).map_err(|source| {
                CliError::Persist(crate::persist::PersistError::Io {
                    path: self.home.dir().join("control.sock"),
                    source,
                })
            })?;
            self.control = Some(server);
        }
        Ok(())
    }

    /// Reads standard input line by line (on a blocking thread: tokio's own stdin is not
    /// among the enabled features, and a blocking read is what it does anyway).
    pub fn read_stdin(&mut self) {
        let (tx, rx) = mpsc::channel(64);
        tokio::task::spawn_blocking(move || {
            let stdin = std::io::stdin();
            for line in std::io::BufRead::lines(stdin.lock()) {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        self.stdin = Some(rx);
    }

    /// The username, once registered.
    pub fn me(&self) -> String {
        self.core.username().unwrap_or("").to_string()
    }

    /// Records an outgoing message in the history as pending.
    pub fn record_outgoing(&self, to: &str, msg_id: [u8; 16], body: &[u8], now: TimeUs) -> Result<(), CliError> {
        self.home.record(HistoryEntry {
            seq: 0,
            at_us: now,
            peer: to.to_string(),
            direction: Direction::Out,
            msg_id,
            sent_at_us: now,
            body: body.to_vec(),
            status: Status::Pending,
            via: None,
            read: true,
        })?;
        Ok(())
    }

    /// Runs `goal` until it is done, the deadline passes, or it is interrupted.
    pub async fn drive(&mut self, goal: &mut dyn Goal, deadline: Option<Instant>) -> Result<(), CliError> {
        let result = self.run(goal, deadline).await;
        // Whatever happened, keep what we know and send what is due (acknowledgements).
        let saved = self.persist();
        self.pump_out().await;
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        result.and(saved)
    }

    async fn run(&mut self, goal: &mut dyn Goal, deadline: Option<Instant>) -> Result<(), CliError> {
        loop {
            let mut done = None;
            while let Some(ev) = self.core.poll_event() {
                let entry = self.record(&ev)?;
                if let Flow::Done(r) = goal.on_event(self, &ev, entry.as_ref()) {
                    done.get_or_insert(r);
                }
            }
            if done.is_none()
                && let Flow::Done(r) = goal.check(self)
            {
                done = Some(r);
            }
            self.persist()?;
            if let Some(e) = self.pump_out().await
                && let Some(r) = self.connection_lost(e)
            {
                done.get_or_insert(r);
            }
            if let Some(r) = done {
                return r;
            }
            let wake = self.wait(goal.wake_at(), deadline).await;
            let now = now_us();
            match wake {
                Wake::Node(Ok(bytes)) => self.core.handle_frame(now, &bytes),
                Wake::Node(Err(e)) => {
                    if let Some(r) = self.connection_lost(e) {
                        return r;
                    }
                }
                Wake::DirectAnswer(attempt, Ok(bytes)) => self.core.handle_direct_answer(now, attempt, &bytes),
                Wake::DirectAnswer(attempt, Err(e)) => self.core.direct_failed(now, attempt, &e.to_string()),
                Wake::DirectFrame(conn, bytes) => self.core.handle_direct_frame(now, conn, &bytes),
                Wake::Line(Some(line)) => {
                    if let Flow::Done(r) = goal.on_line(self, &line) {
                        return r;
                    }
                }
                Wake::Line(None) => self.stdin = None,
                Wake::Timer => self.core.handle_timeout(now),
                Wake::GoalTimer => {}
                Wake::Deadline => return goal.on_deadline(self),
                Wake::Reconnect => self.reconnect().await,
                Wake::Interrupt => {
                    if let Flow::Done(r) = goal.on_interrupt(self) {
                        return r;
                    }
                }
                #[cfg(unix)]
                Wake::Control(req) => goal.on_control(self, req),
            }
        }
    }

    async fn wait(&mut self, goal_at: Option<Instant>, deadline: Option<Instant>) -> Wake {
        let timer = self.core.poll_timeout().map(|at| {
            let now = now_us();
            Instant::now() + Duration::from_micros(at.saturating_sub(now))
        });
        let conn = &mut self.conn;
        let listener = &mut self.listener;
        let stdin = &mut self.stdin;
        #[cfg(unix)]
        let control = &mut self.control;
        #[cfg(unix)]
        let control = async {
            match control {
                Some(c) => c.next().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let control = std::future::pending::<Option<()>>();
        tokio::select! {
            r = async { match conn { Some(c) => c.recv().await, None => std::future::pending().await } } => Wake::Node(r),
            Some((attempt, r)) = self.answers_rx.recv() => Wake::DirectAnswer(attempt, r),
            Some((conn, bytes)) = async { match listener { Some(l) => l.next().await, None => std::future::pending().await } }
                => Wake::DirectFrame(conn, bytes),
            line = async { match stdin { Some(s) => s.recv().await, None => std::future::pending().await } }
                => Wake::Line(line),
            _ = sleep_until(timer) => Wake::Timer,
            _ = sleep_until(goal_at) => Wake::GoalTimer,
            _ = sleep_until(deadline) => Wake::Deadline,
            _ = sleep_until(self.reconnect_at) => Wake::Reconnect,
            _ = self.signals.recv() => Wake::Interrupt,
            Some(req) = control => control_wake(req),
        }
    }

    /// Keeps the history in step with the core's events and tells the user what they
    /// should know. Returns the history entry an event created or changed.
    fn record(&mut self, ev: &Event) -> Result<Option<HistoryEntry>, CliError> {
        let now = now_us();
        let entry = match ev {
            Event::Received { from, msg_id, sent_at_us, body, via } => Some(self.home.record(HistoryEntry {
                seq: 0,
                at_us: now,
                peer: from.clone(),
                direction: Direction::In,
                msg_id: *msg_id,
                sent_at_us: *sent_at_us,
                body: body.clone(),
                status: Status::Received,
                via: Some(*via),
                read: false,
            })?),
            Event::SendAcked { to, msg_id } => self.home.update_outgoing(to, msg_id, |e| {
                if e.status != Status::Delivered {
                    e.status = Status::Sent;
                    e.via = Some(Via::Relay);
                }
            })?,
            Event::DirectDelivered { to, msg_id } => self.home.update_outgoing(to, msg_id, |e| {
                e.status = Status::Delivered;
                e.via = Some(Via::Direct);
            })?,
            Event::Failed { what: Operation::Send { to, msg_id }, code, detail } => {
                let reason = describe_code(*code, detail);
                self.home.update_outgoing(to, msg_id, |e| e.status = Status::Failed(reason))?
            }
            _ => None,
        };
        let out = &self.out;
        match ev {
            Event::Rejected { from, msg_id, reason } => out.notice(
                "rejected",
                &format!("discarded a message claiming to be from {from}: {reason}"),
                json!({ "from": from, "msg_id": hex(msg_id), "reason": reason.to_string() }),
            ),
            Event::KeyChanged { username, pinned, offered } => out.notice(
                "key_changed",
                &format!(
                    "the account key of {username} changed (pinned {}, offered {}); messages to and from \
                     {username} are refused until you run `nymstr trust {username} --key <KEY>`",
                    hex(pinned),
                    hex(offered)
                ),
                json!({ "username": username, "pinned": hex(pinned), "offered": hex(offered) }),
            ),
            Event::DirectOffered { peer, addr } => out.notice(
                "direct_offered",
                &format!(
                    "{peer} offers direct delivery at {addr}; run `nymstr listen --direct HOST:PORT` to accept \
                     (it reveals your address to {peer})"
                ),
                json!({ "peer": peer, "addr": addr.to_string() }),
            ),
            Event::DirectReady { peer, addr } => out.notice(
                "direct_ready",
                &format!("direct delivery with {peer} is on ({addr})"),
                json!({ "peer": peer, "addr": addr.to_string() }),
            ),
            Event::DirectWithdrawn { peer } => out.notice(
                "direct_withdrawn",
                &format!("{peer} stopped direct delivery; messages to {peer} go through the node"),
                json!({ "peer": peer }),
            ),
            Event::DirectFailed { to, msg_id, addr, reason } => out.notice(
                "direct_failed",
                &format!("direct delivery to {to} at {addr} failed ({reason}); sending through the node"),
                json!({ "to": to, "msg_id": hex(msg_id), "addr": addr.to_string(), "reason": reason }),
            ),
            _ => {}
        }
        Ok(entry)
    }

    /// Saves the client state (flushing it and the history) before anything is sent.
    pub fn persist(&mut self) -> Result<(), CliError> {
        let state = self.core.export_state();
        if !self.home.save_state(&state)? {
            self.home.flush()?;
        }
        Ok(())
    }

    /// Sends the core's frames: to the node, to direct peers, and answers on the direct
    /// listener. Returns the error if the node connection broke.
    async fn pump_out(&mut self) -> Option<NetError> {
        let transmits: Vec<Envelope> = self.core.drain_transmits().collect();
        let mut broken = None;
        if let Some(conn) = &mut self.conn {
            for env in &transmits {
                if let Err(e) = conn.send(env).await {
                    broken = Some(e);
                    break;
                }
            }
        }
        // Without a connection the frames are dropped: the core retries after it is back.
        let timeout = Duration::from_micros(client_config().direct_timeout_us);
        for t in self.core.drain_direct_transmits() {
            let tx = self.answers_tx.clone();
            let DirectAddress::Tcp(addr) = t.addr;
            tokio::spawn(async move {
                let r = net::exchange(&addr, &t.envelope, timeout).await;
                let _ = tx.send((t.attempt, r));
            });
        }
        let replies: Vec<_> = self.core.drain_direct_replies().collect();
        if let Some(listener) = &mut self.listener {
            for r in replies {
                listener.reply(r.conn, &r.envelope);
            }
        }
        broken
    }

    /// The node connection broke: `listen` reconnects, other commands fail.
    fn connection_lost(&mut self, e: NetError) -> Option<Result<(), CliError>> {
        self.conn = None;
        if !self.keep_connected {
            return Some(Err(CliError::Node(e)));
        }
        self.out.notice(
            "disconnected",
            &format!("lost node {}: {e}; reconnecting", self.node_addr),
            json!({ "node": self.node_addr, "reason": e.to_string() }),
        );
        self.reconnect_at = Some(Instant::now() + self.reconnect_backoff);
        None
    }

    async fn reconnect(&mut self) {
        self.reconnect_at = None;
        match Connection::connect(&self.node_addr, Duration::from_secs(3)).await {
            Ok(conn) => {
                self.conn = Some(conn);
                self.reconnect_backoff = Duration::from_secs(1);
                self.out.notice(
                    "reconnected",
                    &format!("connected to node {} again", self.node_addr),
                    json!({ "node": self.node_addr }),
                );
                self.core.reconnected(now_us());
            }
            Err(_) => {
                self.reconnect_backoff = (self.reconnect_backoff * 2).min(Duration::from_secs(30));
                self.reconnect_at = Some(Instant::now() + self.reconnect_backoff);
            }
        }
    }
}

#[cfg(unix)]
fn control_wake(req: crate::cli::control::ControlRequest) -> Wake {
    Wake::Control(req)
}

#[cfg(not(unix))]
fn control_wake(_: ()) -> Wake {
    Wake::GoalTimer
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C and SIGTERM, registered once so none is missed between waits.
struct Signals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self { int: signal(SignalKind::interrupt()).ok(), term: signal(SignalKind::terminate()).ok() }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let int = async {
                match &mut self.int {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let term = async {
                match &mut self.term {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = int => {}
                _ = term => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
