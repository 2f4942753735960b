//! Prekeys: the signed prekey (rotated weekly, kept for a grace period), one-time prekeys
//! (generated in batches, each consumed once), their ML-KEM-768 counterparts for PQXDH (a
//! last-resort KEM prekey rotated with the signed prekey, and one-time KEM prekeys), and the
//! verification of fetched bundles.
//!
//! Invariants: a signed prekey or KEM prekey is only ever published with a valid signature by
//! the identity key over all of its fields; a one-time prekey's secret (classical or KEM) is
//! deleted in the same store transaction as the session it creates; a bundle is only used after
//! [`verify_bundle`] checked every signature, the prekeys' ages and the KEM key's coefficients.

use std::fmt;

use kith_protocol::prekey::{
    KemPreKeyKind, KemPreKeyPublic, OneTimePreKeyPublic, PreKeyBundle, SignedPreKeyPublic,
};
use kith_protocol::{DhPublicKey, KemPublicKey, UnixMillis};

use crate::crypto::sign::{self, SignContext};
use crate::crypto::{DhKeyPair, KemKeyPair, SignatureError};
use crate::identity::{IdentityKeyPair, PublicIdentity};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// How often the signed prekey is replaced (DESIGN: weekly).
pub const SIGNED_PREKEY_ROTATION_MS: u64 = 7 * DAY_MS;

/// How long a replaced signed prekey's secret is kept, so that initial messages sent to it
/// while it was current (and held by a relay up to its 14-day TTL) still decrypt.
pub const SIGNED_PREKEY_GRACE_MS: u64 = 28 * DAY_MS;

/// A bundle whose signed prekey is older than this is refused as stale: its secret may already
/// be gone (rotation period plus grace period).
pub const SIGNED_PREKEY_MAX_AGE_MS: u64 = SIGNED_PREKEY_ROTATION_MS + SIGNED_PREKEY_GRACE_MS;

/// How far in the future a signed prekey's timestamp may lie (clock skew between devices).
pub const SIGNED_PREKEY_MAX_FUTURE_MS: u64 = DAY_MS;

/// One-time prekeys generated per batch.
pub const ONE_TIME_PREKEY_BATCH: u32 = 100;

/// A new batch is generated when fewer unused one-time prekeys than this remain.
pub const ONE_TIME_PREKEY_LOW_WATER: usize = 20;

/// Most unused one-time prekeys kept at once (bounds the store; older ones are replaced).
pub const MAX_ONE_TIME_PREKEYS: usize = 1000;

/// One-time KEM prekeys generated per batch (each is 1.2 KiB public, 64 bytes secret).
pub const KEM_ONE_TIME_PREKEY_BATCH: u32 = 50;

/// A new batch of one-time KEM prekeys is generated when fewer unused ones than this remain.
pub const KEM_ONE_TIME_PREKEY_LOW_WATER: usize = 10;

/// Most unused one-time KEM prekeys kept at once.
pub const MAX_KEM_ONE_TIME_PREKEYS: usize = 200;

/// The type byte of `EncodeKEM` (PQXDH §2.4) for ML-KEM-768 in Kith's signatures.
pub const KEM_TYPE_ML_KEM_768: u8 = 0x0a;

/// The bytes a KEM prekey's signature covers: id ‖ kind ‖ creation time ‖ EncodeKEM(key).
fn kem_prekey_parts(
    id: u32,
    kind: KemPreKeyKind,
    created_at: UnixMillis,
    key: &KemPublicKey,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 1 + 8 + 1 + KemPublicKey::LEN);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(match kind {
        KemPreKeyKind::LastResort => 0,
        KemPreKeyKind::OneTime => 1,
    });
    out.extend_from_slice(&created_at.to_be_bytes());
    out.push(KEM_TYPE_ML_KEM_768);
    out.extend_from_slice(key.0.as_slice());
    out
}

