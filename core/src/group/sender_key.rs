//! Sender keys (the Signal/WhatsApp group model): each member encrypts its group messages on
//! its own symmetric chain and signs them with a per-chain Ed25519 key; the chain key and the
//! public signing key go to every other member pairwise, over the Double Ratchet.
//!
//! Message keys come from the chain exactly as in the Double Ratchet (`KDF_CK`: HMAC-SHA256
//! with 0x01 for the message key, 0x02 for the next chain key) and are expanded with their own
//! HKDF label. The chain only moves forward, so a stolen chain state reveals nothing sent
//! before it (forward secrecy per chain); it does reveal everything after, until the member
//! rotates to a new chain (no post-compromise security between rotations).
//!
//! Limits are the ratchet's: a message may skip at most [`MAX_SKIP`] keys, a chain keeps at
//! most [`MAX_SKIPPED_KEYS`] skipped keys for at most [`MAX_SKIPPED_KEY_AGE_MS`], and a member
//! keeps at most [`MAX_CHAINS_PER_MEMBER`] chains (the newest), so late messages on the chain
//! before a rotation still open.

use std::collections::VecDeque;
use std::fmt;

use kith_protocol::content::{SenderKeyDistribution, SymmetricKey};
use kith_protocol::envelope::GroupMessage;
use kith_protocol::{GroupId, GroupTag, MessageId, UnixMillis, UserId};
use zeroize::Zeroizing;

use crate::crypto::kdf::hkdf_sha256_zero_salt;
use crate::crypto::sign::{SignContext, SigningKeyPair, verify};
use crate::crypto::{SecretBytes, aead};
use crate::ratchet::keys::{ChainKey, MessageKey};
pub use crate::ratchet::{MAX_SKIP, MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS};

/// HKDF info for turning a group message key into an AEAD key and nonce.
const GROUP_MESSAGE_KEY_INFO: &[u8] = b"Kith_Group_MessageKeys_v1";

/// Chains kept per member: the current one and the ones before the last rotations.
pub const MAX_CHAINS_PER_MEMBER: usize = 3;

/// Why a group message did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupDecryptError {
    /// The signature does not verify under the chain's signing key.
    #[error("bad signature")]
    BadSignature,
    /// The message's key was used already (or expired): a replay, or a message this late.
    #[error("message key already used or expired (iteration {iteration})")]
    Duplicate {
        /// The message's iteration.
        iteration: u32,
    },
    /// The message would skip more than [`MAX_SKIP`] keys.
    #[error("message too far ahead ({gap} keys, at most {max})")]
    TooFarAhead {
        /// Keys that would be skipped.
        gap: u64,
        /// The limit.
        max: u32,
    },
    /// The signature verified but the ciphertext did not (the sender's own client is broken).
    #[error("authentication failed")]
    Aead,
}

/// Why a group message could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupSealError {
    /// The chain has sealed its 2^32 messages; a new chain must be started (the engine
    /// rotates before sealing, so this reaches no one in practice).
    #[error("the sending chain is exhausted")]
    ChainExhausted,
    /// The plaintext is beyond what one AEAD message can hold.
    #[error(transparent)]
    TooLong(#[from] aead::PlaintextTooLong),
}

/// The associated data of a group message: every field but the ciphertext.
fn associated(
    tag: &GroupTag,
    sender: &UserId,
    id: &MessageId,
    chain_id: u32,
    iteration: u32,
) -> Vec<u8> {
    let mut ad = Vec::with_capacity(32 + 32 + 16 + 8);
    ad.extend_from_slice(&tag.0);
    ad.extend_from_slice(&sender.0);
    ad.extend_from_slice(&id.0);
    ad.extend_from_slice(&chain_id.to_be_bytes());
    ad.extend_from_slice(&iteration.to_be_bytes());
    ad
}

/// The AEAD key and nonce of one message, zeroized on drop.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct AeadKeys {
    key: [u8; 32],
    nonce: [u8; 12],
}

fn expand(key: &MessageKey) -> AeadKeys {
    let mut okm = Zeroizing::new([0u8; 44]);
    // 44 bytes is far below HKDF's limit, so expansion cannot fail.
    let _ = hkdf_sha256_zero_salt(key.0.expose(), GROUP_MESSAGE_KEY_INFO, okm.as_mut_slice());
    let mut keys = AeadKeys { key: [0; 32], nonce: [0; 12] };
    let (k, n) = okm.split_at(32);
    keys.key.copy_from_slice(k);
    keys.nonce.copy_from_slice(n);
    keys
}

