//! Relay specification, exercised through `NodeCore` with encoded frames: outer-signature
//! checks, durable queueing gated acknowledgements, delivery to bound tags, offline
//! queues, acknowledgements, redelivery, bounds, de-duplication and crash semantics.

mod common;

use common::*;
use nymstr_node_core::NodeConfig;
use nymstr_proto::limits::{ACK_IDS_MAX, DM_PAYLOAD_BYTES_MAX};
use nymstr_proto::wire::{Body, ErrorCode, Sig};

/// A node with alice and bob registered (and the registrations flushed).
fn alice_and_bob(config: NodeConfig) -> (Harness, User, User) {
    let mut h = Harness::with_config(config);
    let alice = User::new("alice", 1);
    let bob = User::new("bob", 2);
    h.register(&alice);
    h.register(&bob);
    h.flush();
    (h, alice, bob)
}

fn acks_for(out: &[Sent], rid: u64) -> Vec<&Sent> {
    out.iter().filter(|s| s.rid() == rid && matches!(s.body(), Body::SendAck { .. })).collect()
}

// --- the happy path ---

#[test]
fn a_dm_to_a_bound_recipient_is_acked_after_the_flush_and_delivered_to_its_tag() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"sealed for bob"));

    let acks = acks_for(&out, rid);
    assert_eq!(acks.len(), 1, "{out:#?}");
    let ack = acks[0];
    assert_eq!(ack.to, alice.tag);
    assert_eq!(ack.body(), &Body::SendAck { msg_id: msg_id(1) });
    assert!(ack.durable_after > h.durable_seq(), "the ack must wait until the queue write is durable");

    let d = delivers(&out);
    assert_eq!(d.len(), 1, "{out:#?}");
    let deliver = out.iter().find(|s| matches!(s.body(), Body::Deliver { .. })).expect("deliver");
    assert_eq!(deliver.to, bob.tag);
    assert_eq!(deliver.rid(), 0, "deliveries are unsolicited");
    let Body::Deliver { delivery_id, from_username, from, msg_id: m, sealed } = deliver.body().clone() else {
        unreachable!()
    };
    assert_eq!(
        (from_username.as_str(), from, m, sealed.as_slice()),
        ("alice", alice.installation, msg_id(1), &b"sealed for bob"[..])
    );
    assert!(delivery_id > 0);
    assert!(deliver.durable_after > h.durable_seq(), "nothing is delivered that a crash could take back");
    assert_eq!(h.node.queued_total(), 1);
    assert_eq!(h.node.stats.dms_accepted, 1);

    h.flush();
    assert!(h.is_released(ack) && h.is_released(deliver));
}

#[test]
fn a_dm_is_queued_for_every_targeted_installation_of_the_recipient() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let phone = User::new("bob", 2);
    let laptop = User::with_account("bob", 3, phone.account.clone());
    for u in [&alice, &phone, &laptop] {
        h.register(u);
    }
    let dm = alice.dm("bob", msg_id(1), &[(phone.installation, b"p".to_vec()), (laptop.installation, b"l".to_vec())]);
    let (rid, out) = h.request(alice.tag, Body::SendDm(dm));
    assert_eq!(acks_for(&out, rid).len(), 1, "one ack for the whole message");
    let mut got: Vec<_> = delivers(&out).into_iter().map(|(to, _, _, sealed)| (to, sealed)).collect();
    got.sort();
    assert_eq!(got, vec![(phone.tag, b"p".to_vec()), (laptop.tag, b"l".to_vec())]);
    assert_eq!(h.node.queued_total(), 2);
}

// --- what is refused (and leaves nothing queued) ---

