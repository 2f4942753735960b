//! On-disk records. Live types are never serialized: each is converted to and from a record
//! type here, and every record is written as a version-tagged postcard enum, so the disk format
//! survives refactors of the live types (a new field means a new `V2`, read alongside `V1`).

use kith_protocol::content::{GroupControl, SenderKeyDistribution};
use kith_protocol::prekey::{IdentityBinding, KemPreKeyKind};
use kith_protocol::{
    DhPublicKey, GroupId, KemCiphertext, MessageId, Signature, UnixMillis, UserId,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;
use crate::crypto::KemKeyPair;
use crate::crypto::SigningKeyPair;
use crate::crypto::{DhKeyPair, SecretBytes};
use crate::group::sender_key::{MemberChains, OwnChain, PeerChain, SkippedGroupKey};
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::model::{Direction, MemberReceipt, MessageReaction, MessageStatus};
use crate::prekeys::{KemPreKey, OneTimePreKey, SignedPreKey};
use crate::ratchet::keys::{ChainKey, HeaderKey, MessageKey, RootKey};
use crate::ratchet::skipped::{SkippedKey, SkippedKeys};
use crate::ratchet::{HeaderKeys, Ratchet, ReceivingChain, SendingChain};
use crate::session::{PeerSessions, PendingPreKey, Session};

/// A contact as version 1 stored it: before sealed sender's access keys.
#[derive(Deserialize)]
pub(crate) struct ContactV1 {
    user: UserId,
    name: Option<String>,
    profile_name: Option<String>,
    identity: Option<IdentityBinding>,
    verified: bool,
    relays: Vec<String>,
    added_at: UnixMillis,
    presence: Option<kith_protocol::content::PresenceStatus>,
    last_seen: Option<UnixMillis>,
    blocked: bool,
    pending_identity: Option<IdentityBinding>,
    profile_shared: bool,
}

impl From<ContactV1> for crate::model::Contact {
    fn from(v1: ContactV1) -> Self {
        Self {
            user: v1.user,
            name: v1.name,
            profile_name: v1.profile_name,
            identity: v1.identity,
            verified: v1.verified,
            relays: v1.relays,
            added_at: v1.added_at,
            presence: v1.presence,
            last_seen: v1.last_seen,
            blocked: v1.blocked,
            pending_identity: v1.pending_identity,
            profile_shared: v1.profile_shared,
            access_given: None,
            access_key: None,
        }
    }
}

/// A record type and its name in errors. A record is written with the newest version tag it
/// has; a record type at version 2 still reads its version-1 shape (`Legacy`) and converts it.
pub(crate) trait Record: Serialize + DeserializeOwned + From<Self::Legacy> {
    const NAME: &'static str;
    /// The version written: 1 or 2.
    const VERSION: u8;
    /// The version-1 shape (the type itself for records still at version 1).
    type Legacy: DeserializeOwned;
}

#[derive(Serialize)]
enum VersionedRef<'a, T> {
    V1(&'a T),
    V2(&'a T),
}

#[derive(Deserialize)]
enum Versioned<T, L> {
    V1(L),
    V2(T),
}

pub(crate) fn encode<T: Record>(record: &T) -> Result<Vec<u8>, StoreError> {
    let tagged = if T::VERSION == 2 { VersionedRef::V2(record) } else { VersionedRef::V1(record) };
    postcard::to_allocvec(&tagged).map_err(|_| StoreError::Encode { record: T::NAME })
}

pub(crate) fn decode<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    match postcard::from_bytes::<Versioned<T, T::Legacy>>(bytes) {
        Ok(Versioned::V1(legacy)) => Ok(legacy.into()),
        Ok(Versioned::V2(record)) if T::VERSION == 2 => Ok(record),
        _ => Err(StoreError::Corrupt { record: T::NAME }),
    }
}

macro_rules! record {
    ($($t:ty => $name:literal $(, legacy $legacy:ty)?);* $(;)?) => {$(
        record!(@one $t, $name $(, $legacy)?);
    )*};
    (@one $t:ty, $name:literal) => {
        impl Record for $t {
            const NAME: &'static str = $name;
            const VERSION: u8 = 1;
            type Legacy = $t;
        }
    };
    (@one $t:ty, $name:literal, $legacy:ty) => {
        impl Record for $t {
            const NAME: &'static str = $name;
            const VERSION: u8 = 2;
            type Legacy = $legacy;
        }
    };
}

record! {
    SessionRecord => "session", legacy SessionRecordV1;
    IdentityRecord => "identity";
    SignedPreKeyRecord => "signed prekey";
    OneTimePreKeyRecord => "one-time prekey";
    KemPreKeyRecord => "KEM prekey";
    PeerSessionsRecord => "sessions", legacy PeerSessionsRecordV1;
    crate::model::Contact => "contact", legacy ContactV1;
    MessageRecord => "message";
    OutboxRecord => "outbox";
    MessageIndexRecord => "message index";
    GroupRecord => "group";
    GroupChangeRecord => "group change";
    GroupOrphanRecord => "waiting group change";
    WaitingKeyRecord => "waiting sender key";
    OwnChainRecord => "own sender key";
    MemberChainsRecord => "sender keys";
    PendingGroupRecord => "pending group message";
    GroupInvitationRecord => "group invitation";
    TimerRecord => "disappearing-message timer";
    ExpiringRecord => "disappearing message";
}

/// A conversation's disappearing-message timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimerRecord {
    /// The contact's user id or the group's id (the key holds only its pseudonym).
    pub(crate) conversation: [u8; 32],
    /// Seconds after reading (after sending, for our own) that a message disappears.
    pub(crate) seconds: u32,
    /// The sender's time of the message that set it: a later setting wins.
    pub(crate) set_at: UnixMillis,
}

