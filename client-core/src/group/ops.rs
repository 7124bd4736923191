//! The member's operations: create, invite, join, send, rename/describe (`SetMeta`),
//! remove, leave, promote, demote. Messages are queued and proposals recorded as intents;
//! `pump` sends them when they may go.

use nymstr_mls::{self as nmls, GroupPolicy};
use nymstr_proto::identity;
use nymstr_proto::limits::{GROUP_DESCRIPTION_BYTES_MAX, GROUP_NAME_BYTES_MAX};
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{Body, GroupAdvert, GroupId, InviteToken, MsgId, PublicKey, Sig};
use openmls::prelude::{MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup};
use openmls_traits::OpenMlsProvider;
use rand_core::Rng;

use super::GroupCore;
use super::config::LifetimeMode;
use super::events::{GroupError, GroupEvent};
use super::mls_util::{err, leaf_capabilities, mls_bytes, mls_id, required_extensions};
use super::roster::{member_index_of, policy_of, roster_of};
use super::state::{Group, GroupMeta, Intent, IntentState, OutMsg, Phase, Step};
use crate::sync::{self, BloomFilter, SyncBody, SyncMessage};

impl GroupCore {
    /// Creates a group hosted at `group_node`, with us as its only member and admin.
    /// `public` sends a signed advert (name, description, open) for the node's directory.
    pub fn create(
        &mut self,
        now: TimeUs,
        name: &str,
        description: &str,
        public: bool,
        open: bool,
        group_node: Vec<u8>,
    ) -> Result<GroupId, GroupError> {
        check_meta(name, description)?;
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        let me = self.member_key();
        let policy = GroupPolicy { admins: vec![me], open }.normalized();
        let cs = self.config.ciphersuite;
        let lifetime = match self.config.lifetime {
            LifetimeMode::WallClock { valid_for_s } => nmls::lifetime_from(now / 1_000_000, valid_for_s),
            LifetimeMode::Unbounded => nmls::unbounded_lifetime(),
        };
        let mls = MlsGroup::builder()
            .with_group_id(mls_id(&id))
            .ciphersuite(cs)
            .use_ratchet_tree_extension(true)
            .with_wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(self.config.max_past_epochs)
            .sender_ratchet_configuration(self.ratchet_config())
            .lifetime(lifetime)
            .with_group_context_extensions(required_extensions(&policy)?)
            .with_capabilities(leaf_capabilities(cs))
            .build(&self.provider, &self.signer, self.credential())
            .map_err(err)?;
        let group_info = mls_bytes(&mls.export_group_info(self.provider.crypto(), &self.signer, true).map_err(err)?)?;
        let advert = public.then(|| {
            let mut a = GroupAdvert {
                group_id: id,
                name: name.to_string(),
                description: description.to_string(),
                open,
                group_node: group_node.clone(),
                issued_at_us: now,
                admin_key: me,
                sig: Sig([0; 64]),
                host: nymstr_proto::federation::NodeId([0; 32]),
                host_sig: nymstr_proto::wire::Sig([0; 64]),
            };
            a.sig = identity::sign(&self.keys.installation, &identity::group_advert_bytes(&a));
            a
        });
        let meta = GroupMeta { name: name.to_string(), description: description.to_string(), version: 1 };
        let mut g =
            Group::new(id, group_node, Phase::Creating { group_info: group_info.clone(), advert: advert.clone() });
        g.rec.meta = meta;
        g.roster = roster_of(&mls, &mut self.identities);
        g.mls = Some(mls);
        self.groups.insert(id, g);
        self.request(now, id, Step::Create, Body::GroupCreate { group_id: id, group_info, advert });
        Ok(id)
    }

    /// An invitation to `group` (admins only), valid for `invite_ttl_us`, for the account
    /// `invitee` (its account key, as the host verified it: only that account's
    /// installations can redeem it), or `None` for a bearer code anyone holding it can
    /// redeem once. The host sends it to the invitee inside a sealed DM, with the group
    /// node and current meta.
    pub fn invite(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        invitee: Option<PublicKey>,
    ) -> Result<InviteToken, GroupError> {
        if !self.is_admin(group) {
            return Err(if self.member_mls(group).is_some() { GroupError::NotAdmin } else { GroupError::NotMember });
        }
        let mut token_id = [0u8; 16];
        self.rng.fill_bytes(&mut token_id);
        let expires_at_us = now.saturating_add(self.config.invite_ttl_us);
        let admin_key = self.member_key();
        let sig = identity::sign(
            &self.keys.installation,
            &identity::invite_token_bytes(group, &token_id, expires_at_us, &admin_key, &invitee),
        );
        Ok(InviteToken { group_id: *group, token_id, expires_at_us, admin_key, invitee, sig })
    }

