//! The state snapshot: `export_state` gathers everything a client keeps across restarts
//! into a `ClientState`, `restore` rebuilds a client from one.

use rand_chacha::ChaCha20Rng;

use super::{ClientConfig, ClientCore, ClientState, Identity, RestoreError, SeenLog};

impl ClientCore {
    /// Restarts a client from a state exported earlier. A registration that had not
    /// finished is forgotten (the username is registered again from the start); every
    /// unacknowledged message goes again after the next login.
    pub fn restore(rng: ChaCha20Rng, config: ClientConfig, state: ClientState) -> Result<Self, RestoreError> {
        let mut c = Self::new(rng, config);
        c.identity = state.identity.as_ref().map(Identity::from_state).transpose()?;
        if state.registered && (c.identity.is_none() || state.username.is_none()) {
            return Err(RestoreError::Incomplete);
        }
        c.registered = state.registered;
        c.username = if state.registered { state.username } else { None };
        c.contacts = state.contacts;
        for (seq, (name, key)) in state.pins {
            c.pins.insert(name.clone(), (seq, key));
            c.pin_order.insert(seq, name);
            c.next_pin_seq = seq + 1;
        }
        c.seen_first_seq = state.seen.first_seq;
        for id in state.seen.ids {
            c.seen.insert(id);
            c.seen_order.push_back(id);
        }
        c.unacked = state.outgoing;
        c.direct = state.direct;
        if let Some(v) = state.transparency {
            c.verifier = v;
            for d in &c.config.witnesses {
                let _ = c.verifier.learn_node(d);
            }
        }
        c.home = state.home_node;
        Ok(c)
    }

