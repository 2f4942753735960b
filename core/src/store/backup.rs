//! Encrypted backups: a portable archive of what a person would lose with their device — the
//! identity, contacts (with their verification marks), groups, history and attachment records
//! — encrypted under a random 30-digit recovery code (or a passphrase), to restore the same
//! identity on a fresh data directory.
//!
//! Ratchet sessions, prekeys, sender keys and the outbox are **not** in it: a restored ratchet
//! could encrypt again under message keys it already used. Sessions start anew with X3DH, and
//! because the identity key is the same, contacts see a session reset, not a key change.
//!
//! Format: the magic `KITHBAK` and a version byte, a postcard header (Argon2id parameters, a
//! random salt and nonce), then the body sealed with XChaCha20-Poly1305 under the key Argon2id
//! derives from the code or passphrase, with the magic and header as associated data. The body
//! holds the database key and the backed-up records as the encrypted store keeps them (ids in
//! keys hidden under that key), so that a restore writes them back as they were.

use std::fmt;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use kith_protocol::UnixMillis;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::backend::{RawWrite, Tree};
use super::keyfile::KdfParams;
use super::shared::SideStore;
use super::{DatabaseKey, META_SEEN_CURSOR, META_SPK_CURRENT, Store, StoreError};

const MAGIC: &[u8; 8] = b"KITHBAK\x01";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
/// Digits of a recovery code (about 100 bits).
pub const RECOVERY_CODE_DIGITS: usize = 30;

/// The trees a backup holds: who we are, whom we know, what was said, the groups, the
/// attachments' records and the disappearing-message timers (a restored message still
/// disappears when it would have). The ids behind pseudonyms (`names`) come along so that the
/// restored store reads its keys back.
const BACKED_UP: [Tree; 11] = [
    Tree::Meta,
    Tree::Contacts,
    Tree::Messages,
    Tree::MessageIds,
    Tree::Groups,
    Tree::GroupChanges,
    Tree::GroupInvitations,
    Tree::Names,
    Tree::Media,
    Tree::Timers,
    Tree::Expiring,
];

/// Meta entries a backup leaves out: the current signed prekey (prekeys are not restored: a
/// new one is made) and where pruning of seen ids stopped (none are restored).
const META_LEFT_OUT: [&[u8]; 2] = [META_SPK_CURRENT, META_SEEN_CURSOR];

/// Why a backup could not be written or read. Never contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The database failed.
    #[error("the database")]
    Store(#[from] StoreError),
    /// Only an encrypted store can be backed up (the backup carries its key).
    #[error("only an encrypted profile can be backed up")]
    NotEncrypted,
    /// Not a Kith backup, or one from another version of Kith, or cut short.
    #[error("not a Kith backup, or a damaged one")]
    Malformed,
    /// The recovery code or passphrase does not open the backup.
    #[error("wrong recovery code or passphrase for this backup")]
    WrongSecret,
    /// A recovery code must be 30 digits (spaces and dashes aside).
    #[error("a recovery code is {RECOVERY_CODE_DIGITS} digits")]
    BadCode,
    /// Argon2 refused the parameters, or the random generator failed.
    #[error("could not derive the backup's key")]
    Kdf,
}

/// A recovery code: 30 random decimal digits, shown once when a backup is made.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(Zeroizing<String>);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

impl RecoveryCode {
    /// A new code from the operating system's generator (uniform digits: bytes ≥ 250 are
    /// drawn again).
    pub fn generate() -> Result<Self, BackupError> {
        let mut digits = Zeroizing::new(String::with_capacity(RECOVERY_CODE_DIGITS));
        let mut buffer = Zeroizing::new([0u8; 64]);
        while digits.len() < RECOVERY_CODE_DIGITS {
            getrandom::fill(buffer.as_mut_slice()).map_err(|_| BackupError::Kdf)?;
            for byte in buffer.iter().filter(|b| **b < 250) {
                if digits.len() < RECOVERY_CODE_DIGITS {
                    digits.push(char::from(b'0' + byte % 10));
                }
            }
        }
        Ok(Self(digits))
    }

