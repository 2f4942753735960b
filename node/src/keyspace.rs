//! The node's own records in the profile's database: a [`Keyspace`] is one namespace (a key
//! prefix byte) of one of the engine store's side trees, so that the relay service's mailboxes,
//! prekeys and blob index and the attachment records commit with the engine's writes, in one
//! flush per turn.
//!
//! | side tree | namespace | holds |
//! |---|---|---|
//! | relay | `M` | mailboxes ([`crate::relay`]'s store) |
//! | relay | `P` | uploaded prekeys |
//! | relay | `B` | the blob index |
//! | media | `O` | attachments we send |
//! | media | `I` | attachments we receive |

use std::ops::ControlFlow;
use std::path::Path;

use kith_core::store::{BackendError, Entry, SideStore, SideTree, SideWrite, StoreError};
use kith_protocol::UserId;

/// Entries read per page when scanning.
const PAGE: usize = 256;

/// One namespace of a side tree.
#[derive(Clone, Debug)]
pub(crate) struct Keyspace {
    side: SideStore,
    tree: SideTree,
    ns: u8,
}

/// Writes to one or more keyspaces, committed at once by [`Keyspace::commit`].
#[derive(Default)]
pub(crate) struct WriteBatch {
    writes: Vec<SideWrite>,
}

impl WriteBatch {
    pub(crate) fn insert(&mut self, space: &Keyspace, key: &[u8], value: Vec<u8>) {
        self.writes.push((space.tree, space.key(key), Some(value)));
    }

    pub(crate) fn remove(&mut self, space: &Keyspace, key: &[u8]) {
        self.writes.push((space.tree, space.key(key), None));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

impl Keyspace {
    pub(crate) fn new(side: SideStore, tree: SideTree, ns: u8) -> Self {
        Self { side, tree, ns }
    }

    /// The pseudonym `user` has in this database's keys (and file names): a keyed hash when
    /// the database is encrypted, the id itself otherwise. Keys built from user ids use it so
    /// that no key names a user.
    pub(crate) fn hide(&self, user: &UserId) -> UserId {
        UserId(self.side.pseudonym(&user.0))
    }

    /// Keeps the users behind their pseudonyms, for [`Keyspace::reveal`].
    pub(crate) fn remember(&self, users: &[UserId]) {
        self.side.remember(&users.iter().map(|u| u.0).collect::<Vec<_>>());
    }

    /// The user behind a pseudonym read from a key, if remembered.
    pub(crate) fn reveal(&self, pseudonym: &[u8; 32]) -> Result<Option<UserId>, StoreError> {
        Ok(self.side.reveal(pseudonym)?.map(UserId))
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(key.len() + 1);
        out.push(self.ns);
        out.extend_from_slice(key);
        out
    }

    /// The value at `key` (committed, durable or not).
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.side.get(self.tree, &self.key(key))
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    /// Puts one value (durable after the next flush).
    pub(crate) fn insert(&self, key: &[u8], value: Vec<u8>) {
        let mut batch = WriteBatch::default();
        batch.insert(self, key, value);
        self.commit(batch);
    }

    /// Deletes one key (durable after the next flush).
    pub(crate) fn remove(&self, key: &[u8]) {
        let mut batch = WriteBatch::default();
        batch.remove(self, key);
        self.commit(batch);
    }

    /// Commits a batch (of this keyspace's writes or others' in the same database) at once.
    pub(crate) fn commit(&self, batch: WriteBatch) {
        if !batch.is_empty() {
            self.side.commit(batch.writes);
        }
    }

    /// Visits the entries with keys in `[start, end)` (no end bound if `end` is empty) in key
    /// order, a page at a time, until `visit` breaks; keys are given without the namespace.
    pub(crate) fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let end = if end.is_empty() { vec![self.ns + 1] } else { self.key(end) };
        let mut from = self.key(start);
        loop {
            let page: Vec<Entry> = self.side.range(self.tree, &from, &end, false, PAGE)?;
            let full = page.len() == PAGE;
            for (key, value) in &page {
                if visit(key.get(1..).unwrap_or_default(), value).is_break() {
                    return Ok(());
                }
            }
            match page.into_iter().last() {
                // The next page starts just after the last key.
                Some((mut last, _)) if full => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(()),
            }
        }
    }

    /// [`Keyspace::scan`] of the keys that start with `prefix`.
    pub(crate) fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        match prefix_end(prefix) {
            Some(end) => self.scan(prefix, &end, visit),
            None => self.scan(prefix, &[], visit),
        }
    }

