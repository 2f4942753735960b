//! The user record: what a user publishes in the DHT so that others can find their relays and
//! start a session while they are offline. It carries the identity binding and the current
//! signed prekey (never one-time prekeys: a DHT cannot hand each out once), the user's relays,
//! and an issue time, all signed by the identity key. Version 2 ([`UserRecordV2`]) adds where
//! each of the user's devices can be dialed; version-1 records are still read
//! ([`read_record`]).

use kith_protocol::prekey::{
    DeviceAddresses, PreKeyBundle, SignedPreKeyPublic, USER_RECORD_V2_MAGIC, UserRecord,
    UserRecordV2,
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

/// Signs a version-2 record for `identity`, with its devices' addresses.
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

/// A verified record of either version, as a reader uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedRecord {
    /// What an initiator needs for X3DH (no one-time prekey).
    pub bundle: PreKeyBundle,
    /// The user's home relays (binary multiaddrs).
    pub relays: Vec<Vec<u8>>,
    /// The user's devices and their addresses (none in a version-1 record).
    pub devices: Vec<DeviceAddresses>,
    /// When it was issued.
    pub issued_at: UnixMillis,
}

/// Decodes and verifies a record found for `expected`, version 2 or version 1.
pub fn read_record(
    bytes: &[u8],
    expected: &UserId,
    now: UnixMillis,
) -> Result<VerifiedRecord, RecordError> {
    if let Ok(record) = kith_protocol::decode::<UserRecordV2>(bytes)
        && let Ok(verified) = verify_record_v2(&record, expected, now)
    {
        return Ok(verified);
    }
    let record = kith_protocol::decode::<UserRecord>(bytes).map_err(|_| RecordError::Malformed)?;
    let bundle = verify_record(&record, expected, now)?;
    Ok(VerifiedRecord {
        bundle,
        relays: record.relays.into_iter().map(serde_bytes::ByteBuf::into_vec).collect(),
        devices: Vec::new(),
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
        bundle: PreKeyBundle {
            identity: record.identity,
            signed_prekey: record.signed_prekey,
            one_time_prekey: None,
        },
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
    /// Neither a version-2 nor a version-1 record.
    #[error("the record does not decode")]
    Malformed,
}

/// Verifies a record found for `expected`: owner and signature (`verify_strict`). The bundle it
/// yields still goes through [`crate::prekeys::verify_bundle`] (prekey signature and age).
pub fn verify_record(
    record: &UserRecord,
    expected: &UserId,
    now: UnixMillis,
) -> Result<PreKeyBundle, RecordError> {
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
    Ok(PreKeyBundle {
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
    use crate::prekeys::{SignedPreKey, verify_bundle};

    #[test]
    fn records_verify_and_forgeries_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&id, 3, 1000, &mut rng).public();
        let record = sign_record(&id, spk, vec![b"/ip4/1.2.3.4/tcp/1".to_vec()], 1000);
        let bundle = verify_record(&record, &id.user_id(), 1000).unwrap();
        assert!(verify_bundle(&bundle, &id.user_id(), 1000).is_ok());

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
        assert_eq!(read.bundle, bundle_of_v2(&v2));
        assert!(verify_bundle(&read.bundle, &user, 1000).is_ok());
        // A version-1 record reads, with no devices.
        let old = read_record(&encoded_v1(&id, spk, 900), &user, 1000).unwrap();
        assert!(old.devices.is_empty());
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

    fn bundle_of_v2(record: &UserRecordV2) -> PreKeyBundle {
        PreKeyBundle {
            identity: record.identity,
            signed_prekey: record.signed_prekey,
            one_time_prekey: None,
        }
    }

    fn bundle_of(record: &UserRecord) -> PreKeyBundle {
        PreKeyBundle {
            identity: record.identity,
            signed_prekey: record.signed_prekey,
            one_time_prekey: None,
        }
    }
}
