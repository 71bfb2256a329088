//! `interfaces`: per-device counters from the scrape's link list (one rtnetlink
//! RTM_GETLINK dump, `common::links`).
//!
//! Direction follows the kernel's view of each device: for a VM's TAP, *transmit* is
//! host → VM (delivery to the guest) and *receive* is what the guest sent.

use std::collections::HashMap;
use std::sync::Arc;

use super::common::links::{COUNTERS, Link, operstate_name};
use super::common::{Devices, Scrape};
use super::{CollectError, Collector, Spec};
use crate::render::Family;

pub const SPEC: Spec = Spec {
    name: "interfaces",
    help: "Per-interface packet, byte, error and drop counters with tunnel/vm/ovs roles (rtnetlink).",
    default_enabled: true,
    args: Vec::new,
    build: |_, r| {
        Ok(Arc::new(Interfaces {
            devices: r.devices.clone(),
        }))
    },
};

pub fn render(links: &[Link], devices: &Devices) -> Vec<Family> {
    const DR: &[&str] = &["device", "role"];
    let mut families: Vec<Family> = COUNTERS
        .iter()
        .map(|c| Family::counter(c.name, c.help, DR))
        .collect();
    let mut info = Family::gauge(
        "packetpath_interface_info",
        "Interface context: role in the packet path, link kind, master device and operational state.",
        &["device", "role", "kind", "master", "operstate"],
    );
    let mut mtu = Family::gauge(
        "packetpath_interface_mtu_bytes",
        "Interface MTU in bytes.",
        &["device"],
    );

    let names: HashMap<u32, &str> = links
        .iter()
        .map(|l| (l.index as u32, l.name.as_str()))
        .collect();
    for l in links.iter().filter(|l| devices.wants(&l.name)) {
        let role = devices.role(&l.name, l.kind.as_deref()).as_str();
        let master = l.master.and_then(|m| names.get(&m).copied()).unwrap_or("");
        info.push(
            &[
                &l.name,
                role,
                l.kind.as_deref().unwrap_or(""),
                master,
                operstate_name(l.operstate),
            ],
            1.0,
        );
        if let Some(v) = l.mtu {
            mtu.push(&[&l.name], f64::from(v));
        }
        if let Some(s) = &l.stats {
            for (fam, c) in families.iter_mut().zip(COUNTERS) {
                fam.push(&[&l.name, role], (c.get)(s) as f64);
            }
        }
    }
    families.push(info);
    families.push(mtu);
    families
}

pub struct Interfaces {
    devices: Devices,
}

impl Collector for Interfaces {
    fn collect(&self, scrape: &Scrape) -> Result<Vec<Family>, CollectError> {
        Ok(render(&scrape.links()?, &self.devices))
    }
}
