//! `NodeActor`: the actix host of one `NodeCore<SledStore>`.
//!
//! * feeds inbound frames to `handle_frame` with the wall clock;
//! * hands every output to the shared [`Outbox`] (`nymstr-node-core`), which sends what is
//!   durable and holds the rest, and runs the group-commit flushes it asks for, one in
//!   flight at a time (sled's `flush_async` runs the fsync on sled's thread pool, so the
//!   actor keeps serving while it runs), releasing what each completed flush covers;
//! * calls `handle_timeout` at `poll_timeout()`;
//! * rewrites `status.json` periodically;
//! * on [`Shutdown`]: a final blocking flush, releases everything, drops its outbound
//!   sender (which tells the transport to finish), writes the final status and stops.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::os::now_us;
use super::status::{self, Status};
use crate::sled_store::SledStore;
use crate::transport::{Inbound, Outbound};
use nymstr_node_core::actors::{NodeCore, Output, TimeUs};
use nymstr_node_core::outbox::Outbox;
use nymstr_node_core::store::{Store, StoreError, Table};
use nymstr_proto::codec;

/// Replies kept in the actor when the transport's outbound queue is full, before new ones
/// are dropped (the cores retry: clients resend requests, the relay redelivers).
const BACKLOG_MAX: usize = 65_536;
/// Delay before retrying a failed flush; doubles up to `FLUSH_RETRY_MAX`.
const FLUSH_RETRY_FIRST: Duration = Duration::from_millis(100);
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(5);

/// A batch of inbound frames, in arrival order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Frames(pub Vec<Inbound>);

/// Stop: flush, release, let the transport finish. Answers the final flush's result.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Shutdown;

/// What the actor needs to describe itself in `status.json`.
pub struct Identity {
    pub node_id: String,
    pub transport: String,
    pub address: String,
    pub started_at_us: u64,
    pub status_path: PathBuf,
    pub status_every: Duration,
}

pub struct NodeActor {
    core: NodeCore<SledStore>,
    outbound: Option<mpsc::Sender<Outbound>>,
    /// Replies waiting for a flush.
    outbox: Outbox<Outbound>,
    flush_retry: Duration,
    /// Replies waiting for room in the transport's queue, in order.
    backlog: VecDeque<Outbound>,
    draining: Option<SpawnHandle>,
    dropped_replies: u64,
    timer: Option<(TimeUs, SpawnHandle)>,
    identity: Identity,
    stopping: bool,
    /// Status snapshots are numbered; a slow background write never replaces a newer one
    /// (in particular the final "stopped").
    status_seq: u64,
    status_written: Arc<Mutex<u64>>,
    /// Dropped with the actor: tells the runtime the core is gone.
    _alive: oneshot::Sender<()>,
}

impl NodeActor {
    pub fn new(
        core: NodeCore<SledStore>,
        outbound: mpsc::Sender<Outbound>,
        alive: oneshot::Sender<()>,
        identity: Identity,
    ) -> Self {
        Self {
            core,
            outbound: Some(outbound),
            outbox: Outbox::new(),
            flush_retry: FLUSH_RETRY_FIRST,
            backlog: VecDeque::new(),
            draining: None,
            dropped_replies: 0,
            timer: None,
            identity,
            stopping: false,
            status_seq: 0,
            status_written: Arc::new(Mutex::new(0)),
            _alive: alive,
        }
    }

    /// Takes the core's outputs: sends what is durable, holds the rest, starts a flush if
    /// something waits for one, and re-arms the timer.
    fn after_step(&mut self, ctx: &mut Context<Self>) {
        let durable = self.core.store().durable_seq();
        let outputs: Vec<Output> = self.core.drain_outputs().collect();
        for Output::Send { to, envelope, durable_after } in outputs {
            let bytes = match codec::encode_frame(&envelope) {
                Ok(bytes) => bytes,
                Err(e) => {
                    // The cores bound every reply; this would be a bug, not an input.
                    tracing::error!(error = %e, kind = envelope.body.kind(), "reply cannot be encoded; dropped");
                    continue;
                }
            };
            if let Some(out) = self.outbox.submit(durable_after, durable, Outbound { to, bytes }) {
                self.transmit(out, ctx);
            }
        }
        self.start_flush(ctx);
        self.arm_timer(ctx);
    }

