//! The engine's one test harness, `kith_core::testing` (a simulated network of engines on
//! virtual time with loss, delay, duplication, crashes and groups), and the envelope fuzz
//! target's replay.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod envelope_target;

pub use kith_core::testing::*;
