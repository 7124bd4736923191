//! `ClientCore` against `NodeCore` end to end, through a tiny in-test pump that plays the
//! transport and the node's host: client transmits are encoded and fed to the node from
//! the client's sender tag; node outputs wait until the store is flushed past their
//! `durable_after`, then are encoded and fed to the client holding that tag. Filters on
//! both directions let a test lose, duplicate or tamper with frames.

use nymstr_client_core::seal::{OpenError, SealedDm};
use nymstr_client_core::{ClientConfig, ClientCore, Event, Operation};
use nymstr_node_core::actors::SenderTag;
use nymstr_node_core::store::{MemStore, Store};
use nymstr_node_core::{NodeConfig, NodeCore, Output, Peer};
use nymstr_proto::codec::{self, decode_frame, encode_frame};
use nymstr_proto::wire::{Body, Envelope, ErrorCode, MsgId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_700_000_000_000_000;

/// Which way a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToNode,
    ToClient,
}

type Filter = Box<dyn FnMut(Dir, SenderTag, Envelope) -> Vec<Envelope>>;

struct Net {
    node: NodeCore<MemStore>,
    now: u64,
    clients: Vec<(SenderTag, ClientCore)>,
    /// Node outputs waiting for their write to become durable.
    held: Vec<(SenderTag, Envelope, u64)>,
    filter: Filter,
    /// Every frame that reached a client, for assertions.
    delivered: Vec<(SenderTag, Envelope)>,
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
            clients: Vec::new(),
            held: Vec::new(),
            filter: Box::new(|_, _, e| vec![e]),
            delivered: Vec::new(),
        }
    }

    /// Adds a client speaking from tag `[n; 16]`; returns its index.
    fn add_client(&mut self, n: u8) -> usize {
        let client = ClientCore::new(ChaCha20Rng::seed_from_u64(100 + u64::from(n)), ClientConfig::default());
        self.clients.push((SenderTag([n; 16]), client));
        self.clients.len() - 1
    }

    fn client(&mut self, i: usize) -> &mut ClientCore {
        &mut self.clients[i].1
    }

    fn set_filter(&mut self, f: impl FnMut(Dir, SenderTag, Envelope) -> Vec<Envelope> + 'static) {
        self.filter = Box::new(f);
    }

    fn clear_filter(&mut self) {
        self.filter = Box::new(|_, _, e| vec![e]);
    }

    /// Moves frames both ways until nothing is left to move.
    fn pump(&mut self) {
        for _round in 0..1_000 {
            let mut moved = false;
            // Clients -> node.
            for i in 0..self.clients.len() {
                let tag = self.clients[i].0;
                let envelopes: Vec<Envelope> = self.clients[i].1.drain_transmits().collect();
                for env in envelopes {
                    moved = true;
                    for env in (self.filter)(Dir::ToNode, tag, env) {
                        let bytes = encode_frame(&env).expect("client frames encode");
                        self.node.handle_frame(self.now, Peer::Tag(tag), &bytes);
                    }
                }
            }
            // Node -> hold until durable.
            for Output::Send { to, envelope, durable_after } in self.node.drain_outputs().collect::<Vec<_>>() {
                moved = true;
                let Peer::Tag(to) = to else { panic!("the node answered a client at an address") };
                self.held.push((to, envelope, durable_after));
            }
            if self.held.iter().any(|(_, _, d)| *d > self.node.store().durable_seq()) {
                self.node.store_mut().flush().unwrap();
            }
            // Node -> clients.
            let durable = self.node.store().durable_seq();
            let (ready, waiting): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(_, _, d)| *d <= durable);
            self.held = waiting;
            for (to, env, _) in ready {
                for env in (self.filter)(Dir::ToClient, to, env) {
                    let bytes = encode_frame(&env).expect("node frames encode");
                    assert_eq!(decode_frame(&bytes).unwrap(), env);
                    self.delivered.push((to, env));
                    // A frame to a tag no client holds any more is lost, as in the mixnet.
                    if let Some((_, client)) = self.clients.iter_mut().find(|(t, _)| *t == to) {
                        client.handle_frame(self.now, &bytes);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the pump did not settle");
    }

    /// Advances time to `at`, running every client's and the node's timeouts, and pumps.
    fn advance_to(&mut self, at: u64) {
        self.now = at;
        for (_, c) in &mut self.clients {
            if c.poll_timeout().is_some_and(|t| t <= at) {
                c.handle_timeout(at);
            }
        }
        if self.node.poll_timeout().is_some_and(|t| t <= at) {
            self.node.handle_timeout(at);
        }
        self.pump();
    }

    fn events(&mut self, i: usize) -> Vec<Event> {
        std::iter::from_fn(|| self.clients[i].1.poll_event()).collect()
    }

    fn register(&mut self, i: usize, name: &str) {
        let now = self.now;
        self.client(i).register(now, name).unwrap();
        self.pump();
        let events = self.events(i);
        assert_eq!(events, vec![Event::Registered { username: name.to_string() }]);
        assert!(self.client(i).is_registered());
    }

    fn send(&mut self, i: usize, to: &str, body: &[u8]) -> MsgId {
        let now = self.now;
        let id = self.client(i).send_dm(now, to, body).unwrap();
        self.pump();
        id
    }
}

fn received(events: &[Event]) -> Vec<(String, MsgId, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Received { from, msg_id, body, .. } => Some((from.clone(), *msg_id, body.clone())),
            _ => None,
        })
        .collect()
}

