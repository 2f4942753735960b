//! Group tests over N engines on the engine's one harness (`crate::testing::Net`): pairwise
//! envelopes routed directly, publications gossiped to every subscribed, online member, and
//! the other members reported unreached to the publisher.

use std::collections::BTreeSet;

use kith_protocol::GroupId;
use kith_protocol::content::{ExpireTimer, ReceiptKind};
use kith_protocol::envelope::GroupEnvelope;
use rand_chacha::ChaCha20Rng;

use kith_protocol::content::{GroupAction, GroupControl};
use kith_protocol::envelope::Envelope;

use super::*;
use crate::group::{change_hash, group_id, group_tag, sign_control};
use crate::model::MessageStatus;
use crate::store::Batch;
use crate::testing::{Faults, Net, T0 as T};

/// A network of `n` engines without faults (the engine's one harness, `crate::testing`).
fn net(n: usize) -> Net {
    Net::new(n, Faults::NONE, 100)
}

/// What the group tests do on the network, each followed by routing until it is quiet.
trait Groups {
    fn id(&self, i: usize) -> UserId;
    fn command_and_run(&mut self, i: usize, command: Command) -> CommandResult;
    fn group_command(&mut self, i: usize, group: GroupId, command: GroupCommand) -> CommandResult;
    fn gossip(&mut self, to: usize, bytes: Vec<u8>);
    fn create(&mut self, admin: usize, members: &[usize]) -> GroupId;
    fn texts(&mut self, i: usize, group: &GroupId) -> Vec<String>;
    fn send(&mut self, i: usize, group: GroupId, text: &str) -> MessageId;
    fn members(&mut self, i: usize, group: &GroupId) -> Vec<UserId>;
}

impl Groups for Net {
    fn id(&self, i: usize) -> UserId {
        self.user(i)
    }

    fn command_and_run(&mut self, i: usize, command: Command) -> CommandResult {
        let result = self.command(i, command);
        self.run();
        result
    }

    fn group_command(&mut self, i: usize, group: GroupId, command: GroupCommand) -> CommandResult {
        self.command_and_run(i, Command::Group { group, command })
    }

    fn gossip(&mut self, to: usize, bytes: Vec<u8>) {
        self.inject_gossip(to, bytes);
    }

    fn create(&mut self, admin: usize, members: &[usize]) -> GroupId {
        let members = members.iter().map(|m| self.id(*m)).collect();
        let CommandResult::Group(group) =
            self.command_and_run(admin, Command::CreateGroup { name: "team".into(), members })
        else {
            panic!("no group")
        };
        group
    }

    fn texts(&mut self, i: usize, group: &GroupId) -> Vec<String> {
        self.engine(i)
            .group_history(group, None, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m.body {
                Some(Body::Text(t)) => Some(t.body),
                _ => None,
            })
            .collect()
    }

    fn send(&mut self, i: usize, group: GroupId, text: &str) -> MessageId {
        let command = GroupCommand::Send { text: text.into(), reply_to: None };
        let CommandResult::Queued(id) = self.group_command(i, group, command) else { panic!() };
        id
    }

    fn members(&mut self, i: usize, group: &GroupId) -> Vec<UserId> {
        self.engine(i).group(group).map(|g| g.members).unwrap_or_default()
    }
}

#[test]
fn members_converge_and_every_message_arrives_once_with_receipts() {
    let mut net = net(4);
    let group = net.create(0, &[1, 2, 3]);
    for i in 0..4 {
        assert_eq!(net.members(i, &group).len(), 4, "member {i}");
    }
    let mut sent = Vec::new();
    for round in 0..3 {
        for i in 0..4 {
            let text = format!("{i}/{round}");
            sent.push((net.send(i, group, &text), text));
        }
    }
    for i in 0..4 {
        let mut got = net.texts(i, &group);
        got.sort();
        let mut all: Vec<String> = sent.iter().map(|(_, t)| t.clone()).collect();
        all.sort();
        assert_eq!(got, all, "member {i} has every message once (its own included)");
    }
    // Everyone has everything: delivered once the receipts went out; then all read one of
    // 0's messages.
    let (first, _) = sent[0].clone();
    assert_eq!(net.engine(0).message(&first).unwrap().unwrap().status, MessageStatus::Sent);
    net.advance(GROUP_RECEIPT_DELAY_MS);
    assert_eq!(net.engine(0).message(&first).unwrap().unwrap().status, MessageStatus::Delivered);
    for i in 1..4 {
        net.group_command(i, group, GroupCommand::MarkRead { ids: vec![first] });
    }
    let message = net.engine(0).message(&first).unwrap().unwrap();
    assert_eq!(message.status, MessageStatus::Read);
    assert_eq!(message.receipts.len(), 3);
    assert!(message.receipts.iter().all(|r| r.kind == ReceiptKind::Read));
    // Nothing was refused along the way.
    assert!(net.nodes.iter().flat_map(|n| &n.verdicts).all(|v| *v == Verdict::Accept));
}

