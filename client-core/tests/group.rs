//! `GroupCore` members against a real in-process `NodeCore` (its steward), through a
//! pump that plays the transport and the node's host (as in `client_node.rs`): member
//! transmits are encoded and fed to the node from the member's sender tag; node outputs
//! wait until the store is flushed past their `durable_after`, then go to the member
//! holding that tag. A filter on both directions lets a test lose, withhold or tamper
//! with frames.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use nymstr_client_core::Identity;
use nymstr_client_core::group::{GroupConfig, GroupCore, GroupEvent, GroupMeta, LifetimeMode, MemberKeys};
use nymstr_client_core::sync::{BloomFilter, SYNC_VERSION, SyncBody, SyncMessage};
use nymstr_mls::designated_committer;
use nymstr_node_core::actors::SenderTag;
use nymstr_node_core::store::{MemStore, Store};
use nymstr_node_core::{NodeConfig, NodeCore, Output, Peer};
use nymstr_proto::codec::{decode_frame, encode_frame};
use nymstr_proto::wire::{Body, Envelope, ErrorCode, GroupEntry, GroupId, MsgId, PublicKey};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const T0: u64 = 1_700_000_000_000_000;
const NODE: &[u8] = b"group-node-1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToNode,
    ToMember,
}

type Filter = Box<dyn FnMut(Dir, SenderTag, Envelope) -> Vec<Envelope>>;

struct Member {
    tag: SenderTag,
    core: GroupCore,
    events: Vec<GroupEvent>,
}

struct Net {
    node: NodeCore<MemStore>,
    now: u64,
    members: Vec<Member>,
    held: Vec<(SenderTag, Envelope, u64)>,
    filter: Filter,
    /// Every frame a member sent, in order (determinism checks).
    sent: Vec<(SenderTag, Vec<u8>)>,
}

fn config() -> GroupConfig {
    GroupConfig { lifetime: LifetimeMode::Unbounded, ..GroupConfig::default() }
}

fn keys(name: &str, seed: u64) -> MemberKeys {
    let id = Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed), T0);
    MemberKeys { installation: id.installation, cert: id.cert, username: name.to_string() }
}

fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

impl Net {
    fn new() -> Self {
        Self::with_config(NodeConfig::default())
    }

    fn with_config(config: NodeConfig) -> Self {
        let node = NodeCore::start(T0, MemStore::new(), ChaCha20Rng::seed_from_u64(1), config).unwrap();
        Self {
            node,
            now: T0,
            members: Vec::new(),
            held: Vec::new(),
            filter: Box::new(|_, _, e| vec![e]),
            sent: Vec::new(),
        }
    }

    /// Adds a member speaking from tag `[n; 16]`; returns its index.
    fn add(&mut self, n: u8, name: &str) -> usize {
        let core = GroupCore::new(keys(name, 100 + u64::from(n)), seed(n), config());
        self.members.push(Member { tag: SenderTag([n; 16]), core, events: Vec::new() });
        self.members.len() - 1
    }

    fn core(&mut self, i: usize) -> &mut GroupCore {
        &mut self.members[i].core
    }

    fn key(&self, i: usize) -> PublicKey {
        self.members[i].core.member_key()
    }

    fn set_filter(&mut self, f: impl FnMut(Dir, SenderTag, Envelope) -> Vec<Envelope> + 'static) {
        self.filter = Box::new(f);
    }

    fn clear_filter(&mut self) {
        self.filter = Box::new(|_, _, e| vec![e]);
    }

    fn pump(&mut self) {
        for _round in 0..10_000 {
            let mut moved = false;
            for i in 0..self.members.len() {
                let tag = self.members[i].tag;
                for t in self.members[i].core.drain_transmits() {
                    moved = true;
                    assert_eq!(t.group_node, NODE);
                    for env in (self.filter)(Dir::ToNode, tag, t.envelope) {
                        let bytes = encode_frame(&env).expect("member frames encode");
                        self.sent.push((tag, bytes.clone()));
                        self.node.handle_frame(self.now, Peer::Tag(tag), &bytes);
                    }
                }
            }
            for Output::Send { to, envelope, durable_after } in self.node.drain_outputs().collect::<Vec<_>>() {
                moved = true;
                let Peer::Tag(to) = to else { panic!("the node answered a member at an address") };
                self.held.push((to, envelope, durable_after));
            }
            if self.held.iter().any(|(_, _, d)| *d > self.node.store().durable_seq()) {
                self.node.store_mut().flush().unwrap();
            }
            let durable = self.node.store().durable_seq();
            let (ready, waiting): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(_, _, d)| *d <= durable);
            self.held = waiting;
            for (to, env, _) in ready {
                for env in (self.filter)(Dir::ToMember, to, env) {
                    let bytes = encode_frame(&env).expect("node frames encode");
                    let env = decode_frame(&bytes).unwrap();
                    if let Some(m) = self.members.iter_mut().find(|m| m.tag == to) {
                        m.core.handle_envelope(self.now, NODE, env);
                    }
                }
            }
            for m in &mut self.members {
                while let Some(e) = m.core.poll_event() {
                    m.events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the pump did not settle");
    }

    /// Advances time to `at` in steps, running every due timeout, and pumps.
    fn advance_to(&mut self, at: u64) {
        for _ in 0..10_000 {
            let next = self
                .members
                .iter()
                .filter_map(|m| m.core.poll_timeout())
                .chain(self.node.poll_timeout())
                .map(|t| t.max(self.now))
                .min();
            let step = match next {
                Some(t) if t <= at => t,
                _ => {
                    self.now = at;
                    self.pump();
                    return;
                }
            };
            self.now = step;
            for m in &mut self.members {
                if m.core.poll_timeout().is_some_and(|t| t <= step) {
                    m.core.handle_timeout(step);
                }
            }
            if self.node.poll_timeout().is_some_and(|t| t <= step) {
                self.node.handle_timeout(step);
            }
            self.pump();
        }
        panic!("time did not advance");
    }

    fn advance(&mut self, by: u64) {
        let at = self.now + by;
        self.advance_to(at);
    }

    fn events(&mut self, i: usize) -> Vec<GroupEvent> {
        std::mem::take(&mut self.members[i].events)
    }

    fn create(&mut self, i: usize, name: &str, open: bool) -> GroupId {
        let now = self.now;
        let g = self.core(i).create(now, name, "about", false, open, NODE.to_vec()).unwrap();
        self.pump();
        let ev = self.events(i);
        assert!(ev.contains(&GroupEvent::Created { group: g }), "{ev:?}");
        assert_eq!(self.core(i).groups(), vec![g]);
        g
    }

    /// `j` joins `g` (with an invite from admin `inviter` if given) and everyone settles.
    fn join(&mut self, j: usize, g: GroupId, inviter: Option<usize>) {
        let now = self.now;
        let invitee = self.core(j).account_key();
        let invite = inviter.map(|a| self.core(a).invite(now, &g, Some(invitee)).unwrap());
        self.core(j).join(now, NODE.to_vec(), g, invite, None).unwrap();
        self.pump();
        let ev = self.events(j);
        assert!(ev.iter().any(|e| matches!(e, GroupEvent::Joined { group, .. } if *group == g)), "{ev:?}");
        assert!(self.core(j).groups().contains(&g));
    }

    fn send(&mut self, i: usize, g: &GroupId, text: &str) -> MsgId {
        let now = self.now;
        let id = self.core(i).send(now, g, text).unwrap();
        self.pump();
        id
    }
}

fn texts(events: &[GroupEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            GroupEvent::Message { sender_username, text, .. } => Some((sender_username.clone(), text.clone())),
            _ => None,
        })
        .collect()
}

fn seqs(events: &[GroupEvent]) -> Vec<(u64, MsgId)> {
    events
        .iter()
        .filter_map(|e| match e {
            GroupEvent::Message { seq, msg_id, .. } => Some((*seq, *msg_id)),
            _ => None,
        })
        .collect()
}

/// alice creates a group (open or not), bob and carol join (with invites if not open).
fn three(open: bool) -> (Net, GroupId) {
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let b = net.add(2, "bob");
    let c = net.add(3, "carol");
    let g = net.create(a, "friends", open);
    net.join(b, g, (!open).then_some(a));
    net.join(c, g, (!open).then_some(a));
    for i in [a, b, c] {
        net.events(i);
        assert_eq!(net.core(i).members(&g).len(), 3);
        assert_eq!(net.core(i).epoch(&g), Some(2));
    }
    (net, g)
}

#[test]
fn three_members_join_an_open_group_and_exchange_messages_in_one_order() {
    let (mut net, g) = three(true);
    let m1 = net.send(0, &g, "hello from alice");
    let m2 = net.send(1, &g, "hi, bob here");
    let m3 = net.send(2, &g, "carol too");
    let all: Vec<(String, String)> = vec![
        ("alice".into(), "hello from alice".into()),
        ("bob".into(), "hi, bob here".into()),
        ("carol".into(), "carol too".into()),
    ];
    let mut orders = Vec::new();
    for i in 0..3 {
        let ev = net.events(i);
        assert_eq!(texts(&ev), all, "member {i}: {ev:?}");
        orders.push(seqs(&ev));
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
    assert_eq!(orders[0].iter().map(|(_, m)| *m).collect::<Vec<_>>(), vec![m1, m2, m3]);
    let members = net.core(0).members(&g);
    assert_eq!(members.iter().filter(|m| m.admin).count(), 1);
    assert!(members.iter().all(|m| m.verified));
    let mut names: Vec<String> = members.iter().map(|m| m.username.clone()).collect();
    names.sort();
    assert_eq!(names, ["alice", "bob", "carol"]);
    for i in 0..3 {
        assert!(net.core(i).is_idle(), "member {i} is idle");
    }
}

#[test]
fn an_invite_only_group_needs_an_invite_and_an_invite_is_single_use() {
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let b = net.add(2, "bob");
    let c = net.add(3, "carol");
    let g = net.create(a, "secret club", false);
    // Without an invite: refused before any commit is made.
    let now = net.now;
    net.core(c).join(now, NODE.to_vec(), g, None, None).unwrap();
    net.pump();
    let ev = net.events(c);
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { code: ErrorCode::InviteRequired, .. })), "{ev:?}");
    assert!(net.core(c).groups().is_empty() && net.core(c).pending_groups().is_empty());
    // With one: in.
    let invite = net.core(a).invite(now, &g, None).unwrap();
    net.core(b).join(now, NODE.to_vec(), g, Some(invite.clone()), None).unwrap();
    net.pump();
    assert!(net.events(b).iter().any(|e| matches!(e, GroupEvent::Joined { .. })));
    // The same token again: the steward refuses it.
    net.core(c).join(now, NODE.to_vec(), g, Some(invite), None).unwrap();
    net.pump();
    let ev = net.events(c);
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { code: ErrorCode::InviteUsed, .. })), "{ev:?}");
    assert!(net.core(c).groups().is_empty());
    // A non-admin cannot invite.
    assert!(net.core(b).invite(now, &g, None).is_err());
    // A fresh token works.
    net.join(c, g, Some(a));
    assert_eq!(net.core(a).members(&g).len(), 3);
}

