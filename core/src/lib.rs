//! # kith-core (in progress)
pub mod crypto;
pub mod fingerprint;
pub mod identity;
pub mod prekeys;
pub mod ratchet;
pub mod session;
pub mod x3dh;
