//! Disappearing messages on virtual time: the timer agreed in-band, each copy gone the timer
//! after it was read (after it was sent, for the sender's), also across restarts.

use kith_protocol::content::ExpireTimer;
use kith_protocol::limits::MAX_EXPIRE_SECONDS;

use super::*;
use crate::testing::{Faults, Net};

const MINUTE: u64 = 60_000;

fn pair() -> (Net, UserId, UserId) {
    let mut net = Net::new(2, Faults::NONE, 7);
    net.introduce_all();
    let (alice, bob) = (net.user(0), net.user(1));
    (net, alice, bob)
}

/// The ids of a conversation's messages on `node`, oldest first.
fn ids(net: &mut Net, node: usize, peer: &UserId) -> Vec<MessageId> {
    net.engine(node).history(peer, None, 1000).unwrap().into_iter().map(|m| m.id).collect()
}

/// The messages `node` deleted because they disappeared.
fn expired(net: &mut Net, node: usize) -> Vec<MessageId> {
    net.nodes[node]
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::MessagesDeleted { ids, reason: DeleteReason::Expired, .. } => Some(ids),
            _ => None,
        })
        .flatten()
        .collect()
}

fn set_timer(net: &mut Net, node: usize, peer: UserId, seconds: u32) -> CommandResult {
    let result = net.command(node, Command::SetDisappearing { peer, seconds });
    net.run();
    result
}

#[test]
fn a_timer_set_by_one_side_is_a_message_both_see_and_both_follow() {
    let (mut net, alice, bob) = pair();
    let before = net.send_text(0, 1, "before the timer");
    net.run();
    let CommandResult::Queued(setting) = set_timer(&mut net, 0, bob, 60) else { panic!() };
    assert_eq!(net.engine(0).disappearing_timer(&bob), 60);
    assert_eq!(net.engine(1).disappearing_timer(&alice), 60);
    // The setting is in both histories, as Alice's message.
    let at_bob = net.engine(1).message(&setting).unwrap().expect("Bob has the setting");
    assert_eq!(at_bob.body, Some(Body::ExpireTimer(ExpireTimer { seconds: 60 })));
    assert_eq!(at_bob.direction, Direction::Incoming);
    assert!(net.engine(0).message(&setting).unwrap().is_some());
    assert!(
        net.nodes[1].take_events().iter().any(|e| matches!(
            e,
            Event::TimerChanged { peer, group: None, seconds: 60 } if *peer == alice
        )),
        "Bob is told"
    );
    // Setting the same timer again sends nothing.
    assert_eq!(set_timer(&mut net, 1, alice, 60), CommandResult::Done);

    // Bob's messages follow the timer Alice set; Alice's earlier one does not disappear.
    let reply = net.send_text(1, 0, "a reply under the timer");
    net.run();
    net.command(0, Command::MarkRead { peer: bob, ids: vec![reply] });
    net.advance(61_000);
    assert!(net.engine(1).message(&reply).unwrap().is_none(), "gone from the sender's store");
    assert!(net.engine(0).message(&reply).unwrap().is_none(), "gone from the reader's store");
    assert!(net.engine(0).message(&before).unwrap().is_some());
    assert!(net.engine(1).message(&before).unwrap().is_some());
    assert!(net.engine(0).message(&setting).unwrap().is_some(), "settings stay");

    // Off again (by Bob): later messages stay.
    set_timer(&mut net, 1, alice, 0);
    assert_eq!(net.engine(0).disappearing_timer(&bob), 0);
    let after = net.send_text(0, 1, "after the timer");
    net.run();
    net.command(1, Command::MarkRead { peer: alice, ids: vec![after] });
    net.advance(10 * MINUTE);
    assert!(net.engine(0).message(&after).unwrap().is_some());
    assert!(net.engine(1).message(&after).unwrap().is_some());
}

