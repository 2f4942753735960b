//! The relay service on its own: deposits, quotas, rate limits, fetches, acks and expiry,
//! without sockets (its store on a temporary directory, time given as input).

use kith_protocol::envelope::{EnvelopeKind, RatchetHeader, RatchetMessage};
use kith_protocol::{DhPublicKey, MessageId};

use super::*;
use crate::test_support::{User, user};

fn envelope(n: u8, from: &User, to: &User, ciphertext: usize) -> Envelope {
    Envelope {
        id: MessageId([n; 16]),
        sender: from.id,
        recipient: to.id,
        kind: EnvelopeKind::Ratchet(RatchetMessage {
            header: RatchetHeader {
                ratchet_key: DhPublicKey([9; 32]),
                previous_chain_length: 0,
                counter: u32::from(n),
            },
            ciphertext: vec![n; ciphertext],
        }),
    }
}

const NOW: UnixMillis = 1_700_000_000_000;

struct Relay {
    service: RelayService,
    _store: kith_core::store::Store,
    _dir: tempfile::TempDir,
}

fn relay(config: RelayConfig) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let store = kith_core::store::Store::open(&dir.path().join("db")).unwrap();
    let service = RelayService::open(
        store.side(),
        &dir.path().join("db"),
        &dir.path().join("blobs"),
        config,
        Instant::now(),
    )
    .unwrap();
    Relay { service, _store: store, _dir: dir }
}

fn refusals(results: &[DepositResult]) -> Vec<Option<MailboxRefusal>> {
    results.iter().map(|r| r.refused).collect()
}

fn fetched(response: MailboxResponse) -> Vec<MessageId> {
    match response {
        MailboxResponse::Batch { envelopes, .. } => envelopes.iter().map(|e| e.id).collect(),
        other => panic!("not a batch: {other:?}"),
    }
}

#[test]
fn a_deposit_is_pushed_fetched_once_deduplicated_and_deleted_on_ack() {
    let mut relay = relay(RelayConfig::default());
    let (alice, bob) = (user(), user());
    let now = Instant::now();
    let deposit = vec![envelope(1, &alice, &bob, 100), envelope(2, &alice, &bob, 100)];
    let (results, pushes) = relay.service.deposit(alice.peer, deposit.clone(), NOW, now);
    assert_eq!(refusals(&results), [None, None]);
    assert_eq!(pushes.len(), 1, "one push for the recipient, with both");
    assert_eq!(pushes[0].envelopes.len(), 2);
    // The same envelopes again: held already, accepted, not pushed or stored twice.
    let (results, pushes) = relay.service.deposit(alice.peer, deposit, NOW, now);
    assert_eq!(refusals(&results), [None, None]);
    assert!(pushes.is_empty());
    assert_eq!(relay.service.stored().0, 2);

    let ids = fetched(relay.service.fetch(&bob.peer, &bob.id, 64, NOW));
    assert_eq!(ids, [MessageId([1; 16]), MessageId([2; 16])]);
    // Only the recipient fetches or acks its mailbox.
    assert_eq!(
        relay.service.fetch(&alice.peer, &bob.id, 64, NOW),
        MailboxResponse::Refused(MailboxRefusal::NotRecipient)
    );
    assert_eq!(
        relay.service.ack(&alice.peer, &bob.id, &ids),
        MailboxResponse::Refused(MailboxRefusal::NotRecipient)
    );
    assert_eq!(relay.service.ack(&bob.peer, &bob.id, &ids), MailboxResponse::Acked { removed: 2 });
    assert!(fetched(relay.service.fetch(&bob.peer, &bob.id, 64, NOW)).is_empty());
    assert_eq!(relay.service.stored().0, 0);
}

