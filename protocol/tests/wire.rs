//! Wire-format tests: proptest round-trips of every frame, arbitrary and mutated bytes never
//! panic a decoder, typed errors for each class of bad input, and golden hex vectors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

mod strategies;

use kith_protocol::codec::{self, DecodeError, Frame, Invalid};
use kith_protocol::content::*;
use kith_protocol::direct::*;
use kith_protocol::envelope::*;
use kith_protocol::ids::*;
use kith_protocol::limits::*;
use kith_protocol::mailbox::*;
use kith_protocol::media::*;
use kith_protocol::prekey::*;
use proptest::prelude::*;
use serde_bytes::ByteBuf;
use strategies::*;

fn round_trip<F: Frame + PartialEq + std::fmt::Debug>(frame: &F) -> Result<(), TestCaseError> {
    let bytes = codec::encode(frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(bytes[0], codec::WIRE_VERSION);
    prop_assert!(bytes.len() <= F::MAX_BYTES);
    let back: F = codec::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, frame);
    // Canonical: re-encoding gives the same bytes.
    prop_assert_eq!(codec::encode(&back).map_err(|e| TestCaseError::fail(e.to_string()))?, bytes);
    Ok(())
}

/// Decodes `bytes` as every frame type; must never panic, and whatever decodes must re-encode
/// to the same bytes (no two encodings of one value).
fn decode_all(bytes: &[u8]) {
    fn one<F: Frame>(bytes: &[u8]) {
        if let Ok(frame) = codec::decode::<F>(bytes) {
            assert_eq!(codec::encode(&frame).expect("decoded frames re-encode"), bytes);
        }
    }
    one::<Envelope>(bytes);
    one::<GroupEnvelope>(bytes);
    one::<Content>(bytes);
    one::<EnvelopeBatch>(bytes);
    one::<DeliveryAcks>(bytes);
    one::<PreKeyRequest>(bytes);
    one::<PreKeyResponse>(bytes);
    one::<UserRecord>(bytes);
    one::<UserRecordV2>(bytes);
    one::<UserRecordV3>(bytes);
    one::<MailboxRequest>(bytes);
    one::<MailboxResponse>(bytes);
    one::<MediaRequest>(bytes);
    one::<MediaResponse>(bytes);
}

proptest! {
    #[test]
    fn envelope_round_trips(f in envelope()) { round_trip(&f)?; }
    #[test]
    fn group_envelope_round_trips(f in group_envelope()) { round_trip(&f)?; }
    #[test]
    fn content_round_trips(f in content()) { round_trip(&f)?; }
    #[test]
    fn envelope_batch_round_trips(f in envelope_batch()) {
        round_trip(&f)?;
        // A sender's running count of a batch's size is exact.
        let cost: usize = f.envelopes.iter().map(|e| batch_cost(e.len())).sum();
        prop_assert_eq!(codec::encode(&f).unwrap().len(), EnvelopeBatch::OVERHEAD + cost);
    }
    #[test]
    fn delivery_acks_round_trip(f in delivery_acks()) { round_trip(&f)?; }
    #[test]
    fn prekey_request_round_trips(f in prekey_request()) { round_trip(&f)?; }
    #[test]
    fn prekey_response_round_trips(f in prekey_response()) { round_trip(&f)?; }
    #[test]
    fn user_record_round_trips(f in user_record()) { round_trip(&f)?; }
    #[test]
    fn mailbox_request_round_trips(f in mailbox_request()) { round_trip(&f)?; }
    #[test]
    fn mailbox_response_round_trips(f in mailbox_response()) { round_trip(&f)?; }
    #[test]
    fn media_request_round_trips(f in media_request()) { round_trip(&f)?; }
    #[test]
    fn media_response_round_trips(f in media_response()) { round_trip(&f)?; }

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
        // Also with a valid version byte in front, so the body parser is reached.
        let mut v = vec![codec::WIRE_VERSION];
        v.extend_from_slice(&bytes);
        decode_all(&v);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        f in envelope(),
        c in content(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        for mut bytes in [codec::encode(&f).unwrap(), codec::encode(&c).unwrap()] {
            for (at, x) in &flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            decode_all(&bytes);
            decode_all(&bytes[..cut % (bytes.len() + 1)]);
        }
    }
}

