//! What the listener counts and what scrapes export.
//!
//! The listener counts each report under what the kernel said (ingress ifindex, frame
//! destination, cause) in a small map, with nothing resolved; each scrape takes that map
//! and credits its counts to `(device, role, reason)` with the scrape's own links and VM
//! ports. Resolution never goes back: a device renamed later keeps what it was credited.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, HashMap, HashSet};

use super::alert::{Alert, Cause, Origin};
use crate::collectors::common::devices::Devices;
use crate::collectors::common::links::Link;
use crate::collectors::common::ovsdb::VmPort;
use crate::metrics;
use crate::render::Family;
use crate::roles::Role;

/// Distinct raw keys the listener keeps between two scrapes before it forgets frame
/// destinations (then ingress devices) of new keys: bounded memory under any flood.
pub const PENDING_KEYS: usize = 4096;
/// Distinct reasons (or functions, or hardware traps) exported; the rest as `other`.
pub const MAX_CAUSES: usize = 256;
/// The ifindex standing for "an ingress device forgotten at the key cap".
const FORGOTTEN: u32 = u32::MAX;

/// Reasons that lose VM traffic on the tunnel → VM path; VM ports and tunnels have a
/// series for each from the start (on kernels with reasons), so a rate is never absent.
pub const VM_PATH_REASONS: &[&str] = &[
    "FULL_RING",
    "DEV_READY",
    "TAP_FILTER",
    "NETFILTER_DROP",
    "QDISC_DROP",
];

/// Role values for drops that name no device of this namespace.
pub const ROLE_LOCAL: &str = "local";
pub const ROLE_OTHER_NETNS: &str = "other_netns";
/// The device label of devices past the cap, and of causes past theirs.
pub const OTHER: &str = "other";

/// A report as the kernel gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Raw {
    pub origin: Origin,
    /// 0: the packet had not arrived on any device (generated here).
    pub ifindex: u32,
    /// The frame's destination when unicast.
    pub dst: Option<[u8; 6]>,
    /// A hardware drop's device, as the driver named it.
    pub device: Option<String>,
    pub cause: Cause,
}

impl Raw {
    pub fn of(a: &Alert) -> Raw {
        Raw {
            origin: a.origin,
            ifindex: a.ifindex.unwrap_or(0),
            // The group bit: broadcast and multicast name no one port.
            dst: a.dst.filter(|d| d[0] & 1 == 0),
            device: a.device.clone(),
            cause: a.cause.clone(),
        }
    }
}

/// The listener's counts since the last scrape.
#[derive(Debug, Default)]
pub struct Pending {
    pub counts: HashMap<Raw, u64>,
}

impl Pending {
    pub fn add(&mut self, mut key: Raw) {
        if self.counts.len() >= PENDING_KEYS && !self.counts.contains_key(&key) {
            key.dst = None;
            if self.counts.len() >= 2 * PENDING_KEYS && !self.counts.contains_key(&key) {
                key.ifindex = FORGOTTEN;
                key.device = None;
            }
        }
        *self.counts.entry(key).or_default() += 1;
    }

    /// Adds what another pending map holds (a scrape that could not resolve gives back).
    pub fn merge(&mut self, other: Pending) {
        for (k, n) in other.counts {
            *self.counts.entry(k).or_default() += n;
        }
    }
}

/// What a scrape resolves raw reports with.
pub struct Context<'a> {
    links: HashMap<u32, (&'a Link, Role)>,
    /// VM ports by the MAC of the guest's interface (OVSDB `attached-mac`).
    vm_by_mac: HashMap<[u8; 6], &'a str>,
    /// Ifindexes that a veth of this namespace says its peer has in another namespace.
    foreign: HashSet<u32>,
}