#[test]
fn quotas_size_and_rate_are_refused_with_their_reason_and_store_nothing() {
    let mut relay = relay(RelayConfig {
        max_messages_per_recipient: 2,
        max_envelope_bytes: 1024,
        sender_rate: 0.001,
        sender_burst: 4.0,
        ..RelayConfig::default()
    });
    let (alice, bob, carol) = (user(), user(), user());
    let now = Instant::now();
    let deposit = vec![
        envelope(1, &alice, &bob, 100),
        envelope(2, &alice, &bob, 100),
        envelope(3, &alice, &bob, 100),
        envelope(4, &alice, &carol, 4096),
        envelope(5, &alice, &carol, 100),
        envelope(6, &alice, &carol, 100),
    ];
    let (results, _) = relay.service.deposit(alice.peer, deposit, NOW, now);
    assert_eq!(
        refusals(&results),
        [
            None,
            None,
            Some(MailboxRefusal::QuotaExceeded),
            Some(MailboxRefusal::TooLarge),
            None,
            Some(MailboxRefusal::RateLimited),
        ]
    );
    assert_eq!(relay.service.stored().0, 3);
    let metrics = relay.service.metrics.render();
    for reason in ["quota_exceeded", "too_large", "rate_limited"] {
        assert!(metrics.contains(&format!("reason=\"{reason}\"}} 1")), "{reason}:\n{metrics}");
    }
    // Another sender has its own bucket.
    let (results, _) =
        relay.service.deposit(bob.peer, vec![envelope(7, &bob, &carol, 100)], NOW, now);
    assert_eq!(refusals(&results), [None]);
}

#[test]
fn expired_envelopes_are_not_fetched_and_are_purged_when_due() {
    let mut relay = relay(RelayConfig {
        ttl: Duration::from_secs(10),
        purge_interval: Duration::from_secs(60),
        ..RelayConfig::default()
    });
    let (alice, bob) = (user(), user());
    let start = Instant::now();
    let (results, _) =
        relay.service.deposit(alice.peer, vec![envelope(1, &alice, &bob, 100)], NOW, start);
    assert_eq!(refusals(&results), [None]);
    let later = NOW + 11_000;
    assert!(fetched(relay.service.fetch(&bob.peer, &bob.id, 64, later)).is_empty());
    // The first purge is due at once; the next only after the interval.
    relay.service.maintain(later, start);
    assert_eq!(relay.service.stored().0, 0);
    assert_eq!(relay.service.next_deadline(), start + Duration::from_secs(60));
    let (results, _) =
        relay.service.deposit(alice.peer, vec![envelope(2, &alice, &bob, 100)], NOW, start);
    assert_eq!(refusals(&results), [None]);
    relay.service.maintain(later, start + Duration::from_secs(59));
    assert_eq!(relay.service.stored().0, 1, "not due yet");
    relay.service.maintain(later, start + Duration::from_secs(60));
    assert_eq!(relay.service.stored().0, 0);
}

/// A node that starts twice dials its contacts through their relays four times over: the
/// relay lets all of it through (libp2p's defaults refused a peer after 30 attempts, then
/// allowed one every 2 minutes), and still stops a peer that keeps going.
#[test]
fn a_node_restarting_may_dial_all_its_contacts_through_the_relay_twice_over() {
    let config = CircuitLimits::default().libp2p();
    let peer = PeerId::random();
    let address: libp2p::Multiaddr = "/ip4/192.0.2.1/tcp/4001".parse().unwrap();
    let now = std::time::Instant::now();
    let mut limiters = config.circuit_src_rate_limiters;
    let mut allowed =
        |n: u32| (0..n).all(|_| limiters.iter_mut().all(|l| l.try_next(peer, &address, now)));
    let attempts = u32::try_from(crate::defaults::MAX_LIVE_CONTACTS * 4).unwrap();
    assert!(allowed(attempts), "two starts' dials are allowed");
    assert!(!allowed(1), "a peer that keeps dialing is stopped");
    // Another peer is not held back by the first.
    let other = PeerId::random();
    assert!(limiters.iter_mut().all(|l| l.try_next(other, &address, now)));
}

