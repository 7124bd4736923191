//! Hosting the simulated federation: node-to-node frames over the mixnet, partitions,
//! the adversaries' actions and the alarms that detect them, clients' transparency
//! lookups, and the federation's part of the report.

use std::collections::{BTreeMap, BTreeSet};

use nymstr_node_core::actors::{Address, Peer};
use nymstr_node_core::store::MemStore;
use nymstr_proto::codec;
use nymstr_proto::federation::{NodeId, Roles, descriptor};
use nymstr_proto::identity;
use nymstr_proto::limits::GOSSIP_ITEMS_MAX;
use nymstr_proto::wire::{Body, Envelope, GossipItem, GroupAdvert, Sig};
use rand_core::Rng;

use crate::fed_model::{Attack, FedSim, Frozen, Hijack, Split};
use crate::mixnet::Us;
use crate::report;
use crate::rng;
use crate::scenario::{AdversaryKind, HIJACK_FLOOD_DESCRIPTORS};

use super::state::{DmRecord, Endpoint, Ev, NodeHost, Payload, World, node_address};

impl World {
    pub(super) fn on_partition_start(&mut self, index: u32) {
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

    pub(super) fn on_partition_end(&mut self) {
        if let Some(fed) = self.fed.as_mut() {
            fed.partition = None;
        }
    }

    /// A DM to or from a user of a node that misbehaves: the oracles excuse its fate.
    pub(super) fn involves_adversary(&self, d: &DmRecord) -> bool {
        self.fed.as_ref().is_some_and(|f| {
            f.is_adversary(self.clients[d.sender as usize].node)
                || f.is_adversary(self.clients[d.recipient as usize].node)
        })
    }

    /// Registered long enough ago that its entry is in its node's published directory
    /// (two epochs and the serving grace).
    pub(super) fn settled(&self, client: u32, epoch_us: Us) -> bool {
        let c = &self.clients[client as usize];
        c.registered && self.now >= c.registered_at + 2 * epoch_us + 15_000_000
    }

    /// A settled user homed on another discovery node (not a substitution victim).
    pub(super) fn pick_remote(&mut self, client: u32, epoch_us: Us) -> Option<u32> {
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
    pub(super) fn qualified(&self, client: u32) -> String {
        let c = &self.clients[client as usize];
        let id = self.fed.as_ref().and_then(|f| f.ids.get(&c.node)).map(NodeId::to_hex).unwrap_or_default();
        format!("{}@{id}", c.username)
    }

    pub(super) fn schedule_fed_lookup(&mut self, client: u32) {
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
    pub(super) fn on_self_check(&mut self, client: u32) {
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
    pub(super) fn on_fed_lookup_tick(&mut self, client: u32) {
        self.schedule_fed_lookup(client);
        let Some(epoch) = self.fed.as_ref().map(|f| f.scenario.epoch.us()) else { return };
        if !self.clients[client as usize].online || !self.settled(client, epoch) {
            return;
        }
        let Some(target) = self.pick_remote(client, epoch) else { return };
        self.fed_lookup(client, target);
    }

    /// A verified lookup: did the client just accept a key that is not the user's?
    pub(super) fn on_looked_up(&mut self, client: u32, username: &str) {
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
    pub(super) fn on_transparency(&mut self, client: u32, username: String, outcome: &'static str, detail: String) {
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
    pub(super) fn notice_forks(&mut self, node: u32) {
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

    pub(super) fn on_adversary_start(&mut self, index: u32) {
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
            AdversaryKind::SplitView => {
                // Its first settled user; the substitute (the attacker's key under the
                // user's name) goes under a second key in every tree sealed from now on.
                // A sparse tree places a leaf by its key, so that second key is the best
                // it can do: the user's own position holds the real leaf.
                let epoch = fed.scenario.epoch.us();
                let list = &self.nodes[node as usize].registered;
                let Some(victim) = list.iter().copied().find(|c| self.settled(*c, epoch)) else { return };
                let fed = self.fed.as_mut().expect("federation");
                let Some(core) = self.nodes[node as usize].core.as_mut() else { return };
                let Ok(username) = identity::normalize_username(&self.clients[victim as usize].username) else {
                    return;
                };
                let Some(real) = core.federation().and_then(|f| f.log().newest_entry(&username)).cloned() else {
                    return;
                };
                let Some(first) = real.installations.first() else { return };
                let mut entry = real.clone();
                entry.account_key = fed.attacker.verifying_key().to_bytes();
                entry.installations = vec![fed.attacker_cert(first)];
                let key = format!("{username}\u{0}");
                if let Some(f) = core.federation_mut() {
                    f.log_mut().hide_leaf(key.clone(), entry.clone());
                }
                fed.attacks[index as usize].split = Some(Split { victim, username, key, entry });
            }
            AdversaryKind::AdvertHijack => {
                // The honest host lists a public group: the advert its admin signed and it
                // vouched for, gossiped to its peers as a node does at creation.
                let host = (node + 1) % self.sc.nodes.discovery;
                let (Some(hk), Some(hid)) = (fed.keys.get(&host).cloned(), fed.ids.get(&host).copied()) else {
                    return;
                };
                let admin = identity::generate_signing_key(&mut self.fed_rng);
                let mut group_id = [0u8; 16];
                self.fed_rng.fill_bytes(&mut group_id);
                let real = hosted_advert(group_id, &admin, node_address(host), now, (&hk, hid));
                let epoch = fed.scenario.epoch.us();
                fed.attacks[index as usize].hijack = Some(Hijack { group_id, host, flood: BTreeSet::new() });
                self.gossip_from(host, vec![GossipItem::Advert(real)]);
                self.schedule(now + epoch, Ev::AdvertHijack { index });
            }
            AdversaryKind::Equivocate | AdversaryKind::DropForwarded | AdversaryKind::InjectJoin => {}
            // Flooders are users, not nodes; a federated scenario refuses them (`parse`).
            AdversaryKind::FloodRegister
            | AdversaryKind::FloodSubscribe
            | AdversaryKind::FloodQueue
            | AdversaryKind::FloodGroups => {}
        }
    }

    /// advert_hijack, an epoch after the real advert went out: the flood of fresh
    /// descriptors, then the hijack adverts, to every peer of the attacker.
    pub(super) fn on_advert_hijack(&mut self, index: u32) {
        let now = self.now;
        let Some(fed) = self.fed.as_mut() else { return };
        let node = fed.attacks[index as usize].spec.node;
        let Some(h) = fed.attacks[index as usize].hijack.clone() else { return };
        let (Some(key), Some(id), Some(host_id)) =
            (fed.keys.get(&node).cloned(), fed.ids.get(&node).copied(), fed.ids.get(&h.host).copied())
        else {
            return;
        };
        let roles = Roles { discovery: true, group: false };
        let mut items = Vec::new();
        let mut flood = BTreeSet::new();
        for n in 0..HIJACK_FLOOD_DESCRIPTORS {
            let k = identity::generate_signing_key(&mut self.fed_rng);
            let d = descriptor::sign(&k, format!("flood{n}").into_bytes(), roles, "tofu".into(), 30_000_000, now);
            flood.insert(d.node_id);
            items.push(GossipItem::Descriptor(d));
        }
        let mallory = fed.attacker.clone();
        let mine = node_address(node);
        let mut claim = hosted_advert(h.group_id, &mallory, mine.clone(), now, (&key, id));
        claim.host = host_id;
        for a in [
            hosted_advert(h.group_id, &mallory, mine.clone(), u64::MAX, (&key, id)),
            hosted_advert(h.group_id, &mallory, mine.clone(), now + 1, (&key, id)),
            claim,
        ] {
            items.push(GossipItem::Advert(a));
        }
        let attack = &mut fed.attacks[index as usize];
        attack.acted_at = Some(now);
        if let Some(hj) = attack.hijack.as_mut() {
            hj.flood = flood;
        }
        self.gossip_from(node, items);
    }

    /// `items` as `Gossip` from `node` to each of its peers (in messages of at most
    /// `GOSSIP_ITEMS_MAX`), as its own outputs.
    fn gossip_from(&mut self, node: u32, items: Vec<GossipItem>) {
        let Some(fed) = self.fed.as_ref() else { return };
        let peers: Vec<u32> = self.nodes[node as usize]
            .core
            .as_ref()
            .and_then(|c| c.federation())
            .map(|f| f.peers().filter_map(|(id, _)| fed.node_of_id(id)).collect())
            .unwrap_or_default();
        for p in peers {
            for chunk in items.chunks(GOSSIP_ITEMS_MAX) {
                let env = Envelope { request_id: 0, body: Body::Gossip { items: chunk.to_vec() } };
                self.node_to_node(node, p, env);
            }
        }
    }

    /// What a misbehaving node changes in its own outputs: lookup answers.
    pub(super) fn fed_intercept(&mut self, node: u32, to: &Peer, mut env: Envelope) -> Option<Envelope> {
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
        if let Some(a) = fed.active(node, &[AdversaryKind::SplitView])
            && let Some(split) = fed.attacks[a].split.clone()
            && proof.entry.as_ref().is_some_and(|e| e.username == split.username)
            && *to != Peer::Tag(self.clients[split.victim as usize].tag)
        {
            // Everyone but the user is shown the substitute, with the proof of its leaf,
            // under the one head the witnesses cosigned (once that head holds it).
            let Some(core) = self.nodes[node as usize].core.as_ref() else { return Some(env) };
            let Some(f) = core.federation() else { return Some(env) };
            let cfg = &self.sc.nodes.core.federation;
            let quorum = fed.node_config(0).serve_quorum;
            let Some((head, entries, _)) = f.log().served_view(now, quorum, cfg.serve_grace_us) else {
                return Some(env);
            };
            let tree =
                nymstr_node_core::transparency_log::tree_with(entries, Some(&(split.key.clone(), split.entry.clone())));
            if head.head == proof.head.head && tree.root() == head.head.dir_root {
                proof.entry = Some(split.entry.clone());
                proof.dir_proof = tree.prove(split.key.as_bytes());
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
    pub(super) fn node_to_node(&mut self, from: u32, to: u32, env: Envelope) {
        if self.fed.as_ref().is_some_and(|f| f.partitioned(from, to)) {
            self.metrics.partition_drops += 1;
            return;
        }
        let bytes = codec::encode_frame(&env).expect("node frames fit the limit");
        let life = self.nodes[from as usize].incarnation;
        self.send_message(Endpoint::Node(from), life, Endpoint::Node(to), 0, Payload::NodeFrame { from, bytes }, None);
    }

    pub(super) fn node_frame_arrives(&mut self, from: u32, to: u32, bytes: Vec<u8>) {
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

    pub(super) fn federation_report(&self) -> Option<report::FederationReport> {
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
}

/// A public group's advert: signed by `admin`, then vouched for by `host` (its node key and id).
fn hosted_advert(
    group_id: [u8; 16],
    admin: &ed25519_dalek::SigningKey,
    group_node: Vec<u8>,
    issued_at_us: u64,
    host: (&ed25519_dalek::SigningKey, NodeId),
) -> GroupAdvert {
    let mut a = GroupAdvert {
        group_id,
        name: "hijacked".into(),
        description: "a public group".into(),
        open: true,
        group_node,
        issued_at_us,
        admin_key: admin.verifying_key().to_bytes(),
        sig: Sig([0; 64]),
        host: host.1,
        host_sig: Sig([0; 64]),
    };
    a.sig = identity::sign(admin, &identity::group_advert_bytes(&a));
    a.host_sig = identity::sign(host.0, &identity::group_advert_host_bytes(&a));
    a
}

fn fx_store(n: &NodeHost) -> &MemStore {
    n.core.as_ref().expect("checked up").store()
}
