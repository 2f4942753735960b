//! Kith file transfer beside a bare rust-libp2p stream copying the same bytes, in one run on
//! loopback, over the same transport (TCP, Noise, Yamux).
//!
//! - **Bare libp2p**: one substream; the sender writes the file's bytes in 1 MiB writes, the
//!   receiver reads them to the end (and discards them).
//! - **Bare libp2p into a file**: the same, but the receiver writes the bytes to a file and
//!   syncs it at the end, as any download that survives a crash must (the disk's bound).
//! - **Kith**: `Node::send_file` (the sealing into the sender's sealed copy is timed apart);
//!   from the moment the manifest is queued until the recipient has verified, decrypted,
//!   written, synced and renamed the whole file into its downloads directory.
//!
//! Run with `cargo bench -p kith-node --bench media`. `KITH_BENCH_MIB` sets the file size
//! (default 256), `KITH_BENCH_RUNS` the runs per figure (default 3, the median is shown).

#![allow(
    missing_docs,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_node::kith_core::media::CHUNK_BYTES;
use kith_node::media::{MediaEvent, PARALLEL_CHUNKS};
use kith_node::{Node, NodeConfig, NodeEvent};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};

#[path = "support/data.rs"]
mod data;
const PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/copy/1");
const WRITE: usize = 1 << 20;

/// What travels: the bytes to write, or (read side) how many arrived.
#[derive(Clone, Debug)]
enum Copy {
    Send(Arc<Vec<u8>>),
    Received(u64),
}

/// Reads the copied bytes and discards them, or (with a sink) writes them to that file and
/// syncs it at the end, as a download must.
#[derive(Clone, Default)]
struct CopyCodec {
    sink: Option<std::path::PathBuf>,
}

impl request_response::Codec for CopyCodec {
    type Protocol = StreamProtocol;
    type Request = Copy;
    type Response = Copy;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Copy> {
        let mut buf = vec![0u8; WRITE];
        let mut total = 0u64;
        let mut file = match &self.sink {
            Some(path) => Some(std::fs::File::create(path)?),
            None => None,
        };
        loop {
            let n = io.read(&mut buf).await?;
            if n == 0 {
                if let Some(file) = file {
                    file.sync_all()?;
                }
                return Ok(Copy::Received(total));
            }
            if let Some(file) = file.as_mut() {
                file.write_all(&buf[..n])?;
            }
            total += n as u64;
        }
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Copy> {
        let mut buf = [0u8; 8];
        io.read_exact(&mut buf).await?;
        Ok(Copy::Received(u64::from_be_bytes(buf)))
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        copy: Copy,
    ) -> io::Result<()> {
        if let Copy::Send(data) = copy {
            for chunk in data.chunks(WRITE) {
                io.write_all(chunk).await?;
            }
        }
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        copy: Copy,
    ) -> io::Result<()> {
        let n = match copy {
            Copy::Received(n) => n,
            Copy::Send(d) => d.len() as u64,
        };
        io.write_all(&n.to_be_bytes()).await?;
        io.close().await
    }
}

/// Fetch by index: an 8-byte request, the chunk's bytes as the response.
#[derive(Clone, Default)]
struct FetchCodec;

impl request_response::Codec for FetchCodec {
    type Protocol = StreamProtocol;
    type Request = u64;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        io.read_exact(&mut buf).await?;
        Ok(u64::from_be_bytes(buf))
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(2 << 20);
        io.take(2 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        index: u64,
    ) -> io::Result<()> {
        io.write_all(&index.to_be_bytes()).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        data: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&data).await?;
        io.close().await
    }
}

fn swarm<C>(codec: C) -> Swarm<request_response::Behaviour<C>>
where
    C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
{
    let config = request_response::Config::default()
        .with_request_timeout(Duration::from_secs(600))
        .with_max_concurrent_streams(kith_node::defaults::MAX_CONCURRENT_STREAMS);
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                codec,
                [(PROTOCOL, ProtocolSupport::Full)],
                config,
            )
        })
        .unwrap()
        .build()
}

/// Seconds to copy `data` over one substream (the receiver has read every byte, and with a
/// `sink` has written and synced them to that file).
async fn bare_libp2p(
    data: Arc<Vec<u8>>,
    runs: usize,
    sink: Option<std::path::PathBuf>,
) -> Vec<f64> {
    let mut server = swarm(CopyCodec { sink });
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let address: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let (received_tx, mut received) = tokio::sync::mpsc::channel::<(u64, Instant)>(4);
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) = server.select_next_some().await
            {
                let Copy::Received(n) = request else { continue };
                let _ = received_tx.send((n, Instant::now())).await;
                let _ = server.behaviour_mut().send_response(channel, Copy::Received(n));
            }
        }
    });
    let mut client = swarm(CopyCodec::default());
    client.add_peer_address(server_id, address);
    let mut times = Vec::new();
    // The first run also sets the connection up: not counted.
    for run in 0..=runs {
        let start = Instant::now();
        client.behaviour_mut().send_request(&server_id, Copy::Send(data.clone()));
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => break,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => panic!("copy failed: {error}"),
                _ => {}
            }
        }
        let (n, at) = received.recv().await.unwrap();
        assert_eq!(n, data.len() as u64, "bytes lost");
        if run > 0 {
            times.push(at.duration_since(start).as_secs_f64());
        }
    }
    times
}

