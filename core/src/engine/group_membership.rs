//! Group membership in the engine: our own changes, changes from others, the waiting room for
//! changes that cannot count yet, sync between members, and acting on what changed.
//!
//! A group's log ([`ChangeLog`]) keeps only changes that count, and the changes those were
//! built on. Everything else that arrives waits, bounded and for a limited time: changes whose
//! parents have not arrived (we ask the member that sent them for what we lack), changes that
//! do not count now but may once others arrive (a later change built on them), and the changes
//! of a group we are being added to until the one that adds us arrives. What waits is tried
//! again whenever a change of its group arrives, and forgotten after its time.
//!
//! Nothing here trusts the sender of a change: the changes carry their own signatures and the
//! log's rules decide what counts. A stranger can make us store a group only by naming us a
//! member of it (an invitation), and then only a bounded number of them.

use std::collections::{BTreeSet, HashSet};

use kith_protocol::content::{
    Body, GroupAction, GroupChanges, GroupControl, GroupSync, SenderKeyDistribution,
};
use kith_protocol::limits::{MAX_CHANGES_PER_MESSAGE, MAX_CONTENT_BYTES, MAX_SYNC_HEADS};
use kith_protocol::{ChangeHash, GroupId, UnixMillis, UserId};

use super::group::GroupState;
use super::{Engine, Event, Output};
use crate::group::membership::is_removal;
use crate::group::sender_key::OwnChain;
use crate::group::{ChangeLog, MAX_GROUP_OPS, Membership, change_hash, group_tag};
use crate::store::records::{
    GroupChangeRecord, GroupInvitationRecord, GroupOrphanRecord, GroupRecord, OutboxKind,
    WaitingKeyRecord,
};
use crate::store::{Batch, StoreError};

const HOUR_MS: u64 = 60 * 60 * 1000;

/// Most changes of one group that wait (for their parents, or for a later change to build on
/// them). Past it, new ones are dropped: a member's sync brings them again later.
pub const MAX_WAITING_CHANGES_PER_GROUP: usize = 512;

/// Most waiting changes of one author in one group, so that a removed admin signing changes
/// "in the past" fills only its own share.
pub const MAX_WAITING_CHANGES_PER_AUTHOR: usize = 64;

/// Most groups we are not in whose changes (or members' sender keys) wait: the first changes
/// of a group we are being added to, sent in several messages, and the keys its members send
/// us as they learn of our addition, possibly before we do.
pub const MAX_WAITING_FOREIGN_GROUPS: usize = 64;

/// How long a change of a group we are in waits: a week, time for an offline member to answer
/// our sync request.
pub const WAITING_CHANGE_TTL_MS: u64 = 7 * 24 * HOUR_MS;

/// How long the changes of a group we are not in wait for the one that adds us.
pub const FOREIGN_CHANGE_TTL_MS: u64 = 24 * HOUR_MS;

/// Most groups that strangers (people we have not added as contacts) made us a member of. Past
/// it, their invitations are refused.
pub const MAX_STRANGER_GROUPS: usize = 32;

/// We ask a member for a group's missing changes, or answer its request, at most this often.
pub const SYNC_INTERVAL_MS: u64 = 30_000;

/// What a member asks another for, or answers, at most once per [`SYNC_INTERVAL_MS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Exchange {
    /// The changes of a group it lacks.
    AskChanges,
    /// An answer with changes.
    AnswerChanges,
    /// Its current sender key.
    AskKey,
    /// An answer with our sender key.
    AnswerKey,
}

/// Sync requests and answers remembered for [`SYNC_INTERVAL_MS`] (older ones are forgotten
/// first when it fills).
const MAX_SYNC_ENTRIES: usize = 4096;

/// Encoded bytes of a [`GroupChanges`] message beyond its changes (content header, group id).
const CHANGES_OVERHEAD: usize = 64;

/// Where changes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// We made the change.
    Us,
    /// A peer sent them over our session with it.
    Peer(UserId),
}

/// A change that might join a log, and where it stands.
struct Candidate {
    change: GroupControl,
    from: UserId,
    received_at: UnixMillis,
    /// Already in the waiting room.
    waiting: bool,
    hash: Option<ChangeHash>,
    state: Standing,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Its parents are not all known.
    Orphan,
    /// In the trial log.
    Inserted,
    /// Already in the log.
    Known,
    /// Refused for good (bad signature, bad `Create`, another group).
    Invalid,
}

