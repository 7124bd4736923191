//! The discrete-event engine: one thread, a queue of `(time, seq)` events in virtual
//! microseconds, and hosts for the very same node and client cores the real binaries run.
//!
//! The engine is the "environment" of the sans-IO cores: it hands them time, their seeded
//! ChaCha streams and an in-memory store with crash semantics, models the mixnet between
//! them, injects faults, and checks the oracles.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use nymstr_client_core::group::{GroupConfig, GroupCore, GroupEvent, GroupMeta, LifetimeMode, MemberKeys};
use nymstr_client_core::{ClientConfig, ClientCore, Event};
use nymstr_node_core::actors::steward::StewardStats;
use nymstr_node_core::actors::{Output, Peer, SenderTag};
use nymstr_node_core::store::{MemStore, Store};
use nymstr_node_core::{NodeCore, actors::NodeStats};
use nymstr_proto::codec;
use nymstr_proto::wire::{Body, Envelope, GroupId, MsgId};
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;

use nymstr_node_core::actors::Address;
use nymstr_node_core::actors::federation::NodeIdentity;
use nymstr_proto::federation::{NodeId, Roles};

use crate::federation::{Attack, FedSim, Frozen};
use crate::groups::{self, Groups, SentMessage, SimGroup, UploadClass};
use crate::mixnet::{self, Moments, Us, ms_to_us};
use crate::report::{self, Report};
use crate::rng::{self, Stream};
use crate::scenario::{AdversaryKind, Fault, Scenario};

/// Virtual time of the simulation's start: 2026-01-01T00:00:00Z.
pub const EPOCH_US: Us = 1_767_225_600_000_000;
const DRAIN_CHECK_US: Us = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Node(u32),
    Client(u32),
}

#[derive(Clone, Debug)]
enum Ev {
    /// A packet of a message reaches its destination.
    Fragment {
        msg: u64,
        frag: u32,
    },
    /// The sender's retransmission timer for a packet fires.
    Retransmit {
        msg: u64,
        frag: u32,
    },
    FlushDone {
        node: u32,
        incarnation: u32,
        mark: u64,
    },
    BackgroundFlush {
        node: u32,
    },
    NodeTimer {
        node: u32,
        generation: u64,
    },
    ClientTimer {
        client: u32,
        generation: u64,
    },
    Join {
        client: u32,
    },
    DmTick {
        client: u32,
    },
    Offline {
        client: u32,
    },
    Online {
        client: u32,
    },
    Crash {
        node: u32,
        restart_after: Us,
    },
    Restart {
        node: u32,
    },
    LossStart {
        loss: f64,
        until: Us,
    },
    LossEnd,
    DrainCheck,
    GroupCreate {
        index: u32,
    },
    GroupJoin {
        client: u32,
        group: u32,
    },
    GroupMsgTick {
        client: u32,
        group: u32,
    },
    GroupJoinTick,
    GroupLeaveTick,
    /// A node frame an adversary held back (`drop_forwarded` with a delay).
    NodeFrameLate {
        from: u32,
        to: u32,
        bytes: Vec<u8>,
    },
    /// A client verifies a contact's (or its own) entry by a transparency lookup.
    FedLookupTick {
        client: u32,
    },
    AdversaryStart {
        index: u32,
    },
    PartitionStart {
        index: u32,
    },
    PartitionEnd,
    /// A client checks its own directory entry (monitoring, every two epochs).
    SelfCheck {
        client: u32,
    },
}

impl Ev {
    fn code(&self) -> u8 {
        match self {
            Ev::Fragment { .. } => 1,
            Ev::Retransmit { .. } => 2,
            Ev::FlushDone { .. } => 3,
            Ev::BackgroundFlush { .. } => 4,
            Ev::NodeTimer { .. } => 5,
            Ev::ClientTimer { .. } => 6,
            Ev::Join { .. } => 7,
            Ev::DmTick { .. } => 8,
            Ev::Offline { .. } => 9,
            Ev::Online { .. } => 10,
            Ev::Crash { .. } => 11,
            Ev::Restart { .. } => 12,
            Ev::LossStart { .. } => 13,
            Ev::LossEnd => 14,
            Ev::DrainCheck => 15,
            Ev::GroupCreate { .. } => 16,
            Ev::GroupJoin { .. } => 17,
            Ev::GroupMsgTick { .. } => 18,
            Ev::GroupJoinTick => 19,
            Ev::GroupLeaveTick => 20,
            Ev::NodeFrameLate { .. } => 21,
            Ev::FedLookupTick { .. } => 22,
            Ev::AdversaryStart { .. } => 23,
            Ev::PartitionStart { .. } => 24,
            Ev::PartitionEnd => 25,
            Ev::SelfCheck { .. } => 26,
        }
    }
}

