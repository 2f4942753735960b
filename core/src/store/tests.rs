//! The write-back store against a model: every read sees every commit, a flush makes them
//! durable as one batch, and a failed flush loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Put(bool, u8, u8),
    Delete(bool, u8),
    Commit,
    Flush,
    Range { second: bool, start: u8, end: Option<u8>, reverse: bool, limit: usize },
}

fn tree(second: bool) -> Tree {
    if second { Tree::Outbox } else { Tree::Messages }
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (any::<bool>(), 0u8..24, any::<u8>()).prop_map(|(t, k, v)| Op::Put(t, k, v)),
        2 => (any::<bool>(), 0u8..24).prop_map(|(t, k)| Op::Delete(t, k)),
        2 => Just(Op::Commit),
        1 => Just(Op::Flush),
        2 => (any::<bool>(), 0u8..26, proptest::option::of(0u8..26), any::<bool>(), 0usize..30)
            .prop_map(|(second, start, end, reverse, limit)| Op::Range {
                second,
                start,
                end,
                reverse,
                limit
            }),
    ];
    proptest::collection::vec(op, 1..120)
}

/// Runs `ops` on `store` and on a model, checking every read; returns the model.
fn check(store: &mut Store, ops: &[Op]) -> BTreeMap<(Tree, Vec<u8>), Vec<u8>> {
    let mut model: BTreeMap<(Tree, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let mut staged: Vec<(Tree, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut batch = Batch::new();
    for op in ops {
        match op {
            Op::Put(t, k, v) => {
                batch.put_raw(tree(*t), &[*k], vec![*v; 3]);
                staged.push((tree(*t), vec![*k], Some(vec![*v; 3])));
            }
            Op::Delete(t, k) => {
                batch.delete(tree(*t), &[*k]);
                staged.push((tree(*t), vec![*k], None));
            }
            Op::Commit => {
                store.commit(std::mem::take(&mut batch)).unwrap();
                for (t, k, v) in staged.drain(..) {
                    match v {
                        Some(v) => model.insert((t, k), v),
                        None => model.remove(&(t, k)),
                    };
                }
            }
            Op::Flush => store.flush().unwrap(),
            Op::Range { second, start, end, reverse, limit } => {
                let t = tree(*second);
                let end_key = end.map(|e| vec![e]).unwrap_or_default();
                let got = store.range(t, &[*start], &end_key, *reverse, *limit).unwrap();
                let matching = model.iter().filter(|((mt, k), _)| {
                    *mt == t && k[0] >= *start && end.is_none_or(|e| k[0] < e)
                });
                let want: Vec<Entry> = if *reverse {
                    matching.rev().take(*limit).map(|((_, k), v)| (k.clone(), v.clone())).collect()
                } else {
                    matching.take(*limit).map(|((_, k), v)| (k.clone(), v.clone())).collect()
                };
                assert_eq!(got, want, "range {op:?}");
            }
        }
    }
    for ((t, k), v) in &model {
        assert_eq!(store.raw(*t, k).unwrap().as_ref(), Some(v));
    }
    // (The stamp of the storage layout an opened store carries is no part of the model.)
    let dump: Vec<RawWrite> =
        store.dump().unwrap().into_iter().filter(|(t, _, _)| *t != Tree::Meta).collect();
    let want: Vec<RawWrite> =
        model.iter().map(|((t, k), v)| (*t, k.clone(), Some(v.clone()))).collect();
    assert_eq!(dump, want);
    model
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn write_back_store_reads_match_a_model_on_memory_backend(ops in ops()) {
        check(&mut Store::memory(), &ops);
    }

    #[test]
    fn write_back_store_reads_match_a_model_when_sealed(ops in ops()) {
        check(&mut Store::memory_sealed().unwrap(), &ops);
    }

    #[test]
    fn write_back_store_reads_match_a_model_on_sled_and_survive_reopen(ops in ops()) {
        let dir = tempfile::tempdir().unwrap();
        let model = {
            let mut store = raw_sled(dir.path());
            let model = check(&mut store, &ops);
            store.flush().unwrap();
            model
        };
        let store = raw_sled(dir.path());
        let want: Vec<RawWrite> =
            model.iter().map(|((t, k), v)| (*t, k.clone(), Some(v.clone()))).collect();
        prop_assert_eq!(store.dump().unwrap(), want);
    }
}

#[test]
fn unflushed_commits_are_not_on_disk_and_flushed_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = raw_sled(dir.path());
        let mut batch = Batch::new();
        batch.put_raw(Tree::Messages, b"durable", b"1".to_vec());
        store.commit(batch).unwrap();
        store.flush().unwrap();
        let mut batch = Batch::new();
        batch.put_raw(Tree::Messages, b"volatile", b"2".to_vec());
        batch.delete(Tree::Messages, b"durable");
        store.commit(batch).unwrap();
        assert_eq!(store.raw(Tree::Messages, b"durable").unwrap(), None);
        // Dropped without a flush: as if the process died here.
    }
    let store = raw_sled(dir.path());
    assert_eq!(store.raw(Tree::Messages, b"durable").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.raw(Tree::Messages, b"volatile").unwrap(), None);
}

