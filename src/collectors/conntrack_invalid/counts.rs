//! The classifier's counts: written by the listener thread, read by scrapes.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::CLASS_FAMILY;
use super::record::{
    FAMILY, IpFamily, Proto, Reason, Record, SizeClass, TcpFlags, parse_record, seq_of,
};
use super::zones::ZoneCounts;
use crate::netlink::wire;
use crate::render::Family;

/// Counters the listener thread writes and scrapes read.
pub struct Counts {
    pub(super) classes: Vec<AtomicU64>,
    devices: Mutex<HashMap<u32, u64>>,
    max_devices: usize,
    /// By conntrack zone and reason, for the per-VM-port counts.
    pub zones: ZoneCounts,
    pub messages: AtomicU64,
    overruns: AtomicU64,
    pub lost: AtomicU64,
    pub errors: AtomicU64,
    /// The last NFULA_SEQ seen, or [`NO_SEQ`].
    last_seq: AtomicU64,
}

const NO_SEQ: u64 = u64::MAX;

/// Marks "other devices" once the device cap is reached.
pub(super) const OTHER_DEVICE: u32 = u32::MAX;

/// The record's slot among all label combinations (variants index their `ALL`).
pub fn class_index(r: &Record) -> usize {
    let i = r.family as usize;
    let i = i * Proto::ALL.len() + r.proto as usize;
    let i = i * Reason::ALL.len() + r.reason as usize;
    let i = i * SizeClass::ALL.len() + r.size as usize;
    i * TcpFlags::ALL.len() + r.flags as usize
}

/// Every combination of the labels, derived from the label enums.
pub const CLASSES: usize = IpFamily::ALL.len()
    * Proto::ALL.len()
    * Reason::ALL.len()
    * SizeClass::ALL.len()
    * TcpFlags::ALL.len();

impl Counts {
    pub fn new(max_devices: usize) -> Counts {
        Counts {
            classes: (0..CLASSES).map(|_| AtomicU64::new(0)).collect(),
            devices: Mutex::new(HashMap::new()),
            max_devices,
            zones: ZoneCounts::default(),
            messages: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_seq: AtomicU64::new(NO_SEQ),
        }
    }

    /// The socket's overruns so far (the subscription counts them).
    pub fn set_overruns(&self, n: u64) {
        self.overruns.store(n, Ordering::Relaxed);
    }

    pub fn record(&self, r: &Record) {
        self.track_seq(r.seq);
        if !r.from_conntrack {
            return;
        }
        if let Some(c) = self.classes.get(class_index(r)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(zone) = r.zone {
            self.zones.add(zone, r.reason);
        }
        if let Some(dev) = r.indev {
            let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
            // One lookup for a device already counted, the usual case.
            match devices.get_mut(&dev) {
                Some(n) => *n += 1,
                None => {
                    let named = devices.len() - usize::from(devices.contains_key(&OTHER_DEVICE));
                    let key = if named < self.max_devices {
                        dev
                    } else {
                        OTHER_DEVICE
                    };
                    *devices.entry(key).or_default() += 1;
                }
            }
        }
        // Last, and released: a scrape that reads the message count first sees every
        // class, zone and device of the messages it counts.
        self.messages.fetch_add(1, Ordering::Release);
    }

    fn track_seq(&self, seq: Option<u32>) {
        if let Some(seq) = seq {
            // NFULA_SEQ counts every message the instance sent: a jump is messages lost.
            let prev = self.last_seq.swap(u64::from(seq), Ordering::Relaxed);
            if let Ok(prev) = u32::try_from(prev) {
                let gap = seq.wrapping_sub(prev).wrapping_sub(1);
                if gap < u32::MAX / 2 {
                    self.lost.fetch_add(u64::from(gap), Ordering::Relaxed);
                }
            }
        }
    }

    /// Decodes and counts every message in one datagram.
    pub fn ingest(&self, datagram: &[u8]) {
        for m in wire::messages(FAMILY, datagram) {
            let Ok(m) = m else {
                self.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match parse_record(&m) {
                Ok(Some(r)) => self.record(&r),
                // Messages not counted still took a sequence number: note it, or the next
                // one would count them as lost.
                Ok(None) => self.track_seq(seq_of(&m)),
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.track_seq(seq_of(&m));
                }
            }
        }
    }

    /// (name, count) of each device counted, by the name it has now. Devices gone since
    /// (a VM's TAP, deleted with the VM) are forgotten: their series end and their slot
    /// goes to the next device, instead of TAP churn filling the cap with dead ifindexes.
    pub(super) fn live_devices(&self, name: impl Fn(u32) -> Option<String>) -> Vec<(String, u64)> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Vec::with_capacity(devices.len());
        devices.retain(|idx, n| match name(*idx) {
            Some(dev) => {
                live.push((dev, *n));
                true
            }
            None => false,
        });
        live
    }

