//! Store-and-forward with real nodes and relays on 127.0.0.1: offline delivery, first contact
//! while offline, redundancy, TTL, and what a relay holds on disk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::time::Duration;

use kith_node::kith_core::model::{Direction, MessageStatus};
use kith_node::kith_protocol::UserId;
use kith_node::kith_protocol::content::Body;
use kith_node::relay::RelayConfig;
use kith_node::{Node, NodeConfig};
use kith_tests::{
    TestNode, TestRelay, dir_contains, eventually, meet_then_go_offline, user_with_relays,
};
use libp2p::Multiaddr;

const WAIT: Duration = Duration::from_secs(60);

/// A relay with these settings, and what it holds.
struct Relay(TestRelay);

impl Relay {
    async fn start(settings: RelayConfig) -> Relay {
        Relay(TestRelay::start(settings).await.unwrap())
    }

    async fn address(&self) -> Multiaddr {
        self.0.address().await.unwrap()
    }

    async fn held(&self) -> u64 {
        self.0.usage().await.unwrap().envelopes
    }
}

impl std::ops::Deref for Relay {
    type Target = TestRelay;
    fn deref(&self) -> &TestRelay {
        &self.0
    }
}

/// A user node whose home relays are `relays`.
async fn user(dir: &std::path::Path, relays: Vec<Multiaddr>, create: bool) -> Node {
    user_with_relays(dir, relays, create).await.unwrap()
}

/// The texts `node` received from `from`, in the order it received them.
async fn texts(node: &Node, from: UserId) -> Vec<String> {
    node.history(from, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.direction == Direction::Incoming)
        .filter_map(|m| match m.body {
            Some(Body::Text(t)) => Some(t.body),
            _ => None,
        })
        .collect()
}