/// Our own sending chain in one group.
pub(crate) struct OwnChain {
    pub(crate) chain_id: u32,
    /// The iteration of the next message.
    pub(crate) iteration: u32,
    pub(crate) chain_key: ChainKey,
    pub(crate) signing: SigningKeyPair,
}

impl fmt::Debug for OwnChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnChain")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

impl OwnChain {
    /// A fresh chain: random id, chain key and signing key.
    pub(crate) fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self {
            chain_id: rng.next_u32(),
            iteration: 0,
            chain_key: ChainKey(SecretBytes::random(rng)),
            signing: SigningKeyPair::generate(rng),
        }
    }

    /// What the other members need to read this chain from its current iteration on.
    pub(crate) fn distribution(&self, group: GroupId) -> SenderKeyDistribution {
        SenderKeyDistribution {
            group,
            chain_id: self.chain_id,
            iteration: self.iteration,
            chain_key: SymmetricKey(*self.chain_key.0.expose()),
            signing_key: self.signing.public().0,
        }
    }

    /// Whether the chain has no iteration left to seal with (a new chain is due).
    pub(crate) fn is_exhausted(&self) -> bool {
        self.iteration == u32::MAX
    }

    /// Encrypts and signs `plaintext` as message `id` of `sender`, moving the chain forward.
    pub(crate) fn seal(
        &mut self,
        tag: GroupTag,
        sender: &UserId,
        id: &MessageId,
        plaintext: &[u8],
    ) -> Result<GroupMessage, GroupSealError> {
        let iteration = self.iteration;
        let next = iteration.checked_add(1).ok_or(GroupSealError::ChainExhausted)?;
        let (message_key, chain_key) = self.chain_key.step();
        let keys = expand(&message_key);
        let ad = associated(&tag, sender, id, self.chain_id, iteration);
        let ciphertext = aead::seal(&keys.key, &keys.nonce, &ad, plaintext)?;
        let signature = self.signing.sign(SignContext::GroupMessage, &[&ad, &ciphertext]);
        self.chain_key = chain_key;
        self.iteration = next;
        Ok(GroupMessage { tag, chain_id: self.chain_id, iteration, ciphertext, signature })
    }
}

/// A skipped message key of a member's chain.
#[derive(Clone)]
pub(crate) struct SkippedGroupKey {
    pub(crate) iteration: u32,
    pub(crate) key: MessageKey,
    pub(crate) stored_at: UnixMillis,
}

/// Another member's chain, as far as we have read it.
#[derive(Clone)]
pub(crate) struct PeerChain {
    pub(crate) chain_id: u32,
    /// The iteration `chain_key` belongs to (the next message we expect).
    pub(crate) iteration: u32,
    pub(crate) chain_key: ChainKey,
    pub(crate) signing_key: UserId,
    /// Oldest first.
    pub(crate) skipped: VecDeque<SkippedGroupKey>,
}