    /// Starts the flush the outbox asks for, if any.
    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        let Some(mark) = self.outbox.flush_to_start(self.core.store()) else { return };
        let flusher = self.core.store().flusher();
        ctx.spawn(
            async move { flusher.flush().await }
                .into_actor(self)
                .map(move |result, act, ctx| act.on_flush_done(mark, result, ctx)),
        );
    }

    fn on_flush_done(&mut self, mark: u64, result: Result<(), StoreError>, ctx: &mut Context<Self>) {
        if self.stopping {
            self.outbox.flush_failed();
            return;
        }
        if let Err(e) = result {
            // Nothing is released: the replies wait for a flush that succeeds.
            self.outbox.flush_failed();
            tracing::error!(error = %e, held = self.outbox.held(), retry_in = ?self.flush_retry, "store flush failed");
            let delay = self.flush_retry;
            self.flush_retry = (self.flush_retry * 2).min(FLUSH_RETRY_MAX);
            ctx.run_later(delay, |act, ctx| {
                if !act.stopping {
                    act.start_flush(ctx);
                }
            });
            return;
        }
        self.flush_retry = FLUSH_RETRY_FIRST;
        for out in self.outbox.flush_completed(self.core.store_mut(), mark) {
            self.transmit(out, ctx);
        }
        self.start_flush(ctx);
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let want = self.core.poll_timeout();
        if want == self.timer.as_ref().map(|(at, _)| *at) {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = want {
            let delay = Duration::from_micros(at.saturating_sub(now_us()));
            let handle = ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                if act.stopping {
                    return;
                }
                act.core.handle_timeout(now_us());
                act.after_step(ctx);
            });
            self.timer = Some((at, handle));
        }
    }

    /// Hands one frame to the transport, keeping order; never blocks the actor.
    fn transmit(&mut self, out: Outbound, ctx: &mut Context<Self>) {
        let Some(tx) = &self.outbound else { return };
        if self.backlog.is_empty() {
            match tx.try_send(out) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(out)) => self.backlog.push_back(out),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.transport_gone(ctx);
                    return;
                }
            }
        } else if self.backlog.len() >= BACKLOG_MAX {
            self.dropped_replies += 1;
            if self.dropped_replies.is_power_of_two() {
                tracing::warn!(dropped = self.dropped_replies, "transport cannot keep up: replies dropped");
            }
            return;
        } else {
            self.backlog.push_back(out);
        }
        self.start_drain(ctx);
    }

    /// Waits for room in the transport's queue, then moves the backlog in order.
    fn start_drain(&mut self, ctx: &mut Context<Self>) {
        if self.draining.is_some() {
            return;
        }
        let Some(tx) = self.outbound.clone() else { return };
        let handle =
            ctx.spawn(async move { tx.reserve_owned().await.ok() }.into_actor(self).map(|permit, act, ctx| {
                act.draining = None;
                let Some(permit) = permit else {
                    act.transport_gone(ctx);
                    return;
                };
                if let Some(out) = act.backlog.pop_front() {
                    permit.send(out);
                }
                while let (Some(tx), Some(out)) = (&act.outbound, act.backlog.pop_front()) {
                    match tx.try_send(out) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(out)) => {
                            act.backlog.push_front(out);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            act.transport_gone(ctx);
                            return;
                        }
                    }
                }
                if !act.backlog.is_empty() {
                    act.start_drain(ctx);
                }
            }));
        self.draining = Some(handle);
    }

    fn transport_gone(&mut self, ctx: &mut Context<Self>) {
        if !self.stopping {
            tracing::error!("the transport stopped unexpectedly; stopping the node");
            self.backlog.clear();
            self.outbound = None;
            ctx.stop();
        }
    }

    fn status(&self, state: &str) -> Status {
        let store = self.core.store();
        Status {
            state: state.to_string(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: self.identity.node_id.clone(),
            transport: self.identity.transport.clone(),
            address: self.identity.address.clone(),
            started_at_us: self.identity.started_at_us,
            written_at_us: now_us(),
            accounts: store.count(Table::Accounts),
            installations: store.count(Table::Installations),
            queued_messages: self.core.queued_total(),
            replies_held: self.outbox.held() as u64,
            flushes: self.outbox.flushes_completed(),
            stats: serde_json::to_value(&self.core.stats).unwrap_or_default(),
            federation: self.core.federation().map(federation_status),
        }
    }

    /// Writes a snapshot on a blocking thread (or on this one, at start and at stop).
    fn write_status(&mut self, state: &str, blocking_here: bool) {
        self.status_seq += 1;
        let seq = self.status_seq;
        let status = self.status(state);
        let path = self.identity.status_path.clone();
        let written = self.status_written.clone();
        let write = move || {
            let mut last = written.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if seq <= *last {
                return;
            }
            match status.write(&path) {
                Ok(()) => *last = seq,
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write the status file"),
            }
        };
        if blocking_here {
            write();
        } else {
            tokio::task::spawn_blocking(write);
        }
    }
}