    /// Reads a code as a person types it: 30 digits, with any spaces or dashes between.
    pub fn parse(text: &str) -> Result<Self, BackupError> {
        let digits: String = text.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
        let digits = Zeroizing::new(digits);
        if digits.len() != RECOVERY_CODE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BackupError::BadCode);
        }
        Ok(Self(digits))
    }

    /// The code in six groups of five digits, as it is shown to be written down.
    pub fn grouped(&self) -> String {
        let mut out = String::with_capacity(RECOVERY_CODE_DIGITS + 5);
        for (i, c) in self.0.chars().enumerate() {
            if i > 0 && i % 5 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// What a backup is encrypted under.
pub enum BackupSecret<'a> {
    /// A recovery code.
    Code(&'a RecoveryCode),
    /// A passphrase the user chose.
    Passphrase(&'a [u8]),
}

impl BackupSecret<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            BackupSecret::Code(code) => code.bytes(),
            BackupSecret::Passphrase(p) => p,
        }
    }
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct Header {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

#[derive(Serialize, Deserialize)]
enum Body {
    V1 {
        created_at: UnixMillis,
        key: [u8; 32],
        /// (tree, key as stored, value).
        entries: Vec<(u8, serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
    },
}

impl Drop for Body {
    fn drop(&mut self) {
        let Body::V1 { key, entries, .. } = self;
        key.zeroize();
        for (_, _, value) in entries.iter_mut() {
            value.zeroize();
        }
    }
}

fn derive(
    secret: &[u8],
    params: &KdfParams,
    salt: &[u8; SALT_LEN],
) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let argon =
        argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
            .map_err(|_| BackupError::Kdf)?;
    let mut out = Zeroizing::new([0u8; 32]);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon)
        .hash_password_into(secret, salt, out.as_mut_slice())
        .map_err(|_| BackupError::Kdf)?;
    Ok(out)
}

fn associated_data(header: &[u8]) -> Vec<u8> {
    let mut ad = MAGIC.to_vec();
    ad.extend_from_slice(header);
    ad
}

/// What a backup holds, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupSummary {
    /// Records in it.
    pub records: usize,
    /// Messages among them.
    pub messages: usize,
    /// Contacts among them.
    pub contacts: usize,
}

fn summarize(entries: &[(u8, serde_bytes::ByteBuf, serde_bytes::ByteBuf)]) -> BackupSummary {
    let count = |tree: Tree| entries.iter().filter(|(t, _, _)| *t == tree.prefix()).count();
    BackupSummary {
        records: entries.len(),
        messages: count(Tree::Messages),
        contacts: count(Tree::Contacts),
    }
}

/// Writes a backup of the store `side` belongs to (an encrypted one), encrypted under
/// `secret` with Argon2id at `params`. Commits not yet flushed are included.
pub fn create_backup(
    side: &SideStore,
    secret: &BackupSecret<'_>,
    params: KdfParams,
    now: UnixMillis,
) -> Result<(Vec<u8>, BackupSummary), BackupError> {
    let shared = side.shared();
    let key = shared.database_key().ok_or(BackupError::NotEncrypted)?;
    let mut entries = Vec::new();
    for tree in BACKED_UP {
        let mut from = Vec::new();
        loop {
            let page = shared.range(tree, &from, &[], false, 4096)?;
            let full = page.len() == 4096;
            if let Some((last, _)) = page.last() {
                from.clone_from(last);
                from.push(0);
            }
            for (k, v) in page {
                if tree == Tree::Meta && META_LEFT_OUT.contains(&k.as_slice()) {
                    continue;
                }
                entries.push((
                    tree.prefix(),
                    serde_bytes::ByteBuf::from(k),
                    serde_bytes::ByteBuf::from(v),
                ));
            }
            if !full {
                break;
            }
        }
    }
    let summary = summarize(&entries);
    let body = Body::V1 { created_at: now, key: *key.expose(), entries };
    let plain = Zeroizing::new(postcard::to_allocvec(&body).map_err(|_| BackupError::Malformed)?);
    let mut header = Header { params, salt: [0; SALT_LEN], nonce: [0; NONCE_LEN] };
    getrandom::fill(&mut header.salt).map_err(|_| BackupError::Kdf)?;
    getrandom::fill(&mut header.nonce).map_err(|_| BackupError::Kdf)?;
    let header_bytes = postcard::to_allocvec(&header).map_err(|_| BackupError::Malformed)?;
    let wrapping = derive(secret.bytes(), &header.params, &header.salt)?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(
        &u32::try_from(header_bytes.len()).map_err(|_| BackupError::Malformed)?.to_be_bytes(),
    );
    out.extend_from_slice(&header_bytes);
    let start = out.len();
    out.resize(start + plain.len() + 16, 0);
    let (body_out, tag_out) =
        out.get_mut(start..).ok_or(BackupError::Malformed)?.split_at_mut(plain.len());
    let buffer = InOutBuf::new(plain.as_slice(), body_out).map_err(|_| BackupError::Malformed)?;
    let tag = XChaCha20Poly1305::new((&*wrapping).into())
        .encrypt_inout_detached((&header.nonce).into(), &associated_data(&header_bytes), buffer)
        .map_err(|_| BackupError::Malformed)?;
    tag_out.copy_from_slice(&tag);
    Ok((out, summary))
}

/// A backup opened with its code or passphrase: the database key and the records, to write
/// into a fresh store sealed under that key ([`RestoredBackup::write_into`]).
pub struct RestoredBackup {
    body: Body,
}

impl fmt::Debug for RestoredBackup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoredBackup").field("summary", &self.summary()).finish_non_exhaustive()
    }
}

