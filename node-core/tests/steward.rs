//! Steward specification (`specs/groups.md`), exercised through `NodeCore` with encoded
//! frames and real openmls members: group creation, subscriptions, fan-out of uploads,
//! one commit per epoch from the designated steward, external joins with and without
//! invites, removals, history, and recovery after a restart.

mod common;

use common::*;
use nymstr_mls::{
    DEFAULT_CIPHERSUITE, GroupPolicy, InstallationSigner, MemberIdentity, NymstrProvider, POLICY_EXTENSION_TYPE,
    designated_committer,
};
use nymstr_node_core::NodeConfig;
use nymstr_proto::identity;
use nymstr_proto::limits::GROUP_MLS_BYTES_MAX;
use nymstr_proto::wire::{Body, ErrorCode, GroupAdvert, GroupEntry, GroupId, InviteToken, PublicKey, Sig};
use openmls::prelude::{
    Capabilities, CredentialWithKey, Extension, ExtensionType, Extensions, GroupId as MlsGroupId, LeafNodeIndex,
    LeafNodeParameters, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent, ProposalType,
    RequiredCapabilitiesExtension,
};
use openmls_traits::OpenMlsProvider;
use tls_codec::{DeserializeBytes, Serialize as _};

const GID: GroupId = [0x61; 16];

fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[DEFAULT_CIPHERSUITE]),
        Some(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)]),
        None,
        None,
    )
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build()
}

fn bytes(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().expect("serialize")
}

fn policy_extensions(policy: &GroupPolicy) -> Extensions<openmls::prelude::GroupContext> {
    // An unknown GroupContext extension must be listed in the required capabilities for
    // openmls to accept a GroupContextExtensions proposal carrying it.
    let required = RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)], &[], &[]);
    Extensions::from_vec(vec![Extension::RequiredCapabilities(required), policy.clone().normalized().extension()])
        .expect("extensions")
}

/// Like [`policy_extensions`] but with the policy exactly as given (not normalized).
fn raw_policy_extensions(policy: &GroupPolicy) -> Extensions<openmls::prelude::GroupContext> {
    let required = RequiredCapabilitiesExtension::new(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)], &[], &[]);
    Extensions::from_vec(vec![Extension::RequiredCapabilities(required), policy.extension()]).expect("extensions")
}

/// A group member: an account with one installation (from the common harness) and a real
/// openmls client over the seeded provider.
struct Member {
    user: User,
    provider: NymstrProvider,
    signer: InstallationSigner,
    group: Option<MlsGroup>,
}

impl Member {
    fn new(name: &str, seed: u64) -> Self {
        let user = User::new(name, seed);
        let signer = InstallationSigner(user.installation_key.clone());
        Self { user, provider: NymstrProvider::new([seed as u8; 32]), signer, group: None }
    }

    fn key(&self) -> PublicKey {
        self.signer.public_key()
    }

    fn tag(&self) -> nymstr_node_core::actors::SenderTag {
        self.user.tag
    }

    fn credential(&self) -> CredentialWithKey {
        let id = MemberIdentity { username: self.user.username.clone(), cert: self.user.cert.clone() };
        CredentialWithKey { credential: id.credential(), signature_key: self.key().to_vec().into() }
    }

    fn group(&mut self) -> &mut MlsGroup {
        self.group.as_mut().expect("in a group")
    }

    fn epoch(&self) -> u64 {
        self.group.as_ref().expect("in a group").epoch().as_u64()
    }

    fn leaf_index(&self) -> LeafNodeIndex {
        self.group.as_ref().expect("in a group").own_leaf_index()
    }

    /// Creates the group at epoch 0 with this member as the only admin; returns the
    /// GroupInfo for `GroupCreate`.
    fn create(&mut self, group_id: GroupId, open: bool) -> Vec<u8> {
        let policy = GroupPolicy { admins: vec![self.key()], open };
        self.create_with(group_id, policy_extensions(&policy), capabilities())
    }

    /// Creates the group at epoch 0 with the given context extensions and capabilities.
    fn create_with(
        &mut self,
        group_id: GroupId,
        extensions: Extensions<openmls::prelude::GroupContext>,
        capabilities: Capabilities,
    ) -> Vec<u8> {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(DEFAULT_CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .capabilities(capabilities)
            .with_group_context_extensions(extensions)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            MlsGroupId::from_slice(&group_id),
            self.credential(),
        )
        .expect("create group");
        self.group = Some(group);
        self.group_info()
    }

    /// The current epoch's GroupInfo with the ratchet tree.
    fn group_info(&mut self) -> Vec<u8> {
        let g = self.group.as_ref().expect("in a group");
        bytes(&g.export_group_info(self.provider.crypto(), &self.signer, true).expect("group info"))
    }

    /// Builds an external commit from `group_info` and merges it locally (as if accepted);
    /// returns (commit, new epoch's GroupInfo).
    fn join_external(&mut self, group_info: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.join_external_with_aad(group_info, Vec::new())
    }