async fn wait_prekeys_uploaded(relay: &Relay) {
    eventually(WAIT, "the relay to hold Bob's prekeys", || async {
        Ok((relay.node.relay_usage().await?.unwrap().prekey_users > 0).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_two_hundred_messages_once_in_order_from_its_relay() {
    const N: usize = 200;
    let relay = Relay::start(RelayConfig::default()).await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = user(bob_dir.path(), vec![relay.address().await], true).await;
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_user = meet_then_go_offline(&alice.node, bob).await.unwrap();
    // Under load the first message may also have gone to the relay (its direct ack came after
    // the fallback's deadline): what the relay holds from before is not the test's.
    let before = relay.held().await;

    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(alice.node.send_text(bob_user, format!("offline {i}")).await.unwrap());
    }
    for id in &ids {
        let status = alice.node.wait_for_status(*id, MessageStatus::Sent, WAIT).await.unwrap();
        assert_eq!(status, MessageStatus::Sent);
    }
    assert_eq!(relay.held().await, before + N as u64);

    let bob = user(bob_dir.path(), vec![relay.address().await], false).await;
    for id in &ids {
        let status = alice.node.wait_for_status(*id, MessageStatus::Delivered, WAIT).await.unwrap();
        assert_eq!(status, MessageStatus::Delivered);
    }
    let mut expected: Vec<String> = vec!["hello".into()];
    expected.extend((0..N).map(|i| format!("offline {i}")));
    assert_eq!(texts(&bob, alice.node.user_id()).await, expected, "each once, in order");
    eventually(WAIT, "the relay to delete what Bob acknowledged", || async {
        Ok((relay.held().await == 0).then_some(()))
    })
    .await
    .unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_to_an_offline_stranger_arrives_through_prekeys_its_relay_serves() {
    let relay = Relay::start(RelayConfig::default()).await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = user(bob_dir.path(), vec![relay.address().await], true).await;
    wait_prekeys_uploaded(&relay).await;
    let contact = bob.contact_string();
    let bob_id = bob.user_id();
    bob.shutdown().await.unwrap();

    // Alice has never talked to Bob, and Bob is offline.
    let alice = TestNode::start(vec![]).await.unwrap();
    alice.node.add_contact(&contact, "bob").await.unwrap();
    let id = alice.node.send_text(bob_id, "nice to meet you").await.unwrap();
    assert_eq!(
        alice.node.wait_for_status(id, MessageStatus::Sent, WAIT).await.unwrap(),
        MessageStatus::Sent
    );
    // While the relay holds it (and the access key Alice hands Bob for her relays, sealed
    // sender): its files carry neither the text nor Bob's id (the mailbox is keyed by his
    // pseudonym in the relay's encrypted database).
    eventually(WAIT, "the message and Alice's access key at the relay", || async {
        Ok((relay.held().await == 2).then_some(()))
    })
    .await
    .unwrap();
    assert_no_plaintext(relay.dir.path(), &["nice to meet you"]);
    assert!(!dir_contains(relay.dir.path(), &bob_id.0), "the relay's files name the recipient");

    let bob = user(bob_dir.path(), vec![relay.address().await], false).await;
    assert_eq!(
        alice.node.wait_for_status(id, MessageStatus::Delivered, WAIT).await.unwrap(),
        MessageStatus::Delivered
    );
    assert_eq!(texts(&bob, alice.node.user_id()).await, ["nice to meet you"]);

    // The relay's disk holds ciphertext only.
    bob.shutdown().await.unwrap();
    relay.node.shutdown().await.unwrap();
    assert_no_plaintext(relay.dir.path(), &["nice to meet you"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_two_relays_down_for_good_nothing_is_lost() {
    let (r1, r2) =
        (Relay::start(RelayConfig::default()).await, Relay::start(RelayConfig::default()).await);
    let relays = vec![r1.address().await, r2.address().await];
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = user(bob_dir.path(), relays.clone(), true).await;
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_user = meet_then_go_offline(&alice.node, bob).await.unwrap();
    r2.node.shutdown().await.unwrap();

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(alice.node.send_text(bob_user, format!("m{i}")).await.unwrap());
    }
    for id in &ids {
        assert_eq!(
            alice.node.wait_for_status(*id, MessageStatus::Sent, WAIT).await.unwrap(),
            MessageStatus::Sent
        );
    }
    let bob = user(bob_dir.path(), relays, false).await;
    for id in &ids {
        assert_eq!(
            alice.node.wait_for_status(*id, MessageStatus::Delivered, WAIT).await.unwrap(),
            MessageStatus::Delivered
        );
    }
    let mut expected: Vec<String> = vec!["hello".into()];
    expected.extend((0..20).map(|i| format!("m{i}")));
    assert_eq!(texts(&bob, alice.node.user_id()).await, expected);
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_envelopes_are_purged_and_never_reported_delivered() {
    let mut settings = RelayConfig::default();
    // Long enough that a loaded machine checks the deposit before it expires.
    settings.ttl = Duration::from_secs(4);
    settings.purge_interval = Duration::from_millis(200);
    let relay = Relay::start(settings).await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = user(bob_dir.path(), vec![relay.address().await], true).await;
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_user = meet_then_go_offline(&alice.node, bob).await.unwrap();
    // A late copy of the first message may wait there too (see the test above).
    let before = relay.held().await;

    let late = alice.node.send_text(bob_user, "too late").await.unwrap();
    alice.node.wait_for_status(late, MessageStatus::Sent, WAIT).await.unwrap();
    assert_eq!(relay.held().await, before + 1);
    eventually(WAIT, "the purge", || async { Ok((relay.held().await == 0).then_some(())) })
        .await
        .unwrap();

    let fetched = relay.node.relay_usage().await.unwrap().unwrap().fetches_answered;
    let bob = user(bob_dir.path(), vec![relay.address().await], false).await;
    // Bob fetched his mailbox once he was back: whatever it held, he has taken and stored.
    eventually(WAIT, "Bob's mailbox fetch", || async {
        let usage = relay.node.relay_usage().await?.expect("a relay");
        Ok((usage.fetches_answered > fetched).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(texts(&bob, alice.node.user_id()).await, ["hello"], "an expired envelope arrived");
    assert_eq!(alice.node.message(late).await.unwrap().unwrap().status, MessageStatus::Sent);
    bob.shutdown().await.unwrap();
}

/// Fails if any file under `dir` contains one of `texts`.
pub fn assert_no_plaintext(dir: &std::path::Path, texts: &[&str]) {
    let mut files = vec![dir.to_owned()];
    let mut searched = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        searched += bytes.len();
        for text in texts {
            assert!(
                !bytes.windows(text.len()).any(|w| w == text.as_bytes()),
                "{} holds the plaintext {text:?}",
                path.display()
            );
        }
    }
    assert!(searched > 0, "nothing on disk to search");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_named_relays_messages_wait_at_the_relays_closest_to_the_recipient() {
    let r1 = Relay::start(RelayConfig::default()).await;
    let r2_dir = tempfile::tempdir().unwrap();
    let mut r2_config = NodeConfig::loopback_relay(r2_dir.path());
    r2_config.bootstrap = vec![r1.address().await];
    let r2 = Node::create(r2_config).await.unwrap();
    let bootstrap = vec![r1.address().await];
    // Alice and Bob are DHT clients (behind NAT, say) and name no relays.
    let client = |dir: &std::path::Path| {
        let mut c = TestNode::config(dir, bootstrap.clone());
        c.dht_server = false;
        c
    };
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = Node::create(client(alice_dir.path())).await.unwrap();
    let bob = Node::create(client(bob_dir.path())).await.unwrap();
    assert!(bob.contact_string().relays.is_empty());
    let bob_user = meet_then_go_offline(&alice, bob).await.unwrap();

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(alice.send_text(bob_user, format!("k{i}")).await.unwrap());
    }
    for id in &ids {
        assert_eq!(
            alice.wait_for_status(*id, MessageStatus::Sent, WAIT).await.unwrap(),
            MessageStatus::Sent
        );
    }
    // Both relays are the closest peers to Bob: each holds a copy.
    assert_eq!(r1.held().await, 5);
    assert_eq!(r2.relay_usage().await.unwrap().unwrap().envelopes, 5);

    let bob = Node::start(client(bob_dir.path())).await.unwrap();
    for id in &ids {
        assert_eq!(
            alice.wait_for_status(*id, MessageStatus::Delivered, WAIT).await.unwrap(),
            MessageStatus::Delivered
        );
    }
    let mut expected: Vec<String> = vec!["hello".into()];
    expected.extend((0..5).map(|i| format!("k{i}")));
    assert_eq!(texts(&bob, alice.user_id()).await, expected);
    eventually(WAIT, "both relays to be emptied", || async {
        let r2_held = r2.relay_usage().await?.map_or(0, |u| u.envelopes);
        Ok((r1.held().await == 0 && r2_held == 0).then_some(()))
    })
    .await
    .unwrap();
    bob.shutdown().await.unwrap();
    r2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_waits_says_why_the_relays_refused_it() {
    // A relay whose mailboxes hold nothing: every deposit is refused for the quota.
    let mut settings = RelayConfig::default();
    settings.max_messages_per_recipient = 0;
    let relay = Relay::start(settings).await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = user(bob_dir.path(), vec![relay.address().await], true).await;
    let alice = TestNode::start(vec![]).await.unwrap();
    meet_then_go_offline(&alice.node, bob).await.unwrap();

    let params =
        serde_json::json!({ "to": "bob", "text": "anyone?", "wait": "sent", "timeout_ms": 5000 });
    // The answer names the message, how far it got and why it got no further.
    let sent = kith_node::rpc::dispatch(&alice.node, "send", params).await.unwrap();
    assert_eq!(
        (sent["timed_out"].as_bool(), sent["status"].as_str()),
        (Some(true), Some("queued"))
    );
    assert_eq!(sent["id"].as_str().map(str::len), Some(32), "{sent}");
    let why = sent["why"].as_str().unwrap();
    assert!(why.contains("timed out after 5 s waiting for"), "{why}");
    assert!(why.contains("quota_exceeded"), "{why}");
    assert_eq!(relay.held().await, 0);
}
