//! The key file: where a profile keeps its [`DatabaseKey`], wrapped under a key derived from
//! the user's passphrase with Argon2id, or, where the user asked for no passphrase (a relay, a
//! headless node), unwrapped in a file only its owner can read.
//!
//! Format: the magic `KITHKEY` and a version byte, then a postcard record:
//!
//! - passphrase: the Argon2id parameters (memory in KiB, passes, lanes), a random 16-byte
//!   salt, a random 24-byte nonce, and the database key sealed with XChaCha20-Poly1305 under
//!   the derived key, with the magic and the parameters as associated data (so that a file
//!   whose parameters were weakened does not open);
//! - no passphrase: the database key itself.
//!
//! Replacing the file (a passphrase change) writes a new file beside it, syncs it, renames it
//! over the old one and syncs the directory: a crash at any point leaves the old file or the
//! new one, whole, never a mix, and the database itself is never rewritten.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::DatabaseKey;

const MAGIC: &[u8; 8] = b"KITHKEY\x01";
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;

/// Argon2id's cost parameters, stored in the key file with the salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// What Kith uses: 64 MiB, 3 passes, 1 lane (about 0.2 s on a laptop core; RFC 9106's
    /// second recommended option scaled to a phone's memory, above OWASP's 19 MiB × 2).
    pub const DEFAULT: KdfParams =
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 };

    /// The least Kith accepts from a key file (OWASP's minimum for Argon2id): a file asking
    /// for less was not written by Kith.
    pub const MINIMUM: KdfParams =
        KdfParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 };

    /// The most Kith accepts from a file (1 GiB, 64 passes, 16 lanes): a file asking for more
    /// would make opening it take the machine's memory or minutes of work.
    pub const MAXIMUM: KdfParams =
        KdfParams { memory_kib: 1024 * 1024, iterations: 64, parallelism: 16 };

    /// Whether a file's parameters lie between [`KdfParams::MINIMUM`] and
    /// [`KdfParams::MAXIMUM`].
    pub(crate) fn acceptable(&self) -> bool {
        (Self::MINIMUM.memory_kib..=Self::MAXIMUM.memory_kib).contains(&self.memory_kib)
            && (Self::MINIMUM.iterations..=Self::MAXIMUM.iterations).contains(&self.iterations)
            && (Self::MINIMUM.parallelism..=Self::MAXIMUM.parallelism).contains(&self.parallelism)
    }
}

/// How a new key file keeps the database key.
pub enum Protection<'a> {
    /// Wrapped under a key derived from this passphrase.
    Passphrase(&'a [u8]),
    /// Unwrapped, in a file readable by its owner only (`--no-passphrase`).
    None,
    /// In the operating system's keyring: the credential store the embedding app installed
    /// with [`keyring_core::set_default_store`] (the `kith` CLI installs the platform's). The
    /// file keeps only the entry's name and a check value of the key.
    Keyring,
}

/// The service name of the keyring entries that hold database keys.
pub const KEYRING_SERVICE: &str = "kith";

/// What a key file needs to give up its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileKind {
    /// A passphrase.
    Passphrase,
    /// Nothing: the key is stored unwrapped.
    Unprotected,
    /// The operating system's keyring.
    Keyring,
}

/// Why a key file could not be read or written. Never contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read, written or synced.
    #[error("key file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No key file there.
    #[error("no key file at {0}")]
    Missing(PathBuf),
    /// Not a key file this build reads.
    #[error("{0} is not a Kith key file, or one from another version of Kith")]
    Malformed(PathBuf),
    /// The passphrase does not unwrap the key.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The key is wrapped and no passphrase was given.
    #[error("the profile is protected by a passphrase, and none was given")]
    PassphraseRequired,
    /// The parameters are below what Kith accepts, or Argon2 refused them.
    #[error("key file {0} asks for Argon2id parameters Kith does not accept")]
    BadParams(PathBuf),
    /// The operating system's random generator failed.
    #[error("the operating system's random generator failed")]
    Random,
    /// The keyring failed, or does not hold the key (never contains the secret).
    #[error("the keyring: {0}")]
    Keyring(String),
}

/// A keyring failure, described without the secret some variants carry.
fn keyring_error(e: &keyring_core::Error) -> KeyFileError {
    use keyring_core::Error as E;
    KeyFileError::Keyring(match e {
        E::NoEntry => "it holds no key for this profile (deleted, or another keyring?)".into(),
        E::NoStorageAccess(p) => format!("it is locked or cannot be reached ({p})"),
        E::PlatformFailure(p) => format!("it failed ({p})"),
        E::NoDefaultStore => "this program has no keyring to use".into(),
        E::BadEncoding(_) | E::BadDataFormat(..) => "its entry for this profile is damaged".into(),
        other => format!("it refused ({})", other_kind(other)),
    })
}

