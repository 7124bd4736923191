//! Scenario files (TOML). Every key has a default; unknown keys and bad values are
//! rejected with the key and the line named. Normative list of keys: `specs/sim.md`.
//!
//! `schema` holds the tables, keys and defaults; `parse` reads a file and checks what
//! spans several keys.

mod parse;
mod schema;

pub use parse::ScenarioError;
pub use schema::{
    Adversary, AdversaryKind, Clients, DmWorkload, Dur, FLOOD_COUNT_DEFAULT, FLOOD_RATE_DEFAULT, FLOOD_RATE_MAX, Fault,
    FaultEntry, Federation, GROUP_SIZE_MAX, GroupWorkload, HIJACK_FLOOD_DESCRIPTORS, Mixnet, Nodes, Partition,
    SYBIL_COUNT_DEFAULT, SYBIL_COUNT_MAX, Scenario, Trust, Workload,
};

/// The scenario run when `nymstr-sim` is given no file.
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/default.toml");

impl Scenario {
    pub fn default_scenario() -> Self {
        Self::parse(DEFAULT_SCENARIO).expect("the embedded default scenario parses")
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

    #[test]
    fn floods_need_no_federation_and_check_their_keys() {
        let base = "duration = \"2m\"\n[nodes]\ndiscovery = 2\ngroup = 1\n[clients]\ncount = 10\n";
        let flood = |kind: &str, rest: &str| format!("{base}[[adversaries]]\nkind = \"{kind}\"\nat = \"10s\"\n{rest}");
        let s = Scenario::parse(&flood("flood_register", "node = 1\nrate = 50.0\ncount = 3\nuntil = \"1m\"\n"))
            .expect("a flood needs no [federation]");
        let a = s.adversaries().next().unwrap();
        assert_eq!((a.flood_rate(), a.flood_count()), (50.0, 3));
        assert!(Scenario::parse(&flood("flood_queue", "node = 0\nuser = 4\n")).is_ok());
        let e = err(&flood("flood_queue", "node = 0\nuser = 3\n"));
        assert!(e.contains("`user` = 3") && e.contains("line 11"), "{e}");
        let e = err(&flood("flood_register", "node = 2\n"));
        assert!(e.contains("not a discovery node") && e.contains("line 10"), "{e}");
        let e = err(&flood("flood_groups", "node = 0\n"));
        assert!(e.contains("not a group node"), "{e}");
        let e = err(&flood("flood_subscribe", "node = 2\n"));
        assert!(e.contains("needs groups"), "{e}");
        let e = err(&flood("flood_register", "node = 0\nrate = 0.0\n"));
        assert!(e.contains("`rate`") && e.contains("line 11"), "{e}");
        let e = err(&flood("flood_register", "node = 0\nuntil = \"3m\"\n"));
        assert!(e.contains("`until`") && e.contains("line 11"), "{e}");
        let e = err(&example_with("at = \"2m\"", "at = \"2m\"\nrate = 5.0"));
        assert!(e.contains("`rate` only applies to the flood kinds"), "{e}");
        let e = err(&example_with("kind = \"equivocate\"", "kind = \"flood_register\""));
        assert!(e.contains("not modelled") && e.contains("[federation]"), "{e}");
    }
}
