//! The Nym mixnet transport (cargo feature `nym`; nym-sdk 1.21.6 with every nym-* crate
//! pinned `=1.21.6`). Normative text: `specs/nym.md`.
//!
//! A persistent `MixnetClient` (keys, gateway registration, reply SURBs and credentials
//! under `<data_dir>/nym`) carries the node's frames. Inbound: a message that carries a
//! sender tag (an anonymous client that attached SURBs) becomes
//! `Inbound { from: Peer::Tag(tag), .. }`; a message without one is dropped, because the
//! node only ever replies to tags and the SDK gives no sender for it. Outbound: a frame to
//! `Peer::Tag` is a SURB reply (`send_reply`), so the client's address is never needed nor
//! learnt; a frame to `Peer::Address` (a node, its nym address as UTF-8 text) is a message
//! with no reply SURBs attached.
//!
//! Two tasks: the receive task owns the client (it alone can wait for messages, and it
//! disconnects the client on the way out); the send task owns a `MixnetClientSender`.
//! Shutdown follows `transport/mod.rs`: when the node closes its inbound receiver the
//! transport stops reading; when every outbound sender is dropped the send task hands the
//! rest of the queue to the client, the receive task gives the client a bounded time to put
//! it on the wire, disconnects it (which also flushes the reply-SURB store) and drops the
//! transport's only inbound sender. If the SDK shuts the client down, both tasks stop the
//! same way. Failures are logged and counted, never panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nym_network_defaults::ApiUrl;
use nym_sdk::mixnet::{
    AnonymousSenderTag, IncludedSurbs, MixnetClient, MixnetClientBuilder, MixnetClientSender, MixnetMessageSender,
    Recipient, RecipientFormattingError, ReconstructedMessage, StoragePaths,
};
use nym_sdk::{DebugConfig, NymNetworkDetails, ValidatorDetails};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{Inbound, OUTBOUND_QUEUE_MAX, Outbound, TransportHandle};
use nymstr_node_core::actors::{Address, Peer, SenderTag};

/// Subdirectory of the node's data directory that holds the Nym client's state.
const STORAGE_SUBDIR: &str = "nym";

/// Reply SURBs attached to a message to another node: none. A node is reached at its
/// public nym address and answers nodes at theirs, never through SURBs.
const NODE_MESSAGE_SURBS: u32 = 0;

/// Settings of the Nym transport (its table in the node's `config.toml`).
/// Every field is optional; the default is Nym mainnet with the SDK's own defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NymConfig {
    /// A JSON file holding a `NymNetworkDetails` (nym-network-defaults 1.21.6 layout) that
    /// describes the network to join, e.g. a sandbox or a private Nym testnet. Unset: Nym
    /// mainnet, the SDK's default (`NymNetworkDetails::new_mainnet()`).
    pub network_details_file: Option<PathBuf>,
    /// nym-api base URLs to use instead of the network's own, for gateway selection and
    /// topology. Empty: the network's own.
    pub nym_api_urls: Vec<String>,
    /// Base58 identity key of the gateway to register with (SDK `request_gateway`). Unset:
    /// on first start the SDK picks a gateway and the registration is stored; later starts
    /// load the stored one, so the nym address stays the same.
    pub gateway: Option<String>,
    /// Only choose a gateway that offers `wss` (SDK `force_tls`).
    pub force_tls: bool,
    /// Pay for bandwidth with ticketbooks from the credential database under
    /// `<data_dir>/nym` (SDK `credentials_mode`). Default off: gateways that do not require
    /// credentials.
    pub credentials_mode: bool,
    /// Reply SURBs the client always keeps per sender tag; a reply never spends these, they
    /// are reserved to ask the tag's owner for more (SDK `minimum_reply_surb_storage_threshold`,
    /// default 10; at least 1 here). Like `reply_surbs_keep_max`, the SDK fixes it when it
    /// creates `<data_dir>/nym/persistent_reply_store.sqlite`; a later change applies only
    /// once that file is removed (while the node is stopped).
    pub reply_surbs_keep_min: Option<usize>,
    /// Reply SURBs held per sender tag above which the client stops asking for more (SDK
    /// `maximum_reply_surb_storage_threshold`, default 200). Fixed at database creation.
    pub reply_surbs_keep_max: Option<usize>,
    /// Smallest number of reply SURBs asked for at once (SDK `minimum_reply_surb_request_size`,
    /// default 10; at least 1 here).
    pub reply_surbs_request_min: Option<u32>,
    /// Largest number of reply SURBs asked for at once (SDK `maximum_reply_surb_request_size`,
    /// default 50).
    pub reply_surbs_request_max: Option<u32>,
    /// Seconds without fresh SURBs from a tag after which replies still waiting for SURBs
    /// are dropped (SDK `maximum_reply_surb_drop_waiting_period`, default 300).
    pub reply_surbs_drop_after_secs: Option<u64>,
}

