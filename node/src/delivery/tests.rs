use kith_core::identity::IdentityKeyPair;
use kith_protocol::UserId;

use super::*;
use crate::tokens::tag;

fn peer() -> PeerId {
    IdentityKeyPair::generate(&mut rand::rng()).libp2p_keypair().public().to_peer_id()
}

fn id(n: u32) -> MessageId {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    MessageId(bytes)
}

fn delivery() -> DirectDelivery<u64> {
    DirectDelivery::new(Tokens::new(tag::DELIVERY))
}

fn actions(d: &mut DirectDelivery<u64>) -> Vec<DeliveryAction> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

/// The sends among the pending actions, registered with request ids from `next`.
fn sends(
    d: &mut DirectDelivery<u64>,
    next: &mut u64,
) -> Vec<(u64, PeerId, Vec<Option<MessageId>>)> {
    let mut out = Vec::new();
    for action in actions(d) {
        if let DeliveryAction::Send { peer, ids, envelopes } = action {
            assert_eq!(envelopes.len(), ids.len());
            *next += 1;
            d.sent(*next, peer, ids.clone());
            out.push((*next, peer, ids));
        }
    }
    out
}

fn ack(id: MessageId) -> DeliveryAck {
    DeliveryAck { id, result: AckResult::Accepted }
}

#[test]
fn a_turns_deliveries_leave_together_in_batches_of_64() {
    let mut d = delivery();
    let (p, q) = (peer(), peer());
    for n in 0..65 {
        d.deliver(p, id(n), vec![0; 100]);
    }
    d.deliver(q, id(1000), vec![0; 100]);
    assert!(actions(&mut d).is_empty(), "nothing leaves before the end of the turn");
    d.end_turn();
    let mut next = 0;
    let mut sent = sends(&mut d, &mut next);
    sent.sort_by_key(|(_, peer, ids)| (*peer == q, ids.len()));
    let sizes: Vec<(bool, usize)> =
        sent.iter().map(|(_, peer, ids)| (*peer == q, ids.len())).collect();
    assert!(
        sizes.contains(&(false, 64)) && sizes.contains(&(false, 1)) && sizes.contains(&(true, 1))
    );
    // In outbox order: the first batch to p carries 0..64.
    let first = sent.iter().find(|(_, peer, ids)| *peer == p && ids.len() == 64).unwrap();
    assert_eq!(first.2, (0..64).map(|n| Some(id(n))).collect::<Vec<_>>());
}

