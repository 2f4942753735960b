//! Engine tests that need crate-internal constructors (an identity whose X25519 key changed).

use kith_protocol::direct::{AckResult, RejectReason};
use kith_protocol::prekey::PreKeyResponse;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::identity::IdentityKeyPair;
use crate::store::Batch;
use crate::testing::{Faults, Net, SimEngine as E, T0 as T};

/// An engine with `identity`, on its own, for tests that drive it by hand.
fn engine_with(identity: &IdentityKeyPair, seed: u64) -> E {
    let mut net = Net::new(0, Faults::NONE, seed);
    let node = net.add_node_with(identity);
    net.nodes.swap_remove(node).engine.expect("running")
}

/// A network of nodes with these identities (node i has `identities[i]`).
fn net_with(identities: &[&IdentityKeyPair]) -> Net {
    let mut net = Net::new(0, Faults::NONE, 1);
    for identity in identities {
        net.add_node_with(identity);
    }
    net
}

fn drain(e: &mut E) -> Vec<Output> {
    e.flush().unwrap();
    std::iter::from_fn(|| e.poll_output()).collect()
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
    let mut net = net_with(&[&alice_id, &bob_id]);
    let (ua, ub) = (net.user(0), net.user(1));
    let add = Command::AddContact { user: ub, name: "bob".into(), relays: vec![] };
    net.command(0, add);
    send(net.engine(0), ub, "hi");
    net.run();
    send(net.engine(1), ua, "hello");
    net.run();
    let pinned = net.engine(0).contact(&ub).unwrap().unwrap().identity.unwrap();
    assert_eq!(pinned, bob_id.binding());

    // Bob reappears with the same Ed25519 key but a new X25519 identity key, and no state.
    let bob2_id = bob_id.with_new_dh_key(&mut rng);
    net.reinstall(1, &bob2_id);
    net.nodes[0].take_events();
    let before = net.engine(0).store().dump().unwrap();
    let refused = send(net.engine(1), ua, "it's me, really");
    net.run();
    let alice_events = net.nodes[0].take_events();
    // Bob2 is told why: the message failed with the recipient's reason.
    assert_eq!(
        net.engine(1).message(&refused).unwrap().unwrap().status,
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
    let alice = net.engine(0);
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
    let again = send(net.engine(1), ua, "it's me, really (again)");
    net.run();
    let alice_events = net.nodes[0].take_events();
    assert_eq!(net.engine(1).message(&again).unwrap().unwrap().status, MessageStatus::Delivered);
    assert!(alice_events.iter().any(|e| matches!(e, Event::Message(_))));
    net.nodes[1].take_events();
    send(net.engine(0), ub, "welcome back");
    net.run();
    assert!(net.nodes[1].take_events().iter().any(|e| matches!(e, Event::Message(_))));
}

#[test]
fn changed_identity_key_in_a_fetched_bundle_fails_queued_messages() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let mut net = net_with(&[&alice_id, &bob_id]);
    let ub = net.user(1);
    send(net.engine(0), ub, "hi");
    net.run();

    // Bob lost his state and got a new X25519 key; he refuses Alice's next message twice.
    let bob2_id = bob_id.with_new_dh_key(&mut rng);
    net.reinstall(1, &bob2_id);
    let alice = net.engine(0);
    let id = send(alice, ub, "are you there?");
    drain(alice);
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
    net.nodes[0].take_events();
    net.run();
    let alice_events = net.nodes[0].take_events();
    assert!(alice_events.iter().any(|e| matches!(e, Event::IdentityChanged { .. })));
    assert_eq!(
        net.engine(0).message(&id).unwrap().unwrap().status,
        MessageStatus::Failed(DeliveryFailure::IdentityChanged)
    );
    assert_eq!(net.engine(0).outbox_len(), 0);
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
    let mut net = net_with(&[&alice_id, &bob_id, &mallory_id]);
    let ua = net.user(0);
    let bobs = send(net.engine(1), ua, "from bob");
    net.run();
    send(net.engine(2), ua, "hi");
    net.run();
    let before = net.engine(0).message(&bobs).unwrap().unwrap();
    assert_eq!(before.peer, net.user(1));

    // Mallory seals a message of her own under Bob's message id.
    let plaintext = kith_protocol::encode(&Content {
        sent_at: T,
        body: Body::Text(Text { body: "forged".into(), reply_to: None }),
    })
    .unwrap();
    let mallory = net.engine(2);
    let mut sessions = mallory.take_sessions(&ua).unwrap();
    let session = sessions.current.as_mut().unwrap();
    let envelope = mallory.seal(session, bobs, ua, &plaintext).unwrap();
    let via = Via::Direct(mallory.user_id());
    let mallory_id = mallory.user_id();
    let alice = net.engine(0);
    alice
        .handle_input(T, Input::Envelope { bytes: envelope, via, reply: Some(ReplyToken(7)) })
        .unwrap();
    let acks: Vec<AckResult> = drain(alice)
        .into_iter()
        .filter_map(|o| match o {
            Output::Reply { token: ReplyToken(7), reply: Reply::Ack(ack) } => Some(ack.result),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![AckResult::Duplicate]);
    assert_eq!(alice.message(&bobs).unwrap().unwrap(), before);
    let with_mallory = alice.history(&mallory_id, None, 10).unwrap();
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
    // Bob has not answered: Alice's next message repeats the PQXDH header.
    send(&mut alice, ub, "second");
    let second = deliveries(&mut alice).pop().expect("the second message");
    let mutate = |f: &dyn Fn(&mut kith_protocol::envelope::PqPreKeyMessage)| {
        let mut envelope: Envelope = kith_protocol::decode(&second).unwrap();
        let EnvelopeKind::PqPreKey(message) = &mut envelope.kind else {
            panic!("a PQXDH PreKey message")
        };
        f(message);
        kith_protocol::encode(&envelope).unwrap()
    };
    let before = bob.store().dump().unwrap();
    let bad_signature = mutate(&|m| m.identity_dh_signature.0[0] ^= 1);
    assert_eq!(accept(&mut bob, bad_signature), AckResult::Rejected(RejectReason::DecryptFailed));
    let flipped_base = mutate(&|m| m.base_key.0[31] |= 0x80);
    assert!(matches!(accept(&mut bob, flipped_base), AckResult::Rejected(_)));
    // Every field of the PQXDH header: prekey ids, the KEM prekey id, the KEM ciphertext.
    let tampered: [&dyn Fn(&mut kith_protocol::envelope::PqPreKeyMessage); 5] = [
        &|m| m.signed_prekey_id ^= 1,
        &|m| m.one_time_prekey_id = m.one_time_prekey_id.map_or(Some(1), |_| None),
        &|m| m.kem_prekey_id ^= 1,
        &|m| m.kem_ciphertext.0[500] ^= 1,
        &|m| m.message.ciphertext[0] ^= 1,
    ];
    for change in tampered {
        assert!(matches!(accept(&mut bob, mutate(change)), AckResult::Rejected(_)));
    }
    // A downgrade: the same header with its PQ part stripped, as a classical PreKey message.
    let stripped = {
        let mut envelope: Envelope = kith_protocol::decode(&second).unwrap();
        let EnvelopeKind::PqPreKey(m) = envelope.kind else { panic!("a PQXDH PreKey message") };
        envelope.kind = EnvelopeKind::PreKey(kith_protocol::envelope::PreKeyMessage {
            identity_dh_key: m.identity_dh_key,
            identity_dh_signature: m.identity_dh_signature,
            base_key: m.base_key,
            signed_prekey_id: m.signed_prekey_id,
            one_time_prekey_id: m.one_time_prekey_id,
            message: stripped_header(&m.message),
        });
        kith_protocol::encode(&envelope).unwrap()
    };
    assert_eq!(accept(&mut bob, stripped), AckResult::Rejected(RejectReason::NoSession));
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

/// Deleting messages, or a whole conversation, on this device: gone from the store (also after
/// a restart), the peer's copies untouched, an unknown id deletes nothing, and a message not
/// yet sent is not sent.
#[test]
fn local_deletion_removes_messages_here_only_and_survives_a_restart() {
    let mut net = Net::new(2, Faults::NONE, 91);
    net.introduce_all();
    let (alice, bob) = (net.nodes[0].user, net.nodes[1].user);
    let ids: Vec<MessageId> = (0..4).map(|i| net.send_text(0, 1, &format!("m{i}"))).collect();
    net.run();
    let texts = |net: &mut Net, node: usize, peer: UserId| -> usize {
        net.engine(node).history(&peer, None, 100).unwrap().len()
    };
    assert_eq!((texts(&mut net, 0, bob), texts(&mut net, 1, alice)), (4, 4));

    // One id that is not in the conversation: nothing is deleted.
    let err = net
        .engine(0)
        .handle_command(
            T,
            Command::DeleteLocally { peer: bob, ids: vec![ids[0], MessageId([9; 16])] },
        )
        .unwrap_err();
    assert_eq!(err, CommandError::UnknownMessage);
    assert_eq!(texts(&mut net, 0, bob), 4);

    net.engine(0)
        .handle_command(T, Command::DeleteLocally { peer: bob, ids: vec![ids[1]] })
        .unwrap();
    net.run();
    let left: Vec<MessageId> =
        net.engine(0).history(&bob, None, 100).unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(left, vec![ids[0], ids[2], ids[3]]);
    assert!(net.engine(0).message(&ids[1]).unwrap().is_none());
    assert_eq!(texts(&mut net, 1, alice), 4, "the peer keeps its copy");

    // A message still queued (Bob is away) is deleted and never sent.
    net.crash(1);
    let queued = net.send_text(0, 1, "never mind");
    net.engine(0).handle_command(T, Command::DeleteConversation { peer: bob }).unwrap();
    net.run(); // the turn ends: its writes are flushed
    net.restart(1);
    net.restart(0);
    net.advance(120_000);
    net.run();
    assert_eq!(texts(&mut net, 0, bob), 0, "the conversation is gone, also after a restart");
    assert!(net.engine(0).message(&queued).unwrap().is_none());
    let at_bob: Vec<MessageId> =
        net.engine(1).history(&alice, None, 100).unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(at_bob.len(), 4);
    assert!(!at_bob.contains(&queued), "a deleted message that was not sent is not sent");
    assert!(net.engine(0).store.contact(&bob).unwrap().is_some(), "the contact stays");
    // Unknown contacts are refused.
    let stranger = UserId([3; 32]);
    assert!(
        net.engine(0).handle_command(T, Command::DeleteConversation { peer: stranger }).is_err()
    );
}

/// A peer that comes back with the same identity and no sessions (a restored backup): the
/// new session it starts is a session reset for us, never an identity change, and the chat
/// goes on both ways.
#[test]
fn a_peer_back_with_the_same_identity_and_no_sessions_is_a_session_reset_not_a_key_change() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let mut net = net_with(&[&alice_id, &bob_id]);
    let (ua, ub) = (net.user(0), net.user(1));
    net.command(0, Command::AddContact { user: ub, name: "bob".into(), relays: vec![] });
    send(net.engine(0), ub, "hi");
    net.run();
    send(net.engine(1), ua, "hello");
    net.run();
    assert!(!net.nodes[0].take_events().iter().any(|e| matches!(e, Event::SessionReset { .. })));

    net.reinstall(1, &bob_id);
    net.command(1, Command::AddContact { user: ua, name: "alice".into(), relays: vec![] });
    let back = send(net.engine(1), ua, "restored");
    net.run();
    let events = net.nodes[0].take_events();
    assert!(
        events.iter().any(|e| matches!(e, Event::SessionReset { peer } if *peer == ub)),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::IdentityChanged { .. })), "{events:?}");
    assert_eq!(net.engine(1).message(&back).unwrap().unwrap().status, MessageStatus::Delivered);
    let reply = send(net.engine(0), ub, "welcome back");
    net.run();
    assert!(matches!(
        net.engine(0).message(&reply).unwrap().unwrap().status,
        MessageStatus::Delivered | MessageStatus::Read
    ));
}

