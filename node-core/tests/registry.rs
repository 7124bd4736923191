//! Registry specification, exercised through `NodeCore::handle_frame` with encoded frames:
//! challenge-response registration and login, lookups, username rules, and the bounds.

mod common;

use common::*;
use nymstr_node_core::NodeConfig;
use nymstr_proto::identity::{self, generate_signing_key};
use nymstr_proto::limits::USERNAME_BYTES_MAX;
use nymstr_proto::wire::{Body, ErrorCode, Sig};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

// --- registration: the happy path ---

#[test]
fn registration_is_a_challenge_response_that_binds_the_sending_tag() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);

    // 1. The request is answered at once (nothing to make durable) with a fresh,
    //    expiring nonce, addressed to the requesting tag under the same request id.
    let challenge = h.ask(alice.tag, alice.register_request());
    assert_eq!(challenge.durable_after, 0, "a challenge need not wait for the disk");
    let Body::Challenge { nonce, expires_at_us, .. } = *challenge.body() else { panic!("{challenge:?}") };
    assert_eq!(expires_at_us, T0 + h.config().challenge_ttl_us);
    assert_ne!(nonce, [0; 32]);

    // 2. Both signatures over the nonce complete it; the answer waits for durability.
    let registered = h.ask(alice.tag, alice.register_response(&nonce));
    assert_eq!(registered.body(), &Body::Registered { username: "alice".into(), installation: alice.installation });
    assert!(registered.durable_after > h.durable_seq(), "Registered is released only after a flush");
    h.flush();
    assert!(h.is_released(&registered));
    assert_eq!(h.node.stats.registrations, 1);

    // 3. Anyone can now look the account up.
    assert_eq!(
        h.lookup(tag(200), "alice"),
        Body::LookupResult {
            username: "alice".into(),
            account_key: alice.account.verifying_key().to_bytes(),
            installations: vec![alice.cert.clone()],
        }
    );

    // 4. The registering tag is bound to the installation: it may acknowledge deliveries,
    //    a stranger's tag may not.
    let (_, out) = h.request(alice.tag, Body::AckDelivery { delivery_ids: vec![] });
    assert!(out.is_empty(), "a bound tag may ack: {out:?}");
    assert_eq!(h.ask_err(tag(200), Body::AckDelivery { delivery_ids: vec![] }), ErrorCode::NotLoggedIn);
}

#[test]
fn usernames_are_case_folded_on_registration_and_lookup() {
    let mut h = Harness::new();
    let alice = User::new("AliCE_01", 1);
    let reply = h.register(&alice);
    assert!(matches!(reply.body(), Body::Registered { username, .. } if username == "alice_01"));
    for spelling in ["alice_01", "ALICE_01", "Alice_01"] {
        assert!(
            matches!(h.lookup(tag(200), spelling), Body::LookupResult { ref username, .. } if username == "alice_01"),
            "{spelling}"
        );
    }
}

#[test]
fn the_owner_may_complete_registration_again_without_duplicating_the_installation() {
    // The `Registered` answer can be lost; the client then starts over.
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    h.register(&alice);
    h.register(&alice);
    let Body::LookupResult { installations, .. } = h.lookup(tag(200), "alice") else { panic!() };
    assert_eq!(installations, vec![alice.cert.clone()]);
}

#[test]
fn a_second_installation_of_the_same_account_is_added() {
    let mut h = Harness::new();
    let phone = User::new("alice", 1);
    let laptop = User::with_account("alice", 2, phone.account.clone());
    h.register(&phone);
    h.register(&laptop);
    let Body::LookupResult { installations, .. } = h.lookup(tag(200), "alice") else { panic!() };
    assert_eq!(installations, vec![phone.cert.clone(), laptop.cert.clone()]);
}

// --- registration: what is refused ---

#[test]
fn a_forged_account_signature_is_refused_and_registers_nothing() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let mallory = User::new("mallory", 66);
    let nonce = h.challenge_for_register(&alice);
    let forged = Body::RegisterResponse {
        nonce,
        account_sig: mallory.account_sig(&nonce), // right bytes, wrong key
        installation_sig: alice.installation_sig(&nonce),
    };
    assert_eq!(h.ask_err(alice.tag, forged), ErrorCode::BadSignature);
    assert_eq!(error_code(&h.lookup(tag(200), "alice")), Some(ErrorCode::UnknownUser));
    assert_eq!(h.ask_err(alice.tag, Body::AckDelivery { delivery_ids: vec![] }), ErrorCode::NotLoggedIn);
}

