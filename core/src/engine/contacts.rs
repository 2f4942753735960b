//! Contacts: adding and naming them, identity keys (pinned, changed, trusted), and our
//! profile name shared with them.

use super::*;

impl<R: rand_core::CryptoRng> Engine<R> {
    /// The sessions with `peer`, taken out of the cache (or loaded). Put them back with
    /// [`Self::cache_sessions`] only after the batch that stores them committed.
    pub(super) fn take_sessions(&mut self, peer: &UserId) -> Result<PeerSessions, StoreError> {
        self.sessions.take(&self.store, peer)
    }

    pub(super) fn cache_sessions(&mut self, peer: UserId, sessions: PeerSessions) {
        self.sessions.put(peer, sessions);
    }

    /// The header keys this node currently sends under, per cached session (test harness).
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn sending_header_keys(
        &self,
    ) -> Vec<(UserId, crate::pqxdh::AssociatedData, crate::ratchet::keys::HeaderKey)> {
        self.sessions.sending_header_keys().collect()
    }

    pub(super) fn has_session(&self, peer: &UserId) -> Result<bool, StoreError> {
        self.sessions.has_current(&self.store, peer)
    }

    pub(super) fn known_contact(&self, user: &UserId) -> Result<Contact, CommandError> {
        self.store.contact(user)?.ok_or(CommandError::UnknownContact)
    }

    /// Whether `user` is a contact the user named (added or accepted), not a stranger whose
    /// messages wait as a message request or a group's member we only know from the group.
    pub(super) fn is_named_contact(&self, user: &UserId) -> Result<bool, StoreError> {
        Ok(self.store.contact(user)?.is_some_and(|c| c.name.is_some()))
    }

