//! The `nymstr` command-line client: the host of the client cores (`nymstr-client-core`)
//! with a real clock, OS entropy, TCP to the nodes (`net`) and its state in sled
//! (`persist`).

pub mod cli;
pub mod net;
pub mod persist;
