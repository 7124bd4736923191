//! What the host chooses for a group member: its identity pieces (`MemberKeys`), the
//! timing and MLS settings (`GroupConfig`, `LifetimeMode`), and the derivation of the
//! core's two random streams from the host's seed.

use ed25519_dalek::SigningKey;
use nymstr_mls::DEFAULT_CIPHERSUITE;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{InstallationCert, PublicKey};
use openmls::prelude::Ciphersuite;
use serde::{Deserialize, Serialize};

/// Domain-separation labels deriving the core's two random streams from the host's seed.
pub const LABEL_SEED_PROVIDER: &str = "nymstr/v1/group-core/provider";
pub const LABEL_SEED_CORE: &str = "nymstr/v1/group-core/rng";

/// The member's identity pieces: its installation key (the MLS leaf signature key), the
/// installation's certificate and its username.
pub struct MemberKeys {
    pub installation: SigningKey,
    pub cert: InstallationCert,
    pub username: String,
}

impl MemberKeys {
    pub fn member_key(&self) -> PublicKey {
        self.installation.verifying_key().to_bytes()
    }
}

/// Leaf lifetimes: openmls checks them against the wall clock, which the simulator does
/// not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifetimeMode {
    /// `lifetime_from(now_s, valid_for_s)` (real clients).
    WallClock { valid_for_s: u64 },
    /// `unbounded_lifetime()` (the simulator, whose clock is virtual).
    Unbounded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// First retry of an unanswered request; doubles up to the max.
    pub retry_after_us: TimeUs,
    pub retry_after_max_us: TimeUs,
    /// A message reported `Missing` and not repaired within this is reported `Lost`.
    pub repair_timeout_us: TimeUs,
    /// A seq gap in pushes is fetched after waiting this long for the missing push.
    pub gap_wait_us: TimeUs,
    /// A subscribed group that heard nothing from its node for this long fetches from its
    /// next seq (a lost last push is otherwise only noticed with the next one).
    pub sync_every_us: TimeUs,
    /// Invite tokens expire after this long.
    pub invite_ttl_us: TimeUs,
    pub lifetime: LifetimeMode,
    pub ciphersuite: Ciphersuite,
    /// Past epochs whose message keys are kept (late and repaired messages decrypt).
    pub max_past_epochs: usize,
    /// How many generations behind a sender's newest a message may still decrypt
    /// (openmls' default of 5 is too few when retries reorder a sender's uploads).
    pub out_of_order_tolerance: u32,
    /// Message ids remembered per group (de-duplication, causal checks).
    pub seen_max: usize,
    /// Application uploads in flight per group (kept well within `out_of_order_tolerance`).
    pub uploads_in_flight_max: usize,
    /// Messages waiting to be sent, per group.
    pub outbox_max: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            retry_after_us: 10_000_000,
            retry_after_max_us: 60_000_000,
            repair_timeout_us: 60_000_000,
            gap_wait_us: 2_000_000,
            sync_every_us: 300_000_000,
            invite_ttl_us: 7 * 24 * 3600 * 1_000_000,
            lifetime: LifetimeMode::WallClock { valid_for_s: 28 * 24 * 3600 },
            ciphersuite: DEFAULT_CIPHERSUITE,
            max_past_epochs: 8,
            out_of_order_tolerance: 32,
            seen_max: 10_000,
            uploads_in_flight_max: 4,
            outbox_max: 1_000,
        }
    }
}

pub(super) fn seeds(seed: [u8; 32]) -> ([u8; 32], [u8; 32]) {
    (blake3::derive_key(LABEL_SEED_PROVIDER, &seed), blake3::derive_key(LABEL_SEED_CORE, &seed))
}