#[test]
fn a_forged_outer_signature_is_refused() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let mallory = User::new("mallory", 66);
    h.register(&mallory);

    // Signed by mallory's installation, claiming to come from alice's.
    let mut forged = alice.dm("bob", msg_id(1), &[(bob.installation, b"x".to_vec())]);
    mallory.sign_dm(&mut forged);
    // Signed by alice, then altered in flight.
    let mut altered = alice.dm("bob", msg_id(2), &[(bob.installation, b"x".to_vec())]);
    altered.payloads[0].sealed = b"y".to_vec();
    let mut redirected = alice.dm("bob", msg_id(3), &[(bob.installation, b"x".to_vec())]);
    redirected.msg_id = msg_id(4);
    let mut zeroed = alice.dm("bob", msg_id(5), &[(bob.installation, b"x".to_vec())]);
    zeroed.sig = Sig([0; 64]);

    for (what, dm) in [("forged", forged), ("altered", altered), ("redirected", redirected), ("zeroed", zeroed)] {
        let (rid, out) = h.request(mallory.tag, Body::SendDm(dm));
        assert_eq!(out.len(), 1, "{what}: {out:?}");
        assert_eq!((out[0].rid(), error_code(out[0].body())), (rid, Some(ErrorCode::BadSignature)), "{what}");
    }
    assert_eq!(h.node.queued_total(), 0);
    assert_eq!(h.node.stats.dms_rejected, 4);
}

#[test]
fn a_dm_from_an_unknown_installation_is_refused() {
    let (mut h, _alice, bob) = alice_and_bob(NodeConfig::default());
    let stranger = User::new("stranger", 9);
    assert_eq!(h.ask_err(stranger.tag, stranger.dm_to(&bob, msg_id(1), b"x")), ErrorCode::UnknownInstallation);
    assert_eq!(h.node.queued_total(), 0);
}

#[test]
fn a_dm_to_an_unknown_user_is_refused() {
    let (mut h, alice, _bob) = alice_and_bob(NodeConfig::default());
    let carol = User::new("carol", 3); // never registered
    assert_eq!(h.ask_err(alice.tag, alice.dm_to(&carol, msg_id(1), b"x")), ErrorCode::UnknownUser);
    let to_invalid = alice.dm("not a name", msg_id(2), &[(carol.installation, b"x".to_vec())]);
    assert_eq!(h.ask_err(alice.tag, Body::SendDm(to_invalid)), ErrorCode::UnknownUser);
    assert_eq!(h.node.queued_total(), 0);
}

#[test]
fn a_dm_to_an_installation_the_recipient_does_not_have_is_stale() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let carol = User::new("carol", 3);
    h.register(&carol);
    // Bob's name, carol's installation (e.g. a cached lookup gone wrong).
    let stale = alice.dm("bob", msg_id(1), &[(carol.installation, b"x".to_vec())]);
    assert_eq!(h.ask_err(alice.tag, Body::SendDm(stale)), ErrorCode::StaleRecipient);
    // One good target and one stale one: the whole message is refused.
    let mixed = alice.dm("bob", msg_id(2), &[(bob.installation, b"x".to_vec()), ([7; 32], b"y".to_vec())]);
    assert_eq!(h.ask_err(alice.tag, Body::SendDm(mixed)), ErrorCode::StaleRecipient);
    assert_eq!(h.node.queued_total(), 0);
}

#[test]
fn a_dm_naming_the_same_installation_twice_or_none_is_refused() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let twice = alice.dm("bob", msg_id(1), &[(bob.installation, b"x".to_vec()), (bob.installation, b"x".to_vec())]);
    assert_eq!(h.ask_err(alice.tag, Body::SendDm(twice)), ErrorCode::Malformed);
    let none = alice.dm("bob", msg_id(2), &[]);
    assert_eq!(h.ask_err(alice.tag, Body::SendDm(none)), ErrorCode::Malformed);
    assert_eq!(h.node.queued_total(), 0);
}

#[test]
fn a_payload_over_the_limit_is_refused_and_one_at_the_limit_accepted() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let over = vec![0xab; DM_PAYLOAD_BYTES_MAX + 1];
    assert_eq!(h.ask_err(alice.tag, alice.dm_to(&bob, msg_id(1), &over)), ErrorCode::PayloadTooLarge);
    assert_eq!(h.node.queued_total(), 0);

    let at = vec![0xab; DM_PAYLOAD_BYTES_MAX];
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(2), &at));
    assert_eq!(acks_for(&out, rid).len(), 1, "{:?}", out.iter().map(|s| s.body().kind()).collect::<Vec<_>>());
    assert_eq!(delivers(&out)[0].3.len(), DM_PAYLOAD_BYTES_MAX);
}

