//! Engine tests that need crate-internal constructors (an identity whose X25519 key changed).

use kith_protocol::direct::{AckResult, RejectReason};
use kith_protocol::prekey::PreKeyResponse;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::identity::IdentityKeyPair;
use crate::store::{Batch, Store};

const T: UnixMillis = 1_700_000_000_000;

type E = Engine<ChaCha20Rng>;

fn engine_with(identity: &IdentityKeyPair, seed: u64) -> E {
    let mut store = Store::memory();
    let mut batch = Batch::new();
    batch.put_identity(identity, T);
    store.commit(batch).unwrap();
    Engine::open(store, ChaCha20Rng::seed_from_u64(seed), T, Config::default()).unwrap()
}

fn drain(e: &mut E) -> Vec<Output> {
    e.flush().unwrap();
    std::iter::from_fn(|| e.poll_output()).collect()
}

/// Routes outputs between two engines (no faults) until both are idle; returns each side's
/// events. Every output is routed: nothing either side emits is dropped.
fn pump(a: &mut E, b: &mut E) -> (Vec<Event>, Vec<Event>) {
    let mut events = [Vec::new(), Vec::new()];
    // (sender side, reply token → who asked, output)
    let mut queue: VecDeque<(usize, Output)> = VecDeque::new();
    let mut asked: HashMap<u64, (usize, Option<MessageId>)> = HashMap::new();
    let mut next_token = 0u64;
    loop {
        for (side, e) in [(0, &mut *a), (1, &mut *b)] {
            queue.extend(drain(e).into_iter().map(|o| (side, o)));
        }
        let Some((side, output)) = queue.pop_front() else {
            let [ea, eb] = events;
            return (ea, eb);
        };
        let other = 1 - side;
        let (me, peer) = if side == 0 { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
        match output {
            Output::Deliver(d) => {
                next_token += 1;
                asked.insert(next_token, (side, Some(d.id)));
                let via = Via::Direct(me.user_id());
                let input =
                    Input::Envelope { bytes: d.envelope, via, reply: Some(ReplyToken(next_token)) };
                peer.handle_input(T, input).unwrap();
            }
            Output::FetchPreKeys { .. } => {
                next_token += 1;
                asked.insert(next_token, (side, None));
                peer.handle_input(T, Input::PreKeyRequest { reply: ReplyToken(next_token) })
                    .unwrap();
            }
            Output::Reply { token, reply } => {
                let Some((origin, _)) = asked.remove(&token.0) else { continue };
                debug_assert_eq!(origin, other);
                let input = match reply {
                    Reply::Ack(ack) => {
                        Input::Delivery { id: ack.id, result: DeliveryResult::Acked(ack.result) }
                    }
                    Reply::PreKeys(PreKeyResponse::Bundle(bundle)) => {
                        Input::PreKeyBundle { user: me.user_id(), result: Ok(bundle) }
                    }
                    Reply::PreKeys(_) => Input::PreKeyBundle {
                        user: me.user_id(),
                        result: Err(FetchError::NotFound),
                    },
                };
                peer.handle_input(T, input).unwrap();
            }
            Output::Event(e) => events[side].push(e),
            // No groups here.
            Output::Publish(_)
            | Output::Subscribe { .. }
            | Output::Unsubscribe { .. }
            | Output::Validation { .. } => {}
        }
    }
}

fn send(e: &mut E, to: UserId, text: &str) -> MessageId {
    match e.handle_command(T, Command::SendText { to, text: text.into(), reply_to: None }).unwrap()
    {
        CommandResult::Queued(id) => id,
        other => unreachable!("{other:?}"),
    }
}

#[test]
fn changed_identity_key_is_refused_until_the_user_trusts_it() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let (mut alice, mut bob) = (engine_with(&alice_id, 10), engine_with(&bob_id, 11));
    let (ua, ub) = (alice.user_id(), bob.user_id());
    alice
        .handle_command(T, Command::AddContact { user: ub, name: "bob".into(), relays: vec![] })
        .unwrap();
    send(&mut alice, ub, "hi");
    pump(&mut alice, &mut bob);
    send(&mut bob, ua, "hello");
    pump(&mut alice, &mut bob);
    let pinned = alice.contact(&ub).unwrap().unwrap().identity.unwrap();
    assert_eq!(pinned, bob_id.binding());

    // Bob reappears with the same Ed25519 key but a new X25519 identity key, and no state.
    let bob2_id = bob_id.with_new_dh_key(&mut rng);
    let mut bob2 = engine_with(&bob2_id, 12);
    let before = alice.store().dump().unwrap();
    let refused = send(&mut bob2, ua, "it's me, really");
    let (alice_events, _) = pump(&mut alice, &mut bob2);
    // Bob2 is told why: the message failed with the recipient's reason.
    assert_eq!(
        bob2.message(&refused).unwrap().unwrap().status,
        MessageStatus::Failed(DeliveryFailure::Rejected(RejectReason::IdentityChanged))
    );
    assert!(
        alice_events.iter().any(|e| matches!(e, Event::IdentityChanged { peer, identity } if *peer == ub && *identity == bob2_id.binding())),
        "no IdentityChanged event: {alice_events:?}"
    );
    assert!(
        !alice_events.iter().any(|e| matches!(e, Event::Message(_))),
        "a message under the new key was accepted"
    );
    assert!(
        alice_events
            .iter()
            .any(|e| matches!(e, Event::Rejected { reason: RejectReason::IdentityChanged, .. }))
    );
    // Nothing of the refused envelope was written (issue 14, item 7): no session, message,
    // seen id or contact; only the one-time prekey Alice handed Bob2 when he fetched her
    // bundle. The pending key is remembered in memory for the user to review.
    let after = alice.store().dump().unwrap();
    let mut changed: Vec<_> =
        after.iter().filter(|w| !before.contains(w)).map(|(t, _, _)| *t).collect();
    changed.dedup();
    assert_eq!(changed, vec![crate::store::Tree::PreKeys]);
    let contact = alice.contact(&ub).unwrap().unwrap();
    assert_eq!(contact.identity, Some(pinned), "the pinned key must not change silently");
    assert_eq!(contact.pending_identity, Some(bob2_id.binding()));

    // Nothing goes out to Bob until the user accepts the new key.
    assert_eq!(
        alice.handle_command(T, Command::SendText { to: ub, text: "x".into(), reply_to: None }),
        Err(CommandError::IdentityChanged)
    );
    alice.handle_command(T, Command::TrustIdentity { user: ub }).unwrap();
    let contact = alice.contact(&ub).unwrap().unwrap();
    assert_eq!(
        (contact.identity, contact.pending_identity, contact.verified),
        (Some(bob2_id.binding()), None, false)
    );

    // Now Bob2's messages are accepted, and Alice can write to the new key.
    let again = send(&mut bob2, ua, "it's me, really (again)");
    let (alice_events, _) = pump(&mut alice, &mut bob2);
    assert_eq!(bob2.message(&again).unwrap().unwrap().status, MessageStatus::Delivered);
    assert!(alice_events.iter().any(|e| matches!(e, Event::Message(_))));
    send(&mut alice, ub, "welcome back");
    let (_, bob2_events) = pump(&mut alice, &mut bob2);
    assert!(bob2_events.iter().any(|e| matches!(e, Event::Message(_))));
}

