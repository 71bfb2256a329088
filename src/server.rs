//! HTTP: the metrics path, a landing page and a health check, with graceful shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::connections::{Counted, Slots};
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream};

use crate::scrape::{self, Scraper};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Answers "OK" to anyone, credentials or not: it is what liveness probes ask.
pub const HEALTH_PATH: &str = "/-/healthy";

#[derive(Clone)]
struct App {
    scraper: Arc<Scraper>,
    landing: Arc<String>,
}

/// `max_requests` caps concurrent scrapes of the metrics path (0: no cap); past it a
/// request gets 503 at once, as node_exporter's --web.max-requests does.
pub fn router(scraper: Arc<Scraper>, telemetry_path: &str, max_requests: usize) -> Router {
    let landing = landing_page(telemetry_path, &scraper.names());
    let app = App {
        scraper,
        landing: Arc::new(landing),
    };
    let mut metrics_route = get(metrics);
    if max_requests > 0 {
        metrics_route = metrics_route.layer(
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: axum::BoxError| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many concurrent scrapes\n",
                    )
                }))
                .layer(tower::load_shed::LoadShedLayer::new())
                .layer(tower::limit::ConcurrencyLimitLayer::new(max_requests)),
        );
    }
    let mut r = Router::new()
        .route(HEALTH_PATH, get(|| async { "OK\n" }))
        .route(telemetry_path, metrics_route);
    if telemetry_path != "/" {
        r = r.route("/", get(landing_handler));
    }
    r.with_state(app)
}

fn landing_page(path: &str, collectors: &[&str]) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let items: String = collectors
        .iter()
        .map(|c| format!("<li>{}</li>", escape(c)))
        .collect();
    format!(
        "<!DOCTYPE html>\n<html><head><title>packetpath-exporter</title></head><body>\n\
         <h1>packetpath-exporter {}</h1>\n\
         <p>Packet-path health between tunnel and VM ports.</p>\n\
         <p><a href=\"{p}\">{p}</a></p>\n<h2>Enabled collectors</h2>\n<ul>{items}</ul>\n</body></html>\n",
        scrape::VERSION,
        p = escape(path),
    )
}

async fn landing_handler(State(app): State<App>) -> Html<String> {
    Html(app.landing.as_ref().clone())
}

/// True if the client accepts gzip (and did not give it q=0).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let body = app.scraper.scrape().await;
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if accepts_gzip(&headers) {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        if enc.write_all(&body).is_ok() {
            if let Ok(gz) = enc.finish() {
                resp_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                return (StatusCode::OK, resp_headers, gz).into_response();
            }
        }
    }
    (StatusCode::OK, resp_headers, body).into_response()
}

/// Resolves a node_exporter-style listen address: ":PORT" means every address.
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid --web.listen-address {addr:?}: bad port"))?;
        // Dual-stack where IPv6 exists; IPv4 only where it does not.
        let v6 = SocketAddr::from(([0u16; 8], port));
        return match TcpListener::bind(v6).await {
            Ok(l) => Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Err(format!("listen on {addr}: {e}"))
            }
            Err(_) => TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
                .await
                .map_err(|e| format!("listen on {addr}: {e}")),
        };
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listen on {addr}: {e}"))
}

/// Open connections served at most (lowered to fit the file descriptor limit), so no
/// number of clients can use up the descriptors the collectors need; past it a new
/// connection takes the slot of an idle or stalled one (see [`crate::connections`]).
const MAX_CONNECTIONS: usize = 1024;
/// Descriptors kept for everything but connections: netlink sockets, procfs files, logs.
const RESERVED_FDS: u64 = 64;
/// --web.write-timeout's default: time a response may take to be read by its client.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises the soft limit on open files to the hard one (as Go programs do at start; the
/// systemd default soft limit is 1024) and returns how many connections fit under it.
pub fn connection_cap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return MAX_CONNECTIONS;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    let fit = lim.rlim_cur.saturating_sub(RESERVED_FDS).max(1);
    usize::try_from(fit).map_or(MAX_CONNECTIONS, |n| n.min(MAX_CONNECTIONS))
}

