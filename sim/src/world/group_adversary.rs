//! The `inject_join` adversary (`specs/sim.md`): a group node whose steward admits an
//! intruder's external commit into an invite-only group it hosts, with a real invitation
//! replayed (one it saw redeemed, bound to another account) or none valid.
//! The intruder is a member core of the adversary's own, spoken to by the node directly
//! (not over the mixnet). Oracles: no honest member merges the join, and the intruder
//! decrypts no group message.

use nymstr_client_core::Identity;
use nymstr_client_core::group::{GroupConfig, GroupCore, GroupEvent, LifetimeMode, MemberKeys};
use nymstr_node_core::actors::{Peer, SenderTag};
use nymstr_proto::codec;
use nymstr_proto::identity;
use nymstr_proto::wire::{Envelope, InviteToken};
use rand_core::Rng;

use crate::groups;
use crate::rng::{self, Stream};

use super::state::{Intruder, World, node_address};

/// The intruder's tag: no client's (clients draw theirs from their transport stream).
const INTRUDER_TAG: SenderTag = SenderTag([0xEE; 16]);

impl World {
    /// At `at`: the intruder joins the first created invite-only group hosted at `node`.
    pub(super) fn on_inject_join(&mut self, node: u32) {
        let Some(group) = self.groups.groups.iter().find(|g| g.node == node && !g.open && g.created).map(|g| g.id)
        else {
            self.violations.push(format!("inject_join: node {node} hosts no invite-only group to attack"));
            return;
        };
        let mut r = rng::stream(self.sc.seed, Stream::GroupMember { index: u32::MAX });
        let id = Identity::generate(&mut r, self.now);
        let mut seed = [0u8; 32];
        r.fill_bytes(&mut seed);
        let keys =
            MemberKeys { installation: id.installation.clone(), cert: id.cert.clone(), username: "intruder".into() };
        let mut core =
            GroupCore::new(keys, seed, GroupConfig { lifetime: LifetimeMode::Unbounded, ..GroupConfig::default() });
        core.skip_join_checks();
        // A real invitation the steward saw redeemed (signed by an admin, bound to its
        // invitee's account key) replayed for the intruder's key; failing that, a token
        // the intruder signed itself, for the group: no admin of it.
        let token = self.groups.last_invite.get(&group).cloned().unwrap_or_else(|| {
            let admin_key = core.member_key();
            let token_id = [0xEE; 16];
            let expires_at_us = self.now + 3_600_000_000;
            let invitee = None;
            let sig = identity::sign(
                &id.installation,
                &identity::invite_token_bytes(&group, &token_id, expires_at_us, &admin_key, &invitee),
            );
            InviteToken { group_id: group, token_id, expires_at_us, admin_key, invitee, sig }
        });
        let now = self.now;
        if core.join(now, node_address(node), group, Some(token), None).is_err() {
            return;
        }
        self.intruder = Some(Intruder { core, tag: INTRUDER_TAG, node, group, decrypted: 0, joined: false });
        self.pump_intruder();
    }

    /// Sends the intruder's frames straight to its node.
    fn pump_intruder(&mut self) {
        let Some(i) = self.intruder.as_mut() else { return };
        let frames: Vec<Vec<u8>> =
            i.core.drain_transmits().into_iter().filter_map(|t| codec::encode_frame(&t.envelope).ok()).collect();
        let (node, tag) = (i.node, i.tag);
        for bytes in frames {
            let now = self.now;
            if let Some(core) = self.nodes[node as usize].core.as_mut() {
                core.handle_frame(now, Peer::Tag(tag), &bytes);
            }
            self.after_node_step(node);
        }
    }

    /// A node frame for the intruder's tag: handled here, not over the mixnet. False if
    /// the tag is not the intruder's.
    pub(super) fn deliver_to_intruder(&mut self, to: SenderTag, env: &Envelope) -> bool {
        let now = self.now;
        let Some(i) = self.intruder.as_mut() else { return false };
        if i.tag != to {
            return false;
        }
        i.core.handle_envelope(now, &node_address(i.node), env.clone());
        while let Some(ev) = i.core.poll_event() {
            match ev {
                GroupEvent::Message { .. } => i.decrypted += 1,
                GroupEvent::Joined { .. } => i.joined = true,
                _ => {}
            }
        }
        self.pump_intruder();
        true
    }

    /// The oracle: no honest member lists the intruder, and it decrypted nothing.
    pub(super) fn judge_intruder(&mut self) -> u64 {
        let Some(i) = self.intruder.as_ref() else { return 0 };
        let key = i.core.member_key();
        let mut checks = 1;
        if !i.joined {
            self.violations.push(format!("inject_join: node {} never admitted the intruder", i.node));
        }
        if i.decrypted > 0 {
            self.violations.push(format!(
                "group {}: the intruder its node admitted decrypted {} group message(s)",
                groups::hex8(&i.group),
                i.decrypted
            ));
        }
        for (c, host) in self.clients.iter().enumerate() {
            let Some(g) = host.group.as_ref() else { continue };
            checks += 1;
            if g.members(&i.group).iter().any(|m| m.key == key) {
                self.violations
                    .push(format!("group {}: client {c} merged the join its node injected", groups::hex8(&i.group)));
            }
        }
        checks
    }
}
