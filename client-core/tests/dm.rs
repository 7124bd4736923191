//! End-to-end DM sealing specification (`nymstr_client_core::seal`): what `open` accepts, and
//! every way a payload sealed for someone else, re-routed, re-signed or tampered with is
//! refused.

use ed25519_dalek::SigningKey;
use nymstr_client_core::Identity;
use nymstr_client_core::seal::{self, OpenError, OpenedDm, Recipient, SealedDm, Sender};
use nymstr_proto::codec;
use nymstr_proto::identity;
use nymstr_proto::wire::{InstallationCert, MsgId, PublicKey};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const T0: u64 = 1_700_000_000_000_000;
const MSG: MsgId = [7; 16];

struct Party {
    name: &'static str,
    id: Identity,
}

impl Party {
    fn new(name: &'static str, seed: u64) -> Self {
        Self { name, id: Identity::generate(&mut ChaCha20Rng::seed_from_u64(seed), T0) }
    }

    fn account_key(&self) -> PublicKey {
        self.id.account.verifying_key().to_bytes()
    }

    fn sender(&self) -> Sender<'_> {
        Sender { username: self.name, key: &self.id.installation, cert: &self.id.cert }
    }

    fn recipient(&self) -> Recipient<'_> {
        Recipient { username: self.name, home: None, installation: self.id.installation_id, dh_secret: &self.id.dh }
    }

    /// Seals `body` from `self` to `to`, as the client does.
    fn seal_to(&self, to: &Party, msg_id: &MsgId, body: &[u8]) -> Vec<u8> {
        let mut rng = ChaCha20Rng::seed_from_u64(1234);
        seal::seal(&mut rng, &self.sender(), to.name, &to.id.cert, msg_id, T0 + 5, body)
    }

    /// Opens `sealed` at `self`, routed as coming from `from` with `msg_id`, with `from`'s
    /// account key pinned.
    fn open_from(&self, from: &Party, msg_id: &MsgId, sealed: &[u8]) -> Result<OpenedDm, OpenError> {
        seal::open(&self.recipient(), from.name, &from.id.installation_id, msg_id, &from.account_key(), sealed)
    }
}

fn alice_bob() -> (Party, Party) {
    (Party::new("alice", 1), Party::new("bob", 2))
}

#[test]
fn the_recipient_opens_what_was_sealed_for_it() {
    let (alice, bob) = alice_bob();
    let sealed = alice.seal_to(&bob, &MSG, b"hello bob");
    let opened = bob.open_from(&alice, &MSG, &sealed).expect("opens");
    assert_eq!(
        opened,
        OpenedDm {
            from_username: "alice".into(),
            from_account_key: alice.account_key(),
            from_installation: alice.id.installation_id,
            msg_id: MSG,
            sent_at_us: T0 + 5,
            body: b"hello bob".to_vec(),
        }
    );
    // Empty and large bodies too.
    for body in [&b""[..], &vec![0x5a; 30_000][..]] {
        let sealed = alice.seal_to(&bob, &MSG, body);
        assert_eq!(bob.open_from(&alice, &MSG, &sealed).unwrap().body, body);
    }
}

#[test]
fn the_plaintext_does_not_appear_in_the_sealed_payload() {
    let (alice, bob) = alice_bob();
    let body = b"a very secret and quite recognisable body";
    let sealed = alice.seal_to(&bob, &MSG, body);
    assert!(!sealed.windows(body.len()).any(|w| w == body));
    assert!(!sealed.windows(5).any(|w| w == b"alice"), "the sender's name is inside the ciphertext too");
}

#[test]
fn every_seal_uses_a_fresh_ephemeral_key() {
    let (alice, bob) = alice_bob();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let a = seal::seal(&mut rng, &alice.sender(), "bob", &bob.id.cert, &MSG, T0, b"same");
    let b = seal::seal(&mut rng, &alice.sender(), "bob", &bob.id.cert, &MSG, T0, b"same");
    let (a, b): (SealedDm, SealedDm) = (codec::decode(&a).unwrap(), codec::decode(&b).unwrap());
    assert_ne!(a.eph_pub, b.eph_pub);
    assert_ne!(a.ciphertext, b.ciphertext);
}

#[test]
fn a_payload_sealed_for_another_installation_does_not_open() {
    let (alice, bob) = alice_bob();
    let carol = Party::new("carol", 3);
    let sealed = alice.seal_to(&bob, &MSG, b"for bob");
    // Carol with her own key, and carol routed as if she were bob's installation.
    assert_eq!(carol.open_from(&alice, &MSG, &sealed), Err(OpenError::Decrypt));
    let impersonating =
        Recipient { username: "bob", home: None, installation: bob.id.installation_id, dh_secret: &carol.id.dh };
    let r = seal::open(&impersonating, "alice", &alice.id.installation_id, &MSG, &alice.account_key(), &sealed);
    assert_eq!(r, Err(OpenError::Decrypt));
}

