//! proptest strategies producing valid instances of every wire type (shared by the tests).

#![allow(dead_code, unreachable_pub, missing_docs)]

use kith_protocol::content::*;
use kith_protocol::direct::*;
use kith_protocol::envelope::*;
use kith_protocol::ids::*;
use kith_protocol::limits::MAX_DIRECT_BATCH;
use kith_protocol::mailbox::*;
use kith_protocol::media::*;
use kith_protocol::prekey::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde_bytes::ByteBuf;

pub fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}
pub fn user_id() -> impl Strategy<Value = UserId> {
    any::<[u8; 32]>().prop_map(UserId)
}
pub fn dh() -> impl Strategy<Value = DhPublicKey> {
    any::<[u8; 32]>().prop_map(DhPublicKey)
}
pub fn signature() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        Signature(s)
    })
}
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{1,{}}}", max.min(64)))
        .expect("regex")
        .prop_filter("fits", move |s| !s.is_empty() && s.len() <= max)
}
fn ciphertext() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), TAG_BYTES..300)
}

pub fn ratchet_message() -> impl Strategy<Value = RatchetMessage> {
    (dh(), any::<u32>(), any::<u32>(), ciphertext()).prop_map(|(k, pn, n, c)| RatchetMessage {
        header: RatchetHeader { ratchet_key: k, previous_chain_length: pn, counter: n },
        ciphertext: c,
    })
}
pub fn sealed_ratchet_message() -> impl Strategy<Value = SealedRatchetMessage> {
    (any::<u8>(), ciphertext()).prop_map(|(fill, c)| SealedRatchetMessage {
        header: EncryptedHeader(Box::new([fill; EncryptedHeader::LEN])),
        ciphertext: c,
    })
}
pub fn group_message() -> impl Strategy<Value = GroupMessage> {
    (any::<[u8; 32]>(), any::<u32>(), any::<u32>(), ciphertext(), signature()).prop_map(
        |(t, chain_id, iteration, ciphertext, signature)| GroupMessage {
            tag: GroupTag(t),
            chain_id,
            iteration,
            ciphertext,
            signature,
        },
    )
}
pub fn envelope() -> impl Strategy<Value = Envelope> {
    let kind = prop_oneof![
        (dh(), signature(), dh(), any::<u32>(), option::of(any::<u32>()), ratchet_message())
            .prop_map(|(i, s, b, spk, opk, m)| EnvelopeKind::PreKey(PreKeyMessage {
                identity_dh_key: i,
                identity_dh_signature: s,
                base_key: b,
                signed_prekey_id: spk,
                one_time_prekey_id: opk,
                message: m,
            })),
        ratchet_message().prop_map(EnvelopeKind::Ratchet),
        sealed_ratchet_message().prop_map(EnvelopeKind::SealedRatchet),
        group_message().prop_map(EnvelopeKind::Group),
        (
            (dh(), signature(), dh()),
            (any::<u32>(), option::of(any::<u32>()), any::<u32>()),
            any::<u8>(),
            sealed_ratchet_message()
        )
            .prop_map(|((i, s, b), (spk, opk, kem), fill, m)| {
                EnvelopeKind::PqPreKey(Box::new(PqPreKeyMessage {
                    identity_dh_key: i,
                    identity_dh_signature: s,
                    base_key: b,
                    signed_prekey_id: spk,
                    one_time_prekey_id: opk,
                    kem_prekey_id: kem,
                    kem_ciphertext: KemCiphertext(Box::new([fill; KemCiphertext::LEN])),
                    message: m,
                }))
            }),
    ];
    (message_id(), user_id(), user_id(), kind).prop_map(|(id, sender, recipient, kind)| Envelope {
        id,
        sender,
        recipient,
        kind,
    })
}
pub fn group_envelope() -> impl Strategy<Value = GroupEnvelope> {
    (message_id(), user_id(), group_message()).prop_map(|(id, sender, message)| GroupEnvelope {
        id,
        sender,
        message,
    })
}