    /// As `join_external`, with the commit's authenticated data (an invitation, encoded).
    fn join_external_with_aad(&mut self, group_info: &[u8], aad: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(group_info).expect("group info parses");
        let MlsMessageBodyIn::GroupInfo(vgi) = msg.extract() else { panic!("not a group info") };
        let (mut group, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .with_aad(aad)
            .build_group(&self.provider, vgi, self.credential())
            .expect("build group")
            .leaf_node_parameters(LeafNodeParameters::builder().with_capabilities(capabilities()).build())
            .load_psks(self.provider.storage())
            .expect("psks")
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .expect("build commit")
            .finalize(&self.provider)
            .expect("finalize");
        let commit = bytes(bundle.commit());
        group.merge_pending_commit(&self.provider).expect("merge own external commit");
        self.group = Some(group);
        let gi = self.group_info();
        (commit, gi)
    }

    fn app(&mut self, text: &[u8]) -> Vec<u8> {
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().expect("in a group");
        bytes(&g.create_message(provider, signer, text).expect("create message"))
    }

    /// Stages a commit removing `leaves`; returns it with the GroupInfo of the new epoch.
    /// The commit stays pending until [`Member::merge`] or [`Member::discard`].
    fn commit_remove(&mut self, leaves: &[LeafNodeIndex]) -> (Vec<u8>, Vec<u8>) {
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().expect("in a group");
        let (commit, _, gi) = g.remove_members(provider, signer, leaves).expect("remove");
        (bytes(&commit), bytes(&MlsMessageOut::from(gi.expect("group info"))))
    }

    fn commit_update(&mut self) -> (Vec<u8>, Vec<u8>) {
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().expect("in a group");
        let bundle = g.self_update(provider, signer, LeafNodeParameters::default()).expect("self update");
        let (commit, _, gi) = bundle.into_contents();
        (bytes(&commit), bytes(&MlsMessageOut::from(gi.expect("group info"))))
    }

    fn commit_policy(&mut self, policy: &GroupPolicy) -> (Vec<u8>, Vec<u8>) {
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().expect("in a group");
        let (commit, _, gi) =
            g.update_group_context_extensions(provider, policy_extensions(policy), signer).expect("gce commit");
        (bytes(&commit), bytes(&MlsMessageOut::from(gi.expect("group info"))))
    }

    fn merge(&mut self) {
        let provider = &self.provider;
        self.group.as_mut().expect("in a group").merge_pending_commit(provider).expect("merge");
    }

    fn discard(&mut self) {
        let storage = self.provider.storage();
        self.group.as_mut().expect("in a group").clear_pending_commit(storage).expect("clear");
    }

    /// Processes a log entry sent by someone else; returns the plaintext of an
    /// application message.
    fn receive(&mut self, entry: &GroupEntry) -> Option<Vec<u8>> {
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(&entry.mls).expect("entry parses");
        let provider = &self.provider;
        let g = self.group.as_mut().expect("in a group");
        let processed =
            g.process_message(provider, msg.try_into_protocol_message().expect("protocol")).expect("process");
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Some(m.into_bytes()),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                g.merge_staged_commit(provider, *staged).expect("merge staged");
                None
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                g.store_pending_proposal(provider.storage(), *p).expect("store proposal");
                None
            }
            _ => None,
        }
    }

    /// A bearer token (no invitee).
    fn invite(&self, group_id: GroupId, token_id: u8, expires_at_us: u64) -> InviteToken {
        self.invite_for(group_id, token_id, expires_at_us, None)
    }

    /// A token only the account `invitee` can redeem.
    fn invite_for(
        &self,
        group_id: GroupId,
        token_id: u8,
        expires_at_us: u64,
        invitee: Option<PublicKey>,
    ) -> InviteToken {
        let admin_key = self.key();
        let token_id = [token_id; 16];
        let sig = identity::sign(
            &self.user.installation_key,
            &identity::invite_token_bytes(&group_id, &token_id, expires_at_us, &admin_key, &invitee),
        );
        InviteToken { group_id, token_id, expires_at_us, admin_key, invitee, sig }
    }
}

fn upload_body(mls: Vec<u8>, group_info: Vec<u8>, upload: u8, invite: Option<InviteToken>) -> Body {
    Body::GroupUpload { group_id: GID, upload_id: [upload; 16], mls, group_info, invite }
}

fn reply(out: &[Sent], rid: u64) -> &Body {
    let replies: Vec<_> = out.iter().filter(|s| s.rid() == rid).collect();
    assert_eq!(replies.len(), 1, "exactly one reply to {rid}: {out:#?}");
    replies[0].body()
}

fn pushes(out: &[Sent]) -> Vec<(nymstr_node_core::actors::SenderTag, GroupEntry)> {
    out.iter()
        .filter_map(|s| match s.body() {
            Body::GroupPush { entry, .. } => Some((s.to, entry.clone())),
            _ => None,
        })
        .collect()
}

/// Uploads and returns (ack seq, everything emitted); panics unless acknowledged.
fn accept(h: &mut Harness, from: &Member, body: Body) -> (u64, Vec<Sent>) {
    let (rid, out) = h.request(from.tag(), body);
    match reply(&out, rid) {
        Body::GroupUploadAck { seq, .. } => (*seq, out),
        other => panic!("upload refused: {other:?}"),
    }
}

