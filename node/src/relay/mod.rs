//! Store-and-forward: the mailbox service a relay runs (`kith relay`).
//!
//! A relay holds ciphertext envelopes for recipients that are offline and hands them over when
//! they come back:
//!
//! ```text
//!  sender --Deposit[envelopes]--> relay: per envelope: size, sender rate, recipient quota,
//!                                        relay capacity -> stored (flushed) or refused(reason)
//!                                   |-- recipient connected? --Push--> recipient --Received-->
//!  recipient --Fetch{me}--> relay --Batch (oldest first)--> recipient --Ack{me, ids}--> deleted
//! ```
//!
//! Only the recipient, authenticated by its connection's PeerId, may fetch or acknowledge its
//! mailbox; anyone else is refused with [`MailboxRefusal::NotRecipient`]. Every answer that
//! says "stored" or "deleted" is sent after the relay's database is flushed. Envelopes older
//! than the TTL are purged unread; nobody is told they were delivered. A relay also serves the
//! prekey bundles its users upload, each one-time prekey at most once.

pub(crate) mod blobs;
pub(crate) mod metrics;
pub(crate) mod store;

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use kith_core::identity::user_id_of;
use kith_core::prekeys::{verify_bundle, verify_kem_prekey};
use kith_core::store::SideStore;
use kith_protocol::envelope::Envelope;
use kith_protocol::limits::{MAX_ENVELOPE_BYTES, MAX_MAILBOX_BATCH, MAX_MAILBOX_FRAME_BYTES};
use kith_protocol::mailbox::{
    AccessVerifier, DepositResult, MailboxRefusal, MailboxResponse, SealedDeposit, SealedEnvelope,
};
use kith_protocol::media::{MediaRefusal, MediaResponse};
use kith_protocol::prekey::{
    KemPreKeyKind, PreKeyBundle, PreKeyRefusal, PreKeyResponse, PreKeyUpload,
};
use kith_protocol::{ChunkHash, MessageId, UnixMillis, UserId};
use libp2p::PeerId;

pub use metrics::{
    CONNECTION_TIMEOUT as METRICS_CONNECTION_TIMEOUT, MAX_REQUEST_HEAD,
    REQUEST_TIMEOUT as METRICS_REQUEST_TIMEOUT,
};
pub use store::{MAX_RELAY_KEM_ONE_TIME_PREKEYS, MAX_RELAY_ONE_TIME_PREKEYS, RelayStoreError};

use crate::limiter::RateLimiter;
use blobs::{Admit, BlobStore};
use metrics::RelayMetrics;
use store::{Deposit, RelayStore};

/// Default time an envelope waits in a mailbox before it is purged unread.
pub const DEFAULT_TTL: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// Default most envelopes waiting for one recipient.
pub const DEFAULT_MAX_MESSAGES_PER_RECIPIENT: u64 = 10_000;
/// Default most envelope bytes waiting for one recipient.
pub const DEFAULT_MAX_BYTES_PER_RECIPIENT: u64 = 100 * 1024 * 1024;
/// Default most envelope bytes a relay holds in all.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Default deposits per sender: envelopes per second on average.
pub const DEFAULT_SENDER_RATE: f64 = 50.0;
/// Default deposits per sender: burst (a day's backlog of a chatty contact).
pub const DEFAULT_SENDER_BURST: f64 = 1_000.0;
/// Default deposits without an access key per recipient (strangers' first messages): per
/// second on average (ten an hour).
pub const DEFAULT_STRANGER_RATE: f64 = 10.0 / 3600.0;
/// Default deposits without an access key per recipient: burst.
pub const DEFAULT_STRANGER_BURST: f64 = 20.0;
/// Default most users whose prekeys a relay stores.
pub const DEFAULT_MAX_PREKEY_USERS: usize = 100_000;
/// Expired envelopes deleted per purge pass (bounds the work of one driver turn).
pub const PURGE_BATCH: usize = 10_000;
/// Default interval between purges of expired envelopes.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Uploads of prekeys per user: per second on average, and burst.
pub const PREKEY_UPLOAD_RATE: (f64, f64) = (1.0 / 60.0, 10.0);
/// Default most attachment bytes held for one recipient (a maximum-size attachment fits).
pub const DEFAULT_MAX_BLOB_BYTES_PER_RECIPIENT: u64 = 4 * 1024 * 1024 * 1024;
/// Default most attachment bytes a relay holds in all.
pub const DEFAULT_MAX_BLOB_TOTAL_BYTES: u64 = 50 * 1024 * 1024 * 1024;
/// Default most circuit reservations a relay holds (one per user behind NAT it serves).
pub const DEFAULT_MAX_RESERVATIONS: usize = 1_024;
/// Default most reservations one peer holds.
pub const DEFAULT_MAX_RESERVATIONS_PER_PEER: usize = 4;
/// Default time a reservation lasts before the user renews it.
pub const DEFAULT_RESERVATION_DURATION: Duration = Duration::from_secs(60 * 60);
/// Default most relayed connections at once.
pub const DEFAULT_MAX_CIRCUITS: usize = 256;
/// Default most relayed connections to or from one peer.
pub const DEFAULT_MAX_CIRCUITS_PER_PEER: usize = 8;
/// Default longest life of a relayed connection (it is redialed, or upgraded to a direct one
/// long before).
pub const DEFAULT_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
/// Default most bytes one relayed connection carries each way: text, receipts, typing and
/// presence for a long chat, never attachments (those go through the blob store).
pub const DEFAULT_MAX_CIRCUIT_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes of a mailbox frame besides its envelopes (variant, counts, `remaining`).
const FRAME_OVERHEAD: usize = 64;

