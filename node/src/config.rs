//! The node's data directory and its `config.toml`: what `nymstr-node init` writes and
//! `run`/`info` read.
//!
//! ```text
//! DIR/config.toml   every setting, commented (written once by `init`, never overwritten)
//! DIR/node.key      the node's ed25519 secret key (hex); node id =
//!                   hex(blake3::derive_key("nymstr/v1/node-id", public key))
//! DIR/db/           the sled database (locked while the node runs)
//! DIR/status.json   written by the running node every `status_every_secs` and at exit
//! DIR/descriptor.json  the node's signed descriptor (federation), written by `init` when
//!                   the address is known and by `run` at every start
//! DIR/nym/          the Nym client's state (only with `kind = "nym"`)
//! ```
//!
//! Every table and the file itself reject unknown keys; a bad value is reported with the
//! key and its line.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::sled_store::SledOptions;
use crate::transport::tcp::TcpConfig;
use nymstr_node_core::actors::NodeConfig;

pub const CONFIG_FILE: &str = "config.toml";
pub const KEY_FILE: &str = "node.key";
pub const DB_DIR: &str = "db";
pub const STATUS_FILE: &str = "status.json";
pub const DESCRIPTOR_FILE: &str = "descriptor.json";

/// Paths inside a node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn key(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }
    pub fn db(&self) -> PathBuf {
        self.root.join(DB_DIR)
    }
    pub fn status(&self) -> PathBuf {
        self.root.join(STATUS_FILE)
    }
    pub fn descriptor(&self) -> PathBuf {
        self.root.join(DESCRIPTOR_FILE)
    }
}

/// `config.toml`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub store: StoreConfig,
    pub transport: TransportConfig,
    /// Taking part in a federation: bootstrap peers, advertised address, roles.
    pub federation: FederationSection,
    /// The protocol core's tunables (`NodeConfig`; `[core.federation]` holds the
    /// federation core's).
    pub core: NodeConfig,
}

/// A role a node announces in its descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registers users, keeps a transparency log, relays direct messages.
    Discovery,
    /// Hosts MLS groups.
    Group,
}

/// `[federation]` in `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    /// Start the node with its identity (`NodeCore::start_federated`): transparency log,
    /// peering, witnessing, cross-node forwarding.
    pub enabled: bool,
    /// Nodes (`host:port`) said hello to at start and on every peering retry.
    pub bootstrap: Vec<String>,
    /// The address put in this node's descriptor, which peers dial (`host:port`);
    /// unset: the bound listen address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    pub roles: Vec<Role>,
}

impl Default for FederationSection {
    fn default() -> Self {
        Self { enabled: true, bootstrap: Vec::new(), advertise: None, roles: vec![Role::Discovery, Role::Group] }
    }
}

