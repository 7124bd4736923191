//! The one codec module: every encode/decode of wire or stored bytes goes through here,
//! so the format (bincode 2, standard configuration) can be swapped in one place.
//!
//! Decoding arbitrary bytes never panics and never reserves memory on the word of a length
//! prefix: byte strings and strings go through bincode's limit check before allocation
//! (`serde_bytes` on every `Vec<u8>` field), and every other sequence is capped by its
//! protocol limit (`wire::bounded`). A test measures this with a counting allocator.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::{Serialize, de::DeserializeOwned};

use crate::limits::{FRAME_BYTES_MAX, RECORD_BYTES_MAX};
use crate::wire::{Envelope, WIRE_VERSION};

/// bincode's decode budget is an allocation guard, not the frame limit: it counts
/// in-memory sizes, which run slightly above wire sizes, so it is set to twice the frame
/// limit. The frame limit itself is checked on the wire bytes, exactly, before decoding.
const DECODE_BUDGET_BYTES: usize = 2 * FRAME_BYTES_MAX;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_BUDGET_BYTES>>;

fn config() -> Config {
    config::standard().with_limit::<DECODE_BUDGET_BYTES>()
}

/// The same budget rule for local records: twice the record limit.
const RECORD_DECODE_BUDGET_BYTES: usize = 2 * RECORD_BYTES_MAX;

type RecordConfig = Configuration<LittleEndian, Varint, Limit<RECORD_DECODE_BUDGET_BYTES>>;

fn record_config() -> RecordConfig {
    config::standard().with_limit::<RECORD_DECODE_BUDGET_BYTES>()
}

/// Why bytes could not be turned into a value (or a value into bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame is empty")]
    Empty,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Encodes a value with the project codec (no version byte): stored records, signed bytes.
/// Encoding to a `Vec` cannot fail for the plain data types of this crate (the limit is
/// enforced on decode, and on frames by [`encode_frame`]).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("plain data encodes")
}

/// Encodes a value, returning an error instead of panicking.
pub fn try_encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes a value, rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(CodecError::TooLarge { len: bytes.len(), max: FRAME_BYTES_MAX });
    }
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes a record read back from local storage (a node's store, a client's home),
/// rejecting trailing bytes. The same encoding as [`decode`], but bounded by
/// [`RECORD_BYTES_MAX`], not by the frame limit: a local record never crossed the wire,
/// and one that legitimately grew past 64 KiB is not corrupt. Stores still keep their
/// records small (one row per item); this limit only guards the allocation.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(CodecError::TooLarge { len: bytes.len(), max: RECORD_BYTES_MAX });
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, record_config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Encodes a frame: `WIRE_VERSION || bincode(envelope)`.
pub fn encode_frame(envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(WIRE_VERSION);
    let body = try_encode(envelope)?;
    out.extend_from_slice(&body);
    if out.len() > FRAME_BYTES_MAX {
        return Err(CodecError::TooLarge { len: out.len(), max: FRAME_BYTES_MAX });
    }
    Ok(out)
}

/// The request id of a frame that does not decode, when its first bytes still hold one,
/// so an error answer can name the request it refuses (0 otherwise).
pub fn peek_request_id(bytes: &[u8]) -> u64 {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) if bytes.len() <= FRAME_BYTES_MAX => {
            bincode::serde::decode_from_slice::<u64, _>(rest, config()).map_or(0, |(id, _)| id)
        }
        _ => 0,
    }
}

/// Decodes a frame, checking size and version before anything else.
pub fn decode_frame(bytes: &[u8]) -> Result<Envelope, CodecError> {
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(CodecError::TooLarge { len: bytes.len(), max: FRAME_BYTES_MAX });
    }
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != WIRE_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    decode(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Body, ErrorCode};
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let env = Envelope { request_id: 7, body: Body::Lookup { username: "alice".into() } };
        let bytes = encode_frame(&env).unwrap();
        assert_eq!(decode_frame(&bytes).unwrap(), env);
    }

    #[test]
    fn oversized_frame_is_rejected_before_decoding() {
        let bytes = vec![WIRE_VERSION; FRAME_BYTES_MAX + 1];
        assert_eq!(decode_frame(&bytes), Err(CodecError::TooLarge { len: FRAME_BYTES_MAX + 1, max: FRAME_BYTES_MAX }));
    }

    #[test]
    fn huge_length_prefix_is_rejected() {
        // Lookup (variant 7) with a username whose varint length claims 2^32 - 1 bytes
        // (0xfc: a u32 follows).
        let bytes = [WIRE_VERSION, 7, 7, 0xfc, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(decode_frame(&bytes), Err(CodecError::Malformed(_))));
        // AckDelivery (variant 12) declaring 1,000 ids, over ACK_IDS_MAX.
        let bytes = [WIRE_VERSION, 0, 12, 0xfb, 0xe8, 0x03];
        let err = decode_frame(&bytes).unwrap_err().to_string();
        assert!(err.contains("exceed the limit"), "{err}");
    }

    #[test]
    fn a_local_record_may_exceed_the_frame_limit() {
        let big = vec![7u8; FRAME_BYTES_MAX * 2];
        let bytes = encode(&serde_bytes::ByteBuf::from(big.clone()));
        assert!(matches!(decode::<serde_bytes::ByteBuf>(&bytes), Err(CodecError::TooLarge { .. })));
        assert_eq!(decode_record::<serde_bytes::ByteBuf>(&bytes).unwrap().into_vec(), big);
        let huge = vec![0u8; RECORD_BYTES_MAX + 1];
        assert!(matches!(decode_record::<u8>(&huge), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn unknown_version_and_empty_and_trailing() {
        assert_eq!(decode_frame(&[]), Err(CodecError::Empty));
        assert_eq!(decode_frame(&[9, 0, 0]), Err(CodecError::UnsupportedVersion(9)));
        let env = Envelope { request_id: 1, body: Body::Error { code: ErrorCode::Busy, detail: String::new() } };
        let mut bytes = encode_frame(&env).unwrap();
        bytes.push(0);
        assert_eq!(decode_frame(&bytes), Err(CodecError::Trailing(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn truncated_frames_are_errors(cut in 0usize..200, name in "[a-z]{3,20}", id in any::<u64>()) {
            let env = Envelope { request_id: id, body: Body::Lookup { username: name } };
            let bytes = encode_frame(&env).unwrap();
            let cut = cut % bytes.len();
            prop_assert!(decode_frame(&bytes[..cut]).is_err());
        }

        #[test]
        fn bit_flips_never_panic(flip in any::<usize>(), id in any::<u64>()) {
            let env = Envelope { request_id: id, body: Body::AckDelivery { delivery_ids: vec![1, 2, 3] } };
            let mut bytes = encode_frame(&env).unwrap();
            let i = flip % bytes.len();
            bytes[i] ^= 1 << (flip % 8);
            let _ = decode_frame(&bytes);
        }
    }
}
