//! The relay's metrics, served as Prometheus (OpenMetrics) text on `GET /metrics`, and a
//! liveness check on `GET /healthz` (200 `ok` while the relay runs).
//!
//! Served by hyper: one request per connection, the request head capped at
//! [`MAX_REQUEST_HEAD`] bytes and [`REQUEST_TIMEOUT`], a whole connection at
//! [`CONNECTION_TIMEOUT`]; any other path is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kith_protocol::mailbox::MailboxRefusal;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Longest HTTP request head the metrics endpoint reads.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a metrics client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one metrics connection may last in all (a client that reads slowly included).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub(crate) reservations: Gauge,
    pub(crate) circuits: Gauge,
    pub(crate) circuits_opened: Counter,
    pub(crate) circuit_refusals: Family<Labels, Counter>,
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
        MailboxRefusal::AccessDenied => "access_denied",
        MailboxRefusal::StrangerLimit => "stranger_limit",
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
        let reservations = Gauge::default();
        let circuits = Gauge::default();
        let circuits_opened = Counter::default();
        let circuit_refusals = Family::<Labels, Counter>::default();
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
        registry.register(
            "reservations",
            "Circuit reservations held by users behind NAT",
            reservations.clone(),
        );
        registry.register("circuits", "Connections being relayed now", circuits.clone());
        registry.register(
            "circuits_opened",
            "Connections relayed since start",
            circuits_opened.clone(),
        );
        registry.register(
            "circuit_refusals",
            "Refused reservation and circuit requests, by kind",
            circuit_refusals.clone(),
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
            reservations,
            circuits,
            circuits_opened,
            circuit_refusals,
        }
    }

    /// Counts what the circuit relay did.
    pub(crate) fn circuit_event(&self, event: &libp2p::relay::Event) {
        use libp2p::relay::Event;
        let refused = |kind: &str| {
            self.circuit_refusals.get_or_create(&vec![("kind".into(), kind.into())]).inc();
        };
        match event {
            Event::ReservationReqAccepted { renewed: false, .. } => {
                self.reservations.inc();
            }
            Event::ReservationClosed { .. } | Event::ReservationTimedOut { .. } => {
                self.reservations.dec();
            }
            Event::ReservationReqDenied { .. } => refused("reservation"),
            Event::CircuitReqAccepted { .. } => {
                self.circuits.inc();
                self.circuits_opened.inc();
            }
            Event::CircuitClosed { .. } => {
                self.circuits.dec();
            }
            Event::CircuitReqDenied { .. } => refused("circuit"),
            _ => {}
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

/// Serves `GET /metrics` and `GET /healthz` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: RelayMetrics) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: do not spin on it.
                tracing::debug!("metrics endpoint: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(request.method(), request.uri().path(), &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics request: {e}"),
                Err(_) => tracing::debug!("metrics request: timed out"),
            }
        });
    }
}

/// The answer to one request: the metrics, the health check, or 404/405.
fn answer(method: &Method, path: &str, metrics: &RelayMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/metrics" | "/") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        (_, "/metrics" | "/" | "/healthz") => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", String::new())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", String::new()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Binds the metrics endpoint (`addr` may use port 0) and returns the bound address.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn metrics_health_and_nothing_else() {
        let metrics = RelayMetrics::new();
        metrics.reject(MailboxRefusal::QuotaExceeded);
        let response = answer(&Method::GET, "/metrics", &metrics);
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            body(response)
                .await
                .contains("kith_relay_rejections_total{reason=\"quota_exceeded\"} 1")
        );
        let response = answer(&Method::GET, "/healthz", &metrics);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "ok\n");
        assert_eq!(
            answer(&Method::POST, "/metrics", &metrics).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(answer(&Method::GET, "/secret", &metrics).status(), StatusCode::NOT_FOUND);
    }
}
