//! Conntrack-invalid packets by VM port, through the conntrack zone.
//!
//! The listener counts by (zone, reason) as the kernel's NFULA_CT says (see
//! [`ZoneCounts`]); a collection maps each zone to the one VM port ovn-controller gave it
//! (`ct-zone-<iface-id>` in OVSDB) and credits that port with what the zone counted since
//! the previous collection ([`Attribution`]). Ports are bound and unbound, and zones
//! reused, between collections; one VM's packets must never be credited to another, so a
//! zone's counts are credited only when the zone mapped to the same port at both
//! collections, or when it first counted after the previous collection, which found it
//! mapped to no port. Before the first collection, the port a zone belonged to when it
//! first counted (asked of OVSDB then, [`Owner`]) stands for the previous collection's.
//! Anything else stays unattributed: the collector's totals still count it.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use super::record::Reason;
use crate::collectors::common::ovsdb::VmPort;
use crate::metrics;
use crate::render::Family;

/// Counts of one zone (or port), one per [`Reason`], in `Reason::ALL` order.
pub type ByReason = [u64; Reason::ALL.len()];

/// Distinct zones counted at most; packets of further zones are not counted by zone.
pub const MAX_ZONES: usize = 4096;

/// The device of the one VM port a zone belongs to now, asked when a zone first counts.
pub type Owner = Box<dyn Fn(u16) -> Option<String> + Send + Sync>;

/// What the listener counted per zone since it started.
#[derive(Default)]
pub struct ZoneCounts {
    zones: Mutex<HashMap<u16, ByReason>>,
    /// Each zone's owner when it first counted (None: no OVSDB view, or no single port).
    first: Mutex<HashMap<u16, Option<String>>>,
    owner: OnceLock<Owner>,
}

impl ZoneCounts {
    /// How to find a zone's port when it first counts.
    pub fn set_owner(&self, owner: Owner) {
        let _ = self.owner.set(owner);
    }

    pub fn add(&self, zone: u16, reason: Reason) {
        let mut zones = self.zones.lock().unwrap_or_else(|p| p.into_inner());
        let len = zones.len();
        let counts = match zones.get_mut(&zone) {
            Some(c) => c,
            None if len < MAX_ZONES => {
                let owner = self.owner.get().and_then(|o| o(zone));
                self.first
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(zone, owner);
                zones.entry(zone).or_default()
            }
            None => return,
        };
        if let Some(n) = counts.get_mut(reason as usize) {
            *n += 1;
        }
    }

