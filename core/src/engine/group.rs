//! Groups in the engine: membership changes, sender keys, publishing and receiving.
//!
//! Control messages and sender keys travel pairwise over ratchet sessions (reliable, through
//! the outbox); group messages are sealed once with our sender key and published on the
//! group's topic, and the members the topic did not reach get the same sealed message through
//! the outbox (directly when they come back, else through their relays).

use std::collections::{BTreeSet, HashMap};

use kith_protocol::content::{
    Body, Content, GroupAction, GroupChanges, GroupSync, ReceiptKind, SenderKeyDistribution, Text,
};
use kith_protocol::envelope::{Envelope, EnvelopeKind, GroupEnvelope, GroupMessage};
use kith_protocol::limits::{MAX_GROUP_MEMBERS, MAX_NAME_BYTES};
use kith_protocol::{GroupId, GroupTag, MessageId, UnixMillis, UserId};

use super::group_membership::Origin;
use super::{
    CommandError, CommandResult, Conversation, Engine, Event, GroupCommand, Output, Publication,
    ReceiveError, ValidationToken, Verdict, apply_reaction, edited_content,
};
use crate::group::membership::is_removal;
use crate::group::{
    ChangeLog, Group, MAX_GROUP_OPS, Membership, change_hash, group_id, group_tag, sign_control,
};
use crate::model::{MemberReceipt, Message, MessageStatus};
use crate::store::records::{
    GroupRecord, MessageRecord, OutboxKind, OutboxRecord, PendingGroupRecord,
};
use crate::store::{Batch, PendingKey, StoreError};

/// Most group messages kept waiting for their sender's key per claimed sender, when they came
/// from anyone (gossip, a relay's mailbox): such a message does not prove who sent it until
/// the key arrives, so an outsider can fill this share, but only this one. Beyond it, gossip
/// is ignored and copies refused for now (their author or the relay sends them again).
pub const MAX_PENDING_UNAUTHENTICATED_PER_SENDER: usize = 32;

/// Most group messages kept waiting for their sender's key per sender, when they came straight
/// from the sender over a connection that proved who it is: only the sender fills this share.
pub const MAX_PENDING_AUTHENTICATED_PER_SENDER: usize = 256;

/// How long a group message that anyone could have sent waits for its key: the key travels
/// right behind the message, so an hour is ample, and a flood of fakes is gone within it.
pub const PENDING_UNAUTHENTICATED_TTL_MS: u64 = 60 * 60 * 1000;

/// How long a group message that came straight from its sender waits for its key (the key
/// comes from the same sender, through its outbox: days, if the sender goes offline).
pub const PENDING_AUTHENTICATED_TTL_MS: u64 = 14 * 24 * 60 * 60 * 1000;

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

/// A group and its log of changes, kept in memory.
pub(crate) struct GroupState {
    pub(crate) record: GroupRecord,
    pub(crate) log: ChangeLog,
    /// Who added us, while the user has not accepted the invitation.
    pub(crate) invited_by: Option<UserId>,
}

impl GroupState {
    pub(crate) fn membership(&self) -> &Membership {
        self.log.membership()
    }
}

/// How a group message reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// By gossip: anyone on the topic could have published it.
    Gossip,
    /// A copy over a connection that authenticated its sender as the message's sender.
    FromSender,
    /// A copy from a relay's mailbox: anyone could have deposited it.
    Mailbox,
    /// Taken out of the pending store again, once a key arrived.
    Retry,
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
    Changes(GroupChanges),
    Sync(GroupSync),
    SenderKey(SenderKeyDistribution),
    KeyRequest(kith_protocol::content::SenderKeyRequest),
}

