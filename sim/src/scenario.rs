//! Scenario files (TOML). Every key has a default; unknown keys and bad values are
//! rejected with the key and the line named. Normative list of keys: `specs/sim.md`.

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

/// Largest initial group size a scenario may ask for (see `Scenario::parse`).
pub const GROUP_SIZE_MAX: u32 = 120;

/// The scenario run when `nymstr-sim` is given no file.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.toml");

/// A duration written as humantime text ("10m", "30s", "1h 30m", "250ms").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Dur(pub u64);

impl Dur {
    pub fn us(self) -> u64 {
        self.0
    }
    pub fn from_secs(s: u64) -> Self {
        Dur(s * 1_000_000)
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", humantime::format_duration(std::time::Duration::from_micros(self.0)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration `{text}`: {e} (write e.g. \"30s\", \"10m\")"))
        })?;
        u64::try_from(parsed.as_micros())
            .map(Dur)
            .map_err(|_| serde::de::Error::custom(format!("duration `{text}` is too long")))
    }
}

/// Range-checked deserializers: the message names the key; toml adds the line.
macro_rules! ranged {
    ($fn_name:ident, $ty:ty, $key:literal, $lo:expr, $hi:expr, $desc:literal) => {
        fn $fn_name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let v = <$ty>::deserialize(d)?;
            #[allow(clippy::manual_range_contains, unused_comparisons)]
            if v < $lo || v > $hi {
                return Err(serde::de::Error::custom(format!("`{}` = {} is out of range: {}", $key, v, $desc)));
            }
            Ok(v)
        }
    };
}

ranged!(hops_in_range, u32, "hops", 1, 16, "1 to 16 hops");
ranged!(delay_in_range, f64, "hop_delay_ms_mean", 0.0, 60_000.0, "0 to 60000 ms");
ranged!(payload_in_range, u32, "packet_payload_bytes", 256, 65_536, "256 to 65536 bytes");
ranged!(loss_in_range, f64, "packet_loss", 0.0, 0.5, "a probability from 0 to 0.5");
ranged!(interval_in_range, f64, "send_interval_ms_mean", 0.0, 60_000.0, "0 to 60000 ms");
ranged!(surbs_in_range, u32, "surbs_per_message", 1, 1_000, "1 to 1000");
ranged!(discovery_in_range, u32, "discovery", 1, 1_000, "1 to 1000 nodes");
ranged!(clients_in_range, u32, "count", 2, 1_000_000, "2 to 1000000 clients");
ranged!(rate_in_range, f64, "rate_per_client_per_min", 0.0, 600.0, "0 to 600 messages per minute");
ranged!(bytes_in_range, u32, "message_bytes", 1, 30_000, "1 to 30000 bytes");
ranged!(share_in_range, f64, "new_contact_share", 0.0, 1.0, "a probability from 0 to 1");
ranged!(churn_in_range, f64, "offline_per_hour", 0.0, 600.0, "0 to 600 per hour");
ranged!(group_nodes_in_range, u32, "group", 0, 1_000, "0 to 1000 nodes");
ranged!(groups_in_range, u32, "count", 0, 100_000, "0 to 100000 groups");
ranged!(group_size_in_range, u32, "size", 2, 1_000, "2 to 1000 members");
ranged!(group_rate_in_range, f64, "rate", 0.0, 600.0, "0 to 600 per minute");
ranged!(fraction_in_range, f64, "fraction", 0.0, 1.0, "a fraction from 0 to 1");
ranged!(witnesses_in_range, u32, "witnesses_required", 1, 64, "1 to 64 witnesses");
ranged!(epoch_in_range, Dur, "epoch", Dur::from_secs(1), Dur::from_secs(3600), "1s to 1h");
ranged!(cross_share_in_range, f64, "cross_node_share", 0.0, 1.0, "a probability from 0 to 1");
ranged!(fanout_in_range, u32, "gossip_fanout", 1, 64, "1 to 64 peers");
ranged!(lookups_in_range, f64, "lookups_per_client_per_min", 0.0, 600.0, "0 to 600 lookups per minute");

/// Sybils an adversary of kind `sybil` adds when `count` is absent.
pub const SYBIL_COUNT_DEFAULT: u32 = 5;
/// Largest `count` of a `sybil` adversary.
pub const SYBIL_COUNT_MAX: u32 = 1_000;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time during which new traffic starts.
    #[serde(default = "default_duration")]
    pub duration: Dur,
    /// After `duration`, how long in-flight work may take to drain before the oracles judge.
    #[serde(default = "default_drain")]
    pub drain_max: Dur,
    #[serde(default)]
    pub mixnet: Mixnet,
    #[serde(default)]
    pub nodes: Nodes,
    #[serde(default)]
    pub clients: Clients,
    #[serde(default)]
    pub workload: Workload,
    /// `[[faults]]`: node and network faults (`Fault`) and partitions (`Partition`).
    #[serde(default)]
    pub faults: Vec<Spanned<FaultEntry>>,
    /// `[federation]`: absent means no federation (discovery nodes do not talk to each
    /// other). Skipped when absent so older scenarios keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<Federation>,
    /// `[[adversaries]]`: misbehaving discovery nodes (needs `[federation]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adversaries: Vec<Spanned<Adversary>>,
}

