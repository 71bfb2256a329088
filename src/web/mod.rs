//! `--web.config.file`: TLS, basic auth and response headers for the HTTP endpoint, in the
//! file format of the Prometheus exporter-toolkit so one file can serve several exporters.
//!
//! `config` reads and checks the file (every mistake is an error at start), `tls` builds the
//! rustls server and the listener that handshakes off the accept path, `auth` guards routes.

mod auth;
mod config;
mod tls;

pub use auth::Guard;
pub use config::{WebConfig, WebConfigError, load};
pub use tls::TlsListener;