/// Why the Nym transport did not start.
#[derive(Debug, thiserror::Error)]
pub enum NymError {
    #[error("nym config field `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("reading nym network details {path:?}: {source}")]
    NetworkFile { path: PathBuf, source: std::io::Error },
    #[error("nym network details {path:?} are not NymNetworkDetails JSON: {source}")]
    NetworkJson { path: PathBuf, source: serde_json::Error },
    #[error("nym storage directory {path:?}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("nym client storage under {path:?}: {source}")]
    Storage { path: PathBuf, source: Box<nym_sdk::Error> },
    #[error("building the nym client: {0}")]
    Build(#[source] Box<nym_sdk::Error>),
    #[error("connecting to the mixnet: {0}")]
    Connect(#[source] Box<nym_sdk::Error>),
}

/// Starts the transport: opens (or creates) the persistent client under
/// `<data_dir>/nym`, connects it to the mixnet and spawns the send and receive tasks.
/// Needs a tokio runtime. Returns once the client is connected; `address` is its nym
/// address (`<identity>.<encryption key>@<gateway>`, base58).
pub async fn start(
    config: NymConfig,
    data_dir: &Path,
    inbound: mpsc::Sender<Inbound>,
) -> Result<TransportHandle, NymError> {
    // Everything the operator wrote is checked before the disk or the network is touched.
    let debug_config = debug_config(&config)?;
    let network = network_details(&config)?;

    let dir = storage_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|source| NymError::DataDir { path: dir.clone(), source })?;
    let storage_error = |e: nym_sdk::Error| NymError::Storage { path: dir.clone(), source: Box::new(e) };
    let paths = StoragePaths::new_from_dir(&dir).map_err(storage_error)?;
    // The reply-SURB database must be opened with the same thresholds the client runs with.
    let storage = paths.initialise_persistent_storage(&debug_config).await.map_err(storage_error)?;

    let mut builder = MixnetClientBuilder::new_with_storage(storage)
        .debug_config(debug_config)
        .network_details(network)
        .force_tls(config.force_tls)
        .credentials_mode(config.credentials_mode);
    if let Some(gateway) = config.gateway {
        builder = builder.request_gateway(gateway);
    }
    let client = builder.build().map_err(|e| NymError::Build(Box::new(e)))?;
    let client = client.connect_to_mixnet().await.map_err(|e| NymError::Connect(Box::new(e)))?;

    let address = client.nym_address().to_string();
    info!(address = %address, "nym transport connected");

    let counters = Arc::new(Counters::default());
    let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_MAX);
    // The send task ends by dropping `send_done_tx`; the receive task stops it early (only
    // when the client is gone) through `stop_tx`.
    let (send_done_tx, send_done_rx) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let sender = client.split_sender();
    tokio::spawn(send_loop(sender, outbound_rx, stop_rx, send_done_tx, counters.clone()));
    tokio::spawn(receive_loop(client, inbound, stop_tx, send_done_rx, counters));

    Ok(TransportHandle { outbound: outbound_tx, address })
}