#[test]
fn a_rename_reaches_everyone_and_a_later_joiner_learns_it() {
    let (mut net, g) = three(true);
    let now = net.now;
    net.core(0).rename(now, &g, "best friends").unwrap();
    net.pump();
    for i in 0..3 {
        let ev = net.events(i);
        if i != 0 {
            assert!(
                ev.contains(&GroupEvent::MetaChanged {
                    group: g,
                    name: "best friends".into(),
                    description: "about".into()
                }),
                "member {i}: {ev:?}"
            );
        }
        assert_eq!(net.core(i).name(&g), Some("best friends"));
    }
    // A non-admin may not rename.
    assert!(net.core(1).rename(now, &g, "mine now").is_err());
    // dave joins later with no meta: the designated admin re-sends it after his join.
    let d = net.add(4, "dave");
    net.join(d, g, None);
    net.pump();
    assert_eq!(net.core(d).name(&g), Some("best friends"));
    assert_eq!(net.core(d).description(&g), Some("about"));
    // A joiner who starts from meta in an invite DM keeps it until a newer one arrives.
    let e = net.add(5, "erin");
    let now = net.now;
    let invite = net.core(0).invite(now, &g, None).unwrap();
    let meta = GroupMeta { name: "best friends".into(), description: "about".into(), version: 2 };
    net.core(e).join(now, NODE.to_vec(), g, Some(invite), Some(meta)).unwrap();
    net.pump();
    assert_eq!(net.core(e).name(&g), Some("best friends"));
}

#[test]
fn a_removed_member_is_told_and_cannot_read_what_follows() {
    let (mut net, g) = three(true);
    let carol_key = net.key(2);
    // Keep carol's state from before her removal, to try decrypting later entries with it;
    // record every entry pushed to bob from now on.
    let before = net.core(2).export_state();
    let pushes = Rc::new(RefCell::new(Vec::new()));
    let seen = pushes.clone();
    let bob_tag = net.members[1].tag;
    net.set_filter(move |dir, tag, env| {
        if dir == Dir::ToMember
            && tag == bob_tag
            && let Body::GroupPush { entry, .. } = &env.body
        {
            seen.borrow_mut().push(entry.clone());
        }
        vec![env]
    });
    let now = net.now;
    net.core(0).remove(now, &g, &carol_key).unwrap();
    net.pump();
    let ev = net.events(2);
    assert!(ev.contains(&GroupEvent::Removed { group: g }), "{ev:?}");
    assert!(net.core(2).groups().is_empty());
    for i in 0..2 {
        assert_eq!(net.core(i).members(&g).len(), 2);
        assert!(!net.core(i).members(&g).iter().any(|m| m.key == carol_key));
    }
    net.events(0);
    net.events(1);
    // Messages after the removal: bob reads them, carol does not receive them.
    net.send(0, &g, "carol is gone");
    assert_eq!(texts(&net.events(1)), vec![("alice".into(), "carol is gone".into())]);
    assert!(net.events(2).is_empty());
    // Even with her old keys, and skipping the commit that removed her, carol cannot
    // decrypt it: the log as she would see it with the commit "pruned".
    let entries = pushes.borrow().clone();
    assert_eq!(entries.len(), 3, "proposal, commit, message: {entries:?}");
    let next_seq = entries[2].seq + 1;
    let without_commit = vec![entries[0].clone(), entries[2].clone()];
    let mut old = GroupCore::restore(keys("carol", 103), seed(33), config(), before).unwrap();
    old.handle_timeout(net.now);
    let body = Body::GroupEntries { group_id: g, entries: without_commit, next_seq };
    old.handle_envelope(net.now, NODE, Envelope { request_id: 0, body });
    let ev: Vec<GroupEvent> = std::iter::from_fn(|| old.poll_event()).collect();
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::HistoryGap { .. })), "{ev:?}");
    assert!(texts(&ev).is_empty(), "{ev:?}");
    assert_eq!(old.stats().unprocessable, 1, "the message was tried and failed");
    assert_eq!(old.next_seq(&g), Some(next_seq));
}

