//! PQXDH key agreement, as in Signal's specification (revision 3, 2024-01-23): X3DH's four
//! X25519 exchanges plus one ML-KEM-768 encapsulation to a signed KEM prekey.
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! (CT, SS) = ML-KEM-768.Encaps(PQPK_B)     PQPK_B = PQOPK_B if one was handed out, else PQSPK_B
//! SK  = HKDF-SHA256(salt = 0^32, ikm = 0xFF^32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4] ‖ SS, info = PQXDH_INFO)
//! AD  = Encode(IK_A) ‖ Encode(IK_B), Encode(IK) = Ed25519 key ‖ X25519 key
//! ```
//!
//! `IK` is the X25519 identity key, bound to the Ed25519 identity by a signature that both sides
//! verify before this module runs; `PQPK_B` is signed by the identity key and checked (FIPS 203
//! §7.2) by [`crate::prekeys::verify_bundle`]. Every DH output is checked to be contributory (a
//! low-order key in any slot is refused). Intermediate secrets and the concatenated input live
//! in zeroizing buffers. ML-KEM's shared secret is `G(m ‖ H(ek))`, so it binds the encapsulation
//! key (the re-encapsulation concern of revision 3's analysis), and the session's first message
//! authenticates everything under SK.
//!
//! There is no classical fallback: a bundle without a KEM prekey never reaches this module.

use kith_protocol::{DhPublicKey, KemCiphertext};
use zeroize::Zeroizing;

use crate::crypto::kdf::hkdf_sha256_zero_salt;
use crate::crypto::kem::{self, InvalidKemKey};
use crate::crypto::{DhKeyPair, KemKeyPair, NonContributory, SecretBytes};
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::prekeys::VerifiedBundle;

/// HKDF info string (PQXDH §2.2: identifies the application, curve, hash and KEM).
const PQXDH_INFO: &[u8] = b"Kith_PQXDH_CURVE25519_SHA-256_ML-KEM-768";

/// Length of the associated data: two encoded identities of 64 bytes each.
pub const ASSOCIATED_DATA_LEN: usize = 128;

/// `Encode(IK_A) ‖ Encode(IK_B)`: the initiator's identity first.
pub(crate) type AssociatedData = [u8; ASSOCIATED_DATA_LEN];

/// Why a handshake could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A DH input is of low order.
    #[error(transparent)]
    NonContributory(#[from] NonContributory),
    /// The KEM prekey fails FIPS 203's encapsulation key check.
    #[error(transparent)]
    InvalidKemKey(#[from] InvalidKemKey),
}

/// Builds the associated data, initiator first.
pub(crate) fn associated_data(
    initiator: &PublicIdentity,
    responder: &PublicIdentity,
) -> AssociatedData {
    let mut ad = [0u8; ASSOCIATED_DATA_LEN];
    for (slot, identity) in ad.chunks_exact_mut(64).zip([initiator, responder]) {
        let (user, dh) = slot.split_at_mut(32);
        user.copy_from_slice(&identity.user().0);
        dh.copy_from_slice(&identity.dh_key().0);
    }
    ad
}

/// What the initiator gets from PQXDH.
pub(crate) struct Initiation {
    /// The shared secret SK.
    pub(crate) shared: SecretBytes,
    /// EK_A's public key, sent in the initial message; also the session's base key.
    pub(crate) base_key: DhPublicKey,
    /// The KEM ciphertext CT, sent in the initial message.
    pub(crate) kem_ciphertext: KemCiphertext,
    /// The associated data.
    pub(crate) associated: AssociatedData,
}

fn derive(dhs: &[SecretBytes], kem_shared: &SecretBytes) -> SecretBytes {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (dhs.len() + 2)));
    ikm.extend_from_slice(&[0xFF; 32]);
    dhs.iter().for_each(|dh| ikm.extend_from_slice(dh.expose()));
    ikm.extend_from_slice(kem_shared.expose());
    let mut shared = SecretBytes::zeroed();
    // 32 bytes is far below HKDF's limit of 8160, so expansion cannot fail.
    let _ = hkdf_sha256_zero_salt(&ikm, PQXDH_INFO, shared.expose_mut());
    shared
}

