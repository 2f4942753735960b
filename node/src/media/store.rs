//! The node's attachment records, in the profile's database (the `media` side tree), so that
//! they commit with the engine's writes of the same turn.
//!
//! ```text
//!  'O' ‖ media id → OutgoingRecord   (what we serve: recipient, hashes, sealed copy)
//!  'I' ‖ media id → IncomingRecord   (manifest, verified chunks on disk, outcome)
//!  'G' ‖ media id → group id         (an attachment we sent to a group: its members fetch it)
//!  'H' ‖ media id → HeldRecord       (a group's attachment we receive: we serve it to members)
//!  'P' ‖ media id ‖ member → RelayUploads (what we sent to a group, uploaded for a member that
//!                                     was offline to its relays)
//! ```
//!
//! An incoming record's `done` bitmap only names chunks whose bytes were synced to the partial
//! file before the record was written, so a restarted download trusts it.

use std::ops::ControlFlow;
use std::path::PathBuf;

use kith_core::store::{SideStore, SideTree};

use kith_protocol::content::MediaManifest;
use kith_protocol::{ChunkHash, GroupId, MediaId, MessageId, UnixMillis, UserId};
use serde::{Deserialize, Serialize};

use crate::keyspace::Keyspace;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaStoreError {
    /// The database failed.
    #[error("media store")]
    Backend(#[from] kith_core::store::StoreError),
    /// A record did not decode.
    #[error("media store: corrupt record")]
    Corrupt,
}

/// An attachment we sent and serve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct OutgoingRecord {
    pub(crate) message: MessageId,
    pub(crate) to: UserId,
    pub(crate) name: String,
    pub(crate) mime: String,
    pub(crate) size: u64,
    pub(crate) chunk_size: u32,
    pub(crate) hashes: Vec<ChunkHash>,
    /// The file as the user gave it.
    pub(crate) source: PathBuf,
    pub(crate) created_at: UnixMillis,
    /// Relays (multiaddr bytes) that still need every chunk.
    pub(crate) pending_uploads: Vec<Vec<u8>>,
    /// Relays that hold every chunk.
    pub(crate) uploaded: Vec<Vec<u8>>,
}

/// Where an incoming attachment stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum IncomingState {
    /// Chunks are being fetched.
    Downloading,
    /// Saved at this path.
    Complete(PathBuf),
    /// Given up, for this reason.
    Failed(String),
}

/// An attachment we receive.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct IncomingRecord {
    pub(crate) message: MessageId,
    pub(crate) from: UserId,
    pub(crate) manifest: MediaManifest,
    /// One bit per chunk: verified, written and synced.
    pub(crate) done: Vec<u8>,
    pub(crate) state: IncomingState,
}

/// A group's attachment we receive (or received), which we serve to the group's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldRecord {
    pub(crate) group: GroupId,
    /// When its manifest arrived (local clock): we serve it for the retention period.
    pub(crate) received_at: UnixMillis,
}

/// The relays (multiaddr bytes) an attachment we sent to a group goes to for one member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RelayUploads {
    /// Relays that still need every chunk.
    pub(crate) pending: Vec<Vec<u8>>,
    /// Relays that hold every chunk.
    pub(crate) uploaded: Vec<Vec<u8>>,
}

/// Bitmap helpers for [`IncomingRecord::done`].
pub(crate) fn bitmap(chunks: u32) -> Vec<u8> {
    vec![0; (chunks as usize).div_ceil(8)]
}

pub(crate) fn bit(map: &[u8], index: u32) -> bool {
    map.get(index as usize / 8).is_some_and(|b| b & (1 << (index % 8)) != 0)
}

/// How many of the first `chunks` bits are set.
pub(crate) fn count(map: &[u8], chunks: u32) -> u32 {
    (0..chunks).fold(0, |n, i| n + u32::from(bit(map, i)))
}

pub(crate) fn set_bit(map: &mut [u8], index: u32) {
    if let Some(b) = map.get_mut(index as usize / 8) {
        *b |= 1 << (index % 8);
    }
}

/// The attachment database. Cheap to clone (the download writers share it).
#[derive(Clone)]
pub(crate) struct MediaStore {
    outgoing: Keyspace,
    incoming: Keyspace,
    groups: Keyspace,
    held: Keyspace,
    member_uploads: Keyspace,
}

