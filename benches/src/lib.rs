//! Shared set-up for the benches: a node core with two registered, logged-in users,
//! driven through the real client core (no shortcuts into the store).

use nymstr_client_core::{ClientConfig, ClientCore};
use nymstr_node_core::actors::{Output, Peer, SenderTag};
use nymstr_node_core::outbox::Outbox;
use nymstr_node_core::store::{MemStore, Store};
use nymstr_node_core::{NodeConfig, NodeCore};
use nymstr_proto::codec;
use nymstr_proto::wire::Envelope;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub const T0: u64 = 1_767_225_600_000_000;

pub struct Bench {
    pub node: NodeCore<MemStore>,
    pub alice: ClientCore,
    pub bob: ClientCore,
    pub alice_tag: SenderTag,
    pub bob_tag: SenderTag,
    pub now: u64,
    outbox: Outbox<(Peer, Envelope)>,
}

impl Bench {
    pub fn new() -> Self {
        let config = NodeConfig { queue_depth_max: u32::MAX, ..NodeConfig::default() };
        let node = NodeCore::start(T0, MemStore::new(), ChaCha20Rng::seed_from_u64(1), config).expect("starts");
        let mut b = Bench {
            node,
            alice: ClientCore::new(ChaCha20Rng::seed_from_u64(2), ClientConfig::default()),
            bob: ClientCore::new(ChaCha20Rng::seed_from_u64(3), ClientConfig::default()),
            alice_tag: SenderTag([1; 16]),
            bob_tag: SenderTag([2; 16]),
            now: T0,
            outbox: Outbox::new(),
        };
        b.alice.register(b.now, "alice").expect("valid");
        b.bob.register(b.now, "bob").expect("valid");
        b.pump();
        // Alice looks bob up once so later sends go straight out.
        b.alice.lookup(b.now, "bob").expect("valid");
        b.pump();
        while b.alice.poll_event().is_some() {}
        while b.bob.poll_event().is_some() {}
        b
    }

    /// Moves frames both ways until nothing is left to move; flushes the store when an
    /// output waits for durability.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            for (client, tag) in [(&mut self.alice, self.alice_tag), (&mut self.bob, self.bob_tag)] {
                let frames: Vec<Vec<u8>> =
                    client.drain_transmits().map(|e| codec::encode_frame(&e).expect("fits")).collect();
                for f in frames {
                    self.node.handle_frame(self.now, Peer::Tag(tag), &f);
                    moved = true;
                }
            }
            // The shared outbox holds what waits for durability; the bench's "disk" completes
            // each flush at once.
            let durable = self.node.store().durable_seq();
            let outs: Vec<Output> = self.node.drain_outputs().collect();
            let mut ready: Vec<(Peer, Envelope)> = Vec::new();
            for Output::Send { to, envelope, durable_after } in outs {
                ready.extend(self.outbox.submit(durable_after, durable, (to, envelope)));
            }
            while let Some(mark) = self.outbox.flush_to_start(self.node.store()) {
                ready.extend(self.outbox.flush_completed(self.node.store_mut(), mark));
            }
            for (to, envelope) in ready {
                let bytes = codec::encode_frame(&envelope).expect("fits");
                match to {
                    Peer::Tag(t) if t == self.alice_tag => self.alice.handle_frame(self.now, &bytes),
                    Peer::Tag(t) if t == self.bob_tag => self.bob.handle_frame(self.now, &bytes),
                    _ => {}
                }
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    /// One relay cycle in the core alone: alice's `SendDm` frame is handled (decode, verify,
    /// queue, ack, deliver), the store flushed, and bob's `AckDelivery` handled (delete).
    pub fn relay_cycle(&mut self, send_dm_frame: &[u8]) {
        use nymstr_proto::wire::{Body, Envelope};
        self.node.handle_frame(self.now, Peer::Tag(self.alice_tag), send_dm_frame);
        let mut ids = Vec::new();
        for Output::Send { envelope, .. } in self.node.drain_outputs() {
            if let Body::Deliver { delivery_id, .. } = envelope.body {
                ids.push(delivery_id);
            }
        }
        self.node.store_mut().flush().expect("memory flush");
        let ack = Envelope { request_id: 0, body: Body::AckDelivery { delivery_ids: ids } };
        self.node.handle_frame(self.now, Peer::Tag(self.bob_tag), &codec::encode_frame(&ack).expect("fits"));
        self.node.drain_outputs().for_each(drop);
    }

    /// Times `n` relay cycles of `body_bytes` each (frames built beforehand, outside the
    /// timing), for criterion's `iter_custom`.
    pub fn timed_relay_cycles(&mut self, n: usize, body_bytes: usize) -> std::time::Duration {
        let frames = self.send_frames(n, body_bytes);
        let start = std::time::Instant::now();
        for f in &frames {
            self.relay_cycle(f);
        }
        let elapsed = start.elapsed();
        // Keep the client's bookkeeping bounded across criterion's many calls.
        while self.alice.poll_event().is_some() {}
        elapsed
    }

    /// `n` distinct signed `SendDm` frames from alice to bob, ready for the node.
    pub fn send_frames(&mut self, n: usize, body_bytes: usize) -> Vec<Vec<u8>> {
        let body = vec![7u8; body_bytes];
        (0..n)
            .map(|_| {
                self.alice.send_dm(self.now, "bob", &body).expect("registered");
                let env = self.alice.drain_transmits().next().expect("sent at once");
                codec::encode_frame(&env).expect("fits")
            })
            .collect()
    }
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}
