//! One scrape: every enabled collector concurrently, each on a blocking thread with a
//! timeout, plus the exporter's own series. Concurrent HTTP scrapes share one collection.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::LogOnce;
use crate::collectors::common::{Resources, Scrape};
use crate::collectors::{CollectError, Collector, Enabled};
use crate::metrics;
use crate::render::{self, Family};

/// Build facts for `packetpath_exporter_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("PACKETPATH_REVISION");
pub const RUSTC_VERSION: &str = env!("PACKETPATH_RUSTC_VERSION");

/// One request to a collector's thread: the collection to take part in, and where to answer.
type Reply = (
    Arc<Scrape>,
    tokio::sync::oneshot::Sender<Result<Vec<Family>, CollectError>>,
);

struct Slot {
    name: &'static str,
    collector: Arc<dyn Collector>,
    /// Requests to the collector's own thread. One long-lived thread per collector keeps
    /// its allocations in one malloc arena scrape after scrape, instead of spreading them
    /// over every thread of a blocking pool.
    requests: Mutex<std::sync::mpsc::Sender<Reply>>,
    /// Set while a collection runs; a timed-out one keeps its thread until it returns,
    /// and the next scrape must not pile another on top.
    busy: Arc<AtomicBool>,
    last_error: LogOnce,
    /// The failure of the moment, as the collector said it.
    failing: Mutex<Option<CollectError>>,
}

impl Slot {
    /// Logs a failure the first time it is seen (and at debug level after that).
    fn failed(&self, e: &CollectError) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        let name = self.name;
        if !self.last_error.first(&e.message) {
            tracing::debug!(collector = name, reason = %e, "collector still failing");
        } else if e.absent {
            tracing::info!(collector = name, reason = %e, "source not available; the collector reports success 0 until it appears");
        } else {
            tracing::warn!(collector = name, reason = %e, "collector failed; it reports success 0 until this changes");
        }
    }
}

/// Starts the thread that runs `collector` whenever asked.
fn spawn_worker(
    name: &'static str,
    collector: Arc<dyn Collector>,
    busy: Arc<AtomicBool>,
) -> std::sync::mpsc::Sender<Reply> {
    let (tx, rx) = std::sync::mpsc::channel::<Reply>();
    let spawned = std::thread::Builder::new()
        .name(format!("collector-{name}"))
        .spawn(move || {
            while let Ok((scrape, reply)) = rx.recv() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    collector.collect(&scrape)
                }))
                .unwrap_or_else(|_| Err(CollectError::new("collector panicked")));
                busy.store(false, Ordering::Release);
                // The collection's shared reads go once the last collector is done with them.
                drop(scrape);
                let _ = reply.send(r);
            }
        });
    if let Err(e) = spawned {
        // The receiver is gone with the closure: every request then fails, visibly.
        tracing::error!(collector = name, error = %e, "could not start collector thread");
    }
    tx
}

/// A collection that concurrent scrapes await together.
type InFlight = Shared<BoxFuture<'static, Bytes>>;

pub struct Scraper {
    slots: Vec<Slot>,
    /// What collectors share; each collection reads from it through its own [`Scrape`].
    resources: Arc<Resources>,
    /// process_* series (CPU, memory, descriptors, start time) from /proc/self, read by
    /// the `prometheus` crate's own collector.
    process: prometheus::process_collector::ProcessCollector,
    timeout: Duration,
    collections: AtomicU64,
    /// Size of the last exposition, to size the next one's buffer in one allocation.
    last_len: AtomicUsize,
    /// The collection in flight, by its number.
    inflight: Mutex<Option<(u64, InFlight)>>,
}

struct Outcome {
    name: &'static str,
    result: Result<Vec<Family>, CollectError>,
    seconds: f64,
}