    pub fn snapshot(&self) -> HashMap<u16, ByReason> {
        self.zones.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each zone's port when it first counted.
    pub fn first_owners(&self) -> HashMap<u16, Option<String>> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The previous collection's view of the zones.
struct Seen {
    /// Zone to the device of the one VM port it belonged to.
    ports: HashMap<u16, String>,
    counts: HashMap<u16, ByReason>,
}

/// The per-port counters the collector exports, and what it needs to keep them exact.
#[derive(Default)]
pub struct Attribution {
    /// None before the first collection that read OVSDB, and after one that could not:
    /// what happened meanwhile cannot be placed.
    last: Option<Seen>,
    /// A collection has read OVSDB (after that, a missing `last` means an outage).
    started: bool,
    credited: BTreeMap<String, ByReason>,
}

/// Each zone that belongs to exactly one VM port, with that port's device.
fn zone_ports(ports: &[VmPort]) -> HashMap<u16, String> {
    let mut by_zone: HashMap<u16, Option<&str>> = HashMap::new();
    for p in ports {
        if let Some(z) = p.ct_zone {
            by_zone
                .entry(z)
                .and_modify(|d| *d = None)
                .or_insert(Some(p.device.as_str()));
        }
    }
    by_zone
        .into_iter()
        .filter_map(|(z, d)| Some((z, d?.to_owned())))
        .collect()
}

impl Attribution {
    /// Credits what each zone counted since the previous collection; `ports` is None when
    /// OVSDB could not be read, and then nothing is credited. `first` is each zone's port
    /// when it first counted, for the first collection.
    pub fn update(
        &mut self,
        counts: HashMap<u16, ByReason>,
        first: &HashMap<u16, Option<String>>,
        ports: Option<&[VmPort]>,
    ) {
        let Some(ports) = ports else {
            self.last = None;
            return;
        };
        let now = zone_ports(ports);
        if self.last.is_none() && !self.started {
            // Since the start: a zone whose port is the one it had when it first counted.
            for (zone, c) in &counts {
                let Some(device) = now.get(zone) else {
                    continue;
                };
                if first.get(zone) == Some(&Some(device.clone())) {
                    let sum = self.credited.entry(device.clone()).or_default();
                    for (s, n) in sum.iter_mut().zip(c) {
                        *s += n;
                    }
                }
            }
        }
        self.started = true;
        if let Some(last) = &self.last {
            for (zone, c) in &counts {
                let Some(device) = now.get(zone) else {
                    continue;
                };
                let before = last.counts.get(zone);
                let same_port = match last.ports.get(zone) {
                    Some(then) => then == device,
                    // Unbound then: only what came after it can be this port's.
                    None => before.is_none(),
                };
                if !same_port {
                    continue;
                }
                let zero = ByReason::default();
                let before = before.unwrap_or(&zero);
                if c == before {
                    continue;
                }
                let sum = self.credited.entry(device.clone()).or_default();
                for ((s, n), b) in sum.iter_mut().zip(c).zip(before) {
                    *s += n.saturating_sub(*b);
                }
            }
        }
        // A port gone ends its series.
        let present: std::collections::HashSet<&str> =
            ports.iter().map(|p| p.device.as_str()).collect();
        self.credited
            .retain(|device, _| present.contains(device.as_str()));
        self.last = Some(Seen { ports: now, counts });
    }

    /// Every port credited so far, each with every reason.
    pub fn render(&self) -> Family {
        let mut f = Family::counter(
            metrics::VM_PORT_CONNTRACK_INVALID_PACKETS,
            "Conntrack-invalid packets logged in the conntrack zone of this VM port, by the kernel's reason.",
            &["device", "reason"],
        );
        for (device, counts) in &self.credited {
            for (reason, n) in Reason::ALL.iter().zip(counts) {
                f.push(&[device, reason.as_str()], *n as f64);
            }
        }
        f
    }

    #[cfg(test)]
    pub fn credited(&self) -> &BTreeMap<String, ByReason> {
        &self.credited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(device: &str, zone: Option<u16>) -> VmPort {
        VmPort {
            device: device.into(),
            port_id: format!("id-{device}"),
            instance_id: String::new(),
            mac: String::new(),
            status: String::new(),
            ovn_installed: true,
            error: None,
            ct_zone: zone,
        }
    }

    /// Zone counts: (zone, bad_checksum, invalid_state).
    fn counts(v: &[(u16, u64, u64)]) -> HashMap<u16, ByReason> {
        v.iter()
            .map(|&(z, bad, state)| {
                let mut c = ByReason::default();
                c[Reason::BadChecksum as usize] = bad;
                c[Reason::InvalidState as usize] = state;
                (z, c)
            })
            .collect()
    }

    fn credited(a: &Attribution) -> Vec<(String, u64, u64)> {
        a.credited()
            .iter()
            .map(|(d, c)| {
                (
                    d.clone(),
                    c[Reason::BadChecksum as usize],
                    c[Reason::InvalidState as usize],
                )
            })
            .collect()
    }

    impl Attribution {
        /// Without owners asked at first count (OVSDB not synchronised yet).
        fn update_(&mut self, counts: HashMap<u16, ByReason>, ports: Option<&[VmPort]>) {
            self.update(counts, &HashMap::new(), ports);
        }
    }

    fn want(v: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
        v.iter().map(|(d, b, s)| (d.to_string(), *b, *s)).collect()
    }

    #[test]
    fn the_first_collection_is_a_baseline_then_deltas_are_credited() {
        let mut a = Attribution::default();
        let ports = [port("tapA", Some(5)), port("tapB", Some(6))];
        // Counted before the first collection: nobody knows whose they were.
        a.update_(counts(&[(5, 3, 0)]), Some(&ports));
        assert_eq!(credited(&a), want(&[]));
        a.update_(counts(&[(5, 7, 1), (6, 2, 0)]), Some(&ports));
        // Zone 6 first counted after a collection that found it bound to tapB.
        assert_eq!(credited(&a), want(&[("tapA", 4, 1), ("tapB", 2, 0)]));
        a.update_(counts(&[(5, 7, 1), (6, 2, 0)]), Some(&ports));
        assert_eq!(credited(&a), want(&[("tapA", 4, 1), ("tapB", 2, 0)]));
    }

    #[test]
    fn before_the_first_collection_the_zone_owner_at_first_count_decides() {
        let mut a = Attribution::default();
        let ports = [port("tapA", Some(5)), port("tapB", Some(6))];
        // Zone 5 was tapA's when it first counted; zone 6 was another port's then.
        let first = HashMap::from([(5, Some("tapA".to_owned())), (6, Some("tapC".to_owned()))]);
        a.update(counts(&[(5, 3, 1), (6, 2, 0)]), &first, Some(&ports));
        assert_eq!(credited(&a), want(&[("tapA", 3, 1)]));
        // After an outage there is no such shortcut: the next collection is a baseline.
        a.update(counts(&[(5, 4, 1)]), &first, None);
        a.update(counts(&[(5, 6, 1)]), &first, Some(&ports));
        assert_eq!(credited(&a), want(&[("tapA", 3, 1)]));
    }

    #[test]
    fn zone_owners_are_asked_once_when_a_zone_first_counts() {
        let z = ZoneCounts::default();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = asked.clone();
        z.set_owner(Box::new(move |zone| {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (zone == 5).then(|| "tapA".to_owned())
        }));
        z.add(5, Reason::BadChecksum);
        z.add(5, Reason::BadChecksum);
        z.add(9, Reason::InvalidState);
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(
            z.first_owners(),
            HashMap::from([(5, Some("tapA".to_owned())), (9, None)])
        );
    }

    #[test]
    fn a_zone_reassigned_to_another_port_credits_neither() {
        let mut a = Attribution::default();
        a.update_(counts(&[(5, 1, 0)]), Some(&[port("tapA", Some(5))]));
        a.update_(counts(&[(5, 2, 0)]), Some(&[port("tapA", Some(5))]));
        assert_eq!(credited(&a), want(&[("tapA", 1, 0)]));
        // tapA unbound, zone 5 given to tapB: the packets since could be either VM's.
        let b = [port("tapA", None), port("tapB", Some(5))];
        a.update_(counts(&[(5, 9, 0)]), Some(&b));
        assert_eq!(credited(&a), want(&[("tapA", 1, 0)]));
        // From then on zone 5 is tapB's.
        a.update_(counts(&[(5, 10, 2)]), Some(&b));
        assert_eq!(credited(&a), want(&[("tapA", 1, 0), ("tapB", 1, 2)]));
    }

    #[test]
    fn a_reused_zone_that_counted_before_is_not_credited_to_the_new_port() {
        let mut a = Attribution::default();
        // Zone 8 counted while bound to no port known here (a port deleted before).
        a.update_(counts(&[(8, 4, 0)]), Some(&[port("tapA", Some(5))]));
        a.update_(counts(&[(8, 6, 0)]), Some(&[port("tapA", Some(5))]));
        assert_eq!(credited(&a), want(&[]));
        // tapC gets zone 8: what the zone counted until now is not tapC's.
        let c = [port("tapA", Some(5)), port("tapC", Some(8))];
        a.update_(counts(&[(8, 7, 0)]), Some(&c));
        assert_eq!(credited(&a), want(&[]));
        a.update_(counts(&[(8, 9, 0)]), Some(&c));
        assert_eq!(credited(&a), want(&[("tapC", 2, 0)]));
    }

    #[test]
    fn ovsdb_down_credits_nothing_and_the_next_collection_is_a_baseline() {
        let mut a = Attribution::default();
        let ports = [port("tapA", Some(5))];
        a.update_(counts(&[(5, 1, 0)]), Some(&ports));
        a.update_(counts(&[(5, 2, 0)]), Some(&ports));
        a.update_(counts(&[(5, 5, 0)]), None);
        assert_eq!(credited(&a), want(&[("tapA", 1, 0)]));
        // Back: the mapping during the outage is unknown, so the outage's counts are not
        // credited; the series stay meanwhile.
        a.update_(counts(&[(5, 6, 0)]), Some(&ports));
        assert_eq!(credited(&a), want(&[("tapA", 1, 0)]));
        a.update_(counts(&[(5, 8, 0)]), Some(&ports));
        assert_eq!(credited(&a), want(&[("tapA", 3, 0)]));
    }

    #[test]
    fn zones_of_no_port_or_of_two_ports_and_ports_gone() {
        let mut a = Attribution::default();
        // Zone 9 belongs to no port; zone 7 to two (bridges disagreeing, say).
        let ports = [
            port("tapA", Some(5)),
            port("tapX", Some(7)),
            port("tapY", Some(7)),
        ];
        a.update_(counts(&[(9, 1, 0), (7, 1, 0), (5, 1, 0)]), Some(&ports));
        a.update_(counts(&[(9, 3, 0), (7, 3, 0), (5, 2, 0)]), Some(&ports));
        assert_eq!(credited(&a), want(&[("tapA", 1, 0)]));
        // tapA deleted: its series end.
        a.update_(counts(&[(5, 3, 0)]), Some(&ports[1..]));
        assert_eq!(credited(&a), want(&[]));
    }

    #[test]
    fn zones_past_the_cap_are_not_counted_by_zone() {
        let z = ZoneCounts::default();
        for zone in 0..=u16::try_from(MAX_ZONES).unwrap() {
            z.add(zone, Reason::BadChecksum);
        }
        z.add(0, Reason::OutOfWindow);
        let s = z.snapshot();
        assert_eq!(s.len(), MAX_ZONES);
        assert!(!s.contains_key(&(MAX_ZONES as u16)));
        assert_eq!(s[&0][Reason::BadChecksum as usize], 1);
        assert_eq!(s[&0][Reason::OutOfWindow as usize], 1);
    }

    #[test]
    fn every_reason_of_a_credited_port_is_exported() {
        let mut a = Attribution::default();
        let ports = [port("tapA", Some(5)), port("tapB", Some(6))];
        a.update_(counts(&[]), Some(&ports));
        a.update_(counts(&[(5, 2, 0)]), Some(&ports));
        let mut out = Vec::new();
        crate::render::encode_text(vec![a.render()], &mut out);
        let text = String::from_utf8(out).unwrap();
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(series.len(), Reason::ALL.len(), "{text}");
        assert!(text.contains(
            "packetpath_vm_port_conntrack_invalid_packets_total{device=\"tapA\",reason=\"bad_checksum\"} 2\n"
        ));
        assert!(!text.contains("tapB"));
    }
}
