//! A plain libp2p peer sends garbage, oversize, truncated, tampered, spoofed and replayed frames
//! to `/kith/envelope/1`: the node answers each envelope with a typed refusal (or drops a
//! stream whose batch frame is itself malformed or oversize), its store stays byte-identical,
//! and it keeps working.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_node::codec::{ENVELOPE_PROTOCOL, PREKEY_PROTOCOL, PreKeyCodec};
use kith_node::kith_core::engine::{Command, CommandResult, Config, Engine, Input, Output};
use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_core::store::Store;
use kith_node::kith_protocol::ByteBuf;
use kith_node::kith_protocol::direct::{
    AckResult, DeliveryAck, DeliveryAcks, EnvelopeBatch, RejectReason,
};
use kith_node::kith_protocol::envelope::{Envelope, EnvelopeKind};
use kith_node::kith_protocol::limits::{MAX_DIRECT_BATCH, MAX_ENVELOPE_BYTES};
use kith_node::kith_protocol::prekey::{PreKeyRequest, PreKeyResponse};
use kith_tests::TestNode;
use libp2p::request_response::{self, OutboundFailure, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{PeerId, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};

/// Writes any bytes, however large or malformed.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = DeliveryAcks;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::ErrorKind::Unsupported.into())
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<DeliveryAcks> {
        let mut buf = Vec::new();
        io.take(1024).read_to_end(&mut buf).await?;
        kith_node::kith_protocol::decode(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: DeliveryAcks,
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Attacker {
    envelope: request_response::Behaviour<RawCodec>,
    prekey: request_response::Behaviour<PreKeyCodec>,
}

/// Sends `bytes` as one envelope (a batch of one) and returns its acknowledgement.
async fn envelope(
    swarm: &mut Swarm<Attacker>,
    peer: PeerId,
    bytes: Vec<u8>,
) -> Result<DeliveryAck, OutboundFailure> {
    let acks = batch(swarm, peer, vec![bytes]).await?;
    assert_eq!(acks.len(), 1, "one envelope, one answer");
    Ok(acks[0])
}

/// Sends the envelopes in one request and returns their acknowledgements.
async fn batch(
    swarm: &mut Swarm<Attacker>,
    peer: PeerId,
    envelopes: Vec<Vec<u8>>,
) -> Result<Vec<DeliveryAck>, OutboundFailure> {
    // Written by hand (version, count, then each length-prefixed): the attacker's frame is not
    // held to the limits `encode` checks.
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let low = u8::try_from(n & 0x7f).unwrap();
            n >>= 7;
            if n == 0 {
                break out.push(low);
            }
            out.push(low | 0x80);
        }
    }
    let mut frame = vec![kith_node::kith_protocol::WIRE_VERSION];
    varint(envelopes.len(), &mut frame);
    for envelope in envelopes {
        varint(envelope.len(), &mut frame);
        frame.extend_from_slice(&envelope);
    }
    raw(swarm, peer, frame).await.map(|r| r.acks)
}

/// Sends `frame` as the whole request.
async fn raw(
    swarm: &mut Swarm<Attacker>,
    peer: PeerId,
    frame: Vec<u8>,
) -> Result<DeliveryAcks, OutboundFailure> {
    let id = swarm.behaviour_mut().envelope.send_request(&peer, frame);
    loop {
        if let SwarmEvent::Behaviour(AttackerEvent::Envelope(event)) =
            swarm.select_next_some().await
        {
            match event {
                request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                } if request_id == id => return Ok(response),
                request_response::Event::OutboundFailure { request_id, error, .. }
                    if request_id == id =>
                {
                    return Err(error);
                }
                _ => {}
            }
        }
    }
}

async fn prekeys(
    swarm: &mut Swarm<Attacker>,
    peer: PeerId,
    request: PreKeyRequest,
) -> PreKeyResponse {
    let id = swarm.behaviour_mut().prekey.send_request(&peer, request);
    loop {
        if let SwarmEvent::Behaviour(AttackerEvent::Prekey(request_response::Event::Message {
            message: request_response::Message::Response { request_id, response },
            ..
        })) = swarm.select_next_some().await
            && request_id == id
        {
            return response;
        }
    }
}

