//! Prekey bundle fetches: one per peer that messages wait for, in flight for at most
//! [`ATTEMPT_TIMEOUT_MS`] and retried with the outbox's back-off when it fails.

use std::collections::HashMap;

use kith_protocol::UserId;

use super::outbox::{ATTEMPT_TIMEOUT_MS, backoff};

/// A fetch in progress or waiting to be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fetch {
    attempts: u32,
    /// When to (re)send the request (monotonic).
    due: u64,
}

/// The fetches of every peer we wait for a bundle from.
#[derive(Debug, Default)]
pub(super) struct PreKeyFetches {
    fetches: HashMap<UserId, Fetch>,
}

impl PreKeyFetches {
    /// Whether to send a request for `user`'s bundle now: not if one is in flight or backing
    /// off. A request sent counts as an attempt, in flight until `mono` + the attempt timeout.
    pub(super) fn start(&mut self, user: UserId, mono: u64) -> bool {
        let fetch = self.fetches.entry(user).or_insert(Fetch { attempts: 0, due: mono });
        if fetch.due > mono && fetch.attempts > 0 {
            return false;
        }
        fetch.attempts = fetch.attempts.saturating_add(1);
        fetch.due = mono.saturating_add(ATTEMPT_TIMEOUT_MS);
        true
    }

    /// The fetch for `user` failed: retry after the back-off its attempts have earned.
    pub(super) fn failed(&mut self, user: &UserId, mono: u64, jitter: u32) {
        if let Some(fetch) = self.fetches.get_mut(user) {
            fetch.due = mono.saturating_add(backoff(fetch.attempts, jitter));
        }
    }

    /// Nothing waits for `user`'s bundle any more (it came, or the messages are gone).
    pub(super) fn finish(&mut self, user: &UserId) {
        self.fetches.remove(user);
    }

    /// Whether we are fetching (or will retry fetching) `user`'s bundle.
    pub(super) fn is_fetching(&self, user: &UserId) -> bool {
        self.fetches.contains_key(user)
    }

    /// When the next fetch is due.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.fetches.values().map(|f| f.due).min()
    }

    /// The peers whose fetch is due at `mono`, made ready to [`Self::start`] again.
    pub(super) fn take_due(&mut self, mono: u64) -> Vec<UserId> {
        let mut due = Vec::new();
        for (user, fetch) in &mut self.fetches {
            if fetch.due <= mono {
                fetch.due = mono;
                due.push(*user);
            }
        }
        due.sort();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: UserId = UserId([2; 32]);

    #[test]
    fn one_request_in_flight_until_it_times_out() {
        let mut fetches = PreKeyFetches::default();
        assert!(fetches.start(BOB, 0));
        assert!(!fetches.start(BOB, 1), "in flight");
        assert_eq!(fetches.next_due(), Some(ATTEMPT_TIMEOUT_MS));
        assert!(fetches.take_due(ATTEMPT_TIMEOUT_MS - 1).is_empty());
        assert_eq!(fetches.take_due(ATTEMPT_TIMEOUT_MS), [BOB]);
        assert!(fetches.start(BOB, ATTEMPT_TIMEOUT_MS), "timed out: asked again");
    }

    #[test]
    fn a_failure_backs_off_longer_each_attempt_and_finish_forgets() {
        let mut fetches = PreKeyFetches::default();
        let mut waits = Vec::new();
        let mut now = 0;
        for _ in 0..4 {
            assert!(fetches.start(BOB, now));
            fetches.failed(&BOB, now, 0);
            let due = fetches.next_due().unwrap();
            waits.push(due - now);
            assert!(!fetches.start(BOB, due - 1), "backing off");
            now = due;
            assert_eq!(fetches.take_due(now), [BOB]);
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert!(waits[3] > waits[0], "{waits:?}");
        assert!(fetches.is_fetching(&BOB));
        fetches.finish(&BOB);
        assert!(!fetches.is_fetching(&BOB));
        assert_eq!(fetches.next_due(), None);
    }
}
