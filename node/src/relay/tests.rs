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
    _dir: tempfile::TempDir,
}

fn relay(config: RelayConfig) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let service = RelayService::open(
        &dir.path().join("db"),
        &dir.path().join("blobs"),
        config,
        Instant::now(),
    )
    .unwrap();
    Relay { service, _dir: dir }
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
