//! The user record: what a user publishes in the DHT so that others can find their relays and
//! start a session while they are offline. It carries the identity binding, the current
//! signed prekey and last-resort KEM prekey (never one-time prekeys: a DHT cannot hand each out
//! once), the user's relays, where each of the user's devices can be dialed, and an issue
//! time, all signed by the identity key ([`UserRecordV3`]). Version-2 and version-1 records
//! (classical: no KEM prekey) are still read ([`read_record`]) for their addresses, but no
//! session starts from them.

use kith_protocol::prekey::{
    ClassicalPreKeyBundle, DeviceAddresses, KemPreKeyPublic, PreKeyBundle, SignedPreKeyPublic,
    USER_RECORD_V2_MAGIC, USER_RECORD_V3_MAGIC, UserRecord, UserRecordV2, UserRecordV3,
};
use kith_protocol::{UnixMillis, UserId};

use crate::crypto::sign::{self, SignContext};
use crate::identity::IdentityKeyPair;

/// A record issued further in the future than this is refused (clock skew allowance).
pub const MAX_RECORD_FUTURE_MS: u64 = 24 * 60 * 60 * 1000;

/// The DHT key under which `user`'s record is stored.
pub fn record_key(user: &UserId) -> Vec<u8> {
    let mut key = b"/kith/user/".to_vec();
    key.extend_from_slice(&user.0);
    key
}

