//! Plain libp2p peers abuse a relay's `/kith/mailbox/1`: a stranger fetches and acks someone
//! else's mailbox, a sender deposits oversize envelopes, floods past its rate limit and fills a
//! mailbox past its quota. Each is refused with the matching reason, counted in the relay's
//! metrics, and the relay keeps serving everyone else.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::time::Duration;

use futures::StreamExt;
use kith_node::codec::{MAILBOX_PROTOCOL, MailboxCodec};
use kith_node::kith_core::identity::user_id_of;
use kith_node::kith_protocol::envelope::{Envelope, EnvelopeKind, RatchetHeader, RatchetMessage};
use kith_node::kith_protocol::mailbox::{
    DepositResult, MailboxRefusal, MailboxRequest, MailboxResponse,
};
use kith_node::kith_protocol::{DhPublicKey, MessageId, UserId};
use kith_node::relay::RelayConfig;
use kith_node::{Node, NodeConfig};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, SwarmBuilder, noise, tcp, yamux};

type Client = Swarm<request_response::Behaviour<MailboxCodec>>;

fn client(key: Keypair) -> Client {
    let config = request_response::Config::default().with_request_timeout(Duration::from_secs(10));
    SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::new([(MAILBOX_PROTOCOL, ProtocolSupport::Full)], config)
        })
        .unwrap()
        .build()
}

fn user(key: &Keypair) -> UserId {
    user_id_of(&key.public().to_peer_id()).unwrap()
}

async fn call(swarm: &mut Client, peer: PeerId, request: MailboxRequest) -> MailboxResponse {
    let id = swarm.behaviour_mut().send_request(&peer, request);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) if request_id == id => return response,
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) if request_id == id => panic!("request failed: {error}"),
            _ => {}
        }
    }
}

/// An envelope of `size` ciphertext bytes (relays never look inside).
fn envelope(from: UserId, to: UserId, n: u32, size: usize) -> Envelope {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[4..8].copy_from_slice(&from.0[..4]);
    Envelope {
        id: MessageId(id),
        sender: from,
        recipient: to,
        kind: EnvelopeKind::Ratchet(RatchetMessage {
            header: RatchetHeader {
                ratchet_key: DhPublicKey([9; 32]),
                previous_chain_length: 0,
                counter: n,
            },
            ciphertext: vec![0xc1; size],
        }),
    }
}

