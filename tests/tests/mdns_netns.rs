//! mDNS discovery for real: three daemons in three network namespaces joined by a bridge (the
//! test builds them with iproute2 and removes them afterwards), no bootstrap peers at all. They
//! discover each other with mDNS on the namespaces' LAN and exchange messages. Multicast never
//! touches the host's interfaces.
//!
//! Needs root and `ip` (CI has both; `.ci/run` installs iproute2). With `CI` set, a missing one
//! fails the test; elsewhere the test prints that it was skipped and why.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use kith_tests::netns::{ip, skip_reason};
use kith_tests::{Daemon, kith_ok};

/// Three namespaces `<prefix>1..3` on a bridge in a fourth one, removed on drop.
struct Lan {
    prefix: String,
}

impl Lan {
    fn ns(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    fn create() -> anyhow::Result<Self> {
        let prefix = format!("kith{}n", std::process::id() % 100_000);
        let lan = Self { prefix };
        let hub = lan.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=3 {
            let ns = lan.ns(i);
            let (inner, outer) = (format!("veth{i}"), format!("br{i}"));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &ns, "link", "add", &inner, "type", "veth", "peer", "name", &outer, "netns",
                &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &outer, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.77.0.{i}/24"), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Multicast (mDNS) goes out on the LAN interface.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", &inner])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 1..=3 {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

#[test]
fn three_daemons_in_three_namespaces_find_each_other_by_mdns_and_chat() {
    if let Some(why) = skip_reason(&[]) {
        // In CI a skip would pass silently: there the namespaces are required.
        assert!(std::env::var_os("CI").is_none(), "CI must run the mDNS namespace test: {why}");
        eprintln!(
            "\n*** SKIPPED three_daemons_in_three_namespaces_find_each_other_by_mdns_and_chat: {why}. ***\n"
        );
        return;
    }
    let lan = Lan::create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = ["ann", "ben", "cat"];
    let mut daemons = Vec::new();
    let mut contacts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let profile = dir.path().join(name);
        kith_ok(&profile, &["init", "--name", name]).unwrap();
        contacts.push(kith_ok(&profile, &["id"]).unwrap().lines().next().unwrap().to_owned());
        let ns = lan.ns(i + 1);
        let listen = format!("/ip4/10.77.0.{}/tcp/0", i + 1);
        // mDNS on (the default), no bootstrap peers.
        daemons.push(
            Daemon::spawn(&profile, &["--listen", &listen], &["ip", "netns", "exec", &ns]).unwrap(),
        );
    }
    for (i, daemon) in daemons.iter().enumerate() {
        for (j, name) in names.iter().enumerate() {
            if i != j {
                kith_ok(&daemon.dir, &["contact", "add", &contacts[j], "--name", name]).unwrap();
            }
        }
    }
    // Everyone writes to everyone; each message must be delivered.
    for (i, daemon) in daemons.iter().enumerate() {
        for (j, name) in names.iter().enumerate() {
            if i == j {
                continue;
            }
            let text = format!("{} to {name} over the LAN", names[i]);
            let out = kith_ok(
                &daemon.dir,
                &["send", name, &text, "--wait", "delivered", "--timeout", "60", "--json"],
            )
            .unwrap();
            let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(sent["status"], "delivered", "{} → {name}: {sent}", names[i]);
            let history = kith_ok(&daemons[j].dir, &["history", names[i], "--json"]).unwrap();
            assert!(history.contains(&text), "{name} did not get: {text}");
        }
    }
    println!("3 daemons in 3 namespaces: 6 messages delivered, discovery by mDNS only");
    drop(daemons);
    drop(lan);
}
