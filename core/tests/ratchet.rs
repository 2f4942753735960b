//! Double Ratchet properties through the public session API, on sessions set up with PQXDH:
//! schedules with reordering, loss and duplication, the skip limits, tampering, forward
//! secrecy and post-compromise security.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use kith_core::identity::IdentityKeyPair;
use kith_core::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey, verify_bundle};
use kith_core::ratchet::{DecryptError, MAX_SKIP, MAX_SKIPPED_KEYS};
use kith_core::session::{RatchetPayload, Session};
use kith_protocol::MessageId;
use kith_protocol::envelope::{EnvelopeKind, SealedRatchetMessage};
use kith_protocol::prekey::{KemPreKeyKind, PreKeyBundle};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const NOW: u64 = 1_700_000_000_000;

/// Alice (initiator) and Bob (responder) with Bob's prekeys; Bob's session appears when he
/// receives Alice's first message.
struct Pair {
    rng: ChaCha20Rng,
    alice_id: IdentityKeyPair,
    bob_id: IdentityKeyPair,
    spk: SignedPreKey,
    opk: Option<OneTimePreKey>,
    kem: Option<KemPreKey>,
    alice: Session,
    bob: Option<Session>,
}

/// A message on the wire: its id, what it carries, and the plaintext it must decrypt to.
#[derive(Clone)]
struct Sent {
    id: MessageId,
    kind: EnvelopeKind,
    plaintext: Vec<u8>,
}

impl Pair {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let bob_id = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&bob_id, 1, NOW, &mut rng);
        let opk = OneTimePreKey::generate(7, &mut rng);
        let kem = KemPreKey::generate(&bob_id, 8, KemPreKeyKind::OneTime, NOW, &mut rng);
        let bundle = PreKeyBundle {
            identity: bob_id.binding(),
            signed_prekey: spk.public(),
            one_time_prekey: Some(opk.public()),
            kem_prekey: kem.public(),
        };
        let verified = verify_bundle(&bundle, &bob_id.user_id(), NOW).unwrap();
        let alice = Session::initiate(&alice_id, &verified, NOW, &mut rng).unwrap();
        Self { rng, alice_id, bob_id, spk, opk: Some(opk), kem: Some(kem), alice, bob: None }
    }

    fn id(&mut self) -> MessageId {
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        MessageId(id)
    }

    fn alice_sends(&mut self, text: &[u8]) -> Sent {
        let id = self.id();
        let kind = self.alice.encrypt(&self.alice_id, &id, text, &mut self.rng).unwrap();
        Sent { id, kind, plaintext: text.to_vec() }
    }

    /// `None` while Bob has no session yet.
    fn bob_sends(&mut self, text: &[u8]) -> Option<Sent> {
        let id = self.id();
        let bob = self.bob.as_mut()?;
        let kind = bob.encrypt(&self.bob_id, &id, text, &mut self.rng).unwrap();
        Some(Sent { id, kind, plaintext: text.to_vec() })
    }

    /// Bob's receive path in miniature (what the engine does): a PreKey message creates the
    /// session if none matches its base key; the one-time prekeys are consumed with it.
    fn bob_receives(&mut self, m: &Sent) -> Result<Vec<u8>, DecryptError> {
        match (&m.kind, &mut self.bob) {
            (EnvelopeKind::PqPreKey(p), Some(bob)) if bob.base_key() == p.base_key => {
                bob.decrypt(&m.id, RatchetPayload::Sealed(&p.message), NOW)
            }
            (EnvelopeKind::PqPreKey(p), _) => {
                let opk = self.opk.as_ref().filter(|k| Some(k.id()) == p.one_time_prekey_id);
                if p.one_time_prekey_id.is_some() && opk.is_none() {
                    return Err(DecryptError::Authentication); // prekey already consumed
                }
                let Some(kem) = self.kem.as_ref().filter(|k| k.id() == p.kem_prekey_id) else {
                    return Err(DecryptError::Authentication); // KEM prekey already consumed
                };
                let (session, plaintext) = Session::accept(
                    &self.bob_id,
                    &self.spk,
                    opk,
                    kem,
                    self.alice_id.public(),
                    &m.id,
                    p,
                    NOW,
                )?;
                assert!(session.is_post_quantum());
                self.bob = Some(session);
                self.opk = None;
                self.kem = None;
                Ok(plaintext)
            }
            (EnvelopeKind::SealedRatchet(r), Some(bob)) => {
                bob.decrypt(&m.id, RatchetPayload::Sealed(r), NOW)
            }
            _ => Err(DecryptError::Authentication),
        }
    }

    fn alice_receives(&mut self, m: &Sent) -> Result<Vec<u8>, DecryptError> {
        self.alice.decrypt(&m.id, ratchet_part(&m.kind), NOW)
    }

    fn bob_bytes(&self) -> Vec<u8> {
        self.bob.as_ref().unwrap().to_bytes().unwrap().to_vec()
    }
}