/// The federation view written to `status.json`.
fn federation_status(fed: &nymstr_node_core::actors::federation::Federation) -> status::FederationStatus {
    let text = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
    let latest = fed.log().latest();
    let peer = |id: &nymstr_proto::federation::NodeId, address: String| {
        let head = fed.head_of(id);
        status::PeerStatus {
            node_id: id.to_hex(),
            address,
            epoch: head.map(|(h, _)| h.head.epoch),
            cosignatures: head.map_or(0, |(_, c)| c.len()),
        }
    };
    status::FederationStatus {
        node_id: fed.id().to_hex(),
        address: text(&fed.descriptor().address),
        epoch: latest.map(|h| h.head.epoch),
        dir_size: latest.map(|h| h.head.dir_size),
        cosignatures: fed.log().latest_cosignatures().iter().map(|c| c.witness.to_hex()).collect(),
        peers: fed.peers().map(|(id, a)| peer(id, text(&a.0))).collect(),
        known: fed.known().map(|d| peer(&d.node_id, text(&d.address))).collect(),
        forks: fed.forks().map(|c| c.a.head.node_id.to_hex()).collect(),
        stats: serde_json::to_value(&fed.stats).unwrap_or_default(),
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Frames wait in the transport's bounded channel, not in an unbounded mailbox.
        ctx.set_mailbox_capacity(64);
        let s = self.status(status::RUNNING);
        tracing::info!(
            node_id = %s.node_id,
            transport = %s.transport,
            address = %s.address,
            accounts = s.accounts,
            installations = s.installations,
            queued_messages = s.queued_messages,
            "node started"
        );
        self.write_status(status::RUNNING, true);
        ctx.run_interval(self.identity.status_every, |act, _ctx| {
            if !act.stopping {
                act.write_status(status::RUNNING, false);
                tracing::debug!(stats = ?act.core.stats, held = act.outbox.held(), "status");
            }
        });
        // `start` may have produced deliveries (queued messages for surviving bindings).
        self.after_step(ctx);
    }
}

impl Handler<Frames> for NodeActor {
    type Result = ();

    fn handle(&mut self, msg: Frames, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        for Inbound { from, bytes } in msg.0 {
            self.core.handle_frame(now_us(), from, &bytes);
        }
        self.after_step(ctx);
    }
}

impl Handler<Shutdown> for NodeActor {
    type Result = ResponseActFuture<Self, Result<(), StoreError>>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(handle) = self.draining.take() {
            ctx.cancel_future(handle);
        }
        // The one blocking flush: nothing else is left to serve.
        let flushed = self.core.store_mut().flush();
        let mut pending: Vec<Outbound> = self.backlog.drain(..).collect();
        match &flushed {
            Ok(()) => pending.extend(self.outbox.release_all()),
            Err(e) => {
                let withheld = self.outbox.discard();
                tracing::error!(error = %e, withheld, "final flush failed; unacknowledged replies withheld");
            }
        }
        self.write_status(status::STOPPED, true);
        let s = self.status(status::STOPPED);
        tracing::info!(
            accounts = s.accounts,
            installations = s.installations,
            queued_messages = s.queued_messages,
            flushes = s.flushes,
            replies_released = pending.len(),
            "store flushed"
        );
        let tx = self.outbound.take();
        Box::pin(
            async move {
                if let Some(tx) = tx {
                    for out in pending {
                        if tx.send(out).await.is_err() {
                            break;
                        }
                    }
                    // Dropping the last sender tells the transport to finish.
                }
                flushed
            }
            .into_actor(self)
            .map(|result, _act, ctx| {
                ctx.stop();
                result
            }),
        )
    }
}