fn other_kind(e: &keyring_core::Error) -> &'static str {
    use keyring_core::Error as E;
    match e {
        E::TooLong(..) => "a name too long",
        E::Invalid(..) => "an invalid parameter",
        E::Ambiguous(_) => "more than one entry matches",
        E::NotSupportedByStore(_) => "not supported by this store",
        _ => "unknown",
    }
}

/// The keyring entry `account` of [`KEYRING_SERVICE`].
fn keyring_entry(account: &str) -> Result<keyring_core::Entry, KeyFileError> {
    keyring_core::Entry::new(KEYRING_SERVICE, account).map_err(|e| keyring_error(&e))
}

/// A value that identifies the key without revealing it: a keyring entry that gives another
/// key is refused instead of opening nothing.
fn key_check(key: &DatabaseKey) -> [u8; 32] {
    *blake3::keyed_hash(key.expose(), b"kith keyring entry check value").as_bytes()
}

#[derive(Serialize, Deserialize)]
enum Stored {
    Passphrase {
        params: KdfParams,
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
        #[serde(with = "serde_bytes")]
        wrapped: Vec<u8>,
    },
    Unprotected {
        key: [u8; 32],
    },
    Keyring {
        account: String,
        check: [u8; 32],
    },
}

impl Drop for Stored {
    fn drop(&mut self) {
        if let Stored::Unprotected { key } = self {
            key.zeroize();
        }
    }
}

fn derive(
    passphrase: &[u8],
    params: &KdfParams,
    salt: &[u8; SALT_LEN],
) -> Option<Zeroizing<[u8; 32]>> {
    let argon_params =
        Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32)).ok()?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into(passphrase, salt, out.as_mut_slice())
        .ok()?;
    Some(out)
}

fn associated_data(params: &KdfParams) -> Vec<u8> {
    let mut ad = MAGIC.to_vec();
    for n in [params.memory_kib, params.iterations, params.parallelism] {
        ad.extend_from_slice(&n.to_be_bytes());
    }
    ad
}

fn encode(stored: &Stored, path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let mut out = Zeroizing::new(MAGIC.to_vec());
    let body = Zeroizing::new(
        postcard::to_allocvec(stored).map_err(|_| KeyFileError::Malformed(path.to_owned()))?,
    );
    out.extend_from_slice(&body);
    Ok(out)
}

fn wrap(
    key: &DatabaseKey,
    protection: &Protection<'_>,
    params: KdfParams,
    path: &Path,
) -> Result<Stored, KeyFileError> {
    match protection {
        Protection::None => Ok(Stored::Unprotected { key: *key.expose() }),
        Protection::Keyring => {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).map_err(|_| KeyFileError::Random)?;
            let account: String = std::iter::once("database key ".to_owned())
                .chain(id.iter().map(|b| format!("{b:02x}")))
                .collect();
            keyring_entry(&account)?.set_secret(key.expose()).map_err(|e| keyring_error(&e))?;
            Ok(Stored::Keyring { account, check: key_check(key) })
        }
        Protection::Passphrase(passphrase) => {
            let mut salt = [0u8; SALT_LEN];
            let mut nonce = [0u8; NONCE_LEN];
            getrandom::fill(&mut salt).map_err(|_| KeyFileError::Random)?;
            getrandom::fill(&mut nonce).map_err(|_| KeyFileError::Random)?;
            let kek = derive(passphrase, &params, &salt)
                .ok_or_else(|| KeyFileError::BadParams(path.to_owned()))?;
            let mut wrapped = vec![0u8; 32 + 16];
            let (body, tag_out) = wrapped.split_at_mut(32);
            let buffer = InOutBuf::new(key.expose().as_slice(), body)
                .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
            let tag = XChaCha20Poly1305::new((&*kek).into())
                .encrypt_inout_detached((&nonce).into(), &associated_data(&params), buffer)
                .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
            tag_out.copy_from_slice(&tag);
            Ok(Stored::Passphrase { params, salt, nonce, wrapped })
        }
    }
}

fn read(path: &Path) -> Result<Stored, KeyFileError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyFileError::Missing(path.to_owned()));
        }
        Err(source) => return Err(KeyFileError::Io { path: path.to_owned(), source }),
    };
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| KeyFileError::Malformed(path.to_owned()))?;
    postcard::from_bytes(body).map_err(|_| KeyFileError::Malformed(path.to_owned()))
}