/// A message that disappears.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExpiringRecord {
    /// Its timer, in seconds.
    pub(crate) seconds: u32,
    /// When it disappears, once its timer started (it was read, or sent for our own).
    pub(crate) expires_at: Option<UnixMillis>,
}

/// A group we know (its changes are records of their own, [`GroupChangeRecord`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    pub(crate) id: GroupId,
    /// When we first heard of it.
    pub(crate) since: UnixMillis,
    /// Who sent us the changes that made us a member first (`None`: we created it).
    pub(crate) introduced_by: Option<UserId>,
}

/// A group someone added us to, until the user accepts or declines it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GroupInvitationRecord {
    pub(crate) group: GroupId,
    /// The member whose changes made us a member.
    pub(crate) from: UserId,
    pub(crate) received_at: UnixMillis,
}

/// One change of a group's membership.
#[derive(Serialize, Deserialize)]
pub(crate) struct GroupChangeRecord {
    pub(crate) change: GroupControl,
    pub(crate) received_at: UnixMillis,
}

/// A member's sender key that arrived before we knew it (or ourselves) to be a member.
#[derive(Serialize, Deserialize)]
pub(crate) struct WaitingKeyRecord {
    pub(crate) skd: SenderKeyDistribution,
    pub(crate) received_at: UnixMillis,
}

/// A group change that waits for its parents.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct GroupOrphanRecord {
    pub(crate) change: GroupControl,
    /// Who sent it (and can send its parents).
    pub(crate) from: UserId,
    pub(crate) received_at: UnixMillis,
}

/// Our sending chain in a group.
#[derive(Serialize, Deserialize)]
pub(crate) struct OwnChainRecord {
    chain_id: u32,
    iteration: u32,
    chain_key: SecretBytes,
    signing_seed: SecretBytes,
}

impl From<&OwnChain> for OwnChainRecord {
    fn from(c: &OwnChain) -> Self {
        Self {
            chain_id: c.chain_id,
            iteration: c.iteration,
            chain_key: c.chain_key.0.clone(),
            signing_seed: c.signing.secret(),
        }
    }
}

impl From<OwnChainRecord> for OwnChain {
    fn from(r: OwnChainRecord) -> Self {
        OwnChain {
            chain_id: r.chain_id,
            iteration: r.iteration,
            chain_key: ChainKey(r.chain_key),
            signing: SigningKeyPair::from_secret(&r.signing_seed),
        }
    }
}