fn refused(h: &mut Harness, from: &Member, body: Body) -> (ErrorCode, String) {
    let (rid, out) = h.request(from.tag(), body);
    assert!(pushes(&out).is_empty(), "a refused upload pushes nothing: {out:#?}");
    match reply(&out, rid) {
        Body::Error { code, detail } => (*code, detail.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn subscribe(h: &mut Harness, m: &Member, from_seq: u64) -> Vec<Sent> {
    let challenge = h.ask(m.tag(), Body::GroupSubscribe { group_id: GID, member_key: m.key(), from_seq });
    let Body::Challenge { nonce, .. } = challenge.body().clone() else { panic!("expected a challenge: {challenge:?}") };
    let sig = identity::sign(&m.user.installation_key, &identity::group_subscribe_bytes(&GID, &nonce));
    let (rid, out) = h.request(m.tag(), Body::GroupSubscribeProof { group_id: GID, nonce, sig });
    assert!(matches!(reply(&out, rid), Body::GroupSubscribed { .. }), "subscribe failed: {out:#?}");
    out
}

/// Every member except `from` processes the entries pushed to it in `out`.
fn deliver(out: &[Sent], members: &mut [&mut Member]) -> Vec<Option<Vec<u8>>> {
    let mut got = Vec::new();
    for m in members.iter_mut() {
        for (to, entry) in pushes(out) {
            if to == m.tag() {
                got.push(m.receive(&entry));
            }
        }
    }
    got
}

/// alice creates the group (one admin) and hosts it; bob and carol join by external
/// commit (open group) and everybody is subscribed. Epoch 2.
fn group_of_three(h: &mut Harness, open: bool) -> (Member, Member, Member) {
    let mut alice = Member::new("alice", 1);
    let mut bob = Member::new("bob", 2);
    let mut carol = Member::new("carol", 3);
    let gi = alice.create(GID, open);
    let created = h.ask(alice.tag(), Body::GroupCreate { group_id: GID, group_info: gi, advert: None });
    assert_eq!(created.body(), &Body::GroupCreated { group_id: GID, epoch: 0 });
    subscribe(h, &alice, 1);
    for n in 0..2u8 {
        let token = (!open).then(|| alice.invite(GID, 100 + n, T0 + 3_600_000_000));
        let gi = group_info(h, &alice);
        let joiner = if n == 0 { &mut bob } else { &mut carol };
        let aad = token.as_ref().map(nymstr_proto::codec::encode).unwrap_or_default();
        let (commit, new_gi) = joiner.join_external_with_aad(&gi, aad);
        let (_, out) = accept(h, joiner, upload_body(commit, new_gi, 10 + n, token));
        // Members process the join (bob is not subscribed yet: he applies carol's join
        // from alice's view of the log).
        for (_, entry) in pushes(&out) {
            alice.receive(&entry);
            if n == 1 {
                bob.receive(&entry);
            }
        }
    }
    subscribe(h, &bob, u64::MAX);
    subscribe(h, &carol, u64::MAX);
    assert_eq!((alice.epoch(), bob.epoch(), carol.epoch()), (2, 2, 2));
    assert_eq!(h.node.steward().epoch(&GID), Some(2));
    h.flush();
    (alice, bob, carol)
}

fn group_info(h: &mut Harness, asker: &Member) -> Vec<u8> {
    match h.ask(asker.tag(), Body::GroupInfoRequest { group_id: GID }).body().clone() {
        Body::GroupInfoReply { group_info, .. } => group_info,
        other => panic!("expected a group info: {other:?}"),
    }
}

/// Makes bob a second admin (alice commits the new policy). Returns the admins.
fn make_bob_admin(h: &mut Harness, alice: &mut Member, bob: &mut Member, carol: &mut Member) -> Vec<PublicKey> {
    let policy = GroupPolicy { admins: vec![alice.key(), bob.key()], open: true }.normalized();
    let (commit, gi) = alice.commit_policy(&policy);
    let (_, out) = accept(h, alice, upload_body(commit, gi, 30, None));
    alice.merge();
    deliver(&out, &mut [bob, carol]);
    policy.admins
}

// --- happy paths ---

#[test]
fn an_application_message_is_pushed_once_to_every_other_subscribed_member() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = group_of_three(&mut h, true);
    let msg = alice.app(b"hello group");
    let (rid, out) = h.request(alice.tag(), upload_body(msg.clone(), Vec::new(), 1, None));
    let Body::GroupUploadAck { seq, epoch, .. } = reply(&out, rid).clone() else { panic!("{out:#?}") };
    assert_eq!(epoch, 2);
    assert!(out.iter().all(|s| s.durable_after > h.durable_seq()), "ack and pushes wait for the log write");
    let p = pushes(&out);
    let mut to: Vec<_> = p.iter().map(|(t, _)| *t).collect();
    to.sort();
    assert_eq!(to, vec![bob.tag(), carol.tag()], "one push per other member, none back to the sender");
    assert!(p.iter().all(|(_, e)| e.seq == seq && e.mls == msg));
    // The steward forwarded ciphertext the members can read.
    assert_eq!(deliver(&out, &mut [&mut bob, &mut carol]), vec![Some(b"hello group".to_vec()); 2]);
    let pushes_so_far = h.node.group_stats().group_pushes;

    // A retried upload (same id) is acknowledged again at the same seq and not re-pushed.
    let (rid, out) = h.request(alice.tag(), upload_body(msg, Vec::new(), 1, None));
    assert!(matches!(reply(&out, rid), Body::GroupUploadAck { seq: s, .. } if *s == seq));
    assert!(pushes(&out).is_empty());
    assert_eq!(h.node.group_stats().group_pushes, pushes_so_far);
}

#[test]
fn the_stewards_commit_advances_the_epoch_and_a_second_commit_for_that_epoch_is_refused() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = group_of_three(&mut h, true);
    let admins = make_bob_admin(&mut h, &mut alice, &mut bob, &mut carol);
    assert_eq!(h.node.steward().epoch(&GID), Some(3));
    let steward = designated_committer(&GID, 3, 0, &admins).expect("a steward");
    let (first, second) = if steward == alice.key() { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };

    let (c1, gi1) = first.commit_update();
    let (c2, gi2) = second.commit_update();
    let (_, out) = accept(&mut h, first, upload_body(c1, gi1, 40, None));
    first.merge();
    assert_eq!(h.node.steward().epoch(&GID), Some(4));
    assert_eq!(pushes(&out).len(), 2, "the commit reaches the two other members");

    let (code, detail) = refused(&mut h, second, upload_body(c2, gi2, 41, None));
    assert_eq!((code, detail.as_str()), (ErrorCode::WrongEpoch, "current epoch 4"));
    second.discard();
    deliver(&out, &mut [second, &mut carol]);
    assert_eq!(h.node.steward().epoch(&GID), Some(4));
    assert_eq!(h.node.group_stats().group_commits, 4);
}

#[test]
fn fetch_and_subscriptions_survive_a_restart() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = group_of_three(&mut h, true);
    let m1 = alice.app(b"before the crash");
    accept(&mut h, &alice, upload_body(m1, Vec::new(), 1, None));
    h.flush();
    let next_seq = h.node.steward().next_seq(&GID).expect("hosted");
    h.crash_and_restart();
    assert_eq!(h.node.steward().epoch(&GID), Some(2));
    assert_eq!(h.node.steward().next_seq(&GID), Some(next_seq));

    // The log is intact and in order.
    let (rid, out) = h.request(carol.tag(), Body::GroupFetch { group_id: GID, from_seq: 1, max: 64 });
    let Body::GroupEntries { entries, next_seq: n, .. } = reply(&out, rid).clone() else { panic!("{out:#?}") };
    assert_eq!(n, next_seq);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..next_seq).collect::<Vec<_>>());

    // Subscriptions survived: a new message is pushed without re-subscribing.
    let m2 = bob.app(b"after the restart");
    let (_, out) = accept(&mut h, &bob, upload_body(m2, Vec::new(), 2, None));
    let mut to: Vec<_> = pushes(&out).iter().map(|(t, _)| *t).collect();
    to.sort();
    assert_eq!(to, vec![alice.tag(), carol.tag()]);
    assert_eq!(deliver(&out, &mut [&mut alice, &mut carol]), vec![Some(b"after the restart".to_vec()); 2]);

    // The MLS state survived: the steward validates a commit against it.
    let (commit, gi) = alice.commit_update();
    accept(&mut h, &alice, upload_body(commit, gi, 3, None));
    assert_eq!(h.node.steward().epoch(&GID), Some(3));
}

/// Local records are bounded by the record limit, not the 64 KiB frame limit: a group
/// record past 64 KiB (a GroupInfo larger than one frame, as a big group's ratchet tree
/// is) does not stop the node from restarting.
#[test]
fn a_group_record_over_the_frame_limit_survives_a_restart() {
    use nymstr_node_core::actors::steward::GroupRecord;
    use nymstr_node_core::store::{Store, Table};
    use nymstr_proto::limits::FRAME_BYTES_MAX;

    let mut h = Harness::new();
    let (mut alice, _bob, _carol) = group_of_three(&mut h, true);
    let bytes = h.node.store().get(Table::Groups, &GID).unwrap().expect("group record");
    let mut record: GroupRecord = nymstr_proto::codec::decode_record(&bytes).unwrap();
    record.group_info.resize(FRAME_BYTES_MAX + 4096, 0);
    let bytes = nymstr_proto::codec::encode(&record);
    assert!(bytes.len() > FRAME_BYTES_MAX);
    h.node.store_mut().put(Table::Groups, &GID, &bytes).unwrap();
    h.flush();
    h.crash_and_restart();
    assert_eq!(h.node.steward().epoch(&GID), Some(2));
    let (commit, gi) = alice.commit_update();
    accept(&mut h, &alice, upload_body(commit, gi, 3, None));
    assert_eq!(h.node.steward().epoch(&GID), Some(3));
}

