//! `drops` (opt-in): every packet the kernel drops, by device and the kernel's reason,
//! from the kernel's drop monitor (generic netlink family `NET_DM`, the one `dropwatch`
//! uses), with no eBPF.
//!
//! A background thread runs one monitoring session in packet mode: the kernel sends one
//! alert per dropped packet with the device it last arrived on, the reason (Linux 5.18+;
//! the dropping function before) and the frame's first bytes, cut after its UDP header
//! ([`TRUNC_LEN`]). The thread counts alerts as the kernel gave them (`counts.rs`); each
//! scrape credits them to the VM port the frame was heading to or the device it came in
//! on, with the scrape's links and VM ports. The kernel's own count of alerts it could
//! not queue is read every few seconds, off the scrape path.
//!
//! The monitor is kernel-wide, so the collector is off by default and starts it only when
//! nobody runs it (`session.rs`: the state file, a dead predecessor's session stopped,
//! another program's never touched), and stops it on exit.

pub mod alert;
pub mod counts;
mod session;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::alert::{Config, Message, NET_DM_ALERT_MODE_PACKET};
use self::counts::{Context, Pending, Raw, Totals};
use self::session::Session;
use super::common::devices::Devices;
use super::common::{Resources, Scrape};
use super::{CollectError, Collector, Spec, Worker};
use crate::metrics;
use crate::netlink::Transport;
use crate::netlink::subscribe::AckError;
use crate::render::Family;

pub const SPEC: Spec = Spec {
    name: "drops",
    help: "Every packet the kernel drops, by device and the kernel's reason (starts the kernel-wide drop monitor while running; needs drop_monitor loaded, CAP_NET_ADMIN and CAP_SYS_ADMIN, host network namespace).",
    default_enabled: false,
    args: super::flags::<Options>,
    build: |m, r| Ok(Arc::new(Drops::start(r, &super::options(m)?))),
};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Where drops records the drop monitor session it started, to stop it after a crash.
    #[arg(
        id = "collector.drops.state-file",
        long = "collector.drops.state-file",
        value_name = "PATH",
        default_value = "/run/packetpath-exporter/drop-monitor.state"
    )]
    pub state_file: PathBuf,

    /// Devices drops counts separately, VM ports and tunnels aside; the rest count as "other".
    #[arg(
        id = "collector.drops.max-devices",
        long = "collector.drops.max-devices",
        value_name = "N",
        default_value_t = 64
    )]
    pub max_devices: usize,

    /// Drop alerts the kernel may queue per CPU for the exporter (each holds the dropped packet until sent); beyond it the kernel counts them lost.
    #[arg(
        id = "collector.drops.queue-len",
        long = "collector.drops.queue-len",
        value_name = "N",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub queue_len: u32,
}

/// Bytes of each dropped frame the kernel copies into its alert: the Ethernet destination,
/// which names the VM port a frame was heading to, and through the UDP header (behind a
/// VLAN tag and the largest IPv4 header, or IPv6's), whose port tells encapsulated traffic
/// on the underlay. Device and reason are attributes of their own and need no payload.
pub const TRUNC_LEN: u32 = 88;

/// Datagrams read per wake-up at most.
const MAX_BATCH: usize = 1024;
/// How often the listener looks whether it was asked to stop.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// How often the listener checks the session is still its own and reads the kernel's
/// count of alerts it could not queue.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long after a failure (monitor taken, module not loaded) the listener tries again.
const RETRY: Duration = Duration::from_secs(10);

/// Shared between the listener thread, scrapes and shutdown.
#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Why the collector is not counting, if it is not.
    failure: Mutex<Option<CollectError>>,
    stop: AtomicBool,
    active: AtomicBool,
    /// The kernel sends drop reasons (known once a session opened).
    reasons: AtomicBool,
    /// Alerts the kernel could not queue, over every session of this exporter.
    lost: AtomicU64,
    /// Times the socket overflowed, over every session.
    overruns: AtomicU64,
}

