//! `conntrack`: conntrack statistics and the sysctls that change its verdicts.
//!
//! Preferred source is ctnetlink (IPCTNL_MSG_CT_GET_STATS_CPU / _GET_STATS), which needs
//! CAP_NET_ADMIN. Without it, the same per-CPU counters are read from
//! `/proc/net/stat/nf_conntrack`. Everything is per network namespace: the exporter sees
//! the namespace it runs in.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::common::{Resources, Scrape};
use super::{CollectError, Collector, Spec};
use crate::LogOnce;
use crate::metrics;
use crate::netlink::wire::{self, DecodeError};
use crate::netlink::{Protocol, Request, Transport, TransportError};
use crate::render::Family;

pub const SPEC: Spec = Spec {
    name: "conntrack",
    help: "Conntrack per-CPU statistics, table size and checksum/log sysctls (ctnetlink, procfs fallback).",
    default_enabled: true,
    args: super::flags::<Options>,
    build: |m, r| Ok(Arc::new(Conntrack::new(r, super::options(m)?))),
};

const FAMILY: &str = "ctnetlink";
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET_STATS_CPU: u16 = 4;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;
const NFGENMSG_LEN: usize = 4;
/// enum ctattr_stats_cpu.
const CTA_STATS_FOUND: u16 = 2;
const CTA_STATS_INVALID: u16 = 4;
const CTA_STATS_INSERT: u16 = 8;
const CTA_STATS_INSERT_FAILED: u16 = 9;
const CTA_STATS_DROP: u16 = 10;
const CTA_STATS_EARLY_DROP: u16 = 11;
const CTA_STATS_ERROR: u16 = 12;
const CTA_STATS_SEARCH_RESTART: u16 = 13;
const CTA_STATS_CLASH_RESOLVE: u16 = 14;
const CTA_STATS_CHAIN_TOOLONG: u16 = 15;
/// enum ctattr_stats_global.
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Options {
    /// Export conntrack statistics per CPU (label cpu) instead of summed.
    #[arg(
        id = "collector.conntrack.per-cpu",
        long = "collector.conntrack.per-cpu"
    )]
    pub per_cpu: bool,
}

/// A per-CPU conntrack statistic: its CTA_STATS_* number, its column in
/// /proc/net/stat/nf_conntrack, the series' name and HELP.
pub struct Stat {
    pub attr: u16,
    pub proc_column: &'static str,
    pub metric: &'static str,
    pub help: &'static str,
}

/// The statistics current kernels maintain, in CTA_STATS_* order. The ones the kernel
/// marks "no longer used" (searched, new, ignore, delete, delete_list) are left out: ctnetlink
/// stopped sending them and procfs prints them as zero.
pub const STATS: &[Stat] = &[
    Stat {
        attr: CTA_STATS_FOUND,
        proc_column: "found",
        metric: "packetpath_conntrack_found_total",
        help: "Lookups that found an existing conntrack entry.",
    },
    Stat {
        attr: CTA_STATS_INVALID,
        proc_column: "invalid",
        metric: metrics::CONNTRACK_INVALID,
        help: "Packets conntrack could not track and marked invalid (bad checksum, out of window, bad state).",
    },
    Stat {
        attr: CTA_STATS_INSERT,
        proc_column: "insert",
        metric: "packetpath_conntrack_insert_total",
        help: "Entries inserted into the conntrack table on the path that counts them (ctnetlink-created entries on current kernels).",
    },
    Stat {
        attr: CTA_STATS_INSERT_FAILED,
        proc_column: "insert_failed",
        metric: metrics::CONNTRACK_INSERT_FAILED,
        help: "Entries that could not be inserted into the conntrack table.",
    },
    Stat {
        attr: CTA_STATS_DROP,
        proc_column: "drop",
        metric: metrics::CONNTRACK_DROP,
        help: "Packets dropped because conntrack failed to create an entry.",
    },
    Stat {
        attr: CTA_STATS_EARLY_DROP,
        proc_column: "early_drop",
        metric: metrics::CONNTRACK_EARLY_DROP,
        help: "Entries evicted early to make room when the table was full.",
    },
    Stat {
        attr: CTA_STATS_ERROR,
        proc_column: "icmp_error",
        metric: "packetpath_conntrack_error_total",
        help: "ICMP errors that conntrack could not match to a connection.",
    },
    Stat {
        attr: CTA_STATS_SEARCH_RESTART,
        proc_column: "search_restart",
        metric: "packetpath_conntrack_search_restart_total",
        help: "Table lookups restarted because of a concurrent hash resize.",
    },
    Stat {
        attr: CTA_STATS_CLASH_RESOLVE,
        proc_column: "clashres",
        metric: "packetpath_conntrack_clash_resolve_total",
        help: "Insert races resolved by merging clashing entries.",
    },
    Stat {
        attr: CTA_STATS_CHAIN_TOOLONG,
        proc_column: "chainlength",
        metric: "packetpath_conntrack_chaintoolong_total",
        help: "Inserts refused because a hash chain was too long.",
    },
];

