//! Federation over the real TCP transport (`specs/tcp.md` §6), with the real `nymstr-node`
//! binary on loopback: two nodes joined by a descriptor file peer, seal epochs and cosign
//! each other's heads; a connection that opens with a preface is a node connection whose
//! replies come back on it, and the core's mutual challenge (not the preface) decides who
//! is a peer. Every wait polls with a generous deadline; no duration is asserted.

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
use nymstr_proto::identity;
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

fn fake_node(address: &str) -> (SigningKey, NodeDescriptor) {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let roles = Roles { discovery: true, group: false };
    let d = descriptor::sign(&key, address.as_bytes().to_vec(), roles, "tofu".into(), 2_000_000, now_us());
    (key, d)
}

#[test]
fn a_preface_makes_a_node_connection_and_the_challenge_makes_a_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let addr = free_addr();
    init(&dir, &addr, None);
    let mut n = Running::start(&dir);
    let s = n.wait_status("running", |_| true);
    let node_id = nymstr_proto::federation::NodeId::from_hex(&s.node_id).unwrap();

    // Without a preface a connection is a client, as before.
    let mut client = Wire::connect(&addr);
    client.send(5, Body::Lookup { username: "nobody".into() });
    let env = client.recv_where("a lookup answer", |_| true);
    assert_eq!(env.request_id, 5);
    assert!(matches!(env.body, Body::Error { code: ErrorCode::UnknownUser, .. }), "{:?}", env.body);

    // A node connection claiming an address nobody listens on (port 1): every reply must
    // come back on this connection, since the node could not dial that address.
    let claimed = "127.0.0.1:1";
    let mut peer = Wire::connect(&addr);
    peer.send_raw(&preface_frame(claimed.as_bytes()));

    // A hello whose descriptor names another address is refused, on this connection.
    let (_, elsewhere) = fake_node("127.0.0.1:2");
    peer.send(0, Body::PeerHello { descriptor: elsewhere, nonce: [1; 32] });
    let env = peer.recv_where("an error", |b| matches!(b, Body::Error { .. }));
    assert!(matches!(env.body, Body::Error { code: ErrorCode::BadSignature, .. }), "{:?}", env.body);

    // The real handshake: hello, welcome (the node proves its key), proof (we prove ours).
    let (key, mine) = fake_node(claimed);
    let my_id = mine.node_id;
    let nonce = [9u8; 32];
    peer.send(0, Body::PeerHello { descriptor: mine, nonce });
    let env = peer.recv_where("a welcome", |b| matches!(b, Body::PeerWelcome { .. }));
    let Body::PeerWelcome { descriptor: theirs, answer, nonce: theirs_nonce } = env.body else { unreachable!() };
    assert_eq!(theirs.node_id, node_id);
    assert_eq!(theirs.address, addr.as_bytes());
    identity::verify(&theirs.key, &identity::peer_challenge_bytes(&nonce, &my_id, &node_id), &answer)
        .expect("the node answers our challenge with its key");
    let proof = identity::sign(&key, &identity::peer_challenge_bytes(&theirs_nonce, &node_id, &my_id));
    peer.send(env.request_id, Body::PeerProof { answer: proof });
    // Peered: the node catches us up with gossip, on this connection.
    peer.recv_where("gossip", |b| matches!(b, Body::Gossip { .. }));
    let s = n.wait_status("the fake peer", |s| peers(s) == 1);
    let f = s.federation.unwrap();
    assert_eq!(f.peers[0].node_id, my_id.to_hex());
    assert_eq!(f.peers[0].address, claimed);
    n.terminate();
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
