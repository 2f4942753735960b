//! Serving our own prekey bundle to peers (`/kith/prekey/1`): each fetch may hand out a
//! one-time prekey, so fetches are rate-limited per peer ([`PREKEY_RATE`]); the answer comes
//! from the engine after its flush (a handed-out key is durably marked before it leaves).

use kith_core::engine::ReplyToken;
use libp2p::PeerId;
use tokio::time::Instant;

use crate::limiter::RateLimiter;
use crate::tokens::{Tokens, tag};

/// Inbound prekey fetches per peer (each may hand out a one-time prekey): per second, burst.
pub const PREKEY_RATE: (f64, f64) = (1.0 / 6.0, 10.0);

/// Admission of prekey fetches.
pub(crate) struct PreKeyServer {
    limiter: RateLimiter,
    tokens: Tokens,
}

impl Default for PreKeyServer {
    fn default() -> Self {
        Self {
            limiter: RateLimiter::new(PREKEY_RATE.0, PREKEY_RATE.1),
            tokens: Tokens::new(tag::PREKEYS),
        }
    }
}

impl PreKeyServer {
    /// A fetch from `peer`: the token for the engine's answer, or `None` if the peer is over
    /// its rate.
    pub(crate) fn admit(&mut self, peer: PeerId, now: Instant) -> Option<ReplyToken> {
        self.limiter.allow(peer, now).then(|| self.tokens.next())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_peer_gets_a_burst_of_bundles_then_one_every_six_seconds() {
        let mut server = PreKeyServer::default();
        let peer = PeerId::random();
        let burst = 10;
        assert_eq!(PREKEY_RATE.1, 10.0);
        let tokens: Vec<_> =
            (0..burst).filter_map(|_| server.admit(peer, Instant::now())).collect();
        assert_eq!(tokens.len(), burst);
        assert!(server.admit(peer, Instant::now()).is_none());
        assert!(
            server.admit(PeerId::random(), Instant::now()).is_some(),
            "other peers are not held up"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(server.admit(peer, Instant::now()).is_some());
        assert!(server.admit(peer, Instant::now()).is_none());
    }
}
