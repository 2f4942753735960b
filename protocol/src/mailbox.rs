//! The `/kith/mailbox/1` protocol between users and relays.
//!
//! **Sealed sender.** A sender deposits [`SealedEnvelope`]s: the envelope is encrypted to the
//! recipient's identity key (`kith_core::sealed_sender`), so the relay sees whom it is for but
//! not who sent it, and the deposit comes over a connection with a throw-away PeerId. Abuse
//! control keys on an [`AccessKey`]: each recipient hands every contact its own key inside
//! their session and registers the keys' [`AccessVerifier`]s with its relays
//! ([`MailboxRequest::SetAccess`]); a deposit with a wrong key is refused, one without a key
//! counts against the recipient's small stranger budget.
//!
//! Senders deposit envelopes for recipients that are offline, several per request and in the
//! order they should be read; the relay answers [`MailboxResponse::Deposited`] only once the
//! stored ones are durable. Recipients, authenticated by
//! the connection's PeerId, fetch and acknowledge their own mailbox; a relay pushes new
//! envelopes to a connected recipient, who answers with the ids it now holds durably.

use serde::{Deserialize, Serialize};

use crate::codec::{Frame, Invalid, check_count, check_len, check_non_empty};
use crate::envelope::{Envelope, TAG_BYTES, validate_envelopes};
use crate::ids::{DhPublicKey, MessageId, UserId};
use crate::limits::{
    MAX_ACCESS_VERIFIERS, MAX_MAILBOX_ACK_IDS, MAX_MAILBOX_BATCH, MAX_MAILBOX_FRAME_BYTES,
    MAX_SEALED_ENVELOPE_BYTES,
};

/// The key a recipient hands one contact (inside their session) for depositing sealed
/// envelopes with the recipient's relays. Secret between the two and the relay.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey(pub [u8; 32]);

/// Shows no key bytes.
impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKey(..)")
    }
}

/// What a relay keeps to check an [`AccessKey`]: a one-way function of it
/// (`kith_core::access::verifier`), so the relay's files do not hold the keys themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccessVerifier(pub [u8; 32]);

/// An envelope sealed to its recipient (sealed sender): the relay sees the recipient, the
/// deposit id and the size, not the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEnvelope {
    /// The inner envelope's id (random; the relay stores and acknowledges by it).
    pub id: MessageId,
    /// The recipient's identity key.
    pub recipient: UserId,
    /// The sender's single-use ephemeral X25519 key for the outer layer.
    pub ephemeral: DhPublicKey,
    /// The encoded inner envelope, encrypted to the recipient's identity key (tag appended).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// One sealed envelope to deposit, with the access key its recipient handed the sender (none
/// for a stranger's first messages).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedDeposit {
    /// The access key, checked by the relay and never stored.
    pub access: Option<AccessKey>,
    /// The envelope.
    pub envelope: SealedEnvelope,
}

impl SealedEnvelope {
    fn validate(&self) -> Result<(), Invalid> {
        if self.ciphertext.len() < TAG_BYTES {
            return Err(Invalid::TooShort {
                field: "ciphertext",
                len: self.ciphertext.len(),
                min: TAG_BYTES,
            });
        }
        check_len("ciphertext", self.ciphertext.len(), MAX_SEALED_ENVELOPE_BYTES)
    }
}

impl Frame for SealedEnvelope {
    const NAME: &'static str = "sealed envelope";
    const MAX_BYTES: usize = MAX_SEALED_ENVELOPE_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        SealedEnvelope::validate(self)
    }
}

fn validate_sealed(envelopes: &[SealedEnvelope]) -> Result<(), Invalid> {
    check_count("envelopes", envelopes.len(), MAX_MAILBOX_BATCH)?;
    envelopes.iter().try_for_each(SealedEnvelope::validate)
}

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
    /// Store these sealed envelopes for their recipients, in this order (sender → relay, over
    /// a connection with a throw-away PeerId).
    SealedDeposit {
        /// The envelopes with their access keys (1 to [`MAX_MAILBOX_BATCH`]).
        deposits: Vec<SealedDeposit>,
    },
    /// Replace the access verifiers of `recipient`'s mailbox (recipient → relay; refused
    /// unless the connection is authenticated as `recipient`).
    SetAccess {
        /// Whose mailbox.
        recipient: UserId,
        /// One verifier per contact (at most [`MAX_ACCESS_VERIFIERS`]).
        verifiers: Vec<AccessVerifier>,
    },
    /// New sealed envelopes for the connected recipient (relay → recipient).
    SealedPush {
        /// The envelopes.
        envelopes: Vec<SealedEnvelope>,
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
    /// Stored sealed envelopes, oldest first.
    SealedBatch {
        /// The envelopes.
        envelopes: Vec<SealedEnvelope>,
        /// How many more are waiting after this batch.
        remaining: u32,
    },
    /// The access verifiers were replaced (durably).
    AccessSet {
        /// How many are registered now.
        verifiers: u32,
    },
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
    /// The access key is not one the recipient registered.
    AccessDenied,
    /// A deposit without an access key, beyond the recipient's stranger budget.
    StrangerLimit,
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
            Self::SealedDeposit { deposits } => {
                check_non_empty("deposits", deposits.len())?;
                check_count("deposits", deposits.len(), MAX_MAILBOX_BATCH)?;
                deposits.iter().try_for_each(|d| d.envelope.validate())
            }
            Self::SetAccess { verifiers, .. } => {
                check_count("verifiers", verifiers.len(), MAX_ACCESS_VERIFIERS)
            }
            Self::SealedPush { envelopes } => validate_sealed(envelopes),
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
            Self::SealedBatch { envelopes, .. } => validate_sealed(envelopes),
            Self::Acked { .. } | Self::Refused(_) | Self::AccessSet { .. } => Ok(()),
        }
    }
}
