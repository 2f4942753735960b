//! Node settings.

use std::path::PathBuf;

use libp2p::Multiaddr;

/// How a node is set up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The profile directory (identity, keys, messages).
    pub data_dir: PathBuf,
    /// How the profile's database key is unlocked (and kept, for a new profile): a
    /// passphrase, or explicitly none. Unset by default: a profile that needs a passphrase
    /// then refuses to open, and none is created.
    pub protection: crate::profile::KeyProtection,
    /// Addresses to listen on. Empty: listen nowhere (an offline node that only serves its
    /// local API).
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers for the DHT (each with its `/p2p/<peer-id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS. This announces the peer id and the interface
    /// addresses to the local network.
    pub mdns: bool,
    /// Serve the DHT (Kademlia server mode) from the start. Without it, a node serves the DHT
    /// once it listens on a globally routable address (it is then publicly reachable) and is
    /// a DHT client otherwise.
    pub dht_server: bool,
    /// Addresses this node is reachable at that it cannot see for itself (a port forward, a
    /// relay behind a cloud provider's NAT): announced as confirmed. A relay given none
    /// announces its listen addresses.
    pub external_addresses: Vec<Multiaddr>,
    /// Tell our contacts we are online while the node runs (each when it connects) and
    /// offline when it stops, if presence is shared at all
    /// ([`kith_core::engine::Config::share_presence`]). An app that sets presence itself
    /// turns this off.
    pub announce_presence: bool,
    /// Our home relays (each with its `/p2p/<peer-id>`): advertised in our user record and
    /// contact string, given our prekeys to serve, and fetched from on start and reconnect.
    pub relays: Vec<Multiaddr>,
    /// How many relays a message goes to when the recipient cannot be reached directly.
    pub relay_copies: usize,
    /// Run the mailbox service (a relay, `kith relay`), with these operator settings.
    pub relay_service: Option<crate::relay::RelayConfig>,
    /// Where received attachments are saved (`None`: `<data_dir>/downloads`).
    pub downloads_dir: Option<PathBuf>,
    /// The largest attachment sent or accepted; larger ones are refused before any chunk moves.
    pub max_attachment_bytes: u64,
    /// Engine settings (receipts, typing, presence, message requests).
    pub engine: kith_core::engine::Config,
    /// How long group gossip remembers message ids: a copy within it is dropped silently, one
    /// after it is judged a replay (refused, its sender penalised). Keep it well above the
    /// gossip window (a few seconds).
    pub gossip_duplicate_cache: std::time::Duration,
}

/// Default number of relays a message is deposited with: one relay failure loses nothing.
pub const DEFAULT_RELAY_COPIES: usize = 2;

impl NodeConfig {
    /// Defaults for `data_dir`: listen on all interfaces (TCP and QUIC, ports chosen by the
    /// OS), mDNS on, no bootstrap peers, DHT client mode until reachable.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            protection: crate::profile::KeyProtection::Unset,
            listen: default_listen(),
            bootstrap: Vec::new(),
            mdns: true,
            dht_server: false,
            external_addresses: Vec::new(),
            announce_presence: true,
            relays: Vec::new(),
            relay_copies: DEFAULT_RELAY_COPIES,
            relay_service: None,
            downloads_dir: None,
            max_attachment_bytes: crate::media::DEFAULT_MAX_ATTACHMENT_BYTES,
            engine: kith_core::engine::Config::default(),
            gossip_duplicate_cache: crate::groups::DEFAULT_GOSSIP_DUPLICATE_CACHE,
        }
    }

    /// A node that does not touch the network (for local commands).
    pub fn offline(data_dir: impl Into<PathBuf>) -> Self {
        Self { listen: Vec::new(), mdns: false, ..Self::new(data_dir) }
    }

    /// A relay on 127.0.0.1 only (tests, the demo): the mailbox service with default
    /// settings, DHT server mode, no mDNS.
    pub fn loopback_relay(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            relay_service: Some(crate::relay::RelayConfig::default()),
            dht_server: true,
            ..Self::loopback(data_dir)
        }
    }

    /// A node on 127.0.0.1 only, without mDNS (tests, the demo), whose profile's key takes
    /// no passphrase ([`KeyProtection::NoPassphrase`](crate::KeyProtection::NoPassphrase)).
    pub fn loopback(data_dir: impl Into<PathBuf>) -> Self {
        let listen = ["/ip4/127.0.0.1/tcp/0"].iter().filter_map(|a| a.parse().ok()).collect();
        Self {
            listen,
            mdns: false,
            protection: crate::profile::KeyProtection::NoPassphrase,
            ..Self::new(data_dir)
        }
    }
}

impl NodeConfig {
    /// Where received attachments are saved.
    pub fn downloads(&self) -> PathBuf {
        self.downloads_dir.clone().unwrap_or_else(|| self.data_dir.join("downloads"))
    }
}

fn default_listen() -> Vec<Multiaddr> {
    ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}
