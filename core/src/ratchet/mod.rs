//! The Double Ratchet, as in Signal's specification (revision 1, 2016-11-20), with header
//! fields authenticated as associated data and the per-message AEAD being ChaCha20-Poly1305.
//!
//! ```text
//! KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = "Kith_Ratchet_Root_v1") -> rk', ck
//! KDF_CK(ck)     = HMAC-SHA256(ck, 0x01) -> mk,  HMAC-SHA256(ck, 0x02) -> ck'
//! ENCRYPT(mk)    = HKDF-SHA256(ikm = mk, info = "Kith_Ratchet_MessageKeys_v1") -> key ‖ nonce
//!                  ChaCha20-Poly1305(key, nonce, AD = session AD ‖ message id ‖ header)
//! ```
//!
//! Two deliberate refinements, both also made by vodozemac, that leave the protocol unchanged:
//!
//! * **Lazy sending step.** On receiving a new ratchet key the receiving half of the DH step
//!   runs at once; the sending half (fresh key pair, second `KDF_RK`) runs just before the next
//!   encryption. The keys and messages are exactly those of the specification.
//! * **Decrypt on a plan.** Decryption first derives everything it would change (skipped keys,
//!   next chain key, new root key) into locals, opens the ciphertext, and only writes the state
//!   back once the AEAD tag verified. A message that fails leaves the state exactly as it was.
//!
//! Limits: a message may skip at most [`MAX_SKIP`] keys of one chain (checked before any key
//! is derived); a session keeps at most [`MAX_SKIPPED_KEYS`] skipped keys, for at most
//! [`MAX_SKIPPED_KEY_AGE_MS`], and at most [`MAX_RECEIVING_CHAINS`] receiving chains.

pub(crate) mod keys;
pub(crate) mod skipped;

use kith_protocol::envelope::{RatchetHeader, RatchetMessage};
use kith_protocol::{DhPublicKey, UnixMillis};

use crate::crypto::{DhKeyPair, SecretBytes};
use keys::{ChainKey, MessageKey, RootKey};
use skipped::SkippedKeys;
pub use skipped::{MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS};

/// Most message keys one message may make us skip in one chain (vodozemac's gap; libsignal
/// allows more). Checked before any derivation, so a forged header costs at most this many
/// HMACs and changes nothing.
pub const MAX_SKIP: u32 = 2000;

/// Most receiving chains kept per session (libsignal: 5). Older chains' unused keys survive
/// in the skipped-key store.
pub const MAX_RECEIVING_CHAINS: usize = 5;

/// Most chain steps (HMAC pairs) one received message may cost, over every session it is
/// tried on: what one session's worst case needs (the rest of the old chain plus the new one,
/// each at most [`MAX_SKIP`]). A forged header is thus as cheap to refuse with six sessions as
/// with one.
pub const MAX_STEPS_PER_MESSAGE: u64 = 2 * MAX_SKIP as u64 + 2;

/// Most DH ratchet steps (X25519) one received message may cost, over every session.
pub const MAX_DH_PER_MESSAGE: u32 = 2;

/// What decrypting one message may still spend, shared by every session it is tried on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WorkBudget {
    steps: u64,
    dh: u32,
}

impl Default for WorkBudget {
    fn default() -> Self {
        Self { steps: MAX_STEPS_PER_MESSAGE, dh: MAX_DH_PER_MESSAGE }
    }
}

impl WorkBudget {
    /// Spends `steps` chain steps and `dh` exchanges, or refuses (spending nothing) when they
    /// are not left.
    fn spend(&mut self, steps: u64, dh: u32) -> Result<(), DecryptError> {
        if steps > self.steps || dh > self.dh {
            return Err(DecryptError::OverBudget);
        }
        self.steps -= steps;
        self.dh -= dh;
        Ok(())
    }

    /// Chain steps spent so far.
    #[cfg(test)]
    pub(crate) fn steps_spent(&self) -> u64 {
        MAX_STEPS_PER_MESSAGE - self.steps
    }
}

/// Why a ratchet message was refused. In every case the session state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The message's key was already used (a replay or duplicate) or has been discarded.
    #[error("message {counter} was already received or its key was discarded")]
    Duplicate {
        /// The message's counter.
        counter: u32,
    },
    /// The message would skip more than [`MAX_SKIP`] keys.
    #[error("message skips {gap} keys, more than the limit of {max}")]
    TooFarAhead {
        /// Keys it would skip.
        gap: u64,
        /// The limit.
        max: u32,
    },
    /// The peer's new ratchet key is of low order.
    #[error("the peer's ratchet key is of low order")]
    NonContributory,
    /// The ciphertext, header or associated data did not authenticate.
    #[error("the message did not authenticate")]
    Authentication,
    /// Trying the message on this session would cost more derivations than the message may
    /// (see [`MAX_STEPS_PER_MESSAGE`]): earlier sessions spent its budget.
    #[error("the message costs more work than one message may")]
    OverBudget,
    /// The header's ratchet key is not canonically encoded.
    #[error("non-canonical ratchet key")]
    NonCanonicalKey,
}