/// A relay's mailboxes through power cuts and a full disk, its store on a disk that loses every
/// write not flushed when the power goes (`CrashableBackend`): a deposit the relay
/// acknowledged (its answer leaves only after the flush) is held after any cut until an ack of
/// its recipient is durable; a durable ack never comes back; nothing is fetched that was never
/// deposited; and the usage the quotas count is what the store holds. While the disk is full
/// every flush fails, so nothing is acknowledged, and the senders' retries are taken once
/// there is room again.
#[test]
fn power_cuts_and_a_full_disk_never_lose_an_acknowledged_deposit() {
    use std::collections::{BTreeMap, BTreeSet};

    use kith_core::store::Store;
    use kith_core::testing::CrashableBackend;

    let dir = tempfile::tempdir().unwrap();
    let disk = CrashableBackend::default();
    let open = || {
        let store = Store::new(Box::new(disk.clone()));
        let blobs = dir.path().join("blobs");
        RelayService::open(store.side(), dir.path(), &blobs, RelayConfig::default(), Instant::now())
            .unwrap()
    };
    let mut relay = open();
    let (alice, bob, carol) = (user(), user(), user());
    let recipients = [&bob, &carol];
    // A xorshift: reproducible, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rng = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n).unwrap_or_default()
    };
    let mut acked: BTreeMap<MessageId, usize> = BTreeMap::new();
    let mut unanswered: BTreeMap<MessageId, Envelope> = BTreeMap::new();
    let mut deposited: BTreeSet<MessageId> = BTreeSet::new();
    let mut gone: BTreeSet<MessageId> = BTreeSet::new();
    // Acks whose flush failed: their removals are still pending, durable at the next flush
    // that succeeds (unless the power goes first).
    let mut removing: BTreeSet<MessageId> = BTreeSet::new();
    let (mut cuts, mut failed, mut full, mut next) = (0, 0, false, 0u64);
    let check = |relay: &mut RelayService,
                 acked: &BTreeMap<MessageId, usize>,
                 deposited: &BTreeSet<MessageId>,
                 gone: &BTreeSet<MessageId>| {
        let mut held = BTreeSet::new();
        for (r, recipient) in recipients.iter().enumerate() {
            let (mail, _) = relay.store.fetch(&recipient.id, usize::MAX, usize::MAX, 0).unwrap();
            let ids: Vec<MessageId> = mail.iter().map(|m| m.id).collect();
            for id in &ids {
                assert!(deposited.contains(id), "fetched {id}, never deposited");
                assert!(!gone.contains(id), "{id} came back after a durable ack");
            }
            for (id, _) in acked.iter().filter(|(_, to)| **to == r) {
                assert!(ids.contains(id), "acknowledged deposit {id} lost");
            }
            held.extend(ids);
        }
        assert_eq!(relay.stored().0, held.len() as u64, "usage counts what is held");
    };
    for _ in 0..3_000 {
        match rng(100) {
            // A sender deposits a new envelope, or retries one it got no answer for.
            0..55 => {
                let envelope = match unanswered.keys().next().copied().filter(|_| rng(2) == 0) {
                    Some(id) => unanswered.remove(&id).unwrap(),
                    None => {
                        next += 1;
                        let to = recipients[rng(2)];
                        let mut e = envelope(1, &alice, to, 200);
                        e.id = MessageId((u128::from(next) << 8).to_be_bytes());
                        e
                    }
                };
                deposited.insert(envelope.id);
                // A retry after its recipient's ack (not yet durable) is a deposit anew.
                removing.remove(&envelope.id);
                let (results, _) =
                    relay.deposit(alice.peer, vec![envelope.clone()], NOW, Instant::now());
                assert_eq!(refusals(&results), [None]);
                if relay.flush().is_ok() {
                    let to = recipients.iter().position(|r| r.id == envelope.recipient).unwrap();
                    acked.insert(envelope.id, to);
                    for id in std::mem::take(&mut removing) {
                        acked.remove(&id);
                        unanswered.remove(&id);
                        gone.insert(id);
                    }
                } else {
                    failed += 1;
                    unanswered.insert(envelope.id, envelope);
                }
            }
            // A recipient fetches and acks what it got.
            55..80 => {
                let recipient = recipients[rng(2)];
                let ids = fetched(relay.fetch(&recipient.peer, &recipient.id, 16, NOW));
                relay.ack(&recipient.peer, &recipient.id, &ids);
                removing.extend(ids);
                if relay.flush().is_ok() {
                    for id in std::mem::take(&mut removing) {
                        acked.remove(&id);
                        unanswered.remove(&id);
                        gone.insert(id);
                    }
                } else {
                    failed += 1;
                }
            }
            80..88 => {
                full = !full;
                disk.set_full(full);
            }
            _ => {
                disk.crash();
                removing.clear();
                relay = open();
                cuts += 1;
                check(&mut relay, &acked, &deposited, &gone);
            }
        }
    }
    disk.set_full(false);
    for (_, envelope) in std::mem::take(&mut unanswered) {
        let (results, _) = relay.deposit(alice.peer, vec![envelope.clone()], NOW, Instant::now());
        assert_eq!(refusals(&results), [None]);
        relay.flush().unwrap();
        let to = recipients.iter().position(|r| r.id == envelope.recipient).unwrap();
        acked.insert(envelope.id, to);
    }
    disk.crash();
    relay = open();
    check(&mut relay, &acked, &deposited, &gone);
    assert!(cuts > 100 && failed > 50, "{cuts} cuts, {failed} failed flushes");
}

