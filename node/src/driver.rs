//! The driver: the one task that owns the swarm, the stores and the clocks, and routes between
//! them and the node's components.
//!
//! Each loop turn waits for one thing (a [`Call`] from a [`crate::Node`] handle, a swarm event,
//! a result of IO done off the task, or the earliest timer), then takes everything else that
//! is already ready (up to [`MAX_TURN_WORK`]), then flushes the stores once — one fsync for
//! the whole turn (group commit) — and only then carries out the engine's outputs, the
//! answers that promise durability, and the callers' replies. An acknowledgement or a "queued"
//! answer therefore always means the data is on disk.
//!
//! The logic lives in the components, each a sans-IO state machine with its own tests:
//! [`DirectDelivery`] (envelopes to and from peers), [`MailboxClient`] (relay fallback,
//! inbox, prekey fetches and uploads), [`Dht`] (records and lookups), [`GroupTransport`]
//! (gossip verdicts), [`Transfers`] (attachments), [`PreKeyServer`], and, on a relay,
//! [`RelayService`]. The driver feeds them events with the time, and carries out the actions
//! they return.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kith_core::engine::{
    CommandError, CommandResult, DeliveryResult, Engine, Input, Output, Reply as EngineReply,
    ReplyToken,
};
use kith_core::identity::{peer_id_of, user_id_of};
use kith_core::record::record_key;
use kith_core::store::{BackendError, StoreError};
use kith_protocol::content::PresenceStatus;
use kith_protocol::direct::{DeliveryAcks, EnvelopeBatch};
use kith_protocol::mailbox::{MailboxRefusal, MailboxRequest, MailboxResponse};
use kith_protocol::media::{MediaRefusal, MediaRequest, MediaResponse};
use kith_protocol::prekey::{PreKeyRefusal, PreKeyRequest, PreKeyResponse, PreKeyUpload};
use kith_protocol::{ChunkHash, MediaId, MessageId, UserId};
use libp2p::core::transport::ListenerId;
use libp2p::kad::store::RecordStore;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, kad, mdns, ping, relay,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::NodeEvent;
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::call::{Call, Reply};
use crate::clock::{Clock, now_millis};
use crate::codec::KAD_PROTOCOL;
use crate::delivery::{DeliveryAction, DirectDelivery};
use crate::dht::{Dht, DhtAction, accept_put};
use crate::error::ConnectError;
use crate::groups::{self, GroupTransport};
use crate::liveness::{DEAD_AFTER, Liveness};
use crate::mailbox::{FETCH_LIMIT, MailboxAction, MailboxClient};
use crate::media::transfers::{MediaAction, Transfers};
use crate::media::{Work, fetch, files};
use crate::prekeys::PreKeyServer;
use crate::presence::Activity;
use crate::profile::ProfileRng;
use crate::redial::Redial;
use crate::relay::RelayUsage;
use crate::relay::{Push, RelayService, SealedPush};
use crate::reservations::{ReservationAction, Reservations};
use crate::storage::StorageHealth;
use crate::upgrades::Upgrades;

/// Most events and calls taken into one turn (one fsync) besides the first, and most engine
/// inputs (each received envelope, command and delivery result counts one). A bigger turn
/// spreads its fsync over more work, but every answer of the turn waits for all of it. Counted
/// in events alone, a turn could take 1,024 batches of 64 envelopes: a burst of sends then
/// held the peer's acknowledgements back for tens of milliseconds while the two nodes took
/// turns at being idle. Bounding the inputs took `cargo bench -p kith-node --bench delivery`
/// from 5,200–6,800 to 7,400–9,100 messages/s; 128, 256 and 1,024 measured the same.
pub const MAX_TURN_WORK: usize = 256;

/// Longest a stopping node waits for its last requests (its goodbye) to be answered.
pub const GOODBYE_WAIT: Duration = Duration::from_millis(500);

/// Most contacts the node dials on start.
pub const MAX_LIVE_CONTACTS: usize = 64;

/// Runs disk work that blocks (an fsync) without stalling the runtime's other tasks (the
/// swarm's connections, an app's own): on a multi-threaded runtime tokio hands them to another
/// worker meanwhile. A current-thread runtime has no other worker; there it simply blocks.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// What waits for the turn's flush: answers that promise durability, and requests carrying
/// state the flush makes durable.
enum Deferred {
    Command(Reply<Result<CommandResult, CommandError>>, Result<CommandResult, CommandError>),
    SendMedia(Reply<Result<MessageId, CommandError>>, Result<MessageId, CommandError>),
    Mailbox(ResponseChannel<MailboxResponse>, MailboxResponse),
    PreKeys(ResponseChannel<PreKeyResponse>, PreKeyResponse),
    Media(ResponseChannel<MediaResponse>, MediaResponse),
    Push(Push),
    SealedPush(SealedPush),
    Upload(PeerId, Box<PreKeyUpload>),
    /// The answer to a read of messages: it shows what the turn's flush makes durable.
    Read(Box<dyn FnOnce() + Send>),
}

/// The parts of the node the driver routes between.
pub(crate) struct Components {
    pub(crate) delivery: DirectDelivery<OutboundRequestId>,
    pub(crate) mailbox: MailboxClient<OutboundRequestId, kad::QueryId>,
    pub(crate) dht: Dht<kad::QueryId>,
    pub(crate) groups: GroupTransport,
    pub(crate) transfers: Transfers<OutboundRequestId>,
    pub(crate) prekeys: PreKeyServer,
    /// The mailbox service, when this node is a relay.
    pub(crate) relay: Option<RelayService>,
    /// Circuit reservations on our home relays.
    pub(crate) reservations: Reservations,
    /// How the node meets the network once its listeners are up.
    pub(crate) reach: Reach,
    /// Relayed connections to close after a hole punch.
    pub(crate) upgrades: Upgrades,
    /// Lost peers dialed again while something waits for them.
    pub(crate) redial: Redial,
    /// Connections closed when they stop answering pings.
    pub(crate) liveness: Liveness,
    /// The user's activity, for the presence the node announces.
    pub(crate) activity: Activity,
    /// Whether the profile's database takes commits.
    pub(crate) storage: StorageHealth,
}

/// How the node meets the network once its listeners are up (dials leave from the listen
/// port only then, so that the address a relay observes is one a peer can punch to).
pub(crate) struct Reach {
    /// Bootstrap peers to dial.
    pub(crate) bootstrap: Vec<Multiaddr>,
    /// Addresses we are reachable at that we cannot see ourselves.
    pub(crate) external: Vec<Multiaddr>,
    /// Serve the DHT whatever our reachability.
    pub(crate) dht_server: bool,
    /// A relay given no external address announces its listen addresses.
    pub(crate) announce_listen: bool,
    /// Listeners not up yet; the node starts when this is empty.
    pub(crate) waiting: HashSet<ListenerId>,
    /// Tell contacts we are online, then offline when we stop.
    pub(crate) announce_presence: bool,
}

/// One open connection, as [`crate::Node::connections`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Connection {
    /// The peer.
    pub peer: PeerId,
    /// The peer's address on this connection.
    pub address: Multiaddr,
    /// Whether it goes through a relay (`/p2p-circuit`) rather than directly.
    pub relayed: bool,
    /// The round trip of the last ping answered on it (a bare libp2p request and response:
    /// the floor of any exchange on this path), once one was.
    pub rtt: Option<Duration>,
}

pub(crate) struct Driver {
    engine: Engine<ProfileRng>,
    swarm: Swarm<Behaviour>,
    clock: Clock,
    user: UserId,
    listen_addrs: Vec<Multiaddr>,
    c: Components,
    calls: mpsc::Receiver<Call>,
    events: broadcast::Sender<NodeEvent>,
    /// Inbound envelope batches waiting for their answers.
    batches: HashMap<u64, ResponseChannel<DeliveryAcks>>,
    /// Relays' pushes waiting for their answers.
    pushed: HashMap<u64, ResponseChannel<MailboxResponse>>,
    next_push: u64,
    /// Prekey fetches waiting for the engine's bundle.
    prekey_replies: HashMap<ReplyToken, ResponseChannel<PreKeyResponse>>,
    /// Our pushes to recipients, as a relay.
    pushes: HashSet<OutboundRequestId>,
    /// The access verifiers each home relay was last sent (sealed sender).
    access_sent: HashMap<PeerId, Vec<kith_protocol::mailbox::AccessVerifier>>,
    /// Contacts changed this turn: the verifiers may have too.
    access_dirty: bool,
    /// Opens fetch streams.
    control: libp2p_stream::Control,
    /// Open fetch streams: (attachment, source) → its request queue.
    sessions: HashMap<(MediaId, usize), mpsc::Sender<(u32, ChunkHash)>>,
    /// Running download writers.
    writers: HashMap<MediaId, std::sync::mpsc::SyncSender<files::Incoming>>,
    /// Who waits to learn whether a user's record is in the DHT.
    finding: HashMap<UserId, Vec<Reply<bool>>>,
    work_tx: mpsc::Sender<Work>,
    work_rx: mpsc::Receiver<Work>,
    deferred: Vec<Deferred>,
    stopping: Option<Reply<()>>,
    /// Engine inputs and commands taken into this turn (bounded by [`MAX_TURN_WORK`]).
    turn_inputs: usize,
    /// Whether the node has started (its listeners are up).
    started: bool,
    /// Open connections.
    /// Open connections, by peer (a delivery asks whether a peer's are all relayed).
    connections: HashMap<PeerId, HashMap<ConnectionId, Connection>>,
}