/// Issue 20: no silent downgrade. A peer that offers only classical prekeys gets no session
/// (the queued message fails with the reason), and a classical X3DH initial message that would
/// set up a new session is refused without storing anything.
#[test]
fn classical_peers_are_refused_with_a_reason_in_both_directions() {
    use kith_protocol::envelope::{Envelope, EnvelopeKind, PreKeyMessage};

    let mut alice = engine_with(&IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(5)), 5);
    let mut bob = engine_with(&IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(6)), 6);
    let (ua, ub) = (alice.user_id(), bob.user_id());
    // Bob's node is from before PQXDH: his relays and record say so.
    let id = send(&mut alice, ub, "hello");
    drain(&mut alice);
    alice
        .handle_input(T, Input::PreKeyBundle { user: ub, result: Err(FetchError::Classical) })
        .unwrap();
    assert_eq!(
        alice.message(&id).unwrap().unwrap().status,
        MessageStatus::Failed(DeliveryFailure::NotPostQuantum)
    );
    assert_eq!(alice.outbox_len(), 0);
    assert!(!alice.has_session(&ub).unwrap());

    // Alice, now with a real PQXDH session to Bob, has her first message rewritten into a
    // classical one (same keys, KEM ciphertext dropped) by someone on the way.
    let id = send(&mut alice, ub, "hello again");
    assert!(drain(&mut alice).iter().any(|o| matches!(o, Output::FetchPreKeys { .. })));
    bob.handle_input(T, Input::PreKeyRequest { reply: ReplyToken(1) }).unwrap();
    let bundle = drain(&mut bob)
        .into_iter()
        .find_map(|o| match o {
            Output::Reply { reply: Reply::PreKeys(PreKeyResponse::Bundle(b)), .. } => Some(b),
            _ => None,
        })
        .expect("a PQXDH bundle");
    alice.handle_input(T, Input::PreKeyBundle { user: ub, result: Ok(bundle) }).unwrap();
    let first = drain(&mut alice)
        .into_iter()
        .find_map(|o| match o {
            Output::Deliver(d) if d.id == id => Some(d.envelope),
            _ => None,
        })
        .expect("the first message");
    let mut envelope: Envelope = kith_protocol::decode(&first).unwrap();
    let EnvelopeKind::PqPreKey(m) = envelope.kind else { panic!("a PQXDH first message") };
    envelope.kind = EnvelopeKind::PreKey(PreKeyMessage {
        identity_dh_key: m.identity_dh_key,
        identity_dh_signature: m.identity_dh_signature,
        base_key: m.base_key,
        signed_prekey_id: m.signed_prekey_id,
        one_time_prekey_id: m.one_time_prekey_id,
        message: stripped_header(&m.message),
    });
    let accept = |bob: &mut E, bytes: Vec<u8>| -> AckResult {
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
    let before = bob.store().dump().unwrap();
    let classical = kith_protocol::encode(&envelope).unwrap();
    assert_eq!(accept(&mut bob, classical), AckResult::Rejected(RejectReason::Unsupported));
    assert_eq!(ReceiveError::ClassicalHandshake.reject_reason(), RejectReason::Unsupported);
    assert_eq!(bob.store().dump().unwrap(), before, "nothing stored");
    // The genuine PQXDH message sets up a post-quantum session.
    assert_eq!(accept(&mut bob, first), AckResult::Accepted);
    let sessions = bob.store().sessions(&ua).unwrap();
    assert!(sessions.current.is_some_and(|s| s.is_post_quantum()));
}

