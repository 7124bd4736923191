//! nymstr client core: identity, registration, login, lookups and end-to-end encrypted
//! direct messages, as a sans-IO state machine the simulator and the CLI both host.
//!
//! With the `cli` feature: the `nymstr` command-line client (`cli`), its TCP transport
//! (`net`) and its on-disk state (`persist`).

pub mod core;
pub mod group;
pub mod seal;
pub mod sync;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod net;
#[cfg(feature = "cli")]
pub mod persist;

pub use crate::core::{
    ClientConfig, ClientCore, ClientError, ClientState, Contact, DirectPeer, Event, Identity, Operation, Via,
};