fn manifest() -> impl Strategy<Value = MediaManifest> {
    (
        any::<[u8; 16]>(),
        text(255),
        "[a-z]{1,10}/[a-z0-9.+-]{1,20}",
        1u32..=1 << 20,
        1usize..40,
        any::<[u8; 32]>(),
        option::of(vec(any::<u8>(), 0..64)),
        option::of(text(100)),
    )
        .prop_flat_map(|(id, name, mime, chunk_size, chunks, key, thumbnail, caption)| {
            // A size that needs exactly `chunks` chunks.
            let lo = (chunks as u64 - 1) * u64::from(chunk_size) + 1;
            let hi = chunks as u64 * u64::from(chunk_size);
            (lo..=hi, vec(any::<[u8; 32]>(), chunks)).prop_map(move |(size, hashes)| {
                MediaManifest {
                    media_id: MediaId(id),
                    name: name.clone(),
                    mime: mime.clone(),
                    size,
                    chunk_size,
                    chunk_hashes: hashes.into_iter().map(ChunkHash).collect(),
                    key: SymmetricKey(key),
                    thumbnail: thumbnail.clone(),
                    caption: caption.clone(),
                }
            })
        })
}

fn group_action() -> impl Strategy<Value = GroupAction> {
    prop_oneof![
        (text(128), vec(user_id(), 1..10), any::<[u8; 16]>())
            .prop_map(|(name, members, salt)| GroupAction::Create { name, members, salt }),
        user_id().prop_map(|member| GroupAction::Add { member }),
        user_id().prop_map(|member| GroupAction::Remove { member }),
        Just(GroupAction::Leave),
        text(128).prop_map(|name| GroupAction::Rename { name }),
        user_id().prop_map(|member| GroupAction::Promote { member }),
    ]
}

/// 1 to `len` distinct change hashes in ascending order (the canonical form).
fn change_hashes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<ChangeHash>> {
    proptest::collection::btree_set(any::<[u8; 32]>(), len)
        .prop_map(|set| set.into_iter().map(ChangeHash).collect())
}

fn group_change_parts() -> impl Strategy<Value = (Vec<ChangeHash>, UserId, GroupAction, Signature)>
{
    (change_hashes(1..17), user_id(), group_action(), signature())
}

pub fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (text(4096), option::of(message_id()))
            .prop_map(|(body, reply_to)| Body::Text(Text { body, reply_to })),
        manifest().prop_map(Body::Media),
        (message_id(), text(64), any::<bool>())
            .prop_map(|(target, emoji, remove)| Body::Reaction(Reaction { target, emoji, remove })),
        (
            prop_oneof![Just(ReceiptKind::Delivered), Just(ReceiptKind::Read)],
            vec(message_id(), 1..20)
        )
            .prop_map(|(kind, ids)| Body::Receipt(Receipt { kind, ids })),
        prop_oneof![Just(TypingState::Started), Just(TypingState::Stopped)].prop_map(Body::Typing),
        (
            prop_oneof![
                Just(PresenceStatus::Online),
                Just(PresenceStatus::Away),
                Just(PresenceStatus::Offline)
            ],
            option::of(any::<u64>())
        )
            .prop_map(|(status, last_seen)| Body::Presence(Presence { status, last_seen })),
        (message_id(), text(4096)).prop_map(|(target, body)| Body::Edit(Edit { target, body })),
        message_id().prop_map(|target| Body::Delete(Delete { target })),
        text(128).prop_map(|display_name| Body::Profile(Profile { display_name })),
        (any::<[u8; 32]>(), vec(group_change_parts(), 1..4)).prop_map(|(g, parts)| {
            let group = GroupId(g);
            let changes = parts
                .into_iter()
                .map(|(parents, author, action, signature)| {
                    let parents =
                        if matches!(action, GroupAction::Create { .. }) { vec![] } else { parents };
                    GroupControl { group, parents, author, action, signature }
                })
                .collect();
            Body::GroupChanges(GroupChanges { group, changes })
        }),
        (any::<[u8; 32]>(), change_hashes(0..8))
            .prop_map(|(g, heads)| Body::GroupSync(GroupSync { group: GroupId(g), heads })),
        (any::<[u8; 32]>(), any::<u32>(), any::<u32>(), any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(g, chain_id, iteration, ck, sk)| Body::SenderKeyDistribution(
                SenderKeyDistribution {
                    group: GroupId(g),
                    chain_id,
                    iteration,
                    chain_key: SymmetricKey(ck),
                    signing_key: sk,
                }
            )),
    ]
}
pub fn content() -> impl Strategy<Value = Content> {
    (any::<u64>(), body()).prop_map(|(sent_at, body)| Content { sent_at, body })
}

