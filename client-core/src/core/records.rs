//! The records a client keeps across restarts: contacts as looked up, messages not yet
//! acknowledged, what was agreed with each contact about direct delivery, the seen log,
//! and `ClientState`, the snapshot that holds them all (`export_state` / `restore`).

use std::collections::{BTreeMap, BTreeSet};

use nymstr_proto::federation::NodeId;
use nymstr_proto::federation::verify::Verifier;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{InstallationCert, InstallationId, MsgId, PublicKey};
use serde::{Deserialize, Serialize};

use super::identity::IdentityState;
use crate::seal::{DirectAddress, DmContent};

/// A contact as last looked up: its account key and installations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub account_key: PublicKey,
    pub installations: Vec<InstallationCert>,
    pub fetched_at_us: TimeUs,
}

/// A message not yet acknowledged (by the node, or directly by every installation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingDm {
    pub to: String,
    pub msg_id: MsgId,
    pub content: DmContent,
    pub sent_at_us: TimeUs,
    /// A `SendDm` carried it: it is never tried directly again (the node dedupes by
    /// `(from, msg_id)`, so every relayed copy must cover the same installations).
    pub relayed: bool,
    /// Installations that acknowledged it directly.
    pub direct_done: BTreeSet<InstallationId>,
}

/// What we agreed with one contact about direct delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectPeer {
    /// We consented (offered, or accepted an offer): we send to its routes directly and
    /// accept its direct frames. Sending directly reveals our transport address to it.
    pub enabled: bool,
    /// Addresses its installations revealed to us, by installation.
    pub routes: BTreeMap<InstallationId, DirectRoute>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRoute {
    pub addr: DirectAddress,
    /// The sender's `sent_at_us` of the message that announced it (newest wins).
    pub announced_at_us: TimeUs,
    /// Consecutive failed attempts, and until when the route rests because of them.
    pub failures: u32,
    pub down_until_us: TimeUs,
}

/// The received-message ids remembered for de-duplication, oldest first; `first_seq`
/// numbers the oldest so a host can store the log incrementally.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenLog {
    pub first_seq: u64,
    pub ids: Vec<(InstallationId, MsgId)>,
}

/// Everything a client must keep across restarts (`export_state` / `restore`).
/// Requests in flight are not part of it: unacknowledged messages are, and go again
/// after the next login.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    pub identity: Option<IdentityState>,
    pub username: Option<String>,
    pub registered: bool,
    pub contacts: BTreeMap<String, Contact>,
    /// Pinned account keys by pin sequence (oldest first, evicted first).
    pub pins: BTreeMap<u64, (String, PublicKey)>,
    pub seen: SeenLog,
    pub outgoing: BTreeMap<MsgId, OutgoingDm>,
    pub direct: BTreeMap<String, DirectPeer>,
    /// Node keys, accepted heads, pins and fork certificates of key transparency.
    #[serde(default)]
    pub transparency: Option<Verifier>,
    /// The home node's id as first learnt (it qualifies the names a seal signs).
    #[serde(default)]
    pub home_node: Option<NodeId>,
}
