//! Circuit reservations on our home relays: what makes a user behind NAT reachable.
//!
//! For each home relay the node listens on `<relay>/p2p-circuit` (libp2p circuit relay v2):
//! the relay then accepts connections for us and forwards them over our connection to it.
//! libp2p's relay client renews a reservation while it lasts; when it ends (the relay went
//! away, refused, or the connection dropped) the listener closes, and this component asks
//! again after a back-off (1 s doubling to 60 s), or at once when the relay is connected again.
//!
//! Sans-IO: the driver carries out [`ReservationAction`]s and feeds listener events back.

use std::collections::VecDeque;
use std::time::Duration;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// The first wait before asking a relay again.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait before asking a relay again.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// What the driver does for this component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReservationAction {
    /// Listen on `address` (a `/p2p-circuit` address through `relay`), then report the
    /// listener with [`Reservations::started`].
    Listen {
        /// The relay asked.
        relay: PeerId,
        /// `<relay address>/p2p-circuit`.
        address: Multiaddr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not asked yet, or asked and lost: ask at `retry_at` (`None`: at once).
    Waiting { retry_at: Option<Instant> },
    /// A listener is up, its reservation not confirmed yet.
    Asking(ListenerId),
    /// The relay holds a reservation for us: peers reach us at `address`.
    Held { listener: ListenerId, address: Multiaddr },
}

#[derive(Debug)]
struct Relay {
    peer: PeerId,
    address: Multiaddr,
    state: State,
    backoff: Duration,
}

/// Our reservations, one per home relay.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    relays: Vec<Relay>,
    actions: VecDeque<ReservationAction>,
}

impl Reservations {
    /// Reservations on `relays` (each ending in `/p2p/<relay-id>`; others are skipped), asked
    /// for on the first [`Reservations::handle_timeout`].
    pub(crate) fn new(relays: &[Multiaddr]) -> Self {
        let relays = relays
            .iter()
            .filter_map(|address| match address.iter().last() {
                Some(Protocol::P2p(peer)) => Some(Relay {
                    peer,
                    address: address.clone(),
                    state: State::Waiting { retry_at: None },
                    backoff: FIRST_RETRY,
                }),
                _ => None,
            })
            .collect();
        Self { relays, actions: VecDeque::new() }
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<ReservationAction> {
        self.actions.pop_front()
    }

    /// When [`Reservations::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.relays
            .iter()
            .filter_map(|r| match r.state {
                State::Waiting { retry_at: Some(at) } => Some(at),
                _ => None,
            })
            .min()
    }

    /// Asks the relays whose wait is over (and those never asked).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for relay in &mut self.relays {
            if let State::Waiting { retry_at } = relay.state
                && retry_at.is_none_or(|at| at <= now)
            {
                let address = relay.address.clone().with(Protocol::P2pCircuit);
                self.actions.push_back(ReservationAction::Listen { relay: relay.peer, address });
                // Until the driver reports the listener: not asked twice.
                relay.state = State::Waiting { retry_at: Some(now + MAX_RETRY) };
            }
        }
    }

    /// The driver listens on `relay`'s circuit as `listener` (`None`: it could not).
    pub(crate) fn started(&mut self, relay: PeerId, listener: Option<ListenerId>, now: Instant) {
        let Some(r) = self.relays.iter_mut().find(|r| r.peer == relay) else { return };
        match listener {
            Some(id) => r.state = State::Asking(id),
            None => r.retry_later(now),
        }
    }

    /// A listener reported `address`: if it is one of ours, the reservation is held.
    /// Returns whether it was ours.
    pub(crate) fn listening(&mut self, listener: ListenerId, address: &Multiaddr) -> bool {
        let Some(r) = self.relays.iter_mut().find(|r| r.listener() == Some(listener)) else {
            return false;
        };
        r.state = State::Held { listener, address: address.clone() };
        r.backoff = FIRST_RETRY;
        true
    }

    /// A listener closed: if it is one of ours, ask again after the back-off. Returns whether
    /// it was ours.
    pub(crate) fn closed(&mut self, listener: ListenerId, now: Instant) -> bool {
        let Some(r) = self.relays.iter_mut().find(|r| r.listener() == Some(listener)) else {
            return false;
        };
        r.retry_later(now);
        true
    }

    /// `peer` is connected: if it is a relay of ours waiting out a back-off, ask it now.
    pub(crate) fn connected(&mut self, peer: PeerId, now: Instant) {
        for r in self.relays.iter_mut().filter(|r| r.peer == peer) {
            if matches!(r.state, State::Waiting { .. }) {
                r.state = State::Waiting { retry_at: Some(now) };
            }
        }
    }
}