    /// Makes every commit so far durable (the whole database's: one flush).
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.side.flush()
    }
}

/// Where a side tree's key (namespace byte included) holds a user id, and whether the node
/// reads that id back from the key: the layouts of [`crate::relay`]'s store and blob index and
/// of [`crate::media`]'s records, in one place for the one-time migration of a profile to
/// encryption (a test checks them against the live key builders).
fn id_in_key(tree: SideTree, key: &[u8]) -> Option<(usize, bool)> {
    match (tree, key.first()?, key.get(1)) {
        // Mailboxes: 'm' ‖ recipient ‖ seq, 'i' ‖ recipient ‖ id, 'e' ‖ at ‖ recipient ‖ seq.
        (SideTree::Relay, b'M', Some(b'm' | b'i')) => Some((2, false)),
        (SideTree::Relay, b'M', Some(b'e')) => Some((10, false)),
        // Prekeys: user.
        (SideTree::Relay, b'P', _) => Some((1, false)),
        // Blob index: 'b' ‖ recipient ‖ hash, 'e' ‖ at ‖ recipient ‖ hash.
        (SideTree::Relay, b'B', Some(b'b')) => Some((2, false)),
        (SideTree::Relay, b'B', Some(b'e')) => Some((10, false)),
        // Uploads of a group's attachment for an offline member: media id ‖ member.
        (SideTree::Media, b'P', _) => Some((1 + kith_protocol::MediaId::LEN, true)),
        _ => None,
    }
}

/// `key` (a side tree's, namespace byte included, ids in the clear) as the node writes it to
/// `side`: its user id replaced by its pseudonym, and remembered where the node reads it back.
pub(crate) fn hidden_side_key(side: &SideStore, tree: SideTree, key: &[u8]) -> Vec<u8> {
    let mut out = key.to_vec();
    if let Some((at, revealed)) = id_in_key(tree, key)
        && let Some(slot) = out.get_mut(at..at + 32)
        && let Ok(id) = <[u8; 32]>::try_from(&*slot)
    {
        slot.copy_from_slice(&side.pseudonym(&id));
        if revealed {
            side.remember(&[id]);
        }
    }
    out
}

/// The trees of the relay service's database of its own (`<data-dir>/relay`, before one
/// database held everything) and where their records go now.
pub(crate) const LEGACY_RELAY: [(&str, SideTree, u8); 3] = [
    ("mailbox", SideTree::Relay, b'M'),
    ("prekeys", SideTree::Relay, b'P'),
    ("blobs", SideTree::Relay, b'B'),
];

/// The same for the attachment records' database (`<data-dir>/media`).
pub(crate) const LEGACY_MEDIA: [(&str, SideTree, u8); 2] =
    [("outgoing", SideTree::Media, b'O'), ("incoming", SideTree::Media, b'I')];

/// Bytes of records imported before each flush.
const IMPORT_FLUSH_BYTES: usize = 8 * 1024 * 1024;

