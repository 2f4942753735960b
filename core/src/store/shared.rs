//! The write-back layer every handle on one database shares: the engine's [`super::Store`] and
//! the [`SideStore`]s of the node that embeds it (its relay service and attachment records),
//! so that one flush makes a whole turn durable, whoever wrote it.
//!
//! Commits land in memory at once (every handle's reads see them) and reach the backend only at
//! a flush: one atomic batch of everything pending, then one durable sync. A flush that fails
//! keeps every write pending, so the next one applies it again (a backend that failed may have
//! lost what it applied but did not make durable). Flushes run one at a time; a commit made
//! while one is in flight stays pending for the next.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use zeroize::Zeroize;

use super::backend::{Backend, Entry, RawWrite, StoreError, Tree};
use super::sealed::{DatabaseKey, Pseudonyms};

/// A pending write: the commit generation that made it, and the value (`None`: deleted).
type PendingValue = (u64, Option<Vec<u8>>);

/// Writes committed but not yet durable, per tree: the newest value of each key.
#[derive(Default)]
struct Pending {
    trees: BTreeMap<Tree, BTreeMap<Vec<u8>, PendingValue>>,
    /// The generation of the next commit.
    next: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.trees.values().all(BTreeMap::is_empty)
    }
}

pub(super) struct Shared {
    backend: Box<dyn Backend>,
    /// How ids appear in keys (hidden in an encrypted store).
    pseudonyms: Pseudonyms,
    /// The key an encrypted store is sealed under (a backup carries it).
    key: Option<DatabaseKey>,
    pending: Mutex<Pending>,
    /// Held for the whole of a flush (apply, then sync), so that no flush can report writes
    /// durable that another's failure had the backend drop.
    flushing: Mutex<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (_, value) in pending.trees.values_mut().flat_map(BTreeMap::values_mut) {
            if let Some(value) = value {
                value.zeroize();
            }
        }
    }
}

impl Shared {
    pub(super) fn new(
        backend: Box<dyn Backend>,
        pseudonyms: Pseudonyms,
        key: Option<DatabaseKey>,
    ) -> Arc<Self> {
        Arc::new(Self {
            backend,
            pseudonyms,
            key,
            pending: Mutex::new(Pending::default()),
            flushing: Mutex::new(()),
        })
    }

    /// How ids appear in keys.
    pub(super) fn pseudonyms(&self) -> &Pseudonyms {
        &self.pseudonyms
    }

    /// The key an encrypted store is sealed under.
    pub(super) fn database_key(&self) -> Option<&DatabaseKey> {
        self.key.as_ref()
    }

    /// The backend, bypassing pending writes (opening checks only).
    pub(super) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // The map is whole after any panic (an insert either happened or not).
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `writes` in memory, all at once (no flush sees part of them).
    pub(super) fn commit(&self, writes: Vec<RawWrite>) {
        let mut pending = self.pending();
        let generation = pending.next;
        pending.next += 1;
        for (tree, key, value) in writes {
            let slot = pending.trees.entry(tree).or_default();
            if let Some((_, Some(mut old))) = slot.insert(key, (generation, value)) {
                old.zeroize();
            }
        }
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending().is_empty()
    }

    /// Makes every commit made before the call durable.
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        let _flushing = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut writes, upto) = {
            let pending = self.pending();
            let writes: Vec<RawWrite> = pending
                .trees
                .iter()
                .flat_map(|(tree, entries)| {
                    entries.iter().map(|(k, (_, v))| (*tree, k.clone(), v.clone()))
                })
                .collect();
            (writes, pending.next)
        };
        if writes.is_empty() {
            // Every write reached the backend in a flush that succeeded (a failed one keeps
            // its writes pending): nothing to make durable, no fsync to wait for.
            return Ok(());
        }
        let result = self.backend.apply(&writes).and_then(|()| self.backend.flush());
        for value in writes.iter_mut().filter_map(|(_, _, v)| v.as_mut()) {
            value.zeroize();
        }
        result?;
        // Durable now, unless committed again since: drop them from memory.
        let mut pending = self.pending();
        for entries in pending.trees.values_mut() {
            entries.retain(|_, (generation, value)| {
                let keep = *generation >= upto;
                if !keep && let Some(value) = value {
                    value.zeroize();
                }
                keep
            });
        }
        pending.trees.retain(|_, entries| !entries.is_empty());
        Ok(())
    }

    /// The value at `key`, pending writes first.
    pub(super) fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some((_, value)) = self.pending().trees.get(&tree).and_then(|e| e.get(key)) {
            return Ok(value.clone());
        }
        // Not pending now, so no flush in flight can hold it either: the backend has it.
        self.backend.get(tree, key)
    }

    /// Up to `limit` entries with keys in `[start, end)` (no end bound if `end` is empty),
    /// ascending or descending, pending writes merged over the backend's.
    pub(super) fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end) };
        // A copy: a flush in flight drops these from memory only once the backend has them.
        let overlay: Vec<(Vec<u8>, Option<Vec<u8>>)> = match self.pending().trees.get(&tree) {
            Some(entries) if end.is_empty() || start < end => entries
                .range::<[u8], _>((Bound::Included(start), upper))
                .map(|(k, (_, v))| (k.clone(), v.clone()))
                .collect(),
            _ => Vec::new(),
        };
        if overlay.is_empty() {
            return self.backend.range(tree, start, end, reverse, limit);
        }
        // Each pending delete hides at most one backend entry, so the first `limit +
        // overlay.len()` backend entries hold every backend entry of the merged first `limit`.
        let base =
            self.backend.range(tree, start, end, reverse, limit.saturating_add(overlay.len()))?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
        for (key, value) in overlay {
            match value {
                Some(value) => merged.insert(key, value),
                None => merged.remove(&key),
            };
        }
        Ok(if reverse {
            merged.into_iter().rev().take(limit).collect()
        } else {
            merged.into_iter().take(limit).collect()
        })
    }

    /// Every entry, pending writes merged, in tree and key order.
    #[cfg(any(test, feature = "test-utils"))]
    pub(super) fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        let mut all: BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>> =
            self.backend.dump()?.into_iter().map(|(t, k, v)| ((t, k), v)).collect();
        for (tree, entries) in &self.pending().trees {
            for (key, (_, value)) in entries {
                all.insert((*tree, key.clone()), value.clone());
            }
        }
        Ok(all.into_iter().filter_map(|((t, k), v)| v.map(|v| (t, k, Some(v)))).collect())
    }
}