impl FederationSection {
    pub fn roles(&self) -> nymstr_proto::federation::Roles {
        nymstr_proto::federation::Roles {
            discovery: self.roles.contains(&Role::Discovery),
            group: self.roles.contains(&Role::Group),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` env-filter directive; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads for network I/O; the node core runs on its own thread besides them.
    pub io_threads: usize,
    /// Period of `status.json` rewrites.
    pub status_every_secs: u64,
    /// At shutdown, how long replies released by the final flush may take to be written.
    pub shutdown_grace_secs: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { io_threads: 2, status_every_secs: 10, shutdown_grace_secs: 5 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub cache_capacity_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { cache_capacity_bytes: SledOptions::default().cache_capacity_bytes }
    }
}

impl StoreConfig {
    pub fn sled_options(&self) -> SledOptions {
        SledOptions { cache_capacity_bytes: self.cache_capacity_bytes }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[default]
    Tcp,
    Nym,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Nym => "nym",
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub kind: TransportKind,
    pub tcp: TcpConfig,
    /// `[transport.nym]`, read only by a node built with `--features nym`.
    #[cfg(feature = "nym")]
    pub nym: crate::transport::nym::NymConfig,
    /// Without the `nym` feature the table is kept as written (so one config file serves
    /// both builds) and refused only if `kind = "nym"`.
    #[cfg(not(feature = "nym"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nym: Option<toml::Table>,
}

/// Why a configuration or data directory could not be used. All are operator errors
/// (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no node in {dir}: {config} does not exist; create one with `nymstr-node init --dir {dir}`", dir = .dir.display(), config = .config.display())]
    NotInitialised { dir: PathBuf, config: PathBuf },
    #[error("cannot read {path}: {source}", path = .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A TOML syntax or type error; toml's message names the line and shows the key.
    #[error("{path}: {message}", path = .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{path}{at}: `{key}` {message}", path = .path.display(), at = .line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid { path: PathBuf, key: String, line: Option<usize>, message: String },
    #[error("{path}: {message}", path = .path.display())]
    Key { path: PathBuf, message: String },
}

impl Config {
    /// Reads `DIR/config.toml`.
    pub fn load_dir(dir: &DataDir) -> Result<Self, ConfigError> {
        if !dir.config().is_file() {
            return Err(ConfigError::NotInitialised { dir: dir.root.clone(), config: dir.config() });
        }
        let path = dir.config();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Self::parse(&text, &path)
    }

    /// Parses and range-checks a configuration; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            // toml names the line and shows it; name the full key too, for one-line logs.
            let message = match e.span().and_then(|span| key_at(text, span.start)) {
                Some(key) => format!("`{key}`: {message}"),
                None => message,
            };
            ConfigError::Parse { path: path.to_path_buf(), message }
        })?;
        if let Err((section, key, message)) = config.check() {
            let line = line_of(text, section, key);
            let key = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
            return Err(ConfigError::Invalid { path: path.to_path_buf(), key, line, message });
        }
        Ok(config)
    }

    /// Range checks the types cannot express: `(table, key, message)` of the first failure.
    pub fn check(&self) -> Result<(), (&'static str, &'static str, String)> {
        let c = &self.core;
        let core = |key, message: &str| Err(("core", key, message.to_string()));
        if c.challenge_ttl_us < 1_000_000 {
            return core("challenge_ttl_us", "must be at least 1_000_000 (1 s)");
        }
        if c.challenges_pending_max == 0 {
            return core("challenges_pending_max", "must be at least 1");
        }
        if c.queue_depth_max == 0 {
            return core("queue_depth_max", "must be at least 1");
        }
        if c.deliveries_inflight_max == 0 {
            return core("deliveries_inflight_max", "must be at least 1");
        }
        if c.redeliver_after_us < 100_000 {
            return core("redeliver_after_us", "must be at least 100_000 (100 ms)");
        }
        if c.redeliver_after_max_us < c.redeliver_after_us {
            return core("redeliver_after_max_us", "must be at least redeliver_after_us");
        }
        if c.seen_send_ttl_us < 1_000_000 {
            return core("seen_send_ttl_us", "must be at least 1_000_000 (1 s)");
        }
        if c.sweep_every_us < 100_000 {
            return core("sweep_every_us", "must be at least 100_000 (100 ms)");
        }
        if c.group_commit_timeout_us < 1_000_000 {
            return core("group_commit_timeout_us", "must be at least 1_000_000 (1 s)");
        }
        if c.group_history_max == 0 {
            return core("group_history_max", "must be at least 1");
        }
        let f = &c.federation;
        let fed = |key, message: &str| Err(("core.federation", key, message.to_string()));
        if f.epoch_us < 1_000_000 {
            return fed("epoch_us", "must be at least 1_000_000 (1 s)");
        }
        if f.peer_retry_us < 100_000 {
            return fed("peer_retry_us", "must be at least 100_000 (100 ms)");
        }
        if f.forward_timeout_us < 100_000 {
            return fed("forward_timeout_us", "must be at least 100_000 (100 ms)");
        }
        if f.peers_max == 0 {
            return fed("peers_max", "must be at least 1");
        }
        if f.policy.len() > nymstr_proto::federation::descriptor::POLICY_BYTES_MAX {
            return fed("policy", "is longer than 64 bytes");
        }
        let max = nymstr_proto::federation::descriptor::ADDRESS_BYTES_MAX;
        for b in &self.federation.bootstrap {
            if b.is_empty() || b.len() > max {
                return Err(("federation", "bootstrap", format!("entries must be 1 to {max} bytes")));
            }
        }
        if let Some(a) = &self.federation.advertise
            && (a.is_empty() || a.len() > max)
        {
            return Err(("federation", "advertise", format!("must be 1 to {max} bytes")));
        }
        if let Err((key, message)) = self.transport.tcp.check() {
            return Err(("transport.tcp", key, message));
        }
        #[cfg(not(feature = "nym"))]
        if self.transport.kind == TransportKind::Nym {
            return Err((
                "transport",
                "kind",
                "= \"nym\" needs a node built with the Nym transport: `cargo build --release -p nymstr-node --features nym`"
                    .into(),
            ));
        }
        let r = &self.runtime;
        if !(1..=256).contains(&r.io_threads) {
            return Err(("runtime", "io_threads", "must be between 1 and 256".into()));
        }
        if r.status_every_secs == 0 {
            return Err(("runtime", "status_every_secs", "must be at least 1".into()));
        }
        if self.store.cache_capacity_bytes < 1 << 20 {
            return Err(("store", "cache_capacity_bytes", "must be at least 1_048_576 (1 MiB)".into()));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(("log", "filter", format!("is not a valid filter: {e}")));
        }
        Ok(())
    }
}

/// The line (1-based) of `key = ...` inside `[section]`, for error messages. Handles the
/// layout `init` writes (and any hand-edited file of plain `[table]` headers).
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(header) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = header.trim().to_string();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else { continue };
        let k = k.trim().trim_matches('"');
        let (sect, k) = match k.rsplit_once('.') {
            Some((prefix, k)) if current.is_empty() => (prefix.trim().to_string(), k.trim()),
            Some((prefix, k)) => (format!("{current}.{}", prefix.trim()), k.trim()),
            None => (current.clone(), k),
        };
        if sect == section && k == key {
            return Some(i + 1);
        }
    }
    None
}

/// The dotted key (`core.queue_depth_max`) written on the line holding byte `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line = text.get(..offset)?.matches('\n').count();
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(header) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = header.trim().to_string();
        } else if i == line {
            let key = l.split_once('=')?.0.trim().trim_matches('"');
            return Some(if current.is_empty() { key.to_string() } else { format!("{current}.{key}") });
        }
        if i >= line {
            return None;
        }
    }
    None
}