/// Why a message could not be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// The responder cannot send before it has received the initiator's first message.
    #[error("no sending chain yet: the peer has not sent a message")]
    NoSendingChain,
    /// The peer's ratchet key is of low order.
    #[error("the peer's ratchet key is of low order")]
    NonContributory,
    /// The sending chain has used all 2³² − 1 message numbers.
    #[error("the sending chain is exhausted")]
    ChainExhausted,
    /// The plaintext is too long for the AEAD.
    #[error("the plaintext is too long")]
    TooLong,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SendingChain {
    pub(crate) chain_key: ChainKey,
    /// Number of the next message (`Ns`).
    pub(crate) index: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReceivingChain {
    pub(crate) ratchet_key: DhPublicKey,
    pub(crate) chain_key: ChainKey,
    /// Number of the next expected message (`Nr`).
    pub(crate) index: u32,
}

/// One side's Double Ratchet state.
#[derive(Clone, Debug)]
pub(crate) struct Ratchet {
    pub(crate) root: RootKey,
    /// `DHs`: the key pair of the current (or, if `sending` is `None`, the last) sending chain.
    pub(crate) our_ratchet: DhKeyPair,
    /// `DHr`: the peer's latest ratchet key.
    pub(crate) their_ratchet: Option<DhPublicKey>,
    /// `CKs`/`Ns`; `None` between receiving a new ratchet key and the next send.
    pub(crate) sending: Option<SendingChain>,
    /// `PN`.
    pub(crate) previous_sending_length: u32,
    /// Oldest first; the last one is the current receiving chain (`CKr`/`Nr`).
    pub(crate) receiving: Vec<ReceivingChain>,
    pub(crate) skipped: SkippedKeys,
}

/// Keys derived for one message, not yet committed.
struct Derived {
    skipped: Vec<(u32, MessageKey)>,
    message_key: MessageKey,
    next_chain: ChainKey,
}

/// Steps `chain` (at index `from`) to `to`, collecting the keys in between as skipped keys and
/// returning the chain key at `to`.
fn skip(chain: &ChainKey, from: u32, to: u32) -> (Vec<(u32, MessageKey)>, ChainKey) {
    let mut chain = chain.clone();
    let mut skipped = Vec::with_capacity(to.saturating_sub(from) as usize);
    for index in from..to {
        let (key, next) = chain.step();
        skipped.push((index, key));
        chain = next;
    }
    (skipped, chain)
}

/// Derives the key of message `to` of `chain` (at index `from`).
fn derive(chain: &ChainKey, from: u32, to: u32) -> Derived {
    let (skipped, chain) = skip(chain, from, to);
    let (message_key, next_chain) = chain.step();
    Derived { skipped, message_key, next_chain }
}

/// Refuses a jump from `from` to `to` of more than [`MAX_SKIP`] keys.
fn check_gap(from: u32, to: u32) -> Result<(), DecryptError> {
    let gap = u64::from(to).saturating_sub(u64::from(from));
    if gap > u64::from(MAX_SKIP) {
        return Err(DecryptError::TooFarAhead { gap, max: MAX_SKIP });
    }
    Ok(())
}

impl Ratchet {
    /// `RatchetInitAlice`: the X3DH initiator, whose first ratchet step uses the responder's
    /// signed prekey as `DHr`.
    pub(crate) fn initiator<R: rand_core::CryptoRng + ?Sized>(
        shared: SecretBytes,
        their_signed_prekey: DhPublicKey,
        rng: &mut R,
    ) -> Result<Self, EncryptError> {
        let our_ratchet = DhKeyPair::generate(rng);
        let dh =
            our_ratchet.agree(&their_signed_prekey).map_err(|_| EncryptError::NonContributory)?;
        let (root, chain_key) = RootKey(shared).step(&dh);
        Ok(Self {
            root,
            our_ratchet,
            their_ratchet: Some(their_signed_prekey),
            sending: Some(SendingChain { chain_key, index: 0 }),
            previous_sending_length: 0,
            receiving: Vec::new(),
            skipped: SkippedKeys::default(),
        })
    }

    /// `RatchetInitBob`: the X3DH responder, whose first `DHs` is its signed prekey.
    pub(crate) fn responder(shared: SecretBytes, our_signed_prekey: DhKeyPair) -> Self {
        Self {
            root: RootKey(shared),
            our_ratchet: our_signed_prekey,
            their_ratchet: None,
            sending: None,
            previous_sending_length: 0,
            receiving: Vec::new(),
            skipped: SkippedKeys::default(),
        }
    }

    /// Number of skipped keys held.
    pub(crate) fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts `plaintext`; AD = `associated` ‖ header.
    pub(crate) fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        associated: &[u8],
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<RatchetMessage, EncryptError> {
        let sending = match &mut self.sending {
            Some(sending) => sending,
            None => {
                // The deferred sending half of the last DH ratchet step.
                let their = self.their_ratchet.ok_or(EncryptError::NoSendingChain)?;
                let our_ratchet = DhKeyPair::generate(rng);
                let dh = our_ratchet.agree(&their).map_err(|_| EncryptError::NonContributory)?;
                let (root, chain_key) = self.root.step(&dh);
                self.root = root;
                self.our_ratchet = our_ratchet;
                self.sending.insert(SendingChain { chain_key, index: 0 })
            }
        };
        // u32::MAX is never used, so a receiver's "next index" always fits.
        let next_index = sending.index.checked_add(1).filter(|&n| n < u32::MAX);
        let next_index = next_index.ok_or(EncryptError::ChainExhausted)?;
        let header = RatchetHeader {
            ratchet_key: self.our_ratchet.public(),
            previous_chain_length: self.previous_sending_length,
            counter: sending.index,
        };
        let (message_key, next_chain) = sending.chain_key.step();
        let ciphertext =
            message_key.seal(associated, &header, plaintext).map_err(|_| EncryptError::TooLong)?;
        sending.chain_key = next_chain;
        sending.index = next_index;
        Ok(RatchetMessage { header, ciphertext })
    }

    /// Decrypts `message`; AD = `associated` ‖ header, spending derivations from `budget`.
    /// On error nothing changes (but the budget).
    pub(crate) fn decrypt(
        &mut self,
        message: &RatchetMessage,
        associated: &[u8],
        now: UnixMillis,
        budget: &mut WorkBudget,
    ) -> Result<Vec<u8>, DecryptError> {
        let header = &message.header;
        // Chains are found by their key's bytes: only one encoding may name a key.
        if !crate::crypto::dh::is_canonical(&header.ratchet_key) {
            return Err(DecryptError::NonCanonicalKey);
        }
        let open = |key: &MessageKey| {
            key.open(associated, header, &message.ciphertext)
                .map_err(|_| DecryptError::Authentication)
        };

        // 1. A late message whose key was kept.
        if let Some(position) = self.skipped.find(&header.ratchet_key, header.counter) {
            let plaintext =
                self.skipped.get(position).map(open).ok_or(DecryptError::Authentication)??;
            self.skipped.remove(position);
            self.skipped.expire(now);
            return Ok(plaintext);
        }

        // 2. The next message of a chain we know.
        if let Some(chain) = self.receiving.iter_mut().find(|c| c.ratchet_key == header.ratchet_key)
        {
            if header.counter < chain.index {
                return Err(DecryptError::Duplicate { counter: header.counter });
            }
            check_gap(chain.index, header.counter)?;
            let next_index = header.counter.checked_add(1).ok_or(DecryptError::TooFarAhead {
                gap: u64::from(header.counter),
                max: MAX_SKIP,
            })?;
            budget.spend(u64::from(next_index - chain.index), 0)?;
            let derived = derive(&chain.chain_key, chain.index, header.counter);
            let plaintext = open(&derived.message_key)?;
            chain.chain_key = derived.next_chain;
            chain.index = next_index;
            self.skipped.extend(header.ratchet_key, derived.skipped, now);
            self.skipped.expire(now);
            return Ok(plaintext);
        }

        // 3. A new ratchet key: a DH ratchet step. First the limits, before any derivation.
        let current = self.receiving.last();
        let pn = header.previous_chain_length;
        if let Some(current) = current {
            check_gap(current.index, pn)?;
        }
        check_gap(0, header.counter)?;
        let next_index = header
            .counter
            .checked_add(1)
            .ok_or(DecryptError::TooFarAhead { gap: u64::from(header.counter), max: MAX_SKIP })?;
        let old_steps = current.map_or(0, |c| u64::from(pn.saturating_sub(c.index)));
        budget.spend(old_steps + u64::from(next_index), 1)?;
        // Keys left on the current receiving chain, up to the peer's previous chain length.
        let old = current
            .filter(|c| pn > c.index)
            .map(|c| (c.ratchet_key, skip(&c.chain_key, c.index, pn)));
        let dh = self
            .our_ratchet
            .agree(&header.ratchet_key)
            .map_err(|_| DecryptError::NonContributory)?;
        let (root, chain_key) = self.root.step(&dh);
        let derived = derive(&chain_key, 0, header.counter);
        let plaintext = open(&derived.message_key)?;

        // Authenticated: commit.
        if let Some((old_key, (old_skipped, old_chain))) = old {
            self.skipped.extend(old_key, old_skipped, now);
            if let Some(current) = self.receiving.last_mut() {
                current.chain_key = old_chain;
                current.index = pn;
            }
        }
        self.skipped.extend(header.ratchet_key, derived.skipped, now);
        if let Some(sending) = self.sending.take() {
            self.previous_sending_length = sending.index;
        }
        self.root = root;
        self.their_ratchet = Some(header.ratchet_key);
        self.receiving.push(ReceivingChain {
            ratchet_key: header.ratchet_key,
            chain_key: derived.next_chain,
            index: next_index,
        });
        if self.receiving.len() > MAX_RECEIVING_CHAINS {
            self.receiving.remove(0);
        }
        self.skipped.expire(now);
        Ok(plaintext)
    }
}
