//! Disappearing messages. A conversation (one-to-one or group) has a timer that any side sets
//! with a message of the history ([`Body::ExpireTimer`]), so that everyone sees who set it and
//! when; the latest setting by its sender's clock wins. Each text or attachment stored while
//! the timer is on disappears that many seconds after it was read here (after it was sent —
//! acknowledged by the recipient or a relay — for our own), together with its record in
//! every index; the embedding node removes its attachment files on
//! [`Event::MessagesDeleted`] with [`DeleteReason::Expired`].
//!
//! The deadlines are wall-clock times kept in the store, so a message whose time came while
//! the engine was stopped disappears as soon as it opens again. Timers run on the monotonic
//! clock in between ([`Engine::poll_timeout`]).

use kith_protocol::GroupId;
use kith_protocol::content::ExpireTimer;
use kith_protocol::limits::MAX_EXPIRE_SECONDS;

use super::*;
use crate::store::{ExpiringRecord, TimerRecord};

/// The disappearing-message state kept in memory (a copy of the `timers` and `expiring`
/// trees), so that sending, receiving and status changes never read the store for it.
#[derive(Debug, Default)]
pub(super) struct Expiry {
    /// Conversations whose timer is on: user or group id → timer.
    timers: HashMap<[u8; 32], TimerRecord>,
    /// Messages whose timer has not started yet (unread, or ours not yet sent): id → seconds.
    waiting: HashMap<MessageId, u32>,
    /// Messages whose timer runs: (when, id).
    due: BTreeSet<(UnixMillis, MessageId)>,
}

impl Expiry {
    /// The seconds of `conversation`'s timer (0: off).
    pub(super) fn seconds(&self, conversation: &[u8; 32]) -> u32 {
        self.timers.get(conversation).map_or(0, |t| t.seconds)
    }
}

impl<R: rand_core::CryptoRng> Engine<R> {
    /// Loads the timers and the messages that disappear (at opening).
    pub(super) fn load_expiry(&mut self) -> Result<(), StoreError> {
        for timer in self.store.timers()? {
            self.expiry.timers.insert(timer.conversation, timer);
        }
        for (id, record) in self.store.expiring()? {
            match record.expires_at {
                Some(at) => {
                    self.expiry.due.insert((at, id));
                }
                None => {
                    self.expiry.waiting.insert(id, record.seconds);
                }
            }
        }
        Ok(())
    }

    /// `conversation`'s disappearing-message timer in seconds (0: off).
    pub(super) fn timer_seconds(&self, conversation: Conversation) -> u32 {
        self.expiry.seconds(&conversation_key(conversation))
    }

    /// Sets `conversation`'s timer to `seconds` (0: off) for everyone in it: a message of the
    /// history, sent like a text. Setting the timer it already has sends nothing.
    pub(super) fn set_timer(
        &mut self,
        now: UnixMillis,
        conversation: Conversation,
        seconds: u32,
    ) -> Result<CommandResult, CommandError> {
        if seconds > MAX_EXPIRE_SECONDS {
            return Err(CommandError::InvalidMessage(format!(
                "a disappearing-message timer is at most {MAX_EXPIRE_SECONDS} seconds"
            )));
        }
        if let Conversation::Contact(peer) = conversation {
            self.known_contact(&peer)?;
        }
        if self.timer_seconds(conversation) == seconds {
            return Ok(CommandResult::Done);
        }
        let body = Body::ExpireTimer(ExpireTimer { seconds });
        let id = match conversation {
            Conversation::Contact(to) => self.queue(now, to, body, OutboxKind::Message)?,
            Conversation::Group(group) => self.publish(now, group, body, false)?,
        };
        let mut batch = Batch::new();
        self.take_timer(conversation, seconds, now, &mut batch);
        self.commit(batch)?;
        self.event(self.timer_event(conversation, seconds));
        Ok(CommandResult::Queued(id))
    }

    /// A timer set at `set_at` (by its setter's clock): taken unless a later setting is in
    /// force. Returns whether it was taken.
    pub(super) fn take_timer(
        &mut self,
        conversation: Conversation,
        seconds: u32,
        set_at: UnixMillis,
        batch: &mut Batch,
    ) -> bool {
        let key = conversation_key(conversation);
        let current = self.expiry.timers.get(&key).copied();
        if current.is_some_and(|t| t.set_at > set_at) {
            return false;
        }
        // A timer switched off is kept too: a setting older than it, arriving late, must
        // not turn it on again.
        let record = TimerRecord { conversation: key, seconds, set_at };
        batch.put_timer(&record);
        self.expiry.timers.insert(key, record);
        true
    }

