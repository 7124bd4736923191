//! The federation core's tunables ([`FederationConfig`], part of the node's configuration).
//! A leaf: it uses nothing of the actors, so the node configuration can hold it.

use serde::{Deserialize, Serialize};

/// Tunables of the federation core (part of [`NodeConfig`](crate::actors::NodeConfig)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Length of one transparency-log epoch: pending directory changes are sealed into a
    /// new signed head this often.
    pub epoch_us: u64,
    /// Peers each gossip item is pushed to (fork certificates go to every peer).
    pub gossip_fanout: usize,
    /// Peers asked to cosign each new head.
    pub witnesses_wanted: usize,
    /// Cosignatures the newest head needs before lookups are answered from it...
    pub serve_quorum: usize,
    /// ...or this long after it was issued, whichever comes first.
    pub serve_grace_us: u64,
    /// How long a forwarded lookup or DM waits for the remote node before the client is
    /// told `Unreachable`.
    pub forward_timeout_us: u64,
    /// Period of the peering retry: unanswered hellos to known nodes are sent again.
    pub peer_retry_us: u64,
    /// Authenticated peers kept; hellos beyond this are refused.
    pub peers_max: usize,
    /// Gossip item hashes remembered for de-duplication.
    pub gossip_seen_max: usize,
    /// Heads remembered per other node (by epoch) to detect equivocation.
    pub heads_kept_per_node: usize,
    /// The trust policy text announced in the descriptor.
    pub policy: String,
}

impl FederationConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            epoch_us: 30_000_000,
            gossip_fanout: 3,
            witnesses_wanted: 5,
            serve_quorum: 3,
            serve_grace_us: 10_000_000,
            forward_timeout_us: 20_000_000,
            peer_retry_us: 30_000_000,
            peers_max: 64,
            gossip_seen_max: 8_192,
            heads_kept_per_node: 64,
            policy: "witness-quorum:3".to_string(),
        }
    }
}