/// One-time KEM prekeys are handed out once and deleted with the session they create; the
/// last-resort one serves when none is left and is kept. A replayed first message that names a
/// consumed one-time KEM prekey finds nothing to decrypt with.
#[test]
fn one_time_kem_prekeys_are_used_once_and_the_last_resort_one_stays() {
    use std::collections::BTreeSet;

    use kith_protocol::prekey::KemPreKeyKind;

    let mut bob = engine_with(&IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(7)), 7);
    let serve = |bob: &mut E| {
        bob.handle_input(T, Input::PreKeyRequest { reply: ReplyToken(1) }).unwrap();
        drain(bob)
            .into_iter()
            .find_map(|o| match o {
                Output::Reply { reply: Reply::PreKeys(PreKeyResponse::Bundle(b)), .. } => Some(b),
                _ => None,
            })
            .expect("a bundle")
    };
    let mut served = BTreeSet::new();
    let batch = crate::prekeys::KEM_ONE_TIME_PREKEY_BATCH as usize;
    for _ in 0..batch {
        let bundle = serve(&mut bob);
        assert_eq!(bundle.kem_prekey.kind, KemPreKeyKind::OneTime);
        assert!(served.insert(bundle.kem_prekey.id), "a one-time KEM prekey handed out twice");
    }
    // All handed out: the last-resort key, the same each time, until upkeep tops up.
    let last = serve(&mut bob).kem_prekey;
    assert_eq!(last.kind, KemPreKeyKind::LastResort);
    assert_eq!(bob.store().current_kem_prekey().unwrap().map(|k| k.id()), Some(last.id));

    // A session set up on a one-time KEM prekey deletes it in the same commit.
    let mut net = Net::new(2, Faults::NONE, 8);
    net.introduce_all();
    let ub = net.nodes[1].user;
    let kem_ids = |net: &mut Net| -> Vec<u32> {
        let store = net.engine(1).store();
        store.kem_prekeys().unwrap().iter().map(|r| r.id()).collect()
    };
    let before = kem_ids(&mut net);
    net.send_text(0, 1, "hi");
    net.run();
    let after = kem_ids(&mut net);
    assert_eq!(before.len(), after.len() + 1, "exactly one KEM prekey consumed");
    assert!(net.engine(0).has_session(&ub).unwrap());
}