#[test]
fn a_forged_installation_signature_is_refused() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let mallory = User::new("mallory", 66);
    let nonce = h.challenge_for_register(&alice);
    let forged = Body::RegisterResponse {
        nonce,
        account_sig: alice.account_sig(&nonce),
        installation_sig: identity::sign(
            &mallory.installation_key,
            &identity::register_installation_bytes(&nonce, &challenge_node(&nonce), "alice", &alice.installation),
        ),
    };
    assert_eq!(h.ask_err(alice.tag, forged), ErrorCode::BadSignature);
    assert_eq!(error_code(&h.lookup(tag(200), "alice")), Some(ErrorCode::UnknownUser));
}

#[test]
fn zeroed_signatures_are_refused() {
    let alice = User::new("alice", 1);
    let zero = Sig([0; 64]);
    for which in ["account", "installation", "both"] {
        let mut h = Harness::new();
        let nonce = h.challenge_for_register(&alice);
        let (account_sig, installation_sig) = match which {
            "account" => (zero, alice.installation_sig(&nonce)),
            "installation" => (alice.account_sig(&nonce), zero),
            _ => (zero, zero),
        };
        let code = h.ask_err(alice.tag, Body::RegisterResponse { nonce, account_sig, installation_sig });
        assert_eq!(code, ErrorCode::BadSignature, "zeroed {which} signature");
        assert_eq!(error_code(&h.lookup(tag(200), "alice")), Some(ErrorCode::UnknownUser), "{which}");
    }
}

#[test]
fn signatures_made_for_another_purpose_or_nonce_are_refused() {
    let alice = User::new("alice", 1);
    let login_sig = |n: &[u8; 32]| {
        identity::sign(&alice.installation_key, &identity::login_bytes(n, &challenge_node(n), &alice.installation))
    };
    let mut h = Harness::new();
    let nonce = h.challenge_for_register(&alice);
    let other_nonce = h.challenge_for_register(&alice);
    let cases = [
        // The installation's registration signature presented as the account's.
        ("swapped", alice.installation_sig(&nonce), alice.account_sig(&nonce)),
        // A login signature is not a registration signature (domain separation).
        ("login label", alice.account_sig(&nonce), login_sig(&nonce)),
        // Signatures over another (valid, pending) nonce.
        ("other nonce", alice.account_sig(&other_nonce), alice.installation_sig(&other_nonce)),
    ];
    for (what, account_sig, installation_sig) in cases {
        let nonce = h.challenge_for_register(&alice);
        let code = h.ask_err(alice.tag, Body::RegisterResponse { nonce, account_sig, installation_sig });
        assert_eq!(code, ErrorCode::BadSignature, "{what}");
    }
    // Signed for "bob", presented for "alice".
    let nonce = h.challenge_for_register(&alice);
    let sig = identity::sign(
        &alice.account,
        &identity::register_account_bytes(&nonce, &challenge_node(&nonce), "bob", &alice.installation),
    );
    let code = h.ask_err(
        alice.tag,
        Body::RegisterResponse { nonce, account_sig: sig, installation_sig: alice.installation_sig(&nonce) },
    );
    assert_eq!(code, ErrorCode::BadSignature, "other username");
    assert_eq!(error_code(&h.lookup(tag(200), "alice")), Some(ErrorCode::UnknownUser));
}

