//! The driver: hosts a `ClientCore` over a TCP connection to the node, an optional direct
//! listener, and sled. One loop: take the core's events (record them, let the command
//! react), persist, then send what the core wants sent — in that order, so nothing is
//! acknowledged (to the node or a direct peer) before it is durable here — then wait for
//! the next frame, answer, timer, line of input or signal.
//!
//! Commands that use groups also host a `GroupCore` (`enable_groups`): its state is saved
//! in the same step (before anything is sent), its frames go over one extra connection
//! per group node (`net::GroupLinks`), and its events become group history lines.

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use nymstr_proto::wire::{Body, Envelope, GroupId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::error::{CliError, describe_code};
use crate::cli::output::{Printer, hex};
use crate::net::{self, Connection, DirectListener, GroupLinks, LinkEvent, NetError};
use crate::persist::{Direction, GroupLine, GroupLineKind, HistoryEntry, Home, InviteRecord, Status};
use nymstr_client_core::core::{ClientConfig, ClientCore, Event, Operation, TimeUs, Via};
use nymstr_client_core::group::{GroupConfig, GroupCore, GroupEvent, GroupTransmit, MemberInfo, MemberKeys};
use nymstr_client_core::seal::DirectAddress;

/// Microseconds since the Unix epoch: the core's `now`.
// The client crate bans `SystemTime::now` (cores take time from their host). This is the
// host: the CLI's one clock read.
#[allow(clippy::disallowed_methods)]
pub fn now_us() -> TimeUs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as TimeUs)
}

/// 32 bytes of OS entropy: the seed of every core the CLI hosts.
// The client crate bans OS randomness (cores take a seed from their host). This is the
// host: the CLI's one draw of OS entropy.
#[allow(clippy::disallowed_methods)]
pub fn os_seed() -> Result<[u8; 32], CliError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| CliError::Usage(format!("no OS randomness available: {e}")))?;
    Ok(seed)
}

