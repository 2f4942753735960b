//! How the CLI gets the passphrase of a profile's key: from the file named by
//! `KITH_PASSPHRASE_FILE` (scripts, services), else from the terminal (never echoed), and
//! never silently without one: a profile without a passphrase is chosen with
//! `--no-passphrase`, one whose key the operating system's keyring keeps with `--keyring`.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use kith_node::{KeyProtection, Passphrase, Profile};
use zeroize::Zeroizing;

/// The environment variable naming a file that holds the passphrase.
pub(crate) const PASSPHRASE_FILE: &str = "KITH_PASSPHRASE_FILE";

/// `--no-passphrase`, set once from the command line.
static NO_PASSPHRASE: AtomicBool = AtomicBool::new(false);

/// `--keyring`, set once from the command line.
static KEYRING: AtomicBool = AtomicBool::new(false);

/// Records `--keyring` for the rest of the command.
pub(crate) fn set_keyring(on: bool) {
    KEYRING.store(on, Ordering::Relaxed);
}

/// `--keyring` was given: the platform's keyring is installed, to hold the key.
fn keyring_chosen() -> anyhow::Result<bool> {
    if !KEYRING.load(Ordering::Relaxed) {
        return Ok(false);
    }
    install_keyring()?;
    Ok(true)
}

/// Installs the platform's keyring as the store of keyring-held keys (before opening a profile
/// whose key is there, or creating one).
fn install_keyring() -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let store = zbus_secret_service_keyring_store::Store::new()
            .map_err(|e| anyhow::anyhow!("the keyring (Secret Service) cannot be used: {e}"))?;
        kith_node::keyring_core::set_default_store(store);
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    anyhow::bail!(
        "keeping the key in the keyring is supported on Linux (the Secret Service) only so far"
    )
}

/// Records `--no-passphrase` for the rest of the command.
pub(crate) fn set_no_passphrase(on: bool) {
    NO_PASSPHRASE.store(on, Ordering::Relaxed);
}

fn no_passphrase() -> bool {
    NO_PASSPHRASE.load(Ordering::Relaxed)
}

/// The protection to open the profile in `dir` with: its passphrase if its key has one, the
/// choice for a profile from before encryption (encrypted at this open), nothing otherwise.
pub(crate) fn for_open(dir: &Path) -> anyhow::Result<KeyProtection> {
    if Profile::key_in_keyring(dir)? {
        install_keyring()?;
        return Ok(KeyProtection::Keyring);
    }
    if Profile::needs_passphrase(dir)? {
        return Ok(KeyProtection::Passphrase(read("Passphrase: ", false)?));
    }
    if Profile::needs_migration(dir) {
        if keyring_chosen()? {
            eprintln_safe(&format!(
                "Encrypting the profile in {} (written by a version of Kith without encryption \
                 at rest), its key kept in the keyring as --keyring asks",
                dir.display()
            ));
            return Ok(KeyProtection::Keyring);
        }
        if no_passphrase() {
            eprintln_safe(&format!(
                "Encrypting the profile in {} (written by a version of Kith without encryption \
                 at rest), its key kept without a passphrase as --no-passphrase asks",
                dir.display()
            ));
            return Ok(KeyProtection::NoPassphrase);
        }
        eprintln_safe(&format!(
            "The profile in {} was written by a version of Kith without encryption at rest: it \
             is encrypted now, once. Choose a passphrase (or run again with --no-passphrase).",
            dir.display()
        ));
        return Ok(KeyProtection::Passphrase(read("New passphrase: ", true)?));
    }
    Ok(if no_passphrase() { KeyProtection::NoPassphrase } else { KeyProtection::Unset })
}

/// The protection for a new profile: `--no-passphrase`, `--keyring`, or a new passphrase.
pub(crate) fn for_create() -> anyhow::Result<KeyProtection> {
    if keyring_chosen()? {
        return Ok(KeyProtection::Keyring);
    }
    if no_passphrase() {
        return Ok(KeyProtection::NoPassphrase);
    }
    Ok(KeyProtection::Passphrase(read("New passphrase: ", true)?))
}