/// `12345678` as `12_345_678`, as TOML allows.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(ch);
    }
    out
}

/// The `config.toml` that `init` writes: every setting with its default and a comment.
pub fn render_template(listen: SocketAddr) -> String {
    render_template_with(listen, &[])
}

/// [`render_template`] with `bootstrap` peers in `[federation]`.
pub fn render_template_with(listen: SocketAddr, bootstrap: &[String]) -> String {
    let d = Config::default();
    let c = &d.core;
    let f = &c.federation;
    let bootstrap = toml::Value::Array(bootstrap.iter().cloned().map(toml::Value::String).collect()).to_string();
    let t = TcpConfig { listen, ..d.transport.tcp.clone() };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"# nymstr node configuration, written by `nymstr-node init` (nymstr-node {version}).
# Every setting is listed with its default value; a key left out takes its default.
# Unknown keys are refused (with their line), so a typo never goes unnoticed.
# Beside this file: node.key (the node's secret identity key: keep it, keep it private),
# db/ (the database), status.json (written by the running node, read by `info`).

[log]
# Log line format on stderr: "text" for people, "json" for log collectors (one object per
# line). The command-line flag --log-format overrides it.
format = "{format}"
# Which events are logged, in tracing's env-filter syntax ("info", "warn",
# "info,nymstr_node=debug", ...). The RUST_LOG environment variable overrides it.
# Client addresses are never logged at any level: the node never learns them.
filter = "{filter}"

[runtime]
# Threads that run network I/O (framing, rate limits). The protocol core and its storage
# run on one more thread of their own.
io_threads = {io_threads}
# How often the running node rewrites status.json, which `nymstr-node info` reads while the
# node holds the database lock. Seconds, at least 1.
status_every_secs = {status_every_secs}
# On SIGINT or SIGTERM the node stops accepting, flushes the database, and then waits at
# most this long for replies already released to be written to clients. Seconds.
shutdown_grace_secs = {shutdown_grace_secs}

[store]
# Upper bound of the database's page cache in memory, in bytes (at least 1 MiB).
cache_capacity_bytes = {cache}

[transport]
# How clients reach this node: "tcp" (length-prefixed frames on a socket; specs/tcp.md),
# or "nym" (the Nym mixnet; needs a node built with `--features nym`, settings in
# [transport.nym]).
kind = "tcp"

[transport.tcp]
# Address and port to listen on. "0.0.0.0:7000" serves every interface; port 0 picks a
# free port (the bound address is printed at start and written to status.json).
listen = "{listen}"
# Connections served at once. A connection beyond the limit is closed as soon as it is
# accepted.
max_connections = {max_connections}
# Per-connection token bucket: sustained frames per second, and the burst above it.
# A frame beyond the limit is dropped and answered with Error{{Busy}} (clients retry).
# 0 frames per second disables the limit.
rate_limit_frames_per_sec = {rate}
rate_limit_burst_frames = {burst}
# A connection that sends nothing for this long is closed (0: never). Seconds.
idle_timeout_secs = {idle}
# A connection whose replies cannot be written within this long is closed. Seconds.
write_timeout_secs = {write_timeout}
# Replies queued for one connection; a client that lets this many pile up unread is
# closed (it reconnects, logs in again, and undelivered messages come again).
write_queue_frames = {write_queue}

[core]
# How long a registration or login challenge stays valid. Microseconds (1 s = 1_000_000).
challenge_ttl_us = {challenge_ttl_us}
# Challenges pending at once; beyond this, new registrations and logins get Error{{Busy}}.
challenges_pending_max = {challenges_pending_max}
# Messages queued for one installation; beyond this, sends to it get Error{{QueueFull}}.
queue_depth_max = {queue_depth_max}
# Deliveries sent to one installation and not yet acknowledged.
deliveries_inflight_max = {deliveries_inflight_max}
# First redelivery of an unacknowledged delivery (µs); doubles up to redeliver_after_max_us.
redeliver_after_us = {redeliver_after_us}
redeliver_after_max_us = {redeliver_after_max_us}
# How long a (sender, message id) pair is remembered so that a retried send is not queued
# twice (µs; 24 h by default).
seen_send_ttl_us = {seen_send_ttl_us}
# Period of the housekeeping sweep of expired challenges and send records (µs).
sweep_every_us = {sweep_every_us}
# Groups (specs/groups.md): how long an epoch's designated steward has to commit before
# the next admin in steward order may (µs).
group_commit_timeout_us = {group_commit_timeout_us}
# Application messages kept per group log (handshake messages are always kept).
group_history_max = {group_history_max}
# Groups this node hosts; beyond this GroupCreate gets Error{{Busy}}.
groups_max = {groups_max}
# Proposals accepted per group and epoch; beyond this uploads get Error{{Busy}}.
group_proposals_per_epoch_max = {group_proposals_per_epoch_max}

[federation]
# Take part in a federation (SPECv1.md §9): keep a transparency log, peer with other
# nodes (node-to-node TCP, specs/tcp.md §6), witness their heads, forward lookups and
# direct messages to user@<node id>. false: a stand-alone v1 node.
enabled = true
# Nodes said hello to at start and on every peering retry ("host:port"). Others are
# learnt from their gossip. `nymstr-node init --join` fills this in.
bootstrap = {bootstrap}
# The address put in this node's signed descriptor: where other nodes dial it. Unset: the
# bound listen address. Set it when listening on 0.0.0.0 or behind a port mapping.
# advertise = "node.example.org:7000"
# Roles announced in the descriptor: "discovery" (registry, log, relay), "group" (MLS).
roles = ["discovery", "group"]

[core.federation]
# Length of one transparency-log epoch: directory changes are sealed into a new signed
# head this often (µs).
epoch_us = {epoch_us}
# Peers each gossip item is pushed to (fork certificates go to every peer).
gossip_fanout = {gossip_fanout}
# Peers asked to cosign (witness) each new head.
witnesses_wanted = {witnesses_wanted}
# Cosignatures the newest head needs before lookups are answered from it, or
# serve_grace_us after it was issued, whichever comes first.
serve_quorum = {serve_quorum}
serve_grace_us = {serve_grace_us}
# How long a forwarded lookup or direct message waits for the remote node before the
# client is told Unreachable (µs).
forward_timeout_us = {forward_timeout_us}
# Period of the peering retry: unanswered hellos (and bootstrap peers) are tried again (µs).
peer_retry_us = {peer_retry_us}
# Authenticated peers kept; hellos beyond this are refused with Busy.
peers_max = {peers_max}
# Gossip items remembered for de-duplication.
gossip_seen_max = {gossip_seen_max}
# Heads remembered per other node (by epoch) to detect equivocation (fork certificates).
heads_kept_per_node = {heads_kept_per_node}
# The trust policy announced in the descriptor (informative for peers; at most 64 bytes).
policy = "{policy}"
"#,
        version = env!("CARGO_PKG_VERSION"),
        format = match d.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        },
        filter = d.log.filter,
        io_threads = d.runtime.io_threads,
        status_every_secs = d.runtime.status_every_secs,
        shutdown_grace_secs = d.runtime.shutdown_grace_secs,
        cache = grouped(d.store.cache_capacity_bytes),
        listen = t.listen,
        max_connections = t.max_connections,
        rate = t.rate_limit_frames_per_sec,
        burst = t.rate_limit_burst_frames,
        idle = t.idle_timeout_secs,
        write_timeout = t.write_timeout_secs,
        write_queue = t.write_queue_frames,
        challenge_ttl_us = grouped(c.challenge_ttl_us),
        challenges_pending_max = grouped(c.challenges_pending_max as u64),
        queue_depth_max = grouped(u64::from(c.queue_depth_max)),
        deliveries_inflight_max = c.deliveries_inflight_max,
        redeliver_after_us = grouped(c.redeliver_after_us),
        redeliver_after_max_us = grouped(c.redeliver_after_max_us),
        seen_send_ttl_us = grouped(c.seen_send_ttl_us),
        sweep_every_us = grouped(c.sweep_every_us),
        group_commit_timeout_us = grouped(c.group_commit_timeout_us),
        group_history_max = grouped(c.group_history_max as u64),
        groups_max = grouped(c.groups_max as u64),
        group_proposals_per_epoch_max = c.group_proposals_per_epoch_max,
        epoch_us = grouped(f.epoch_us),
        gossip_fanout = f.gossip_fanout,
        witnesses_wanted = f.witnesses_wanted,
        serve_quorum = f.serve_quorum,
        serve_grace_us = grouped(f.serve_grace_us),
        forward_timeout_us = grouped(f.forward_timeout_us),
        peer_retry_us = grouped(f.peer_retry_us),
        peers_max = f.peers_max,
        gossip_seen_max = grouped(f.gossip_seen_max as u64),
        heads_kept_per_node = f.heads_kept_per_node,
        policy = f.policy,
    );
    #[cfg(feature = "nym")]
    {
        let nym = toml::to_string(&crate::transport::nym::NymConfig::default()).unwrap_or_default();
        let _ = write!(
            s,
            "\n[transport.nym]\n# The Nym transport's settings (used with kind = \"nym\"); see specs/nym.md.\n{nym}"
        );
    }
    s
}

