//! The driver's side of store-and-forward, as a user and as a relay.
//!
//! As a user:
//! - **Fallback.** A non-ephemeral delivery goes to the peer first. If that fails or times out,
//!   its envelope is deposited with up to `relay_copies` of the recipient's relays (from the
//!   contact, or from their signed DHT record; for a recipient with neither, the relays closest
//!   to their id in the Kademlia keyspace), in outbox order: one deposit request in flight per
//!   relay, batching what waits. A peer that answers "not a relay" is not asked again. The engine hears `Stored` once every relay answered and
//!   at least one holds the envelope durably, `Unreachable` otherwise (and retries later).
//! - **Fetch.** Our home relays are dialed on start (with none, we look up the relays closest
//!   to our own id, where senders without a record deposit); on every connection to one (and
//!   every [`MAILBOX_POLL`]) we fetch our mailbox, feed the envelopes to the engine as
//!   [`Via::Relay`], and acknowledge them to the relay only after the engine answered for all
//!   of them, which it does after its flush: an envelope leaves the relay only once we hold it.
//!   A relay's pushes are handled the same way.
//! - **Prekeys.** On the first connection to a home relay per run (and every
//!   [`PREKEY_REFRESH`]) we refresh its copy of our signed prekey; if it holds fewer than
//!   [`RELAY_PREKEY_LOW_WATER`] one-time prekeys we upload [`RELAY_PREKEY_BATCH`] more, marked
//!   handed out (and flushed) before they leave.
//!
//! As a relay, requests go to [`crate::relay::RelayService`]; answers that promise durability
//! wait for the turn's flush ([`NetAction`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use kith_core::engine::{DeliveryResult, FetchError, Input, ReplyToken, Via};
use kith_core::identity::{peer_id_of, user_id_of};
use kith_protocol::direct::{AckResult, DeliveryAck, RejectReason};
use kith_protocol::envelope::Envelope;
use kith_protocol::limits::{MAX_MAILBOX_BATCH, MAX_MAILBOX_FRAME_BYTES};
use kith_protocol::mailbox::{MailboxRefusal, MailboxRequest, MailboxResponse};
use kith_protocol::media::MediaResponse;
use kith_protocol::prekey::{PreKeyRequest, PreKeyResponse, PreKeyUpload};
use kith_protocol::{MessageId, UserId};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId, kad};

use crate::NodeEvent;
use crate::clock::now_millis;
use crate::driver::Driver;
use crate::relay::Push;

/// How often we fetch from our home relays while running (also keeps their connections up).
pub const MAILBOX_POLL: Duration = Duration::from_secs(60);
/// Most envelopes asked for per fetch.
pub const FETCH_LIMIT: u16 = 64;
const _: () = assert!(FETCH_LIMIT as usize <= MAX_MAILBOX_BATCH);
/// A relay holding fewer of our one-time prekeys than this gets more.
pub const RELAY_PREKEY_LOW_WATER: u32 = 10;
/// One-time prekeys given to a relay at a time.
pub const RELAY_PREKEY_BATCH: usize = 20;
/// Our signed prekey is re-uploaded to each home relay this often (it rotates weekly).
pub const PREKEY_REFRESH: Duration = Duration::from_secs(6 * 60 * 60);
/// Most users whose relays (from their DHT records or the keyspace) are remembered.
pub const MAX_REMEMBERED_RELAYS: usize = 4096;
/// Most peers remembered as "not a relay".
pub const MAX_NOT_RELAYS: usize = 4096;
/// Delay before the first keyspace lookup of our own relays (the DHT bootstraps first).
pub const FIRST_KEYSPACE_POLL: Duration = Duration::from_secs(2);
/// Room in a deposit frame for everything but the envelopes.
const DEPOSIT_OVERHEAD: usize = 64;

/// A delivery in flight: what is needed to fall back to relays.
struct Attempt {
    to: UserId,
    envelope: Vec<u8>,
    relays: Vec<Multiaddr>,
}

/// Deposits waiting for one relay, and the one in flight.
#[derive(Default)]
struct RelayQueue {
    waiting: VecDeque<(MessageId, Envelope, usize)>,
    in_flight: bool,
}

/// How the relays answered for one message so far.
struct Fallback {
    pending: usize,
    /// The relays that hold it.
    stored_at: Vec<Multiaddr>,
    targets: Vec<(PeerId, Multiaddr)>,
}

