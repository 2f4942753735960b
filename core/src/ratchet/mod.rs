//! The Double Ratchet with header encryption, as in Signal's specification (revision 1,
//! 2016-11-20, §4), the per-message AEAD being ChaCha20-Poly1305:
//!
//! ```text
//! SK -> RK, HKa, NHKb = HKDF-SHA256(salt = 0, ikm = SK, info = "Kith_Ratchet_HeaderKeys_v1")
//! KDF_RK_HE(rk, dh)   = HKDF-SHA256(salt = rk, ikm = dh, info = "Kith_Ratchet_Root_HE_v1")
//!                       -> rk', ck, nhk
//! KDF_CK(ck)          = HMAC-SHA256(ck, 0x01) -> mk,  HMAC-SHA256(ck, 0x02) -> ck'
//! HENCRYPT(hk, h)     = nonce ‖ XChaCha20-Poly1305(hk, nonce (random, 24 bytes),
//!                       AD = session AD ‖ message id, dh ‖ pn ‖ n)
//! ENCRYPT(mk)         = HKDF-SHA256(ikm = mk, info = "Kith_Ratchet_MessageKeys_v1") -> key ‖ nonce
//!                       ChaCha20-Poly1305(key, nonce, AD = session AD ‖ message id ‖ HENCRYPT(..))
//! ```
//!
//! A receiver tries the header under the header keys it holds, in a bounded order: the
//! current receiving chain's, the next one (`NHKr`, a DH ratchet step), the older receiving
//! chains', then those of retired chains whose skipped keys remain; at most
//! [`MAX_HEADER_KEYS_TRIED`] per session. Sessions set up with classical X3DH before PQXDH
//! (read from version-1 records) have no header keys: their headers stay in the clear
//! (`KDF_RK` without the third output), and each kind of session refuses the other kind of
//! message, so neither can be downgraded.
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

use kith_protocol::envelope::{RatchetHeader, RatchetMessage, SealedRatchetMessage};
use kith_protocol::{DhPublicKey, EncryptedHeader, UnixMillis};

use crate::crypto::{DhKeyPair, SecretBytes};
use keys::{ChainKey, HeaderKey, MessageKey, RootKey};
use skipped::SkippedKeys;
pub use skipped::{MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS};

/// Most message keys one message may make us skip in one chain (vodozemac's gap; libsignal
/// allows more). Checked before any derivation, so a forged header costs at most this many
/// HMACs and changes nothing.
pub const MAX_SKIP: u32 = 2000;

/// Most receiving chains kept per session (libsignal: 5). Older chains' unused keys survive
/// in the skipped-key store.
pub const MAX_RECEIVING_CHAINS: usize = 5;

/// Most header keys of chains dropped from the receiving chains that are kept, for the
/// skipped keys those chains still have (the oldest is forgotten, with its skipped keys).
/// Kith's harshest simulation (10,000 messages each way in bursts, 10% loss, two seconds of
/// reordering) needs 130; every chain costs one more header trial (one XChaCha20-Poly1305
/// opening of 40 bytes) for a message that opens under none.
pub const MAX_RETIRED_HEADER_KEYS: usize = 256;

/// Most header keys one message's header is tried under, per session: each receiving chain's,
/// the next receiving header key and each retired one.
pub const MAX_HEADER_KEYS_TRIED: usize = MAX_RECEIVING_CHAINS + 1 + MAX_RETIRED_HEADER_KEYS;

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
    /// The session's stored state is inconsistent (a PQXDH session without header keys, or a
    /// classical one with them); it cannot send.
    #[error("the session state is inconsistent")]
    InconsistentState,
}

/// The ratchet part of an envelope, as a session decrypts it.
#[derive(Clone, Copy, Debug)]
pub enum RatchetPayload<'a> {
    /// A header in the clear: only a classical session set up before PQXDH accepts it.
    Plain(&'a RatchetMessage),
    /// An encrypted header: what every session set up with PQXDH sends and accepts.
    Sealed(&'a SealedRatchetMessage),
}

/// A message as the ratchet encrypted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Encrypted {
    /// From a classical session without header keys.
    Plain(RatchetMessage),
    /// From a session with header encryption.
    Sealed(SealedRatchetMessage),
}