/// Moves the records of a sled database of the old layout (one per service) at `dir`, if
/// there is one, into the profile's database, makes them durable, then deletes the old
/// database. Interrupted, it runs again at the next start: the same records land on the same
/// keys.
pub(crate) fn import_legacy(
    dir: &Path,
    side: &SideStore,
    trees: &[(&str, SideTree, u8)],
) -> Result<(), StoreError> {
    if !dir.join("db").is_file() || !dir.join("conf").is_file() {
        return Ok(());
    }
    let db = crate::clock::wait_for_lock(|| {
        kith_core::store::open_sled(&sled::Config::new().path(dir), dir)
    })?;
    let mut imported = 0usize;
    for (name, tree, ns) in trees {
        let space = Keyspace::new(side.clone(), *tree, *ns);
        let mut batch = WriteBatch::default();
        let mut bytes = 0;
        for entry in db.open_tree(name)?.iter() {
            let (key, value) = entry?;
            bytes += key.len() + value.len();
            let key = hidden_side_key(side, *tree, &space.key(&key));
            batch.writes.push((*tree, key, Some(value.to_vec())));
            imported += 1;
            if bytes >= IMPORT_FLUSH_BYTES {
                space.commit(std::mem::take(&mut batch));
                side.flush()?;
                bytes = 0;
            }
        }
        space.commit(batch);
    }
    side.flush()?;
    drop(db);
    std::fs::remove_dir_all(dir).map_err(|e| StoreError::Backend(BackendError::new(e)))?;
    tracing::info!("moved {imported} records from {} into the profile's database", dir.display());
    Ok(())
}

