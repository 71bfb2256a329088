//! The rustls server: certificates reloaded when their files change, client certificates
//! verified against a CA file, and a listener that handshakes off the accept path.

use std::fs::Metadata;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::config::{ClientAuth, TlsSettings};
use crate::connections::{Counted, Slots};
use crate::server::accept_error;

/// A key of the web config file and what is wrong with it.
type Problem = (&'static str, String);

/// Builds the server from checked settings; the certificate and key are loaded (and must
/// match) now, so a mistake stops the exporter at start rather than at the first scrape.
pub(super) fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, Problem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = ReloadingCert::new(&s.cert_file, &s.key_file, provider.clone())?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&s.versions)
        .map_err(|e| ("tls_server_config.min_version", e.to_string()))?;
    let builder = match &s.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::IfGiven(ca) | ClientAuth::Required(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
            let verifier = if matches!(s.client_auth, ClientAuth::IfGiven(_)) {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| ("tls_server_config.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots(ca: &Path) -> Result<RootCertStore, Problem> {
    let key = "tls_server_config.client_ca_file";
    let mut store = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).map_err(|e| (key, format!("{}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| (key, format!("{}: {e}", ca.display())))?;
        store
            .add(cert)
            .map_err(|e| (key, format!("{}: {e}", ca.display())))?;
    }
    if store.is_empty() {
        return Err((key, format!("{}: no certificate found", ca.display())));
    }
    Ok(store)
}

/// The certificate chain and key, read again at the first handshake after either file
/// changes (cert-manager, certbot and Kubernetes secrets replace files in place).
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    stamp: Stamp,
    checked: Instant,
    pair: Arc<CertifiedKey>,
}

/// How often the files are looked at, at most: handshakes stay free of file system calls
/// in between.
const RECHECK: Duration = Duration::from_secs(1);

/// What identifies a version of the two files: (inode, size, mtime) of each.
type Stamp = [Option<(u64, u64, i64, i64)>; 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m: Metadata| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
    };
    [one(cert), one(key)]
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, Problem> {
        let stamp = stamp(cert, key);
        let loaded = load_pair(cert, key, &provider)?;
        Ok(ReloadingCert {
            cert_file: cert.to_owned(),
            key_file: key.to_owned(),
            provider,
            current: Mutex::new(Current {
                stamp,
                checked: Instant::now(),
                pair: Arc::new(loaded),
            }),
        })
    }
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, Problem> {
    let cert_key = "tls_server_config.cert_file";
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| (cert_key, format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err((
            cert_key,
            format!("{}: no certificate found", cert.display()),
        ));
    }
    // The error names the file only: pem errors never quote key bytes, but be sure.
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "tls_server_config.key_file",
            format!("{}: {}", key.display(), pem_error(&e)),
        )
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        (
            "tls_server_config.key_file",
            format!("{} does not fit {}: {e}", key.display(), cert.display()),
        )
    })
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no private key found".into(),
        _ => "not a PEM private key".into(),
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let now = stamp(&self.cert_file, &self.key_file);
            if now != current.stamp {
                // Recorded before loading, so a half-written pair is reported once and
                // retried when the other file lands.
                current.stamp = now;
                match load_pair(&self.cert_file, &self.key_file, &self.provider) {
                    Ok(pair) => {
                        current.pair = Arc::new(pair);
                        tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                    }
                    Err((_, why)) => tracing::warn!(
                        "TLS certificate not reloaded, still serving the previous one: {why}"
                    ),
                }
            }
        }
        Some(current.pair.clone())
    }
}

/// Time a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

type Ready = (Counted<TlsStream<TcpStream>>, SocketAddr);

/// Accepts TCP and hands out connections whose TLS handshake has completed. Handshakes run
/// in their own tasks: a slow client never delays the next one. A connection holds one of
/// the slots from accept (handshake included) until it closes (see [`crate::connections`]).
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<Ready>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        slots: Arc<Slots>,
    ) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), slots, tx));
        Ok(TlsListener {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    slots: Arc<Slots>,
    ready: mpsc::Sender<Ready>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        // After accept: a full house makes room only for a client that is there.
        let slot = slots.acquire().await;
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((Counted::new(tls, slot), peer)).await;
                }
                // Debug only: scanners and health checkers that speak plain HTTP would
                // otherwise fill the log.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Counted<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