impl RestoredBackup {
    /// Opens `bytes` with `secret`; nothing is decrypted unless the whole archive
    /// authenticates.
    pub fn open(bytes: &[u8], secret: &BackupSecret<'_>) -> Result<Self, BackupError> {
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(BackupError::Malformed)?;
        let (len, rest) = rest.split_at_checked(4).ok_or(BackupError::Malformed)?;
        let len = u32::from_be_bytes(len.try_into().map_err(|_| BackupError::Malformed)?);
        let (header_bytes, sealed) = rest
            .split_at_checked(usize::try_from(len).map_err(|_| BackupError::Malformed)?)
            .ok_or(BackupError::Malformed)?;
        let header: Header =
            postcard::from_bytes(header_bytes).map_err(|_| BackupError::Malformed)?;
        if !header.params.acceptable() {
            return Err(BackupError::Malformed);
        }
        let body_len = sealed.len().checked_sub(16).ok_or(BackupError::Malformed)?;
        let (body, tag) = sealed.split_at(body_len);
        let tag: [u8; 16] = tag.try_into().map_err(|_| BackupError::Malformed)?;
        let wrapping = derive(secret.bytes(), &header.params, &header.salt)?;
        let mut plain = Zeroizing::new(vec![0u8; body_len]);
        let buffer =
            InOutBuf::new(body, plain.as_mut_slice()).map_err(|_| BackupError::Malformed)?;
        XChaCha20Poly1305::new((&*wrapping).into())
            .decrypt_inout_detached(
                (&header.nonce).into(),
                &associated_data(header_bytes),
                buffer,
                (&tag).into(),
            )
            .map_err(|_| BackupError::WrongSecret)?;
        let body: Body = postcard::from_bytes(&plain).map_err(|_| BackupError::Malformed)?;
        Ok(Self { body })
    }

    /// The database key the records are sealed and hidden under.
    pub fn database_key(&self) -> DatabaseKey {
        let Body::V1 { key, .. } = &self.body;
        let mut key = Zeroizing::new(*key);
        DatabaseKey::from_bytes(&mut key)
    }

    /// When the backup was made.
    pub fn created_at(&self) -> UnixMillis {
        let Body::V1 { created_at, .. } = &self.body;
        *created_at
    }

    /// What it holds.
    pub fn summary(&self) -> BackupSummary {
        let Body::V1 { entries, .. } = &self.body;
        summarize(entries)
    }

    /// Writes the records into `store`, an empty store sealed under
    /// [`RestoredBackup::database_key`], and flushes it.
    pub fn write_into(&self, store: &mut Store) -> Result<(), BackupError> {
        let Body::V1 { entries, .. } = &self.body;
        let mut writes: Vec<RawWrite> = Vec::with_capacity(entries.len());
        for (tree, key, value) in entries {
            let tree = Tree::ALL
                .into_iter()
                .find(|t| t.prefix() == *tree && BACKED_UP.contains(t))
                .ok_or(BackupError::Malformed)?;
            writes.push((tree, key.to_vec(), Some(value.to_vec())));
        }
        store.shared.commit(writes);
        store.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn a_recovery_code_is_thirty_uniform_digits_and_reads_back_as_typed() {
        let code = RecoveryCode::generate().unwrap();
        let shown = code.grouped();
        assert_eq!(shown.len(), 35);
        assert_eq!(RecoveryCode::parse(&shown).unwrap(), code);
        assert_eq!(RecoveryCode::parse(&shown.replace(' ', "-")).unwrap(), code);
        assert!(RecoveryCode::parse("12345").is_err());
        assert!(RecoveryCode::parse(&"x".repeat(30)).is_err());
        assert_ne!(RecoveryCode::generate().unwrap(), code);
    }

    /// A backup whose header asks Argon2id for more than Kith accepts is refused before any
    /// work (a crafted file cannot take the machine's memory); one asking for less too.
    #[test]
    fn a_backup_with_parameters_out_of_bounds_is_refused_before_any_work() {
        let store = Store::memory_sealed().unwrap();
        let code = RecoveryCode::generate().unwrap();
        let secret = BackupSecret::Code(&code);
        let (archive, _) = create_backup(&store.side(), &secret, KdfParams::MINIMUM, 0).unwrap();
        assert!(RestoredBackup::open(&archive, &secret).is_ok());
        let header_len =
            usize::try_from(u32::from_be_bytes(archive[8..12].try_into().unwrap())).unwrap();
        let header: Header = postcard::from_bytes(&archive[12..12 + header_len]).unwrap();
        for params in [
            KdfParams { memory_kib: u32::MAX, ..header.params },
            KdfParams { iterations: 1, ..header.params },
        ] {
            let changed = postcard::to_allocvec(&Header { params, ..header }).unwrap();
            let mut forged = MAGIC.to_vec();
            forged.extend_from_slice(&u32::try_from(changed.len()).unwrap().to_be_bytes());
            forged.extend_from_slice(&changed);
            forged.extend_from_slice(&archive[12 + header_len..]);
            assert!(matches!(RestoredBackup::open(&forged, &secret), Err(BackupError::Malformed)));
        }
        assert!(matches!(
            RestoredBackup::open(&archive[..archive.len() - 1], &secret),
            Err(BackupError::WrongSecret | BackupError::Malformed)
        ));
    }
}