#[test]
fn a_full_queue_refuses_the_whole_message_and_queues_nothing() {
    let config = NodeConfig { queue_depth_max: 2, ..NodeConfig::default() };
    let (mut h, alice, bob) = alice_and_bob(config);
    let carol = User::new("carol", 3);
    h.register(&carol);
    for n in 1..=2 {
        let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(n), b"x"));
        assert_eq!(acks_for(&out, rid).len(), 1);
    }
    assert_eq!(h.ask_err(alice.tag, alice.dm_to(&bob, msg_id(3), b"x")), ErrorCode::QueueFull);
    assert_eq!(h.ask_err(carol.tag, carol.dm_to(&bob, msg_id(3), b"x")), ErrorCode::QueueFull);
    assert_eq!(h.node.queued_total(), 2);
    // The refused message was not remembered as sent: once there is room it is accepted.
    let delivered = delivers(&h.login(&bob, bob.tag));
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![delivered[0].1] });
    assert_eq!(h.node.queued_total(), 1);
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(3), b"x"));
    assert_eq!(acks_for(&out, rid).len(), 1, "{out:?}");
    assert_eq!(h.node.queued_total(), 2);
}

#[test]
fn one_sender_fills_only_its_share_of_a_queue() {
    // Issue 10, item 6: one sender could fill any installation's queue, and everyone else
    // then got QueueFull. Its share is bounded; others still get through.
    let config = NodeConfig { queue_depth_max: 10, queue_per_sender_max: 3, ..NodeConfig::default() };
    let (mut h, alice, bob) = alice_and_bob(config);
    let carol = User::new("carol", 3);
    h.register(&carol);
    for n in 1..=3 {
        let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(n), b"flood"));
        assert_eq!(acks_for(&out, rid).len(), 1);
    }
    assert_eq!(h.ask_err(alice.tag, alice.dm_to(&bob, msg_id(4), b"flood")), ErrorCode::QueueFull);
    let (rid, out) = h.request(carol.tag, carol.dm_to(&bob, msg_id(1), b"hello"));
    assert_eq!(acks_for(&out, rid).len(), 1, "another sender still gets through: {out:?}");
    // The share is recovered after a restart, and an ack frees a slot of it.
    h.flush();
    h.crash_and_restart();
    assert_eq!(h.ask_err(alice.tag, alice.dm_to(&bob, msg_id(4), b"flood")), ErrorCode::QueueFull);
    let delivered = delivers(&h.login(&bob, bob.tag));
    let from_alice = delivered.iter().find(|d| d.3 != b"hello".to_vec()).map(|d| d.1).expect("a flood message");
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![from_alice] });
    h.login(&alice, alice.tag);
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(4), b"flood"));
    assert_eq!(acks_for(&out, rid).len(), 1, "{out:?}");
}

// --- de-duplication ---

#[test]
fn a_retried_send_is_acked_again_but_queued_once() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (rid1, out1) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    // The client re-seals on retry, so the retry's payload bytes differ.
    let (rid2, out2) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x, resealed"));
    assert_eq!(acks_for(&out1, rid1).len(), 1);
    let again = acks_for(&out2, rid2);
    assert_eq!(again.len(), 1, "{out2:?}");
    assert_eq!(again[0].body(), &Body::SendAck { msg_id: msg_id(1) });
    assert!(again[0].durable_after > h.durable_seq(), "the repeated ack also waits for the original's write");
    assert!(delivers(&out2).is_empty(), "no second delivery: {out2:?}");
    assert_eq!(h.node.queued_total(), 1);

    // Still deduplicated after the recipient has acknowledged (and the queue emptied).
    let id = delivers(&out1)[0].1;
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![id] });
    assert_eq!(h.node.queued_total(), 0);
    let (rid3, out3) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    assert_eq!(acks_for(&out3, rid3).len(), 1);
    assert_eq!(h.node.queued_total(), 0);
    assert!(delivers(&out3).is_empty());

    // Another message id from the same sender is a new message.
    let (_, out4) = h.request(alice.tag, alice.dm_to(&bob, msg_id(2), b"x"));
    assert_eq!(delivers(&out4).len(), 1);
}

#[test]
fn the_same_msg_id_from_different_senders_is_two_messages() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let carol = User::new("carol", 3);
    h.register(&carol);
    h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"a"));
    h.request(carol.tag, carol.dm_to(&bob, msg_id(1), b"c"));
    assert_eq!(h.node.queued_total(), 2);
}

// --- offline recipients, acknowledgements ---

