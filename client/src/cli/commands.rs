//! One function per command. Network commands build a `Session`, state a `Goal`, and let
//! the session drive the core until the goal is met.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use nymstr_proto::identity;
use nymstr_proto::wire::MsgId;
use serde_json::json;
use tokio::time::Instant;

use crate::cli::error::{CliError, describe_code};
use crate::cli::groups::{resolve, show_group_line, show_invite, show_new_invite};
use crate::cli::output::{Printer, entry_json, entry_line, fingerprint, hex, via_name};
use crate::cli::session::{Flow, Goal, Session, now_us, os_rng};
use crate::persist::{Direction, GroupLine, HistoryEntry, Home, Status};
use nymstr_client_core::core::{BODY_BYTES_MAX, Event, Identity, Operation, contact_name};
use nymstr_client_core::group::GroupEvent;
use nymstr_client_core::seal::DirectAddress;

// --- offline commands ---

pub fn init(dir: &Path, out: &Printer) -> Result<(), CliError> {
    let identity = Identity::generate(&mut os_rng()?, now_us());
    let home = Home::create(dir, &identity.to_state())?;
    let fp = fingerprint(&identity.cert.account_key);
    out.data(
        || {
            format!(
                "initialised {}\naccount key: {fp}\nnext: nymstr register NAME --node HOST:PORT",
                home.dir().display()
            )
        },
        || {
            json!({
                "type": "initialised",
                "home": home.dir().display().to_string(),
                "account_key": hex(&identity.cert.account_key),
                "installation_id": hex(&identity.installation_id),
            })
        },
    );
    Ok(())
}

fn open_home(dir: &Path) -> Result<Home, CliError> {
    Ok(Home::open(dir)?)
}

