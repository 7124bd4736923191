//! The durable outbox: the one place that holds a core's outputs until the store write
//! each depends on is durable ("acknowledge only what is durable").
//!
//! A core tags every output with `durable_after`, the store's `write_seq` it depends on
//! (see [`crate::Output`]). A host hands each output to [`Outbox::submit`]: what is already
//! durable leaves at once, the rest is held in production order. When something is held
//! and no flush is in flight, [`Outbox::flush_to_start`] names the mark of the flush the
//! host must start now (group commit: one flush in flight, covering every write issued
//! before it started). When that flush completes, however the host waited for it (sled's
//! `flush_async` on its thread pool, a modelled latency in the simulator, a blocking
//! flush in the benches), [`Outbox::flush_completed`] tells the store and releases,
//! in order, exactly the outputs the flush covered. A failed flush releases nothing.
//!
//! The real node (`node/src/runtime/actor.rs`), the simulator (`sim/src/world/`) and the
//! benches host it; the simulator's `buggify_ack_before_flush` hands `submit` a durable
//! sequence of `u64::MAX` to prove its oracles catch a host that releases early.

use std::collections::VecDeque;

use crate::store::Store;

/// Outputs of type `T` (a host's own form: an envelope and its peer, or encoded bytes)
/// waiting for durability.
#[derive(Debug)]
pub struct Outbox<T> {
    /// `(durable_after, output)`, in production order, so `durable_after` ascends.
    held: VecDeque<(u64, T)>,
    /// The mark of the flush in flight, if one is.
    in_flight: Option<u64>,
    flushes_completed: u64,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self { held: VecDeque::new(), in_flight: None, flushes_completed: 0 }
    }
}

impl<T> Outbox<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// One output of the core, given the store's durable sequence now. Returns it if it
    /// may leave at once; otherwise holds it.
    #[must_use]
    pub fn submit(&mut self, durable_after: u64, durable_seq: u64, output: T) -> Option<T> {
        if durable_after <= durable_seq {
            return Some(output);
        }
        debug_assert!(self.held.back().is_none_or(|(after, _)| *after <= durable_after), "outputs out of order");
        self.held.push_back((durable_after, output));
        None
    }

    /// If outputs wait and no flush is in flight: the mark of the flush the host must start
    /// now (every write issued so far), recorded as in flight. Otherwise `None`.
    pub fn flush_to_start(&mut self, store: &impl Store) -> Option<u64> {
        if self.held.is_empty() {
            return None;
        }
        self.begin_flush(store)
    }

    /// A flush the host starts on its own schedule (sled's background flush, modelled by the
    /// simulator), whether or not anything waits: its mark, recorded as in flight, or `None`
    /// when a flush is already in flight.
    pub fn begin_flush(&mut self, store: &impl Store) -> Option<u64> {
        if self.in_flight.is_some() {
            return None;
        }
        let mark = store.write_seq();
        self.in_flight = Some(mark);
        Some(mark)
    }

    /// The flush started at `mark` completed: the store learns it, and every held output
    /// it covered is returned, in production order. Writes issued while it was in flight
    /// are not claimed; call [`Outbox::flush_to_start`] again for them.
    pub fn flush_completed(&mut self, store: &mut impl Store, mark: u64) -> Vec<T> {
        self.in_flight = None;
        self.flushes_completed += 1;
        store.complete_flush(mark);
        let durable = store.durable_seq();
        let ready = self.held.partition_point(|(after, _)| *after <= durable);
        self.held.drain(..ready).map(|(_, out)| out).collect()
    }

    /// The flush in flight failed: nothing is released; the host retries later with
    /// [`Outbox::flush_to_start`].
    pub fn flush_failed(&mut self) {
        self.in_flight = None;
    }

    /// A blocking flush made every write durable (shutdown): everything held leaves.
    pub fn release_all(&mut self) -> Vec<T> {
        self.in_flight = None;
        self.held.drain(..).map(|(_, out)| out).collect()
    }

    /// The host crashed or cannot make its writes durable: held outputs are dropped,
    /// never sent (their writes may be lost; the peers retry).
    pub fn discard(&mut self) -> usize {
        self.in_flight = None;
        let n = self.held.len();
        self.held.clear();
        n
    }

    /// Outputs waiting for a flush.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether a flush is in flight.
    pub fn flushing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Flushes completed so far (successful ones).
    pub fn flushes_completed(&self) -> u64 {
        self.flushes_completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemStore, Table};

    fn write(s: &mut MemStore, k: &[u8]) -> u64 {
        s.put(Table::Meta, k, b"v").unwrap();
        s.write_seq()
    }

    #[test]
    fn releases_exactly_what_a_completed_flush_covers_in_order() {
        let mut s = MemStore::new();
        let mut o = Outbox::new();
        assert_eq!(o.submit(0, s.durable_seq(), "free"), Some("free"));
        let a = write(&mut s, b"a");
        assert_eq!(o.submit(a, s.durable_seq(), "ack a"), None);
        let mark = o.flush_to_start(&s).expect("something waits");
        assert_eq!(o.flush_to_start(&s), None, "one flush in flight");
        let b = write(&mut s, b"b");
        assert_eq!(o.submit(b, s.durable_seq(), "ack b"), None);
        assert_eq!(o.flush_completed(&mut s, mark), vec!["ack a"], "b was written after the flush began");
        assert_eq!(s.durable_seq(), a);
        let mark = o.flush_to_start(&s).expect("b waits");
        assert_eq!(o.flush_completed(&mut s, mark), vec!["ack b"]);
        assert!(o.is_empty() && !o.flushing());
        assert_eq!(o.flushes_completed(), 2);
    }

    #[test]
    fn a_failed_flush_releases_nothing_and_a_crash_loses_the_held() {
        let mut s = MemStore::new();
        let mut o = Outbox::new();
        let a = write(&mut s, b"a");
        assert_eq!(o.submit(a, s.durable_seq(), 1), None);
        let _mark = o.flush_to_start(&s).unwrap();
        o.flush_failed();
        assert_eq!(o.held(), 1);
        assert!(o.flush_to_start(&s).is_some(), "retry allowed");
        s.crash();
        assert_eq!(o.discard(), 1);
        assert!(o.is_empty() && !o.flushing());
    }

    #[test]
    fn an_early_release_is_the_hosts_choice_only() {
        // The simulator's buggify switch claims everything durable: nothing is held.
        let mut s = MemStore::new();
        let mut o = Outbox::new();
        let a = write(&mut s, b"a");
        assert_eq!(o.submit(a, u64::MAX, "early"), Some("early"));
        assert_eq!(o.flush_to_start(&s), None);
    }
}
