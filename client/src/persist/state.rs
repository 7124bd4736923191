//! The client state (`ClientState`), stored record by record in its trees: a save writes
//! only what changed since the last one, then flushes.

use std::collections::BTreeMap;

use nymstr_proto::codec;
use nymstr_proto::wire::MsgId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::Home;
use super::format::{PersistError, Result, decode};
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
            transparency: match self.meta.get("transparency")? {
                Some(v) => Some(decode("transparency state", &v)?),
                None => None,
            },
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
            match &state.transparency {
                Some(v) => self.meta.insert("transparency", codec::encode(v))?,
                None => self.meta.remove("transparency")?,
            };
            writes += 1;
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
