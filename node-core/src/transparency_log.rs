//! A discovery node's transparency log (`specs/transparency.md` §6): the directory of its
//! users batched into epochs, a sparse Merkle tree of the directory per epoch, the Merkle
//! log of epoch heads, the signed head of every epoch and the cosignatures witnesses gave
//! it. Pure state over a [`Store`]; the federation actor decides when to seal.
//!
//! Crash safety: sealing writes the new head first, then the entries it covers, then
//! deletes them from the pending table. Any prefix of those writes recovers to the same
//! state, because recovery promotes every pending entry whose target epoch is already
//! covered by a stored head (the entry writes are idempotent).

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;

use crate::actors::{TimeUs, load};
use crate::store::{Store, StoreError, Table};
use nymstr_proto::codec;
use nymstr_proto::federation::merkle::{self, DirTree, LogTree};
use nymstr_proto::federation::{
    Cosignature, DirEntry, EpochLeaf, Hash, LookupProof, NodeId, Promise, SignedHead, TreeHead, evidence,
};

/// One sealed epoch: its head, the directory as of the head, and its cosignatures.
#[derive(Clone, Debug)]
struct Snapshot {
    head: SignedHead,
    tree: DirTree,
    entries: BTreeMap<String, DirEntry>,
    cosignatures: BTreeMap<NodeId, Cosignature>,
}

/// The node side of key transparency.
#[derive(Debug)]
pub struct TransparencyLog {
    node_id: NodeId,
    log: LogTree,
    /// The newest sealed epoch.
    current: Option<Snapshot>,
    /// The epoch before it, served while the newest collects cosignatures.
    previous: Option<Snapshot>,
    /// Mutations waiting for the next seal, by folded username.
    pending: BTreeMap<String, DirEntry>,
    /// The newest head was sealed over the sorted directory tree of wire version 1 (a store
    /// written before the sparse tree): proofs against it cannot be made, so the node seals
    /// a new epoch as it starts ([`TransparencyLog::sealed_under_old_tree`]).
    old_tree: bool,
    /// A leaf a misbehaving operator hides in every tree it seals (the simulator's
    /// `split_view` adversary, `specs/sim.md` §10): `(tree key, entry)`. Never set by an
    /// honest node; not persisted (such a node cannot recover its own log).
    hidden: Option<(String, DirEntry)>,
}

fn epoch_key(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

fn cosig_key(epoch: u64, witness: &NodeId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&epoch.to_be_bytes());
    k[8..].copy_from_slice(&witness.0);
    k
}

fn corrupt(table: Table, detail: &str) -> StoreError {
    StoreError::Corrupt { table: table.name(), detail: detail.to_string() }
}

