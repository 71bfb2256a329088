//! The exporter-toolkit web configuration file, read once at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use rustls::ServerConfig;
use serde::Deserialize;

use super::auth::{BasicAuth, Guard};
use super::tls;

/// Why the web configuration cannot be used. Each message is one line that names the file
/// and the key; none contains a password hash or key material.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("web config {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("web config {file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("web config {file}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

/// The checked configuration: a TLS server (None: plain HTTP) and the guard for routes.
#[derive(Default)]
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub guard: Guard,
}

// The file, as exporter-toolkit spells it. Unknown keys are errors there too; keys it knows
// that this exporter cannot honour are listed so that the error says so instead of
// "unknown field". Every value is optional: Go reads `key: null` (templated files write
// it) as empty.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of web settings")]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of TLS settings")]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    // Has had no effect in Go since 1.18; accepted so shared files keep working.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    cipher_suites: Option<yaml_serde::Value>,
    curve_preferences: Option<yaml_serde::Value>,
    client_allowed_sans: Option<yaml_serde::Value>,
    cert: Option<yaml_serde::Value>,
    key: Option<yaml_serde::Value>,
    client_ca: Option<yaml_serde::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of HTTP settings")]
struct HttpFile {
    // This server speaks HTTP/1.1 only, which every Prometheus scrapes.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// What `tls_server_config` asks for, with paths resolved against the file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClientAuth {
    None,
    /// Verify a certificate against these CAs if the client sends one.
    IfGiven(PathBuf),
    /// Require a certificate that verifies against these CAs.
    Required(PathBuf),
}

/// Headers exporter-toolkit lets a file set (matched without case), with the values it
/// allows (empty: any).
const HEADERS: [(&str, &[&str]); 5] = [
    ("strict-transport-security", &[]),
    ("x-content-type-options", &["nosniff"]),
    ("x-frame-options", &["deny", "sameorigin"]),
    ("x-xss-protection", &[]),
    ("content-security-policy", &[]),
];

/// Reads, checks and builds everything the file asks for: certificates and keys are loaded
/// and matched, CA files parsed, every hash checked to be bcrypt.
pub fn load(file: &Path) -> Result<WebConfig, WebConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| WebConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let invalid = |key: &str, message: String| WebConfigError::Invalid {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    };
    let parsed = parse(&text, dir).map_err(|e| match e {
        Problem::Syntax(message) => WebConfigError::Syntax {
            file: file.to_owned(),
            message,
        },
        Problem::Key(key, message) => invalid(&key, message),
    })?;
    let tls = match &parsed.tls {
        Some(settings) => Some(tls::server_config(settings).map_err(|(k, m)| invalid(k, m))?),
        None => None,
    };
    let auth = match parsed.users {
        Some(users) => {
            Some(Arc::new(BasicAuth::new(users).map_err(|(u, m)| {
                invalid(&format!("basic_auth_users.{u}"), m)
            })?))
        }
        None => None,
    };
    Ok(WebConfig {
        tls,
        guard: Guard::new(auth, parsed.headers),
    })
}

/// The file's meaning before anything on disk besides it is read.
pub(super) struct Parsed {
    pub tls: Option<TlsSettings>,
    pub users: Option<BTreeMap<String, String>>,
    pub headers: HeaderMap,
}

#[derive(Debug, PartialEq)]
pub(super) enum Problem {
    Syntax(String),
    Key(String, String),
}

fn key(k: &str, m: impl Into<String>) -> Problem {
    Problem::Key(k.to_owned(), m.into())
}

pub(super) fn parse(text: &str, dir: &Path) -> Result<Parsed, Problem> {
    // An empty file is a valid, empty configuration, as in exporter-toolkit.
    let f: File = if text.trim().is_empty() {
        File::default()
    } else {
        yaml_serde::from_str(text).map_err(|e| Problem::Syntax(redacted(&e.to_string())))?
    };
    let tls = match f.tls_server_config {
        Some(t) => tls_settings(t, dir)?,
        None => None,
    };
    let headers = headers(
        f.http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default(),
    )?;
    let users = f.basic_auth_users.filter(|u| !u.is_empty());
    Ok(Parsed {
        tls,
        users,
        headers,
    })
}

