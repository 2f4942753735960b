//! A deterministic simulated network of engines on virtual time, with loss, delay (hence
//! reordering), duplication and crash/restart of nodes. Used by the engine tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod envelope_target;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use kith_core::engine::{
    Command, CommandResult, Config, DeliveryResult, Engine, Event, FetchError, Input, Output,
    Reply, ReplyToken, Via,
};
use kith_core::model::MessageStatus;
use kith_core::store::{Backend, MemoryBackend, RawWrite, Store, StoreError, Tree};
use kith_protocol::direct::AckResult;
use kith_protocol::prekey::{PreKeyBundle, PreKeyResponse};
use kith_protocol::{MessageId, UserId};
use rand::RngExt;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

pub const T0: u64 = 1_700_000_000_000;

/// A backend that models a disk with a write cache: commits are visible at once, but only a
/// flush makes them survive a crash. `crash()` throws away everything since the last flush.
#[derive(Clone, Default)]
pub struct CrashableBackend {
    inner: Arc<Mutex<(MemoryBackend, Vec<RawWrite>)>>,
}

impl CrashableBackend {
    /// Loses every write not flushed.
    pub fn crash(&self) {
        self.inner.lock().unwrap().1.clear();
    }
}

impl Backend for CrashableBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let guard = self.inner.lock().unwrap();
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
        let guard = self.inner.lock().unwrap();
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
        self.inner.lock().unwrap().1.extend_from_slice(writes);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut guard = self.inner.lock().unwrap();
        let pending = std::mem::take(&mut guard.1);
        guard.0.apply(&pending)
    }

    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        let guard = self.inner.lock().unwrap();
        let mut all: BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>> =
            guard.0.dump()?.into_iter().map(|(t, k, v)| ((t, k), v)).collect();
        for (t, k, v) in &guard.1 {
            all.insert((*t, k.clone()), v.clone());
        }
        Ok(all.into_iter().filter_map(|((t, k), v)| v.map(|v| (t, k, Some(v)))).collect())
    }
}

/// Where a node keeps its state.
pub enum Storage {
    /// In memory, with simulated crashes.
    Crashable(CrashableBackend),
    /// A real sled database (crashes are not simulated).
    Sled(std::path::PathBuf),
}

impl Storage {
    fn store(&self) -> Store {
        match self {
            Storage::Crashable(b) => Store::new(Box::new(b.clone())),
            // A store just dropped releases its lock in the background: wait for it.
            Storage::Sled(path) => loop {
                match Store::open(path) {
                    Err(StoreError::Locked) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    result => break result.unwrap(),
                }
            },
        }
    }
}

pub struct Node {
    pub engine: Option<Engine<ChaCha20Rng>>,
    pub storage: Storage,
    pub user: UserId,
    pub seed: u64,
    /// Every incoming message event: id → (times seen, text).
    pub received: HashMap<MessageId, (usize, String)>,
    pub statuses: HashMap<MessageId, MessageStatus>,
    pub events: Vec<Event>,
    pub online: bool,
}

impl Node {
    pub fn engine(&mut self) -> &mut Engine<ChaCha20Rng> {
        self.engine.as_mut().expect("node is running")
    }
}

#[derive(Clone, Debug)]
enum Packet {
    Envelope { from: usize, to: usize, bytes: Vec<u8> },
    Ack { to: usize, id: MessageId, result: AckResult },
    BundleRequest { from: usize, to: usize },
    Bundle { to: usize, user: UserId, result: Result<Box<PreKeyBundle>, FetchError> },
}

#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub loss: f64,
    pub duplication: f64,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Faults {
    pub const NONE: Faults =
        Faults { loss: 0.0, duplication: 0.0, min_delay_ms: 1, max_delay_ms: 1 };
}

