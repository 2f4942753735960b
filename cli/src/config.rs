//! `kith.toml` in the profile directory: the network settings a node started by `kith daemon`
//! (or by any command that starts one) uses when no flag gives them, so that nobody types an
//! address after the first set-up. `kith relay` prints the lines to paste:
//!
//! ```toml
//! bootstrap = ["/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW..."]
//! relays = ["/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW..."]
//! # listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
//! # message_requests = false   # refuse strangers' messages instead of holding them as requests
//! ```
//!
//! A flag replaces the file's list of the same kind (`--bootstrap` the file's `bootstrap`,
//! `--relay` its `relays`, `--listen` its `listen`). Unknown keys are refused by name.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The file's name in the profile directory.
pub(crate) const FILE: &str = "kith.toml";

/// What `kith.toml` holds.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Listen addresses.
    #[serde(default)]
    pub(crate) listen: Vec<String>,
    /// Bootstrap peers, each with `/p2p/<peer-id>`.
    #[serde(default)]
    pub(crate) bootstrap: Vec<String>,
    /// Home relays, each with `/p2p/<peer-id>`.
    #[serde(default)]
    pub(crate) relays: Vec<String>,
    /// Whether a stranger's first message is kept as a message request (the default) or
    /// refused.
    #[serde(default)]
    pub(crate) message_requests: Option<bool>,
}

impl FileConfig {
    /// Reads `data_dir/kith.toml`; no file is an empty configuration.
    pub(crate) fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Where the file lives for `data_dir`.
    pub(crate) fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// `flags` if any were given, else `file`'s, each labelled for error messages.
pub(crate) fn pick<'a>(
    flags: &'a [String],
    flag: &'static str,
    file: &'a [String],
    key: &'static str,
) -> (&'a [String], String) {
    if flags.is_empty() && !file.is_empty() {
        (file, format!("{FILE} {key}"))
    } else {
        (flags, flag.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_gives_lists_and_refuses_unknown_keys_by_name() {
        let config = FileConfig::parse(
            "bootstrap = [\"/ip4/203.0.113.7/tcp/4001\"]\nrelays = []\n# a comment\n",
        )
        .unwrap();
        assert_eq!(config.bootstrap, vec!["/ip4/203.0.113.7/tcp/4001".to_owned()]);
        assert!(config.relays.is_empty() && config.listen.is_empty());
        let e = FileConfig::parse("relay = [\"x\"]").unwrap_err();
        assert!(format!("{e:#}").contains("relay"), "{e:#}");
        assert!(FileConfig::parse("bootstrap = \"not a list\"").is_err());
    }

    #[test]
    fn no_file_is_empty_and_flags_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(FileConfig::load(dir.path()).unwrap(), FileConfig::default());
        std::fs::write(FileConfig::path(dir.path()), "relays = [\"/dns/r.example/tcp/1\"]")
            .unwrap();
        let file = FileConfig::load(dir.path()).unwrap();
        let (list, source) = pick(&[], "--relay", &file.relays, "relays");
        assert_eq!((list.len(), source.as_str()), (1, "kith.toml relays"));
        let flags = vec!["/ip4/10.0.0.1/tcp/1".to_owned()];
        let (list, source) = pick(&flags, "--relay", &file.relays, "relays");
        assert_eq!((list, source.as_str()), (flags.as_slice(), "--relay"));
    }
}
