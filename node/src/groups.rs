//! Group transport: one gossipsub topic per group (the hex of its tag), messages validated by
//! the engine before they are forwarded (gossipsub v1.1 validation and peer scoring), and the
//! members a publication did not reach handed back to the engine for mailbox copies.

use std::collections::HashMap;
use std::time::Duration;

use kith_core::engine::{Input, Publication, ValidationToken, Verdict};
use kith_core::identity::peer_id_of;
use kith_protocol::limits::MAX_ENVELOPE_BYTES;
use kith_protocol::{GroupTag, UserId};
use libp2p::PeerId;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAcceptance, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds,
    TopicScoreParams, ValidationMode,
};

use crate::driver::Driver;

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

/// Gossip messages waiting for their verdict, and what each peer owes for invalid ones.
#[derive(Default)]
pub(crate) struct Validations {
    waiting: HashMap<u64, (gossipsub::MessageId, PeerId)>,
    invalid: HashMap<PeerId, u32>,
}

/// Peers whose invalid messages are counted (the count restarts beyond it).
const MAX_PENALISED_PEERS: usize = 4096;

/// The topic of a group.
pub fn topic(tag: &GroupTag) -> IdentTopic {
    IdentTopic::new(format!("kith/group/{tag}"))
}

/// The gossipsub behaviour: anonymous publishing (the group's sender keys authenticate
/// messages; the topic and envelope say nothing of who is in the group beyond the sender's
/// id), content-addressed message ids, every message validated before it is forwarded.
pub fn behaviour(duplicate_cache: Duration) -> Result<gossipsub::Behaviour, String> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(&blake3::hash(&m.data).as_bytes()[..20])
        })
        .max_transmit_size(MAX_ENVELOPE_BYTES + 1024)
        .duplicate_cache_time(duplicate_cache)
        .build()
        .map_err(|e| e.to_string())?;
    let mut gossip = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, config)?;
    // Members of a group often share an address (an office behind one NAT, tests on
    // loopback): no penalty for that. Invalid messages are what costs.
    let params = PeerScoreParams { ip_colocation_factor_weight: 0.0, ..PeerScoreParams::default() };
    gossip.with_peer_score(params, PeerScoreThresholds::default())?;
    Ok(gossip)
}

/// Scoring for one group's topic. Invalid messages dominate: one costs more than the most a
/// peer can earn (time in the mesh up to +1, first deliveries up to +10), so its publisher
/// drops below zero at once. No penalty for delivering little: a quiet group must not punish
/// its quiet members.
fn topic_params() -> TopicScoreParams {
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

impl Driver {
    /// Joins a group's topic and connects to its members so that a mesh can form.
    pub(crate) fn subscribe_group(&mut self, tag: GroupTag, members: &[UserId]) {
        let topic = topic(&tag);
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        if let Err(e) = gossip.subscribe(&topic) {
            tracing::error!("could not subscribe to a group topic: {e}");
        }
        if let Err(e) = gossip.set_topic_params(topic, topic_params()) {
            tracing::error!("could not set a group topic's scoring: {e}");
        }
        for member in members {
            let Ok(peer) = peer_id_of(member) else { continue };
            if !self.swarm.is_connected(&peer) && self.swarm.dial(peer).is_err() {
                self.lookup(peer);
            }
        }
    }

    pub(crate) fn unsubscribe_group(&mut self, tag: GroupTag) {
        self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic(&tag));
    }

    /// Publishes a group message and tells the engine which members it did not reach.
    pub(crate) fn publish_group(&mut self, publication: Publication) {
        let topic = topic(&publication.tag);
        let hash = topic.hash();
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        let listening: Vec<PeerId> = gossip
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(peer, _)| *peer)
            .collect();
        let published = match gossip.publish(topic, publication.envelope) {
            Ok(_) => true,
            Err(
                gossipsub::PublishError::NoPeersSubscribedToTopic
                | gossipsub::PublishError::AllQueuesFull(_),
            ) => false,
            Err(e) => {
                tracing::warn!("publishing a group message failed: {e}");
                false
            }
        };
        if publication.ephemeral {
            return;
        }
        let unreached = publication
            .members
            .into_iter()
            .filter(|m| !published || peer_id_of(m).map_or(true, |peer| !listening.contains(&peer)))
            .collect();
        self.input(Input::GroupPublished { id: publication.id, unreached });
    }

    /// A gossip message: to the engine, whose verdict comes back after the flush.
    pub(crate) fn on_gossip_event(&mut self, event: gossipsub::Event) {
        if let gossipsub::Event::Message { propagation_source, message_id, message } = event {
            let token = self.token();
            self.validations.waiting.insert(token, (message_id, propagation_source));
            self.input(Input::GroupMessage { bytes: message.data, token: ValidationToken(token) });
        }
    }

    /// Reports the engine's verdict: accepted messages are forwarded, rejected ones penalise
    /// the peer that sent them.
    pub(crate) fn report_validation(&mut self, token: ValidationToken, verdict: Verdict) {
        let Some((id, source)) = self.validations.waiting.remove(&token.0) else { return };
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        let acceptance = match verdict {
            Verdict::Accept => MessageAcceptance::Accept,
            Verdict::Ignore => MessageAcceptance::Ignore,
            Verdict::Reject => {
                if self.validations.invalid.len() >= MAX_PENALISED_PEERS {
                    self.validations.invalid.clear();
                }
                let count = self.validations.invalid.entry(source).or_default();
                *count = count.saturating_add(1);
                gossip.set_application_score(&source, INVALID_APP_PENALTY * f64::from(*count));
                MessageAcceptance::Reject
            }
        };
        gossip.report_message_validation_result(&id, &source, acceptance);
    }
}
