//! The `flood_*` adversaries (`specs/sim.md`): misbehaving users whose tags and accounts
//! speak the real wire to the real node core. They talk to their node directly, not over
//! the mixnet (a flooder next to the node is the worst case; the node sees only tags
//! either way). The oracle: honest users keep their service while a flood runs, that is
//! their registrations, logins and group subscriptions finish within `service_bound_us`
//! of starting and are never refused `Busy`, their DMs are never refused `QueueFull`, and
//! their groups get created.

use std::collections::BTreeMap;

use nymstr_client_core::group::{GroupConfig, GroupCore, LifetimeMode, MemberKeys};
use nymstr_client_core::{ClientConfig, ClientCore, Event};
use nymstr_node_core::actors::{Peer, SenderTag};
use nymstr_proto::codec;
use nymstr_proto::wire::{Body, Envelope, ErrorCode, GroupId};
use rand_core::Rng;

use crate::floods::{Account, Flooder, SERVICES, Service, service_bound_us};
use crate::mixnet::Us;
use crate::report::{self, FloodReport, FlooderReport, ServiceLatency};
use crate::rng::{self, Stream};
use crate::scenario::AdversaryKind;

use super::state::{EPOCH_US, Ev, World, node_address};

/// A flood sends what is due every tick.
const FLOOD_TICK_US: Us = 100_000;
/// `flood_queue`: an honest client writes to the victim every this often while it runs.
const PROBE_EVERY_TICKS: u64 = 50;
/// Bytes of text in one flood DM.
const FLOOD_DM_BYTES: usize = 200;

impl World {
    /// Schedules the start of every `flood_*` adversary.
    pub(super) fn schedule_floods(&mut self) {
        let starts: Vec<(u32, Us, Us)> = (0..self.sc.adversaries.len() as u32)
            .filter_map(|i| {
                let a = self.sc.adversaries[i as usize].get_ref();
                let until = a.until.unwrap_or(self.sc.duration);
                a.kind.is_flood().then_some((i, EPOCH_US + a.at.us(), EPOCH_US + until.us()))
            })
            .collect();
        for (index, at, until) in starts {
            self.floods.windows.push((at, until));
            self.schedule(at, Ev::FloodStart { index });
        }
    }

    pub(super) fn on_flood_start(&mut self, index: u32) {
        let a = self.sc.adversaries[index as usize].get_ref().clone();
        let seed = self.sc.seed;
        let now = self.now;
        let mut tag_rng = rng::stream(seed, Stream::Flood { adversary: index, account: u32::MAX });
        let mut fresh_tag = || {
            let mut t = [0u8; 16];
            tag_rng.fill_bytes(&mut t);
            SenderTag(t)
        };
        let accounts = match a.kind {
            AdversaryKind::FloodGroups => a.flood_count(),
            AdversaryKind::FloodSubscribe => 0,
            _ => 1,
        };
        let tags: Vec<SenderTag> = match a.kind {
            AdversaryKind::FloodRegister | AdversaryKind::FloodSubscribe => {
                (0..a.flood_count()).map(|_| fresh_tag()).collect()
            }
            _ => Vec::new(),
        };
        let mut frames = Vec::new();
        if a.kind == AdversaryKind::FloodRegister {
            // The same valid request again and again (as the measured attack did), for a
            // name nobody takes.
            let mut core = ClientCore::new(
                rng::stream(seed, Stream::Flood { adversary: index, account: u32::MAX - 1 }),
                ClientConfig::default(),
            );
            core.register(now, &format!("flood{index}r")).expect("a valid name");
            frames.extend(core.drain_transmits().filter_map(|e| codec::encode_frame(&e).ok()));
        }
        let mut accs = Vec::new();
        for i in 0..accounts {
            let mut core = ClientCore::new(
                rng::stream(seed, Stream::Flood { adversary: index, account: i }),
                ClientConfig::default(),
            );
            core.register(now, &format!("flood{index}a{i}")).expect("a valid name");
            accs.push(Account { tag: fresh_tag(), core, group: None, registered: false });
        }
        let victim = (a.kind == AdversaryKind::FloodQueue).then(|| a.user.unwrap_or(a.node));
        for t in &tags {
            self.floods.by_tag.insert(*t, (index, None));
        }
        for (i, acc) in accs.iter().enumerate() {
            self.floods.by_tag.insert(acc.tag, (index, Some(i)));
        }
        let until = a.until.unwrap_or(self.sc.duration);
        let flooder = Flooder {
            kind: a.kind,
            node: a.node,
            start: now,
            stop: EPOCH_US + until.us(),
            rate: a.flood_rate(),
            tags,
            accounts: accs,
            frames,
            victim,
            sent: 0,
            skipped: 0,
            ticks: 0,
            answers: BTreeMap::new(),
        };
        self.floods.flooders.insert(index, flooder);
        for account in 0..accounts as usize {
            self.pump_account(index, account);
        }
        self.schedule(now + FLOOD_TICK_US, Ev::FloodTick { index });
    }

