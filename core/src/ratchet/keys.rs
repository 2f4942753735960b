//! The ratchet's key types: root key, chain key, message key and header key, each a boxed,
//! zeroizing secret with one derivation step or one use.

use std::fmt;

use kith_protocol::EncryptedHeader;
use kith_protocol::envelope::RatchetHeader;
use zeroize::Zeroizing;

use crate::crypto::kdf::{HmacKey, hkdf_sha256, hkdf_sha256_zero_salt};
use crate::crypto::{SecretBytes, aead};

/// HKDF info for the root chain (Double Ratchet §5.2 `KDF_RK`).
const ROOT_INFO: &[u8] = b"Kith_Ratchet_Root_v1";
/// HKDF info for the root chain of a session with header encryption (§4.2 `KDF_RK_HE`): the
/// third 32 bytes are the next header key.
const ROOT_HE_INFO: &[u8] = b"Kith_Ratchet_Root_HE_v1";
/// HKDF info splitting the handshake's secret into the first root key and the two shared
/// header keys (§4.2 `shared_hka`, `shared_nhkb`).
const INITIAL_HEADER_KEYS_INFO: &[u8] = b"Kith_Ratchet_HeaderKeys_v1";
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

    /// `KDF_RK_HE(rk, dh_out)` → (new root key, chain key, next header key).
    pub(crate) fn step_with_header(&self, dh_out: &SecretBytes) -> (RootKey, ChainKey, HeaderKey) {
        let [root, chain, header] = expand3(self.0.expose(), dh_out.expose(), ROOT_HE_INFO);
        (RootKey(root), ChainKey(chain), HeaderKey(header))
    }
}

/// Splits the handshake's shared secret `SK` into the first root key and the shared header
/// keys `(RK, HKa, NHKb)`: the initiator sends its first chain under `HKa`, the responder its
/// first under `NHKb`.
pub(crate) fn initial_keys(shared: &SecretBytes) -> (RootKey, HeaderKey, HeaderKey) {
    let [root, hka, nhkb] = expand3(&[0; 32], shared.expose(), INITIAL_HEADER_KEYS_INFO);
    (RootKey(root), HeaderKey(hka), HeaderKey(nhkb))
}

/// HKDF-SHA256 to three 32-byte secrets.
fn expand3(salt: &[u8; 32], ikm: &[u8; 32], info: &[u8]) -> [SecretBytes; 3] {
    let mut okm = Zeroizing::new([0u8; 96]);
    // 96 bytes is far below HKDF's limit, so expansion cannot fail.
    let _ = hkdf_sha256(salt, ikm, info, okm.as_mut_slice());
    let mut keys = [SecretBytes::zeroed(), SecretBytes::zeroed(), SecretBytes::zeroed()];
    for (key, chunk) in keys.iter_mut().zip(okm.chunks_exact(32)) {
        key.expose_mut().copy_from_slice(chunk);
    }
    keys
}

/// A header key `HK`: encrypts the headers of one sending chain (Double Ratchet §4). It is used
/// for every message of its chain, so each header gets a random 192-bit XChaCha20-Poly1305
/// nonce.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct HeaderKey(pub(crate) SecretBytes);

impl HeaderKey {
    /// `HENCRYPT(hk, header)` with `associated` authenticated alongside.
    pub(crate) fn seal<R: rand_core::CryptoRng + ?Sized>(
        &self,
        associated: &[u8],
        header: &RatchetHeader,
        rng: &mut R,
    ) -> Result<EncryptedHeader, aead::PlaintextTooLong> {
        let mut nonce = [0u8; aead::X_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut body = header.to_bytes();
        let tag = aead::seal_x_in_place(self.0.expose(), &nonce, associated, &mut body)?;
        let mut out = Box::new([0u8; EncryptedHeader::LEN]);
        for (slot, byte) in out.iter_mut().zip(nonce.iter().chain(&body).chain(&tag)) {
            *slot = *byte;
        }
        Ok(EncryptedHeader(out))
    }

    /// `HDECRYPT(hk, header)`: the header, or `None` if it was not sealed under this key.
    pub(crate) fn open(
        &self,
        associated: &[u8],
        sealed: &EncryptedHeader,
    ) -> Option<RatchetHeader> {
        let (nonce, rest) = sealed.0.split_at(aead::X_NONCE_LEN);
        let (body, tag) = rest.split_at(RatchetHeader::ENCODED_LEN);
        let nonce: &[u8; aead::X_NONCE_LEN] = nonce.try_into().ok()?;
        let tag: &[u8; aead::TAG_LEN] = tag.try_into().ok()?;
        let mut header = [0u8; RatchetHeader::ENCODED_LEN];
        header.copy_from_slice(body);
        aead::open_x_in_place(self.0.expose(), nonce, associated, &mut header, tag).ok()?;
        Some(RatchetHeader::from_bytes(&header))
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

    /// Encrypts `plaintext` with AD = `associated` ‖ header (its encoding, or its encryption).
    pub(crate) fn seal(
        &self,
        associated: &[u8],
        header: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, aead::PlaintextTooLong> {
        let keys = self.expand();
        with_aad(associated, header, |aad| aead::seal(&keys.key, &keys.nonce, aad, plaintext))
    }

    /// Decrypts and authenticates; returns nothing unless the tag verifies.
    pub(crate) fn open(
        &self,
        associated: &[u8],
        header: &[u8],
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

/// Calls `f` with `associated ‖ header` (Double Ratchet §3.4 and §4.3: the header, or the
/// encrypted header, is authenticated with the AD), built on the stack when it fits (it always
/// does for Kith's sessions).
fn with_aad<T>(associated: &[u8], header: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    const STACK: usize = 256;
    let total = associated.len() + header.len();
    let mut buf = [0u8; STACK];
    if let Some(slot) = buf.get_mut(..total) {
        let (ad, head) = slot.split_at_mut(associated.len());
        ad.copy_from_slice(associated);
        head.copy_from_slice(header);
        f(slot)
    } else {
        let mut aad = Vec::with_capacity(total);
        aad.extend_from_slice(associated);
        aad.extend_from_slice(header);
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
redacted_debug!(RootKey, ChainKey, MessageKey, HeaderKey);