/// The bytes the record signature covers: every other field, in a fixed layout.
fn signed_parts(
    identity: &kith_protocol::prekey::IdentityBinding,
    spk: &SignedPreKeyPublic,
    relays: &[serde_bytes::ByteBuf],
    issued_at: UnixMillis,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&identity.user.0);
    out.extend_from_slice(&identity.dh_key.0);
    out.extend_from_slice(&identity.signature.0);
    out.extend_from_slice(&spk.id.to_be_bytes());
    out.extend_from_slice(&spk.key.0);
    out.extend_from_slice(&spk.created_at.to_be_bytes());
    out.extend_from_slice(&spk.signature.0);
    out.extend_from_slice(&u32::try_from(relays.len()).unwrap_or(u32::MAX).to_be_bytes());
    for relay in relays {
        out.extend_from_slice(&u32::try_from(relay.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(relay);
    }
    out.extend_from_slice(&issued_at.to_be_bytes());
    out
}

/// The bytes a version-2 record's signature covers (under its own signing context).
fn signed_parts_v2(
    identity: &kith_protocol::prekey::IdentityBinding,
    spk: &SignedPreKeyPublic,
    relays: &[serde_bytes::ByteBuf],
    devices: &[DeviceAddresses],
    issued_at: UnixMillis,
) -> Vec<u8> {
    let mut out = signed_parts(identity, spk, relays, issued_at);
    let mut list = |items: &[serde_bytes::ByteBuf]| {
        out.extend_from_slice(&u32::try_from(items.len()).unwrap_or(u32::MAX).to_be_bytes());
        for item in items {
            out.extend_from_slice(&u32::try_from(item.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(item);
        }
    };
    list(&devices.iter().map(|d| d.peer.clone()).collect::<Vec<_>>());
    for device in devices {
        list(&device.direct);
        list(&device.circuits);
    }
    out
}

/// The bytes a version-3 record's signature covers: version 2's and the KEM prekey's fields.
fn signed_parts_v3(
    identity: &kith_protocol::prekey::IdentityBinding,
    spk: &SignedPreKeyPublic,
    kem: &KemPreKeyPublic,
    relays: &[serde_bytes::ByteBuf],
    devices: &[DeviceAddresses],
    issued_at: UnixMillis,
) -> Vec<u8> {
    let mut out = signed_parts_v2(identity, spk, relays, devices, issued_at);
    out.extend_from_slice(&kem.id.to_be_bytes());
    out.push(match kem.kind {
        kith_protocol::prekey::KemPreKeyKind::LastResort => 0,
        kith_protocol::prekey::KemPreKeyKind::OneTime => 1,
    });
    out.extend_from_slice(&kem.created_at.to_be_bytes());
    out.extend_from_slice(kem.key.0.as_slice());
    out.extend_from_slice(&kem.signature.0);
    out
}

/// Signs a record for `identity`: its prekeys, relays and devices' addresses.
pub fn sign_record_v3(
    identity: &IdentityKeyPair,
    signed_prekey: SignedPreKeyPublic,
    kem_prekey: KemPreKeyPublic,
    relays: Vec<Vec<u8>>,
    devices: Vec<DeviceAddresses>,
    issued_at: UnixMillis,
) -> UserRecordV3 {
    let binding = identity.binding();
    let relays: Vec<serde_bytes::ByteBuf> =
        relays.into_iter().map(serde_bytes::ByteBuf::from).collect();
    let parts =
        signed_parts_v3(&binding, &signed_prekey, &kem_prekey, &relays, &devices, issued_at);
    let signature = identity.sign(SignContext::UserRecordV3, &[&parts]);
    UserRecordV3 {
        magic: USER_RECORD_V3_MAGIC,
        identity: binding,
        signed_prekey,
        kem_prekey,
        relays,
        devices,
        issued_at,
        signature,
    }
}

/// Signs a version-2 (classical) record for `identity` (what nodes before PQXDH published;
/// kept for tests of reading old records).
pub fn sign_record_v2(
    identity: &IdentityKeyPair,
    signed_prekey: SignedPreKeyPublic,
    relays: Vec<Vec<u8>>,
    devices: Vec<DeviceAddresses>,
    issued_at: UnixMillis,
) -> UserRecordV2 {
    let binding = identity.binding();
    let relays: Vec<serde_bytes::ByteBuf> =
        relays.into_iter().map(serde_bytes::ByteBuf::from).collect();
    let parts = signed_parts_v2(&binding, &signed_prekey, &relays, &devices, issued_at);
    let signature = identity.sign(SignContext::UserRecordV2, &[&parts]);
    UserRecordV2 {
        magic: USER_RECORD_V2_MAGIC,
        identity: binding,
        signed_prekey,
        relays,
        devices,
        issued_at,
        signature,
    }
}

/// A verified record of any version, as a reader uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedRecord {
    /// What an initiator needs for PQXDH (no one-time prekeys); `None` for a classical
    /// (version 1 or 2) record, from which no session starts ([`crate::prekeys::BundleError::Classical`]).
    pub bundle: Option<PreKeyBundle>,
    /// The user's home relays (binary multiaddrs).
    pub relays: Vec<Vec<u8>>,
    /// The user's devices and their addresses (none in a version-1 record).
    pub devices: Vec<DeviceAddresses>,
    /// When it was issued.
    pub issued_at: UnixMillis,
}

/// Decodes and verifies a record found for `expected`: version 3, 2 or 1.
pub fn read_record(
    bytes: &[u8],
    expected: &UserId,
    now: UnixMillis,
) -> Result<VerifiedRecord, RecordError> {
    if let Ok(record) = kith_protocol::decode::<UserRecordV3>(bytes)
        && let Ok(verified) = verify_record_v3(&record, expected, now)
    {
        return Ok(verified);
    }
    if let Ok(record) = kith_protocol::decode::<UserRecordV2>(bytes)
        && let Ok(verified) = verify_record_v2(&record, expected, now)
    {
        return Ok(verified);
    }
    let record = kith_protocol::decode::<UserRecord>(bytes).map_err(|_| RecordError::Malformed)?;
    verify_record(&record, expected, now)?;
    Ok(VerifiedRecord {
        bundle: None,
        relays: record.relays.into_iter().map(serde_bytes::ByteBuf::into_vec).collect(),
        devices: Vec::new(),
        issued_at: record.issued_at,
    })
}

/// Verifies a version-3 record found for `expected`: owner, signature, issue time. The bundle
/// it yields still goes through [`crate::prekeys::verify_bundle`] (prekey signatures, ages and
/// the KEM key's check).
pub fn verify_record_v3(
    record: &UserRecordV3,
    expected: &UserId,
    now: UnixMillis,
) -> Result<VerifiedRecord, RecordError> {
    if record.identity.user != *expected {
        return Err(RecordError::WrongUser);
    }
    let parts = signed_parts_v3(
        &record.identity,
        &record.signed_prekey,
        &record.kem_prekey,
        &record.relays,
        &record.devices,
        record.issued_at,
    );
    sign::verify(expected, SignContext::UserRecordV3, &[&parts], &record.signature)
        .map_err(|_| RecordError::BadSignature)?;
    if record.issued_at.saturating_sub(now) > MAX_RECORD_FUTURE_MS {
        return Err(RecordError::FromTheFuture);
    }
    Ok(VerifiedRecord {
        bundle: Some(PreKeyBundle {
            identity: record.identity,
            signed_prekey: record.signed_prekey,
            one_time_prekey: None,
            kem_prekey: record.kem_prekey.clone(),
        }),
        relays: record.relays.iter().map(|r| r.to_vec()).collect(),
        devices: record.devices.clone(),
        issued_at: record.issued_at,
    })
}

/// Verifies a version-2 record found for `expected`: owner, signature, issue time.
pub fn verify_record_v2(
    record: &UserRecordV2,
    expected: &UserId,
    now: UnixMillis,
) -> Result<VerifiedRecord, RecordError> {
    if record.identity.user != *expected {
        return Err(RecordError::WrongUser);
    }
    let parts = signed_parts_v2(
        &record.identity,
        &record.signed_prekey,
        &record.relays,
        &record.devices,
        record.issued_at,
    );
    sign::verify(expected, SignContext::UserRecordV2, &[&parts], &record.signature)
        .map_err(|_| RecordError::BadSignature)?;
    if record.issued_at.saturating_sub(now) > MAX_RECORD_FUTURE_MS {
        return Err(RecordError::FromTheFuture);
    }
    Ok(VerifiedRecord {
        bundle: None,
        relays: record.relays.iter().map(|r| r.to_vec()).collect(),
        devices: record.devices.clone(),
        issued_at: record.issued_at,
    })
}

/// Signs a version-1 record for `identity` (what nodes before version 2 published; kept for
/// tests of reading old records).
pub fn sign_record(
    identity: &IdentityKeyPair,
    signed_prekey: SignedPreKeyPublic,
    relays: Vec<Vec<u8>>,
    issued_at: UnixMillis,
) -> UserRecord {
    let binding = identity.binding();
    let relays: Vec<serde_bytes::ByteBuf> =
        relays.into_iter().map(serde_bytes::ByteBuf::from).collect();
    let signature = identity.sign(
        SignContext::UserRecord,
        &[&signed_parts(&binding, &signed_prekey, &relays, issued_at)],
    );
    UserRecord { identity: binding, signed_prekey, relays, issued_at, signature }
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is stored under another user's key.
    #[error("the record belongs to another user")]
    WrongUser,
    /// The signature does not verify.
    #[error("the record's signature is invalid")]
    BadSignature,
    /// Issued in the future.
    #[error("the record is dated in the future")]
    FromTheFuture,
    /// Not a record of any version.
    #[error("the record does not decode")]
    Malformed,
}

/// Verifies a version-1 record found for `expected`: owner and signature (`verify_strict`). Its
/// classical bundle never starts a session.
pub fn verify_record(
    record: &UserRecord,
    expected: &UserId,
    now: UnixMillis,
) -> Result<ClassicalPreKeyBundle, RecordError> {
    if record.identity.user != *expected {
        return Err(RecordError::WrongUser);
    }
    let parts =
        signed_parts(&record.identity, &record.signed_prekey, &record.relays, record.issued_at);
    sign::verify(expected, SignContext::UserRecord, &[&parts], &record.signature)
        .map_err(|_| RecordError::BadSignature)?;
    if record.issued_at.saturating_sub(now) > MAX_RECORD_FUTURE_MS {
        return Err(RecordError::FromTheFuture);
    }
    Ok(ClassicalPreKeyBundle {
        identity: record.identity,
        signed_prekey: record.signed_prekey,
        one_time_prekey: None,
    })
}

/// Whether a verified record `new` may replace `stored`, the record already kept for the same
/// user: only one issued no earlier does, so an old record replayed into the DHT cannot roll a
/// user back to an earlier signed prekey or relay list.
pub fn supersedes(new: &VerifiedRecord, stored: &VerifiedRecord) -> bool {
    new.issued_at >= stored.issued_at
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use kith_protocol::prekey::KemPreKeyKind;

    use crate::prekeys::{BundleError, KemPreKey, SignedPreKey, verify_bundle};

    #[test]
    fn records_verify_and_forgeries_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&id, 3, 1000, &mut rng).public();
        let record = sign_record(&id, spk, vec![b"/ip4/1.2.3.4/tcp/1".to_vec()], 1000);
        let bundle = verify_record(&record, &id.user_id(), 1000).unwrap();

        let mut forged = record.clone();
        forged.relays[0] = serde_bytes::ByteBuf::from(b"/ip4/6.6.6.6/tcp/1".to_vec());
        assert_eq!(verify_record(&forged, &id.user_id(), 1000), Err(RecordError::BadSignature));
        let mut forged = record.clone();
        forged.issued_at += 1;
        assert_eq!(verify_record(&forged, &id.user_id(), 1000), Err(RecordError::BadSignature));
        let other = IdentityKeyPair::generate(&mut rng);
        assert_eq!(verify_record(&record, &other.user_id(), 1000), Err(RecordError::WrongUser));
        // Slightly in the future (clock skew) is fine.
        assert_eq!(verify_record(&record, &id.user_id(), 0), Ok(bundle_of(&record)));
        assert_eq!(bundle, bundle_of(&record));
        let late = sign_record(&id, spk, vec![], 1000 + MAX_RECORD_FUTURE_MS + 1);
        assert_eq!(verify_record(&late, &id.user_id(), 1000), Err(RecordError::FromTheFuture));
    }

    fn encoded_v1(id: &IdentityKeyPair, spk: SignedPreKeyPublic, issued_at: u64) -> Vec<u8> {
        kith_protocol::encode(&sign_record(
            id,
            spk,
            vec![b"/ip4/1.2.3.4/tcp/1".to_vec()],
            issued_at,
        ))
        .unwrap()
    }

    fn device(peer: &[u8]) -> DeviceAddresses {
        DeviceAddresses {
            peer: serde_bytes::ByteBuf::from(peer.to_vec()),
            direct: vec![serde_bytes::ByteBuf::from(b"/ip4/198.51.100.4/tcp/4001".to_vec())],
            circuits: vec![serde_bytes::ByteBuf::from(b"/relay/p2p-circuit".to_vec())],
        }
    }

    #[test]
    fn an_older_record_does_not_replace_a_newer_one_whatever_their_versions() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&id, 3, 1000, &mut rng).public();
        let user = id.user_id();
        let old = read_record(&encoded_v1(&id, spk, 1000), &user, 3000).unwrap();
        let new = sign_record_v2(&id, spk, vec![], vec![device(b"me")], 2000);
        let new = read_record(&kith_protocol::encode(&new).unwrap(), &user, 3000).unwrap();
        assert!(supersedes(&new, &old));
        assert!(supersedes(&new, &new), "republishing the same record is fine");
        assert!(!supersedes(&old, &new));
        let kem = KemPreKey::generate(&id, 1, KemPreKeyKind::LastResort, 1000, &mut rng).public();
        let newest = sign_record_v3(&id, spk, kem, vec![], vec![], 2500);
        let newest = read_record(&kith_protocol::encode(&newest).unwrap(), &user, 3000).unwrap();
        assert!(supersedes(&newest, &new) && supersedes(&newest, &old));
        assert!(!supersedes(&new, &newest));
    }

    #[test]
    fn version_2_records_carry_device_addresses_and_version_1_records_still_read() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&id, 3, 1000, &mut rng).public();
        let user = id.user_id();
        let v2 = sign_record_v2(&id, spk, vec![b"/r".to_vec()], vec![device(b"me")], 1000);
        let bytes = kith_protocol::encode(&v2).unwrap();
        let read = read_record(&bytes, &user, 1000).unwrap();
        assert_eq!(read.devices, vec![device(b"me")]);
        assert_eq!(read.relays, vec![b"/r".to_vec()]);
        // A classical record: addresses, but no bundle to start a session from.
        assert_eq!(read.bundle, None);
        // A version-1 record reads, with no devices.
        let old = read_record(&encoded_v1(&id, spk, 900), &user, 1000).unwrap();
        assert!(old.devices.is_empty() && old.bundle.is_none());
        assert_eq!(old.relays, vec![b"/ip4/1.2.3.4/tcp/1".to_vec()]);
        // Forged addresses, a version-1 signature on version-2 fields, the wrong owner.
        let mut forged = v2.clone();
        forged.devices[0].direct[0] = serde_bytes::ByteBuf::from(b"/ip4/6.6.6.6/tcp/1".to_vec());
        assert_eq!(verify_record_v2(&forged, &user, 1000), Err(RecordError::BadSignature));
        let bytes = kith_protocol::encode(&forged).unwrap();
        assert!(read_record(&bytes, &user, 1000).is_err());
        let v1 = sign_record(&id, spk, vec![b"/r".to_vec()], 1000);
        let mut crossed = v2.clone();
        crossed.devices.clear();
        crossed.signature = v1.signature;
        assert_eq!(verify_record_v2(&crossed, &user, 1000), Err(RecordError::BadSignature));
        let other = IdentityKeyPair::generate(&mut rng);
        assert_eq!(verify_record_v2(&v2, &other.user_id(), 1000), Err(RecordError::WrongUser));
        assert_eq!(read_record(b"garbage", &user, 1000), Err(RecordError::Malformed));
    }

    #[test]
    fn version_3_records_carry_the_last_resort_kem_prekey_and_every_field_is_signed() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&id, 3, 1000, &mut rng).public();
        let kem = KemPreKey::generate(&id, 4, KemPreKeyKind::LastResort, 1000, &mut rng).public();
        let user = id.user_id();
        let v3 =
            sign_record_v3(&id, spk, kem.clone(), vec![b"/r".to_vec()], vec![device(b"me")], 1000);
        let bytes = kith_protocol::encode(&v3).unwrap();
        let read = read_record(&bytes, &user, 1000).unwrap();
        let bundle = read.bundle.clone().unwrap();
        assert_eq!(bundle.kem_prekey, kem);
        assert_eq!(bundle.one_time_prekey, None);
        assert!(verify_bundle(&bundle, &user, 1000).is_ok());
        assert_eq!(read.devices, vec![device(b"me")]);
        // The KEM prekey swapped for one of the same owner, or its bytes changed.
        let other_kem =
            KemPreKey::generate(&id, 5, KemPreKeyKind::LastResort, 1000, &mut rng).public();
        let mut forged = v3.clone();
        forged.kem_prekey = other_kem;
        assert_eq!(verify_record_v3(&forged, &user, 1000), Err(RecordError::BadSignature));
        let mut forged = v3.clone();
        forged.kem_prekey.key.0[9] ^= 1;
        assert_eq!(verify_record_v3(&forged, &user, 1000), Err(RecordError::BadSignature));
        // A downgrade: the version-3 record re-labelled as version 2 (KEM prekey dropped)
        // does not verify, and a genuine classical record starts no session.
        let v2 = UserRecordV2 {
            magic: USER_RECORD_V2_MAGIC,
            identity: v3.identity,
            signed_prekey: v3.signed_prekey,
            relays: v3.relays.clone(),
            devices: v3.devices.clone(),
            issued_at: v3.issued_at,
            signature: v3.signature,
        };
        assert_eq!(verify_record_v2(&v2, &user, 1000), Err(RecordError::BadSignature));
        let classical = sign_record_v2(&id, spk, vec![], vec![], 1000);
        let read = read_record(&kith_protocol::encode(&classical).unwrap(), &user, 1000).unwrap();
        assert_eq!(read.bundle.ok_or(BundleError::Classical), Err(BundleError::Classical));
        // A stale last-resort key in a valid record: the bundle is refused.
        let late = 1000 + crate::prekeys::SIGNED_PREKEY_MAX_AGE_MS + 1;
        let spk_late = SignedPreKey::generate(&id, 6, late, &mut rng).public();
        let stale = sign_record_v3(&id, spk_late, kem, vec![], vec![], late);
        let read = read_record(&kith_protocol::encode(&stale).unwrap(), &user, late).unwrap();
        assert_eq!(verify_bundle(&read.bundle.unwrap(), &user, late), Err(BundleError::Stale));
    }

    fn bundle_of(record: &UserRecord) -> ClassicalPreKeyBundle {
        ClassicalPreKeyBundle {
            identity: record.identity,
            signed_prekey: record.signed_prekey,
            one_time_prekey: None,
        }
    }
}