/// The initiator's side (Alice): agree on SK with the owner of a verified bundle.
pub(crate) fn initiate<R: rand_core::CryptoRng + ?Sized>(
    ours: &IdentityKeyPair,
    bundle: &VerifiedBundle,
    rng: &mut R,
) -> Result<Initiation, HandshakeError> {
    let ephemeral = DhKeyPair::generate(rng);
    let mut dhs = Vec::with_capacity(4);
    dhs.push(ours.dh().agree(&bundle.signed_prekey)?);
    dhs.push(ephemeral.agree(&bundle.identity.dh_key())?);
    dhs.push(ephemeral.agree(&bundle.signed_prekey)?);
    if let Some(opk) = &bundle.one_time_prekey {
        dhs.push(ephemeral.agree(&opk.key)?);
    }
    let (kem_ciphertext, kem_shared) = kem::encapsulate(&bundle.kem_prekey.key, rng)?;
    Ok(Initiation {
        shared: derive(&dhs, &kem_shared),
        base_key: ephemeral.public(),
        kem_ciphertext,
        associated: associated_data(&ours.public(), &bundle.identity),
    })
    // `ephemeral` and `kem_shared` are dropped (and zeroized) here: neither is ever stored.
}

/// The responder's prekeys an initial message names.
pub(crate) struct ResponderKeys<'a> {
    pub(crate) signed_prekey: &'a DhKeyPair,
    pub(crate) one_time_prekey: Option<&'a DhKeyPair>,
    pub(crate) kem_prekey: &'a KemKeyPair,
}

/// The responder's side (Bob): agree on SK from an initial message.
pub(crate) fn respond(
    ours: &IdentityKeyPair,
    keys: &ResponderKeys<'_>,
    theirs: &PublicIdentity,
    base_key: &DhPublicKey,
    kem_ciphertext: &KemCiphertext,
) -> Result<(SecretBytes, AssociatedData), NonContributory> {
    let mut dhs = Vec::with_capacity(4);
    dhs.push(keys.signed_prekey.agree(&theirs.dh_key())?);
    dhs.push(ours.dh().agree(base_key)?);
    dhs.push(keys.signed_prekey.agree(base_key)?);
    if let Some(opk) = keys.one_time_prekey {
        dhs.push(opk.agree(base_key)?);
    }
    let kem_shared = keys.kem_prekey.decapsulate(kem_ciphertext);
    Ok((derive(&dhs, &kem_shared), associated_data(theirs, &ours.public())))
}

