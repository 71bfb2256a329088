//! Reading a running exporter's `/metrics`: plain HTTP or TLS (a CA file, a client
//! certificate, or no verification at all when asked), with basic auth, as the exporter's
//! web config file sets them up on the other side.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// Largest body accepted; the exporter's own output is a few MiB at most.
const MAX_BODY: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(15);

/// How to reach the exporter; the password is read from a file, never a flag.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// A parsed `http(s)://[user:pass@]host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub userinfo: Option<(String, String)>,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("{s:?} is not a URL like http://node:9479/metrics ({why})");
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("http:// or https:// expected"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/metrics"),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (Some((percent_decode(user), percent_decode(pass))), h)
            }
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(Url {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            userinfo,
        })
    }
}

impl std::fmt::Display for Url {
    /// The URL without its credentials: what error lines and reports show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// `%XX` escapes in a URL's user name or password (a password may hold '@', ':' or '/').
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How diagnose checks the exporter's certificate: not at all (only with
/// --from.insecure-skip-verify), or as webpki does, also accepting a certificate that is
/// itself in --from.ca-file though it says it is a CA (what `openssl req -x509` makes): a
/// pinned certificate is a trust anchor, as curl and OpenSSL take it. webpki has checked
/// its validity period before it refused the CA flag; its name is checked here, and the
/// handshake's signatures prove the server holds its key.
#[derive(Debug)]
struct Verify {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// None: accept any certificate.
    webpki: Option<(
        Arc<rustls::client::WebPkiServerVerifier>,
        Vec<CertificateDer<'static>>,
    )>,
}

impl rustls::client::danger::ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some((inner, pinned)) = &self.webpki else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(CertificateError::Other(other)))
                if other.0.downcast_ref::<webpki::Error>()
                    == Some(&webpki::Error::CaUsedAsEndEntity)
                    && pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                let cert = webpki::EndEntityCert::try_from(end_entity)
                    .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
                cert.verify_is_valid_for_subject_name(server_name)
                    .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where distributions keep the system's trusted CAs (Debian and Ubuntu, RHEL and
/// Fedora, SUSE, Alpine), for when no --from.ca-file is given.
const SYSTEM_CAS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn tls_config(o: &ClientOptions) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if o.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verify {
                provider,
                webpki: None,
            }))
    } else {
        let (ca, flag) = match &o.ca_file {
            Some(f) => (f.clone(), "--from.ca-file"),
            None => (
                SYSTEM_CAS
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists())
                    .ok_or(
                        "no system CA bundle found; name the exporter's CA with --from.ca-file",
                    )?,
                "system CA bundle",
            ),
        };
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {}: {e}", ca.display());
        let mut roots = rustls::RootCertStore::empty();
        let mut pinned = Vec::new();
        for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| bad(&e))? {
            let cert = cert.map_err(|e| bad(&e))?;
            roots.add(cert.clone()).map_err(|e| bad(&e))?;
            pinned.push(cert);
        }
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(&e))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verify {
                provider,
                webpki: Some((inner, pinned)),
            }))
    };
    match (&o.cert_file, &o.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--from.cert-file {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|_| format!("--from.key-file {}: not a PEM private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("--from.cert-file and --from.key-file go together".into()),
    }
}

fn basic_auth(url: &Url, o: &ClientOptions) -> Result<Option<String>, String> {
    let creds = match (&o.username, &url.userinfo) {
        (Some(user), _) => {
            let pass = match &o.password_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| format!("--from.password-file {}: {e}", f.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
                None => String::new(),
            };
            Some((user.clone(), pass))
        }
        (None, Some(u)) => Some(u.clone()),
        (None, None) => None,
    };
    Ok(creds.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }))
}

async fn exchange<S>(io: S, url: &Url, auth: Option<&str>) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, axum::body::Body>(
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut req = axum::http::Request::get(&url.path)
        .header("host", host)
        .header("accept", "text/plain");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req
        .body(axum::body::Body::empty())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = resp.status();
    let body = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), MAX_BODY)
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8 text".into())
}

