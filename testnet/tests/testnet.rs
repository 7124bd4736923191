//! `nymstr-testnet` end to end: three real `nymstr-node` processes on loopback peer,
//! advance epochs with cosignatures, survive a SIGKILL and restart of one node without a
//! fork certificate, carry direct messages between clients homed on different nodes, and
//! stop on `down`. Every wait polls with a generous deadline; no duration is asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);

fn testnet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nymstr-testnet")
}

/// A binary of another package of the workspace: next to this package's binary in the
/// same target directory, built if missing.
fn sibling_bin(package: &str, bin: &str) -> PathBuf {
    let dir = Path::new(testnet_bin()).parent().expect("the binary has a directory");
    let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "-p", package, "--bin", bin]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run `{cargo} build` for {bin}: {e}"));
        assert!(status.success(), "`{cargo} build -p {package} --bin {bin}` failed ({status})");
        assert!(path.exists(), "{bin} was built but is not at {}", path.display());
    }
    path
}

fn node_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| sibling_bin("nymstr-node", "nymstr-node"))
}

fn client_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| sibling_bin("nymstr-client", "nymstr"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A testnet in a temporary directory; `down` on drop, whatever happened.
struct Testnet {
    dir: tempfile::TempDir,
}

impl Testnet {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(testnet_bin())
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .env("NYMSTR_NODE_BIN", node_bin())
            .stdin(Stdio::null())
            .output()
            .expect("nymstr-testnet runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nymstr-testnet {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn up(n: usize) -> Testnet {
        let t = Testnet { dir: tempfile::tempdir().unwrap() };
        let n = n.to_string();
        let table = t.ok(&["up", "--nodes", &n, "--epoch-secs", "2"]);
        assert!(table.contains("alive"), "{table}");
        t
    }

    fn rows(&self) -> Vec<Value> {
        self.ok(&["status", "--json"]).lines().map(|l| serde_json::from_str(l).expect("JSON rows")).collect()
    }

    /// The node's own status.json (per-peer details).
    fn node_status(&self, i: usize) -> Value {
        let path = self.dir.path().join(format!("node{i}")).join("status.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Polls `status --json` until `pred` holds for the rows.
    fn wait(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let until = Instant::now() + PATIENCE;
        loop {
            let rows = self.rows();
            if pred(&rows) {
                return rows;
            }
            assert!(Instant::now() < until, "testnet never reached: {what}\n{rows:#?}\n{}", self.logs());
            std::thread::sleep(POLL);
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..3 {
            let log = std::fs::read_to_string(self.dir.path().join(format!("node{i}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            s += &format!("--- node{i}.log (tail) ---\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        s
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

#[test]
fn three_nodes_peer_witness_survive_a_crash_and_stop() {
    let net = Testnet::up(3);
    let rows = net.rows();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r["alive"], true, "{r}");
        assert_eq!(u(r, "peers"), 2, "{r}");
        assert_eq!(u(r, "forks"), 0, "{r}");
    }
    let ids: Vec<String> = rows.iter().map(|r| r["node_id"].as_str().unwrap().to_string()).collect();
    assert!(ids.iter().all(|id| id.len() == 64) && ids[0] != ids[1] && ids[1] != ids[2]);

    // Epochs advance and every node's newest head carries cosignatures from its peers.
    net.wait("epochs >= 2 with witnesses everywhere", |rows| {
        rows.iter().all(|r| u(r, "epoch") >= 2 && u(r, "witnesses") >= 1)
    });

    // SIGKILL node 1: no flush, no goodbye.
    let before = u(&net.rows()[1], "epoch");
    let killed = net.ok(&["kill", "--node", "1"]);
    assert!(killed.contains("killed"), "{killed}");
    let rows = net.rows();
    assert_eq!(rows[1]["alive"], false);
    assert_eq!(rows[0]["alive"], true);

    // Restart it: it rejoins (peers back to 2 everywhere), seals new epochs its peers
    // cosign and see, and nobody holds a fork certificate (its recovered log continues).
    let out = net.ok(&["restart", "--node", "1"]);
    assert!(out.contains("alive"), "{out}");
    net.wait("node 1 back with newer cosigned epochs", |rows| {
        rows.iter().all(|r| r["alive"] == true && u(r, "peers") == 2 && u(r, "forks") == 0)
            && u(&rows[1], "epoch") > before + 1
            && u(&rows[1], "witnesses") >= 1
    });
    for other in [0, 2] {
        let until = Instant::now() + PATIENCE;
        loop {
            let s = net.node_status(other);
            let seen = s["federation"]["peers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["node_id"] == ids[1].as_str())
                .and_then(|p| p["epoch"].as_u64())
                .unwrap_or(0);
            if seen > before + 1 {
                break;
            }
            assert!(Instant::now() < until, "node {other} never saw node 1's new heads: {s:#}");
            std::thread::sleep(POLL);
        }
    }
    let rows = net.rows();
    assert!(rows.iter().all(|r| u(r, "forks") == 0), "{rows:#?}");

    // down stops every node and removes the pid files.
    let out = net.ok(&["down"]);
    assert_eq!(out.matches("stopped").count(), 3, "{out}");
    assert!(net.rows().iter().all(|r| r["alive"] == false));
    for i in 0..3 {
        assert!(!net.dir.path().join(format!("node{i}.pid")).exists());
    }
}

/// A client home driven through the `nymstr` CLI.
struct User {
    home: tempfile::TempDir,
    name: &'static str,
}

impl User {
    fn join(name: &'static str, node_addr: &str) -> User {
        let u = User { home: tempfile::tempdir().unwrap(), name };
        u.ok(&["init"]);
        u.ok(&["register", name, "--node", node_addr]);
        u
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = Command::new(client_bin())
            .arg("--home")
            .arg(self.home.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nymstr runs");
        assert!(
            out.status.success(),
            "{} {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            self.name,
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        self.ok(&full).lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect()
    }

    /// Polls the inbox until a message arrives; returns (from, text) pairs.
    fn wait_inbox(&self) -> Vec<(String, String)> {
        let until = Instant::now() + PATIENCE;
        loop {
            let got: Vec<(String, String)> = self
                .json(&["inbox"])
                .iter()
                .filter(|v| v["type"] == "message")
                .map(|v| (v["from"].as_str().unwrap_or("").to_string(), v["text"].as_str().unwrap_or("").to_string()))
                .collect();
            if !got.is_empty() {
                return got;
            }
            assert!(Instant::now() < until, "{} received nothing", self.name);
            std::thread::sleep(POLL);
        }
    }
}

#[test]
fn direct_messages_cross_nodes_by_qualified_name() {
    // Clients homed on different nodes write to each other by qualified name
    // (`bob@<node id>`): resolved through the home node, verified by the client.
    let net = Testnet::up(3);
    let rows = net.wait("every head witnessed", |rows| rows.iter().all(|r| u(r, "witnesses") >= 1));
    let addr = |i: usize| rows[i]["address"].as_str().unwrap().to_string();
    let id = |i: usize| rows[i]["node_id"].as_str().unwrap().to_string();

    let alice = User::join("alice", &addr(0));
    let bob = User::join("bob", &addr(1));
    // Registrations enter each node's directory at the next epoch; wait for it to be sealed
    // and cosigned so lookups through another node can prove the entry.
    let sealed = rows.iter().map(|r| u(r, "epoch")).max().unwrap_or(0);
    net.wait("a cosigned epoch after the registrations", |rows| {
        rows.iter().all(|r| u(r, "epoch") >= sealed + 2 && u(r, "witnesses") >= 1)
    });

    let to_bob = format!("bob@{}", id(1));
    let sent = alice.json(&["send", &to_bob, "hello", "across", "nodes"]);
    assert_eq!(sent[0]["type"], "sent", "{sent:?}");
    let got = bob.wait_inbox();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].0.starts_with("alice"), "{got:?}");
    assert_eq!(got[0].1, "hello across nodes");

    let to_alice = format!("alice@{}", id(0));
    bob.ok(&["send", &to_alice, "hi", "back"]);
    let got = alice.wait_inbox();
    assert!(got[0].0.starts_with("bob"), "{got:?}");
    assert_eq!(got[0].1, "hi back");
}
