//! The libp2p behaviour of a Kith node and the swarm built around it.

use std::time::Duration;

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Swarm, SwarmBuilder, autonat, connection_limits, dcutr, identify, identity, kad, mdns,
    memory_connection_limits, noise, ping, relay, request_response, tcp, yamux,
};

use crate::addresses::AddressBook;

use crate::codec::{
    ENVELOPE_PROTOCOL, EnvelopeCodec, IDENTIFY_VERSION, KAD_PROTOCOL, MAILBOX_PROTOCOL,
    MEDIA_PROTOCOL, MailboxCodec, MediaCodec, PREKEY_PROTOCOL, PreKeyCodec,
};
use crate::config::NodeConfig;

/// Most established connections in total.
pub const MAX_CONNECTIONS: u32 = 512;
/// Most established connections per peer (one each way is plenty).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Most connections being set up (incoming) at once.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// New connections are refused above this share of system memory in use.
pub const MAX_MEMORY_FRACTION: f64 = 0.9;
/// Most records the DHT store keeps (user records are ~400 bytes).
pub const MAX_DHT_RECORDS: usize = 65_536;
/// How long a request-response exchange may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent inbound/outbound substreams per protocol and connection.
pub const MAX_CONCURRENT_STREAMS: usize = 512;
/// Events a connection may queue for the swarm before it waits: room for a full window of
/// in-flight requests from the peer, so that one driver turn (one fsync) can take them all.
pub const CONNECTION_EVENT_BUFFER: usize = 256;
/// How often each connection is pinged: one that answers none for
/// [`DEAD_CONNECTION_AFTER`](crate::defaults::DEAD_CONNECTION_AFTER) is closed, and a peer lost
/// with something queued for it is dialed again every
/// [`REDIAL_INTERVAL`](crate::defaults::REDIAL_INTERVAL).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may take before the connection is judged dead.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections are kept this long (so a chat does not redial for every message).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything a Kith node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Caps on connection counts.
    pub limits: connection_limits::Behaviour,
    /// Refuses connections when memory is short.
    pub memory: memory_connection_limits::Behaviour,
    /// Learns peers' listen addresses and protocols.
    pub identify: identify::Behaviour,
    /// Keeps connections alive and measures round trips.
    pub ping: ping::Behaviour,
    /// LAN discovery (off unless enabled).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// The DHT: peer routing and user records.
    pub kad: kad::Behaviour<MemoryStore>,
    /// `/kith/envelope/1`.
    pub envelope: request_response::Behaviour<EnvelopeCodec>,
    /// `/kith/prekey/1`.
    pub prekey: request_response::Behaviour<PreKeyCodec>,
    /// `/kith/mailbox/1` (every node: relays serve mailboxes, users receive pushes).
    pub mailbox: request_response::Behaviour<MailboxCodec>,
    /// `/kith/media/1`: chunk uploads to relays and their deletion.
    pub media: request_response::Behaviour<MediaCodec>,
    /// Long-lived streams: `/kith/media/fetch/1` (every node serves what it sent, relays their
    /// blob store).
    pub stream: libp2p_stream::Behaviour,
    /// Group topics (see [`crate::groups`]).
    pub gossipsub: libp2p::gossipsub::Behaviour,
    /// Circuit relay v2, client side: reservations on our home relays, and connections to
    /// peers through theirs.
    pub relay_client: relay::client::Behaviour,
    /// Circuit relay v2, relay side (relays only): connections relayed for users behind NAT.
    pub relay: Toggle<relay::Behaviour>,
    /// Hole punching: upgrades a relayed connection to a direct one.
    pub dcutr: dcutr::Behaviour,
    /// Whether our observed addresses are reachable from outside (AutoNAT v2): only
    /// confirmed ones are announced.
    pub autonat: autonat::v2::client::Behaviour,
    /// Tests other nodes' addresses for them (relays only).
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Circuit addresses of peers through their home relays (see [`crate::addresses`]).
    pub addresses: AddressBook,
}

/// Why the swarm could not be built.
/// Why the network stack could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// TCP with Noise could not be set up.
    #[error("could not set up TCP with Noise")]
    Transport(#[from] noise::Error),
    /// The DNS resolver could not be set up.
    #[error("could not set up the DNS resolver")]
    Dns(#[from] std::io::Error),
    /// Group messaging (gossipsub) could not be set up.
    #[error("could not set up group messaging")]
    Gossip(#[from] crate::groups::GossipError),
    /// A protocol behaviour could not be built (mDNS's socket, for one).
    #[error("could not build the network behaviour")]
    Behaviour(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn request_response_config() -> request_response::Config {
    request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS)
}

/// Builds the swarm: TCP and QUIC, Noise, Yamux, and [`Behaviour`].
pub(crate) fn build_swarm(
    keypair: identity::Keypair,
    config: &NodeConfig,
) -> Result<Swarm<Behaviour>, BuildError> {
    let mdns_enabled = config.mdns;
    let dht_server = config.dht_server;
    let circuits = config.relay_service.as_ref().map(|r| r.circuits.libp2p());
    let is_relay = circuits.is_some();
    let gossipsub = crate::groups::behaviour(config.gossip_duplicate_cache)?;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_quic()
        .with_dns()?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_established(Some(MAX_CONNECTIONS))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING));
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            kad_config.set_query_timeout(Duration::from_secs(30));
            // Puts are validated (signature, owner) before they are stored.
            kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
            kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(5 * 60)));
            let store_config =
                MemoryStoreConfig { max_records: MAX_DHT_RECORDS, ..Default::default() };
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                MemoryStore::with_config(peer_id, store_config),
                kad_config,
            );
            // Server mode only when asked or once a direct address of ours is confirmed (the
            // driver decides; Kademlia's own rule would count a relayed address too).
            kad.set_mode(Some(if dht_server { kad::Mode::Server } else { kad::Mode::Client }));
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?)
            } else {
                None
            };
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                memory: memory_connection_limits::Behaviour::with_max_percentage(
                    MAX_MEMORY_FRACTION,
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_VERSION.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(PING_INTERVAL).with_timeout(PING_TIMEOUT),
                ),
                mdns: Toggle::from(mdns),
                kad,
                envelope: request_response::Behaviour::new(
                    [(ENVELOPE_PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response_config(),
                ),
                prekey: request_response::Behaviour::new(
                    [(PREKEY_PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response_config(),
                ),
                mailbox: request_response::Behaviour::new(
                    [(MAILBOX_PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response_config(),
                ),
                media: request_response::Behaviour::new(
                    [(MEDIA_PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response_config(),
                ),
                stream: libp2p_stream::Behaviour::new(),
                gossipsub,
                relay_client,
                relay: Toggle::from(circuits.map(|c| relay::Behaviour::new(peer_id, c))),
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat: autonat::v2::client::Behaviour::default(),
                autonat_server: Toggle::from(
                    is_relay.then(autonat::v2::server::Behaviour::default),
                ),
                addresses: AddressBook::default(),
            })
        })
        .map_err(|e| BuildError::Behaviour(e.into()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_per_connection_event_buffer_size(CONNECTION_EVENT_BUFFER)
        })
        .build();
    Ok(swarm)
}
