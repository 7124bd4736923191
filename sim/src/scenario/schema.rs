//! The scenario's tables and keys (`[mixnet]`, `[nodes]`, `[clients]`, `[workload]`,
//! `[[faults]]`, `[federation]`, `[[adversaries]]`), their defaults, and the per-key range
//! checks serde runs while it reads them.

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

/// Largest initial group size a scenario may ask for (see `Scenario::parse`).
pub const GROUP_SIZE_MAX: u32 = 120;

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
    /// `[[adversaries]]`: misbehaving discovery nodes (needs `[federation]`), a misbehaving
    /// group node (`inject_join`) and flooding clients (`flood_*`; these two need none).
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
    /// Signs one head whose tree holds a user twice; shows the user the real leaf and
    /// everyone else the substitute.
    SplitView,
    /// Group node `node` (numbered after the discovery nodes; no federation needed) admits
    /// an intruder's external commit, without invitation, into an invite-only group it
    /// hosts and pushes it to the members as the next entry.
    InjectJoin,
    /// Discovery node `node`, an authenticated peer of the others, attacks their tables and
    /// their directory: once the next discovery node (`node + 1`) has listed a public
    /// group, it floods its peers with `HIJACK_FLOOD_DESCRIPTORS` fresh self-signed
    /// descriptors and gossips adverts pointing that group at itself (dated `u64::MAX`,
    /// host-signed by itself, and one claiming the real host under its own signature).
    AdvertHijack,
    /// `count` tags send node `node` valid `RegisterRequest`s and `LoginRequest`s (for an
    /// account the attacker registered first) at `rate` a second, never answering the
    /// challenges, to fill its challenge table. No federation needed (as for all floods).
    FloodRegister,
    /// `count` tags send group node `node` `GroupSubscribe` requests naming a member of a
    /// group it hosts (member keys are public), to fill its subscribe challenge table.
    FloodSubscribe,
    /// One attacker account on node `node` sends client `user` (absent: the first client
    /// homed there) valid DMs at `rate` a second, to fill the victim's queue.
    FloodQueue,
    /// `count` attacker accounts, each registered and logged in on group node `node`,
    /// create junk groups there at `rate` a second, to exhaust group creation.
    FloodGroups,
}

impl AdversaryKind {
    /// A flooding client (`flood_*`): a misbehaving user, not a node.
    pub fn is_flood(self) -> bool {
        matches!(
            self,
            AdversaryKind::FloodRegister
                | AdversaryKind::FloodSubscribe
                | AdversaryKind::FloodQueue
                | AdversaryKind::FloodGroups
        )
    }
}

/// Fresh self-signed descriptors an `advert_hijack` adversary floods its peers with.
pub const HIJACK_FLOOD_DESCRIPTORS: u32 = 500;

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
    /// `substitute_key`: the client (index) whose key is substituted; `flood_queue`: the
    /// victim (absent: the world chooses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
    /// `flood_*` only: requests a second (absent: `FLOOD_RATE_DEFAULT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// `flood_*` only: when the flood stops (absent: at `duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Dur>,
}

/// Requests a second a `flood_*` adversary sends when `rate` is absent.
pub const FLOOD_RATE_DEFAULT: f64 = 100.0;
/// Largest `rate` of a `flood_*` adversary.
pub const FLOOD_RATE_MAX: f64 = 2_000.0;
/// Tags (or, for `flood_groups`, accounts) a flood uses when `count` is absent.
pub const FLOOD_COUNT_DEFAULT: u32 = 10;

impl Adversary {
    /// Fresh nodes a `sybil` adversary adds.
    pub fn sybil_count(&self) -> u32 {
        self.count.unwrap_or(SYBIL_COUNT_DEFAULT)
    }

    /// Tags (accounts for `flood_groups`) a flood uses.
    pub fn flood_count(&self) -> u32 {
        self.count.unwrap_or(FLOOD_COUNT_DEFAULT)
    }

    /// Requests a second a flood sends.
    pub fn flood_rate(&self) -> f64 {
        self.rate.unwrap_or(FLOOD_RATE_DEFAULT)
    }
}

impl Scenario {
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
