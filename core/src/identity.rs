//! Identities: who a user is, how others address them, and how a contact string carries that.
//!
//! A user's identity is an Ed25519 key pair; its public key is the [`UserId`] and, encoded as a
//! libp2p identity multihash, the user's `PeerId`, so the Noise handshake of every connection
//! authenticates who is on the other end. For X3DH the user also holds an X25519 identity key,
//! signed by the Ed25519 key ([`IdentityBinding`]) — the two-key layout of Olm and vodozemac.
//! Anyone holding a binding checks the signature once ([`PublicIdentity::verify`]) and from then
//! on handles the verified [`PublicIdentity`].

use std::fmt;
use std::str::FromStr;

use kith_protocol::prekey::IdentityBinding;
use kith_protocol::{DhPublicKey, Signature, UserId};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use crate::crypto::sign::{self, SignContext, SigningKeyPair};
use crate::crypto::{DhKeyPair, SecretBytes, SignatureError};

/// A user's long-term identity: the Ed25519 signing key and the X25519 identity key it signs.
pub struct IdentityKeyPair {
    signing: SigningKeyPair,
    dh: DhKeyPair,
    dh_signature: Signature,
    peer_id: PeerId,
}

impl IdentityKeyPair {
    /// Generates a new identity.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let signing = SigningKeyPair::generate(rng);
        let dh = DhKeyPair::generate(rng);
        let dh_signature = signing.sign(SignContext::IdentityDh, &[&dh.public().0]);
        let peer_id = libp2p_keypair_of(&signing).public().to_peer_id();
        Self { signing, dh, dh_signature, peer_id }
    }

    /// Rebuilds an identity from its stored parts, re-checking that they belong together.
    pub(crate) fn from_stored(
        signing_seed: &SecretBytes,
        dh_secret: &SecretBytes,
        dh_public: DhPublicKey,
        dh_signature: Signature,
    ) -> Result<Self, SignatureError> {
        let signing = SigningKeyPair::from_secret(signing_seed);
        let dh = DhKeyPair::from_stored(dh_secret, dh_public);
        sign::verify(&signing.public(), SignContext::IdentityDh, &[&dh_public.0], &dh_signature)?;
        let peer_id = libp2p_keypair_of(&signing).public().to_peer_id();
        Ok(Self { signing, dh, dh_signature, peer_id })
    }

    /// The same Ed25519 identity with a new X25519 identity key (for tests of identity-key
    /// changes, which must never be accepted silently).
    #[cfg(test)]
    pub(crate) fn with_new_dh_key<R: rand_core::CryptoRng + ?Sized>(&self, rng: &mut R) -> Self {
        let signing = SigningKeyPair::from_secret(&self.signing.secret());
        let dh = DhKeyPair::generate(rng);
        let dh_signature = signing.sign(SignContext::IdentityDh, &[&dh.public().0]);
        Self { signing, dh, dh_signature, peer_id: self.peer_id }
    }

    /// The stored parts: Ed25519 seed, X25519 secret, X25519 public, binding signature.
    pub(crate) fn to_stored(&self) -> (SecretBytes, SecretBytes, DhPublicKey, Signature) {
        (self.signing.secret(), self.dh.secret(), self.dh.public(), self.dh_signature)
    }

    /// The user's id (Ed25519 public key).
    pub fn user_id(&self) -> UserId {
        self.signing.public()
    }

    /// The user's libp2p `PeerId`.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The public identity (user id and X25519 identity key).
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            user: self.user_id(),
            dh_key: self.dh.public(),
            signature: self.dh_signature,
        }
    }

    /// The signed binding to publish.
    pub fn binding(&self) -> IdentityBinding {
        self.public().binding()
    }

    /// Signs `parts` under `context` with the identity key.
    pub fn sign(&self, context: SignContext, parts: &[&[u8]]) -> Signature {
        self.signing.sign(context, parts)
    }

    /// The X25519 identity key pair.
    pub(crate) fn dh(&self) -> &DhKeyPair {
        &self.dh
    }

    /// The same Ed25519 key as a libp2p keypair, so the node's transport identity is the user.
    pub fn libp2p_keypair(&self) -> libp2p_identity::Keypair {
        libp2p_keypair_of(&self.signing)
    }
}

#[allow(
    clippy::expect_used,
    reason = "libp2p accepts every 32-byte Ed25519 seed; only the length is checked"
)]
fn libp2p_keypair_of(signing: &SigningKeyPair) -> libp2p_identity::Keypair {
    let mut seed = *signing.secret().expose();
    // `ed25519_from_bytes` zeroizes `seed`.
    libp2p_identity::Keypair::ed25519_from_bytes(&mut seed).expect("a 32-byte seed is a valid key")
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("user", &self.user_id())
            .field("dh_key", &self.dh.public())
            .finish_non_exhaustive()
    }
}

