//! Direct delivery over `/kith/envelope/1`: envelopes to a peer leave in batches, and batches
//! from peers are answered once the engine has answered each of their envelopes.
//!
//! Outbound, a turn's deliveries to one peer wait until the end of the turn
//! ([`DirectDelivery::end_turn`]) and then leave together, up to [`MAX_DIRECT_BATCH`]
//! envelopes and [`MAX_DIRECT_FRAME_BYTES`] per request and at most
//! [`MAX_IN_FLIGHT_PER_PEER`] requests open per peer; the rest wait, in outbox order, for
//! answers. An answer acknowledges the envelopes by position; an envelope the peer left
//! unanswered, and every envelope of a request that failed, falls back (relays, or the
//! engine's retry) as if it had not arrived.
//!
//! Inbound, each envelope of a batch is handed to the engine with a reply token; the batch is
//! answered, in request order, once every envelope has its answer (which the engine gives
//! after its flush: an acknowledgement means durable). Envelopes over the peer's rate are
//! refused at once, and so is a batch from a peer that is not a Kith user.
//!
//! Sans-IO: the driver feeds events in and carries out the [`DeliveryAction`]s; requests are
//! named by the driver's own request ids (`R`), so the component runs without a swarm.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use kith_core::engine::{DeliveryResult, Input, ReplyToken, Via};
use kith_core::identity::user_id_of;
use kith_protocol::ByteBuf;
use kith_protocol::MessageId;
use kith_protocol::direct::{
    AckResult, DeliveryAck, DeliveryAcks, EnvelopeBatch, RejectReason, batch_cost,
};
use kith_protocol::limits::{MAX_DIRECT_BATCH, MAX_DIRECT_FRAME_BYTES};
use libp2p::PeerId;
use tokio::time::Instant;

use crate::limiter::RateLimiter;
use crate::tokens::Tokens;

/// Most envelope requests in flight to one peer, each a batch of up to [`MAX_DIRECT_BATCH`]
/// envelopes; more wait, in outbox order, and leave together as the answers come back. Each
/// request is a Yamux stream, and a connection that exceeds the peer's stream limit (512 by
/// default, shared with the peer's own requests to us) is torn down.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 128;

/// Inbound envelopes per peer: average per second, and burst. Far above what a person sends
/// (and above what one node can store), it only stops a peer from monopolising the node.
pub const ENVELOPE_RATE: (f64, f64) = (50_000.0, 100_000.0);

/// What the driver does for direct delivery.
#[derive(Debug, PartialEq)]
pub(crate) enum DeliveryAction {
    /// Send `envelopes` to `peer` as one request, then report its request id with
    /// [`DirectDelivery::sent`] (`ids`: the deliveries it carries, `None` for typing or
    /// presence, which are not tracked).
    Send { peer: PeerId, envelopes: Vec<ByteBuf>, ids: Vec<Option<MessageId>> },
    /// Hand this to the engine.
    Engine(Input),
    /// The delivery did not reach the peer: try its relays (or tell the engine).
    FallBack(MessageId),
    /// Answer the inbound batch `batch` (the driver holds its response channel).
    Answer { batch: u64, acks: DeliveryAcks },
    /// The peer could not be dialed: look it up in the DHT.
    Lookup(PeerId),
}

/// An inbound batch waiting for the engine to answer each of its envelopes.
struct Inbound {
    /// One answer per envelope, in request order; `None` until the engine gives it.
    acks: Vec<Option<DeliveryAck>>,
    /// How many are still `None`.
    missing: usize,
}

/// Direct delivery's state. `R` names outbound requests (libp2p's request ids in the node,
/// plain numbers in tests).
pub(crate) struct DirectDelivery<R> {
    /// The deliveries each request in flight carries, and to whom.
    requests: HashMap<R, (PeerId, Vec<Option<MessageId>>)>,
    /// Requests in flight per peer.
    in_flight: HashMap<PeerId, usize>,
    /// Deliveries waiting to leave, in order: until the end of the turn that produced them,
    /// or for room under [`MAX_IN_FLIGHT_PER_PEER`].
    waiting: HashMap<PeerId, VecDeque<MessageId>>,
    /// The newest envelope bytes of each waiting delivery.
    envelopes: HashMap<MessageId, Vec<u8>>,
    /// Inbound batches by key.
    inbound: HashMap<u64, Inbound>,
    /// Which batch and place each envelope handed to the engine answers for.
    inbound_tokens: HashMap<ReplyToken, (u64, usize)>,
    next_batch: u64,
    tokens: Tokens,
    limiter: RateLimiter,
    actions: VecDeque<DeliveryAction>,
}

