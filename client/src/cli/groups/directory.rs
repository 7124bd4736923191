//! `nymstr directory`: the public groups a node lists, with their adverts' signatures
//! checked; also used by `group join` to name a group joined by id.

use std::path::Path;
use std::time::Duration;

use nymstr_proto::identity;
use nymstr_proto::wire::{Body, Envelope, GroupAdvert};
use serde_json::json;

use crate::cli::error::{CliError, describe_code};
use crate::cli::input::check_node_addr;
use crate::cli::output::{Printer, hex};
use crate::net::{self, Connection};

pub(super) fn advert_is_valid(a: &GroupAdvert) -> bool {
    identity::verify(&a.admin_key, &identity::group_advert_bytes(a), &a.sig).is_ok()
}

/// Asks `node` for its directory of public groups (one request on its own connection).
pub(super) async fn fetch_directory(node: &str, timeout: Duration) -> Result<Vec<GroupAdvert>, CliError> {
    let mut conn = Connection::connect(node, net::CONNECT_TIMEOUT).await.map_err(CliError::Node)?;
    conn.send(&Envelope { request_id: 1, body: Body::DirectoryRequest }).await.map_err(CliError::Node)?;
    let work = async {
        loop {
            let bytes = conn.recv().await.map_err(CliError::Node)?;
            let Ok(env) = nymstr_proto::codec::decode_frame(&bytes) else { continue };
            if env.request_id != 1 {
                continue;
            }
            match env.body {
                Body::Directory { adverts } => return Ok(adverts),
                Body::Error { code, detail } => {
                    return Err(CliError::Refused {
                        what: "the directory".into(),
                        reason: describe_code(code, &detail),
                    });
                }
                _ => {}
            }
        }
    };
    let r = tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(CliError::Timeout { node: node.to_string(), secs: timeout.as_secs(), what: "the directory".into() })
    });
    conn.close().await;
    r
}

/// `nymstr directory`: the public groups a node lists.
pub async fn directory(dir: &Path, out: &Printer, node: Option<String>, timeout: Duration) -> Result<(), CliError> {
    let node = match node {
        Some(n) => {
            check_node_addr(&n)?;
            n
        }
        None => {
            let home = crate::persist::Home::open(dir)?;
            home.node_addr()?.ok_or(CliError::NotRegistered)?
        }
    };
    let adverts = fetch_directory(&node, timeout).await?;
    let (valid, invalid): (Vec<GroupAdvert>, Vec<GroupAdvert>) = adverts.into_iter().partition(advert_is_valid);
    if !invalid.is_empty() {
        out.notice(
            "invalid_adverts",
            &format!("{} advert(s) with a bad signature were left out", invalid.len()),
            json!({ "count": invalid.len() }),
        );
    }
    if valid.is_empty() {
        out.human(&format!("no public groups at node {node}"));
    }
    for a in &valid {
        let host =
            if a.group_node.is_empty() { node.clone() } else { String::from_utf8_lossy(&a.group_node).into_owned() };
        out.data(
            || {
                let mut t = format!(
                    "{}  (id {}){}\n  node {host}",
                    a.name,
                    hex(&a.group_id),
                    if a.open { ", open" } else { ", invite-only" }
                );
                if !a.description.is_empty() {
                    t.push_str(&format!("\n  {}", a.description));
                }
                if a.open {
                    t.push_str(&format!("\n  join: nymstr group join {} --node {host}", hex(&a.group_id)));
                }
                t
            },
            || {
                json!({
                    "type": "group_advert",
                    "group": hex(&a.group_id),
                    "name": a.name,
                    "description": a.description,
                    "open": a.open,
                    "node": host,
                    "admin_key": hex(&a.admin_key),
                    "issued_at_us": a.issued_at_us,
                })
            },
        );
    }
    Ok(())
}