fn default_seed() -> u64 {
    42
}
fn default_duration() -> Dur {
    Dur::from_secs(600)
}
fn default_drain() -> Dur {
    Dur::from_secs(600)
}

/// The mixnet model; defaults are Nym's client defaults.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mixnet {
    /// Entry gateway, three mix layers, exit gateway.
    #[serde(deserialize_with = "hops_in_range")]
    pub hops: u32,
    /// Mean of the exponential delay added at every hop.
    #[serde(deserialize_with = "delay_in_range")]
    pub hop_delay_ms_mean: f64,
    /// Sphinx packet payload.
    #[serde(deserialize_with = "payload_in_range")]
    pub packet_payload_bytes: u32,
    /// Probability that a packet (or its ack) is lost; lost packets are retransmitted.
    #[serde(deserialize_with = "loss_in_range")]
    pub packet_loss: f64,
    /// Clients send on a Poisson stream: mean gap between packets.
    #[serde(deserialize_with = "interval_in_range")]
    pub send_interval_ms_mean: f64,
    /// Nodes are services: by default they disable Poisson pacing (0 = send at once).
    #[serde(deserialize_with = "interval_in_range")]
    pub node_send_interval_ms_mean: f64,
    /// SURBs a client attaches to every message to a node.
    #[serde(deserialize_with = "surbs_in_range")]
    pub surbs_per_message: u32,
    /// Size of one reply SURB inside a message (Nym v2 ReplySurb: 16-byte key + 348-byte
    /// Sphinx header + 32-byte address + 16-byte key seed per hop).
    pub surb_bytes: u32,
    /// Retransmission timeout beyond 1.5 x the expected packet + ack round trip.
    pub retransmit_extra_ms: f64,
}