impl<R: rand_core::CryptoRng> Engine<R> {
    /// Takes `incoming` changes of `group` (ours, or a peer's), with those waiting, into the
    /// group's log: keeps what counts and what it was built on, parks the rest, stores the
    /// result and acts on what changed.
    pub(super) fn take_changes(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        incoming: Vec<GroupControl>,
        origin: Origin,
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let from = match origin {
            Origin::Us => me,
            Origin::Peer(peer) => peer,
        };
        let known = self.groups.get(&group);
        let was_invited_by = known.and_then(|g| g.invited_by);
        let base = known.map(|g| g.log.clone()).unwrap_or_else(|| ChangeLog::new(group));
        let old = base.membership().clone();

        let mut candidates: Vec<Candidate> = self
            .store
            .group_orphans(Some(&group))?
            .into_iter()
            .map(|w| Candidate::new(w.change, w.from, w.received_at, true))
            .chain(incoming.into_iter().map(|c| Candidate::new(c, from, now, false)))
            .collect();

        // Insert whatever can be, parents first, until nothing more can.
        let mut trial = base.clone();
        let mut added: Vec<ChangeHash> = Vec::new();
        loop {
            let mut progress = false;
            for candidate in candidates.iter_mut().filter(|c| c.state == Standing::Orphan) {
                let before = trial.len();
                match trial.insert(candidate.change.clone()) {
                    Ok(hash) => {
                        candidate.hash = Some(hash);
                        if trial.len() > before {
                            candidate.state = Standing::Inserted;
                            added.push(hash);
                        } else {
                            candidate.state = Standing::Known;
                        }
                        progress = true;
                    }
                    Err(crate::group::ChangeError::MissingParents(_)) => {}
                    Err(_) => candidate.state = Standing::Invalid,
                }
            }
            if !progress {
                break;
            }
        }
        trial.resolve();

        // Keep the new changes that count, and the new changes they were built on; within
        // the bound on additions (removals are always kept).
        let mut keep: HashSet<ChangeHash> =
            added.iter().copied().filter(|h| trial.is_effective(h)).collect();
        for hash in added.iter().rev() {
            if keep.contains(hash)
                && let Some(change) = trial.change(hash)
            {
                keep.extend(change.parents.iter().filter(|p| !base.contains(p)).copied());
            }
        }
        let mut room = MAX_GROUP_OPS.saturating_sub(base.additions());
        let kept: Vec<ChangeHash> = added
            .iter()
            .copied()
            .filter(|h| keep.contains(h))
            .filter(|h| match trial.change(h) {
                Some(c) if !is_removal(&c.action) => {
                    let fits = room > 0;
                    room = room.saturating_sub(1);
                    fits
                }
                _ => true,
            })
            .collect();
        let log = if kept.len() == added.len() {
            trial
        } else {
            let mut log = base.clone();
            for hash in &kept {
                if let Some(change) = trial.change(hash) {
                    // Its parents are in `base` or kept before it: it goes in.
                    let _ = log.insert(change.clone());
                }
            }
            log.resolve();
            log
        };
        let kept: HashSet<ChangeHash> = kept.into_iter().collect();

        let is_member = log.membership().members.contains(&me);
        let was_member = old.members.contains(&me);
        // A group we are not in (and were not in before these changes) is not kept: its
        // changes only wait, in case the ones that add us are on their way.
        let foreign = !is_member && !was_member;
        if foreign && origin == Origin::Us {
            return Ok(());
        }
        if known.is_none() && is_member && !self.may_join(origin)? {
            return Ok(());
        }

        let mut batch = Batch::new();
        let record = match known {
            Some(state) => state.record.clone(),
            None => GroupRecord {
                id: group,
                since: now,
                introduced_by: match origin {
                    Origin::Us => None,
                    Origin::Peer(peer) => Some(peer),
                },
            },
        };
        // Someone else made us a member (again): the user is asked whether to stay.
        let invitation = match origin {
            Origin::Peer(from) if is_member && !was_member => {
                Some(GroupInvitationRecord { group, from, received_at: now })
            }
            _ => None,
        };
        if !foreign {
            if known.is_none() {
                batch.put_group(&record);
            }
            if let Some(invitation) = &invitation {
                batch.put_group_invitation(invitation);
            } else if was_invited_by.is_some() && !is_member {
                // Removed before answering: nothing is left to answer.
                batch.delete_group_invitation(&group);
            }
            for (position, change) in log.changes().enumerate().skip(base.len()) {
                let position = u32::try_from(position)
                    .map_err(|_| StoreError::Corrupt { record: "group change" })?;
                let record = GroupChangeRecord { change: change.clone(), received_at: now };
                batch.put_group_change(&group, position, &record);
            }
        }

        // The waiting room: out go the changes that joined the log, were known already or are
        // invalid; in go new ones that could still count, within bounds.
        let mut asks: BTreeSet<UserId> = BTreeSet::new();
        let foreign_groups =
            if foreign && known.is_none() { self.waiting_foreign_groups()? } else { 0 };
        let mut per_author: std::collections::HashMap<UserId, usize> =
            candidates.iter().filter(|c| c.waiting).fold(Default::default(), |mut m, c| {
                *m.entry(c.change.author).or_default() += 1;
                m
            });
        let mut total = candidates.iter().filter(|c| c.waiting).count();
        for candidate in &candidates {
            let joined = candidate.hash.is_some_and(|h| kept.contains(&h));
            let gone = joined
                || matches!(candidate.state, Standing::Known | Standing::Invalid)
                || (!foreign && !is_member);
            let Some(hash) = candidate.hash.or_else(|| change_hash(&candidate.change).ok()) else {
                continue;
            };
            if candidate.waiting {
                if gone {
                    batch.delete_group_orphan(&group, &hash);
                }
                continue;
            }
            if gone {
                continue;
            }
            let author_count = per_author.entry(candidate.change.author).or_default();
            let allowed = total < MAX_WAITING_CHANGES_PER_GROUP
                && *author_count < MAX_WAITING_CHANGES_PER_AUTHOR
                && (foreign || log.knows(&candidate.change.author))
                && (!foreign || known.is_some() || foreign_groups < MAX_WAITING_FOREIGN_GROUPS);
            if !allowed {
                continue;
            }
            *author_count += 1;
            total += 1;
            let record = GroupOrphanRecord {
                change: candidate.change.clone(),
                from: candidate.from,
                received_at: candidate.received_at,
            };
            batch.put_group_orphan(&group, &hash, &record);
            if candidate.state == Standing::Orphan && candidate.from != me {
                asks.insert(candidate.from);
            }
        }
        self.commit(batch)?;
        if foreign {
            return Ok(());
        }

        let new = log.membership().clone();
        self.tags.insert(group_tag(&group), group);
        let invited_by = invitation.map(|i| i.from).or(was_invited_by.filter(|_| is_member));
        self.groups.insert(group, GroupState { record, log, invited_by });
        // Our own change goes out before anything it causes (our new chain, the history for
        // a member we added), so that members know the group and the member first.
        if origin == Origin::Us {
            for change in candidates.iter().filter(|c| !c.waiting) {
                self.distribute_change(now, &change.change, &old)?;
            }
        }
        for peer in asks {
            self.request_sync(now, group, peer)?;
        }
        self.membership_changed(now, group, &old, &new)
    }

