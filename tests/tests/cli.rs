//! The real `kith` binary, driven as a user or a script would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kith_tests::kith;

#[test]
fn init_then_id_prints_a_stable_contact_string_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("alice");
    let out = kith(&profile, &["init", "--name", "Alice"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created = String::from_utf8(out.stdout).unwrap();

    let out = kith(&profile, &["id"]).unwrap();
    assert!(out.status.success());
    let contact = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(contact.starts_with("kith:12D3KooW"), "{contact}");
    assert!(created.contains(&contact));

    let out = kith(&profile, &["id", "--json"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["contact"], contact.as_str());
    assert_eq!(json["display_name"], "Alice");
    assert_eq!(format!("kith:{}", json["peer_id"].as_str().unwrap()), contact);

    // The profile directory is private to its owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&profile).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "profile directory mode {mode:o}");
    }

    let out = kith(&profile, &["id", "--qr"]).unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains('█'));
}

#[test]
fn bad_input_gives_a_clear_error_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("nobody");
    let out = kith(&profile, &["id"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no Kith identity") && err.contains("kith init"), "{err}");

    assert!(kith(&profile, &["init"]).unwrap().status.success());
    let out = kith(&profile, &["init"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("already holds a Kith identity"));

    let out = kith(&profile, &["frobnicate"]).unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit with 2");
}
