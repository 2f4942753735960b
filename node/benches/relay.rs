//! A relay's deposit and fetch throughput and its disk bytes per envelope, beside a raw sled
//! insert + flush loop of the same payloads (the ceiling: what the disk allows when every
//! envelope is made durable before it is acknowledged), in one run on loopback.
//!
//! - **sled insert+flush**: one 1 KiB value inserted and flushed at a time.
//! - **sled batch of 64 + flush**: 64 values per flush (the group commit a relay can do).
//! - **relay deposit**: a plain libp2p client deposits 1 KiB envelopes with `/kith/mailbox/1`,
//!   64 per request, 4 requests in flight; each answer comes after the relay's flush.
//! - **relay fetch + ack**: the recipient fetches 64 at a time and acknowledges them (the
//!   relay deletes and flushes) until the mailbox is empty.
//!
//! Run with `cargo bench -p kith-node --bench relay`.

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
use kith_node::codec::{MAILBOX_PROTOCOL, MailboxCodec};
use kith_node::kith_core::identity::user_id_of;
use kith_node::kith_protocol::envelope::{Envelope, EnvelopeKind, RatchetHeader, RatchetMessage};
use kith_node::kith_protocol::mailbox::{MailboxRequest, MailboxResponse};
use kith_node::kith_protocol::{DhPublicKey, MessageId, UserId};
use kith_node::relay::RelayConfig;
use kith_node::{Node, NodeConfig};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, SwarmBuilder, noise, tcp, yamux};

const ENVELOPES: usize = 20_000;
const CIPHERTEXT: usize = 1024;
const BATCH: usize = 64;
const IN_FLIGHT: usize = 4;

type Client = Swarm<request_response::Behaviour<MailboxCodec>>;

fn client(key: Keypair) -> Client {
    let config = request_response::Config::default().with_request_timeout(Duration::from_secs(60));
    SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::new([(MAILBOX_PROTOCOL, ProtocolSupport::Full)], config)
        })
        .unwrap()
        .build()
}

fn envelope(from: UserId, to: UserId, n: u64) -> Envelope {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    Envelope {
        id: MessageId(id),
        sender: from,
        recipient: to,
        kind: EnvelopeKind::Ratchet(RatchetMessage {
            header: RatchetHeader {
                ratchet_key: DhPublicKey([7; 32]),
                previous_chain_length: 0,
                counter: n as u32,
            },
            ciphertext: vec![0xab; CIPHERTEXT],
        }),
    }
}

async fn response(swarm: &mut Client) -> (OutboundRequestId, MailboxResponse) {
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) => return (request_id, response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                panic!("request failed: {error}")
            }
            _ => {}
        }
    }
}

