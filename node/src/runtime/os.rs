//! The only places the real node reads the wall clock and the OS random generator.
//!
//! The actor cores are sans-IO (see `ARCHITECTURE.md`): the host hands them time and a
//! seeded generator. These two functions are that host's sources; `node/clippy.toml`
//! bans the underlying calls everywhere else in the crate.

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