/// A failed TLS handshake as a sentence that says what to do.
fn tls_sentence(e: &std::io::Error, url: &Url, o: &ClientOptions) -> String {
    use rustls::{CertificateError, Error};
    let ca = o
        .ca_file
        .as_ref()
        .map_or("the system's CA bundle".to_owned(), |f| {
            format!("--from.ca-file {}", f.display())
        });
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return format!("TLS: {e}");
    };
    match inner {
        Error::InvalidCertificate(CertificateError::Expired) => {
            "TLS: the exporter's certificate has expired: renew it (or check this host's clock)"
                .to_owned()
        }
        Error::InvalidCertificate(CertificateError::NotValidYet) => {
            "TLS: the exporter's certificate is not valid yet: check this host's clock".to_owned()
        }
        Error::InvalidCertificate(CertificateError::NotValidForName) => format!(
            "TLS: the exporter's certificate is not for {:?}: use a name it was issued for in the URL",
            url.host
        ),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "TLS: no certificate in {ca} signed the exporter's certificate: name its CA (or the certificate itself) with --from.ca-file"
        ),
        Error::InvalidCertificate(CertificateError::Other(other))
            if other.0.downcast_ref::<webpki::Error>()
                == Some(&webpki::Error::CaUsedAsEndEntity) =>
        {
            format!(
                "TLS: the exporter's certificate says it is a CA and is not itself in {ca}: give it (or its issuing CA) with --from.ca-file"
            )
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => format!(
            "TLS: {}:{} did not answer in TLS: this looks like plain HTTP: try http://",
            url.host, url.port
        ),
        other => format!("TLS: {other}"),
    }
}

/// One GET of the exporter's metrics; every failure is one line.
pub async fn fetch(url: &Url, o: &ClientOptions) -> Result<String, String> {
    let auth = basic_auth(url, o)?;
    let work = async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| e.to_string())?;
        if url.tls {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(o)?));
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| format!("{:?} is not a valid TLS server name", url.host))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| tls_sentence(&e, url, o))?;
            exchange(tls, url, auth.as_deref()).await
        } else {
            exchange(tcp, url, auth.as_deref()).await.map_err(|e| {
                format!(
                    "{e} (if the exporter serves TLS, the URL is https://{}:{}…)",
                    url.host, url.port
                )
            })
        }
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_sentences_that_say_what_to_do() {
        use rustls::{CertificateError, Error};
        let url = Url::parse("https://node-1:9479/metrics").unwrap();
        let o = ClientOptions {
            ca_file: Some("/etc/pp/ca.pem".into()),
            ..ClientOptions::default()
        };
        let say = |e: Error| {
            tls_sentence(
                &std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                &url,
                &o,
            )
        };
        assert_eq!(
            say(Error::InvalidCertificate(CertificateError::Expired)),
            "TLS: the exporter's certificate has expired: renew it (or check this host's clock)"
        );
        assert_eq!(
            say(Error::InvalidCertificate(CertificateError::NotValidForName)),
            "TLS: the exporter's certificate is not for \"node-1\": use a name it was issued for in the URL"
        );
        assert_eq!(
            say(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            "TLS: no certificate in --from.ca-file /etc/pp/ca.pem signed the exporter's certificate: name its CA (or the certificate itself) with --from.ca-file"
        );
        assert_eq!(
            say(Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )),
            "TLS: node-1:9479 did not answer in TLS: this looks like plain HTTP: try http://"
        );
        assert_eq!(
            tls_sentence(&std::io::Error::other("reset"), &url, &o),
            "TLS: reset"
        );
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://pp:s3cret@node-1:9479/m").unwrap();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "node-1".into(),
                port: 9479,
                path: "/m".into(),
                userinfo: Some(("pp".into(), "s3cret".into())),
            }
        );
        assert_eq!(
            u.to_string(),
            "https://node-1:9479/m",
            "no credentials shown"
        );
        let u = Url::parse("http://a%40b:p%2Fw%3A1@n/").unwrap();
        assert_eq!(u.userinfo, Some(("a@b".into(), "p/w:1".into())));
        let u = Url::parse("http://[::1]:9479").unwrap();
        assert_eq!(u.to_string(), "http://[::1]:9479/metrics");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9479, "/metrics")
        );
        assert_eq!(Url::parse("http://node").unwrap().port, 80);
        for bad in [
            "node:9479",
            "http://",
            "http://n:port/",
            "ftp://x/",
            "http://[::1/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
