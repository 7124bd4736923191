//! Relay core: verifies a direct message's outer signature, queues it durably for every
//! targeted installation of the recipient, acknowledges the sender only once the queue
//! write is durable, delivers to bound tags with a bounded in-flight window, redelivers
//! what is not acknowledged, and deletes on the recipient's ack. Normative text:
//! `specs/relay.md`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::registry::{Account, Registry};
use super::{CodedError, Ctx, NodeStats, Peer, SenderTag, TimeUs, load};
use crate::store::{Store, StoreError, Table};
use nymstr_proto::identity;
use nymstr_proto::limits::{ACK_IDS_MAX, DM_PAYLOAD_BYTES_MAX};
use nymstr_proto::wire::{Body, ErrorCode, InstallationCert, InstallationId, MsgId, SendDm};

/// Meta key prefix of each installation's next delivery id. Ids count per installation, so
/// a recipient learns nothing about the node's volume from them.
const META_NEXT_DELIVERY_ID: &[u8] = b"next_delivery_id/";

/// Dedupe entries are indexed by the minute they expire, so a sweep reads only what has
/// expired (amortised O(expired)), never the whole table.
const EXPIRY_BUCKET_US: u64 = 60_000_000;
/// Meta key of the first expiry bucket not yet swept.
const META_SEEN_SWEEP_NEXT: &[u8] = b"seen_sweep_next";
/// Buckets one sweep visits at most (a node down for days catches up over several sweeps).
const SWEEP_BUCKETS_MAX: u64 = 24 * 60;

fn expiry_key(expires_at_us: TimeUs, seen: &[u8; 48]) -> [u8; 56] {
    let mut k = [0u8; 56];
    k[..8].copy_from_slice(&(expires_at_us / EXPIRY_BUCKET_US).to_be_bytes());
    k[8..].copy_from_slice(seen);
    k
}

fn next_id_key(installation: &InstallationId) -> Vec<u8> {
    [META_NEXT_DELIVERY_ID, installation.as_slice()].concat()
}