/// How many `Deliver`s of `msg_id` reached a client.
fn delivers_of(net: &Net, msg_id: MsgId) -> usize {
    net.delivered.iter().filter(|(_, e)| matches!(e.body, Body::Deliver { msg_id: m, .. } if m == msg_id)).count()
}

fn alice_and_bob() -> (Net, usize, usize) {
    let mut net = Net::new();
    let alice = net.add_client(1);
    let bob = net.add_client(2);
    net.register(alice, "alice");
    net.register(bob, "bob");
    (net, alice, bob)
}

#[test]
fn alice_registers_bob_registers_and_alice_messages_bob() {
    let (mut net, alice, bob) = alice_and_bob();
    let msg_id = net.send(alice, "bob", b"hello bob");

    assert_eq!(
        net.events(alice),
        vec![Event::LookedUp { username: "bob".into() }, Event::SendAcked { to: "bob".into(), msg_id }]
    );
    let events = net.events(bob);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], Event::LookedUp { username: "alice".into() }, "bob looks alice up to verify her");
    assert_eq!(received(&events), vec![("alice".to_string(), msg_id, b"hello bob".to_vec())]);
    let Event::Received { sent_at_us, .. } = events[1] else { unreachable!() };
    assert_eq!(sent_at_us, T0);

    // Bob acknowledged the delivery: the node holds nothing; nobody waits for anything.
    assert_eq!(net.node.queued_total(), 0);
    assert!(net.client(alice).is_idle() && net.client(bob).is_idle());
    assert_eq!(net.client(alice).unacked_sends(), 0);
    // Bob pinned alice's account key from the lookup.
    let alice_key = net.client(alice).identity().unwrap().account.verifying_key().to_bytes();
    assert_eq!(net.client(bob).contact("alice").unwrap().account_key, alice_key);
}

#[test]
fn a_reply_uses_the_cached_contact() {
    let (mut net, alice, bob) = alice_and_bob();
    net.send(alice, "bob", b"ping");
    net.events(alice);
    net.events(bob);
    let reply = net.send(bob, "alice", b"pong");
    assert_eq!(net.events(bob), vec![Event::SendAcked { to: "alice".into(), msg_id: reply }]);
    assert_eq!(received(&net.events(alice)), vec![("bob".into(), reply, b"pong".to_vec())]);
    let lookups = net.delivered.iter().filter(|(_, e)| matches!(e.body, Body::LookupResult { .. })).count();
    assert_eq!(lookups, 2, "one lookup each way, no more");
}

#[test]
fn several_messages_arrive_in_order_and_once() {
    let (mut net, alice, bob) = alice_and_bob();
    let now = net.now;
    let ids: Vec<MsgId> = (0..5u8).map(|n| net.client(alice).send_dm(now, "bob", &[n]).unwrap()).collect();
    net.pump();
    let got = received(&net.events(bob));
    assert_eq!(got.iter().map(|r| r.1).collect::<Vec<_>>(), ids);
    assert_eq!(got.iter().map(|r| r.2.clone()).collect::<Vec<_>>(), (0..5u8).map(|n| vec![n]).collect::<Vec<_>>());
    assert_eq!(net.node.queued_total(), 0);
}