impl Default for Mixnet {
    fn default() -> Self {
        Self {
            hops: 5,
            hop_delay_ms_mean: 50.0,
            packet_payload_bytes: 2048,
            packet_loss: 0.001,
            send_interval_ms_mean: 20.0,
            node_send_interval_ms_mean: 0.0,
            surbs_per_message: 10,
            surb_bytes: 476,
            retransmit_extra_ms: 1500.0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nodes {
    #[serde(deserialize_with = "discovery_in_range")]
    pub discovery: u32,
    /// Group nodes (stewards hosting groups), numbered after the discovery nodes.
    #[serde(deserialize_with = "group_nodes_in_range")]
    pub group: u32,
    /// Time one explicit store flush takes (sled fsync).
    pub flush_ms: f64,
    /// Background flush period (sled's `flush_every_ms`, default 500).
    pub background_flush_ms: f64,
    /// Node core settings; every key of `NodeConfig` (durations in microseconds).
    pub core: nymstr_node_core::NodeConfig,
    /// Fault injection (FoundationDB's "buggify"): the host sends acknowledgements
    /// before the write they acknowledge is durable. A known-bad node; the oracles must
    /// catch what it loses in a crash.
    pub buggify_ack_before_flush: bool,
}

impl Default for Nodes {
    fn default() -> Self {
        Self {
            discovery: 1,
            group: 0,
            flush_ms: 5.0,
            background_flush_ms: 500.0,
            core: nymstr_node_core::NodeConfig::default(),
            buggify_ack_before_flush: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Clients {
    #[serde(deserialize_with = "clients_in_range")]
    pub count: u32,
    /// Clients register at uniformly random times within this window.
    pub join_spread: Dur,
    /// Rate at which an online client goes offline (0: never).
    #[serde(deserialize_with = "churn_in_range")]
    pub offline_per_hour: f64,
    /// Mean (exponential) time a client stays offline.
    pub offline_mean: Dur,
}

impl Default for Clients {
    fn default() -> Self {
        Self { count: 1000, join_spread: Dur::from_secs(60), offline_per_hour: 1.0, offline_mean: Dur::from_secs(120) }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    pub dm: DmWorkload,
    pub groups: GroupWorkload,
}

/// Group chats (needs `[nodes] group >= 1` when `count > 0`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupWorkload {
    #[serde(deserialize_with = "groups_in_range")]
    pub count: u32,
    /// Initial size of each group, uniform in `size_min..=size_max` (creator included).
    #[serde(deserialize_with = "group_size_in_range")]
    pub size_min: u32,
    #[serde(deserialize_with = "group_size_in_range")]
    pub size_max: u32,
    /// Application messages per member per minute.
    #[serde(deserialize_with = "group_rate_in_range")]
    pub message_rate_per_member_per_min: f64,
    /// Share of groups anyone may join by external commit (the rest are invite-only).
    #[serde(deserialize_with = "fraction_in_range")]
    pub open_fraction: f64,
    /// Share of groups advertised in the directory (the rest are hidden).
    #[serde(deserialize_with = "fraction_in_range")]
    pub public_fraction: f64,
    /// New members joining some group, across the whole federation, per minute.
    #[serde(deserialize_with = "group_rate_in_range")]
    pub joins_per_min: f64,
    /// Members leaving some group per minute.
    #[serde(deserialize_with = "group_rate_in_range")]
    pub leaves_per_min: f64,
    /// Bytes of text in one group message.
    #[serde(deserialize_with = "bytes_in_range")]
    pub message_bytes: u32,
    /// Groups are created at uniformly random times within this window (after the
    /// clients' join spread).
    pub create_spread: Dur,
}

impl Default for GroupWorkload {
    fn default() -> Self {
        Self {
            count: 0,
            size_min: 3,
            size_max: 50,
            message_rate_per_member_per_min: 0.5,
            open_fraction: 0.5,
            public_fraction: 0.5,
            joins_per_min: 2.0,
            leaves_per_min: 1.0,
            message_bytes: 120,
            create_spread: Dur::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DmWorkload {
    #[serde(deserialize_with = "rate_in_range")]
    pub rate_per_client_per_min: f64,
    #[serde(deserialize_with = "bytes_in_range")]
    pub message_bytes: u32,
    /// Probability that a message starts a conversation with someone new (a random
    /// registered user) rather than going to one of the sender's contacts.
    #[serde(deserialize_with = "share_in_range")]
    pub new_contact_share: f64,
    /// Size of a user's circle of contacts.
    pub contacts_max: u32,
}

impl Default for DmWorkload {
    fn default() -> Self {
        Self { rate_per_client_per_min: 1.0, message_bytes: 200, new_contact_share: 0.1, contacts_max: 20 }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The node loses power: unflushed writes and in-memory state are gone.
    Crash { at: Dur, node: u32, restart_after: Dur },
    /// Packet loss rises to `packet_loss` for `duration`.
    LossBurst {
        at: Dur,
        duration: Dur,
        #[serde(deserialize_with = "loss_in_range")]
        packet_loss: f64,
    },
}

impl Fault {
    pub fn at(&self) -> Dur {
        match self {
            Fault::Crash { at, .. } | Fault::LossBurst { at, .. } => *at,
        }
    }
}

/// `kind = "partition"`: from `at`, the nodes are split into `groups` that cannot reach
/// each other until `heal_after` has passed (what crosses and what is dropped: the world).
/// Node indices use the world's numbering: discovery nodes `0..discovery`, then group nodes.
/// Nodes listed in no group together form one more group.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Partition {
    pub at: Dur,
    pub groups: Vec<Vec<u32>>,
    pub heal_after: Dur,
}

/// One `[[faults]]` entry. `Fault` keeps the crash and loss-burst kinds (code matching on it
/// stays exhaustive); a partition is a separate case (`Scenario::partitions`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(from = "RawFault", into = "RawFault")]
pub enum FaultEntry {
    Fault(Fault),
    Partition(Partition),
}

impl FaultEntry {
    pub fn at(&self) -> Dur {
        match self {
            FaultEntry::Fault(f) => f.at(),
            FaultEntry::Partition(p) => p.at,
        }
    }
}

/// The `[[faults]]` table as written (serialised the same way, so a scenario without
/// partitions keeps its hash).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawFault {
    Crash {
        at: Dur,
        node: u32,
        restart_after: Dur,
    },
    LossBurst {
        at: Dur,
        duration: Dur,
        #[serde(deserialize_with = "loss_in_range")]
        packet_loss: f64,
    },
    Partition {
        at: Dur,
        groups: Vec<Vec<u32>>,
        heal_after: Dur,
    },
}

impl From<RawFault> for FaultEntry {
    fn from(raw: RawFault) -> Self {
        match raw {
            RawFault::Crash { at, node, restart_after } => FaultEntry::Fault(Fault::Crash { at, node, restart_after }),
            RawFault::LossBurst { at, duration, packet_loss } => {
                FaultEntry::Fault(Fault::LossBurst { at, duration, packet_loss })
            }
            RawFault::Partition { at, groups, heal_after } => {
                FaultEntry::Partition(Partition { at, groups, heal_after })
            }
        }
    }
}

impl From<FaultEntry> for RawFault {
    fn from(entry: FaultEntry) -> Self {
        match entry {
            FaultEntry::Fault(Fault::Crash { at, node, restart_after }) => RawFault::Crash { at, node, restart_after },
            FaultEntry::Fault(Fault::LossBurst { at, duration, packet_loss }) => {
                RawFault::LossBurst { at, duration, packet_loss }
            }
            FaultEntry::Partition(Partition { at, groups, heal_after }) => {
                RawFault::Partition { at, groups, heal_after }
            }
        }
    }
}

/// How a client decides to believe a key a discovery node served (`[federation] trust`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// Trust on first use: the first key seen for a contact is pinned.
    Tofu,
    /// A key is believed once `witnesses_required` other discovery nodes cosigned the head
    /// of the log that contains it.
    WitnessQuorum,
    /// Only heads signed by nodes on a fixed allowlist (the scenario's honest nodes) count.
    Allowlist,
}

impl Trust {
    /// The policy's name as written in the scenario (and in the report's `federation.trust`).
    pub fn name(self) -> &'static str {
        match self {
            Trust::Tofu => "tofu",
            Trust::WitnessQuorum => "witness-quorum",
            Trust::Allowlist => "allowlist",
        }
    }
}

/// `[federation]`: the discovery nodes form a federation with transparency logs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Federation {
    pub trust: Trust,
    /// Cosignatures from other discovery nodes a head needs (`trust = "witness-quorum"`;
    /// ignored otherwise). At most `discovery - 1`.
    #[serde(deserialize_with = "witnesses_in_range")]
    pub witnesses_required: u32,
    /// Period at which every node signs a new head of its log.
    #[serde(deserialize_with = "epoch_in_range")]
    pub epoch: Dur,
    /// Share of new DM contacts picked among users of another discovery node.
    #[serde(deserialize_with = "cross_share_in_range")]
    pub cross_node_share: f64,
    /// Peers each gossip item (head, cosignature, fork certificate) is pushed to.
    #[serde(deserialize_with = "fanout_in_range")]
    pub gossip_fanout: u32,
    /// Transparency lookups each online client makes of its contacts (verification traffic).
    #[serde(deserialize_with = "lookups_in_range")]
    pub lookups_per_client_per_min: f64,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            trust: Trust::WitnessQuorum,
            witnesses_required: 1,
            epoch: Dur::from_secs(30),
            cross_node_share: 0.5,
            gossip_fanout: 3,
            lookups_per_client_per_min: 0.2,
        }
    }
}

/// What a misbehaving discovery node does (`[[adversaries]] kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdversaryKind {
    /// Signs two different heads for the same log size.
    Equivocate,
    /// Serves a key of its own in place of a user's.
    SubstituteKey,
    /// Drops (or, with `delay`, delays) traffic it should forward to other nodes.
    DropForwarded,
    /// Serves an old head again instead of the newest.
    ReplayHead,
    /// Adds `count` fresh nodes that vouch for `node`.
    Sybil,
}

/// One `[[adversaries]]` entry: from `at`, discovery node `node` misbehaves as `kind` says.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Adversary {
    pub kind: AdversaryKind,
    /// The misbehaving discovery node; for `sybil`, the node the sybils vouch for.
    pub node: u32,
    pub at: Dur,
    /// `drop_forwarded` only: delay forwarded traffic by this much (absent: drop it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Dur>,
    /// `sybil` only: fresh nodes added (absent: `SYBIL_COUNT_DEFAULT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// `substitute_key` only: the client (index) whose key is substituted (absent: the
    /// world chooses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
}

impl Adversary {
    /// Fresh nodes a `sybil` adversary adds.
    pub fn sybil_count(&self) -> u32 {
        self.count.unwrap_or(SYBIL_COUNT_DEFAULT)
    }
}

/// Why a scenario was refused. The message names the key and the line.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{0}")]
    Toml(String),
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
}

