//! Group-chat bookkeeping of the simulator: what the workload asked for, what members
//! and stewards did, and the oracles that judge it (`specs/sim.md` §groups).
//!
//! The world drives the real `GroupCore` (client) and steward (node) cores; this module
//! only records and judges. It never decrypts anything: it learns message contents from
//! the sender's call and sees ciphertexts as the network does.

use std::collections::{BTreeMap, BTreeSet};

use nymstr_client_core::group::GroupEvent;
use nymstr_proto::wire::{GroupId, InviteToken, MsgId, PublicKey};
use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, Sender};
use tls_codec::Deserialize as _;

use crate::mixnet::Us;
use crate::report::GroupsReport;

/// One group the workload created.
#[derive(Clone, Debug)]
pub struct SimGroup {
    pub id: GroupId,
    pub node: u32,
    pub open: bool,
    pub public: bool,
    pub creator: u32,
    /// Initial size the workload aims for (creator included).
    pub target_size: u32,
    pub created: bool,
}

/// One application message, as its sender wrote it.
#[derive(Clone, Debug)]
pub struct SentMessage {
    pub group: GroupId,
    pub sender: u32,
    pub sender_key: PublicKey,
    pub sent_at: Us,
    /// Clients that were members in the sender's view when it was sent (sender excluded).
    pub audience: BTreeSet<u32>,
    /// Plaintext marker (the first bytes of the text), to scan node stores for leaks.
    pub marker: [u8; 16],
    /// The sender saw it in the log (the steward accepted it), at this seq.
    pub logged: bool,
    pub seq: Option<u64>,
    pub received_by: BTreeSet<u32>,
    /// (receiver, seq of the log entry it decrypted): a resend is another entry.
    pub receipts: Vec<(u32, u64)>,
    pub duplicates: u32,
    /// Members that reported it missing (with the right sender) / lost.
    pub missing_reported: BTreeSet<u32>,
    pub lost_reported: BTreeSet<u32>,
}

/// Recorded from MLS bytes seen on the network: what kind of handshake an upload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadClass {
    Application,
    Proposal,
    /// A commit by a member (a steward).
    Commit,
    /// A new member's external commit (a join).
    ExternalCommit,
    Other,
}

/// Classifies an uploaded MLS message without any key: the wire format and, for a
/// `PublicMessage`, its content type.
pub fn classify(mls: &[u8]) -> UploadClass {
    let Ok(msg) = MlsMessageIn::tls_deserialize_exact(mls) else { return UploadClass::Other };
    match msg.extract() {
        MlsMessageBodyIn::PrivateMessage(_) => UploadClass::Application,
        MlsMessageBodyIn::PublicMessage(pm) => match pm.content_type() {
            ContentType::Commit if matches!(pm.sender(), Sender::NewMemberCommit) => UploadClass::ExternalCommit,
            ContentType::Commit => UploadClass::Commit,
            ContentType::Proposal => UploadClass::Proposal,
            ContentType::Application => UploadClass::Application,
        },
        _ => UploadClass::Other,
    }
}

#[derive(Default)]
pub struct Groups {
    pub groups: Vec<SimGroup>,
    pub by_id: BTreeMap<GroupId, usize>,
    pub messages: BTreeMap<(GroupId, MsgId), SentMessage>,
    /// Member key -> client.
    pub client_of_key: BTreeMap<PublicKey, u32>,
    /// Log entries seen leaving the stewards: (group, seq) -> blake3 of the entry bytes.
    pub log_seen: BTreeMap<(GroupId, u64), [u8; 32]>,
    /// Commit entries per (group, epoch): distinct hashes.
    pub commits_seen: BTreeMap<(GroupId, u64), BTreeSet<[u8; 32]>>,
    /// Log positions pushed or fetched with different bytes (reported once each).
    pub log_conflicts: u64,
    conflicted: BTreeSet<(GroupId, u64)>,
    /// First proposal time per (group, epoch) still waiting for its commit.
    pub proposal_waiting: BTreeMap<(GroupId, u64), Us>,
    /// When a client asked to join a group.
    pub join_started: BTreeMap<(u32, GroupId), Us>,
    /// The last invitation issued for each group (bound to its invitee): what a steward
    /// sees when it is redeemed, and what the `inject_join` adversary replays.
    pub last_invite: BTreeMap<GroupId, InviteToken>,
    pub commit_latencies_ms: Vec<f64>,
    pub join_latencies_ms: Vec<f64>,
    pub app_uploads_sent: u64,
    /// Epoch of each log entry seen leaving a steward.
    pub entry_epoch: BTreeMap<(GroupId, u64), u64>,
    /// Members (as clients) of each (group, epoch), from the steward's public view when
    /// it entered the epoch.
    pub members_at_epoch: BTreeMap<(GroupId, u64), BTreeSet<u32>>,
    /// Missing/lost reports naming a message the workload did not write (an admin's
    /// automatic name/description re-send): the sender is checked to be a member key.
    pub unknown_reports: u64,
    pub report: GroupsReport,
    pub violations: Vec<String>,
}

