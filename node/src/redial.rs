//! Getting a lost peer back within seconds: while something is queued for a peer we lost the
//! connection to, the node dials it every [`REDIAL_INTERVAL`] (for up to [`REDIAL_WINDOW`]),
//! so that when the link heals the queued messages and receipts leave at once, instead of at
//! the next step of the outbox's exponential back-off (which reaches minutes).
//!
//! Each dial is a fresh one even while an earlier one is pending (an earlier dial's SYN is
//! retransmitted ever more slowly during an outage); with this schedule (30 dials in the first
//! minute, 6 a minute after) and at most [`MAX_REDIAL_PEERS`] peers, the sockets left pending
//! stay bounded (a dial the network swallows is given up by the kernel within about 2 min).
//!
//! A dead connection is noticed by ping (see `liveness`): one silent for
//! [`crate::defaults::DEAD_CONNECTION_AFTER`] is closed, so that requests stop queueing behind
//! a TCP connection retransmitting into a void, and the peer lands here.
//!
//! Sans-IO: the driver reports losses and reconnections, asks which peers have something
//! queued, and carries out the dials.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// Time between two dials of a lost peer with something queued.
pub const REDIAL_INTERVAL: Duration = Duration::from_secs(2);
/// How long after the loss the node dials every [`REDIAL_INTERVAL`]; then every
/// [`SLOW_REDIAL_INTERVAL`] until [`REDIAL_WINDOW`].
pub const FAST_REDIAL: Duration = Duration::from_secs(60);
/// Time between two dials after [`FAST_REDIAL`].
pub const SLOW_REDIAL_INTERVAL: Duration = Duration::from_secs(10);
/// How long after the loss the node keeps dialing (then the outbox's back-off alone retries).
pub const REDIAL_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Most lost peers followed at once (the oldest loss is dropped first).
pub const MAX_REDIAL_PEERS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lost {
    since: Instant,
    next: Instant,
}

/// Peers lost recently.
#[derive(Debug, Default)]
pub(crate) struct Redial {
    peers: HashMap<PeerId, Lost>,
}

impl Redial {
    /// The connection to `peer` is gone (or could not be made).
    pub(crate) fn lost(&mut self, peer: PeerId, now: Instant) {
        if self.peers.contains_key(&peer) {
            return;
        }
        if self.peers.len() >= MAX_REDIAL_PEERS
            && let Some(oldest) = self.peers.iter().min_by_key(|(_, l)| l.since).map(|(p, _)| *p)
        {
            self.peers.remove(&oldest);
        }
        self.peers.insert(peer, Lost { since: now, next: now + REDIAL_INTERVAL / 2 });
    }

    /// `peer` is connected again.
    pub(crate) fn connected(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// When [`Redial::due`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().map(|l| l.next).min()
    }

    /// The peers to dial now: those due that `wanted` says have something queued. Peers lost
    /// longer than [`REDIAL_WINDOW`] ago are forgotten.
    pub(crate) fn due(&mut self, now: Instant, wanted: impl Fn(&PeerId) -> bool) -> Vec<PeerId> {
        self.peers.retain(|_, l| now.duration_since(l.since) < REDIAL_WINDOW);
        let mut dial = Vec::new();
        for (peer, lost) in &mut self.peers {
            if lost.next <= now {
                let fast = now.duration_since(lost.since) < FAST_REDIAL;
                lost.next = now + if fast { REDIAL_INTERVAL } else { SLOW_REDIAL_INTERVAL };
                if wanted(peer) {
                    dial.push(*peer);
                }
            }
        }
        dial.sort();
        dial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lost_peer_with_something_queued_is_dialed_every_interval_until_it_is_back() {
        let mut redial = Redial::default();
        let start = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        redial.lost(a, start);
        redial.lost(b, start);
        let first = redial.poll_timeout().unwrap();
        assert_eq!(first, start + REDIAL_INTERVAL / 2);
        // Only `a` has something queued.
        assert_eq!(redial.due(first, |p| *p == a), vec![a]);
        assert!(redial.due(first, |_| true).is_empty(), "not twice in one interval");
        let next = redial.poll_timeout().unwrap();
        assert_eq!(next, first + REDIAL_INTERVAL);
        let mut both = redial.due(next, |_| true);
        both.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(both, want);
        redial.connected(&a);
        assert_eq!(redial.due(next + REDIAL_INTERVAL, |_| true), vec![b]);
        // After the fast phase, slower.
        let late = start + FAST_REDIAL + Duration::from_secs(1);
        assert_eq!(redial.due(late, |_| true), vec![b]);
        assert_eq!(redial.poll_timeout(), Some(late + SLOW_REDIAL_INTERVAL));
    }

    #[tokio::test(start_paused = true)]
    async fn peers_are_forgotten_after_the_window_and_the_set_is_bounded() {
        let mut redial = Redial::default();
        let start = Instant::now();
        let a = PeerId::random();
        redial.lost(a, start);
        redial.lost(a, start + Duration::from_secs(5));
        assert!(redial.due(start + REDIAL_WINDOW, |_| true).is_empty(), "forgotten");
        assert_eq!(redial.poll_timeout(), None);
        for i in 0..=MAX_REDIAL_PEERS {
            redial.lost(PeerId::random(), start + Duration::from_millis(i as u64));
        }
        assert_eq!(redial.peers.len(), MAX_REDIAL_PEERS);
    }
}