fn sample_envelope() -> Envelope {
    Envelope {
        id: MessageId([0x11; 16]),
        sender: UserId([0x22; 32]),
        recipient: UserId([0x33; 32]),
        kind: EnvelopeKind::Ratchet(RatchetMessage {
            header: RatchetHeader {
                ratchet_key: DhPublicKey([0x44; 32]),
                previous_chain_length: 3,
                counter: 300,
            },
            ciphertext: vec![0x55; 16],
        }),
    }
}

#[test]
fn oversize_input_is_refused_before_parsing() {
    let bytes = vec![codec::WIRE_VERSION; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        codec::decode::<Envelope>(&bytes),
        Err(DecodeError::TooLarge {
            frame: "envelope",
            len: MAX_ENVELOPE_BYTES + 1,
            max: MAX_ENVELOPE_BYTES
        })
    );
    let acks = vec![0u8; MAX_ACKS_FRAME_BYTES + 1];
    assert!(matches!(codec::decode::<DeliveryAcks>(&acks), Err(DecodeError::TooLarge { .. })));
    let batch = vec![codec::WIRE_VERSION; MAX_DIRECT_FRAME_BYTES + 1];
    assert!(matches!(codec::decode::<EnvelopeBatch>(&batch), Err(DecodeError::TooLarge { .. })));
}

#[test]
fn envelope_batch_limits_are_typed_errors() {
    let batch = |envelopes: Vec<Vec<u8>>| EnvelopeBatch {
        envelopes: envelopes.into_iter().map(ByteBuf::from).collect(),
    };
    let invalid = |b: &EnvelopeBatch| match codec::encode(b) {
        Err(codec::EncodeError::Invalid { reason, .. }) => reason,
        other => panic!("encoded: {other:?}"),
    };
    assert_eq!(invalid(&batch(vec![])), Invalid::Empty { field: "envelopes" });
    assert!(matches!(
        invalid(&batch(vec![vec![1]; MAX_DIRECT_BATCH + 1])),
        Invalid::TooMany { field: "envelopes", .. }
    ));
    assert!(matches!(
        invalid(&batch(vec![vec![1; MAX_ENVELOPE_BYTES + 1]])),
        Invalid::TooLong { field: "envelopes", .. }
    ));
    // Decoding checks the same limits: an empty batch written by hand (version, count 0).
    assert_eq!(
        codec::decode::<EnvelopeBatch>(&[codec::WIRE_VERSION, 0]),
        Err(DecodeError::Invalid {
            frame: "envelope batch",
            reason: Invalid::Empty { field: "envelopes" }
        })
    );
    // A full batch of maximum-size envelopes is cut short by the frame limit, not the count.
    let most = (MAX_DIRECT_FRAME_BYTES - EnvelopeBatch::OVERHEAD) / batch_cost(MAX_ENVELOPE_BYTES);
    assert!((1..MAX_DIRECT_BATCH).contains(&most));
    assert!(codec::encode(&batch(vec![vec![0; MAX_ENVELOPE_BYTES]; most])).is_ok());
}

#[test]
fn oversize_frame_is_refused_when_encoding() {
    let mut env = sample_envelope();
    let EnvelopeKind::Ratchet(m) = &mut env.kind else { unreachable!() };
    m.ciphertext = vec![0; MAX_CIPHERTEXT_BYTES + 1];
    assert!(matches!(
        codec::encode(&env),
        Err(codec::EncodeError::Invalid {
            reason: Invalid::TooLong { field: "ciphertext", .. },
            ..
        })
    ));
}

