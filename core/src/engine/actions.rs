//! What a user does to messages already there: react, edit, delete, mark read. One path for
//! both kinds of conversation; only how the action travels differs (pairwise through the
//! outbox to a contact, published to a group).

use kith_protocol::GroupId;

use super::*;

/// The conversation an action is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Conversation {
    /// The one-to-one conversation with a contact.
    Contact(UserId),
    /// A group's conversation.
    Group(GroupId),
}

/// Most reactions stored on one message (bounds what a peer can make us store).
pub const MAX_REACTIONS_PER_MESSAGE: usize = 64;

impl<R: rand_core::CryptoRng> Engine<R> {
    /// Message `id` of `conversation` (a contact's group message is not in its one-to-one
    /// conversation).
    pub(super) fn conversation_message(
        &self,
        conversation: Conversation,
        id: &MessageId,
    ) -> Result<MessageRecord, CommandError> {
        let record = self.store.message(id)?.filter(|record| match conversation {
            Conversation::Contact(peer) => record.group.is_none() && record.peer == peer,
            Conversation::Group(group) => record.group == Some(group),
        });
        record.ok_or(CommandError::UnknownMessage)
    }

    /// One of our own messages of `conversation` (only the author edits or deletes).
    fn own_message(
        &self,
        conversation: Conversation,
        id: &MessageId,
    ) -> Result<MessageRecord, CommandError> {
        let record = self.conversation_message(conversation, id)?;
        if record.direction != Direction::Outgoing {
            return Err(CommandError::UnknownMessage);
        }
        Ok(record)
    }

    /// Sends an action's content the way its conversation travels.
    fn send_action(
        &mut self,
        now: UnixMillis,
        conversation: Conversation,
        body: Body,
    ) -> Result<MessageId, CommandError> {
        match conversation {
            Conversation::Contact(to) => self.queue(now, to, body, OutboxKind::Control),
            Conversation::Group(group) => self.publish(now, group, body, false),
        }
    }

    /// Adds (or with `remove`, takes back) our `emoji` reaction to `target`.
    pub(super) fn react(
        &mut self,
        now: UnixMillis,
        conversation: Conversation,
        target: MessageId,
        emoji: String,
        remove: bool,
    ) -> Result<CommandResult, CommandError> {
        let mut record = self.conversation_message(conversation, &target)?;
        apply_reaction(&mut record.reactions, self.user_id(), &emoji, remove);
        let body = Body::Reaction(Reaction { target, emoji, remove });
        let id = self.send_action(now, conversation, body)?;
        self.update_message(record)?;
        Ok(CommandResult::Queued(id))
    }

    /// Replaces the text of our message `target`.
    pub(super) fn edit(
        &mut self,
        now: UnixMillis,
        conversation: Conversation,
        target: MessageId,
        text: String,
    ) -> Result<CommandResult, CommandError> {
        let mut record = self.own_message(conversation, &target)?;
        let edited = edited_content(&record, &text).ok_or(CommandError::UnknownMessage)?;
        let id = self.send_action(now, conversation, Body::Edit(Edit { target, body: text }))?;
        record.content = Some(edited);
        record.edited_at = Some(now);
        self.update_message(record)?;
        Ok(CommandResult::Queued(id))
    }

    /// Deletes our message `target` for everyone (what it said is gone here too).
    pub(super) fn delete(
        &mut self,
        now: UnixMillis,
        conversation: Conversation,
        target: MessageId,
    ) -> Result<CommandResult, CommandError> {
        let mut record = self.own_message(conversation, &target)?;
        let id = self.send_action(now, conversation, Body::Delete(Delete { target }))?;
        record.content = None;
        self.update_message(record)?;
        Ok(CommandResult::Queued(id))
    }