impl Driver {
    pub(crate) fn new(
        engine: Engine<ProfileRng>,
        swarm: Swarm<Behaviour>,
        clock: Clock,
        components: Components,
        calls: mpsc::Receiver<Call>,
        events: broadcast::Sender<NodeEvent>,
        work: (mpsc::Sender<Work>, mpsc::Receiver<Work>),
    ) -> Self {
        let user = engine.user_id();
        let control = swarm.behaviour().stream.new_control();
        Self {
            engine,
            swarm,
            clock,
            user,
            listen_addrs: Vec::new(),
            c: components,
            calls,
            events,
            batches: HashMap::new(),
            pushed: HashMap::new(),
            next_push: 0,
            prekey_replies: HashMap::new(),
            pushes: HashSet::new(),
            access_sent: HashMap::new(),
            access_dirty: true,
            control,
            sessions: HashMap::new(),
            writers: HashMap::new(),
            finding: HashMap::new(),
            work_tx: work.0,
            work_rx: work.1,
            deferred: Vec::new(),
            stopping: None,
            turn_inputs: 0,
            started: false,
            connections: HashMap::new(),
        }
    }

    /// Dials `address` (with `/p2p/<peer>`) and adds it to the DHT routing table.
    pub(crate) fn connect(&mut self, address: Multiaddr) -> Result<(), ConnectError> {
        if let Some(peer) = crate::mailbox::peer_of(&address) {
            self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
            self.swarm.add_peer_address(peer, address.clone());
        }
        self.swarm.dial(address).map_err(ConnectError::Dial)
    }

    /// Starts what runs from the beginning once the listeners are up (at once if there are
    /// none): dials to the bootstrap peers and our relays, the DHT bootstrap, the reservations,
    /// the downloads and uploads a previous run left.
    fn start(&mut self) {
        if self.started || !self.c.reach.waiting.is_empty() {
            return;
        }
        self.started = true;
        for address in std::mem::take(&mut self.c.reach.external) {
            self.swarm.add_external_address(address);
        }
        for address in std::mem::take(&mut self.c.reach.bootstrap) {
            if let Err(e) = self.connect(address.clone()) {
                tracing::warn!("could not dial bootstrap peer {address}: {e}");
            }
        }
        self.c.reservations.handle_timeout(self.clock.instant());
        self.set_presence(PresenceStatus::Online);
        self.dial_contacts();
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
        let now = self.clock.instant();
        self.c.mailbox.start(now);
        self.c.transfers.resume_uploads();
        self.start_downloads();
        self.drain();
    }

    pub(crate) async fn run(mut self) {
        self.start();
        loop {
            let timer = self.next_deadline();
            tokio::select! {
                call = self.calls.recv() => match call {
                    Some(call) => self.on_call(call),
                    // Every handle is gone: stop.
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(work) = self.work_rx.recv() => self.on_work(work),
                () = tokio::time::sleep_until(timer) => self.on_timer(),
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
                } else if let Ok(work) = self.work_rx.try_recv() {
                    self.on_work(work);
                } else {
                    break;
                }
            }
            self.flush_and_act();
            self.turn_inputs = 0;
            if let Some(done) = self.stopping.take() {
                self.goodbye().await;
                let _ = done.send(());
                break;
            }
        }
        if let Err(e) = self.engine.flush() {
            tracing::error!("final flush failed: {e}");
        }
    }

    /// Sets our presence, if the node announces it (each contact is told when it connects).
    fn set_presence(&mut self, status: PresenceStatus) {
        if !self.c.reach.announce_presence {
            return;
        }
        let now = self.clock.engine(self.clock.instant());
        let command = kith_core::engine::Command::SetPresence { status };
        if let Err(e) = self.engine.handle_command(now, command) {
            tracing::warn!("could not set our presence: {e}");
        }
    }