/// Sysctls under net/netfilter exposed as gauges, so rules can see what the seed incident
/// turned (nf_conntrack_checksum).
pub const SYSCTLS: &[&str] = &[
    "nf_conntrack_checksum",
    "nf_conntrack_tcp_be_liberal",
    "nf_conntrack_tcp_loose",
    "nf_conntrack_log_invalid",
    "nf_conntrack_max",
    "nf_conntrack_buckets",
];

/// Per-CPU counters, indexed like [`STATS`]; `None` where the source lacks that statistic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuStats {
    pub cpu: u32,
    pub values: Vec<Option<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Netlink,
    Procfs,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Netlink => "netlink",
            Source::Procfs => "procfs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub source: Source,
    pub counters: Counters,
    pub sysctls: Vec<(&'static str, u64)>,
}

fn ctnl_request(name: &'static str, msg: u16, dump: bool) -> Request {
    Request {
        protocol: Protocol::Netfilter,
        name,
        ty: (NFNL_SUBSYS_CTNETLINK << 8) | msg,
        flags: wire::NLM_F_REQUEST | if dump { wire::NLM_F_DUMP } else { 0 },
        // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
        scope: None,
        payload: vec![0; NFGENMSG_LEN],
    }
}

pub fn stats_cpu_request() -> Request {
    ctnl_request("ctnetlink_stats_cpu", IPCTNL_MSG_CT_GET_STATS_CPU, true)
}

pub fn stats_request() -> Request {
    ctnl_request("ctnetlink_stats", IPCTNL_MSG_CT_GET_STATS, false)
}

/// Decodes the IPCTNL_MSG_CT_GET_STATS_CPU dump: one message per CPU, the CPU number in
/// nfgenmsg.res_id, counters as big-endian u32 attributes.
pub fn parse_stats_cpu(buf: &[u8]) -> Result<Vec<CpuStats>, DecodeError> {
    let mut cpus = Vec::new();
    for m in wire::data_messages(FAMILY, buf, true)? {
        let short = || DecodeError::ShortStruct {
            family: FAMILY,
            what: "nfgenmsg",
            len: m.payload.len(),
            need: NFGENMSG_LEN,
        };
        let res_id = m.payload.get(2..4).ok_or_else(short)?;
        let cpu = u32::from(u16::from_be_bytes([
            res_id.first().copied().unwrap_or(0),
            res_id.get(1).copied().unwrap_or(0),
        ]));
        let mut values = vec![None; STATS.len()];
        for a in wire::attrs(
            FAMILY,
            "CTA_STATS",
            m.payload.get(NFGENMSG_LEN..).unwrap_or_default(),
        ) {
            let a = a?;
            if let Some(i) = STATS.iter().position(|s| s.attr == a.ty) {
                let name = STATS.get(i).map_or("CTA_STATS", |s| s.proc_column);
                if let Some(slot) = values.get_mut(i) {
                    *slot = Some(u64::from(a.u32_be(FAMILY, name)?));
                }
            }
        }
        cpus.push(CpuStats { cpu, values });
    }
    Ok(cpus)
}

