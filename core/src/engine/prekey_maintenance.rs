//! Periodic upkeep: signed prekey and last-resort KEM prekey rotation, one-time prekey
//! top-up (classical and KEM), pruning of seen ids and of undeliverable outbox entries; and
//! serving our PQXDH bundle (each one-time prekey is handed out at most once, and only after
//! that is durable).

use kith_protocol::UnixMillis;
use kith_protocol::prekey::{
    KemPreKeyKind, KemPreKeyPublic, PreKeyBundle, PreKeyResponse, PreKeyUpload,
};

use super::{Engine, Output, Reply, ReplyToken};
use crate::model::DeliveryFailure;
use crate::prekeys::{
    KEM_ONE_TIME_PREKEY_BATCH, KEM_ONE_TIME_PREKEY_LOW_WATER, KemPreKey, MAX_KEM_ONE_TIME_PREKEYS,
    MAX_ONE_TIME_PREKEYS, ONE_TIME_PREKEY_BATCH, ONE_TIME_PREKEY_LOW_WATER, OneTimePreKey,
    SIGNED_PREKEY_GRACE_MS, SIGNED_PREKEY_ROTATION_MS, SignedPreKey,
};
use crate::store::records::{KemPreKeyRecord, OneTimePreKeyRecord};
use crate::store::{Batch, StoreError};

/// How often upkeep runs.
pub const MAINTENANCE_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// How long a received envelope id is remembered for deduplication. Longer than a signed
/// prekey lives (rotation + grace), so a replayed initial message is recognised for as long as
/// its prekeys could still accept it.
pub const SEEN_RETENTION_MS: u64 = 60 * 24 * 60 * 60 * 1000;

/// Seen ids scanned for old ones per upkeep run (bounds the work of one run).
const SEEN_PRUNE_BATCH: usize = 10_000;

/// A one-time prekey handed out but never used this long ago is deleted.
const HANDED_OUT_MAX_AGE_MS: u64 = SEEN_RETENTION_MS;

impl<R: rand_core::CryptoRng> Engine<R> {
    pub(super) fn maintain(&mut self, now: UnixMillis) -> Result<(), StoreError> {
        self.next_maintenance = self.after(MAINTENANCE_INTERVAL_MS);
        let mut batch = Batch::new();

        // Signed prekey: create or rotate; delete superseded ones after the grace period.
        let current = match self.store.current_signed_prekey_id()? {
            Some(id) => self.store.signed_prekey(id)?,
            None => None,
        };
        let current_id = match current {
            Some(spk) if now.saturating_sub(spk.created_at()) < SIGNED_PREKEY_ROTATION_MS => {
                spk.id()
            }
            _ => {
                let id = self.store.next_signed_prekey_id()?;
                let spk = SignedPreKey::generate(&self.identity, id, now, &mut self.rng);
                batch.put_signed_prekey(&spk, true);
                id
            }
        };
        for spk in self.store.signed_prekeys()? {
            if spk.id() != current_id
                && now.saturating_sub(spk.created_at())
                    > SIGNED_PREKEY_ROTATION_MS + SIGNED_PREKEY_GRACE_MS
            {
                batch.delete_signed_prekey(spk.id());
            }
        }

        // One-time prekeys: forget stale handed-out ones, top up when low, respect the cap.
        let all = self.store.one_time_prekeys(usize::MAX)?;
        let mut kept = Vec::with_capacity(all.len());
        for record in all {
            match record.handed_out_at {
                Some(at) if now.saturating_sub(at) > HANDED_OUT_MAX_AGE_MS => {
                    batch.delete_one_time_prekey(record.to_key().id())
                }
                _ => kept.push(record),
            }
        }
        let available = kept.iter().filter(|r| r.handed_out_at.is_none()).count();
        if available < ONE_TIME_PREKEY_LOW_WATER {
            let mut next = self.store.next_one_time_prekey_id()?;
            for _ in 0..ONE_TIME_PREKEY_BATCH {
                let key = OneTimePreKey::generate(next, &mut self.rng);
                batch.put_one_time_prekey(&OneTimePreKeyRecord::new(&key), key.id());
                next = next.wrapping_add(1);
            }
            batch.put_next_one_time_prekey_id(next);
            // Over the cap: drop the oldest handed-out keys first.
            let excess =
                (kept.len() + ONE_TIME_PREKEY_BATCH as usize).saturating_sub(MAX_ONE_TIME_PREKEYS);
            for record in kept.iter().filter(|r| r.handed_out_at.is_some()).take(excess) {
                batch.delete_one_time_prekey(record.to_key().id());
            }
        }

        self.maintain_kem_prekeys(now, &mut batch)?;

        self.store.prune_seen(
            now.saturating_sub(SEEN_RETENTION_MS),
            SEEN_PRUNE_BATCH,
            &mut batch,
        )?;
        // What others made us hold for a while: group messages waiting for keys, group
        // changes waiting for their parents.
        self.expire_pending(now, &mut batch)?;
        self.expire_waiting_changes(now, &mut batch)?;
        self.commit(batch)?;

        // Messages that could not be delivered in time.
        for id in self.outbox.older_than(now.saturating_sub(super::OUTBOX_DEADLINE_MS)) {
            let never_encrypted = self.outbox.get(&id).is_some_and(|e| e.record.envelope.is_none());
            let why =
                if never_encrypted { DeliveryFailure::NoPreKeys } else { DeliveryFailure::Expired };
            self.fail(id, why)?;
        }
        Ok(())
    }