    /// Deletes messages `ids` of `conversation` from this device only: their records and
    /// index entries, and an outbox entry still waiting (it is not sent). All or nothing.
    pub(super) fn delete_locally(
        &mut self,
        conversation: Conversation,
        ids: &[MessageId],
    ) -> Result<CommandResult, CommandError> {
        let records = ids
            .iter()
            .map(|id| self.conversation_message(conversation, id))
            .collect::<Result<Vec<_>, _>>()?;
        self.forget_records(conversation, records, DeleteReason::Local)?;
        Ok(CommandResult::Done)
    }

    /// Deletes every message of `conversation` from this device only, a page at a time.
    pub(super) fn delete_conversation(
        &mut self,
        conversation: Conversation,
    ) -> Result<CommandResult, CommandError> {
        let key = match conversation {
            Conversation::Contact(peer) => {
                self.known_contact(&peer)?;
                peer.0
            }
            Conversation::Group(group) => group.0,
        };
        loop {
            let page = self.store.history(&key, None, 256)?;
            if page.is_empty() {
                return Ok(CommandResult::Done);
            }
            self.forget_records(conversation, page, DeleteReason::Local)?;
        }
    }

    /// Deletes `records` of `conversation` (and what waits to send them) from this device.
    pub(super) fn forget_records(
        &mut self,
        conversation: Conversation,
        records: Vec<MessageRecord>,
        reason: DeleteReason,
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for record in &records {
            batch.delete_message(record);
            if let Some(entry) = self.outbox.get(&record.id) {
                batch.delete_outbox(entry.record.seq);
            }
        }
        self.commit(batch)?;
        let ids: Vec<MessageId> = records.iter().map(|r| r.id).collect();
        for id in &ids {
            self.outbox.remove(id);
        }
        self.forget_expiring(&ids);
        let (peer, group) = match conversation {
            Conversation::Contact(peer) => (peer, None),
            Conversation::Group(group) => (self.user_id(), Some(group)),
        };
        self.event(Event::MessagesDeleted { peer, group, ids, reason });
        Ok(())
    }

    pub(super) fn update_message(&mut self, record: MessageRecord) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.update_message(&record);
        self.commit(batch)?;
        let message = record.to_message()?;
        self.event(Event::MessageUpdated(Box::new(message)));
        Ok(())
    }

    /// Marks messages `ids` of `conversation` read.
    pub(super) fn mark_read(
        &mut self,
        now: UnixMillis,
        conversation: Conversation,
        ids: Vec<MessageId>,
    ) -> Result<CommandResult, CommandError> {
        let records = ids
            .iter()
            .map(|id| self.conversation_message(conversation, id))
            .collect::<Result<_, _>>()?;
        self.mark_records_read(now, records)
    }

    /// Marks the incoming, unread ones of `records` read, and (if enabled) sends read receipts
    /// to their authors: the peer of a conversation, each author in a group.
    pub(super) fn mark_records_read(
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
            // A stranger's messages (a message request) are read without telling them: a
            // receipt would confirm to anyone who writes that this identity is in use.
            // Likewise a group's messages while its invitation waits for an answer.
            match record.group {
                None if !self.is_named_contact(&record.peer)? => continue,
                Some(group) if self.is_invitation(&group) => continue,
                _ => {}
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
}

/// Adds or removes `from`'s `emoji` reaction.
pub(super) fn apply_reaction(
    reactions: &mut Vec<MessageReaction>,
    from: UserId,
    emoji: &str,
    remove: bool,
) {
    reactions.retain(|r| !(r.from == from && r.emoji == emoji));
    if !remove && reactions.len() < MAX_REACTIONS_PER_MESSAGE {
        reactions.push(MessageReaction { from, emoji: emoji.to_owned() });
    }
}

/// The content of `record` with its text replaced, if it is a live text message.
pub(super) fn edited_content(record: &MessageRecord, text: &str) -> Option<Vec<u8>> {
    let content: Content = kith_protocol::decode(record.content.as_ref()?).ok()?;
    let Body::Text(old) = content.body else { return None };
    let new = Content {
        sent_at: content.sent_at,
        body: Body::Text(Text { body: text.to_owned(), reply_to: old.reply_to }),
    };
    kith_protocol::encode(&new).ok()
}
