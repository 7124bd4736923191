//! Group message synchronisation (missing-message detection, R1), SDS style: the plaintext
//! of every group application message (inside the MLS `PrivateMessage`) is a
//! [`SyncMessage`]: a Lamport timestamp, the sender's member key, a random message id,
//! the causal history (the last [`HISTORY_MAX`] messages the sender saw, with their log
//! positions), a rolling bloom filter of the message ids the sender received, and the
//! body. Normative text: `specs/sync.md`.
//!
//! The steward's log already totally orders and durably stores every message, so the
//! causal history is used to *detect* loss (a referenced message we never decrypted) and
//! the log to *repair* it (`GroupFetch` of the referenced seq). The bloom filter tells a
//! sender which of its own recent messages each peer has received (SDS acknowledgement).

use nymstr_proto::codec::{self, CodecError};
use nymstr_proto::wire::{MsgId, PublicKey};
use serde::{Deserialize, Serialize};

/// Version of the sync encoding (first field of every [`SyncMessage`]).
pub const SYNC_VERSION: u8 = 1;
/// Causal references one message carries.
pub const HISTORY_MAX: usize = 10;
/// Bloom filter size: 8192 bits (1 KiB).
pub const BLOOM_BITS: usize = 8192;
pub const BLOOM_BYTES: usize = BLOOM_BITS / 8;
/// Bit positions per id.
pub const BLOOM_HASHES: usize = 7;
/// Ids one filter covers: the last 512 message ids its owner received. With 8192 bits and
/// 7 positions the false-positive rate at 512 ids is (1 - e^(-7·512/8192))^7 ≈ 0.07 %.
pub const BLOOM_WINDOW: usize = 512;
/// Domain-separation label of the bloom filter's index hash.
pub const LABEL_BLOOM: &str = "nymstr/v1/group/sync-bloom";
/// Largest text body of one group message, in bytes (the upload must fit
/// `GROUP_MLS_BYTES_MAX` with the sync header and MLS framing).
pub const TEXT_BYTES_MAX: usize = 32 * 1024;

/// A message this sender saw, with its position in the group's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalRef {
    pub msg_id: MsgId,
    /// Member (installation signing) key of the message's sender.
    pub sender: PublicKey,
    /// The message's seq in the steward's log.
    pub seq: u64,
}

/// What a group application message says. Variant order is part of the format: append,
/// never reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncBody {
    /// A chat message (UTF-8).
    Text { text: String },
    /// The group's name and description (encrypted application state; the steward never
    /// sees it). Applied if `version` is at least the current one (ties: log order).
    SetMeta { name: String, description: String, version: u64 },
}

/// The plaintext of every group application message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMessage {
    /// [`SYNC_VERSION`].
    pub version: u8,
    pub lamport: u64,
    /// Must equal the signature key of the MLS sender's leaf (else the message is dropped).
    pub sender: PublicKey,
    pub msg_id: MsgId,
    #[serde(deserialize_with = "nymstr_proto::bounded::vec::<_, _, HISTORY_MAX>")]
    pub history: Vec<CausalRef>,
    /// Exactly [`BLOOM_BYTES`] bytes, or empty (no filter).
    #[serde(with = "serde_bytes")]
    pub bloom: Vec<u8>,
    pub body: SyncBody,
}

/// Why a plaintext is not a valid sync message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("unsupported sync version {0}")]
    Version(u8),
    #[error("bloom filter of {0} bytes")]
    BloomSize(usize),
}

impl SyncMessage {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<SyncMessage, SyncError> {
        let m: SyncMessage = codec::decode(bytes)?;
        if m.version != SYNC_VERSION {
            return Err(SyncError::Version(m.version));
        }
        if !m.bloom.is_empty() && m.bloom.len() != BLOOM_BYTES {
            return Err(SyncError::BloomSize(m.bloom.len()));
        }
        Ok(m)
    }

    /// The sender's filter, if it sent one.
    pub fn filter(&self) -> Option<BloomFilter> {
        BloomFilter::from_bytes(&self.bloom)
    }
}

/// A fixed-size bloom filter over message ids ([`BLOOM_BITS`] bits, [`BLOOM_HASHES`]
/// positions per id). Position `i` of an id is bits `16i..16i+13` (little-endian u16,
/// masked to 13 bits) of `blake3::derive_key(LABEL_BLOOM, msg_id)`; bit `b` is bit
/// `b % 8` of byte `b / 8`.
#[derive(Clone, PartialEq, Eq)]
pub struct BloomFilter {
    bits: Vec<u8>,
}