/// Envelopes from a relay being processed by the engine.
struct Receiving {
    relay: PeerId,
    outstanding: usize,
    done: Vec<MessageId>,
    /// Fetched (and how many more the relay holds), or pushed (answer on this channel).
    source: Source,
}

enum Source {
    Fetch { remaining: u32 },
    Push(ResponseChannel<MailboxResponse>),
}

/// Network answers and requests that must wait for the turn's flush.
pub(crate) enum NetAction {
    MailboxReply(ResponseChannel<MailboxResponse>, MailboxResponse),
    PreKeyReply(ResponseChannel<PreKeyResponse>, PreKeyResponse),
    MediaReply(ResponseChannel<MediaResponse>, MediaResponse),
    Push(Push),
    Upload(PeerId, Box<PreKeyUpload>),
}

/// The driver's store-and-forward state.
#[derive(Default)]
pub(crate) struct Mailboxes {
    home: Vec<(PeerId, Multiaddr)>,
    copies: usize,
    attempts: HashMap<MessageId, Attempt>,
    queues: HashMap<PeerId, RelayQueue>,
    deposits: HashMap<OutboundRequestId, (PeerId, Vec<MessageId>)>,
    fallbacks: HashMap<MessageId, Fallback>,
    fetches: HashMap<OutboundRequestId, PeerId>,
    acks: HashMap<OutboundRequestId, (PeerId, bool)>,
    receiving_tokens: HashMap<u64, (u64, MessageId)>,
    receiving: HashMap<u64, Receiving>,
    next_group: u64,
    record_relays: HashMap<UserId, Vec<Multiaddr>>,
    /// Peers closest to a user's id in the DHT keyspace (relay candidates), closest first.
    keyspace_relays: HashMap<UserId, Vec<Multiaddr>>,
    /// Keyspace lookups in flight, by user.
    keyspace_queries: HashMap<kad::QueryId, UserId>,
    /// Peers that said they are not relays.
    not_relays: HashSet<PeerId>,
    /// Relays closest to our own id that we fetch from (when we have no home relays).
    own_keyspace: Vec<(PeerId, Multiaddr)>,
    uploads: HashMap<OutboundRequestId, PeerId>,
    uploaded: HashMap<PeerId, Instant>,
    pushes: HashSet<OutboundRequestId>,
    pub(crate) after_flush: Vec<NetAction>,
    next_poll: Option<Instant>,
}

/// The peer id at the end of a multiaddr.
pub(crate) fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

impl Mailboxes {
    pub(crate) fn new(home: &[Multiaddr], copies: usize) -> Self {
        let home = home.iter().filter_map(|a| peer_of(a).map(|p| (p, a.clone()))).collect();
        Self { home, copies: copies.max(1), ..Self::default() }
    }

    /// Relays we fetch from: our home relays, or without any, those closest to our id.
    pub(crate) fn ours(&self) -> Vec<(PeerId, Multiaddr)> {
        if self.home.is_empty() {
            self.own_keyspace
                .iter()
                .filter(|(p, _)| !self.not_relays.contains(p))
                .cloned()
                .collect()
        } else {
            self.home.clone()
        }
    }

    fn mark_not_relay(&mut self, peer: PeerId) {
        if self.not_relays.len() >= MAX_NOT_RELAYS {
            self.not_relays.clear();
        }
        self.not_relays.insert(peer);
    }

    /// Our home relays' addresses.
    pub(crate) fn home_addrs(&self) -> Vec<Multiaddr> {
        self.home.iter().map(|(_, a)| a.clone()).collect()
    }

    fn is_ours(&self, peer: &PeerId) -> bool {
        self.ours().iter().any(|(p, _)| p == peer)
    }

    /// Whether `query` is one of our keyspace lookups.
    pub(crate) fn is_keyspace_query(&self, query: &kad::QueryId) -> bool {
        self.keyspace_queries.contains_key(query)
    }

    /// When the next poll of our relays is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next_poll
    }

    /// Remembers `user`'s relays from their verified record.
    pub(crate) fn remember_relays(&mut self, user: UserId, relays: Vec<Multiaddr>) {
        if self.record_relays.len() >= MAX_REMEMBERED_RELAYS
            && !self.record_relays.contains_key(&user)
        {
            self.record_relays.clear();
        }
        self.record_relays.insert(user, relays);
    }

    /// `user`'s relays: those given with the contact, then those of their record; with
    /// neither, the relays closest to them in the keyspace.
    pub(crate) fn relays_for(&self, user: &UserId, given: &[String]) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = given.iter().filter_map(|a| a.parse().ok()).collect();
        for a in self.record_relays.get(user).into_iter().flatten() {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        if out.is_empty() {
            out.extend(self.keyspace_relays.get(user).into_iter().flatten().cloned());
        }
        out.retain(|a| peer_of(a).is_some_and(|p| !self.not_relays.contains(&p)));
        out
    }
}

