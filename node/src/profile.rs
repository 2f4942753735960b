//! A profile: one user's data directory, its database and the engine over it.
//!
//! The database is encrypted ([`kith_core::store::SealedBackend`]) under a random key kept in
//! the key file `<data-dir>/key`, wrapped under the user's passphrase with Argon2id, or, where
//! the user chose no passphrase (a relay, a headless node), unwrapped and readable by its owner
//! only ([`KeyProtection`]). A profile from before encryption is migrated once, the first time
//! it is opened with a protection chosen ([`Profile::needs_migration`]).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kith_core::engine::{Config, Engine, OpenError};
use kith_core::store::{
    DatabaseKey, KeyFile, KeyFileError, KeyFileKind, Protection, SideStore, SideTree, Store,
    StoreError,
};
use kith_protocol::UserId;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

use crate::clock::{now_millis, wait_for_lock};

/// The RNG a profile's engine uses: the operating system's generator, for every draw (keys
/// are rare enough that a user-space generator would save nothing worth its state). An OS RNG
/// failure aborts the draw with a panic, as `rand`'s own generators do: continuing without
/// randomness is never an option.
pub type ProfileRng = UnwrapErr<SysRng>;

/// A passphrase: zeroized when the last copy is dropped, never printed.
#[derive(Clone)]
pub struct Passphrase(Arc<Zeroizing<Vec<u8>>>);

impl Passphrase {
    /// Takes the passphrase's bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Arc::new(Zeroizing::new(bytes)))
    }

    /// The passphrase's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// How the profile's database key is unlocked, and kept when a profile is created or migrated
/// to encryption.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum KeyProtection {
    /// Not chosen: a profile whose key needs no passphrase opens; creating a profile, or
    /// opening one that needs a passphrase or is not encrypted yet, is refused with an error
    /// that says what to choose.
    #[default]
    Unset,
    /// Wrapped under this passphrase (Argon2id, [`kith_core::store::KdfParams::DEFAULT`]).
    Passphrase(Passphrase),
    /// Kept unwrapped in the key file, readable by its owner only: for a relay or a headless
    /// node whose disk is protected otherwise. Never a default; an explicit choice.
    NoPassphrase,
    /// Kept in the operating system's keyring: the credential store installed with
    /// [`keyring_core::set_default_store`] (the `kith` CLI installs the platform's: the
    /// Secret Service on Linux, the Keychain on macOS, the Credential Manager on Windows). The
    /// profile then opens for whoever the keyring opens for (the logged-in user, typically).
    Keyring,
}

impl KeyProtection {
    fn passphrase(&self) -> Option<&[u8]> {
        match self {
            KeyProtection::Passphrase(p) => Some(p.as_bytes()),
            _ => None,
        }
    }

    /// How a new key file keeps the key, or why none can be written for `dir`.
    fn chosen(&self, dir: &Path) -> Result<Protection<'_>, ProfileError> {
        self.protection().ok_or_else(|| ProfileError::ProtectionRequired(dir.to_owned()))
    }

    fn protection(&self) -> Option<Protection<'_>> {
        match self {
            KeyProtection::Unset => None,
            KeyProtection::Passphrase(p) => Some(Protection::Passphrase(p.as_bytes())),
            KeyProtection::NoPassphrase => Some(Protection::None),
            KeyProtection::Keyring => Some(Protection::Keyring),
        }
    }
}

