//! Sessions: a PQXDH handshake followed by a Double Ratchet, bound to both identities.
//!
//! The initiator keeps sending its PQXDH header with every message (`PendingPreKey`) until it
//! has received a reply, so the responder can set up the session from whichever of the first
//! messages arrives first; later ones are matched to the session by their base key. A peer may
//! hold several sessions with us (simultaneous initiation, reinstall): `PeerSessions` keeps the
//! current one and up to [`MAX_PREVIOUS_SESSIONS`] older ones, tries them all on receipt, and
//! promotes the one that decrypts.

use kith_protocol::envelope::{EnvelopeKind, PqPreKeyMessage, PreKeyMessage};
use kith_protocol::{DhPublicKey, KemCiphertext, MessageId, UnixMillis};
use zeroize::Zeroizing;

use crate::identity::{IdentityKeyPair, PublicIdentity};
pub use crate::pqxdh::HandshakeError;
use crate::pqxdh::{self, ASSOCIATED_DATA_LEN, AssociatedData, ResponderKeys};
use crate::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey, VerifiedBundle};
pub use crate::ratchet::{
    DecryptError, EncryptError, MAX_DH_PER_MESSAGE, MAX_HEADER_KEYS_TRIED, MAX_RECEIVING_CHAINS,
    MAX_RETIRED_HEADER_KEYS, MAX_SKIP, MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS,
    MAX_STEPS_PER_MESSAGE, RatchetPayload,
};
use crate::ratchet::{Encrypted, Ratchet, WorkBudget};
use crate::store::StoreError;

/// Most superseded sessions kept per peer, to decrypt messages still in flight on them
/// (libsignal keeps more; Kith's relays hold mail for 14 days, and sessions rarely churn).
pub const MAX_PREVIOUS_SESSIONS: usize = 5;

/// The PQXDH header the initiator repeats until the responder answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingPreKey {
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
    /// The KEM prekey encapsulated to and the ciphertext; `None` only for a classical X3DH
    /// session set up before PQXDH (its header is sent as a version-1 PreKey message).
    pub(crate) kem: Option<(u32, KemCiphertext)>,
}

/// One session with one peer: the ratchet state plus what binds it to both identities.
///
/// This is the low-level API (compare vodozemac's `Session`) for apps that bring their own
/// transport and storage; [`crate::engine::Engine`] drives sessions for everyone else. `Debug`
/// shows no key material.
#[derive(Clone)]
pub struct Session {
    pub(crate) ratchet: Ratchet,
    pub(crate) peer: PublicIdentity,
    pub(crate) associated: AssociatedData,
    /// The initiator's ephemeral key; identifies the session on both sides.
    pub(crate) base_key: DhPublicKey,
    /// Whether the session was set up with PQXDH (a KEM secret in SK); `false` only for
    /// sessions set up with classical X3DH before PQXDH, read from old records.
    pub(crate) post_quantum: bool,
    /// The digest of the PQXDH header that set the session up ([`handshake_digest`]): a later
    /// initial message naming this session's base key must repeat that header exactly.
    pub(crate) handshake: Option<[u8; 32]>,
    pub(crate) pending_prekey: Option<PendingPreKey>,
    pub(crate) created_at: UnixMillis,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer.user())
            .field("base_key", &self.base_key)
            .field("post_quantum", &self.post_quantum)
            .field("pending_prekey", &self.pending_prekey.is_some())
            .field("created_at", &self.created_at)
            .field("ratchet", &self.ratchet)
            .finish_non_exhaustive()
    }
}

/// A digest of every field of a PQXDH header but the ratchet message: the initiator repeats
/// the header until answered, and the responder checks each repeat against the first.
pub(crate) fn handshake_digest(m: &PqPreKeyMessage) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("kith 2026 pqxdh header");
    hasher.update(&m.identity_dh_key.0);
    hasher.update(&m.identity_dh_signature.0);
    hasher.update(&m.base_key.0);
    hasher.update(&m.signed_prekey_id.to_be_bytes());
    match m.one_time_prekey_id {
        Some(id) => hasher.update(&[1]).update(&id.to_be_bytes()),
        None => hasher.update(&[0]),
    };
    hasher.update(&m.kem_prekey_id.to_be_bytes());
    hasher.update(m.kem_ciphertext.0.as_slice());
    *hasher.finalize().as_bytes()
}

