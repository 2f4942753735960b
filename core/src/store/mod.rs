//! Storage: a typed store over a pluggable ordered key-value [`Backend`].
//!
//! All reads go through [`Store`]'s per-concern methods (identity, prekeys, sessions, contacts,
//! messages, outbox, seen ids); all writes are collected in a [`Batch`] and applied with
//! [`Store::commit`], atomically across trees. A commit is durable only after
//! [`Store::flush`]; the engine flushes once per turn (group commit) before anything that
//! depends on the commit leaves the process.
//!
//! Key layout (all integers big-endian, so that byte order is numeric order):
//!
//! | tree | key | value |
//! |---|---|---|
//! | meta | `identity`, `profile`, `seq`, `spk-next`, `spk-current`, `opk-next` | identity, name, counters |
//! | prekeys | `s` ‖ id / `o` ‖ id | signed / one-time prekey record |
//! | sessions | user | all sessions with that peer |
//! | contacts | user | contact |
//! | messages | message id | message record |
//! | conversations | user ‖ seq | message id |
//! | outbox | message id | outbox record |
//! | seen | sender ‖ message id | time |
//! | seen_by_time | time ‖ sender ‖ message id | (empty) |

mod backend;
pub(crate) mod records;

use std::fmt;
use std::path::Path;

use kith_protocol::{MessageId, UnixMillis, UserId};
use zeroize::Zeroize;

use backend::prefix_end;
pub use backend::{Backend, Entry, MemoryBackend, RawWrite, SledBackend, StoreError, Tree};
use records::{
    IdentityRecord, MessageRecord, OneTimePreKeyRecord, OutboxRecord, PeerSessionsRecord, Record,
    SignedPreKeyRecord, decode, encode,
};

use crate::identity::IdentityKeyPair;
use crate::model::Contact;
use crate::prekeys::{OneTimePreKey, SignedPreKey};
use crate::session::PeerSessions;

const META_IDENTITY: &[u8] = b"identity";
const META_SEQ: &[u8] = b"seq";
const META_SPK_NEXT: &[u8] = b"spk-next";
const META_SPK_CURRENT: &[u8] = b"spk-current";
const META_OPK_NEXT: &[u8] = b"opk-next";
const META_PROFILE: &[u8] = b"profile";

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

fn conversation_key(peer: &UserId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&peer.0);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seen_key(sender: &UserId, id: &MessageId) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(&sender.0);
    k[32..].copy_from_slice(&id.0);
    k
}

fn seen_time_key(at: UnixMillis, sender: &UserId, id: &MessageId) -> [u8; 56] {
    let mut k = [0u8; 56];
    k[..8].copy_from_slice(&at.to_be_bytes());
    k[8..].copy_from_slice(&seen_key(sender, id));
    k
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

    pub(crate) fn put_sessions(&mut self, peer: &UserId, sessions: &PeerSessions) {
        self.put(Tree::Sessions, &peer.0, &PeerSessionsRecord::from(sessions));
    }

    pub(crate) fn put_contact(&mut self, contact: &Contact) {
        self.put(Tree::Contacts, &contact.user.0, contact);
    }

    pub(crate) fn delete_contact(&mut self, user: &UserId) {
        self.delete(Tree::Contacts, &user.0);
    }

    pub(crate) fn put_message(&mut self, record: &MessageRecord) {
        self.put(Tree::Messages, &record.id.0, record);
        self.put_raw(
            Tree::Conversations,
            &conversation_key(&record.peer, record.seq),
            record.id.0.to_vec(),
        );
    }

    pub(crate) fn put_outbox(&mut self, record: &OutboxRecord) {
        self.put(Tree::Outbox, &record.id.0, record);
    }

    pub(crate) fn delete_outbox(&mut self, id: &MessageId) {
        self.delete(Tree::Outbox, &id.0);
    }

    pub(crate) fn mark_seen(&mut self, sender: &UserId, id: &MessageId, now: UnixMillis) {
        self.put_raw(Tree::Seen, &seen_key(sender, id), now.to_be_bytes().to_vec());
        self.put_raw(Tree::SeenByTime, &seen_time_key(now, sender, id), Vec::new());
    }

    fn forget_seen(&mut self, time_key: &[u8]) {
        if let Some(seen) = time_key.get(8..) {
            self.delete(Tree::Seen, seen);
        }
        self.delete(Tree::SeenByTime, time_key);
    }
}

