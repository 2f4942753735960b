//! A deterministic simulated network of engines on virtual time (feature `test-utils`): the
//! one harness of the engine's tests, and of apps that test their own use of the engine.
//!
//! Pairwise envelopes, acknowledgements, prekey requests and bundles, and group publications
//! travel as packets subject to [`Faults`]: loss, delay (hence reordering) and duplication.
//! Nodes go offline (a direct delivery to them fails at once, as a dial would; what is in
//! flight is lost), lose power (every write not made durable by a flush is lost, on a
//! [`CrashableBackend`]), run out of disk (every flush fails until there is room again, so the
//! engine holds every output that depends on what it could not make durable) and restart from
//! their store. A group publication reaches the members that are online and
//! subscribed to its topic; the publisher is told which members it did not reach, as the node
//! tells it.
//!
//! ```
//! use kith_core::testing::{Faults, Net};
//!
//! let mut net = Net::new(2, Faults::NONE, 1);
//! net.introduce_all();
//! let id = net.send_text(0, 1, "hello");
//! net.run();
//! assert_eq!(net.nodes[1].received[&id], (1, "hello".to_owned()));
//! ```
//!
//! It is a test harness: it panics on misuse (a node index out of range, a stopped node's
//! engine) and on any engine error, so that a test fails where things went wrong.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use kith_protocol::direct::AckResult;
use kith_protocol::envelope::{Envelope, EnvelopeKind, RatchetHeader};
use kith_protocol::prekey::{PreKeyBundle, PreKeyResponse};
use kith_protocol::{GroupTag, MessageId, UserId};
use rand::RngExt;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::engine::{
    Command, CommandResult, Config, DeliveryResult, Engine, Event, FetchError, Input, Output,
    Reply, ReplyToken, ValidationToken, Verdict, Via,
};
use crate::identity::IdentityKeyPair;
use crate::model::MessageStatus;
use crate::pqxdh::AssociatedData;
use crate::ratchet::keys::HeaderKey;
use crate::session::message_ad;
use crate::store::{Backend, Batch, MemoryBackend, RawWrite, Store, StoreError, Tree};

/// The virtual time every network starts at (ms since the Unix epoch).
pub const T0: u64 = 1_700_000_000_000;

/// The engine type of a simulated node.
pub type SimEngine = Engine<ChaCha20Rng>;

/// A backend that models a disk with a write cache: commits are visible at once, but only a
/// flush makes them survive a crash. [`CrashableBackend::crash`] throws away everything since
/// the last flush.
#[derive(Clone, Default)]
pub struct CrashableBackend {
    inner: Arc<Mutex<(MemoryBackend, Vec<RawWrite>)>>,
    full: Arc<std::sync::atomic::AtomicBool>,
    /// Writes made durable so far, and their bytes (keys and values).
    durable: Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// The same, per tree.
    by_tree: Arc<Mutex<BTreeMap<Tree, (u64, u64)>>>,
}

impl CrashableBackend {
    /// Loses every write not flushed.
    pub fn crash(&self) {
        self.lock().1.clear();
    }

    /// While `full`, the disk is full: every flush fails (`StorageFull`) and what it would
    /// have made durable stays at the mercy of a [`CrashableBackend::crash`].
    pub fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes its flushes made durable so far, and their bytes (keys and values): what a disk
    /// would have been asked to keep.
    pub fn durable_writes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.durable[0].load(Relaxed), self.durable[1].load(Relaxed))
    }

    /// [`CrashableBackend::durable_writes`] per tree: where a flush's writes go.
    pub fn durable_writes_by_tree(&self) -> BTreeMap<Tree, (u64, u64)> {
        self.by_tree.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (MemoryBackend, Vec<RawWrite>)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for CrashableBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashableBackend").finish_non_exhaustive()
    }
}

