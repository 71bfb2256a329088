//! The link list from one scrape to the next: a full RTM_GETLINK dump only when something
//! about the links may have changed, otherwise only their counters.
//!
//! A full dump costs the kernel about 5 µs and 1.5 KiB a device: every attribute of every
//! device, its IPv4 and IPv6 settings and statistics among them. At 2,000 devices that is
//! two thirds of a scrape's CPU. What the exporter takes from it besides the counters
//! (name, kind, master, IFLA_LINK, operstate, MTU) changes rarely, and the kernel
//! announces every such change with an RTM_NEWLINK or RTM_DELLINK on the RTNLGRP_LINK
//! multicast group: a new or removed device, a rename, an MTU, a master
//! (NETDEV_CHANGEUPPER), an operstate change of a running device (linkwatch); the
//! operstate the kernel reports for a device that is not running is always `down`.
//!
//! So after a full dump, while nothing arrives on the group, a read asks only for the
//! counters: an RTM_GETSTATS dump of `IFLA_STATS_LINK_64` (Linux 4.7+), the same
//! `rtnl_link_stats64` from the same `dev_get_stats` the full dump carries as
//! `IFLA_STATS64`, 232 bytes a device and a tenth of the kernel's time, put onto the last
//! full dump's links. A full dump is taken instead when:
//!
//! - the transport is not the running kernel (a replay has no notifications);
//! - there is no earlier full dump, or the group could not be joined;
//! - anything arrived on the group since the last read, or the socket overflowed;
//! - the counters list a device the last full dump did not have, or miss one it had (a
//!   device created or removed since the group was last read);
//! - RTM_GETSTATS fails (after a kernel error, it is not asked again).
//!
//! A change announced while a read is under way shows at the next read, as a full dump's
//! reading of one device earlier than another does.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::links::{Link, Stats};
use crate::collectors::CollectError;
use crate::netlink::subscribe::{self, Subscription};
use crate::netlink::wire::{self, DecodeError, Walk};
use crate::netlink::{self, Protocol, Request, Transport};

const FAMILY: &str = "rtnetlink";
const RTNLGRP_LINK: u32 = 1;
const RTM_NEWSTATS: u16 = 92;
const RTM_GETSTATS: u16 = 94;
/// struct if_stats_msg: family, pad1, pad2, ifindex, filter_mask.
const IF_STATS_MSG_LEN: usize = 12;
const IFLA_STATS_LINK_64: u16 = 1;
/// Notification datagrams read per drain at most; more means a storm of changes, and a
/// full dump.
const MAX_DRAIN: usize = 4096;
/// Room for the notifications of one scrape interval: each is only counted, and an
/// overflow is itself a change.
const GROUP_RCVBUF: i32 = 256 * 1024;

/// Joins the link group (a stand-in in unit tests).
type Join = Box<dyn Fn(&dyn Transport) -> Option<Box<dyn Watch>> + Send + Sync>;

/// What a read needs to know about the reads before it.
pub struct LinkCache {
    state: Mutex<State>,
    join: Join,
}

impl Default for LinkCache {
    fn default() -> Self {
        LinkCache {
            state: Mutex::new(State::default()),
            join: Box::new(join_link_group),
        }
    }
}

#[derive(Default)]
struct State {
    /// The link group, joined before the first full dump so no change after it is missed.
    watch: Option<Box<dyn Watch>>,
    /// The last read's links.
    last: Option<Arc<Vec<Link>>>,
    /// The kernel refused RTM_GETSTATS: full dumps only.
    no_stats: bool,
}

/// Announcements of link changes.
pub trait Watch: Send {
    /// Whether anything was announced since the last call (or lost to an overflow);
    /// `None` when the source is broken.
    fn changed(&mut self) -> Option<bool>;
}

/// The RTNLGRP_LINK multicast group of the calling thread's network namespace, through
/// the transport's subscriptions (recorded as `rtnl_link_notifications.stream`).
fn join_link_group(t: &dyn Transport) -> Option<Box<dyn Watch>> {
    let joined = t.subscribe(subscribe::Spec {
        protocol: Protocol::Route,
        name: "rtnl_link_notifications",
        groups: vec![RTNLGRP_LINK],
        rcvbuf: GROUP_RCVBUF,
    });
    match joined {
        Ok(sub) => Some(Box::new(sub)),
        Err(e) => {
            tracing::debug!(error = %e, "cannot join RTNLGRP_LINK; full link dumps only");
            None
        }
    }
}