#[test]
fn subscribing_sends_the_log_from_the_requested_seq() {
    let mut h = Harness::new();
    let (alice, _bob, carol) = group_of_three(&mut h, true);
    let mut alice = alice;
    let m = alice.app(b"x");
    accept(&mut h, &alice, upload_body(m, Vec::new(), 1, None));
    let out = subscribe(&mut h, &carol, 2);
    let entries: Vec<_> = out
        .iter()
        .filter_map(|s| match s.body() {
            Body::GroupEntries { entries, next_seq, .. } => Some((s.rid(), entries.clone(), *next_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(entries.len(), 1, "{out:#?}");
    let (rid, list, next) = &entries[0];
    assert_eq!(*rid, 0, "entries after a subscription are unsolicited");
    assert_eq!(list.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(*next, 4);
}

#[test]
fn group_info_and_directory_are_served_to_anyone() {
    let mut h = Harness::new();
    let mut alice = Member::new("alice", 1);
    let gi = alice.create(GID, true);
    let mut advert = GroupAdvert {
        group_id: GID,
        name: "rustaceans".into(),
        description: "an open group".into(),
        open: true,
        group_node: Vec::new(),
        issued_at_us: T0,
        admin_key: alice.key(),
        sig: Sig([0; 64]),
        host: nymstr_proto::federation::NodeId([0; 32]),
        host_sig: nymstr_proto::wire::Sig([0; 64]),
    };
    advert.sig = identity::sign(&alice.user.installation_key, &identity::group_advert_bytes(&advert));
    let body = Body::GroupCreate { group_id: GID, group_info: gi.clone(), advert: Some(advert.clone()) };
    assert!(matches!(h.ask(alice.tag(), body.clone()).body(), Body::GroupCreated { .. }));
    // The creator's retry is answered again; anything else under the same id is refused.
    assert!(matches!(h.ask(alice.tag(), body).body(), Body::GroupCreated { .. }));
    let stranger = tag(99);
    assert_eq!(
        h.ask_err(stranger, Body::GroupCreate { group_id: GID, group_info: gi.clone(), advert: None }),
        ErrorCode::GroupExists
    );
    assert_eq!(
        h.ask(stranger, Body::GroupInfoRequest { group_id: GID }).body(),
        &Body::GroupInfoReply { group_id: GID, epoch: 0, open: true, group_info: gi }
    );
    assert_eq!(h.ask(stranger, Body::DirectoryRequest).body(), &Body::Directory { adverts: vec![advert] });
    assert_eq!(h.ask_err(stranger, Body::GroupInfoRequest { group_id: [9; 16] }), ErrorCode::UnknownGroup);
}

// --- commits refused ---

#[test]
fn a_commit_for_a_stale_epoch_is_refused() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = group_of_three(&mut h, true);
    // alice prepares a commit at epoch 2, then the group moves on without it.
    let (stale, stale_gi) = alice.commit_update();
    alice.discard();
    let (c, gi) = alice.commit_update();
    let (_, out) = accept(&mut h, &alice, upload_body(c, gi, 50, None));
    alice.merge();
    deliver(&out, &mut [&mut bob, &mut carol]);
    let (code, detail) = refused(&mut h, &alice, upload_body(stale, stale_gi, 51, None));
    assert_eq!((code, detail.as_str()), (ErrorCode::WrongEpoch, "current epoch 3"));
}

#[test]
fn a_commit_from_a_member_who_is_not_an_admin_is_refused() {
    let mut h = Harness::new();
    let (_alice, mut bob, _carol) = group_of_three(&mut h, true);
    let (c, gi) = bob.commit_update();
    assert_eq!(refused(&mut h, &bob, upload_body(c, gi, 60, None)).0, ErrorCode::NotSteward);
    assert_eq!(h.node.steward().epoch(&GID), Some(2));
}

#[test]
fn an_admin_commits_only_from_its_round_on() {
    let config = NodeConfig::default();
    let timeout = nymstr_mls::COMMIT_ROUND_US;
    let mut h = Harness::with_config(config);
    let (mut alice, mut bob, mut carol) = group_of_three(&mut h, true);
    let epoch_start = h.now;
    let admins = make_bob_admin(&mut h, &mut alice, &mut bob, &mut carol);
    let steward = designated_committer(&GID, 3, 0, &admins).expect("a steward");
    let other = if steward == alice.key() { &mut bob } else { &mut alice };
    let (c, gi) = other.commit_update();
    assert_eq!(refused(&mut h, other, upload_body(c.clone(), gi.clone(), 70, None)).0, ErrorCode::NotSteward);
    // Its first round as designated steward (the order reshuffles every round).
    let round = (1..64).find(|r| designated_committer(&GID, 3, *r, &admins) == Some(other.key())).expect("a turn");
    h.now = epoch_start + round * timeout;
    accept(&mut h, other, upload_body(c, gi, 70, None));
    assert_eq!(h.node.steward().epoch(&GID), Some(4));
}

#[test]
fn a_commit_that_leaves_no_admin_member_is_refused() {
    let mut h = Harness::new();
    let (mut alice, _bob, _carol) = group_of_three(&mut h, true);
    // The only admin hands the group a policy whose admin is not a member.
    let nobody = GroupPolicy { admins: vec![[7; 32]], open: true };
    let (c, gi) = alice.commit_policy(&nobody);
    assert_eq!(refused(&mut h, &alice, upload_body(c, gi, 80, None)).0, ErrorCode::NotAllowed);
    alice.discard();
}

#[test]
fn a_group_policy_whose_admins_are_not_sorted_and_distinct_is_refused() {
    // At creation: a duplicated admin.
    let mut h = Harness::new();
    let mut dave = Member::new("dave", 4);
    let twice = GroupPolicy { admins: vec![dave.key(), dave.key()], open: true };
    let gi = dave.create_with(GID, raw_policy_extensions(&twice), capabilities());
    match h.ask(dave.tag(), Body::GroupCreate { group_id: GID, group_info: gi, advert: None }).body() {
        Body::Error { code, .. } => assert_eq!(*code, ErrorCode::BadMlsMessage),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(h.node.steward().epoch(&GID), None);

    // In a proposal and in a commit: two admins in descending order.
    let mut h = Harness::new();
    let (mut alice, bob, _carol) = group_of_three(&mut h, true);
    let mut admins = vec![alice.key(), bob.key()];
    admins.sort_unstable();
    admins.reverse();
    let unsorted = GroupPolicy { admins, open: true };
    let (provider, signer) = (&alice.provider, &alice.signer);
    let g = alice.group.as_mut().expect("in a group");
    let (proposal, _) =
        g.propose_group_context_extensions(provider, raw_policy_extensions(&unsorted), signer).expect("propose gce");
    g.clear_pending_proposals(provider.storage()).expect("clear");
    assert_eq!(refused(&mut h, &alice, upload_body(bytes(&proposal), Vec::new(), 81, None)).0, ErrorCode::NotAllowed);
    let (provider, signer) = (&alice.provider, &alice.signer);
    let g = alice.group.as_mut().expect("in a group");
    let (commit, _, gi) =
        g.update_group_context_extensions(provider, raw_policy_extensions(&unsorted), signer).expect("gce commit");
    let gi = bytes(&MlsMessageOut::from(gi.expect("group info")));
    assert_eq!(refused(&mut h, &alice, upload_body(bytes(&commit), gi, 82, None)).0, ErrorCode::NotAllowed);
    alice.discard();
    assert_eq!(h.node.steward().epoch(&GID), Some(2));
    // The same admins, sorted, are accepted.
    let (c, gi) = alice.commit_policy(&unsorted);
    accept(&mut h, &alice, upload_body(c, gi, 83, None));
    assert_eq!(h.node.steward().epoch(&GID), Some(3));
}

/// The steward refuses a commit covering its committer's own `SelfRemove` (by reference)
/// with `NotAllowed`. openmls 0.9 refuses to build such a commit (`CannotRemoveSelf`), so
/// this test can only check that the proposal is accepted and that openmls will not let an
/// admin commit it; the steward's check guards against commits built otherwise.
#[test]
fn an_admin_cannot_commit_its_own_self_remove() {
    let mut h = Harness::new();
    let mut alice = Member::new("alice", 1);
    let caps = Capabilities::new(
        None,
        Some(&[DEFAULT_CIPHERSUITE]),
        Some(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)]),
        Some(&[ProposalType::SelfRemove]),
        None,
    );
    let policy = GroupPolicy { admins: vec![alice.key()], open: true };
    let gi = alice.create_with(GID, policy_extensions(&policy), caps);
    let created = h.ask(alice.tag(), Body::GroupCreate { group_id: GID, group_info: gi, advert: None });
    assert_eq!(created.body(), &Body::GroupCreated { group_id: GID, epoch: 0 });
    let (provider, signer) = (&alice.provider, &alice.signer);
    let g = alice.group.as_mut().expect("in a group");
    let leave = g.leave_group_via_self_remove(provider, signer).expect("self remove proposal");
    accept(&mut h, &alice, upload_body(bytes(&leave), Vec::new(), 90, None));
    let (provider, signer) = (&alice.provider, &alice.signer);
    let g = alice.group.as_mut().expect("in a group");
    let err = g.commit_to_pending_proposals(provider, signer).expect_err("openmls builds no self-removing commit");
    assert!(format!("{err:?}").contains("CannotRemoveSelf"), "{err:?}");
    assert_eq!(h.node.steward().epoch(&GID), Some(0));
}

// --- external joins ---

#[test]
fn an_external_join_to_an_invite_only_group_needs_a_valid_unused_unexpired_token() {
    let mut h = Harness::new();
    let (alice, mut bob, _carol) = group_of_three(&mut h, false);
    let gi = group_info(&mut h, &alice);
    let mut dave = Member::new("dave", 4);
    let (commit, new_gi) = dave.join_external(&gi);
    let up = |upload: u8, token: Option<InviteToken>| upload_body(commit.clone(), new_gi.clone(), upload, token);

    assert_eq!(refused(&mut h, &dave, up(90, None)).0, ErrorCode::InviteRequired);
    let mut forged = alice.invite(GID, 1, T0 + 3_600_000_000);
    forged.expires_at_us += 1; // altered after signing
    assert_eq!(refused(&mut h, &dave, up(91, Some(forged))).0, ErrorCode::BadInvite);
    let by_member = bob.invite(GID, 2, T0 + 3_600_000_000); // bob is a member, not an admin
    assert_eq!(refused(&mut h, &dave, up(92, Some(by_member))).0, ErrorCode::BadInvite);
    let other_group = alice.invite([0x62; 16], 3, T0 + 3_600_000_000);
    assert_eq!(refused(&mut h, &dave, up(93, Some(other_group))).0, ErrorCode::BadInvite);
    let expired = alice.invite(GID, 4, T0 - 1);
    assert_eq!(refused(&mut h, &dave, up(94, Some(expired))).0, ErrorCode::InviteExpired);

    // A good token, but not the one signed into the commit: refused.
    let token = alice.invite(GID, 5, T0 + 3_600_000_000);
    assert_eq!(refused(&mut h, &dave, up(95, Some(token.clone()))).0, ErrorCode::BadInvite);
    // The good token, signed into the commit (members check it there), admits dave once.
    let mut dave = Member::new("dave", 4);
    let (commit, new_gi) = dave.join_external_with_aad(&gi, nymstr_proto::codec::encode(&token));
    accept(&mut h, &dave, upload_body(commit, new_gi, 98, Some(token.clone())));
    assert_eq!(h.node.steward().epoch(&GID), Some(3));

    // Replayed by someone else (for the new epoch): refused as used.
    let gi = group_info(&mut h, &alice);
    let mut erin = Member::new("erin", 5);
    let (commit, new_gi) = erin.join_external(&gi);
    let (code, _) = refused(&mut h, &erin, upload_body(commit, new_gi, 96, Some(token.clone())));
    assert_eq!(code, ErrorCode::InviteUsed);
    // Still used after a restart.
    h.flush();
    h.crash_and_restart();
    let gi = group_info(&mut h, &alice);
    let mut erin = Member::new("erin", 5);
    let (commit, new_gi) = erin.join_external(&gi);
    assert_eq!(refused(&mut h, &erin, upload_body(commit, new_gi, 97, Some(token))).0, ErrorCode::InviteUsed);
    let _ = &mut bob;
}

/// Issue 10 item 2: a token bound to an invitee's account key is refused for a joiner
/// certified by another account (whoever saw the token cannot redeem it for its own key),
/// and admits the invitee.
#[test]
fn a_token_bound_to_an_invitee_admits_only_that_account() {
    let mut h = Harness::new();
    let (alice, _bob, _carol) = group_of_three(&mut h, false);
    let gi = group_info(&mut h, &alice);
    let mut dave = Member::new("dave", 4);
    let token = alice.invite_for(GID, 7, T0 + 3_600_000_000, Some(dave.user.cert.account_key));
    let aad = nymstr_proto::codec::encode(&token);
    // Mallory replays dave's token (signed into her own commit, as members require).
    let mut mallory = Member::new("mallory", 6);
    let (commit, new_gi) = mallory.join_external_with_aad(&gi, aad.clone());
    let (code, _) = refused(&mut h, &mallory, upload_body(commit, new_gi, 90, Some(token.clone())));
    assert_eq!(code, ErrorCode::BadInvite);
    // Dave redeems it.
    let (commit, new_gi) = dave.join_external_with_aad(&gi, aad);
    accept(&mut h, &dave, upload_body(commit, new_gi, 91, Some(token)));
    assert_eq!(h.node.steward().epoch(&GID), Some(3));
}

#[test]
fn an_external_join_with_an_uncertified_credential_is_refused() {
    let mut h = Harness::new();
    let (alice, _bob, _carol) = group_of_three(&mut h, true);
    let gi = group_info(&mut h, &alice);
    let mut mallory = Member::new("mallory", 6);
    // A certificate for another installation key: the leaf key is not the certified one.
    mallory.user.cert = Member::new("mallory", 7).user.cert;
    let (commit, new_gi) = mallory.join_external(&gi);
    assert_eq!(refused(&mut h, &mallory, upload_body(commit, new_gi, 98, None)).0, ErrorCode::BadCertificate);
}

// --- membership ---

#[test]
fn a_removed_members_application_message_is_refused() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = group_of_three(&mut h, true);
    let late = bob.app(b"written before the removal");
    let (commit, gi) = alice.commit_remove(&[bob.leaf_index()]);
    let (_, out) = accept(&mut h, &alice, upload_body(commit, gi, 100, None));
    alice.merge();
    let p = pushes(&out);
    assert!(p.iter().any(|(t, _)| *t == bob.tag()), "the removed member hears of its removal: {out:#?}");
    deliver(&out, &mut [&mut bob, &mut carol]);
    assert!(!bob.group().is_active());

    // Its message is from the previous epoch (still accepted for members), but bob is out.
    assert_eq!(refused(&mut h, &bob, upload_body(late, Vec::new(), 101, None)).0, ErrorCode::NotMember);
    let fetch = Body::GroupFetch { group_id: GID, from_seq: 1, max: 10 };
    assert_eq!(h.ask_err(bob.tag(), fetch.clone()), ErrorCode::NotMember);
    // Nor is it pushed anything more.
    let m = carol.app(b"bob is gone");
    let (_, out) = accept(&mut h, &carol, upload_body(m, Vec::new(), 102, None));
    assert_eq!(pushes(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![alice.tag()]);
    // After the next commit its subscription is gone altogether.
    let (commit, gi) = alice.commit_update();
    let (_, out) = accept(&mut h, &alice, upload_body(commit, gi, 103, None));
    assert!(pushes(&out).iter().all(|(t, _)| *t != bob.tag()));
    assert_eq!(h.ask_err(bob.tag(), fetch), ErrorCode::NotSubscribed);
}

#[test]
fn uploads_and_fetches_need_a_subscribed_members_tag() {
    let mut h = Harness::new();
    let (mut alice, _bob, _carol) = group_of_three(&mut h, true);
    let msg = alice.app(b"x");
    // alice's own message, from a tag that never subscribed.
    let mut from_elsewhere = Member::new("alice", 1);
    from_elsewhere.user.tag = tag(200);
    assert_eq!(refused(&mut h, &from_elsewhere, upload_body(msg, Vec::new(), 110, None)).0, ErrorCode::NotSubscribed);
    assert_eq!(h.ask_err(tag(200), Body::GroupFetch { group_id: GID, from_seq: 1, max: 1 }), ErrorCode::NotSubscribed);
    // A non-member cannot subscribe, and a wrong proof is refused.
    let outsider = Member::new("oscar", 8);
    assert_eq!(
        h.ask_err(outsider.tag(), Body::GroupSubscribe { group_id: GID, member_key: outsider.key(), from_seq: 1 }),
        ErrorCode::NotMember
    );
    let challenge = h.ask(tag(201), Body::GroupSubscribe { group_id: GID, member_key: alice.key(), from_seq: 1 });
    let Body::Challenge { nonce, .. } = challenge.body().clone() else { panic!() };
    let wrong = identity::sign(&outsider.user.installation_key, &identity::group_subscribe_bytes(&GID, &nonce));
    assert_eq!(
        h.ask_err(tag(201), Body::GroupSubscribeProof { group_id: GID, nonce, sig: wrong }),
        ErrorCode::BadSignature
    );
}

// --- malformed uploads ---

#[test]
fn oversized_and_garbage_uploads_are_refused() {
    let mut h = Harness::new();
    let (alice, _bob, _carol) = group_of_three(&mut h, true);
    let big = vec![0u8; GROUP_MLS_BYTES_MAX + 1];
    assert_eq!(refused(&mut h, &alice, upload_body(big, Vec::new(), 120, None)).0, ErrorCode::PayloadTooLarge);
    for garbage in [vec![], vec![0xff; 100], vec![0x00, 0x01, 0x00, 0x01, 0xde, 0xad]] {
        let (code, detail) = refused(&mut h, &alice, upload_body(garbage, Vec::new(), 121, None));
        assert_eq!(code, ErrorCode::BadMlsMessage, "{detail}");
    }
    // A GroupInfo is not a group message.
    let gi = group_info(&mut h, &alice);
    assert_eq!(refused(&mut h, &alice, upload_body(gi, Vec::new(), 122, None)).0, ErrorCode::BadMlsMessage);
    let unknown =
        Body::GroupUpload { group_id: [9; 16], upload_id: [1; 16], mls: vec![1], group_info: Vec::new(), invite: None };
    assert_eq!(refused(&mut h, &alice, unknown).0, ErrorCode::UnknownGroup);
}

#[test]
fn a_commit_without_the_new_epochs_group_info_is_refused() {
    let mut h = Harness::new();
    let (mut alice, _bob, _carol) = group_of_three(&mut h, true);
    let old_gi = group_info(&mut h, &alice);
    let (c, _gi) = alice.commit_update();
    assert_eq!(refused(&mut h, &alice, upload_body(c.clone(), Vec::new(), 130, None)).0, ErrorCode::BadMlsMessage);
    assert_eq!(refused(&mut h, &alice, upload_body(c, old_gi, 131, None)).0, ErrorCode::BadMlsMessage);
    assert_eq!(h.node.steward().epoch(&GID), Some(2));
}

// --- history ---

#[test]
fn history_keeps_the_newest_application_messages_and_every_handshake() {
    let mut h = Harness::with_config(NodeConfig { group_history_max: 3, ..NodeConfig::default() });
    let (mut alice, _bob, carol) = group_of_three(&mut h, true);
    // seqs 1, 2 are the joins (handshake); 3..=8 application messages.
    for i in 0..6u8 {
        let m = alice.app(&[i]);
        accept(&mut h, &alice, upload_body(m, Vec::new(), 140 + i, None));
    }
    let (rid, out) = h.request(carol.tag(), Body::GroupFetch { group_id: GID, from_seq: 1, max: 64 });
    let Body::GroupEntries { entries, next_seq, .. } = reply(&out, rid).clone() else { panic!() };
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 6, 7, 8]);
    assert_eq!(next_seq, 9);
    // Asking from a pruned seq: the first entry returned tells the member what is gone.
    let (rid, out) = h.request(carol.tag(), Body::GroupFetch { group_id: GID, from_seq: 3, max: 2 });
    let Body::GroupEntries { entries, .. } = reply(&out, rid).clone() else { panic!() };
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7]);
}

