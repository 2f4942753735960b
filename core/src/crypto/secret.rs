//! Heap-allocated 32-byte secrets.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 secret bytes. Boxed so that moving the value never leaves a copy behind on the stack,
/// zeroized on drop, compared in constant time, and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Box<[u8; 32]>);

impl SecretBytes {
    /// Wraps `bytes`, zeroizing the caller's copy.
    pub fn from_array(bytes: &mut [u8; 32]) -> Self {
        let out = Self(Box::new(*bytes));
        bytes.zeroize();
        out
    }

    /// Fills a new secret from `rng`.
    pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut out = Self(Box::new([0u8; 32]));
        rng.fill_bytes(out.0.as_mut_slice());
        out
    }

    /// A zero-initialised secret to be filled in place (e.g. by a KDF).
    pub(crate) fn zeroed() -> Self {
        Self(Box::new([0u8; 32]))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The secret bytes, mutably (for KDF output).
    pub(crate) fn expose_mut(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(..)")
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }
}

impl Eq for SecretBytes {}

/// Stored as a byte string (one length byte and a copy), not as 32 separate elements.
impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0.as_slice())
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 secret bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SecretBytes, E> {
                let mut bytes: [u8; 32] =
                    v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(SecretBytes::from_array(&mut bytes))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}