/// A client that went away is nothing; anything else (out of file descriptors) is logged
/// and retried after a pause instead of spinning.
pub(crate) async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Plain TCP, within its slots (see [`crate::connections`]).
pub struct PlainListener {
    tcp: TcpListener,
    slots: Arc<Slots>,
}

impl PlainListener {
    pub fn new(tcp: TcpListener, slots: Arc<Slots>) -> PlainListener {
        PlainListener { tcp, slots }
    }
}

impl Listener for PlainListener {
    type Io = Counted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            // Accept first: a full house makes room only for a client that is there.
            match self.tcp.accept().await {
                Ok((io, peer)) => return (Counted::new(io, self.slots.acquire().await), peer),
                Err(e) => accept_error(e).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// What serving needs besides the router.
#[derive(Clone, Copy, Debug)]
pub struct Http {
    /// Time a client has to send a request's headers, counted from the connection's start
    /// or the previous response (so idle keep-alive connections close after it too).
    pub header_timeout: Duration,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Puts the peer's address on every request of a connection (basic auth keeps each
/// client's place in line by it).
#[derive(Clone)]
struct WithPeer {
    app: Router,
    peer: SocketAddr,
}

impl<B> tower::Service<axum::http::Request<B>> for WithPeer
where
    Router: tower::Service<axum::http::Request<B>>,
{
    type Response = <Router as tower::Service<axum::http::Request<B>>>::Response;
    type Error = <Router as tower::Service<axum::http::Request<B>>>::Error;
    type Future = <Router as tower::Service<axum::http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<axum::http::Request<B>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        self.app.call(req)
    }
}

/// Accepts and serves HTTP/1.1 connections until `stop` resolves, then stops accepting
/// (the listener is dropped) and returns the watcher of the connections still open.
async fn accept_until<L: Listener<Addr = SocketAddr>>(
    mut listener: L,
    app: Router,
    http: Http,
    stop: impl Future<Output = ()>,
) -> GracefulShutdown {
    let open = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout);
    tokio::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            c = listener.accept() => c,
            () = &mut stop => break,
        };
        let svc = WithPeer {
            app: app.clone(),
            peer,
        };
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
        let conn = open.watch(conn);
        tokio::spawn(async move {
            // Timeouts, resets and malformed requests end the connection; nothing to do.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    open
}

/// Serves plain HTTP for ever; for tests and embedding.
pub async fn serve(listener: TcpListener, app: Router, http: Http) {
    let slots = Slots::new(connection_cap(), DEFAULT_WRITE_TIMEOUT);
    let listener = PlainListener::new(listener, slots);
    accept_until(listener, app, http, std::future::pending()).await;
}

/// The signals that end the exporter, registered before anything changes the host so
/// that none of them can kill it with the host's settings still changed.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// How long open connections may take to finish after a signal.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves until a signal; then runs `on_signal` at once (collectors restore what they
/// changed before anything else can go wrong) and drains connections for at most
/// [`DRAIN`], or until a second signal.
pub async fn serve_until_signal<L: Listener<Addr = SocketAddr>>(
    listener: L,
    app: Router,
    http: Http,
    mut signals: Signals,
    on_signal: impl FnOnce(),
) -> Result<(), String> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(accept_until(listener, app, http, async {
        let _ = stopped.await;
    }));
    let name = tokio::select! {
        // Only a panic ends it early: exit (restoring first) rather than run on unreachable.
        _ = &mut server => {
            on_signal();
            return Err("the HTTP server stopped unexpectedly".into());
        }
        name = signals.next() => name,
    };
    tracing::info!("{name} received, shutting down");
    on_signal();
    let _ = stop.send(());
    let open = server
        .await
        .map_err(|e| format!("the HTTP server failed: {e}"))?;
    tokio::select! {
        () = open.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!("connections still open {DRAIN:?} after {name}; exiting");
        }
        again = signals.next() => {
            tracing::info!("{again} received again; exiting now");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&h("gzip")));
        assert!(accepts_gzip(&h("deflate, gzip;q=0.5")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
