//! The oracles and the report: after the run, every acknowledged DM was delivered once,
//! no node stores a client address or a group plaintext, group members agree, and the
//! latencies agree with the mixnet model (sampled during the run); then the report.

use std::collections::{BTreeMap, BTreeSet};

use nymstr_proto::wire::{GroupId, MsgId};

use crate::groups;
use crate::mixnet::{self, Us};
use crate::report::{self, Report};
use crate::rng::{self, Stream};

use super::state::{EPOCH_US, World, node_address};

impl World {
    pub(super) fn judge(&mut self) {
        let mut checks = 0u64;
        // 1. Every send the node acknowledged is delivered exactly once; every send is
        //    eventually acknowledged to its sender.
        for (id, d) in &self.dms {
            checks += 1;
            if d.failed || self.involves_adversary(d) {
                continue;
            }
            if d.node_acked_or_delivered() && d.delivered == 0 {
                let r = &self.clients[d.recipient as usize];
                self.violations.push(format!(
                    "acknowledged message {} from client {} to client {} lost (recipient {}, {} unanswered requests)",
                    hex8(id),
                    d.sender,
                    d.recipient,
                    if r.online { "online" } else { "offline" },
                    if r.core.is_idle() { "no" } else { "some" },
                ));
            }
            if d.delivered > 1 {
                self.violations.push(format!("message {} delivered {} times", hex8(id), d.delivered));
            }
            if !d.sender_acked {
                self.violations.push(format!("message {} never acknowledged to its sender", hex8(id)));
            }
        }
        // 2. No node holds a client's mixnet address.
        let addresses: BTreeSet<[u8; 32]> = self.clients.iter().map(|c| c.address).collect();
        let (scanned, found) = self.stores_holding(&addresses);
        checks += scanned;
        for (i, table) in found {
            self.violations.push(format!("node {i} stores a client address in table {table}"));
        }
        // Groups: members agree, every message reached its audience or was reported, no
        // epoch forked, no node holds a plaintext.
        if !self.groups.groups.is_empty() {
            checks += self.judge_groups();
        }
        // Floods: honest users kept their service (`flood.rs`).
        checks += self.judge_floods();
        // Federation: no client's witness is a node it was not configured with (sybils
        // never are), and under a hijack the tables stay bounded and the directory true.
        if self.fed.is_some() {
            checks += self.judge_witnesses_and_tables();
        }
        // 3. Observed latency agrees with the model.
        let t = self.metrics.transit_first_attempt;
        if t.n >= 30 {
            checks += 1;
            let expect = f64::from(self.sc.mixnet.hops) * self.sc.mixnet.hop_delay_ms_mean * 1000.0;
            let se = expect / f64::from(self.sc.mixnet.hops).sqrt() / (t.n as f64).sqrt();
            if (t.mean() - expect).abs() > 6.0 * se + 1000.0 {
                self.violations.push(format!(
                    "packet transit mean {:.1} ms disagrees with the model's {:.1} ms",
                    t.mean() / 1000.0,
                    expect / 1000.0
                ));
            }
        }
        let r = self.metrics.latency_residual;
        if r.n >= 30 {
            checks += 1;
            // The expectation (two legs) has its own Monte Carlo error; 1 ms slack for
            // rounding to microseconds per hop.
            let se = (r.std_error().powi(2) + 2.0 * self.expected_se_max.powi(2)).sqrt();
            if r.mean().abs() > 6.0 * se + 1000.0 {
                self.violations.push(format!(
                    "clean DM latency is off the model by {:.1} ms (+/- {:.1} ms, n = {})",
                    r.mean() / 1000.0,
                    r.std_error() / 1000.0,
                    r.n
                ));
            }
        }
        self.checks = checks;
    }