/// Decodes the IPCTNL_MSG_CT_GET_STATS reply: (entries, max entries).
pub fn parse_stats(buf: &[u8]) -> Result<(Option<u64>, Option<u64>), DecodeError> {
    let (mut entries, mut max) = (None, None);
    for m in wire::data_messages(FAMILY, buf, false)? {
        let attrs = m
            .payload
            .get(NFGENMSG_LEN..)
            .ok_or(DecodeError::ShortStruct {
                family: FAMILY,
                what: "nfgenmsg",
                len: m.payload.len(),
                need: NFGENMSG_LEN,
            })?;
        for a in wire::attrs(FAMILY, "CTA_STATS_GLOBAL", attrs) {
            let a = a?;
            match a.ty {
                CTA_STATS_GLOBAL_ENTRIES => {
                    entries = Some(u64::from(a.u32_be(FAMILY, "CTA_STATS_GLOBAL_ENTRIES")?))
                }
                CTA_STATS_GLOBAL_MAX_ENTRIES => {
                    max = Some(u64::from(a.u32_be(FAMILY, "CTA_STATS_GLOBAL_MAX_ENTRIES")?))
                }
                _ => {}
            }
        }
    }
    Ok((entries, max))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcStatError {
    #[error("{path}: empty file")]
    Empty { path: String },
    #[error("{path}: line {line}: {value:?} is not a hex counter")]
    BadValue {
        path: String,
        line: usize,
        value: String,
    },
}

/// Parses /proc/net/stat/nf_conntrack: a header of column names, then one line of hex
/// values per possible CPU (the CPU number is not printed; lines are in CPU order).
pub fn parse_proc_stat(path: &str, text: &str) -> Result<Vec<CpuStats>, ProcStatError> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| ProcStatError::Empty {
            path: path.to_owned(),
        })?
        .split_whitespace()
        .collect();
    let columns: Vec<Option<usize>> = STATS
        .iter()
        .map(|s| header.iter().position(|h| *h == s.proc_column))
        .collect();
    let mut cpus = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let mut values = Vec::with_capacity(STATS.len());
        for col in &columns {
            let v = match col.and_then(|c| fields.get(c)) {
                Some(f) => {
                    Some(
                        u64::from_str_radix(f, 16).map_err(|_| ProcStatError::BadValue {
                            path: path.to_owned(),
                            line: n + 2,
                            value: (*f).to_owned(),
                        })?,
                    )
                }
                None => None,
            };
            values.push(v);
        }
        cpus.push(CpuStats {
            cpu: n as u32,
            values,
        });
    }
    Ok(cpus)
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn render(s: &Snapshot, opts: &Options) -> Vec<Family> {
    let mut out = Vec::new();
    for (i, stat) in STATS.iter().enumerate() {
        let name = stat.metric;
        let present = s
            .counters
            .cpus
            .iter()
            .filter_map(|c| c.values.get(i).copied().flatten());
        if opts.per_cpu {
            let mut f = Family::counter(name, stat.help, &["cpu"]);
            for c in &s.counters.cpus {
                if let Some(v) = c.values.get(i).copied().flatten() {
                    f.push(&[&c.cpu.to_string()], v as f64);
                }
            }
            out.push(f);
        } else if present.clone().next().is_some() {
            let mut f = Family::counter(name, stat.help, &[]);
            f.push(&[], present.sum::<u64>() as f64);
            out.push(f);
        }
    }
    if let Some(v) = s.counters.entries {
        out.push(Family::single_gauge(
            "packetpath_conntrack_entries",
            "Connections currently in the conntrack table.",
            v as f64,
        ));
    }
    if let Some(v) = s.counters.max_entries {
        out.push(Family::single_gauge(
            "packetpath_conntrack_entries_limit",
            "Maximum size of the conntrack table (nf_conntrack_max).",
            v as f64,
        ));
    }
    let mut sysctl = Family::gauge(
        metrics::CONNTRACK_SYSCTL,
        "Value of a net.netfilter conntrack sysctl; nf_conntrack_checksum=1 means packets with bad checksums are marked invalid.",
        &["name"],
    );
    for (name, v) in &s.sysctls {
        sysctl.push(&[name], *v as f64);
    }
    out.push(sysctl);
    let mut source = Family::gauge(
        metrics::CONNTRACK_SOURCE_INFO,
        "Where conntrack statistics were read from: netlink (CAP_NET_ADMIN) or procfs.",
        &["source"],
    );
    source.push(&[s.source.as_str()], 1.0);
    out.push(source);
    out
}

/// What either source yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub cpus: Vec<CpuStats>,
    pub entries: Option<u64>,
    pub max_entries: Option<u64>,
}

pub struct Conntrack {
    transport: Arc<dyn Transport>,
    procfs: PathBuf,
    opts: Options,
    fallback_notice: LogOnce,
    widened: Mutex<Widen>,
}

/// The kernel keeps these per-CPU statistics in 32 bits; summed, one CPU wrapping would
/// make the total fall by 2^32. Each (cpu, statistic) is widened to 64 bits by adding the
/// increase from the last read: the one piece of state this collector keeps. A decrease
/// that is not a plausible wrap (nf_conntrack reloaded, the procfs fallback taking over)
/// starts the widened value over from the kernel's, a reset that Prometheus handles.
#[derive(Debug, Default)]
struct Widen(HashMap<(u32, usize), (u32, u64)>);

impl Widen {
    fn apply(&mut self, cpus: &mut [CpuStats]) {
        for c in cpus {
            for (i, v) in c.values.iter_mut().enumerate() {
                let Some(raw) = v.as_mut() else { continue };
                let now = *raw as u32;
                let (last, total) = self.0.entry((c.cpu, i)).or_insert((now, u64::from(now)));
                *total = match crate::counter::u32_increase(*last, now) {
                    Some(d) => total.saturating_add(d),
                    None => u64::from(now),
                };
                *last = now;
                *raw = *total;
            }
        }
    }
}

