//! Envelopes: what travels between users, directly or through relays.
//!
//! Everything a relay or the network can see is in this module: the message id, the sender
//! and recipient identity keys, the kind of message and the public halves of the handshake.
//! The ratchet header of a post-quantum session is encrypted ([`SealedRatchetMessage`]), and
//! the message itself (a [`Content`](crate::content::Content)) is inside the ciphertext.

use serde::{Deserialize, Serialize};

use crate::codec::{Frame, Invalid, check_count, check_len, check_non_empty};
use crate::ids::{
    DhPublicKey, EncryptedHeader, GroupTag, KemCiphertext, MessageId, Signature, UserId,
};
use crate::limits::{MAX_CONTENT_BYTES, MAX_ENVELOPE_BYTES};

/// The AEAD tag length of every ciphertext (ChaCha20-Poly1305).
pub const TAG_BYTES: usize = 16;

/// Largest ciphertext inside an envelope: the largest content plus its tag.
pub const MAX_CIPHERTEXT_BYTES: usize = MAX_CONTENT_BYTES + TAG_BYTES;

/// A message from one user to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender-chosen random id; also authenticated as associated data of the ciphertext.
    pub id: MessageId,
    /// The sender's identity key.
    pub sender: UserId,
    /// The recipient's identity key.
    pub recipient: UserId,
    /// The encrypted payload.
    pub kind: EnvelopeKind,
}

/// The kinds of encrypted payload an envelope carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// The first messages of a version-1 (classical X3DH) session: still decoded so that a
    /// message of a session set up before PQXDH decrypts; a new session from one is refused.
    PreKey(PreKeyMessage),
    /// A message of a version-1 (classical) session, whose ratchet header is in the clear.
    Ratchet(RatchetMessage),
    /// A group message sealed with the sender's sender key (a mailbox copy for a member).
    Group(GroupMessage),
    /// The first messages of a session: the PQXDH header plus a ratchet message.
    PqPreKey(Box<PqPreKeyMessage>),
    /// A message of an established post-quantum session, its header encrypted.
    SealedRatchet(SealedRatchetMessage),
}

/// The PQXDH initial message (Signal's PQXDH §3.3, revision 3): the X3DH fields, which KEM
/// prekey was used and the KEM ciphertext, and the first ratchet message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PqPreKeyMessage {
    /// The initiator's X25519 identity key.
    pub identity_dh_key: DhPublicKey,
    /// The initiator's Ed25519 signature binding `identity_dh_key` to the envelope's sender.
    pub identity_dh_signature: Signature,
    /// The initiator's ephemeral key (EK_A), also the session's base key.
    pub base_key: DhPublicKey,
    /// Id of the responder's signed prekey that was used.
    pub signed_prekey_id: u32,
    /// Id of the responder's one-time prekey that was used, if any.
    pub one_time_prekey_id: Option<u32>,
    /// Id of the responder's KEM prekey (one-time or last-resort) that was encapsulated to.
    pub kem_prekey_id: u32,
    /// The ML-KEM-768 ciphertext (CT).
    pub kem_ciphertext: KemCiphertext,
    /// The first (or a not yet acknowledged) ratchet message, its header encrypted.
    pub message: SealedRatchetMessage,
}

/// The X3DH initial message (Signal's X3DH §3.3): the initiator's identity and ephemeral keys,
/// which of the responder's prekeys were used, and the first ratchet message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyMessage {
    /// The initiator's X25519 identity key.
    pub identity_dh_key: DhPublicKey,
    /// The initiator's Ed25519 signature binding `identity_dh_key` to the envelope's sender.
    pub identity_dh_signature: Signature,
    /// The initiator's ephemeral key (EK_A), also the session's base key.
    pub base_key: DhPublicKey,
    /// Id of the responder's signed prekey that was used.
    pub signed_prekey_id: u32,
    /// Id of the responder's one-time prekey that was used, if any.
    pub one_time_prekey_id: Option<u32>,
    /// The first (or a not yet acknowledged) ratchet message.
    pub message: RatchetMessage,
}

/// A Double Ratchet message: header in the clear (authenticated), body encrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatchetMessage {
    /// The ratchet header.
    pub header: RatchetHeader,
    /// ChaCha20-Poly1305 ciphertext of an encoded `Content`, tag appended.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A Double Ratchet message with an encrypted header (Double Ratchet §4, header encryption):
