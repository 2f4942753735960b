//! `kith demo`: two people on one machine find each other and chat, narrated step by step.
//! Everything stays on 127.0.0.1 (mDNS off) in temporary profiles that are deleted afterwards.

use std::time::Duration;

use anyhow::Context;
use kith_node::kith_core::engine::{Command, Event};
use kith_node::kith_core::model::MessageStatus;
use kith_node::kith_protocol::content::{Body, TypingState};
use kith_node::{Events, Node, NodeConfig, NodeEvent};

const WAIT: Duration = Duration::from_secs(30);

#[allow(clippy::print_stdout, reason = "the demo narrates on stdout")]
fn say(step: &str, text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m{step}\x1b[0m {text}");
    } else {
        println!("\n{step} {text}");
    }
}

#[allow(clippy::print_stdout, reason = "the demo narrates on stdout")]
fn detail(text: &str) {
    println!("    {text}");
}

fn config(dir: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::loopback(dir);
    config.dht_server = true;
    config
}

async fn next_message(events: &mut Events) -> anyhow::Result<String> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let NodeEvent::Engine(Event::Message(m)) = events.recv().await?
                && let Some(Body::Text(t)) = &m.body
            {
                return Ok(t.body.clone());
            }
        }
    })
    .await
    .context("timed out waiting for a message")?
}

async fn wait_typing(events: &mut Events) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let NodeEvent::Engine(Event::Typing { state: TypingState::Started, .. }) =
                events.recv().await?
            {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await
    .context("timed out waiting for the typing indicator")?
}

/// Runs the demo.
pub(crate) async fn run() -> anyhow::Result<()> {
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);

    say("1.", "Alice and Bob each create an identity.");
    let alice = Node::create(config(dirs.0.path())).await?;
    detail(&format!("Alice: {}", alice.contact_string()));
    detail("An Ed25519 key is her user id and libp2p PeerId; it signs an X25519 identity key,");
    detail("a signed prekey and 100 one-time prekeys (for X3DH).");
    let mut bob_config = config(dirs.1.path());
    bob_config.bootstrap = alice.addresses().await?;
    let bob = Node::create(bob_config).await?;
    detail(&format!("Bob:   {}", bob.contact_string()));

    say("2.", "Their nodes start on 127.0.0.1 (mDNS off, nothing leaves this machine).");
    for address in alice.addresses().await? {
        detail(&format!("Alice listens on {address}"));
    }
    detail("Bob bootstraps the Kademlia DHT from Alice's address; that is all either knows.");

    say("3.", "They swap contact strings (a QR code, in real life) and add each other.");
    alice.add_contact(&bob.contact_string(), "Bob").await?;
    bob.add_contact(&alice.contact_string(), "Alice").await?;
    alice.command(Command::SetProfile { display_name: "Alice".into() }).await?;
    bob.command(Command::SetProfile { display_name: "Bob".into() }).await?;

    let (mut alice_events, mut bob_events) = (alice.subscribe(), bob.subscribe());
    say("4.", "Alice writes to Bob, knowing only his PeerId.");
    let first =
        alice.send_text(bob.user_id(), "Hi Bob! Is this really end-to-end encrypted?").await?;
    detail("Her node finds Bob's address, fetches his prekey bundle, checks its signatures,");
    detail("runs X3DH (4 X25519 exchanges) and seals the message with the Double Ratchet.");
    let text = next_message(&mut bob_events).await?;
    detail(&format!("Bob's node decrypts: \"{text}\""));
    let status = alice.wait_for_status(first, MessageStatus::Delivered, WAIT).await?;
    detail(&format!(
        "Alice sees {status:?} ✓✓ — Bob's node sent back an encrypted delivery receipt."
    ));

    say("5.", "Bob starts typing, reads the message and answers.");
    bob.command(Command::Typing { to: alice.user_id(), state: TypingState::Started }).await?;
    wait_typing(&mut alice_events).await?;
    detail("Alice's screen shows: Bob is typing…");
    bob.command(Command::MarkRead { peer: alice.user_id(), ids: vec![first] }).await?;
    let reply = bob
        .send_text(alice.user_id(), "Yes: X3DH, then a Double Ratchet. No server can read this.")
        .await?;
    let text = next_message(&mut alice_events).await?;
    detail(&format!("Alice reads: \"{text}\""));
    alice.wait_for_status(first, MessageStatus::Read, WAIT).await?;
    detail("Bob's read receipt turned Alice's ✓✓ into \"read\".");
    bob.wait_for_status(reply, MessageStatus::Delivered, WAIT).await?;

    say("6.", "Alice reacts, then edits her first message.");
    alice
        .command(Command::React {
            to: bob.user_id(),
            target: reply,
            emoji: "🔒".into(),
            remove: false,
        })
        .await?;
    alice
        .command(Command::Edit {
            to: bob.user_id(),
            target: first,
            text: "Hi Bob! End-to-end encrypted, right?".into(),
        })
        .await?;
    let edited = tokio::time::timeout(WAIT, async {
        loop {
            if let NodeEvent::Engine(Event::MessageUpdated(m)) = bob_events.recv().await?
                && m.edited_at.is_some()
            {
                return Ok::<_, anyhow::Error>(m);
            }
        }
    })
    .await
    .context("timed out waiting for the edit")??;
    if let Some(Body::Text(t)) = &edited.body {
        detail(&format!("Bob's copy now reads: \"{}\" (edited)", t.body));
    }

    say("7.", "They compare safety numbers (in person, or over a call).");
    let a = alice.safety_number(bob.user_id()).await?.context("no safety number")?;
    let b = bob.safety_number(alice.user_id()).await?.context("no safety number")?;
    detail(&format!("Alice's screen: {a}"));
    detail(&format!("Bob's screen:   {b}"));
    detail(if a == b { "They match: no one sits in the middle." } else { "They differ!" });
    alice.command(Command::VerifyContact { user: bob.user_id() }).await?;

    say("8.", "Done.");
    detail(
        "Try it for real: `kith init`, `kith id --qr`, `kith contact add`, `kith daemon`, `kith chat`.",
    );
    alice.shutdown().await?;
    bob.shutdown().await?;
    Ok(())
}
