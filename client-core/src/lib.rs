//! nymstr client cores: identity, registration, login, lookups, end-to-end encrypted
//! direct messages and direct mode (`core`, `seal`), and the MLS group member (`group`,
//! `sync`), as sans-IO state machines the simulator, the CLI and the benches host.
//!
//! Architecture invariant: nothing here reads the clock or OS randomness, or touches a
//! socket or a file (`scripts/check-core-deps`).

pub mod core;
pub mod group;
pub mod seal;
pub mod sync;

pub use crate::core::{
    ClientConfig, ClientCore, ClientError, ClientState, Contact, DirectPeer, Event, Identity, Operation, Via,
};