    /// A setting for `conversation` arrived: applies it and announces it (unless a later
    /// one is in force).
    pub(super) fn receive_timer(
        &mut self,
        conversation: Conversation,
        timer: ExpireTimer,
        sent_at: UnixMillis,
        batch: &mut Batch,
    ) -> Option<Event> {
        self.take_timer(conversation, timer.seconds, sent_at, batch)
            .then(|| self.timer_event(conversation, timer.seconds))
    }

    fn timer_event(&self, conversation: Conversation, seconds: u32) -> Event {
        match conversation {
            Conversation::Contact(peer) => Event::TimerChanged { peer, group: None, seconds },
            Conversation::Group(group) => {
                Event::TimerChanged { peer: self.user_id(), group: Some(group), seconds }
            }
        }
    }

    /// Message `id`, just stored in `conversation`, disappears if its timer is on (its clock
    /// starts at [`Engine::start_expiry`]).
    pub(super) fn mark_expiring(
        &mut self,
        conversation: Conversation,
        id: MessageId,
        batch: &mut Batch,
    ) {
        let seconds = self.timer_seconds(conversation);
        if seconds == 0 {
            return;
        }
        batch.put_expiring(&id, &ExpiringRecord { seconds, expires_at: None });
        self.expiry.waiting.insert(id, seconds);
    }

    /// Message `id` reached `status`: if it disappears and its clock has not started, it
    /// starts now (read here, or ours sent).
    pub(super) fn start_expiry(
        &mut self,
        id: &MessageId,
        status: MessageStatus,
        batch: &mut Batch,
    ) {
        if !matches!(status, MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read) {
            return;
        }
        let Some(seconds) = self.expiry.waiting.remove(id) else { return };
        let at = self.now.saturating_add(u64::from(seconds) * 1000);
        batch.put_expiring(id, &ExpiringRecord { seconds, expires_at: Some(at) });
        self.expiry.due.insert((at, *id));
    }

    /// Forgets what the expiry state knows of deleted messages.
    pub(super) fn forget_expiring(&mut self, ids: &[MessageId]) {
        for id in ids {
            self.expiry.waiting.remove(id);
        }
        if !ids.is_empty() && !self.expiry.due.is_empty() {
            // One pass over the running timers, a set lookup each (a conversation deleted a
            // page at a time would otherwise cost page × timers comparisons).
            let gone: std::collections::HashSet<&MessageId> = ids.iter().collect();
            self.expiry.due.retain(|(_, id)| !gone.contains(id));
        }
    }

    /// When (monotonic) the next message disappears.
    pub(super) fn next_expiry(&self) -> Option<u64> {
        let (at, _) = self.expiry.due.first()?;
        Some(self.after(at.saturating_sub(self.now)))
    }

    /// Deletes every message whose time has come, a conversation at a time.
    pub(super) fn expire_due(&mut self, now: UnixMillis) -> Result<(), StoreError> {
        let mut by_conversation: BTreeMap<(UserId, Option<GroupId>), Vec<MessageRecord>> =
            BTreeMap::new();
        let mut gone = Vec::new();
        while let Some(&(at, id)) = self.expiry.due.first() {
            if at > now {
                break;
            }
            self.expiry.due.pop_first();
            match self.store.message(&id)? {
                Some(record) => {
                    by_conversation.entry((record.peer, record.group)).or_default().push(record);
                }
                // Deleted otherwise since: only its expiry entry is left.
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let mut batch = Batch::new();
            for id in &gone {
                batch.delete_expiring(id);
            }
            self.commit(batch)?;
        }
        for ((peer, group), records) in by_conversation {
            let conversation = match group {
                Some(group) => Conversation::Group(group),
                None => Conversation::Contact(peer),
            };
            self.forget_records(conversation, records, DeleteReason::Expired)?;
        }
        Ok(())
    }

    /// The disappearing-message timer of the conversation with `peer`, in seconds (0: off).
    pub fn disappearing_timer(&self, peer: &UserId) -> u32 {
        self.timer_seconds(Conversation::Contact(*peer))
    }

    /// A group's disappearing-message timer in seconds (0: off).
    pub fn group_disappearing_timer(&self, group: &GroupId) -> u32 {
        self.timer_seconds(Conversation::Group(*group))
    }
}

/// The key of a conversation's timer: the contact's user id or the group's id.
fn conversation_key(conversation: Conversation) -> [u8; 32] {
    match conversation {
        Conversation::Contact(peer) => peer.0,
        Conversation::Group(group) => group.0,
    }
}
