use kith_protocol::envelope::{EnvelopeKind, RatchetHeader, RatchetMessage};
use kith_protocol::mailbox::DepositResult;
use kith_protocol::{DhPublicKey, MessageId};

use super::*;
use crate::test_support::{User, user};
use crate::tokens::tag;

type Client = MailboxClient<u32, u32>;

fn address(peer: &PeerId, port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}").parse().unwrap()
}

fn envelope(id: MessageId, from: &UserId, to: &UserId) -> Vec<u8> {
    kith_protocol::encode(&Envelope {
        id,
        sender: *from,
        recipient: *to,
        kind: EnvelopeKind::Ratchet(RatchetMessage {
            header: RatchetHeader {
                ratchet_key: DhPublicKey([9; 32]),
                previous_chain_length: 0,
                counter: 0,
            },
            ciphertext: vec![0; 32],
        }),
    })
    .unwrap()
}

fn id(n: u8) -> MessageId {
    MessageId([n; 16])
}

fn client(me: &User, home: &[Multiaddr], copies: usize) -> Client {
    MailboxClient::new(me.id, me.peer, home, copies, Tokens::new(tag::MAILBOX))
}

fn actions(c: &mut Client) -> Vec<MailboxAction> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn deposits(actions: &[MailboxAction]) -> Vec<(PeerId, Vec<MessageId>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            MailboxAction::Deposit { relay, ids, .. } => Some((*relay, ids.clone())),
            _ => None,
        })
        .collect()
}