#[test]
fn a_retry_of_a_waiting_delivery_keeps_its_place() {
    let mut d = delivery();
    let p = peer();
    d.deliver(p, id(1), vec![1]);
    d.deliver(p, id(2), vec![2]);
    d.deliver(p, id(1), vec![3]);
    d.end_turn();
    let actions = actions(&mut d);
    let [DeliveryAction::Send { envelopes, ids, .. }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(ids, &[Some(id(1)), Some(id(2))]);
    assert_eq!(envelopes[0].as_slice(), &[3]);
}

#[test]
fn big_envelopes_split_batches_at_the_frame_limit() {
    let mut d = delivery();
    let p = peer();
    let big = kith_protocol::limits::MAX_ENVELOPE_BYTES;
    let per_frame = MAX_DIRECT_FRAME_BYTES / batch_cost(big);
    for n in 0..=u32::try_from(per_frame).unwrap() {
        d.deliver(p, id(n), vec![0; big]);
    }
    d.end_turn();
    let mut next = 0;
    let sent = sends(&mut d, &mut next);
    assert_eq!(sent.iter().map(|s| s.2.len()).collect::<Vec<_>>(), vec![per_frame, 1]);
}

#[test]
fn acks_go_by_position_and_an_unanswered_envelope_falls_back() {
    let mut d = delivery();
    let p = peer();
    for n in 0..3 {
        d.deliver(p, id(n), vec![0]);
    }
    d.end_turn();
    let mut next = 0;
    let sent = sends(&mut d, &mut next);
    let rejected = DeliveryAck { id: id(1), result: AckResult::Rejected(RejectReason::Expired) };
    // The peer answered two of three.
    d.answered(sent[0].0, vec![ack(id(0)), rejected]);
    assert_eq!(
        actions(&mut d),
        vec![
            DeliveryAction::Engine(Input::Delivery {
                id: id(0),
                result: DeliveryResult::Acked(AckResult::Accepted)
            }),
            DeliveryAction::Engine(Input::Delivery {
                id: id(1),
                result: DeliveryResult::Acked(AckResult::Rejected(RejectReason::Expired))
            }),
            DeliveryAction::FallBack(id(2)),
        ]
    );
    // A late answer for a finished request changes nothing.
    d.answered(sent[0].0, vec![ack(id(0))]);
    assert!(actions(&mut d).is_empty());
}

#[test]
fn at_most_128_requests_per_peer_and_the_rest_follow_the_answers() {
    let mut d = delivery();
    let p = peer();
    let total = MAX_IN_FLIGHT_PER_PEER * MAX_DIRECT_BATCH + 10;
    for n in 0..total {
        d.deliver(p, id(u32::try_from(n).unwrap()), vec![0]);
    }
    d.end_turn();
    let mut next = 0;
    let sent = sends(&mut d, &mut next);
    assert_eq!(sent.len(), MAX_IN_FLIGHT_PER_PEER);
    // Typing to a peer with no room is dropped.
    d.deliver_ephemeral(p, vec![9], true);
    assert!(actions(&mut d).is_empty());
    // One answer makes room for the last ten.
    let acks = sent[0].2.iter().flatten().map(|i| ack(*i)).collect();
    d.answered(sent[0].0, acks);
    let more = sends(&mut d, &mut next);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].2.len(), 10);
}

