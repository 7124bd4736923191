//! Durability of a long-running federation (issue 10, item 1): 12 discovery nodes with
//! 5 s epochs, every node crashing and restarting once its witness view has outgrown what
//! one 64 KiB record held (the old layout could not restart such a node). The full hour is
//! `sim/scenarios/federation-restarts.toml`, run in release by CI; this is its short form.

use nymstr_sim::{Scenario, run};

fn restarts(duration_s: u64, first_crash_s: u64) -> Scenario {
    let mut src = format!(
        r#"
seed = 11
duration = "{duration_s}s"
drain_max = "4m"
[mixnet]
packet_loss = 0.001
[nodes]
discovery = 12
[clients]
count = 36
join_spread = "20s"
offline_per_hour = 0.0
[workload.dm]
rate_per_client_per_min = 0.5
[federation]
trust = "witness-quorum"
witnesses_required = 3
epoch = "5s"
cross_node_share = 0.5
lookups_per_client_per_min = 0.5
"#
    );
    for node in 0..12 {
        let at = first_crash_s + 20 * node;
        src.push_str(&format!(
            "[[faults]]\nat = \"{at}s\"\nkind = \"crash\"\nnode = {node}\nrestart_after = \"15s\"\n"
        ));
    }
    Scenario::parse(&src).expect("test scenario parses")
}

/// Every node crashes after five minutes of 5 s epochs (its witness view past 64 KiB as
/// one record) and restarts from its store; every oracle stays green.
#[test]
fn every_node_of_a_busy_federation_restarts_from_its_store() {
    let r = run(restarts(9 * 60 + 30, 5 * 60));
    assert!(r.ok(), "violations: {:#?}", r.invariants.violations);
    assert_eq!(r.faults.crashes, 12);
    let f = r.federation.as_ref().expect("a federation scenario");
    assert_eq!(f.false_alarms, 0, "{f:?}");
    assert!(f.cross_node_dm > 0 && f.cross_node_delivered == f.cross_node_dm, "{f:?}");
    assert_eq!(r.dm.lost, 0, "{:?}", r.dm);
    assert_eq!(r.dm.delivered, r.dm.sent, "{:?}", r.dm);
}
