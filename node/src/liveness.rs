//! Noticing a dead link in seconds: a connection that has not answered a ping for
//! [`DEAD_AFTER`] is closed, so that requests stop queueing behind a TCP connection
//! retransmitting into a void, and the peer is dialed again afresh (see `redial`).
//!
//! libp2p's ping handler alone is slow to say so: it reports only the second failure in a row,
//! and after the first (a timeout) the next is the new ping stream's negotiation timing out, so a
//! dead link is reported 20–25 s after it went down. By then TCP's retransmission timer has
//! backed off so far that, if the link has healed meanwhile, the old connection may stay silent
//! for another half minute. Counting from the last answered ping instead bounds the detection
//! to [`DEAD_AFTER`] whatever the handler does.
//!
//! Sans-IO: the driver reports connections, answered pings and peers that do not speak ping,
//! and closes what [`Liveness::dead`] returns.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use libp2p::swarm::ConnectionId;
use tokio::time::Instant;

use crate::behaviour::{PING_INTERVAL, PING_TIMEOUT};

/// A connection whose last answered ping (or whose establishment) is older than this is dead:
/// a healthy one answers every [`PING_INTERVAL`] plus its round trip, which
/// [`PING_TIMEOUT`] bounds; one second more absorbs timer jitter.
pub const DEAD_AFTER: Duration =
    Duration::from_secs(PING_INTERVAL.as_secs() + PING_TIMEOUT.as_secs() + 1);

/// When each live connection is judged dead unless it answers a ping first.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    deadlines: HashMap<ConnectionId, Instant>,
    by_deadline: BTreeSet<(Instant, ConnectionId)>,
}

impl Liveness {
    /// A connection is up (it has until `now + DEAD_AFTER` to answer a first ping).
    pub(crate) fn established(&mut self, connection: ConnectionId, now: Instant) {
        self.set(connection, now + DEAD_AFTER);
    }

    /// A ping on `connection` was answered.
    pub(crate) fn answered(&mut self, connection: ConnectionId, now: Instant) {
        if self.deadlines.contains_key(&connection) {
            self.set(connection, now + DEAD_AFTER);
        }
    }

    /// The connection is gone, or its peer does not speak ping (so silence proves nothing).
    pub(crate) fn forget(&mut self, connection: ConnectionId) {
        if let Some(deadline) = self.deadlines.remove(&connection) {
            self.by_deadline.remove(&(deadline, connection));
        }
    }

    /// When [`Liveness::dead`] has something to return.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }

    /// The connections silent too long, forgotten here (the caller closes them).
    pub(crate) fn dead(&mut self, now: Instant) -> Vec<ConnectionId> {
        let mut dead = Vec::new();
        while let Some(&(deadline, connection)) = self.by_deadline.first() {
            if deadline > now {
                break;
            }
            self.by_deadline.pop_first();
            self.deadlines.remove(&connection);
            dead.push(connection);
        }
        dead
    }

    fn set(&mut self, connection: ConnectionId, deadline: Instant) {
        if let Some(old) = self.deadlines.insert(connection, deadline) {
            self.by_deadline.remove(&(old, connection));
        }
        self.by_deadline.insert((deadline, connection));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_silent_for_the_deadline_is_dead_and_an_answering_one_is_not() {
        let mut liveness = Liveness::default();
        let start = Instant::now();
        let (quiet, chatty, plain) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        for c in [quiet, chatty, plain] {
            liveness.established(c, start);
        }
        // A peer without ping is never judged.
        liveness.forget(plain);
        assert_eq!(liveness.poll_timeout(), Some(start + DEAD_AFTER));
        // Pings answered every interval keep `chatty` alive.
        for n in 1..=3 {
            liveness.answered(chatty, start + PING_INTERVAL * n);
        }
        assert!(liveness.dead(start + DEAD_AFTER - Duration::from_millis(1)).is_empty());
        assert_eq!(liveness.dead(start + DEAD_AFTER), vec![quiet]);
        assert!(liveness.dead(start + DEAD_AFTER).is_empty(), "reported once");
        let last_answer = start + PING_INTERVAL * 3;
        assert_eq!(liveness.poll_timeout(), Some(last_answer + DEAD_AFTER));
        assert_eq!(liveness.dead(last_answer + DEAD_AFTER), vec![chatty]);
        assert_eq!(liveness.poll_timeout(), None);
        // An answer on a forgotten connection does not bring it back.
        liveness.answered(quiet, last_answer + DEAD_AFTER);
        assert_eq!(liveness.poll_timeout(), None);
    }

    #[test]
    fn the_deadline_leaves_room_for_a_ping_that_takes_its_whole_timeout() {
        assert!(DEAD_AFTER > PING_INTERVAL + PING_TIMEOUT);
        assert!(DEAD_AFTER <= Duration::from_secs(20), "a dead link is noticed in seconds");
    }
}