    /// Whether a group a peer made us a member of may be kept: always from a contact we
    /// added, from a stranger only while fewer than [`MAX_STRANGER_GROUPS`] are.
    fn may_join(&self, origin: Origin) -> Result<bool, StoreError> {
        let Origin::Peer(peer) = origin else { return Ok(true) };
        if self.is_named_contact(&peer)? {
            return Ok(true);
        }
        let mut strangers = 0;
        for state in self.groups.values() {
            if let Some(by) = state.record.introduced_by
                && !self.is_named_contact(&by)?
            {
                strangers += 1;
            }
        }
        Ok(strangers < MAX_STRANGER_GROUPS)
    }

    /// How many groups we do not know have changes waiting.
    fn waiting_foreign_groups(&self) -> Result<usize, StoreError> {
        let groups: BTreeSet<GroupId> = self
            .store
            .group_orphans(None)?
            .into_iter()
            .map(|w| w.change.group)
            .filter(|g| !self.groups.contains_key(g))
            .collect();
        Ok(groups.len())
    }

    /// Forgets waiting changes and sender keys past their time (a week for groups we are in,
    /// a day for others).
    pub(super) fn expire_waiting_changes(
        &self,
        now: UnixMillis,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        for (group, sender, waiting) in self.store.waiting_keys()? {
            let ttl = if self.groups.contains_key(&group) {
                WAITING_CHANGE_TTL_MS
            } else {
                FOREIGN_CHANGE_TTL_MS
            };
            if now.saturating_sub(waiting.received_at) > ttl {
                batch.delete_waiting_key(&group, &sender);
            }
        }
        for waiting in self.store.group_orphans(None)? {
            let ttl = if self.groups.contains_key(&waiting.change.group) {
                WAITING_CHANGE_TTL_MS
            } else {
                FOREIGN_CHANGE_TTL_MS
            };
            if now.saturating_sub(waiting.received_at) > ttl
                && let Ok(hash) = change_hash(&waiting.change)
            {
                batch.delete_group_orphan(&waiting.change.group, &hash);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- sync

    /// Asks `peer` for the changes of `group` we lack (at most once per [`SYNC_INTERVAL_MS`]).
    fn request_sync(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        peer: UserId,
    ) -> Result<(), StoreError> {
        if !self.sync_due(group, peer, Exchange::AskChanges) {
            return Ok(());
        }
        let mut heads = self.groups.get(&group).map(|g| g.log.heads()).unwrap_or_default();
        heads.truncate(MAX_SYNC_HEADS);
        self.send_reliably(now, peer, Body::GroupSync(GroupSync { group, heads }))
    }

    /// A peer asks for the changes of `group` it lacks: answered if the peer has ever been a
    /// member (a removed member learns of its removal this way too), at most once per
    /// [`SYNC_INTERVAL_MS`].
    pub(super) fn answer_sync(
        &mut self,
        now: UnixMillis,
        peer: UserId,
        sync: GroupSync,
    ) -> Result<(), StoreError> {
        let Some(state) = self.groups.get(&sync.group) else { return Ok(()) };
        if !state.log.knows(&peer) || !state.log.membership().members.contains(&self.user_id()) {
            return Ok(());
        }
        let missing = state.log.missing_for(&sync.heads);
        if missing.is_empty() || !self.sync_due(sync.group, peer, Exchange::AnswerChanges) {
            return Ok(());
        }
        self.send_changes(now, peer, sync.group, missing)
    }

    /// `sender`'s message in `group` waits for a key we lack. A key is usually on its way
    /// (a new member's or a rotated one travels pairwise while messages go by gossip): only
    /// once messages have waited [`SYNC_INTERVAL_MS`] is `sender` asked for its current one
    /// (and at most once per that interval). The answer starts where the chain stands, so
    /// asking early would skip the messages the key on its way would open.
    pub(super) fn request_sender_key(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        sender: UserId,
    ) -> Result<(), StoreError> {
        let mono = self.mono;
        if self.key_waits.len() >= MAX_SYNC_ENTRIES {
            self.key_waits.retain(|_, since| mono.saturating_sub(*since) < SYNC_INTERVAL_MS);
        }
        let since = match self.key_waits.get(&(group, sender)) {
            Some(since) => *since,
            None if self.key_waits.len() < MAX_SYNC_ENTRIES => {
                self.key_waits.insert((group, sender), mono);
                return Ok(());
            }
            None => return Ok(()),
        };
        if mono.saturating_sub(since) < SYNC_INTERVAL_MS
            || !self.sync_due(group, sender, Exchange::AskKey)
        {
            return Ok(());
        }
        let body = Body::SenderKeyRequest(kith_protocol::content::SenderKeyRequest { group });
        self.send_reliably(now, sender, body)
    }

    /// `peer` asks for our sender key of `group`: a member gets our chain as it stands (it
    /// reads from here on, nothing before), or a new one if we have none (at most once per
    /// [`SYNC_INTERVAL_MS`] per member).
    pub(super) fn answer_key_request(
        &mut self,
        now: UnixMillis,
        peer: UserId,
        group: GroupId,
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let Some(state) = self.groups.get(&group) else { return Ok(()) };
        let members = &state.membership().members;
        if !members.contains(&me) || !members.contains(&peer) {
            return Ok(());
        }
        let others: Vec<UserId> = members.iter().filter(|m| **m != me).copied().collect();
        if !self.sync_due(group, peer, Exchange::AnswerKey) {
            return Ok(());
        }
        match self.store.own_chain(&group, &me)? {
            Some(chain) => {
                let skd = chain.distribution(group);
                self.send_reliably(now, peer, Body::SenderKeyDistribution(skd))
            }
            None => self.rotate(now, group, &others).map(|_| ()),
        }
    }

    /// Whether a sync request to (or an answer for) `peer` about `group` may go now; if so,
    /// the next one waits [`SYNC_INTERVAL_MS`].
    fn sync_due(&mut self, group: GroupId, peer: UserId, exchange: Exchange) -> bool {
        let now = self.mono;
        let key = (group, peer, exchange);
        if self.syncs.get(&key).is_some_and(|&next| next > now) {
            return false;
        }
        if self.syncs.len() >= MAX_SYNC_ENTRIES {
            self.syncs.retain(|_, next| *next > now);
            if self.syncs.len() >= MAX_SYNC_ENTRIES {
                return false;
            }
        }
        let next = self.after(SYNC_INTERVAL_MS);
        self.syncs.insert(key, next);
        true
    }

    /// Sends `changes` (parents first) to `to` in as few messages as fit.
    pub(super) fn send_changes(
        &mut self,
        now: UnixMillis,
        to: UserId,
        group: GroupId,
        changes: Vec<GroupControl>,
    ) -> Result<(), StoreError> {
        let budget = MAX_CONTENT_BYTES - CHANGES_OVERHEAD;
        let mut chunk: Vec<GroupControl> = Vec::new();
        let mut size = 0;
        for change in changes {
            let len = postcard::to_allocvec(&change).map_or(budget, |bytes| bytes.len());
            if !chunk.is_empty() && (chunk.len() == MAX_CHANGES_PER_MESSAGE || size + len > budget)
            {
                let changes = std::mem::take(&mut chunk);
                self.send_reliably(now, to, Body::GroupChanges(GroupChanges { group, changes }))?;
                size = 0;
            }
            size += len;
            chunk.push(change);
        }
        if !chunk.is_empty() {
            self.send_reliably(
                now,
                to,
                Body::GroupChanges(GroupChanges { group, changes: chunk }),
            )?;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- acting on changes

    /// Acts on a membership change: joining (our chain out to everyone, subscribe), leaving
    /// (forget every key, unsubscribe), members added (our current chain to them, and the
    /// changes they may lack) or removed (forget their chains, rotate ours).
    fn membership_changed(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        old: &Membership,
        new: &Membership,
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let tag = group_tag(&group);
        let (was, is) = (old.members.contains(&me), new.members.contains(&me));
        let others: Vec<UserId> = new.members.iter().filter(|m| **m != me).copied().collect();
        if is && !was {
            self.rotate(now, group, &others)?;
            self.held.push_back(Output::Subscribe { tag, members: others.clone() });
            for member in &others {
                self.install_waiting_key(group, *member)?;
            }
        } else if was && !is {
            let mut batch = Batch::new();
            for holder in self.store.chain_holders(&group)? {
                batch.delete_chains(&group, &holder);
            }
            for (key, _) in self.store.pending_group(&group, None, usize::MAX)? {
                batch.delete_pending_group(&key);
            }
            self.commit(batch)?;
            self.held.push_back(Output::Unsubscribe { tag });
        } else if is {
            let added: Vec<UserId> = new.members.difference(&old.members).copied().collect();
            let removed: Vec<UserId> = old.members.difference(&new.members).copied().collect();
            for member in &added {
                self.install_waiting_key(group, *member)?;
                // Our chain as it stands: the new member reads from here on, nothing before.
                if let Some(chain) = self.store.own_chain(&group, &me)? {
                    let skd = chain.distribution(group);
                    self.send_reliably(now, *member, Body::SenderKeyDistribution(skd))?;
                }
                // The changes it may lack: everything if we added it, else what we hold
                // beyond the history of the change that added it (its adder sent that).
                let Some(state) = self.groups.get(&group) else { continue };
                let changes = match state.log.added_by(member) {
                    Some((_, add)) if add.author == me => state.log.missing_for(&[]),
                    Some((hash, _)) => state.log.missing_for(&[hash]),
                    None => Vec::new(),
                };
                if !changes.is_empty() {
                    self.send_changes(now, *member, group, changes)?;
                }
            }
            if !removed.is_empty() {
                let mut batch = Batch::new();
                for member in &removed {
                    batch.delete_chains(&group, member);
                    for (key, _) in
                        self.store.pending_group(&group, Some((member, None)), usize::MAX)?
                    {
                        batch.delete_pending_group(&key);
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
            self.event(Event::GroupChanged(Box::new(self.group_view(group, new))));
        }
        if is {
            self.retry_pending(now, group, None)?;
        }
        Ok(())
    }

    /// A member's sender key: installed if the sender is a member of a group we are in; held
    /// (one per sender and group, for a limited time) if the change that makes it or us a
    /// member may still be on its way; dropped otherwise.
    pub(super) fn take_sender_key(
        &mut self,
        now: UnixMillis,
        sender: UserId,
        skd: SenderKeyDistribution,
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let group = skd.group;
        let (we, they) = match self.groups.get(&group) {
            Some(state) => {
                let members = &state.membership().members;
                (members.contains(&me), members.contains(&sender))
            }
            None => (false, false),
        };
        if we && they {
            return self.install_sender_key(now, sender, &skd);
        }
        let known = self.groups.contains_key(&group);
        if known && !we {
            return Ok(());
        }
        if !known
            && !self.store.has_waiting_keys(&group)?
            && self.waiting_key_groups()? >= MAX_WAITING_FOREIGN_GROUPS
        {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.put_waiting_key(&group, &sender, &WaitingKeyRecord { skd, received_at: now });
        self.commit(batch)
    }

    fn install_sender_key(
        &mut self,
        now: UnixMillis,
        sender: UserId,
        skd: &SenderKeyDistribution,
    ) -> Result<(), StoreError> {
        let group = skd.group;
        let mut chains = self.store.member_chains(&group, &sender)?;
        if chains.install(skd) {
            self.key_waits.remove(&(group, sender));
            let mut batch = Batch::new();
            batch.put_member_chains(&group, &sender, &chains);
            self.commit(batch)?;
            self.retry_pending(now, group, Some((sender, Some(skd.chain_id))))?;
        }
        Ok(())
    }

    /// Installs the key `member` sent before we knew it (or ourselves) to be a member.
    fn install_waiting_key(&mut self, group: GroupId, member: UserId) -> Result<(), StoreError> {
        let Some(waiting) = self.store.waiting_key(&group, &member)? else { return Ok(()) };
        let mut batch = Batch::new();
        batch.delete_waiting_key(&group, &member);
        self.commit(batch)?;
        self.install_sender_key(self.now, member, &waiting.skd)
    }

    /// How many groups we do not know have sender keys waiting.
    fn waiting_key_groups(&self) -> Result<usize, StoreError> {
        let groups: BTreeSet<GroupId> = self
            .store
            .waiting_keys()?
            .into_iter()
            .map(|(group, _, _)| group)
            .filter(|g| !self.groups.contains_key(g))
            .collect();
        Ok(groups.len())
    }

    /// Starts a new sending chain, sends it to `members` and returns it.
    pub(super) fn rotate(
        &mut self,
        now: UnixMillis,
        group: GroupId,
        members: &[UserId],
    ) -> Result<OwnChain, StoreError> {
        let me = self.user_id();
        let chain = OwnChain::generate(&mut self.rng);
        let mut batch = Batch::new();
        batch.put_own_chain(&group, &me, &chain);
        self.commit(batch)?;
        let skd = chain.distribution(group);
        for member in members {
            self.send_reliably(now, *member, Body::SenderKeyDistribution(skd.clone()))?;
        }
        Ok(chain)
    }

    /// Sends our change `change` (already in the log) to everyone it concerns: the members
    /// after it, and a member it removed (so it knows).
    fn distribute_change(
        &mut self,
        now: UnixMillis,
        change: &GroupControl,
        old: &Membership,
    ) -> Result<(), StoreError> {
        let me = self.user_id();
        let Some(state) = self.groups.get(&change.group) else { return Ok(()) };
        let mut to: BTreeSet<UserId> = state.log.membership().members.clone();
        to.extend(old.members.difference(&state.log.membership().members));
        to.remove(&me);
        // A member this change added gets it with everything else (`membership_changed`).
        if let GroupAction::Add { member } = change.action {
            to.remove(&member);
        }
        for member in to {
            let body = Body::GroupChanges(GroupChanges {
                group: change.group,
                changes: vec![change.clone()],
            });
            self.send_reliably(now, member, body)?;
        }
        Ok(())
    }

    /// Queues a control content pairwise; a member we cannot write to (blocked, identity
    /// changed, outbox full) is skipped and the rest still get it.
    pub(super) fn send_reliably(
        &mut self,
        now: UnixMillis,
        to: UserId,
        body: Body,
    ) -> Result<(), StoreError> {
        match self.queue(now, to, body, OutboxKind::Control) {
            Ok(_) => Ok(()),
            Err(super::CommandError::Store(e)) => Err(e),
            Err(_) => Ok(()),
        }
    }
}

impl Candidate {
    fn new(change: GroupControl, from: UserId, received_at: UnixMillis, waiting: bool) -> Self {
        Self { change, from, received_at, waiting, hash: None, state: Standing::Orphan }
    }
}
