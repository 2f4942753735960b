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
//! may serve (the attachments it sent, a relay's blob index), reading chunks on blocking
//! threads, one chunk in memory per stream, at most [`MAX_FETCH_STREAMS`] streams at once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kith_core::identity::user_id_of;
use kith_core::media::Layout;
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
}

/// Where a chunk comes from: a file, where, how long; and whether it is one of ours.
type Located = (PathBuf, u64, usize, bool);

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
                (Some(group), Some(requester)) => self
                    .members
                    .read()
                    .is_ok_and(|m| m.get(&group).is_some_and(|m| m.contains(&requester))),
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
            return Ok((served.sealed.clone(), offset, len, true));
        }
        let (Some(blobs), Some(requester)) = (&self.blobs, requester) else {
            return Err(MediaResponse::NotFound);
        };
        let path = (blobs.lookup)(&requester, hash).ok_or(MediaResponse::NotFound)?;
        let len = std::fs::metadata(&path).map_err(|_| MediaResponse::NotFound)?.len();
        match usize::try_from(len) {
            Ok(len) if len <= MAX_CHUNK_BYTES => Ok((path, 0, len, false)),
            _ => Err(MediaResponse::NotFound),
        }
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
        let catalog = catalog.clone();
        let (response, ours) = tokio::task::spawn_blocking(move || {
            match catalog.locate(requester, &media, index, &hash) {
                Err(response) => (response, false),
                Ok((path, offset, len, ours)) => match super::files::read_at(&path, offset, len) {
                    Ok(data) => (MediaResponse::Chunk { data }, ours),
                    Err(e) => {
                        tracing::warn!("reading a chunk to serve: {e}");
                        (MediaResponse::NotFound, false)
                    }
                },
            }
        })
        .await
        .map_err(std::io::Error::other)?;
        let frame = kith_protocol::encode(&response)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_frame(&mut stream, &frame).await?;
        if ours {
            let _ = work.send(Work::Served { media, index }).await;
        } else if matches!(response, MediaResponse::Chunk { .. }) {
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
                let _ = work.send(Work::SourceDown { media, source }).await;
                return;
            }
            Err(_) => {
                let _ = work.send(Work::SourceDown { media, source }).await;
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
            let _ = work.send(Work::SourceDown { media, source }).await;
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
            Ok((PathBuf::from("/sealed"), 528, 504, true))
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