    /// Every client's witnesses are among the scenario's discovery nodes (never a sybil,
    /// never a node learnt from `Nodes` or gossip). Under `advert_hijack`: every honest
    /// discovery node holds at most `KNOWN_NODES_MAX` descriptors, at most one share per
    /// peer of the flood, and every other honest discovery node; and its entry for the
    /// group listed points at the real host.
    fn judge_witnesses_and_tables(&mut self) -> u64 {
        use nymstr_proto::limits::{KNOWN_NODES_MAX, KNOWN_PER_INTRODUCER_MAX};
        let Some(fed) = self.fed.as_ref() else { return 0 };
        let mut checks = 0;
        let configured: BTreeSet<_> = (0..self.sc.nodes.discovery).filter_map(|i| fed.ids.get(&i).copied()).collect();
        for (i, c) in self.clients.iter().enumerate() {
            checks += 1;
            if let Some(w) = c.core.transparency().witnesses().iter().find(|w| !configured.contains(*w)) {
                let what =
                    if fed.node_of_id(w).is_some_and(|n| fed.sybils.contains(&n)) { "a sybil" } else { "a node" };
                self.violations.push(format!("client {i} counts {what} it was not configured with as a witness"));
            }
        }
        let hijacks: Vec<_> = fed.attacks.iter().filter_map(|a| Some((a.spec.node, a.hijack.clone()?))).collect();
        for (attacker, h) in hijacks {
            let Some(host_id) = fed.ids.get(&h.host).copied() else { continue };
            let mut listed = 0;
            for n in 0..self.sc.nodes.discovery {
                if n == attacker || n == h.host || fed.is_adversary(n) {
                    continue;
                }
                let Some(f) = self.nodes[n as usize].core.as_ref().and_then(|c| c.federation()) else { continue };
                checks += 1;
                let known: BTreeSet<_> = f.known().map(|d| d.node_id).collect();
                let flooded = known.intersection(&h.flood).count();
                let share = KNOWN_PER_INTRODUCER_MAX * self.sc.nodes.discovery as usize;
                if known.len() > KNOWN_NODES_MAX || flooded > share {
                    self.violations.push(format!(
                        "node {n} holds {} descriptors, {flooded} of them flooded by node {attacker}",
                        known.len()
                    ));
                }
                for m in (0..self.sc.nodes.discovery).filter(|m| *m != n) {
                    if let Some(id) = fed.ids.get(&m)
                        && !known.contains(id)
                    {
                        self.violations.push(format!("node {n} lost node {m}'s descriptor under the flood"));
                    }
                }
                if let Some(a) = f.remote_adverts().find(|a| a.group_id == h.group_id) {
                    listed += 1;
                    if a.host != host_id || a.group_node != node_address(h.host) {
                        self.violations.push(format!("node {n} lists the group at node {attacker}, not its host"));
                    }
                }
            }
            if listed == 0 {
                self.violations.push(format!("no honest node lists the group node {} hosts", h.host));
            }
        }
        checks
    }

