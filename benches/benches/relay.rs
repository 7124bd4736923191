//! Relay core throughput beside its physical limit on this machine: one strict ed25519
//! verification per message. Run: `cargo bench -p nymstr-benches --bench relay`.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use nymstr_benches::Bench;

fn relay(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(20);

    // The floor: verify one signature over a message the size of a SendDm's signed bytes.
    let key = SigningKey::from_bytes(&[9; 32]);
    let vk: VerifyingKey = key.verifying_key();
    let msg = vec![5u8; 900];
    let sig = key.sign(&msg);
    g.bench_function("ed25519_verify_strict", |b| b.iter(|| vk.verify_strict(&msg, &sig).expect("valid")));

    // The core: decode, verify, queue durably, deliver to the bound recipient, and delete
    // on the recipient's ack. Frames are prepared outside the timed section.
    let mut bench = Bench::new();
    g.bench_function("send_deliver_ack_cycle", |b| {
        b.iter_custom(|iters| bench.timed_relay_cycles(iters as usize, 200))
    });
    g.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
