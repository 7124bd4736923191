//! The discrete-event engine: one thread, a queue of `(time, seq)` events in virtual
//! microseconds, and hosts for the very same node and client cores the real binaries run.
//!
//! The engine is the "environment" of the sans-IO cores: it hands them time, their seeded
//! ChaCha streams and an in-memory store with crash semantics, models the mixnet between
//! them, injects faults, and checks the oracles.
//!
//! This module builds the world, runs the event loop and routes each event to its
//! handler; `state` holds the types every other module of the world shares.

mod client_host;
mod fed_host;
mod flood;
mod group_adversary;
mod group_host;
mod mixnet_host;
mod node_host;
mod oracles;
mod state;

use nymstr_node_core::outbox::Outbox;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use nymstr_client_core::{ClientConfig, ClientCore};
use nymstr_node_core::actors::steward::StewardStats;
use nymstr_node_core::actors::{NodeStats, SenderTag};
use nymstr_node_core::store::MemStore;
use rand_core::Rng;

use crate::fed_model::{Attack, FedSim};
use crate::groups::Groups;
use crate::mixnet::{Us, ms_to_us};
use crate::report::Report;
use crate::rng::{self, Stream};
use crate::scenario::{AdversaryKind, Fault, Scenario};

use node_host::start_node;
use state::{ClientHost, DRAIN_CHECK_US, Ev, NodeHost, node_address};
pub use state::{EPOCH_US, Endpoint, Metrics, World};