impl TransparencyLog {
    /// Rebuilds the log from the store (see the module note on crash safety).
    pub fn recover<S: Store>(store: &mut S, node_id: NodeId) -> Result<Self, StoreError> {
        let mut log = LogTree::new();
        let mut heads = Vec::new();
        for (k, v) in store.scan_prefix(Table::KtHeads, &[])? {
            let head: SignedHead = codec::decode_record(&v).map_err(|_| corrupt(Table::KtHeads, "head"))?;
            let epoch = u64::from_be_bytes(k.as_slice().try_into().map_err(|_| corrupt(Table::KtHeads, "key"))?);
            if epoch != heads.len() as u64 || head.head.epoch != epoch {
                return Err(corrupt(Table::KtHeads, "epochs are not consecutive from 0"));
            }
            log.push(merkle::log_leaf_hash(&leaf_of(&head.head)));
            heads.push(head);
        }
        let latest_epoch = heads.last().map(|h| h.head.epoch);
        let mut entries: BTreeMap<String, DirEntry> = BTreeMap::new();
        for (k, v) in store.scan_prefix(Table::KtEntries, &[])? {
            let e: DirEntry = codec::decode_record(&v).map_err(|_| corrupt(Table::KtEntries, "entry"))?;
            let name = String::from_utf8(k).map_err(|_| corrupt(Table::KtEntries, "key"))?;
            entries.insert(name, e);
        }
        let mut pending = BTreeMap::new();
        for (k, v) in store.scan_prefix(Table::KtPending, &[])? {
            let e: DirEntry = codec::decode_record(&v).map_err(|_| corrupt(Table::KtPending, "entry"))?;
            let name = String::from_utf8(k.clone()).map_err(|_| corrupt(Table::KtPending, "key"))?;
            if latest_epoch.is_some_and(|l| e.epoch <= l) {
                // Sealed before a crash cut the seal's writes short: finish them.
                store.put(Table::KtEntries, &k, &v)?;
                store.delete(Table::KtPending, &k)?;
                entries.insert(name, e);
            } else {
                pending.insert(name, e);
            }
        }
        let mut me = Self { node_id, log, current: None, previous: None, pending, old_tree: false, hidden: None };
        if let Some(head) = heads.pop() {
            // Entries as of the latest head, and as of the one before (entries changed in
            // the latest epoch are taken back to their previous version where kept).
            let tree = tree_of(&entries);
            if tree.len() != head.head.dir_size {
                return Err(corrupt(Table::KtEntries, "directory does not match the latest head"));
            }
            if tree.root() != head.head.dir_root {
                if legacy_dir_root(&entries) != head.head.dir_root {
                    return Err(corrupt(Table::KtEntries, "directory does not match the latest head"));
                }
                me.old_tree = true;
            }
            let cosignatures = load_cosigs(store, head.head.epoch)?;
            me.current = Some(Snapshot { head, tree, entries, cosignatures });
        }
        Ok(me)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The newest head holds a root of the sorted tree of wire version 1: the host must seal
    /// a new epoch before serving proofs (`Federation::start` does).
    pub fn sealed_under_old_tree(&self) -> bool {
        self.old_tree
    }

    /// The newest sealed head, if any epoch was sealed.
    pub fn latest(&self) -> Option<&SignedHead> {
        self.current.as_ref().map(|s| &s.head)
    }

    /// Cosignatures collected for the newest head.
    pub fn latest_cosignatures(&self) -> Vec<Cosignature> {
        self.current.as_ref().map(|s| s.cosignatures.values().cloned().collect()).unwrap_or_default()
    }

    /// Epoch the next seal creates.
    pub fn next_epoch(&self) -> u64 {
        self.current.as_ref().map_or(0, |s| s.head.head.epoch + 1)
    }

    /// Head-log size (epochs sealed).
    pub fn log_size(&self) -> u64 {
        self.log.len()
    }

    /// Entries waiting for the next seal.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Directory entries as of the newest head.
    pub fn entries_len(&self) -> usize {
        self.current.as_ref().map_or(0, |s| s.entries.len())
    }

    /// The newest version of `username`'s entry, pending or sealed.
    pub fn newest_entry(&self, username: &str) -> Option<&DirEntry> {
        self.pending.get(username).or_else(|| self.current.as_ref().and_then(|s| s.entries.get(username)))
    }

    /// Stages a new version of `username`'s entry for the next epoch and returns the
    /// node's signed promise to include it by then. `make` receives the newest version (if
    /// any) and returns the new content; its `seq` and `epoch` are set here.
    pub fn stage<S: Store>(
        &mut self,
        store: &mut S,
        key: &SigningKey,
        username: &str,
        mut entry: DirEntry,
    ) -> Result<Promise, StoreError> {
        entry.seq = self.newest_entry(username).map_or(1, |e| e.seq + 1);
        entry.epoch = self.next_epoch();
        store.put(Table::KtPending, username.as_bytes(), &codec::encode(&entry))?;
        let promise =
            evidence::sign_promise(key, username.to_string(), merkle::entry_hash(&entry), entry.seq, entry.epoch);
        self.pending.insert(username.to_string(), entry);
        Ok(promise)
    }

    /// Seals the next epoch: applies every pending entry, signs the new head. The caller
    /// must not publish the head before the store's writes so far are durable.
    pub fn seal<S: Store>(&mut self, store: &mut S, key: &SigningKey, now: TimeUs) -> Result<SignedHead, StoreError> {
        let epoch = self.next_epoch();
        let mut entries = self.current.as_ref().map(|s| s.entries.clone()).unwrap_or_default();
        let pending = std::mem::take(&mut self.pending);
        for (name, e) in &pending {
            entries.insert(name.clone(), e.clone());
        }
        let tree = tree_with(&entries, self.hidden.as_ref());
        let leaf = EpochLeaf { epoch, dir_root: tree.root(), dir_size: tree.len() };
        self.log.push(merkle::log_leaf_hash(&leaf));
        let head = TreeHead {
            node_id: self.node_id,
            epoch,
            dir_root: leaf.dir_root,
            dir_size: leaf.dir_size,
            log_root: self.log.root_at(self.log.len()),
            issued_at_us: now,
        };
        let signed = evidence::sign_head(key, head);
        // Order matters for crash safety (module note): head, entries, pending deletes.
        store.put(Table::KtHeads, &epoch_key(epoch), &codec::encode(&signed))?;
        for (name, e) in &pending {
            store.put(Table::KtEntries, name.as_bytes(), &codec::encode(e))?;
        }
        for name in pending.keys() {
            store.delete(Table::KtPending, name.as_bytes())?;
        }
        let snap = Snapshot { head: signed.clone(), tree, entries, cosignatures: BTreeMap::new() };
        let previous = self.current.replace(snap);
        // A head over the old sorted tree is never served again: no proof fits its root.
        self.previous = if std::mem::take(&mut self.old_tree) { None } else { previous };
        Ok(signed)
    }

    /// Misbehaviour, for the simulator's adversaries only: from the next seal on, every
    /// tree also holds `entry` under `key` (see the `hidden` field).
    pub fn hide_leaf(&mut self, key: String, entry: DirEntry) {
        self.hidden = Some((key, entry));
    }

    /// Records a witness's cosignature of one of the two newest heads (already verified by
    /// the caller). Returns false if it is for neither.
    pub fn add_cosignature<S: Store>(&mut self, store: &mut S, cosig: Cosignature) -> Result<bool, StoreError> {
        for snap in [self.current.as_mut(), self.previous.as_mut()].into_iter().flatten() {
            if snap.head.head.epoch == cosig.epoch && evidence::head_hash(&snap.head.head) == cosig.head_hash {
                store.put(Table::KtCosigs, &cosig_key(cosig.epoch, &cosig.witness), &codec::encode(&cosig))?;
                snap.cosignatures.insert(cosig.witness, cosig);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The head lookups are answered from: the newest once it has `quorum` cosignatures or
    /// once `grace_us` has passed since it was issued, else the one before.
    fn served(&self, now: TimeUs, quorum: usize, grace_us: u64) -> Option<&Snapshot> {
        let current = self.current.as_ref()?;
        let ready = current.cosignatures.len() >= quorum
            || now >= current.head.head.issued_at_us.saturating_add(grace_us)
            || self.previous.is_none();
        if ready { Some(current) } else { self.previous.as_ref() }
    }

    /// The head (with its cosignatures) lookups are answered from now.
    pub fn served_head(&self, now: TimeUs, quorum: usize, grace_us: u64) -> Option<(SignedHead, Vec<Cosignature>)> {
        self.served(now, quorum, grace_us).map(|s| (s.head.clone(), s.cosignatures.values().cloned().collect()))
    }

    /// The head lookups are answered from now and the directory as of that head.
    pub fn served_view(
        &self,
        now: TimeUs,
        quorum: usize,
        grace_us: u64,
    ) -> Option<(&SignedHead, &BTreeMap<String, DirEntry>, Vec<Cosignature>)> {
        self.served(now, quorum, grace_us).map(|s| (&s.head, &s.entries, s.cosignatures.values().cloned().collect()))
    }

    /// A lookup proof for `username` (folded) from the served head, with a consistency
    /// proof from `from_log_size` when it is a size this log had (else none).
    pub fn lookup(
        &self,
        username: &str,
        from_log_size: u64,
        now: TimeUs,
        quorum: usize,
        grace_us: u64,
    ) -> Option<LookupProof> {
        let snap = self.served(now, quorum, grace_us)?;
        let size = snap.head.head.epoch + 1;
        let (from, consistency) = if from_log_size > 0 && from_log_size <= size {
            (from_log_size, self.log.consistency_proof(from_log_size, size))
        } else {
            (0, Vec::new())
        };
        let mut cosignatures: Vec<Cosignature> = snap.cosignatures.values().cloned().collect();
        cosignatures.truncate(nymstr_proto::federation::COSIGNATURES_MAX);
        Some(LookupProof {
            head: snap.head.clone(),
            cosignatures,
            entry: snap.entries.get(username).cloned(),
            dir_proof: snap.tree.prove(username.as_bytes()),
            from_log_size: from,
            consistency,
        })
    }

    /// Consistency proof between two sizes of the head log (for a witness).
    pub fn consistency(&self, old_size: u64, new_size: u64) -> Vec<Hash> {
        if old_size == 0 || old_size > new_size || new_size > self.log.len() {
            return Vec::new();
        }
        self.log.consistency_proof(old_size, new_size)
    }
}

fn leaf_of(h: &TreeHead) -> EpochLeaf {
    EpochLeaf { epoch: h.epoch, dir_root: h.dir_root, dir_size: h.dir_size }
}

/// The directory root as wire version 1 built it, to accept a store written before the
/// sparse tree (issue 10 item 4): leaves `hash(dir-leaf, u16_le(len(name)) || name ||
/// entry_hash)` sorted by name, in an RFC 6962 tree (split at the largest power of two below
/// the size) with `dir-node` interior hashes; `dir-empty` for no leaf.
fn legacy_dir_root(entries: &BTreeMap<String, DirEntry>) -> Hash {
    legacy_root_of(entries.iter().map(|(name, e)| (name.as_bytes(), merkle::entry_hash(e))))
}

/// [`legacy_dir_root`] of `(key, value hash)` pairs already sorted by key.
fn legacy_root_of<'a>(pairs: impl Iterator<Item = (&'a [u8], Hash)>) -> Hash {
    fn root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => merkle::dir_empty_root(),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                merkle::hash(merkle::LABEL_DIR_NODE, &[&root(&leaves[..k]), &root(&leaves[k..])])
            }
        }
    }
    let leaves: Vec<Hash> = pairs
        .map(|(key, value)| {
            let len = u16::try_from(key.len()).unwrap_or(u16::MAX).to_le_bytes();
            merkle::hash(merkle::LABEL_DIR_LEAF, &[&len, key, &value])
        })
        .collect();
    root(&leaves)
}