    /// Lets the last turn's requests (the "offline" presence among them) reach their peers
    /// before the swarm goes, for at most [`GOODBYE_WAIT`].
    async fn goodbye(&mut self) {
        let deadline = self.clock.instant() + GOODBYE_WAIT;
        while !self.c.delivery.is_idle() {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Where this device can be dialed, for our user record: confirmed direct addresses and
    /// our circuits through the relays that hold a reservation for us (never a listen address
    /// nobody confirmed reachable, such as a LAN address behind NAT).
    fn our_addresses(&self) -> kith_protocol::prekey::DeviceAddresses {
        let bytes = |a: &Multiaddr| serde_bytes::ByteBuf::from(a.to_vec());
        let limit = kith_protocol::limits::MAX_DEVICE_ADDRS;
        let direct =
            self.swarm.external_addresses().filter(|a| !is_relayed(a)).take(limit).map(bytes);
        let circuits = self.listen_addrs.iter().filter(|a| is_relayed(a)).take(limit).map(bytes);
        kith_protocol::prekey::DeviceAddresses {
            peer: serde_bytes::ByteBuf::from(self.swarm.local_peer_id().to_bytes()),
            direct: direct.collect(),
            circuits: circuits.collect(),
        }
    }

    /// Whether every connection to `peer` goes through a relay (and there is one).
    fn relayed_only(&self, peer: &PeerId) -> bool {
        self.connections.get(peer).is_some_and(|c| c.values().all(|c| c.relayed))
    }

    /// Live connections to the people we talk to: dials our contacts (through their relays'
    /// circuits when they are behind NAT), the most recently seen first, at most
    /// [`MAX_LIVE_CONTACTS`]. Queued messages to them then leave as soon as each connects.
    /// Runs on start and whenever a relay accepts a new reservation of ours.
    fn dial_contacts(&mut self) {
        let mut contacts = match self.engine.contacts() {
            Ok(contacts) => contacts,
            Err(e) => {
                tracing::error!("could not read the contacts to connect to: {e}");
                return;
            }
        };
        contacts.retain(|c| !c.blocked && c.name.is_some());
        contacts.sort_by_key(|c| std::cmp::Reverse(c.last_seen.unwrap_or(c.added_at)));
        let now = self.clock.instant();
        for contact in contacts.into_iter().take(MAX_LIVE_CONTACTS) {
            let Ok(peer) = peer_id_of(&contact.user) else { continue };
            if self.swarm.is_connected(&peer) {
                continue;
            }
            self.swarm.behaviour_mut().addresses.set_relays(peer, &contact.relays);
            if self.swarm.dial(peer).is_err() {
                self.c.dht.lookup(peer, now);
            }
        }
    }

    /// Kademlia serves the DHT when asked to, or once a direct (not relayed) address of ours
    /// is confirmed reachable; a node reachable only through relays stays a client.
    fn update_dht_mode(&mut self) {
        let direct = self.swarm.external_addresses().any(|a| !is_relayed(a));
        let mode =
            if self.c.reach.dht_server || direct { kad::Mode::Server } else { kad::Mode::Client };
        self.swarm.behaviour_mut().kad.set_mode(Some(mode));
    }

    fn next_deadline(&self) -> Instant {
        let engine = self.engine.poll_timeout().map(|mono| self.clock.deadline(mono));
        [
            engine,
            Some(self.c.dht.poll_timeout()),
            self.c.mailbox.poll_timeout(),
            self.c.relay.as_ref().map(RelayService::next_deadline),
            self.c.transfers.poll_timeout(),
            self.c.reservations.poll_timeout(),
            self.c.upgrades.poll_timeout(),
            self.c.redial.poll_timeout(),
            self.c.liveness.poll_timeout(),
            self.c.reach.announce_presence.then(|| self.c.activity.poll_timeout()).flatten(),
            self.c.storage.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| self.clock.instant() + Duration::from_secs(3600))
    }

    fn input(&mut self, input: Input) {
        self.turn_inputs += 1;
        let now = self.clock.engine(self.clock.instant());
        if let Err(e) = self.engine.handle_input(now, input) {
            tracing::error!("store failure while handling network input: {e}");
        }
    }

    /// Answers a read of messages after the turn's flush, so that it shows nothing a power cut
    /// could still take back (while commits fail, not before they succeed again).
    fn answer_read(&mut self, answer: impl FnOnce() + Send + 'static) {
        self.deferred.push(Deferred::Read(Box::new(answer)));
    }

    fn emit(&self, event: NodeEvent) {
        // No subscriber is fine; a lagging one is told by its receiver.
        let _ = self.events.send(event);
    }

    /// Our relays, as download sources.
    fn relays(&self) -> Vec<(PeerId, Multiaddr)> {
        self.c.mailbox.ours()
    }

    /// The relays a contact string gave for `user`.
    fn given_relays(&self, user: &UserId) -> Vec<String> {
        self.engine.contact(user).ok().flatten().map(|c| c.relays).unwrap_or_default()
    }

    // ------------------------------------------------------------------ calls

    fn on_call(&mut self, call: Call) {
        let now = self.clock.engine(self.clock.instant());
        match call {
            Call::Command(command, reply) => {
                self.turn_inputs += 1;
                // Anything the user does but setting presence themselves shows them online.
                if !matches!(command, kith_core::engine::Command::SetPresence { .. })
                    && let Some(status) = self.c.activity.active(self.clock.instant())
                {
                    self.set_presence(status);
                }
                let result = self.engine.handle_command(now, command);
                self.deferred.push(Deferred::Command(reply, result));
            }
            Call::SendMedia { to, manifest, source, reply } => {
                self.turn_inputs += 1;
                let result = self.send_media(to, *manifest, source);
                self.deferred.push(Deferred::SendMedia(reply, result));
            }
            Call::MediaSettings(reply) => {
                let t = &self.c.transfers;
                let _ = reply.send((t.sealed_dir().to_owned(), t.max_bytes()));
            }
            Call::Attachments(peer, reply) => {
                let _ = reply.send(self.c.transfers.list(peer));
            }
            Call::FindUser(user, reply) => {
                if peer_id_of(&user).is_ok_and(|peer| self.swarm.is_connected(&peer)) {
                    let _ = reply.send(true);
                    return;
                }
                // Whoever stopped waiting (a lookup that never started: too many under way)
                // is forgotten.
                self.finding.retain(|_, waiting| {
                    waiting.retain(|r| !r.is_closed());
                    !waiting.is_empty()
                });
                self.finding.entry(user).or_default().push(reply);
                self.c.dht.fetch(user);
            }
            Call::RelayUsage(reply) => {
                let usage = self.c.relay.as_ref().map(|r| {
                    let (envelopes, bytes, prekey_users) = r.stored();
                    RelayUsage {
                        envelopes,
                        bytes,
                        prekey_users,
                        blob_bytes: r.blob_bytes(),
                        blobs_served: r.metrics.blobs_served.get(),
                        fetches_answered: r.metrics.fetches.get(),
                        disk_bytes: r.size_on_disk().unwrap_or(0),
                        access_verifiers: r.access_verifiers(),
                    }
                });
                let _ = reply.send(usage);
            }
            Call::Groups(reply) => {
                let _ = reply.send(self.engine.groups());
            }
            Call::Group(id, reply) => {
                let _ = reply.send(self.engine.group(&id));
            }
            Call::GroupHistory { group, before, limit, reply } => {
                let history = self.engine.group_history(&group, before, limit);
                // The caller may have gone.
                self.answer_read(move || drop(reply.send(history)));
            }
            Call::PendingGroupMessages(group, reply) => {
                let _ = reply.send(self.engine.pending_group_messages(&group));
            }
            #[cfg(feature = "test-utils")]
            Call::GossipScore(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            #[cfg(feature = "test-utils")]
            Call::DeliveriesInFlight(reply) => {
                let _ = reply.send(self.c.delivery.in_flight() + self.c.mailbox.deposits_pending());
            }
            Call::DisappearingTimer(user, reply) => {
                let _ = reply.send(self.engine.disappearing_timer(&user));
            }
            Call::GroupDisappearingTimer(group, reply) => {
                let _ = reply.send(self.engine.group_disappearing_timer(&group));
            }
            Call::Contacts(reply) => {
                let _ = reply.send(self.engine.contacts());
            }
            Call::Contact(user, reply) => {
                let _ = reply.send(self.engine.contact(&user));
            }
            Call::ContactByName(name, reply) => {
                let _ = reply.send(self.engine.contact_by_name(&name));
            }
            Call::History { peer, before, limit, reply } => {
                let history = self.engine.history(&peer, before, limit);
                // The caller may have gone.
                self.answer_read(move || drop(reply.send(history)));
            }
            Call::Message(id, reply) => {
                let message = self.engine.message(&id);
                // The caller may have gone.
                self.answer_read(move || drop(reply.send(message)));
            }
            Call::SafetyNumber(peer, reply) => {
                let _ = reply.send(self.engine.safety_number(&peer));
            }
            Call::ProfileName(reply) => {
                let _ = reply.send(self.engine.store().profile_name());
            }
            Call::OutboxLen(reply) => {
                let _ = reply.send(self.engine.outbox_len());
            }
            Call::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Call::Connections(reply) => {
                let all = self.connections.values().flat_map(|c| c.values().cloned()).collect();
                let _ = reply.send(all);
            }
            Call::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Call::IsConnected(peer, reply) => {
                let _ = reply.send(self.swarm.is_connected(&peer));
            }
            Call::Connect(address, reply) => {
                let _ = reply.send(self.connect(address));
            }
            #[cfg(feature = "test-utils")]
            Call::Dump(reply) => {
                let _ = reply.send(self.engine.store().dump());
            }
            Call::Database(reply) => {
                let _ = reply.send(self.engine.store().side());
            }
            Call::Shutdown(done) => {
                // Receipts owed go into the outbox now, durable, rather than wait for a
                // timer that will not fire.
                self.engine.release_receipts();
                self.set_presence(PresenceStatus::Offline);
                self.stopping = Some(done);
            }
        }
        self.drain();
    }

    /// Queues an attachment's manifest (sealed already) and records the attachment; both
    /// durable after the flush.
    fn send_media(
        &mut self,
        to: crate::call::MediaRecipient,
        manifest: kith_protocol::content::MediaManifest,
        source: std::path::PathBuf,
    ) -> Result<MessageId, CommandError> {
        use crate::call::MediaRecipient;
        let now = self.clock.engine(self.clock.instant());
        let sealed = self.c.transfers.sealed_dir().join(manifest.media_id.to_string());
        let boxed = Box::new(manifest.clone());
        let (command, user, group) = match to {
            MediaRecipient::User(user) => {
                (kith_core::engine::Command::SendMedia { to: user, manifest: boxed }, user, None)
            }
            MediaRecipient::Group(group) => {
                let command = kith_core::engine::GroupCommand::SendMedia { manifest: boxed };
                let me = self.engine.user_id();
                (kith_core::engine::Command::Group { group, command }, me, Some(group))
            }
        };
        let message = match self.engine.handle_command(now, command) {
            Ok(CommandResult::Queued(id)) => id,
            Ok(other) => {
                return Err(CommandError::InvalidMessage(format!(
                    "attachment not queued: {other:?}"
                )));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&sealed);
                return Err(e);
            }
        };
        self.c
            .transfers
            .sent(message, user, group, &manifest, source, now.wall)
            .map_err(|e| CommandError::Store(StoreError::Backend(BackendError::new(e))))?;
        Ok(message)
    }

    // ------------------------------------------------------------------ timers

    fn on_timer(&mut self) {
        self.input(Input::Timeout);
        let now = self.clock.instant();
        self.c.dht.handle_timeout(now);
        self.c.mailbox.handle_timeout(now);
        if let Some(relay) = self.c.relay.as_mut() {
            relay.maintain(now_millis(), now);
        }
        let relays = self.relays();
        self.c.transfers.handle_timeout(&relays, now);
        if self.started {
            self.c.reservations.handle_timeout(now);
        }
        if let Some(status) = self.c.activity.handle_timeout(now) {
            self.set_presence(status);
        }
        let engine = &self.engine;
        let wanted = |peer: &PeerId| user_id_of(peer).is_ok_and(|u| engine.queued_for(&u) > 0);
        for peer in self.c.redial.due(now, wanted) {
            // A fresh dial even while an older one is pending: a dial started during the
            // outage retransmits its SYN ever more slowly (1, 3, 7, 15, 31, 63 s), so it
            // could reach the healed link half a minute late. The bounded schedule of
            // `redial` bounds these sockets.
            let opts = DialOpts::peer_id(peer).condition(PeerCondition::Disconnected).build();
            let _ = self.swarm.dial(opts);
        }
        for connection in self.c.liveness.dead(now) {
            tracing::info!("a connection has not answered a ping for {DEAD_AFTER:?}: closing it");
            self.swarm.close_connection(connection);
        }
        for peer in self.c.upgrades.due(now) {
            let Some(to_peer) = self.connections.get(&peer) else { continue };
            let relayed: Vec<ConnectionId> =
                to_peer.iter().filter(|(_, c)| c.relayed).map(|(id, _)| *id).collect();
            // Only while the direct connection is still there.
            if relayed.len() < to_peer.len() {
                for id in relayed {
                    self.swarm.close_connection(id);
                }
            }
        }
        self.drain();
    }

    // ------------------------------------------------------------------ the turn's end

    /// Flushes the turn (one fsync), then carries out the engine's outputs and answers callers.
    fn flush_and_act(&mut self) {
        // Gossip verdicts promise nothing about our state: a valid message is forwarded
        // without waiting for our fsync. Everything else waits for the flush below.
        for (token, verdict) in self.engine.take_verdicts() {
            self.report(token, verdict);
        }
        // So are statuses a peer's durable acknowledgement gave (Sent).
        for event in self.engine.take_early_events() {
            self.emit(NodeEvent::Engine(event));
        }
        if !blocking(|| self.flush_stores()) {
            // Outputs stay held until a flush succeeds: nothing is promised that is not on disk.
            return;
        }
        // Acting may feed the engine: what that produces leaves in this turn too.
        crate::turn::settle(self);
        // The turn's deliveries, batched per peer.
        self.c.delivery.end_turn();
        self.start_downloads();
        self.drain();
        for deferred in std::mem::take(&mut self.deferred) {
            self.carry_out(deferred);
        }
        if std::mem::take(&mut self.access_dirty) {
            for relay in self.c.mailbox.home_relays() {
                if self.swarm.is_connected(&relay) {
                    self.send_access(relay, false);
                }
            }
        }
        self.drain();
    }

    /// Makes the turn's writes durable, in one commit of the profile's database: the
    /// engine's, the relay service's and the attachment records'.
    fn flush_stores(&mut self) -> bool {
        let flushed = self.flush_engine().is_ok();
        if flushed {
            self.c.transfers.flushed();
        }
        flushed
    }

    /// Flushes the engine (the whole database), telling the storage health how it went.
    fn flush_engine(&mut self) -> Result<(), StoreError> {
        let result = self.engine.flush();
        let now = self.clock.instant();
        let change = match &result {
            Ok(()) => self.c.storage.flushed(now),
            Err(e) => self.c.storage.failed(now, e),
        };
        if let Some(event) = change {
            self.emit(event);
        }
        result
    }

    fn carry_out(&mut self, deferred: Deferred) {
        let behaviour = self.swarm.behaviour_mut();
        match deferred {
            Deferred::Command(reply, result) => {
                let _ = reply.send(result);
            }
            Deferred::SendMedia(reply, result) => {
                let _ = reply.send(result);
            }
            Deferred::Mailbox(channel, response) => {
                let _ = behaviour.mailbox.send_response(channel, response);
            }
            Deferred::PreKeys(channel, response) => {
                let _ = behaviour.prekey.send_response(channel, response);
            }
            Deferred::Media(channel, response) => {
                let _ = behaviour.media.send_response(channel, response);
            }
            Deferred::Push(push) => {
                let Ok(peer) = peer_id_of(&push.recipient) else { return };
                if self.swarm.is_connected(&peer) {
                    let request = self
                        .swarm
                        .behaviour_mut()
                        .mailbox
                        .send_request(&peer, MailboxRequest::Push { envelopes: push.envelopes });
                    self.pushes.insert(request);
                }
            }
            Deferred::SealedPush(push) => {
                let Ok(peer) = peer_id_of(&push.recipient) else { return };
                if self.swarm.is_connected(&peer) {
                    let request = MailboxRequest::SealedPush { envelopes: push.envelopes };
                    let request = self.swarm.behaviour_mut().mailbox.send_request(&peer, request);
                    self.pushes.insert(request);
                }
            }
            Deferred::Upload(relay, upload) => {
                let request = behaviour.prekey.send_request(&relay, PreKeyRequest::Upload(upload));
                self.c.mailbox.upload_sent(request, relay);
            }
            Deferred::Read(answer) => answer(),
        }
    }

    /// Starts the downloads whose records are durable now.
    fn start_downloads(&mut self) {
        let now = self.clock.instant();
        let relays = self.relays();
        for media in self.c.transfers.take_starting() {
            let partial = files::partial_path(self.c.transfers.downloads_dir(), &media);
            let exists = partial.exists();
            if let Err(e) = self.c.transfers.start_download(media, exists, &relays, now) {
                tracing::error!("could not start a download: {e}");
            }
        }
    }

    // ------------------------------------------------------------------ engine outputs

    fn act(&mut self, output: Output) {
        match output {
            Output::Deliver(delivery) => {
                let Ok(peer) = peer_id_of(&delivery.to) else {
                    let result = DeliveryResult::Unreachable;
                    self.input(Input::Delivery { id: delivery.id, result });
                    return;
                };
                if !self.swarm.is_connected(&peer) {
                    // Behind NAT, the peer is reached through its relays' circuits.
                    self.swarm.behaviour_mut().addresses.set_relays(peer, &delivery.relays);
                }
                if delivery.ephemeral {
                    let connected = self.swarm.is_connected(&peer);
                    self.c.delivery.deliver_ephemeral(peer, delivery.envelope, connected);
                    return;
                }
                self.c.mailbox.track(
                    delivery.id,
                    delivery.to,
                    &delivery.envelope,
                    &delivery.relays,
                );
                if self.relayed_only(&peer) {
                    // An attachment never crosses a relayed connection (its byte limit is for
                    // text): its chunks go to the recipient's relays, where it fetches them.
                    let relays = delivery.relays.iter().filter_map(|r| r.parse().ok()).collect();
                    self.c.transfers.stored_at(delivery.id, relays);
                }
                self.c.delivery.deliver(peer, delivery.id, delivery.envelope);
            }
            Output::FetchPreKeys { user, .. } => self.c.mailbox.fetch_bundle(user),
            Output::Reply { token, reply: EngineReply::Ack(ack) } => {
                if self.c.delivery.owns(token) {
                    self.c.delivery.engine_answered(token, ack);
                } else if self.c.mailbox.owns(token) {
                    self.c.mailbox.engine_answered(token, &ack);
                }
            }
            Output::Reply { token, reply: EngineReply::PreKeys(response) } => {
                if let Some(channel) = self.prekey_replies.remove(&token) {
                    let _ = self.swarm.behaviour_mut().prekey.send_response(channel, response);
                }
            }
            Output::Publish(publication) => self.publish(publication),
            Output::Subscribe { tag, members } => self.subscribe(tag, &members),
            Output::Unsubscribe { tag } => {
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&groups::topic(&tag));
            }
            Output::Validation { token, verdict } => self.report(token, verdict),
            Output::Event(event) => {
                if matches!(event, kith_core::engine::Event::ContactChanged(_)) {
                    self.access_dirty = true;
                }
                self.emit(NodeEvent::Engine(event))
            }
            // `Output` is non-exhaustive; this node carries out every output its kith-core
            // version has.
            other => tracing::error!("an engine output this node cannot carry out: {other:?}"),
        }
    }

    /// Joins a group's topic and connects to its members so that a mesh can form.
    fn subscribe(&mut self, tag: kith_protocol::GroupTag, members: &[UserId]) {
        let topic = groups::topic(&tag);
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        if let Err(e) = gossip.subscribe(&topic) {
            tracing::error!("could not subscribe to a group topic: {e}");
        }
        if let Err(e) = gossip.set_topic_params(topic, groups::topic_params()) {
            tracing::error!("could not set a group topic's scoring: {e}");
        }
        let now = self.clock.instant();
        for member in members {
            let Ok(peer) = peer_id_of(member) else { continue };
            if self.swarm.is_connected(&peer) {
                continue;
            }
            let relays = self.given_relays(member);
            self.swarm.behaviour_mut().addresses.set_relays(peer, &relays);
            if self.swarm.dial(peer).is_err() {
                self.c.dht.lookup(peer, now);
            }
        }
    }

    /// Publishes a group message and tells the engine which members it did not reach.
    fn publish(&mut self, publication: kith_core::engine::Publication) {
        let topic = groups::topic(&publication.tag);
        let hash = topic.hash();
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        let listening: Vec<PeerId> = gossip
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(peer, _)| *peer)
            .collect();
        let published = match gossip.publish(topic, publication.envelope) {
            Ok(_) => true,
            Err(
                gossipsub::PublishError::NoPeersSubscribedToTopic
                | gossipsub::PublishError::AllQueuesFull(_),
            ) => false,
            Err(e) => {
                tracing::warn!("publishing a group message failed: {e}");
                false
            }
        };
        if publication.ephemeral {
            return;
        }
        let unreached = groups::unreached(publication.members, published, &listening);
        self.input(Input::GroupPublished { id: publication.id, unreached });
    }

