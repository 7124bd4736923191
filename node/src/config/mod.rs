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
//!
//! Files: this one holds the `config.toml` types and `ConfigError`; `load` reads,
//! parses and range-checks a file; `template` renders the commented file `init` writes;
//! `datadir` holds the directory layout, the node key and `init`; `descriptor` the
//! `descriptor.json` file. Everything public is re-exported here (`config::...`).

mod datadir;
mod descriptor;
mod load;
mod template;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sled_store::SledOptions;
use crate::transport::tcp::TcpConfig;
use nymstr_node_core::actors::NodeConfig;

pub use datadir::{
    CONFIG_FILE, DB_DIR, DESCRIPTOR_FILE, DataDir, InitError, InitReport, KEY_FILE, NodeKey, STATUS_FILE, init,
    init_with, node_id,
};
pub use descriptor::{DescriptorJson, advertised_address, sign_descriptor, write_json_atomic};
pub use template::{render_template, render_template_with};

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