impl World {
    pub fn new(sc: Scenario) -> Self {
        let seed = sc.seed;
        let mut fed_rng = rng::stream(seed, Stream::Federation);
        let base_nodes = sc.nodes.discovery + sc.nodes.group;
        let sybils: u32 = sc
            .adversaries
            .iter()
            .filter(|a| a.get_ref().kind == AdversaryKind::Sybil)
            .map(|a| a.get_ref().sybil_count())
            .sum();
        let fed = sc.federation.clone().map(|f| {
            let attacker = nymstr_proto::identity::generate_signing_key(&mut fed_rng);
            let mut fs = FedSim::new(f, attacker);
            for i in 0..sc.nodes.discovery {
                fs.add_node(i, &mut rng::stream(seed, Stream::NodeKey { index: i }));
            }
            for j in 0..sybils {
                let i = base_nodes + j;
                fs.add_node(i, &mut rng::stream(seed, Stream::NodeKey { index: i }));
                fs.sybils.push(i);
            }
            fs.attacks = sc
                .adversaries
                .iter()
                .map(|a| Attack {
                    spec: a.get_ref().clone(),
                    started_at: None,
                    acted_at: None,
                    detected_at: None,
                    victim: None,
                    frozen: None,
                    answers: 0,
                    split: None,
                    hijack: None,
                })
                .collect();
            fs
        });
        let total_nodes = base_nodes + if fed.is_some() { sybils } else { 0 };
        let mut nodes = Vec::new();
        for i in 0..total_nodes {
            let is_sybil = i >= base_nodes;
            let core = if is_sybil {
                None
            } else {
                Some(
                    start_node(&sc, fed.as_ref(), i, EPOCH_US, MemStore::new(), 0)
                        .expect("an empty store always starts"),
                )
            };
            nodes.push(NodeHost {
                down_store: if is_sybil { Some(MemStore::new()) } else { None },
                core,
                incarnation: 0,
                outbox: Outbox::new(),
                timer_generation: 0,
                timer_at: None,
                last_depart: 0,
                registered: Vec::new(),
                past_stats: NodeStats::default(),
                past_group_stats: StewardStats::default(),
            });
        }
        let witnesses =
            fed.as_ref().map(|f| f.client_witnesses(sc.nodes.discovery, EPOCH_US, node_address)).unwrap_or_default();
        let mut clients = Vec::new();
        for i in 0..sc.clients.count {
            let mut transport_rng = rng::stream(seed, Stream::ClientTransport { index: i });
            let mut address = [0u8; 32];
            transport_rng.fill_bytes(&mut address);
            let mut tag = [0u8; 16];
            transport_rng.fill_bytes(&mut tag);
            let mut config = ClientConfig::default();
            if let Some(f) = &fed {
                config.trust = f.client_policy(sc.nodes.discovery);
                config.witnesses = witnesses.clone();
            }
            clients.push(ClientHost {
                core: ClientCore::new(rng::stream(seed, Stream::Client { index: i }), config),
                node: i % sc.nodes.discovery,
                username: format!("user{i}"),
                online: true,
                session: 0,
                tag: SenderTag(tag),
                node_tags: BTreeMap::new(),
                address,
                transport_rng,
                registered: false,
                timer_generation: 0,
                timer_at: None,
                last_depart: 0,
                contacts: Vec::new(),
                group: None,
                registered_at: 0,
            });
        }
        let mut w = World {
            mix_rng: rng::stream(seed, Stream::Mixnet),
            loss: sc.mixnet.packet_loss,
            now: EPOCH_US,
            seq: 0,
            queue: BinaryHeap::new(),
            trace: blake3::Hasher::new_derive_key("nymstr-sim/v1/trace"),
            events: 0,
            traffic_stopped: false,
            finished: false,
            nodes,
            clients,
            msgs: BTreeMap::new(),
            next_msg: 0,
            tags: BTreeMap::new(),
            dms: BTreeMap::new(),
            latencies_ms: Vec::new(),
            expected_cache: BTreeMap::new(),
            expected_se_max: 0.0,
            metrics: Metrics::default(),
            violations: Vec::new(),
            checks: 0,
            work_rng: rng::stream(seed, Stream::Workload),
            groups: Groups::default(),
            group_rng: rng::stream(seed, Stream::GroupWorkload),
            fed,
            fed_rng,
            forks_seen: BTreeMap::new(),
            intruder: None,
            floods: crate::floods::Floods::default(),
            sc,
        };
        // Schedule joins, faults, background flushes and the end of traffic.
        let spread = w.sc.clients.join_spread.us();
        for i in 0..w.sc.clients.count {
            let at = EPOCH_US + if spread == 0 { 0 } else { rng::below(&mut w.work_rng, spread) };
            w.schedule(at, Ev::Join { client: i });
        }
        for i in 0..w.nodes.len() as u32 {
            let at = EPOCH_US + ms_to_us(w.sc.nodes.background_flush_ms);
            w.schedule(at, Ev::BackgroundFlush { node: i });
            w.after_node_step(i);
        }
        let faults: Vec<Fault> = w.sc.faults().cloned().collect();
        for f in faults {
            match f {
                Fault::Crash { at, node, restart_after } => {
                    w.schedule(EPOCH_US + at.us(), Ev::Crash { node, restart_after: restart_after.us() })
                }
                Fault::LossBurst { at, duration, packet_loss } => w.schedule(
                    EPOCH_US + at.us(),
                    Ev::LossStart { loss: packet_loss, until: EPOCH_US + at.us() + duration.us() },
                ),
            }
        }
        let injections: Vec<(Us, u32)> =
            w.sc.adversaries()
                .filter(|a| a.kind == AdversaryKind::InjectJoin)
                .map(|a| (EPOCH_US + a.at.us(), a.node))
                .collect();
        for (at, node) in injections {
            w.schedule(at, Ev::InjectJoin { node });
        }
        w.schedule_floods();
        if w.fed.is_some() {
            for index in 0..w.sc.adversaries.len() as u32 {
                let at = EPOCH_US + w.sc.adversaries[index as usize].get_ref().at.us();
                w.schedule(at, Ev::AdversaryStart { index });
            }
            let partitions: Vec<_> = w.sc.partitions().cloned().collect();
            for (index, p) in partitions.iter().enumerate() {
                w.schedule(EPOCH_US + p.at.us(), Ev::PartitionStart { index: index as u32 });
                w.schedule(EPOCH_US + p.at.us() + p.heal_after.us(), Ev::PartitionEnd);
            }
        }
        let g = w.sc.workload.groups.clone();
        if g.count > 0 {
            let start = EPOCH_US + w.sc.clients.join_spread.us();
            for index in 0..g.count {
                let at = start + rng::below(&mut w.group_rng, g.create_spread.us().max(1));
                w.schedule(at, Ev::GroupCreate { index });
            }
            let settle = start + g.create_spread.us();
            if g.joins_per_min > 0.0 {
                let at = settle + rng::exp(&mut w.group_rng, 60_000_000.0 / g.joins_per_min) as Us;
                w.schedule(at, Ev::GroupJoinTick);
            }
            if g.leaves_per_min > 0.0 {
                let at = settle + rng::exp(&mut w.group_rng, 60_000_000.0 / g.leaves_per_min) as Us;
                w.schedule(at, Ev::GroupLeaveTick);
            }
        }
        let end = EPOCH_US + w.sc.duration.us();
        w.schedule(end, Ev::DrainCheck);
        w
    }