pub fn contacts(dir: &Path, out: &Printer) -> Result<(), CliError> {
    let home = open_home(dir)?;
    let state = home.state();
    let now = now_us();
    if state.pins.is_empty() {
        out.human("no contacts yet (they are pinned at the first lookup or message)");
        return Ok(());
    }
    for (name, key) in state.pins.values() {
        let contact = state.contacts.get(name);
        let peer = state.direct.get(name);
        let routes: Vec<String> = peer
            .map(|p| {
                p.routes
                    .values()
                    .map(|r| {
                        if r.down_until_us > now {
                            format!("{} (unreachable lately)", r.addr)
                        } else {
                            r.addr.to_string()
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let direct = match peer {
            Some(p) if p.enabled && !routes.is_empty() => "on",
            Some(p) if p.enabled => "agreed, no address yet",
            Some(p) if !p.routes.is_empty() => "offered by them",
            _ => "off",
        };
        out.data(
            || {
                let devices = contact.map_or("devices unknown".to_string(), |c| {
                    format!("{} device{}", c.installations.len(), if c.installations.len() == 1 { "" } else { "s" })
                });
                let mut line = format!("{name}\n  key: {}\n  {devices}; direct: {direct}", fingerprint(key));
                for r in &routes {
                    line.push_str(&format!("\n  direct address: {r}"));
                }
                line
            },
            || {
                json!({
                    "type": "contact",
                    "username": name,
                    "account_key": hex(key),
                    "installations": contact.map(|c| c.installations.iter()
                        .map(|i| hex(&identity::installation_id(&i.signing_key))).collect::<Vec<_>>()),
                    "direct": direct,
                    "direct_addresses": routes,
                })
            },
        );
    }
    Ok(())
}

pub fn history(dir: &Path, out: &Printer, name: Option<String>, limit: usize) -> Result<(), CliError> {
    let home = open_home(dir)?;
    let name = name.map(|n| contact_name(&n)).transpose().map_err(|e| CliError::Usage(e.to_string()))?;
    let me = home.state().username.unwrap_or_default();
    let entries = home.history(name.as_deref(), limit)?;
    if entries.is_empty() {
        out.human("no messages");
    }
    for e in &entries {
        out.data(|| entry_line(e), || entry_json(e, &me));
        if e.direction == Direction::In && !e.read {
            home.mark_read(e)?;
        }
    }
    home.flush()?;
    Ok(())
}

pub fn trust(dir: &Path, out: &Printer, name: &str, key: &str) -> Result<(), CliError> {
    let home = open_home(dir)?;
    let cleaned: String = key.chars().filter(|c| !c.is_whitespace()).collect();
    let key: [u8; 32] = hex::decode(&cleaned)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CliError::Usage("--key must be 64 hex digits (an account key)".into()))?;
    let mut session = Session::open(home, Printer::new(out.json), String::new(), Duration::from_secs(1))?;
    session.core.trust(name, key)?;
    session.persist()?;
    let name = identity::normalize_username(name).map_err(|e| CliError::Usage(e.to_string()))?;
    out.data(
        || format!("{name} is now pinned to {}", fingerprint(&key)),
        || json!({ "type": "trusted", "username": name, "account_key": hex(&key) }),
    );
    Ok(())
}

pub fn status(dir: &Path, out: &Printer) -> Result<(), CliError> {
    let home = open_home(dir)?;
    let state = home.state();
    let id = state.identity.as_ref().ok_or_else(|| CliError::NotInitialised(dir.to_path_buf()))?;
    let node = home.node_addr()?;
    let unread = home.unread()?.len();
    let pending = state
        .outgoing
        .values()
        .filter(|d| matches!(d.content, nymstr_client_core::seal::DmContent::Text { .. }))
        .count();
    let username = if state.registered { state.username.clone() } else { None };
    out.data(
        || {
            format!(
                "home: {}\nusername: {}\nnode: {}\naccount key: {}\ninstallation: {}\nunread messages: {unread}\n\
                 messages waiting for an acknowledgement: {pending}",
                home.dir().display(),
                username.as_deref().unwrap_or("(not registered)"),
                node.as_deref().unwrap_or("(none)"),
                fingerprint(&id.cert.account_key),
                hex(&identity::installation_id(&id.cert.signing_key)),
            )
        },
        || {
            json!({
                "type": "status",
                "home": home.dir().display().to_string(),
                "username": username,
                "registered": state.registered,
                "node": node,
                "account_key": hex(&id.cert.account_key),
                "installation_id": hex(&identity::installation_id(&id.cert.signing_key)),
                "unread": unread,
                "pending": pending,
            })
        },
    );
    Ok(())
}

// --- network commands ---

/// `HOST:PORT`, checked before anything is tried.
pub(super) fn check_node_addr(addr: &str) -> Result<(), CliError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(CliError::Usage(format!("--node {addr}: expected HOST:PORT, for example 127.0.0.1:7000"))),
    }
}

/// Opens the home for a network command: the node is `--node`, else the saved one.
pub(super) fn session(dir: &Path, out: Printer, node: Option<String>, timeout: Duration) -> Result<Session, CliError> {
    if let Some(node) = &node {
        check_node_addr(node)?;
    }
    let home = open_home(dir)?;
    let node = match node {
        Some(n) => n,
        None => home.node_addr()?.ok_or(CliError::NotRegistered)?,
    };
    Session::open(home, out, node, timeout)
}

fn require_registered(s: &Session) -> Result<(), CliError> {
    if s.core.is_registered() { Ok(()) } else { Err(CliError::NotRegistered) }
}

fn node_timeout(s: &Session, what: &str) -> CliError {
    CliError::Timeout { node: s.node_addr.clone(), secs: s.timeout.as_secs(), what: what.to_string() }
}

pub(super) fn login_failed(ev: &Event) -> Option<CliError> {
    match ev {
        Event::Failed { what: Operation::Login, code, detail } => {
            Some(CliError::Refused { what: "login".into(), reason: describe_code(*code, detail) })
        }
        _ => None,
    }
}

pub(super) fn key_changed(ev: &Event, name: &str) -> Option<CliError> {
    match ev {
        Event::KeyChanged { username, pinned, offered } if username == name => {
            Some(CliError::KeyChanged { username: username.clone(), pinned: hex(pinned), offered: hex(offered) })
        }
        _ => None,
    }
}

pub async fn register(dir: &Path, out: Printer, name: &str, node: &str, timeout: Duration) -> Result<(), CliError> {
    let name = identity::normalize_username(name).map_err(|e| CliError::Usage(e.to_string()))?;
    check_node_addr(node)?;
    let home = open_home(dir)?;
    let state = home.state();
    if state.registered {
        return Err(CliError::AlreadyRegistered { username: state.username.unwrap_or_default() });
    }
    let mut s = Session::open(home, out, node.to_string(), timeout)?;
    s.connect().await?;
    s.core.register(now_us(), &name)?;

    struct RegisterGoal {
        name: String,
    }
    impl Goal for RegisterGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, _: Option<&HistoryEntry>) -> Flow {
            match ev {
                Event::Registered { .. } => {
                    if let Err(e) = s.home.set_node_addr(&s.node_addr) {
                        return Flow::Done(Err(e.into()));
                    }
                    let key = s.core.identity().map(|i| i.cert.account_key).unwrap_or_default();
                    let (name, node) = (self.name.clone(), s.node_addr.clone());
                    s.out.data(
                        || format!("registered {name} at node {node}\naccount key: {}", fingerprint(&key)),
                        || json!({ "type": "registered", "username": name, "node": node, "account_key": hex(&key) }),
                    );
                    Flow::Done(Ok(()))
                }
                Event::Failed { what: Operation::Register, code, detail } => Flow::Done(Err(CliError::Refused {
                    what: format!("registration of {}", self.name),
                    reason: describe_code(*code, detail),
                })),
                _ => Flow::Continue,
            }
        }
        fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
            Err(node_timeout(s, "the registration"))
        }
    }
    let deadline = Instant::now() + timeout;
    s.drive(&mut RegisterGoal { name }, Some(deadline)).await
}