#[test]
fn a_tampered_sealed_payload_is_rejected_at_the_recipient_not_received() {
    let (mut net, alice, bob) = alice_and_bob();
    net.set_filter(|dir, _, mut env| {
        if dir == Dir::ToClient
            && let Body::Deliver { sealed, .. } = &mut env.body
        {
            let mut parsed: SealedDm = codec::decode(sealed).unwrap();
            parsed.ciphertext[3] ^= 0x80;
            *sealed = codec::encode(&parsed);
        }
        vec![env]
    });
    let msg_id = net.send(alice, "bob", b"hello");
    let events = net.events(bob);
    assert!(received(&events).is_empty(), "{events:?}");
    assert!(
        events.contains(&Event::Rejected { from: "alice".into(), msg_id, reason: OpenError::Decrypt }),
        "{events:?}"
    );
    // The sender's ack is about the node holding it, which it did.
    assert!(net.events(alice).contains(&Event::SendAcked { to: "bob".into(), msg_id }));
    // A rejected delivery is still acknowledged, so the node stops redelivering it.
    assert_eq!(net.node.queued_total(), 0);
    net.clear_filter();
    let later = net.now + 10 * net.node.config().redeliver_after_us;
    net.advance_to(later);
    assert!(net.events(bob).is_empty());
}

#[test]
fn a_deliver_duplicated_in_transit_is_surfaced_once() {
    let (mut net, alice, bob) = alice_and_bob();
    net.set_filter(|dir, _, env| {
        if dir == Dir::ToClient && matches!(env.body, Body::Deliver { .. }) {
            vec![env.clone(), env]
        } else {
            vec![env]
        }
    });
    let msg_id = net.send(alice, "bob", b"once");
    let events = net.events(bob);
    assert_eq!(received(&events), vec![("alice".into(), msg_id, b"once".to_vec())], "{events:?}");
    assert_eq!(net.node.queued_total(), 0);

    // Also once a contact is cached (the duplicate takes the other path through the client).
    let second = net.send(alice, "bob", b"twice?");
    assert_eq!(received(&net.events(bob)), vec![("alice".into(), second, b"twice?".to_vec())]);
}

#[test]
fn a_redelivery_after_a_lost_ack_is_surfaced_once() {
    let (mut net, alice, bob) = alice_and_bob();
    // Bob's first acknowledgement is lost on the way to the node.
    let mut lost = false;
    net.set_filter(move |dir, _, env| {
        if dir == Dir::ToNode && matches!(env.body, Body::AckDelivery { .. }) && !lost {
            lost = true;
            return vec![];
        }
        vec![env]
    });
    let msg_id = net.send(alice, "bob", b"hi");
    assert_eq!(received(&net.events(bob)).len(), 1);
    assert_eq!(net.node.queued_total(), 1, "the node never saw the ack");

    let at = net.now + net.node.config().redeliver_after_us;
    net.advance_to(at);
    assert_eq!(net.node.stats.redeliveries, 1);
    let events = net.events(bob);
    assert!(received(&events).is_empty(), "surfaced twice: {events:?}");
    assert_eq!(net.node.queued_total(), 0, "the redelivery was acknowledged");
    assert_eq!(delivers_of(&net, msg_id), 2, "bob did get the message twice");
}

#[test]
fn a_lost_send_ack_makes_the_client_retry_and_the_node_deduplicate() {
    let (mut net, alice, bob) = alice_and_bob();
    let mut lost = false;
    net.set_filter(move |dir, _, env| {
        if dir == Dir::ToClient && matches!(env.body, Body::SendAck { .. }) && !lost {
            lost = true;
            return vec![];
        }
        vec![env]
    });
    let msg_id = net.send(alice, "bob", b"hi");
    assert_eq!(net.events(alice), vec![Event::LookedUp { username: "bob".into() }]);
    assert_eq!(net.client(alice).unacked_sends(), 1);
    assert_eq!(received(&net.events(bob)).len(), 1);

    let retry_at = net.client(alice).poll_timeout().expect("a retry is scheduled");
    net.advance_to(retry_at);
    assert_eq!(net.events(alice), vec![Event::SendAcked { to: "bob".into(), msg_id }]);
    assert!(received(&net.events(bob)).is_empty(), "the retry was not delivered again");
    assert_eq!(net.node.queued_total(), 0);
    assert_eq!(net.client(alice).unacked_sends(), 0);
}

#[test]
fn a_message_from_someone_else_relabelled_by_the_node_is_rejected() {
    // A malicious node rewrites the sender name of mallory's message to "alice".
    let (mut net, _alice, bob) = alice_and_bob();
    let mallory = net.add_client(3);
    net.register(mallory, "mallory");
    net.set_filter(|dir, _, mut env| {
        if dir == Dir::ToClient
            && let Body::Deliver { from_username, .. } = &mut env.body
        {
            *from_username = "alice".into();
        }
        vec![env]
    });
    let msg_id = net.send(mallory, "bob", b"I am alice");
    let events = net.events(bob);
    assert!(received(&events).is_empty(), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, Event::Rejected { from, msg_id: m, .. } if from == "alice" && *m == msg_id))
    );
    assert_eq!(net.node.queued_total(), 0);
}

