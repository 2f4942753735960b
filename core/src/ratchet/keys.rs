//! The ratchet's key types: root key, chain key and message key, each a boxed, zeroizing
//! secret with one derivation step.

use std::fmt;

use kith_protocol::envelope::RatchetHeader;
use zeroize::Zeroizing;

use crate::crypto::kdf::{HmacKey, hkdf_sha256, hkdf_sha256_zero_salt};
use crate::crypto::{SecretBytes, aead};

/// HKDF info for the root chain (Double Ratchet §5.2 `KDF_RK`).
const ROOT_INFO: &[u8] = b"Kith_Ratchet_Root_v1";
/// HKDF info for turning a message key into an AEAD key and nonce (§5.2 `ENCRYPT`).
const MESSAGE_KEY_INFO: &[u8] = b"Kith_Ratchet_MessageKeys_v1";
/// `KDF_CK` inputs (§5.2: HMAC with constants 0x01 for the message key, 0x02 for the chain).
const MESSAGE_KEY_SEED: [u8; 1] = [0x01];
const CHAIN_KEY_SEED: [u8; 1] = [0x02];

/// The root key `RK`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RootKey(pub(crate) SecretBytes);

impl RootKey {
    /// `KDF_RK(rk, dh_out)`: HKDF-SHA256 with the root key as salt → (new root key, chain key).
    pub(crate) fn step(&self, dh_out: &SecretBytes) -> (RootKey, ChainKey) {
        let mut okm = Zeroizing::new([0u8; 64]);
        // 64 bytes is far below HKDF's limit, so expansion cannot fail.
        let _ = hkdf_sha256(self.0.expose(), dh_out.expose(), ROOT_INFO, okm.as_mut_slice());
        let (mut root, mut chain) = ([0u8; 32], [0u8; 32]);
        let (r, c) = okm.split_at(32);
        root.copy_from_slice(r);
        chain.copy_from_slice(c);
        (RootKey(SecretBytes::from_array(&mut root)), ChainKey(SecretBytes::from_array(&mut chain)))
    }
}

/// A sending or receiving chain key `CK`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ChainKey(pub(crate) SecretBytes);

impl ChainKey {
    /// `KDF_CK(ck)`: (message key, next chain key).
    pub(crate) fn step(&self) -> (MessageKey, ChainKey) {
        let mac = HmacKey::new(self.0.expose());
        let (mut mk, mut ck) = (SecretBytes::zeroed(), SecretBytes::zeroed());
        mac.mac_into(&MESSAGE_KEY_SEED, mk.expose_mut());
        mac.mac_into(&CHAIN_KEY_SEED, ck.expose_mut());
        (MessageKey(mk), ChainKey(ck))
    }
}

/// A single-use message key `MK`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MessageKey(pub(crate) SecretBytes);

impl MessageKey {
    /// The AEAD key and nonce derived from this message key (HKDF, 44 bytes). A message key is
    /// used for exactly one message, so the deterministic nonce never repeats under a key.
    fn expand(&self) -> AeadKeys {
        let mut okm = Zeroizing::new([0u8; 44]);
        // 44 bytes is far below HKDF's limit, so expansion cannot fail.
        let _ = hkdf_sha256_zero_salt(self.0.expose(), MESSAGE_KEY_INFO, okm.as_mut_slice());
        let mut keys = AeadKeys { key: [0; 32], nonce: [0; 12] };
        let (key, nonce) = okm.split_at(32);
        keys.key.copy_from_slice(key);
        keys.nonce.copy_from_slice(nonce);
        keys
    }

    /// Encrypts `plaintext` with AD = `associated` ‖ header.
    pub(crate) fn seal(
        &self,
        associated: &[u8],
        header: &RatchetHeader,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, aead::PlaintextTooLong> {
        let keys = self.expand();
        with_aad(associated, header, |aad| aead::seal(&keys.key, &keys.nonce, aad, plaintext))
    }

    /// Decrypts and authenticates; returns nothing unless the tag verifies.
    pub(crate) fn open(
        &self,
        associated: &[u8],
        header: &RatchetHeader,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, aead::AeadError> {
        let keys = self.expand();
        with_aad(associated, header, |aad| aead::open(&keys.key, &keys.nonce, aad, ciphertext))
    }
}

/// The AEAD key and nonce of one message, zeroized on drop.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct AeadKeys {
    key: [u8; 32],
    nonce: [u8; 12],
}

/// Calls `f` with `associated ‖ header` (Double Ratchet §3.4: the header is authenticated with
/// the AD), built on the stack when it fits (it always does for Kith's sessions).
fn with_aad<T>(associated: &[u8], header: &RatchetHeader, f: impl FnOnce(&[u8]) -> T) -> T {
    const STACK: usize = 256;
    let total = associated.len() + RatchetHeader::ENCODED_LEN;
    let mut buf = [0u8; STACK];
    if let Some(slot) = buf.get_mut(..total) {
        let (ad, head) = slot.split_at_mut(associated.len());
        ad.copy_from_slice(associated);
        head.copy_from_slice(&header.to_bytes());
        f(slot)
    } else {
        let mut aad = Vec::with_capacity(total);
        aad.extend_from_slice(associated);
        aad.extend_from_slice(&header.to_bytes());
        f(&aad)
    }
}

macro_rules! redacted_debug {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(..)"))
            }
        }
    )*};
}
redacted_debug!(RootKey, ChainKey, MessageKey);
