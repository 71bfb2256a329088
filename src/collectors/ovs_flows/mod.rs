//! `ovs_flows`: which datapath flows drop traffic, from which port, and why.
//!
//! Fetch: one OVS_FLOW_CMD_GET dump per datapath and scrape, streamed (the table can hold
//! 100k+ flows) and capped by `--collector.ovs_flows.max-flows`, plus the `ovs_flow`
//! multicast group ([`monitor`]), where the kernel announces every flow created, changed
//! and deleted. Parse: [`parse`] decodes a flow and decides whether it drops. Account:
//! [`accounting`] turns both into drop totals that only grow, exact for flows whose whole
//! life was announced (also those that lived and died between two scrapes), approximate
//! where notifications were lost (docs/collectors.md says how, with measured errors). Render: the
//! totals, and the flow table by action.

pub mod accounting;
pub mod attribution;
pub mod monitor;
pub mod parse;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::accounting::{Accounting, Names, OTHER_PORT};
use self::attribution::Attribution;
use self::monitor::{Drained, Monitor};
use self::parse::{ActionClass, FAMILY, Flow};
use super::common::ovs::{Families, Topology, View};
use super::common::ovsdb::VmPort;
use super::common::{Devices, Resources, Scrape};
use super::{CollectError, Collector, Spec, Worker};
use crate::LogOnce;
use crate::metrics;
use crate::netlink::genl;
use crate::netlink::wire::{self, DecodeError, Walk};
use crate::netlink::{Request, Transport, TransportError};
use crate::render::Family;
use crate::roles::Role;

pub const SPEC: Spec = Spec {
    name: "ovs_flows",
    help: "Drop attribution from the OVS datapath flow table and its notifications: drop flows by in_port and reason (generic netlink).",
    default_enabled: true,
    args: super::flags::<Options>,
    build: |m, r| Ok(Arc::new(OvsFlows::new(r, super::options(m)?))),
};

const OVS_FLOW_VERSION: u8 = 1;

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Flows read per datapath and scrape by the ovs_flows collector; past it the dump stops
    /// and packetpath_ovs_flows_dump_truncated says so.
    #[arg(id = "collector.ovs_flows.max-flows", long = "collector.ovs_flows.max-flows", alias = "collector.ovs-flows.max-flows", value_name = "N", default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: u32,

    /// Do not listen to the kernel's flow notifications: drop counts come from flow dumps
    /// alone, an approximation (to compare, or where the multicast group is not allowed).
    #[arg(
        id = "collector.ovs_flows.dumps-only",
        long = "collector.ovs_flows.dumps-only"
    )]
    pub dumps_only: bool,
}

pub fn flow_request(f: &Families, dp_ifindex: u32) -> Request {
    // Key, mask and actions: the mask says whether a drop flow's key matches the
    // destination MAC or conntrack zone in full, which attribution needs.
    let body = dp_ifindex.to_ne_bytes().to_vec();
    let mut r = genl::request(
        f.flow,
        parse::OVS_FLOW_CMD_GET,
        OVS_FLOW_VERSION,
        "ovs_flow_get",
        true,
        &body,
    );
    r.scope = Some(dp_ifindex);
    r
}

/// Outcome of reading one datapath's flow dump.
#[derive(Debug, Default)]
pub struct Dump {
    pub flows: usize,
    pub truncated: bool,
}