#[test]
fn a_mismatched_msg_id_does_not_open() {
    // The node cannot re-label a message (e.g. to defeat de-duplication or replay it).
    let (alice, bob) = alice_bob();
    let sealed = alice.seal_to(&bob, &MSG, b"x");
    assert_eq!(bob.open_from(&alice, &[8; 16], &sealed), Err(OpenError::Decrypt));
}

#[test]
fn a_mismatched_sender_installation_or_username_does_not_open() {
    let (alice, bob) = alice_bob();
    let carol = Party::new("carol", 3);
    let sealed = alice.seal_to(&bob, &MSG, b"x");
    // Routed as coming from carol's installation: bound by the AEAD's associated data.
    let r = seal::open(&bob.recipient(), "alice", &carol.id.installation_id, &MSG, &alice.account_key(), &sealed);
    assert_eq!(r, Err(OpenError::Decrypt));
    // Routed as coming from "carol" (with carol's key pinned): the inner name disagrees.
    let r = seal::open(&bob.recipient(), "carol", &alice.id.installation_id, &MSG, &carol.account_key(), &sealed);
    assert_eq!(r, Err(OpenError::Mismatch));
}

#[test]
fn a_payload_for_another_username_does_not_open() {
    // Bob's installation, but sealed as addressed to "robert" (e.g. a renamed account).
    let (alice, bob) = alice_bob();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let sealed = seal::seal(&mut rng, &alice.sender(), "robert", &bob.id.cert, &MSG, T0, b"x");
    assert_eq!(bob.open_from(&alice, &MSG, &sealed), Err(OpenError::Mismatch));
}

#[test]
fn a_certificate_from_another_account_than_the_pinned_one_is_refused() {
    let (alice, bob) = alice_bob();
    let mallory = Party::new("mallory", 66);
    let sealed = alice.seal_to(&bob, &MSG, b"x");
    // Bob pinned mallory's account key for "alice" (or alice re-keyed): not alice's cert.
    let r = seal::open(&bob.recipient(), "alice", &alice.id.installation_id, &MSG, &mallory.account_key(), &sealed);
    assert_eq!(r, Err(OpenError::BadCertificate));
}

#[test]
fn a_certificate_claiming_the_pinned_account_but_signed_by_another_is_refused() {
    let (alice, bob) = alice_bob();
    let mallory = Party::new("mallory", 66);
    // Mallory issues herself a cert for her installation under her own account key, then
    // claims alice's account key.
    let inst_pub = mallory.id.installation.verifying_key().to_bytes();
    let mut cert: InstallationCert = identity::issue_cert(&mallory.id.account, &inst_pub, &mallory.id.cert.dh_key, T0);
    cert.account_key = alice.account_key();
    let sender = Sender { username: "alice", key: &mallory.id.installation, cert: &cert };
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let sealed = seal::seal(&mut rng, &sender, "bob", &bob.id.cert, &MSG, T0, b"x");
    let r = seal::open(&bob.recipient(), "alice", &mallory.id.installation_id, &MSG, &alice.account_key(), &sealed);
    assert_eq!(r, Err(OpenError::BadCertificate));
}

#[test]
fn an_inner_signature_by_another_key_is_refused() {
    // Alice's real certificate, but the message signed by a key that is not its installation key.
    let (alice, bob) = alice_bob();
    let other = SigningKey::from_bytes(&[42; 32]);
    let sender = Sender { username: "alice", key: &other, cert: &alice.id.cert };
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let sealed = seal::seal(&mut rng, &sender, "bob", &bob.id.cert, &MSG, T0, b"x");
    assert_eq!(bob.open_from(&alice, &MSG, &sealed), Err(OpenError::BadSignature));
}