/// KEM prekey upkeep with nothing to do writes nothing (it used to rewrite the next-id counter
/// every hour).
#[test]
fn kem_prekey_upkeep_with_nothing_to_do_writes_nothing() {
    let mut bob = engine_with(&IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(9)), 9);
    let mut batch = crate::store::Batch::new();
    bob.maintain_kem_prekeys(T, &mut batch).unwrap();
    assert!(batch.is_empty(), "the engine's start already made its KEM prekeys");
    let next = bob.store().next_kem_prekey_id().unwrap();
    assert!(next > 1, "keys were made, and their next id stored");
}

/// The acknowledgement results among `outputs`.
fn ack_results(outputs: Vec<Output>) -> Vec<AckResult> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Reply { reply: Reply::Ack(ack), .. } => Some(ack.result),
            _ => None,
        })
        .collect()
}

/// A downgrader's version-1 ratchet message from a sealed one: the same ciphertext under a
/// plain header (it cannot read the real one, so it guesses: the first message of a chain).
fn stripped_header(
    m: &kith_protocol::envelope::SealedRatchetMessage,
) -> kith_protocol::envelope::RatchetMessage {
    kith_protocol::envelope::RatchetMessage {
        header: kith_protocol::envelope::RatchetHeader {
            ratchet_key: kith_protocol::DhPublicKey([9; 32]),
            previous_chain_length: 0,
            counter: 0,
        },
        ciphertext: m.ciphertext.clone(),
    }
}