impl Driver {
    // ------------------------------------------------------------------ as a sender

    /// Remembers a delivery so that it can fall back to relays.
    pub(crate) fn track_attempt(
        &mut self,
        id: MessageId,
        to: UserId,
        envelope: &[u8],
        relays: &[String],
    ) {
        let relays = self.mailboxes.relays_for(&to, relays);
        self.mailboxes.attempts.insert(id, Attempt { to, envelope: envelope.to_vec(), relays });
    }

    /// A direct delivery was answered: nothing to fall back to.
    pub(crate) fn attempt_answered(&mut self, id: &MessageId) {
        self.mailboxes.attempts.remove(id);
    }

    /// A direct delivery failed: deposit with the recipient's relays, or report it unreachable.
    pub(crate) fn fall_back(&mut self, id: MessageId) {
        let Some(attempt) = self.mailboxes.attempts.remove(&id) else {
            self.input(Input::Delivery { id, result: DeliveryResult::Unreachable });
            return;
        };
        let mut relays = attempt.relays;
        if relays.is_empty() {
            // Perhaps their record names relays: ask, for the next retry.
            relays = self.mailboxes.relays_for(&attempt.to, &[]);
            if relays.is_empty() {
                self.fetch_record(attempt.to);
                self.find_keyspace_relays(attempt.to);
            }
        }
        let envelope = kith_protocol::decode::<Envelope>(&attempt.envelope).ok();
        let (Some(envelope), false) = (envelope, relays.is_empty()) else {
            self.input(Input::Delivery { id, result: DeliveryResult::Unreachable });
            return;
        };
        if self.mailboxes.fallbacks.contains_key(&id) {
            return; // already on its way to the relays
        }
        let targets: Vec<(PeerId, Multiaddr)> = relays
            .into_iter()
            .filter_map(|a| peer_of(&a).map(|p| (p, a)))
            .filter(|(p, _)| p != self.swarm.local_peer_id())
            .take(self.mailboxes.copies)
            .collect();
        if targets.is_empty() {
            self.input(Input::Delivery { id, result: DeliveryResult::Unreachable });
            return;
        }
        let size = attempt.envelope.len();
        self.mailboxes.fallbacks.insert(
            id,
            Fallback { pending: targets.len(), stored_at: Vec::new(), targets: targets.clone() },
        );
        for (relay, address) in targets {
            self.swarm.add_peer_address(relay, address);
            let queue = self.mailboxes.queues.entry(relay).or_default();
            queue.waiting.push_back((id, envelope.clone(), size));
            self.pump_relay(relay);
        }
    }

    /// Sends the next deposit to `relay` if none is in flight.
    fn pump_relay(&mut self, relay: PeerId) {
        let Some(queue) = self.mailboxes.queues.get_mut(&relay) else { return };
        if queue.in_flight || queue.waiting.is_empty() {
            return;
        }
        let (mut envelopes, mut ids, mut size) = (Vec::new(), Vec::new(), DEPOSIT_OVERHEAD);
        while let Some((_, _, bytes)) = queue.waiting.front() {
            if envelopes.len() >= MAX_MAILBOX_BATCH
                || (!envelopes.is_empty() && size + bytes > MAX_MAILBOX_FRAME_BYTES)
            {
                break;
            }
            let Some((id, envelope, bytes)) = queue.waiting.pop_front() else { break };
            size += bytes;
            ids.push(id);
            envelopes.push(envelope);
        }
        queue.in_flight = true;
        let request = self
            .swarm
            .behaviour_mut()
            .mailbox
            .send_request(&relay, MailboxRequest::Deposit { envelopes });
        self.mailboxes.deposits.insert(request, (relay, ids));
    }

