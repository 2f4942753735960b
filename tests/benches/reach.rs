//! Reach, measured for real in network namespaces (as the NAT test builds them): a public
//! relay, Alice and Bob behind two cone NATs, Carol behind a symmetric NAT. Prints two tables:
//!
//! - time from starting Alice's and Bob's daemons (contacts already known) to a direct,
//!   hole-punched connection between them, p50 and p99 over repeats;
//! - delivery latency (Alice's `send` call to the message event at the recipient) over the
//!   hole-punched connection, over the relayed circuit (Carol) and through the relay's mailbox
//!   (the relay restarted with circuits off), each divided by a bare libp2p request-response
//!   round trip on the same path (the connection's ping round trip; for the mailbox, Alice's to
//!   the relay plus Carol's to the relay), with an fsync measured in the same run (a delivery
//!   waits for one at the recipient, and the sender's write before it).
//!
//! `cargo bench -p kith-tests --bench reach` (as root, with iproute2 and iptables; `REPEATS=n`
//! sets the repeats and messages per path, 20 by default). Elsewhere it prints why it skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kith_node::rpc::RpcClient;
use kith_tests::netns::{Internet, RELAY_IP, skip_reason};
use kith_tests::{Daemon, RelayProcess, kith_ok};
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    if let Some(why) = skip_reason(&["iptables"]) {
        eprintln!("reach bench skipped: {why}");
        return Ok(());
    }
    let repeats: usize = std::env::var("REPEATS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut net = Internet::create()?;
    let relay_ns = net.on_bridge("relay", 1)?;
    let homes =
        [net.home("alice", 2, false)?, net.home("bob", 3, false)?, net.home("carol", 4, true)?];
    let dir = tempfile::tempdir()?;
    let relay_listen = format!("/ip4/{RELAY_IP}/tcp/4001");
    let spawn_relay = |extra: &[&str]| {
        RelayProcess::spawn_in(
            &dir.path().join("relay"),
            &["--listen", &relay_listen],
            extra,
            &["ip", "netns", "exec", &relay_ns],
        )
    };
    let mut relay = spawn_relay(&[])?;
    let relay_addr = relay.address.to_string();
    let relay_peer = relay_addr.rsplit('/').next().unwrap_or_default().to_owned();
    let names = ["alice", "bob", "carol"];
    let profiles: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    let start_daemon = |i: usize, port: u16| {
        let listen = format!("/ip4/{}/tcp/{port}", homes[i].lan_ip);
        let args =
            ["--listen", &listen, "--no-mdns", "--bootstrap", &relay_addr, "--relay", &relay_addr];
        Daemon::spawn(&profiles[i], &args, &["ip", "netns", "exec", &homes[i].host])
    };

    // Set-up: profiles, reservations, every pair introduced.
    let mut ids = Vec::new();
    let mut daemons = Vec::new();
    for (i, name) in names.iter().enumerate() {
        kith_ok(&profiles[i], &["init", "--name", name])?;
        daemons.push(start_daemon(i, 4000)?);
    }
    for daemon in &daemons {
        wait_for(Duration::from_secs(30), || daemon.holds_reservation().unwrap_or(false))?;
        ids.push(id(daemon));
    }
    for (i, daemon) in daemons.iter().enumerate() {
        for (j, name) in names.iter().enumerate() {
            if i != j {
                let contact = ids[j]["contact"].as_str().unwrap_or_default();
                kith_ok(&daemon.dir, &["contact", "add", contact, "--name", name])?;
            }
        }
    }
    let peer = |i: usize| ids[i]["peer_id"].as_str().unwrap_or_default().to_owned();
    // A first message each way sets up the sessions.
    for (from, to) in [(0, "bob"), (0, "carol")] {
        kith_ok(&daemons[from].dir, &["send", to, "hello", "--wait", "delivered"])?;
    }
    drop(daemons);

    // 1. Start to a direct connection.
    let mut to_direct = Vec::new();
    for repeat in 0..repeats {
        let port = 4001 + u16::try_from(repeat)?;
        let start = Instant::now();
        let alice = start_daemon(0, port)?;
        let _bob = start_daemon(1, port)?;
        let found = runtime.block_on(async {
            let mut client = RpcClient::connect(&alice.dir).await?;
            loop {
                let connections = client.call("connections", Value::Null).await?;
                let direct = connections
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["peer"] == peer(1) && c["relayed"] == false);
                if direct {
                    return anyhow::Ok(start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(60) {
                    anyhow::bail!("no direct connection within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })?;
        to_direct.push(found);
    }

    // 2. Delivery latency, by path.
    let port = 4001 + u16::try_from(repeats)?;
    let daemons: Vec<Daemon> =
        (0..3).map(|i| start_daemon(i, port)).collect::<anyhow::Result<_>>()?;
    for i in [0, 2] {
        wait_for(Duration::from_secs(30), || daemons[i].holds_reservation().unwrap_or(false))?;
    }
    kith_ok(&daemons[0].dir, &["send", "carol", "hello", "--wait", "delivered"])?;
    kith_ok(&daemons[0].dir, &["send", "bob", "hello", "--wait", "delivered"])?;
    // Alice ↔ Bob on the hole-punched connection only (the relayed one closed after it).
    wait_for(Duration::from_secs(60), || {
        let to_bob = connections_of(&daemons[0], &peer(1));
        !to_bob.is_empty() && to_bob.iter().all(|c| c["relayed"] == false)
    })?;
    let direct = runtime.block_on(latencies(&daemons[0], &daemons[1], "bob", repeats))?;
    let direct_rtt = rtts(&daemons[0], &peer(1));
    let circuit = runtime.block_on(latencies(&daemons[0], &daemons[2], "carol", repeats))?;
    let circuit_rtt = rtts(&daemons[0], &peer(2));
    anyhow::ensure!(
        connections_of(&daemons[0], &peer(2)).iter().all(|c| c["relayed"] == true),
        "carol was reached directly: the symmetric NAT let a hole punch through"
    );

    // The mailbox: the relay again, with no circuits, so that Carol is reachable only there.
    relay.kill();
    relay = spawn_relay(&["--max-circuits", "0"])?;
    wait_for(Duration::from_secs(60), || {
        connections_of(&daemons[0], &peer(2)).is_empty()
            && [0, 2].iter().all(|&i| !connections_of(&daemons[i], &relay_peer).is_empty())
    })?;
    let mailbox = runtime.block_on(latencies(&daemons[0], &daemons[2], "carol", repeats))?;
    let hop_rtt = |i: usize| percentile(&rtts(&daemons[i], &relay_peer), 50);
    let mailbox_rtt = hop_rtt(0) + hop_rtt(2);
    let fsync = fsyncs(&profiles[0], repeats.max(50))?;
    drop(daemons);
    drop(relay);
    drop(net);

    println!("\nstart → direct connection (alice, bob behind two cone NATs; {repeats} starts)");
    println!("| p50 | p99 | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} |",
        ms(percentile(&to_direct, 50)),
        ms(percentile(&to_direct, 99)),
        ms(percentile(&to_direct, 0)),
        ms(percentile(&to_direct, 100)),
    );
    println!("\ndelivery latency, send → message event at the recipient ({repeats} messages)");
    println!("| path | p50 | p99 | bare round trip p50 | p50 ÷ round trip |");
    println!("|---|---|---|---|---|");
    for (path, samples, rtt) in [
        ("hole-punched (alice → bob)", &direct, percentile(&direct_rtt, 50)),
        ("relayed circuit (alice → carol)", &circuit, percentile(&circuit_rtt, 50)),
        ("relay mailbox (alice → carol)", &mailbox, mailbox_rtt),
    ] {
        let p50 = percentile(samples, 50);
        println!(
            "| {path} | {} | {} | {} | {:.1} |",
            ms(p50),
            ms(percentile(samples, 99)),
            ms(rtt),
            p50.as_secs_f64() / rtt.as_secs_f64().max(1e-6),
        );
    }
    println!("\nfsync (4 KiB write + fdatasync, same disk) p50: {}", ms(percentile(&fsync, 50)));
    Ok(())
}

/// `from` sends `n` texts to `to_name`; the time from each `send` call to `to`'s message
/// event.
async fn latencies(
    from: &Daemon,
    to: &Daemon,
    to_name: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut events = RpcClient::connect(&to.dir).await?;
    events.call("subscribe", Value::Null).await.map_err(|e| anyhow::anyhow!(e.message))?;
    let mut client = RpcClient::connect(&from.dir).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("latency {to_name} {i} {}", std::process::id());
        let start = Instant::now();
        client
            .call("send", json!({ "to": to_name, "text": text }))
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let event = events.next_event().await.ok_or(anyhow::anyhow!("no more events"))?;
                if event["type"] == "message" && event["message"]["text"] == text.as_str() {
                    return anyhow::Ok(());
                }
            }
        })
        .await??;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

/// The ping round trips `daemon` reports on its connections to `peer`, sampled a few times.
fn rtts(daemon: &Daemon, peer: &str) -> Vec<Duration> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.extend(
            connections_of(daemon, peer)
                .iter()
                .filter_map(|c| c["rtt_ms"].as_f64())
                .map(|ms| Duration::from_secs_f64(ms / 1e3)),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    samples
}

/// Times of a 4 KiB write and `fdatasync` in `dir`.
fn fsyncs(dir: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [7u8; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(start.elapsed());
    }
    std::fs::remove_file(path)?;
    Ok(samples)
}

fn id(daemon: &Daemon) -> Value {
    daemon.json(&["id", "--json"]).unwrap_or_default()
}

/// `daemon`'s connections to `peer`, none while the daemon cannot say.
fn connections_of(daemon: &Daemon, peer: &str) -> Vec<Value> {
    daemon.connections_to(peer).unwrap_or_default()
}

fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        anyhow::ensure!(start.elapsed() < within, "waited {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The `p`th percentile (nearest rank) of `samples`.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
