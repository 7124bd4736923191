//! Hosting the mixnet: messages cut into packets that leave from each sender's Poisson
//! queue, are lost, retransmitted and reassembled; replies that travel on the SURBs a
//! client sent (and wait, or ask for more, when those run low); delivery to the cores.

use std::collections::VecDeque;

use nymstr_node_core::actors::{Peer, SenderTag};
use nymstr_proto::codec;
use nymstr_proto::wire::{Body, Envelope};
use rand_core::Rng;

use crate::floods::Service;
use crate::groups::{self, UploadClass};
use crate::mixnet::{self, Us};
use crate::rng;
use crate::scenario::AdversaryKind;

use super::state::{EPOCH_US, Endpoint, Ev, InFlight, Leg, Payload, TagState, World, node_address, node_of_address};

impl World {
    pub(super) fn client_transmit(&mut self, client: u32, env: Envelope) {
        let c = &self.clients[client as usize];
        if !c.online {
            return;
        }
        let bytes = codec::encode_frame(&env).expect("client frames fit the limit");
        let leg = match &env.body {
            Body::SendDm(d) => Some(Leg::Send(d.msg_id)),
            _ => None,
        };
        let (node, session, tag) = (c.node, c.session, c.tag);
        self.honest_request(tag, &env);
        let payload = Payload::ToNode { tag, owner: client, session, bytes, surbs: self.sc.mixnet.surbs_per_message };
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
    pub(super) fn client_transmit_to(&mut self, client: u32, node: u32, env: Envelope) {
        if !self.clients[client as usize].online {
            return;
        }
        let bytes = codec::encode_frame(&env).expect("client frames fit the limit");
        let tag = self.tag_for(client, node);
        self.honest_request(tag, &env);
        if let Body::GroupSubscribe { group_id, .. } = &env.body {
            self.service_started(Service::Subscribe, client, *group_id);
        }
        let session = self.clients[client as usize].session;
        let payload = Payload::ToNode { tag, owner: client, session, bytes, surbs: self.sc.mixnet.surbs_per_message };
        self.send_message(Endpoint::Client(client), session, Endpoint::Node(node), 0, payload, None);
    }

    pub(super) fn node_transmit(&mut self, node: u32, to: Peer, env: Envelope) {
        let env = match self.fed_intercept(node, &to, env) {
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
                    // A flooded descriptor's address: nobody is there (greeting it, a
                    // few at a time, is what a node does with a descriptor it learnt).
                    _ if addr.0.starts_with(b"flood") => {}
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
        if self.deliver_to_intruder(tag, &env) || self.deliver_to_flooder(tag, &env) {
            return;
        }
        self.honest_answer(tag, &env);
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

    pub(super) fn send_message(
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

    pub(super) fn on_retransmit(&mut self, id: u64, frag: u32) {
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

    pub(super) fn on_fragment(&mut self, id: u64, frag: u32) {
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
}
