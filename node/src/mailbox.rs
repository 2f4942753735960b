//! The mailbox client: store-and-forward as a user of relays.
//!
//! - **Fallback.** A non-ephemeral delivery goes to the peer first. If that fails or times
//!   out, its envelope is deposited with up to `relay_copies` of the recipient's relays (from
//!   the contact string, else from their signed DHT record, else the relays closest to their id
//!   in the Kademlia keyspace), in outbox order: one deposit request in flight per relay,
//!   batching what waits. A peer that answers "not a relay" is not asked again. The engine
//!   hears `Stored` once every relay answered and at least one holds the envelope durably,
//!   `Unreachable` otherwise (and retries later).
//! - **Inbox.** Our home relays are dialed on start (with none, we look up the relays closest
//!   to our own id, where senders without a record deposit); on every connection to one (and
//!   every [`MAILBOX_POLL`]) we fetch our mailbox, feed the envelopes to the engine as
//!   [`Via::Relay`], and acknowledge them to the relay only after the engine answered for all
//!   of them, which it does after its flush: an envelope leaves the relay only once we hold it.
//!   A relay's pushes are handled the same way.
//! - **Prekeys.** Bundles come from the peer, then its relays, then its DHT record. On the
//!   first connection to a home relay per run (and every [`PREKEY_REFRESH`]) we refresh its
//!   copy of our signed prekey; if it holds fewer than [`RELAY_PREKEY_LOW_WATER`] one-time
//!   prekeys we upload [`RELAY_PREKEY_BATCH`] more, marked handed out (and flushed) before
//!   they leave.
//!
//! Sans-IO: the driver feeds events in and carries out the [`MailboxAction`]s; requests and
//! DHT queries are named by the driver's ids (`R`, `Q`), so the component runs without a swarm.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use kith_core::engine::{DeliveryResult, FetchError, Input, ReplyToken, Via};
use kith_core::identity::peer_id_of;
use kith_protocol::direct::{AckResult, DeliveryAck, RejectReason};
use kith_protocol::envelope::Envelope;
use kith_protocol::limits::{MAX_MAILBOX_BATCH, MAX_MAILBOX_FRAME_BYTES};
use kith_protocol::mailbox::{MailboxRefusal, MailboxResponse, SealedEnvelope};
use kith_protocol::prekey::{PreKeyBundle, PreKeyResponse};
use kith_protocol::{MessageId, UserId};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, kad};
use tokio::time::Instant;

use crate::tokens::Tokens;

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

/// The peer id at the end of a multiaddr.
pub(crate) fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

/// What the driver does for the mailbox client.
#[derive(Debug)]
pub(crate) enum MailboxAction {
    /// Hand this to the engine.
    Engine(Input),
    /// Remember `address` for `peer` (dialed when a request needs it).
    AddAddress(PeerId, Multiaddr),
    /// Dial `address` (it ends in `/p2p/<peer>`).
    Dial(Multiaddr),
    /// Deposit these envelopes, sealed, with `relay` at `address` over a throw-away identity;
    /// report the answer with [`MailboxClient::sealed_deposit_done`].
    Deposit { relay: PeerId, address: Multiaddr, envelopes: Vec<Envelope>, ids: Vec<MessageId> },
    /// Fetch our mailbox from `relay`; report with [`MailboxClient::fetch_sent`].
    Fetch { relay: PeerId },
    /// Acknowledge `ids` to `relay`; report with [`MailboxClient::ack_sent`].
    Ack { relay: PeerId, ids: Vec<MessageId>, more: bool },
    /// Answer a relay's push (the driver holds its channel under `push`).
    AnswerPush { push: u64, ids: Vec<MessageId> },
    /// Ask `peer` (the user itself, or one of its relays) for `user`'s bundle; report with
    /// [`MailboxClient::bundle_sent`].
    FetchBundle { peer: PeerId, user: UserId, relays_left: Option<Vec<Multiaddr>> },
    /// Look for `user`'s signed record in the DHT.
    FetchRecord(UserId),
    /// Look up the peers closest to `user` in the keyspace; report with
    /// [`MailboxClient::keyspace_sent`].
    FindKeyspace(UserId),
    /// Prepare a prekey upload of `count` one-time prekeys for `relay` (from the engine),
    /// sent after the flush; report with [`MailboxClient::upload_sent`].
    UploadPreKeys { relay: PeerId, count: usize },
    /// The envelope of message `id` is held by these relays (its attachment follows it).
    StoredAt { id: MessageId, relays: Vec<Multiaddr> },
    /// A relay refused to store message `id`.
    Refused { id: MessageId, relay: PeerId, reason: MailboxRefusal },
    /// Register our contacts' access-key verifiers with home relay `relay` (sealed sender),
    /// if it does not have the current set.
    SetAccess { relay: PeerId },
}

