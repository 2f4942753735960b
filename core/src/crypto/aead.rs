//! ChaCha20-Poly1305 (RFC 8439), the only AEAD Kith uses, and its extended-nonce form
//! XChaCha20-Poly1305 for the one key used many times with random nonces (a Double Ratchet
//! header key).

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, XChaCha20Poly1305};
use zeroize::Zeroize;

/// Length of the authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// Length of an XChaCha20-Poly1305 nonce: long enough (192 bits) to be drawn at random for
/// every message under one key without a birthday bound to worry about.
pub const X_NONCE_LEN: usize = 24;

/// Opening failed: the ciphertext, tag, nonce or associated data did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD authentication failed")]
pub struct AeadError;

/// Sealing failed: the plaintext exceeds ChaCha20-Poly1305's limit of 2^38 − 64 bytes for one
/// message. Nothing Kith seals comes near it (a frame is at most a few MiB), so this is a
/// caller's bug, reported as such rather than as an authentication failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("plaintext too long for one AEAD message")]
pub struct PlaintextTooLong;

/// Encrypts `plaintext`, returning ciphertext ‖ tag, in one pass (no copy of the plaintext).
pub fn seal(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PlaintextTooLong> {
    let mut out = vec![0u8; plaintext.len() + TAG_LEN];
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    let buffer = InOutBuf::new(plaintext, body).map_err(|_| PlaintextTooLong)?;
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(nonce.into(), aad, buffer)
        .map_err(|_| PlaintextTooLong)?;
    tag_out.copy_from_slice(&tag);
    Ok(out)
}

/// Verifies and decrypts ciphertext ‖ tag, in one pass. Nothing is returned unless the tag
/// verifies.
pub fn open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, AeadError> {
    let Some(body_len) = sealed.len().checked_sub(TAG_LEN) else { return Err(AeadError) };
    let (body, tag) = sealed.split_at(body_len);
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| AeadError)?;
    let mut out = vec![0u8; body_len];
    let buffer = InOutBuf::new(body, &mut out).map_err(|_| AeadError)?;
    let cipher = ChaCha20Poly1305::new(key.into());
    match cipher.decrypt_inout_detached(nonce.into(), aad, buffer, tag.into()) {
        Ok(()) => Ok(out),
        Err(_) => {
            out.zeroize();
            Err(AeadError)
        }
    }
}

/// [`open`] in the buffer it is given: the plaintext takes the ciphertext's place, so a large
/// sealed value (an attachment chunk) is never held twice. On failure the buffer is dropped
/// as it came (ciphertext only: decryption happens after the tag verifies).
pub fn open_in_place(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    mut sealed: Vec<u8>,
) -> Result<Vec<u8>, AeadError> {
    let Some(body_len) = sealed.len().checked_sub(TAG_LEN) else { return Err(AeadError) };
    let (body, tag) = sealed.split_at_mut(body_len);
    let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| AeadError)?;
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt_inout_detached(nonce.into(), aad, InOutBuf::from(body), (&tag).into())
        .map_err(|_| AeadError)?;
    sealed.truncate(body_len);
    Ok(sealed)
}

/// XChaCha20-Poly1305 in place: encrypts `buffer` and returns the tag. The nonce must be fresh
/// for `key` (drawn at random: 192 bits never collide in practice).
pub(crate) fn seal_x_in_place(
    key: &[u8; 32],
    nonce: &[u8; X_NONCE_LEN],
    aad: &[u8],
    buffer: &mut [u8],
) -> Result<[u8; TAG_LEN], PlaintextTooLong> {
    let tag = XChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(nonce.into(), aad, InOutBuf::from(buffer))
        .map_err(|_| PlaintextTooLong)?;
    Ok(tag.into())
}

/// Verifies `tag` and decrypts `buffer` in place (XChaCha20-Poly1305). On failure `buffer`
/// is left as it came: decryption only happens after the tag verifies.
pub(crate) fn open_x_in_place(
    key: &[u8; 32],
    nonce: &[u8; X_NONCE_LEN],
    aad: &[u8],
    buffer: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), AeadError> {
    XChaCha20Poly1305::new(key.into())
        .decrypt_inout_detached(nonce.into(), aad, InOutBuf::from(buffer), tag.into())
        .map_err(|_| AeadError)
}