#[test]
fn a_member_leaves_and_the_admin_commits_it() {
    let (mut net, g) = three(true);
    let now = net.now;
    net.core(1).leave(now, &g).unwrap();
    net.pump();
    assert!(net.events(1).contains(&GroupEvent::Removed { group: g }));
    assert!(net.core(1).groups().is_empty());
    assert_eq!(net.core(0).members(&g).len(), 2);
    assert_eq!(net.core(2).members(&g).len(), 2);
    // The sole admin may not leave while others remain.
    assert!(net.core(0).leave(now, &g).is_err());
    // Messages still flow between those who stayed.
    net.events(2);
    net.send(2, &g, "just us");
    assert_eq!(texts(&net.events(0)), vec![("carol".into(), "just us".into())]);
}

#[test]
fn a_promoted_member_can_rename_and_invite() {
    let (mut net, g) = three(true);
    let bob_key = net.key(1);
    let now = net.now;
    assert!(net.core(1).rename(now, &g, "x").is_err());
    net.core(0).promote(now, &g, &bob_key).unwrap();
    net.pump();
    for i in 0..3 {
        let admins: Vec<PublicKey> = net.core(i).members(&g).iter().filter(|m| m.admin).map(|m| m.key).collect();
        assert_eq!(admins.len(), 2, "member {i}");
        assert!(admins.contains(&bob_key));
        assert!(net.events(i).contains(&GroupEvent::MembersChanged { group: g }));
    }
    assert!(net.core(1).is_admin(&g));
    let now = net.now;
    net.core(1).rename(now, &g, "bob's group").unwrap();
    net.pump();
    assert_eq!(net.core(2).name(&g), Some("bob's group"));
    assert!(net.core(1).invite(now, &g, None).is_ok());
}

#[test]
fn when_the_designated_admin_is_silent_the_next_admin_commits_after_the_timeout() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let bob_key = net.key(bob);
    let now = net.now;
    net.core(alice).promote(now, &g, &bob_key).unwrap();
    net.pump();
    let epoch = net.core(carol).epoch(&g).unwrap();
    let admins: Vec<PublicKey> = net.core(carol).members(&g).iter().filter(|m| m.admin).map(|m| m.key).collect();
    let designated = designated_committer(&g, epoch, 0, &admins).unwrap();
    let (silent, other) = if designated == net.key(alice) { (alice, bob) } else { (bob, alice) };
    // The designated admin hears nothing (it is offline).
    let silent_tag = net.members[silent].tag;
    net.set_filter(move |_, tag, env| if tag == silent_tag { vec![] } else { vec![env] });
    for i in 0..3 {
        net.events(i);
    }
    let start = net.now;
    net.core(carol).leave(start, &g).unwrap();
    net.pump();
    assert_eq!(net.core(other).members(&g).len(), 3, "nobody committed yet");
    let timeout = nymstr_mls::COMMIT_ROUND_US;
    net.advance(timeout - 1_000_000);
    assert_eq!(net.core(other).members(&g).len(), 3, "the other admin waits its turn");
    net.advance(2 * timeout);
    let ev = net.events(carol);
    assert!(ev.contains(&GroupEvent::Removed { group: g }), "{ev:?}");
    assert_eq!(net.core(other).members(&g).len(), 2);
    // The silent admin comes back and catches up.
    net.clear_filter();
    let now = net.now;
    net.core(silent).reconnected(now);
    net.pump();
    net.advance(GroupConfig::default().gap_wait_us + 1);
    assert_eq!(net.core(silent).members(&g).len(), 2);
    assert_eq!(net.core(silent).epoch(&g), net.core(other).epoch(&g));
}

#[test]
fn a_withheld_entry_is_reported_missing_with_its_sender_and_then_lost() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let carol_tag = net.members[carol].tag;
    // Bob's first message never reaches carol: not pushed, not in any fetch.
    let withheld: Rc<RefCell<Option<u64>>> = Rc::new(RefCell::new(None));
    let w = withheld.clone();
    net.set_filter(move |dir, tag, mut env| {
        if dir == Dir::ToMember {
            match &mut env.body {
                Body::GroupUploadAck { seq, .. } if w.borrow().is_none() => *w.borrow_mut() = Some(*seq),
                Body::GroupPush { entry, .. } if tag == carol_tag && Some(entry.seq) == *w.borrow() => return vec![],
                Body::GroupEntries { entries, .. } if tag == carol_tag => {
                    entries.retain(|e| Some(e.seq) != *w.borrow());
                }
                _ => {}
            }
        }
        vec![env]
    });
    let m1 = net.send(bob, &g, "you will not see this, carol");
    net.send(alice, &g, "alice saw it");
    net.advance(GroupConfig::default().gap_wait_us + 1);
    let seq = withheld.borrow().unwrap();
    let ev = net.events(carol);
    let bob_key = net.key(bob);
    assert!(ev.contains(&GroupEvent::HistoryGap { group: g, from_seq: seq, to_seq: seq + 1 }), "{ev:?}");
    assert!(ev.contains(&GroupEvent::Missing { group: g, msg_id: m1, sender: bob_key, seq }), "{ev:?}");
    assert!(ev.contains(&GroupEvent::Lost { group: g, msg_id: m1, sender: bob_key, seq }), "{ev:?}");
    assert_eq!(texts(&ev), vec![("alice".into(), "alice saw it".into())]);
}

#[test]
fn a_tampered_entry_is_reported_missing_and_repaired_from_the_log() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let carol_tag = net.members[carol].tag;
    let mut tampered = false;
    net.set_filter(move |dir, tag, mut env| {
        if dir == Dir::ToMember
            && tag == carol_tag
            && !tampered
            && let Body::GroupPush { entry, .. } = &mut env.body
        {
            let n = entry.mls.len();
            entry.mls[n - 5] ^= 0x40;
            tampered = true;
        }
        vec![env]
    });
    let m1 = net.send(bob, &g, "first");
    assert!(texts(&net.events(carol)).is_empty(), "the tampered copy does not decrypt");
    net.send(alice, &g, "second");
    let ev = net.events(carol);
    let bob_key = net.key(bob);
    let missing = ev
        .iter()
        .position(|e| matches!(e, GroupEvent::Missing { msg_id, sender, .. } if *msg_id == m1 && *sender == bob_key));
    let repaired = ev
        .iter()
        .position(|e| matches!(e, GroupEvent::Repaired { msg_id, sender, .. } if *msg_id == m1 && *sender == bob_key));
    assert!(missing.is_some() && repaired > missing, "{ev:?}");
    let got = texts(&ev);
    assert!(
        got.contains(&("bob".into(), "first".into())) && got.contains(&("alice".into(), "second".into())),
        "{ev:?}"
    );
    assert!(net.core(carol).is_idle());
}

