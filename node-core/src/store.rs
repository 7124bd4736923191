//! Storage: the `Store` trait the actor cores write through, and its in-memory
//! implementation with crash semantics (the simulator's disk). `sled` comes with the node.
//!
//! Durability contract (sled's): a write is durable only once a flush that started after
//! it has completed. [`Store::write_seq`] numbers writes so a host can release exactly the
//! acknowledgements whose writes a completed flush covered.

use std::collections::BTreeMap;

/// Tables (sled trees). Keys and values are opaque bytes encoded by the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// username -> Account
    Accounts,
    /// installation id -> username
    Installations,
    /// nonce -> PendingChallenge
    Challenges,
    /// installation id -> sender tag
    Bindings,
    /// installation id || delivery id (u64 BE) -> QueuedDm
    Queues,
    /// sender installation id || msg id -> expiry (dedupe of retried sends)
    SeenSends,
    /// expiry minute (u64 BE) || sender installation id || msg id -> () (sweep index)
    SeenExpiry,
    /// fixed keys -> counters
    Meta,
    /// group id -> GroupRecord (steward: current GroupInfo, epoch start, advert)
    Groups,
    /// group id || openmls storage key -> value (the public group's MemoryStorage records)
    GroupMls,
    /// group id || seq (u64 BE) -> GroupEntry (the group's log)
    GroupLog,
    /// group id || seq (u64 BE) -> SeqIndex (kind and upload id of each log entry)
    GroupSeqs,
    /// group id || upload id -> UploadRecord (dedupe of retried uploads)
    GroupUploads,
    /// group id || sender tag -> member key (subscriptions)
    GroupSubs,
    /// nonce -> PendingSubscribe (group subscribe challenges; never flushed on purpose)
    GroupChallenges,
    /// group id || invite token id -> token expiry (redeemed invites)
    GroupInvites,
    /// epoch (u64 BE) -> SignedHead (this node's transparency log)
    KtHeads,
    /// folded username -> DirEntry (the directory as of the latest head)
    KtEntries,
    /// folded username -> DirEntry (staged for the next epoch)
    KtPending,
    /// epoch (u64 BE) || witness node id -> Cosignature
    KtCosigs,
    /// node id -> PeerRecord (known node descriptors and peering state)
    FedPeers,
    /// federation state, one row per item: `whead/` || node id || epoch -> (time, SignedHead)
    /// (the witness view), `fork/` || node id -> ForkCertificate, `wsize/` || node id -> (u64,
    /// time) (per-witness sizes; a bare u64 in the earlier layout)
    FedState,
}

impl Table {
    pub const ALL: [Table; 22] = [
        Table::Accounts,
        Table::Installations,
        Table::Challenges,
        Table::Bindings,
        Table::Queues,
        Table::SeenSends,
        Table::SeenExpiry,
        Table::Meta,
        Table::Groups,
        Table::GroupMls,
        Table::GroupLog,
        Table::GroupSeqs,
        Table::GroupUploads,
        Table::GroupSubs,
        Table::GroupChallenges,
        Table::GroupInvites,
        Table::KtHeads,
        Table::KtEntries,
        Table::KtPending,
        Table::KtCosigs,
        Table::FedPeers,
        Table::FedState,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Accounts => "accounts",
            Table::Installations => "installations",
            Table::Challenges => "challenges",
            Table::Bindings => "bindings",
            Table::Queues => "queues",
            Table::SeenSends => "seen_sends",
            Table::SeenExpiry => "seen_expiry",
            Table::Meta => "meta",
            Table::Groups => "groups",
            Table::GroupMls => "group_mls",
            Table::GroupLog => "group_log",
            Table::GroupSeqs => "group_seqs",
            Table::GroupUploads => "group_uploads",
            Table::GroupSubs => "group_subs",
            Table::GroupChallenges => "group_challenges",
            Table::GroupInvites => "group_invites",
            Table::KtHeads => "kt_heads",
            Table::KtEntries => "kt_entries",
            Table::KtPending => "kt_pending",
            Table::KtCosigs => "kt_cosigs",
            Table::FedPeers => "fed_peers",
            Table::FedState => "fed_state",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("stored record in {table} is corrupt: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Where a page of [`Store::scan_page`] starts: just after the cursor, or at the prefix
/// when there is no cursor or it sorts before the prefix.
pub fn page_start(prefix: &[u8], after: Option<&[u8]>) -> std::ops::Bound<Vec<u8>> {
    match after {
        Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_vec()),
        _ => std::ops::Bound::Included(prefix.to_vec()),
    }
}

pub trait Store {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
    /// All pairs whose key starts with `prefix`, in key order. For start-up recovery and
    /// tables whose size is bounded by a limit; a hot path pages with [`Store::scan_page`].
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<KvPairs, StoreError>;
    /// At most `limit` pairs whose key starts with `prefix` and sorts after `after` (from
    /// the first when `None`), in key order: one page of a bounded scan.
    fn scan_page(&self, table: Table, prefix: &[u8], after: Option<&[u8]>, limit: usize)
    -> Result<KvPairs, StoreError>;
    /// Number of writes (puts and deletes) issued so far.
    fn write_seq(&self) -> u64;
    /// Number of writes known durable.
    fn durable_seq(&self) -> u64;
    /// Makes every write issued so far durable, blocking the caller (shutdown, tests).
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Records that a flush which started when `write_seq()` was `mark` has completed:
    /// every write numbered up to `mark` is durable. This is the non-blocking half of the
    /// contract: the host starts the flush its own way (sled's `flush_async`, a modelled
    /// latency) and reports here when it is done; [`crate::outbox::Outbox`] calls it.
    /// Never moves `durable_seq` backwards or past `write_seq`.
    fn complete_flush(&mut self, mark: u64);
}

#[derive(Clone, Debug)]
enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
}

type Tables = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// In-memory store with explicit durability: reads see every write, a crash keeps only
/// what was flushed.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// The state as readers see it (durable + pending).
    live: Tables,
    /// The state that survives a crash.
    durable: Tables,
    /// Writes not yet durable, with their sequence numbers.
    pending: Vec<(u64, Op)>,
    write_seq: u64,
    durable_seq: u64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes durable every write numbered up to `seq` (a flush that started at `seq`).
    pub fn flush_upto(&mut self, seq: u64) {
        let split = self.pending.partition_point(|(s, _)| *s <= seq);
        for (_, op) in self.pending.drain(..split) {
            apply(&mut self.durable, op);
        }
        self.durable_seq = self.durable_seq.max(seq.min(self.write_seq));
    }