#[test]
fn changed_identity_key_in_a_fetched_bundle_fails_queued_messages() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let (mut alice, mut bob) = (engine_with(&alice_id, 20), engine_with(&bob_id, 21));
    let ub = bob.user_id();
    send(&mut alice, ub, "hi");
    pump(&mut alice, &mut bob);

    // Bob lost his state and got a new X25519 key; he refuses Alice's next message twice.
    let bob2_id = bob_id.with_new_dh_key(&mut rng);
    let mut bob2 = engine_with(&bob2_id, 22);
    let id = send(&mut alice, ub, "are you there?");
    drain(&mut alice);
    for _ in 0..2 {
        alice
            .handle_input(
                T,
                Input::Delivery {
                    id,
                    result: DeliveryResult::Acked(AckResult::Rejected(RejectReason::NoSession)),
                },
            )
            .unwrap();
    }
    // Alice starts over with a new session: the bundle she gets carries the new key.
    let (alice_events, _) = pump(&mut alice, &mut bob2);
    assert!(alice_events.iter().any(|e| matches!(e, Event::IdentityChanged { .. })));
    assert_eq!(
        alice.message(&id).unwrap().unwrap().status,
        MessageStatus::Failed(DeliveryFailure::IdentityChanged)
    );
    assert_eq!(alice.outbox_len(), 0);
}

