//! After a hole punch: the relayed connections to a peer that now has a direct one are closed,
//! once what was in flight on them is done.
//!
//! A relayed connection costs the relay's bandwidth and counts against its per-circuit byte
//! limit; once DCUtR has opened a direct connection, new streams should not land on the old
//! one. Closing it at once would fail the requests still in flight on it (a message would then
//! fall back to a relay it already reached), so it is closed after [`CLOSE_AFTER`], longer than
//! any request may take.
//!
//! Sans-IO: the driver reports upgrades and carries out the closes at their time.

use std::collections::VecDeque;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// How long a relayed connection stays up after a direct one replaced it (longer than
/// [`crate::defaults::REQUEST_TIMEOUT`]).
pub const CLOSE_AFTER: Duration = Duration::from_secs(15);

/// Peers whose relayed connections are due to close.
#[derive(Debug, Default)]
pub(crate) struct Upgrades {
    due: VecDeque<(Instant, PeerId)>,
}

impl Upgrades {
    /// A direct connection to `peer` is up: close its relayed ones after [`CLOSE_AFTER`].
    pub(crate) fn upgraded(&mut self, peer: PeerId, now: Instant) {
        self.due.retain(|(_, p)| *p != peer);
        self.due.push_back((now + CLOSE_AFTER, peer));
    }

    /// When the next close is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }

    /// The peers whose relayed connections are to be closed now.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut peers = Vec::new();
        while let Some((at, peer)) = self.due.front().copied() {
            if at > now {
                break;
            }
            self.due.pop_front();
            peers.push(peer);
        }
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn relayed_connections_close_only_after_in_flight_requests_had_their_time() {
        let mut upgrades = Upgrades::default();
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(upgrades.poll_timeout(), None);
        upgrades.upgraded(a, now);
        upgrades.upgraded(b, now + Duration::from_secs(5));
        assert!(CLOSE_AFTER > crate::defaults::REQUEST_TIMEOUT);
        assert_eq!(upgrades.poll_timeout(), Some(now + CLOSE_AFTER));
        assert!(upgrades.due(now + CLOSE_AFTER - Duration::from_millis(1)).is_empty());
        assert_eq!(upgrades.due(now + CLOSE_AFTER), vec![a]);
        assert_eq!(upgrades.poll_timeout(), Some(now + Duration::from_secs(5) + CLOSE_AFTER));
        // A second upgrade of the same peer restarts its wait.
        upgrades.upgraded(b, now + Duration::from_secs(10));
        assert_eq!(upgrades.due(now + Duration::from_secs(5) + CLOSE_AFTER), vec![]);
        assert_eq!(upgrades.due(now + Duration::from_secs(10) + CLOSE_AFTER), vec![b]);
        assert_eq!(upgrades.poll_timeout(), None);
    }
}
