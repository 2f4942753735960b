use kith_core::identity::IdentityKeyPair;
use kith_core::prekeys::SignedPreKey;
use kith_core::record::{record_key, sign_record, sign_record_v2};
use kith_protocol::prekey::DeviceAddresses;

use super::*;

const NOW: UnixMillis = 1_700_000_000_000;

/// A version-1 record (what older nodes publish).
fn record(id: &IdentityKeyPair, issued_at: UnixMillis, relays: Vec<Vec<u8>>) -> Vec<u8> {
    let spk = SignedPreKey::generate(id, 1, issued_at, &mut rand::rng()).public();
    kith_protocol::encode(&sign_record(id, spk, relays, issued_at)).unwrap()
}

/// A version-2 record with one device at `addresses`.
fn record_v2(id: &IdentityKeyPair, issued_at: UnixMillis, addresses: &[Multiaddr]) -> Vec<u8> {
    let spk = SignedPreKey::generate(id, 1, issued_at, &mut rand::rng()).public();
    let peer = id.libp2p_keypair().public().to_peer_id();
    let device = DeviceAddresses {
        peer: serde_bytes::ByteBuf::from(peer.to_bytes()),
        direct: addresses.iter().map(|a| serde_bytes::ByteBuf::from(a.to_vec())).collect(),
        circuits: Vec::new(),
    };
    kith_protocol::encode(&sign_record_v2(id, spk, vec![], vec![device], issued_at)).unwrap()
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
    let relay_addr: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
    let found =
        d.found(7, &record(&alice, NOW, vec![relay_addr.to_vec()]), NOW).expect("Alice's record");
    assert_eq!((found.user, found.relays), (alice.user_id(), vec![relay_addr]));
    assert!(found.devices.is_empty(), "a version-1 record names no device");
    assert!(found.bundle.is_none(), "a classical record starts no session");
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
    // Versions mix: only the issue time counts.
    let newer_v2 = record_v2(&alice, NOW + 1000, &[]);
    assert!(accept_put(&key, &newer_v2, Some(&new), NOW));
    assert!(!accept_put(&key, &new, Some(&newer_v2), NOW));
    assert!(!accept_put(&key, &record_v2(&mallory, NOW, &[]), None, NOW));
}

#[test]
fn a_version_2_record_gives_where_the_users_device_can_be_dialed() {
    let alice = IdentityKeyPair::generate(&mut rand::rng());
    let mut d = Dht::<u32>::new(Instant::now());
    d.fetch(alice.user_id());
    d.fetch_sent(1, alice.user_id());
    let address: Multiaddr = "/ip4/198.51.100.4/tcp/4001".parse().unwrap();
    let found = d.found(1, &record_v2(&alice, NOW, std::slice::from_ref(&address)), NOW).unwrap();
    let peer = alice.libp2p_keypair().public().to_peer_id();
    assert_eq!(found.devices, vec![(peer, vec![address])]);
}

#[tokio::test(start_paused = true)]
async fn a_change_of_our_addresses_is_published_soon_and_once() {
    let start = Instant::now();
    let mut d = Dht::<u32>::new(start);
    d.published(start);
    assert_eq!(d.poll_timeout(), start + RECORD_REPUBLISH);
    d.addresses_changed(start);
    d.addresses_changed(start + Duration::from_millis(500));
    assert_eq!(d.poll_timeout(), start + ADDRESS_SETTLE, "the first change sets the time");
    d.handle_timeout(start + ADDRESS_SETTLE);
    assert_eq!(actions(&mut d), vec![DhtAction::Publish]);
}
