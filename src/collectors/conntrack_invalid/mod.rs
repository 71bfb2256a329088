//! `conntrack_invalid` (opt-in): why conntrack marks packets invalid, from the kernel's own
//! log of them.
//!
//! With `net.netfilter.nf_conntrack_log_invalid` set, conntrack logs every packet it marks
//! invalid with the reason ("nf_ct_proto_6: bad checksum "). Bound to nfnetlink_log, those
//! logs arrive as NFLOG group 0 messages carrying the reason, the input device and the
//! packet's headers. A background thread classifies each one by reason, protocol, frame
//! size and TCP flags; scrapes only read the counters. Where the kernel attaches the
//! packet's conntrack entry (NFULA_CT), its zone names the VM port (`zones.rs`); a
//! governor pauses logging during floods (`governor.rs`).
//!
//! It changes host settings, so it is off by default, binds the group before touching
//! anything (never stealing it from ulogd or another listener), records what it changed in
//! a state file, and puts it all back on exit.

pub mod counts;
pub mod governor;
pub mod nflog;
mod record;
mod settings;
#[cfg(test)]
mod tests;
mod zones;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::counts::Counts;
use self::governor::{Governor, Status};
use self::nflog::BindError;
use self::settings::{Settings, per_namespace};
use self::zones::Attribution;
use super::common::{Resources, Scrape};
use super::{CollectError, Collector, Spec, Worker};
use crate::metrics;
use crate::netlink::subscribe::{self, Subscription};
use crate::netlink::{Protocol, Transport};
use crate::render::Family;

pub use self::record::{
    IpFamily, Proto, Reason, Record, SizeClass, TcpFlags, parse_record, reason_of, zone_of,
};

pub const SPEC: Spec = Spec {
    name: "conntrack_invalid",
    help: "Conntrack-invalid packets classified by reason, size and TCP flags (NFLOG group 0; changes nf_conntrack_log_invalid while running).",
    default_enabled: false,
    args: super::flags::<Options>,
    build: |m, r| Ok(Arc::new(ConntrackInvalid::start(r, &super::options(m)?))),
};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// nf_conntrack_log_invalid while the conntrack_invalid collector runs: an IP protocol
    /// number, or 255 for all.
    #[arg(
        id = "collector.conntrack_invalid.protocol",
        long = "collector.conntrack_invalid.protocol",
        alias = "collector.conntrack-invalid.protocol",
        value_name = "N",
        default_value_t = 255,
        value_parser = clap::value_parser!(u8).range(1..)
    )]
    pub protocol: u8,

    /// Where conntrack_invalid records the settings it changed, to restore them after a crash; {netns} becomes the namespace's inode.
    #[arg(
        id = "collector.conntrack_invalid.state-file",
        long = "collector.conntrack_invalid.state-file",
        alias = "collector.conntrack-invalid.state-file",
        value_name = "PATH",
        default_value = "/run/packetpath-exporter/conntrack-invalid-{netns}.state"
    )]
    pub state_file: PathBuf,

    /// Input devices conntrack_invalid counts separately; the rest count as "other".
    #[arg(
        id = "collector.conntrack_invalid.max-devices",
        long = "collector.conntrack_invalid.max-devices",
        alias = "collector.conntrack-invalid.max-devices",
        value_name = "N",
        default_value_t = 64
    )]
    pub max_devices: usize,

    /// Log messages per second conntrack_invalid accepts; over it (in a 1 s window) it pauses logging, and resumes after a back-off (10 s doubling to 4 min).
    #[arg(
        id = "collector.conntrack_invalid.max-rate",
        long = "collector.conntrack_invalid.max-rate",
        alias = "collector.conntrack-invalid.max-rate",
        value_name = "N",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_rate: u64,
}

/// The classifier's main family; `diagnose` reads it back.
pub const CLASS_FAMILY: &str = metrics::CONNTRACK_INVALID_PACKETS;

/// Whether a family is this collector's (the `conntrack` collector's
/// `packetpath_conntrack_invalid_total` shares the prefix but is not).
pub fn exports(family: &str) -> bool {
    family.starts_with(metrics::CONNTRACK_INVALID_PREFIX) && family != metrics::CONNTRACK_INVALID
}

