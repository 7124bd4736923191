//! The test harness shared by the CLI tests: the real `nymstr-node` binary in a temporary
//! directory on a free loopback port, and `nymstr` homes driven as a user would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn nymstr_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nymstr")
}

/// `nymstr-node` sits next to `nymstr` in the target directory; built if missing.
pub fn node_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(nymstr_bin()).parent().expect("the binary has a directory").to_path_buf();
        let bin = dir.join(format!("nymstr-node{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(&cargo);
            cmd.args(["build", "-p", "nymstr-node", "--bin", "nymstr-node"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().unwrap_or_else(|e| panic!("cannot run `{cargo} build` for nymstr-node: {e}"));
            assert!(status.success(), "`{cargo} build -p nymstr-node --bin nymstr-node` failed ({status})");
            assert!(bin.exists(), "nymstr-node was built but is not at {}", bin.display());
        }
        bin
    })
}

/// A free loopback port (bound, then released for the node to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real node process on a fixed loopback port (so a restart keeps its address).
pub struct Node {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub child: Option<Child>,
}

impl Node {
    pub fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let out = Command::new(node_bin())
            .args(["init", "--dir"])
            .arg(dir.path())
            .args(["--listen", &addr])
            .output()
            .expect("nymstr-node init runs");
        assert!(out.status.success(), "nymstr-node init failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut node = Node { dir, addr, child: None };
        node.run();
        node
    }

    /// Runs the node and waits for its "listening on" line.
    pub fn run(&mut self) {
        let mut child = Command::new(node_bin())
            .args(["run", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("nymstr-node run starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(WAIT).expect("nymstr-node prints its address once it serves");
        assert!(line.ends_with(&self.addr), "unexpected first line from nymstr-node: {line}");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client home.
pub struct User {
    pub home: tempfile::TempDir,
    pub name: &'static str,
}

impl User {
    pub fn new(name: &'static str) -> User {
        User { home: tempfile::tempdir().unwrap(), name }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(nymstr_bin());
        c.arg("--home").arg(self.home.path()).args(args).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("nymstr runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `init` + `register NAME --node ADDR`.
    pub fn join(name: &'static str, node: &Node) -> User {
        let u = User::new(name);
        u.ok(&["init"]);
        u.ok(&["register", name, "--node", &node.addr]);
        u
    }

    /// JSON lines of a command's stdout.
    pub fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        self.ok(&full).lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect()
    }
}

impl User {
    pub fn listen(&self, extra: &[&str]) -> Listener {
        let mut args = vec!["--json", "listen"];
        args.extend_from_slice(extra);
        let mut child =
            self.cmd(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("listen printed non-JSON: {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut l = Listener { child, stdin, events: rx, seen: Vec::new(), name: self.name };
        l.expect("ready", |_| true);
        l
    }
}

/// A running `nymstr --json listen`.
pub struct Listener {
    pub child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    seen: Vec<Value>,
    name: &'static str,
}

impl Listener {
    /// Waits for an event of `kind` matching `pred` (events already seen count too).
    pub fn expect(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| v["type"] == kind && pred(v)) {
            return v.clone();
        }
        let until = Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["type"] == kind && pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}'s listen printed no {kind} event in time; it printed {:#?}", self.name, self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("{}'s listen exited; it printed {:#?}\nstderr: {err}", self.name, self.seen)
                }
            }
        }
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Stops it as a crash would: no goodbye to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.kill();
    }
}