/// The protection for a relay: as [`for_open`] for an existing profile, [`for_create`] for a
/// new one.
pub(crate) fn for_open_or_create(dir: &Path) -> anyhow::Result<KeyProtection> {
    if Profile::db_path(dir).exists() { for_open(dir) } else { for_create() }
}

/// The current protection of the profile in `dir`, to change it: its passphrase if it has
/// one.
pub(crate) fn current(dir: &Path) -> anyhow::Result<KeyProtection> {
    if Profile::key_in_keyring(dir)? {
        install_keyring()?;
        return Ok(KeyProtection::Keyring);
    }
    Ok(if Profile::needs_passphrase(dir)? {
        KeyProtection::Passphrase(read("Current passphrase: ", false)?)
    } else {
        KeyProtection::NoPassphrase
    })
}

/// A new passphrase for `kith passphrase change`: from `file` if given, `--no-passphrase` for
/// none, else from the terminal.
pub(crate) fn new_for_change(file: Option<&Path>) -> anyhow::Result<KeyProtection> {
    if let Some(file) = file {
        return Ok(KeyProtection::Passphrase(read_file(file)?));
    }
    if keyring_chosen()? {
        return Ok(KeyProtection::Keyring);
    }
    if no_passphrase() {
        return Ok(KeyProtection::NoPassphrase);
    }
    Ok(KeyProtection::Passphrase(read_from_terminal("New passphrase: ", true)?))
}

fn read_file(path: &Path) -> anyhow::Result<Passphrase> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("reading the passphrase from {}", path.display()))?,
    );
    // One trailing line break (what `echo` and editors add) is not part of it.
    let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    anyhow::ensure!(!text.is_empty(), "{} holds no passphrase", path.display());
    Ok(Passphrase::new(text.to_vec()))
}

/// Reads a passphrase from the file named by [`PASSPHRASE_FILE`], else from the terminal
/// (twice for a new one, `confirm`).
fn read(prompt: &str, confirm: bool) -> anyhow::Result<Passphrase> {
    if let Some(path) = std::env::var_os(PASSPHRASE_FILE) {
        return read_file(Path::new(&path)).context(PASSPHRASE_FILE);
    }
    read_from_terminal(prompt, confirm)
}

fn read_from_terminal(prompt: &str, confirm: bool) -> anyhow::Result<Passphrase> {
    anyhow::ensure!(
        std::io::stdin().is_terminal() || std::io::stderr().is_terminal(),
        "the profile's passphrase is needed and there is no terminal to ask it on: set \
         {PASSPHRASE_FILE} to a file that holds it{}",
        if confirm { " (or choose none with --no-passphrase)" } else { "" }
    );
    let first =
        Zeroizing::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
    anyhow::ensure!(
        !first.is_empty(),
        "an empty passphrase protects nothing: use --no-passphrase for none"
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat it: ").context("reading the passphrase")?,
        );
        anyhow::ensure!(*first == *again, "the two passphrases differ; nothing was changed");
    }
    Ok(Passphrase::new(first.as_bytes().to_vec()))
}

#[allow(clippy::print_stderr, reason = "a notice for the person at the terminal")]
fn eprintln_safe(line: &str) {
    eprintln!("{}", kith_node::kith_core::text::for_terminal(line));
}

/// A passphrase from a file, as text (for the control API): one trailing line break is not
/// part of it.
pub(crate) fn read_passphrase_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let passphrase = read_file(path)?;
    Ok(Zeroizing::new(
        String::from_utf8(passphrase.as_bytes().to_vec())
            .map_err(|_| anyhow::anyhow!("{}: the passphrase is not UTF-8", path.display()))?,
    ))
}