/// The node's long-term identity (for federation): an ed25519 key.
pub struct NodeKey {
    signing: SigningKey,
}

impl NodeKey {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        crate::runtime::os::os_random(&mut seed)?;
        Ok(Self { signing: SigningKey::from_bytes(&seed) })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The node id (`federation::descriptor::node_id`) in hex: how every node, client and
    /// log names this one.
    pub fn node_id(&self) -> String {
        node_id(&self.public_key())
    }

    /// The secret key (to start the federation core and sign the descriptor).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::Key { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read the node key: {e}")))?;
        let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("the node key is not hex: {e}")))?;
        let seed: [u8; 32] =
            bytes.try_into().map_err(|_| bad("the node key is not 32 bytes (64 hex digits)".to_string()))?;
        Ok(Self { signing: SigningKey::from_bytes(&seed) })
    }

    /// Writes the key to a new file readable by its owner only; never overwrites.
    fn write_new(&self, path: &Path) -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(path)?;
        writeln!(f, "{}", hex::encode(self.signing.to_bytes()))?;
        f.sync_all()
    }
}

/// `hex(blake3::derive_key("nymstr/v1/node-id", public key))`, the one node id.
pub fn node_id(public_key: &[u8; 32]) -> String {
    nymstr_proto::federation::descriptor::node_id(public_key).to_hex()
}

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    pub node_id: String,
    pub config: PathBuf,
    pub key: PathBuf,
    /// True if `node.key` already existed and was kept.
    pub kept_key: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path} already exists: refusing to overwrite it (edit it, or choose another --dir)", path = .0.display())]
    Exists(PathBuf),
    #[error("cannot create {path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Key(ConfigError),
    #[error("cannot draw a key from the operating system's random generator: {0}")]
    Entropy(String),
}

