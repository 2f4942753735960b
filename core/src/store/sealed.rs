//! Encryption at rest: every value sealed under the database key, ids in keys replaced by
//! keyed hashes.
//!
//! - **Values**: XChaCha20-Poly1305 under a subkey of the [`DatabaseKey`], a unique 24-byte
//!   nonce per write — a random 16-byte prefix drawn when the store is opened, then a 64-bit
//!   counter (prefixes of different opens collide with probability 2^-128 per pair; no system
//!   call per write) — and as associated data the tree and the key the value is stored
//!   under: a value copied or swapped to another key, or another tree, fails authentication
//!   instead of being read as the wrong record. Stored as `1 ‖ nonce ‖ ciphertext ‖ tag`
//!   (41 bytes more than the value).
//! - **Keys**: the 32-byte ids that would say who someone talks to (peer ids, group ids) are
//!   replaced in keys by their BLAKE3 keyed hash under another subkey ([`Pseudonyms`]), so
//!   that one conversation stays one key range and lookups stay point reads. Where the store
//!   must turn a key back into ids it keeps the id, sealed, under its pseudonym in the `names`
//!   tree.
//!
//! What this does not hide: how many records each tree holds and their sizes, which keys
//! change at each flush, and message order within a conversation (sequence numbers stay
//! plain so that history is one ordered range).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use zeroize::Zeroizing;

use super::backend::{Backend, BackendError, Entry, RawWrite, StoreError, Tree};
use crate::crypto::SecretBytes;

/// The version byte of a sealed value.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// What sealing adds to a value.
pub const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

const AD_DOMAIN: &[u8] = b"kith store value v1";

/// The random key a database's values are sealed under. It never leaves the device except
/// inside a key file (wrapped under a passphrase, or plain where the user chose no
/// passphrase); zeroized on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseKey(SecretBytes);

impl fmt::Debug for DatabaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseKey(..)")
    }
}

impl DatabaseKey {
    /// A new key from the operating system's generator.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice())?;
        Ok(Self(SecretBytes::from_array(&mut bytes)))
    }

    /// A key from its bytes (read from a key file), zeroizing the caller's copy.
    pub fn from_bytes(bytes: &mut [u8; 32]) -> Self {
        Self(SecretBytes::from_array(bytes))
    }

    /// The key's bytes, to be wrapped into a key file.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The pseudonym `id` has in the keys of a database sealed under this key (what
    /// [`super::SideStore::pseudonym`] gives).
    pub fn pseudonym(&self, id: &[u8; 32]) -> [u8; 32] {
        Pseudonyms::keyed(self).hide(id)
    }

    fn subkey(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, self.0.expose()))
    }
}

/// How ids appear in keys: as themselves (a store without encryption) or as keyed hashes.
#[derive(Clone)]
pub(crate) struct Pseudonyms {
    key: Option<Zeroizing<[u8; 32]>>,
}

impl Pseudonyms {
    /// Ids stay as they are.
    pub(crate) fn plain() -> Self {
        Self { key: None }
    }

    pub(crate) fn keyed(key: &DatabaseKey) -> Self {
        Self { key: Some(key.subkey("kith store pseudonyms v1")) }
    }

    /// Whether ids are hidden (and the `names` tree is kept).
    pub(crate) fn hides(&self) -> bool {
        self.key.is_some()
    }

    /// The pseudonym of `id` in keys.
    pub(crate) fn hide(&self, id: &[u8; 32]) -> [u8; 32] {
        match &self.key {
            Some(key) => *blake3::keyed_hash(key, id).as_bytes(),
            None => *id,
        }
    }
}

/// A [`Backend`] that seals every value it stores under a [`DatabaseKey`] (see the module
/// documentation). Keys pass through as they are: the typed store above hides the ids in them.
pub struct SealedBackend {
    inner: Box<dyn Backend>,
    cipher: XChaCha20Poly1305,
    /// The random first 16 bytes of every nonce this handle uses.
    nonce_prefix: [u8; 16],
    /// The last 8 bytes of the next nonce.
    nonce_counter: AtomicU64,
}

impl fmt::Debug for SealedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedBackend").finish_non_exhaustive()
    }
}

fn associated_data(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_DOMAIN.len() + 1 + key.len());
    ad.extend_from_slice(AD_DOMAIN);
    ad.push(tree.prefix());
    ad.extend_from_slice(key);
    ad
}

