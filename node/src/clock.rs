//! The wall clock, the one place Kith reads the time (the core takes it as an input).

use kith_protocol::UnixMillis;

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
#[allow(clippy::disallowed_methods, reason = "this is the single place that reads the clock")]
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
