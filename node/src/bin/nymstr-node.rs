//! `nymstr-node`: run a nymstr discovery node.
//!
//! ```text
//! nymstr-node init --dir DIR [--listen ADDR] [--join FILE|ADDR]...
//!                                              create DIR, the node key and config.toml
//! nymstr-node run  --dir DIR                   serve until SIGINT/SIGTERM
//! nymstr-node info --dir DIR [--json]          node id, address, counts, federation
//! nymstr-node descriptor --dir DIR             print the node's signed descriptor (JSON)
//! ```
//!
//! `--join` takes a peer's `descriptor.json` (verified, its address used) or a peer's
//! `host:port`; either becomes a `[federation] bootstrap` entry.
//!
//! `run` prints one line on stdout once it serves, ending with the bound address:
//! `nymstr-node 0.1.0: node <id> listening on tcp 127.0.0.1:7000`. Logs go to stderr.
//! Exit codes: 0 success, 2 usage or configuration error (the message says what to fix),
//! 1 runtime failure.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use nymstr_node::config::{self, Config, DataDir, LogFormat, NodeKey};
use nymstr_node::runtime::{self, RunOptions, logging, os, status::Status};
use nymstr_node::sled_store::{SledOpenError, SledStore};
use nymstr_node_core::store::Table;