/// An envelope from a relay, as the engine takes it.
enum Fed {
    /// Encoded.
    Plain(Vec<u8>),
    /// Sealed to our identity key.
    Sealed(SealedEnvelope),
}

/// Plain envelopes as fed to the engine: re-encoded (they decoded and validated inside the
/// mailbox frame, so re-encoding gives the bytes the sender sealed).
fn plain(envelopes: Vec<Envelope>) -> Vec<(MessageId, Fed)> {
    envelopes
        .into_iter()
        .filter_map(|e| Some((e.id, Fed::Plain(kith_protocol::encode(&e).ok()?))))
        .collect()
}

fn sealed(envelopes: Vec<SealedEnvelope>) -> Vec<(MessageId, Fed)> {
    envelopes.into_iter().map(|e| (e.id, Fed::Sealed(e))).collect()
}

/// A delivery in flight: what is needed to fall back to relays.
struct Attempt {
    to: UserId,
    envelope: Vec<u8>,
    relays: Vec<Multiaddr>,
}

/// Deposits waiting for one relay, and whether one is in flight.
#[derive(Default)]
struct RelayQueue {
    waiting: VecDeque<(MessageId, Envelope, usize)>,
    in_flight: bool,
    /// Where the relay is dialed (deposits go over a connection of their own).
    address: Option<Multiaddr>,
}

/// How the relays answered for one message so far.
struct Fallback {
    /// The id inside the envelope, by which relays answer: the message's (for a group's
    /// message, every member's copy carries it, while `id` names the copy).
    envelope_id: MessageId,
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
    source: Source,
}

/// Where received envelopes came from.
enum Source {
    /// Fetched, and how many more the relay holds.
    Fetch { remaining: u32 },
    /// Pushed; answered under this key.
    Push(u64),
}

/// The mailbox client's state. `R` names requests, `Q` DHT queries.
pub(crate) struct MailboxClient<R, Q> {
    me: UserId,
    local: PeerId,
    home: Vec<(PeerId, Multiaddr)>,
    copies: usize,
    attempts: HashMap<MessageId, Attempt>,
    queues: HashMap<PeerId, RelayQueue>,
    fallbacks: HashMap<MessageId, Fallback>,
    fetches: HashMap<R, PeerId>,
    acks: HashMap<R, (PeerId, bool)>,
    receiving_tokens: HashMap<ReplyToken, (u64, MessageId)>,
    receiving: HashMap<u64, Receiving>,
    next_group: u64,
    record_relays: HashMap<UserId, Vec<Multiaddr>>,
    /// Peers closest to a user's id in the DHT keyspace (relay candidates), closest first.
    keyspace_relays: HashMap<UserId, Vec<Multiaddr>>,
    keyspace_queries: HashMap<Q, UserId>,
    /// Peers that said they are not relays.
    not_relays: HashSet<PeerId>,
    /// Relays closest to our own id that we fetch from (when we have no home relays).
    own_keyspace: Vec<(PeerId, Multiaddr)>,
    uploads: HashMap<R, PeerId>,
    uploaded: HashMap<PeerId, Instant>,
    /// Bundle fetches in flight: whose, and the relays still to ask (`None`: this one is the
    /// peer itself, its relays come next).
    bundles: HashMap<R, (UserId, Option<Vec<Multiaddr>>)>,
    next_poll: Option<Instant>,
    tokens: Tokens,
    actions: VecDeque<MailboxAction>,
}