/// Where the client's keys, gateway registration, reply SURBs and credentials live.
fn storage_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(STORAGE_SUBDIR)
}

/// The SDK's client settings with the operator's reply-SURB overrides applied and checked.
fn debug_config(config: &NymConfig) -> Result<DebugConfig, NymError> {
    let mut debug = DebugConfig::default();
    let surbs = &mut debug.reply_surbs;
    if let Some(v) = config.reply_surbs_keep_min {
        surbs.minimum_reply_surb_storage_threshold = v;
    }
    if let Some(v) = config.reply_surbs_keep_max {
        surbs.maximum_reply_surb_storage_threshold = v;
    }
    if let Some(v) = config.reply_surbs_request_min {
        surbs.minimum_reply_surb_request_size = v;
    }
    if let Some(v) = config.reply_surbs_request_max {
        surbs.maximum_reply_surb_request_size = v;
    }
    if let Some(v) = config.reply_surbs_drop_after_secs {
        surbs.maximum_reply_surb_drop_waiting_period = Duration::from_secs(v);
    }
    if surbs.minimum_reply_surb_storage_threshold == 0 {
        // With no reserved SURB the node could not ask a tag for more once it ran out.
        return Err(config_error("reply_surbs_keep_min", "must be at least 1"));
    }
    if surbs.minimum_reply_surb_storage_threshold > surbs.maximum_reply_surb_storage_threshold {
        return Err(config_error("reply_surbs_keep_max", "must not be below reply_surbs_keep_min"));
    }
    if surbs.minimum_reply_surb_request_size == 0 {
        return Err(config_error("reply_surbs_request_min", "must be at least 1"));
    }
    if surbs.minimum_reply_surb_request_size > surbs.maximum_reply_surb_request_size {
        return Err(config_error("reply_surbs_request_max", "must not be below reply_surbs_request_min"));
    }
    // A node reports nothing about itself to a statistics collector (the SDK only reports
    // when a provider address is set, which it never is here; this makes it explicit).
    debug.stats_reporting.enabled = false;
    Ok(debug)
}

/// The network to join: mainnet, or the operator's file, with the nym-api override applied.
/// Every URL is checked here because the SDK's URL accessors panic on a malformed one.
fn network_details(config: &NymConfig) -> Result<NymNetworkDetails, NymError> {
    let mut network = match &config.network_details_file {
        None => NymNetworkDetails::new_mainnet(),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| NymError::NetworkFile { path: path.clone(), source })?;
            parse_network_details(&text).map_err(|source| NymError::NetworkJson { path: path.clone(), source })?
        }
    };
    if !config.nym_api_urls.is_empty() {
        network = with_nym_api_urls(network, &config.nym_api_urls)?;
    }
    check_network(&network, config.credentials_mode)?;
    Ok(network)
}

fn parse_network_details(text: &str) -> Result<NymNetworkDetails, serde_json::Error> {
    serde_json::from_str(text)
}

/// Points both places the SDK reads nym-api URLs from at `urls`: `nym_api_urls` (the base
/// client's topology) and the validator endpoints' `api_url` (gateway selection, nym-sdk
/// 1.21.6 `DisconnectedMixnetClient::get_api_endpoints`). The endpoints keep the network's
/// first nyxd URL.
fn with_nym_api_urls(mut network: NymNetworkDetails, urls: &[String]) -> Result<NymNetworkDetails, NymError> {
    for url in urls {
        check_url("nym_api_urls", url)?;
    }
    let Some(first) = network.endpoints.first().cloned() else {
        return Err(config_error("nym_api_urls", "the network lists no nyxd endpoint to pair them with"));
    };
    network.endpoints = urls
        .iter()
        .map(|url| ValidatorDetails {
            nyxd_url: first.nyxd_url.clone(),
            websocket_url: first.websocket_url.clone(),
            api_url: Some(url.clone()),
        })
        .collect();
    network.nym_api_urls = Some(urls.iter().map(|url| ApiUrl { url: url.clone(), front_hosts: None }).collect());
    Ok(network)
}

