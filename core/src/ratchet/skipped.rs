//! The store of skipped message keys: keys of messages that have not arrived yet, kept so that
//! they still decrypt when they arrive late. Bounded in count ([`MAX_SKIPPED_KEYS`], oldest
//! evicted first) and in age ([`MAX_SKIPPED_KEY_AGE_MS`]); each key is used once.

use std::collections::VecDeque;

use kith_protocol::{DhPublicKey, UnixMillis};

use super::keys::MessageKey;

/// Most skipped keys a session holds, over all of its receiving chains (libsignal: 2,000).
pub const MAX_SKIPPED_KEYS: usize = 2000;

/// A skipped key older than this is deleted: a message that late has been lost for good, and
/// keeping its key would only help an attacker who later steals the session state. It exceeds
/// the relays' default 14-day TTL with room for retries.
pub const MAX_SKIPPED_KEY_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SkippedKey {
    pub(crate) ratchet_key: DhPublicKey,
    pub(crate) index: u32,
    pub(crate) key: MessageKey,
    pub(crate) stored_at: UnixMillis,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SkippedKeys {
    /// Oldest first.
    pub(crate) keys: VecDeque<SkippedKey>,
}

impl SkippedKeys {
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Position of the key for (`ratchet_key`, `index`), newest first (late messages are
    /// usually recent).
    pub(crate) fn find(&self, ratchet_key: &DhPublicKey, index: u32) -> Option<usize> {
        self.keys.iter().rposition(|k| k.index == index && &k.ratchet_key == ratchet_key)
    }

    pub(crate) fn get(&self, position: usize) -> Option<&MessageKey> {
        self.keys.get(position).map(|k| &k.key)
    }

    pub(crate) fn remove(&mut self, position: usize) {
        self.keys.remove(position);
    }

    /// Adds keys, evicting the oldest beyond the cap.
    pub(crate) fn extend(
        &mut self,
        ratchet_key: DhPublicKey,
        keys: impl IntoIterator<Item = (u32, MessageKey)>,
        now: UnixMillis,
    ) {
        for (index, key) in keys {
            self.keys.push_back(SkippedKey { ratchet_key, index, key, stored_at: now });
        }
        while self.keys.len() > MAX_SKIPPED_KEYS {
            self.keys.pop_front();
        }
    }

    /// Deletes keys older than [`MAX_SKIPPED_KEY_AGE_MS`]. Keys are stored oldest first, so
    /// this only looks at the keys it deletes (plus one).
    pub(crate) fn expire(&mut self, now: UnixMillis) {
        while self
            .keys
            .front()
            .is_some_and(|k| now.saturating_sub(k.stored_at) > MAX_SKIPPED_KEY_AGE_MS)
        {
            self.keys.pop_front();
        }
    }
}