/// A ChaCha generator seeded from the OS.
pub fn os_rng() -> Result<ChaCha20Rng, CliError> {
    Ok(ChaCha20Rng::from_seed(os_seed()?))
}

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
    Group(LinkEvent),
    GroupTimer,
    GroupReconnect(String),
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

    /// Restores the group member from the home (registered accounts only). `active`: it
    /// runs, i.e. subscribes to its groups and sends; a passive one only signs invites.
    pub fn enable_groups(&mut self, active: bool) -> Result<(), CliError> {
        let (Some(username), Some(id)) = (self.core.username(), self.core.identity()) else {
            return Err(CliError::NotRegistered);
        };
        if !self.core.is_registered() {
            return Err(CliError::NotRegistered);
        }
        let keys =
            MemberKeys { installation: id.installation.clone(), cert: id.cert.clone(), username: username.to_string() };
        let state = self.home.group_state()?;
        let core = GroupCore::restore(keys, os_seed()?, group_config(), state).map_err(|e| {
            CliError::Usage(format!("stored group state of {} is unusable: {e}", self.home.dir().display()))
        })?;
        for g in core.groups().into_iter().chain(core.pending_groups()) {
            self.names.insert(g, display_name(&core, &g));
            if core.groups().contains(&g) {
                self.members.insert(g, core.members(&g));
            }
        }
        self.groups = Some(core);
        self.groups_active = active;
        Ok(())
    }

    /// The group core (after `enable_groups`).
    pub fn gcore(&mut self) -> &mut GroupCore {
        self.groups.as_mut().expect("enable_groups was called")
    }

    /// Connects to a group node now: an unreachable node is an error before anything is
    /// attempted there.
    pub async fn connect_group_node(&mut self, addr: &str) -> Result<(), CliError> {
        self.links.connect(addr).await.map_err(CliError::Node)?;
        self.failed_nodes.remove(addr);
        Ok(())
    }

    /// The group's display name: its name, else the start of its id.
    pub fn group_name(&self, group: &GroupId) -> String {
        if let Some(core) = &self.groups {
            let n = display_name(core, group);
            if !n.starts_with('#') {
                return n;
            }
        }
        self.names.get(group).cloned().unwrap_or_else(|| short_id(group))
    }

    /// The node confirmed our subscription and we applied the log up to where it stood
    /// then, with none of our uploads waiting for an answer.
    pub fn group_settled(&self, group: &GroupId) -> bool {
        let Some(core) = &self.groups else { return true };
        let Some(at) = self.subscribed.get(group) else { return false };
        core.next_seq(group).is_some_and(|n| n >= *at) && !self.uploads_in_flight.values().any(|g| g == group)
    }

    /// Every group we are a member of is settled, or its node is unreachable.
    pub fn groups_settled(&self) -> bool {
        let Some(core) = &self.groups else { return true };
        core.groups().iter().all(|g| {
            self.group_settled(g)
                || self.unhosted.contains(g)
                || core.group_node(g).is_some_and(|n| self.failed_nodes.contains(String::from_utf8_lossy(n).as_ref()))
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
                        self.group_reconnect.insert(addr.clone(), (Instant::now() + backoff, backoff));
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
            Instant::now() + Duration::from_micros(at.saturating_sub(now))
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
            Event::Transparency { username, outcome, detail } => out.notice(
                "transparency",
                &format!(
                    "the transparency check of {username} failed ({outcome}: {detail}); messages to and from \
                     {username} are refused"
                ),
                json!({ "username": username, "outcome": outcome, "detail": detail }),
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
            Event::GroupInvited { from, msg_id, invite } => {
                if !crate::cli::groups::invite_is_valid(invite) {
                    out.notice(
                        "invite_rejected",
                        &format!("discarded an invalid group invitation from {from}"),
                        json!({ "from": from, "msg_id": hex(msg_id) }),
                    );
                } else {
                    self.home.record_invite(&InviteRecord {
                        from: from.clone(),
                        msg_id: *msg_id,
                        received_at_us: now,
                        invite: invite.clone(),
                        shown: false,
                    })?;
                }
            }
            Event::DirectFailed { to, msg_id, addr, reason } => out.notice(
                "direct_failed",
                &format!("direct delivery to {to} at {addr} failed ({reason}); sending through the node"),
                json!({ "to": to, "msg_id": hex(msg_id), "addr": addr.to_string(), "reason": reason }),
            ),
            _ => {}
        }
        Ok(entry)
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

    /// Takes the group core's frames (sent after the next save) and notes its uploads.
    fn collect_group_transmits(&mut self) {
        if !self.groups_active {
            return;
        }
        let Some(core) = self.groups.as_mut() else { return };
        for t in core.drain_transmits() {
            if let Body::GroupUpload { group_id, .. } = &t.envelope.body {
                self.uploads_in_flight.insert(t.envelope.request_id, *group_id);
            }
            self.group_out.push(t);
        }
        // Uploads of groups we no longer hold will not be answered to anyone who cares.
        let live: BTreeSet<GroupId> = core.groups().into_iter().chain(core.pending_groups()).collect();
        self.uploads_in_flight.retain(|_, g| live.contains(g));
    }

    /// A frame, connection or loss on a group node connection.
    fn on_link_event(&mut self, goal: &mut dyn Goal, ev: LinkEvent, now: TimeUs) -> Option<Result<(), CliError>> {
        match ev {
            LinkEvent::Connected { addr, .. } => {
                self.failed_nodes.remove(&addr);
                let again = !self.linked_before.insert(addr.clone());
                if self.group_reconnect.remove(&addr).is_some() {
                    self.out.notice(
                        "reconnected",
                        &format!("connected to group node {addr} again"),
                        json!({ "node": addr, "groups": true }),
                    );
                }
                if again && let Some(g) = self.groups.as_mut() {
                    // A new connection is a new sender tag: subscribe again.
                    g.reconnected(now);
                }
            }
            LinkEvent::Frame { addr, bytes, .. } => {
                let Ok(env) = nymstr_proto::codec::decode_frame(&bytes) else { return None };
                match &env.body {
                    Body::GroupSubscribed { group_id, next_seq, .. } => {
                        self.subscribed.insert(*group_id, *next_seq);
                    }
                    Body::GroupUploadAck { .. } | Body::Error { .. } => {
                        self.uploads_in_flight.remove(&env.request_id);
                    }
                    _ => {}
                }
                if let Some(g) = self.groups.as_mut() {
                    g.handle_envelope(now, addr.as_bytes(), env);
                }
            }
            LinkEvent::Lost { addr, error, .. } => {
                // Subscriptions were bound to the lost connection's tag.
                if let Some(core) = &self.groups {
                    let on_node: Vec<GroupId> = self
                        .subscribed
                        .keys()
                        .filter(|g| core.group_node(g).is_some_and(|n| n == addr.as_bytes()))
                        .copied()
                        .collect();
                    for g in on_node {
                        self.subscribed.remove(&g);
                    }
                }
                let first = self.failed_nodes.insert(addr.clone());
                if self.keep_connected {
                    let backoff = self.group_reconnect.get(&addr).map_or(Duration::from_secs(1), |(_, b)| *b);
                    let next = (backoff * 2).min(Duration::from_secs(30));
                    self.group_reconnect.insert(addr.clone(), (Instant::now() + backoff, next));
                }
                if first {
                    self.out.notice(
                        "group_node_lost",
                        &format!("group node {error}{}", if self.keep_connected { "; reconnecting" } else { "" }),
                        json!({ "node": addr, "reason": error.to_string() }),
                    );
                }
                if let Flow::Done(r) = goal.on_group_link_lost(self, &addr, &error) {
                    return Some(r);
                }
            }
        }
        None
    }

    /// Records a group event as history (messages, and notices people should see) and
    /// keeps the names and member lists current. Returns the lines it recorded.
    fn record_group(&mut self, ev: &GroupEvent) -> Result<Vec<GroupLine>, CliError> {
        let now = now_us();
        let Some(core) = self.groups.as_ref() else { return Ok(Vec::new()) };
        let me = core.member_key();
        let group = match ev {
            GroupEvent::Created { group }
            | GroupEvent::Joined { group, .. }
            | GroupEvent::Message { group, .. }
            | GroupEvent::Missing { group, .. }
            | GroupEvent::Lost { group, .. }
            | GroupEvent::Repaired { group, .. }
            | GroupEvent::HistoryGap { group, .. }
            | GroupEvent::MembersChanged { group }
            | GroupEvent::EpochChanged { group, .. }
            | GroupEvent::MetaChanged { group, .. }
            | GroupEvent::Removed { group }
            | GroupEvent::Error { group, .. } => *group,
        };
        let old_name = self.names.get(&group).cloned().unwrap_or_else(|| display_name(core, &group));
        let current = core.members(&group);
        let who = |key: &[u8; 32]| -> String {
            self.members
                .get(&group)
                .into_iter()
                .flatten()
                .chain(current.iter())
                .find(|m| m.key == *key)
                .map(|m| m.username.clone())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| format!("member {}", hex(&key[..4])))
        };
        let mut notices: Vec<(String, Option<String>, String)> = Vec::new();
        let mut message = None;
        match ev {
            GroupEvent::Message { msg_id, sender_username, sender_key, text, seq, .. } => {
                let from = if sender_username.is_empty() { who(sender_key) } else { sender_username.clone() };
                message = Some((
                    GroupLineKind::Message {
                        from,
                        sender_key: *sender_key,
                        msg_id: *msg_id,
                        text: text.clone(),
                        log_seq: *seq,
                    },
                    *sender_key == me,
                ));
            }
            GroupEvent::Missing { sender, seq, .. } => {
                let w = who(sender);
                notices.push((
                    "missing".into(),
                    Some(w.clone()),
                    format!("a message from {w} (#{seq}) did not reach us; fetching it from the group node"),
                ));
            }
            GroupEvent::Lost { sender, seq, .. } => {
                let w = who(sender);
                notices.push(("lost".into(), Some(w.clone()), format!("a message from {w} (#{seq}) is lost")));
            }
            GroupEvent::Repaired { sender, seq, .. } => {
                let w = who(sender);
                notices.push((
                    "repaired".into(),
                    Some(w.clone()),
                    format!("the missing message from {w} (#{seq}) arrived after all"),
                ));
            }
            GroupEvent::HistoryGap { from_seq, to_seq, .. } => notices.push((
                "history_gap".into(),
                None,
                format!("messages #{from_seq} to #{} are no longer kept by the group node", to_seq.saturating_sub(1)),
            )),
            GroupEvent::MembersChanged { .. } => {
                let after = core.members(&group);
                if let Some(before) = self.members.get(&group) {
                    let name = |m: &MemberInfo| {
                        if m.username.is_empty() { format!("member {}", hex(&m.key[..4])) } else { m.username.clone() }
                    };
                    let mut after_sorted: Vec<&MemberInfo> = after.iter().collect();
                    after_sorted.sort_by(|a, b| a.username.cmp(&b.username));
                    let mut before_sorted: Vec<&MemberInfo> = before.iter().collect();
                    before_sorted.sort_by(|a, b| a.username.cmp(&b.username));
                    for m in after_sorted.iter().filter(|m| !before.iter().any(|b| b.key == m.key)) {
                        let n = name(m);
                        let text = if m.key == me { "you joined".to_string() } else { format!("{n} joined") };
                        notices.push(("joined".into(), Some(n), text));
                    }
                    for m in before_sorted.iter().filter(|b| !after.iter().any(|m| m.key == b.key)) {
                        let n = name(m);
                        notices.push(("left".into(), Some(n.clone()), format!("{n} is no longer a member")));
                    }
                    for m in after.iter().filter(|m| m.admin && before.iter().any(|b| b.key == m.key && !b.admin)) {
                        let n = name(m);
                        notices.push(("promoted".into(), Some(n.clone()), format!("{n} is now an admin")));
                    }
                    if !after.iter().all(|m| m.verified) {
                        notices.push((
                            "unverified".into(),
                            None,
                            "a member has no valid installation certificate".into(),
                        ));
                    }
                }
                self.members.insert(group, after);
            }
            GroupEvent::MetaChanged { name, description, .. } => {
                if *name != old_name && !name.is_empty() {
                    notices.push(("renamed".into(), None, format!("the group is now called \"{name}\"")));
                } else {
                    notices.push(("described".into(), None, format!("new description: {description}")));
                }
            }
            GroupEvent::Removed { .. } => {
                notices.push(("removed".into(), None, "you are no longer a member of this group".into()));
                self.members.remove(&group);
            }
            GroupEvent::Joined { .. } | GroupEvent::Created { .. } => {
                self.members.insert(group, core.members(&group));
            }
            GroupEvent::Error { code: nymstr_proto::wire::ErrorCode::UnknownGroup, .. } => {
                self.unhosted.insert(group);
            }
            GroupEvent::EpochChanged { .. } | GroupEvent::Error { .. } => {}
        }
        let new_name = display_name(core, &group);
        if !new_name.starts_with('#') {
            self.names.insert(group, new_name);
        }
        let mut lines = Vec::new();
        if let Some((kind, own)) = message {
            let line = GroupLine { seq: 0, at_us: now, group, group_name: old_name.clone(), kind, read: own };
            lines.push(self.home.record_group_line(line)?);
        }
        for (kind, who, text) in notices {
            let line = GroupLine {
                seq: 0,
                at_us: now,
                group,
                group_name: old_name.clone(),
                kind: GroupLineKind::Notice { kind, who, text },
                read: false,
            };
            lines.push(self.home.record_group_line(line)?);
        }
        Ok(lines)
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

/// A group's name, else `#` and the start of its id.
pub fn display_name(core: &GroupCore, group: &GroupId) -> String {
    match core.name(group) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => short_id(group),
    }
}

pub fn short_id(group: &GroupId) -> String {
    format!("#{}", hex(&group[..4]))
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
