//! Reading a scenario: TOML through serde (unknown keys and bad values named with their
//! line), then the checks that span several keys (nodes named by faults and adversaries,
//! group sizes, the federation's witnesses), each naming the key and its line.

use super::schema::{
    Adversary, AdversaryKind, Dur, FLOOD_RATE_MAX, Fault, FaultEntry, GROUP_SIZE_MAX, Partition, SYBIL_COUNT_MAX,
    Scenario, Trust,
};

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
            if a.kind == AdversaryKind::InjectJoin {
                if a.node < discovery || a.node >= discovery + self.nodes.group {
                    return Err(invalid(
                        key_line_in(src, span, "node"),
                        format!("adversaries: `node` = {} is not a group node (inject_join)", a.node),
                    ));
                }
                continue;
            }
            if a.kind.is_flood() {
                self.check_flood(src, span, a)?;
                continue;
            }
            for (key, given) in [("rate", a.rate.is_some()), ("until", a.until.is_some())] {
                if given {
                    return Err(invalid(
                        key_line_in(src, span.clone(), key),
                        format!("adversaries: `{key}` only applies to the flood kinds (`flood_*`)"),
                    ));
                }
            }
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

    /// A `flood_*` adversary: its node, window, rate, count and victim.
    fn check_flood(&self, src: &str, span: std::ops::Range<usize>, a: &Adversary) -> Result<(), ScenarioError> {
        let (discovery, group) = (self.nodes.discovery, self.nodes.group);
        let name = serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let on_group_node = matches!(a.kind, AdversaryKind::FloodSubscribe | AdversaryKind::FloodGroups);
        let node_ok = if on_group_node { (discovery..discovery + group).contains(&a.node) } else { a.node < discovery };
        if !node_ok {
            let what = if on_group_node { "a group node" } else { "a discovery node" };
            return Err(invalid(
                key_line_in(src, span, "node"),
                format!("adversaries: `node` = {} is not {what} ({name})", a.node),
            ));
        }
        if self.federation.is_some() {
            return Err(invalid(
                line_of(src, span.start),
                format!("adversaries: {name} is not modelled in a scenario with a `[federation]`"),
            ));
        }
        if a.kind == AdversaryKind::FloodSubscribe && self.workload.groups.count == 0 {
            return Err(invalid(
                line_of(src, span.start),
                "adversaries: flood_subscribe needs groups (`[workload.groups] count`)".into(),
            ));
        }
        let until = a.until.unwrap_or(self.duration);
        if a.at >= until || until > self.duration {
            return Err(invalid(
                key_line_in(src, span, if a.until.is_some() { "until" } else { "at" }),
                format!(
                    "adversaries: the flood runs from `at` = {} to `until` = {until}, which must be later and not \
                     after `duration` = {}",
                    a.at, self.duration
                ),
            ));
        }
        if let Some(rate) = a.rate
            && !(rate > 0.0 && rate <= FLOOD_RATE_MAX)
        {
            return Err(invalid(
                key_line_in(src, span, "rate"),
                format!("adversaries: `rate` = {rate} is out of range: above 0, at most {FLOOD_RATE_MAX} a second"),
            ));
        }
        if let Some(count) = a.count
            && !(1..=SYBIL_COUNT_MAX).contains(&count)
        {
            return Err(invalid(
                key_line_in(src, span, "count"),
                format!("adversaries: `count` = {count} is out of range: 1 to {SYBIL_COUNT_MAX}"),
            ));
        }
        if a.kind == AdversaryKind::FloodQueue && a.user.unwrap_or(a.node) >= self.clients.count {
            return Err(invalid(
                line_of(src, span.start),
                format!("adversaries: flood_queue on node {} has no client to flood (set `user`)", a.node),
            ));
        }
        if let Some(user) = a.user {
            if a.kind != AdversaryKind::FloodQueue {
                return Err(invalid(
                    key_line_in(src, span, "user"),
                    format!("adversaries: `user` does not apply to {name}"),
                ));
            }
            if user >= self.clients.count || user % discovery != a.node {
                return Err(invalid(
                    key_line_in(src, span, "user"),
                    format!("adversaries: `user` = {user} is not a client homed on node {} (flood_queue)", a.node),
                ));
            }
        }
        Ok(())
    }
}