    /// KEM prekeys: the last-resort one is rotated with the signed prekey (and kept as long,
    /// for initial messages sent to it while it was current); one-time ones are topped up and
    /// capped like classical one-time prekeys.
    pub(super) fn maintain_kem_prekeys(
        &mut self,
        now: UnixMillis,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let first = self.store.next_kem_prekey_id()?;
        let mut next = first;
        let current = self.store.current_kem_prekey()?;
        let current_id = match current {
            Some(k) if now.saturating_sub(k.created_at()) < SIGNED_PREKEY_ROTATION_MS => k.id(),
            _ => {
                let key = KemPreKey::generate(
                    &self.identity,
                    next,
                    KemPreKeyKind::LastResort,
                    now,
                    &mut self.rng,
                );
                batch.put_kem_prekey(&KemPreKeyRecord::new(&key));
                next = next.wrapping_add(1);
                key.id()
            }
        };
        let mut one_time = Vec::new();
        for record in self.store.kem_prekeys()? {
            match record.kind() {
                KemPreKeyKind::LastResort => {
                    if record.id() != current_id
                        && now.saturating_sub(record.created_at())
                            > SIGNED_PREKEY_ROTATION_MS + SIGNED_PREKEY_GRACE_MS
                    {
                        batch.delete_kem_prekey(record.id());
                    }
                }
                KemPreKeyKind::OneTime => match record.handed_out_at {
                    Some(at) if now.saturating_sub(at) > HANDED_OUT_MAX_AGE_MS => {
                        batch.delete_kem_prekey(record.id())
                    }
                    _ => one_time.push(record),
                },
            }
        }
        let available = one_time.iter().filter(|r| r.handed_out_at.is_none()).count();
        if available < KEM_ONE_TIME_PREKEY_LOW_WATER {
            for _ in 0..KEM_ONE_TIME_PREKEY_BATCH {
                let key = KemPreKey::generate(
                    &self.identity,
                    next,
                    KemPreKeyKind::OneTime,
                    now,
                    &mut self.rng,
                );
                batch.put_kem_prekey(&KemPreKeyRecord::new(&key));
                next = next.wrapping_add(1);
            }
            let excess = (one_time.len() + KEM_ONE_TIME_PREKEY_BATCH as usize)
                .saturating_sub(MAX_KEM_ONE_TIME_PREKEYS);
            for record in one_time.iter().filter(|r| r.handed_out_at.is_some()).take(excess) {
                batch.delete_kem_prekey(record.id());
            }
        }
        // Written only when keys were made: an hourly upkeep with nothing to do writes nothing.
        if next != first {
            batch.put_next_kem_prekey_id(next);
        }
        Ok(())
    }

    /// Marks the next unused one-time KEM prekey (from the cursor) handed out in `batch`.
    fn hand_out_kem_prekey(
        &mut self,
        now: UnixMillis,
        batch: &mut Batch,
    ) -> Result<Option<KemPreKeyPublic>, StoreError> {
        let mut id = self.kem_cursor;
        let mut found = None;
        while let Some(mut record) = self.store.kem_prekey_from(id)? {
            id = record.id().wrapping_add(1);
            if record.kind() == KemPreKeyKind::OneTime && record.handed_out_at.is_none() {
                record.handed_out_at = Some(now);
                batch.put_kem_prekey(&record);
                found = Some(record.to_key().public());
                break;
            }
        }
        self.kem_cursor = id;
        Ok(found)
    }

