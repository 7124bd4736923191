//! The driver: hosts a `ClientCore` over a TCP connection to the node, an optional direct
//! listener, and sled. One loop: take the core's events (record them, let the command
//! react), persist, then send what the core wants sent — in that order, so nothing is
//! acknowledged (to the node or a direct peer) before it is durable here — then wait for
//! the next frame, answer, timer, line of input or signal.
//!
//! Commands that use groups also host a `GroupCore` (`enable_groups`): its state is saved
//! in the same step (before anything is sent), its frames go over one extra connection
//! per group node (`net::GroupLinks`), and its events become group history lines.
//!
//! Here: the session and the loop; `wake`: what the loop waits for; `record`: what
//! events become in the history; `groups`: the hosted group member.

mod groups;
mod record;
mod wake;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nymstr_proto::wire::{Envelope, GroupId};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::clock::{deadline_after, now_us, os_rng};
use crate::cli::error::CliError;
use crate::cli::output::Printer;
use crate::net::{self, Connection, DirectListener, GroupLinks, NetError};
use crate::persist::{Direction, GroupLine, HistoryEntry, Home, Status};
use nymstr_client_core::core::{ClientConfig, ClientCore, Event, TimeUs};
use nymstr_client_core::group::{GroupConfig, GroupCore, GroupEvent, GroupTransmit, MemberInfo};
use nymstr_client_core::seal::DirectAddress;
use wake::{Signals, Wake, control_wake, sleep_until};

/// The group core's settings: the defaults (wall-clock leaf lifetimes, the node's
/// default steward round).
pub fn group_config() -> GroupConfig {
    GroupConfig::default()
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
    /// An event from the group core, after the session recorded it (`lines`: the group
    /// history lines it created).
    fn on_group_event(&mut self, _s: &mut Session, _ev: &GroupEvent, _lines: &[GroupLine]) -> Flow {
        Flow::Continue
    }
    /// The connection to a group node could not be made or broke.
    fn on_group_link_lost(&mut self, _s: &mut Session, _addr: &str, _error: &NetError) -> Flow {
        Flow::Continue
    }
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
    /// The group member, once `enable_groups` restored it.
    pub groups: Option<GroupCore>,
    /// Whether the group core runs (timers, network); a passive one only signs invites.
    groups_active: bool,
    links: GroupLinks,
    /// Group frames drained from the core, sent after the next save.
    group_out: Vec<GroupTransmit>,
    /// Group uploads sent and not answered yet: request id → group.
    uploads_in_flight: BTreeMap<u64, GroupId>,
    /// Groups whose subscription the node confirmed on the current connection, with the
    /// node's next seq at that moment.
    subscribed: BTreeMap<GroupId, u64>,
    /// Group nodes we had a connection to in this run (a new one means resubscribing).
    linked_before: BTreeSet<String>,
    /// Group nodes whose connection failed and is not back.
    pub failed_nodes: BTreeSet<String>,
    /// Groups their node no longer hosts (nothing to catch up with).
    unhosted: BTreeSet<GroupId>,
    /// `listen`: group nodes to reconnect to, when, and the next back-off.
    group_reconnect: BTreeMap<String, (Instant, Duration)>,
    /// Every group's name and members as last seen (to describe changes).
    names: BTreeMap<GroupId, String>,
    members: BTreeMap<GroupId, Vec<MemberInfo>>,
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
            groups: None,
            groups_active: false,
            links: GroupLinks::new(),
            group_out: Vec::new(),
            uploads_in_flight: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            linked_before: BTreeSet::new(),
            failed_nodes: BTreeSet::new(),
            unhosted: BTreeSet::new(),
            group_reconnect: BTreeMap::new(),
            names: BTreeMap::new(),
            members: BTreeMap::new(),
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
        self.collect_group_transmits();
        let saved = self.persist();
        self.pump_out().await;
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        self.links.close().await;
        result.and(saved)
    }

    async fn run(&mut self, goal: &mut dyn Goal, deadline: Option<Instant>) -> Result<(), CliError> {
        loop {
            let mut done = None;
            self.collect_group_transmits();
            while let Some(ev) = self.core.poll_event() {
                let entry = self.record(&ev)?;
                if let Flow::Done(r) = goal.on_event(self, &ev, entry.as_ref()) {
                    done.get_or_insert(r);
                }
            }
            while let Some(ev) = self.groups.as_mut().and_then(|g| g.poll_event()) {
                let lines = self.record_group(&ev)?;
                if let Flow::Done(r) = goal.on_group_event(self, &ev, &lines) {
                    done.get_or_insert(r);
                }
            }
            if done.is_none()
                && let Flow::Done(r) = goal.check(self)
            {
                done = Some(r);
            }
            self.collect_group_transmits();
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
                Wake::GroupTimer => {
                    if let Some(g) = self.groups.as_mut() {
                        g.handle_timeout(now);
                    }
                }
                Wake::Group(ev) => {
                    if let Some(flow) = self.on_link_event(goal, ev, now) {
                        return flow;
                    }
                }
                Wake::GroupReconnect(addr) => {
                    if let Some((_, backoff)) = self.group_reconnect.get(&addr).cloned() {
                        self.group_reconnect.insert(addr.clone(), (deadline_after(backoff), backoff));
                        self.links.ensure(&addr);
                    }
                }
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
        let at_instant = |at: TimeUs| {
            let now = now_us();
            deadline_after(Duration::from_micros(at.saturating_sub(now)))
        };
        let timer = self.core.poll_timeout().map(at_instant);
        let group_timer =
            self.groups.as_ref().filter(|_| self.groups_active).and_then(|g| g.poll_timeout()).map(at_instant);
        let group_reconnect =
            self.group_reconnect.iter().filter(|(a, _)| !self.links.is_open(a)).min_by_key(|(_, (at, _))| *at);
        let (reconnect_addr, reconnect_at) = match group_reconnect {
            Some((a, (at, _))) => (Some(a.clone()), Some(*at)),
            None => (None, None),
        };
        let links = &mut self.links;
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
            ev = links.next() => Wake::Group(ev),
            _ = sleep_until(group_timer) => Wake::GroupTimer,
            _ = sleep_until(reconnect_at) => Wake::GroupReconnect(reconnect_addr.unwrap_or_default()),
        }
    }

    /// Saves the client state and the group state (flushing them and the histories)
    /// before anything is sent.
    pub fn persist(&mut self) -> Result<(), CliError> {
        let state = self.core.export_state();
        let flushed = self.home.save_state(&state)?;
        let groups_written = match self.groups.as_mut() {
            Some(g) => {
                let delta = g.export_changes();
                self.home.save_group_delta(delta)?
            }
            None => false,
        };
        if !flushed || groups_written {
            self.home.flush()?;
        }
        Ok(())
    }

    /// Sends the core's frames: to the node, to direct peers, and answers on the direct
    /// listener. Returns the error if the node connection broke.
    async fn pump_out(&mut self) -> Option<NetError> {
        for t in std::mem::take(&mut self.group_out) {
            let addr = String::from_utf8_lossy(&t.group_node).into_owned();
            self.links.send(&addr, t.envelope);
        }
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
        self.reconnect_at = Some(deadline_after(self.reconnect_backoff));
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
                self.reconnect_at = Some(deadline_after(self.reconnect_backoff));
            }
        }
    }
}
