//! # kith-core
//!
//! The cryptographic core and protocol engine of Kith, a
//! peer-to-peer end-to-end encrypted messenger. No sockets, no clocks, no global RNG: time and
//! randomness are inputs, so every protocol rule runs deterministically in tests.
//!
//! ```text
//!  identity (Ed25519 = UserId = PeerId, + signed X25519 identity key)
//!     │  prekeys: signed prekey + last-resort ML-KEM-768 prekey (weekly), one-time prekeys
//!     │           of both kinds (each handed out once), all signed by the identity key
//!     ▼
//!  PQXDH (Signal spec rev. 3: 4 DH + ML-KEM) ──► Double Ratchet (Signal spec)
//!     │                                                  │ decrypt on a plan: commit only
//!     │                                                  │ after the AEAD tag verifies
//!     ▼                                                  ▼
//!  Engine (sans-IO):  commands + received bytes + time ──► store batch ─► flush ─► outputs
//!                     (send, react, read…)                 (sled / memory)  (deliver, fetch
//!                                                                           prekeys, ack, events)
//! ```
//!
//! ## What an app uses
//!
//! | module | for |
//! |---|---|
//! | [`engine`] | [`Engine`](engine::Engine): everything a messenger does with sessions (outbox, retries, receipts, reactions, edits, groups, typing, presence, identity pinning), driven by [`Command`](engine::Command)s and [`Input`](engine::Input)s, answering with [`Output`](engine::Output)s and [`Event`](engine::Event)s |
//! | [`model`] | what the engine shows: [`Contact`](model::Contact), [`Message`](model::Message), statuses |
//! | [`group`] | [`Group`](group::Group) views, and the membership rules ([`ChangeLog`](group::ChangeLog)) |
//! | [`identity`] | [`IdentityKeyPair`](identity::IdentityKeyPair), [`ContactString`](identity::ContactString), user and peer ids |
//! | [`fingerprint`] | [`SafetyNumber`](fingerprint::SafetyNumber) for verification |
//! | [`session`] | PQXDH + Double Ratchet for one peer, for apps that bring their own transport and storage |
//! | [`prekeys`], [`record`] | prekey bundles and signed user records (what a node publishes) |
//! | [`media`] | attachments sealed in chunks ([`Sealer`](media::Sealer), [`open_verified`](media::open_verified)) |
//! | [`store`] | [`Store`](store::Store) over a pluggable [`Backend`](store::Backend) (sled with the default `sled` feature, or in memory) |
//! | [`text`] | making text from peers safe to print on a terminal |
//!
//! Features: `sled` (default) brings the sled backend; `hazmat` opens the raw primitives
//! (`hazmat`: AEAD, X25519, ML-KEM, HKDF, signatures) and the `ratchet` and `pqxdh` layers for
//! protocol
//! work; `test-utils` adds `testing`, a simulated network of engines with faults and crashes,
//! and [`Store::dump`](store::Store) for tests that compare stores. None
//! is needed to write a messenger. `kith-node` drives the engine over libp2p.
//!
//! ## Example: two parties exchange a message
//!
//! ```
//! use kith_core::identity::IdentityKeyPair;
//! use kith_core::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey, verify_bundle};
//! use kith_core::session::{RatchetPayload, Session};
//! use kith_protocol::envelope::EnvelopeKind;
//! use kith_protocol::prekey::{KemPreKeyKind, PreKeyBundle};
//! use kith_protocol::MessageId;
//!
//! let mut rng = rand::rng(); // any CryptoRng
//! let now = 1_700_000_000_000; // milliseconds since the Unix epoch
//!
//! // Bob publishes a prekey bundle.
//! let bob = IdentityKeyPair::generate(&mut rng);
//! let signed_prekey = SignedPreKey::generate(&bob, 1, now, &mut rng);
//! let one_time_prekey = OneTimePreKey::generate(1, &mut rng);
//! let kem_prekey = KemPreKey::generate(&bob, 1, KemPreKeyKind::OneTime, now, &mut rng);
//! let bundle = PreKeyBundle {
//!     identity: bob.binding(),
//!     signed_prekey: signed_prekey.public(),
//!     one_time_prekey: Some(one_time_prekey.public()),
//!     kem_prekey: kem_prekey.public(),
//! };
//!
//! // Alice checks the bundle's signatures and starts a session (PQXDH).
//! let alice = IdentityKeyPair::generate(&mut rng);
//! let bundle = verify_bundle(&bundle, &bob.user_id(), now)?;
//! let mut alice_session = Session::initiate(&alice, &bundle, now, &mut rng)?;
//! let id = MessageId([1; 16]);
//! let EnvelopeKind::PqPreKey(first) = alice_session.encrypt(&alice, &id, b"hi Bob", &mut rng)? else {
//!     unreachable!("the first message carries the PQXDH header")
//! };
//!
//! // Bob sets up his side from that message and reads it.
//! let (mut bob_session, plaintext) = Session::accept(
//!     &bob, &signed_prekey, Some(&one_time_prekey), &kem_prekey, alice.public(), &id, &first, now,
//! )?;
//! assert!(bob_session.is_post_quantum());
//! assert_eq!(plaintext, b"hi Bob");
//!
//! // And answers on the ratchet, its header encrypted.
//! let reply_id = MessageId([2; 16]);
//! let EnvelopeKind::SealedRatchet(reply) = bob_session.encrypt(&bob, &reply_id, b"hi Alice", &mut rng)? else {
//!     unreachable!()
//! };
//! assert_eq!(alice_session.decrypt(&reply_id, RatchetPayload::Sealed(&reply), now)?, b"hi Alice");
//!
//! // Both see the same safety number.
//! use kith_core::fingerprint::SafetyNumber;
//! assert_eq!(SafetyNumber::new(&alice.public(), &bob.public()), SafetyNumber::new(&bob.public(), &alice.public()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A messenger uses [`engine::Engine`] instead, which adds storage, the outbox and everything
//! around it; its module docs show the driver loop.

// Raw primitives and the protocol layers under `session`: reachable from outside only with
// the `hazmat` feature (see `hazmat`), so an app cannot misuse them by accident.
#[cfg_attr(not(feature = "hazmat"), allow(unreachable_pub, dead_code))]
mod crypto;
#[cfg(feature = "hazmat")]
pub mod pqxdh;
#[cfg(not(feature = "hazmat"))]
#[allow(unreachable_pub, dead_code)]
mod pqxdh;
#[cfg(feature = "hazmat")]
pub mod ratchet;
#[cfg(not(feature = "hazmat"))]
#[allow(unreachable_pub, dead_code)]
mod ratchet;

pub mod engine;
pub mod fingerprint;
pub mod group;
pub mod identity;
pub mod media;
pub mod model;
pub mod prekeys;
pub mod record;
pub mod sealed_sender;
pub mod session;
pub mod store;
pub mod text;

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

/// Raw cryptographic primitives, for those who build protocols (feature `hazmat`).
///
/// Nothing here is needed to write a messenger: [`engine`] and [`session`] use these
/// correctly (one nonce per key, domain-separated signatures, contributory DH). Calling them
/// directly makes nonce reuse, missing authentication and key misuse the caller's problem.
/// The Double Ratchet and PQXDH layers are public under the same feature, as
/// `kith_core::ratchet` and `kith_core::pqxdh`.
#[cfg(feature = "hazmat")]
pub mod hazmat {
    pub use crate::crypto::sign::SignContext;
    pub use crate::crypto::{
        DhKeyPair, KemKeyPair, NonContributory, SecretBytes, SignatureError, SigningKeyPair, aead,
        dh, kdf, kem, secret, sign,
    };
}
