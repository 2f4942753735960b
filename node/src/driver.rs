//! The driver: one task that owns the swarm and the engine.
//!
//! Each loop turn waits for one thing (a call from a [`crate::Node`] handle, a swarm event or
//! the engine's timer), then takes everything else that is already ready (up to
//! [`MAX_TURN_WORK`]), then flushes the engine once — one fsync for the whole turn (group
//! commit) — and only then carries out the outputs and answers the callers. An acknowledgement
//! or a "queued" answer therefore always means the data is on disk.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kith_core::engine::{
    Command, CommandError, CommandResult, DeliveryResult, Engine, FetchError, Input, Output, Reply,
    ReplyToken, Via,
};
use kith_core::identity::{peer_id_of, user_id_of};
use kith_core::record::{record_key, supersedes, verify_record};
use kith_protocol::ByteBuf;
use kith_protocol::direct::{
    AckResult, DeliveryAck, DeliveryAcks, EnvelopeBatch, RejectReason, batch_cost,
};
use kith_protocol::limits::{MAX_DIRECT_BATCH, MAX_DIRECT_FRAME_BYTES};
use kith_protocol::prekey::{PreKeyRefusal, PreKeyRequest, PreKeyResponse, UserRecord};
use kith_protocol::{MessageId, UserId};
use libp2p::kad::store::RecordStore;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::NodeEvent;
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::clock::now_millis;
use crate::codec::KAD_PROTOCOL;
use crate::limiter::RateLimiter;
use crate::mailbox::{Mailboxes, NetAction};
use crate::media::Media;
use crate::profile::ProfileRng;
use crate::reachability;
use crate::relay::RelayService;

/// Most events and calls taken into one turn (one fsync) besides the first, and most engine
/// inputs (each received envelope, command and delivery result counts one). A bigger turn
/// spreads its fsync over more work, but every answer of the turn waits for all of it. Counted
/// in events alone, a turn could take 1,024 batches of 64 envelopes: a burst of sends then
/// held the peer's acknowledgements back for tens of milliseconds while the two nodes took
/// turns at being idle. Bounding the inputs took `cargo bench -p kith-node --bench delivery`
/// from 5,200–6,800 to 7,400–9,100 messages/s; 128, 256 and 1,024 measured the same.
pub const MAX_TURN_WORK: usize = 256;
/// Inbound envelopes per peer: average per second, and burst. Far above what a person sends
/// (and above what one node can store), it only stops a peer from monopolising the node.
pub const ENVELOPE_RATE: (f64, f64) = (50_000.0, 100_000.0);
/// Most envelope requests in flight to one peer, each a batch of up to
/// [`MAX_DIRECT_BATCH`] envelopes; more wait in the driver, in outbox order, and leave together
/// as the answers come back. Each request is a Yamux stream, and a connection that exceeds the
/// peer's stream limit (512 by default, shared with the peer's own requests to us) is torn down.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 128;
/// Inbound prekey fetches per peer (each may hand out a one-time prekey): per second, burst.
pub const PREKEY_RATE: (f64, f64) = (1.0 / 6.0, 10.0);
/// A DHT lookup for the same peer is not repeated sooner than this.
pub const LOOKUP_COOLDOWN: Duration = Duration::from_secs(10);
/// Our user record is republished this often once published.
pub const RECORD_REPUBLISH: Duration = Duration::from_secs(30 * 60);
/// A failed publication of our user record is retried after this.
pub const RECORD_RETRY: Duration = Duration::from_secs(30);

/// Runs disk work that blocks (an fsync) without stalling the runtime's other tasks (the
/// swarm's connections, an app's own): on a multi-threaded runtime tokio hands them to another
/// worker meanwhile. A current-thread runtime has no other worker; there it simply blocks.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// An envelope batch received, waiting for the engine to answer each of its envelopes.
struct InboundBatch {
    channel: ResponseChannel<DeliveryAcks>,
    /// One answer per envelope, in request order; `None` until the engine gives it.
    acks: Vec<Option<DeliveryAck>>,
    /// How many are still `None`.
    missing: usize,
}