/// A user's public identity whose binding signature has been verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicIdentity {
    pub(crate) user: UserId,
    pub(crate) dh_key: DhPublicKey,
    pub(crate) signature: Signature,
}

impl PublicIdentity {
    /// Checks the binding signature (strict Ed25519, domain-separated).
    pub fn verify(binding: &IdentityBinding) -> Result<Self, SignatureError> {
        sign::verify(
            &binding.user,
            SignContext::IdentityDh,
            &[&binding.dh_key.0],
            &binding.signature,
        )?;
        Ok(Self { user: binding.user, dh_key: binding.dh_key, signature: binding.signature })
    }

    /// The user's id.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The user's X25519 identity key.
    pub fn dh_key(&self) -> DhPublicKey {
        self.dh_key
    }

    /// The binding, for publishing or storing.
    pub fn binding(&self) -> IdentityBinding {
        IdentityBinding { user: self.user, dh_key: self.dh_key, signature: self.signature }
    }
}

/// A [`UserId`] or `PeerId` that does not denote an Ed25519 identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a Kith identity: the key is not a valid Ed25519 public key")]
pub struct InvalidIdentity;

/// The libp2p `PeerId` of a user id.
pub fn peer_id_of(user: &UserId) -> Result<PeerId, InvalidIdentity> {
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&user.0)
        .map_err(|_| InvalidIdentity)?;
    Ok(PeerId::from_public_key(&libp2p_identity::PublicKey::from(key)))
}

/// The user id inside a `PeerId` (an identity multihash of an Ed25519 key).
pub fn user_id_of(peer: &PeerId) -> Result<UserId, InvalidIdentity> {
    // Identity multihash: code 0x00, length, then the protobuf-encoded public key.
    let bytes = peer.to_bytes();
    let [0x00, len, key @ ..] = bytes.as_slice() else { return Err(InvalidIdentity) };
    if usize::from(*len) != key.len() {
        return Err(InvalidIdentity);
    }
    let key = libp2p_identity::PublicKey::try_decode_protobuf(key)
        .map_err(|_| InvalidIdentity)?
        .try_into_ed25519()
        .map_err(|_| InvalidIdentity)?;
    Ok(UserId(key.to_bytes()))
}

/// What someone needs to reach a user: `kith:<peer-id>`, optionally followed by the user's
/// relays as `?relay=<multiaddr>&relay=<multiaddr>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactString {
    /// The user's id.
    pub user: UserId,
    /// Relays where the user can be reached while offline.
    pub relays: Vec<Multiaddr>,
}

/// Why a contact string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContactStringError {
    /// The string does not start with `kith:`.
    #[error("a contact string starts with `kith:`")]
    MissingScheme,
    /// The peer id is not valid base58 multihash.
    #[error("`{0}` is not a valid peer id")]
    BadPeerId(String),
    /// The peer id is valid but not an Ed25519 identity (a mistyped peer id is often caught
    /// here: most changes to its characters leave no valid Ed25519 key).
    #[error("peer id `{0}` is not a Kith identity (Ed25519): check it for typos")]
    NotAnIdentity(String),
    /// A parameter other than `relay=` was given.
    #[error("unknown contact string parameter `{0}`")]
    UnknownParameter(String),
    /// A relay address is not a valid multiaddr.
    #[error("`{0}` is not a valid multiaddr")]
    BadMultiaddr(String),
    /// A relay address does not say whose it is.
    #[error("relay address `{0}` must end in /p2p/<peer-id>")]
    RelayWithoutPeerId(String),
    /// Too many relays.
    #[error("a contact string carries at most {max} relays")]
    TooManyRelays {
        /// The limit.
        max: usize,
    },
}

impl ContactString {
    /// The contact string of `user` with `relays`.
    pub fn new(user: UserId, relays: Vec<Multiaddr>) -> Self {
        Self { user, relays }
    }
}

