//! `/kith/media/fetch/1`: chunk requests pipelined over one long-lived stream per source.
//!
//! The fetcher writes [`MediaRequest::Get`] frames (a big-endian `u32` length, then the
//! postcard frame) up to [`super::PARALLEL_CHUNKS`] ahead of the answers; the server answers
//! each, in order, with a [`MediaResponse`] frame (`Chunk`, `NotFound` or `Refused`). One stream
//! carries a whole download from one source, so Yamux's flow-control window grows with it
//! instead of starting over for every chunk (a request-response exchange per chunk opens a
//! new substream each time and reached a quarter of a plain stream's throughput).
//!
//! The server side runs outside the driver: it answers from a [`Catalog`] of what this node
//! may serve (the attachments it sent, a group's attachments it received, a relay's blob
//! index), reading chunks on blocking threads, one chunk in memory per stream, at most
//! [`MAX_FETCH_STREAMS`] streams at once. A group's attachment we received is served from its
//! plaintext on disk, sealed again, and only if that gives the chunk the manifest names
//! ([`kith_core::media::reseal_verified`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_core::identity::user_id_of;
use kith_core::media::Layout;
use kith_protocol::content::MediaManifest;
use kith_protocol::limits::{MAX_CHUNK_BYTES, MAX_MEDIA_FRAME_BYTES};
use kith_protocol::media::{MediaRefusal, MediaRequest, MediaResponse};
use kith_protocol::{ChunkHash, GroupId, MediaId, UserId};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{Semaphore, mpsc};

use super::Work;

/// The protocol name.
pub const FETCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/media/fetch/1");
/// Most fetch streams served at once (each holds at most one chunk in memory).
pub const MAX_FETCH_STREAMS: usize = 64;
/// A served stream with no request for this long is closed; a fetcher that waits this long
/// for an answer gives the source up.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request frame on a fetch stream (a `Get` is about 60 bytes).
const MAX_REQUEST_FRAME: usize = 256;

/// Reads one length-prefixed frame; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {max}"),
        ));
    }
    let mut frame = vec![0u8; len];
    io.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// Writes one length-prefixed frame.
async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(frame).await?;
    io.flush().await
}

/// An attachment we sent, as the server side needs it.
pub(crate) struct Served {
    pub(crate) to: UserId,
    /// The group it went to: any current member may fetch it (`to` is then ourselves).
    pub(crate) group: Option<GroupId>,
    pub(crate) sealed: PathBuf,
    pub(crate) layout: Layout,
    pub(crate) hashes: Arc<Vec<ChunkHash>>,
}

/// A group's attachment we receive, as the server side needs it: its members may fetch the
/// chunks we hold.
pub(crate) struct Held {
    pub(crate) group: GroupId,
    /// The file its plaintext is in: the partial file while it downloads, then the saved file.
    pub(crate) plain: PathBuf,
    pub(crate) layout: Layout,
    pub(crate) manifest: Arc<MediaManifest>,
}

/// What the fetch server has served since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MediaServed {
    /// Chunks served (every time one is served, counted again).
    pub chunks: u64,
    /// Their bytes, as sent (sealed).
    pub bytes: u64,
}

