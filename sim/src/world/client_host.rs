//! Client hosts: joining, going offline and coming back (a new session and tag), timers,
//! the direct-message workload (who writes to whom, and when), and what the world does
//! with the events a client core and its group core report.

use nymstr_client_core::Event;
use nymstr_client_core::group::GroupEvent;
use nymstr_node_core::actors::SenderTag;
use nymstr_proto::federation::NodeId;
use nymstr_proto::wire::{Body, Envelope};
use rand_core::Rng;

use crate::floods::{NO_GROUP, Service};
use crate::groups::{self, UploadClass};
use crate::mixnet::Us;
use crate::rng;

use super::state::{DmRecord, EPOCH_US, Ev, World, node_of_address};

impl World {
    pub(super) fn on_client_timer(&mut self, client: u32, generation: u64) {
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

    pub(super) fn on_join(&mut self, client: u32) {
        let now = self.now;
        let c = &mut self.clients[client as usize];
        let name = c.username.clone();
        c.core.register(now, &name).expect("generated usernames are valid");
        self.service_started(Service::Register, client, NO_GROUP);
        self.after_client_step(client);
        self.schedule_offline(client);
    }

    pub(super) fn on_offline(&mut self, client: u32) {
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

    pub(super) fn on_online(&mut self, client: u32) {
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
        let logging_in = c.registered;
        if logging_in {
            c.core.login(now).expect("registered");
            self.metrics.logins += 1;
        }
        if let Some(g) = c.group.as_mut() {
            g.reconnected(now);
        }
        if logging_in {
            self.service_started(Service::Login, client, NO_GROUP);
        }
        self.after_client_step(client);
        self.schedule_offline(client);
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

    // --- workload ---

    pub(super) fn on_dm_tick(&mut self, client: u32) {
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
    pub(super) fn send_workload_dm(&mut self, client: u32, recipient: u32, cross: bool) {
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

    // --- steps ---

    pub(super) fn after_client_step(&mut self, client: u32) {
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
                self.service_done(Service::Register, client, NO_GROUP);
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
                        // The federation's node keys as the home node knows them now
                        // (not witnesses: those are the client's configuration).
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
                if self.floods.msg_ids.contains(&msg_id) {
                    self.floods.delivered += 1;
                    return;
                }
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
            Event::LoggedIn { .. } => self.service_done(Service::Login, client, NO_GROUP),
            // The simulator's clients do not use direct mode.
            Event::DirectOffered { .. }
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
}