#[test]
fn sled_trees_do_not_leak_into_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = raw_sled(dir.path());
    let mut batch = Batch::new();
    for tree in Tree::ALL {
        batch.put_raw(tree, &[0xff, 0xff], vec![tree.prefix()]);
        batch.put_raw(tree, &[], vec![tree.prefix()]);
    }
    store.commit(batch).unwrap();
    store.flush().unwrap();
    for tree in Tree::ALL {
        let all = store.shared.backend().range(tree, &[], &[], false, usize::MAX).unwrap();
        assert_eq!(
            all,
            vec![(vec![], vec![tree.prefix()]), (vec![0xff, 0xff], vec![tree.prefix()])]
        );
        let back = store.shared.backend().range(tree, &[], &[], true, 1).unwrap();
        assert_eq!(back, vec![(vec![0xff, 0xff], vec![tree.prefix()])]);
    }
}

/// A backend whose writes fail while `failing` is set.
struct Flaky {
    inner: MemoryBackend,
    failing: Arc<AtomicBool>,
}

impl Backend for Flaky {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.range(tree, start, end, reverse, limit)
    }
    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Backend(BackendError::new(std::io::Error::from(
                std::io::ErrorKind::StorageFull,
            ))));
        }
        self.inner.apply(writes)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        self.inner.dump()
    }
}

#[test]
fn a_failed_flush_keeps_every_commit_for_the_next_one() {
    let failing = Arc::new(AtomicBool::new(true));
    let mut store =
        Store::new(Box::new(Flaky { inner: MemoryBackend::new(), failing: failing.clone() }));
    let mut batch = Batch::new();
    batch.put_raw(Tree::Outbox, b"a", b"1".to_vec());
    batch.put_raw(Tree::Seen, b"b", b"2".to_vec());
    store.commit(batch).unwrap();
    assert!(store.flush().is_err());
    assert!(store.has_pending());
    assert_eq!(store.raw(Tree::Outbox, b"a").unwrap(), Some(b"1".to_vec()));
    failing.store(false, Ordering::SeqCst);
    store.flush().unwrap();
    assert!(!store.has_pending());
    assert_eq!(store.shared.backend().get(Tree::Seen, b"b").unwrap(), Some(b"2".to_vec()));
}

