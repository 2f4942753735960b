//! Prekey bundles and the `/kith/prekey/1` protocol that serves them.
//!
//! A bundle is everything an initiator needs for PQXDH (Signal's specification, revision 3): the
//! responder's identity keys, a signed prekey, when one is left a one-time prekey, and a signed
//! ML-KEM-768 prekey (a one-time one when one is left, the last-resort one otherwise). The
//! signatures are checked by `kith-core`; this module only fixes the shapes and limits.
//!
//! Version 1 of the protocol was classical X3DH: its frames ([`ClassicalPreKeyBundle`],
//! [`ClassicalPreKeyUpload`], [`UserRecord`], [`UserRecordV2`]) still decode, so that a peer can
//! tell a classical-only contact apart from a broken one and refuse it with a clear reason.

use serde::{Deserialize, Serialize};

use crate::codec::{Frame, Invalid, check_count, check_len};
use crate::ids::{DhPublicKey, KemPublicKey, Signature, UnixMillis, UserId};
use crate::limits::{
    MAX_ADDR_BYTES, MAX_DEVICE_ADDRS, MAX_KEM_PREKEYS_PER_UPLOAD, MAX_PREKEY_FRAME_BYTES,
    MAX_PREKEYS_PER_UPLOAD, MAX_RECORD_DEVICES, MAX_RELAY_ADDRS,
};

/// A signed prekey as published: id, key and the identity key's signature over both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKeyPublic {
    /// Id, unique per identity.
    pub id: u32,
    /// The X25519 public key.
    pub key: DhPublicKey,
    /// When it was generated (for rotation), by the owner's clock.
    pub created_at: UnixMillis,
    /// Ed25519 signature by the identity key (domain-separated, see `kith-core`).
    pub signature: Signature,
}

/// A one-time prekey as published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePreKeyPublic {
    /// Id, unique per identity.
    pub id: u32,
    /// The X25519 public key.
    pub key: DhPublicKey,
}

/// The identity part every bundle and record carries: the Ed25519 key (the user's id) and the
/// X25519 identity key it signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityBinding {
    /// The user's Ed25519 identity key.
    pub user: UserId,
    /// The user's X25519 identity key.
    pub dh_key: DhPublicKey,
    /// Ed25519 signature by `user` over `dh_key` (domain-separated).
    pub signature: Signature,
}

/// An ML-KEM-768 prekey as published (PQXDH's PQSPK or PQOPK), signed by the identity key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KemPreKeyPublic {
    /// Id, unique per identity (one id space for last-resort and one-time KEM prekeys).
    pub id: u32,
    /// The encapsulation key.
    pub key: KemPublicKey,
    /// The last-resort key (reused until rotated) or a one-time key (used once).
    pub kind: KemPreKeyKind,
    /// When it was generated, by the owner's clock.
    pub created_at: UnixMillis,
    /// Ed25519 signature by the identity key over every other field (domain-separated).
    pub signature: Signature,
}

/// Which of PQXDH's two kinds of KEM prekey a [`KemPreKeyPublic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KemPreKeyKind {
    /// Signed, rotated with the signed prekey, used when no one-time KEM prekey is left.
    LastResort,
    /// Handed out at most once and deleted after use.
    OneTime,
}

/// What an initiator fetches to start a session: a PQXDH bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyBundle {
    /// Whose bundle this is.
    pub identity: IdentityBinding,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// A one-time prekey, handed out at most once; `None` when none are left.
    pub one_time_prekey: Option<OneTimePreKeyPublic>,
    /// A one-time KEM prekey, or the last-resort one when none is left.
    pub kem_prekey: KemPreKeyPublic,
}

/// A version-1 (classical X3DH) bundle: no KEM prekey. Still decoded, never used to start a
/// session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassicalPreKeyBundle {
    /// Whose bundle this is.
    pub identity: IdentityBinding,
    /// The signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// A one-time prekey.
    pub one_time_prekey: Option<OneTimePreKeyPublic>,
}