/// Counters of what the fetch server served.
#[derive(Default)]
pub(crate) struct ServedCounters {
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl ServedCounters {
    fn add(&self, bytes: usize) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn get(&self) -> MediaServed {
        MediaServed {
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Finds the file of a chunk held for a recipient.
pub(crate) type BlobLookup = dyn Fn(&UserId, &ChunkHash) -> Option<PathBuf> + Send + Sync;

/// A relay's blob index, as the server side needs it.
#[derive(Clone)]
pub(crate) struct BlobIndex {
    pub(crate) lookup: Arc<BlobLookup>,
}

/// What this node may serve.
#[derive(Clone, Default)]
pub(crate) struct Catalog {
    pub(crate) outgoing: Arc<RwLock<HashMap<MediaId, Served>>>,
    pub(crate) blobs: Option<BlobIndex>,
    /// The current members of the groups we are in (kept by the driver from the engine's
    /// group events), for attachments sent to a group.
    pub(crate) members: Arc<RwLock<HashMap<GroupId, HashSet<UserId>>>>,
    /// Groups' attachments we receive, served to their members.
    pub(crate) held: Arc<RwLock<HashMap<MediaId, Held>>>,
    /// What was served.
    pub(crate) served: Arc<ServedCounters>,
}

/// Where a chunk comes from.
#[derive(Debug, PartialEq, Eq)]
enum Located {
    /// Sealed bytes in a file, at an offset, of a length: one of ours (`ours`), or a relay's.
    Sealed { path: PathBuf, offset: u64, len: usize, ours: bool },
    /// A group's attachment we received: the plaintext at an offset, sealed again to serve.
    Plain { path: PathBuf, layout: Layout, manifest: Arc<MediaManifest>, index: u32 },
}

impl Located {
    /// Reads the chunk (on a blocking thread).
    fn read(self) -> Result<(Vec<u8>, bool), MediaResponse> {
        match self {
            Located::Sealed { path, offset, len, ours } => {
                match super::files::read_at(&path, offset, len) {
                    Ok(data) => Ok((data, ours)),
                    Err(e) => {
                        tracing::warn!("reading a chunk to serve: {e}");
                        Err(MediaResponse::NotFound)
                    }
                }
            }
            Located::Plain { path, layout, manifest, index } => {
                // Not on disk yet (a partial file), or changed since it was saved: not served.
                let plain =
                    super::files::read_at(&path, layout.offset(index), layout.plain_len(index))
                        .map(zeroize::Zeroizing::new)
                        .map_err(|_| MediaResponse::NotFound)?;
                kith_core::media::reseal_verified(&manifest, &layout, index, &plain)
                    .map(|data| (data, false))
                    .map_err(|_| MediaResponse::NotFound)
            }
        }
    }
}

impl Catalog {
    /// Finds chunk `index` of `media` (hash `hash`) for `requester`.
    fn locate(
        &self,
        requester: Option<UserId>,
        media: &MediaId,
        index: u32,
        hash: &ChunkHash,
    ) -> Result<Located, MediaResponse> {
        if let Ok(outgoing) = self.outgoing.read()
            && let Some(served) = outgoing.get(media)
        {
            let allowed = match (served.group, requester) {
                (None, requester) => requester == Some(served.to),
                // A member of the group now: one removed since may fetch nothing more.
                (Some(group), Some(requester)) => self.is_member(&group, &requester),
                (Some(_), None) => false,
            };
            if !allowed {
                return Err(MediaResponse::Refused(MediaRefusal::NotRecipient));
            }
            if served.hashes.get(index as usize) != Some(hash) {
                return Err(MediaResponse::NotFound);
            }
            let layout = served.layout;
            let (offset, len) = (layout.sealed_offset(index), layout.sealed_len(index));
            return Ok(Located::Sealed { path: served.sealed.clone(), offset, len, ours: true });
        }
        if let Ok(held) = self.held.read()
            && let Some(held) = held.get(media)
        {
            if !requester.is_some_and(|r| self.is_member(&held.group, &r)) {
                return Err(MediaResponse::Refused(MediaRefusal::NotRecipient));
            }
            if held.manifest.chunk_hashes.get(index as usize) != Some(hash) {
                return Err(MediaResponse::NotFound);
            }
            return Ok(Located::Plain {
                path: held.plain.clone(),
                layout: held.layout,
                manifest: held.manifest.clone(),
                index,
            });
        }
        let (Some(blobs), Some(requester)) = (&self.blobs, requester) else {
            return Err(MediaResponse::NotFound);
        };
        let path = (blobs.lookup)(&requester, hash).ok_or(MediaResponse::NotFound)?;
        let len = std::fs::metadata(&path).map_err(|_| MediaResponse::NotFound)?.len();
        match usize::try_from(len) {
            Ok(len) if len <= MAX_CHUNK_BYTES => {
                Ok(Located::Sealed { path, offset: 0, len, ours: false })
            }
            _ => Err(MediaResponse::NotFound),
        }
    }

    /// Whether `user` is a member of `group` now (one removed since may fetch nothing more).
    fn is_member(&self, group: &GroupId, user: &UserId) -> bool {
        self.members.read().is_ok_and(|m| m.get(group).is_some_and(|m| m.contains(user)))
    }
}

/// Serves inbound fetch streams until `incoming` ends.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    catalog: Catalog,
    work: mpsc::Sender<Work>,
) {
    let slots = Arc::new(Semaphore::new(MAX_FETCH_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("too many fetch streams; refused one from …{}", crate::short(&peer));
            continue; // dropping the stream resets it
        };
        let (catalog, work) = (catalog.clone(), work.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_stream(peer, stream, &catalog, &work).await {
                tracing::debug!("fetch stream from …{}: {e}", crate::short(&peer));
            }
            drop(slot);
        });
    }
}

async fn serve_stream(
    peer: PeerId,
    mut stream: libp2p::Stream,
    catalog: &Catalog,
    work: &mpsc::Sender<Work>,
) -> std::io::Result<()> {
    let requester = user_id_of(&peer).ok();
    loop {
        let frame =
            match tokio::time::timeout(FETCH_TIMEOUT, read_frame(&mut stream, MAX_REQUEST_FRAME))
                .await
            {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) | Err(_) => return stream.close().await,
                Ok(Err(e)) => return Err(e),
            };
        let Ok(MediaRequest::Get { media, index, hash }) = kith_protocol::decode(&frame) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a chunk request",
            ));
        };
        // Finding the file and reading it both touch the disk: on a blocking thread.
        let looked_up = catalog.clone();
        let (response, ours) = tokio::task::spawn_blocking(move || {
            match looked_up.locate(requester, &media, index, &hash).and_then(Located::read) {
                Err(response) => (response, false),
                Ok((data, ours)) => (MediaResponse::Chunk { data }, ours),
            }
        })
        .await
        .map_err(std::io::Error::other)?;
        let frame = kith_protocol::encode(&response)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_frame(&mut stream, &frame).await?;
        let MediaResponse::Chunk { data } = &response else { continue };
        catalog.served.add(data.len());
        if ours {
            let _ = work.send(Work::Served { media, index }).await;
        } else if catalog.blobs.is_some() {
            let _ = work.send(Work::BlobServed).await;
        }
    }
}