    /// Simulates a power loss: every write not yet durable is gone.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.live = self.durable.clone();
        self.write_seq = self.durable_seq;
    }

    /// Iterates every stored value of every table (for the simulator's privacy oracle).
    pub fn all_values(&self) -> impl Iterator<Item = (Table, &[u8], &[u8])> {
        self.live.iter().flat_map(|(t, m)| m.iter().map(move |(k, v)| (*t, k.as_slice(), v.as_slice())))
    }

    pub fn len(&self, table: Table) -> usize {
        self.live.get(&table).map_or(0, BTreeMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.live.values().all(BTreeMap::is_empty)
    }

    fn record(&mut self, op: Op) {
        self.write_seq += 1;
        apply(&mut self.live, op.clone());
        self.pending.push((self.write_seq, op));
    }
}

fn apply(tables: &mut Tables, op: Op) {
    match op {
        Op::Put(t, k, v) => {
            tables.entry(t).or_default().insert(k, v);
        }
        Op::Delete(t, k) => {
            if let Some(m) = tables.get_mut(&t) {
                m.remove(&k);
            }
        }
    }
}

impl Store for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.live.get(&table).and_then(|m| m.get(key)).cloned())
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.record(Op::Put(table, key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.record(Op::Delete(table, key.to_vec()));
        Ok(())
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<KvPairs, StoreError> {
        let Some(m) = self.live.get(&table) else { return Ok(Vec::new()) };
        Ok(m.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        let Some(m) = self.live.get(&table) else { return Ok(Vec::new()) };
        Ok(m.range((page_start(prefix, after), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write_seq(&self) -> u64 {
        self.write_seq
    }

    fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.flush_upto(self.write_seq);
        Ok(())
    }

    fn complete_flush(&mut self, mark: u64) {
        self.flush_upto(mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_flushed_writes() {
        let mut s = MemStore::new();
        s.put(Table::Meta, b"a", b"1").unwrap();
        let mark = s.write_seq();
        s.put(Table::Meta, b"b", b"2").unwrap();
        s.flush_upto(mark);
        s.delete(Table::Meta, b"a").unwrap();
        assert_eq!(s.get(Table::Meta, b"a").unwrap(), None);
        s.crash();
        assert_eq!(s.get(Table::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(Table::Meta, b"b").unwrap(), None);
        assert_eq!(s.write_seq(), s.durable_seq());
    }

    #[test]
    fn scan_prefix_is_ordered_and_bounded() {
        let mut s = MemStore::new();
        for k in [b"ab2", b"ab1", b"ac0", b"aa9"] {
            s.put(Table::Queues, k, b"").unwrap();
        }
        let keys: Vec<_> = s.scan_prefix(Table::Queues, b"ab").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"ab1".to_vec(), b"ab2".to_vec()]);
    }

    #[test]
    fn scan_page_pages_in_key_order_within_the_prefix() {
        let mut s = MemStore::new();
        for k in [b"ab3", b"ab2", b"ab1", b"ac0", b"aa9"] {
            s.put(Table::Queues, k, b"").unwrap();
        }
        let keys = |pairs: KvPairs| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(s.scan_page(Table::Queues, b"ab", None, 2).unwrap()), vec![b"ab1".to_vec(), b"ab2".to_vec()]);
        assert_eq!(keys(s.scan_page(Table::Queues, b"ab", Some(b"ab2"), 2).unwrap()), vec![b"ab3".to_vec()]);
        assert!(s.scan_page(Table::Queues, b"ab", Some(b"ab3"), 2).unwrap().is_empty());
        // A cursor before the prefix starts at the prefix; one past it yields nothing.
        assert_eq!(keys(s.scan_page(Table::Queues, b"ab", Some(b"a"), 1).unwrap()), vec![b"ab1".to_vec()]);
        assert!(s.scan_page(Table::Queues, b"ab", Some(b"b"), 9).unwrap().is_empty());
        assert!(s.scan_page(Table::Queues, b"ab", None, 0).unwrap().is_empty());
    }
}