impl<R: Copy + Eq + Hash> DirectDelivery<R> {
    /// Empty state; reply tokens come from `tokens`.
    pub(crate) fn new(tokens: Tokens) -> Self {
        Self {
            requests: HashMap::new(),
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            envelopes: HashMap::new(),
            inbound: HashMap::new(),
            inbound_tokens: HashMap::new(),
            next_batch: 0,
            tokens,
            limiter: RateLimiter::new(ENVELOPE_RATE.0, ENVELOPE_RATE.1),
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<DeliveryAction> {
        self.actions.pop_front()
    }

    // ------------------------------------------------------------------ outbound

    /// Queues a tracked delivery; it leaves at the end of the turn with whatever else the
    /// turn has for this peer. A retry of a delivery still waiting replaces its bytes and
    /// keeps its place.
    pub(crate) fn deliver(&mut self, peer: PeerId, id: MessageId, envelope: Vec<u8>) {
        if self.envelopes.insert(id, envelope).is_none() {
            self.waiting.entry(peer).or_default().push_back(id);
        }
    }

    /// Typing or presence: sent at once if we are connected and not busy with the peer,
    /// dropped otherwise (never retried).
    pub(crate) fn deliver_ephemeral(&mut self, peer: PeerId, envelope: Vec<u8>, connected: bool) {
        if connected && self.has_room(&peer) {
            self.start(peer, vec![ByteBuf::from(envelope)], vec![None]);
        }
    }

    /// Whether no request is in flight (a node that stops waits for this, briefly, so that
    /// its goodbye reaches its peers).
    pub(crate) fn is_idle(&self) -> bool {
        self.requests.is_empty()
    }

    /// Requests in flight.
    #[cfg(feature = "test-utils")]
    pub(crate) fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Sends every peer's waiting deliveries (the turn is flushed).
    pub(crate) fn end_turn(&mut self) {
        let peers: Vec<PeerId> = self.waiting.keys().copied().collect();
        for peer in peers {
            self.send_waiting(peer);
        }
    }

    /// The driver sent a [`DeliveryAction::Send`] as request `request`.
    pub(crate) fn sent(&mut self, request: R, peer: PeerId, ids: Vec<Option<MessageId>>) {
        self.requests.insert(request, (peer, ids));
    }

    /// The peer answered `request`: its acknowledgements by position go to the engine, an
    /// envelope left unanswered falls back.
    pub(crate) fn answered(&mut self, request: R, acks: Vec<DeliveryAck>) {
        let Some((peer, ids)) = self.requests.remove(&request) else { return };
        let mut acks = acks.into_iter();
        for id in ids {
            let ack = acks.next();
            let Some(id) = id else { continue };
            self.actions.push_back(match ack {
                Some(ack) => DeliveryAction::Engine(Input::Delivery {
                    id,
                    result: DeliveryResult::Acked(ack.result),
                }),
                None => DeliveryAction::FallBack(id),
            });
        }
        self.request_done(peer, true);
    }

    /// `request` failed: its deliveries fall back. A peer that only answered slowly
    /// (`timeout`) is still there; one that could not be dialed is looked up.
    pub(crate) fn failed(&mut self, request: R, timeout: bool, dial_failure: bool) {
        let Some((peer, ids)) = self.requests.remove(&request) else { return };
        self.actions.extend(ids.into_iter().flatten().map(DeliveryAction::FallBack));
        self.request_done(peer, timeout);
        if dial_failure {
            self.actions.push_back(DeliveryAction::Lookup(peer));
        }
    }

    fn has_room(&self, peer: &PeerId) -> bool {
        self.in_flight.get(peer).copied().unwrap_or(0) < MAX_IN_FLIGHT_PER_PEER
    }

    fn start(&mut self, peer: PeerId, envelopes: Vec<ByteBuf>, ids: Vec<Option<MessageId>>) {
        *self.in_flight.entry(peer).or_default() += 1;
        self.actions.push_back(DeliveryAction::Send { peer, envelopes, ids });
    }

    /// Sends `peer`'s waiting deliveries in order, as many batches as there is room for.
    fn send_waiting(&mut self, peer: PeerId) {
        let Some(mut queue) = self.waiting.remove(&peer) else { return };
        while self.has_room(&peer) && !queue.is_empty() {
            let (mut envelopes, mut ids, mut size) =
                (Vec::new(), Vec::new(), EnvelopeBatch::OVERHEAD);
            while let Some(id) = queue.front() {
                let cost = self.envelopes.get(id).map_or(0, |e| batch_cost(e.len()));
                if envelopes.len() == MAX_DIRECT_BATCH
                    || (!envelopes.is_empty() && size + cost > MAX_DIRECT_FRAME_BYTES)
                {
                    break;
                }
                let Some(id) = queue.pop_front() else { break };
                if let Some(envelope) = self.envelopes.remove(&id) {
                    size += cost;
                    envelopes.push(ByteBuf::from(envelope));
                    ids.push(Some(id));
                }
            }
            if !envelopes.is_empty() {
                self.start(peer, envelopes, ids);
            }
        }
        if !queue.is_empty() {
            self.waiting.insert(peer, queue);
        }
    }

    /// A request to `peer` ended: the next waiting deliveries go, or, if the peer could not
    /// be reached, every waiting delivery falls back.
    fn request_done(&mut self, peer: PeerId, reached: bool) {
        if let Some(n) = self.in_flight.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(&peer);
            }
        }
        if reached {
            self.send_waiting(peer);
            return;
        }
        for id in self.waiting.remove(&peer).into_iter().flatten() {
            self.envelopes.remove(&id);
            self.actions.push_back(DeliveryAction::FallBack(id));
        }
    }