impl Watch for Subscription {
    fn changed(&mut self) -> Option<bool> {
        let overruns = self.received().overruns;
        // Truncated or not, a message is a change; so is an overflow.
        let mut changed = false;
        self.drain(MAX_DRAIN, &mut |_| changed = true).ok()?;
        Some(changed || self.received().overruns > overruns)
    }
}

impl LinkCache {
    /// This read's links: `full()` when anything may have changed since the last read,
    /// else the last read's links with fresh counters. The last read's links are kept
    /// (shared with whoever still holds them), not copied.
    pub fn read(
        &self,
        t: &dyn Transport,
        full: impl FnOnce() -> Result<Vec<Link>, CollectError>,
    ) -> Result<Arc<Vec<Link>>, CollectError> {
        if !t.live() {
            return full().map(Arc::new);
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.watch.is_none() {
            s.watch = (self.join)(t);
            s.last = None;
        }
        match s.watch.as_mut().map(|w| w.changed()) {
            Some(Some(false)) => {}
            Some(Some(true)) => s.last = None,
            Some(None) | None => (s.watch, s.last) = (None, None),
        }
        if let Some(last) = s.last.take().filter(|_| !s.no_stats) {
            // The last collection has let go of its copy by now: reused, not cloned.
            let mut links = Arc::unwrap_or_clone(last);
            match counters(t, &mut links) {
                Ok(true) => {
                    let links = Arc::new(links);
                    s.last = Some(links.clone());
                    return Ok(links);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "reading link counters failed; a full dump instead");
                    // A kernel without RTM_GETSTATS (before 4.7) answers with an error.
                    s.no_stats = e.is_kernel();
                }
            }
        }
        let links = Arc::new(full()?);
        if s.watch.is_some() && !s.no_stats {
            s.last = Some(links.clone());
        }
        Ok(links)
    }
}

/// Why the counters could not be read.
enum CountersError {
    Transport(netlink::TransportError),
    Decode(DecodeError),
}

impl CountersError {
    /// The kernel answered the request with an error.
    fn is_kernel(&self) -> bool {
        matches!(self, CountersError::Decode(DecodeError::Kernel { .. }))
    }
}

impl std::fmt::Display for CountersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountersError::Transport(e) => e.fmt(f),
            CountersError::Decode(e) => e.fmt(f),
        }
    }
}

pub fn stats_request() -> Request {
    let mut payload = vec![0u8; IF_STATS_MSG_LEN];
    // IFLA_STATS_FILTER_BIT(IFLA_STATS_LINK_64)
    let mask = 1u32 << (IFLA_STATS_LINK_64 - 1);
    if let Some(at) = payload.get_mut(8..12) {
        at.copy_from_slice(&mask.to_ne_bytes());
    }
    Request {
        protocol: Protocol::Route,
        name: "rtnl_getstats",
        scope: None,
        ty: RTM_GETSTATS,
        flags: wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
        payload,
    }
}

