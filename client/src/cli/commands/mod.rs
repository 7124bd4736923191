//! The direct-message and account commands, one function per command. Network commands
//! build a `Session`, state a `Goal`, and let the session drive the core until the goal
//! is met.

mod account;
mod dm;
mod listen;
mod witness;

pub use account::{contacts, init, lookup, register, status, trust};
pub use dm::{history, inbox, send};
pub use listen::listen;
pub use witness::{witness_add, witness_list};