impl fmt::Display for ContactString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match peer_id_of(&self.user) {
            Ok(peer) => write!(f, "kith:{peer}")?,
            Err(_) => write!(f, "kith:invalid-{}", self.user)?,
        }
        for (i, relay) in self.relays.iter().enumerate() {
            write!(f, "{}relay={relay}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl FromStr for ContactString {
    type Err = ContactStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix("kith:").ok_or(ContactStringError::MissingScheme)?;
        let (peer, query) = rest.split_once('?').unwrap_or((rest, ""));
        let peer_id =
            PeerId::from_str(peer).map_err(|_| ContactStringError::BadPeerId(peer.to_owned()))?;
        let user =
            user_id_of(&peer_id).map_err(|_| ContactStringError::NotAnIdentity(peer.to_owned()))?;
        let mut relays = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let addr = param
                .strip_prefix("relay=")
                .ok_or_else(|| ContactStringError::UnknownParameter(param.to_owned()))?;
            if relays.len() == kith_protocol::limits::MAX_RELAY_ADDRS {
                return Err(ContactStringError::TooManyRelays {
                    max: kith_protocol::limits::MAX_RELAY_ADDRS,
                });
            }
            let relay = Multiaddr::from_str(addr)
                .map_err(|_| ContactStringError::BadMultiaddr(addr.to_owned()))?;
            // Dialling a relay, and checking who answers, needs its peer id.
            if !relay.iter().any(|p| matches!(p, multiaddr::Protocol::P2p(_))) {
                return Err(ContactStringError::RelayWithoutPeerId(addr.to_owned()));
            }
            relays.push(relay);
        }
        Ok(Self { user, relays })
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn peer_id_and_user_id_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let id = IdentityKeyPair::generate(&mut rng);
        let peer = id.peer_id();
        assert_eq!(peer, id.libp2p_keypair().public().to_peer_id());
        assert_eq!(user_id_of(&peer), Ok(id.user_id()));
        assert_eq!(peer_id_of(&id.user_id()), Ok(peer));
        // A non-Ed25519 (hashed) peer id is refused.
        let hashed =
            PeerId::from_bytes(&[0x12, 0x20].iter().copied().chain([7u8; 32]).collect::<Vec<_>>())
                .unwrap();
        assert_eq!(user_id_of(&hashed), Err(InvalidIdentity));
    }

    #[test]
    fn binding_verifies_and_forgery_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let id = IdentityKeyPair::generate(&mut rng);
        let binding = id.binding();
        assert_eq!(PublicIdentity::verify(&binding).unwrap(), id.public());

        let other = IdentityKeyPair::generate(&mut rng);
        let mut forged = binding;
        forged.dh_key = other.public().dh_key();
        assert_eq!(PublicIdentity::verify(&forged), Err(SignatureError));
        let mut forged = binding;
        forged.user = other.user_id();
        assert_eq!(PublicIdentity::verify(&forged), Err(SignatureError));
    }

    #[test]
    fn contact_string_round_trips_and_rejects_bad_input() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let id = IdentityKeyPair::generate(&mut rng);
        let relay: Multiaddr =
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", id.peer_id()).parse().unwrap();
        let contact = ContactString::new(id.user_id(), vec![relay.clone(), relay]);
        let text = contact.to_string();
        assert!(text.starts_with(&format!("kith:{}?relay=/ip4/", id.peer_id())), "{text}");
        assert_eq!(text.parse::<ContactString>().unwrap(), contact);
        assert_eq!(
            format!("kith:{}", id.peer_id()).parse::<ContactString>().unwrap().relays,
            vec![]
        );

        assert_eq!("12D3KooW".parse::<ContactString>(), Err(ContactStringError::MissingScheme));
        assert!(matches!(
            "kith:nope".parse::<ContactString>(),
            Err(ContactStringError::BadPeerId(_))
        ));
        assert!(matches!(
            format!("kith:{}?relay=/ip4/999.1.1.1/tcp/1", id.peer_id()).parse::<ContactString>(),
            Err(ContactStringError::BadMultiaddr(_))
        ));
        // A relay must say whose it is (as `--relay` requires).
        assert_eq!(
            format!("kith:{}?relay=/ip4/10.0.0.1/tcp/1", id.peer_id()).parse::<ContactString>(),
            Err(ContactStringError::RelayWithoutPeerId("/ip4/10.0.0.1/tcp/1".into()))
        );
        assert!(matches!(
            format!("kith:{}?via=x", id.peer_id()).parse::<ContactString>(),
            Err(ContactStringError::UnknownParameter(_))
        ));
    }

    #[test]
    fn identity_debug_shows_no_key_bytes() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let id = IdentityKeyPair::generate(&mut rng);
        let (seed, dh_secret, ..) = id.to_stored();
        let shown = format!("{id:?}");
        for secret in [seed.expose(), dh_secret.expose()] {
            assert!(!shown.contains(&hex::encode(&secret[..4])), "{shown}");
            assert!(
                !shown.contains(&format!("{:?}", &secret[..4]).trim_end_matches(']').to_string())
            );
        }
        assert!(shown.starts_with("IdentityKeyPair { user: UserId("), "{shown}");
    }
}