fn tls_settings(t: TlsFile, dir: &Path) -> Result<Option<TlsSettings>, Problem> {
    let [cert_file, key_file, client_ca_file, client_auth_type] = [
        t.cert_file,
        t.key_file,
        t.client_ca_file,
        t.client_auth_type,
    ]
    .map(Option::unwrap_or_default);
    for (name, set) in [
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
        ("client_allowed_sans", t.client_allowed_sans.is_some()),
        ("cert", t.cert.is_some()),
        ("key", t.key.is_some()),
        ("client_ca", t.client_ca.is_some()),
    ] {
        if set {
            let hint = match name {
                "cert" | "key" | "client_ca" => "; give a file with the _file key instead",
                "client_allowed_sans" => "; issue client certificates from a dedicated CA instead",
                _ => "; the TLS library offers only its modern defaults",
            };
            return Err(key(
                &format!("tls_server_config.{name}"),
                format!("not supported by packetpath-exporter{hint}"),
            ));
        }
    }
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            dir.join(p)
        }
    };
    let client_auth = match client_auth_type.as_str() {
        "" | "NoClientCert" => {
            if !client_ca_file.is_empty() {
                return Err(key(
                    "tls_server_config.client_ca_file",
                    "needs client_auth_type VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                ));
            }
            ClientAuth::None
        }
        kind @ ("VerifyClientCertIfGiven" | "RequireAndVerifyClientCert") => {
            if client_ca_file.is_empty() {
                return Err(key(
                    "tls_server_config.client_auth_type",
                    format!("{kind} needs client_ca_file"),
                ));
            }
            let ca = resolve(&client_ca_file);
            if kind == "VerifyClientCertIfGiven" {
                ClientAuth::IfGiven(ca)
            } else {
                ClientAuth::Required(ca)
            }
        }
        kind @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert") => {
            return Err(key(
                "tls_server_config.client_auth_type",
                format!(
                    "{kind} is not supported: it accepts certificates without verifying them; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ),
            ));
        }
        other => {
            return Err(key(
                "tls_server_config.client_auth_type",
                format!(
                    "unknown value {other:?} (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
                ),
            ));
        }
    };
    if cert_file.is_empty() && key_file.is_empty() {
        if client_auth != ClientAuth::None {
            return Err(key(
                "tls_server_config.client_auth_type",
                "needs cert_file and key_file",
            ));
        }
        // exporter-toolkit serves plain HTTP when no certificate is given.
        return Ok(None);
    }
    for (name, v) in [("cert_file", &cert_file), ("key_file", &key_file)] {
        if v.is_empty() {
            return Err(key(
                &format!("tls_server_config.{name}"),
                "missing (cert_file and key_file go together)",
            ));
        }
    }
    let min = version("min_version", t.min_version.as_deref(), 12)?;
    let max = version("max_version", t.max_version.as_deref(), 13)?;
    if min > max {
        return Err(key("tls_server_config.min_version", "is above max_version"));
    }
    let versions = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, p)| p)
        .collect();
    Ok(Some(TlsSettings {
        cert_file: resolve(&cert_file),
        key_file: resolve(&key_file),
        client_auth,
        versions,
    }))
}

/// "TLS12" → 12. TLS 1.0 and 1.1 are refused rather than silently raised.
fn version(name: &str, v: Option<&str>, default: u8) -> Result<u8, Problem> {
    match v {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(old @ ("TLS10" | "TLS11")) => Err(key(
            &format!("tls_server_config.{name}"),
            format!("{old} is not supported; TLS12 is the oldest version offered"),
        )),
        Some(other) => Err(key(
            &format!("tls_server_config.{name}"),
            format!("unknown version {other:?} (TLS12, TLS13)"),
        )),
    }
}

fn headers(given: BTreeMap<String, String>) -> Result<HeaderMap, Problem> {
    let mut out = HeaderMap::new();
    for (name, value) in given {
        let k = format!("http_server_config.headers.{name}");
        let Some((header, allowed)) = HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(&name))
        else {
            return Err(key(&k, "this header cannot be configured"));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(key(&k, format!("must be one of {allowed:?}")));
        }
        let v = HeaderValue::from_str(&value).map_err(|_| key(&k, "not a valid header value"))?;
        out.insert(HeaderName::from_static(header), v);
    }
    Ok(out)
}