#[test]
fn empty_and_wrong_version_are_typed_errors() {
    assert_eq!(codec::decode::<Envelope>(&[]), Err(DecodeError::Empty { frame: "envelope" }));
    let mut bytes = codec::encode(&sample_envelope()).unwrap();
    bytes[0] = 2;
    assert_eq!(
        codec::decode::<Envelope>(&bytes),
        Err(DecodeError::UnsupportedVersion { frame: "envelope", version: 2 })
    );
}

#[test]
fn unknown_variant_is_a_typed_error() {
    let mut bytes = codec::encode(&sample_envelope()).unwrap();
    // The kind discriminant follows 1 + 16 + 32 + 32 bytes; 1 = Ratchet. 9 names no variant.
    let at = 1 + 16 + 32 + 32;
    assert_eq!(bytes[at], 1);
    bytes[at] = 9;
    assert_eq!(
        codec::decode::<Envelope>(&bytes),
        Err(DecodeError::UnknownVariant { frame: "envelope" })
    );

    let acks = DeliveryAcks {
        acks: vec![DeliveryAck { id: MessageId([0; 16]), result: AckResult::Accepted }],
    };
    let mut bytes = codec::encode(&acks).unwrap();
    *bytes.last_mut().unwrap() = 7;
    assert!(matches!(
        codec::decode::<DeliveryAcks>(&bytes),
        Err(DecodeError::UnknownVariant { .. })
    ));
}

#[test]
fn truncated_and_trailing_bytes_are_typed_errors() {
    let bytes = codec::encode(&sample_envelope()).unwrap();
    assert_eq!(
        codec::decode::<Envelope>(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Malformed { frame: "envelope" })
    );
    let mut long = bytes.clone();
    long.extend_from_slice(&[0, 0]);
    assert_eq!(
        codec::decode::<Envelope>(&long),
        Err(DecodeError::TrailingBytes { frame: "envelope", extra: 2 })
    );
}

#[test]
fn field_limits_are_enforced_on_decode() {
    // Encode a too-long text by hand (the encoder refuses to), then decode it.
    let text = "x".repeat(MAX_TEXT_BYTES + 1);
    let body = Body::Text(Text { body: text, reply_to: None });
    let raw =
        postcard::to_extend(&Content { sent_at: 1, body }, vec![codec::WIRE_VERSION]).unwrap();
    assert!(matches!(
        codec::decode::<Content>(&raw),
        Err(DecodeError::Invalid { reason: Invalid::TooLong { field: "text", .. }, .. })
    ));

    let empty =
        Content { sent_at: 1, body: Body::Text(Text { body: String::new(), reply_to: None }) };
    let raw = postcard::to_extend(&empty, vec![codec::WIRE_VERSION]).unwrap();
    assert!(matches!(
        codec::decode::<Content>(&raw),
        Err(DecodeError::Invalid { reason: Invalid::Empty { field: "text" }, .. })
    ));

    let short = {
        let mut e = sample_envelope();
        let EnvelopeKind::Ratchet(m) = &mut e.kind else { unreachable!() };
        m.ciphertext = vec![1; TAG_BYTES - 1];
        postcard::to_extend(&e, vec![codec::WIRE_VERSION]).unwrap()
    };
    assert!(matches!(
        codec::decode::<Envelope>(&short),
        Err(DecodeError::Invalid { reason: Invalid::TooShort { field: "ciphertext", .. }, .. })
    ));
}

#[test]
fn media_manifest_hash_count_must_match_size() {
    let manifest = MediaManifest {
        media_id: MediaId([1; 16]),
        name: "a.bin".into(),
        mime: "application/octet-stream".into(),
        size: 10,
        chunk_size: 4,
        chunk_hashes: vec![ChunkHash([0; 32]); 2],
        key: SymmetricKey([9; 32]),
        thumbnail: None,
        caption: None,
    };
    let content = Content { sent_at: 0, body: Body::Media(manifest) };
    assert!(matches!(
        codec::encode(&content),
        Err(codec::EncodeError::Invalid {
            reason: Invalid::OutOfRange { field: "chunk_hashes" },
            ..
        })
    ));
}

