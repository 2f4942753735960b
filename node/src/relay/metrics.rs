//! The relay's metrics, served as Prometheus (OpenMetrics) text on `GET /metrics`.
//!
//! The HTTP side is deliberately tiny: one request per connection, request head capped at
//! [`MAX_REQUEST_HEAD`] bytes and [`REQUEST_TIMEOUT`], nothing but `GET /metrics` answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kith_protocol::mailbox::MailboxRefusal;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest HTTP request head the metrics endpoint reads.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a metrics client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(String, String)>;

/// Every metric a relay exports.
#[derive(Clone, Debug)]
pub(crate) struct RelayMetrics {
    registry: Arc<Registry>,
    pub(crate) stored_envelopes: Gauge,
    pub(crate) stored_bytes: Gauge,
    pub(crate) deposits: Counter,
    pub(crate) fetches: Counter,
    pub(crate) delivered: Counter,
    pub(crate) expired: Counter,
    pub(crate) rejections: Family<Labels, Counter>,
    pub(crate) connected_peers: Gauge,
    pub(crate) prekey_users: Gauge,
    pub(crate) stored_blob_bytes: Gauge,
    pub(crate) blob_uploads: Counter,
    pub(crate) blobs_served: Counter,
}

/// The label value of a refusal reason.
pub(crate) fn reason_label(reason: MailboxRefusal) -> &'static str {
    match reason {
        MailboxRefusal::QuotaExceeded => "quota_exceeded",
        MailboxRefusal::RateLimited => "rate_limited",
        MailboxRefusal::TooLarge => "too_large",
        MailboxRefusal::NotRecipient => "not_recipient",
        MailboxRefusal::NotARelay => "not_a_relay",
        MailboxRefusal::Unavailable => "unavailable",
    }
}

impl RelayMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("kith_relay");
        let stored_envelopes = Gauge::default();
        let stored_bytes = Gauge::default();
        let deposits = Counter::default();
        let fetches = Counter::default();
        let delivered = Counter::default();
        let expired = Counter::default();
        let rejections = Family::<Labels, Counter>::default();
        let connected_peers = Gauge::default();
        let prekey_users = Gauge::default();
        let stored_blob_bytes = Gauge::default();
        let blob_uploads = Counter::default();
        let blobs_served = Counter::default();
        registry.register(
            "stored_envelopes",
            "Envelopes held in mailboxes",
            stored_envelopes.clone(),
        );
        registry.register("stored_bytes", "Envelope bytes held in mailboxes", stored_bytes.clone());
        registry.register("deposits", "Envelopes stored on deposit", deposits.clone());
        registry.register("fetches", "Mailbox fetch requests answered", fetches.clone());
        registry.register(
            "delivered",
            "Envelopes deleted after the recipient acknowledged them",
            delivered.clone(),
        );
        registry.register("expired", "Envelopes deleted unread after their TTL", expired.clone());
        registry.register("rejections", "Refused mailbox requests, by reason", rejections.clone());
        registry.register(
            "connected_peers",
            "Peers with an open connection",
            connected_peers.clone(),
        );
        registry.register(
            "prekey_users",
            "Users whose prekeys the relay serves",
            prekey_users.clone(),
        );
        registry.register(
            "stored_blob_bytes",
            "Attachment chunk bytes held for recipients",
            stored_blob_bytes.clone(),
        );
        registry.register(
            "blob_uploads",
            "Attachment chunks stored on upload",
            blob_uploads.clone(),
        );
        registry.register(
            "blobs_served",
            "Attachment chunks served to recipients",
            blobs_served.clone(),
        );
        Self {
            registry: Arc::new(registry),
            stored_envelopes,
            stored_bytes,
            deposits,
            fetches,
            delivered,
            expired,
            rejections,
            connected_peers,
            prekey_users,
            stored_blob_bytes,
            blob_uploads,
            blobs_served,
        }
    }

    /// Counts a refusal.
    pub(crate) fn reject(&self, reason: MailboxRefusal) {
        self.rejections.get_or_create(&vec![("reason".into(), reason_label(reason).into())]).inc();
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RelayMetrics {
    /// Sets the storage gauges.
    pub(crate) fn set_stored(&self, envelopes: u64, bytes: u64) {
        self.stored_envelopes.set(clamp(envelopes));
        self.stored_bytes.set(clamp(bytes));
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: RelayMetrics) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                tracing::debug!("metrics request: {e}");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &RelayMetrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let response = if method == b"GET" && (path == b"/metrics" || path == b"/") {
        let body = metrics.render();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics endpoint (`addr` may use port 0) and returns the bound address.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