/// The header keys of a session with header encryption (Double Ratchet §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeaderKeys {
    /// `HKs`: encrypts the headers of our current sending chain (`None` for a responder that
    /// has received nothing yet).
    pub(crate) sending: Option<HeaderKey>,
    /// `NHKs`: the header key of our next sending chain.
    pub(crate) next_sending: HeaderKey,
    /// `NHKr`: the header key of the peer's next sending chain.
    pub(crate) next_receiving: HeaderKey,
    /// Header keys of chains dropped from the receiving chains while skipped keys of theirs
    /// remain, oldest first (at most [`MAX_RETIRED_HEADER_KEYS`]).
    pub(crate) retired: Vec<(DhPublicKey, HeaderKey)>,
}

/// Which chains a decrypted header may be for, from the header key that opened it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A plain header: any chain, known or new.
    Any,
    /// Opened by the header key of the chain of this ratchet key: that chain only.
    Known(DhPublicKey),
    /// Opened by the next receiving header key: a new chain (a DH ratchet step).
    New,
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
    /// `HKr` of this chain (`None` in a session without header encryption).
    pub(crate) header_key: Option<HeaderKey>,
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
    /// `None` only for a classical session set up before PQXDH.
    pub(crate) header_keys: Option<HeaderKeys>,
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
    /// `RatchetInitAliceHE`: the PQXDH initiator, whose first ratchet step uses the
    /// responder's signed prekey as `DHr`.
    pub(crate) fn initiator<R: rand_core::CryptoRng + ?Sized>(
        shared: &SecretBytes,
        their_signed_prekey: DhPublicKey,
        rng: &mut R,
    ) -> Result<Self, EncryptError> {
        let (root, hka, nhkb) = keys::initial_keys(shared);
        let our_ratchet = DhKeyPair::generate(rng);
        let dh =
            our_ratchet.agree(&their_signed_prekey).map_err(|_| EncryptError::NonContributory)?;
        let (root, chain_key, next_sending) = root.step_with_header(&dh);
        Ok(Self {
            root,
            our_ratchet,
            their_ratchet: Some(their_signed_prekey),
            sending: Some(SendingChain { chain_key, index: 0 }),
            previous_sending_length: 0,
            receiving: Vec::new(),
            skipped: SkippedKeys::default(),
            header_keys: Some(HeaderKeys {
                sending: Some(hka),
                next_sending,
                next_receiving: nhkb,
                retired: Vec::new(),
            }),
        })
    }

    /// `RatchetInitBobHE`: the PQXDH responder, whose first `DHs` is its signed prekey.
    pub(crate) fn responder(shared: &SecretBytes, our_signed_prekey: DhKeyPair) -> Self {
        let (root, hka, nhkb) = keys::initial_keys(shared);
        Self {
            root,
            our_ratchet: our_signed_prekey,
            their_ratchet: None,
            sending: None,
            previous_sending_length: 0,
            receiving: Vec::new(),
            skipped: SkippedKeys::default(),
            header_keys: Some(HeaderKeys {
                sending: None,
                next_sending: nhkb,
                next_receiving: hka,
                retired: Vec::new(),
            }),
        }
    }

    /// Whether headers are encrypted (every session but a classical one from before PQXDH).
    #[cfg(test)]
    pub(crate) fn encrypts_headers(&self) -> bool {
        self.header_keys.is_some()
    }

    /// `KDF_RK` or, with header encryption, `KDF_RK_HE`.
    fn root_step(&self, dh: &SecretBytes) -> (RootKey, ChainKey, Option<HeaderKey>) {
        if self.header_keys.is_some() {
            let (root, chain, header) = self.root.step_with_header(dh);
            (root, chain, Some(header))
        } else {
            let (root, chain) = self.root.step(dh);
            (root, chain, None)
        }
    }

    /// Finds the header key that opens `sealed`, trying at most [`MAX_HEADER_KEYS_TRIED`]:
    /// the current receiving chain's, the next one, the older chains', the retired ones.
    fn open_header(
        &self,
        keys: &HeaderKeys,
        associated: &[u8],
        sealed: &EncryptedHeader,
    ) -> Result<(RatchetHeader, Route), DecryptError> {
        let mut chains = self
            .receiving
            .iter()
            .rev()
            .filter_map(|c| c.header_key.as_ref().map(|k| (Some(c.ratchet_key), k)));
        let current = chains.next();
        let order = current
            .into_iter()
            .chain(std::iter::once((None, &keys.next_receiving)))
            .chain(chains)
            .chain(keys.retired.iter().rev().map(|(ratchet_key, k)| (Some(*ratchet_key), k)));
        for (chain, key) in order.take(MAX_HEADER_KEYS_TRIED) {
            let Some(header) = key.open(associated, sealed) else { continue };
            return match chain {
                None => Ok((header, Route::New)),
                Some(ratchet_key) if ratchet_key == header.ratchet_key => {
                    Ok((header, Route::Known(ratchet_key)))
                }
                // Sealed by the peer under one chain's key, naming another: never valid.
                Some(_) => Err(DecryptError::Authentication),
            };
        }
        Err(DecryptError::Authentication)
    }

    /// Expires old skipped keys and forgets retired header keys with no skipped key left.
    fn tidy(&mut self, now: UnixMillis) {
        self.skipped.expire(now);
        if let Some(keys) = &mut self.header_keys
            && !keys.retired.is_empty()
        {
            let skipped = &self.skipped;
            keys.retired.retain(|(ratchet_key, _)| skipped.holds(ratchet_key));
        }
    }

    /// Number of skipped keys held.
    pub(crate) fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts `plaintext`; AD = `associated` ‖ header (encrypted under `HKs` with
    /// `associated` as its AD when the session has header keys).
    pub(crate) fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        associated: &[u8],
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<Encrypted, EncryptError> {
        let sending = match &mut self.sending {
            Some(sending) => sending,
            None => {
                // The deferred sending half of the last DH ratchet step.
                let their = self.their_ratchet.ok_or(EncryptError::NoSendingChain)?;
                let our_ratchet = DhKeyPair::generate(rng);
                let dh = our_ratchet.agree(&their).map_err(|_| EncryptError::NonContributory)?;
                let (root, chain_key, next_header) = self.root_step(&dh);
                if let (Some(keys), Some(next)) = (&mut self.header_keys, next_header) {
                    keys.next_sending = next;
                }
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
        let message = match &self.header_keys {
            None => {
                let ciphertext = message_key
                    .seal(associated, &header.to_bytes(), plaintext)
                    .map_err(|_| EncryptError::TooLong)?;
                Encrypted::Plain(RatchetMessage { header, ciphertext })
            }
            Some(keys) => {
                let key = keys.sending.as_ref().ok_or(EncryptError::NoSendingChain)?;
                let sealed =
                    key.seal(associated, &header, rng).map_err(|_| EncryptError::TooLong)?;
                let ciphertext = message_key
                    .seal(associated, sealed.0.as_slice(), plaintext)
                    .map_err(|_| EncryptError::TooLong)?;
                Encrypted::Sealed(SealedRatchetMessage { header: sealed, ciphertext })
            }
        };
        sending.chain_key = next_chain;
        sending.index = next_index;
        Ok(message)
    }

    /// Decrypts `message`; AD = `associated` ‖ header, spending derivations from `budget`.
    /// On error nothing changes (but the budget).
    pub(crate) fn decrypt(
        &mut self,
        message: RatchetPayload<'_>,
        associated: &[u8],
        now: UnixMillis,
        budget: &mut WorkBudget,
    ) -> Result<Vec<u8>, DecryptError> {
        let plain_header;
        let (header, header_bytes, ciphertext, route) = match (message, &self.header_keys) {
            (RatchetPayload::Plain(m), None) => {
                plain_header = m.header.to_bytes();
                (m.header, plain_header.as_slice(), &m.ciphertext, Route::Any)
            }
            (RatchetPayload::Sealed(m), Some(keys)) => {
                let (header, route) = self.open_header(keys, associated, &m.header)?;
                (header, m.header.0.as_slice(), &m.ciphertext, route)
            }
            // A plain header for a session with header keys (or the reverse) is never valid:
            // no one can strip a session's header encryption.
            _ => return Err(DecryptError::Authentication),
        };
        // Chains are found by their key's bytes: only one encoding may name a key.
        if !crate::crypto::dh::is_canonical(&header.ratchet_key) {
            return Err(DecryptError::NonCanonicalKey);
        }
        let open = |key: &MessageKey| {
            key.open(associated, header_bytes, ciphertext).map_err(|_| DecryptError::Authentication)
        };

        if route != Route::New {
            // 1. A late message whose key was kept.
            if let Some(position) = self.skipped.find(&header.ratchet_key, header.counter) {
                let plaintext =
                    self.skipped.get(position).map(open).ok_or(DecryptError::Authentication)??;
                self.skipped.remove(position);
                self.tidy(now);
                return Ok(plaintext);
            }

            // 2. The next message of a chain we know.
            if let Some(chain) =
                self.receiving.iter_mut().find(|c| c.ratchet_key == header.ratchet_key)
            {
                if header.counter < chain.index {
                    return Err(DecryptError::Duplicate { counter: header.counter });
                }
                check_gap(chain.index, header.counter)?;
                let next_index =
                    header.counter.checked_add(1).ok_or(DecryptError::TooFarAhead {
                        gap: u64::from(header.counter),
                        max: MAX_SKIP,
                    })?;
                budget.spend(u64::from(next_index - chain.index), 0)?;
                let derived = derive(&chain.chain_key, chain.index, header.counter);
                let plaintext = open(&derived.message_key)?;
                chain.chain_key = derived.next_chain;
                chain.index = next_index;
                self.skipped.extend(header.ratchet_key, derived.skipped, now);
                self.tidy(now);
                return Ok(plaintext);
            }
        }
        match route {
            // A retired chain's header without a kept key: its key was used or discarded.
            Route::Known(_) => return Err(DecryptError::Duplicate { counter: header.counter }),
            // Under the next header key, but naming a chain we know: never valid.
            Route::New if self.knows_chain(&header.ratchet_key) => {
                return Err(DecryptError::Authentication);
            }
            Route::New | Route::Any => {}
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
        let (root, chain_key, next_header) = self.root_step(&dh);
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
        // `HKs = NHKs`, and the new chain's `HKr` is the old `NHKr`.
        let header_key = match (&mut self.header_keys, next_header) {
            (Some(keys), Some(next)) => {
                keys.sending = Some(keys.next_sending.clone());
                Some(std::mem::replace(&mut keys.next_receiving, next))
            }
            _ => None,
        };
        self.root = root;
        self.their_ratchet = Some(header.ratchet_key);
        self.receiving.push(ReceivingChain {
            ratchet_key: header.ratchet_key,
            chain_key: derived.next_chain,
            index: next_index,
            header_key,
        });
        if self.receiving.len() > MAX_RECEIVING_CHAINS {
            let dropped = self.receiving.remove(0);
            self.retire(dropped);
        }
        self.tidy(now);
        Ok(plaintext)
    }

    /// Whether `ratchet_key` names a receiving chain, current or retired.
    fn knows_chain(&self, ratchet_key: &DhPublicKey) -> bool {
        self.receiving.iter().any(|c| &c.ratchet_key == ratchet_key)
            || self
                .header_keys
                .as_ref()
                .is_some_and(|k| k.retired.iter().any(|(r, _)| r == ratchet_key))
    }

    /// Keeps a dropped receiving chain's header key while it has skipped keys (without it,
    /// their messages could not be opened); the oldest retired chain beyond the cap is
    /// forgotten with its skipped keys.
    fn retire(&mut self, chain: ReceivingChain) {
        let (Some(keys), Some(header_key)) = (&mut self.header_keys, chain.header_key) else {
            return;
        };
        if self.skipped.holds(&chain.ratchet_key) {
            keys.retired.push((chain.ratchet_key, header_key));
        }
        if keys.retired.len() > MAX_RETIRED_HEADER_KEYS {
            let (forgotten, _) = keys.retired.remove(0);
            self.skipped.forget(&forgotten);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    const AD: &[u8] = b"session ad and message id";

    fn pair(rng: &mut ChaCha20Rng) -> (Ratchet, Ratchet) {
        let shared = SecretBytes::random(rng);
        let spk = DhKeyPair::generate(rng);
        let alice = Ratchet::initiator(&shared, spk.public(), rng).unwrap();
        let bob = Ratchet::responder(&shared, spk);
        (alice, bob)
    }

    fn sealed(message: Encrypted) -> SealedRatchetMessage {
        match message {
            Encrypted::Sealed(m) => m,
            Encrypted::Plain(_) => panic!("a session set up now encrypts its headers"),
        }
    }

    fn open(r: &mut Ratchet, m: &SealedRatchetMessage) -> Result<Vec<u8>, DecryptError> {
        r.decrypt(RatchetPayload::Sealed(m), AD, 0, &mut WorkBudget::default())
    }

    /// A message held back while the conversation turns over more chains than the receiving
    /// chains kept still opens: its chain's header key was retired with its skipped key, and
    /// is forgotten once that key is used.
    #[test]
    fn a_late_message_on_a_dropped_chain_opens_under_its_retired_header_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (mut alice, mut bob) = pair(&mut rng);
        let first = sealed(alice.encrypt(AD, b"first", &mut rng).unwrap());
        let late = sealed(alice.encrypt(AD, b"late", &mut rng).unwrap());
        assert_eq!(open(&mut bob, &first).unwrap(), b"first");
        for _ in 0..MAX_RECEIVING_CHAINS + 2 {
            let ping = sealed(bob.encrypt(AD, b"ping", &mut rng).unwrap());
            open(&mut alice, &ping).unwrap();
            let pong = sealed(alice.encrypt(AD, b"pong", &mut rng).unwrap());
            open(&mut bob, &pong).unwrap();
        }
        assert_eq!(bob.receiving.len(), MAX_RECEIVING_CHAINS);
        let retired = &bob.header_keys.as_ref().unwrap().retired;
        assert_eq!(retired.len(), 1, "only the chain with a skipped key is retired");
        assert_eq!(open(&mut bob, &late).unwrap(), b"late");
        assert!(bob.header_keys.as_ref().unwrap().retired.is_empty(), "forgotten once used");
        assert_eq!(open(&mut bob, &late), Err(DecryptError::Authentication), "and never again");
    }

    /// The retired header keys are capped: the oldest goes, with its chain's skipped keys.
    #[test]
    fn retired_header_keys_are_capped_and_take_their_skipped_keys_along() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (mut alice, mut bob) = pair(&mut rng);
        let mut held = Vec::new();
        let first = sealed(alice.encrypt(AD, b"first", &mut rng).unwrap());
        open(&mut bob, &first).unwrap();
        for _ in 0..MAX_RETIRED_HEADER_KEYS + MAX_RECEIVING_CHAINS + 1 {
            held.push(sealed(alice.encrypt(AD, b"held", &mut rng).unwrap()));
            let sent = sealed(alice.encrypt(AD, b"sent", &mut rng).unwrap());
            open(&mut bob, &sent).unwrap();
            let reply = sealed(bob.encrypt(AD, b"reply", &mut rng).unwrap());
            open(&mut alice, &reply).unwrap();
        }
        let keys = bob.header_keys.as_ref().unwrap();
        assert_eq!(keys.retired.len(), MAX_RETIRED_HEADER_KEYS);
        assert_eq!(bob.skipped_keys(), MAX_RETIRED_HEADER_KEYS + MAX_RECEIVING_CHAINS);
        // The oldest held message's chain was forgotten; the newest retired one still opens.
        assert_eq!(open(&mut bob, &held[0]), Err(DecryptError::Authentication));
        let newest_retired = held.len() - MAX_RECEIVING_CHAINS - 1;
        assert_eq!(open(&mut bob, &held[newest_retired]).unwrap(), b"held");
    }

    /// A session with header keys refuses a plain header, and a classical one (no header
    /// keys) refuses an encrypted one: neither can be switched to the other.
    #[test]
    fn header_encryption_cannot_be_stripped_or_added() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (mut alice, mut bob) = pair(&mut rng);
        let first = sealed(alice.encrypt(AD, b"first", &mut rng).unwrap());
        let header = bob
            .header_keys
            .as_ref()
            .unwrap()
            .next_receiving
            .open(AD, &first.header)
            .expect("sealed under the initial header key");
        let plain = RatchetMessage { header, ciphertext: first.ciphertext.clone() };
        let mut budget = WorkBudget::default();
        let before = bob.clone();
        assert_eq!(
            bob.decrypt(RatchetPayload::Plain(&plain), AD, 0, &mut budget),
            Err(DecryptError::Authentication)
        );
        assert_eq!(budget.steps_spent(), 0);
        assert_eq!(bob.root, before.root);
        let mut classical = bob.clone();
        classical.header_keys = None;
        assert_eq!(open(&mut classical, &first), Err(DecryptError::Authentication));
        assert_eq!(open(&mut bob, &first).unwrap(), b"first");
    }
}