impl fmt::Debug for PeerChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerChain")
            .field("chain_id", &self.chain_id)
            .field("iteration", &self.iteration)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl PeerChain {
    /// The chain a distribution message starts.
    pub(crate) fn from_distribution(skd: &SenderKeyDistribution) -> Self {
        let mut key = skd.chain_key.0;
        Self {
            chain_id: skd.chain_id,
            iteration: skd.iteration,
            chain_key: ChainKey(SecretBytes::from_array(&mut key)),
            signing_key: UserId(skd.signing_key),
            skipped: VecDeque::new(),
        }
    }

    /// Checks the signature of `message` from `sender` (cheap enough to run before anything
    /// else, and the check that decides whether a gossip peer forwarded garbage).
    pub(crate) fn verify(
        &self,
        sender: &UserId,
        id: &MessageId,
        message: &GroupMessage,
    ) -> Result<(), GroupDecryptError> {
        let ad = associated(&message.tag, sender, id, message.chain_id, message.iteration);
        verify(
            &self.signing_key,
            SignContext::GroupMessage,
            &[&ad, &message.ciphertext],
            &message.signature,
        )
        .map_err(|_| GroupDecryptError::BadSignature)
    }

    /// Opens a verified message on a copy of the chain; the caller stores the returned chain
    /// only once the message is accepted, so a refusal changes nothing.
    pub(crate) fn open(
        &self,
        sender: &UserId,
        id: &MessageId,
        message: &GroupMessage,
        now: UnixMillis,
    ) -> Result<(Vec<u8>, PeerChain), GroupDecryptError> {
        let mut next = self.clone();
        next.expire(now);
        let target = message.iteration;
        let message_key = if target < next.iteration {
            let position = next
                .skipped
                .iter()
                .rposition(|k| k.iteration == target)
                .ok_or(GroupDecryptError::Duplicate { iteration: target })?;
            next.skipped.remove(position).map(|k| k.key)
        } else {
            let gap = u64::from(target - next.iteration);
            if gap > u64::from(MAX_SKIP) {
                return Err(GroupDecryptError::TooFarAhead { gap, max: MAX_SKIP });
            }
            while next.iteration < target {
                let (key, chain) = next.chain_key.step();
                next.skipped.push_back(SkippedGroupKey {
                    iteration: next.iteration,
                    key,
                    stored_at: now,
                });
                next.chain_key = chain;
                next.iteration += 1;
            }
            while next.skipped.len() > MAX_SKIPPED_KEYS {
                next.skipped.pop_front();
            }
            let (key, chain) = next.chain_key.step();
            next.chain_key = chain;
            next.iteration =
                target.checked_add(1).ok_or(GroupDecryptError::Duplicate { iteration: target })?;
            Some(key)
        }
        .ok_or(GroupDecryptError::Duplicate { iteration: target })?;
        let keys = expand(&message_key);
        let ad = associated(&message.tag, sender, id, message.chain_id, message.iteration);
        let plaintext = aead::open(&keys.key, &keys.nonce, &ad, &message.ciphertext)
            .map_err(|_| GroupDecryptError::Aead)?;
        Ok((plaintext, next))
    }

    fn expire(&mut self, now: UnixMillis) {
        while self
            .skipped
            .front()
            .is_some_and(|k| now.saturating_sub(k.stored_at) > MAX_SKIPPED_KEY_AGE_MS)
        {
            self.skipped.pop_front();
        }
    }
}

/// A member's chains in one group, newest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemberChains {
    pub(crate) chains: Vec<PeerChain>,
}

impl MemberChains {
    pub(crate) fn get(&self, chain_id: u32) -> Option<&PeerChain> {
        self.chains.iter().find(|c| c.chain_id == chain_id)
    }

    /// Adds (or moves forward) a chain from a distribution message. A distribution for a
    /// chain we already read further is ignored: it must not hand back used keys.
    pub(crate) fn install(&mut self, skd: &SenderKeyDistribution) -> bool {
        if let Some(existing) = self.chains.iter().find(|c| c.chain_id == skd.chain_id) {
            if existing.iteration >= skd.iteration || existing.signing_key.0 != skd.signing_key {
                return false;
            }
            self.chains.retain(|c| c.chain_id != skd.chain_id);
        }
        self.chains.insert(0, PeerChain::from_distribution(skd));
        self.chains.truncate(MAX_CHAINS_PER_MEMBER);
        true
    }