    /// One relay answered (or failed) for message `id`.
    fn relay_outcome(
        &mut self,
        id: MessageId,
        relay: PeerId,
        refused: Option<MailboxRefusal>,
        ok: bool,
    ) {
        if let Some(reason) = refused {
            tracing::info!("relay {} refused a message: {reason:?}", crate::short(&relay));
            self.emit(NodeEvent::RelayRefused { id, relay, reason });
        }
        let Some(fallback) = self.mailboxes.fallbacks.get_mut(&id) else { return };
        fallback.pending = fallback.pending.saturating_sub(1);
        if ok && let Some((_, address)) = fallback.targets.iter().find(|(p, _)| *p == relay) {
            fallback.stored_at.push(address.clone());
        }
        if fallback.pending == 0 {
            let stored_at = std::mem::take(&mut fallback.stored_at);
            self.mailboxes.fallbacks.remove(&id);
            let result = if stored_at.is_empty() {
                DeliveryResult::Unreachable
            } else {
                DeliveryResult::Stored
            };
            self.input(Input::Delivery { id, result });
            if !stored_at.is_empty() {
                // An attachment's chunks follow its manifest to the relays.
                self.media_stored_at(id, stored_at);
            }
        }
    }

    fn deposit_done(&mut self, request: OutboundRequestId, response: Option<MailboxResponse>) {
        let Some((relay, ids)) = self.mailboxes.deposits.remove(&request) else { return };
        if let Some(queue) = self.mailboxes.queues.get_mut(&relay) {
            queue.in_flight = false;
        }
        match response {
            Some(MailboxResponse::Deposited { results }) => {
                for id in ids {
                    let result = results.iter().find(|r| r.id == id);
                    let refused = result.and_then(|r| r.refused);
                    self.relay_outcome(id, relay, refused, result.is_some() && refused.is_none());
                }
            }
            Some(MailboxResponse::Refused(reason)) => {
                if reason == MailboxRefusal::NotARelay {
                    self.mailboxes.mark_not_relay(relay);
                }
                for id in ids {
                    self.relay_outcome(id, relay, Some(reason), false);
                }
            }
            _ => {
                for id in ids {
                    self.relay_outcome(id, relay, None, false);
                }
            }
        }
        self.pump_relay(relay);
        if self.mailboxes.queues.get(&relay).is_some_and(|q| q.waiting.is_empty() && !q.in_flight) {
            self.mailboxes.queues.remove(&relay);
        }
    }

    /// Asks `user`'s relays for a bundle after the peer itself could not give one; returns
    /// whether a request went out.
    pub(crate) fn fetch_bundle_from_relays(
        &mut self,
        user: UserId,
        relays: Vec<Multiaddr>,
    ) -> bool {
        let mut relays = relays.into_iter().filter_map(|a| peer_of(&a).map(|p| (p, a)));
        let Some((relay, address)) = relays.next() else { return false };
        self.swarm.add_peer_address(relay, address);
        let request =
            self.swarm.behaviour_mut().prekey.send_request(&relay, PreKeyRequest::Fetch { user });
        let rest = relays.map(|(_, a)| a).collect();
        self.bundle_fetches.insert(request, (user, Some(rest)));
        true
    }

    /// A bundle fetch failed: the next relay, then the DHT record, then the engine is told.
    pub(crate) fn bundle_fetch_failed(
        &mut self,
        user: UserId,
        relays_left: Option<Vec<Multiaddr>>,
        error: FetchError,
    ) {
        let relays_left = match relays_left {
            // The peer itself failed: now its relays.
            None => {
                let given =
                    self.engine.contact(&user).ok().flatten().map(|c| c.relays).unwrap_or_default();
                self.mailboxes.relays_for(&user, &given)
            }
            Some(rest) => rest,
        };
        if self.fetch_bundle_from_relays(user, relays_left) {
            return;
        }
        self.input(Input::PreKeyBundle { user, result: Err(error) });
        self.fetch_record(user);
    }

    // ------------------------------------------------------------------ as a recipient

    /// Dials our home relays (on start); without any, schedules the first keyspace lookup.
    pub(crate) fn dial_home_relays(&mut self) {
        for address in self.mailboxes.home_addrs() {
            if let Err(e) = self.connect(address.clone()) {
                let who = peer_of(&address).map(|p| crate::short(&p)).unwrap_or_default();
                tracing::warn!("home relay …{who}: {e}");
            }
        }
        let first = if self.mailboxes.home.is_empty() { FIRST_KEYSPACE_POLL } else { MAILBOX_POLL };
        self.mailboxes.next_poll = Some(Instant::now() + first);
    }