/// How a relay is run: its operator's settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Most envelopes waiting for one recipient.
    pub max_messages_per_recipient: u64,
    /// Most envelope bytes waiting for one recipient.
    pub max_bytes_per_recipient: u64,
    /// Most envelope bytes the relay holds in all (its disk budget).
    pub max_total_bytes: u64,
    /// Largest envelope accepted (at most the protocol's [`MAX_ENVELOPE_BYTES`]).
    pub max_envelope_bytes: usize,
    /// Deposits per sender: envelopes per second on average.
    pub sender_rate: f64,
    /// Deposits per sender: burst.
    pub sender_burst: f64,
    /// Sealed deposits without an access key, per recipient: per second on average.
    pub stranger_rate: f64,
    /// Sealed deposits without an access key, per recipient: burst.
    pub stranger_burst: f64,
    /// How long an envelope waits before it is purged unread.
    pub ttl: Duration,
    /// Most users whose prekeys the relay stores.
    pub max_prekey_users: usize,
    /// How often expired envelopes are purged.
    pub purge_interval: Duration,
    /// Where to serve Prometheus metrics (`None`: not served).
    pub metrics: Option<std::net::SocketAddr>,
    /// Most attachment bytes held for one recipient.
    pub max_blob_bytes_per_recipient: u64,
    /// Most attachment bytes held in all (the blob store's disk budget).
    pub max_blob_total_bytes: u64,
    /// Connections relayed for users behind NAT (libp2p circuit relay v2).
    pub circuits: CircuitLimits,
}

/// Relayed-connection attempts one peer may make at once (four times a node's live
/// contacts: a start and a reservation, twice over).
pub const CIRCUIT_BURST_PER_PEER: NonZeroU32 = NonZeroU32::MIN.saturating_add(255);
/// Time for one more relayed-connection attempt of a peer to be allowed.
pub const CIRCUIT_REFILL_PER_PEER: Duration = Duration::from_secs(10);
/// Reservations one peer may ask for at once.
pub const RESERVATION_BURST_PER_PEER: NonZeroU32 = NonZeroU32::MIN.saturating_add(59);
/// Time for one more reservation of a peer to be allowed.
pub const RESERVATION_REFILL_PER_PEER: Duration = Duration::from_secs(60);

/// What a relay allows of libp2p circuit relay v2: the reservations users behind NAT hold on
/// it and the connections it relays to them until they are upgraded to direct ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitLimits {
    /// Most reservations in all.
    pub max_reservations: usize,
    /// Most reservations one peer holds.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before it must be renewed.
    pub reservation_duration: Duration,
    /// Most relayed connections at once (0: none; the relay still holds mail and files).
    pub max_circuits: usize,
    /// Most relayed connections per peer.
    pub max_circuits_per_peer: usize,
    /// Longest life of one relayed connection.
    pub max_circuit_duration: Duration,
    /// Most bytes one relayed connection carries each way.
    pub max_circuit_bytes: u64,
}

