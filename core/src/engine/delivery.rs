//! What becomes of a sent envelope: acknowledged, stored by a relay, refused, unreachable or
//! timed out; retries, session resets, failures and message statuses.

use super::*;

impl<R: rand_core::CryptoRng> Engine<R> {
    pub(super) fn on_delivery(
        &mut self,
        id: MessageId,
        result: DeliveryResult,
    ) -> Result<(), StoreError> {
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
                match update {
                    // The peer holds it: reportable before our status commit.
                    Some(event) if kind == OutboxKind::Message => self.early.push(event),
                    Some(event) => self.event(event),
                    None => {}
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
    pub(super) fn reseal(&mut self, id: MessageId) -> Result<(), StoreError> {
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

    pub(super) fn retry_later(&mut self, id: MessageId) {
        let attempts = self.outbox.get(&id).map(|e| e.attempts).unwrap_or(0);
        let jitter = self.rng.next_u32();
        let due = self.after(backoff(attempts.saturating_sub(1), jitter));
        self.outbox.reschedule(&id, Some(due), false);
    }

    /// Archives the current session with `peer` and re-queues their messages for a new one.
    pub(super) fn reset_session(&mut self, peer: UserId) -> Result<(), StoreError> {
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
        self.fetches.finish(&peer);
        self.request_bundle(peer);
        self.event(Event::SessionReset { peer });
        Ok(())
    }

    /// Gives up on an outbox entry, telling the app why.
    pub(super) fn fail(&mut self, id: MessageId, why: DeliveryFailure) -> Result<(), StoreError> {
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
            Some(peer) if !self.fetches.is_fetching(&peer) => self.pump(peer),
            _ => Ok(()),
        }
    }

    /// Moves an outgoing message's status forward (never back); returns the event to emit.
    pub(super) fn set_status(
        &mut self,
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
        self.start_expiry(id, status, batch);
        Ok(Some(Event::StatusChanged { peer: index.peer, group: index.group, id: *id, status }))
    }

    pub(super) fn on_timeout(&mut self, now: UnixMillis) -> Result<(), StoreError> {
        if self.mono >= self.next_maintenance {
            self.maintain(now)?;
        }
        for id in self.outbox.due(self.mono) {
            self.attempt(id);
        }
        for user in self.fetches.take_due(self.mono) {
            self.request_bundle(user);
        }
        self.expire_due(now)
    }
}
