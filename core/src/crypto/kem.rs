//! ML-KEM-768 (FIPS 203), the KEM of PQXDH, through RustCrypto's `ml-kem`.
//!
//! A key pair is kept as its 64-byte seed (`d ‖ z`, FIPS 203's preferred private form), held
//! in two zeroizing [`SecretBytes`]; the expanded decapsulation key is zeroized on drop by
//! `ml-kem`. Every encapsulation key from the network passes FIPS 203 §7.2's input checks
//! before it is used: the type check (exactly 1,184 bytes, enforced by [`KemPublicKey`]'s wire
//! shape) and the modulus check (every coefficient below q = 3329, done by
//! `EncapsulationKey::new`). Ciphertexts are type-checked by [`KemCiphertext`]'s shape;
//! decapsulation of a malformed one yields the implicit-rejection key, never an error that
//! could act as an oracle.

use std::fmt;

use kith_protocol::{KemCiphertext, KemPublicKey};
use ml_kem::array::Array;
use ml_kem::kem::{Decapsulate, Encapsulate, KeyExport};
use ml_kem::{MlKem768, Seed};
use zeroize::{Zeroize, Zeroizing};

use super::secret::SecretBytes;

type DecapsulationKey = ml_kem::DecapsulationKey<MlKem768>;
type EncapsulationKey = ml_kem::EncapsulationKey<MlKem768>;

/// An encapsulation key failed FIPS 203's modulus check: a coefficient is not below q.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid ML-KEM-768 encapsulation key (a coefficient is not reduced modulo q)")]
pub struct InvalidKemKey;

/// An ML-KEM-768 key pair.
pub struct KemKeyPair {
    d: SecretBytes,
    z: SecretBytes,
    decapsulation: Box<DecapsulationKey>,
    public: KemPublicKey,
}

impl KemKeyPair {
    /// Generates a key pair from 64 fresh random bytes (FIPS 203 `ML-KEM.KeyGen`).
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_seed(&SecretBytes::random(rng), &SecretBytes::random(rng))
    }

    /// Rebuilds a key pair from its seed halves `d` and `z` (FIPS 203 `ML-KEM.KeyGen_internal`).
    pub fn from_seed(d: &SecretBytes, z: &SecretBytes) -> Self {
        let mut seed = Seed::default();
        let (seed_d, seed_z) = seed.as_mut_slice().split_at_mut(32);
        seed_d.copy_from_slice(d.expose());
        seed_z.copy_from_slice(z.expose());
        let decapsulation = Box::new(DecapsulationKey::from_seed(seed));
        // `Seed` is `Copy`: the copy handed over is ml-kem's to drop; ours is wiped here.
        seed.as_mut_slice().zeroize();
        let mut public = Box::new([0u8; KemPublicKey::LEN]);
        public.copy_from_slice(decapsulation.encapsulation_key().to_bytes().as_slice());
        Self { d: d.clone(), z: z.clone(), decapsulation, public: KemPublicKey(public) }
    }

    /// The seed halves `d` and `z`, for storing.
    pub(crate) fn seed(&self) -> (SecretBytes, SecretBytes) {
        (self.d.clone(), self.z.clone())
    }

    /// The encapsulation key.
    pub fn public(&self) -> &KemPublicKey {
        &self.public
    }

    /// Decapsulates `ciphertext` (FIPS 203 `ML-KEM.Decaps`). A ciphertext not made for this key
    /// yields an unrelated pseudorandom secret (implicit rejection), so the caller's AEAD, not
    /// this function, refuses it.
    pub fn decapsulate(&self, ciphertext: &KemCiphertext) -> SecretBytes {
        let ciphertext = Array::from(*ciphertext.0);
        let shared = self.decapsulation.decapsulate(&ciphertext);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(shared.as_slice());
        SecretBytes::from_array(&mut bytes)
    }
}

impl Clone for KemKeyPair {
    fn clone(&self) -> Self {
        Self::from_seed(&self.d, &self.z)
    }
}

impl fmt::Debug for KemKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KemKeyPair").field("public", &self.public).finish_non_exhaustive()
    }
}

/// Checks an encapsulation key from the network (FIPS 203 §7.2) without using it.
pub fn check(public: &KemPublicKey) -> Result<(), InvalidKemKey> {
    checked(public).map(drop)
}

fn checked(public: &KemPublicKey) -> Result<EncapsulationKey, InvalidKemKey> {
    EncapsulationKey::new(&Array::from(*public.0)).map_err(|_| InvalidKemKey)
}

/// Encapsulates a fresh shared secret to `public` after checking it (FIPS 203
/// `ML-KEM.Encaps`): the ciphertext to send and the secret.
pub fn encapsulate<R: rand_core::CryptoRng + ?Sized>(
    public: &KemPublicKey,
    rng: &mut R,
) -> Result<(KemCiphertext, SecretBytes), InvalidKemKey> {
    let (ciphertext, shared) = checked(public)?.encapsulate_with_rng(rng);
    Ok(wrap(&ciphertext, &shared))
}

/// Encapsulation with caller-chosen randomness `m`, for known-answer tests only.
#[cfg(test)]
pub(crate) fn encapsulate_deterministic(
    public: &KemPublicKey,
    m: &[u8; 32],
) -> Result<(KemCiphertext, SecretBytes), InvalidKemKey> {
    let (ciphertext, shared) = checked(public)?.encapsulate_deterministic(&Array::from(*m));
    Ok(wrap(&ciphertext, &shared))
}

fn wrap(ciphertext: &[u8], shared: &[u8]) -> (KemCiphertext, SecretBytes) {
    let mut out = Box::new([0u8; KemCiphertext::LEN]);
    out.copy_from_slice(ciphertext);
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes.copy_from_slice(shared);
    (KemCiphertext(out), SecretBytes::from_array(&mut bytes))
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn round_trip_and_seed_restore() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let pair = KemKeyPair::generate(&mut rng);
        let (ct, sent) = encapsulate(pair.public(), &mut rng).unwrap();
        assert_eq!(pair.decapsulate(&ct), sent);
        let (d, z) = pair.seed();
        let restored = KemKeyPair::from_seed(&d, &z);
        assert_eq!(restored.public(), pair.public());
        assert_eq!(restored.decapsulate(&ct), sent);
        // Another key pair's ciphertext gives an unrelated secret (implicit rejection).
        let other = KemKeyPair::generate(&mut rng);
        assert_ne!(other.decapsulate(&ct), sent);
    }

    #[test]
    fn unreduced_coefficient_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let pair = KemKeyPair::generate(&mut rng);
        let mut bad = pair.public().clone();
        // The first 12-bit coefficient set to 4095 >= q.
        bad.0[0] = 0xff;
        bad.0[1] |= 0x0f;
        assert_eq!(encapsulate(&bad, &mut rng).err(), Some(InvalidKemKey));
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let pair = KemKeyPair::generate(&mut rng);
        let shown = format!("{pair:?}");
        let (d, _) = pair.seed();
        assert!(!shown.contains(&hex::encode(&d.expose()[..4])), "{shown}");
    }
}