    /// Reports the engine's verdict on a gossip message to gossipsub.
    fn report(
        &mut self,
        token: kith_core::engine::ValidationToken,
        verdict: kith_core::engine::Verdict,
    ) {
        let Some(report) = self.c.groups.verdict(token, verdict) else { return };
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        if let Some(score) = report.app_score {
            gossip.set_application_score(&report.source, score);
        }
        gossip.report_message_validation_result(&report.id, &report.source, report.acceptance);
    }

    // ------------------------------------------------------------------ component actions

    /// Carries out what the components asked for, until none asks for more.
    fn drain(&mut self) {
        loop {
            let mut busy = false;
            while let Some(action) = self.c.delivery.poll_action() {
                busy = true;
                self.on_delivery_action(action);
            }
            while let Some(action) = self.c.mailbox.poll_action() {
                busy = true;
                self.on_mailbox_action(action);
            }
            while let Some(action) = self.c.dht.poll_action() {
                busy = true;
                self.on_dht_action(action);
            }
            while let Some(action) = self.c.transfers.poll_action() {
                busy = true;
                self.on_media_action(action);
            }
            while let Some(ReservationAction::Listen { relay, address }) =
                self.c.reservations.poll_action()
            {
                busy = true;
                let listener = match self.swarm.listen_on(address.clone()) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!("could not ask relay {address} for a reservation: {e}");
                        None
                    }
                };
                self.c.reservations.started(relay, listener, self.clock.instant());
            }
            if !busy {
                return;
            }
        }
    }

    fn on_delivery_action(&mut self, action: DeliveryAction) {
        match action {
            DeliveryAction::Send { peer, envelopes, ids } => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .envelope
                    .send_request(&peer, EnvelopeBatch { envelopes });
                self.c.delivery.sent(request, peer, ids);
            }
            DeliveryAction::Engine(input) => {
                if let Input::Delivery { id, result: DeliveryResult::Acked(_) } = &input {
                    self.c.mailbox.answered(id);
                }
                self.input(input);
            }
            DeliveryAction::FallBack(id) => self.c.mailbox.fall_back(id),
            DeliveryAction::Answer { batch, acks } => {
                if let Some(channel) = self.batches.remove(&batch) {
                    // The requester may have gone; nothing to do then.
                    let _ = self.swarm.behaviour_mut().envelope.send_response(channel, acks);
                }
            }
            DeliveryAction::Lookup(peer) => {
                let now = self.clock.instant();
                self.c.dht.lookup(peer, now);
            }
        }
    }

    fn on_mailbox_action(&mut self, action: MailboxAction) {
        match action {
            MailboxAction::Engine(input) => self.input(input),
            MailboxAction::AddAddress(peer, address) => self.swarm.add_peer_address(peer, address),
            MailboxAction::Dial(address) => {
                if let Err(e) = self.connect(address.clone()) {
                    tracing::warn!("relay {address}: {e}");
                }
            }
            MailboxAction::Deposit { relay, address, envelopes, ids } => {
                tracing::debug!(
                    "depositing {} sealed envelopes at relay {}: {ids:?}",
                    envelopes.len(),
                    crate::short(&relay)
                );
                // Sealed to each recipient's identity key, with the access key it handed us.
                let mut deposits = Vec::with_capacity(envelopes.len());
                let mut sealed_ids = Vec::with_capacity(ids.len());
                let mut failed = Vec::new();
                for (id, envelope) in ids.into_iter().zip(envelopes) {
                    let sealed = kith_protocol::encode(&envelope).ok().and_then(|bytes| {
                        self.engine.seal_for_relay(&envelope.recipient, envelope.id, &bytes).ok()
                    });
                    match sealed {
                        Some(deposit) => {
                            deposits.push(deposit);
                            sealed_ids.push(id);
                        }
                        None => failed.push(id),
                    }
                }
                if !failed.is_empty() {
                    tracing::warn!("{} envelope(s) could not be sealed for a relay", failed.len());
                    let refused = Some(MailboxResponse::Refused(MailboxRefusal::TooLarge));
                    self.c.mailbox.sealed_deposit_done(relay, failed, refused);
                }
                if deposits.is_empty() {
                    return;
                }
                let work = self.work_tx.clone();
                tokio::spawn(async move {
                    let response = crate::sealed_deposit::deposit(relay, address, deposits).await;
                    let _ =
                        work.send(Work::SealedDeposited { relay, ids: sealed_ids, response }).await;
                });
            }
            MailboxAction::Fetch { relay } => {
                let request = self.swarm.behaviour_mut().mailbox.send_request(
                    &relay,
                    MailboxRequest::Fetch { recipient: self.user, limit: FETCH_LIMIT },
                );
                self.c.mailbox.fetch_sent(request, relay);
            }
            MailboxAction::Ack { relay, ids, more } => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .mailbox
                    .send_request(&relay, MailboxRequest::Ack { recipient: self.user, ids });
                self.c.mailbox.ack_sent(request, relay, more);
            }
            MailboxAction::AnswerPush { push, ids } => {
                if let Some(channel) = self.pushed.remove(&push) {
                    let response = MailboxResponse::Received { ids };
                    let _ = self.swarm.behaviour_mut().mailbox.send_response(channel, response);
                }
            }
            MailboxAction::FetchBundle { peer, user, relays_left } => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .prekey
                    .send_request(&peer, PreKeyRequest::Fetch { user });
                self.c.mailbox.bundle_sent(request, user, relays_left);
            }
            MailboxAction::FetchRecord(user) => self.c.dht.fetch(user),
            MailboxAction::FindKeyspace(user) => {
                let Ok(peer) = peer_id_of(&user) else { return };
                let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.c.mailbox.keyspace_sent(query, user);
            }
            MailboxAction::UploadPreKeys { relay, count } => {
                match self.engine.prekey_upload(now_millis(), count) {
                    // Marked handed out in the engine's batch: sent after the flush.
                    Ok(Some(upload)) => {
                        self.deferred.push(Deferred::Upload(relay, Box::new(upload)))
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!("preparing a prekey upload: {e}"),
                }
            }
            MailboxAction::StoredAt { id, relays } => self.c.transfers.stored_at(id, relays),
            MailboxAction::Refused { id, relay, reason } => {
                tracing::info!("relay {} refused a message: {reason:?}", crate::short(&relay));
                self.emit(NodeEvent::RelayRefused { id, relay, reason });
            }
            MailboxAction::SetAccess { relay } => self.send_access(relay, true),
        }
    }

    /// Sends `relay` our contacts' access verifiers if it was not sent this set (`force`: it
    /// just connected, and may have lost what it had).
    fn send_access(&mut self, relay: PeerId, force: bool) {
        let verifiers = match self.engine.access_verifiers() {
            Ok(v) => v,
            Err(e) => return tracing::error!("reading the access verifiers: {e}"),
        };
        if !force && self.access_sent.get(&relay) == Some(&verifiers) {
            return;
        }
        self.access_sent.insert(relay, verifiers.clone());
        let request = MailboxRequest::SetAccess { recipient: self.user, verifiers };
        self.swarm.behaviour_mut().mailbox.send_request(&relay, request);
    }

    fn on_dht_action(&mut self, action: DhtAction) {
        match action {
            DhtAction::Publish => {
                let relays = self.c.mailbox.home_addrs().iter().map(|a| a.to_vec()).collect();
                let devices = vec![self.our_addresses()];
                match self.engine.user_record(relays, devices).map(|r| kith_protocol::encode(&r)) {
                    Ok(Ok(bytes)) => {
                        let key = kad::RecordKey::new(&record_key(&self.user));
                        let record = kad::Record::new(key, bytes);
                        let kad = &mut self.swarm.behaviour_mut().kad;
                        if let Err(e) = kad.put_record(record, kad::Quorum::One) {
                            tracing::warn!("could not store our user record: {e}");
                        }
                    }
                    Ok(Err(e)) => tracing::error!("could not encode our user record: {e}"),
                    Err(e) => tracing::error!("could not build our user record: {e}"),
                }
            }
            DhtAction::Lookup(peer) => {
                self.swarm.behaviour_mut().kad.get_closest_peers(peer);
            }
            DhtAction::Fetch(user) => {
                let key = kad::RecordKey::new(&record_key(&user));
                let query = self.swarm.behaviour_mut().kad.get_record(key);
                self.c.dht.fetch_sent(query, user);
            }
        }
    }

    fn on_media_action(&mut self, action: MediaAction) {
        match action {
            MediaAction::StartWriter { media, manifest, layout, done } => {
                let (writer, chunks) = std::sync::mpsc::sync_channel(crate::media::PARALLEL_CHUNKS);
                let worker = files::Writer {
                    media,
                    manifest,
                    layout,
                    downloads: self.c.transfers.downloads_dir().to_owned(),
                    store: self.c.transfers.store().clone(),
                    done,
                    work: self.work_tx.clone(),
                };
                tokio::task::spawn_blocking(move || worker.run(chunks));
                self.writers.insert(media, writer);
            }
            MediaAction::StopWriter(media) => {
                // Its channel closes: the writer keeps what it wrote and ends.
                self.writers.remove(&media);
                self.sessions.retain(|(m, _), _| *m != media);
            }
            MediaAction::Request { media, source, peer, index, hash } => {
                if !self.sessions.contains_key(&(media, source)) && self.relayed_only(&peer) {
                    // Not over a relayed connection: the sender's relays have the chunks.
                    let (relays, now) = (self.relays(), self.clock.instant());
                    self.c.transfers.source_down(media, source, false, &relays, now);
                    return;
                }
                let session = self.sessions.entry((media, source)).or_insert_with(|| {
                    fetch::start_session(
                        self.control.clone(),
                        peer,
                        media,
                        source,
                        self.work_tx.clone(),
                    )
                });
                // Room is guaranteed: a session never has more than PARALLEL_CHUNKS requests.
                if session.try_send((index, hash)).is_err() {
                    self.sessions.remove(&(media, source));
                    let (relays, now) = (self.relays(), self.clock.instant());
                    self.c.transfers.source_down(media, source, false, &relays, now);
                }
            }
            MediaAction::Verify { media, source, index, data, manifest, layout } => {
                let Some(writer) = self.writers.get(&media).cloned() else { return };
                let work = self.work_tx.clone();
                tokio::task::spawn_blocking(move || {
                    match kith_core::media::open_verified(&manifest, &layout, index, data) {
                        Ok(plain) => {
                            let _ = writer.send(files::Incoming { index, plain });
                        }
                        Err(error) => {
                            let _ = work.blocking_send(Work::ChunkRejected {
                                media,
                                index,
                                source,
                                error,
                            });
                        }
                    }
                });
            }
            MediaAction::Read { media, relay, recipient, index, path, offset, len } => {
                let work = self.work_tx.clone();
                tokio::task::spawn_blocking(move || {
                    let data = files::read_at(&path, offset, len);
                    let read = Work::UploadRead { media, relay, recipient, index, data };
                    let _ = work.blocking_send(read);
                });
            }
            MediaAction::Put { media, relay, index, recipient, hash, data } => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .media
                    .send_request(&relay, MediaRequest::Put { recipient, hash, data });
                self.c.transfers.put_sent(request, media, relay, recipient, index);
            }
            MediaAction::Delete { relay, hashes } => {
                self.swarm
                    .behaviour_mut()
                    .media
                    .send_request(&relay, MediaRequest::Delete { hashes });
            }
            MediaAction::AddAddress(peer, address) => self.swarm.add_peer_address(peer, address),
            MediaAction::RemoveFile(path) => {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("removing {}: {e}", path.display());
                }
            }
            MediaAction::Event(event) => self.emit(NodeEvent::Media(event)),
        }
    }

    // ------------------------------------------------------------------ IO results

    fn on_work(&mut self, work: Work) {
        let (relays, now) = (self.relays(), self.clock.instant());
        let t = &mut self.c.transfers;
        match work {
            Work::Served { media, index } => t.chunk_served(media, index),
            Work::BlobServed => {
                if let Some(relay) = &self.c.relay {
                    relay.metrics.blobs_served.inc();
                }
            }
            Work::Fetched { media, index, source, response } => {
                t.fetched(media, index, source, response, &relays, now)
            }
            Work::SourceDown { media, source, broke } => {
                self.sessions.remove(&(media, source));
                t.source_down(media, source, broke, &relays, now);
            }
            Work::UploadRead { media, relay, recipient, index, data } => {
                t.chunk_read(media, relay, recipient, index, data)
            }
            Work::BlobWritten { channel, recipient, hash, size, result } => {
                let Some(relay) = self.c.relay.as_mut() else { return };
                let response = relay.blob_written(&recipient, &hash, size, result, now_millis());
                self.deferred.push(Deferred::Media(channel, response));
            }
            Work::ChunkWritten { media, bytes } => t.chunk_written(media, bytes, &relays, now),
            Work::ChunkRejected { media, index, source, error } => {
                t.chunk_rejected(media, index, source, error, &relays, now)
            }
            Work::Completed { media, path } => {
                self.writers.remove(&media);
                self.sessions.retain(|(m, _), _| *m != media);
                t.completed(media, path);
            }
            Work::Failed { media, failure } => t.fail_download(media, failure),
            Work::SealedDeposited { relay, ids, response } => {
                self.c.mailbox.sealed_deposit_done(relay, ids, response);
            }
        }
        self.drain();
    }

    // ------------------------------------------------------------------ swarm events

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = self.clock.instant();
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                if self.c.reservations.listening(listener_id, &address) {
                    tracing::info!("reachable through a relay at {address}");
                    self.c.dht.addresses_changed(now);
                } else {
                    tracing::info!("listening on {address}");
                    if self.c.reach.announce_listen {
                        self.swarm.add_external_address(address.clone());
                    }
                }
                self.listen_addrs.push(address.clone());
                self.emit(NodeEvent::Listening(address));
                if self.c.reach.waiting.remove(&listener_id) {
                    self.start();
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
                self.listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                self.listen_addrs.retain(|a| !addresses.contains(a));
                if self.c.reservations.closed(listener_id, now) {
                    tracing::info!("a relay reservation ended ({reason:?}); asking again later");
                    self.c.dht.addresses_changed(now);
                }
                if self.c.reach.waiting.remove(&listener_id) {
                    self.start();
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!("reachable from outside at {address}");
                self.update_dht_mode();
                if !is_relayed(&address) {
                    self.c.dht.addresses_changed(now);
                }
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                self.update_dht_mode();
                if !is_relayed(&address) {
                    self.c.dht.addresses_changed(now);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                connection_id,
                endpoint,
                ..
            } => {
                let address = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed();
                self.connections.entry(peer_id).or_default().insert(
                    connection_id,
                    Connection { peer: peer_id, address, relayed, rtt: None },
                );
                self.c.redial.connected(&peer_id);
                self.c.liveness.established(connection_id, now);
                self.c.reservations.connected(peer_id, now);
                if num_established.get() == 1 {
                    self.emit(NodeEvent::PeerConnected(peer_id));
                    if let Some(relay) = &self.c.relay {
                        let how = if relayed { "relayed" } else { "direct" };
                        tracing::info!("{} connected ({how})", relay.name_in_log(&peer_id));
                    }
                }
                if let Ok(user) = user_id_of(&peer_id) {
                    self.input(Input::PeerReachable { user });
                }
                if num_established.get() == 1 {
                    self.c.mailbox.connected(peer_id, now);
                    let relays = self.relays();
                    self.c.transfers.connected(peer_id, &relays, now);
                }
                self.count_peers();
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, connection_id, .. } => {
                self.c.liveness.forget(connection_id);
                if let Some(to_peer) = self.connections.get_mut(&peer_id) {
                    to_peer.remove(&connection_id);
                    if to_peer.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    if user_id_of(&peer_id).is_ok() {
                        self.c.redial.lost(peer_id, now);
                    }
                    self.emit(NodeEvent::PeerDisconnected(peer_id));
                    if let Some(relay) = &self.c.relay {
                        tracing::info!("{} disconnected", relay.name_in_log(&peer_id));
                    }
                    self.count_peers();
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event, now),
            _ => {}
        }
        self.drain();
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent, now: Instant) {
        match event {
            BehaviourEvent::Envelope(event) => self.on_envelope_event(event, now),
            BehaviourEvent::Prekey(event) => self.on_prekey_event(event, now),
            BehaviourEvent::Mailbox(event) => self.on_mailbox_event(event, now),
            BehaviourEvent::Media(event) => self.on_media_event(event, now),
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
            BehaviourEvent::Kad(event) => self.on_kad_event(event, now),
            // Dead links are found by `liveness`, from the pings answered.
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Ok(rtt) }) => {
                self.c.liveness.answered(connection, now);
                if let Some(c) =
                    self.connections.get_mut(&peer).and_then(|to| to.get_mut(&connection))
                {
                    c.rtt = Some(rtt);
                }
            }
            // A peer that does not speak ping (a plain libp2p client): silence proves nothing.
            BehaviourEvent::Ping(ping::Event {
                connection,
                result: Err(ping::Failure::Unsupported),
                ..
            }) => self.c.liveness.forget(connection),
            // A failure the handler reports (the second in a row): the link is dead.
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) }) => {
                tracing::info!(
                    "ping to {} failed ({e}): closing that connection",
                    crate::short(&peer)
                );
                self.c.liveness.forget(connection);
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Relay(event) => {
                tracing::debug!("circuit relay: {event:?}");
                if let Some(service) = self.c.relay.as_ref() {
                    service.metrics.circuit_event(&event);
                }
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                tracing::debug!(
                    "relay {} holds our reservation (renewal: {renewal})",
                    crate::short(&relay_peer_id)
                );
                // Reachable through a new relay: dial the contacts again. Our dials on start
                // failed for every contact that had no reservation yet (both sides starting
                // together, or the relay coming back), and a contact whose reservation came
                // before ours could not reach us; whichever of two contacts reserves last
                // now connects them.
                if !renewal {
                    self.dial_contacts();
                }
            }
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(_) => {
                    tracing::info!("direct connection to {}", crate::short(&remote_peer_id));
                    self.c.upgrades.upgraded(remote_peer_id, now);
                }
                Err(e) => tracing::info!(
                    "hole punch to {} failed, staying relayed: {e}",
                    crate::short(&remote_peer_id)
                ),
            },
            BehaviourEvent::Autonat(autonat::v2::client::Event { tested_addr, result, .. }) => {
                tracing::debug!("AutoNAT tested {tested_addr}: {}", result.is_ok());
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let token = self.c.groups.received(message_id, propagation_source);
                self.input(Input::GroupMessage { bytes: message.data, token });
            }
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event, now: Instant) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { record: Some(record), .. },
            } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let stored = store.get(&record.key).map(|r| r.value.clone());
                if accept_put(record.key.as_ref(), &record.value, stored.as_deref(), now_millis()) {
                    if let Err(e) = store.put(record) {
                        tracing::warn!("DHT store full: {e}");
                    }
                } else {
                    tracing::debug!("refused an invalid user record put");
                }
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
                kad::QueryResult::GetClosestPeers(Ok(ok)) => {
                    if self.c.mailbox.is_keyspace_query(&id) {
                        let peers = ok.peers.into_iter().map(|p| (p.peer_id, p.addrs)).collect();
                        self.c.mailbox.keyspace_found(id, peers);
                        return;
                    }
                    // A lookup: dial the peer if it was found.
                    let Ok(target) = PeerId::from_bytes(&ok.key) else { return };
                    if let Some(found) = ok.peers.into_iter().find(|p| p.peer_id == target) {
                        for address in found.addrs {
                            self.swarm.add_peer_address(target, address);
                        }
                        let _ = self.swarm.dial(target);
                    }
                }
                kad::QueryResult::GetClosestPeers(Err(kad::GetClosestPeersError::Timeout {
                    peers,
                    ..
                })) => {
                    let peers = peers.into_iter().map(|p| (p.peer_id, p.addrs)).collect();
                    self.c.mailbox.keyspace_found(id, peers);
                }
                kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                    if let Some(found) = self.c.dht.found(id, &found.record.value, now_millis()) {
                        // Where the user's devices can be dialed, beside their relays' circuits.
                        for (peer, addresses) in found.devices {
                            if !self.swarm.is_connected(&peer) {
                                self.swarm.behaviour_mut().addresses.extend(peer, addresses);
                            }
                        }
                        for reply in self.finding.remove(&found.user).unwrap_or_default() {
                            let _ = reply.send(true);
                        }
                        self.c.mailbox.record_found(found.user, found.bundle, found.relays);
                    }
                }
                kad::QueryResult::GetRecord(_) if step.last => {
                    // A fetch that ends here found no record that verifies.
                    if let Some(user) = self.c.dht.query_done(&id) {
                        for reply in self.finding.remove(&user).unwrap_or_default() {
                            let _ = reply.send(false);
                        }
                    }
                }
                kad::QueryResult::PutRecord(Ok(_)) => self.c.dht.published(now),
                kad::QueryResult::PutRecord(Err(e)) => {
                    tracing::debug!("publishing our user record failed: {e}");
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_envelope_event(
        &mut self,
        event: request_response::Event<EnvelopeBatch, DeliveryAcks>,
        now: Instant,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: EnvelopeBatch { envelopes },
                    channel,
                    ..
                } => {
                    let batch = self.c.delivery.receive(peer, envelopes, now);
                    self.batches.insert(batch, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    self.c.delivery.answered(request_id, response.acks);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                let timeout = matches!(error, OutboundFailure::Timeout);
                let dial = matches!(error, OutboundFailure::DialFailure);
                tracing::debug!("delivery to {} failed: {error}", crate::short(&peer));
                self.c.delivery.failed(request_id, timeout, dial);
                if dial || matches!(error, OutboundFailure::ConnectionClosed) {
                    self.c.redial.lost(peer, now);
                }
            }
            _ => {}
        }
    }

    fn on_prekey_event(
        &mut self,
        event: request_response::Event<PreKeyRequest, PreKeyResponse>,
        now: Instant,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_prekey_request(peer, request, channel, now)
                }
                request_response::Message::Response { request_id, response } => {
                    if self.c.mailbox.is_upload(&request_id) {
                        self.c.mailbox.upload_answered(request_id, Some(&response));
                        if !matches!(response, PreKeyResponse::Uploaded { .. }) {
                            tracing::info!(
                                "relay {} refused our prekeys: {response:?}",
                                crate::short(&peer)
                            );
                        }
                    } else if self.c.mailbox.is_bundle_fetch(&request_id) {
                        let given = self.bundle_relays(&request_id);
                        self.c.mailbox.bundle_answered(request_id, response, &given);
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if self.c.mailbox.is_upload(&request_id) {
                    self.c.mailbox.upload_answered(request_id, None);
                } else if self.c.mailbox.is_bundle_fetch(&request_id) {
                    let given = self.bundle_relays(&request_id);
                    self.c.mailbox.bundle_request_failed(request_id, &given);
                }
                if matches!(error, OutboundFailure::DialFailure) {
                    self.c.dht.lookup(peer, now);
                }
            }
            _ => {}
        }
    }

    /// The contact-string relays of the user a bundle fetch is for.
    fn bundle_relays(&self, request: &OutboundRequestId) -> Vec<String> {
        self.c.mailbox.bundle_user(request).map(|u| self.given_relays(&u)).unwrap_or_default()
    }

    fn on_prekey_request(
        &mut self,
        peer: PeerId,
        request: PreKeyRequest,
        channel: ResponseChannel<PreKeyResponse>,
        now: Instant,
    ) {
        let answer = match request {
            PreKeyRequest::Fetch { user } if user == self.user => {
                match self.c.prekeys.admit(peer, now) {
                    Some(token) => {
                        self.prekey_replies.insert(token, channel);
                        self.input(Input::PreKeyRequest { reply: token });
                        return;
                    }
                    None => PreKeyResponse::Refused(PreKeyRefusal::RateLimited),
                }
            }
            PreKeyRequest::Fetch { user } => match self.c.relay.as_mut() {
                // Hands out a one-time prekey: answered after the flush.
                Some(relay) => {
                    let response = relay.bundle(&user);
                    self.deferred.push(Deferred::PreKeys(channel, response));
                    return;
                }
                None => PreKeyResponse::NotFound,
            },
            // Relays serve PQXDH bundles only.
            PreKeyRequest::ClassicalUpload(_) => PreKeyResponse::Refused(PreKeyRefusal::Classical),
            PreKeyRequest::Upload(upload) => match self.c.relay.as_mut() {
                Some(relay) => {
                    let response = relay.upload_prekeys(&peer, *upload, now_millis(), now);
                    self.deferred.push(Deferred::PreKeys(channel, response));
                    return;
                }
                None => PreKeyResponse::Refused(PreKeyRefusal::NotARelay),
            },
        };
        let _ = self.swarm.behaviour_mut().prekey.send_response(channel, answer);
    }

    fn on_mailbox_event(
        &mut self,
        event: request_response::Event<MailboxRequest, MailboxResponse>,
        now: Instant,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_mailbox_request(peer, request, channel, now)
                }
                request_response::Message::Response { request_id, response } => {
                    if self.pushes.remove(&request_id) {
                        if let (MailboxResponse::Received { ids }, Some(relay), Ok(user)) =
                            (response, self.c.relay.as_mut(), user_id_of(&peer))
                        {
                            // The recipient holds these durably: delete them (flushed with
                            // the turn).
                            let _ = relay.ack(&peer, &user, &ids);
                        }
                        return;
                    }
                    self.c.mailbox.answered_request(peer, request_id, response);
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!("mailbox request to {} failed: {error}", crate::short(&peer));
                if self.pushes.remove(&request_id) {
                    return;
                }
                let unsupported = matches!(error, OutboundFailure::UnsupportedProtocols);
                self.c.mailbox.request_failed(peer, request_id, unsupported);
            }
            _ => {}
        }
    }

    fn on_mailbox_request(
        &mut self,
        peer: PeerId,
        request: MailboxRequest,
        channel: ResponseChannel<MailboxResponse>,
        now: Instant,
    ) {
        let count = match &request {
            MailboxRequest::Push { envelopes } => Some(envelopes.len()),
            MailboxRequest::SealedPush { envelopes } => Some(envelopes.len()),
            _ => None,
        };
        if let Some(count) = count {
            // Pushed by a relay; each envelope counts against the peer's envelope rate.
            if !self.c.delivery.admit(peer, count, now) {
                let response = MailboxResponse::Received { ids: Vec::new() };
                let _ = self.swarm.behaviour_mut().mailbox.send_response(channel, response);
                return;
            }
            let push = self.next_push;
            self.next_push += 1;
            self.pushed.insert(push, channel);
            match request {
                MailboxRequest::Push { envelopes } => self.c.mailbox.pushed(peer, envelopes, push),
                MailboxRequest::SealedPush { envelopes } => {
                    self.c.mailbox.pushed_sealed(peer, envelopes, push)
                }
                _ => {}
            }
            return;
        }
        let Some(relay) = self.c.relay.as_mut() else {
            let response = MailboxResponse::Refused(MailboxRefusal::NotARelay);
            let _ = self.swarm.behaviour_mut().mailbox.send_response(channel, response);
            return;
        };
        match request {
            MailboxRequest::Deposit { envelopes } => {
                let (results, pushes) = relay.deposit(peer, envelopes, now_millis(), now);
                let response = MailboxResponse::Deposited { results };
                self.deferred.push(Deferred::Mailbox(channel, response));
                self.deferred.extend(pushes.into_iter().map(Deferred::Push));
            }
            MailboxRequest::Fetch { recipient, limit } => {
                // Read-only: answered at once.
                let response = relay.fetch(&peer, &recipient, limit, now_millis());
                let _ = self.swarm.behaviour_mut().mailbox.send_response(channel, response);
            }
            MailboxRequest::Ack { recipient, ids } => {
                let response = relay.ack(&peer, &recipient, &ids);
                self.deferred.push(Deferred::Mailbox(channel, response));
            }
            MailboxRequest::SealedDeposit { deposits } => {
                let (results, pushes) = relay.sealed_deposit(deposits, now_millis(), now);
                let response = MailboxResponse::Deposited { results };
                self.deferred.push(Deferred::Mailbox(channel, response));
                self.deferred.extend(pushes.into_iter().map(Deferred::SealedPush));
            }
            MailboxRequest::SetAccess { recipient, verifiers } => {
                let response = relay.set_access(&peer, &recipient, &verifiers);
                self.deferred.push(Deferred::Mailbox(channel, response));
            }
            // Pushes are handled above, relay or not.
            MailboxRequest::Push { .. } | MailboxRequest::SealedPush { .. } => {}
        }
    }

    fn on_media_event(
        &mut self,
        event: request_response::Event<MediaRequest, MediaResponse>,
        now: Instant,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_media_request(peer, request, channel, now)
                }
                request_response::Message::Response { request_id, response } => {
                    self.c.transfers.put_answered(request_id, Some(response), now);
                }
            },
            request_response::Event::OutboundFailure { request_id, .. } => {
                self.c.transfers.put_answered(request_id, None, now);
            }
            _ => {}
        }
    }

    fn on_media_request(
        &mut self,
        peer: PeerId,
        request: MediaRequest,
        channel: ResponseChannel<MediaResponse>,
        now: Instant,
    ) {
        let media = &mut self.swarm.behaviour_mut().media;
        match request {
            // Chunks travel on fetch streams (`/kith/media/fetch/1`).
            MediaRequest::Get { .. } => {
                let _ = media.send_response(channel, MediaResponse::NotFound);
            }
            MediaRequest::Put { recipient, hash, data } => {
                let Some(relay) = self.c.relay.as_mut() else {
                    let refused = MediaResponse::Refused(MediaRefusal::NotARelay);
                    let _ = media.send_response(channel, refused);
                    return;
                };
                let size = data.len() as u64;
                match relay.blob_admit(peer, &recipient, &hash, size, now) {
                    Err(reason) => {
                        let _ = media.send_response(channel, MediaResponse::Refused(reason));
                    }
                    // Held already: durable unless committed this very turn, so after the flush.
                    Ok(None) => self.deferred.push(Deferred::Media(channel, MediaResponse::Stored)),
                    Ok(Some(path)) => {
                        let work = self.work_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let result = crate::relay::blobs::write_blob(&path, &hash, &data);
                            let _ = work.blocking_send(Work::BlobWritten {
                                channel,
                                recipient,
                                hash,
                                size,
                                result,
                            });
                        });
                    }
                }
            }
            MediaRequest::Delete { hashes } => {
                let response = match self.c.relay.as_mut() {
                    Some(relay) => relay.blob_delete(&peer, &hashes),
                    None => MediaResponse::Refused(MediaRefusal::NotARelay),
                };
                self.deferred.push(Deferred::Media(channel, response));
            }
        }
    }

    fn count_peers(&self) {
        if let Some(relay) = &self.c.relay {
            let peers = self.swarm.connected_peers().count();
            relay.metrics.connected_peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
        }
    }
}