#[derive(Parser)]
#[command(name = "nymstr-node", version, about = "A nymstr discovery node: registry and relay for anonymous messaging")]
struct Cli {
    /// Log format on stderr (overrides `[log] format` in config.toml).
    #[arg(long, value_enum, global = true)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node's data directory: its identity key and a commented config.toml.
    Init {
        /// The data directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// TCP address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:7000", value_parser = runtime::parse_listen)]
        listen: SocketAddr,
        /// A node to federate with: its descriptor file (`DIR/descriptor.json` of that
        /// node) or its `host:port`. Repeatable; written to `[federation] bootstrap`.
        #[arg(long, value_name = "DESCRIPTOR-FILE-OR-ADDR")]
        join: Vec<String>,
    },
    /// Print this node's signed descriptor (JSON), as written to DIR/descriptor.json.
    Descriptor {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the node until SIGINT or SIGTERM (which flush the database before exit).
    Run {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the node's id, address and counts (works while the node runs).
    Info {
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// An error for the operator, with the exit code it deserves.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl ToString) -> Self {
        Self { code: 2, message: message.to_string() }
    }
    fn runtime(message: impl ToString) -> Self {
        Self { code: 1, message: message.to_string() }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { dir, listen, join } => init(DataDir::new(dir), listen, &join),
        Command::Descriptor { dir } => descriptor(DataDir::new(dir)),
        Command::Run { dir } => run(DataDir::new(dir), cli.log_format),
        Command::Info { dir, json } => info(DataDir::new(dir), json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("nymstr-node: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `--join` arguments as bootstrap addresses: an existing file is a descriptor (verified),
/// anything else must look like `host:port`.
fn join_addresses(join: &[String]) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    for j in join {
        let path = std::path::Path::new(j);
        let address = if path.is_file() {
            let d = config::DescriptorJson::read(path).map_err(Failure::usage)?;
            String::from_utf8(d.address).map_err(|_| Failure::usage(format!("{j}: the address is not text")))?
        } else if j.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
            j.clone()
        } else {
            return Err(Failure::usage(format!(
                "--join {j:?}: neither a descriptor file nor an address like 127.0.0.1:7000"
            )));
        };
        if !out.contains(&address) {
            out.push(address);
        }
    }
    Ok(out)
}

fn init(dir: DataDir, listen: SocketAddr, join: &[String]) -> Result<(), Failure> {
    let bootstrap = join_addresses(join)?;
    let report = config::init_with(&dir, listen, &bootstrap).map_err(|e| match e {
        config::InitError::Exists(_) | config::InitError::Key(_) => Failure::usage(e),
        _ => Failure::runtime(e),
    })?;
    println!("node id   {}", report.node_id);
    println!("config    {}", report.config.display());
    if report.kept_key {
        println!("key       {} (existing key kept)", report.key.display());
    } else {
        println!("key       {} (new; keep it private and backed up)", report.key.display());
    }
    println!("listen    {listen}");
    for b in &bootstrap {
        println!("bootstrap {b}");
    }
    // The descriptor can be handed to other operators now if the port is fixed (with port
    // 0 the address is known only once the node runs; `run` rewrites the file).
    if listen.port() != 0
        && let (Ok(key), Ok(config)) = (NodeKey::load(&dir.key()), Config::load_dir(&dir))
    {
        let address = config::advertised_address(&config, &listen.to_string());
        let d = config::sign_descriptor(&key, &config, &address, os::now_us());
        match config::DescriptorJson::from_descriptor(&d).write(&dir.descriptor()) {
            Ok(()) => println!("descriptor {}", dir.descriptor().display()),
            Err(e) => return Err(Failure::runtime(format!("cannot write {}: {e}", dir.descriptor().display()))),
        }
    }
    println!("next: review the config, then `nymstr-node run --dir {}`", dir.root.display());
    Ok(())
}

fn run(dir: DataDir, log_format: Option<Format>) -> Result<(), Failure> {
    let config = Config::load_dir(&dir).map_err(Failure::usage)?;
    let format = match log_format {
        Some(Format::Text) => LogFormat::Text,
        Some(Format::Json) => LogFormat::Json,
        None => config.log.format,
    };
    logging::init(format, &config.log.filter);
    let options = RunOptions {
        handle_signals: true,
        stop: None,
        on_ready: Some(Box::new(|ready: &runtime::Ready| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "nymstr-node {}: node {} listening on {} {}",
                env!("CARGO_PKG_VERSION"),
                ready.node_id,
                ready.transport,
                ready.address
            );
            let _ = out.flush();
        })),
    };
    runtime::run(&dir, &config, options).map_err(|e| Failure { code: e.exit_code() as u8, message: e.to_string() })
}

/// What `info` prints.
#[derive(serde::Serialize)]
struct Info {
    node_id: String,
    transport: String,
    address: String,
    accounts: u64,
    installations: u64,
    queued_messages: u64,
    /// "database" (the node is not running) or "status.json" (it is: sled locks its
    /// directory, so the figures come from the file the node rewrites periodically).
    source: String,
    running: bool,
    /// Age of the figures in seconds (status.json only).
    age_secs: Option<u64>,
    pid: Option<u32>,
    /// The federation view (from status.json while the node runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    federation: Option<nymstr_node::runtime::status::FederationStatus>,
    federation_enabled: bool,
}

/// The descriptor: the running node's (descriptor.json, written at start), else a fresh
/// one signed now for the configured address.
fn descriptor(dir: DataDir) -> Result<(), Failure> {
    let config = Config::load_dir(&dir).map_err(Failure::usage)?;
    let key = NodeKey::load(&dir.key()).map_err(Failure::usage)?;
    let d = match config::DescriptorJson::read(&dir.descriptor()) {
        Ok(d) if d.node_id.to_hex() == key.node_id() => d,
        _ => {
            let configured = runtime::configured_address(&config);
            if config.federation.advertise.is_none() && configured.ends_with(":0") {
                return Err(Failure::usage(
                    "the node listens on port 0: its address is known once it runs (then see DIR/descriptor.json), or set [federation] advertise",
                ));
            }
            let address = config::advertised_address(&config, &configured);
            config::sign_descriptor(&key, &config, &address, os::now_us())
        }
    };
    let json = config::DescriptorJson::from_descriptor(&d);
    println!("{}", serde_json::to_string_pretty(&json).map_err(Failure::runtime)?);
    Ok(())
}

fn info(dir: DataDir, json: bool) -> Result<(), Failure> {
    let config = Config::load_dir(&dir).map_err(Failure::usage)?;
    let key = NodeKey::load(&dir.key()).map_err(Failure::usage)?;
    let transport = config.transport.kind.name().to_string();
    let info = if !dir.db().exists() {
        Info {
            node_id: key.node_id(),
            transport,
            address: runtime::configured_address(&config),
            accounts: 0,
            installations: 0,
            queued_messages: 0,
            source: "database (none yet: the node has never run)".into(),
            running: false,
            age_secs: None,
            pid: None,
            federation: None,
            federation_enabled: config.federation.enabled,
        }
    } else {
        match SledStore::open(&dir.db(), &config.store.sled_options()) {
            Ok(store) => Info {
                node_id: key.node_id(),
                transport,
                address: runtime::configured_address(&config),
                accounts: store.count(Table::Accounts),
                installations: store.count(Table::Installations),
                queued_messages: store.count(Table::Queues),
                source: "database (the node is not running)".into(),
                running: false,
                age_secs: None,
                pid: None,
                federation: None,
                federation_enabled: config.federation.enabled,
            },
            Err(SledOpenError::Locked { .. }) => {
                let status = Status::read(&dir.status()).map_err(|e| {
                    Failure::runtime(format!(
                        "the database is locked (the node is running) and {} cannot be read: {e}",
                        dir.status().display()
                    ))
                })?;
                let age = os::now_us().saturating_sub(status.written_at_us) / 1_000_000;
                Info {
                    node_id: status.node_id,
                    transport: status.transport,
                    address: status.address,
                    accounts: status.accounts,
                    installations: status.installations,
                    queued_messages: status.queued_messages,
                    source: format!("{} (the node is running and holds the database lock)", dir.status().display()),
                    running: true,
                    age_secs: Some(age),
                    pid: Some(status.pid),
                    federation_enabled: status.federation.is_some(),
                    federation: status.federation,
                }
            }
            Err(e) => return Err(Failure::runtime(e)),
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&info).map_err(Failure::runtime)?);
        return Ok(());
    }
    println!("node id          {}", info.node_id);
    let state = if info.running {
        format!("running (pid {})", info.pid.unwrap_or_default())
    } else {
        "not running".to_string()
    };
    println!("state            {state}");
    println!("transport        {} {}", info.transport, info.address);
    println!("accounts         {}", info.accounts);
    println!("installations    {}", info.installations);
    println!("queued messages  {}", info.queued_messages);
    match info.age_secs {
        Some(age) => println!("source           {}, written {age} s ago", info.source),
        None => println!("source           {}", info.source),
    }
    match (&info.federation, info.federation_enabled) {
        (Some(f), _) => {
            let short = |id: &str| id.get(..12).unwrap_or(id).to_string();
            println!("federation       node {} at {}", f.node_id, f.address);
            let epoch = f.epoch.map_or("none".to_string(), |e| e.to_string());
            println!("epoch            {epoch} ({} cosignatures on the latest head)", f.cosignatures.len());
            for w in &f.cosignatures {
                println!("  witness        {}", short(w));
            }
            println!("peers            {}", f.peers.len());
            for p in &f.peers {
                let epoch = p.epoch.map_or("-".to_string(), |e| e.to_string());
                println!(
                    "  peer           {} {} epoch {epoch} ({} cosignatures)",
                    short(&p.node_id),
                    p.address,
                    p.cosignatures
                );
            }
            println!("known nodes      {}", f.known.len());
            for k in f.known.iter().filter(|k| !f.peers.iter().any(|p| p.node_id == k.node_id)) {
                println!("  known          {} {} (not peered)", short(&k.node_id), k.address);
            }
            println!("fork certificates {}", f.forks.len());
            for node in &f.forks {
                println!("  fork           {} (distrusted)", short(node));
            }
        }
        (None, true) => println!("federation       enabled (peers are shown while the node runs)"),
        (None, false) => println!("federation       disabled"),
    }
    Ok(())
}
