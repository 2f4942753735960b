//! Group transport: one gossipsub topic per group (the hex of its tag), messages validated by
//! the engine before they are forwarded (gossipsub v1.1 validation and peer scoring), and the
//! members a publication did not reach handed back to the engine for mailbox copies.
//!
//! [`GroupTransport`] is the sans-IO part: it remembers which gossip message each verdict is
//! for and what each peer owes for invalid messages, and turns the engine's verdicts into
//! [`Report`]s the driver gives gossipsub.

use std::collections::HashMap;
use std::time::Duration;

use kith_core::engine::{ValidationToken, Verdict};
use kith_core::identity::peer_id_of;
use kith_protocol::limits::MAX_ENVELOPE_BYTES;
use kith_protocol::{GroupTag, UserId};
use libp2p::PeerId;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAcceptance, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds,
    TopicScoreParams, ValidationMode,
};

/// How long gossip remembers the ids of messages it has seen (a copy arriving again within
/// it is dropped silently; after it, the engine judges it a replay).
pub const DEFAULT_GOSSIP_DUPLICATE_CACHE: Duration = Duration::from_secs(120);

/// Penalty weight of one invalid message (squared per count, times the topic weight): two
/// invalid messages put a peer below the graylist threshold.
pub const INVALID_MESSAGE_WEIGHT: f64 = -100.0;

/// Application score per invalid group message a peer sent us. Gossipsub's own penalty does
/// not cover everything (a replay of a message it judged valid within its record window goes
/// unpunished there), so the driver adds its own, through the application-specific score.
pub const INVALID_APP_PENALTY: f64 = -100.0;

/// Gossip messages waiting for the engine's verdict, and what each peer owes for invalid
/// ones.
#[derive(Default)]
pub(crate) struct GroupTransport {
    waiting: HashMap<ValidationToken, (gossipsub::MessageId, PeerId)>,
    invalid: HashMap<PeerId, u32>,
    next: u64,
}

/// What to tell gossipsub about one message.
#[derive(Debug, PartialEq)]
pub(crate) struct Report {
    pub(crate) id: gossipsub::MessageId,
    /// The peer that forwarded it to us.
    pub(crate) source: PeerId,
    pub(crate) acceptance: MessageAcceptance,
    /// The source's new application score, when it changed.
    pub(crate) app_score: Option<f64>,
}

impl GroupTransport {
    /// A gossip message arrived from `source`: the token its verdict will carry.
    pub(crate) fn received(&mut self, id: gossipsub::MessageId, source: PeerId) -> ValidationToken {
        self.next += 1;
        let token = ValidationToken(self.next);
        self.waiting.insert(token, (id, source));
        token
    }

    /// The engine's verdict: accepted messages are forwarded, ignored ones dropped, rejected
    /// ones penalise the peer that sent them (gossipsub's own penalty, and an application
    /// score of [`INVALID_APP_PENALTY`] per invalid message, which covers what gossipsub does
    /// not: a replay it judged valid within its record window).
    pub(crate) fn verdict(&mut self, token: ValidationToken, verdict: Verdict) -> Option<Report> {
        let (id, source) = self.waiting.remove(&token)?;
        let (acceptance, app_score) = match verdict {
            Verdict::Accept => (MessageAcceptance::Accept, None),
            Verdict::Ignore => (MessageAcceptance::Ignore, None),
            Verdict::Reject => {
                if self.invalid.len() >= MAX_PENALISED_PEERS && !self.invalid.contains_key(&source)
                {
                    self.invalid.clear();
                }
                let count = self.invalid.entry(source).or_default();
                *count = count.saturating_add(1);
                (MessageAcceptance::Reject, Some(INVALID_APP_PENALTY * f64::from(*count)))
            }
        };
        Some(Report { id, source, acceptance, app_score })
    }
}

/// The members a publication did not reach: all of them if it was not published, else those
/// not subscribed to the topic among the peers gossip knows (`listening`).
pub(crate) fn unreached(
    members: Vec<UserId>,
    published: bool,
    listening: &[PeerId],
) -> Vec<UserId> {
    members
        .into_iter()
        .filter(|m| !published || peer_id_of(m).map_or(true, |peer| !listening.contains(&peer)))
        .collect()
}

