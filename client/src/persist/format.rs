//! How the home is stored: the format version, the errors reading it, and the two
//! encodings (`nymstr_proto::codec` for every record; bincode for the group records, which
//! have no size bound).

use std::path::PathBuf;

use nymstr_proto::codec;
use serde::{Serialize, de::DeserializeOwned};

/// 2: the transparency verifier is stored one row per item (tree `transparency`), not as
/// one record in `meta`; a home of format 1 is migrated when it opens.
/// 3: group message lines record how their sender was named (`GroupLineKind::Message`,
/// with `verified` and `account_key`); lines of format 2 stay readable
/// (`GroupLineKind::LegacyMessage`), so nothing is migrated.
pub(super) const FORMAT_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{0} is not initialised (no identity): run `nymstr init`")]
    NotInitialised(PathBuf),
    #[error("{0} already holds a nymstr identity; refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    #[error("{0} is in use by another nymstr process (is `nymstr listen` running?)")]
    Locked(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state database: {0}")]
    Db(String),
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("{path} was written by a newer nymstr (format {found}, this one reads {FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
}

impl From<sled::Error> for PersistError {
    fn from(e: sled::Error) -> Self {
        PersistError::Db(e.to_string())
    }
}

pub(super) type Result<T, E = PersistError> = std::result::Result<T, E>;

/// bincode for records without a size bound (local, trusted bytes).
const BIG_DECODE_BUDGET: usize = 256 * 1024 * 1024;

fn big_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<BIG_DECODE_BUDGET>,
> {
    bincode::config::standard().with_limit::<BIG_DECODE_BUDGET>()
}

pub(super) fn encode_big<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, big_config())
        .map_err(|e| PersistError::Corrupt { what: "group state", detail: e.to_string() })
}

pub(super) fn decode_big<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, big_config())
        .map_err(|e| PersistError::Corrupt { what, detail: e.to_string() })?;
    if used != bytes.len() {
        return Err(PersistError::Corrupt { what, detail: format!("{} trailing bytes", bytes.len() - used) });
    }
    Ok(value)
}

/// A local record: bounded by the codec's record limit, not the wire's frame limit.
pub(super) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    codec::decode_record(bytes).map_err(|e| PersistError::Corrupt { what, detail: e.to_string() })
}
