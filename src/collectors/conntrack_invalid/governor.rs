//! The kernel-cost governor: logging an invalid packet costs the kernel several
//! microseconds, so during a flood the listener puts `nf_conntrack_log_invalid` back to its
//! recorded original value, and logs again after a back-off. While logging is paused the
//! kernel's own invalid counter (/proc/net/stat/nf_conntrack, summed over CPUs) counts
//! what could not be classified.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::settings;
use crate::render::Family;

/// The window the message rate is measured over.
pub const WINDOW: Duration = Duration::from_secs(1);
/// The first back-off; each pause that follows a resume too soon doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off: logging resumes at most this long after a flood's end (and the
/// window that sees it end), within 5 minutes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(240);

/// Why the kernel's invalid count could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatError {
    #[error("no header line")]
    Empty,
    #[error("no invalid column")]
    NoColumn,
    #[error("line {line}: {value:?} is not a hexadecimal counter")]
    BadValue { line: usize, value: String },
}

/// The `invalid` column of /proc/net/stat/nf_conntrack, summed over CPUs.
pub fn parse_invalid(text: &str) -> Result<u64, StatError> {
    let mut lines = text.lines();
    let header = lines.next().ok_or(StatError::Empty)?;
    let col = header
        .split_whitespace()
        .position(|h| h == "invalid")
        .ok_or(StatError::NoColumn)?;
    let mut sum = 0u64;
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let field = line.split_whitespace().nth(col).unwrap_or("");
        let v = u64::from_str_radix(field, 16).map_err(|_| StatError::BadValue {
            line: n + 2,
            value: field.to_owned(),
        })?;
        sum = sum.wrapping_add(v);
    }
    Ok(sum)
}

/// Packets the kernel counted invalid while the sysctl changed: logged or not, they are
/// not in the unclassified count.
fn in_flight(before: Option<u64>, after: Option<u64>) -> u64 {
    match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b),
        _ => 0,
    }
}

fn kernel_invalid(procfs: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(procfs.join("net/stat/nf_conntrack")).ok()?;
    parse_invalid(&text).ok()
}

/// What scrapes read of the governor.
#[derive(Default)]
pub struct Status {
    pub paused: AtomicBool,
    pub pauses: AtomicU64,
    /// Someone else set nf_conntrack_log_invalid while the collector ran: it is theirs,
    /// and shutdown leaves it as it is.
    pub yielded: AtomicBool,
    /// Kernel-counted invalid packets over the pauses that ended.
    unclassified: AtomicU64,
    /// The kernel's count when the current pause began.
    paused_at: Mutex<Option<u64>>,
}

impl Status {
    /// Kernel-counted invalid packets while logging was paused, the current pause included.
    pub fn unclassified(&self, procfs: &Path) -> u64 {
        let done = self.unclassified.load(Ordering::Relaxed);
        let at = *self.paused_at.lock().unwrap_or_else(|p| p.into_inner());
        match (at, at.and_then(|_| kernel_invalid(procfs))) {
            (Some(at), Some(now)) => done + now.saturating_sub(at),
            _ => done,
        }
    }

    pub fn render(&self, procfs: &Path) -> Vec<Family> {
        let one = |name, help, kind: fn(&str, &str, &'static [&'static str]) -> Family, v: u64| {
            let mut f = kind(name, help, &[]);
            f.push(&[], v as f64);
            f
        };
        vec![
            one(
                "packetpath_conntrack_invalid_logging_active",
                "0 while the governor has paused conntrack's logging of invalid packets, else 1.",
                Family::gauge,
                u64::from(!self.paused.load(Ordering::Relaxed)),
            ),
            one(
                "packetpath_conntrack_invalid_logging_pauses_total",
                "Times the governor paused logging because messages came faster than --collector.conntrack_invalid.max-rate.",
                Family::counter,
                self.pauses.load(Ordering::Relaxed),
            ),
            one(
                "packetpath_conntrack_invalid_unclassified_packets_total",
                "Packets the kernel counted invalid while logging was paused, so they have no reason.",
                Family::counter,
                self.unclassified(procfs),
            ),
        ]
    }
}

/// The listener's side: watches the message rate, pauses and resumes.
pub struct Governor {
    max_rate: u64,
    procfs: PathBuf,
    /// nf_conntrack_log_invalid while logging, and as it was before the collector.
    ours: String,
    original: String,
    window_start: Instant,
    window_base: u64,
    backoff: Duration,
    /// When logging last resumed (or started).
    active_since: Instant,
    /// While paused: when to try again.
    resume_at: Option<Instant>,
}

