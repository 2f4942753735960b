//! The sled backend (the default `sled` feature): one sled database per profile.
//!
//! sled 0.34's own `flush` writes its log with `pwrite` and `sync_file_range`, which waits for
//! the pages to reach the device but neither flushes the device's write cache nor writes the
//! file's metadata (its new length), and it never syncs the files it keeps large values in: a
//! flushed write survives a crash of the process, not a power cut. [`SledDurability`] adds what
//! is missing, and every flush of Kith's sled databases goes through it.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

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

/// Makes a sled database's flushed writes durable across a power cut: after sled's `flush`,
/// `fdatasync` of every value file ("blob") sled wrote since the last flush and of their
/// directory, then of the log file itself (so that no durable log entry points at a blob that
/// is not). Costs one device cache flush per call, the floor of any durable commit.
#[derive(Debug)]
pub struct SledDurability {
    log: File,
    blobs: PathBuf,
    /// The highest blob (sled names them by log sequence number) synced so far.
    synced_blob: u64,
}

impl SledDurability {
    /// For the database sled opened at `path`: syncs the directory entries sled created (the
    /// log, its config, the blob directory) once, then keeps the log open for the flushes.
    pub fn new(path: &Path) -> std::io::Result<Self> {
        let log = File::open(path.join("db"))?;
        let blobs = path.join("blobs");
        if let Ok(conf) = File::open(path.join("conf")) {
            conf.sync_all()?;
        }
        sync_dir(&blobs)?;
        sync_dir(path)?;
        let mut durability = Self { log, blobs, synced_blob: 0 };
        durability.sync_blobs()?;
        Ok(durability)
    }

    /// `db.flush()`, then makes what it wrote durable.
    pub fn flush(&mut self, db: &sled::Db) -> Result<(), sled::Error> {
        db.flush()?;
        self.sync_blobs()?;
        self.log.sync_data()?;
        Ok(())
    }

    fn sync_blobs(&mut self) -> std::io::Result<()> {
        let mut newest = self.synced_blob;
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            // No value file written yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(lsn) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if lsn > self.synced_blob {
                match File::open(entry.path()) {
                    Ok(blob) => blob.sync_data()?,
                    // Collected by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                newest = newest.max(lsn);
            }
        }
        if newest > self.synced_blob {
            sync_dir(&self.blobs)?;
            self.synced_blob = newest;
        }
        Ok(())
    }
}

/// `fsync` of a directory: its entries (files created or renamed in it) become durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match File::open(dir) {
        Ok(dir) => dir.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The sled backend: one sled database per profile holding every [`Tree`] in one keyspace,
/// each key prefixed with its tree's byte, so that any batch, whatever trees it touches, is
/// one atomic sled `apply_batch` (cheaper than a multi-tree transaction). sled writes its log
/// in the background; [`Backend::flush`] makes it durable across a power cut
/// ([`SledDurability`]).
///
/// A failed write or flush (a full disk) leaves sled refusing every write after it, for the
/// life of the handle. The backend then reopens the database at the next write or flush, once
/// a probe write shows there is room again: the reopened database holds what was durable, and
/// the [`super::Store`] above applies again every write it had not seen made durable.
pub struct SledBackend {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` while a reopen has not succeeded yet.
    open: Option<(sled::Db, SledDurability)>,
    /// A write or flush failed since the database was opened.
    failed: bool,
}

/// sled's page cache size: enough for a busy profile, far below sled's 1 GiB default.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The room a reopen needs: sled's recovery may start a new log segment (512 KiB) and rewrite
/// its snapshot.
const PROBE_BYTES: usize = 1024 * 1024;

/// The database was closed after a failure and could not be opened again yet.
#[derive(Debug, thiserror::Error)]
#[error("the database is closed after a write failure and not reopened yet")]
struct Closed;

/// The backend's lock was poisoned by a panic while it was held.
#[derive(Debug, thiserror::Error)]
#[error("sled backend lock poisoned")]
struct Poisoned;

fn sled_key(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(tree.prefix());
    out.extend_from_slice(key);
    out
}

fn open_at(path: &Path) -> Result<(sled::Db, SledDurability), StoreError> {
    let db = open_sled(&sled::Config::new().path(path).cache_capacity(SLED_CACHE_BYTES), path)?;
    let durability =
        SledDurability::new(path).map_err(|e| StoreError::Backend(BackendError::new(e)))?;
    Ok((db, durability))
}

impl SledBackend {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open = open_at(path)?;
        Ok(Self {
            path: path.to_owned(),
            inner: Mutex::new(Inner { open: Some(open), failed: false }),
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let inner = self.lock()?;
        Ok(self.db(&inner)?.size_on_disk()?)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Backend(BackendError::new(Poisoned)))
    }

    fn db<'a>(&self, inner: &'a Inner) -> Result<&'a sled::Db, StoreError> {
        inner.open.as_ref().map(|(db, _)| db).ok_or(StoreError::Backend(BackendError::new(Closed)))
    }

    /// After a failure: reopens the database if there is room again (else the probe's error).
    fn recover(&self, inner: &mut Inner) -> Result<(), StoreError> {
        if !inner.failed {
            return Ok(());
        }
        self.probe_room().map_err(|e| StoreError::Backend(BackendError::new(e)))?;
        // sled holds its lock until the last handle is gone: close before opening again.
        inner.open = None;
        inner.open = Some(open_at(&self.path)?);
        inner.failed = false;
        Ok(())
    }

    fn probe_room(&self) -> std::io::Result<()> {
        let probe = self.path.join("room-probe");
        // From a static block: a 1 MiB array on the stack could overflow a worker thread's.
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let result = File::create(&probe)
            .and_then(|mut f| (0..PROBE_BYTES / ZEROS.len()).try_for_each(|_| f.write_all(&ZEROS)));
        let _ = std::fs::remove_file(&probe);
        result
    }

    /// Runs a write on the open database, noting a failure for [`SledBackend::recover`].
    fn write<T>(
        &self,
        f: impl FnOnce(&sled::Db, &mut SledDurability) -> Result<T, sled::Error>,
    ) -> Result<T, StoreError> {
        let mut inner = self.lock()?;
        self.recover(&mut inner)?;
        let inner = &mut *inner;
        let Some((db, durability)) = inner.open.as_mut() else {
            return Err(StoreError::Backend(BackendError::new(Closed)));
        };
        let result = f(db, durability);
        if result.is_err() {
            inner.failed = true;
        }
        Ok(result?)
    }
}

impl fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledBackend").finish_non_exhaustive()
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.lock()?;
        Ok(self.db(&inner)?.get(sled_key(tree, key))?.map(|v| v.to_vec()))
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
        let inner = self.lock()?;
        let iter = self.db(&inner)?.range(start..end);
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
        self.write(|db, _| db.apply_batch(batch))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.write(|db, durability| durability.flush(db))
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