impl Shared {
    fn set_failure(&self, why: Option<CollectError>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn ingest(&self, m: Message) {
        if let Message::Alert(a) = m {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(Raw::of(&a));
        }
    }
}

/// What the listener needs to run sessions.
struct Plan {
    transport: Arc<dyn Transport>,
    procfs: PathBuf,
    state_file: PathBuf,
    config: Config,
}

pub struct Drops {
    shared: Arc<Shared>,
    devices: Devices,
    max_devices: usize,
    totals: Mutex<Totals>,
    listener: Mutex<Option<Worker>>,
}

impl Drops {
    pub fn start(r: &Arc<Resources>, o: &Options) -> Self {
        let shared = Arc::new(Shared::default());
        let plan = Plan {
            transport: r.transport.clone(),
            procfs: r.procfs.clone(),
            state_file: o.state_file.clone(),
            config: Config {
                mode: NET_DM_ALERT_MODE_PACKET,
                trunc_len: TRUNC_LEN,
                queue_len: o.queue_len,
            },
        };
        // The first attempt runs here, so preflight can say at start why it cannot run.
        let first = establish(&plan, &shared);
        if let Err(why) = &first {
            shared.set_failure(Some(why.clone()));
        }
        let s = shared.clone();
        let worker = Worker::spawn("drop-monitor", move || supervise(plan, &s, first.ok()));
        Drops {
            shared,
            devices: r.devices.clone(),
            max_devices: o.max_devices,
            totals: Mutex::new(Totals::default()),
            listener: Mutex::new(Some(worker)),
        }
    }
}

/// Opens a session and starts monitoring, unless somebody else runs the monitor.
fn establish(plan: &Plan, shared: &Shared) -> Result<Session, CollectError> {
    let mut s = Session::open(plan.transport.as_ref())?;
    let ignore = &mut |_: Message| {};
    if s.running(ignore)? {
        let running = s.config(ignore)?;
        let left = session::read_state(&plan.state_file);
        let boot = session::boot_id(&plan.procfs);
        match (left, running) {
            (Some(st), Some(cfg)) if st.orphaned(&boot, &cfg, session::alive(&st)) => {
                s.stop(ignore)
                    .map_err(|e| session::refused("stopping the drop monitor", &e))?;
                tracing::warn!(
                    pid = st.pid,
                    state_file = %plan.state_file.display(),
                    "stopped the drop monitor session that a previous run left behind"
                );
            }
            _ => return Err(taken()),
        }
    }
    session::write_state(&plan.state_file, &session::me(&plan.procfs, plan.config))?;
    let baseline = s.stats(ignore)?.unwrap_or(0);
    let ingest = &mut |m| shared.ingest(m);
    if let Err(e) = s.start(&plan.config, ingest) {
        let _ = std::fs::remove_file(&plan.state_file);
        return Err(match e {
            AckError::Errno(libc::EAGAIN) | AckError::Errno(libc::EBUSY) => taken(),
            e => session::refused("starting the drop monitor", &e),
        });
    }
    shared.reasons.store(s.reasons, Ordering::Relaxed);
    tracing::info!(
        queue_len = plan.config.queue_len,
        trunc_len = plan.config.trunc_len,
        reasons = s.reasons,
        "kernel drop monitor started (one alert per dropped packet); it is stopped on exit"
    );
    s.baseline = baseline;
    Ok(s)
}

fn taken() -> CollectError {
    CollectError::taken(
        "the kernel's drop monitor is already running, started by another program (dropwatch, hsflowd, another exporter): changing nothing; counting starts when it stops",
    )
}

/// Runs sessions until told to stop: one at a time, a new one after a failure.
fn supervise(plan: Plan, shared: &Shared, mut session: Option<Session>) {
    loop {
        if let Some(mut s) = session.take() {
            shared.set_failure(None);
            shared.active.store(true, Ordering::Relaxed);
            let why = run(&mut s, shared);
            shared.active.store(false, Ordering::Relaxed);
            match why {
                None => {
                    let ingest = &mut |m| shared.ingest(m);
                    match s.stop(ingest) {
                        Ok(()) => tracing::info!("kernel drop monitor stopped"),
                        Err(e) => {
                            tracing::error!(error = %e, "could not stop the kernel drop monitor")
                        }
                    }
                    let _ = std::fs::remove_file(&plan.state_file);
                    return;
                }
                Some(why) => {
                    // The session is no longer this exporter's: nothing of ours to stop.
                    // (The scrapes log why, once.)
                    let _ = std::fs::remove_file(&plan.state_file);
                    shared.set_failure(Some(why));
                }
            }
        }
        let until = Instant::now() + RETRY;
        while Instant::now() < until {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(STOP_CHECK);
        }
        match establish(&plan, shared) {
            Ok(s) => {
                tracing::info!("kernel drop monitor counting again");
                session = Some(s);
            }
            Err(why) => shared.set_failure(Some(why)),
        }
    }
}

/// Reads alerts until told to stop (`None`) or the session is lost (why).
fn run(s: &mut Session, shared: &Shared) -> Option<CollectError> {
    let ingest = &mut |m| shared.ingest(m);
    let mut checked = Instant::now();
    let mut overruns = s.sub.received().overruns;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return None;
        }
        if s.sub.wait(STOP_CHECK) {
            let family = s.family;
            if let Err(e) = s
                .sub
                .drain(MAX_BATCH, &mut |d| session::decode(family, d, ingest))
            {
                return Some(CollectError::new(format!("drop monitor socket: {e}")));
            }
        }
        let now = s.sub.received().overruns;
        shared.overruns.fetch_add(now - overruns, Ordering::Relaxed);
        overruns = now;
        if checked.elapsed() < CHECK_EVERY {
            continue;
        }
        checked = Instant::now();
        match s
            .running(ingest)
            .and_then(|any| Ok(any && s.software_running(ingest)?))
        {
            Ok(true) => {}
            Ok(false) => {
                return Some(CollectError::new(
                    "another program stopped the kernel's drop monitor; starting it again when nobody runs it",
                ));
            }
            Err(e) => return Some(e),
        }
        match s.stats(ingest) {
            Ok(Some(n)) => {
                let new = n.saturating_sub(s.baseline);
                shared.lost.fetch_add(new, Ordering::Relaxed);
                s.baseline = s.baseline.max(n);
            }
            Ok(None) => {}
            Err(e) => return Some(e),
        }
    }
}