impl Backend for CrashableBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let guard = self.lock();
        for (t, k, v) in guard.1.iter().rev() {
            if *t == tree && k == key {
                return Ok(v.clone());
            }
        }
        guard.0.get(tree, key)
    }

    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let guard = self.lock();
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = guard
            .0
            .range(tree, start, end, false, usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (t, k, v) in &guard.1 {
            if *t == tree && k.as_slice() >= start && (end.is_empty() || k.as_slice() < end) {
                merged.insert(k.clone(), v.clone());
            }
        }
        let live = merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
        Ok(if reverse { live.rev().take(limit).collect() } else { live.take(limit).collect() })
    }

    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        self.lock().1.extend_from_slice(writes);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(StoreError::Backend(crate::store::BackendError::new(full)));
        }
        let mut guard = self.lock();
        let pending = std::mem::take(&mut guard.1);
        let size = |(_, k, v): &RawWrite| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
        let bytes: u64 = pending.iter().map(size).sum();
        self.durable[0].fetch_add(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.durable[1].fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        {
            let mut by_tree = self.by_tree.lock().unwrap_or_else(PoisonError::into_inner);
            for write in &pending {
                let entry = by_tree.entry(write.0).or_default();
                entry.0 += 1;
                entry.1 += size(write);
            }
        }
        guard.0.apply(&pending)
    }

    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        let guard = self.lock();
        let mut all: BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>> =
            guard.0.dump()?.into_iter().map(|(t, k, v)| ((t, k), v)).collect();
        for (t, k, v) in &guard.1 {
            all.insert((*t, k.clone()), v.clone());
        }
        Ok(all.into_iter().filter_map(|((t, k), v)| v.map(|v| (t, k, Some(v)))).collect())
    }
}

/// Where a node keeps its state.
#[derive(Debug)]
pub enum Storage {
    /// In memory, with simulated crashes.
    Crashable(CrashableBackend),
    /// A real sled database, not encrypted (crashes are not simulated).
    #[cfg(feature = "sled")]
    Sled(std::path::PathBuf),
    /// A real sled database, encrypted under a fixed key (crashes are not simulated).
    #[cfg(feature = "sled")]
    SealedSled(std::path::PathBuf),
}

/// The key the simulation's encrypted stores are sealed under.
fn sim_key() -> crate::store::DatabaseKey {
    crate::store::DatabaseKey::from_bytes(&mut [7; 32])
}

