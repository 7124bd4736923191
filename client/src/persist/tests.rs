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

/// A client that verified and pinned `n` contacts on one node.
fn state_with_pinned_contacts(id: &IdentityState, n: usize) -> ClientState {
    use nymstr_proto::federation::verify::{TrustPolicy, Verifier};
    use nymstr_proto::federation::{DirEntry, EntryStatus, NodeId};
    let mut s = sample_state(id, 0);
    let node = NodeId([7; 32]);
    let mut verifier = Verifier::new(TrustPolicy::WitnessQuorum { required: 2 });
    for i in 0..n {
        let name = format!("contact{i:05}");
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let entry = DirEntry {
            username: name.clone(),
            account_key: key,
            installations: Vec::new(),
            status: EntryStatus::Active,
            seq: 1,
            epoch: i as u64,
        };
        assert!(verifier.accept_key_change(&node, &name, &entry));
        s.contacts
            .insert(name.clone(), Contact { account_key: key, installations: vec![id.cert.clone()], fetched_at_us: 5 });
        s.pins.insert(i as u64 + 1, (name, key));
    }
    assert_eq!(verifier.pins().len(), n);
    s.transparency = Some(verifier);
    s
}

/// Issue 10: ~850 pins made the verifier, stored as one record, outgrow the codec's 64 KiB
/// limit and the home stopped opening. Stored one row per pin, 5,000 pinned contacts open.
#[test]
fn a_home_with_5000_pinned_contacts_opens() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity();
    let mut home = Home::create(dir.path(), &id).unwrap();
    let state = state_with_pinned_contacts(&id, 5_000);
    assert!(home.save_state(&state).unwrap());
    // One more pin writes one row, not the whole verifier.
    let mut later = state.clone();
    let node = nymstr_proto::federation::NodeId([7; 32]);
    let entry = nymstr_proto::federation::DirEntry {
        username: "latecomer".into(),
        account_key: [5; 32],
        installations: Vec::new(),
        status: nymstr_proto::federation::EntryStatus::Active,
        seq: 1,
        epoch: 1,
    };
    assert!(later.transparency.as_mut().unwrap().accept_key_change(&node, "latecomer", &entry));
    let before = home.transparency.len();
    assert!(home.save_state(&later).unwrap());
    assert_eq!(home.transparency.len(), before + 1);
    drop(home);
    let home = Home::open(dir.path()).expect("a home with 5,000 pinned contacts opens");
    assert_eq!(home.state(), later);
    let every_row_small = home.transparency.iter().all(|r| r.unwrap().1.len() < 1_024);
    assert!(every_row_small, "no record grows with the number of pins");
}

/// A home of format 1 (the verifier as one record in `meta`, past 64 KiB) opens: the record
/// is read once, rewritten as rows and removed, and the home is marked format 2.
#[test]
fn a_format_1_home_is_migrated_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity();
    let mut home = Home::create(dir.path(), &id).unwrap();
    let state = state_with_pinned_contacts(&id, 2_000);
    home.save_state(&state).unwrap();
    let legacy = codec::encode(state.transparency.as_ref().unwrap());
    assert!(legacy.len() > nymstr_proto::limits::FRAME_BYTES_MAX);
    home.transparency.clear().unwrap();
    home.meta.insert("transparency", legacy).unwrap();
    home.meta.insert("version", codec::encode(&1u32)).unwrap();
    home.flush().unwrap();
    drop(home);
    let home = Home::open(dir.path()).expect("a format 1 home opens");
    assert_eq!(home.state(), state);
    assert!(home.meta.get("transparency").unwrap().is_none(), "the old record is gone");
    assert_eq!(home.transparency.len(), 2_000 + 1, "the policy and one row per pin");
    drop(home);
    assert_eq!(Home::open(dir.path()).unwrap().state(), state, "and opens again from the rows");
}

/// The migration marks the home's current format in the same flush that removes the old record: a
/// crash right after that flush must not leave a home an older nymstr reads as format 1
/// with no verifier (it would silently start over without pins or heads).
#[test]
fn the_migration_marks_the_format_in_the_flush_that_drops_the_old_record() {
    let dir = tempfile::tempdir().unwrap();
    let id = identity();
    let mut home = Home::create(dir.path(), &id).unwrap();
    let state = state_with_pinned_contacts(&id, 10);
    home.save_state(&state).unwrap();
    home.transparency.clear().unwrap();
    home.meta.insert("transparency", codec::encode(state.transparency.as_ref().unwrap())).unwrap();
    home.meta.insert("version", codec::encode(&1u32)).unwrap();
    home.flush().unwrap();
    let migrated = home.read_transparency().unwrap();
    assert_eq!(migrated.as_ref(), state.transparency.as_ref());
    assert!(home.meta.get("transparency").unwrap().is_none(), "the old record is gone");
    let version: u32 = codec::decode(&home.meta.get("version").unwrap().unwrap()).unwrap();
    assert_eq!(version, FORMAT_VERSION, "and the home says so in the same flush");
}
