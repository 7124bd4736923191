//! The run report: a human summary by default, one JSON object with `--json`.

use nymstr_node_core::actors::NodeStats;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub scenario_hash: String,
    /// blake3 of the event trace: same scenario and seed, same hash.
    pub trace_hash: String,
    pub sim_time_ms: f64,
    pub wall_time_ms: f64,
    /// Simulated time per wall-clock time.
    pub speedup: f64,
    pub events: u64,
    pub events_per_sec: f64,
    pub nodes: u32,
    pub clients: u32,
    pub registered: u64,
    pub dm: Dm,
    pub latency_ms: Latency,
    pub mixnet: MixnetStats,
    pub node: NodeStats,
    pub faults: Faults,
    pub groups: GroupsReport,
    pub invariants: Invariants,
    /// Present only when the scenario has a `[federation]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationReport>,
    /// Present only when the scenario has `flood_*` adversaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floods: Option<FloodReport>,
}

/// `floods.*`: what honest users saw while `flood_*` adversaries ran, and what the
/// floods got.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FloodReport {
    /// An honest registration, login or subscription started during a flood must be done
    /// within this (`specs/sim.md`).
    pub service_bound_ms: f64,
    /// Honest operations started while a flood ran, by operation.
    pub honest_under_flood_ms: std::collections::BTreeMap<String, ServiceLatency>,
    /// The same, started while no flood ran.
    pub honest_unloaded_ms: std::collections::BTreeMap<String, ServiceLatency>,
    /// Honest requests refused `Busy` or `QueueFull`, by request kind and code (must be empty).
    pub honest_refusals: std::collections::BTreeMap<String, u64>,
    /// Flood DMs their recipient received.
    pub flood_dms_delivered: u64,
    /// Honest DMs written to a `flood_queue` victim while it was flooded.
    pub honest_dms_to_victims: u64,
    pub flooders: Vec<FlooderReport>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceLatency {
    pub n: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// One flood: its requests, and the node's answers by body kind (errors by code).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlooderReport {
    pub kind: String,
    pub node: u32,
    pub sent: u64,
    pub answers: std::collections::BTreeMap<String, u64>,
}