/// The steps of replacing a key file, in order (a crash can stop it after any of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The new file is written beside the old one.
    Written,
    /// ... and synced.
    Synced,
    /// ... and renamed over the old one.
    Renamed,
    /// ... and the rename is synced: done.
    DirSynced,
}

/// Writes `bytes` to `path` atomically and durably (see the module documentation); stops
/// after `stop_after` as if the process had died there (tests of crash safety).
fn write_atomic(path: &Path, bytes: &[u8], stop_after: Option<Step>) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let stopped = |step| {
        (stop_after == Some(step))
            .then(|| Err(io(std::io::Error::other(format!("stopped after {step:?}")))))
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let temp = path.with_extension("new");
    {
        let mut options = File::options();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        if let Some(stop) = stopped(Step::Written) {
            return stop;
        }
        file.sync_all().map_err(io)?;
    }
    if let Some(stop) = stopped(Step::Synced) {
        return stop;
    }
    fs::rename(&temp, path).map_err(io)?;
    if let Some(stop) = stopped(Step::Renamed) {
        return stop;
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    if let Some(stop) = stopped(Step::DirSynced) {
        return stop;
    }
    Ok(())
}

/// The key file of a profile: `key` in its data directory.
#[derive(Clone, Debug)]
pub struct KeyFile {
    path: PathBuf,
    params: KdfParams,
}

impl KeyFile {
    /// The key file at `path`, new ones wrapped with [`KdfParams::DEFAULT`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), params: KdfParams::DEFAULT }
    }

    /// New wraps use `params` instead (tests use [`KdfParams::MINIMUM`] to save time).
    pub fn with_params(mut self, params: KdfParams) -> Self {
        self.params = params;
        self
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// What the file needs to give up its key.
    pub fn kind(&self) -> Result<KeyFileKind, KeyFileError> {
        Ok(match read(&self.path)? {
            Stored::Passphrase { .. } => KeyFileKind::Passphrase,
            Stored::Unprotected { .. } => KeyFileKind::Unprotected,
            Stored::Keyring { .. } => KeyFileKind::Keyring,
        })
    }

    /// Writes `key` to a new file, kept as `protection` says. An existing file is replaced
    /// atomically.
    pub fn create(
        &self,
        key: &DatabaseKey,
        protection: &Protection<'_>,
    ) -> Result<(), KeyFileError> {
        self.write(key, protection, None)
    }

    fn write(
        &self,
        key: &DatabaseKey,
        protection: &Protection<'_>,
        stop_after: Option<Step>,
    ) -> Result<(), KeyFileError> {
        let stored = wrap(key, protection, self.params, &self.path)?;
        write_atomic(&self.path, &encode(&stored, &self.path)?, stop_after)
    }

    /// The database key: unwrapped with `passphrase`, or read as it is from a file without
    /// one (where a passphrase, if given, is ignored).
    pub fn unlock(&self, passphrase: Option<&[u8]>) -> Result<DatabaseKey, KeyFileError> {
        let stored = read(&self.path)?;
        match &stored {
            Stored::Unprotected { key } => {
                let mut key = Zeroizing::new(*key);
                Ok(DatabaseKey::from_bytes(&mut key))
            }
            Stored::Keyring { account, check } => {
                let secret = Zeroizing::new(
                    keyring_entry(account)?.get_secret().map_err(|e| keyring_error(&e))?,
                );
                let mut key =
                    Zeroizing::new(<[u8; 32]>::try_from(secret.as_slice()).map_err(|_| {
                        KeyFileError::Keyring("its entry for this profile is damaged".into())
                    })?);
                let key = DatabaseKey::from_bytes(&mut key);
                if !bool::from(subtle::ConstantTimeEq::ct_eq(&key_check(&key)[..], &check[..])) {
                    return Err(KeyFileError::Keyring(
                        "its entry for this profile holds another key".into(),
                    ));
                }
                Ok(key)
            }
            Stored::Passphrase { params, salt, nonce, wrapped } => {
                let passphrase = passphrase.ok_or(KeyFileError::PassphraseRequired)?;
                if !params.acceptable() {
                    return Err(KeyFileError::BadParams(self.path.clone()));
                }
                let kek = derive(passphrase, params, salt)
                    .ok_or_else(|| KeyFileError::BadParams(self.path.clone()))?;
                let Some((body, tag)) = wrapped.split_at_checked(32) else {
                    return Err(KeyFileError::Malformed(self.path.clone()));
                };
                let tag: [u8; 16] =
                    tag.try_into().map_err(|_| KeyFileError::Malformed(self.path.clone()))?;
                let mut key = Zeroizing::new([0u8; 32]);
                let buffer = InOutBuf::new(body, key.as_mut_slice())
                    .map_err(|_| KeyFileError::Malformed(self.path.clone()))?;
                XChaCha20Poly1305::new((&*kek).into())
                    .decrypt_inout_detached(
                        nonce.into(),
                        &associated_data(params),
                        buffer,
                        (&tag).into(),
                    )
                    .map_err(|_| KeyFileError::WrongPassphrase)?;
                Ok(DatabaseKey::from_bytes(&mut key))
            }
        }
    }

    /// Wraps the same database key anew (a new passphrase, or none): the data is not
    /// rewritten, and a crash leaves a file that opens with the old protection or the new.
    pub fn rewrap(&self, old: Option<&[u8]>, new: &Protection<'_>) -> Result<(), KeyFileError> {
        self.rewrap_stopping(old, new, None)
    }

    pub(crate) fn rewrap_stopping(
        &self,
        old: Option<&[u8]>,
        new: &Protection<'_>,
        stop_after: Option<Step>,
    ) -> Result<(), KeyFileError> {
        let key = self.unlock(old)?;
        let old_entry = match &read(&self.path)? {
            Stored::Keyring { account, .. } => Some(account.clone()),
            _ => None,
        };
        self.write(&key, new, stop_after)?;
        // The new file is durable: the keyring's old copy of the key goes. A failure here
        // leaves an unused entry behind, never an unopenable profile, so it is not an error.
        if let Some(account) = old_entry
            && let Ok(entry) = keyring_entry(&account)
        {
            let _ = entry.delete_credential();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file(dir: &Path) -> KeyFile {
        KeyFile::new(dir.join("key")).with_params(KdfParams::MINIMUM)
    }

    #[test]
    fn a_wrapped_key_opens_with_its_passphrase_only_and_a_wrong_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let keys = file(dir.path());
        let key = DatabaseKey::generate().unwrap();
        keys.create(&key, &Protection::Passphrase(b"correct horse")).unwrap();
        let bytes = fs::read(keys.path()).unwrap();
        assert!(!bytes.windows(32).any(|w| w == key.expose()), "the key is not in the clear");
        assert_eq!(keys.kind().unwrap(), KeyFileKind::Passphrase);
        assert_eq!(keys.unlock(Some(b"correct horse")).unwrap(), key);
        assert!(matches!(keys.unlock(Some(b"battery staple")), Err(KeyFileError::WrongPassphrase)));
        assert!(matches!(keys.unlock(None), Err(KeyFileError::PassphraseRequired)));
        assert_eq!(fs::read(keys.path()).unwrap(), bytes, "nothing modified");
    }

    #[test]
    fn a_file_with_weakened_parameters_or_bytes_changed_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let keys = file(dir.path());
        let key = DatabaseKey::generate().unwrap();
        keys.create(&key, &Protection::Passphrase(b"pw")).unwrap();
        let stored = read(keys.path()).unwrap();
        let Stored::Passphrase { params, salt, nonce, wrapped } = &stored else {
            panic!("wrapped")
        };
        let (params, salt, nonce, wrapped) = (*params, *salt, *nonce, wrapped.clone());
        // Parameters changed (to Argon2's minimum cost): refused before any work.
        let weak = KdfParams { memory_kib: 8, iterations: 1, parallelism: 1 };
        let stored = Stored::Passphrase { params: weak, salt, nonce, wrapped: wrapped.clone() };
        fs::write(keys.path(), &*encode(&stored, keys.path()).unwrap()).unwrap();
        assert!(matches!(keys.unlock(Some(b"pw")), Err(KeyFileError::BadParams(_))));
        // Stronger parameters than it was wrapped with: the associated data no longer matches.
        let params = KdfParams { iterations: params.iterations + 1, ..params };
        let stored = Stored::Passphrase { params, salt, nonce, wrapped };
        fs::write(keys.path(), &*encode(&stored, keys.path()).unwrap()).unwrap();
        assert!(matches!(keys.unlock(Some(b"pw")), Err(KeyFileError::WrongPassphrase)));
        // Parameters that would take the machine's memory: refused before any work.
        let huge = KdfParams { memory_kib: u32::MAX, ..params };
        let stored = Stored::Passphrase { params: huge, salt, nonce, wrapped: Vec::new() };
        fs::write(keys.path(), &*encode(&stored, keys.path()).unwrap()).unwrap();
        assert!(matches!(keys.unlock(Some(b"pw")), Err(KeyFileError::BadParams(_))));
        fs::write(keys.path(), b"KITHKEY\x01garbage").unwrap();
        assert!(matches!(keys.unlock(Some(b"pw")), Err(KeyFileError::Malformed(_))));
        fs::write(keys.path(), b"").unwrap();
        assert!(matches!(keys.unlock(Some(b"pw")), Err(KeyFileError::Malformed(_))));
    }

    /// The key kept in a keyring (the in-memory mock store stands in for the platform's):
    /// opens without a passphrase, moves to a passphrase and back (the unused entry goes), and
    /// an entry that is gone or holds another key is a clear error, never a wrong key.
    #[test]
    fn a_key_in_the_keyring_opens_and_a_missing_or_foreign_entry_is_a_clear_error() {
        keyring_core::set_default_store(keyring_core::mock::Store::new().unwrap());
        let account = |keys: &KeyFile| match &read(keys.path()).unwrap() {
            Stored::Keyring { account, .. } => account.clone(),
            _ => panic!("not a keyring file"),
        };
        let dir = tempfile::tempdir().unwrap();
        let keys = file(dir.path());
        let key = DatabaseKey::generate().unwrap();
        keys.create(&key, &Protection::Keyring).unwrap();
        assert_eq!(keys.kind().unwrap(), KeyFileKind::Keyring);
        let bytes = fs::read(keys.path()).unwrap();
        assert!(!bytes.windows(32).any(|w| w == key.expose()), "the key is not in the file");
        assert_eq!(keys.unlock(None).unwrap().expose(), key.expose());

        // To a passphrase: the keyring entry goes.
        let first = account(&keys);
        keys.rewrap(None, &Protection::Passphrase(b"pass")).unwrap();
        let gone = keyring_entry(&first).unwrap().get_secret();
        assert!(matches!(gone, Err(keyring_core::Error::NoEntry)), "{gone:?}");
        assert_eq!(keys.unlock(Some(b"pass")).unwrap().expose(), key.expose());

        // Back to the keyring; an entry holding another key, or none, does not open.
        keys.rewrap(Some(b"pass"), &Protection::Keyring).unwrap();
        let entry = keyring_entry(&account(&keys)).unwrap();
        entry.set_secret(DatabaseKey::generate().unwrap().expose()).unwrap();
        let err = keys.unlock(None).unwrap_err();
        assert!(err.to_string().contains("another key"), "{err}");
        entry.delete_credential().unwrap();
        let err = keys.unlock(None).unwrap_err();
        assert!(err.to_string().contains("holds no key"), "{err}");
    }

    #[test]
    fn a_key_file_without_passphrase_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys = file(dir.path());
        let key = DatabaseKey::generate().unwrap();
        keys.create(&key, &Protection::None).unwrap();
        assert_eq!(keys.kind().unwrap(), KeyFileKind::Unprotected);
        assert_eq!(keys.unlock(None).unwrap(), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(keys.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// A passphrase change stopped after each of its steps (as a crash would stop it) leaves
    /// a file that opens with the old passphrase or the new one, always the same key.
    #[test]
    fn a_passphrase_change_stopped_at_any_step_opens_with_the_old_or_the_new_passphrase() {
        for (i, step) in
            [Step::Written, Step::Synced, Step::Renamed, Step::DirSynced].into_iter().enumerate()
        {
            let dir = tempfile::tempdir().unwrap();
            let keys = file(dir.path());
            let key = DatabaseKey::generate().unwrap();
            keys.create(&key, &Protection::Passphrase(b"old")).unwrap();
            let stopped =
                keys.rewrap_stopping(Some(b"old"), &Protection::Passphrase(b"new"), Some(step));
            assert!(stopped.is_err(), "{step:?}");
            let old = keys.unlock(Some(b"old"));
            let new = keys.unlock(Some(b"new"));
            match (old, new) {
                (Ok(k), Err(KeyFileError::WrongPassphrase)) => {
                    assert!(i < 2, "{step:?}: the old file after the rename");
                    assert_eq!(k, key);
                }
                (Err(KeyFileError::WrongPassphrase), Ok(k)) => {
                    assert!(i >= 2, "{step:?}: the new file before the rename");
                    assert_eq!(k, key);
                }
                (old, new) => panic!("{step:?}: old {old:?}, new {new:?}"),
            }
            // A change after the interrupted one completes, stale temporary file or not.
            let current: &[u8] = if i < 2 { b"old" } else { b"new" };
            keys.rewrap(Some(current), &Protection::Passphrase(b"newer")).unwrap();
            assert_eq!(keys.unlock(Some(b"newer")).unwrap(), key);
        }
    }
}