#[test]
fn max_size_content_fits_an_envelope() {
    // The largest text, sealed, plus the largest PQXDH header must still be a valid envelope;
    // and so must the largest content the limits allow.
    let content = Content {
        sent_at: u64::MAX,
        body: Body::Text(Text {
            body: "€".repeat(MAX_TEXT_BYTES / 3),
            reply_to: Some(MessageId([1; 16])),
        }),
    };
    let plain = codec::encode(&content).unwrap();
    let env = Envelope {
        id: MessageId([0; 16]),
        sender: UserId([0; 32]),
        recipient: UserId([0; 32]),
        kind: EnvelopeKind::PqPreKey(Box::new(PqPreKeyMessage {
            identity_dh_key: DhPublicKey([0; 32]),
            identity_dh_signature: Signature([0; 64]),
            base_key: DhPublicKey([0; 32]),
            signed_prekey_id: u32::MAX,
            one_time_prekey_id: Some(u32::MAX),
            kem_prekey_id: u32::MAX,
            kem_ciphertext: KemCiphertext(Box::new([0xff; KemCiphertext::LEN])),
            message: SealedRatchetMessage {
                header: EncryptedHeader(Box::new([0xff; EncryptedHeader::LEN])),
                ciphertext: vec![0; plain.len() + TAG_BYTES],
            },
        })),
    };
    codec::encode(&env).unwrap();
    let mut largest = env;
    if let EnvelopeKind::PqPreKey(m) = &mut largest.kind {
        m.message.ciphertext = vec![0; MAX_CIPHERTEXT_BYTES];
    }
    codec::encode(&largest).unwrap();
}