#[test]
fn a_sync_header_naming_another_sender_is_dropped() {
    let (mut net, g) = three(true);
    let alice_key = net.key(0);
    let forged = SyncMessage {
        version: SYNC_VERSION,
        lamport: 1,
        sender: alice_key,
        msg_id: [9; 16],
        history: Vec::new(),
        bloom: BloomFilter::new().into_bytes(),
        body: SyncBody::Text { text: "I am alice, honest".into() },
    };
    let now = net.now;
    net.core(1).send_sync_unchecked(now, &g, forged).unwrap();
    net.pump();
    for i in [0, 2] {
        assert!(texts(&net.events(i)).is_empty());
        assert_eq!(net.core(i).stats().wrong_sender, 1, "member {i}");
    }
    // Honest messages still flow.
    net.send(1, &g, "sorry");
    assert_eq!(texts(&net.events(2)), vec![("bob".into(), "sorry".into())]);
}

#[test]
fn a_member_restored_mid_conversation_carries_on() {
    let (mut net, g) = three(true);
    net.send(0, &g, "one");
    net.send(1, &g, "two");
    for i in 0..3 {
        net.events(i);
    }
    // Bob saves and "restarts" on a new connection (new tag) while alice talks.
    let saved = net.core(1).export_state();
    let restored = GroupCore::restore(keys("bob", 102), seed(22), config(), saved.clone()).unwrap();
    net.members[1] = Member { tag: SenderTag([22; 16]), core: restored, events: Vec::new() };
    net.send(0, &g, "three");
    net.advance(1);
    assert_eq!(texts(&net.events(1)), vec![("alice".into(), "three".into())]);
    net.send(1, &g, "four, from restored bob");
    assert_eq!(
        texts(&net.events(2)),
        vec![("alice".into(), "three".into()), ("bob".into(), "four, from restored bob".into())]
    );
    assert_eq!(net.core(1).members(&g).len(), 3);
    // openmls' leaked proposal records are purged after merges.
    let (mut net2, g2) = three(true);
    let carol = net2.key(2);
    let now = net2.now;
    net2.core(0).remove(now, &g2, &carol).unwrap();
    net2.pump();
    for i in 0..2 {
        let state = net2.core(i).export_state();
        assert!(!state.storage.keys().any(|k| k.starts_with(b"QueuedProposal")), "member {i}");
    }
    // The delta export brings a saved state up to date.
    let mut state = saved;
    let d1 = net.core(1).export_changes();
    d1.apply_to(&mut state);
    assert_eq!(state, net.core(1).export_state());
    let d2 = net.core(1).export_changes();
    assert!(d2.upserts.is_empty() && d2.deletes.is_empty());
}

/// One scenario, start to end; returns every frame members sent.
fn scenario() -> Vec<(SenderTag, Vec<u8>)> {
    let (mut net, g) = three(false);
    net.send(0, &g, "a");
    net.send(1, &g, "b");
    let carol = net.key(2);
    let now = net.now;
    net.core(0).remove(now, &g, &carol).unwrap();
    net.pump();
    net.core(0).rename(now, &g, "renamed").unwrap();
    net.pump();
    net.advance(100_000_000);
    net.sent
}

#[test]
fn the_same_seeds_give_byte_identical_transmits() {
    let a = scenario();
    let b = scenario();
    assert!(a.len() > 15, "{} frames", a.len());
    assert_eq!(a, b);
}

#[test]
fn a_message_in_flight_across_a_restore_lands_once() {
    let (mut net, g) = three(true);
    let bob_tag = net.members[1].tag;
    // Bob's upload reaches the steward but the ack is lost; bob restarts.
    net.set_filter(move |dir, tag, env| {
        if dir == Dir::ToMember && tag == bob_tag && matches!(env.body, Body::GroupUploadAck { .. }) {
            return vec![];
        }
        vec![env]
    });
    let m = net.send(1, &g, "did it arrive?");
    let saved = net.core(1).export_state();
    net.clear_filter();
    let restored = GroupCore::restore(keys("bob", 102), seed(23), config(), saved).unwrap();
    net.members[1] = Member { tag: SenderTag([23; 16]), core: restored, events: Vec::new() };
    net.advance(GroupConfig::default().gap_wait_us + 1);
    // Everyone, bob included, has it exactly once.
    for i in 0..3 {
        let ev = net.events(i);
        let got: Vec<MsgId> = seqs(&ev).into_iter().map(|(_, id)| id).collect();
        assert_eq!(got, vec![m], "member {i}: {ev:?}");
    }
    assert!(net.core(1).is_idle());
}

#[test]
fn an_admin_who_leaves_or_is_removed_is_dropped_from_the_admins() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let (alice_key, bob_key, carol_key) = (net.key(alice), net.key(bob), net.key(carol));
    let now = net.now;
    net.core(alice).promote(now, &g, &bob_key).unwrap();
    net.pump();
    net.core(alice).promote(now, &g, &carol_key).unwrap();
    net.pump();
    let admins = |net: &mut Net, i: usize| -> Vec<PublicKey> {
        net.core(i).members(&g).iter().filter(|m| m.admin).map(|m| m.key).collect()
    };
    assert_eq!(admins(&mut net, carol).len(), 3);
    // alice leaves: she is demoted and removed; nobody who is gone stays an admin.
    let now = net.now;
    net.core(alice).leave(now, &g).unwrap();
    net.advance(3 * nymstr_mls::COMMIT_ROUND_US);
    assert!(net.events(alice).contains(&GroupEvent::Removed { group: g }));
    let mut expect = vec![bob_key, carol_key];
    expect.sort();
    assert_eq!(admins(&mut net, bob), expect);
    assert!(!net.core(bob).members(&g).iter().any(|m| m.key == alice_key));
    // bob removes carol, also an admin.
    let now = net.now;
    net.core(bob).remove(now, &g, &carol_key).unwrap();
    net.advance(3 * nymstr_mls::COMMIT_ROUND_US);
    assert!(net.events(carol).contains(&GroupEvent::Removed { group: g }));
    assert_eq!(admins(&mut net, bob), vec![bob_key]);
    assert_eq!(net.core(bob).members(&g).len(), 1);
    assert!(net.core(bob).is_idle());
}