/// Another member's chains in a group, newest first.
#[derive(Serialize, Deserialize)]
pub(crate) struct MemberChainsRecord {
    chains: Vec<PeerChainRecord>,
}

#[derive(Serialize, Deserialize)]
struct PeerChainRecord {
    chain_id: u32,
    iteration: u32,
    chain_key: SecretBytes,
    signing_key: UserId,
    skipped: Vec<(u32, SecretBytes, UnixMillis)>,
}

impl From<&MemberChains> for MemberChainsRecord {
    fn from(m: &MemberChains) -> Self {
        let chains = m
            .chains
            .iter()
            .map(|c| PeerChainRecord {
                chain_id: c.chain_id,
                iteration: c.iteration,
                chain_key: c.chain_key.0.clone(),
                signing_key: c.signing_key,
                skipped: c
                    .skipped
                    .iter()
                    .map(|k| (k.iteration, k.key.0.clone(), k.stored_at))
                    .collect(),
            })
            .collect();
        Self { chains }
    }
}

impl From<MemberChainsRecord> for MemberChains {
    fn from(r: MemberChainsRecord) -> Self {
        let chains = r
            .chains
            .into_iter()
            .map(|c| PeerChain {
                chain_id: c.chain_id,
                iteration: c.iteration,
                chain_key: ChainKey(c.chain_key),
                signing_key: c.signing_key,
                skipped: c
                    .skipped
                    .into_iter()
                    .map(|(iteration, key, stored_at)| SkippedGroupKey {
                        iteration,
                        key: MessageKey(key),
                        stored_at,
                    })
                    .collect(),
            })
            .collect();
        MemberChains { chains }
    }
}

/// A group message that arrived before its sender's key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PendingGroupRecord {
    /// The wire-encoded `GroupEnvelope`.
    #[serde(with = "serde_bytes")]
    pub(crate) envelope: Vec<u8>,
    pub(crate) received_at: UnixMillis,
    /// Whether it came from gossip (else from a mailbox or a direct copy).
    pub(crate) gossip: bool,
}

/// The local identity.
#[derive(Serialize, Deserialize)]
pub(crate) struct IdentityRecord {
    signing_seed: SecretBytes,
    dh_secret: SecretBytes,
    dh_public: DhPublicKey,
    dh_signature: Signature,
    pub(crate) created_at: UnixMillis,
}

impl IdentityRecord {
    pub(crate) fn new(identity: &IdentityKeyPair, created_at: UnixMillis) -> Self {
        let (signing_seed, dh_secret, dh_public, dh_signature) = identity.to_stored();
        Self { signing_seed, dh_secret, dh_public, dh_signature, created_at }
    }