/// Seconds to fetch `data` as `chunk`-byte responses to small requests, `window` in flight.
async fn bare_request_response(
    data: Arc<Vec<u8>>,
    chunk: usize,
    window: usize,
    runs: usize,
) -> Vec<f64> {
    let mut server = swarm(FetchCodec);
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let address: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let served = data.clone();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) = server.select_next_some().await
            {
                let start = request as usize * chunk;
                let part = served[start..(start + chunk).min(served.len())].to_vec();
                let _ = server.behaviour_mut().send_response(channel, part);
            }
        }
    });
    let mut client = swarm(FetchCodec);
    client.add_peer_address(server_id, address);
    let chunks = data.len().div_ceil(chunk);
    let mut times = Vec::new();
    for run in 0..=runs {
        let start = Instant::now();
        let (mut sent, mut done) = (0, 0);
        while done < chunks {
            while sent < chunks && sent - done < window {
                client.behaviour_mut().send_request(&server_id, sent as u64);
                sent += 1;
            }
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => done += 1,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => {
                    panic!("fetch failed: {error}")
                }
                _ => {}
            }
        }
        if run > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times
}

/// Seconds to seal, and to transfer, the file at `path` between two Kith nodes.
async fn kith(path: &std::path::Path, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = Node::create(NodeConfig::loopback(dirs.0.path())).await.unwrap();
    let mut bob_config = NodeConfig::loopback(dirs.1.path());
    bob_config.bootstrap = alice.addresses().await.unwrap();
    let bob = Node::create(bob_config).await.unwrap();
    alice.add_contact(&bob.contact_string(), "bob").await.unwrap();
    let mut events = bob.subscribe();
    let (mut seal, mut transfer) = (Vec::new(), Vec::new());
    // The first run also sets the session and connection up: not counted.
    for run in 0..=runs {
        let start = Instant::now();
        let sent = alice.send_file(bob.user_id(), path, None).await.unwrap();
        let queued = Instant::now();
        let saved = loop {
            match events.recv().await {
                Ok(NodeEvent::Media(MediaEvent::Saved { media, path, .. }))
                    if media == sent.media =>
                {
                    break path;
                }
                Ok(NodeEvent::Media(MediaEvent::Failed { reason, .. })) => panic!("{reason}"),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        };
        let done = Instant::now();
        assert_eq!(std::fs::metadata(&saved).unwrap().len(), sent.size);
        std::fs::remove_file(&saved).unwrap();
        if run > 0 {
            seal.push(queued.duration_since(start).as_secs_f64());
            transfer.push(done.duration_since(queued).as_secs_f64());
        }
    }
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    (seal, transfer)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mib: usize =
        std::env::var("KITH_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let runs: usize =
        std::env::var("KITH_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("bench.bin");
    let data = data::pseudo_random(mib << 20);
    std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
    let data = Arc::new(data);
    let mb = data.len() as f64 / 1e6;

    let bare = if std::env::var("KITH_BENCH_SKIP_BARE").is_ok() {
        vec![1.0]
    } else {
        runtime.block_on(bare_libp2p(data.clone(), runs, None))
    };
    let synced =
        runtime.block_on(bare_libp2p(data.clone(), runs, Some(files.path().join("copy.bin"))));
    let (chunk, window) = (CHUNK_BYTES as usize, PARALLEL_CHUNKS);
    let fetch = runtime.block_on(bare_request_response(data.clone(), chunk, window, runs));
    let (seal, transfer) = runtime.block_on(kith(&path, runs));
    let bare = mb / median(bare);
    let (seal, kith) = (mb / median(seal), mb / median(transfer));
    let fetch = mb / median(fetch);
    let synced = mb / median(synced);
    println!("\n{mib} MiB file on loopback (TCP + Noise + Yamux), median of {runs} runs\n");
    println!("| | MB/s | vs bare libp2p |");
    println!("|---|---:|---:|");
    println!("| bare libp2p stream copy (into memory) | {bare:.0} | 1.00x |");
    println!(
        "| bare libp2p stream copy into a file, synced | {synced:.0} | {:.2}x |",
        synced / bare
    );
    println!(
        "| bare libp2p request-response, {} KiB per response, {window} in flight | {fetch:.0} | {:.2}x |",
        chunk >> 10,
        fetch / bare
    );
    println!(
        "| Kith transfer (pull, verify, decrypt, write, sync) | {kith:.0} | {:.2}x |",
        kith / bare
    );
    println!("| Kith sealing on send (read, encrypt, hash, write, sync) | {seal:.0} | |");
    println!("\nKith against the synced copy (the same durability): {:.2}x", kith / synced);
}
