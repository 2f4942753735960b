//! The async handle apps use: start a node, send, query, subscribe to events.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kith_core::engine::{Command, CommandError, CommandResult, GroupCommand};
use kith_core::fingerprint::SafetyNumber;
use kith_core::group::Group;
use kith_core::identity::{ContactString, peer_id_of, user_id_of};
use kith_core::model::{Contact, Message, MessageStatus};
use kith_protocol::{GroupId, MessageId, UserId};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::NodeEvent;
use crate::behaviour::build_swarm;
use crate::call::Call;
use crate::clock::{Clock, now_millis};
use crate::config::NodeConfig;
use crate::delivery::DirectDelivery;
use crate::dht::Dht;
use crate::driver::{Components, Connection, Driver, Reach, work_channel};
use crate::error::NodeError;
use crate::events::Events;
use crate::groups::GroupTransport;
use crate::keyspace::{LEGACY_MEDIA, LEGACY_RELAY};
use crate::liveness::Liveness;
use crate::mailbox::MailboxClient;
use crate::media::Attachment;
use crate::media::MediaServed;
use crate::media::store::MediaStore;
use crate::media::transfers::Transfers;
use crate::prekeys::PreKeyServer;
use crate::presence::Activity;
use crate::profile::{Profile, ProfileError};
use crate::redial::Redial;
use crate::relay::RelayService;
use crate::relay::RelayUsage;
use crate::reservations::Reservations;
use crate::storage::StorageHealth;
use crate::tokens::{Tokens, tag};
use crate::upgrades::Upgrades;

/// Calls queued from handles to the driver (bounded: a stuck driver pushes back on callers).
pub const CALL_QUEUE: usize = 1024;
/// Events buffered per subscriber; a subscriber that falls further behind loses the oldest
/// and is told so ([`NodeEvent::Lagged`]).
pub const EVENT_BUFFER: usize = 8192;

/// What a backup is encrypted under ([`Node::create_backup`]).
#[derive(Clone, Debug)]
pub enum BackupSecretOwned {
    /// A recovery code (shown to the user once).
    Code(kith_core::store::RecoveryCode),
    /// A passphrase the user chose.
    Passphrase(crate::profile::Passphrase),
}

/// An attachment queued by [`Node::send_file`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentFile {
    /// The message carrying its manifest.
    pub message: MessageId,
    /// The attachment.
    pub media: kith_protocol::MediaId,
    /// Its size in bytes.
    pub size: u64,
    /// Its number of chunks.
    pub chunks: u32,
}

