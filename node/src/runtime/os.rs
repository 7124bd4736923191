//! The only places the real node reads a clock or the OS random generator.
//!
//! The actor cores are sans-IO (see `ARCHITECTURE.md`): the host hands them time and a
//! seeded generator. `now_us` and `os_random` are that host's sources; `monotonic` is the
//! transports' clock for deadlines, rate buckets and back-off (never handed to a core).
//! `node/clippy.toml` bans the underlying calls everywhere else in the crate.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Microseconds since the Unix epoch, from the system clock (0 if the clock is set
/// before 1970, which no core treats specially).
// The host is the one place that may read the clock: the cores take `now` from here.
#[allow(clippy::disallowed_methods)]
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The monotonic clock of the runtime (tokio's, so paused test time applies), for the
/// transports' deadlines, rate buckets and back-off.
#[allow(clippy::disallowed_methods)]
pub fn monotonic() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Fills `buf` from the operating system's random generator.
// The host is the one place that may read OS entropy: cores get a ChaCha seeded here.
#[allow(clippy::disallowed_methods)]
pub fn os_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// A ChaCha20 generator seeded from the operating system.
pub fn os_seeded_rng() -> Result<ChaCha20Rng, getrandom::Error> {
    let mut seed = [0u8; 32];
    os_random(&mut seed)?;
    Ok(ChaCha20Rng::from_seed(seed))
}
