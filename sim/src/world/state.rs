//! The world's state: the event and its queue entry, the node and client hosts, the
//! messages in flight and the DMs the workload sent, the metrics, and the `World` itself.
//! Every other module of the world adds behaviour to these types and imports only them.

use nymstr_node_core::outbox::Outbox;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use nymstr_client_core::ClientCore;
use nymstr_client_core::group::GroupCore;
use nymstr_node_core::NodeCore;
use nymstr_node_core::actors::steward::StewardStats;
use nymstr_node_core::actors::{NodeStats, Peer, SenderTag};
use nymstr_node_core::store::MemStore;
use nymstr_proto::wire::{Envelope, GroupId, MsgId};
use rand_chacha::ChaCha20Rng;

use crate::fed_model::FedSim;
use crate::groups::Groups;
use crate::mixnet::{Moments, Us};
use crate::report;
use crate::scenario::Scenario;

/// Virtual time of the simulation's start: 2026-01-01T00:00:00Z.
pub const EPOCH_US: Us = 1_767_225_600_000_000;
pub(super) const DRAIN_CHECK_US: Us = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Node(u32),
    Client(u32),
}

#[derive(Clone, Debug)]
pub(super) enum Ev {
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
    /// An `inject_join` adversary acts (`group_adversary.rs`).
    InjectJoin {
        node: u32,
    },
    /// An `advert_hijack` adversary floods and gossips its hijack adverts.
    AdvertHijack {
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
    /// A `flood_*` adversary (index into the scenario's adversaries) starts.
    FloodStart {
        index: u32,
    },
    /// A `flood_*` adversary sends what is due since its last tick (`flood.rs`).
    FloodTick {
        index: u32,
    },
}

impl Ev {
    pub(super) fn code(&self) -> u8 {
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
            Ev::InjectJoin { .. } => 27,
            Ev::FloodStart { .. } => 28,
            Ev::FloodTick { .. } => 29,
            Ev::AdvertHijack { .. } => 30,
        }
    }
}

