//! The tuning constants of a node, in one place: buffer sizes, limits, timers and rates.
//!
//! What an operator or an app sets lives in [`NodeConfig`](crate::NodeConfig) and
//! [`RelayConfig`](crate::relay::RelayConfig) (whose defaults are the `DEFAULT_*` values of
//! their modules); these are the fixed values the node is built and measured with, listed so
//! that docs, tests and benches can name them.

pub use crate::addresses::{MAX_ADDRESSES_PER_PEER, MAX_PEERS as MAX_ADDRESS_BOOK_PEERS};
pub use crate::behaviour::{
    CONNECTION_EVENT_BUFFER, IDLE_CONNECTION_TIMEOUT, MAX_CONCURRENT_STREAMS, MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER, MAX_DHT_RECORDS, MAX_MEMORY_FRACTION, MAX_PENDING_INCOMING,
    PING_INTERVAL, PING_TIMEOUT, REQUEST_TIMEOUT,
};
pub use crate::clock::STORE_LOCK_WAIT;
pub use crate::config::DEFAULT_RELAY_COPIES;
pub use crate::delivery::{ENVELOPE_RATE, MAX_IN_FLIGHT_PER_PEER};
pub use crate::dht::{
    ADDRESS_SETTLE, FIRST_PUBLICATION, LOOKUP_COOLDOWN, MAX_RECORD_FETCHES, RECORD_REPUBLISH,
    RECORD_RETRY,
};
pub use crate::driver::{GOODBYE_WAIT, MAX_LIVE_CONTACTS, MAX_TURN_WORK};
pub use crate::groups::{
    DEFAULT_GOSSIP_DUPLICATE_CACHE, INVALID_APP_PENALTY, INVALID_MESSAGE_WEIGHT,
};
pub use crate::limiter::MAX_TRACKED_PEERS;
pub use crate::liveness::DEAD_AFTER as DEAD_CONNECTION_AFTER;
pub use crate::mailbox::{
    FETCH_LIMIT, FIRST_KEYSPACE_POLL, MAILBOX_POLL, MAX_NOT_RELAYS, MAX_REMEMBERED_RELAYS,
    PREKEY_REFRESH, RELAY_PREKEY_BATCH, RELAY_PREKEY_LOW_WATER,
};
pub use crate::node::{CALL_QUEUE, EVENT_BUFFER};
pub use crate::prekeys::PREKEY_RATE;
pub use crate::presence::AWAY_AFTER;
pub use crate::redial::{
    FAST_REDIAL, MAX_REDIAL_PEERS, REDIAL_INTERVAL, REDIAL_WINDOW, SLOW_REDIAL_INTERVAL,
};
pub use crate::reservations::{
    FIRST_RETRY as RESERVATION_FIRST_RETRY, MAX_RETRY as RESERVATION_MAX_RETRY,
};
pub use crate::upgrades::CLOSE_AFTER as RELAYED_CLOSE_AFTER;