/// Sealed sender in the engine: once a session is set up, each side hands the other an access
/// key (inside the session); an envelope sealed for a relay opens only at its recipient and
/// arrives there as from the relay; a tampered or re-labelled one is refused; blocking a
/// contact revokes its key.
#[test]
fn access_keys_are_exchanged_in_session_and_sealed_envelopes_open_only_at_the_recipient() {
    let mut net = Net::new(2, Faults::NONE, 21);
    net.introduce_all();
    let (ua, ub) = (net.user(0), net.user(1));
    net.send_text(0, 1, "hello");
    net.run();
    net.send_text(1, 0, "hi");
    net.run();
    let a_about_b = net.engine(0).contact(&ub).unwrap().unwrap();
    let b_about_a = net.engine(1).contact(&ua).unwrap().unwrap();
    let (given, held) = (a_about_b.access_given.unwrap(), b_about_a.access_key.unwrap());
    assert_eq!(given, held, "Bob holds the key Alice handed him");
    assert_eq!(
        net.engine(0).access_verifiers().unwrap(),
        [crate::sealed_sender::access_verifier(&given)]
    );

    // Bob seals a message for Alice's relay: it carries her key, and opens at Alice only.
    let id = MessageId([0x5e; 16]);
    let content =
        Content { sent_at: T, body: Body::Text(Text { body: "sealed".into(), reply_to: None }) };
    let plaintext = kith_protocol::encode(&content).unwrap();
    let bob = net.engine(1);
    let mut sessions = bob.take_sessions(&ua).unwrap();
    let session = sessions.current.as_mut().unwrap();
    let bytes = bob.seal(session, id, ua, &plaintext).unwrap();
    let sealed = bob.seal_for_relay(&ua, id, &bytes).unwrap();
    assert_eq!(sealed.access, Some(held));
    assert!(!sealed.envelope.ciphertext.windows(32).any(|w| w == ub.0), "the sender is hidden");
    let deposit = sealed.envelope;
    let replay = deposit.clone();

    let alice = net.engine(0);
    let mut tampered = deposit.clone();
    tampered.ciphertext[5] ^= 1;
    let mut relabelled = deposit.clone();
    relabelled.id = MessageId([0x5f; 16]);
    for bad in [tampered, relabelled] {
        let before = alice.store().dump().unwrap();
        alice
            .handle_input(T, Input::SealedEnvelope { envelope: bad, reply: Some(ReplyToken(3)) })
            .unwrap();
        let acks = ack_results(drain(alice));
        assert_eq!(acks, [AckResult::Rejected(RejectReason::DecryptFailed)]);
        assert_eq!(alice.store().dump().unwrap(), before);
    }
    alice
        .handle_input(T, Input::SealedEnvelope { envelope: deposit, reply: Some(ReplyToken(4)) })
        .unwrap();
    let acks = ack_results(drain(alice));
    assert_eq!(acks, [AckResult::Accepted]);
    assert!(alice.message(&id).unwrap().is_some(), "the sealed message arrived");

    // A relay replaying the deposit learns nothing: it is a duplicate, stored nowhere again,
    // and Alice sends nothing (no second receipt, nothing to anyone) because of it.
    let before = alice.store().dump().unwrap();
    alice
        .handle_input(T, Input::SealedEnvelope { envelope: replay, reply: Some(ReplyToken(5)) })
        .unwrap();
    let outputs = drain(alice);
    assert!(
        outputs.iter().all(|o| matches!(o, Output::Reply { reply: Reply::Ack(_), .. })),
        "a replay made Alice send something: {outputs:?}"
    );
    let acks = ack_results(outputs);
    assert_eq!(acks, [AckResult::Duplicate]);
    assert_eq!(alice.store().dump().unwrap(), before);

    // Blocked: Bob's key is revoked (no verifier left for our relays).
    net.command(0, Command::Block { user: ub, blocked: true });
    assert!(net.engine(0).access_verifiers().unwrap().is_empty());
}