fn lossy_run(seed: u64) {
    let mut net = Net::new();
    let (a, b, c) = (net.add(1, "alice"), net.add(2, "bob"), net.add(3, "carol"));
    // A quarter of all frames, either way, are lost (a seeded stream decides which).
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let trace = std::env::var("NYMSTR_TRACE").is_ok();
    net.set_filter(move |dir, tag, env| {
        let lost = rng.next_u32() % 4 == 0;
        if trace && tag == SenderTag([1; 16]) {
            let what = match &env.body {
                Body::GroupPush { entry, .. } => format!("push {} e{}", entry.seq, entry.epoch),
                Body::GroupUploadAck { seq, epoch, upload_id, .. } => {
                    format!("ack {seq} e{epoch} {:02x?}", &upload_id[..2])
                }
                Body::GroupEntries { entries, next_seq, .. } => {
                    format!("entries {:?} next {next_seq}", entries.iter().map(|e| e.seq).collect::<Vec<_>>())
                }
                Body::GroupUpload { upload_id, .. } => format!("upload {:02x?}", &upload_id[..2]),
                Body::GroupFetch { from_seq, max, .. } => format!("fetch {from_seq} {max}"),
                Body::Error { code, detail } => format!("error {code:?} {detail}"),
                other => other.kind().to_string(),
            };
            eprintln!("{dir:?} {} rid {} {what}", if lost { "LOST" } else { "ok  " }, env.request_id);
        }
        if lost { vec![] } else { vec![env] }
    });
    let now = net.now;
    let g = net.core(a).create(now, "lossy", "", false, true, NODE.to_vec()).unwrap();
    for _ in 0..120 {
        if net.core(a).groups().contains(&g) {
            break;
        }
        net.advance(10_000_000);
    }
    for j in [b, c] {
        let now = net.now;
        net.core(j).join(now, NODE.to_vec(), g, None, None).unwrap();
        for _ in 0..120 {
            if net.core(j).groups().contains(&g) {
                break;
            }
            net.advance(10_000_000);
        }
        assert!(net.core(j).groups().contains(&g), "seed {seed}: member {j} joined: {}", net.core(j).debug_summary());
    }
    let mut sent = Vec::new();
    for round in 0..4 {
        for i in [a, b, c] {
            let now = net.now;
            let id = net.core(i).send(now, &g, &format!("{round}:{i}"));
            let ev = net.members[i].events.clone();
            sent.push(id.unwrap_or_else(|e| panic!("seed {seed}: member {i}: {e}: {ev:?}")));
            net.advance(1_000_000);
        }
    }
    // Past retries, gap fetches and the quiet-group sync.
    net.advance(4 * GroupConfig::default().sync_every_us);
    let mut orders = Vec::new();
    for i in [a, b, c] {
        let ev = net.events(i);
        let got = seqs(&ev);
        let mut ids: Vec<MsgId> = got.iter().map(|(_, m)| *m).collect();
        ids.sort();
        let mut want = sent.clone();
        want.sort();
        let lacking: Vec<usize> = (0..sent.len()).filter(|k| !ids.contains(&sent[*k])).collect();
        assert_eq!(
            ids,
            want,
            "seed {seed}: member {i} got every message once; lacks {lacking:?}; {}; {:?}; {:?}; got {got:?}",
            net.core(i).debug_summary(),
            net.core(i).stats(),
            ev.iter().filter(|e| !matches!(e, GroupEvent::Message { .. })).collect::<Vec<_>>()
        );
        orders.push(got);
        assert!(net.core(i).is_idle(), "seed {seed}: member {i}: {}", net.core(i).debug_summary());
    }
    // One log: shown in seq order, and a seq shows the same message to everyone. (A
    // message overtaken by a commit is re-sent, so a joiner may show it at a later seq.)
    let mut at: std::collections::BTreeMap<u64, MsgId> = std::collections::BTreeMap::new();
    for order in &orders {
        assert!(order.windows(2).all(|w| w[0].0 < w[1].0), "seed {seed}: {order:?}");
        for (seq, id) in order {
            assert_eq!(*at.entry(*seq).or_insert(*id), *id, "seed {seed}: seq {seq}");
        }
    }
}

#[test]
fn over_a_lossy_transport_everyone_gets_everything_in_one_order() {
    let seeds: u64 = std::env::var("NYMSTR_LOSSY_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let first: u64 = std::env::var("NYMSTR_LOSSY_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for seed in first..=seeds {
        lossy_run(seed);
    }
}

#[test]
fn a_commit_that_loses_the_race_is_dropped_and_the_winner_applied() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let bob_key = net.key(bob);
    let now = net.now;
    net.core(alice).promote(now, &g, &bob_key).unwrap();
    net.pump();
    let epoch = net.core(carol).epoch(&g).unwrap();
    let admins: Vec<PublicKey> = net.core(carol).members(&g).iter().filter(|m| m.admin).map(|m| m.key).collect();
    let first = designated_committer(&g, epoch, 0, &admins).unwrap();
    let (x, y) = if first == net.key(alice) { (alice, bob) } else { (bob, alice) };
    // x hears everything, but its uploads are lost until the other admin has committed.
    let x_tag = net.members[x].tag;
    net.set_filter(move |dir, tag, env| if dir == Dir::ToNode && tag == x_tag { vec![] } else { vec![env] });
    let now = net.now;
    net.core(carol).leave(now, &g).unwrap();
    net.pump();
    net.advance(2 * nymstr_mls::COMMIT_ROUND_US);
    assert!(net.events(carol).contains(&GroupEvent::Removed { group: g }), "y committed in its round");
    assert_eq!(net.core(x).members(&g).len(), 2, "x applied y's commit over its own pending one");
    // x's commit finally reaches the steward: refused, dropped; x stays in step.
    net.clear_filter();
    net.advance(2 * GroupConfig::default().retry_after_max_us);
    assert_eq!(net.core(x).epoch(&g), net.core(y).epoch(&g));
    let ev = net.events(x);
    assert!(!ev.iter().any(|e| matches!(e, GroupEvent::Error { .. })), "{ev:?}");
    net.send(x, &g, "still here");
    assert_eq!(texts(&net.events(y)), vec![(net.core(x).username().to_string(), "still here".into())]);
    assert!(net.core(x).is_idle(), "{}", net.core(x).debug_summary());
}