    pub(super) fn save_contact(&mut self, contact: Contact) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.put_contact(&contact);
        self.commit(batch)?;
        self.event(Event::ContactChanged(Box::new(contact)));
        Ok(())
    }

    /// A peer we can address: a valid identity other than ourselves.
    pub(super) fn check_peer(&self, user: &UserId) -> Result<(), CommandError> {
        if *user == self.user_id() {
            return Err(CommandError::SelfAddressed);
        }
        peer_id_of(user).map(|_| ()).map_err(|_| CommandError::InvalidUser)
    }

    pub(super) fn add_contact(
        &mut self,
        now: UnixMillis,
        user: UserId,
        name: String,
        relays: Vec<String>,
    ) -> Result<CommandResult, CommandError> {
        self.check_peer(&user)?;
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > kith_protocol::limits::MAX_NAME_BYTES {
            return Err(CommandError::InvalidName);
        }
        if let Some(other) = self.contact_by_name(&name)?
            && other.user != user
        {
            return Err(CommandError::NameTaken(name));
        }
        let mut contact = self.store.contact(&user)?.unwrap_or_else(|| Contact::new(user, now));
        contact.name = Some(name);
        if !relays.is_empty() {
            contact.relays = relays;
        }
        self.save_contact(contact)?;
        // A message request accepted: they get a key for our relays now.
        if self.has_session(&user)? {
            self.share_access_key_with(now, user)?;
        }
        Ok(CommandResult::Done)
    }

    pub(super) fn trust_identity(&mut self, user: UserId) -> Result<CommandResult, CommandError> {
        let mut contact = self.known_contact(&user)?;
        let remembered = self.pending_identities.remove(&user);
        let Some(new) = contact.pending_identity.take().or(remembered) else {
            return Ok(CommandResult::Done);
        };
        contact.identity = Some(new);
        contact.verified = false;
        let mut batch = Batch::new();
        batch.put_contact(&contact);
        // Sessions with the old identity are useless now.
        batch.put_sessions(&user, &PeerSessions::default());
        self.commit(batch)?;
        self.sessions.forget(&user);
        self.event(Event::ContactChanged(Box::new(contact)));
        if !self.outbox.for_peer(&user).is_empty() {
            self.request_bundle(user);
        }
        Ok(CommandResult::Done)
    }

    /// `contact` with a changed identity key that only memory holds (see
    /// [`MAX_PENDING_IDENTITIES`]).
    pub(super) fn with_pending_identity(&self, mut contact: Contact) -> Contact {
        if contact.pending_identity.is_none() {
            contact.pending_identity = self.pending_identities.get(&contact.user).copied();
        }
        contact
    }

    /// Remembers (in memory only) a new identity key a peer presented, and tells the app once.
    pub(super) fn note_pending_identity(
        &mut self,
        peer: UserId,
        binding: kith_protocol::prekey::IdentityBinding,
    ) {
        if self.pending_identities.get(&peer) == Some(&binding) {
            return;
        }
        if self.pending_identities.len() >= MAX_PENDING_IDENTITIES
            && !self.pending_identities.contains_key(&peer)
        {
            return;
        }
        self.pending_identities.insert(peer, binding);
        self.event(Event::IdentityChanged { peer, identity: binding });
    }

    pub(super) fn set_profile(
        &mut self,
        now: UnixMillis,
        display_name: String,
    ) -> Result<CommandResult, CommandError> {
        let name = display_name.trim().to_owned();
        if name.is_empty() || name.len() > kith_protocol::limits::MAX_NAME_BYTES {
            return Err(CommandError::InvalidName);
        }
        let mut batch = Batch::new();
        batch.put_profile_name(&name);
        self.commit(batch)?;
        // Everyone we chose to add gets the new name; others get it when we first talk.
        for mut contact in self.store.contacts()? {
            let pending = contact.pending_identity.is_some()
                || self.pending_identities.contains_key(&contact.user);
            if contact.name.is_some() && !contact.blocked && !pending {
                contact.profile_shared = false;
                self.save_contact(contact.clone())?;
                if self.has_session(&contact.user)? {
                    self.share_profile_with(now, contact.user)?;
                }
            }
        }
        Ok(CommandResult::Done)
    }

    /// Hands `peer` an access key for our relays (sealed sender) once, if `peer` is a contact
    /// we added and not blocked; the node registers the keys' verifiers with our relays.
    pub(super) fn share_access_key_with(
        &mut self,
        now: UnixMillis,
        peer: UserId,
    ) -> Result<(), StoreError> {
        let Some(mut contact) = self.store.contact(&peer)? else { return Ok(()) };
        if contact.access_given.is_some() || contact.name.is_none() || contact.blocked {
            return Ok(());
        }
        let key = crate::sealed_sender::new_access_key(&mut self.rng);
        match self.queue(now, peer, Body::AccessKey(key), OutboxKind::Control) {
            Ok(_) => {}
            Err(CommandError::Store(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        contact.access_given = Some(key);
        self.save_contact(contact)
    }

    /// The verifiers of the access keys we handed our contacts (blocked ones have none): what
    /// the node registers with each of our relays.
    pub fn access_verifiers(
        &self,
    ) -> Result<Vec<kith_protocol::mailbox::AccessVerifier>, StoreError> {
        let mut verifiers: Vec<_> = self
            .store
            .contacts()?
            .iter()
            .filter(|c| !c.blocked)
            .filter_map(|c| c.access_given.as_ref())
            .map(crate::sealed_sender::access_verifier)
            .collect();
        verifiers.sort();
        Ok(verifiers)
    }

    /// Seals the encoded envelope `bytes` (one of our [`Output::Deliver`]s) for deposit with
    /// one of `to`'s relays: encrypted to `to`'s pinned identity key, with the access key `to`
    /// handed us (none yet: a stranger's deposit, under the relay's stranger budget).
    pub fn seal_for_relay(
        &mut self,
        to: &UserId,
        id: MessageId,
        bytes: &[u8],
    ) -> Result<kith_protocol::mailbox::SealedDeposit, CommandError> {
        let contact = self.known_contact(to)?;
        let binding = contact.identity.ok_or(CommandError::UnknownContact)?;
        let identity = PublicIdentity {
            user: binding.user,
            dh_key: binding.dh_key,
            signature: binding.signature,
        };
        let (ephemeral, ciphertext) =
            crate::sealed_sender::seal(&identity, &id, bytes, &mut self.rng)
                .map_err(|e| CommandError::InvalidMessage(e.to_string()))?;
        Ok(kith_protocol::mailbox::SealedDeposit {
            access: contact.access_key,
            envelope: kith_protocol::mailbox::SealedEnvelope {
                id,
                recipient: *to,
                ephemeral,
                ciphertext,
            },
        })
    }

    /// Sends our profile to `peer` once, if we have one and `peer` is a contact we added.
    pub(super) fn share_profile_with(
        &mut self,
        now: UnixMillis,
        peer: UserId,
    ) -> Result<(), StoreError> {
        let Some(name) = self.store.profile_name()? else { return Ok(()) };
        let Some(mut contact) = self.store.contact(&peer)? else { return Ok(()) };
        if contact.profile_shared || contact.name.is_none() {
            return Ok(());
        }
        match self.queue(
            now,
            peer,
            Body::Profile(Profile { display_name: name }),
            OutboxKind::Control,
        ) {
            Ok(_) => {}
            Err(CommandError::Store(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        contact.profile_shared = true;
        let mut batch = Batch::new();
        batch.put_contact(&contact);
        self.commit(batch)
    }
}
