//! Receiving: envelope bytes in, durable state and an acknowledgement out.
//!
//! Order of checks, cheapest and most general first: decode (size, version, canonical form),
//! recipient, transport sender, duplicate id, block list, identity pin, then decryption on the
//! session's plan, then the content's own checks. Only when all pass is anything written, in one
//! batch: session state, seen id, the message or its effect, the contact, and the consumed
//! one-time prekey. Any refusal leaves the store untouched.

use kith_protocol::content::{Body, Content};
use kith_protocol::direct::{AckResult, DeliveryAck};
use kith_protocol::envelope::{
    Envelope, EnvelopeKind, GroupEnvelope, PqPreKeyMessage, PreKeyMessage,
};
use kith_protocol::prekey::IdentityBinding;
use kith_protocol::prekey::KemPreKeyKind;
use kith_protocol::{DhPublicKey, Signature};
use kith_protocol::{MessageId, UnixMillis, UserId};

use super::group::{Arrival, GroupEffect, GroupReceived};
use super::{
    Conversation, Engine, Event, Output, ReceiveError, Reply, ReplyToken, Via, apply_reaction,
};
use crate::identity::PublicIdentity;
use crate::model::{Contact, Direction, MessageStatus};
use crate::session::{PeerSessions, RatchetPayload, Session};
use crate::store::records::MessageRecord;
use crate::store::{Batch, StoreError};

/// What a received content did, to be made visible once its batch committed.
#[derive(Default)]
struct Effects {
    events: Vec<Event>,
    /// A delivery receipt is owed for this message.
    receipt: Option<MessageId>,
    /// Group changes and sender keys, applied once the envelope is committed.
    group: Vec<GroupEffect>,
    /// Copies of our group messages whose recipient confirmed them: out of the outbox once
    /// the batch that deletes their records is committed.
    copies_done: Vec<MessageId>,
}

impl<R: rand_core::CryptoRng> Engine<R> {
    pub(super) fn on_envelope(
        &mut self,
        now: UnixMillis,
        bytes: &[u8],
        via: Via,
        reply: Option<ReplyToken>,
    ) -> Result<(), StoreError> {
        let decoded = kith_protocol::decode::<Envelope>(bytes);
        let (id, sender) = match &decoded {
            Ok(e) => (e.id, Some(e.sender)),
            Err(_) => (MessageId([0; 16]), None),
        };
        let result = match decoded {
            Ok(envelope) => self.receive(now, envelope, via),
            Err(e) => Err(ReceiveError::Malformed(e)),
        };
        let result = match result {
            Ok(result) => result,
            // A store failure is the one refusal the caller must also hear about.
            Err(ReceiveError::Store(e)) => {
                self.reply(
                    reply,
                    id,
                    AckResult::Rejected(kith_protocol::direct::RejectReason::Unavailable),
                );
                return Err(e);
            }
            Err(e) => {
                let reason = e.reject_reason();
                self.event(Event::Rejected { sender, reason });
                AckResult::Rejected(reason)
            }
        };
        self.reply(reply, id, result);
        Ok(())
    }

    /// A sealed envelope from a relay: opened with our identity key, its inner envelope must
    /// carry the same id (the relay deletes by it); then received as any relayed envelope.
    /// What does not open is refused like an envelope that does not decrypt, telling the relay
    /// nothing else.
    pub(super) fn on_sealed(
        &mut self,
        now: UnixMillis,
        sealed: &kith_protocol::mailbox::SealedEnvelope,
        reply: Option<ReplyToken>,
    ) -> Result<(), StoreError> {
        let opened = crate::sealed_sender::open(
            &self.identity,
            &sealed.id,
            &sealed.ephemeral,
            &sealed.ciphertext,
        );
        let bytes = opened.ok().filter(|bytes| {
            kith_protocol::decode::<Envelope>(bytes).is_ok_and(|e| e.id == sealed.id)
        });
        match bytes {
            Some(bytes) => self.on_envelope(now, &bytes, Via::Relay, reply),
            None => {
                let reason = kith_protocol::direct::RejectReason::DecryptFailed;
                self.event(Event::Rejected { sender: None, reason });
                self.reply(reply, sealed.id, AckResult::Rejected(reason));
                Ok(())
            }
        }
    }