/// Creates `dir` (if needed), the node key (unless one exists: an identity is never
/// replaced) and `config.toml` (never overwritten).
pub fn init(dir: &DataDir, listen: SocketAddr) -> Result<InitReport, InitError> {
    init_with(dir, listen, &[])
}

/// [`init`] with `bootstrap` peers written into `[federation]`.
pub fn init_with(dir: &DataDir, listen: SocketAddr, bootstrap: &[String]) -> Result<InitReport, InitError> {
    let config = dir.config();
    if config.exists() {
        return Err(InitError::Exists(config));
    }
    create_private_dir(&dir.root).map_err(|source| InitError::Io { path: dir.root.clone(), source })?;
    let key_path = dir.key();
    let (key, kept_key) = if key_path.exists() {
        (NodeKey::load(&key_path).map_err(InitError::Key)?, true)
    } else {
        let key = NodeKey::generate().map_err(|e| InitError::Entropy(e.to_string()))?;
        key.write_new(&key_path).map_err(|source| InitError::Io { path: key_path.clone(), source })?;
        (key, false)
    };
    let text = render_template_with(listen, bootstrap);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&config).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(config.clone())
        } else {
            InitError::Io { path: config.clone(), source }
        }
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| InitError::Io { path: config.clone(), source })?;
    Ok(InitReport { node_id: key.node_id(), config, key: key_path, kept_key })
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// `descriptor.json`: a node's signed descriptor in readable form (`specs/testnet.md` §2).
/// Binary fields are lower-case hex; `address` is the address text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorJson {
    pub node_id: String,
    pub key: String,
    pub address: String,
    pub roles: Vec<Role>,
    pub policy: String,
    pub epoch_us: u64,
    pub issued_at_us: u64,
    pub sig: String,
}