#[test]
fn messages_wait_for_an_offline_recipient_and_arrive_when_it_logs_in() {
    let (mut net, alice, bob) = alice_and_bob();
    // Bob goes offline: frames to his tag are lost.
    let old_tag = net.clients[bob].0;
    net.clients[bob].0 = SenderTag([0xb0; 16]);
    let m1 = net.send(alice, "bob", b"one");
    let m2 = net.send(alice, "bob", b"two");
    assert!(net.events(bob).is_empty());
    assert_eq!(net.node.queued_total(), 2);
    assert!(net.delivered.iter().any(|(t, e)| *t == old_tag && matches!(e.body, Body::Deliver { .. })));

    // Back with a fresh tag: log in.
    let now = net.now;
    net.client(bob).login(now).unwrap();
    net.pump();
    let events = net.events(bob);
    assert_eq!(events[0], Event::LoggedIn { queued: 2 });
    assert_eq!(received(&events), vec![("alice".into(), m1, b"one".to_vec()), ("alice".into(), m2, b"two".to_vec())]);
    assert_eq!(net.node.queued_total(), 0);
}

#[test]
fn sending_to_an_unknown_user_fails_the_lookup_and_the_send() {
    let (mut net, alice, _bob) = alice_and_bob();
    let msg_id = net.send(alice, "nobody", b"hello?");
    let events = net.events(alice);
    assert!(
        matches!(
            &events[..],
            [
                Event::Failed { what: Operation::Lookup(name), code: ErrorCode::UnknownUser, .. },
                Event::Failed { what: Operation::Send { to, msg_id: m }, code: ErrorCode::UnknownUser, .. },
            ] if name == "nobody" && to == "nobody" && *m == msg_id
        ),
        "{events:?}"
    );
    assert!(net.client(alice).is_idle());
    assert_eq!(net.client(alice).unacked_sends(), 0);
}

#[test]
fn registering_a_taken_username_fails() {
    let (mut net, _alice, _bob) = alice_and_bob();
    let impostor = net.add_client(3);
    let now = net.now;
    net.client(impostor).register(now, "Alice").unwrap();
    net.pump();
    let events = net.events(impostor);
    assert!(
        matches!(&events[..], [Event::Failed { what: Operation::Register, code: ErrorCode::UsernameTaken, .. }]),
        "{events:?}"
    );
    assert!(!net.client(impostor).is_registered());
}

#[test]
fn a_registration_survives_a_lost_challenge_and_a_lost_answer() {
    let mut net = Net::new();
    let alice = net.add_client(1);
    let mut dropped = 0;
    net.set_filter(move |dir, _, env| {
        if dir == Dir::ToClient && matches!(env.body, Body::Challenge { .. } | Body::Registered { .. }) && dropped < 2 {
            // Drop the first challenge, then the first Registered.
            let first_of_kind = (dropped == 0 && matches!(env.body, Body::Challenge { .. }))
                || (dropped == 1 && matches!(env.body, Body::Registered { .. }));
            if first_of_kind {
                dropped += 1;
                return vec![];
            }
        }
        vec![env]
    });
    let now = net.now;
    net.client(alice).register(now, "alice").unwrap();
    net.pump();
    for _ in 0..4 {
        if let Some(t) = net.client(alice).poll_timeout() {
            net.advance_to(t);
        }
    }
    assert_eq!(net.events(alice), vec![Event::Registered { username: "alice".into() }]);
    assert!(net.client(alice).is_idle());
}

