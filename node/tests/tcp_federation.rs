//! Federation over the real TCP transport (`specs/tcp.md` §6), with the real `nymstr-node`
//! binary on loopback: two nodes joined by a descriptor file peer, seal epochs and cosign
//! each other's heads; a connection that names a peer's address in its preface hears
//! nothing meant for that peer (node connections are authenticated with the node keys, and
//! a node talks to an address only on a connection it dialed there). Every wait polls
//! with a generous deadline; no duration is asserted.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use nymstr_node::config::DescriptorJson;
use nymstr_node::runtime::os::now_us;
use nymstr_node::runtime::status::Status;
use nymstr_node::transport::tcp::preface_frame;
use nymstr_proto::codec::{decode_frame, encode_frame};
use nymstr_proto::federation::descriptor;
use nymstr_proto::federation::{NodeDescriptor, Roles};
use nymstr_proto::framing;
use nymstr_proto::wire::{Body, Envelope, ErrorCode};

const BIN: &str = env!("CARGO_BIN_EXE_nymstr-node");
const PATIENCE_US: u64 = 120_000_000;
const POLL: Duration = Duration::from_millis(50);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn node(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// `init` with a fixed port, a short epoch, quick retries and a status every second.
fn init(dir: &Path, listen: &str, join: Option<&str>) {
    let d = dir.to_str().unwrap();
    let mut args = vec!["init", "--dir", d, "--listen", listen];
    if let Some(j) = join {
        args.extend(["--join", j]);
    }
    let out = node(&args);
    assert!(out.status.success(), "init failed: {}", text(&out.stderr));
    let path = dir.join("config.toml");
    let config = fs::read_to_string(&path)
        .unwrap()
        .replace("status_every_secs = 10", "status_every_secs = 1")
        .replace("epoch_us = 30_000_000", "epoch_us = 2_000_000")
        .replace("peer_retry_us = 30_000_000", "peer_retry_us = 1_000_000")
        .replace("serve_quorum = 3", "serve_quorum = 1");
    fs::write(&path, config).unwrap();
}

struct Running {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Running {
    fn start(dir: &Path) -> Running {
        let log = dir.with_extension("log");
        let child = Command::new(BIN)
            .args(["run", "--dir", dir.to_str().unwrap()])
            .env("RUST_LOG", "info,nymstr_node=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Running { child: Some(child), dir: dir.to_path_buf(), log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls status.json (written by this process) until `pred` holds.
    fn wait_status(&mut self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let pid = self.child.as_ref().unwrap().id();
        let until = now_us() + PATIENCE_US;
        loop {
            if let Ok(s) = Status::read(&self.dir.join("status.json"))
                && s.pid == pid
                && pred(&s)
            {
                return s;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node exited ({status}) while waiting for {what}:\n{}", self.log());
            }
            assert!(now_us() < until, "node never reached: {what}\n{}", self.log());
            std::thread::sleep(POLL);
        }
    }

    fn terminate(mut self) {
        let mut child = self.child.take().unwrap();
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let until = now_us() + PATIENCE_US;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "node exited with {status}:\n{}", self.log());
                return;
            }
            assert!(now_us() < until, "node did not stop after SIGTERM");
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn peers(s: &Status) -> usize {
    s.federation.as_ref().map_or(0, |f| f.peers.len())
}

#[test]
fn two_nodes_joined_by_descriptor_file_peer_and_cosign_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    init(&a, &addr_a, None);
    // init wrote a's descriptor (its port is fixed); b joins through the file.
    let d_a = DescriptorJson::read(&a.join("descriptor.json")).expect("a verifying descriptor file");
    assert_eq!(d_a.address, addr_a.as_bytes());
    init(&b, &addr_b, Some(a.join("descriptor.json").to_str().unwrap()));
    let config_b = fs::read_to_string(b.join("config.toml")).unwrap();
    assert!(config_b.contains(&format!("bootstrap = [\"{addr_a}\"]")), "{config_b}");

    let mut na = Running::start(&a);
    let mut nb = Running::start(&b);
    let sa = na.wait_status("a peer and a cosigned head", |s| {
        peers(s) == 1 && s.federation.as_ref().is_some_and(|f| !f.cosignatures.is_empty())
    });
    let sb = nb.wait_status("a peer and a cosigned head", |s| {
        peers(s) == 1 && s.federation.as_ref().is_some_and(|f| !f.cosignatures.is_empty())
    });
    let (fa, fb) = (sa.federation.unwrap(), sb.federation.unwrap());
    // One node id everywhere: status, descriptor, the peer's view.
    assert_eq!(fa.node_id, sa.node_id);
    assert_eq!(fa.node_id, d_a.node_id.to_hex());
    assert_eq!(fb.peers[0].node_id, fa.node_id);
    assert_eq!(fb.peers[0].address, addr_a);
    assert_eq!(fa.peers[0].address, addr_b);
    assert_eq!(fa.cosignatures, vec![fb.node_id.clone()]);
    assert!(fa.forks.is_empty() && fb.forks.is_empty());

    let info = node(&["info", "--dir", b.to_str().unwrap()]);
    let info = text(&info.stdout);
    assert!(info.contains("peers            1") && info.contains(&addr_a), "{info}");
    let json: serde_json::Value =
        serde_json::from_slice(&node(&["info", "--dir", b.to_str().unwrap(), "--json"]).stdout).unwrap();
    assert_eq!(json["federation"]["peers"][0]["node_id"], fa.node_id.as_str());
    // `descriptor` prints what the running node wrote: it verifies and names the bound address.
    let printed = node(&["descriptor", "--dir", b.to_str().unwrap()]);
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    let d_b: DescriptorJson = serde_json::from_slice(&printed.stdout).unwrap();
    let d_b = d_b.to_descriptor().unwrap();
    assert_eq!(d_b.node_id.to_hex(), fb.node_id);
    assert_eq!(d_b.address, addr_b.as_bytes());

    na.terminate();
    nb.terminate();
}

/// A raw framed connection.
struct Wire {
    stream: TcpStream,
    decoder: framing::Decoder,
}

impl Wire {
    fn connect(addr: &str) -> Wire {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(POLL)).unwrap();
        Wire { stream, decoder: framing::Decoder::new() }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn send(&mut self, request_id: u64, body: Body) {
        self.send_raw(&framing::encode(&encode_frame(&Envelope { request_id, body }).unwrap()).unwrap());
    }

    /// The next frame that is not gossip noise we do not care about (`skip`).
    fn recv_where(&mut self, what: &str, pred: impl Fn(&Body) -> bool) -> Envelope {
        let until = now_us() + PATIENCE_US;
        loop {
            while let Some(frame) = self.decoder.next_frame().unwrap() {
                let env = decode_frame(&frame).expect("valid frames");
                if pred(&env.body) {
                    return env;
                }
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the node closed the connection while waiting for {what}"),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read failed while waiting for {what}: {e}"),
            }
            assert!(now_us() < until, "no {what} from the node");
        }
    }
}

/// A node key that is neither node's, and its descriptor claiming `address`.
fn fake_node(address: &str) -> (SigningKey, NodeDescriptor) {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let roles = Roles { discovery: true, group: false };
    let d = descriptor::sign(&key, address.as_bytes().to_vec(), roles, "tofu".into(), 2_000_000, now_us());
    (key, d)
}

/// Reads whatever `wire` is sent for `d`; returns the bytes read and whether it was closed.
fn listen(wire: &mut Wire, d: Duration) -> (Vec<u8>, bool) {
    let until = now_us() + d.as_micros() as u64;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while now_us() < until {
        match wire.stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// The attack of issue 10 item 5: a plain TCP client opens a connection to node A with a
/// preface naming node B's address (B dialed A, so A used to answer B on B's accepted
/// connection, and the preface replaced it). A node connection must now complete a Noise
/// handshake bound to a node key, and A talks to B's address only on a connection it dialed
/// there: the impostor hears nothing, a second impostor that completes the handshake with
/// its own key is refused (B's address answers with B's key), and the DMs sent meanwhile
/// are delivered.
#[test]
fn a_connection_naming_a_peers_address_hears_nothing_and_the_peers_keep_talking() {
    use nymstr_client_core::Event;
    use nymstr_node::transport::noise::{self, NoiseIdentity};
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    init(&a, &addr_a, None);
    init(&b, &addr_b, Some(&addr_a));
    let mut na = Running::start(&a);
    let mut nb = Running::start(&b);
    let sb = nb.wait_status("a peer", |s| peers(s) == 1);
    let sa = na.wait_status("a peer", |s| peers(s) == 1);

    let mut alice = User::new(1, &addr_a);
    let mut bob = User::new(2, &addr_b);
    alice.core.register(now_us(), "alice").unwrap();
    alice.until("alice registered", |ev| ev.iter().any(|e| matches!(e, Event::Registered { .. })));
    bob.core.register(now_us(), "bob").unwrap();
    bob.until("bob registered", |ev| ev.iter().any(|e| matches!(e, Event::Registered { .. })));
    let epoch = sb.federation.as_ref().unwrap().epoch.unwrap_or(0);
    nb.wait_status("an epoch with bob in the directory", |s| {
        s.federation.as_ref().is_some_and(|f| f.epoch.unwrap_or(0) >= epoch + 2 && f.dir_size == Some(1))
    });

    // Without a preface a connection is a client, as before.
    let mut client = Wire::connect(&addr_a);
    client.send(5, Body::Lookup { username: "nobody".into() });
    let env = client.recv_where("a lookup answer", |_| true);
    assert_eq!(env.request_id, 5);
    assert!(matches!(env.body, Body::Error { code: ErrorCode::UnknownUser, .. }), "{:?}", env.body);

    // The impostor: a plain TCP client naming B's address, then a hello of its own.
    let mut impostor = Wire::connect(&addr_a);
    impostor.send_raw(&preface_frame(addr_b.as_bytes()));
    let (_, mine) = fake_node(&addr_b);
    impostor.send(0, Body::PeerHello { descriptor: mine, nonce: [9; 32] });

    // A second impostor completes a Noise handshake with its own node key.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (noisy_closed, noisy_bytes) = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&addr_a).await.unwrap();
        let mut d = framing::Decoder::new();
        let me = NoiseIdentity::new(&fake_node(&addr_b).0).unwrap();
        let preface = nymstr_node::transport::tcp::preface_body(addr_b.as_bytes());
        let mut session = noise::initiate(&mut s, &mut d, &me, &preface).await.expect("the handshake itself succeeds");
        let hello = encode_frame(&Envelope {
            request_id: 0,
            body: Body::PeerHello { descriptor: fake_node(&addr_b).1, nonce: [8; 32] },
        })
        .unwrap();
        let _ = s.write_all(&session.sealer.seal(&hello).unwrap()).await;
        let mut got = 0usize;
        let mut buf = [0u8; 4096];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got += n,
                Err(_) => break false,
            }
        };
        (closed, got)
    });
    assert!(noisy_closed, "node A closes a connection whose key is not the one at the address it claims");
    assert_eq!(noisy_bytes, 0, "and sends nothing on it");

    // Meanwhile alice sends bob three DMs.
    let to = format!("bob@{}", sb.node_id);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(alice.core.send_dm(now_us(), &to, format!("dm {i}").as_bytes()).unwrap());
    }
    let until = now_us() + PATIENCE_US;
    loop {
        alice.pump();
        bob.pump();
        let failed: Vec<_> =
            alice.events.iter().filter(|e| matches!(e, Event::Failed { .. } | Event::Rejected { .. })).collect();
        assert!(failed.is_empty(), "alice: {failed:?}\nnode a:\n{}\nnode b:\n{}", na.log(), nb.log());
        let acked = ids
            .iter()
            .all(|id| alice.events.iter().any(|e| matches!(e, Event::SendAcked { msg_id, .. } if msg_id == id)));
        let received =
            ids.iter().all(|id| bob.events.iter().any(|e| matches!(e, Event::Received { msg_id, .. } if msg_id == id)));
        if acked && received {
            break;
        }
        assert!(now_us() < until, "the messages never crossed; alice: {:?}\nbob: {:?}", alice.events, bob.events);
    }
    // All the plain impostor gets is the node's handshake message (its "hello" was taken
    // for the first handshake message): no wire frame.
    let (heard, _) = listen(&mut impostor, Duration::from_secs(2));
    let mut d = framing::Decoder::new();
    d.push(&heard);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = d.next_frame() {
        frames.push(f);
    }
    assert!(frames.len() <= 1, "the impostor got {} frames", frames.len());
    for f in &frames {
        assert!(decode_frame(f).is_err(), "the impostor heard a wire frame meant for node B: {:?}", decode_frame(f));
    }
    // Both nodes still peer with each other only, at their own addresses.
    let sa2 = na.wait_status("a peer", |s| peers(s) == 1);
    let f = sa2.federation.unwrap();
    assert_eq!(f.peers[0].node_id, sb.node_id);
    assert_eq!(f.peers[0].address, addr_b);
    assert_eq!(sa2.node_id, sa.node_id);
    na.terminate();
    nb.terminate();
}

