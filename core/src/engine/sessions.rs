//! The decoded sessions of recently active peers, kept in memory in front of the store.
//!
//! The store is the truth: a peer's sessions are taken out of the cache while a turn works on
//! them and put back only once the batch that stores their new state is committed, so the
//! cache never holds a state the store does not.

use std::collections::HashMap;

use kith_protocol::UserId;

use crate::session::PeerSessions;
use crate::store::{Store, StoreError};

/// Sessions kept decoded in memory (the store is the truth; this only saves decoding).
pub(super) const SESSION_CACHE: usize = 256;

/// Up to `capacity` peers' decoded sessions.
#[derive(Debug)]
pub(super) struct SessionCache {
    peers: HashMap<UserId, PeerSessions>,
    capacity: usize,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self::with_capacity(SESSION_CACHE)
    }
}

impl SessionCache {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Self { peers: HashMap::new(), capacity: capacity.max(1) }
    }

    /// The sessions with `peer`, taken out of the cache (or loaded from `store`). Put them
    /// back with [`Self::put`] only after the batch that stores them committed.
    pub(super) fn take(
        &mut self,
        store: &Store,
        peer: &UserId,
    ) -> Result<PeerSessions, StoreError> {
        match self.peers.remove(peer) {
            Some(sessions) => Ok(sessions),
            None => store.sessions(peer),
        }
    }

    /// Keeps `peer`'s committed sessions, evicting another peer's when full.
    pub(super) fn put(&mut self, peer: UserId, sessions: PeerSessions) {
        if self.peers.len() >= self.capacity
            && !self.peers.contains_key(&peer)
            && let Some(evict) = self.peers.keys().next().copied()
        {
            self.peers.remove(&evict);
        }
        self.peers.insert(peer, sessions);
    }

    /// Whether we have a current session with `peer`.
    pub(super) fn has_current(&self, store: &Store, peer: &UserId) -> Result<bool, StoreError> {
        match self.peers.get(peer) {
            Some(sessions) => Ok(sessions.current.is_some()),
            None => Ok(store.sessions(peer)?.current.is_some()),
        }
    }

    /// Drops what the cache holds for `peer` (its stored sessions changed under it).
    pub(super) fn forget(&mut self, peer: &UserId) {
        self.peers.remove(peer);
    }

    /// Every cached session's peer, associated data and current sending header key: what a
    /// test harness needs to read the headers this node sends.
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn sending_header_keys(
        &self,
    ) -> impl Iterator<Item = (UserId, crate::pqxdh::AssociatedData, crate::ratchet::keys::HeaderKey)> + '_
    {
        self.peers.iter().flat_map(|(peer, sessions)| {
            sessions.current.iter().chain(&sessions.previous).filter_map(move |s| {
                let key = s.ratchet.header_keys.as_ref()?.sending.clone()?;
                Some((*peer, s.associated, key))
            })
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u8) -> UserId {
        UserId([n; 32])
    }

    #[test]
    fn taken_sessions_leave_the_cache_until_put_back() {
        let store = Store::memory();
        let mut cache = SessionCache::with_capacity(4);
        cache.put(user(1), PeerSessions::default());
        assert_eq!(cache.len(), 1);
        let _ = cache.take(&store, &user(1)).unwrap();
        assert_eq!(cache.len(), 0, "a turn works on them outside the cache");
        // Not cached: read from the store (nothing there).
        assert!(cache.take(&store, &user(2)).unwrap().current.is_none());
        assert!(!cache.has_current(&store, &user(2)).unwrap());
    }

    #[test]
    fn the_cache_is_bounded_and_a_put_of_a_cached_peer_evicts_nobody() {
        let mut cache = SessionCache::with_capacity(2);
        cache.put(user(1), PeerSessions::default());
        cache.put(user(2), PeerSessions::default());
        cache.put(user(2), PeerSessions::default());
        assert_eq!(cache.len(), 2);
        cache.put(user(3), PeerSessions::default());
        assert_eq!(cache.len(), 2, "one evicted for the newcomer");
        cache.forget(&user(3));
        assert_eq!(cache.len(), 1);
    }
}