#[test]
fn a_crash_before_the_flush_loses_nothing_that_was_acknowledged() {
    // The node crashes between queueing alice's message and flushing it: alice never got
    // an ack, retries, and bob receives the message exactly once.
    let (mut net, alice, bob) = alice_and_bob();
    let now = net.now;
    let msg_id = net.client(alice).send_dm(now, "bob", b"survive").unwrap();
    // Run alice's lookup and send by hand, without flushing the node's store.
    for _ in 0..3 {
        let tag = net.clients[alice].0;
        for env in net.clients[alice].1.drain_transmits().collect::<Vec<_>>() {
            net.node.handle_frame(now, Peer::Tag(tag), &encode_frame(&env).unwrap());
        }
        for Output::Send { envelope, durable_after, .. } in net.node.drain_outputs().collect::<Vec<_>>() {
            // Only what needs no flush can go out (the lookup result).
            if durable_after <= net.node.store().durable_seq() {
                net.clients[alice].1.handle_frame(now, &encode_frame(&envelope).unwrap());
            }
        }
    }
    assert_eq!(net.node.queued_total(), 1);
    assert!(net.node.store().write_seq() > net.node.store().durable_seq());

    let config = net.node.config().clone();
    let placeholder = NodeCore::start(now, MemStore::new(), ChaCha20Rng::seed_from_u64(0), config.clone()).unwrap();
    let mut store = std::mem::replace(&mut net.node, placeholder).into_store();
    store.crash();
    net.node = NodeCore::start(now, store, ChaCha20Rng::seed_from_u64(2), config).unwrap();
    assert_eq!(net.node.queued_total(), 0);

    let retry_at = net.client(alice).poll_timeout().unwrap();
    net.advance_to(retry_at);
    assert!(net.events(alice).contains(&Event::SendAcked { to: "bob".into(), msg_id }));
    assert_eq!(received(&net.events(bob)), vec![("alice".into(), msg_id, b"survive".to_vec())]);
    assert_eq!(net.node.queued_total(), 0);
}

impl Net {
    /// Sends `body` straight to the node from `tag` (a hand-driven peer) and returns the
    /// answers to it, flushing so they are releasable.
    fn raw_request(&mut self, tag: SenderTag, request_id: u64, body: Body) -> Vec<Envelope> {
        let bytes = encode_frame(&Envelope { request_id, body }).unwrap();
        self.node.handle_frame(self.now, Peer::Tag(tag), &bytes);
        self.node.store_mut().flush().unwrap();
        let mut answers = Vec::new();
        for Output::Send { to, envelope, .. } in self.node.drain_outputs().collect::<Vec<_>>() {
            if to == Peer::Tag(tag) && envelope.request_id == request_id {
                answers.push(envelope);
            } else {
                self.held.push((
                    match to {
                        Peer::Tag(t) => t,
                        Peer::Address(_) => unreachable!(),
                    },
                    envelope,
                    0,
                ));
            }
        }
        answers
    }

    /// Swaps in a node restarted after a power loss over the same store.
    fn crash_node(&mut self) {
        let config = self.node.config().clone();
        let placeholder =
            NodeCore::start(self.now, MemStore::new(), ChaCha20Rng::seed_from_u64(0), config.clone()).unwrap();
        let mut store = std::mem::replace(&mut self.node, placeholder).into_store();
        store.crash();
        // Outputs held for the dead node are gone with it.
        self.held.clear();
        self.node = NodeCore::start(self.now, store, ChaCha20Rng::seed_from_u64(self.now), config).unwrap();
    }
}

/// Adds a second installation (a laptop) to the account of client `of`, registered with
/// the node by hand, and a client core for it speaking from tag `[n; 16]`.
fn add_device(net: &mut Net, of: usize, n: u8) -> usize {
    use nymstr_client_core::Identity;
    use nymstr_proto::identity;
    let username = net.client(of).username().unwrap().to_string();
    let account = net.client(of).identity().unwrap().account.clone();
    let mut rng = ChaCha20Rng::seed_from_u64(500 + u64::from(n));
    let installation = identity::generate_signing_key(&mut rng);
    let dh = x25519_dalek::StaticSecret::from([n; 32]);
    let inst_pub = installation.verifying_key().to_bytes();
    let cert = identity::issue_cert(&account, &inst_pub, &x25519_dalek::PublicKey::from(&dh).to_bytes(), net.now);
    let installation_id = identity::installation_id(&inst_pub);
    let tag = SenderTag([n; 16]);

    let challenge = net.raw_request(tag, 1, Body::RegisterRequest { username: username.clone(), cert: cert.clone() });
    let [Envelope { body: Body::Challenge { nonce, node, .. }, .. }] = &challenge[..] else { panic!("{challenge:?}") };
    let account_sig =
        identity::sign(&account, &identity::register_account_bytes(nonce, node, &username, &installation_id));
    let installation_sig =
        identity::sign(&installation, &identity::register_installation_bytes(nonce, node, &username, &installation_id));
    let done = net.raw_request(tag, 2, Body::RegisterResponse { nonce: *nonce, account_sig, installation_sig });
    assert!(matches!(&done[..], [Envelope { body: Body::Registered { .. }, .. }]), "{done:?}");

    let id = Identity { account, installation, dh, cert, installation_id };
    let client = ClientCore::with_identity(
        ChaCha20Rng::seed_from_u64(600 + u64::from(n)),
        ClientConfig::default(),
        id,
        username,
    );
    net.clients.push((tag, client));
    net.clients.len() - 1
}

