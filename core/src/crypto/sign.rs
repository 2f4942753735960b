//! Ed25519 signing and strict verification, with domain separation.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use kith_protocol::{Signature, UserId};

use super::secret::SecretBytes;

/// A signature did not verify under `verify_strict` (bad signature, non-canonical encoding,
/// small-order key or R, or a key that is not a valid point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Ed25519 signature verification failed")]
pub struct SignatureError;

/// What a signature is for. Each context prefixes the signed bytes with its own label, so a
/// signature made for one purpose can never be replayed as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignContext {
    /// Binds a user's X25519 identity key to their Ed25519 identity key.
    IdentityDh,
    /// A signed prekey.
    SignedPreKey,
    /// A KEM prekey (last-resort or one-time).
    KemPreKey,
    /// A version-3 user record (with the last-resort KEM prekey).
    UserRecordV3,
    /// A user record published in the DHT.
    UserRecord,
    /// A version-2 user record (with device addresses).
    UserRecordV2,
    /// A group change (version 2: it signs the changes it follows, not a clock).
    GroupControl,
    /// A group message under a sender key.
    GroupMessage,
}

impl SignContext {
    fn label(self) -> &'static [u8] {
        match self {
            Self::IdentityDh => b"kith/v1/identity-dh\0",
            Self::SignedPreKey => b"kith/v1/signed-prekey\0",
            Self::KemPreKey => b"kith/v1/kem-prekey\0",
            Self::UserRecordV3 => b"kith/v3/user-record\0",
            Self::UserRecord => b"kith/v1/user-record\0",
            Self::UserRecordV2 => b"kith/v2/user-record\0",
            Self::GroupControl => b"kith/v2/group-change\0",
            Self::GroupMessage => b"kith/v1/group-message\0",
        }
    }

    fn message(self, parts: &[&[u8]]) -> Vec<u8> {
        let label = self.label();
        let mut message =
            Vec::with_capacity(label.len() + parts.iter().map(|p| p.len()).sum::<usize>());
        message.extend_from_slice(label);
        parts.iter().for_each(|p| message.extend_from_slice(p));
        message
    }
}

/// An Ed25519 signing key (boxed, zeroized on drop by ed25519-dalek).
pub struct SigningKeyPair {
    key: Box<SigningKey>,
    public: UserId,
}

impl SigningKeyPair {
    /// Generates a fresh signing key.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret(&SecretBytes::random(rng))
    }

    /// Rebuilds a signing key from its 32-byte seed.
    pub fn from_secret(seed: &SecretBytes) -> Self {
        let key = Box::new(SigningKey::from_bytes(seed.expose()));
        let public = UserId(key.verifying_key().to_bytes());
        Self { key, public }
    }

    /// The 32-byte seed, for storing.
    pub(crate) fn secret(&self) -> SecretBytes {
        let mut seed = self.key.to_bytes();
        SecretBytes::from_array(&mut seed)
    }

    /// The public key.
    pub fn public(&self) -> UserId {
        self.public
    }

    /// Signs `parts` (concatenated) under `context`.
    pub fn sign(&self, context: SignContext, parts: &[&[u8]]) -> Signature {
        Signature(self.key.sign(&context.message(parts)).to_bytes())
    }
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair").field("public", &self.public).finish_non_exhaustive()
    }
}

/// Verifies a raw Ed25519 signature with `verify_strict` (RFC 8032 plus rejection of
/// small-order keys and R and of non-canonical encodings; no malleability).
pub fn verify_strict(
    public: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| SignatureError)?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .map_err(|_| SignatureError)
}

/// Verifies a signature made by [`SigningKeyPair::sign`] with the same context and parts.
pub fn verify(
    signer: &UserId,
    context: SignContext,
    parts: &[&[u8]],
    signature: &Signature,
) -> Result<(), SignatureError> {
    verify_strict(&signer.0, &context.message(parts), &signature.0)
}