// --- proposals and subscriptions ---

#[test]
fn proposals_follow_the_group_policy() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = group_of_three(&mut h, true);
    // A member who is not an admin may not remove someone else, nor change the policy.
    let carol_leaf = carol.leaf_index();
    let (provider, signer) = (&bob.provider, &bob.signer);
    let g = bob.group.as_mut().expect("in a group");
    let (remove_carol, _) = g.propose_remove_member(provider, signer, carol_leaf).expect("propose remove");
    let open_up = GroupPolicy { admins: vec![signer.public_key()], open: true };
    let (take_over, _) =
        g.propose_group_context_extensions(provider, policy_extensions(&open_up), signer).expect("propose gce");
    g.clear_pending_proposals(provider.storage()).expect("clear");
    assert_eq!(
        refused(&mut h, &bob, upload_body(bytes(&remove_carol), Vec::new(), 150, None)).0,
        ErrorCode::NotAllowed
    );
    assert_eq!(refused(&mut h, &bob, upload_body(bytes(&take_over), Vec::new(), 151, None)).0, ErrorCode::NotAllowed);

    // But anyone may leave: the proposal is logged and pushed, and the admin commits it.
    let (provider, signer) = (&bob.provider, &bob.signer);
    let leave = bob.group.as_mut().expect("in a group").leave_group(provider, signer).expect("leave");
    let (_, out) = accept(&mut h, &bob, upload_body(bytes(&leave), Vec::new(), 152, None));
    assert_eq!(pushes(&out).len(), 2);
    deliver(&out, &mut [&mut alice, &mut carol]);
    let (provider, signer) = (&alice.provider, &alice.signer);
    let (commit, _, gi) =
        alice.group.as_mut().expect("in a group").commit_to_pending_proposals(provider, signer).expect("commit");
    let gi = bytes(&MlsMessageOut::from(gi.expect("group info")));
    let (_, out) = accept(&mut h, &alice, upload_body(bytes(&commit), gi, 153, None));
    alice.merge();
    assert!(pushes(&out).iter().any(|(t, _)| *t == bob.tag()), "the leaver hears the commit");
    deliver(&out, &mut [&mut bob, &mut carol]);
    assert!(!bob.group().is_active());
    assert_eq!(h.node.steward().epoch(&GID), Some(3));
    assert_eq!(h.node.group_stats().group_proposals, 1);
}