#[test]
fn debug_output_of_every_secret_type_shows_no_key_bytes() {
    use crate::crypto::{DhKeyPair, SecretBytes, SigningKeyPair};
    use crate::prekeys::{OneTimePreKey, SignedPreKey};
    use crate::ratchet::keys::{ChainKey, MessageKey, RootKey};

    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let identity = IdentityKeyPair::generate(&mut rng);
    let dh = DhKeyPair::generate(&mut rng);
    let signing = SigningKeyPair::generate(&mut rng);
    let spk = SignedPreKey::generate(&identity, 1, T, &mut rng);
    let opk = OneTimePreKey::generate(1, &mut rng);
    let secret = SecretBytes::random(&mut rng);
    let (seed, dh_secret, ..) = identity.to_stored();
    let mut engine = engine_with(&identity, 30);
    let _ = drain(&mut engine);
    let batch = {
        let mut b = Batch::new();
        b.put_identity(&identity, T);
        b
    };
    let media_key = kith_protocol::content::SymmetricKey(*secret.expose());

    let cases: Vec<(String, Vec<[u8; 32]>)> = vec![
        (format!("{secret:?}"), vec![*secret.expose()]),
        (format!("{dh:?}"), vec![*dh.secret().expose()]),
        (format!("{signing:?}"), vec![*signing.secret().expose()]),
        (format!("{identity:?}"), vec![*seed.expose(), *dh_secret.expose()]),
        (format!("{spk:?}"), vec![*spk.pair.secret().expose()]),
        (format!("{opk:?}"), vec![*opk.pair.secret().expose()]),
        (format!("{:?}", RootKey(secret.clone())), vec![*secret.expose()]),
        (format!("{:?}", ChainKey(secret.clone())), vec![*secret.expose()]),
        (format!("{:?}", MessageKey(secret.clone())), vec![*secret.expose()]),
        (format!("{media_key:?}"), vec![*secret.expose()]),
        (format!("{engine:?}"), vec![*seed.expose(), *dh_secret.expose()]),
        (format!("{batch:?}"), vec![*seed.expose(), *dh_secret.expose()]),
    ];
    for (shown, secrets) in cases {
        for key in secrets {
            // Neither hex nor a Rust byte list of any 6-byte window of the key may appear.
            for window in key.windows(6) {
                let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
                let list = format!("{window:?}");
                let list = list.trim_matches(['[', ']']);
                assert!(
                    !shown.contains(&hex) && !shown.contains(list),
                    "Debug leaks key bytes: {shown}"
                );
            }
        }
        assert!(!shown.is_empty());
    }
}

