//! # kith-tests
//!
//! Tests that cross crates: the real `kith` binary driven like a user or a script would, and
//! (with kith-node's network layer) multi-node, fault and namespace tests. This library holds
//! their shared helpers.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The path of the `kith` binary, built once per test run (in the test profile's target
/// directory) with the same cargo that runs the tests.
pub fn kith_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
            let out = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "kith",
                    "--bin",
                    "kith",
                    "--message-format=short",
                    "--manifest-path",
                    manifest,
                ])
                .output()
                .map_err(|e| format!("running cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building kith failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let target =
                std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"))
                });
            Ok(target.join("debug").join("kith"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Runs `kith` with `args` and the profile `data_dir`, returning its output.
pub fn kith(data_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(kith_binary()?)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("KITH_DATA_DIR")
        .output()?)
}
