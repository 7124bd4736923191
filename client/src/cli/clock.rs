//! The CLI's only reads of the clocks and of OS entropy: the wall clock (`now_us`, the
//! cores' `now`), the monotonic clock (`monotonic`, `deadline_after`: when to wake and
//! give up) and the OS seed of every core. `client/clippy.toml` bans these reads anywhere
//! else in the crate.

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::time::Instant;

use crate::cli::error::CliError;
use nymstr_client_core::core::TimeUs;

/// Microseconds since the Unix epoch: the core's `now`.
// The client crate bans `SystemTime::now` (cores take time from their host). This is the
// host: the CLI's one wall-clock read.
#[allow(clippy::disallowed_methods)]
pub fn now_us() -> TimeUs {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as TimeUs)
}

/// The monotonic clock now (tokio's, which its timers use).
// The client crate bans `Instant::now` (cores take time from their host). This is the
// host: the CLI's one monotonic-clock read.
#[allow(clippy::disallowed_methods)]
pub fn monotonic() -> Instant {
    Instant::now()
}

/// The monotonic instant `d` from now.
pub fn deadline_after(d: Duration) -> Instant {
    monotonic() + d
}

/// 32 bytes of OS entropy: the seed of every core the CLI hosts.
// The client crate bans OS randomness (cores take a seed from their host). This is the
// host: the CLI's one draw of OS entropy.
#[allow(clippy::disallowed_methods)]
pub fn os_seed() -> Result<[u8; 32], CliError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| CliError::Usage(format!("no OS randomness available: {e}")))?;
    Ok(seed)
}

/// A ChaCha generator seeded from the OS.
pub fn os_rng() -> Result<ChaCha20Rng, CliError> {
    Ok(ChaCha20Rng::from_seed(os_seed()?))
}
