//! What encryption at rest costs, side by side in one run: the same work on a sled store in
//! the clear and on one sealed under a database key (values XChaCha20-Poly1305, ids in keys
//! hashed).
//!
//! - **Store throughput**: 1 KiB records (as a message is) committed and made durable, one
//!   flush per record (every record waits for its fsync: the floor, measured alone in the same
//!   run) and 100 records per flush (the node's group commit under load).
//! - **1:1 delivery throughput**: two engines on sled databases exchange 1 KiB messages in
//!   bursts of 50 per turn (sender, receiver, acknowledgements and receipts, every turn's
//!   writes made durable), until all are delivered.
//!
//! Each configuration runs three times, alternating, and the median is shown.
//!
//! Run with `cargo bench -p kith-core --bench at_rest`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::time::Instant;

use kith_core::store::{DatabaseKey, SideTree, Store};
use kith_core::testing::Net;

const RECORD: usize = 1024;
const REPEATS: usize = 3;

fn open(dir: &std::path::Path, sealed: bool) -> Store {
    if sealed {
        Store::open_sled_sealed(dir, &DatabaseKey::from_bytes(&mut [9; 32])).unwrap()
    } else {
        Store::open(dir).unwrap()
    }
}

/// Records per second committed and made durable, `per_flush` at a time.
fn store_throughput(sealed: bool, records: usize, per_flush: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), sealed);
    let side = store.side();
    let value = vec![0x5a; RECORD];
    let conversation = [0x11; 32];
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < records as u64 {
        let mut writes = Vec::with_capacity(per_flush);
        for _ in 0..per_flush {
            // A conversation's pseudonym ‖ seq, as the node builds its keys.
            let mut key = side.pseudonym(&conversation).to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            writes.push((SideTree::Media, key, Some(value.clone())));
            seq += 1;
        }
        side.commit(writes);
        side.flush().unwrap();
    }
    records as f64 / start.elapsed().as_secs_f64()
}

/// Durable small writes per second to a plain file (write + fdatasync): the floor of a flush.
fn fsync_floor(ops: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("floor")).unwrap();
    let start = Instant::now();
    for _ in 0..ops {
        file.write_all(&[0u8; 64]).unwrap();
        file.sync_data().unwrap();
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Messages per second from one engine to another, both on sled, `burst` per turn.
fn delivery_throughput(sealed: bool, messages: usize, burst: usize) -> f64 {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let paths = [dirs.0.path(), dirs.1.path()];
    let mut net = if sealed { Net::with_sealed_sled(&paths, 7) } else { Net::with_sled(&paths, 7) };
    net.introduce_all();
    let text = "x".repeat(RECORD);
    for _ in 0..5 {
        net.send_text(0, 1, &text);
        net.run();
    }
    let start = Instant::now();
    let mut sent = 0;
    while sent < messages {
        for _ in 0..burst.min(messages - sent) {
            net.send_text(0, 1, &text);
            sent += 1;
        }
        net.run();
    }
    messages as f64 / start.elapsed().as_secs_f64()
}

/// Nanoseconds XChaCha20-Poly1305 takes to seal one 1 KiB record (the AEAD alone, as the
/// sealed store uses it: the floor of what sealing a record can cost).
fn aead_ns(seals: usize) -> f64 {
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let value = vec![0x5au8; RECORD];
    let mut out = vec![0u8; RECORD];
    let start = Instant::now();
    for i in 0..seals {
        let mut nonce = [0u8; 24];
        nonce[16..].copy_from_slice(&(i as u64).to_be_bytes());
        let buffer = InOutBuf::new(&value[..], &mut out[..]).unwrap();
        let tag = cipher.encrypt_inout_detached((&nonce).into(), b"tree and key", buffer).unwrap();
        std::hint::black_box(tag);
    }
    start.elapsed().as_nanos() as f64 / seals as f64
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Runs `measure` for the clear and the sealed store, alternating, and returns the medians.
fn side_by_side(measure: impl Fn(bool) -> f64) -> (f64, f64) {
    let (mut clear, mut sealed) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        clear.push(measure(false));
        sealed.push(measure(true));
    }
    (median(clear), median(sealed))
}

fn main() {
    // `cargo test --benches` runs this too: a quick pass that checks it works.
    let quick = std::env::args().any(|a| a == "--test") || std::env::var_os("KITH_QUICK").is_some();
    let scale = if quick { 20 } else { 1 };
    println!("encryption at rest, side by side (median of {REPEATS} alternating runs)\n");
    println!("{:<44} {:>12} {:>12} {:>8}", "", "clear", "sealed", "ratio");
    let floor = median((0..REPEATS).map(|_| fsync_floor(2_000 / scale)).collect());
    for (label, records, per_flush) in [
        ("store: 1 KiB records/s, 1 per flush", 2_000 / scale, 1),
        ("store: 1 KiB records/s, 100 per flush", 100_000 / scale, 100),
    ] {
        let (clear, sealed) = side_by_side(|s| store_throughput(s, records, per_flush));
        println!("{label:<44} {clear:>12.0} {sealed:>12.0} {:>7.2}x", sealed / clear);
    }
    let (clear, sealed) = side_by_side(|s| delivery_throughput(s, 3_000 / scale, 50));
    println!(
        "{:<44} {clear:>12.0} {sealed:>12.0} {:>7.2}x",
        "1:1 delivery: 1 KiB messages/s, 50 per turn",
        sealed / clear
    );
    println!("\nfsync floor (64-byte write + fdatasync): {floor:.0}/s");
    let aead = median((0..REPEATS).map(|_| aead_ns(100_000 / scale)).collect());
    println!("XChaCha20-Poly1305, sealing 1 KiB: {aead:.0} ns");
}
