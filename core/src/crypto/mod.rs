//! Cryptographic primitives, each behind one small wrapper that the rest of Kith uses and that
//! the Wycheproof tests drive directly: X25519 with a contributory check ([`dh`]), Ed25519 with
//! `verify_strict` and domain separation ([`sign`]), ChaCha20-Poly1305 ([`aead`]),
//! HKDF-SHA256 and HMAC-SHA256 ([`kdf`]), ML-KEM-768 ([`kem`]), and the zeroizing secret
//! container ([`secret`]).

pub mod aead;
pub mod dh;
pub mod kdf;
pub mod kem;
pub mod secret;
pub mod sign;

#[cfg(test)]
mod wycheproof_tests;

pub use dh::{DhKeyPair, NonContributory};
pub use kem::KemKeyPair;
pub use secret::SecretBytes;
pub use sign::{SignatureError, SigningKeyPair};