impl SealedBackend {
    /// Seals what it writes to `inner` under `key`, and opens what it reads. Fails only if the
    /// operating system's random generator does.
    pub fn new(inner: Box<dyn Backend>, key: &DatabaseKey) -> Result<Self, StoreError> {
        let subkey = key.subkey("kith store values v1");
        let mut nonce_prefix = [0u8; 16];
        getrandom::fill(&mut nonce_prefix)
            .map_err(|e| StoreError::Backend(BackendError::new(std::io::Error::other(e))))?;
        Ok(Self {
            inner,
            cipher: XChaCha20Poly1305::new((&*subkey).into()),
            nonce_prefix,
            nonce_counter: AtomicU64::new(0),
        })
    }

    fn seal(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let failed = || StoreError::Encode { record: "sealed value" };
        let mut out = vec![0u8; SEALED_OVERHEAD + value.len()];
        let (version, rest) = out.split_at_mut(1);
        let (nonce, rest) = rest.split_at_mut(NONCE_LEN);
        let (body, tag_out) = rest.split_at_mut(value.len());
        version.copy_from_slice(&[SEALED_V1]);
        let count = self.nonce_counter.fetch_add(1, Ordering::Relaxed);
        let (prefix, counter) = nonce.split_at_mut(16);
        prefix.copy_from_slice(&self.nonce_prefix);
        counter.copy_from_slice(&count.to_be_bytes());
        let nonce: &[u8; NONCE_LEN] = (&*nonce).try_into().map_err(|_| failed())?;
        let buffer = InOutBuf::new(value, body).map_err(|_| failed())?;
        let tag = self
            .cipher
            .encrypt_inout_detached(nonce.into(), &associated_data(tree, key), buffer)
            .map_err(|_| failed())?;
        tag_out.copy_from_slice(&tag);
        Ok(out)
    }

    fn open(&self, tree: Tree, key: &[u8], mut sealed: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let unauthentic = StoreError::Unauthentic { tree: tree.name() };
        if sealed.len() < SEALED_OVERHEAD || sealed.first() != Some(&SEALED_V1) {
            return Err(unauthentic);
        }
        let body_len = sealed.len() - SEALED_OVERHEAD;
        let (head, rest) = sealed.split_at_mut(1 + NONCE_LEN);
        let (body, tag) = rest.split_at_mut(body_len);
        let nonce: [u8; NONCE_LEN] = head
            .get(1..)
            .and_then(|n| n.try_into().ok())
            .ok_or(StoreError::Unauthentic { tree: tree.name() })?;
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| unauthentic.clone())?;
        self.cipher
            .decrypt_inout_detached(
                (&nonce).into(),
                &associated_data(tree, key),
                InOutBuf::from(body),
                (&tag).into(),
            )
            .map_err(|_| unauthentic)?;
        sealed.truncate(1 + NONCE_LEN + body_len);
        sealed.drain(..1 + NONCE_LEN);
        Ok(sealed)
    }

    fn open_entries(&self, tree: Tree, entries: Vec<Entry>) -> Result<Vec<Entry>, StoreError> {
        entries
            .into_iter()
            .map(|(key, value)| {
                let value = self.open(tree, &key, value)?;
                Ok((key, value))
            })
            .collect()
    }
}

impl Backend for SealedBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)?.map(|v| self.open(tree, key, v)).transpose()
    }

    fn range(
        &self,
        tree: Tree,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let entries = self.inner.range(tree, start, end, reverse, limit)?;
        self.open_entries(tree, entries)
    }

    fn apply(&self, writes: &[RawWrite]) -> Result<(), StoreError> {
        let sealed = writes
            .iter()
            .map(|(tree, key, value)| {
                let value = value.as_ref().map(|v| self.seal(*tree, key, v)).transpose()?;
                Ok((*tree, key.clone(), value))
            })
            .collect::<Result<Vec<RawWrite>, StoreError>>()?;
        self.inner.apply(&sealed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn dump(&self) -> Result<Vec<RawWrite>, StoreError> {
        let mut out = self.inner.dump()?;
        for (tree, key, value) in &mut out {
            if let Some(v) = value.take() {
                *value = Some(self.open(*tree, key, v)?);
            }
        }
        Ok(out)
    }
}