pub fn delivery_ack() -> impl Strategy<Value = DeliveryAck> {
    let reason = prop_oneof![
        Just(RejectReason::Malformed),
        Just(RejectReason::WrongRecipient),
        Just(RejectReason::SenderMismatch),
        Just(RejectReason::NoSession),
        Just(RejectReason::DecryptFailed),
        Just(RejectReason::IdentityChanged),
        Just(RejectReason::Blocked),
        Just(RejectReason::RateLimited),
        Just(RejectReason::Unavailable),
        Just(RejectReason::Unsupported),
        Just(RejectReason::Expired),
        Just(RejectReason::TooFarAhead),
    ];
    let result = prop_oneof![
        Just(AckResult::Accepted),
        Just(AckResult::Duplicate),
        reason.prop_map(AckResult::Rejected)
    ];
    (message_id(), result).prop_map(|(id, result)| DeliveryAck { id, result })
}

pub fn delivery_acks() -> impl Strategy<Value = DeliveryAcks> {
    vec(delivery_ack(), 0..=MAX_DIRECT_BATCH).prop_map(|acks| DeliveryAcks { acks })
}

pub fn envelope_batch() -> impl Strategy<Value = EnvelopeBatch> {
    // Undecoded bytes: anything, including an empty or garbled envelope.
    let envelope = vec(any::<u8>(), 0..600).prop_map(ByteBuf::from);
    vec(envelope, 1..=8).prop_map(|envelopes| EnvelopeBatch { envelopes })
}