fn refusals(response: &MailboxResponse) -> Vec<Option<MailboxRefusal>> {
    match response {
        MailboxResponse::Deposited { results } => results.iter().map(|r| r.refused).collect(),
        other => panic!("not a deposit answer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_oversize_spammers_and_full_mailboxes_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::loopback_relay(dir.path());
    let mut relay_config = RelayConfig::default();
    relay_config.max_messages_per_recipient = 5;
    relay_config.max_envelope_bytes = 2048;
    relay_config.sender_rate = 0.001;
    relay_config.sender_burst = 8.0;
    relay_config.metrics = Some("127.0.0.1:0".parse().unwrap());
    config.relay_service = Some(relay_config);
    let relay = Node::create(config).await.unwrap();
    let relay_peer = relay.peer_id();
    let address = relay.listen_addrs().await.unwrap().remove(0);

    let (bob_key, mallory_key, spammer_key, carol_key) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let (bob, mallory, spammer, carol) =
        (user(&bob_key), user(&mallory_key), user(&spammer_key), user(&carol_key));
    let mut clients = Vec::new();
    for key in [bob_key, mallory_key, spammer_key, carol_key] {
        let mut c = client(key);
        c.add_peer_address(relay_peer, address.clone());
        clients.push(c);
    }
    let [bob_c, mallory_c, spammer_c, carol_c] = &mut clients[..] else { unreachable!() };

    // Carol leaves Bob two messages.
    let response = call(
        carol_c,
        relay_peer,
        MailboxRequest::Deposit {
            envelopes: vec![envelope(carol, bob, 1, 100), envelope(carol, bob, 2, 100)],
        },
    )
    .await;
    assert_eq!(refusals(&response), [None, None]);

    // Mallory can neither read nor delete them.
    assert_eq!(
        call(mallory_c, relay_peer, MailboxRequest::Fetch { recipient: bob, limit: 64 }).await,
        MailboxResponse::Refused(MailboxRefusal::NotRecipient)
    );
    let ids = vec![envelope(carol, bob, 1, 0).id];
    assert_eq!(
        call(mallory_c, relay_peer, MailboxRequest::Ack { recipient: bob, ids: ids.clone() }).await,
        MailboxResponse::Refused(MailboxRefusal::NotRecipient)
    );
    // Her own mailbox is empty.
    assert_eq!(
        call(mallory_c, relay_peer, MailboxRequest::Fetch { recipient: mallory, limit: 64 }).await,
        MailboxResponse::Batch { envelopes: vec![], remaining: 0 }
    );

    // Too large for this relay.
    let response = call(
        carol_c,
        relay_peer,
        MailboxRequest::Deposit { envelopes: vec![envelope(carol, bob, 3, 4096)] },
    )
    .await;
    assert_eq!(refusals(&response), [Some(MailboxRefusal::TooLarge)]);

    // A spammer: a burst of 8, then refused (to recipients whose quotas are not the limit).
    let flood: Vec<Envelope> =
        (0..12u8).map(|n| envelope(spammer, UserId([n + 100; 32]), n.into(), 20)).collect();
    let response = call(spammer_c, relay_peer, MailboxRequest::Deposit { envelopes: flood }).await;
    let got = refusals(&response);
    assert_eq!(got.iter().filter(|r| r.is_none()).count(), 8, "{got:?}");
    assert!(got[8..].iter().all(|r| *r == Some(MailboxRefusal::RateLimited)), "{got:?}");

    // Bob's mailbox holds 2; the quota is 5: three more fit, the rest is refused.
    let more: Vec<Envelope> = (10..15).map(|n| envelope(carol, bob, n, 20)).collect();
    let response = call(carol_c, relay_peer, MailboxRequest::Deposit { envelopes: more }).await;
    assert_eq!(
        refusals(&response),
        [
            None,
            None,
            None,
            Some(MailboxRefusal::QuotaExceeded),
            Some(MailboxRefusal::QuotaExceeded)
        ]
    );
    // A retry of a stored envelope is not a new one (no quota, no duplicate).
    let response = call(
        carol_c,
        relay_peer,
        MailboxRequest::Deposit { envelopes: vec![envelope(carol, bob, 1, 100)] },
    )
    .await;
    assert_eq!(
        response,
        MailboxResponse::Deposited {
            results: vec![DepositResult { id: envelope(carol, bob, 1, 0).id, refused: None }]
        }
    );

    // Bob still gets his five, oldest first, and acks them.
    let MailboxResponse::Batch { envelopes, remaining } =
        call(bob_c, relay_peer, MailboxRequest::Fetch { recipient: bob, limit: 64 }).await
    else {
        panic!("no batch")
    };
    assert_eq!(remaining, 0);
    let counters: Vec<u32> = envelopes
        .iter()
        .map(|e| match &e.kind {
            EnvelopeKind::Ratchet(m) => m.header.counter,
            _ => 0,
        })
        .collect();
    assert_eq!(counters, [1, 2, 10, 11, 12]);
    let ids: Vec<MessageId> = envelopes.iter().map(|e| e.id).collect();
    assert_eq!(
        call(bob_c, relay_peer, MailboxRequest::Ack { recipient: bob, ids }).await,
        MailboxResponse::Acked { removed: 5 }
    );
    assert_eq!(
        call(bob_c, relay_peer, MailboxRequest::Fetch { recipient: bob, limit: 64 }).await,
        MailboxResponse::Batch { envelopes: vec![], remaining: 0 }
    );

    // The metrics count every refusal by reason.
    let metrics = http_get(relay.metrics_addr().unwrap(), "/metrics").await;
    for line in [
        "kith_relay_rejections_total{reason=\"not_recipient\"} 2",
        "kith_relay_rejections_total{reason=\"too_large\"} 1",
        "kith_relay_rejections_total{reason=\"rate_limited\"} 4",
        "kith_relay_rejections_total{reason=\"quota_exceeded\"} 2",
        "kith_relay_delivered_total 5",
        "kith_relay_stored_envelopes 8",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    assert!(http_get(relay.metrics_addr().unwrap(), "/secret").await.starts_with("HTTP/1.1 404"));
    let health = http_get(relay.metrics_addr().unwrap(), "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");
    relay.shutdown().await.unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_recipient_gets_new_mail_pushed_and_the_relay_then_deletes_it() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = Node::create(NodeConfig::loopback_relay(relay_dir.path())).await.unwrap();
    let relay_peer = relay.peer_id();
    let address = relay.listen_addrs().await.unwrap().remove(0);
    let bob_dir = tempfile::tempdir().unwrap();
    let mut bob_config = NodeConfig::loopback(bob_dir.path());
    bob_config.relays = vec![address.clone().with_p2p(relay_peer).unwrap()];
    let bob = Node::create(bob_config).await.unwrap();
    let mut bob_events = bob.subscribe();
    // Bob is connected (and has fetched his empty mailbox).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !bob.connected_peers().await.unwrap().contains(&relay_peer) {
        assert!(tokio::time::Instant::now() < deadline, "Bob never connected to his relay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A stranger deposits an envelope for Bob that Bob cannot decrypt.
    let key = Keypair::generate_ed25519();
    let stranger = user(&key);
    let mut c = client(key);
    c.add_peer_address(relay_peer, address);
    let sent = envelope(stranger, bob.user_id(), 1, 64);
    let response =
        call(&mut c, relay_peer, MailboxRequest::Deposit { envelopes: vec![sent.clone()] }).await;
    assert_eq!(refusals(&response), [None]);

    // The relay pushes it at once (Bob's next poll is a minute away); Bob's engine refuses it
    // for good, so Bob answers that he is done with it and the relay deletes it.
    let rejected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(kith_node::NodeEvent::Engine(
                kith_node::kith_core::engine::Event::Rejected { sender, .. },
            )) = bob_events.recv().await
            {
                return sender;
            }
        }
    })
    .await
    .expect("the envelope was not pushed to Bob");
    assert_eq!(rejected, Some(stranger));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.relay_usage().await.unwrap().unwrap().envelopes != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the relay kept a pushed envelope");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
}