impl Governor {
    pub fn new(max_rate: u64, procfs: PathBuf, ours: String, original: String) -> Governor {
        let now = Instant::now();
        Governor {
            max_rate,
            procfs,
            ours,
            original,
            window_start: now,
            window_base: 0,
            backoff: FIRST_BACKOFF,
            active_since: now,
            resume_at: None,
        }
    }

    /// Called after every read with the messages received so far (counted, undecodable
    /// and lost alike: each cost the kernel the same).
    pub fn tick(&mut self, messages: u64, status: &Status) {
        let now = Instant::now();
        if let Some(at) = self.resume_at {
            if now >= at {
                self.resume(now, status);
            }
            self.window_start = now;
            self.window_base = messages;
            return;
        }
        let in_window = messages.saturating_sub(self.window_base);
        if in_window > self.max_rate {
            self.pause(now, status);
        }
        if now.duration_since(self.window_start) >= WINDOW || self.resume_at.is_some() {
            self.window_start = now;
            self.window_base = messages;
        }
        // Logging stayed on for a whole back-off: the next pause starts from the first.
        if now.duration_since(self.active_since) > self.backoff {
            self.backoff = FIRST_BACKOFF;
        }
    }

    fn pause(&mut self, now: Instant, status: &Status) {
        if status.yielded.load(Ordering::Relaxed) {
            return;
        }
        match settings::read_log_invalid(&self.procfs) {
            Ok(v) if v == self.ours => {}
            Ok(v) => return self.yield_to(&v, status),
            Err(e) => {
                tracing::error!(error = %e, "governor: cannot read nf_conntrack_log_invalid; not pausing");
                return;
            }
        }
        let before = kernel_invalid(&self.procfs);
        if let Err(e) = settings::write_log_invalid(&self.procfs, &self.original) {
            tracing::error!(error = %e, "governor: cannot pause logging");
            return;
        }
        // Counted from after the write: a packet marked invalid between the two reads
        // (in flight) may have been logged or not, and is counted here in neither case.
        let after = kernel_invalid(&self.procfs);
        *status.paused_at.lock().unwrap_or_else(|p| p.into_inner()) = after;
        status.paused.store(true, Ordering::Relaxed);
        status.pauses.fetch_add(1, Ordering::Relaxed);
        self.resume_at = Some(now + self.backoff);
        tracing::warn!(
            max_rate = self.max_rate,
            backoff_s = self.backoff.as_secs(),
            nf_conntrack_log_invalid = %self.original,
            in_flight = in_flight(before, after),
            "conntrack-invalid messages over the budget: logging paused"
        );
    }