/// Opens a fetch stream to `peer` for `media` and feeds it the chunk requests sent on the
/// returned channel; every answer (or the source's failure) goes to `work`.
pub(crate) fn start_session(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    media: MediaId,
    source: usize,
    work: mpsc::Sender<Work>,
) -> mpsc::Sender<(u32, ChunkHash)> {
    let (requests_tx, mut requests) = mpsc::channel::<(u32, ChunkHash)>(super::PARALLEL_CHUNKS);
    tokio::spawn(async move {
        let opened = tokio::time::timeout(
            crate::defaults::REQUEST_TIMEOUT,
            control.open_stream(peer, FETCH_PROTOCOL),
        )
        .await;
        let stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!("fetch stream to …{}: {e}", crate::short(&peer));
                let _ = work.send(Work::SourceDown { media, source, broke: false }).await;
                return;
            }
            Err(_) => {
                let _ = work.send(Work::SourceDown { media, source, broke: false }).await;
                return;
            }
        };
        let (mut reader, mut writer) = stream.split();
        let (pending_tx, mut pending) = mpsc::channel::<u32>(2 * super::PARALLEL_CHUNKS);
        // Requests go out as the driver hands them over, ahead of the answers.
        tokio::spawn(async move {
            while let Some((index, hash)) = requests.recv().await {
                let Ok(frame) = kith_protocol::encode(&MediaRequest::Get { media, index, hash })
                else {
                    break;
                };
                // Noted before it is written, so that the reader expects its answer.
                if pending_tx.send(index).await.is_err()
                    || write_frame(&mut writer, &frame).await.is_err()
                {
                    break;
                }
            }
            let _ = writer.close().await;
        });
        let reading = async {
            while let Some(index) = pending.recv().await {
                let frame = tokio::time::timeout(
                    FETCH_TIMEOUT,
                    read_frame(&mut reader, MAX_MEDIA_FRAME_BYTES),
                )
                .await;
                let response = match frame {
                    Ok(Ok(Some(frame))) => kith_protocol::decode::<MediaResponse>(&frame)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
                    Ok(Ok(None)) => {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                };
                if work.send(Work::Fetched { media, index, source, response }).await.is_err() {
                    break;
                }
            }
            Ok::<(), std::io::Error>(())
        };
        if let Err(e) = reading.await {
            tracing::debug!("fetch stream to …{} ended: {e}", crate::short(&peer));
            let _ = work.send(Work::SourceDown { media, source, broke: true }).await;
        }
    });
    requests_tx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_the_recipient_gets_our_chunks_and_only_by_their_hash() {
        let (bob, mallory) = (UserId([1; 32]), UserId([2; 32]));
        let media = MediaId([3; 16]);
        let hashes = vec![ChunkHash([4; 32]), ChunkHash([5; 32])];
        let catalog = Catalog::default();
        catalog.outgoing.write().unwrap().insert(
            media,
            Served {
                to: bob,
                group: None,
                sealed: PathBuf::from("/sealed"),
                layout: Layout::new(1000, 512).unwrap(),
                hashes: Arc::new(hashes.clone()),
            },
        );
        let refused = MediaResponse::Refused(MediaRefusal::NotRecipient);
        assert_eq!(catalog.locate(Some(mallory), &media, 0, &hashes[0]), Err(refused.clone()));
        assert_eq!(catalog.locate(None, &media, 0, &hashes[0]), Err(refused));
        assert_eq!(catalog.locate(Some(bob), &media, 0, &hashes[1]), Err(MediaResponse::NotFound));
        assert_eq!(catalog.locate(Some(bob), &media, 7, &hashes[0]), Err(MediaResponse::NotFound));
        assert_eq!(
            catalog.locate(Some(bob), &media, 1, &hashes[1]),
            Ok(Located::Sealed {
                path: PathBuf::from("/sealed"),
                offset: 528,
                len: 504,
                ours: true
            })
        );
        // Not ours, and not a relay: nothing.
        assert_eq!(
            catalog.locate(Some(bob), &MediaId([9; 16]), 0, &hashes[0]),
            Err(MediaResponse::NotFound)
        );
    }

    #[test]
    fn a_group_attachment_is_served_to_current_members_only() {
        let (me, bob, carol) = (UserId([0; 32]), UserId([1; 32]), UserId([2; 32]));
        let (media, group) = (MediaId([3; 16]), GroupId([7; 32]));
        let hashes = vec![ChunkHash([4; 32])];
        let catalog = Catalog::default();
        catalog.outgoing.write().unwrap().insert(
            media,
            Served {
                to: me,
                group: Some(group),
                sealed: PathBuf::from("/sealed"),
                layout: Layout::new(100, 512).unwrap(),
                hashes: Arc::new(hashes.clone()),
            },
        );
        let refused = Err(MediaResponse::Refused(MediaRefusal::NotRecipient));
        assert_eq!(catalog.locate(Some(bob), &media, 0, &hashes[0]), refused, "members unknown");
        catalog.members.write().unwrap().insert(group, HashSet::from([me, bob, carol]));
        assert!(catalog.locate(Some(bob), &media, 0, &hashes[0]).is_ok());
        assert!(catalog.locate(Some(carol), &media, 0, &hashes[0]).is_ok());
        // Carol is removed: from then on she fetches nothing more of it.
        catalog.members.write().unwrap().insert(group, HashSet::from([me, bob]));
        assert_eq!(catalog.locate(Some(carol), &media, 0, &hashes[0]), refused);
        assert_eq!(catalog.locate(Some(UserId([9; 32])), &media, 0, &hashes[0]), refused);
        assert_eq!(catalog.locate(None, &media, 0, &hashes[0]), refused);
    }

    #[test]
    fn a_groups_attachment_we_hold_is_served_sealed_again_to_members_only_and_only_if_intact() {
        use kith_core::media::Sealer;
        let (bob, carol) = (UserId([1; 32]), UserId([2; 32]));
        let group = GroupId([7; 32]);
        let file: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let mut sealer = Sealer::new(&mut rand::rng(), file.len() as u64, 1024).unwrap();
        let sealed: Vec<Vec<u8>> =
            file.chunks(1024).map(|c| sealer.seal_next(c).unwrap()).collect();
        let manifest = sealer.finish("f".into(), "x/y".into(), None).unwrap();
        let (media, layout) = (manifest.media_id, Layout::of(&manifest, u64::MAX).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("partial");
        // Chunks 0 and 2 are written; chunk 1 is not yet (zeros, as in a partial file).
        let mut partial = file.clone();
        partial[1024..2048].fill(0);
        std::fs::write(&plain, &partial).unwrap();
        let catalog = Catalog::default();
        catalog.members.write().unwrap().insert(group, HashSet::from([bob]));
        let manifest = Arc::new(manifest);
        catalog.held.write().unwrap().insert(
            media,
            Held { group, plain: plain.clone(), layout, manifest: manifest.clone() },
        );
        let get = |who, index: u32| {
            let hash = manifest.chunk_hashes[index as usize];
            catalog.locate(Some(who), &media, index, &hash).and_then(Located::read)
        };
        assert_eq!(get(bob, 0), Ok((sealed[0].clone(), false)));
        assert_eq!(get(bob, 2), Ok((sealed[2].clone(), false)));
        assert_eq!(get(bob, 1), Err(MediaResponse::NotFound), "not written yet");
        assert_eq!(get(carol, 0), Err(MediaResponse::Refused(MediaRefusal::NotRecipient)));
        // The saved file changed on disk: its chunk is not served.
        partial[3] ^= 1;
        std::fs::write(&plain, &partial).unwrap();
        assert_eq!(get(bob, 0), Err(MediaResponse::NotFound));
        // A hash that is not the index's is not looked up.
        let wrong = catalog.locate(Some(bob), &media, 2, &manifest.chunk_hashes[0]);
        assert_eq!(wrong, Err(MediaResponse::NotFound));
    }

    #[tokio::test]
    async fn oversize_frames_are_refused_before_they_are_read() {
        let mut frame = 257u32.to_be_bytes().to_vec();
        frame.extend(vec![0u8; 300]);
        let err =
            read_frame(&mut futures::io::Cursor::new(frame), MAX_REQUEST_FRAME).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let empty: &[u8] = &[];
        assert!(read_frame(&mut futures::io::Cursor::new(empty), 10).await.unwrap().is_none());
    }
}