    // ------------------------------------------------------------------ inbound

    /// A batch from `peer`: each envelope within the peer's rate goes to the engine; returns
    /// the batch's key (the driver keeps its response channel under it). A batch answered in
    /// full at once (a non-Kith peer, or all over the rate) is answered right away.
    pub(crate) fn receive(&mut self, peer: PeerId, envelopes: Vec<ByteBuf>, now: Instant) -> u64 {
        let batch = self.next_batch;
        self.next_batch += 1;
        let refuse =
            |reason| DeliveryAck { id: MessageId([0; 16]), result: AckResult::Rejected(reason) };
        let Ok(user) = user_id_of(&peer) else {
            let acks = envelopes.iter().map(|_| refuse(RejectReason::SenderMismatch)).collect();
            self.actions.push_back(DeliveryAction::Answer { batch, acks: DeliveryAcks { acks } });
            return batch;
        };
        let admitted: Vec<bool> = envelopes.iter().map(|_| self.limiter.allow(peer, now)).collect();
        let acks: Vec<Option<DeliveryAck>> = admitted
            .iter()
            .map(|&ok| if ok { None } else { Some(refuse(RejectReason::RateLimited)) })
            .collect();
        let missing = admitted.iter().filter(|&&ok| ok).count();
        self.inbound.insert(batch, Inbound { acks, missing });
        for (index, (bytes, ok)) in envelopes.into_iter().zip(admitted).enumerate() {
            if ok {
                let token = self.tokens.next();
                self.inbound_tokens.insert(token, (batch, index));
                self.actions.push_back(DeliveryAction::Engine(Input::Envelope {
                    bytes: bytes.into_vec(),
                    via: Via::Direct(user),
                    reply: Some(token),
                }));
            }
        }
        if missing == 0 {
            self.answer(batch);
        }
        batch
    }

    /// Takes `count` envelopes from `peer`'s rate (a relay's push counts like a batch):
    /// whether all fit.
    pub(crate) fn admit(&mut self, peer: PeerId, count: usize, now: Instant) -> bool {
        (0..count).all(|_| self.limiter.allow(peer, now))
    }

    /// Whether `token` is one of ours.
    pub(crate) fn owns(&self, token: ReplyToken) -> bool {
        self.tokens.owns(token)
    }

    /// The engine answered for one envelope; a batch answered in full is sent.
    pub(crate) fn engine_answered(&mut self, token: ReplyToken, ack: DeliveryAck) {
        let Some((batch, index)) = self.inbound_tokens.remove(&token) else { return };
        let Some(inbound) = self.inbound.get_mut(&batch) else { return };
        if let Some(slot @ None) = inbound.acks.get_mut(index) {
            *slot = Some(ack);
            inbound.missing -= 1;
        }
        if inbound.missing == 0 {
            self.answer(batch);
        }
    }

    fn answer(&mut self, batch: u64) {
        let Some(inbound) = self.inbound.remove(&batch) else { return };
        let acks = inbound.acks.into_iter().flatten().collect();
        self.actions.push_back(DeliveryAction::Answer { batch, acks: DeliveryAcks { acks } });
    }
}

#[cfg(test)]
mod tests;