#[test]
fn a_message_reaches_every_installation_of_the_recipient() {
    // F1: an account receives messages on several installations.
    let (mut net, alice, bob) = alice_and_bob();
    let laptop = add_device(&mut net, bob, 3);
    let msg_id = net.send(alice, "bob", b"to all of bob");
    assert!(net.events(alice).contains(&Event::SendAcked { to: "bob".into(), msg_id }));
    for device in [bob, laptop] {
        assert_eq!(received(&net.events(device)), vec![("alice".into(), msg_id, b"to all of bob".to_vec())]);
    }
    assert_eq!(net.node.queued_total(), 0);
}

#[test]
fn a_node_restart_that_loses_a_challenge_makes_the_client_start_over() {
    let mut net = Net::new();
    let alice = net.add_client(1);
    let now = net.now;
    net.client(alice).register(now, "alice").unwrap();
    // Deliver the request and its challenge, but crash before the answer reaches the node.
    let tag = net.clients[alice].0;
    for env in net.clients[alice].1.drain_transmits().collect::<Vec<_>>() {
        net.node.handle_frame(now, Peer::Tag(tag), &encode_frame(&env).unwrap());
    }
    for Output::Send { envelope, .. } in net.node.drain_outputs().collect::<Vec<_>>() {
        net.clients[alice].1.handle_frame(now, &encode_frame(&envelope).unwrap());
    }
    net.crash_node();
    net.pump();
    assert_eq!(net.events(alice), vec![Event::Registered { username: "alice".into() }]);
    assert!(matches!(
        net.delivered.iter().find(|(_, e)| matches!(e.body, Body::Error { .. })).map(|(_, e)| &e.body),
        Some(Body::Error { code: ErrorCode::UnknownChallenge, .. })
    ));
}

#[test]
fn a_node_restart_that_loses_an_ack_redelivers_and_the_recipient_surfaces_once() {
    let (mut net, alice, bob) = alice_and_bob();
    // Bob's ack reaches the node, but the deletion it causes is never flushed.
    let msg_id = net.send(alice, "bob", b"hi");
    assert_eq!(received(&net.events(bob)).len(), 1);
    assert_eq!(net.node.queued_total(), 0);
    assert!(net.node.store().write_seq() > net.node.store().durable_seq(), "the ack's delete is not durable");
    net.crash_node();
    assert_eq!(net.node.queued_total(), 1, "the message is back");
    net.pump();
    let events = net.events(bob);
    assert!(received(&events).is_empty(), "surfaced twice: {events:?}");
    assert_eq!(net.node.queued_total(), 0, "and acknowledged again");
    assert_eq!(delivers_of(&net, msg_id), 2, "bob did get the message twice");
}

#[test]
fn a_full_queue_is_transient_for_the_sender() {
    let mut net = Net::with_config(NodeConfig { queue_depth_max: 1, ..NodeConfig::default() });
    let alice = net.add_client(1);
    let bob = net.add_client(2);
    net.register(alice, "alice");
    net.register(bob, "bob");
    // Bob is offline.
    net.clients[bob].0 = SenderTag([0xb0; 16]);
    let first = net.send(alice, "bob", b"1");
    let second = net.send(alice, "bob", b"2");
    let events = net.events(alice);
    assert!(events.contains(&Event::SendAcked { to: "bob".into(), msg_id: first }));
    assert!(!events.iter().any(|e| matches!(e, Event::Failed { .. })), "QueueFull is not a failure: {events:?}");
    assert_eq!(net.client(alice).unacked_sends(), 1);

    // Bob comes back and drains his queue; alice's retry then goes through.
    let now = net.now;
    net.client(bob).login(now).unwrap();
    net.pump();
    let retry_at = net.client(alice).poll_timeout().unwrap();
    net.advance_to(retry_at);
    assert_eq!(net.events(alice), vec![Event::SendAcked { to: "bob".into(), msg_id: second }]);
    let got: Vec<_> = received(&net.events(bob)).into_iter().map(|r| r.2).collect();
    assert_eq!(got, vec![b"1".to_vec(), b"2".to_vec()]);
}