    /// Our current signed prekey, last-resort KEM prekey and up to `count` unused one-time
    /// prekeys of each kind for one of our relays to serve. The keys are marked handed out in
    /// the pending batch: send the upload only after the next [`Engine::flush`], so that no key
    /// is ever handed out twice.
    pub fn prekey_upload(
        &mut self,
        now: UnixMillis,
        count: usize,
    ) -> Result<Option<PreKeyUpload>, StoreError> {
        let Some(signed_prekey) = (match self.store.current_signed_prekey_id()? {
            Some(id) => self.store.signed_prekey(id)?,
            None => None,
        }) else {
            return Ok(None);
        };
        let Some(kem_last_resort) = self.store.current_kem_prekey()? else {
            return Ok(None);
        };
        let count = count.min(kith_protocol::limits::MAX_PREKEYS_PER_UPLOAD);
        let mut batch = Batch::new();
        let mut one_time_prekeys = Vec::with_capacity(count);
        let mut id = self.opk_cursor;
        while one_time_prekeys.len() < count {
            let Some(mut record) = self.store.one_time_prekey_from(id)? else { break };
            let key = record.to_key();
            id = key.id().wrapping_add(1);
            if record.handed_out_at.is_none() {
                record.handed_out_at = Some(now);
                batch.put_one_time_prekey(&record, key.id());
                one_time_prekeys.push(key.public());
            }
        }
        self.opk_cursor = id;
        let kem_count = count.min(kith_protocol::limits::MAX_KEM_PREKEYS_PER_UPLOAD);
        let mut kem_one_time_prekeys = Vec::with_capacity(kem_count);
        while kem_one_time_prekeys.len() < kem_count {
            let Some(key) = self.hand_out_kem_prekey(now, &mut batch)? else { break };
            kem_one_time_prekeys.push(key);
        }
        self.commit(batch)?;
        if one_time_prekeys.len() < count || kem_one_time_prekeys.len() < kem_count {
            // Running low: top up at the next timeout.
            self.next_maintenance = self.mono;
        }
        Ok(Some(PreKeyUpload {
            identity: self.identity.binding(),
            signed_prekey: signed_prekey.public(),
            kem_last_resort: kem_last_resort.to_key().public(),
            one_time_prekeys,
            kem_one_time_prekeys,
        }))
    }

    /// Hands out our bundle with the lowest unused one-time prekey (if any is left) and the
    /// lowest unused one-time KEM prekey (the last-resort one when none is left).
    pub(super) fn serve_bundle(
        &mut self,
        now: UnixMillis,
        reply: ReplyToken,
    ) -> Result<(), StoreError> {
        let current = match self.store.current_signed_prekey_id()? {
            Some(id) => self.store.signed_prekey(id)?,
            None => None,
        };
        let (Some(signed_prekey), Some(last_resort)) = (current, self.store.current_kem_prekey()?)
        else {
            self.held.push_back(Output::Reply {
                token: reply,
                reply: Reply::PreKeys(PreKeyResponse::NotFound),
            });
            return Ok(());
        };
        let mut batch = Batch::new();
        let mut one_time_prekey = None;
        let mut id = self.opk_cursor;
        // Keys are handed out in id order, so everything below the cursor is taken.
        while let Some(mut record) = self.store.one_time_prekey_from(id)? {
            let key = record.to_key();
            id = key.id().wrapping_add(1);
            if record.handed_out_at.is_none() {
                record.handed_out_at = Some(now);
                batch.put_one_time_prekey(&record, key.id());
                one_time_prekey = Some(key.public());
                break;
            }
        }
        self.opk_cursor = id;
        let kem_one_time = self.hand_out_kem_prekey(now, &mut batch)?;
        self.commit(batch)?;
        let out_of_one_time = one_time_prekey.is_none() || kem_one_time.is_none();
        let bundle = PreKeyBundle {
            identity: self.identity.binding(),
            signed_prekey: signed_prekey.public(),
            one_time_prekey,
            kem_prekey: kem_one_time.unwrap_or_else(|| last_resort.to_key().public()),
        };
        self.held.push_back(Output::Reply {
            token: reply,
            reply: Reply::PreKeys(PreKeyResponse::Bundle(Box::new(bundle))),
        });
        if out_of_one_time {
            // Out of one-time prekeys: top up at the next timeout.
            self.next_maintenance = self.mono;
        }
        Ok(())
    }
}