/// Puts every device's counters from an RTM_GETSTATS dump onto `links`; false when the
/// dump's devices are not exactly those of `links`.
fn counters(t: &dyn Transport, links: &mut [Link]) -> Result<bool, CountersError> {
    let position: HashMap<i32, usize> = links
        .iter()
        .enumerate()
        .map(|(i, l)| (l.index, i))
        .collect();
    let (mut seen, mut unknown, mut done) = (0usize, false, false);
    let mut failure = None;
    netlink::stream_consistent(t, &stats_request(), &mut |piece| {
        let Some(chunk) = piece else {
            (seen, unknown, done, failure) = (0, false, false, None);
            return true;
        };
        let walked = wire::walk(FAMILY, chunk, &mut |m| {
            if m.ty != RTM_NEWSTATS {
                return Ok(true);
            }
            if let Some((index, stats)) = parse_stats(m.payload)? {
                match position.get(&index).and_then(|&i| links.get_mut(i)) {
                    Some(l) => {
                        l.stats = Some(stats);
                        seen += 1;
                    }
                    None => unknown = true,
                }
            }
            Ok(true)
        });
        match walked {
            Ok(Walk::More) => true,
            Ok(Walk::Done | Walk::Stopped) => {
                done = true;
                false
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .map_err(CountersError::Transport)?;
    if let Some(e) = failure {
        return Err(CountersError::Decode(e));
    }
    if !done {
        return Err(CountersError::Decode(DecodeError::Unterminated {
            family: FAMILY,
        }));
    }
    Ok(!unknown && seen == links.len())
}

/// One RTM_NEWSTATS message: the device's index and its 64-bit counters.
pub fn parse_stats(p: &[u8]) -> Result<Option<(i32, Stats)>, DecodeError> {
    let short = || DecodeError::ShortStruct {
        family: FAMILY,
        what: "if_stats_msg",
        len: p.len(),
        need: IF_STATS_MSG_LEN,
    };
    let index = wire::read_u32_ne(p, 4).ok_or_else(short)? as i32;
    let rest = p.get(IF_STATS_MSG_LEN..).ok_or_else(short)?;
    for a in wire::attrs(FAMILY, "if_stats_msg", rest) {
        let a = a?;
        if a.ty == IFLA_STATS_LINK_64 {
            return Ok(Some((index, Stats::decode(a.payload, 8))));
        }
    }
    // Not counted: a device without the counters asked for makes the read a full dump.
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::common::links as interfaces;
    use crate::netlink::{StreamEnd, TransportError};
    use std::collections::VecDeque;

    fn stats(rx_packets: u64) -> Vec<u8> {
        let mut s = vec![0u8; 24 * 8];
        s[..8].copy_from_slice(&rx_packets.to_ne_bytes());
        s
    }

    fn link_msg(index: u32, name: &str, rx: u64) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&index.to_ne_bytes());
        wire::push_attr(&mut p, 3, format!("{name}\0").as_bytes()); // IFLA_IFNAME
        wire::push_attr(&mut p, 23, &stats(rx)); // IFLA_STATS64
        wire::request(16, wire::NLM_F_MULTI, 1, &p)
    }

    fn stats_msg(index: u32, rx: u64) -> Vec<u8> {
        let mut p = vec![0u8; IF_STATS_MSG_LEN];
        p[4..8].copy_from_slice(&index.to_ne_bytes());
        wire::push_attr(&mut p, IFLA_STATS_LINK_64, &stats(rx));
        wire::request(RTM_NEWSTATS, wire::NLM_F_MULTI, 1, &p)
    }

    fn done() -> Vec<u8> {
        wire::request(wire::NLMSG_DONE, wire::NLM_F_MULTI, 1, &[0; 4])
    }

    /// A running kernel with devices (index, name, rx_packets) whose counters go up by
    /// one at every request; it notes the requests.
    #[derive(Default)]
    struct Kernel {
        devices: Mutex<Vec<(u32, &'static str, u64)>>,
        /// RTM_GETSTATS is answered with this errno.
        refuse: Option<i32>,
        /// Names of the requests, in order.
        asked: Mutex<Vec<&'static str>>,
    }

    impl Transport for Kernel {
        fn live(&self) -> bool {
            true
        }

        fn stream(
            &self,
            req: &Request,
            sink: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Result<StreamEnd, TransportError> {
            self.asked.lock().unwrap().push(req.name);
            let mut devices = self.devices.lock().unwrap();
            for d in devices.iter_mut() {
                d.2 += 1;
            }
            let mut reply: Vec<u8> = Vec::new();
            if let (Some(errno), "rtnl_getstats") = (self.refuse, req.name) {
                let mut p = (-errno).to_ne_bytes().to_vec();
                p.extend_from_slice(&[0; 16]);
                reply = wire::request(wire::NLMSG_ERROR, 0, 1, &p);
            } else {
                for &(i, name, rx) in devices.iter() {
                    reply.extend(match req.name {
                        "rtnl_getstats" => stats_msg(i, rx),
                        _ => link_msg(i, name, rx),
                    });
                }
                reply.extend(done());
            }
            sink(&reply);
            Ok(StreamEnd::default())
        }
    }

    impl Kernel {
        fn with(devices: &[(u32, &'static str)]) -> Kernel {
            Kernel {
                devices: Mutex::new(devices.iter().map(|&(i, n)| (i, n, 0)).collect()),
                ..Kernel::default()
            }
        }

        /// The requests since the last call.
        fn asked(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.asked.lock().unwrap())
        }
    }

    /// What the link group answers, in order: Some(changed), or None for a broken one.
    type Answers = Arc<Mutex<VecDeque<Option<bool>>>>;

    struct Script(Answers);

    impl Watch for Script {
        fn changed(&mut self) -> Option<bool> {
            self.0.lock().unwrap().pop_front().unwrap_or(Some(false))
        }
    }

    fn scripted() -> (LinkCache, Answers, Arc<Mutex<usize>>) {
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let joins = Arc::new(Mutex::new(0));
        let (s, j) = (script.clone(), joins.clone());
        let cache = LinkCache {
            state: Mutex::new(State::default()),
            join: Box::new(move |_| {
                *j.lock().unwrap() += 1;
                Some(Box::new(Script(s.clone())) as Box<dyn Watch>)
            }),
        };
        (cache, script, joins)
    }

    fn read(cache: &LinkCache, k: &Kernel) -> Vec<(i32, String, u64)> {
        let full = || {
            let buf = k.exchange(&interfaces::request()).unwrap();
            interfaces::parse(&buf).map_err(|e| CollectError::new(e.to_string()))
        };
        cache
            .read(k, full)
            .unwrap()
            .iter()
            .map(|l| (l.index, l.name.clone(), l.stats.unwrap().rx_packets))
            .collect()
    }

    #[test]
    fn counters_alone_while_the_links_hold_still() {
        let k = Kernel::with(&[(1, "lo"), (2, "tap0")]);
        let (cache, script, joins) = scripted();
        let want = |rx: u64| vec![(1, "lo".to_owned(), rx), (2, "tap0".to_owned(), rx)];
        assert_eq!(read(&cache, &k), want(1));
        assert_eq!(k.asked(), ["rtnl_getlink"], "the first read is a full dump");
        assert_eq!(read(&cache, &k), want(2));
        assert_eq!(read(&cache, &k), want(3));
        assert_eq!(k.asked(), ["rtnl_getstats", "rtnl_getstats"]);

        // Anything on the group: a full dump, then counters again.
        script.lock().unwrap().push_back(Some(true));
        k.devices.lock().unwrap()[1].1 = "tap1";
        assert_eq!(read(&cache, &k)[1], (2, "tap1".to_owned(), 4));
        assert_eq!(read(&cache, &k)[1], (2, "tap1".to_owned(), 5));
        assert_eq!(k.asked(), ["rtnl_getlink", "rtnl_getstats"]);

        // A device the group has not told about yet, then one gone: full dumps.
        k.devices.lock().unwrap().push((3, "tap2", 0));
        assert_eq!(read(&cache, &k).len(), 3);
        assert_eq!(k.asked(), ["rtnl_getstats", "rtnl_getlink"]);
        k.devices.lock().unwrap().remove(0);
        assert_eq!(read(&cache, &k).len(), 2);
        assert_eq!(k.asked(), ["rtnl_getstats", "rtnl_getlink"]);

        // A broken group: a full dump, and the group is joined again at the next read.
        script.lock().unwrap().push_back(None);
        read(&cache, &k);
        assert_eq!(k.asked(), ["rtnl_getlink"]);
        assert_eq!(*joins.lock().unwrap(), 1);
        read(&cache, &k);
        read(&cache, &k);
        assert_eq!(*joins.lock().unwrap(), 2);
        assert_eq!(k.asked(), ["rtnl_getlink", "rtnl_getstats"]);
    }

    #[test]
    fn a_kernel_without_rtm_getstats_gets_full_dumps() {
        let k = Kernel {
            refuse: Some(libc::EOPNOTSUPP),
            ..Kernel::with(&[(1, "lo")])
        };
        let (cache, _, _) = scripted();
        for _ in 0..3 {
            assert_eq!(read(&cache, &k)[0].1, "lo");
        }
        // Refused once, never asked again.
        assert_eq!(
            k.asked(),
            [
                "rtnl_getlink",
                "rtnl_getstats",
                "rtnl_getlink",
                "rtnl_getlink"
            ]
        );
    }

    #[test]
    fn a_replay_is_always_read_in_full() {
        struct Replay(Kernel);
        impl Transport for Replay {
            fn stream(
                &self,
                req: &Request,
                sink: &mut dyn FnMut(&[u8]) -> bool,
            ) -> Result<StreamEnd, TransportError> {
                self.0.stream(req, sink)
            }
        }
        let r = Replay(Kernel::with(&[(1, "lo")]));
        let (cache, _, joins) = scripted();
        for _ in 0..3 {
            cache.read(&r, || Ok(vec![])).unwrap();
        }
        assert_eq!(*joins.lock().unwrap(), 0, "no group to join");
        assert!(r.0.asked().is_empty());
    }
}