/// Golden vectors: the exact bytes of fixed frames. If one of these changes, the wire format
/// changed: bump `WIRE_VERSION` or revert.
#[test]
fn golden_vectors() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "envelope/ratchet",
            codec::encode(&sample_envelope()).unwrap(),
            concat!(
                "01",
                "11111111111111111111111111111111",
                "2222222222222222222222222222222222222222222222222222222222222222",
                "3333333333333333333333333333333333333333333333333333333333333333",
                "01",
                "4444444444444444444444444444444444444444444444444444444444444444",
                "03",
                "ac02",
                "10",
                "55555555555555555555555555555555",
            ),
        ),
        (
            "content/text",
            codec::encode(&Content {
                sent_at: 1_700_000_000_000,
                body: Body::Text(Text { body: "hi".into(), reply_to: None }),
            })
            .unwrap(),
            // version, sent_at varint, variant 0 (Text), len 2 "hi", reply_to None
            concat!("01", "80d095ffbc31", "00", "02", "6869", "00"),
        ),
        (
            "content/group-changes",
            codec::encode(&Content {
                sent_at: 1,
                body: Body::GroupChanges(GroupChanges {
                    group: GroupId([0x0d; 32]),
                    changes: vec![GroupControl {
                        group: GroupId([0x0d; 32]),
                        parents: vec![ChangeHash([0x0e; 32])],
                        author: UserId([0x0f; 32]),
                        action: GroupAction::Leave,
                        signature: Signature([0x10; 64]),
                    }],
                }),
            })
            .unwrap(),
            // version, sent_at, variant 9 (GroupChanges), group, 1 change: group, 1 parent,
            // author, variant 3 (Leave), signature
            concat!(
                "01",
                "01",
                "09",
                "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d",
                "01",
                "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d",
                "01",
                "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e",
                "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
                "03",
                "10101010101010101010101010101010101010101010101010101010101010",
                "10101010101010101010101010101010101010101010101010101010101010",
                "1010",
            ),
        ),
        (
            "content/group-sync",
            codec::encode(&Content {
                sent_at: 1,
                body: Body::GroupSync(GroupSync {
                    group: GroupId([0x0d; 32]),
                    heads: vec![ChangeHash([0x01; 32])],
                }),
            })
            .unwrap(),
            // version, sent_at, variant 11 (GroupSync), group, 1 head
            concat!(
                "01",
                "01",
                "0b",
                "0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d",
                "01",
                "0101010101010101010101010101010101010101010101010101010101010101",
            ),
        ),
        (
            "envelope-batch",
            codec::encode(&EnvelopeBatch {
                envelopes: vec![ByteBuf::from(vec![0x01, 0x02]), ByteBuf::from(vec![])],
            })
            .unwrap(),
            // version, 2 envelopes, len 2 "0102", len 0
            concat!("01", "02", "02", "0102", "00"),
        ),
        (
            "delivery-acks/rejected",
            codec::encode(&DeliveryAcks {
                acks: vec![DeliveryAck {
                    id: MessageId([0xaa; 16]),
                    result: AckResult::Rejected(RejectReason::DecryptFailed),
                }],
            })
            .unwrap(),
            concat!("01", "01", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "02", "04"),
        ),
        (
            "mailbox/fetch",
            codec::encode(&MailboxRequest::Fetch { recipient: UserId([0x0a; 32]), limit: 64 })
                .unwrap(),
            concat!(
                "01",
                "01",
                "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a",
                "40"
            ),
        ),
        (
            "mailbox/deposited",
            codec::encode(&MailboxResponse::Deposited {
                results: vec![
                    DepositResult { id: MessageId([0x0b; 16]), refused: None },
                    DepositResult {
                        id: MessageId([0x0c; 16]),
                        refused: Some(MailboxRefusal::QuotaExceeded),
                    },
                ],
            })
            .unwrap(),
            // version, variant 0, two results: id + None, id + Some(variant 0)
            concat!(
                "01",
                "00",
                "02",
                "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
                "00",
                "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",
                "01",
                "00",
            ),
        ),
        (
            "media/get",
            codec::encode(&MediaRequest::Get {
                media: MediaId([0x01; 16]),
                index: 7,
                hash: ChunkHash([0x02; 32]),
            })
            .unwrap(),
            concat!(
                "01",
                "00",
                "01010101010101010101010101010101",
                "07",
                "0202020202020202020202020202020202020202020202020202020202020202",
            ),
        ),
        (
            "media/delete",
            codec::encode(&MediaRequest::Delete { hashes: vec![ChunkHash([0x03; 32])] }).unwrap(),
            concat!(
                "01",
                "02",
                "01",
                "0303030303030303030303030303030303030303030303030303030303030303",
            ),
        ),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(hex::encode(&bytes), expected, "{name}");
    }
}

/// Golden vectors of the sealed-sender mailbox frames: a sealed deposit with an access key,
/// and the recipient's registration of its verifiers.
#[test]
fn sealed_sender_golden_vectors() {
    let run = |byte: &str, n: usize| byte.repeat(n);
    let deposit = MailboxRequest::SealedDeposit {
        deposits: vec![SealedDeposit {
            access: Some(AccessKey([0x0a; 32])),
            envelope: SealedEnvelope {
                id: MessageId([0x11; 16]),
                recipient: UserId([0x22; 32]),
                ephemeral: DhPublicKey([0x33; 32]),
                ciphertext: vec![0x44; 16],
            },
        }],
    };
    // version, variant 4 (SealedDeposit), one deposit, Some(key), id, recipient, ephemeral
    // key, ciphertext (length 16).
    let expected = [
        "01".to_string(),
        "04".into(),
        "01".into(),
        "01".into(),
        run("0a", 32),
        run("11", 16),
        run("22", 32),
        run("33", 32),
        "10".into(),
        run("44", 16),
    ]
    .concat();
    assert_eq!(hex::encode(codec::encode(&deposit).unwrap()), expected, "mailbox/sealed-deposit");
    let set = MailboxRequest::SetAccess {
        recipient: UserId([0x22; 32]),
        verifiers: vec![AccessVerifier([0x55; 32])],
    };
    let expected =
        ["01".to_string(), "05".into(), run("22", 32), "01".into(), run("55", 32)].concat();
    assert_eq!(hex::encode(codec::encode(&set).unwrap()), expected, "mailbox/set-access");
    // A sealed envelope too short to hold its tag is refused.
    let short = MailboxRequest::SealedPush {
        envelopes: vec![SealedEnvelope {
            id: MessageId([0; 16]),
            recipient: UserId([0; 32]),
            ephemeral: DhPublicKey([0; 32]),
            ciphertext: vec![0; 15],
        }],
    };
    assert!(codec::encode(&short).is_err());
}

