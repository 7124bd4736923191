//! The mixnet model (Loopix/Nym style). A message is cut into fixed-size packets; each
//! packet leaves its sender on a Poisson stream, crosses `hops` hops with an exponential
//! delay at each, and may be lost (or its ack lost), in which case the sender retransmits
//! after Nym's timeout: 1.5 x the expected packet + ack round trip + `retransmit_extra_ms`.
//! Replies to an anonymous sender consume its SURBs; when a node runs low it spends one
//! to ask for more, as Nym clients do.

use rand_chacha::ChaCha20Rng;

use crate::rng;
use crate::scenario;

/// Microseconds.
pub type Us = u64;

pub fn ms_to_us(ms: f64) -> Us {
    (ms * 1000.0).round().max(0.0) as Us
}

/// Number of packets a message of `bytes` (plus attached SURBs) needs.
pub fn fragments(p: &scenario::Mixnet, bytes: usize, surbs: u32) -> u32 {
    let total = bytes + surbs as usize * p.surb_bytes as usize;
    total.div_ceil(p.packet_payload_bytes as usize).max(1) as u32
}

/// Retransmission timeout for one packet.
pub fn retransmit_timeout_us(p: &scenario::Mixnet) -> Us {
    let round_trip_ms = 2.0 * f64::from(p.hops) * p.hop_delay_ms_mean;
    ms_to_us(1.5 * round_trip_ms + p.retransmit_extra_ms)
}

/// Time one packet spends crossing every hop.
pub fn transit_us(p: &scenario::Mixnet, rng: &mut ChaCha20Rng) -> Us {
    let total_ms: f64 = (0..p.hops).map(|_| rng::exp(rng, p.hop_delay_ms_mean)).sum();
    ms_to_us(total_ms)
}

/// Departure of the next packet from a Poisson-paced sender whose previous packet left
/// (or will leave) at `last_depart`.
pub fn next_departure(now: Us, last_depart: Us, interval_ms_mean: f64, rng: &mut ChaCha20Rng) -> Us {
    now.max(last_depart) + ms_to_us(rng::exp(rng, interval_ms_mean))
}

/// Expected time for a `k`-packet message to arrive whole, from an idle sender, by Monte
/// Carlo over the same distributions (used by the latency oracle): (mean, standard error).
pub fn expected_message_us(p: &scenario::Mixnet, k: u32, interval_ms_mean: f64, rng: &mut ChaCha20Rng) -> (f64, f64) {
    const SAMPLES: u32 = 100_000;
    let mut m = Moments::default();
    for _ in 0..SAMPLES {
        let mut depart = 0;
        let mut last = 0;
        for _ in 0..k {
            depart = next_departure(0, depart, interval_ms_mean, rng);
            last = last.max(depart + transit_us(p, rng));
        }
        m.add(last as f64);
    }
    (m.mean(), m.std_error())
}

/// Running mean and variance (Welford), for the statistical oracles.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moments {
    pub n: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }
    pub fn mean(&self) -> f64 {
        self.mean
    }
    pub fn variance(&self) -> f64 {
        if self.n < 2 { 0.0 } else { self.m2 / (self.n - 1) as f64 }
    }
    /// Standard error of the mean.
    pub fn std_error(&self) -> f64 {
        if self.n == 0 { f64::INFINITY } else { (self.variance() / self.n as f64).sqrt() }
    }
}
