//! Direct mode (`specs/direct.md`) with real cores and no sockets: three `ClientCore`s and
//! a `NodeCore`, pumped by hand. Direct transmits are handed to the addressed client's
//! `handle_direct_frame` (or fail, when a test says its listener is down), and its
//! replies go back to the sender as the attempt's answer.

use nymstr_client_core::seal::DirectAddress;
use nymstr_client_core::{ClientConfig, ClientCore, Event, Via};
use nymstr_node_core::actors::SenderTag;
use nymstr_node_core::store::{MemStore, Store};
use nymstr_node_core::{NodeConfig, NodeCore, Output, Peer};
use nymstr_proto::codec::encode_frame;
use nymstr_proto::wire::{Body, Envelope, ErrorCode};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_700_000_000_000_000;

struct Client {
    tag: SenderTag,
    core: ClientCore,
    /// Our listener accepts connections.
    listening: bool,
    events: Vec<Event>,
}

struct World {
    node: NodeCore<MemStore>,
    now: u64,
    clients: Vec<Client>,
    /// Answers from a direct peer are lost (the peer got the frame; the sender never
    /// learns it).
    lose_direct_answers: bool,
}

fn addr(i: usize) -> DirectAddress {
    DirectAddress::Tcp(format!("127.0.0.1:{}", 7000 + i))
}

impl World {
    fn new(names: &[&str]) -> World {
        let node = NodeCore::start(T0, MemStore::new(), ChaCha20Rng::seed_from_u64(1), NodeConfig::default()).unwrap();
        let mut w = World { node, now: T0, clients: Vec::new(), lose_direct_answers: false };
        for (i, name) in names.iter().enumerate() {
            let core = ClientCore::new(ChaCha20Rng::seed_from_u64(10 + i as u64), ClientConfig::default());
            w.clients.push(Client { tag: SenderTag([i as u8 + 1; 16]), core, listening: false, events: Vec::new() });
            w.clients[i].core.register(w.now, name).unwrap();
            w.pump();
        }
        for c in &mut w.clients {
            assert!(c.core.is_registered());
            c.events.clear();
        }
        w
    }

    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                let tag = self.clients[i].tag;
                let envs: Vec<Envelope> = self.clients[i].core.drain_transmits().collect();
                for env in envs {
                    moved = true;
                    self.node.handle_frame(self.now, Peer::Tag(tag), &encode_frame(&env).unwrap());
                }
                let directs: Vec<_> = self.clients[i].core.drain_direct_transmits().collect();
                for t in directs {
                    moved = true;
                    let target = self.clients.iter().position(|c| addr_of(c, &self.clients) == t.addr);
                    let target = target.filter(|j| self.clients[*j].listening);
                    let Some(j) = target else {
                        self.clients[i].core.direct_failed(self.now, t.attempt, "connection refused");
                        continue;
                    };
                    // The connection id is the attempt id: one connection per attempt.
                    self.clients[j].core.handle_direct_frame(self.now, t.attempt, &encode_frame(&t.envelope).unwrap());
                    let replies: Vec<_> = self.clients[j].core.drain_direct_replies().collect();
                    assert!(replies.len() <= 1);
                    match replies.first() {
                        Some(r) if !self.lose_direct_answers => self.clients[i].core.handle_direct_answer(
                            self.now,
                            t.attempt,
                            &encode_frame(&r.envelope).unwrap(),
                        ),
                        _ => self.clients[i].core.direct_failed(self.now, t.attempt, "no answer"),
                    }
                }
            }
            let outs: Vec<Output> = self.node.drain_outputs().collect();
            if !outs.is_empty() {
                self.node.store_mut().flush().unwrap();
            }
            for Output::Send { to, envelope, .. } in outs {
                moved = true;
                let Peer::Tag(tag) = to else { panic!("a client has no address at the node") };
                if let Some(c) = self.clients.iter_mut().find(|c| c.tag == tag) {
                    c.core.handle_frame(self.now, &encode_frame(&envelope).unwrap());
                }
            }
            for c in &mut self.clients {
                while let Some(e) = c.core.poll_event() {
                    c.events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the pump did not settle");
    }

    fn events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.clients[i].events)
    }

    /// Client `i` listens at its address (and answers offers of the contacts it approved).
    fn listen(&mut self, i: usize) {
        self.clients[i].listening = true;
        self.clients[i].core.set_direct_address(self.now, Some(addr(i))).unwrap();
        self.pump();
    }

    fn relayed(&self) -> u64 {
        self.node.stats.dms_accepted
    }
}

fn addr_of(c: &Client, all: &[Client]) -> DirectAddress {
    addr(all.iter().position(|x| x.tag == c.tag).unwrap())
}

const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;