/// `associated ‖ message id`: what every message of a session authenticates besides its header.
pub(crate) fn message_ad(
    associated: &AssociatedData,
    id: &MessageId,
) -> [u8; ASSOCIATED_DATA_LEN + 16] {
    let mut ad = [0u8; ASSOCIATED_DATA_LEN + 16];
    ad[..ASSOCIATED_DATA_LEN].copy_from_slice(associated);
    ad[ASSOCIATED_DATA_LEN..].copy_from_slice(&id.0);
    ad
}

impl Session {
    /// Starts a session as initiator (PQXDH) from a verified bundle.
    pub fn initiate<R: rand_core::CryptoRng + ?Sized>(
        ours: &IdentityKeyPair,
        bundle: &VerifiedBundle,
        now: UnixMillis,
        rng: &mut R,
    ) -> Result<Self, HandshakeError> {
        let init = pqxdh::initiate(ours, bundle, rng)?;
        let ratchet = Ratchet::initiator(&init.shared, bundle.signed_prekey, rng)
            .map_err(|_| crate::crypto::NonContributory)?;
        Ok(Self {
            ratchet,
            peer: bundle.identity,
            associated: init.associated,
            base_key: init.base_key,
            post_quantum: true,
            handshake: None,
            pending_prekey: Some(PendingPreKey {
                signed_prekey_id: bundle.signed_prekey_id,
                one_time_prekey_id: bundle.one_time_prekey.map(|k| k.id),
                kem: Some((bundle.kem_prekey.id, init.kem_ciphertext)),
            }),
            created_at: now,
        })
    }

    /// Sets up the responder's side of a session from an initial message `id` and decrypts it,
    /// using the signed, one-time and KEM prekeys the message names. The caller keeps the
    /// session (and deletes the one-time prekeys) only if this succeeds; on error nothing was
    /// changed. `theirs` is the sender's identity, verified from the message's binding or
    /// pinned.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        ours: &IdentityKeyPair,
        signed_prekey: &SignedPreKey,
        one_time_prekey: Option<&OneTimePreKey>,
        kem_prekey: &KemPreKey,
        theirs: PublicIdentity,
        id: &MessageId,
        message: &PqPreKeyMessage,
        now: UnixMillis,
    ) -> Result<(Self, Vec<u8>), DecryptError> {
        let keys = ResponderKeys {
            signed_prekey: &signed_prekey.pair,
            one_time_prekey: one_time_prekey.map(|k| &k.pair),
            kem_prekey: &kem_prekey.pair,
        };
        let (shared, associated) =
            pqxdh::respond(ours, &keys, &theirs, &message.base_key, &message.kem_ciphertext)
                .map_err(|_| DecryptError::NonContributory)?;
        let mut session = Self {
            ratchet: Ratchet::responder(&shared, signed_prekey.pair.clone()),
            peer: theirs,
            associated,
            base_key: message.base_key,
            post_quantum: true,
            handshake: Some(handshake_digest(message)),
            pending_prekey: None,
            created_at: now,
        };
        let plaintext = session.decrypt(id, RatchetPayload::Sealed(&message.message), now)?;
        Ok((session, plaintext))
    }

    /// Encrypts `plaintext` as message `id`: a PreKey message while the peer has not yet
    /// answered, a plain ratchet message afterwards. The id is authenticated with the message.
    pub fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        ours: &IdentityKeyPair,
        id: &MessageId,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<EnvelopeKind, EncryptError> {
        let message = self.ratchet.encrypt(&message_ad(&self.associated, id), plaintext, rng)?;
        let identity = ours.public();
        Ok(match (&self.pending_prekey, message) {
            (None, Encrypted::Sealed(message)) => EnvelopeKind::SealedRatchet(message),
            (None, Encrypted::Plain(message)) => EnvelopeKind::Ratchet(message),
            (
                Some(PendingPreKey { signed_prekey_id, one_time_prekey_id, kem: Some((id, ct)) }),
                Encrypted::Sealed(message),
            ) => EnvelopeKind::PqPreKey(Box::new(PqPreKeyMessage {
                identity_dh_key: identity.dh_key(),
                identity_dh_signature: identity.binding().signature,
                base_key: self.base_key,
                signed_prekey_id: *signed_prekey_id,
                one_time_prekey_id: *one_time_prekey_id,
                kem_prekey_id: *id,
                kem_ciphertext: ct.clone(),
                message,
            })),
            // A classical session from before PQXDH, still unanswered: its version-1 header.
            (
                Some(PendingPreKey { signed_prekey_id, one_time_prekey_id, kem: None }),
                Encrypted::Plain(message),
            ) => EnvelopeKind::PreKey(PreKeyMessage {
                identity_dh_key: identity.dh_key(),
                identity_dh_signature: identity.binding().signature,
                base_key: self.base_key,
                signed_prekey_id: *signed_prekey_id,
                one_time_prekey_id: *one_time_prekey_id,
                message,
            }),
            // Records are checked on reading: a PQXDH session always has header keys and a
            // classical one never has.
            (Some(_), _) => return Err(EncryptError::InconsistentState),
        })
    }

    /// Decrypts message `id` (the ratchet part of an initial or ratchet envelope). On error
    /// nothing changes.
    pub fn decrypt(
        &mut self,
        id: &MessageId,
        message: RatchetPayload<'_>,
        now: UnixMillis,
    ) -> Result<Vec<u8>, DecryptError> {
        self.decrypt_within(id, message, now, &mut WorkBudget::default())
    }

    /// [`Session::decrypt`] spending from a budget shared with other sessions the message is
    /// tried on.
    pub(crate) fn decrypt_within(
        &mut self,
        id: &MessageId,
        message: RatchetPayload<'_>,
        now: UnixMillis,
        budget: &mut WorkBudget,
    ) -> Result<Vec<u8>, DecryptError> {
        let associated = message_ad(&self.associated, id);
        let plaintext = self.ratchet.decrypt(message, &associated, now, budget)?;
        // The peer answered on this session, so it holds it: no more handshake headers.
        self.pending_prekey = None;
        Ok(plaintext)
    }

    /// The peer's identity.
    pub fn peer(&self) -> &PublicIdentity {
        &self.peer
    }

    /// The base key (the initiator's ephemeral key) that identifies this session on both sides.
    pub fn base_key(&self) -> DhPublicKey {
        self.base_key
    }

    /// Whether a repeated initial message naming this session's base key carries the header
    /// that set the session up (always false for a classical header on a PQXDH session).
    pub(crate) fn same_handshake(&self, message: Option<&PqPreKeyMessage>) -> bool {
        match message {
            Some(m) => self.handshake.is_none_or(|h| h == handshake_digest(m)),
            None => !self.post_quantum,
        }
    }

    /// Whether the session was set up with PQXDH (always, except for a classical X3DH session
    /// set up before PQXDH and read from an old record).
    pub fn is_post_quantum(&self) -> bool {
        self.post_quantum
    }

    /// Skipped message keys currently held (at most [`MAX_SKIPPED_KEYS`]).
    pub fn skipped_keys(&self) -> usize {
        self.ratchet.skipped_keys()
    }

    /// The session's versioned record bytes (they contain key material: keep them secret).
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        crate::store::records::encode_session(self).map(Zeroizing::new)
    }

    /// Restores a session from [`Session::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        crate::store::records::decode_session(bytes)
    }
}

