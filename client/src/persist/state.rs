//! The client state (`ClientState`), stored record by record in its trees: a save writes
//! only what changed since the last one, then flushes.

use std::collections::{BTreeMap, BTreeSet};

use nymstr_proto::codec;
use nymstr_proto::federation::NodeId;
use nymstr_proto::federation::verify::Verifier;
use nymstr_proto::wire::MsgId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::Home;
use super::format::{FORMAT_VERSION, PersistError, Result, decode};
use nymstr_client_core::core::{ClientState, Contact, DirectPeer, OutgoingDm, SeenLog};

/// The account as the CLI sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AccountMeta {
    username: Option<String>,
    registered: bool,
}

impl Home {
    /// The client state as last saved (identity included).
    pub fn state(&self) -> ClientState {
        let mut s = self.saved.clone();
        s.identity = Some(self.identity.clone());
        s
    }

    pub(super) fn read_state(&mut self) -> Result<ClientState> {
        let account: AccountMeta = match self.meta.get("account")? {
            Some(v) => decode("account", &v)?,
            None => AccountMeta::default(),
        };
        let contacts: BTreeMap<String, Contact> = read_map(&self.contacts, "contact", string_key)?;
        let pins: BTreeMap<u64, (String, [u8; 32])> = read_map(&self.pins, "pin", u64_key)?;
        let outgoing: BTreeMap<MsgId, OutgoingDm> = read_map(&self.outgoing, "outgoing message", msg_id_key)?;
        let direct: BTreeMap<String, DirectPeer> = read_map(&self.direct, "direct peer", string_key)?;
        let seen_map: BTreeMap<u64, ([u8; 32], MsgId)> = read_map(&self.seen, "seen id", u64_key)?;
        let first_seq = seen_map.keys().next().copied().unwrap_or(0);
        let contiguous = seen_map.keys().enumerate().all(|(i, k)| *k == first_seq + i as u64);
        let seen = SeenLog { first_seq, ids: seen_map.into_values().collect() };
        let mut state = ClientState {
            identity: None,
            username: account.username,
            registered: account.registered,
            contacts,
            pins,
            seen: seen.clone(),
            outgoing,
            direct,
            transparency: self.read_transparency()?,
            home_node: match self.meta.get("home_node")? {
                Some(v) => decode("home node", &v)?,
                None => None,
            },
        };
        if !contiguous {
            // Renumber a damaged log so later saves can append to it.
            self.seen.clear()?;
            for (i, id) in seen.ids.iter().enumerate() {
                self.seen.insert((first_seq + i as u64).to_be_bytes(), codec::encode(id))?;
            }
            state.seen = seen;
        }
        Ok(state)
    }

    /// Writes what changed since the last save, then flushes. Returns whether anything
    /// was written.
    pub fn save_state(&mut self, state: &ClientState) -> Result<bool> {
        let mut writes = 0usize;
        let account = AccountMeta { username: state.username.clone(), registered: state.registered };
        let saved_account = AccountMeta { username: self.saved.username.clone(), registered: self.saved.registered };
        if account != saved_account {
            self.meta.insert("account", codec::encode(&account))?;
            writes += 1;
        }
        writes += sync_map(&self.contacts, &self.saved.contacts, &state.contacts, |k| k.as_bytes().to_vec())?;
        writes += sync_map(&self.pins, &self.saved.pins, &state.pins, |k| k.to_be_bytes().to_vec())?;
        writes += sync_map(&self.outgoing, &self.saved.outgoing, &state.outgoing, |k| k.to_vec())?;
        writes += sync_map(&self.direct, &self.saved.direct, &state.direct, |k| k.as_bytes().to_vec())?;
        writes += self.sync_seen(&state.seen)?;
        if state.transparency != self.saved.transparency {
            writes +=
                sync_transparency(&self.transparency, self.saved.transparency.as_ref(), state.transparency.as_ref())?;
        }
        if state.home_node != self.saved.home_node {
            self.meta.insert("home_node", codec::encode(&state.home_node))?;
            writes += 1;
        }
        if writes > 0 {
            self.saved = ClientState { identity: None, ..state.clone() };
            self.flush()?;
        }
        Ok(writes > 0)
    }