/// Room for bursts of log messages while the listener is busy.
const RCVBUF: i32 = 8 << 20;
/// Datagrams read per wake-up at most.
const MAX_BATCH: usize = 256;
/// After a read that emptied the socket, this long before the next wait. The kernel sends
/// conntrack's log one message per datagram (see nflog.rs), and waking up for each costs
/// more than reading it; meanwhile messages gather in the socket (RCVBUF holds thousands).
const GATHER: Duration = Duration::from_millis(1);
/// How often the listener looks whether it was asked to stop.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Shared between the listener thread, scrapes and shutdown.
struct Shared {
    counts: Counts,
    /// Why the collector is not running, if it is not.
    failure: Mutex<Option<CollectError>>,
    stop: AtomicBool,
    /// What to write back on exit, once the settings were changed.
    restore: Mutex<Option<Settings>>,
    governor: Status,
}

pub struct ConntrackInvalid {
    shared: Arc<Shared>,
    procfs: PathBuf,
    state_file: PathBuf,
    listener: Mutex<Option<Worker>>,
    /// The kernel attaches each packet's conntrack entry, so zones can be counted.
    zones: bool,
    attribution: Mutex<Attribution>,
}

/// The device of the one VM port OVSDB gives `zone` now (starting the OVSDB client).
fn zone_owner(r: &Resources, zone: u16) -> Option<String> {
    let ports = r.ovsdb.ports().ok()?;
    let mut owners = ports.iter().filter(|p| p.ct_zone == Some(zone));
    let one = owners.next()?;
    owners.next().is_none().then(|| one.device.clone())
}

impl ConntrackInvalid {
    pub fn start(r: &Arc<Resources>, o: &Options) -> Self {
        let state_file = per_namespace(&o.state_file);
        let shared = Arc::new(Shared {
            counts: Counts::new(o.max_devices),
            failure: Mutex::new(None),
            stop: AtomicBool::new(false),
            restore: Mutex::new(None),
            governor: Status::default(),
        });
        let mut me = ConntrackInvalid {
            shared: shared.clone(),
            procfs: r.procfs.clone(),
            state_file,
            listener: Mutex::new(None),
            zones: false,
            attribution: Mutex::new(Attribution::default()),
        };
        match me.setup(r.transport.as_ref(), o.protocol) {
            Ok((sub, zones)) => {
                me.zones = zones;
                if zones {
                    r.ovsdb.start();
                    let resources = r.clone();
                    me.shared
                        .counts
                        .zones
                        .set_owner(Box::new(move |zone| zone_owner(&resources, zone)));
                } else {
                    tracing::warn!(
                        "this kernel does not attach conntrack entries to NFLOG messages (CONFIG_NETFILTER_NETLINK_GLUE_CT): no per-VM-port counts"
                    );
                }
                let original = me
                    .shared
                    .restore
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map_or_else(|| "0".to_owned(), |s| s.log_invalid.clone());
                let governor = Governor::new(
                    o.max_rate,
                    r.procfs.clone(),
                    o.protocol.to_string(),
                    original,
                );
                let worker =
                    Worker::spawn("nflog-listener", move || listen(sub, &shared, governor));
                *me.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker);
            }
            Err(why) => me.fail(why),
        }
        me
    }

    fn fail(&self, why: CollectError) {
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Binds the group, then changes the settings, recording the originals first; says
    /// whether the messages carry the conntrack zone.
    fn setup(&self, t: &dyn Transport, protocol: u8) -> Result<(Subscription, bool), CollectError> {
        let mut sub = t
            .subscribe(subscribe::Spec {
                protocol: Protocol::Netfilter,
                name: "nflog_group0",
                groups: vec![],
                rcvbuf: RCVBUF,
            })
            .map_err(|e| CollectError::new(format!("opening an nfnetlink socket: {e}")))?;
        let zones = nflog::bind_group(&mut sub).map_err(|e| match e {
            BindError::Taken => CollectError::taken(e.to_string()),
            _ => CollectError::new(e.to_string()),
        })?;
        self.change_settings(protocol).map_err(CollectError::new)?;
        Ok((sub, zones))
    }

    /// Records the settings as they are, then changes them.
    fn change_settings(&self, protocol: u8) -> Result<(), String> {
        let original = match std::fs::read_to_string(&self.state_file)
            .ok()
            .and_then(|t| Settings::from_state(&t))
        {
            Some(left) => {
                tracing::warn!(
                    state_file = %self.state_file.display(),
                    "found leftover settings from a run that did not exit cleanly; restoring those on exit"
                );
                left
            }
            None => Settings::read(&self.procfs)
                .map_err(|e| format!("reading conntrack log settings: {e}"))?,
        };
        if let Some(dir) = self.state_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(&self.state_file, original.to_state())
            .map_err(|e| format!("writing state file {}: {e}", self.state_file.display()))?;
        *self
            .shared
            .restore
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(original.clone());
        let ours = Settings {
            log_invalid: protocol.to_string(),
            nf_log_v4: "nfnetlink_log".into(),
            nf_log_v6: "nfnetlink_log".into(),
        };
        if let Err(e) = ours.write(&self.procfs, false) {
            self.restore();
            return Err(format!("changing conntrack log settings: {e}"));
        }
        tracing::info!(
            nf_conntrack_log_invalid = %ours.log_invalid,
            previous = %original.log_invalid.as_str(),
            "logging conntrack-invalid packets to NFLOG group 0; settings are restored on exit"
        );
        Ok(())
    }

    fn restore(&self) {
        let Some(mut original) = self
            .shared
            .restore
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        // Another program set nf_conntrack_log_invalid while the governor had paused
        // logging: its value stays.
        if self.shared.governor.yielded.load(Ordering::Relaxed) {
            if let Ok(theirs) = settings::read_log_invalid(&self.procfs) {
                tracing::info!(nf_conntrack_log_invalid = %theirs, "leaving nf_conntrack_log_invalid as another program set it");
                original.log_invalid = theirs;
            }
        }
        match original.write(&self.procfs, true) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.state_file);
                tracing::info!(nf_conntrack_log_invalid = %original.log_invalid, "conntrack log settings restored");
            }
            Err(e) => {
                tracing::error!(error = %e, state_file = %self.state_file.display(), "could not restore conntrack log settings; the state file keeps them")
            }
        }
    }
}

