//! Per-tag shares of a challenge table. Each tag holds at most `per_tag_max` pending
//! challenges; a new one past that replaces the tag's oldest, so one tag (or a few) never
//! fills the node-wide table that every other client needs (`specs/relay.md` §9).

use std::collections::{BTreeMap, BTreeSet};

use super::{SenderTag, TimeUs};
use nymstr_proto::wire::Nonce;

/// The pending challenges of each tag, oldest first. In memory only: recovered from the
/// challenge table on start.
#[derive(Debug, Default)]
pub struct TagShares {
    by_tag: BTreeMap<SenderTag, BTreeSet<(TimeUs, Nonce)>>,
    total: usize,
}

impl TagShares {
    /// Pending challenges across all tags.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Pending challenges of one tag.
    pub fn held(&self, tag: &SenderTag) -> usize {
        self.by_tag.get(tag).map_or(0, BTreeSet::len)
    }

    /// Records a challenge issued to `tag`. Returns the nonce of the tag's oldest
    /// challenge when the tag already held `per_tag_max` (the caller deletes it).
    pub fn admit(&mut self, tag: SenderTag, expires_at_us: TimeUs, nonce: Nonce, per_tag_max: usize) -> Option<Nonce> {
        let mine = self.by_tag.entry(tag).or_default();
        let evicted = if mine.len() >= per_tag_max.max(1) { mine.pop_first().map(|(_, n)| n) } else { None };
        if evicted.is_none() {
            self.total += 1;
        }
        mine.insert((expires_at_us, nonce));
        evicted
    }

    /// Forgets a challenge (answered, expired, or swept).
    pub fn forget(&mut self, tag: &SenderTag, nonce: &Nonce) {
        let Some(mine) = self.by_tag.get_mut(tag) else { return };
        let before = mine.len();
        mine.retain(|(_, n)| n != nonce);
        self.total -= before - mine.len();
        if mine.is_empty() {
            self.by_tag.remove(tag);
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