#[test]
fn messages_for_an_offline_recipient_wait_and_are_delivered_on_login() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    // Bob's tag is gone (its reply blocks are used up): what goes there is lost.
    for n in 1..=3 {
        h.request(alice.tag, alice.dm_to(&bob, msg_id(n), &[n]));
    }
    h.flush();
    assert_eq!(h.node.queued_total(), 3);

    let new_tag = tag(102);
    let out = h.login(&bob, new_tag);
    let logged_in = out.iter().find(|s| matches!(s.body(), Body::LoggedIn { .. })).unwrap();
    assert_eq!(logged_in.body(), &Body::LoggedIn { installation: bob.installation, queued: 3 });
    let d = delivers(&out);
    assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![new_tag; 3], "all to the new tag");
    assert_eq!(d.iter().map(|x| x.3.clone()).collect::<Vec<_>>(), vec![vec![1], vec![2], vec![3]], "oldest first");
    let mut ids: Vec<_> = d.iter().map(|x| x.1).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct delivery ids");
}

#[test]
fn messages_for_an_unbound_installation_are_only_queued() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    // Carol's client happens to come from bob's old tag: bob is no longer bound anywhere.
    let carol = User { tag: bob.tag, ..User::new("carol", 3) };
    h.register(&carol);
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    assert!(delivers(&out).is_empty(), "bob has no tag: {out:?}");
    assert_eq!(h.node.queued_total(), 1);
    let d = delivers(&h.login(&bob, tag(102)));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, tag(102));
}

#[test]
fn ack_delivery_deletes_from_the_queue() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(n), b"x"));
        ids.push(delivers(&out)[0].1);
    }
    assert_eq!(h.node.queued_total(), 3);
    let (_, out) = h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![ids[0], ids[2]] });
    assert!(out.is_empty(), "acks are not answered: {out:?}");
    assert_eq!(h.node.queued_total(), 1);
    // Acking again, or acking ids that never existed, is harmless.
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![ids[0], 999_999] });
    assert_eq!(h.node.queued_total(), 1);
    // What is left is what a new login reports and delivers.
    let out = h.login(&bob, tag(102));
    assert!(out.iter().any(|s| s.body() == &Body::LoggedIn { installation: bob.installation, queued: 1 }));
    assert_eq!(delivers(&out).iter().map(|d| d.1).collect::<Vec<_>>(), vec![ids[1]]);
}

#[test]
fn an_installation_cannot_ack_away_another_installations_deliveries() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let carol = User::new("carol", 3);
    h.register(&carol);
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let id = delivers(&out)[0].1;
    h.request(carol.tag, Body::AckDelivery { delivery_ids: vec![id] });
    assert_eq!(h.node.queued_total(), 1, "carol's ack must not delete bob's message");
}

#[test]
fn ack_delivery_from_an_unbound_tag_is_not_logged_in() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let id = delivers(&out)[0].1;
    assert_eq!(h.ask_err(tag(250), Body::AckDelivery { delivery_ids: vec![id] }), ErrorCode::NotLoggedIn);
    assert_eq!(h.node.queued_total(), 1);
}

#[test]
fn too_many_ids_in_one_ack_are_malformed() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let id = delivers(&out)[0].1;
    // Refused whole (by the codec or the relay), not applied up to the limit.
    let (_, out) = h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![id; ACK_IDS_MAX + 1] });
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].to, error_code(out[0].body())), (bob.tag, Some(ErrorCode::Malformed)));
    assert_eq!(h.node.queued_total(), 1, "nothing of a refused ack is applied");
    let (_, out) = h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![id; ACK_IDS_MAX] });
    assert!(out.is_empty());
    assert_eq!(h.node.queued_total(), 0);
}

// --- delivery window and redelivery ---