fn ratchet_part(kind: &EnvelopeKind) -> RatchetPayload<'_> {
    match kind {
        EnvelopeKind::PqPreKey(p) => RatchetPayload::Sealed(&p.message),
        EnvelopeKind::SealedRatchet(message) => RatchetPayload::Sealed(message),
        other => panic!("sessions set up with PQXDH encrypt their headers: {other:?}"),
    }
}

/// The ratchet message of a message of an established session.
fn sealed(sent: &mut Sent) -> &mut SealedRatchetMessage {
    match &mut sent.kind {
        EnvelopeKind::SealedRatchet(m) => m,
        other => panic!("a ratchet message with an encrypted header expected: {other:?}"),
    }
}

#[derive(Clone, Debug)]
enum Step {
    AliceSends,
    BobSends,
    DeliverToBob(usize),
    DeliverToAlice(usize),
    Replay(usize),
    Drop(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::AliceSends),
        4 => Just(Step::BobSends),
        5 => any::<usize>().prop_map(Step::DeliverToBob),
        5 => any::<usize>().prop_map(Step::DeliverToAlice),
        1 => any::<usize>().prop_map(Step::Replay),
        1 => any::<usize>().prop_map(Step::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Messages both ways, delivered in any order, some dropped, some delivered twice: every
    /// delivered message decrypts exactly once to its plaintext; every replay is refused with
    /// `DecryptError::Duplicate`.
    #[test]
    fn schedule_with_reordering_loss_and_duplicates_decrypts_each_message_exactly_once(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 1..2000),
    ) {
        let mut p = Pair::new(seed);
        let (mut to_bob, mut to_alice): (Vec<Sent>, Vec<Sent>) = (Vec::new(), Vec::new());
        let mut delivered: Vec<(bool, Sent)> = Vec::new(); // (to_bob, message)
        let (mut sent, mut decrypted, mut replays) = (0usize, 0usize, 0usize);
        let mut n = 0u32;
        for step in steps {
            n += 1;
            let text = n.to_be_bytes();
            match step {
                Step::AliceSends => { to_bob.push(p.alice_sends(&text)); sent += 1; }
                Step::BobSends => if let Some(m) = p.bob_sends(&text) { to_alice.push(m); sent += 1; },
                Step::DeliverToBob(i) if !to_bob.is_empty() => {
                    let m = to_bob.remove(i % to_bob.len());
                    prop_assert_eq!(p.bob_receives(&m).unwrap(), m.plaintext.clone());
                    decrypted += 1;
                    delivered.push((true, m));
                }
                Step::DeliverToAlice(i) if !to_alice.is_empty() => {
                    let m = to_alice.remove(i % to_alice.len());
                    prop_assert_eq!(p.alice_receives(&m).unwrap(), m.plaintext.clone());
                    decrypted += 1;
                    delivered.push((false, m));
                }
                Step::Replay(i) if !delivered.is_empty() => {
                    let (to_b, m) = delivered[i % delivered.len()].clone();
                    let result = if to_b { p.bob_receives(&m) } else { p.alice_receives(&m) };
                    // `Duplicate` while the message's chain is held; once the chain is retired
                    // (MAX_RECEIVING_CHAINS) the replay no longer authenticates at all.
                    prop_assert!(
                        matches!(result, Err(DecryptError::Duplicate { .. } | DecryptError::Authentication)),
                        "replay accepted: {:?}", result
                    );
                    replays += 1;
                }
                Step::Drop(i) if !to_bob.is_empty() => {
                    to_bob.remove(i % to_bob.len());
                }
                _ => {}
            }
            if let Some(bob) = &p.bob { prop_assert!(bob.skipped_keys() <= MAX_SKIPPED_KEYS); }
            prop_assert!(p.alice.skipped_keys() <= MAX_SKIPPED_KEYS);
        }
        // Whatever is still in flight arrives late, in reverse order.
        while let Some(m) = to_bob.pop() {
            prop_assert_eq!(p.bob_receives(&m).unwrap(), m.plaintext.clone());
            decrypted += 1;
        }
        while let Some(m) = to_alice.pop() {
            prop_assert_eq!(p.alice_receives(&m).unwrap(), m.plaintext.clone());
            decrypted += 1;
        }
        prop_assert!(decrypted <= sent);
        let _ = replays;
    }