    fn reply(&mut self, token: Option<ReplyToken>, id: MessageId, result: AckResult) {
        if let Some(token) = token {
            let ack = DeliveryAck { id, result };
            self.held.push_back(Output::Reply { token, reply: Reply::Ack(ack) });
        }
    }

    fn receive(
        &mut self,
        now: UnixMillis,
        envelope: Envelope,
        via: Via,
    ) -> Result<AckResult, ReceiveError> {
        let me = self.user_id();
        if envelope.recipient != me || envelope.sender == me {
            return Err(ReceiveError::WrongRecipient);
        }
        let sender = envelope.sender;
        if let Via::Direct(peer) = via
            && peer != sender
        {
            return Err(ReceiveError::SenderMismatch);
        }
        // Message ids are chosen by senders; one already in the history (any conversation)
        // is never stored again, so no one can overwrite a message by reusing its id.
        if self.store.is_seen(&sender, &envelope.id)?
            || self.store.message_index(&envelope.id)?.is_some()
        {
            if matches!(envelope.kind, EnvelopeKind::Group(_)) {
                self.reconfirm_group_message(sender, envelope.id)?;
            }
            return Ok(AckResult::Duplicate);
        }
        if let EnvelopeKind::Group(message) = envelope.kind {
            // A copy of a group message for us: the sender key authenticates it.
            let group = GroupEnvelope { id: envelope.id, sender, message };
            let arrival = match via {
                // `receive` checked that the connection's peer is the sender.
                Via::Direct(_) => Arrival::FromSender,
                Via::Relay => Arrival::Mailbox,
            };
            return match self.receive_group(now, group, arrival)? {
                GroupReceived::Accepted | GroupReceived::Pending => Ok(AckResult::Accepted),
                GroupReceived::Duplicate => Ok(AckResult::Duplicate),
            };
        }
        let existing = self.store.contact(&sender)?;
        match &existing {
            Some(c) if c.blocked => return Err(ReceiveError::Blocked),
            None if !self.config.accept_unknown => return Err(ReceiveError::Blocked),
            _ => {}
        }
        let mut contact = existing.clone().unwrap_or_else(|| Contact::new(sender, now));

        let mut sessions = self.take_sessions(&sender)?;
        // A session that carried messages both ways: a new one replacing it is a reset.
        let confirmed_before =
            sessions.current.as_ref().is_some_and(|s| s.pending_prekey.is_none());
        let mut batch = Batch::new();
        let mut new_session = false;
        let ratchet = match &envelope.kind {
            EnvelopeKind::Ratchet(message) => Some(RatchetPayload::Plain(message)),
            EnvelopeKind::SealedRatchet(message) => Some(RatchetPayload::Sealed(message)),
            _ => None,
        };
        let decrypted = match (ratchet, &envelope.kind) {
            (Some(message), _) => {
                if sessions.current.is_none() && sessions.previous.is_empty() {
                    Err(ReceiveError::NoSession)
                } else {
                    sessions.decrypt(&envelope.id, message, now).map_err(ReceiveError::from)
                }
            }
            (None, kind) => match Handshake::of(kind) {
                Some(handshake) => self
                    .receive_prekey(
                        now,
                        &envelope,
                        &handshake,
                        &mut contact,
                        &mut sessions,
                        &mut batch,
                    )
                    .map(|(plaintext, installed)| {
                        new_session = installed;
                        plaintext
                    }),
                None => Err(ReceiveError::Unsupported),
            },
        };
        let plaintext = match decrypted {
            Ok(plaintext) => plaintext,
            Err(e) => {
                // Nothing was changed on the sessions (decrypt works on a plan); keep the cache.
                // A `Duplicate` from the ratchet for an id not in the seen set means the key is
                // gone (evicted or expired), not that we have the message: it is refused as
                // `Expired` so the sender encrypts it again.
                self.cache_sessions(sender, sessions);
                return Err(e);
            }
        };
        let Ok(content) = kith_protocol::decode::<Content>(&plaintext) else {
            return Err(ReceiveError::BadContent);
        };
        let effects = self.apply_content(
            now,
            sender,
            envelope.id,
            plaintext,
            content,
            &mut contact,
            &mut batch,
        )?;

        batch.put_sessions(&sender, &sessions);
        batch.mark_seen(&sender, &envelope.id, now);
        let contact_changed = existing.as_ref() != Some(&contact);
        if contact_changed {
            batch.put_contact(&contact);
        }
        self.commit(batch)?;
        self.cache_sessions(sender, sessions);

        if contact_changed {
            self.event(Event::ContactChanged(Box::new(contact)));
        }
        effects.events.into_iter().for_each(|e| self.event(e));
        if let Some(id) = effects.receipt {
            self.pending_receipts.entry(sender).or_default().push(id);
        }
        for id in effects.copies_done {
            self.outbox.remove(&id);
        }
        self.apply_group_effects(now, sender, effects.group)?;
        if new_session {
            if confirmed_before {
                self.event(Event::SessionReset { peer: sender });
            }
            // The peer may have been reachable, and told nothing, since before the session.
            self.announce_presence_to(now, sender)?;
            // A contact we added gets a key for our relays (strangers once accepted).
            self.share_access_key_with(now, sender)?;
        }
        Ok(AckResult::Accepted)
    }