impl std::fmt::Debug for BloomFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ones: u32 = self.bits.iter().map(|b| b.count_ones()).sum();
        write!(f, "BloomFilter({ones} bits set)")
    }
}

impl Default for BloomFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl BloomFilter {
    pub fn new() -> Self {
        Self { bits: vec![0; BLOOM_BYTES] }
    }

    /// The filter over `ids`.
    pub fn from_ids<'a>(ids: impl IntoIterator<Item = &'a MsgId>) -> Self {
        let mut f = Self::new();
        for id in ids {
            f.insert(id);
        }
        f
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() == BLOOM_BYTES).then(|| Self { bits: bytes.to_vec() })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bits
    }

    pub fn insert(&mut self, id: &MsgId) {
        for b in positions(id) {
            self.bits[b / 8] |= 1 << (b % 8);
        }
    }

    /// True if `id` was (probably) inserted; false if it certainly was not.
    pub fn contains(&self, id: &MsgId) -> bool {
        positions(id).iter().all(|b| self.bits[b / 8] & (1 << (b % 8)) != 0)
    }
}

/// The [`BLOOM_HASHES`] bit positions of `id`.
pub fn positions(id: &MsgId) -> [usize; BLOOM_HASHES] {
    // `derive_key` = a keyed hasher from the label, then the input: keep the keyed hasher.
    static HASHER: std::sync::LazyLock<blake3::Hasher> =
        std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key(LABEL_BLOOM));
    let h: [u8; 32] = HASHER.clone().update(id).finalize().into();
    debug_assert_eq!(h, blake3::derive_key(LABEL_BLOOM, id));
    let mut out = [0usize; BLOOM_HASHES];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = usize::from(u16::from_le_bytes([h[2 * i], h[2 * i + 1]])) & (BLOOM_BITS - 1);
    }
    out
}

/// Expected false-positive rate of a filter holding `n` ids.
pub fn false_positive_rate(n: usize) -> f64 {
    let k = BLOOM_HASHES as f64;
    let m = BLOOM_BITS as f64;
    (1.0 - (-k * n as f64 / m).exp()).powf(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> MsgId {
        let mut m = [0u8; 16];
        m[..4].copy_from_slice(&n.to_le_bytes());
        m
    }

    #[test]
    fn inserted_ids_are_found_and_the_rate_holds() {
        let ids: Vec<MsgId> = (0..BLOOM_WINDOW as u32).map(id).collect();
        let f = BloomFilter::from_ids(&ids);
        assert!(ids.iter().all(|i| f.contains(i)));
        let fp = (100_000..200_000u32).filter(|n| f.contains(&id(*n))).count();
        // Expected ~0.07 % of 100,000 = ~70.
        assert!(fp < 200, "{fp} false positives");
        assert!(false_positive_rate(BLOOM_WINDOW) < 0.001);
    }

    #[test]
    fn sync_messages_round_trip_and_refuse_bad_filters() {
        let m = SyncMessage {
            version: SYNC_VERSION,
            lamport: 7,
            sender: [1; 32],
            msg_id: [2; 16],
            history: vec![CausalRef { msg_id: [3; 16], sender: [4; 32], seq: 9 }; HISTORY_MAX],
            bloom: BloomFilter::from_ids(&[[3; 16]]).into_bytes(),
            body: SyncBody::Text { text: "hi".into() },
        };
        let bytes = m.encode();
        assert_eq!(SyncMessage::decode(&bytes).unwrap(), m);
        assert!(bytes.len() < BLOOM_BYTES + HISTORY_MAX * 52 + 64, "{} bytes", bytes.len());
        let mut bad = m.clone();
        bad.bloom = vec![0; 10];
        assert_eq!(SyncMessage::decode(&bad.encode()), Err(SyncError::BloomSize(10)));
        let mut long = m.clone();
        long.history.push(long.history[0]);
        assert!(SyncMessage::decode(&long.encode()).is_err());
        let mut v = m;
        v.version = 2;
        assert_eq!(SyncMessage::decode(&v.encode()), Err(SyncError::Version(2)));
    }
}