    pub fn render(&self) -> Vec<Family> {
        let messages = self.messages.load(Ordering::Acquire);
        let mut classes = Family::counter(
            CLASS_FAMILY,
            "Packets conntrack logged as invalid, by IP family, protocol, the kernel's reason, Ethernet frame size class and TCP flags.",
            &["family", "protocol", "reason", "size_class", "tcp_flags"],
        );
        for (i, c) in self.classes.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            let (i, f) = (i / TcpFlags::ALL.len(), i % TcpFlags::ALL.len());
            let (i, s) = (i / SizeClass::ALL.len(), i % SizeClass::ALL.len());
            let (i, r) = (i / Reason::ALL.len(), i % Reason::ALL.len());
            let (fam, p) = (i / Proto::ALL.len(), i % Proto::ALL.len());
            // TCP bad-checksum series exist from the start at 0, so the first packet of
            // the seed incident's signature is an increase, not a new series.
            let preset = Proto::ALL.get(p) == Some(&Proto::Tcp)
                && Reason::ALL.get(r) == Some(&Reason::BadChecksum);
            if v == 0 && !preset {
                continue;
            }
            classes.push(
                &[
                    IpFamily::ALL.get(fam).map_or("other", |x| x.as_str()),
                    Proto::ALL.get(p).map_or("other", |x| x.as_str()),
                    Reason::ALL.get(r).map_or("other", |x| x.as_str()),
                    SizeClass::ALL.get(s).map_or("other", |x| x.as_str()),
                    TcpFlags::ALL.get(f).map_or("other", |x| x.as_str()),
                ],
                v as f64,
            );
        }
        let mut devices = Family::counter(
            "packetpath_conntrack_invalid_device_packets_total",
            "Conntrack-invalid packets by input device (capped; the rest count as device=\"other\").",
            &["device"],
        );
        let mut by_dev = self.live_devices(device_name);
        by_dev.sort();
        for (name, n) in &by_dev {
            devices.push(&[name], *n as f64);
        }
        let single = |name: &str, help: &str, v: &AtomicU64| {
            let mut f = Family::counter(name, help, &[]);
            f.push(&[], v.load(Ordering::Relaxed) as f64);
            f
        };
        vec![
            classes,
            devices,
            single(
                "packetpath_conntrack_invalid_log_messages_total",
                "NFLOG messages about invalid packets received from the kernel.",
                &AtomicU64::new(messages),
            ),
            single(
                "packetpath_conntrack_invalid_log_overruns_total",
                "Times the NFLOG socket overflowed (ENOBUFS): messages were lost.",
                &self.overruns,
            ),
            single(
                "packetpath_conntrack_invalid_log_lost_total",
                "NFLOG messages lost, from gaps in the kernel's sequence numbers.",
                &self.lost,
            ),
            single(
                "packetpath_conntrack_invalid_log_errors_total",
                "NFLOG messages that could not be decoded.",
                &self.errors,
            ),
        ]
    }
}

/// The device's name now; None once it no longer exists.
fn device_name(idx: u32) -> Option<String> {
    if idx == OTHER_DEVICE {
        return Some("other".into());
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
