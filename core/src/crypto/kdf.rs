//! HKDF-SHA256 and HMAC-SHA256, the only KDF and MAC Kith uses.

use std::sync::OnceLock;

use hkdf::{Hkdf, HkdfExtract};
use hmac::digest::FixedOutput;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

/// A keyed HMAC-SHA256 state for a 32-byte key. Keying once and cloning the state lets a chain
/// step derive two outputs without hashing the key twice. The key state zeroizes on drop.
#[derive(Clone)]
pub(crate) struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        // RFC 2104: a key shorter than the block is zero-padded to the block size, so keying
        // with the padded 64-byte block is HMAC with the 32-byte key (and cannot fail).
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(key);
        let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        block.zeroize();
        Self(mac)
    }

    /// HMAC of `data`, written straight into `out`: the output is a chain or message key, so
    /// no copy of it is left behind on the stack.
    pub(crate) fn mac_into(&self, data: &[u8], out: &mut [u8; 32]) {
        let mut mac = self.0.clone();
        mac.update(data);
        mac.finalize_into(out.into());
    }
}

/// HMAC-SHA256 of `data` under a 32-byte `key`.
pub fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    HmacKey::new(key).mac_into(data, &mut out);
    out
}

/// The requested HKDF output is longer than 255 × 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HKDF output length {0} exceeds 8160 bytes")]
pub struct HkdfLengthError(pub usize);

/// HKDF-SHA256 (RFC 5869): extract with `salt` (an empty salt is the all-zero salt), then expand
/// `info` into `okm`.
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), HkdfLengthError> {
    Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, okm).map_err(|_| HkdfLengthError(okm.len()))
}

/// HKDF-SHA256 with the all-zero salt (which RFC 5869 also defines as the "no salt" salt).
/// The HMAC keyed with that salt is computed once and cloned, saving two SHA-256 blocks on
/// every message key.
pub(crate) fn hkdf_sha256_zero_salt(
    ikm: &[u8],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), HkdfLengthError> {
    static ZERO_SALT: OnceLock<HkdfExtract<Sha256>> = OnceLock::new();
    let mut extract = ZERO_SALT.get_or_init(|| HkdfExtract::new(Some(&[0u8; 32]))).clone();
    extract.input_ikm(ikm);
    let (_, hkdf) = extract.finalize();
    hkdf.expand(info, okm).map_err(|_| HkdfLengthError(okm.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_salt_shortcut_matches_plain_hkdf_with_empty_and_zero_salt() {
        for ikm in [&b""[..], b"x", &[7u8; 32], &[1u8; 100]] {
            let (mut a, mut b, mut c) = ([0u8; 44], [0u8; 44], [0u8; 44]);
            hkdf_sha256_zero_salt(ikm, b"info", &mut a).unwrap();
            hkdf_sha256(&[], ikm, b"info", &mut b).unwrap();
            hkdf_sha256(&[0u8; 32], ikm, b"info", &mut c).unwrap();
            assert_eq!(a, b);
            assert_eq!(a, c);
        }
    }
}
