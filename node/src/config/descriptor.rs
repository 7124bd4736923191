//! `descriptor.json`: the node's signed descriptor in readable form, how it is signed and
//! which address it advertises, and the atomic JSON writer it shares with `status.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::datadir::NodeKey;
use super::{Config, Role};

/// `descriptor.json`: a node's signed descriptor in readable form (`specs/testnet.md` §2).
/// Binary fields are lower-case hex; `address` is the address text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptorJson {
    pub node_id: String,
    pub key: String,
    pub address: String,
    pub roles: Vec<Role>,
    pub policy: String,
    pub epoch_us: u64,
    pub issued_at_us: u64,
    pub sig: String,
}

impl DescriptorJson {
    pub fn from_descriptor(d: &nymstr_proto::federation::NodeDescriptor) -> Self {
        let mut roles = Vec::new();
        if d.roles.discovery {
            roles.push(Role::Discovery);
        }
        if d.roles.group {
            roles.push(Role::Group);
        }
        Self {
            node_id: d.node_id.to_hex(),
            key: hex::encode(d.key),
            address: String::from_utf8_lossy(&d.address).into_owned(),
            roles,
            policy: d.policy.clone(),
            epoch_us: d.epoch_us,
            issued_at_us: d.issued_at_us,
            sig: hex::encode(d.sig.0),
        }
    }

    /// The descriptor, verified (derived id, bounds, signature).
    pub fn to_descriptor(&self) -> Result<nymstr_proto::federation::NodeDescriptor, String> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.key, &mut key).map_err(|e| format!("key: {e}"))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.sig, &mut sig).map_err(|e| format!("sig: {e}"))?;
        let node_id = nymstr_proto::federation::NodeId::from_hex(&self.node_id).ok_or("node_id: not 64 hex digits")?;
        let d = nymstr_proto::federation::NodeDescriptor {
            node_id,
            key,
            address: self.address.as_bytes().to_vec(),
            roles: nymstr_proto::federation::Roles {
                discovery: self.roles.contains(&Role::Discovery),
                group: self.roles.contains(&Role::Group),
            },
            policy: self.policy.clone(),
            epoch_us: self.epoch_us,
            issued_at_us: self.issued_at_us,
            sig: nymstr_proto::wire::Sig(sig),
        };
        nymstr_proto::federation::descriptor::verify(&d).map_err(|e| e.to_string())?;
        Ok(d)
    }

    /// Writes `path` atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_json_atomic(self, path)
    }

    /// Reads and verifies a descriptor file.
    pub fn read(path: &Path) -> Result<nymstr_proto::federation::NodeDescriptor, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json: Self = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        json.to_descriptor().map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Signs a fresh descriptor for the node in `config` with `key`, at `address`.
pub fn sign_descriptor(
    key: &NodeKey,
    config: &Config,
    address: &str,
    now_us: u64,
) -> nymstr_proto::federation::NodeDescriptor {
    let f = &config.core.federation;
    nymstr_proto::federation::descriptor::sign(
        key.signing_key(),
        address.as_bytes().to_vec(),
        config.federation.roles(),
        f.policy.clone(),
        f.epoch_us,
        now_us,
    )
}

/// The address a node advertises: `[federation] advertise`, else `bound`.
pub fn advertised_address(config: &Config, bound: &str) -> String {
    config.federation.advertise.clone().unwrap_or_else(|| bound.to_string())
}

/// Writes `value` as pretty JSON to `path` atomically: a temporary file beside it, then a
/// rename, so a reader never sees half a file (descriptor and status files).
pub fn write_json_atomic<T: serde::Serialize>(value: &T, path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
