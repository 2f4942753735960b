//! The storage backend seam: an ordered key-value store with named trees, atomic multi-tree
//! batches and an explicit flush. Kith ships an in-memory backend ([`MemoryBackend`]) and,
//! with the default `sled` feature, a sled one; an app can plug in its own by implementing
//! [`Backend`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// Messages by peer ‖ sequence number (each conversation is one key range).
    Messages,
    /// Message index: id → peer ‖ sequence number.
    MessageIds,
    /// Messages not yet acknowledged by their recipient.
    Outbox,
    /// Received envelope ids (sender ‖ id), for deduplication.
    Seen,
    /// Time index of `Seen` (time ‖ sender ‖ id), for pruning.
    SeenByTime,
    /// Groups: one small record per group (when and how we learned of it).
    Groups,
    /// Sender keys: group ‖ member → that member's chains (ours included).
    SenderKeys,
    /// Group messages waiting for their sender's key: group ‖ sender ‖ chain ‖ id.
    GroupPending,
    /// Group changes, one record each: group ‖ position (parents before children).
    GroupChanges,
    /// Group changes waiting for their parents: group ‖ change hash.
    GroupOrphans,
    /// Members' sender keys that came before their membership: group ‖ sender.
    GroupKeysWaiting,
    /// The embedding node's relay service (mailboxes, prekeys, blob index), written through a
    /// [`super::SideStore`]; the engine never reads it.
    Relay,
    /// The embedding node's attachment records, written through a [`super::SideStore`]; the
    /// engine never reads it.
    Media,
    /// Group invitations waiting for the user's answer: group → who added us.
    GroupInvitations,
    /// In an encrypted store, the ids behind the pseudonyms in keys that the store must turn
    /// back into ids: pseudonym → id (sealed like every value).
    Names,
    /// Conversations' disappearing-message timers: user or group → timer.
    Timers,
    /// Messages that disappear: message id → their timer and, once it started, when.
    Expiring,
}

impl Tree {
    /// Every tree.
    pub const ALL: [Tree; 21] = [
        Tree::Meta,
        Tree::PreKeys,
        Tree::Sessions,
        Tree::Contacts,
        Tree::Messages,
        Tree::MessageIds,
        Tree::Outbox,
        Tree::Seen,
        Tree::SeenByTime,
        Tree::Groups,
        Tree::SenderKeys,
        Tree::GroupPending,
        Tree::GroupChanges,
        Tree::GroupOrphans,
        Tree::GroupKeysWaiting,
        Tree::Relay,
        Tree::Media,
        Tree::GroupInvitations,
        Tree::Names,
        Tree::Timers,
        Tree::Expiring,
    ];

    /// The tree's name in the database.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::PreKeys => "prekeys",
            Tree::Sessions => "sessions",
            Tree::Contacts => "contacts",
            Tree::Messages => "messages",
            Tree::MessageIds => "message_ids",
            Tree::Outbox => "outbox",
            Tree::Seen => "seen",
            Tree::SeenByTime => "seen_by_time",
            Tree::Groups => "groups",
            Tree::SenderKeys => "sender_keys",
            Tree::GroupPending => "group_pending",
            Tree::GroupChanges => "group_changes",
            Tree::GroupOrphans => "group_orphans",
            Tree::GroupKeysWaiting => "group_keys_waiting",
            Tree::Relay => "relay",
            Tree::Media => "media",
            Tree::GroupInvitations => "group_invitations",
            Tree::Names => "names",
            Tree::Timers => "timers",
            Tree::Expiring => "expiring",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The byte that prefixes this tree's keys in a single-keyspace backend.
    pub fn prefix(self) -> u8 {
        self as u8
    }
}

/// A storage failure. The message never contains stored values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (IO error, corruption).
    #[error("storage backend error")]
    Backend(#[source] BackendError),
    /// Another process holds the database (or one just closed is still releasing it).
    #[error("the database is locked by another process")]
    Locked,
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
    /// A stored value failed authentication: the database key is not this database's, or
    /// the value was altered or moved to another key.
    #[error("a value of the {tree} tree failed authentication (wrong key, or altered)")]
    Unauthentic {
        /// The tree it was read from.
        tree: &'static str,
    },
    /// The database is encrypted and was opened without its key.
    #[error("the database is encrypted: it opens only with its key")]
    Encrypted,
    /// The database was written by a build of Kith with another storage layout (0: an early
    /// development build that recorded none).
    #[error("the database has storage layout {found}, this build of Kith reads layout {supported}")]
    UnsupportedLayout {
        /// The layout found in the database.
        found: u32,
        /// The layout this build reads and writes.
        supported: u32,
    },
}

/// A backend's own error, kept as the source of [`StoreError::Backend`]. Cheap to clone;
/// two are equal only if they are the same error.
#[derive(Clone)]
pub struct BackendError(Arc<dyn std::error::Error + Send + Sync>);

impl BackendError {
    /// Wraps a backend's error.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The IO error behind it, if it is one (to tell a full disk from corruption).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.0.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
    }
}

impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for BackendError {}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// The in-memory backend's lock was poisoned by a panic while it was held.
#[derive(Debug, thiserror::Error)]
#[error("memory store lock poisoned")]
struct Poisoned;

/// One write of a batch: a value to put, or `None` to delete.
pub type RawWrite = (Tree, Vec<u8>, Option<Vec<u8>>);

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

type MemoryTrees = BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// An ordered key-value store with named trees. Shared between the engine and the
/// [`super::SideStore`] handles of the node that embeds it, hence `Sync`.
pub trait Backend: Send + Sync {
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
        self.trees.lock().map_err(|_| StoreError::Backend(BackendError::new(Poisoned)))
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
        if !end.is_empty() && start >= end {
            return Ok(Vec::new());
        }
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
