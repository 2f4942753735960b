//! The real `kith relay` binary: its help documents every operator setting, and a relay killed
//! with SIGKILL again and again while deposits are in flight loses nothing it acknowledged and
//! delivers nothing twice.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::HashSet;
use std::time::Duration;

use kith_node::Node;
use kith_node::kith_core::model::{Direction, MessageStatus};
use kith_node::kith_protocol::content::Body;
use kith_tests::{RelayProcess, TestNode, free_port, kith_ok, meet_then_go_offline};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn relay_help_documents_every_operator_setting() {
    let dir = tempfile::tempdir().unwrap();
    let help = kith_ok(dir.path(), &["relay", "--help"]).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--bootstrap",
        "--max-messages-per-recipient",
        "--max-bytes-per-recipient",
        "--max-store-bytes",
        "--max-blob-bytes-per-recipient",
        "--max-blob-store-bytes",
        "--max-envelope-bytes",
        "--sender-rate",
        "--sender-burst",
        "--stranger-burst",
        "--stranger-per-hour",
        "--ttl",
        "--max-prekey-users",
        "--metrics",
        "--external-address",
        "--max-reservations",
        "--max-circuits",
        "--max-circuits-per-peer",
        "--max-circuit-bytes",
        "--max-circuit-duration",
    ] {
        assert!(help.contains(flag), "`kith relay --help` does not mention {flag}:\n{help}");
    }
}

/// Regression: a relay printed its addresses with `println!`, which panics once stdout is a
/// closed pipe (a supervisor that read the first line and went away): the relay died.
#[test]
fn a_relay_whose_stdout_reader_went_away_keeps_running() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = kith_tests::kith_command()
        .unwrap()
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["relay", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("kith relay"), "{first}");
    drop(stdout);
    std::thread::sleep(Duration::from_secs(2));
    let status = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.is_none(), "the relay exited when its stdout closed: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_repeatedly_mid_deposit_loses_no_acked_message_and_duplicates_none() {
    const N: usize = 120;
    let relay_dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut relay = RelayProcess::spawn(relay_dir.path(), port, &[]).unwrap();
    let relay_address = relay.address.clone();

    let bob_dir = tempfile::tempdir().unwrap();
    let bob_config = || {
        let mut c = TestNode::config(bob_dir.path(), vec![]);
        c.relays = vec![relay_address.clone()];
        c
    };
    let bob = Node::create(bob_config()).await.unwrap();
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_user = meet_then_go_offline(&alice.node, bob).await.unwrap();

    // Alice sends while the relay is killed with SIGKILL and restarted, six times over.
    let sender = {
        let alice = alice.node.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..N {
                ids.push(alice.send_text(bob_user, format!("m{i}")).await.unwrap());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ids
        })
    };
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        relay.kill();
        relay = RelayProcess::spawn(relay_dir.path(), port, &[]).unwrap();
        assert_eq!(relay.address, relay_address, "a restarted relay is the same peer");
    }
    let ids = sender.await.unwrap();
    // Every message is eventually acknowledged by the relay (Sent): Alice retries the ones
    // whose deposit was lost with a killed relay.
    for id in &ids {
        assert_eq!(
            alice.node.wait_for_status(*id, MessageStatus::Sent, WAIT).await.unwrap(),
            MessageStatus::Sent
        );
    }

    let bob = Node::start(bob_config()).await.unwrap();
    for id in &ids {
        assert_eq!(
            alice.node.wait_for_status(*id, MessageStatus::Delivered, WAIT).await.unwrap(),
            MessageStatus::Delivered
        );
    }
    let received: Vec<String> = bob
        .history(alice.node.user_id(), None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.direction == Direction::Incoming)
        .filter_map(|m| match m.body {
            Some(Body::Text(t)) => Some(t.body),
            _ => None,
        })
        .collect();
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "a message arrived twice");
    assert_eq!(received.len(), N + 1);
    bob.shutdown().await.unwrap();
}

