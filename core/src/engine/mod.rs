//! The sans-IO engine: Kith's protocol logic as a deterministic state machine.
//!
//! The engine never touches a socket or a clock. The driver (kith-node, or an app's own
//! transport) feeds it [`Input`]s and [`Command`]s with the current time, and carries out the
//! [`Output`]s it returns. Randomness comes from the RNG the engine was built with.
//!
//! # Drain order
//!
//! 1. Feed any number of inputs: [`Engine::handle_input`], [`Engine::handle_command`]. Each
//!    commits its state changes to the store (not yet durable) and queues outputs.
//! 2. Call [`Engine::flush`]: it sends the turn's coalesced delivery receipts (those for group
//!    messages once [`GROUP_RECEIPT_DELAY_MS`] has passed), makes every commit durable with
//!    **one** fsync (group commit), and releases the queued outputs.
//! 3. Drain [`Engine::poll_output`] until `None` and carry the outputs out.
//! 4. Sleep until [`Engine::poll_timeout`] (or the next input), then feed [`Input::Timeout`].
//!
//! Outputs only become visible after the state that produced them is on disk, so an envelope
//! never leaves before the ratchet state that encrypted it is durable (no key or nonce reuse
//! after a crash), and an acknowledgement never promises data that a crash could lose. The one
//! exception is [`Output::Validation`]: a verdict on someone else's gossip message promises
//! nothing about our state, so it is ready at once, and a driver may take it before the flush
//! with [`Engine::take_verdicts`] (gossip then forwards a valid message without waiting for
//! our fsync).
//!
//! # Example: a driver for two engines
//!
//! An app with its own transport does what this loop does with its network: hand envelopes,
//! prekey requests and their answers to the other side, and acknowledgements back.
//!
//! ```
//! use kith_core::engine::*;
//! use kith_core::store::Store;
//! use kith_protocol::prekey::PreKeyResponse;
//!
//! let now = 1_700_000_000_000;
//! let mut alice = Engine::create(Store::memory(), rand::rng(), now, Config::default())?;
//! let mut bob = Engine::create(Store::memory(), rand::rng(), now, Config::default())?;
//! let bob_id = bob.user_id();
//! alice.handle_command(now, Command::AddContact { user: bob_id, name: "bob".into(), relays: vec![] })?;
//! let CommandResult::Queued(id) =
//!     alice.handle_command(now, Command::SendText { to: bob_id, text: "hello".into(), reply_to: None })?
//! else { unreachable!() };
//!
//! let mut received = None;
//! let mut pending: Vec<(bool, Output)> = Vec::new(); // (from Alice?, output)
//! loop {
//!     for (from_alice, engine) in [(true, &mut alice), (false, &mut bob)] {
//!         engine.flush()?; // one fsync per turn, then the outputs are safe to act on
//!         while let Some(output) = engine.poll_output() {
//!             pending.push((from_alice, output));
//!         }
//!     }
//!     let Some((from_alice, output)) = pending.pop() else { break };
//!     let (me, peer) = if from_alice { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
//!     match output {
//!         Output::Deliver(d) => {
//!             let via = Via::Direct(me.user_id());
//!             peer.handle_input(now, Input::Envelope { bytes: d.envelope, via, reply: Some(ReplyToken(0)) })?
//!         }
//!         Output::FetchPreKeys { .. } => peer.handle_input(now, Input::PreKeyRequest { reply: ReplyToken(1) })?,
//!         Output::Reply { reply: Reply::Ack(ack), .. } => {
//!             peer.handle_input(now, Input::Delivery { id: ack.id, result: DeliveryResult::Acked(ack.result) })?
//!         }
//!         Output::Reply { reply: Reply::PreKeys(PreKeyResponse::Bundle(bundle)), .. } => {
//!             let user = me.user_id();
//!             peer.handle_input(now, Input::PreKeyBundle { user, result: Ok(bundle) })?
//!         }
//!         Output::Event(Event::Message(m)) => received = Some(m.id),
//!         _ => {}
//!     }
//! }
//! assert_eq!(received, Some(id));
//! // Bob's delivery receipt came back: Alice sees the message as delivered.
//! assert_eq!(alice.message(&id)?.unwrap().status, kith_core::model::MessageStatus::Delivered);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod group;
mod group_membership;
#[cfg(test)]
mod group_tests;
mod outbox;
mod prekey_maintenance;
mod receive;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use kith_protocol::content::{
    Body, Content, Delete, Edit, Presence, Profile, Reaction, Receipt, ReceiptKind, Text,
};
use kith_protocol::direct::{AckResult, RejectReason};
use kith_protocol::envelope::Envelope;
use kith_protocol::limits::MAX_RECEIPT_IDS;
use kith_protocol::prekey::PreKeyBundle;
use kith_protocol::{MessageId, UnixMillis, UserId};

use crate::fingerprint::SafetyNumber;
use crate::identity::{IdentityKeyPair, PublicIdentity, peer_id_of};
use crate::model::{Contact, DeliveryFailure, Direction, Message, MessageReaction, MessageStatus};
use crate::prekeys::verify_bundle;
use crate::session::{PeerSessions, Session};
use crate::store::records::{MessageRecord, OutboxKind, OutboxRecord};
use crate::store::{Batch, Store, StoreError};

pub use group::{
    GROUP_RECEIPT_DELAY_MS, GROUP_RECEIPT_TIMEOUT_MS, MAX_PENDING_AUTHENTICATED_PER_SENDER,
    MAX_PENDING_UNAUTHENTICATED_PER_SENDER, PENDING_AUTHENTICATED_TTL_MS,
    PENDING_UNAUTHENTICATED_TTL_MS,
};
pub use group_membership::{
    FOREIGN_CHANGE_TTL_MS, MAX_STRANGER_GROUPS, MAX_WAITING_CHANGES_PER_AUTHOR,
    MAX_WAITING_CHANGES_PER_GROUP, MAX_WAITING_FOREIGN_GROUPS, SYNC_INTERVAL_MS,
    WAITING_CHANGE_TTL_MS,
};
pub use outbox::{
    ATTEMPT_TIMEOUT_MS, MAX_OUTBOX, OUTBOX_DEADLINE_MS, RETRY_INITIAL_MS, RETRY_MAX_MS, SEND_WINDOW,
};
pub use prekey_maintenance::{MAINTENANCE_INTERVAL_MS, SEEN_RETENTION_MS};
pub use types::*;

