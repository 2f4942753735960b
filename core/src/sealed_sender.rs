//! Sealed sender's outer layer: an encoded envelope encrypted to its recipient's identity key,
//! so that whoever stores or carries it (a relay) learns the recipient it is addressed to but
//! not the sender, whose identity travels inside.
//!
//! ```text
//! e            = fresh X25519 key pair (one per sealed envelope)
//! key ‖ nonce  = HKDF-SHA256(salt = E ‖ IK_B, ikm = DH(e, IK_B),
//!                            info = "Kith_SealedSender_v1" ‖ recipient user id) -> 32 + 12 bytes
//! sealed       = E ‖ ChaCha20-Poly1305(key, nonce, AD = recipient user id ‖ id, envelope)
//! ```
//!
//! `IK_B` is the recipient's X25519 identity key (the one its identity binding signs). The
//! outer layer gives confidentiality of the sender towards everyone but the recipient; it does
//! not authenticate the sender: the inner envelope does (its ratchet message opens only under
//! the session the claimed sender shares with the recipient, and a first message's PQXDH
//! secret needs the claimed sender's identity key). As with Signal's sealed sender, whoever
//! holds the recipient's identity key can open every sealed envelope addressed to it; the
//! message inside stays under its Double Ratchet keys.

use kith_protocol::mailbox::{AccessKey, AccessVerifier};
use kith_protocol::{DhPublicKey, MessageId, UserId};
use zeroize::Zeroizing;

use crate::crypto::kdf::hkdf_sha256;
use crate::crypto::{DhKeyPair, aead};
use crate::identity::{IdentityKeyPair, PublicIdentity};

/// BLAKE3 context of an access key's verifier.
const ACCESS_VERIFIER_CONTEXT: &str = "kith 2026-12 mailbox access verifier";

/// A fresh access key, for one contact.
pub fn new_access_key<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> AccessKey {
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    AccessKey(key)
}

/// The verifier a relay keeps for `key`: a one-way function of it, so a relay's files (or a
/// copy of them) cannot deposit under anyone's key.
pub fn access_verifier(key: &AccessKey) -> AccessVerifier {
    AccessVerifier(blake3::derive_key(ACCESS_VERIFIER_CONTEXT, &key.0))
}

/// HKDF info prefix of the outer layer's key.
const SEALED_SENDER_INFO: &[u8] = b"Kith_SealedSender_v1";

/// Why an envelope could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The recipient's identity key is of low order.
    #[error("the recipient's identity key is of low order")]
    NonContributory,
    /// The envelope is too long for the AEAD.
    #[error("the envelope is too long to seal")]
    TooLong,
}

/// Why a sealed envelope did not open. Nothing about it is learned either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsealError {
    /// The ephemeral key is of low order.
    #[error("the sealed envelope's ephemeral key is of low order")]
    NonContributory,
    /// It was not sealed to us, or was changed (ciphertext, id, recipient or ephemeral key).
    #[error("the sealed envelope did not authenticate")]
    Authentication,
}

/// The outer layer's AEAD key and nonce, zeroized on drop.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct OuterKeys {
    key: [u8; 32],
    nonce: [u8; 12],
}

fn outer_keys(
    shared: &crate::crypto::SecretBytes,
    ephemeral: &DhPublicKey,
    recipient_dh: &DhPublicKey,
    recipient: &UserId,
) -> OuterKeys {
    let mut salt = [0u8; 64];
    let (e, ik) = salt.split_at_mut(32);
    e.copy_from_slice(&ephemeral.0);
    ik.copy_from_slice(&recipient_dh.0);
    let mut info = [0u8; SEALED_SENDER_INFO.len() + 32];
    let (prefix, user) = info.split_at_mut(SEALED_SENDER_INFO.len());
    prefix.copy_from_slice(SEALED_SENDER_INFO);
    user.copy_from_slice(&recipient.0);
    let mut okm = Zeroizing::new([0u8; 44]);
    // 44 bytes is far below HKDF's limit, so expansion cannot fail.
    let _ = hkdf_sha256(&salt, shared.expose(), &info, okm.as_mut_slice());
    let mut keys = OuterKeys { key: [0; 32], nonce: [0; 12] };
    let (key, nonce) = okm.split_at(32);
    keys.key.copy_from_slice(key);
    keys.nonce.copy_from_slice(nonce);
    keys
}