impl Scraper {
    pub fn new(collectors: Enabled, resources: Arc<Resources>, timeout: Duration) -> Arc<Self> {
        let slots = collectors
            .into_iter()
            .map(|(name, collector)| {
                let busy = Arc::new(AtomicBool::new(false));
                Slot {
                    name,
                    requests: Mutex::new(spawn_worker(name, collector.clone(), busy.clone())),
                    collector,
                    busy,
                    last_error: LogOnce::default(),
                    failing: Mutex::new(None),
                }
            })
            .collect::<Vec<Slot>>();
        for slot in &slots {
            if let Err(e) = slot.collector.preflight() {
                slot.failed(&e);
            }
        }
        Arc::new(Scraper {
            slots,
            resources,
            process: prometheus::process_collector::ProcessCollector::for_self(),
            timeout,
            collections: AtomicU64::new(0),
            last_len: AtomicUsize::new(0),
            inflight: Mutex::new(None),
        })
    }

    /// Lets every collector undo what it changed on the host, then stops what the
    /// collectors share (on exit).
    pub fn shutdown(&self) {
        for s in &self.slots {
            s.collector.shutdown();
        }
        self.resources.shutdown();
    }

    /// Why a collector failed last (at start or on a scrape), if it is failing.
    pub fn failure(&self, name: &str) -> Option<CollectError> {
        self.slots
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.failing.lock().unwrap_or_else(|p| p.into_inner()).clone())
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
                Some((_, f)) => f.clone(),
                None => {
                    let generation = self.collections.load(Ordering::Relaxed) + 1;
                    let me = Arc::clone(self);
                    // Spawned, so a scraper that hangs up does not cancel the others'
                    // result; the task itself retires the slot when done, so a result
                    // nobody waited for is never served later as if it were fresh.
                    let task = tokio::spawn(async move {
                        let out = me.collect_all().await;
                        let mut slot = me.inflight.lock().unwrap_or_else(|p| p.into_inner());
                        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                            *slot = None;
                        }
                        out
                    });
                    let f = async move { task.await.unwrap_or_default() }
                        .boxed()
                        .shared();
                    *slot = Some((generation, f.clone()));
                    f
                }
            }
        };
        fut.await
    }

    async fn run_one(&self, slot: &Slot, scrape: &Arc<Scrape>) -> Outcome {
        let start = Instant::now();
        let result = if slot.busy.swap(true, Ordering::AcqRel) {
            Err(CollectError::new(format!(
                "previous collection still running after the {:?} timeout",
                self.timeout
            )))
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = slot
                .requests
                .lock()
                .map(|r| r.send((scrape.clone(), tx)).is_ok())
                .unwrap_or(false);
            if !sent {
                slot.busy.store(false, Ordering::Release);
                Err(CollectError::new("collector thread is not running"))
            } else {
                match tokio::time::timeout(self.timeout, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(CollectError::new("collector thread ended")),
                    Err(_) => Err(CollectError::new(format!(
                        "timed out after {:?}",
                        self.timeout
                    ))),
                }
            }
        };
        Outcome {
            name: slot.name,
            result,
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    async fn collect_all(&self) -> Bytes {
        let number = self.collections.fetch_add(1, Ordering::Relaxed) + 1;
        let scrape = Arc::new(Scrape::new(number, self.resources.clone()));
        let outcomes =
            futures::future::join_all(self.slots.iter().map(|s| self.run_one(s, &scrape))).await;
        drop(scrape);

        let mut success = Family::gauge(
            metrics::SCRAPE_COLLECTOR_SUCCESS,
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
                    *slot.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if slot.last_error.reset() {
                        tracing::info!(collector = o.name, "collector recovered");
                    }
                }
                Err(e) => {
                    success.push(&[o.name], 0.0);
                    slot.failed(&e);
                }
            }
        }
        let mut build = Family::gauge(
            "packetpath_exporter_build_info",
            "Build facts of the running exporter; always 1.",
            &["version", "revision", "rustc_version"],
        );
        build.push(&[VERSION, REVISION, RUSTC_VERSION], 1.0);
        let inconsistent = Family::single_counter(
            "packetpath_scrape_netlink_dumps_inconsistent_total",
            "Netlink dumps that still raced a change after every retry and were used as they came.",
            crate::netlink::inconsistent_dumps() as f64,
        );
        families.extend([success, duration, build, inconsistent]);
        let last = self.last_len.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(last + last / 8 + 4096);
        render::encode_text(families, &mut out);
        render::encode_proto(
            &prometheus::core::Collector::collect(&self.process),
            &mut out,
        );
        self.last_len.store(out.len(), Ordering::Relaxed);
        Bytes::from(out)
    }
}
