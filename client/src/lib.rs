//! nymstr client core: identity, registration, login, lookups and end-to-end encrypted
//! direct messages, as a sans-IO state machine the simulator and the CLI both host.

pub mod core;
pub mod seal;

pub use crate::core::{ClientConfig, ClientCore, ClientError, Contact, Event, Identity, Operation};