/// An ML-KEM-768 prekey with its secret: PQXDH's last-resort PQSPK or a one-time PQOPK.
#[derive(Clone)]
pub struct KemPreKey {
    pub(crate) id: u32,
    pub(crate) pair: KemKeyPair,
    pub(crate) kind: KemPreKeyKind,
    pub(crate) created_at: UnixMillis,
    pub(crate) signature: kith_protocol::Signature,
}

impl KemPreKey {
    /// Generates and signs a new KEM prekey.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(
        identity: &IdentityKeyPair,
        id: u32,
        kind: KemPreKeyKind,
        now: UnixMillis,
        rng: &mut R,
    ) -> Self {
        let pair = KemKeyPair::generate(rng);
        let signature = identity
            .sign(SignContext::KemPreKey, &[&kem_prekey_parts(id, kind, now, pair.public())]);
        Self { id, pair, kind, created_at: now, signature }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Last-resort or one-time.
    pub fn kind(&self) -> KemPreKeyKind {
        self.kind
    }

    /// When it was generated.
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// The public part, as published.
    pub fn public(&self) -> KemPreKeyPublic {
        KemPreKeyPublic {
            id: self.id,
            key: self.pair.public().clone(),
            kind: self.kind,
            created_at: self.created_at,
            signature: self.signature,
        }
    }
}

impl fmt::Debug for KemPreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KemPreKey")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("public", self.pair.public())
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The bytes a signed prekey's signature covers: id ‖ key ‖ creation time.
fn signed_prekey_parts(id: u32, key: &DhPublicKey, created_at: UnixMillis) -> [u8; 44] {
    let mut out = [0u8; 44];
    out[..4].copy_from_slice(&id.to_be_bytes());
    out[4..36].copy_from_slice(&key.0);
    out[36..].copy_from_slice(&created_at.to_be_bytes());
    out
}

/// A signed prekey with its secret.
#[derive(Clone)]
pub struct SignedPreKey {
    pub(crate) id: u32,
    pub(crate) pair: DhKeyPair,
    pub(crate) created_at: UnixMillis,
    pub(crate) signature: kith_protocol::Signature,
}

impl SignedPreKey {
    /// Generates and signs a new signed prekey.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(
        identity: &IdentityKeyPair,
        id: u32,
        now: UnixMillis,
        rng: &mut R,
    ) -> Self {
        let pair = DhKeyPair::generate(rng);
        let signature = identity
            .sign(SignContext::SignedPreKey, &[&signed_prekey_parts(id, &pair.public(), now)]);
        Self { id, pair, created_at: now, signature }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// When it was generated.
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// The public part, as published.
    pub fn public(&self) -> SignedPreKeyPublic {
        SignedPreKeyPublic {
            id: self.id,
            key: self.pair.public(),
            created_at: self.created_at,
            signature: self.signature,
        }
    }
}

impl fmt::Debug for SignedPreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreKey")
            .field("id", &self.id)
            .field("public", &self.pair.public())
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A one-time prekey with its secret.
#[derive(Clone)]
pub struct OneTimePreKey {
    pub(crate) id: u32,
    pub(crate) pair: DhKeyPair,
}

impl OneTimePreKey {
    /// Generates a one-time prekey.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(id: u32, rng: &mut R) -> Self {
        Self { id, pair: DhKeyPair::generate(rng) }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The public part, as published.
    pub fn public(&self) -> OneTimePreKeyPublic {
        OneTimePreKeyPublic { id: self.id, key: self.pair.public() }
    }
}

impl fmt::Debug for OneTimePreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePreKey")
            .field("id", &self.id)
            .field("public", &self.pair.public())
            .finish_non_exhaustive()
    }
}

