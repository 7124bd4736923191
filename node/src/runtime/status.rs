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
}

pub const RUNNING: &str = "running";
pub const STOPPED: &str = "stopped";

impl Status {
    /// Writes the snapshot to `path` atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
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
        };
        s.write(&path).unwrap();
        assert_eq!(Status::read(&path).unwrap(), s);
        assert!(!path.with_extension("json.tmp").exists());
    }
}
