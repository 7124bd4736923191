//! The run report: a human summary by default, one JSON object with `--json`.

use nymstr_node::actors::NodeStats;
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
    pub groups: crate::groups::GroupsReport,
    pub invariants: Invariants,
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

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises")
    }

    pub fn summary(&self) -> String {
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
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