    pub(super) fn on_flood_tick(&mut self, index: u32) {
        let now = self.now;
        let Some(f) = self.floods.flooders.get_mut(&index) else { return };
        if now >= f.stop {
            return;
        }
        f.ticks += 1;
        let due = ((now - f.start) as f64 * f.rate / 1e6) as u64;
        let (from, to) = (f.sent, due);
        f.sent = due.max(f.sent);
        let probe = f.kind == AdversaryKind::FloodQueue && f.ticks % PROBE_EVERY_TICKS == 0;
        for n in from..to {
            self.flood_one(index, n);
        }
        if probe {
            self.probe_victim(index);
        }
        self.schedule(now + FLOOD_TICK_US, Ev::FloodTick { index });
    }

    /// The flood's `n`th request.
    fn flood_one(&mut self, index: u32, n: u64) {
        let now = self.now;
        let f = self.floods.flooders.get_mut(&index).expect("flooder");
        let node = f.node;
        match f.kind {
            AdversaryKind::FloodRegister => {
                let bytes = f.frames[(n % f.frames.len() as u64) as usize].clone();
                let tag = f.tags[(n % f.tags.len() as u64) as usize];
                self.flood_frame(node, tag, &bytes);
            }
            AdversaryKind::FloodSubscribe => {
                let tag = f.tags[(n % f.tags.len() as u64) as usize];
                // A member key of a group the node hosts: keys are public (GroupInfo).
                let target = self.groups.groups.iter().filter(|g| g.node == node && g.created).find_map(|g| {
                    let core = self.nodes[node as usize].core.as_ref()?;
                    core.steward().members(&g.id).and_then(|m| m.first().copied()).map(|k| (g.id, k))
                });
                let Some((group_id, member_key)) = target else {
                    self.floods.flooders.get_mut(&index).expect("flooder").skipped += 1;
                    return;
                };
                let env =
                    Envelope { request_id: n + 1, body: Body::GroupSubscribe { group_id, member_key, from_seq: 0 } };
                let bytes = codec::encode_frame(&env).expect("fits");
                self.flood_frame(node, tag, &bytes);
            }
            AdversaryKind::FloodQueue => {
                let victim = f.victim.expect("flood_queue has a victim");
                let acc = &mut f.accounts[0];
                if !acc.registered {
                    f.skipped += 1;
                    return;
                }
                let to = self.clients[victim as usize].username.clone();
                let mut body = vec![0u8; FLOOD_DM_BYTES];
                body[..8].copy_from_slice(&n.to_le_bytes());
                if let Ok(id) = acc.core.send_dm(now, &to, &body) {
                    self.floods.msg_ids.insert(id);
                }
                self.pump_account(index, 0);
            }
            AdversaryKind::FloodGroups => {
                let i = (n % f.accounts.len() as u64) as usize;
                let Some(g) = f.accounts[i].group.as_mut() else {
                    f.skipped += 1;
                    return;
                };
                if g.create(now, &format!("junk{n}"), "", false, false, node_address(node)).is_ok() {
                    self.pump_account(index, i);
                }
            }
            _ => unreachable!("only flood kinds have a flooder"),
        }
    }

    /// `flood_queue`: an honest client homed with the victim writes to it, so the oracle
    /// sees whether honest DMs still get into its queue.
    fn probe_victim(&mut self, index: u32) {
        let f = &self.floods.flooders[&index];
        let (victim, node, ticks) = (f.victim.expect("victim"), f.node, f.ticks);
        if !self.clients[victim as usize].registered {
            return;
        }
        let candidates: Vec<u32> = self.nodes[node as usize]
            .registered
            .iter()
            .copied()
            .filter(|c| *c != victim && self.clients[*c as usize].online)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let sender = candidates[((ticks / PROBE_EVERY_TICKS) % candidates.len() as u64) as usize];
        self.floods.probes += 1;
        self.send_workload_dm(sender, victim, false);
    }

    fn flood_frame(&mut self, node: u32, tag: SenderTag, bytes: &[u8]) {
        let now = self.now;
        let Some(core) = self.nodes[node as usize].core.as_mut() else { return };
        core.handle_frame(now, Peer::Tag(tag), bytes);
        self.after_node_step(node);
    }

