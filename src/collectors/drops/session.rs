//! One monitoring session with the kernel's drop monitor, and the rules of a good
//! neighbour: the monitor is one per kernel, has no owner and outlives the socket that
//! started it, so the exporter starts it only when nobody runs it, records in a state file
//! that it did, stops it on exit, and after a hard kill stops what its dead predecessor
//! left running — never a session another program started.
//!
//! Every request goes on the socket that listens, so alerts that arrive meanwhile are
//! handed on, not lost. The family is looked up in the controller's dump: a lookup by name
//! would load the module, and the exporter loads none.

use std::path::Path;
use std::time::Duration;

use super::alert::{
    self, Config, FAMILY, GROUP, Message, NET_DM_ATTR_HW_DROPS, NET_DM_ATTR_REASON,
    NET_DM_ATTR_SW_DROPS, NET_DM_CMD_CONFIG, NET_DM_CMD_CONFIG_GET, NET_DM_CMD_START,
    NET_DM_CMD_STATS_GET, NET_DM_CMD_STOP,
};
use crate::collectors::CollectError;
use crate::netlink::subscribe::{self, AckError, Subscription};
use crate::netlink::wire::{self, Control};
use crate::netlink::{Protocol, Transport, genl};

/// Room for bursts of alerts (a few hundred bytes each) while the listener is busy.
const RCVBUF: i32 = 8 << 20;
/// How long a request waits for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session could not start, or ended.
pub fn absent() -> CollectError {
    CollectError::absent(
        "the kernel's drop monitor (generic netlink family NET_DM) is not there: load it with `modprobe drop_monitor` (list drop_monitor in /etc/modules-load.d/ to have it at boot); it exists only in the host's network namespace",
    )
}

/// The exporter's session, open on a socket joined to the alert group.
pub struct Session {
    pub sub: Subscription,
    pub family: u16,
    /// The kernel sends drop reasons (Linux 5.18+).
    pub reasons: bool,
    /// The kernel's count of alerts it could not queue, when last read.
    pub baseline: u64,
}

/// What the state file records: who started the running session, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub pid: u32,
    /// The process's start time (field 22 of /proc/PID/stat): a pid reused by another
    /// process is not mistaken for the exporter that wrote the file.
    pub start_time: u64,
    pub boot_id: String,
    pub config: Config,
}

impl State {
    pub fn to_text(&self) -> String {
        format!(
            "pid {}\nstart_time {}\nboot_id {}\nmode {}\ntrunc_len {}\nqueue_len {}\n",
            self.pid,
            self.start_time,
            self.boot_id,
            self.config.mode,
            self.config.trunc_len,
            self.config.queue_len
        )
    }

    pub fn from_text(text: &str) -> Option<State> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ').map(str::trim))
        };
        Some(State {
            pid: get("pid")?.parse().ok()?,
            start_time: get("start_time")?.parse().ok()?,
            boot_id: get("boot_id")?.to_owned(),
            config: Config {
                mode: get("mode")?.parse().ok()?,
                trunc_len: get("trunc_len")?.parse().ok()?,
                queue_len: get("queue_len")?.parse().ok()?,
            },
        })
    }

    /// Whether the running monitor is the one a dead exporter left: the file is from this
    /// boot, its writer is gone, and the monitor runs with the configuration it set.
    pub fn orphaned(&self, boot_id: &str, running: &Config, writer_alive: bool) -> bool {
        self.boot_id == boot_id && !writer_alive && self.config == *running
    }
}

/// Where processes are looked up: this process's own view, also when `--path.procfs`
/// is the host's (a pid is its pid namespace's).
pub const SELF_PROCFS: &str = "/proc";

/// This process's identity for the state file; `procfs` gives the boot.
pub fn me(procfs: &Path, config: Config) -> State {
    let pid = std::process::id();
    State {
        pid,
        start_time: start_time(Path::new(SELF_PROCFS), pid).unwrap_or(0),
        boot_id: boot_id(procfs),
        config,
    }
}

