//! The CLI client's home directory: identity, client state and message history.
//!
//! Layout of `HOME` (created `0700`):
//! * `identity` — the secret keys and certificate (`codec(IdentityFile)`), mode `0600`,
//!   written once by `nymstr init`; the only file holding secrets.
//! * `db/` — a sled database (it also locks the home: one process at a time), trees:
//!   `meta` (account, node address, counters), `contacts` (username → `Contact`), `pins`
//!   (pin seq → `(username, key)`), `seen` (seq → `(installation, msg id)`), `outgoing`
//!   (msg id → `OutgoingDm`), `direct` (username → `DirectPeer`), `history` (seq →
//!   `HistoryEntry`), `history_ids` (direction · peer · 0 · msg id → seq); for groups
//!   (`nymstr_client_core::group::GroupCore`): `group_storage` (openmls storage key → record, raw: the
//!   MLS secrets of every group), `group_state` (`records` → every `GroupRecord`, `stats`),
//!   `group_invites` (group id → `InviteRecord`: invitations received, not yet accepted),
//!   `group_log` (seq → `GroupLine`: group messages and notices shown by `inbox`),
//!   `group_log_ids` (group id · msg id → seq).
//!
//! The database holds group secrets: its directory is `0700` and its files `0600`.
//!
//! Every record is encoded with `nymstr_proto::codec`, except the group records, which grow
//! past the codec's 64 KiB decode limit (they remember up to 10,000 message ids per
//! group) and are encoded with bincode 2 directly (standard configuration, a 256 MiB
//! decode budget). The client state is stored record by
//! record, not as one blob: a whole `ClientState` can exceed the codec's 64 KiB limit, and
//! writing only what changed keeps a save cheap. A save ends with a flush, and hosts send
//! acknowledgements only after it (acknowledge only what is durable).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use nymstr_proto::codec;
use nymstr_proto::wire::MsgId;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use nymstr_client_core::core::{ClientState, Contact, DirectPeer, IdentityState, OutgoingDm, SeenLog, Via};
use nymstr_client_core::group::{GroupRecord, GroupState, GroupStateDelta, GroupStats};
use nymstr_client_core::seal::GroupInvite;
use nymstr_proto::wire::{GroupId, PublicKey};

const IDENTITY_FILE: &str = "identity";
const DB_DIR: &str = "db";
const FORMAT_VERSION: u32 = 1;

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

type Result<T, E = PersistError> = std::result::Result<T, E>;

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    version: u32,
    identity: IdentityState,
}

/// Which way a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    In,
    Out,
}

/// Where a message stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Handed to the node or the peer, not acknowledged yet (retried on the next run).
    Pending,
    /// The node holds it durably for the recipient.
    Sent,
    /// The recipient's installation acknowledged it directly.
    Delivered,
    /// Refused for good.
    Failed(String),
    /// Received and verified.
    Received,
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Failed(_) => "failed",
            Status::Received => "received",
        }
    }
}

/// One message in the local history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    /// Local clock when recorded (sent or received), µs since the epoch.
    pub at_us: u64,
    pub peer: String,
    pub direction: Direction,
    pub msg_id: MsgId,
    /// The sender's clock (claimed by the sender for received messages).
    pub sent_at_us: u64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub status: Status,
    pub via: Option<Via>,
    /// Received messages start unread; `inbox` and `listen` mark what they print.
    pub read: bool,
}

/// An invitation to a group, received in a sealed DM and not yet accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub from: String,
    pub msg_id: MsgId,
    pub received_at_us: u64,
    pub invite: GroupInvite,
    /// `inbox` or `listen` printed it.
    pub shown: bool,
}

/// What a line of group history says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupLineKind {
    /// A text message (ours too, recorded as read).
    Message { from: String, sender_key: PublicKey, msg_id: MsgId, text: String, log_seq: u64 },
    /// Something that happened in the group: `kind` is a short stable name (`joined`,
    /// `left`, `renamed`, `missing`, ...), `who` the member it concerns, if any.
    Notice { kind: String, who: Option<String>, text: String },
}

/// One line of group history: a message or a notice, in the order this device saw them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLine {
    pub seq: u64,
    /// Local clock when recorded, µs since the epoch.
    pub at_us: u64,
    pub group: GroupId,
    /// The group's name when recorded.
    pub group_name: String,
    pub kind: GroupLineKind,
    pub read: bool,
}

