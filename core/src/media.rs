//! Attachments: a file sealed in fixed-size chunks under a random per-attachment key.
//!
//! Every chunk is sealed with ChaCha20-Poly1305. The nonce is the chunk index (each index is
//! sealed exactly once under a key that seals nothing else, so no nonce repeats); the
//! associated data binds the media id, the index and whether this is the last chunk, so a
//! chunk moved to another position, spliced in from another attachment, or a stream cut short
//! or extended after its last chunk does not open. Each sealed chunk is addressed by its BLAKE3
//! hash, and the [`MediaManifest`] that travels in the ratchet lists those hashes: a receiver
//! checks a chunk's length and hash before it decrypts, and can take chunks from any source,
//! however untrusted.
//!
//! ```
//! use kith_core::media::{Sealer, open_verified, Layout};
//!
//! let file = vec![7u8; 1_000_000];
//! let mut sealer = Sealer::new(&mut rand::rng(), file.len() as u64, 256 * 1024)?;
//! let mut sealed = Vec::new();
//! for chunk in file.chunks(256 * 1024) {
//!     sealed.push(sealer.seal_next(chunk)?);
//! }
//! let manifest = sealer.finish("photo.jpg".into(), "image/jpeg".into(), None)?;
//!
//! // The receiver, with the manifest from the ratchet and chunks from anywhere:
//! let layout = Layout::of(&manifest, 2 << 30)?;
//! let mut received = Vec::new();
//! for (index, chunk) in sealed.into_iter().enumerate() {
//!     received.extend(open_verified(&manifest, &layout, index as u32, chunk)?);
//! }
//! assert_eq!(received, file);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use kith_protocol::content::{MediaManifest, SymmetricKey};
use kith_protocol::limits::{MAX_CHUNK_BYTES, MAX_MEDIA_CHUNKS};
use kith_protocol::{ChunkHash, MediaId};

use crate::crypto::aead::{self, TAG_LEN};

/// Plaintext bytes per chunk of the attachments this node sends.
///
/// 512 KiB: the smallest size at which a 2 GiB attachment (the default maximum) stays within
/// [`MAX_MEDIA_CHUNKS`]; `cargo bench -p kith-node --bench media` measured 256 KiB and 1 MiB
/// chunks within a few percent of it on loopback, while smaller chunks cost more per-request
/// overhead and larger ones more memory per chunk in flight.
pub const CHUNK_BYTES: u32 = 512 * 1024;

/// Bytes a sealed chunk adds to its plaintext (the Poly1305 tag).
pub const SEAL_OVERHEAD: usize = TAG_LEN;

/// Domain separator at the start of every chunk's associated data.
const AD_LABEL: &[u8] = b"kith media chunk v1";

/// Why an attachment cannot be sealed or received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The attachment is larger than the configured maximum.
    #[error("the attachment is {size} bytes, above the maximum of {max} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The maximum.
        max: u64,
    },
    /// The chunk size is zero or a sealed chunk would not fit a media frame.
    #[error("chunk size {0} is out of range")]
    BadChunkSize(u32),
    /// At this chunk size the attachment needs more chunks than a manifest may list.
    #[error("{chunks} chunks needed, at most {MAX_MEDIA_CHUNKS} allowed")]
    TooManyChunks {
        /// How many it would need.
        chunks: u64,
    },
    /// The manifest's hash list does not cover its size.
    #[error("the manifest lists {listed} chunks for {expected} needed")]
    ChunkCount {
        /// Listed hashes.
        listed: usize,
        /// Chunks `size` needs.
        expected: u64,
    },
    /// A chunk of the wrong length was given to the sealer, or the sealer was finished early.
    #[error("chunk {index} should hold {expected} bytes")]
    WrongPlaintext {
        /// The chunk.
        index: u32,
        /// Its expected plaintext length.
        expected: usize,
    },
    /// Every chunk is already sealed.
    #[error("every chunk is already sealed")]
    Complete,
}

/// Why a received chunk was refused. Nothing of it may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// No chunk has this index in the manifest.
    #[error("chunk index {0} is out of range")]
    NoSuchIndex(u32),
    /// The chunk is shorter or longer than its place requires (truncated or extended).
    #[error("chunk {index} is {got} bytes, expected {expected}")]
    WrongLength {
        /// The chunk.
        index: u32,
        /// Its length.
        got: usize,
        /// The length its position requires.
        expected: usize,
    },
    /// The chunk's BLAKE3 hash is not the one the manifest lists for its index.
    #[error("chunk {0} does not match its hash")]
    HashMismatch(u32),
    /// The chunk did not authenticate under the key, media id, index and last-chunk flag.
    #[error("chunk {0} failed authentication")]
    Unauthentic(u32),
}