#[test]
fn a_newer_subscription_replaces_the_old_tag_and_unsubscribing_stops_pushes() {
    let mut h = Harness::new();
    let (mut alice, mut bob, carol) = group_of_three(&mut h, true);
    let old_tag = bob.tag();
    bob.user.tag = tag(150); // bob reconnected: a fresh tag
    subscribe(&mut h, &bob, u64::MAX);
    let m = alice.app(b"one");
    let (_, out) = accept(&mut h, &alice, upload_body(m, Vec::new(), 160, None));
    let mut to: Vec<_> = pushes(&out).iter().map(|(t, _)| *t).collect();
    to.sort();
    assert_eq!(to, vec![carol.tag(), bob.tag()]);
    assert!(!to.contains(&old_tag));
    assert_eq!(deliver(&out, &mut [&mut bob]), vec![Some(b"one".to_vec())]);

    let (rid, out) = h.request(carol.tag(), Body::GroupUnsubscribe { group_id: GID });
    assert!(out.iter().all(|s| s.rid() != rid), "no reply to an unsubscribe: {out:#?}");
    let m = alice.app(b"two");
    let (_, out) = accept(&mut h, &alice, upload_body(m, Vec::new(), 161, None));
    assert_eq!(pushes(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![bob.tag()]);
    assert_eq!(h.node.steward().subscribed_tags(&GID).len(), 2);
}

#[test]
fn a_flood_of_subscribe_requests_from_a_few_tags_leaves_room_for_members() {
    let config = NodeConfig { challenges_pending_max: 24, ..NodeConfig::default() };
    let per_tag = config.challenges_per_tag_max;
    let mut h = Harness::with_config(config);
    let (alice, bob, _carol) = group_of_three(&mut h, true);
    // Any member key can be named to get a challenge: five tags ask again and again.
    for _ in 0..20 {
        for t in 0..5u8 {
            let reply =
                h.ask(tag(180 + t), Body::GroupSubscribe { group_id: GID, member_key: alice.key(), from_seq: 1 });
            assert!(matches!(reply.body(), Body::Challenge { .. }), "{reply:?}");
        }
    }
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::GroupChallenges), 5 * per_tag);
    // A member still subscribes on its first try.
    subscribe(&mut h, &bob, 1);
}