    /// A snapshot of everything `restore` needs.
    pub fn export_state(&self) -> ClientState {
        let mut outgoing = self.unacked.clone();
        for dm in self.outbox.values().flatten() {
            outgoing.insert(dm.msg_id, dm.clone());
        }
        ClientState {
            identity: self.identity.as_ref().map(Identity::to_state),
            username: self.username.clone(),
            registered: self.registered,
            contacts: self.contacts.clone(),
            pins: self.pins.iter().map(|(name, (seq, key))| (*seq, (name.clone(), *key))).collect(),
            seen: SeenLog { first_seq: self.seen_first_seq, ids: self.seen_order.iter().copied().collect() },
            outgoing,
            direct: self.direct.clone(),
            transparency: Some(self.verifier.clone()),
            home_node: self.home,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{DirectRoute, Event, TimeUs};
    use crate::seal::{self, DirectAddress, DmContent, Sender};
    use nymstr_proto::codec;
    use nymstr_proto::wire::{Body, Envelope};
    use rand_core::SeedableRng;

    const T0: TimeUs = 1_700_000_000_000_000;

    fn rng(n: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(n)
    }

    fn frame(request_id: u64, body: Body) -> Vec<u8> {
        codec::encode_frame(&Envelope { request_id, body }).unwrap()
    }

    /// A registered alice who looked bob up, has one message from him, one unacknowledged
    /// message to him, a direct route to him, and a pin for carol.
    fn alice_with_history() -> (ClientCore, Identity) {
        let alice_id = Identity::generate(&mut rng(1), T0);
        let bob = Identity::generate(&mut rng(2), T0);
        let mut alice = ClientCore::with_identity(rng(3), ClientConfig::default(), alice_id, "alice".into());
        alice.lookup(T0, "bob").unwrap();
        let rid = alice.drain_transmits().next_back().unwrap().request_id;
        let result = Body::LookupResult {
            username: "bob".into(),
            account_key: bob.cert.account_key,
            installations: vec![bob.cert.clone()],
        };
        alice.handle_frame(T0, &frame(rid, result));
        alice.pin("carol".into(), [7; 32]);
        let content = codec::encode(&DmContent::Text { body: b"hi alice".to_vec() });
        let sender = Sender { username: "bob", key: &bob.installation, cert: &bob.cert };
        let alice_cert = alice.identity().unwrap().cert.clone();
        let sealed = seal::seal(&mut rng(4), &sender, "alice", &alice_cert, &[5; 16], T0, &content);
        let deliver = Body::Deliver {
            delivery_id: 1,
            from_username: "bob".into(),
            from: bob.installation_id,
            msg_id: [5; 16],
            sealed,
        };
        alice.handle_frame(T0, &frame(0, deliver));
        alice.send_dm(T0 + 1, "bob", b"hello bob").unwrap();
        alice.direct.entry("bob".into()).or_default().routes.insert(
            bob.installation_id,
            DirectRoute {
                addr: DirectAddress::Tcp("127.0.0.1:7001".into()),
                announced_at_us: T0,
                failures: 1,
                down_until_us: T0 + 5,
            },
        );
        alice.direct.get_mut("bob").unwrap().enabled = true;
        alice.drain_transmits().for_each(drop);
        while alice.poll_event().is_some() {}
        (alice, bob)
    }

    #[test]
    fn state_round_trips_through_the_codec_and_restore() {
        let (alice, _) = alice_with_history();
        let state = alice.export_state();
        assert!(state.registered);
        assert_eq!(state.contacts.len(), 1);
        assert_eq!(state.pins.len(), 2, "bob (first use) and carol");
        assert_eq!(state.seen.ids.len(), 1);
        assert_eq!(state.outgoing.len(), 1);
        assert_eq!(state.direct.len(), 1);
        let bytes = codec::encode(&state);
        let decoded: ClientState = codec::decode(&bytes).unwrap();
        assert_eq!(decoded, state);
        let restored = ClientCore::restore(rng(9), ClientConfig::default(), decoded).unwrap();
        assert_eq!(restored.export_state(), state);
        assert_eq!(restored.pins().map(|(n, _)| n).collect::<Vec<_>>(), vec!["bob", "carol"], "pin order survives");
        assert_eq!(restored.identity().unwrap().installation_id, alice.identity().unwrap().installation_id);
    }

    #[test]
    fn a_restored_client_sends_its_unacknowledged_messages_after_login() {
        let (alice, _) = alice_with_history();
        let msg_id = *alice.export_state().outgoing.keys().next().unwrap();
        let mut state = alice.export_state();
        state.direct.clear(); // relay only, for this test
        let mut restored = ClientCore::restore(rng(10), ClientConfig::default(), state).unwrap();
        assert_eq!(restored.unacked_sends(), 1);
        restored.login(T0 + 10).unwrap();
        let rid = restored.drain_transmits().next().unwrap().request_id;
        restored.handle_frame(
            T0 + 10,
            &frame(
                rid,
                Body::Challenge {
                    nonce: [1; 32],
                    expires_at_us: T0 + 60_000_000,
                    node: nymstr_proto::federation::NodeId([2; 32]),
                },
            ),
        );
        let rid = restored.drain_transmits().next().unwrap().request_id;
        restored.handle_frame(T0 + 10, &frame(rid, Body::LoggedIn { installation: [0; 32], queued: 0 }));
        let sends: Vec<_> = restored
            .drain_transmits()
            .filter_map(|e| match e.body {
                Body::SendDm(dm) => Some(dm.msg_id),
                _ => None,
            })
            .collect();
        assert_eq!(sends, vec![msg_id], "same message id: the node and bob deduplicate");
        restored.handle_frame(T0 + 11, &frame(0, Body::SendAck { msg_id }));
        assert!(restored.poll_event().is_some_and(|e| matches!(e, Event::LoggedIn { .. })));
        assert_eq!(restored.poll_event(), Some(Event::SendAcked { to: "bob".into(), msg_id }));
        assert_eq!(restored.unacked_sends(), 0);
    }

    #[test]
    fn a_seen_message_stays_seen_across_a_restore() {
        let (alice, bob) = alice_with_history();
        let mut restored = ClientCore::restore(rng(11), ClientConfig::default(), alice.export_state()).unwrap();
        let content = codec::encode(&DmContent::Text { body: b"hi alice".to_vec() });
        let sender = Sender { username: "bob", key: &bob.installation, cert: &bob.cert };
        let cert = restored.identity().unwrap().cert.clone();
        let sealed = seal::seal(&mut rng(12), &sender, "alice", &cert, &[5; 16], T0, &content);
        let deliver = Body::Deliver {
            delivery_id: 2,
            from_username: "bob".into(),
            from: bob.installation_id,
            msg_id: [5; 16],
            sealed,
        };
        restored.handle_frame(T0 + 20, &frame(0, deliver));
        assert_eq!(restored.poll_event(), None, "a redelivered message surfaces once");
        let acks: Vec<_> = restored.drain_transmits().map(|e| e.body).collect();
        assert_eq!(acks, vec![Body::AckDelivery { delivery_ids: vec![2] }]);
    }

    #[test]
    fn the_seen_log_numbers_survive_eviction() {
        let config = ClientConfig { seen_max: 2, ..ClientConfig::default() };
        let mut c = ClientCore::new(rng(13), config.clone());
        for i in 0..5u8 {
            c.remember([i; 32], [i; 16]);
        }
        let state = c.export_state();
        assert_eq!(state.seen.first_seq, 3);
        assert_eq!(state.seen.ids, vec![([3; 32], [3; 16]), ([4; 32], [4; 16])]);
        let mut restored = ClientCore::restore(rng(14), config, state).unwrap();
        restored.remember([5; 32], [5; 16]);
        let state = restored.export_state();
        assert_eq!(state.seen.first_seq, 4);
        assert_eq!(state.seen.ids.len(), 2);
    }

    #[test]
    fn a_mismatched_identity_is_refused() {
        let (alice, _) = alice_with_history();
        let mut state = alice.export_state();
        state.identity.as_mut().unwrap().dh_secret = [1; 32];
        assert_eq!(
            ClientCore::restore(rng(15), ClientConfig::default(), state).err(),
            Some(RestoreError::IdentityMismatch)
        );
    }

    #[test]
    fn an_unfinished_registration_starts_over() {
        let mut c = ClientCore::new(rng(16), ClientConfig::default());
        c.register(T0, "alice").unwrap();
        let state = c.export_state();
        assert!(!state.registered);
        let mut restored = ClientCore::restore(rng(17), ClientConfig::default(), state).unwrap();
        assert_eq!(restored.username(), None);
        restored.register(T0, "alice").unwrap();
        assert_eq!(
            restored.identity().unwrap().installation_id,
            c.identity().unwrap().installation_id,
            "the keys are kept"
        );
    }
}