/// A full disk fails the flush after the batch was applied; a power cut then loses what the
/// backend applied. Every write stays pending until a flush succeeds, so the next one makes
/// it durable (the store used to forget them once applied).
#[test]
fn writes_a_failed_flush_had_applied_are_applied_again_after_a_power_cut() {
    let backend = crate::testing::CrashableBackend::default();
    let mut store = Store::new(Box::new(backend.clone()));
    let mut batch = Batch::new();
    batch.put_raw(Tree::Outbox, b"a", b"1".to_vec());
    store.commit(batch).unwrap();
    store.flush().unwrap();
    let mut batch = Batch::new();
    batch.put_raw(Tree::Outbox, b"b", b"2".to_vec());
    batch.delete(Tree::Outbox, b"a");
    store.commit(batch).unwrap();
    backend.set_full(true);
    assert!(store.flush().is_err());
    assert!(store.has_pending());
    backend.crash();
    assert_eq!(store.raw(Tree::Outbox, b"b").unwrap(), Some(b"2".to_vec()), "reads see it");
    backend.set_full(false);
    store.flush().unwrap();
    assert!(!store.has_pending());
    backend.crash();
    assert_eq!(backend.get(Tree::Outbox, b"b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(backend.get(Tree::Outbox, b"a").unwrap(), None);
}

#[test]
fn a_batch_with_an_unencodable_record_changes_nothing() {
    let mut store = Store::memory();
    let mut batch = Batch::new();
    batch.put_raw(Tree::Outbox, b"a", b"1".to_vec());
    batch.error = Some(StoreError::Encode { record: "test" });
    assert!(store.commit(batch).is_err());
    assert!(!store.has_pending());
    assert_eq!(store.raw(Tree::Outbox, b"a").unwrap(), None);
}

#[test]
fn a_database_with_another_storage_layout_is_refused_not_misread() {
    // A new database is stamped with this build's layout and reopens.
    let dir = tempfile::tempdir().unwrap();
    let mut store = wait(|| Store::open(dir.path())).unwrap();
    store.commit(seq_batch(7)).unwrap();
    store.flush().unwrap();
    drop(store);
    assert_eq!(wait(|| Store::open(dir.path())).unwrap().next_seq().unwrap(), 7);

    // Another layout number.
    let other = tempfile::tempdir().unwrap();
    let backend = wait(|| SledBackend::open(other.path())).unwrap();
    let layout = (STORE_LAYOUT + 1).to_be_bytes().to_vec();
    backend.apply(&[(Tree::Meta, META_LAYOUT.to_vec(), Some(layout))]).unwrap();
    backend.flush().unwrap();
    drop(backend);
    assert_eq!(
        wait(|| Store::open(other.path())).err(),
        Some(StoreError::UnsupportedLayout { found: STORE_LAYOUT + 1, supported: STORE_LAYOUT })
    );

    // Data but no layout at all: an early development build. Refused, and left as it was.
    let early = tempfile::tempdir().unwrap();
    let backend = wait(|| SledBackend::open(early.path())).unwrap();
    backend.apply(&[(Tree::Messages, b"old".to_vec(), Some(b"old".to_vec()))]).unwrap();
    backend.flush().unwrap();
    drop(backend);
    assert_eq!(
        wait(|| Store::open(early.path())).err(),
        Some(StoreError::UnsupportedLayout { found: 0, supported: STORE_LAYOUT })
    );
    let backend = wait(|| SledBackend::open(early.path())).unwrap();
    assert_eq!(backend.get(Tree::Meta, META_LAYOUT).unwrap(), None);
}

/// `open`, again while the database is still locked by a handle just dropped (sled releases
/// its lock in the background; kith-core itself never waits).
fn wait<T>(mut open: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    for _ in 0..500 {
        match open() {
            Err(StoreError::Locked) => std::thread::sleep(std::time::Duration::from_millis(10)),
            result => return result,
        }
    }
    open()
}

fn seq_batch(next: u64) -> Batch {
    let mut batch = Batch::new();
    batch.put_seq(next);
    batch
}

/// A sled store without the layout stamp, for tests that compare the backend's whole contents.
fn raw_sled(path: &std::path::Path) -> Store {
    Store::new(Box::new(wait(|| SledBackend::open(path)).unwrap()))
}

#[test]
fn a_locked_database_is_reported_as_locked_by_kind_and_opens_once_free() {
    let dir = tempfile::tempdir().unwrap();
    let config = sled::Config::new().path(dir.path());
    let held = open_sled(&config, dir.path()).unwrap();
    // Another handle holds it: a typed refusal (kith-core does not wait; its caller may).
    assert!(matches!(open_sled(&config, dir.path()), Err(StoreError::Locked)));
    assert!(matches!(Store::open(dir.path()), Err(StoreError::Locked)));
    drop(held);
    // sled releases its lock on a background thread: once it did, the database opens.
    let mut reopened = open_sled(&config, dir.path());
    for _ in 0..200 {
        if !matches!(reopened, Err(StoreError::Locked)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        reopened = open_sled(&config, dir.path());
    }
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

/// The disk fills up under a sled store: the flush fails, the writes stay pending, nothing is
/// lost; once there is room again the next flush succeeds by itself (sled refuses every write
/// after an IO error, so the backend reopens it), and a reopen from disk finds every write.
#[test]
fn a_full_disk_fails_the_flush_and_the_store_resumes_when_there_is_room_again() {
    let disk = match crate::testing::SmallDisk::mount(8 * 1024 * 1024) {
        Ok(disk) => disk,
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "CI must run the full-disk test: {why}");
            eprintln!("\n*** SKIPPED the full-disk test: {why} (needs root) ***\n");
            return;
        }
    };
    let path = disk.path().join("db");
    let mut store = wait(|| Store::open(&path)).unwrap();
    let value = vec![7u8; 1024];
    let put = |store: &mut Store, from: u32, to: u32| {
        let mut batch = Batch::new();
        for i in from..to {
            batch.put_raw(Tree::Messages, &i.to_be_bytes(), value.clone());
        }
        store.commit(batch).unwrap();
    };
    put(&mut store, 0, 100);
    store.flush().unwrap();
    let filler = disk.fill();
    // Enough to need new space, whatever sled had preallocated.
    let mut failed = false;
    for round in 0..64 {
        put(&mut store, 100 + round * 100, 200 + round * 100);
        if store.flush().is_err() {
            failed = true;
            assert!(store.has_pending(), "a failed flush keeps its writes");
            break;
        }
    }
    assert!(failed, "the flush never failed on a full disk");
    // Still full: still failing, still nothing lost.
    assert!(store.flush().is_err());
    assert!(store.has_pending());
    std::fs::remove_file(filler).unwrap();
    store.flush().unwrap();
    assert!(!store.has_pending());
    let written =
        store.shared.backend().range(Tree::Messages, &[], &[], false, usize::MAX).unwrap().len();
    drop(store);
    let store = wait(|| Store::open(&path)).unwrap();
    let durable =
        store.shared.backend().range(Tree::Messages, &[], &[], false, usize::MAX).unwrap();
    assert_eq!(durable.len(), written);
    assert!(durable.iter().all(|(_, v)| *v == value));
}

/// The node's side trees share the engine's pending writes: one flush, by either, makes both
/// durable together, and a power cut before it loses both.
#[test]
fn a_side_store_commits_with_the_engine_in_one_flush() {
    let backend = crate::testing::CrashableBackend::default();
    let mut store = Store::new(Box::new(backend.clone()));
    let side = store.side();
    let mut batch = Batch::new();
    batch.put_raw(Tree::Outbox, b"e", b"engine".to_vec());
    store.commit(batch).unwrap();
    side.commit(vec![(SideTree::Relay, b"r".to_vec(), Some(b"relay".to_vec()))]);
    assert_eq!(side.get(SideTree::Relay, b"r").unwrap(), Some(b"relay".to_vec()));
    backend.crash();
    assert!(side.has_pending() && store.has_pending(), "pending in memory, not on disk");
    side.flush().unwrap();
    assert!(!store.has_pending());
    backend.crash();
    assert_eq!(backend.get(Tree::Outbox, b"e").unwrap(), Some(b"engine".to_vec()));
    assert_eq!(backend.get(Tree::Relay, b"r").unwrap(), Some(b"relay".to_vec()));
    assert_eq!(backend.get(Tree::Media, b"r").unwrap(), None, "side trees are apart");
}

/// A backend whose flush waits until the test lets it go.
struct Gated {
    inner: MemoryBackend,
    entered: std::sync::mpsc::SyncSender<()>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Backend for Gated {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.range(tree, start, end, reverse, limit)
    }
    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        self.inner.apply(writes)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.entered.send(()).unwrap();
        self.go.lock().unwrap().recv().unwrap();
        Ok(())
    }
    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        self.inner.dump()
    }
}

