//! The `/kith/mailbox/1` protocol between users and relays.
//!
//! Senders deposit envelopes for recipients that are offline, several per request and in the
//! order they should be read; the relay answers [`MailboxResponse::Deposited`] only once the
//! stored ones are durable. Recipients, authenticated by
//! the connection's PeerId, fetch and acknowledge their own mailbox; a relay pushes new
//! envelopes to a connected recipient, who answers with the ids it now holds durably.

use serde::{Deserialize, Serialize};

use crate::codec::{Frame, Invalid, check_count, check_non_empty};
use crate::envelope::{Envelope, validate_envelopes};
use crate::ids::{MessageId, UserId};
use crate::limits::{MAX_MAILBOX_ACK_IDS, MAX_MAILBOX_BATCH, MAX_MAILBOX_FRAME_BYTES};

/// A request on `/kith/mailbox/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxRequest {
    /// Store these envelopes for their recipients, in this order (sender → relay).
    Deposit {
        /// The envelopes (1 to [`MAX_MAILBOX_BATCH`]).
        envelopes: Vec<Envelope>,
    },
    /// Return up to `limit` stored envelopes of `recipient`'s mailbox, oldest first
    /// (recipient → relay; refused with [`MailboxRefusal::NotRecipient`] unless the
    /// connection is authenticated as `recipient`).
    Fetch {
        /// Whose mailbox.
        recipient: UserId,
        /// Most envelopes wanted (capped at the relay's batch size).
        limit: u16,
    },
    /// Delete these envelopes from `recipient`'s mailbox: the recipient holds them durably
    /// (recipient → relay; refused unless the connection is authenticated as `recipient`).
    Ack {
        /// Whose mailbox.
        recipient: UserId,
        /// Ids of the envelopes received.
        ids: Vec<MessageId>,
    },
    /// New envelopes for the connected recipient (relay → recipient).
    Push {
        /// The envelopes.
        envelopes: Vec<Envelope>,
    },
}

/// A response on `/kith/mailbox/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxResponse {
    /// What became of each deposited envelope, in request order; the stored ones are durable.
    Deposited {
        /// One result per envelope of the request.
        results: Vec<DepositResult>,
    },
    /// Stored envelopes, oldest first.
    Batch {
        /// The envelopes.
        envelopes: Vec<Envelope>,
        /// How many more are waiting after this batch.
        remaining: u32,
    },
    /// Envelopes deleted after an ack.
    Acked {
        /// How many were deleted.
        removed: u32,
    },
    /// The recipient's answer to a push: ids it now holds durably (the relay deletes them).
    Received {
        /// Ids received.
        ids: Vec<MessageId>,
    },
    /// The request was refused.
    Refused(MailboxRefusal),
}

/// What a relay did with one deposited envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositResult {
    /// The envelope's id.
    pub id: MessageId,
    /// `None`: stored durably (or already held); otherwise why it was refused.
    pub refused: Option<MailboxRefusal>,
}

/// Why a relay refused a mailbox request; senders show it to the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxRefusal {
    /// The recipient's mailbox is full (message count or bytes).
    QuotaExceeded,
    /// This sender deposits too fast.
    RateLimited,
    /// The envelope is larger than this relay accepts.
    TooLarge,
    /// Only the recipient may fetch or acknowledge its mailbox.
    NotRecipient,
    /// This peer is not a relay.
    NotARelay,
    /// The relay cannot store right now; retry later.
    Unavailable,
}

impl Frame for MailboxRequest {
    const NAME: &'static str = "mailbox request";
    const MAX_BYTES: usize = MAX_MAILBOX_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Deposit { envelopes } => {
                check_non_empty("envelopes", envelopes.len())?;
                validate_envelopes("envelopes", envelopes, MAX_MAILBOX_BATCH)
            }
            Self::Fetch { .. } => Ok(()),
            Self::Ack { ids, .. } => {
                check_non_empty("ids", ids.len())?;
                check_count("ids", ids.len(), MAX_MAILBOX_ACK_IDS)
            }
            Self::Push { envelopes } => {
                validate_envelopes("envelopes", envelopes, MAX_MAILBOX_BATCH)
            }
        }
    }
}

impl Frame for MailboxResponse {
    const NAME: &'static str = "mailbox response";
    const MAX_BYTES: usize = MAX_MAILBOX_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Batch { envelopes, .. } => {
                validate_envelopes("envelopes", envelopes, MAX_MAILBOX_BATCH)
            }
            Self::Received { ids } => check_count("ids", ids.len(), MAX_MAILBOX_ACK_IDS),
            Self::Deposited { results } => check_count("results", results.len(), MAX_MAILBOX_BATCH),
            Self::Acked { .. } | Self::Refused(_) => Ok(()),
        }
    }
}