/// Regression: message ids are chosen by senders, and a contact who reused another contact's
/// message id used to overwrite that message in the history.
#[test]
fn a_message_id_reused_by_another_contact_leaves_the_first_message_untouched() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (alice_id, bob_id, mallory_id) = (
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
    );
    let (mut alice, mut bob, mut mallory) =
        (engine_with(&alice_id, 30), engine_with(&bob_id, 31), engine_with(&mallory_id, 32));
    let ua = alice.user_id();
    let bobs = send(&mut bob, ua, "from bob");
    pump(&mut alice, &mut bob);
    send(&mut mallory, ua, "hi");
    pump(&mut alice, &mut mallory);
    let before = alice.message(&bobs).unwrap().unwrap();
    assert_eq!(before.peer, bob.user_id());

    // Mallory seals a message of her own under Bob's message id.
    let plaintext = kith_protocol::encode(&Content {
        sent_at: T,
        body: Body::Text(Text { body: "forged".into(), reply_to: None }),
    })
    .unwrap();
    let mut sessions = mallory.take_sessions(&ua).unwrap();
    let session = sessions.current.as_mut().unwrap();
    let envelope = mallory.seal(session, bobs, ua, &plaintext).unwrap();
    let via = Via::Direct(mallory.user_id());
    alice
        .handle_input(T, Input::Envelope { bytes: envelope, via, reply: Some(ReplyToken(7)) })
        .unwrap();
    let acks: Vec<AckResult> = drain(&mut alice)
        .into_iter()
        .filter_map(|o| match o {
            Output::Reply { token: ReplyToken(7), reply: Reply::Ack(ack) } => Some(ack.result),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![AckResult::Duplicate]);
    assert_eq!(alice.message(&bobs).unwrap().unwrap(), before);
    let with_mallory = alice.history(&mallory.user_id(), None, 10).unwrap();
    assert_eq!(with_mallory.len(), 1, "the forged message is not stored");
}

#[test]
fn prekeys_uploaded_to_a_relay_are_never_handed_out_again() {
    let identity = IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(40));
    let mut e = engine_with(&identity, 41);
    e.handle_input(T, Input::Timeout).unwrap();
    drain(&mut e);
    let upload = e.prekey_upload(T, 5).unwrap().expect("a signed prekey exists");
    assert_eq!(upload.one_time_prekeys.len(), 5);
    assert_eq!(upload.identity, identity.binding());
    let uploaded: Vec<u32> = upload.one_time_prekeys.iter().map(|k| k.id).collect();

    // A second upload and direct requests get other keys.
    let again = e.prekey_upload(T, 5).unwrap().unwrap();
    assert!(again.one_time_prekeys.iter().all(|k| !uploaded.contains(&k.id)));
    e.handle_input(T, Input::PreKeyRequest { reply: ReplyToken(1) }).unwrap();
    let served = drain(&mut e).into_iter().find_map(|o| match o {
        Output::Reply { reply: Reply::PreKeys(PreKeyResponse::Bundle(b)), .. } => {
            b.one_time_prekey.map(|k| k.id)
        }
        _ => None,
    });
    let served = served.expect("a one-time prekey");
    assert!(!uploaded.contains(&served) && again.one_time_prekeys.iter().all(|k| k.id != served));
}

