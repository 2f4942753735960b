//! Group fan-out: Kith group messages beside the same payload on a bare gossipsub mesh of the
//! same size, in one run on loopback (TCP, Noise, Yamux).
//!
//! For groups of 4, 8 and 16: one member publishes a 1 KiB message, and the time until the
//! *last* other member has it is one sample. Kith: `send_group_text` → sealed with the sender
//! key and stored → published → each member validates (signature), decrypts and stores it
//! durably. Bare: `publish` of 1 KiB on a plain gossipsub mesh (same message ids, no
//! validation, nothing stored). Where the machine has `/dev/shm`, Kith runs a second time with
//! its data there (no disk under it: a flush costs only sled's own work), which separates what
//! the disk costs from what the protocol and the store cost.
//!
//! The floor is measured in the same run: the bare mesh's p50 plus `c` = 2 durable commits of
//! Kith's own store on the same disk (p50): the sender's before it publishes (no sender-key
//! iteration reused after a crash), a member's before it reports the message.
//!
//! Run with `cargo bench -p kith-node --bench groups` (`KITH_BENCH_SAMPLES`, default 100;
//! `KITH_BENCH_SIZES`, default `4,8,16`).

#![allow(
    missing_docs,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kith_node::kith_core::engine::Event;
use kith_node::kith_protocol::MessageId;
use kith_node::{Node, NodeConfig, NodeEvent};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, SwarmBuilder, noise, tcp, yamux};
use tokio::sync::mpsc;

#[path = "support/floor.rs"]
mod floor;

const PAYLOAD: usize = 1024;
const SIZES: [usize; 3] = [4, 8, 16];
/// Room in the bench's channels (far above what is in flight).
const CHANNEL: usize = 65_536;

fn samples() -> usize {
    std::env::var("KITH_BENCH_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// Group sizes to measure: `KITH_BENCH_SIZES` (comma-separated), default 4, 8 and 16.
fn sizes() -> Vec<usize> {
    std::env::var("KITH_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| SIZES.to_vec())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- bare gossipsub

fn bare_swarm() -> Swarm<gossipsub::Behaviour> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(&blake3::hash(&m.data).as_bytes()[..20])
        })
        .build()
        .unwrap();
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, config).unwrap()
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    swarm
}

/// Each swarm runs in its own task; publications go in by channel, arrivals come out.
async fn bare(n: usize, samples: usize) -> Vec<Duration> {
    let topic = IdentTopic::new("bench");
    let mut swarms: Vec<Swarm<gossipsub::Behaviour>> = (0..n).map(|_| bare_swarm()).collect();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for swarm in &mut swarms {
        loop {
            if let Some(SwarmEvent::NewListenAddr { address, .. }) = swarm.next().await {
                addrs.push(address.with_p2p(*swarm.local_peer_id()).unwrap());
                break;
            }
        }
        swarm.behaviour_mut().subscribe(&topic).unwrap();
    }
    for (i, swarm) in swarms.iter_mut().enumerate() {
        for addr in &addrs[i + 1..] {
            swarm.dial(addr.clone()).unwrap();
        }
    }
    let (arrived_tx, mut arrived) = mpsc::channel::<(usize, Vec<u8>, Instant)>(CHANNEL);
    let mut publish = Vec::new();
    for (i, mut swarm) in swarms.into_iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL);
        publish.push(tx);
        let arrived_tx = arrived_tx.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    data = rx.recv() => match data {
                        Some(data) => { let _ = swarm.behaviour_mut().publish(topic.clone(), data); }
                        None => return,
                    },
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = event {
                            let _ = arrived_tx.send((i, message.data, Instant::now())).await;
                        }
                    }
                }
            }
        });
    }
    // Let the mesh form (a few heartbeats), then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut out = Vec::new();
    for s in 0..samples + 10 {
        let mut data = vec![0u8; PAYLOAD];
        data[..8].copy_from_slice(&(s as u64).to_be_bytes());
        let start = Instant::now();
        publish[0].send(data.clone()).await.unwrap();
        let mut got = 0;
        let mut last = start;
        while got < n - 1 {
            let (_, d, at) = tokio::time::timeout(Duration::from_secs(10), arrived.recv())
                .await
                .expect("bare gossip delivered")
                .unwrap();
            if d == data {
                got += 1;
                last = at;
            }
        }
        if s >= 10 {
            out.push(last - start);
        }
    }
    out
}