/// The channel the driver's IO tasks report on, and its receiving end.
pub(crate) fn work_channel() -> (mpsc::Sender<Work>, mpsc::Receiver<Work>) {
    mpsc::channel(crate::media::WORK_QUEUE)
}

/// Whether `address` goes through a relay.
fn is_relayed(address: &Multiaddr) -> bool {
    address.iter().any(|p| p == Protocol::P2pCircuit)
}

impl crate::turn::Turn for Driver {
    fn poll_output(&mut self) -> Option<Output> {
        self.engine.poll_output()
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        blocking(|| self.flush_engine())
    }

    fn act_on(&mut self, outputs: Vec<Output>) {
        // Incoming attachments are recorded, durably, before their envelopes are acknowledged.
        for output in &outputs {
            if let Output::Event(event) = output {
                self.c.transfers.incoming(event);
                if let kith_core::engine::Event::MessagesDeleted { ids, reason, .. } = event {
                    let expired = *reason == kith_core::engine::DeleteReason::Expired;
                    self.c.transfers.forget_messages(ids, expired);
                }
                if let kith_core::engine::Event::GroupChanged(group) = event {
                    let members = group.joined.then(|| group.members.clone());
                    self.c.transfers.set_group_members(group.id, members);
                }
            }
        }
        if let Err(e) = self.c.transfers.flush() {
            tracing::error!("media flush failed: {e}");
        }
        for output in outputs {
            self.act(output);
        }
        self.drain();
    }
}
