//! nymstr node: the wire, the identity model, storage and the sans-IO actor cores.
//!
//! Architecture invariant: nothing in this crate's `actors`, `wire`, `codec`, `identity`
//! or `store` modules touches the clock, OS randomness, a socket or the disk. Time,
//! randomness and storage are handed in by the host (the simulator or the real node).

pub mod actors;
pub mod codec;
pub mod identity;
pub mod limits;
pub mod store;
pub mod wire;

pub use actors::{NodeConfig, NodeCore, Output, Peer};