/// The outbox id of the copy of group message `id` for `member` (each copy is its own outbox
/// entry; the envelope inside keeps the message's id). A node sees it in delivery results and
/// relay deposits of the copy.
pub fn group_copy_id(id: &MessageId, member: &UserId) -> MessageId {
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
            .filter(|g| g.membership().created())
            .map(|g| Group::new(g.record.id, g.membership(), &me, g.invited_by))
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        groups
    }

    /// A group by id.
    pub fn group(&self, id: &GroupId) -> Option<Group> {
        self.groups
            .get(id)
            .filter(|g| g.membership().created())
            .map(|g| Group::new(*id, g.membership(), &self.user_id(), g.invited_by))
    }

    /// The public view of a known group with membership `membership`.
    pub(super) fn group_view(&self, id: GroupId, membership: &Membership) -> Group {
        let invited_by = self.groups.get(&id).and_then(|g| g.invited_by);
        Group::new(id, membership, &self.user_id(), invited_by)
    }

    /// The groups whose waiting invitation came from `user`.
    pub(super) fn invitations_from(&self, user: &UserId) -> Vec<GroupId> {
        self.groups.values().filter(|g| g.invited_by == Some(*user)).map(|g| g.record.id).collect()
    }

    /// Whether the user still has to accept or decline `group`'s invitation.
    pub(super) fn is_invitation(&self, group: &GroupId) -> bool {
        self.groups.get(group).is_some_and(|g| g.invited_by.is_some())
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
        let invitations: HashMap<GroupId, UserId> =
            self.store.group_invitations()?.into_iter().map(|i| (i.group, i.from)).collect();
        for record in self.store.groups()? {
            let mut log = ChangeLog::new(record.id);
            for change in self.store.group_changes(&record.id)? {
                // Stored changes went in once already, in this order.
                log.insert(change).map_err(|_| StoreError::Corrupt { record: "group change" })?;
            }
            log.resolve();
            let membership = log.membership();
            let tag = group_tag(&record.id);
            if membership.members.contains(&me) {
                let members = membership.members.iter().filter(|m| **m != me).copied().collect();
                self.held.push_back(Output::Subscribe { tag, members });
            }
            self.tags.insert(tag, record.id);
            let invited_by =
                invitations.get(&record.id).copied().filter(|_| membership.members.contains(&me));
            self.groups.insert(record.id, GroupState { record, log, invited_by });
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
        let name = self.check_group_name(name, None)?;
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
        let op = sign_control(&self.identity, id, Vec::new(), action)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        self.take_changes(now, id, vec![op], Origin::Us)?;
        Ok(CommandResult::Group(id))
    }

    pub(super) fn group_command(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        command: GroupCommand,
    ) -> Result<CommandResult, CommandError> {
        let state = self.groups.get(&group).filter(|g| g.membership().created());
        let Some(state) = state else { return Err(CommandError::UnknownGroup) };
        // What is on this device only: also for a group we left.
        match command {
            GroupCommand::DeleteLocally { ids } => {
                return self.delete_locally(Conversation::Group(group), &ids);
            }
            GroupCommand::DeleteHistory => {
                return self.delete_conversation(Conversation::Group(group));
            }
            _ => {}
        }
        let membership = state.membership().clone();
        if !membership.members.contains(&self.user_id()) {
            return Err(CommandError::NotAMember);
        }
        // Reading is not an answer to an invitation; anything that speaks in the group accepts
        // it (leaving declines it), once it succeeded.
        let answers = !matches!(command, GroupCommand::MarkRead { .. });
        let result = self.run_group_command(now, group, command, &membership)?;
        if answers {
            self.answer_invitation(group)?;
        }
        Ok(result)
    }

    /// Carries out `command` in `group`, of which we are a member.
    fn run_group_command(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        command: GroupCommand,
        membership: &Membership,
    ) -> Result<CommandResult, CommandError> {
        let admin = membership.admins.contains(&self.user_id());
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
                return self.react(now, Conversation::Group(group), target, emoji, remove);
            }
            GroupCommand::Edit { target, text } => {
                return self.edit(now, Conversation::Group(group), target, text);
            }
            GroupCommand::Delete { target } => {
                return self.delete(now, Conversation::Group(group), target);
            }
            GroupCommand::MarkRead { ids } => {
                return self.mark_read(now, Conversation::Group(group), ids);
            }
            GroupCommand::DeleteLocally { ids } => {
                return self.delete_locally(Conversation::Group(group), &ids);
            }
            GroupCommand::DeleteHistory => {
                return self.delete_conversation(Conversation::Group(group));
            }
            GroupCommand::SetDisappearing { seconds } => {
                return self.set_timer(now, Conversation::Group(group), seconds);
            }
            GroupCommand::Typing { state } => {
                if self.config.typing_indicators {
                    self.publish(now, group, Body::Typing(state), true)?;
                }
                return Ok(CommandResult::Done);
            }
            GroupCommand::Add { member } => {
                self.sendable_contact(now, &member)?;
                if members.len() >= MAX_GROUP_MEMBERS && !members.contains(&member) {
                    return Err(CommandError::GroupFull);
                }
                GroupAction::Add { member }
            }
            GroupCommand::Remove { member } => GroupAction::Remove { member },
            GroupCommand::Leave | GroupCommand::Decline => GroupAction::Leave,
            GroupCommand::Accept => return Ok(CommandResult::Done),
            GroupCommand::Rename { name } => {
                GroupAction::Rename { name: self.check_group_name(name, Some(group))? }
            }
            GroupCommand::Promote { member } => GroupAction::Promote { member },
        };
        if !admin && change != GroupAction::Leave {
            return Err(CommandError::NotAnAdmin);
        }
        self.make_change(now, group, change)
    }

    /// `name`, trimmed, if it may name a group we create or rename (`renamed`): not empty,
    /// not too long, and not the name of another group we are in. Groups others name are not
    /// refused for it (we cannot choose them); the CLI asks for an id when names collide.
    fn check_group_name(
        &self,
        name: String,
        renamed: Option<GroupId>,
    ) -> Result<String, CommandError> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(CommandError::InvalidName);
        }
        let me = self.user_id();
        let taken = self.groups.values().any(|g| {
            Some(g.record.id) != renamed
                && g.membership().members.contains(&me)
                && g.membership().name.to_lowercase() == name.to_lowercase()
        });
        if taken {
            return Err(CommandError::GroupNameTaken(name));
        }
        Ok(name)
    }

    /// Forgets `group`'s invitation, if one waits: the user answered it.
    fn answer_invitation(&mut self, group: GroupId) -> Result<(), StoreError> {
        let Some(state) = self.groups.get(&group).filter(|g| g.invited_by.is_some()) else {
            return Ok(());
        };
        let membership = state.membership().clone();
        let mut batch = Batch::new();
        batch.delete_group_invitation(&group);
        self.commit(batch)?;
        if let Some(state) = self.groups.get_mut(&group) {
            state.invited_by = None;
        }
        self.event(Event::GroupChanged(Box::new(self.group_view(group, &membership))));
        Ok(())
    }

    /// Signs `action` after the changes we hold and takes it, if the group's rules let it
    /// count (the one place that judges a change, ours or anyone's, is the log).
    fn make_change(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        action: GroupAction,
    ) -> Result<CommandResult, CommandError> {
        let state = self.groups.get(&group).ok_or(CommandError::UnknownGroup)?;
        if !is_removal(&action) && state.log.additions() >= MAX_GROUP_OPS {
            return Err(CommandError::GroupFull);
        }
        let op = sign_control(&self.identity, group, state.log.heads(), action)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let hash = change_hash(&op).map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let mut trial = state.log.clone();
        trial.insert(op.clone()).map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        trial.resolve();
        if !trial.is_effective(&hash) {
            return Err(CommandError::InvalidChange);
        }
        self.take_changes(now, group, vec![op], Origin::Us)?;
        Ok(CommandResult::Done)
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
                GroupEffect::Changes(changes) => {
                    self.take_changes(now, changes.group, changes.changes, Origin::Peer(sender))?;
                }
                GroupEffect::Sync(sync) => self.answer_sync(now, sender, sync)?,
                GroupEffect::SenderKey(skd) => self.take_sender_key(now, sender, skd)?,
                GroupEffect::KeyRequest(request) => {
                    self.answer_key_request(now, sender, request.group)?;
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
    pub(super) fn publish(
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
            .map(|g| g.membership().members.iter().filter(|m| **m != me).copied().collect())
            .unwrap_or_default();
        if !ephemeral && self.outbox.len() + members.len() > super::MAX_OUTBOX {
            return Err(CommandError::OutboxFull { max: super::MAX_OUTBOX });
        }
        let stored = matches!(body, Body::Text(_) | Body::Media(_) | Body::ExpireTimer(_));
        let expires = matches!(body, Body::Text(_) | Body::Media(_));
        let content = Content { sent_at: now, body };
        let plaintext = kith_protocol::encode(&content)
            .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        let mut chain = match self.store.own_chain(&group, &me)? {
            Some(chain) => chain,
            // A member without a chain (restored from a backup, which holds none): a new one,
            // handed to every member.
            None if self
                .groups
                .get(&group)
                .is_some_and(|g| g.membership().members.contains(&me)) =>
            {
                self.rotate(now, group, &members)?
            }
            None => return Err(CommandError::NotAMember),
        };
        if chain.is_exhausted() {
            // 2^32 messages on one chain: start a new one (and hand it to every member)
            // rather than fail the send.
            chain = self.rotate(now, group, &members)?;
        }
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
                batch.put_message(&MessageRecord::queued(id, me, Some(group), plaintext, now, seq));
            }
            if expires {
                self.mark_expiring(Conversation::Group(group), id, &mut batch);
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
                    id: group_copy_id(&id, member),
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
        id: MessageId,
        unreached: &[UserId],
    ) -> Result<(), StoreError> {
        let Some(index) = self.store.message_index(&id)? else { return Ok(()) };
        let Some(group) = index.group else { return Ok(()) };
        let members: Vec<UserId> = self
            .groups
            .get(&group)
            .map(|g| g.membership().members.iter().copied().collect())
            .unwrap_or_default();
        let mut batch = Batch::new();
        let mut send = Vec::new();
        let mut reached_any = false;
        for member in members {
            let copy = group_copy_id(&id, &member);
            if self.outbox.get(&copy).is_none() {
                continue;
            }
            if unreached.contains(&member) {
                send.push(copy);
            } else {
                reached_any = true;
                let due = self.after(GROUP_RECEIPT_TIMEOUT_MS);
                self.outbox.reschedule(&copy, Some(due), false);
            }
        }
        let status =
            if reached_any { self.set_status(&id, MessageStatus::Sent, &mut batch)? } else { None };
        self.commit(batch)?;
        if let Some(event) = status {
            self.event(event);
        }
        for copy in send {
            self.attempt(copy);
        }
        Ok(())
    }

    /// The copy `copy` of a group message was stored by the member or a relay.
    pub(super) fn group_copy_delivered(
        &mut self,
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
    ///
    /// Only what every honest member would refuse is rejected (and costs the forwarding peer
    /// gossip score): bytes that are not a group envelope. Everything else depends on what
    /// the receiver holds (a sender key handed out to some members only, an `Add` that has
    /// not reached us yet, a message seen already), so an honest forwarder may have judged it
    /// valid: it is ignored, neither forwarded nor penalised.
    pub(super) fn on_group_gossip(
        &mut self,
        now: UnixMillis,
        bytes: &[u8],
        token: ValidationToken,
    ) -> Result<(), StoreError> {
        let decoded = kith_protocol::decode::<GroupEnvelope>(bytes);
        let sender = decoded.as_ref().ok().map(|e| e.sender);
        let result = match decoded {
            Ok(envelope) => self.receive_group(now, envelope, Arrival::Gossip),
            Err(e) => Err(ReceiveError::Malformed(e)),
        };
        let verdict = match result {
            Ok(GroupReceived::Accepted) => Verdict::Accept,
            Ok(GroupReceived::Pending | GroupReceived::Duplicate) => Verdict::Ignore,
            Err(ReceiveError::Store(e)) => {
                self.ready.push_back(Output::Validation { token, verdict: Verdict::Ignore });
                return Err(e);
            }
            Err(e @ ReceiveError::Malformed(_)) => {
                self.event(Event::Rejected { sender, reason: e.reject_reason() });
                Verdict::Reject
            }
            Err(ReceiveError::UnknownGroup | ReceiveError::PendingFull) => Verdict::Ignore,
            Err(e) => {
                self.event(Event::Rejected { sender, reason: e.reject_reason() });
                Verdict::Ignore
            }
        };
        self.ready.push_back(Output::Validation { token, verdict });
        Ok(())
    }

    /// Receives a group message (by gossip, or a copy by mail or directly). Checks, in order:
    /// group, sender, replay (its id anywhere in the history: no one takes over another
    /// message's id), membership, key (else kept pending), signature, then opens it on a copy
    /// of the chain; only an accepted message changes state.
    pub(super) fn receive_group(
        &mut self,
        now: UnixMillis,
        envelope: GroupEnvelope,
        arrival: Arrival,
    ) -> Result<GroupReceived, ReceiveError> {
        let me = self.user_id();
        let gossip = arrival == Arrival::Gossip;
        let GroupEnvelope { id, sender, message } = envelope;
        let group = *self.tags.get(&message.tag).ok_or(ReceiveError::UnknownGroup)?;
        let state = self.groups.get(&group).ok_or(ReceiveError::UnknownGroup)?;
        if !state.membership().members.contains(&me) {
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
        if let Some(index) = self.store.message_index(&id)? {
            // Our copy of this very message (its seen entry pruned since), or another message
            // whose id this one tries to take over.
            if index.peer == sender && index.group == Some(group) && !gossip {
                return Ok(GroupReceived::Duplicate);
            }
            return Err(ReceiveError::Replay);
        }
        if !state.membership().members.contains(&sender) {
            return Err(ReceiveError::NotAMember);
        }
        if self.store.contact(&sender)?.is_some_and(|c| c.blocked) {
            return Err(ReceiveError::Blocked);
        }
        let mut chains = self.store.member_chains(&group, &sender)?;
        let Some(chain) = chains.get(message.chain_id).cloned() else {
            if arrival == Arrival::Retry {
                return Ok(GroupReceived::Pending);
            }
            return self.keep_pending(now, group, sender, id, message, arrival);
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
            self.owe_group_receipt(sender, id);
        }
        Ok(GroupReceived::Accepted)
    }

    /// Owes `author` a delivery receipt for its group message `id`: it goes with every other
    /// one owed within [`GROUP_RECEIPT_DELAY_MS`] (or at [`Engine::release_receipts`]).
    pub(super) fn owe_group_receipt(&mut self, author: UserId, id: MessageId) {
        self.group_receipts.entry(author).or_default().insert(id);
        let due = self.after(GROUP_RECEIPT_DELAY_MS);
        self.group_receipts_due.get_or_insert(due);
    }

    /// A copy of a group message we already have: its author sends the copy only when our
    /// delivery receipt did not come (lost in a crash before it went out), so owe it again.
    pub(super) fn reconfirm_group_message(
        &mut self,
        author: UserId,
        id: MessageId,
    ) -> Result<(), StoreError> {
        if self
            .store
            .message_index(&id)?
            .is_some_and(|index| index.group.is_some() && index.peer == author)
        {
            self.owe_group_receipt(author, id);
        }
        Ok(())
    }

    /// Keeps a group message until its sender's key arrives, within the sender's share:
    /// [`MAX_PENDING_AUTHENTICATED_PER_SENDER`] for copies straight from the sender,
    /// [`MAX_PENDING_UNAUTHENTICATED_PER_SENDER`] for what anyone could have sent. Counting
    /// reads only that share (each has its own key range), never the whole group's.
    fn keep_pending(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        sender: UserId,
        id: MessageId,
        message: GroupMessage,
        arrival: Arrival,
    ) -> Result<GroupReceived, ReceiveError> {
        let authenticated = arrival == Arrival::FromSender;
        let share = if authenticated {
            MAX_PENDING_AUTHENTICATED_PER_SENDER
        } else {
            MAX_PENDING_UNAUTHENTICATED_PER_SENDER
        };
        if self.store.pending_count(&group, &sender, authenticated, share)? >= share {
            return Err(ReceiveError::PendingFull);
        }
        let chain = message.chain_id;
        let envelope = kith_protocol::encode(&GroupEnvelope { id, sender, message })
            .map_err(|_| ReceiveError::BadContent)?;
        let mut batch = Batch::new();
        let key = PendingKey { group, sender, authenticated, chain, id };
        let record =
            PendingGroupRecord { envelope, received_at: now, gossip: arrival == Arrival::Gossip };
        batch.put_pending_group(&key, &record);
        self.commit(batch)?;
        self.request_sender_key(now, group, sender)?;
        Ok(GroupReceived::Pending)
    }

    /// Tries the messages waiting in `group` (from one sender, on one chain, if given) again.
    pub(super) fn retry_pending(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        sender: Option<(UserId, Option<u32>)>,
    ) -> Result<(), StoreError> {
        let sender = sender.as_ref().map(|(s, chain)| (s, *chain));
        let waiting = self.store.pending_group(&group, sender, PENDING_RETRY_BATCH)?;
        for (key, record) in waiting {
            let result = match kith_protocol::decode::<GroupEnvelope>(&record.envelope) {
                Ok(envelope) => self.receive_group(now, envelope, Arrival::Retry),
                Err(e) => Err(ReceiveError::Malformed(e)),
            };
            match result {
                Ok(GroupReceived::Pending) => {}
                Err(ReceiveError::Store(e)) => return Err(e),
                Ok(_) | Err(_) => {
                    let mut batch = Batch::new();
                    batch.delete_pending_group(&key);
                    self.commit(batch)?;
                }
            }
        }
        Ok(())
    }

    /// Forgets group messages that waited for their key longer than they may.
    pub(super) fn expire_pending(
        &self,
        now: UnixMillis,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        for (key, record) in self.store.all_pending_group(usize::MAX)? {
            let ttl = if key.authenticated {
                PENDING_AUTHENTICATED_TTL_MS
            } else {
                PENDING_UNAUTHENTICATED_TTL_MS
            };
            if now.saturating_sub(record.received_at) > ttl {
                batch.delete_pending_group(&key);
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
            Body::Text(_) | Body::Media(_) | Body::ExpireTimer(_) => {
                let sent_at = content.sent_at;
                let timer = match &content.body {
                    Body::ExpireTimer(timer) => Some(*timer),
                    _ => None,
                };
                events.push(self.store_incoming(
                    now,
                    sender,
                    Some(group),
                    id,
                    plaintext,
                    sent_at,
                    batch,
                )?);
                let conversation = Conversation::Group(group);
                match timer {
                    None => self.mark_expiring(conversation, id, batch),
                    Some(timer) => {
                        events.extend(self.receive_timer(conversation, timer, sent_at, batch));
                    }
                }
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
            | Body::SenderKeyRequest(_)
            | Body::Presence(_)
            | Body::Profile(_)
            | Body::AccessKey(_)
            | Body::GroupChanges(_)
            | Body::GroupSync(_)
            | Body::SenderKeyDistribution(_) => {}
        }
        Ok(events)
    }

    /// A member's receipt for our group message `target`; returns the status event, if the
    /// message's status moved (delivered once every member has it, read once every one read it).
    pub(super) fn group_receipt(
        &mut self,
        mut record: MessageRecord,
        from: UserId,
        kind: ReceiptKind,
        batch: &mut Batch,
        copies_done: &mut Vec<MessageId>,
    ) -> Result<Option<Event>, StoreError> {
        let Some(group) = record.group else { return Ok(None) };
        let me = self.user_id();
        let Some(state) = self.groups.get(&group) else { return Ok(None) };
        if !state.membership().members.contains(&from) {
            return Ok(None);
        }
        // They have it: their copy need not go.
        if let Some(entry) = self.outbox.get(&group_copy_id(&record.id, &from)) {
            batch.delete_outbox(entry.record.seq);
            copies_done.push(entry.record.id);
        }
        match record.receipts.iter_mut().find(|r| r.member == from) {
            Some(r) if r.kind == ReceiptKind::Read || r.kind == kind => return Ok(None),
            Some(r) => r.kind = kind,
            None => record.receipts.push(MemberReceipt { member: from, kind }),
        }
        let others: Vec<&UserId> =
            state.membership().members.iter().filter(|m| **m != me).collect();
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
