//! Read-only views of the engine's state: identity, contacts, conversations, messages,
//! safety numbers and the user record.

use super::*;

impl<R: rand_core::CryptoRng> Engine<R> {
    /// Our user id.
    pub fn user_id(&self) -> UserId {
        self.identity.user_id()
    }

    /// Our identity.
    pub fn identity(&self) -> &IdentityKeyPair {
        &self.identity
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store (read access, e.g. for history paging).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        Ok(self.store.contacts()?.into_iter().map(|c| self.with_pending_identity(c)).collect())
    }

    /// A contact by id.
    pub fn contact(&self, user: &UserId) -> Result<Option<Contact>, StoreError> {
        Ok(self.store.contact(user)?.map(|c| self.with_pending_identity(c)))
    }

    /// A contact by the name we gave it.
    pub fn contact_by_name(&self, name: &str) -> Result<Option<Contact>, StoreError> {
        Ok(self.contacts()?.into_iter().find(|c| c.name.as_deref() == Some(name)))
    }

    /// Up to `limit` messages with `peer` before sequence number `before` (all if `None`),
    /// oldest first.
    pub fn history(
        &self,
        peer: &UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.conversation(&peer.0, before, limit)
    }

    /// A conversation's messages (a peer's or a group's key range), oldest first.
    pub(super) fn conversation(
        &self,
        key: &[u8; 32],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut records = self.store.history(key, before, limit)?;
        records.reverse();
        records.iter().map(MessageRecord::to_message).collect()
    }

    /// A message by id.
    pub fn message(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        self.store.message(id)?.map(|r| r.to_message()).transpose()
    }

    /// The safety number with `peer`, once their identity is known.
    pub fn safety_number(&self, peer: &UserId) -> Result<Option<SafetyNumber>, StoreError> {
        let Some(binding) = self.store.contact(peer)?.and_then(|c| c.identity) else {
            return Ok(None);
        };
        // The binding was verified before it was pinned.
        let theirs = PublicIdentity {
            user: binding.user,
            dh_key: binding.dh_key,
            signature: binding.signature,
        };
        Ok(Some(SafetyNumber::new(&self.identity.public(), &theirs)))
    }

    /// Our signed user record for the DHT, with our current signed prekey and last-resort KEM
    /// prekey, `relays` (binary multiaddrs) and where our devices can be dialed.
    pub fn user_record(
        &self,
        relays: Vec<Vec<u8>>,
        devices: Vec<kith_protocol::prekey::DeviceAddresses>,
    ) -> Result<kith_protocol::prekey::UserRecordV3, StoreError> {
        let spk = match self.store.current_signed_prekey_id()? {
            Some(id) => self.store.signed_prekey(id)?,
            None => None,
        }
        .ok_or(StoreError::Corrupt { record: "signed prekey" })?;
        let kem =
            self.store.current_kem_prekey()?.ok_or(StoreError::Corrupt { record: "KEM prekey" })?;
        Ok(crate::record::sign_record_v3(
            &self.identity,
            spk.public(),
            kem.to_key().public(),
            relays,
            devices,
            self.now,
        ))
    }

    /// Messages waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// How many messages, receipts and other envelopes wait in the outbox for `user` (a node
    /// keeps trying to reach a peer while this is not zero).
    pub fn queued_for(&self, user: &UserId) -> usize {
        self.outbox.count_for_peer(user)
    }
}