    /// However the gaps fall across chains, the skipped-key store stays within its cap and the
    /// most recent skipped messages still decrypt.
    #[test]
    fn skipped_key_store_never_exceeds_its_cap(
        seed in any::<u64>(),
        gaps in proptest::collection::vec(0u32..=MAX_SKIP, 1..6),
    ) {
        let mut p = Pair::new(seed);
        let first = p.alice_sends(b"hello");
        p.bob_receives(&first).unwrap();
        let mut late = Vec::new();
        for gap in gaps {
            // Alice sends `gap + 1` messages; Bob gets only the last; then Bob replies so
            // that Alice's next batch is on a new chain.
            let batch: Vec<Sent> = (0..=gap).map(|_| p.alice_sends(b"m")).collect();
            let (last, skipped) = batch.split_last().unwrap();
            p.bob_receives(last).unwrap();
            late.extend(skipped.iter().cloned());
            prop_assert!(p.bob.as_ref().unwrap().skipped_keys() <= MAX_SKIPPED_KEYS);
            let reply = p.bob_sends(b"r").unwrap();
            p.alice_receives(&reply).unwrap();
        }
        let held = p.bob.as_ref().unwrap().skipped_keys();
        prop_assert_eq!(held, late.len().min(MAX_SKIPPED_KEYS));
        // The newest `held` late messages decrypt; older ones were evicted and are refused.
        let cut = late.len() - held;
        for m in &late[cut..] {
            prop_assert_eq!(p.bob_receives(m).unwrap(), b"m".to_vec());
        }
        for m in &late[..cut] {
            prop_assert!(p.bob_receives(m).is_err());
        }
        prop_assert_eq!(p.bob.as_ref().unwrap().skipped_keys(), 0);
    }
}

#[test]
fn gap_larger_than_max_skip_is_refused_without_changing_state() {
    let mut p = Pair::new(1);
    let first = p.alice_sends(b"first");
    p.bob_receives(&first).unwrap();

    // Same chain: message MAX_SKIP + 1 beyond the next expected one.
    let sent: Vec<Sent> = (0..MAX_SKIP + 2).map(|_| p.alice_sends(b"x")).collect();
    let before = p.bob_bytes();
    let too_far = sent.last().unwrap();
    assert_eq!(
        p.bob_receives(too_far),
        Err(DecryptError::TooFarAhead { gap: u64::from(MAX_SKIP) + 1, max: MAX_SKIP })
    );
    assert_eq!(p.bob_bytes(), before, "a refused message must not change the session");
    // Exactly MAX_SKIP is allowed.
    assert_eq!(p.bob_receives(&sent[MAX_SKIP as usize]).unwrap(), b"x");
    assert_eq!(p.bob.as_ref().unwrap().skipped_keys(), MAX_SKIP as usize);

    // New chain: its first message Bob sees is number MAX_SKIP + 1 (a forged header would
    // not even open: the header key is the peers' secret).
    let reply = p.bob_sends(b"r").unwrap();
    p.alice_receives(&reply).unwrap();
    let chain: Vec<Sent> = (0..MAX_SKIP + 2).map(|_| p.alice_sends(b"y")).collect();
    let before = p.bob_bytes();
    assert!(matches!(p.bob_receives(chain.last().unwrap()), Err(DecryptError::TooFarAhead { .. })));
    assert_eq!(p.bob_bytes(), before);
    // And a new chain whose previous one ran more than MAX_SKIP beyond what Bob received.
    assert_eq!(p.bob_receives(&chain[0]).unwrap(), b"y");
    let reply = p.bob_sends(b"r2").unwrap();
    p.alice_receives(&reply).unwrap();
    let next = p.alice_sends(b"z");
    let before = p.bob_bytes();
    assert!(matches!(
        p.bob_receives(&next),
        Err(DecryptError::TooFarAhead { gap, .. }) if gap == u64::from(MAX_SKIP) + 1
    ));
    assert_eq!(p.bob_bytes(), before);
    // Within the limit, the old chain still opens.
    assert_eq!(p.bob_receives(&chain[MAX_SKIP as usize]).unwrap(), b"y");
}

