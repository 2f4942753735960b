//! What a file sent to a group costs its sender: the bytes the sender serves for one recipient
//! (a direct attachment) beside groups of 2, 4 and 16 members, in one run on loopback.
//!
//! Every member but the sender fetches the file. Without sharing, the sender would serve one
//! sealed copy per member (15 copies for 16 members); Kith homes each chunk at one member
//! (`index mod members`), who fetches it from the sender and serves it to the others. The floor
//! is one sealed copy: every chunk has to leave the sender once. For each case the table gives
//! the bytes the sender served against that floor, what the other members served each other,
//! and the time from sending until the last member had saved the whole file.
//!
//! Run with `cargo bench -p kith-node --bench group_files` (`KITH_BENCH_MIB`, default 16;
//! `KITH_BENCH_SIZES`, default `2,4,16`).

#![allow(
    missing_docs,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::io::Write;
use std::time::{Duration, Instant};

use kith_node::kith_core::media::{CHUNK_BYTES, SEAL_OVERHEAD};
use kith_node::kith_protocol::{GroupId, MediaId};
use kith_node::media::MediaEvent;
use kith_node::{Events, Node, NodeConfig, NodeEvent};

#[path = "support/data.rs"]
mod data;
const WAIT: Duration = Duration::from_secs(300);

fn sizes() -> Vec<usize> {
    std::env::var("KITH_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![2, 4, 16])
}

/// `n` nodes, each connected to every other.
async fn start(n: usize, dirs: &[tempfile::TempDir]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for dir in dirs.iter().take(n) {
        nodes.push(Node::create(NodeConfig::loopback(dir.path())).await.unwrap());
    }
    for (i, a) in nodes.iter().enumerate() {
        for b in nodes.iter().skip(i + 1) {
            for address in b.addresses().await.unwrap() {
                a.connect(address).await.unwrap();
            }
        }
    }
    nodes
}

/// Polls `check` every 20 ms until it holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `media` to be saved by the node behind `events`.
async fn saved(events: &mut Events, media: MediaId) {
    loop {
        match events.recv().await {
            Ok(NodeEvent::Media(MediaEvent::Saved { media: m, .. })) if m == media => return,
            Ok(NodeEvent::Media(MediaEvent::Failed { media: m, reason, .. })) if m == media => {
                panic!("{reason}")
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// A group of `members` (the sender included), formed and with its sender keys out.
async fn group(nodes: &[Node]) -> GroupId {
    let others = nodes[1..].iter().map(Node::user_id).collect();
    let group = nodes[0].create_group("bench", others).await.unwrap();
    for node in nodes {
        until("the member list everywhere", || async {
            node.group(group).await.unwrap().is_some_and(|g| g.members.len() == nodes.len())
        })
        .await;
    }
    nodes[0].send_group_text(group, "hello").await.unwrap();
    for node in &nodes[1..] {
        until("the first message everywhere", || async {
            node.group_history(group, None, 10).await.unwrap().iter().any(|m| m.body.is_some())
        })
        .await;
    }
    group
}

struct Row {
    case: String,
    sender: u64,
    members: u64,
    seconds: f64,
}

/// Sends the file at `path` to one recipient (`group: false`) or to a group of `n`, and
/// measures what each side served and how long until the last recipient saved it.
async fn run(path: &std::path::Path, n: usize, as_group: bool) -> Row {
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start(n, &dirs).await;
    let group = if as_group {
        Some(group(&nodes).await)
    } else {
        nodes[0].add_contact(&nodes[1].contact_string(), "bob").await.unwrap();
        None
    };
    let mut events: Vec<Events> = nodes[1..].iter().map(Node::subscribe).collect();
    let before: Vec<u64> = nodes.iter().map(|n| n.media_served().bytes).collect();
    let start = Instant::now();
    let sent = match group {
        Some(group) => nodes[0].send_file_to_group(group, path, None).await.unwrap(),
        None => nodes[0].send_file(nodes[1].user_id(), path, None).await.unwrap(),
    };
    for events in &mut events {
        tokio::time::timeout(WAIT, saved(events, sent.media)).await.expect("every member saves");
    }
    let seconds = start.elapsed().as_secs_f64();
    let served: Vec<u64> =
        nodes.iter().zip(&before).map(|(n, b)| n.media_served().bytes - b).collect();
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    Row {
        case: if as_group {
            format!("group of {n} ({} fetch it)", n - 1)
        } else {
            "one recipient (direct)".into()
        },
        sender: served[0],
        members: served[1..].iter().sum(),
        seconds,
    }
}

fn main() {
    let mib: usize =
        std::env::var("KITH_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("bench.bin");
    let data = data::pseudo_random(mib << 20);
    std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
    let chunks = data.len().div_ceil(CHUNK_BYTES as usize) as u64;
    let floor = data.len() as u64 + chunks * SEAL_OVERHEAD as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut rows = vec![runtime.block_on(run(&path, 2, false))];
    for n in sizes() {
        rows.push(runtime.block_on(run(&path, n, true)));
    }
    let mib_of = |b: u64| b as f64 / f64::from(1u32 << 20);
    println!(
        "\n{mib} MiB file ({chunks} chunks), loopback; floor = one sealed copy from the sender\n"
    );
    println!(
        "| case | sender served (MiB) | vs floor | members served each other (MiB) | until the last saved it (s) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.1} | {:.2}x | {:.1} | {:.2} |",
            row.case,
            mib_of(row.sender),
            row.sender as f64 / floor as f64,
            mib_of(row.members),
            row.seconds
        );
    }
}