/// The listener: reads datagrams until told to stop; ENOBUFS means the kernel dropped
/// messages for want of socket buffer, and is counted, never ignored. After each read the
/// governor weighs the message rate.
fn listen(mut sub: Subscription, shared: &Shared, mut governor: Governor) {
    while !shared.stop.load(Ordering::Relaxed) {
        let c = &shared.counts;
        let sent = || {
            [&c.messages, &c.lost, &c.errors]
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        if !sub.wait(STOP_CHECK) {
            governor.tick(sent(), &shared.governor);
            continue;
        }
        let read = |s: &Subscription| s.received().datagrams + s.received().overruns;
        let before = read(&sub);
        if let Err(e) = sub.drain(MAX_BATCH, &mut |d| shared.counts.ingest(d)) {
            *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(CollectError::new(format!("NFLOG socket: {e}")));
            return;
        }
        shared.counts.set_overruns(sub.received().overruns);
        governor.tick(sent(), &shared.governor);
        // Fewer than MAX_BATCH read: the socket is empty.
        if read(&sub) - before < MAX_BATCH as u64 {
            std::thread::sleep(GATHER);
        }
    }
}

impl Collector for ConntrackInvalid {
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
        let mut out = self.shared.counts.render();
        out.extend(self.shared.governor.render(&self.procfs));
        if self.zones {
            let ports = scrape.ovsdb().ok();
            let mut a = self.attribution.lock().unwrap_or_else(|p| p.into_inner());
            let zones = &self.shared.counts.zones;
            a.update(
                zones.snapshot(),
                &zones.first_owners(),
                ports.as_ref().map(|p| p.as_slice()),
            );
            out.push(a.render());
        }
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
        self.restore();
    }
}
