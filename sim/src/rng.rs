//! One master seed, one ChaCha stream per entity: adding a client or a node never shifts
//! the draws of another, so a change in one place does not perturb the whole run.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// Which entity a stream belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Mixnet,
    Workload,
    /// A node core; a restarted node gets a fresh stream per incarnation.
    Node {
        index: u32,
        incarnation: u32,
    },
    Client {
        index: u32,
    },
    /// The client's transport (addresses and sender tags).
    ClientTransport {
        index: u32,
    },
    /// Monte Carlo of the latency model, independent of the run.
    Expectation,
    /// A client's group member core (MLS randomness included).
    GroupMember {
        index: u32,
    },
    /// The group workload (who creates, joins, leaves, talks).
    GroupWorkload,
    /// A node's long-term identity key (the same in every incarnation).
    NodeKey {
        index: u32,
    },
    /// The federation workload (cross-node contacts, verification lookups) and the
    /// adversaries' choices.
    Federation,
    /// A flooding adversary's account (its client and member cores) and tags.
    Flood {
        adversary: u32,
        account: u32,
    },
}

pub fn stream(seed: u64, which: Stream) -> ChaCha20Rng {
    let (kind, a, b): (u8, u32, u32) = match which {
        Stream::Mixnet => (1, 0, 0),
        Stream::Workload => (2, 0, 0),
        Stream::Node { index, incarnation } => (3, index, incarnation),
        Stream::Client { index } => (4, index, 0),
        Stream::ClientTransport { index } => (5, index, 0),
        Stream::Expectation => (6, 0, 0),
        Stream::GroupMember { index } => (7, index, 0),
        Stream::GroupWorkload => (8, 0, 0),
        Stream::NodeKey { index } => (9, index, 0),
        Stream::Federation => (10, 0, 0),
        Stream::Flood { adversary, account } => (11, adversary, account),
    };
    let mut h = blake3::Hasher::new_derive_key("nymstr-sim/v1/rng-stream");
    h.update(&seed.to_le_bytes());
    h.update(&[kind]);
    h.update(&a.to_le_bytes());
    h.update(&b.to_le_bytes());
    ChaCha20Rng::from_seed(*h.finalize().as_bytes())
}

/// Uniform in [0, 1).
pub fn unit(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Exponentially distributed with the given mean (inverse transform sampling).
pub fn exp(rng: &mut impl Rng, mean: f64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    -mean * (1.0 - unit(rng)).ln()
}

/// Uniform integer in [0, n).
pub fn below(rng: &mut impl Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    // Lemire's multiply-shift: unbiased enough for workload choices (n << 2^64).
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

pub fn chance(rng: &mut impl Rng, p: f64) -> bool {
    p > 0.0 && unit(rng) < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_independent_and_reproducible() {
        let mut a = stream(7, Stream::Client { index: 1 });
        let mut b = stream(7, Stream::Client { index: 1 });
        let mut c = stream(7, Stream::Client { index: 2 });
        let x = a.next_u64();
        assert_eq!(x, b.next_u64());
        assert_ne!(x, c.next_u64());
    }

    #[test]
    fn exponential_mean_is_right() {
        let mut r = stream(1, Stream::Expectation);
        let n = 200_000;
        let mean: f64 = (0..n).map(|_| exp(&mut r, 50.0)).sum::<f64>() / n as f64;
        // Standard error is 50/sqrt(n) ~ 0.11.
        assert!((mean - 50.0).abs() < 0.6, "{mean}");
    }
}
