//! Kith 1:1 delivery beside a bare rust-libp2p request-response echo, in one run on loopback.
//!
//! Both sides use the same transport (TCP, Noise, Yamux) and a 1 KiB payload.
//!
//! - **Latency**: one message at a time. Bare libp2p: request → echoed response. Kith: `send`
//!   → the peer decrypts, stores and flushes it, and acknowledges → the sender records *Sent*
//!   (the same network round trip, plus end-to-end encryption and an fsync on each side).
//!   Two series: on idle nodes (the next message once the last is Delivered and both nodes
//!   have been idle 5 ms: what a person sending a message sees; the ratio to the floor is
//!   taken on it), and back to back (the next message as soon as the last is Sent, so that it
//!   queues behind the last one's tail: the sender's status commit, the receipt and its
//!   acknowledgement on both sides).
//! - **Throughput**: many messages in flight. Bare: 1 KiB requests with up to 512 outstanding.
//!   Kith: messages sent concurrently until all have arrived at the peer (each stored durably
//!   on both sides; the peer's delivery receipts flow back meanwhile).
//!
//! Throughput is measured `KITH_BENCH_ROUNDS` times (default 5) on each side and the median
//! reported: single runs on a shared 2-core VM vary by ±15 %.
//!
//! The latency floor is measured in the same run: the bare round trip plus `c` durable commits
//! of Kith's own store on the same disk (p50), `c` = 2 being the commits that must happen one
//! after the other on the path (the sender's, before the envelope leaves: no message key
//! reused after a crash; the recipient's, before it acknowledges). *Sent* is reported on the
//! acknowledgement, before the sender's own status commit.
//!
//! Run with `cargo bench -p kith-node --bench delivery`.

#![allow(
    missing_docs,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::io;
use std::time::{Duration, Instant};

#[path = "support/floor.rs"]
mod floor;

use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_node::kith_core::engine::Event;
use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_protocol::{MessageId, UserId};
use kith_node::{Node, NodeConfig, NodeEvent};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};

const PAYLOAD: usize = 1024;
const LATENCY_SAMPLES: usize = 1000;
const THROUGHPUT_MESSAGES: usize = 20_000;
const PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/echo/1");

#[derive(Clone, Default)]
struct Echo;

impl request_response::Codec for Echo {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&r).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()> {
        self.write_request(p, io, r).await
    }
}

fn echo_swarm() -> Swarm<request_response::Behaviour<Echo>> {
    let config = request_response::Config::default()
        .with_request_timeout(Duration::from_secs(60))
        .with_max_concurrent_streams(kith_node::defaults::MAX_CONCURRENT_STREAMS);
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::new([(PROTOCOL, ProtocolSupport::Full)], config)
        })
        .unwrap()
        .build()
}

struct Figures {
    /// Latency, one message at a time (on idle nodes, for Kith).
    p50: Duration,
    p99: Duration,
    /// Kith's latency p50 with each message sent as soon as the last is Sent.
    back_to_back: Option<Duration>,
    per_second: f64,
}

/// Throughput rounds per side: `KITH_BENCH_ROUNDS`, default 5.
fn rounds() -> usize {
    std::env::var("KITH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

async fn bare_libp2p() -> Figures {
    let mut server = echo_swarm();
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let address: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) = server.select_next_some().await
            {
                let _ = server.behaviour_mut().send_response(channel, request);
            }
        }
    });
    let mut client = echo_swarm();
    client.add_peer_address(server_id, address);
    let payload = vec![0x5a; PAYLOAD];
    // Waits for `n` responses (panics on a failure: the bench must not report broken runs).
    async fn responses(client: &mut Swarm<request_response::Behaviour<Echo>>, mut n: usize) {
        while n > 0 {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => n -= 1,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("echo failed: {error}"),
                _ => {}
            }
        }
    }
    // Warm up (connection setup).
    client.behaviour_mut().send_request(&server_id, payload.clone());
    responses(&mut client, 1).await;

    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let start = Instant::now();
        client.behaviour_mut().send_request(&server_id, payload.clone());
        responses(&mut client, 1).await;
        samples.push(start.elapsed());
    }
    let (p50, p99) = percentiles(samples);

    let window = kith_node::defaults::MAX_CONCURRENT_STREAMS;
    let mut per_round = Vec::new();
    for _ in 0..rounds() {
        let start = Instant::now();
        let mut sent = 0;
        let mut done = 0;
        while done < THROUGHPUT_MESSAGES {
            while sent < THROUGHPUT_MESSAGES && sent - done < window {
                client.behaviour_mut().send_request(&server_id, payload.clone());
                sent += 1;
            }
            responses(&mut client, 1).await;
            done += 1;
        }
        per_round.push(THROUGHPUT_MESSAGES as f64 / start.elapsed().as_secs_f64());
    }
    Figures { p50, p99, back_to_back: None, per_second: median(per_round) }
}

/// How long the nodes are left idle between two messages of the idle latency series.
const IDLE: Duration = Duration::from_millis(5);

/// Waits for message `id` to reach `status` on `events`.
async fn wait_for(events: &mut kith_node::Events, id: MessageId, status: MessageStatus) {
    loop {
        if let Ok(NodeEvent::Engine(Event::StatusChanged { id: i, status: s, .. })) =
            events.recv().await
            && i == id
            && s == status
        {
            return;
        }
    }
}