#[test]
fn deliveries_in_flight_are_bounded_and_an_ack_opens_the_window() {
    let config = NodeConfig { deliveries_inflight_max: 2, ..NodeConfig::default() };
    let (mut h, alice, bob) = alice_and_bob(config);
    let mut seen = Vec::new();
    for n in 1..=5 {
        let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(n), &[n]));
        seen.extend(delivers(&out));
    }
    assert_eq!(seen.iter().map(|d| d.3[0]).collect::<Vec<_>>(), vec![1, 2], "only the window is in flight");
    let (_, out) = h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![seen[0].1] });
    assert_eq!(delivers(&out).iter().map(|d| d.3[0]).collect::<Vec<_>>(), vec![3]);
    let (_, out) = h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![seen[1].1, delivers(&out)[0].1] });
    assert_eq!(delivers(&out).iter().map(|d| d.3[0]).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn an_unacknowledged_delivery_is_redelivered_with_backoff() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let after = h.config().redeliver_after_us;
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let first = delivers(&out);
    let sent_at = h.now;
    assert!(h.node.poll_timeout().is_some_and(|t| t <= sent_at + after));

    // Not before it is due.
    assert!(delivers(&h.timeout(sent_at + after - 1)).is_empty());
    // Then the same delivery again, to the same tag.
    let again = delivers(&h.timeout(sent_at + after));
    assert_eq!(again, first);
    assert_eq!(h.node.stats.redeliveries, 1);
    // The next one waits twice as long.
    assert!(delivers(&h.timeout(sent_at + 3 * after - 1)).is_empty());
    assert_eq!(delivers(&h.timeout(sent_at + 3 * after)), first);
    assert_eq!(h.node.stats.redeliveries, 2);

    // Once acknowledged, never again.
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![first[0].1] });
    assert!(delivers(&h.timeout(sent_at + 100 * after)).is_empty());
}

#[test]
fn redelivery_backoff_is_capped() {
    let config = NodeConfig { redeliver_after_us: 1_000, redeliver_after_max_us: 4_000, ..NodeConfig::default() };
    let (mut h, alice, bob) = alice_and_bob(config);
    h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let mut at = h.now;
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let next = h.node.poll_timeout().expect("a redelivery is scheduled");
        // Skip housekeeping sweeps that come first.
        let out = h.timeout(next);
        if !delivers(&out).is_empty() {
            gaps.push(next - at);
            at = next;
        }
    }
    assert_eq!(&gaps[..4], &[1_000, 2_000, 4_000, 4_000]);
}

#[test]
fn a_redelivery_follows_the_installation_to_its_new_tag() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let id = delivers(&out)[0].1;
    let new_tag = tag(102);
    let on_login = delivers(&h.login(&bob, new_tag));
    assert_eq!(on_login.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(), vec![(new_tag, id)]);
    let at = h.now + h.config().redeliver_after_us;
    let later = delivers(&h.timeout(at));
    assert_eq!(later.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(), vec![(new_tag, id)]);
}

// --- crash semantics ---

#[test]
fn an_unflushed_message_is_lost_in_a_crash_and_was_never_acknowledged() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let ack = acks_for(&out, rid)[0].clone();
    assert!(!h.is_released(&ack));

    let on_start = h.crash_and_restart();
    assert!(on_start.is_empty(), "{on_start:?}");
    assert_eq!(h.node.queued_total(), 0, "the unflushed message is gone");
    let out = h.login(&bob, tag(102));
    assert!(out.iter().any(|s| s.body() == &Body::LoggedIn { installation: bob.installation, queued: 0 }));
    // The ack was never released, so the sender retries: and the retry is not mistaken
    // for a duplicate.
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    assert_eq!(acks_for(&out, rid).len(), 1);
    assert_eq!(delivers(&out).len(), 1);
    assert_eq!(h.node.queued_total(), 1);
}

#[test]
fn a_flushed_message_survives_a_crash_and_is_redelivered_on_start() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"kept"));
    let ack = acks_for(&out, rid)[0].clone();
    let before = delivers(&out);
    h.flush();
    assert!(h.is_released(&ack));
    // A second message that never reaches the disk.
    h.request(alice.tag, alice.dm_to(&bob, msg_id(2), b"lost"));

    let on_start = h.crash_and_restart();
    assert_eq!(delivers(&on_start), before, "same delivery, same id, to bob's still-bound tag");
    assert!(on_start.iter().all(|s| h.is_released(s)), "nothing on start waits for a flush");
    assert_eq!(h.node.queued_total(), 1);

    // And the restarted node keeps redelivering it until acknowledged.
    let at = h.now + h.config().redeliver_after_us;
    assert_eq!(delivers(&h.timeout(at)), before);
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![before[0].1] });
    assert_eq!(h.node.queued_total(), 0);
}

