//! The sled backend (the default `sled` feature): one sled database per profile.

use std::fmt;
use std::fs::File;
use std::path::Path;

use super::backend::{Backend, BackendError, Entry, RawWrite, StoreError, Tree};

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(BackendError::new(e))
    }
}

/// Opens a sled database. A database whose lock another handle holds — another process, or one
/// this process closed a moment ago (sled releases its lock on a background thread some time
/// after the last handle is dropped, spacejam/sled#1234) — gives [`StoreError::Locked`]: the
/// lock is tried first (the same `flock` sled takes), so the caller tells it by its kind and
/// may wait and try again. kith-core reads no clock, so the waiting is the caller's.
pub fn open_sled(config: &sled::Config, path: &Path) -> Result<sled::Db, StoreError> {
    let lock_file = path.join("db");
    if let Ok(file) = File::options().read(true).write(true).open(&lock_file) {
        match file.try_lock() {
            Ok(()) => drop(file),
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Backend(BackendError::new(e)));
            }
        }
    }
    Ok(config.open()?)
}

/// The sled backend: one sled database per profile holding every [`Tree`] in one keyspace,
/// each key prefixed with its tree's byte, so that any batch, whatever trees it touches, is
/// one atomic sled `apply_batch` (cheaper than a multi-tree transaction). sled writes its log
/// in the background; [`Backend::flush`] fsyncs it.
pub struct SledBackend {
    db: sled::Db,
}

/// sled's page cache size: enough for a busy profile, far below sled's 1 GiB default.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn sled_key(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(tree.prefix());
    out.extend_from_slice(key);
    out
}

impl SledBackend {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_sled(&sled::Config::new().path(path).cache_capacity(SLED_CACHE_BYTES), path)?;
        Ok(Self { db })
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
        Ok(self.db.get(sled_key(tree, key))?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = sled_key(tree, start);
        // Without an end, the range stops where the next tree's keys begin.
        let end = if end.is_empty() { vec![tree.prefix() + 1] } else { sled_key(tree, end) };
        if start >= end {
            return Ok(Vec::new());
        }
        let iter = self.db.range(start..end);
        let to_owned = |r: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = r?;
            Ok((k.get(1..).unwrap_or_default().to_vec(), v.to_vec()))
        };
        if reverse {
            iter.rev().take(limit).map(to_owned).collect()
        } else {
            iter.take(limit).map(to_owned).collect()
        }
    }

    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (tree, key, value) in writes {
            match value {
                Some(value) => batch.insert(sled_key(*tree, key), value.as_slice()),
                None => batch.remove(sled_key(*tree, key)),
            }
        }
        Ok(self.db.apply_batch(batch)?)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        let mut out = Vec::new();
        for tree in Tree::ALL {
            for (k, v) in self.range(tree, &[], &[], false, usize::MAX)? {
                out.push((tree, k, Some(v)));
            }
        }
        Ok(out)
    }
}