    /// Sends what an attacker account's cores want to send, from its tag.
    fn pump_account(&mut self, index: u32, account: usize) {
        let f = self.floods.flooders.get_mut(&index).expect("flooder");
        let node = f.node;
        let acc = &mut f.accounts[account];
        let mut envs: Vec<Envelope> = acc.core.drain_transmits().collect();
        if let Some(g) = acc.group.as_mut() {
            envs.extend(g.drain_transmits().into_iter().map(|t| t.envelope));
        }
        let tag = acc.tag;
        for env in envs {
            if let Ok(bytes) = codec::encode_frame(&env) {
                self.flood_frame(node, tag, &bytes);
            }
        }
    }

    /// A node frame for a flooder's tag: counted (and given to its account's cores)
    /// here, not sent over the mixnet. False if the tag is no flooder's.
    pub(super) fn deliver_to_flooder(&mut self, to: SenderTag, env: &Envelope) -> bool {
        let Some((index, account)) = self.floods.by_tag.get(&to).copied() else { return false };
        let now = self.now;
        let f = self.floods.flooders.get_mut(&index).expect("flooder");
        let key = match &env.body {
            Body::Error { code, .. } => format!("{code:?}"),
            body => body.kind().to_string(),
        };
        *f.answers.entry(key).or_default() += 1;
        let Some(i) = account else { return true };
        let (kind, node) = (f.kind, f.node);
        let acc = &mut f.accounts[i];
        if !acc.registered {
            acc.core.handle_frame(now, &codec::encode_frame(env).expect("fits"));
            while let Some(ev) = acc.core.poll_event() {
                if let Event::Registered { .. } = ev {
                    acc.registered = true;
                }
            }
            if acc.registered {
                match kind {
                    AdversaryKind::FloodRegister => {
                        // Logins for the attacker's own account, from the flood's tags.
                        let _ = acc.core.login(now);
                        let login: Vec<Vec<u8>> =
                            acc.core.drain_transmits().filter_map(|e| codec::encode_frame(&e).ok()).collect();
                        f.frames.extend(login);
                    }
                    AdversaryKind::FloodGroups => {
                        let id = acc.core.identity().expect("registered");
                        let keys = MemberKeys {
                            installation: id.installation.clone(),
                            cert: id.cert.clone(),
                            username: acc.core.username().unwrap_or_default().to_string(),
                        };
                        let mut seed = [0u8; 32];
                        rng::stream(self.sc.seed, Stream::Flood { adversary: index, account: i as u32 })
                            .fill_bytes(&mut seed);
                        let config = GroupConfig { lifetime: LifetimeMode::Unbounded, ..GroupConfig::default() };
                        acc.group = Some(GroupCore::new(keys, seed, config));
                    }
                    _ => {}
                }
            }
        } else if let Some(g) = acc.group.as_mut() {
            g.handle_envelope(now, &node_address(node), env.clone());
            while g.poll_event().is_some() {}
        } else {
            acc.core.handle_frame(now, &codec::encode_frame(env).expect("fits"));
            while acc.core.poll_event().is_some() {}
        }
        self.pump_account(index, i);
        true
    }

    // --- what honest users see ---

    /// An honest client starts `service` (for `group`, when it is a subscription).
    pub(super) fn service_started(&mut self, service: Service, client: u32, group: GroupId) {
        if !self.floods.active() {
            return;
        }
        let session = self.clients[client as usize].session;
        self.floods.started.entry((service, client, group)).or_insert((self.now, session));
    }

    /// An honest client's `service` is done: a latency sample, if it ran in one session.
    pub(super) fn service_done(&mut self, service: Service, client: u32, group: GroupId) {
        let Some((at, session)) = self.floods.started.remove(&(service, client, group)) else { return };
        if session != self.clients[client as usize].session {
            return;
        }
        let ms = (self.now - at) as f64 / 1000.0;
        let samples =
            if self.floods.under_flood(at) { &mut self.floods.loaded_ms } else { &mut self.floods.unloaded_ms };
        samples.entry(service).or_default().push(ms);
    }

    /// An honest client sends a request: remembered by kind, to name a refusal.
    pub(super) fn honest_request(&mut self, tag: SenderTag, env: &Envelope) {
        if !self.floods.active() {
            return;
        }
        let kind = env.body.kind();
        if matches!(&env.body, Body::RegisterRequest { .. } | Body::LoginRequest { .. } | Body::SendDm(_))
            || kind.starts_with("group_")
        {
            self.floods.requests.insert((tag, env.request_id), kind);
        }
    }