#[test]
fn a_removed_member_reads_nothing_sent_after() {
    let mut net = net(4);
    let group = net.create(0, &[1, 2, 3]);
    net.send(1, group, "before");
    assert_eq!(net.texts(3, &group), ["before"]);
    // 3 does not hear of its removal: it keeps every key it had and still thinks it is in.
    net.nodes[3].online = false;
    net.group_command(0, group, GroupCommand::Remove { member: net.id(3) });
    for i in 0..3 {
        assert_eq!(net.members(i, &group).len(), 3);
    }
    net.send(1, group, "after");
    net.send(2, group, "after 2");
    net.send(0, group, "after 3");
    assert_eq!(net.texts(0, &group), ["before", "after", "after 2", "after 3"]);
    // Every later message still reaches it on the topic; none opens.
    assert!(net.engine(3).group(&group).unwrap().joined);
    let after: Vec<Vec<u8>> = net.published.iter().rev().take(3).cloned().collect();
    for bytes in after {
        net.gossip(3, bytes);
    }
    net.run();
    assert_eq!(net.texts(3, &group), ["before"]);
    assert_eq!(net.engine(3).pending_group_messages(&group).unwrap(), 3);
    assert!(net.nodes[3].verdicts.iter().rev().take(3).all(|v| *v == Verdict::Ignore));
    // Once it hears of the removal it forgets the group's keys and what waited for them.
    net.nodes[3].online = true;
    net.reachable(3);
    assert!(!net.engine(3).group(&group).unwrap().joined);
    assert_eq!(net.engine(3).pending_group_messages(&group).unwrap(), 0);
}

/// Only what every honest member would refuse costs the forwarder gossip score: garbage is
/// rejected; a forged signature (another member may hold a key it verifies under), a replay
/// and a non-member's message (a member that has not yet seen its `Add`) are ignored:
/// neither forwarded nor penalised (issue 14, item 5). None of them is accepted.
#[test]
fn forged_replayed_and_non_member_messages_are_refused_and_only_garbage_is_penalised() {
    let mut net = net(4);
    let group = net.create(0, &[1, 2]);
    net.send(1, group, "real");
    let real = net.published.last().unwrap().clone();
    let before = net.nodes[2].verdicts.len();

    // Forged: a flipped ciphertext bit (the signature no longer holds).
    let mut forged: GroupEnvelope = kith_protocol::decode(&real).unwrap();
    forged.message.ciphertext[0] ^= 1;
    forged.id = MessageId([9; 16]);
    net.gossip(2, kith_protocol::encode(&forged).unwrap());
    // Replayed: the very same bytes again.
    net.gossip(2, real.clone());
    // A non-member (3) with its own chain for the group's tag.
    let mut chain = crate::group::sender_key::OwnChain::generate(&mut rand::rng());
    let outsider = net.id(3);
    let id = MessageId([7; 16]);
    let message = chain.seal(group_tag(&group), &outsider, &id, b"x").unwrap();
    net.gossip(2, kith_protocol::encode(&GroupEnvelope { id, sender: outsider, message }).unwrap());
    // Garbage.
    net.gossip(2, vec![1, 2, 3]);
    net.run();
    assert_eq!(
        net.nodes[2].verdicts[before..],
        [Verdict::Ignore, Verdict::Ignore, Verdict::Ignore, Verdict::Reject]
    );
    assert_eq!(net.texts(2, &group), ["real"]);
}

#[test]
fn an_offline_member_gets_copies_and_concurrent_changes_converge() {
    let mut net = net(6);
    let group = net.create(0, &[1, 2, 3, 4]);
    net.group_command(0, group, GroupCommand::Promote { member: net.id(1) });
    // 4 is offline while 2 writes: the topic does not reach it, the outbox keeps its copy.
    net.nodes[4].online = false;
    net.send(2, group, "while you were out");
    assert!(net.texts(4, &group).is_empty());
    assert!(net.engine(2).outbox_len() > 0);
    // Meanwhile two admins change the group at once (neither sees the other's change first).
    let (add, remove) = (net.id(5), net.id(3));
    net.engine(0)
        .handle_command(T, Command::Group { group, command: GroupCommand::Add { member: add } })
        .unwrap();
    net.engine(1)
        .handle_command(
            T,
            Command::Group { group, command: GroupCommand::Remove { member: remove } },
        )
        .unwrap();
    net.run();
    net.nodes[4].online = true;
    net.reachable(4);
    assert_eq!(net.texts(4, &group), ["while you were out"]);
    let expected: Vec<UserId> = {
        let mut m: Vec<UserId> = [0, 1, 2, 4, 5].iter().map(|i| net.id(*i)).collect();
        m.sort();
        m
    };
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(net.members(i, &group), expected, "member {i}");
    }
    // The newcomer reads what is sent from now on.
    net.send(4, group, "welcome");
    assert_eq!(net.texts(5, &group), ["welcome"]);
}

