//! Writes and bytes that reach the disk per 1:1 message, on each side, as the engine's store
//! hands them to its backend at each flush (after write-back coalescing): the figure the
//! storage issue asks for, beside the message's own size.
//!
//! Two engines on the simulated network (no loss), each on a backend that counts what its
//! flushes make durable. Two patterns: one message per turn (every send, ack and receipt is
//! its own flush: the worst case) and bursts of 50 messages per turn (what the node's group
//! commit does under load).
//!
//! Run with `cargo bench -p kith-core --bench writes`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use kith_core::testing::{Faults, Net, Storage};

const MESSAGES: usize = 1_000;
const PAYLOAD: usize = 1024;

struct Figures {
    writes: [f64; 2],
    bytes: [f64; 2],
    /// Per tree: writes per message on each side.
    by_tree: BTreeMap<&'static str, [f64; 2]>,
}

fn measure(burst: usize) -> Figures {
    let mut net = Net::new(2, Faults::NONE, 7);
    net.introduce_all();
    let text = "x".repeat(PAYLOAD);
    // Warm up: the session, the first receipts.
    for _ in 0..10 {
        net.send_text(0, 1, &text);
        net.run();
    }
    net.advance(10_000);
    let backend = |net: &Net, i: usize| match &net.nodes[i].storage {
        Storage::Crashable(backend) => backend.clone(),
        _ => unreachable!("the bench runs on crashable backends"),
    };
    let counts = |net: &Net| [0, 1].map(|i| backend(net, i).durable_writes());
    let trees = |net: &Net| [0, 1].map(|i| backend(net, i).durable_writes_by_tree());
    let before = counts(&net);
    let trees_before = trees(&net);
    let mut sent = 0;
    while sent < MESSAGES {
        for _ in 0..burst.min(MESSAGES - sent) {
            net.send_text(0, 1, &text);
            sent += 1;
        }
        net.run();
    }
    // Receipts owed and acknowledgements still to come.
    net.advance(10_000);
    let after = counts(&net);
    let trees_after = trees(&net);
    let per =
        |i: usize, f: fn((u64, u64)) -> u64| (f(after[i]) - f(before[i])) as f64 / MESSAGES as f64;
    let mut by_tree: BTreeMap<&'static str, [f64; 2]> = BTreeMap::new();
    for side in 0..2 {
        for (tree, (writes, _)) in &trees_after[side] {
            let earlier = trees_before[side].get(tree).map_or(0, |c| c.0);
            let entry = by_tree.entry(tree.name()).or_default();
            entry[side] = (writes - earlier) as f64 / MESSAGES as f64;
        }
    }
    by_tree.retain(|_, w| w[0] + w[1] > 0.0);
    Figures {
        writes: [per(0, |c| c.0), per(1, |c| c.0)],
        bytes: [per(0, |c| c.1), per(1, |c| c.1)],
        by_tree,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    println!(
        "\n{MESSAGES} messages of {PAYLOAD} bytes, sender → recipient, writes and bytes (keys and values) made durable per message\n"
    );
    println!(
        "| pattern | sender writes | recipient writes | total writes | sender bytes | recipient bytes | total bytes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut breakdowns = Vec::new();
    for (name, burst) in [("one message per turn", 1), ("50 messages per turn", 50)] {
        let f = measure(burst);
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
            f.writes[0],
            f.writes[1],
            f.writes[0] + f.writes[1],
            f.bytes[0],
            f.bytes[1],
            f.bytes[0] + f.bytes[1]
        );
        breakdowns.push((name, f.by_tree));
    }
    for (name, by_tree) in breakdowns {
        println!("\nwrites per message by tree, {name}\n");
        println!("| tree | sender | recipient |");
        println!("|---|---:|---:|");
        for (tree, [sender, recipient]) in by_tree {
            println!("| {tree} | {sender:.2} | {recipient:.2} |");
        }
    }
}