/// The first key after every key starting with `prefix` (`None`: no such key, or an empty
/// prefix).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kith_core::store::Store;

    use super::*;

    #[test]
    fn namespaces_are_apart_and_scans_page_through_everything_in_order() {
        let store = Store::memory();
        let a = Keyspace::new(store.side(), SideTree::Relay, b'A');
        let b = Keyspace::new(store.side(), SideTree::Relay, b'B');
        let media = Keyspace::new(store.side(), SideTree::Media, b'A');
        let mut batch = WriteBatch::default();
        for i in 0..1000u32 {
            batch.insert(&a, &i.to_be_bytes(), vec![1]);
        }
        batch.insert(&b, b"x", vec![2]);
        a.commit(batch);
        media.insert(b"x", vec![3]);
        store.side().flush().unwrap();
        a.insert(&5000u32.to_be_bytes(), vec![4]);
        a.remove(&3u32.to_be_bytes());

        let mut keys = Vec::new();
        a.scan(&[], &[], |k, _| {
            keys.push(u32::from_be_bytes(k.try_into().unwrap()));
            ControlFlow::Continue(())
        })
        .unwrap();
        let want: Vec<u32> = (0..1000).filter(|i| *i != 3).chain([5000]).collect();
        assert_eq!(keys, want);
        assert_eq!(b.get(b"x").unwrap(), Some(vec![2]));
        assert_eq!(media.get(b"x").unwrap(), Some(vec![3]));
        assert!(!b.contains_key(&0u32.to_be_bytes()).unwrap());

        let mut prefixed = 0;
        a.scan_prefix(&[0, 0, 1], |_, _| {
            prefixed += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(prefixed, 256);
        let mut first = None;
        a.scan(&10u32.to_be_bytes(), &[], |k, _| {
            first = Some(k.to_vec());
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(first, Some(10u32.to_be_bytes().to_vec()));
    }

    /// A relay's mailbox and a node's attachment records from the old layout (a sled
    /// database each) move into the profile's database, and the old databases go.
    #[test]
    fn records_of_the_old_separate_databases_move_into_the_profile_database() {
        let dir = tempfile::tempdir().unwrap();
        let (relay_dir, media_dir) = (dir.path().join("relay"), dir.path().join("media"));
        {
            let relay = sled::open(&relay_dir).unwrap();
            relay.open_tree("mailbox").unwrap().insert(b"m-key", b"mail".as_slice()).unwrap();
            relay.open_tree("prekeys").unwrap().insert(b"user", b"bundle".as_slice()).unwrap();
            relay.flush().unwrap();
            let media = sled::open(&media_dir).unwrap();
            media.open_tree("incoming").unwrap().insert(b"media-id", b"record".as_slice()).unwrap();
            media.flush().unwrap();
        }
        let store = Store::memory();
        import_legacy(&relay_dir, &store.side(), &LEGACY_RELAY).unwrap();
        import_legacy(&media_dir, &store.side(), &LEGACY_MEDIA).unwrap();
        let space = |tree, ns| Keyspace::new(store.side(), tree, ns);
        assert_eq!(space(SideTree::Relay, b'M').get(b"m-key").unwrap(), Some(b"mail".to_vec()));
        assert_eq!(space(SideTree::Relay, b'P').get(b"user").unwrap(), Some(b"bundle".to_vec()));
        assert_eq!(
            space(SideTree::Media, b'I').get(b"media-id").unwrap(),
            Some(b"record".to_vec())
        );
        assert!(!store.side().has_pending(), "flushed before the old databases went");
        assert!(!relay_dir.exists() && !media_dir.exists());
        // Nothing to move a second time.
        import_legacy(&relay_dir, &store.side(), &LEGACY_RELAY).unwrap();
    }

    /// The layouts [`hidden_side_key`] knows match what the relay and media stores write: the
    /// same records written to a plain store, their keys rebuilt with `hidden_side_key`, are
    /// the keys an encrypted store holds.
    #[test]
    fn the_migration_layouts_match_the_live_key_builders() {
        use kith_core::store::{DatabaseKey, MemoryBackend, RawWrite, Tree};
        use kith_protocol::{ChunkHash, MediaId, MessageId};

        let write_all = |store: &Store| {
            let side = store.side();
            let mut relay = crate::relay::store::RelayStore::open(side.clone()).unwrap();
            let (recipient, id) = (UserId([0x42; 32]), MessageId([7; 16]));
            relay.deposit(&recipient, &id, b"envelope", 1_000).unwrap();
            let index = Keyspace::new(side.clone(), SideTree::Relay, b'B');
            let dir = tempfile::tempdir().unwrap();
            let mut blobs = crate::relay::blobs::BlobStore::open(dir.path(), index).unwrap();
            blobs.commit(&recipient, &ChunkHash([9; 32]), 10, 1_000).unwrap();
            let media = crate::media::store::MediaStore::open(side.clone());
            media.put_member_uploads(
                &MediaId([5; MediaId::LEN]),
                &UserId([0x43; 32]),
                &crate::media::store::RelayUploads::default(),
            );
            store.dump().unwrap()
        };
        let side_keys = |dump: &[RawWrite]| -> Vec<(Tree, Vec<u8>)> {
            let mut keys: Vec<(Tree, Vec<u8>)> = dump
                .iter()
                .filter(|(t, _, _)| matches!(t, Tree::Relay | Tree::Media))
                .map(|(t, k, _)| (*t, k.clone()))
                .collect();
            keys.sort();
            keys
        };
        let key = DatabaseKey::from_bytes(&mut [3; 32]);
        let sealed = Store::open_sealed(Box::new(MemoryBackend::new()), &key).unwrap();
        let plain = Store::memory();
        let written = side_keys(&write_all(&sealed));
        let plain_keys = side_keys(&write_all(&plain));
        assert_eq!(plain_keys.len(), 6, "mail, its id and expiry, blob and expiry, upload");
        let target = Store::open_sealed(Box::new(MemoryBackend::new()), &key).unwrap();
        let mut rebuilt: Vec<(Tree, Vec<u8>)> = plain_keys
            .iter()
            .map(|(tree, k)| {
                let side_tree =
                    if *tree == Tree::Relay { SideTree::Relay } else { SideTree::Media };
                (*tree, hidden_side_key(&target.side(), side_tree, k))
            })
            .collect();
        rebuilt.sort();
        assert_eq!(rebuilt, written);
        assert_ne!(written, plain_keys, "ids are hidden");
    }
}