#[test]
fn delivery_receipts_are_coalesced_per_author() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    net.advance(GROUP_RECEIPT_DELAY_MS);
    let ids: Vec<MessageId> = (0..5).map(|i| net.send(1, group, &format!("m{i}"))).collect();
    assert_eq!(net.texts(0, &group).len(), 5);
    // Nothing goes back to the author until the delay is over: then one receipt per member
    // covers all five.
    let before = net.envelopes.len();
    net.advance(GROUP_RECEIPT_DELAY_MS - 1);
    assert_eq!(net.envelopes.len(), before, "no receipt before the delay");
    assert!(net.engine(0).poll_timeout().is_some_and(|t| t <= net.now + 1));
    net.advance(1);
    let receipts: Vec<(usize, usize)> = net.envelopes[before..].to_vec();
    assert_eq!(receipts.iter().filter(|(from, to)| *from == 0 && *to == 1).count(), 1);
    assert_eq!(receipts.iter().filter(|(from, to)| *from == 2 && *to == 1).count(), 1);
    for id in ids {
        let message = net.engine(1).message(&id).unwrap().unwrap();
        assert_eq!(message.status, MessageStatus::Delivered);
        assert_eq!(message.receipts.len(), 2);
    }
}

#[test]
fn a_verdict_is_ready_before_the_flush_and_the_message_after_it() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    // 2 misses the message on the topic; it is handed over by hand below.
    net.nodes[2].online = false;
    net.send(1, group, "hello");
    net.nodes[2].online = true;
    let bytes = net.published.last().unwrap().clone();
    let now = net.now;
    net.engine(2)
        .handle_input(now, Input::GroupMessage { bytes, token: ValidationToken(77) })
        .unwrap();
    // Before the flush: the verdict (gossip may forward at once), not the message.
    let early: Vec<Output> = std::iter::from_fn(|| net.engine(2).poll_output()).collect();
    assert!(
        matches!(
            early.as_slice(),
            [Output::Validation { token: ValidationToken(77), verdict: Verdict::Accept }]
        ),
        "only the verdict before the flush: {early:?}"
    );
    net.engine(2).flush().unwrap();
    let after: Vec<Output> = std::iter::from_fn(|| net.engine(2).poll_output()).collect();
    assert!(
        after
            .iter()
            .any(|o| matches!(o, Output::Event(Event::Message(m)) if m.group == Some(group)))
    );
    // The same bytes again (a replay): `take_verdicts` hands over the verdict alone and leaves
    // the rest (the `Rejected` event) for after the flush.
    let bytes = net.published.last().unwrap().clone();
    let now = net.now;
    net.engine(2)
        .handle_input(now, Input::GroupMessage { bytes, token: ValidationToken(78) })
        .unwrap();
    assert_eq!(net.engine(2).take_verdicts(), [(ValidationToken(78), Verdict::Ignore)]);
    assert!(net.engine(2).poll_output().is_none(), "nothing else before the flush");
    net.engine(2).flush().unwrap();
    let after: Vec<Output> = std::iter::from_fn(|| net.engine(2).poll_output()).collect();
    assert!(after.iter().any(|o| matches!(o, Output::Event(Event::Rejected { .. }))), "{after:?}");
    assert!(!after.iter().any(|o| matches!(o, Output::Validation { .. })));
}

#[test]
fn a_receipt_lost_in_a_crash_is_sent_again_when_the_copy_comes() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    net.advance(GROUP_RECEIPT_DELAY_MS);
    let id = net.send(1, group, "hello");
    assert_eq!(net.texts(2, &group), ["hello"]);
    // 2 stored the message (flushed) but crashes before its receipt goes out.
    net.crash(2);
    net.restart(2);
    net.advance(GROUP_RECEIPT_DELAY_MS);
    let message = net.engine(1).message(&id).unwrap().unwrap();
    assert_eq!(message.receipts.len(), 1, "only 0 acknowledged it");
    // The author sends 2 a copy after all; 2 has it already, and says so again.
    net.advance(GROUP_RECEIPT_TIMEOUT_MS);
    net.advance(GROUP_RECEIPT_DELAY_MS);
    assert_eq!(net.texts(2, &group), ["hello"], "still once");
    let message = net.engine(1).message(&id).unwrap().unwrap();
    assert_eq!(message.receipts.len(), 2);
    assert_eq!(message.status, MessageStatus::Delivered);
}

// ---------------------------------------------------------------- attacks (issue 14)

/// The hashes of `engine`'s changes of `group` that no change follows (its view's heads).
fn heads(engine: &Engine<ChaCha20Rng>, group: &GroupId) -> Vec<kith_protocol::ChangeHash> {
    engine.groups[group].log.heads()
}

/// What `from` sends `to` as its own changes (pairwise, through its outbox), bypassing its
/// own judgement: what a malicious client does.
fn push_changes(net: &mut Net, from: usize, to: usize, group: GroupId, changes: Vec<GroupControl>) {
    for chunk in changes.chunks(kith_protocol::limits::MAX_CHANGES_PER_MESSAGE) {
        let body = Body::GroupChanges(kith_protocol::content::GroupChanges {
            group,
            changes: chunk.to_vec(),
        });
        let to = net.id(to);
        let now = net.now;
        net.engine(from).send_reliably(now, to, body).unwrap();
    }
}

