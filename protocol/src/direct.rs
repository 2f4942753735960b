//! The `/kith/envelope/1` protocol: direct delivery, several envelopes per request.
//!
//! The request is an [`EnvelopeBatch`]: envelopes for the peer in the order they were sent, each
//! kept as undecoded bytes, so that one malformed envelope is refused on its own with a typed
//! [`RejectReason`] while the others are delivered. The response is [`DeliveryAcks`]: one
//! [`DeliveryAck`] per envelope, in request order, telling the sender whether the recipient now
//! holds it durably ([`AckResult::Accepted`], [`AckResult::Duplicate`]) or refused it, and why.
//!
//! A sender puts into one request what it has ready at once (up to [`MAX_DIRECT_BATCH`]
//! envelopes and [`MAX_DIRECT_FRAME_BYTES`]); a single message travels alone, without waiting.
//!
//! ```
//! use kith_protocol::direct::{EnvelopeBatch, batch_cost};
//!
//! let envelopes = vec![vec![1u8; 300], vec![2u8; 20]];
//! let batch = EnvelopeBatch { envelopes: envelopes.into_iter().map(Into::into).collect() };
//! let bytes = kith_protocol::encode(&batch)?;
//! // What a sender counts while filling a batch is exact.
//! assert_eq!(bytes.len(), EnvelopeBatch::OVERHEAD + batch_cost(300) + batch_cost(20));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::{Frame, Invalid, check_count, check_len, check_non_empty};
use crate::ids::MessageId;
use crate::limits::{
    MAX_ACKS_FRAME_BYTES, MAX_DIRECT_BATCH, MAX_DIRECT_FRAME_BYTES, MAX_ENVELOPE_BYTES,
};

/// A request on `/kith/envelope/1`: envelopes for the peer, in the order they were sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeBatch {
    /// Each envelope's bytes (1 to [`MAX_DIRECT_BATCH`], each at most [`MAX_ENVELOPE_BYTES`]),
    /// left for the recipient's engine to decode.
    pub envelopes: Vec<ByteBuf>,
}

impl EnvelopeBatch {
    /// Encoded bytes of a batch besides its envelopes: the version and the count (one byte
    /// each up to 127 envelopes).
    pub const OVERHEAD: usize = 2;
}

/// Bytes an envelope of `len` bytes adds to an encoded [`EnvelopeBatch`]: itself and its
/// length prefix. A sender fills a batch while `OVERHEAD + Σ batch_cost` stays within
/// [`MAX_DIRECT_FRAME_BYTES`].
#[must_use]
pub const fn batch_cost(len: usize) -> usize {
    let mut prefix = 1;
    let mut rest = len >> 7;
    while rest > 0 {
        prefix += 1;
        rest >>= 7;
    }
    len + prefix
}

/// The answer to an [`EnvelopeBatch`]: one acknowledgement per envelope, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAcks {
    /// The acknowledgements (as many as the request had envelopes).
    pub acks: Vec<DeliveryAck>,
}

/// The answer to a delivered envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAck {
    /// The envelope acknowledged.
    pub id: MessageId,
    /// What became of it.
    pub result: AckResult,
}

/// What the recipient did with an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckResult {
    /// Processed and flushed to disk.
    Accepted,
    /// Already held; nothing changed.
    Duplicate,
    /// Refused; the sender should not retry the same bytes unchanged.
    Rejected(RejectReason),
}

/// Why a recipient refused an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The bytes are not a valid envelope.
    Malformed,
    /// The envelope is addressed to someone else.
    WrongRecipient,
    /// The sender in the envelope is not the authenticated peer (direct delivery only).
    SenderMismatch,
    /// No session matches and the message does not start one.
    NoSession,
    /// Decryption or authentication failed.
    DecryptFailed,
    /// The sender's identity key differs from the one pinned for them.
    IdentityChanged,
    /// The recipient is not accepting messages from this sender.
    Blocked,
    /// Too many envelopes from this sender.
    RateLimited,
    /// The recipient could not store the envelope; retry later.
    Unavailable,
    /// The recipient does not support this kind of message.
    Unsupported,
    /// The message's key is no longer held (it arrived after its key expired or was evicted):
    /// encrypt the content again and resend.
    Expired,
    /// The message is too far ahead of what the recipient has received: send earlier messages
    /// first and retry.
    TooFarAhead,
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed envelope",
            Self::WrongRecipient => "addressed to someone else",
            Self::SenderMismatch => "sender is not the connection's peer",
            Self::NoSession => "no session",
            Self::DecryptFailed => "could not decrypt it",
            Self::IdentityChanged => "identity key changed",
            Self::Blocked => "not accepting messages from you",
            Self::RateLimited => "too many messages",
            Self::Unavailable => "could not store it now",
            Self::Unsupported => "unsupported message",
            Self::Expired => "its key expired",
            Self::TooFarAhead => "too far ahead",
        })
    }
}

impl Frame for EnvelopeBatch {
    const NAME: &'static str = "envelope batch";
    const MAX_BYTES: usize = MAX_DIRECT_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        check_non_empty("envelopes", self.envelopes.len())?;
        check_count("envelopes", self.envelopes.len(), MAX_DIRECT_BATCH)?;
        self.envelopes.iter().try_for_each(|e| check_len("envelopes", e.len(), MAX_ENVELOPE_BYTES))
    }
}

impl Frame for DeliveryAcks {
    const NAME: &'static str = "delivery acks";
    const MAX_BYTES: usize = MAX_ACKS_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        check_count("acks", self.acks.len(), MAX_DIRECT_BATCH)
    }
}

// `EnvelopeBatch::OVERHEAD` counts one byte for the envelope count.
const _: () = assert!(MAX_DIRECT_BATCH < 128);
