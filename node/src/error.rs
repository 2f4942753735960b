//! The node's errors.

use kith_core::engine::CommandError;
use kith_core::store::StoreError;

use crate::media::MediaFailure;
use crate::profile::ProfileError;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The profile could not be opened.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A home relay's address does not name its peer.
    #[error("relay {0}: the address must end in /p2p/<peer-id>")]
    RelayAddress(libp2p::Multiaddr),
    /// The network stack could not be built.
    #[error(transparent)]
    Build(#[from] crate::behaviour::BuildError),
    /// A listen address could not be listened on.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: libp2p::Multiaddr,
        /// Why.
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    /// A backup could not be made.
    #[error(transparent)]
    Backup(kith_core::store::BackupError),
    /// The relay's store could not be opened.
    #[error(transparent)]
    RelayStore(#[from] crate::relay::RelayStoreError),
    /// The attachment store could not be opened or read.
    #[error(transparent)]
    MediaStore(#[from] crate::media::MediaStoreError),
    /// The metrics endpoint could not be opened.
    #[error("cannot serve metrics on {address}")]
    Metrics {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The attachment protocol is served twice on this swarm.
    #[error(transparent)]
    Protocol(#[from] libp2p_stream::AlreadyRegistered),
    /// The command was refused.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Dialing failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// No contact has that name, and it is not a peer id.
    #[error("no contact named `{0}` (and it is not a peer id)")]
    UnknownContact(String),
    /// No group has that name or id.
    #[error("no group named `{0}`")]
    UnknownGroup(String),
    /// More than one group has that name (others chose them): an id picks one.
    #[error("{} groups are named `{name}`: use an id instead ({})", .groups.len(), .groups.join(", "))]
    AmbiguousGroup {
        /// The name given.
        name: String,
        /// Each group's id prefix and size, e.g. `1a2b3c4d5e6f7a8b (3 members)`.
        groups: Vec<String>,
    },
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// The engine answered a command with a result of another kind than the call expects
    /// (a bug: commands answer as documented).
    #[error("unexpected answer to a command: {0:?}")]
    UnexpectedResult(kith_core::engine::CommandResult),
    /// Waiting took too long.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An attachment could not be sent.
    #[error(transparent)]
    Media(#[from] MediaFailure),
}

/// Why dialing an address failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The swarm refused to dial it (malformed, or no transport for it).
    #[error("cannot dial: {0}")]
    Dial(#[from] libp2p::swarm::DialError),
}