    /// A node answers an honest client: refusals a flood could cause are counted.
    pub(super) fn honest_answer(&mut self, tag: SenderTag, env: &Envelope) {
        if !self.floods.active() {
            return;
        }
        match &env.body {
            Body::Error { code: code @ (ErrorCode::Busy | ErrorCode::QueueFull), .. } => {
                let kind = self.floods.requests.get(&(tag, env.request_id)).copied().unwrap_or("request");
                *self.floods.refusals.entry(format!("{kind}: {code:?}")).or_default() += 1;
            }
            Body::GroupSubscribed { group_id, .. } => {
                if let Some(owner) = self.tags.get(&tag).map(|t| t.owner) {
                    self.service_done(Service::Subscribe, owner, *group_id);
                }
            }
            _ => {}
        }
    }

    /// The flood oracle (see the module's comment).
    pub(super) fn judge_floods(&mut self) -> u64 {
        if !self.floods.active() {
            return 0;
        }
        let mut checks = 0;
        let bound_ms = service_bound_us(&self.sc) as f64 / 1000.0;
        for (index, f) in &self.floods.flooders {
            checks += 1;
            if f.sent == f.skipped {
                self.violations.push(format!("flood {index} ({:?}) sent nothing", f.kind));
            }
            if !f.accounts.iter().all(|a| a.registered) {
                self.violations.push(format!("flood {index} ({:?}): an attacker account never registered", f.kind));
            }
        }
        for service in SERVICES {
            let samples = self.floods.loaded_ms.get(&service).map_or(&[][..], Vec::as_slice);
            checks += samples.len() as u64;
            let slow: Vec<f64> = samples.iter().copied().filter(|ms| *ms > bound_ms).collect();
            if !slow.is_empty() {
                self.violations.push(format!(
                    "flood: {} of {} honest {}s started during a flood took longer than {bound_ms:.0} ms (slowest \
                     {:.0} ms)",
                    slow.len(),
                    samples.len(),
                    service.name(),
                    slow.iter().copied().fold(0.0, f64::max)
                ));
            }
        }
        // Still under way, in the session that started it, when the run ended.
        let stuck: Vec<String> = self
            .floods
            .started
            .iter()
            .filter(|((_, c, _), (at, session))| {
                self.floods.under_flood(*at) && self.clients[*c as usize].session == *session
            })
            .map(|((s, c, _), _)| format!("client {c}'s {}", s.name()))
            .collect();
        if !stuck.is_empty() {
            self.violations.push(format!("flood: honest operations never finished: {}", stuck.join(", ")));
        }
        checks += 1;
        if !self.floods.refusals.is_empty() {
            let list: Vec<String> = self.floods.refusals.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            self.violations.push(format!("flood: honest requests refused: {}", list.join(", ")));
        }
        if self.floods.flooders.values().any(|f| f.kind == AdversaryKind::FloodGroups) {
            for g in &self.groups.groups {
                checks += 1;
                if !g.created {
                    self.violations.push(format!(
                        "flood: honest group {} on node {} was never created",
                        crate::groups::hex8(&g.id),
                        g.node
                    ));
                }
            }
        }
        checks
    }

    pub(super) fn flood_report(&self) -> Option<FloodReport> {
        if !self.floods.active() {
            return None;
        }
        let latency = |m: &BTreeMap<Service, Vec<f64>>| {
            SERVICES
                .iter()
                .map(|s| {
                    let mut v = m.get(s).cloned().unwrap_or_default();
                    v.sort_by(f64::total_cmp);
                    let l = ServiceLatency {
                        n: v.len() as u64,
                        p50: report::percentile(&v, 0.50),
                        p99: report::percentile(&v, 0.99),
                        max: v.last().copied().unwrap_or(0.0),
                    };
                    (s.name().to_string(), l)
                })
                .collect()
        };
        Some(FloodReport {
            service_bound_ms: service_bound_us(&self.sc) as f64 / 1000.0,
            honest_under_flood_ms: latency(&self.floods.loaded_ms),
            honest_unloaded_ms: latency(&self.floods.unloaded_ms),
            honest_refusals: self.floods.refusals.clone(),
            flood_dms_delivered: self.floods.delivered,
            honest_dms_to_victims: self.floods.probes,
            flooders: self
                .floods
                .flooders
                .values()
                .map(|f| FlooderReport {
                    kind: serde_json::to_value(f.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    node: f.node,
                    sent: f.sent - f.skipped,
                    answers: f.answers.clone(),
                })
                .collect(),
        })
    }
}