/// A commit made while another thread's flush is in flight is not reported durable by it: it
/// stays pending (reads see the newest value throughout) until the next flush.
#[test]
fn a_commit_made_during_a_flush_stays_pending_for_the_next() {
    let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
    let (go, go_rx) = std::sync::mpsc::channel();
    let mut store = Store::new(Box::new(Gated {
        inner: MemoryBackend::new(),
        entered: entered_tx,
        go: std::sync::Mutex::new(go_rx),
    }));
    let side = store.side();
    side.commit(vec![(SideTree::Media, b"k".to_vec(), Some(b"old".to_vec()))]);
    let flusher = std::thread::spawn({
        let side = side.clone();
        move || side.flush()
    });
    entered.recv().unwrap();
    // The flush in flight applied "old"; this commit comes after it took its writes.
    side.commit(vec![(SideTree::Media, b"k".to_vec(), Some(b"new".to_vec()))]);
    let mut batch = Batch::new();
    batch.put_raw(Tree::Seen, b"s", b"1".to_vec());
    store.commit(batch).unwrap();
    assert_eq!(side.get(SideTree::Media, b"k").unwrap(), Some(b"new".to_vec()));
    go.send(()).unwrap();
    flusher.join().unwrap().unwrap();
    assert!(store.has_pending(), "the later commits wait for the next flush");
    assert_eq!(side.get(SideTree::Media, b"k").unwrap(), Some(b"new".to_vec()));
    assert_eq!(store.shared.backend().get(Tree::Media, b"k").unwrap(), Some(b"old".to_vec()));
    // The next flush passes the gate at once (its signals are buffered).
    go.send(()).unwrap();
    store.flush().unwrap();
    entered.recv().unwrap();
    assert!(!store.has_pending());
    assert_eq!(store.shared.backend().get(Tree::Media, b"k").unwrap(), Some(b"new".to_vec()));
    assert_eq!(store.shared.backend().get(Tree::Seen, b"s").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn pruning_goes_round_the_seen_ids_forgetting_only_old_ones_and_drains_the_old_time_index() {
    const CUTOFF: UnixMillis = 1_000;
    let mut store = Store::memory();
    let sender = UserId([7; 32]);
    let ids: Vec<MessageId> = (0..25u8).map(|i| MessageId([i; 16])).collect();
    let old = |i: usize| i.is_multiple_of(3);
    let mut batch = Batch::new();
    for (i, id) in ids.iter().enumerate() {
        let at = if old(i) { CUTOFF - 1 } else { CUTOFF };
        if i % 2 == 0 {
            batch.mark_seen(&sender, id, at);
        } else {
            batch.mark_seen_group(&sender, id, at, true);
        }
    }
    // What layout 1 wrote beside each seen id: a time index, drained by pruning.
    for i in 0..12u8 {
        batch.put_raw(Tree::SeenByTime, &[i; 56], Vec::new());
    }
    store.commit(batch).unwrap();

    let cursor = |store: &Store| store.raw(Tree::Meta, META_SEEN_CURSOR).unwrap().unwrap();
    let mut forgotten = 0;
    // 25 ids, 10 per run: the third run reaches the end, the fourth starts over.
    for run in 0..3 {
        let mut batch = Batch::new();
        forgotten += store.prune_seen(CUTOFF, 10, &mut batch).unwrap();
        store.commit(batch).unwrap();
        assert_eq!(cursor(&store).is_empty(), run == 2, "run {run}");
    }
    assert_eq!(forgotten, ids.iter().enumerate().filter(|(i, _)| old(*i)).count());
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(store.is_seen(&sender, id).unwrap(), !old(i), "id {i}");
    }
    assert!(store.range(Tree::SeenByTime, &[], &[], false, 100).unwrap().is_empty());
    // Round again: nothing more is old.
    let mut batch = Batch::new();
    assert_eq!(store.prune_seen(CUTOFF, 100, &mut batch).unwrap(), 0);
}

#[test]
fn pruning_resumes_where_it_stopped_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sender = UserId([7; 32]);
    {
        let mut store = raw_sled(dir.path());
        let mut batch = Batch::new();
        for i in 0..30u8 {
            // The first 10 in key order are recent, the rest old.
            batch.mark_seen(&sender, &MessageId([i; 16]), if i < 10 { 2_000 } else { 1 });
        }
        store.commit(batch).unwrap();
        let mut batch = Batch::new();
        assert_eq!(store.prune_seen(1_000, 10, &mut batch).unwrap(), 0);
        store.commit(batch).unwrap();
        store.flush().unwrap();
    }
    // A process that lives for one upkeep run each time still gets round the whole set.
    let store = raw_sled(dir.path());
    let mut batch = Batch::new();
    assert_eq!(store.prune_seen(1_000, 10, &mut batch).unwrap(), 10, "it started over");
}

