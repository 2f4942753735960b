//! The store of skipped message keys: keys of messages that have not arrived yet, kept so that
//! they still decrypt when they arrive late. Bounded in count ([`MAX_SKIPPED_KEYS`], oldest
//! evicted first) and in age ([`MAX_SKIPPED_KEY_AGE_MS`]); each key is used once.

use std::collections::{HashMap, VecDeque};

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
    keys: VecDeque<SkippedKey>,
    /// How many keys each chain has in `keys`.
    per_chain: HashMap<DhPublicKey, usize>,
}

impl SkippedKeys {
    /// The store holding `keys` (oldest first).
    pub(crate) fn from_keys(keys: impl IntoIterator<Item = SkippedKey>) -> Self {
        let mut store = Self::default();
        for key in keys {
            store.push(key);
        }
        store
    }

    /// The keys, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SkippedKey> {
        self.keys.iter()
    }

    fn push(&mut self, key: SkippedKey) {
        *self.per_chain.entry(key.ratchet_key).or_default() += 1;
        self.keys.push_back(key);
    }

    fn counted_out(&mut self, key: &SkippedKey) {
        if let Some(count) = self.per_chain.get_mut(&key.ratchet_key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_chain.remove(&key.ratchet_key);
            }
        }
    }

    fn pop_front(&mut self) {
        if let Some(key) = self.keys.pop_front() {
            self.counted_out(&key);
        }
    }

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

    /// Whether any key of the chain of `ratchet_key` is held.
    pub(crate) fn holds(&self, ratchet_key: &DhPublicKey) -> bool {
        self.per_chain.contains_key(ratchet_key)
    }

    /// Deletes every key of the chain of `ratchet_key`.
    pub(crate) fn forget(&mut self, ratchet_key: &DhPublicKey) {
        if self.per_chain.remove(ratchet_key).is_some() {
            self.keys.retain(|k| &k.ratchet_key != ratchet_key);
        }
    }

    pub(crate) fn remove(&mut self, position: usize) {
        if let Some(key) = self.keys.remove(position) {
            self.counted_out(&key);
        }
    }

    /// Adds keys, evicting the oldest beyond the cap.
    pub(crate) fn extend(
        &mut self,
        ratchet_key: DhPublicKey,
        keys: impl IntoIterator<Item = (u32, MessageKey)>,
        now: UnixMillis,
    ) {
        for (index, key) in keys {
            self.push(SkippedKey { ratchet_key, index, key, stored_at: now });
        }
        while self.keys.len() > MAX_SKIPPED_KEYS {
            self.pop_front();
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
            self.pop_front();
        }
    }
}