// ---------------------------------------------------------------- Kith

/// Kith with every member's data dir under `base`.
async fn kith(n: usize, samples: usize, base: &std::path::Path) -> Vec<Duration> {
    let dirs: Vec<tempfile::TempDir> =
        (0..n).map(|_| tempfile::tempdir_in(base).unwrap()).collect();
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(Node::create(NodeConfig::loopback(dir.path())).await.unwrap());
    }
    for i in 0..n {
        for j in i + 1..n {
            for addr in nodes[j].addresses().await.unwrap() {
                nodes[i].connect(addr).await.unwrap();
            }
        }
    }
    let (arrived_tx, mut arrived) = mpsc::channel::<(usize, MessageId, Instant)>(CHANNEL);
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let mut events = node.subscribe();
        let tx = arrived_tx.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let NodeEvent::Engine(Event::Message(m)) = event {
                    let _ = tx.send((i, m.id, Instant::now())).await;
                }
            }
        });
    }
    let others = nodes[1..].iter().map(Node::user_id).collect();
    let group = nodes[0].create_group("bench", others).await.unwrap();
    // Everyone in, every key delivered, the mesh formed: a message reaches all.
    loop {
        let mut ready = true;
        for node in &nodes {
            ready &= node.group(group).await.unwrap().is_some_and(|g| g.members.len() == n);
        }
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = "x".repeat(PAYLOAD);
    let mut out = Vec::new();
    let mut early: HashMap<MessageId, Vec<Instant>> = HashMap::new();
    for s in 0..samples + 10 {
        let start = Instant::now();
        let id = nodes[0].send_group_text(group, text.clone()).await.unwrap();
        let mut times = early.remove(&id).unwrap_or_default();
        while times.len() < n - 1 {
            let (_, got, at) = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
                .await
                .expect("Kith group message delivered")
                .unwrap();
            if got == id {
                times.push(at);
            } else {
                early.entry(got).or_default().push(at);
            }
        }
        if s >= 10 {
            out.push(*times.iter().max().unwrap() - start);
        }
    }
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    out
}

/// A RAM-backed directory (`/dev/shm`, where an fsync returns at once), if this machine has
/// one: Kith measured there shows what it costs apart from the disk's flush latency.
fn memory_dir() -> Option<std::path::PathBuf> {
    let shm = std::path::PathBuf::from("/dev/shm");
    shm.is_dir().then_some(shm)
}

/// p50 and p99 of `samples`, sorted in place.
fn p50_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (percentile(samples, 0.5), percentile(samples, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples = samples();
    let memory = memory_dir();
    let commit = floor::commit_p50(&std::env::temp_dir());
    let commits = 2u32;
    println!("group fan-out, 1 KiB, time until the last member has it ({samples} samples each)");
    println!(
        "durable commit of Kith's store on this disk, p50: {:.3} ms; c = {commits}",
        ms(commit)
    );
    println!(
        "| members | bare gossipsub p50 | p99 | floor (bare + c × commit) | Kith p50 | p99 | Kith / floor (p50) | \
         Kith, data in RAM p50 | p99 | / bare (p50) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes() {
        let (b50, b99) = p50_p99(&mut bare(n, samples).await);
        let (k50, k99) = p50_p99(&mut kith(n, samples, &std::env::temp_dir()).await);
        let in_memory = match &memory {
            Some(dir) => {
                let (m50, m99) = p50_p99(&mut kith(n, samples, dir).await);
                format!("{:.2} ms | {:.2} ms | {:.2}×", ms(m50), ms(m99), ms(m50) / ms(b50))
            }
            None => "– | – | –".to_owned(),
        };
        let floor = b50 + commit * commits;
        println!(
            "| {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}× | {in_memory} |",
            ms(b50),
            ms(b99),
            ms(floor),
            ms(k50),
            ms(k99),
            ms(k50) / ms(floor)
        );
    }
}