fn group_changes_stored(engine: &Engine<ChaCha20Rng>) -> usize {
    engine
        .store()
        .dump()
        .unwrap()
        .iter()
        .filter(|(tree, _, _)| *tree == crate::store::Tree::GroupChanges)
        .count()
}

fn waiting_changes(engine: &Engine<ChaCha20Rng>) -> usize {
    engine.store.group_orphans(None).unwrap().len()
}

/// Issue 14, item 1: an admin removed by the creator signs, with the parents it had before its
/// removal, an `Add` of a puppet and a `Promote` of it, and the puppet then removes an honest
/// member. No member admits any of it, the puppet reads nothing, and the members' logs do not
/// grow.
#[test]
fn a_removed_admin_cannot_backdate_a_puppet_into_the_group() {
    let mut net = net(5);
    let (admin, puppet) = (1, 4);
    let group = net.create(0, &[1, 2, 3]);
    net.group_command(0, group, GroupCommand::Promote { member: net.id(admin) });
    let before_removal = heads(net.engine_ref(admin), &group);
    net.group_command(0, group, GroupCommand::Remove { member: net.id(admin) });
    assert!(!net.engine(admin).group(&group).unwrap().joined);
    let stored: Vec<usize> = (0..4).map(|i| group_changes_stored(net.engine_ref(i))).collect();

    let sign = |net: &Net, who: usize, parents: Vec<_>, action| {
        sign_control(net.engine_ref(who).identity(), group, parents, action).unwrap()
    };
    let add = sign(&net, admin, before_removal, GroupAction::Add { member: net.id(puppet) });
    let promote = sign(
        &net,
        admin,
        vec![change_hash(&add).unwrap()],
        GroupAction::Promote { member: net.id(puppet) },
    );
    let strike = sign(
        &net,
        puppet,
        vec![change_hash(&promote).unwrap()],
        GroupAction::Remove { member: net.id(2) },
    );
    for to in [0, 2, 3, puppet] {
        push_changes(&mut net, admin, to, group, vec![add.clone(), promote.clone()]);
    }
    for to in [0, 2, 3] {
        push_changes(&mut net, puppet, to, group, vec![strike.clone()]);
    }
    net.run();
    let expected: BTreeSet<UserId> = [0, 2, 3].iter().map(|i| net.id(*i)).collect();
    for i in [0, 2, 3] {
        let members: BTreeSet<UserId> = net.members(i, &group).into_iter().collect();
        assert_eq!(members, expected, "member {i}");
        assert_eq!(group_changes_stored(net.engine_ref(i)), stored[i], "member {i} stored nothing");
    }
    // What the group says from now on reaches neither the removed admin nor its puppet.
    net.send(0, group, "after the removal");
    net.advance(GROUP_RECEIPT_TIMEOUT_MS);
    assert_eq!(net.texts(2, &group).last().map(String::as_str), Some("after the removal"));
    assert!(!net.texts(admin, &group).contains(&"after the removal".to_string()));
    assert!(net.texts(puppet, &group).is_empty());
}

/// Issue 14, item 2: a removed member (here a removed admin) sends thousands of renames made
/// "before" its removal: they do not count and are not kept beyond a small waiting share, the
/// members' logs do not grow, and the group is not frozen: members still leave, the creator
/// still renames.
#[test]
fn a_removed_admin_cannot_freeze_the_group_with_changes_in_the_past() {
    let mut net = net(4);
    let group = net.create(0, &[1, 2, 3]);
    net.group_command(0, group, GroupCommand::Promote { member: net.id(1) });
    let before_removal = heads(net.engine_ref(1), &group);
    net.group_command(0, group, GroupCommand::Remove { member: net.id(1) });
    let stored = group_changes_stored(net.engine_ref(2));
    let renames: Vec<GroupControl> = (0..5_000)
        .map(|i| {
            let action = GroupAction::Rename { name: format!("spam {i}") };
            sign_control(net.engine(1).identity(), group, before_removal.clone(), action).unwrap()
        })
        .collect();
    push_changes(&mut net, 1, 2, group, renames);
    net.run();
    let state = net.engine(2).group(&group).unwrap();
    assert_eq!(state.name, "team");
    assert_eq!(group_changes_stored(net.engine_ref(2)), stored);
    assert!(waiting_changes(net.engine_ref(2)) <= MAX_WAITING_CHANGES_PER_AUTHOR);
    // Not frozen.
    net.group_command(2, group, GroupCommand::Leave);
    assert!(!net.engine(3).group(&group).unwrap().members.contains(&net.id(2)));
    net.group_command(0, group, GroupCommand::Rename { name: "still ours".into() });
    assert_eq!(net.engine(3).group(&group).unwrap().name, "still ours");
    // The waiting share expires.
    net.advance(WAITING_CHANGE_TTL_MS + MAINTENANCE_INTERVAL_MS);
    assert_eq!(waiting_changes(net.engine_ref(2)), 0);
}

