//! `kith chat` driven in a pseudo-terminal as a person would, its screen read back with a
//! terminal emulator (vt100): two daemons on 127.0.0.1; send and see ✓✓, reply, react, edit,
//! delete, send a file, shrink the window to 50×14 and still see the newest message, stop and
//! restart the daemon under the chat and keep going without losing what was typed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kith_tests::{Daemon, kith_binary, kith_ok};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

const LOOPBACK: &[&str] = &["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--dht-server"];
const WAIT: Duration = Duration::from_secs(60);

/// A `kith chat` in a pseudo-terminal, and the screen it drew.
struct Chat {
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Box<dyn Write + Send>,
    master: Box<dyn portable_pty::MasterPty + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

impl Chat {
    fn start(dir: &std::path::Path, args: &[&str]) -> Self {
        let pty = native_pty_system()
            .openpty(PtySize { rows: 30, cols: 100, pixel_width: 0, pixel_height: 0 })
            .unwrap();
        let mut command = CommandBuilder::new(kith_binary().unwrap());
        command.arg("--data-dir");
        command.arg(dir);
        command.arg("chat");
        command.args(args);
        command.env("TERM", "xterm-256color");
        let child = pty.slave.spawn_command(command).unwrap();
        let mut reader = pty.master.try_clone_reader().unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(30, 100, 0)));
        let feed = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    return;
                }
                feed.lock().unwrap().process(&buffer[..n]);
            }
        });
        let writer = pty.master.take_writer().unwrap();
        Self { screen, writer, master: pty.master, child }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Waits until the screen shows every one of `texts`.
    fn wait_for(&self, texts: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let shown = self.contents();
            if texts.iter().all(|t| shown.contains(t)) {
                return;
            }
            assert!(Instant::now() < deadline, "never showed {texts:?}; the screen:\n{shown}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).unwrap();
        self.writer.flush().unwrap();
        // Each key is its own event for the chat (an escape sequence must not merge with
        // the next key).
        std::thread::sleep(Duration::from_millis(150));
    }

    fn type_line(&mut self, text: &str) {
        self.keys(text);
        self.keys("\r");
    }

    fn up(&mut self) {
        self.keys("\x1b[A");
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        self.master.resize(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 }).unwrap();
        self.screen.lock().unwrap().screen_mut().set_size(rows, cols);
        // The chat redraws on the resize event; a key makes sure of a full redraw.
        self.keys("\x1b[F");
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn the_chat_ui_sends_replies_reacts_edits_deletes_sends_files_resizes_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    kith_ok(&a, &["init", "--name", "Alice"]).unwrap();
    kith_ok(&b, &["init", "--name", "Bob"]).unwrap();
    let mut alice = Some(Daemon::spawn(&a, LOOPBACK, &[]).unwrap());
    let mut bob_args = LOOPBACK.to_vec();
    let alice_address = alice.as_ref().unwrap().addresses[0].clone();
    bob_args.extend(["--bootstrap", alice_address.as_str()]);
    let bob = Daemon::spawn(&b, &bob_args, &[]).unwrap();
    let alice_contact = kith_ok(&a, &["id"]).unwrap().lines().next().unwrap().to_owned();
    let bob_contact = kith_ok(&b, &["id"]).unwrap().lines().next().unwrap().to_owned();
    kith_ok(&a, &["contact", "add", &bob_contact, "--name", "bob"]).unwrap();
    kith_ok(&b, &["contact", "add", &alice_contact, "--name", "alice"]).unwrap();

    let mut chat = Chat::start(&a, &["bob"]);
    chat.wait_for(&[" bob", "│>"]);

    // Send: the mark goes to ✓✓ once Bob's node has it.
    chat.type_line("hello from the terminal");
    chat.wait_for(&["me: hello from the terminal ✓✓"]);
    kith_ok(&b, &["send", "alice", "how are you?", "--wait", "delivered"]).unwrap();
    chat.wait_for(&["bob: how are you?"]);

    // Reply to Bob's message: select it, type, Enter.
    chat.up();
    chat.wait_for(&["replying to: how are you?"]);
    chat.type_line("fine, thanks");
    chat.wait_for(&["↳ bob: how are you?", "me: fine, thanks"]);

    // React to, edit, then delete our reply (the newest message: one ↑).
    chat.up();
    chat.type_line("/react 👍");
    chat.wait_for(&["[👍]"]);
    chat.up();
    chat.type_line("/edit fine, really");
    chat.wait_for(&["me: fine, really (edited)"]);
    let bob_sees = || kith_ok(&b, &["history", "alice"]).unwrap();
    let deadline = Instant::now() + WAIT;
    while !bob_sees().contains("fine, really (edited)") {
        assert!(Instant::now() < deadline, "Bob never saw the edit: {}", bob_sees());
        std::thread::sleep(Duration::from_millis(200));
    }
    chat.up();
    chat.type_line("/delete");
    chat.wait_for(&["me: (deleted)"]);

    // A file, with its progress on the message; Bob's daemon saves it.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "x".repeat(300_000)).unwrap();
    chat.type_line(&format!("/file {} the notes", file.display()));
    chat.wait_for(&["[file notes.txt, 293.0 KiB] the notes"]);
    let deadline = Instant::now() + WAIT;
    while !bob_sees().contains("(saved to") {
        assert!(Instant::now() < deadline, "Bob never saved the file: {}", bob_sees());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A small window still shows the newest message.
    chat.resize(14, 50);
    kith_ok(&b, &["send", "alice", "newest, after the resize", "--wait", "delivered"]).unwrap();
    chat.wait_for(&["bob: newest, after the resize"]);

    // The daemon stops under the chat: the chat says so, keeps the draft, and carries on
    // once a daemon runs again.
    let mut stopped = alice.take().unwrap();
    stopped.signal("TERM").unwrap();
    assert!(stopped.exit_within(Duration::from_secs(30)).is_some(), "the daemon did not stop");
    // Dropped before the next daemon starts: dropping a `Daemon` stops the profile's daemon.
    drop(stopped);
    chat.wait_for(&["reconnecting"]);
    chat.keys("still here");
    let mut args = LOOPBACK.to_vec();
    args.extend(["--bootstrap", bob.addresses[0].as_str()]);
    alice = Some(Daemon::spawn(&a, &args, &[]).unwrap());
    chat.wait_for(&["reconnected", "> still here"]);
    chat.keys("\r");
    chat.wait_for(&["me: still here"]);
    let deadline = Instant::now() + WAIT;
    while !bob_sees().contains("alice: still here") {
        assert!(Instant::now() < deadline, "Bob never got the message: {}", bob_sees());
        std::thread::sleep(Duration::from_millis(200));
    }
    chat.keys("\x11"); // Ctrl-Q
    drop((chat, alice, bob));
}
