//! Shares of a challenge table. Each tag holds at most `per_tag_max` pending challenges;
//! a new one past that replaces the tag's oldest, so one tag (or a few) never fills the
//! node-wide table that every other client needs (`specs/registry.md` §7.1,
//! `specs/groups.md` §5). The same ledger, keyed by account, bounds the login challenges
//! outstanding for one account (`specs/registry.md` §7.1).

use std::collections::{BTreeMap, BTreeSet};

use super::{SenderTag, TimeUs};
use nymstr_proto::wire::Nonce;

/// The pending challenges of each tag, oldest first. In memory only: recovered from the
/// challenge table on start.
pub type TagShares = Shares<SenderTag>;

/// The pending challenges of each holder (a tag, an account), oldest first.
#[derive(Debug)]
pub struct Shares<K> {
    by_key: BTreeMap<K, BTreeSet<(TimeUs, Nonce)>>,
    total: usize,
}

impl<K> Default for Shares<K> {
    fn default() -> Self {
        Self { by_key: BTreeMap::new(), total: 0 }
    }
}

impl<K: Ord + Clone> Shares<K> {
    /// Pending challenges across all holders.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Pending challenges of one holder.
    pub fn held(&self, key: &K) -> usize {
        self.by_key.get(key).map_or(0, BTreeSet::len)
    }

    /// Records a challenge held by `key`. Returns the nonce of the holder's oldest
    /// challenge when it already held `per_key_max` (the caller deletes it).
    pub fn admit(&mut self, key: K, expires_at_us: TimeUs, nonce: Nonce, per_key_max: usize) -> Option<Nonce> {
        let mine = self.by_key.entry(key).or_default();
        let evicted = if mine.len() >= per_key_max.max(1) { mine.pop_first().map(|(_, n)| n) } else { None };
        if evicted.is_none() {
            self.total += 1;
        }
        mine.insert((expires_at_us, nonce));
        evicted
    }

    /// Forgets a challenge (answered, expired, swept or evicted).
    pub fn forget(&mut self, key: &K, nonce: &Nonce) {
        let Some(mine) = self.by_key.get_mut(key) else { return };
        let before = mine.len();
        mine.retain(|(_, n)| n != nonce);
        self.total -= before - mine.len();
        if mine.is_empty() {
            self.by_key.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_past_its_share_loses_its_oldest() {
        let mut s = TagShares::default();
        let (a, b) = (SenderTag([1; 16]), SenderTag([2; 16]));
        assert_eq!(s.admit(a, 1, [1; 32], 2), None);
        assert_eq!(s.admit(a, 2, [2; 32], 2), None);
        assert_eq!(s.admit(b, 3, [3; 32], 2), None);
        assert_eq!(s.admit(a, 4, [4; 32], 2), Some([1; 32]));
        assert_eq!(s.total(), 3);
        s.forget(&a, &[2; 32]);
        s.forget(&a, &[9; 32]);
        assert_eq!(s.total(), 2);
    }
}
