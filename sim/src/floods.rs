//! The bookkeeping of the `flood_*` adversaries (`specs/sim.md` §11): each flood's tags,
//! accounts and counters, and the honest operations timed while floods run. The world
//! drives them (`world/flood.rs`).

use std::collections::{BTreeMap, BTreeSet};

use nymstr_client_core::ClientCore;
use nymstr_client_core::group::GroupCore;
use nymstr_node_core::actors::SenderTag;
use nymstr_proto::wire::{GroupId, MsgId};

use crate::mixnet::{self, Us, ms_to_us};
use crate::scenario::AdversaryKind;

/// An honest operation the flood oracle times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Service {
    Register,
    Login,
    Subscribe,
}

/// The group of a service that has none (registration, login).
pub(crate) const NO_GROUP: GroupId = [0; 16];

pub(crate) const SERVICES: [Service; 3] = [Service::Register, Service::Login, Service::Subscribe];

impl Service {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Service::Register => "register",
            Service::Login => "login",
            Service::Subscribe => "subscribe",
        }
    }
}

/// An account the attacker registered (and so logged in) on the flooded node.
pub(crate) struct Account {
    pub(crate) tag: SenderTag,
    pub(crate) core: ClientCore,
    /// `flood_groups`: the member core that creates the junk groups.
    pub(crate) group: Option<GroupCore>,
    pub(crate) registered: bool,
}

pub(crate) struct Flooder {
    pub(crate) kind: AdversaryKind,
    pub(crate) node: u32,
    pub(crate) start: Us,
    pub(crate) stop: Us,
    pub(crate) rate: f64,
    /// Tags that send the flood's requests (`flood_register`, `flood_subscribe`).
    pub(crate) tags: Vec<SenderTag>,
    pub(crate) accounts: Vec<Account>,
    /// `flood_register`: the frames sent in turn (a `RegisterRequest`, then a
    /// `LoginRequest` once the attacker's account exists).
    pub(crate) frames: Vec<Vec<u8>>,
    pub(crate) victim: Option<u32>,
    pub(crate) sent: u64,
    /// Requests due when there was nothing to send (no group to name yet, no account).
    pub(crate) skipped: u64,
    pub(crate) ticks: u64,
    /// The node's answers to the flood, by body kind (errors by code).
    pub(crate) answers: BTreeMap<String, u64>,
}

/// The floods of a run and what honest users saw meanwhile.
#[derive(Default)]
pub(crate) struct Floods {
    /// By adversary index.
    pub(crate) flooders: BTreeMap<u32, Flooder>,
    /// Which flooder (and account) a tag belongs to.
    pub(crate) by_tag: BTreeMap<SenderTag, (u32, Option<usize>)>,
    /// DMs the flooders sent (their recipient receives them; no honest sender's).
    pub(crate) msg_ids: BTreeSet<MsgId>,
    pub(crate) delivered: u64,
    /// Honest DMs written to a `flood_queue` victim.
    pub(crate) probes: u64,
    /// Flood windows, to tell samples taken under a flood from unloaded ones.
    pub(crate) windows: Vec<(Us, Us)>,
    /// Honest operations under way: started at, in which session.
    pub(crate) started: BTreeMap<(Service, u32, GroupId), (Us, u32)>,
    /// Honest requests by (tag, request id): their kind, to name a refusal.
    pub(crate) requests: BTreeMap<(SenderTag, u64), &'static str>,
    pub(crate) loaded_ms: BTreeMap<Service, Vec<f64>>,
    pub(crate) unloaded_ms: BTreeMap<Service, Vec<f64>>,
    /// Honest requests refused with `Busy` or `QueueFull`, by request kind and code.
    pub(crate) refusals: BTreeMap<String, u64>,
}

impl Floods {
    pub(crate) fn active(&self) -> bool {
        !self.windows.is_empty()
    }

    pub(crate) fn under_flood(&self, at: Us) -> bool {
        self.windows.iter().any(|(a, b)| (*a..*b).contains(&at))
    }
}

/// Within this of starting, an honest registration, login or subscription (two round
/// trips through the mixnet and a store flush) must be done while a flood runs: four
/// times its unloaded latency `U` = 4 x hops x hop delay + flush, plus two retransmission
/// timeouts for packets the mixnet loses. With Nym's defaults: 4 x 1.005 s + 2 x 2.25 s
/// = 8.5 s, below the client's first retry of a refused request (10 s), so one refusal
/// breaks it.
pub(crate) fn service_bound_us(sc: &crate::scenario::Scenario) -> Us {
    let m = &sc.mixnet;
    let unloaded = ms_to_us(4.0 * f64::from(m.hops) * m.hop_delay_ms_mean + sc.nodes.flush_ms);
    4 * unloaded + 2 * mixnet::retransmit_timeout_us(m)
}