fn sled_ceiling(batch: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let value = kith_protocol::encode(&envelope(UserId([1; 32]), UserId([2; 32]), 0)).unwrap();
    let started = Instant::now();
    for chunk in (0..ENVELOPES as u64).collect::<Vec<_>>().chunks(batch) {
        for n in chunk {
            db.insert(n.to_be_bytes(), value.as_slice()).unwrap();
        }
        db.flush().unwrap();
    }
    let rate = ENVELOPES as f64 / started.elapsed().as_secs_f64();
    (rate, db.size_on_disk().unwrap() as f64 / ENVELOPES as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (ceiling, ceiling_disk) = tokio::task::spawn_blocking(|| sled_ceiling(1)).await.unwrap();
    let (batched, _) = tokio::task::spawn_blocking(|| sled_ceiling(BATCH)).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::loopback_relay(dir.path());
    let mut relay_config = RelayConfig::default();
    relay_config.sender_rate = 1e9;
    relay_config.sender_burst = 1e9;
    relay_config.max_messages_per_recipient = u64::MAX;
    relay_config.max_bytes_per_recipient = u64::MAX;
    relay_config.max_total_bytes = u64::MAX;
    config.relay_service = Some(relay_config);
    let relay = Node::create(config).await.unwrap();
    let relay_peer: PeerId = relay.peer_id();
    let address = relay.listen_addrs().await.unwrap().remove(0);
    let (sender_key, bob_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let sender = user_id_of(&sender_key.public().to_peer_id()).unwrap();
    let bob = user_id_of(&bob_key.public().to_peer_id()).unwrap();
    let (mut sender_c, mut bob_c) = (client(sender_key), client(bob_key));
    sender_c.add_peer_address(relay_peer, address.clone());
    bob_c.add_peer_address(relay_peer, address);

    // Deposits: 64 per request, IN_FLIGHT requests outstanding.
    let envelopes: Vec<Envelope> =
        (0..ENVELOPES as u64).map(|n| envelope(sender, bob, n)).collect();
    let mut batches = envelopes.chunks(BATCH).map(<[Envelope]>::to_vec);
    let mut pending: HashMap<OutboundRequestId, usize> = HashMap::new();
    let mut stored = 0;
    let started = Instant::now();
    loop {
        while pending.len() < IN_FLIGHT {
            let Some(batch) = batches.next() else { break };
            let n = batch.len();
            let id = sender_c
                .behaviour_mut()
                .send_request(&relay_peer, MailboxRequest::Deposit { envelopes: batch });
            pending.insert(id, n);
        }
        if pending.is_empty() {
            break;
        }
        let (id, answer) = response(&mut sender_c).await;
        let MailboxResponse::Deposited { results } = answer else { panic!("{answer:?}") };
        assert!(results.iter().all(|r| r.refused.is_none()));
        stored += pending.remove(&id).unwrap();
    }
    let deposit_rate = stored as f64 / started.elapsed().as_secs_f64();
    let usage = relay.relay_usage().await.unwrap().unwrap();
    assert_eq!(usage.envelopes, ENVELOPES as u64);
    let relay_disk = usage.disk_bytes as f64 / ENVELOPES as f64;

    // Fetch + ack until empty.
    let started = Instant::now();
    let mut fetched = 0;
    loop {
        bob_c.behaviour_mut().send_request(
            &relay_peer,
            MailboxRequest::Fetch { recipient: bob, limit: BATCH as u16 },
        );
        let (_, answer) = response(&mut bob_c).await;
        let MailboxResponse::Batch { envelopes, .. } = answer else { panic!("{answer:?}") };
        if envelopes.is_empty() {
            break;
        }
        fetched += envelopes.len();
        let ids = envelopes.iter().map(|e| e.id).collect();
        bob_c
            .behaviour_mut()
            .send_request(&relay_peer, MailboxRequest::Ack { recipient: bob, ids });
        let (_, answer) = response(&mut bob_c).await;
        assert!(matches!(answer, MailboxResponse::Acked { .. }), "{answer:?}");
    }
    let fetch_rate = fetched as f64 / started.elapsed().as_secs_f64();
    assert_eq!(fetched, ENVELOPES);
    relay.shutdown().await.unwrap();

    println!("relay throughput, {ENVELOPES} envelopes of {CIPHERTEXT} B ciphertext, loopback:");
    println!("| | envelopes/s | vs sled insert+flush | disk bytes / envelope |");
    println!("|---|---:|---:|---:|");
    println!("| sled insert+flush (ceiling) | {ceiling:.0} | 1.00x | {ceiling_disk:.0} |");
    println!("| sled batch of {BATCH} + flush | {batched:.0} | {:.2}x | |", batched / ceiling);
    println!(
        "| relay deposit ({BATCH}/request, {IN_FLIGHT} in flight) | {deposit_rate:.0} | {:.2}x | {relay_disk:.0} |",
        deposit_rate / ceiling
    );
    println!(
        "| relay fetch + ack ({BATCH}/request) | {fetch_rate:.0} | {:.2}x | |",
        fetch_rate / ceiling
    );
}
