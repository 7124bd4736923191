//! The CLI client's home directory: identity, client state and message history.
//!
//! Layout of `HOME` (created `0700`):
//! * `identity` — the secret keys and certificate (`codec(IdentityFile)`), mode `0600`,
//!   written once by `nymstr init`; the only file holding secrets.
//! * `db/` — a sled database (it also locks the home: one process at a time), trees:
//!   `meta` (account, node address, counters, the home node's id), `contacts` (username → `Contact`), `pins`
//!   (pin seq → `(username, key)`), `seen` (seq → `(installation, msg id)`), `outgoing`
//!   (msg id → `OutgoingDm`), `direct` (username → `DirectPeer`), `history` (seq →
//!   `HistoryEntry`), `history_ids` (direction · peer · 0 · msg id → seq); for groups
//!   (`nymstr_client_core::group::GroupCore`): `group_storage` (openmls storage key → record, raw: the
//!   MLS secrets of every group), `group_state` (`records` → every `GroupRecord`, `stats`),
//!   `group_invites` (group id → `InviteRecord`: invitations received, not yet accepted),
//!   `group_log` (seq → `GroupLine`: group messages and notices shown by `inbox`),
//!   `group_log_ids` (group id · msg id → seq); `transparency` (the key-transparency
//!   verifier, one row per item: `P` → trust policy, `n`·node → node key, `w`·node →
//!   witness, `h`·node → accepted head, `p`·node·name → pin, `d`·node → fork certificate;
//!   bounded by `KT_NODES_MAX` and `KT_PINS_MAX`; format 1 kept it as one `meta` record,
//!   migrated on open).
//!
//! The database holds group secrets: its directory is `0700` and its files `0600`.
//!
//! Every record is encoded with `nymstr_proto::codec` (read back with `decode_record`,
//! whose limit is the local `RECORD_BYTES_MAX`, not the wire's 64 KiB), except the group records, which grow
//! past the codec's 64 KiB decode limit (they remember up to 10,000 message ids per
//! group) and are encoded with bincode 2 directly (standard configuration, a 256 MiB
//! decode budget). The client state is stored record by
//! record, not as one blob: a whole `ClientState` can exceed the codec's 64 KiB limit, and
//! writing only what changed keeps a save cheap. A save ends with a flush, and hosts send
//! acknowledgements only after it (acknowledge only what is durable).
//!
//! Here: opening the home (the identity file, the database, its lock and permissions);
//! `state`: the client state; `history`: direct messages; `groups`: the group member's
//! state, invitations and group history; `records` and `format`: what is stored and how.

mod format;
mod groups;
mod history;
mod records;
mod state;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};

use nymstr_proto::codec;

use nymstr_client_core::core::{ClientState, IdentityState};
use serde::{Deserialize, Serialize};

pub use format::PersistError;
use format::{FORMAT_VERSION, Result, decode};
pub use records::{Direction, GroupLine, GroupLineKind, HistoryEntry, InviteRecord, Status};

const IDENTITY_FILE: &str = "identity";
const DB_DIR: &str = "db";

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    version: u32,
    identity: IdentityState,
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
    transparency: sled::Tree,
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
        let file: IdentityFile = codec::decode_record(&bytes)
            .map_err(|e| PersistError::Corrupt { what: "identity", detail: e.to_string() })?;
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
            transparency: tree("transparency")?,
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
        // A home of an older format was migrated by `read_state`: mark it, so an older
        // nymstr refuses it rather than miss what moved.
        home.meta.insert("version", codec::encode(&FORMAT_VERSION))?;
        home.saved_group_records = home.group_state.get("records")?.map(|v| v.to_vec());
        home.saved_group_stats = home.group_state.get("stats")?.map(|v| v.to_vec());
        Ok(home)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The node this account registered with.
    pub fn node_addr(&self) -> Result<Option<String>> {
        self.meta.get("node")?.map(|v| decode("node address", &v)).transpose()
    }

    pub fn set_node_addr(&self, addr: &str) -> Result<()> {
        self.meta.insert("node", codec::encode(&addr))?;
        Ok(())
    }
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
