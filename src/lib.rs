//! packetpath-exporter: where packets die between the tunnel and a VM's TAP.
//!
//! Layout: `collectors/` holds one module per source (fetch → parse → render) and the one
//! registry list; `netlink/` the transport trait and the pure wire decoder; `scrape` runs
//! collectors; `server` serves HTTP and `web` secures it (TLS, basic auth); `cli` turns
//! flags into a [`collectors::Config`]; `diagnose` is the one-command evidence chain.

pub mod cli;
pub mod collectors;
pub mod connections;
pub mod counter;
pub mod diagnose;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod render;
pub mod roles;
pub mod scrape;
pub mod server;
pub mod web;

use std::sync::Mutex;

/// Remembers the last message of a condition so that it is logged once, not per scrape.
#[derive(Debug, Default)]
pub struct LogOnce(Mutex<Option<String>>);

impl LogOnce {
    /// Records `msg`; true if it differs from the message recorded before (log it then).
    pub fn first(&self, msg: &str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(msg) {
            return false;
        }
        *last = Some(msg.to_owned());
        true
    }

    /// The condition recorded last, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the condition; true if one was recorded (it has just cleared).
    pub fn reset(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::LogOnce;

    #[test]
    fn log_once_reports_changes_only() {
        let l = LogOnce::default();
        assert!(!l.reset());
        assert!(l.first("a"));
        assert!(!l.first("a"));
        assert!(l.first("b"));
        assert!(l.reset());
        assert!(l.first("b"));
    }
}