/// Checks every URL the SDK may parse with `expect`, and what the SDK indexes blindly.
fn check_network(network: &NymNetworkDetails, credentials_mode: bool) -> Result<(), NymError> {
    const FIELD: &str = "network_details_file";
    for endpoint in &network.endpoints {
        check_url(FIELD, &endpoint.nyxd_url)?;
        for url in endpoint.api_url.iter().chain(endpoint.websocket_url.iter()) {
            check_url(FIELD, url)?;
        }
    }
    for api in network.nym_api_urls.iter().flatten() {
        check_url(FIELD, &api.url)?;
    }
    if network.nym_api_urls().is_empty() {
        return Err(config_error(FIELD, "the network lists no nym-api URL"));
    }
    if credentials_mode && network.endpoints.is_empty() {
        return Err(config_error("credentials_mode", "needs a network with a nyxd endpoint"));
    }
    Ok(())
}

fn check_url(field: &'static str, url: &str) -> Result<(), NymError> {
    nym_http_api_client::Url::parse(url).map(drop).map_err(|e| config_error(field, format!("{url:?}: {e}")))
}

fn config_error(field: &'static str, reason: impl Into<String>) -> NymError {
    NymError::Config { field, reason: reason.into() }
}

/// The SDK's sender tag as the node's.
fn tag_from_nym(tag: AnonymousSenderTag) -> SenderTag {
    SenderTag(tag.to_bytes())
}

/// The node's sender tag as the SDK's.
fn tag_to_nym(tag: SenderTag) -> AnonymousSenderTag {
    AnonymousSenderTag::from_bytes(tag.0)
}

/// A received message as the node sees it: only tagged messages become frames.
fn inbound_from(message: ReconstructedMessage) -> Option<Inbound> {
    let tag = message.sender_tag?;
    Some(Inbound { from: Peer::Tag(tag_from_nym(tag)), bytes: message.message })
}

/// What the send task does with one outbound frame.
#[derive(Debug, PartialEq)]
enum Delivery {
    /// A SURB reply to an anonymous client.
    Reply { tag: AnonymousSenderTag, bytes: Vec<u8> },
    /// A message to a node's nym address, no reply SURBs attached.
    ToNode { recipient: Box<Recipient>, bytes: Vec<u8> },
}

/// Why an outbound frame could not be sent. A node address is public, but only the
/// reason is logged.
#[derive(Debug, thiserror::Error)]
enum OutboundError {
    #[error("node address is not UTF-8")]
    AddressNotUtf8,
    #[error("node address is not a nym address: {0}")]
    AddressNotRecipient(RecipientFormattingError),
}

fn recipient_from_address(address: &Address) -> Result<Recipient, OutboundError> {
    let text = std::str::from_utf8(&address.0).map_err(|_| OutboundError::AddressNotUtf8)?;
    text.parse::<Recipient>().map_err(OutboundError::AddressNotRecipient)
}

fn send_for(out: Outbound) -> Result<Delivery, OutboundError> {
    match out.to {
        Peer::Tag(tag) => Ok(Delivery::Reply { tag: tag_to_nym(tag), bytes: out.bytes }),
        Peer::Address(address) => {
            Ok(Delivery::ToNode { recipient: Box::new(recipient_from_address(&address)?), bytes: out.bytes })
        }
    }
}

/// What the transport saw; logged when it stops.
#[derive(Debug, Default)]
struct Counters {
    inbound: AtomicU64,
    inbound_untagged: AtomicU64,
    sent: AtomicU64,
    send_failed: AtomicU64,
    bad_address: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn log(&self) {
        info!(
            inbound = self.inbound.load(Ordering::Relaxed),
            inbound_untagged = self.inbound_untagged.load(Ordering::Relaxed),
            sent = self.sent.load(Ordering::Relaxed),
            send_failed = self.send_failed.load(Ordering::Relaxed),
            bad_address = self.bad_address.load(Ordering::Relaxed),
            "nym transport stopped"
        );
    }
}

