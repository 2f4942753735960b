//! Storage: a typed store over a pluggable ordered key-value [`Backend`].
//!
//! All reads go through [`Store`]'s per-concern methods (identity, prekeys, sessions, contacts,
//! messages, outbox, seen ids); all writes are collected in a [`Batch`] and applied with
//! [`Store::commit`]. Commits are write-back: they land in memory at once (every read sees
//! them) and reach the backend only at [`Store::flush`], all of them as one atomic backend
//! batch followed by one fsync. The engine flushes once per turn (group commit) before
//! anything that depends on the turn leaves the process, so a crash loses a whole turn or
//! nothing, and a key written many times in a turn (a session, an outbox entry queued and
//! acknowledged) costs one write or none.
//!
//! Key layout (all integers big-endian, so that byte order is numeric order). The large
//! values (messages, sealed outbox envelopes) sit under keys that grow with time, so that
//! sled appends to few pages instead of rewriting random ones (measured 6 µs instead of
//! 16 µs per 1 KiB insert); only small values live under random keys.
//!
//! | tree | key | value |
//! |---|---|---|
//! | meta | `layout`, `identity`, `profile`, `seq`, `spk-next`, `spk-current`, `opk-next`, `kem-next`, `kem-current`, `seen-cursor` | [`STORE_LAYOUT`], identity, name, counters, the last-resort KEM prekey's id, where pruning of seen ids resumes |
//! | prekeys | `s` ‖ id / `o` ‖ id / `k` ‖ id | signed / one-time / KEM (last-resort and one-time) prekey record |
//! | sessions | user | all sessions with that peer |
//! | contacts | user | contact |
//! | messages | user or group ‖ seq | message record (a conversation is one key range) |
//! | message_ids | message id | user, group, seq and status of the message |
//! | outbox | seq | outbox record |
//! | seen | sender ‖ message id | time (‖ 1 if it came by gossip) |
//! | seen_by_time | time ‖ sender ‖ message id | (empty; layout 1 only, drained by pruning) |
//! | groups | group | when and through whom we learned of it |
//! | group_changes | group ‖ position | one change of its membership (parents first) |
//! | group_orphans | group ‖ change hash | a change waiting for its parents |
//! | group_keys_waiting | group ‖ sender | a member's sender key that came before its membership |
//! | sender_keys | group ‖ member | our chain (member = us) or the member's chains |
//! | group_pending | group ‖ sender ‖ authenticated ‖ chain ‖ message id | a group message waiting for its key |
//! | timers | user or group | the conversation's disappearing-message timer (0: off) |
//! | expiring | message id | a disappearing message's timer and when it disappears |
//! | relay, media | the embedding node's own layout | written through a [`SideStore`] |
//!
//! The embedding node keeps its own records (its relay service's mailboxes, its attachments)
//! in the `relay` and `media` trees of the same database through [`SideStore`] handles: their
//! commits share the pending writes, and one flush makes the engine's and the node's writes of
//! a turn durable together.

mod backend;
mod backup;
mod keyfile;
pub(crate) mod records;
mod sealed;
mod shared;
#[cfg(feature = "sled")]
mod sled_backend;

use std::fmt;
use std::sync::Arc;

use kith_protocol::content::GroupControl;
use kith_protocol::{ChangeHash, GroupId, MessageId, UnixMillis, UserId};
use zeroize::Zeroize;

use backend::prefix_end;
pub use backend::{Backend, BackendError, Entry, MemoryBackend, RawWrite, StoreError, Tree};
pub use backup::{
    BackupError, BackupSecret, BackupSummary, RECOVERY_CODE_DIGITS, RecoveryCode, RestoredBackup,
    create_backup,
};
pub use keyfile::{KEYRING_SERVICE, KdfParams, KeyFile, KeyFileError, KeyFileKind, Protection};
pub(crate) use records::MessageIndexRecord;
pub(crate) use records::{ExpiringRecord, TimerRecord};
use records::{
    GroupChangeRecord, GroupInvitationRecord, GroupOrphanRecord, GroupRecord, IdentityRecord,
    KemPreKeyRecord, MemberChainsRecord, MessageRecord, OneTimePreKeyRecord, OutboxRecord,
    OwnChainRecord, PeerSessionsRecord, PendingGroupRecord, Record, SignedPreKeyRecord,
    WaitingKeyRecord, decode, encode,
};
use sealed::Pseudonyms;
pub use sealed::{DatabaseKey, SEALED_OVERHEAD, SealedBackend};
use shared::Shared;
pub use shared::{SideStore, SideTree, SideWrite};
#[cfg(feature = "sled")]
pub use sled_backend::{SledBackend, SledDurability, open_sled};

use crate::group::sender_key::{MemberChains, OwnChain};
use crate::identity::IdentityKeyPair;
use crate::model::Contact;
use crate::prekeys::{OneTimePreKey, SignedPreKey};
use crate::session::PeerSessions;

const META_IDENTITY: &[u8] = b"identity";
const META_SEQ: &[u8] = b"seq";
const META_SPK_NEXT: &[u8] = b"spk-next";
const META_SPK_CURRENT: &[u8] = b"spk-current";
const META_OPK_NEXT: &[u8] = b"opk-next";
const META_KEM_NEXT: &[u8] = b"kem-next";
const META_KEM_CURRENT: &[u8] = b"kem-current";
const META_PROFILE: &[u8] = b"profile";
const META_LAYOUT: &[u8] = b"layout";
const META_SEEN_CURSOR: &[u8] = b"seen-cursor";

/// The storage layout (trees, keys and record encodings) this build reads and writes. A
/// database with another layout is refused with [`StoreError::UnsupportedLayout`] rather than
/// misread.
pub const STORE_LAYOUT: u32 = 4;

