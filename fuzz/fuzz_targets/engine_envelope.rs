//! Arbitrary bytes as envelopes into an engine with live sessions: no panic, and a refused
//! envelope leaves the store byte-for-byte unchanged. See `core/tests/support/envelope_target.rs`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, clippy::all)]
#[path = "../../core/tests/support/mod.rs"]
mod support;

use support::envelope_target::EnvelopeTarget;

fuzz_target!(|input: &[u8]| {
    static TARGET: OnceLock<EnvelopeTarget> = OnceLock::new();
    TARGET.get_or_init(EnvelopeTarget::new).run(input);
});
