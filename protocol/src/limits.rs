//! Every hard limit of the wire format, each with the reason for its value.
//!
//! Decoders check the frame-level limits before parsing and the field-level limits right after;
//! an input over any of them is refused with a typed error and never reaches the engine.

/// Largest envelope (direct delivery, mailbox deposit). A maximum-size text or media manifest
/// plus ratchet and X3DH headers fits; file bytes travel as media chunks, never in envelopes.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;

/// Largest encoded plaintext [`Content`](crate::content::Content): an envelope minus room for
/// the AEAD tag, ratchet header, PQXDH header (its KEM ciphertext is 1,088 bytes) and envelope
/// fields.
pub const MAX_CONTENT_BYTES: usize = MAX_ENVELOPE_BYTES - 3 * 1024;

/// Longest text body or edit, in UTF-8 bytes (Signal allows 64 KiB "long text" messages too).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Longest reaction: one emoji grapheme cluster (the longest ZWJ sequences are ~35 bytes).
pub const MAX_REACTION_BYTES: usize = 64;

/// Longest display name or group name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Longest attachment file name (the common filesystem limit).
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Longest MIME type (RFC 6838 caps each half at 127 characters).
pub const MAX_MIME_BYTES: usize = 255;

/// Largest inline thumbnail carried in a media manifest.
pub const MAX_THUMBNAIL_BYTES: usize = 32 * 1024;

/// Most chunks in one attachment. With 32-byte hashes the list stays at 128 KiB, inside an
/// envelope; a 2 GiB attachment therefore needs chunks of at least 512 KiB.
pub const MAX_MEDIA_CHUNKS: usize = 4096;

/// Largest sealed media chunk (ciphertext plus tag) on the wire.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024 + 16;

/// Largest media protocol frame: one chunk plus its addressing fields.
pub const MAX_MEDIA_FRAME_BYTES: usize = MAX_CHUNK_BYTES + 256;

/// Most message ids acknowledged by one receipt (a read receipt for a screenful of messages).
pub const MAX_RECEIPT_IDS: usize = 256;

/// Longest disappearing-message timer: one year.
pub const MAX_EXPIRE_SECONDS: u32 = 365 * 24 * 60 * 60;

/// Most members in a group (bounds control messages and sender-key fan-out).
pub const MAX_GROUP_MEMBERS: usize = 256;

/// Most changes a group change names as the ones its author had seen last (the heads of its
/// author's view). An author with more heads names the newest of them; the change is then
/// merely concurrent with the others, which the membership rules handle.
pub const MAX_CHANGE_PARENTS: usize = 16;

/// Most group changes in one message (a change made now, or a batch answering a sync request;
/// a larger answer is split over several messages).
pub const MAX_CHANGES_PER_MESSAGE: usize = 64;

/// Most heads a member names when it asks another for the group changes it lacks.
pub const MAX_SYNC_HEADS: usize = 64;

/// Most one-time prekeys uploaded to a relay in one frame.
pub const MAX_PREKEYS_PER_UPLOAD: usize = 200;

/// Most one-time KEM prekeys uploaded to a relay in one frame (each is 1.2 KiB).
pub const MAX_KEM_PREKEYS_PER_UPLOAD: usize = 100;

/// Most relay addresses a user advertises.
pub const MAX_RELAY_ADDRS: usize = 8;

/// Longest relay multiaddr in bytes.
pub const MAX_ADDR_BYTES: usize = 256;
/// Most devices a user record lists.
pub const MAX_RECORD_DEVICES: usize = 8;
/// Most direct and most relayed addresses a user record gives for one device.
pub const MAX_DEVICE_ADDRS: usize = 8;

/// Most envelopes a relay returns in one mailbox batch.
pub const MAX_MAILBOX_BATCH: usize = 64;

/// Most ids acknowledged in one mailbox ack.
pub const MAX_MAILBOX_ACK_IDS: usize = 512;

/// Largest sealed envelope (sealed sender): an encoded envelope of [`MAX_ENVELOPE_BYTES`],
/// its outer tag and the outer fields.
pub const MAX_SEALED_ENVELOPE_BYTES: usize = MAX_ENVELOPE_BYTES + 1024;

/// Most access-key verifiers a recipient registers with a relay: one per contact.
pub const MAX_ACCESS_VERIFIERS: usize = 5000;

/// Largest mailbox frame: a batch is cut short before it reaches this many bytes.
pub const MAX_MAILBOX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Largest prekey protocol frame: an upload of [`MAX_PREKEYS_PER_UPLOAD`] classical keys (37
/// bytes each) and [`MAX_KEM_PREKEYS_PER_UPLOAD`] KEM prekeys (1,263 bytes each) fits.
pub const MAX_PREKEY_FRAME_BYTES: usize = 160 * 1024;

/// Most envelopes in one direct-delivery request (`/kith/envelope/1`): what a sender has ready
/// at once travels on one stream with one answer, instead of a stream, a timer and an answer
/// per envelope.
pub const MAX_DIRECT_BATCH: usize = 64;

/// Largest direct-delivery request: a sender cuts a batch short before it reaches this many
/// bytes (one envelope of [`MAX_ENVELOPE_BYTES`] always fits).
pub const MAX_DIRECT_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Largest direct-delivery answer: [`MAX_DIRECT_BATCH`] acknowledgements of at most 18 bytes
/// (id, result, reason) plus version and count is 1,154 bytes.
pub const MAX_ACKS_FRAME_BYTES: usize = 2048;