/// The trees whose format changed from layout 3 to 4 (group membership became a hash-linked
/// graph of changes): their layout-3 contents are dropped when a database is upgraded. The
/// groups' message history stays; the groups themselves must be created again.
const LAYOUT_3_DROPPED: [Tree; 3] = [Tree::Groups, Tree::GroupPending, Tree::SenderKeys];

fn spk_key(id: u32) -> [u8; 5] {
    let mut k = [b's', 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn opk_key(id: u32) -> [u8; 5] {
    let mut k = [b'o', 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn kem_key(id: u32) -> [u8; 5] {
    let mut k = [b'k', 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn conversation_key(conversation: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(conversation);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seen_key(sender: &UserId, id: &MessageId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(&sender.0);
    k[32..].copy_from_slice(&id.0);
    k
}

fn member_key(group: &GroupId, member: &UserId) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&group.0);
    k[32..].copy_from_slice(&member.0);
    k
}

fn pending_key(key: &PendingKey) -> [u8; 85] {
    let mut k = [0u8; 85];
    k[..64].copy_from_slice(&member_key(&key.group, &key.sender));
    k[64] = u8::from(key.authenticated);
    k[65..69].copy_from_slice(&key.chain.to_be_bytes());
    k[69..].copy_from_slice(&key.id.0);
    k
}

fn change_key(group: &GroupId, position: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(&group.0);
    k[32..].copy_from_slice(&position.to_be_bytes());
    k
}

fn orphan_key(group: &GroupId, hash: &ChangeHash) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&group.0);
    k[32..].copy_from_slice(&hash.0);
    k
}

/// Where the 32-byte ids (peers, groups, conversations) sit in each tree's keys: an encrypted
/// store replaces them with their pseudonyms.
fn id_offsets(tree: Tree) -> &'static [usize] {
    match tree {
        Tree::Sessions
        | Tree::Contacts
        | Tree::Messages
        | Tree::Seen
        | Tree::Groups
        | Tree::GroupChanges
        | Tree::GroupOrphans
        | Tree::GroupInvitations
        | Tree::Timers => &[0],
        Tree::SeenByTime => &[8],
        Tree::SenderKeys | Tree::GroupPending | Tree::GroupKeysWaiting => &[0, 32],
        Tree::Meta
        | Tree::PreKeys
        | Tree::MessageIds
        | Tree::Outbox
        | Tree::Relay
        | Tree::Media
        | Tree::Names
        | Tree::Expiring => &[],
    }
}

/// The trees whose keys the store turns back into ids: their ids are kept in `names`.
fn revealed(tree: Tree) -> bool {
    matches!(tree, Tree::SenderKeys | Tree::GroupPending | Tree::GroupKeysWaiting)
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn read_u32(bytes: &[u8]) -> Option<u32> {
    bytes.try_into().ok().map(u32::from_be_bytes)
}

/// A set of writes applied atomically by [`Store::commit`]. Values (which can hold key
/// material) are zeroized when the batch is dropped.
#[derive(Default)]
pub struct Batch {
    writes: Vec<RawWrite>,
    /// Indices of writes whose keys are already as stored (read back from the store, ids
    /// hidden): [`Store::commit`] hides the ids of every other write's key.
    stored_keys: Vec<usize>,
    error: Option<StoreError>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch").field("writes", &self.writes.len()).finish_non_exhaustive()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for (_, _, value) in &mut self.writes {
            if let Some(v) = value {
                v.zeroize();
            }
        }
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.error.is_none()
    }

    /// Writes apply in order, so a later write to a key overrides an earlier one.
    fn put_raw(&mut self, tree: Tree, key: &[u8], value: Vec<u8>) {
        self.writes.push((tree, key.to_vec(), Some(value)));
    }

    fn put<T: Record>(&mut self, tree: Tree, key: &[u8], record: &T) {
        match encode(record) {
            Ok(value) => self.put_raw(tree, key, value),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    fn delete(&mut self, tree: Tree, key: &[u8]) {
        self.writes.push((tree, key.to_vec(), None));
    }

    /// Deletes a key read back from the store (its ids already hidden).
    fn delete_stored(&mut self, tree: Tree, key: &[u8]) {
        self.stored_keys.push(self.writes.len());
        self.delete(tree, key);
    }

    pub(crate) fn put_identity(&mut self, identity: &IdentityKeyPair, now: UnixMillis) {
        self.put(Tree::Meta, META_IDENTITY, &IdentityRecord::new(identity, now));
    }

    pub(crate) fn put_profile_name(&mut self, name: &str) {
        self.put_raw(Tree::Meta, META_PROFILE, name.as_bytes().to_vec());
    }

    pub(crate) fn put_seq(&mut self, next: u64) {
        self.put_raw(Tree::Meta, META_SEQ, next.to_be_bytes().to_vec());
    }

    pub(crate) fn put_signed_prekey(&mut self, key: &SignedPreKey, current: bool) {
        self.put(Tree::PreKeys, &spk_key(key.id), &SignedPreKeyRecord::from(key));
        self.put_raw(Tree::Meta, META_SPK_NEXT, key.id.wrapping_add(1).to_be_bytes().to_vec());
        if current {
            self.put_raw(Tree::Meta, META_SPK_CURRENT, key.id.to_be_bytes().to_vec());
        }
    }

    pub(crate) fn delete_signed_prekey(&mut self, id: u32) {
        self.delete(Tree::PreKeys, &spk_key(id));
    }

    pub(crate) fn put_one_time_prekey(&mut self, record: &OneTimePreKeyRecord, id: u32) {
        self.put(Tree::PreKeys, &opk_key(id), record);
    }

    pub(crate) fn put_next_one_time_prekey_id(&mut self, next: u32) {
        self.put_raw(Tree::Meta, META_OPK_NEXT, next.to_be_bytes().to_vec());
    }

    pub(crate) fn delete_one_time_prekey(&mut self, id: u32) {
        self.delete(Tree::PreKeys, &opk_key(id));
    }

    /// Stores a KEM prekey; a last-resort one becomes the current one.
    pub(crate) fn put_kem_prekey(&mut self, record: &KemPreKeyRecord) {
        self.put(Tree::PreKeys, &kem_key(record.id()), record);
        if record.kind() == kith_protocol::prekey::KemPreKeyKind::LastResort {
            self.put_raw(Tree::Meta, META_KEM_CURRENT, record.id().to_be_bytes().to_vec());
        }
    }

    pub(crate) fn put_next_kem_prekey_id(&mut self, next: u32) {
        self.put_raw(Tree::Meta, META_KEM_NEXT, next.to_be_bytes().to_vec());
    }

    pub(crate) fn delete_kem_prekey(&mut self, id: u32) {
        self.delete(Tree::PreKeys, &kem_key(id));
    }

    pub(crate) fn put_sessions(&mut self, peer: &UserId, sessions: &PeerSessions) {
        self.put(Tree::Sessions, &peer.0, &PeerSessionsRecord::from(sessions));
    }

    pub(crate) fn put_contact(&mut self, contact: &Contact) {
        self.put(Tree::Contacts, &contact.user.0, contact);
    }

    pub(crate) fn delete_contact(&mut self, user: &UserId) {
        self.delete(Tree::Contacts, &user.0);
    }

    /// Stores a new message and its index entry (with its status).
    pub(crate) fn put_message(&mut self, record: &MessageRecord) {
        self.update_message(record);
        self.put_message_status(record);
    }

    /// Rewrites a stored message's content, reactions or edit time (not its status).
    pub(crate) fn update_message(&mut self, record: &MessageRecord) {
        self.put(Tree::Messages, &conversation_key(&record.conversation(), record.seq), record);
    }

    /// Rewrites a stored message's status only: a small index entry.
    pub(crate) fn put_message_status(&mut self, record: &MessageRecord) {
        let index = MessageIndexRecord {
            peer: record.peer,
            group: record.group,
            seq: record.seq,
            status: record.status,
        };
        self.put_message_index(&record.id, &index);
    }

    /// Deletes a stored message and its index entry.
    pub(crate) fn delete_message(&mut self, record: &MessageRecord) {
        self.delete(Tree::Messages, &conversation_key(&record.conversation(), record.seq));
        self.delete(Tree::MessageIds, &record.id.0);
        self.delete(Tree::Expiring, &record.id.0);
    }

    /// Sets a conversation's disappearing-message timer.
    pub(crate) fn put_timer(&mut self, record: &TimerRecord) {
        self.put(Tree::Timers, &record.conversation, record);
    }

    /// Marks message `id` as one that disappears.
    pub(crate) fn put_expiring(&mut self, id: &MessageId, record: &ExpiringRecord) {
        self.put(Tree::Expiring, &id.0, record);
    }

    /// Forgets that message `id` disappears (it is gone).
    pub(crate) fn delete_expiring(&mut self, id: &MessageId) {
        self.delete(Tree::Expiring, &id.0);
    }

    /// Writes a message's index entry (where it lives and its status).
    pub(crate) fn put_message_index(&mut self, id: &MessageId, index: &MessageIndexRecord) {
        self.put(Tree::MessageIds, &id.0, index);
    }

    pub(crate) fn put_outbox(&mut self, record: &OutboxRecord) {
        self.put(Tree::Outbox, &record.seq.to_be_bytes(), record);
    }

    /// Removes the outbox record with sequence number `seq`.
    pub(crate) fn delete_outbox(&mut self, seq: u64) {
        self.delete(Tree::Outbox, &seq.to_be_bytes());
    }

    /// Marks a message seen: one write (pruning scans the seen ids themselves for old ones).
    pub(crate) fn mark_seen(&mut self, sender: &UserId, id: &MessageId, now: UnixMillis) {
        self.put_raw(Tree::Seen, &seen_key(sender, id), now.to_be_bytes().to_vec());
    }

    /// Marks a group message seen, remembering whether it came by gossip (a second copy by
    /// gossip is then a replay; after a mailbox copy it is the gossip catching up).
    pub(crate) fn mark_seen_group(
        &mut self,
        sender: &UserId,
        id: &MessageId,
        now: UnixMillis,
        gossip: bool,
    ) {
        let mut value = now.to_be_bytes().to_vec();
        if gossip {
            value.push(1);
        }
        self.put_raw(Tree::Seen, &seen_key(sender, id), value);
    }

    pub(crate) fn put_group_invitation(&mut self, record: &GroupInvitationRecord) {
        self.put(Tree::GroupInvitations, &record.group.0, record);
    }

    pub(crate) fn delete_group_invitation(&mut self, group: &GroupId) {
        self.delete(Tree::GroupInvitations, &group.0);
    }

    pub(crate) fn put_group(&mut self, record: &GroupRecord) {
        self.put(Tree::Groups, &record.id.0, record);
    }

    pub(crate) fn put_own_chain(&mut self, group: &GroupId, me: &UserId, chain: &OwnChain) {
        self.put(Tree::SenderKeys, &member_key(group, me), &OwnChainRecord::from(chain));
    }

    pub(crate) fn put_member_chains(
        &mut self,
        group: &GroupId,
        member: &UserId,
        chains: &MemberChains,
    ) {
        self.put(Tree::SenderKeys, &member_key(group, member), &MemberChainsRecord::from(chains));
    }

    /// Forgets a member's chains (or ours).
    pub(crate) fn delete_chains(&mut self, group: &GroupId, member: &UserId) {
        self.delete(Tree::SenderKeys, &member_key(group, member));
    }

    pub(crate) fn put_pending_group(&mut self, key: &PendingKey, record: &PendingGroupRecord) {
        self.put(Tree::GroupPending, &pending_key(key), record);
    }

    pub(crate) fn delete_pending_group(&mut self, key: &PendingKey) {
        self.delete(Tree::GroupPending, &pending_key(key));
    }

    /// Stores a group change at `position` of its group's log.
    pub(crate) fn put_group_change(
        &mut self,
        group: &GroupId,
        position: u32,
        record: &GroupChangeRecord,
    ) {
        self.put(Tree::GroupChanges, &change_key(group, position), record);
    }

    pub(crate) fn put_group_orphan(
        &mut self,
        group: &GroupId,
        hash: &ChangeHash,
        record: &GroupOrphanRecord,
    ) {
        self.put(Tree::GroupOrphans, &orphan_key(group, hash), record);
    }

    pub(crate) fn delete_group_orphan(&mut self, group: &GroupId, hash: &ChangeHash) {
        self.delete(Tree::GroupOrphans, &orphan_key(group, hash));
    }

    pub(crate) fn put_waiting_key(
        &mut self,
        group: &GroupId,
        sender: &UserId,
        record: &WaitingKeyRecord,
    ) {
        self.put(Tree::GroupKeysWaiting, &member_key(group, sender), record);
    }

    pub(crate) fn delete_waiting_key(&mut self, group: &GroupId, sender: &UserId) {
        self.delete(Tree::GroupKeysWaiting, &member_key(group, sender));
    }
}

/// Where a group message waits for its sender's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingKey {
    pub(crate) group: GroupId,
    pub(crate) sender: UserId,
    /// Whether it came straight from its sender (each kind has its own share).
    pub(crate) authenticated: bool,
    pub(crate) chain: u32,
    pub(crate) id: MessageId,
}

impl PendingKey {
    fn parse(key: &[u8]) -> Option<Self> {
        Some(Self {
            group: GroupId(key.get(..32)?.try_into().ok()?),
            sender: UserId(key.get(32..64)?.try_into().ok()?),
            authenticated: *key.get(64)? == 1,
            chain: u32::from_be_bytes(key.get(65..69)?.try_into().ok()?),
            id: MessageId(key.get(69..85)?.try_into().ok()?),
        })
    }
}

/// Rebuilds one of the node's side-tree keys for an encrypted store ([`Store::copy_into`]).
pub type SideKeyFn<'a> = dyn Fn(&SideStore, SideTree, &[u8]) -> Vec<u8> + 'a;

/// The typed store. It shares its database, and its pending writes, with the node's
/// [`SideStore`]s ([`Store::side`]).
pub struct Store {
    shared: Arc<Shared>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store over any backend, without encryption (see [`Store::open_sealed`]).
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self { shared: Shared::new(backend, Pseudonyms::plain(), None) }
    }

    /// An in-memory store.
    pub fn memory() -> Self {
        Self::new(Box::new(MemoryBackend::new()))
    }

    /// A store over a backend that persists, without encryption: an empty one is stamped
    /// with this build's [`STORE_LAYOUT`]; one of another layout is upgraded if it can be,
    /// refused otherwise; an encrypted one is refused with [`StoreError::Encrypted`].
    pub fn open_backend(backend: Box<dyn Backend>) -> Result<Self, StoreError> {
        let store = Self::new(backend);
        store.check_layout()?;
        Ok(store)
    }

    /// An encrypted store over a backend that persists: every value sealed under `key`
    /// (with its tree and key as associated data), and the ids in keys replaced by keyed
    /// hashes ([`SealedBackend`] says how). A database sealed under another key, or not
    /// sealed, is refused with [`StoreError::Unauthentic`].
    pub fn open_sealed(backend: Box<dyn Backend>, key: &DatabaseKey) -> Result<Self, StoreError> {
        let sealed = SealedBackend::new(backend, key)?;
        let store = Self {
            shared: Shared::new(Box::new(sealed), Pseudonyms::keyed(key), Some(key.clone())),
        };
        store.check_layout()?;
        Ok(store)
    }

    /// An encrypted in-memory store under a random key (tests of what encryption changes;
    /// feature `test-utils`).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn memory_sealed() -> Result<Self, StoreError> {
        let key = DatabaseKey::generate()
            .map_err(|e| StoreError::Backend(BackendError::new(std::io::Error::other(e))))?;
        Self::open_sealed(Box::new(MemoryBackend::new()), &key)
    }

    /// A sled store at `path`, without encryption: a new one, or one with this build's
    /// [`STORE_LAYOUT`].
    #[cfg(feature = "sled")]
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_backend(Box::new(SledBackend::open(path)?))
    }

    /// An encrypted sled store at `path` ([`Store::open_sealed`]).
    #[cfg(feature = "sled")]
    pub fn open_sled_sealed(path: &std::path::Path, key: &DatabaseKey) -> Result<Self, StoreError> {
        Self::open_sealed(Box::new(SledBackend::open(path)?), key)
    }

    /// Whether values are sealed and ids hidden.
    pub fn is_sealed(&self) -> bool {
        self.shared.pseudonyms().hides()
    }

    /// Copies every record of this store, which must not be encrypted, into `target`, an
    /// empty encrypted one (the one-time migration of a profile to encryption): the engine's
    /// records with the ids in their keys hidden for `target`, the node's side trees through
    /// `side_key`, which rebuilds one of the node's keys with its ids hidden (through
    /// [`SideStore::pseudonym`] and [`SideStore::remember`] on the handle it is given).
    /// Flushes `target` every few thousand records and at the end; returns how many it copied.
    pub fn copy_into(
        &self,
        target: &mut Store,
        side_key: &SideKeyFn<'_>,
    ) -> Result<u64, StoreError> {
        const PAGE: usize = 4096;
        if self.is_sealed() {
            return Err(StoreError::Encrypted);
        }
        let side = target.side();
        let mut copied = 0u64;
        for tree in Tree::ALL {
            let mut from = Vec::new();
            loop {
                let page = self.shared.range(tree, &from, &[], false, PAGE)?;
                let full = page.len() == PAGE;
                if let Some((last, _)) = page.last() {
                    from.clone_from(last);
                    from.push(0);
                }
                copied += page.len() as u64;
                match tree {
                    Tree::Relay | Tree::Media => {
                        let side_tree =
                            if tree == Tree::Relay { SideTree::Relay } else { SideTree::Media };
                        let writes = page
                            .into_iter()
                            .map(|(k, v)| (side_tree, side_key(&side, side_tree, &k), Some(v)))
                            .collect();
                        side.commit(writes);
                    }
                    _ => {
                        let mut batch = Batch::new();
                        for (key, value) in page {
                            batch.put_raw(tree, &key, value);
                        }
                        target.commit(batch)?;
                    }
                }
                target.flush()?;
                if !full {
                    break;
                }
            }
        }
        Ok(copied)
    }

    /// `key` as stored in `tree`: its ids replaced by their pseudonyms in an encrypted store.
    fn stored_key(&self, tree: Tree, key: &[u8]) -> Vec<u8> {
        let mut out = key.to_vec();
        let pseudonyms = self.shared.pseudonyms();
        if pseudonyms.hides() {
            for &at in id_offsets(tree) {
                if let Some(slot) = out.get_mut(at..at + 32)
                    && let Ok(id) = <[u8; 32]>::try_from(&*slot)
                {
                    slot.copy_from_slice(&pseudonyms.hide(&id));
                }
            }
        }
        out
    }

    /// The id behind a pseudonym read from a key (in a store without encryption, the id).
    fn reveal(&self, stored: &[u8]) -> Result<[u8; 32], StoreError> {
        let corrupt = || StoreError::Corrupt { record: "name" };
        let stored: [u8; 32] = stored.try_into().map_err(|_| corrupt())?;
        if !self.shared.pseudonyms().hides() {
            return Ok(stored);
        }
        let id = self.shared.get(Tree::Names, &stored)?.ok_or_else(corrupt)?;
        <[u8; 32]>::try_from(id.as_slice()).map_err(|_| corrupt())
    }

    /// The entries whose keys start with `prefix` (ids as the caller knows them), up to
    /// `limit`, ascending or descending.
    fn prefixed(
        &self,
        tree: Tree,
        prefix: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = self.stored_key(tree, prefix);
        let end = if start.is_empty() { Vec::new() } else { prefix_end(&start) };
        self.shared.range(tree, &start, &end, reverse, limit)
    }

    /// A handle on the embedding node's own trees in this database: what it commits there
    /// becomes durable with the engine's writes, at the next flush by either.
    pub fn side(&self) -> SideStore {
        SideStore::new(Arc::clone(&self.shared))
    }

    /// Accepts a database with this build's layout (upgrading one of layout 3) and stamps an
    /// empty one with it.
    fn check_layout(&self) -> Result<(), StoreError> {
        let backend = self.shared.backend();
        if !self.is_sealed()
            && let Some(layout) = backend.get(Tree::Meta, META_LAYOUT)?
            && layout.len() == 4 + SEALED_OVERHEAD
        {
            return Err(StoreError::Encrypted);
        }
        match self.meta_u32(META_LAYOUT)? {
            Some(STORE_LAYOUT) => Ok(()),
            Some(3) => {
                let mut writes: Vec<RawWrite> = Vec::new();
                for tree in LAYOUT_3_DROPPED {
                    for (key, _) in backend.range(tree, &[], &[], false, usize::MAX)? {
                        writes.push((tree, key, None));
                    }
                }
                writes.push((
                    Tree::Meta,
                    META_LAYOUT.to_vec(),
                    Some(STORE_LAYOUT.to_be_bytes().to_vec()),
                ));
                backend.apply(&writes)?;
                backend.flush()
            }
            Some(found) => Err(StoreError::UnsupportedLayout { found, supported: STORE_LAYOUT }),
            None => {
                for tree in Tree::ALL {
                    if !backend.range(tree, &[], &[], false, 1)?.is_empty() {
                        return Err(StoreError::UnsupportedLayout {
                            found: 0,
                            supported: STORE_LAYOUT,
                        });
                    }
                }
                let layout = STORE_LAYOUT.to_be_bytes().to_vec();
                backend.apply(&[(Tree::Meta, META_LAYOUT.to_vec(), Some(layout))])?;
                backend.flush()
            }
        }
    }

    /// Applies `batch`: all of it or, if a record could not be encoded, none of it. Every
    /// read sees it at once; it becomes durable at the next [`Store::flush`].
    pub fn commit(&mut self, mut batch: Batch) -> Result<(), StoreError> {
        if let Some(e) = batch.error.take() {
            return Err(e);
        }
        let mut writes = std::mem::take(&mut batch.writes);
        let pseudonyms = self.shared.pseudonyms();
        if pseudonyms.hides() {
            let mut names = Vec::new();
            for (i, (tree, key, value)) in writes.iter_mut().enumerate() {
                if batch.stored_keys.contains(&i) {
                    continue;
                }
                if value.is_some() && revealed(*tree) {
                    for &at in id_offsets(*tree) {
                        if let Some(id) =
                            key.get(at..at + 32).and_then(|s| <[u8; 32]>::try_from(s).ok())
                        {
                            names.push((
                                Tree::Names,
                                pseudonyms.hide(&id).to_vec(),
                                Some(id.to_vec()),
                            ));
                        }
                    }
                }
                *key = self.stored_key(*tree, key);
            }
            writes.extend(names);
        }
        self.shared.commit(writes);
        Ok(())
    }

    /// Whether commits (the engine's or a [`SideStore`]'s) are waiting for [`Store::flush`].
    pub fn has_pending(&self) -> bool {
        self.shared.has_pending()
    }

    /// Writes every commit since the last flush (the [`SideStore`]s' included) to the backend
    /// as one atomic batch and makes it durable. On failure nothing is lost: the writes stay
    /// pending until a flush makes them durable, and the next one applies them again (a
    /// backend that failed may have lost what it had applied but not made durable: sled,
    /// after a full disk, is reopened).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.shared.flush()
    }

    /// Every stored entry (flushed or not), in tree and key order (feature `test-utils`: tests
    /// compare stores byte for byte with it).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        self.shared.dump()
    }

    /// The value at `key` (ids as the caller knows them), pending writes first.
    fn raw(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.shared.get(tree, &self.stored_key(tree, key))
    }

    /// Up to `limit` entries with keys in `[start, end)` (no end bound if `end` is empty),
    /// ascending or descending, pending writes merged over the backend's. The bounds are keys
    /// as stored ([`Store::stored_key`]), and so are the keys returned.
    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.shared.range(tree, start, end, reverse, limit)
    }

    fn get<T: Record>(&self, tree: Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.raw(tree, key)?.map(|v| decode(&v)).transpose()
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        match self.raw(Tree::Meta, key)? {
            Some(v) => read_u64(&v).map(Some).ok_or(StoreError::Corrupt { record: "counter" }),
            None => Ok(None),
        }
    }

    fn meta_u32(&self, key: &[u8]) -> Result<Option<u32>, StoreError> {
        match self.raw(Tree::Meta, key)? {
            Some(v) => read_u32(&v).map(Some).ok_or(StoreError::Corrupt { record: "counter" }),
            None => Ok(None),
        }
    }

    // --- identity ---

    /// The local identity, if one was created.
    pub fn identity(&self) -> Result<Option<IdentityKeyPair>, StoreError> {
        self.get::<IdentityRecord>(Tree::Meta, META_IDENTITY)?.map(|r| r.to_identity()).transpose()
    }

    /// Our display name, if set.
    pub fn profile_name(&self) -> Result<Option<String>, StoreError> {
        match self.raw(Tree::Meta, META_PROFILE)? {
            Some(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt { record: "profile" }),
            None => Ok(None),
        }
    }

    /// The next conversation sequence number.
    pub(crate) fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.meta_u64(META_SEQ)?.unwrap_or(1))
    }

    // --- prekeys ---

    /// A signed prekey by id.
    pub fn signed_prekey(&self, id: u32) -> Result<Option<SignedPreKey>, StoreError> {
        Ok(self.get::<SignedPreKeyRecord>(Tree::PreKeys, &spk_key(id))?.map(SignedPreKey::from))
    }

    /// All stored signed prekeys, oldest id first.
    pub fn signed_prekeys(&self) -> Result<Vec<SignedPreKey>, StoreError> {
        self.range(Tree::PreKeys, b"s", b"t", false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode::<SignedPreKeyRecord>(&v).map(SignedPreKey::from))
            .collect()
    }

    /// The id of the current signed prekey.
    pub(crate) fn current_signed_prekey_id(&self) -> Result<Option<u32>, StoreError> {
        self.meta_u32(META_SPK_CURRENT)
    }

    /// The id the next signed prekey gets.
    pub(crate) fn next_signed_prekey_id(&self) -> Result<u32, StoreError> {
        Ok(self.meta_u32(META_SPK_NEXT)?.unwrap_or(1))
    }

    /// The id the next one-time prekey gets.
    pub(crate) fn next_one_time_prekey_id(&self) -> Result<u32, StoreError> {
        Ok(self.meta_u32(META_OPK_NEXT)?.unwrap_or(1))
    }

    /// A one-time prekey by id.
    pub(crate) fn one_time_prekey(
        &self,
        id: u32,
    ) -> Result<Option<OneTimePreKeyRecord>, StoreError> {
        self.get(Tree::PreKeys, &opk_key(id))
    }

    /// The one-time prekey with the lowest id at or above `id`.
    pub(crate) fn one_time_prekey_from(
        &self,
        id: u32,
    ) -> Result<Option<OneTimePreKeyRecord>, StoreError> {
        let start = opk_key(id);
        Ok(match self.range(Tree::PreKeys, &start, b"p", false, 1)?.into_iter().next() {
            Some((_, v)) => Some(decode(&v)?),
            None => None,
        })
    }

    /// Up to `limit` one-time prekeys, lowest id first.
    pub(crate) fn one_time_prekeys(
        &self,
        limit: usize,
    ) -> Result<Vec<OneTimePreKeyRecord>, StoreError> {
        self.range(Tree::PreKeys, b"o", b"p", false, limit)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    /// The id the next KEM prekey gets.
    pub(crate) fn next_kem_prekey_id(&self) -> Result<u32, StoreError> {
        Ok(self.meta_u32(META_KEM_NEXT)?.unwrap_or(1))
    }

    /// The current last-resort KEM prekey.
    pub(crate) fn current_kem_prekey(&self) -> Result<Option<KemPreKeyRecord>, StoreError> {
        match self.meta_u32(META_KEM_CURRENT)? {
            Some(id) => self.kem_prekey(id),
            None => Ok(None),
        }
    }

    /// A KEM prekey (last-resort or one-time) by id.
    pub(crate) fn kem_prekey(&self, id: u32) -> Result<Option<KemPreKeyRecord>, StoreError> {
        self.get(Tree::PreKeys, &kem_key(id))
    }

    /// The KEM prekey with the lowest id at or above `id`.
    pub(crate) fn kem_prekey_from(&self, id: u32) -> Result<Option<KemPreKeyRecord>, StoreError> {
        let start = kem_key(id);
        Ok(match self.range(Tree::PreKeys, &start, b"l", false, 1)?.into_iter().next() {
            Some((_, v)) => Some(decode(&v)?),
            None => None,
        })
    }

    /// Every stored KEM prekey, lowest id first.
    pub(crate) fn kem_prekeys(&self) -> Result<Vec<KemPreKeyRecord>, StoreError> {
        self.range(Tree::PreKeys, b"k", b"l", false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    /// The public halves of every unused one-time prekey not yet handed out.
    pub fn available_one_time_prekeys(&self) -> Result<Vec<OneTimePreKey>, StoreError> {
        Ok(self
            .one_time_prekeys(usize::MAX)?
            .into_iter()
            .filter(|r| r.handed_out_at.is_none())
            .map(|r| r.to_key())
            .collect())
    }

    // --- sessions ---

    /// All sessions with `peer` (empty if none).
    pub(crate) fn sessions(&self, peer: &UserId) -> Result<PeerSessions, StoreError> {
        Ok(self
            .get::<PeerSessionsRecord>(Tree::Sessions, &peer.0)?
            .map(PeerSessions::from)
            .unwrap_or_default())
    }

    // --- contacts ---

    /// A contact by id.
    pub fn contact(&self, user: &UserId) -> Result<Option<Contact>, StoreError> {
        self.get(Tree::Contacts, &user.0)
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        self.range(Tree::Contacts, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    // --- messages ---

    /// Where a message lives and its status, without loading the message itself.
    pub(crate) fn message_index(
        &self,
        id: &MessageId,
    ) -> Result<Option<MessageIndexRecord>, StoreError> {
        self.get(Tree::MessageIds, &id.0)
    }

    pub(crate) fn message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let Some(index) = self.message_index(id)? else {
            return Ok(None);
        };
        let conversation = records::conversation_of(&index.peer, index.group.as_ref());
        let key = conversation_key(&conversation, index.seq);
        let record = self.get::<MessageRecord>(Tree::Messages, &key)?;
        Ok(record.map(|record| MessageRecord { status: index.status, ..record }))
    }

    /// Up to `limit` messages of a conversation (a peer's or a group's id) whose sequence
    /// number is below `before` (all if `None`), newest first.
    pub(crate) fn history(
        &self,
        conversation: &[u8; 32],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let start = self.stored_key(Tree::Messages, &conversation_key(conversation, 0));
        let end = match before {
            Some(seq) => self.stored_key(Tree::Messages, &conversation_key(conversation, seq)),
            None => prefix_end(&self.stored_key(Tree::Messages, conversation)),
        };
        let mut out = Vec::new();
        for (_, value) in self.range(Tree::Messages, &start, &end, true, limit)? {
            let mut record: MessageRecord = decode(&value)?;
            let index = self.message_index(&record.id)?;
            record.status = index.ok_or(StoreError::Corrupt { record: "message index" })?.status;
            out.push(record);
        }
        Ok(out)
    }

    // --- outbox ---

    /// Every outbox entry.
    pub(crate) fn outbox(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.range(Tree::Outbox, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    // --- groups ---

    /// Every group we hold.
    pub(crate) fn group_invitations(&self) -> Result<Vec<GroupInvitationRecord>, StoreError> {
        self.range(Tree::GroupInvitations, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    /// Every conversation whose messages disappear, with its timer.
    pub(crate) fn timers(&self) -> Result<Vec<TimerRecord>, StoreError> {
        self.range(Tree::Timers, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    /// Every message that disappears, with its timer.
    pub(crate) fn expiring(&self) -> Result<Vec<(MessageId, ExpiringRecord)>, StoreError> {
        self.range(Tree::Expiring, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let id = k.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    record: <ExpiringRecord as Record>::NAME,
                })?;
                Ok((MessageId(id), decode(&v)?))
            })
            .collect()
    }

    pub(crate) fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.range(Tree::Groups, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    pub(crate) fn own_chain(
        &self,
        group: &GroupId,
        me: &UserId,
    ) -> Result<Option<OwnChain>, StoreError> {
        Ok(self.get::<OwnChainRecord>(Tree::SenderKeys, &member_key(group, me))?.map(Into::into))
    }

    pub(crate) fn member_chains(
        &self,
        group: &GroupId,
        member: &UserId,
    ) -> Result<MemberChains, StoreError> {
        Ok(self
            .get::<MemberChainsRecord>(Tree::SenderKeys, &member_key(group, member))?
            .map(Into::into)
            .unwrap_or_default())
    }

    /// The members (and ourselves) holding chains in `group`.
    pub(crate) fn chain_holders(&self, group: &GroupId) -> Result<Vec<UserId>, StoreError> {
        self.prefixed(Tree::SenderKeys, &group.0, false, usize::MAX)?
            .into_iter()
            .map(|(k, _)| self.reveal(k.get(32..64).unwrap_or_default()).map(UserId))
            .collect()
    }

    /// Up to `limit` group messages waiting for a key, in `group` (from `sender` only, if
    /// given, and on `chain` only, if given too), oldest key first.
    pub(crate) fn pending_group(
        &self,
        group: &GroupId,
        sender: Option<(&UserId, Option<u32>)>,
        limit: usize,
    ) -> Result<Vec<(PendingKey, PendingGroupRecord)>, StoreError> {
        let Some((sender, chain)) = sender else {
            return self.pending_range(&group.0, limit);
        };
        let mut out = Vec::new();
        for authenticated in [true, false] {
            let mut prefix = member_key(group, sender).to_vec();
            prefix.push(u8::from(authenticated));
            if let Some(chain) = chain {
                prefix.extend_from_slice(&chain.to_be_bytes());
            }
            out.extend(self.pending_range(&prefix, limit.saturating_sub(out.len()))?);
        }
        Ok(out)
    }

    /// How many group messages from `sender` wait in `group` with this authentication,
    /// counting no further than `limit`.
    pub(crate) fn pending_count(
        &self,
        group: &GroupId,
        sender: &UserId,
        authenticated: bool,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut prefix = member_key(group, sender).to_vec();
        prefix.push(u8::from(authenticated));
        Ok(self.prefixed(Tree::GroupPending, &prefix, false, limit)?.len())
    }

    fn pending_range(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(PendingKey, PendingGroupRecord)>, StoreError> {
        let entries = self.prefixed(Tree::GroupPending, prefix, false, limit)?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let mut key = PendingKey::parse(&key)
                .ok_or(StoreError::Corrupt { record: "pending group message" })?;
            key.group = GroupId(self.reveal(&key.group.0)?);
            key.sender = UserId(self.reveal(&key.sender.0)?);
            out.push((key, decode(&value)?));
        }
        Ok(out)
    }

    /// Up to `limit` group messages waiting for a key, in every group.
    pub(crate) fn all_pending_group(
        &self,
        limit: usize,
    ) -> Result<Vec<(PendingKey, PendingGroupRecord)>, StoreError> {
        self.pending_range(&[], limit)
    }

    /// The sender key `sender` sent for `group` before its membership was known.
    pub(crate) fn waiting_key(
        &self,
        group: &GroupId,
        sender: &UserId,
    ) -> Result<Option<WaitingKeyRecord>, StoreError> {
        self.get(Tree::GroupKeysWaiting, &member_key(group, sender))
    }

    /// Whether any sender key waits for `group`.
    pub(crate) fn has_waiting_keys(&self, group: &GroupId) -> Result<bool, StoreError> {
        Ok(!self.prefixed(Tree::GroupKeysWaiting, &group.0, false, 1)?.is_empty())
    }

    /// Every waiting sender key: (group, sender, record).
    pub(crate) fn waiting_keys(
        &self,
    ) -> Result<Vec<(GroupId, UserId, WaitingKeyRecord)>, StoreError> {
        let mut out = Vec::new();
        for (key, value) in self.range(Tree::GroupKeysWaiting, &[], &[], false, usize::MAX)? {
            let (Some(group), Some(sender)) = (
                key.get(..32).and_then(|g| <[u8; 32]>::try_from(g).ok()),
                key.get(32..64).and_then(|u| <[u8; 32]>::try_from(u).ok()),
            ) else {
                return Err(StoreError::Corrupt { record: "waiting sender key" });
            };
            out.push((
                GroupId(self.reveal(&group)?),
                UserId(self.reveal(&sender)?),
                decode(&value)?,
            ));
        }
        Ok(out)
    }

    /// The changes of `group`'s log, parents first.
    pub(crate) fn group_changes(&self, group: &GroupId) -> Result<Vec<GroupControl>, StoreError> {
        self.prefixed(Tree::GroupChanges, &group.0, false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode::<GroupChangeRecord>(&v).map(|r| r.change))
            .collect()
    }

    /// The changes of `group` waiting for their parents (every group's if `None`).
    pub(crate) fn group_orphans(
        &self,
        group: Option<&GroupId>,
    ) -> Result<Vec<GroupOrphanRecord>, StoreError> {
        let prefix = group.map(|g| g.0.to_vec()).unwrap_or_default();
        self.prefixed(Tree::GroupOrphans, &prefix, false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    // --- seen ids ---

    /// Whether an envelope `id` from `sender` was already received.
    pub(crate) fn is_seen(&self, sender: &UserId, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self.raw(Tree::Seen, &seen_key(sender, id))?.is_some())
    }

    /// Whether a group message was seen: `None` if not, else whether it came by gossip.
    pub(crate) fn seen_group(
        &self,
        sender: &UserId,
        id: &MessageId,
    ) -> Result<Option<bool>, StoreError> {
        Ok(self.raw(Tree::Seen, &seen_key(sender, id))?.map(|v| v.get(8) == Some(&1)))
    }

    /// Adds to `batch` the removal of the seen ids recorded before `cutoff` among up to `limit`
    /// of them, scanned in key order from where the last call stopped (stored with the batch,
    /// so that restarts do not start over: back to the start once the scan reaches the end):
    /// called periodically, it goes round the whole set. Also drains up to `limit` entries of
    /// the time index older layouts kept beside it. Returns how many seen ids it forgets.
    pub(crate) fn prune_seen(
        &self,
        cutoff: UnixMillis,
        limit: usize,
        batch: &mut Batch,
    ) -> Result<usize, StoreError> {
        let mut cursor = self.raw(Tree::Meta, META_SEEN_CURSOR)?.unwrap_or_default();
        for (key, _) in self.range(Tree::SeenByTime, &[], &[], false, limit)? {
            batch.delete_stored(Tree::SeenByTime, &key);
        }
        let scanned = self.range(Tree::Seen, &cursor, &[], false, limit)?;
        let mut forgotten = 0;
        for (key, value) in &scanned {
            let at = value.get(..8).and_then(read_u64).unwrap_or(0);
            if at < cutoff {
                batch.delete_stored(Tree::Seen, key);
                forgotten += 1;
            }
        }
        match scanned.last() {
            Some((last, _)) if scanned.len() == limit => {
                cursor.clone_from(last);
                cursor.push(0); // the next key after it
            }
            _ => cursor.clear(),
        }
        batch.put_raw(Tree::Meta, META_SEEN_CURSOR, cursor);
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests;