impl Groups {
    pub fn add_group(&mut self, g: SimGroup) {
        self.by_id.insert(g.id, self.groups.len());
        self.groups.push(g);
    }

    pub fn group(&self, id: &GroupId) -> Option<&SimGroup> {
        self.by_id.get(id).map(|i| &self.groups[*i])
    }

    /// A log entry left a steward (push or fetch reply): same seq, same bytes, always.
    pub fn on_log_entry(&mut self, now: Us, group: GroupId, seq: u64, epoch: u64, mls: &[u8]) {
        let h = *blake3::hash(mls).as_bytes();
        match self.log_seen.get(&(group, seq)) {
            Some(prev) if *prev != h && self.conflicted.insert((group, seq)) => {
                self.log_conflicts += 1;
                self.violations.push(format!("group {} log entry {seq} was served with two contents", hex8(&group)));
            }
            Some(_) => {}
            None => {
                self.log_seen.insert((group, seq), h);
                self.entry_epoch.insert((group, seq), epoch);
                match classify(mls) {
                    UploadClass::Commit => {
                        self.commits_seen.entry((group, epoch)).or_default().insert(h);
                        if let Some(t) = self.proposal_waiting.remove(&(group, epoch)) {
                            self.commit_latencies_ms.push((now - t) as f64 / 1000.0);
                        }
                    }
                    UploadClass::ExternalCommit => {
                        self.commits_seen.entry((group, epoch)).or_default().insert(h);
                        // The epoch's proposals are void; their proposers propose again.
                        if let Some(t) = self.proposal_waiting.remove(&(group, epoch)) {
                            let next = self.proposal_waiting.entry((group, epoch + 1)).or_insert(t);
                            *next = (*next).min(t);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A group event surfaced at `client` at `now`.
    pub fn on_event(&mut self, client: u32, now: Us, ev: &GroupEvent) {
        match ev {
            GroupEvent::Message { group, msg_id, sender_key, .. } => {
                let Some(m) = self.messages.get_mut(&(*group, *msg_id)) else {
                    self.violations.push(format!("client {client} surfaced a group message nobody sent"));
                    return;
                };
                if client == m.sender {
                    m.logged = true;
                    if let GroupEvent::Message { seq, .. } = ev {
                        m.seq = Some(*seq);
                    }
                    return;
                }
                if *sender_key != m.sender_key {
                    self.violations
                        .push(format!("client {client} attributed group message {} to the wrong sender", hex8(msg_id)));
                }
                if let GroupEvent::Message { seq, .. } = ev {
                    m.receipts.push((client, *seq));
                }
                if !m.received_by.insert(client) {
                    m.duplicates += 1;
                    self.violations.push(format!("client {client} surfaced group message {} twice", hex8(msg_id)));
                } else {
                    self.report.deliveries += 1;
                }
            }
            GroupEvent::Missing { group, msg_id, sender, .. } => {
                self.report.missing_detected += 1;
                self.check_sender(client, group, msg_id, sender, "missing");
                if let Some(m) = self.messages.get_mut(&(*group, *msg_id)) {
                    m.missing_reported.insert(client);
                }
            }
            GroupEvent::Lost { group, msg_id, sender, .. } => {
                self.report.lost += 1;
                self.check_sender(client, group, msg_id, sender, "lost");
                if let Some(m) = self.messages.get_mut(&(*group, *msg_id)) {
                    m.lost_reported.insert(client);
                }
            }
            GroupEvent::Repaired { .. } => self.report.repaired += 1,
            GroupEvent::HistoryGap { .. } => self.report.history_gaps += 1,
            GroupEvent::Joined { group, .. } => {
                self.report.joins += 1;
                if let Some(t) = self.join_started.remove(&(client, *group)) {
                    self.join_latencies_ms.push((now - t) as f64 / 1000.0);
                }
            }
            GroupEvent::Created { group } => {
                self.report.created += 1;
                if let Some(i) = self.by_id.get(group) {
                    self.groups[*i].created = true;
                }
            }
            GroupEvent::Error { .. } => self.report.errors += 1,
            GroupEvent::Removed { .. }
            | GroupEvent::MembersChanged { .. }
            | GroupEvent::EpochChanged { .. }
            | GroupEvent::MetaChanged { .. } => {}
        }
    }

    fn check_sender(&mut self, client: u32, group: &GroupId, msg_id: &MsgId, sender: &PublicKey, what: &str) {
        match self.messages.get(&(*group, *msg_id)) {
            Some(m) if m.sender_key == *sender => {}
            Some(_) => {
                self.report.missing_wrong_sender += 1;
                self.violations.push(format!(
                    "client {client} reported group message {} {what} with the wrong sender",
                    hex8(msg_id)
                ));
            }
            // Not one the workload wrote: an admin's automatic `SetMeta`. Its sender must
            // at least be some member's key.
            None => {
                self.unknown_reports += 1;
                if !self.client_of_key.contains_key(sender) {
                    self.report.missing_wrong_sender += 1;
                    self.violations.push(format!("client {client} reported a message {what} from a stranger"));
                }
            }
        }
    }

    /// Judges delivery at quiescence. `final_members` maps each group to the clients that
    /// are members at the end (in their own view).
    pub fn judge(&mut self, final_members: &BTreeMap<GroupId, BTreeSet<u32>>) -> u64 {
        let mut checks = 0;
        // The audience of a message: the members of the epoch it was encrypted in (the
        // epoch its log entry carries), the sender excepted.
        for ((group, _), m) in self.messages.iter_mut() {
            let epoch = m.seq.and_then(|seq| self.entry_epoch.get(&(*group, seq)));
            if let Some(members) = epoch.and_then(|e| self.members_at_epoch.get(&(*group, *e))) {
                m.audience = members.iter().copied().filter(|c| *c != m.sender).collect();
            } else {
                // Never seen leaving the steward (nobody else subscribed): nobody to reach.
                m.audience.clear();
            }
        }
        for ((group, msg_id), m) in &self.messages {
            if !m.logged {
                continue;
            }
            for r in m.missing_reported.union(&m.lost_reported) {
                if !m.audience.contains(r) {
                    self.report.missing_not_in_audience += 1;
                }
            }
            // Nobody decrypts an entry of an epoch it was not a member in.
            for (r, seq) in &m.receipts {
                let epoch = self.entry_epoch.get(&(*group, *seq));
                let members = epoch.and_then(|e| self.members_at_epoch.get(&(*group, *e)));
                checks += 1;
                if !members.is_some_and(|ms| ms.contains(r)) {
                    self.violations.push(format!(
                        "client {r} decrypted group message {} (seq {seq}, epoch {epoch:?}, from client {}) of an \
                         epoch it was not a member in",
                        hex8(msg_id),
                        m.sender
                    ));
                }
            }
            let Some(now_members) = final_members.get(group) else { continue };
            for r in m.audience.intersection(now_members) {
                checks += 1;
                if !m.received_by.contains(r) && !m.missing_reported.contains(r) && !m.lost_reported.contains(r) {
                    self.violations.push(format!(
                        "group message {} from client {} never reached member {r} and was not reported missing",
                        hex8(msg_id),
                        m.sender
                    ));
                }
            }
        }
        for ((group, epoch), commits) in &self.commits_seen {
            checks += 1;
            if commits.len() > 1 {
                self.report.epoch_forks += 1;
                self.violations.push(format!(
                    "group {} epoch {epoch} has {} accepted commits",
                    hex8(group),
                    commits.len()
                ));
            }
        }
        self.report.epoch_forks += self.log_conflicts;
        self.report.commits = self.commits_seen.values().map(|c| c.len() as u64).sum();
        checks
    }
}

pub fn hex8(id: &[u8]) -> String {
    id[..8.min(id.len())].iter().map(|b| format!("{b:02x}")).collect()
}