fn binding() -> impl Strategy<Value = IdentityBinding> {
    (user_id(), dh(), signature()).prop_map(|(user, dh_key, signature)| IdentityBinding {
        user,
        dh_key,
        signature,
    })
}
fn spk() -> impl Strategy<Value = SignedPreKeyPublic> {
    (any::<u32>(), dh(), any::<u64>(), signature()).prop_map(|(id, key, created_at, signature)| {
        SignedPreKeyPublic { id, key, created_at, signature }
    })
}
fn opk() -> impl Strategy<Value = OneTimePreKeyPublic> {
    (any::<u32>(), dh()).prop_map(|(id, key)| OneTimePreKeyPublic { id, key })
}
fn kem_prekey() -> impl Strategy<Value = KemPreKeyPublic> {
    (any::<u32>(), any::<u8>(), any::<bool>(), any::<u64>(), signature()).prop_map(
        |(id, fill, last_resort, created_at, signature)| KemPreKeyPublic {
            id,
            key: KemPublicKey(Box::new([fill; KemPublicKey::LEN])),
            kind: if last_resort { KemPreKeyKind::LastResort } else { KemPreKeyKind::OneTime },
            created_at,
            signature,
        },
    )
}
pub fn bundle() -> impl Strategy<Value = PreKeyBundle> {
    (binding(), spk(), option::of(opk()), kem_prekey()).prop_map(
        |(identity, signed_prekey, one_time_prekey, kem_prekey)| PreKeyBundle {
            identity,
            signed_prekey,
            one_time_prekey,
            kem_prekey,
        },
    )
}
pub fn prekey_request() -> impl Strategy<Value = PreKeyRequest> {
    prop_oneof![
        user_id().prop_map(|user| PreKeyRequest::Fetch { user }),
        (binding(), spk(), vec(opk(), 0..50)).prop_map(|(identity, signed_prekey, opks)| {
            PreKeyRequest::ClassicalUpload(Box::new(ClassicalPreKeyUpload {
                identity,
                signed_prekey,
                one_time_prekeys: opks,
            }))
        }),
        (binding(), spk(), kem_prekey(), vec(opk(), 0..50), vec(kem_prekey(), 0..8)).prop_map(
            |(identity, signed_prekey, kem_last_resort, opks, kems)| {
                PreKeyRequest::Upload(Box::new(PreKeyUpload {
                    identity,
                    signed_prekey,
                    kem_last_resort,
                    one_time_prekeys: opks,
                    kem_one_time_prekeys: kems,
                }))
            }
        ),
    ]
}
pub fn prekey_response() -> impl Strategy<Value = PreKeyResponse> {
    prop_oneof![
        bundle().prop_map(|b| PreKeyResponse::Bundle(Box::new(b))),
        (binding(), spk(), option::of(opk())).prop_map(|(identity, signed_prekey, opk)| {
            PreKeyResponse::ClassicalBundle(Box::new(ClassicalPreKeyBundle {
                identity,
                signed_prekey,
                one_time_prekey: opk,
            }))
        }),
        Just(PreKeyResponse::NotFound),
        any::<u32>().prop_map(|n| PreKeyResponse::Uploaded { one_time_prekeys: n }),
        prop_oneof![
            Just(PreKeyRefusal::RateLimited),
            Just(PreKeyRefusal::Unauthorized),
            Just(PreKeyRefusal::NotARelay),
            Just(PreKeyRefusal::QuotaExceeded),
            Just(PreKeyRefusal::Classical),
        ]
        .prop_map(PreKeyResponse::Refused),
    ]
}
pub fn user_record() -> impl Strategy<Value = UserRecord> {
    (binding(), spk(), vec(vec(any::<u8>(), 1..60), 0..8), any::<u64>(), signature()).prop_map(
        |(identity, signed_prekey, relays, issued_at, signature)| UserRecord {
            identity,
            signed_prekey,
            relays: relays.into_iter().map(ByteBuf::from).collect(),
            issued_at,
            signature,
        },
    )
}
fn mailbox_refusal() -> impl Strategy<Value = MailboxRefusal> {
    prop_oneof![
        Just(MailboxRefusal::QuotaExceeded),
        Just(MailboxRefusal::RateLimited),
        Just(MailboxRefusal::TooLarge),
        Just(MailboxRefusal::NotRecipient),
        Just(MailboxRefusal::NotARelay),
        Just(MailboxRefusal::Unavailable),
    ]
}
pub fn mailbox_request() -> impl Strategy<Value = MailboxRequest> {
    prop_oneof![
        vec(envelope(), 1..4).prop_map(|envelopes| MailboxRequest::Deposit { envelopes }),
        (user_id(), any::<u16>())
            .prop_map(|(recipient, limit)| MailboxRequest::Fetch { recipient, limit }),
        (user_id(), vec(message_id(), 1..30))
            .prop_map(|(recipient, ids)| MailboxRequest::Ack { recipient, ids }),
        vec(envelope(), 0..4).prop_map(|envelopes| MailboxRequest::Push { envelopes }),
    ]
}
pub fn mailbox_response() -> impl Strategy<Value = MailboxResponse> {
    prop_oneof![
        vec((message_id(), option::of(mailbox_refusal())), 0..8).prop_map(|r| {
            MailboxResponse::Deposited {
                results: r.into_iter().map(|(id, refused)| DepositResult { id, refused }).collect(),
            }
        }),
        (vec(envelope(), 0..4), any::<u32>())
            .prop_map(|(envelopes, remaining)| MailboxResponse::Batch { envelopes, remaining }),
        any::<u32>().prop_map(|removed| MailboxResponse::Acked { removed }),
        vec(message_id(), 0..30).prop_map(|ids| MailboxResponse::Received { ids }),
        mailbox_refusal().prop_map(MailboxResponse::Refused),
    ]
}
pub fn media_request() -> impl Strategy<Value = MediaRequest> {
    prop_oneof![
        (any::<[u8; 16]>(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(m, index, h)| {
            MediaRequest::Get { media: MediaId(m), index, hash: ChunkHash(h) }
        }),
        (user_id(), any::<[u8; 32]>(), vec(any::<u8>(), 1..500)).prop_map(
            |(recipient, h, data)| { MediaRequest::Put { recipient, hash: ChunkHash(h), data } }
        ),
        vec(any::<[u8; 32]>(), 1..50).prop_map(|hashes| MediaRequest::Delete {
            hashes: hashes.into_iter().map(ChunkHash).collect()
        }),
    ]
}
pub fn media_response() -> impl Strategy<Value = MediaResponse> {
    prop_oneof![
        vec(any::<u8>(), 0..500).prop_map(|data| MediaResponse::Chunk { data }),
        Just(MediaResponse::NotFound),
        Just(MediaResponse::Stored),
        any::<u32>().prop_map(|removed| MediaResponse::Deleted { removed }),
        prop_oneof![
            Just(MediaRefusal::HashMismatch),
            Just(MediaRefusal::QuotaExceeded),
            Just(MediaRefusal::RateLimited),
            Just(MediaRefusal::NotRecipient),
            Just(MediaRefusal::Unavailable),
            Just(MediaRefusal::NotARelay),
        ]
        .prop_map(MediaResponse::Refused),
    ]
}
