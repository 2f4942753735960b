//! The versioned, size-capped postcard codec every Kith frame goes through.
//!
//! A frame on the wire is one version byte ([`WIRE_VERSION`]) followed by the postcard encoding
//! of the frame. Decoding checks, in this order and before any allocation that depends on the
//! input: the total length against [`Frame::MAX_BYTES`], the version byte, the postcard body
//! (unknown enum variants are reported as such), that no bytes trail the body, that the body is
//! the canonical (shortest) encoding, and finally the frame's own semantic limits
//! ([`Frame::validate`]). Every frame value therefore has exactly one encoding. Encoding runs the same checks, so Kith
//! never emits a frame that a Kith peer would refuse.

use serde::{Serialize, de::DeserializeOwned};

/// The wire version byte that leads every frame.
pub const WIRE_VERSION: u8 = 1;

/// A type that travels on the wire as one self-contained frame.
pub trait Frame: Serialize + DeserializeOwned {
    /// Human-readable frame name used in errors.
    const NAME: &'static str;
    /// Largest encoded size in bytes, version byte included. Checked before decoding.
    const MAX_BYTES: usize;

    /// Semantic limits postcard cannot express (string lengths, list sizes, non-empty fields).
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

/// Why a structurally well-formed frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// A string or byte field is longer than its limit.
    #[error("field `{field}` has {len} bytes, more than the limit of {max}")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Actual length in bytes.
        len: usize,
        /// Limit in bytes.
        max: usize,
    },
    /// A byte field is shorter than its minimum.
    #[error("field `{field}` has {len} bytes, fewer than the minimum of {min}")]
    TooShort {
        /// Field name.
        field: &'static str,
        /// Actual length in bytes.
        len: usize,
        /// Minimum in bytes.
        min: usize,
    },
    /// A list has more entries than its limit.
    #[error("field `{field}` has {count} entries, more than the limit of {max}")]
    TooMany {
        /// Field name.
        field: &'static str,
        /// Actual number of entries.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// A field that must not be empty is empty.
    #[error("field `{field}` is empty")]
    Empty {
        /// Field name.
        field: &'static str,
    },
    /// A field holds a value outside its domain.
    #[error("field `{field}` holds a value outside its domain")]
    OutOfRange {
        /// Field name.
        field: &'static str,
    },
}

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all (not even the version byte).
    #[error("{frame} frame is empty")]
    Empty {
        /// Frame name.
        frame: &'static str,
    },
    /// The input is larger than the frame's hard limit; nothing was parsed.
    #[error("{frame} frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Frame name.
        frame: &'static str,
        /// Input length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The leading version byte is not one this build speaks.
    #[error("{frame} frame has unsupported wire version {version}")]
    UnsupportedVersion {
        /// Frame name.
        frame: &'static str,
        /// Version byte found.
        version: u8,
    },
    /// An enum discriminant names a variant this build does not know.
    #[error("{frame} frame has an unknown variant")]
    UnknownVariant {
        /// Frame name.
        frame: &'static str,
    },
    /// The body is not a valid encoding (truncated, bad varint, bad UTF-8, …).
    #[error("{frame} frame is malformed")]
    Malformed {
        /// Frame name.
        frame: &'static str,
    },
    /// The body uses a longer encoding than the canonical one (e.g. a padded varint).
    #[error("{frame} frame is not canonically encoded")]
    NonCanonical {
        /// Frame name.
        frame: &'static str,
    },
    /// A valid body is followed by extra bytes.
    #[error("{frame} frame has {extra} trailing bytes")]
    TrailingBytes {
        /// Frame name.
        frame: &'static str,
        /// Number of extra bytes.
        extra: usize,
    },
    /// The body decoded but breaks a semantic limit.
    #[error("{frame} frame is invalid: {reason}")]
    Invalid {
        /// Frame name.
        frame: &'static str,
        /// The broken limit.
        reason: Invalid,
    },
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoding would exceed the frame's hard limit.
    #[error("{frame} frame would take {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Frame name.
        frame: &'static str,
        /// Encoded length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The frame breaks a semantic limit.
    #[error("{frame} frame is invalid: {reason}")]
    Invalid {
        /// Frame name.
        frame: &'static str,
        /// The broken limit.
        reason: Invalid,
    },
    /// The serializer failed (only possible for types postcard cannot express).
    #[error("{frame} frame could not be serialized")]
    Serialize {
        /// Frame name.
        frame: &'static str,
    },
}

/// Encodes `frame` as version byte ‖ postcard body.
pub fn encode<F: Frame>(frame: &F) -> Result<Vec<u8>, EncodeError> {
    frame.validate().map_err(|reason| EncodeError::Invalid { frame: F::NAME, reason })?;
    let bytes = postcard::to_extend(frame, vec![WIRE_VERSION])
        .map_err(|_| EncodeError::Serialize { frame: F::NAME })?;
    if bytes.len() > F::MAX_BYTES {
        return Err(EncodeError::TooLarge { frame: F::NAME, len: bytes.len(), max: F::MAX_BYTES });
    }
    Ok(bytes)
}

/// Decodes a frame from `bytes`, checking size, version, encoding, trailing bytes and limits.
pub fn decode<F: Frame>(bytes: &[u8]) -> Result<F, DecodeError> {
    if bytes.len() > F::MAX_BYTES {
        return Err(DecodeError::TooLarge { frame: F::NAME, len: bytes.len(), max: F::MAX_BYTES });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty { frame: F::NAME })?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion { frame: F::NAME, version });
    }
    let (frame, rest) = postcard::take_from_bytes::<F>(body).map_err(|e| match e {
        // Derived enums report an out-of-range variant index as a custom serde error; it is the
        // only custom error Kith's wire types raise (fixed arrays are tuples, so a short one is
        // an unexpected end, not a length error).
        postcard::Error::DeserializeBadEnum | postcard::Error::SerdeDeCustom => {
            DecodeError::UnknownVariant { frame: F::NAME }
        }
        _ => DecodeError::Malformed { frame: F::NAME },
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { frame: F::NAME, extra: rest.len() });
    }
    // The canonical encoding is the unique shortest one; any padding shows up as extra length.
    if postcard::experimental::serialized_size(&frame).ok() != Some(body.len()) {
        return Err(DecodeError::NonCanonical { frame: F::NAME });
    }
    frame.validate().map_err(|reason| DecodeError::Invalid { frame: F::NAME, reason })?;
    Ok(frame)
}

/// Checks a string or byte field against its limit.
pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max { Err(Invalid::TooLong { field, len, max }) } else { Ok(()) }
}

/// Checks a list field against its limit.
pub(crate) fn check_count(field: &'static str, count: usize, max: usize) -> Result<(), Invalid> {
    if count > max { Err(Invalid::TooMany { field, count, max }) } else { Ok(()) }
}

/// Checks a field that must not be empty.
pub(crate) fn check_non_empty(field: &'static str, len: usize) -> Result<(), Invalid> {
    if len == 0 { Err(Invalid::Empty { field }) } else { Ok(()) }
}