impl Default for CircuitLimits {
    fn default() -> Self {
        Self {
            max_reservations: DEFAULT_MAX_RESERVATIONS,
            max_reservations_per_peer: DEFAULT_MAX_RESERVATIONS_PER_PEER,
            reservation_duration: DEFAULT_RESERVATION_DURATION,
            max_circuits: DEFAULT_MAX_CIRCUITS,
            max_circuits_per_peer: DEFAULT_MAX_CIRCUITS_PER_PEER,
            max_circuit_duration: DEFAULT_MAX_CIRCUIT_DURATION,
            max_circuit_bytes: DEFAULT_MAX_CIRCUIT_BYTES,
        }
    }
}

impl CircuitLimits {
    /// libp2p's relay settings for these limits, with rate limits sized for Kith.
    ///
    /// libp2p's own allow a peer a burst of 30 relayed-connection attempts, then one every 2
    /// minutes; a Kith node dials up to [`crate::defaults::MAX_LIVE_CONTACTS`] contacts through
    /// their relays when it starts and again once its own reservation is accepted, so a user
    /// who restarted twice was refused by their contacts' relay for the next hour (found by
    /// the reach bench's repeated starts). Here a peer gets a burst of
    /// [`CIRCUIT_BURST_PER_PEER`] and one more every [`CIRCUIT_REFILL_PER_PEER`], an address
    /// (many users behind one carrier-grade NAT) four times that; reservations a burst of
    /// [`RESERVATION_BURST_PER_PEER`], one more every [`RESERVATION_REFILL_PER_PEER`]. The
    /// limits on concurrent circuits, their bytes and duration bound what a burst costs.
    pub(crate) fn libp2p(&self) -> libp2p::relay::Config {
        let per_ip = |n: NonZeroU32| n.saturating_mul(NonZeroU32::MIN.saturating_add(3));
        libp2p::relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            reservation_rate_limiters: Vec::new(),
            circuit_src_rate_limiters: Vec::new(),
        }
        .reservation_rate_per_peer(RESERVATION_BURST_PER_PEER, RESERVATION_REFILL_PER_PEER)
        .reservation_rate_per_ip(
            per_ip(RESERVATION_BURST_PER_PEER),
            RESERVATION_REFILL_PER_PEER / 4,
        )
        .circuit_src_per_peer(CIRCUIT_BURST_PER_PEER, CIRCUIT_REFILL_PER_PEER)
        .circuit_src_per_ip(per_ip(CIRCUIT_BURST_PER_PEER), CIRCUIT_REFILL_PER_PEER / 4)
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_messages_per_recipient: DEFAULT_MAX_MESSAGES_PER_RECIPIENT,
            max_bytes_per_recipient: DEFAULT_MAX_BYTES_PER_RECIPIENT,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_envelope_bytes: MAX_ENVELOPE_BYTES,
            sender_rate: DEFAULT_SENDER_RATE,
            sender_burst: DEFAULT_SENDER_BURST,
            stranger_rate: DEFAULT_STRANGER_RATE,
            stranger_burst: DEFAULT_STRANGER_BURST,
            ttl: DEFAULT_TTL,
            max_prekey_users: DEFAULT_MAX_PREKEY_USERS,
            purge_interval: DEFAULT_PURGE_INTERVAL,
            metrics: None,
            max_blob_bytes_per_recipient: DEFAULT_MAX_BLOB_BYTES_PER_RECIPIENT,
            max_blob_total_bytes: DEFAULT_MAX_BLOB_TOTAL_BYTES,
            circuits: CircuitLimits::default(),
        }
    }
}

/// What a relay holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayUsage {
    /// Envelopes in mailboxes.
    pub envelopes: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Users whose prekeys the relay serves.
    pub prekey_users: usize,
    /// Attachment chunk bytes held for recipients.
    pub blob_bytes: u64,
    /// Attachment chunks served to their recipients since the relay started.
    pub blobs_served: u64,
    /// Mailbox fetches answered since the relay started.
    pub fetches_answered: u64,
    /// The relay database's size on disk.
    pub disk_bytes: u64,
    /// Access-key verifiers registered, over all recipients (sealed sender).
    pub access_verifiers: usize,
}

/// New envelopes to push to a recipient that is connected.
pub(crate) struct Push {
    pub(crate) recipient: UserId,
    pub(crate) envelopes: Vec<Envelope>,
}

