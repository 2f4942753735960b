//! Where to dial a peer that the DHT cannot place: the relayed (`/p2p-circuit`) addresses
//! through the peer's home relays.
//!
//! A user behind NAT is a DHT client, so a lookup of its PeerId finds no address; its contact
//! string and user record name its home relays, where it holds a circuit reservation. The
//! driver writes those circuit addresses here; every dial by PeerId (a delivery, a group
//! member, a download) then tries them beside what Kademlia and identify know. Once a
//! relayed connection is up, DCUtR tries to replace it by a direct one.
//!
//! Bounded: at most [`MAX_PEERS`] peers and [`MAX_ADDRESSES_PER_PEER`] addresses each; the
//! least recently set peer goes first.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Most peers the book remembers.
pub const MAX_PEERS: usize = 4096;
/// Most addresses remembered for one peer.
pub const MAX_ADDRESSES_PER_PEER: usize = 8;

/// The relayed address of `peer` through `relay` (which must end in `/p2p/<relay-id>`), or
/// `None` if `relay` names no relay peer, is itself relayed, or is `peer`.
pub(crate) fn circuit_through(relay: &Multiaddr, peer: PeerId) -> Option<Multiaddr> {
    let relay_peer = match relay.iter().last() {
        Some(Protocol::P2p(id)) => id,
        _ => return None,
    };
    if relay_peer == peer || relay.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    Some(relay.clone().with(Protocol::P2pCircuit).with(Protocol::P2p(peer)))
}

/// The addresses the driver knows for peers beyond the DHT, given to the swarm's dials.
#[derive(Default)]
pub(crate) struct AddressBook {
    peers: HashMap<PeerId, Vec<Multiaddr>>,
    /// Set order, oldest first (a peer appears once).
    order: VecDeque<PeerId>,
}

impl AddressBook {
    /// Replaces what is known for `peer` (empty: forgets it).
    pub(crate) fn set(&mut self, peer: PeerId, mut addresses: Vec<Multiaddr>) {
        self.order.retain(|p| *p != peer);
        addresses.dedup();
        addresses.truncate(MAX_ADDRESSES_PER_PEER);
        if addresses.is_empty() {
            self.peers.remove(&peer);
            return;
        }
        while self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&peer) {
            let Some(oldest) = self.order.pop_front() else { break };
            self.peers.remove(&oldest);
        }
        self.peers.insert(peer, addresses);
        self.order.push_back(peer);
    }

    /// Sets `peer`'s addresses to its circuits through `relays` (multiaddr strings; bad ones
    /// are skipped).
    pub(crate) fn set_relays<S: AsRef<str>>(&mut self, peer: PeerId, relays: &[S]) {
        let circuits = relays
            .iter()
            .filter_map(|r| r.as_ref().parse::<Multiaddr>().ok())
            .filter_map(|relay| circuit_through(&relay, peer))
            .collect();
        self.set(peer, circuits);
    }

    /// Adds `more` to what is known for `peer` (kept first-come, up to the bound).
    pub(crate) fn extend(&mut self, peer: PeerId, more: Vec<Multiaddr>) {
        let mut addresses = self.get(&peer).to_vec();
        addresses.extend(more.into_iter().filter(|a| !addresses.contains(a)).collect::<Vec<_>>());
        self.set(peer, addresses);
    }

    /// What is known for `peer`.
    pub(crate) fn get(&self, peer: &PeerId) -> &[Multiaddr] {
        self.peers.get(peer).map_or(&[], Vec::as_slice)
    }
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer.map(|p| self.get(&p).to_vec()).unwrap_or_default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> (PeerId, Multiaddr) {
        let id = PeerId::random();
        (id, format!("/ip4/203.0.113.7/tcp/4001/p2p/{id}").parse().unwrap())
    }

    #[test]
    fn a_circuit_goes_through_the_relay_to_the_peer() {
        let (relay_id, relay) = relay();
        let peer = PeerId::random();
        let circuit = circuit_through(&relay, peer).unwrap();
        assert_eq!(
            circuit.to_string(),
            format!("/ip4/203.0.113.7/tcp/4001/p2p/{relay_id}/p2p-circuit/p2p/{peer}")
        );
    }

    #[test]
    fn no_circuit_without_a_relay_id_through_a_circuit_or_to_the_relay_itself() {
        let peer = PeerId::random();
        let bare: Multiaddr = "/ip4/203.0.113.7/tcp/4001".parse().unwrap();
        assert!(circuit_through(&bare, peer).is_none());
        let (relay_id, relay) = relay();
        assert!(circuit_through(&relay, relay_id).is_none());
        let nested = circuit_through(&relay, peer).unwrap();
        assert!(circuit_through(&nested, PeerId::random()).is_none());
    }

    #[test]
    fn dials_get_the_circuits_and_bad_relays_are_skipped() {
        let mut book = AddressBook::default();
        let peer = PeerId::random();
        let (_, good) = relay();
        book.set_relays(peer, &[good.to_string(), "not an address".into()]);
        let given = book
            .handle_pending_outbound_connection(
                ConnectionId::new_unchecked(1),
                Some(peer),
                &[],
                Endpoint::Dialer,
            )
            .unwrap();
        assert_eq!(given, vec![circuit_through(&good, peer).unwrap()]);
        let none = book
            .handle_pending_outbound_connection(
                ConnectionId::new_unchecked(2),
                Some(PeerId::random()),
                &[],
                Endpoint::Dialer,
            )
            .unwrap();
        assert!(none.is_empty());
        book.set_relays::<String>(peer, &[]);
        assert!(book.get(&peer).is_empty());
    }

    #[test]
    fn addresses_from_a_record_are_added_to_the_circuits_without_duplicates() {
        let mut book = AddressBook::default();
        let peer = PeerId::random();
        let (_, relay) = relay();
        book.set_relays(peer, &[relay.to_string()]);
        let direct: Multiaddr = "/ip4/198.51.100.4/tcp/4001".parse().unwrap();
        let circuit = circuit_through(&relay, peer).unwrap();
        book.extend(peer, vec![direct.clone(), circuit.clone()]);
        assert_eq!(book.get(&peer), [circuit, direct]);
    }

    #[test]
    fn the_book_is_bounded_and_forgets_the_oldest_peer_first() {
        let mut book = AddressBook::default();
        let (_, relay) = relay();
        let peers: Vec<PeerId> = (0..=MAX_PEERS).map(|_| PeerId::random()).collect();
        for peer in &peers {
            book.set(*peer, vec![circuit_through(&relay, *peer).unwrap()]);
        }
        assert_eq!(book.peers.len(), MAX_PEERS);
        assert!(book.get(&peers[0]).is_empty(), "the oldest is gone");
        assert!(!book.get(&peers[MAX_PEERS]).is_empty());
        // Setting a peer again makes it the newest.
        book.set(peers[1], vec![relay.clone()]);
        book.set(PeerId::random(), vec![relay.clone()]);
        assert!(!book.get(&peers[1]).is_empty());
        assert!(book.get(&peers[2]).is_empty());
        let many: Vec<Multiaddr> =
            (0..20).map(|i| format!("/ip4/10.0.0.{i}/tcp/1").parse().unwrap()).collect();
        book.set(peers[1], many);
        assert_eq!(book.get(&peers[1]).len(), MAX_ADDRESSES_PER_PEER);
    }
}