impl Storage {
    fn store(&self) -> Store {
        match self {
            // Encrypted, as on disk (the sled variant covers stores without encryption).
            Storage::Crashable(b) => Store::open_sealed(Box::new(b.clone()), &sim_key()).unwrap(),
            // A store just dropped releases its lock in the background: wait for it.
            #[cfg(feature = "sled")]
            Storage::Sled(path) => loop {
                match Store::open(path) {
                    Err(StoreError::Locked) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    result => break result.unwrap(),
                }
            },
            #[cfg(feature = "sled")]
            Storage::SealedSled(path) => loop {
                match Store::open_sled_sealed(path, &sim_key()) {
                    Err(StoreError::Locked) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    result => break result.unwrap(),
                }
            },
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct Node {
    /// Its engine, while it runs.
    pub engine: Option<SimEngine>,
    /// Its store.
    pub storage: Storage,
    /// Its user id.
    pub user: UserId,
    /// The seed of its engine's RNG.
    pub seed: u64,
    /// Every incoming message event: id → (times seen, text).
    pub received: HashMap<MessageId, (usize, String)>,
    /// The latest status of each of its messages.
    pub statuses: HashMap<MessageId, MessageStatus>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Its verdicts on the group messages gossip handed it.
    pub verdicts: Vec<Verdict>,
    /// Whether it is reachable.
    pub online: bool,
    /// The group topics it listens on.
    pub subscribed: BTreeSet<GroupTag>,
    /// With `sniff`: every header key it has sent under, with the peer and the session's
    /// associated data, so that [`Net::ratchet_header`] can read its encrypted headers.
    header_keys: Vec<(UserId, AssociatedData, HeaderKey)>,
}

impl Node {
    /// Its engine (it must be running).
    pub fn engine(&mut self) -> &mut SimEngine {
        self.engine.as_mut().expect("node is running")
    }

    /// Its events so far, taken.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

#[derive(Clone, Debug)]
enum Packet {
    Envelope { from: usize, to: usize, id: MessageId, bytes: Vec<u8> },
    Ack { to: usize, id: MessageId, result: AckResult },
    BundleRequest { from: usize, to: usize },
    Bundle { to: usize, user: UserId, result: Result<Box<PreKeyBundle>, FetchError> },
    Gossip { to: usize, bytes: Vec<u8> },
}

impl Packet {
    fn to(&self) -> usize {
        match self {
            Packet::Envelope { to, .. }
            | Packet::Ack { to, .. }
            | Packet::BundleRequest { to, .. }
            | Packet::Bundle { to, .. }
            | Packet::Gossip { to, .. } => *to,
        }
    }
}

/// What the network does to packets.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Chance a packet is lost.
    pub loss: f64,
    /// Chance a packet arrives twice.
    pub duplication: f64,
    /// Shortest delay (ms).
    pub min_delay_ms: u64,
    /// Longest delay (ms).
    pub max_delay_ms: u64,
}

impl Faults {
    /// A perfect network: nothing lost or duplicated, everything at once and in order.
    pub const NONE: Faults =
        Faults { loss: 0.0, duplication: 0.0, min_delay_ms: 0, max_delay_ms: 0 };
}

/// The simulated network.
#[derive(Debug)]
pub struct Net {
    /// Virtual time (ms).
    pub now: u64,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// What the network does to packets.
    pub faults: Faults,
    rng: ChaCha20Rng,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    packets: HashMap<usize, Packet>,
    next_packet: usize,
    /// Reply token → (the node that asked, the outbox id its request carried).
    tokens: HashMap<u64, (usize, Option<MessageId>)>,
    next_token: u64,
    /// Packets handed to a running, online node.
    pub delivered_packets: u64,
    /// Packets lost (to faults, or to a node down or offline).
    pub dropped_packets: u64,
    /// Flushes that failed (a full disk); the node's outputs stayed held.
    pub failed_flushes: u64,
    /// With `sniff`, every envelope that left a node: (from, to, bytes).
    pub sniffed: Vec<(usize, usize, Vec<u8>)>,
    /// Whether to record `sniffed`.
    pub sniff: bool,
    /// Every pairwise envelope handed over to an online node: (from, to).
    pub envelopes: Vec<(usize, usize)>,
    /// Every group publication, as a listener on its topic would see it.
    pub published: Vec<Vec<u8>>,
}

impl Net {
    /// `nodes` fresh nodes in memory (crashable), on a network with `faults`; `seed` makes
    /// the run reproducible.
    pub fn new(nodes: usize, faults: Faults, seed: u64) -> Self {
        let mut net = Net {
            now: T0,
            nodes: Vec::new(),
            faults,
            rng: ChaCha20Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            packets: HashMap::new(),
            next_packet: 0,
            tokens: HashMap::new(),
            next_token: 0,
            delivered_packets: 0,
            dropped_packets: 0,
            failed_flushes: 0,
            sniffed: Vec::new(),
            sniff: false,
            envelopes: Vec::new(),
            published: Vec::new(),
        };
        for _ in 0..nodes {
            net.add_node(Storage::Crashable(CrashableBackend::default()));
        }
        net
    }

    /// A network of nodes on sled databases in `dirs`, without faults.
    #[cfg(feature = "sled")]
    pub fn with_sled(dirs: &[&std::path::Path], seed: u64) -> Self {
        let mut net = Net::new(0, Faults::NONE, seed);
        for dir in dirs {
            net.add_node(Storage::Sled(dir.to_path_buf()));
        }
        net
    }

    /// A network of nodes on encrypted sled databases in `dirs`, without faults.
    #[cfg(feature = "sled")]
    pub fn with_sealed_sled(dirs: &[&std::path::Path], seed: u64) -> Self {
        let mut net = Net::new(0, Faults::NONE, seed);
        for dir in dirs {
            net.add_node(Storage::SealedSled(dir.to_path_buf()));
        }
        net
    }

    /// Adds a node with a new identity on `storage`; returns its index.
    pub fn add_node(&mut self, storage: Storage) -> usize {
        let seed = self.rng.next_u64();
        let engine = Engine::create(
            storage.store(),
            ChaCha20Rng::seed_from_u64(seed),
            self.now,
            Config::default(),
        )
        .unwrap();
        self.push(engine, storage, seed)
    }

    /// Adds a node (in memory, crashable) with `identity`; returns its index.
    pub fn add_node_with(&mut self, identity: &IdentityKeyPair) -> usize {
        let seed = self.rng.next_u64();
        let (engine, storage) = self.fresh_engine(identity, seed);
        self.push(engine, storage, seed)
    }

    /// Node `node` loses all its state and comes back with `identity` (same user, say, with
    /// a new X25519 key): what the network sees of someone who reinstalled.
    pub fn reinstall(&mut self, node: usize, identity: &IdentityKeyPair) {
        let seed = self.rng.next_u64();
        let (engine, storage) = self.fresh_engine(identity, seed);
        let n = &mut self.nodes[node];
        n.user = engine.user_id();
        n.engine = Some(engine);
        n.storage = storage;
        n.seed = seed;
        n.subscribed.clear();
    }

    fn fresh_engine(&self, identity: &IdentityKeyPair, seed: u64) -> (SimEngine, Storage) {
        let storage = Storage::Crashable(CrashableBackend::default());
        let mut store = storage.store();
        let mut batch = Batch::new();
        batch.put_identity(identity, self.now);
        store.commit(batch).unwrap();
        store.flush().unwrap();
        let engine =
            Engine::open(store, ChaCha20Rng::seed_from_u64(seed), self.now, Config::default())
                .unwrap();
        (engine, storage)
    }

    fn push(&mut self, engine: SimEngine, storage: Storage, seed: u64) -> usize {
        let user = engine.user_id();
        self.nodes.push(Node {
            engine: Some(engine),
            storage,
            user,
            seed,
            received: HashMap::new(),
            statuses: HashMap::new(),
            events: Vec::new(),
            verdicts: Vec::new(),
            online: true,
            subscribed: BTreeSet::new(),
            header_keys: Vec::new(),
        });
        self.nodes.len() - 1
    }

    /// Node `node`'s user id.
    pub fn user(&self, node: usize) -> UserId {
        self.nodes[node].user
    }

    /// The node of `user`.
    pub fn index_of(&self, user: &UserId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.user == user)
    }

    /// Node `node`'s engine (it must be running).
    pub fn engine(&mut self, node: usize) -> &mut SimEngine {
        self.nodes[node].engine()
    }

    /// Node `node`'s engine, to read from (it must be running).
    pub fn engine_ref(&self, node: usize) -> &SimEngine {
        self.nodes[node].engine.as_ref().expect("node is running")
    }

    /// Makes every node a named contact (`n<index>`) of every other.
    pub fn introduce_all(&mut self) {
        let users: Vec<UserId> = self.nodes.iter().map(|n| n.user).collect();
        for i in 0..self.nodes.len() {
            for (j, user) in users.iter().enumerate() {
                if i != j {
                    let name = format!("n{j}");
                    self.command(i, Command::AddContact { user: *user, name, relays: vec![] });
                }
            }
        }
    }

    /// Queues a text from `from` to `to` (nothing moves until the network runs).
    pub fn send_text(&mut self, from: usize, to: usize, text: &str) -> MessageId {
        let to = self.nodes[to].user;
        match self.command(from, Command::SendText { to, text: text.into(), reply_to: None }) {
            CommandResult::Queued(id) => id,
            other => panic!("a send queues a message, not {other:?}"),
        }
    }

    /// Carries out `command` on `node` (nothing moves until the network runs).
    pub fn command(&mut self, node: usize, command: Command) -> CommandResult {
        let now = self.now;
        self.nodes[node].engine().handle_command(now, command).unwrap()
    }

    /// Hands `bytes` to `node` as a group message from gossip, at once.
    pub fn inject_gossip(&mut self, node: usize, bytes: Vec<u8>) {
        self.next_token += 1;
        let token = ValidationToken(self.next_token);
        let now = self.now;
        self.nodes[node].engine().handle_input(now, Input::GroupMessage { bytes, token }).unwrap();
    }

    /// Routes everything that is due now, and what follows from it, until the network is
    /// quiet at the current time (packets delayed by faults stay in flight).
    pub fn run(&mut self) {
        self.run_until_quiet(self.now);
    }

    /// Runs until no packet is in flight and no node has anything due before `until`.
    pub fn run_until_quiet(&mut self, until: u64) {
        loop {
            self.drain();
            let next_packet = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.online)
                .filter_map(|n| n.engine.as_ref().and_then(Engine::poll_timeout))
                .filter(|&t| t <= until)
                .min();
            // Only timers that matter: a node with an empty outbox idles until upkeep.
            let busy = self
                .nodes
                .iter()
                .any(|n| n.online && n.engine.as_ref().is_some_and(|e| e.outbox_len() > 0));
            let next = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p.min(t),
                (Some(p), None) => p,
                (None, Some(t)) if busy || t <= self.now => t,
                _ => return,
            };
            if next > until {
                return;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((at, _, id))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                if let Some(packet) = self.packets.remove(&id) {
                    self.deliver(packet);
                }
            }
            self.fire_timers();
        }
    }