impl<R: Copy + Eq + Hash, Q: Copy + Eq + Hash> MailboxClient<R, Q> {
    /// The client of user `me` (peer `local`), with home relays `home` (each ending in
    /// `/p2p/<peer>`), depositing with up to `copies` relays per message.
    pub(crate) fn new(
        me: UserId,
        local: PeerId,
        home: &[Multiaddr],
        copies: usize,
        tokens: Tokens,
    ) -> Self {
        let home = home.iter().filter_map(|a| peer_of(a).map(|p| (p, a.clone()))).collect();
        Self {
            me,
            local,
            home,
            copies: copies.max(1),
            attempts: HashMap::new(),
            queues: HashMap::new(),
            fallbacks: HashMap::new(),
            fetches: HashMap::new(),
            acks: HashMap::new(),
            receiving_tokens: HashMap::new(),
            receiving: HashMap::new(),
            next_group: 0,
            record_relays: HashMap::new(),
            keyspace_relays: HashMap::new(),
            keyspace_queries: HashMap::new(),
            not_relays: HashSet::new(),
            own_keyspace: Vec::new(),
            uploads: HashMap::new(),
            uploaded: HashMap::new(),
            bundles: HashMap::new(),
            next_poll: None,
            tokens,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<MailboxAction> {
        self.actions.pop_front()
    }

    /// When [`MailboxClient::handle_timeout`] is next due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.next_poll
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

    /// Our home relays' addresses.
    /// Our home relays.
    pub(crate) fn home_relays(&self) -> Vec<PeerId> {
        self.home.iter().map(|(p, _)| *p).collect()
    }

    pub(crate) fn home_addrs(&self) -> Vec<Multiaddr> {
        self.home.iter().map(|(_, a)| a.clone()).collect()
    }

    fn is_ours(&self, peer: &PeerId) -> bool {
        self.ours().iter().any(|(p, _)| p == peer)
    }

    fn mark_not_relay(&mut self, peer: PeerId) {
        if self.not_relays.len() >= MAX_NOT_RELAYS {
            self.not_relays.clear();
        }
        self.not_relays.insert(peer);
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

    // ------------------------------------------------------------------ as a sender

    /// Remembers a delivery so that it can fall back to relays (`given`: the relays of the
    /// contact string).
    pub(crate) fn track(&mut self, id: MessageId, to: UserId, envelope: &[u8], given: &[String]) {
        let relays = self.relays_for(&to, given);
        self.attempts.insert(id, Attempt { to, envelope: envelope.to_vec(), relays });
    }

    /// Messages on their way to relays (queued or deposited, not yet answered).
    #[cfg(feature = "test-utils")]
    pub(crate) fn deposits_pending(&self) -> usize {
        self.fallbacks.len()
    }

    /// A direct delivery was answered: nothing to fall back to.
    pub(crate) fn answered(&mut self, id: &MessageId) {
        self.attempts.remove(id);
    }

    /// A direct delivery failed: deposit with the recipient's relays, or report it
    /// unreachable.
    pub(crate) fn fall_back(&mut self, id: MessageId) {
        let unreachable = Input::Delivery { id, result: DeliveryResult::Unreachable };
        let Some(attempt) = self.attempts.remove(&id) else {
            self.actions.push_back(MailboxAction::Engine(unreachable));
            return;
        };
        let mut relays = attempt.relays;
        if relays.is_empty() {
            // Perhaps their record names relays, or the keyspace has some: ask, for the
            // next retry.
            relays = self.relays_for(&attempt.to, &[]);
            if relays.is_empty() {
                self.actions.push_back(MailboxAction::FetchRecord(attempt.to));
                self.find_keyspace(attempt.to);
            }
        }
        let envelope = kith_protocol::decode::<Envelope>(&attempt.envelope).ok();
        let (Some(envelope), false) = (envelope, relays.is_empty()) else {
            self.actions.push_back(MailboxAction::Engine(unreachable));
            return;
        };
        if self.fallbacks.contains_key(&id) {
            return; // already on its way to the relays
        }
        let targets: Vec<(PeerId, Multiaddr)> = relays
            .into_iter()
            .filter_map(|a| peer_of(&a).map(|p| (p, a)))
            .filter(|(p, _)| *p != self.local)
            .take(self.copies)
            .collect();
        if targets.is_empty() {
            self.actions.push_back(MailboxAction::Engine(unreachable));
            return;
        }
        let size = attempt.envelope.len();
        self.fallbacks.insert(
            id,
            Fallback {
                envelope_id: envelope.id,
                pending: targets.len(),
                stored_at: Vec::new(),
                targets: targets.clone(),
            },
        );
        for (relay, address) in targets {
            self.actions.push_back(MailboxAction::AddAddress(relay, address.clone()));
            let queue = self.queues.entry(relay).or_default();
            queue.address = Some(address);
            queue.waiting.push_back((id, envelope.clone(), size));
            self.pump_relay(relay);
        }
    }

    /// Sends the next deposit to `relay` if none is in flight.
    fn pump_relay(&mut self, relay: PeerId) {
        let Some(queue) = self.queues.get_mut(&relay) else { return };
        if queue.in_flight || queue.waiting.is_empty() {
            return;
        }
        let Some(address) = queue.address.clone() else { return };
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
        self.actions.push_back(MailboxAction::Deposit { relay, address, envelopes, ids });
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
            self.actions.push_back(MailboxAction::Refused { id, relay, reason });
        }
        let Some(fallback) = self.fallbacks.get_mut(&id) else { return };
        fallback.pending = fallback.pending.saturating_sub(1);
        if ok && let Some((_, address)) = fallback.targets.iter().find(|(p, _)| *p == relay) {
            fallback.stored_at.push(address.clone());
        }
        if fallback.pending == 0 {
            let stored_at = std::mem::take(&mut fallback.stored_at);
            self.fallbacks.remove(&id);
            let result = if stored_at.is_empty() {
                DeliveryResult::Unreachable
            } else {
                DeliveryResult::Stored
            };
            self.actions.push_back(MailboxAction::Engine(Input::Delivery { id, result }));
            if !stored_at.is_empty() {
                self.actions.push_back(MailboxAction::StoredAt { id, relays: stored_at });
            }
        }
    }

    /// A sealed deposit of `ids` with `relay` was answered (`None`: it failed on the way).
    pub(crate) fn sealed_deposit_done(
        &mut self,
        relay: PeerId,
        ids: Vec<MessageId>,
        response: Option<MailboxResponse>,
    ) {
        if let Some(queue) = self.queues.get_mut(&relay) {
            queue.in_flight = false;
        }
        match response {
            Some(MailboxResponse::Deposited { results }) => {
                for (position, id) in ids.into_iter().enumerate() {
                    // The relay answers each envelope in order, by the envelope's id.
                    let wanted = self.fallbacks.get(&id).map_or(id, |f| f.envelope_id);
                    let result = results
                        .get(position)
                        .filter(|r| r.id == wanted)
                        .or_else(|| results.iter().find(|r| r.id == wanted));
                    let refused = result.and_then(|r| r.refused);
                    self.relay_outcome(id, relay, refused, result.is_some() && refused.is_none());
                }
            }
            Some(MailboxResponse::Refused(reason)) => {
                if reason == MailboxRefusal::NotARelay {
                    self.mark_not_relay(relay);
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
        if self.queues.get(&relay).is_some_and(|q| q.waiting.is_empty() && !q.in_flight) {
            self.queues.remove(&relay);
        }
    }

    // ------------------------------------------------------------------ prekey bundles

    /// The engine wants `user`'s bundle: first from the user itself.
    pub(crate) fn fetch_bundle(&mut self, user: UserId) {
        match peer_id_of(&user) {
            Ok(peer) => {
                self.actions.push_back(MailboxAction::FetchBundle { peer, user, relays_left: None })
            }
            Err(_) => self.actions.push_back(MailboxAction::Engine(Input::PreKeyBundle {
                user,
                result: Err(FetchError::Unreachable),
            })),
        }
    }

    /// The driver sent a [`MailboxAction::FetchBundle`] as `request`.
    pub(crate) fn bundle_sent(
        &mut self,
        request: R,
        user: UserId,
        relays_left: Option<Vec<Multiaddr>>,
    ) {
        self.bundles.insert(request, (user, relays_left));
    }

    /// The user a bundle fetch is for.
    pub(crate) fn bundle_user(&self, request: &R) -> Option<UserId> {
        self.bundles.get(request).map(|(user, _)| *user)
    }

    /// Whether `request` is one of our bundle fetches.
    pub(crate) fn is_bundle_fetch(&self, request: &R) -> bool {
        self.bundles.contains_key(request)
    }

    /// A bundle fetch was answered (`given`: the contact string's relays, for when the
    /// user itself had none to give).
    pub(crate) fn bundle_answered(
        &mut self,
        request: R,
        response: PreKeyResponse,
        given: &[String],
    ) {
        let Some((user, relays_left)) = self.bundles.remove(&request) else { return };
        match response {
            PreKeyResponse::Bundle(bundle) => self
                .actions
                .push_back(MailboxAction::Engine(Input::PreKeyBundle { user, result: Ok(bundle) })),
            // A node from before PQXDH: its relays or record may still hold PQXDH prekeys.
            PreKeyResponse::ClassicalBundle(_) => {
                self.bundle_failed(user, relays_left, FetchError::Classical, given)
            }
            _ => self.bundle_failed(user, relays_left, FetchError::NotFound, given),
        }
    }

    /// A bundle fetch failed on the way.
    pub(crate) fn bundle_request_failed(&mut self, request: R, given: &[String]) {
        if let Some((user, relays_left)) = self.bundles.remove(&request) {
            self.bundle_failed(user, relays_left, FetchError::Unreachable, given);
        }
    }

    /// The next relay, then the DHT record, then the engine is told.
    fn bundle_failed(
        &mut self,
        user: UserId,
        relays_left: Option<Vec<Multiaddr>>,
        error: FetchError,
        given: &[String],
    ) {
        let relays = match relays_left {
            // The peer itself failed: now its relays.
            None => self.relays_for(&user, given),
            Some(rest) => rest,
        };
        let mut relays = relays.into_iter().filter_map(|a| peer_of(&a).map(|p| (p, a)));
        if let Some((relay, address)) = relays.next() {
            self.actions.push_back(MailboxAction::AddAddress(relay, address));
            let rest = relays.map(|(_, a)| a).collect();
            self.actions.push_back(MailboxAction::FetchBundle {
                peer: relay,
                user,
                relays_left: Some(rest),
            });
            return;
        }
        self.actions
            .push_back(MailboxAction::Engine(Input::PreKeyBundle { user, result: Err(error) }));
        self.actions.push_back(MailboxAction::FetchRecord(user));
    }

    /// `user`'s verified record from the DHT: its relays for the fallback, its bundle for the
    /// engine (`None`: a classical record, which starts no session).
    pub(crate) fn record_found(
        &mut self,
        user: UserId,
        bundle: Option<PreKeyBundle>,
        relays: Vec<Multiaddr>,
    ) {
        self.remember_relays(user, relays);
        let result = bundle.map(Box::new).ok_or(FetchError::Classical);
        self.actions.push_back(MailboxAction::Engine(Input::PreKeyBundle { user, result }));
    }

    // ------------------------------------------------------------------ as a recipient

    /// Starts: our home relays are dialed; without any, the first keyspace lookup is due soon.
    pub(crate) fn start(&mut self, now: Instant) {
        for address in self.home_addrs() {
            self.actions.push_back(MailboxAction::Dial(address));
        }
        let first = if self.home.is_empty() { FIRST_KEYSPACE_POLL } else { MAILBOX_POLL };
        self.next_poll = Some(now + first);
    }

    /// Polls every relay of ours (the driver redials it if needed); without home relays,
    /// looks up the relays closest to us first.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.next_poll.is_none_or(|at| now < at) {
            return;
        }
        self.next_poll = Some(now + MAILBOX_POLL);
        if self.home.is_empty() {
            self.find_keyspace(self.me);
        }
        for (relay, address) in self.ours().into_iter().take(2 * self.copies) {
            self.actions.push_back(MailboxAction::AddAddress(relay, address));
            self.fetch(relay);
        }
    }

    /// Looks up the peers closest to `user`'s id: relay candidates for them.
    fn find_keyspace(&mut self, user: UserId) {
        if self.keyspace_queries.values().any(|u| *u == user) {
            return;
        }
        self.actions.push_back(MailboxAction::FindKeyspace(user));
    }

    /// The driver started a [`MailboxAction::FindKeyspace`] as `query`.
    pub(crate) fn keyspace_sent(&mut self, query: Q, user: UserId) {
        self.keyspace_queries.insert(query, user);
    }

    /// Whether `query` is one of our keyspace lookups.
    pub(crate) fn is_keyspace_query(&self, query: &Q) -> bool {
        self.keyspace_queries.contains_key(query)
    }

    /// The answer to a keyspace lookup: the peers found, with their addresses.
    pub(crate) fn keyspace_found(&mut self, query: Q, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
        let Some(user) = self.keyspace_queries.remove(&query) else { return };
        let Ok(target) = peer_id_of(&user) else { return };
        let target_key = kad::KBucketKey::from(target);
        let mut peers: Vec<(PeerId, Vec<Multiaddr>)> =
            peers.into_iter().filter(|(p, _)| *p != target && *p != self.local).collect();
        peers.sort_by_key(|(p, _)| kad::KBucketKey::from(*p).distance(&target_key));
        let mut found: Vec<(PeerId, Multiaddr)> = Vec::new();
        for (peer, addrs) in peers {
            for address in &addrs {
                self.actions.push_back(MailboxAction::AddAddress(peer, address.clone()));
            }
            if let Some(address) = addrs.into_iter().next() {
                let address = address.clone().with_p2p(peer).unwrap_or(address);
                found.push((peer, address));
            }
        }
        if user == self.me {
            self.own_keyspace = found;
            for (relay, _) in self.ours().into_iter().take(2 * self.copies) {
                self.fetch(relay);
            }
        } else {
            let relays = found.into_iter().map(|(_, a)| a).collect();
            if self.keyspace_relays.len() >= MAX_REMEMBERED_RELAYS {
                self.keyspace_relays.clear();
            }
            self.keyspace_relays.insert(user, relays);
        }
    }

    /// A connection to `peer` came up: fetch from it if it is one of our relays, and refresh
    /// its copy of our prekeys if it is a home relay and they are due.
    pub(crate) fn connected(&mut self, peer: PeerId, now: Instant) {
        if !self.is_ours(&peer) {
            return;
        }
        self.fetch(peer);
        if !self.home.iter().any(|(p, _)| *p == peer) {
            return; // prekeys and access keys go to home relays only
        }
        self.actions.push_back(MailboxAction::SetAccess { relay: peer });
        let due =
            self.uploaded.get(&peer).is_none_or(|at| now.duration_since(*at) >= PREKEY_REFRESH);
        if due {
            self.uploaded.insert(peer, now);
            // Refresh the signed prekey first; its answer says whether one-time keys are low.
            self.actions.push_back(MailboxAction::UploadPreKeys { relay: peer, count: 0 });
        }
    }

    fn fetch(&mut self, relay: PeerId) {
        if self.fetches.values().any(|r| *r == relay)
            || self.acks.values().any(|(r, _)| *r == relay)
            || self.receiving.values().any(|g| g.relay == relay)
        {
            return; // a fetch is already under way
        }
        self.actions.push_back(MailboxAction::Fetch { relay });
    }

    /// The driver sent a [`MailboxAction::Fetch`] as `request`.
    pub(crate) fn fetch_sent(&mut self, request: R, relay: PeerId) {
        self.fetches.insert(request, relay);
    }

    /// The driver sent a [`MailboxAction::Ack`] as `request`.
    pub(crate) fn ack_sent(&mut self, request: R, relay: PeerId, more: bool) {
        self.acks.insert(request, (relay, more));
    }

    /// The driver sent an upload prepared for [`MailboxAction::UploadPreKeys`] as `request`.
    pub(crate) fn upload_sent(&mut self, request: R, relay: PeerId) {
        self.uploads.insert(request, relay);
    }

    /// Whether `request` is one of our prekey uploads.
    pub(crate) fn is_upload(&self, request: &R) -> bool {
        self.uploads.contains_key(request)
    }

    /// The answer to one of our prekey uploads (`None`: it failed).
    pub(crate) fn upload_answered(&mut self, request: R, response: Option<&PreKeyResponse>) {
        let Some(relay) = self.uploads.remove(&request) else { return };
        if let Some(PreKeyResponse::Uploaded { one_time_prekeys }) = response
            && *one_time_prekeys < RELAY_PREKEY_LOW_WATER
        {
            self.actions
                .push_back(MailboxAction::UploadPreKeys { relay, count: RELAY_PREKEY_BATCH });
        }
    }

    /// A relay pushed `envelopes` (the driver holds the push's channel under `push`).
    pub(crate) fn pushed(&mut self, relay: PeerId, envelopes: Vec<Envelope>, push: u64) {
        self.receive(relay, plain(envelopes), Source::Push(push));
    }

    /// A relay pushed sealed envelopes; answered once the engine holds them.
    pub(crate) fn pushed_sealed(
        &mut self,
        relay: PeerId,
        envelopes: Vec<SealedEnvelope>,
        push: u64,
    ) {
        self.receive(relay, sealed(envelopes), Source::Push(push));
    }

    /// Feeds envelopes from `relay` to the engine; they are acknowledged once all are answered.
    fn receive(&mut self, relay: PeerId, fed: Vec<(MessageId, Fed)>, source: Source) {
        let group = self.next_group;
        self.next_group += 1;
        self.receiving
            .insert(group, Receiving { relay, outstanding: fed.len(), done: Vec::new(), source });
        if fed.is_empty() {
            self.finish_receiving(group);
            return;
        }
        for (id, item) in fed {
            let token = self.tokens.next();
            self.receiving_tokens.insert(token, (group, id));
            let input = match item {
                Fed::Plain(bytes) => Input::Envelope { bytes, via: Via::Relay, reply: Some(token) },
                Fed::Sealed(envelope) => Input::SealedEnvelope { envelope, reply: Some(token) },
            };
            self.actions.push_back(MailboxAction::Engine(input));
        }
    }

    /// Whether `token` is one of ours.
    pub(crate) fn owns(&self, token: ReplyToken) -> bool {
        self.tokens.owns(token)
    }

    /// The engine answered for an envelope from a relay.
    pub(crate) fn engine_answered(&mut self, token: ReplyToken, ack: &DeliveryAck) {
        let Some((group, id)) = self.receiving_tokens.remove(&token) else { return };
        let Some(receiving) = self.receiving.get_mut(&group) else { return };
        receiving.outstanding = receiving.outstanding.saturating_sub(1);
        // Held (or refused for good): the relay may delete it. A store failure: keep it there.
        if ack.result != AckResult::Rejected(RejectReason::Unavailable) {
            receiving.done.push(id);
        }
        if receiving.outstanding == 0 {
            self.finish_receiving(group);
        }
    }

    fn finish_receiving(&mut self, group: u64) {
        let Some(receiving) = self.receiving.remove(&group) else { return };
        match receiving.source {
            Source::Push(push) => {
                self.actions.push_back(MailboxAction::AnswerPush { push, ids: receiving.done });
            }
            Source::Fetch { remaining } => {
                if receiving.done.is_empty() {
                    return;
                }
                self.actions.push_back(MailboxAction::Ack {
                    relay: receiving.relay,
                    ids: receiving.done,
                    more: remaining > 0,
                });
            }
        }
    }

    // ------------------------------------------------------------------ answers

    /// A relay answered one of our mailbox requests.
    pub(crate) fn answered_request(
        &mut self,
        relay: PeerId,
        request: R,
        response: MailboxResponse,
    ) {
        if self.fetches.remove(&request).is_some() {
            match response {
                MailboxResponse::Batch { envelopes, remaining } if !envelopes.is_empty() => {
                    self.receive(relay, plain(envelopes), Source::Fetch { remaining });
                }
                MailboxResponse::SealedBatch { envelopes, remaining } if !envelopes.is_empty() => {
                    self.receive(relay, sealed(envelopes), Source::Fetch { remaining });
                }
                MailboxResponse::Batch { .. } | MailboxResponse::SealedBatch { .. } => {}
                MailboxResponse::Refused(MailboxRefusal::NotARelay) => self.mark_not_relay(relay),
                other => {
                    tracing::info!("relay {} refused a fetch: {other:?}", crate::short(&relay))
                }
            }
            return;
        }
        if let Some((relay, more)) = self.acks.remove(&request)
            && more
            && matches!(response, MailboxResponse::Acked { .. })
        {
            self.fetch(relay);
        }
    }

    /// One of our mailbox requests failed (`unsupported`: the peer does not speak the
    /// mailbox protocol, so it is no relay).
    pub(crate) fn request_failed(&mut self, relay: PeerId, request: R, unsupported: bool) {
        if unsupported {
            self.mark_not_relay(relay);
        }
        self.fetches.remove(&request);
        self.acks.remove(&request);
    }
}

#[cfg(test)]
mod tests;
