use kith_core::identity::IdentityKeyPair;
use kith_core::prekeys::SignedPreKey;
use kith_core::record::{record_key, sign_record};

use super::*;

const NOW: UnixMillis = 1_700_000_000_000;

fn record(id: &IdentityKeyPair, issued_at: UnixMillis, relays: Vec<Vec<u8>>) -> Vec<u8> {
    let spk = SignedPreKey::generate(id, 1, issued_at, &mut rand::rng()).public();
    kith_protocol::encode(&sign_record(id, spk, relays, issued_at)).unwrap()
}

fn actions(d: &mut Dht<u32>) -> Vec<DhtAction> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

#[tokio::test(start_paused = true)]
async fn our_record_is_published_then_republished_or_retried() {
    let start = Instant::now();
    let mut d = Dht::<u32>::new(start);
    d.handle_timeout(start);
    assert!(actions(&mut d).is_empty(), "not before the DHT had a moment to bootstrap");
    assert_eq!(d.poll_timeout(), start + FIRST_PUBLICATION);
    tokio::time::advance(FIRST_PUBLICATION).await;
    d.handle_timeout(Instant::now());
    assert_eq!(actions(&mut d), vec![DhtAction::Publish]);
    // Not confirmed: retried.
    assert_eq!(d.poll_timeout(), Instant::now() + RECORD_RETRY);
    tokio::time::advance(RECORD_RETRY).await;
    d.handle_timeout(Instant::now());
    assert_eq!(actions(&mut d), vec![DhtAction::Publish]);
    // Confirmed: republished much later.
    d.published(Instant::now());
    assert_eq!(d.poll_timeout(), Instant::now() + RECORD_REPUBLISH);
}

#[tokio::test(start_paused = true)]
async fn lookups_of_one_peer_wait_for_the_cooldown() {
    let mut d = Dht::<u32>::new(Instant::now());
    let peer = PeerId::random();
    d.lookup(peer, Instant::now());
    d.lookup(peer, Instant::now());
    assert_eq!(actions(&mut d), vec![DhtAction::Lookup(peer)]);
    tokio::time::advance(LOOKUP_COOLDOWN).await;
    d.lookup(peer, Instant::now());
    assert_eq!(actions(&mut d), vec![DhtAction::Lookup(peer)]);
}

#[test]
fn a_fetched_record_is_used_only_if_it_verifies() {
    let mut d = Dht::<u32>::new(Instant::now());
    let (alice, mallory) =
        (IdentityKeyPair::generate(&mut rand::rng()), IdentityKeyPair::generate(&mut rand::rng()));
    d.fetch(alice.user_id());
    d.fetch(alice.user_id());
    assert_eq!(actions(&mut d), vec![DhtAction::Fetch(alice.user_id())], "one fetch per user");
    d.fetch_sent(7, alice.user_id());
    // Someone else's record, or garbage, under Alice's key: refused, the fetch goes on.
    assert!(d.found(7, &record(&mallory, NOW, vec![]), NOW).is_none());
    assert!(d.found(7, b"garbage", NOW).is_none());
    let relay = b"/ip4/1.2.3.4/tcp/1".to_vec();
    let relay_addr: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
    let relay_bytes = relay_addr.to_vec();
    let _ = relay;
    let (user, bundle, relays) =
        d.found(7, &record(&alice, NOW, vec![relay_bytes]), NOW).expect("Alice's record");
    assert_eq!(
        (user, bundle.identity.user, relays),
        (alice.user_id(), alice.user_id(), vec![relay_addr])
    );
    // Done: another fetch for Alice may start.
    d.fetch(alice.user_id());
    assert_eq!(actions(&mut d).len(), 1);
    d.fetch_sent(8, alice.user_id());
    d.query_done(&8);
    d.fetch(alice.user_id());
    assert_eq!(actions(&mut d).len(), 1);
}

#[test]
fn only_a_fresh_record_signed_by_its_user_may_be_put() {
    let (alice, mallory) =
        (IdentityKeyPair::generate(&mut rand::rng()), IdentityKeyPair::generate(&mut rand::rng()));
    let key = record_key(&alice.user_id());
    let new = record(&alice, NOW, vec![]);
    let old = record(&alice, NOW - 1000, vec![]);
    assert!(accept_put(&key, &new, None, NOW));
    assert!(accept_put(&key, &new, Some(&old), NOW));
    assert!(
        !accept_put(&key, &old, Some(&new), NOW),
        "an old record is not replayed over a new one"
    );
    assert!(!accept_put(&key, &record(&mallory, NOW, vec![]), None, NOW));
    assert!(!accept_put(b"/kith/user/short", &new, None, NOW));
    assert!(!accept_put(&key, b"garbage", None, NOW));
    // A stored record that no longer decodes is replaced.
    assert!(accept_put(&key, &new, Some(b"garbage"), NOW));
}
