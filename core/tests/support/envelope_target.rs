//! The `engine_envelope` fuzz target's setup and check, shared with its seed-replay test.
//!
//! Bob's engine holds live sessions with Alice (built on the simulated network). Each input is
//! fed to a fresh copy of Bob as envelope bytes, through a relay or as if sent directly by
//! Alice (first byte). Whatever the bytes, nothing panics, and unless Bob acknowledges the
//! envelope as accepted his store is byte-for-byte unchanged.

use kith_core::engine::{Config, Engine, Input, Output, Reply, ReplyToken, Via};
use kith_core::store::{Backend, MemoryBackend, RawWrite, Store};
use kith_protocol::UserId;
use kith_protocol::direct::AckResult;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::{Faults, Net, T0};

pub struct EnvelopeTarget {
    bob: Vec<RawWrite>,
    alice: UserId,
    now: u64,
    /// Real envelopes from Alice that Bob has not seen yet (good fuzzing seeds).
    pub seeds: Vec<Vec<u8>>,
}

impl EnvelopeTarget {
    pub fn new() -> Self {
        let mut net = Net::new(2, Faults::NONE, 2024);
        net.introduce_all();
        for i in 0..3 {
            net.send_text(0, 1, &format!("hello {i}"));
        }
        net.run_until_quiet(u64::MAX);
        net.send_text(1, 0, "hi back");
        net.run_until_quiet(u64::MAX);
        // Two more from Alice that Bob never receives: ratchet messages on a new chain.
        net.sniff = true;
        net.nodes[1].online = false;
        net.send_text(0, 1, "unseen 1");
        net.send_text(0, 1, "unseen 2");
        net.run_until_quiet(net.now + 10);
        let seeds =
            net.sniffed.iter().filter(|(f, _, _)| *f == 0).map(|(_, _, b)| b.clone()).collect();
        let bob = net.nodes[1].engine().store().dump().unwrap();
        EnvelopeTarget { bob, alice: net.nodes[0].user, now: net.now, seeds }
    }

    pub fn run(&self, input: &[u8]) {
        let (via, bytes) = match input.split_first() {
            Some((b, rest)) if b % 2 == 0 => (Via::Direct(self.alice), rest),
            Some((_, rest)) => (Via::Relay, rest),
            None => (Via::Relay, input),
        };
        let backend = MemoryBackend::new();
        backend.apply(&self.bob).unwrap();
        let store = Store::new(Box::new(backend));
        let mut bob =
            Engine::open(store, ChaCha20Rng::seed_from_u64(7), self.now, Config::default())
                .unwrap();
        bob.flush().unwrap();
        while bob.poll_output().is_some() {}
        let before = bob.store().dump().unwrap();

        bob.handle_input(
            self.now,
            Input::Envelope { bytes: bytes.to_vec(), via, reply: Some(ReplyToken(1)) },
        )
        .unwrap();
        bob.flush().unwrap();
        let mut accepted = false;
        while let Some(output) = bob.poll_output() {
            if let Output::Reply { reply: Reply::Ack(ack), .. } = output {
                accepted = ack.result == AckResult::Accepted;
            }
        }
        if !accepted {
            assert!(bob.store().dump().unwrap() == before, "a refused envelope changed the store");
        }
        let _ = T0;
    }
}
