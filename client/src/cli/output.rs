//! Printing: human text by default, JSON lines with `--json`. Data goes to stdout;
//! notices and errors go to stderr (in JSON mode `listen` prints notices as JSON events
//! on stdout so one stream carries everything a script follows).

use std::io::Write;

use serde_json::{Value, json};

use nymstr_proto::wire::GroupId;

use crate::persist::{Direction, GroupLine, GroupLineKind, HistoryEntry, InviteRecord, Status};
use nymstr_client_core::core::Via;
use nymstr_client_core::group::GroupCore;

pub struct Printer {
    pub json: bool,
    /// Notices as JSON events on stdout (for `listen --json`).
    pub events_on_stdout: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Self { json, events_on_stdout: false }
    }

    /// One line of data: `text` for people, `value` for scripts.
    pub fn data(&self, text: impl FnOnce() -> String, value: impl FnOnce() -> Value) {
        let mut out = std::io::stdout().lock();
        let line = if self.json { value().to_string() } else { text() };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// A line for people only (nothing in JSON mode), e.g. "no new messages".
    pub fn human(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    /// Something worth knowing that is not the command's result.
    pub fn notice(&self, kind: &str, text: &str, fields: Value) {
        if self.json && self.events_on_stdout {
            let mut v = json!({ "type": kind });
            if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
                obj.extend(extra);
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{v}");
            let _ = out.flush();
        } else {
            eprintln!("nymstr: {text}");
        }
    }

    pub fn error(&self, kind: &str, message: &str, exit_code: u8) {
        if self.json {
            eprintln!("{}", json!({ "type": "error", "error": kind, "message": message, "exit_code": exit_code }));
        } else {
            eprintln!("nymstr: error: {message}");
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// An account key as people compare it: 16 groups of 4 hex digits.
pub fn fingerprint(key: &[u8; 32]) -> String {
    let h = hex(key);
    h.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("hex is ascii")).collect::<Vec<_>>().join(" ")
}

pub fn via_name(via: Option<Via>) -> &'static str {
    match via {
        Some(Via::Relay) => "relay",
        Some(Via::Direct) => "direct",
        None => "",
    }
}

/// `2024-05-01 12:34:56Z` from µs since the Unix epoch (UTC; no time-zone database).
pub fn time(us: u64) -> String {
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn text_of(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// A message as one JSON object.
pub fn entry_json(e: &HistoryEntry, me: &str) -> Value {
    let (from, to) = match e.direction {
        Direction::In => (e.peer.as_str(), me),
        Direction::Out => (me, e.peer.as_str()),
    };
    let mut v = json!({
        "type": "message",
        "direction": match e.direction { Direction::In => "in", Direction::Out => "out" },
        "from": from,
        "to": to,
        "msg_id": hex(&e.msg_id),
        "sent_at_us": e.sent_at_us,
        "recorded_at_us": e.at_us,
        "text": text_of(&e.body),
        "status": e.status.name(),
        "via": e.via.map(|v| via_name(Some(v))),
    });
    if let Status::Failed(reason) = &e.status {
        v["reason"] = json!(reason);
    }
    v
}

/// A received message for people: `[time] alice: text`.
pub fn entry_line(e: &HistoryEntry) -> String {
    match e.direction {
        Direction::In => {
            let via = if e.via == Some(Via::Direct) { " (direct)" } else { "" };
            format!("[{}] {}{via}: {}", time(e.sent_at_us), e.peer, text_of(&e.body))
        }
        Direction::Out => {
            let status = match &e.status {
                Status::Failed(reason) => format!("failed: {reason}"),
                Status::Delivered => "delivered directly".to_string(),
                other => other.name().to_string(),
            };
            format!("[{}] -> {} ({status}): {}", time(e.at_us), e.peer, text_of(&e.body))
        }
    }
}

/// A group history line for people: `[time] [group] alice: text`, or
/// `[time] [group] * bob joined` for a notice.
pub fn group_line_text(l: &GroupLine) -> String {
    match &l.kind {
        GroupLineKind::Message { from, verified: true, text, .. } | GroupLineKind::LegacyMessage { from, text, .. } => {
            format!("[{}] [{}] {from}: {text}", time(l.at_us), l.group_name)
        }
        GroupLineKind::Message { from, verified: false, sender_key, text, .. } => {
            format!("[{}] [{}] {}: {text}", time(l.at_us), l.group_name, unverified_name(from, sender_key))
        }
        GroupLineKind::Notice { text, .. } => format!("[{}] [{}] * {text}", time(l.at_us), l.group_name),
    }
}

/// A member whose name no pin vouches for: the claimed name, marked, and the start of
/// its leaf key (which `group remove` accepts).
pub fn unverified_name(claimed: &str, key: &[u8; 32]) -> String {
    let claimed = if claimed.is_empty() { "?" } else { claimed };
    format!("{claimed} (name not verified, key {})", hex(&key[..4]))
}

pub fn group_line_json(l: &GroupLine) -> Value {
    match &l.kind {
        GroupLineKind::Message { from, verified, account_key, sender_key, msg_id, text, log_seq } => json!({
            "type": "group_message",
            "group": hex(&l.group),
            "group_name": l.group_name,
            "from": from,
            "verified": verified,
            "account_key": account_key.map(|k| hex(&k)),
            "sender_key": hex(sender_key),
            "msg_id": hex(msg_id),
            "seq": log_seq,
            "text": text,
            "recorded_at_us": l.at_us,
        }),
        GroupLineKind::LegacyMessage { from, sender_key, msg_id, text, log_seq } => json!({
            "type": "group_message",
            "group": hex(&l.group),
            "group_name": l.group_name,
            "from": from,
            "verified": false,
            "account_key": null,
            "sender_key": hex(sender_key),
            "msg_id": hex(msg_id),
            "seq": log_seq,
            "text": text,
            "recorded_at_us": l.at_us,
        }),
        GroupLineKind::Notice { kind, who, text } => json!({
            "type": "group_notice",
            "group": hex(&l.group),
            "group_name": l.group_name,
            "kind": kind,
            "who": who,
            "text": text,
            "recorded_at_us": l.at_us,
        }),
    }
}

/// The command that accepts an invitation.
pub fn accept_command(r: &InviteRecord) -> String {
    format!("nymstr group join {}", hex(&r.invite.token.group_id))
}

pub fn invite_text(r: &InviteRecord) -> String {
    let i = &r.invite;
    let about = if i.description.is_empty() { String::new() } else { format!(" ({})", i.description) };
    format!(
        "[{}] {} invited you to the group \"{}\"{about}; to join: {}",
        time(r.received_at_us),
        r.from,
        i.name,
        accept_command(r)
    )
}

pub fn invite_json(r: &InviteRecord) -> Value {
    let i = &r.invite;
    json!({
        "type": "group_invite",
        "from": r.from,
        "group": hex(&i.token.group_id),
        "name": i.name,
        "description": i.description,
        "node": String::from_utf8_lossy(&i.group_node),
        "expires_at_us": i.token.expires_at_us,
        "received_at_us": r.received_at_us,
        "accept": accept_command(r),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_fingerprints_read_well() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time(1_700_000_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(time(951_782_400_000_000), "2000-02-29 00:00:00Z");
        let f = fingerprint(&[0xab; 32]);
        assert_eq!(f.split(' ').count(), 16);
        assert!(f.starts_with("abab abab"));
    }
}