pub async fn lookup(
    dir: &Path,
    out: Printer,
    name: &str,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    let name = contact_name(name).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut s = session(dir, out, node, timeout)?;
    s.connect().await?;
    let first_pin = s.core.pinned(&name).is_none();
    s.core.lookup(now_us(), &name)?;

    struct LookupGoal {
        name: String,
        first_pin: bool,
    }
    impl Goal for LookupGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, _: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = key_changed(ev, &self.name) {
                return Flow::Done(Err(e));
            }
            match ev {
                Event::LookedUp { username } if *username == self.name => {
                    let Some(c) = s.core.contact(username).cloned() else { return Flow::Continue };
                    let pin = if self.first_pin { "pinned now, on first use" } else { "matches the pinned key" };
                    let name = self.name.clone();
                    let first = self.first_pin;
                    s.out.data(
                        || {
                            let mut t = format!("{name}\n  key: {}  ({pin})", fingerprint(&c.account_key));
                            for i in &c.installations {
                                t.push_str(&format!(
                                    "\n  device {} (since {})",
                                    hex(&identity::installation_id(&i.signing_key)),
                                    crate::cli::output::time(i.created_at_us)
                                ));
                            }
                            t
                        },
                        || {
                            json!({
                                "type": "user",
                                "username": name,
                                "account_key": hex(&c.account_key),
                                "pinned": if first { "new" } else { "match" },
                                "installations": c.installations.iter().map(|i| json!({
                                    "id": hex(&identity::installation_id(&i.signing_key)),
                                    "created_at_us": i.created_at_us,
                                })).collect::<Vec<_>>(),
                            })
                        },
                    );
                    Flow::Done(Ok(()))
                }
                Event::Failed { what: Operation::Lookup(n), code, detail } if *n == self.name => {
                    Flow::Done(Err(CliError::Refused {
                        what: format!("lookup of {}", self.name),
                        reason: describe_code(*code, detail),
                    }))
                }
                _ => Flow::Continue,
            }
        }
        fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
            Err(node_timeout(s, "the lookup"))
        }
    }
    let deadline = Instant::now() + timeout;
    s.drive(&mut LookupGoal { name, first_pin }, Some(deadline)).await
}

pub(super) fn message_text(text: Vec<String>, max: usize) -> Result<Vec<u8>, CliError> {
    let body = if text.len() == 1 && text[0] == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| CliError::Usage(format!("cannot read the message from standard input: {e}")))?;
        buf.trim_end_matches(['\n', '\r']).to_string()
    } else {
        text.join(" ")
    };
    if body.is_empty() {
        return Err(CliError::Usage("the message is empty".into()));
    }
    if body.len() > max {
        return Err(CliError::Usage(format!("the message has {} bytes; the limit is {max}", body.len())));
    }
    Ok(body.into_bytes())
}

/// Notes received messages a non-interactive command consumed (they stay unread).
fn note_unread(s: &Session, count: usize) {
    if count > 0 {
        s.out.notice(
            "unread",
            &format!("{count} new message{} arrived; `nymstr inbox` shows them", if count == 1 { "" } else { "s" }),
            json!({ "count": count }),
        );
    }
}