/// A user: the real client core on a connection to its home node.
struct User {
    core: nymstr_client_core::ClientCore,
    wire: Wire,
    events: Vec<nymstr_client_core::Event>,
}

impl User {
    fn new(seed: u64, addr: &str) -> User {
        use rand_core::SeedableRng;
        let rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        User {
            core: nymstr_client_core::ClientCore::new(rng, nymstr_client_core::ClientConfig::default()),
            wire: Wire::connect(addr),
            events: Vec::new(),
        }
    }

    fn pump(&mut self) {
        let now = now_us();
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        self.flush();
        let mut buf = [0u8; 16 * 1024];
        match self.wire.stream.read(&mut buf) {
            Ok(0) => panic!("the node closed a client connection"),
            Ok(n) => self.wire.decoder.push(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("client read failed: {e}"),
        }
        while let Some(frame) = self.wire.decoder.next_frame().unwrap() {
            self.core.handle_frame(now_us(), &frame);
            self.flush();
        }
        while let Some(ev) = self.core.poll_event() {
            self.events.push(ev);
        }
    }

    fn flush(&mut self) {
        let out: Vec<Envelope> = self.core.drain_transmits().collect();
        for env in out {
            self.wire.send_raw(&framing::encode(&encode_frame(&env).unwrap()).unwrap());
        }
    }

    fn until(&mut self, what: &str, done: impl Fn(&[nymstr_client_core::Event]) -> bool) {
        let until = now_us() + PATIENCE_US;
        while !done(&self.events) {
            assert!(now_us() < until, "gave up waiting for {what}; events: {:?}", self.events);
            self.pump();
        }
    }
}

#[test]
fn a_direct_message_crosses_nodes_by_qualified_name() {
    use nymstr_client_core::Event;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (addr_a, addr_b) = (free_addr(), free_addr());
    init(&a, &addr_a, None);
    init(&b, &addr_b, Some(&addr_a));
    let mut na = Running::start(&a);
    let mut nb = Running::start(&b);
    let sb = nb.wait_status("a peer", |s| peers(s) == 1);
    na.wait_status("a peer", |s| peers(s) == 1);

    let mut alice = User::new(1, &addr_a);
    let mut bob = User::new(2, &addr_b);
    alice.core.register(now_us(), "alice").unwrap();
    alice.until("alice registered", |ev| ev.iter().any(|e| matches!(e, Event::Registered { .. })));
    bob.core.register(now_us(), "bob").unwrap();
    bob.until("bob registered", |ev| ev.iter().any(|e| matches!(e, Event::Registered { .. })));
    // Bob's entry is in b's directory once an epoch after his registration is sealed.
    let epoch = sb.federation.as_ref().unwrap().epoch.unwrap_or(0);
    nb.wait_status("an epoch with bob in the directory", |s| {
        s.federation.as_ref().is_some_and(|f| f.epoch.unwrap_or(0) >= epoch + 2 && f.dir_size == Some(1))
    });

    let to = format!("bob@{}", sb.node_id);
    let id = alice.core.send_dm(now_us(), &to, b"hello from node a").unwrap();
    let until = now_us() + PATIENCE_US;
    loop {
        alice.pump();
        bob.pump();
        let failed: Vec<_> =
            alice.events.iter().filter(|e| matches!(e, Event::Failed { .. } | Event::Rejected { .. })).collect();
        assert!(failed.is_empty(), "alice: {failed:?}\nnode a:\n{}\nnode b:\n{}", na.log(), nb.log());
        let acked = alice.events.iter().any(|e| matches!(e, Event::SendAcked { msg_id, .. } if *msg_id == id));
        let got = bob.events.iter().find_map(|e| match e {
            Event::Received { msg_id, body, .. } if *msg_id == id => Some(body.clone()),
            _ => None,
        });
        if acked && let Some(body) = got {
            assert_eq!(body, b"hello from node a");
            break;
        }
        assert!(now_us() < until, "the message never crossed (acked: {acked}); alice: {:?}", alice.events);
    }
    let s = na.wait_status("a forwarded dm counted", |s| {
        s.federation.as_ref().is_some_and(|f| f.stats["dms_forwarded"].as_u64() >= Some(1))
    });
    assert!(s.federation.unwrap().forks.is_empty());
    na.terminate();
    nb.terminate();
}

/// Review follow-up to issue 10 item 5: every accepted node connection that claims an
/// address makes the node dial that address to check the claim. Those dials were unbounded
/// (and did not count against `max_connections`), so one key answering at many addresses
/// held as many connections open in the node as it liked. Now at most `CLAIM_DIALED_MAX`
/// (64) connections dialed only for a claim stay open, the oldest closed first, and the
/// node keeps serving clients.
#[test]
fn claims_of_many_addresses_leave_a_bounded_number_of_dialed_connections() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nymstr_node::transport::noise::{self, NoiseIdentity};
    use tokio::io::AsyncReadExt;