/// Why a profile could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// No identity in this data directory.
    #[error("no Kith identity in {0}; run `kith init` first")]
    NoIdentity(PathBuf),
    /// An identity already exists here.
    #[error("{0} already holds a Kith identity")]
    Exists(PathBuf),
    /// The data directory could not be created or secured.
    #[error("data directory {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database failed (the cause is its [`source`](std::error::Error::source)).
    #[error("the profile's database")]
    Store(#[from] StoreError),
    /// The profile's key is protected by a passphrase and none was given.
    #[error(
        "the profile in {0} is protected by a passphrase; give it (a terminal prompt, or the file named by KITH_PASSPHRASE_FILE)"
    )]
    PassphraseRequired(PathBuf),
    /// The passphrase does not open the profile. Nothing was changed.
    #[error("wrong passphrase for the profile in {0}")]
    WrongPassphrase(PathBuf),
    /// Creating a profile, or encrypting one from before encryption, needs a choice: a
    /// passphrase, or explicitly none.
    #[error(
        "the profile in {0} needs a passphrase, or an explicit choice of none (--no-passphrase)"
    )]
    ProtectionRequired(PathBuf),
    /// The key file could not be read or written.
    #[error("the profile's key file")]
    KeyFile(#[source] KeyFileError),
    /// The profile's key is in the keyring, and the keyring did not give it.
    #[error("the profile in {0} keeps its key in the keyring: {1}")]
    Keyring(PathBuf, String),
    /// The backup could not be restored.
    #[error("the backup")]
    Backup(#[from] kith_core::store::BackupError),
}

impl ProfileError {
    fn key_file(dir: &Path, error: KeyFileError) -> Self {
        match error {
            KeyFileError::WrongPassphrase => ProfileError::WrongPassphrase(dir.to_owned()),
            KeyFileError::PassphraseRequired => ProfileError::PassphraseRequired(dir.to_owned()),
            KeyFileError::Keyring(why) => ProfileError::Keyring(dir.to_owned(), why),
            e => ProfileError::KeyFile(e),
        }
    }
}

/// A user's profile on disk.
pub struct Profile {
    dir: PathBuf,
    engine: Engine<ProfileRng>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile").field("dir", &self.dir).field("engine", &self.engine).finish()
    }
}

