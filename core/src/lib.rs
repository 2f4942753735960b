//! # kith-core (in progress)
pub mod crypto;
pub mod engine;
pub mod fingerprint;
pub mod identity;
pub mod model;
pub mod prekeys;
pub mod ratchet;
pub mod session;
pub mod store;
pub mod x3dh;