#[test]
fn a_message_queued_twice_by_the_node_is_surfaced_once_and_both_copies_acked() {
    // The node (buggy or replaying) hands the same message over under two delivery ids,
    // both arriving before the recipient knows the sender.
    use std::cell::RefCell;
    use std::rc::Rc;
    let (mut net, alice, bob) = alice_and_bob();
    let acked = Rc::new(RefCell::new(Vec::new()));
    let seen_acks = acked.clone();
    net.set_filter(move |dir, _, env| match (&dir, &env.body) {
        (Dir::ToClient, Body::Deliver { delivery_id, .. }) => {
            let mut copy = env.clone();
            if let Body::Deliver { delivery_id: id, .. } = &mut copy.body {
                *id = delivery_id + 1_000;
            }
            vec![env, copy]
        }
        (Dir::ToNode, Body::AckDelivery { delivery_ids }) => {
            seen_acks.borrow_mut().extend(delivery_ids.iter().copied());
            vec![env]
        }
        _ => vec![env],
    });
    let msg_id = net.send(alice, "bob", b"once");
    assert_eq!(received(&net.events(bob)), vec![("alice".into(), msg_id, b"once".to_vec())]);
    let mut acked = acked.borrow().clone();
    acked.sort();
    assert_eq!(acked.len(), 2, "both copies acknowledged: {acked:?}");
    assert_eq!(acked[1], acked[0] + 1_000);
    assert_eq!(net.node.queued_total(), 0);

    // The same once bob knows alice (the copies take the cached-contact path).
    let second = net.send(alice, "bob", b"again");
    assert_eq!(received(&net.events(bob)), vec![("alice".into(), second, b"again".to_vec())]);
}

#[test]
fn a_stale_contact_is_looked_up_again_and_the_message_resent() {
    let (mut net, alice, bob) = alice_and_bob();
    net.send(alice, "bob", b"first");
    assert_eq!(received(&net.events(bob)).len(), 1);
    net.events(alice);
    // Bob adds a laptop: alice's cached contact now misses one of his installations.
    let laptop = add_device(&mut net, bob, 10);
    net.pump();
    let msg_id = net.send(alice, "bob", b"second");
    let events = net.events(alice);
    assert_eq!(
        events,
        vec![Event::LookedUp { username: "bob".into() }, Event::SendAcked { to: "bob".into(), msg_id }],
        "StaleRecipient is handled by a new lookup, not reported"
    );
    assert!(
        net.delivered.iter().any(|(_, e)| matches!(e.body, Body::Error { code: ErrorCode::StaleRecipient, .. })),
        "the node did refuse the stale send"
    );
    for device in [bob, laptop] {
        assert_eq!(received(&net.events(device)), vec![("alice".into(), msg_id, b"second".to_vec())]);
    }
    assert_eq!(net.node.queued_total(), 0);
}

#[test]
fn an_installation_key_belongs_to_one_account() {
    // Re-using a registered installation key under another account is refused.
    let (mut net, alice, _bob) = alice_and_bob();
    let stolen = net.client(alice).identity().unwrap().installation.clone();
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let other_account = nymstr_proto::identity::generate_signing_key(&mut rng);
    let inst_pub = stolen.verifying_key().to_bytes();
    let cert = nymstr_proto::identity::issue_cert(&other_account, &inst_pub, &[1; 32], net.now);
    let id = nymstr_proto::identity::installation_id(&inst_pub);
    let tag = SenderTag([0x55; 16]);
    let ch = net.raw_request(tag, 1, Body::RegisterRequest { username: "carol".into(), cert });
    let [Envelope { body: Body::Challenge { nonce, node, .. }, .. }] = &ch[..] else { panic!("{ch:?}") };
    let account_sig = nymstr_proto::identity::sign(
        &other_account,
        &nymstr_proto::identity::register_account_bytes(nonce, node, "carol", &id),
    );
    let installation_sig = nymstr_proto::identity::sign(
        &stolen,
        &nymstr_proto::identity::register_installation_bytes(nonce, node, "carol", &id),
    );
    let res = net.raw_request(tag, 2, Body::RegisterResponse { nonce: *nonce, account_sig, installation_sig });
    assert!(
        matches!(&res[..], [Envelope { body: Body::Error { code: ErrorCode::BadCertificate, .. }, .. }]),
        "{res:?}"
    );
    let lookup = net.raw_request(tag, 3, Body::Lookup { username: "carol".into() });
    assert!(matches!(&lookup[..], [Envelope { body: Body::Error { code: ErrorCode::UnknownUser, .. }, .. }]));
}