#[test]
fn tampered_ciphertext_header_or_ad_is_refused_and_state_is_byte_for_byte_unchanged() {
    let mut p = Pair::new(2);
    let first = p.alice_sends(b"first");
    p.bob_receives(&first).unwrap();
    let reply = p.bob_sends(b"reply").unwrap();
    p.alice_receives(&reply).unwrap();

    let (mut corruptions, mut mutations) = (0, 0);
    for round in 0..3 {
        // Round 0: same chain. Rounds 1, 2: a new ratchet key (DH step path).
        if round > 0 {
            let r = p.bob_sends(b"turn").unwrap();
            p.alice_receives(&r).unwrap();
        }
        let mut good = p.alice_sends(b"secret");
        let len = sealed(&mut good).ciphertext.len();
        let mut tampered: Vec<Sent> = Vec::new();
        for i in [0, len / 2, len - 1] {
            let mut m = good.clone();
            sealed(&mut m).ciphertext[i] ^= 0x01;
            tampered.push(m);
        }
        let mut m = good.clone();
        sealed(&mut m).ciphertext.truncate(len - 1);
        tampered.push(m);
        // The encrypted header: its nonce, the ratchet key, the counters and the tag.
        for i in [0, 24, 24 + 32, 24 + 36, 24 + 39, 79] {
            let mut m = good.clone();
            sealed(&mut m).header.0[i] ^= 0x01;
            tampered.push(m);
        }
        // The associated data: the message id is authenticated with the message.
        let mut m = good.clone();
        m.id.0[0] ^= 0x80;
        tampered.push(m);

        for m in &tampered {
            let before = p.bob_bytes();
            let result = p.bob_receives(m);
            assert!(result.is_err(), "tampered message accepted");
            assert_eq!(p.bob_bytes(), before, "state changed on a refused message");
            corruptions += 1;
        }
        // The untampered original still decrypts afterwards.
        assert_eq!(p.bob_receives(&good).unwrap(), b"secret");
        mutations += 1;
    }
    println!(
        "tampered messages refused: {corruptions}, state mutations observed: 0 ({mutations} originals then accepted)"
    );

    // A tampered first message creates no session at all.
    let mut q = Pair::new(3);
    let mut first = q.alice_sends(b"first");
    let EnvelopeKind::PqPreKey(pk) = &mut first.kind else { panic!("a PQXDH first message") };
    pk.message.ciphertext[0] ^= 1;
    assert!(q.bob_receives(&first).is_err());
    assert!(q.bob.is_none());
    // So does one whose KEM ciphertext was changed (SK differs, the first message fails).
    let mut q = Pair::new(5);
    let mut first = q.alice_sends(b"first");
    let EnvelopeKind::PqPreKey(pk) = &mut first.kind else { panic!("a PQXDH first message") };
    pk.kem_ciphertext.0[0] ^= 1;
    assert!(q.bob_receives(&first).is_err());
    assert!(q.bob.is_none());
}