/// Issue 14, item 2: a stranger with no group in common sends 200 `Create`s of groups that do
/// not name us: no group record or change is stored, what waits is bounded and expires; and
/// groups a stranger does name us in are kept only up to `MAX_STRANGER_GROUPS`.
#[test]
fn a_stranger_cannot_make_us_store_groups() {
    let mut net = net(3);
    let (stranger, victim) = (2, 0);
    let create = |net: &Net, salt: u16, members: Vec<UserId>| {
        let mut s = [0u8; 16];
        s[..2].copy_from_slice(&salt.to_be_bytes());
        let id = group_id(&net.id(stranger), &s);
        let action = GroupAction::Create { name: format!("junk {salt}"), members, salt: s };
        (id, sign_control(net.engine_ref(stranger).identity(), id, Vec::new(), action).unwrap())
    };
    for salt in 0..200 {
        let (id, op) = create(&net, salt, vec![net.id(stranger), net.id(1)]);
        push_changes(&mut net, stranger, victim, id, vec![op]);
    }
    net.run();
    assert_eq!(group_changes_stored(net.engine_ref(victim)), 0);
    assert!(net.engine(victim).groups().is_empty());
    assert!(waiting_changes(net.engine_ref(victim)) <= MAX_WAITING_FOREIGN_GROUPS);
    net.advance(FOREIGN_CHANGE_TTL_MS + MAINTENANCE_INTERVAL_MS);
    assert_eq!(waiting_changes(net.engine_ref(victim)), 0);

    for salt in 1000..1100 {
        let (id, op) = create(&net, salt, vec![net.id(stranger), net.id(victim)]);
        push_changes(&mut net, stranger, victim, id, vec![op]);
    }
    net.run();
    assert_eq!(net.engine(victim).groups().len(), MAX_STRANGER_GROUPS);
}

/// Issue 14, item 3: a member gossips a message that reuses the id of a 1:1 message from
/// someone else, and one that reuses the id of the victim's own group message: both are
/// refused and the history still shows the originals.
#[test]
fn a_member_cannot_take_over_another_messages_id_through_gossip() {
    let mut net = net(4);
    let group = net.create(0, &[1, 2]);
    let (attacker, victim) = (1, 2);
    // A 1:1 message from 3 to the victim, and the victim's own group message.
    let private = match net.command_and_run(
        3,
        Command::SendText { to: net.id(victim), text: "private".into(), reply_to: None },
    ) {
        CommandResult::Queued(id) => id,
        other => panic!("{other:?}"),
    };
    let own = net.send(victim, group, "mine");
    let me = net.id(attacker);
    let tag = group_tag(&group);
    for id in [private, own] {
        let mut chain = net.engine(attacker).store.own_chain(&group, &me).unwrap().unwrap();
        let content = Content {
            sent_at: net.now,
            body: Body::Text(Text { body: "taken over".into(), reply_to: None }),
        };
        let plaintext = kith_protocol::encode(&content).unwrap();
        let message = chain.seal(tag, &me, &id, &plaintext).unwrap();
        let mut batch = Batch::new();
        batch.put_own_chain(&group, &me, &chain);
        net.engine(attacker).commit(batch).unwrap();
        let bytes = kith_protocol::encode(&GroupEnvelope { id, sender: me, message }).unwrap();
        net.gossip(victim, bytes);
        net.run();
        assert_eq!(net.nodes[victim].verdicts.last(), Some(&Verdict::Ignore));
    }
    let mut text = |id: &MessageId| match net.engine(victim).message(id).unwrap().unwrap().body {
        Some(Body::Text(t)) => t.body,
        other => panic!("{other:?}"),
    };
    assert_eq!(text(&private), "private");
    assert_eq!(text(&own), "mine");
    assert!(!net.texts(victim, &group).contains(&"taken over".to_string()));
}