/// Issue 20: a relay stores and serves PQXDH prekeys only. It checks every KEM prekey's
/// signature and kind, hands each one-time key (classical or KEM) out once, then serves the
/// last-resort KEM key; a bundle it serves verifies for the user.
#[test]
fn a_relay_serves_pqxdh_bundles_and_refuses_forged_kem_prekeys() {
    use kith_core::identity::IdentityKeyPair;
    use kith_core::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey};
    use kith_protocol::prekey::KemPreKeyKind;

    let mut r = relay(RelayConfig::default());
    let mut rng = rand::rng();
    let bob = IdentityKeyPair::generate(&mut rng);
    let peer = bob.libp2p_keypair().public().to_peer_id();
    let kem = |id, kind| KemPreKey::generate(&bob, id, kind, NOW, &mut rand::rng()).public();
    let upload = PreKeyUpload {
        identity: bob.binding(),
        signed_prekey: SignedPreKey::generate(&bob, 1, NOW, &mut rng).public(),
        kem_last_resort: kem(1, KemPreKeyKind::LastResort),
        one_time_prekeys: vec![OneTimePreKey::generate(1, &mut rng).public()],
        kem_one_time_prekeys: vec![kem(2, KemPreKeyKind::OneTime), kem(3, KemPreKeyKind::OneTime)],
    };
    let start = Instant::now();
    // Forgeries: a one-time KEM key whose signature was changed, one uploaded as another
    // kind than it was signed as, a last-resort key that is a one-time one.
    let mut forged = upload.clone();
    forged.kem_one_time_prekeys[1].key.0[0] ^= 1;
    let mut relabelled = upload.clone();
    relabelled.kem_one_time_prekeys[0].kind = KemPreKeyKind::LastResort;
    let mut wrong_kind = upload.clone();
    wrong_kind.kem_last_resort = kem(4, KemPreKeyKind::OneTime);
    for (i, bad) in [forged, relabelled, wrong_kind].into_iter().enumerate() {
        let instant = start + Duration::from_secs(60 * (i as u64 + 1));
        assert_eq!(
            r.service.upload_prekeys(&peer, bad, NOW, instant),
            PreKeyResponse::Refused(PreKeyRefusal::Unauthorized)
        );
    }
    assert_eq!(r.service.bundle(&bob.user_id()), PreKeyResponse::NotFound, "nothing stored");
    // Someone else uploading Bob's genuine keys.
    let mallory = user();
    assert_eq!(
        r.service.upload_prekeys(
            &mallory.peer,
            upload.clone(),
            NOW,
            start + Duration::from_secs(300)
        ),
        PreKeyResponse::Refused(PreKeyRefusal::Unauthorized)
    );
    assert_eq!(
        r.service.upload_prekeys(&peer, upload.clone(), NOW, start + Duration::from_secs(400)),
        PreKeyResponse::Uploaded { one_time_prekeys: 1 }
    );
    let served: Vec<_> = (0..4)
        .map(|_| match r.service.bundle(&bob.user_id()) {
            PreKeyResponse::Bundle(b) => {
                verify_bundle(&b, &bob.user_id(), NOW).expect("verifies");
                (b.one_time_prekey.map(|k| k.id), b.kem_prekey.id, b.kem_prekey.kind)
            }
            other => panic!("not a bundle: {other:?}"),
        })
        .collect();
    assert_eq!(
        served,
        vec![
            (Some(1), 2, KemPreKeyKind::OneTime),
            (None, 3, KemPreKeyKind::OneTime),
            (None, 1, KemPreKeyKind::LastResort),
            (None, 1, KemPreKeyKind::LastResort),
        ]
    );
}

/// A sealed envelope for `to` (its outer layer is opaque to the relay: random bytes will do).
fn sealed(n: u8, to: &User, access: Option<kith_protocol::mailbox::AccessKey>) -> SealedDeposit {
    SealedDeposit {
        access,
        envelope: SealedEnvelope {
            id: MessageId([n; 16]),
            recipient: to.id,
            ephemeral: DhPublicKey([n; 32]),
            ciphertext: vec![n; 64],
        },
    }
}

