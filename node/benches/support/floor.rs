//! The physical floor of a durable commit, measured in the bench's own run: the p50 of one
//! commit of Kith's own store (a 1 KiB record, then the durable flush every turn ends with:
//! sled's flush and `fdatasync`) on the disk the bench's nodes use.

use std::time::{Duration, Instant};

use kith_node::kith_core::store::{SideTree, Store};

/// Commits measured (after 20 to warm up).
const SAMPLES: usize = 300;

/// p50 of one durable commit of a 1 KiB record in a store under `dir`.
pub(crate) fn commit_p50(dir: &std::path::Path) -> Duration {
    let path = tempfile::tempdir_in(dir).unwrap();
    let store = Store::open(path.path()).unwrap();
    let side = store.side();
    let value = vec![0x5a; 1024];
    let mut times = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES + 20 {
        let start = Instant::now();
        side.commit(vec![(
            SideTree::Media,
            (i as u64).to_be_bytes().to_vec(),
            Some(value.clone()),
        )]);
        side.flush().unwrap();
        if i >= 20 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    times[times.len() / 2]
}