/// Issue 14, item 4: an outsider floods the topic with keyless messages claiming a member as
/// sender, each with a random chain: only that sender's small unauthenticated share fills
/// (gossip ignores the rest, without penalty), it expires, and a message that came straight
/// from the real sender waits in its own share and opens once its key arrives.
#[test]
fn keyless_messages_fill_only_a_bounded_expiring_share() {
    let mut net = net(4);
    let group = net.create(0, &[1, 2]);
    let (claimed, victim) = (1, 2);
    let sender = net.id(claimed);
    let tag = group_tag(&group);
    for i in 0..1_000u32 {
        let mut chain = crate::group::sender_key::OwnChain::generate(&mut rand::rng());
        let [_, _, hi, lo] = i.to_be_bytes();
        let id = MessageId([hi, lo, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        let message = chain.seal(tag, &sender, &id, &[0u8; 1024]).unwrap();
        // Published by the outsider: gossip is anonymous, nothing ties it to its publisher.
        let bytes = kith_protocol::encode(&GroupEnvelope { id, sender, message }).unwrap();
        net.gossip(victim, bytes);
    }
    net.run();
    assert_eq!(
        net.engine(victim).pending_group_messages(&group).unwrap(),
        MAX_PENDING_UNAUTHENTICATED_PER_SENDER
    );
    assert!(net.nodes[victim].verdicts.iter().all(|v| *v != Verdict::Reject));

    // The real sender starts a new chain and its first message overtakes the key: it came
    // over a connection that authenticated the sender, so it has its own share.
    let mut chain = crate::group::sender_key::OwnChain::generate(&mut rand::rng());
    let skd = Body::SenderKeyDistribution(chain.distribution(group));
    let id = MessageId([0x42; 16]);
    let content = Content {
        sent_at: net.now,
        body: Body::Text(Text { body: "early".into(), reply_to: None }),
    };
    let plaintext = kith_protocol::encode(&content).unwrap();
    let message = chain.seal(tag, &sender, &id, &plaintext).unwrap();
    let copy = Envelope {
        id,
        sender,
        recipient: net.id(victim),
        kind: kith_protocol::envelope::EnvelopeKind::Group(message),
    };
    let bytes = kith_protocol::encode(&copy).unwrap();
    let now = net.now;
    net.engine(victim)
        .handle_input(now, Input::Envelope { bytes, via: Via::Direct(sender), reply: None })
        .unwrap();
    net.run();
    assert_eq!(
        net.engine(victim).pending_group_messages(&group).unwrap(),
        MAX_PENDING_UNAUTHENTICATED_PER_SENDER + 1
    );
    let to = net.id(victim);
    let now = net.now;
    net.engine(claimed).send_reliably(now, to, skd).unwrap();
    net.run();
    assert!(net.texts(victim, &group).contains(&"early".to_string()));
    // The fakes are gone within the hour.
    net.advance(PENDING_UNAUTHENTICATED_TTL_MS + MAINTENANCE_INTERVAL_MS);
    assert_eq!(net.engine(victim).pending_group_messages(&group).unwrap(), 0);
}

/// Weaker-than-claimed list: a sender key for a group we are not in, or from someone who is
/// not a member, is never installed; what waits for a membership to arrive is bounded.
#[test]
fn sender_keys_are_installed_for_members_only() {
    let mut net = net(4);
    let group = net.create(0, &[1]);
    let (outsider, victim) = (3, 1);
    let chains_of = |net: &Net, group: &GroupId| {
        net.engine_ref(victim)
            .store
            .member_chains(group, &net.id(outsider))
            .unwrap()
            .get(7)
            .is_some()
    };
    let mut chain = crate::group::sender_key::OwnChain::generate(&mut rand::rng());
    chain.chain_id = 7;
    let to = net.id(victim);
    let now = net.now;
    net.engine(outsider)
        .send_reliably(now, to, Body::SenderKeyDistribution(chain.distribution(group)))
        .unwrap();
    for i in 0..200u8 {
        let other = GroupId([i; 32]);
        let now = net.now;
        net.engine(outsider)
            .send_reliably(now, to, Body::SenderKeyDistribution(chain.distribution(other)))
            .unwrap();
    }
    net.run();
    assert!(!chains_of(&net, &group), "a non-member's key was installed");
    let waiting = net.engine(victim).store.waiting_keys().unwrap();
    assert!(waiting.len() <= MAX_WAITING_FOREIGN_GROUPS + 1, "{}", waiting.len());
    // Once the outsider is added, the key it sent is used.
    net.group_command(0, group, GroupCommand::Add { member: net.id(outsider) });
    assert!(chains_of(&net, &group));
}

/// Issue 15: a sending chain that has sealed its last message is replaced before the next
/// send (the members get the new chain pairwise), instead of the send failing with an
/// authentication error.
#[test]
fn an_exhausted_sending_chain_is_rotated_and_the_message_still_arrives() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    net.send(0, group, "before");
    let me = net.id(0);
    let mut chain = net.engine(0).store.own_chain(&group, &me).unwrap().unwrap();
    let old_chain = chain.chain_id;
    chain.iteration = u32::MAX;
    let mut batch = Batch::new();
    batch.put_own_chain(&group, &me, &chain);
    net.engine(0).commit(batch).unwrap();

    net.send(0, group, "after");
    let chain = net.engine(0).store.own_chain(&group, &me).unwrap().unwrap();
    assert_ne!(chain.chain_id, old_chain, "a new chain");
    assert_eq!(chain.iteration, 1, "that sealed one message");
    for i in 1..3 {
        assert_eq!(net.texts(i, &group), ["before", "after"], "member {i}");
    }
}

/// Issue 15 (one action path): a group message is not part of the one-to-one conversation
/// with its author, so reacting to it, or editing or deleting it, "with the author" is refused
/// instead of going out pairwise and changing the group message.
#[test]
fn a_group_message_is_not_in_the_conversation_with_its_author() {
    let mut net = net(2);
    let group = net.create(0, &[1]);
    let id = net.send(1, group, "in the group");
    let author = net.id(1);
    let now = net.now;
    let before = net.engine(0).message(&id).unwrap().unwrap();
    let react = Command::React { to: author, target: id, emoji: "👍".into(), remove: false };
    assert_eq!(net.engine(0).handle_command(now, react), Err(CommandError::UnknownMessage));
    let mine = net.send(0, group, "mine");
    let edit = Command::Edit { to: author, target: mine, text: "changed".into() };
    assert_eq!(net.engine(0).handle_command(now, edit), Err(CommandError::UnknownMessage));
    let delete = Command::Delete { to: author, target: mine };
    assert_eq!(net.engine(0).handle_command(now, delete), Err(CommandError::UnknownMessage));
    assert_eq!(net.engine(0).message(&id).unwrap().unwrap(), before);
    // Through the group, the same reaction is taken.
    let react = GroupCommand::React { target: id, emoji: "👍".into(), remove: false };
    net.group_command(0, group, react);
    assert_eq!(net.engine(1).message(&id).unwrap().unwrap().reactions.len(), 1);
}

/// A member someone else added holds an invitation until it answers: reading its messages
/// tells no one; accepting (kept across a restart until then) lets read receipts go out;
/// declining leaves the group.
#[test]
fn an_added_member_is_invited_and_answers_before_receipts_go_out() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    let admin = net.id(0);
    assert_eq!(net.engine(0).group(&group).unwrap().invited_by, None, "its creator");
    for i in [1, 2] {
        assert_eq!(net.engine(i).group(&group).unwrap().invited_by, Some(admin), "member {i}");
    }
    net.restart(1);
    assert_eq!(net.engine(1).group(&group).unwrap().invited_by, Some(admin), "kept on disk");

    let first = net.send(0, group, "welcome");
    net.advance(GROUP_RECEIPT_DELAY_MS);
    net.group_command(1, group, GroupCommand::MarkRead { ids: vec![first] });
    let message = net.engine(0).message(&first).unwrap().unwrap();
    assert_eq!(message.status, MessageStatus::Delivered, "reading an invitation says nothing");
    assert!(message.receipts.iter().all(|r| r.kind == ReceiptKind::Delivered));

    net.group_command(1, group, GroupCommand::Accept);
    assert_eq!(net.engine(1).group(&group).unwrap().invited_by, None);
    net.restart(1);
    assert_eq!(net.engine(1).group(&group).unwrap().invited_by, None, "the answer is on disk");
    let second = net.send(0, group, "glad you stayed");
    net.group_command(1, group, GroupCommand::MarkRead { ids: vec![second] });
    let message = net.engine(0).message(&second).unwrap().unwrap();
    assert!(message.receipts.iter().any(|r| r.member == net.id(1) && r.kind == ReceiptKind::Read));

    net.group_command(2, group, GroupCommand::Decline);
    assert!(!net.members(0, &group).contains(&net.id(2)), "declining leaves");
    assert!(!net.engine(2).group(&group).unwrap().joined);
    assert_eq!(net.engine(2).group(&group).unwrap().invited_by, None);
}

