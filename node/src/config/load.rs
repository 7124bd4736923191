//! Loading `config.toml`: read it from the data directory, parse it (unknown keys refused),
//! range-check what the types cannot express; every error names the full key and its line.

use std::path::Path;

use super::datadir::DataDir;
use super::{Config, ConfigError};

impl Config {
    /// Reads `DIR/config.toml`.
    pub fn load_dir(dir: &DataDir) -> Result<Self, ConfigError> {
        if !dir.config().is_file() {
            return Err(ConfigError::NotInitialised { dir: dir.root.clone(), config: dir.config() });
        }
        let path = dir.config();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Self::parse(&text, &path)
    }

    /// Parses and range-checks a configuration; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            // toml names the line and shows it; name the full key too, for one-line logs.
            let message = match e.span().and_then(|span| key_at(text, span.start)) {
                Some(key) => format!("`{key}`: {message}"),
                None => message,
            };
            ConfigError::Parse { path: path.to_path_buf(), message }
        })?;
        if let Err((section, key, message)) = config.check() {
            let line = line_of(text, section, key);
            let key = if section.is_empty() { key.to_string() } else { format!("{section}.{key}") };
            return Err(ConfigError::Invalid { path: path.to_path_buf(), key, line, message });
        }
        Ok(config)
    }

    /// Range checks the types cannot express: `(table, key, message)` of the first failure.
    pub fn check(&self) -> Result<(), (&'static str, &'static str, String)> {
        let c = &self.core;
        let core = |key, message: &str| Err(("core", key, message.to_string()));
        if c.challenge_ttl_us < 1_000_000 {
            return core("challenge_ttl_us", "must be at least 1_000_000 (1 s)");
        }
        if c.challenges_pending_max == 0 {
            return core("challenges_pending_max", "must be at least 1");
        }
        if c.challenges_per_tag_max == 0 {
            return core("challenges_per_tag_max", "must be at least 1");
        }
        if c.login_challenges_per_account_max == 0 {
            return core("login_challenges_per_account_max", "must be at least 1");
        }
        if c.queue_per_sender_max == 0 {
            return core("queue_per_sender_max", "must be at least 1");
        }
        if c.queue_depth_max == 0 {
            return core("queue_depth_max", "must be at least 1");
        }
        if c.deliveries_inflight_max == 0 {
            return core("deliveries_inflight_max", "must be at least 1");
        }
        if c.redeliver_after_us < 100_000 {
            return core("redeliver_after_us", "must be at least 100_000 (100 ms)");
        }
        if c.redeliver_after_max_us < c.redeliver_after_us {
            return core("redeliver_after_max_us", "must be at least redeliver_after_us");
        }
        if c.seen_send_ttl_us < 1_000_000 {
            return core("seen_send_ttl_us", "must be at least 1_000_000 (1 s)");
        }
        if c.sweep_every_us < 100_000 {
            return core("sweep_every_us", "must be at least 100_000 (100 ms)");
        }
        if c.group_idle_expiry_us < 60_000_000 {
            return core("group_idle_expiry_us", "must be at least 60_000_000 (1 min)");
        }
        if c.group_history_max == 0 {
            return core("group_history_max", "must be at least 1");
        }
        let f = &c.federation;
        let fed = |key, message: &str| Err(("core.federation", key, message.to_string()));
        if f.epoch_us < 1_000_000 {
            return fed("epoch_us", "must be at least 1_000_000 (1 s)");
        }
        if f.peer_retry_us < 100_000 {
            return fed("peer_retry_us", "must be at least 100_000 (100 ms)");
        }
        if f.forward_timeout_us < 100_000 {
            return fed("forward_timeout_us", "must be at least 100_000 (100 ms)");
        }
        if f.peers_max == 0 {
            return fed("peers_max", "must be at least 1");
        }
        let max = nymstr_proto::federation::descriptor::POLICY_BYTES_MAX;
        if f.policy.len() > max {
            return fed("policy", &format!("is longer than {max} bytes"));
        }
        let max = nymstr_proto::federation::descriptor::ADDRESS_BYTES_MAX;
        for b in &self.federation.bootstrap {
            if b.is_empty() || b.len() > max {
                return Err(("federation", "bootstrap", format!("entries must be 1 to {max} bytes")));
            }
        }
        if let Some(a) = &self.federation.advertise
            && (a.is_empty() || a.len() > max)
        {
            return Err(("federation", "advertise", format!("must be 1 to {max} bytes")));
        }
        if let Err((key, message)) = self.transport.tcp.check() {
            return Err(("transport.tcp", key, message));
        }
        #[cfg(not(feature = "nym"))]
        if self.transport.kind == super::TransportKind::Nym {
            return Err((
                "transport",
                "kind",
                "= \"nym\" needs a node built with the Nym transport: `cargo build --release -p nymstr-node --features nym`"
                    .into(),
            ));
        }
        let r = &self.runtime;
        if !(1..=256).contains(&r.io_threads) {
            return Err(("runtime", "io_threads", "must be between 1 and 256".into()));
        }
        if r.status_every_secs == 0 {
            return Err(("runtime", "status_every_secs", "must be at least 1".into()));
        }
        if self.store.cache_capacity_bytes < 1 << 20 {
            return Err(("store", "cache_capacity_bytes", "must be at least 1_048_576 (1 MiB)".into()));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(("log", "filter", format!("is not a valid filter: {e}")));
        }
        Ok(())
    }
}

/// The line (1-based) of `key = ...` inside `[section]`, for error messages. Handles the
/// layout `init` writes (and any hand-edited file of plain `[table]` headers).
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(header) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = header.trim().to_string();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else { continue };
        let k = k.trim().trim_matches('"');
        let (sect, k) = match k.rsplit_once('.') {
            Some((prefix, k)) if current.is_empty() => (prefix.trim().to_string(), k.trim()),
            Some((prefix, k)) => (format!("{current}.{}", prefix.trim()), k.trim()),
            None => (current.clone(), k),
        };
        if sect == section && k == key {
            return Some(i + 1);
        }
    }
    None
}

/// The dotted key (`core.queue_depth_max`) written on the line holding byte `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line = text.get(..offset)?.matches('\n').count();
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(header) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = header.trim().to_string();
        } else if i == line {
            let key = l.split_once('=')?.0.trim().trim_matches('"');
            return Some(if current.is_empty() { key.to_string() } else { format!("{current}.{key}") });
        }
        if i >= line {
            return None;
        }
    }
    None
}