pub(super) struct Scheduled {
    pub(super) at: Us,
    pub(super) seq: u64,
    pub(super) ev: Ev,
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
pub(super) enum Payload {
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
pub(super) enum Leg {
    Send(MsgId),
    Deliver(MsgId),
}

pub(super) struct InFlight {
    pub(super) src: Endpoint,
    /// Incarnation (node) or session (client) of the sender: a retransmission from a
    /// sender that crashed or went offline never happens.
    pub(super) src_life: u32,
    pub(super) dst: Endpoint,
    /// For a client destination, the session the SURB leads to.
    pub(super) dst_life: u32,
    pub(super) payload: Payload,
    pub(super) frags: u32,
    pub(super) received: Vec<bool>,
    pub(super) received_count: u32,
    pub(super) delivered: bool,
    /// Scheduled events still referring to this message.
    pub(super) pending: u32,
    /// No packet of it was lost or retransmitted, and its sender was idle when it left.
    pub(super) clean: bool,
    pub(super) leg: Option<Leg>,
    pub(super) created_at: Us,
}

pub(super) struct TagState {
    pub(super) owner: u32,
    pub(super) session: u32,
    pub(super) surbs: u32,
    pub(super) waiting: VecDeque<Vec<u8>>,
    pub(super) requested: bool,
}

pub(super) struct NodeHost {
    pub(super) core: Option<NodeCore<MemStore>>,
    pub(super) down_store: Option<MemStore>,
    pub(super) incarnation: u32,
    /// Outputs held until the store makes their writes durable (the shared outbox).
    pub(super) outbox: Outbox<(Peer, Envelope)>,
    pub(super) timer_generation: u64,
    pub(super) timer_at: Option<Us>,
    pub(super) last_depart: Us,
    /// Registered clients homed here (the workload's recipients).
    pub(super) registered: Vec<u32>,
    /// Stats of previous incarnations, summed.
    pub(super) past_stats: NodeStats,
    pub(super) past_group_stats: StewardStats,
}

pub(super) struct ClientHost {
    pub(super) core: ClientCore,
    pub(super) node: u32,
    pub(super) username: String,
    pub(super) online: bool,
    pub(super) session: u32,
    pub(super) tag: SenderTag,
    /// Tags towards nodes other than the home node (group nodes), one per node and
    /// session, so two nodes cannot link a client by its tag.
    pub(super) node_tags: BTreeMap<u32, SenderTag>,
    pub(super) address: [u8; 32],
    pub(super) transport_rng: ChaCha20Rng,
    pub(super) registered: bool,
    pub(super) timer_generation: u64,
    pub(super) timer_at: Option<Us>,
    pub(super) last_depart: Us,
    /// People this user writes to (the workload's social circle).
    pub(super) contacts: Vec<u32>,
    /// The group member core, once the client is registered (group workloads only).
    pub(super) group: Option<GroupCore>,
    pub(super) registered_at: Us,
}

#[derive(Clone, Debug, Default)]
pub(super) struct DmRecord {
    pub(super) sender: u32,
    pub(super) recipient: u32,
    pub(super) sent_at: Us,
    pub(super) node_acked: bool,
    pub(super) sender_acked: bool,
    pub(super) failed: bool,
    pub(super) delivered: u32,
    /// Sent at once (contact cached) from an idle Poisson queue.
    pub(super) leg1_at_once: bool,
    pub(super) leg1_frags: u32,
    pub(super) leg1_clean: bool,
    /// To a user homed on another discovery node (`user@node`).
    pub(super) cross: bool,
    pub(super) node_rx_at: Option<Us>,
    pub(super) deliver_produced_at: Option<Us>,
    pub(super) deliver_released_at: Option<Us>,
    pub(super) leg2_frags: u32,
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
    pub(super) sc: Scenario,
    pub(super) now: Us,
    pub(super) seq: u64,
    pub(super) queue: BinaryHeap<Reverse<Scheduled>>,
    pub(super) trace: blake3::Hasher,
    pub(super) events: u64,
    pub(super) mix_rng: ChaCha20Rng,
    pub(super) work_rng: ChaCha20Rng,
    pub(super) loss: f64,
    pub(super) traffic_stopped: bool,
    pub(super) finished: bool,
    pub(super) nodes: Vec<NodeHost>,
    pub(super) clients: Vec<ClientHost>,
    pub(super) msgs: BTreeMap<u64, InFlight>,
    pub(super) next_msg: u64,
    pub(super) tags: BTreeMap<SenderTag, TagState>,
    pub(super) dms: BTreeMap<MsgId, DmRecord>,
    pub(super) latencies_ms: Vec<f64>,
    pub(super) expected_cache: BTreeMap<(u32, u64), (f64, f64)>,
    /// Largest standard error of the Monte Carlo expectations used (it is a fixed bias).
    pub(super) expected_se_max: f64,
    pub metrics: Metrics,
    pub(super) violations: Vec<String>,
    pub(super) checks: u64,
    pub(super) groups: Groups,
    pub(super) group_rng: ChaCha20Rng,
    pub(super) fed: Option<FedSim>,
    pub(super) fed_rng: ChaCha20Rng,
    /// Fork certificates each node held at its last step (to notice new ones).
    pub(super) forks_seen: BTreeMap<u32, usize>,
    /// The `inject_join` adversary's member core, once it acted.
    pub(super) intruder: Option<Intruder>,
    /// The `flood_*` adversaries and what honest users saw while they ran (`flood.rs`).
    pub(super) floods: crate::floods::Floods,
}

/// The `inject_join` adversary's member core and what it managed (`group_adversary.rs`).
pub(crate) struct Intruder {
    pub(crate) core: GroupCore,
    pub(crate) tag: SenderTag,
    pub(crate) node: u32,
    pub(crate) group: GroupId,
    /// Group messages the intruder's core surfaced (must stay 0).
    pub(crate) decrypted: u64,
    /// The steward acknowledged the intruder's join (else the run attacked nothing).
    pub(crate) joined: bool,
}

/// A group node's address as the group cores carry it: its index, big-endian.
pub(super) fn node_address(node: u32) -> Vec<u8> {
    node.to_be_bytes().to_vec()
}

pub(super) fn node_of_address(addr: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(addr).ok().map(u32::from_be_bytes)
}

impl World {
    pub(super) fn schedule(&mut self, at: Us, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: at.max(self.now), seq: self.seq, ev }));
    }

    pub(super) fn end_of_traffic(&self) -> Us {
        EPOCH_US + self.sc.duration.us()
    }
}

impl DmRecord {
    /// The node acknowledged it (we see that as the sender's ack, or as a delivery, which
    /// the node only releases after the same durable write).
    pub(super) fn node_acked_or_delivered(&self) -> bool {
        self.node_acked || self.sender_acked || self.delivered > 0
    }
}
