//! Sending: sealing for a peer, the outbox's queue and pump, ephemeral contents, and the
//! prekey bundle fetches a first message waits for.

use super::*;

impl<R: rand_core::CryptoRng> Engine<R> {
    /// Encrypts `plaintext` as envelope `id` to `to` on `session`, returning the envelope bytes.
    pub(super) fn seal(
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
    pub(super) fn sendable_contact(
        &mut self,
        now: UnixMillis,
        to: &UserId,
    ) -> Result<Contact, CommandError> {
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
    pub(super) fn queue(
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
        let expires = kind == OutboxKind::Message && matches!(body, Body::Text(_) | Body::Media(_));
        let content = Content { sent_at: now, body };
        let plaintext = kith_protocol::encode(&content)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;

        let seq = self.next_seq;
        let mut batch = Batch::new();
        if self.store.contact(&to)?.is_none() {
            batch.put_contact(&contact);
        }
        if kind == OutboxKind::Message {
            batch.put_message(&MessageRecord::queued(id, to, None, plaintext.clone(), now, seq));
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
        if expires {
            self.mark_expiring(Conversation::Contact(to), id, &mut batch);
        }
        self.commit(batch)?;
        self.take_seq();
        self.outbox.insert(record, None);
        self.pump(to)?;
        Ok(id)
    }

    /// Encrypts queued messages for `peer` in queue order while its send window has room (or
    /// asks for a prekey bundle if there is no session yet), then sends them.
    pub(super) fn pump(&mut self, peer: UserId) -> Result<(), StoreError> {
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
    pub(super) fn attempt(&mut self, id: MessageId) {
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
    pub(super) fn send_ephemeral(
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

    pub(super) fn request_bundle(&mut self, user: UserId) {
        if !self.fetches.start(user, self.mono) {
            return; // in flight or backing off
        }
        let relays = self.store.contact(&user).ok().flatten().map(|c| c.relays).unwrap_or_default();
        self.held.push_back(Output::FetchPreKeys { user, relays });
    }

    pub(super) fn on_bundle(
        &mut self,
        now: UnixMillis,
        user: UserId,
        result: Result<Box<PreKeyBundle>, FetchError>,
    ) -> Result<(), StoreError> {
        if self.outbox.unsealed(&user, 1).is_empty() || self.has_session(&user)? {
            // Nothing waits for a session (any more): a session arrived meanwhile, or the
            // messages were cancelled.
            self.fetches.finish(&user);
            return self.pump(user);
        }
        let verified = match result {
            Ok(bundle) => verify_bundle(&bundle, &user, now).ok(),
            Err(FetchError::Classical) => {
                // No silent downgrade: the messages fail with the reason.
                self.fetches.finish(&user);
                for id in self.outbox.for_peer(&user) {
                    self.fail(id, DeliveryFailure::NotPostQuantum)?;
                }
                return Ok(());
            }
            Err(_) => None,
        };
        let Some(bundle) = verified else {
            // Unreachable, no bundle, or a forged/stale one: try again later.
            let jitter = self.rng.next_u32();
            self.fetches.failed(&user, self.mono, jitter);
            return Ok(());
        };
        self.fetches.finish(&user);

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
            // A low-order or invalid KEM key in a validly signed bundle: the peer's own keys
            // are broken.
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
        self.share_profile_with(now, user)?;
        self.share_access_key_with(now, user)?;
        // They may have been reachable, and told nothing, since before the session existed.
        self.announce_presence_to(now, user)
    }
}