/// New sealed envelopes to push to a recipient that is connected.
pub(crate) struct SealedPush {
    pub(crate) recipient: UserId,
    pub(crate) envelopes: Vec<SealedEnvelope>,
}

/// The mailbox service: the relay's store and its rules.
pub(crate) struct RelayService {
    config: RelayConfig,
    store: RelayStore,
    /// The profile's database directory (its size is reported to the operator).
    db_dir: std::path::PathBuf,
    blobs: BlobStore,
    limiter: RateLimiter,
    /// Sealed deposits per access key (per contact of a recipient).
    contact_limiter: RateLimiter<AccessVerifier>,
    /// Sealed deposits without an access key, per recipient.
    stranger_limiter: RateLimiter<UserId>,
    upload_limiter: RateLimiter,
    pub(crate) metrics: RelayMetrics,
    next_purge: Instant,
}

impl RelayService {
    /// Opens the relay's records in the profile's database (at `db_dir`, through `side`) and
    /// its blob store in `blob_dir`.
    pub(crate) fn open(
        side: SideStore,
        db_dir: &Path,
        blob_dir: &Path,
        config: RelayConfig,
        now: Instant,
    ) -> Result<Self, RelayStoreError> {
        let store = RelayStore::open(side)?;
        let blobs = BlobStore::open(blob_dir, store.keyspace(b'B'))?;
        let metrics = RelayMetrics::new();
        let total = store.total();
        metrics.set_stored(total.messages, total.bytes);
        metrics.prekey_users.set(i64::try_from(store.prekey_users()).unwrap_or(i64::MAX));
        Ok(Self {
            limiter: RateLimiter::new(config.sender_rate, config.sender_burst),
            contact_limiter: RateLimiter::new(config.sender_rate, config.sender_burst),
            stranger_limiter: RateLimiter::new(config.stranger_rate, config.stranger_burst),
            upload_limiter: RateLimiter::new(PREKEY_UPLOAD_RATE.0, PREKEY_UPLOAD_RATE.1),
            config,
            store,
            db_dir: db_dir.to_owned(),
            blobs,
            metrics,
            next_purge: now,
        })
    }

    fn refuse(&self, reason: MailboxRefusal) -> Option<MailboxRefusal> {
        self.metrics.reject(reason);
        Some(reason)
    }

