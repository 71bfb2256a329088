//! The nfnetlink_log configuration protocol: bind NFLOG group 0 to our socket and set
//! how much of each packet the kernel copies. Requests go through the subscription, with
//! sequence numbers it assigns and a timeout on every acknowledgement.
//!
//! No batching is configured, because none applies: conntrack logs with no log info of
//! its own, and nfnetlink_log's default for that case has a queue threshold of 1, which
//! overrides the instance's (`nfulnl_log_packet`: the lower of the two wins). Every
//! conntrack-invalid message therefore leaves in a datagram of its own, whatever
//! NFULA_CFG_QTHRESH and NFULA_CFG_TIMEOUT say. NFULA_CFG_NLBUFSIZ still sizes the buffer
//! the kernel allocates for each such datagram, in softirq, before trimming it to the one
//! message: the default (at most 8 KiB) is the cheapest, so it is left alone. The
//! listener batches on its side instead (see `GATHER`).

use std::time::Duration;

pub use super::record::NFNL_SUBSYS_ULOG;
use crate::netlink::subscribe::{AckError, Subscription};
use crate::netlink::wire;

pub const NFULNL_MSG_CONFIG: u16 = 1;

pub const NFULA_CFG_CMD: u16 = 1;
pub const NFULA_CFG_MODE: u16 = 2;
pub const NFULA_CFG_FLAGS: u16 = 6;
pub const NFULNL_CFG_CMD_BIND: u8 = 1;
pub const NFULNL_COPY_PACKET: u8 = 2;
pub const NFULNL_CFG_F_SEQ: u16 = 0x0001;
pub const NFULNL_CFG_F_CONNTRACK: u16 = 0x0004;
/// Enough of each packet for an IPv6 header and a full TCP header.
const COPY_RANGE: u32 = 128;

fn config_msg(family: u8, group: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut payload = vec![family, 0];
    payload.extend_from_slice(&group.to_be_bytes());
    for (ty, data) in attrs {
        wire::push_attr(&mut payload, *ty, data);
    }
    payload
}

/// Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff in /proc/self/status).
fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Why NFLOG group 0 could not be made ours and set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("NFLOG group 0 is already bound by another process (ulogd?); not taking it")]
    Taken,
    #[error("binding NFLOG group 0 needs CAP_NET_ADMIN")]
    NeedsNetAdmin,
    #[error("binding NFLOG group 0: {0} (is nfnetlink_log built or loaded?)")]
    Bind(AckError),
    #[error("configuring NFLOG group 0: {0}")]
    Configure(AckError),
}

/// How long the kernel gets to acknowledge a configuration request.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends one NFULNL_MSG_CONFIG for group 0 and waits for the kernel's acknowledgement.
fn configure(sub: &mut Subscription, attrs: &[(u16, Vec<u8>)]) -> Result<(), AckError> {
    let ty = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    // Nothing is logged to the group before it is configured; whatever else arrives
    // meanwhile is not ours to count.
    sub.request(ty, 0, &config_msg(0, 0, attrs), ACK_TIMEOUT, &mut |_| {})
}

/// Binds NFLOG group 0 to the subscription's socket and sets its copy mode, sequence
/// numbers and, where the kernel has it, the packet's conntrack entry (NFULA_CT, for its
/// zone). Returns whether the messages carry the entry.
pub fn bind_group(sub: &mut Subscription) -> Result<bool, BindError> {
    // No PF_BIND: it would make nfnetlink_log the logger for the family before the group
    // is ours (and even when it is not); the nf_log sysctls do that, recorded.
    match configure(sub, &[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])]) {
        Ok(()) => {}
        // nfnetlink_log answers EPERM both without CAP_NET_ADMIN and when another socket
        // owns the group; the capability set tells the two apart.
        Err(AckError::Errno(libc::EBUSY)) => return Err(BindError::Taken),
        Err(AckError::Errno(libc::EPERM)) if has_net_admin() => return Err(BindError::Taken),
        Err(AckError::Errno(libc::EPERM)) => return Err(BindError::NeedsNetAdmin),
        Err(e) => return Err(BindError::Bind(e)),
    }
    let mut mode = COPY_RANGE.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    let with_flags = |flags: u16| {
        [
            (NFULA_CFG_MODE, mode.clone()),
            (NFULA_CFG_FLAGS, flags.to_be_bytes().to_vec()),
        ]
    };
    // NFULNL_CFG_F_CONNTRACK needs nfnetlink_log's conntrack hook, which
    // nf_conntrack_netlink provides on kernels built with CONFIG_NETFILTER_NETLINK_GLUE_CT.
    // EAGAIN: the kernel just loaded the module, ask again; EOPNOTSUPP: no hook, and the
    // request changed nothing, so the group is set up without it.
    for _ in 0..2 {
        match configure(sub, &with_flags(NFULNL_CFG_F_SEQ | NFULNL_CFG_F_CONNTRACK)) {
            Ok(()) => return Ok(true),
            Err(AckError::Errno(libc::EAGAIN)) => continue,
            Err(AckError::Errno(libc::EOPNOTSUPP)) => break,
            Err(e) => return Err(BindError::Configure(e)),
        }
    }
    configure(sub, &with_flags(NFULNL_CFG_F_SEQ)).map_err(BindError::Configure)?;
    Ok(false)
}
