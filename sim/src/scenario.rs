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
    #[serde(default)]
    pub faults: Vec<Spanned<Fault>>,
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
    pub core: nymstr_node::NodeConfig,
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
            core: nymstr_node::NodeConfig::default(),
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

impl Scenario {
    pub fn parse(src: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(src).map_err(|e| ScenarioError::Toml(e.to_string()))?;
        for fault in &scenario.faults {
            let line = line_of(src, fault.span().start);
            match fault.get_ref() {
                Fault::Crash { node, .. } if *node >= scenario.nodes.discovery + scenario.nodes.group => {
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
                _ => {}
            }
        }
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

    pub fn default_scenario() -> Self {
        Self::parse(DEFAULT_SCENARIO).expect("the embedded default scenario parses")
    }

    pub fn faults(&self) -> impl Iterator<Item = &Fault> {
        self.faults.iter().map(|f| f.get_ref())
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
}
