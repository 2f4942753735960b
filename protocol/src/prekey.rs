//! Prekey bundles and the `/kith/prekey/1` protocol that serves them.
//!
//! A bundle is everything an initiator needs for X3DH: the responder's identity keys, a signed
//! prekey and, when one is left, a one-time prekey. The signatures are checked by `kith-core`;
//! this module only fixes the shapes and limits.

use serde::{Deserialize, Serialize};

use crate::codec::{Frame, Invalid, check_count, check_len};
use crate::ids::{DhPublicKey, Signature, UnixMillis, UserId};
use crate::limits::{
    MAX_ADDR_BYTES, MAX_DEVICE_ADDRS, MAX_PREKEY_FRAME_BYTES, MAX_PREKEYS_PER_UPLOAD,
    MAX_RECORD_DEVICES, MAX_RELAY_ADDRS,
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

/// What an initiator fetches to start a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyBundle {
    /// Whose bundle this is.
    pub identity: IdentityBinding,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// A one-time prekey, handed out at most once; `None` when none are left.
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

/// One-time and signed prekeys a user hands to one of its relays, which then serves bundles for
/// it (each one-time prekey at most once). The relay authenticates the uploader by its PeerId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyUpload {
    /// The uploader's identity.
    pub identity: IdentityBinding,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// Fresh one-time prekeys to add.
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
    /// Stores prekeys for the connected user (relays only).
    Upload(Box<PreKeyUpload>),
}

/// A response on `/kith/prekey/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreKeyResponse {
    /// The requested bundle.
    Bundle(Box<PreKeyBundle>),
    /// This peer has no bundle for that user.
    NotFound,
    /// The upload was stored; the count of one-time prekeys now held.
    Uploaded {
        /// One-time prekeys the relay now holds for the uploader.
        one_time_prekeys: u32,
    },
    /// The request was refused.
    Refused(PreKeyRefusal),
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
}

impl Frame for PreKeyRequest {
    const NAME: &'static str = "prekey request";
    const MAX_BYTES: usize = MAX_PREKEY_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        match self {
            Self::Fetch { .. } => Ok(()),
            Self::Upload(u) => {
                check_count("one_time_prekeys", u.one_time_prekeys.len(), MAX_PREKEYS_PER_UPLOAD)
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
        check_count("relays", self.relays.len(), MAX_RELAY_ADDRS)?;
        self.relays.iter().try_for_each(|a| check_len("relay address", a.len(), MAX_ADDR_BYTES))?;
        check_count("devices", self.devices.len(), MAX_RECORD_DEVICES)?;
        for device in &self.devices {
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
}

impl Frame for UserRecord {
    const NAME: &'static str = "user record";
    const MAX_BYTES: usize = MAX_PREKEY_FRAME_BYTES;

    fn validate(&self) -> Result<(), Invalid> {
        check_count("relays", self.relays.len(), MAX_RELAY_ADDRS)?;
        self.relays.iter().try_for_each(|a| check_len("relay address", a.len(), MAX_ADDR_BYTES))
    }
}