/// Golden vectors of the PQXDH frames (version 2 of the prekey protocol): the first message of
/// a session and a bundle. Their KEM fields are long, so the expected hex is built from runs.
#[test]
fn pqxdh_golden_vectors() {
    let run = |byte: &str, n: usize| byte.repeat(n);
    let envelope = Envelope {
        id: MessageId([0x11; 16]),
        sender: UserId([0x22; 32]),
        recipient: UserId([0x33; 32]),
        kind: EnvelopeKind::PqPreKey(Box::new(PqPreKeyMessage {
            identity_dh_key: DhPublicKey([0x44; 32]),
            identity_dh_signature: Signature([0x45; 64]),
            base_key: DhPublicKey([0x46; 32]),
            signed_prekey_id: 1,
            one_time_prekey_id: Some(2),
            kem_prekey_id: 3,
            kem_ciphertext: KemCiphertext(Box::new([0x77; KemCiphertext::LEN])),
            message: SealedRatchetMessage {
                header: EncryptedHeader(Box::new([0x48; EncryptedHeader::LEN])),
                ciphertext: vec![0x55; 16],
            },
        })),
    };
    // version, id, sender, recipient, variant 3 (PqPreKey), identity key, its signature, base
    // key, signed prekey id, Some(one-time id), KEM prekey id, 1,088 ciphertext bytes with no
    // length prefix, the 80-byte encrypted ratchet header (no length prefix), ciphertext.
    let expected = [
        "01".to_string(),
        run("11", 16),
        run("22", 32),
        run("33", 32),
        "03".into(),
        run("44", 32),
        run("45", 64),
        run("46", 32),
        "01".into(),
        "0102".into(),
        "03".into(),
        run("77", KemCiphertext::LEN),
        run("48", EncryptedHeader::LEN),
        "10".into(),
        run("55", 16),
    ]
    .concat();
    assert_eq!(hex::encode(codec::encode(&envelope).unwrap()), expected, "envelope/pq-prekey");

    // A message of an established session: variant 4 (SealedRatchet), the encrypted header,
    // the ciphertext.
    let sealed = Envelope {
        id: MessageId([0x11; 16]),
        sender: UserId([0x22; 32]),
        recipient: UserId([0x33; 32]),
        kind: EnvelopeKind::SealedRatchet(SealedRatchetMessage {
            header: EncryptedHeader(Box::new([0x48; EncryptedHeader::LEN])),
            ciphertext: vec![0x55; 16],
        }),
    };
    let expected = [
        "01".to_string(),
        run("11", 16),
        run("22", 32),
        run("33", 32),
        "04".into(),
        run("48", EncryptedHeader::LEN),
        "10".into(),
        run("55", 16),
    ]
    .concat();
    assert_eq!(hex::encode(codec::encode(&sealed).unwrap()), expected, "envelope/sealed-ratchet");

    let bundle = PreKeyResponse::Bundle(Box::new(PreKeyBundle {
        identity: IdentityBinding {
            user: UserId([0x01; 32]),
            dh_key: DhPublicKey([0x02; 32]),
            signature: Signature([0x03; 64]),
        },
        signed_prekey: SignedPreKeyPublic {
            id: 4,
            key: DhPublicKey([0x05; 32]),
            created_at: 6,
            signature: Signature([0x07; 64]),
        },
        one_time_prekey: None,
        kem_prekey: KemPreKeyPublic {
            id: 8,
            key: KemPublicKey(Box::new([0x09; KemPublicKey::LEN])),
            kind: KemPreKeyKind::OneTime,
            created_at: 10,
            signature: Signature([0x0b; 64]),
        },
    }));
    // version, variant 4 (Bundle; 0 stays the classical bundle), identity binding, signed
    // prekey, None, KEM prekey (id, 1,184 key bytes, kind 1 = OneTime, date, signature).
    let expected = [
        "01".to_string(),
        "04".into(),
        run("01", 32),
        run("02", 32),
        run("03", 64),
        "04".into(),
        run("05", 32),
        "06".into(),
        run("07", 64),
        "00".into(),
        "08".into(),
        run("09", KemPublicKey::LEN),
        "01".into(),
        "0a".into(),
        run("0b", 64),
    ]
    .concat();
    assert_eq!(hex::encode(codec::encode(&bundle).unwrap()), expected, "prekey/bundle");

    // Version-1 frames still decode: a classical bundle is variant 0, as it always was.
    let classical = PreKeyResponse::ClassicalBundle(Box::new(ClassicalPreKeyBundle {
        identity: IdentityBinding {
            user: UserId([0x01; 32]),
            dh_key: DhPublicKey([0x02; 32]),
            signature: Signature([0x03; 64]),
        },
        signed_prekey: SignedPreKeyPublic {
            id: 4,
            key: DhPublicKey([0x05; 32]),
            created_at: 6,
            signature: Signature([0x07; 64]),
        },
        one_time_prekey: None,
    }));
    let bytes = codec::encode(&classical).unwrap();
    assert_eq!(&hex::encode(&bytes)[..4], "0100");
    assert_eq!(codec::decode::<PreKeyResponse>(&bytes).unwrap(), classical);
    // A KEM key or ciphertext one byte short is a decode error, never a panic.
    let mut short = codec::encode(&envelope).unwrap();
    short.truncate(short.len() - 1);
    assert!(codec::decode::<Envelope>(&short).is_err());
}