    /// Advances virtual time by `ms`, processing whatever happens meanwhile; at the end every
    /// timer due by then has fired.
    pub fn advance(&mut self, ms: u64) {
        let until = self.now + ms;
        self.run_until_quiet(until);
        self.now = self.now.max(until);
        self.fire_timers();
        self.run();
    }

    /// Node `node` is reachable again (a connection came up): it and everyone else retry
    /// what waits.
    pub fn reachable(&mut self, node: usize) {
        let user = self.nodes[node].user;
        let now = self.now;
        for n in self.nodes.iter_mut().filter(|n| n.online) {
            if let Some(engine) = n.engine.as_mut() {
                engine.handle_input(now, Input::PeerReachable { user }).unwrap();
                engine.handle_input(now, Input::Timeout).unwrap();
            }
        }
        self.run();
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        for n in self.nodes.iter_mut().filter(|n| n.online) {
            if let Some(engine) = n.engine.as_mut()
                && engine.poll_timeout().is_some_and(|t| t <= now)
            {
                engine.handle_input(now, Input::Timeout).unwrap();
            }
        }
    }

    /// Crashes a node, or cuts its power (the same to its disk, a [`CrashableBackend`]): it
    /// loses everything not made durable by a flush, and stops.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node].engine = None;
        match &self.nodes[node].storage {
            Storage::Crashable(backend) => backend.crash(),
            #[cfg(feature = "sled")]
            Storage::Sled(_) | Storage::SealedSled(_) => {
                panic!("crashes are simulated on in-memory nodes only")
            }
        }
    }

    /// Fills node `node`'s disk (`true`: every flush fails from now on) or frees it again. The
    /// node keeps running: it holds its outputs until a flush succeeds.
    pub fn set_disk_full(&mut self, node: usize, full: bool) {
        match &self.nodes[node].storage {
            Storage::Crashable(backend) => backend.set_full(full),
            #[cfg(feature = "sled")]
            Storage::Sled(_) | Storage::SealedSled(_) => {
                panic!("full disks are simulated on in-memory nodes only")
            }
        }
    }

    /// Stops a node cleanly (everything it acknowledged is flushed already).
    pub fn stop(&mut self, node: usize) {
        if let Some(mut e) = self.nodes[node].engine.take() {
            e.flush().unwrap();
        }
    }

    /// Restarts a stopped or crashed node from its store. The RNG is reseeded (a real restart
    /// draws fresh OS entropy); its topics are those the engine subscribes to again.
    pub fn restart(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.seed = n.seed.wrapping_add(0x9e37_79b9);
        n.subscribed.clear();
        let engine = Engine::open(
            n.storage.store(),
            ChaCha20Rng::seed_from_u64(n.seed),
            self.now,
            Config::default(),
        )
        .unwrap();
        n.engine = Some(engine);
    }

    /// Packets in flight.
    pub fn packets_in_flight(&self) -> usize {
        self.queue.len()
    }

    fn schedule(&mut self, packet: Packet) {
        let faults = self.faults;
        if faults.loss > 0.0 && self.rng.random_bool(faults.loss) {
            self.dropped_packets += 1;
            return;
        }
        let copies = if faults.duplication > 0.0 && self.rng.random_bool(faults.duplication) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if faults.max_delay_ms > faults.min_delay_ms {
                self.rng.random_range(faults.min_delay_ms..=faults.max_delay_ms)
            } else {
                faults.min_delay_ms
            };
            let id = self.next_packet;
            self.next_packet += 1;
            self.packets.insert(id, packet.clone());
            self.queue.push(Reverse((self.now + delay, id as u64, id)));
        }
    }

    fn token(&mut self, node: usize, id: Option<MessageId>) -> ReplyToken {
        self.next_token += 1;
        self.tokens.insert(self.next_token, (node, id));
        ReplyToken(self.next_token)
    }

    fn is_up(&self, node: usize) -> bool {
        self.nodes[node].online && self.nodes[node].engine.is_some()
    }

    /// Flushes every running node and routes its outputs: after a failed flush (a full disk),
    /// only those that were ready before it (the engine holds the rest).
    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            if self.sniff {
                self.note_header_keys(i);
            }
            let Some(engine) = self.nodes[i].engine.as_mut() else { continue };
            // Taken before the flush, as the node does.
            let early = engine.take_early_events();
            for event in early {
                self.record(i, event);
            }
            let Some(engine) = self.nodes[i].engine.as_mut() else { continue };
            if engine.flush().is_err() {
                self.failed_flushes += 1;
            }
            let outputs: Vec<Output> = std::iter::from_fn(|| engine.poll_output()).collect();
            for output in outputs {
                self.route(i, output);
            }
        }
    }

    /// Remembers the header keys node `i` sends under now: a header key changes only while an
    /// input is handled, so noting them after each one sees every key a header was sealed with.
    fn note_header_keys(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(engine) = node.engine.as_ref() else { return };
        for key in engine.sending_header_keys() {
            if !node.header_keys.contains(&key) {
                node.header_keys.push(key);
            }
        }
    }

    /// The ratchet header of a sniffed pairwise envelope from node `from` to node `to`: read
    /// in the clear from a classical session's message, or decrypted with the header keys
    /// `from` was seen to send under. `None` for a group message or a header none opens.
    pub fn ratchet_header(
        &self,
        from: usize,
        to: usize,
        envelope: &Envelope,
    ) -> Option<RatchetHeader> {
        let sealed = match &envelope.kind {
            EnvelopeKind::Ratchet(m) => return Some(m.header),
            EnvelopeKind::PreKey(m) => return Some(m.message.header),
            EnvelopeKind::Group(_) => return None,
            EnvelopeKind::PqPreKey(m) => &m.message.header,
            EnvelopeKind::SealedRatchet(m) => &m.header,
        };
        let peer = self.nodes[to].user;
        self.nodes[from].header_keys.iter().filter(|(p, _, _)| *p == peer).find_map(
            |(_, associated, key)| key.open(&message_ad(associated, &envelope.id), sealed),
        )
    }

    fn route(&mut self, from: usize, output: Output) {
        let now = self.now;
        match output {
            Output::Deliver(d) => {
                let Some(to) = self.index_of(&d.to) else { return };
                if self.sniff {
                    self.sniffed.push((from, to, d.envelope.clone()));
                }
                if !self.is_up(to) {
                    // The dial fails: the sender learns at once (nothing to learn for an
                    // ephemeral content).
                    self.dropped_packets += 1;
                    if !d.ephemeral {
                        let input =
                            Input::Delivery { id: d.id, result: DeliveryResult::Unreachable };
                        self.nodes[from].engine().handle_input(now, input).unwrap();
                    }
                    return;
                }
                self.schedule(Packet::Envelope { from, to, id: d.id, bytes: d.envelope });
            }
            Output::FetchPreKeys { user, .. } => {
                if let Some(to) = self.index_of(&user) {
                    self.schedule(Packet::BundleRequest { from, to });
                }
            }
            Output::Reply { token, reply } => {
                let Some((origin, id)) = self.tokens.remove(&token.0) else { return };
                let packet = match reply {
                    Reply::Ack(ack) => {
                        Packet::Ack { to: origin, id: id.unwrap_or(ack.id), result: ack.result }
                    }
                    Reply::PreKeys(PreKeyResponse::Bundle(bundle)) => Packet::Bundle {
                        to: origin,
                        user: self.nodes[from].user,
                        result: Ok(bundle),
                    },
                    _ => Packet::Bundle {
                        to: origin,
                        user: self.nodes[from].user,
                        result: Err(FetchError::NotFound),
                    },
                };
                self.schedule(packet);
            }
            Output::Publish(p) => {
                self.published.push(p.envelope.clone());
                let mut unreached = Vec::new();
                for member in &p.members {
                    match self.index_of(member) {
                        Some(to)
                            if self.is_up(to) && self.nodes[to].subscribed.contains(&p.tag) =>
                        {
                            self.schedule(Packet::Gossip { to, bytes: p.envelope.clone() });
                        }
                        _ => unreached.push(*member),
                    }
                }
                if !p.ephemeral {
                    let input = Input::GroupPublished { id: p.id, unreached };
                    self.nodes[from].engine().handle_input(now, input).unwrap();
                }
            }
            Output::Subscribe { tag, .. } => {
                self.nodes[from].subscribed.insert(tag);
            }
            Output::Unsubscribe { tag } => {
                self.nodes[from].subscribed.remove(&tag);
            }
            Output::Validation { verdict, .. } => self.nodes[from].verdicts.push(verdict),
            Output::Event(event) => self.record(from, event),
        }
    }

    fn deliver(&mut self, packet: Packet) {
        let now = self.now;
        let to = packet.to();
        if !self.is_up(to) {
            self.dropped_packets += 1;
            return;
        }
        self.delivered_packets += 1;
        let input = match packet {
            Packet::Envelope { from, to, id, bytes } => {
                self.envelopes.push((from, to));
                let via = Via::Direct(self.nodes[from].user);
                let reply = Some(self.token(from, Some(id)));
                Input::Envelope { bytes, via, reply }
            }
            Packet::Ack { id, result, .. } => {
                Input::Delivery { id, result: DeliveryResult::Acked(result) }
            }
            Packet::BundleRequest { from, .. } => {
                Input::PreKeyRequest { reply: self.token(from, None) }
            }
            Packet::Bundle { user, result, .. } => Input::PreKeyBundle { user, result },
            Packet::Gossip { bytes, .. } => {
                self.next_token += 1;
                Input::GroupMessage { bytes, token: ValidationToken(self.next_token) }
            }
        };
        self.nodes[to].engine().handle_input(now, input).unwrap();
    }

    fn record(&mut self, node: usize, event: Event) {
        let n = &mut self.nodes[node];
        match &event {
            Event::Message(m) => {
                let text = match &m.body {
                    Some(kith_protocol::content::Body::Text(t)) => t.body.clone(),
                    _ => String::new(),
                };
                let entry = n.received.entry(m.id).or_insert((0, text));
                entry.0 += 1;
            }
            Event::StatusChanged { id, status, .. } => {
                n.statuses.insert(*id, *status);
            }
            _ => {}
        }
        n.events.push(event);
    }
}

/// A small tmpfs for full-disk tests, mounted under the system's temporary directory and
/// unmounted (and removed) on drop. Mounting needs root, as the network-namespace tests do:
/// [`SmallDisk::mount`] says why it could not.
#[derive(Debug)]
pub struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` bytes.
    pub fn mount(bytes: u64) -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kith-small-disk-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "kith-test"])
            .arg(&path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&path);
            return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { path })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Fills it up; returns the filler file to delete to free it again.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut filler = std::fs::File::create(&path).unwrap();
        let block = [0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        // The last partial block too.
        while filler.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