/// Why a prekey bundle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The X25519 identity key is not signed by the Ed25519 identity key.
    #[error("the bundle's identity binding signature is invalid")]
    IdentitySignature,
    /// The signed prekey's signature is invalid.
    #[error("the bundle's signed prekey signature is invalid")]
    SignedPreKeySignature,
    /// The bundle belongs to someone other than the user it was fetched for.
    #[error("the bundle belongs to a different user")]
    WrongUser,
    /// The signed prekey or last-resort KEM prekey is too old (its secret may be deleted), or
    /// a prekey is dated in the future.
    #[error("the bundle's signed prekey is stale")]
    Stale,
    /// The KEM prekey's signature is invalid (or was stripped and replaced).
    #[error("the bundle's post-quantum prekey signature is invalid")]
    KemPreKeySignature,
    /// The KEM prekey fails FIPS 203's encapsulation key check.
    #[error("the bundle's post-quantum prekey is not a valid ML-KEM-768 key")]
    InvalidKemKey,
    /// The peer offered no post-quantum prekey (a version-1 bundle or record): Kith does not
    /// fall back to classical X3DH, whose sessions a quantum computer could later decrypt.
    #[error(
        "the peer published no post-quantum (ML-KEM) prekey: a classical X3DH session is refused"
    )]
    Classical,
}

/// A KEM prekey whose signature and key have been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedKemPreKey {
    /// Its id.
    pub id: u32,
    /// Last-resort or one-time.
    pub kind: KemPreKeyKind,
    /// The encapsulation key (passed FIPS 203's modulus check).
    pub key: KemPublicKey,
}

/// A prekey bundle whose signatures and freshness have been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// The owner's verified identity.
    pub identity: PublicIdentity,
    /// The signed prekey's id.
    pub signed_prekey_id: u32,
    /// The signed prekey.
    pub signed_prekey: DhPublicKey,
    /// The one-time prekey, if the bundle had one.
    pub one_time_prekey: Option<OneTimePreKeyPublic>,
    /// The KEM prekey.
    pub kem_prekey: VerifiedKemPreKey,
}

/// Verifies a KEM prekey published by `owner` at time `now`: the signature over all its fields
/// (`verify_strict`, domain-separated), its age (a last-resort key ages out like the signed
/// prekey) and the key itself (FIPS 203 §7.2 modulus check).
pub fn verify_kem_prekey(
    owner: &kith_protocol::UserId,
    kem: &KemPreKeyPublic,
    now: UnixMillis,
) -> Result<(), BundleError> {
    sign::verify(
        owner,
        SignContext::KemPreKey,
        &[&kem_prekey_parts(kem.id, kem.kind, kem.created_at, &kem.key)],
        &kem.signature,
    )
    .map_err(|SignatureError| BundleError::KemPreKeySignature)?;
    let too_old = kem.kind == KemPreKeyKind::LastResort
        && now.saturating_sub(kem.created_at) > SIGNED_PREKEY_MAX_AGE_MS;
    if too_old || kem.created_at.saturating_sub(now) > SIGNED_PREKEY_MAX_FUTURE_MS {
        return Err(BundleError::Stale);
    }
    crate::crypto::kem::check(&kem.key).map_err(|_| BundleError::InvalidKemKey)
}