    /// Runs to completion and returns the report.
    pub fn run(mut self) -> Report {
        let started = wall_clock();
        while let Some(Reverse(s)) = self.queue.pop() {
            self.now = s.at;
            self.events += 1;
            self.trace.update(&s.at.to_le_bytes());
            self.trace.update(&s.seq.to_le_bytes());
            self.trace.update(&[s.ev.code()]);
            self.handle(s.ev);
            if self.finished {
                break;
            }
        }
        let wall_time_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.judge();
        self.report(wall_time_ms)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Fragment { msg, frag } => self.on_fragment(msg, frag),
            Ev::Retransmit { msg, frag } => self.on_retransmit(msg, frag),
            Ev::FlushDone { node, incarnation, mark } => self.on_flush_done(node, incarnation, mark),
            Ev::BackgroundFlush { node } => self.on_background_flush(node),
            Ev::NodeTimer { node, generation } => self.on_node_timer(node, generation),
            Ev::ClientTimer { client, generation } => self.on_client_timer(client, generation),
            Ev::Join { client } => self.on_join(client),
            Ev::DmTick { client } => self.on_dm_tick(client),
            Ev::Offline { client } => self.on_offline(client),
            Ev::Online { client } => self.on_online(client),
            Ev::Crash { node, restart_after } => self.crash(node, restart_after),
            Ev::Restart { node } => self.restart(node),
            Ev::LossStart { loss, until } => {
                self.loss = loss;
                self.schedule(until, Ev::LossEnd);
            }
            Ev::LossEnd => self.loss = self.sc.mixnet.packet_loss,
            Ev::GroupCreate { index } => self.on_group_create(index),
            Ev::GroupJoin { client, group } => self.on_group_join(client, group),
            Ev::GroupMsgTick { client, group } => self.on_group_msg_tick(client, group),
            Ev::GroupJoinTick => self.on_group_join_tick(),
            Ev::GroupLeaveTick => self.on_group_leave_tick(),
            Ev::NodeFrameLate { from, to, bytes } => self.node_frame_arrives(from, to, bytes),
            Ev::FedLookupTick { client } => self.on_fed_lookup_tick(client),
            Ev::SelfCheck { client } => self.on_self_check(client),
            Ev::AdversaryStart { index } => self.on_adversary_start(index),
            Ev::InjectJoin { node } => self.on_inject_join(node),
            Ev::FloodStart { index } => self.on_flood_start(index),
            Ev::FloodTick { index } => self.on_flood_tick(index),
            Ev::AdvertHijack { index } => self.on_advert_hijack(index),
            Ev::PartitionStart { index } => self.on_partition_start(index),
            Ev::PartitionEnd => self.on_partition_end(),
            Ev::DrainCheck => self.on_drain_check(),
        }
    }

    /// After `duration`: new traffic stops and faults heal; the run ends once the world
    /// is quiescent or `drain_max` has passed.
    fn on_drain_check(&mut self) {
        if !self.traffic_stopped {
            // New traffic stops and faults heal: every offline client comes back.
            self.traffic_stopped = true;
            for client in 0..self.clients.len() as u32 {
                if !self.clients[client as usize].online {
                    self.schedule(self.now, Ev::Online { client });
                }
            }
        }
        let limit = self.end_of_traffic() + self.sc.drain_max.us();
        if self.quiescent() || self.now >= limit {
            self.finished = true;
        } else {
            self.schedule(self.now + DRAIN_CHECK_US, Ev::DrainCheck);
        }
    }

    fn quiescent(&self) -> bool {
        self.groups_caught_up()
            && self.msgs.is_empty()
            && self.nodes.iter().all(|n| n.core.as_ref().is_some_and(|c| c.queued_total() == 0) && n.outbox.is_empty())
            && self.clients.iter().all(|c| {
                // Users of a misbehaving node may wait forever for the federation.
                let stuck_ok = self.fed.as_ref().is_some_and(|f| f.is_adversary(c.node));
                c.online
                    && (stuck_ok || (c.core.is_idle() && c.core.unacked_sends() == 0))
                    && c.group.as_ref().is_none_or(|g| g.is_idle())
            })
    }
}

/// The one wall-clock read of the simulator: when the run started, for the report's
/// `wall_time_ms` (nothing in the run depends on it).
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> std::time::Instant {
    std::time::Instant::now()
}
