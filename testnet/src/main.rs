//! `nymstr-testnet`: a private federation of real `nymstr-node` processes on loopback.
//!
//! ```text
//! nymstr-testnet up --nodes N --dir DIR [--base-port P] [--epoch-secs S]   init (once) and start
//! nymstr-testnet status --dir DIR [--json]                                 one row per node
//! nymstr-testnet restart --dir DIR --node I                                stop node I, start it
//! nymstr-testnet kill --dir DIR --node I                                   SIGKILL node I (chaos)
//! nymstr-testnet down --dir DIR                                            SIGTERM, wait, SIGKILL
//! ```
//!
//! Files (`specs/testnet.md`): `DIR/testnet.json` (the layout), `DIR/nodeI/` (each node's
//! data directory), `DIR/nodeI.pid`, `DIR/nodeI.log` (the node's stdout and stderr).
//! Exit codes: 0 success, 2 usage, 1 failure (a node did not start or did not peer in time).

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const LAYOUT_FILE: &str = "testnet.json";
const POLL: Duration = Duration::from_millis(200);

#[derive(Parser)]
#[command(name = "nymstr-testnet", version, about = "A private nymstr federation of real nodes on loopback")]
struct Cli {
    /// The `nymstr-node` binary (default: $NYMSTR_NODE_BIN, else next to this executable).
    #[arg(long, global = true)]
    node_bin: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (once) and start N nodes; wait until each has N-1 peers.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long)]
        dir: PathBuf,
        /// Ports P..P+N on 127.0.0.1 (default: free ports picked at creation).
        #[arg(long)]
        base_port: Option<u16>,
        /// Transparency-log epoch of every node, seconds.
        #[arg(long, default_value_t = 5)]
        epoch_secs: u64,
        /// How long to wait for full peering before giving up, seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Print each node's id, address, liveness, peers, epoch and witness counts.
    Status {
        #[arg(long)]
        dir: PathBuf,
        /// One JSON object per node, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop node I (if it runs) and start it again.
    Restart {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: usize,
        /// Wait until the node has N-1 peers again, at most this many seconds (0: no wait).
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// SIGKILL node I: no flush, no goodbye (for crash tests).
    Kill {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: usize,
    },
    /// Stop every node: SIGTERM, wait up to 15 s, then SIGKILL; remove the pid files.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

/// `DIR/testnet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Layout {
    node_bin: PathBuf,
    epoch_secs: u64,
    nodes: Vec<NodeEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeEntry {
    index: usize,
    /// The node's data directory.
    dir: PathBuf,
    /// `127.0.0.1:PORT`: its listen and descriptor address.
    address: String,
}

struct Failure {
    code: u8,
    message: String,
}

fn usage(m: impl ToString) -> Failure {
    Failure { code: 2, message: m.to_string() }
}

fn fail(m: impl ToString) -> Failure {
    Failure { code: 1, message: m.to_string() }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up { nodes, dir, base_port, epoch_secs, timeout_secs } => {
            up(&dir, nodes, base_port, epoch_secs, timeout_secs, cli.node_bin)
        }
        Cmd::Status { dir, json } => status(&dir, json),
        Cmd::Restart { dir, node, timeout_secs } => restart(&dir, node, timeout_secs),
        Cmd::Kill { dir, node } => kill_node(&dir, node),
        Cmd::Down { dir } => down(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("nymstr-testnet: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn locate_node_bin(explicit: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let bin = match explicit.or_else(|| std::env::var_os("NYMSTR_NODE_BIN").map(PathBuf::from)) {
        Some(b) => b,
        None => {
            let exe = std::env::current_exe().map_err(fail)?;
            exe.parent()
                .ok_or_else(|| fail("this executable has no directory"))?
                .join(format!("nymstr-node{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !bin.is_file() {
        return Err(usage(format!(
            "nymstr-node not found at {} (build it with `cargo build -p nymstr-node`, or pass --node-bin / set NYMSTR_NODE_BIN)",
            bin.display()
        )));
    }
    Ok(bin)
}

fn read_layout(dir: &Path) -> Result<Layout, Failure> {
    let path = dir.join(LAYOUT_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        usage(format!("no testnet in {} ({}: {e}); create one with `up`", dir.display(), path.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))
}

fn write_layout(dir: &Path, layout: &Layout) -> Result<(), Failure> {
    let path = dir.join(LAYOUT_FILE);
    let text = serde_json::to_string_pretty(layout).map_err(fail)?;
    fs::write(&path, text + "\n").map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

fn pid_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}.pid"))
}

fn log_file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node{i}.log"))
}

/// N free loopback ports, all held at once so they are distinct.
fn free_ports(n: usize) -> Result<Vec<u16>, Failure> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>().map_err(fail)?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(fail)).collect()
}

fn run_node_cmd(bin: &Path, args: &[&str]) -> Result<String, Failure> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(fail(format!(
            "nymstr-node {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Settings a testnet node gets on top of the defaults: a short epoch, quick peering
/// retries and status, and a witness quorum the testnet can meet.
fn tune_config(path: &Path, n: usize, epoch_secs: u64) -> Result<(), Failure> {
    let epoch_us = epoch_secs.max(1) * 1_000_000;
    let quorum = n.saturating_sub(1).clamp(1, 3);
    let edits = [
        ("status_every_secs = ", "1".to_string()),
        ("epoch_us = ", epoch_us.to_string()),
        ("peer_retry_us = ", "2_000_000".to_string()),
        ("serve_quorum = ", quorum.to_string()),
        ("serve_grace_us = ", epoch_us.to_string()),
        ("forward_timeout_us = ", "10_000_000".to_string()),
    ];
    let text = fs::read_to_string(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let mut out = String::new();
    let mut done = vec![false; edits.len()];
    for line in text.lines() {
        match edits.iter().position(|(k, _)| line.starts_with(k)) {
            Some(i) => {
                out.push_str(edits[i].0);
                out.push_str(&edits[i].1);
                done[i] = true;
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    if let Some(i) = done.iter().position(|d| !d) {
        return Err(fail(format!("{} has no `{}` line to set", path.display(), edits[i].0.trim_end_matches(" = "))));
    }
    fs::write(path, out).map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

fn create(dir: &Path, n: usize, base_port: Option<u16>, epoch_secs: u64, bin: PathBuf) -> Result<Layout, Failure> {
    let ports = match base_port {
        Some(p) => (0..n)
            .map(|i| p.checked_add(i as u16).ok_or_else(|| usage("--base-port + --nodes exceeds 65535")))
            .collect::<Result<Vec<_>, _>>()?,
        None => free_ports(n)?,
    };
    fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let node_dir = dir.join(format!("node{i}"));
        let address = format!("127.0.0.1:{port}");
        let node_dir_s = node_dir.to_string_lossy().into_owned();
        let mut args = vec!["init", "--dir", &node_dir_s, "--listen", &address];
        // Node i > 0 joins through node 0's descriptor file (written by its init).
        let join = dir.join("node0").join("descriptor.json").to_string_lossy().into_owned();
        if i > 0 {
            args.extend(["--join", &join]);
        }
        run_node_cmd(&bin, &args)?;
        tune_config(&node_dir.join("config.toml"), n, epoch_secs)?;
        nodes.push(NodeEntry { index: i, dir: node_dir, address });
    }
    let layout = Layout { node_bin: bin, epoch_secs, nodes };
    write_layout(dir, &layout)?;
    Ok(layout)
}

fn read_pid(dir: &Path, i: usize) -> Option<u32> {
    fs::read_to_string(pid_file(dir, i)).ok()?.trim().parse().ok()
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if a process with `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        // state is the field after the parenthesised command name
        return stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z");
    }
    signal(pid, "-0")
}

fn node_alive(dir: &Path, i: usize) -> Option<u32> {
    read_pid(dir, i).filter(|p| alive(*p))
}

fn start_node(dir: &Path, layout: &Layout, i: usize) -> Result<u32, Failure> {
    if let Some(pid) = node_alive(dir, i) {
        return Ok(pid);
    }
    let entry = &layout.nodes[i];
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(dir, i))
        .map_err(|e| fail(format!("cannot open the log of node {i}: {e}")))?;
    let err = log.try_clone().map_err(fail)?;
    let mut cmd = Command::new(&layout.node_bin);
    cmd.arg("run").arg("--dir").arg(&entry.dir).stdin(Stdio::null()).stdout(log).stderr(err);
    #[cfg(unix)]
    {
        // Its own process group: a Ctrl-C meant for the shell does not stop the testnet.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(|e| fail(format!("cannot start {}: {e}", layout.node_bin.display())))?;
    let pid = child.id();
    // The child is not waited for: it outlives this command (the init process reaps it).
    drop(child);
    let mut f = fs::File::create(pid_file(dir, i)).map_err(fail)?;
    writeln!(f, "{pid}").map_err(fail)?;
    Ok(pid)
}

/// One row of `status`.
#[derive(Debug, Serialize)]
struct Row {
    node: usize,
    node_id: Option<String>,
    address: String,
    alive: bool,
    pid: Option<u32>,
    peers: Option<usize>,
    epoch: Option<u64>,
    /// Cosignatures (witnesses) on the node's newest head.
    witnesses: Option<usize>,
    known: Option<usize>,
    forks: Option<usize>,
    /// Seconds since the node wrote its status.
    age_secs: Option<u64>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn row(dir: &Path, layout: &Layout, i: usize) -> Row {
    let entry = &layout.nodes[i];
    let pid = node_alive(dir, i);
    let status: Option<Value> =
        fs::read_to_string(entry.dir.join("status.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    // A status left by an earlier process (or a stopped one) says nothing about peers now.
    let current = status.filter(|s| pid.is_some() && s["pid"].as_u64() == pid.map(u64::from));
    let fed = current.as_ref().map(|s| &s["federation"]);
    let len = |k: &str| fed.and_then(|f| f[k].as_array()).map(Vec::len);
    Row {
        node: i,
        node_id: current.as_ref().and_then(|s| s["node_id"].as_str()).map(str::to_string),
        address: entry.address.clone(),
        alive: pid.is_some(),
        pid,
        peers: len("peers"),
        epoch: fed.and_then(|f| f["epoch"].as_u64()),
        witnesses: len("cosignatures"),
        known: len("known"),
        forks: len("forks"),
        age_secs: current
            .as_ref()
            .and_then(|s| s["written_at_us"].as_u64())
            .map(|w| now_us().saturating_sub(w) / 1_000_000),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<5} {:<14} {:<22} {:<7} {:>5} {:>6} {:>9} {:>5} {:>5}",
        "node", "id", "address", "state", "peers", "epoch", "witnesses", "known", "forks"
    );
    let opt = |v: Option<usize>| v.map_or("-".to_string(), |v| v.to_string());
    for r in rows {
        let id = r.node_id.as_deref().map_or("-".to_string(), |id| id.get(..12).unwrap_or(id).to_string());
        println!(
            "{:<5} {:<14} {:<22} {:<7} {:>5} {:>6} {:>9} {:>5} {:>5}",
            r.node,
            id,
            r.address,
            if r.alive { "alive" } else { "down" },
            opt(r.peers),
            r.epoch.map_or("-".to_string(), |e| e.to_string()),
            opt(r.witnesses),
            opt(r.known),
            opt(r.forks),
        );
    }
}

/// Waits until every node in `which` is alive and reports N-1 peers.
fn wait_peered(dir: &Path, layout: &Layout, which: &[usize], timeout: Duration) -> Result<(), Failure> {
    let want = layout.nodes.len() - 1;
    let until = Instant::now() + timeout;
    loop {
        let rows: Vec<Row> = which.iter().map(|&i| row(dir, layout, i)).collect();
        if let Some(dead) = rows.iter().find(|r| !r.alive) {
            return Err(fail(format!("node {} is not running; see {}", dead.node, log_file(dir, dead.node).display())));
        }
        if rows.iter().all(|r| r.peers == Some(want)) {
            return Ok(());
        }
        if Instant::now() >= until {
            let all: Vec<Row> = (0..layout.nodes.len()).map(|i| row(dir, layout, i)).collect();
            print_table(&all);
            return Err(fail(format!("not every node reached {want} peers within {} s", timeout.as_secs())));
        }
        std::thread::sleep(POLL);
    }
}

fn up(
    dir: &Path,
    n: usize,
    base_port: Option<u16>,
    epoch_secs: u64,
    timeout_secs: u64,
    node_bin: Option<PathBuf>,
) -> Result<(), Failure> {
    if n == 0 {
        return Err(usage("--nodes must be at least 1"));
    }
    let layout = if dir.join(LAYOUT_FILE).exists() {
        let mut layout = read_layout(dir)?;
        if layout.nodes.len() != n {
            return Err(usage(format!(
                "{} holds a testnet of {} nodes; use --nodes {} or another --dir",
                dir.display(),
                layout.nodes.len(),
                layout.nodes.len()
            )));
        }
        if let Some(bin) = node_bin {
            layout.node_bin = locate_node_bin(Some(bin))?;
            write_layout(dir, &layout)?;
        }
        layout
    } else {
        create(dir, n, base_port, epoch_secs, locate_node_bin(node_bin)?)?
    };
    for i in 0..n {
        let pid = start_node(dir, &layout, i)?;
        eprintln!("node {i}: pid {pid}, {} (log {})", layout.nodes[i].address, log_file(dir, i).display());
    }
    let all: Vec<usize> = (0..n).collect();
    wait_peered(dir, &layout, &all, Duration::from_secs(timeout_secs))?;
    let rows: Vec<Row> = all.iter().map(|&i| row(dir, &layout, i)).collect();
    print_table(&rows);
    println!(
        "testnet of {n} nodes up in {}; stop it with `nymstr-testnet down --dir {}`",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn status(dir: &Path, json: bool) -> Result<(), Failure> {
    let layout = read_layout(dir)?;
    let rows: Vec<Row> = (0..layout.nodes.len()).map(|i| row(dir, &layout, i)).collect();
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).map_err(fail)?);
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// SIGTERM, wait, SIGKILL. Returns whether the node had to be killed.
fn stop_node(dir: &Path, i: usize) -> bool {
    let Some(pid) = node_alive(dir, i) else {
        let _ = fs::remove_file(pid_file(dir, i));
        return false;
    };
    signal(pid, "-TERM");
    let until = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = alive(pid);
    if killed {
        signal(pid, "-KILL");
        let until = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = fs::remove_file(pid_file(dir, i));
    killed
}

fn check_index(layout: &Layout, i: usize) -> Result<(), Failure> {
    if i >= layout.nodes.len() {
        return Err(usage(format!("--node {i}: the testnet has nodes 0..{}", layout.nodes.len())));
    }
    Ok(())
}

fn restart(dir: &Path, i: usize, timeout_secs: u64) -> Result<(), Failure> {
    let layout = read_layout(dir)?;
    check_index(&layout, i)?;
    stop_node(dir, i);
    let pid = start_node(dir, &layout, i)?;
    eprintln!("node {i}: pid {pid}");
    if timeout_secs > 0 {
        wait_peered(dir, &layout, &[i], Duration::from_secs(timeout_secs))?;
    }
    print_table(&[row(dir, &layout, i)]);
    Ok(())
}

fn kill_node(dir: &Path, i: usize) -> Result<(), Failure> {
    let layout = read_layout(dir)?;
    check_index(&layout, i)?;
    let Some(pid) = node_alive(dir, i) else {
        return Err(fail(format!("node {i} is not running")));
    };
    signal(pid, "-KILL");
    let until = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fs::remove_file(pid_file(dir, i));
    println!("node {i} (pid {pid}) killed");
    Ok(())
}

fn down(dir: &Path) -> Result<(), Failure> {
    let layout = read_layout(dir)?;
    for i in 0..layout.nodes.len() {
        let was = read_pid(dir, i);
        let killed = stop_node(dir, i);
        match (was, killed) {
            (Some(pid), false) => println!("node {i} (pid {pid}) stopped"),
            (Some(pid), true) => println!("node {i} (pid {pid}) did not stop in time: killed"),
            (None, _) => println!("node {i} was not running"),
        }
    }
    Ok(())
}
