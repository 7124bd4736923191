//! `status.json`: what the running node tells `nymstr-node info` while it holds the
//! database lock. Rewritten atomically (temporary file, then rename) every
//! `status_every_secs` and once more at shutdown.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One snapshot of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// "running", or "stopped" after a graceful shutdown. A node killed without warning
    /// leaves "running" behind: `info` then finds the database unlocked and reads it.
    pub state: String,
    pub pid: u32,
    pub version: String,
    pub node_id: String,
    pub transport: String,
    pub address: String,
    pub started_at_us: u64,
    pub written_at_us: u64,
    pub accounts: u64,
    pub installations: u64,
    pub queued_messages: u64,
    /// Replies waiting for a flush at the time of writing.
    pub replies_held: u64,
    pub flushes: u64,
    /// The core's counters (`NodeStats`) since start.
    pub stats: serde_json::Value,
    /// The federation view (absent when `[federation] enabled = false`, and in files
    /// written by nodes that predate federation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationStatus>,
}

/// What a federated node tells `info` and `nymstr-testnet status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederationStatus {
    /// The node id (64 hex).
    pub node_id: String,
    /// The address in this node's descriptor (where peers dial it).
    pub address: String,
    /// Newest sealed epoch of this node's transparency log.
    pub epoch: Option<u64>,
    /// Directory entries under the newest head.
    pub dir_size: Option<u64>,
    /// Witnesses (node ids) whose cosignature on the newest head this node holds.
    pub cosignatures: Vec<String>,
    /// Authenticated peers.
    pub peers: Vec<PeerStatus>,
    /// Every other node whose descriptor this node holds (peered or not).
    pub known: Vec<PeerStatus>,
    /// Node ids this node holds a fork certificate against.
    pub forks: Vec<String>,
    /// The federation core's counters (`FederationStats`).
    pub stats: serde_json::Value,
}

/// One other node, as seen from here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: String,
    pub address: String,
    /// Newest epoch of its log seen here, with the cosignatures seen on it.
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub cosignatures: usize,
}

pub const RUNNING: &str = "running";
pub const STOPPED: &str = "stopped";

impl Status {
    /// Writes the snapshot to `path` atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::config::write_json_atomic(self, path)
    }

    pub fn read(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let s = Status {
            state: RUNNING.into(),
            pid: 7,
            version: "0.1.0".into(),
            node_id: "ab".into(),
            transport: "tcp".into(),
            address: "127.0.0.1:7000".into(),
            started_at_us: 1,
            written_at_us: 2,
            accounts: 3,
            installations: 4,
            queued_messages: 5,
            replies_held: 0,
            flushes: 9,
            stats: serde_json::json!({ "frames_in": 10 }),
            federation: Some(FederationStatus {
                node_id: "cd".into(),
                address: "127.0.0.1:7000".into(),
                epoch: Some(3),
                dir_size: Some(1),
                cosignatures: vec!["ef".into()],
                peers: vec![PeerStatus {
                    node_id: "ef".into(),
                    address: "127.0.0.1:7001".into(),
                    epoch: Some(2),
                    cosignatures: 1,
                }],
                known: vec![],
                forks: vec![],
                stats: serde_json::json!({}),
            }),
        };
        s.write(&path).unwrap();
        assert_eq!(Status::read(&path).unwrap(), s);
        assert!(!path.with_extension("json.tmp").exists());
        // A file without the federation view still reads.
        let mut v = serde_json::to_value(&s).unwrap();
        v.as_object_mut().unwrap().remove("federation");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(Status::read(&path).unwrap().federation, None);
    }
}
