//! X3DH key agreement, as in Signal's specification (revision 1, 2016-11-04).
//!
//! ```text
//! DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   DH4 = DH(EK_A, OPK_B)
//! SK  = HKDF-SHA256(salt = 0^32, ikm = 0xFF^32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = X3DH_INFO)
//! AD  = Encode(IK_A) ‖ Encode(IK_B), Encode(IK) = Ed25519 key ‖ X25519 key
//! ```
//!
//! `IK` is the X25519 identity key, bound to the Ed25519 identity by a signature that both sides
//! verify before this module runs. Every DH output is checked to be contributory (a low-order
//! key in any slot is refused). Intermediate DH outputs and the concatenated input live in
//! zeroizing buffers.

use kith_protocol::DhPublicKey;
use zeroize::Zeroizing;

use crate::crypto::kdf::hkdf_sha256_zero_salt;
use crate::crypto::{DhKeyPair, NonContributory, SecretBytes};
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::prekeys::VerifiedBundle;

/// HKDF info string (X3DH §2.1: identifies the application).
const X3DH_INFO: &[u8] = b"Kith_X3DH_X25519_SHA256_v1";

/// Length of the associated data: two encoded identities of 64 bytes each.
pub const ASSOCIATED_DATA_LEN: usize = 128;

/// `Encode(IK_A) ‖ Encode(IK_B)`: the initiator's identity first.
pub(crate) type AssociatedData = [u8; ASSOCIATED_DATA_LEN];

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

/// What the initiator gets from X3DH.
pub(crate) struct Initiation {
    /// The shared secret SK.
    pub(crate) shared: SecretBytes,
    /// EK_A's public key, sent in the initial message; also the session's base key.
    pub(crate) base_key: DhPublicKey,
    /// The associated data.
    pub(crate) associated: AssociatedData,
}

fn derive(dhs: &[SecretBytes]) -> SecretBytes {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (dhs.len() + 1)));
    ikm.extend_from_slice(&[0xFF; 32]);
    dhs.iter().for_each(|dh| ikm.extend_from_slice(dh.expose()));
    let mut shared = SecretBytes::zeroed();
    // 32 bytes is far below HKDF's limit of 8160, so expansion cannot fail.
    let _ = hkdf_sha256_zero_salt(&ikm, X3DH_INFO, shared.expose_mut());
    shared
}

/// The initiator's side (Alice): agree on SK with the owner of a verified bundle.
pub(crate) fn initiate<R: rand_core::CryptoRng + ?Sized>(
    ours: &IdentityKeyPair,
    bundle: &VerifiedBundle,
    rng: &mut R,
) -> Result<Initiation, NonContributory> {
    let ephemeral = DhKeyPair::generate(rng);
    let mut dhs = Vec::with_capacity(4);
    dhs.push(ours.dh().agree(&bundle.signed_prekey)?);
    dhs.push(ephemeral.agree(&bundle.identity.dh_key())?);
    dhs.push(ephemeral.agree(&bundle.signed_prekey)?);
    if let Some(opk) = &bundle.one_time_prekey {
        dhs.push(ephemeral.agree(&opk.key)?);
    }
    Ok(Initiation {
        shared: derive(&dhs),
        base_key: ephemeral.public(),
        associated: associated_data(&ours.public(), &bundle.identity),
    })
    // `ephemeral` is dropped (and zeroized) here: EK_A is never stored.
}

/// The responder's side (Bob): agree on SK from an initial message.
pub(crate) fn respond(
    ours: &IdentityKeyPair,
    signed_prekey: &DhKeyPair,
    one_time_prekey: Option<&DhKeyPair>,
    theirs: &PublicIdentity,
    base_key: &DhPublicKey,
) -> Result<(SecretBytes, AssociatedData), NonContributory> {
    let mut dhs = Vec::with_capacity(4);
    dhs.push(signed_prekey.agree(&theirs.dh_key())?);
    dhs.push(ours.dh().agree(base_key)?);
    dhs.push(signed_prekey.agree(base_key)?);
    if let Some(opk) = one_time_prekey {
        dhs.push(opk.agree(base_key)?);
    }
    Ok((derive(&dhs), associated_data(theirs, &ours.public())))
}

#[cfg(test)]
mod tests {
    use kith_protocol::prekey::PreKeyBundle;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::prekeys::{OneTimePreKey, SignedPreKey, verify_bundle};

    #[test]
    fn both_sides_agree_with_and_without_one_time_prekey() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let alice = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&bob, 1, 0, &mut rng);
        let opk = OneTimePreKey::generate(9, &mut rng);
        for with_opk in [true, false] {
            let bundle = PreKeyBundle {
                identity: bob.binding(),
                signed_prekey: spk.public(),
                one_time_prekey: with_opk.then(|| opk.public()),
            };
            let verified = verify_bundle(&bundle, &bob.user_id(), 0).unwrap();
            let init = initiate(&alice, &verified, &mut rng).unwrap();
            let (shared, ad) = respond(
                &bob,
                &spk.pair,
                with_opk.then_some(&opk.pair),
                &alice.public(),
                &init.base_key,
            )
            .unwrap();
            assert_eq!(shared, init.shared);
            assert_eq!(ad, init.associated);
            // Without the one-time prekey the secret must differ.
            if with_opk {
                let (without, _) =
                    respond(&bob, &spk.pair, None, &alice.public(), &init.base_key).unwrap();
                assert_ne!(without, init.shared);
            }
        }
    }

    #[test]
    fn low_order_keys_are_refused_in_every_slot() {
        let mut rng = ChaCha20Rng::seed_from_u64(22);
        let alice = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&bob, 1, 0, &mut rng);
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
                respond(&bob, &spk.pair, None, &alice.public(), &low).err(),
                Some(NonContributory)
            );
            // Initiator: low-order signed prekey or one-time prekey in the bundle.
            let good = verify_bundle(
                &PreKeyBundle {
                    identity: bob.binding(),
                    signed_prekey: spk.public(),
                    one_time_prekey: None,
                },
                &bob.user_id(),
                0,
            )
            .unwrap();
            let bad_spk = VerifiedBundle { signed_prekey: low, ..good };
            assert!(initiate(&alice, &bad_spk, &mut rng).is_err());
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
}
