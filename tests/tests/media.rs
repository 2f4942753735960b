//! Attachments between real nodes on 127.0.0.1: integrity, resumption, corrupt sources,
//! relays for offline senders, size limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_node::kith_core::identity::ContactString;
use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_protocol::UserId;
use kith_node::kith_protocol::content::Body;
use kith_node::media::{
    AttachmentState, MAX_UNCHECKPOINTED, MediaEvent, MediaFailure, PARALLEL_CHUNKS,
    TransferDirection,
};
use kith_node::relay::RelayConfig;
use kith_node::{Node, NodeConfig, NodeError, NodeEvent};
use kith_tests::{
    Daemon, TestNode, TestRelay, dir_contains, eventually, files_under, kith_ok, user_with_relays,
};
use libp2p::Multiaddr;

const WAIT: Duration = Duration::from_secs(120);

/// Every media event of a node, recorded in the background.
struct MediaLog {
    events: Arc<Mutex<Vec<MediaEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MediaLog {
    fn record(node: &Node) -> Self {
        let mut rx = node.subscribe();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(NodeEvent::Media(e)) => sink.lock().unwrap().push(e),
                    Ok(NodeEvent::Lagged { missed, .. }) => {
                        panic!("the media log lost {missed} events")
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Self { events, task }
    }

    fn events(&self) -> Vec<MediaEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Chunks served directly to the recipient (one event each, repeats included).
    fn served(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    MediaEvent::Progress { direction: TransferDirection::Sending, relay: None, .. }
                )
            })
            .count()
    }

    async fn saved(&self) -> PathBuf {
        eventually(WAIT, "the attachment to be saved", || async {
            for e in self.events() {
                match e {
                    MediaEvent::Saved { path, .. } => return Ok(Some(path)),
                    MediaEvent::Failed { reason, .. } => anyhow::bail!("failed: {reason}"),
                    _ => {}
                }
            }
            Ok(None)
        })
        .await
        .unwrap()
    }

    async fn failed(&self) -> MediaFailure {
        eventually(WAIT, "the attachment to fail", || async {
            Ok(self.events().into_iter().find_map(|e| match e {
                MediaEvent::Failed { reason, .. } => Some(reason),
                _ => None,
            }))
        })
        .await
        .unwrap()
    }
}

/// The path of the first attachment `node` saved (from its state, so nothing is missed
/// before a subscription).
async fn saved_by(node: &Node) -> PathBuf {
    eventually(WAIT, "the attachment to be saved", || async {
        for a in node.attachments(None).await? {
            match a.state {
                AttachmentState::Saved(path) => return Ok(Some(path)),
                AttachmentState::Failed(why) => anyhow::bail!("failed: {why}"),
                _ => {}
            }
        }
        Ok(None)
    })
    .await
    .unwrap()
}

/// Why the first attachment `node` gave up on failed.
async fn failure_of(node: &Node) -> String {
    eventually(WAIT, "the attachment to fail", || async {
        Ok(node.attachments(None).await?.into_iter().find_map(|a| match a.state {
            AttachmentState::Failed(why) => Some(why),
            _ => None,
        }))
    })
    .await
    .unwrap()
}

impl Drop for MediaLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    kith_tests::random_file(dir, name, len).unwrap()
}

fn blake3_file(path: &Path) -> blake3::Hash {
    kith_tests::blake3_file(path).unwrap()
}