    /// Looks up the peers closest to `user`'s id: relay candidates for them.
    pub(crate) fn find_keyspace_relays(&mut self, user: UserId) {
        if self.mailboxes.keyspace_queries.values().any(|u| *u == user) {
            return;
        }
        let Ok(peer) = peer_id_of(&user) else { return };
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.mailboxes.keyspace_queries.insert(query, user);
    }

    /// The answer to a keyspace lookup; returns false if the query was not one.
    pub(crate) fn on_keyspace_peers(
        &mut self,
        query: kad::QueryId,
        peers: Vec<kad::PeerInfo>,
    ) -> bool {
        let Some(user) = self.mailboxes.keyspace_queries.remove(&query) else { return false };
        let Ok(target) = peer_id_of(&user) else { return true };
        let target_key = kad::KBucketKey::from(target);
        let local = *self.swarm.local_peer_id();
        let mut peers: Vec<kad::PeerInfo> =
            peers.into_iter().filter(|p| p.peer_id != target && p.peer_id != local).collect();
        peers.sort_by_key(|p| kad::KBucketKey::from(p.peer_id).distance(&target_key));
        let mut found: Vec<(PeerId, Multiaddr)> = Vec::new();
        for info in peers {
            for address in &info.addrs {
                self.swarm.add_peer_address(info.peer_id, address.clone());
            }
            if let Some(address) = info.addrs.into_iter().next() {
                let address = address.clone().with_p2p(info.peer_id).unwrap_or(address);
                found.push((info.peer_id, address));
            }
        }
        if user == self.user {
            self.mailboxes.own_keyspace = found;
            for (relay, _) in self.mailboxes.ours().into_iter().take(2 * self.mailboxes.copies) {
                self.fetch_mailbox(relay);
            }
        } else {
            let relays = found.into_iter().map(|(_, a)| a).collect();
            if self.mailboxes.keyspace_relays.len() >= MAX_REMEMBERED_RELAYS {
                self.mailboxes.keyspace_relays.clear();
            }
            self.mailboxes.keyspace_relays.insert(user, relays);
        }
        true
    }

    /// A connection to `peer` came up: fetch from it if it is one of our relays.
    pub(crate) fn on_relay_connected(&mut self, peer: PeerId) {
        if !self.mailboxes.is_ours(&peer) {
            return;
        }
        self.fetch_mailbox(peer);
        if !self.mailboxes.home.iter().any(|(p, _)| *p == peer) {
            return; // prekeys go to home relays only
        }
        let due =
            self.mailboxes.uploaded.get(&peer).is_none_or(|at| at.elapsed() >= PREKEY_REFRESH);
        if due {
            self.mailboxes.uploaded.insert(peer, Instant::now());
            // Refresh the signed prekey first; its answer says whether one-time keys are low.
            self.upload_prekeys(peer, 0);
        }
    }

    /// Polls every relay of ours (redialing it if needed); without home relays, looks up the
    /// relays closest to us first.
    pub(crate) fn poll_home_relays(&mut self) {
        self.mailboxes.next_poll = Some(Instant::now() + MAILBOX_POLL);
        if self.mailboxes.home.is_empty() {
            self.find_keyspace_relays(self.user);
        }
        for (relay, address) in self.mailboxes.ours().into_iter().take(2 * self.mailboxes.copies) {
            if !self.swarm.is_connected(&relay) {
                self.swarm.add_peer_address(relay, address);
            }
            self.fetch_mailbox(relay);
        }
    }

    fn fetch_mailbox(&mut self, relay: PeerId) {
        if self.mailboxes.fetches.values().any(|r| *r == relay)
            || self.mailboxes.acks.values().any(|(r, _)| *r == relay)
            || self.mailboxes.receiving.values().any(|g| g.relay == relay)
        {
            return; // a fetch is already under way
        }
        let request = self.swarm.behaviour_mut().mailbox.send_request(
            &relay,
            MailboxRequest::Fetch { recipient: self.user, limit: FETCH_LIMIT },
        );
        self.mailboxes.fetches.insert(request, relay);
    }

    fn upload_prekeys(&mut self, relay: PeerId, count: usize) {
        match self.engine.prekey_upload(now_millis(), count) {
            Ok(Some(upload)) => {
                self.mailboxes.after_flush.push(NetAction::Upload(relay, Box::new(upload)))
            }
            Ok(None) => {}
            Err(e) => tracing::error!("preparing a prekey upload: {e}"),
        }
    }