impl DescriptorJson {
    pub fn from_descriptor(d: &nymstr_proto::federation::NodeDescriptor) -> Self {
        let mut roles = Vec::new();
        if d.roles.discovery {
            roles.push(Role::Discovery);
        }
        if d.roles.group {
            roles.push(Role::Group);
        }
        Self {
            node_id: d.node_id.to_hex(),
            key: hex::encode(d.key),
            address: String::from_utf8_lossy(&d.address).into_owned(),
            roles,
            policy: d.policy.clone(),
            epoch_us: d.epoch_us,
            issued_at_us: d.issued_at_us,
            sig: hex::encode(d.sig.0),
        }
    }

    /// The descriptor, verified (derived id, bounds, signature).
    pub fn to_descriptor(&self) -> Result<nymstr_proto::federation::NodeDescriptor, String> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.key, &mut key).map_err(|e| format!("key: {e}"))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.sig, &mut sig).map_err(|e| format!("sig: {e}"))?;
        let node_id = nymstr_proto::federation::NodeId::from_hex(&self.node_id).ok_or("node_id: not 64 hex digits")?;
        let d = nymstr_proto::federation::NodeDescriptor {
            node_id,
            key,
            address: self.address.as_bytes().to_vec(),
            roles: nymstr_proto::federation::Roles {
                discovery: self.roles.contains(&Role::Discovery),
                group: self.roles.contains(&Role::Group),
            },
            policy: self.policy.clone(),
            epoch_us: self.epoch_us,
            issued_at_us: self.issued_at_us,
            sig: nymstr_proto::wire::Sig(sig),
        };
        nymstr_proto::federation::descriptor::verify(&d).map_err(|e| e.to_string())?;
        Ok(d)
    }

    /// Writes `path` atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_json_atomic(self, path)
    }

    /// Reads and verifies a descriptor file.
    pub fn read(path: &Path) -> Result<nymstr_proto::federation::NodeDescriptor, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json: Self = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        json.to_descriptor().map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Signs a fresh descriptor for the node in `config` with `key`, at `address`.