/// An operator sees what their relay does without asking for it: connections, deposits and
/// refusals are logged at info by default (and without colour codes: not a terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_logs_connections_deposits_and_refusals_by_default() {
    let relay_dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let relay = RelayProcess::spawn(relay_dir.path(), port, &["--max-messages-per-recipient", "2"])
        .unwrap();
    let bob_dir = tempfile::tempdir().unwrap();
    let mut bob_config = TestNode::config(bob_dir.path(), vec![]);
    bob_config.relays = vec![relay.address.clone()];
    let bob = Node::create(bob_config).await.unwrap();
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_user = meet_then_go_offline(&alice.node, bob).await.unwrap();

    // Three messages for an offline Bob whose mailbox holds two.
    for i in 0..3 {
        alice.node.send_text(bob_user, format!("m{i}")).await.unwrap();
    }
    let deadline = std::time::Instant::now() + WAIT;
    let log = loop {
        let log = relay.log().join("\n");
        if log.contains("QuotaExceeded") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("connected (direct)"), "{log}");
    assert!(log.contains(" sealed envelope(s)"), "{log}");
    assert!(log.contains(", refused 1: QuotaExceeded"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in the relay's log");
}

/// Sealed sender: after a conversation in which each side wrote to the other through the
/// other's relay while it was offline, neither relay's log nor any file of its data dir holds
/// the sender's PeerId or user id (each relay knows its own user, the recipient, only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_learns_the_recipient_of_a_deposit_never_the_sender() {
    use kith_node::kith_core::identity::peer_id_of;

    let (ra_dir, rb_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ra = RelayProcess::spawn(ra_dir.path(), free_port().unwrap(), &[]).unwrap();
    let rb = RelayProcess::spawn(rb_dir.path(), free_port().unwrap(), &[]).unwrap();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path, relay: &RelayProcess| {
        let mut c = TestNode::config(dir, vec![]);
        c.relays = vec![relay.address.clone()];
        c
    };
    let alice = Node::create(config(alice_dir.path(), &ra)).await.unwrap();
    let bob = Node::create(config(bob_dir.path(), &rb)).await.unwrap();
    let (ua, ub) = (alice.user_id(), bob.user_id());

    // They meet (both online), each accepts the other: each holds the other's access key.
    let bob_user = meet_then_go_offline(&alice, bob).await.unwrap();
    // Bob is offline: Alice writes through his relay.
    let to_bob: Vec<_> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(alice.send_text(bob_user, format!("to bob {i}")).await.unwrap());
        }
        ids
    };
    for id in &to_bob {
        alice.wait_for_status(*id, MessageStatus::Sent, WAIT).await.unwrap();
    }
    let bob = Node::start(config(bob_dir.path(), &rb)).await.unwrap();
    for id in &to_bob {
        alice.wait_for_status(*id, MessageStatus::Delivered, WAIT).await.unwrap();
    }
    // Now Alice is offline: Bob writes through hers.
    alice.shutdown().await.unwrap();
    let to_alice = bob.send_text(ua, "to alice").await.unwrap();
    bob.wait_for_status(to_alice, MessageStatus::Sent, WAIT).await.unwrap();
    let alice = Node::start(config(alice_dir.path(), &ra)).await.unwrap();
    bob.wait_for_status(to_alice, MessageStatus::Delivered, WAIT).await.unwrap();
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();

    for (relay, dir, sender, recipient) in
        [(&rb, rb_dir.path(), ua, ub), (&ra, ra_dir.path(), ub, ua)]
    {
        let log = relay.log().join("\n");
        assert!(log.contains(" sealed envelope(s)"), "the relay held nothing: {log}");
        // Logs show a PeerId's last 8 characters: neither form of the sender's may appear.
        let peer = peer_id_of(&sender).unwrap().to_base58();
        let short = &peer[peer.len() - 8..];
        assert!(!log.contains(short), "the sender's PeerId is in the log:\n{log}");
        let bytes = peer_id_of(&sender).unwrap().to_bytes();
        for needle in [peer.as_bytes(), short.as_bytes(), &bytes, &sender.0] {
            assert!(!dir_holds(dir, needle), "the sender's id is in {}", dir.display());
        }
        // The recipient is its user: the relay knows it (a check that the search works).
        let known = peer_id_of(&recipient).unwrap().to_base58();
        assert!(log.contains(&known[known.len() - 8..]), "{log}");
    }
}

/// Whether any file under `dir` contains `needle`.
fn dir_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut files = vec![dir.to_owned()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            return true;
        }
    }
    false
}
