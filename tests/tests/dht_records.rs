//! A plain Kademlia peer puts user records into a Kith node's DHT store: a newer signed record
//! replaces an older one, but an older one replayed afterwards does not roll it back, and a
//! record signed by someone else is not stored at all.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::Duration;

use futures::StreamExt;
use kith_node::codec::KAD_PROTOCOL;
use kith_node::kith_core::identity::IdentityKeyPair;
use kith_node::kith_core::prekeys::SignedPreKey;
use kith_node::kith_core::record::{record_key, sign_record};
use kith_node::kith_protocol::prekey::UserRecord;
use kith_node::now_millis;
use kith_tests::TestNode;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, SwarmBuilder, noise, tcp, yamux};

const WAIT: Duration = Duration::from_secs(30);

/// A fresh Kademlia client that knows only the node.
async fn client(node: &TestNode) -> Swarm<kad::Behaviour<MemoryStore>> {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer,
                MemoryStore::new(peer),
                kad::Config::new(KAD_PROTOCOL),
            );
            kad.set_mode(Some(kad::Mode::Client));
            kad
        })
        .unwrap()
        .build();
    for address in node.node.listen_addrs().await.unwrap() {
        swarm.behaviour_mut().add_address(&node.node.peer_id(), address);
    }
    swarm
}

/// Puts `record` under `owner`'s key and waits until the put query ends (the node answers a
/// put whether or not it keeps the record).
async fn put(node: &TestNode, owner: &IdentityKeyPair, record: &UserRecord) {
    let mut swarm = client(node).await;
    let bytes = kith_node::kith_protocol::encode(record).unwrap();
    let record = kad::Record::new(kad::RecordKey::new(&record_key(&owner.user_id())), bytes);
    swarm.behaviour_mut().put_record(record, kad::Quorum::One).unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::PutRecord(result),
                step,
                ..
            }) = swarm.select_next_some().await
                && step.last
            {
                result.unwrap();
                return;
            }
        }
    })
    .await
    .unwrap();
}

/// The record the node holds for `owner`, fetched by a fresh client (whose own store is empty).
async fn get(node: &TestNode, owner: &IdentityKeyPair) -> Option<UserRecord> {
    let mut swarm = client(node).await;
    swarm.behaviour_mut().get_record(kad::RecordKey::new(&record_key(&owner.user_id())));
    let node_peer: PeerId = node.node.peer_id();
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetRecord(result),
                step,
                ..
            }) = swarm.select_next_some().await
            {
                if let Ok(kad::GetRecordOk::FoundRecord(found)) = result {
                    assert_eq!(found.peer, Some(node_peer));
                    return Some(kith_node::kith_protocol::decode(&found.record.value).unwrap());
                }
                if step.last {
                    return None;
                }
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_user_record_replayed_into_the_dht_does_not_replace_a_newer_one() {
    let node = TestNode::start(vec![]).await.unwrap();
    let mut rng = rand::rng();
    let owner = IdentityKeyPair::generate(&mut rng);
    let now = now_millis();
    let spk = SignedPreKey::generate(&owner, 1, now - 60_000, &mut rng).public();
    let old = sign_record(&owner, spk, vec![], now - 60_000);
    let new = sign_record(&owner, spk, vec![b"/ip4/127.0.0.1/tcp/9".to_vec()], now);

    put(&node, &owner, &old).await;
    assert_eq!(get(&node, &owner).await, Some(old.clone()));
    put(&node, &owner, &new).await;
    assert_eq!(get(&node, &owner).await, Some(new.clone()), "a newer record replaces");
    put(&node, &owner, &old).await;
    assert_eq!(get(&node, &owner).await, Some(new), "the old one does not come back");

    // A record signed by someone else, stored under the owner's key, is not kept either.
    let stranger = IdentityKeyPair::generate(&mut rng);
    let victim = IdentityKeyPair::generate(&mut rng);
    let forged = sign_record(&stranger, spk, vec![], now);
    put(&node, &victim, &forged).await;
    assert_eq!(get(&node, &victim).await, None);
    node.node.shutdown().await.unwrap();
}
