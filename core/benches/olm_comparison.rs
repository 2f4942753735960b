//! Kith's sessions side by side with vodozemac's Olm sessions, in one run.
//!
//! Each group times the same operation on both: session setup (initiator creates the session
//! and encrypts a first message, responder creates its side from that message and decrypts
//! it; Kith's with PQXDH, and its ML-KEM part alone so that X3DH's cost shows too), steady-state encryption and decryption of 1 KiB and 64 KiB messages, and a DH ratchet
//! step (a message each way, each carrying a new ratchet key). A table of Kith ÷ vodozemac
//! ratios is printed at the end, and the bytes PQXDH adds to the first messages.
//!
//! Run with `cargo bench -p kith-core --bench olm_comparison`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use kith_core::hazmat::{KemKeyPair, kem};
use kith_core::identity::IdentityKeyPair;
use kith_core::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey, VerifiedBundle, verify_bundle};
use kith_core::session::{RatchetPayload, Session};
use kith_protocol::MessageId;
use kith_protocol::envelope::{
    Envelope, EnvelopeKind, PqPreKeyMessage, PreKeyMessage, RatchetHeader, RatchetMessage,
    SealedRatchetMessage,
};
use kith_protocol::prekey::{KemPreKeyKind, PreKeyBundle};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use vodozemac::olm::{Account, AccountPickle, OlmMessage, SessionConfig};

const NOW: u64 = 1_700_000_000_000;
const ID: MessageId = MessageId([7; 16]);

struct KithSetup {
    rng: ChaCha20Rng,
    alice: IdentityKeyPair,
    bob: IdentityKeyPair,
    spk: SignedPreKey,
    opk: OneTimePreKey,
    kem: KemPreKey,
    bundle: VerifiedBundle,
}

fn kith_setup() -> KithSetup {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = IdentityKeyPair::generate(&mut rng);
    let spk = SignedPreKey::generate(&bob, 1, NOW, &mut rng);
    let opk = OneTimePreKey::generate(1, &mut rng);
    let kem = KemPreKey::generate(&bob, 1, KemPreKeyKind::OneTime, NOW, &mut rng);
    let bundle = PreKeyBundle {
        identity: bob.binding(),
        signed_prekey: spk.public(),
        one_time_prekey: Some(opk.public()),
        kem_prekey: kem.public(),
    };
    // Bundle signatures are checked when the bundle is fetched, once, like vodozemac's callers
    // check one-time key signatures: not part of session setup on either side.
    let bundle = verify_bundle(&bundle, &bob.user_id(), NOW).unwrap();
    KithSetup { rng, alice, bob, spk, opk, kem, bundle }
}

fn prekey(kind: EnvelopeKind) -> PqPreKeyMessage {
    match kind {
        EnvelopeKind::PqPreKey(m) => *m,
        _ => unreachable!("first message is a PQXDH PreKey message"),
    }
}

fn ratchet(kind: EnvelopeKind) -> SealedRatchetMessage {
    match kind {
        EnvelopeKind::PqPreKey(m) => m.message,
        EnvelopeKind::SealedRatchet(m) => m,
        _ => unreachable!("sessions set up with PQXDH encrypt their headers"),
    }
}

/// A Kith pair with the handshake done in both directions (steady state).
fn kith_pair(s: &mut KithSetup) -> (Session, Session) {
    let mut a = Session::initiate(&s.alice, &s.bundle, NOW, &mut s.rng).unwrap();
    let first = prekey(a.encrypt(&s.alice, &ID, b"hi", &mut s.rng).unwrap());
    let (mut b, _) =
        Session::accept(&s.bob, &s.spk, Some(&s.opk), &s.kem, s.alice.public(), &ID, &first, NOW)
            .unwrap();
    let reply = ratchet(b.encrypt(&s.bob, &ID, b"hi", &mut s.rng).unwrap());
    a.decrypt(&ID, RatchetPayload::Sealed(&reply), NOW).unwrap();
    (a, b)
}

fn olm_accounts()
-> (Account, Account, vodozemac::Curve25519PublicKey, vodozemac::Curve25519PublicKey) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let bob_key = bob.curve25519_key();
    (alice, bob, bob_key, otk)
}