struct Scheduled {
    at: Us,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// What a message in the mixnet carries.
#[derive(Clone, Debug)]
enum Payload {
    /// Client to node; the node sees only `tag`, and the SURBs are credited to it.
    ToNode { tag: SenderTag, owner: u32, session: u32, bytes: Vec<u8>, surbs: u32 },
    /// Node to client, travelling on the client's SURBs.
    ToClient { node: u32, bytes: Vec<u8> },
    /// Node asks the client behind `tag` for more SURBs (sent on a SURB).
    SurbRequest { node: u32, tag: SenderTag },
    /// Client answers with fresh SURBs only.
    SurbTopUp { tag: SenderTag, owner: u32, session: u32, surbs: u32 },
    /// Node to node (federation), addressed by the sender's node address.
    NodeFrame { from: u32, bytes: Vec<u8> },
}

/// Which leg of a direct message a mixnet message is, for the latency oracle.
#[derive(Clone, Copy, Debug)]
enum Leg {
    Send(MsgId),
    Deliver(MsgId),
}

struct InFlight {
    src: Endpoint,
    /// Incarnation (node) or session (client) of the sender: a retransmission from a
    /// sender that crashed or went offline never happens.
    src_life: u32,
    dst: Endpoint,
    /// For a client destination, the session the SURB leads to.
    dst_life: u32,
    payload: Payload,
    frags: u32,
    received: Vec<bool>,
    received_count: u32,
    delivered: bool,
    /// Scheduled events still referring to this message.
    pending: u32,
    /// No packet of it was lost or retransmitted, and its sender was idle when it left.
    clean: bool,
    leg: Option<Leg>,
    created_at: Us,
}

struct TagState {
    owner: u32,
    session: u32,
    surbs: u32,
    waiting: VecDeque<Vec<u8>>,
    requested: bool,
}

struct NodeHost {
    core: Option<NodeCore<MemStore>>,
    down_store: Option<MemStore>,
    incarnation: u32,
    held: Vec<(u64, Peer, Envelope)>,
    flushing: bool,
    timer_generation: u64,
    timer_at: Option<Us>,
    last_depart: Us,
    /// Registered clients homed here (the workload's recipients).
    registered: Vec<u32>,
    /// Stats of previous incarnations, summed.
    past_stats: NodeStats,
    past_group_stats: StewardStats,
}

struct ClientHost {
    core: ClientCore,
    node: u32,
    username: String,
    online: bool,
    session: u32,
    tag: SenderTag,
    /// Tags towards nodes other than the home node (group nodes), one per node and
    /// session, so two nodes cannot link a client by its tag.
    node_tags: BTreeMap<u32, SenderTag>,
    address: [u8; 32],
    transport_rng: ChaCha20Rng,
    registered: bool,
    timer_generation: u64,
    timer_at: Option<Us>,
    last_depart: Us,
    /// People this user writes to (the workload's social circle).
    contacts: Vec<u32>,
    /// The group member core, once the client is registered (group workloads only).
    group: Option<GroupCore>,
    registered_at: Us,
}

#[derive(Clone, Debug, Default)]
struct DmRecord {
    sender: u32,
    recipient: u32,
    sent_at: Us,
    node_acked: bool,
    sender_acked: bool,
    failed: bool,
    delivered: u32,
    /// Sent at once (contact cached) from an idle Poisson queue.
    leg1_at_once: bool,
    leg1_frags: u32,
    leg1_clean: bool,
    /// To a user homed on another discovery node (`user@node`).
    cross: bool,
    node_rx_at: Option<Us>,
    deliver_produced_at: Option<Us>,
    deliver_released_at: Option<Us>,
    leg2_frags: u32,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub mixnet: report::MixnetStats,
    pub frames_to_nodes: u64,
    pub frames_to_clients: u64,
    pub registered: u64,
    pub logins: u64,
    pub rejected_deliveries: u64,
    pub failed_requests: u64,
    pub flushes: u64,
    pub crashes: u64,
    pub offline_periods: u64,
    pub transit_first_attempt: Moments,
    pub latency_residual: Moments,
    pub flush_wait: Moments,
    /// Node-to-node messages dropped by a partition.
    pub partition_drops: u64,
}

pub struct World {
    sc: Scenario,
    now: Us,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    trace: blake3::Hasher,
    events: u64,
    mix_rng: ChaCha20Rng,
    work_rng: ChaCha20Rng,
    loss: f64,
    traffic_stopped: bool,
    finished: bool,
    nodes: Vec<NodeHost>,
    clients: Vec<ClientHost>,
    msgs: BTreeMap<u64, InFlight>,
    next_msg: u64,
    tags: BTreeMap<SenderTag, TagState>,
    dms: BTreeMap<MsgId, DmRecord>,
    latencies_ms: Vec<f64>,
    expected_cache: BTreeMap<(u32, u64), (f64, f64)>,
    /// Largest standard error of the Monte Carlo expectations used (it is a fixed bias).
    expected_se_max: f64,
    pub metrics: Metrics,
    violations: Vec<String>,
    checks: u64,
    groups: Groups,
    group_rng: ChaCha20Rng,
    fed: Option<FedSim>,
    fed_rng: ChaCha20Rng,
    /// Fork certificates each node held at its last step (to notice new ones).
    forks_seen: BTreeMap<u32, usize>,
}

/// A group node's address as the group cores carry it: its index, big-endian.
fn node_address(node: u32) -> Vec<u8> {
    node.to_be_bytes().to_vec()
}

fn node_of_address(addr: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(addr).ok().map(u32::from_be_bytes)
}

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
                held: Vec::new(),
                flushing: false,
                timer_generation: 0,
                timer_at: None,
                last_depart: 0,
                registered: Vec::new(),
                past_stats: NodeStats::default(),
                past_group_stats: StewardStats::default(),
            });
        }
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

    fn schedule(&mut self, at: Us, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: at.max(self.now), seq: self.seq, ev }));
    }

    fn end_of_traffic(&self) -> Us {
        EPOCH_US + self.sc.duration.us()
    }

    /// Runs to completion and returns the report.
    pub fn run(mut self) -> Report {
        let started = std::time::Instant::now();
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
            Ev::BackgroundFlush { node } => {
                let n = &self.nodes[node as usize];
                if let Some(core) = &n.core
                    && !n.flushing
                    && core.store().write_seq() > core.store().durable_seq()
                {
                    self.start_flush(node);
                }
                let at = self.now + ms_to_us(self.sc.nodes.background_flush_ms);
                self.schedule(at, Ev::BackgroundFlush { node });
            }
            Ev::NodeTimer { node, generation } => {
                let n = &mut self.nodes[node as usize];
                if n.timer_generation != generation {
                    return;
                }
                n.timer_at = None;
                if let Some(core) = n.core.as_mut() {
                    core.handle_timeout(self.now);
                    self.after_node_step(node);
                }
            }
            Ev::ClientTimer { client, generation } => {
                let c = &mut self.clients[client as usize];
                if c.timer_generation != generation {
                    return;
                }
                c.timer_at = None;
                c.core.handle_timeout(self.now);
                if let Some(g) = c.group.as_mut() {
                    g.handle_timeout(self.now);
                }
                self.after_client_step(client);
            }
            Ev::Join { client } => {
                let now = self.now;
                let c = &mut self.clients[client as usize];
                let name = c.username.clone();
                c.core.register(now, &name).expect("generated usernames are valid");
                self.after_client_step(client);
                self.schedule_offline(client);
            }
            Ev::DmTick { client } => self.on_dm_tick(client),
            Ev::Offline { client } => {
                let c = &mut self.clients[client as usize];
                if !c.online {
                    return;
                }
                c.online = false;
                self.metrics.offline_periods += 1;
                let mean_us = self.sc.clients.offline_mean.us() as f64;
                let back = self.now + rng::exp(&mut self.work_rng, mean_us) as Us;
                self.schedule(back, Ev::Online { client });
            }
            Ev::Online { client } => {
                let now = self.now;
                let c = &mut self.clients[client as usize];
                if c.online {
                    return;
                }
                c.online = true;
                c.session += 1;
                let mut tag = [0u8; 16];
                c.transport_rng.fill_bytes(&mut tag);
                c.tag = SenderTag(tag);
                c.node_tags.clear();
                c.last_depart = 0;
                if c.registered {
                    c.core.login(now).expect("registered");
                    self.metrics.logins += 1;
                }
                if let Some(g) = c.group.as_mut() {
                    g.reconnected(now);
                }
                self.after_client_step(client);
                self.schedule_offline(client);
            }
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
            Ev::PartitionStart { index } => {
                let p = self.sc.partitions().nth(index as usize).cloned();
                if let (Some(p), Some(fed)) = (p, self.fed.as_mut()) {
                    let mut map = BTreeMap::new();
                    for (g, nodes) in p.groups.iter().enumerate() {
                        for n in nodes {
                            map.insert(*n, g);
                        }
                    }
                    fed.partition = Some(map);
                    fed.partitions_scheduled = true;
                }
            }
            Ev::PartitionEnd => {
                if let Some(fed) = self.fed.as_mut() {
                    fed.partition = None;
                }
            }
            Ev::DrainCheck => {
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
        }
    }

    fn schedule_offline(&mut self, client: u32) {
        let rate = self.sc.clients.offline_per_hour;
        if rate <= 0.0 || self.traffic_stopped {
            return;
        }
        let mean_us = 3_600_000_000.0 / rate;
        let at = self.now + rng::exp(&mut self.work_rng, mean_us) as Us;
        if at < self.end_of_traffic() {
            self.schedule(at, Ev::Offline { client });
        }
    }

    /// Every member holds its groups' logs up to the steward's head (a member whose last
    /// push was lost may not know it is behind until its periodic sync).
    fn groups_caught_up(&self) -> bool {
        self.clients.iter().filter_map(|c| c.group.as_ref()).all(|g| {
            g.groups().iter().all(|id| {
                let Some(sg) = self.groups.group(id) else { return true };
                let head = self.nodes[sg.node as usize].core.as_ref().and_then(|n| n.steward().next_seq(id));
                head.is_none_or(|h| g.next_seq(id).is_some_and(|n| n >= h))
            })
        })
    }

    fn quiescent(&self) -> bool {
        self.groups_caught_up()
            && self.msgs.is_empty()
            && self.nodes.iter().all(|n| n.core.as_ref().is_some_and(|c| c.queued_total() == 0) && n.held.is_empty())
            && self.clients.iter().all(|c| {
                // Users of a misbehaving node may wait forever for the federation.
                let stuck_ok = self.fed.as_ref().is_some_and(|f| f.is_adversary(c.node));
                c.online
                    && (stuck_ok || (c.core.is_idle() && c.core.unacked_sends() == 0))
                    && c.group.as_ref().is_none_or(|g| g.is_idle())
            })
    }

    // --- workload ---

    fn on_dm_tick(&mut self, client: u32) {
        if self.traffic_stopped {
            return;
        }
        let rate = self.sc.workload.dm.rate_per_client_per_min;
        if rate <= 0.0 {
            return;
        }
        let next = self.now + rng::exp(&mut self.work_rng, 60_000_000.0 / rate) as Us;
        if next < self.end_of_traffic() {
            self.schedule(next, Ev::DmTick { client });
        }
        let (online, home) = {
            let c = &self.clients[client as usize];
            (c.online, c.node)
        };
        if !online {
            return;
        }
        if let Some((epoch, share)) = self.fed.as_ref().map(|f| (f.scenario.epoch.us(), f.scenario.cross_node_share))
            && self.settled(client, epoch)
            && rng::chance(&mut self.fed_rng, share)
            && let Some(recipient) = self.pick_remote(client, epoch)
        {
            self.send_workload_dm(client, recipient, true);
            return;
        }
        let candidates = &self.nodes[home as usize].registered;
        if candidates.len() < 2 {
            return;
        }
        let dm = &self.sc.workload.dm;
        let (new_share, circle_max) = (dm.new_contact_share, dm.contacts_max as usize);
        let known = &self.clients[client as usize].contacts;
        let recipient =
            if !known.is_empty() && (known.len() >= circle_max || !rng::chance(&mut self.work_rng, new_share)) {
                known[rng::below(&mut self.work_rng, known.len() as u64) as usize]
            } else {
                let pick = loop {
                    let pick = candidates[rng::below(&mut self.work_rng, candidates.len() as u64) as usize];
                    if pick != client {
                        break pick;
                    }
                };
                // Conversations go both ways: each now counts the other as a contact.
                for (a, b) in [(client, pick), (pick, client)] {
                    let list = &mut self.clients[a as usize].contacts;
                    if !list.contains(&b) && list.len() < circle_max {
                        list.push(b);
                    }
                }
                pick
            };
        self.send_workload_dm(client, recipient, false);
    }

    /// Sends one workload DM from `client` to `recipient` (`cross`: by its qualified name).
    fn send_workload_dm(&mut self, client: u32, recipient: u32, cross: bool) {
        let mut body = vec![0u8; self.sc.workload.dm.message_bytes as usize];
        self.work_rng.fill_bytes(&mut body);
        let to = if cross { self.qualified(recipient) } else { self.clients[recipient as usize].username.clone() };
        let now = self.now;
        let idle_queue = self.clients[client as usize].last_depart <= now;
        let core = &mut self.clients[client as usize].core;
        let Ok(msg_id) = core.send_dm(now, &to, &body) else { return };
        let transmits: Vec<Envelope> = core.drain_transmits().collect();
        let at_once = idle_queue && transmits.iter().any(|e| matches!(&e.body, Body::SendDm(d) if d.msg_id == msg_id));
        self.dms.insert(
            msg_id,
            DmRecord { sender: client, recipient, sent_at: now, leg1_at_once: at_once, cross, ..DmRecord::default() },
        );
        if cross && let Some(fed) = self.fed.as_mut() {
            fed.cross_node_dm += 1;
        }
        for env in transmits {
            self.client_transmit(client, env);
        }
        self.after_client_step(client);
    }

    // --- federation ---

    /// A DM to or from a user of a node that misbehaves: the oracles excuse its fate.
    fn involves_adversary(&self, d: &DmRecord) -> bool {
        self.fed.as_ref().is_some_and(|f| {
            f.is_adversary(self.clients[d.sender as usize].node)
                || f.is_adversary(self.clients[d.recipient as usize].node)
        })
    }

    /// Registered long enough ago that its entry is in its node's published directory
    /// (two epochs and the serving grace).
    fn settled(&self, client: u32, epoch_us: Us) -> bool {
        let c = &self.clients[client as usize];
        c.registered && self.now >= c.registered_at + 2 * epoch_us + 15_000_000
    }

    /// A settled user homed on another discovery node (not a substitution victim).
    fn pick_remote(&mut self, client: u32, epoch_us: Us) -> Option<u32> {
        let home = self.clients[client as usize].node;
        let victims: BTreeSet<u32> = self
            .fed
            .as_ref()
            .map(|f| f.attacks.iter().filter_map(|a| a.victim.map(|v| v.0)).collect())
            .unwrap_or_default();
        for _ in 0..8 {
            let node = rng::below(&mut self.fed_rng, u64::from(self.sc.nodes.discovery)) as u32;
            if node == home {
                continue;
            }
            let list = &self.nodes[node as usize].registered;
            if list.is_empty() {
                continue;
            }
            let pick = list[rng::below(&mut self.fed_rng, list.len() as u64) as usize];
            if self.settled(pick, epoch_us) && !victims.contains(&pick) {
                return Some(pick);
            }
        }
        None
    }

    /// `user@<node id>` of a client.
    fn qualified(&self, client: u32) -> String {
        let c = &self.clients[client as usize];
        let id = self.fed.as_ref().and_then(|f| f.ids.get(&c.node)).map(NodeId::to_hex).unwrap_or_default();
        format!("{}@{id}", c.username)
    }

    fn schedule_fed_lookup(&mut self, client: u32) {
        let Some(rate) = self.fed.as_ref().map(|f| f.scenario.lookups_per_client_per_min) else { return };
        if rate <= 0.0 || self.traffic_stopped {
            return;
        }
        let at = self.now + rng::exp(&mut self.fed_rng, 60_000_000.0 / rate) as Us;
        if at < self.end_of_traffic() {
            self.schedule(at, Ev::FedLookupTick { client });
        }
    }

    /// Monitoring: every client looks up its own entry every two epochs (as CONIKS
    /// clients do each epoch), so a key put under its name is seen by its owner.
    fn on_self_check(&mut self, client: u32) {
        let Some(epoch) = self.fed.as_ref().map(|f| f.scenario.epoch.us()) else { return };
        if !self.traffic_stopped {
            self.schedule(self.now + 2 * epoch, Ev::SelfCheck { client });
        }
        if !self.clients[client as usize].online || !self.settled(client, epoch) {
            return;
        }
        self.fed_lookup(client, client);
    }

    /// `client` looks up `target` by qualified name (a counted transparency lookup).
    fn fed_lookup(&mut self, client: u32, target: u32) {
        let name = self.qualified(target);
        let now = self.now;
        if self.clients[client as usize].core.lookup(now, &name).is_ok()
            && let Some(fed) = self.fed.as_mut()
        {
            fed.lookups += 1;
        }
        self.after_client_step(client);
    }

    /// A verification lookup of a user on another node.
    fn on_fed_lookup_tick(&mut self, client: u32) {
        self.schedule_fed_lookup(client);
        let Some(epoch) = self.fed.as_ref().map(|f| f.scenario.epoch.us()) else { return };
        if !self.clients[client as usize].online || !self.settled(client, epoch) {
            return;
        }
        let Some(target) = self.pick_remote(client, epoch) else { return };
        self.fed_lookup(client, target);
    }

    /// A verified lookup: did the client just accept a key that is not the user's?
    fn on_looked_up(&mut self, client: u32, username: &str) {
        let Some((user, node_hex)) = username.split_once('@') else { return };
        let Some(fed) = self.fed.as_ref() else { return };
        let Some(target) = user.strip_prefix("user").and_then(|n| n.parse::<u32>().ok()) else { return };
        let Some(t) = self.clients.get(target as usize) else { return };
        let real = t.core.identity().map(|i| i.cert.account_key);
        let accepted = self.clients[client as usize].core.contact(username).map(|c| c.account_key);
        if real.is_some() && accepted.is_some() && real != accepted {
            let node = NodeId::from_hex(node_hex).and_then(|id| fed.node_of_id(&id));
            let fed = self.fed.as_mut().expect("federation");
            fed.forged_accepted.insert(client);
            if let Some(node) = node {
                for a in &mut fed.attacks {
                    if a.spec.node == node {
                        a.acted_at.get_or_insert(self.now);
                    }
                }
            }
        }
    }

    /// A client's verifier refused an answer or saw a change: an alarm about the node
    /// named (a detection if that node misbehaves, a false alarm if not).
    fn on_transparency(&mut self, client: u32, username: String, outcome: &'static str, detail: String) {
        let now = self.now;
        let Some(fed) = self.fed.as_mut() else {
            self.violations.push(format!("client {client}: transparency {outcome} for {username}: {detail}"));
            return;
        };
        let node = username.split_once('@').and_then(|(_, h)| NodeId::from_hex(h)).and_then(|id| fed.node_of_id(&id));
        match (outcome, node) {
            // Transient: the serving node's newest head has too few cosignatures yet.
            ("not_enough_witnesses" | "absent", Some(n)) if !fed.is_adversary(n) => {}
            (_, Some(node)) => fed.detected(now, node, format!("client {client}: {outcome} for {username}")),
            (_, None) => self.violations.push(format!("client {client}: transparency {outcome} for {username}")),
        }
    }

    /// Honest nodes that built a fork certificate since their last step raise an alarm
    /// against the node it convicts.
    fn notice_forks(&mut self, node: u32) {
        let Some(fed) = self.fed.as_mut() else { return };
        let Some(f) = self.nodes[node as usize].core.as_ref().and_then(|c| c.federation()) else { return };
        let certs: Vec<NodeId> = f.forks().map(|c| c.a.head.node_id).collect();
        let seen = self.forks_seen.entry(node).or_insert(0);
        if certs.len() > *seen && !fed.is_adversary(node) {
            for id in &certs[*seen..] {
                if let Some(target) = fed.node_of_id(id) {
                    fed.detected(self.now, target, format!("node {node} holds a fork certificate against {target}"));
                }
            }
        }
        *seen = certs.len();
    }

    fn on_adversary_start(&mut self, index: u32) {
        let now = self.now;
        let Some(fed) = self.fed.as_mut() else { return };
        let attack = &mut fed.attacks[index as usize];
        attack.started_at = Some(now);
        let kind = attack.spec.kind;
        let node = attack.spec.node;
        match kind {
            AdversaryKind::Sybil => {
                // The sybils come up and join the federation; they then cosign whatever
                // the node they vouch for shows (see `fed_intercept`).
                let sybils = fed.sybils.clone();
                for s in sybils {
                    if self.nodes[s as usize].core.is_none() {
                        self.restart(s);
                    }
                }
            }
            AdversaryKind::SubstituteKey => {
                let epoch = fed.scenario.epoch.us();
                let chosen = attack.spec.user.or_else(|| {
                    let list = &self.nodes[node as usize].registered;
                    list.iter().copied().find(|c| self.settled(*c, epoch))
                });
                let Some(victim) = chosen else { return };
                let fed = self.fed.as_mut().expect("federation");
                let v = &self.clients[victim as usize];
                let Some(id) = v.core.identity() else { return };
                let username = v.username.clone();
                let cert = fed.attacker_cert(&id.cert);
                let key = fed.attacker.verifying_key().to_bytes();
                let entry = nymstr_proto::federation::DirEntry {
                    username,
                    account_key: key,
                    installations: vec![cert],
                    status: nymstr_proto::federation::EntryStatus::Active,
                    seq: 0,
                    epoch: 0,
                };
                let attack = &mut fed.attacks[index as usize];
                attack.victim = Some((victim, key));
                attack.acted_at = Some(now);
                if let Some(core) = self.nodes[node as usize].core.as_mut() {
                    let _ = core.operator_stage_entry(now, entry);
                }
                self.after_node_step(node);
            }
            AdversaryKind::ReplayHead => {
                let cfg = self.sc.nodes.core.federation.clone();
                let Some(core) = self.nodes[node as usize].core.as_ref() else { return };
                let Some(f) = core.federation() else { return };
                let quorum = fed.node_config(0).serve_quorum;
                if let Some((head, entries, cosignatures)) = f.log().served_view(now, quorum, cfg.serve_grace_us) {
                    let tree = nymstr_node_core::transparency_log::tree_of(entries);
                    fed.attacks[index as usize].frozen =
                        Some(Frozen { head: head.clone(), cosignatures, entries: entries.clone(), tree });
                }
            }
            AdversaryKind::Equivocate | AdversaryKind::DropForwarded => {}
        }
    }

    /// What a misbehaving node changes in its own outputs: lookup answers.
    fn fed_intercept(&mut self, node: u32, mut env: Envelope) -> Option<Envelope> {
        let Some(fed) = self.fed.as_mut() else { return Some(env) };
        let Body::KtLookupResult { proof, .. } = &mut env.body else { return Some(env) };
        // Only its own answers: a remote node's answer it relays carries that node's
        // signature, which it cannot forge.
        if fed.ids.get(&node) != Some(&proof.head.head.node_id) {
            return Some(env);
        }
        let now = self.now;
        if self.traffic_stopped {
            return Some(env);
        }
        // A sybil-backed node equivocates with its sybils' cosignatures.
        let sybil_backed = fed
            .attacks
            .iter()
            .position(|a| a.spec.kind == AdversaryKind::Sybil && a.spec.node == node && a.started_at.is_some());
        if let Some(a) = fed.active(node, &[AdversaryKind::Equivocate]).or(sybil_backed) {
            fed.attacks[a].answers += 1;
            if fed.attacks[a].answers % 2 == 0 {
                return Some(env);
            }
            let Some(core) = self.nodes[node as usize].core.as_ref() else { return Some(env) };
            let Some(f) = core.federation() else { return Some(env) };
            let Some(username) = proof.entry.as_ref().map(|e| e.username.clone()) else { return Some(env) };
            let cfg = &self.sc.nodes.core.federation;
            let quorum = fed.node_config(0).serve_quorum;
            let Some((_, entries, _)) = f.log().served_view(now, quorum, cfg.serve_grace_us) else { return Some(env) };
            let cosigners =
                if fed.attacks[a].spec.kind == AdversaryKind::Sybil { fed.sybils.clone() } else { Vec::new() };
            if let Some(forged) = fed.forge(node, entries, &username, proof, &cosigners) {
                **proof = forged;
                fed.attacks[a].acted_at.get_or_insert(now);
            }
            return Some(env);
        }
        if let Some(a) = fed.active(node, &[AdversaryKind::ReplayHead])
            && let Some(frozen) = &fed.attacks[a].frozen
        {
            // Only worth it once the real log has moved on.
            if frozen.head.head.epoch < proof.head.head.epoch
                && let Some(username) = proof.entry.as_ref().map(|e| e.username.clone())
            {
                **proof = FedSim::replay(frozen, &username);
                fed.attacks[a].acted_at.get_or_insert(now);
            }
        }
        Some(env)
    }

    /// A node's message to another node, over the mixnet (nodes are mixnet clients too).
    fn node_to_node(&mut self, from: u32, to: u32, env: Envelope) {
        if self.fed.as_ref().is_some_and(|f| f.partitioned(from, to)) {
            self.metrics.partition_drops += 1;
            return;
        }
        let bytes = codec::encode_frame(&env).expect("node frames fit the limit");
        let life = self.nodes[from as usize].incarnation;
        self.send_message(Endpoint::Node(from), life, Endpoint::Node(to), 0, Payload::NodeFrame { from, bytes }, None);
    }

    fn node_frame_arrives(&mut self, from: u32, to: u32, bytes: Vec<u8>) {
        let now = self.now;
        let Some(core) = self.nodes[to as usize].core.as_mut() else { return };
        core.handle_frame(now, Peer::Address(Address(node_address(from))), &bytes);
        self.after_node_step(to);
    }

    /// After the last partition healed, do the honest nodes agree on every honest node's
    /// log (no fork certificate against an honest node, each one's newest head known to
    /// all others at most one epoch behind, and identical where they overlap)?
    fn partition_converged(&self) -> Option<bool> {
        let fed = self.fed.as_ref()?;
        if !fed.partitions_scheduled {
            return None;
        }
        let honest: Vec<u32> = (0..self.sc.nodes.discovery).filter(|n| !fed.is_adversary(*n)).collect();
        for &x in &honest {
            let Some(fx) = self.nodes[x as usize].core.as_ref().and_then(|c| c.federation()) else { continue };
            let Some(latest) = fx.log().latest() else { return Some(false) };
            for &y in &honest {
                if x == y {
                    continue;
                }
                let Some(fy) = self.nodes[y as usize].core.as_ref().and_then(|c| c.federation()) else { continue };
                if fy.forks().any(|c| c.a.head.node_id == fx.id()) {
                    return Some(false);
                }
                let Some((seen, _)) = fy.head_of(&fx.id()) else { return Some(false) };
                if seen.head.epoch + 1 < latest.head.epoch {
                    return Some(false);
                }
                let stored =
                    nymstr_node_core::transparency_log::stored_head(fx_store(&self.nodes[x as usize]), seen.head.epoch);
                if stored.ok().flatten().as_ref() != Some(seen) {
                    return Some(false);
                }
            }
        }
        Some(true)
    }

    fn federation_report(&self) -> Option<report::FederationReport> {
        let fed = self.fed.as_ref()?;
        let mut heads = 0;
        let mut cosigs = 0;
        let mut forks = 0;
        for n in &self.nodes {
            if let Some(f) = n.core.as_ref().and_then(|c| c.federation()) {
                heads += f.stats.heads_signed;
                cosigs += f.stats.cosignatures_given;
                forks += f.stats.fork_certificates;
            }
        }
        let acted: Vec<&Attack> = fed.attacks.iter().filter(|a| a.acted_at.is_some()).collect();
        let latencies: Vec<f64> =
            acted.iter().filter_map(|a| Some((a.detected_at? - a.acted_at?) as f64 / 1000.0)).collect();
        Some(report::FederationReport {
            trust: fed.scenario.trust.name().to_string(),
            lookups: fed.lookups,
            cross_node_dm: fed.cross_node_dm,
            cross_node_delivered: fed.cross_node_delivered,
            attacks: acted.len() as u64,
            attacks_detected: acted.iter().filter(|a| a.detected_at.is_some()).count() as u64,
            detection_latency_ms: report::DetectionLatency::of(&latencies),
            false_alarms: fed.false_alarms,
            forged_key_accepted_share: fed.forged_accepted.len() as f64 / self.clients.len().max(1) as f64,
            heads_signed: heads,
            cosignatures: cosigs,
            fork_certificates: forks,
            partition_converged: self.partition_converged(),
        })
    }

    // --- group workload ---

    fn start_group_core(&mut self, client: u32) {
        let seed = {
            let mut r = rng::stream(self.sc.seed, Stream::GroupMember { index: client });
            let mut s = [0u8; 32];
            r.fill_bytes(&mut s);
            s
        };
        let c = &mut self.clients[client as usize];
        let Some(id) = c.core.identity() else { return };
        let keys =
            MemberKeys { installation: id.installation.clone(), cert: id.cert.clone(), username: c.username.clone() };
        let key = keys.member_key();
        let config = GroupConfig {
            lifetime: LifetimeMode::Unbounded,
            commit_timeout_us: self.sc.nodes.core.group_commit_timeout_us,
            ..GroupConfig::default()
        };
        c.group = Some(GroupCore::new(keys, seed, config));
        self.groups.client_of_key.insert(key, client);
    }

    /// Clients registered, online and with a group core.
    fn group_ready(&self, client: u32) -> bool {
        let c = &self.clients[client as usize];
        c.online && c.group.is_some()
    }

    fn is_group_member(&self, client: u32, group: &GroupId) -> bool {
        self.clients[client as usize].group.as_ref().is_some_and(|g| g.groups().contains(group))
    }

    fn pick_client(&mut self, ok: impl Fn(&World, u32) -> bool) -> Option<u32> {
        let n = self.clients.len() as u64;
        for _ in 0..64 {
            let c = rng::below(&mut self.group_rng, n) as u32;
            if ok(self, c) {
                return Some(c);
            }
        }
        None
    }

    fn on_group_create(&mut self, index: u32) {
        if self.traffic_stopped {
            return;
        }
        let Some(creator) = self.pick_client(|w, c| w.group_ready(c)) else { return };
        let g = self.sc.workload.groups.clone();
        let node = self.sc.nodes.discovery + rng::below(&mut self.group_rng, u64::from(self.sc.nodes.group)) as u32;
        let open = rng::chance(&mut self.group_rng, g.open_fraction);
        let public = rng::chance(&mut self.group_rng, g.public_fraction);
        let target_size = g.size_min + rng::below(&mut self.group_rng, u64::from(g.size_max - g.size_min + 1)) as u32;
        let now = self.now;
        let core = self.clients[creator as usize].group.as_mut().expect("ready");
        let name = format!("group{index}");
        let Ok(id) = core.create(now, &name, "a simulated group", public, open, node_address(node)) else {
            self.violations.push(format!("client {creator} could not create a group"));
            return;
        };
        self.groups.add_group(SimGroup { id, node, open, public, creator, target_size, created: false });
        self.after_client_step(creator);
    }

    /// After creation: the initial members join over the next half minute.
    fn schedule_initial_joins(&mut self, group: u32) {
        let (target, creator) = {
            let g = &self.groups.groups[group as usize];
            (g.target_size, g.creator)
        };
        let mut chosen = BTreeSet::from([creator]);
        for _ in 1..target {
            let Some(c) = self.pick_client(|w, c| w.clients[c as usize].group.is_some() && !chosen.contains(&c)) else {
                break;
            };
            chosen.insert(c);
            let at = self.now + rng::below(&mut self.group_rng, 30_000_000);
            self.schedule(at, Ev::GroupJoin { client: c, group });
        }
    }

    fn on_group_join(&mut self, client: u32, group: u32) {
        if self.traffic_stopped || !self.group_ready(client) {
            return;
        }
        let g = self.groups.groups[group as usize].clone();
        if self.is_group_member(client, &g.id) {
            return;
        }
        let now = self.now;
        // The meta a joiner starts from: the advert's or the invitation's.
        let meta = self.clients[g.creator as usize]
            .group
            .as_ref()
            .and_then(|c| c.meta(&g.id).cloned())
            .map(|m| GroupMeta { name: m.name, description: m.description, version: m.version });
        let invite = if g.open {
            None
        } else {
            // An online admin issues the token; the simulator hands it over as the DM
            // invitation would (the DM path is exercised by the CLI tests).
            let admin = (0..self.clients.len() as u32).find(|a| {
                self.clients[*a as usize].online
                    && self.clients[*a as usize].group.as_ref().is_some_and(|c| c.is_admin(&g.id))
            });
            let Some(admin) = admin else { return };
            match self.clients[admin as usize].group.as_mut().expect("admin").invite(now, &g.id) {
                Ok(t) => Some(t),
                Err(_) => return,
            }
        };
        let core = self.clients[client as usize].group.as_mut().expect("ready");
        if core.join(now, node_address(g.node), g.id, invite, meta).is_ok() {
            self.groups.join_started.insert((client, g.id), now);
        }
        self.after_client_step(client);
    }

    fn schedule_group_messages(&mut self, client: u32, group: u32) {
        let rate = self.sc.workload.groups.message_rate_per_member_per_min;
        if rate > 0.0 && !self.traffic_stopped {
            let at = self.now + rng::exp(&mut self.group_rng, 60_000_000.0 / rate) as Us;
            if at < self.end_of_traffic() {
                self.schedule(at, Ev::GroupMsgTick { client, group });
            }
        }
    }

    fn on_group_msg_tick(&mut self, client: u32, group: u32) {
        let id = self.groups.groups[group as usize].id;
        if self.traffic_stopped || !self.is_group_member(client, &id) {
            return;
        }
        self.schedule_group_messages(client, group);
        if !self.clients[client as usize].online {
            return;
        }
        let len = self.sc.workload.groups.message_bytes as usize;
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let text: String = (0..len.max(16))
            .map(|_| ALNUM[rng::below(&mut self.group_rng, ALNUM.len() as u64) as usize] as char)
            .collect();
        let now = self.now;
        let core = self.clients[client as usize].group.as_mut().expect("member");
        let sender_key = core.member_key();
        let Ok(msg_id) = core.send(now, &id, &text) else { return };
        // Set when the sender sees its message in the log (see `on_group_event`).
        let audience = BTreeSet::new();
        let mut marker = [0u8; 16];
        marker.copy_from_slice(&text.as_bytes()[..16]);
        self.groups.report.messages += 1;
        self.groups.messages.insert(
            (id, msg_id),
            SentMessage {
                group: id,
                sender: client,
                sender_key,
                sent_at: now,
                audience,
                marker,
                logged: false,
                seq: None,
                received_by: BTreeSet::new(),
                receipts: Vec::new(),
                duplicates: 0,
                missing_reported: BTreeSet::new(),
                lost_reported: BTreeSet::new(),
            },
        );
        self.after_client_step(client);
    }

    fn created_groups(&self) -> Vec<u32> {
        (0..self.groups.groups.len() as u32).filter(|i| self.groups.groups[*i as usize].created).collect()
    }

    /// A Poisson tick of the group workload: schedules the next one and picks a created
    /// group (`None` once traffic stopped or before any group exists).
    fn group_tick(&mut self, rate_per_min: f64, next: Ev) -> Option<(u32, GroupId)> {
        if self.traffic_stopped {
            return None;
        }
        let at = self.now + rng::exp(&mut self.group_rng, 60_000_000.0 / rate_per_min) as Us;
        self.schedule(at, next);
        let created = self.created_groups();
        if created.is_empty() {
            return None;
        }
        let group = created[rng::below(&mut self.group_rng, created.len() as u64) as usize];
        Some((group, self.groups.groups[group as usize].id))
    }

    fn on_group_join_tick(&mut self) {
        let Some((group, id)) = self.group_tick(self.sc.workload.groups.joins_per_min, Ev::GroupJoinTick) else {
            return;
        };
        if let Some(client) = self.pick_client(|w, c| w.group_ready(c) && !w.is_group_member(c, &id)) {
            self.on_group_join(client, group);
        }
    }

    fn on_group_leave_tick(&mut self) {
        let Some((_, id)) = self.group_tick(self.sc.workload.groups.leaves_per_min, Ev::GroupLeaveTick) else {
            return;
        };
        let members: Vec<u32> =
            (0..self.clients.len() as u32).filter(|c| self.group_ready(*c) && self.is_group_member(*c, &id)).collect();
        if members.len() <= 2 {
            return;
        }
        let who = members[rng::below(&mut self.group_rng, members.len() as u64) as usize];
        let now = self.now;
        let core = self.clients[who as usize].group.as_mut().expect("member");
        if core.is_admin(&id) && rng::chance(&mut self.group_rng, 0.5) {
            // An admin removes a member who is not an admin.
            let me = core.member_key();
            let victims: Vec<_> = core.members(&id).into_iter().filter(|m| !m.admin && m.key != me).collect();
            if victims.is_empty() {
                return;
            }
            let v = &victims[rng::below(&mut self.group_rng, victims.len() as u64) as usize];
            let core = self.clients[who as usize].group.as_mut().expect("member");
            if core.remove(now, &id, &v.key).is_ok() {
                self.groups.report.removals += 1;
            }
        } else if core.leave(now, &id).is_ok() {
            self.groups.report.leaves += 1;
        }
        self.after_client_step(who);
    }

    fn on_group_event(&mut self, client: u32, ev: GroupEvent) {
        if std::env::var_os("NYMSTR_SIM_DEBUG").is_some()
            && matches!(
                ev,
                GroupEvent::Missing { .. }
                    | GroupEvent::Lost { .. }
                    | GroupEvent::Joined { .. }
                    | GroupEvent::Error { .. }
            )
        {
            let known = match &ev {
                GroupEvent::Missing { group, msg_id, .. } | GroupEvent::Lost { group, msg_id, .. } => {
                    self.groups.messages.get(&(*group, *msg_id)).map(|m| (m.sender, m.sent_at - EPOCH_US, m.logged))
                }
                _ => None,
            };
            eprintln!("t={} client {client}: {ev:?} known={known:?}", self.now - EPOCH_US);
        }
        self.groups.on_event(client, self.now, &ev);
        match ev {
            GroupEvent::Created { group } => {
                if let Some(&i) = self.groups.by_id.get(&group) {
                    self.schedule_initial_joins(i as u32);
                    self.schedule_group_messages(client, i as u32);
                }
            }
            GroupEvent::Joined { group, .. } => {
                if let Some(&i) = self.groups.by_id.get(&group) {
                    self.schedule_group_messages(client, i as u32);
                }
            }
            _ => {}
        }
    }

    fn observe_entry(&mut self, group: &GroupId, entry: &nymstr_proto::wire::GroupEntry) {
        self.groups.on_log_entry(self.now, *group, entry.seq, entry.epoch, &entry.mls);
    }

    // --- hosts ---

    fn after_client_step(&mut self, client: u32) {
        let transmits: Vec<Envelope> = self.clients[client as usize].core.drain_transmits().collect();
        for env in transmits {
            self.client_transmit(client, env);
        }
        while let Some(ev) = self.clients[client as usize].core.poll_event() {
            self.on_client_event(client, ev);
        }
        while let Some(g) = self.clients[client as usize].group.as_mut() {
            let transmits = g.drain_transmits();
            let events: Vec<GroupEvent> = std::iter::from_fn(|| g.poll_event()).collect();
            if transmits.is_empty() && events.is_empty() {
                break;
            }
            for t in transmits {
                if std::env::var_os("NYMSTR_SIM_TRACE_CLIENT").is_some_and(|v| v == client.to_string().as_str()) {
                    let detail = match &t.envelope.body {
                        Body::GroupFetch { from_seq, .. } => format!("from {from_seq}"),
                        _ => String::new(),
                    };
                    eprintln!(
                        "t={} client {client} -> group {}: rid {} {} {detail} (online {})",
                        self.now - EPOCH_US,
                        groups::hex8(&t.group),
                        t.envelope.request_id,
                        t.envelope.body.kind(),
                        self.clients[client as usize].online
                    );
                }
                if let Body::GroupUpload { mls, .. } = &t.envelope.body
                    && groups::classify(mls) == UploadClass::Application
                {
                    self.groups.app_uploads_sent += 1;
                }
                match node_of_address(&t.group_node) {
                    Some(node) if (node as usize) < self.nodes.len() => {
                        self.client_transmit_to(client, node, t.envelope)
                    }
                    _ => self.violations.push(format!("client {client}'s group core addressed an unknown node")),
                }
            }
            for ev in events {
                self.on_group_event(client, ev);
            }
        }
        let c = &mut self.clients[client as usize];
        let want = [c.core.poll_timeout(), c.group.as_ref().and_then(|g| g.poll_timeout())].into_iter().flatten().min();
        if want != c.timer_at {
            c.timer_generation += 1;
            c.timer_at = want;
            let generation = c.timer_generation;
            if let Some(at) = want {
                self.schedule(at, Ev::ClientTimer { client, generation });
            }
        }
    }

    fn on_client_event(&mut self, client: u32, ev: Event) {
        if std::env::var_os("NYMSTR_SIM_TRACE_CLIENT").is_some_and(|v| v == client.to_string().as_str()) {
            eprintln!("t={} client {client} event {ev:?}", self.now - EPOCH_US);
        }
        match ev {
            Event::Registered { .. } => {
                let c = &mut self.clients[client as usize];
                if !c.registered {
                    c.registered = true;
                    c.registered_at = self.now;
                    let home = c.node;
                    self.metrics.registered += 1;
                    self.nodes[home as usize].registered.push(client);
                    self.on_dm_tick_schedule(client);
                    if self.sc.workload.groups.count > 0 {
                        self.start_group_core(client);
                    }
                    if self.fed.is_some() {
                        // The witness set: the federation as the home node knows it now.
                        let now = self.now;
                        self.clients[client as usize].core.fetch_nodes(now);
                        self.schedule_fed_lookup(client);
                        let epoch = self.fed.as_ref().map_or(0, |f| f.scenario.epoch.us());
                        let at = now + 2 * epoch + rng::below(&mut self.fed_rng, 2 * epoch);
                        self.schedule(at, Ev::SelfCheck { client });
                    }
                }
            }
            Event::SendAcked { msg_id, .. } => {
                if let Some(d) = self.dms.get_mut(&msg_id) {
                    d.sender_acked = true;
                }
            }
            Event::Received { msg_id, .. } => {
                let now = self.now;
                let Some(d) = self.dms.get_mut(&msg_id) else {
                    self.violations.push(format!("client {client} received a message nobody sent"));
                    return;
                };
                if d.recipient != client {
                    self.violations.push(format!("message for client {} surfaced at client {client}", d.recipient));
                }
                d.delivered += 1;
                if d.delivered == 1 {
                    self.latencies_ms.push((now - d.sent_at) as f64 / 1000.0);
                    if d.cross
                        && let Some(fed) = self.fed.as_mut()
                    {
                        fed.cross_node_delivered += 1;
                    }
                }
            }
            Event::Rejected { from, reason, .. } => {
                self.metrics.rejected_deliveries += 1;
                // A message from a user of a misbehaving node cannot be verified: refused.
                let excused = self.fed.as_ref().is_some_and(|f| {
                    from.split_once('@')
                        .and_then(|(_, h)| NodeId::from_hex(h))
                        .and_then(|id| f.node_of_id(&id))
                        .is_some_and(|n| f.is_adversary(n))
                });
                if !excused {
                    self.violations.push(format!("client {client} rejected an honest message from {from}: {reason}"));
                }
            }
            Event::Failed { what, code, .. } => {
                self.metrics.failed_requests += 1;
                if let nymstr_client_core::Operation::Send { msg_id, .. } = what
                    && let Some(d) = self.dms.get_mut(&msg_id)
                {
                    d.failed = true;
                    // A send to a user of a misbehaving node may fail: that is the point.
                    let home = self.clients[d.recipient as usize].node;
                    let excused = self.fed.as_ref().is_some_and(|f| f.is_adversary(home));
                    if !excused {
                        self.violations.push(format!("send from client {client} failed with {code:?}"));
                    }
                }
            }
            Event::KeyChanged { username, .. } => {
                if self.fed.is_none() {
                    self.violations.push(format!("client {client} saw the account key of {username} change"));
                }
            }
            Event::Transparency { username, outcome, detail } => {
                self.on_transparency(client, username, outcome, detail)
            }
            Event::LookedUp { username } => self.on_looked_up(client, &username),
            // The simulator's clients do not use direct mode.
            Event::LoggedIn { .. }
            | Event::DirectOffered { .. }
            | Event::DirectReady { .. }
            | Event::DirectWithdrawn { .. }
            | Event::DirectDelivered { .. }
            | Event::DirectFailed { .. }
            | Event::GroupInvited { .. } => {}
        }
    }

    fn on_dm_tick_schedule(&mut self, client: u32) {
        let rate = self.sc.workload.dm.rate_per_client_per_min;
        if rate > 0.0 && !self.traffic_stopped {
            let at = self.now + rng::exp(&mut self.work_rng, 60_000_000.0 / rate) as Us;
            if at < self.end_of_traffic() {
                self.schedule(at, Ev::DmTick { client });
            }
        }
    }

    fn after_node_step(&mut self, node: u32) {
        self.notice_forks(node);
        let n = &mut self.nodes[node as usize];
        let Some(core) = n.core.as_mut() else { return };
        let outputs: Vec<Output> = core.drain_outputs().collect();
        let durable = if self.sc.nodes.buggify_ack_before_flush { u64::MAX } else { core.store().durable_seq() };
        let want = core.poll_timeout();
        let mut now_sends = Vec::new();
        for Output::Send { to, envelope, durable_after } in outputs {
            if let Body::Deliver { msg_id, .. } = &envelope.body
                && let Some(d) = self.dms.get_mut(msg_id)
                && d.deliver_produced_at.is_none()
            {
                d.deliver_produced_at = Some(self.now);
            }
            if durable_after <= durable {
                now_sends.push((to, envelope));
            } else {
                n.held.push((durable_after, to, envelope));
            }
        }
        let need_flush = !n.held.is_empty() && !n.flushing;
        if want != n.timer_at {
            n.timer_generation += 1;
            n.timer_at = want;
            let generation = n.timer_generation;
            if let Some(at) = want {
                self.schedule(at, Ev::NodeTimer { node, generation });
            }
        }
        for (to, env) in now_sends {
            self.node_transmit(node, to, env);
        }
        if need_flush {
            self.start_flush(node);
        }
    }

    fn start_flush(&mut self, node: u32) {
        let n = &mut self.nodes[node as usize];
        let Some(core) = n.core.as_ref() else { return };
        n.flushing = true;
        let mark = core.store().write_seq();
        let incarnation = n.incarnation;
        self.metrics.flushes += 1;
        self.schedule(self.now + ms_to_us(self.sc.nodes.flush_ms), Ev::FlushDone { node, incarnation, mark });
    }

    fn on_flush_done(&mut self, node: u32, incarnation: u32, mark: u64) {
        let n = &mut self.nodes[node as usize];
        if n.incarnation != incarnation {
            return;
        }
        let Some(core) = n.core.as_mut() else { return };
        core.store_mut().flush_upto(mark);
        n.flushing = false;
        let held = std::mem::take(&mut n.held);
        let (ready, still): (Vec<_>, Vec<_>) = held.into_iter().partition(|(after, _, _)| *after <= mark);
        n.held = still;
        let again = !n.held.is_empty();
        for (_, to, env) in ready {
            if let Body::Deliver { msg_id, .. } = &env.body
                && let Some(d) = self.dms.get_mut(msg_id)
                && d.deliver_released_at.is_none()
            {
                d.deliver_released_at = Some(self.now);
            }
            self.node_transmit(node, to, env);
        }
        if again {
            self.start_flush(node);
        }
    }

    fn crash(&mut self, node: u32, restart_after: Us) {
        let n = &mut self.nodes[node as usize];
        let Some(core) = n.core.take() else { return };
        n.past_stats = add_stats(&n.past_stats, &core.stats);
        n.past_group_stats = add_group_stats(&n.past_group_stats, core.group_stats());
        let mut store = core.into_store();
        store.crash();
        n.down_store = Some(store);
        n.held.clear();
        n.flushing = false;
        n.incarnation += 1;
        n.timer_generation += 1;
        n.timer_at = None;
        self.metrics.crashes += 1;
        self.schedule(self.now + restart_after, Ev::Restart { node });
    }

    fn restart(&mut self, node: u32) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        let store = n.down_store.take().expect("a down node holds its store");
        match start_node(&self.sc, self.fed.as_ref(), node, now, store, n.incarnation) {
            Ok(core) => self.nodes[node as usize].core = Some(core),
            Err(e) => self.violations.push(format!("node {node} could not restart: {e}")),
        }
        self.after_node_step(node);
    }

    // --- transport ---

    fn client_transmit(&mut self, client: u32, env: Envelope) {
        let c = &self.clients[client as usize];
        if !c.online {
            return;
        }
        let bytes = codec::encode_frame(&env).expect("client frames fit the limit");
        let leg = match &env.body {
            Body::SendDm(d) => Some(Leg::Send(d.msg_id)),
            _ => None,
        };
        let (node, session) = (c.node, c.session);
        let payload =
            Payload::ToNode { tag: c.tag, owner: client, session, bytes, surbs: self.sc.mixnet.surbs_per_message };
        self.send_message(Endpoint::Client(client), session, Endpoint::Node(node), 0, payload, leg);
    }

    /// The client's tag towards `node` in its current session.
    fn tag_for(&mut self, client: u32, node: u32) -> SenderTag {
        let c = &mut self.clients[client as usize];
        if node == c.node {
            return c.tag;
        }
        if let Some(t) = c.node_tags.get(&node) {
            return *t;
        }
        let mut tag = [0u8; 16];
        c.transport_rng.fill_bytes(&mut tag);
        c.node_tags.insert(node, SenderTag(tag));
        SenderTag(tag)
    }

    /// A client's message to a node other than its home (a group node).
    fn client_transmit_to(&mut self, client: u32, node: u32, env: Envelope) {
        if !self.clients[client as usize].online {
            return;
        }
        let bytes = codec::encode_frame(&env).expect("client frames fit the limit");
        let tag = self.tag_for(client, node);
        let session = self.clients[client as usize].session;
        let payload = Payload::ToNode { tag, owner: client, session, bytes, surbs: self.sc.mixnet.surbs_per_message };
        self.send_message(Endpoint::Client(client), session, Endpoint::Node(node), 0, payload, None);
    }

    fn node_transmit(&mut self, node: u32, to: Peer, env: Envelope) {
        let env = match self.fed_intercept(node, env) {
            Some(env) => env,
            None => return,
        };
        let tag = match to {
            Peer::Tag(tag) => tag,
            Peer::Address(addr) => {
                if self.clients.iter().any(|c| c.address.as_slice() == addr.0.as_slice()) {
                    self.violations.push(format!("node {node} addressed a client by its mixnet address"));
                    return;
                }
                match node_of_address(&addr.0) {
                    Some(to) if (to as usize) < self.nodes.len() && self.fed.is_some() => {
                        self.node_to_node(node, to, env)
                    }
                    _ => self.violations.push(format!("node {node} addressed an unknown node")),
                }
                return;
            }
        };
        if let (Body::Error { code: nymstr_proto::wire::ErrorCode::Unreachable, .. }, Some(fed)) =
            (&env.body, self.fed.as_mut())
        {
            // A forward that timed out: whoever it went to dropped it (or is cut off).
            let now = self.now;
            for a in 0..fed.attacks.len() {
                let spec = &fed.attacks[a].spec;
                if spec.kind == AdversaryKind::DropForwarded && fed.attacks[a].acted_at.is_some() {
                    let target = spec.node;
                    fed.detected(now, target, format!("forward to node {target} timed out"));
                }
            }
        }
        if let Body::SendAck { msg_id } = &env.body
            && let Some(d) = self.dms.get_mut(msg_id)
        {
            d.node_acked = true;
        }
        match &env.body {
            Body::GroupPush { group_id, entry } => self.observe_entry(group_id, entry),
            Body::GroupEntries { group_id, entries, .. } => {
                for e in entries {
                    self.observe_entry(group_id, e);
                }
            }
            _ => {}
        }
        let bytes = codec::encode_frame(&env).expect("node frames fit the limit");
        let leg = match &env.body {
            Body::Deliver { msg_id, .. } => Some(Leg::Deliver(*msg_id)),
            _ => None,
        };
        self.reply(node, tag, bytes, leg);
    }

    /// Sends `bytes` to the client behind `tag` on its SURBs, asking for more when low.
    fn reply(&mut self, node: u32, tag: SenderTag, bytes: Vec<u8>, leg: Option<Leg>) {
        let Some(t) = self.tags.get_mut(&tag) else {
            self.violations.push(format!("node {node} replied to a tag it never received from"));
            return;
        };
        let frags = mixnet::fragments(&self.sc.mixnet, bytes.len(), 0);
        // One SURB stays in reserve so the node can always ask for more (Nym's reply
        // controller requests a top-up before it runs dry).
        if t.surbs > frags && t.waiting.is_empty() {
            t.surbs -= frags;
            self.metrics.mixnet.surbs_used += u64::from(frags);
            let (owner, session) = (t.owner, t.session);
            self.send_on_surb(node, owner, session, Payload::ToClient { node, bytes }, leg);
        } else {
            t.waiting.push_back(bytes);
        }
        self.maybe_request_surbs(node, tag);
    }

    fn maybe_request_surbs(&mut self, node: u32, tag: SenderTag) {
        const LOW_WATERMARK: u32 = 2;
        let t = self.tags.get_mut(&tag).expect("tag exists");
        if t.requested || t.surbs == 0 || (t.surbs >= LOW_WATERMARK && t.waiting.is_empty()) {
            return;
        }
        t.surbs -= 1;
        t.requested = true;
        self.metrics.mixnet.surbs_used += 1;
        self.metrics.mixnet.surb_requests += 1;
        let (owner, session) = (t.owner, t.session);
        self.send_on_surb(node, owner, session, Payload::SurbRequest { node, tag }, None);
    }

    /// A node's message to the client session a SURB leads back to.
    fn send_on_surb(&mut self, node: u32, owner: u32, session: u32, payload: Payload, leg: Option<Leg>) {
        let life = self.nodes[node as usize].incarnation;
        self.send_message(Endpoint::Node(node), life, Endpoint::Client(owner), session, payload, leg);
    }

    fn send_message(
        &mut self,
        src: Endpoint,
        src_life: u32,
        dst: Endpoint,
        dst_life: u32,
        payload: Payload,
        leg: Option<Leg>,
    ) {
        let p = &self.sc.mixnet;
        let (len, surbs) = match &payload {
            Payload::ToNode { bytes, surbs, .. } => (bytes.len(), *surbs),
            Payload::ToClient { bytes, .. } => (bytes.len(), 0),
            Payload::SurbRequest { .. } => (32, 0),
            Payload::SurbTopUp { surbs, .. } => (0, *surbs),
            Payload::NodeFrame { bytes, .. } => (bytes.len(), 0),
        };
        let frags = mixnet::fragments(p, len, surbs);
        let id = self.next_msg;
        self.next_msg += 1;
        let idle = self.last_depart(src) <= self.now;
        self.msgs.insert(
            id,
            InFlight {
                src,
                src_life,
                dst,
                dst_life,
                payload,
                frags,
                received: vec![false; frags as usize],
                received_count: 0,
                delivered: false,
                pending: 0,
                clean: idle,
                leg,
                created_at: self.now,
            },
        );
        if let Some(Leg::Send(m)) = leg
            && let Some(d) = self.dms.get_mut(&m)
        {
            d.leg1_frags = frags;
        }
        if let Some(Leg::Deliver(m)) = leg
            && let Some(d) = self.dms.get_mut(&m)
            && d.leg2_frags == 0
        {
            d.leg2_frags = frags;
        }
        for frag in 0..frags {
            self.launch(id, frag, true);
        }
    }

    fn last_depart(&self, e: Endpoint) -> Us {
        match e {
            Endpoint::Node(i) => self.nodes[i as usize].last_depart,
            Endpoint::Client(i) => self.clients[i as usize].last_depart,
        }
    }

    /// Puts one packet on the wire from its sender's Poisson queue.
    fn launch(&mut self, id: u64, frag: u32, first: bool) {
        let src = self.msgs[&id].src;
        let interval = match src {
            Endpoint::Node(_) => self.sc.mixnet.node_send_interval_ms_mean,
            Endpoint::Client(_) => self.sc.mixnet.send_interval_ms_mean,
        };
        let depart = mixnet::next_departure(self.now, self.last_depart(src), interval, &mut self.mix_rng);
        match src {
            Endpoint::Node(i) => self.nodes[i as usize].last_depart = depart,
            Endpoint::Client(i) => self.clients[i as usize].last_depart = depart,
        }
        self.metrics.mixnet.packets += 1;
        let rto = mixnet::retransmit_timeout_us(&self.sc.mixnet);
        let lost = rng::chance(&mut self.mix_rng, self.loss);
        let transit = mixnet::transit_us(&self.sc.mixnet, &mut self.mix_rng);
        let ack_lost = !lost && rng::chance(&mut self.mix_rng, self.loss);
        let m = self.msgs.get_mut(&id).expect("message exists");
        if lost {
            self.metrics.mixnet.packets_lost += 1;
            m.clean = false;
            m.pending += 1;
            self.schedule(depart + rto, Ev::Retransmit { msg: id, frag });
            return;
        }
        if first {
            self.metrics.transit_first_attempt.add(transit as f64);
        }
        m.pending += 1;
        if ack_lost {
            m.clean = false;
            m.pending += 1;
            self.schedule(depart + rto, Ev::Retransmit { msg: id, frag });
        }
        self.schedule(depart + transit, Ev::Fragment { msg: id, frag });
    }

    fn release(&mut self, id: u64) {
        let m = self.msgs.get_mut(&id).expect("message exists");
        m.pending -= 1;
        if m.pending == 0 {
            self.msgs.remove(&id);
        }
    }

    fn alive(&self, e: Endpoint, life: u32) -> bool {
        match e {
            Endpoint::Node(i) => {
                let n = &self.nodes[i as usize];
                n.core.is_some() && n.incarnation == life
            }
            Endpoint::Client(i) => {
                let c = &self.clients[i as usize];
                c.online && c.session == life
            }
        }
    }

    fn on_retransmit(&mut self, id: u64, frag: u32) {
        let m = &self.msgs[&id];
        let resend = !m.delivered && !m.received[frag as usize] && self.alive(m.src, m.src_life);
        self.trace.update(&id.to_le_bytes());
        if resend {
            self.metrics.mixnet.retransmissions += 1;
            if matches!(m.src, Endpoint::Node(_)) {
                self.metrics.mixnet.surbs_used += 1;
            }
            self.launch(id, frag, false);
        }
        self.release(id);
    }

    fn on_fragment(&mut self, id: u64, frag: u32) {
        self.trace.update(&id.to_le_bytes());
        self.trace.update(&frag.to_le_bytes());
        let dst_up = {
            let m = &self.msgs[&id];
            match m.dst {
                Endpoint::Node(i) => self.nodes[i as usize].core.is_some(),
                Endpoint::Client(i) => {
                    let c = &self.clients[i as usize];
                    c.online && c.session == m.dst_life
                }
            }
        };
        if !dst_up {
            self.metrics.mixnet.dropped_at_down_endpoint += 1;
            self.release(id);
            return;
        }
        let m = self.msgs.get_mut(&id).expect("message exists");
        if !m.received[frag as usize] {
            m.received[frag as usize] = true;
            m.received_count += 1;
        }
        let complete = m.received_count == m.frags && !m.delivered;
        if complete {
            m.delivered = true;
            let (dst, payload, clean, leg, created_at) = (m.dst, m.payload.clone(), m.clean, m.leg, m.created_at);
            self.deliver(dst, payload, clean, leg, created_at);
        }
        self.release(id);
    }

    fn deliver(&mut self, dst: Endpoint, payload: Payload, clean: bool, leg: Option<Leg>, created_at: Us) {
        let now = self.now;
        match (dst, payload) {
            (Endpoint::Node(node), Payload::ToNode { tag, owner, session, bytes, surbs }) => {
                self.credit_surbs(node, tag, owner, session, surbs);
                self.metrics.frames_to_nodes += 1;
                self.trace.update(blake3::hash(&bytes).as_bytes());
                if let Some(Leg::Send(m)) = leg
                    && let Some(d) = self.dms.get_mut(&m)
                    && d.node_rx_at.is_none()
                {
                    d.node_rx_at = Some(now);
                    // Only the first transmission counts: a retry restarts the clock.
                    d.leg1_clean = clean && created_at == d.sent_at;
                }
                let core = self.nodes[node as usize].core.as_mut().expect("destination is up");
                let group_id = match codec::decode_frame(&bytes).map(|e| e.body) {
                    Ok(Body::GroupUpload { group_id, mls, .. }) => {
                        if groups::classify(&mls) == UploadClass::Proposal
                            && let Some(epoch) = core.steward().epoch(&group_id)
                        {
                            self.groups.proposal_waiting.entry((group_id, epoch)).or_insert(now);
                        }
                        Some(group_id)
                    }
                    Ok(Body::GroupCreate { group_id, .. }) => Some(group_id),
                    _ => None,
                };
                let before = group_id.and_then(|g| core.steward().epoch(&g));
                core.handle_frame(now, Peer::Tag(tag), &bytes);
                // Membership of every epoch, as the steward's public view has it.
                if let Some(g) = group_id
                    && let Some(epoch) = core.steward().epoch(&g)
                    && before != Some(epoch)
                {
                    let members = core.steward().members(&g).unwrap_or_default();
                    let clients = members.iter().filter_map(|k| self.groups.client_of_key.get(k).copied()).collect();
                    self.groups.members_at_epoch.insert((g, epoch), clients);
                }
                self.after_node_step(node);
            }
            (Endpoint::Node(node), Payload::SurbTopUp { tag, owner, session, surbs }) => {
                self.credit_surbs(node, tag, owner, session, surbs)
            }
            (Endpoint::Node(node), Payload::NodeFrame { from, bytes }) => {
                self.metrics.frames_to_nodes += 1;
                self.trace.update(blake3::hash(&bytes).as_bytes());
                // A drop_forwarded adversary swallows (or holds back) what peers forward.
                if let Some(fed) = self.fed.as_mut()
                    && let Some(a) = fed.active(node, &[AdversaryKind::DropForwarded])
                    && matches!(codec::decode_frame(&bytes).map(|e| e.body), Ok(Body::ForwardDm { .. }))
                    && !self.traffic_stopped
                {
                    fed.attacks[a].acted_at.get_or_insert(now);
                    if let Some(delay) = fed.attacks[a].spec.delay {
                        self.schedule(now + delay.us(), Ev::NodeFrameLate { from, to: node, bytes });
                    }
                    return;
                }
                self.node_frame_arrives(from, node, bytes);
            }
            (Endpoint::Client(client), Payload::ToClient { node, bytes }) => {
                self.metrics.frames_to_clients += 1;
                self.trace.update(blake3::hash(&bytes).as_bytes());
                if let Some(Leg::Deliver(m)) = leg {
                    self.note_leg2(m, clean, created_at);
                }
                if std::env::var_os("NYMSTR_SIM_TRACE_CLIENT").is_some_and(|v| v == client.to_string().as_str())
                    && let Ok(env) = codec::decode_frame(&bytes)
                {
                    let detail = match &env.body {
                        Body::Error { code, detail } => format!("{code:?} {detail}"),
                        Body::GroupEntries { entries, next_seq, .. } => {
                            format!(
                                "{} entries from {:?} next {next_seq}",
                                entries.len(),
                                entries.first().map(|e| e.seq)
                            )
                        }
                        Body::GroupPush { entry, .. } => format!("seq {}", entry.seq),
                        _ => String::new(),
                    };
                    eprintln!(
                        "t={} to client {client} from node {node}: rid {} {} {detail}",
                        now - EPOCH_US,
                        env.request_id,
                        env.body.kind()
                    );
                }
                let c = &mut self.clients[client as usize];
                if node == c.node {
                    c.core.handle_frame(now, &bytes);
                } else if let Some(g) = c.group.as_mut() {
                    g.handle_frame(now, &node_address(node), &bytes);
                }
                self.after_client_step(client);
            }
            (Endpoint::Client(client), Payload::SurbRequest { node, tag }) => {
                let session = self.clients[client as usize].session;
                let surbs = self.sc.mixnet.surbs_per_message;
                self.send_message(
                    Endpoint::Client(client),
                    session,
                    Endpoint::Node(node),
                    0,
                    Payload::SurbTopUp { tag, owner: client, session, surbs },
                    None,
                );
            }
            (dst, _) => self.violations.push(format!("mixnet delivered a message of the wrong kind to {dst:?}")),
        }
    }

    /// Latency oracle sample: a clean DM's latency against the model's expectation.
    fn note_leg2(&mut self, msg: MsgId, leg2_clean: bool, leg2_sent_at: Us) {
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

    fn credit_surbs(&mut self, node: u32, tag: SenderTag, owner: u32, session: u32, surbs: u32) {
        let t = self.tags.entry(tag).or_insert(TagState {
            owner,
            session,
            surbs: 0,
            waiting: VecDeque::new(),
            requested: false,
        });
        t.surbs += surbs;
        t.requested = false;
        self.send_waiting(node, tag);
    }

    /// Replies that waited for SURBs go now, oldest first.
    fn send_waiting(&mut self, node: u32, tag: SenderTag) {
        loop {
            let t = self.tags.get_mut(&tag).expect("tag exists");
            let Some(front) = t.waiting.front() else { break };
            let frags = mixnet::fragments(&self.sc.mixnet, front.len(), 0);
            if t.surbs <= frags {
                break;
            }
            t.surbs -= frags;
            let bytes = t.waiting.pop_front().expect("front exists");
            let (owner, session) = (t.owner, t.session);
            self.metrics.mixnet.surbs_used += u64::from(frags);
            let leg = match codec::decode_frame(&bytes).map(|e| e.body) {
                Ok(Body::Deliver { msg_id, .. }) => Some(Leg::Deliver(msg_id)),
                _ => None,
            };
            self.send_on_surb(node, owner, session, Payload::ToClient { node, bytes }, leg);
        }
        self.maybe_request_surbs(node, tag);
    }

    // --- oracles ---

    fn judge(&mut self) {
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
            if let Some(g) = self.groups.group(id) {
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

    fn report(&self, wall_time_ms: f64) -> Report {
        let mut node_stats = NodeStats::default();
        for n in &self.nodes {
            node_stats = add_stats(&node_stats, &n.past_stats);
            if let Some(c) = &n.core {
                node_stats = add_stats(&node_stats, &c.stats);
            }
        }
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
        }
    }

    fn groups_report(&self) -> groups::GroupsReport {
        let mut r = self.groups.report.clone();
        let mut accepted = 0;
        for n in &self.nodes {
            accepted += n.past_group_stats.group_application_messages;
            if let Some(c) = &n.core {
                accepted += c.group_stats().group_application_messages;
            }
        }
        // Per application message written (texts and admins' `SetMeta`s alike).
        let (written, reencrypted) = self
            .clients
            .iter()
            .filter_map(|c| c.group.as_ref())
            .fold((0, 0), |(w, e), g| (w + g.stats().app_messages, e + g.stats().app_reencryptions));
        let per = |x: u64| if written > 0 { x as f64 / written as f64 } else { 0.0 };
        r.app_messages_written = written;
        r.app_reencryptions = reencrypted;
        r.sender_msgs_per_group_msg = per(self.groups.app_uploads_sent);
        r.accepted_per_group_msg = per(accepted);
        r.commit_latency_ms = report::Quantiles::of(&self.groups.commit_latencies_ms);
        r.join_latency_ms = report::Quantiles::of(&self.groups.join_latencies_ms);
        r
    }
}

impl DmRecord {
    /// The node acknowledged it (we see that as the sender's ack, or as a delivery, which
    /// the node only releases after the same durable write).
    fn node_acked_or_delivered(&self) -> bool {
        self.node_acked || self.sender_acked || self.delivered > 0
    }
}

fn add_group_stats(a: &StewardStats, b: &StewardStats) -> StewardStats {
    StewardStats {
        groups_created: a.groups_created + b.groups_created,
        group_subscriptions: a.group_subscriptions + b.group_subscriptions,
        group_uploads_accepted: a.group_uploads_accepted + b.group_uploads_accepted,
        group_uploads_rejected: a.group_uploads_rejected + b.group_uploads_rejected,
        group_application_messages: a.group_application_messages + b.group_application_messages,
        group_proposals: a.group_proposals + b.group_proposals,
        group_commits: a.group_commits + b.group_commits,
        group_pushes: a.group_pushes + b.group_pushes,
        group_fetches: a.group_fetches + b.group_fetches,
    }
}

fn hex8(id: &MsgId) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn add_stats(a: &NodeStats, b: &NodeStats) -> NodeStats {
    NodeStats {
        frames_in: a.frames_in + b.frames_in,
        frames_rejected: a.frames_rejected + b.frames_rejected,
        registrations: a.registrations + b.registrations,
        logins: a.logins + b.logins,
        lookups: a.lookups + b.lookups,
        dms_accepted: a.dms_accepted + b.dms_accepted,
        dms_rejected: a.dms_rejected + b.dms_rejected,
        deliveries: a.deliveries + b.deliveries,
        redeliveries: a.redeliveries + b.redeliveries,
        acks: a.acks + b.acks,
    }
}

/// Starts (or restarts) node `i`: federated when the scenario has a federation and the
/// node is a discovery node or a sybil, plain otherwise.
fn start_node(
    sc: &Scenario,
    fed: Option<&FedSim>,
    i: u32,
    now: Us,
    store: MemStore,
    incarnation: u32,
) -> Result<NodeCore<MemStore>, nymstr_node_core::actors::StartError> {
    let rng = rng::stream(sc.seed, Stream::Node { index: i, incarnation });
    let mut config = sc.nodes.core.clone();
    match fed.and_then(|f| f.keys.get(&i).map(|k| (f, k))) {
        Some((f, key)) => {
            let peers = sc.nodes.discovery + f.sybils.len() as u32 - 1;
            config.federation = f.node_config(peers);
            let bootstrap = [0u32, 1]
                .into_iter()
                .filter(|b| *b != i && *b < sc.nodes.discovery)
                .map(|b| Address(node_address(b)))
                .collect();
            let identity = NodeIdentity {
                key: key.clone(),
                address: node_address(i),
                roles: Roles { discovery: true, group: false },
                bootstrap,
            };
            NodeCore::start_federated(now, store, rng, config, identity)
        }
        None => NodeCore::start(now, store, rng, config),
    }
}

fn fx_store(n: &NodeHost) -> &MemStore {
    n.core.as_ref().expect("checked up").store()
}