/// [`LATENCY_SAMPLES`] messages one at a time, each timed from `send` to *Sent*; `idle`: the
/// next only once the last is Delivered and [`IDLE`] has passed.
async fn one_at_a_time(
    alice: &Node,
    events: &mut kith_node::Events,
    to: UserId,
    text: &str,
    idle: bool,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let start = Instant::now();
        let id = alice.send_text(to, text.to_owned()).await.unwrap();
        wait_for(events, id, MessageStatus::Sent).await;
        samples.push(start.elapsed());
        if idle {
            wait_for(events, id, MessageStatus::Delivered).await;
            tokio::time::sleep(IDLE).await;
        }
    }
    samples
}

async fn kith() -> Figures {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = Node::create(NodeConfig::loopback(dirs.0.path())).await.unwrap();
    let mut bob_config = NodeConfig::loopback(dirs.1.path());
    bob_config.bootstrap = alice.addresses().await.unwrap();
    let bob = Node::create(bob_config).await.unwrap();
    alice.add_contact(&bob.contact_string(), "bob").await.unwrap();
    let to = bob.user_id();
    let text = "x".repeat(PAYLOAD);
    // Warm up: session setup, then a few messages.
    for _ in 0..10 {
        let id = alice.send_text(to, text.clone()).await.unwrap();
        alice.wait_for_status(id, MessageStatus::Delivered, Duration::from_secs(30)).await.unwrap();
    }

    let mut events = alice.subscribe();
    // One message at a time, the next sent as soon as the last is Sent: the next message's
    // commits queue behind the last one's tail (the sender's status commit, the receipt and
    // its acknowledgement on both sides).
    let (back_to_back, _) = percentiles(one_at_a_time(&alice, &mut events, to, &text, false).await);
    // One message at a time on idle nodes: the next is sent once the last is Delivered and
    // both nodes have had IDLE to finish its tail. What a person sending a message sees.
    let samples = one_at_a_time(&alice, &mut events, to, &text, true).await;
    let (p50, p99) = percentiles(samples);
    drop(events);

    let mut per_round = Vec::new();
    for _ in 0..rounds() {
        // Let the last acknowledgements and receipts settle first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut arrivals = bob.subscribe();
        let start = Instant::now();
        let counter = tokio::spawn(async move {
            let mut n = 0;
            while n < THROUGHPUT_MESSAGES {
                match arrivals.recv().await {
                    Ok(NodeEvent::Engine(Event::Message(_))) => n += 1,
                    Ok(NodeEvent::Lagged { missed, .. }) => panic!("bench lost {missed} events"),
                    _ => {}
                }
            }
        });
        let mut sends = FuturesUnordered::new();
        for _ in 0..THROUGHPUT_MESSAGES {
            let (alice, text) = (alice.clone(), text.clone());
            sends.push(async move { alice.send_text(to, text).await.unwrap() });
            // Keep a bounded number of calls in flight (like an app sending as fast as it can).
            while sends.len() >= 512 {
                sends.next().await;
            }
        }
        while sends.next().await.is_some() {}
        counter.await.unwrap();
        per_round.push(THROUGHPUT_MESSAGES as f64 / start.elapsed().as_secs_f64());
    }
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    Figures { p50, p99, back_to_back: Some(back_to_back), per_second: median(per_round) }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        // `cargo test --all-targets` runs benches as tests: nothing to check here quickly.
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let bare = bare_libp2p().await;
    let commit = floor::commit_p50(&std::env::temp_dir());
    let kith = kith().await;
    let commits = 2;
    let floor = bare.p50 + commit * commits;
    println!(
        "\n1 KiB payload, loopback, TCP + Noise + Yamux; {LATENCY_SAMPLES} latency samples; throughput: median of {} rounds of {THROUGHPUT_MESSAGES} messages\n",
        rounds()
    );
    println!(
        "| | bare libp2p request-response echo | Kith (E2EE, persisted, acked) | Kith ÷ bare | target |"
    );
    println!("|---|---:|---:|---:|---|");
    println!(
        "| latency p50 | {} | {} | {:.2}× | |",
        ms(bare.p50),
        ms(kith.p50),
        kith.p50.as_secs_f64() / bare.p50.as_secs_f64()
    );
    let back_to_back = kith.back_to_back.unwrap_or_default();
    println!(
        "| latency p50, back to back | {} | {} | {:.2}× | |",
        ms(bare.p50),
        ms(back_to_back),
        back_to_back.as_secs_f64() / bare.p50.as_secs_f64()
    );
    println!(
        "| latency p99 | {} | {} | {:.2}× | |",
        ms(bare.p99),
        ms(kith.p99),
        kith.p99.as_secs_f64() / bare.p99.as_secs_f64()
    );
    println!(
        "| throughput | {:.0} msg/s | {:.0} msg/s | {:.2}× | ≥ 10,000 msg/s |",
        bare.per_second,
        kith.per_second,
        kith.per_second / bare.per_second
    );
    println!(
        "\nfloor = bare round trip p50 {} + c = {commits} × durable commit p50 {} = {}; Kith p50 ÷ floor = {:.2} (bound ≤ 1.5)",
        ms(bare.p50),
        ms(commit),
        ms(floor),
        kith.p50.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "back to back (the next message sent as soon as the last is Sent): Kith p50 ÷ floor = {:.2}",
        back_to_back.as_secs_f64() / floor.as_secs_f64()
    );
}
