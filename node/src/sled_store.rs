//! `SledStore`: the real node's [`Store`], on sled 0.34 (one tree per [`Table`]).
//!
//! Durability follows the contract of `store.rs` and `specs/registry.md` §8: every put and
//! delete increments [`Store::write_seq`]; [`Store::durable_seq`] advances only when a
//! flush that started after those writes has completed. Two ways to flush:
//!
//! * [`Store::flush`] blocks the calling thread (shutdown, tests);
//! * the host's group commit, which never blocks its thread: record
//!   `mark = store.write_seq()`, await [`SledFlusher::flush`] (sled runs the fsync on its
//!   own thread pool), then call [`Store::complete_flush`]`(mark)` (the `Outbox` does). Writes issued while
//!   the flush was in flight are not claimed: they wait for the next flush.
//!
//! The store also keeps an exact record count per table (sled reports whether an insert
//! replaced a key and whether a remove found one), so `nymstr-node info` and the status
//! file cost nothing to produce.

use std::path::{Path, PathBuf};

use nymstr_node_core::store::{KvPairs, Store, StoreError, Table, page_start};

/// How to open the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledOptions {
    /// Upper bound of sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self { cache_capacity_bytes: 256 * 1024 * 1024 }
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SledOpenError {
    /// Another process (normally a running node) holds the database's lock.
    #[error("the database at {path} is locked by another process (is the node running?)")]
    Locked { path: PathBuf },
    #[error("cannot open the database at {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("the database at {path} is unreadable: {source}")]
    Corrupt { path: PathBuf, source: StoreError },
}

/// A sled database with one tree per table.
pub struct SledStore {
    db: sled::Db,
    trees: [sled::Tree; Table::ALL.len()],
    counts: [u64; Table::ALL.len()],
    write_seq: u64,
    durable_seq: u64,
}

/// A handle that flushes the database from another task, without borrowing the store.
#[derive(Clone)]
pub struct SledFlusher {
    db: sled::Db,
}

impl SledFlusher {
    /// Makes every write issued before this call durable. The fsync runs on sled's own
    /// thread pool: awaiting this does not block the caller's thread.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map(drop).map_err(io)
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn index(table: Table) -> usize {
    Table::ALL.iter().position(|t| *t == table).expect("Table::ALL lists every table")
}

impl SledStore {
    /// Opens (or creates) the database in directory `path`.
    pub fn open(path: &Path, options: &SledOptions) -> Result<Self, SledOpenError> {
        let db = sled::Config::new().path(path).cache_capacity(options.cache_capacity_bytes).open().map_err(|e| {
            let detail = e.to_string();
            // sled reports its fs2 lock failure as an `Io(Other)` with this text.
            if detail.contains("could not acquire lock") {
                SledOpenError::Locked { path: path.to_path_buf() }
            } else {
                SledOpenError::Open { path: path.to_path_buf(), detail }
            }
        })?;
        let open_tree = |t: Table| {
            db.open_tree(t.name()).map_err(|e| SledOpenError::Open { path: path.to_path_buf(), detail: e.to_string() })
        };
        let mut opened = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            opened.push(open_tree(t)?);
        }
        let trees: [sled::Tree; Table::ALL.len()] = match opened.try_into() {
            Ok(trees) => trees,
            Err(_) => unreachable!("one tree per table"),
        };
        let mut counts = [0u64; Table::ALL.len()];
        for (count, tree) in counts.iter_mut().zip(&trees) {
            // `Tree::len` walks the tree once; after this the counts are kept exactly.
            let mut n = 0u64;
            for item in tree.iter().keys() {
                item.map_err(|e| SledOpenError::Corrupt { path: path.to_path_buf(), source: io(e) })?;
                n += 1;
            }
            *count = n;
        }
        Ok(Self { db, trees, counts, write_seq: 0, durable_seq: 0 })
    }

    /// A handle for the host's asynchronous group commit.
    pub fn flusher(&self) -> SledFlusher {
        SledFlusher { db: self.db.clone() }
    }

    /// Records currently held in `table`.
    pub fn count(&self, table: Table) -> u64 {
        self.counts[index(table)]
    }

