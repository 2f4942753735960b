//! Real Kith nodes on 127.0.0.1 (mDNS off): delivery, discovery by PeerId, restarts, events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kith_node::Node;
use kith_node::kith_core::engine::{Command, Event};
use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_protocol::content::{Body, PresenceStatus, TypingState};
use kith_tests::{EventLog, TestNode, eventually};

const WAIT: Duration = Duration::from_secs(60);

async fn pair() -> (TestNode, TestNode) {
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob = TestNode::start(alice.node.addresses().await.unwrap()).await.unwrap();
    alice.node.add_contact(&bob.node.contact_string(), "bob").await.unwrap();
    bob.node.add_contact(&alice.node.contact_string(), "alice").await.unwrap();
    (alice, bob)
}

fn text(body: &Option<Body>) -> &str {
    match body {
        Some(Body::Text(t)) => &t.body,
        _ => "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_a_thousand_messages_each_way_exactly_once_with_receipts() {
    const N: usize = 1000;
    let (alice, bob) = pair().await;
    let (alice_log, bob_log) = (EventLog::record(&alice.node), EventLog::record(&bob.node));
    let started = Instant::now();
    let (a, b) = (alice.node.clone(), bob.node.clone());
    let (to_bob, to_alice) = (bob.node.user_id(), alice.node.user_id());
    let send_a = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..N {
            ids.push((a.send_text(to_bob, format!("a{i}")).await.unwrap(), format!("a{i}")));
        }
        ids
    });
    let send_b = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..N {
            ids.push((b.send_text(to_alice, format!("b{i}")).await.unwrap(), format!("b{i}")));
        }
        ids
    });
    let (sent_a, sent_b) = (send_a.await.unwrap(), send_b.await.unwrap());
    for (log, count) in [(&bob_log, N), (&alice_log, N)] {
        eventually(WAIT, "all messages", || async {
            Ok((log.messages().len() >= count).then_some(()))
        })
        .await
        .unwrap();
    }
    let elapsed = started.elapsed();

    for (sent, sender, log) in [(&sent_a, &alice.node, &bob_log), (&sent_b, &bob.node, &alice_log)]
    {
        let received = log.messages();
        assert_eq!(received.len(), N, "duplicates delivered");
        let by_id: HashMap<_, _> =
            received.iter().map(|m| (m.id, text(&m.body).to_owned())).collect();
        assert_eq!(by_id.len(), N);
        for (id, body) in sent {
            assert_eq!(by_id.get(id), Some(body), "message {id} missing or altered");
        }
        // Receipts come back: every message ends Delivered.
        let sender = sender.clone();
        let ids: Vec<_> = sent.iter().map(|(id, _)| *id).collect();
        eventually(WAIT, "delivered statuses", || {
            let (sender, ids) = (sender.clone(), ids.clone());
            async move {
                for id in ids {
                    if sender.message(id).await?.unwrap().status != MessageStatus::Delivered {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await
        .unwrap();
    }
    // Bob reads everything: Alice's messages end Read.
    let ids: Vec<_> = sent_a.iter().map(|(id, _)| *id).collect();
    for chunk in ids.chunks(200) {
        bob.node
            .command(Command::MarkRead { peer: alice.node.user_id(), ids: chunk.to_vec() })
            .await
            .unwrap();
    }
    let node = alice.node.clone();
    eventually(WAIT, "read statuses", || {
        let (node, ids) = (node.clone(), ids.clone());
        async move {
            for id in ids {
                if node.message(id).await?.unwrap().status != MessageStatus::Read {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await
    .unwrap();
    assert_eq!((alice_log.lagged(), bob_log.lagged()), (0, 0));
    println!("{} messages each way delivered exactly once in {elapsed:?}", N);
    alice.node.shutdown().await.unwrap();
    bob.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_ten_nodes_each_knowing_one_bootstrap_reach_each_other_by_peer_id_alone() {
    let mut nodes = vec![TestNode::start(vec![]).await.unwrap()];
    for i in 1..10 {
        // A chain: node i knows only node i - 1.
        let bootstrap = nodes[i - 1].node.addresses().await.unwrap();
        nodes.push(TestNode::start(bootstrap).await.unwrap());
    }
    let (first, last) = (&nodes[0].node, &nodes[9].node);
    // The last node was given only node 8's address. (It may already be connected to the first:
    // its own Kademlia bootstrap walks the chain and can dial it, which is still finding it
    // through the DHT, so connectedness is no precondition here.)
    // Only the peer ids: no address, no name needed.
    let to_first = last.resolve(&first.peer_id().to_string()).await.unwrap();
    let to_last = first.resolve(&format!("kith:{}", last.peer_id())).await.unwrap();
    let first_log = EventLog::record(first);
    let last_log = EventLog::record(last);
    let ping = last.send_text(to_first, "found you through the DHT").await.unwrap();
    assert_eq!(
        last.wait_for_status(ping, MessageStatus::Delivered, WAIT).await.unwrap(),
        MessageStatus::Delivered
    );
    let pong = first.send_text(to_last, "and back").await.unwrap();
    assert_eq!(
        first.wait_for_status(pong, MessageStatus::Delivered, WAIT).await.unwrap(),
        MessageStatus::Delivered
    );
    assert_eq!(first_log.messages().iter().map(|m| m.id).collect::<Vec<_>>(), [ping]);
    assert_eq!(last_log.messages().iter().map(|m| m.id).collect::<Vec<_>>(), [pong]);
    for n in &nodes {
        n.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_both_nodes_session_continues_and_queued_message_arrives_when_peer_returns() {
    let (mut alice, mut bob) = pair().await;
    let first = alice.node.send_text(bob.node.user_id(), "before restart").await.unwrap();
    alice.node.wait_for_status(first, MessageStatus::Delivered, WAIT).await.unwrap();
    let reply = bob.node.send_text(alice.node.user_id(), "got it").await.unwrap();
    bob.node.wait_for_status(reply, MessageStatus::Delivered, WAIT).await.unwrap();
    let safety = alice.node.safety_number(bob.node.user_id()).await.unwrap();
    // Bob has Alice's delivery receipt for his reply once she sends it, but she removes it from
    // her outbox only when his acknowledgement is back: wait for that before stopping him.
    for node in [&alice.node, &bob.node] {
        eventually(WAIT, "empty outbox", || {
            let node = node.clone();
            async move { Ok((node.outbox_len().await? == 0).then_some(())) }
        })
        .await
        .unwrap();
    }

    // Both stop. Alice comes back alone and writes while Bob is down.
    bob.node.shutdown().await.unwrap();
    alice.restart(vec![]).await.unwrap();
    // Every status the message takes is recorded: while Bob is down it may be retried, never
    // given up (no `Failed`), and it stays in the outbox.
    let alice_log = EventLog::record(&alice.node);
    let queued =
        alice.node.send_text(bob.node.user_id(), "sent while you were away").await.unwrap();
    assert_eq!(alice.node.message(queued).await.unwrap().unwrap().status, MessageStatus::Queued);
    assert_eq!(alice.node.outbox_len().await.unwrap(), 1);

    // Bob returns (knowing Alice's new address); the outbox drains once he is reachable.
    // (Delivery can happen while Bob is still starting, so check his history, not his events.)
    bob.restart(alice.node.addresses().await.unwrap()).await.unwrap();
    let status = alice.node.wait_for_status(queued, MessageStatus::Delivered, WAIT).await.unwrap();
    assert_eq!(status, MessageStatus::Delivered);
    // The log records on its own task: wait for it to have seen the last status too (reading
    // it at once raced with that task and sometimes missed the final event).
    let statuses = eventually(WAIT, "the log to record Delivered", || {
        let statuses: Vec<MessageStatus> = alice_log
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::StatusChanged { id, status, .. } if id == queued => Some(status),
                _ => None,
            })
            .collect();
        let done = statuses.contains(&MessageStatus::Delivered);
        async move { Ok(done.then_some(statuses)) }
    })
    .await
    .unwrap();
    assert!(!statuses.iter().any(|s| matches!(s, MessageStatus::Failed(_))), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&MessageStatus::Delivered), "{statuses:?}");
    let arrived =
        bob.node.message(queued).await.unwrap().expect("the queued message is in Bob's history");
    assert_eq!(text(&arrived.body), "sent while you were away");
    // Same session and identities: the safety number did not change, history is complete.
    assert_eq!(alice.node.safety_number(bob.node.user_id()).await.unwrap(), safety);
    let history = bob.node.history(alice.node.user_id(), None, 10).await.unwrap();
    assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), [first, reply, queued]);
    alice.node.shutdown().await.unwrap();
    bob.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_presence_reactions_edits_deletes_and_read_receipts_arrive_as_events() {
    let (alice, bob) = pair().await;
    let (alice_id, bob_id) = (alice.node.user_id(), bob.node.user_id());
    let id = alice.node.send_text(bob_id, "original").await.unwrap();
    alice.node.wait_for_status(id, MessageStatus::Delivered, WAIT).await.unwrap();
    let (alice_log, bob_log) = (EventLog::record(&alice.node), EventLog::record(&bob.node));

    bob.node.command(Command::Typing { to: alice_id, state: TypingState::Started }).await.unwrap();
    bob.node.command(Command::SetPresence { status: PresenceStatus::Away }).await.unwrap();
    bob.node
        .command(Command::React { to: alice_id, target: id, emoji: "🎉".into(), remove: false })
        .await
        .unwrap();
    bob.node.command(Command::MarkRead { peer: alice_id, ids: vec![id] }).await.unwrap();
    alice
        .node
        .command(Command::Edit { to: bob_id, target: id, text: "edited".into() })
        .await
        .unwrap();

    let has = |log: &EventLog, f: &dyn Fn(&Event) -> bool| log.events().iter().any(f);
    eventually(WAIT, "all events", || async {
        Ok((has(&alice_log, &|e| matches!(e, Event::Typing { peer, state: TypingState::Started } if *peer == bob_id))
            && has(&alice_log, &|e| matches!(e, Event::Presence { peer, status: PresenceStatus::Away, .. } if *peer == bob_id))
            && has(&alice_log, &|e| matches!(e, Event::MessageUpdated(m) if m.reactions.iter().any(|r| r.emoji == "🎉")))
            && has(&alice_log, &|e| matches!(e, Event::StatusChanged { id: i, status: MessageStatus::Read, .. } if *i == id))
            && has(&bob_log, &|e| matches!(e, Event::MessageUpdated(m) if m.id == id && text(&m.body) == "edited")))
        .then_some(()))
    })
    .await
    .unwrap();

    alice.node.command(Command::Delete { to: bob_id, target: id }).await.unwrap();
    eventually(WAIT, "the delete", || async {
        Ok(has(
            &bob_log,
            &|e| matches!(e, Event::MessageUpdated(m) if m.id == id && m.body.is_none()),
        )
        .then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(bob.node.message(id).await.unwrap().unwrap().body, None);
    alice.node.shutdown().await.unwrap();
    bob.node.shutdown().await.unwrap();
}

/// QUIC for real: two nodes that listen on QUIC only (no TCP at all) set up a session, chat
/// with receipts, and their connection is a QUIC one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_quic_only_chat_with_receipts() {
    let quic_only = |dir: &std::path::Path, bootstrap: Vec<kith_node::Multiaddr>| {
        let mut config = TestNode::config(dir, bootstrap);
        config.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
        config
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = Node::create(quic_only(a_dir.path(), vec![])).await.unwrap();
    let alice_addrs = alice.addresses().await.unwrap();
    assert!(alice_addrs.iter().all(|a| a.to_string().contains("/quic-v1")), "{alice_addrs:?}");
    let bob = Node::create(quic_only(b_dir.path(), alice_addrs)).await.unwrap();
    alice.add_contact(&bob.contact_string(), "bob").await.unwrap();
    bob.add_contact(&alice.contact_string(), "alice").await.unwrap();
    let id = alice.send_text(bob.user_id(), "over QUIC").await.unwrap();
    assert_eq!(
        alice.wait_for_status(id, MessageStatus::Delivered, WAIT).await.unwrap(),
        MessageStatus::Delivered
    );
    let reply = bob.send_text(alice.user_id(), "and back").await.unwrap();
    assert_eq!(
        bob.wait_for_status(reply, MessageStatus::Delivered, WAIT).await.unwrap(),
        MessageStatus::Delivered
    );
    let connections = alice.connections().await.unwrap();
    let to_bob: Vec<_> = connections.iter().filter(|c| c.peer == bob.peer_id()).collect();
    assert!(!to_bob.is_empty(), "{connections:?}");
    assert!(
        to_bob.iter().all(|c| c.address.to_string().contains("/quic-v1") && !c.relayed),
        "{to_bob:?}"
    );
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}
