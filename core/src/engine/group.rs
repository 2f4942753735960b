//! Groups in the engine: membership changes, sender keys, publishing and receiving.
//!
//! Control messages and sender keys travel pairwise over ratchet sessions (reliable, through
//! the outbox); group messages are sealed once with our sender key and published on the
//! group's topic, and the members the topic did not reach get the same sealed message through
//! the outbox (directly when they come back, else through their relays).

use std::collections::{BTreeSet, HashMap};

use kith_protocol::content::{
    Body, Content, Delete, Edit, GroupAction, GroupControl, Reaction, ReceiptKind,
    SenderKeyDistribution, Text,
};
use kith_protocol::envelope::{Envelope, EnvelopeKind, GroupEnvelope, GroupMessage};
use kith_protocol::limits::{MAX_GROUP_MEMBERS, MAX_NAME_BYTES};
use kith_protocol::{GroupId, GroupTag, MessageId, UnixMillis, UserId};

use super::{
    CommandError, CommandResult, Engine, Event, GroupCommand, Output, Publication, ReceiveError,
    ValidationToken, Verdict, apply_reaction, edited_content,
};
use crate::group::sender_key::OwnChain;
use crate::group::{
    Group, MAX_GROUP_OPS, Membership, group_id, group_tag, sign_control, verify_control,
};
use crate::model::{Direction, MemberReceipt, Message, MessageStatus};
use crate::store::records::{
    GroupRecord, MessageRecord, OutboxKind, OutboxRecord, PendingGroupRecord,
};
use crate::store::{Batch, StoreError};

/// Most group messages kept waiting for their sender's key, per group. Beyond it, gossip is
/// dropped (ignored) and mailbox copies refused for now (the relay keeps them).
pub const MAX_PENDING_PER_GROUP: usize = 1024;

/// A member the topic reached has this long to acknowledge a group message (its delivery
/// receipt) before its copy goes out through the outbox after all: a member that dropped off
/// as the message was published misses nothing.
pub const GROUP_RECEIPT_TIMEOUT_MS: u64 = 15_000;

/// Delivery receipts for group messages wait up to this long, so that one receipt to an
/// author covers every message of theirs received meanwhile: without it, each message of a
/// group of n costs its author n − 1 receipts to open and store. Well below
/// [`GROUP_RECEIPT_TIMEOUT_MS`], so that a waiting copy is not sent needlessly.
pub const GROUP_RECEIPT_DELAY_MS: u64 = 1_000;

/// Pending messages retried per key that arrives.
const PENDING_RETRY_BATCH: usize = 256;

/// A group and its replayed state, kept in memory.
pub(crate) struct GroupState {
    pub(crate) record: GroupRecord,
    pub(crate) membership: Membership,
}

/// What became of a received group message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupReceived {
    /// Opened and applied.
    Accepted,
    /// Stored until its sender's key arrives.
    Pending,
    /// Already had it (by mail, then by gossip, or the other way round).
    Duplicate,
}

/// A change to apply once the envelope that carried it is committed (it may queue messages
/// to the envelope's own sender, whose sessions are in use until then).
pub(crate) enum GroupEffect {
    Control(GroupControl),
    SenderKey(SenderKeyDistribution),
}

/// The outbox id of the copy of group message `id` for `member` (each copy is its own outbox
/// entry; the envelope inside keeps the message's id).
fn copy_id(id: &MessageId, member: &UserId) -> MessageId {
    let mut hasher = blake3::Hasher::new_derive_key("kith 2026-11 group copy id v1");
    hasher.update(&id.0);
    hasher.update(&member.0);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    MessageId(out)
}

impl<R: rand_core::CryptoRng> Engine<R> {
    // ---------------------------------------------------------------- queries

    /// Every group we know, joined or not.
    pub fn groups(&self) -> Vec<Group> {
        let me = self.user_id();
        let mut groups: Vec<Group> = self
            .groups
            .values()
            .filter(|g| g.membership.created())
            .map(|g| Group::new(g.record.id, &g.membership, &me))
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        groups
    }

    /// A group by id.
    pub fn group(&self, id: &GroupId) -> Option<Group> {
        self.groups
            .get(id)
            .filter(|g| g.membership.created())
            .map(|g| Group::new(*id, &g.membership, &self.user_id()))
    }