use outbox::{Outbox, backoff};

/// Sessions kept decoded in memory (the store is the truth; this only saves decoding).
const SESSION_CACHE: usize = 256;

/// Changed identity keys remembered (in memory) for the user to review. A refused initial
/// message writes nothing to the store; its sender sends it again until it is answered.
pub const MAX_PENDING_IDENTITIES: usize = 256;

/// Settings of an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Send read receipts when messages are marked read.
    pub read_receipts: bool,
    /// Send typing indicators.
    pub typing_indicators: bool,
    /// Share presence and last-seen time.
    pub share_presence: bool,
    /// Accept messages from users who are not contacts (message requests).
    pub accept_unknown: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            read_receipts: true,
            typing_indicators: true,
            share_presence: true,
            accept_unknown: true,
        }
    }
}

/// The two clocks an engine is given at every input.
///
/// Wall-clock time stamps what people see and what is stored (a message's time, a prekey's
/// age, a record's issue time); monotonic time drives timers (retries, receipt delays,
/// maintenance), so that a step of the wall clock neither stalls nor rushes them. Both are
/// milliseconds; the monotonic clock may start anywhere but never goes back. An app that has
/// only one clock passes it for both (`Now::from(wall)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the Unix epoch, by the wall clock.
    pub wall: UnixMillis,
    /// Milliseconds of a monotonic clock.
    pub mono: u64,
}

impl From<UnixMillis> for Now {
    /// Both clocks at `wall` (tests and apps without a monotonic clock).
    fn from(wall: UnixMillis) -> Self {
        Self { wall, mono: wall }
    }
}

/// A prekey bundle fetch in progress or waiting to be retried.
struct Fetch {
    attempts: u32,
    /// When to (re)send the request (monotonic).
    due: u64,
}

/// The engine. See the [module docs](self) for the drain order.
pub struct Engine<R> {
    identity: IdentityKeyPair,
    store: Store,
    rng: R,
    config: Config,
    /// The latest wall-clock time given (never goes back).
    now: UnixMillis,
    /// The latest monotonic time given: timers run on it.
    mono: u64,
    next_seq: u64,
    outbox: Outbox,
    sessions: HashMap<UserId, PeerSessions>,
    fetches: HashMap<UserId, Fetch>,
    /// Delivery receipts owed, per peer, sent (coalesced) at the next flush.
    pending_receipts: BTreeMap<UserId, Vec<MessageId>>,
    /// Delivery receipts owed for group messages, per author, sent (coalesced) at the first
    /// flush from `group_receipts_due` (monotonic) on.
    group_receipts: BTreeMap<UserId, BTreeSet<MessageId>>,
    group_receipts_due: Option<u64>,
    /// Outputs waiting for the next flush.
    held: VecDeque<Output>,
    /// Outputs ready to be carried out.
    ready: VecDeque<Output>,
    /// Commits not yet flushed.
    dirty: bool,
    /// When maintenance is next due (monotonic).
    next_maintenance: u64,
    /// All one-time prekeys below this id have been handed out.
    opk_cursor: u32,
    /// Every group we know and its replayed membership.
    groups: group::GroupMap,
    /// Group tag → id, for incoming group messages.
    tags: group::TagMap,
    /// When we may next ask a member for a group's changes, or answer it: (group, peer,
    /// answer?) → time.
    syncs: HashMap<(kith_protocol::GroupId, UserId, bool), UnixMillis>,
    /// New identity keys that peers' refused initial messages carried, for the user to review.
    pending_identities: BTreeMap<UserId, kith_protocol::prekey::IdentityBinding>,
}

impl<R> std::fmt::Debug for Engine<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("user", &self.identity.user_id())
            .field("outbox", &self.outbox.len())
            .finish_non_exhaustive()
    }
}

impl<R: rand_core::CryptoRng> Engine<R> {
    /// Creates a new identity in an empty store and opens an engine on it.
    pub fn create(
        mut store: Store,
        mut rng: R,
        now: impl Into<Now>,
        config: Config,
    ) -> Result<Self, OpenError> {
        let now = now.into();
        if store.identity()?.is_some() {
            return Err(OpenError::IdentityExists);
        }
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut batch = Batch::new();
        batch.put_identity(&identity, now.wall);
        store.commit(batch)?;
        store.flush()?;
        Self::open(store, rng, now, config)
    }

    /// Opens an engine on a store that holds an identity: loads the outbox (everything in it is
    /// due at once), tops up prekeys and re-requests bundles that messages still wait for.
    pub fn open(
        store: Store,
        rng: R,
        now: impl Into<Now>,
        config: Config,
    ) -> Result<Self, OpenError> {
        let Now { wall: now, mono } = now.into();
        let identity = store.identity()?.ok_or(OpenError::NoIdentity)?;
        let next_seq = store.next_seq()?;
        let mut engine = Self {
            identity,
            store,
            rng,
            config,
            now,
            mono,
            next_seq,
            outbox: Outbox::default(),
            sessions: HashMap::new(),
            fetches: HashMap::new(),
            pending_receipts: BTreeMap::new(),
            group_receipts: BTreeMap::new(),
            group_receipts_due: None,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            dirty: false,
            next_maintenance: mono,
            opk_cursor: 0,
            groups: HashMap::new(),
            tags: HashMap::new(),
            syncs: HashMap::new(),
            pending_identities: BTreeMap::new(),
        };
        engine.load_groups()?;
        for record in engine.store.outbox()? {
            let due = record.envelope.is_some().then_some(mono);
            engine.outbox.insert(record, due);
        }
        engine.maintain(now)?;
        for peer in engine.outbox.peers_with_unsealed() {
            engine.pump(peer)?;
        }
        engine.flush()?;
        Ok(engine)
    }

    // ---------------------------------------------------------------- queries

    /// Our user id.
    pub fn user_id(&self) -> UserId {
        self.identity.user_id()
    }