    /// Feeds envelopes from `relay` to the engine; they are acknowledged once all are answered.
    fn receive_from_relay(&mut self, relay: PeerId, envelopes: Vec<Envelope>, source: Source) {
        let group = self.mailboxes.next_group;
        self.mailboxes.next_group += 1;
        let mut fed = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            // The envelope decoded and validated inside the mailbox frame; re-encoding it gives
            // the bytes the sender sealed.
            if let Ok(bytes) = kith_protocol::encode(&envelope) {
                fed.push((envelope.id, bytes));
            }
        }
        self.mailboxes
            .receiving
            .insert(group, Receiving { relay, outstanding: fed.len(), done: Vec::new(), source });
        if fed.is_empty() {
            self.finish_receiving(group);
            return;
        }
        for (id, bytes) in fed {
            let token = self.token();
            self.mailboxes.receiving_tokens.insert(token, (group, id));
            self.input(Input::Envelope { bytes, via: Via::Relay, reply: Some(ReplyToken(token)) });
        }
    }

    /// The engine answered for an envelope; returns false if the token was not a relay's.
    pub(crate) fn relay_envelope_answered(&mut self, token: u64, ack: &DeliveryAck) -> bool {
        let Some((group, id)) = self.mailboxes.receiving_tokens.remove(&token) else {
            return false;
        };
        let Some(receiving) = self.mailboxes.receiving.get_mut(&group) else { return true };
        receiving.outstanding = receiving.outstanding.saturating_sub(1);
        // Held (or refused for good): the relay may delete it. A store failure: keep it there.
        if ack.result != AckResult::Rejected(RejectReason::Unavailable) {
            receiving.done.push(id);
        }
        if receiving.outstanding == 0 {
            self.finish_receiving(group);
        }
        true
    }

    fn finish_receiving(&mut self, group: u64) {
        let Some(receiving) = self.mailboxes.receiving.remove(&group) else { return };
        match receiving.source {
            Source::Push(channel) => {
                let response = MailboxResponse::Received { ids: receiving.done };
                let _ = self.swarm.behaviour_mut().mailbox.send_response(channel, response);
            }
            Source::Fetch { remaining } => {
                if receiving.done.is_empty() {
                    return;
                }
                let request = self.swarm.behaviour_mut().mailbox.send_request(
                    &receiving.relay,
                    MailboxRequest::Ack { recipient: self.user, ids: receiving.done },
                );
                self.mailboxes.acks.insert(request, (receiving.relay, remaining > 0));
            }
        }
    }

    // ------------------------------------------------------------------ events

    pub(crate) fn on_mailbox_event(
        &mut self,
        event: request_response::Event<MailboxRequest, MailboxResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_mailbox_request(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_mailbox_response(peer, request_id, response)
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!("mailbox request to {} failed: {error}", crate::short(&peer));
                if matches!(error, request_response::OutboundFailure::UnsupportedProtocols) {
                    self.mailboxes.mark_not_relay(peer);
                }
                if self.mailboxes.deposits.contains_key(&request_id) {
                    self.deposit_done(request_id, None);
                }
                self.mailboxes.fetches.remove(&request_id);
                self.mailboxes.acks.remove(&request_id);
                self.mailboxes.pushes.remove(&request_id);
            }
            _ => {}
        }
    }

    fn on_mailbox_request(
        &mut self,
        peer: PeerId,
        request: MailboxRequest,
        channel: ResponseChannel<MailboxResponse>,
    ) {
        let now = now_millis();
        if let MailboxRequest::Push { envelopes } = request {
            // Pushed by a relay; each envelope counts against the peer's envelope rate.
            let instant = Instant::now();
            if !envelopes.iter().all(|_| self.envelope_limiter.allow(peer, instant)) {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .mailbox
                    .send_response(channel, MailboxResponse::Received { ids: Vec::new() });
                return;
            }
            self.receive_from_relay(peer, envelopes, Source::Push(channel));
            return;
        }
        let Some(relay) = self.relay.as_mut() else {
            let _ = self
                .swarm
                .behaviour_mut()
                .mailbox
                .send_response(channel, MailboxResponse::Refused(MailboxRefusal::NotARelay));
            return;
        };
        match request {
            MailboxRequest::Deposit { envelopes } => {
                let (results, pushes) = relay.deposit(peer, envelopes, now);
                self.mailboxes
                    .after_flush
                    .push(NetAction::MailboxReply(channel, MailboxResponse::Deposited { results }));
                self.mailboxes.after_flush.extend(pushes.into_iter().map(NetAction::Push));
            }
            MailboxRequest::Fetch { recipient, limit } => {
                // Read-only: answered at once.
                let response = relay.fetch(&peer, &recipient, limit, now);
                let _ = self.swarm.behaviour_mut().mailbox.send_response(channel, response);
            }
            MailboxRequest::Ack { recipient, ids } => {
                let response = relay.ack(&peer, &recipient, &ids);
                self.mailboxes.after_flush.push(NetAction::MailboxReply(channel, response));
            }
            MailboxRequest::Push { .. } => {}
        }
    }

    fn on_mailbox_response(
        &mut self,
        peer: PeerId,
        request_id: OutboundRequestId,
        response: MailboxResponse,
    ) {
        if self.mailboxes.deposits.contains_key(&request_id) {
            self.deposit_done(request_id, Some(response));
            return;
        }
        if self.mailboxes.fetches.remove(&request_id).is_some() {
            match response {
                MailboxResponse::Batch { envelopes, remaining } if !envelopes.is_empty() => {
                    self.receive_from_relay(peer, envelopes, Source::Fetch { remaining });
                }
                MailboxResponse::Batch { .. } => {}
                MailboxResponse::Refused(MailboxRefusal::NotARelay) => {
                    self.mailboxes.mark_not_relay(peer);
                }
                other => tracing::info!("relay {} refused a fetch: {other:?}", crate::short(&peer)),
            }
            return;
        }
        if let Some((relay, more)) = self.mailboxes.acks.remove(&request_id) {
            if more && matches!(response, MailboxResponse::Acked { .. }) {
                self.fetch_mailbox(relay);
            }
            return;
        }
        if self.mailboxes.pushes.remove(&request_id)
            && let (MailboxResponse::Received { ids }, Some(relay), Ok(user)) =
                (response, self.relay.as_mut(), user_id_of(&peer))
        {
            // The recipient holds these durably: delete them (flushed with the turn).
            let _ = relay.ack(&peer, &user, &ids);
        }
    }

    /// The answer to one of our prekey uploads.
    pub(crate) fn on_upload_answer(
        &mut self,
        request: OutboundRequestId,
        response: &PreKeyResponse,
    ) -> bool {
        let Some(relay) = self.mailboxes.uploads.remove(&request) else { return false };
        match response {
            PreKeyResponse::Uploaded { one_time_prekeys }
                if *one_time_prekeys < RELAY_PREKEY_LOW_WATER =>
            {
                self.upload_prekeys(relay, RELAY_PREKEY_BATCH);
            }
            PreKeyResponse::Uploaded { .. } => {}
            other => {
                tracing::info!("relay {} refused our prekeys: {other:?}", crate::short(&relay))
            }
        }
        true
    }

    /// Whether a failed prekey request was one of our uploads.
    pub(crate) fn upload_failed(&mut self, request: &OutboundRequestId) -> bool {
        self.mailboxes.uploads.remove(request).is_some()
    }

    /// Carries out what waited for the flush.
    pub(crate) fn after_flush_network(&mut self) {
        for action in std::mem::take(&mut self.mailboxes.after_flush) {
            match action {
                NetAction::MailboxReply(channel, response) => {
                    let _ = self.swarm.behaviour_mut().mailbox.send_response(channel, response);
                }
                NetAction::PreKeyReply(channel, response) => {
                    let _ = self.swarm.behaviour_mut().prekey.send_response(channel, response);
                }
                NetAction::MediaReply(channel, response) => {
                    let _ = self.swarm.behaviour_mut().media.send_response(channel, response);
                }
                NetAction::Push(push) => {
                    let Ok(peer) = peer_id_of(&push.recipient) else { continue };
                    if self.swarm.is_connected(&peer) {
                        let request = self.swarm.behaviour_mut().mailbox.send_request(
                            &peer,
                            MailboxRequest::Push { envelopes: push.envelopes },
                        );
                        self.mailboxes.pushes.insert(request);
                    }
                }
                NetAction::Upload(relay, upload) => {
                    let request = self
                        .swarm
                        .behaviour_mut()
                        .prekey
                        .send_request(&relay, PreKeyRequest::Upload(upload));
                    self.mailboxes.uploads.insert(request, relay);
                }
            }
        }
    }
}
