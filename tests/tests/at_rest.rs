//! Data at rest, with real nodes on 127.0.0.1 and the `kith` binary: after a session of
//! chatting, sending a file and joining a group, no file of a profile (downloads aside: they
//! are the user's files) or of a relay holds a message text, a name, a peer or group id in
//! the clear; a wrong passphrase is refused and changes nothing; a passphrase change works
//! from the command line; a profile from before encryption is encrypted once, and keeps
//! everything.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kith_node::kith_core::engine::{Config, Engine};
use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_core::store::{SideTree, Store};
use kith_node::kith_protocol::content::Body;
use kith_node::{KeyProtection, Node, NodeConfig, Passphrase, Profile, ProfileError};
use kith_tests::{TestRelay, eventually, files_under, random_file};

const WAIT: Duration = Duration::from_secs(90);

fn passphrase(text: &str) -> KeyProtection {
    KeyProtection::Passphrase(Passphrase::new(text.as_bytes().to_vec()))
}

/// Where each of `needles` appears in the files under `dir` (downloads aside).
fn in_the_clear(dir: &Path, needles: &[(&str, Vec<u8>)]) -> Vec<String> {
    let downloads = dir.join("downloads");
    let mut found = Vec::new();
    for path in files_under(dir) {
        if path.starts_with(&downloads) {
            continue;
        }
        let data = std::fs::read(&path).unwrap_or_default();
        let name = path.to_string_lossy().into_owned();
        for (what, needle) in needles {
            let hit = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle.as_slice());
            if hit(&data) || hit(name.as_bytes()) {
                found.push(format!("{what} in {}", path.display()));
            }
        }
    }
    found
}