    /// Checks the sender's identity and decrypts an initial message, setting up the session
    /// if it is new (the one-time prekeys' deletion is added to `batch`). Returns the plaintext
    /// and whether a session was set up. A classical (X3DH) initial message only reaches a
    /// session set up before PQXDH; it never sets one up.
    fn receive_prekey(
        &mut self,
        now: UnixMillis,
        envelope: &Envelope,
        message: &Handshake<'_>,
        contact: &mut Contact,
        sessions: &mut PeerSessions,
        batch: &mut Batch,
    ) -> Result<(Vec<u8>, bool), ReceiveError> {
        let binding = IdentityBinding {
            user: envelope.sender,
            dh_key: message.identity_dh_key,
            signature: message.identity_dh_signature,
        };
        // Every field of the binding is checked, even for a pinned key: nothing in an initial
        // message may change unnoticed.
        let verified = PublicIdentity::verify(&binding).map_err(|_| ReceiveError::BadIdentity)?;
        let identity = match contact.identity {
            Some(pinned) if pinned.dh_key == binding.dh_key => PublicIdentity {
                user: pinned.user,
                dh_key: pinned.dh_key,
                signature: pinned.signature,
            },
            Some(_) => {
                // Refused, and nothing stored: the new key is remembered in memory for the
                // user to review (the peer sends it again until it is accepted).
                self.note_pending_identity(envelope.sender, binding);
                return Err(ReceiveError::IdentityChanged);
            }
            None => {
                contact.identity = Some(binding);
                verified
            }
        };
        if !crate::crypto::dh::is_canonical(&message.base_key) {
            return Err(ReceiveError::Decrypt(crate::ratchet::DecryptError::NonCanonicalKey));
        }

        // A later message of a session we already set up (e.g. the first one arrived late).
        if let Some(session) = sessions.by_base_key(&message.base_key) {
            // The same peer, and the very header that set the session up: a repeat with any
            // field changed (or its PQ part stripped) is refused.
            if session.peer != identity || !session.same_handshake(message.post_quantum) {
                return Err(ReceiveError::NoSession);
            }
            return Ok((session.decrypt(&envelope.id, message.message, now)?, false));
        }
        let Some(pq) = &message.post_quantum else {
            // No silent downgrade: a new session is PQXDH or nothing.
            return Err(ReceiveError::ClassicalHandshake);
        };

        let signed_prekey =
            self.store.signed_prekey(message.signed_prekey_id)?.ok_or(ReceiveError::NoSession)?;
        let one_time_prekey = match message.one_time_prekey_id {
            // Unknown or already consumed: a replay of an initial message, refused.
            Some(id) => {
                Some(self.store.one_time_prekey(id)?.ok_or(ReceiveError::NoSession)?.to_key())
            }
            None => None,
        };
        // Unknown, or a one-time KEM prekey already consumed: refused likewise.
        let kem_prekey =
            self.store.kem_prekey(pq.kem_prekey_id)?.ok_or(ReceiveError::NoSession)?.to_key();
        let (session, plaintext) = Session::accept(
            &self.identity,
            &signed_prekey,
            one_time_prekey.as_ref(),
            &kem_prekey,
            identity,
            &envelope.id,
            pq,
            now,
        )?;
        sessions.install(session);
        // Consumed in the same batch as the session they created.
        if let Some(key) = one_time_prekey {
            batch.delete_one_time_prekey(key.id);
        }
        if kem_prekey.kind() == KemPreKeyKind::OneTime {
            batch.delete_kem_prekey(kem_prekey.id());
        }
        Ok((plaintext, true))
    }

