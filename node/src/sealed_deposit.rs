//! Sealed deposits over a throw-away identity (sealed sender): each batch of sealed envelopes
//! for one relay goes over a fresh swarm with a new ed25519 key, so the relay's connection
//! names a PeerId used once and never the sender's. The relay still sees the connection's IP
//! address and port and its timing.

use std::time::Duration;

use futures::StreamExt;
use kith_protocol::mailbox::{MailboxRequest, MailboxResponse, SealedDeposit};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, SwarmBuilder, noise, request_response, tcp, yamux};

use crate::codec::{MAILBOX_PROTOCOL, MailboxCodec};

/// How long one sealed deposit may take, dial to answer.
pub(crate) const SEALED_DEPOSIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Deposits `deposits` with `relay` at `address` over a new identity; the relay's answer, or
/// `None` if it could not be reached or did not answer in time.
pub(crate) async fn deposit(
    relay: PeerId,
    address: Multiaddr,
    deposits: Vec<SealedDeposit>,
) -> Option<MailboxResponse> {
    tokio::time::timeout(SEALED_DEPOSIT_TIMEOUT, deposit_inner(relay, address, deposits))
        .await
        .ok()
        .flatten()
}

async fn deposit_inner(
    relay: PeerId,
    address: Multiaddr,
    deposits: Vec<SealedDeposit>,
) -> Option<MailboxResponse> {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .ok()?
        .with_quic()
        .with_dns()
        .ok()?
        .with_behaviour(|_| {
            request_response::Behaviour::<MailboxCodec>::new(
                [(MAILBOX_PROTOCOL, request_response::ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(SEALED_DEPOSIT_TIMEOUT),
            )
        })
        .ok()?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(1)))
        .build();
    let request = MailboxRequest::SealedDeposit { deposits };
    let id = swarm.behaviour_mut().send_request_with_addresses(&relay, request, vec![address]);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) if request_id == id => return Some(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id, ..
            }) if request_id == id => return None,
            _ => {}
        }
    }
}
