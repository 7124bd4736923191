//! Every bound of the protocol and of its cores, in one place (TigerBeetle style: units in
//! names). A bound both ends must agree on is normative (`specs/wire.md` §7, `SPECv1.md`);
//! the others bound a node's or a client's own tables and queues.

/// Largest frame accepted on any transport, in bytes (version byte included).
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
/// Largest record a node's store or a client's home may hold, in bytes: the decode limit
/// of local records (`codec::decode_record`), kept apart from the wire's frame limit so a
/// local record that grew past 64 KiB is not taken for a corrupt one. Stores keep their
/// records far smaller (one row per item: a witnessed head, a pin); this bounds only the
/// allocation of a decode, and lets a record of the previous single-record layouts be
/// read once to be rewritten as rows.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest end-to-end payload for one recipient installation, in bytes.
pub const DM_PAYLOAD_BYTES_MAX: usize = 32 * 1024;
/// Installations one account may hold (multi-device, F1).
pub const INSTALLATIONS_PER_ACCOUNT_MAX: usize = 16;
/// Delivery ids one `AckDelivery` may carry.
pub const ACK_IDS_MAX: usize = 256;
/// Length of a free-text error detail on the wire.
pub const ERROR_DETAIL_BYTES_MAX: usize = 256;
/// Username length after case folding, in bytes.
pub const USERNAME_BYTES_MIN: usize = 3;
pub const USERNAME_BYTES_MAX: usize = 32;
/// Transport address length, in bytes: a node descriptor's address, a group node's
/// address in an advert, a direct-mode address, a TCP preface. One bound for all of
/// them: a Nym address as text is 134 bytes, so the former 128 for group nodes and
/// direct mode would have refused a Nym group node that descriptors (256) accepted.
pub const ADDRESS_BYTES_MAX: usize = 256;
/// Log entries one `GroupEntries` reply may carry (the reply must also fit one frame).
pub const GROUP_FETCH_MAX: usize = 64;
/// Adverts one `Directory` reply may carry.
pub const DIRECTORY_ADVERTS_MAX: usize = 64;
/// Largest MLS message (or GroupInfo) one `GroupUpload` may carry, in bytes.
pub const GROUP_MLS_BYTES_MAX: usize = 48 * 1024;
/// Group name and description lengths, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 64;
pub const GROUP_DESCRIPTION_BYTES_MAX: usize = 512;
/// Members of one group (one steward's fan-out).
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Items one `Gossip` message may carry.
pub const GOSSIP_ITEMS_MAX: usize = 32;
/// Descriptors one `Nodes` reply may carry.
pub const DESCRIPTORS_MAX: usize = 128;
/// Authenticated peers one node keeps.
pub const PEERS_MAX: usize = 256;
/// How old a `ForwardDm` (its signed `sent_at_us`) may be when it arrives: 10 minutes.
/// The receiver also caps it at its send-dedupe lifetime less `FORWARD_CLOCK_SKEW_US`,
/// so a forward it accepts twice is always within the dedupe window (a replay is acked,
/// never queued again) and a replay after that window is refused.
pub const FORWARD_FRESHNESS_US: u64 = 600_000_000;
/// How far in the future a `ForwardDm`'s `sent_at_us` may be (clock skew): 1 minute.
pub const FORWARD_CLOCK_SKEW_US: u64 = 60_000_000;

// Federation (SPECv1, `specs/transparency.md`, `specs/trust.md`).
/// Longest policy text a node descriptor may carry, in bytes.
pub const POLICY_BYTES_MAX: usize = 64;
/// Most cosignatures carried with one head.
pub const COSIGNATURES_MAX: usize = 32;
/// Most hashes in one Merkle proof (a tree of 2^64 leaves needs 64; consistency ≤ 2·64).
pub const PROOF_HASHES_MAX: usize = 130;
/// How many recent heads a witness view keeps per node to recognise a fork of an epoch
/// older than the last one it cosigned.
pub const WITNESS_RECENT_HEADS: usize = 64;
/// Nodes a witness keeps heads for (each up to [`WITNESS_RECENT_HEADS`], one stored row a
/// head). When full, a new node takes the place of the node that got a head cosigned the
/// longest ago, and only if that was at least [`WITNESS_IDLE_US`] ago; otherwise the
/// cosign request is refused (`Busy`). A node that seals every epoch is never evicted: a
/// flood of sybil nodes can only fill free or idle slots, and at worst makes this witness
/// refuse new nodes for a while (they ask other witnesses).
pub const WITNESS_NODES_MAX: usize = 1_024;
/// How long a node must have gone without a new head cosigned before a new node may take
/// its place in a full witness view, in µs (one day).
pub const WITNESS_IDLE_US: u64 = 24 * 3_600 * 1_000_000;
/// Node keys a client's verifier knows (set-up witnesses and nodes met as the server of a
/// lookup); accepted heads and distrusted nodes are at most one per known node. When
/// full, a new node is not learnt (its lookups fail as `unknown_node`); no known node is
/// ever evicted, so names on many attacker nodes cannot push out honest ones.
pub const KT_NODES_MAX: usize = 4_096;
/// Pins (name at node -> account key) a client's verifier keeps, one stored row each.
/// When full, a new name still verifies but is not pinned; existing pins are never
/// evicted, since evicting a pin would let its key change unnoticed, so a flood of
/// sybil names (each one a registration and a DM) can only use up the free room.
pub const KT_PINS_MAX: usize = 100_000;

// A node's federation tables (`SPECv1.md` §9.6): what one peer, or a flood of fresh
// self-signed descriptors, can make a node hold or do.
/// Node descriptors one node keeps (`known`). When full, a new descriptor takes the place
/// of the oldest-issued descriptor that is not kept; kept are configured (bootstrap)
/// nodes, authenticated peers and nodes whose heads this node verified or witnessed. If
/// every slot is kept, the new descriptor is refused. Nothing kept is ever evicted.
pub const KNOWN_NODES_MAX: usize = 1_024;
/// Descriptors of unverified nodes one gossiping peer may introduce (it is remembered as
/// their introducer until they become kept or are evicted): a sybil operator needs many
/// authenticated peerings, each one a `PEERS_MAX` slot, to fill `KNOWN_NODES_MAX`.
pub const KNOWN_PER_INTRODUCER_MAX: usize = 16;
/// Peering handshakes under way (either direction). Full: no new hello is sent, and a
/// hello from a new address is refused `Busy`.
pub const HANDSHAKES_MAX: usize = 256;
/// How long a handshake waits for its answer before it is dropped, in µs.
pub const HANDSHAKE_TIMEOUT_US: u64 = 60_000_000;
/// Nodes a node greets after one `Gossip` message, and per peering retry beyond its
/// configured and kept nodes: new descriptors are not each dialled at once.
pub const HELLOS_PER_ROUND_MAX: usize = 4;
/// Public group adverts learnt from peers that one node keeps, and per hosting node.
/// When full, an advert from a host that is not kept takes no room; otherwise the
/// oldest-issued advert of a host that is not kept makes room, if there is one.
pub const ADVERTS_MAX: usize = 4_096;
pub const ADVERTS_PER_HOST_MAX: usize = 256;
/// How far in the future of the receiver's clock an advert's `issued_at_us` may be: 1
/// minute. A later date is refused, so no advert can pin a directory entry.
pub const ADVERT_CLOCK_SKEW_US: u64 = 60_000_000;
