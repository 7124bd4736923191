//! Lookups and the contact cache: a contact's account key and installations as the node
//! (or, for `user@node`, a verified transparency proof) answered, the account keys
//! pinned on first use, and what happens to messages when a contact cannot be resolved.

use nymstr_proto::federation::descriptor::QualifiedName;
use nymstr_proto::identity;
use nymstr_proto::wire::{Body, ErrorCode, InstallationCert, PublicKey};

use crate::seal::OpenError;

use super::{ClientCore, ClientError, Contact, Event, Operation, Step, TimeUs, contact_name};

impl ClientCore {
    pub fn contact(&self, username: &str) -> Option<&Contact> {
        self.contacts.get(username)
    }

    pub fn contacts(&self) -> impl Iterator<Item = (&str, &Contact)> {
        self.contacts.iter().map(|(n, c)| (n.as_str(), c))
    }

    /// The account key pinned for `username` (trust on first use).
    pub fn pinned(&self, username: &str) -> Option<&PublicKey> {
        self.pins.get(username).map(|(_, k)| k)
    }

    /// Every pin, oldest first.
    pub fn pins(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.pin_order.values().filter_map(|n| self.pins.get(n).map(|(_, k)| (n.as_str(), k)))
    }

    /// Replaces the pin of `username` (`user` or `user@<node id>`) with `account_key` (the
    /// user checked it out of band, after a `KeyChanged` or for a group member whose name
    /// is not verified) and forgets the cached contact so it is looked up again.
    pub fn trust(&mut self, username: &str, account_key: PublicKey) -> Result<(), ClientError> {
        let username = contact_name(username)?;
        if let Some((seq, _)) = self.pins.remove(&username) {
            self.pin_order.remove(&seq);
        }
        self.contacts.remove(&username);
        self.pin(username, account_key);
        Ok(())
    }

    pub fn lookup(&mut self, now: TimeUs, username: &str) -> Result<(), ClientError> {
        let username = contact_name(username)?;
        self.start_lookup(now, username);
        Ok(())
    }

    pub(super) fn start_lookup(&mut self, now: TimeUs, username: String) {
        if !self.lookups.insert(username.clone()) {
            return;
        }
        let body = self.lookup_body(&username);
        self.request(now, Step::Lookup(username), body);
    }

    /// `KtLookup` for `user@node` (with the log size we accepted from that node), plain
    /// `Lookup` for a user of the home node.
    pub(super) fn lookup_body(&self, username: &str) -> Body {
        match QualifiedName::parse(username) {
            Ok(q) if username.contains('@') => {
                Body::KtLookup { name: username.to_string(), from_log_size: self.verifier.known_log_size(&q.node) }
            }
            _ => Body::Lookup { username: username.to_string() },
        }
    }

    pub(super) fn on_lookup_result(
        &mut self,
        now: TimeUs,
        rid: u64,
        username: String,
        account_key: PublicKey,
        installations: Vec<InstallationCert>,
    ) {
        let Some(p) = self.pending.remove(&rid) else { return };
        let Step::Lookup(asked) = p.step else { return };
        self.lookups.remove(&asked);
        // Keep only certificates the account key really signed: a node cannot add devices.
        let installations: Vec<_> = installations
            .into_iter()
            .filter(|c| {
                c.account_key == account_key
                    && identity::verify_cert(c).is_ok()
                    && identity::dh_key_is_usable(&c.dh_key)
            })
            .collect();
        if asked != username || installations.is_empty() {
            self.fail_contact(&asked, ErrorCode::BadCertificate, "lookup answer has no valid installation");
            return;
        }
        match self.pins.get(&username).map(|(_, k)| k) {
            Some(pinned) if *pinned != account_key => {
                let pinned = *pinned;
                self.events.push_back(Event::KeyChanged { username: username.clone(), pinned, offered: account_key });
                self.fail_contact(&asked, ErrorCode::BadCertificate, "account key differs from the pinned one");
                return;
            }
            Some(_) => {}
            None => self.pin(username.clone(), account_key),
        }
        if self.contacts.len() >= self.config.contacts_max && !self.contacts.contains_key(&username) {
            let oldest = self.contacts.iter().min_by_key(|(_, c)| c.fetched_at_us).map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.contacts.remove(&oldest);
            }
        }
        self.contacts.insert(username.clone(), Contact { account_key, installations, fetched_at_us: now });
        self.events.push_back(Event::LookedUp { username: username.clone() });
        for dm in self.outbox.remove(&username).unwrap_or_default() {
            self.transmit_dm(now, dm);
        }
        for inbound in self.unverified.remove(&username).unwrap_or_default() {
            self.open_and_ack(now, inbound);
        }
    }

    pub(super) fn pin(&mut self, username: String, account_key: PublicKey) {
        if self.pins.len() >= self.config.pins_max
            && let Some((_, oldest)) = self.pin_order.pop_first()
        {
            self.pins.remove(&oldest);
        }
        let seq = self.next_pin_seq;
        self.next_pin_seq += 1;
        self.pins.insert(username.clone(), (seq, account_key));
        self.pin_order.insert(seq, username);
    }

    /// A contact could not be resolved: fail sends to it, discard deliveries from it.
    pub(super) fn fail_contact(&mut self, name: &str, code: ErrorCode, detail: &str) {
        self.events.push_back(Event::Failed {
            what: Operation::Lookup(name.to_string()),
            code,
            detail: detail.to_string(),
        });
        for dm in self.outbox.remove(name).unwrap_or_default() {
            self.events.push_back(Event::Failed {
                what: Operation::Send { to: dm.to, msg_id: dm.msg_id },
                code,
                detail: detail.to_string(),
            });
        }
        for inbound in self.unverified.remove(name).unwrap_or_default() {
            self.answer(inbound.source, inbound.msg_id, Err((ErrorCode::BadCertificate, "sender not verified")));
            self.events.push_back(Event::Rejected {
                from: inbound.from_username,
                msg_id: inbound.msg_id,
                reason: OpenError::BadCertificate,
            });
        }
    }
}