    /// Applies a decrypted content: adds its writes to `batch` and returns its effects.
    #[allow(clippy::too_many_arguments)]
    fn apply_content(
        &mut self,
        now: UnixMillis,
        sender: UserId,
        id: MessageId,
        plaintext: Vec<u8>,
        content: Content,
        contact: &mut Contact,
        batch: &mut Batch,
    ) -> Result<Effects, ReceiveError> {
        let mut effects = Effects::default();
        match content.body {
            Body::Text(_) | Body::Media(_) => {
                let sent_at = content.sent_at;
                effects
                    .events
                    .push(self.store_incoming(now, sender, None, id, plaintext, sent_at, batch)?);
                self.mark_expiring(Conversation::Contact(sender), id, batch);
                effects.receipt = Some(id);
            }
            Body::ExpireTimer(timer) => {
                let sent_at = content.sent_at;
                effects
                    .events
                    .push(self.store_incoming(now, sender, None, id, plaintext, sent_at, batch)?);
                let conversation = Conversation::Contact(sender);
                effects.events.extend(self.receive_timer(conversation, timer, sent_at, batch));
                effects.receipt = Some(id);
            }
            Body::Reaction(reaction) => {
                if let Some(mut target) = self
                    .store
                    .message(&reaction.target)?
                    .filter(|m| m.peer == sender && m.group.is_none())
                {
                    apply_reaction(&mut target.reactions, sender, &reaction.emoji, reaction.remove);
                    batch.update_message(&target);
                    effects.events.push(Event::MessageUpdated(Box::new(target.to_message()?)));
                }
            }
            Body::Receipt(receipt) => {
                let status = match receipt.kind {
                    kith_protocol::content::ReceiptKind::Delivered => MessageStatus::Delivered,
                    kith_protocol::content::ReceiptKind::Read => MessageStatus::Read,
                };
                for target in &receipt.ids {
                    let Some(message) = self.store.message(target)? else { continue };
                    if message.direction != Direction::Outgoing {
                        continue;
                    }
                    let event = if message.group.is_some() {
                        // A member's receipt for our group message (pairwise, like Signal's).
                        self.group_receipt(
                            message,
                            sender,
                            receipt.kind,
                            batch,
                            &mut effects.copies_done,
                        )?
                    } else if message.peer == sender {
                        self.set_status(target, status, batch)?
                    } else {
                        None
                    };
                    effects.events.extend(event);
                }
            }
            Body::Typing(state) => effects.events.push(Event::Typing { peer: sender, state }),
            Body::Presence(presence) => {
                contact.presence = Some(presence.status);
                contact.last_seen = presence.last_seen;
                effects.events.push(Event::Presence {
                    peer: sender,
                    status: presence.status,
                    last_seen: presence.last_seen,
                });
            }
            Body::Edit(edit) => {
                let target = self.store.message(&edit.target)?.filter(|m| {
                    m.peer == sender
                        && m.group.is_none()
                        && m.direction == Direction::Incoming
                        && m.content.is_some()
                });
                if let Some(mut target) = target
                    && let Some(edited) = super::edited_content(&target, &edit.body)
                {
                    target.content = Some(edited);
                    target.edited_at = Some(content.sent_at);
                    batch.update_message(&target);
                    effects.events.push(Event::MessageUpdated(Box::new(target.to_message()?)));
                }
            }
            Body::Delete(delete) => {
                let target = self.store.message(&delete.target)?.filter(|m| {
                    m.peer == sender && m.group.is_none() && m.direction == Direction::Incoming
                });
                if let Some(mut target) = target {
                    target.content = None;
                    batch.update_message(&target);
                    effects.events.push(Event::MessageUpdated(Box::new(target.to_message()?)));
                }
            }
            Body::Profile(profile) => contact.profile_name = Some(profile.display_name),
            // The key this contact's relays accept from us for sealed deposits.
            Body::AccessKey(key) => contact.access_key = Some(key),
            Body::GroupChanges(changes) => effects.group.push(GroupEffect::Changes(changes)),
            Body::GroupSync(sync) => effects.group.push(GroupEffect::Sync(sync)),
            Body::SenderKeyDistribution(skd) => effects.group.push(GroupEffect::SenderKey(skd)),
            Body::SenderKeyRequest(request) => {
                effects.group.push(GroupEffect::KeyRequest(request));
            }
        }
        Ok(effects)
    }
}

