//! The relay's disk: mailboxes, uploaded prekeys and access verifiers, in the profile's
//! database (the `relay` side tree: namespace `M` for mail, `P` for prekeys, `A` for each
//! recipient's access verifiers), so that they commit with the engine's writes of the same
//! turn.
//!
//! A stored envelope is either an encoded [`Envelope`](kith_protocol::envelope::Envelope)
//! (its first byte is the wire version) or [`SEALED`] followed by an encoded
//! [`SealedEnvelope`](kith_protocol::mailbox::SealedEnvelope).
//!
//! The mail namespace holds three kinds of entry, so that every change is one atomic batch:
//!
//! ```text
//!  'm' ‖ recipient ‖ seq            → deposited_at ‖ id ‖ envelope bytes   (the mail, in order)
//!  'i' ‖ recipient ‖ id             → seq ‖ deposited_at                   (dedup, acks)
//!  'e' ‖ deposited_at ‖ recipient ‖ seq → ()                               (expiry order)
//! ```
//!
//! `seq` counts up from one past the highest stored on open, so a recipient's mail reads back
//! in deposit order, also across restarts (a seq lost with a power cut named nothing durable).
//! Usage per recipient (messages, bytes) is kept in memory and rebuilt from the `'m'` entries
//! on open. Nothing here is durable until the profile's next flush; the relay acknowledges only
//! after it.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use kith_core::store::{SideStore, SideTree};

use crate::keyspace::{Keyspace, WriteBatch};
use kith_protocol::mailbox::AccessVerifier;
use kith_protocol::prekey::{OneTimePreKeyPublic, PreKeyBundle, PreKeyRequest, PreKeyUpload};
use kith_protocol::{MessageId, UnixMillis, UserId};

/// Most one-time prekeys a relay keeps per user (older ones are dropped first).
pub const MAX_RELAY_ONE_TIME_PREKEYS: usize = 100;

/// Most one-time KEM prekeys a relay keeps per user (1.2 KiB each; oldest dropped first).
pub const MAX_RELAY_KEM_ONE_TIME_PREKEYS: usize = 100;

/// The first byte of a stored sealed envelope (never a wire version).
pub(crate) const SEALED: u8 = 0xff;

const MAIL: u8 = b'm';
const IDS: u8 = b'i';
const EXPIRY: u8 = b'e';
/// Bytes of a mail value before the envelope: deposited_at (8) and id (16).
const MAIL_HEADER: usize = 8 + 16;

/// A storage failure (the relay answers `Unavailable` and keeps running).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayStoreError {
    /// The database failed.
    #[error("relay store")]
    Backend(#[from] kith_core::store::StoreError),
    /// A record could not be encoded.
    #[error("relay store: could not encode a prekey record")]
    Encode(#[source] kith_protocol::EncodeError),
}

/// Messages and bytes held for one recipient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

/// What became of a deposit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deposit {
    /// Stored now.
    Stored,
    /// Already held (a retry); nothing changed.
    AlreadyHeld,
}

/// One stored envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mail {
    pub(crate) id: MessageId,
    pub(crate) bytes: Vec<u8>,
}

pub(crate) struct RelayStore {
    side: SideStore,
    mailbox: Keyspace,
    prekeys: Keyspace,
    access: Keyspace,
    /// Each recipient's access verifiers, by the recipient's pseudonym.
    verifiers: HashMap<UserId, HashSet<AccessVerifier>>,
    /// The next mail's seq.
    next_seq: u64,
    usage: HashMap<UserId, Usage>,
    total: Usage,
    prekey_users: usize,
}

