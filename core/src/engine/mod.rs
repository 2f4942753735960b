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

mod actions;
mod contacts;
mod delivery;
mod disappearing;
#[cfg(test)]
mod disappearing_tests;
mod fetches;
mod group;
mod group_membership;
#[cfg(test)]
mod group_tests;
mod outbox;
mod prekey_maintenance;
mod queries;
mod receive;
mod send;
mod sessions;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use kith_protocol::content::{
    Body, Content, Delete, Edit, Presence, PresenceStatus, Profile, Reaction, Receipt, ReceiptKind,
    Text,
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

pub use actions::MAX_REACTIONS_PER_MESSAGE;
pub use group::{
    GROUP_RECEIPT_DELAY_MS, GROUP_RECEIPT_TIMEOUT_MS, MAX_PENDING_AUTHENTICATED_PER_SENDER,
    MAX_PENDING_UNAUTHENTICATED_PER_SENDER, PENDING_AUTHENTICATED_TTL_MS,
    PENDING_UNAUTHENTICATED_TTL_MS, group_copy_id,
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

use actions::{Conversation, apply_reaction, edited_content};
use fetches::PreKeyFetches;
use outbox::{Outbox, backoff};
use sessions::SessionCache;

/// Changed identity keys remembered (in memory) for the user to review. A refused initial
/// message writes nothing to the store; its sender sends it again until it is answered.
pub const MAX_PENDING_IDENTITIES: usize = 256;

/// Settings of an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// A flush begun by [`Engine::begin_flush`]: the commit to run, on any thread, before its
/// result goes to [`Engine::end_flush`].
#[must_use = "run it, then give its result to Engine::end_flush"]
pub struct PendingFlush {
    /// The database to flush; `None` when nothing was pending (the outputs only wait for the
    /// flushes before).
    store: Option<crate::store::SideStore>,
}

impl PendingFlush {
    /// Makes durable every commit made before it runs (one fsync, or none if nothing was
    /// pending when it began).
    pub fn run(self) -> Result<(), StoreError> {
        self.store.map_or(Ok(()), |store| store.flush())
    }

    /// Whether running it does nothing (nothing was pending): the caller may run it in place.
    pub fn is_empty(&self) -> bool {
        self.store.is_none()
    }
}

impl std::fmt::Debug for PendingFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFlush").field("empty", &self.is_empty()).finish()
    }
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
    sessions: SessionCache,
    fetches: PreKeyFetches,
    /// Delivery receipts owed, per peer, sent (coalesced) at the next flush.
    pending_receipts: BTreeMap<UserId, Vec<MessageId>>,
    /// Delivery receipts owed for group messages, per author, sent (coalesced) at the first
    /// flush from `group_receipts_due` (monotonic) on.
    group_receipts: BTreeMap<UserId, BTreeSet<MessageId>>,
    group_receipts_due: Option<u64>,
    /// Outputs waiting for the next flush.
    held: VecDeque<Output>,
    /// Outputs waiting for the flush in flight ([`Engine::begin_flush`]), if one is.
    in_flight: Option<VecDeque<Output>>,
    /// Sent statuses from peers' acknowledgements: reportable before the flush
    /// ([`Engine::take_early_events`]).
    early: Vec<Event>,
    /// Our presence as last set ([`Command::SetPresence`]): told to each contact that becomes
    /// reachable, since presence travels only over live connections.
    own_presence: Option<PresenceStatus>,
    /// Outputs ready to be carried out.
    ready: VecDeque<Output>,
    /// Commits not yet flushed.
    dirty: bool,
    /// When maintenance is next due (monotonic).
    next_maintenance: u64,
    /// All one-time prekeys below this id have been handed out.
    opk_cursor: u32,
    /// Where the search for the next one-time KEM prekey to hand out starts.
    kem_cursor: u32,
    /// Every group we know and its replayed membership.
    groups: group::GroupMap,
    /// Group tag → id, for incoming group messages.
    tags: group::TagMap,
    /// When we may next ask a member for a group's changes or its sender key, or answer it:
    /// (group, peer, what) → time (monotonic).
    syncs: HashMap<(kith_protocol::GroupId, UserId, group_membership::Exchange), UnixMillis>,
    /// Members whose group messages wait for a key we lack, and since when (monotonic): asked
    /// for their key once the wait is long (`request_sender_key`).
    key_waits: HashMap<(kith_protocol::GroupId, UserId), u64>,
    /// New identity keys that peers' refused initial messages carried, for the user to review.
    pending_identities: BTreeMap<UserId, kith_protocol::prekey::IdentityBinding>,
    /// Disappearing messages: the timers and the messages waiting to disappear.
    expiry: disappearing::Expiry,
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
    /// due at once), tops up prekeys and re-requests bundles that messages still wait for. A
    /// full disk does not fail the opening: what it wrote stays pending, and the outputs that
    /// depend on it held, until an [`Engine::flush`] succeeds.
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
            sessions: SessionCache::default(),
            fetches: PreKeyFetches::default(),
            pending_receipts: BTreeMap::new(),
            group_receipts: BTreeMap::new(),
            group_receipts_due: None,
            held: VecDeque::new(),
            in_flight: None,
            early: Vec::new(),
            own_presence: None,
            ready: VecDeque::new(),
            dirty: false,
            next_maintenance: mono,
            opk_cursor: 0,
            kem_cursor: 0,
            groups: HashMap::new(),
            tags: HashMap::new(),
            syncs: HashMap::new(),
            key_waits: HashMap::new(),
            pending_identities: BTreeMap::new(),
            expiry: disappearing::Expiry::default(),
        };
        engine.load_groups()?;
        engine.load_expiry()?;
        // What disappeared while we were stopped goes now.
        engine.expire_due(now)?;
        for record in engine.store.outbox()? {
            let due = record.envelope.is_some().then_some(mono);
            engine.outbox.insert(record, due);
        }
        engine.maintain(now)?;
        for peer in engine.outbox.peers_with_unsealed() {
            engine.pump(peer)?;
        }
        // A disk that is full now does not keep the engine from starting: what opening wrote
        // stays pending, and what depends on it held, until a flush by the driver succeeds.
        let _ = engine.flush();
        Ok(engine)
    }

    // ---------------------------------------------------------------- driving

    /// Feeds one input. Errors are reported through outputs (a refused envelope is acknowledged
    /// with its reason); the returned error is only for store failures.
    pub fn handle_input(&mut self, now: impl Into<Now>, input: Input) -> Result<(), StoreError> {
        let now = self.tick(now.into());
        match input {
            Input::Envelope { bytes, via, reply } => self.on_envelope(now, &bytes, via, reply),
            Input::SealedEnvelope { envelope, reply } => self.on_sealed(now, &envelope, reply),
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
                self.announce_presence_to(now, user)
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
                self.sessions.forget(&user);
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
                if blocked {
                    // Revoked: our relays refuse their sealed deposits once the node registers
                    // the new set of verifiers; an unblocked contact gets a new key.
                    contact.access_given = None;
                }
                self.save_contact(contact)?;
                if blocked {
                    // Their invitations go with them: we leave the groups they added us to.
                    for group in self.invitations_from(&user) {
                        self.group_command(now, group, GroupCommand::Decline)?;
                    }
                }
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
                self.react(now, Conversation::Contact(to), target, emoji, remove)
            }
            Command::Edit { to, target, text } => {
                self.edit(now, Conversation::Contact(to), target, text)
            }
            Command::Delete { to, target } => self.delete(now, Conversation::Contact(to), target),
            Command::DeleteLocally { peer, ids } => {
                self.delete_locally(Conversation::Contact(peer), &ids)
            }
            Command::DeleteConversation { peer } => {
                self.delete_conversation(Conversation::Contact(peer))
            }
            Command::SetDisappearing { peer, seconds } => {
                self.set_timer(now, Conversation::Contact(peer), seconds)
            }
            Command::MarkRead { peer, ids } => {
                self.mark_read(now, Conversation::Contact(peer), ids)
            }
            Command::Typing { to, state } => {
                if self.config.typing_indicators {
                    self.send_ephemeral(now, to, Body::Typing(state))?;
                }
                Ok(CommandResult::Done)
            }
            Command::SetPresence { status } => {
                self.own_presence = Some(status);
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

    /// Tells `user`, who just became reachable, our presence, if we share it and have set one
    /// (and they are a contact we talk to).
    fn announce_presence_to(&mut self, now: UnixMillis, user: UserId) -> Result<(), StoreError> {
        let Some(status) = self.own_presence.filter(|_| self.config.share_presence) else {
            return Ok(());
        };
        let Some(contact) = self.store.contact(&user)? else { return Ok(()) };
        let pending =
            contact.pending_identity.is_some() || self.pending_identities.contains_key(&user);
        if contact.blocked || pending || contact.name.is_none() {
            return Ok(());
        }
        let presence = Presence { status, last_seen: Some(now) };
        match self.send_ephemeral(now, user, Body::Presence(presence)) {
            Err(CommandError::Store(e)) => Err(e),
            // Presence is best effort: nothing else stops the reconnection.
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Sends the turn's receipts, makes all commits durable (one fsync) and releases the
    /// outputs queued so far. See the drain order in the [module docs](self). With a flush
    /// of [`Engine::begin_flush`] still in flight, it releases that flush's outputs too (its
    /// commit covers theirs); that flush's [`Engine::end_flush`] then has nothing left to do.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.queue_receipts()?;
        // The node's side trees share the store: their commits are the engine's to flush too.
        if self.dirty || self.store.has_pending() {
            self.store.flush()?;
            self.dirty = false;
        }
        if let Some(outputs) = self.in_flight.take() {
            self.ready.extend(outputs);
        }
        self.ready.extend(self.early.drain(..).map(Output::Event));
        self.ready.extend(self.held.drain(..));
        Ok(())
    }

    /// Begins a flush that runs apart from the engine (on a blocking thread, say) while the
    /// engine goes on handling input: sends the turn's receipts and sets aside the outputs
    /// queued so far, to be released by [`Engine::end_flush`] once the returned
    /// [`PendingFlush`] has run. What the engine commits and queues meanwhile waits for the
    /// next flush: a commit started before it cannot cover it. `None` while a flush is in
    /// flight (one at a time: wait for its end, then begin the next).
    pub fn begin_flush(&mut self) -> Result<Option<PendingFlush>, StoreError> {
        if self.in_flight.is_some() {
            return Ok(None);
        }
        self.queue_receipts()?;
        let store = (self.dirty || self.store.has_pending()).then(|| self.store.side());
        self.dirty = false;
        let mut outputs: VecDeque<Output> = self.early.drain(..).map(Output::Event).collect();
        outputs.extend(self.held.drain(..));
        self.in_flight = Some(outputs);
        Ok(Some(PendingFlush { store }))
    }

    /// Ends the flush in flight with its result: on success its outputs become ready; on
    /// failure they are held again, ahead of those queued since, for the next flush (its
    /// writes stay pending: nothing is lost, nothing leaves before it is durable).
    pub fn end_flush(&mut self, result: &Result<(), StoreError>) {
        let Some(mut outputs) = self.in_flight.take() else { return };
        if result.is_ok() {
            self.ready.extend(outputs);
        } else {
            outputs.extend(self.held.drain(..));
            self.held = outputs;
        }
    }

    /// Whether a flush would make anything durable or release anything.
    pub fn wants_flush(&self) -> bool {
        self.dirty
            || self.store.has_pending()
            || !self.held.is_empty()
            || !self.early.is_empty()
            || !self.pending_receipts.is_empty()
            || self.group_receipts_due.is_some_and(|due| due <= self.mono)
    }

    /// Queues the delivery receipts owed (those of group messages once they are due).
    fn queue_receipts(&mut self) -> Result<(), StoreError> {
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
        Ok(())
    }

    /// Takes the status events that promise nothing about our own state: a message became
    /// *Sent* because its recipient (or a relay) acknowledged holding it durably. A driver may
    /// report them before [`Engine::flush`], saving the wait for our own status commit: after a
    /// crash before it, the message is sent again, the peer deduplicates it and *Sent* is
    /// reported again. Events not taken here come out of [`Engine::poll_output`] after the
    /// flush like any other.
    pub fn take_early_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.early)
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
        let fetch = self.fetches.next_due();
        let expiry = self.next_expiry();
        [
            self.outbox.next_due(),
            fetch,
            self.group_receipts_due,
            expiry,
            Some(self.next_maintenance),
        ]
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
}