    pub(crate) fn to_identity(&self) -> Result<IdentityKeyPair, StoreError> {
        IdentityKeyPair::from_stored(
            &self.signing_seed,
            &self.dh_secret,
            self.dh_public,
            self.dh_signature,
        )
        .map_err(|_| StoreError::Corrupt { record: "identity" })
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SignedPreKeyRecord {
    id: u32,
    secret: SecretBytes,
    public: DhPublicKey,
    created_at: UnixMillis,
    signature: Signature,
}

impl From<&SignedPreKey> for SignedPreKeyRecord {
    fn from(k: &SignedPreKey) -> Self {
        Self {
            id: k.id,
            secret: k.pair.secret(),
            public: k.pair.public(),
            created_at: k.created_at,
            signature: k.signature,
        }
    }
}

impl From<SignedPreKeyRecord> for SignedPreKey {
    fn from(r: SignedPreKeyRecord) -> Self {
        SignedPreKey {
            id: r.id,
            pair: DhKeyPair::from_stored(&r.secret, r.public),
            created_at: r.created_at,
            signature: r.signature,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct OneTimePreKeyRecord {
    id: u32,
    secret: SecretBytes,
    public: DhPublicKey,
    /// When it was handed out in a bundle; a key is handed out at most once.
    pub(crate) handed_out_at: Option<UnixMillis>,
}

impl OneTimePreKeyRecord {
    pub(crate) fn new(key: &OneTimePreKey) -> Self {
        Self {
            id: key.id,
            secret: key.pair.secret(),
            public: key.pair.public(),
            handed_out_at: None,
        }
    }

    pub(crate) fn to_key(&self) -> OneTimePreKey {
        OneTimePreKey { id: self.id, pair: DhKeyPair::from_stored(&self.secret, self.public) }
    }
}

/// A KEM prekey: its seed halves (the public key is recomputed from them on load) and, for a
/// one-time one, when it was handed out.
#[derive(Serialize, Deserialize)]
pub(crate) struct KemPreKeyRecord {
    id: u32,
    kind: KemPreKeyKind,
    seed_d: SecretBytes,
    seed_z: SecretBytes,
    created_at: UnixMillis,
    signature: Signature,
    /// When a one-time key was handed out in a bundle (at most once).
    pub(crate) handed_out_at: Option<UnixMillis>,
}

impl KemPreKeyRecord {
    pub(crate) fn new(key: &KemPreKey) -> Self {
        let (seed_d, seed_z) = key.pair.seed();
        Self {
            id: key.id,
            kind: key.kind,
            seed_d,
            seed_z,
            created_at: key.created_at,
            signature: key.signature,
            handed_out_at: None,
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn kind(&self) -> KemPreKeyKind {
        self.kind
    }

    pub(crate) fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// The key with its secret (expands the seed: tens of microseconds).
    pub(crate) fn to_key(&self) -> KemPreKey {
        KemPreKey {
            id: self.id,
            pair: KemKeyPair::from_seed(&self.seed_d, &self.seed_z),
            kind: self.kind,
            created_at: self.created_at,
            signature: self.signature,
        }
    }
}

/// A ratchet (version 2: with header keys, `None` only for a classical session).
#[derive(Serialize, Deserialize)]
struct RatchetRecord {
    root: SecretBytes,
    our_secret: SecretBytes,
    our_public: DhPublicKey,
    their: Option<DhPublicKey>,
    sending: Option<(SecretBytes, u32)>,
    previous_sending_length: u32,
    /// Ratchet key, chain key, next index, header key.
    receiving: Vec<(DhPublicKey, SecretBytes, u32, Option<SecretBytes>)>,
    skipped: Vec<(DhPublicKey, u32, SecretBytes, UnixMillis)>,
    header_keys: Option<HeaderKeysRecord>,
}

#[derive(Serialize, Deserialize)]
struct HeaderKeysRecord {
    sending: Option<SecretBytes>,
    next_sending: SecretBytes,
    next_receiving: SecretBytes,
    retired: Vec<(DhPublicKey, SecretBytes)>,
}

/// The ratchet of a version-1 (classical) session: no header keys.
#[derive(Serialize, Deserialize)]
pub(crate) struct RatchetRecordV1 {
    root: SecretBytes,
    our_secret: SecretBytes,
    our_public: DhPublicKey,
    their: Option<DhPublicKey>,
    sending: Option<(SecretBytes, u32)>,
    previous_sending_length: u32,
    receiving: Vec<(DhPublicKey, SecretBytes, u32)>,
    skipped: Vec<(DhPublicKey, u32, SecretBytes, UnixMillis)>,
}

impl From<RatchetRecordV1> for RatchetRecord {
    fn from(v1: RatchetRecordV1) -> Self {
        Self {
            root: v1.root,
            our_secret: v1.our_secret,
            our_public: v1.our_public,
            their: v1.their,
            sending: v1.sending,
            previous_sending_length: v1.previous_sending_length,
            receiving: v1.receiving.into_iter().map(|(r, k, i)| (r, k, i, None)).collect(),
            skipped: v1.skipped,
            header_keys: None,
        }
    }
}

impl From<&Ratchet> for RatchetRecord {
    fn from(r: &Ratchet) -> Self {
        Self {
            root: r.root.0.clone(),
            our_secret: r.our_ratchet.secret(),
            our_public: r.our_ratchet.public(),
            their: r.their_ratchet,
            sending: r.sending.as_ref().map(|s| (s.chain_key.0.clone(), s.index)),
            previous_sending_length: r.previous_sending_length,
            receiving: r
                .receiving
                .iter()
                .map(|c| {
                    let header = c.header_key.as_ref().map(|k| k.0.clone());
                    (c.ratchet_key, c.chain_key.0.clone(), c.index, header)
                })
                .collect(),
            skipped: r
                .skipped
                .iter()
                .map(|k| (k.ratchet_key, k.index, k.key.0.clone(), k.stored_at))
                .collect(),
            header_keys: r.header_keys.as_ref().map(|h| HeaderKeysRecord {
                sending: h.sending.as_ref().map(|k| k.0.clone()),
                next_sending: h.next_sending.0.clone(),
                next_receiving: h.next_receiving.0.clone(),
                retired: h.retired.iter().map(|(r, k)| (*r, k.0.clone())).collect(),
            }),
        }
    }
}

impl From<RatchetRecord> for Ratchet {
    fn from(r: RatchetRecord) -> Self {
        Ratchet {
            root: RootKey(r.root),
            our_ratchet: DhKeyPair::from_stored(&r.our_secret, r.our_public),
            their_ratchet: r.their,
            sending: r.sending.map(|(k, index)| SendingChain { chain_key: ChainKey(k), index }),
            previous_sending_length: r.previous_sending_length,
            receiving: r
                .receiving
                .into_iter()
                .map(|(ratchet_key, k, index, header)| ReceivingChain {
                    ratchet_key,
                    chain_key: ChainKey(k),
                    index,
                    header_key: header.map(HeaderKey),
                })
                .collect(),
            skipped: SkippedKeys::from_keys(r.skipped.into_iter().map(
                |(ratchet_key, index, k, stored_at)| SkippedKey {
                    ratchet_key,
                    index,
                    key: MessageKey(k),
                    stored_at,
                },
            )),
            header_keys: r.header_keys.map(|h| HeaderKeys {
                sending: h.sending.map(HeaderKey),
                next_sending: HeaderKey(h.next_sending),
                next_receiving: HeaderKey(h.next_receiving),
                retired: h.retired.into_iter().map(|(r, k)| (r, HeaderKey(k))).collect(),
            }),
        }
    }
}

/// A session (version 2: PQXDH, with the pending KEM ciphertext and header keys).
#[derive(Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    peer: IdentityBinding,
    #[serde(with = "serde_big_array")]
    associated: [u8; crate::pqxdh::ASSOCIATED_DATA_LEN],
    base_key: DhPublicKey,
    post_quantum: bool,
    handshake: Option<[u8; 32]>,
    pending_prekey: Option<PendingPreKeyRecord>,
    created_at: UnixMillis,
    ratchet: RatchetRecord,
}

#[derive(Serialize, Deserialize)]
struct PendingPreKeyRecord {
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
    kem: Option<(u32, KemCiphertext)>,
}

/// A version-1 session: classical X3DH.
#[derive(Deserialize)]
pub(crate) struct SessionRecordV1 {
    peer: IdentityBinding,
    #[serde(with = "serde_big_array")]
    associated: [u8; crate::pqxdh::ASSOCIATED_DATA_LEN],
    base_key: DhPublicKey,
    pending_prekey: Option<(u32, Option<u32>)>,
    created_at: UnixMillis,
    ratchet: RatchetRecordV1,
}

impl From<SessionRecordV1> for SessionRecord {
    fn from(v1: SessionRecordV1) -> Self {
        Self {
            peer: v1.peer,
            associated: v1.associated,
            base_key: v1.base_key,
            post_quantum: false,
            handshake: None,
            pending_prekey: v1.pending_prekey.map(|(signed_prekey_id, one_time_prekey_id)| {
                PendingPreKeyRecord { signed_prekey_id, one_time_prekey_id, kem: None }
            }),
            created_at: v1.created_at,
            ratchet: v1.ratchet.into(),
        }
    }
}

/// `[u8; 128]` as a postcard tuple (serde derives arrays only up to 32).
mod serde_big_array {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    const N: usize = crate::pqxdh::ASSOCIATED_DATA_LEN;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(N)?;
        bytes.iter().try_for_each(|b| t.serialize_element(b))?;
        t.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; N], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; N];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
                let mut out = [0u8; N];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(N, V)
    }
}

impl From<&Session> for SessionRecord {
    fn from(s: &Session) -> Self {
        Self {
            peer: s.peer.binding(),
            associated: s.associated,
            base_key: s.base_key,
            post_quantum: s.post_quantum,
            handshake: s.handshake,
            pending_prekey: s.pending_prekey.as_ref().map(|p| PendingPreKeyRecord {
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem: p.kem.clone(),
            }),
            created_at: s.created_at,
            ratchet: RatchetRecord::from(&s.ratchet),
        }
    }
}

impl SessionRecord {
    fn into_session(self) -> Session {
        // The binding was verified before the session was first stored; it is our own record.
        let b = self.peer;
        Session {
            ratchet: self.ratchet.into(),
            peer: PublicIdentity { user: b.user, dh_key: b.dh_key, signature: b.signature },
            associated: self.associated,
            base_key: self.base_key,
            post_quantum: self.post_quantum,
            handshake: self.handshake,
            pending_prekey: self.pending_prekey.map(|p| PendingPreKey {
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem: p.kem,
            }),
            created_at: self.created_at,
        }
    }
}

/// All sessions with one peer.
#[derive(Serialize, Deserialize)]
pub(crate) struct PeerSessionsRecord {
    current: Option<SessionRecord>,
    previous: Vec<SessionRecord>,
}

/// All sessions with one peer, version 1 (classical sessions).
#[derive(Deserialize)]
pub(crate) struct PeerSessionsRecordV1 {
    current: Option<SessionRecordV1>,
    previous: Vec<SessionRecordV1>,
}

impl From<PeerSessionsRecordV1> for PeerSessionsRecord {
    fn from(v1: PeerSessionsRecordV1) -> Self {
        Self {
            current: v1.current.map(SessionRecord::from),
            previous: v1.previous.into_iter().map(SessionRecord::from).collect(),
        }
    }
}

impl From<&PeerSessions> for PeerSessionsRecord {
    fn from(s: &PeerSessions) -> Self {
        Self {
            current: s.current.as_ref().map(SessionRecord::from),
            previous: s.previous.iter().map(SessionRecord::from).collect(),
        }
    }
}

impl From<PeerSessionsRecord> for PeerSessions {
    fn from(r: PeerSessionsRecord) -> Self {
        PeerSessions {
            current: r.current.map(SessionRecord::into_session),
            previous: r.previous.into_iter().map(SessionRecord::into_session).collect(),
        }
    }
}

/// A message of the history. The content is kept in its wire encoding (version byte first),
/// so history written by one build stays readable by every later one.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct MessageRecord {
    pub(crate) id: MessageId,
    /// The other party of a conversation; in a group, the message's author.
    pub(crate) peer: UserId,
    /// The group, for a group message (its history is the group's key range).
    pub(crate) group: Option<GroupId>,
    pub(crate) direction: Direction,
    /// Wire-encoded `Content`, or `None` once deleted. (`serde_bytes`: the same postcard bytes
    /// as a `Vec<u8>`, copied at once instead of one element at a time.)
    #[serde(with = "serde_bytes")]
    pub(crate) content: Option<Vec<u8>>,
    pub(crate) stored_at: UnixMillis,
    /// Stored in the message's [`MessageIndexRecord`], not here: it is the field rewritten
    /// most often, and rewriting a small index entry is far cheaper than the whole message.
    #[serde(skip, default = "status_from_index")]
    pub(crate) status: MessageStatus,
    pub(crate) reactions: Vec<MessageReaction>,
    pub(crate) edited_at: Option<UnixMillis>,
    pub(crate) sent_at: UnixMillis,
    pub(crate) seq: u64,
    /// Our group messages: who reported delivery or reading.
    pub(crate) receipts: Vec<MemberReceipt>,
}

impl MessageRecord {
    /// One of our messages, queued at `now` as number `seq` of its conversation (`peer` is
    /// the recipient, or ourselves in a group).
    pub(crate) fn queued(
        id: MessageId,
        peer: UserId,
        group: Option<GroupId>,
        content: Vec<u8>,
        now: UnixMillis,
        seq: u64,
    ) -> Self {
        Self {
            id,
            peer,
            group,
            direction: Direction::Outgoing,
            content: Some(content),
            stored_at: now,
            status: MessageStatus::Queued,
            reactions: Vec::new(),
            edited_at: None,
            sent_at: now,
            seq,
            receipts: Vec::new(),
        }
    }

    /// The key range of its conversation: the group's id, or the peer's.
    pub(crate) fn conversation(&self) -> [u8; 32] {
        conversation_of(&self.peer, self.group.as_ref())
    }
}

/// The conversation key of a message with `peer`, in `group` if any.
pub(crate) fn conversation_of(peer: &UserId, group: Option<&GroupId>) -> [u8; 32] {
    group.map_or(peer.0, |g| g.0)
}

/// Placeholder until the store fills in the status from the message's index entry.
fn status_from_index() -> MessageStatus {
    MessageStatus::Queued
}

/// Where a message lives (its conversation key) and its status.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub(crate) struct MessageIndexRecord {
    pub(crate) peer: UserId,
    pub(crate) group: Option<GroupId>,
    pub(crate) seq: u64,
    pub(crate) status: MessageStatus,
}

/// What an outbox entry carries, which decides what an acknowledgement means for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OutboxKind {
    /// A message of the history: its status is tracked.
    Message,
    /// A receipt, reaction, edit, delete or profile: delivered reliably, no status.
    Control,
    /// A copy of a sealed group message for a member the topic did not reach: delivered
    /// reliably (directly or through its relays), never re-encrypted.
    GroupCopy,
}