/// Peers whose invalid messages are counted (the count restarts beyond it).
const MAX_PENALISED_PEERS: usize = 4096;

/// The topic of a group.
pub(crate) fn topic(tag: &GroupTag) -> IdentTopic {
    IdentTopic::new(format!("kith/group/{tag}"))
}

/// Why gossipsub could not be set up (libp2p reports these as text only).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// The configuration was refused.
    #[error("invalid gossipsub configuration")]
    Config(#[from] gossipsub::ConfigBuilderError),
    /// The behaviour refused its settings.
    #[error("gossipsub: {0}")]
    Behaviour(&'static str),
    /// Peer scoring refused its parameters.
    #[error("gossipsub peer scoring: {0}")]
    Scoring(String),
}

/// The gossipsub behaviour: anonymous publishing (the group's sender keys authenticate
/// messages; the topic and envelope say nothing of who is in the group beyond the sender's
/// id), content-addressed message ids, every message validated before it is forwarded.
pub(crate) fn behaviour(duplicate_cache: Duration) -> Result<gossipsub::Behaviour, GossipError> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(&blake3::hash(&m.data).as_bytes()[..20])
        })
        .max_transmit_size(MAX_ENVELOPE_BYTES + 1024)
        .duplicate_cache_time(duplicate_cache)
        .build()?;
    let mut gossip = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, config)
        .map_err(GossipError::Behaviour)?;
    // Members of a group often share an address (an office behind one NAT, tests on
    // loopback): no penalty for that. Invalid messages are what costs.
    let params = PeerScoreParams { ip_colocation_factor_weight: 0.0, ..PeerScoreParams::default() };
    gossip.with_peer_score(params, PeerScoreThresholds::default()).map_err(GossipError::Scoring)?;
    Ok(gossip)
}

/// Scoring for one group's topic. Invalid messages dominate: one costs more than the most a
/// peer can earn (time in the mesh up to +1, first deliveries up to +10), so its publisher
/// drops below zero at once. No penalty for delivering little: a quiet group must not punish
/// its quiet members.
pub(crate) fn topic_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.1,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: 0.99,
        ..TopicScoreParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn verdicts_map_to_gossip_and_invalid_messages_cost_more_each_time() {
        let mut t = GroupTransport::default();
        let (a, b) = (peer(), peer());
        let id = |n: u8| gossipsub::MessageId::from(vec![n]);
        let ok = t.received(id(1), a);
        let ignored = t.received(id(2), a);
        let bad = [t.received(id(3), b), t.received(id(4), b)];
        assert_eq!(
            t.verdict(ok, Verdict::Accept),
            Some(Report {
                id: id(1),
                source: a,
                acceptance: MessageAcceptance::Accept,
                app_score: None
            })
        );
        assert_eq!(
            t.verdict(ignored, Verdict::Ignore).unwrap().acceptance,
            MessageAcceptance::Ignore
        );
        assert_eq!(
            t.verdict(bad[0], Verdict::Reject).unwrap().app_score,
            Some(INVALID_APP_PENALTY)
        );
        assert_eq!(
            t.verdict(bad[1], Verdict::Reject).unwrap().app_score,
            Some(2.0 * INVALID_APP_PENALTY)
        );
        // A verdict comes once.
        assert_eq!(t.verdict(ok, Verdict::Accept), None);
    }

    #[test]
    fn penalties_are_counted_for_a_bounded_number_of_peers() {
        let mut t = GroupTransport::default();
        for n in 0..(MAX_PENALISED_PEERS + 10) {
            let token = t.received(gossipsub::MessageId::from(n.to_be_bytes().to_vec()), peer());
            t.verdict(token, Verdict::Reject);
        }
        assert!(t.invalid.len() <= MAX_PENALISED_PEERS);
        assert!(t.waiting.is_empty());
    }

    #[test]
    fn a_publication_reaches_only_subscribed_peers() {
        use kith_core::identity::IdentityKeyPair;
        let users: Vec<UserId> =
            (0..3).map(|_| IdentityKeyPair::generate(&mut rand::rng()).user_id()).collect();
        let listening = vec![peer_id_of(&users[0]).unwrap()];
        assert_eq!(unreached(users.clone(), true, &listening), users[1..].to_vec());
        assert_eq!(unreached(users.clone(), false, &listening), users);
    }
}
