//! The data directory: its layout, the node's long-term key (and the node id derived from
//! it), and `init`, which creates the directory, the key and `config.toml`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use super::ConfigError;
use super::template::render_template_with;

pub const CONFIG_FILE: &str = "config.toml";
pub const KEY_FILE: &str = "node.key";
pub const DB_DIR: &str = "db";
pub const STATUS_FILE: &str = "status.json";
pub const DESCRIPTOR_FILE: &str = "descriptor.json";

/// Paths inside a node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn key(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }
    pub fn db(&self) -> PathBuf {
        self.root.join(DB_DIR)
    }
    pub fn status(&self) -> PathBuf {
        self.root.join(STATUS_FILE)
    }
    pub fn descriptor(&self) -> PathBuf {
        self.root.join(DESCRIPTOR_FILE)
    }
}

/// The node's long-term identity (for federation): an ed25519 key.
pub struct NodeKey {
    signing: SigningKey,
}

impl NodeKey {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        crate::runtime::os::os_random(&mut seed)?;
        Ok(Self { signing: SigningKey::from_bytes(&seed) })
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The node id (`federation::descriptor::node_id`) in hex: how every node, client and
    /// log names this one.
    pub fn node_id(&self) -> String {
        node_id(&self.public_key())
    }

    /// The secret key (to start the federation core and sign the descriptor).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::Key { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read the node key: {e}")))?;
        let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("the node key is not hex: {e}")))?;
        let seed: [u8; 32] =
            bytes.try_into().map_err(|_| bad("the node key is not 32 bytes (64 hex digits)".to_string()))?;
        Ok(Self { signing: SigningKey::from_bytes(&seed) })
    }

    /// Writes the key to a new file readable by its owner only; never overwrites.
    fn write_new(&self, path: &Path) -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(path)?;
        writeln!(f, "{}", hex::encode(self.signing.to_bytes()))?;
        f.sync_all()
    }
}

/// `hex(blake3::derive_key("nymstr/v1/node-id", public key))`, the one node id.
pub fn node_id(public_key: &[u8; 32]) -> String {
    nymstr_proto::federation::descriptor::node_id(public_key).to_hex()
}

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    pub node_id: String,
    pub config: PathBuf,
    pub key: PathBuf,
    /// True if `node.key` already existed and was kept.
    pub kept_key: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{path} already exists: refusing to overwrite it (edit it, or choose another --dir)", path = .0.display())]
    Exists(PathBuf),
    #[error("cannot create {path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Key(ConfigError),
    #[error("cannot draw a key from the operating system's random generator: {0}")]
    Entropy(String),
}

/// Creates `dir` (if needed), the node key (unless one exists: an identity is never
/// replaced) and `config.toml` (never overwritten).
pub fn init(dir: &DataDir, listen: SocketAddr) -> Result<InitReport, InitError> {
    init_with(dir, listen, &[])
}

/// [`init`] with `bootstrap` peers written into `[federation]`.
pub fn init_with(dir: &DataDir, listen: SocketAddr, bootstrap: &[String]) -> Result<InitReport, InitError> {
    let config = dir.config();
    if config.exists() {
        return Err(InitError::Exists(config));
    }
    create_private_dir(&dir.root).map_err(|source| InitError::Io { path: dir.root.clone(), source })?;
    let key_path = dir.key();
    let (key, kept_key) = if key_path.exists() {
        (NodeKey::load(&key_path).map_err(InitError::Key)?, true)
    } else {
        let key = NodeKey::generate().map_err(|e| InitError::Entropy(e.to_string()))?;
        key.write_new(&key_path).map_err(|source| InitError::Io { path: key_path.clone(), source })?;
        (key, false)
    };
    let text = render_template_with(listen, bootstrap);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&config).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(config.clone())
        } else {
            InitError::Io { path: config.clone(), source }
        }
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| InitError::Io { path: config.clone(), source })?;
    Ok(InitReport { node_id: key.node_id(), config, key: key_path, kept_key })
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}
