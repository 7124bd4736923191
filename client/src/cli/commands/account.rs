//! The account and what it knows: `init` (keys), `register` and `lookup` at the node,
//! `trust` (a changed key), `contacts` and `status` (offline).

use std::path::Path;
use std::time::Duration;

use nymstr_proto::identity;
use serde_json::json;

use crate::cli::clock::{deadline_after, now_us, os_rng};
use crate::cli::common::{key_changed, node_timeout, open_home, session};
use crate::cli::error::{CliError, describe_code};
use crate::cli::input::check_node_addr;
use crate::cli::output::{Printer, fingerprint, hex};
use crate::cli::session::{Flow, Goal, Session};
use crate::persist::{HistoryEntry, Home};
use nymstr_client_core::core::{Event, Identity, Operation, contact_name};

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
    let name = contact_name(name).map_err(|e| CliError::Usage(e.to_string()))?;
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
    let deadline = deadline_after(timeout);
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
    let deadline = deadline_after(timeout);
    s.drive(&mut LookupGoal { name, first_pin }, Some(deadline)).await
}
