//! Whether the profile's database takes commits, as the driver sees it at each turn's flush.
//!
//! A flush that fails (a full disk, an IO error) keeps every write pending and every output
//! held: nothing is acknowledged, sent or answered that depends on what is not durable. The
//! node says so once (an event, an error in the log), retries every [`STORAGE_RETRY`] without
//! waiting for other work, logs at most once a minute while it lasts, and says when commits
//! succeed again; the held outputs then leave in that same turn.

use std::time::Duration;

use kith_core::store::StoreError;
use tokio::time::Instant;

use crate::NodeEvent;

/// How often a node whose database refuses commits tries again.
pub(crate) const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// The least time between two log lines about one storage failure.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Whether the profile's database takes commits.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageStatus {
    /// Commits fail (a full disk, an IO error): nothing new is acknowledged, sent or answered
    /// until they succeed again. The node retries every second by itself.
    Failing {
        /// What the database reported.
        error: StoreError,
    },
    /// Commits succeed again; what was held has left.
    Recovered {
        /// How long they had failed.
        after: Duration,
    },
}

struct Failing {
    since: Instant,
    retry_at: Instant,
    log_at: Instant,
    attempts: u64,
}

/// The driver's view of the database.
#[derive(Default)]
pub(crate) struct StorageHealth {
    failing: Option<Failing>,
}

impl StorageHealth {
    /// A flush failed with `error`: the event to emit if commits had succeeded until now.
    pub(crate) fn failed(&mut self, now: Instant, store_error: &StoreError) -> Option<NodeEvent> {
        let error = with_sources(store_error);
        match &mut self.failing {
            None => {
                tracing::error!(
                    "the database refuses commits ({error}): nothing new is acknowledged or sent \
                     until it takes them again; retrying every {STORAGE_RETRY:?}"
                );
                self.failing = Some(Failing {
                    since: now,
                    retry_at: now + STORAGE_RETRY,
                    log_at: now + LOG_EVERY,
                    attempts: 1,
                });
                Some(NodeEvent::Storage(StorageStatus::Failing { error: store_error.clone() }))
            }
            Some(failing) => {
                failing.attempts += 1;
                failing.retry_at = now + STORAGE_RETRY;
                if now >= failing.log_at {
                    failing.log_at = now + LOG_EVERY;
                    tracing::error!(
                        "the database still refuses commits ({error}), {} attempts in {:?}",
                        failing.attempts,
                        now - failing.since
                    );
                }
                None
            }
        }
    }

    /// A flush succeeded: the event to emit if commits had been failing.
    pub(crate) fn flushed(&mut self, now: Instant) -> Option<NodeEvent> {
        let failing = self.failing.take()?;
        let after = now - failing.since;
        tracing::info!("the database takes commits again after {after:?}");
        Some(NodeEvent::Storage(StorageStatus::Recovered { after }))
    }

    /// When to try the flush again, while commits fail.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.failing.as_ref().map(|f| f.retry_at)
    }
}

/// An error and its sources, as one line ("storage backend error: No space left on device").
pub(crate) fn with_sources(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // A wrapper may show its source's text as its own.
        if !line.ends_with(&cause_text) {
            line.push_str(": ");
            line.push_str(&cause_text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use kith_core::store::BackendError;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_told_once_retried_every_second_and_its_end_told_with_its_length() {
        let mut health = StorageHealth::default();
        let full = StoreError::Backend(BackendError::new(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        let start = Instant::now();
        assert!(health.flushed(start).is_none(), "nothing to tell while commits succeed");
        assert_eq!(health.poll_timeout(), None);
        let Some(NodeEvent::Storage(StorageStatus::Failing { error })) =
            health.failed(start, &full)
        else {
            panic!("the first failure is told");
        };
        let reason = with_sources(&error);
        assert_eq!(reason, "storage backend error: no storage space");
        assert_eq!(health.poll_timeout(), Some(start + STORAGE_RETRY));
        tokio::time::advance(STORAGE_RETRY).await;
        assert!(health.failed(Instant::now(), &full).is_none(), "told once");
        assert_eq!(health.poll_timeout(), Some(Instant::now() + STORAGE_RETRY));
        tokio::time::advance(Duration::from_secs(5)).await;
        let Some(NodeEvent::Storage(StorageStatus::Recovered { after })) =
            health.flushed(Instant::now())
        else {
            panic!("the recovery is told");
        };
        assert_eq!(after, Duration::from_secs(6));
        assert_eq!(health.poll_timeout(), None);
    }
}
