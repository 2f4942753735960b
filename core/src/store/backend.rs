//! The storage backend seam: an ordered key-value store with named trees, atomic multi-tree
//! batches and an explicit flush. Kith ships a sled backend ([`SledBackend`]) and an in-memory
//! one ([`MemoryBackend`]); an app can plug in its own by implementing [`Backend`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// The trees of a Kith database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// The local identity and counters.
    Meta,
    /// Signed and one-time prekeys (with secrets).
    PreKeys,
    /// Ratchet sessions, one record per peer.
    Sessions,
    /// Contacts and their pinned identity keys.
    Contacts,
    /// Messages by id.
    Messages,
    /// Conversation index: peer ‖ sequence number → message id.
    Conversations,
    /// Messages not yet acknowledged by their recipient.
    Outbox,
    /// Received envelope ids (sender ‖ id), for deduplication.
    Seen,
    /// Time index of `Seen` (time ‖ sender ‖ id), for pruning.
    SeenByTime,
}

impl Tree {
    /// Every tree.
    pub const ALL: [Tree; 9] = [
        Tree::Meta,
        Tree::PreKeys,
        Tree::Sessions,
        Tree::Contacts,
        Tree::Messages,
        Tree::Conversations,
        Tree::Outbox,
        Tree::Seen,
        Tree::SeenByTime,
    ];

    /// The tree's name in the database.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::PreKeys => "prekeys",
            Tree::Sessions => "sessions",
            Tree::Contacts => "contacts",
            Tree::Messages => "messages",
            Tree::Conversations => "conversations",
            Tree::Outbox => "outbox",
            Tree::Seen => "seen",
            Tree::SeenByTime => "seen_by_time",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A storage failure. The message never contains stored values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (IO error, corruption).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// A stored record could not be decoded.
    #[error("corrupt {record} record")]
    Corrupt {
        /// Record type.
        record: &'static str,
    },
    /// A record could not be encoded.
    #[error("could not encode {record} record")]
    Encode {
        /// Record type.
        record: &'static str,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// One write of a batch: a value to put, or `None` to delete.
pub type RawWrite = (Tree, Vec<u8>, Option<Vec<u8>>);

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

type MemoryTrees = BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// An ordered key-value store with named trees.
pub trait Backend: Send {
    /// The value at `key`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with keys in `[start, end)`, ascending or (`reverse`) descending.
    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Applies all `writes` atomically, in order (a later write to a key wins): after a crash
    /// either all or none are visible.
    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError>;

    /// Makes every applied batch durable (survives power loss / `kill -9`).
    fn flush(&self) -> Result<(), StoreError>;

    /// Every entry of every tree, for tests and diagnostics.
    fn dump(&self) -> Result<Vec<RawWrite>, StoreError>;
}

/// The end of the key range of all keys starting with `prefix` (exclusive), or empty for
/// "no upper bound" when the prefix is all 0xff.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    end
}

/// An in-memory backend (for tests and for apps that keep nothing on disk).
#[derive(Default)]
pub struct MemoryBackend {
    trees: Mutex<MemoryTrees>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, MemoryTrees>, StoreError> {
        self.trees.lock().map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl Backend for MemoryBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.get(&(tree, key.to_vec())).cloned())
    }

    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let trees = self.lock()?;
        // Without an end, the range stops where the next tree begins (trees sort in order).
        let upper = match (end.is_empty(), Tree::ALL.get(tree.index() + 1)) {
            (false, _) => Excluded((tree, end.to_vec())),
            (true, Some(next)) => Excluded((*next, Vec::new())),
            (true, None) => Unbounded,
        };
        let range = trees
            .range((Included((tree, start.to_vec())), upper))
            .map(|((_, k), v)| (k.clone(), v.clone()));
        Ok(if reverse { range.rev().take(limit).collect() } else { range.take(limit).collect() })
    }

    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        let mut trees = self.lock()?;
        for (tree, key, value) in writes {
            match value {
                Some(value) => trees.insert((*tree, key.clone()), value.clone()),
                None => trees.remove(&(*tree, key.clone())),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        Ok(self.lock()?.iter().map(|((t, k), v)| (*t, k.clone(), Some(v.clone()))).collect())
    }
}

/// The sled backend: one sled database per profile, one sled tree per [`Tree`]. Batches that
/// touch one tree use sled's atomic `apply_batch`; batches across trees run as one sled
/// transaction. sled writes its log in the background; [`Backend::flush`] fsyncs it.
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

/// sled's page cache size: enough for a busy profile, far below sled's 1 GiB default.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledBackend {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).cache_capacity(SLED_CACHE_BYTES).open()?;
        let trees = Tree::ALL.iter().map(|t| db.open_tree(t.name())).collect::<Result<_, _>>()?;
        Ok(Self { db, trees })
    }

    fn tree(&self, tree: Tree) -> Result<&sled::Tree, StoreError> {
        self.trees
            .get(tree.index())
            .ok_or_else(|| StoreError::Backend(format!("tree {} missing", tree.name())))
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

impl fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let tree = self.tree(tree)?;
        let iter = if end.is_empty() { tree.range(start..) } else { tree.range(start..end) };
        let to_owned = |r: sled::Result<(sled::IVec, sled::IVec)>| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)
        };
        if reverse {
            iter.rev().take(limit).map(to_owned).collect()
        } else {
            iter.take(limit).map(to_owned).collect()
        }
    }

    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        let mut touched: Vec<Tree> = writes.iter().map(|(t, _, _)| *t).collect();
        touched.sort();
        touched.dedup();
        match touched.as_slice() {
            [] => Ok(()),
            [only] => {
                let mut batch = sled::Batch::default();
                for (_, key, value) in writes {
                    match value {
                        Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                        None => batch.remove(key.as_slice()),
                    }
                }
                Ok(self.tree(*only)?.apply_batch(batch)?)
            }
            many => {
                use sled::Transactional;
                let trees = many.iter().map(|t| self.tree(*t)).collect::<Result<Vec<_>, _>>()?;
                trees
                    .as_slice()
                    .transaction(|txs| {
                        for (tree, key, value) in writes {
                            let slot = many.iter().position(|t| t == tree).and_then(|i| txs.get(i));
                            let Some(tx) = slot else { continue };
                            match value {
                                Some(value) => tx.insert(key.as_slice(), value.as_slice())?,
                                None => tx.remove(key.as_slice())?,
                            };
                        }
                        Ok(())
                    })
                    .map_err(|e: sled::transaction::TransactionError<()>| {
                        StoreError::Backend(format!("transaction failed: {e:?}"))
                    })
            }
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        let mut out = Vec::new();
        for tree in Tree::ALL {
            for entry in self.tree(tree)?.iter() {
                let (k, v) = entry?;
                out.push((tree, k.to_vec(), Some(v.to_vec())));
            }
        }
        Ok(out)
    }
}