/// The ways an id can appear: raw bytes, hex, and the peer id's base58 string.
fn id_needles(who: &str, node: &Node) -> Vec<(String, Vec<u8>)> {
    let user = node.user_id();
    vec![
        (format!("{who}'s id"), user.0.to_vec()),
        (format!("{who}'s id in hex"), user.to_string().into_bytes()),
        (format!("{who}'s peer id"), node.peer_id().to_string().into_bytes()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_chatting_a_file_and_a_group_no_profile_or_relay_file_holds_a_secret_in_the_clear() {
    let relay = TestRelay::start(Default::default()).await.unwrap();
    let relays = vec![relay.address().await.unwrap()];
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &Path, protection: KeyProtection| {
        let mut config = NodeConfig::loopback(dir);
        config.relays = relays.clone();
        config.protection = protection;
        Node::create(config)
    };
    // Alice's key is wrapped under a passphrase, Bob's kept without one: both databases are
    // encrypted alike.
    let alice = start(alice_dir.path(), passphrase("alice's passphrase")).await.unwrap();
    let bob = start(bob_dir.path(), KeyProtection::NoPassphrase).await.unwrap();
    for address in bob.addresses().await.unwrap() {
        alice.connect(address).await.unwrap();
    }
    alice.add_contact(&bob.contact_string(), "Roberta Quux").await.unwrap();
    bob.add_contact(&alice.contact_string(), "Alicia Zed").await.unwrap();

    let hello = alice.send_text(bob.user_id(), "meet me by the old lighthouse").await.unwrap();
    alice.wait_for_status(hello, MessageStatus::Delivered, WAIT).await.unwrap();
    let reply = bob.send_text(alice.user_id(), "bring the brass telescope").await.unwrap();
    bob.wait_for_status(reply, MessageStatus::Delivered, WAIT).await.unwrap();

    let files = tempfile::tempdir().unwrap();
    let photo = random_file(files.path(), "lighthouse-at-dusk.jpg", 300 * 1024).unwrap();
    let sent = alice.send_file(bob.user_id(), &photo, Some("the view".into())).await.unwrap();
    eventually(WAIT, "Bob to save the file", || async {
        Ok(bob_dir.path().join("downloads/lighthouse-at-dusk.jpg").exists().then_some(()))
    })
    .await
    .unwrap();
    alice.wait_for_status(sent.message, MessageStatus::Delivered, WAIT).await.unwrap();

    let group = alice.create_group("Society of Lamplighters", vec![bob.user_id()]).await.unwrap();
    eventually(WAIT, "Bob to join the group", || async {
        Ok(bob.group(group).await?.is_some_and(|g| g.members.len() == 2).then_some(()))
    })
    .await
    .unwrap();
    alice.send_group_text(group, "the lamps are lit at nine").await.unwrap();
    eventually(WAIT, "Bob to read the group message", || async {
        let history = bob.group_history(group, None, 10).await?;
        Ok(history
            .iter()
            .any(
                |m| matches!(&m.body, Some(Body::Text(t)) if t.body == "the lamps are lit at nine"),
            )
            .then_some(()))
    })
    .await
    .unwrap();

    // Bob goes offline: what Alice sends now waits at the relay.
    let bob_id = bob.user_id();
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    needles.extend(id_needles("Alice", &alice));
    needles.extend(id_needles("Bob", &bob));
    bob.shutdown().await.unwrap();
    let late = alice.send_text(bob_id, "the keeper sleeps at noon").await.unwrap();
    alice.wait_for_status(late, MessageStatus::Sent, WAIT).await.unwrap();
    assert_eq!(relay.node.relay_usage().await.unwrap().unwrap().envelopes, 1);
    alice.shutdown().await.unwrap();
    relay.node.shutdown().await.unwrap();

    for text in [
        "meet me by the old lighthouse",
        "bring the brass telescope",
        "the lamps are lit at nine",
        "the keeper sleeps at noon",
        "the view",
        "Roberta Quux",
        "Alicia Zed",
        "Society of Lamplighters",
        "lighthouse-at-dusk",
    ] {
        needles.push((format!("{text:?}"), text.as_bytes().to_vec()));
    }
    needles.push(("the group id".into(), group.0.to_vec()));
    needles.push(("the group id in hex".into(), group.to_string().into_bytes()));
    let needles: Vec<(&str, Vec<u8>)> =
        needles.iter().map(|(w, n)| (w.as_str(), n.clone())).collect();
    for (who, dir) in
        [("Alice", alice_dir.path()), ("Bob", bob_dir.path()), ("the relay", relay.dir.path())]
    {
        assert!(files_under(&Profile::db_path(dir)).len() >= 2, "{who}'s database has files");
        let found = in_the_clear(dir, &needles);
        assert!(found.is_empty(), "{who}'s files hold secrets in the clear: {found:#?}");
    }
    // The downloads are the user's own files, in the clear by design.
    assert_eq!(
        std::fs::read(bob_dir.path().join("downloads/lighthouse-at-dusk.jpg")).unwrap(),
        std::fs::read(&photo).unwrap()
    );
}

/// Every file's bytes under `dir`, to tell that nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_passphrase_is_refused_clearly_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::loopback(dir.path());
    config.protection = passphrase("right");
    let node = Node::create(config.clone()).await.unwrap();
    let user = node.user_id();
    node.shutdown().await.unwrap();
    drop(node);
    let before = snapshot(dir.path());

    for (protection, expected) in [
        (passphrase("wrong"), "wrong passphrase"),
        (KeyProtection::Unset, "protected by a passphrase"),
        (KeyProtection::NoPassphrase, "protected by a passphrase"),
    ] {
        let err = Profile::open(dir.path(), Config::default(), &protection).unwrap_err();
        assert!(
            matches!(err, ProfileError::WrongPassphrase(_) | ProfileError::PassphraseRequired(_)),
            "{err:?}"
        );
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert_eq!(snapshot(dir.path()), before, "a refused open changed files");

    // From the command line: the same, with the passphrase from a file.
    let wrong = dir.path().join("../wrong-passphrase");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let out = kith_tests::kith_command()
        .unwrap()
        .env_remove("KITH_NO_PASSPHRASE")
        .env("KITH_PASSPHRASE_FILE", &wrong)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["id"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    assert_eq!(snapshot(dir.path()), before, "a refused open changed files");

    let profile = Profile::open(dir.path(), Config::default(), &passphrase("right")).unwrap();
    assert_eq!(profile.engine().user_id(), user);
}

/// `kith init`, `kith passphrase change` and every other command, with the passphrase read
/// from the file `KITH_PASSPHRASE_FILE` names.
#[test]
fn the_passphrase_is_set_at_init_and_changed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let old = files.path().join("old");
    let new = files.path().join("new");
    std::fs::write(&old, "first passphrase\n").unwrap();
    std::fs::write(&new, "second passphrase").unwrap();
    let run = |passphrase: Option<&Path>, args: &[&str]| {
        let mut command = kith_tests::kith_command().unwrap();
        command.env_remove("KITH_NO_PASSPHRASE").arg("--data-dir").arg(dir.path()).args(args);
        if let Some(file) = passphrase {
            command.env("KITH_PASSPHRASE_FILE", file);
        }
        command.output().unwrap()
    };
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Without a terminal and without a passphrase file, no profile is created silently.
    let refused = run(None, &["init"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("KITH_PASSPHRASE_FILE"));
    assert!(!Profile::db_path(dir.path()).exists());

    ok(run(Some(&old), &["init", "--name", "Ada"]));
    let id = ok(run(Some(&old), &["id"]));
    assert!(!run(Some(&new), &["id"]).status.success());

    let changed =
        run(Some(&old), &["passphrase", "change", "--new-passphrase-file", new.to_str().unwrap()]);
    assert!(ok(changed).contains("Passphrase changed"));
    assert_eq!(ok(run(Some(&new), &["id"])), id, "the same identity");
    let stale = run(Some(&old), &["id"]);
    assert!(String::from_utf8_lossy(&stale.stderr).contains("wrong passphrase"));

    // And removed, explicitly: the key file then opens without one.
    let out = run(Some(&new), &["--no-passphrase", "passphrase", "change"]);
    assert!(ok(out).contains("without a passphrase"));
    assert_eq!(ok(run(None, &["id"])), id);
}

/// A profile written before encryption at rest (a plaintext sled database, relay records
/// and a relay's chunk directory named by a recipient's id) is encrypted at its first open,
/// once: same identity, contacts and records; no plaintext database left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_from_before_encryption_is_encrypted_once_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let recipient = [0x42u8; 32];
    let (user, contact_user) = {
        let store = Store::open(&Profile::db_path(dir.path())).unwrap();
        let mut engine =
            Engine::create(store, rand::rng(), kith_node::now_millis(), Config::default()).unwrap();
        let other = Engine::create(Store::memory(), rand::rng(), 0, Config::default()).unwrap();
        engine
            .handle_command(
                kith_node::now_millis(),
                kith_node::kith_core::engine::Command::AddContact {
                    user: other.user_id(),
                    name: "Grace".into(),
                    relays: vec![],
                },
            )
            .unwrap();
        // A relay's mailbox entry for `recipient` ('M' 'm' recipient seq), as the relay
        // service writes it.
        let mut key = vec![b'M', b'm'];
        key.extend_from_slice(&recipient);
        key.extend_from_slice(&7u64.to_be_bytes());
        let mut mail = kith_node::now_millis().to_be_bytes().to_vec();
        mail.extend_from_slice(&[0; 16]);
        engine.store().side().commit(vec![(SideTree::Relay, key, Some(mail))]);
        engine.flush().unwrap();
        (engine.user_id(), other.user_id())
    };
    let blobs = dir.path().join("relay-blobs");
    let hex: String = recipient.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(blobs.join(&hex)).unwrap();
    std::fs::write(blobs.join(&hex).join("chunk"), b"sealed chunk").unwrap();
    assert!(Profile::needs_migration(dir.path()));

    // Without a choice of protection, nothing happens.
    let err = Profile::open(dir.path(), Config::default(), &KeyProtection::Unset).unwrap_err();
    assert!(matches!(err, ProfileError::ProtectionRequired(_)), "{err:?}");
    assert!(Profile::needs_migration(dir.path()));

    let profile = Profile::open(dir.path(), Config::default(), &passphrase("now")).unwrap();
    assert_eq!(profile.engine().user_id(), user);
    let contact = profile.engine().store().contact(&contact_user).unwrap().unwrap();
    assert_eq!(contact.name.as_deref(), Some("Grace"));
    assert!(!Profile::needs_migration(dir.path()));
    assert!(Profile::needs_passphrase(dir.path()).unwrap());
    drop(profile);
    for left in ["db.plain", "db.sealed", "relay-blobs.sealed"] {
        assert!(!dir.path().join(left).exists(), "{left} left behind");
    }
    let found = in_the_clear(
        dir.path(),
        &[
            ("our id", user.0.to_vec()),
            ("the contact's id", contact_user.0.to_vec()),
            ("the contact's name", b"Grace".to_vec()),
            ("the recipient's id", recipient.to_vec()),
            ("the recipient's id in hex", hex.clone().into_bytes()),
        ],
    );
    assert!(found.is_empty(), "{found:#?}");
    // The chunk moved to the recipient's pseudonym, where the relay looks for it.
    let moved: Vec<PathBuf> = files_under(&blobs);
    assert_eq!(moved.len(), 1);
    assert_eq!(std::fs::read(&moved[0]).unwrap(), b"sealed chunk");

    // The node on it reads the relay's record back (its mailbox for the recipient).
    let mut config = NodeConfig::loopback_relay(dir.path());
    config.protection = passphrase("now");
    let node = Node::start(config).await.unwrap();
    assert_eq!(node.relay_usage().await.unwrap().unwrap().envelopes, 1);
    node.shutdown().await.unwrap();
}

/// A backup restored onto a fresh data directory on "another machine" (another directory,
/// another address): the same identity chats with its old contacts, history and verification
/// marks intact; no ratchet state came back (so no message key can be used twice), and the
/// contact sees a session reset, not a key change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_chats_with_old_contacts_with_history_and_verification_intact() {
    use kith_node::BackupSecretOwned;
    use kith_node::kith_core::engine::{Command, Event};
    use kith_node::kith_core::store::{BackupSecret, RecoveryCode, RestoredBackup, Tree};

    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = Node::create(NodeConfig::loopback(alice_dir.path())).await.unwrap();
    let bob = Node::create(NodeConfig::loopback(bob_dir.path())).await.unwrap();
    let bob_log = kith_tests::EventLog::record(&bob);
    for address in bob.addresses().await.unwrap() {
        alice.connect(address).await.unwrap();
    }
    alice.add_contact(&bob.contact_string(), "bob").await.unwrap();
    bob.add_contact(&alice.contact_string(), "alice").await.unwrap();
    let first = alice.send_text(bob.user_id(), "before the backup").await.unwrap();
    alice.wait_for_status(first, MessageStatus::Delivered, WAIT).await.unwrap();
    let reply = bob.send_text(alice.user_id(), "noted").await.unwrap();
    bob.wait_for_status(reply, MessageStatus::Delivered, WAIT).await.unwrap();
    alice.command(Command::VerifyContact { user: bob.user_id() }).await.unwrap();

    let code = RecoveryCode::generate().unwrap();
    let (archive, summary) =
        alice.create_backup(BackupSecretOwned::Code(code.clone())).await.unwrap();
    assert_eq!(summary.contacts, 1);
    assert!(summary.messages >= 2, "{summary:?}");
    let (user, peer_id) = (alice.user_id(), alice.peer_id());
    alice.shutdown().await.unwrap();
    drop(alice);
    drop(alice_dir); // the device is lost

    // The archive opens with its code only, and holds no plaintext.
    let other = RecoveryCode::generate().unwrap();
    assert!(RestoredBackup::open(&archive, &BackupSecret::Code(&other)).is_err());
    for text in ["before the backup", "noted", "bob"] {
        assert!(!archive.windows(text.len()).any(|w| w == text.as_bytes()), "{text} in the clear");
    }
    let backup = RestoredBackup::open(&archive, &BackupSecret::Code(&code)).unwrap();

    let new_dir = tempfile::tempdir().unwrap();
    let profile =
        Profile::restore(new_dir.path(), &backup, Config::default(), &KeyProtection::NoPassphrase)
            .unwrap();
    assert_eq!(profile.engine().user_id(), user);
    // No ratchet state, sender key or queued envelope came back: whatever the restored node
    // sends is encrypted under keys it makes anew.
    let dump = profile.engine().store().dump().unwrap();
    for tree in [Tree::Sessions, Tree::SenderKeys, Tree::Outbox, Tree::Seen] {
        assert!(!dump.iter().any(|(t, _, _)| *t == tree), "{} restored", tree.name());
    }
    drop(profile);

    let alice = Node::start(NodeConfig::loopback(new_dir.path())).await.unwrap();
    assert_eq!((alice.user_id(), alice.peer_id()), (user, peer_id));
    let contact = alice.contact(bob.user_id()).await.unwrap().unwrap();
    assert_eq!(contact.name.as_deref(), Some("bob"));
    assert!(contact.verified, "the verification mark is kept");
    let history: Vec<String> = alice
        .history(bob.user_id(), None, 10)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m.body {
            Some(Body::Text(t)) => Some(t.body),
            _ => None,
        })
        .collect();
    assert!(history.contains(&"before the backup".to_owned()), "{history:?}");
    assert!(history.contains(&"noted".to_owned()), "{history:?}");

    // Another address: Bob reaches it only because the restored node dials him.
    for address in bob.addresses().await.unwrap() {
        alice.connect(address).await.unwrap();
    }
    let after = alice.send_text(bob.user_id(), "restored and well").await.unwrap();
    alice.wait_for_status(after, MessageStatus::Delivered, WAIT).await.unwrap();
    let again = bob.send_text(user, "welcome back").await.unwrap();
    bob.wait_for_status(again, MessageStatus::Delivered, WAIT).await.unwrap();

    let events = bob_log.events();
    let reset = events.iter().any(|e| matches!(e, Event::SessionReset { peer } if *peer == user));
    let key_changed = events.iter().any(|e| matches!(e, Event::IdentityChanged { .. }));
    let texts: Vec<String> = bob_log
        .messages()
        .into_iter()
        .filter_map(|m| match m.body {
            Some(Body::Text(t)) => Some(t.body),
            _ => None,
        })
        .collect();
    assert!(reset, "Bob sees a session reset");
    assert!(!key_changed, "and no key change");
    assert!(texts.contains(&"restored and well".to_owned()), "{texts:?}");
    let bob_contact = bob.contact(user).await.unwrap().unwrap();
    assert!(bob_contact.pending_identity.is_none());
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
}

/// `kith backup create` shows the recovery code once; `kith backup restore` on another data
/// directory reads it from standard input (a script) and brings the same identity back; a
/// wrong code is refused and creates nothing.
#[test]
fn the_cli_backs_up_and_restores_with_the_code_read_from_standard_input() {
    let (old, new, files) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(kith_tests::kith(old.path(), &["init", "--name", "Ada"]).unwrap());
    let id = ok(kith_tests::kith(old.path(), &["id"]).unwrap());
    let archive = files.path().join("ada.kithbackup");
    let made =
        ok(kith_tests::kith(old.path(), &["backup", "create", archive.to_str().unwrap()]).unwrap());
    let code = made
        .lines()
        .skip_while(|l| !l.starts_with("Recovery code"))
        .nth(1)
        .expect("the code is shown")
        .trim()
        .to_owned();
    assert_eq!(code.chars().filter(char::is_ascii_digit).count(), 30, "{made}");

    let wrong = kith_tests::kith_with_input(
        new.path(),
        &["backup", "restore", archive.to_str().unwrap()],
        b"00000 00000 00000 00000 00000 00000\n",
    )
    .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong recovery code"));
    assert!(!Profile::db_path(new.path()).exists(), "a refused restore creates nothing");

    let restored = kith_tests::kith_with_input(
        new.path(),
        &["backup", "restore", archive.to_str().unwrap()],
        format!("{code}\n").as_bytes(),
    )
    .unwrap();
    assert!(ok(restored).contains("Restored"));
    assert_eq!(ok(kith_tests::kith(new.path(), &["id"]).unwrap()), id, "the same identity");
}

/// A backup reads the database through a handle it drops when done: a node handle kept after
/// shutdown holds no database open (it once did, and the profile could not be opened again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_made_a_backup_and_stopped_leaves_its_profile_free() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::create(NodeConfig::loopback(dir.path())).await.unwrap();
    let secret = kith_node::BackupSecretOwned::Passphrase(Passphrase::new(b"pw".to_vec()));
    node.create_backup(secret).await.unwrap();
    node.shutdown().await.unwrap();
    let again = Node::start(NodeConfig::loopback(dir.path())).await.unwrap();
    assert_eq!(again.user_id(), node.user_id());
    again.shutdown().await.unwrap();
}