/// Sealed sender at the relay: the recipient registers its contacts' access keys (only it
/// may); a deposit with a registered key is stored and pushed, one with any other key is
/// refused, and keyless ones (strangers) pass only within the recipient's stranger budget.
/// Plain and sealed mail come back in separate batches, oldest first.
#[test]
fn sealed_deposits_need_a_registered_access_key_or_the_stranger_budget() {
    use kith_core::sealed_sender::{access_verifier, new_access_key};
    use kith_protocol::mailbox::AccessKey;

    let mut relay = relay(RelayConfig { stranger_burst: 2.0, ..Default::default() });
    let (alice, bob) = (user(), user());
    let now = Instant::now();
    let mut rng = rand::rng();
    let key = new_access_key(&mut rng);
    let verifier = access_verifier(&key);

    // Only Bob sets his verifiers.
    assert_eq!(
        relay.service.set_access(&alice.peer, &bob.id, &[verifier]),
        MailboxResponse::Refused(MailboxRefusal::NotRecipient)
    );
    assert_eq!(
        relay.service.set_access(&bob.peer, &bob.id, &[verifier, verifier]),
        MailboxResponse::AccessSet { verifiers: 1 }
    );

    // A plain envelope first, then sealed ones.
    let (results, _) =
        relay.service.deposit(alice.peer, vec![envelope(1, &alice, &bob, 32)], NOW, now);
    assert_eq!(refusals(&results), [None]);
    let wrong = AccessKey([7; 32]);
    let deposits = vec![
        sealed(2, &bob, Some(key)),
        sealed(3, &bob, Some(wrong)),
        sealed(4, &bob, None),
        sealed(5, &bob, None),
        sealed(6, &bob, None),
    ];
    let (results, pushes) = relay.service.sealed_deposit(deposits, NOW, now);
    assert_eq!(
        refusals(&results),
        [None, Some(MailboxRefusal::AccessDenied), None, None, Some(MailboxRefusal::StrangerLimit)]
    );
    assert_eq!(pushes.len(), 1);
    let pushed: Vec<_> = pushes[0].envelopes.iter().map(|e| e.id.0[0]).collect();
    assert_eq!(pushed, [2, 4, 5]);
    assert_eq!(relay.service.stored().0, 4);

    // The stranger budget is the recipient's, whoever deposits: still spent for Bob.
    let (results, _) = relay.service.sealed_deposit(vec![sealed(7, &bob, None)], NOW, now);
    assert_eq!(refusals(&results), [Some(MailboxRefusal::StrangerLimit)]);
    // A contact's key is not limited by the stranger budget.
    let (results, _) = relay.service.sealed_deposit(vec![sealed(8, &bob, Some(key))], NOW, now);
    assert_eq!(refusals(&results), [None]);

    // Bob fetches: the plain batch first, then the sealed one.
    assert_eq!(fetched(relay.service.fetch(&bob.peer, &bob.id, 64, NOW)), [MessageId([1; 16])]);
    relay.service.ack(&bob.peer, &bob.id, &[MessageId([1; 16])]);
    match relay.service.fetch(&bob.peer, &bob.id, 64, NOW) {
        MailboxResponse::SealedBatch { envelopes, remaining } => {
            let ids: Vec<_> = envelopes.iter().map(|e| e.id.0[0]).collect();
            assert_eq!(ids, [2, 4, 5, 8]);
            assert_eq!(remaining, 0);
            assert_eq!(envelopes[0], sealed(2, &bob, None).envelope, "stored as deposited");
        }
        other => panic!("not a sealed batch: {other:?}"),
    }

    // Revoked: with its verifier gone (another contact's remains), the key is refused.
    let other = access_verifier(&new_access_key(&mut rng));
    relay.service.set_access(&bob.peer, &bob.id, &[other]);
    let (results, _) = relay.service.sealed_deposit(vec![sealed(9, &bob, Some(key))], NOW, now);
    assert_eq!(refusals(&results), [Some(MailboxRefusal::AccessDenied)]);
}

/// Access registrations are bounded like prekey users: identities are free to make.
#[test]
fn access_registrations_are_bounded_by_the_users_a_relay_serves() {
    let mut relay = relay(RelayConfig { max_prekey_users: 1, ..Default::default() });
    let (alice, bob) = (user(), user());
    let verifier = AccessVerifier([1; 32]);
    assert_eq!(
        relay.service.set_access(&alice.peer, &alice.id, &[verifier]),
        MailboxResponse::AccessSet { verifiers: 1 }
    );
    assert_eq!(
        relay.service.set_access(&bob.peer, &bob.id, &[verifier]),
        MailboxResponse::Refused(MailboxRefusal::QuotaExceeded)
    );
    // A registered recipient may still replace its own.
    assert_eq!(
        relay.service.set_access(&alice.peer, &alice.id, &[]),
        MailboxResponse::AccessSet { verifiers: 0 }
    );
}