/// An Olm pair with a message exchanged in both directions (steady state).
fn olm_pair() -> (vodozemac::olm::Session, vodozemac::olm::Session) {
    let (alice, mut bob, bob_key, otk) = olm_accounts();
    let mut a = alice.create_outbound_session(SessionConfig::version_1(), bob_key, otk).unwrap();
    let OlmMessage::PreKey(first) = a.encrypt("hi").unwrap() else { unreachable!() };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &first)
        .unwrap()
        .session;
    let reply = b.encrypt("hi").unwrap();
    a.decrypt(&reply).unwrap();
    (a, b)
}

fn session_setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_setup");
    let mut s = kith_setup();
    g.bench_function("kith", |bench| {
        bench.iter(|| {
            let mut a = Session::initiate(&s.alice, &s.bundle, NOW, &mut s.rng).unwrap();
            let first = prekey(a.encrypt(&s.alice, &ID, b"hello", &mut s.rng).unwrap());
            let (b, plaintext) = Session::accept(
                &s.bob,
                &s.spk,
                Some(&s.opk),
                &s.kem,
                s.alice.public(),
                &ID,
                &first,
                NOW,
            )
            .unwrap();
            black_box((a, b, plaintext))
        })
    });
    // The ML-KEM part of that setup, measured alone in the same run: Alice's key check and
    // encapsulation, Bob's decapsulation. Setup minus this is what X3DH costs.
    let kem_pair = KemKeyPair::generate(&mut s.rng);
    let kem_pair_public = kem_pair.public().clone();
    g.bench_function("kith_kem_part", |bench| {
        bench.iter(|| {
            let (ct, sent) = kem::encapsulate(&kem_pair_public, &mut s.rng).unwrap();
            black_box((kem_pair.decapsulate(&ct), sent))
        })
    });
    let (alice, bob, bob_key, otk) = olm_accounts();
    let bob_pickle = bob.pickle().encrypt(&[0u8; 32]);
    let alice_key = alice.curve25519_key();
    g.bench_function("vodozemac", |bench| {
        bench.iter_batched(
            // Bob's account is restored per iteration (his one-time key is consumed): untimed.
            || {
                Account::from_pickle(
                    AccountPickle::from_encrypted(&bob_pickle, &[0u8; 32]).unwrap(),
                )
            },
            |mut bob| {
                let mut a = alice
                    .create_outbound_session(SessionConfig::version_1(), bob_key, otk)
                    .unwrap();
                let OlmMessage::PreKey(first) = a.encrypt("hello").unwrap() else { unreachable!() };
                let b = bob
                    .create_inbound_session(SessionConfig::version_1(), alice_key, &first)
                    .unwrap();
                black_box((a, b))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn encrypt_decrypt(c: &mut Criterion, size: usize, label: &str) {
    let payload = vec![0x5au8; size];
    {
        let mut g = c.benchmark_group(format!("encrypt_{label}"));
        let mut s = kith_setup();
        let (mut a, _) = kith_pair(&mut s);
        g.bench_function("kith", |bench| {
            bench.iter(|| black_box(a.encrypt(&s.alice, &ID, &payload, &mut s.rng).unwrap()))
        });
        let (mut a, _) = olm_pair();
        g.bench_function("vodozemac", |bench| {
            bench.iter(|| black_box(a.encrypt(&payload).unwrap()))
        });
        g.bench_function("raw_aead", |bench| bench.iter(|| black_box(raw_seal(&payload))));
        g.finish();
    }
    {
        let mut g = c.benchmark_group(format!("decrypt_{label}"));
        let mut s = kith_setup();
        let (mut a, mut b) = kith_pair(&mut s);
        g.bench_function("kith", |bench| {
            bench.iter_batched(
                || ratchet(a.encrypt(&s.alice, &ID, &payload, &mut s.rng).unwrap()),
                |m| black_box(b.decrypt(&ID, RatchetPayload::Sealed(&m), NOW).unwrap()),
                BatchSize::SmallInput,
            )
        });
        let (mut a, mut b) = olm_pair();
        g.bench_function("vodozemac", |bench| {
            bench.iter_batched(
                || a.encrypt(&payload).unwrap(),
                |m| black_box(b.decrypt(&m).unwrap()),
                BatchSize::SmallInput,
            )
        });
        let sealed = raw_seal(&payload);
        g.bench_function("raw_aead", |bench| bench.iter(|| black_box(raw_open(&sealed))));
        g.finish();
    }
}

/// The bare ChaCha20-Poly1305 seal Kith's messages are bound by: one key, one nonce, the
/// output allocated per call as Kith's own seal does.
fn raw_seal(plaintext: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
    let mut out = vec![0u8; plaintext.len() + 16];
    let (body, tag_out) = out.split_at_mut(plaintext.len());
    let tag = ChaCha20Poly1305::new(&[7u8; 32].into())
        .encrypt_inout_detached(&[1u8; 12].into(), b"", InOutBuf::new(plaintext, body).unwrap())
        .unwrap();
    tag_out.copy_from_slice(&tag);
    out
}

/// The bare ChaCha20-Poly1305 open of what [`raw_seal`] made.
fn raw_open(sealed: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::aead::inout::InOutBuf;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
    let (body, tag) = sealed.split_at(sealed.len() - 16);
    let tag: &[u8; 16] = tag.try_into().unwrap();
    let mut out = vec![0u8; body.len()];
    ChaCha20Poly1305::new(&[7u8; 32].into())
        .decrypt_inout_detached(
            &[1u8; 12].into(),
            b"",
            InOutBuf::new(body, &mut out).unwrap(),
            tag.into(),
        )
        .unwrap();
    out
}

fn ratchet_step(c: &mut Criterion) {
    // One round trip: each side receives a new ratchet key and answers with a new one of its
    // own, i.e. two full DH ratchet steps (a receive half and a send half each).
    let mut g = c.benchmark_group("ratchet_step");
    let mut s = kith_setup();
    let (mut a, mut b) = kith_pair(&mut s);
    g.bench_function("kith", |bench| {
        bench.iter(|| {
            let m = ratchet(a.encrypt(&s.alice, &ID, b"ping", &mut s.rng).unwrap());
            b.decrypt(&ID, RatchetPayload::Sealed(&m), NOW).unwrap();
            let r = ratchet(b.encrypt(&s.bob, &ID, b"pong", &mut s.rng).unwrap());
            black_box(a.decrypt(&ID, RatchetPayload::Sealed(&r), NOW).unwrap())
        })
    });
    let (mut a, mut b) = olm_pair();
    g.bench_function("vodozemac", |bench| {
        bench.iter(|| {
            let m = a.encrypt("ping").unwrap();
            b.decrypt(&m).unwrap();
            let r = b.encrypt("pong").unwrap();
            black_box(a.decrypt(&r).unwrap())
        })
    });
    g.finish();
}

fn output_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("criterion")
}

fn median_ns(dir: &std::path::Path, group: &str, function: &str) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    let dir = output_dir();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    session_setup(&mut c);
    encrypt_decrypt(&mut c, 1024, "1KiB");
    encrypt_decrypt(&mut c, 64 * 1024, "64KiB");
    ratchet_step(&mut c);
    c.final_summary();

    let rows = [
        ("session setup", "session_setup", "≤ 1.0×"),
        ("encrypt 1 KiB", "encrypt_1KiB", "≤ 0.25×"),
        ("decrypt 1 KiB", "decrypt_1KiB", "≤ 1.0×"),
        ("encrypt 64 KiB", "encrypt_64KiB", "≤ 0.25×"),
        ("decrypt 64 KiB", "decrypt_64KiB", "≤ 1.0×"),
        ("DH ratchet step (round trip)", "ratchet_step", "≤ 1.0×"),
    ];
    println!("\n| operation | Kith | vodozemac | Kith ÷ vodozemac | target |");
    println!("|---|---:|---:|---:|---|");
    for (name, group, target) in rows {
        match (median_ns(&dir, group, "kith"), median_ns(&dir, group, "vodozemac")) {
            (Some(k), Some(v)) => {
                println!(
                    "| {name} | {} | {} | {:.2}× | {target} |",
                    fmt_time(k),
                    fmt_time(v),
                    k / v
                )
            }
            _ => println!("| {name} | (not run) | (not run) | – | {target} |"),
        }
    }

    // PQXDH against X3DH, in this run: X3DH is PQXDH without its ML-KEM operations, which
    // `kith_kem_part` times alone (Alice's key check and encapsulation, Bob's decapsulation).
    let setup = (
        median_ns(&dir, "session_setup", "kith"),
        median_ns(&dir, "session_setup", "kith_kem_part"),
        median_ns(&dir, "session_setup", "vodozemac"),
    );
    if let (Some(pq), Some(kem), Some(olm)) = setup {
        println!("\n| session setup | time | ÷ vodozemac |");
        println!("|---|---:|---:|");
        println!("| Kith PQXDH (4 X25519 DH + ML-KEM-768) | {} | {:.2}× |", fmt_time(pq), pq / olm);
        println!("| of which ML-KEM-768 (check + encaps + decaps) | {} | – |", fmt_time(kem));
        println!(
            "| Kith X3DH (PQXDH − ML-KEM) | {} | {:.2}× |",
            fmt_time(pq - kem),
            (pq - kem) / olm
        );
        println!("| vodozemac Olm (3DH) | {} | 1.00× |", fmt_time(olm));
    }
    bytes_overhead();

    // The bounds as the storage issue set them: session setup per X25519 operation (X3DH with
    // a one-time prekey plus the first ratchet step: ten against Olm's six), and the ratchet's
    // 64 KiB encrypt and decrypt against the bare AEAD it is bound by.
    println!("\n| bound | Kith | reference | ratio | bound |");
    println!("|---|---:|---:|---:|---|");
    if let (Some(pq), Some(kem), Some(v)) = setup {
        let k = pq - kem;
        println!(
            "| session setup per X25519 operation (Kith X3DH part ÷ 10, vodozemac ÷ 6) | {} | {} | {:.2}× | ≤ 1.0× |",
            fmt_time(k / 10.0),
            fmt_time(v / 6.0),
            (k / 10.0) / (v / 6.0)
        );
    }
    for (name, group) in [("encrypt 64 KiB", "encrypt_64KiB"), ("decrypt 64 KiB", "decrypt_64KiB")]
    {
        if let (Some(k), Some(raw)) =
            (median_ns(&dir, group, "kith"), median_ns(&dir, group, "raw_aead"))
        {
            println!(
                "| {name}: raw ChaCha20-Poly1305 ÷ Kith (throughput ratio) | {} | {} | {:.2}× | ≥ 0.9× |",
                fmt_time(k),
                fmt_time(raw),
                raw / k
            );
        }
    }
}

/// Bytes on the wire per message, before (X3DH) and after (PQXDH): the first messages carry
/// the handshake header until answered, later ones only the ratchet header.
fn bytes_overhead() {
    let mut s = kith_setup();
    let mut a = Session::initiate(&s.alice, &s.bundle, NOW, &mut s.rng).unwrap();
    let envelope = |kind: EnvelopeKind| Envelope {
        id: ID,
        sender: s.alice.user_id(),
        recipient: s.bob.user_id(),
        kind,
    };
    let encoded = |kind: EnvelopeKind| kith_protocol::encode(&envelope(kind)).unwrap().len();
    let payload = vec![0u8; 100];
    let pq = prekey(a.encrypt(&s.alice, &ID, &payload, &mut s.rng).unwrap());
    // The same message as Kith sent it before PQXDH and header encryption: the X3DH header
    // and the ratchet header in the clear (a first message's: counters 0).
    let plain = RatchetMessage {
        header: RatchetHeader { ratchet_key: pq.base_key, previous_chain_length: 0, counter: 0 },
        ciphertext: pq.message.ciphertext.clone(),
    };
    let classical = EnvelopeKind::PreKey(PreKeyMessage {
        identity_dh_key: pq.identity_dh_key,
        identity_dh_signature: pq.identity_dh_signature,
        base_key: pq.base_key,
        signed_prekey_id: pq.signed_prekey_id,
        one_time_prekey_id: pq.one_time_prekey_id,
        message: plain.clone(),
    });
    let (steady_before, steady_after) = (
        encoded(EnvelopeKind::Ratchet(plain)),
        encoded(EnvelopeKind::SealedRatchet(pq.message.clone())),
    );
    let (before, after) = (encoded(classical), encoded(EnvelopeKind::PqPreKey(Box::new(pq))));
    println!(
        "\n| envelope with a 100-byte content | X3DH, plain header (before) | PQXDH, encrypted header (after) | added |"
    );
    println!("|---|---:|---:|---:|");
    println!("| first messages, until answered | {before} B | {after} B | {} B |", after - before);
    println!(
        "| every later message | {steady_before} B | {steady_after} B | {} B |",
        steady_after - steady_before
    );
}
