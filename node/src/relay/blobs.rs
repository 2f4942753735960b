//! The relay's blob store: sealed attachment chunks held for recipients, one file per chunk
//! (`<data-dir>/relay-blobs/<recipient>/<hash>`, the recipient by its pseudonym in an
//! encrypted profile), indexed in the profile's database (the
//! `relay` side tree, namespace `B`):
//!
//! ```text
//!  'b' ‖ recipient ‖ hash               → deposited_at ‖ size   (what is held, for whom)
//!  'e' ‖ deposited_at ‖ recipient ‖ hash → ()                   (expiry order)
//! ```
//!
//! A chunk file is written, synced and renamed into place (on a blocking thread) before its
//! index entry is inserted; the upload is answered after the profile's next flush. Usage per recipient
//! is kept in memory, rebuilt from the index on open, and counts uploads still being written, so
//! concurrent uploads cannot overshoot a quota.

use std::collections::HashMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use kith_protocol::media::MediaRefusal;
use kith_protocol::{ChunkHash, UnixMillis, UserId};

use super::store::RelayStoreError;
use crate::keyspace::{Keyspace, WriteBatch};

const BLOB: u8 = b'b';
const EXPIRY: u8 = b'e';

fn blob_key(recipient: &UserId, hash: &ChunkHash) -> Vec<u8> {
    let mut key = Vec::with_capacity(65);
    key.push(BLOB);
    key.extend_from_slice(&recipient.0);
    key.extend_from_slice(&hash.0);
    key
}

fn expiry_key(at: UnixMillis, recipient: &UserId, hash: &ChunkHash) -> Vec<u8> {
    let mut key = Vec::with_capacity(73);
    key.push(EXPIRY);
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(&recipient.0);
    key.extend_from_slice(&hash.0);
    key
}

fn parse_value(value: &[u8]) -> Option<(UnixMillis, u64)> {
    let at = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let size = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((at, size))
}

/// What an upload may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write it (its bytes are reserved).
    Write,
    /// Already held: answer `Stored` without writing.
    Held,
}

pub(crate) struct BlobStore {
    dir: PathBuf,
    index: Keyspace,
    usage: HashMap<UserId, u64>,
    total: u64,
}

impl BlobStore {
    pub(crate) fn open(dir: &Path, index: Keyspace) -> Result<Self, RelayStoreError> {
        let mut usage: HashMap<UserId, u64> = HashMap::new();
        let mut total = 0;
        index.scan_prefix(&[BLOB], |key, value| {
            let recipient = key.get(1..33).and_then(|r| <[u8; 32]>::try_from(r).ok());
            if let (Some(recipient), Some((_, size))) = (recipient, parse_value(value)) {
                *usage.entry(UserId(recipient)).or_default() += size;
                total += size;
            }
            ControlFlow::Continue(())
        })?;
        Ok(Self { dir: dir.to_owned(), index, usage, total })
    }

    /// Where a chunk's file lives (under the recipient's pseudonym, in an encrypted profile).
    pub(crate) fn path(&self, recipient: &UserId, hash: &ChunkHash) -> PathBuf {
        self.hidden_path(&self.index.hide(recipient), hash)
    }

    fn hidden_path(&self, recipient: &UserId, hash: &ChunkHash) -> PathBuf {
        self.dir.join(recipient.to_string()).join(hash.to_string())
    }

    /// A lookup of held chunks for the fetch server, which runs beside the driver (the
    /// database is safe to read from several threads).
    pub(crate) fn index(&self) -> crate::media::fetch::BlobIndex {
        let (index, dir) = (self.index.clone(), self.dir.clone());
        crate::media::fetch::BlobIndex {
            lookup: std::sync::Arc::new(move |recipient: &UserId, hash: &ChunkHash| {
                let recipient = &index.hide(recipient);
                let held = index.contains_key(&blob_key(recipient, hash)).ok()?;
                held.then(|| dir.join(recipient.to_string()).join(hash.to_string()))
            }),
        }
    }

