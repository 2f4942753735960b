//! # kith-node
//!
//! The runtime that carries [`kith_core`]'s sans-IO engine over the network. This first
//! version owns the profile on disk: the data directory (owner-only), its sled database and
//! the wall clock; the libp2p swarm, discovery and delivery protocols build on it.
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let profile = kith_node::Profile::create(dir.path(), Default::default())?;
//! let id = profile.engine().identity().peer_id();
//! drop(profile);
//! let reopened = kith_node::Profile::open(dir.path(), Default::default())?;
//! assert_eq!(reopened.engine().identity().peer_id(), id);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clock;
mod profile;

pub use kith_core;
pub use kith_protocol;
pub use profile::{Profile, ProfileError, ProfileRng};