impl Conntrack {
    pub fn new(r: &Resources, opts: Options) -> Self {
        Conntrack {
            transport: r.transport.clone(),
            procfs: r.procfs.clone(),
            opts,
            fallback_notice: LogOnce::default(),
            widened: Mutex::new(Widen::default()),
        }
    }

    fn read_netlink(&self) -> Result<Counters, TransportError> {
        let t = self.transport.as_ref();
        let decode = |name| move |source| TransportError::Decode { name, source };
        let req = stats_cpu_request();
        let cpus = parse_stats_cpu(&t.exchange(&req)?).map_err(decode(req.name))?;
        let req = stats_request();
        let (entries, max_entries) = parse_stats(&t.exchange(&req)?).map_err(decode(req.name))?;
        Ok(Counters {
            cpus,
            entries,
            max_entries,
        })
    }

    fn read_procfs(&self, why: &str) -> Result<Counters, CollectError> {
        let path = self.procfs.join("net/stat/nf_conntrack");
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => CollectError::absent(format!(
                "nf_conntrack not loaded: {shown} does not exist and ctnetlink failed ({why})"
            )),
            _ => CollectError::new(format!("{shown}: {e}; ctnetlink failed ({why})")),
        })?;
        let cpus = parse_proc_stat(&shown, &text).map_err(|e| CollectError::new(e.to_string()))?;
        let nf = self.procfs.join("sys/net/netfilter");
        Ok(Counters {
            cpus,
            entries: read_u64(&nf.join("nf_conntrack_count")),
            max_entries: read_u64(&nf.join("nf_conntrack_max")),
        })
    }

    pub fn snapshot(&self) -> Result<Snapshot, CollectError> {
        // Look before asking: a ctnetlink request makes the kernel load nf_conntrack_netlink
        // and with it nf_conntrack, on a host that had no conntrack at all. The module, loaded
        // or built in, creates this file in every namespace.
        let stat = self.procfs.join("net/stat/nf_conntrack");
        if !stat.exists() {
            return Err(CollectError::absent(format!(
                "nf_conntrack not loaded ({} does not exist); not asking ctnetlink, which would load it",
                stat.display()
            )));
        }
        let (source, mut counters) = match self.read_netlink() {
            Ok(c) => {
                self.fallback_notice.reset();
                (Source::Netlink, c)
            }
            Err(e) => {
                let why = match e.errno() {
                    Some(libc::EPERM) => format!("ctnetlink needs CAP_NET_ADMIN ({e})"),
                    _ => e.to_string(),
                };
                let c = self.read_procfs(&why)?;
                if self.fallback_notice.first(&why) {
                    tracing::info!(collector = "conntrack", reason = %why, "reading conntrack statistics from procfs instead of ctnetlink");
                }
                (Source::Procfs, c)
            }
        };
        self.widened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&mut counters.cpus);
        let nf = self.procfs.join("sys/net/netfilter");
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|name| read_u64(&nf.join(name)).map(|v| (*name, v)))
            .collect();
        Ok(Snapshot {
            source,
            counters,
            sysctls,
        })
    }
}

impl Collector for Conntrack {
    fn collect(&self, _: &Scrape) -> Result<Vec<Family>, CollectError> {
        Ok(render(&self.snapshot()?, &self.opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One CPU with one statistic.
    fn one_stat(cpu: u32, v: u64) -> Vec<CpuStats> {
        vec![CpuStats {
            cpu,
            values: vec![Some(v)],
        }]
    }

    #[test]
    fn a_wrapping_cpu_counter_keeps_the_sum_monotonic() {
        let mut w = Widen::default();
        let cpu = |v| one_stat(1, v);
        let mut a = cpu(u64::from(u32::MAX) - 5);
        w.apply(&mut a);
        assert_eq!(a[0].values[0], Some(u64::from(u32::MAX) - 5));
        let mut b = cpu(10);
        w.apply(&mut b);
        assert_eq!(b[0].values[0], Some(u64::from(u32::MAX) + 11));
        let mut c = cpu(12);
        w.apply(&mut c);
        assert_eq!(c[0].values[0], Some(u64::from(u32::MAX) + 13));
    }

    #[test]
    fn statistics_that_fall_start_over_instead_of_leaping() {
        let mut w = Widen::default();
        let cpu = |v| one_stat(0, v);
        let mut a = cpu(8_192);
        w.apply(&mut a);
        // nf_conntrack reloaded: the kernel's counter starts again from 10.
        let mut b = cpu(10);
        w.apply(&mut b);
        assert_eq!(b[0].values[0], Some(10));
        let mut c = cpu(15);
        w.apply(&mut c);
        assert_eq!(c[0].values[0], Some(15));
    }
}