/// Streams a flow dump into `on_flow`, stopping after `max` flows; `before_chunk` runs
/// before each chunk's flows are handed over.
pub fn read_dump(
    t: &dyn Transport,
    req: &Request,
    max: usize,
    before_chunk: &mut dyn FnMut(),
    on_flow: &mut dyn FnMut(Flow),
) -> Result<Dump, CollectError> {
    let mut dump = Dump::default();
    let mut done = false;
    let mut failure: Option<DecodeError> = None;
    t.stream(req, &mut |chunk| {
        before_chunk();
        let walked = wire::walk(FAMILY, chunk, &mut |m| {
            let f = parse::parse_flow(m.payload)?;
            if dump.flows >= max {
                // A flow past the cap: the dump really is cut short.
                dump.truncated = true;
                return Ok(false);
            }
            on_flow(f);
            dump.flows += 1;
            Ok(true)
        });
        match walked {
            Ok(Walk::More) => true,
            Ok(Walk::Done) => {
                done = true;
                false
            }
            Ok(Walk::Stopped) => false,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .map_err(|e| CollectError::new(e.to_string()))?;
    match failure {
        Some(e) => Err(CollectError::new(format!("flow dump: {e}"))),
        None if !done && !dump.truncated => Err(CollectError::new(format!(
            "flow dump: {}",
            DecodeError::Unterminated { family: FAMILY }
        ))),
        None => Ok(dump),
    }
}

/// Port labels and roles of one datapath, as drop totals name them: ports the device
/// filter leaves out count as in_port="other" (their role kept), so cardinality stays
/// bounded and sums exact.
fn names_of(topo: &Topology, devices: &Devices) -> Names {
    Names {
        datapath: topo.datapath.name.clone(),
        ports: topo
            .vports
            .iter()
            .zip(&topo.roles)
            .map(|(v, r)| {
                let label = if devices.wants(&v.name) {
                    v.name.clone()
                } else {
                    OTHER_PORT.to_owned()
                };
                (v.port_no, (label, *r))
            })
            .collect(),
    }
}

/// Everything the listener thread and scrapes share, behind one lock: the order in which
/// notifications and dump entries are applied is the order they are read.
struct State {
    acct: Accounting,
    monitor: Option<Monitor>,
    /// Notifications read since start.
    heard: Drained,
    /// When the monitor was last opened, and under which ovs_flow family id.
    last_open: Option<(Instant, u16)>,
    last_refresh: Option<Instant>,
    /// The OVSDB generation attribution's VM ports come from.
    ports_generation: Option<u64>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    resources: Arc<Resources>,
    monitor_notice: LogOnce,
    /// Whether to listen at all (--collector.ovs_flows.dumps-only turns it off).
    notifications: bool,
}

/// How often a missing or broken monitor is opened again at most.
const REOPEN_EVERY: Duration = Duration::from_secs(10);
/// How often the listener may dump the topology to name a port it has not seen.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies every queued notification. Outside a scrape (`may_refresh`) a flow on a
    /// datapath or port not named yet first has the topology read again.
    fn drain(&self, st: &mut State, may_refresh: bool) {
        let State { monitor, heard, .. } = st;
        let Some(m) = monitor.as_mut() else { return };
        let mut flows = Vec::new();
        let overruns = heard.overruns;
        match m.drain(heard, &mut |f| flows.push(*f)) {
            Ok(()) if heard.overruns > overruns => {
                tracing::debug!(
                    overruns = heard.overruns - overruns,
                    "ovs_flow notifications lost (ENOBUFS); counts fall back to flow dumps"
                );
            }
            Ok(()) => {}
            Err(e) => {
                if self.monitor_notice.first(&e.to_string()) {
                    tracing::warn!(collector = "ovs_flows", error = %e, "ovs_flow notification socket failed; it is opened again at the next scrape");
                }
                st.monitor = None;
            }
        }
        let stale = st.last_refresh.is_none_or(|t| t.elapsed() >= REFRESH_EVERY);
        if may_refresh && stale && flows.iter().any(|f| !st.acct.knows(f)) {
            // A read of its own, outside any scrape.
            let r = &self.resources;
            st.last_refresh = Some(Instant::now());
            if let Ok(view) = r.ovs.read(r.transport.as_ref(), &r.devices) {
                for tp in &view.datapaths {
                    st.acct
                        .set_names(tp.datapath.ifindex, names_of(tp, &r.devices));
                }
            }
        }
        if may_refresh && !flows.is_empty() {
            self.refresh_ports(st);
        }
        for f in &flows {
            st.acct.notify(f);
        }
    }

    /// Outside scrapes, takes the VM ports again when the OVSDB copy changed since
    /// attribution last took them (a port plugged between two scrapes).
    fn refresh_ports(&self, st: &mut State) {
        let r = &self.resources;
        let generation = r.ovsdb.generation();
        if generation.is_none() || generation == st.ports_generation {
            return;
        }
        st.ports_generation = generation;
        let ports = r.ovsdb.ports().ok();
        st.acct.attribution.set_ports(ports.as_deref(), &r.devices);
    }

    /// Joins the ovs_flow group if not joined yet, or joined under other family ids (the
    /// module was reloaded).
    fn ensure_monitor(&self, st: &mut State, f: &Families) {
        if st.monitor.as_ref().is_some_and(|m| m.family == f.flow) || !self.notifications {
            return;
        }
        // A failed attempt is retried after a while; at once under new family ids.
        if st
            .last_open
            .is_some_and(|(t, id)| id == f.flow && t.elapsed() < REOPEN_EVERY)
        {
            return;
        }
        st.last_open = Some((Instant::now(), f.flow));
        let t = self.resources.transport.as_ref();
        let opened = t
            .exchange(&genl::families_request())
            .map_err(|e| e.to_string())
            .and_then(|b| {
                genl::parse_mcast_group(&b, FAMILY, monitor::GROUP).map_err(|e| e.to_string())
            })
            .and_then(|g| g.ok_or_else(|| "the ovs_flow family has no ovs_flow group".to_owned()))
            .and_then(|(family, group)| match Monitor::open(t, family, group) {
                Ok(m) => Ok(Some(m)),
                // A replay without a recording, a test's stand-in: nothing to listen to.
                Err(TransportError::NoSubscriptions { .. } | TransportError::Replay { .. }) => {
                    Ok(None)
                }
                Err(e) => Err(e.to_string()),
            });
        match opened {
            Ok(None) => st.monitor = None,
            Ok(Some(m)) => {
                st.monitor = Some(m);
                if self.monitor_notice.reset() {
                    tracing::info!(
                        collector = "ovs_flows",
                        "listening to ovs_flow notifications again"
                    );
                }
            }
            Err(e) => {
                st.monitor = None;
                if self.monitor_notice.first(&e) {
                    tracing::warn!(collector = "ovs_flows", error = %e, "cannot listen to ovs_flow notifications; drop counts come from flow dumps alone (approximate, see docs/collectors.md)");
                }
            }
        }
    }
}

/// The listener: applies notifications as they come, so the socket never fills up
/// between scrapes, and from start rather than from the first scrape, so flows created
/// after the exporter started count from their first packet.
fn listen(shared: Arc<Shared>) {
    let mut last_probe: Option<Instant> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        // Wait without the lock, on the monitor of the moment.
        let waiter = shared.lock().monitor.as_ref().map(|m| m.waiter());
        match waiter {
            None => {
                // Look for the module now and then (a dump, which never loads it).
                let r = &shared.resources;
                if last_probe.is_none_or(|t| t.elapsed() >= REOPEN_EVERY) {
                    last_probe = Some(Instant::now());
                    if let Ok(f) = r.ovs.families.get(r.transport.as_ref()) {
                        shared.ensure_monitor(&mut shared.lock(), &f);
                    }
                }
                std::thread::sleep(Duration::from_millis(200))
            }
            Some(w) => {
                if w.wait(Duration::from_millis(200)) {
                    let mut st = shared.lock();
                    shared.drain(&mut st, true);
                }
            }
        }
    }
}

/// What one scrape saw of one datapath, for rendering.
pub struct Seen {
    pub datapath: String,
    pub by_action: HashMap<(Role, ActionClass), u64>,
    pub truncated: bool,
}

pub struct OvsFlows {
    shared: Arc<Shared>,
    opts: Options,
    worker: Worker,
}

impl OvsFlows {
    pub fn new(r: &Arc<Resources>, opts: Options) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                acct: Accounting::new(opts.max_flows as usize),
                monitor: None,
                heard: Drained::default(),
                last_open: None,
                last_refresh: None,
                ports_generation: None,
            }),
            stop: AtomicBool::new(false),
            resources: r.clone(),
            monitor_notice: LogOnce::default(),
            notifications: !opts.dumps_only,
        });
        let s = shared.clone();
        OvsFlows {
            shared,
            opts,
            worker: Worker::spawn("ovs-flow-monitor", move || listen(s)),
        }
    }

    /// Dumps one datapath's flows; `roles` are its ports' roles by port number.
    fn scan(
        &self,
        f: &Families,
        topo: &Topology,
        roles: &HashMap<u32, Role>,
        st: &mut State,
    ) -> Result<Seen, CollectError> {
        let dp = topo.datapath.ifindex;
        let mut by_action: HashMap<(Role, ActionClass), u64> = HashMap::new();
        let req = flow_request(f, dp);
        st.acct.begin_dump(dp);
        let st = std::cell::RefCell::new(st);
        let dump = read_dump(
            self.shared.resources.transport.as_ref(),
            &req,
            self.opts.max_flows as usize,
            // Notifications sent before this chunk was made are applied before it.
            &mut || self.shared.drain(&mut st.borrow_mut(), false),
            &mut |flow| {
                let role = flow
                    .in_port
                    .and_then(|p| roles.get(&p).copied())
                    .unwrap_or(Role::Other);
                let class = flow.actions.map_or(ActionClass::Drop, |a| a.class);
                *by_action.entry((role, class)).or_default() += 1;
                st.borrow_mut().acct.dumped(&flow);
            },
        );
        let st = st.into_inner();
        st.acct
            .end_dump(dp, dump.as_ref().is_ok_and(|d| !d.truncated));
        let dump = dump?;
        Ok(Seen {
            datapath: topo.datapath.name.clone(),
            by_action,
            truncated: dump.truncated,
        })
    }

    fn collect_with(
        &self,
        view: &View,
        ports: Option<&[VmPort]>,
    ) -> Result<Vec<Family>, CollectError> {
        let (f, topo) = (&view.families, &view.datapaths);
        let devices = &self.shared.resources.devices;
        let mut st = self.shared.lock();
        self.shared.ensure_monitor(&mut st, f);
        st.acct.attribution.set_ports(ports, devices);
        st.ports_generation = self.shared.resources.ovsdb.generation();
        st.acct.begin_collect();
        for tp in topo.iter() {
            let watched: Vec<(&str, Role)> = tp
                .vports
                .iter()
                .zip(&tp.roles)
                .filter(|(v, r)| matches!(r, Role::Tunnel | Role::Vm) && devices.wants(&v.name))
                .map(|(v, r)| (v.name.as_str(), *r))
                .collect();
            st.acct
                .set_names(tp.datapath.ifindex, names_of(tp, devices));
            st.acct.ensure_ports(&tp.datapath.name, &watched);
        }
        // What was heard before the dumps start belongs before them.
        self.shared.drain(&mut st, false);
        let seen = topo
            .iter()
            .map(|tp| {
                let roles = tp
                    .vports
                    .iter()
                    .map(|v| v.port_no)
                    .zip(tp.roles.iter().copied());
                self.scan(f, tp, &roles.collect(), &mut st)
            })
            .collect::<Result<Vec<_>, _>>();
        let live: Vec<u32> = topo.iter().map(|tp| tp.datapath.ifindex).collect();
        st.acct.forget_datapaths(&live);
        st.acct.end_collect();
        Ok(render(&seen?, &st))
    }
}

