//! Helpers shared by the node's unit tests.

use kith_core::identity::IdentityKeyPair;
use kith_protocol::UserId;
use libp2p::PeerId;

/// A fresh identity: its user id and the peer id it runs under.
pub(crate) struct User {
    pub(crate) id: UserId,
    pub(crate) peer: PeerId,
}

/// A user with a new random identity.
pub(crate) fn user() -> User {
    let keys = IdentityKeyPair::generate(&mut rand::rng());
    User { id: keys.user_id(), peer: keys.libp2p_keypair().public().to_peer_id() }
}