/// A request from a [`crate::Node`] handle.
pub(crate) enum Call {
    /// A user command; answered once its effects are durable.
    Command(Command, oneshot::Sender<Result<CommandResult, CommandError>>),
    /// Runs a closure on the driver (queries, network actions).
    With(Box<dyn FnOnce(&mut Driver) + Send>),
    /// Flushes and stops.
    Shutdown(oneshot::Sender<()>),
}

pub(crate) struct Driver {
    pub(crate) engine: Engine<ProfileRng>,
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    pub(crate) user: UserId,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) media: Media,
    /// The mailbox service, when this node is a relay.
    pub(crate) relay: Option<RelayService>,
    calls: mpsc::Receiver<Call>,
    events: broadcast::Sender<NodeEvent>,
    pub(crate) after_flush: Vec<Box<dyn FnOnce() + Send>>,
    next_token: u64,
    /// Envelope batches received, gathering the engine's answers (one response per batch).
    inbound_batches: HashMap<u64, InboundBatch>,
    /// Which batch and place each envelope handed to the engine answers for.
    envelope_tokens: HashMap<u64, (u64, usize)>,
    prekey_replies: HashMap<u64, ResponseChannel<PreKeyResponse>>,
    /// The deliveries each envelope request in flight carries, in order (`None`: typing or
    /// presence, not tracked).
    deliveries: HashMap<OutboundRequestId, Vec<Option<MessageId>>>,
    /// Envelope requests in flight per peer (every one ends in a response or a failure).
    in_flight: HashMap<PeerId, usize>,
    /// Deliveries waiting to leave, in order: until the end of the turn that produced them
    /// (then batched per peer), or for room under [`MAX_IN_FLIGHT_PER_PEER`].
    waiting: HashMap<PeerId, VecDeque<MessageId>>,
    /// The newest envelope bytes of each waiting delivery.
    waiting_envelopes: HashMap<MessageId, Vec<u8>>,
    /// Bundle fetches in flight: whose, and the relays still to ask (`None`: this one is the
    /// peer itself, its relays come next).
    pub(crate) bundle_fetches: HashMap<OutboundRequestId, (UserId, Option<Vec<Multiaddr>>)>,
    record_gets: HashMap<kad::QueryId, UserId>,
    lookups: HashMap<PeerId, Instant>,
    pub(crate) envelope_limiter: RateLimiter,
    prekey_limiter: RateLimiter,
    record_due: Instant,
    stopping: Option<oneshot::Sender<()>>,
    /// Engine inputs and commands taken into this turn (bounded by [`MAX_TURN_WORK`]).
    turn_inputs: usize,
    /// Gossip messages waiting for the engine's verdict.
    pub(crate) validations: crate::groups::Validations,
}

