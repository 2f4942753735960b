//! Identifiers and fixed-size byte values shared by all frames.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Writes `bytes` as lowercase hex.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// Parses exactly `N` bytes of hex.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *o = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:literal, $short:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses the full lowercase or uppercase hex form.
            pub fn from_hex(s: &str) -> Option<Self> {
                parse_hex::<$len>(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        /// Prints the first bytes only, so logs stay short.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                write_hex(f, &self.0[..$short])?;
                write!(f, "…)")
            }
        }
    };
}

byte_id!(
    /// A message id: 16 random bytes chosen by the sender. Also the envelope id, bound into the
    /// ratchet's associated data, and the key receivers deduplicate on.
    MessageId, 16, 4
);

byte_id!(
    /// A user's address: their Ed25519 identity public key. The libp2p `PeerId` is derived from
    /// it (identity multihash of the protobuf-encoded key), so Noise already authenticates it.
    UserId, 32, 4
);

byte_id!(
    /// A group id: 32 random bytes chosen by the creator. Never published in the clear; the
    /// gossipsub topic is a hash of it.
    GroupId, 32, 4
);

byte_id!(
    /// An attachment id: 16 random bytes, bound into every chunk's associated data.
    MediaId, 16, 4
);

byte_id!(
    /// A BLAKE3 hash of a sealed media chunk; the chunk's address in blob stores.
    ChunkHash, 32, 4
);

byte_id!(
    /// The public tag of a group: BLAKE3 of its id under a domain separator. Names the gossipsub
    /// topic and marks mailbox copies of group messages; reveals nothing about the id itself.
    GroupTag, 32, 4
);

byte_id!(
    /// The hash of a signed group change: BLAKE3 of its wire encoding under a domain separator.
    /// Later changes name the ones their author had seen by these hashes, so a group's changes
    /// form a hash-linked graph that no one can reorder or backdate into another's past.
    ChangeHash, 32, 4
);

/// An X25519 public key as it travels on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DhPublicKey(pub [u8; 32]);

impl fmt::Debug for DhPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhPublicKey(")?;
        write_hex(f, &self.0[..4])?;
        write!(f, "…)")
    }
}

/// An Ed25519 signature (R ‖ s) as it travels on the wire: 64 bytes, no length prefix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(64)?;
        self.0.iter().try_for_each(|b| tuple.serialize_element(b))?;
        tuple.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Signature, A::Error> {
                let mut out = [0u8; 64];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(out))
            }
        }
        deserializer.deserialize_tuple(64, Visitor)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(")?;
        write_hex(f, &self.0[..4])?;
        write!(f, "…)")
    }
}

/// Serde for a boxed fixed-size byte array: exactly `N` bytes, no length prefix (a postcard
/// tuple), so a wrong length is a decode error rather than something to check later.
mod fixed_bytes {
    use std::fmt;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(N)?;
        bytes.iter().try_for_each(|b| tuple.serialize_element(b))?;
        tuple.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<Box<[u8; N]>, D::Error> {
        struct Bytes<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for Bytes<N> {
            type Value = Box<[u8; N]>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Box::new([0u8; N]);
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte =
                        seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        deserializer.deserialize_tuple(N, Bytes::<N>)
    }
}

macro_rules! kem_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct $name(
            #[serde(
                serialize_with = "fixed_bytes::serialize",
                deserialize_with = "fixed_bytes::deserialize"
            )]
            pub Box<[u8; $len]>,
        );

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;
        }

        /// Prints the first bytes only, so logs stay short.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                write_hex(f, self.0.get(..4).unwrap_or(&[]))?;
                write!(f, "…)")
            }
        }
    };
}

kem_bytes!(
    /// An ML-KEM-768 encapsulation key (FIPS 203: 1,184 bytes) as it travels on the wire. Its
    /// coefficients are checked (FIPS 203 §7.2) by `kith-core` before any encapsulation.
    KemPublicKey,
    1184
);

kem_bytes!(
    /// An ML-KEM-768 ciphertext (FIPS 203: 1,088 bytes) as it travels on the wire.
    KemCiphertext,
    1088
);

kem_bytes!(
    /// A Double Ratchet header encrypted under its chain's header key (Double Ratchet §4):
    /// a 24-byte XChaCha20-Poly1305 nonce, the 40-byte header and the 16-byte tag.
    EncryptedHeader,
    80
);

/// A millisecond timestamp since the Unix epoch, as chosen by the party that wrote it.
pub type UnixMillis = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_short_debug() {
        let id = MessageId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(MessageId::from_hex(&id.to_string()), Some(id));
        assert_eq!(format!("{id:?}"), "MessageId(abababab…)");
        assert_eq!(MessageId::from_hex("zz"), None);
        assert_eq!(MessageId::from_hex(&"g".repeat(32)), None);
    }
}