    /// Our identity.
    pub fn identity(&self) -> &IdentityKeyPair {
        &self.identity
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store (read access, e.g. for history paging).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        Ok(self.store.contacts()?.into_iter().map(|c| self.with_pending_identity(c)).collect())
    }

    /// A contact by id.
    pub fn contact(&self, user: &UserId) -> Result<Option<Contact>, StoreError> {
        Ok(self.store.contact(user)?.map(|c| self.with_pending_identity(c)))
    }

    /// A contact by the name we gave it.
    pub fn contact_by_name(&self, name: &str) -> Result<Option<Contact>, StoreError> {
        Ok(self.contacts()?.into_iter().find(|c| c.name.as_deref() == Some(name)))
    }

    /// `contact` with a changed identity key that only memory holds (see
    /// [`MAX_PENDING_IDENTITIES`]).
    fn with_pending_identity(&self, mut contact: Contact) -> Contact {
        if contact.pending_identity.is_none() {
            contact.pending_identity = self.pending_identities.get(&contact.user).copied();
        }
        contact
    }

    /// Remembers (in memory only) a new identity key a peer presented, and tells the app once.
    fn note_pending_identity(
        &mut self,
        peer: UserId,
        binding: kith_protocol::prekey::IdentityBinding,
    ) {
        if self.pending_identities.get(&peer) == Some(&binding) {
            return;
        }
        if self.pending_identities.len() >= MAX_PENDING_IDENTITIES
            && !self.pending_identities.contains_key(&peer)
        {
            return;
        }
        self.pending_identities.insert(peer, binding);
        self.event(Event::IdentityChanged { peer, identity: binding });
    }

    /// Up to `limit` messages with `peer` before sequence number `before` (all if `None`),
    /// oldest first.
    pub fn history(
        &self,
        peer: &UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.conversation(&peer.0, before, limit)
    }

    /// A conversation's messages (a peer's or a group's key range), oldest first.
    fn conversation(
        &self,
        key: &[u8; 32],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut records = self.store.history(key, before, limit)?;
        records.reverse();
        records.iter().map(MessageRecord::to_message).collect()
    }

    /// Adds a received text or attachment to `batch` as the next message of its conversation;
    /// returns the event that announces it.
    #[allow(clippy::too_many_arguments)]
    fn store_incoming(
        &mut self,
        now: UnixMillis,
        sender: UserId,
        group: Option<kith_protocol::GroupId>,
        id: MessageId,
        plaintext: Vec<u8>,
        sent_at: UnixMillis,
        batch: &mut Batch,
    ) -> Result<Event, StoreError> {
        let record = MessageRecord {
            id,
            peer: sender,
            group,
            direction: Direction::Incoming,
            content: Some(plaintext),
            stored_at: now,
            status: MessageStatus::Received,
            reactions: Vec::new(),
            edited_at: None,
            sent_at,
            seq: self.take_seq(),
            receipts: Vec::new(),
        };
        batch.put_message(&record);
        batch.put_seq(self.next_seq);
        Ok(Event::Message(Box::new(record.to_message()?)))
    }

    /// A message by id.
    pub fn message(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        self.store.message(id)?.map(|r| r.to_message()).transpose()
    }

    /// The safety number with `peer`, once their identity is known.
    pub fn safety_number(&self, peer: &UserId) -> Result<Option<SafetyNumber>, StoreError> {
        let Some(binding) = self.store.contact(peer)?.and_then(|c| c.identity) else {
            return Ok(None);
        };
        // The binding was verified before it was pinned.
        let theirs = PublicIdentity {
            user: binding.user,
            dh_key: binding.dh_key,
            signature: binding.signature,
        };
        Ok(Some(SafetyNumber::new(&self.identity.public(), &theirs)))
    }

    /// Our signed user record for the DHT, with our current signed prekey and `relays`
    /// (binary multiaddrs).
    pub fn user_record(
        &self,
        relays: Vec<Vec<u8>>,
    ) -> Result<kith_protocol::prekey::UserRecord, StoreError> {
        let spk = match self.store.current_signed_prekey_id()? {
            Some(id) => self.store.signed_prekey(id)?,
            None => None,
        }
        .ok_or(StoreError::Corrupt { record: "signed prekey" })?;
        Ok(crate::record::sign_record(&self.identity, spk.public(), relays, self.now))
    }

    /// Messages waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    // ---------------------------------------------------------------- driving

    /// Feeds one input. Errors are reported through outputs (a refused envelope is acknowledged
    /// with its reason); the returned error is only for store failures.
    pub fn handle_input(&mut self, now: impl Into<Now>, input: Input) -> Result<(), StoreError> {
        let now = self.tick(now.into());
        match input {
            Input::Envelope { bytes, via, reply } => self.on_envelope(now, &bytes, via, reply),
            Input::Delivery { id, result } => self.on_delivery(id, result),
            Input::PreKeyBundle { user, result } => self.on_bundle(now, user, result),
            Input::PreKeyRequest { reply } => self.serve_bundle(now, reply),
            Input::GroupMessage { bytes, token } => self.on_group_gossip(now, &bytes, token),
            Input::GroupPublished { id, unreached } => self.on_group_published(id, &unreached),
            Input::PeerReachable { user } => {
                for id in self.outbox.for_peer(&user) {
                    if self.outbox.get(&id).is_some_and(|e| e.record.envelope.is_some()) {
                        self.outbox.reschedule(&id, Some(self.mono), false);
                    }
                }
                Ok(())
            }
            Input::Timeout => self.on_timeout(now),
        }
    }