    /// Joins `group_id` hosted at `group_node` by external commit: with `invite` for an
    /// invite-only group. `meta` is where the name and description start (from the DM
    /// invite or the directory advert) until a `SetMeta` arrives.
    pub fn join(
        &mut self,
        now: TimeUs,
        group_node: Vec<u8>,
        group_id: GroupId,
        invite: Option<InviteToken>,
        meta: Option<GroupMeta>,
    ) -> Result<(), GroupError> {
        if self.groups.contains_key(&group_id) {
            return Err(GroupError::AlreadyMember);
        }
        let backoff_us = self.config.retry_after_us;
        let mut g = Group::new(group_id, group_node, Phase::Joining { invite, backoff_us, retry_at_us: None });
        if let Some(meta) = meta {
            g.rec.meta = meta;
        }
        self.groups.insert(group_id, g);
        self.request(now, group_id, Step::Info, Body::GroupInfoRequest { group_id });
        Ok(())
    }

    /// Sends a text message; returns its id. It reaches the log once no proposal is
    /// pending (MLS forbids application messages between a proposal and its commit).
    pub fn send(&mut self, now: TimeUs, group: &GroupId, text: &str) -> Result<MsgId, GroupError> {
        if text.len() > sync::TEXT_BYTES_MAX {
            return Err(GroupError::TooLarge { what: "text", len: text.len(), max: sync::TEXT_BYTES_MAX });
        }
        self.send_body(now, group, SyncBody::Text { text: text.to_string() })
    }

    /// Renames the group (admins only): a `SetMeta` with the next version.
    pub fn rename(&mut self, now: TimeUs, group: &GroupId, name: &str) -> Result<MsgId, GroupError> {
        let meta = self.meta(group).cloned().ok_or(GroupError::UnknownGroup)?;
        self.set_meta(now, group, name, &meta.description)
    }

    /// Changes the description (admins only).
    pub fn describe(&mut self, now: TimeUs, group: &GroupId, description: &str) -> Result<MsgId, GroupError> {
        let meta = self.meta(group).cloned().ok_or(GroupError::UnknownGroup)?;
        self.set_meta(now, group, &meta.name, description)
    }

    pub(super) fn set_meta(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        name: &str,
        description: &str,
    ) -> Result<MsgId, GroupError> {
        check_meta(name, description)?;
        if !self.is_admin(group) {
            return Err(if self.member_mls(group).is_some() { GroupError::NotAdmin } else { GroupError::NotMember });
        }
        let version = self.groups[group].rec.meta.version + 1;
        self.send_body(
            now,
            group,
            SyncBody::SetMeta { name: name.to_string(), description: description.to_string(), version },
        )
    }