/// A message waiting for its recipient's acknowledgement.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct OutboxRecord {
    pub(crate) id: MessageId,
    pub(crate) to: UserId,
    pub(crate) seq: u64,
    pub(crate) kind: OutboxKind,
    /// Wire-encoded `Content`, kept so the message can be re-encrypted if the session resets;
    /// `None` for [`OutboxKind::Message`], whose content is in its message record.
    #[serde(with = "serde_bytes")]
    pub(crate) content: Option<Vec<u8>>,
    /// Wire-encoded `Envelope`, once encrypted (absent while waiting for a session).
    #[serde(with = "serde_bytes")]
    pub(crate) envelope: Option<Vec<u8>>,
    pub(crate) created_at: UnixMillis,
}

impl MessageRecord {
    /// The app-facing message.
    pub(crate) fn to_message(&self) -> Result<crate::model::Message, StoreError> {
        let body = match &self.content {
            Some(bytes) => Some(
                kith_protocol::decode::<kith_protocol::content::Content>(bytes)
                    .map_err(|_| StoreError::Corrupt { record: "message content" })?
                    .body,
            ),
            None => None,
        };
        Ok(crate::model::Message {
            id: self.id,
            peer: self.peer,
            group: self.group,
            direction: self.direction,
            sent_at: self.sent_at,
            stored_at: self.stored_at,
            body,
            status: self.status,
            reactions: self.reactions.clone(),
            edited_at: self.edited_at,
            seq: self.seq,
            receipts: self.receipts.clone(),
        })
    }
}