    fn resume(&mut self, now: Instant, status: &Status) {
        match settings::read_log_invalid(&self.procfs) {
            Ok(v) if v == self.original => {}
            Ok(v) => return self.yield_to(&v, status),
            Err(e) => {
                tracing::error!(error = %e, "governor: cannot read nf_conntrack_log_invalid; trying later");
                self.resume_at = Some(now + self.backoff);
                return;
            }
        }
        // Counted until before the write, for the same reason as at the pause.
        let before = kernel_invalid(&self.procfs);
        if let Err(e) = settings::write_log_invalid(&self.procfs, &self.ours) {
            tracing::error!(error = %e, "governor: cannot resume logging; trying later");
            self.resume_at = Some(now + self.backoff);
            return;
        }
        let after = kernel_invalid(&self.procfs);
        let mut at = status.paused_at.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(then), Some(now)) = (*at, before) {
            status
                .unclassified
                .fetch_add(now.saturating_sub(then), Ordering::Relaxed);
        }
        *at = None;
        drop(at);
        status.paused.store(false, Ordering::Relaxed);
        self.resume_at = None;
        self.active_since = now;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tracing::info!(
            in_flight = in_flight(before, after),
            "conntrack-invalid logging resumed"
        );
    }

    /// Another program set the sysctl: it owns it now, and the governor stops acting.
    fn yield_to(&mut self, found: &str, status: &Status) {
        status.yielded.store(true, Ordering::Relaxed);
        self.resume_at = None;
        // A pause under way ends here: what the kernel counts from now on is logged or not
        // as the other program decided, and is not the governor's to count.
        let mut at = status.paused_at.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(then), Some(now)) = (*at, kernel_invalid(&self.procfs)) {
            status
                .unclassified
                .fetch_add(now.saturating_sub(then), Ordering::Relaxed);
        }
        *at = None;
        drop(at);
        status.paused.store(false, Ordering::Relaxed);
        tracing::warn!(
            nf_conntrack_log_invalid = %found,
            "governor: nf_conntrack_log_invalid was changed by someone else; leaving it alone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_is_summed_over_cpus() {
        let text = "entries  clashres found invalid ignore\n\
                    00000003 00000000 00000000 0000000a 00000000\n\
                    00000003 00000000 00000000 00000105 00000000\n";
        assert_eq!(parse_invalid(text), Ok(0x10f));
        assert_eq!(parse_invalid(""), Err(StatError::Empty));
        assert_eq!(
            parse_invalid("entries found\n1 2\n"),
            Err(StatError::NoColumn)
        );
        assert_eq!(
            parse_invalid("invalid\nzz\n"),
            Err(StatError::BadValue {
                line: 2,
                value: "zz".into()
            })
        );
        assert!(parse_invalid("a invalid\n1\n").is_err());
    }

    /// A procfs stand-in with the sysctl at `value` and the kernel's invalid count at `n`.
    fn procfs(tag: &str, value: &str, n: u64) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pp-gov-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sys/net/netfilter")).unwrap();
        std::fs::create_dir_all(dir.join("net/stat")).unwrap();
        std::fs::write(
            dir.join("sys/net/netfilter/nf_conntrack_log_invalid"),
            value,
        )
        .unwrap();
        set_invalid(&dir, n);
        dir
    }

    fn set_invalid(dir: &Path, n: u64) {
        std::fs::write(
            dir.join("net/stat/nf_conntrack"),
            format!("entries invalid\n00000000 {n:08x}\n"),
        )
        .unwrap();
    }

    #[test]
    fn a_flood_pauses_logging_and_the_back_off_resumes_it() {
        let dir = procfs("flood", "255", 100);
        let status = Status::default();
        let mut g = Governor::new(10, dir.clone(), "255".into(), "0".into());
        g.tick(10, &status);
        assert!(!status.paused.load(Ordering::Relaxed));
        g.tick(11, &status);
        assert!(status.paused.load(Ordering::Relaxed));
        assert_eq!(settings::read_log_invalid(&dir).unwrap(), "0");
        set_invalid(&dir, 130);
        assert_eq!(status.unclassified(&dir), 30);
        // Back-off over: logging resumes, the pause's count is kept, the back-off doubles.
        g.resume_at = Some(Instant::now());
        g.tick(11, &status);
        assert!(!status.paused.load(Ordering::Relaxed));
        assert_eq!(settings::read_log_invalid(&dir).unwrap(), "255");
        set_invalid(&dir, 140);
        assert_eq!(status.unclassified(&dir), 30);
        assert_eq!(g.backoff, FIRST_BACKOFF * 2);
        assert_eq!(status.pauses.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_sysctl_changed_by_someone_else_is_left_alone() {
        let dir = procfs("owner", "255", 0);
        let status = Status::default();
        let mut g = Governor::new(10, dir.clone(), "255".into(), "0".into());
        g.tick(20, &status);
        assert!(status.paused.load(Ordering::Relaxed));
        // Another program enables logging for UDP while we are paused: not resumed over it.
        std::fs::write(dir.join("sys/net/netfilter/nf_conntrack_log_invalid"), "17").unwrap();
        g.resume_at = Some(Instant::now());
        g.tick(20, &status);
        assert_eq!(settings::read_log_invalid(&dir).unwrap(), "17");
        assert!(status.yielded.load(Ordering::Relaxed));
        assert!(!status.paused.load(Ordering::Relaxed));
        // No further pause either.
        g.tick(40, &status);
        assert_eq!(settings::read_log_invalid(&dir).unwrap(), "17");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap() {
        let mut b = FIRST_BACKOFF;
        let mut total = Duration::ZERO;
        for _ in 0..10 {
            total += b;
            b = (b * 2).min(MAX_BACKOFF);
        }
        assert_eq!(b, MAX_BACKOFF);
        assert!(MAX_BACKOFF + WINDOW < Duration::from_secs(300));
        assert!(total > MAX_BACKOFF);
    }
}
