//! ChaCha20-Poly1305 (RFC 8439), the only AEAD Kith uses.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

/// Length of the authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// Sealing or opening failed: on open, the ciphertext, tag, nonce or associated data did not
/// authenticate; on seal, the plaintext exceeds ChaCha20-Poly1305's 256 GiB limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD authentication failed")]
pub struct AeadError;

/// Encrypts `buffer` in place and appends the tag.
pub fn seal_in_place(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    buffer: &mut Vec<u8>,
) -> Result<(), AeadError> {
    ChaCha20Poly1305::new(key.into())
        .encrypt_in_place(nonce.into(), aad, buffer)
        .map_err(|_| AeadError)
}

/// Encrypts `plaintext`, returning ciphertext ‖ tag.
pub fn seal(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadError> {
    let mut buffer = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buffer.extend_from_slice(plaintext);
    seal_in_place(key, nonce, aad, &mut buffer)?;
    Ok(buffer)
}

/// Verifies and decrypts ciphertext ‖ tag. Nothing is returned unless the tag verifies.
pub fn open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, AeadError> {
    if sealed.len() < TAG_LEN {
        return Err(AeadError);
    }
    let mut buffer = sealed.to_vec();
    ChaCha20Poly1305::new(key.into())
        .decrypt_in_place(nonce.into(), aad, &mut buffer)
        .map_err(|_| AeadError)?;
    Ok(buffer)
}