    /// Bytes the database occupies on disk, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(io)
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[index(table)]
    }
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(table).get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let old = self.tree(table).insert(key, value).map_err(io)?;
        self.write_seq += 1;
        if old.is_none() {
            self.counts[index(table)] += 1;
        }
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        let old = self.tree(table).remove(key).map_err(io)?;
        self.write_seq += 1;
        if old.is_some() {
            let c = &mut self.counts[index(table)];
            *c = c.saturating_sub(1);
        }
        Ok(())
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<KvPairs, StoreError> {
        self.tree(table).scan_prefix(prefix).map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)).collect()
    }

    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<KvPairs, StoreError> {
        self.tree(table)
            .range::<Vec<u8>, _>((page_start(prefix, after), std::ops::Bound::Unbounded))
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    fn write_seq(&self) -> u64 {
        self.write_seq
    }

    fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let mark = self.write_seq;
        self.db.flush().map_err(io)?;
        self.complete_flush(mark);
        Ok(())
    }

    fn complete_flush(&mut self, mark: u64) {
        self.durable_seq = self.durable_seq.max(mark.min(self.write_seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SledStore {
        SledStore::open(dir, &SledOptions::default()).expect("opens")
    }

    #[test]
    fn reopen_after_drop_sees_flushed_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path());
            s.put(Table::Accounts, b"alice", b"1").unwrap();
            s.put(Table::Queues, b"q1", b"m").unwrap();
            s.put(Table::Queues, b"q2", b"m").unwrap();
            s.delete(Table::Queues, b"q1").unwrap();
            assert_eq!(s.write_seq(), 4);
            assert_eq!(s.durable_seq(), 0);
            s.flush().unwrap();
            assert_eq!(s.durable_seq(), 4);
        }
        let s = open(dir.path());
        assert_eq!(s.get(Table::Accounts, b"alice").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(Table::Queues, b"q1").unwrap(), None);
        assert_eq!(s.get(Table::Queues, b"q2").unwrap(), Some(b"m".to_vec()));
        assert_eq!(s.count(Table::Queues), 1);
        assert_eq!(s.count(Table::Accounts), 1);
        // A fresh handle starts its sequence at zero: everything on disk is durable.
        assert_eq!((s.write_seq(), s.durable_seq()), (0, 0));
    }

    #[test]
    fn tables_are_separate_trees_and_scans_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        for k in [b"ab2", b"ab1", b"ac0", b"aa9"] {
            s.put(Table::Queues, k, b"").unwrap();
        }
        s.put(Table::Meta, b"ab0", b"other table").unwrap();
        let keys: Vec<_> = s.scan_prefix(Table::Queues, b"ab").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"ab1".to_vec(), b"ab2".to_vec()]);
        assert_eq!(s.scan_prefix(Table::Queues, b"").unwrap().len(), 4);
        let page: Vec<_> =
            s.scan_page(Table::Queues, b"ab", Some(b"a"), 1).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(page, vec![b"ab1".to_vec()]);
        let rest: Vec<_> =
            s.scan_page(Table::Queues, b"ab", Some(b"ab1"), 9).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(rest, vec![b"ab2".to_vec()]);
        assert_eq!(s.get(Table::Queues, b"ab0").unwrap(), None);
        let names: Vec<_> = s.db.tree_names().into_iter().map(|n| String::from_utf8(n.to_vec()).unwrap()).collect();
        for t in Table::ALL {
            assert!(names.iter().any(|n| n == t.name()), "tree {} exists", t.name());
        }
    }

    #[test]
    fn counts_follow_inserts_overwrites_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.put(Table::Accounts, b"a", b"1").unwrap();
        s.put(Table::Accounts, b"a", b"2").unwrap();
        s.put(Table::Accounts, b"b", b"1").unwrap();
        s.delete(Table::Accounts, b"missing").unwrap();
        assert_eq!(s.count(Table::Accounts), 2);
        s.delete(Table::Accounts, b"a").unwrap();
        assert_eq!(s.count(Table::Accounts), 1);
        assert_eq!(s.count(Table::Meta), 0);
        assert_eq!(s.write_seq(), 5, "every put and delete counts, even a no-op delete");
    }

    #[test]
    fn async_flush_claims_only_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.put(Table::Meta, b"a", b"1").unwrap();
        let mark = s.write_seq();
        let flusher = s.flusher();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(flusher.flush()).unwrap();
        s.put(Table::Meta, b"b", b"2").unwrap();
        s.complete_flush(mark);
        assert_eq!(s.durable_seq(), 1);
        assert_eq!(s.write_seq(), 2);
        s.complete_flush(0);
        assert_eq!(s.durable_seq(), 1, "never backwards");
        s.complete_flush(99);
        assert_eq!(s.durable_seq(), 2, "never past write_seq");
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open(dir.path());
        match SledStore::open(dir.path(), &SledOptions::default()) {
            Err(SledOpenError::Locked { .. }) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, opened twice"),
        }
    }
}