#[test]
fn a_subscribe_challenge_expires_and_is_swept() {
    let mut h = Harness::new();
    let (alice, _bob, _carol) = group_of_three(&mut h, true);
    let challenge = h.ask(tag(170), Body::GroupSubscribe { group_id: GID, member_key: alice.key(), from_seq: 1 });
    let Body::Challenge { nonce, expires_at_us, .. } = challenge.body().clone() else { panic!() };
    let sig = identity::sign(&alice.user.installation_key, &identity::group_subscribe_bytes(&GID, &nonce));
    h.now = expires_at_us;
    let proof = Body::GroupSubscribeProof { group_id: GID, nonce, sig };
    assert_eq!(h.ask_err(tag(170), proof.clone()), ErrorCode::ChallengeExpired);
    assert_eq!(h.ask_err(tag(170), proof), ErrorCode::UnknownChallenge, "single use");
    // Another challenge, answered from the wrong tag, then left to expire and be swept.
    let challenge = h.ask(tag(171), Body::GroupSubscribe { group_id: GID, member_key: alice.key(), from_seq: 1 });
    let Body::Challenge { nonce, .. } = challenge.body().clone() else { panic!() };
    let sig = identity::sign(&alice.user.installation_key, &identity::group_subscribe_bytes(&GID, &nonce));
    assert_eq!(
        h.ask_err(tag(172), Body::GroupSubscribeProof { group_id: GID, nonce, sig }),
        ErrorCode::UnknownChallenge
    );
    let _ = h.ask(tag(171), Body::GroupSubscribe { group_id: GID, member_key: alice.key(), from_seq: 1 });
    // The wrong tag's answer left the first in place: tag 171 holds two.
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::GroupChallenges), 2);
    let later = h.now + h.config().challenge_ttl_us + h.config().sweep_every_us;
    h.timeout(later);
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::GroupChallenges), 0);
}