pub(crate) fn encode_session(session: &Session) -> Result<Vec<u8>, StoreError> {
    encode(&SessionRecord::from(session))
}

pub(crate) fn decode_session(bytes: &[u8]) -> Result<Session, StoreError> {
    decode::<SessionRecord>(bytes).map(SessionRecord::into_session)
}

#[cfg(test)]
mod tests {
    use kith_protocol::envelope::EnvelopeKind;
    use kith_protocol::prekey::{KemPreKeyKind, PreKeyBundle};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::prekeys::{KemPreKey, verify_bundle};

    /// The version-1 session shape, as nodes before PQXDH wrote it.
    #[derive(Serialize)]
    struct SessionV1<'a> {
        peer: IdentityBinding,
        #[serde(with = "serde_big_array")]
        associated: [u8; crate::pqxdh::ASSOCIATED_DATA_LEN],
        base_key: DhPublicKey,
        pending_prekey: Option<(u32, Option<u32>)>,
        created_at: UnixMillis,
        ratchet: &'a RatchetRecordV1,
    }

    /// The version-1 shape of a ratchet: no header keys.
    fn ratchet_v1(r: RatchetRecord) -> RatchetRecordV1 {
        RatchetRecordV1 {
            root: r.root,
            our_secret: r.our_secret,
            our_public: r.our_public,
            their: r.their,
            sending: r.sending,
            previous_sending_length: r.previous_sending_length,
            receiving: r.receiving.into_iter().map(|(k, c, i, _)| (k, c, i)).collect(),
            skipped: r.skipped,
        }
    }

    #[derive(Serialize)]
    struct PeerSessionsV1<'a> {
        current: Option<SessionV1<'a>>,
        previous: Vec<SessionV1<'a>>,
    }

    /// Sessions set up with classical X3DH before PQXDH still read from their version-1
    /// records: marked classical, and an unanswered one still sends its version-1 header (the
    /// responder accepts it only for the session it already has).
    #[test]
    fn version_1_session_records_still_read_as_classical_sessions() {
        let mut rng = ChaCha20Rng::seed_from_u64(40);
        let alice = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPreKey::generate(&bob, 1, 0, &mut rng);
        let kem = KemPreKey::generate(&bob, 2, KemPreKeyKind::LastResort, 0, &mut rng);
        let bundle = PreKeyBundle {
            identity: bob.binding(),
            signed_prekey: spk.public(),
            one_time_prekey: None,
            kem_prekey: kem.public(),
        };
        let verified = verify_bundle(&bundle, &bob.user_id(), 0).unwrap();
        let session = Session::initiate(&alice, &verified, 0, &mut rng).unwrap();
        let ratchet = ratchet_v1(RatchetRecord::from(&session.ratchet));
        let v1 = PeerSessionsV1 {
            current: Some(SessionV1 {
                peer: session.peer.binding(),
                associated: session.associated,
                base_key: session.base_key,
                pending_prekey: Some((1, None)),
                created_at: 5,
                ratchet: &ratchet,
            }),
            previous: Vec::new(),
        };
        let bytes = postcard::to_allocvec(&VersionedRef::V1(&v1)).unwrap();
        let mut read = PeerSessions::from(decode::<PeerSessionsRecord>(&bytes).unwrap());
        let old = read.current.as_mut().unwrap();
        assert!(!old.is_post_quantum());
        assert_eq!(old.created_at, 5);
        let kind = old.encrypt(&alice, &MessageId([1; 16]), b"x", &mut rng).unwrap();
        assert!(matches!(kind, EnvelopeKind::PreKey(_)), "{kind:?}");
        // Written back, it is a version-2 record that reads the same.
        let again = encode(&PeerSessionsRecord::from(&read)).unwrap();
        assert_eq!(again.first(), Some(&1), "the version-2 tag");
        let reread = PeerSessions::from(decode::<PeerSessionsRecord>(&again).unwrap());
        let reread = reread.current.unwrap();
        assert!(!reread.is_post_quantum());
        assert!(!reread.ratchet.encrypts_headers(), "a classical session has no header keys");
        // A version-2 tag on a record type still at version 1 is corrupt, not misread.
        let identity = encode(&IdentityRecord::new(&alice, 0)).unwrap();
        let mut retagged = identity.clone();
        retagged[0] = 1;
        assert!(decode::<IdentityRecord>(&retagged).is_err());
        assert!(decode::<IdentityRecord>(&identity).is_ok());
    }
}
