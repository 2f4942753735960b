//! X25519 key pairs and contributory key agreement.

use std::fmt;

use kith_protocol::DhPublicKey;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::secret::SecretBytes;

/// The peer's public key gave the all-zero shared secret: it is one of the low-order points
/// (or equivalent to one), so the exchange would be non-contributory. Refused in every
/// handshake slot and ratchet step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("non-contributory X25519 exchange: the peer's key is of low order")]
pub struct NonContributory;

/// An X25519 key pair. The public half is computed once, when the pair is made, so sending
/// never pays for a base-point multiplication. The secret is boxed and zeroized on drop.
pub struct DhKeyPair {
    secret: Box<StaticSecret>,
    public: DhPublicKey,
}

impl DhKeyPair {
    /// Generates a fresh key pair.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let secret = Box::new(StaticSecret::random_from_rng(rng));
        let public = DhPublicKey(PublicKey::from(secret.as_ref()).to_bytes());
        Self { secret, public }
    }

    /// Rebuilds a key pair from a stored secret and the public key stored with it. The public
    /// half is trusted (it comes from the same record as the secret), saving a multiplication
    /// per load.
    pub(crate) fn from_stored(secret: &SecretBytes, public: DhPublicKey) -> Self {
        Self { secret: boxed_secret(secret), public }
    }

    /// Rebuilds a key pair from a secret alone, recomputing the public half.
    pub fn from_secret(secret: &SecretBytes) -> Self {
        let secret = boxed_secret(secret);
        let public = DhPublicKey(PublicKey::from(secret.as_ref()).to_bytes());
        Self { secret, public }
    }

    /// The public half.
    pub fn public(&self) -> DhPublicKey {
        self.public
    }

    /// The secret half, for storing.
    pub(crate) fn secret(&self) -> SecretBytes {
        let mut bytes = Zeroizing::new(self.secret.to_bytes());
        SecretBytes::from_array(&mut bytes)
    }

    /// X25519(secret, their) — refused when the result is all-zero (non-contributory).
    pub fn agree(&self, their: &DhPublicKey) -> Result<SecretBytes, NonContributory> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(their.0));
        if !shared.was_contributory() {
            return Err(NonContributory);
        }
        // `shared` zeroizes itself on drop; the copy taken here is zeroized by `from_array`.
        let mut bytes = Zeroizing::new(shared.to_bytes());
        Ok(SecretBytes::from_array(&mut bytes))
    }
}

/// An X25519 secret built in place on the heap from stored bytes; the one stack copy that
/// `StaticSecret::from` takes by value is zeroized on the way.
fn boxed_secret(secret: &SecretBytes) -> Box<StaticSecret> {
    let bytes = Zeroizing::new(*secret.expose());
    Box::new(StaticSecret::from(*bytes))
}

/// Whether `key` is the canonical encoding of an X25519 u-coordinate: below 2^255 − 19, so
/// with the top bit clear. X25519 ignores the top bit and reduces modulo p, so other encodings
/// name the same point under another byte string; Kith refuses them wherever keys are
/// compared by their bytes (a session's base key, ratchet keys).
pub fn is_canonical(key: &DhPublicKey) -> bool {
    // p = 2^255 − 19: little-endian ff…ff7f with the low byte ed. Below p unless every byte
    // from 1 to 30 is ff, byte 31 is 7f and byte 0 is ed or more.
    let [low, middle @ .., top] = key.0;
    if top & 0x80 != 0 {
        return false;
    }
    let high = top == 0x7f && middle.iter().all(|&b| b == 0xff);
    !(high && low >= 0xed)
}

impl Clone for DhKeyPair {
    fn clone(&self) -> Self {
        Self { secret: self.secret.clone(), public: self.public }
    }
}

impl fmt::Debug for DhKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhKeyPair").field("public", &self.public).finish_non_exhaustive()
    }
}