/// whoever carries it sees neither the sender's ratchet key nor its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRatchetMessage {
    /// The [`RatchetHeader`], encrypted under the sending chain's header key.
    pub header: EncryptedHeader,
    /// ChaCha20-Poly1305 ciphertext of an encoded `Content`, tag appended; the encrypted
    /// header is part of its associated data.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// The Double Ratchet header (Signal's Double Ratchet §3.1: `dh`, `pn`, `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatchetHeader {
    /// The sender's current ratchet public key.
    pub ratchet_key: DhPublicKey,
    /// Number of messages in the sender's previous sending chain.
    pub previous_chain_length: u32,
    /// Index of this message in the current sending chain.
    pub counter: u32,
}

impl RatchetHeader {
    /// Length of [`RatchetHeader::to_bytes`].
    pub const ENCODED_LEN: usize = 32 + 4 + 4;

    /// Canonical fixed-width encoding used as associated data (independent of postcard).
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (key, rest) = out.split_at_mut(32);
        let (pn, n) = rest.split_at_mut(4);
        key.copy_from_slice(&self.ratchet_key.0);
        pn.copy_from_slice(&self.previous_chain_length.to_be_bytes());
        n.copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    /// Reads [`RatchetHeader::to_bytes`] back (every 40-byte string is some header).
    pub fn from_bytes(bytes: &[u8; Self::ENCODED_LEN]) -> Self {
        let mut key = [0u8; 32];
        let mut pn = [0u8; 4];
        let mut n = [0u8; 4];
        let (k, rest) = bytes.split_at(32);
        let (p, c) = rest.split_at(4);
        key.copy_from_slice(k);
        pn.copy_from_slice(p);
        n.copy_from_slice(c);
        Self {
            ratchet_key: DhPublicKey(key),
            previous_chain_length: u32::from_be_bytes(pn),
            counter: u32::from_be_bytes(n),
        }
    }
}

/// A group message: encrypted with the sender's sender-key chain and signed with the sender's
/// per-group signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    /// The group's public tag.
    pub tag: GroupTag,
    /// Which of the sender's chains (it changes on every key rotation).
    pub chain_id: u32,
    /// Index of this message in that chain.
    pub iteration: u32,
    /// ChaCha20-Poly1305 ciphertext of an encoded `Content`, tag appended.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// Ed25519 signature by the chain's signing key over every other field and the sender.
    pub signature: Signature,
}

/// A group message as published on the group's gossipsub topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEnvelope {
    /// Sender-chosen random id.
    pub id: MessageId,
    /// The sender's identity key.
    pub sender: UserId,
    /// The sealed message.
    pub message: GroupMessage,
}

fn check_ciphertext(bytes: &[u8]) -> Result<(), Invalid> {
    // An AEAD ciphertext always carries at least its tag.
    if bytes.len() < TAG_BYTES {
        return Err(Invalid::TooShort { field: "ciphertext", len: bytes.len(), min: TAG_BYTES });
    }
    check_len("ciphertext", bytes.len(), MAX_CIPHERTEXT_BYTES)
}

impl RatchetMessage {
    fn validate(&self) -> Result<(), Invalid> {
        check_ciphertext(&self.ciphertext)
    }
}

impl SealedRatchetMessage {
    fn validate(&self) -> Result<(), Invalid> {
        check_ciphertext(&self.ciphertext)
    }
}

impl GroupMessage {
    fn validate(&self) -> Result<(), Invalid> {
        check_ciphertext(&self.ciphertext)
    }
}

impl Frame for Envelope {
    const NAME: &'static str = "envelope";
    const MAX_BYTES: usize = MAX_ENVELOPE_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        match &self.kind {
            EnvelopeKind::PreKey(m) => m.message.validate(),
            EnvelopeKind::PqPreKey(m) => m.message.validate(),
            EnvelopeKind::Ratchet(m) => m.validate(),
            EnvelopeKind::SealedRatchet(m) => m.validate(),
            EnvelopeKind::Group(m) => m.validate(),
        }
    }
}

impl Frame for GroupEnvelope {
    const NAME: &'static str = "group envelope";
    const MAX_BYTES: usize = MAX_ENVELOPE_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        self.message.validate()
    }
}

/// A list of envelopes, e.g. a mailbox batch; each must itself be a valid envelope.
pub(crate) fn validate_envelopes(
    field: &'static str,
    envelopes: &[Envelope],
    max: usize,
) -> Result<(), Invalid> {
    check_count(field, envelopes.len(), max)?;
    envelopes.iter().try_for_each(Frame::validate)
}

/// Checks a non-empty string field against its limit.
pub(crate) fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), Invalid> {
    check_non_empty(field, text.len())?;
    check_len(field, text.len(), max)
}