    /// Up to `limit` messages of a group before sequence number `before` (all if `None`),
    /// oldest first.
    pub fn group_history(
        &self,
        group: &GroupId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.conversation(&group.0, before, limit)
    }

    /// How many group messages of `group` wait for their sender's key (messages we received
    /// but cannot open yet, or ever: a removed member's view of the group's later traffic).
    pub fn pending_group_messages(&self, group: &GroupId) -> Result<usize, StoreError> {
        Ok(self.store.pending_group(group, None, usize::MAX)?.len())
    }

    // ---------------------------------------------------------------- loading

    /// Loads every group and asks the driver to subscribe to the ones we are in.
    pub(super) fn load_groups(&mut self) -> Result<(), StoreError> {
        let me = self.user_id();
        for record in self.store.groups()? {
            let membership = Membership::replay(&record.id, &record.ops);
            let tag = group_tag(&record.id);
            if membership.members.contains(&me) {
                let members = membership.members.iter().filter(|m| **m != me).copied().collect();
                self.held.push_back(Output::Subscribe { tag, members });
            }
            self.tags.insert(tag, record.id);
            self.groups.insert(record.id, GroupState { record, membership });
        }
        Ok(())
    }

    // ---------------------------------------------------------------- commands

    pub(super) fn create_group(
        &mut self,
        now: UnixMillis,
        name: String,
        members: Vec<UserId>,
    ) -> Result<CommandResult, CommandError> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(CommandError::InvalidName);
        }
        let me = self.user_id();
        let mut all = BTreeSet::from([me]);
        for member in &members {
            self.sendable_contact(now, member)?;
            all.insert(*member);
        }
        if all.len() > MAX_GROUP_MEMBERS {
            return Err(CommandError::GroupFull);
        }
        let mut salt = [0u8; 16];
        self.rng.fill_bytes(&mut salt);
        let id = group_id(&me, &salt);
        let action = GroupAction::Create { name, members: all.into_iter().collect(), salt };
        let op = sign_control(&self.identity, id, 0, action)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        self.apply_ops(now, id, vec![op.clone()], Some(&op))?;
        Ok(CommandResult::Group(id))
    }

    pub(super) fn group_command(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        command: GroupCommand,
    ) -> Result<CommandResult, CommandError> {
        let state = self.groups.get(&group).filter(|g| g.membership.created());
        let Some(state) = state else { return Err(CommandError::UnknownGroup) };
        let (membership, ops) = (state.membership.clone(), state.record.ops.len());
        let me = self.user_id();
        if !membership.members.contains(&me) {
            return Err(CommandError::NotAMember);
        }
        let admin = membership.admins.contains(&me);
        let members = &membership.members;
        let change = match command {
            GroupCommand::Send { text, reply_to } => {
                let body = Body::Text(Text { body: text, reply_to });
                return self.publish(now, group, body, false).map(CommandResult::Queued);
            }
            GroupCommand::SendMedia { manifest } => {
                return self
                    .publish(now, group, Body::Media(*manifest), false)
                    .map(CommandResult::Queued);
            }
            GroupCommand::React { target, emoji, remove } => {
                let mut record = self.group_message(&group, &target)?;
                apply_reaction(&mut record.reactions, me, &emoji, remove);
                let body = Body::Reaction(Reaction { target, emoji, remove });
                let id = self.publish(now, group, body, false)?;
                self.update_message(record)?;
                return Ok(CommandResult::Queued(id));
            }
            GroupCommand::Edit { target, text } => {
                let mut record = self.group_message(&group, &target)?;
                let edited = (record.direction == Direction::Outgoing)
                    .then(|| edited_content(&record, &text))
                    .flatten()
                    .ok_or(CommandError::UnknownMessage)?;
                let id =
                    self.publish(now, group, Body::Edit(Edit { target, body: text }), false)?;
                record.content = Some(edited);
                record.edited_at = Some(now);
                self.update_message(record)?;
                return Ok(CommandResult::Queued(id));
            }
            GroupCommand::Delete { target } => {
                let mut record = self.group_message(&group, &target)?;
                if record.direction != Direction::Outgoing {
                    return Err(CommandError::UnknownMessage);
                }
                let id = self.publish(now, group, Body::Delete(Delete { target }), false)?;
                record.content = None;
                self.update_message(record)?;
                return Ok(CommandResult::Queued(id));
            }
            GroupCommand::MarkRead { ids } => return self.mark_group_read(now, group, ids),
            GroupCommand::Typing { state } => {
                if self.config.typing_indicators {
                    self.publish(now, group, Body::Typing(state), true)?;
                }
                return Ok(CommandResult::Done);
            }
            GroupCommand::Add { member } => {
                if !admin {
                    return Err(CommandError::NotAnAdmin);
                }
                self.sendable_contact(now, &member)?;
                if members.contains(&member) {
                    return Err(CommandError::InvalidChange);
                }
                if members.len() >= MAX_GROUP_MEMBERS {
                    return Err(CommandError::GroupFull);
                }
                GroupAction::Add { member }
            }
            GroupCommand::Remove { member } => {
                if !admin {
                    return Err(CommandError::NotAnAdmin);
                }
                if !members.contains(&member) || member == me || Some(member) == membership.creator
                {
                    return Err(CommandError::InvalidChange);
                }
                GroupAction::Remove { member }
            }
            GroupCommand::Leave => GroupAction::Leave,
            GroupCommand::Rename { name } => {
                if !admin {
                    return Err(CommandError::NotAnAdmin);
                }
                let name = name.trim().to_owned();
                if name.is_empty() || name.len() > MAX_NAME_BYTES {
                    return Err(CommandError::InvalidName);
                }
                GroupAction::Rename { name }
            }
            GroupCommand::Promote { member } => {
                if !admin {
                    return Err(CommandError::NotAnAdmin);
                }
                if !members.contains(&member) {
                    return Err(CommandError::InvalidChange);
                }
                GroupAction::Promote { member }
            }
        };
        if ops >= MAX_GROUP_OPS {
            return Err(CommandError::GroupFull);
        }
        let lamport = membership.lamport + 1;
        let op = sign_control(&self.identity, group, lamport, change)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        self.apply_ops(now, group, vec![op.clone()], Some(&op))?;
        Ok(CommandResult::Done)
    }

    /// A message of the group's history.
    fn group_message(
        &self,
        group: &GroupId,
        id: &MessageId,
    ) -> Result<MessageRecord, CommandError> {
        match self.store.message(id)? {
            Some(record) if record.group == Some(*group) => Ok(record),
            _ => Err(CommandError::UnknownMessage),
        }
    }

    fn mark_group_read(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        ids: Vec<MessageId>,
    ) -> Result<CommandResult, CommandError> {
        let records =
            ids.iter().map(|id| self.group_message(&group, id)).collect::<Result<_, _>>()?;
        self.mark_records_read(now, records)
    }

    // ---------------------------------------------------------------- membership

    /// Adds control messages to a group's set, replays it and acts on what changed. `ours` is
    /// a change we just made (sent to every member, the new member gets the whole set).
    pub(super) fn apply_ops(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        ops: Vec<GroupControl>,
        ours: Option<&GroupControl>,
    ) -> Result<(), StoreError> {
        let mut record = match self.groups.get(&group) {
            Some(state) => state.record.clone(),
            None => GroupRecord { id: group, ops: Vec::new(), since: now },
        };
        let mut added = Vec::new();
        for op in ops {
            if op.group != group
                || record.ops.len() >= MAX_GROUP_OPS
                || record.ops.contains(&op)
                || verify_control(&op).is_err()
            {
                continue;
            }
            record.ops.push(op.clone());
            added.push(op);
        }
        if added.is_empty() {
            return Ok(());
        }
        let old = self.groups.get(&group).map(|g| g.membership.clone()).unwrap_or_default();
        let new = Membership::replay(&group, &record.ops);
        let mut batch = Batch::new();
        batch.put_group(&record);
        self.commit(batch)?;
        self.tags.insert(group_tag(&group), group);
        self.groups.insert(group, GroupState { record, membership: new.clone() });
        if let Some(op) = ours {
            self.distribute_op(now, op, &old, &new)?;
        }
        self.membership_changed(now, group, &old, &new, ours)
    }

    /// Sends our change to everyone it concerns: the members after it, and a removed member
    /// (so it knows). A member we added gets every control message we hold.
    fn distribute_op(
        &mut self,
        now: UnixMillis,
        op: &GroupControl,
        old: &Membership,
        new: &Membership,
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let mut to: BTreeSet<UserId> = new.members.iter().copied().collect();
        to.extend(old.members.difference(&new.members));
        to.remove(&me);
        for member in to {
            self.send_reliably(now, member, Body::GroupControl(op.clone()))?;
        }
        Ok(())
    }

    /// Acts on a membership change: joining (our chain out to everyone, subscribe), leaving
    /// (forget every key, unsubscribe), members added (our current chain to them) or removed
    /// (forget their chains, rotate ours).
    fn membership_changed(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        old: &Membership,
        new: &Membership,
        ours: Option<&GroupControl>,
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let tag = group_tag(&group);
        let (was, is) = (old.members.contains(&me), new.members.contains(&me));
        let others: Vec<UserId> = new.members.iter().filter(|m| **m != me).copied().collect();
        if is && !was {
            self.rotate(now, group, &others)?;
            self.held.push_back(Output::Subscribe { tag, members: others.clone() });
        } else if was && !is {
            let mut batch = Batch::new();
            for holder in self.store.chain_holders(&group)? {
                batch.delete_chains(&group, &holder);
            }
            for (sender, id, _) in self.store.pending_group(&group, None, usize::MAX)? {
                batch.delete_pending_group(&group, &sender, &id);
            }
            self.commit(batch)?;
            self.held.push_back(Output::Unsubscribe { tag });
        } else if is {
            let added: Vec<UserId> = new.members.difference(&old.members).copied().collect();
            let removed: Vec<UserId> = old.members.difference(&new.members).copied().collect();
            for member in &added {
                // Our chain as it stands: the new member reads from here on, nothing before.
                if let Some(chain) = self.store.own_chain(&group, &me)? {
                    let skd = chain.distribution(group);
                    self.send_reliably(now, *member, Body::SenderKeyDistribution(skd))?;
                }
                // What we know of the group's history, so concurrent changes reach them too:
                // everything if we added them, else the changes we made.
                let ops = self.groups.get(&group).map(|g| g.record.ops.clone()).unwrap_or_default();
                let added_by_us = ours.is_some_and(
                    |op| matches!(op.action, GroupAction::Add { member: m } if m == *member),
                );
                for op in ops {
                    let send = if added_by_us { Some(&op) != ours } else { op.author == me };
                    if send {
                        self.send_reliably(now, *member, Body::GroupControl(op))?;
                    }
                }
            }
            if !removed.is_empty() {
                let mut batch = Batch::new();
                for member in &removed {
                    batch.delete_chains(&group, member);
                    for (_, id, _) in self.store.pending_group(&group, Some(member), usize::MAX)? {
                        batch.delete_pending_group(&group, member, &id);
                    }
                }
                self.commit(batch)?;
                // A removed member holds our chain: nothing we send from now on uses it.
                self.rotate(now, group, &others)?;
            }
            if !added.is_empty() {
                self.held.push_back(Output::Subscribe { tag, members: others });
            }
        }
        if old != new {
            self.event(Event::GroupChanged(Box::new(Group::new(group, new, &me))));
        }
        if is {
            self.retry_pending(now, group, None)?;
        }
        Ok(())
    }

    /// Starts a new sending chain and sends it to `members`.
    fn rotate(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        members: &[UserId],
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let chain = OwnChain::generate(&mut self.rng);
        let mut batch = Batch::new();
        batch.put_own_chain(&group, &me, &chain);
        self.commit(batch)?;
        let skd = chain.distribution(group);
        for member in members {
            self.send_reliably(now, *member, Body::SenderKeyDistribution(skd.clone()))?;
        }
        Ok(())
    }

    /// Queues a control content pairwise; a member we cannot write to (blocked, identity
    /// changed, outbox full) is skipped and the rest still get it.
    fn send_reliably(&mut self, now: UnixMillis, to: UserId, body: Body) -> Result<(), StoreError> {
        match self.queue(now, to, body, OutboxKind::Control) {
            Ok(_) => Ok(()),
            Err(CommandError::Store(e)) => Err(e),
            Err(_) => Ok(()),
        }
    }

    /// Applies the group contents an envelope from `sender` carried, once it is committed.
    pub(super) fn apply_group_effects(
        &mut self,
        now: UnixMillis,
        sender: UserId,
        effects: Vec<GroupEffect>,
    ) -> Result<(), StoreError> {
        for effect in effects {
            match effect {
                GroupEffect::Control(op) => {
                    let group = op.group;
                    self.apply_ops(now, group, vec![op], None)?;
                }
                GroupEffect::SenderKey(skd) => {
                    let group = skd.group;
                    let mut chains = self.store.member_chains(&group, &sender)?;
                    if chains.install(&skd) {
                        let mut batch = Batch::new();
                        batch.put_member_chains(&group, &sender, &chains);
                        self.commit(batch)?;
                        self.retry_pending(now, group, Some(sender))?;
                    }
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- sending

    /// Seals `body` with our chain and asks the driver to publish it. Messages of the history
    /// are stored (Queued until published) and copied to every other member in the outbox,
    /// unscheduled: [`Input::GroupPublished`](super::Input::GroupPublished) drops the copies
    /// of the members the topic reached and sends the rest. A crash before that sends them all
    /// (receivers drop duplicates), so no member misses a message.
    fn publish(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        body: Body,
        ephemeral: bool,
    ) -> Result<MessageId, CommandError> {
        let me = self.user_id();
        let members: Vec<UserId> = self
            .groups
            .get(&group)
            .map(|g| g.membership.members.iter().filter(|m| **m != me).copied().collect())
            .unwrap_or_default();
        if !ephemeral && self.outbox.len() + members.len() > super::MAX_OUTBOX {
            return Err(CommandError::OutboxFull { max: super::MAX_OUTBOX });
        }
        let stored = matches!(body, Body::Text(_) | Body::Media(_));
        let content = Content { sent_at: now, body };
        let plaintext = kith_protocol::encode(&content)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let mut chain = match self.store.own_chain(&group, &me)? {
            Some(chain) => chain,
            None => return Err(CommandError::NotAMember),
        };
        let id = self.random_id();
        let tag = group_tag(&group);
        let message = chain
            .seal(tag, &me, &id, &plaintext)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let envelope = GroupEnvelope { id, sender: me, message: message.clone() };
        let bytes = kith_protocol::encode(&envelope)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let mut batch = Batch::new();
        batch.put_own_chain(&group, &me, &chain);
        let mut copies = Vec::new();
        if !ephemeral {
            if stored {
                let seq = self.take_seq();
                batch.put_message(&MessageRecord {
                    id,
                    peer: me,
                    group: Some(group),
                    direction: Direction::Outgoing,
                    content: Some(plaintext),
                    stored_at: now,
                    status: MessageStatus::Queued,
                    reactions: Vec::new(),
                    edited_at: None,
                    sent_at: now,
                    seq,
                    receipts: Vec::new(),
                });
            }
            for member in &members {
                let copy = Envelope {
                    id,
                    sender: me,
                    recipient: *member,
                    kind: EnvelopeKind::Group(message.clone()),
                };
                let envelope = kith_protocol::encode(&copy)
                    .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
                let record = OutboxRecord {
                    id: copy_id(&id, member),
                    to: *member,
                    seq: self.take_seq(),
                    kind: OutboxKind::GroupCopy,
                    content: None,
                    envelope: Some(envelope),
                    created_at: now,
                };
                batch.put_outbox(&record);
                copies.push(record);
            }
            batch.put_seq(self.next_seq);
        }
        self.commit(batch)?;
        for record in copies {
            self.outbox.insert(record, None);
        }
        self.held.push_back(Output::Publish(Publication {
            id,
            tag,
            envelope: bytes,
            members,
            ephemeral,
        }));
        Ok(id)
    }

    /// The driver published `id`: the members it did not reach get their copy now; the
    /// others' copies wait for their delivery receipts, and go out if none comes in time.
    pub(super) fn on_group_published(
        &mut self,
        now: UnixMillis,
        id: MessageId,
        unreached: &[UserId],
    ) -> Result<(), StoreError> {
        let Some(index) = self.store.message_index(&id)? else { return Ok(()) };
        let Some(group) = index.group else { return Ok(()) };
        let members: Vec<UserId> = self
            .groups
            .get(&group)
            .map(|g| g.membership.members.iter().copied().collect())
            .unwrap_or_default();
        let mut batch = Batch::new();
        let mut send = Vec::new();
        let mut reached_any = false;
        for member in members {
            let copy = copy_id(&id, &member);
            if self.outbox.get(&copy).is_none() {
                continue;
            }
            if unreached.contains(&member) {
                send.push(copy);
            } else {
                reached_any = true;
                self.outbox.reschedule(&copy, Some(now + GROUP_RECEIPT_TIMEOUT_MS), false);
            }
        }
        let status =
            if reached_any { self.set_status(&id, MessageStatus::Sent, &mut batch)? } else { None };
        self.commit(batch)?;
        if let Some(event) = status {
            self.event(event);
        }
        for copy in send {
            self.attempt(now, copy);
        }
        Ok(())
    }

    /// The copy `copy` of a group message was stored by the member or a relay.
    pub(super) fn group_copy_delivered(
        &self,
        envelope: &[u8],
        batch: &mut Batch,
    ) -> Result<Option<Event>, StoreError> {
        match kith_protocol::decode::<Envelope>(envelope) {
            Ok(e) => self.set_status(&e.id, MessageStatus::Sent, batch),
            Err(_) => Ok(None),
        }
    }

    // ---------------------------------------------------------------- receiving

    /// A group message from gossip: judged and applied; the verdict is ready at once (it
    /// promises nothing about our state, so gossip need not wait for the flush to forward).
    pub(super) fn on_group_gossip(
        &mut self,
        now: UnixMillis,
        bytes: &[u8],
        token: ValidationToken,
    ) -> Result<(), StoreError> {
        let decoded = kith_protocol::decode::<GroupEnvelope>(bytes);
        let sender = decoded.as_ref().ok().map(|e| e.sender);
        let result = match decoded {
            Ok(envelope) => self.receive_group(now, envelope, true, false),
            Err(e) => Err(ReceiveError::Malformed(e)),
        };
        let verdict = match result {
            Ok(GroupReceived::Accepted) => Verdict::Accept,
            Ok(GroupReceived::Pending | GroupReceived::Duplicate) => Verdict::Ignore,
            Err(ReceiveError::Store(e)) => {
                self.ready.push_back(Output::Validation { token, verdict: Verdict::Ignore });
                return Err(e);
            }
            Err(ReceiveError::UnknownGroup | ReceiveError::PendingFull) => Verdict::Ignore,
            Err(e) => {
                self.event(Event::Rejected { sender, reason: e.reject_reason() });
                Verdict::Reject
            }
        };
        self.ready.push_back(Output::Validation { token, verdict });
        Ok(())
    }

    /// Receives a group message (by gossip, or a copy by mail or directly). Checks, in order:
    /// group, sender, replay, membership, key (else kept pending), signature, then opens it on
    /// a copy of the chain; only an accepted message changes state.
    pub(super) fn receive_group(
        &mut self,
        now: UnixMillis,
        envelope: GroupEnvelope,
        gossip: bool,
        retrying: bool,
    ) -> Result<GroupReceived, ReceiveError> {
        let me = self.user_id();
        let GroupEnvelope { id, sender, message } = envelope;
        let group = *self.tags.get(&message.tag).ok_or(ReceiveError::UnknownGroup)?;
        let state = self.groups.get(&group).ok_or(ReceiveError::UnknownGroup)?;
        if !state.membership.members.contains(&me) {
            return Err(ReceiveError::UnknownGroup);
        }
        if sender == me {
            return Err(ReceiveError::Replay);
        }
        match self.store.seen_group(&sender, &id)? {
            Some(true) if gossip => return Err(ReceiveError::Replay),
            Some(_) => return Ok(GroupReceived::Duplicate),
            None => {}
        }
        if !state.membership.members.contains(&sender) {
            return Err(ReceiveError::NotAMember);
        }
        if self.store.contact(&sender)?.is_some_and(|c| c.blocked) {
            return Err(ReceiveError::Blocked);
        }
        let mut chains = self.store.member_chains(&group, &sender)?;
        let Some(chain) = chains.get(message.chain_id).cloned() else {
            if retrying {
                return Ok(GroupReceived::Pending);
            }
            return self.keep_pending(now, group, sender, id, message, gossip);
        };
        chain.verify(&sender, &id, &message)?;
        let (plaintext, next) = chain.open(&sender, &id, &message, now)?;
        let content =
            kith_protocol::decode::<Content>(&plaintext).map_err(|_| ReceiveError::BadContent)?;
        let mut batch = Batch::new();
        chains.update(next);
        batch.put_member_chains(&group, &sender, &chains);
        batch.mark_seen_group(&sender, &id, now, gossip);
        let events =
            self.apply_group_content(now, group, sender, id, plaintext, content, &mut batch)?;
        self.commit(batch)?;
        let receipt = events.iter().any(|e| matches!(e, Event::Message(_)));
        events.into_iter().for_each(|e| self.event(e));
        if receipt {
            self.owe_group_receipt(now, sender, id);
        }
        Ok(GroupReceived::Accepted)
    }

    /// Owes `author` a delivery receipt for its group message `id`: it goes with every other
    /// one owed within [`GROUP_RECEIPT_DELAY_MS`] (or at [`Engine::release_receipts`]).
    pub(super) fn owe_group_receipt(&mut self, now: UnixMillis, author: UserId, id: MessageId) {
        self.group_receipts.entry(author).or_default().insert(id);
        self.group_receipts_due.get_or_insert(now.saturating_add(GROUP_RECEIPT_DELAY_MS));
    }

    /// A copy of a group message we already have: its author sends the copy only when our
    /// delivery receipt did not come (lost in a crash before it went out), so owe it again.
    pub(super) fn reconfirm_group_message(
        &mut self,
        now: UnixMillis,
        author: UserId,
        id: MessageId,
    ) -> Result<(), StoreError> {
        if self
            .store
            .message_index(&id)?
            .is_some_and(|index| index.group.is_some() && index.peer == author)
        {
            self.owe_group_receipt(now, author, id);
        }
        Ok(())
    }

    fn keep_pending(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        sender: UserId,
        id: MessageId,
        message: GroupMessage,
        gossip: bool,
    ) -> Result<GroupReceived, ReceiveError> {
        if self.store.pending_group(&group, None, MAX_PENDING_PER_GROUP)?.len()
            >= MAX_PENDING_PER_GROUP
        {
            return Err(ReceiveError::PendingFull);
        }
        let envelope = kith_protocol::encode(&GroupEnvelope { id, sender, message })
            .map_err(|_| ReceiveError::BadContent)?;
        let mut batch = Batch::new();
        batch.put_pending_group(
            &group,
            &sender,
            &id,
            &PendingGroupRecord { envelope, received_at: now, gossip },
        );
        self.commit(batch)?;
        Ok(GroupReceived::Pending)
    }

    /// Tries the messages waiting in `group` (from `sender`, if given) again.
    fn retry_pending(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        sender: Option<UserId>,
    ) -> Result<(), StoreError> {
        let waiting = self.store.pending_group(&group, sender.as_ref(), PENDING_RETRY_BATCH)?;
        for (sender, id, record) in waiting {
            let result = match kith_protocol::decode::<GroupEnvelope>(&record.envelope) {
                Ok(envelope) => self.receive_group(now, envelope, record.gossip, true),
                Err(e) => Err(ReceiveError::Malformed(e)),
            };
            match result {
                Ok(GroupReceived::Pending) => {}
                Err(ReceiveError::Store(e)) => return Err(e),
                Ok(_) | Err(_) => {
                    let mut batch = Batch::new();
                    batch.delete_pending_group(&group, &sender, &id);
                    self.commit(batch)?;
                }
            }
        }
        Ok(())
    }

    /// Applies an opened group content: adds its writes to `batch`, returns its events.
    #[allow(clippy::too_many_arguments)]
    fn apply_group_content(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        sender: UserId,
        id: MessageId,
        plaintext: Vec<u8>,
        content: Content,
        batch: &mut Batch,
    ) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        let in_group = |record: &MessageRecord| record.group == Some(group);
        match content.body {
            Body::Text(_) | Body::Media(_) => {
                let sent_at = content.sent_at;
                events.push(self.store_incoming(
                    now,
                    sender,
                    Some(group),
                    id,
                    plaintext,
                    sent_at,
                    batch,
                )?);
            }
            Body::Reaction(reaction) => {
                if let Some(mut target) = self.store.message(&reaction.target)?.filter(in_group) {
                    apply_reaction(&mut target.reactions, sender, &reaction.emoji, reaction.remove);
                    batch.update_message(&target);
                    events.push(Event::MessageUpdated(Box::new(target.to_message()?)));
                }
            }
            Body::Edit(edit) => {
                let target = self
                    .store
                    .message(&edit.target)?
                    .filter(|m| in_group(m) && m.peer == sender && m.content.is_some());
                if let Some(mut target) = target
                    && let Some(edited) = edited_content(&target, &edit.body)
                {
                    target.content = Some(edited);
                    target.edited_at = Some(content.sent_at);
                    batch.update_message(&target);
                    events.push(Event::MessageUpdated(Box::new(target.to_message()?)));
                }
            }
            Body::Delete(delete) => {
                let target =
                    self.store.message(&delete.target)?.filter(|m| in_group(m) && m.peer == sender);
                if let Some(mut target) = target {
                    target.content = None;
                    batch.update_message(&target);
                    events.push(Event::MessageUpdated(Box::new(target.to_message()?)));
                }
            }
            Body::Typing(state) => events.push(Event::GroupTyping { group, peer: sender, state }),
            // Receipts, presence, profiles and group control travel pairwise, never here.
            Body::Receipt(_)
            | Body::Presence(_)
            | Body::Profile(_)
            | Body::GroupControl(_)
            | Body::SenderKeyDistribution(_) => {}
        }
        Ok(events)
    }

    /// A member's receipt for our group message `target`; returns the status event, if the
    /// message's status moved (delivered once every member has it, read once every one read it).
    pub(super) fn group_receipt(
        &self,
        mut record: MessageRecord,
        from: UserId,
        kind: ReceiptKind,
        batch: &mut Batch,
        copies_done: &mut Vec<MessageId>,
    ) -> Result<Option<Event>, StoreError> {
        let Some(group) = record.group else { return Ok(None) };
        let me = self.user_id();
        let Some(state) = self.groups.get(&group) else { return Ok(None) };
        if !state.membership.members.contains(&from) {
            return Ok(None);
        }
        // They have it: their copy need not go.
        if let Some(entry) = self.outbox.get(&copy_id(&record.id, &from)) {
            batch.delete_outbox(entry.record.seq);
            copies_done.push(entry.record.id);
        }
        match record.receipts.iter_mut().find(|r| r.member == from) {
            Some(r) if r.kind == ReceiptKind::Read || r.kind == kind => return Ok(None),
            Some(r) => r.kind = kind,
            None => record.receipts.push(MemberReceipt { member: from, kind }),
        }
        let others: Vec<&UserId> = state.membership.members.iter().filter(|m| **m != me).collect();
        let has = |wanted: ReceiptKind| {
            others.iter().all(|m| {
                record
                    .receipts
                    .iter()
                    .any(|r| r.member == **m && (r.kind == wanted || r.kind == ReceiptKind::Read))
            })
        };
        let status = if has(ReceiptKind::Read) {
            Some(MessageStatus::Read)
        } else if has(ReceiptKind::Delivered) {
            Some(MessageStatus::Delivered)
        } else {
            None
        };
        batch.update_message(&record);
        match status {
            Some(status) => self.set_status(&record.id, status, batch),
            None => Ok(None),
        }
    }
}

/// The groups we know, by id.
pub(super) type GroupMap = HashMap<GroupId, GroupState>;
/// Tag → group, for incoming messages.
pub(super) type TagMap = HashMap<GroupTag, GroupId>;
