//! nymstr node cores: the sans-IO state machines of a node's roles, the storage contract
//! they write through, and the outbox every host uses to release outputs only once
//! their writes are durable.
//!
//! Architecture invariant: nothing here reads the clock or OS randomness, or touches a
//! socket or a file; time, randomness and storage come from the host (the simulator or
//! the real node), and the dependency tree holds no async runtime or storage engine
//! (`scripts/check-core-deps`).

pub mod actors;
pub mod outbox;
pub mod store;
pub mod transparency_log;

pub use actors::{NodeConfig, NodeCore, Output, Peer};
