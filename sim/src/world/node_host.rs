//! Node hosts: timers, the group commit that holds a node's outputs until a flush of its
//! store covers them (`held`, `flushing`), background flushes, and crash and restart
//! (the store loses what was not flushed; the core restarts from what is left).

use nymstr_node_core::NodeCore;
use nymstr_node_core::actors::federation::NodeIdentity;
use nymstr_node_core::actors::steward::StewardStats;
use nymstr_node_core::actors::{Address, NodeStats, Output};
use nymstr_node_core::store::{MemStore, Store};
use nymstr_proto::federation::Roles;
use nymstr_proto::wire::Body;

use crate::fed_model::FedSim;
use crate::mixnet::{Us, ms_to_us};
use crate::rng::{self, Stream};
use crate::scenario::{AdversaryKind, Scenario};

use super::state::{Ev, World, node_address};

impl World {
    pub(super) fn on_background_flush(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        if let Some(core) = &n.core
            && !n.outbox.flushing()
            && core.store().write_seq() > core.store().durable_seq()
        {
            self.start_flush(node, true);
        }
        let at = self.now + ms_to_us(self.sc.nodes.background_flush_ms);
        self.schedule(at, Ev::BackgroundFlush { node });
    }

    pub(super) fn on_node_timer(&mut self, node: u32, generation: u64) {
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

    pub(super) fn after_node_step(&mut self, node: u32) {
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
            now_sends.extend(n.outbox.submit(durable_after, durable, (to, envelope)));
        }
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
        self.start_flush(node, false);
    }

    /// Starts the flush the outbox asks for (or, for sled's background flush, any flush
    /// when none is in flight); it completes `flush_ms` later.
    fn start_flush(&mut self, node: u32, background: bool) {
        let n = &mut self.nodes[node as usize];
        let Some(core) = n.core.as_ref() else { return };
        let started =
            if background { n.outbox.begin_flush(core.store()) } else { n.outbox.flush_to_start(core.store()) };
        let Some(mark) = started else { return };
        let incarnation = n.incarnation;
        self.metrics.flushes += 1;
        self.schedule(self.now + ms_to_us(self.sc.nodes.flush_ms), Ev::FlushDone { node, incarnation, mark });
    }

    pub(super) fn on_flush_done(&mut self, node: u32, incarnation: u32, mark: u64) {
        let n = &mut self.nodes[node as usize];
        if n.incarnation != incarnation {
            return;
        }
        let Some(core) = n.core.as_mut() else { return };
        let ready = n.outbox.flush_completed(core.store_mut(), mark);
        for (to, env) in ready {
            if let Body::Deliver { msg_id, .. } = &env.body
                && let Some(d) = self.dms.get_mut(msg_id)
                && d.deliver_released_at.is_none()
            {
                d.deliver_released_at = Some(self.now);
            }
            self.node_transmit(node, to, env);
        }
        self.start_flush(node, false);
    }

    pub(super) fn crash(&mut self, node: u32, restart_after: Us) {
        let n = &mut self.nodes[node as usize];
        let Some(core) = n.core.take() else { return };
        n.past_stats = add_stats(&n.past_stats, &core.stats);
        n.past_group_stats = add_group_stats(&n.past_group_stats, core.group_stats());
        let mut store = core.into_store();
        store.crash();
        n.down_store = Some(store);
        n.outbox.discard();
        n.incarnation += 1;
        n.timer_generation += 1;
        n.timer_at = None;
        self.metrics.crashes += 1;
        self.schedule(self.now + restart_after, Ev::Restart { node });
    }

    pub(super) fn restart(&mut self, node: u32) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        let store = n.down_store.take().expect("a down node holds its store");
        match start_node(&self.sc, self.fed.as_ref(), node, now, store, n.incarnation) {
            Ok(core) => self.nodes[node as usize].core = Some(core),
            Err(e) => self.violations.push(format!("node {node} could not restart: {e}")),
        }
        self.after_node_step(node);
    }

    /// Every node's stats, summed over its incarnations.
    pub(super) fn node_stats(&self) -> NodeStats {
        let mut node_stats = NodeStats::default();
        for n in &self.nodes {
            node_stats = add_stats(&node_stats, &n.past_stats);
            if let Some(c) = &n.core {
                node_stats = add_stats(&node_stats, &c.stats);
            }
        }
        node_stats
    }
}

/// Starts (or restarts) node `i`: federated when the scenario has a federation and the
/// node is a discovery node or a sybil, plain otherwise.
pub(super) fn start_node(
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
    .map(|mut core| {
        if sc.adversaries().any(|a| a.kind == AdversaryKind::InjectJoin && a.node == i) {
            core.buggify_steward_admits_any_join();
        }
        core
    })
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