/// A message waiting in one installation's offline queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedDm {
    pub from_username: String,
    pub from: InstallationId,
    pub msg_id: MsgId,
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    pub queued_at_us: TimeUs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SeenSend {
    expires_at_us: TimeUs,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("sender installation is not registered")]
    UnknownSender,
    #[error("outer signature does not verify")]
    BadSignature,
    #[error("unknown recipient")]
    UnknownRecipient,
    #[error("message targets no installation")]
    NoPayload,
    #[error("message targets one installation twice")]
    DuplicateInstallation,
    #[error("payloads do not match the recipient's installations: look the recipient up again")]
    StaleRecipient,
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("recipient's queue is full ({max} messages)")]
    QueueFull { max: u32 },
    #[error("recipient's queue already holds {max} messages from this sender")]
    SenderShareFull { max: u32 },
    #[error("this tag is not logged in")]
    NotLoggedIn,
    #[error("{count} delivery ids exceed the limit of {max}")]
    TooManyAcks { count: usize, max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CodedError for RelayError {
    fn code(&self) -> ErrorCode {
        match self {
            RelayError::UnknownSender => ErrorCode::UnknownInstallation,
            RelayError::BadSignature => ErrorCode::BadSignature,
            RelayError::UnknownRecipient => ErrorCode::UnknownUser,
            RelayError::NoPayload | RelayError::DuplicateInstallation | RelayError::TooManyAcks { .. } => {
                ErrorCode::Malformed
            }
            RelayError::StaleRecipient => ErrorCode::StaleRecipient,
            RelayError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            RelayError::QueueFull { .. } | RelayError::SenderShareFull { .. } => ErrorCode::QueueFull,
            RelayError::NotLoggedIn => ErrorCode::NotLoggedIn,
            RelayError::Store(_) => ErrorCode::Internal,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    due_us: TimeUs,
    backoff_us: TimeUs,
}

#[derive(Debug, Default)]
pub struct Relay {
    next_delivery_id: BTreeMap<InstallationId, u64>,
    queue_len: BTreeMap<InstallationId, u32>,
    /// Recipient installation -> sender username -> messages queued: each sender's share
    /// of a queue is bounded by `queue_per_sender_max`. Nested, so the per-message checks
    /// look a sender up by `&str` (no key to build).
    per_sender: BTreeMap<InstallationId, BTreeMap<String, u32>>,
    inflight: BTreeMap<InstallationId, BTreeMap<u64, Inflight>>,
    timers: BTreeSet<(TimeUs, InstallationId, u64)>,
}

fn queue_key(installation: &InstallationId, delivery_id: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(installation);
    k[32..].copy_from_slice(&delivery_id.to_be_bytes());
    k
}

fn seen_key(from: &InstallationId, msg_id: &MsgId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(from);
    k[32..].copy_from_slice(msg_id);
    k
}

impl Relay {
    pub fn recover<S: Store>(store: &S) -> Result<Self, StoreError> {
        let mut relay = Relay::default();
        for (k, v) in store.scan_prefix(Table::Meta, META_NEXT_DELIVERY_ID)? {
            let installation: InstallationId = k[META_NEXT_DELIVERY_ID.len()..]
                .try_into()
                .map_err(|_| StoreError::Corrupt { table: "meta", detail: "delivery id key".into() })?;
            let next: u64 = nymstr_proto::codec::decode_record(&v)
                .map_err(|e| StoreError::Corrupt { table: "meta", detail: e.to_string() })?;
            relay.next_delivery_id.insert(installation, next);
        }
        for (k, v) in store.scan_prefix(Table::Queues, &[])? {
            if k.len() != 40 {
                return Err(StoreError::Corrupt { table: "queues", detail: "key length".into() });
            }
            let queued: QueuedDm = nymstr_proto::codec::decode_record(&v)
                .map_err(|e| StoreError::Corrupt { table: "queues", detail: e.to_string() })?;
            let installation: InstallationId = k[..32].try_into().expect("32 bytes");
            let id = u64::from_be_bytes(k[32..].try_into().expect("8 bytes"));
            let next = relay.next_delivery_id.entry(installation).or_insert(1);
            *next = (*next).max(id + 1);
            *relay.queue_len.entry(installation).or_default() += 1;
            *relay.per_sender.entry(installation).or_default().entry(queued.from_username).or_default() += 1;
        }
        Ok(relay)
    }

    /// Messages queued for one installation (kept as a count; nothing is read).
    pub fn queued(&self, installation: &InstallationId) -> u32 {
        self.queue_len.get(installation).copied().unwrap_or(0)
    }

    pub fn queued_total(&self) -> u64 {
        self.queue_len.values().map(|&n| u64::from(n)).sum()
    }

    pub fn next_timeout(&self) -> Option<TimeUs> {
        self.timers.first().map(|(t, _, _)| *t)
    }

    pub fn on_send<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        registry: &Registry,
        tag: SenderTag,
        rid: u64,
        dm: SendDm,
        stats: &mut NodeStats,
    ) -> Result<(), RelayError> {
        let (sender, _) = self.authenticate(ctx, registry, tag, &dm)?;
        let to = dm.to.clone();
        self.enqueue(ctx, registry, Peer::Tag(tag), rid, sender.username, &to, dm, stats)
    }

    /// Checks a client's `SendDm`: a registered sender installation, its outer signature,
    /// and that it arrives on that installation's own logged-in tag.
    pub fn authenticate<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        registry: &Registry,
        tag: SenderTag,
        dm: &SendDm,
    ) -> Result<(Account, InstallationCert), RelayError> {
        let (sender, sender_cert) = registry.installation(&*ctx.store, &dm.from)?.ok_or(RelayError::UnknownSender)?;
        identity::verify(&sender_cert.signing_key, &identity::send_dm_signing_bytes(dm), &dm.sig)
            .map_err(|_| RelayError::BadSignature)?;
        // Only the sender's own logged-in tag may submit: a captured SendDm replayed from
        // anywhere else is refused, whatever the age of the dedupe entry.
        if registry.installation_for_tag(&tag) != Some(dm.from) {
            return Err(RelayError::NotLoggedIn);
        }
        Ok((sender, sender_cert))
    }

    /// Queues an authenticated DM for the local user `to` and acknowledges it to
    /// `reply_to` (the sender's tag, or the forwarding peer) once durable. A retried
    /// (sender, msg id) is acknowledged again without queueing twice.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        registry: &Registry,
        reply_to: Peer,
        rid: u64,
        from_username: String,
        to: &str,
        dm: SendDm,
        stats: &mut NodeStats,
    ) -> Result<(), RelayError> {
        let seen = seen_key(&dm.from, &dm.msg_id);
        let remembered: Option<SeenSend> = ctx.load(Table::SeenSends, &seen)?;
        // An entry past its expiry no longer dedupes, whether or not a sweep removed it yet.
        if remembered.is_some_and(|s| s.expires_at_us > ctx.now) {
            // A retried send, already queued: ack again once that write is durable, even
            // if the recipient's installations changed since.
            ctx.send_durable(reply_to, rid, Body::SendAck { msg_id: dm.msg_id });
            return Ok(());
        }
        let to = identity::normalize_username(to).map_err(|_| RelayError::UnknownRecipient)?;
        let recipient = registry.account(&*ctx.store, &to)?.ok_or(RelayError::UnknownRecipient)?;
        if dm.payloads.is_empty() {
            return Err(RelayError::NoPayload);
        }
        let mut targets = BTreeSet::new();
        for p in &dm.payloads {
            if p.sealed.len() > DM_PAYLOAD_BYTES_MAX {
                return Err(RelayError::PayloadTooLarge { len: p.sealed.len(), max: DM_PAYLOAD_BYTES_MAX });
            }
            if !targets.insert(p.installation) {
                return Err(RelayError::DuplicateInstallation);
            }
        }
        // Every installation of the recipient gets its own copy (F1): a sender whose view of
        // the recipient's devices is out of date must look them up again.
        let current: BTreeSet<InstallationId> =
            recipient.installations.iter().map(|c| identity::installation_id(&c.signing_key)).collect();
        if targets != current {
            return Err(RelayError::StaleRecipient);
        }
        let max = ctx.config.queue_depth_max;
        if targets.iter().any(|i| self.queue_len.get(i).copied().unwrap_or(0) >= max) {
            return Err(RelayError::QueueFull { max });
        }
        // One sender may fill only its share of a queue, so it cannot lock everyone else out.
        let share = ctx.config.queue_per_sender_max;
        if targets.iter().any(|i| self.sender_share(i, &from_username) >= share) {
            return Err(RelayError::SenderShareFull { max: share });
        }
        for p in dm.payloads {
            let next = self.next_delivery_id.entry(p.installation).or_insert(1);
            let id = *next;
            *next += 1;
            ctx.save(Table::Meta, &next_id_key(&p.installation), &(id + 1))?;
            let queued = QueuedDm {
                from_username: from_username.clone(),
                from: dm.from,
                msg_id: dm.msg_id,
                sealed: p.sealed,
                queued_at_us: ctx.now,
            };
            ctx.save(Table::Queues, &queue_key(&p.installation, id), &queued)?;
            *self.queue_len.entry(p.installation).or_default() += 1;
            let shares = self.per_sender.entry(p.installation).or_default();
            match shares.get_mut(from_username.as_str()) {
                Some(n) => *n += 1,
                None => {
                    shares.insert(from_username.clone(), 1);
                }
            }
        }
        let expires_at_us = ctx.now + ctx.config.seen_send_ttl_us;
        ctx.save(Table::SeenSends, &seen, &SeenSend { expires_at_us })?;
        ctx.store.put(Table::SeenExpiry, &expiry_key(expires_at_us, &seen), &[])?;
        ctx.send_durable(reply_to, rid, Body::SendAck { msg_id: dm.msg_id });
        for installation in targets {
            if let Some(bound) = registry.tag_for_installation(&*ctx.store, &installation)? {
                self.deliver_pending(ctx, &installation, bound, stats)?;
            }
        }
        Ok(())
    }

    /// Messages `sender` has queued for `installation`.
    fn sender_share(&self, installation: &InstallationId, sender: &str) -> u32 {
        self.per_sender.get(installation).and_then(|m| m.get(sender)).copied().unwrap_or(0)
    }

    pub fn on_ack<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        registry: &Registry,
        tag: SenderTag,
        _rid: u64,
        delivery_ids: &[u64],
        stats: &mut NodeStats,
    ) -> Result<(), RelayError> {
        if delivery_ids.len() > ACK_IDS_MAX {
            return Err(RelayError::TooManyAcks { count: delivery_ids.len(), max: ACK_IDS_MAX });
        }
        let installation = registry.installation_for_tag(&tag).ok_or(RelayError::NotLoggedIn)?;
        for &id in delivery_ids {
            let key = queue_key(&installation, id);
            if let Some(queued) = ctx.load::<QueuedDm>(Table::Queues, &key)? {
                ctx.store.delete(Table::Queues, &key)?;
                if let Some(shares) = self.per_sender.get_mut(&installation)
                    && let Some(n) = shares.get_mut(&queued.from_username)
                {
                    *n -= 1;
                    if *n == 0 {
                        shares.remove(&queued.from_username);
                        if shares.is_empty() {
                            self.per_sender.remove(&installation);
                        }
                    }
                }
                if let Some(n) = self.queue_len.get_mut(&installation) {
                    *n -= 1;
                    if *n == 0 {
                        self.queue_len.remove(&installation);
                    }
                }
            }
            self.forget_inflight(&installation, id);
        }
        self.deliver_pending(ctx, &installation, tag, stats)?;
        Ok(())
    }

    /// A tag was (re-)bound to `installation`: everything in flight goes again to the new tag.
    pub fn on_bound<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        installation: &InstallationId,
        tag: SenderTag,
        stats: &mut NodeStats,
    ) -> Result<(), RelayError> {
        if let Some(old) = self.inflight.remove(installation) {
            for (id, f) in old {
                self.timers.remove(&(f.due_us, *installation, id));
            }
        }
        self.deliver_pending(ctx, installation, tag, stats)?;
        Ok(())
    }

    /// Sends queued messages not yet in flight, oldest first, up to the window.
    pub fn deliver_pending<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        installation: &InstallationId,
        tag: SenderTag,
        stats: &mut NodeStats,
    ) -> Result<(), StoreError> {
        let window = ctx.config.deliveries_inflight_max;
        let inflight_now = self.inflight.get(installation).map_or(0, BTreeMap::len);
        if inflight_now >= window || !self.queue_len.contains_key(installation) {
            return Ok(());
        }
        let mut room = window - inflight_now;
        // Pages of the queue, oldest first: never more than a window's worth copied at once
        // (a queue holds up to `queue_depth_max` messages of up to 32 KiB).
        let page_len = window.max(1);
        let mut cursor: Option<Vec<u8>> = None;
        while room > 0 {
            let page = ctx.store.scan_page(Table::Queues, installation, cursor.as_deref(), page_len)?;
            let exhausted = page.len() < page_len;
            for (k, v) in page {
                if room == 0 {
                    break;
                }
                let id = u64::from_be_bytes(k[32..40].try_into().expect("queue key is 40 bytes"));
                cursor = Some(k);
                if self.inflight.get(installation).is_some_and(|m| m.contains_key(&id)) {
                    continue;
                }
                let queued: QueuedDm = nymstr_proto::codec::decode_record(&v)
                    .map_err(|e| StoreError::Corrupt { table: "queues", detail: e.to_string() })?;
                self.send_delivery(ctx, tag, id, queued);
                let backoff_us = ctx.config.redeliver_after_us;
                self.track(installation, id, Inflight { due_us: ctx.now + backoff_us, backoff_us });
                stats.deliveries += 1;
                room -= 1;
            }
            if exhausted {
                break;
            }
        }
        Ok(())
    }

    pub fn on_timeout<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        registry: &Registry,
        stats: &mut NodeStats,
    ) -> Result<(), StoreError> {
        while let Some(&(due, installation, id)) = self.timers.first() {
            if due > ctx.now {
                break;
            }
            self.timers.pop_first();
            let Some(f) = self.inflight.get(&installation).and_then(|m| m.get(&id)).copied() else { continue };
            self.forget_inflight(&installation, id);
            let tag = registry.tag_for_installation(&*ctx.store, &installation)?;
            let queued: Option<QueuedDm> = load(&*ctx.store, Table::Queues, &queue_key(&installation, id))?;
            if let (Some(tag), Some(queued)) = (tag, queued) {
                self.send_delivery(ctx, tag, id, queued);
                let backoff_us = (f.backoff_us * 2).min(ctx.config.redeliver_after_max_us);
                self.track(&installation, id, Inflight { due_us: ctx.now + backoff_us, backoff_us });
                stats.redeliveries += 1;
            }
        }
        Ok(())
    }

    /// Forgets expired send-dedupe entries, one expiry minute at a time: only buckets that
    /// lie wholly in the past are read, so the work is proportional to what expired.
    pub fn sweep<S: Store>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), StoreError> {
        let first_open_bucket = ctx.now / EXPIRY_BUCKET_US;
        let cursor = ctx.load::<u64>(Table::Meta, META_SEEN_SWEEP_NEXT)?;
        let mut bucket = match cursor {
            Some(next) => next,
            // Never swept: start at the oldest bucket present (empty index: nothing to do).
            None => match ctx.store.scan_prefix(Table::SeenExpiry, &[])?.first() {
                Some((k, _)) => u64::from_be_bytes(k[..8].try_into().expect("expiry key is 56 bytes")),
                None => first_open_bucket,
            },
        };
        let stop = first_open_bucket.min(bucket.saturating_add(SWEEP_BUCKETS_MAX));
        while bucket < stop {
            for (k, _) in ctx.store.scan_prefix(Table::SeenExpiry, &bucket.to_be_bytes())? {
                let seen = &k[8..];
                // The pair may have been sent again since and carry a later expiry: keep it.
                let current: Option<SeenSend> = ctx.load(Table::SeenSends, seen)?;
                if current.is_none_or(|s| s.expires_at_us <= ctx.now) {
                    ctx.store.delete(Table::SeenSends, seen)?;
                }
                ctx.store.delete(Table::SeenExpiry, &k)?;
            }
            bucket += 1;
        }
        if cursor != Some(bucket) {
            ctx.save(Table::Meta, META_SEEN_SWEEP_NEXT, &bucket)?;
        }
        Ok(())
    }

    fn send_delivery<S: Store>(&self, ctx: &mut Ctx<'_, S>, tag: SenderTag, id: u64, q: QueuedDm) {
        ctx.send_durable(
            Peer::Tag(tag),
            0,
            Body::Deliver {
                delivery_id: id,
                from_username: q.from_username,
                from: q.from,
                msg_id: q.msg_id,
                sealed: q.sealed,
            },
        );
    }

    fn track(&mut self, installation: &InstallationId, id: u64, f: Inflight) {
        self.inflight.entry(*installation).or_default().insert(id, f);
        self.timers.insert((f.due_us, *installation, id));
    }

    fn forget_inflight(&mut self, installation: &InstallationId, id: u64) {
        if let Some(m) = self.inflight.get_mut(installation) {
            if let Some(f) = m.remove(&id) {
                self.timers.remove(&(f.due_us, *installation, id));
            }
            if m.is_empty() {
                self.inflight.remove(installation);
            }
        }
    }
}
