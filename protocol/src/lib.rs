//! # kith-protocol
//!
//! The wire format of Kith: every byte that leaves a Kith
//! node is one of the frames defined here. Pure data: no IO, no clocks, no secret state.
//!
//! ```text
//!  Content (plaintext)  --kith-core seals-->  Envelope { id, sender, recipient, kind }
//!                                               kind = PqPreKey (PQXDH header + ratchet msg)
//!                                                    | PreKey (X3DH, read for old sessions)
//!                                                    | Ratchet (header + ciphertext)
//!                                                    | Group (sender-key message)
//!  EnvelopeBatch  --/kith/envelope/1--> peer --DeliveryAcks--> (one ack per envelope)
//!                 --/kith/mailbox/1-->  relay (Deposit / Fetch / Ack / Push)
//!  PreKeyBundle   <--/kith/prekey/1--   peer or relay (PQXDH: with an ML-KEM prekey)
//!  sealed chunks  <--/kith/media/1-->   peer or relay
//! ```
//!
//! Every frame is `WIRE_VERSION ‖ postcard(body)` and implements [`Frame`], whose hard size
//! limit is checked before anything is parsed; unknown versions and variants, trailing bytes
//! and broken field limits are typed [`DecodeError`]s, never panics.
//!
//! ```
//! use kith_protocol::{codec, content::{Body, Content, Text}};
//!
//! let content = Content { sent_at: 1_700_000_000_000, body: Body::Text(Text {
//!     body: "hello".into(), reply_to: None }) };
//! let bytes = codec::encode(&content)?;
//! assert_eq!(bytes[0], codec::WIRE_VERSION);
//! assert_eq!(codec::decode::<Content>(&bytes)?, content);
//!
//! // Bad input is a typed error.
//! assert!(matches!(
//!     codec::decode::<Content>(&[9, 0, 0]),
//!     Err(codec::DecodeError::UnsupportedVersion { version: 9, .. })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
pub mod content;
pub mod direct;
pub mod envelope;
pub mod ids;
pub mod limits;
pub mod mailbox;
pub mod media;
pub mod prekey;

pub use codec::{DecodeError, EncodeError, Frame, Invalid, WIRE_VERSION, decode, encode};
pub use ids::{
    ChangeHash, ChunkHash, DhPublicKey, EncryptedHeader, GroupId, GroupTag, KemCiphertext,
    KemPublicKey, MediaId, MessageId, Signature, UnixMillis, UserId,
};
/// Owned bytes, as byte-list fields of frames carry them (e.g. the envelopes of a
/// [`direct::EnvelopeBatch`]).
pub use serde_bytes::ByteBuf;