/// A key kept in the keyring (the in-memory mock credential store stands in for the
/// platform's): the node opens without a passphrase, the key moves to a passphrase and back,
/// and a keyring that lost the entry is a clear error that changes no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_kept_in_the_keyring_opens_the_profile_and_moves_to_a_passphrase_and_back() {
    use kith_node::keyring_core;
    keyring_core::set_default_store(keyring_core::mock::Store::new().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::loopback(dir.path());
    config.protection = KeyProtection::Keyring;
    let node = Node::create(config.clone()).await.unwrap();
    let user = node.user_id();
    node.shutdown().await.unwrap();
    drop(node);
    assert!(!Profile::needs_passphrase(dir.path()).unwrap());
    assert!(Profile::key_in_keyring(dir.path()).unwrap());
    for protection in [KeyProtection::Unset, KeyProtection::Keyring] {
        let profile = Profile::open(dir.path(), Config::default(), &protection).unwrap();
        assert_eq!(profile.engine().user_id(), user);
    }

    Profile::change_protection(dir.path(), &KeyProtection::Keyring, &passphrase("p")).unwrap();
    assert!(!Profile::key_in_keyring(dir.path()).unwrap());
    let err = Profile::open(dir.path(), Config::default(), &KeyProtection::Unset).unwrap_err();
    assert!(matches!(err, ProfileError::PassphraseRequired(_)), "{err:?}");
    let profile = Profile::open(dir.path(), Config::default(), &passphrase("p")).unwrap();
    assert_eq!(profile.engine().user_id(), user);
    drop(profile);
    Profile::change_protection(dir.path(), &passphrase("p"), &KeyProtection::Keyring).unwrap();

    // The keyring lost the entry (another keyring, or it was deleted): refused, clearly.
    keyring_core::set_default_store(keyring_core::mock::Store::new().unwrap());
    let before = snapshot(dir.path());
    let err = Profile::open(dir.path(), Config::default(), &KeyProtection::Unset).unwrap_err();
    assert!(matches!(err, ProfileError::Keyring(..)), "{err:?}");
    assert!(err.to_string().contains("keeps its key in the keyring"), "{err}");
    assert_eq!(snapshot(dir.path()), before, "a refused open changed files");
}

/// `kith init --keyring` where no keyring service runs: a clear error, and no profile.
#[test]
fn init_with_the_keyring_and_no_keyring_service_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let out = kith_tests::kith_command()
        .unwrap()
        .env_remove("KITH_NO_PASSPHRASE")
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", dir.path().join("no-bus").display()),
        )
        .arg("--data-dir")
        .arg(&profile)
        .args(["init", "--keyring"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the keyring (Secret Service) cannot be used"), "{err}");
    assert!(!Profile::key_path(&profile).exists() && !Profile::db_path(&profile).exists());
}
