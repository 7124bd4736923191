//! Hosting the group workload: members' group cores, creating groups, joins (open or by
//! invitation), messages, leaves and removals, what members and stewards report, and the
//! groups' part of the report.

use std::collections::BTreeSet;

use nymstr_client_core::group::{GroupConfig, GroupCore, GroupEvent, GroupMeta, LifetimeMode, MemberKeys};
use nymstr_proto::wire::GroupId;
use rand_core::Rng;

use crate::groups::{SentMessage, SimGroup};
use crate::mixnet::Us;
use crate::report;
use crate::rng::{self, Stream};

use super::state::{EPOCH_US, Ev, World, node_address};

impl World {
    pub(super) fn start_group_core(&mut self, client: u32) {
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
        let config = GroupConfig { lifetime: LifetimeMode::Unbounded, ..GroupConfig::default() };
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

    pub(super) fn on_group_create(&mut self, index: u32) {
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

    pub(super) fn on_group_join(&mut self, client: u32, group: u32) {
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
            // Bound to the invitee's account key (the DM invitation's recipient).
            let invitee = self.clients[client as usize].group.as_ref().expect("ready").account_key();
            match self.clients[admin as usize].group.as_mut().expect("admin").invite(now, &g.id, Some(invitee)) {
                Ok(t) => {
                    self.groups.last_invite.insert(g.id, t.clone());
                    Some(t)
                }
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

    pub(super) fn on_group_msg_tick(&mut self, client: u32, group: u32) {
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

    pub(super) fn on_group_join_tick(&mut self) {
        let Some((group, id)) = self.group_tick(self.sc.workload.groups.joins_per_min, Ev::GroupJoinTick) else {
            return;
        };
        if let Some(client) = self.pick_client(|w, c| w.group_ready(c) && !w.is_group_member(c, &id)) {
            self.on_group_join(client, group);
        }
    }

    pub(super) fn on_group_leave_tick(&mut self) {
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

    pub(super) fn on_group_event(&mut self, client: u32, ev: GroupEvent) {
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

    pub(super) fn observe_entry(&mut self, group: &GroupId, entry: &nymstr_proto::wire::GroupEntry) {
        self.groups.on_log_entry(self.now, *group, entry.seq, entry.epoch, &entry.mls);
    }

    /// Every member holds its groups' logs up to the steward's head (a member whose last
    /// push was lost may not know it is behind until its periodic sync).
    pub(super) fn groups_caught_up(&self) -> bool {
        self.clients.iter().filter_map(|c| c.group.as_ref()).all(|g| {
            g.groups().iter().all(|id| {
                let Some(sg) = self.groups.group(id) else { return true };
                let head = self.nodes[sg.node as usize].core.as_ref().and_then(|n| n.steward().next_seq(id));
                head.is_none_or(|h| g.next_seq(id).is_some_and(|n| n >= h))
            })
        })
    }

    pub(super) fn groups_report(&self) -> report::GroupsReport {
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
