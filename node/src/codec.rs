//! Size-capped codecs for Kith's request-response protocols.
//!
//! One request and one response per substream, each read to the end of the stream with a hard
//! limit: a frame over its limit fails the stream before anything is parsed. The envelopes of
//! an [`EnvelopeBatch`] stay undecoded bytes here, so that a malformed envelope still reaches
//! the engine and is answered with a typed refusal instead of a dropped stream.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use kith_protocol::Frame;
use kith_protocol::direct::{DeliveryAcks, EnvelopeBatch};
use kith_protocol::mailbox::{MailboxRequest, MailboxResponse};
use kith_protocol::media::{MediaRequest, MediaResponse};
use kith_protocol::prekey::{PreKeyRequest, PreKeyResponse};
use libp2p::StreamProtocol;

/// `/kith/envelope/1`: direct delivery of an [`EnvelopeBatch`], answered by [`DeliveryAcks`].
pub const ENVELOPE_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/envelope/1");
/// `/kith/mailbox/1`: store-and-forward through relays.
pub const MAILBOX_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/mailbox/1");
/// `/kith/media/1`: sealed attachment chunks.
pub const MEDIA_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/media/1");
/// `/kith/prekey/1`: prekey bundles.
pub const PREKEY_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/prekey/1");
/// Kith's own Kademlia protocol name (a separate DHT from IPFS's).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/kith/kad/1.0.0");
/// Identify's protocol version string.
pub const IDENTIFY_VERSION: &str = "/kith/1.0.0";

/// Most room reserved up front for a response (the largest media frame): a sealed chunk is read
/// without regrowing and copying its buffer. A response type with a smaller limit reserves
/// its limit.
const RESPONSE_CAPACITY: usize = kith_protocol::limits::MAX_MEDIA_FRAME_BYTES;

/// Reads `io` to its end, refusing more than `max` bytes; `capacity` is reserved first.
async fn read_capped<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    capacity: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(capacity.min(max.saturating_add(1)));
    // One byte over the limit is enough to know the frame is too large.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    io.take(limit).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame exceeds {max} bytes"),
        ));
    }
    Ok(buf)
}

async fn write_all<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.close().await
}

fn decode<F: Frame>(bytes: &[u8]) -> io::Result<F> {
    kith_protocol::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode<F: Frame>(frame: &F) -> io::Result<Vec<u8>> {
    kith_protocol::encode(frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A codec whose request and response are both [`Frame`]s, decoded with their limits.
#[derive(Debug)]
pub struct FrameCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for FrameCodec<Req, Resp> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<Req, Resp> libp2p::request_response::Codec for FrameCodec<Req, Resp>
where
    Req: Frame + Send + 'static,
    Resp: Frame + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Req> {
        decode(&read_capped(io, Req::MAX_BYTES, 0).await?)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Resp> {
        decode(&read_capped(io, Resp::MAX_BYTES, RESPONSE_CAPACITY.min(Resp::MAX_BYTES)).await?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        write_all(io, &encode(&req)?).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        write_all(io, &encode(&resp)?).await
    }
}

/// Codec of `/kith/envelope/1`.
pub type EnvelopeCodec = FrameCodec<EnvelopeBatch, DeliveryAcks>;

/// Codec of `/kith/prekey/1`.
pub type PreKeyCodec = FrameCodec<PreKeyRequest, PreKeyResponse>;

/// Codec of `/kith/mailbox/1`.
pub type MailboxCodec = FrameCodec<MailboxRequest, MailboxResponse>;

/// Codec of `/kith/media/1`.
pub type MediaCodec = FrameCodec<MediaRequest, MediaResponse>;

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    use super::*;

    #[tokio::test]
    async fn oversize_and_garbage_frames_are_io_errors_not_panics() {
        use kith_protocol::limits::{MAX_DIRECT_FRAME_BYTES, MAX_ENVELOPE_BYTES};
        let mut codec = EnvelopeCodec::default();
        let big = vec![1u8; MAX_DIRECT_FRAME_BYTES + 1];
        let err = codec.read_request(&ENVELOPE_PROTOCOL, &mut Cursor::new(big)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // An envelope at its limit is fine, garbage or not: the engine decides what it means.
        let batch = EnvelopeBatch { envelopes: vec![vec![1u8; MAX_ENVELOPE_BYTES].into()] };
        let bytes = kith_protocol::encode(&batch).unwrap();
        let read = codec.read_request(&ENVELOPE_PROTOCOL, &mut Cursor::new(bytes)).await.unwrap();
        assert_eq!(read, batch);
        // One byte over it fails the whole request.
        let mut bytes = vec![kith_protocol::WIRE_VERSION, 1];
        let over = MAX_ENVELOPE_BYTES + 1;
        bytes.extend_from_slice(&[0x81, 0x80, 0x10]); // varint 262,145
        assert_eq!(over, 1 + (0x10 << 14));
        bytes.resize(bytes.len() + over, 1);
        let err =
            codec.read_request(&ENVELOPE_PROTOCOL, &mut Cursor::new(bytes)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut prekeys = PreKeyCodec::default();
        let err = prekeys
            .read_request(&PREKEY_PROTOCOL, &mut Cursor::new(vec![1, 9, 9, 9]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let huge = vec![0u8; kith_protocol::limits::MAX_PREKEY_FRAME_BYTES + 1];
        assert!(prekeys.read_response(&PREKEY_PROTOCOL, &mut Cursor::new(huge)).await.is_err());
    }
}