#[test]
fn a_flush_with_nothing_pending_asks_nothing_of_the_disk() {
    let backend = crate::testing::CrashableBackend::default();
    let mut store = Store::new(Box::new(backend.clone()));
    backend.set_full(true);
    store.flush().unwrap();
    let mut batch = Batch::new();
    batch.put_raw(Tree::Messages, b"k", b"v".to_vec());
    store.commit(batch).unwrap();
    assert!(store.flush().is_err(), "the full disk fails the flush of a write");
    assert!(store.has_pending());
    backend.set_full(false);
    store.flush().unwrap();
    let durable = backend.durable_writes();
    assert!(durable.0 >= 1);
    store.flush().unwrap();
    assert_eq!(backend.durable_writes(), durable, "nothing more asked of the disk");
}

// --- encryption at rest ---

fn key(byte: u8) -> DatabaseKey {
    DatabaseKey::from_bytes(&mut [byte; 32])
}

/// A shared in-memory backend: the test reads and writes "the disk" under the sealed store.
#[derive(Clone, Default)]
struct Disk(Arc<MemoryBackend>);

impl Backend for Disk {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(tree, key)
    }
    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.0.range(tree, start, end, reverse, limit)
    }
    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        self.0.apply(writes)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        self.0.dump()
    }
}

