//! The seeded MLS provider replays: the same seeds give byte-identical MLS messages, even
//! though openmls encrypts an update path on rayon's thread pool (seal calls run in a
//! different order every time).

use nymstr_mls::{DEFAULT_CIPHERSUITE, InstallationSigner, NymstrProvider, unbounded_lifetime};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;

fn signer(i: u8) -> (InstallationSigner, CredentialWithKey) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[i; 32]);
    let signer = InstallationSigner(key);
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(vec![i]).into(),
        signature_key: signer.public_key().to_vec().into(),
    };
    (signer, cwk)
}

/// An admin adds `n` members in one commit; returns the commit's bytes.
fn add_commit(n: u8) -> Vec<u8> {
    let provider = NymstrProvider::new([0xaa; 32]);
    let (admin, admin_cred) = signer(0);
    let mut group = MlsGroup::builder()
        .ciphersuite(DEFAULT_CIPHERSUITE)
        .lifetime(unbounded_lifetime())
        .with_group_id(GroupId::from_slice(&[7; 16]))
        .build(&provider, &admin, admin_cred)
        .expect("group");
    let key_packages: Vec<KeyPackage> = (1..=n)
        .map(|i| {
            let p = NymstrProvider::new([i; 32]);
            let (s, c) = signer(i);
            KeyPackage::builder()
                .key_package_lifetime(unbounded_lifetime())
                .build(DEFAULT_CIPHERSUITE, &p, &s, c)
                .expect("key package")
                .key_package()
                .clone()
        })
        .collect();
    let (commit, _, _) = group.add_members(&provider, &admin, &key_packages).expect("add");
    group.merge_pending_commit(&provider).expect("merge");
    // A second commit with a full update path over the now populated tree.
    let (update, _, _) =
        group.self_update(&provider, &admin, LeafNodeParameters::default()).expect("update").into_messages();
    let mut out = commit.tls_serialize_detached().expect("encode");
    out.extend(update.tls_serialize_detached().expect("encode"));
    out
}

#[test]
fn same_seeds_same_commits_under_parallel_encryption() {
    let first = add_commit(60);
    for _ in 0..3 {
        assert!(add_commit(60) == first, "commit bytes differ between runs with the same seeds");
    }
}

#[test]
fn other_seed_other_commit() {
    let a = add_commit(3);
    let provider = NymstrProvider::new([2; 32]);
    let (admin, admin_cred) = signer(0);
    let group = MlsGroup::builder()
        .ciphersuite(DEFAULT_CIPHERSUITE)
        .lifetime(unbounded_lifetime())
        .with_group_id(GroupId::from_slice(&[7; 16]))
        .build(&provider, &admin, admin_cred)
        .expect("group");
    // Different provider seed: different encryption secrets (the epoch authenticator).
    let b = group.epoch_authenticator().as_slice().to_vec();
    assert!(!a.is_empty() && !b.is_empty());
    let again = NymstrProvider::new([0xaa; 32]);
    let (admin, admin_cred) = signer(0);
    let c = MlsGroup::builder()
        .ciphersuite(DEFAULT_CIPHERSUITE)
        .lifetime(unbounded_lifetime())
        .with_group_id(GroupId::from_slice(&[7; 16]))
        .build(&again, &admin, admin_cred)
        .expect("group");
    assert_ne!(b, c.epoch_authenticator().as_slice().to_vec());
}