    /// The seen log only grows at the back and shrinks at the front, so only its ends
    /// are written.
    fn sync_seen(&mut self, new: &SeenLog) -> Result<usize> {
        let old = &self.saved.seen;
        let (of, oe) = (old.first_seq, old.first_seq + old.ids.len() as u64);
        let (nf, ne) = (new.first_seq, new.first_seq + new.ids.len() as u64);
        // Expected: the front moved forward, the back did not shrink, and the overlap agrees.
        // Anything else (a state from elsewhere) rewrites the log.
        let consistent = nf >= of
            && ne >= oe
            && (nf.max(of)..oe.min(ne)).all(|s| old.ids[(s - of) as usize] == new.ids[(s - nf) as usize]);
        let mut batch = sled::Batch::default();
        let mut writes = 0;
        if !consistent {
            self.seen.clear()?;
            for (i, id) in new.ids.iter().enumerate() {
                batch.insert(&(nf + i as u64).to_be_bytes(), codec::encode(id));
            }
            writes += new.ids.len() + 1;
        } else {
            for s in of..oe.min(nf) {
                batch.remove(&s.to_be_bytes());
                writes += 1;
            }
            for s in oe.max(nf)..ne {
                batch.insert(&s.to_be_bytes(), codec::encode(&new.ids[(s - nf) as usize]));
                writes += 1;
            }
        }
        self.seen.apply_batch(batch)?;
        Ok(writes)
    }
}

impl Home {
    /// The transparency verifier from its rows. A home of format 1 holds it as one record
    /// in `meta` (`transparency`), which outgrew the codec's 64 KiB limit with ~850 pins:
    /// it is read once with the local-record limit, rewritten as rows, and removed.
    pub(super) fn read_transparency(&mut self) -> Result<Option<Verifier>> {
        if let Some(v) = self.meta.get(LEGACY_TRANSPARENCY)? {
            let legacy: Verifier = decode("transparency state", &v)?;
            self.transparency.clear()?;
            sync_transparency(&self.transparency, None, Some(&legacy))?;
            // Mark the home as the new format before the old record goes, in one flush: a
            // crash between the two must not leave a home an older nymstr opens as format 1
            // with no verifier (it would start over with no pins or heads).
            self.meta.insert("version", codec::encode(&FORMAT_VERSION))?;
            self.meta.remove(LEGACY_TRANSPARENCY)?;
            self.flush()?;
            return Ok(Some(legacy));
        }
        let mut policy = None;
        let mut nodes = BTreeMap::new();
        let mut witnesses = BTreeSet::new();
        let mut heads = BTreeMap::new();
        let mut pins = BTreeMap::new();
        let mut distrusted = BTreeMap::new();
        let bad = |detail: &str| PersistError::Corrupt { what: "transparency row", detail: detail.into() };
        for item in self.transparency.iter() {
            let (k, v) = item?;
            let (&kind, rest) = k.split_first().ok_or_else(|| bad("empty key"))?;
            let node =
                || rest.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()).map(NodeId).ok_or_else(|| bad("node id"));
            match kind {
                KT_POLICY => policy = Some(decode("trust policy", &v)?),
                KT_NODE => {
                    nodes.insert(node()?, decode("node key", &v)?);
                }
                KT_WITNESS => {
                    witnesses.insert(node()?);
                }
                KT_HEAD => {
                    heads.insert(node()?, decode("accepted head", &v)?);
                }
                KT_PIN => {
                    let node = node()?;
                    let name = String::from_utf8(rest[32..].to_vec()).map_err(|_| bad("pinned name"))?;
                    pins.insert((node, name), decode("pin", &v)?);
                }
                KT_DISTRUSTED => {
                    distrusted.insert(node()?, decode("fork certificate", &v)?);
                }
                _ => return Err(bad("unknown row kind")),
            }
        }
        Ok(policy.map(|p| Verifier::from_parts(p, nodes, witnesses, heads, pins, distrusted)))
    }
}