/// All sessions with one peer: the current one (used to send) and superseded ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerSessions {
    pub(crate) current: Option<Session>,
    /// Newest first.
    pub(crate) previous: Vec<Session>,
}

impl PeerSessions {
    /// Makes `session` current, keeping the old current one as the newest previous session.
    pub(crate) fn install(&mut self, session: Session) {
        if let Some(old) = self.current.replace(session) {
            self.previous.insert(0, old);
            self.previous.truncate(MAX_PREVIOUS_SESSIONS);
        }
    }

    /// The session with this X3DH base key, if any.
    pub(crate) fn by_base_key(&mut self, base_key: &DhPublicKey) -> Option<&mut Session> {
        self.current.iter_mut().chain(self.previous.iter_mut()).find(|s| &s.base_key == base_key)
    }

    /// Decrypts a ratchet message with whichever session can; a previous session that succeeds
    /// becomes current (the peer is using it). On error nothing changes. The derivations all
    /// sessions may spend together are those of one ([`MAX_STEPS_PER_MESSAGE`]).
    pub(crate) fn decrypt(
        &mut self,
        id: &MessageId,
        message: RatchetPayload<'_>,
        now: UnixMillis,
    ) -> Result<Vec<u8>, DecryptError> {
        self.decrypt_within(id, message, now, &mut WorkBudget::default())
    }