fn contact(byte: u8, name: &str) -> Contact {
    let mut contact = Contact::new(UserId([byte; 32]), 0);
    contact.name = Some(name.to_owned());
    contact
}

#[test]
fn a_sealed_store_keeps_no_id_or_text_in_the_clear_and_reads_back_through_its_key() {
    let disk = Disk::default();
    let alice = UserId([0xa1; 32]);
    let group = GroupId([0x6b; 32]);
    {
        let mut store = Store::open_sealed(Box::new(disk.clone()), &key(1)).unwrap();
        let mut batch = Batch::new();
        batch.put_contact(&contact(0xa1, "Alice Liddell"));
        batch.put_raw(Tree::Messages, &conversation_key(&alice.0, 1), b"meet at noon".to_vec());
        batch.put_raw(Tree::SenderKeys, &member_key(&group, &alice), b"chains".to_vec());
        store.commit(batch).unwrap();
        store.flush().unwrap();
    }
    let needles: [&[u8]; 4] = [&alice.0, &group.0, b"Alice Liddell", b"meet at noon"];
    for (tree, k, v) in disk.dump().unwrap() {
        let v = v.unwrap();
        for needle in needles {
            let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
            assert!(!found(&k) && !found(&v), "{} holds a secret in the clear", tree.name());
        }
    }
    let store = Store::open_sealed(Box::new(disk.clone()), &key(1)).unwrap();
    assert_eq!(store.contact(&alice).unwrap().unwrap().name.as_deref(), Some("Alice Liddell"));
    let messages = store.prefixed(Tree::Messages, &alice.0, false, 10).unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1, b"meet at noon");
    assert_eq!(store.chain_holders(&group).unwrap(), vec![alice], "member ids come back");
}

#[test]
fn swapped_sealed_values_fail_authentication_instead_of_reading_as_the_other_record() {
    let disk = Disk::default();
    {
        let mut store = Store::open_sealed(Box::new(disk.clone()), &key(2)).unwrap();
        let mut batch = Batch::new();
        batch.put_contact(&contact(1, "one"));
        batch.put_contact(&contact(2, "two"));
        store.commit(batch).unwrap();
        store.flush().unwrap();
    }
    let entries = disk.range(Tree::Contacts, &[], &[], false, 10).unwrap();
    assert_eq!(entries.len(), 2);
    let (first, second) = (&entries[0], &entries[1]);
    disk.apply(&[
        (Tree::Contacts, first.0.clone(), Some(second.1.clone())),
        (Tree::Contacts, second.0.clone(), Some(first.1.clone())),
    ])
    .unwrap();
    let store = Store::open_sealed(Box::new(disk.clone()), &key(2)).unwrap();
    for byte in [1, 2] {
        assert_eq!(
            store.contact(&UserId([byte; 32])).unwrap_err(),
            StoreError::Unauthentic { tree: "contacts" }
        );
    }
    // Moved to another tree under the same key: refused too.
    disk.apply(&[(Tree::Sessions, first.0.clone(), Some(first.1.clone()))]).unwrap();
    assert!(matches!(
        store.range(Tree::Sessions, &[], &[], false, 10),
        Err(StoreError::Unauthentic { tree: "sessions" })
    ));
}

#[test]
fn a_sealed_database_opens_only_with_its_key_and_never_as_plaintext() {
    let disk = Disk::default();
    {
        let mut store = Store::open_sealed(Box::new(disk.clone()), &key(3)).unwrap();
        let mut batch = Batch::new();
        batch.put_contact(&contact(1, "one"));
        store.commit(batch).unwrap();
        store.flush().unwrap();
    }
    let before = disk.dump().unwrap();
    assert_eq!(
        Store::open_sealed(Box::new(disk.clone()), &key(4)).unwrap_err(),
        StoreError::Unauthentic { tree: "meta" }
    );
    assert_eq!(Store::open_backend(Box::new(disk.clone())).unwrap_err(), StoreError::Encrypted);
    assert_eq!(disk.dump().unwrap(), before, "a failed open changes nothing");
    // And a plaintext database is not taken for a sealed one.
    let plain = Disk::default();
    drop(Store::open_backend(Box::new(plain.clone())).unwrap());
    assert_eq!(
        Store::open_sealed(Box::new(plain), &key(3)).unwrap_err(),
        StoreError::Unauthentic { tree: "meta" }
    );
}