/// The directory tree of `entries` (keys: folded usernames; values: entry hashes).
pub fn tree_of(entries: &BTreeMap<String, DirEntry>) -> DirTree {
    tree_with(entries, None)
}

/// [`tree_of`] with one more leaf `(key, entry)`, as a misbehaving operator builds it.
pub fn tree_with(entries: &BTreeMap<String, DirEntry>, extra: Option<&(String, DirEntry)>) -> DirTree {
    DirTree::build(
        entries
            .iter()
            .chain(extra.map(|(k, e)| (k, e)))
            .map(|(k, e)| (k.as_bytes().to_vec(), merkle::entry_hash(e)))
            .collect(),
    )
}

fn load_cosigs<S: Store>(store: &S, epoch: u64) -> Result<BTreeMap<NodeId, Cosignature>, StoreError> {
    let mut out = BTreeMap::new();
    for (_, v) in store.scan_prefix(Table::KtCosigs, &epoch.to_be_bytes())? {
        let c: Cosignature = codec::decode_record(&v).map_err(|_| corrupt(Table::KtCosigs, "cosignature"))?;
        out.insert(c.witness, c);
    }
    Ok(out)
}

/// Reads the stored signed head of `epoch`.
pub fn stored_head<S: Store>(store: &S, epoch: u64) -> Result<Option<SignedHead>, StoreError> {
    load(store, Table::KtHeads, &epoch_key(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Roots the sorted directory tree of wire version 1 gave (`DirTree::build` at commit
    /// `2c6faac^`) for the first n of seven names, name i with value hash `[i + 1; 32]`.
    #[test]
    fn the_legacy_root_is_the_one_wire_version_1_sealed() {
        let names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"];
        let vectors = [
            (0, "363a0848d4e1a5a7e0155e06cf4dba35e5fd1a64da287228e60ec75eccf2b39a"),
            (1, "1113a7b61aa90810df16138c0ef66bc06982812cdf886bfb4897c10cf563f420"),
            (2, "e2647325659860e432ceb602caf89d48c77faa1f3c17e1565ebe8400f950372f"),
            (3, "cda931c7064947ea0e05b0eb54027e83c7b2e9ee1ba16e0de6a6f448e02e1bcc"),
            (5, "f08ffdd1f8e1d3585069164d9b7240e4e85009b69e3fb6cbf17b6071ab9848ab"),
            (7, "623f4fcf2dc23640e808d1e48ccffe5bcf1dd0ad47490224182b457aed67840b"),
        ];
        for (n, hex) in vectors {
            let root = legacy_root_of(names[..n].iter().enumerate().map(|(i, k)| (k.as_bytes(), [i as u8 + 1; 32])));
            let got: String = root.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, hex, "{n} leaves");
        }
    }
}