#[test]
fn history_pruned_while_away_is_reported_as_a_gap_and_its_messages_lost() {
    // The steward keeps only the last 2 application messages.
    let mut net = Net::with_config(NodeConfig { group_history_max: 2, ..NodeConfig::default() });
    let (a, b, c) = (net.add(1, "alice"), net.add(2, "bob"), net.add(3, "carol"));
    let g = net.create(a, "forgetful", true);
    net.join(b, g, None);
    net.join(c, g, None);
    for i in [a, b, c] {
        net.events(i);
    }
    // carol is away while five messages go by.
    let carol_tag = net.members[c].tag;
    net.set_filter(move |_, tag, env| if tag == carol_tag { vec![] } else { vec![env] });
    let mut ids = Vec::new();
    for n in 0..5 {
        let who = if n % 2 == 0 { a } else { b };
        ids.push(net.send(who, &g, &format!("m{n}")));
    }
    let before = net.core(c).next_seq(&g).unwrap();
    net.clear_filter();
    let now = net.now;
    net.core(c).reconnected(now);
    net.pump();
    net.advance(GroupConfig::default().gap_wait_us + 1);
    let ev = net.events(c);
    // The last two arrive; the three before are gone and reported.
    assert_eq!(texts(&ev), vec![("bob".into(), "m3".into()), ("alice".into(), "m4".into())], "{ev:?}");
    let gaps: Vec<(u64, u64)> = ev
        .iter()
        .filter_map(|e| match e {
            GroupEvent::HistoryGap { from_seq, to_seq, .. } => Some((*from_seq, *to_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.iter().map(|(f, t)| t - f).sum::<u64>(), 3, "{gaps:?}");
    assert_eq!(gaps[0].0, before);
    let lost: Vec<MsgId> = ev
        .iter()
        .filter_map(|e| match e {
            GroupEvent::Lost { msg_id, .. } => Some(*msg_id),
            _ => None,
        })
        .collect();
    for id in &ids[..3] {
        assert!(lost.contains(id), "{ev:?}");
    }
    assert!(net.core(c).is_idle(), "{}", net.core(c).debug_summary());
}

#[test]
fn a_rename_applied_after_its_sender_lost_admin_is_ignored_by_everyone_the_sender_too() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let bob_key = net.key(bob);
    let now = net.now;
    net.core(alice).promote(now, &g, &bob_key).unwrap();
    net.advance(3 * nymstr_mls::COMMIT_ROUND_US);
    assert!(net.core(bob).is_admin(&g));
    // Bob renames while an admin, but his upload is held back until alice has demoted him:
    // the log carries his SetMeta after the commit, when he is no longer an admin.
    let hold = Rc::new(Cell::new(true));
    let h = hold.clone();
    let bob_tag = net.members[bob].tag;
    net.set_filter(move |dir, tag, env| {
        if h.get() && dir == Dir::ToNode && tag == bob_tag && matches!(env.body, Body::GroupUpload { .. }) {
            return vec![];
        }
        vec![env]
    });
    let now = net.now;
    net.core(bob).rename(now, &g, "bob's now").unwrap();
    net.core(alice).demote(now, &g, &bob_key).unwrap();
    net.advance(3 * nymstr_mls::COMMIT_ROUND_US);
    assert!(!net.core(carol).members(&g).iter().any(|m| m.key == bob_key && m.admin));
    assert!(!net.core(bob).is_admin(&g));
    hold.set(false);
    // Past bob's next retry (his backoff grew while his upload was lost).
    net.advance(60 * GroupConfig::default().retry_after_us);
    for i in [alice, bob, carol] {
        assert_eq!(net.core(i).name(&g), Some("friends"), "member {i}");
        assert!(net.core(i).is_idle(), "member {i}");
    }
    assert!(net.core(carol).stats().meta_not_admin >= 1);
    assert!(!net.events(bob).iter().any(|e| matches!(e, GroupEvent::MetaChanged { .. })));
}

#[test]
fn messages_in_flight_across_a_restore_are_sent_again_in_their_order() {
    let (mut net, g) = three(true);
    let bob = 1;
    let bob_tag = net.members[bob].tag;
    // None of bob's uploads reaches the steward; he restarts with all of them in flight.
    net.set_filter(move |dir, tag, env| {
        if dir == Dir::ToNode && tag == bob_tag && matches!(env.body, Body::GroupUpload { .. }) {
            return vec![];
        }
        vec![env]
    });
    let max = GroupConfig::default().uploads_in_flight_max;
    let sent: Vec<MsgId> = (0..max + 2).map(|i| net.send(bob, &g, &format!("message {i}"))).collect();
    let saved = net.core(bob).export_state();
    net.clear_filter();
    let restored = GroupCore::restore(keys("bob", 102), seed(24), config(), saved).unwrap();
    net.members[bob] = Member { tag: SenderTag([24; 16]), core: restored, events: Vec::new() };
    net.advance(GroupConfig::default().gap_wait_us + 1);
    for i in 0..3 {
        let ev = net.events(i);
        let got: Vec<MsgId> = seqs(&ev).into_iter().map(|(_, id)| id).collect();
        assert_eq!(got, sent, "member {i}: {ev:?}");
    }
}

#[test]
fn a_refused_proposal_drops_its_intent_only() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let (bob_key, carol_key) = (net.key(bob), net.key(carol));
    // Alice's first proposal is mangled on its way: the steward refuses it for good.
    let alice_tag = net.members[alice].tag;
    let mut mangled = false;
    net.set_filter(move |dir, tag, mut env| {
        if dir == Dir::ToNode
            && tag == alice_tag
            && !mangled
            && let Body::GroupUpload { mls, .. } = &mut env.body
        {
            // Not an MLS message at all.
            *mls = vec![0xFF; 8];
            mangled = true;
        }
        vec![env]
    });
    let now = net.now;
    net.core(alice).promote(now, &g, &bob_key).unwrap();
    net.core(alice).promote(now, &g, &carol_key).unwrap();
    net.advance(3 * nymstr_mls::COMMIT_ROUND_US);
    let ev = net.events(alice);
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { .. })), "{ev:?}");
    // Bob's promotion was refused; carol's, asked for after it, still happens.
    let admins: Vec<PublicKey> = net.core(bob).members(&g).iter().filter(|m| m.admin).map(|m| m.key).collect();
    assert!(admins.contains(&carol_key) && !admins.contains(&bob_key), "{admins:?}");
    assert!(net.core(alice).is_idle());
}

#[test]
fn an_upload_too_large_for_the_steward_is_refused_locally_and_never_sent() {
    let (mut net, g) = three(true);
    let (alice, bob) = (0, 1);
    let largest = Rc::new(Cell::new(0usize));
    let l = largest.clone();
    net.set_filter(move |dir, _, env| {
        if dir == Dir::ToNode
            && let Body::GroupUpload { mls, .. } = &env.body
        {
            l.set(l.get().max(mls.len()));
        }
        vec![env]
    });
    let bob_key = net.key(bob);
    for len in [nymstr_proto::limits::GROUP_MLS_BYTES_MAX, nymstr_proto::limits::FRAME_BYTES_MAX] {
        let huge = SyncMessage {
            version: SYNC_VERSION,
            lamport: 1,
            sender: bob_key,
            msg_id: [len as u8; 16],
            history: Vec::new(),
            bloom: BloomFilter::new().into_bytes(),
            body: SyncBody::Text { text: "x".repeat(len) },
        };
        let now = net.now;
        net.core(bob).send_sync_unchecked(now, &g, huge).unwrap();
        net.pump();
        let ev = net.events(bob);
        assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { code: ErrorCode::PayloadTooLarge, .. })), "{ev:?}");
    }
    assert!(largest.get() <= nymstr_proto::limits::GROUP_MLS_BYTES_MAX, "{} bytes sent", largest.get());
    assert!(texts(&net.events(alice)).is_empty());
    // What follows still goes.
    net.send(bob, &g, "a short one");
    assert_eq!(texts(&net.events(alice)), vec![("bob".into(), "a short one".into())]);
    assert!(net.core(bob).is_idle());
}

#[test]
fn a_repaired_message_of_a_past_epoch_names_its_sender_though_the_leaf_is_reused() {
    let (mut net, g) = three(true);
    let (alice, bob, carol) = (0, 1, 2);
    let bob_tag = net.members[bob].tag;
    // Carol's message reaches bob mangled (it fails and waits for a repair).
    let mut tampered = false;
    net.set_filter(move |dir, tag, mut env| {
        if dir == Dir::ToMember
            && tag == bob_tag
            && !tampered
            && let Body::GroupPush { entry, .. } = &mut env.body
        {
            let n = entry.mls.len();
            entry.mls[n - 5] ^= 0x40;
            tampered = true;
        }
        vec![env]
    });
    let m1 = net.send(carol, &g, "before I go");
    assert!(texts(&net.events(bob)).is_empty());
    net.clear_filter();
    // Carol is removed and dave joins in her leaf; only then does bob learn (from alice's
    // causal history) that he misses carol's message, and repairs it from the log.
    let carol_key = net.key(carol);
    let now = net.now;
    net.core(alice).remove(now, &g, &carol_key).unwrap();
    net.advance(3 * nymstr_mls::COMMIT_ROUND_US);
    assert_eq!(net.core(bob).members(&g).len(), 2);
    let dave = net.add(4, "dave");
    net.join(dave, g, None);
    net.advance(3 * nymstr_mls::COMMIT_ROUND_US);
    net.send(alice, &g, "after");
    net.advance(GroupConfig::default().gap_wait_us + 1);
    let ev = net.events(bob);
    assert!(
        ev.iter().any(|e| matches!(e, GroupEvent::Message { msg_id, sender_key, sender_username, .. }
            if *msg_id == m1 && *sender_key == carol_key && sender_username == "carol")),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::Repaired { msg_id, .. } if *msg_id == m1)), "{ev:?}");
    assert_eq!(net.core(bob).stats().wrong_sender, 0);
}