#[test]
fn forward_secrecy_snapshot_taken_now_cannot_decrypt_messages_already_received() {
    let mut p = Pair::new(4);
    let mut received = Vec::new();
    for round in 0..3 {
        for i in 0..3 {
            let m = p.alice_sends(format!("a{round}{i}").as_bytes());
            p.bob_receives(&m).unwrap();
            received.push(m);
        }
        let r = p.bob_sends(b"b").unwrap();
        p.alice_receives(&r).unwrap();
    }
    // An attacker who steals Bob's state now learns nothing about what Bob already received.
    let snapshot = p.bob_bytes();
    for m in &received {
        let mut stolen = Session::from_bytes(&snapshot).unwrap();
        let result = stolen.decrypt(&m.id, ratchet_part(&m.kind), NOW);
        assert!(result.is_err(), "stolen state decrypted an already received message");
    }
    // Control: the same snapshot does decrypt a message sent after it was taken.
    let next = p.alice_sends(b"after");
    let mut stolen = Session::from_bytes(&snapshot).unwrap();
    assert_eq!(stolen.decrypt(&next.id, ratchet_part(&next.kind), NOW).unwrap(), b"after");
}

#[test]
fn post_compromise_security_stolen_state_stops_decrypting_once_both_sides_ratchet() {
    let mut p = Pair::new(5);
    let first = p.alice_sends(b"hi");
    p.bob_receives(&first).unwrap();
    let r = p.bob_sends(b"hey").unwrap();
    p.alice_receives(&r).unwrap();

    // Eve steals Bob's full state.
    let stolen = p.bob_bytes();

    // Before anyone ratchets, Eve can read Alice's messages on the current chain (expected:
    // this is the window post-compromise security closes).
    let before = p.alice_sends(b"still exposed");
    let mut eve = Session::from_bytes(&stolen).unwrap();
    assert_eq!(eve.decrypt(&before.id, ratchet_part(&before.kind), NOW).unwrap(), b"still exposed");
    p.bob_receives(&before).unwrap();

    // Both sides ratchet with fresh keys Eve never saw: Bob replies, Alice answers.
    let r = p.bob_sends(b"new key from bob").unwrap();
    p.alice_receives(&r).unwrap();
    let after = p.alice_sends(b"healed");
    assert_eq!(p.bob_receives(&after).unwrap(), b"healed");

    let mut eve = Session::from_bytes(&stolen).unwrap();
    assert_eq!(
        eve.decrypt(&after.id, ratchet_part(&after.kind), NOW),
        Err(DecryptError::Authentication),
        "stolen state still decrypts after both sides ratcheted"
    );
    // Eve also cannot read Bob's messages after the ratchet.
    let bob_later = p.bob_sends(b"bob later").unwrap();
    let mut eve_as_alice_view = Session::from_bytes(&stolen).unwrap();
    assert!(eve_as_alice_view.decrypt(&bob_later.id, ratchet_part(&bob_later.kind), NOW).is_err());
}

#[test]
fn replayed_initial_message_is_refused_once_its_one_time_prekey_is_consumed() {
    let mut p = Pair::new(6);
    let first = p.alice_sends(b"hi");
    p.bob_receives(&first).unwrap();
    // Bob loses the session (e.g. a replay across a reinstall): the initial message must not
    // create a second session, because its one-time prekey is gone.
    p.bob = None;
    assert!(p.bob_receives(&first).is_err());
}

#[test]
fn session_debug_shows_no_key_bytes() {
    let mut p = Pair::new(8);
    let m = p.alice_sends(b"hi");
    p.bob_receives(&m).unwrap();
    let bytes = p.bob_bytes();
    let shown = format!("{:?}", p.bob.as_ref().unwrap());
    assert!(shown.contains("RootKey(..)") && shown.contains("ChainKey(..)"), "{shown}");
    // No 8-byte window of the serialized state (which holds every secret) appears in Debug,
    // neither as hex nor as a decimal byte list.
    for window in bytes.windows(8).step_by(4) {
        if window.iter().all(|&b| b == 0) {
            continue;
        }
        let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
        let list = format!("{:?}", window).trim_matches(|c| c == '[' || c == ']').to_string();
        assert!(
            !shown.contains(&hex) && !shown.contains(&list),
            "Debug leaks state bytes: {shown}"
        );
    }
}
