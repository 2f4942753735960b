//! # kith-core
//!
//! The cryptographic core and protocol engine of Kith, a
//! peer-to-peer end-to-end encrypted messenger. No sockets, no clocks, no global RNG: time and
//! randomness are inputs, so every protocol rule runs deterministically in tests.
//!
//! ```text
//!  identity (Ed25519 = UserId = PeerId, + signed X25519 identity key)
//!     │  prekeys: signed prekey (weekly) + one-time prekeys (each handed out once)
//!     ▼
//!  X3DH (Signal spec, 4 DH, contributory checks) ──► Double Ratchet (Signal spec)
//!     │                                                  │ decrypt on a plan: commit only
//!     │                                                  │ after the AEAD tag verifies
//!     ▼                                                  ▼
//!  Engine (sans-IO):  commands + received bytes + time ──► store batch ─► flush ─► outputs
//!                     (send, react, read…)                 (sled / memory)  (deliver, fetch
//!                                                                           prekeys, ack, events)
//! ```
//!
//! Layers, lowest first: [`crypto`] (the only primitives, Wycheproof-tested), [`identity`] and
//! [`fingerprint`] (safety numbers), [`prekeys`], [`x3dh`], [`ratchet`], [`session`] (X3DH +
//! ratchet for one peer, the API for apps that bring their own transport and storage),
//! [`store`] (versioned records over a pluggable ordered key-value backend) and [`engine`]
//! (everything a messenger does with sessions: outbox, retries, receipts, reactions, edits,
//! typing, presence, identity pinning). `kith-node` drives the engine over libp2p.
//!
//! ## Example: two parties exchange a message
//!
//! ```
//! use kith_core::identity::IdentityKeyPair;
//! use kith_core::prekeys::{OneTimePreKey, SignedPreKey, verify_bundle};
//! use kith_core::session::Session;
//! use kith_protocol::envelope::EnvelopeKind;
//! use kith_protocol::prekey::PreKeyBundle;
//! use kith_protocol::MessageId;
//!
//! let mut rng = rand::rng(); // any CryptoRng
//! let now = 1_700_000_000_000; // milliseconds since the Unix epoch
//!
//! // Bob publishes a prekey bundle.
//! let bob = IdentityKeyPair::generate(&mut rng);
//! let signed_prekey = SignedPreKey::generate(&bob, 1, now, &mut rng);
//! let one_time_prekey = OneTimePreKey::generate(1, &mut rng);
//! let bundle = PreKeyBundle {
//!     identity: bob.binding(),
//!     signed_prekey: signed_prekey.public(),
//!     one_time_prekey: Some(one_time_prekey.public()),
//! };
//!
//! // Alice checks the bundle's signatures and starts a session (X3DH).
//! let alice = IdentityKeyPair::generate(&mut rng);
//! let bundle = verify_bundle(&bundle, &bob.user_id(), now)?;
//! let mut alice_session = Session::initiate(&alice, &bundle, now, &mut rng)?;
//! let id = MessageId([1; 16]);
//! let EnvelopeKind::PreKey(first) = alice_session.encrypt(&alice, &id, b"hi Bob", &mut rng)? else {
//!     unreachable!("the first message carries the X3DH header")
//! };
//!
//! // Bob sets up his side from that message and reads it.
//! let (mut bob_session, plaintext) = Session::accept(
//!     &bob, &signed_prekey, Some(&one_time_prekey), alice.public(), &id, &first, now,
//! )?;
//! assert_eq!(plaintext, b"hi Bob");
//!
//! // And answers on the ratchet.
//! let reply_id = MessageId([2; 16]);
//! let EnvelopeKind::Ratchet(reply) = bob_session.encrypt(&bob, &reply_id, b"hi Alice", &mut rng)? else {
//!     unreachable!()
//! };
//! assert_eq!(alice_session.decrypt(&reply_id, &reply, now)?, b"hi Alice");
//!
//! // Both see the same safety number.
//! use kith_core::fingerprint::SafetyNumber;
//! assert_eq!(SafetyNumber::new(&alice.public(), &bob.public()), SafetyNumber::new(&bob.public(), &alice.public()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A messenger uses [`engine::Engine`] instead, which adds storage, the outbox and everything
//! around it; its module docs show the driver loop.

pub mod crypto;
pub mod engine;
pub mod fingerprint;
pub mod group;
pub mod identity;
pub mod media;
pub mod model;
pub mod prekeys;
pub mod ratchet;
pub mod record;
pub mod session;
pub mod store;
pub mod text;
pub mod x3dh;