/// Creates `dir` (and parents) readable by its owner only.
fn secure_dir(dir: &Path) -> Result<(), ProfileError> {
    let io = |source| ProfileError::Io { path: dir.to_owned(), source };
    fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

impl Profile {
    /// The database directory inside a data directory.
    pub fn db_path(dir: &Path) -> PathBuf {
        dir.join("db")
    }

    /// The key file inside a data directory.
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join("key")
    }

    fn key_file(dir: &Path) -> KeyFile {
        KeyFile::new(Self::key_path(dir))
    }

    /// Creates a new identity in `dir` (which must not hold one yet), its database encrypted
    /// under a new key kept as `protection` says.
    pub fn create(
        dir: &Path,
        config: Config,
        protection: &KeyProtection,
    ) -> Result<Self, ProfileError> {
        let new = protection.chosen(dir)?;
        secure_dir(dir)?;
        recover_migration(dir)?;
        let keys = Self::key_file(dir);
        let key = if Self::db_path(dir).exists() {
            // A database from an earlier attempt that stopped before its identity was
            // written opens with its key; one that holds an identity is refused below.
            if !keys.exists() {
                return Err(ProfileError::Exists(dir.to_owned()));
            }
            keys.unlock(protection.passphrase())
                .map_err(|_| ProfileError::Exists(dir.to_owned()))?
        } else {
            // The key file first: a database never exists without the key it is sealed under.
            let key = DatabaseKey::generate().map_err(|e| ProfileError::Io {
                path: dir.to_owned(),
                source: std::io::Error::other(e),
            })?;
            keys.create(&key, &new).map_err(|e| ProfileError::key_file(dir, e))?;
            key
        };
        let store = wait_for_lock(|| Store::open_sled_sealed(&Self::db_path(dir), &key))?;
        let engine = Engine::create(store, UnwrapErr(SysRng), now_millis(), config).map_err(
            |e| match e {
                OpenError::IdentityExists => ProfileError::Exists(dir.to_owned()),
                OpenError::Store(e) => ProfileError::Store(e),
                _ => ProfileError::NoIdentity(dir.to_owned()),
            },
        )?;
        Ok(Self { dir: dir.to_owned(), engine })
    }

    /// Opens the identity in `dir`, unlocking its key as `protection` says. A profile from
    /// before encryption is encrypted first ([`Profile::needs_migration`]), its key kept as
    /// `protection` says.
    pub fn open(
        dir: &Path,
        config: Config,
        protection: &KeyProtection,
    ) -> Result<Self, ProfileError> {
        recover_migration(dir)?;
        if !Self::db_path(dir).exists() {
            return Err(ProfileError::NoIdentity(dir.to_owned()));
        }
        secure_dir(dir)?;
        if Self::needs_migration(dir) {
            migrate(dir, protection)?;
        }
        let key = Self::key_file(dir)
            .unlock(protection.passphrase())
            .map_err(|e| ProfileError::key_file(dir, e))?;
        finish_migration(dir, &key)?;
        let store = wait_for_lock(|| Store::open_sled_sealed(&Self::db_path(dir), &key))?;
        let engine =
            Engine::open(store, UnwrapErr(SysRng), now_millis(), config).map_err(|e| match e {
                OpenError::Store(e) => ProfileError::Store(e),
                _ => ProfileError::NoIdentity(dir.to_owned()),
            })?;
        Ok(Self { dir: dir.to_owned(), engine })
    }

    /// Restores `backup` into `dir`, which must hold no profile: the same identity, contacts
    /// (verification marks included), groups, history and attachment records, its key kept as
    /// `protection` says. Sessions are not restored: they start anew with X3DH, and contacts
    /// see a session reset (the identity key is the same), never a key change. Built in a
    /// directory beside the database and renamed into place once durable: a crash leaves no
    /// profile, or the whole restored one.
    pub fn restore(
        dir: &Path,
        backup: &kith_core::store::RestoredBackup,
        config: Config,
        protection: &KeyProtection,
    ) -> Result<Self, ProfileError> {
        let new = protection.chosen(dir)?;
        if Self::db_path(dir).exists() {
            return Err(ProfileError::Exists(dir.to_owned()));
        }
        secure_dir(dir)?;
        let building = dir.join("db.restoring");
        if building.exists() {
            fs::remove_dir_all(&building).map_err(io_error(&building))?;
        }
        let key = backup.database_key();
        {
            let mut store = Store::open_sled_sealed(&building, &key)?;
            backup.write_into(&mut store)?;
        }
        Self::key_file(dir).create(&key, &new).map_err(|e| ProfileError::key_file(dir, e))?;
        // sled releases its lock in the background: the rename waits for nothing, the open
        // below waits for the lock.
        fs::rename(&building, Self::db_path(dir)).map_err(io_error(&building))?;
        sync_dir(dir)?;
        Self::open(dir, config, protection)
    }

    /// Whether `dir` holds a profile from before encryption, which the next open encrypts.
    pub fn needs_migration(dir: &Path) -> bool {
        Self::db_path(dir).exists() && !Self::key_path(dir).exists()
    }

    /// Whether opening the profile in `dir` needs a passphrase (`false` too where there is no
    /// profile, or one from before encryption).
    pub fn needs_passphrase(dir: &Path) -> Result<bool, ProfileError> {
        Ok(Self::key_kind(dir)? == Some(KeyFileKind::Passphrase))
    }

    /// Whether the profile in `dir` keeps its key in the keyring (so that the caller installs
    /// a credential store before opening it).
    pub fn key_in_keyring(dir: &Path) -> Result<bool, ProfileError> {
        Ok(Self::key_kind(dir)? == Some(KeyFileKind::Keyring))
    }

    /// What the key file in `dir` needs to give up its key (`None`: no key file).
    fn key_kind(dir: &Path) -> Result<Option<KeyFileKind>, ProfileError> {
        let keys = Self::key_file(dir);
        if !keys.exists() {
            return Ok(None);
        }
        keys.kind().map(Some).map_err(|e| ProfileError::key_file(dir, e))
    }

    /// Wraps the profile's key anew: another passphrase, or none. The database is not
    /// rewritten, and a crash at any point leaves a profile that opens with the old protection
    /// or the new one. The profile may be open meanwhile (its key does not change).
    pub fn change_protection(
        dir: &Path,
        old: &KeyProtection,
        new: &KeyProtection,
    ) -> Result<(), ProfileError> {
        let new = new.chosen(dir)?;
        if !Self::key_path(dir).exists() {
            return Err(ProfileError::NoIdentity(dir.to_owned()));
        }
        Self::key_file(dir)
            .rewrap(old.passphrase(), &new)
            .map_err(|e| ProfileError::key_file(dir, e))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<ProfileRng> {
        &self.engine
    }

    /// The engine, taking it out of the profile (the node's driver owns it).
    pub fn into_engine(self) -> Engine<ProfileRng> {
        self.engine
    }

    /// The engine, mutably.
    pub fn engine_mut(&mut self) -> &mut Engine<ProfileRng> {
        &mut self.engine
    }
}

/// Where a migration builds the encrypted database, and keeps the plaintext one while it swaps
/// them.
fn sealed_path(dir: &Path) -> PathBuf {
    dir.join("db.sealed")
}

fn plain_path(dir: &Path) -> PathBuf {
    dir.join("db.plain")
}

/// The relay's chunk files, one directory per recipient (see [`crate::relay`]).
fn blobs_path(dir: &Path) -> PathBuf {
    dir.join("relay-blobs")
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io { path: path.to_owned(), source }
}

fn sync_dir(dir: &Path) -> Result<(), ProfileError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

/// Encrypts a profile from before encryption: copies its database into a new encrypted one
/// (ids in keys hidden, values sealed), writes the key file, swaps the databases, renames the
/// relay's per-recipient chunk directories to the recipients' pseudonyms, and deletes the
/// plaintext database. Until the key file exists a crash leaves the plaintext profile as it
/// was (the partial copy is discarded); after, [`recover_migration`] finishes the swap.
fn migrate(dir: &Path, protection: &KeyProtection) -> Result<(), ProfileError> {
    let new = protection.chosen(dir)?;
    tracing::warn!(
        "encrypting the profile in {} (once: it was written by a version of Kith without \
         encryption at rest)",
        dir.display()
    );
    let sealed = sealed_path(dir);
    if sealed.exists() {
        fs::remove_dir_all(&sealed).map_err(io_error(&sealed))?;
    }
    let key = DatabaseKey::generate()
        .map_err(|e| ProfileError::Io { path: dir.to_owned(), source: std::io::Error::other(e) })?;
    let copied = {
        let plain = wait_for_lock(|| Store::open(&Profile::db_path(dir)))?;
        // Records of the databases the relay and media services had of their own before one
        // database held everything come along.
        let side = plain.side();
        crate::keyspace::import_legacy(&dir.join("relay"), &side, &crate::keyspace::LEGACY_RELAY)?;
        crate::keyspace::import_legacy(&dir.join("media"), &side, &crate::keyspace::LEGACY_MEDIA)?;
        let mut target = Store::open_sled_sealed(&sealed, &key)?;
        plain.copy_into(&mut target, &|side: &SideStore, tree: SideTree, key: &[u8]| {
            crate::keyspace::hidden_side_key(side, tree, key)
        })?
    };
    sync_dir(dir)?;
    Profile::key_file(dir).create(&key, &new).map_err(|e| ProfileError::key_file(dir, e))?;
    recover_migration(dir)?;
    finish_migration(dir, &key)?;
    tracing::warn!("the profile in {} is encrypted ({copied} records)", dir.display());
    Ok(())
}

/// Finishes the database swap of a migration a crash interrupted after its key file was
/// written, or discards one interrupted before (its copy is incomplete, and the plaintext
/// database untouched).
fn recover_migration(dir: &Path) -> Result<(), ProfileError> {
    let (db, sealed, plain) = (Profile::db_path(dir), sealed_path(dir), plain_path(dir));
    if !Profile::key_path(dir).exists() {
        if sealed.exists() {
            fs::remove_dir_all(&sealed).map_err(io_error(&sealed))?;
        }
        return Ok(());
    }
    if sealed.exists() {
        if db.exists() {
            fs::rename(&db, &plain).map_err(io_error(&db))?;
            sync_dir(dir)?;
        }
        fs::rename(&sealed, &db).map_err(io_error(&sealed))?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// The last steps of a migration, once the encrypted database is in place and its key known:
/// the relay's chunk directories renamed to the recipients' pseudonyms, then the plaintext
/// database deleted (its presence says these steps are still to do).
fn finish_migration(dir: &Path, key: &DatabaseKey) -> Result<(), ProfileError> {
    let plain = plain_path(dir);
    if plain.exists() {
        hide_blob_dirs(dir, key)?;
        fs::remove_dir_all(&plain).map_err(io_error(&plain))?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Renames the relay's chunk directories from recipients' ids to their pseudonyms: all of them
/// into a new directory, which then takes the old one's place (run again after a crash, it
/// moves what is left).
fn hide_blob_dirs(dir: &Path, key: &DatabaseKey) -> Result<(), ProfileError> {
    let (blobs, moving) = (blobs_path(dir), dir.join("relay-blobs.sealed"));
    if !blobs.exists() && !moving.exists() {
        return Ok(());
    }
    fs::create_dir_all(&moving).map_err(io_error(&moving))?;
    if blobs.exists() {
        for entry in fs::read_dir(&blobs).map_err(io_error(&blobs))? {
            let entry = entry.map_err(io_error(&blobs))?;
            let name = entry.file_name();
            let target = match name.to_str().and_then(UserId::from_hex) {
                Some(user) => UserId(key.pseudonym(&user.0)).to_string(),
                None => name.to_string_lossy().into_owned(),
            };
            fs::rename(entry.path(), moving.join(target)).map_err(io_error(&blobs))?;
        }
        fs::remove_dir(&blobs).map_err(io_error(&blobs))?;
    }
    fs::rename(&moving, &blobs).map_err(io_error(&moving))?;
    sync_dir(dir)
}