impl Collector for Drops {
    fn preflight(&self) -> Result<(), CollectError> {
        match self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        self.preflight()?;
        let links = scrape.links()?;
        let ports = scrape.ovsdb().ok();
        let pending = std::mem::take(
            &mut *self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let cx = Context::new(
            &links,
            ports.as_ref().map_or(&[][..], |p| p.as_slice()),
            &self.devices,
        );
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        totals.credit(
            pending,
            &cx,
            self.max_devices,
            self.shared.reasons.load(Ordering::Relaxed),
        );
        let mut out = totals.render();
        let sh = &self.shared;
        out.push(Family::single_counter(
            metrics::KERNEL_DROP_REPORTS_LOST,
            "Drop reports the kernel could not queue for the exporter (its per-CPU queue was full), since the exporter started.",
            sh.lost.load(Ordering::Relaxed) as f64,
        ));
        out.push(Family::single_counter(
            metrics::KERNEL_DROP_SOCKET_OVERRUNS,
            "Times the exporter's drop monitor socket overflowed and the kernel discarded drop reports (how many is unknown).",
            sh.overruns.load(Ordering::Relaxed) as f64,
        ));
        out.push(Family::single_gauge(
            metrics::KERNEL_DROP_MONITOR_ACTIVE,
            "Whether the exporter's kernel drop monitor session is running (1) or not (0).",
            if sh.active.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        ));
        Ok(out)
    }

    fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            w.join();
        }
    }
}