/// How an attachment of a given size is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: u64,
    chunk_size: u32,
    chunks: u32,
}

impl Layout {
    /// The layout of `size` bytes in chunks of `chunk_size` (an empty file is one empty chunk,
    /// so that even it has a last chunk whose loss is detected).
    pub fn new(size: u64, chunk_size: u32) -> Result<Self, MediaError> {
        if chunk_size == 0 || chunk_size as usize + SEAL_OVERHEAD > MAX_CHUNK_BYTES {
            return Err(MediaError::BadChunkSize(chunk_size));
        }
        let chunks = size.div_ceil(u64::from(chunk_size)).max(1);
        match u32::try_from(chunks) {
            Ok(n) if n as usize <= MAX_MEDIA_CHUNKS => Ok(Self { size, chunk_size, chunks: n }),
            _ => Err(MediaError::TooManyChunks { chunks }),
        }
    }

    /// The layout a received manifest describes, refused above `max_size` bytes.
    pub fn of(manifest: &MediaManifest, max_size: u64) -> Result<Self, MediaError> {
        if manifest.size > max_size {
            return Err(MediaError::TooLarge { size: manifest.size, max: max_size });
        }
        let layout = Self::new(manifest.size, manifest.chunk_size)?;
        if manifest.chunk_hashes.len() != layout.chunks as usize {
            return Err(MediaError::ChunkCount {
                listed: manifest.chunk_hashes.len(),
                expected: u64::from(layout.chunks),
            });
        }
        Ok(layout)
    }

    /// Plaintext size of the whole attachment.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Plaintext bytes per chunk (the last may hold fewer).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// Whether `index` is the last chunk (any index a peer names, `u32::MAX` included).
    pub fn is_last(&self, index: u32) -> bool {
        index.checked_add(1) == Some(self.chunks)
    }

    /// Where chunk `index` starts in the plaintext.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    /// Plaintext length of chunk `index` (0 past the end).
    pub fn plain_len(&self, index: u32) -> usize {
        let len = self.size.saturating_sub(self.offset(index)).min(u64::from(self.chunk_size));
        // At most `chunk_size`, a u32.
        usize::try_from(len).unwrap_or(usize::MAX)
    }

    /// Length of sealed chunk `index`.
    pub fn sealed_len(&self, index: u32) -> usize {
        self.plain_len(index) + SEAL_OVERHEAD
    }

    /// Where sealed chunk `index` starts when all sealed chunks are stored back to back.
    pub fn sealed_offset(&self, index: u32) -> u64 {
        u64::from(index) * (u64::from(self.chunk_size) + SEAL_OVERHEAD as u64)
    }
}

/// The nonce of chunk `index`: the index, big-endian, in the last four bytes.
fn nonce(index: u32) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[8..].copy_from_slice(&index.to_be_bytes());
    nonce
}

/// The associated data of chunk `index`: label ‖ media id ‖ index ‖ last-chunk flag.
fn associated_data(media: &MediaId, index: u32, last: bool) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_LABEL.len() + MediaId::LEN + 5);
    ad.extend_from_slice(AD_LABEL);
    ad.extend_from_slice(media.as_bytes());
    ad.extend_from_slice(&index.to_be_bytes());
    ad.push(u8::from(last));
    ad
}

/// The address of a sealed chunk: its BLAKE3 hash.
pub fn chunk_hash(sealed: &[u8]) -> ChunkHash {
    ChunkHash(*blake3::hash(sealed).as_bytes())
}

/// Seals one chunk. Each index is sealed once per key with fresh plaintext: only [`Sealer`]
/// calls this, and [`reseal_verified`], which seals the same plaintext again and hands out the
/// result only when it is byte for byte the chunk the manifest names.
fn seal_chunk(
    key: &SymmetricKey,
    media: &MediaId,
    index: u32,
    last: bool,
    plaintext: &[u8],
) -> Result<Vec<u8>, aead::PlaintextTooLong> {
    aead::seal(&key.0, &nonce(index), &associated_data(media, index, last), plaintext)
}

/// Opens one sealed chunk (authentication only; [`open_verified`] also checks length and hash).
pub fn open_chunk(
    key: &SymmetricKey,
    media: &MediaId,
    index: u32,
    last: bool,
    sealed: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    aead::open(&key.0, &nonce(index), &associated_data(media, index, last), sealed)
        .map_err(|_| ChunkError::Unauthentic(index))
}