/// Verifies a bundle fetched for `expected` at time `now`: the identity binding, the signed
/// prekey and KEM prekey signatures (all `verify_strict`, domain-separated), the prekeys' ages
/// and the KEM key (FIPS 203 §7.2).
pub fn verify_bundle(
    bundle: &PreKeyBundle,
    expected: &kith_protocol::UserId,
    now: UnixMillis,
) -> Result<VerifiedBundle, BundleError> {
    if &bundle.identity.user != expected {
        return Err(BundleError::WrongUser);
    }
    let identity = PublicIdentity::verify(&bundle.identity)
        .map_err(|SignatureError| BundleError::IdentitySignature)?;
    let spk = &bundle.signed_prekey;
    sign::verify(
        &identity.user(),
        SignContext::SignedPreKey,
        &[&signed_prekey_parts(spk.id, &spk.key, spk.created_at)],
        &spk.signature,
    )
    .map_err(|SignatureError| BundleError::SignedPreKeySignature)?;
    let too_old = now.saturating_sub(spk.created_at) > SIGNED_PREKEY_MAX_AGE_MS;
    let in_future = spk.created_at.saturating_sub(now) > SIGNED_PREKEY_MAX_FUTURE_MS;
    if too_old || in_future {
        return Err(BundleError::Stale);
    }
    let kem = &bundle.kem_prekey;
    verify_kem_prekey(&identity.user(), kem, now)?;
    Ok(VerifiedBundle {
        identity,
        signed_prekey_id: spk.id,
        signed_prekey: spk.key,
        one_time_prekey: bundle.one_time_prekey,
        kem_prekey: VerifiedKemPreKey { id: kem.id, kind: kem.kind, key: kem.key.clone() },
    })
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn bundle(rng: &mut ChaCha20Rng, now: UnixMillis) -> (IdentityKeyPair, PreKeyBundle) {
        let id = IdentityKeyPair::generate(rng);
        let spk = SignedPreKey::generate(&id, 1, now, rng);
        let opk = OneTimePreKey::generate(5, rng);
        let kem = KemPreKey::generate(&id, 7, KemPreKeyKind::LastResort, now, rng);
        let bundle = PreKeyBundle {
            identity: id.binding(),
            signed_prekey: spk.public(),
            one_time_prekey: Some(opk.public()),
            kem_prekey: kem.public(),
        };
        (id, bundle)
    }

    #[test]
    fn forged_prekey_bundle_signature_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let now = 1_700_000_000_000;
        let (id, good) = bundle(&mut rng, now);
        let verified = verify_bundle(&good, &id.user_id(), now).unwrap();
        assert_eq!(verified.identity, id.public());

        // A relay swaps in its own signed prekey.
        let mut forged = good.clone();
        forged.signed_prekey.key = DhKeyPair::generate(&mut rng).public();
        assert_eq!(
            verify_bundle(&forged, &id.user_id(), now),
            Err(BundleError::SignedPreKeySignature)
        );

        // Or re-dates it, or flips a signature bit.
        let mut forged = good.clone();
        forged.signed_prekey.created_at += 1;
        assert_eq!(
            verify_bundle(&forged, &id.user_id(), now),
            Err(BundleError::SignedPreKeySignature)
        );
        let mut forged = good.clone();
        forged.signed_prekey.signature.0[10] ^= 1;
        assert_eq!(
            verify_bundle(&forged, &id.user_id(), now),
            Err(BundleError::SignedPreKeySignature)
        );

        // Or swaps the X25519 identity key.
        let mut forged = good.clone();
        forged.identity.dh_key = DhKeyPair::generate(&mut rng).public();
        assert_eq!(verify_bundle(&forged, &id.user_id(), now), Err(BundleError::IdentitySignature));

        // Someone else's valid bundle is not Alice's.
        let (_, other) = bundle(&mut rng, now);
        assert_eq!(verify_bundle(&other, &id.user_id(), now), Err(BundleError::WrongUser));

        // A signed prekey from another identity does not verify under this one.
        let other_id = IdentityKeyPair::generate(&mut rng);
        let mut forged = good.clone();
        forged.signed_prekey = SignedPreKey::generate(&other_id, 1, now, &mut rng).public();
        assert_eq!(
            verify_bundle(&forged, &id.user_id(), now),
            Err(BundleError::SignedPreKeySignature)
        );

        // Every field of the KEM prekey is signed: key, id, kind, date, signature.
        type Tamper = (&'static str, fn(&mut KemPreKeyPublic));
        let tamper: [Tamper; 5] = [
            ("key", |k| k.key.0[100] ^= 1),
            ("id", |k| k.id += 1),
            ("kind", |k| k.kind = KemPreKeyKind::OneTime),
            ("created_at", |k| k.created_at -= 1),
            ("signature", |k| k.signature.0[3] ^= 1),
        ];
        for (field, change) in tamper {
            let mut forged = good.clone();
            change(&mut forged.kem_prekey);
            assert_eq!(
                verify_bundle(&forged, &id.user_id(), now),
                Err(BundleError::KemPreKeySignature),
                "{field}"
            );
        }
        // A downgrade: the PQ signature stripped (zeroed) or replaced by another identity's.
        let mut forged = good.clone();
        forged.kem_prekey.signature = kith_protocol::Signature([0; 64]);
        assert_eq!(
            verify_bundle(&forged, &id.user_id(), now),
            Err(BundleError::KemPreKeySignature)
        );
        let mut forged = good.clone();
        forged.kem_prekey =
            KemPreKey::generate(&other_id, 7, KemPreKeyKind::LastResort, now, &mut rng).public();
        assert_eq!(
            verify_bundle(&forged, &id.user_id(), now),
            Err(BundleError::KemPreKeySignature)
        );
    }

    #[test]
    fn stale_and_future_signed_prekeys_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let now = 1_700_000_000_000;
        let (id, good) = bundle(&mut rng, now);
        assert!(verify_bundle(&good, &id.user_id(), now + SIGNED_PREKEY_MAX_AGE_MS).is_ok());
        assert_eq!(
            verify_bundle(&good, &id.user_id(), now + SIGNED_PREKEY_MAX_AGE_MS + 1),
            Err(BundleError::Stale)
        );
        assert_eq!(
            verify_bundle(&good, &id.user_id(), now - SIGNED_PREKEY_MAX_FUTURE_MS - 1),
            Err(BundleError::Stale)
        );
    }

    #[test]
    fn a_validly_signed_unreduced_kem_key_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let now = 1_700_000_000_000;
        let (id, mut bundle) = bundle(&mut rng, now);
        let kem = &mut bundle.kem_prekey;
        kem.key.0[0] = 0xff;
        kem.key.0[1] |= 0x0f;
        kem.signature = id.sign(
            SignContext::KemPreKey,
            &[&kem_prekey_parts(kem.id, kem.kind, kem.created_at, &kem.key)],
        );
        assert_eq!(verify_bundle(&bundle, &id.user_id(), now), Err(BundleError::InvalidKemKey));
    }

    #[test]
    fn stale_last_resort_kem_prekeys_are_refused_one_time_ones_are_not() {
        let mut rng = ChaCha20Rng::seed_from_u64(15);
        let now = 1_700_000_000_000;
        let id = IdentityKeyPair::generate(&mut rng);
        let later = now + SIGNED_PREKEY_MAX_AGE_MS + 1;
        let old_last = KemPreKey::generate(&id, 1, KemPreKeyKind::LastResort, now, &mut rng);
        assert_eq!(
            verify_kem_prekey(&id.user_id(), &old_last.public(), later),
            Err(BundleError::Stale)
        );
        let old_one = KemPreKey::generate(&id, 2, KemPreKeyKind::OneTime, now, &mut rng);
        assert_eq!(verify_kem_prekey(&id.user_id(), &old_one.public(), later), Ok(()));
        let future = KemPreKey::generate(
            &id,
            3,
            KemPreKeyKind::OneTime,
            now + SIGNED_PREKEY_MAX_FUTURE_MS + 1,
            &mut rng,
        );
        assert_eq!(
            verify_kem_prekey(&id.user_id(), &future.public(), now),
            Err(BundleError::Stale)
        );
    }

    #[test]
    fn prekey_debug_shows_no_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&id, 1, 0, &mut rng);
        let opk = OneTimePreKey::generate(1, &mut rng);
        for (shown, secret) in
            [(format!("{spk:?}"), spk.pair.secret()), (format!("{opk:?}"), opk.pair.secret())]
        {
            assert!(!shown.contains(&hex::encode(&secret.expose()[..4])), "{shown}");
            assert!(
                !shown.contains(&format!("{}, {}", secret.expose()[0], secret.expose()[1])),
                "{shown}"
            );
        }
    }
}