/// Alice and Bob (Bob bootstraps from Alice; Alice has him as a contact).
async fn pair(bob_config: impl FnOnce(&mut NodeConfig)) -> (TestNode, Node, tempfile::TempDir) {
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_dir = tempfile::tempdir().unwrap();
    let mut config = TestNode::config(bob_dir.path(), alice.node.addresses().await.unwrap());
    bob_config(&mut config);
    let bob = Node::create(config).await.unwrap();
    alice.node.add_contact(&bob.contact_string(), "bob").await.unwrap();
    (alice, bob, bob_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_arrives_byte_identical_and_is_listed_with_its_path() {
    let (alice, bob, _bob_dir) = pair(|_| {}).await;
    let files = tempfile::tempdir().unwrap();
    let path = random_file(files.path(), "photo.jpg", 5 * 1024 * 1024 + 123);
    let bob_log = MediaLog::record(&bob);
    let alice_log = MediaLog::record(&alice.node);
    let sent = alice.node.send_file(bob.user_id(), &path, Some("look".into())).await.unwrap();
    assert_eq!((sent.chunks, sent.size), (11, 5 * 1024 * 1024 + 123));
    let saved = bob_log.saved().await;
    assert_eq!(blake3_file(&saved), blake3_file(&path));
    assert_eq!(saved.file_name().unwrap(), "photo.jpg");
    assert_eq!(alice_log.served(), 11, "each chunk served once");

    let listed = bob.attachments(Some(alice.node.user_id())).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, AttachmentState::Saved(saved.clone()));
    assert_eq!((listed[0].name.as_str(), listed[0].mime.as_str()), ("photo.jpg", "image/jpeg"));
    let message = bob.message(sent.message).await.unwrap().unwrap();
    match message.body {
        Some(Body::Media(m)) => assert_eq!(m.caption.as_deref(), Some("look")),
        other => panic!("not an attachment: {other:?}"),
    }
    // No partial file is left behind.
    let downloads: Vec<PathBuf> = files_under(saved.parent().unwrap());
    assert_eq!(downloads, [saved]);
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_above_the_maximum_is_refused_before_any_chunk_moves() {
    const MAX: u64 = 1024 * 1024;
    let (alice, bob, _bob_dir) = pair(|c| c.max_attachment_bytes = MAX).await;
    let files = tempfile::tempdir().unwrap();
    let big = random_file(files.path(), "big.bin", 2 * 1024 * 1024);

    // The recipient's limit: the manifest arrives, no chunk is asked for.
    let bob_log = MediaLog::record(&bob);
    let alice_log = MediaLog::record(&alice.node);
    let sent = alice.node.send_file(bob.user_id(), &big, None).await.unwrap();
    assert_eq!(bob_log.failed().await, MediaFailure::TooLarge { size: 2 * MAX, max: MAX });
    alice.node.wait_for_status(sent.message, MessageStatus::Delivered, WAIT).await.unwrap();
    // Bob refused the attachment on its manifest, before asking for any chunk: nothing can
    // have been served, and nothing will be.
    assert_eq!(alice_log.served(), 0, "a chunk moved");
    let listed = bob.attachments(None).await.unwrap();
    assert!(matches!(&listed[0].state, AttachmentState::Failed(why) if why.contains("maximum")));

    // The sender's own limit: refused before anything is sealed or queued.
    let small_sender = {
        let dir = tempfile::tempdir().unwrap();
        let mut config = TestNode::config(dir.path(), alice.node.addresses().await.unwrap());
        config.max_attachment_bytes = MAX;
        (Node::create(config).await.unwrap(), dir)
    };
    small_sender.0.add_contact(&bob.contact_string(), "bob").await.unwrap();
    let err = small_sender.0.send_file(bob.user_id(), &big, None).await.unwrap_err();
    assert!(
        matches!(err, NodeError::Media(MediaFailure::TooLarge { size, max: MAX }) if size == 2 * MAX),
        "{err}"
    );
    assert_eq!(small_sender.0.outbox_len().await.unwrap(), 0);
    assert!(files_under(&small_sender.1.path().join("media-sealed")).is_empty());
    bob.shutdown().await.unwrap();
}

/// A relay with default settings.
async fn relay() -> TestRelay {
    TestRelay::start(RelayConfig::default()).await.unwrap()
}

/// The chunk files `relay` holds for `user`, in name order.
/// The chunk files a relay holds for `user`, the only recipient it holds chunks for (their
/// directory is named by the recipient's pseudonym, never its id).
fn chunks_for(relay: &TestRelay, user: &UserId) -> Vec<PathBuf> {
    let root = relay.dir.path().join("relay-blobs");
    assert!(!root.join(user.to_string()).exists(), "a directory named by the recipient's id");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "one recipient");
    files_under(&dirs[0])
}

/// Bob, whose home relays are `relays`.
async fn bob_with_relays(dir: &Path, relays: Vec<Multiaddr>, create: bool) -> Node {
    user_with_relays(dir, relays, create).await.unwrap()
}

/// Alice meets Bob, Bob goes offline, Alice sends `len` random bytes, waits until every relay
/// holds every chunk, and goes offline too. Returns Bob's id, the file and Alice's log.
async fn send_while_bob_is_offline(
    relays: &[&TestRelay],
    bob_dir: &Path,
    files: &Path,
    len: usize,
) -> (UserId, PathBuf) {
    let addresses =
        futures::future::join_all(relays.iter().map(|r| async { r.address().await.unwrap() }))
            .await;
    let bob = bob_with_relays(bob_dir, addresses, true).await;
    let alice = TestNode::start(vec![]).await.unwrap();
    let bob_id = kith_tests::meet_then_go_offline(&alice.node, bob).await.unwrap();

    let path = random_file(files, "report.pdf", len);
    let log = MediaLog::record(&alice.node);
    let sent = alice.node.send_file(bob_id, &path, None).await.unwrap();
    alice.node.wait_for_status(sent.message, MessageStatus::Sent, WAIT).await.unwrap();
    eventually(WAIT, "every relay to hold every chunk", || async {
        let uploaded = log
            .events()
            .iter()
            .filter(|e| matches!(e, MediaEvent::Uploaded { media, .. } if *media == sent.media))
            .count();
        Ok((uploaded == relays.len()).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(log.served(), 0, "Bob is offline: nothing was served directly");
    alice.node.shutdown().await.unwrap();
    (bob_id, path)
}

/// Damages every chunk file in `chunks` in one of four ways: a flipped bit, cut short,
/// extended, or replaced by another chunk (reordered).
fn corrupt(chunks: &[PathBuf]) {
    let first = std::fs::read(&chunks[0]).unwrap();
    for (i, path) in chunks.iter().enumerate() {
        let mut data = std::fs::read(path).unwrap();
        match i % 4 {
            0 => {
                let middle = data.len() / 2;
                data[middle] ^= 0x01;
            }
            1 => data.truncate(data.len() - 1),
            2 => data.extend_from_slice(b"trailing"),
            _ => data.clone_from(&first),
        }
        std::fs::write(path, data).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_senders_file_comes_from_the_relays_past_a_corrupt_one() {
    let (r1, r2) = (relay().await, relay().await);
    let (bob_dir, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bob_id, path) =
        send_while_bob_is_offline(&[&r1, &r2], bob_dir.path(), files.path(), 6_000_000).await;

    // The relays hold ciphertext only: no 64-byte window of the file is on their disks.
    let plain = std::fs::read(&path).unwrap();
    for relay in [&r1, &r2] {
        assert_eq!(chunks_for(relay, &bob_id).len(), 12, "every chunk, once");
        for window in [&plain[..64], &plain[3_000_000..3_000_064], &plain[plain.len() - 64..]] {
            assert!(!dir_contains(relay.dir.path(), window), "plaintext on a relay's disk");
        }
    }
    corrupt(&chunks_for(&r1, &bob_id));

    let bob = bob_with_relays(
        bob_dir.path(),
        vec![r1.address().await.unwrap(), r2.address().await.unwrap()],
        false,
    )
    .await;
    let saved = saved_by(&bob).await;
    assert_eq!(blake3_file(&saved), blake3_file(&path), "the saved file differs");
    // Positive control for the search above: the saved file holds those bytes.
    assert!(dir_contains(saved.parent().unwrap(), &plain[3_000_000..3_000_064]));
    // The corrupt relay was asked (and what it served was refused: the file is right).
    let served = r1.usage().await.unwrap().blobs_served;
    assert!(served > 0, "the corrupt relay was never asked");
    // Once Bob has the file, the relays let go of it.
    eventually(WAIT, "the good relay to delete the chunks", || async {
        Ok((r2.usage().await?.blob_bytes == 0).then_some(()))
    })
    .await
    .unwrap();
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_source_is_corrupt_the_download_fails_clearly_and_writes_no_file() {
    let relay = relay().await;
    let (bob_dir, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bob_id, _) =
        send_while_bob_is_offline(&[&relay], bob_dir.path(), files.path(), 2_000_000).await;
    corrupt(&chunks_for(&relay, &bob_id));

    let bob = bob_with_relays(bob_dir.path(), vec![relay.address().await.unwrap()], false).await;
    let failure = failure_of(&bob).await;
    assert!(failure.contains("corrupt"), "{failure}");
    let downloads = bob_dir.path().join("downloads");
    assert_eq!(files_under(&downloads), Vec::<PathBuf>::new(), "a file was written");
    let listed = bob.attachments(None).await.unwrap();
    assert!(matches!(&listed[0].state, AttachmentState::Failed(_)), "{listed:?}");
    bob.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_midway_resumes_after_restart_without_fetching_verified_chunks_again() {
    // 256 chunks, killed once half are served: a regression that fetches verified chunks again
    // (at least 128 of them) stands well clear of what a kill may legitimately cost.
    const LEN: usize = 128 * 1024 * 1024;
    let alice = TestNode::start(vec![]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("bob");
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();
    let alice_address = alice.node.addresses().await.unwrap()[0].to_string();
    let args = [
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--dht-server",
        "--bootstrap",
        &alice_address,
    ];
    let mut bob = Daemon::spawn(&b, &args, &[]).unwrap();
    let contact: ContactString =
        kith_ok(&b, &["id"]).unwrap().lines().next().unwrap().parse().unwrap();
    alice.node.add_contact(&contact, "bob").await.unwrap();

    let files = tempfile::tempdir().unwrap();
    let path = random_file(files.path(), "video.mp4", LEN);
    let log = MediaLog::record(&alice.node);
    let sent = alice.node.send_file(contact.user, &path, None).await.unwrap();
    let chunks = sent.chunks as usize;
    assert_eq!(chunks, 256);
    eventually(WAIT, "half of the chunks to be served", || async {
        Ok((log.served() >= chunks / 2).then_some(()))
    })
    .await
    .unwrap();
    bob.kill();
    let saved = b.join("downloads").join("video.mp4");
    assert!(!saved.exists(), "the download finished before the kill");
    let before = log.served();
    assert!(before < chunks, "served {before} of {chunks} before the kill");

    let _bob = Daemon::spawn(&b, &args, &[]).unwrap();
    eventually(WAIT, "the download to complete after the restart", || async {
        Ok(saved.exists().then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(blake3_file(&saved), blake3_file(&path), "the resumed file differs");
    // Fetched again at most: what was in flight, in the checkpoint being synced or not yet
    // handed to a checkpoint when the process died (each below MAX_UNCHECKPOINTED).
    let total = log.served();
    println!("served {before} before the kill, {} after, {chunks} chunks", total - before);
    assert!(
        total <= chunks + PARALLEL_CHUNKS + 2 * MAX_UNCHECKPOINTED as usize,
        "{total} chunks served for {chunks}: verified chunks were fetched again"
    );
}

#[test]
fn send_file_through_two_daemons_and_history_lists_the_saved_path() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    kith_ok(&a, &["init", "--name", "Alice"]).unwrap();
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();
    let loopback = ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--dht-server"];
    let alice = Daemon::spawn(&a, &loopback, &[]).unwrap();
    let mut bob_args = loopback.to_vec();
    bob_args.extend(["--bootstrap", alice.addresses[0].as_str()]);
    let _bob = Daemon::spawn(&b, &bob_args, &[]).unwrap();
    let bob_contact = kith_ok(&b, &["id"]).unwrap().lines().next().unwrap().to_owned();
    let alice_contact = kith_ok(&a, &["id"]).unwrap().lines().next().unwrap().to_owned();
    kith_ok(&a, &["contact", "add", &bob_contact, "--name", "bob"]).unwrap();
    kith_ok(&b, &["contact", "add", &alice_contact, "--name", "alice"]).unwrap();

    let files = tempfile::tempdir().unwrap();
    let path = random_file(files.path(), "notes.txt", 3 * 1024 * 1024);
    let path_arg = path.display().to_string();
    let out: serde_json::Value = serde_json::from_str(
        &kith_ok(&a, &["send-file", "bob", &path_arg, "--caption", "the notes", "--json"]).unwrap(),
    )
    .unwrap();
    assert_eq!(out["outcome"], "delivered", "{out}");
    assert_eq!(out["sent"]["chunks"], 6);
    let id = out["sent"]["id"].as_str().unwrap().to_owned();

    let saved = eventually_blocking(|| {
        let history: serde_json::Value =
            serde_json::from_str(&kith_ok(&b, &["history", "alice", "--json"]).unwrap()).unwrap();
        let m = history.as_array().unwrap().iter().find(|m| m["id"] == id.as_str())?.clone();
        (m["attachment"]["state"] == "saved").then_some(m)
    });
    assert_eq!(
        (saved["kind"].as_str(), saved["text"].as_str()),
        (Some("media"), Some("the notes"))
    );
    let saved_path = PathBuf::from(saved["attachment"]["path"].as_str().unwrap());
    assert_eq!(saved_path, b.join("downloads").join("notes.txt"));
    assert_eq!(blake3_file(&saved_path), blake3_file(&path));
    let lines = kith_ok(&b, &["history", "alice"]).unwrap();
    assert!(
        lines.contains(&format!(
            "[file notes.txt, 3.0 MiB] the notes (saved to {})",
            saved_path.display()
        )),
        "{lines}"
    );
    // The sender's side lists the file it sent.
    let lines = kith_ok(&a, &["history", "bob"]).unwrap();
    assert!(lines.contains(&format!("(from {path_arg})")), "{lines}");

    // Bad input: a missing file is a clear error, nothing is sent.
    let out = kith_tests::kith(&a, &["send-file", "bob", "/no/such/file"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /no/such/file"));
}

/// Polls `check` every 50 ms for up to two minutes.
fn eventually_blocking<T>(mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 18: an image carries a small JPEG preview in its manifest, and the recipient's
/// history gives its dimensions once saved (the CLI shows "[image 1920×1080]").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_carries_a_preview_and_its_dimensions_show_once_saved() {
    let (alice, bob, _bob_dir) = pair(|_| {}).await;
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("summit.png");
    let photo = image::RgbImage::from_fn(1920, 1080, |x, y| {
        let ([r, ..], [g, ..], [b, ..]) = (x.to_le_bytes(), y.to_le_bytes(), (x ^ y).to_le_bytes());
        image::Rgb([r, g, b])
    });
    photo.save(&path).unwrap();
    let sent = alice.node.send_file(bob.user_id(), &path, None).await.unwrap();
    let saved = saved_by(&bob).await;
    assert_eq!(blake3_file(&saved), blake3_file(&path));

    let listed = bob.attachments(Some(alice.node.user_id())).await.unwrap();
    let preview = listed[0].thumbnail.clone().expect("a preview in the manifest");
    assert!(preview.len() <= kith_node::kith_protocol::limits::MAX_THUMBNAIL_BYTES);
    let shown = image::load_from_memory_with_format(&preview, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((shown.width(), shown.height()), (320, 180));

    let params = serde_json::json!({ "peer": alice.node.peer_id().to_string() });
    let history = kith_node::rpc::dispatch(&bob, "history", params).await.unwrap();
    let message = history
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == sent.message.to_string())
        .unwrap()
        .clone();
    assert_eq!(message["attachment"]["image"], serde_json::json!([1920, 1080]), "{message}");
    assert!(message["attachment"]["thumbnail_bytes"].as_u64().unwrap() > 0, "{message}");
    bob.shutdown().await.unwrap();
}

/// Disappearing messages between real nodes: the timer Alice sets reaches Bob; a text and a
/// file sent under it disappear from both stores once read, the file from Bob's downloads
/// and Alice's sealed copy with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappearing_messages_take_their_files_with_them_on_both_sides() {
    use kith_node::kith_core::engine::Command;
    const SECONDS: u32 = 5;
    let (alice, bob, _bob_dir) = pair(|_| {}).await;
    let (alice_id, bob_id) = (alice.node.user_id(), bob.user_id());
    alice.node.command(Command::SetDisappearing { peer: bob_id, seconds: SECONDS }).await.unwrap();
    eventually(WAIT, "Bob to take the timer", || async {
        Ok((bob.disappearing_timer(alice_id).await? == SECONDS).then_some(()))
    })
    .await
    .unwrap();

    let files = tempfile::tempdir().unwrap();
    let path = random_file(files.path(), "secret.pdf", 100 * 1024);
    let bob_log = MediaLog::record(&bob);
    let text = alice.node.send_text(bob_id, "burn after reading").await.unwrap();
    let sent = alice.node.send_file(bob_id, &path, None).await.unwrap();
    let saved = bob_log.saved().await;
    assert!(saved.exists());
    let sealed_dir = alice.dir.path().join("media-sealed");
    eventually(WAIT, "Bob to have the text", || async { Ok(bob.message(text).await?.map(|_| ())) })
        .await
        .unwrap();
    bob.command(Command::MarkRead { peer: alice_id, ids: vec![text, sent.message] }).await.unwrap();

    eventually(WAIT, "both copies, the download and the sealed copy to disappear", || async {
        let gone = bob.message(text).await?.is_none()
            && bob.message(sent.message).await?.is_none()
            && alice.node.message(text).await?.is_none()
            && alice.node.message(sent.message).await?.is_none()
            && !saved.exists()
            && files_under(&sealed_dir).is_empty();
        Ok(gone.then_some(()))
    })
    .await
    .unwrap();
    // The setting stays in both histories; nothing else is left.
    for (node, peer) in [(&alice.node, bob_id), (&bob, alice_id)] {
        let history = node.history(peer, None, 100).await.unwrap();
        assert_eq!(history.len(), 1, "only the setting is left");
        assert!(matches!(history[0].body, Some(Body::ExpireTimer(_))));
    }
    assert!(bob.attachments(Some(alice_id)).await.unwrap().is_empty());
    assert!(alice.node.attachments(Some(bob_id)).await.unwrap().is_empty());
    bob.shutdown().await.unwrap();
}
