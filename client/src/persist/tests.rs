//! The home: state round trips, initialisation, the lock, the history.

use super::*;
use nymstr_client_core::core::{ClientConfig, ClientCore, Identity};
use nymstr_client_core::core::{Contact, DirectPeer, OutgoingDm, SeenLog, Via};
use nymstr_client_core::seal::{DirectAddress, DmContent};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::BTreeSet;

fn identity() -> IdentityState {
    Identity::generate(&mut ChaCha20Rng::seed_from_u64(1), 1_000).to_state()
}

fn sample_state(id: &IdentityState, n: u64) -> ClientState {
    let mut s = ClientState {
        identity: Some(id.clone()),
        username: Some("alice".into()),
        registered: true,
        ..ClientState::default()
    };
    s.contacts
        .insert("bob".into(), Contact { account_key: [2; 32], installations: vec![id.cert.clone()], fetched_at_us: 5 });
    s.pins.insert(0, ("bob".into(), [2; 32]));
    s.seen = SeenLog { first_seq: n, ids: (0..n as u8 + 3).map(|i| ([i; 32], [i; 16])).collect() };
    s.outgoing.insert(
        [9; 16],
        OutgoingDm {
            to: "bob".into(),
            msg_id: [9; 16],
            content: DmContent::Text { body: b"hi".to_vec() },
            sent_at_us: 7,
            relayed: true,
            direct_done: BTreeSet::new(),
        },
    );
    let mut peer = DirectPeer { enabled: true, ..DirectPeer::default() };
    peer.routes.insert(
        [3; 32],
        nymstr_client_core::core::DirectRoute {
            addr: DirectAddress::Tcp("127.0.0.1:9".into()),
            announced_at_us: 1,
            failures: 0,
            down_until_us: 0,
        },
    );
    s.direct.insert("bob".into(), peer);
    // The transparency verifier is saved whole (the core always exports one).
    s.transparency = Some(nymstr_proto::federation::verify::Verifier::new(
        nymstr_proto::federation::verify::TrustPolicy::WitnessQuorum { required: 2 },
    ));
    s
}

#[test]
fn state_survives_a_reopen_and_saves_only_differences() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity();
    let mut home = Home::create(dir.path(), &id).unwrap();
    let state = sample_state(&id, 0);
    assert!(home.save_state(&state).unwrap());
    assert!(!home.save_state(&state).unwrap(), "nothing changed, nothing written");
    // The seen log moves on: two evicted at the front, two appended.
    let mut later = state.clone();
    later.seen.first_seq = 2;
    later.seen.ids.drain(..2);
    later.seen.ids.push(([100; 32], [100; 16]));
    later.seen.ids.push(([101; 32], [101; 16]));
    later.outgoing.clear();
    assert!(home.save_state(&later).unwrap());
    drop(home);
    let home = Home::open(dir.path()).unwrap();
    assert_eq!(home.state(), later);
    // And the core restores from it.
    let core = ClientCore::restore(ChaCha20Rng::seed_from_u64(2), ClientConfig::default(), home.state()).unwrap();
    assert_eq!(core.export_state(), later);
    assert_eq!(
        core.transparency().policy(),
        &nymstr_proto::federation::verify::TrustPolicy::WitnessQuorum { required: 2 },
        "the saved verifier, not a fresh one from the config"
    );
}

#[test]
fn init_refuses_an_existing_home_and_open_refuses_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Home::open(dir.path()), Err(PersistError::NotInitialised(_))));
    let id = identity();
    drop(Home::create(dir.path(), &id).unwrap());
    assert!(matches!(Home::create(dir.path(), &id), Err(PersistError::AlreadyInitialised(_))));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the identity file is the owner's alone");
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

#[test]
fn a_second_process_is_told_the_home_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let _home = Home::create(dir.path(), &identity()).unwrap();
    // sled's lock is per process (flock); within one process a second open succeeds
    // or fails depending on the platform, so only the error mapping is checked here.
    if let Err(e) = Home::open(dir.path()) {
        assert!(matches!(e, PersistError::Locked(_)), "{e}");
    }
}

#[test]
fn history_records_once_and_tracks_status() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::create(dir.path(), &identity()).unwrap();
    let entry = HistoryEntry {
        seq: 0,
        at_us: 10,
        peer: "bob".into(),
        direction: Direction::Out,
        msg_id: [1; 16],
        sent_at_us: 10,
        body: b"hello".to_vec(),
        status: Status::Pending,
        via: None,
        read: true,
    };
    let first = home.record(entry.clone()).unwrap();
    let again = home.record(entry.clone()).unwrap();
    assert_eq!(first, again);
    let incoming = HistoryEntry { direction: Direction::In, status: Status::Received, read: false, ..entry };
    home.record(incoming).unwrap();
    home.update_outgoing("bob", &[1; 16], |e| {
        e.status = Status::Delivered;
        e.via = Some(Via::Direct);
    })
    .unwrap();
    let all = home.history(None, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].status, Status::Delivered);
    assert_eq!(home.history(Some("carol"), 10).unwrap().len(), 0);
    let unread = home.unread().unwrap();
    assert_eq!(unread.len(), 1);
    home.mark_read(&unread[0]).unwrap();
    assert!(home.unread().unwrap().is_empty());
}
