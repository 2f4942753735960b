#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

const CHUNK: u32 = 1024;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Seals `file` in chunks of `chunk_size`: the manifest and the sealed chunks in order.
fn seal(file: &[u8], chunk_size: u32, seed: u64) -> (MediaManifest, Vec<Vec<u8>>) {
    let mut sealer = Sealer::new(&mut rng(seed), file.len() as u64, chunk_size).unwrap();
    let layout = sealer.layout();
    let chunks = (0..layout.chunks())
        .map(|i| {
            let start = layout.offset(i) as usize;
            sealer.seal_next(&file[start..start + layout.plain_len(i)]).unwrap()
        })
        .collect();
    (sealer.finish("f.bin".into(), "application/octet-stream".into(), None).unwrap(), chunks)
}

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn a_file_opens_back_chunk_by_chunk() {
    let data = file(5 * CHUNK as usize + 17);
    let (manifest, chunks) = seal(&data, CHUNK, 1);
    let layout = Layout::of(&manifest, u64::MAX).unwrap();
    assert_eq!(layout.chunks(), 6);
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        out.extend(open_verified(&manifest, &layout, i as u32, chunk.to_vec()).unwrap());
    }
    assert_eq!(out, data);
}

#[test]
fn an_empty_file_is_one_empty_sealed_chunk() {
    let (manifest, chunks) = seal(&[], CHUNK, 2);
    let layout = Layout::of(&manifest, u64::MAX).unwrap();
    assert_eq!((layout.chunks(), chunks.len(), chunks[0].len()), (1, 1, SEAL_OVERHEAD));
    assert_eq!(open_verified(&manifest, &layout, 0, chunks[0].to_vec()).unwrap(), Vec::<u8>::new());
}

/// The C2SP chunked-encryption failure classes, each refused by the AEAD alone (without the
/// manifest's hashes, which refuse them too).
#[test]
fn reordered_truncated_extended_spliced_and_wrong_key_chunks_do_not_open() {
    let data = file(3 * CHUNK as usize);
    let (m, chunks) = seal(&data, CHUNK, 3);
    let (other, other_chunks) = seal(&data, CHUNK, 4);
    let open = |i: u32, last: bool, sealed: &[u8]| open_chunk(&m.key, &m.media_id, i, last, sealed);
    // Control: in place, they open.
    assert!(open(0, false, &chunks[0]).is_ok());
    assert!(open(2, true, &chunks[2]).is_ok());
    // Reordering: chunk 1 presented as chunk 0.
    assert_eq!(open(0, false, &chunks[1]), Err(ChunkError::Unauthentic(0)));
    // Truncation / dropped last chunk: the stream ends at chunk 1, which is not marked last.
    assert_eq!(open(1, true, &chunks[1]), Err(ChunkError::Unauthentic(1)));
    // Extension: more chunks after the last one; the last chunk opened as a middle chunk.
    assert_eq!(open(2, false, &chunks[2]), Err(ChunkError::Unauthentic(2)));
    assert_eq!(open(3, true, &chunks[2]), Err(ChunkError::Unauthentic(3)));
    // Trailing data and cut bytes inside a chunk.
    let mut longer = chunks[0].clone();
    longer.push(0);
    assert!(open(0, false, &longer).is_err());
    assert!(open(0, false, &chunks[0][..chunks[0].len() - 1]).is_err());
    // Splice: the same position of another attachment (other key and id).
    assert_eq!(open(0, false, &other_chunks[0]), Err(ChunkError::Unauthentic(0)));
    // Same key but another media id.
    assert!(open_chunk(&m.key, &other.media_id, 0, false, &chunks[0]).is_err());
    // Wrong key.
    assert!(open_chunk(&other.key, &m.media_id, 0, false, &chunks[0]).is_err());
    // Flipped bit.
    let mut flipped = chunks[1].clone();
    flipped[5] ^= 1;
    assert_eq!(open(1, false, &flipped), Err(ChunkError::Unauthentic(1)));
}

#[test]
fn verification_names_what_is_wrong_before_decrypting() {
    let data = file(3 * CHUNK as usize + 1);
    let (m, chunks) = seal(&data, CHUNK, 5);
    let layout = Layout::of(&m, u64::MAX).unwrap();
    assert_eq!(
        open_verified(&m, &layout, 0, chunks[1].to_vec()),
        Err(ChunkError::HashMismatch(0)),
        "reordered"
    );
    let mut corrupt = chunks[2].clone();
    corrupt[0] ^= 0x80;
    assert_eq!(open_verified(&m, &layout, 2, corrupt.to_vec()), Err(ChunkError::HashMismatch(2)));
    assert!(matches!(
        open_verified(&m, &layout, 3, chunks[2].to_vec()),
        Err(ChunkError::WrongLength { index: 3, .. })
    ));
    let mut extended = chunks[3].clone();
    extended.extend_from_slice(b"more");
    assert!(matches!(
        open_verified(&m, &layout, 3, extended.to_vec()),
        Err(ChunkError::WrongLength { got: 21, expected: 17, .. })
    ));
    assert!(matches!(
        open_verified(&m, &layout, 0, chunks[0][..100].to_vec()),
        Err(ChunkError::WrongLength { .. })
    ));
    assert_eq!(open_verified(&m, &layout, 4, chunks[3].to_vec()), Err(ChunkError::NoSuchIndex(4)));
    // A manifest whose hashes were replaced by an attacker's still refuses the forged chunk:
    // it does not authenticate under the key.
    let mut forged = m.clone();
    let mut fake = chunks[0].clone();
    fake[0] ^= 1;
    forged.chunk_hashes[0] = chunk_hash(&fake);
    assert_eq!(open_verified(&forged, &layout, 0, fake.to_vec()), Err(ChunkError::Unauthentic(0)));
}