/// The trees a [`SideStore`] may write: the embedding node's own records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SideTree {
    /// The relay service's mailboxes, prekeys and blob index.
    Relay,
    /// Attachment records.
    Media,
}

impl From<SideTree> for Tree {
    fn from(tree: SideTree) -> Self {
        match tree {
            SideTree::Relay => Tree::Relay,
            SideTree::Media => Tree::Media,
        }
    }
}

/// One write of a [`SideStore::commit`]: a value to put, or `None` to delete.
pub type SideWrite = (SideTree, Vec<u8>, Option<Vec<u8>>);

/// A handle on the embedding node's own trees ([`SideTree`]) in the engine's database, from
/// [`super::Store::side`]. Its commits are write-back like the engine's and become durable at
/// the next flush, by the engine or by any handle: one database, one commit per turn. Cheap to
/// clone and shareable between threads.
#[derive(Clone)]
pub struct SideStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for SideStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideStore").finish_non_exhaustive()
    }
}

impl SideStore {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The value at `key` (committed, durable or not).
    pub fn get(&self, tree: SideTree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.shared.get(tree.into(), key)
    }

    /// Up to `limit` entries with keys in `[start, end)` (no end bound if `end` is empty),
    /// ascending or (`reverse`) descending.
    pub fn range(
        &self,
        tree: SideTree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.shared.range(tree.into(), start, end, reverse, limit)
    }

    /// Up to `limit` entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        tree: SideTree,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let end = super::backend::prefix_end(prefix);
        self.shared.range(tree.into(), prefix, &end, false, limit)
    }

    /// Applies `writes` at once (every read sees them; no flush sees part of them); they are
    /// durable after the next flush.
    pub fn commit(&self, writes: Vec<SideWrite>) {
        self.shared.commit(writes.into_iter().map(|(t, k, v)| (t.into(), k, v)).collect());
    }

    /// Makes every commit so far durable, the engine's included (one database, one sync). On
    /// failure nothing is lost: the writes stay pending for the next flush.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared.flush()
    }

    /// Whether commits are waiting for a flush.
    pub fn has_pending(&self) -> bool {
        self.shared.has_pending()
    }

    /// The pseudonym under which an id (a peer's, a group's) appears in this database's keys:
    /// a keyed hash in an encrypted store, the id itself otherwise. Keys the node builds from
    /// ids use it, so that no key names whom someone talks to.
    pub fn pseudonym(&self, id: &[u8; 32]) -> [u8; 32] {
        self.shared.pseudonyms().hide(id)
    }

    /// Keeps the ids behind their pseudonyms (sealed, in the `names` tree) for
    /// [`SideStore::reveal`]; commits with the next flush, like any write.
    pub fn remember(&self, ids: &[[u8; 32]]) {
        let pseudonyms = self.shared.pseudonyms();
        if pseudonyms.hides() && !ids.is_empty() {
            self.shared.commit(
                ids.iter()
                    .map(|id| (Tree::Names, pseudonyms.hide(id).to_vec(), Some(id.to_vec())))
                    .collect(),
            );
        }
    }

    /// The id behind a pseudonym read back from a key, if it was [remembered](Self::remember)
    /// (in a store without encryption, the pseudonym is the id).
    pub fn reveal(&self, pseudonym: &[u8; 32]) -> Result<Option<[u8; 32]>, StoreError> {
        if !self.shared.pseudonyms().hides() {
            return Ok(Some(*pseudonym));
        }
        Ok(self
            .shared
            .get(Tree::Names, pseudonym)?
            .and_then(|id| <[u8; 32]>::try_from(id.as_slice()).ok()))
    }
}