#[test]
fn a_certificate_not_signed_by_the_account_key_is_refused_before_any_challenge() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let stranger = generate_signing_key(&mut rng);

    // Signed by a stranger but claiming alice's account key.
    let mut claimed = identity::issue_cert(&stranger, &alice.cert.signing_key, &alice.cert.dh_key, T0);
    claimed.account_key = alice.account.verifying_key().to_bytes();
    // Signed by alice's account but altered afterwards (another DH key slipped in).
    let mut altered = alice.cert.clone();
    altered.dh_key[0] ^= 1;
    // No signature at all.
    let mut unsigned = alice.cert.clone();
    unsigned.sig = Sig([0; 64]);
    // An account key that is not a curve point.
    let mut bad_key = alice.cert.clone();
    bad_key.account_key = [0xff; 32];

    for (what, cert) in [("claimed", claimed), ("altered", altered), ("unsigned", unsigned), ("bad key", bad_key)] {
        let code = h.ask_err(alice.tag, Body::RegisterRequest { username: "alice".into(), cert });
        assert_eq!(code, ErrorCode::BadCertificate, "{what}");
    }
    // None of those refusals cost a challenge slot.
    let mut small = Harness::with_config(NodeConfig { challenges_pending_max: 1, ..NodeConfig::default() });
    let mut altered = alice.cert.clone();
    altered.created_at_us += 1;
    let refused = small.ask_err(alice.tag, Body::RegisterRequest { username: "alice".into(), cert: altered });
    assert_eq!(refused, ErrorCode::BadCertificate);
    small.register(&alice);
}

#[test]
fn a_challenge_is_single_use() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let nonce = h.challenge_for_register(&alice);
    h.ask(alice.tag, alice.register_response(&nonce));
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&nonce)), ErrorCode::UnknownChallenge);
    // Replayed from another tag, too (a challenge is answered only by its own tag anyway).
    assert_eq!(h.ask_err(tag(201), alice.register_response(&nonce)), ErrorCode::UnknownChallenge);
}

#[test]
fn a_failed_answer_consumes_the_challenge() {
    // Otherwise a signature could be guessed against the same nonce again and again.
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let nonce = h.challenge_for_register(&alice);
    let bad = Body::RegisterResponse { nonce, account_sig: Sig([0; 64]), installation_sig: Sig([0; 64]) };
    assert_eq!(h.ask_err(alice.tag, bad), ErrorCode::BadSignature);
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&nonce)), ErrorCode::UnknownChallenge);
}

#[test]
fn a_nonce_the_node_never_issued_is_unknown() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&[42; 32])), ErrorCode::UnknownChallenge);
    assert_eq!(h.ask_err(alice.tag, alice.login_response(&[42; 32])), ErrorCode::UnknownChallenge);
}

#[test]
fn a_challenge_expires_after_its_ttl() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let ttl = h.config().challenge_ttl_us;

    // One microsecond before the deadline: still good.
    let nonce = h.challenge_for_register(&alice);
    h.now += ttl - 1;
    assert!(matches!(h.ask(alice.tag, alice.register_response(&nonce)).body(), Body::Registered { .. }));

    // At the deadline: expired, and consumed.
    let nonce = h.challenge_for_register(&alice);
    h.now += ttl;
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&nonce)), ErrorCode::ChallengeExpired);
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&nonce)), ErrorCode::UnknownChallenge);
}

#[test]
fn the_housekeeping_sweep_forgets_expired_challenges() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let nonce = h.challenge_for_register(&alice);
    let at = h.now + h.config().challenge_ttl_us + h.config().sweep_every_us;
    h.timeout(at);
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&nonce)), ErrorCode::UnknownChallenge);
}

#[test]
fn a_username_held_by_another_account_is_taken() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let impostor = User::new("ALICE", 2);
    h.register(&alice);
    assert_eq!(h.ask_err(impostor.tag, impostor.register_request()), ErrorCode::UsernameTaken);
    // The original account is untouched.
    let Body::LookupResult { account_key, .. } = h.lookup(tag(200), "alice") else { panic!() };
    assert_eq!(account_key, alice.account.verifying_key().to_bytes());
}

#[test]
fn of_two_accounts_racing_for_a_username_the_first_to_answer_wins() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let rival = User::new("alice", 2);
    let nonce_a = h.challenge_for_register(&alice);
    let nonce_r = h.challenge_for_register(&rival);
    assert!(matches!(h.ask(rival.tag, rival.register_response(&nonce_r)).body(), Body::Registered { .. }));
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&nonce_a)), ErrorCode::UsernameTaken);
    let Body::LookupResult { account_key, installations, .. } = h.lookup(tag(200), "alice") else { panic!() };
    assert_eq!(account_key, rival.account.verifying_key().to_bytes());
    assert_eq!(installations, vec![rival.cert.clone()]);
    // The loser's tag was not bound.
    assert_eq!(h.ask_err(alice.tag, Body::AckDelivery { delivery_ids: vec![] }), ErrorCode::NotLoggedIn);
}