    fn expired_before(&self, now: UnixMillis) -> UnixMillis {
        now.saturating_sub(u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// Stores what it may of a deposit from `sender`; the results are true once flushed.
    pub(crate) fn deposit(
        &mut self,
        sender: PeerId,
        envelopes: Vec<Envelope>,
        now: UnixMillis,
        instant: Instant,
    ) -> (Vec<DepositResult>, Vec<Push>) {
        let mut results = Vec::with_capacity(envelopes.len());
        let mut pushes: Vec<Push> = Vec::new();
        for envelope in envelopes {
            let id = envelope.id;
            let refused = match kith_protocol::encode(&envelope) {
                Err(_) => self.refuse(MailboxRefusal::TooLarge),
                Ok(bytes) if bytes.len() > self.config.max_envelope_bytes => {
                    self.refuse(MailboxRefusal::TooLarge)
                }
                Ok(_) if !self.limiter.allow(sender, instant) => {
                    self.refuse(MailboxRefusal::RateLimited)
                }
                Ok(bytes) => match self.store_one(&envelope.recipient, &id, &bytes, now) {
                    Ok(Deposit::Stored) => {
                        self.metrics.deposits.inc();
                        match pushes.iter_mut().find(|p| p.recipient == envelope.recipient) {
                            Some(push) => push.envelopes.push(envelope),
                            None => pushes.push(Push {
                                recipient: envelope.recipient,
                                envelopes: vec![envelope],
                            }),
                        }
                        None
                    }
                    Ok(Deposit::AlreadyHeld) => None,
                    Err(QuotaRefusal(reason)) => self.refuse(reason),
                },
            };
            results.push(DepositResult { id, refused });
        }
        self.update_gauges();
        let stored: usize = pushes.iter().map(|p| p.envelopes.len()).sum();
        log_deposit(&format!("{stored} envelope(s) from {}", crate::short(&sender)), &results);
        (results, pushes)
    }

    /// Stores what it may of a sealed deposit (made over a throw-away connection: nothing
    /// here knows the sender). A wrong access key is refused; a deposit with none (or for a
    /// recipient that registered no keys here) counts against its recipient's stranger budget;
    /// each contact's key has the per-sender rate.
    /// The access keys are checked, never stored. The results are true once flushed.
    pub(crate) fn sealed_deposit(
        &mut self,
        deposits: Vec<SealedDeposit>,
        now: UnixMillis,
        instant: Instant,
    ) -> (Vec<DepositResult>, Vec<SealedPush>) {
        let mut results = Vec::with_capacity(deposits.len());
        let mut pushes: Vec<SealedPush> = Vec::new();
        for SealedDeposit { access, envelope } in deposits {
            let id = envelope.id;
            let recipient = envelope.recipient;
            // A recipient that registered no keys here (this is not one of its home relays,
            // just one near it in the DHT) cannot be checked: every deposit for it is a
            // stranger's.
            let registered = self.store.has_verifiers(&recipient);
            let verifier = access
                .filter(|_| registered)
                .map(|k| kith_core::sealed_sender::access_verifier(&k));
            let admitted = match verifier {
                Some(verifier) if !self.store.has_verifier(&recipient, &verifier) => {
                    Err(MailboxRefusal::AccessDenied)
                }
                Some(verifier) if !self.contact_limiter.allow(verifier, instant) => {
                    Err(MailboxRefusal::RateLimited)
                }
                Some(_) => Ok(()),
                None if !self.stranger_limiter.allow(recipient, instant) => {
                    Err(MailboxRefusal::StrangerLimit)
                }
                None => Ok(()),
            };
            let refused = match admitted.map(|()| kith_protocol::encode(&envelope)) {
                Err(reason) => self.refuse(reason),
                Ok(Err(_)) => self.refuse(MailboxRefusal::TooLarge),
                Ok(Ok(bytes)) if bytes.len() > self.config.max_envelope_bytes + 1024 => {
                    self.refuse(MailboxRefusal::TooLarge)
                }
                Ok(Ok(bytes)) => {
                    let mut stored = Vec::with_capacity(1 + bytes.len());
                    stored.push(store::SEALED);
                    stored.extend_from_slice(&bytes);
                    match self.store_one(&recipient, &id, &stored, now) {
                        Ok(Deposit::Stored) => {
                            self.metrics.deposits.inc();
                            match pushes.iter_mut().find(|p| p.recipient == recipient) {
                                Some(push) => push.envelopes.push(envelope),
                                None => {
                                    pushes.push(SealedPush { recipient, envelopes: vec![envelope] })
                                }
                            }
                            None
                        }
                        Ok(Deposit::AlreadyHeld) => None,
                        Err(QuotaRefusal(reason)) => self.refuse(reason),
                    }
                }
            };
            results.push(DepositResult { id, refused });
        }
        self.update_gauges();
        let stored: usize = pushes.iter().map(|p| p.envelopes.len()).sum();
        // No sender to name: the connection's PeerId is a throw-away one.
        log_deposit(&format!("{stored} sealed envelope(s)"), &results);
        (results, pushes)
    }

    /// How the log names `peer`: its short id if it is one of this relay's users (it has
    /// mail, prekeys or access keys here), else "a peer": the relay's log does not record
    /// who else connected (a contact dialing a user through it, a sealed deposit's
    /// throw-away identity).
    pub(crate) fn name_in_log(&self, peer: &PeerId) -> String {
        let user = user_id_of(peer).ok();
        let serves = user.is_some_and(|u| {
            self.store.has_verifiers(&u)
                || self.store.usage(&u).messages > 0
                || self.store.has_prekeys(&u)
        });
        if serves { crate::short(peer) } else { "a peer".to_owned() }
    }

    /// Access-key verifiers registered, over all recipients.
    pub(crate) fn access_verifiers(&self) -> usize {
        self.store.verifier_count()
    }

    /// Replaces the access verifiers of `recipient`'s mailbox, if `peer` is the recipient;
    /// the answer is true once flushed.
    pub(crate) fn set_access(
        &mut self,
        peer: &PeerId,
        recipient: &UserId,
        verifiers: &[AccessVerifier],
    ) -> MailboxResponse {
        if !is_peer(peer, recipient) {
            self.metrics.reject(MailboxRefusal::NotRecipient);
            return MailboxResponse::Refused(MailboxRefusal::NotRecipient);
        }
        // As many recipients may register keys as may store prekeys: identities are free to
        // make, so the registrations are bounded like the users a relay serves.
        if !self.store.has_verifiers(recipient)
            && self.store.verifier_recipients() >= self.config.max_prekey_users
        {
            self.metrics.reject(MailboxRefusal::QuotaExceeded);
            return MailboxResponse::Refused(MailboxRefusal::QuotaExceeded);
        }
        self.store.set_verifiers(recipient, verifiers);
        let count = verifiers.iter().collect::<std::collections::HashSet<_>>().len();
        MailboxResponse::AccessSet { verifiers: u32::try_from(count).unwrap_or(u32::MAX) }
    }

    /// Checks quotas and stores one envelope.
    fn store_one(
        &mut self,
        recipient: &UserId,
        id: &MessageId,
        bytes: &[u8],
        now: UnixMillis,
    ) -> Result<Deposit, QuotaRefusal> {
        let unavailable = |e: RelayStoreError| {
            tracing::error!("{e}");
            QuotaRefusal(MailboxRefusal::Unavailable)
        };
        if self.store.holds(recipient, id).map_err(unavailable)? {
            return Ok(Deposit::AlreadyHeld);
        }
        let size = bytes.len() as u64;
        let usage = self.store.usage(recipient);
        if usage.messages + 1 > self.config.max_messages_per_recipient
            || usage.bytes + size > self.config.max_bytes_per_recipient
        {
            return Err(QuotaRefusal(MailboxRefusal::QuotaExceeded));
        }
        if self.store.total().bytes + size > self.config.max_total_bytes {
            return Err(QuotaRefusal(MailboxRefusal::Unavailable));
        }
        self.store.deposit(recipient, id, bytes, now).map_err(unavailable)
    }

    /// Answers a fetch by `peer` for `recipient`'s mailbox.
    pub(crate) fn fetch(
        &mut self,
        peer: &PeerId,
        recipient: &UserId,
        limit: u16,
        now: UnixMillis,
    ) -> MailboxResponse {
        if !is_peer(peer, recipient) {
            self.metrics.reject(MailboxRefusal::NotRecipient);
            return MailboxResponse::Refused(MailboxRefusal::NotRecipient);
        }
        self.metrics.fetches.inc();
        let limit = usize::from(limit).min(MAX_MAILBOX_BATCH);
        let max_bytes = MAX_MAILBOX_FRAME_BYTES - FRAME_OVERHEAD;
        match self.store.fetch(recipient, limit, max_bytes, self.expired_before(now)) {
            Ok((mail, remaining)) => {
                // Plain and sealed envelopes go in separate batches: this one stops where the
                // kind of the oldest changes (the rest count as remaining).
                let sealed = mail.first().is_some_and(|m| m.bytes.first() == Some(&store::SEALED));
                let run = mail
                    .iter()
                    .take_while(|m| (m.bytes.first() == Some(&store::SEALED)) == sealed)
                    .count();
                let remaining = remaining + (mail.len() - run) as u64;
                let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
                let run = mail.get(..run).unwrap_or_default();
                if sealed {
                    let envelopes = run
                        .iter()
                        .filter_map(|m| kith_protocol::decode(m.bytes.get(1..)?).ok())
                        .collect();
                    MailboxResponse::SealedBatch { envelopes, remaining }
                } else {
                    let envelopes =
                        run.iter().filter_map(|m| kith_protocol::decode(&m.bytes).ok()).collect();
                    MailboxResponse::Batch { envelopes, remaining }
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                self.metrics.reject(MailboxRefusal::Unavailable);
                MailboxResponse::Refused(MailboxRefusal::Unavailable)
            }
        }
    }

    /// Deletes envelopes `recipient` holds durably (after an ack or a push answer by `peer`);
    /// the answer is true once flushed.
    pub(crate) fn ack(
        &mut self,
        peer: &PeerId,
        recipient: &UserId,
        ids: &[MessageId],
    ) -> MailboxResponse {
        if !is_peer(peer, recipient) {
            self.metrics.reject(MailboxRefusal::NotRecipient);
            return MailboxResponse::Refused(MailboxRefusal::NotRecipient);
        }
        match self.store.remove(recipient, ids) {
            Ok(removed) => {
                self.metrics.delivered.inc_by(u64::from(removed));
                self.update_gauges();
                MailboxResponse::Acked { removed }
            }
            Err(e) => {
                tracing::error!("{e}");
                self.metrics.reject(MailboxRefusal::Unavailable);
                MailboxResponse::Refused(MailboxRefusal::Unavailable)
            }
        }
    }

    /// Stores prekeys uploaded by `peer` (who must be the identity they belong to).
    pub(crate) fn upload_prekeys(
        &mut self,
        peer: &PeerId,
        upload: PreKeyUpload,
        now: UnixMillis,
        instant: Instant,
    ) -> PreKeyResponse {
        let user = upload.identity.user;
        if !is_peer(peer, &user) {
            return PreKeyResponse::Refused(PreKeyRefusal::Unauthorized);
        }
        // Rate-limited before the signature checks, which cost up to a hundred verifications.
        if !self.upload_limiter.allow(*peer, instant) {
            return PreKeyResponse::Refused(PreKeyRefusal::RateLimited);
        }
        let bundle = PreKeyBundle {
            identity: upload.identity,
            signed_prekey: upload.signed_prekey,
            one_time_prekey: None,
            kem_prekey: upload.kem_last_resort.clone(),
        };
        // Every KEM prekey is signed by the uploader and of the kind it is uploaded as: a relay
        // never hands out a key its owner did not make.
        let valid = verify_bundle(&bundle, &user, now).is_ok()
            && upload.kem_last_resort.kind == KemPreKeyKind::LastResort
            && upload.kem_one_time_prekeys.iter().all(|k| {
                k.kind == KemPreKeyKind::OneTime && verify_kem_prekey(&user, k, now).is_ok()
            });
        if !valid {
            return PreKeyResponse::Refused(PreKeyRefusal::Unauthorized);
        }
        let known = self.store.stored_prekeys(&user).ok().flatten().is_some();
        if !known && self.store.prekey_users() >= self.config.max_prekey_users {
            return PreKeyResponse::Refused(PreKeyRefusal::QuotaExceeded);
        }
        match self.store.put_prekeys(upload) {
            Ok(one_time_prekeys) => {
                self.metrics
                    .prekey_users
                    .set(i64::try_from(self.store.prekey_users()).unwrap_or(i64::MAX));
                PreKeyResponse::Uploaded { one_time_prekeys }
            }
            Err(e) => {
                tracing::error!("{e}");
                PreKeyResponse::Refused(PreKeyRefusal::QuotaExceeded)
            }
        }
    }

    /// A bundle for `user` from uploaded prekeys (its one-time prekey is used up), true once
    /// flushed.
    pub(crate) fn bundle(&mut self, user: &UserId) -> PreKeyResponse {
        match self.store.take_bundle(user) {
            Ok(Some(bundle)) => PreKeyResponse::Bundle(Box::new(bundle)),
            Ok(None) => PreKeyResponse::NotFound,
            Err(e) => {
                tracing::error!("{e}");
                PreKeyResponse::NotFound
            }
        }
    }

    /// Purges expired envelopes if a purge is due.
    pub(crate) fn maintain(&mut self, now: UnixMillis, instant: Instant) {
        if instant < self.next_purge {
            return;
        }
        let cutoff = self.expired_before(now);
        let purged = self.store.purge_expired(cutoff, PURGE_BATCH).and_then(|envelopes| {
            let chunks = self.blobs.purge_expired(cutoff, PURGE_BATCH)?;
            Ok((envelopes, chunks))
        });
        match purged {
            Ok((envelopes, chunks)) => {
                self.metrics.expired.inc_by(envelopes as u64);
                // A full batch: more may be waiting, purge again next turn.
                self.next_purge = if envelopes.max(chunks) >= PURGE_BATCH {
                    instant
                } else {
                    instant + self.config.purge_interval
                };
                if chunks > 0 {
                    tracing::info!("purged {chunks} expired attachment chunks");
                }
                if envelopes > 0 {
                    tracing::info!("purged {envelopes} expired envelopes");
                }
                if envelopes + chunks > 0 {
                    self.update_gauges();
                }
            }
            Err(e) => {
                tracing::error!("purge: {e}");
                self.next_purge = instant + self.config.purge_interval;
            }
        }
    }

    /// When [`Self::maintain`] next has work.
    pub(crate) fn next_deadline(&self) -> Instant {
        self.next_purge
    }

    /// Makes everything written so far durable (the driver flushes the whole database
    /// through the engine; the service's own tests flush here).
    #[cfg(test)]
    pub(crate) fn flush(&mut self) -> Result<(), RelayStoreError> {
        self.store.flush()
    }

    /// Envelopes and envelope bytes held, and users whose prekeys are served.
    pub(crate) fn stored(&self) -> (u64, u64, usize) {
        let total = self.store.total();
        (total.messages, total.bytes, self.store.prekey_users())
    }

    /// Bytes the profile's database (the relay's records and the node's own) occupies on
    /// disk.
    pub(crate) fn size_on_disk(&self) -> std::io::Result<u64> {
        dir_size(&self.db_dir)
    }

    fn update_gauges(&self) {
        let total = self.store.total();
        self.metrics.set_stored(total.messages, total.bytes);
        self.metrics.stored_blob_bytes.set(i64::try_from(self.blobs.total()).unwrap_or(i64::MAX));
    }

    /// Decides an upload of a chunk by `sender` for `recipient`: refused, already held, or to
    /// be written at the returned path (its bytes reserved until [`Self::blob_written`]).
    pub(crate) fn blob_admit(
        &mut self,
        sender: PeerId,
        recipient: &UserId,
        hash: &ChunkHash,
        size: u64,
        instant: Instant,
    ) -> Result<Option<std::path::PathBuf>, MediaRefusal> {
        if !self.limiter.allow(sender, instant) {
            return Err(MediaRefusal::RateLimited);
        }
        let admit = self.blobs.admit(
            recipient,
            hash,
            size,
            self.config.max_blob_bytes_per_recipient,
            self.config.max_blob_total_bytes,
        )?;
        Ok((admit == Admit::Write).then(|| self.blobs.path(recipient, hash)))
    }

    /// A chunk admitted by [`Self::blob_admit`] was written (or not); the answer is true once
    /// flushed.
    pub(crate) fn blob_written(
        &mut self,
        recipient: &UserId,
        hash: &ChunkHash,
        size: u64,
        written: Result<(), MediaRefusal>,
        now: UnixMillis,
    ) -> MediaResponse {
        let result = written.and_then(|()| {
            self.blobs.commit(recipient, hash, size, now).map_err(|e| {
                tracing::error!("{e}");
                MediaRefusal::Unavailable
            })
        });
        match result {
            Ok(()) => {
                self.metrics.blob_uploads.inc();
                self.update_gauges();
                MediaResponse::Stored
            }
            Err(reason) => {
                self.blobs.abort(recipient, size);
                MediaResponse::Refused(reason)
            }
        }
    }

    /// The blob lookup the fetch server answers from (only a chunk's recipient gets it).
    pub(crate) fn blob_index(&self) -> crate::media::fetch::BlobIndex {
        self.blobs.index()
    }

    /// Deletes chunks `peer` holds here; the answer is true once flushed.
    pub(crate) fn blob_delete(&mut self, peer: &PeerId, hashes: &[ChunkHash]) -> MediaResponse {
        let Ok(recipient) = user_id_of(peer) else {
            return MediaResponse::Refused(MediaRefusal::NotRecipient);
        };
        match self.blobs.remove(&recipient, hashes) {
            Ok(removed) => {
                self.update_gauges();
                MediaResponse::Deleted { removed }
            }
            Err(e) => {
                tracing::error!("{e}");
                MediaResponse::Refused(MediaRefusal::Unavailable)
            }
        }
    }

    /// Attachment bytes held in all.
    pub(crate) fn blob_bytes(&self) -> u64 {
        self.blobs.total()
    }
}

/// The bytes of the files in `dir` and below.
/// Logs what a deposit stored (`held`) and what it refused, with the reasons.
fn log_deposit(held: &str, results: &[DepositResult]) {
    let refused: Vec<String> =
        results.iter().filter_map(|r| r.refused.map(|why| format!("{why:?}"))).collect();
    if refused.is_empty() {
        tracing::info!("held {held}");
    } else {
        tracing::info!("held {held}, refused {}: {}", refused.len(), refused.join(", "));
    }
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// A refusal decided while storing.
struct QuotaRefusal(MailboxRefusal);

/// Whether the connection's `peer` is `user`.
fn is_peer(peer: &PeerId, user: &UserId) -> bool {
    user_id_of(peer).is_ok_and(|u| &u == user)
}

#[cfg(test)]
mod tests;