/// alice and bob listen and each approves the other (bob first); alice offers and bob,
/// who approved her, accepts.
fn handshake() -> World {
    let mut w = World::new(&["alice", "bob", "carol"]);
    w.listen(ALICE);
    w.listen(BOB);
    w.clients[BOB].core.offer_direct(w.now, "alice").unwrap();
    w.pump();
    w.clients[ALICE].core.offer_direct(w.now, "bob").unwrap();
    w.pump();
    assert!(w.events(ALICE).contains(&Event::DirectReady { peer: "bob".into(), addr: addr(BOB) }));
    assert!(w.events(BOB).contains(&Event::DirectReady { peer: "alice".into(), addr: addr(ALICE) }));
    w
}

fn received(events: &[Event]) -> Vec<(String, Vec<u8>, Via)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Received { from, body, via, .. } => Some((from.clone(), body.clone(), *via)),
            _ => None,
        })
        .collect()
}

#[test]
fn after_the_handshake_messages_skip_the_node() {
    let mut w = handshake();
    let before = w.relayed();
    let msg_id = w.clients[ALICE].core.send_dm(w.now, "bob", b"psst").unwrap();
    w.pump();
    assert_eq!(w.relayed(), before, "the node relayed nothing");
    assert_eq!(received(&w.events(BOB)), vec![("alice".into(), b"psst".to_vec(), Via::Direct)]);
    let events = w.events(ALICE);
    assert!(events.contains(&Event::DirectDelivered { to: "bob".into(), msg_id }));
    assert!(events.contains(&Event::SendAcked { to: "bob".into(), msg_id }));
    // And back: bob reaches alice directly too.
    w.clients[BOB].core.send_dm(w.now, "alice", b"ok").unwrap();
    w.pump();
    assert_eq!(w.relayed(), before);
    assert_eq!(received(&w.events(ALICE)), vec![("bob".into(), b"ok".to_vec(), Via::Direct)]);
}

#[test]
fn a_dead_address_falls_back_to_the_relay_and_rests() {
    let mut w = handshake();
    w.clients[BOB].listening = false; // bob's listener is gone (crashed, no goodbye)
    let before = w.relayed();
    let msg_id = w.clients[ALICE].core.send_dm(w.now, "bob", b"still there?").unwrap();
    w.pump();
    assert_eq!(w.relayed(), before + 1, "the relay carried it");
    let events = w.events(ALICE);
    assert!(events.iter().any(|e| matches!(e, Event::DirectFailed { to, .. } if to == "bob")));
    assert!(events.contains(&Event::SendAcked { to: "bob".into(), msg_id }));
    assert_eq!(received(&w.events(BOB)), vec![("alice".into(), b"still there?".to_vec(), Via::Relay)]);
    // The route rests: the next message goes straight to the relay, without a failed try.
    w.clients[ALICE].core.send_dm(w.now, "bob", b"again").unwrap();
    w.pump();
    assert!(!w.events(ALICE).iter().any(|e| matches!(e, Event::DirectFailed { .. })));
    assert_eq!(w.relayed(), before + 2);
    assert_eq!(received(&w.events(BOB)), vec![("alice".into(), b"again".to_vec(), Via::Relay)]);
    // After the rest the route is tried again, and works once bob listens again.
    w.clients[BOB].listening = true;
    w.now += ClientConfig::default().direct_backoff_us;
    w.clients[ALICE].core.send_dm(w.now, "bob", b"back?").unwrap();
    w.pump();
    assert_eq!(w.relayed(), before + 2);
    assert_eq!(received(&w.events(BOB)), vec![("alice".into(), b"back?".to_vec(), Via::Direct)]);
}

#[test]
fn a_message_that_went_both_ways_surfaces_once() {
    let mut w = handshake();
    w.lose_direct_answers = true; // bob gets it directly, alice never hears back
    let msg_id = w.clients[ALICE].core.send_dm(w.now, "bob", b"twice?").unwrap();
    w.pump();
    let before_relay = w.relayed();
    assert!(before_relay > 0);
    assert!(w.events(ALICE).contains(&Event::SendAcked { to: "bob".into(), msg_id }));
    let got = received(&w.events(BOB));
    assert_eq!(got, vec![("alice".into(), b"twice?".to_vec(), Via::Direct)], "the relayed copy is a duplicate");
    assert_eq!(w.node.queued_total(), 0, "bob acknowledged the relayed copy too");
}

#[test]
fn direct_frames_from_contacts_without_agreement_are_refused() {
    let mut w = handshake();
    // carol knows bob's address somehow, and sends him a direct frame.
    w.clients[CAROL].core.lookup(w.now, "bob").unwrap();
    w.pump();
    let deliver = Envelope {
        request_id: 9,
        body: Body::Deliver {
            delivery_id: 0,
            from_username: "carol".into(),
            from: [0; 32],
            msg_id: [1; 16],
            sealed: vec![0; 64],
        },
    };
    w.clients[BOB].core.handle_direct_frame(w.now, 77, &encode_frame(&deliver).unwrap());
    let replies: Vec<_> = w.clients[BOB].core.drain_direct_replies().collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].conn, 77);
    assert!(matches!(replies[0].envelope.body, Body::Error { code: ErrorCode::UnexpectedMessage, .. }));
    // Garbage gets an error, not a panic.
    w.clients[BOB].core.handle_direct_frame(w.now, 78, &[1, 2, 3]);
    let replies: Vec<_> = w.clients[BOB].core.drain_direct_replies().collect();
    assert!(matches!(replies[0].envelope.body, Body::Error { code: ErrorCode::Malformed, .. }));
    w.pump();
    assert!(received(&w.events(BOB)).is_empty());
}

