//! Floods (issue 10 item 6): flooding users against the real node cores; honest users keep
//! their service (`specs/sim.md`, "Floods"). The second test lifts the per-tag and
//! per-sender quotas and checks that the oracle then fails, so it is known to bite.

use nymstr_sim::scenario::AdversaryKind;
use nymstr_sim::{Scenario, run};

const FLOODS: &str = include_str!("../scenarios/floods.toml");

#[test]
fn honest_users_keep_their_service_under_floods() {
    let r = run(Scenario::parse(FLOODS).expect("floods.toml parses"));
    assert!(r.ok(), "violations: {:#?}", r.invariants.violations);
    let f = r.floods.as_ref().expect("a flood report");
    assert!(f.honest_refusals.is_empty(), "{f:#?}");
    for service in ["register", "login", "subscribe"] {
        let l = &f.honest_under_flood_ms[service];
        assert!(l.n >= 10, "too few honest {service}s under the flood to mean anything: {f:#?}");
        assert!(l.max <= f.service_bound_ms, "{service}: {l:?}");
    }
    let flooder = |kind: &str| f.flooders.iter().find(|x| x.kind == kind).expect(kind);
    // Every flood reached its target: challenges issued, the queue share hit.
    assert!(flooder("flood_register").answers["challenge"] > 10_000, "{f:#?}");
    assert!(flooder("flood_subscribe").answers["challenge"] > 10_000, "{f:#?}");
    let queue = flooder("flood_queue");
    assert!(queue.answers["send_ack"] > 0 && queue.answers["QueueFull"] > 0, "{queue:?}");
    assert!(f.honest_dms_to_victims >= 10, "{f:#?}");
}

#[test]
fn without_the_quotas_the_flood_oracle_fails() {
    // The same floods, with the per-tag challenge share and the per-sender queue share
    // lifted: honest registrations, logins and subscriptions are refused `Busy` and take
    // far longer than the bound; honest DMs to the victim are refused `QueueFull`.
    let mut sc = Scenario::parse(FLOODS).expect("floods.toml parses");
    sc.nodes.core.challenges_per_tag_max = 1_000_000;
    sc.nodes.core.queue_per_sender_max = 1_000_000;
    let r = run(sc);
    let v = r.invariants.violations.join("\n");
    for needle in ["honest registers", "honest logins", "honest subscribes", "register_request: Busy"] {
        assert!(v.contains(needle), "no `{needle}` among:\n{v}");
    }
}

#[test]
fn without_the_queue_share_honest_dms_to_the_victim_are_refused() {
    // The queue flood alone, with the per-sender share of a queue lifted: the flooder
    // fills the victim's whole queue and honest DMs to it are refused `QueueFull`.
    let mut sc = Scenario::parse(FLOODS).expect("floods.toml parses");
    sc.adversaries.retain(|a| a.get_ref().kind == AdversaryKind::FloodQueue);
    sc.nodes.core.queue_per_sender_max = 1_000_000;
    let r = run(sc);
    let v = r.invariants.violations.join("\n");
    assert!(v.contains("send_dm: QueueFull"), "no honest `QueueFull` among:\n{v}");
}