fn mail_key(recipient: &UserId, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(41);
    key.push(MAIL);
    key.extend_from_slice(&recipient.0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn id_key(recipient: &UserId, id: &MessageId) -> Vec<u8> {
    let mut key = Vec::with_capacity(49);
    key.push(IDS);
    key.extend_from_slice(&recipient.0);
    key.extend_from_slice(&id.0);
    key
}

fn expiry_key(deposited_at: UnixMillis, recipient: &UserId, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(49);
    key.push(EXPIRY);
    key.extend_from_slice(&deposited_at.to_be_bytes());
    key.extend_from_slice(&recipient.0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn prefix(kind: u8, recipient: &UserId) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(kind);
    key.extend_from_slice(&recipient.0);
    key
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Splits a `'m'` key into recipient and seq.
fn parse_mail_key(key: &[u8]) -> Option<(UserId, u64)> {
    let recipient: [u8; 32] = key.get(1..33)?.try_into().ok()?;
    Some((UserId(recipient), be_u64(key.get(33..41)?)?))
}

/// Splits a mail value into deposited_at, id and envelope.
fn parse_mail(value: &[u8]) -> Option<(UnixMillis, MessageId, &[u8])> {
    let at = be_u64(value)?;
    let id: [u8; 16] = value.get(8..MAIL_HEADER)?.try_into().ok()?;
    Some((at, MessageId(id), value.get(MAIL_HEADER..)?))
}

impl RelayStore {
    /// Opens the relay's records in the profile's database and reads the usage of every
    /// mailbox.
    pub(crate) fn open(side: SideStore) -> Result<Self, RelayStoreError> {
        let mailbox = Keyspace::new(side.clone(), SideTree::Relay, b'M');
        let prekeys = Keyspace::new(side.clone(), SideTree::Relay, b'P');
        let mut usage: HashMap<UserId, Usage> = HashMap::new();
        let mut total = Usage::default();
        let mut next_seq = 0;
        mailbox.scan_prefix(&[MAIL], |key, value| {
            let Some((recipient, seq)) = parse_mail_key(key) else {
                return ControlFlow::Continue(());
            };
            next_seq = next_seq.max(seq + 1);
            let bytes = value.len().saturating_sub(MAIL_HEADER) as u64;
            let u = usage.entry(recipient).or_default();
            u.messages += 1;
            u.bytes += bytes;
            total.messages += 1;
            total.bytes += bytes;
            ControlFlow::Continue(())
        })?;
        let mut prekey_users = 0;
        prekeys.scan(&[], &[], |_, _| {
            prekey_users += 1;
            ControlFlow::Continue(())
        })?;
        let access = Keyspace::new(side.clone(), SideTree::Relay, b'A');
        let mut verifiers = HashMap::new();
        access.scan(&[], &[], |key, value| {
            if let Ok(recipient) = <[u8; 32]>::try_from(key) {
                verifiers.insert(UserId(recipient), parse_verifiers(value));
            }
            ControlFlow::Continue(())
        })?;
        Ok(Self { side, mailbox, prekeys, access, verifiers, next_seq, usage, total, prekey_users })
    }

    /// Replaces `recipient`'s access verifiers; durable after the next flush.
    pub(crate) fn set_verifiers(&mut self, recipient: &UserId, verifiers: &[AccessVerifier]) {
        let hidden = self.access.hide(recipient);
        let set: HashSet<AccessVerifier> = verifiers.iter().copied().collect();
        let mut value = Vec::with_capacity(32 * set.len());
        let mut sorted: Vec<_> = set.iter().collect();
        sorted.sort();
        sorted.iter().for_each(|v| value.extend_from_slice(&v.0));
        if set.is_empty() {
            self.access.remove(&hidden.0);
            self.verifiers.remove(&hidden);
        } else {
            self.access.insert(&hidden.0, value);
            self.verifiers.insert(hidden, set);
        }
    }

    /// Verifiers registered, over all recipients.
    pub(crate) fn verifier_count(&self) -> usize {
        self.verifiers.values().map(HashSet::len).sum()
    }

    /// Recipients with verifiers registered.
    pub(crate) fn verifier_recipients(&self) -> usize {
        self.verifiers.len()
    }

    /// Whether `user` has prekeys stored here (a key lookup, nothing decoded).
    pub(crate) fn has_prekeys(&self, user: &UserId) -> bool {
        self.prekeys.contains_key(&self.prekeys.hide(user).0).unwrap_or(false)
    }

    /// Whether `recipient` registered any verifiers here.
    pub(crate) fn has_verifiers(&self, recipient: &UserId) -> bool {
        self.verifiers.contains_key(&self.access.hide(recipient))
    }

    /// Whether `verifier` is one `recipient` registered.
    pub(crate) fn has_verifier(&self, recipient: &UserId, verifier: &AccessVerifier) -> bool {
        self.verifiers.get(&self.access.hide(recipient)).is_some_and(|set| set.contains(verifier))
    }

    /// What `recipient` has stored.
    pub(crate) fn usage(&self, recipient: &UserId) -> Usage {
        self.usage.get(&self.mailbox.hide(recipient)).copied().unwrap_or_default()
    }

    /// What the whole relay holds.
    pub(crate) fn total(&self) -> Usage {
        self.total
    }

    /// Users with prekeys stored.
    pub(crate) fn prekey_users(&self) -> usize {
        self.prekey_users
    }

    /// Whether `recipient` already holds an envelope with this id.
    pub(crate) fn holds(
        &self,
        recipient: &UserId,
        id: &MessageId,
    ) -> Result<bool, RelayStoreError> {
        Ok(self.mailbox.contains_key(&id_key(&self.mailbox.hide(recipient), id))?)
    }

    /// Stores an envelope (quota checks are the caller's); durable after [`Self::flush`].
    pub(crate) fn deposit(
        &mut self,
        recipient: &UserId,
        id: &MessageId,
        envelope: &[u8],
        now: UnixMillis,
    ) -> Result<Deposit, RelayStoreError> {
        if self.holds(recipient, id)? {
            return Ok(Deposit::AlreadyHeld);
        }
        let recipient = &self.mailbox.hide(recipient);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut value = Vec::with_capacity(MAIL_HEADER + envelope.len());
        value.extend_from_slice(&now.to_be_bytes());
        value.extend_from_slice(&id.0);
        value.extend_from_slice(envelope);
        let mut index = [0u8; 16];
        index[..8].copy_from_slice(&seq.to_be_bytes());
        index[8..].copy_from_slice(&now.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.insert(&self.mailbox, &mail_key(recipient, seq), value);
        batch.insert(&self.mailbox, &id_key(recipient, id), index.to_vec());
        batch.insert(&self.mailbox, &expiry_key(now, recipient, seq), Vec::new());
        self.mailbox.commit(batch);
        let bytes = envelope.len() as u64;
        let u = self.usage.entry(*recipient).or_default();
        u.messages += 1;
        u.bytes += bytes;
        self.total.messages += 1;
        self.total.bytes += bytes;
        Ok(Deposit::Stored)
    }

    /// Up to `limit` envelopes of `recipient`, oldest first, at most `max_bytes` of envelopes
    /// (but always at least one), skipping those deposited before `expired_before`; and how
    /// many envelopes are left after them.
    pub(crate) fn fetch(
        &self,
        recipient: &UserId,
        limit: usize,
        max_bytes: usize,
        expired_before: UnixMillis,
    ) -> Result<(Vec<Mail>, u64), RelayStoreError> {
        let mut out = Vec::new();
        let mut size = 0usize;
        let mut seen = 0u64;
        self.mailbox.scan_prefix(&prefix(MAIL, &self.mailbox.hide(recipient)), |_, value| {
            let Some((at, id, envelope)) = parse_mail(value) else {
                return ControlFlow::Continue(());
            };
            if out.len() >= limit || (!out.is_empty() && size + envelope.len() > max_bytes) {
                return ControlFlow::Break(());
            }
            seen += 1;
            if at >= expired_before {
                size += envelope.len();
                out.push(Mail { id, bytes: envelope.to_vec() });
            }
            ControlFlow::Continue(())
        })?;
        let remaining = self.usage(recipient).messages.saturating_sub(seen);
        Ok((out, remaining))
    }

    /// Deletes these envelopes of `recipient`; returns how many it held.
    pub(crate) fn remove(
        &mut self,
        recipient: &UserId,
        ids: &[MessageId],
    ) -> Result<u32, RelayStoreError> {
        let hidden = self.mailbox.hide(recipient);
        self.remove_hidden(&hidden, ids)
    }

    /// [`Self::remove`], for the recipient's pseudonym (as keys hold it).
    fn remove_hidden(
        &mut self,
        recipient: &UserId,
        ids: &[MessageId],
    ) -> Result<u32, RelayStoreError> {
        let mut batch = WriteBatch::default();
        let mut removed = 0u32;
        let mut bytes = 0u64;
        for id in ids {
            let key = id_key(recipient, id);
            let Some(index) = self.mailbox.get(&key)? else { continue };
            let (Some(seq), Some(at)) = (be_u64(&index), index.get(8..).and_then(be_u64)) else {
                continue;
            };
            if let Some(mail) = self.mailbox.get(&mail_key(recipient, seq))? {
                bytes += mail.len().saturating_sub(MAIL_HEADER) as u64;
            }
            batch.remove(&self.mailbox, &mail_key(recipient, seq));
            batch.remove(&self.mailbox, &key);
            batch.remove(&self.mailbox, &expiry_key(at, recipient, seq));
            removed += 1;
        }
        if removed == 0 {
            return Ok(0);
        }
        self.mailbox.commit(batch);
        self.release(recipient, u64::from(removed), bytes);
        Ok(removed)
    }

    fn release(&mut self, recipient: &UserId, messages: u64, bytes: u64) {
        if let Some(u) = self.usage.get_mut(recipient) {
            u.messages = u.messages.saturating_sub(messages);
            u.bytes = u.bytes.saturating_sub(bytes);
            if u.messages == 0 {
                self.usage.remove(recipient);
            }
        }
        self.total.messages = self.total.messages.saturating_sub(messages);
        self.total.bytes = self.total.bytes.saturating_sub(bytes);
    }

    /// Deletes up to `max` envelopes deposited before `cutoff`; returns how many.
    pub(crate) fn purge_expired(
        &mut self,
        cutoff: UnixMillis,
        max: usize,
    ) -> Result<usize, RelayStoreError> {
        let mut candidates: Vec<(Vec<u8>, UserId, u64)> = Vec::new();
        let end = expiry_key(cutoff, &UserId([0; 32]), 0);
        self.mailbox.scan(&[EXPIRY], &end, |key, _| {
            let parsed = key
                .get(9..41)
                .and_then(|r| <[u8; 32]>::try_from(r).ok())
                .zip(key.get(41..49).and_then(be_u64));
            if let Some((recipient, seq)) = parsed {
                candidates.push((key.to_vec(), UserId(recipient), seq));
            }
            if candidates.len() >= max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        let mut expired: Vec<(UserId, MessageId)> = Vec::new();
        for (key, recipient, seq) in candidates {
            let id = self
                .mailbox
                .get(&mail_key(&recipient, seq))?
                .and_then(|v| parse_mail(&v).map(|(_, id, _)| id));
            match id {
                Some(id) => expired.push((recipient, id)),
                // A stale index entry: drop it alone.
                None => self.mailbox.remove(&key),
            }
        }
        let mut purged = 0;
        for (recipient, id) in expired {
            purged += self.remove_hidden(&recipient, &[id])? as usize;
        }
        Ok(purged)
    }

    /// Stores (or merges) a user's prekeys: the newer signed prekey wins, one-time prekeys
    /// accumulate up to [`MAX_RELAY_ONE_TIME_PREKEYS`], oldest dropped first. Returns how many
    /// one-time prekeys the relay now holds for the user.
    pub(crate) fn put_prekeys(&mut self, upload: PreKeyUpload) -> Result<u32, RelayStoreError> {
        let key = self.prekeys.hide(&upload.identity.user).0;
        let merged = match self.stored_prekeys(&upload.identity.user)? {
            Some(mut stored) => {
                if upload.signed_prekey.created_at >= stored.signed_prekey.created_at {
                    stored.signed_prekey = upload.signed_prekey;
                    stored.identity = upload.identity;
                }
                if upload.kem_last_resort.created_at >= stored.kem_last_resort.created_at {
                    stored.kem_last_resort = upload.kem_last_resort;
                }
                for key in upload.one_time_prekeys {
                    if !stored.one_time_prekeys.iter().any(|k| k.id == key.id) {
                        stored.one_time_prekeys.push(key);
                    }
                }
                for key in upload.kem_one_time_prekeys {
                    if !stored.kem_one_time_prekeys.iter().any(|k| k.id == key.id) {
                        stored.kem_one_time_prekeys.push(key);
                    }
                }
                stored
            }
            None => {
                self.prekey_users += 1;
                upload
            }
        };
        let merged = trim_prekeys(merged);
        let count = u32::try_from(merged.one_time_prekeys.len()).unwrap_or(u32::MAX);
        self.write_prekeys(&key, &merged)?;
        Ok(count)
    }

    /// `user`'s bundle with one one-time prekey and one one-time KEM prekey (the last-resort
    /// one when none is left); the one-time keys are deleted (each is handed out once).
    pub(crate) fn take_bundle(
        &mut self,
        user: &UserId,
    ) -> Result<Option<PreKeyBundle>, RelayStoreError> {
        let Some(mut stored) = self.stored_prekeys(user)? else { return Ok(None) };
        let one_time_prekey: Option<OneTimePreKeyPublic> =
            (!stored.one_time_prekeys.is_empty()).then(|| stored.one_time_prekeys.remove(0));
        let kem_one_time = (!stored.kem_one_time_prekeys.is_empty())
            .then(|| stored.kem_one_time_prekeys.remove(0));
        if one_time_prekey.is_some() || kem_one_time.is_some() {
            self.write_prekeys(&self.prekeys.hide(user).0, &stored)?;
        }
        Ok(Some(PreKeyBundle {
            identity: stored.identity,
            signed_prekey: stored.signed_prekey,
            one_time_prekey,
            kem_prekey: kem_one_time.unwrap_or(stored.kem_last_resort),
        }))
    }

    pub(crate) fn stored_prekeys(
        &self,
        user: &UserId,
    ) -> Result<Option<PreKeyUpload>, RelayStoreError> {
        // A record that no longer decodes is treated as absent (and replaced on upload).
        // Stored as the upload frame itself, so that decoding re-checks its limits.
        let decoded = self
            .prekeys
            .get(&self.prekeys.hide(user).0)?
            .and_then(|v| kith_protocol::decode(&v).ok());
        Ok(match decoded {
            Some(PreKeyRequest::Upload(upload)) => Some(*upload),
            _ => None,
        })
    }

    fn write_prekeys(&mut self, key: &[u8], upload: &PreKeyUpload) -> Result<(), RelayStoreError> {
        let bytes = kith_protocol::encode(&PreKeyRequest::Upload(Box::new(upload.clone())))
            .map_err(RelayStoreError::Encode)?;
        self.prekeys.insert(key, bytes);
        Ok(())
    }

    /// Another namespace of the relay's side tree (the blob index).
    pub(crate) fn keyspace(&self, ns: u8) -> Keyspace {
        Keyspace::new(self.side.clone(), SideTree::Relay, ns)
    }

    /// Makes everything written so far durable (the profile's whole database: one flush).
    #[cfg(test)]
    pub(crate) fn flush(&mut self) -> Result<(), RelayStoreError> {
        Ok(self.side.flush()?)
    }
}

/// Reads a stored list of verifiers (32 bytes each; a torn tail is ignored).
fn parse_verifiers(value: &[u8]) -> HashSet<AccessVerifier> {
    value
        .chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .map(AccessVerifier)
        .collect()
}

fn trim_prekeys(mut upload: PreKeyUpload) -> PreKeyUpload {
    let excess = upload.one_time_prekeys.len().saturating_sub(MAX_RELAY_ONE_TIME_PREKEYS);
    upload.one_time_prekeys.drain(..excess);
    let excess = upload.kem_one_time_prekeys.len().saturating_sub(MAX_RELAY_KEM_ONE_TIME_PREKEYS);
    upload.kem_one_time_prekeys.drain(..excess);
    upload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RelayStore {
        RelayStore::open(kith_core::store::Store::memory().side()).unwrap()
    }

    const BOB: UserId = UserId([2; 32]);
    const CAROL: UserId = UserId([3; 32]);

    #[test]
    fn mail_reads_back_in_order_and_acks_delete_it() {
        let mut s = store();
        for i in 0..5u8 {
            assert_eq!(
                s.deposit(&BOB, &MessageId([i; 16]), &[i; 10], 100).unwrap(),
                Deposit::Stored
            );
        }
        s.deposit(&CAROL, &MessageId([9; 16]), &[9; 3], 100).unwrap();
        assert_eq!(
            s.deposit(&BOB, &MessageId([1; 16]), &[1; 10], 200).unwrap(),
            Deposit::AlreadyHeld
        );
        assert_eq!(s.usage(&BOB), Usage { messages: 5, bytes: 50 });
        assert_eq!(s.total(), Usage { messages: 6, bytes: 53 });

        let (mail, remaining) = s.fetch(&BOB, 3, usize::MAX, 0).unwrap();
        assert_eq!(mail.iter().map(|m| m.id.0[0]).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(remaining, 2);
        // The byte cap cuts the batch, but never below one envelope.
        assert_eq!(s.fetch(&BOB, 10, 25, 0).unwrap().0.len(), 2);
        assert_eq!(s.fetch(&BOB, 10, 1, 0).unwrap().0.len(), 1);

        // Acks for another mailbox's ids remove nothing.
        assert_eq!(s.remove(&CAROL, &[MessageId([0; 16])]).unwrap(), 0);
        assert_eq!(s.remove(&BOB, &[MessageId([0; 16]), MessageId([1; 16])]).unwrap(), 2);
        let (mail, remaining) = s.fetch(&BOB, 10, usize::MAX, 0).unwrap();
        assert_eq!(mail.iter().map(|m| m.id.0[0]).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(remaining, 0);
        assert_eq!(s.usage(&BOB), Usage { messages: 3, bytes: 30 });
    }

    #[test]
    fn usage_survives_reopen_and_expired_mail_is_purged_not_served() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = kith_core::store::Store::open(dir.path()).unwrap();
            let mut s = RelayStore::open(db.side()).unwrap();
            s.deposit(&BOB, &MessageId([1; 16]), &[1; 10], 1_000).unwrap();
            s.deposit(&BOB, &MessageId([2; 16]), &[2; 20], 5_000).unwrap();
            s.flush().unwrap();
        }
        let db = crate::clock::wait_for_lock(|| kith_core::store::Store::open(dir.path())).unwrap();
        let mut s = RelayStore::open(db.side()).unwrap();
        assert_eq!(s.usage(&BOB), Usage { messages: 2, bytes: 30 });
        // Expired mail is not served even before it is purged.
        let (mail, _) = s.fetch(&BOB, 10, usize::MAX, 2_000).unwrap();
        assert_eq!(mail.iter().map(|m| m.id.0[0]).collect::<Vec<_>>(), [2]);
        assert_eq!(s.purge_expired(2_000, 100).unwrap(), 1);
        assert_eq!(s.usage(&BOB), Usage { messages: 1, bytes: 20 });
        assert!(!s.holds(&BOB, &MessageId([1; 16])).unwrap());
        assert_eq!(s.purge_expired(2_000, 100).unwrap(), 0);
    }
}