fn render(seen: &[Seen], st: &State) -> Vec<Family> {
    const L: &[&str] = &["datapath", "in_port", "in_port_role", "reason"];
    let mut packets = Family::counter(
        metrics::OVS_DROP_FLOW_PACKETS,
        "Packets dropped by datapath flows, by input port and reason.",
        L,
    );
    let mut bytes = Family::counter(
        "packetpath_ovs_drop_flow_bytes_total",
        "Bytes dropped by datapath flows, by input port and reason.",
        L,
    );
    for ((dp, port, role, reason), (p, b)) in st.acct.totals() {
        let labels = [dp.as_str(), port, role.as_str(), reason.as_str()];
        packets.push(&labels, *p as f64);
        bytes.push(&labels, *b as f64);
    }
    let (vm_packets, vm_bytes, un_packets, un_bytes) = render_vm_ports(&st.acct.attribution);
    let mut by_action = Family::gauge(
        "packetpath_ovs_datapath_flows_by_action",
        "Datapath flows in the last dump by the role of their input port and their action class.",
        &["datapath", "in_port_role", "action"],
    );
    let mut truncated = Family::gauge(
        "packetpath_ovs_flows_dump_truncated",
        "1 if the last flow dump stopped at --collector.ovs_flows.max-flows, so drop counts are incomplete.",
        &["datapath"],
    );
    for s in seen {
        let dp = s.datapath.as_str();
        let mut classes: Vec<_> = s.by_action.iter().collect();
        classes.sort();
        for ((role, action), n) in classes {
            by_action.push(&[dp, role.as_str(), action.as_str()], *n as f64);
        }
        truncated.push(&[dp], if s.truncated { 1.0 } else { 0.0 });
    }
    let h = &st.heard;
    let mut notifications = Family::counter(
        "packetpath_ovs_flow_notifications_total",
        "Datapath flow notifications received from the kernel, by command.",
        &["command"],
    );
    notifications.push(&["new"], h.new as f64);
    notifications.push(&["set"], h.set as f64);
    notifications.push(&["del"], h.del as f64);
    vec![
        packets,
        bytes,
        vm_packets,
        vm_bytes,
        un_packets,
        un_bytes,
        by_action,
        truncated,
        notifications,
        Family::single_counter(
            "packetpath_ovs_flow_notification_overruns_total",
            "Times the flow notification socket overflowed (ENOBUFS): notifications were lost, and drop counts fell back to the dumps.",
            h.overruns as f64,
        ),
        Family::single_counter(
            "packetpath_ovs_flow_notification_errors_total",
            "Flow notifications that could not be decoded.",
            h.errors as f64,
        ),
        Family::single_gauge(
            "packetpath_ovs_flow_monitor_active",
            "1 while the exporter listens to the kernel's flow notifications; 0 means drop counts come from flow dumps alone.",
            if st.monitor.is_some() { 1.0 } else { 0.0 },
        ),
        Family::single_gauge(
            "packetpath_ovs_flows_tracked",
            "Datapath flows whose counts the exporter remembers.",
            st.acct.tracked() as f64,
        ),
        Family::single_counter(
            "packetpath_ovs_flows_untracked_total",
            "Flows not tracked because --collector.ovs_flows.max-flows were already.",
            st.acct.untracked as f64,
        ),
    ]
}