#[test]
fn malformed_usernames_are_invalid_and_reserved_ones_reserved() {
    let long = "a".repeat(USERNAME_BYTES_MAX + 1);
    let longest = "a".repeat(USERNAME_BYTES_MAX);
    let invalid: &[&str] = &["", "ab", &long, "1alice", "_alice", "al ice", "al-ice", "alice!", "alicé", "ali\0ce"];
    let reserved: &[&str] = &["admin", "Admin", "ROOT", "nymstr", "postmaster"];
    let mut h = Harness::new();
    for (i, name) in invalid.iter().enumerate() {
        let user = User::new(name, 10 + i as u64);
        assert_eq!(h.ask_err(user.tag, user.register_request()), ErrorCode::UsernameInvalid, "{name:?}");
    }
    for (i, name) in reserved.iter().enumerate() {
        let user = User::new(name, 40 + i as u64);
        assert_eq!(h.ask_err(user.tag, user.register_request()), ErrorCode::UsernameReserved, "{name:?}");
    }
    // The boundaries themselves are fine.
    for (i, name) in ["abc", longest.as_str(), "a_1", "z99"].iter().enumerate() {
        h.register(&User::new(name, 70 + i as u64));
    }
}

// --- login ---

#[test]
fn login_is_a_challenge_response_that_moves_the_binding_to_the_new_tag() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    h.register(&alice);
    let new_tag = tag(101);

    let challenge = h.ask(new_tag, Body::LoginRequest { installation: alice.installation });
    let Body::Challenge { nonce, expires_at_us, .. } = *challenge.body() else { panic!("{challenge:?}") };
    assert_eq!(expires_at_us, h.now + h.config().challenge_ttl_us);
    let logged_in = h.ask(new_tag, alice.login_response(&nonce));
    assert_eq!(logged_in.body(), &Body::LoggedIn { installation: alice.installation, queued: 0 });
    assert!(logged_in.durable_after > h.durable_seq(), "LoggedIn waits for the binding to be durable");
    assert_eq!(h.node.stats.logins, 1);

    // The new tag is bound; the old one no longer is.
    let (_, out) = h.request(new_tag, Body::AckDelivery { delivery_ids: vec![] });
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.ask_err(alice.tag, Body::AckDelivery { delivery_ids: vec![] }), ErrorCode::NotLoggedIn);
}

#[test]
fn login_with_a_forged_signature_binds_nothing() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let mallory = User::new("mallory", 66);
    h.register(&alice);
    let thief = tag(102);
    let Body::Challenge { nonce, .. } = *h.ask(thief, Body::LoginRequest { installation: alice.installation }).body()
    else {
        panic!()
    };
    // Mallory signs alice's login bytes with her own installation key.
    let sig = identity::sign(
        &mallory.installation_key,
        &identity::login_bytes(&nonce, &challenge_node(&nonce), &alice.installation),
    );
    assert_eq!(h.ask_err(thief, Body::LoginResponse { nonce, installation_sig: sig }), ErrorCode::BadSignature);
    assert_eq!(h.ask_err(thief, Body::AckDelivery { delivery_ids: vec![] }), ErrorCode::NotLoggedIn);
    // Alice's own binding is untouched.
    let (_, out) = h.request(alice.tag, Body::AckDelivery { delivery_ids: vec![] });
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_captured_login_response_replayed_first_from_another_tag_binds_nothing() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    h.register(&alice);
    let (victim, attacker) = (tag(110), tag(111));

    // Alice logs in from a new connection; an observer captures her answer and races it
    // to the node from its own connection.
    let Body::Challenge { nonce, .. } = *h.ask(victim, Body::LoginRequest { installation: alice.installation }).body()
    else {
        panic!()
    };
    let captured = alice.login_response(&nonce);
    assert_eq!(h.ask_err(attacker, captured.clone()), ErrorCode::UnknownChallenge);
    assert_eq!(h.ask_err(attacker, Body::AckDelivery { delivery_ids: vec![] }), ErrorCode::NotLoggedIn);

    // The replay neither bound the attacker nor spent alice's challenge: her own answer
    // binds her connection.
    let logged_in = h.ask(victim, captured);
    assert!(matches!(logged_in.body(), Body::LoggedIn { .. }), "{logged_in:?}");
    let (_, out) = h.request(victim, Body::AckDelivery { delivery_ids: vec![] });
    assert!(out.is_empty(), "{out:?}");

    // Registration answers are bound the same way.
    let bob = User::new("bob", 2);
    let nonce = h.challenge_for_register(&bob);
    assert_eq!(h.ask_err(attacker, bob.register_response(&nonce)), ErrorCode::UnknownChallenge);
    assert!(matches!(h.ask(bob.tag, bob.register_response(&nonce)).body(), Body::Registered { .. }));
}