/// bincode for records without a size bound (local, trusted bytes).
const BIG_DECODE_BUDGET: usize = 256 * 1024 * 1024;

fn big_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<BIG_DECODE_BUDGET>,
> {
    bincode::config::standard().with_limit::<BIG_DECODE_BUDGET>()
}

fn encode_big<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, big_config())
        .map_err(|e| PersistError::Corrupt { what: "group state", detail: e.to_string() })
}

fn decode_big<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, big_config())
        .map_err(|e| PersistError::Corrupt { what, detail: e.to_string() })?;
    if used != bytes.len() {
        return Err(PersistError::Corrupt { what, detail: format!("{} trailing bytes", bytes.len() - used) });
    }
    Ok(value)
}

/// The account as the CLI sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AccountMeta {
    username: Option<String>,
    registered: bool,
}

/// An open home directory (holds the sled lock until dropped).
pub struct Home {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    contacts: sled::Tree,
    pins: sled::Tree,
    seen: sled::Tree,
    outgoing: sled::Tree,
    direct: sled::Tree,
    history: sled::Tree,
    history_ids: sled::Tree,
    group_storage: sled::Tree,
    group_state: sled::Tree,
    group_invites: sled::Tree,
    group_log: sled::Tree,
    group_log_ids: sled::Tree,
    identity: IdentityState,
    /// What the trees hold now, so a save writes only the difference.
    saved: ClientState,
    /// The encoded group records and stats as stored.
    saved_group_records: Option<Vec<u8>>,
    saved_group_stats: Option<Vec<u8>>,
}