#[test]
fn each_copy_disappears_the_timer_after_it_was_read_or_sent_also_across_restarts() {
    let (mut net, alice, bob) = pair();
    set_timer(&mut net, 0, bob, 60);
    net.nodes[0].take_events();
    net.nodes[1].take_events();
    let secret = net.send_text(0, 1, "this will self-destruct");
    net.run();
    assert_eq!(net.engine(0).message(&secret).unwrap().unwrap().status, MessageStatus::Delivered);

    // Bob reads it 30 s later.
    net.advance(30_000);
    net.command(1, Command::MarkRead { peer: alice, ids: vec![secret] });
    net.run();

    // 60 s after sending: gone from Alice's store, still on Bob's (read 30 s ago).
    net.advance(31_000);
    assert!(net.engine(0).message(&secret).unwrap().is_none());
    assert!(!ids(&mut net, 0, &bob).contains(&secret));
    assert_eq!(expired(&mut net, 0), vec![secret]);
    assert!(net.engine(1).message(&secret).unwrap().is_some());

    // Bob is stopped before his copy's time and opens again after it: gone at opening.
    net.stop(1);
    net.advance(MINUTE);
    net.restart(1);
    assert!(net.engine(1).message(&secret).unwrap().is_none(), "gone as it opens");
    net.run();
    assert_eq!(expired(&mut net, 1), vec![secret]);
    for node in 0..2 {
        assert!(net.engine(node).store.expiring().unwrap().is_empty(), "node {node}");
    }
}

#[test]
fn an_unread_message_waits_for_its_reader_and_a_restart_keeps_its_clock() {
    let (mut net, alice, _bob) = pair();
    set_timer(&mut net, 1, alice, 120);
    let unread = net.send_text(0, 1, "read me later");
    net.run();
    // Alice's copy goes 120 s after sending; Bob's waits until he reads it.
    net.advance(10 * MINUTE);
    assert!(net.engine(0).message(&unread).unwrap().is_none());
    assert!(net.engine(1).message(&unread).unwrap().is_some(), "unread: still there");

    // Bob reads it, crashes a minute later, and comes back: the clock he started holds.
    net.command(1, Command::MarkRead { peer: alice, ids: vec![unread] });
    net.run();
    net.advance(MINUTE);
    net.crash(1);
    net.restart(1);
    net.run();
    assert!(net.engine(1).message(&unread).unwrap().is_some());
    net.advance(61_000);
    assert!(net.engine(1).message(&unread).unwrap().is_none());
    assert!(ids(&mut net, 1, &alice).len() == 1, "only the setting is left");
}

#[test]
fn a_bad_timer_is_refused_and_changes_nothing() {
    let (mut net, _alice, bob) = pair();
    let stranger = UserId([7; 32]);
    for (peer, seconds) in [(bob, MAX_EXPIRE_SECONDS + 1), (stranger, 60)] {
        let now = net.now;
        let result = net.engine(0).handle_command(now, Command::SetDisappearing { peer, seconds });
        assert!(result.is_err(), "{seconds} s for {peer:?}");
    }
    net.run();
    assert_eq!(net.engine(0).disappearing_timer(&bob), 0);
    assert!(ids(&mut net, 0, &bob).is_empty(), "nothing was sent");
}

#[test]
fn an_older_setting_arriving_late_does_not_override_a_newer_one() {
    let (mut net, alice, bob) = pair();
    set_timer(&mut net, 0, bob, 60);
    // Both change it before either hears of the other's change; Bob's is the later by the
    // senders' clocks, so it wins on both sides (Alice's arrives at Bob after his own).
    let now = net.now;
    net.command(0, Command::SetDisappearing { peer: bob, seconds: 300 });
    net.engine(1)
        .handle_command(now + 1_000, Command::SetDisappearing { peer: alice, seconds: 0 })
        .unwrap();
    net.run();
    assert_eq!(net.engine(0).disappearing_timer(&bob), 0);
    assert_eq!(net.engine(1).disappearing_timer(&alice), 0, "the older setting lost");
}
