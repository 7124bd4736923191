//! Transports: how frames reach a node and leave it. Normative text: `specs/tcp.md` (tcp)
//! and `SPECv1.md` §4 (the tag contract).
//!
//! The contract, for every implementation: a started transport pushes each inbound frame,
//! with the peer it came from, into the node's inbound channel, and takes outbound frames
//! from its outbound channel. Anonymous clients appear only as `Peer::Tag`; a reply to a
//! tag never needs (and never reveals) the client's address. Frames are opaque bytes here:
//! decoding is the core's job.
//!
//! Shutdown, for every implementation: when the node closes its inbound receiver
//! (`mpsc::Receiver::close`), the transport stops accepting new peers and stops reading;
//! when the node drops every outbound sender, the transport sends what it has queued,
//! closes, and drops its inbound senders. The node knows the transport has finished when
//! its inbound receiver yields `None`.
//!
//! Nodes appear as `Peer::Address` (their descriptor address): a frame to an address goes
//! to that node, however the transport reaches it (tcp: a dialed connection or one the
//! node opened with a preface, `specs/tcp.md` §6).
//!
//! Implementations: `tcp` (length-prefixed frames, a fresh tag per client connection,
//! node-to-node connections) and `nym`
//! (nym-sdk, behind the `nym` feature). The simulator's mixnet model is the third.

pub mod noise;
#[cfg(feature = "nym")]
pub mod nym;
pub mod tcp;

use tokio::sync::mpsc;

use nymstr_node_core::actors::Peer;

/// One frame received by a transport.
#[derive(Debug)]
pub struct Inbound {
    pub from: Peer,
    pub bytes: Vec<u8>,
}

/// One frame for a transport to send.
#[derive(Debug)]
pub struct Outbound {
    pub to: Peer,
    pub bytes: Vec<u8>,
}

/// A running transport.
pub struct TransportHandle {
    /// Frames to send; a frame to a peer the transport no longer knows is dropped.
    pub outbound: mpsc::Sender<Outbound>,
    /// The address other parties use to reach this node (`host:port`, or a nym address).
    pub address: String,
}

/// Inbound frames a node may have waiting before transports apply back-pressure.
pub const INBOUND_QUEUE_MAX: usize = 4096;
/// Outbound frames waiting to be written, per transport.
pub const OUTBOUND_QUEUE_MAX: usize = 4096;
