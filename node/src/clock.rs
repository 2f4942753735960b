//! The clocks: the one place the node reads the time (the core takes it as an input).
//!
//! Timers run on tokio's monotonic [`Instant`] (which tests can pause and advance); the wall
//! clock only stamps what people see and what is stored. The engine gets both
//! ([`kith_core::engine::Now`]): its monotonic milliseconds count from the wall-clock time at
//! which the node started, so that they start where an engine opened with the wall clock left
//! off, and never go back whatever the wall clock does afterwards.

use std::time::Duration;

use kith_core::engine::Now;
use kith_core::store::StoreError;
use kith_protocol::UnixMillis;
use tokio::time::Instant;

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
#[allow(clippy::disallowed_methods, reason = "this is the single place that reads the clock")]
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The driver's clocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// When the node started, on the monotonic clock.
    epoch: Instant,
    /// The wall-clock time then: the engine's monotonic milliseconds start here.
    base: UnixMillis,
}

impl Clock {
    /// Both clocks, read now.
    pub(crate) fn start() -> Self {
        Self { epoch: Instant::now(), base: now_millis() }
    }

    /// The monotonic time now.
    pub(crate) fn instant(&self) -> Instant {
        Instant::now()
    }

    /// What the engine is told the time is at `at`.
    pub(crate) fn engine(&self, at: Instant) -> Now {
        let elapsed = u64::try_from(at.saturating_duration_since(self.epoch).as_millis());
        Now { wall: now_millis(), mono: self.base.saturating_add(elapsed.unwrap_or(u64::MAX)) }
    }

    /// The instant of the engine's monotonic time `mono`.
    pub(crate) fn deadline(&self, mono: u64) -> Instant {
        self.epoch + Duration::from_millis(mono.saturating_sub(self.base))
    }
}

/// How long opening a database waits for a lock that is being released: sled releases its
/// lock on a background thread some time after the last handle of a database is dropped
/// (spacejam/sled#1234), so a node restarted in the same process finds it held for a moment.
pub const STORE_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Runs `open` until it stops failing with [`StoreError::Locked`], for at most
/// [`STORE_LOCK_WAIT`]: a lock another process keeps is still an error after that.
pub(crate) fn wait_for_lock<T>(
    mut open: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    #[allow(clippy::disallowed_methods, reason = "the clocks are read here only")]
    let deadline = std::time::Instant::now() + STORE_LOCK_WAIT;
    loop {
        match open() {
            Err(StoreError::Locked) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn engine_time_follows_the_monotonic_clock() {
        let clock = Clock::start();
        let start = clock.engine(clock.instant());
        tokio::time::advance(Duration::from_secs(5)).await;
        let later = clock.engine(clock.instant());
        assert_eq!(later.mono - start.mono, 5_000);
        assert_eq!(clock.deadline(later.mono), clock.instant());
    }

    #[test]
    fn a_lock_being_released_is_waited_for_and_one_kept_is_reported() {
        let mut tries = 0;
        let opened = wait_for_lock(|| {
            tries += 1;
            if tries < 3 { Err(StoreError::Locked) } else { Ok(tries) }
        });
        assert_eq!(opened, Ok(3));
        let started = std::time::Instant::now();
        assert_eq!(wait_for_lock(|| Err::<(), _>(StoreError::Locked)), Err(StoreError::Locked));
        assert!(started.elapsed() >= STORE_LOCK_WAIT);
    }
}
