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
    /// The network stack could not start.
    #[error("network: {0}")]
    Network(String),
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
    /// No group has that name or id (or the name is ambiguous).
    #[error("no group named `{0}` (or more than one: use its id)")]
    UnknownGroup(String),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
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