    /// Carries out a user command.
    pub fn handle_command(
        &mut self,
        now: impl Into<Now>,
        command: Command,
    ) -> Result<CommandResult, CommandError> {
        let now = self.tick(now.into());
        match command {
            Command::AddContact { user, name, relays } => self.add_contact(now, user, name, relays),
            Command::RemoveContact { user } => {
                self.known_contact(&user)?;
                let mut batch = Batch::new();
                batch.delete_contact(&user);
                batch.put_sessions(&user, &PeerSessions::default());
                self.commit(batch)?;
                self.sessions.remove(&user);
                Ok(CommandResult::Done)
            }
            Command::VerifyContact { user } => {
                let mut contact = self.known_contact(&user)?;
                if contact.identity.is_none() {
                    return Err(CommandError::UnknownContact);
                }
                contact.verified = true;
                self.save_contact(contact)?;
                Ok(CommandResult::Done)
            }
            Command::TrustIdentity { user } => self.trust_identity(user),
            Command::Block { user, blocked } => {
                let mut contact = self.known_contact(&user)?;
                contact.blocked = blocked;
                self.save_contact(contact)?;
                Ok(CommandResult::Done)
            }
            Command::SendText { to, text, reply_to } => {
                let body = Body::Text(Text { body: text, reply_to });
                self.queue(now, to, body, OutboxKind::Message).map(CommandResult::Queued)
            }
            Command::SendMedia { to, manifest } => self
                .queue(now, to, Body::Media(*manifest), OutboxKind::Message)
                .map(CommandResult::Queued),
            Command::React { to, target, emoji, remove } => {
                self.react(now, to, target, emoji, remove)
            }
            Command::Edit { to, target, text } => self.edit(now, to, target, text),
            Command::Delete { to, target } => self.delete(now, to, target),
            Command::MarkRead { peer, ids } => self.mark_read(now, peer, ids),
            Command::Typing { to, state } => {
                if self.config.typing_indicators {
                    self.send_ephemeral(now, to, Body::Typing(state))?;
                }
                Ok(CommandResult::Done)
            }
            Command::SetPresence { status } => {
                if self.config.share_presence {
                    let presence = Presence { status, last_seen: Some(now) };
                    for contact in self.store.contacts()? {
                        let pending = contact.pending_identity.is_some()
                            || self.pending_identities.contains_key(&contact.user);
                        if !contact.blocked && !pending {
                            self.send_ephemeral(now, contact.user, Body::Presence(presence))?;
                        }
                    }
                }
                Ok(CommandResult::Done)
            }
            Command::SetProfile { display_name } => self.set_profile(now, display_name),
            Command::CreateGroup { name, members } => self.create_group(now, name, members),
            Command::Group { group, command } => self.group_command(now, group, command),
        }
    }