/// Speaking in a group accepts its invitation; blocking whoever added us declines theirs.
#[test]
fn sending_accepts_an_invitation_and_blocking_its_sender_declines_it() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    // A command that fails answers nothing (here: a member who is no admin renames).
    let rename = Command::Group { group, command: GroupCommand::Rename { name: "x".into() } };
    assert_eq!(net.engine(1).handle_command(T, rename), Err(CommandError::NotAnAdmin));
    assert_eq!(net.engine(1).group(&group).unwrap().invited_by, Some(net.id(0)));
    net.send(1, group, "hi all");
    assert_eq!(net.engine(1).group(&group).unwrap().invited_by, None);

    let admin = net.id(0);
    net.command_and_run(2, Command::Block { user: admin, blocked: true });
    assert!(!net.engine(2).group(&group).unwrap().joined, "blocked sender's invitation declined");
    // Nothing goes to the blocked admin; the other member hears of it.
    assert!(!net.members(1, &group).contains(&net.id(2)));
    assert!(net.members(1, &group).contains(&net.id(1)), "the others stay");
}

/// A stranger's direct messages are a message request: read without a read receipt until
/// the user names them.
#[test]
fn a_message_request_is_read_without_a_receipt_until_accepted() {
    let mut net = net(2);
    let stranger = net.user(1);
    let first = net.send_text(1, 0, "hello, do you remember me?");
    net.run();
    let request = net.engine(0).contact(&stranger).unwrap().unwrap();
    assert_eq!(request.name, None, "a stranger stays unnamed");
    net.command_and_run(0, Command::MarkRead { peer: stranger, ids: vec![first] });
    assert_eq!(net.engine(1).message(&first).unwrap().unwrap().status, MessageStatus::Delivered);

    let user = stranger;
    net.command_and_run(0, Command::AddContact { user, name: "sam".into(), relays: vec![] });
    let second = net.send_text(1, 0, "it's Sam");
    net.run();
    net.command_and_run(0, Command::MarkRead { peer: stranger, ids: vec![second] });
    assert_eq!(net.engine(1).message(&second).unwrap().unwrap().status, MessageStatus::Read);
}