/// The attacker's engine seals `text` for `to` with the bundle it fetched; returns the envelope.
fn seal(
    engine: &mut Engine<rand::rngs::ThreadRng>,
    to: kith_node::kith_protocol::UserId,
    text: &str,
) -> Vec<u8> {
    let now = kith_node::now_millis();
    engine
        .handle_command(now, Command::SendText { to, text: text.into(), reply_to: None })
        .unwrap();
    engine.flush().unwrap();
    std::iter::from_fn(|| engine.poll_output())
        .find_map(|o| match o {
            Output::Deliver(d) => Some(d.envelope),
            _ => None,
        })
        .expect("an envelope")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversize_spoofed_and_replayed_frames_leave_the_node_up_and_its_store_unchanged() {
    let bob = TestNode::start(vec![]).await.unwrap();
    let bob_peer = bob.node.peer_id();
    let bob_user = bob.node.user_id();

    // The attacker is a real Kith user with a plain libp2p swarm.
    let mut engine =
        Engine::create(Store::memory(), rand::rng(), kith_node::now_millis(), Config::default())
            .unwrap();
    let config = request_response::Config::default().with_request_timeout(Duration::from_secs(10));
    let mut swarm = SwarmBuilder::with_existing_identity(engine.identity().libp2p_keypair())
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| Attacker {
            envelope: request_response::Behaviour::with_codec(
                RawCodec,
                [(ENVELOPE_PROTOCOL, ProtocolSupport::Outbound)],
                config.clone(),
            ),
            prekey: request_response::Behaviour::new(
                [(PREKEY_PROTOCOL, ProtocolSupport::Outbound)],
                config.clone(),
            ),
        })
        .unwrap()
        .build();
    for address in bob.node.listen_addrs().await.unwrap() {
        swarm.add_peer_address(bob_peer, address);
    }

    // A legitimate first message, accepted once.
    let PreKeyResponse::Bundle(bundle) =
        prekeys(&mut swarm, bob_peer, PreKeyRequest::Fetch { user: bob_user }).await
    else {
        panic!("no bundle")
    };
    let now = kith_node::now_millis();
    let CommandResult::Queued(_) = engine
        .handle_command(
            now,
            Command::SendText { to: bob_user, text: "hello".into(), reply_to: None },
        )
        .unwrap()
    else {
        panic!()
    };
    engine.handle_input(now, Input::PreKeyBundle { user: bob_user, result: Ok(bundle) }).unwrap();
    engine.flush().unwrap();
    let valid = std::iter::from_fn(|| engine.poll_output())
        .find_map(|o| match o {
            Output::Deliver(d) => Some(d.envelope),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        envelope(&mut swarm, bob_peer, valid.clone()).await.unwrap().result,
        AckResult::Accepted
    );

    let before = bob.node.store_digest().await.unwrap();
    let decoded: Envelope = kith_node::kith_protocol::decode(&valid).unwrap();
    // A fresh envelope (unseen id), tampered: it must reach decryption and fail there.
    let fresh = seal(&mut engine, bob_user, "still there?");
    let mut tampered: Envelope = kith_node::kith_protocol::decode(&fresh).unwrap();
    match &mut tampered.kind {
        EnvelopeKind::PqPreKey(p) => p.message.ciphertext[3] ^= 1,
        EnvelopeKind::PreKey(p) => p.message.ciphertext[3] ^= 1,
        EnvelopeKind::Ratchet(m) => m.ciphertext[3] ^= 1,
        EnvelopeKind::SealedRatchet(m) => m.ciphertext[3] ^= 1,
        EnvelopeKind::Group(_) => unreachable!(),
    }
    let mut spoofed = decoded.clone();
    spoofed.sender = kith_node::kith_protocol::UserId(bob_user.0); // claims to be someone else
    let mut misaddressed = decoded.clone();
    misaddressed.recipient = engine.user_id();
    let encode = |e: &Envelope| kith_node::kith_protocol::encode(e).unwrap();
    let garbage: Vec<u8> =
        (0..500u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect();

    let cases: Vec<(&str, Vec<u8>, Option<AckResult>)> = vec![
        ("garbage", garbage.clone(), Some(AckResult::Rejected(RejectReason::Malformed))),
        ("empty", Vec::new(), Some(AckResult::Rejected(RejectReason::Malformed))),
        (
            "unknown version",
            [&[9u8][..], &valid[1..]].concat(),
            Some(AckResult::Rejected(RejectReason::Malformed)),
        ),
        (
            "truncated",
            valid[..valid.len() - 5].to_vec(),
            Some(AckResult::Rejected(RejectReason::Malformed)),
        ),
        (
            "trailing bytes",
            [&valid[..], &[0, 0]].concat(),
            Some(AckResult::Rejected(RejectReason::Malformed)),
        ),
        (
            "tampered ciphertext",
            encode(&tampered),
            Some(AckResult::Rejected(RejectReason::DecryptFailed)),
        ),
        (
            "spoofed sender",
            encode(&spoofed),
            Some(AckResult::Rejected(RejectReason::WrongRecipient)),
        ),
        (
            "wrong recipient",
            encode(&misaddressed),
            Some(AckResult::Rejected(RejectReason::WrongRecipient)),
        ),
        ("replay", valid.clone(), Some(AckResult::Duplicate)),
        ("replay again", valid.clone(), Some(AckResult::Duplicate)),
        // Oversize: the node drops the stream before parsing; no answer at all.
        ("oversize", vec![1u8; MAX_ENVELOPE_BYTES + 4096], None),
    ];
    for (name, bytes, expected) in cases {
        let answer = envelope(&mut swarm, bob_peer, bytes).await;
        match expected {
            Some(expected) => assert_eq!(
                answer.map(|a| a.result).map_err(|e| e.to_string()),
                Ok(expected),
                "{name}"
            ),
            None => assert!(answer.is_err(), "{name} was answered: {answer:?}"),
        }
    }

    // Several in one batch: each envelope is answered on its own, in order.
    let acks = batch(&mut swarm, bob_peer, vec![garbage.clone(), valid.clone(), encode(&tampered)])
        .await
        .unwrap();
    assert_eq!(
        acks.iter().map(|a| a.result).collect::<Vec<_>>(),
        [
            AckResult::Rejected(RejectReason::Malformed),
            AckResult::Duplicate,
            AckResult::Rejected(RejectReason::DecryptFailed)
        ]
    );
    assert_eq!(acks[1].id, decoded.id);
    // A batch frame that is itself bad is dropped unanswered: garbage, empty, too many
    // envelopes, trailing bytes.
    let mut trailing = kith_node::kith_protocol::encode(&EnvelopeBatch {
        envelopes: vec![ByteBuf::from(valid.clone())],
    })
    .unwrap();
    trailing.push(0);
    for (name, frame) in [
        ("garbage frame", garbage.clone()),
        ("empty batch", vec![kith_node::kith_protocol::WIRE_VERSION, 0]),
        ("trailing bytes after the batch", trailing),
    ] {
        let answer = raw(&mut swarm, bob_peer, frame).await;
        assert!(answer.is_err(), "{name} was answered: {answer:?}");
    }
    let too_many = batch(&mut swarm, bob_peer, vec![valid.clone(); MAX_DIRECT_BATCH + 1]).await;
    assert!(too_many.is_err(), "{} envelopes were answered", MAX_DIRECT_BATCH + 1);
    assert_eq!(
        bob.node.store_digest().await.unwrap(),
        before,
        "bad input changed the node's store"
    );

    // Still up, and the session is intact: the untampered original goes through.
    assert_eq!(envelope(&mut swarm, bob_peer, fresh).await.unwrap().result, AckResult::Accepted);
    let history = bob.node.history(engine.user_id(), None, 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|m| m.status == MessageStatus::Received));
    bob.node.shutdown().await.unwrap();
}

/// Issue 18: the control socket answers an oversize line (2 MiB, over the 1 MiB limit) and a
/// line that is not UTF-8 with a JSON-RPC error, and the same connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_answers_oversize_and_garbage_lines_and_stays_open() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let node = TestNode::start(vec![]).await.unwrap();
    let _stop = kith_node::rpc::serve(node.node.clone(), node.dir.path()).await.unwrap();
    let socket = tokio::net::UnixStream::connect(kith_node::rpc::socket_path(node.dir.path()))
        .await
        .unwrap();
    let (read, mut write) = socket.into_split();
    let mut replies = BufReader::new(read).lines();
    // Written on its own task: the server reads while we wait for its answers.
    let writer = tokio::spawn(async move {
        let mut huge = vec![b' '; 2 << 20];
        huge.extend_from_slice(b"{}\n");
        write.write_all(&huge).await.unwrap();
        write.write_all(b"\xff\xfe not utf-8\n").await.unwrap();
        write.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"id\"}\n").await.unwrap();
        write
    });
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(30), replies.next_line())
            .await
            .expect("no reply")
            .unwrap()
            .expect("the socket closed");
        serde_json::from_str(&line).unwrap()
    };
    let too_large = next().await;
    assert_eq!(too_large["error"]["code"], -32600, "{too_large}");
    assert!(too_large["error"]["message"].as_str().unwrap().contains("too large"));
    let garbage = next().await;
    assert_eq!(garbage["error"]["code"], -32700, "{garbage}");
    let id = next().await;
    assert_eq!(id["id"], 7, "{id}");
    assert!(id["result"]["peer_id"].is_string(), "{id}");
    drop(writer.await.unwrap());
}