/// A user's signed record, published in the DHT and handed to contacts: identity, a signed
/// prekey (no one-time prekeys: a DHT cannot hand each out once), home relays and a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Whose record this is.
    pub identity: IdentityBinding,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// Multiaddrs (binary form) of the user's home relays.
    pub relays: Vec<serde_bytes::ByteBuf>,
    /// When the record was issued; a newer record replaces an older one.
    pub issued_at: UnixMillis,
    /// Ed25519 signature by the identity key over all other fields.
    pub signature: Signature,
}

/// The first bytes of a [`UserRecordV2`]: they tell it apart from a version-1
/// [`UserRecord`], whose first field is a user id. (A version-1 record whose user id happened
/// to start with them would fail to decode or verify as version 2 and be read as version 1.)
pub const USER_RECORD_V2_MAGIC: [u8; 4] = *b"KUR2";

/// Version 2 of the user record: version 1's fields, plus where the user's devices can be
/// dialed — their confirmed direct addresses and their relayed (`/p2p-circuit`) addresses —
/// all signed by the identity key. One device today; the list leaves room for more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecordV2 {
    /// Always [`USER_RECORD_V2_MAGIC`].
    pub magic: [u8; 4],
    /// Whose record this is.
    pub identity: IdentityBinding,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// Multiaddrs (binary form) of the user's home relays.
    pub relays: Vec<serde_bytes::ByteBuf>,
    /// The user's devices and their addresses.
    pub devices: Vec<DeviceAddresses>,
    /// When the record was issued; a newer record replaces an older one.
    pub issued_at: UnixMillis,
    /// Ed25519 signature by the identity key over all other fields.
    pub signature: Signature,
}

/// Where one device of a user can be dialed, as of the record's issue time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAddresses {
    /// The device's libp2p peer id (binary form); today the user's own.
    pub peer: serde_bytes::ByteBuf,
    /// Addresses confirmed reachable from outside (binary multiaddrs).
    pub direct: Vec<serde_bytes::ByteBuf>,
    /// Addresses through the device's relays (binary `/p2p-circuit` multiaddrs).
    pub circuits: Vec<serde_bytes::ByteBuf>,
}

/// Version 3 of the user record: version 2's fields plus the last-resort KEM prekey, so that a
/// PQXDH session can start from the record alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecordV3 {
    /// Always [`USER_RECORD_V3_MAGIC`].
    pub magic: [u8; 4],
    /// Whose record this is.
    pub identity: IdentityBinding,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// The current last-resort KEM prekey.
    pub kem_prekey: KemPreKeyPublic,
    /// Multiaddrs (binary form) of the user's home relays.
    pub relays: Vec<serde_bytes::ByteBuf>,
    /// The user's devices and their addresses.
    pub devices: Vec<DeviceAddresses>,
    /// When the record was issued; a newer record replaces an older one.
    pub issued_at: UnixMillis,
    /// Ed25519 signature by the identity key over all other fields.
    pub signature: Signature,
}

/// The first bytes of a [`UserRecordV3`] (see [`USER_RECORD_V2_MAGIC`]).
pub const USER_RECORD_V3_MAGIC: [u8; 4] = *b"KUR3";

/// Prekeys a user hands to one of its relays, which then serves PQXDH bundles for it (each
/// one-time prekey, classical or KEM, at most once). The relay authenticates the uploader by
/// its PeerId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyUpload {
    /// The uploader's identity.
    pub identity: IdentityBinding,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// The current last-resort KEM prekey.
    pub kem_last_resort: KemPreKeyPublic,
    /// Fresh one-time prekeys to add.
    pub one_time_prekeys: Vec<OneTimePreKeyPublic>,
    /// Fresh one-time KEM prekeys to add.
    pub kem_one_time_prekeys: Vec<KemPreKeyPublic>,
}

/// A version-1 (classical) upload: still decoded, refused by relays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassicalPreKeyUpload {
    /// The uploader's identity.
    pub identity: IdentityBinding,
    /// The signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// One-time prekeys.
    pub one_time_prekeys: Vec<OneTimePreKeyPublic>,
}

/// A request on `/kith/prekey/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreKeyRequest {
    /// Asks for `user`'s bundle.
    Fetch {
        /// Whose bundle.
        user: UserId,
    },
    /// A classical upload from a version-1 node (refused: relays serve PQXDH bundles only).
    ClassicalUpload(Box<ClassicalPreKeyUpload>),
    /// Stores prekeys for the connected user (relays only).
    Upload(Box<PreKeyUpload>),
}

