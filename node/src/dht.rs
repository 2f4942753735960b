//! Our use of the DHT: publishing our signed user record, fetching others', looking peers up,
//! and accepting only valid records put to us.
//!
//! Our record (identity binding, signed prekey, home relays, issue time) is published once
//! the node starts and republished every [`RECORD_REPUBLISH`]; a failed publication is retried
//! after [`RECORD_RETRY`]. A lookup for the same peer is not repeated sooner than
//! [`LOOKUP_COOLDOWN`], and one record fetch per user is in flight at a time. A record put to
//! us is stored only if it is signed by the user it is stored under and no older than the one
//! kept for that user, so an old record cannot be replayed over a newer one.
//!
//! Sans-IO: the driver feeds events in and carries out the [`DhtAction`]s; queries are named
//! by the driver's ids (`Q`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use kith_core::record::{read_record, supersedes};
use kith_protocol::prekey::PreKeyBundle;
use kith_protocol::{UnixMillis, UserId};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// A DHT lookup for the same peer is not repeated sooner than this.
pub const LOOKUP_COOLDOWN: Duration = Duration::from_secs(10);
/// Our user record is republished this often once published.
pub const RECORD_REPUBLISH: Duration = Duration::from_secs(30 * 60);
/// A failed publication of our user record is retried after this.
pub const RECORD_RETRY: Duration = Duration::from_secs(30);
/// The first publication of our record waits this long after start (the DHT bootstraps).
pub const FIRST_PUBLICATION: Duration = Duration::from_secs(1);
/// Most record fetches in flight.
pub const MAX_RECORD_FETCHES: usize = 1024;

/// How long after a change of our addresses the record is published again (a burst of
/// changes costs one publication).
pub const ADDRESS_SETTLE: Duration = Duration::from_secs(2);

/// What a verified user record says.
#[derive(Debug)]
pub(crate) struct Found {
    /// Whose record.
    pub(crate) user: UserId,
    /// Their PQXDH bundle (no one-time prekeys); `None` for a classical record.
    pub(crate) bundle: Option<PreKeyBundle>,
    /// Their home relays.
    pub(crate) relays: Vec<Multiaddr>,
    /// Their devices and where each can be dialed (direct addresses, then circuits).
    pub(crate) devices: Vec<(PeerId, Vec<Multiaddr>)>,
}

/// What the driver does for the DHT.
#[derive(Debug, PartialEq)]
pub(crate) enum DhtAction {
    /// Build our record and put it (report the outcome with [`Dht::published`]).
    Publish,
    /// Look for the peers closest to `peer` (to dial it when found).
    Lookup(PeerId),
    /// Get `user`'s record; report the query with [`Dht::fetch_sent`].
    Fetch(UserId),
}

/// The DHT's state. `Q` names queries.
pub(crate) struct Dht<Q> {
    publish_at: Instant,
    fetches: HashMap<Q, UserId>,
    lookups: HashMap<PeerId, Instant>,
    actions: VecDeque<DhtAction>,
}

impl<Q: Copy + Eq + Hash> Dht<Q> {
    /// Starts at `now`: our record is first published [`FIRST_PUBLICATION`] later.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            publish_at: now + FIRST_PUBLICATION,
            fetches: HashMap::new(),
            lookups: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<DhtAction> {
        self.actions.pop_front()
    }

    /// When [`Dht::handle_timeout`] is next due.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.publish_at
    }

    /// Publishes our record when it is due (retried after [`RECORD_RETRY`] unless it is
    /// reported published).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if now >= self.publish_at {
            self.publish_at = now + RECORD_RETRY;
            self.actions.push_back(DhtAction::Publish);
        }
    }

    /// Our record was stored by the DHT: republish it after [`RECORD_REPUBLISH`].
    pub(crate) fn published(&mut self, now: Instant) {
        self.publish_at = now + RECORD_REPUBLISH;
    }

    /// Looks `peer` up, at most once per [`LOOKUP_COOLDOWN`].
    pub(crate) fn lookup(&mut self, peer: PeerId, now: Instant) {
        if self.lookups.get(&peer).is_some_and(|at| now.duration_since(*at) < LOOKUP_COOLDOWN) {
            return;
        }
        self.lookups.retain(|_, at| now.duration_since(*at) < LOOKUP_COOLDOWN);
        self.lookups.insert(peer, now);
        self.actions.push_back(DhtAction::Lookup(peer));
    }

    /// Asks for `user`'s record unless a fetch for it is under way.
    pub(crate) fn fetch(&mut self, user: UserId) {
        let asked = self.actions.contains(&DhtAction::Fetch(user));
        if asked
            || self.fetches.len() >= MAX_RECORD_FETCHES
            || self.fetches.values().any(|u| *u == user)
        {
            return;
        }
        self.actions.push_back(DhtAction::Fetch(user));
    }

    /// The driver started a [`DhtAction::Fetch`] as `query`.
    pub(crate) fn fetch_sent(&mut self, query: Q, user: UserId) {
        self.fetches.insert(query, user);
    }

    /// A record came back for `query`: what it says of the user if it verifies (the fetch
    /// is done), `None` otherwise (others may still come).
    pub(crate) fn found(&mut self, query: Q, value: &[u8], now: UnixMillis) -> Option<Found> {
        let user = *self.fetches.get(&query)?;
        let record = read_record(value, &user, now).ok()?;
        self.fetches.remove(&query);
        let addrs = |list: &[serde_bytes::ByteBuf]| -> Vec<Multiaddr> {
            list.iter().filter_map(|a| Multiaddr::try_from(a.to_vec()).ok()).collect()
        };
        let relays =
            record.relays.iter().filter_map(|a| Multiaddr::try_from(a.clone()).ok()).collect();
        let devices = record
            .devices
            .iter()
            .filter_map(|d| {
                let peer = PeerId::from_bytes(&d.peer).ok()?;
                let mut addresses = addrs(&d.direct);
                addresses.extend(addrs(&d.circuits));
                Some((peer, addresses))
            })
            .collect();
        Some(Found { user, bundle: record.bundle, relays, devices })
    }

    /// Our addresses changed (a reservation held or lost, a direct address confirmed or
    /// expired): publish the record again soon, after [`ADDRESS_SETTLE`] so that a burst of
    /// changes costs one publication.
    pub(crate) fn addresses_changed(&mut self, now: Instant) {
        self.publish_at = self.publish_at.min(now + ADDRESS_SETTLE);
    }

    /// `query` ended (its last step): a fetch that found nothing is over; the user it was
    /// for, if so.
    pub(crate) fn query_done(&mut self, query: &Q) -> Option<UserId> {
        self.fetches.remove(query)
    }
}

/// Whether a record put to us under `key` may be stored: it decodes, is signed by the user
/// its key names and not expired, and is no older than `stored` (the record kept for that
/// user, if any; one that no longer decodes is replaced).
pub(crate) fn accept_put(key: &[u8], value: &[u8], stored: Option<&[u8]>, now: UnixMillis) -> bool {
    let Some(user) =
        key.strip_prefix(b"/kith/user/".as_slice()).and_then(|u| <[u8; 32]>::try_from(u).ok())
    else {
        return false;
    };
    let user = UserId(user);
    read_record(value, &user, now).is_ok_and(|new| {
        stored
            .and_then(|stored| read_record(stored, &user, now).ok())
            .is_none_or(|stored| supersedes(&new, &stored))
    })
}

#[cfg(test)]
mod tests;
