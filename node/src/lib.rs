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

mod behaviour;
mod call;
pub mod clock;
pub mod codec;
pub mod config;
mod delivery;
mod dht;
mod driver;
mod error;
pub mod groups;
mod limiter;
mod mailbox;
pub mod media;
mod node;
mod prekeys;
mod profile;
mod reachability;
pub mod relay;
pub mod rpc;
mod tokens;

pub use behaviour::{
    BuildError, CONNECTION_EVENT_BUFFER, IDLE_CONNECTION_TIMEOUT, MAX_CONCURRENT_STREAMS,
    MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER, MAX_DHT_RECORDS, MAX_MEMORY_FRACTION,
    MAX_PENDING_INCOMING, REQUEST_TIMEOUT,
};
pub use config::{DEFAULT_RELAY_COPIES, NodeConfig};
pub use delivery::{ENVELOPE_RATE, MAX_IN_FLIGHT_PER_PEER};
pub use dht::{
    FIRST_PUBLICATION, LOOKUP_COOLDOWN, MAX_RECORD_FETCHES, RECORD_REPUBLISH, RECORD_RETRY,
};
pub use driver::MAX_TURN_WORK;
pub use error::{ConnectError, NodeError};
pub use kith_core;
pub use kith_protocol;
pub use libp2p;
pub use limiter::{MAX_TRACKED_PEERS, RateLimiter};
pub use mailbox::{
    FETCH_LIMIT, FIRST_KEYSPACE_POLL, MAILBOX_POLL, MAX_NOT_RELAYS, MAX_REMEMBERED_RELAYS,
    PREKEY_REFRESH, RELAY_PREKEY_BATCH, RELAY_PREKEY_LOW_WATER,
};
pub use node::{CALL_QUEUE, EVENT_BUFFER, Node, SentFile};
pub use prekeys::PREKEY_RATE;
pub use profile::{Profile, ProfileError, ProfileRng};
pub use relay::RelayUsage;

/// Something that happened on a node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum NodeEvent {
    /// An event of the engine (messages, statuses, typing, presence, contacts).
    Engine(kith_core::engine::Event),
    /// The node listens on a new address.
    Listening(libp2p::Multiaddr),
    /// A first connection to a peer came up.
    PeerConnected(libp2p::PeerId),
    /// The last connection to a peer went down.
    PeerDisconnected(libp2p::PeerId),
    /// A relay refused to store one of our messages (the message stays queued and is retried;
    /// the reason is for the user).
    RelayRefused {
        /// The message.
        id: kith_protocol::MessageId,
        /// The relay.
        relay: libp2p::PeerId,
        /// Why.
        reason: kith_protocol::mailbox::MailboxRefusal,
    },
    /// Attachment progress and outcomes.
    Media(media::MediaEvent),
}

/// A peer id shortened for logs (its last 8 characters), so that logs do not list whom a
/// node talks to in full.
pub(crate) fn short(peer: &libp2p::PeerId) -> String {
    let full = peer.to_base58();
    full.get(full.len().saturating_sub(8)..).unwrap_or_default().to_owned()
}