/// The drop totals again, by the VM port the packets were heading to, and the rest.
fn render_vm_ports(a: &Attribution) -> (Family, Family, Family, Family) {
    const L: &[&str] = &["device", "from_role", "reason"];
    let mut packets = Family::counter(
        metrics::VM_PORT_INBOUND_DROP_PACKETS,
        "Packets dropped by datapath flows on their way to this VM port, by the role of the port they came in by and reason.",
        L,
    );
    let mut bytes = Family::counter(
        metrics::VM_PORT_INBOUND_DROP_BYTES,
        "Bytes dropped by datapath flows on their way to this VM port, by the role of the port they came in by and reason.",
        L,
    );
    for ((device, role, reason), (p, b)) in a.totals() {
        let labels = [device.as_str(), role.as_str(), reason.as_str()];
        packets.push(&labels, *p as f64);
        bytes.push(&labels, *b as f64);
    }
    const U: &[&str] = &["from_role", "reason"];
    let mut un_packets = Family::counter(
        metrics::VM_PORT_INBOUND_DROP_UNATTRIBUTED_PACKETS,
        "Packets dropped by datapath flows that no single VM port could be named for, by the role of the port they came in by and reason.",
        U,
    );
    let mut un_bytes = Family::counter(
        metrics::VM_PORT_INBOUND_DROP_UNATTRIBUTED_BYTES,
        "Bytes dropped by datapath flows that no single VM port could be named for, by the role of the port they came in by and reason.",
        U,
    );
    for ((role, reason), (p, b)) in a.unattributed() {
        let labels = [role.as_str(), reason.as_str()];
        un_packets.push(&labels, *p as f64);
        un_bytes.push(&labels, *b as f64);
    }
    (packets, bytes, un_packets, un_bytes)
}

impl Collector for OvsFlows {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        let r = &self.shared.resources;
        scrape
            .ovs()
            .and_then(|view| {
                // Without the OVSDB view drops are counted, and left unattributed.
                let ports = scrape.ovsdb().ok();
                self.collect_with(&view, ports.as_deref().map(Vec::as_slice))
                    .map_err(|e| {
                        // Families that changed since the topology was read (the module was
                        // reloaded) are the likelier story; they are resolved again next time.
                        r.ovs.families.forget();
                        match r.ovs.families.get(r.transport.as_ref()) {
                            Err(absent) => absent,
                            Ok(_) => e,
                        }
                    })
            })
            .inspect_err(|_| {
                // The module may be going away: its group, and so the monitor, with it.
                self.shared.lock().monitor = None;
            })
    }

    fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.worker.join();
    }
}

#[cfg(test)]
#[path = "tests/collector.rs"]
mod tests;