impl Driver {
    pub(crate) fn new(
        engine: Engine<ProfileRng>,
        swarm: Swarm<Behaviour>,
        calls: mpsc::Receiver<Call>,
        events: broadcast::Sender<NodeEvent>,
        mailboxes: Mailboxes,
        media: Media,
        relay: Option<RelayService>,
    ) -> Self {
        let user = engine.user_id();
        Self {
            engine,
            swarm,
            listen_addrs: Vec::new(),
            user,
            mailboxes,
            media,
            relay,
            calls,
            events,
            after_flush: Vec::new(),
            next_token: 0,
            inbound_batches: HashMap::new(),
            envelope_tokens: HashMap::new(),
            prekey_replies: HashMap::new(),
            deliveries: HashMap::new(),
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            waiting_envelopes: HashMap::new(),
            bundle_fetches: HashMap::new(),
            record_gets: HashMap::new(),
            lookups: HashMap::new(),
            envelope_limiter: RateLimiter::new(ENVELOPE_RATE.0, ENVELOPE_RATE.1),
            prekey_limiter: RateLimiter::new(PREKEY_RATE.0, PREKEY_RATE.1),
            record_due: Instant::now() + Duration::from_secs(1),
            stopping: None,
            turn_inputs: 0,
            validations: crate::groups::Validations::default(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            let timer = self.next_deadline();
            tokio::select! {
                call = self.calls.recv() => match call {
                    Some(call) => self.on_call(call),
                    // Every handle is gone: stop.
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(work) = self.media.work_rx.recv() => self.on_media_work(work),
                () = tokio::time::sleep_until(timer.into()) => self.on_timer(),
            }
            // Group commit: take what else is ready now into the same turn.
            for _ in 0..MAX_TURN_WORK {
                if self.stopping.is_some() || self.turn_inputs >= MAX_TURN_WORK {
                    break;
                }
                if let Some(Some(event)) = self.swarm.next().now_or_never() {
                    self.on_swarm_event(event);
                } else if let Ok(call) = self.calls.try_recv() {
                    self.on_call(call);
                } else if let Ok(work) = self.media.work_rx.try_recv() {
                    self.on_media_work(work);
                } else {
                    break;
                }
            }
            self.flush_and_act();
            self.turn_inputs = 0;
            if let Some(done) = self.stopping.take() {
                let _ = done.send(());
                break;
            }
        }
        if let Err(e) = self.engine.flush() {
            tracing::error!("final flush failed: {e}");
        }
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let engine = self
            .engine
            .poll_timeout()
            .map(|t| now + Duration::from_millis(t.saturating_sub(now_millis())));
        let mut deadline = engine.map_or(self.record_due, |e| e.min(self.record_due));
        if let Some(poll) = self.mailboxes.next_deadline() {
            deadline = deadline.min(poll);
        }
        if let Some(relay) = &self.relay {
            deadline = deadline.min(relay.next_deadline());
        }
        if let Some(retry) = self.media.next_deadline() {
            deadline = deadline.min(retry);
        }
        deadline
    }

    pub(crate) fn input(&mut self, input: Input) {
        self.turn_inputs += 1;
        if let Err(e) = self.engine.handle_input(now_millis(), input) {
            tracing::error!("store failure while handling network input: {e}");
        }
    }

    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    pub(crate) fn emit(&self, event: NodeEvent) {
        // No subscriber is fine; a lagging one loses old events (bounded channel).
        let _ = self.events.send(event);
    }

    fn on_call(&mut self, call: Call) {
        match call {
            Call::Command(command, reply) => {
                self.turn_inputs += 1;
                let result = self.engine.handle_command(now_millis(), command);
                self.after_flush.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }
            Call::With(f) => f(self),
            Call::Shutdown(done) => {
                // Receipts owed go into the outbox now, durable, rather than wait for a
                // timer that will not fire.
                self.engine.release_receipts();
                self.stopping = Some(done);
            }
        }
    }

    fn on_timer(&mut self) {
        self.input(Input::Timeout);
        let now = Instant::now();
        if now >= self.record_due {
            self.publish_record();
        }
        if self.mailboxes.next_deadline().is_some_and(|at| now >= at) {
            self.poll_home_relays();
        }
        if let Some(relay) = self.relay.as_mut() {
            relay.maintain(now_millis());
        }
        self.media_timer();
    }

    /// Flushes the turn (one fsync), then carries out the engine's outputs and answers callers.
    fn flush_and_act(&mut self) {
        // Gossip verdicts promise nothing about our state: a valid message is forwarded
        // without waiting for our fsync. Everything else waits for the flush below.
        for (token, verdict) in self.engine.take_verdicts() {
            self.report_validation(token, verdict);
        }
        if !blocking(|| self.flush_stores()) {
            // Outputs stay held until a flush succeeds: nothing is promised that is not on disk.
            return;
        }
        // Acting may feed the engine (a delivery that cannot start): take its outputs too.
        loop {
            let mut outputs = Vec::new();
            while let Some(output) = self.engine.poll_output() {
                if let Output::Event(event) = &output {
                    self.note_incoming_media(event);
                }
                outputs.push(output);
            }
            if outputs.is_empty() {
                break;
            }
            // Incoming attachments are recorded before their envelopes are acknowledged.
            if let Err(e) = self.media.flush() {
                tracing::error!("media flush failed: {e}");
            }
            for output in outputs {
                self.act(output);
            }
        }
        // The turn's deliveries, batched per peer.
        let peers: Vec<PeerId> = self.waiting.keys().copied().collect();
        for peer in peers {
            self.send_waiting(peer);
        }
        self.start_media();
        // Relay answers, pushes and prekey uploads queued by this turn's events: all durable now.
        self.after_flush_network();
        for reply in self.after_flush.drain(..) {
            reply();
        }
    }

    /// Makes the turn's writes durable: the engine's, the relay's and the media store's.
    fn flush_stores(&mut self) -> bool {
        if let Err(e) = self.engine.flush() {
            tracing::error!("flush failed, retrying next turn: {e}");
            return false;
        }
        if let Some(relay) = self.relay.as_mut()
            && let Err(e) = relay.flush()
        {
            tracing::error!("relay flush failed, retrying next turn: {e}");
            return false;
        }
        if let Err(e) = self.media.flush() {
            tracing::error!("media flush failed, retrying next turn: {e}");
            return false;
        }
        true
    }

    fn act(&mut self, output: Output) {
        match output {
            Output::Deliver(delivery) => {
                let Ok(peer) = peer_id_of(&delivery.to) else {
                    self.input(Input::Delivery {
                        id: delivery.id,
                        result: DeliveryResult::Unreachable,
                    });
                    return;
                };
                if delivery.ephemeral {
                    // Typing and presence: only to a peer we are connected to and not busy
                    // with, never retried.
                    if self.swarm.is_connected(&peer) && self.has_room(&peer) {
                        let request = self.send_batch(peer, vec![delivery.envelope.into()]);
                        self.deliveries.insert(request, vec![None]);
                    }
                    return;
                }
                self.track_attempt(delivery.id, delivery.to, &delivery.envelope, &delivery.relays);
                // Queued, and sent with whatever else the turn has for this peer
                // (`send_waiting`). A retry of a waiting delivery replaces its bytes and keeps
                // its place.
                if self.waiting_envelopes.insert(delivery.id, delivery.envelope).is_none() {
                    self.waiting.entry(peer).or_default().push_back(delivery.id);
                }
            }
            Output::FetchPreKeys { user, .. } => match peer_id_of(&user) {
                Ok(peer) => {
                    let request = self
                        .swarm
                        .behaviour_mut()
                        .prekey
                        .send_request(&peer, PreKeyRequest::Fetch { user });
                    self.bundle_fetches.insert(request, (user, None));
                }
                Err(_) => {
                    self.input(Input::PreKeyBundle { user, result: Err(FetchError::Unreachable) })
                }
            },
            Output::Reply { token, reply: Reply::Ack(ack) } => {
                if !self.relay_envelope_answered(token.0, &ack) {
                    self.envelope_answered(token.0, ack);
                }
            }
            Output::Reply { token, reply: Reply::PreKeys(response) } => {
                if let Some(channel) = self.prekey_replies.remove(&token.0) {
                    let _ = self.swarm.behaviour_mut().prekey.send_response(channel, response);
                }
            }
            Output::Publish(publication) => self.publish_group(publication),
            Output::Subscribe { tag, members } => self.subscribe_group(tag, &members),
            Output::Unsubscribe { tag } => self.unsubscribe_group(tag),
            Output::Validation { token, verdict } => self.report_validation(token, verdict),
            Output::Event(event) => self.emit(NodeEvent::Engine(event)),
        }
    }

    fn has_room(&self, peer: &PeerId) -> bool {
        self.in_flight.get(peer).copied().unwrap_or(0) < MAX_IN_FLIGHT_PER_PEER
    }

    fn send_batch(&mut self, peer: PeerId, envelopes: Vec<ByteBuf>) -> OutboundRequestId {
        *self.in_flight.entry(peer).or_default() += 1;
        self.swarm.behaviour_mut().envelope.send_request(&peer, EnvelopeBatch { envelopes })
    }

    /// Sends `peer`'s waiting deliveries in order, as many batches as there is room for, each
    /// of up to [`MAX_DIRECT_BATCH`] envelopes and [`MAX_DIRECT_FRAME_BYTES`].
    fn send_waiting(&mut self, peer: PeerId) {
        let Some(mut queue) = self.waiting.remove(&peer) else { return };
        while self.has_room(&peer) && !queue.is_empty() {
            let (mut envelopes, mut ids, mut size) =
                (Vec::new(), Vec::new(), EnvelopeBatch::OVERHEAD);
            while let Some(id) = queue.front() {
                let cost = self.waiting_envelopes.get(id).map_or(0, |e| batch_cost(e.len()));
                if envelopes.len() == MAX_DIRECT_BATCH
                    || (!envelopes.is_empty() && size + cost > MAX_DIRECT_FRAME_BYTES)
                {
                    break;
                }
                let Some(id) = queue.pop_front() else { break };
                if let Some(envelope) = self.waiting_envelopes.remove(&id) {
                    size += cost;
                    envelopes.push(ByteBuf::from(envelope));
                    ids.push(Some(id));
                }
            }
            if !envelopes.is_empty() {
                let request = self.send_batch(peer, envelopes);
                self.deliveries.insert(request, ids);
            }
        }
        if !queue.is_empty() {
            self.waiting.insert(peer, queue);
        }
    }

    /// An envelope request to `peer` ended: sends the next waiting deliveries, or, if the peer
    /// could not be reached, hands every waiting delivery to the fallback (relays, or the
    /// engine's retry).
    fn envelope_done(&mut self, peer: PeerId, reached: bool) {
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
            self.waiting_envelopes.remove(&id);
            self.fall_back(id);
        }
    }

    /// Looks `peer` up in the DHT (at most once per [`LOOKUP_COOLDOWN`]); a found peer is dialed.
    pub(crate) fn lookup(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self.lookups.get(&peer).is_some_and(|at| now.duration_since(*at) < LOOKUP_COOLDOWN) {
            return;
        }
        self.lookups.retain(|_, at| now.duration_since(*at) < LOOKUP_COOLDOWN);
        self.lookups.insert(peer, now);
        self.swarm.behaviour_mut().kad.get_closest_peers(peer);
    }

    /// Asks the DHT for `user`'s record, a bundle without one-time prekey for a first message.
    pub(crate) fn fetch_record(&mut self, user: UserId) {
        if self.record_gets.values().any(|u| *u == user) {
            return;
        }
        let query =
            self.swarm.behaviour_mut().kad.get_record(kad::RecordKey::new(&record_key(&user)));
        self.record_gets.insert(query, user);
    }

    fn publish_record(&mut self) {
        self.record_due = Instant::now() + RECORD_RETRY;
        let relays = self.mailboxes.home_addrs().iter().map(|a| a.to_vec()).collect();
        match self.engine.user_record(relays).map(|r| kith_protocol::encode(&r)) {
            Ok(Ok(bytes)) => {
                let record = kad::Record::new(kad::RecordKey::new(&record_key(&self.user)), bytes);
                if let Err(e) = self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One)
                {
                    tracing::warn!("could not store our user record: {e}");
                }
            }
            Ok(Err(e)) => tracing::error!("could not encode our user record: {e}"),
            Err(e) => tracing::error!("could not build our user record: {e}"),
        }
    }