/// The typed store.
pub struct Store {
    backend: Box<dyn Backend>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// A store over any backend.
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self { backend }
    }

    /// An in-memory store.
    pub fn memory() -> Self {
        Self::new(Box::new(MemoryBackend::new()))
    }

    /// A sled store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::new(Box::new(SledBackend::open(path)?)))
    }

    /// Applies `batch` atomically (not yet durable: see [`Store::flush`]).
    pub fn commit(&self, mut batch: Batch) -> Result<(), StoreError> {
        if let Some(e) = batch.error.take() {
            return Err(e);
        }
        if batch.writes.is_empty() {
            return Ok(());
        }
        self.backend.apply(&batch.writes)
    }

    /// Makes every committed batch durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }

    /// Every stored entry, in tree and key order (for tests and diagnostics).
    pub fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        self.backend.dump()
    }

    fn get<T: Record>(&self, tree: Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.backend.get(tree, key)?.map(|v| decode(&v)).transpose()
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        match self.backend.get(Tree::Meta, key)? {
            Some(v) => read_u64(&v).map(Some).ok_or(StoreError::Corrupt { record: "counter" }),
            None => Ok(None),
        }
    }

    fn meta_u32(&self, key: &[u8]) -> Result<Option<u32>, StoreError> {
        match self.backend.get(Tree::Meta, key)? {
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
        match self.backend.get(Tree::Meta, META_PROFILE)? {
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
        self.backend
            .range(Tree::PreKeys, b"s", b"t", false, usize::MAX)?
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
        Ok(match self.backend.range(Tree::PreKeys, &start, b"p", false, 1)?.into_iter().next() {
            Some((_, v)) => Some(decode(&v)?),
            None => None,
        })
    }

    /// Up to `limit` one-time prekeys, lowest id first.
    pub(crate) fn one_time_prekeys(
        &self,
        limit: usize,
    ) -> Result<Vec<OneTimePreKeyRecord>, StoreError> {
        self.backend
            .range(Tree::PreKeys, b"o", b"p", false, limit)?
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
        self.backend
            .range(Tree::Contacts, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    // --- messages ---

    pub(crate) fn message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.get(Tree::Messages, &id.0)
    }

    /// Up to `limit` messages of the conversation with `peer` whose sequence number is below
    /// `before` (all if `None`), newest first.
    pub(crate) fn history(
        &self,
        peer: &UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let start = conversation_key(peer, 0);
        let end = match before {
            Some(seq) => conversation_key(peer, seq).to_vec(),
            None => prefix_end(&peer.0),
        };
        let mut out = Vec::new();
        for (_, id) in self.backend.range(Tree::Conversations, &start, &end, true, limit)? {
            let id = MessageId(
                id.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt { record: "conversation" })?,
            );
            if let Some(record) = self.message(&id)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    // --- outbox ---

    /// Every outbox entry.
    pub(crate) fn outbox(&self) -> Result<Vec<OutboxRecord>, StoreError> {
        self.backend
            .range(Tree::Outbox, &[], &[], false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode(&v))
            .collect()
    }

    // --- seen ids ---

    /// Whether an envelope `id` from `sender` was already received.
    pub(crate) fn is_seen(&self, sender: &UserId, id: &MessageId) -> Result<bool, StoreError> {
        Ok(self.backend.get(Tree::Seen, &seen_key(sender, id))?.is_some())
    }

    /// Adds to `batch` the removal of up to `limit` seen ids recorded before `cutoff`; returns
    /// how many.
    pub(crate) fn prune_seen(
        &self,
        cutoff: UnixMillis,
        limit: usize,
        batch: &mut Batch,
    ) -> Result<usize, StoreError> {
        let old = self.backend.range(Tree::SeenByTime, &[], &cutoff.to_be_bytes(), false, limit)?;
        for (key, _) in &old {
            batch.forget_seen(key);
        }
        Ok(old.len())
    }
}