#[test]
fn non_canonical_encoding_is_refused() {
    // Variant 0 written as the two-byte varint 80 00: postcard reads it, Kith refuses it, so
    // every frame has exactly one encoding.
    let mut bytes = vec![codec::WIRE_VERSION, 1];
    bytes.extend_from_slice(&[0xaa; 16]);
    bytes.extend_from_slice(&[0x80, 0x00]);
    assert_eq!(
        codec::decode::<DeliveryAcks>(&bytes),
        Err(DecodeError::NonCanonical { frame: "delivery acks" })
    );
    bytes.truncate(18);
    bytes.push(0x00);
    assert!(codec::decode::<DeliveryAcks>(&bytes).is_ok());
}

/// The `decode_frames` fuzz target's committed corpus (`fuzz/seeds/decode_frames`, regressions
/// included) replayed as an ordinary test.
#[test]
fn decode_frames_fuzz_corpus_replays_without_panic() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode_frames");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&corpus).expect("the seed corpus is committed") {
        decode_all(&std::fs::read(entry.unwrap().path()).unwrap());
        replayed += 1;
    }
    assert!(replayed > 0, "empty seed corpus");
    println!("decode_frames corpus: {replayed} inputs replayed");
}

/// Group changes: parents must be canonical (ascending, no repeats), present on every change
/// but a `Create`, absent on a `Create`, within their limit; every change of a batch belongs
/// to the batch's group; sync heads are canonical too. Each breach is a typed error.
#[test]
fn group_change_limits_are_typed_errors() {
    let group = GroupId([1; 32]);
    let change = |parents: Vec<ChangeHash>, action: GroupAction| GroupControl {
        group,
        parents,
        author: UserId([2; 32]),
        action,
        signature: Signature([3; 64]),
    };
    let content = |changes: Vec<GroupControl>| Content {
        sent_at: 0,
        body: Body::GroupChanges(GroupChanges { group, changes }),
    };
    let hash = |b: u8| ChangeHash([b; 32]);
    let invalid = |reason| Err(codec::EncodeError::Invalid { frame: "content", reason });
    let out_of_range = |field| invalid(Invalid::OutOfRange { field });

    assert!(
        codec::encode(&content(vec![change(vec![hash(1), hash(2)], GroupAction::Leave)])).is_ok()
    );
    assert_eq!(
        codec::encode(&content(vec![change(vec![hash(2), hash(1)], GroupAction::Leave)])),
        out_of_range("parents")
    );
    assert_eq!(
        codec::encode(&content(vec![change(vec![hash(1), hash(1)], GroupAction::Leave)])),
        out_of_range("parents")
    );
    assert_eq!(
        codec::encode(&content(vec![change(vec![], GroupAction::Leave)])),
        invalid(Invalid::Empty { field: "parents" })
    );
    let create =
        GroupAction::Create { name: "g".into(), members: vec![UserId([2; 32])], salt: [0; 16] };
    assert_eq!(
        codec::encode(&content(vec![change(vec![hash(1)], create)])),
        out_of_range("parents")
    );
    let many: Vec<ChangeHash> = (0..=u8::try_from(MAX_CHANGE_PARENTS).unwrap()).map(hash).collect();
    assert_eq!(
        codec::encode(&content(vec![change(many, GroupAction::Leave)])),
        invalid(Invalid::TooMany {
            field: "parents",
            count: MAX_CHANGE_PARENTS + 1,
            max: MAX_CHANGE_PARENTS
        })
    );
    let mut foreign = change(vec![hash(1)], GroupAction::Leave);
    foreign.group = GroupId([9; 32]);
    assert_eq!(codec::encode(&content(vec![foreign])), out_of_range("changes"));
    assert_eq!(codec::encode(&content(vec![])), invalid(Invalid::Empty { field: "changes" }));
    let sync = |heads| Content { sent_at: 0, body: Body::GroupSync(GroupSync { group, heads }) };
    assert!(codec::encode(&sync(vec![])).is_ok());
    assert_eq!(codec::encode(&sync(vec![hash(2), hash(1)])), out_of_range("heads"));
}

