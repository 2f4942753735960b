//! The `/kith/envelope/1` protocol: one envelope per request, answered by an acknowledgement.
//!
//! The request is an [`Envelope`](crate::envelope::Envelope) frame. The response tells the
//! sender whether the recipient now holds the envelope durably ([`AckResult::Accepted`],
//! [`AckResult::Duplicate`]) or refused it, and why.

use serde::{Deserialize, Serialize};

use crate::codec::Frame;
use crate::ids::MessageId;
use crate::limits::MAX_ACK_FRAME_BYTES;

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

impl Frame for DeliveryAck {
    const NAME: &'static str = "delivery ack";
    const MAX_BYTES: usize = MAX_ACK_FRAME_BYTES;
}
