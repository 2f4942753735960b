//! The in-memory view of the outbox: every stored outbox record plus its retry schedule.
//!
//! The records are the durable truth (written before any IO); the schedule (attempt counts,
//! next attempt times) lives only in memory and restarts from "due now" after a restart, so a
//! delivery attempt costs no disk write.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kith_protocol::{MessageId, UnixMillis, UserId};

use crate::store::records::OutboxRecord;

/// First retry delay after a failed or unanswered attempt.
pub const RETRY_INITIAL_MS: u64 = 1_000;

/// Longest retry delay (backoff doubles up to this).
pub const RETRY_MAX_MS: u64 = 5 * 60 * 1_000;

/// How long an attempt may stay unanswered before it counts as failed.
pub const ATTEMPT_TIMEOUT_MS: u64 = 30_000;

/// A message still undelivered this long after it was queued fails with `Expired`.
pub const OUTBOX_DEADLINE_MS: u64 = 30 * 24 * 60 * 60 * 1_000;

/// Most messages waiting in the outbox; beyond it new sends are refused.
pub const MAX_OUTBOX: usize = 100_000;

/// Most messages per peer encrypted but not yet acknowledged. Messages are encrypted only when
/// they enter this window, so a receiver never sees a message more than this many keys ahead
/// of the oldest one it has not received: well inside `MAX_SKIP`, also across a ratchet step.
pub const SEND_WINDOW: usize = 1_000;

pub(crate) struct Entry {
    pub(crate) record: OutboxRecord,
    pub(crate) attempts: u32,
    /// How often the session was reset for this entry (a refused entry is re-encrypted once).
    pub(crate) resets: u32,
    /// When the next attempt is due, if scheduled (entries waiting for a session are not).
    pub(crate) due: Option<UnixMillis>,
}

/// One recipient's entries.
#[derive(Default)]
struct PeerQueue {
    /// All entries in queue order (seq → id).
    all: BTreeMap<u64, MessageId>,
    /// Entries not yet encrypted, in queue order.
    unsealed: BTreeMap<u64, MessageId>,
}

#[derive(Default)]
pub(crate) struct Outbox {
    entries: HashMap<MessageId, Entry>,
    /// (due, seq, id): the retry schedule.
    schedule: BTreeSet<(UnixMillis, u64, MessageId)>,
    by_peer: HashMap<UserId, PeerQueue>,
}

impl Outbox {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, id: &MessageId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Adds (or replaces) an entry; it is due at `due` if given.
    pub(crate) fn insert(&mut self, record: OutboxRecord, due: Option<UnixMillis>) {
        let id = record.id;
        self.remove(&id);
        let queue = self.by_peer.entry(record.to).or_default();
        queue.all.insert(record.seq, id);
        if record.envelope.is_none() {
            queue.unsealed.insert(record.seq, id);
        }
        if let Some(at) = due {
            self.schedule.insert((at, record.seq, id));
        }
        self.entries.insert(id, Entry { record, attempts: 0, resets: 0, due });
    }

    pub(crate) fn remove(&mut self, id: &MessageId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(at) = entry.due {
            self.schedule.remove(&(at, entry.record.seq, *id));
        }
        if let Some(queue) = self.by_peer.get_mut(&entry.record.to) {
            queue.all.remove(&entry.record.seq);
            queue.unsealed.remove(&entry.record.seq);
            if queue.all.is_empty() {
                self.by_peer.remove(&entry.record.to);
            }
        }
        Some(entry)
    }

    /// Reschedules an entry at `at` (or unschedules it), counting an attempt if `attempted`.
    pub(crate) fn reschedule(&mut self, id: &MessageId, at: Option<UnixMillis>, attempted: bool) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        if let Some(old) = entry.due.take() {
            self.schedule.remove(&(old, entry.record.seq, *id));
        }
        if attempted {
            entry.attempts = entry.attempts.saturating_add(1);
        }
        if let Some(at) = at {
            self.schedule.insert((at, entry.record.seq, *id));
        }
        entry.due = at;
    }

    pub(crate) fn count_reset(&mut self, id: &MessageId) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.resets = entry.resets.saturating_add(1);
        }
    }

    /// Replaces an entry's record (e.g. once encrypted), keeping its schedule.
    pub(crate) fn update_record(&mut self, record: OutboxRecord) {
        let Some(entry) = self.entries.get_mut(&record.id) else { return };
        if let Some(queue) = self.by_peer.get_mut(&record.to) {
            if record.envelope.is_none() {
                queue.unsealed.insert(record.seq, record.id);
            } else {
                queue.unsealed.remove(&record.seq);
            }
        }
        entry.record = record;
    }

    /// Entries for `peer` that are encrypted and not yet acknowledged.
    pub(crate) fn sealed_count(&self, peer: &UserId) -> usize {
        self.by_peer.get(peer).map_or(0, |q| q.all.len() - q.unsealed.len())
    }

    /// Up to `limit` entries for `peer` waiting to be encrypted, in queue order.
    pub(crate) fn unsealed(&self, peer: &UserId, limit: usize) -> Vec<MessageId> {
        self.by_peer
            .get(peer)
            .map(|q| q.unsealed.values().take(limit).copied().collect())
            .unwrap_or_default()
    }

    /// Recipients with entries waiting to be encrypted.
    pub(crate) fn peers_with_unsealed(&self) -> Vec<UserId> {
        self.by_peer.iter().filter(|(_, q)| !q.unsealed.is_empty()).map(|(u, _)| *u).collect()
    }

    /// The earliest scheduled attempt.
    pub(crate) fn next_due(&self) -> Option<UnixMillis> {
        self.schedule.first().map(|(at, _, _)| *at)
    }

    /// Ids due at or before `now`, in (due, queue) order.
    pub(crate) fn due(&self, now: UnixMillis) -> Vec<MessageId> {
        self.schedule.iter().take_while(|(at, _, _)| *at <= now).map(|(_, _, id)| *id).collect()
    }

    /// The ids queued for `peer`, in queue order.
    pub(crate) fn for_peer(&self, peer: &UserId) -> Vec<MessageId> {
        self.by_peer.get(peer).map(|q| q.all.values().copied().collect()).unwrap_or_default()
    }

    /// How many entries wait for `peer`.
    pub(crate) fn count_for_peer(&self, peer: &UserId) -> usize {
        self.by_peer.get(peer).map_or(0, |q| q.all.len())
    }

    /// Entries queued before `cutoff`.
    pub(crate) fn older_than(&self, cutoff: UnixMillis) -> Vec<MessageId> {
        self.entries
            .values()
            .filter(|e| e.record.created_at < cutoff)
            .map(|e| e.record.id)
            .collect()
    }
}

/// The delay before attempt number `attempts + 1`: exponential from [`RETRY_INITIAL_MS`] up to
/// [`RETRY_MAX_MS`], with ±25 % jitter from `jitter` (a random u32) so that many queued
/// messages do not retry in lockstep.
pub(crate) fn backoff(attempts: u32, jitter: u32) -> u64 {
    let base = RETRY_INITIAL_MS.saturating_mul(1u64 << attempts.min(20)).min(RETRY_MAX_MS);
    let spread = base / 2;
    base - base / 4 + if spread == 0 { 0 } else { u64::from(jitter) % spread }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!((750..1250).contains(&backoff(0, 0)));
        assert!((750..1250).contains(&backoff(0, u32::MAX)));
        assert!(backoff(3, 0) >= 6_000);
        assert!(backoff(60, u32::MAX) <= RETRY_MAX_MS * 5 / 4);
    }
}
