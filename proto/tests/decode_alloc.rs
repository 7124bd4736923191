//! Decoding hostile bytes never reserves memory on the word of a length prefix: peak heap
//! growth while decoding any frame stays within a small multiple of the frame limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use nymstr_proto::codec::decode_frame;
use nymstr_proto::limits::FRAME_BYTES_MAX;
use nymstr_proto::wire::WIRE_VERSION;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counters are process-wide: measurements take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Peak bytes allocated above the starting level while decoding `bytes`.
fn peak_growth(bytes: &[u8]) -> usize {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let _ = decode_frame(bytes);
    PEAK.load(Ordering::SeqCst).saturating_sub(base)
}

/// A varint claiming `n` (bincode: 0xfd then a little-endian u64).
fn huge(n: u64) -> Vec<u8> {
    let mut v = vec![0xfd];
    v.extend_from_slice(&n.to_le_bytes());
    v
}

fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let mut f = vec![WIRE_VERSION];
    for p in parts {
        f.extend_from_slice(p);
    }
    f
}

#[test]
fn hostile_length_prefixes_allocate_little() {
    let big = huge(1 << 40);
    let mid = huge(60_000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Lookup { username }
        ("lookup username", frame(&[&[0, 7], &big])),
        // SendDm { from, to, msg_id, payloads }: payload count claims 2^40, then 60,000.
        ("send_dm payloads", frame(&[&[0, 9], &[1; 32], &[3], b"bob", &[2; 16], &big])),
        ("send_dm payloads mid", frame(&[&[0, 9], &[1; 32], &[3], b"bob", &[2; 16], &mid])),
        // ... one payload whose sealed bytes claim 2^40.
        ("send_dm sealed", frame(&[&[0, 9], &[1; 32], &[3], b"bob", &[2; 16], &[1], &[4; 32], &big])),
        // Deliver { delivery_id, from_username, from, msg_id, sealed }
        ("deliver sealed", frame(&[&[0, 11, 1, 3], b"bob", &[1; 32], &[2; 16], &big])),
        // AckDelivery { delivery_ids }
        ("ack ids", frame(&[&[0, 12], &big])),
        // LookupResult { username, account_key, installations }
        ("lookup_result installations", frame(&[&[0, 8, 3], b"bob", &[5; 32], &big])),
        // Error { code, detail }
        ("error detail", frame(&[&[0, 13, 1], &big])),
    ];
    for (name, bytes) in cases {
        assert!(decode_frame(&bytes).is_err(), "{name} decoded");
        let grew = peak_growth(&bytes);
        assert!(grew <= 2 * FRAME_BYTES_MAX, "{name}: decoding reserved {grew} bytes");
    }
}

#[test]
fn random_frames_allocate_little() {
    // A deterministic xorshift stream of candidate frames, biased to valid prefixes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 96) as usize;
        let mut bytes = vec![WIRE_VERSION, 0, (next() % 14) as u8];
        for _ in 0..len {
            let b = next();
            bytes.push(if b % 5 == 0 { 0xfd } else { (b >> 8) as u8 });
        }
        let grew = peak_growth(&bytes);
        assert!(grew <= 2 * FRAME_BYTES_MAX, "{bytes:02x?}: decoding reserved {grew} bytes");
    }
}