/// The parser's message on one line, without the values it quotes: a hash pasted in the
/// wrong place (`basic_auth_users: prom:$2y$…`) must not reach the log.
fn redacted(message: &str) -> String {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let quoted = regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).expect("a valid regex literal");
    quoted.replace_all(&one_line, "\"…\"").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Parsed {
        match parse(text, Path::new("/etc/pp")) {
            Ok(p) => p,
            Err(e) => panic!("{text}: {e:?}"),
        }
    }

    fn err(text: &str) -> (String, String) {
        match parse(text, Path::new("/etc/pp")) {
            Err(Problem::Key(k, m)) => (k, m),
            Err(Problem::Syntax(m)) => ("<syntax>".into(), m),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn empty_file_and_plain_http() {
        let p = ok("");
        assert!(p.tls.is_none() && p.users.is_none() && p.headers.is_empty());
        let p = ok("tls_server_config: {}\nbasic_auth_users: {}\n");
        assert!(p.tls.is_none() && p.users.is_none());
    }

    #[test]
    fn tls_paths_resolve_against_the_file_and_versions_default_to_1_2_and_1_3() {
        let t = ok("tls_server_config:\n  cert_file: a.crt\n  key_file: /abs/a.key\n")
            .tls
            .unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/pp/a.crt"));
        assert_eq!(t.key_file, Path::new("/abs/a.key"));
        assert_eq!(t.client_auth, ClientAuth::None);
        assert_eq!(t.versions.len(), 2);
        let t = ok("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  prefer_server_cipher_suites: true\n")
            .tls
            .unwrap();
        assert_eq!(t.versions, vec![&rustls::version::TLS13]);
        assert_eq!(t.client_auth, ClientAuth::Required("/etc/pp/ca.pem".into()));
    }

    #[test]
    fn mistakes_name_their_key() {
        let tls =
            |extra: &str| format!("tls_server_config:\n  cert_file: a\n  key_file: b\n{extra}");
        assert_eq!(
            err("tls_server_config:\n  cert_file: a\n").0,
            "tls_server_config.key_file"
        );
        assert_eq!(
            err(&tls("  min_version: TLS10\n")).0,
            "tls_server_config.min_version"
        );
        assert_eq!(
            err(&tls("  min_version: TLS13\n  max_version: TLS12\n")).1,
            "is above max_version"
        );
        assert_eq!(
            err(&tls("  client_ca_file: ca\n")).0,
            "tls_server_config.client_ca_file"
        );
        assert!(
            err(&tls("  client_auth_type: RequireAndVerifyClientCert\n"))
                .1
                .contains("needs client_ca_file")
        );
        assert!(
            err(&tls("  client_auth_type: RequestClientCert\n"))
                .1
                .contains("without verifying")
        );
        assert!(
            err(&tls("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"))
                .1
                .contains("not supported")
        );
        assert_eq!(
            err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n").0,
            "http_server_config.headers.X-Frame-Options"
        );
        assert_eq!(
            err("http_server_config:\n  headers:\n    Server: x\n").1,
            "this header cannot be configured"
        );
        let (k, m) = err("tls_server_config:\n  cert_fle: a\n");
        assert_eq!(k, "<syntax>");
        assert!(m.contains("unknown field `cert_fle`"), "{m}");
        assert!(!m.contains('\n'));
    }

    #[test]
    fn null_is_empty_as_in_go() {
        let p = ok(
            "tls_server_config:\n  cert_file: null\n  key_file: ~\n  client_auth_type: null\n  client_ca_file:\nhttp_server_config:\n  headers: null\nbasic_auth_users: null\n",
        );
        assert!(p.tls.is_none() && p.users.is_none() && p.headers.is_empty());
    }

    #[test]
    fn quoted_values_stay_out_of_errors() {
        let (k, m) = err("basic_auth_users: prom:$2y$10$abcdefghijklmnopqrstuv\n");
        assert_eq!(k, "<syntax>");
        assert!(!m.contains("$2y$"), "{m}");
        assert!(
            m.contains("basic_auth_users: invalid type: string \"…\", expected a map"),
            "{m}"
        );
    }

    #[test]
    fn allowed_headers_are_kept() {
        let h = ok("http_server_config:\n  http2: false\n  headers:\n    strict-transport-security: max-age=31536000\n    X-Content-Type-Options: nosniff\n").headers;
        assert_eq!(h["strict-transport-security"], "max-age=31536000");
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
}