/// Takes frames from the node until every outbound sender is dropped (and the queue is
/// drained) or the receive task says the client is gone; ends by dropping `_send_done`.
async fn send_loop(
    sender: MixnetClientSender,
    mut outbound: mpsc::Receiver<Outbound>,
    mut stop: oneshot::Receiver<()>,
    _send_done: oneshot::Sender<()>,
    counters: Arc<Counters>,
) {
    loop {
        let out = tokio::select! {
            biased;
            _ = &mut stop => break,
            out = outbound.recv() => match out {
                Some(out) => out,
                None => break,
            },
        };
        let result = match send_for(out) {
            Err(e) => {
                let n = Counters::bump(&counters.bad_address);
                warn!(error = %e, bad_address = n, "nym transport: dropped a frame to a node");
                continue;
            }
            Ok(Delivery::Reply { tag, bytes }) => sender.send_reply(tag, bytes).await,
            Ok(Delivery::ToNode { recipient, bytes }) => {
                sender.send_message(*recipient, bytes, IncludedSurbs::new(NODE_MESSAGE_SURBS)).await
            }
        };
        match result {
            Ok(()) => {
                Counters::bump(&counters.sent);
            }
            Err(e) => {
                let n = Counters::bump(&counters.send_failed);
                warn!(error = %e, send_failed = n, "nym transport: the client refused a frame");
            }
        }
    }
}

/// Why the receive task stopped reading.
enum Stopped {
    /// The send task is done: the node dropped every outbound sender and the queue is drained.
    SendDone,
    /// The node closed (or dropped) its inbound receiver; sending goes on.
    InboundClosed,
    /// The SDK shut the client down; nothing can be sent any more.
    ClientGone,
}

/// Owns the client: hands tagged messages to the node until told to stop, then waits for
/// the send task, lets the client flush what it has queued (bounded), disconnects it and
/// drops the transport's only inbound sender, which tells the node the transport is done.
async fn receive_loop(
    mut client: MixnetClient,
    inbound: mpsc::Sender<Inbound>,
    stop_send: oneshot::Sender<()>,
    mut send_done: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) {
    let client_gone = client.cancellation_token();
    let stopped = 'run: loop {
        let batch = tokio::select! {
            biased;
            _ = &mut send_done => break 'run Stopped::SendDone,
            _ = inbound.closed() => break 'run Stopped::InboundClosed,
            _ = client_gone.cancelled() => break 'run Stopped::ClientGone,
            batch = client.wait_for_messages() => match batch {
                Some(batch) => batch,
                None => break 'run Stopped::ClientGone,
            },
        };
        for message in batch {
            match inbound_from(message) {
                Some(frame) => {
                    Counters::bump(&counters.inbound);
                    if inbound.send(frame).await.is_err() {
                        break 'run Stopped::InboundClosed;
                    }
                }
                None => {
                    let n = Counters::bump(&counters.inbound_untagged);
                    debug!(inbound_untagged = n, "nym transport: dropped a message without a sender tag");
                }
            }
        }
    };
    match stopped {
        Stopped::SendDone => {}
        Stopped::InboundClosed => {
            // Keep sending until the node drops its outbound senders, unless the client dies.
            let client_died = tokio::select! {
                _ = &mut send_done => false,
                _ = client_gone.cancelled() => true,
            };
            if client_died {
                warn!("nym transport: the mixnet client shut down");
                let _ = stop_send.send(());
                let _ = send_done.await;
            }
        }
        Stopped::ClientGone => {
            warn!("nym transport: the mixnet client shut down");
            let _ = stop_send.send(());
            let _ = send_done.await;
        }
    }
    if !client_gone.is_cancelled() {
        flush(&client).await;
    }
    client.disconnect().await;
    counters.log();
    drop(inbound);
}