#[test]
fn a_challenge_names_its_node_and_an_answer_signed_for_another_node_fails() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    h.register(&alice);
    let reply = h.ask(alice.tag, Body::LoginRequest { installation: alice.installation });
    let Body::Challenge { nonce, node, .. } = *reply.body() else { panic!("{reply:?}") };
    assert_eq!(node, h.node.node_id());
    // The same nonce signed for another node (a node relaying this one's challenge to
    // alice and her answer back) does not verify here.
    let elsewhere = nymstr_proto::federation::NodeId([0xee; 32]);
    let sig = identity::sign(&alice.installation_key, &identity::login_bytes(&nonce, &elsewhere, &alice.installation));
    assert_eq!(h.ask_err(alice.tag, Body::LoginResponse { nonce, installation_sig: sig }), ErrorCode::BadSignature);
    // A node without a federation identity keeps its id across restarts.
    let before = h.node.node_id();
    h.flush();
    h.crash_and_restart();
    assert_eq!(h.node.node_id(), before);
}

#[test]
fn login_for_an_unknown_installation_is_refused_without_a_challenge() {
    let mut h = Harness::new();
    let ghost = User::new("ghost", 5);
    assert_eq!(
        h.ask_err(ghost.tag, Body::LoginRequest { installation: ghost.installation }),
        ErrorCode::UnknownInstallation
    );
    // No challenge slot was spent on it.
    let mut small = Harness::with_config(NodeConfig { challenges_pending_max: 1, ..NodeConfig::default() });
    let code = small.ask_err(ghost.tag, Body::LoginRequest { installation: ghost.installation });
    assert_eq!(code, ErrorCode::UnknownInstallation);
    small.register(&ghost);
}

#[test]
fn registration_and_login_challenges_are_not_interchangeable() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    h.register(&alice);

    let login_nonce = match *h.ask(alice.tag, Body::LoginRequest { installation: alice.installation }).body() {
        Body::Challenge { nonce, .. } => nonce,
        ref other => panic!("{other:?}"),
    };
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&login_nonce)), ErrorCode::UnknownChallenge);

    let register_nonce = h.challenge_for_register(&alice);
    assert_eq!(h.ask_err(alice.tag, alice.login_response(&register_nonce)), ErrorCode::UnknownChallenge);
}

// --- lookup ---

#[test]
fn lookup_of_an_unknown_or_malformed_user_is_unknown_user() {
    let mut h = Harness::new();
    h.register(&User::new("alice", 1));
    for name in ["bob", "", "a b", "Admin", &"x".repeat(1000)] {
        assert_eq!(error_code(&h.lookup(tag(200), name)), Some(ErrorCode::UnknownUser), "{name:?}");
    }
    assert_eq!(h.node.stats.lookups, 5);
}

// --- bounds ---

#[test]
fn a_flood_of_register_requests_from_a_few_tags_leaves_room_for_everyone_else() {
    // Ten connections send the same valid request as fast as they can (issue 10, item 6):
    // each keeps only its latest `challenges_per_tag_max` challenges, so the table never
    // fills and an honest newcomer gets a challenge on its first request.
    let config = NodeConfig { challenges_pending_max: 100, ..NodeConfig::default() };
    let per_tag = config.challenges_per_tag_max;
    let mut h = Harness::with_config(config);
    let flooder = User::new("flooder", 9);
    for round in 0..50 {
        for t in 0..10u8 {
            let reply = h.ask(tag(150 + t), flooder.register_request());
            assert!(matches!(reply.body(), Body::Challenge { .. }), "round {round}: {reply:?}");
        }
    }
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::Challenges), 10 * per_tag);
    let honest = User::new("honest", 3);
    h.register(&honest);
    // A flooding tag's latest challenge still works (its oldest were replaced).
    let mut f = flooder.clone();
    f.tag = tag(150);
    let nonce = h.challenge_for_register(&f);
    assert!(matches!(h.ask(f.tag, f.register_response(&nonce)).body(), Body::Registered { .. }));
}

