//! The real `kith` binary, driven as a user or a script would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use kith_tests::kith;

#[test]
fn init_then_id_prints_a_stable_contact_string_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("alice");
    let out = kith(&profile, &["init", "--name", "Alice"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created = String::from_utf8(out.stdout).unwrap();

    let out = kith(&profile, &["id"]).unwrap();
    assert!(out.status.success());
    let contact = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(contact.starts_with("kith:12D3KooW"), "{contact}");
    assert!(created.contains(&contact));

    let out = kith(&profile, &["id", "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["contact"], contact.as_str());
    assert_eq!(json["display_name"], "Alice");
    assert_eq!(format!("kith:{}", json["peer_id"].as_str().unwrap()), contact);

    // The profile directory is private to its owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&profile).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "profile directory mode {mode:o}");
    }

    let out = kith(&profile, &["id", "--qr"]).unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains('█'));
}

#[test]
fn bad_input_gives_a_clear_error_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("nobody");
    let out = kith(&profile, &["id"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no Kith identity") && err.contains("kith init"), "{err}");

    assert!(kith(&profile, &["init"]).unwrap().status.success());
    let out = kith(&profile, &["init"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("already holds a Kith identity"));

    let out = kith(&profile, &["frobnicate"]).unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit with 2");
}

use kith_tests::{Daemon, kith_ok, kith_with_input};

const LOOPBACK: &[&str] = &["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--dht-server"];

#[test]
fn two_daemons_contact_add_send_and_history_json_show_the_message_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    kith_ok(&a, &["init", "--name", "Alice"]).unwrap();
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();

    let alice = Daemon::spawn(&a, LOOPBACK, &[]).unwrap();
    assert!(!alice.addresses.is_empty());
    let mut bob_args = LOOPBACK.to_vec();
    bob_args.extend(["--bootstrap", alice.addresses[0].as_str()]);
    let bob = Daemon::spawn(&b, &bob_args, &[]).unwrap();

    // `kith id` talks to the running daemon: it knows the listen addresses.
    let alice_id: serde_json::Value =
        serde_json::from_str(&kith_ok(&a, &["id", "--json"]).unwrap()).unwrap();
    assert!(!alice_id["addresses"].as_array().unwrap().is_empty());
    let bob_contact = kith_ok(&b, &["id"]).unwrap().lines().next().unwrap().to_owned();
    let alice_contact = alice_id["contact"].as_str().unwrap().to_owned();
    let added = kith(&a, &["contact", "add", &bob_contact, "--name", "bob"]).unwrap();
    assert!(added.status.success());
    // Bob is there (connected): no warning about a mistyped id.
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
    kith_ok(&b, &["contact", "add", &alice_contact, "--name", "alice"]).unwrap();

    let sent: serde_json::Value = serde_json::from_str(
        &kith_ok(&a, &["send", "bob", "hello from the CLI", "--wait", "delivered", "--json"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sent["status"], "delivered", "{sent}");
    let id = sent["id"].as_str().unwrap();

    let history: serde_json::Value =
        serde_json::from_str(&kith_ok(&a, &["history", "bob", "--json"]).unwrap()).unwrap();
    let mine =
        history.as_array().unwrap().iter().find(|m| m["id"] == id).expect("in Alice's history");
    assert_eq!(
        (mine["direction"].as_str(), mine["status"].as_str(), mine["text"].as_str()),
        (Some("outgoing"), Some("delivered"), Some("hello from the CLI"))
    );
    let history: serde_json::Value =
        serde_json::from_str(&kith_ok(&b, &["history", "alice", "--json"]).unwrap()).unwrap();
    let theirs =
        history.as_array().unwrap().iter().find(|m| m["id"] == id).expect("in Bob's history");
    assert_eq!(
        (theirs["direction"].as_str(), theirs["status"].as_str(), theirs["text"].as_str()),
        (Some("incoming"), Some("received"), Some("hello from the CLI"))
    );

    // `-` reads the text from standard input: more than a shell line holds, newlines kept.
    let long = format!("{}\nsecond line", "x".repeat(40_000));
    let out = kith_with_input(&a, &["send", "bob", "-", "--json"], format!("{long}\n").as_bytes())
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = kith_ok(&a, &["history", "bob", "--json"]).unwrap();
    let history: serde_json::Value = serde_json::from_str(&message).unwrap();
    let stdin_message = history.as_array().unwrap().iter().find(|m| m["id"] == sent["id"]);
    assert_eq!(stdin_message.and_then(|m| m["text"].as_str()), Some(long.as_str()));
    // Over the 64 KiB limit: refused before anything is queued, with the limit named.
    let out = kith_with_input(&a, &["send", "bob", "-"], &vec![b'y'; 70_000]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 KiB"), "{out:?}");

    // Human output too.
    let lines = kith_ok(&a, &["history", "bob"]).unwrap();
    assert!(lines.contains("me: hello from the CLI ✓✓"), "{lines}");
    let contacts = kith_ok(&a, &["contact", "list"]).unwrap();
    assert!(contacts.contains("bob") && contacts.contains(&bob_contact), "{contacts}");
    // Safety numbers agree on both sides and verification sticks.
    let sa = kith_ok(&a, &["contact", "verify", "bob", "--yes"]).unwrap();
    let sb = kith_ok(&b, &["contact", "verify", "alice"]).unwrap();
    let number = |s: &str| s.lines().nth(2).unwrap().trim().to_owned();
    assert_eq!(number(&sa), number(&sb));
    assert!(sa.contains("now verified") && sb.contains("Not marked"), "{sa}\n{sb}");
    assert!(kith_ok(&a, &["contact", "list", "--json"]).unwrap().contains("\"verified\":true"));
    drop((alice, bob));
}

#[test]
fn cli_refuses_bad_input_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("alice");
    kith_ok(&a, &["init"]).unwrap();
    let fails = |args: &[&str], needle: &str| {
        let out = kith(&a, args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in: {err}");
    };
    fails(&["contact", "add", "kith:not-a-peer-id", "--name", "x"], "malformed contact string");
    fails(&["contact", "add", "12D3KooWBadScheme", "--name", "x"], "malformed contact string");
    fails(
        &["send", "nobody", "hi", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
        "no contact named `nobody`",
    );
    fails(&["history", "nobody"], "no contact named `nobody`");
    fails(
        &["chat", "nobody", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
        "no contact or group named `nobody`",
    );
    fails(&["daemon", "--listen", "not-a-multiaddr"], "not a valid multiaddr");
    fails(&["send", "x", "hi", "--bootstrap", "/ip4/1.2.3"], "not a valid multiaddr");
    fails(&["stop"], "no daemon is running");
    fails(&["contact", "verify", "nobody", "--yes"], "no contact named `nobody`");
}

#[test]
fn group_create_send_info_and_history_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    kith_ok(&a, &["init", "--name", "Alice"]).unwrap();
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();
    let alice = Daemon::spawn(&a, LOOPBACK, &[]).unwrap();
    let mut bob_args = LOOPBACK.to_vec();
    bob_args.extend(["--bootstrap", alice.addresses[0].as_str()]);
    let _bob = Daemon::spawn(&b, &bob_args, &[]).unwrap();
    let bob_contact = kith_ok(&b, &["id"]).unwrap().lines().next().unwrap().to_owned();
    kith_ok(&a, &["contact", "add", &bob_contact, "--name", "bob"]).unwrap();

    let created: serde_json::Value = serde_json::from_str(
        &kith_ok(&a, &["group", "create", "climbers", "--member", "bob", "--json"]).unwrap(),
    )
    .unwrap();
    let group = created["group"].as_str().unwrap().to_owned();
    // Bob's node joins once the invitation and keys arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = kith(&b, &["group", "info", &group, "--json"]).unwrap();
        if info.status.success() {
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            if info["members"].as_array().unwrap().len() == 2 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "Bob never joined");
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = kith_ok(&b, &["group", "list"]).unwrap();
    assert!(list.contains("climbers") && list.contains("2 members"), "{list}");
    // Members by name, not as bare peer ids.
    let info = kith_ok(&a, &["group", "info", "climbers"]).unwrap();
    assert!(info.contains("  you  kith:") && info.contains("  bob  kith:"), "{info}");

    kith_ok(&a, &["group", "send", "climbers", "rope at 6"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let history: serde_json::Value =
            serde_json::from_str(&kith_ok(&b, &["history", "climbers", "--json"]).unwrap())
                .unwrap();
        if let Some(m) = history.as_array().unwrap().iter().find(|m| m["text"] == "rope at 6") {
            assert_eq!(m["group"].as_str(), Some(group.as_str()));
            assert_eq!(m["direction"], "incoming");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the group message never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Bob answers; Alice's history names him by her contact name.
    kith_ok(&b, &["group", "send", "climbers", "on my way"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let history = kith_ok(&a, &["history", "climbers"]).unwrap();
        if history.contains("bob: on my way") {
            assert!(history.contains("me: rope at 6"), "{history}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Bob's answer never arrived: {history}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A file to the group: Bob's daemon fetches it from Alice's and saves it.
    let topo = dir.path().join("topo.txt");
    std::fs::write(&topo, "pitch 1: 5c\n".repeat(50_000)).unwrap();
    let sent =
        kith_ok(&a, &["send-file", "climbers", topo.to_str().unwrap(), "--no-wait"]).unwrap();
    assert!(sent.contains("queued"), "{sent}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let history = kith_ok(&b, &["history", "climbers"]).unwrap();
        if history.contains("[file topo.txt, 585.9 KiB]") && history.contains("(saved to") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the group file never arrived: {history}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Bad input: an unknown group and a non-admin removal are clear errors.
    let unknown = kith(&b, &["group", "send", "nosuchgroup", "hi"]).unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no group named"));
    let not_admin = kith(&b, &["group", "remove", "climbers", &bob_contact]).unwrap();
    assert!(!not_admin.status.success());
}

/// Issue 14, item 8: text a peer controls (message text, its profile name, a group's name) is
/// printed by every command without escape sequences, control characters or bidi overrides:
/// a message that set the terminal's title and cleared the screen now shows as text.
#[test]
fn text_from_peers_reaches_the_terminal_without_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("mallory"), dir.path().join("bob"));
    kith_ok(&a, &["init", "--name", "Mallory\u{1b}]0;pwned\u{7}\u{202e}"]).unwrap();
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();
    let mallory = Daemon::spawn(&a, LOOPBACK, &[]).unwrap();
    let mut bob_args = LOOPBACK.to_vec();
    bob_args.extend(["--bootstrap", mallory.addresses[0].as_str()]);
    let _bob = Daemon::spawn(&b, &bob_args, &[]).unwrap();
    let bob_contact = kith_ok(&b, &["id"]).unwrap().lines().next().unwrap().to_owned();
    let mallory_id: serde_json::Value =
        serde_json::from_str(&kith_ok(&a, &["id", "--json"]).unwrap()).unwrap();
    let mallory_peer = mallory_id["peer_id"].as_str().unwrap().to_owned();
    kith_ok(&a, &["contact", "add", &bob_contact, "--name", "bob"]).unwrap();
    let text = "hi\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m invoice\u{202e}fdp.exe\u{feff}";
    kith_ok(&a, &["send", "bob", text, "--wait", "delivered"]).unwrap();
    let created: serde_json::Value = serde_json::from_str(
        &kith_ok(&a, &["group", "create", "g\u{1b}[31m\u{2066}x", "--member", "bob", "--json"])
            .unwrap(),
    )
    .unwrap();
    let group = created["group"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = kith(&b, &["group", "info", &group, "--json"]).unwrap();
        if info.status.success() {
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            if info["members"].as_array().unwrap().len() == 2 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "Bob never joined");
        std::thread::sleep(Duration::from_millis(200));
    }
    kith_ok(&a, &["group", "send", &group, text]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !kith_ok(&b, &["history", &group, "--json"]).unwrap().contains("invoice") {
        assert!(std::time::Instant::now() < deadline, "the group message never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    let raw =
        |c: char| c.is_control() && c != '\n' || matches!(c, '\u{202e}' | '\u{2066}' | '\u{feff}');
    for args in [
        vec!["history", mallory_peer.as_str()],
        vec!["contact", "requests"],
        vec!["group", "list"],
        vec!["group", "info", group.as_str()],
        vec!["history", group.as_str()],
    ] {
        let out = kith_ok(&b, &args).unwrap();
        assert!(
            out.contains("invoice") || out.contains("Mallory") || out.contains("members"),
            "{args:?}: {out}"
        );
        assert!(!out.chars().any(raw), "{args:?} printed raw control text: {out:?}");
    }
    // Still readable: the escape shows as ␛, the text around it is all there.
    let history = kith_ok(&b, &["history", mallory_peer.as_str()]).unwrap();
    assert!(
        history.contains("hi␛[2J␛]0;owned�") && history.contains("invoicefdp.exe"),
        "{history}"
    );
    // JSON output keeps the text exactly (escaped by JSON), for scripts.
    let json = kith_ok(&b, &["history", mallory_peer.as_str(), "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json[0]["text"], text);
}

#[test]
fn sigterm_and_sigint_stop_the_daemon_cleanly_with_status_zero() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("alice");
        kith_ok(&profile, &["init", "--name", "Alice"]).unwrap();
        let mut daemon = Daemon::spawn(&profile, LOOPBACK, &[]).unwrap();
        let socket = profile.join("kith.sock");
        assert!(socket.exists());
        daemon.signal(signal).unwrap();
        let status = daemon.exit_within(Duration::from_secs(20)).expect("the daemon exited");
        assert!(status.success(), "SIG{signal}: {status}");
        assert!(!socket.exists(), "SIG{signal} left the control socket behind");
        // The profile is free again at once: a new daemon starts on it.
        drop(daemon);
        let again = Daemon::spawn(&profile, LOOPBACK, &[]).unwrap();
        drop(again);
    }
}

#[test]
fn kith_stop_returns_once_the_daemon_process_has_ended() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("alice");
    kith_ok(&profile, &["init", "--name", "Alice"]).unwrap();
    let mut daemon = Daemon::spawn(&profile, LOOPBACK, &[]).unwrap();
    let out = kith_ok(&profile, &["stop"]).unwrap();
    assert_eq!(out.trim(), "daemon stopped");
    // It used to say so 1–3 s before the process ended (its goodbye and last flush).
    let status = daemon.exit_within(Duration::from_millis(250));
    assert!(status.is_some_and(|s| s.success()), "still running after `kith stop`: {status:?}");
}

#[test]
fn a_second_process_on_a_running_profile_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("alice");
    kith_ok(&profile, &["init", "--name", "Alice"]).unwrap();
    let _daemon = Daemon::spawn(&profile, LOOPBACK, &[]).unwrap();
    let out = kith(&profile, &["daemon", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("a daemon is already running") && stderr.contains("kith stop"));
    // A relay on the same profile finds the database held: said once, not once per layer.
    let out = kith(&profile, &["relay", "--listen", "/ip4/127.0.0.1/tcp/0"]).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("locked by another process").count(), 1, "{stderr}");
}

#[test]
fn contact_add_takes_a_bare_peer_id_says_when_it_renames_and_trust_says_when_nothing_changed() {
    let (_dir, a, bare) = alice_and_bobs_peer_id();
    let bare = bare.as_str();

    // The README's promise: a bare peer id works.
    assert_eq!(
        kith_ok(&a, &["contact", "add", bare, "--name", "bob"]).unwrap().trim(),
        "added bob"
    );
    let again = kith_ok(&a, &["contact", "add", &format!("kith:{bare}"), "--name", "bob"]).unwrap();
    assert_eq!(again.trim(), "bob is already a contact");
    // A new name for a known peer is a rename, and says so.
    let renamed = kith_ok(&a, &["contact", "add", bare, "--name", "robert"]).unwrap();
    assert_eq!(renamed.trim(), "renamed bob to robert");
    let list = kith_ok(&a, &["contact", "list", "--json"]).unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "robert");

    // Nothing to accept: no claim that a new key was accepted.
    let trust = kith_ok(&a, &["contact", "trust", "robert"]).unwrap();
    assert!(trust.contains("has not changed") && !trust.contains("accepted"), "{trust}");
    let unknown = kith(&a, &["contact", "trust", "nobody"]).unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no contact named `nobody`"));
}

/// Issue 18: a mistyped peer id was accepted silently and its messages stayed `…` forever. A
/// peer id carries no checksum (it is the key itself), so one with a typo is a valid id of
/// nobody: the daemon looks for its owner in the network and the CLI warns when nobody is
/// found (the contact is still added: its owner may only be offline).
#[test]
fn a_peer_id_nobody_answers_to_is_added_with_a_warning_to_check_it() {
    let (_dir, a, nobody) = alice_and_bobs_peer_id();
    let _alice = Daemon::spawn(&a, LOOPBACK, &[]).unwrap();
    let out = kith(&a, &["contact", "add", &nobody, "--name", "ghost"]).unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "added ghost");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: nobody with peer id") && stderr.contains("typos"),
        "{stderr}"
    );
}

#[test]
fn logs_follow_v_and_q_and_carry_no_colour_codes_off_a_terminal() {
    let (_dir, a, bob) = alice_and_bobs_peer_id();
    let bob = bob.as_str();
    // A short-lived node (no daemon): it logs where it listens at info.
    let send = |flag: &str| {
        let mut args = vec![flag, "send", bob, "hi", "--timeout", "1"];
        args.extend(LOOPBACK);
        let out = kith(&a, &args).unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let verbose = send("-v");
    assert!(verbose.contains(" INFO ") && verbose.contains("listening on"), "{verbose}");
    assert!(!verbose.contains('\u{1b}'), "colour codes in a log that is not a terminal");
    let quiet = send("-q");
    assert!(!quiet.contains(" INFO ") && !quiet.contains(" WARN "), "{quiet}");
}

/// Two new profiles, Alice's and Bob's: the directory holding them, Alice's, Bob's peer id.
fn alice_and_bobs_peer_id() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    kith_ok(&a, &["init", "--name", "Alice"]).unwrap();
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();
    let bob: serde_json::Value =
        serde_json::from_str(&kith_ok(&b, &["id", "--json"]).unwrap()).unwrap();
    let peer_id = bob.get("peer_id").and_then(serde_json::Value::as_str).unwrap().to_owned();
    (dir, a, peer_id)
}

/// Alice's and Bob's new profiles, each with a daemon on 127.0.0.1 (Bob's bootstrapped from
/// Alice's); `alice_toml` is written to Alice's kith.toml and `alice_args` given to her daemon
/// first. Only Bob knows the other: `bob_adds_alice` has him add her as `alice`.
struct Two {
    dir: tempfile::TempDir,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
    _alice: Daemon,
    _bob: Daemon,
}

fn two_daemons(alice_args: &[&str], alice_toml: Option<&str>) -> Two {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    kith_ok(&a, &["init", "--name", "Alice"]).unwrap();
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();
    if let Some(toml) = alice_toml {
        std::fs::write(a.join("kith.toml"), toml).unwrap();
    }
    let mut args = LOOPBACK.to_vec();
    args.extend(alice_args);
    let alice = Daemon::spawn(&a, &args, &[]).unwrap();
    let mut bob_args = LOOPBACK.to_vec();
    bob_args.extend(["--bootstrap", alice.addresses.first().unwrap().as_str()]);
    let bob = Daemon::spawn(&b, &bob_args, &[]).unwrap();
    Two { dir, a, b, _alice: alice, _bob: bob }
}

impl Two {
    /// Bob adds Alice as `alice`.
    fn bob_adds_alice(&self) {
        let alice_contact = kith_ok(&self.a, &["id"]).unwrap().lines().next().unwrap().to_owned();
        kith_ok(&self.b, &["contact", "add", &alice_contact, "--name", "alice"]).unwrap();
    }

    /// Bob's peer id.
    fn bob_peer(&self) -> String {
        let id: serde_json::Value =
            serde_json::from_str(&kith_ok(&self.b, &["id", "--json"]).unwrap()).unwrap();
        id.get("peer_id").and_then(serde_json::Value::as_str).unwrap().to_owned()
    }
}

/// Polls `check` every 200 ms for up to a minute; `what` names what never happened.
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 18, consent and names: a stranger's message is a message request (not a contact),
/// a group a stranger adds us to is an invitation to accept or decline, two groups of the
/// same name ask for an id, and contacts are accepted, renamed, blocked, unblocked, removed.
#[test]
fn strangers_write_requests_and_invitations_that_the_user_answers() {
    let two = two_daemons(&[], None);
    let (a, b) = (two.a.clone(), two.b.clone());
    let bob_peer = two.bob_peer();
    // Only Bob adds the other.
    two.bob_adds_alice();
    kith_ok(&b, &["send", "alice", "hi, it's Bob", "--wait", "delivered"]).unwrap();

    let list = kith_ok(&a, &["contact", "list"]).unwrap();
    assert!(!list.contains(&bob_peer) && list.contains("1 message request(s)"), "{list}");
    let requests = kith_ok(&a, &["contact", "requests"]).unwrap();
    assert!(requests.contains(&bob_peer) && requests.contains("hi, it's Bob"), "{requests}");

    // Alice has a group of her own named like the one Bob is about to add her to.
    kith_ok(&a, &["group", "create", "climbers"]).unwrap();
    let again = kith(&a, &["group", "create", "Climbers"]).unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in a group named"));
    let created: serde_json::Value = serde_json::from_str(
        &kith_ok(&b, &["group", "create", "climbers", "--member", "alice", "--json"]).unwrap(),
    )
    .unwrap();
    let bobs_group = created["group"].as_str().unwrap().to_owned();
    until("Bob's invitation never arrived", || {
        kith_ok(&a, &["group", "list"]).unwrap().contains("invitation from")
    });
    let ambiguous = kith(&a, &["group", "send", "climbers", "hello?"]).unwrap();
    let error = String::from_utf8_lossy(&ambiguous.stderr).into_owned();
    assert!(error.contains("2 groups are named `climbers`: use an id"), "{error}");
    assert!(error.contains(&bobs_group[..16]), "{error}");
    let history = kith(&a, &["history", "climbers"]).unwrap();
    assert!(String::from_utf8_lossy(&history.stderr).contains("2 groups are named"));
    kith_ok(&a, &["group", "decline", &bobs_group]).unwrap();
    until("Bob never saw Alice decline", || {
        let info: serde_json::Value =
            serde_json::from_str(&kith_ok(&b, &["group", "info", &bobs_group, "--json"]).unwrap())
                .unwrap();
        info["members"].as_array().unwrap().len() == 1
    });

    // Accepted, renamed, blocked, unblocked, removed.
    kith_ok(&a, &["contact", "accept", &bob_peer, "--name", "bob"]).unwrap();
    assert!(kith_ok(&a, &["contact", "list"]).unwrap().contains(&format!("bob  kith:{bob_peer}")));
    assert!(kith_ok(&a, &["contact", "requests"]).unwrap().contains("no message requests"));
    let renamed = kith_ok(&a, &["contact", "rename", "bob", "robert"]).unwrap();
    assert!(renamed.contains("renamed bob to robert"), "{renamed}");
    kith_ok(&a, &["contact", "block", "robert"]).unwrap();
    let refused = kith(&b, &["send", "alice", "are you there?", "--wait", "delivered"]).unwrap();
    assert!(!refused.status.success(), "a blocked sender's message is not delivered");
    let history = kith_ok(&a, &["history", "robert"]).unwrap();
    assert!(!history.contains("are you there?"), "{history}");
    kith_ok(&a, &["contact", "unblock", "robert"]).unwrap();
    kith_ok(&b, &["send", "alice", "back again", "--wait", "delivered"]).unwrap();
    kith_ok(&a, &["contact", "remove", "robert"]).unwrap();
    let list = kith_ok(&a, &["contact", "list", "--json"]).unwrap();
    assert!(!list.contains("robert"), "{list}");
}

/// With `message_requests = false` in kith.toml, a stranger's message is refused, not kept.
#[test]
fn message_requests_off_refuses_strangers() {
    let two = two_daemons(&[], Some("message_requests = false\n"));
    let (a, b) = (two.a.clone(), two.b.clone());
    two.bob_adds_alice();
    let refused = kith(&b, &["send", "alice", "let me in", "--wait", "delivered"]).unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(said.contains("failed: the recipient refused the message: not accepting"), "{said}");
    let requests = kith_ok(&a, &["contact", "requests", "--json"]).unwrap();
    assert_eq!(requests.trim(), "[]");
    assert_eq!(kith_ok(&a, &["contact", "list", "--json"]).unwrap().trim(), "[]");
}

/// Issue 18: `send --wait` that runs out of time prints the message's id, the status it
/// reached and why it went no further, and exits 3 (the message stays queued).
#[test]
fn a_send_that_times_out_says_how_far_it_got_and_why() {
    let (_dir, a, bob_peer) = alice_and_bobs_peer_id();
    let _alice = Daemon::spawn(&a, LOOPBACK, &[]).unwrap();
    kith_ok(&a, &["contact", "add", &bob_peer, "--name", "bob"]).unwrap();
    let out =
        kith(&a, &["send", "bob", "hello?", "--wait", "delivered", "--timeout", "2"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let (id, rest) = said.trim().split_once(' ').unwrap();
    assert_eq!(id.len(), 32, "{said}");
    assert!(rest.starts_with("queued"), "{said}");
    assert!(rest.contains("timed out after 2 s waiting for delivered"), "{said}");
    assert!(rest.contains("no connection to the recipient"), "{said}");
    // The message is kept: history shows it queued.
    let history = kith_ok(&a, &["history", "bob", "--json"]).unwrap();
    assert!(history.contains(id), "{history}");
}

/// Issue 18: shell completions and manual pages come from the same definitions as `--help`.
#[test]
fn completions_and_manual_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = kith_ok(dir.path(), &["completions", shell]).unwrap();
        assert!(script.contains("send-file") && script.contains("requests"), "{shell}");
    }
    let bad = kith(dir.path(), &["completions", "tcsh"]).unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value 'tcsh'"));

    let page = kith_ok(dir.path(), &["man"]).unwrap();
    assert!(page.contains(".TH kith 1") && page.contains("send\\-file"), "{page}");
    let pages = dir.path().join("man");
    let said = kith_ok(dir.path(), &["man", "--dir", pages.to_str().unwrap()]).unwrap();
    assert!(said.contains("manual pages"), "{said}");
    let send = std::fs::read_to_string(pages.join("kith-send.1")).unwrap();
    assert!(send.contains("\\-\\-wait"), "{send}");
    assert!(pages.join("kith-contact-block.1").exists());
    assert!(pages.join("kith-group-accept.1").exists());
}

/// Issue 18: `kith daemon --on-message CMD` runs CMD with each new message as JSON on stdin
/// (sender named, requests marked); `--notify` without a notification service only logs.
#[test]
fn on_message_runs_a_command_with_each_new_message_as_json() {
    let scripts = tempfile::tempdir().unwrap();
    let inbox = scripts.path().join("inbox.jsonl");
    let command = format!("cat >> '{}'", inbox.display());
    let two = two_daemons(&["--notify", "--on-message", command.as_str()], None);
    let (a, b, dir) = (two.a.clone(), two.b.clone(), two.dir.path().to_owned());
    two.bob_adds_alice();

    // A stranger first, then a contact: `$(rm -rf ~)` stays text inside the JSON.
    kith_ok(&b, &["send", "alice", "$(touch pwned) first", "--wait", "delivered"]).unwrap();
    let bob_peer =
        serde_json::from_str::<serde_json::Value>(&kith_ok(&b, &["id", "--json"]).unwrap())
            .unwrap()["peer_id"]
            .as_str()
            .unwrap()
            .to_owned();
    kith_ok(&a, &["contact", "accept", &bob_peer, "--name", "bob"]).unwrap();
    kith_ok(&b, &["send", "alice", "second", "--wait", "delivered"]).unwrap();
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&inbox)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    until("the command did not see both messages", || lines().len() == 2);
    let got = lines();
    assert_eq!(got[0]["text"], "$(touch pwned) first");
    assert_eq!(
        (got[0]["request"].as_bool(), got[0]["peer"].as_str()),
        (Some(true), Some(bob_peer.as_str()))
    );
    assert_eq!((got[1]["text"].as_str(), got[1]["from"].as_str()), (Some("second"), Some("bob")));
    assert_eq!(got[1]["request"], false);
    assert!(!dir.join("pwned").exists() && !a.join("pwned").exists());
    assert!(!scripts.path().join("pwned").exists());
    // The daemon carries on, its own messages never trigger the command.
    kith_ok(&a, &["send", "bob", "thanks", "--wait", "delivered"]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines().len(), 2);
}

/// `kith forget` deletes messages on this device, by id or the whole conversation; an id that
/// is not in the conversation deletes nothing.
#[test]
fn forget_deletes_messages_by_id_or_the_whole_conversation() {
    use kith_tests::kith_ok;
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    kith_ok(alice.path(), &["init"]).unwrap();
    kith_ok(bob.path(), &["init"]).unwrap();
    let bob_contact = kith_ok(bob.path(), &["id"]).unwrap();
    kith_ok(alice.path(), &["contact", "add", bob_contact.trim(), "--name", "bob"]).unwrap();
    for text in ["one", "two", "three"] {
        kith_ok(alice.path(), &["send", "bob", text, "--timeout", "1"]).ok();
    }
    let history = |dir: &std::path::Path| -> Vec<(String, String)> {
        let out = kith_ok(dir, &["history", "bob", "--json"]).unwrap();
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (m["id"].as_str().unwrap().to_owned(), m["text"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    };
    let before = history(alice.path());
    assert_eq!(before.len(), 3, "{before:?}");
    let refused =
        kith(alice.path(), &["forget", "bob", &before[0].0, "00112233445566778899aabbccddeeff"])
            .unwrap();
    assert!(!refused.status.success());
    assert_eq!(history(alice.path()).len(), 3, "nothing deleted");
    kith_ok(alice.path(), &["forget", "bob", &before[1].0]).unwrap();
    let after: Vec<String> = history(alice.path()).into_iter().map(|(_, t)| t).collect();
    assert_eq!(after.len(), 2);
    assert!(!after.contains(&before[1].1));
    kith_ok(alice.path(), &["forget", "bob", "--all"]).unwrap();
    assert!(history(alice.path()).is_empty());
    assert!(
        kith_ok(alice.path(), &["contact", "list"]).unwrap().contains("bob"),
        "the contact stays"
    );
}

#[test]
fn disappear_sets_shows_and_refuses_bad_timers() {
    use kith_tests::kith_ok;
    let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    kith_ok(alice.path(), &["init"]).unwrap();
    kith_ok(bob.path(), &["init"]).unwrap();
    let bob_contact = kith_ok(bob.path(), &["id"]).unwrap();
    kith_ok(alice.path(), &["contact", "add", bob_contact.trim(), "--name", "bob"]).unwrap();
    let shown = kith_ok(alice.path(), &["disappear", "bob"]).unwrap();
    assert!(shown.contains("off"), "{shown}");
    for bad in ["2y", "400d", "soon", "0s"] {
        let out = kith(alice.path(), &["disappear", "bob", bad]).unwrap();
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("duration") || err.contains("at most a year"), "{bad}: {err}");
    }
    let unknown = kith(alice.path(), &["disappear", "carol", "1d"]).unwrap();
    assert!(!unknown.status.success());
    let set = kith_ok(alice.path(), &["disappear", "bob", "1d"]).unwrap();
    assert!(set.contains("now disappear 1d"), "{set}");
    let shown = kith_ok(alice.path(), &["disappear", "bob"]).unwrap();
    assert!(shown.contains("disappear 1d after they are read"), "{shown}");
    let history = kith_ok(alice.path(), &["history", "bob"]).unwrap();
    assert!(history.contains("me: ⏱ set disappearing messages to 1d"), "{history}");
    kith_ok(alice.path(), &["disappear", "bob", "off"]).unwrap();
    assert!(kith_ok(alice.path(), &["disappear", "bob"]).unwrap().contains("are off"));
}