#[cfg(test)]
mod tests {
    use kith_protocol::prekey::{KemPreKeyKind, PreKeyBundle};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey, verify_bundle};

    struct Bob {
        identity: IdentityKeyPair,
        spk: SignedPreKey,
        opk: OneTimePreKey,
        kem: KemPreKey,
    }

    fn bob(rng: &mut ChaCha20Rng, kind: KemPreKeyKind) -> Bob {
        let identity = IdentityKeyPair::generate(rng);
        let spk = SignedPreKey::generate(&identity, 1, 0, rng);
        let opk = OneTimePreKey::generate(9, rng);
        let kem = KemPreKey::generate(&identity, 3, kind, 0, rng);
        Bob { identity, spk, opk, kem }
    }

    fn verified(bob: &Bob, with_opk: bool) -> VerifiedBundle {
        let bundle = PreKeyBundle {
            identity: bob.identity.binding(),
            signed_prekey: bob.spk.public(),
            one_time_prekey: with_opk.then(|| bob.opk.public()),
            kem_prekey: bob.kem.public(),
        };
        verify_bundle(&bundle, &bob.identity.user_id(), 0).unwrap()
    }

    #[test]
    fn both_sides_agree_with_and_without_one_time_prekeys() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let alice = IdentityKeyPair::generate(&mut rng);
        for kind in [KemPreKeyKind::OneTime, KemPreKeyKind::LastResort] {
            let b = bob(&mut rng, kind);
            for with_opk in [true, false] {
                let init = initiate(&alice, &verified(&b, with_opk), &mut rng).unwrap();
                let keys = ResponderKeys {
                    signed_prekey: &b.spk.pair,
                    one_time_prekey: with_opk.then_some(&b.opk.pair),
                    kem_prekey: &b.kem.pair,
                };
                let respond_with = |keys: &ResponderKeys<'_>, ct: &KemCiphertext| {
                    respond(&b.identity, keys, &alice.public(), &init.base_key, ct).unwrap()
                };
                let (shared, ad) = respond_with(&keys, &init.kem_ciphertext);
                assert_eq!(shared, init.shared);
                assert_eq!(ad, init.associated);
                // Every input counts: the one-time prekey, the KEM ciphertext, the KEM key.
                if with_opk {
                    let without = ResponderKeys { one_time_prekey: None, ..keys };
                    assert_ne!(respond_with(&without, &init.kem_ciphertext).0, init.shared);
                }
                let mut flipped = init.kem_ciphertext.clone();
                flipped.0[7] ^= 1;
                assert_ne!(respond_with(&keys, &flipped).0, init.shared);
                let other_kem = KemKeyPair::generate(&mut rng);
                let other = ResponderKeys { kem_prekey: &other_kem, ..keys };
                assert_ne!(respond_with(&other, &init.kem_ciphertext).0, init.shared);
            }
        }
    }

    #[test]
    fn the_kem_secret_is_in_the_kdf_input() {
        // The same DH inputs with and without the KEM secret give different keys: a classical
        // X3DH run over the same keys would not reproduce SK.
        let mut rng = ChaCha20Rng::seed_from_u64(23);
        let dhs = [SecretBytes::random(&mut rng), SecretBytes::random(&mut rng)];
        let ss = SecretBytes::random(&mut rng);
        assert_ne!(derive(&dhs, &ss), derive(&dhs, &SecretBytes::zeroed()));
        assert_eq!(derive(&dhs, &ss), derive(&dhs, &ss));
    }

    #[test]
    fn low_order_keys_are_refused_in_every_slot() {
        let mut rng = ChaCha20Rng::seed_from_u64(22);
        let alice = IdentityKeyPair::generate(&mut rng);
        let b = bob(&mut rng, KemPreKeyKind::LastResort);
        let keys = ResponderKeys {
            signed_prekey: &b.spk.pair,
            one_time_prekey: None,
            kem_prekey: &b.kem.pair,
        };
        let ct = initiate(&alice, &verified(&b, false), &mut rng).unwrap().kem_ciphertext;
        // u = 0 and u = 1 are low-order points.
        for low in [
            DhPublicKey([0; 32]),
            DhPublicKey({
                let mut u = [0u8; 32];
                u[0] = 1;
                u
            }),
        ] {
            // Responder: a low-order base key.
            assert_eq!(
                respond(&b.identity, &keys, &alice.public(), &low, &ct).err(),
                Some(NonContributory)
            );
            // Initiator: low-order signed prekey or one-time prekey in the bundle.
            let good = verified(&b, false);
            let bad_spk = VerifiedBundle { signed_prekey: low, ..good.clone() };
            assert!(matches!(
                initiate(&alice, &bad_spk, &mut rng),
                Err(HandshakeError::NonContributory(_))
            ));
            let bad_opk = VerifiedBundle {
                one_time_prekey: Some(kith_protocol::prekey::OneTimePreKeyPublic {
                    id: 1,
                    key: low,
                }),
                ..good
            };
            assert!(initiate(&alice, &bad_opk, &mut rng).is_err());
        }
    }

    #[test]
    fn an_unreduced_kem_key_is_refused_by_the_initiator() {
        let mut rng = ChaCha20Rng::seed_from_u64(24);
        let alice = IdentityKeyPair::generate(&mut rng);
        let b = bob(&mut rng, KemPreKeyKind::OneTime);
        let mut bundle = verified(&b, true);
        bundle.kem_prekey.key.0[0] = 0xff;
        bundle.kem_prekey.key.0[1] |= 0x0f;
        assert!(matches!(
            initiate(&alice, &bundle, &mut rng),
            Err(HandshakeError::InvalidKemKey(_))
        ));
    }
}
