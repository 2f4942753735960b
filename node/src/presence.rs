//! The presence a node announces for its user: online while they use it, away after
//! [`AWAY_AFTER`] without a command from them, online again at the next one, offline when the
//! node stops.
//!
//! Sans-IO: the driver reports the user's commands and the time, and sets the status this
//! returns (the engine tells connected contacts, and each contact that connects later).

use std::time::Duration;

use kith_protocol::content::PresenceStatus;
use tokio::time::Instant;

/// Time without a command from the user after which they show as away.
pub const AWAY_AFTER: Duration = Duration::from_secs(5 * 60);

/// The user's activity, as presence.
#[derive(Debug)]
pub(crate) struct Activity {
    last: Instant,
    shown: PresenceStatus,
}

impl Activity {
    /// The node starts: the user is online.
    pub(crate) fn new(now: Instant) -> Self {
        Self { last: now, shown: PresenceStatus::Online }
    }

    /// The user did something: the status to announce if it changes (back to online).
    pub(crate) fn active(&mut self, now: Instant) -> Option<PresenceStatus> {
        self.last = now;
        self.show(PresenceStatus::Online)
    }

    /// When [`Activity::handle_timeout`] may change the status.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        (self.shown == PresenceStatus::Online).then_some(self.last + AWAY_AFTER)
    }

    /// The status to announce if idleness changed it (to away).
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<PresenceStatus> {
        if now.duration_since(self.last) >= AWAY_AFTER {
            self.show(PresenceStatus::Away)
        } else {
            None
        }
    }

    fn show(&mut self, status: PresenceStatus) -> Option<PresenceStatus> {
        (self.shown != status).then(|| {
            self.shown = status;
            status
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_turns_away_and_the_next_command_brings_the_user_back() {
        let start = Instant::now();
        let mut activity = Activity::new(start);
        assert_eq!(activity.poll_timeout(), Some(start + AWAY_AFTER));
        let busy = start + Duration::from_secs(60);
        assert_eq!(activity.active(busy), None, "already online: nothing to announce");
        assert_eq!(activity.handle_timeout(start + AWAY_AFTER), None, "active a minute in");
        assert_eq!(activity.poll_timeout(), Some(busy + AWAY_AFTER));
        assert_eq!(activity.handle_timeout(busy + AWAY_AFTER), Some(PresenceStatus::Away));
        assert_eq!(activity.poll_timeout(), None, "away until the user acts");
        assert_eq!(activity.handle_timeout(busy + 2 * AWAY_AFTER), None, "said once");
        let back = busy + 3 * AWAY_AFTER;
        assert_eq!(activity.active(back), Some(PresenceStatus::Online));
        assert_eq!(activity.poll_timeout(), Some(back + AWAY_AFTER));
    }
}
