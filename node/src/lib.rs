//! nymstr node: the real node process that hosts the node cores (`nymstr-node-core`) with
//! a real clock, OS entropy, sled storage and a transport.

/// The real node's configuration and data directory (`config.toml`, `node.key`).
pub mod config;
/// The real node process: the actix host of the core, signals, status file, logging.
pub mod runtime;
/// The real node's `Store`, on sled.
pub mod sled_store;
/// The real node's I/O: transports (tcp, nym).
pub mod transport;