    /// Sends the turn's receipts, makes all commits durable (one fsync) and releases the
    /// outputs queued so far. See the drain order in the [module docs](self).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let mut receipts = std::mem::take(&mut self.pending_receipts);
        if self.group_receipts_due.is_some_and(|due| due <= self.mono) {
            self.group_receipts_due = None;
            for (author, ids) in std::mem::take(&mut self.group_receipts) {
                receipts.entry(author).or_default().extend(ids);
            }
        }
        for (peer, ids) in receipts {
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                let body =
                    Body::Receipt(Receipt { kind: ReceiptKind::Delivered, ids: chunk.to_vec() });
                match self.queue(self.now, peer, body, OutboxKind::Control) {
                    Ok(_) => {}
                    Err(CommandError::Store(e)) => return Err(e),
                    // Blocked since, identity changed, outbox full: the receipt is not owed.
                    Err(_) => {}
                }
            }
        }
        if self.dirty {
            self.store.flush()?;
            self.dirty = false;
        }
        self.ready.extend(self.held.drain(..));
        Ok(())
    }

    /// Takes the gossip verdicts queued so far ([`Output::Validation`]) and nothing else: they
    /// promise nothing about our state, so a driver may report them before [`Engine::flush`]
    /// (gossip then forwards a valid message without waiting for our fsync). Verdicts not
    /// taken here come out of [`Engine::poll_output`] like any other output.
    pub fn take_verdicts(&mut self) -> Vec<(ValidationToken, Verdict)> {
        let mut verdicts = Vec::new();
        self.ready.retain(|output| match output {
            Output::Validation { token, verdict } => {
                verdicts.push((*token, *verdict));
                false
            }
            _ => true,
        });
        verdicts
    }

    /// The next output to carry out (only outputs whose state is durable).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// When (on the monotonic clock of [`Now::mono`]) the engine next wants
    /// [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<u64> {
        let fetch = self.fetches.values().map(|f| f.due).min();
        [self.outbox.next_due(), fetch, self.group_receipts_due, Some(self.next_maintenance)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Makes the next [`Engine::flush`] send every delivery receipt owed, without waiting for
    /// [`GROUP_RECEIPT_DELAY_MS`]: call it before shutting down.
    pub fn release_receipts(&mut self) {
        if self.group_receipts_due.is_some() {
            self.group_receipts_due = Some(self.mono);
        }
    }

    // ---------------------------------------------------------------- helpers

    /// Moves both clocks forward to `now` (never back); returns the wall-clock time.
    fn tick(&mut self, now: Now) -> UnixMillis {
        self.now = self.now.max(now.wall);
        self.mono = self.mono.max(now.mono);
        self.now
    }

    /// Monotonic time `ms` from now.
    fn after(&self, ms: u64) -> u64 {
        self.mono.saturating_add(ms)
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        self.store.commit(batch)?;
        self.dirty = true;
        Ok(())
    }

    fn event(&mut self, event: Event) {
        self.held.push_back(Output::Event(event));
    }

    fn random_id(&mut self) -> MessageId {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        MessageId(id)
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The sessions with `peer`, taken out of the cache (or loaded). Put them back with
    /// [`Self::cache_sessions`] only after the batch that stores them committed.
    fn take_sessions(&mut self, peer: &UserId) -> Result<PeerSessions, StoreError> {
        match self.sessions.remove(peer) {
            Some(s) => Ok(s),
            None => self.store.sessions(peer),
        }
    }

    fn cache_sessions(&mut self, peer: UserId, sessions: PeerSessions) {
        if self.sessions.len() >= SESSION_CACHE
            && let Some(evict) = self.sessions.keys().next().copied()
        {
            self.sessions.remove(&evict);
        }
        self.sessions.insert(peer, sessions);
    }

    fn has_session(&self, peer: &UserId) -> Result<bool, StoreError> {
        match self.sessions.get(peer) {
            Some(s) => Ok(s.current.is_some()),
            None => Ok(self.store.sessions(peer)?.current.is_some()),
        }
    }

    fn known_contact(&self, user: &UserId) -> Result<Contact, CommandError> {
        self.store.contact(user)?.ok_or(CommandError::UnknownContact)
    }

    fn save_contact(&mut self, contact: Contact) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.put_contact(&contact);
        self.commit(batch)?;
        self.event(Event::ContactChanged(Box::new(contact)));
        Ok(())
    }

    /// A peer we can address: a valid identity other than ourselves.
    fn check_peer(&self, user: &UserId) -> Result<(), CommandError> {
        if *user == self.user_id() {
            return Err(CommandError::SelfAddressed);
        }
        peer_id_of(user).map(|_| ()).map_err(|_| CommandError::InvalidUser)
    }

    fn add_contact(
        &mut self,
        now: UnixMillis,
        user: UserId,
        name: String,
        relays: Vec<String>,
    ) -> Result<CommandResult, CommandError> {
        self.check_peer(&user)?;
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > kith_protocol::limits::MAX_NAME_BYTES {
            return Err(CommandError::InvalidName);
        }
        if let Some(other) = self.contact_by_name(&name)?
            && other.user != user
        {
            return Err(CommandError::NameTaken(name));
        }
        let mut contact = self.store.contact(&user)?.unwrap_or_else(|| Contact::new(user, now));
        contact.name = Some(name);
        if !relays.is_empty() {
            contact.relays = relays;
        }
        self.save_contact(contact)?;
        Ok(CommandResult::Done)
    }

    fn trust_identity(&mut self, user: UserId) -> Result<CommandResult, CommandError> {
        let mut contact = self.known_contact(&user)?;
        let remembered = self.pending_identities.remove(&user);
        let Some(new) = contact.pending_identity.take().or(remembered) else {
            return Ok(CommandResult::Done);
        };
        contact.identity = Some(new);
        contact.verified = false;
        let mut batch = Batch::new();
        batch.put_contact(&contact);
        // Sessions with the old identity are useless now.
        batch.put_sessions(&user, &PeerSessions::default());
        self.commit(batch)?;
        self.sessions.remove(&user);
        self.event(Event::ContactChanged(Box::new(contact)));
        if !self.outbox.for_peer(&user).is_empty() {
            self.request_bundle(user);
        }
        Ok(CommandResult::Done)
    }

    // ---------------------------------------------------------------- sending

    /// Encrypts `plaintext` as envelope `id` to `to` on `session`, returning the envelope bytes.
    fn seal(
        &mut self,
        session: &mut Session,
        id: MessageId,
        to: UserId,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CommandError> {
        let kind = session
            .encrypt(&self.identity, &id, plaintext, &mut self.rng)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let envelope = Envelope { id, sender: self.identity.user_id(), recipient: to, kind };
        kith_protocol::encode(&envelope).map_err(|e| CommandError::InvalidMessage(e.to_string()))
    }

    /// The contact to send to, created (unnamed) if new; refused if blocked or unverified.
    fn sendable_contact(&mut self, now: UnixMillis, to: &UserId) -> Result<Contact, CommandError> {
        self.check_peer(to)?;
        let contact = self.store.contact(to)?.unwrap_or_else(|| Contact::new(*to, now));
        if contact.blocked {
            return Err(CommandError::Blocked);
        }
        if contact.pending_identity.is_some() || self.pending_identities.contains_key(to) {
            return Err(CommandError::IdentityChanged);
        }
        Ok(contact)
    }

    /// Queues a reliable message: stored before any IO, encrypted once it enters the peer's
    /// send window, then delivered and retried until acknowledged.
    fn queue(
        &mut self,
        now: UnixMillis,
        to: UserId,
        body: Body,
        kind: OutboxKind,
    ) -> Result<MessageId, CommandError> {
        let contact = self.sendable_contact(now, &to)?;
        if self.outbox.len() >= MAX_OUTBOX {
            return Err(CommandError::OutboxFull { max: MAX_OUTBOX });
        }
        let id = self.random_id();
        let content = Content { sent_at: now, body };
        let plaintext = kith_protocol::encode(&content)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;

        let seq = self.next_seq;
        let mut batch = Batch::new();
        if self.store.contact(&to)?.is_none() {
            batch.put_contact(&contact);
        }
        if kind == OutboxKind::Message {
            batch.put_message(&MessageRecord {
                id,
                peer: to,
                group: None,
                direction: Direction::Outgoing,
                content: Some(plaintext.clone()),
                stored_at: now,
                status: MessageStatus::Queued,
                reactions: Vec::new(),
                edited_at: None,
                sent_at: now,
                seq,
                receipts: Vec::new(),
            });
        }
        let record = OutboxRecord {
            id,
            to,
            seq,
            kind,
            content: (kind == OutboxKind::Control).then_some(plaintext),
            envelope: None,
            created_at: now,
        };
        batch.put_outbox(&record);
        batch.put_seq(seq + 1);
        self.commit(batch)?;
        self.take_seq();
        self.outbox.insert(record, None);
        self.pump(to)?;
        Ok(id)
    }

    /// Encrypts queued messages for `peer` in queue order while its send window has room (or
    /// asks for a prekey bundle if there is no session yet), then sends them.
    fn pump(&mut self, peer: UserId) -> Result<(), StoreError> {
        let room = SEND_WINDOW.saturating_sub(self.outbox.sealed_count(&peer));
        let waiting = self.outbox.unsealed(&peer, room);
        if waiting.is_empty() {
            return Ok(());
        }
        let mut sessions = self.take_sessions(&peer)?;
        let Some(session) = sessions.current.as_mut() else {
            self.cache_sessions(peer, sessions);
            self.request_bundle(peer);
            return Ok(());
        };
        let mut batch = Batch::new();
        let (mut sealed, mut cancelled) = (Vec::with_capacity(waiting.len()), Vec::new());
        for id in waiting {
            let Some(entry) = self.outbox.get(&id) else { continue };
            let mut record = entry.record.clone();
            let plaintext = match record.content.clone() {
                Some(content) => Some(content),
                None => self.store.message(&id)?.and_then(|m| m.content),
            };
            // A message deleted before it could be sent is not sent at all.
            let Some(plaintext) = plaintext else {
                batch.delete_outbox(record.seq);
                cancelled.push(id);
                continue;
            };
            let kind = session
                .encrypt(&self.identity, &id, &plaintext, &mut self.rng)
                .ok()
                .map(|kind| Envelope { id, sender: self.identity.user_id(), recipient: peer, kind })
                .and_then(|envelope| kith_protocol::encode(&envelope).ok());
            let Some(envelope) = kind else {
                // Cannot happen for content that passed validation; never loop on it.
                batch.delete_outbox(record.seq);
                cancelled.push(id);
                continue;
            };
            record.envelope = Some(envelope);
            batch.put_outbox(&record);
            sealed.push(record);
        }
        batch.put_sessions(&peer, &sessions);
        self.commit(batch)?;
        self.cache_sessions(peer, sessions);
        for id in cancelled {
            self.outbox.remove(&id);
        }
        for record in sealed {
            let id = record.id;
            self.outbox.update_record(record);
            self.attempt(id);
        }
        Ok(())
    }

    /// Emits one delivery attempt of an outbox entry and schedules the next one in case this
    /// one goes unanswered.
    fn attempt(&mut self, id: MessageId) {
        let Some(entry) = self.outbox.get(&id) else { return };
        let Some(envelope) = entry.record.envelope.clone() else { return };
        let to = entry.record.to;
        let relays = self.store.contact(&to).ok().flatten().map(|c| c.relays).unwrap_or_default();
        self.held.push_back(Output::Deliver(Delivery {
            id,
            to,
            envelope,
            ephemeral: false,
            relays,
        }));
        self.outbox.reschedule(&id, Some(self.after(ATTEMPT_TIMEOUT_MS)), true);
    }

    /// Sends a message that is neither stored nor retried (typing, presence), if a session
    /// exists. The session advance is still committed before the envelope leaves.
    fn send_ephemeral(
        &mut self,
        now: UnixMillis,
        to: UserId,
        body: Body,
    ) -> Result<(), CommandError> {
        let contact = self.sendable_contact(now, &to)?;
        let mut sessions = self.take_sessions(&to)?;
        let Some(session) = sessions.current.as_mut() else {
            self.cache_sessions(to, sessions);
            return Ok(());
        };
        let id = self.random_id();
        let plaintext = kith_protocol::encode(&Content { sent_at: now, body })
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let envelope = self.seal(session, id, to, &plaintext)?;
        let mut batch = Batch::new();
        batch.put_sessions(&to, &sessions);
        self.commit(batch)?;
        self.cache_sessions(to, sessions);
        self.held.push_back(Output::Deliver(Delivery {
            id,
            to,
            envelope,
            ephemeral: true,
            relays: contact.relays,
        }));
        Ok(())
    }

    fn request_bundle(&mut self, user: UserId) {
        let mono = self.mono;
        let fetch = self.fetches.entry(user).or_insert(Fetch { attempts: 0, due: mono });
        if fetch.due > mono && fetch.attempts > 0 {
            return; // in flight or backing off
        }
        fetch.attempts = fetch.attempts.saturating_add(1);
        fetch.due = mono.saturating_add(ATTEMPT_TIMEOUT_MS);
        let relays = self.store.contact(&user).ok().flatten().map(|c| c.relays).unwrap_or_default();
        self.held.push_back(Output::FetchPreKeys { user, relays });
    }

    fn on_bundle(
        &mut self,
        now: UnixMillis,
        user: UserId,
        result: Result<Box<PreKeyBundle>, FetchError>,
    ) -> Result<(), StoreError> {
        if self.outbox.unsealed(&user, 1).is_empty() || self.has_session(&user)? {
            // Nothing waits for a session (any more): a session arrived meanwhile, or the
            // messages were cancelled.
            self.fetches.remove(&user);
            return self.pump(user);
        }
        let verified = result.ok().and_then(|b| verify_bundle(&b, &user, now).ok());
        let Some(bundle) = verified else {
            // Unreachable, no bundle, or a forged/stale one: try again later.
            let jitter = self.rng.next_u32();
            let mono = self.mono;
            if let Some(fetch) = self.fetches.get_mut(&user) {
                fetch.due = mono.saturating_add(backoff(fetch.attempts, jitter));
            }
            return Ok(());
        };
        self.fetches.remove(&user);

        let mut contact = self.store.contact(&user)?.unwrap_or_else(|| Contact::new(user, now));
        let binding = bundle.identity.binding();
        if let Some(pinned) = contact.identity
            && pinned.dh_key != binding.dh_key
        {
            contact.pending_identity = Some(binding);
            let mut batch = Batch::new();
            batch.put_contact(&contact);
            self.commit(batch)?;
            self.event(Event::IdentityChanged { peer: user, identity: binding });
            for id in self.outbox.for_peer(&user) {
                self.fail(id, DeliveryFailure::IdentityChanged)?;
            }
            return Ok(());
        }

        let Ok(session) = Session::initiate(&self.identity, &bundle, now, &mut self.rng) else {
            // A low-order key in a validly signed bundle: the peer's own keys are broken.
            for id in self.outbox.for_peer(&user) {
                self.fail(id, DeliveryFailure::NoPreKeys)?;
            }
            return Ok(());
        };
        let mut sessions = self.take_sessions(&user)?;
        sessions.install(session);
        let mut batch = Batch::new();
        if contact.identity.is_none() {
            contact.identity = Some(binding);
            batch.put_contact(&contact);
        }
        batch.put_sessions(&user, &sessions);
        self.commit(batch)?;
        self.cache_sessions(user, sessions);
        self.pump(user)?;
        self.share_profile_with(now, user)
    }

    fn on_delivery(&mut self, id: MessageId, result: DeliveryResult) -> Result<(), StoreError> {
        let Some(entry) = self.outbox.get(&id) else { return Ok(()) };
        let (to, kind, resets, seq) =
            (entry.record.to, entry.record.kind, entry.resets, entry.record.seq);
        match result {
            DeliveryResult::Acked(AckResult::Accepted | AckResult::Duplicate)
            | DeliveryResult::Stored => {
                let mut batch = Batch::new();
                batch.delete_outbox(seq);
                let update = match kind {
                    OutboxKind::Message => self.set_status(&id, MessageStatus::Sent, &mut batch)?,
                    OutboxKind::GroupCopy => match entry.record.envelope.clone() {
                        Some(envelope) => self.group_copy_delivered(&envelope, &mut batch)?,
                        None => None,
                    },
                    OutboxKind::Control => None,
                };
                self.commit(batch)?;
                self.outbox.remove(&id);
                if let Some(event) = update {
                    self.event(event);
                }
                self.pump(to)?;
            }
            // A copy of a group message cannot be sealed again: refused is final.
            DeliveryResult::Acked(AckResult::Rejected(reason)) if kind == OutboxKind::GroupCopy => {
                match reason {
                    RejectReason::RateLimited | RejectReason::Unavailable => self.retry_later(id),
                    _ => self.fail(id, DeliveryFailure::Rejected(reason))?,
                }
            }
            DeliveryResult::Acked(AckResult::Rejected(reason)) => match reason {
                RejectReason::RateLimited
                | RejectReason::Unavailable
                | RejectReason::TooFarAhead => self.retry_later(id),
                // The key arrived too late, or the peer could not decrypt: encrypt this message
                // again on the current session; if that is refused too, start a new session;
                // after that, give up.
                RejectReason::Expired | RejectReason::DecryptFailed if resets == 0 => {
                    self.reseal(id)?
                }
                RejectReason::Expired | RejectReason::DecryptFailed | RejectReason::NoSession
                    if resets < 2 =>
                {
                    self.reset_session(to)?
                }
                _ => self.fail(id, DeliveryFailure::Rejected(reason))?,
            },
            DeliveryResult::Unreachable => self.retry_later(id),
        }
        Ok(())
    }

    /// Drops an entry's envelope so that it is encrypted again (with a fresh key) on the
    /// current session.
    fn reseal(&mut self, id: MessageId) -> Result<(), StoreError> {
        let Some(entry) = self.outbox.get(&id) else { return Ok(()) };
        let mut record = entry.record.clone();
        let peer = record.to;
        record.envelope = None;
        let mut batch = Batch::new();
        batch.put_outbox(&record);
        self.commit(batch)?;
        self.outbox.update_record(record);
        self.outbox.reschedule(&id, None, false);
        self.outbox.count_reset(&id);
        self.pump(peer)
    }

    fn retry_later(&mut self, id: MessageId) {
        let attempts = self.outbox.get(&id).map(|e| e.attempts).unwrap_or(0);
        let jitter = self.rng.next_u32();
        let due = self.after(backoff(attempts.saturating_sub(1), jitter));
        self.outbox.reschedule(&id, Some(due), false);
    }

    /// Archives the current session with `peer` and re-queues their messages for a new one.
    fn reset_session(&mut self, peer: UserId) -> Result<(), StoreError> {
        let mut sessions = self.take_sessions(&peer)?;
        if let Some(current) = sessions.current.take() {
            sessions.previous.insert(0, current);
            sessions.previous.truncate(crate::session::MAX_PREVIOUS_SESSIONS);
        }
        let mut batch = Batch::new();
        batch.put_sessions(&peer, &sessions);
        let mut reset = Vec::new();
        for id in self.outbox.for_peer(&peer) {
            if let Some(entry) = self.outbox.get(&id) {
                let mut record = entry.record.clone();
                record.envelope = None;
                batch.put_outbox(&record);
                reset.push(record);
            }
        }
        self.commit(batch)?;
        self.cache_sessions(peer, sessions);
        for record in reset {
            let id = record.id;
            self.outbox.update_record(record);
            self.outbox.reschedule(&id, None, false);
            self.outbox.count_reset(&id);
        }
        self.fetches.remove(&peer);
        self.request_bundle(peer);
        Ok(())
    }

    /// Gives up on an outbox entry, telling the app why.
    fn fail(&mut self, id: MessageId, why: DeliveryFailure) -> Result<(), StoreError> {
        let Some(entry) = self.outbox.get(&id) else { return Ok(()) };
        let (kind, seq) = (entry.record.kind, entry.record.seq);
        let mut batch = Batch::new();
        batch.delete_outbox(seq);
        let update = if kind == OutboxKind::Message {
            self.set_status(&id, MessageStatus::Failed(why), &mut batch)?
        } else {
            None
        };
        self.commit(batch)?;
        let peer = self.outbox.remove(&id).map(|e| e.record.to);
        if let Some(event) = update {
            self.event(event);
        }
        match peer {
            Some(peer) if !self.fetches.contains_key(&peer) => self.pump(peer),
            _ => Ok(()),
        }
    }

    /// Moves an outgoing message's status forward (never back); returns the event to emit.
    fn set_status(
        &self,
        id: &MessageId,
        status: MessageStatus,
        batch: &mut Batch,
    ) -> Result<Option<Event>, StoreError> {
        // Only the small index entry: the message itself is neither read nor rewritten.
        let Some(mut index) = self.store.message_index(id)? else { return Ok(None) };
        if !index.status.advances_to(status) {
            return Ok(None);
        }
        index.status = status;
        batch.put_message_index(id, &index);
        Ok(Some(Event::StatusChanged { peer: index.peer, group: index.group, id: *id, status }))
    }

    fn on_timeout(&mut self, now: UnixMillis) -> Result<(), StoreError> {
        if self.mono >= self.next_maintenance {
            self.maintain(now)?;
        }
        for id in self.outbox.due(self.mono) {
            self.attempt(id);
        }
        let mono = self.mono;
        let due: Vec<UserId> =
            self.fetches.iter().filter(|(_, f)| f.due <= mono).map(|(u, _)| *u).collect();
        for user in due {
            if let Some(fetch) = self.fetches.get_mut(&user) {
                fetch.due = mono;
            }
            self.request_bundle(user);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- user actions

    /// A message of the conversation with `peer`.
    fn conversation_message(
        &self,
        peer: &UserId,
        id: &MessageId,
    ) -> Result<MessageRecord, CommandError> {
        match self.store.message(id)? {
            Some(record) if record.peer == *peer => Ok(record),
            _ => Err(CommandError::UnknownMessage),
        }
    }

    fn react(
        &mut self,
        now: UnixMillis,
        to: UserId,
        target: MessageId,
        emoji: String,
        remove: bool,
    ) -> Result<CommandResult, CommandError> {
        let mut record = self.conversation_message(&to, &target)?;
        let me = self.user_id();
        apply_reaction(&mut record.reactions, me, &emoji, remove);
        let body = Body::Reaction(Reaction { target, emoji, remove });
        let id = self.queue(now, to, body, OutboxKind::Control)?;
        self.update_message(record)?;
        Ok(CommandResult::Queued(id))
    }

    fn edit(
        &mut self,
        now: UnixMillis,
        to: UserId,
        target: MessageId,
        text: String,
    ) -> Result<CommandResult, CommandError> {
        let mut record = self.conversation_message(&to, &target)?;
        if record.direction != Direction::Outgoing {
            return Err(CommandError::UnknownMessage);
        }
        let Some(edited) = edited_content(&record, &text) else {
            return Err(CommandError::UnknownMessage);
        };
        let id =
            self.queue(now, to, Body::Edit(Edit { target, body: text }), OutboxKind::Control)?;
        record.content = Some(edited);
        record.edited_at = Some(now);
        self.update_message(record)?;
        Ok(CommandResult::Queued(id))
    }

    fn delete(
        &mut self,
        now: UnixMillis,
        to: UserId,
        target: MessageId,
    ) -> Result<CommandResult, CommandError> {
        let mut record = self.conversation_message(&to, &target)?;
        if record.direction != Direction::Outgoing {
            return Err(CommandError::UnknownMessage);
        }
        let id = self.queue(now, to, Body::Delete(Delete { target }), OutboxKind::Control)?;
        record.content = None;
        self.update_message(record)?;
        Ok(CommandResult::Queued(id))
    }

    fn update_message(&mut self, record: MessageRecord) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.update_message(&record);
        self.commit(batch)?;
        let message = record.to_message()?;
        self.event(Event::MessageUpdated(Box::new(message)));
        Ok(())
    }

    fn mark_read(
        &mut self,
        now: UnixMillis,
        peer: UserId,
        ids: Vec<MessageId>,
    ) -> Result<CommandResult, CommandError> {
        let records =
            ids.iter().map(|id| self.conversation_message(&peer, id)).collect::<Result<_, _>>()?;
        self.mark_records_read(now, records)
    }

    /// Marks the incoming, unread ones of `records` read, and (if enabled) sends read receipts
    /// to their authors: the peer of a conversation, each author in a group.
    fn mark_records_read(
        &mut self,
        now: UnixMillis,
        records: Vec<MessageRecord>,
    ) -> Result<CommandResult, CommandError> {
        let mut batch = Batch::new();
        let mut by_author: BTreeMap<UserId, Vec<MessageId>> = BTreeMap::new();
        let mut events = Vec::new();
        for record in records {
            if record.direction != Direction::Incoming || record.status != MessageStatus::Received {
                continue;
            }
            if let Some(event) = self.set_status(&record.id, MessageStatus::Read, &mut batch)? {
                events.push(event);
            }
            by_author.entry(record.peer).or_default().push(record.id);
        }
        self.commit(batch)?;
        events.into_iter().for_each(|e| self.event(e));
        if self.config.read_receipts {
            for (author, ids) in by_author {
                for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                    let body =
                        Body::Receipt(Receipt { kind: ReceiptKind::Read, ids: chunk.to_vec() });
                    // An author we can no longer write to (blocked, key changed) goes without:
                    // the messages are read here all the same.
                    match self.queue(now, author, body, OutboxKind::Control) {
                        Ok(_) | Err(CommandError::Blocked | CommandError::IdentityChanged) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(CommandResult::Done)
    }

    fn set_profile(
        &mut self,
        now: UnixMillis,
        display_name: String,
    ) -> Result<CommandResult, CommandError> {
        let name = display_name.trim().to_owned();
        if name.is_empty() || name.len() > kith_protocol::limits::MAX_NAME_BYTES {
            return Err(CommandError::InvalidName);
        }
        let mut batch = Batch::new();
        batch.put_profile_name(&name);
        self.commit(batch)?;
        // Everyone we chose to add gets the new name; others get it when we first talk.
        for mut contact in self.store.contacts()? {
            let pending = contact.pending_identity.is_some()
                || self.pending_identities.contains_key(&contact.user);
            if contact.name.is_some() && !contact.blocked && !pending {
                contact.profile_shared = false;
                self.save_contact(contact.clone())?;
                if self.has_session(&contact.user)? {
                    self.share_profile_with(now, contact.user)?;
                }
            }
        }
        Ok(CommandResult::Done)
    }

    /// Sends our profile to `peer` once, if we have one and `peer` is a contact we added.
    fn share_profile_with(&mut self, now: UnixMillis, peer: UserId) -> Result<(), StoreError> {
        let Some(name) = self.store.profile_name()? else { return Ok(()) };
        let Some(mut contact) = self.store.contact(&peer)? else { return Ok(()) };
        if contact.profile_shared || contact.name.is_none() {
            return Ok(());
        }
        match self.queue(
            now,
            peer,
            Body::Profile(Profile { display_name: name }),
            OutboxKind::Control,
        ) {
            Ok(_) => {}
            Err(CommandError::Store(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        contact.profile_shared = true;
        let mut batch = Batch::new();
        batch.put_contact(&contact);
        self.commit(batch)
    }
}

/// Adds or removes `from`'s `emoji` reaction.
fn apply_reaction(reactions: &mut Vec<MessageReaction>, from: UserId, emoji: &str, remove: bool) {
    reactions.retain(|r| !(r.from == from && r.emoji == emoji));
    if !remove && reactions.len() < MAX_REACTIONS_PER_MESSAGE {
        reactions.push(MessageReaction { from, emoji: emoji.to_owned() });
    }
}

/// Most reactions stored on one message (bounds what a peer can make us store).
pub const MAX_REACTIONS_PER_MESSAGE: usize = 64;

/// The content of `record` with its text replaced, if it is a live text message.
fn edited_content(record: &MessageRecord, text: &str) -> Option<Vec<u8>> {
    let content: Content = kith_protocol::decode(record.content.as_ref()?).ok()?;
    let Body::Text(old) = content.body else { return None };
    let new = Content {
        sent_at: content.sent_at,
        body: Body::Text(Text { body: text.to_owned(), reply_to: old.reply_to }),
    };
    kith_protocol::encode(&new).ok()
}