    fn decrypt_within(
        &mut self,
        id: &MessageId,
        message: RatchetPayload<'_>,
        now: UnixMillis,
        budget: &mut WorkBudget,
    ) -> Result<Vec<u8>, DecryptError> {
        let mut first_error = None;
        if let Some(current) = &mut self.current {
            match current.decrypt_within(id, message, now, budget) {
                Ok(plaintext) => return Ok(plaintext),
                Err(e) => first_error = Some(e),
            }
        }
        for i in 0..self.previous.len() {
            let Some(session) = self.previous.get_mut(i) else { break };
            match session.decrypt_within(id, message, now, budget) {
                Ok(plaintext) => {
                    let session = self.previous.remove(i);
                    self.install(session);
                    return Ok(plaintext);
                }
                Err(e @ DecryptError::Duplicate { .. }) => first_error = Some(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(DecryptError::Authentication))
    }
}

#[cfg(test)]
mod tests {
    use kith_protocol::prekey::{KemPreKeyKind, PreKeyBundle};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::crypto::SecretBytes;
    use crate::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey, verify_bundle};

    #[test]
    fn prekey_messages_repeat_until_answered() {
        let mut rng = ChaCha20Rng::seed_from_u64(31);
        let alice = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&bob, 1, 0, &mut rng);
        let opk = OneTimePreKey::generate(4, &mut rng);
        let kem = KemPreKey::generate(&bob, 6, KemPreKeyKind::OneTime, 0, &mut rng);
        let bundle = PreKeyBundle {
            identity: bob.binding(),
            signed_prekey: spk.public(),
            one_time_prekey: Some(opk.public()),
            kem_prekey: kem.public(),
        };
        let verified = verify_bundle(&bundle, &bob.user_id(), 0).unwrap();
        let mut a = Session::initiate(&alice, &verified, 0, &mut rng).unwrap();
        let ids: Vec<_> = (0..3u8).map(|i| MessageId([i; 16])).collect();
        let sent: Vec<_> =
            ids.iter().map(|id| a.encrypt(&alice, id, b"hi", &mut rng).unwrap()).collect();
        let prekeys: Vec<_> = sent
            .iter()
            .map(|k| match k {
                EnvelopeKind::PqPreKey(m) => m.clone(),
                other => panic!("expected a PQXDH PreKey message, got {other:?}"),
            })
            .collect();
        assert!(prekeys.iter().all(|m| m.base_key == prekeys[0].base_key
            && m.one_time_prekey_id == Some(4)
            && m.kem_prekey_id == 6
            && m.kem_ciphertext == prekeys[0].kem_ciphertext));

        // Bob gets message 2 first, builds the session from it, then 0 and 1 by base key.
        let (mut b, plain) =
            Session::accept(&bob, &spk, Some(&opk), &kem, alice.public(), &ids[2], &prekeys[2], 0)
                .unwrap();
        assert_eq!(plain, b"hi");
        assert!(b.is_post_quantum() && a.is_post_quantum());
        // The wrong KEM prekey (say, the last-resort one instead of the one-time one named)
        // gives another SK: the first message does not decrypt.
        let wrong = KemPreKey::generate(&bob, 6, KemPreKeyKind::LastResort, 0, &mut rng);
        assert!(
            Session::accept(
                &bob,
                &spk,
                Some(&opk),
                &wrong,
                alice.public(),
                &ids[2],
                &prekeys[2],
                0
            )
            .is_err()
        );
        // And a session survives its record with the pending KEM ciphertext.
        let restored = Session::from_bytes(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(restored.pending_prekey, a.pending_prekey);
        assert!(restored.is_post_quantum());
        for i in [0, 1] {
            let message = RatchetPayload::Sealed(&prekeys[i].message);
            assert_eq!(b.decrypt(&ids[i], message, 0).unwrap(), b"hi");
        }
        // A message decrypted under the wrong id fails (the id is authenticated).
        let reply_id = MessageId([9; 16]);
        let reply = b.encrypt(&bob, &reply_id, b"yo", &mut rng).unwrap();
        let EnvelopeKind::SealedRatchet(reply) = reply else {
            panic!("responder sends ratchet messages with encrypted headers")
        };
        let reply = RatchetPayload::Sealed(&reply);
        assert_eq!(a.decrypt(&MessageId([8; 16]), reply, 0), Err(DecryptError::Authentication));
        assert_eq!(a.decrypt(&reply_id, reply, 0).unwrap(), b"yo");
        // Answered: Alice stops sending X3DH headers.
        assert!(matches!(
            a.encrypt(&alice, &MessageId([5; 16]), b"x", &mut rng).unwrap(),
            EnvelopeKind::SealedRatchet(_)
        ));
    }

    /// A forged header costs at most one session's worst case, whatever the sessions (issue
    /// 14: 35 ms per envelope with six sessions before). With header encryption, a header
    /// forged without the header keys opens in no session and derives nothing; the peer
    /// itself, who holds them, can aim one session only.
    #[test]
    fn a_forged_header_costs_one_sessions_work_whatever_the_sessions() {
        use kith_protocol::envelope::{RatchetHeader, SealedRatchetMessage};

        use crate::crypto::DhKeyPair;
        use crate::ratchet::keys::HeaderKey;
        use crate::ratchet::{MAX_SKIP, MAX_STEPS_PER_MESSAGE};

        let mut rng = ChaCha20Rng::seed_from_u64(32);
        let alice = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&bob, 1, 0, &mut rng);
        let kem = KemPreKey::generate(&bob, 1, KemPreKeyKind::LastResort, 0, &mut rng);
        let mut sessions = PeerSessions::default();
        let mut alices = Vec::new();
        for i in 0..6u8 {
            let bundle = PreKeyBundle {
                identity: bob.binding(),
                signed_prekey: spk.public(),
                one_time_prekey: None,
                kem_prekey: kem.public(),
            };
            let verified = verify_bundle(&bundle, &bob.user_id(), 0).unwrap();
            let mut a = Session::initiate(&alice, &verified, 0, &mut rng).unwrap();
            let id = MessageId([i; 16]);
            let EnvelopeKind::PqPreKey(first) = a.encrypt(&alice, &id, b"hi", &mut rng).unwrap()
            else {
                panic!("first message is a PreKey message")
            };
            let (b, _) =
                Session::accept(&bob, &spk, None, &kem, alice.public(), &id, &first, 0).unwrap();
            sessions.install(b);
            alices.push(a);
        }
        assert_eq!(1 + sessions.previous.len(), 6);
        let id = MessageId([0xee; 16]);
        let header = RatchetHeader {
            ratchet_key: DhKeyPair::generate(&mut rng).public(),
            previous_chain_length: MAX_SKIP,
            counter: MAX_SKIP - 1,
        };
        let forge = |key: &HeaderKey, header: &RatchetHeader, rng: &mut ChaCha20Rng| {
            let ad = message_ad(&alices[0].associated, &id);
            SealedRatchetMessage {
                header: key.seal(&ad, header, rng).unwrap(),
                ciphertext: vec![0; 32],
            }
        };
        let bytes = |s: &PeerSessions| -> Vec<Vec<u8>> {
            s.current.iter().chain(&s.previous).map(|x| x.to_bytes().unwrap().to_vec()).collect()
        };
        let before = bytes(&sessions);

        // Without the header keys: refused by every session before any derivation.
        let outsider = forge(&HeaderKey(SecretBytes::random(&mut rng)), &header, &mut rng);
        let mut budget = WorkBudget::default();
        let refused =
            sessions.decrypt_within(&id, RatchetPayload::Sealed(&outsider), 0, &mut budget);
        assert_eq!(refused, Err(DecryptError::Authentication));
        assert_eq!(budget.steps_spent(), 0);

        // The peer, with the first session's next header key: that session's worst case.
        let next = &alices[0].ratchet.header_keys.as_ref().unwrap().next_sending;
        let aimed = forge(next, &header, &mut rng);
        let mut budget = WorkBudget::default();
        let refused = sessions.decrypt_within(&id, RatchetPayload::Sealed(&aimed), 0, &mut budget);
        assert_eq!(refused, Err(DecryptError::Authentication));
        assert!(budget.steps_spent() >= u64::from(MAX_SKIP), "it was tried on its session");
        assert!(budget.steps_spent() <= MAX_STEPS_PER_MESSAGE, "{}", budget.steps_spent());
        assert_eq!(bytes(&sessions), before, "a refused message changes nothing");

        // A plain header is refused by sessions with header keys (no stripping them).
        let plain = kith_protocol::envelope::RatchetMessage { header, ciphertext: vec![0; 32] };
        let mut budget = WorkBudget::default();
        let refused = sessions.decrypt_within(&id, RatchetPayload::Plain(&plain), 0, &mut budget);
        assert_eq!(refused, Err(DecryptError::Authentication));
        assert_eq!(budget.steps_spent(), 0);

        // And a non-canonical ratchet key (top bit set) is refused before any derivation.
        let mut flipped = header;
        flipped.ratchet_key.0[31] |= 0x80;
        let flipped = forge(next, &flipped, &mut rng);
        let mut budget = WorkBudget::default();
        let aimed_session = sessions.previous.last_mut().unwrap();
        assert_eq!(
            aimed_session.decrypt_within(&id, RatchetPayload::Sealed(&flipped), 0, &mut budget),
            Err(DecryptError::NonCanonicalKey)
        );
        assert!(
            sessions.decrypt_within(&id, RatchetPayload::Sealed(&flipped), 0, &mut budget).is_err()
        );
        assert_eq!(budget.steps_spent(), 0);
        assert_eq!(bytes(&sessions), before);
    }
}