pub async fn send(
    dir: &Path,
    out: Printer,
    name: &str,
    text: Vec<String>,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    let to = contact_name(name).map_err(|e| CliError::Usage(e.to_string()))?;
    let body = message_text(text, BODY_BYTES_MAX)?;
    let mut s = match session(dir, Printer::new(out.json), node, timeout) {
        Err(CliError::Busy(home)) => return send_through_listen(&home, &out, &to, body, timeout).await,
        other => other?,
    };
    require_registered(&s)?;
    if Some(to.as_str()) == s.core.username() {
        return Err(CliError::Usage("you cannot send a message to yourself".into()));
    }
    // Connect before anything is stored: an unreachable node means nothing was sent.
    s.connect().await?;
    let now = now_us();
    s.core.login(now)?;
    let msg_id = s.core.send_dm(now, &to, &body)?;
    s.record_outgoing(&to, msg_id, &body, now)?;

    struct SendGoal {
        to: String,
        msg_id: MsgId,
        acked: bool,
        received: usize,
    }
    impl Goal for SendGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, entry: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = login_failed(ev).or_else(|| key_changed(ev, &self.to)) {
                return Flow::Done(Err(e));
            }
            match ev {
                Event::SendAcked { msg_id, .. } if *msg_id == self.msg_id => {
                    self.acked = true;
                    let via = entry.and_then(|e| e.via);
                    let (to, id) = (self.to.clone(), hex(msg_id));
                    s.out.data(
                        || match via {
                            Some(nymstr_client_core::core::Via::Direct) => format!("delivered to {to} directly"),
                            _ => format!("sent to {to} (the node holds it for them)"),
                        },
                        || json!({ "type": "sent", "to": to, "msg_id": id, "via": via_name(via).to_string() }),
                    );
                }
                Event::Failed { what: Operation::Send { msg_id, .. }, code, detail } if *msg_id == self.msg_id => {
                    return Flow::Done(Err(CliError::Refused {
                        what: format!("message to {}", self.to),
                        reason: describe_code(*code, detail),
                    }));
                }
                Event::Received { .. } => self.received += 1,
                _ => {}
            }
            Flow::Continue
        }
        fn check(&mut self, s: &mut Session) -> Flow {
            // Messages left over from earlier runs go too: wait for them while there is time.
            if self.acked && s.core.unacked_sends() == 0 {
                note_unread(s, self.received);
                return Flow::Done(Ok(()));
            }
            Flow::Continue
        }
        fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
            note_unread(s, self.received);
            if self.acked {
                return Ok(());
            }
            Err(CliError::Queued { to: self.to.clone(), msg_id: hex(&self.msg_id), secs: s.timeout.as_secs() })
        }
    }
    let deadline = Instant::now() + timeout;
    s.drive(&mut SendGoal { to, msg_id, acked: false, received: 0 }, Some(deadline)).await
}

/// The home is locked by another process: hand the message to its `listen`, if that is
/// what holds it.
#[cfg(unix)]
async fn send_through_listen(
    home: &Path,
    out: &Printer,
    to: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), CliError> {
    use crate::cli::control::{self, Handoff};
    let text = String::from_utf8(body).map_err(|_| CliError::Usage("the message is not UTF-8 text".into()))?;
    match control::send(home, to, &text, timeout).await? {
        Handoff::NoListener => Err(CliError::Busy(home.to_path_buf())),
        Handoff::Lost => Err(CliError::Remote {
            kind: "handoff".into(),
            message: "the running `nymstr listen` stopped before answering; `nymstr history` shows whether it \
                      kept the message"
                .into(),
            exit_code: 1,
        }),
        Handoff::TimedOut => {
            Err(CliError::Queued { to: to.to_string(), msg_id: "(handed to listen)".into(), secs: timeout.as_secs() })
        }
        Handoff::Answer(v) if v["ok"] == true => {
            let via = v["via"].as_str().unwrap_or("").to_string();
            let id = v["msg_id"].as_str().unwrap_or("").to_string();
            out.data(
                || match via.as_str() {
                    "direct" => format!("delivered to {to} directly (through the running `nymstr listen`)"),
                    _ => format!("sent to {to} (through the running `nymstr listen`)"),
                },
                || json!({ "type": "sent", "to": to, "msg_id": id, "via": via }),
            );
            Ok(())
        }
        Handoff::Answer(v) => Err(CliError::Remote {
            kind: v["error"].as_str().unwrap_or("remote").to_string(),
            message: v["message"].as_str().unwrap_or("the running `nymstr listen` refused the message").to_string(),
            exit_code: v["exit_code"].as_u64().and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        }),
    }
}

#[cfg(not(unix))]
async fn send_through_listen(home: &Path, _: &Printer, _: &str, _: Vec<u8>, _: Duration) -> Result<(), CliError> {
    Err(CliError::Busy(home.to_path_buf()))
}

