//! The end of a driver turn: act on the engine's outputs until it has none left.
//!
//! Acting may feed the engine again (a delivery that cannot start, a group message's
//! publication reporting the members gossip did not reach), and what that produces may wait for
//! a flush (the engine holds outputs that promise state until it is durable). Those are taken
//! in the same turn, after one more flush, rather than left to the next turn, which may be the
//! next timer, seconds away: a group message whose members are reachable only through relays
//! has its mailbox copies leave at once.

use kith_core::engine::Output;
use kith_core::store::StoreError;

/// What a turn does with the engine's outputs (the driver, or a test's stand-in).
pub(crate) trait Turn {
    /// The engine's next ready output.
    fn poll_output(&mut self) -> Option<Output>;
    /// Makes the engine's writes durable, releasing the outputs held for them.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Carries out a batch of outputs (which may feed the engine again).
    fn act_on(&mut self, outputs: Vec<Output>);
}

/// Acts on the engine's outputs, flushing again whenever acting produced more, until the engine
/// has nothing ready after a flush. Call after the turn's first flush succeeded. A failed flush
/// ends the turn (the driver's storage health reports it); what it held stays held for the next
/// one (nothing is promised that is not on disk).
pub(crate) fn settle(turn: &mut impl Turn) {
    let mut flushed = true;
    loop {
        let outputs: Vec<Output> = std::iter::from_fn(|| turn.poll_output()).collect();
        if outputs.is_empty() {
            if flushed {
                return;
            }
            flushed = true;
            if turn.flush().is_err() {
                return;
            }
            continue;
        }
        flushed = false;
        turn.act_on(outputs);
    }
}

#[cfg(test)]
mod tests {
    use kith_core::engine::{Command, CommandResult, GroupCommand, Input};
    use kith_core::testing::{Faults, Net, SimEngine};
    use kith_protocol::UserId;

    use super::*;

    /// A publisher whose group messages gossip reaches nobody (every member is reachable only
    /// through relays), on the simulated network's virtual clock, which never moves here.
    struct Publisher<'a> {
        engine: &'a mut SimEngine,
        now: u64,
        /// The members each delivery went to, in the turn that made it.
        delivered_to: Vec<UserId>,
    }

    impl Turn for Publisher<'_> {
        fn poll_output(&mut self) -> Option<Output> {
            self.engine.poll_output()
        }

        fn flush(&mut self) -> Result<(), StoreError> {
            self.engine.flush()
        }

        fn act_on(&mut self, outputs: Vec<Output>) {
            for output in outputs {
                match output {
                    Output::Publish(p) if !p.ephemeral => {
                        let input = Input::GroupPublished { id: p.id, unreached: p.members };
                        self.engine.handle_input(self.now, input).unwrap();
                    }
                    Output::Deliver(d) => self.delivered_to.push(d.to),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn a_group_message_gossip_did_not_deliver_has_its_copies_leave_in_the_same_turn() {
        let mut net = Net::new(3, Faults::NONE, 7);
        net.introduce_all();
        let members = vec![net.nodes[1].user, net.nodes[2].user];
        let CommandResult::Group(group) =
            net.command(0, Command::CreateGroup { name: "ropes".into(), members: members.clone() })
        else {
            panic!("no group");
        };
        net.run();
        let now = net.now;
        let engine = net.nodes[0].engine();
        let send = GroupCommand::Send { text: "rope at six".into(), reply_to: None };
        let CommandResult::Queued(_) =
            engine.handle_command(now, Command::Group { group, command: send }).unwrap()
        else {
            panic!("not queued");
        };
        engine.flush().unwrap();
        let mut turn = Publisher { engine, now, delivered_to: Vec::new() };
        settle(&mut turn);
        let mut delivered_to = turn.delivered_to;
        delivered_to.sort();
        let mut want = members;
        want.sort();
        // Both copies left within the turn, at the same virtual instant: no timer, no later
        // turn was needed.
        assert_eq!(delivered_to, want);
        assert!(turn.engine.poll_output().is_none(), "nothing left behind for the next turn");
    }
}