#[test]
fn an_offer_to_someone_not_listening_is_noted_not_accepted() {
    let mut w = World::new(&["alice", "bob"]);
    w.listen(ALICE);
    w.clients[ALICE].core.offer_direct(w.now, "bob").unwrap();
    w.pump();
    // bob does not listen directly: he learns the offer but reveals nothing.
    assert!(w.events(BOB).contains(&Event::DirectOffered { peer: "alice".into(), addr: addr(ALICE) }));
    assert!(!w.events(ALICE).iter().any(|e| matches!(e, Event::DirectReady { .. })));
    assert!(w.clients[BOB].core.direct_peer("alice").is_none(), "nothing kept of an unapproved offer");
    // bob's messages still go through the node (he has not agreed to reveal himself).
    let before = w.relayed();
    w.clients[BOB].core.send_dm(w.now, "alice", b"via node").unwrap();
    w.pump();
    assert_eq!(w.relayed(), before + 1);
    // Once bob listens and approves alice (he offers too), both sides are ready.
    w.listen(BOB);
    w.clients[BOB].core.offer_direct(w.now, "alice").unwrap();
    w.pump();
    assert!(w.events(ALICE).contains(&Event::DirectReady { peer: "bob".into(), addr: addr(BOB) }));
    assert!(w.events(BOB).contains(&Event::DirectReady { peer: "alice".into(), addr: addr(ALICE) }));
}

#[test]
fn a_listener_never_reveals_its_address_to_a_stranger_nor_dials_the_strangers() {
    // bob listens directly; carol, whom bob never approved, offers him direct delivery.
    let mut w = World::new(&["alice", "bob", "carol"]);
    w.listen(BOB);
    w.listen(CAROL);
    w.clients[CAROL].core.offer_direct(w.now, "bob").unwrap();
    w.pump();
    // bob reports the offer and answers nothing: carol never learns bob's address.
    assert!(w.events(BOB).contains(&Event::DirectOffered { peer: "carol".into(), addr: addr(CAROL) }));
    assert!(!w.events(CAROL).iter().any(|e| matches!(e, Event::DirectReady { .. })), "no DirectAccept for carol");
    assert!(w.clients[CAROL].core.direct_peer("bob").unwrap().routes.is_empty(), "carol holds no route to bob");
    // bob kept nothing of carol's offer, and his messages to her go through the node:
    // he never dials the address a stranger offered.
    assert!(w.clients[BOB].core.direct_peer("carol").is_none());
    let before = w.relayed();
    w.clients[BOB].core.send_dm(w.now, "carol", b"who are you?").unwrap();
    w.pump();
    assert!(!w.events(BOB).iter().any(|e| matches!(e, Event::DirectFailed { .. } | Event::DirectDelivered { .. })));
    assert_eq!(w.relayed(), before + 1);
    assert_eq!(received(&w.events(CAROL)), vec![("bob".into(), b"who are you?".to_vec(), Via::Relay)]);
    // Once bob approves carol (he offers), she learns his address.
    w.clients[BOB].core.offer_direct(w.now, "carol").unwrap();
    w.pump();
    assert!(w.events(CAROL).contains(&Event::DirectReady { peer: "bob".into(), addr: addr(BOB) }));
}

#[test]
fn withdrawing_sends_peers_back_to_the_relay_and_a_restart_re_offers() {
    let mut w = handshake();
    w.clients[BOB].core.withdraw_direct(w.now).unwrap();
    w.clients[BOB].listening = false;
    w.pump();
    assert!(w.events(ALICE).contains(&Event::DirectWithdrawn { peer: "bob".into() }));
    let before = w.relayed();
    w.clients[ALICE].core.send_dm(w.now, "bob", b"relay please").unwrap();
    w.pump();
    assert!(
        !w.events(ALICE).iter().any(|e| matches!(e, Event::DirectFailed { .. })),
        "no attempt at a withdrawn address"
    );
    assert_eq!(w.relayed(), before + 1);
    // bob comes back (a new run: state restored) and re-offers to the peers he agreed with.
    let state = w.clients[BOB].core.export_state();
    w.clients[BOB].core = ClientCore::restore(ChaCha20Rng::seed_from_u64(99), ClientConfig::default(), state).unwrap();
    w.clients[BOB].core.login(w.now).unwrap();
    w.listen(BOB);
    assert!(w.events(ALICE).contains(&Event::DirectReady { peer: "bob".into(), addr: addr(BOB) }));
    let before = w.relayed();
    w.clients[ALICE].core.send_dm(w.now, "bob", b"direct again").unwrap();
    w.pump();
    assert_eq!(w.relayed(), before);
}