pub fn sign_descriptor(
    key: &NodeKey,
    config: &Config,
    address: &str,
    now_us: u64,
) -> nymstr_proto::federation::NodeDescriptor {
    let f = &config.core.federation;
    nymstr_proto::federation::descriptor::sign(
        key.signing_key(),
        address.as_bytes().to_vec(),
        config.federation.roles(),
        f.policy.clone(),
        f.epoch_us,
        now_us,
    )
}

/// The address a node advertises: `[federation] advertise`, else `bound`.
pub fn advertised_address(config: &Config, bound: &str) -> String {
    config.federation.advertise.clone().unwrap_or_else(|| bound.to_string())
}

/// Writes `value` as pretty JSON to `path` atomically: a temporary file beside it, then a
/// rename, so a reader never sees half a file (descriptor and status files).
pub fn write_json_atomic<T: serde::Serialize>(value: &T, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        "0.0.0.0:7001".parse().unwrap()
    }

    fn as_table(c: &Config) -> toml::Table {
        toml::Table::try_from(c).unwrap()
    }

    fn keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in t {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(sub) => keys(&path, sub, out),
                _ => out.push(path),
            }
        }
    }

    #[test]
    fn the_template_parses_to_the_defaults() {
        let text = render_template(listen());
        let parsed = Config::parse(&text, Path::new("config.toml")).unwrap();
        let mut expected = Config::default();
        expected.transport.tcp.listen = listen();
        assert_eq!(as_table(&parsed), as_table(&expected));
    }

    #[test]
    fn the_template_writes_out_every_setting() {
        let text = render_template(listen());
        let written: toml::Table = toml::from_str(&text).unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        keys("", &as_table(&Config::default()), &mut want);
        // `[core.federation]` is left out of serialisation at its defaults (so scenario
        // hashes of the simulator do not change); the template writes it all out.
        let federation =
            toml::Table::try_from(nymstr_node_core::actors::federation::FederationConfig::default()).unwrap();
        keys("core.federation", &federation, &mut want);
        keys("", &written, &mut have);
        for k in &want {
            assert!(have.contains(k), "config.toml template lacks `{k}`");
        }
        // And every setting has a comment right above it or above its group.
        for line in text.lines().filter(|l| l.contains(" = ") && !l.starts_with('#')) {
            let key = line.split(" = ").next().unwrap();
            assert!(want.iter().any(|w| w.ends_with(key)), "unknown key `{key}` in the template");
        }
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let c = Config::parse("", Path::new("c")).unwrap();
        assert_eq!(as_table(&c), as_table(&Config::default()));
    }

    #[test]
    fn type_errors_name_key_and_line() {
        let text = render_template(listen()).replace("queue_depth_max = 1_000", "queue_depth_max = \"lots\"");
        let line = text.lines().position(|l| l.starts_with("queue_depth_max")).unwrap() + 1;
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains("`core.queue_depth_max`"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = render_template(listen()).replace("[core]\n", "[core]\nqueue_dept_max = 5\n");
        let line = text.lines().position(|l| l.starts_with("queue_dept_max")).unwrap() + 1;
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains(&format!("line {line}")) && err.contains("`core.queue_dept_max`"), "{err}");
    }

    #[test]
    fn range_errors_name_key_and_line() {
        let text = render_template(listen()).replace("sweep_every_us = 10_000_000", "sweep_every_us = 0");
        let line = text.lines().position(|l| l.starts_with("sweep_every_us")).unwrap() + 1;
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains(&format!("line {line}")) && err.contains("core.sweep_every_us"), "{err}");
        let text = render_template(listen()).replace("max_connections = 1024", "max_connections = 0");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("transport.tcp.max_connections") && err.contains("line"), "{err}");
        let err = Config::parse("[log]\nfilter = \"info,[[\"\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("log.filter") && err.contains("line 2"), "{err}");
    }

    #[cfg(not(feature = "nym"))]
    #[test]
    fn nym_without_the_feature_says_how_to_build_it() {
        let text = render_template(listen()).replace("kind = \"tcp\"", "kind = \"nym\"");
        let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
        assert!(err.contains("transport.kind") && err.contains("--features nym"), "{err}");
        // A [transport.nym] table alone is kept, not refused, while kind = "tcp".
        let text = format!("{}\n[transport.nym]\ngateway = \"x\"\n", render_template(listen()));
        Config::parse(&text, Path::new("c.toml")).unwrap();
    }

    #[test]
    fn init_writes_key_and_config_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        let report = init(&dir, listen()).unwrap();
        assert!(!report.kept_key);
        let key = NodeKey::load(&dir.key()).unwrap();
        assert_eq!(key.node_id(), report.node_id);
        assert_eq!(report.node_id.len(), 64);
        let config = Config::load_dir(&dir).unwrap();
        assert_eq!(config.transport.tcp.listen, listen());
        assert!(matches!(init(&dir, listen()), Err(InitError::Exists(_))));
        // A lost config.toml is rewritten, but the node keeps its identity.
        std::fs::remove_file(dir.config()).unwrap();
        let again = init(&dir, listen()).unwrap();
        assert!(again.kept_key);
        assert_eq!(again.node_id, report.node_id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.key()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is private");
        }
    }

    #[test]
    fn a_missing_directory_says_to_run_init() {
        let err = Config::load_dir(&DataDir::new("/nonexistent/nymstr")).unwrap_err().to_string();
        assert!(err.contains("nymstr-node init --dir /nonexistent/nymstr"), "{err}");
    }

    #[test]
    fn descriptor_json_round_trips_and_verifies() {
        let key = NodeKey::generate().unwrap();
        let config = Config::default();
        let d = sign_descriptor(&key, &config, "127.0.0.1:7001", 42);
        assert_eq!(d.node_id.to_hex(), key.node_id());
        let json = DescriptorJson::from_descriptor(&d);
        assert_eq!(json.to_descriptor().unwrap(), d);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("descriptor.json");
        json.write(&path).unwrap();
        assert_eq!(DescriptorJson::read(&path).unwrap(), d);
        let forged = DescriptorJson { address: "127.0.0.1:9".into(), ..json };
        assert!(forged.to_descriptor().is_err());
    }

    #[test]
    fn bootstrap_peers_are_written_into_the_template() {
        let text = render_template_with(listen(), &["127.0.0.1:7001".into(), "10.0.0.2:7000".into()]);
        let c = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(c.federation.bootstrap, vec!["127.0.0.1:7001".to_string(), "10.0.0.2:7000".to_string()]);
        assert!(c.federation.enabled);
        let text = text.replace("epoch_us = 30_000_000", "epoch_us = 5_000_000");
        assert_eq!(Config::parse(&text, Path::new("c.toml")).unwrap().core.federation.epoch_us, 5_000_000);
    }

    #[test]
    fn grouping_digits() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1_000");
        assert_eq!(grouped(86_400_000_000), "86_400_000_000");
    }
}