#[test]
fn garbage_and_truncated_payloads_are_malformed_or_undecryptable() {
    let (alice, bob) = alice_bob();
    assert_eq!(bob.open_from(&alice, &MSG, &[]), Err(OpenError::Malformed));
    assert_eq!(bob.open_from(&alice, &MSG, &[0xff; 10]), Err(OpenError::Malformed));
    let sealed = alice.seal_to(&bob, &MSG, b"x");
    for cut in 0..sealed.len() {
        assert!(bob.open_from(&alice, &MSG, &sealed[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert_eq!(bob.open_from(&alice, &MSG, &longer), Err(OpenError::Malformed));
}

#[test]
fn a_flipped_ciphertext_byte_or_a_swapped_ephemeral_key_is_refused() {
    let (alice, bob) = alice_bob();
    let sealed = alice.seal_to(&bob, &MSG, b"x");
    let parsed: SealedDm = codec::decode(&sealed).unwrap();
    let mut tampered = parsed.clone();
    tampered.ciphertext[0] ^= 0x01;
    assert_eq!(bob.open_from(&alice, &MSG, &codec::encode(&tampered)), Err(OpenError::Decrypt));
    let mut swapped = parsed.clone();
    swapped.eph_pub = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([5; 32])).to_bytes();
    assert_eq!(bob.open_from(&alice, &MSG, &codec::encode(&swapped)), Err(OpenError::Decrypt));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No single-bit change anywhere in a sealed payload is accepted.
    #[test]
    fn no_bit_flip_opens(bit in any::<usize>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (alice, bob) = alice_bob();
        let mut sealed = alice.seal_to(&bob, &MSG, &body);
        let i = bit % (sealed.len() * 8);
        sealed[i / 8] ^= 1 << (i % 8);
        prop_assert!(bob.open_from(&alice, &MSG, &sealed).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// Qualified names (`specs/relay.md` §7): a home node cannot relabel a sender as a namesake
// of another node.

mod qualified {
    use super::*;
    use nymstr_client_core::{ClientConfig, ClientCore, ClientState, Contact, Event};
    use nymstr_proto::codec::encode_frame;
    use nymstr_proto::federation::NodeId;
    use nymstr_proto::wire::{Body, Envelope};

    const X: NodeId = NodeId([0x11; 32]);
    const B: NodeId = NodeId([0x22; 32]);
    const Y: NodeId = NodeId([0x33; 32]);

    fn contact(p: &Party) -> Contact {
        Contact { account_key: p.account_key(), installations: vec![p.id.cert.clone()], fetched_at_us: T0 }
    }

    /// A registered client of node `home`, knowing `contacts` (name, who) as its node
    /// answered their lookups.
    fn client(p: &Party, home: NodeId, contacts: &[(String, &Party)]) -> ClientCore {
        let state = ClientState {
            identity: Some(p.id.to_state()),
            username: Some(p.name.into()),
            registered: true,
            contacts: contacts.iter().map(|(n, c)| (n.clone(), contact(c))).collect(),
            ..Default::default()
        };
        let mut core = ClientCore::restore(ChaCha20Rng::seed_from_u64(9), ClientConfig::default(), state).unwrap();
        core.set_home_node(home);
        core
    }

    /// alice of node X sends to bob@B; bob's home delivers it under `routed_as`, having
    /// answered bob's lookup of that name with alice's real key. What does bob see?
    fn bob_receives_as(routed_as: &str) -> Vec<Event> {
        let (alice, bob) = alice_bob();
        let bob_at_b = format!("bob@{}", B.to_hex());
        let mut alice_core = client(&alice, X, &[(bob_at_b.clone(), &bob)]);
        let msg_id = alice_core.send_dm(T0, &bob_at_b, b"from alice of X").unwrap();
        let Some(Body::SendDm(dm)) = alice_core.drain_transmits().map(|e| e.body).next() else {
            panic!("alice sends through her node")
        };
        let mut bob_core = client(&bob, B, &[(routed_as.to_string(), &alice)]);
        let deliver = Body::Deliver {
            delivery_id: 1,
            from_username: routed_as.into(),
            from: alice.id.installation_id,
            msg_id,
            sealed: dm.payloads[0].sealed.clone(),
        };
        bob_core.handle_frame(T0, &encode_frame(&Envelope { request_id: 0, body: deliver }).unwrap());
        std::iter::from_fn(|| bob_core.poll_event()).collect()
    }

    #[test]
    fn a_sender_relabelled_as_a_namesake_of_another_node_is_refused() {
        let honest = bob_receives_as(&format!("alice@{}", X.to_hex()));
        assert!(matches!(&honest[..], [Event::Received { body, .. }] if body == b"from alice of X"), "{honest:?}");
        // bob's home shows the message as from its own "alice", or from "alice" of a node
        // it runs (Y): same local part, other namespace. Both are refused.
        for routed_as in ["alice".to_string(), format!("alice@{}", Y.to_hex())] {
            let events = bob_receives_as(&routed_as);
            assert!(
                matches!(&events[..], [Event::Rejected { reason: OpenError::Mismatch, .. }]),
                "{routed_as}: {events:?}"
            );
        }
    }

    #[test]
    fn the_signed_names_are_qualified_with_the_home_node() {
        let (alice, bob) = alice_bob();
        // To a user of the same node: both names carry the home's id.
        let sealed = seal::seal(
            &mut ChaCha20Rng::seed_from_u64(1),
            &Sender {
                username: &seal::signed_name("alice", Some(&B)),
                key: &alice.id.installation,
                cert: &alice.id.cert,
            },
            &seal::signed_name("bob", Some(&B)),
            &bob.id.cert,
            &MSG,
            T0,
            b"hi",
        );
        let recipient =
            Recipient { username: "bob", home: Some(&B), installation: bob.id.installation_id, dh_secret: &bob.id.dh };
        let open = |r: &Recipient<'_>, from: &str| {
            seal::open(r, from, &alice.id.installation_id, &MSG, &alice.account_key(), &sealed)
        };
        assert_eq!(open(&recipient, "alice").unwrap().from_username, "alice");
        assert_eq!(open(&recipient, &format!("alice@{}", Y.to_hex())), Err(OpenError::Mismatch));
        // A recipient whose home is another node refuses it (it was signed to bob@B).
        let elsewhere = Recipient { home: Some(&Y), ..recipient };
        assert_eq!(open(&elsewhere, "alice"), Err(OpenError::Mismatch));
    }
}
