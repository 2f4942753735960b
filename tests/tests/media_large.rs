//! A 64 MiB attachment between two nodes on 127.0.0.1, alone in its test binary so that the
//! process's peak memory belongs to this transfer only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::time::Duration;

use kith_node::media::MediaEvent;
use kith_node::{Node, NodeEvent};
use kith_tests::TestNode;

const LEN: usize = 64 * 1024 * 1024;

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_file_arrives_byte_identical_and_memory_stays_far_below_its_size() {
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = Node::create(TestNode::config(bob_dir.path(), alice.node.addresses().await.unwrap()))
        .await
        .unwrap();
    alice.node.add_contact(&bob.contact_string(), "bob").await.unwrap();

    let files = tempfile::tempdir().unwrap();
    let path = kith_tests::random_file(files.path(), "archive.tar", LEN).unwrap();

    // Peak RSS from here on (writing 5 to clear_refs resets VmHWM to the current RSS).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let baseline = status_kib("VmRSS:");
    let mut events = bob.subscribe();
    let sent = alice.node.send_file(bob.user_id(), &path, None).await.unwrap();
    let saved = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Media(MediaEvent::Saved { media, path, .. }))
                    if media == sent.media =>
                {
                    return path;
                }
                Ok(NodeEvent::Media(MediaEvent::Failed { reason, .. })) => panic!("{reason}"),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the file did not arrive in time");
    let growth_mib = status_kib("VmHWM:").saturating_sub(baseline) / 1024;
    println!(
        "peak RSS grew by {growth_mib} MiB for a {} MiB file (sender and receiver)",
        LEN >> 20
    );

    assert_eq!(
        kith_tests::blake3_file(&saved).unwrap(),
        kith_tests::blake3_file(&path).unwrap(),
        "the file differs"
    );
    // Both nodes together hold a few chunks at a time: the sealed copy and the download stream
    // through 512 KiB buffers (16 chunks in flight per download, one per fetch stream served).
    assert!(growth_mib < 32, "peak RSS grew by {growth_mib} MiB for a 64 MiB file");
    bob.shutdown().await.unwrap();
}