fn engine_inputs(actions: &[MailboxAction]) -> Vec<Input> {
    actions
        .iter()
        .filter_map(|a| match a {
            MailboxAction::Engine(input) => Some(input.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn relays_come_from_the_contact_string_then_the_record_then_the_keyspace() {
    let (me, bob) = (user(), user());
    let (given, recorded, near) = (user(), user(), user());
    let mut c = client(&me, &[], 2);
    // Nothing known yet.
    assert!(c.relays_for(&bob.id, &[]).is_empty());
    // The keyspace, only while nothing better is known.
    c.keyspace_sent(1, bob.id);
    c.keyspace_found(1, vec![(near.peer, vec![address(&near.peer, 3)])]);
    assert_eq!(c.relays_for(&bob.id, &[]), vec![address(&near.peer, 3)]);
    // The record replaces it; the contact string comes first.
    c.remember_relays(bob.id, vec![address(&recorded.peer, 2)]);
    assert_eq!(c.relays_for(&bob.id, &[]), vec![address(&recorded.peer, 2)]);
    let given_addr = address(&given.peer, 1).to_string();
    assert_eq!(
        c.relays_for(&bob.id, &[given_addr]),
        vec![address(&given.peer, 1), address(&recorded.peer, 2)]
    );
}

#[test]
fn a_failed_delivery_goes_to_two_relays_and_is_stored_once_one_holds_it() {
    let (me, bob, r1, r2, r3) = (user(), user(), user(), user(), user());
    let mut c = client(&me, &[], 2);
    let given: Vec<String> = [&r1, &r2, &r3]
        .iter()
        .enumerate()
        .map(|(i, r)| address(&r.peer, u16::try_from(i).unwrap()).to_string())
        .collect();
    c.track(id(1), bob.id, &envelope(id(1), &me.id, &bob.id), &given);
    c.fall_back(id(1));
    let out = actions(&mut c);
    let sent = deposits(&out);
    assert_eq!(sent, vec![(r1.peer, vec![id(1)]), (r2.peer, vec![id(1)])], "the first two copies");
    // One refuses (over quota), one stores: Stored, and the attachment follows to that relay.
    let refused = MailboxResponse::Deposited {
        results: vec![DepositResult { id: id(1), refused: Some(MailboxRefusal::QuotaExceeded) }],
    };
    c.sealed_deposit_done(r1.peer, vec![id(1)], Some(refused));
    assert!(matches!(
        actions(&mut c).as_slice(),
        [MailboxAction::Refused { reason: MailboxRefusal::QuotaExceeded, .. }]
    ));
    let stored =
        MailboxResponse::Deposited { results: vec![DepositResult { id: id(1), refused: None }] };
    c.sealed_deposit_done(r2.peer, vec![id(1)], Some(stored));
    let out = actions(&mut c);
    assert_eq!(
        engine_inputs(&out),
        vec![Input::Delivery { id: id(1), result: DeliveryResult::Stored }]
    );
    assert!(out.iter().any(|a| matches!(a, MailboxAction::StoredAt { relays, .. } if *relays == vec![address(&r2.peer, 1)])));
}

/// Issue 18 (found while sending files to groups): a group message's copy for an offline
/// member is an outbox entry of its own id, while the envelope inside (which the relay names in
/// its answer) carries the message's id. The answer was matched by the copy's id, found
/// nothing, and the copy counted as refused: it was deposited again and again, never reported
/// stored, and its attachment never uploaded to the member's relay.
#[test]
fn a_group_copy_held_by_a_relay_is_stored_although_the_relay_names_the_messages_id() {
    let (me, carol, r1) = (user(), user(), user());
    let mut c = client(&me, &[], 1);
    let (message, copy) = (id(1), id(2));
    let given = vec![address(&r1.peer, 1).to_string()];
    // Two copies in one deposit: a direct message of its own id, then the group's copy.
    c.track(id(3), carol.id, &envelope(id(3), &me.id, &carol.id), &given);
    c.track(copy, carol.id, &envelope(message, &me.id, &carol.id), &given);
    c.fall_back(id(3));
    c.fall_back(copy);
    assert_eq!(deposits(&actions(&mut c)), vec![(r1.peer, vec![id(3)])]);
    let stored = |ids: &[MessageId]| MailboxResponse::Deposited {
        results: ids.iter().map(|id| DepositResult { id: *id, refused: None }).collect(),
    };
    c.sealed_deposit_done(r1.peer, vec![id(3)], Some(stored(&[id(3)])));
    let out = actions(&mut c);
    assert_eq!(deposits(&out), vec![(r1.peer, vec![copy])]);
    c.sealed_deposit_done(r1.peer, vec![copy], Some(stored(&[message])));
    let out = actions(&mut c);
    assert_eq!(
        engine_inputs(&out),
        vec![Input::Delivery { id: copy, result: DeliveryResult::Stored }]
    );
    assert!(out.iter().any(|a| matches!(a, MailboxAction::StoredAt { id, .. } if *id == copy)));
}

#[test]
fn no_relay_holds_it_means_unreachable_and_a_peer_that_is_no_relay_is_not_asked_again() {
    let (me, bob, r1) = (user(), user(), user());
    let mut c = client(&me, &[], 2);
    let given = vec![address(&r1.peer, 1).to_string()];
    c.track(id(1), bob.id, &envelope(id(1), &me.id, &bob.id), &given);
    c.fall_back(id(1));
    actions(&mut c);
    c.sealed_deposit_done(
        r1.peer,
        vec![id(1)],
        Some(MailboxResponse::Refused(MailboxRefusal::NotARelay)),
    );
    let out = actions(&mut c);
    assert_eq!(
        engine_inputs(&out),
        vec![Input::Delivery { id: id(1), result: DeliveryResult::Unreachable }]
    );
    assert!(c.relays_for(&bob.id, &given).is_empty(), "a peer that said no is no relay");
}

#[test]
fn with_no_relay_known_the_engine_retries_and_relays_are_looked_for() {
    let (me, bob) = (user(), user());
    let mut c = client(&me, &[], 2);
    c.track(id(1), bob.id, &envelope(id(1), &me.id, &bob.id), &[]);
    c.fall_back(id(1));
    let out = actions(&mut c);
    assert!(out.iter().any(|a| matches!(a, MailboxAction::FetchRecord(u) if *u == bob.id)));
    assert!(out.iter().any(|a| matches!(a, MailboxAction::FindKeyspace(u) if *u == bob.id)));
    assert_eq!(
        engine_inputs(&out),
        vec![Input::Delivery { id: id(1), result: DeliveryResult::Unreachable }]
    );
    // An answered delivery has nothing to fall back to.
    c.track(id(2), bob.id, &envelope(id(2), &me.id, &bob.id), &[]);
    c.answered(&id(2));
    c.fall_back(id(2));
    assert_eq!(
        engine_inputs(&actions(&mut c)),
        vec![Input::Delivery { id: id(2), result: DeliveryResult::Unreachable }]
    );
}

#[test]
fn deposits_to_one_relay_go_one_request_at_a_time_in_outbox_order() {
    let (me, bob, r1) = (user(), user(), user());
    let mut c = client(&me, &[], 1);
    let given = vec![address(&r1.peer, 1).to_string()];
    for n in 0..3 {
        c.track(id(n), bob.id, &envelope(id(n), &me.id, &bob.id), &given);
        c.fall_back(id(n));
    }
    let first = deposits(&actions(&mut c));
    assert_eq!(first, vec![(r1.peer, vec![id(0)])]);
    // The answer lets the two that waited go together.
    c.sealed_deposit_done(
        r1.peer,
        vec![id(0)],
        Some(MailboxResponse::Deposited {
            results: vec![DepositResult { id: id(0), refused: None }],
        }),
    );
    let out = actions(&mut c);
    assert_eq!(deposits(&out), vec![(r1.peer, vec![id(1), id(2)])]);
    // A failed request counts as not stored.
    c.sealed_deposit_done(r1.peer, vec![id(1), id(2)], None);
    assert_eq!(
        engine_inputs(&actions(&mut c)),
        vec![
            Input::Delivery { id: id(1), result: DeliveryResult::Unreachable },
            Input::Delivery { id: id(2), result: DeliveryResult::Unreachable }
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_inbox_is_fetched_on_connect_and_acknowledged_only_once_the_engine_holds_it() {
    let (me, relay, alice) = (user(), user(), user());
    let home = address(&relay.peer, 1);
    let mut c = client(&me, std::slice::from_ref(&home), 2);
    c.start(Instant::now());
    assert!(matches!(actions(&mut c).as_slice(), [MailboxAction::Dial(a)] if *a == home));
    c.connected(relay.peer, Instant::now());
    let out = actions(&mut c);
    assert!(out.iter().any(|a| matches!(a, MailboxAction::Fetch { relay: r } if *r == relay.peer)));
    assert!(out.iter().any(|a| matches!(a, MailboxAction::UploadPreKeys { count: 0, .. })));
    assert!(
        out.iter().any(|a| matches!(a, MailboxAction::SetAccess { relay: r } if *r == relay.peer))
    );
    c.fetch_sent(1, relay.peer);
    // A second connection while the fetch runs asks nothing more (but to check the access
    // keys: the relay may have lost them).
    c.connected(relay.peer, Instant::now());
    assert!(matches!(actions(&mut c).as_slice(), [MailboxAction::SetAccess { .. }]));
    let envelopes: Vec<Envelope> = (0..3)
        .map(|n| kith_protocol::decode(&envelope(id(n), &alice.id, &me.id)).unwrap())
        .collect();
    c.answered_request(relay.peer, 1, MailboxResponse::Batch { envelopes, remaining: 5 });
    let tokens: Vec<ReplyToken> = engine_inputs(&actions(&mut c))
        .into_iter()
        .map(|input| match input {
            Input::Envelope { via: Via::Relay, reply: Some(token), .. } => token,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(tokens.len(), 3);
    let ack = |n: u8, result| DeliveryAck { id: id(n), result };
    c.engine_answered(tokens[0], &ack(0, AckResult::Accepted));
    c.engine_answered(tokens[1], &ack(1, AckResult::Rejected(RejectReason::Unavailable)));
    assert!(actions(&mut c).is_empty(), "not before the engine answered every one");
    c.engine_answered(tokens[2], &ack(2, AckResult::Duplicate));
    // A store failure (Unavailable) stays at the relay; the others go.
    let out = actions(&mut c);
    let [MailboxAction::Ack { relay: r, ids, more: true }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!((*r, ids.clone()), (relay.peer, vec![id(0), id(2)]));
    // The relay holds more: fetched again once the ack is taken.
    c.ack_sent(2, relay.peer, true);
    c.answered_request(relay.peer, 2, MailboxResponse::Acked { removed: 2 });
    assert!(matches!(actions(&mut c).as_slice(), [MailboxAction::Fetch { .. }]));
}

#[test]
fn a_push_is_answered_with_what_the_engine_holds() {
    let (me, relay, alice) = (user(), user(), user());
    let mut c = client(&me, &[], 2);
    let pushed: Envelope = kith_protocol::decode(&envelope(id(1), &alice.id, &me.id)).unwrap();
    c.pushed(relay.peer, vec![pushed], 77);
    let out = actions(&mut c);
    let [MailboxAction::Engine(Input::Envelope { reply: Some(token), .. })] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(c.owns(*token));
    c.engine_answered(*token, &DeliveryAck { id: id(1), result: AckResult::Accepted });
    let out = actions(&mut c);
    assert!(
        matches!(out.as_slice(), [MailboxAction::AnswerPush { push: 77, ids }] if *ids == vec![id(1)])
    );
}

#[tokio::test(start_paused = true)]
async fn home_relays_get_prekeys_on_first_connection_and_more_when_low() {
    let (me, relay) = (user(), user());
    let mut c = client(&me, &[address(&relay.peer, 1)], 2);
    c.connected(relay.peer, Instant::now());
    assert!(
        actions(&mut c).iter().any(|a| matches!(a, MailboxAction::UploadPreKeys { count: 0, .. }))
    );
    c.upload_sent(3, relay.peer);
    assert!(c.is_upload(&3));
    c.upload_answered(3, Some(&PreKeyResponse::Uploaded { one_time_prekeys: 2 }));
    assert!(matches!(
        actions(&mut c).as_slice(),
        [MailboxAction::UploadPreKeys { count: RELAY_PREKEY_BATCH, .. }]
    ));
    // Reconnecting soon after uploads nothing; after the refresh period it does.
    c.connected(relay.peer, Instant::now());
    assert!(!actions(&mut c).iter().any(|a| matches!(a, MailboxAction::UploadPreKeys { .. })));
    tokio::time::advance(PREKEY_REFRESH).await;
    c.connected(relay.peer, Instant::now());
    assert!(actions(&mut c).iter().any(|a| matches!(a, MailboxAction::UploadPreKeys { .. })));
    // Enough keys: nothing more.
    c.upload_sent(4, relay.peer);
    c.upload_answered(4, Some(&PreKeyResponse::Uploaded { one_time_prekeys: 50 }));
    assert!(!actions(&mut c).iter().any(|a| matches!(a, MailboxAction::UploadPreKeys { .. })));
}

#[test]
fn a_bundle_comes_from_the_peer_then_its_relays_then_its_record() {
    let (me, bob, r1, r2) = (user(), user(), user(), user());
    let mut c = client(&me, &[], 2);
    let given = vec![address(&r1.peer, 1).to_string(), address(&r2.peer, 2).to_string()];
    c.fetch_bundle(bob.id);
    let out = actions(&mut c);
    assert!(
        matches!(out.as_slice(), [MailboxAction::FetchBundle { peer, relays_left: None, .. }] if *peer == bob.peer)
    );
    c.bundle_sent(1, bob.id, None);
    assert_eq!(c.bundle_user(&1), Some(bob.id));
    c.bundle_request_failed(1, &given);
    let out = actions(&mut c);
    let Some(MailboxAction::FetchBundle { peer, relays_left: Some(rest), .. }) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!((*peer, rest.clone()), (r1.peer, vec![address(&r2.peer, 2)]));
    c.bundle_sent(2, bob.id, Some(rest.clone()));
    c.bundle_answered(2, PreKeyResponse::NotFound, &given);
    let out = actions(&mut c);
    let Some(MailboxAction::FetchBundle { peer, relays_left: Some(rest), .. }) = out.last() else {
        panic!("{out:?}")
    };
    assert_eq!((*peer, rest.len()), (r2.peer, 0));
    c.bundle_sent(3, bob.id, Some(Vec::new()));
    c.bundle_request_failed(3, &given);
    let out = actions(&mut c);
    assert!(matches!(
        out.as_slice(),
        [
            MailboxAction::Engine(Input::PreKeyBundle { result: Err(FetchError::Unreachable), .. }),
            MailboxAction::FetchRecord(u)
        ] if *u == bob.id
    ));
}

#[tokio::test(start_paused = true)]
async fn without_home_relays_we_fetch_from_those_closest_to_us_every_poll() {
    let (me, near, far) = (user(), user(), user());
    let mut c = client(&me, &[], 1);
    c.start(Instant::now());
    assert!(actions(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(Instant::now() + FIRST_KEYSPACE_POLL));
    tokio::time::advance(FIRST_KEYSPACE_POLL).await;
    c.handle_timeout(Instant::now());
    assert!(matches!(actions(&mut c).as_slice(), [MailboxAction::FindKeyspace(u)] if *u == me.id));
    c.keyspace_sent(9, me.id);
    assert!(c.is_keyspace_query(&9));
    c.keyspace_found(
        9,
        vec![(near.peer, vec![address(&near.peer, 1)]), (far.peer, vec![address(&far.peer, 2)])],
    );
    let fetched =
        actions(&mut c).into_iter().filter(|a| matches!(a, MailboxAction::Fetch { .. })).count();
    assert_eq!(fetched, 2, "2 × copies relays");
    assert_eq!(c.ours().len(), 2);
    assert_eq!(c.poll_timeout(), Some(Instant::now() + MAILBOX_POLL));
}