#[test]
fn manifests_over_the_limit_or_with_the_wrong_count_are_refused() {
    let (mut m, _) = seal(&file(2 * CHUNK as usize), CHUNK, 6);
    assert_eq!(
        Layout::of(&m, 2 * u64::from(CHUNK) - 1),
        Err(MediaError::TooLarge { size: 2048, max: 2047 })
    );
    m.chunk_hashes.pop();
    assert_eq!(Layout::of(&m, u64::MAX), Err(MediaError::ChunkCount { listed: 1, expected: 2 }));
    assert_eq!(Layout::new(1, 0), Err(MediaError::BadChunkSize(0)));
    assert_eq!(Layout::new(1, 2 << 20), Err(MediaError::BadChunkSize(2 << 20)));
    assert!(matches!(
        Layout::new(u64::from(CHUNK) * (MAX_MEDIA_CHUNKS as u64 + 1), CHUNK),
        Err(MediaError::TooManyChunks { .. })
    ));
    // The node's chunk size carries the default 2 GiB maximum in at most MAX_MEDIA_CHUNKS.
    assert_eq!(Layout::new(2 << 30, CHUNK_BYTES).unwrap().chunks() as usize, MAX_MEDIA_CHUNKS);
}

/// No nonce is reused under one key: the sealer seals each index once, and every attachment
/// gets its own key and id even for the same file.
#[test]
fn each_attachment_has_its_own_key_and_each_index_is_sealed_once() {
    let data = file(2 * CHUNK as usize);
    let (a, _) = seal(&data, CHUNK, 7);
    let (b, _) = seal(&data, CHUNK, 8);
    assert_ne!(a.key, b.key);
    assert_ne!(a.media_id, b.media_id);
    let mut sealer = Sealer::new(&mut rng(9), data.len() as u64, CHUNK).unwrap();
    assert!(matches!(sealer.seal_next(&data[..10]), Err(MediaError::WrongPlaintext { .. })));
    sealer.seal_next(&data[..1024]).unwrap();
    sealer.seal_next(&data[1024..]).unwrap();
    assert_eq!(sealer.seal_next(&data[..1024]), Err(MediaError::Complete));
    // A sealer cannot be finished before every chunk is sealed.
    let short = Sealer::new(&mut rng(10), data.len() as u64, CHUNK).unwrap();
    assert!(short.finish("x".into(), "y".into(), None).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_size_and_chunk_size_round_trips(
        len in 0usize..20_000,
        // At least 8 bytes per chunk: 20,000 bytes stay within MAX_MEDIA_CHUNKS.
        chunk_size in 8u32..4096,
        seed: u64,
    ) {
        let data = file(len);
        let (manifest, chunks) = seal(&data, chunk_size, seed);
        let layout = Layout::of(&manifest, u64::MAX).unwrap();
        prop_assert_eq!(chunks.len(), layout.chunks() as usize);
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            prop_assert_eq!(chunk.len(), layout.sealed_len(i as u32));
            out.extend(open_verified(&manifest, &layout, i as u32, chunk.to_vec()).unwrap());
        }
        prop_assert_eq!(out, data);
    }
}

/// Issue 14 (weaker than claimed): a peer can name any chunk index; the last-chunk test must
/// not overflow on `u32::MAX` (it panicked in debug builds), nor on any index past the end.
#[test]
fn any_chunk_index_a_peer_names_is_answered_without_overflow() {
    let (manifest, chunks) = seal(&file(1000), 256, 3);
    let layout = Layout::of(&manifest, u64::MAX).unwrap();
    assert!(layout.is_last(layout.chunks() - 1));
    for index in [layout.chunks(), u32::MAX - 1, u32::MAX] {
        assert!(!layout.is_last(index));
        assert_eq!(layout.plain_len(index), 0);
        assert!(open_verified(&manifest, &layout, index, chunks[0].to_vec()).is_err());
    }
}

/// A receiver that holds a chunk's plaintext seals it back into exactly the bytes the sender
/// sent (so other members can take it from them), and nothing else: plaintext changed on disk
/// since, of the wrong length, or at another index is refused, never handed out.
#[test]
fn a_held_chunk_reseals_to_the_senders_bytes_and_nothing_else_is_handed_out() {
    let data = file(2 * CHUNK as usize + 300);
    let (manifest, chunks) = seal(&data, CHUNK, 11);
    let layout = Layout::of(&manifest, u64::MAX).unwrap();
    for (i, sealed) in chunks.iter().enumerate() {
        let index = i as u32;
        let offset = layout.offset(index) as usize;
        let plain = &data[offset..offset + layout.plain_len(index)];
        assert_eq!(&reseal_verified(&manifest, &layout, index, plain).unwrap(), sealed);
    }
    let mut changed = data[..CHUNK as usize].to_vec();
    changed[5] ^= 1;
    assert_eq!(reseal_verified(&manifest, &layout, 0, &changed), Err(ChunkError::HashMismatch(0)));
    assert!(matches!(
        reseal_verified(&manifest, &layout, 0, &data[..10]),
        Err(ChunkError::WrongLength { index: 0, .. })
    ));
    // Chunk 0's plaintext at index 1 seals to other bytes than chunk 1's.
    assert_eq!(
        reseal_verified(&manifest, &layout, 1, &data[..CHUNK as usize]),
        Err(ChunkError::HashMismatch(1))
    );
    assert_eq!(reseal_verified(&manifest, &layout, 9, &[]), Err(ChunkError::NoSuchIndex(9)));
}
