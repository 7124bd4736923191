//! Registry core: accounts, installations, challenge-response registration and login,
//! lookups, and the binding of an installation to the sender tag it currently uses.
//! Normative text: `specs/registry.md`.

use std::collections::BTreeMap;

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use super::quota::{Shares, TagShares};
use super::{CodedError, Ctx, SenderTag, TimeUs, load};
use crate::store::{Store, StoreError, Table};
use nymstr_proto::identity::{self, UsernameError};
use nymstr_proto::limits::INSTALLATIONS_PER_ACCOUNT_MAX;
use nymstr_proto::wire::{Body, ErrorCode, InstallationCert, InstallationId, Nonce, PublicKey, Sig};

/// A registered account, stored under its (folded) username.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub username: String,
    pub account_key: PublicKey,
    #[serde(deserialize_with = "nymstr_proto::bounded::vec::<_, _, INSTALLATIONS_PER_ACCOUNT_MAX>")]
    pub installations: Vec<InstallationCert>,
    pub registered_at_us: TimeUs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Purpose {
    Register { username: String, cert: InstallationCert },
    Login { installation: InstallationId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingChallenge {
    purpose: Purpose,
    /// The tag it was issued to: only that tag may answer it.
    tag: SenderTag,
    expires_at_us: TimeUs,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Username(#[from] UsernameError),
    #[error("username is taken")]
    UsernameTaken,
    #[error("installation certificate does not verify")]
    BadCertificate,
    #[error("no such challenge (never issued, already used, or lost in a restart)")]
    UnknownChallenge,
    #[error("challenge expired")]
    ChallengeExpired,
    #[error("challenge answered with the wrong kind of response")]
    WrongChallenge,
    #[error("signature does not verify")]
    BadSignature,
    #[error("unknown user")]
    UnknownUser,
    #[error("unknown installation")]
    UnknownInstallation,
    #[error("too many pending challenges; retry later")]
    Busy,
    #[error("the account already holds the maximum of {max} installations")]
    InstallationLimit { max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CodedError for RegistryError {
    fn code(&self) -> ErrorCode {
        match self {
            RegistryError::Username(UsernameError::Reserved) => ErrorCode::UsernameReserved,
            RegistryError::Username(_) => ErrorCode::UsernameInvalid,
            RegistryError::UsernameTaken => ErrorCode::UsernameTaken,
            RegistryError::BadCertificate => ErrorCode::BadCertificate,
            RegistryError::UnknownChallenge | RegistryError::WrongChallenge => ErrorCode::UnknownChallenge,
            RegistryError::ChallengeExpired => ErrorCode::ChallengeExpired,
            RegistryError::BadSignature => ErrorCode::BadSignature,
            RegistryError::UnknownUser => ErrorCode::UnknownUser,
            RegistryError::UnknownInstallation => ErrorCode::UnknownInstallation,
            RegistryError::Busy => ErrorCode::Busy,
            RegistryError::InstallationLimit { .. } => ErrorCode::InstallationLimit,
            RegistryError::Store(_) => ErrorCode::Internal,
        }
    }
}

/// In-memory indexes of the registry; the store is the source of truth.
#[derive(Debug, Default)]
pub struct Registry {
    /// tag -> installation currently bound to it (inverse of `Table::Bindings`).
    tags: BTreeMap<SenderTag, InstallationId>,
    /// Pending challenges, per tag (a tag's share is `challenges_per_tag_max`).
    challenges: TagShares,
    /// Pending login challenges, per account (its share is
    /// `login_challenges_per_account_max`), and the account of each.
    logins: Shares<String>,
    login_account: BTreeMap<Nonce, String>,
}

impl Registry {
    pub fn recover<S: Store>(store: &S) -> Result<Self, StoreError> {
        let mut tags = BTreeMap::new();
        for (k, v) in store.scan_prefix(Table::Bindings, &[])? {
            let installation: InstallationId = k.as_slice().try_into().map_err(|_| corrupt("bindings key"))?;
            let tag: SenderTag = nymstr_proto::codec::decode_record(&v).map_err(|_| corrupt("bindings value"))?;
            tags.insert(tag, installation);
        }
        let mut registry = Self { tags, ..Self::default() };
        for (k, v) in store.scan_prefix(Table::Challenges, &[])? {
            // A record that does not decode is not counted; the next sweep deletes it.
            if let (Ok(nonce), Ok(c)) =
                (Nonce::try_from(k.as_slice()), nymstr_proto::codec::decode_record::<PendingChallenge>(&v))
            {
                registry.challenges.admit(c.tag, c.expires_at_us, nonce, usize::MAX);
                if let Purpose::Login { installation } = &c.purpose
                    && let Some(account) = load::<String, _>(store, Table::Installations, installation)?
                {
                    registry.logins.admit(account.clone(), c.expires_at_us, nonce, usize::MAX);
                    registry.login_account.insert(nonce, account);
                }
            }
        }
        Ok(registry)
    }

    /// (installation, tag) for every bound installation, in installation order.
    pub fn bound_installations(&self) -> impl Iterator<Item = (InstallationId, SenderTag)> + '_ {
        let mut v: Vec<_> = self.tags.iter().map(|(t, i)| (*i, *t)).collect();
        v.sort();
        v.into_iter()
    }

    pub fn installation_for_tag(&self, tag: &SenderTag) -> Option<InstallationId> {
        self.tags.get(tag).copied()
    }

    pub fn tag_for_installation<S: Store>(
        &self,
        store: &S,
        installation: &InstallationId,
    ) -> Result<Option<SenderTag>, StoreError> {
        load(store, Table::Bindings, installation)
    }

    pub fn account<S: Store>(&self, store: &S, username: &str) -> Result<Option<Account>, StoreError> {
        load(store, Table::Accounts, username.as_bytes())
    }

    /// The account and certificate of a registered installation.
    pub fn installation<S: Store>(
        &self,
        store: &S,
        installation: &InstallationId,
    ) -> Result<Option<(Account, InstallationCert)>, StoreError> {
        let Some(username) = load::<String, _>(store, Table::Installations, installation)? else {
            return Ok(None);
        };
        let Some(account) = self.account(store, &username)? else { return Ok(None) };
        let cert =
            account.installations.iter().find(|c| identity::installation_id(&c.signing_key) == *installation).cloned();
        Ok(cert.map(|c| (account, c)))
    }

    pub fn on_register_request<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        username: &str,
        cert: InstallationCert,
    ) -> Result<(), RegistryError> {
        let username = identity::normalize_username(username)?;
        identity::verify_cert(&cert).map_err(|_| RegistryError::BadCertificate)?;
        // A low-order DH key would make every message to this device readable by anyone,
        // and clients refuse such certificates at lookup: refuse it here too.
        if !identity::dh_key_is_usable(&cert.dh_key) {
            return Err(RegistryError::BadCertificate);
        }
        if let Some(existing) = self.account(&*ctx.store, &username)? {
            // A retry by the owner (its `Registered` was lost) may complete again.
            if existing.account_key != cert.account_key {
                return Err(RegistryError::UsernameTaken);
            }
        }
        let purpose = Purpose::Register { username, cert };
        self.issue_challenge(ctx, tag, rid, purpose, None)
    }

    /// Verifies a registration and binds `tag`; returns the installation now bound.
    pub fn on_register_response<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        nonce: Nonce,
        account_sig: Sig,
        installation_sig: Sig,
    ) -> Result<InstallationId, RegistryError> {
        let Purpose::Register { username, cert } = self.take_challenge(ctx, tag, &nonce)? else {
            return Err(RegistryError::WrongChallenge);
        };
        let installation = identity::installation_id(&cert.signing_key);
        identity::verify(
            &cert.account_key,
            &identity::register_account_bytes(&nonce, &ctx.node, &username, &installation),
            &account_sig,
        )
        .map_err(|_| RegistryError::BadSignature)?;
        identity::verify(
            &cert.signing_key,
            &identity::register_installation_bytes(&nonce, &ctx.node, &username, &installation),
            &installation_sig,
        )
        .map_err(|_| RegistryError::BadSignature)?;
        let account = match self.account(&*ctx.store, &username)? {
            Some(existing) if existing.account_key != cert.account_key => return Err(RegistryError::UsernameTaken),
            Some(mut existing) => {
                if !existing.installations.iter().any(|c| c.signing_key == cert.signing_key) {
                    if existing.installations.len() >= INSTALLATIONS_PER_ACCOUNT_MAX {
                        return Err(RegistryError::InstallationLimit { max: INSTALLATIONS_PER_ACCOUNT_MAX });
                    }
                    existing.installations.push(cert);
                }
                existing
            }
            None => Account {
                username: username.clone(),
                account_key: cert.account_key,
                installations: vec![cert],
                registered_at_us: ctx.now,
            },
        };
        // An installation id already owned by another account cannot be claimed.
        if let Some(owner) = load::<String, _>(&*ctx.store, Table::Installations, &installation)?
            && owner != username
        {
            return Err(RegistryError::BadCertificate);
        }
        ctx.save(Table::Accounts, username.as_bytes(), &account)?;
        ctx.save(Table::Installations, &installation, &username)?;
        self.bind(ctx, installation, tag)?;
        ctx.send_durable(super::Peer::Tag(tag), rid, Body::Registered { username, installation });
        Ok(installation)
    }

    pub fn on_login_request<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        installation: InstallationId,
    ) -> Result<(), RegistryError> {
        let Some((account, _)) = self.installation(&*ctx.store, &installation)? else {
            return Err(RegistryError::UnknownInstallation);
        };
        // Accounts are stored under their folded username, which they carry.
        self.issue_challenge(ctx, tag, rid, Purpose::Login { installation }, Some(account.username))
    }

    /// Verifies a login and binds `tag`; returns the installation now bound. `queued` is the
    /// relay's count of messages waiting for an installation (the `LoggedIn` answer says it).
    pub fn on_login_response<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        rid: u64,
        tag: SenderTag,
        nonce: Nonce,
        installation_sig: Sig,
        queued: impl FnOnce(&InstallationId) -> u32,
    ) -> Result<InstallationId, RegistryError> {
        let Purpose::Login { installation } = self.take_challenge(ctx, tag, &nonce)? else {
            return Err(RegistryError::WrongChallenge);
        };
        let (_, cert) = self.installation(&*ctx.store, &installation)?.ok_or(RegistryError::UnknownInstallation)?;
        identity::verify(
            &cert.signing_key,
            &identity::login_bytes(&nonce, &ctx.node, &installation),
            &installation_sig,
        )
        .map_err(|_| RegistryError::BadSignature)?;
        self.bind(ctx, installation, tag)?;
        let queued = queued(&installation);
        ctx.send_durable(super::Peer::Tag(tag), rid, Body::LoggedIn { installation, queued });
        Ok(installation)
    }

    pub fn on_lookup<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        username: &str,
    ) -> Result<(), RegistryError> {
        let username = identity::normalize_username(username).map_err(|_| RegistryError::UnknownUser)?;
        let account = self.account(&*ctx.store, &username)?.ok_or(RegistryError::UnknownUser)?;
        // Durable-gated: a lookup never reveals a registration a crash could still undo.
        ctx.send_durable(
            super::Peer::Tag(tag),
            rid,
            Body::LookupResult {
                username: account.username,
                account_key: account.account_key,
                installations: account.installations,
            },
        );
        Ok(())
    }

    /// Deletes expired challenges.
    pub fn sweep<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        for (k, v) in ctx.store.scan_prefix(Table::Challenges, &[])? {
            match nymstr_proto::codec::decode_record::<PendingChallenge>(&v) {
                Ok(c) if c.expires_at_us > ctx.now => {}
                Ok(c) => {
                    ctx.store.delete(Table::Challenges, &k)?;
                    if let Ok(nonce) = Nonce::try_from(k.as_slice()) {
                        self.challenges.forget(&c.tag, &nonce);
                        self.forget_login(&nonce);
                    }
                }
                Err(_) => ctx.store.delete(Table::Challenges, &k)?,
            }
        }
        Ok(())
    }

    /// Issues a challenge to `tag`; `login_account`: the (folded) account a login
    /// challenge is for, whose share of login challenges it counts against.
    fn issue_challenge<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        rid: u64,
        purpose: Purpose,
        login_account: Option<String>,
    ) -> Result<(), RegistryError> {
        // A tag at its share replaces its own oldest challenge; only a new tag's first
        // challenges can meet a full table.
        let per_tag_max = ctx.config.challenges_per_tag_max;
        if self.challenges.held(&tag) < per_tag_max && self.challenges.total() >= ctx.config.challenges_pending_max {
            return Err(RegistryError::Busy);
        }
        let mut nonce = [0u8; 32];
        ctx.rng.fill_bytes(&mut nonce);
        let expires_at_us = ctx.now + ctx.config.challenge_ttl_us;
        ctx.save(Table::Challenges, &nonce, &PendingChallenge { purpose, tag, expires_at_us })?;
        if let Some(evicted) = self.challenges.admit(tag, expires_at_us, nonce, per_tag_max) {
            ctx.store.delete(Table::Challenges, &evicted)?;
            self.forget_login(&evicted);
        }
        // Many tags asking to log in as one account hold at most its share between them:
        // past it the account's oldest login challenge goes (whichever tag held it), so a
        // flood naming one account neither fills the table nor keeps the owner out (the
        // owner's newest challenge is the last to go, and its client retries).
        if let Some(account) = login_account {
            let per_account_max = ctx.config.login_challenges_per_account_max;
            if let Some(evicted) = self.logins.admit(account.clone(), expires_at_us, nonce, per_account_max) {
                self.login_account.remove(&evicted);
                if let Some(old) = ctx.load::<PendingChallenge>(Table::Challenges, &evicted)? {
                    self.challenges.forget(&old.tag, &evicted);
                }
                ctx.store.delete(Table::Challenges, &evicted)?;
            }
            self.login_account.insert(nonce, account);
        }
        // Challenges need not be durable: one lost in a crash makes the client retry.
        ctx.send(super::Peer::Tag(tag), rid, Body::Challenge { nonce, expires_at_us, node: ctx.node });
        Ok(())
    }

    /// Consumes a challenge answered by the tag it was issued to: it is then deleted
    /// whatever the outcome (single use). An answer from any other tag is refused as if the
    /// challenge did not exist and leaves it in place, so a captured answer replayed first
    /// from elsewhere neither binds that tag nor spends the owner's challenge.
    fn take_challenge<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        tag: SenderTag,
        nonce: &Nonce,
    ) -> Result<Purpose, RegistryError> {
        let pending: PendingChallenge = ctx.load(Table::Challenges, nonce)?.ok_or(RegistryError::UnknownChallenge)?;
        if pending.tag != tag {
            return Err(RegistryError::UnknownChallenge);
        }
        ctx.store.delete(Table::Challenges, nonce)?;
        self.challenges.forget(&tag, nonce);
        self.forget_login(nonce);
        if pending.expires_at_us <= ctx.now {
            return Err(RegistryError::ChallengeExpired);
        }
        Ok(pending.purpose)
    }

    /// Forgets a login challenge in its account's share (answered, expired or evicted).
    fn forget_login(&mut self, nonce: &Nonce) {
        if let Some(account) = self.login_account.remove(nonce) {
            self.logins.forget(&account, nonce);
        }
    }

    fn bind<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        installation: InstallationId,
        tag: SenderTag,
    ) -> Result<(), StoreError> {
        if let Some(old) = self.tag_for_installation(&*ctx.store, &installation)? {
            self.tags.remove(&old);
        }
        if let Some(previous) = self.tags.insert(tag, installation)
            && previous != installation
        {
            ctx.store.delete(Table::Bindings, &previous)?;
        }
        ctx.save(Table::Bindings, &installation, &tag)
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt { table: "bindings", detail: what.to_string() }
}