impl Home {
    /// Creates `dir` (if needed) with a fresh identity. Refuses if one exists.
    pub fn create(dir: &Path, identity: &IdentityState) -> Result<Home> {
        let io = |source| PersistError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        restrict(dir, 0o700)?;
        let path = dir.join(IDENTITY_FILE);
        if path.exists() {
            return Err(PersistError::AlreadyInitialised(dir.to_path_buf()));
        }
        let bytes = codec::encode(&IdentityFile { version: FORMAT_VERSION, identity: identity.clone() });
        // Written under a temporary name, synced, then renamed: a crash leaves either no
        // identity or a whole one.
        let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
        let io_tmp = |source| PersistError::Io { path: tmp.clone(), source };
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp).map_err(io_tmp)?;
            f.write_all(&bytes).map_err(io_tmp)?;
            f.sync_all().map_err(io_tmp)?;
        }
        restrict(&tmp, 0o600)?;
        std::fs::rename(&tmp, &path).map_err(|source| PersistError::Io { path: path.clone(), source })?;
        let home = Self::open(dir)?;
        home.meta.insert("version", codec::encode(&FORMAT_VERSION))?;
        home.flush()?;
        Ok(home)
    }

    /// Opens an initialised home and locks it.
    pub fn open(dir: &Path) -> Result<Home> {
        let path = dir.join(IDENTITY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PersistError::NotInitialised(dir.to_path_buf()));
            }
            Err(source) => return Err(PersistError::Io { path, source }),
        };
        let file: IdentityFile =
            codec::decode(&bytes).map_err(|e| PersistError::Corrupt { what: "identity", detail: e.to_string() })?;
        if file.version > FORMAT_VERSION {
            return Err(PersistError::Version { path, found: file.version });
        }
        let db_path = dir.join(DB_DIR);
        let db = open_db(dir, &db_path)?;
        restrict(&db_path, 0o700)?;
        let tree = |name: &str| db.open_tree(name);
        let mut home = Home {
            dir: dir.to_path_buf(),
            meta: tree("meta")?,
            contacts: tree("contacts")?,
            pins: tree("pins")?,
            seen: tree("seen")?,
            outgoing: tree("outgoing")?,
            direct: tree("direct")?,
            history: tree("history")?,
            history_ids: tree("history_ids")?,
            group_storage: tree("group_storage")?,
            group_state: tree("group_state")?,
            group_invites: tree("group_invites")?,
            group_log: tree("group_log")?,
            group_log_ids: tree("group_log_ids")?,
            db,
            identity: file.identity,
            saved: ClientState::default(),
            saved_group_records: None,
            saved_group_stats: None,
        };
        restrict_tree(&db_path)?;
        if let Some(v) = home.meta.get("version")? {
            let found: u32 = decode("version", &v)?;
            if found > FORMAT_VERSION {
                return Err(PersistError::Version { path: db_path, found });
            }
        }
        home.saved = home.read_state()?;
        home.saved_group_records = home.group_state.get("records")?.map(|v| v.to_vec());
        home.saved_group_stats = home.group_state.get("stats")?.map(|v| v.to_vec());
        Ok(home)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client state as last saved (identity included).
    pub fn state(&self) -> ClientState {
        let mut s = self.saved.clone();
        s.identity = Some(self.identity.clone());
        s
    }

    fn read_state(&mut self) -> Result<ClientState> {
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

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    // --- groups ---

    /// The group member state as last saved (empty if there is none).
    pub fn group_state(&self) -> Result<GroupState> {
        let mut storage = BTreeMap::new();
        for item in self.group_storage.iter() {
            let (k, v) = item?;
            storage.insert(k.to_vec(), v.to_vec());
        }
        let groups: Vec<GroupRecord> = match &self.saved_group_records {
            Some(v) => decode_big("group records", v)?,
            None => Vec::new(),
        };
        let stats: GroupStats = match &self.saved_group_stats {
            Some(v) => decode("group stats", v)?,
            None => GroupStats::default(),
        };
        Ok(GroupState { storage, groups, stats })
    }

    /// Writes a group state delta (`GroupCore::export_changes`). Not flushed: returns
    /// whether anything was written, and the caller flushes before acknowledging.
    pub fn save_group_delta(&mut self, delta: GroupStateDelta) -> Result<bool> {
        let mut writes = 0usize;
        if !delta.upserts.is_empty() || !delta.deletes.is_empty() {
            let mut batch = sled::Batch::default();
            for k in &delta.deletes {
                batch.remove(k.as_slice());
                writes += 1;
            }
            for (k, v) in &delta.upserts {
                batch.insert(k.as_slice(), v.as_slice());
                writes += 1;
            }
            self.group_storage.apply_batch(batch)?;
        }
        let records = encode_big(&delta.groups)?;
        if self.saved_group_records.as_deref() != Some(records.as_slice()) {
            self.group_state.insert("records", records.as_slice())?;
            self.saved_group_records = Some(records);
            writes += 1;
        }
        let stats = codec::encode(&delta.stats);
        if self.saved_group_stats.as_deref() != Some(stats.as_slice()) {
            self.group_state.insert("stats", stats.as_slice())?;
            self.saved_group_stats = Some(stats);
            writes += 1;
        }
        Ok(writes > 0)
    }

    /// Keeps an invitation (a newer one for the same group replaces it). Not flushed.
    pub fn record_invite(&self, record: &InviteRecord) -> Result<()> {
        self.group_invites.insert(record.invite.token.group_id, codec::encode(record))?;
        Ok(())
    }

    /// Invitations not yet accepted, oldest first.
    pub fn invites(&self) -> Result<Vec<InviteRecord>> {
        let mut out: Vec<InviteRecord> = Vec::new();
        for item in self.group_invites.iter() {
            let (_, v) = item?;
            out.push(decode("group invitation", &v)?);
        }
        out.sort_by_key(|r| r.received_at_us);
        Ok(out)
    }

    pub fn invite(&self, group: &GroupId) -> Result<Option<InviteRecord>> {
        self.group_invites.get(group)?.map(|v| decode("group invitation", &v)).transpose()
    }

    pub fn remove_invite(&self, group: &GroupId) -> Result<()> {
        self.group_invites.remove(group)?;
        Ok(())
    }

    pub fn mark_invite_shown(&self, group: &GroupId) -> Result<()> {
        if let Some(mut r) = self.invite(group)? {
            r.shown = true;
            self.record_invite(&r)?;
        }
        Ok(())
    }

    /// Appends a line of group history; a message already recorded (same group and
    /// message id) is not recorded twice and comes back as stored. Not flushed.
    pub fn record_group_line(&self, mut line: GroupLine) -> Result<GroupLine> {
        let id_key = match &line.kind {
            GroupLineKind::Message { msg_id, .. } => {
                let mut k = line.group.to_vec();
                k.extend_from_slice(msg_id);
                Some(k)
            }
            GroupLineKind::Notice { .. } => None,
        };
        if let Some(k) = &id_key
            && let Some(seq) = self.group_log_ids.get(k)?
            && let Some(existing) = self.group_log.get(&seq)?
        {
            return decode("group history line", &existing);
        }
        let seq = self.db.generate_id()?;
        line.seq = seq;
        self.group_log.insert(seq.to_be_bytes(), codec::encode(&line))?;
        if let Some(k) = id_key {
            self.group_log_ids.insert(k, &seq.to_be_bytes())?;
        }
        Ok(line)
    }

    pub fn mark_group_read(&self, line: &GroupLine) -> Result<()> {
        if let Some(bytes) = self.group_log.get(line.seq.to_be_bytes())? {
            let mut l: GroupLine = decode("group history line", &bytes)?;
            l.read = true;
            self.group_log.insert(line.seq.to_be_bytes(), codec::encode(&l))?;
        }
        Ok(())
    }

    /// Group lines not shown yet, oldest first.
    pub fn group_unread(&self) -> Result<Vec<GroupLine>> {
        let mut out = Vec::new();
        for item in self.group_log.iter() {
            let (_, v) = item?;
            let line: GroupLine = decode("group history line", &v)?;
            if !line.read {
                out.push(line);
            }
        }
        Ok(out)
    }

    /// The last `limit` lines of one group (or all), oldest first.
    pub fn group_lines(&self, group: Option<&GroupId>, limit: usize) -> Result<Vec<GroupLine>> {
        let mut out = Vec::new();
        for item in self.group_log.iter().rev() {
            let (_, v) = item?;
            let line: GroupLine = decode("group history line", &v)?;
            if group.is_none_or(|g| *g == line.group) {
                out.push(line);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The node this account registered with.
    pub fn node_addr(&self) -> Result<Option<String>> {
        self.meta.get("node")?.map(|v| decode("node address", &v)).transpose()
    }

    pub fn set_node_addr(&self, addr: &str) -> Result<()> {
        self.meta.insert("node", codec::encode(&addr))?;
        Ok(())
    }

    // --- history ---

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

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|e| PersistError::Corrupt { what, detail: e.to_string() })
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

/// Unix permissions: the home is the user's alone.
fn restrict(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|source| PersistError::Io { path: path.to_path_buf(), source })?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// The database's files (group secrets among them) are the owner's alone: directories
/// `0700`, files `0600`.
fn restrict_tree(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let entries = std::fs::read_dir(dir).map_err(|source| PersistError::Io { path: dir.to_path_buf(), source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    restrict(&path, 0o700)?;
                    restrict_tree(&path)?;
                }
                Ok(t) if t.is_file() => restrict(&path, 0o600)?,
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Attempts, 20 ms apart, to take the database lock before reporting the home in use.
/// sled releases its lock only when its background flusher lets go of the database, a
/// moment after the previous holder (in this process or one just exiting) closed it.
const LOCK_ATTEMPTS: u32 = 50;

fn open_db(dir: &Path, db_path: &Path) -> Result<sled::Db> {
    let mut attempt = 1;
    loop {
        match sled::Config::new().path(db_path).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                if attempt == LOCK_ATTEMPTS {
                    return Err(PersistError::Locked(dir.to_path_buf()));
                }
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(other) => return Err(PersistError::Db(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nymstr_client_core::core::{ClientConfig, ClientCore, Identity};
    use nymstr_client_core::seal::{DirectAddress, DmContent};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::collections::BTreeSet;

    fn identity() -> IdentityState {
        Identity::generate(&mut ChaCha20Rng::seed_from_u64(1), 1_000).to_state()
    }

    fn sample_state(id: &IdentityState, n: u64) -> ClientState {
        let mut s = ClientState {
            identity: Some(id.clone()),
            username: Some("alice".into()),
            registered: true,
            ..ClientState::default()
        };
        s.contacts.insert(
            "bob".into(),
            Contact { account_key: [2; 32], installations: vec![id.cert.clone()], fetched_at_us: 5 },
        );
        s.pins.insert(0, ("bob".into(), [2; 32]));
        s.seen = SeenLog { first_seq: n, ids: (0..n as u8 + 3).map(|i| ([i; 32], [i; 16])).collect() };
        s.outgoing.insert(
            [9; 16],
            OutgoingDm {
                to: "bob".into(),
                msg_id: [9; 16],
                content: DmContent::Text { body: b"hi".to_vec() },
                sent_at_us: 7,
                relayed: true,
                direct_done: BTreeSet::new(),
            },
        );
        let mut peer = DirectPeer { enabled: true, ..DirectPeer::default() };
        peer.routes.insert(
            [3; 32],
            nymstr_client_core::core::DirectRoute {
                addr: DirectAddress::Tcp("127.0.0.1:9".into()),
                announced_at_us: 1,
                failures: 0,
                down_until_us: 0,
            },
        );
        s.direct.insert("bob".into(), peer);
        // The transparency verifier is saved whole (the core always exports one).
        s.transparency = Some(nymstr_proto::federation::verify::Verifier::new(
            nymstr_proto::federation::verify::TrustPolicy::WitnessQuorum { required: 2 },
        ));
        s
    }

    #[test]
    fn state_survives_a_reopen_and_saves_only_differences() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity();
        let mut home = Home::create(dir.path(), &id).unwrap();
        let state = sample_state(&id, 0);
        assert!(home.save_state(&state).unwrap());
        assert!(!home.save_state(&state).unwrap(), "nothing changed, nothing written");
        // The seen log moves on: two evicted at the front, two appended.
        let mut later = state.clone();
        later.seen.first_seq = 2;
        later.seen.ids.drain(..2);
        later.seen.ids.push(([100; 32], [100; 16]));
        later.seen.ids.push(([101; 32], [101; 16]));
        later.outgoing.clear();
        assert!(home.save_state(&later).unwrap());
        drop(home);
        let home = Home::open(dir.path()).unwrap();
        assert_eq!(home.state(), later);
        // And the core restores from it.
        let core = ClientCore::restore(ChaCha20Rng::seed_from_u64(2), ClientConfig::default(), home.state()).unwrap();
        assert_eq!(core.export_state(), later);
        assert_eq!(
            core.transparency().policy(),
            &nymstr_proto::federation::verify::TrustPolicy::WitnessQuorum { required: 2 },
            "the saved verifier, not a fresh one from the config"
        );
    }

    #[test]
    fn init_refuses_an_existing_home_and_open_refuses_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Home::open(dir.path()), Err(PersistError::NotInitialised(_))));
        let id = identity();
        drop(Home::create(dir.path(), &id).unwrap());
        assert!(matches!(Home::create(dir.path(), &id), Err(PersistError::AlreadyInitialised(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the identity file is the owner's alone");
            let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn a_second_process_is_told_the_home_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let _home = Home::create(dir.path(), &identity()).unwrap();
        // sled's lock is per process (flock); within one process a second open succeeds
        // or fails depending on the platform, so only the error mapping is checked here.
        if let Err(e) = Home::open(dir.path()) {
            assert!(matches!(e, PersistError::Locked(_)), "{e}");
        }
    }

    #[test]
    fn history_records_once_and_tracks_status() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::create(dir.path(), &identity()).unwrap();
        let entry = HistoryEntry {
            seq: 0,
            at_us: 10,
            peer: "bob".into(),
            direction: Direction::Out,
            msg_id: [1; 16],
            sent_at_us: 10,
            body: b"hello".to_vec(),
            status: Status::Pending,
            via: None,
            read: true,
        };
        let first = home.record(entry.clone()).unwrap();
        let again = home.record(entry.clone()).unwrap();
        assert_eq!(first, again);
        let incoming = HistoryEntry { direction: Direction::In, status: Status::Received, read: false, ..entry };
        home.record(incoming).unwrap();
        home.update_outgoing("bob", &[1; 16], |e| {
            e.status = Status::Delivered;
            e.via = Some(Via::Direct);
        })
        .unwrap();
        let all = home.history(None, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].status, Status::Delivered);
        assert_eq!(home.history(Some("carol"), 10).unwrap().len(), 0);
        let unread = home.unread().unwrap();
        assert_eq!(unread.len(), 1);
        home.mark_read(&unread[0]).unwrap();
        assert!(home.unread().unwrap().is_empty());
    }
}