impl Relay {
    fn listener(&self) -> Option<ListenerId> {
        match self.state {
            State::Asking(id) | State::Held { listener: id, .. } => Some(id),
            State::Waiting { .. } => None,
        }
    }

    fn retry_later(&mut self, now: Instant) {
        self.state = State::Waiting { retry_at: Some(now + self.backoff) };
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (PeerId, Multiaddr) {
        let id = PeerId::random();
        (id, format!("/ip4/203.0.113.7/tcp/4001/p2p/{id}").parse().unwrap())
    }

    fn listen(r: &mut Reservations) -> (PeerId, Multiaddr) {
        match r.poll_action() {
            Some(ReservationAction::Listen { relay, address }) => (relay, address),
            None => panic!("expected a listen action"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_home_relay_is_asked_once_at_start() {
        let (a, a_addr) = relay();
        let (b, b_addr) = relay();
        let bare: Multiaddr = "/ip4/203.0.113.9/tcp/4001".parse().unwrap();
        let mut r = Reservations::new(&[a_addr.clone(), b_addr, bare]);
        let now = Instant::now();
        r.handle_timeout(now);
        let (first, address) = listen(&mut r);
        assert_eq!(first, a);
        assert_eq!(address, a_addr.with(Protocol::P2pCircuit));
        assert_eq!(listen(&mut r).0, b);
        assert!(r.poll_action().is_none(), "the relay without a peer id is skipped");
        r.handle_timeout(now + Duration::from_secs(1));
        assert!(r.poll_action().is_none(), "not asked twice while the driver sets it up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_reservation_gives_our_circuit_address() {
        let (a, a_addr) = relay();
        let mut r = Reservations::new(&[a_addr]);
        let now = Instant::now();
        r.handle_timeout(now);
        let (_, address) = listen(&mut r);
        let id = ListenerId::next();
        r.started(a, Some(id), now);
        assert_eq!(r.relays[0].state, State::Asking(id), "asked, not held yet");
        assert!(!r.listening(ListenerId::next(), &address), "another listener is not ours");
        let ours = address.with(Protocol::P2p(PeerId::random()));
        assert!(r.listening(id, &ours));
        assert_eq!(r.relays[0].state, State::Held { listener: id, address: ours });
        assert_eq!(r.poll_timeout(), None, "nothing to do while it is held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_reservation_is_asked_again_after_a_doubling_back_off() {
        let (a, a_addr) = relay();
        let mut r = Reservations::new(&[a_addr]);
        let mut now = Instant::now();
        r.handle_timeout(now);
        let mut waits = Vec::new();
        for _ in 0..8 {
            listen(&mut r);
            let id = ListenerId::next();
            r.started(a, Some(id), now);
            assert!(r.closed(id, now));
            let at = r.poll_timeout().unwrap();
            waits.push((at - now).as_secs());
            r.handle_timeout(at - Duration::from_millis(1));
            assert!(r.poll_action().is_none(), "not before the back-off");
            now = at;
            r.handle_timeout(now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // Held again: the back-off starts over.
        let (_, address) = listen(&mut r);
        let id = ListenerId::next();
        r.started(a, Some(id), now);
        assert!(r.listening(id, &address));
        assert!(r.closed(id, now));
        assert_eq!(r.poll_timeout(), Some(now + FIRST_RETRY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_connects_again_is_asked_at_once() {
        let (a, a_addr) = relay();
        let mut r = Reservations::new(&[a_addr]);
        let now = Instant::now();
        r.handle_timeout(now);
        listen(&mut r);
        r.started(a, None, now);
        assert_eq!(r.poll_timeout(), Some(now + FIRST_RETRY), "listen_on failed: back off");
        r.connected(PeerId::random(), now);
        assert_eq!(r.poll_timeout(), Some(now + FIRST_RETRY), "another peer changes nothing");
        r.connected(a, now);
        r.handle_timeout(now);
        assert_eq!(listen(&mut r).0, a);
    }
}
