//! The direct-message history: one entry per message sent or received, recorded once
//! (by direction, peer and message id), with its status and whether it was shown.

use nymstr_proto::codec;
use nymstr_proto::wire::MsgId;

use super::Home;
use super::format::{Result, decode};
use super::records::{Direction, HistoryEntry};

impl Home {
    fn history_key(direction: Direction, peer: &str, msg_id: &MsgId) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + peer.len() + 16);
        k.push(match direction {
            Direction::In => b'i',
            Direction::Out => b'o',
        });
        k.extend_from_slice(peer.as_bytes());
        k.push(0);
        k.extend_from_slice(msg_id);
        k
    }

    /// Appends a message unless the same (direction, peer, msg id) is already recorded
    /// (a crash between recording and acknowledging brings the message back). Returns
    /// the entry as stored. Not flushed: the caller's next save flushes.
    pub fn record(&self, mut entry: HistoryEntry) -> Result<HistoryEntry> {
        let key = Self::history_key(entry.direction, &entry.peer, &entry.msg_id);
        if let Some(seq) = self.history_ids.get(&key)?
            && let Some(existing) = self.history.get(&seq)?
        {
            return decode("history entry", &existing);
        }
        let seq = self.db.generate_id()?;
        entry.seq = seq;
        self.history.insert(seq.to_be_bytes(), codec::encode(&entry))?;
        self.history_ids.insert(key, &seq.to_be_bytes())?;
        Ok(entry)
    }

    /// Changes an outgoing message's status (and route); returns the updated entry.
    pub fn update_outgoing(
        &self,
        peer: &str,
        msg_id: &MsgId,
        update: impl FnOnce(&mut HistoryEntry),
    ) -> Result<Option<HistoryEntry>> {
        self.update(&Self::history_key(Direction::Out, peer, msg_id), update)
    }

    fn update(&self, key: &[u8], update: impl FnOnce(&mut HistoryEntry)) -> Result<Option<HistoryEntry>> {
        let Some(seq) = self.history_ids.get(key)? else { return Ok(None) };
        let Some(bytes) = self.history.get(&seq)? else { return Ok(None) };
        let mut entry: HistoryEntry = decode("history entry", &bytes)?;
        update(&mut entry);
        self.history.insert(seq, codec::encode(&entry))?;
        Ok(Some(entry))
    }

    pub fn mark_read(&self, entry: &HistoryEntry) -> Result<()> {
        self.update(&Self::history_key(entry.direction, &entry.peer, &entry.msg_id), |e| e.read = true)?;
        Ok(())
    }

    /// The last `limit` messages (optionally with one peer), oldest first.
    pub fn history(&self, peer: Option<&str>, limit: usize) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        for item in self.history.iter().rev() {
            let (_, v) = item?;
            let entry: HistoryEntry = decode("history entry", &v)?;
            if peer.is_none_or(|p| p == entry.peer) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Received messages not shown yet, oldest first.
    pub fn unread(&self) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        for item in self.history.iter() {
            let (_, v) = item?;
            let entry: HistoryEntry = decode("history entry", &v)?;
            if entry.direction == Direction::In && !entry.read {
                out.push(entry);
            }
        }
        Ok(out)
    }
}