/// A subscribe proof from a tag other than the one the challenge was issued to (or naming
/// another group) is refused as unknown and leaves the challenge in place: a proof replayed
/// first from elsewhere neither subscribes that tag nor spends the member's challenge.
#[test]
fn a_subscribe_proof_from_another_tag_leaves_the_challenge_to_its_owner() {
    let mut h = Harness::new();
    let (_alice, bob, _carol) = group_of_three(&mut h, true);
    let challenge = h.ask(bob.tag(), Body::GroupSubscribe { group_id: GID, member_key: bob.key(), from_seq: 1 });
    let Body::Challenge { nonce, .. } = challenge.body().clone() else { panic!("{challenge:?}") };
    let sig = identity::sign(&bob.user.installation_key, &identity::group_subscribe_bytes(&GID, &nonce));
    let proof = Body::GroupSubscribeProof { group_id: GID, nonce, sig };
    assert_eq!(h.ask_err(tag(173), proof.clone()), ErrorCode::UnknownChallenge);
    let other_group = Body::GroupSubscribeProof { group_id: [0x62; 16], nonce, sig };
    assert_eq!(h.ask_err(bob.tag(), other_group), ErrorCode::UnknownChallenge);
    assert!(!h.node.steward().subscribed_tags(&GID).contains(&tag(173)));
    let (rid, out) = h.request(bob.tag(), proof.clone());
    assert!(matches!(reply(&out, rid), Body::GroupSubscribed { .. }), "the owner's proof still counts: {out:#?}");
    assert_eq!(h.ask_err(bob.tag(), proof), ErrorCode::UnknownChallenge, "single use");
}

/// A group with no upload, subscription or fetch for `group_idle_expiry_us` is deleted by
/// the sweep with all its rows (log, index, upload records, subscriptions, MLS state), so
/// junk groups do not hold `groups_max` for good; its id may be created again. A group in
/// use stays, across a restart too.
#[test]
fn an_abandoned_group_is_deleted_with_its_rows_and_an_active_one_stays() {
    use nymstr_node_core::store::{Store, Table};
    const OTHER: GroupId = [0x62; 16];
    let expiry = 600_000_000;
    let mut h =
        Harness::with_config(NodeConfig { group_idle_expiry_us: expiry, groups_max: 2, ..NodeConfig::default() });
    let (mut alice, _bob, _carol) = group_of_three(&mut h, true);
    let m = alice.app(b"last words");
    accept(&mut h, &alice, upload_body(m, Vec::new(), 40, None));
    // dave's group is used: he fetches its log now and then.
    let mut dave = Member::new("dave", 4);
    let gi = dave.create(OTHER, true);
    assert!(matches!(
        h.ask(dave.tag(), Body::GroupCreate { group_id: OTHER, group_info: gi, advert: None }).body(),
        Body::GroupCreated { .. }
    ));
    let c = h.ask(dave.tag(), Body::GroupSubscribe { group_id: OTHER, member_key: dave.key(), from_seq: 1 });
    let Body::Challenge { nonce, .. } = c.body().clone() else { panic!("{c:?}") };
    let sig = identity::sign(&dave.user.installation_key, &identity::group_subscribe_bytes(&OTHER, &nonce));
    let proof = Body::GroupSubscribeProof { group_id: OTHER, nonce, sig };
    assert!(matches!(h.ask(dave.tag(), proof).body(), Body::GroupSubscribed { .. }));
    let rows = |h: &Harness, id: &GroupId| -> usize {
        [Table::GroupLog, Table::GroupSeqs, Table::GroupUploads, Table::GroupSubs, Table::GroupMls, Table::Groups]
            .into_iter()
            .map(|t| h.node.store().scan_prefix(t, id).expect("scan").len())
            .sum()
    };
    assert!(rows(&h, &GID) > 0);
    for _ in 0..8 {
        h.now += expiry / 4;
        let fetch = Body::GroupFetch { group_id: OTHER, from_seq: 1, max: 10 };
        assert!(matches!(h.ask(dave.tag(), fetch).body(), Body::GroupEntries { .. }));
        h.timeout(h.now);
    }
    assert_eq!(h.node.steward().groups_hosted(), 1);
    assert_eq!(h.node.steward().epoch(&GID), None);
    assert_eq!(h.node.steward().epoch(&OTHER), Some(0));
    assert_eq!(h.ask_err(alice.tag(), Body::GroupInfoRequest { group_id: GID }), ErrorCode::UnknownGroup);
    assert_eq!(rows(&h, &GID), 0, "every row of the expired group is gone");
    assert!(h.node.store().scan_prefix(Table::Meta, b"group_purge/").expect("scan").is_empty());
    // Its slot and its id are free again; the group in use survives a restart.
    let mut erin = Member::new("erin", 5);
    let gi = erin.create(GID, true);
    assert!(matches!(
        h.ask(erin.tag(), Body::GroupCreate { group_id: GID, group_info: gi, advert: None }).body(),
        Body::GroupCreated { .. }
    ));
    h.flush();
    h.crash_and_restart();
    assert_eq!(h.node.steward().groups_hosted(), 2);
}

// --- robustness ---

/// Flips one byte at ~100 positions of real MLS messages: the node answers each with
/// exactly one reply and never panics; nothing authenticated can be altered unnoticed,
/// and the untouched commit is accepted afterwards.
#[test]
fn mutated_mls_messages_never_panic_the_node() {
    let mut h = Harness::new();
    let (mut alice, _bob, _carol) = group_of_three(&mut h, true);
    let (commit, gi) = alice.commit_update();
    let app = alice.app(b"payload");
    let mut upload = 0u8;
    for original in [&gi, &app, &commit] {
        let step = (original.len() / 100).max(1);
        // The last 33 bytes of a member's commit are its membership tag, which only members
        // can check (specs/groups.md §9): not mutated here.
        let end = if std::ptr::eq(original, &commit) { original.len() - 33 } else { original.len() };
        for i in (0..end).step_by(step) {
            let mut m = original.clone();
            m[i] ^= 0x5a;
            upload = upload.wrapping_add(1);
            let body = Body::GroupUpload {
                group_id: GID,
                upload_id: [upload, 0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                mls: m.clone(),
                group_info: gi.clone(),
                invite: None,
            };
            let (rid, out) = h.request(alice.tag(), body);
            assert_eq!(out.iter().filter(|s| s.rid() == rid).count(), 1);
            // Only an application message's ciphertext is unauthenticated for the steward
            // (its receivers drop what they cannot decrypt).
            let accepted = matches!(reply(&out, rid), Body::GroupUploadAck { .. });
            assert!(!accepted || std::ptr::eq(original, &app), "mutation at byte {i} of {} accepted", original.len());
            // A mutated GroupInfo offered as a new group.
            let create = Body::GroupCreate { group_id: [0x70; 16], group_info: m, advert: None };
            let (rid, out) = h.request(alice.tag(), create);
            assert!(matches!(reply(&out, rid), Body::Error { .. }));
        }
    }
    assert_eq!(h.node.steward().epoch(&GID), Some(2), "no mutated commit was accepted");
    accept(&mut h, &alice, upload_body(commit, gi, 1, None));
    assert_eq!(h.node.steward().epoch(&GID), Some(3));
}