    /// Whether `recipient` has this chunk.
    pub(crate) fn holds(
        &self,
        recipient: &UserId,
        hash: &ChunkHash,
    ) -> Result<bool, RelayStoreError> {
        Ok(self.index.contains_key(&blob_key(&self.index.hide(recipient), hash))?)
    }

    /// Bytes held (and being written) for `recipient`, and in all.
    pub(crate) fn usage(&self, recipient: &UserId) -> (u64, u64) {
        (self.usage.get(&self.index.hide(recipient)).copied().unwrap_or(0), self.total)
    }

    /// Decides an upload of `size` bytes; on [`Admit::Write`] the bytes are reserved until
    /// [`Self::commit`] or [`Self::abort`].
    pub(crate) fn admit(
        &mut self,
        recipient: &UserId,
        hash: &ChunkHash,
        size: u64,
        per_recipient: u64,
        total: u64,
    ) -> Result<Admit, MediaRefusal> {
        match self.holds(recipient, hash) {
            Ok(true) => return Ok(Admit::Held),
            Ok(false) => {}
            Err(e) => {
                tracing::error!("{e}");
                return Err(MediaRefusal::Unavailable);
            }
        }
        let (used, all) = self.usage(recipient);
        if used + size > per_recipient {
            return Err(MediaRefusal::QuotaExceeded);
        }
        if all + size > total {
            return Err(MediaRefusal::Unavailable);
        }
        *self.usage.entry(self.index.hide(recipient)).or_default() += size;
        self.total += size;
        Ok(Admit::Write)
    }

    /// Releases a reservation whose write failed.
    pub(crate) fn abort(&mut self, recipient: &UserId, size: u64) {
        self.release(&self.index.hide(recipient), size);
    }

