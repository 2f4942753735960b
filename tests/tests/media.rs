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

use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_protocol::content::Body;
use kith_node::media::{AttachmentState, MediaEvent, MediaFailure, TransferDirection};
use kith_node::{Node, NodeConfig, NodeError, NodeEvent};
use kith_tests::{TestNode, eventually};
use rand::Rng;

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
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("the media log lost {n} events")
                    }
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

impl Drop for MediaLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A file of `len` random bytes in `dir`, written 1 MiB at a time.
fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        rand::rng().fill_bytes(&mut block[..n]);
        file.write_all(&block[..n]).unwrap();
        left -= n;
    }
    path
}

/// BLAKE3 of a file, read 1 MiB at a time (no mapping: the test's memory stays flat).
fn blake3_file(path: &Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    hasher.finalize()
}

/// Whether any file under `dir` contains `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            dir_contains(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle))
        }
    })
}

/// Files under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
