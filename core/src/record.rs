//! The user record: what a user publishes in the DHT so that others can find their relays and
//! start a session while they are offline. It carries the identity binding and the current
//! signed prekey (never one-time prekeys: a DHT cannot hand each out once), the user's relays,
//! and an issue time, all signed by the identity key.

use kith_protocol::prekey::{PreKeyBundle, SignedPreKeyPublic, UserRecord};
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

/// Signs a record for `identity`.
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
pub fn supersedes(new: &UserRecord, stored: &UserRecord) -> bool {
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

    #[test]
    fn an_older_record_does_not_replace_a_newer_one() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&id, 3, 1000, &mut rng).public();
        let old = sign_record(&id, spk, vec![], 1000);
        let new = sign_record(&id, spk, vec![b"/ip4/1.2.3.4/tcp/1".to_vec()], 2000);
        assert!(supersedes(&new, &old));
        assert!(supersedes(&new, &new), "republishing the same record is fine");
        assert!(!supersedes(&old, &new));
    }

    fn bundle_of(record: &UserRecord) -> PreKeyBundle {
        PreKeyBundle {
            identity: record.identity,
            signed_prekey: record.signed_prekey,
            one_time_prekey: None,
        }
    }
}