#[test]
fn many_tags_logging_in_as_one_account_hold_a_few_challenges_and_the_owner_gets_in() {
    // Fifty connections each ask, again and again, to log in as alice (her installation id
    // is public): between them they hold only her account's share, however many tags
    // they use, and alice's own login still goes through; the share survives a restart.
    let config = NodeConfig { challenges_pending_max: 1_000, ..NodeConfig::default() };
    let per_account = config.login_challenges_per_account_max;
    let mut h = Harness::with_config(config);
    let alice = User::new("alice", 1);
    h.register(&alice);
    let flood = |h: &mut Harness| {
        for t in 0..50u8 {
            for _ in 0..3 {
                let reply = h.ask(tag(100 + t), Body::LoginRequest { installation: alice.installation });
                assert!(matches!(reply.body(), Body::Challenge { .. }), "{reply:?}");
            }
        }
    };
    flood(&mut h);
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::Challenges), per_account);
    h.login(&alice, tag(99));
    // Another account's login is not affected by alice's share.
    let bob = User::new("bob", 2);
    h.register(&bob);
    let _ = h.ask(bob.tag, Body::LoginRequest { installation: bob.installation });
    // alice's share lost one to her answered login; bob's challenge is his own.
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::Challenges), per_account);
    h.flush();
    h.crash_and_restart();
    flood(&mut h);
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::Challenges), per_account + 1);
    h.login(&alice, tag(98));
}

#[test]
fn a_tag_past_its_share_loses_its_oldest_challenge() {
    let mut h = Harness::with_config(NodeConfig { challenges_per_tag_max: 2, ..NodeConfig::default() });
    let alice = User::new("alice", 1);
    let first = h.challenge_for_register(&alice);
    let second = h.challenge_for_register(&alice);
    let third = h.challenge_for_register(&alice);
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::Challenges), 2);
    assert_eq!(h.ask_err(alice.tag, alice.register_response(&first)), ErrorCode::UnknownChallenge);
    assert!(matches!(h.ask(alice.tag, alice.register_response(&third)).body(), Body::Registered { .. }));
    // The share counts login challenges too, and survives a restart.
    h.flush();
    let _ = second;
    h.crash_and_restart();
    for _ in 0..5 {
        let _ = h.ask(alice.tag, Body::LoginRequest { installation: alice.installation });
    }
    assert_eq!(h.node.store().len(nymstr_node_core::store::Table::Challenges), 2);
}

#[test]
fn the_challenge_table_at_its_bound_answers_busy() {
    let mut h = Harness::with_config(NodeConfig { challenges_pending_max: 2, ..NodeConfig::default() });
    let (a, b, c, d) = (User::new("alice", 1), User::new("bob", 2), User::new("carol", 3), User::new("dave", 4));
    h.register(&a);

    // Two pending challenges fill the table: registration and login both get Busy.
    h.challenge_for_register(&b);
    let login = h.ask(a.tag, Body::LoginRequest { installation: a.installation });
    let Body::Challenge { nonce: login_nonce, .. } = *login.body() else { panic!("{login:?}") };
    assert_eq!(h.ask_err(c.tag, c.register_request()), ErrorCode::Busy);
    assert_eq!(h.ask_err(a.tag, Body::LoginRequest { installation: a.installation }), ErrorCode::Busy);

    // Answering a challenge frees its slot.
    let (rid, out) = h.request(a.tag, a.login_response(&login_nonce));
    assert!(out.iter().any(|s| s.rid() == rid && matches!(s.body(), Body::LoggedIn { .. })), "{out:?}");
    h.register(&c);
    let nonce_d = h.challenge_for_register(&d);
    assert_eq!(h.ask_err(c.tag, Body::LoginRequest { installation: c.installation }), ErrorCode::Busy);

    // Expired challenges are swept and free their slots too.
    let at = h.now + h.config().challenge_ttl_us;
    h.timeout(at);
    h.challenge_for_register(&b);
    h.challenge_for_register(&d);
    assert_eq!(h.ask_err(c.tag, Body::LoginRequest { installation: c.installation }), ErrorCode::Busy);
    assert_eq!(h.ask_err(d.tag, d.register_response(&nonce_d)), ErrorCode::UnknownChallenge);
}