/// Our groups' names are unique (case aside): creating or renaming to a name taken by a group
/// we are in is refused; the name of a group we left is free again.
#[test]
fn a_group_name_we_already_use_is_refused() {
    let mut net = net(2);
    let first = net.create(0, &[1]);
    let members = vec![net.id(1)];
    let again = Command::CreateGroup { name: " Team ".into(), members: members.clone() };
    assert_eq!(
        net.engine(0).handle_command(T, again),
        Err(CommandError::GroupNameTaken("Team".into()))
    );
    let other = Command::CreateGroup { name: "other".into(), members };
    let CommandResult::Group(second) = net.command_and_run(0, other) else { panic!() };
    let rename =
        Command::Group { group: second, command: GroupCommand::Rename { name: "TEAM".into() } };
    assert!(matches!(
        net.engine(0).handle_command(T, rename),
        Err(CommandError::GroupNameTaken(_))
    ));
    // Renaming a group to its own name (another case) is no conflict.
    let same =
        Command::Group { group: first, command: GroupCommand::Rename { name: "Team".into() } };
    assert!(net.engine(0).handle_command(T, same).is_ok());
    net.group_command(0, first, GroupCommand::Leave);
    let reuse = Command::CreateGroup { name: "team".into(), members: vec![net.id(1)] };
    assert!(matches!(net.command_and_run(0, reuse), CommandResult::Group(_)));
}

/// A member removed before it answered its invitation has nothing left to answer, after a
/// restart too.
#[test]
fn removal_before_an_answer_ends_the_invitation() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    assert!(net.engine(2).group(&group).unwrap().invited_by.is_some());
    let member = net.id(2);
    net.group_command(0, group, GroupCommand::Remove { member });
    assert!(!net.engine(2).group(&group).unwrap().joined);
    assert_eq!(net.engine(2).group(&group).unwrap().invited_by, None);
    net.restart(2);
    assert_eq!(net.engine(2).group(&group).unwrap().invited_by, None, "after a restart");
}

/// A group's disappearing-message timer: any member sets it for all with a message everyone
/// sees; each member's copy of a later message goes the timer after that member read it (the
/// author's after it was sent), and an unread copy waits for its reader.
#[test]
fn a_groups_disappearing_timer_is_set_by_any_member_for_all() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    let setting = net.group_command(1, group, GroupCommand::SetDisappearing { seconds: 30 });
    let CommandResult::Queued(setting) = setting else { panic!("{setting:?}") };
    for i in 0..3 {
        assert_eq!(net.engine(i).group_disappearing_timer(&group), 30, "member {i}");
        let message = net.engine(i).message(&setting).unwrap().expect("the setting is shown");
        assert_eq!(message.body, Some(Body::ExpireTimer(ExpireTimer { seconds: 30 })));
    }
    let before = net.texts(2, &group).len();
    let id = net.send(0, group, "gone in 30 s");
    net.group_command(1, group, GroupCommand::MarkRead { ids: vec![id] });
    net.advance(31_000);
    assert!(net.engine(0).message(&id).unwrap().is_none(), "the author's copy");
    assert!(net.engine(1).message(&id).unwrap().is_none(), "the reader's copy");
    assert!(net.engine(2).message(&id).unwrap().is_some(), "unread: it waits");
    net.restart(2);
    net.group_command(2, group, GroupCommand::MarkRead { ids: vec![id] });
    net.advance(31_000);
    assert!(net.engine(2).message(&id).unwrap().is_none());
    assert_eq!(net.texts(2, &group).len(), before);
    assert!(net.engine(2).message(&setting).unwrap().is_some(), "the setting stays");
}

/// A member whose sender keys are gone (a profile restored from a backup, which holds none):
/// it sends again under a new chain of its own, and it asks a member whose messages it cannot
/// open for that member's key once they have waited long enough, then reads it again.
#[test]
fn a_member_without_sender_keys_sends_under_a_new_one_and_asks_for_the_others() {
    let mut net = net(3);
    let group = net.create(0, &[1, 2]);
    for i in 0..3 {
        net.send(i, group, &format!("hello from {i}"));
    }
    net.advance(GROUP_RECEIPT_DELAY_MS);
    // Member 2 loses every sender key, its own included, as a restored profile has none.
    let holders = net.engine(2).store.chain_holders(&group).unwrap();
    let mut batch = Batch::new();
    for holder in &holders {
        batch.delete_chains(&group, holder);
    }
    net.engine(2).commit(batch).unwrap();
    net.engine(2).flush().unwrap();
    net.restart(2);
    net.run();

    // It can still speak: a new chain, handed to everyone first.
    net.send(2, group, "back from a backup");
    for i in 0..2 {
        assert!(net.texts(i, &group).contains(&"back from a backup".to_owned()), "member {i}");
    }
    // What member 0 sends waits at member 2; once it has waited, member 2 asks for the key.
    net.send(0, group, "can you read this?");
    assert!(!net.texts(2, &group).contains(&"can you read this?".to_owned()));
    net.advance(SYNC_INTERVAL_MS);
    net.send(0, group, "and this?");
    net.run();
    net.send(0, group, "now you can");
    assert!(net.texts(2, &group).contains(&"now you can".to_owned()), "the key came back");
}