/// A steward that answers `Busy` (full) is asked again after the retry pause, not at
/// once: creation and subscription alike.
#[test]
fn a_busy_steward_is_asked_again_after_a_pause_not_at_once() {
    let mut a = GroupCore::new(keys("alice", 41), seed(41), config());
    let node = b"group-node".to_vec();
    let g = a.create(T0, "g", "", false, false, node.clone()).unwrap();
    let create = a.drain_transmits();
    let rid = create
        .iter()
        .find(|t| matches!(t.envelope.body, Body::GroupCreate { .. }))
        .expect("the create request")
        .envelope
        .request_id;
    let busy = Body::Error { code: ErrorCode::Busy, detail: "groups_max reached".into() };
    a.handle_envelope(T0 + 1, &node, Envelope { request_id: rid, body: busy });
    assert!(a.drain_transmits().is_empty(), "a Busy steward is not asked again at once");
    let at = a.poll_timeout().expect("a retry is due");
    assert!(at >= T0 + 1 + config().retry_after_us, "retry at {at}");
    a.handle_timeout(at);
    let again = a.drain_transmits();
    assert!(
        again.iter().any(|t| matches!(t.envelope.body, Body::GroupCreate { group_id, .. } if group_id == g)),
        "the create goes again after the pause"
    );
}

/// Issue 10, item 2: the group node joins an invite-only group on its own. Mallory holds
/// no invitation; she relabels a token she signed for a group of her own, her client
/// builds the external commit, and the "operator" keeps it from the honest steward and
/// hands it to alice and bob as the next entry (and mallory its ack). Members enforce the
/// policy: both refuse the commit alike, stay in their epoch, and mallory cannot read
/// what bob sends next.
#[test]
fn an_external_join_the_policy_does_not_allow_is_refused_by_every_member() {
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let b = net.add(2, "bob");
    let m = net.add(3, "mallory");
    let g = net.create(a, "secret club", false);
    net.join(b, g, Some(a));
    let own = net.create(m, "mallory's", false);
    let now = net.now;
    let mut token = net.core(m).invite(now, &own, None).unwrap();
    token.group_id = g;
    net.core(m).skip_join_checks();
    let captured: Rc<RefCell<Vec<(SenderTag, Envelope)>>> = Rc::new(RefCell::new(Vec::new()));
    let keep = captured.clone();
    net.set_filter(move |dir, tag, env| {
        if dir == Dir::ToNode && matches!(&env.body, Body::GroupUpload { group_id, .. } if *group_id == g) {
            keep.borrow_mut().push((tag, env));
            return Vec::new();
        }
        // The operator answers mallory itself from here on (her subscription, say).
        if dir == Dir::ToNode && tag == SenderTag([3; 16]) && !matches!(env.body, Body::GroupInfoRequest { .. }) {
            return Vec::new();
        }
        vec![env]
    });
    net.core(m).join(now, NODE.to_vec(), g, Some(token), None).unwrap();
    net.pump();
    let (_, up) = captured.borrow_mut().pop().expect("mallory's client built the external commit");
    let Body::GroupUpload { upload_id, mls, .. } = up.body else { unreachable!() };
    let seq = net.core(a).next_seq(&g).unwrap();
    for i in [a, b] {
        let push = Body::GroupPush { group_id: g, entry: GroupEntry { seq, epoch: 1, mls: mls.clone() } };
        net.core(i).handle_envelope(now, NODE, Envelope { request_id: 0, body: push });
    }
    let ack = Body::GroupUploadAck { group_id: g, upload_id, seq, epoch: 1 };
    net.core(m).handle_envelope(now, NODE, Envelope { request_id: up.request_id, body: ack });
    net.pump();
    assert_eq!(net.core(m).epoch(&g), Some(2), "mallory thinks she is in");
    for i in [a, b] {
        assert_eq!(net.core(i).members(&g).len(), 2, "member {i} merged the injected join");
        assert_eq!(net.core(i).epoch(&g), Some(1));
        let stats = net.core(i).stats().clone();
        assert_eq!(stats.refused_commits, 1, "{stats:?}");
        let ev = net.events(i);
        assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { code: ErrorCode::NotAllowed, .. })), "{ev:?}");
    }
    // bob's next message, handed to mallory as the operator would.
    captured.borrow_mut().clear();
    net.send(b, &g, "the secret plan");
    let (_, up) = captured.borrow_mut().pop().expect("bob's upload");
    let Body::GroupUpload { mls, .. } = up.body else { unreachable!() };
    let push = Body::GroupPush { group_id: g, entry: GroupEntry { seq: seq + 1, epoch: 2, mls } };
    let now = net.now;
    net.core(m).handle_envelope(now, NODE, Envelope { request_id: 0, body: push });
    net.pump();
    let ev = net.events(m);
    assert!(texts(&ev).is_empty(), "mallory read bob: {ev:?}");
}

/// Issue 10, item 2: the steward saw bob redeem his invitation, which names bob's account
/// key; it replays that real, admin-signed token in an external commit of a key of its
/// own and hands the commit to the members. Members check that the token's invitee
/// certified the joiner's leaf: both refuse it, and the intruder reads nothing.
#[test]
fn a_steward_replaying_a_bound_token_for_its_own_key_is_refused_by_every_member() {
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let b = net.add(2, "bob");
    let m = net.add(3, "mallory");
    let g = net.create(a, "secret club", false);
    let now = net.now;
    let bob_account = net.core(b).account_key();
    let token = net.core(a).invite(now, &g, Some(bob_account)).unwrap();
    net.core(b).join(now, NODE.to_vec(), g, Some(token.clone()), None).unwrap();
    net.pump();
    assert_eq!(net.core(a).members(&g).len(), 2);
    // The operator's own client: it skips the joiner's checks (which refuse the token).
    net.core(m).skip_join_checks();
    let captured: Rc<RefCell<Vec<(SenderTag, Envelope)>>> = Rc::new(RefCell::new(Vec::new()));
    let keep = captured.clone();
    net.set_filter(move |dir, tag, env| {
        if dir == Dir::ToNode && matches!(&env.body, Body::GroupUpload { group_id, .. } if *group_id == g) {
            keep.borrow_mut().push((tag, env));
            return Vec::new();
        }
        if dir == Dir::ToNode && tag == SenderTag([3; 16]) && !matches!(env.body, Body::GroupInfoRequest { .. }) {
            return Vec::new();
        }
        vec![env]
    });
    let now = net.now;
    net.core(m).join(now, NODE.to_vec(), g, Some(token), None).unwrap();
    net.pump();
    let (_, up) = captured.borrow_mut().pop().expect("the intruder's client built the external commit");
    let Body::GroupUpload { upload_id, mls, .. } = up.body else { unreachable!() };
    let seq = net.core(a).next_seq(&g).unwrap();
    let epoch = net.core(a).epoch(&g).unwrap();
    for i in [a, b] {
        let push = Body::GroupPush { group_id: g, entry: GroupEntry { seq, epoch, mls: mls.clone() } };
        net.core(i).handle_envelope(now, NODE, Envelope { request_id: 0, body: push });
    }
    let ack = Body::GroupUploadAck { group_id: g, upload_id, seq, epoch };
    net.core(m).handle_envelope(now, NODE, Envelope { request_id: up.request_id, body: ack });
    net.pump();
    assert_eq!(net.core(m).epoch(&g), Some(epoch + 1), "the intruder thinks it is in");
    for i in [a, b] {
        assert_eq!(net.core(i).members(&g).len(), 2, "member {i} merged the replayed token's join");
        assert_eq!(net.core(i).epoch(&g), Some(epoch));
        assert_eq!(net.core(i).stats().refused_commits, 1);
    }
    captured.borrow_mut().clear();
    net.send(b, &g, "the secret plan");
    let (_, up) = captured.borrow_mut().pop().expect("bob's upload");
    let Body::GroupUpload { mls, .. } = up.body else { unreachable!() };
    let push = Body::GroupPush { group_id: g, entry: GroupEntry { seq: seq + 1, epoch: epoch + 1, mls } };
    let now = net.now;
    net.core(m).handle_envelope(now, NODE, Envelope { request_id: 0, body: push });
    net.pump();
    let ev = net.events(m);
    assert!(texts(&ev).is_empty(), "the intruder read bob: {ev:?}");
}

