//! `nymstr-node`: run a nymstr discovery node.
//!
//! ```text
//! nymstr-node init --dir DIR [--listen ADDR]   create DIR, the node key and config.toml
//! nymstr-node run  --dir DIR                   serve until SIGINT/SIGTERM
//! nymstr-node info --dir DIR [--json]          node id, address, counts
//! ```
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
use nymstr_node::store::Table;

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
        Command::Init { dir, listen } => init(DataDir::new(dir), listen),
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

fn init(dir: DataDir, listen: SocketAddr) -> Result<(), Failure> {
    let report = config::init(&dir, listen).map_err(|e| match e {
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
    Ok(())
}