    /// Indexes a chunk whose file is written and synced.
    pub(crate) fn commit(
        &mut self,
        recipient: &UserId,
        hash: &ChunkHash,
        size: u64,
        now: UnixMillis,
    ) -> Result<(), RelayStoreError> {
        let recipient = &self.index.hide(recipient);
        let mut value = now.to_be_bytes().to_vec();
        value.extend_from_slice(&size.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.insert(&self.index, &blob_key(recipient, hash), value);
        batch.insert(&self.index, &expiry_key(now, recipient, hash), Vec::new());
        self.index.commit(batch);
        Ok(())
    }

    /// Deletes `recipient`'s chunks among `hashes`; returns how many were held.
    pub(crate) fn remove(
        &mut self,
        recipient: &UserId,
        hashes: &[ChunkHash],
    ) -> Result<u32, RelayStoreError> {
        let hidden = self.index.hide(recipient);
        self.remove_hidden(&hidden, hashes)
    }

    /// [`Self::remove`], for the recipient's pseudonym (as keys hold it).
    fn remove_hidden(
        &mut self,
        recipient: &UserId,
        hashes: &[ChunkHash],
    ) -> Result<u32, RelayStoreError> {
        let mut batch = WriteBatch::default();
        let mut removed = Vec::new();
        for hash in hashes {
            let key = blob_key(recipient, hash);
            let Some((at, size)) = self.index.get(&key)?.as_deref().and_then(parse_value) else {
                continue;
            };
            batch.remove(&self.index, &key);
            batch.remove(&self.index, &expiry_key(at, recipient, hash));
            removed.push((*hash, size));
        }
        self.index.commit(batch);
        for (hash, size) in &removed {
            self.release(recipient, *size);
            // A crash before this leaves a file no index entry names: never served, only disk.
            let _ = fs::remove_file(self.hidden_path(recipient, hash));
        }
        Ok(u32::try_from(removed.len()).unwrap_or(u32::MAX))
    }

    /// Deletes up to `max` chunks stored before `cutoff`; returns how many.
    pub(crate) fn purge_expired(
        &mut self,
        cutoff: UnixMillis,
        max: usize,
    ) -> Result<usize, RelayStoreError> {
        let mut expired: Vec<(UserId, ChunkHash)> = Vec::new();
        let end = expiry_key(cutoff, &UserId([0; 32]), &ChunkHash([0; 32]));
        let mut visited = 0;
        self.index.scan(&[EXPIRY], &end, |key, _| {
            let recipient = key.get(9..41).and_then(|r| <[u8; 32]>::try_from(r).ok());
            let hash = key.get(41..73).and_then(|h| <[u8; 32]>::try_from(h).ok());
            if let (Some(recipient), Some(hash)) = (recipient, hash) {
                expired.push((UserId(recipient), ChunkHash(hash)));
            }
            visited += 1;
            if visited >= max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        let mut purged = 0;
        for (recipient, hash) in expired {
            purged += self.remove_hidden(&recipient, &[hash])? as usize;
        }
        Ok(purged)
    }

    /// Bytes held in all.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    fn release(&mut self, recipient: &UserId, size: u64) {
        if let Some(used) = self.usage.get_mut(recipient) {
            *used = used.saturating_sub(size);
            if *used == 0 {
                self.usage.remove(recipient);
            }
        }
        self.total = self.total.saturating_sub(size);
    }
}

/// Writes a chunk file durably: checks its hash, writes a temporary file, syncs it, renames it
/// into place and syncs the directory. Runs on a blocking thread.
pub(crate) fn write_blob(path: &Path, hash: &ChunkHash, data: &[u8]) -> Result<(), MediaRefusal> {
    if blake3::hash(data).as_bytes() != &hash.0 {
        return Err(MediaRefusal::HashMismatch);
    }
    let write = || -> std::io::Result<()> {
        let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
        fs::create_dir_all(dir)?;
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, data)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, path)?;
        crate::media::files::sync_dir(dir)
    };
    write().map_err(|e| {
        tracing::error!("writing a blob: {e}");
        MediaRefusal::Unavailable
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn quotas_count_reservations_and_removal_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = kith_core::store::Store::memory();
        let index = || Keyspace::new(db.side(), kith_core::store::SideTree::Relay, b'B');
        let mut blobs = BlobStore::open(dir.path(), index()).unwrap();
        let (bob, carol) = (UserId([1; 32]), UserId([2; 32]));
        let data = vec![7u8; 100];
        let hash = ChunkHash(*blake3::hash(&data).as_bytes());
        assert_eq!(blobs.admit(&bob, &hash, 100, 150, 1000), Ok(Admit::Write));
        // The reservation counts before the write completes.
        assert_eq!(
            blobs.admit(&bob, &ChunkHash([9; 32]), 100, 150, 1000),
            Err(MediaRefusal::QuotaExceeded)
        );
        write_blob(&blobs.path(&bob, &hash), &hash, &data).unwrap();
        blobs.commit(&bob, &hash, 100, 5).unwrap();
        assert_eq!(blobs.admit(&bob, &hash, 100, 150, 1000), Ok(Admit::Held));
        assert_eq!(
            blobs.admit(&carol, &ChunkHash([8; 32]), 950, 10_000, 1000),
            Err(MediaRefusal::Unavailable),
            "the relay-wide budget"
        );
        assert_eq!(
            write_blob(&blobs.path(&bob, &hash), &ChunkHash([0; 32]), &data),
            Err(MediaRefusal::HashMismatch)
        );
        // Reopened, the usage is rebuilt from the index.
        let reopened = BlobStore::open(dir.path(), index()).unwrap();
        assert_eq!(reopened.usage(&bob), (100, 100));
        assert_eq!(blobs.purge_expired(5, 10).unwrap(), 0, "stored at 5 is not before 5");
        assert_eq!(blobs.purge_expired(6, 10).unwrap(), 1);
        assert_eq!(blobs.usage(&bob), (0, 0));
        assert!(!blobs.path(&bob, &hash).exists());
        assert_eq!(blobs.remove(&bob, &[hash]).unwrap(), 0);
    }
}