fn member_key(media: &MediaId, member: &UserId) -> Vec<u8> {
    let mut key = media.0.to_vec();
    key.extend_from_slice(&member.0);
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Every record of a keyspace keyed by media id.
fn scan<T: serde::de::DeserializeOwned>(
    space: &Keyspace,
) -> Result<Vec<(MediaId, T)>, MediaStoreError> {
    scan_keys(space, &[], |key| <[u8; 16]>::try_from(key).ok().map(MediaId))
}

/// Every record of a keyspace under `prefix`, its key read by `key_of` (a key it cannot read,
/// or a record that does not decode, is corruption).
fn scan_keys<K, T: serde::de::DeserializeOwned>(
    space: &Keyspace,
    prefix: &[u8],
    key_of: impl Fn(&[u8]) -> Option<K>,
) -> Result<Vec<(K, T)>, MediaStoreError> {
    let mut out = Vec::new();
    let mut corrupt = false;
    space.scan_prefix(prefix, |key, value| {
        match key_of(key).zip(postcard::from_bytes(value).ok()) {
            Some(entry) => {
                out.push(entry);
                ControlFlow::Continue(())
            }
            None => {
                corrupt = true;
                ControlFlow::Break(())
            }
        }
    })?;
    if corrupt {
        return Err(MediaStoreError::Corrupt);
    }
    Ok(out)
}

impl MediaStore {
    pub(crate) fn open(side: SideStore) -> Self {
        Self {
            outgoing: Keyspace::new(side.clone(), SideTree::Media, b'O'),
            incoming: Keyspace::new(side.clone(), SideTree::Media, b'I'),
            groups: Keyspace::new(side.clone(), SideTree::Media, b'G'),
            held: Keyspace::new(side.clone(), SideTree::Media, b'H'),
            member_uploads: Keyspace::new(side, SideTree::Media, b'P'),
        }
    }

    pub(crate) fn put_outgoing(
        &self,
        media: &MediaId,
        record: &OutgoingRecord,
    ) -> Result<(), MediaStoreError> {
        self.outgoing.insert(&media.0, encode(record));
        Ok(())
    }

    pub(crate) fn outgoing(&self) -> Result<Vec<(MediaId, OutgoingRecord)>, MediaStoreError> {
        scan(&self.outgoing)
    }

    pub(crate) fn delete_outgoing(&self, media: &MediaId) -> Result<(), MediaStoreError> {
        self.outgoing.remove(&media.0);
        self.groups.remove(&media.0);
        let mut members = Vec::new();
        self.member_uploads.scan_prefix(&media.0, |key, _| {
            members.push(key.to_vec());
            ControlFlow::Continue(())
        })?;
        for key in members {
            self.member_uploads.remove(&key);
        }
        Ok(())
    }

    /// Records the relays an attachment we sent to a group goes to for `member`.
    pub(crate) fn put_member_uploads(
        &self,
        media: &MediaId,
        member: &UserId,
        uploads: &RelayUploads,
    ) {
        self.member_uploads.remember(&[*member]);
        let member = self.member_uploads.hide(member);
        self.member_uploads.insert(&member_key(media, &member), encode(uploads));
    }

    /// The relays each member's uploads of `media` go to.
    pub(crate) fn member_uploads(
        &self,
        media: &MediaId,
    ) -> Result<Vec<(UserId, RelayUploads)>, MediaStoreError> {
        let hidden: Vec<(UserId, RelayUploads)> =
            scan_keys(&self.member_uploads, &media.0, |key| {
                key.get(MediaId::LEN..).and_then(|m| <[u8; 32]>::try_from(m).ok()).map(UserId)
            })?;
        let mut out = Vec::with_capacity(hidden.len());
        for (member, uploads) in hidden {
            match self.member_uploads.reveal(&member.0)? {
                Some(member) => out.push((member, uploads)),
                None => return Err(MediaStoreError::Corrupt),
            }
        }
        Ok(out)
    }

    /// Records that `media`, which we receive, is a group's (its members may fetch it from us).
    pub(crate) fn put_held(&self, media: &MediaId, record: &HeldRecord) {
        self.held.insert(&media.0, encode(record));
    }

    /// The groups' attachments we receive or received.
    pub(crate) fn held(&self) -> Result<Vec<(MediaId, HeldRecord)>, MediaStoreError> {
        scan(&self.held)
    }

    /// Forgets that we serve `media` to its group.
    pub(crate) fn delete_held(&self, media: &MediaId) {
        self.held.remove(&media.0);
    }

    /// Records that `media`, which we sent, went to `group`.
    pub(crate) fn put_outgoing_group(&self, media: &MediaId, group: &GroupId) {
        self.groups.insert(&media.0, encode(group));
    }

    /// The groups our attachments went to.
    pub(crate) fn outgoing_groups(&self) -> Result<Vec<(MediaId, GroupId)>, MediaStoreError> {
        scan(&self.groups)
    }

    pub(crate) fn put_incoming(
        &self,
        media: &MediaId,
        record: &IncomingRecord,
    ) -> Result<(), MediaStoreError> {
        self.incoming.insert(&media.0, encode(record));
        Ok(())
    }

    pub(crate) fn incoming_record(
        &self,
        media: &MediaId,
    ) -> Result<Option<IncomingRecord>, MediaStoreError> {
        match self.incoming.get(&media.0)? {
            Some(value) => {
                postcard::from_bytes(&value).map(Some).map_err(|_| MediaStoreError::Corrupt)
            }
            None => Ok(None),
        }
    }

    pub(crate) fn incoming(&self) -> Result<Vec<(MediaId, IncomingRecord)>, MediaStoreError> {
        scan(&self.incoming)
    }

    pub(crate) fn delete_incoming(&self, media: &MediaId) {
        self.incoming.remove(&media.0);
    }

    /// Makes every write so far durable (across a power cut): the profile's whole database,
    /// one flush.
    pub(crate) fn flush(&self) -> Result<(), MediaStoreError> {
        Ok(self.outgoing.flush()?)
    }
}