#[test]
fn a_flushed_retry_is_still_deduplicated_after_a_crash() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    h.flush();
    h.crash_and_restart();
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    assert_eq!(acks_for(&out, rid).len(), 1);
    assert!(delivers(&out).is_empty());
    assert_eq!(h.node.queued_total(), 1);
}

#[test]
fn delivery_ids_are_never_reused_across_a_restart() {
    // A late ack for an old id must not delete a newer message.
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"old"));
    let old = delivers(&out)[0].1;
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![old] });
    h.flush();
    h.crash_and_restart();
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(2), b"new"));
    let new = delivers(&out)[0].1;
    assert_ne!(new, old);
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![old] });
    assert_eq!(h.node.queued_total(), 1);
}

#[test]
fn only_queues_and_dedupe_entries_hold_message_bytes() {
    // Sanity for the privacy oracle: the node stores a sealed payload only in its queue.
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let marker = b"unique-marker-0123456789";
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), marker));
    let id = delivers(&out)[0].1;
    let holders: Vec<_> = h
        .node
        .store()
        .all_values()
        .filter(|(_, _, v)| v.windows(marker.len()).any(|w| w == marker))
        .map(|(t, _, _)| t)
        .collect();
    assert_eq!(holders, vec![nymstr_node_core::store::Table::Queues]);
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![id] });
    assert!(!h.node.store().all_values().any(|(_, _, v)| v.windows(marker.len()).any(|w| w == marker)));
}

#[test]
fn a_send_dm_is_accepted_only_from_the_senders_logged_in_tag() {
    // A valid signature is not enough: a captured SendDm replayed from another tag (by
    // anyone, at any later time) is refused, and nothing is queued.
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let dm = alice.dm_to(&bob, msg_id(1), b"x");
    assert_eq!(h.ask_err(tag(77), dm.clone()), ErrorCode::NotLoggedIn);
    assert_eq!(h.ask_err(bob.tag, dm.clone()), ErrorCode::NotLoggedIn, "another user's tag");
    assert_eq!(h.node.queued_total(), 0);
    // From alice's own tag it goes through; after she logs in from a new tag, only the
    // new one may send for her.
    let (rid, out) = h.request(alice.tag, dm);
    assert_eq!(acks_for(&out, rid).len(), 1);
    h.login(&alice, tag(78));
    assert_eq!(h.ask_err(alice.tag, alice.dm_to(&bob, msg_id(2), b"y")), ErrorCode::NotLoggedIn);
    let (rid, out) = h.request(tag(78), alice.dm_to(&bob, msg_id(3), b"z"));
    assert_eq!(acks_for(&out, rid)[0].to, tag(78));
}

#[test]
fn a_retry_of_a_queued_message_is_acked_even_after_the_recipient_added_a_device() {
    // Dedupe comes before the recipient checks: the retry of a message already queued is
    // acknowledged, not refused as stale because bob's devices changed meanwhile.
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let dm = alice.dm_to(&bob, msg_id(1), b"x");
    h.request(alice.tag, dm.clone());
    h.register(&User::with_account("bob", 3, bob.account.clone()));
    let (rid, out) = h.request(alice.tag, dm);
    assert_eq!(acks_for(&out, rid).len(), 1, "{out:?}");
    assert_eq!(h.node.queued_total(), 1);
}

#[test]
fn a_dm_must_cover_every_installation_of_the_recipient() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let phone = User::new("bob", 2);
    let laptop = User::with_account("bob", 3, phone.account.clone());
    for u in [&alice, &phone, &laptop] {
        h.register(u);
    }
    let partial = alice.dm("bob", msg_id(1), &[(phone.installation, b"p".to_vec())]);
    assert_eq!(h.ask_err(alice.tag, Body::SendDm(partial)), ErrorCode::StaleRecipient);
    assert_eq!(h.node.queued_total(), 0);
}

#[test]
fn delivery_ids_count_per_installation() {
    // Ids reveal nothing about traffic to others: each installation's start at 1.
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let bob = User::new("bob", 2);
    let carol = User::new("carol", 3);
    for u in [&alice, &bob, &carol] {
        h.register(u);
    }
    for i in 0..5 {
        h.request(alice.tag, alice.dm_to(&bob, msg_id(i), b"x"));
    }
    let (_, out) = h.request(alice.tag, alice.dm_to(&carol, msg_id(9), b"x"));
    assert_eq!(delivers(&out)[0].1, 1, "carol's first delivery id");
}