/// The joiner's side: an invitation bound to another account is refused before any
/// commit is built (the steward would refuse it too).
#[test]
fn a_joiner_refuses_an_invitation_bound_to_another_account() {
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let b = net.add(2, "bob");
    let c = net.add(3, "carol");
    let g = net.create(a, "secret club", false);
    let now = net.now;
    let bob_account = net.core(b).account_key();
    let for_bob = net.core(a).invite(now, &g, Some(bob_account)).unwrap();
    net.core(c).join(now, NODE.to_vec(), g, Some(for_bob), None).unwrap();
    net.pump();
    let ev = net.events(c);
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { code: ErrorCode::BadMlsMessage, .. })), "{ev:?}");
    assert!(!net.core(c).groups().contains(&g));
    assert_eq!(net.core(a).members(&g).len(), 1);
}

/// The joiner's side: a node that answers with the GroupInfo of a group whose policy does
/// not name the inviting admin (here: the token relabelled onto another group) is refused
/// before any commit is built.
#[test]
fn a_joiner_refuses_a_group_info_whose_policy_does_not_name_the_inviter() {
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let m = net.add(3, "mallory");
    let g = net.create(a, "secret club", false);
    let own = net.create(m, "mallory's", false);
    let now = net.now;
    let mut token = net.core(m).invite(now, &own, None).unwrap();
    token.group_id = g;
    net.core(m).join(now, NODE.to_vec(), g, Some(token), None).unwrap();
    net.pump();
    let ev = net.events(m);
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { code: ErrorCode::BadMlsMessage, .. })), "{ev:?}");
    assert!(!net.core(m).groups().contains(&g));
}

/// The token the steward checks and redeems must be the one the joiner signed into its
/// commit (which members check): a frame carrying another valid token is refused.
#[test]
fn the_steward_refuses_a_join_whose_token_is_not_the_one_in_the_commit() {
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let c = net.add(3, "carol");
    let g = net.create(a, "secret club", false);
    let now = net.now;
    let signed = net.core(a).invite(now, &g, None).unwrap();
    let other = net.core(a).invite(now, &g, None).unwrap();
    net.set_filter(move |dir, _, mut env| {
        if let (Dir::ToNode, Body::GroupUpload { invite: Some(t), .. }) = (dir, &mut env.body) {
            *t = other.clone();
        }
        vec![env]
    });
    net.core(c).join(now, NODE.to_vec(), g, Some(signed), None).unwrap();
    net.pump();
    let ev = net.events(c);
    assert!(ev.iter().any(|e| matches!(e, GroupEvent::Error { code: ErrorCode::BadInvite, .. })), "{ev:?}");
    assert_eq!(net.core(a).members(&g).len(), 1);
}

/// Issue 10, item 10: de-duplication is on (sender, id). bob (with the steward holding
/// alice's upload back) logs a message of his own under alice's id first; alice's message
/// still reaches carol.
#[test]
fn another_senders_message_with_the_victims_id_does_not_pre_empt_it() {
    let (mut net, g) = three(true);
    let held: Rc<RefCell<Vec<Envelope>>> = Rc::new(RefCell::new(Vec::new()));
    let keep = held.clone();
    net.set_filter(move |dir, tag, env| {
        if dir == Dir::ToNode && tag == SenderTag([1; 16]) && matches!(env.body, Body::GroupUpload { .. }) {
            keep.borrow_mut().push(env);
            return Vec::new();
        }
        vec![env]
    });
    let victim = net.send(0, &g, "meet at noon");
    let bob_key = net.key(1);
    let squatter = SyncMessage {
        version: SYNC_VERSION,
        lamport: 1,
        sender: bob_key,
        msg_id: victim,
        history: Vec::new(),
        bloom: BloomFilter::new().into_bytes(),
        body: SyncBody::Text { text: "meet at midnight".into() },
    };
    let now = net.now;
    net.core(1).send_sync_unchecked(now, &g, squatter).unwrap();
    net.pump();
    net.clear_filter();
    for env in held.borrow_mut().drain(..) {
        let bytes = encode_frame(&env).unwrap();
        net.node.handle_frame(now, Peer::Tag(SenderTag([1; 16])), &bytes);
    }
    net.pump();
    let got = texts(&net.events(2));
    assert_eq!(got, vec![("bob".into(), "meet at midnight".into()), ("alice".into(), "meet at noon".into())]);
}

/// Issue 10, item 3: the username in a credential is self-asserted. Two leaves claim
/// "alice" under different account keys: the roster tells them apart by account key,
/// only the one whose account key the viewer pinned is vouched for, and "alice" names
/// exactly one leaf (the vouched one), or none while ambiguous; a key names exactly one.
#[test]
fn two_leaves_claiming_one_name_are_told_apart_and_removed_one_at_a_time() {
    use nymstr_client_core::group::{GroupError, resolve_member};
    let mut net = Net::new();
    let a = net.add(1, "alice");
    let b = net.add(2, "bob");
    let m = net.add(3, "alice");
    let g = net.create(b, "open house", true);
    net.join(a, g, None);
    net.join(m, g, None);
    let members = net.core(b).members(&g);
    let alices: Vec<_> = members.iter().filter(|x| x.username == "alice").collect();
    assert_eq!(alices.len(), 2);
    assert!(alices.iter().all(|x| x.verified), "both credentials are valid");
    let real = alices.iter().find(|x| x.key == net.key(a)).unwrap().account_key.unwrap();
    let fake = alices.iter().find(|x| x.key == net.key(m)).unwrap().account_key.unwrap();
    assert_ne!(real, fake);
    let vouched: Vec<_> = alices.iter().filter(|x| x.vouched(Some(&real))).map(|x| x.key).collect();
    assert_eq!(vouched, vec![net.key(a)], "only the pinned alice is shown as alice");
    assert_eq!(resolve_member(&members, "alice", Some(&real)), Ok(net.key(a)));
    assert_eq!(resolve_member(&members, "alice", None), Err(GroupError::AmbiguousMember));
    let prefix: String = net.key(m)[..6].iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(resolve_member(&members, &prefix, None), Ok(net.key(m)));
    // Removing "alice" removes one leaf.
    let now = net.now;
    let k = resolve_member(&members, "alice", Some(&real)).unwrap();
    net.core(b).remove(now, &g, &k).unwrap();
    net.advance(nymstr_mls::COMMIT_ROUND_US);
    let left: Vec<_> = net.core(b).members(&g).into_iter().map(|x| x.key).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&net.key(m)) && !left.contains(&net.key(a)));
}
