//! The commented `config.toml` that `init` writes: every setting with its default value
//! and a comment saying what it does.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::{Config, LogFormat};
use crate::transport::tcp::TcpConfig;

/// `12345678` as `12_345_678`, as TOML allows.
pub(super) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(ch);
    }
    out
}

/// The `config.toml` that `init` writes: every setting with its default and a comment.
pub fn render_template(listen: SocketAddr) -> String {
    render_template_with(listen, &[])
}

/// [`render_template`] with `bootstrap` peers in `[federation]`.
pub fn render_template_with(listen: SocketAddr, bootstrap: &[String]) -> String {
    let d = Config::default();
    let c = &d.core;
    let f = &c.federation;
    let bootstrap = toml::Value::Array(bootstrap.iter().cloned().map(toml::Value::String).collect()).to_string();
    let t = TcpConfig { listen, ..d.transport.tcp.clone() };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"# nymstr node configuration, written by `nymstr-node init` (nymstr-node {version}).
# Every setting is listed with its default value; a key left out takes its default.
# Unknown keys are refused (with their line), so a typo never goes unnoticed.
# Beside this file: node.key (the node's secret identity key: keep it, keep it private),
# db/ (the database), status.json (written by the running node, read by `info`).

[log]
# Log line format on stderr: "text" for people, "json" for log collectors (one object per
# line). The command-line flag --log-format overrides it.
format = "{format}"
# Which events are logged, in tracing's env-filter syntax ("info", "warn",
# "info,nymstr_node=debug", ...). The RUST_LOG environment variable overrides it.
# Client addresses are never logged at any level: the node never learns them.
filter = "{filter}"

[runtime]
# Threads that run network I/O (framing, rate limits). The protocol core and its storage
# run on one more thread of their own.
io_threads = {io_threads}
# How often the running node rewrites status.json, which `nymstr-node info` reads while the
# node holds the database lock. Seconds, at least 1.
status_every_secs = {status_every_secs}
# On SIGINT or SIGTERM the node stops accepting, flushes the database, and then waits at
# most this long for replies already released to be written to clients. Seconds.
shutdown_grace_secs = {shutdown_grace_secs}

[store]
# Upper bound of the database's page cache in memory, in bytes (at least 1 MiB).
cache_capacity_bytes = {cache}

[transport]
# How clients reach this node: "tcp" (length-prefixed frames on a socket; specs/tcp.md),
# or "nym" (the Nym mixnet; needs a node built with `--features nym`, settings in
# [transport.nym]).
kind = "tcp"

[transport.tcp]
# Address and port to listen on. "0.0.0.0:7000" serves every interface; port 0 picks a
# free port (the bound address is printed at start and written to status.json).
listen = "{listen}"
# Connections served at once. A connection beyond the limit is closed as soon as it is
# accepted.
max_connections = {max_connections}
# Per-connection token bucket: sustained frames per second, and the burst above it.
# A frame beyond the limit is dropped and answered with Error{{Busy}} (clients retry).
# 0 frames per second disables the limit.
rate_limit_frames_per_sec = {rate}
rate_limit_burst_frames = {burst}
# A connection that sends nothing for this long is closed (0: never). Seconds.
idle_timeout_secs = {idle}
# A connection whose replies cannot be written within this long is closed. Seconds.
write_timeout_secs = {write_timeout}
# Replies queued for one connection; a client that lets this many pile up unread is
# closed (it reconnects, logs in again, and undelivered messages come again).
write_queue_frames = {write_queue}

[core]
# How long a registration or login challenge stays valid. Microseconds (1 s = 1_000_000).
challenge_ttl_us = {challenge_ttl_us}
# Challenges pending at once; beyond this, new registrations and logins get Error{{Busy}}.
challenges_pending_max = {challenges_pending_max}
# Challenges one connection (sender tag) may hold, registration and login together (and as
# many subscribe challenges): past it the tag's oldest is replaced, so a few flooding
# connections never fill the table above.
challenges_per_tag_max = {challenges_per_tag_max}
# Login challenges pending for one account, whichever connections asked: past it the
# account's oldest is replaced, so a flood naming one account holds only a few.
login_challenges_per_account_max = {login_challenges_per_account_max}
# Messages queued for one installation; beyond this, sends to it get Error{{QueueFull}}.
queue_depth_max = {queue_depth_max}
# Messages one sender may have queued for one installation (its share of the queue above);
# beyond this its sends get Error{{QueueFull}}, while other senders still get through.
queue_per_sender_max = {queue_per_sender_max}
# Deliveries sent to one installation and not yet acknowledged.
deliveries_inflight_max = {deliveries_inflight_max}
# First redelivery of an unacknowledged delivery (µs); doubles up to redeliver_after_max_us.
redeliver_after_us = {redeliver_after_us}
redeliver_after_max_us = {redeliver_after_max_us}
# How long a (sender, message id) pair is remembered so that a retried send is not queued
# twice (µs; 24 h by default).
seen_send_ttl_us = {seen_send_ttl_us}
# Period of the housekeeping sweep of expired challenges and send records (µs).
sweep_every_us = {sweep_every_us}
# Application messages kept per group log (handshake messages are always kept).
group_history_max = {group_history_max}
# Groups this node hosts; beyond this GroupCreate gets Error{{Busy}}.
groups_max = {groups_max}
# A group with no upload, subscription or fetch for this long is deleted with its log,
# subscriptions and redeemed invites (µs; 90 days by default).
group_idle_expiry_us = {group_idle_expiry_us}
# Proposals accepted per group and epoch; beyond this uploads get Error{{Busy}}.
group_proposals_per_epoch_max = {group_proposals_per_epoch_max}

[federation]
# Take part in a federation (SPECv1.md §9): keep a transparency log, peer with other
# nodes (node-to-node TCP, specs/tcp.md §6), witness their heads, forward lookups and
# direct messages to user@<node id>. false: a stand-alone v1 node.
enabled = true
# Nodes said hello to at start and on every peering retry ("host:port"). Others are
# learnt from their gossip. `nymstr-node init --join` fills this in.
bootstrap = {bootstrap}
# The address put in this node's signed descriptor: where other nodes dial it. Unset: the
# bound listen address. Set it when listening on 0.0.0.0 or behind a port mapping.
# advertise = "node.example.org:7000"
# Roles announced in the descriptor: "discovery" (registry, log, relay), "group" (MLS).
roles = ["discovery", "group"]

[core.federation]
# Length of one transparency-log epoch: directory changes are sealed into a new signed
# head this often (µs).
epoch_us = {epoch_us}
# Peers each gossip item is pushed to (fork certificates go to every peer).
gossip_fanout = {gossip_fanout}
# Peers asked to cosign (witness) each new head.
witnesses_wanted = {witnesses_wanted}
# Cosignatures the newest head needs before lookups are answered from it, or
# serve_grace_us after it was issued, whichever comes first.
serve_quorum = {serve_quorum}
serve_grace_us = {serve_grace_us}
# How long a forwarded lookup or direct message waits for the remote node before the
# client is told Unreachable (µs).
forward_timeout_us = {forward_timeout_us}
# Period of the peering retry: unanswered hellos (and bootstrap peers) are tried again (µs).
peer_retry_us = {peer_retry_us}
# Authenticated peers kept; hellos beyond this are refused with Busy.
peers_max = {peers_max}
# Gossip items remembered for de-duplication.
gossip_seen_max = {gossip_seen_max}
# Heads remembered per other node (by epoch) to detect equivocation (fork certificates).
heads_kept_per_node = {heads_kept_per_node}
# The trust policy announced in the descriptor (informative for peers; at most 64 bytes).
policy = "{policy}"
"#,
        version = env!("CARGO_PKG_VERSION"),
        format = match d.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        },
        filter = d.log.filter,
        io_threads = d.runtime.io_threads,
        status_every_secs = d.runtime.status_every_secs,
        shutdown_grace_secs = d.runtime.shutdown_grace_secs,
        cache = grouped(d.store.cache_capacity_bytes),
        listen = t.listen,
        max_connections = t.max_connections,
        rate = t.rate_limit_frames_per_sec,
        burst = t.rate_limit_burst_frames,
        idle = t.idle_timeout_secs,
        write_timeout = t.write_timeout_secs,
        write_queue = t.write_queue_frames,
        challenge_ttl_us = grouped(c.challenge_ttl_us),
        challenges_pending_max = grouped(c.challenges_pending_max as u64),
        challenges_per_tag_max = c.challenges_per_tag_max,
        login_challenges_per_account_max = c.login_challenges_per_account_max,
        queue_per_sender_max = c.queue_per_sender_max,
        queue_depth_max = grouped(u64::from(c.queue_depth_max)),
        deliveries_inflight_max = c.deliveries_inflight_max,
        redeliver_after_us = grouped(c.redeliver_after_us),
        redeliver_after_max_us = grouped(c.redeliver_after_max_us),
        seen_send_ttl_us = grouped(c.seen_send_ttl_us),
        sweep_every_us = grouped(c.sweep_every_us),
        group_history_max = grouped(c.group_history_max as u64),
        groups_max = grouped(c.groups_max as u64),
        group_idle_expiry_us = grouped(c.group_idle_expiry_us),
        group_proposals_per_epoch_max = c.group_proposals_per_epoch_max,
        epoch_us = grouped(f.epoch_us),
        gossip_fanout = f.gossip_fanout,
        witnesses_wanted = f.witnesses_wanted,
        serve_quorum = f.serve_quorum,
        serve_grace_us = grouped(f.serve_grace_us),
        forward_timeout_us = grouped(f.forward_timeout_us),
        peer_retry_us = grouped(f.peer_retry_us),
        peers_max = f.peers_max,
        gossip_seen_max = grouped(f.gossip_seen_max as u64),
        heads_kept_per_node = f.heads_kept_per_node,
        policy = f.policy,
    );
    #[cfg(feature = "nym")]
    {
        let nym = toml::to_string(&crate::transport::nym::NymConfig::default()).unwrap_or_default();
        let _ = write!(
            s,
            "\n[transport.nym]\n# The Nym transport's settings (used with kind = \"nym\"); see specs/nym.md.\n{nym}"
        );
    }
    s
}