/// Prints a received message and marks it read.
fn show(s: &Session, e: &HistoryEntry) -> Result<(), CliError> {
    let me = s.me();
    s.out.data(|| entry_line(e), || entry_json(e, &me));
    s.home.mark_read(e)?;
    Ok(())
}

pub async fn inbox(
    dir: &Path,
    out: Printer,
    wait: Option<u64>,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    let mut s = session(dir, out, node, timeout)?;
    require_registered(&s)?;
    s.enable_groups(true)?;
    // Messages an earlier command received and nobody has seen yet come first.
    let mut shown = 0usize;
    for e in s.home.unread()? {
        show(&s, &e)?;
        shown += 1;
    }
    for l in s.home.group_unread()? {
        show_group_line(&s, &l)?;
        shown += 1;
    }
    for r in s.home.invites()?.into_iter().filter(|r| !r.shown) {
        show_invite(&s, &r)?;
        shown += 1;
    }
    s.home.flush()?;
    s.connect().await?;
    s.core.login(now_us())?;

    struct InboxGoal {
        key_changed: Option<CliError>,
        queued: Option<u64>,
        wait: Option<Duration>,
        listen_until: Option<Instant>,
        shown: usize,
    }
    impl Goal for InboxGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, entry: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = login_failed(ev) {
                return Flow::Done(Err(e));
            }
            if let Event::KeyChanged { username, .. } = ev {
                self.key_changed = key_changed(ev, username);
            }
            match (ev, entry) {
                (Event::LoggedIn { queued }, _) => self.queued = Some(u64::from(*queued)),
                (Event::Received { .. }, Some(e)) => {
                    if let Err(err) = show(s, e) {
                        return Flow::Done(Err(err));
                    }
                    self.shown += 1;
                }
                (Event::GroupInvited { .. }, _) => match show_new_invite(s, ev) {
                    Ok(n) => self.shown += n,
                    Err(err) => return Flow::Done(Err(err)),
                },
                _ => {}
            }
            Flow::Continue
        }
        fn on_group_event(&mut self, s: &mut Session, ev: &GroupEvent, lines: &[GroupLine]) -> Flow {
            for l in lines.iter().filter(|l| !l.read) {
                if let Err(err) = show_group_line(s, l) {
                    return Flow::Done(Err(err));
                }
                self.shown += 1;
            }
            group_error_notice(s, ev);
            Flow::Continue
        }
        fn check(&mut self, s: &mut Session) -> Flow {
            let Some(queued) = self.queued else { return Flow::Continue };
            let drained = s.core.deliveries_handled() >= queued && s.core.is_idle() && s.groups_settled();
            if !drained {
                return Flow::Continue;
            }
            match (self.wait, self.listen_until) {
                (Some(wait), None) => {
                    self.listen_until = Some(Instant::now() + wait);
                    Flow::Continue
                }
                (Some(_), Some(until)) if Instant::now() < until => Flow::Continue,
                _ => {
                    if self.shown == 0 {
                        s.out.human("no new messages");
                    }
                    // Messages were shown; a changed key is still the news to exit with.
                    Flow::Done(self.key_changed.take().map_or(Ok(()), Err))
                }
            }
        }
        fn wake_at(&self) -> Option<Instant> {
            self.listen_until
        }
        fn on_deadline(&mut self, s: &mut Session) -> Result<(), CliError> {
            match self.queued {
                None => Err(node_timeout(s, "the login")),
                Some(queued) => {
                    let missing = queued.saturating_sub(s.core.deliveries_handled());
                    if missing > 0 {
                        s.out.notice(
                            "incomplete",
                            &format!("{missing} queued message(s) did not arrive in time; run `nymstr inbox` again"),
                            json!({ "missing": missing }),
                        );
                    }
                    self.key_changed.take().map_or(Ok(()), Err)
                }
            }
        }
    }
    let wait = wait.map(Duration::from_secs);
    // The drain gets `--timeout`; `--wait` adds its listening time on top.
    let deadline = Instant::now() + timeout + wait.unwrap_or_default();
    let mut goal = InboxGoal { key_changed: None, queued: None, wait, listen_until: None, shown };
    s.drive(&mut goal, Some(deadline)).await
}

