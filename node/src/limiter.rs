//! Token buckets per peer (or per any key: a recipient, an access key) for inbound requests
//! (bounded: the map cannot grow without limit).

use std::collections::HashMap;
use std::hash::Hash;
use tokio::time::Instant;

use libp2p::PeerId;

/// Peers tracked at most; beyond it idle peers are forgotten first.
pub const MAX_TRACKED_PEERS: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A token bucket per key: `rate` requests per second on average, bursts up to `burst`.
#[derive(Debug)]
pub(crate) struct RateLimiter<K = PeerId> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter allowing `rate` per second with bursts of `burst`.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: HashMap::new() }
    }

    /// Takes a token for `peer` if one is available.
    pub(crate) fn allow(&mut self, peer: K, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED_PEERS && !self.buckets.contains_key(&peer) {
            let (rate, burst) = (self.rate, self.burst);
            // A bucket that has refilled completely carries no information.
            self.buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= MAX_TRACKED_PEERS {
                self.buckets.clear();
            }
        }
        let bucket =
            self.buckets.entry(peer).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_refills_and_stays_bounded() {
        let mut limiter = RateLimiter::new(1.0, 3.0);
        let peer = PeerId::random();
        let t = Instant::now();
        // (tokio's clock, which tests can pause; here it simply reads the real one.)
        assert!((0..3).all(|_| limiter.allow(peer, t)));
        assert!(!limiter.allow(peer, t));
        assert!(limiter.allow(peer, t + Duration::from_secs(1)));
        for _ in 0..MAX_TRACKED_PEERS * 2 {
            limiter.allow(PeerId::random(), t);
        }
        assert!(limiter.buckets.len() <= MAX_TRACKED_PEERS);
    }
}