/// Checks that `sealed` is chunk `index` of `manifest` (length, then hash) and decrypts it in
/// its own buffer (a chunk is never held as ciphertext and plaintext at once).
pub fn open_verified(
    manifest: &MediaManifest,
    layout: &Layout,
    index: u32,
    sealed: Vec<u8>,
) -> Result<Vec<u8>, ChunkError> {
    let expected_hash =
        manifest.chunk_hashes.get(index as usize).ok_or(ChunkError::NoSuchIndex(index))?;
    let expected = layout.sealed_len(index);
    if sealed.len() != expected {
        return Err(ChunkError::WrongLength { index, got: sealed.len(), expected });
    }
    if chunk_hash(&sealed) != *expected_hash {
        return Err(ChunkError::HashMismatch(index));
    }
    let last = layout.is_last(index);
    let aad = associated_data(&manifest.media_id, index, last);
    aead::open_in_place(&manifest.key.0, &nonce(index), &aad, sealed)
        .map_err(|_| ChunkError::Unauthentic(index))
}

/// Seals chunk `index` of `manifest` again from its plaintext, for a receiver that serves the
/// chunks it holds to others (members of a group fetching the same attachment). The result is
/// returned only if its length and BLAKE3 hash are those the manifest lists, that is, only if
/// `plaintext` is exactly what the sender sealed at that index: sealing is deterministic (the
/// nonce is the index), so the same plaintext gives the same bytes, and a file changed on disk
/// since gives [`ChunkError::HashMismatch`]. That is what keeps this safe under a reused nonce:
/// a ciphertext of other plaintext under the chunk's key and nonce never leaves this function.
pub fn reseal_verified(
    manifest: &MediaManifest,
    layout: &Layout,
    index: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    let expected_hash =
        manifest.chunk_hashes.get(index as usize).ok_or(ChunkError::NoSuchIndex(index))?;
    let expected = layout.plain_len(index);
    if index >= layout.chunks() || plaintext.len() != expected {
        return Err(ChunkError::WrongLength { index, got: plaintext.len(), expected });
    }
    let sealed =
        seal_chunk(&manifest.key, &manifest.media_id, index, layout.is_last(index), plaintext)
            .map_err(|_| ChunkError::Unauthentic(index))?;
    if chunk_hash(&sealed) != *expected_hash {
        return Err(ChunkError::HashMismatch(index));
    }
    Ok(sealed)
}

/// Seals an attachment chunk by chunk, in order, and builds its manifest.
pub struct Sealer {
    key: SymmetricKey,
    media: MediaId,
    layout: Layout,
    hashes: Vec<ChunkHash>,
}

impl Sealer {
    /// Starts sealing `size` bytes in chunks of `chunk_size`, under a fresh random key and id.
    pub fn new<R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        size: u64,
        chunk_size: u32,
    ) -> Result<Self, MediaError> {
        let layout = Layout::new(size, chunk_size)?;
        let mut key = SymmetricKey([0; 32]);
        rng.fill_bytes(&mut key.0);
        let mut media = MediaId([0; 16]);
        rng.fill_bytes(&mut media.0);
        Ok(Self { key, media, layout, hashes: Vec::with_capacity(layout.chunks as usize) })
    }

    /// The attachment's id.
    pub fn media_id(&self) -> MediaId {
        self.media
    }

    /// The layout being sealed.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Seals the next chunk, which must hold exactly the plaintext its position requires.
    pub fn seal_next(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, MediaError> {
        let index = u32::try_from(self.hashes.len()).map_err(|_| MediaError::Complete)?;
        if index >= self.layout.chunks {
            return Err(MediaError::Complete);
        }
        let expected = self.layout.plain_len(index);
        if plaintext.len() != expected {
            return Err(MediaError::WrongPlaintext { index, expected });
        }
        // A chunk is at most MAX_CHUNK_BYTES, far inside ChaCha20-Poly1305's limit; should
        // that ever change, the error says so instead of sealing nothing.
        let sealed =
            seal_chunk(&self.key, &self.media, index, self.layout.is_last(index), plaintext)
                .map_err(|_| MediaError::BadChunkSize(self.layout.chunk_size))?;
        self.hashes.push(chunk_hash(&sealed));
        Ok(sealed)
    }

    /// The manifest, once every chunk is sealed.
    pub fn finish(
        self,
        name: String,
        mime: String,
        caption: Option<String>,
    ) -> Result<MediaManifest, MediaError> {
        let sealed = u32::try_from(self.hashes.len()).unwrap_or(u32::MAX);
        if sealed != self.layout.chunks {
            return Err(MediaError::WrongPlaintext {
                index: sealed,
                expected: self.layout.plain_len(sealed),
            });
        }
        Ok(MediaManifest {
            media_id: self.media,
            name,
            mime,
            size: self.layout.size,
            chunk_size: self.layout.chunk_size,
            chunk_hashes: self.hashes,
            key: self.key,
            thumbnail: None,
            caption,
        })
    }
}

#[cfg(test)]
mod tests;