/// A version-2 user record round-trips, its limits hold, and it is told apart from version 1.
#[test]
fn user_record_v2_round_trips_and_refuses_a_wrong_magic_and_too_many_addresses() {
    let device = DeviceAddresses {
        peer: ByteBuf::from(vec![1; 38]),
        direct: vec![ByteBuf::from(b"/ip4/198.51.100.4/tcp/4001".to_vec())],
        circuits: vec![ByteBuf::from(b"/p2p-circuit".to_vec())],
    };
    let record = UserRecordV2 {
        magic: USER_RECORD_V2_MAGIC,
        identity: IdentityBinding {
            user: UserId([7; 32]),
            dh_key: DhPublicKey([8; 32]),
            signature: Signature([9; 64]),
        },
        signed_prekey: SignedPreKeyPublic {
            id: 1,
            key: DhPublicKey([2; 32]),
            created_at: 3,
            signature: Signature([4; 64]),
        },
        relays: vec![ByteBuf::from(b"/relay".to_vec())],
        devices: vec![device.clone()],
        issued_at: 5,
        signature: Signature([6; 64]),
    };
    let bytes = codec::encode(&record).unwrap();
    assert_eq!(codec::decode::<UserRecordV2>(&bytes).unwrap(), record);
    assert_eq!(bytes.get(1..5), Some(USER_RECORD_V2_MAGIC.as_slice()));
    let mut wrong = record.clone();
    wrong.magic = *b"KUR1";
    assert!(matches!(codec::encode(&wrong), Err(codec::EncodeError::Invalid { .. })));
    let mut crowded = record.clone();
    crowded.devices[0].direct = vec![ByteBuf::from(b"/a".to_vec()); MAX_DEVICE_ADDRS + 1];
    assert!(codec::encode(&crowded).is_err());
    let mut many = record;
    many.devices = vec![device; MAX_RECORD_DEVICES + 1];
    assert!(codec::encode(&many).is_err());
}
