//! A link that goes down and comes back, for real: two daemons in two network namespaces on a
//! bridge (built and removed by the test). Bob's port on the bridge is taken down for 30 s
//! while Alice keeps writing; once it is back, every message reaches Bob exactly once within
//! 5 s, and Alice sees each Delivered within 5 s of Bob having it.
//!
//! What makes this work: a connection that answers no ping for 16 s is closed
//! (`node/src/liveness.rs`; requests stop queueing behind TCP retransmissions, whose back-off
//! would otherwise keep the healed link silent for up to half a minute), and a lost peer with
//! something queued for it is dialed afresh every 2 s (`node/src/redial.rs`), so the first dial
//! after the heal connects and the outbox drains.
//!
//! Needs root and `ip`. With `CI` set, a missing one fails the test; elsewhere the test prints
//! that it was skipped and why.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::time::{Duration, Instant};

use kith_tests::netns::{ip, skip_reason};
use kith_tests::{Daemon, kith_ok};

/// Two namespaces `<prefix>a`, `<prefix>b` on a bridge in `<prefix>hub`, removed on drop.
struct Bridge {
    prefix: String,
}

impl Bridge {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn create() -> anyhow::Result<Self> {
        let bridge = Self { prefix: format!("kp{}", std::process::id() % 100_000) };
        let hub = bridge.ns("hub");
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, name) in ["a", "b"].iter().enumerate() {
            let ns = bridge.ns(name);
            let outer = format!("p{name}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &outer, "netns",
                &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &outer, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.88.0.{}/24", i + 1), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(bridge)
    }

    /// Takes Bob's port on the bridge down or up.
    fn set_bob_link(&self, up: bool) -> anyhow::Result<()> {
        ip(&["-n", &self.ns("hub"), "link", "set", "pb", if up { "up" } else { "down" }])
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for name in ["a", "b", "hub"] {
            let _ = ip(&["netns", "del", &self.ns(name)]);
        }
    }
}

/// The outgoing (or incoming) messages in `daemon`'s history with `peer` whose text starts
/// with `prefix`, as (text, status).
fn messages(daemon: &Daemon, peer: &str, prefix: &str) -> Vec<(String, String)> {
    let out = kith_ok(&daemon.dir, &["history", peer, "--json", "--limit", "1000"]).unwrap();
    let history: serde_json::Value = serde_json::from_str(&out).unwrap();
    history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            let text = m["text"].as_str()?;
            text.starts_with(prefix)
                .then(|| (text.to_owned(), m["status"].as_str().unwrap_or_default().to_owned()))
        })
        .collect()
}

fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Instant {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Instant::now()
}

#[test]
fn after_a_thirty_second_partition_every_message_arrives_once_within_seconds_of_the_heal() {
    if let Some(why) = skip_reason(&[]) {
        assert!(std::env::var_os("CI").is_none(), "CI must run the partition test: {why}");
        eprintln!("\n*** SKIPPED the partition test: {why}. ***\n");
        return;
    }
    let bridge = Bridge::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (alice_dir, bob_dir) = (dir.path().join("alice"), dir.path().join("bob"));
    kith_ok(&alice_dir, &["init", "--name", "alice"]).unwrap();
    kith_ok(&bob_dir, &["init", "--name", "bob"]).unwrap();
    let alice = Daemon::spawn(
        &alice_dir,
        &["--listen", "/ip4/10.88.0.1/tcp/4001", "--no-mdns"],
        &["ip", "netns", "exec", &bridge.ns("a")],
    )
    .unwrap();
    let alice_addr = alice.addresses[0].clone();
    let bob = Daemon::spawn(
        &bob_dir,
        &["--listen", "/ip4/10.88.0.2/tcp/4001", "--no-mdns", "--bootstrap", &alice_addr],
        &["ip", "netns", "exec", &bridge.ns("b")],
    )
    .unwrap();
    let contact = |d: &Daemon| {
        let id: serde_json::Value =
            serde_json::from_str(&kith_ok(&d.dir, &["id", "--json"]).unwrap()).unwrap();
        id["contact"].as_str().unwrap().to_owned()
    };
    kith_ok(&alice.dir, &["contact", "add", &contact(&bob), "--name", "bob"]).unwrap();
    kith_ok(&bob.dir, &["contact", "add", &contact(&alice), "--name", "alice"]).unwrap();
    let hello = kith_ok(
        &alice.dir,
        &["send", "bob", "before", "--wait", "delivered", "--timeout", "30", "--json"],
    )
    .unwrap();
    assert!(hello.contains("delivered"), "{hello}");

    // Bob's link down for 30 s while Alice writes.
    bridge.set_bob_link(false).unwrap();
    let down = Instant::now();
    let mut sent = 0;
    while down.elapsed() < Duration::from_secs(30) {
        kith_ok(&alice.dir, &["send", "bob", &format!("during {sent}")]).unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    bridge.set_bob_link(true).unwrap();
    let healed = Instant::now();
    let all_there = wait_until(Duration::from_secs(60), "every message at Bob", || {
        messages(&bob, "alice", "during").len() >= sent
    });
    let at_bob = messages(&bob, "alice", "during");
    for i in 0..sent {
        let text = format!("during {i}");
        let copies = at_bob.iter().filter(|(t, _)| *t == text).count();
        assert_eq!(copies, 1, "{text} arrived {copies} times");
    }
    let all_delivered = wait_until(Duration::from_secs(60), "Delivered at Alice", || {
        let mine = messages(&alice, "bob", "during");
        mine.len() == sent && mine.iter().all(|(_, s)| s == "delivered" || s == "read")
    });
    let arrival = all_there.duration_since(healed);
    let receipts = all_delivered.duration_since(all_there);
    println!(
        "{sent} messages sent during a 30 s partition: all at Bob {arrival:?} after the heal, \
         all Delivered at Alice {receipts:?} after that"
    );
    assert!(arrival <= Duration::from_secs(5), "messages arrived {arrival:?} after the heal");
    assert!(receipts <= Duration::from_secs(5), "receipts took {receipts:?} more");
    drop(bob);
    drop(alice);
    drop(bridge);
}
