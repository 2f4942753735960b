//! A profile: one user's data directory, its database and the engine over it.

use std::fs;
use std::path::{Path, PathBuf};

use kith_core::engine::{Config, Engine, OpenError};
use kith_core::store::{Store, StoreError};
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;

use crate::clock::{now_millis, wait_for_lock};

/// The RNG a profile's engine uses: the operating system's generator, for every draw (keys
/// are rare enough that a user-space generator would save nothing worth its state). An OS RNG
/// failure aborts the draw with a panic, as `rand`'s own generators do: continuing without
/// randomness is never an option.
pub type ProfileRng = UnwrapErr<SysRng>;

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
}

/// A user's profile on disk.
pub struct Profile {
    dir: PathBuf,
    engine: Engine<ProfileRng>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

    /// Creates a new identity in `dir` (which must not hold one yet).
    pub fn create(dir: &Path, config: Config) -> Result<Self, ProfileError> {
        secure_dir(dir)?;
        let store = wait_for_lock(|| Store::open(&Self::db_path(dir)))?;
        let engine = Engine::create(store, UnwrapErr(SysRng), now_millis(), config).map_err(
            |e| match e {
                OpenError::IdentityExists => ProfileError::Exists(dir.to_owned()),
                OpenError::Store(e) => ProfileError::Store(e),
                _ => ProfileError::NoIdentity(dir.to_owned()),
            },
        )?;
        Ok(Self { dir: dir.to_owned(), engine })
    }

    /// Opens the identity in `dir`.
    pub fn open(dir: &Path, config: Config) -> Result<Self, ProfileError> {
        if !Self::db_path(dir).exists() {
            return Err(ProfileError::NoIdentity(dir.to_owned()));
        }
        secure_dir(dir)?;
        let store = wait_for_lock(|| Store::open(&Self::db_path(dir)))?;
        let engine =
            Engine::open(store, UnwrapErr(SysRng), now_millis(), config).map_err(|e| match e {
                OpenError::Store(e) => ProfileError::Store(e),
                _ => ProfileError::NoIdentity(dir.to_owned()),
            })?;
        Ok(Self { dir: dir.to_owned(), engine })
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
