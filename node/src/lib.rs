//! # kith-node
//!
//! The libp2p runtime of Kith: it carries [`kith_core`]'s sans-IO engine over the network.
//!
//! ```text
//!  Node handle ──calls──► driver task ──► Engine (kith-core) ──► sled (one fsync per turn)
//!     ▲  events               │  ▲                 │ outputs (after the flush)
//!     └───────────────────────┘  │                 ▼
//!                             swarm: TCP/QUIC + Noise + Yamux
//!                                    identify, ping, mDNS, Kademlia (/kith/kad/1.0.0),
//!                                    /kith/envelope/1, /kith/prekey/1, /kith/mailbox/1,
//!                                    /kith/media/1, /kith/media/fetch/1 streams,
//!                                    connection limits
//!                             relay fallback + mailbox fetch (mailbox), relay service (relay),
//!                             attachments: send, serve, download, upload (media)
//! ```
//!
//! A contact is found by PeerId alone: a connected or mDNS-discovered peer is used directly,
//! otherwise a Kademlia lookup finds its addresses; its prekey bundle comes from the peer (or,
//! when it is offline, its signed user record in the DHT); the engine runs X3DH and delivers
//! through the durable outbox with retries and backoff. When the peer cannot be reached, the
//! envelope is deposited with its relays and fetched by the peer when it is back; a node
//! started with [`relay::RelayConfig`] in [`NodeConfig::relay_service`] is such a relay.
//!
//! ## What an app uses
//!
//! | item | for |
//! |---|---|
//! | [`Node`] | a running node: commands (send, react, groups, contacts, files), queries (history, contacts, safety numbers), [`Node::subscribe`] |
//! | [`NodeConfig`] | how it runs: profile directory, listen addresses, bootstrap peers, mDNS, home relays, relay service |
//! | [`Events`], [`NodeEvent`] | what happens, in order; a subscriber that falls behind gets [`NodeEvent::Lagged`], never a silent gap |
//! | [`NodeError`], [`ConnectError`], [`BuildError`], [`GossipError`] | why a call failed, with its source |
//! | [`Profile`] | the profile directory's identity and keys, before a node runs |
//! | [`media`] | attachment events, states and failures ([`media::MediaEvent`], [`media::Attachment`]) |
//! | [`relay`] | the relay service's settings ([`relay::RelayConfig`]) and usage |
//! | [`rpc`] | the JSON-RPC control API that `kith daemon` serves, and a client for it |
//! | [`defaults`] | the fixed limits, buffers and timers the node is built with |
//! | [`codec`] | the wire framing of Kith's protocols, for other implementations |
//! | [`kith_core`], [`kith_protocol`], [`Multiaddr`], [`PeerId`] | the types these speak |
//!
//! The feature `test-utils` adds what tests need and apps do not: a digest of the whole store
//! and gossip scores.
//!
//! ## Example: embed a node in an app
//!
//! ```
//! use std::time::Duration;
//! use kith_node::{Node, NodeConfig, NodeEvent};
//! use kith_node::kith_core::engine::Event;
//! use kith_node::kith_core::model::MessageStatus;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
//! // Two nodes on 127.0.0.1 (no mDNS); Bob bootstraps from Alice.
//! let alice = Node::create(NodeConfig::loopback(dirs.0.path())).await?;
//! let mut bob_config = NodeConfig::loopback(dirs.1.path());
//! bob_config.bootstrap = alice.addresses().await?;
//! let bob = Node::create(bob_config).await?;
//!
//! let mut bob_events = bob.subscribe();
//! alice.add_contact(&bob.contact_string(), "bob").await?;
//! let id = alice.send_text(bob.user_id(), "hello Bob").await?;
//! let status = alice.wait_for_status(id, MessageStatus::Delivered, Duration::from_secs(20)).await?;
//! assert_eq!(status, MessageStatus::Delivered);
//! loop {
//!     if let NodeEvent::Engine(Event::Message(m)) = bob_events.recv().await? {
//!         assert_eq!(m.id, id);
//!         break;
//!     }
//! }
//! alice.shutdown().await?;
//! bob.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod addresses;
mod behaviour;
mod call;
mod clock;
pub mod codec;
mod config;
pub mod defaults;
mod delivery;
mod dht;
mod driver;
mod error;
mod events;
mod groups;
mod keyspace;
mod limiter;
mod liveness;
mod mailbox;
pub mod media;
mod node;
mod prekeys;
mod presence;
mod profile;
mod redial;
pub mod relay;
mod reservations;
pub mod rpc;
mod sealed_deposit;
mod storage;
#[cfg(test)]
mod test_support;
mod tokens;
mod turn;
mod upgrades;

pub use behaviour::BuildError;
pub use clock::now_millis;
pub use config::NodeConfig;
pub use driver::Connection;
pub use error::{ConnectError, NodeError};
pub use events::{Events, EventsClosed};
pub use groups::GossipError;
pub use keyring_core;
pub use kith_core;
pub use kith_protocol;
pub use libp2p::{Multiaddr, PeerId};
pub use node::{BackupSecretOwned, Node, SentFile};
pub use profile::{KeyProtection, Passphrase, Profile, ProfileError, ProfileRng};
pub use relay::RelayUsage;
pub use storage::StorageStatus;

/// Raw gossip pieces for tests that play a misbehaving group member (feature `test-utils`).
#[cfg(feature = "test-utils")]
pub mod testing {
    use kith_protocol::GroupTag;
    use libp2p::gossipsub;

    /// A group's gossip topic.
    pub fn gossip_topic(tag: &GroupTag) -> gossipsub::IdentTopic {
        crate::groups::topic(tag)
    }

    /// Gossipsub configured as a Kith node configures it.
    pub fn gossip_behaviour(
        duplicate_cache: std::time::Duration,
    ) -> Result<gossipsub::Behaviour, crate::GossipError> {
        crate::groups::behaviour(duplicate_cache)
    }
}

/// Something that happened on a node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum NodeEvent {
    /// An event of the engine (messages, statuses, typing, presence, contacts).
    Engine(kith_core::engine::Event),
    /// The node listens on a new address.
    Listening(Multiaddr),
    /// A first connection to a peer came up.
    PeerConnected(PeerId),
    /// The last connection to a peer went down.
    PeerDisconnected(PeerId),
    /// A relay refused to store one of our messages (the message stays queued and is retried;
    /// the reason is for the user).
    RelayRefused {
        /// The message.
        id: kith_protocol::MessageId,
        /// The relay.
        relay: PeerId,
        /// Why.
        reason: kith_protocol::mailbox::MailboxRefusal,
    },
    /// Attachment progress and outcomes.
    Media(media::MediaEvent),
    /// The profile's database stopped taking commits (a full disk), or takes them again.
    Storage(StorageStatus),
    /// This subscriber fell behind and lost `missed` events (never sent by the node: an
    /// [`Events`] subscription reports it in place of what it lost). Everything an event
    /// announces is stored: re-read the conversations shown, from the message after
    /// `after_seq` on (all of them if `None`).
    Lagged {
        /// Events lost.
        missed: u64,
        /// The sequence number of the last message event this subscriber received.
        after_seq: Option<u64>,
    },
}

/// A peer id shortened for logs (its last 8 characters), so that logs do not list whom a
/// node talks to in full.
pub(crate) fn short(peer: &PeerId) -> String {
    let full = peer.to_base58();
    full.get(full.len().saturating_sub(8)..).unwrap_or_default().to_owned()
}