    /// Proposes removing the member with `member_key` (admins only).
    pub fn remove(&mut self, now: TimeUs, group: &GroupId, member_key: &PublicKey) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        if !policy_of(mls).is_admin(&self.member_key()) {
            return Err(GroupError::NotAdmin);
        }
        if member_index_of(mls, member_key).is_none() {
            return Err(GroupError::UnknownMember);
        }
        if *member_key == self.member_key() {
            return self.leave(now, group);
        }
        if policy_of(mls).is_admin(member_key) {
            self.add_intent(now, group, Intent::Demote(*member_key));
        }
        self.add_intent(now, group, Intent::Remove(*member_key));
        Ok(())
    }

    /// Proposes our own removal; an admin commits it (`Removed` follows).
    pub fn leave(&mut self, now: TimeUs, group: &GroupId) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        let policy = policy_of(mls);
        let me = self.member_key();
        let others = mls.members().count() > 1;
        if others && policy.is_admin(&me) && policy.admins.iter().all(|a| *a == me) {
            return Err(GroupError::LastAdmin);
        }
        if !others {
            // Alone: nobody could commit our removal. Forget the group.
            self.drop_group(group, true);
            self.events.push_back(GroupEvent::Removed { group: *group });
            return Ok(());
        }
        if policy.is_admin(&me) {
            self.add_intent(now, group, Intent::Demote(me));
        }
        self.add_intent(now, group, Intent::Leave);
        Ok(())
    }

    /// Proposes making `member_key` an admin (admins only).
    pub fn promote(&mut self, now: TimeUs, group: &GroupId, member_key: &PublicKey) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        if !policy_of(mls).is_admin(&self.member_key()) {
            return Err(GroupError::NotAdmin);
        }
        if member_index_of(mls, member_key).is_none() {
            return Err(GroupError::UnknownMember);
        }
        self.add_intent(now, group, Intent::Promote(*member_key));
        Ok(())
    }

    /// Proposes dropping `member_key` from the admins (admins only; not the last one).
    pub fn demote(&mut self, now: TimeUs, group: &GroupId, member_key: &PublicKey) -> Result<(), GroupError> {
        let mls = self.member_mls(group).ok_or(GroupError::NotMember)?;
        let policy = policy_of(mls);
        if !policy.is_admin(&self.member_key()) {
            return Err(GroupError::NotAdmin);
        }
        if !policy.is_admin(member_key) {
            return Err(GroupError::UnknownMember);
        }
        if policy.admins.len() == 1 {
            return Err(GroupError::LastAdmin);
        }
        self.add_intent(now, group, Intent::Demote(*member_key));
        Ok(())
    }

    /// For tests of receivers: queues `message` as is (any sender, id or history).
    #[doc(hidden)]
    pub fn send_sync_unchecked(
        &mut self,
        now: TimeUs,
        group: &GroupId,
        message: SyncMessage,
    ) -> Result<(), GroupError> {
        let g = self.groups.get_mut(group).ok_or(GroupError::UnknownGroup)?;
        g.rec.sent += 1;
        let order = g.rec.sent;
        g.rec.outbox.push_back(OutMsg { msg_id: message.msg_id, plaintext: message.encode(), upload_id: None, order });
        self.pump(now, group);
        Ok(())
    }

    pub(super) fn send_body(&mut self, now: TimeUs, group: &GroupId, body: SyncBody) -> Result<MsgId, GroupError> {
        let me = self.member_key();
        let outbox_max = self.config.outbox_max;
        let mut msg_id = [0u8; 16];
        self.rng.fill_bytes(&mut msg_id);
        let g = self.groups.get_mut(group).ok_or(GroupError::UnknownGroup)?;
        if !matches!(g.rec.phase, Phase::Member) {
            return Err(GroupError::NotMember);
        }
        if g.rec.outbox.len() >= outbox_max {
            return Err(GroupError::Backlog);
        }
        g.rec.lamport += 1;
        let message = SyncMessage {
            version: sync::SYNC_VERSION,
            lamport: g.rec.lamport,
            sender: me,
            msg_id,
            history: g.rec.history.iter().copied().collect(),
            bloom: BloomFilter::from_ids(g.rec.window.iter()).into_bytes(),
            body,
        };
        g.rec.sent += 1;
        let order = g.rec.sent;
        g.rec.outbox.push_back(OutMsg { msg_id, plaintext: message.encode(), upload_id: None, order });
        self.stats.app_messages += 1;
        self.pump(now, group);
        Ok(msg_id)
    }

    pub(super) fn add_intent(&mut self, now: TimeUs, group: &GroupId, intent: Intent) {
        let g = self.groups.get_mut(group).expect("checked by caller");
        if !g.rec.intents.iter().any(|i| i.intent == intent) {
            g.rec.intents.push(IntentState { intent, proposed_epoch: None });
        }
        self.pump(now, group);
    }
}

pub(super) fn check_meta(name: &str, description: &str) -> Result<(), GroupError> {
    if name.len() > GROUP_NAME_BYTES_MAX {
        return Err(GroupError::TooLarge { what: "name", len: name.len(), max: GROUP_NAME_BYTES_MAX });
    }
    if description.len() > GROUP_DESCRIPTION_BYTES_MAX {
        return Err(GroupError::TooLarge {
            what: "description",
            len: description.len(),
            max: GROUP_DESCRIPTION_BYTES_MAX,
        });
    }
    Ok(())
}
