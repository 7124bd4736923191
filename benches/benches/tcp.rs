//! The real node (actix host, sled in a temporary directory, TCP on loopback) relaying
//! direct messages between concurrent clients, beside the relay core alone.
//! Run: `cargo bench -p nymstr-benches --bench tcp`.
//!
//! `tcp/node_4x4`: 4 senders each send to their own recipient over their own connection;
//! the recipients acknowledge every delivery. One element = one message sent, durably
//! queued (sled flush), acknowledged to its sender, delivered and acknowledged by its
//! recipient. Registration, lookups and the signed, sealed `SendDm` frames (built with
//! `ClientCore`) are prepared outside the timed section. Recipients acknowledge without
//! opening the sealed payloads, so the clients' crypto does not compete with the node for
//! the machine's cores.
//!
//! `tcp/relay_core_cycle`: the same work for the core alone (`NodeCore<MemStore>`, no I/O,
//! as in `benches/relay.rs`). The ratio of the two is the cost of the real host.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nymstr_benches::Bench;
use nymstr_client_core::{ClientConfig, ClientCore, Event};
use nymstr_node::config::{self, Config, DataDir};
use nymstr_node::runtime::{self, RunOptions, StopHandle, os::now_us};
use nymstr_proto::codec::{decode_frame, encode_frame};
use nymstr_proto::framing;
use nymstr_proto::wire::{Body, Envelope};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const PAIRS: usize = 4;
const BODY_BYTES: usize = 200;