// --- durability ---

#[test]
fn a_registration_survives_a_crash_only_once_flushed() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let bob = User::new("bob", 2);

    let registered = h.register(&alice);
    h.flush();
    assert!(h.is_released(&registered));
    let unreleased = h.register(&bob);
    assert!(!h.is_released(&unreleased));

    h.crash_and_restart();
    assert!(matches!(h.lookup(tag(200), "alice"), Body::LookupResult { .. }), "acknowledged, so it must survive");
    assert_eq!(error_code(&h.lookup(tag(200), "bob")), Some(ErrorCode::UnknownUser), "never acknowledged");
    // Alice's tag binding survived with her account; bob may simply register again.
    let (_, out) = h.request(alice.tag, Body::AckDelivery { delivery_ids: vec![] });
    assert!(out.is_empty(), "{out:?}");
    h.register(&bob);
}

#[test]
fn pending_challenges_count_against_the_bound_across_a_restart() {
    let mut h = Harness::with_config(NodeConfig { challenges_pending_max: 1, ..NodeConfig::default() });
    let (a, b) = (User::new("alice", 1), User::new("bob", 2));
    let nonce = h.challenge_for_register(&a);
    h.flush();
    h.crash_and_restart();
    assert_eq!(h.ask_err(b.tag, b.register_request()), ErrorCode::Busy);
    // And the surviving challenge still completes.
    assert!(matches!(h.ask(a.tag, a.register_response(&nonce)).body(), Body::Registered { .. }));
}

#[test]
fn the_sweep_keeps_challenges_that_are_still_valid() {
    let mut h = Harness::new();
    let alice = User::new("alice", 1);
    let nonce = h.challenge_for_register(&alice);
    let at = h.now + h.config().challenge_ttl_us - 1;
    h.timeout(at);
    assert!(matches!(h.ask(alice.tag, alice.register_response(&nonce)).body(), Body::Registered { .. }));
}

#[test]
fn an_account_holds_at_most_the_installation_limit_and_the_next_is_refused() {
    use nymstr_proto::limits::INSTALLATIONS_PER_ACCOUNT_MAX as MAX;
    let mut h = Harness::new();
    let first = User::new("alice", 1);
    h.register(&first);
    let devices: Vec<User> =
        (1..MAX as u64).map(|i| User::with_account("alice", 100 + i, first.account.clone())).collect();
    for d in &devices {
        h.register(d);
    }
    // One more is refused with a typed error; nothing is evicted behind anyone's back.
    let extra = User::with_account("alice", 999, first.account.clone());
    let nonce = h.challenge_for_register(&extra);
    assert_eq!(h.ask_err(extra.tag, extra.register_response(&nonce)), ErrorCode::InstallationLimit);
    let Body::LookupResult { installations, .. } = h.lookup(tag(200), "alice") else { panic!() };
    assert_eq!(installations.len(), MAX);
    assert!(installations.contains(&first.cert));
    for d in &devices {
        assert!(installations.contains(&d.cert));
    }
    assert!(!installations.contains(&extra.cert));
    assert_eq!(
        h.ask_err(tag(201), Body::LoginRequest { installation: extra.installation }),
        ErrorCode::UnknownInstallation
    );
}

#[test]
fn a_certificate_with_a_low_order_dh_key_is_refused() {
    // Every message sealed to such a key would be readable by anyone, and clients drop
    // such certificates at lookup; the node refuses them at registration.
    let mut h = Harness::new();
    let mut weak = User::new("weakling", 1);
    let inst = weak.installation_key.verifying_key().to_bytes();
    weak.cert = nymstr_proto::identity::issue_cert(&weak.account, &inst, &[0; 32], T0);
    assert_eq!(h.ask_err(weak.tag, weak.register_request()), ErrorCode::BadCertificate);
}