/// A running Kith node. Cheap to clone; the node stops when the last clone is dropped or on
/// [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<NodeEvent>,
    user: UserId,
    peer_id: PeerId,
    relays: Vec<Multiaddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    served: Arc<crate::media::fetch::ServedCounters>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("peer_id", &self.peer_id).finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node on an existing profile (see [`Profile::create`] or [`Node::create`]).
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let profile = Profile::open(&config.data_dir, config.engine.clone(), &config.protection)?;
        Self::start_with(profile, config).await
    }

    /// Creates a new identity in `config.data_dir` and starts a node on it.
    pub async fn create(config: NodeConfig) -> Result<Self, NodeError> {
        let profile = Profile::create(&config.data_dir, config.engine.clone(), &config.protection)?;
        Self::start_with(profile, config).await
    }

    /// Starts a node on `config.data_dir`, creating its identity first if it has none (what
    /// a relay does: its identity, and so its PeerId, persists from then on).
    pub async fn start_or_create(config: NodeConfig) -> Result<Self, NodeError> {
        match Profile::open(&config.data_dir, config.engine.clone(), &config.protection) {
            Ok(profile) => Self::start_with(profile, config).await,
            Err(ProfileError::NoIdentity(_)) => Self::create(config).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn start_with(profile: Profile, config: NodeConfig) -> Result<Self, NodeError> {
        let mut metrics_task = None;
        let clock = Clock::start();
        let engine = profile.into_engine();
        let side = engine.store().side();
        // Relay and media records lived in databases of their own before Kith 0.4 (layout 4).
        crate::keyspace::import_legacy(&config.data_dir.join("relay"), &side, &LEGACY_RELAY)?;
        crate::keyspace::import_legacy(&config.data_dir.join("media"), &side, &LEGACY_MEDIA)?;
        let keypair = engine.identity().libp2p_keypair();
        let peer_id = keypair.public().to_peer_id();
        let user = engine.user_id();
        for relay in &config.relays {
            if crate::mailbox::peer_of(relay).is_none() {
                return Err(NodeError::RelayAddress(relay.clone()));
            }
        }
        let mut swarm = build_swarm(keypair, &config)?;
        let mut waiting = HashSet::new();
        for address in &config.listen {
            let listener = swarm
                .listen_on(address.clone())
                .map_err(|source| NodeError::Listen { address: address.clone(), source })?;
            waiting.insert(listener);
        }
        let reach = Reach {
            bootstrap: config.bootstrap.clone(),
            external: config.external_addresses.clone(),
            dht_server: config.dht_server,
            announce_listen: config.relay_service.is_some() && config.external_addresses.is_empty(),
            announce_presence: config.announce_presence && config.relay_service.is_none(),
            waiting,
        };
        let (calls, calls_rx) = mpsc::channel(CALL_QUEUE);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut metrics_addr = None;
        // A relay is reachable itself: it holds no reservations elsewhere.
        let relay_node = config.relay_service.is_some();
        let relay = match &config.relay_service {
            Some(settings) => {
                let service = RelayService::open(
                    side.clone(),
                    &Profile::db_path(&config.data_dir),
                    &config.data_dir.join("relay-blobs"),
                    settings.clone(),
                    clock.instant(),
                )?;
                if let Some(addr) = settings.metrics {
                    let (listener, bound) = crate::relay::metrics::bind(addr)
                        .await
                        .map_err(|source| NodeError::Metrics { address: addr, source })?;
                    metrics_addr = Some(bound);
                    let served = crate::relay::metrics::serve(listener, service.metrics.clone());
                    metrics_task = Some(tokio::spawn(served));
                }
                Some(service)
            }
            None => None,
        };
        let store = MediaStore::open(side);
        let transfers = Transfers::open(
            user,
            store,
            config.data_dir.join("media-sealed"),
            config.downloads(),
            config.max_attachment_bytes,
            crate::media::SEALED_RETENTION,
            now_millis(),
        )?;
        let mut transfers = transfers;
        // Members of our groups may fetch what we sent to them; the driver keeps this current.
        for group in engine.groups() {
            transfers.set_group_members(group.id, group.joined.then_some(group.members));
        }
        let work = work_channel();
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control.accept(crate::media::FETCH_PROTOCOL)?;
        let mut catalog = transfers.catalog();
        let served = catalog.served.clone();
        catalog.blobs = relay.as_ref().map(RelayService::blob_index);
        tokio::spawn(crate::media::fetch::serve(incoming, catalog, work.0.clone()));
        let components = Components {
            delivery: DirectDelivery::new(Tokens::new(tag::DELIVERY)),
            mailbox: MailboxClient::new(
                user,
                peer_id,
                &config.relays,
                config.relay_copies,
                Tokens::new(tag::MAILBOX),
            ),
            dht: Dht::new(clock.instant()),
            groups: GroupTransport::default(),
            transfers,
            prekeys: PreKeyServer::default(),
            relay,
            reservations: Reservations::new(if relay_node { &[] } else { &config.relays }),
            reach,
            upgrades: Upgrades::default(),
            redial: Redial::default(),
            liveness: Liveness::default(),
            activity: Activity::new(clock.instant()),
            storage: StorageHealth::default(),
        };
        let driver = Driver::new(engine, swarm, clock, components, calls_rx, events.clone(), work);
        let task = tokio::spawn(async move {
            driver.run().await;
            if let Some(metrics) = metrics_task {
                metrics.abort();
            }
        });
        let node = Self {
            calls,
            events,
            user,
            peer_id,
            relays: config.relays.clone(),
            metrics_addr,
            served,
            task: Arc::new(Mutex::new(Some(task))),
        };
        if !config.listen.is_empty() {
            node.wait_listening(Duration::from_secs(10)).await?;
        }
        Ok(node)
    }

    /// A backup of the profile (identity, contacts and their verification marks, groups,
    /// history, attachment records; not sessions, prekeys or downloads), encrypted under
    /// `secret` ([`kith_core::store::create_backup`]); what was committed so far is in it. Runs
    /// on a blocking thread: Argon2id takes a moment.
    pub async fn create_backup(
        &self,
        secret: BackupSecretOwned,
    ) -> Result<(Vec<u8>, kith_core::store::BackupSummary), NodeError> {
        let side = self.ask(Call::Database).await?;
        let params = kith_core::store::KdfParams::DEFAULT;
        tokio::task::spawn_blocking(move || {
            let secret = match &secret {
                BackupSecretOwned::Code(code) => kith_core::store::BackupSecret::Code(code),
                BackupSecretOwned::Passphrase(p) => {
                    kith_core::store::BackupSecret::Passphrase(p.as_bytes())
                }
            };
            kith_core::store::create_backup(&side, &secret, params, now_millis())
        })
        .await
        .map_err(|_| NodeError::Stopped)?
        .map_err(NodeError::Backup)
    }

    /// Sends the file at `path` to `to` as an attachment, with an optional caption.
    ///
    /// The file is sealed chunk by chunk into a copy in the data directory (so it may change or
    /// go afterwards), then its manifest is queued like a message; the recipient pulls the
    /// chunks from this node, or from its relays if it could not be reached. Files above
    /// [`NodeConfig::max_attachment_bytes`] are refused before anything is written. Progress
    /// and outcome arrive as [`NodeEvent::Media`] events.
    pub async fn send_file(
        &self,
        to: UserId,
        path: impl Into<std::path::PathBuf>,
        caption: Option<String>,
    ) -> Result<SentFile, NodeError> {
        if self.contact(to).await?.is_none() {
            return Err(NodeError::Command(CommandError::UnknownContact));
        }
        self.seal_and_send(crate::call::MediaRecipient::User(to), path.into(), caption).await
    }

    /// Sends a file to every member of `group`, as [`Node::send_file`] does to a contact: each
    /// member's node fetches the chunks from us (the fetch is allowed to current members
    /// only).
    pub async fn send_file_to_group(
        &self,
        group: GroupId,
        path: impl Into<std::path::PathBuf>,
        caption: Option<String>,
    ) -> Result<SentFile, NodeError> {
        if !self.group(group).await?.is_some_and(|g| g.joined) {
            return Err(NodeError::Command(CommandError::NotAMember));
        }
        self.seal_and_send(crate::call::MediaRecipient::Group(group), path.into(), caption).await
    }

    /// Seals the file at `path` (on a blocking thread) and queues its manifest to `to`.
    async fn seal_and_send(
        &self,
        to: crate::call::MediaRecipient,
        path: std::path::PathBuf,
        caption: Option<String>,
    ) -> Result<SentFile, NodeError> {
        let (sealed_dir, max) = self.ask(Call::MediaSettings).await?;
        let source = path.clone();
        let (manifest, _) = tokio::task::spawn_blocking(move || {
            crate::media::files::seal_file(
                &source,
                &sealed_dir,
                kith_core::media::CHUNK_BYTES,
                max,
                caption,
            )
        })
        .await
        .map_err(|_| NodeError::Stopped)??;
        let chunks = u32::try_from(manifest.chunk_hashes.len()).unwrap_or(u32::MAX);
        let (media, size) = (manifest.media_id, manifest.size);
        let source = std::fs::canonicalize(&path).unwrap_or(path);
        let manifest = Box::new(manifest);
        let message = self.ask(|reply| Call::SendMedia { to, manifest, source, reply }).await??;
        Ok(SentFile { message, media, size, chunks })
    }

    /// Attachments sent to or received from `peer` (every one for `None`), with where each
    /// stands.
    pub async fn attachments(&self, peer: Option<UserId>) -> Result<Vec<Attachment>, NodeError> {
        Ok(self.ask(|reply| Call::Attachments(peer, reply)).await??)
    }

    /// Sends a call to the driver and waits for its answer.
    async fn ask<T>(&self, call: impl FnOnce(oneshot::Sender<T>) -> Call) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.calls.send(call(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    async fn wait_listening(&self, timeout: Duration) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.listen_addrs().await?.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Timeout("the node to listen"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Our user id.
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// Our libp2p peer id (the same key as the user id).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Our contact string (`kith:<peer-id>`, with our home relays).
    pub fn contact_string(&self) -> ContactString {
        ContactString::new(self.user, self.relays.clone())
    }

    /// Where this relay serves its Prometheus metrics (if it is a relay and serves them).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Whether `user` can be found in the network now: connected to us, or their signed
    /// record (published by every node) found in the DHT within `timeout`. `None` if the
    /// lookup did not end in time. A peer id with a typo names a key nobody holds: it is
    /// never found (while a user who is offline for long is not found either).
    pub async fn find_user(
        &self,
        user: UserId,
        timeout: Duration,
    ) -> Result<Option<bool>, NodeError> {
        match tokio::time::timeout(timeout, self.ask(|reply| Call::FindUser(user, reply))).await {
            Ok(found) => found.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The attachment chunks this node has served to others since it started (what it sent,
    /// what a group's members fetch from it, and a relay's held chunks), each time counted.
    pub fn media_served(&self) -> MediaServed {
        self.served.get()
    }

    /// Envelopes and envelope bytes this relay holds, and its database's size on disk
    /// (`None` if this node is not a relay).
    pub async fn relay_usage(&self) -> Result<Option<RelayUsage>, NodeError> {
        self.ask(Call::RelayUsage).await
    }

    /// Events from now on: messages, statuses, typing, presence, contacts, network. A
    /// subscriber that falls more than [`EVENT_BUFFER`] events behind is told what it lost
    /// ([`NodeEvent::Lagged`]); none is dropped silently.
    pub fn subscribe(&self) -> Events {
        Events::new(self.events.subscribe())
    }

    /// Carries out a command. When this returns `Ok`, its effects are on disk.
    pub async fn command(&self, command: Command) -> Result<CommandResult, NodeError> {
        Ok(self.ask(|reply| Call::Command(command, reply)).await??)
    }

    /// Sends a text message; returns its id once it is durably queued.
    pub async fn send_text(
        &self,
        to: UserId,
        text: impl Into<String>,
    ) -> Result<MessageId, NodeError> {
        match self.command(Command::SendText { to, text: text.into(), reply_to: None }).await? {
            CommandResult::Queued(id) => Ok(id),
            other => Err(NodeError::UnexpectedResult(other)),
        }
    }

    /// Creates a group with `members` (we are its admin); returns its id once it is stored
    /// and the invitations are queued.
    pub async fn create_group(
        &self,
        name: impl Into<String>,
        members: Vec<UserId>,
    ) -> Result<GroupId, NodeError> {
        match self.command(Command::CreateGroup { name: name.into(), members }).await? {
            CommandResult::Group(id) => Ok(id),
            other => Err(NodeError::UnexpectedResult(other)),
        }
    }

    /// Acts in a group (send, react, add, remove, leave, ...).
    pub async fn group_command(
        &self,
        group: GroupId,
        command: GroupCommand,
    ) -> Result<CommandResult, NodeError> {
        self.command(Command::Group { group, command }).await
    }

    /// Sends a text to a group; returns its id once it is sealed and stored.
    pub async fn send_group_text(
        &self,
        group: GroupId,
        text: impl Into<String>,
    ) -> Result<MessageId, NodeError> {
        let command = GroupCommand::Send { text: text.into(), reply_to: None };
        match self.group_command(group, command).await? {
            CommandResult::Queued(id) => Ok(id),
            other => Err(NodeError::UnexpectedResult(other)),
        }
    }

    /// Every group we know (joined or left).
    pub async fn groups(&self) -> Result<Vec<Group>, NodeError> {
        self.ask(Call::Groups).await
    }

    /// A group by id.
    pub async fn group(&self, id: GroupId) -> Result<Option<Group>, NodeError> {
        self.ask(|reply| Call::Group(id, reply)).await
    }

    /// The group a name (unique among our groups) or a hex id (or its prefix of at least 8
    /// characters) refers to.
    pub async fn resolve_group(&self, name_or_id: &str) -> Result<GroupId, NodeError> {
        let wanted = name_or_id.trim().to_lowercase();
        let groups = self.groups().await?;
        let by_name: Vec<&Group> =
            groups.iter().filter(|g| g.name.to_lowercase() == wanted).collect();
        let by_id: Vec<&Group> = groups
            .iter()
            .filter(|g| wanted.len() >= 8 && g.id.to_string().starts_with(&wanted))
            .collect();
        match (by_name.as_slice(), by_id.as_slice()) {
            ([one], _) | ([], [one]) => Ok(one.id),
            ([], _) => Err(NodeError::UnknownGroup(name_or_id.to_owned())),
            (many, _) => Err(NodeError::AmbiguousGroup {
                name: name_or_id.trim().to_owned(),
                groups: many
                    .iter()
                    .map(|g| {
                        let id = g.id.to_string();
                        let n = g.members.len();
                        let noun = if n == 1 { "member" } else { "members" };
                        format!("{} ({n} {noun})", id.get(..16).unwrap_or(&id))
                    })
                    .collect(),
            }),
        }
    }

    /// Up to `limit` messages of a group before sequence number `before`, oldest first.
    pub async fn group_history(
        &self,
        group: GroupId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, NodeError> {
        Ok(self.ask(|reply| Call::GroupHistory { group, before, limit, reply }).await??)
    }

    /// Group messages received that wait for their sender's key (or will never open: traffic
    /// a removed member still receives).
    pub async fn pending_group_messages(&self, group: GroupId) -> Result<usize, NodeError> {
        Ok(self.ask(|reply| Call::PendingGroupMessages(group, reply)).await??)
    }

    #[cfg(feature = "test-utils")]
    /// Gossipsub's score of `peer` (negative once it sent invalid group messages), if known.
    pub async fn gossip_score(&self, peer: PeerId) -> Result<Option<f64>, NodeError> {
        self.ask(|reply| Call::GossipScore(peer, reply)).await
    }

    #[cfg(feature = "test-utils")]
    /// Deliveries under way: direct requests in flight plus messages on their way to relays
    /// (zero once nothing this node sent can still land anywhere).
    pub async fn deliveries_in_flight(&self) -> Result<usize, NodeError> {
        self.ask(Call::DeliveriesInFlight).await
    }

    /// The disappearing-message timer of the conversation with `peer`, in seconds (0: off).
    /// Set it with [`Command::SetDisappearing`].
    pub async fn disappearing_timer(&self, peer: UserId) -> Result<u32, NodeError> {
        self.ask(|reply| Call::DisappearingTimer(peer, reply)).await
    }

    /// A group's disappearing-message timer, in seconds (0: off). Set it with
    /// [`GroupCommand::SetDisappearing`].
    pub async fn group_disappearing_timer(&self, group: GroupId) -> Result<u32, NodeError> {
        self.ask(|reply| Call::GroupDisappearingTimer(group, reply)).await
    }

    /// Adds (or renames) a contact from its contact string.
    pub async fn add_contact(&self, contact: &ContactString, name: &str) -> Result<(), NodeError> {
        let relays = contact.relays.iter().map(ToString::to_string).collect();
        self.command(Command::AddContact { user: contact.user, name: name.to_owned(), relays })
            .await?;
        Ok(())
    }

    /// All contacts.
    pub async fn contacts(&self) -> Result<Vec<Contact>, NodeError> {
        Ok(self.ask(Call::Contacts).await??)
    }

    /// A contact by id.
    pub async fn contact(&self, user: UserId) -> Result<Option<Contact>, NodeError> {
        Ok(self.ask(|reply| Call::Contact(user, reply)).await??)
    }

    /// The user a contact name or a peer id (with or without `kith:`) refers to.
    pub async fn resolve(&self, name_or_peer: &str) -> Result<UserId, NodeError> {
        let owned = name_or_peer.to_owned();
        if let Some(contact) = self.ask(|reply| Call::ContactByName(owned, reply)).await?? {
            return Ok(contact.user);
        }
        let bare = name_or_peer.trim().strip_prefix("kith:").unwrap_or(name_or_peer.trim());
        let bare = bare.split('?').next().unwrap_or(bare);
        bare.parse::<PeerId>()
            .ok()
            .and_then(|peer| user_id_of(&peer).ok())
            .ok_or_else(|| NodeError::UnknownContact(name_or_peer.to_owned()))
    }

    /// Up to `limit` messages with `peer` before sequence number `before`, oldest first.
    pub async fn history(
        &self,
        peer: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, NodeError> {
        Ok(self.ask(|reply| Call::History { peer, before, limit, reply }).await??)
    }

    /// A message by id.
    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, NodeError> {
        Ok(self.ask(|reply| Call::Message(id, reply)).await??)
    }

    /// The safety number with `peer`, once their identity is known.
    pub async fn safety_number(&self, peer: UserId) -> Result<Option<SafetyNumber>, NodeError> {
        Ok(self.ask(|reply| Call::SafetyNumber(peer, reply)).await??)
    }

    /// Our display name.
    pub async fn profile_name(&self) -> Result<Option<String>, NodeError> {
        Ok(self.ask(Call::ProfileName).await??)
    }

    /// Messages waiting in the outbox.
    pub async fn outbox_len(&self) -> Result<usize, NodeError> {
        self.ask(Call::OutboxLen).await
    }

    /// The addresses we listen on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(Call::ListenAddrs).await
    }

    /// Our listen addresses with `/p2p/<peer-id>`: what another node can dial or bootstrap from.
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, NodeError> {
        let peer = self.peer_id;
        Ok(self
            .listen_addrs()
            .await?
            .into_iter()
            .map(|a| a.with_p2p(peer).unwrap_or_else(|a| a))
            .collect())
    }

    /// Our open connections: to whom, at which address, and whether through a relay (a
    /// relayed connection is replaced by a direct one when hole punching succeeds).
    pub async fn connections(&self) -> Result<Vec<Connection>, NodeError> {
        self.ask(Call::Connections).await
    }

    /// Peers we have a connection to.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NodeError> {
        self.ask(Call::ConnectedPeers).await
    }

    /// Whether we have a connection to `user`.
    pub async fn is_connected(&self, user: UserId) -> Result<bool, NodeError> {
        let Ok(peer) = peer_id_of(&user) else { return Ok(false) };
        self.ask(|reply| Call::IsConnected(peer, reply)).await
    }

    /// Dials `address` (which should end in `/p2p/<peer-id>`) and adds it to the DHT.
    pub async fn connect(&self, address: Multiaddr) -> Result<(), NodeError> {
        Ok(self.ask(|reply| Call::Connect(address, reply)).await??)
    }

    /// Waits until message `id` has reached at least `target` (or failed), returning its status.
    pub async fn wait_for_status(
        &self,
        id: MessageId,
        target: MessageStatus,
        timeout: Duration,
    ) -> Result<MessageStatus, NodeError> {
        let reached = |status: MessageStatus| {
            matches!(status, MessageStatus::Failed(_)) || status_rank(status) >= status_rank(target)
        };
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.message(id).await?.map(|m| m.status);
            if let Some(status) = status.filter(|s| reached(*s)) {
                return Ok(status);
            }
            // Wake on the next event (or periodically, in case events were lost to lag).
            let wait = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(500)),
                events.recv(),
            );
            if wait.await.is_err() && tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Timeout("the message status"));
            }
        }
    }

    /// A BLAKE3 digest of everything the node has stored (for tests and diagnostics: two equal
    /// digests mean byte-identical stores).
    #[cfg(feature = "test-utils")]
    pub async fn store_digest(&self) -> Result<String, NodeError> {
        let dump = self.ask(Call::Dump).await??;
        let mut hasher = blake3::Hasher::new();
        for (tree, key, value) in dump {
            hasher.update(tree.name().as_bytes());
            hasher.update(&(key.len() as u64).to_be_bytes());
            hasher.update(&key);
            let value = value.unwrap_or_default();
            hasher.update(&(value.len() as u64).to_be_bytes());
            hasher.update(&value);
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Flushes and stops the node, waiting until its database is closed.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        let _ = self.ask(Call::Shutdown).await;
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

/// Progress rank of an outgoing status.
fn status_rank(status: MessageStatus) -> u8 {
    match status {
        MessageStatus::Queued => 0,
        MessageStatus::Sent | MessageStatus::Received => 1,
        MessageStatus::Delivered => 2,
        MessageStatus::Read => 3,
        MessageStatus::Failed(_) => 4,
    }
}
