//! Simulator runs as specifications: a scenario, the expected outcome.

use nymstr_sim::{Report, Scenario, run};

/// A small federation that runs in well under a second in the dev profile.
fn small(extra: &str) -> Scenario {
    let src = format!(
        r#"
seed = 7
duration = "2m"
[clients]
count = 120
join_spread = "20s"
offline_per_hour = 6.0
offline_mean = "30s"
[workload.dm]
rate_per_client_per_min = 2.0
{extra}
"#
    );
    Scenario::parse(&src).expect("test scenario parses")
}

fn assert_clean(r: &Report) {
    assert!(r.ok(), "violations: {:#?}", r.invariants.violations);
    assert!(r.invariants.checked > 0);
    assert!(r.dm.sent > 100, "workload too small to mean anything: {}", r.dm.sent);
    assert_eq!(r.dm.acked, r.dm.sent);
    assert_eq!(r.dm.delivered, r.dm.sent);
    assert_eq!(r.dm.lost, 0);
    assert_eq!(r.dm.duplicates, 0);
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let a = run(small(""));
    let b = run(small(""));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    let mut other = small("");
    other.seed = 8;
    let c = run(other);
    assert_ne!(a.trace_hash, c.trace_hash);
    assert_clean(&a);
    assert_clean(&c);
}

#[test]
fn crash_loses_no_acknowledged_message() {
    let r = run(small(
        r#"
[[faults]]
at = "40s"
kind = "crash"
node = 0
restart_after = "20s"
[[faults]]
at = "90s"
kind = "crash"
node = 0
restart_after = "5s"
"#,
    ));
    assert_eq!(r.faults.crashes, 2);
    // The crashes really cut traffic: packets were dropped at the down node.
    assert!(r.mixnet.dropped_at_down_endpoint > 0);
    assert_clean(&r);
}

#[test]
fn loss_burst_is_survived_by_retransmission() {
    let r = run(small(
        r#"
[[faults]]
at = "30s"
kind = "loss_burst"
duration = "30s"
packet_loss = 0.3
"#,
    ));
    assert!(r.mixnet.retransmissions > 100, "retransmissions: {}", r.mixnet.retransmissions);
    assert_clean(&r);
}

#[test]
fn latency_agrees_with_the_model() {
    let r = run(small(""));
    let l = &r.latency_ms;
    assert!(l.clean_samples > 100, "{}", l.clean_samples);
    // 5 hops x 50 ms.
    assert!((l.packet_transit_mean - 250.0).abs() < 10.0, "{}", l.packet_transit_mean);
    assert!(l.p50 > 500.0 && l.p50 < 1500.0, "p50 {}", l.p50);
}

#[test]
fn a_node_that_acks_before_flushing_is_caught() {
    // Many offline recipients (messages wait in the queue) and repeated crashes: a node
    // that acknowledges before its write is durable must lose acknowledged messages,
    // and the exactly-once oracle must say so.
    let mut faults = String::new();
    for i in 0..8 {
        faults +=
            &format!("[[faults]]\nat = \"{}s\"\nkind = \"crash\"\nnode = 0\nrestart_after = \"2s\"\n", 30 + i * 10);
    }
    let mut sc = small(&format!("[nodes]\nbuggify_ack_before_flush = true\nbackground_flush_ms = 5000\n{faults}"));
    sc.clients.offline_per_hour = 60.0;
    sc.clients.offline_mean = nymstr_sim::scenario::Dur::from_secs(60);
    let r = run(sc);
    assert!(r.dm.lost > 0, "the buggified node lost nothing; the oracle proves nothing");
    assert!(r.invariants.violations.iter().any(|v| v.contains("lost")), "{:?}", r.invariants.violations);
}

#[test]
fn multiple_nodes_share_the_load() {
    let r = run(small("[nodes]\ndiscovery = 3\n"));
    assert_clean(&r);
    assert_eq!(r.nodes, 3);
}