/// Line of the first `key =` in the source (for cross-key checks serde cannot span).
fn key_line(src: &str, key: &str) -> usize {
    src.lines()
        .position(|l| l.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')))
        .map_or(1, |i| i + 1)
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Line of the first `key =` in the entry of an array of tables that starts at `span`
/// (toml spans such an entry by its `[[...]]` header; its keys follow up to the next
/// header), else the entry's first line.
fn key_line_in(src: &str, span: std::ops::Range<usize>, key: &str) -> usize {
    let first = line_of(src, span.start);
    for (i, l) in src.lines().enumerate().skip(first) {
        let l = l.trim_start();
        // A table header (`[x]`, `[[x]]`), not a line of a multi-line array (`[0, 1],`).
        if l.starts_with('[') && l.trim_start_matches('[').starts_with(|c: char| c.is_alphabetic() || c == '"') {
            break;
        }
        if l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return i + 1;
        }
    }
    first
}

/// Line of the table header `header` (e.g. `[federation]`), else 1.
fn header_line(src: &str, header: &str) -> usize {
    src.lines().position(|l| l.trim_start().starts_with(header)).map_or(1, |i| i + 1)
}

fn invalid(line: usize, message: String) -> ScenarioError {
    ScenarioError::Invalid { line, message }
}

impl Scenario {
    pub fn parse(src: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(src).map_err(|e| ScenarioError::Toml(e.to_string()))?;
        for fault in &scenario.faults {
            let line = line_of(src, fault.span().start);
            match fault.get_ref() {
                FaultEntry::Fault(Fault::Crash { node, .. })
                    if *node >= scenario.nodes.discovery + scenario.nodes.group =>
                {
                    return Err(ScenarioError::Invalid {
                        line,
                        message: format!(
                            "faults: `node` = {node} but the scenario has {} discovery and {} group node(s) \
                             (numbered from 0, discovery first)",
                            scenario.nodes.discovery, scenario.nodes.group
                        ),
                    });
                }
                f if f.at() > scenario.duration => {
                    return Err(ScenarioError::Invalid {
                        line,
                        message: format!("faults: `at` is after `duration` ({:?} > {:?})", f.at(), scenario.duration),
                    });
                }
                FaultEntry::Partition(p) => scenario.check_partition(src, fault.span(), p)?,
                _ => {}
            }
        }
        scenario.check_federation(src)?;
        let g = &scenario.workload.groups;
        if g.count > 0 && scenario.nodes.group == 0 {
            return Err(ScenarioError::Invalid {
                line: key_line(src, "count"),
                message: "workload.groups: `count` > 0 needs at least one group node (`[nodes] group`)".into(),
            });
        }
        if g.size_min > g.size_max {
            return Err(ScenarioError::Invalid {
                line: key_line(src, "size_min"),
                message: format!("workload.groups: `size_min` = {} exceeds `size_max` = {}", g.size_min, g.size_max),
            });
        }
        if g.size_max > GROUP_SIZE_MAX {
            return Err(ScenarioError::Invalid {
                line: key_line(src, "size_max"),
                message: format!(
                    "workload.groups: `size_max` = {} exceeds {GROUP_SIZE_MAX}: every commit carries the new \
                     GroupInfo with the ratchet tree (~350 bytes per member), which stops fitting one upload at \
                     ~135 members (BENCHMARKS.md, MLS section)",
                    g.size_max
                ),
            });
        }
        if g.count > 0 && g.size_max > scenario.clients.count {
            return Err(ScenarioError::Invalid {
                line: key_line(src, "size_max"),
                message: format!(
                    "workload.groups: `size_max` = {} exceeds the {} clients",
                    g.size_max, scenario.clients.count
                ),
            });
        }
        if scenario.mixnet.surb_bytes as usize * 2 > scenario.mixnet.packet_payload_bytes as usize * 64 {
            return Err(ScenarioError::Invalid {
                line: 1,
                message: "mixnet: `surb_bytes` is implausibly large for the packet size".into(),
            });
        }
        Ok(scenario)
    }

    fn check_partition(&self, src: &str, span: std::ops::Range<usize>, p: &Partition) -> Result<(), ScenarioError> {
        let nodes = self.nodes.discovery + self.nodes.group;
        let line = key_line_in(src, span.clone(), "groups");
        if p.groups.len() < 2 {
            return Err(invalid(
                line,
                format!("faults: `groups` of a partition lists {} group(s); it needs at least 2", p.groups.len()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for group in &p.groups {
            if group.is_empty() {
                return Err(invalid(line, "faults: `groups` of a partition contains an empty group".into()));
            }
            for &i in group {
                if i >= nodes {
                    return Err(invalid(
                        line,
                        format!(
                            "faults: `groups` names node {i} but the scenario has {} discovery and {} group \
                             node(s) (numbered from 0, discovery first)",
                            self.nodes.discovery, self.nodes.group
                        ),
                    ));
                }
                if !seen.insert(i) {
                    return Err(invalid(line, format!("faults: `groups` names node {i} in more than one place")));
                }
            }
        }
        if p.heal_after.us() == 0 {
            return Err(invalid(
                key_line_in(src, span, "heal_after"),
                "faults: `heal_after` of a partition must be longer than 0".into(),
            ));
        }
        Ok(())
    }

    fn check_federation(&self, src: &str) -> Result<(), ScenarioError> {
        let discovery = self.nodes.discovery;
        if let Some(fed) = &self.federation {
            let header = header_line(src, "[federation]");
            if discovery < 2 {
                return Err(invalid(
                    header,
                    format!(
                        "federation: `[federation]` needs at least 2 discovery nodes (`[nodes] discovery` = {discovery})"
                    ),
                ));
            }
            if fed.trust == Trust::WitnessQuorum && fed.witnesses_required > discovery - 1 {
                let line = match key_line(src, "witnesses_required") {
                    1 => header,
                    l => l,
                };
                return Err(invalid(
                    line,
                    format!(
                        "federation: `witnesses_required` = {} but only {} other discovery node(s) can witness \
                         (`[nodes] discovery` = {discovery})",
                        fed.witnesses_required,
                        discovery - 1
                    ),
                ));
            }
        }
        for adv in &self.adversaries {
            let span = adv.span();
            let a = adv.get_ref();
            if self.federation.is_none() {
                return Err(invalid(
                    line_of(src, span.start),
                    "adversaries: `[[adversaries]]` needs a `[federation]` table".into(),
                ));
            }
            if a.node >= discovery {
                let what =
                    if a.kind == AdversaryKind::Sybil { "the node the sybils vouch for" } else { "the adversary" };
                return Err(invalid(
                    key_line_in(src, span, "node"),
                    format!(
                        "adversaries: `node` = {} ({what}) but the scenario has {discovery} discovery node(s), \
                         numbered from 0",
                        a.node
                    ),
                ));
            }
            if a.at >= self.duration {
                return Err(invalid(
                    key_line_in(src, span, "at"),
                    format!("adversaries: `at` = {} is not before `duration` = {}", a.at, self.duration),
                ));
            }
            let only = |key: &str, given: bool, kind: AdversaryKind, name: &str| {
                if given && a.kind != kind {
                    Err(invalid(
                        key_line_in(src, span.clone(), key),
                        format!("adversaries: `{key}` only applies to kind = \"{name}\""),
                    ))
                } else {
                    Ok(())
                }
            };
            only("delay", a.delay.is_some(), AdversaryKind::DropForwarded, "drop_forwarded")?;
            only("count", a.count.is_some(), AdversaryKind::Sybil, "sybil")?;
            only("user", a.user.is_some(), AdversaryKind::SubstituteKey, "substitute_key")?;
            if let Some(delay) = a.delay
                && (delay.us() == 0 || delay > Dur::from_secs(3600))
            {
                return Err(invalid(
                    key_line_in(src, span, "delay"),
                    format!("adversaries: `delay` = {delay} is out of range: 1us to 1h (omit it to drop)"),
                ));
            }
            if let Some(count) = a.count
                && !(1..=SYBIL_COUNT_MAX).contains(&count)
            {
                return Err(invalid(
                    key_line_in(src, span, "count"),
                    format!("adversaries: `count` = {count} is out of range: 1 to {SYBIL_COUNT_MAX} sybils"),
                ));
            }
            if let Some(user) = a.user
                && user >= self.clients.count
            {
                return Err(invalid(
                    key_line_in(src, span, "user"),
                    format!(
                        "adversaries: `user` = {user} but the scenario has {} clients, numbered from 0",
                        self.clients.count
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn default_scenario() -> Self {
        Self::parse(DEFAULT_SCENARIO).expect("the embedded default scenario parses")
    }

    /// The crash and loss-burst faults (partitions: `partitions`).
    pub fn faults(&self) -> impl Iterator<Item = &Fault> {
        self.faults.iter().filter_map(|f| match f.get_ref() {
            FaultEntry::Fault(f) => Some(f),
            FaultEntry::Partition(_) => None,
        })
    }

    /// The `kind = "partition"` faults.
    pub fn partitions(&self) -> impl Iterator<Item = &Partition> {
        self.faults.iter().filter_map(|f| match f.get_ref() {
            FaultEntry::Partition(p) => Some(p),
            FaultEntry::Fault(_) => None,
        })
    }

    /// The adversaries, without their source spans.
    pub fn adversaries(&self) -> impl Iterator<Item = &Adversary> {
        self.adversaries.iter().map(|a| a.get_ref())
    }

    /// A hash of the scenario as run (seed included), printed beside the trace hash.
    pub fn hash(&self) -> String {
        let text = serde_json::to_string(self).expect("scenario serialises");
        blake3::hash(text.as_bytes()).to_hex()[..16].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses_with_issue_keys() {
        let s = Scenario::default_scenario();
        assert_eq!(s.mixnet.hops, 5);
        assert_eq!(s.clients.count, 1000);
        assert_eq!(s.faults().count(), 1);
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let err = Scenario::parse("seed = 1\n[mixnet]\nhopz = 3\n").unwrap_err().to_string();
        assert!(err.contains("hopz"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_value_is_named_with_line() {
        let err = Scenario::parse("[mixnet]\nhops = 5\npacket_loss = 0.9\n").unwrap_err().to_string();
        assert!(err.contains("packet_loss") && err.contains("line 3"), "{err}");
        let err = Scenario::parse("duration = \"ten minutes\"\n").unwrap_err().to_string();
        assert!(err.contains("duration") || err.contains("ten minutes"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn group_keys_parse_and_cross_checks_name_the_key() {
        let src = "[nodes]\ngroup = 2\n[workload.groups]\ncount = 20\nsize_min = 3\nsize_max = 50\n\
                   message_rate_per_member_per_min = 0.5\nopen_fraction = 0.5\npublic_fraction = 0.5\n\
                   joins_per_min = 2\nleaves_per_min = 1\n";
        let s = Scenario::parse(src).unwrap();
        assert_eq!((s.nodes.group, s.workload.groups.count, s.workload.groups.size_max), (2, 20, 50));
        let err = Scenario::parse("[workload.groups]\ncount = 3\n").unwrap_err().to_string();
        assert!(err.contains("group node") && err.contains("line 2"), "{err}");
        let err = Scenario::parse("[nodes]\ngroup = 1\n[workload.groups]\ncount = 1\nsize_min = 9\nsize_max = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("size_min") && err.contains("line 5"), "{err}");
        let err = Scenario::parse("[nodes]\ngroup = 1\n[workload.groups]\ncount = 1\nsize_max = 500\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("size_max") && err.contains("ratchet tree") && err.contains("line 5"), "{err}");
        let err = Scenario::parse("[workload.groups]\nopen_fraction = 1.5\n").unwrap_err().to_string();
        assert!(err.contains("fraction") && err.contains("line 2"), "{err}");
        // A crash may target a group node (numbered after the discovery nodes).
        let src = "[nodes]\ndiscovery = 1\ngroup = 1\n[[faults]]\nat = \"1m\"\nkind = \"crash\"\nnode = 1\nrestart_after = \"5s\"\n";
        assert!(Scenario::parse(src).is_ok());
    }

    #[test]
    fn fault_on_missing_node_is_rejected() {
        let src =
            "[nodes]\ndiscovery = 1\n\n[[faults]]\nat = \"1m\"\nkind = \"crash\"\nnode = 3\nrestart_after = \"5s\"\n";
        let err = Scenario::parse(src).unwrap_err().to_string();
        assert!(err.contains("node") && err.contains("line 4"), "{err}");
        let src = "[[faults]]\nat = \"1m\"\nkind = \"meteor\"\n";
        let err = Scenario::parse(src).unwrap_err().to_string();
        assert!(err.contains("meteor") && err.contains("line"), "{err}");
    }

    /// The issue's example: twelve discovery nodes, a federation, an adversary, a partition.
    const FEDERATION_EXAMPLE: &str = r#"duration = "10m"
[nodes]
discovery = 12
group = 4
[federation]
trust = "witness-quorum"
witnesses_required = 3
epoch = "30s"
cross_node_share = 0.5
gossip_fanout = 3
lookups_per_client_per_min = 0.2
[[adversaries]]
kind = "equivocate"
node = 3
at = "2m"
[[faults]]
at = "4m"
kind = "partition"
groups = [[0,1,2,3,4,5],[6,7,8,9,10,11]]
heal_after = "1m"
"#;

    fn err(src: &str) -> String {
        Scenario::parse(src).unwrap_err().to_string()
    }

    /// Replaces the first occurrence of `from` in the example.
    fn example_with(from: &str, to: &str) -> String {
        assert!(FEDERATION_EXAMPLE.contains(from), "{from}");
        FEDERATION_EXAMPLE.replacen(from, to, 1)
    }

    #[test]
    fn federation_example_parses() {
        let s = Scenario::parse(FEDERATION_EXAMPLE).unwrap();
        let fed = s.federation.as_ref().unwrap();
        assert_eq!(fed.trust, Trust::WitnessQuorum);
        assert_eq!(fed.trust.name(), "witness-quorum");
        assert_eq!((fed.witnesses_required, fed.gossip_fanout), (3, 3));
        assert_eq!(fed.epoch, Dur::from_secs(30));
        assert_eq!((fed.cross_node_share, fed.lookups_per_client_per_min), (0.5, 0.2));
        let adv: Vec<_> = s.adversaries().collect();
        assert_eq!(adv.len(), 1);
        assert_eq!((adv[0].kind, adv[0].node, adv[0].at), (AdversaryKind::Equivocate, 3, Dur::from_secs(120)));
        assert_eq!((adv[0].delay, adv[0].user, adv[0].sybil_count()), (None, None, SYBIL_COUNT_DEFAULT));
        let parts: Vec<_> = s.partitions().collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].groups, vec![vec![0, 1, 2, 3, 4, 5], vec![6, 7, 8, 9, 10, 11]]);
        assert_eq!((parts[0].at, parts[0].heal_after), (Dur::from_secs(240), Dur::from_secs(60)));
        assert_eq!(s.faults().count(), 0, "a partition is not a node fault");
        // Defaults of an empty [federation]; other trust policies and the kind-specific keys.
        let s = Scenario::parse("[nodes]\ndiscovery = 2\n[federation]\n").unwrap();
        let fed = s.federation.unwrap();
        assert_eq!((fed.trust, fed.witnesses_required, fed.epoch), (Trust::WitnessQuorum, 1, Dur::from_secs(30)));
        assert_eq!((fed.cross_node_share, fed.gossip_fanout, fed.lookups_per_client_per_min), (0.5, 3, 0.2));
        for (trust, t) in [("tofu", Trust::Tofu), ("allowlist", Trust::Allowlist)] {
            let s = Scenario::parse(&example_with("\"witness-quorum\"", &format!("\"{trust}\""))).unwrap();
            assert_eq!(s.federation.unwrap().trust, t);
        }
        let src = format!(
            "{FEDERATION_EXAMPLE}[[adversaries]]\nkind = \"drop_forwarded\"\nnode = 0\nat = \"1m\"\ndelay = \"2s\"\n\
             [[adversaries]]\nkind = \"sybil\"\nnode = 11\nat = \"1m\"\ncount = 7\n\
             [[adversaries]]\nkind = \"substitute_key\"\nnode = 1\nat = \"1m\"\nuser = 9\n\
             [[adversaries]]\nkind = \"replay_head\"\nnode = 2\nat = \"0s\"\n"
        );
        let s = Scenario::parse(&src).unwrap();
        let adv: Vec<_> = s.adversaries().collect();
        assert_eq!(adv[1].delay, Some(Dur::from_secs(2)));
        assert_eq!((adv[2].kind, adv[2].sybil_count()), (AdversaryKind::Sybil, 7));
        assert_eq!(adv[3].user, Some(9));
        assert_eq!(adv[4].kind, AdversaryKind::ReplayHead);
    }

    #[test]
    fn no_federation_means_none_and_the_hash_is_unchanged() {
        let s = Scenario::default_scenario();
        assert!(s.federation.is_none() && s.adversaries.is_empty());
        assert_eq!(s.partitions().count(), 0);
        // The scenario hash serialises faults; the wrapper must not change their form.
        let f = s.faults().next().unwrap().clone();
        assert_eq!(serde_json::to_string(&FaultEntry::Fault(f.clone())).unwrap(), serde_json::to_string(&f).unwrap());
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("federation") && !json.contains("adversaries"), "{json}");
    }

    #[test]
    fn federation_values_are_range_checked() {
        let e = err(&example_with("epoch = \"30s\"", "epoch = \"2h\""));
        assert!(e.contains("epoch") && e.contains("line 8"), "{e}");
        let e = err(&example_with("witnesses_required = 3", "witnesses_required = 0"));
        assert!(e.contains("witnesses_required") && e.contains("line 7"), "{e}");
        let e = err(&example_with("cross_node_share = 0.5", "cross_node_share = 1.5"));
        assert!(e.contains("cross_node_share") && e.contains("line 9"), "{e}");
        let e = err(&example_with("gossip_fanout = 3", "gossip_fanout = 0"));
        assert!(e.contains("gossip_fanout") && e.contains("line 10"), "{e}");
        let e = err(&example_with("trust = \"witness-quorum\"", "trust = \"blind\""));
        assert!(e.contains("blind") && e.contains("line 6"), "{e}");
        let e = err(&example_with("epoch = \"30s\"", "epok = \"30s\""));
        assert!(e.contains("epok") && e.contains("line 8"), "{e}");
    }

    #[test]
    fn too_many_witnesses_are_rejected() {
        let e = err(&example_with("witnesses_required = 3", "witnesses_required = 12"));
        assert!(e.contains("witnesses_required") && e.contains("line 7") && e.contains("11 other"), "{e}");
        // Eleven witnesses out of twelve nodes are fine; with tofu the key is ignored.
        assert!(Scenario::parse(&example_with("witnesses_required = 3", "witnesses_required = 11")).is_ok());
        let tofu = example_with("\"witness-quorum\"", "\"tofu\"").replacen(
            "witnesses_required = 3",
            "witnesses_required = 40",
            1,
        );
        assert!(Scenario::parse(&tofu).is_ok());
        // The default (1) with one discovery node: a federation needs two.
        let e = err("[federation]\ntrust = \"tofu\"\n");
        assert!(e.contains("discovery") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn adversary_checks_name_the_key_and_line() {
        let e = err(&example_with("node = 3", "node = 12"));
        assert!(e.contains("`node` = 12") && e.contains("line 14"), "{e}");
        let e = err(&example_with("kind = \"equivocate\"", "kind = \"sybil\"").replacen("node = 3", "node = 99", 1));
        assert!(e.contains("`node` = 99") && e.contains("vouch") && e.contains("line 14"), "{e}");
        let e = err(&example_with("kind = \"equivocate\"", "kind = \"gaslight\""));
        assert!(e.contains("gaslight") && e.contains("kind") && e.contains("line 13"), "{e}");
        let e = err(&example_with("at = \"2m\"", "at = \"10m\""));
        assert!(e.contains("`at`") && e.contains("duration") && e.contains("line 15"), "{e}");
        let e = err(&example_with("at = \"2m\"", "at = \"2m\"\ncount = 3"));
        assert!(e.contains("`count`") && e.contains("sybil") && e.contains("line 16"), "{e}");
        let e = err(&example_with("at = \"2m\"", "at = \"2m\"\nweather = 3"));
        assert!(e.contains("weather") && e.contains("line 16"), "{e}");
        let e = err(&example_with("kind = \"equivocate\"", "kind = \"sybil\"").replacen(
            "at = \"2m\"",
            "at = \"2m\"\ncount = 0",
            1,
        ));
        assert!(e.contains("`count` = 0") && e.contains("line 16"), "{e}");
        let e = err(&example_with("kind = \"equivocate\"", "kind = \"substitute_key\"").replacen(
            "at = \"2m\"",
            "at = \"2m\"\nuser = 5000",
            1,
        ));
        assert!(e.contains("`user` = 5000") && e.contains("line 16"), "{e}");
        // Adversaries without [federation].
        let src = "[nodes]\ndiscovery = 4\n\n[[adversaries]]\nkind = \"replay_head\"\nnode = 1\nat = \"1m\"\n";
        let e = err(src);
        assert!(e.contains("adversaries") && e.contains("[federation]") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn partition_checks_name_the_key_and_line() {
        let e = err(&example_with("[6,7,8,9,10,11]", "[6,7,8,9,10,16]"));
        assert!(e.contains("`groups`") && e.contains("node 16") && e.contains("line 19"), "{e}");
        // Group nodes (12..16) may be partitioned too.
        assert!(Scenario::parse(&example_with("[6,7,8,9,10,11]", "[6,7,8,9,10,15]")).is_ok());
        let e = err(&example_with("[6,7,8,9,10,11]", "[6,7,8,9,10,5]"));
        assert!(
            e.contains("`groups`") && e.contains("node 5") && e.contains("more than one") && e.contains("line 19"),
            "{e}"
        );
        let e = err(&example_with("[[0,1,2,3,4,5],[6,7,8,9,10,11]]", "[[0,1,2]]"));
        assert!(e.contains("`groups`") && e.contains("at least 2") && e.contains("line 19"), "{e}");
        let e = err(&example_with("[[0,1,2,3,4,5],[6,7,8,9,10,11]]", "[[0,1,2],[]]"));
        assert!(e.contains("`groups`") && e.contains("empty") && e.contains("line 19"), "{e}");
        let e = err(&example_with("heal_after = \"1m\"\n", ""));
        assert!(e.contains("heal_after") && e.contains("line 16"), "{e}");
        let e = err(&example_with("heal_after = \"1m\"", "heal_after = \"0s\""));
        assert!(e.contains("heal_after") && e.contains("line 20"), "{e}");
        let e = err(&example_with("at = \"4m\"", "at = \"11m\""));
        assert!(e.contains("`at`") && e.contains("line 16"), "{e}");
    }
}