pub fn boot_id(procfs: &Path) -> String {
    std::fs::read_to_string(procfs.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Field 22 of /proc/PID/stat (after the parenthesised command, which may hold spaces).
pub fn start_time(procfs: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(procfs.join(format!("{pid}/stat"))).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process the state names is alive (the same pid, started at the same time,
/// and not this one: a container restarted gets the same pid in a new pid namespace).
pub fn alive(s: &State) -> bool {
    s.pid != std::process::id() && start_time(Path::new(SELF_PROCFS), s.pid) == Some(s.start_time)
}

pub fn read_state(path: &Path) -> Option<State> {
    State::from_text(&std::fs::read_to_string(path).ok()?)
}

/// Writes the state file, creating its directory: a session that could not be recorded is
/// not started (a crash would leave it running with nobody to stop it).
pub fn write_state(path: &Path, s: &State) -> Result<(), CollectError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, s.to_text()).map_err(|e| {
        CollectError::new(format!(
            "cannot write the drop monitor state file {}: {e}; not starting the monitor (it could not be stopped after a crash). Give --collector.drops.state-file a writable path",
            path.display()
        ))
    })
}

impl Session {
    /// Finds the family, joins its alert group. Nothing on the host changes.
    pub fn open(t: &dyn Transport) -> Result<Session, CollectError> {
        let dump = t
            .exchange(&genl::families_request())
            .map_err(|e| CollectError::new(format!("listing generic netlink families: {e}")))?;
        let parsed = genl::parse_families(&dump)
            .and_then(|f| Ok((f, genl::parse_mcast_group(&dump, FAMILY, GROUP)?)))
            .map_err(|e| CollectError::new(format!("listing generic netlink families: {e}")))?;
        let (families, group) = parsed;
        let Some(family) = families.iter().find(|(n, _)| n == FAMILY).map(|(_, f)| *f) else {
            return Err(absent());
        };
        let Some((_, group)) = group else {
            return Err(absent());
        };
        let sub = t
            .subscribe(subscribe::Spec {
                protocol: Protocol::Generic,
                name: "net_dm_alerts",
                groups: vec![group],
                rcvbuf: RCVBUF,
            })
            .map_err(|e| match e.errno() {
                Some(libc::EPERM) => CollectError::new(
                    "permission denied joining the drop monitor's alert group: the drops collector needs CAP_SYS_ADMIN to receive alerts (kernels since a 2023 fix, Debian's 5.10, 6.1 and 6.12 among them) and CAP_NET_ADMIN to start the monitor; grant both, or turn --collector.drops off",
                ),
                _ => CollectError::new(format!("joining the drop monitor's alert group: {e}")),
            })?;
        Ok(Session {
            sub,
            family: family.id,
            reasons: family.maxattr >= u32::from(NET_DM_ATTR_REASON),
            baseline: 0,
        })
    }

    /// One request on the listening socket; alerts and replies read meanwhile go to `on`.
    pub fn request(
        &mut self,
        cmd: u8,
        attrs: &[u8],
        on: &mut dyn FnMut(Message),
    ) -> Result<(), AckError> {
        let mut payload = vec![cmd, 2, 0, 0];
        payload.extend_from_slice(attrs);
        let family = self.family;
        self.sub
            .request(family, 0, &payload, ACK_TIMEOUT, &mut |d| {
                decode(family, d, on)
            })
    }

    /// Whether anybody runs the monitor: a CONFIG with nothing in it changes nothing and
    /// is refused with EBUSY only while monitoring.
    pub fn running(&mut self, on: &mut dyn FnMut(Message)) -> Result<bool, CollectError> {
        match self.request(NET_DM_CMD_CONFIG, &[], on) {
            Ok(()) => Ok(false),
            Err(AckError::Errno(libc::EBUSY)) => Ok(true),
            Err(e) => Err(refused("asking the drop monitor's state", &e)),
        }
    }

    /// The monitor's configuration now.
    pub fn config(&mut self, on: &mut dyn FnMut(Message)) -> Result<Option<Config>, CollectError> {
        let mut got = None;
        self.request(NET_DM_CMD_CONFIG_GET, &[], &mut |m| match m {
            Message::Config(c) => got = Some(c),
            m => on(m),
        })
        .map_err(|e| refused("reading the drop monitor's configuration", &e))?;
        Ok(got)
    }

    /// Reports the kernel dropped for want of queue room since the module loaded.
    pub fn stats(&mut self, on: &mut dyn FnMut(Message)) -> Result<Option<u64>, CollectError> {
        let mut got = None;
        self.request(NET_DM_CMD_STATS_GET, &[], &mut |m| match m {
            Message::Stats { software, hardware } => got = Some(software + hardware),
            m => on(m),
        })
        .map_err(|e| refused("reading the drop monitor's statistics", &e))?;
        Ok(got)
    }

    /// Configures packet alerts and starts software and, where the kernel has it,
    /// hardware monitoring. EAGAIN: someone started it first.
    pub fn start(&mut self, config: &Config, on: &mut dyn FnMut(Message)) -> Result<(), AckError> {
        self.request(NET_DM_CMD_CONFIG, &config.attrs(), on)?;
        match self.request(NET_DM_CMD_START, &halves(true), on) {
            // No devlink (EOPNOTSUPP): software drops alone.
            Err(AckError::Errno(e)) if e != libc::EAGAIN => {
                self.request(NET_DM_CMD_START, &halves(false), on)
            }
            r => r,
        }
    }

    /// Whether software monitoring still runs, when something does: a START of software
    /// monitoring alone is refused with EAGAIN while it runs and changes nothing. Another
    /// program's plain STOP ends software monitoring only, leaving the hardware half on, so
    /// "something runs" does not say it. Should the START succeed (it was stopped), this
    /// session stops everything at once: it is not the exporter's to restart.
    pub fn software_running(&mut self, on: &mut dyn FnMut(Message)) -> Result<bool, CollectError> {
        match self.request(NET_DM_CMD_START, &halves(false), on) {
            Err(AckError::Errno(libc::EAGAIN)) => Ok(true),
            Ok(()) => {
                let _ = self.stop(on);
                Ok(false)
            }
            Err(e) => Err(refused("asking the drop monitor's state", &e)),
        }
    }

    /// Stops monitoring (software and hardware: no flag means software alone).
    pub fn stop(&mut self, on: &mut dyn FnMut(Message)) -> Result<(), AckError> {
        self.request(NET_DM_CMD_STOP, &halves(true), on)
    }
}

/// The attributes of START or STOP naming software monitoring, and hardware with it.
fn halves(hardware: bool) -> Vec<u8> {
    let mut a = Vec::new();
    wire::push_attr(&mut a, NET_DM_ATTR_SW_DROPS, &[]);
    if hardware {
        wire::push_attr(&mut a, NET_DM_ATTR_HW_DROPS, &[]);
    }
    a
}

/// A refused request as one line that says what to do.
pub fn refused(what: &str, e: &AckError) -> CollectError {
    match e {
        AckError::Errno(libc::EPERM) => CollectError::new(format!(
            "{what}: permission denied: the drop monitor needs CAP_NET_ADMIN"
        )),
        AckError::Errno(libc::ENOENT) => absent(),
        _ => CollectError::new(format!("{what}: {e}")),
    }
}

/// Hands every message of the family in `datagram` to `on`; undecodable ones are logged
/// at debug and handed on as `Message::Undecodable`.
pub fn decode(family: u16, datagram: &[u8], on: &mut dyn FnMut(Message)) {
    for m in wire::messages(FAMILY, datagram) {
        let Ok(m) = m else { break };
        match wire::control(FAMILY, m) {
            Ok(Control::Data(m)) if m.ty == family => match alert::parse(m.payload) {
                Ok(msg) => on(msg),
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable drop monitor message");
                    on(Message::Undecodable)
                }
            },
            _ => {}
        }
    }
}