#[test]
fn the_largest_body_reaches_a_single_installation_recipient() {
    let (mut net, alice, bob) = alice_and_bob();
    let body = vec![0x42; nymstr_client_core::core::BODY_BYTES_MAX];
    let msg_id = net.send(alice, "bob", &body);
    assert!(net.events(alice).contains(&Event::SendAcked { to: "bob".into(), msg_id }));
    assert_eq!(received(&net.events(bob)), vec![("alice".into(), msg_id, body)]);
    let over = vec![0x42; nymstr_client_core::core::BODY_BYTES_MAX + 1];
    let now = net.now;
    assert!(matches!(
        net.client(alice).send_dm(now, "bob", &over),
        Err(nymstr_client_core::ClientError::TooLarge { .. })
    ));
}

#[test]
fn a_message_too_large_for_one_frame_across_all_installations_fails_instead_of_retrying_forever() {
    // Every installation gets its own sealed copy inside one SendDm frame: a large body
    // to a multi-device recipient can exceed the frame limit. The client must say so
    // rather than hand its host a frame that cannot be encoded.
    let (mut net, alice, bob) = alice_and_bob();
    let laptop = add_device(&mut net, bob, 3);
    let _tablet = add_device(&mut net, bob, 4);
    let body = vec![0x42; nymstr_client_core::core::BODY_BYTES_MAX];
    let msg_id = net.send(alice, "bob", &body);
    let events = net.events(alice);
    assert!(
        events.iter().any(|e| matches!(e,
            Event::Failed { what: Operation::Send { to, msg_id: m }, code: ErrorCode::FrameTooLarge, .. }
            if to == "bob" && *m == msg_id)),
        "{events:?}"
    );
    assert_eq!(net.client(alice).unacked_sends(), 0);
    assert!(net.client(alice).is_idle(), "nothing left to retry");
    assert!(received(&net.events(bob)).is_empty() && received(&net.events(laptop)).is_empty());
    // A body that fits for both still goes through.
    let small = net.send(alice, "bob", b"small");
    assert!(net.events(alice).contains(&Event::SendAcked { to: "bob".into(), msg_id: small }));
    assert_eq!(received(&net.events(laptop)).len(), 1);
}

#[test]
fn a_node_that_swaps_an_account_key_is_caught_by_the_pin() {
    // Alice pinned bob's account key on first lookup. Later the node answers a lookup of
    // "bob" with mallory's key and devices: alice refuses it and seals nothing for mallory.
    let (mut net, alice, bob) = alice_and_bob();
    let mallory = net.add_client(3);
    net.register(mallory, "mallory");
    net.send(alice, "bob", b"first");
    net.events(alice);
    let bob_key = net.client(bob).identity().unwrap().cert.account_key;
    let forged_cert = net.client(mallory).identity().unwrap().cert.clone();
    let forged_key = forged_cert.account_key;
    let _laptop = add_device(&mut net, bob, 10); // alice's view of bob goes stale
    net.set_filter(move |dir, _, mut env| {
        if dir == Dir::ToClient
            && let Body::LookupResult { username, account_key, installations } = &mut env.body
            && username == "bob"
        {
            *account_key = forged_key;
            *installations = vec![forged_cert.clone()];
        }
        vec![env]
    });
    let msg_id = net.send(alice, "bob", b"second");
    let events = net.events(alice);
    assert!(
        events.contains(&Event::KeyChanged { username: "bob".into(), pinned: bob_key, offered: forged_key }),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Failed { what: Operation::Send { msg_id: m, .. }, .. } if *m == msg_id)),
        "{events:?}"
    );
    assert!(received(&net.events(mallory)).is_empty());
    assert_eq!(delivers_of(&net, msg_id), 0);
}

#[test]
fn a_send_from_an_unbound_tag_logs_in_and_goes_again() {
    // Alice's mixnet client restarted with a fresh tag the node has never seen: her send
    // is refused as NotLoggedIn, she logs in by herself, and the message goes once.
    let (mut net, alice, bob) = alice_and_bob();
    net.send(alice, "bob", b"hello");
    net.events(alice);
    net.events(bob);
    net.clients[alice].0 = SenderTag([0xa0; 16]);
    let msg_id = net.send(alice, "bob", b"from a new tag");
    let events = net.events(alice);
    assert!(events.iter().any(|e| matches!(e, Event::LoggedIn { .. })), "{events:?}");
    assert!(events.contains(&Event::SendAcked { to: "bob".into(), msg_id }), "{events:?}");
    assert_eq!(received(&net.events(bob)), vec![("alice".into(), msg_id, b"from a new tag".to_vec())]);
    assert_eq!(delivers_of(&net, msg_id), 1);
}
