//! The hosted group member: restoring it, whether its groups are caught up, its frames
//! (sent after the next save) and the events of its connections to group nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use nymstr_proto::wire::{Body, GroupId};
use serde_json::json;

use crate::cli::clock::{deadline_after, os_seed};
use crate::cli::error::CliError;
use crate::cli::output::{display_name, short_id};
use crate::cli::session::{Flow, Goal, Session, group_config};
use crate::net::LinkEvent;
use nymstr_client_core::core::TimeUs;
use nymstr_client_core::group::{GroupCore, MemberKeys};

impl Session {
    /// Restores the group member from the home (registered accounts only). `active`: it
    /// runs, i.e. subscribes to its groups and sends; a passive one only signs invites.
    pub fn enable_groups(&mut self, active: bool) -> Result<(), CliError> {
        let (Some(username), Some(id)) = (self.core.username(), self.core.identity()) else {
            return Err(CliError::NotRegistered);
        };
        if !self.core.is_registered() {
            return Err(CliError::NotRegistered);
        }
        let keys =
            MemberKeys { installation: id.installation.clone(), cert: id.cert.clone(), username: username.to_string() };
        let state = self.home.group_state()?;
        let core = GroupCore::restore(keys, os_seed()?, group_config(), state).map_err(|e| {
            CliError::Usage(format!("stored group state of {} is unusable: {e}", self.home.dir().display()))
        })?;
        for g in core.groups().into_iter().chain(core.pending_groups()) {
            self.names.insert(g, display_name(&core, &g));
            if core.groups().contains(&g) {
                self.members.insert(g, core.members(&g));
            }
        }
        self.groups = Some(core);
        self.groups_active = active;
        Ok(())
    }

    /// The group core (after `enable_groups`).
    pub fn gcore(&mut self) -> &mut GroupCore {
        self.groups.as_mut().expect("enable_groups was called")
    }

    /// Connects to a group node now: an unreachable node is an error before anything is
    /// attempted there.
    pub async fn connect_group_node(&mut self, addr: &str) -> Result<(), CliError> {
        self.links.connect(addr).await.map_err(CliError::Node)?;
        self.failed_nodes.remove(addr);
        Ok(())
    }

    /// The group's display name: its name, else the start of its id.
    pub fn group_name(&self, group: &GroupId) -> String {
        if let Some(core) = &self.groups {
            let n = display_name(core, group);
            if !n.starts_with('#') {
                return n;
            }
        }
        self.names.get(group).cloned().unwrap_or_else(|| short_id(group))
    }

    /// The node confirmed our subscription and we applied the log up to where it stood
    /// then, with none of our uploads waiting for an answer.
    pub fn group_settled(&self, group: &GroupId) -> bool {
        let Some(core) = &self.groups else { return true };
        let Some(at) = self.subscribed.get(group) else { return false };
        core.next_seq(group).is_some_and(|n| n >= *at) && !self.uploads_in_flight.values().any(|g| g == group)
    }

    /// Every group we are a member of is settled, or its node is unreachable.
    pub fn groups_settled(&self) -> bool {
        let Some(core) = &self.groups else { return true };
        core.groups().iter().all(|g| {
            self.group_settled(g)
                || self.unhosted.contains(g)
                || core.group_node(g).is_some_and(|n| self.failed_nodes.contains(String::from_utf8_lossy(n).as_ref()))
        })
    }

    /// Takes the group core's frames (sent after the next save) and notes its uploads.
    pub(super) fn collect_group_transmits(&mut self) {
        if !self.groups_active {
            return;
        }
        let Some(core) = self.groups.as_mut() else { return };
        for t in core.drain_transmits() {
            if let Body::GroupUpload { group_id, .. } = &t.envelope.body {
                self.uploads_in_flight.insert(t.envelope.request_id, *group_id);
            }
            self.group_out.push(t);
        }
        // Uploads of groups we no longer hold will not be answered to anyone who cares.
        let live: BTreeSet<GroupId> = core.groups().into_iter().chain(core.pending_groups()).collect();
        self.uploads_in_flight.retain(|_, g| live.contains(g));
    }

    /// A frame, connection or loss on a group node connection.
    pub(super) fn on_link_event(
        &mut self,
        goal: &mut dyn Goal,
        ev: LinkEvent,
        now: TimeUs,
    ) -> Option<Result<(), CliError>> {
        match ev {
            LinkEvent::Connected { addr, .. } => {
                self.failed_nodes.remove(&addr);
                let again = !self.linked_before.insert(addr.clone());
                if self.group_reconnect.remove(&addr).is_some() {
                    self.out.notice(
                        "reconnected",
                        &format!("connected to group node {addr} again"),
                        json!({ "node": addr, "groups": true }),
                    );
                }
                if again && let Some(g) = self.groups.as_mut() {
                    // A new connection is a new sender tag: subscribe again.
                    g.reconnected(now);
                }
            }
            LinkEvent::Frame { addr, bytes, .. } => {
                let Ok(env) = nymstr_proto::codec::decode_frame(&bytes) else { return None };
                match &env.body {
                    Body::GroupSubscribed { group_id, next_seq, .. } => {
                        self.subscribed.insert(*group_id, *next_seq);
                    }
                    Body::GroupUploadAck { .. } | Body::Error { .. } => {
                        self.uploads_in_flight.remove(&env.request_id);
                    }
                    _ => {}
                }
                if let Some(g) = self.groups.as_mut() {
                    g.handle_envelope(now, addr.as_bytes(), env);
                }
            }
            LinkEvent::Lost { addr, error, .. } => {
                // Subscriptions were bound to the lost connection's tag.
                if let Some(core) = &self.groups {
                    let on_node: Vec<GroupId> = self
                        .subscribed
                        .keys()
                        .filter(|g| core.group_node(g).is_some_and(|n| n == addr.as_bytes()))
                        .copied()
                        .collect();
                    for g in on_node {
                        self.subscribed.remove(&g);
                    }
                }
                let first = self.failed_nodes.insert(addr.clone());
                if self.keep_connected {
                    let backoff = self.group_reconnect.get(&addr).map_or(Duration::from_secs(1), |(_, b)| *b);
                    let next = (backoff * 2).min(Duration::from_secs(30));
                    self.group_reconnect.insert(addr.clone(), (deadline_after(backoff), next));
                }
                if first {
                    self.out.notice(
                        "group_node_lost",
                        &format!("group node {error}{}", if self.keep_connected { "; reconnecting" } else { "" }),
                        json!({ "node": addr, "reason": error.to_string() }),
                    );
                }
                if let Flow::Done(r) = goal.on_group_link_lost(self, &addr, &error) {
                    return Some(r);
                }
            }
        }
        None
    }
}