pub struct Net {
    pub now: u64,
    pub nodes: Vec<Node>,
    pub faults: Faults,
    rng: ChaCha20Rng,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    packets: HashMap<usize, Packet>,
    next_packet: usize,
    tokens: HashMap<u64, (usize, Option<MessageId>)>,
    next_token: u64,
    pub delivered_packets: u64,
    pub dropped_packets: u64,
    /// Every envelope that left a node: (from, to, bytes).
    pub sniffed: Vec<(usize, usize, Vec<u8>)>,
    pub sniff: bool,
}

impl Net {
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
            sniffed: Vec::new(),
            sniff: false,
        };
        for _ in 0..nodes {
            net.add_node(Storage::Crashable(CrashableBackend::default()));
        }
        net
    }

    /// A network of nodes on sled databases in `dirs`, without faults.
    pub fn with_sled(dirs: &[&std::path::Path], seed: u64) -> Self {
        let mut net = Net::new(0, Faults::NONE, seed);
        for dir in dirs {
            net.add_node(Storage::Sled(dir.to_path_buf()));
        }
        net
    }

    fn add_node(&mut self, storage: Storage) {
        let node_seed = self.rng.next_u64();
        let engine = Engine::create(
            storage.store(),
            ChaCha20Rng::seed_from_u64(node_seed),
            self.now,
            Config::default(),
        )
        .unwrap();
        let user = engine.user_id();
        {
            let net = &mut *self;
            net.nodes.push(Node {
                engine: Some(engine),
                storage,
                user,
                seed: node_seed,
                received: HashMap::new(),
                statuses: HashMap::new(),
                events: Vec::new(),
                online: true,
            });
        }
    }

    pub fn index_of(&self, user: &UserId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.user == user)
    }

    /// Makes every node a named contact of every other.
    pub fn introduce_all(&mut self) {
        let users: Vec<UserId> = self.nodes.iter().map(|n| n.user).collect();
        for i in 0..self.nodes.len() {
            for (j, user) in users.iter().enumerate() {
                if i != j {
                    let now = self.now;
                    self.nodes[i]
                        .engine()
                        .handle_command(
                            now,
                            Command::AddContact {
                                user: *user,
                                name: format!("n{j}"),
                                relays: vec![],
                            },
                        )
                        .unwrap();
                }
            }
        }
    }

    pub fn send_text(&mut self, from: usize, to: usize, text: &str) -> MessageId {
        let to = self.nodes[to].user;
        let now = self.now;
        match self.nodes[from]
            .engine()
            .handle_command(now, Command::SendText { to, text: text.into(), reply_to: None })
            .unwrap()
        {
            CommandResult::Queued(id) => id,
            other => panic!("a send queues a message, not {other:?}"),
        }
    }

    pub fn command(&mut self, node: usize, command: Command) -> CommandResult {
        let now = self.now;
        self.nodes[node].engine().handle_command(now, command).unwrap()
    }

    fn schedule(&mut self, packet: Packet) {
        let faults = self.faults;
        if self.rng.random_bool(faults.loss) {
            self.dropped_packets += 1;
            return;
        }
        let copies = if self.rng.random_bool(faults.duplication) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.rng.random_range(faults.min_delay_ms..=faults.max_delay_ms);
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

    /// Flushes every running node and routes its outputs.
    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(engine) = self.nodes[i].engine.as_mut() else { continue };
            engine.flush().unwrap();
            let mut outputs = Vec::new();
            while let Some(o) = engine.poll_output() {
                outputs.push(o);
            }
            for output in outputs {
                match output {
                    Output::Deliver(d) => {
                        if let Some(to) = self.index_of(&d.to) {
                            if self.sniff {
                                self.sniffed.push((i, to, d.envelope.clone()));
                            }
                            self.schedule(Packet::Envelope { from: i, to, bytes: d.envelope });
                        }
                    }
                    Output::FetchPreKeys { user, .. } => {
                        if let Some(to) = self.index_of(&user) {
                            self.schedule(Packet::BundleRequest { from: i, to });
                        }
                    }
                    Output::Reply { token, reply } => {
                        let Some((origin, id)) = self.tokens.remove(&token.0) else { continue };
                        match reply {
                            Reply::Ack(ack) => {
                                let id = id.unwrap_or(ack.id);
                                self.schedule(Packet::Ack { to: origin, id, result: ack.result });
                            }
                            Reply::PreKeys(PreKeyResponse::Bundle(bundle)) => {
                                let user = self.nodes[i].user;
                                self.schedule(Packet::Bundle {
                                    to: origin,
                                    user,
                                    result: Ok(bundle),
                                });
                            }
                            _ => {
                                let user = self.nodes[i].user;
                                self.schedule(Packet::Bundle {
                                    to: origin,
                                    user,
                                    result: Err(FetchError::NotFound),
                                });
                            }
                        }
                    }
                    Output::Event(event) => self.record(i, event),
                    // This simulation has no groups (their tests live with the engine).
                    _ => {}
                }
            }
        }
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

    fn deliver(&mut self, packet: Packet) {
        let now = self.now;
        let to = match &packet {
            Packet::Envelope { to, .. }
            | Packet::Ack { to, .. }
            | Packet::BundleRequest { to, .. }
            | Packet::Bundle { to, .. } => *to,
        };
        if !self.nodes[to].online || self.nodes[to].engine.is_none() {
            self.dropped_packets += 1;
            return;
        }
        self.delivered_packets += 1;
        let input = match packet {
            Packet::Envelope { from, to: _, bytes } => {
                let via = Via::Direct(self.nodes[from].user);
                let reply = Some(self.token(from, None));
                Input::Envelope { bytes, via, reply }
            }
            Packet::Ack { id, result, .. } => {
                Input::Delivery { id, result: DeliveryResult::Acked(result) }
            }
            Packet::BundleRequest { from, .. } => {
                Input::PreKeyRequest { reply: self.token(from, None) }
            }
            Packet::Bundle { user, result, .. } => Input::PreKeyBundle { user, result },
        };
        self.nodes[to].engine().handle_input(now, input).unwrap();
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
                .filter_map(|n| n.engine.as_ref().and_then(|e| e.poll_timeout()))
                .filter(|&t| {
                    // Only timers that matter: a node with an empty outbox idles until upkeep.
                    t <= until
                })
                .min();
            let busy = self
                .nodes
                .iter()
                .any(|n| n.online && n.engine.as_ref().is_some_and(|e| e.outbox_len() > 0));
            let next = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p.min(t),
                (Some(p), None) => p,
                (None, Some(t)) if busy => t,
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
            let now = self.now;
            for n in self.nodes.iter_mut().filter(|n| n.online) {
                if let Some(engine) = n.engine.as_mut()
                    && engine.poll_timeout().is_some_and(|t| t <= now)
                {
                    engine.handle_input(now, Input::Timeout).unwrap();
                }
            }
        }
    }

    /// Advances virtual time by `ms`, processing whatever happens meanwhile.
    pub fn advance(&mut self, ms: u64) {
        let until = self.now + ms;
        self.run_until_quiet(until);
        self.now = self.now.max(until);
    }

    /// Crashes a node: it loses everything not flushed and stops.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node].engine = None;
        match &self.nodes[node].storage {
            Storage::Crashable(backend) => backend.crash(),
            Storage::Sled(_) => panic!("crashes are simulated on in-memory nodes only"),
        }
    }

    /// Stops a node cleanly (everything it acknowledged is flushed already).
    pub fn stop(&mut self, node: usize) {
        if let Some(mut e) = self.nodes[node].engine.take() {
            e.flush().unwrap();
        }
    }

    /// Restarts a stopped or crashed node from its store. The RNG is reseeded (a real restart
    /// draws fresh OS entropy).
    pub fn restart(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.seed = n.seed.wrapping_add(0x9e37_79b9);
        let engine = Engine::open(
            n.storage.store(),
            ChaCha20Rng::seed_from_u64(n.seed),
            self.now,
            Config::default(),
        )
        .unwrap();
        n.engine = Some(engine);
    }

    pub fn packets_in_flight(&self) -> usize {
        self.queue.len()
    }
}