/// A response on `/kith/prekey/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreKeyResponse {
    /// A classical bundle from a version-1 node (never used to start a session).
    ClassicalBundle(Box<ClassicalPreKeyBundle>),
    /// This peer has no bundle for that user.
    NotFound,
    /// The upload was stored; the count of one-time prekeys now held.
    Uploaded {
        /// One-time prekeys the relay now holds for the uploader.
        one_time_prekeys: u32,
    },
    /// The request was refused.
    Refused(PreKeyRefusal),
    /// The requested PQXDH bundle.
    Bundle(Box<PreKeyBundle>),
}

/// Why a prekey request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreKeyRefusal {
    /// Too many requests from this peer.
    RateLimited,
    /// The uploader is not the identity in the upload, or its signatures are bad.
    Unauthorized,
    /// This peer does not store prekeys for others.
    NotARelay,
    /// The relay's store is full.
    QuotaExceeded,
    /// A classical (version-1) upload: relays serve PQXDH bundles only.
    Classical,
}

impl Frame for PreKeyRequest {
    const NAME: &'static str = "prekey request";
    const MAX_BYTES: usize = MAX_PREKEY_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Fetch { .. } => Ok(()),
            Self::ClassicalUpload(u) => {
                check_count("one_time_prekeys", u.one_time_prekeys.len(), MAX_PREKEYS_PER_UPLOAD)
            }
            Self::Upload(u) => {
                check_count("one_time_prekeys", u.one_time_prekeys.len(), MAX_PREKEYS_PER_UPLOAD)?;
                check_count(
                    "kem_one_time_prekeys",
                    u.kem_one_time_prekeys.len(),
                    MAX_KEM_PREKEYS_PER_UPLOAD,
                )
            }
        }
    }
}

impl Frame for PreKeyResponse {
    const NAME: &'static str = "prekey response";
    const MAX_BYTES: usize = MAX_PREKEY_FRAME_BYTES;
}

impl Frame for UserRecordV2 {
    const NAME: &'static str = "user record v2";
    const MAX_BYTES: usize = MAX_PREKEY_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        if self.magic != USER_RECORD_V2_MAGIC {
            return Err(Invalid::OutOfRange { field: "magic" });
        }
        validate_addresses(&self.relays, &self.devices)
    }
}

/// The address limits of version-2 and version-3 records.
fn validate_addresses(
    relays: &[serde_bytes::ByteBuf],
    devices: &[DeviceAddresses],
) -> Result<(), Invalid> {
    check_count("relays", relays.len(), MAX_RELAY_ADDRS)?;
    relays.iter().try_for_each(|a| check_len("relay address", a.len(), MAX_ADDR_BYTES))?;
    check_count("devices", devices.len(), MAX_RECORD_DEVICES)?;
    for device in devices {
        check_len("device peer id", device.peer.len(), MAX_ADDR_BYTES)?;
        check_count("direct addresses", device.direct.len(), MAX_DEVICE_ADDRS)?;
        check_count("relayed addresses", device.circuits.len(), MAX_DEVICE_ADDRS)?;
        device
            .direct
            .iter()
            .chain(&device.circuits)
            .try_for_each(|a| check_len("device address", a.len(), MAX_ADDR_BYTES))?;
    }
    Ok(())
}

impl Frame for UserRecordV3 {
    const NAME: &'static str = "user record v3";
    const MAX_BYTES: usize = MAX_PREKEY_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        if self.magic != USER_RECORD_V3_MAGIC {
            return Err(Invalid::OutOfRange { field: "magic" });
        }
        validate_addresses(&self.relays, &self.devices)
    }
}

impl Frame for UserRecord {
    const NAME: &'static str = "user record";
    const MAX_BYTES: usize = MAX_PREKEY_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        check_count("relays", self.relays.len(), MAX_RELAY_ADDRS)?;
        self.relays.iter().try_for_each(|a| check_len("relay address", a.len(), MAX_ADDR_BYTES))
    }
}