    const CLAIMS: usize = 90;
    const CLAIM_DIALED_MAX: usize = 64;
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let addr_a = free_addr();
    init(&a, &addr_a, None);
    let mut na = Running::start(&a);
    na.wait_status("the node serving", |_| true);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (open, dialed) = rt.block_on(async {
        // The attacker: one key answering at 127.0.0.k:port for every k (all loopback).
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = Arc::new(NoiseIdentity::new(&SigningKey::from_bytes(&[7u8; 32])).unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let dialed = Arc::new(AtomicUsize::new(0));
        let (me2, open2, dialed2) = (me.clone(), open.clone(), dialed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (me, open, dialed) = (me2.clone(), open2.clone(), dialed2.clone());
                tokio::spawn(async move {
                    let mut d = framing::Decoder::new();
                    let mut buf = [0u8; 4096];
                    let preface = loop {
                        if let Ok(Some(f)) = d.next_frame() {
                            break f;
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => d.push(&buf[..n]),
                        }
                    };
                    if noise::respond(&mut s, &mut d, &me, &preface).await.is_err() {
                        return;
                    }
                    dialed.fetch_add(1, Ordering::SeqCst);
                    open.fetch_add(1, Ordering::SeqCst);
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        // The claims: one accepted connection per address, each kept open.
        let mut claims = Vec::new();
        for k in 0..CLAIMS {
            let claimed = format!("127.0.{}.{}:{port}", 1 + k / 200, 2 + k % 200);
            let mut s = tokio::net::TcpStream::connect(&addr_a).await.unwrap();
            let mut d = framing::Decoder::new();
            let preface = nymstr_node::transport::tcp::preface_body(claimed.as_bytes());
            noise::initiate(&mut s, &mut d, &me, &preface).await.expect("the handshake succeeds");
            claims.push(s);
            // The node checks the claim by dialing it; wait for that dial before the next.
            let until = now_us() + PATIENCE_US;
            while dialed.load(Ordering::SeqCst) < k + 1 {
                assert!(now_us() < until, "node A never dialed the claimed address {claimed}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        (open.load(Ordering::SeqCst), dialed.load(Ordering::SeqCst))
    });
    assert_eq!(dialed, CLAIMS, "every claim was checked by a dial");
    assert!(open <= CLAIM_DIALED_MAX, "{open} connections dialed for claims are still open");
    assert!(open > 0, "the newest claims keep their connections");

    // The node keeps serving clients.
    let mut client = Wire::connect(&addr_a);
    client.send(5, Body::Lookup { username: "nobody".into() });
    let env = client.recv_where("a lookup answer", |_| true);
    assert!(matches!(env.body, Body::Error { code: ErrorCode::UnknownUser, .. }), "{:?}", env.body);
    na.terminate();
}
