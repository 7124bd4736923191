//! Activity of hosted groups: an upper bound on each group's last activity, kept in the
//! store so abandoned groups expire (`specs/groups.md` §8.1) even across restarts.

use super::Hosted;
use crate::actors::Ctx;
use crate::store::{Store, StoreError, Table};
use nymstr_proto::wire::GroupId;

/// Meta key prefix of a group's activity bound: `group_active/` || group id -> µs, an
/// instant no earlier than the group's last activity.
pub(super) const META_GROUP_ACTIVE: &[u8] = b"group_active/";

/// A meta key: `prefix` || group id.
pub(super) fn meta_key(prefix: &[u8], group_id: &GroupId) -> Vec<u8> {
    [prefix, group_id.as_slice()].concat()
}

/// Notes activity on a group. The store keeps an upper bound on the last activity, written
/// at most once per sixteenth of the idle period: after a restart a group may live up to
/// that much longer than the period, never less.
pub(super) fn touch<S: Store>(ctx: &mut Ctx<'_, S>, group_id: &GroupId, g: &mut Hosted) -> Result<(), StoreError> {
    g.active_us = g.active_us.max(ctx.now);
    if ctx.now > g.active_bound_us {
        let bound = ctx.now.saturating_add((ctx.config.group_idle_expiry_us / 16).max(1));
        ctx.save(Table::Meta, &meta_key(META_GROUP_ACTIVE, group_id), &bound)?;
        g.active_bound_us = bound;
    }
    Ok(())
}