/// `recipient user id ‖ id`: what the outer layer authenticates besides the envelope.
fn outer_ad(recipient: &UserId, id: &MessageId) -> [u8; 48] {
    let mut ad = [0u8; 48];
    let (user, message) = ad.split_at_mut(32);
    user.copy_from_slice(&recipient.0);
    message.copy_from_slice(&id.0);
    ad
}

/// Seals the encoded `envelope` (deposit id `id`) to `recipient`: returns the ephemeral public
/// key and the ciphertext. A fresh ephemeral key per call makes every key and nonce single-use.
pub fn seal<R: rand_core::CryptoRng + ?Sized>(
    recipient: &PublicIdentity,
    id: &MessageId,
    envelope: &[u8],
    rng: &mut R,
) -> Result<(DhPublicKey, Vec<u8>), SealError> {
    let ephemeral = DhKeyPair::generate(rng);
    let shared = ephemeral.agree(&recipient.dh_key()).map_err(|_| SealError::NonContributory)?;
    let keys = outer_keys(&shared, &ephemeral.public(), &recipient.dh_key(), &recipient.user());
    let ad = outer_ad(&recipient.user(), id);
    let ciphertext =
        aead::seal(&keys.key, &keys.nonce, &ad, envelope).map_err(|_| SealError::TooLong)?;
    Ok((ephemeral.public(), ciphertext))
}

/// Opens what [`seal`] made for us: the encoded inner envelope, or an error (and nothing else)
/// if it was not sealed to our identity key or was changed.
pub fn open(
    ours: &IdentityKeyPair,
    id: &MessageId,
    ephemeral: &DhPublicKey,
    ciphertext: &[u8],
) -> Result<Vec<u8>, UnsealError> {
    let shared = ours.dh().agree(ephemeral).map_err(|_| UnsealError::NonContributory)?;
    let me = ours.public();
    let keys = outer_keys(&shared, ephemeral, &me.dh_key(), &me.user());
    aead::open(&keys.key, &keys.nonce, &outer_ad(&me.user(), id), ciphertext)
        .map_err(|_| UnsealError::Authentication)
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn access_keys_are_random_and_their_verifiers_one_way() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (a, b) = (new_access_key(&mut rng), new_access_key(&mut rng));
        assert_ne!(a, b);
        assert_eq!(access_verifier(&a), access_verifier(&a));
        assert_ne!(access_verifier(&a), access_verifier(&b));
        assert_ne!(access_verifier(&a).0, a.0);
        assert_eq!(format!("{a:?}"), "AccessKey(..)");
    }

    #[test]
    fn only_the_recipient_opens_and_nothing_may_change() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let bob = IdentityKeyPair::generate(&mut rng);
        let eve = IdentityKeyPair::generate(&mut rng);
        let id = MessageId([7; 16]);
        let envelope = b"an encoded envelope naming its sender";
        let (e, sealed) = seal(&bob.public(), &id, envelope, &mut rng).unwrap();
        assert_eq!(open(&bob, &id, &e, &sealed).unwrap(), envelope);
        assert!(!sealed.windows(envelope.len()).any(|w| w == envelope), "encrypted");
        // Someone else's identity key, another id, a flipped bit, another ephemeral key.
        assert_eq!(open(&eve, &id, &e, &sealed), Err(UnsealError::Authentication));
        assert_eq!(open(&bob, &MessageId([8; 16]), &e, &sealed), Err(UnsealError::Authentication));
        for i in [0, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open(&bob, &id, &e, &bad), Err(UnsealError::Authentication));
        }
        let other = DhKeyPair::generate(&mut rng).public();
        assert_eq!(open(&bob, &id, &other, &sealed), Err(UnsealError::Authentication));
        assert_eq!(
            open(&bob, &id, &DhPublicKey([0; 32]), &sealed),
            Err(UnsealError::NonContributory)
        );
        // A low-order recipient key is refused before anything is sealed.
        let mut low = bob.public();
        low.dh_key = DhPublicKey([0; 32]);
        assert_eq!(seal(&low, &id, envelope, &mut rng), Err(SealError::NonContributory));
        // Two seals of one envelope share nothing.
        let (e2, sealed2) = seal(&bob.public(), &id, envelope, &mut rng).unwrap();
        assert_ne!(e, e2);
        assert_ne!(sealed, sealed2);
    }
}