    /// Scans every node's store (up or down) for any of `needles` inside a key or value:
    /// records scanned, and (node, table) for each key or value that holds one.
    fn stores_holding<const N: usize>(&self, needles: &BTreeSet<[u8; N]>) -> (u64, Vec<(usize, &'static str)>) {
        let (mut scanned, mut found) = (0, Vec::new());
        for (i, n) in self.nodes.iter().enumerate() {
            let store = n.core.as_ref().map(|c| c.store()).or(n.down_store.as_ref());
            let Some(store) = store else { continue };
            for (table, k, v) in store.all_values() {
                scanned += 1;
                for bytes in [k, v] {
                    if bytes.len() >= N
                        && bytes.windows(N).any(|w| needles.contains(<&[u8; N]>::try_from(w).expect("N bytes")))
                    {
                        found.push((i, table.name()));
                    }
                }
            }
        }
        (scanned, found)
    }

    fn judge_groups(&mut self) -> u64 {
        let mut checks = 0u64;
        let mut final_members: BTreeMap<GroupId, BTreeSet<u32>> = BTreeMap::new();
        for (i, c) in self.clients.iter().enumerate() {
            let Some(g) = &c.group else { continue };
            for id in g.groups() {
                final_members.entry(id).or_default().insert(i as u32);
            }
        }
        for (id, members) in &final_members {
            let views: Vec<(u32, Option<u64>, BTreeSet<[u8; 32]>)> = members
                .iter()
                .map(|m| {
                    let g = self.clients[*m as usize].group.as_ref().expect("member");
                    (*m, g.epoch(id), g.members(id).into_iter().map(|x| x.key).collect())
                })
                .collect();
            checks += 1;
            let (first, epoch, set) = &views[0];
            for (m, e, s) in &views[1..] {
                if e != epoch || s != set {
                    if std::env::var_os("NYMSTR_SIM_DEBUG").is_some() {
                        for c in [*first, *m] {
                            let g = self.clients[c as usize].group.as_ref().expect("member");
                            eprintln!("client {c} (online {}): {}", self.clients[c as usize].online, g.debug_summary());
                        }
                        if let Some(sg) = self.groups.group(id) {
                            let st = self.nodes[sg.node as usize].core.as_ref().map(|n| n.steward());
                            eprintln!(
                                "steward epoch {:?} next_seq {:?}",
                                st.and_then(|s| s.epoch(id)),
                                st.and_then(|s| s.next_seq(id))
                            );
                        }
                    }
                    self.violations.push(format!(
                        "group {} members disagree at quiescence: client {first} at epoch {epoch:?} with {} members, \
                         client {m} at epoch {e:?} with {} members",
                        groups::hex8(id),
                        set.len(),
                        s.len()
                    ));
                    break;
                }
            }
            let keys_as_clients: BTreeSet<u32> =
                set.iter().filter_map(|k| self.groups.client_of_key.get(k).copied()).collect();
            if &keys_as_clients != members {
                self.violations.push(format!(
                    "group {}: {} clients hold it but its tree lists {} of them",
                    groups::hex8(id),
                    members.len(),
                    keys_as_clients.len()
                ));
            }
            // A steward that admitted an intruder is an epoch ahead of the members who
            // refused it (its own oracle: `judge_intruder`).
            let injected = self.intruder.as_ref().is_some_and(|i| i.group == *id);
            if let Some(g) = self.groups.group(id)
                && !injected
            {
                let steward = self.nodes[g.node as usize].core.as_ref().and_then(|n| n.steward().epoch(id));
                if steward != *epoch {
                    self.violations.push(format!(
                        "group {}: members at epoch {epoch:?}, its steward at {steward:?}",
                        groups::hex8(id)
                    ));
                }
            }
        }
        checks += self.groups.judge(&final_members);
        checks += self.judge_intruder();
        // No node holds a group message's plaintext.
        let markers: BTreeSet<[u8; 16]> = self.groups.messages.values().map(|m| m.marker).collect();
        let (scanned, found) = self.stores_holding(&markers);
        checks += scanned;
        for (i, table) in found {
            self.violations.push(format!("node {i} stores a group plaintext in table {table}"));
        }
        self.violations.append(&mut self.groups.violations);
        checks
    }

    /// Latency oracle sample: a clean DM's latency against the model's expectation.
    pub(super) fn note_leg2(&mut self, msg: MsgId, leg2_clean: bool, leg2_sent_at: Us) {
        let Some(d) = self.dms.get(&msg) else { return };
        let (Some(rx), Some(produced), Some(released)) = (d.node_rx_at, d.deliver_produced_at, d.deliver_released_at)
        else {
            return;
        };
        let recipient_online = self.clients[d.recipient as usize].online;
        // The first release of the Deliver, produced in the step that accepted the send.
        let first_release = leg2_sent_at == released;
        let clean = d.leg1_at_once
            && d.leg1_clean
            && leg2_clean
            && first_release
            && produced == rx
            && d.delivered == 0
            && recipient_online;
        if !clean {
            return;
        }
        let (k1, k2) = (d.leg1_frags, d.leg2_frags);
        let sent_at = d.sent_at;
        let observed = (self.now - sent_at) as f64;
        let flush_wait = (released - rx) as f64;
        let client_interval = self.sc.mixnet.send_interval_ms_mean;
        let node_interval = self.sc.mixnet.node_send_interval_ms_mean;
        let e1 = self.expected(k1, client_interval);
        let e2 = self.expected(k2, node_interval);
        self.metrics.flush_wait.add(flush_wait);
        if std::env::var_os("NYMSTR_SIM_DEBUG").is_some() && observed - (e1 + flush_wait + e2) > 1_000_000.0 {
            eprintln!(
                "outlier: observed {observed} e1 {e1} e2 {e2} flush {flush_wait} sent {} rx {rx} released {released} now {} k1 {k1} k2 {k2} leg1 {}",
                sent_at - EPOCH_US,
                self.now - EPOCH_US,
                rx - sent_at
            );
        }
        self.metrics.latency_residual.add(observed - (e1 + flush_wait + e2));
    }

    fn expected(&mut self, k: u32, interval_ms: f64) -> f64 {
        let key = (k, interval_ms.to_bits());
        let (mean, se) = match self.expected_cache.get(&key) {
            Some(v) => *v,
            None => {
                let mut r = rng::stream(self.sc.seed, Stream::Expectation);
                let v = mixnet::expected_message_us(&self.sc.mixnet, k, interval_ms, &mut r);
                self.expected_cache.insert(key, v);
                v
            }
        };
        self.expected_se_max = self.expected_se_max.max(se);
        mean
    }

    pub(super) fn report(&self, wall_time_ms: f64) -> Report {
        let node_stats = self.node_stats();
        let mut lat = self.latencies_ms.clone();
        lat.sort_by(f64::total_cmp);
        let sent = self.dms.len() as u64;
        let acked = self.dms.values().filter(|d| d.sender_acked).count() as u64;
        let delivered = self.dms.values().filter(|d| d.delivered > 0).count() as u64;
        let duplicates = self.dms.values().map(|d| u64::from(d.delivered.saturating_sub(1))).sum();
        let lost =
            self.dms.values().filter(|d| !d.failed && d.node_acked_or_delivered() && d.delivered == 0).count() as u64;
        let sim_time_ms = (self.now - EPOCH_US) as f64 / 1000.0;
        Report {
            seed: self.sc.seed,
            scenario_hash: self.sc.hash(),
            trace_hash: self.trace.finalize().to_hex().to_string(),
            sim_time_ms,
            wall_time_ms,
            speedup: if wall_time_ms > 0.0 { sim_time_ms / wall_time_ms } else { 0.0 },
            events: self.events,
            events_per_sec: if wall_time_ms > 0.0 { self.events as f64 / (wall_time_ms / 1000.0) } else { 0.0 },
            nodes: self.sc.nodes.discovery + self.sc.nodes.group,
            clients: self.sc.clients.count,
            registered: self.metrics.registered,
            dm: report::Dm {
                sent,
                acked,
                delivered,
                duplicates,
                lost,
                failed: self.dms.values().filter(|d| d.failed).count() as u64,
                rejected: self.metrics.rejected_deliveries,
            },
            latency_ms: report::Latency {
                p50: report::percentile(&lat, 0.50),
                p90: report::percentile(&lat, 0.90),
                p99: report::percentile(&lat, 0.99),
                max: lat.last().copied().unwrap_or(0.0),
                clean_samples: self.metrics.latency_residual.n,
                clean_residual_mean: self.metrics.latency_residual.mean() / 1000.0,
                clean_residual_std_error: self.metrics.latency_residual.std_error() / 1000.0,
                flush_wait_mean: self.metrics.flush_wait.mean() / 1000.0,
                packet_transit_mean: self.metrics.transit_first_attempt.mean() / 1000.0,
                packet_transit_model: f64::from(self.sc.mixnet.hops) * self.sc.mixnet.hop_delay_ms_mean,
            },
            mixnet: self.metrics.mixnet.clone(),
            node: node_stats,
            faults: report::Faults {
                crashes: self.metrics.crashes,
                offline_periods: self.metrics.offline_periods,
                store_flushes: self.metrics.flushes,
            },
            groups: self.groups_report(),
            invariants: report::Invariants { checked: self.checks, violations: self.violations.clone() },
            federation: self.federation_report(),
            floods: self.flood_report(),
        }
    }
}

fn hex8(id: &MsgId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}
