//! One scrape: every enabled collector concurrently, each on a blocking thread with a
//! timeout, plus the exporter's own series. Concurrent HTTP scrapes share one collection.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::LogOnce;
use crate::collectors::{CollectError, Collector, Enabled};
use crate::render::{self, Family};

/// Build facts for `packetpath_exporter_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("PACKETPATH_REVISION");
pub const RUSTC_VERSION: &str = env!("PACKETPATH_RUSTC_VERSION");

struct Slot {
    name: &'static str,
    collector: Arc<dyn Collector>,
    /// Set while a collection runs; a timed-out one keeps its thread until it returns,
    /// and the next scrape must not pile another on top.
    busy: Arc<AtomicBool>,
    last_error: LogOnce,
}

/// A collection that concurrent scrapes await together.
type InFlight = Shared<BoxFuture<'static, Bytes>>;

pub struct Scraper {
    slots: Vec<Slot>,
    timeout: Duration,
    collections: AtomicU64,
    /// Size of the last exposition, to size the next one's buffer in one allocation.
    last_len: AtomicUsize,
    inflight: Mutex<Option<InFlight>>,
}

struct Outcome {
    name: &'static str,
    result: Result<Vec<Family>, CollectError>,
    seconds: f64,
}

impl Scraper {
    pub fn new(collectors: Enabled, timeout: Duration) -> Arc<Self> {
        let slots = collectors
            .into_iter()
            .map(|(name, collector)| Slot {
                name,
                collector,
                busy: Arc::new(AtomicBool::new(false)),
                last_error: LogOnce::default(),
            })
            .collect();
        Arc::new(Scraper {
            slots,
            timeout,
            collections: AtomicU64::new(0),
            last_len: AtomicUsize::new(0),
            inflight: Mutex::new(None),
        })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.slots.iter().map(|s| s.name).collect()
    }

    /// How many collections have run; concurrent scrapes that shared one count once.
    pub fn collections(&self) -> u64 {
        self.collections.load(Ordering::Relaxed)
    }

    /// The encoded text exposition. Callers arriving while a collection is in flight wait
    /// for that one instead of starting their own.
    pub async fn scrape(self: &Arc<Self>) -> Bytes {
        let fut = {
            let mut slot = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(f) => f.clone(),
                None => {
                    let me = Arc::clone(self);
                    // Spawned, so a scraper that hangs up does not cancel the others' result.
                    let task = tokio::spawn(async move { me.collect_all().await });
                    let f = async move { task.await.unwrap_or_default() }
                        .boxed()
                        .shared();
                    *slot = Some(f.clone());
                    f
                }
            }
        };
        let out = fut.clone().await;
        let mut slot = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|f| f.ptr_eq(&fut)) {
            *slot = None;
        }
        out
    }

    async fn run_one(&self, slot: &Slot) -> Outcome {
        let start = Instant::now();
        let result = if slot.busy.swap(true, Ordering::AcqRel) {
            Err(CollectError(format!(
                "previous collection still running after the {:?} timeout",
                self.timeout
            )))
        } else {
            let collector = Arc::clone(&slot.collector);
            let busy = Arc::clone(&slot.busy);
            let task = tokio::task::spawn_blocking(move || {
                let r = collector.collect();
                busy.store(false, Ordering::Release);
                r
            });
            match tokio::time::timeout(self.timeout, task).await {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => {
                    slot.busy.store(false, Ordering::Release);
                    Err(CollectError(format!("collector panicked: {join}")))
                }
                Err(_) => Err(CollectError(format!("timed out after {:?}", self.timeout))),
            }
        };
        Outcome {
            name: slot.name,
            result,
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    async fn collect_all(&self) -> Bytes {
        self.collections.fetch_add(1, Ordering::Relaxed);
        let outcomes = futures::future::join_all(self.slots.iter().map(|s| self.run_one(s))).await;

        let mut success = Family::gauge(
            "packetpath_scrape_collector_success",
            "Whether the collector succeeded on this scrape (1) or failed (0).",
            &["collector"],
        );
        let mut duration = Family::gauge(
            "packetpath_scrape_collector_duration_seconds",
            "Time the collector took on this scrape.",
            &["collector"],
        );
        let mut families = Vec::new();
        for (o, slot) in outcomes.into_iter().zip(&self.slots) {
            duration.push(&[o.name], o.seconds);
            match o.result {
                Ok(fams) => {
                    success.push(&[o.name], 1.0);
                    families.extend(fams);
                    if slot.last_error.reset() {
                        tracing::info!(collector = o.name, "collector recovered");
                    }
                }
                Err(e) => {
                    success.push(&[o.name], 0.0);
                    if slot.last_error.first(&e.0) {
                        tracing::warn!(collector = o.name, reason = %e, "collector failed; it reports success 0 until this changes");
                    } else {
                        tracing::debug!(collector = o.name, reason = %e, "collector still failing");
                    }
                }
            }
        }
        let mut build = Family::gauge(
            "packetpath_exporter_build_info",
            "Build facts of the running exporter; always 1.",
            &["version", "revision", "rustc_version"],
        );
        build.push(&[VERSION, REVISION, RUSTC_VERSION], 1.0);
        families.extend([success, duration, build]);
        let last = self.last_len.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(last + last / 8 + 4096);
        render::encode_text(families, &mut out);
        self.last_len.store(out.len(), Ordering::Relaxed);
        Bytes::from(out)
    }
}