impl FloodReport {
    /// The text report's `floods:` lines.
    fn summary(&self) -> String {
        let mut s = String::new();
        for f in &self.flooders {
            let answers: Vec<String> = f.answers.iter().map(|(k, n)| format!("{k} {n}")).collect();
            s += &format!("flood: {} on node {}: {} sent; answers: {}\n", f.kind, f.node, f.sent, answers.join(", "));
        }
        let lat = |m: &std::collections::BTreeMap<String, ServiceLatency>| {
            m.iter()
                .filter(|(_, l)| l.n > 0)
                .map(|(k, l)| format!("{k} n {} p50 {:.0} p99 {:.0} max {:.0}", l.n, l.p50, l.p99, l.max))
                .collect::<Vec<_>>()
                .join("; ")
        };
        s += &format!(
            "floods: honest under flood (ms, bound {:.0}): {}\n        unloaded: {}\n        honest refusals {:?}; \
             flood DMs delivered {}; honest DMs to flood victims {}\n",
            self.service_bound_ms,
            lat(&self.honest_under_flood_ms),
            lat(&self.honest_unloaded_ms),
            self.honest_refusals,
            self.flood_dms_delivered,
            self.honest_dms_to_victims
        );
        s
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Dm {
    pub sent: u64,
    /// Acknowledged to the sender (the node held it durably).
    pub acked: u64,
    /// Received and verified by the recipient (at least once).
    pub delivered: u64,
    /// Extra surfacings of a message already received (must be 0).
    pub duplicates: u64,
    /// Acknowledged but never received (must be 0).
    pub lost: u64,
    pub failed: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// DMs whose every packet went through first time, from idle queues, to an online
    /// recipient: their latency is compared with the model's expectation.
    pub clean_samples: u64,
    pub clean_residual_mean: f64,
    pub clean_residual_std_error: f64,
    pub flush_wait_mean: f64,
    pub packet_transit_mean: f64,
    pub packet_transit_model: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MixnetStats {
    pub packets: u64,
    pub packets_lost: u64,
    pub retransmissions: u64,
    pub dropped_at_down_endpoint: u64,
    pub surbs_used: u64,
    pub surb_requests: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Faults {
    pub crashes: u64,
    pub offline_periods: u64,
    pub store_flushes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Invariants {
    /// Individual oracle checks performed.
    pub checked: u64,
    pub violations: Vec<String>,
}

/// `federation.*`: the transparency federation (`[federation]` in the scenario). Present
/// in the JSON only when the scenario has a federation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FederationReport {
    /// The trust policy, as written in the scenario (`tofu`, `witness-quorum`, `allowlist`).
    pub trust: String,
    /// Transparency lookups clients made of their contacts.
    pub lookups: u64,
    /// DMs sent to a contact registered on another discovery node.
    pub cross_node_dm: u64,
    /// Of those, received and verified by the recipient.
    pub cross_node_delivered: u64,
    /// Misbehaviours the adversaries carried out.
    pub attacks: u64,
    /// Of those, detected by an honest node or client.
    pub attacks_detected: u64,
    /// From an attack to its first detection.
    pub detection_latency_ms: DetectionLatency,
    /// Detections (or fork certificates) naming a node that did not misbehave.
    pub false_alarms: u64,
    /// Share of clients that accepted a forged key (0 to 1).
    pub forged_key_accepted_share: f64,
    /// Log heads signed, over all nodes.
    pub heads_signed: u64,
    /// Cosignatures made by witnesses.
    pub cosignatures: u64,
    /// Fork certificates (proofs of equivocation) produced.
    pub fork_certificates: u64,
    /// Whether every honest node agreed on every log's head after the last partition
    /// healed; `null` when the scenario has no partition.
    pub partition_converged: Option<bool>,
}

/// `federation.detection_latency_ms`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DetectionLatency {
    pub p50: f64,
    pub max: f64,
}

impl DetectionLatency {
    /// Nearest-rank median and maximum of samples in milliseconds (0 when there are none).
    pub fn of(samples: &[f64]) -> Self {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        DetectionLatency { p50: percentile(&v, 0.50), max: v.last().copied().unwrap_or(0.0) }
    }
}

impl FederationReport {
    /// The text report's `federation:` line (the groups line's shape).
    pub fn summary(&self) -> String {
        let converged = match self.partition_converged {
            None => "no partition".to_string(),
            Some(true) => "partition converged".to_string(),
            Some(false) => "partition NOT converged".to_string(),
        };
        format!(
            "federation: trust {}; {} lookups; {} cross-node DMs, {} delivered; {} attacks, {} detected \
             (latency ms p50 {:.0} max {:.0}), {} false alarms; forged key accepted by {:.2}% of clients; \
             {} heads signed, {} cosignatures, {} fork certificates; {}\n",
            self.trust,
            self.lookups,
            self.cross_node_dm,
            self.cross_node_delivered,
            self.attacks,
            self.attacks_detected,
            self.detection_latency_ms.p50,
            self.detection_latency_ms.max,
            self.false_alarms,
            self.forged_key_accepted_share * 100.0,
            self.heads_signed,
            self.cosignatures,
            self.fork_certificates,
            converged
        )
    }
}

/// What the report shows about groups (`--json` key `groups`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupsReport {
    pub created: u64,
    pub joins: u64,
    pub leaves: u64,
    pub removals: u64,
    pub messages: u64,
    /// Receptions of group messages by members (each member counted once per message).
    pub deliveries: u64,
    /// Application messages written by members: the workload's texts plus the admins'
    /// automatic `SetMeta` after a join (so a joiner learns the name).
    pub app_messages_written: u64,
    /// Copies encrypted again (after `WrongEpoch`, or overtaken by a commit).
    pub app_reencryptions: u64,
    /// Network messages (application uploads) senders transmitted per message written,
    /// whatever the group size (P1): 1 plus retries of unanswered uploads and
    /// re-encryptions; the fan-out to members is the node's.
    pub sender_msgs_per_group_msg: f64,
    /// Application uploads the stewards accepted per message written (1 plus accepted
    /// re-encrypted copies).
    pub accepted_per_group_msg: f64,
    pub missing_detected: u64,
    pub missing_wrong_sender: u64,
    /// Missing reports by members who were not in the message's epoch (they could never
    /// have decrypted it): false alarms, not losses.
    pub missing_not_in_audience: u64,
    pub repaired: u64,
    pub lost: u64,
    pub history_gaps: u64,
    pub epoch_forks: u64,
    pub commits: u64,
    pub commit_latency_ms: Quantiles,
    pub join_latency_ms: Quantiles,
    pub errors: u64,
}

/// Two quantiles and the sample count.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub n: u64,
}

impl Quantiles {
    pub fn of(samples: &[f64]) -> Self {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Quantiles { p50: percentile(&v, 0.50), p99: percentile(&v, 0.99), n: v.len() as u64 }
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    pub fn ok(&self) -> bool {
        self.invariants.violations.is_empty()
    }

    /// One JSON object; `federation` appears only when the scenario has one.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    /// The human summary; a `federation:` line follows the groups line when present.
    pub fn summary(&self) -> String {
        let federation = self.federation.as_ref();
        let mut s = String::new();
        let d = &self.dm;
        let l = &self.latency_ms;
        s += &format!(
            "nymstr-sim  seed {}  scenario {}  trace {}\n",
            self.seed,
            self.scenario_hash,
            &self.trace_hash[..16]
        );
        s += &format!(
            "simulated {:.1} s in {:.2} s wall ({:.0}x), {} events ({:.0}/s)\n",
            self.sim_time_ms / 1000.0,
            self.wall_time_ms / 1000.0,
            self.speedup,
            self.events,
            self.events_per_sec
        );
        s += &format!("{} node(s), {} clients, {} registered\n", self.nodes, self.clients, self.registered);
        s += &format!(
            "dm: sent {}  acked {}  delivered {}  duplicates {}  lost {}  failed {}\n",
            d.sent, d.acked, d.delivered, d.duplicates, d.lost, d.failed
        );
        s += &format!("latency ms: p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}\n", l.p50, l.p90, l.p99, l.max);
        s += &format!(
            "model check: packet transit {:.1} ms (model {:.1}); clean DM latency off model by {:+.2} ± {:.2} ms over {} messages\n",
            l.packet_transit_mean,
            l.packet_transit_model,
            l.clean_residual_mean,
            l.clean_residual_std_error,
            l.clean_samples
        );
        let g = &self.groups;
        if g.created > 0 {
            s += &format!(
                "groups: {} created, {} joins, {} leaves/removals, {} messages, {} deliveries; {:.2} uploads per \
                 message ({:.2} accepted); missing {} (wrong sender {}), repaired {}, lost {}; {} commits, \
                 {} epoch forks; commit latency ms p50 {:.0} p99 {:.0}; join latency ms p50 {:.0} p99 {:.0}\n",
                g.created,
                g.joins,
                g.leaves + g.removals,
                g.messages,
                g.deliveries,
                g.sender_msgs_per_group_msg,
                g.accepted_per_group_msg,
                g.missing_detected,
                g.missing_wrong_sender,
                g.repaired,
                g.lost,
                g.commits,
                g.epoch_forks,
                g.commit_latency_ms.p50,
                g.commit_latency_ms.p99,
                g.join_latency_ms.p50,
                g.join_latency_ms.p99
            );
        }
        if let Some(f) = federation {
            s += &f.summary();
        }
        if let Some(f) = &self.floods {
            s += &f.summary();
        }
        let m = &self.mixnet;
        s += &format!(
            "mixnet: {} packets, {} lost, {} retransmitted, {} dropped at down endpoints, {} SURBs used, {} SURB requests\n",
            m.packets, m.packets_lost, m.retransmissions, m.dropped_at_down_endpoint, m.surbs_used, m.surb_requests
        );
        s += &format!(
            "faults: {} crash(es), {} offline periods, {} store flushes; node redeliveries {}\n",
            self.faults.crashes, self.faults.offline_periods, self.faults.store_flushes, self.node.redeliveries
        );
        if self.ok() {
            s += &format!("invariants: {} checks, all hold\n", self.invariants.checked);
        } else {
            s += &format!(
                "invariants: {} checks, {} VIOLATED\n",
                self.invariants.checked,
                self.invariants.violations.len()
            );
            for v in self.invariants.violations.iter().take(20) {
                s += &format!("  - {v}\n");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            seed: 1,
            scenario_hash: "s".into(),
            trace_hash: "0123456789abcdef0123".into(),
            sim_time_ms: 1.0,
            wall_time_ms: 1.0,
            speedup: 1.0,
            events: 1,
            events_per_sec: 1.0,
            nodes: 2,
            clients: 2,
            registered: 2,
            dm: Dm { sent: 0, acked: 0, delivered: 0, duplicates: 0, lost: 0, failed: 0, rejected: 0 },
            latency_ms: Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
                clean_samples: 0,
                clean_residual_mean: 0.0,
                clean_residual_std_error: 0.0,
                flush_wait_mean: 0.0,
                packet_transit_mean: 0.0,
                packet_transit_model: 0.0,
            },
            mixnet: MixnetStats::default(),
            node: NodeStats::default(),
            faults: Faults { crashes: 0, offline_periods: 0, store_flushes: 0 },
            groups: GroupsReport::default(),
            invariants: Invariants { checked: 0, violations: vec![] },
            federation: None,
            floods: None,
        }
    }

    fn with(r: &Report, fed: &FederationReport) -> Report {
        let mut r = r.clone();
        r.federation = Some(fed.clone());
        r
    }

    #[test]
    fn federation_json_keys_only_when_present() {
        let r = report();
        let absent: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(absent.get("federation").is_none());
        assert!(!r.summary().contains("federation"));
        let fed = FederationReport {
            trust: "witness-quorum".into(),
            lookups: 10,
            cross_node_dm: 4,
            cross_node_delivered: 3,
            attacks: 2,
            attacks_detected: 1,
            detection_latency_ms: DetectionLatency::of(&[300.0, 100.0, 200.0]),
            false_alarms: 0,
            forged_key_accepted_share: 0.25,
            heads_signed: 7,
            cosignatures: 9,
            fork_certificates: 1,
            partition_converged: None,
        };
        let v: serde_json::Value = serde_json::from_str(&with(&r, &fed).to_json()).unwrap();
        let f = v["federation"].as_object().unwrap();
        let mut keys: Vec<&str> = f.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attacks",
                "attacks_detected",
                "cosignatures",
                "cross_node_delivered",
                "cross_node_dm",
                "detection_latency_ms",
                "false_alarms",
                "forged_key_accepted_share",
                "fork_certificates",
                "heads_signed",
                "lookups",
                "partition_converged",
                "trust"
            ]
        );
        assert_eq!(v["federation"]["detection_latency_ms"], serde_json::json!({"p50": 200.0, "max": 300.0}));
        assert_eq!(v["federation"]["partition_converged"], serde_json::Value::Null);
        assert_eq!(v["federation"]["trust"], "witness-quorum");
        assert_eq!(v["federation"]["forged_key_accepted_share"], 0.25);
        // Everything else is as without a federation.
        let mut rest = v.clone();
        rest.as_object_mut().unwrap().remove("federation");
        assert_eq!(rest, absent);
        let fed = FederationReport { partition_converged: Some(true), ..fed };
        let v: serde_json::Value = serde_json::from_str(&with(&r, &fed).to_json()).unwrap();
        assert_eq!(v["federation"]["partition_converged"], true);
        let text = with(&r, &fed).summary();
        assert!(text.contains("federation: trust witness-quorum; 10 lookups") && text.contains("partition converged"));
        assert_eq!(DetectionLatency::of(&[]), DetectionLatency { p50: 0.0, max: 0.0 });
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