/// The record of the transparency verifier in `meta` in format 1 (now rows in `transparency`).
const LEGACY_TRANSPARENCY: &str = "transparency";
/// Row kinds of the `transparency` tree: the first key byte; node rows continue with the
/// node id, pins with the node id and the folded name.
const KT_POLICY: u8 = b'P';
const KT_NODE: u8 = b'n';
const KT_WITNESS: u8 = b'w';
const KT_HEAD: u8 = b'h';
const KT_PIN: u8 = b'p';
const KT_DISTRUSTED: u8 = b'd';

fn node_row(kind: u8, node: &NodeId) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(kind);
    k.extend_from_slice(&node.0);
    k
}

/// Makes the `transparency` tree hold `new`, given that it holds `old`: only the rows
/// that changed are written (a lookup changes a head and a pin, not the whole verifier).
fn sync_transparency(tree: &sled::Tree, old: Option<&Verifier>, new: Option<&Verifier>) -> Result<usize> {
    let Some(new) = new else {
        let had = !tree.is_empty();
        tree.clear()?;
        return Ok(usize::from(had));
    };
    let empty = Verifier::new(new.policy().clone());
    let old_policy = old.map(Verifier::policy);
    let old = old.unwrap_or(&empty);
    let mut writes = 0;
    if old_policy != Some(new.policy()) {
        tree.insert([KT_POLICY], codec::encode(new.policy()))?;
        writes += 1;
    }
    writes += sync_map(tree, old.nodes(), new.nodes(), |n| node_row(KT_NODE, n))?;
    let as_map = |s: &BTreeSet<NodeId>| s.iter().map(|n| (*n, ())).collect::<BTreeMap<_, _>>();
    writes += sync_map(tree, &as_map(old.witnesses()), &as_map(new.witnesses()), |n| node_row(KT_WITNESS, n))?;
    writes += sync_map(tree, old.heads(), new.heads(), |n| node_row(KT_HEAD, n))?;
    writes += sync_map(tree, old.pins(), new.pins(), |(n, name)| {
        let mut k = node_row(KT_PIN, n);
        k.extend_from_slice(name.as_bytes());
        k
    })?;
    writes += sync_map(tree, old.distrusted(), new.distrusted(), |n| node_row(KT_DISTRUSTED, n))?;
    Ok(writes)
}

fn string_key(k: &[u8]) -> Option<String> {
    String::from_utf8(k.to_vec()).ok()
}

fn u64_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

fn msg_id_key(k: &[u8]) -> Option<MsgId> {
    k.try_into().ok()
}

fn read_map<K: Ord, V: DeserializeOwned>(
    tree: &sled::Tree,
    what: &'static str,
    key: impl Fn(&[u8]) -> Option<K>,
) -> Result<BTreeMap<K, V>> {
    let mut out = BTreeMap::new();
    for item in tree.iter() {
        let (k, v) = item?;
        let k = key(&k).ok_or(PersistError::Corrupt { what, detail: "bad key".into() })?;
        out.insert(k, decode(what, &v)?);
    }
    Ok(out)
}

/// Makes `tree` hold `new`, given that it holds `old`: writes only the difference.
fn sync_map<K: Ord, V: PartialEq + Serialize>(
    tree: &sled::Tree,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    key: impl Fn(&K) -> Vec<u8>,
) -> Result<usize> {
    let mut batch = sled::Batch::default();
    let mut writes = 0;
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        batch.remove(key(k));
        writes += 1;
    }
    for (k, v) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
        batch.insert(key(k), codec::encode(v));
        writes += 1;
    }
    if writes > 0 {
        tree.apply_batch(batch)?;
    }
    Ok(writes)
}