#[test]
fn a_failed_request_falls_back_with_everything_waiting_for_an_unreachable_peer() {
    let mut d = delivery();
    let p = peer();
    let total = MAX_IN_FLIGHT_PER_PEER * MAX_DIRECT_BATCH + 2;
    for n in 0..total {
        d.deliver(p, id(u32::try_from(n).unwrap()), vec![0]);
    }
    d.end_turn();
    let mut next = 0;
    let sent = sends(&mut d, &mut next);
    // Could not be dialed: its deliveries and the two waiting fall back; the peer is looked up.
    d.failed(sent[0].0, false, true);
    let after = actions(&mut d);
    let fallen: Vec<MessageId> = after
        .iter()
        .filter_map(|a| match a {
            DeliveryAction::FallBack(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(fallen.len(), MAX_DIRECT_BATCH + 2);
    assert_eq!(after.last(), Some(&DeliveryAction::Lookup(p)));
    // A timed-out request (a slow peer) lets what waits go on instead.
    let q = peer();
    for n in 0..(MAX_IN_FLIGHT_PER_PEER * MAX_DIRECT_BATCH + 1) {
        d.deliver(q, id(100_000 + u32::try_from(n).unwrap()), vec![0]);
    }
    d.end_turn();
    let sent = sends(&mut d, &mut next);
    d.failed(sent[0].0, true, false);
    let after = actions(&mut d);
    assert_eq!(after.iter().filter(|a| matches!(a, DeliveryAction::FallBack(_))).count(), 64);
    assert_eq!(after.iter().filter(|a| matches!(a, DeliveryAction::Send { .. })).count(), 1);
}

#[test]
fn typing_goes_only_to_a_connected_peer_and_is_not_tracked() {
    let mut d = delivery();
    let p = peer();
    d.deliver_ephemeral(p, vec![1], false);
    assert!(actions(&mut d).is_empty());
    d.deliver_ephemeral(p, vec![1], true);
    let mut next = 0;
    let sent = sends(&mut d, &mut next);
    assert_eq!(sent[0].2, vec![None]);
    d.failed(sent[0].0, false, false);
    assert!(actions(&mut d).is_empty(), "an untracked delivery does not fall back");
}

#[test]
fn an_inbound_batch_is_answered_in_order_once_the_engine_answered_each() {
    let mut d = delivery();
    let p = peer();
    let user: UserId = user_id_of(&p).unwrap();
    let batch = d.receive(p, vec![ByteBuf::from(vec![1]), ByteBuf::from(vec![2])], Instant::now());
    let tokens: Vec<ReplyToken> = actions(&mut d)
        .into_iter()
        .map(|a| match a {
            DeliveryAction::Engine(Input::Envelope { via, reply: Some(token), .. }) => {
                assert_eq!(via, Via::Direct(user));
                token
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(tokens.iter().all(|t| d.owns(*t)));
    // Answers come back out of order; the batch waits for both, then keeps request order.
    d.engine_answered(tokens[1], ack(id(2)));
    assert!(actions(&mut d).is_empty());
    d.engine_answered(tokens[0], ack(id(1)));
    assert_eq!(
        actions(&mut d),
        vec![DeliveryAction::Answer {
            batch,
            acks: DeliveryAcks { acks: vec![ack(id(1)), ack(id(2))] }
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn envelopes_over_the_peers_rate_are_refused_at_once() {
    let mut d = delivery();
    let p = peer();
    let burst = 100_000;
    assert_eq!(ENVELOPE_RATE.1, 100_000.0);
    let now = Instant::now();
    let mut admitted = 0;
    for _ in 0..(burst / MAX_DIRECT_BATCH) {
        d.receive(p, vec![ByteBuf::from(vec![0]); MAX_DIRECT_BATCH], now);
        admitted += actions(&mut d).len();
    }
    assert_eq!(admitted, burst / MAX_DIRECT_BATCH * MAX_DIRECT_BATCH);
    // The bucket holds what is left of the burst: the rest of the batch is refused, and the
    // answer (in request order) comes once the engine answered the admitted ones.
    let left = burst - admitted;
    let batch = d.receive(p, vec![ByteBuf::from(vec![0]); MAX_DIRECT_BATCH], now);
    let tokens: Vec<ReplyToken> = actions(&mut d)
        .into_iter()
        .map(|a| match a {
            DeliveryAction::Engine(Input::Envelope { reply: Some(token), .. }) => token,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(tokens.len(), left);
    for token in tokens {
        d.engine_answered(token, ack(id(0)));
    }
    let after = actions(&mut d);
    let [DeliveryAction::Answer { batch: answered, acks }] = after.as_slice() else {
        panic!("{after:?}")
    };
    assert_eq!(*answered, batch);
    let limited: Vec<bool> = acks
        .acks
        .iter()
        .map(|a| a.result == AckResult::Rejected(RejectReason::RateLimited))
        .collect();
    assert_eq!(limited.iter().filter(|l| **l).count(), MAX_DIRECT_BATCH - left);
    assert!(limited[left..].iter().all(|l| *l), "the refused ones keep their places");
    // Time refills the bucket.
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    d.receive(p, vec![ByteBuf::from(vec![0])], Instant::now());
    assert!(matches!(actions(&mut d).as_slice(), [DeliveryAction::Engine(_)]));
}

#[test]
fn a_batch_from_a_peer_that_is_not_a_kith_user_is_refused() {
    let mut d = delivery();
    // A secp256k1-free, non-Ed25519 peer id: a random multihash of another key type.
    let stranger =
        PeerId::from_multihash(libp2p::multihash::Multihash::wrap(0x12, &[7; 32]).unwrap())
            .unwrap();
    let batch = d.receive(stranger, vec![ByteBuf::from(vec![0])], Instant::now());
    assert_eq!(
        actions(&mut d),
        vec![DeliveryAction::Answer {
            batch,
            acks: DeliveryAcks {
                acks: vec![DeliveryAck {
                    id: MessageId([0; 16]),
                    result: AckResult::Rejected(RejectReason::SenderMismatch)
                }]
            }
        }]
    );
}