    /// Replaces a chain with its advanced copy.
    pub(crate) fn update(&mut self, chain: PeerChain) {
        if let Some(slot) = self.chains.iter_mut().find(|c| c.chain_id == chain.chain_id) {
            *slot = chain;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnChain, MemberChains) {
        let own = OwnChain::generate(&mut rand::rng());
        let mut theirs = MemberChains::default();
        assert!(theirs.install(&own.distribution(GroupId([1; 32]))));
        (own, theirs)
    }

    const TAG: GroupTag = GroupTag([7; 32]);
    const ALICE: UserId = UserId([9; 32]);

    fn open(
        chains: &mut MemberChains,
        id: &MessageId,
        message: &GroupMessage,
    ) -> Result<Vec<u8>, GroupDecryptError> {
        let chain = chains.get(message.chain_id).expect("chain").clone();
        chain.verify(&ALICE, id, message)?;
        let (plaintext, next) = chain.open(&ALICE, id, message, 0)?;
        chains.update(next);
        Ok(plaintext)
    }

    #[test]
    fn in_order_out_of_order_and_replay() {
        let (mut own, mut theirs) = pair();
        let ids: Vec<MessageId> = (0..5u8).map(|i| MessageId([i; 16])).collect();
        let sealed: Vec<GroupMessage> =
            ids.iter().map(|id| own.seal(TAG, &ALICE, id, &id.0).expect("seal")).collect();
        // 0, then 3 (skips 1 and 2), then 1, 2, 4.
        for i in [0, 3, 1, 2, 4] {
            assert_eq!(open(&mut theirs, &ids[i], &sealed[i]).expect("open"), ids[i].0);
        }
        // Every key is used once: a replay is refused and changes nothing.
        for i in [0, 3, 4] {
            assert_eq!(
                open(&mut theirs, &ids[i], &sealed[i]),
                Err(GroupDecryptError::Duplicate { iteration: u32::try_from(i).unwrap() })
            );
        }
    }

    /// Issue 15: the end of a chain is reported as such, not as an authentication failure,
    /// and leaves the chain as it was.
    #[test]
    fn an_exhausted_chain_says_so() {
        let (mut own, _) = pair();
        own.iteration = u32::MAX - 1;
        assert!(!own.is_exhausted());
        let last = own.seal(TAG, &ALICE, &MessageId([1; 16]), b"last").expect("seal");
        assert_eq!(last.iteration, u32::MAX - 1);
        assert!(own.is_exhausted());
        let before = own.distribution(GroupId([1; 32]));
        assert_eq!(
            own.seal(TAG, &ALICE, &MessageId([2; 16]), b"one more"),
            Err(GroupSealError::ChainExhausted)
        );
        assert_eq!(own.distribution(GroupId([1; 32])), before);
    }

    #[test]
    fn tampering_is_refused_before_decryption() {
        let (mut own, mut theirs) = pair();
        let id = MessageId([1; 16]);
        let good = own.seal(TAG, &ALICE, &id, b"hi").expect("seal");
        let mut flipped = good.clone();
        flipped.ciphertext[0] ^= 1;
        let mut later = good.clone();
        later.iteration = 1;
        let mut other_tag = good.clone();
        other_tag.tag = GroupTag([8; 32]);
        for bad in [&flipped, &later, &other_tag] {
            assert_eq!(open(&mut theirs, &id, bad), Err(GroupDecryptError::BadSignature));
        }
        // Another id or sender breaks the signature too.
        assert_eq!(
            open(&mut theirs, &MessageId([2; 16]), &good),
            Err(GroupDecryptError::BadSignature)
        );
        let chain = theirs.get(good.chain_id).expect("chain");
        assert_eq!(
            chain.verify(&UserId([3; 32]), &id, &good),
            Err(GroupDecryptError::BadSignature)
        );
        // None of that moved the chain.
        assert_eq!(open(&mut theirs, &id, &good).expect("open"), b"hi");
    }

    #[test]
    fn skip_limit_and_stale_distributions() {
        let (mut own, mut theirs) = pair();
        let first = own.distribution(GroupId([1; 32]));
        for i in 0..=MAX_SKIP {
            own.seal(TAG, &ALICE, &MessageId([0; 16]), &i.to_be_bytes()).expect("seal");
        }
        let id = MessageId([5; 16]);
        let far = own.seal(TAG, &ALICE, &id, b"far").expect("seal");
        assert!(matches!(open(&mut theirs, &id, &far), Err(GroupDecryptError::TooFarAhead { .. })));
        // A distribution from further on is taken; the older one cannot roll it back.
        assert!(theirs.install(&own.distribution(GroupId([1; 32]))));
        assert!(!theirs.install(&first));
        let id = MessageId([6; 16]);
        let next = own.seal(TAG, &ALICE, &id, b"next").expect("seal");
        assert_eq!(open(&mut theirs, &id, &next).expect("open"), b"next");
    }

    #[test]
    fn a_new_chain_cannot_be_read_with_the_old_one() {
        let (mut own, theirs) = pair();
        let id = MessageId([1; 16]);
        own.seal(TAG, &ALICE, &id, b"old").expect("seal");
        let mut rotated = OwnChain::generate(&mut rand::rng());
        let sealed = rotated.seal(TAG, &ALICE, &id, b"new").expect("seal");
        assert!(theirs.get(sealed.chain_id).is_none());
        // Even forcing the old chain onto it fails: different signing key, different keys.
        let old = theirs.chains[0].clone();
        assert_eq!(old.verify(&ALICE, &id, &sealed), Err(GroupDecryptError::BadSignature));
        let mut relabeled = sealed.clone();
        relabeled.chain_id = old.chain_id;
        assert!(old.open(&ALICE, &id, &relabeled, 0).is_err());
    }
}