/// Longest wait, at shutdown, for the client to put queued packets on the wire.
const FLUSH_WAIT_MAX: Duration = Duration::from_secs(10);
const FLUSH_POLL: Duration = Duration::from_millis(100);

/// Waits (at most `FLUSH_WAIT_MAX`) until the client's transmission lanes are empty on two
/// consecutive looks, so frames the send task handed over are not cut off by `disconnect`.
/// Replies still waiting for SURBs are not in the lanes and are not waited for.
async fn flush(client: &MixnetClient) {
    let lanes = client.shared_lane_queue_lengths();
    let deadline = crate::runtime::os::monotonic() + FLUSH_WAIT_MAX;
    let mut empty_looks = 0;
    while empty_looks < 2 && crate::runtime::os::monotonic() < deadline {
        tokio::time::sleep(FLUSH_POLL).await;
        empty_looks = if lanes.total() == 0 { empty_looks + 1 } else { 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid recipient (the bytes of nym-sphinx-addressing 1.21.6's own test fixture).
    fn recipient() -> Recipient {
        Recipient::try_from_bytes([
            67, 5, 132, 146, 3, 236, 116, 89, 254, 57, 131, 159, 69, 181, 55, 208, 12, 108, 136, 83, 58, 76, 171, 195,
            31, 98, 92, 64, 68, 53, 156, 184, 100, 189, 73, 3, 238, 103, 156, 108, 124, 199, 42, 79, 172, 98, 81, 177,
            182, 100, 167, 164, 74, 183, 199, 213, 162, 173, 102, 112, 30, 159, 148, 66, 44, 75, 230, 182, 138, 114,
            170, 163, 209, 82, 204, 100, 118, 91, 57, 150, 212, 147, 151, 135, 148, 16, 213, 223, 182, 164, 242, 37,
            40, 73, 137, 228,
        ])
        .unwrap()
    }

    #[test]
    fn tags_convert_both_ways_byte_for_byte() {
        let bytes: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        let nym = AnonymousSenderTag::from_bytes(bytes);
        assert_eq!(tag_from_nym(nym), SenderTag(bytes));
        assert_eq!(tag_to_nym(SenderTag(bytes)), nym);
        assert_eq!(tag_to_nym(tag_from_nym(nym)).to_bytes(), bytes);
    }

    #[test]
    fn tagged_message_becomes_a_frame_from_the_tag() {
        let tag = AnonymousSenderTag::from_bytes([7; 16]);
        let frame = inbound_from(ReconstructedMessage::new(b"frame".to_vec(), tag)).unwrap();
        assert_eq!(frame.from, Peer::Tag(SenderTag([7; 16])));
        assert_eq!(frame.bytes, b"frame");
    }

    #[test]
    fn untagged_message_is_dropped() {
        let message = ReconstructedMessage { message: b"frame".to_vec(), sender_tag: None };
        assert!(inbound_from(message).is_none());
    }

    #[test]
    fn frame_to_a_tag_is_a_surb_reply() {
        let out = Outbound { to: Peer::Tag(SenderTag([9; 16])), bytes: vec![1, 2, 3] };
        assert_eq!(
            send_for(out).unwrap(),
            Delivery::Reply { tag: AnonymousSenderTag::from_bytes([9; 16]), bytes: vec![1, 2, 3] }
        );
    }

    #[test]
    fn frame_to_a_node_goes_to_its_nym_address() {
        let recipient = recipient();
        let address = Address(recipient.to_string().into_bytes());
        let out = Outbound { to: Peer::Address(address), bytes: vec![4] };
        assert_eq!(send_for(out).unwrap(), Delivery::ToNode { recipient: Box::new(recipient), bytes: vec![4] });
    }

    #[test]
    fn node_address_must_be_utf8_nym_text() {
        let not_utf8 = Outbound { to: Peer::Address(Address(vec![0xff, 0xfe])), bytes: vec![] };
        assert!(matches!(send_for(not_utf8), Err(OutboundError::AddressNotUtf8)));
        let not_nym = Outbound { to: Peer::Address(Address(b"127.0.0.1:7000".to_vec())), bytes: vec![] };
        let err = send_for(not_nym).unwrap_err();
        assert!(matches!(err, OutboundError::AddressNotRecipient(_)));
        assert!(err.to_string().starts_with("node address is not a nym address"), "{err}");
    }

    #[test]
    fn node_messages_carry_no_surbs() {
        assert!(matches!(IncludedSurbs::new(NODE_MESSAGE_SURBS), IncludedSurbs::Amount(0)));
    }

    #[test]
    fn default_config_is_mainnet_with_sdk_surb_defaults() {
        let config = NymConfig::default();
        let debug = debug_config(&config).unwrap();
        assert_eq!(debug.reply_surbs, DebugConfig::default().reply_surbs);
        assert!(!debug.stats_reporting.enabled);
        let network = network_details(&config).unwrap();
        assert_eq!(network, NymNetworkDetails::new_mainnet());
    }

    #[test]
    fn config_parses_from_toml_and_rejects_unknown_fields() {
        let config: NymConfig = toml::from_str(
            r#"
            nym_api_urls = ["https://api.example.net/api"]
            gateway = "E3mvZTHQCdBvhfr178Swx9g4QG3kkRUun7YnToLMcMbM"
            force_tls = true
            reply_surbs_keep_min = 20
            reply_surbs_keep_max = 500
            reply_surbs_request_min = 20
            reply_surbs_request_max = 100
            reply_surbs_drop_after_secs = 600
            "#,
        )
        .unwrap();
        assert_eq!(config.nym_api_urls, ["https://api.example.net/api"]);
        assert!(config.force_tls && !config.credentials_mode);
        let debug = debug_config(&config).unwrap();
        let surbs = debug.reply_surbs;
        assert_eq!(surbs.minimum_reply_surb_storage_threshold, 20);
        assert_eq!(surbs.maximum_reply_surb_storage_threshold, 500);
        assert_eq!(surbs.minimum_reply_surb_request_size, 20);
        assert_eq!(surbs.maximum_reply_surb_request_size, 100);
        assert_eq!(surbs.maximum_reply_surb_drop_waiting_period, Duration::from_secs(600));
        // Untouched SDK settings stay the SDK's.
        assert_eq!(
            surbs.maximum_allowed_reply_surb_request_size,
            DebugConfig::default().reply_surbs.maximum_allowed_reply_surb_request_size
        );

        assert!(toml::from_str::<NymConfig>("").is_ok());
        assert!(toml::from_str::<NymConfig>("reply_surbs = 3").is_err());
    }

    #[test]
    fn inconsistent_surb_settings_are_config_errors() {
        let cases: [(NymConfig, &str); 4] = [
            (NymConfig { reply_surbs_keep_min: Some(0), ..Default::default() }, "reply_surbs_keep_min"),
            (NymConfig { reply_surbs_keep_min: Some(300), ..Default::default() }, "reply_surbs_keep_max"),
            (NymConfig { reply_surbs_request_min: Some(0), ..Default::default() }, "reply_surbs_request_min"),
            (NymConfig { reply_surbs_request_max: Some(5), ..Default::default() }, "reply_surbs_request_max"),
        ];
        for (config, expected) in cases {
            match debug_config(&config) {
                Err(NymError::Config { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }

    #[test]
    fn nym_api_override_reaches_gateway_selection_and_topology() {
        let urls = vec!["http://127.0.0.1:8080/".to_string(), "https://api.example.net/".to_string()];
        let config = NymConfig { nym_api_urls: urls.clone(), ..Default::default() };
        let network = network_details(&config).unwrap();
        let mainnet = NymNetworkDetails::new_mainnet();
        let api: Vec<String> = network.endpoints.iter().map(|e| e.api_url.clone().unwrap()).collect();
        assert_eq!(api, urls);
        assert!(network.endpoints.iter().all(|e| e.nyxd_url == mainnet.endpoints[0].nyxd_url));
        let topology: Vec<String> = network.nym_api_urls().into_iter().map(|a| a.url).collect();
        assert_eq!(topology, urls);

        let bad = NymConfig { nym_api_urls: vec!["not a url".into()], ..Default::default() };
        assert!(matches!(network_details(&bad), Err(NymError::Config { field: "nym_api_urls", .. })));
    }

    #[test]
    fn network_details_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.json");
        let mut custom = NymNetworkDetails::new_mainnet();
        custom.network_name = "private-testnet".into();
        std::fs::write(&path, serde_json::to_string(&custom).unwrap()).unwrap();
        let config = NymConfig { network_details_file: Some(path.clone()), ..Default::default() };
        assert_eq!(network_details(&config).unwrap(), custom);

        custom.endpoints[0].api_url = Some("::nonsense".into());
        custom.nym_api_urls = None;
        std::fs::write(&path, serde_json::to_string(&custom).unwrap()).unwrap();
        assert!(matches!(network_details(&config), Err(NymError::Config { .. })));

        std::fs::write(&path, "{").unwrap();
        assert!(matches!(network_details(&config), Err(NymError::NetworkJson { .. })));

        let missing = NymConfig { network_details_file: Some(dir.path().join("absent.json")), ..Default::default() };
        let err = network_details(&missing).unwrap_err();
        assert!(matches!(err, NymError::NetworkFile { .. }));
        assert!(err.to_string().contains("absent.json"), "{err}");
    }

    #[test]
    fn storage_lives_under_data_dir_nym() {
        assert_eq!(storage_dir(Path::new("/var/lib/nymstr")), Path::new("/var/lib/nymstr/nym"));
    }

    #[test]
    fn sdk_errors_keep_their_cause() {
        let err = NymError::Connect(Box::new(nym_sdk::Error::NoGatewayAvailable));
        assert_eq!(err.to_string(), "connecting to the mixnet: no available gateway");
        let source = std::error::Error::source(&err).unwrap();
        assert_eq!(source.to_string(), "no available gateway");
    }

    #[test]
    fn start_is_send() {
        fn assert_send<T: std::marker::Send>(_: &T) {}
        let (tx, _rx) = mpsc::channel(1);
        let dir = PathBuf::from("/nonexistent");
        assert_send(&start(NymConfig::default(), &dir, tx));
    }

    /// Runs the real SDK as far as it gets offline: keys are created under `<data_dir>/nym`
    /// and reused by the next start; gateway selection against an unreachable nym-api
    /// comes back as `NymError::Connect` (no panic, no hang).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offline_start_persists_keys_and_reports_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = NymConfig { nym_api_urls: vec!["http://127.0.0.1:9/".into()], ..Default::default() };
        let identity = dir.path().join("nym").join("public_identity.pem");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (tx, _rx) = mpsc::channel(1);
            let result = tokio::time::timeout(Duration::from_secs(120), start(config.clone(), dir.path(), tx))
                .await
                .expect("start gave up within two minutes");
            match result {
                Err(e @ NymError::Connect(_)) => eprintln!("offline start: {e}"),
                Err(other) => panic!("expected a connect error, got {other}"),
                Ok(handle) => panic!("connected offline to {}", handle.address),
            }
            seen.push(std::fs::read(&identity).unwrap());
        }
        assert_eq!(seen[0], seen[1], "the identity key changed between starts");
    }

    #[tokio::test]
    async fn start_fails_cleanly_on_a_bad_config_or_data_dir() {
        let (tx, _rx) = mpsc::channel(1);
        let dir = tempfile::tempdir().unwrap();
        let bad = NymConfig { reply_surbs_keep_min: Some(0), ..Default::default() };
        assert!(matches!(start(bad, dir.path(), tx.clone()).await, Err(NymError::Config { .. })));
        // Nothing was written for a config that does not check.
        assert!(!dir.path().join("nym").exists());

        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(start(NymConfig::default(), &file, tx).await, Err(NymError::DataDir { .. })));
    }
}
