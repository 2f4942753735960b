//! A full disk under a running node (its data directory on a small tmpfs, mounted by the test:
//! root, as the network-namespace tests are): a fault, not a loss.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kith_node::kith_core::engine::Event;
use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_core::testing::SmallDisk;
use kith_node::kith_protocol::MessageId;
use kith_node::{Node, NodeEvent, StorageStatus};
use kith_tests::{TestNode, eventually};

/// Every node event, with the time it came.
fn record(node: &Node) -> std::sync::Arc<std::sync::Mutex<Vec<(Instant, NodeEvent)>>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    let mut rx = node.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = rx.recv().await {
            sink.lock().unwrap().push((Instant::now(), event));
        }
    });
    log
}

/// Bob's disk fills up while Alice writes to him, then frees again: while it is full nothing
/// is acknowledged (Alice's messages stay unsent, Bob's node says its storage fails and answers
/// no read of his history), and once there is room Bob's node resumes by itself, without a
/// restart: every message arrives exactly once, every one is delivered, no receipt or envelope
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_every_acknowledgement_and_the_node_resumes_by_itself() {
    let disk = match SmallDisk::mount(24 * 1024 * 1024) {
        Ok(disk) => disk,
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "CI must run the full-disk test: {why}");
            eprintln!("\n*** SKIPPED the node full-disk test: {why} (needs root) ***\n");
            return;
        }
    };
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_dir = disk.path().join("bob");
    let bootstrap = alice.node.addresses().await.unwrap();
    let bob = Node::create(TestNode::config(&bob_dir, bootstrap)).await.unwrap();
    let bob_events = record(&bob);
    let alice_events = record(&alice.node);
    alice.node.add_contact(&bob.contact_string(), "bob").await.unwrap();
    bob.add_contact(&alice.node.contact_string(), "alice").await.unwrap();
    let first = alice.node.send_text(bob.user_id(), "hello").await.unwrap();
    alice
        .node
        .wait_for_status(first, MessageStatus::Delivered, Duration::from_secs(30))
        .await
        .unwrap();

    let mut sent: Vec<MessageId> = vec![first];
    for i in 0..10 {
        sent.push(alice.node.send_text(bob.user_id(), &format!("before {i}")).await.unwrap());
    }
    let filler = disk.fill();
    let filled = Instant::now();
    let mut during = Vec::new();
    for i in 0..20 {
        let id = alice.node.send_text(bob.user_id(), &format!("while full {i}")).await.unwrap();
        during.push(id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent.extend(&during);
    // Bob's node says so, and acknowledges nothing that is not durable.
    eventually(Duration::from_secs(10), "Bob's node reporting its storage failing", || async {
        let events = bob_events.lock().unwrap();
        Ok(events
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Storage(StorageStatus::Failing { .. })))
            .then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unsent = {
        let mut n = 0;
        for id in &during {
            let message = alice.node.message(*id).await.unwrap().unwrap();
            n += usize::from(message.status == MessageStatus::Queued);
        }
        n
    };
    // Reads wait for a durable state: Bob's history is not answered while the disk is full.
    let bob_reads = tokio::time::timeout(
        Duration::from_millis(500),
        bob.history(alice.node.user_id(), None, 100),
    )
    .await;
    assert!(bob_reads.is_err(), "Bob's history was answered while nothing could be saved");

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let all_delivered = eventually(Duration::from_secs(60), "every message delivered", || async {
        for id in &sent {
            let message = alice.node.message(*id).await?.unwrap();
            if message.status != MessageStatus::Delivered {
                return Ok(None);
            }
        }
        Ok(Some(Instant::now()))
    })
    .await
    .unwrap();

    let bob_events = bob_events.lock().unwrap().clone();
    let recovered = bob_events
        .iter()
        .find_map(|(at, e)| match e {
            NodeEvent::Storage(StorageStatus::Recovered { after }) => Some((*at, *after)),
            _ => None,
        })
        .expect("Bob's node tells its storage recovered");
    let mut arrivals: HashMap<MessageId, usize> = HashMap::new();
    for (_, event) in &bob_events {
        if let NodeEvent::Engine(Event::Message(m)) = event {
            *arrivals.entry(m.id).or_default() += 1;
        }
        if let NodeEvent::Engine(Event::Rejected { reason, .. }) = event {
            panic!("Bob refused an envelope: {reason:?}");
        }
    }
    for (_, event) in alice_events.lock().unwrap().iter() {
        if let NodeEvent::Engine(Event::Rejected { reason, .. }) = event {
            panic!("Alice refused an envelope (a receipt?): {reason:?}");
        }
    }
    for id in &sent[1..] {
        assert_eq!(arrivals.get(id), Some(&1), "message {id} arrived {:?} times", arrivals.get(id));
    }
    let history = bob.history(alice.node.user_id(), None, 100).await.unwrap();
    assert_eq!(history.len(), sent.len(), "Bob's history holds every message once");
    println!(
        "disk full for {:?}: {unsent} of {} messages sent meanwhile stayed unacknowledged; Bob's \
         node recovered {:?} after the disk was freed (storage failed for {:?} in all); every \
         message delivered {:?} after",
        freed - filled,
        during.len(),
        recovered.0.saturating_duration_since(freed),
        recovered.1,
        all_delivered - freed,
    );
    bob.shutdown().await.unwrap();
}