pub async fn listen(
    dir: &Path,
    mut out: Printer,
    direct: Option<String>,
    advertise: Option<String>,
    offer: Vec<String>,
    node: Option<String>,
    timeout: Duration,
) -> Result<(), CliError> {
    out.events_on_stdout = true;
    let offer = offer
        .iter()
        .map(|n| identity::normalize_username(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut s = session(dir, out, node, timeout)?;
    require_registered(&s)?;
    let direct_addr = match &direct {
        Some(bind) => {
            let local = s.listen_direct(bind).await?;
            let advertised = match advertise {
                Some(a) => a,
                None if local.ip().is_unspecified() => {
                    return Err(CliError::Usage(format!(
                        "listening on {local}: pass --advertise HOST:PORT, the address contacts should connect to"
                    )));
                }
                None => local.to_string(),
            };
            let addr = DirectAddress::Tcp(advertised);
            if !addr.is_valid() {
                return Err(CliError::Usage(format!("{addr} is not a valid HOST:PORT")));
            }
            Some(addr)
        }
        None => None,
    };
    s.enable_groups(true)?;
    s.connect().await?;
    s.keep_connected = true;
    s.core.login(now_us())?;
    s.read_stdin();
    s.serve_control()?;

    struct ListenGoal {
        direct: Option<DirectAddress>,
        offer: Vec<String>,
        started: bool,
        /// Peer for plain lines (`/to NAME`).
        to: Option<String>,
        stopping_until: Option<Instant>,
        /// Messages handed over by `nymstr send`, answered when acknowledged.
        #[cfg(unix)]
        handoffs: std::collections::BTreeMap<MsgId, (String, tokio::sync::oneshot::Sender<serde_json::Value>)>,
    }
    impl ListenGoal {
        fn send(&mut self, s: &mut Session, to: &str, text: &str) -> Result<MsgId, CliError> {
            let now = now_us();
            let to = contact_name(to).map_err(|e| CliError::Usage(format!("{to}: {e}")))?;
            if s.core.username() == Some(to.as_str()) {
                return Err(CliError::Usage("you cannot send a message to yourself".into()));
            }
            let msg_id = s.core.send_dm(now, &to, text.as_bytes())?;
            s.record_outgoing(&to, msg_id, text.as_bytes(), now)?;
            s.out.notice(
                "queued",
                &format!("sending to {to}"),
                json!({ "to": to, "msg_id": hex(&msg_id), "text": text }),
            );
            Ok(msg_id)
        }

        fn send_typed(&mut self, s: &mut Session, to: &str, text: &str) {
            if let Err(e) = self.send(s, to, text) {
                s.out.notice("error", &e.to_string(), json!({ "message": e.to_string() }));
            }
        }

        /// Answers `nymstr send` processes waiting for this event, if any.
        #[cfg(unix)]
        fn answer_handoffs(&mut self, ev: &Event, entry: Option<&HistoryEntry>) {
            use crate::cli::control::failure;
            match ev {
                Event::SendAcked { msg_id, .. } | Event::Failed { what: Operation::Send { msg_id, .. }, .. } => {
                    let Some((to, reply)) = self.handoffs.remove(msg_id) else { return };
                    let answer = match (ev, entry.map(|e| &e.status)) {
                        (Event::Failed { code, detail, .. }, _) => {
                            let e = CliError::Refused {
                                what: format!("message to {to}"),
                                reason: describe_code(*code, detail),
                            };
                            failure(e.kind(), &e.to_string(), e.exit_code())
                        }
                        (_, status) => json!({
                            "ok": true,
                            "to": to,
                            "msg_id": hex(msg_id),
                            "via": if status == Some(&Status::Delivered) { "direct" } else { "relay" },
                        }),
                    };
                    let _ = reply.send(answer);
                }
                Event::KeyChanged { username, .. } => {
                    let Some(e) = key_changed(ev, username) else { return };
                    let ids: Vec<MsgId> =
                        self.handoffs.iter().filter(|(_, (to, _))| to == username).map(|(id, _)| *id).collect();
                    for id in ids {
                        if let Some((_, reply)) = self.handoffs.remove(&id) {
                            let _ = reply.send(failure(e.kind(), &e.to_string(), e.exit_code()));
                        }
                    }
                }
                _ => {}
            }
        }
        fn stop(&mut self, s: &mut Session) -> Flow {
            if self.stopping_until.is_some() || !s.is_connected() {
                return Flow::Done(Ok(()));
            }
            // Tell contacts our direct address is gone, if the node takes it in time.
            match s.core.withdraw_direct(now_us()) {
                Ok(ids) if !ids.is_empty() => {
                    self.stopping_until = Some(Instant::now() + Duration::from_secs(3));
                    Flow::Continue
                }
                _ => Flow::Done(Ok(())),
            }
        }
    }
    impl Goal for ListenGoal {
        fn on_event(&mut self, s: &mut Session, ev: &Event, entry: Option<&HistoryEntry>) -> Flow {
            if let Some(e) = login_failed(ev) {
                return Flow::Done(Err(e));
            }
            #[cfg(unix)]
            self.answer_handoffs(ev, entry);
            match (ev, entry) {
                (Event::LoggedIn { queued }, _) if !self.started => {
                    self.started = true;
                    let now = now_us();
                    if let Err(e) = s.core.set_direct_address(now, self.direct.clone(), true) {
                        return Flow::Done(Err(e.into()));
                    }
                    for peer in std::mem::take(&mut self.offer) {
                        if let Err(e) = s.core.offer_direct(now, &peer) {
                            return Flow::Done(Err(e.into()));
                        }
                    }
                    let me = s.me();
                    let direct = self.direct.as_ref().map(|a| a.to_string());
                    s.out.notice(
                        "ready",
                        &format!(
                            "listening as {me} ({queued} queued){}; type /help for commands, Ctrl-C to stop",
                            direct.as_ref().map(|d| format!(", direct at {d}")).unwrap_or_default()
                        ),
                        json!({ "username": me, "queued": queued, "direct": direct }),
                    );
                    // Group lines and invitations an earlier command received.
                    let unread = s.home.group_unread().and_then(|l| Ok((l, s.home.invites()?)));
                    match unread {
                        Ok((lines, invites)) => {
                            for l in lines {
                                if let Err(e) = show_group_line(s, &l) {
                                    return Flow::Done(Err(e));
                                }
                            }
                            for r in invites.into_iter().filter(|r| !r.shown) {
                                if let Err(e) = show_invite(s, &r) {
                                    return Flow::Done(Err(e));
                                }
                            }
                        }
                        Err(e) => return Flow::Done(Err(e.into())),
                    }
                }
                (Event::GroupInvited { .. }, _) => {
                    if let Err(e) = show_new_invite(s, ev) {
                        return Flow::Done(Err(e));
                    }
                }
                (Event::Received { .. }, Some(e)) => {
                    if let Err(err) = show(s, e) {
                        return Flow::Done(Err(err));
                    }
                }
                (Event::SendAcked { .. } | Event::Failed { what: Operation::Send { .. }, .. }, Some(e)) => {
                    let (to, id, via, status) = (e.peer.clone(), hex(&e.msg_id), e.via, e.status.clone());
                    let text = match &status {
                        Status::Failed(reason) => format!("message to {to} failed: {reason}"),
                        Status::Delivered => format!("delivered to {to} directly"),
                        _ => format!("sent to {to}"),
                    };
                    let mut fields = json!({ "to": to, "msg_id": id, "via": via_name(via), "status": status.name() });
                    if let Status::Failed(reason) = &status {
                        fields["reason"] = json!(reason);
                    }
                    s.out.notice(if matches!(status, Status::Failed(_)) { "failed" } else { "sent" }, &text, fields);
                }
                _ => {}
            }
            Flow::Continue
        }
        fn on_group_event(&mut self, s: &mut Session, ev: &GroupEvent, lines: &[GroupLine]) -> Flow {
            for l in lines {
                let result = if l.read {
                    // Our own message, now in the group's log.
                    if let crate::persist::GroupLineKind::Message { msg_id, log_seq, .. } = &l.kind {
                        s.out.notice(
                            "group_sent",
                            &format!("sent to [{}] (#{log_seq})", l.group_name),
                            json!({ "group": hex(&l.group), "group_name": l.group_name, "msg_id": hex(msg_id), "seq": log_seq }),
                        );
                    }
                    Ok(())
                } else {
                    show_group_line(s, l)
                };
                if let Err(e) = result {
                    return Flow::Done(Err(e));
                }
            }
            group_error_notice(s, ev);
            Flow::Continue
        }
        fn check(&mut self, s: &mut Session) -> Flow {
            match self.stopping_until {
                Some(until) if Instant::now() >= until || s.core.unacked_sends() == 0 => Flow::Done(Ok(())),
                _ => Flow::Continue,
            }
        }
        fn wake_at(&self) -> Option<Instant> {
            self.stopping_until
        }
        fn on_deadline(&mut self, _s: &mut Session) -> Result<(), CliError> {
            Ok(())
        }
        fn on_line(&mut self, s: &mut Session, line: &str) -> Flow {
            let line = line.trim();
            if line.is_empty() {
                return Flow::Continue;
            }
            let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            let usage = |s: &Session, text: &str| s.out.notice("usage", text, json!({ "message": text }));
            match cmd {
                "/msg" | "/m" | "/send" => match rest.split_once(char::is_whitespace) {
                    Some((to, text)) if !text.trim().is_empty() => self.send_typed(s, to, text.trim()),
                    _ => usage(s, "usage: /msg NAME TEXT"),
                },
                "/to" if !rest.is_empty() => {
                    self.to = Some(rest.to_string());
                    s.out.notice("to", &format!("plain lines now go to {rest}"), json!({ "to": rest }));
                }
                "/direct" if !rest.is_empty() => {
                    if let Err(e) = s.core.offer_direct(now_us(), rest) {
                        usage(s, &format!("/direct {rest}: {e} (start with `listen --direct HOST:PORT`)"));
                    }
                }
                "/direct-off" if !rest.is_empty() => {
                    if let Err(e) = s.core.disable_direct(now_us(), rest) {
                        usage(s, &format!("/direct-off {rest}: {e}"));
                    }
                }
                "/g" | "/group" => match rest.split_once(char::is_whitespace) {
                    Some((group, text)) if !text.trim().is_empty() => {
                        let sent = resolve(s, group).and_then(|g| {
                            let name = s.group_name(&g);
                            s.gcore()
                                .send(now_us(), &g, text.trim())
                                .map(|id| (g, id, name.clone()))
                                .map_err(|e| CliError::Usage(format!("[{name}] {e}")))
                        });
                        match sent {
                            Ok((g, id, name)) => s.out.notice(
                                "group_queued",
                                &format!("sending to [{name}]"),
                                json!({ "group": hex(&g), "group_name": name, "msg_id": hex(&id), "text": text.trim() }),
                            ),
                            Err(e) => usage(s, &e.to_string()),
                        }
                    }
                    _ => usage(s, "usage: /g GROUP TEXT"),
                },
                "/quit" | "/exit" => return self.stop(s),
                "/help" | "/?" => usage(
                    s,
                    "commands: /msg NAME TEXT, /to NAME (then type plain lines), /g GROUP TEXT, /direct NAME, /direct-off NAME, \
                     /quit",
                ),
                _ if !line.starts_with('/') => match self.to.clone() {
                    Some(to) => self.send_typed(s, &to, line),
                    None => usage(s, "who to? use /msg NAME TEXT, or /to NAME first"),
                },
                _ => usage(s, &format!("unknown command {cmd}; /help lists them")),
            }
            Flow::Continue
        }
        fn on_interrupt(&mut self, s: &mut Session) -> Flow {
            self.stop(s)
        }
        #[cfg(unix)]
        fn on_control(&mut self, s: &mut Session, req: crate::cli::control::ControlRequest) {
            use crate::cli::control::failure;
            if self.stopping_until.is_some() {
                let _ = req.reply.send(failure("busy", "the listening process is stopping", 5));
                return;
            }
            let result = if req.text.is_empty() || req.text.len() > BODY_BYTES_MAX {
                Err(CliError::Usage(format!("the message must have 1 to {BODY_BYTES_MAX} bytes")))
            } else {
                self.send(s, &req.to, &req.text)
            };
            match result {
                Ok(msg_id) => {
                    let to = contact_name(&req.to).unwrap_or_default();
                    self.handoffs.insert(msg_id, (to, req.reply));
                }
                Err(e) => {
                    let _ = req.reply.send(failure(e.kind(), &e.to_string(), e.exit_code()));
                }
            }
        }
    }
    let mut goal = ListenGoal {
        direct: direct_addr,
        offer,
        started: false,
        to: None,
        stopping_until: None,
        #[cfg(unix)]
        handoffs: Default::default(),
    };
    s.drive(&mut goal, None).await
}

/// Tells the user about a group failure nobody waits for (`inbox`, `listen`).
fn group_error_notice(s: &Session, ev: &GroupEvent) {
    if let GroupEvent::Error { group, code, detail } = ev {
        let name = s.group_name(group);
        let text = format!("[{name}] {}", describe_code(*code, detail));
        s.out.notice(
            "group_error",
            &text,
            json!({ "group": hex(group), "group_name": name, "code": *code as u32, "detail": detail }),
        );
    }
}