/// `aa:bb:cc:dd:ee:ff`, as OVSDB writes it.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl<'a> Context<'a> {
    pub fn new(links: &'a [Link], ports: &'a [VmPort], devices: &Devices) -> Context<'a> {
        Context {
            links: links
                .iter()
                .map(|l| {
                    let role = devices.role(&l.name, l.kind.as_deref());
                    (l.index as u32, (l, role))
                })
                .collect(),
            vm_by_mac: ports
                .iter()
                .filter_map(|p| Some((parse_mac(&p.mac)?, p.device.as_str())))
                .collect(),
            foreign: links
                .iter()
                .filter(|l| l.link_netnsid.is_some())
                .filter_map(|l| l.link)
                .collect(),
        }
    }

    /// The device and role a report is credited to: the VM port the frame was heading
    /// to, else the device it last arrived on when that is surely this namespace's.
    pub fn resolve(&self, r: &Raw) -> (String, &'static str) {
        if let Some(port) = r.dst.and_then(|d| self.vm_by_mac.get(&d)) {
            return ((*port).to_owned(), Role::Vm.as_str());
        }
        if r.ifindex == FORGOTTEN {
            return (OTHER.to_owned(), Role::Other.as_str());
        }
        if r.ifindex == 0 {
            return (String::new(), ROLE_LOCAL);
        }
        match self.links.get(&r.ifindex) {
            // A peer in another namespace has this index too: only a frame sent to this
            // device's own address is surely this device's.
            Some((l, role))
                if !self.foreign.contains(&r.ifindex) || (r.dst.is_some() && r.dst == l.mac) =>
            {
                (l.name.clone(), role.as_str())
            }
            _ => (String::new(), ROLE_OTHER_NETNS),
        }
    }

    /// VM ports and tunnels of this namespace: they have series from the start.
    fn path_devices(&self) -> impl Iterator<Item = (&'a str, &'static str)> + '_ {
        self.links
            .values()
            .filter(|(_, role)| matches!(role, Role::Vm | Role::Tunnel))
            .map(|(l, role)| (l.name.as_str(), role.as_str()))
    }
}

type Labels = (String, &'static str, String);

/// The exported counters.
#[derive(Debug, Default)]
pub struct Totals {
    software: BTreeMap<Labels, u64>,
    hardware: BTreeMap<Labels, u64>,
    /// Devices with series of their own, VM ports and tunnels aside.
    devices: HashSet<String>,
    causes: HashSet<String>,
}

impl Totals {
    /// Credits `pending` to labels; devices beyond `max_devices` (VM ports and tunnels
    /// aside) count as `other`, causes beyond [`MAX_CAUSES`] too.
    pub fn credit(&mut self, pending: Pending, cx: &Context, max_devices: usize, reasons: bool) {
        if reasons {
            for (device, role) in cx.path_devices() {
                for reason in VM_PATH_REASONS {
                    self.software
                        .entry((device.to_owned(), role, (*reason).to_owned()))
                        .or_default();
                }
            }
        }
        // In order, so which devices reach the cap first does not depend on hashing.
        let mut pending: Vec<_> = pending.counts.into_iter().collect();
        pending.sort_unstable();
        for (raw, n) in pending {
            let (mut device, role) = match (&raw.origin, &raw.device) {
                // A hardware drop names its device; its index is this namespace's.
                (Origin::Hardware, Some(name)) => {
                    let (_, role) = cx.resolve(&raw);
                    (name.clone(), role)
                }
                _ => cx.resolve(&raw),
            };
            let capped = !matches!(role, "vm" | "tunnel") && !device.is_empty();
            if capped && !self.devices.contains(&device) {
                if self.devices.len() < max_devices {
                    self.devices.insert(device.clone());
                } else {
                    device = OTHER.to_owned();
                }
            }
            let mut cause = match &raw.cause {
                Cause::Reason(r) => r.clone(),
                Cause::Function(f) => format!("function:{f}"),
                Cause::Trap(t) => t.clone(),
                Cause::Unknown => "unknown".to_owned(),
            };
            if !self.causes.contains(&cause) {
                if self.causes.len() < MAX_CAUSES {
                    self.causes.insert(cause.clone());
                } else {
                    cause = OTHER.to_owned();
                }
            }
            let map = match raw.origin {
                Origin::Software => &mut self.software,
                Origin::Hardware => &mut self.hardware,
            };
            *map.entry((device, role, cause)).or_default() += n;
        }
    }

    pub fn render(&self) -> Vec<Family> {
        let mut sw = Family::counter(
            metrics::KERNEL_DROP_PACKETS,
            "Packets the kernel dropped, by the VM port they were heading to or the device they last arrived on, and the kernel's reason (function:<name> on kernels without reasons).",
            &["device", "role", "reason"],
        );
        for ((d, r, c), n) in &self.software {
            sw.push(&[d, r, c], *n as f64);
        }
        let mut hw = Family::counter(
            metrics::KERNEL_HARDWARE_DROP_PACKETS,
            "Packets a device's hardware dropped, as its driver reported them, by device and trap.",
            &["device", "role", "trap"],
        );
        for ((d, r, c), n) in &self.hardware {
            hw.push(&[d, r, c], *n as f64);
        }
        vec![sw, hw]
    }
}
