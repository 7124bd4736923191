//! nymstr protocol: what every party must agree on, and nothing that does I/O.
//!
//! The wire (`wire`, `codec`, `framing`), the identity model and the exact bytes of every
//! signature (`identity`), every bound (`limits`), time units (`time`), and the pure part
//! of federation (`federation`: node identity and descriptors, the directory and head-log
//! Merkle proofs, signed heads and evidence, and the client's transparency verifier).
//!
//! Architecture invariant: no clock, OS randomness, socket, file, async runtime or
//! storage engine, in this crate or its dependency tree (`scripts/check-core-deps`).

pub mod bounded;
pub mod codec;
pub mod federation;
pub mod framing;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod time;
pub mod wire;
