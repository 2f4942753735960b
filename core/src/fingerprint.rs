//! Safety numbers: a 60-digit number two users compare out of band (read aloud, or side by
//! side) to verify that no one sits between them.
//!
//! This is Signal's numeric fingerprint (libsignal `fingerprint.rs`, version 0 layout): each
//! side's 30 digits are derived from its own identity with 5200 iterations of SHA-512, and the
//! two halves are concatenated in a canonical order so that both users see the same number.
//! Kith's identity material is the Ed25519 key followed by the X25519 identity key, and the
//! stable identifier is the user's PeerId bytes.

use std::fmt;

use sha2::{Digest, Sha512};

use crate::identity::PublicIdentity;

/// SHA-512 iterations per half (Signal's value: slows brute-force search for a collision).
pub const FINGERPRINT_ITERATIONS: usize = 5200;

/// Layout version mixed into the hash.
const FINGERPRINT_VERSION: u16 = 0;

/// A safety number: 12 groups of 5 digits.
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
}

impl SafetyNumber {
    /// The safety number between `ours` and `theirs`; both sides compute the same value.
    pub fn new(ours: &PublicIdentity, theirs: &PublicIdentity) -> Self {
        let (a, b) = (half(ours), half(theirs));
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        Self { digits: first + &second }
    }

    /// The 60 digits without separators.
    pub fn digits(&self) -> &str {
        &self.digits
    }
}

/// Prints the digits in 12 groups of 5, e.g. `12345 67890 …`.
impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.digits.as_bytes().chunks(5).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

/// One side's 30 digits.
fn half(identity: &PublicIdentity) -> String {
    let mut key = Vec::with_capacity(64);
    key.extend_from_slice(&identity.user().0);
    key.extend_from_slice(&identity.dh_key().0);
    let stable_id = crate::identity::peer_id_of(&identity.user())
        .map(|p| p.to_bytes())
        .unwrap_or_else(|_| identity.user().0.to_vec());

    let mut hash = Sha512::new()
        .chain_update(FINGERPRINT_VERSION.to_be_bytes())
        .chain_update(&key)
        .chain_update(&stable_id)
        .finalize();
    for _ in 0..FINGERPRINT_ITERATIONS {
        hash = Sha512::new().chain_update(hash).chain_update(&key).finalize();
    }
    // Six 5-byte chunks, each reduced to five decimal digits.
    hash.chunks_exact(5)
        .take(6)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::identity::IdentityKeyPair;

    #[test]
    fn safety_numbers_match_on_both_sides_and_differ_when_any_key_differs() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let alice = IdentityKeyPair::generate(&mut rng).public();
        let bob = IdentityKeyPair::generate(&mut rng).public();
        let carol = IdentityKeyPair::generate(&mut rng).public();

        let ab = SafetyNumber::new(&alice, &bob);
        assert_eq!(ab, SafetyNumber::new(&bob, &alice));
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(ab.to_string().split(' ').count(), 12);

        // A different peer changes it.
        assert_ne!(ab, SafetyNumber::new(&alice, &carol));
        // The same Ed25519 key with a different X25519 identity key changes it too.
        let other_dh = IdentityKeyPair::generate(&mut rng).public();
        let forged = PublicIdentity::verify(&kith_protocol::prekey::IdentityBinding {
            dh_key: other_dh.dh_key(),
            ..bob.binding()
        });
        assert!(forged.is_err(), "a binding with a foreign X25519 key must not verify");
        // (So a changed X25519 key can only come with a changed signature: compute the number
        // over the raw halves to show the digits depend on the X25519 key.)
        let bob_half = half(&bob);
        let swapped = PublicIdentity { dh_key: other_dh.dh_key(), ..bob };
        assert_ne!(bob_half, half(&swapped));
    }
}