/// Issue 14, item 6: every field of an initial message is checked, also when its sender is
/// pinned already, and a base key in a non-canonical encoding (bit 255 set, which X25519
/// ignores) cannot fork a second session out of a repeated initial message sent without a
/// one-time prekey. Each refusal leaves the store byte for byte as it was.
#[test]
fn an_initial_messages_fields_cannot_change_unnoticed() {
    use kith_protocol::envelope::{Envelope, EnvelopeKind};

    let mut alice = engine_with(&IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(1)), 1);
    let mut bob = engine_with(&IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(2)), 2);
    let (ua, ub) = (alice.user_id(), bob.user_id());
    send(&mut alice, ub, "first");
    // Alice fetches Bob's bundle, handed over without its one-time prekey.
    assert!(drain(&mut alice).iter().any(|o| matches!(o, Output::FetchPreKeys { .. })));
    bob.handle_input(T, Input::PreKeyRequest { reply: ReplyToken(1) }).unwrap();
    let bundle = drain(&mut bob)
        .into_iter()
        .find_map(|o| match o {
            Output::Reply { reply: Reply::PreKeys(PreKeyResponse::Bundle(mut b)), .. } => {
                b.one_time_prekey = None;
                Some(b)
            }
            _ => None,
        })
        .expect("a bundle");
    alice.handle_input(T, Input::PreKeyBundle { user: ub, result: Ok(bundle) }).unwrap();
    let deliveries = |e: &mut E| -> Vec<Vec<u8>> {
        drain(e)
            .into_iter()
            .filter_map(|o| match o {
                Output::Deliver(d) => Some(d.envelope),
                _ => None,
            })
            .collect()
    };
    let first = deliveries(&mut alice).pop().expect("the first message");
    let accept = |bob: &mut E, bytes: Vec<u8>| {
        bob.handle_input(
            T,
            Input::Envelope { bytes, via: Via::Direct(ua), reply: Some(ReplyToken(9)) },
        )
        .unwrap();
        drain(bob)
            .into_iter()
            .find_map(|o| match o {
                Output::Reply { reply: Reply::Ack(ack), .. } => Some(ack.result),
                _ => None,
            })
            .expect("an ack")
    };
    assert_eq!(accept(&mut bob, first), AckResult::Accepted);
    // Bob has not answered: Alice's next message repeats the X3DH header.
    send(&mut alice, ub, "second");
    let second = deliveries(&mut alice).pop().expect("the second message");
    let mutate = |f: &dyn Fn(&mut kith_protocol::envelope::PreKeyMessage)| {
        let mut envelope: Envelope = kith_protocol::decode(&second).unwrap();
        let EnvelopeKind::PreKey(message) = &mut envelope.kind else { panic!("a PreKey message") };
        f(message);
        kith_protocol::encode(&envelope).unwrap()
    };
    let before = bob.store().dump().unwrap();
    let bad_signature = mutate(&|m| m.identity_dh_signature.0[0] ^= 1);
    assert_eq!(accept(&mut bob, bad_signature), AckResult::Rejected(RejectReason::DecryptFailed));
    let flipped_base = mutate(&|m| m.base_key.0[31] |= 0x80);
    assert!(matches!(accept(&mut bob, flipped_base), AckResult::Rejected(_)));
    assert_eq!(bob.store().dump().unwrap(), before, "a refused message changes nothing");
    let sessions = bob.store().sessions(&ua).unwrap();
    assert!(sessions.current.is_some() && sessions.previous.is_empty(), "no second session");
    // The genuine message still opens.
    assert_eq!(accept(&mut bob, second), AckResult::Accepted);
}

/// Timers run on the monotonic clock: the wall clock stepping an hour back (a corrected
/// clock, a VM restored from a snapshot) neither stalls a retry nor stamps anything in the
/// future of what follows.
#[test]
fn a_wall_clock_step_back_does_not_stall_retries() {
    let mut alice = engine_with(&IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(3)), 3);
    let bob = IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(4)).user_id();
    let start = Now { wall: T, mono: T };
    alice
        .handle_command(start, Command::SendText { to: bob, text: "hi".into(), reply_to: None })
        .unwrap();
    // Bob cannot be reached for his bundle: the fetch is retried with backoff.
    let fetches = |outputs: &[Output]| {
        outputs.iter().filter(|o| matches!(o, Output::FetchPreKeys { .. })).count()
    };
    assert_eq!(fetches(&drain(&mut alice)), 1);
    alice
        .handle_input(
            start,
            Input::PreKeyBundle { user: bob, result: Err(FetchError::Unreachable) },
        )
        .unwrap();
    let due = alice.poll_timeout().expect("a retry is scheduled");
    assert!(due > start.mono && due <= start.mono + RETRY_MAX_MS + ATTEMPT_TIMEOUT_MS, "{due}");
    // The wall clock steps an hour back; the monotonic clock goes on to the retry.
    let later = Now { wall: T - 3_600_000, mono: due };
    alice.handle_input(later, Input::Timeout).unwrap();
    assert_eq!(fetches(&drain(&mut alice)), 1, "the retry went out on time");
}