    /// Accepts a DHT put only for a record signed by the user it is stored under and no older
    /// than the one already kept for that user.
    fn validate_put(&mut self, record: kad::Record) {
        let key = record.key.to_vec();
        let Some(user) =
            key.strip_prefix(b"/kith/user/".as_slice()).and_then(|u| <[u8; 32]>::try_from(u).ok())
        else {
            return;
        };
        let verified = kith_protocol::decode::<UserRecord>(&record.value)
            .ok()
            .filter(|r| verify_record(r, &UserId(user), now_millis()).is_ok());
        let valid = verified.is_some_and(|new| {
            let store = self.swarm.behaviour_mut().kad.store_mut();
            // A stored record was verified when it was put; one that no longer decodes is
            // replaced.
            store
                .get(&record.key)
                .and_then(|stored| kith_protocol::decode::<UserRecord>(&stored.value).ok())
                .is_none_or(|stored| supersedes(&new, &stored))
        });
        if valid {
            if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                tracing::warn!("DHT store full: {e}");
            }
        } else {
            tracing::debug!("refused an invalid user record put");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}");
                if reachability::is_public(&address) {
                    // Reachable from the Internet: Kademlia serves the DHT from now on.
                    self.swarm.add_external_address(address.clone());
                }
                self.listen_addrs.push(address.clone());
                self.emit(NodeEvent::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
                self.listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ConnectionEstablished { peer_id, num_established, .. } => {
                if num_established.get() == 1 {
                    self.emit(NodeEvent::PeerConnected(peer_id));
                }
                if let Ok(user) = user_id_of(&peer_id) {
                    self.input(Input::PeerReachable { user });
                }
                if num_established.get() == 1 {
                    self.on_relay_connected(peer_id);
                    self.media_peer_connected(peer_id);
                }
                self.count_peers();
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.emit(NodeEvent::PeerDisconnected(peer_id));
                self.count_peers();
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Envelope(event) => self.on_envelope_event(event),
            BehaviourEvent::Prekey(event) => self.on_prekey_event(event),
            BehaviourEvent::Mailbox(event) => self.on_mailbox_event(event),
            BehaviourEvent::Media(event) => self.on_media_event(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if info.protocols.contains(&KAD_PROTOCOL) =>
            {
                for address in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, address);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, address) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
                    self.swarm.add_peer_address(peer, address);
                    if let Ok(user) = user_id_of(&peer) {
                        self.input(Input::PeerReachable { user });
                    }
                }
            }
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Gossipsub(event) => self.on_gossip_event(event),
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { record: Some(record), .. },
            } => {
                self.validate_put(record);
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
                kad::QueryResult::GetClosestPeers(Ok(ok)) => {
                    if self.mailboxes.is_keyspace_query(&id) {
                        self.on_keyspace_peers(id, ok.peers);
                        return;
                    }
                    let Ok(target) = PeerId::from_bytes(&ok.key) else { return };
                    if let Some(found) = ok.peers.into_iter().find(|p| p.peer_id == target) {
                        for address in found.addrs {
                            self.swarm.add_peer_address(target, address);
                        }
                        let _ = self.swarm.dial(target);
                    }
                }
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                    let Some(user) = self.record_gets.get(&id).copied() else { return };
                    let record = kith_protocol::decode::<UserRecord>(&found.record.value).ok();
                    let bundle = record.as_ref().and_then(|r| {
                        verify_record(r, &user, now_millis()).ok().map(|b| (b, &r.relays))
                    });
                    if let Some((bundle, relays)) = bundle {
                        // Signed by the user: their relays for the fallback.
                        let relays = relays
                            .iter()
                            .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
                            .collect();
                        self.mailboxes.remember_relays(user, relays);
                        self.record_gets.remove(&id);
                        self.input(Input::PreKeyBundle { user, result: Ok(Box::new(bundle)) });
                    }
                }
                kad::QueryResult::GetClosestPeers(Err(kad::GetClosestPeersError::Timeout {
                    peers,
                    ..
                })) => {
                    self.on_keyspace_peers(id, peers);
                }
                kad::QueryResult::GetRecord(_) if step.last => {
                    self.record_gets.remove(&id);
                }
                kad::QueryResult::PutRecord(Ok(_)) => {
                    self.record_due = Instant::now() + RECORD_REPUBLISH;
                }
                kad::QueryResult::PutRecord(Err(e)) => {
                    tracing::debug!("publishing our user record failed: {e}");
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_envelope_event(&mut self, event: request_response::Event<EnvelopeBatch, DeliveryAcks>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: EnvelopeBatch { envelopes },
                    channel,
                    ..
                } => self.on_envelope_batch(peer, envelopes, channel),
                request_response::Message::Response { request_id, response } => {
                    if let Some(ids) = self.deliveries.remove(&request_id) {
                        let mut acks = response.acks.into_iter();
                        for id in ids {
                            let ack = acks.next();
                            let Some(id) = id else { continue };
                            match ack {
                                Some(ack) => {
                                    self.attempt_answered(&id);
                                    self.input(Input::Delivery {
                                        id,
                                        result: DeliveryResult::Acked(ack.result),
                                    });
                                }
                                // Left unanswered by the peer: as if it had not arrived.
                                None => self.fall_back(id),
                            }
                        }
                    }
                    self.envelope_done(peer, true);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                // Unreachable or too slow: the recipients' relays take the batch.
                for id in self.deliveries.remove(&request_id).into_iter().flatten().flatten() {
                    self.fall_back(id);
                }
                // A peer that answered slowly is still there; one we cannot reach is not.
                self.envelope_done(peer, matches!(error, OutboundFailure::Timeout));
                if matches!(error, OutboundFailure::DialFailure) {
                    self.lookup(peer);
                }
            }
            _ => {}
        }
    }

    /// Hands each envelope of a batch to the engine; the batch is answered once the engine has
    /// answered every one, after the turn's flush. Envelopes over the peer's rate are refused
    /// at once, and so is a batch from a peer that is not a Kith user.
    fn on_envelope_batch(
        &mut self,
        peer: PeerId,
        envelopes: Vec<ByteBuf>,
        channel: ResponseChannel<DeliveryAcks>,
    ) {
        let refuse =
            |reason| DeliveryAck { id: MessageId([0; 16]), result: AckResult::Rejected(reason) };
        let Ok(user) = user_id_of(&peer) else {
            let acks = envelopes.iter().map(|_| refuse(RejectReason::SenderMismatch)).collect();
            let _ =
                self.swarm.behaviour_mut().envelope.send_response(channel, DeliveryAcks { acks });
            return;
        };
        let now = Instant::now();
        let admitted: Vec<bool> =
            envelopes.iter().map(|_| self.envelope_limiter.allow(peer, now)).collect();
        // Over the peer's rate: answered at once; the others wait for the engine (`None`).
        let acks: Vec<Option<DeliveryAck>> = admitted
            .iter()
            .map(|&ok| if ok { None } else { Some(refuse(RejectReason::RateLimited)) })
            .collect();
        let missing = admitted.iter().filter(|&&ok| ok).count();
        let key = self.token();
        self.inbound_batches.insert(key, InboundBatch { channel, acks, missing });
        for (index, (bytes, ok)) in envelopes.into_iter().zip(admitted).enumerate() {
            if ok {
                let token = self.token();
                self.envelope_tokens.insert(token, (key, index));
                self.input(Input::Envelope {
                    bytes: bytes.into_vec(),
                    via: Via::Direct(user),
                    reply: Some(ReplyToken(token)),
                });
            }
        }
        if missing == 0 {
            self.answer_batch(key);
        }
    }

    /// The engine answered for one envelope of a batch; a batch answered in full is sent.
    fn envelope_answered(&mut self, token: u64, ack: DeliveryAck) {
        let Some((key, index)) = self.envelope_tokens.remove(&token) else { return };
        let Some(batch) = self.inbound_batches.get_mut(&key) else { return };
        if let Some(slot @ None) = batch.acks.get_mut(index) {
            *slot = Some(ack);
            batch.missing -= 1;
        }
        if batch.missing == 0 {
            self.answer_batch(key);
        }
    }

    fn answer_batch(&mut self, key: u64) {
        let Some(batch) = self.inbound_batches.remove(&key) else { return };
        let acks = batch.acks.into_iter().flatten().collect();
        // The requester may have gone; nothing to do then.
        let _ =
            self.swarm.behaviour_mut().envelope.send_response(batch.channel, DeliveryAcks { acks });
    }

    fn on_prekey_event(&mut self, event: request_response::Event<PreKeyRequest, PreKeyResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let answer = match request {
                        PreKeyRequest::Fetch { user } if user == self.user => {
                            if self.prekey_limiter.allow(peer, Instant::now()) {
                                let token = self.token();
                                self.prekey_replies.insert(token, channel);
                                self.input(Input::PreKeyRequest { reply: ReplyToken(token) });
                                return;
                            }
                            PreKeyResponse::Refused(PreKeyRefusal::RateLimited)
                        }
                        PreKeyRequest::Fetch { user } => match self.relay.as_mut() {
                            // Hands out a one-time prekey: answered after the flush.
                            Some(relay) => {
                                let response = relay.bundle(&user);
                                self.mailboxes
                                    .after_flush
                                    .push(NetAction::PreKeyReply(channel, response));
                                return;
                            }
                            None => PreKeyResponse::NotFound,
                        },
                        PreKeyRequest::Upload(upload) => match self.relay.as_mut() {
                            Some(relay) => {
                                let response = relay.upload_prekeys(&peer, *upload, now_millis());
                                self.mailboxes
                                    .after_flush
                                    .push(NetAction::PreKeyReply(channel, response));
                                return;
                            }
                            None => PreKeyResponse::Refused(PreKeyRefusal::NotARelay),
                        },
                    };
                    let _ = self.swarm.behaviour_mut().prekey.send_response(channel, answer);
                }
                request_response::Message::Response { request_id, response } => {
                    if self.on_upload_answer(request_id, &response) {
                        return;
                    }
                    let Some((user, relays_left)) = self.bundle_fetches.remove(&request_id) else {
                        return;
                    };
                    match response {
                        PreKeyResponse::Bundle(bundle) => {
                            self.input(Input::PreKeyBundle { user, result: Ok(bundle) })
                        }
                        _ => self.bundle_fetch_failed(user, relays_left, FetchError::NotFound),
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if self.upload_failed(&request_id) {
                    return;
                }
                if let Some((user, relays_left)) = self.bundle_fetches.remove(&request_id) {
                    self.bundle_fetch_failed(user, relays_left, FetchError::Unreachable);
                }
                if matches!(error, OutboundFailure::DialFailure) {
                    self.lookup(peer);
                }
            }
            _ => {}
        }
    }

    /// Dials `address` (with `/p2p/<peer>`) and adds it to the DHT routing table.
    pub(crate) fn connect(&mut self, address: Multiaddr) -> Result<(), String> {
        let peer = address.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        });
        if let Some(peer) = peer {
            self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
            self.swarm.add_peer_address(peer, address.clone());
        }
        self.swarm.dial(address).map_err(|e| e.to_string())
    }

    fn count_peers(&self) {
        if let Some(relay) = &self.relay {
            let peers = self.swarm.connected_peers().count();
            relay.metrics.connected_peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
        }
    }

    /// Starts a DHT bootstrap if any peer is known.
    pub(crate) fn bootstrap(&mut self) {
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }
}