impl<R: rand_core::CryptoRng> Engine<R> {
    /// Adds a received text or attachment to `batch` as the next message of its conversation;
    /// returns the event that announces it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_incoming(
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
}

/// The fields of an initial message, PQXDH or classical X3DH.
struct Handshake<'a> {
    identity_dh_key: DhPublicKey,
    identity_dh_signature: Signature,
    base_key: DhPublicKey,
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
    message: RatchetPayload<'a>,
    /// The whole PQXDH message; `None` for a classical one.
    post_quantum: Option<&'a PqPreKeyMessage>,
}

impl<'a> Handshake<'a> {
    /// The initial message an envelope carries, if it carries one.
    fn of(kind: &'a EnvelopeKind) -> Option<Self> {
        match kind {
            EnvelopeKind::PqPreKey(m) => Some(Self::post_quantum(m)),
            EnvelopeKind::PreKey(m) => Some(Self::classical(m)),
            EnvelopeKind::Ratchet(_) | EnvelopeKind::SealedRatchet(_) | EnvelopeKind::Group(_) => {
                None
            }
        }
    }

    fn post_quantum(m: &'a PqPreKeyMessage) -> Self {
        Self {
            identity_dh_key: m.identity_dh_key,
            identity_dh_signature: m.identity_dh_signature,
            base_key: m.base_key,
            signed_prekey_id: m.signed_prekey_id,
            one_time_prekey_id: m.one_time_prekey_id,
            message: RatchetPayload::Sealed(&m.message),
            post_quantum: Some(m),
        }
    }

    fn classical(m: &'a PreKeyMessage) -> Self {
        Self {
            identity_dh_key: m.identity_dh_key,
            identity_dh_signature: m.identity_dh_signature,
            base_key: m.base_key,
            signed_prekey_id: m.signed_prekey_id,
            one_time_prekey_id: m.one_time_prekey_id,
            message: RatchetPayload::Plain(&m.message),
            post_quantum: None,
        }
    }
}
