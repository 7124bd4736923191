//! nymstr node: the wire, the identity model, storage and the sans-IO actor cores.
//!
//! Architecture invariant: nothing in this crate's `actors`, `wire`, `codec`, `identity`
//! or `store` modules touches the clock, OS randomness, a socket or the disk. Time,
//! randomness and storage are handed in by the host (the simulator or the real node).

pub mod actors;
pub mod codec;
pub mod federation;
pub mod framing;
pub mod identity;
pub mod limits;
pub mod mls;
pub mod store;
pub mod wire;

/// The real node's configuration and data directory (`config.toml`, `node.key`).
#[cfg(feature = "runtime")]
pub mod config;
/// The real node process: the actix host of the core, signals, status file, logging.
#[cfg(feature = "runtime")]
pub mod runtime;
/// The real node's `Store`, on sled.
#[cfg(feature = "runtime")]
pub mod sled_store;
/// The real node's I/O: transports (tcp, nym).
#[cfg(feature = "runtime")]
pub mod transport;

pub use actors::{NodeConfig, NodeCore, Output, Peer};