/// A node running in this process on its own thread.
struct InProcessNode {
    addr: SocketAddr,
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl InProcessNode {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("nymstr-bench-tcp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = DataDir::new(&dir);
        config::init(&data, "127.0.0.1:0".parse().unwrap()).expect("init");
        let mut config = Config::load_dir(&data).expect("config");
        // A benchmark floods on purpose: no per-connection rate limit, deep queues.
        config.transport.tcp.rate_limit_frames_per_sec = 0;
        config.transport.tcp.write_queue_frames = 65_536;
        config.core.queue_depth_max = u32::MAX;
        config.core.queue_per_sender_max = u32::MAX;
        let (stop, signal) = runtime::stop_pair();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let options = RunOptions {
                handle_signals: false,
                stop: Some(signal),
                on_ready: Some(Box::new(move |r: &runtime::Ready| {
                    let _ = ready_tx.send(r.address.clone());
                })),
            };
            runtime::run(&data, &config, options).expect("node runs");
        });
        let addr = ready_rx.recv_timeout(Duration::from_secs(60)).expect("node ready").parse().expect("address");
        Self { addr, stop, thread: Some(thread), dir }
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Group commit at work: how many messages one sled flush covered on average.
        if let Ok(s) = runtime::status::Status::read(&self.dir.join(config::STATUS_FILE)) {
            let dms = s.stats["dms_accepted"].as_u64().unwrap_or(0);
            eprintln!(
                "tcp/node_4x4: {dms} messages relayed, {} store flushes ({:.1} messages per flush)",
                s.flushes,
                dms as f64 / s.flushes.max(1) as f64
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking framed connection.
struct Conn {
    stream: TcpStream,
    decoder: framing::Decoder,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        Self { stream, decoder: framing::Decoder::new() }
    }

    fn send(&mut self, env: &Envelope) {
        self.stream.write_all(&framed(env)).expect("write");
    }

    /// The next frame; `None` if nothing arrives within the stream's read timeout.
    fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(f) = self.decoder.next_frame().expect("node frames correctly") {
                return Some(f);
            }
            let mut buf = [0u8; 64 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the node closed a bench connection"),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

fn framed(env: &Envelope) -> Vec<u8> {
    framing::encode(&encode_frame(env).expect("fits")).expect("frames")
}

/// A user: the client core plus its connection.
struct User {
    core: ClientCore,
    conn: Conn,
}

impl User {
    fn new(seed: u64, addr: SocketAddr) -> Self {
        let conn = Conn::connect(addr);
        conn.stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        Self { core: ClientCore::new(ChaCha20Rng::seed_from_u64(seed), ClientConfig::default()), conn }
    }

    /// Pumps until `done` sees the event it waits for.
    fn until(&mut self, done: impl Fn(&Event) -> bool) {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let out: Vec<Envelope> = self.core.drain_transmits().collect();
            for env in out {
                self.conn.send(&env);
            }
            while let Some(ev) = self.core.poll_event() {
                if done(&ev) {
                    return;
                }
            }
            if let Some(f) = self.conn.recv() {
                self.core.handle_frame(now_us(), &f);
            }
            assert!(Instant::now() < give_up, "bench set-up stalled");
        }
    }
}

struct Pair {
    sender: User,
    recipient: User,
    recipient_name: String,
}

fn set_up(addr: SocketAddr) -> Vec<Pair> {
    (0..PAIRS)
        .map(|i| {
            let mut sender = User::new(100 + i as u64, addr);
            let mut recipient = User::new(200 + i as u64, addr);
            let (s, r) = (format!("sender{i}"), format!("recipient{i}"));
            sender.core.register(now_us(), &s).unwrap();
            sender.until(|e| matches!(e, Event::Registered { .. }));
            recipient.core.register(now_us(), &r).unwrap();
            recipient.until(|e| matches!(e, Event::Registered { .. }));
            sender.core.lookup(now_us(), &r).unwrap();
            sender.until(|e| matches!(e, Event::LookedUp { .. }));
            Pair { sender, recipient, recipient_name: r }
        })
        .collect()
}

/// Sends `n` pre-built messages on each pair at once; returns when every sender has all
/// its acks and every recipient all its deliveries (acknowledged).
fn relay_round(pairs: &mut [Pair], counts: &[usize]) -> Duration {
    let body = vec![7u8; BODY_BYTES];
    let batches: Vec<Vec<u8>> = pairs
        .iter_mut()
        .zip(counts)
        .map(|(p, &n)| {
            let mut bytes = Vec::new();
            for _ in 0..n {
                p.sender.core.send_dm(now_us(), &p.recipient_name, &body).expect("registered");
                for env in p.sender.core.drain_transmits() {
                    bytes.extend(framed(&env));
                }
            }
            bytes
        })
        .collect();
    let start = Instant::now();
    let acks: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let mut ack_readers = Vec::new();
        for ((p, bytes), &n) in pairs.iter_mut().zip(&batches).zip(counts) {
            let mut writer = p.sender.conn.stream.try_clone().expect("clone");
            s.spawn(move || writer.write_all(bytes).expect("write"));
            let sender_conn = &mut p.sender.conn;
            ack_readers.push(s.spawn(move || {
                let mut frames = Vec::with_capacity(n);
                while frames.len() < n {
                    if let Some(f) = sender_conn.recv()
                        && let Ok(Envelope { body: Body::SendAck { .. }, .. }) = decode_frame(&f)
                    {
                        frames.push(f);
                    }
                }
                frames
            }));
            let recipient = &mut p.recipient.conn;
            s.spawn(move || {
                let mut got = 0usize;
                while got < n {
                    let mut ids = Vec::new();
                    while let Some(f) = recipient.recv() {
                        if let Ok(Envelope { body: Body::Deliver { delivery_id, .. }, .. }) = decode_frame(&f) {
                            ids.push(delivery_id);
                        }
                        if ids.len() == nymstr_proto::limits::ACK_IDS_MAX || recipient.decoder.buffered() == 0 {
                            break;
                        }
                    }
                    if !ids.is_empty() {
                        got += ids.len();
                        recipient.send(&Envelope { request_id: 0, body: Body::AckDelivery { delivery_ids: ids } });
                    }
                }
            });
        }
        ack_readers.into_iter().map(|h| h.join().expect("reader")).collect()
    });
    let elapsed = start.elapsed();
    // Outside the clock: the senders' cores learn of their acks (keeps their state small).
    for (p, frames) in pairs.iter_mut().zip(acks) {
        for f in frames {
            p.sender.core.handle_frame(now_us(), &f);
        }
        while p.sender.core.poll_event().is_some() {}
    }
    elapsed
}

fn tcp(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));

    // The core alone, same work per message (decode, verify, queue, ack, deliver, ack).
    let mut bench = Bench::new();
    g.bench_function("relay_core_cycle", |b| {
        b.iter_custom(|iters| bench.timed_relay_cycles(iters as usize, BODY_BYTES))
    });

    // The real node over loopback TCP.
    let node = InProcessNode::start();
    let mut pairs = set_up(node.addr);
    g.bench_function("node_4x4", |b| {
        b.iter_custom(|iters| {
            let iters = iters as usize;
            let counts: Vec<usize> = (0..PAIRS).map(|i| iters / PAIRS + usize::from(i < iters % PAIRS)).collect();
            relay_round(&mut pairs, &counts)
        })
    });
    g.finish();
    drop(pairs);
    drop(node);
}

criterion_group!(benches, tcp);
criterion_main!(benches);