#[test]
fn registering_again_from_a_new_tag_moves_deliveries_there_like_a_login() {
    // A client whose `Registered` was lost starts over, possibly from a fresh tag. The
    // registration binds that tag, so what waits for the installation goes there at once
    // (not only after the redelivery timer fires).
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let id = delivers(&out)[0].1;
    let moved = User { tag: tag(102), ..bob.clone() };
    let nonce = h.challenge_for_register(&moved);
    let (_, out) = h.request(moved.tag, moved.register_response(&nonce));
    assert!(out.iter().any(|s| matches!(s.body(), Body::Registered { .. })));
    assert_eq!(delivers(&out).iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(), vec![(moved.tag, id)]);
}

#[test]
fn a_retry_is_acked_even_when_the_queue_has_filled_since() {
    let config = NodeConfig { queue_depth_max: 1, ..NodeConfig::default() };
    let (mut h, alice, bob) = alice_and_bob(config);
    h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    let (rid, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    assert_eq!(acks_for(&out, rid).len(), 1, "the retry of an accepted message is not QueueFull: {out:?}");
    assert_eq!(h.ask_err(alice.tag, alice.dm_to(&bob, msg_id(2), b"x")), ErrorCode::QueueFull);
}

#[test]
fn a_delivery_never_goes_to_a_tag_that_now_belongs_to_another_installation() {
    let (mut h, alice, bob) = alice_and_bob(NodeConfig::default());
    h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"for bob only"));
    // Carol's client now speaks from the tag bob used.
    let carol = User { tag: bob.tag, ..User::new("carol", 3) };
    h.register(&carol);
    let at = h.now + 10 * h.config().redeliver_after_us;
    for t in [at / 2 + h.now / 2, at] {
        let out = h.timeout(t);
        assert!(delivers(&out).is_empty(), "bob's message went to carol's tag: {out:?}");
    }
    assert_eq!(h.node.queued_total(), 1, "it waits for bob");
    let d = delivers(&h.login(&bob, tag(102)));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].3, b"for bob only");
}

#[test]
fn send_dedupe_is_forgotten_after_its_ttl() {
    let config = NodeConfig { seen_send_ttl_us: 1_000_000, sweep_every_us: 100_000, ..NodeConfig::default() };
    let (mut h, alice, bob) = alice_and_bob(config);
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![delivers(&out)[0].1] });
    // Just before the TTL: still a duplicate.
    let before = h.now + 1_000_000 - 1;
    h.timeout(before);
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    assert!(delivers(&out).is_empty());
    // After it (and a sweep): a new message.
    let after = h.now + 200_000;
    h.timeout(after);
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(1), b"x"));
    assert_eq!(delivers(&out).len(), 1);
}

#[test]
fn the_sweep_reads_only_expired_minutes_and_keeps_a_pair_sent_again() {
    use nymstr_node_core::store::Table;
    let ttl = 120_000_000; // two minutes
    let config = NodeConfig { seen_send_ttl_us: ttl, sweep_every_us: 10_000_000, ..NodeConfig::default() };
    let (mut h, alice, bob) = alice_and_bob(config);
    for i in 0..3 {
        let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(i), b"x"));
        h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![delivers(&out)[0].1] });
    }
    assert_eq!(h.node.store().len(Table::SeenSends), 3);
    assert_eq!(h.node.store().len(Table::SeenExpiry), 3);
    // Past the TTL, msg 0 is sent again: a new message (not a duplicate), remembered anew.
    let t = h.now + ttl + 1;
    h.timeout(t);
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(0), b"again"));
    assert_eq!(delivers(&out).len(), 1);
    h.request(bob.tag, Body::AckDelivery { delivery_ids: vec![delivers(&out)[0].1] });
    // A minute and a half later the first entries' expiry minute is wholly past and they
    // go; msg 0's new entry (expiring two minutes after its re-send) stays.
    let t = h.now + 90_000_000;
    h.timeout(t);
    assert_eq!(h.node.store().len(Table::SeenSends), 1);
    assert_eq!(h.node.store().len(Table::SeenExpiry), 1);
    let (_, out) = h.request(alice.tag, alice.dm_to(&bob, msg_id(0), b"again"));
    assert!(delivers(&out).is_empty(), "still a duplicate of the second send");
}
