//! The kernel drop monitor's messages (generic netlink family `NET_DM`,
//! include/uapi/linux/net_dropmon.h), decoded: packet alerts (one per dropped packet, with
//! the device it last arrived on, the kernel's reason — a string, Linux 5.18+ — or, before
//! reasons existed, the function that dropped it, and the first bytes of the frame), the
//! statistics reply (reports the kernel could not queue) and the configuration reply; and
//! the attributes of the requests that configure it. Pure, no I/O.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use crate::netlink::genl;
use crate::netlink::wire::{self, DecodeError};

pub const FAMILY: &str = "NET_DM";

/// The multicast group alerts are sent to.
pub const GROUP: &str = "events";

pub const NET_DM_CMD_CONFIG: u8 = 2;
pub const NET_DM_CMD_START: u8 = 3;
pub const NET_DM_CMD_STOP: u8 = 4;
pub const NET_DM_CMD_PACKET_ALERT: u8 = 5;
pub const NET_DM_CMD_CONFIG_GET: u8 = 6;
pub const NET_DM_CMD_CONFIG_NEW: u8 = 7;
pub const NET_DM_CMD_STATS_GET: u8 = 8;
pub const NET_DM_CMD_STATS_NEW: u8 = 9;

pub const NET_DM_ATTR_ALERT_MODE: u16 = 1;
pub const NET_DM_ATTR_SYMBOL: u16 = 3;
pub const NET_DM_ATTR_IN_PORT: u16 = 4;
pub const NET_DM_ATTR_PAYLOAD: u16 = 7;
pub const NET_DM_ATTR_TRUNC_LEN: u16 = 9;
pub const NET_DM_ATTR_ORIG_LEN: u16 = 10;
pub const NET_DM_ATTR_QUEUE_LEN: u16 = 11;
pub const NET_DM_ATTR_STATS: u16 = 12;
pub const NET_DM_ATTR_HW_STATS: u16 = 13;
pub const NET_DM_ATTR_ORIGIN: u16 = 14;
pub const NET_DM_ATTR_HW_TRAP_NAME: u16 = 16;
pub const NET_DM_ATTR_SW_DROPS: u16 = 20;
pub const NET_DM_ATTR_HW_DROPS: u16 = 21;
/// Drop reasons, Linux 5.18+: a family whose highest attribute is lower has none.
pub const NET_DM_ATTR_REASON: u16 = 23;

/// In the STATS and HW_STATS nests: reports dropped for want of queue room (u64).
pub const NET_DM_ATTR_STATS_DROPPED: u16 = 0;

/// `enum net_dm_alert_mode`: one message per dropped packet.
pub const NET_DM_ALERT_MODE_PACKET: u8 = 1;

pub const NET_DM_ATTR_PORT_NETDEV_IFINDEX: u16 = 0;
pub const NET_DM_ATTR_PORT_NETDEV_NAME: u16 = 1;

pub const NET_DM_ORIGIN_SW: u16 = 0;
pub const NET_DM_ORIGIN_HW: u16 = 1;

/// Where the drop happened: the kernel's software path, or a device's hardware (a
/// driver that reports its traps through the monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Software,
    Hardware,
}

/// Why the packet was dropped, as the kernel says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The drop reason (`FULL_RING`, `OVS_DROP_EXPLICIT`, …), Linux 5.18+.
    Reason(String),
    /// Before drop reasons: the kernel function that freed the packet
    /// (`tun_net_xmit+0x1f4/0x5a0`, offset dropped).
    Function(String),
    /// A hardware trap's name.
    Trap(String),
    /// Nothing said.
    Unknown,
}

/// One dropped packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub origin: Origin,
    pub ifindex: Option<u32>,
    pub device: Option<String>,
    pub cause: Cause,
    /// The packet's length before truncation.
    pub orig_len: Option<u32>,
    /// The frame's Ethernet destination, the first six bytes of the payload.
    pub dst: Option<[u8; 6]>,
}

/// A message of the family, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Alert(Alert),
    /// Reports dropped in the kernel for want of queue room, software and hardware,
    /// since the module loaded.
    Stats {
        software: u64,
        hardware: u64,
    },
    /// The monitor's configuration (shared by whoever runs it).
    Config(Config),
    Other,
    /// A message of the family that could not be decoded.
    Undecodable,
}

/// What CONFIG sets and CONFIG_GET reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    pub mode: u8,
    pub trunc_len: u32,
    pub queue_len: u32,
}

impl Config {
    /// The attributes of a CONFIG request that sets all three.
    pub fn attrs(&self) -> Vec<u8> {
        let mut a = Vec::new();
        wire::push_attr(&mut a, NET_DM_ATTR_ALERT_MODE, &[self.mode]);
        wire::push_attr(&mut a, NET_DM_ATTR_TRUNC_LEN, &self.trunc_len.to_ne_bytes());
        wire::push_attr(&mut a, NET_DM_ATTR_QUEUE_LEN, &self.queue_len.to_ne_bytes());
        a
    }
}

/// Decodes one generic netlink message of the family.
pub fn parse(payload: &[u8]) -> Result<Message, DecodeError> {
    let (cmd, attrs) = genl::split(FAMILY, payload)?;
    match cmd {
        NET_DM_CMD_PACKET_ALERT => Ok(parse_alert(payload)?.map_or(Message::Other, Message::Alert)),
        NET_DM_CMD_STATS_NEW => {
            let (mut software, mut hardware) = (0, 0);
            for a in wire::attrs(FAMILY, "NET_DM_ATTR", attrs) {
                let a = a?;
                let slot = match a.ty {
                    NET_DM_ATTR_STATS => &mut software,
                    NET_DM_ATTR_HW_STATS => &mut hardware,
                    _ => continue,
                };
                for s in wire::attrs(FAMILY, "NET_DM_ATTR_STATS", a.payload) {
                    let s = s?;
                    if s.ty == NET_DM_ATTR_STATS_DROPPED {
                        *slot = u64::from_ne_bytes(s.exact(FAMILY, "NET_DM_ATTR_STATS_DROPPED")?);
                    }
                }
            }
            Ok(Message::Stats { software, hardware })
        }
        NET_DM_CMD_CONFIG_NEW => {
            let mut c = Config::default();
            for a in wire::attrs(FAMILY, "NET_DM_ATTR", attrs) {
                let a = a?;
                match a.ty {
                    NET_DM_ATTR_ALERT_MODE => c.mode = a.u8(FAMILY, "NET_DM_ATTR_ALERT_MODE")?,
                    NET_DM_ATTR_TRUNC_LEN => {
                        c.trunc_len = a.u32_ne(FAMILY, "NET_DM_ATTR_TRUNC_LEN")?
                    }
                    NET_DM_ATTR_QUEUE_LEN => {
                        c.queue_len = a.u32_ne(FAMILY, "NET_DM_ATTR_QUEUE_LEN")?
                    }
                    _ => {}
                }
            }
            Ok(Message::Config(c))
        }
        _ => Ok(Message::Other),
    }
}

/// The function name of a `symbol+0xoff/0xlen` string.
fn function(symbol: &str) -> &str {
    symbol.split('+').next().unwrap_or(symbol)
}

/// Decodes one generic netlink message of the family; `None` for other commands.
pub fn parse_alert(payload: &[u8]) -> Result<Option<Alert>, DecodeError> {
    let (cmd, attrs) = genl::split(FAMILY, payload)?;
    if cmd != NET_DM_CMD_PACKET_ALERT {
        return Ok(None);
    }
    let mut alert = Alert {
        origin: Origin::Software,
        ifindex: None,
        device: None,
        cause: Cause::Unknown,
        orig_len: None,
        dst: None,
    };
    let (mut reason, mut symbol, mut trap) = (None, None, None);
    for a in wire::attrs(FAMILY, "NET_DM_ATTR", attrs) {
        let a = a?;
        match a.ty {
            NET_DM_ATTR_ORIGIN => {
                alert.origin = match a.u16_ne(FAMILY, "NET_DM_ATTR_ORIGIN")? {
                    NET_DM_ORIGIN_HW => Origin::Hardware,
                    _ => Origin::Software,
                }
            }
            NET_DM_ATTR_IN_PORT => {
                for p in wire::attrs(FAMILY, "NET_DM_ATTR_PORT", a.payload) {
                    let p = p?;
                    match p.ty {
                        NET_DM_ATTR_PORT_NETDEV_IFINDEX => {
                            alert.ifindex =
                                Some(p.u32_ne(FAMILY, "NET_DM_ATTR_PORT_NETDEV_IFINDEX")?)
                        }
                        NET_DM_ATTR_PORT_NETDEV_NAME => alert.device = Some(p.name()),
                        _ => {}
                    }
                }
            }
            NET_DM_ATTR_REASON => reason = Some(a.string(FAMILY, "NET_DM_ATTR_REASON")?),
            NET_DM_ATTR_SYMBOL => symbol = Some(a.string(FAMILY, "NET_DM_ATTR_SYMBOL")?),
            NET_DM_ATTR_HW_TRAP_NAME => trap = Some(a.string(FAMILY, "NET_DM_ATTR_HW_TRAP_NAME")?),
            NET_DM_ATTR_ORIG_LEN => {
                alert.orig_len = Some(a.u32_ne(FAMILY, "NET_DM_ATTR_ORIG_LEN")?)
            }
            NET_DM_ATTR_PAYLOAD => {
                alert.dst = a.payload.get(..6).and_then(|d| <[u8; 6]>::try_from(d).ok())
            }
            // PC, timestamp, protocol, flow action cookies.
            _ => {}
        }
    }
    alert.cause = match (reason, trap, symbol) {
        (Some(r), _, _) if !r.is_empty() => Cause::Reason(r.to_owned()),
        (_, Some(t), _) if !t.is_empty() => Cause::Trap(t.to_owned()),
        (_, _, Some(s)) if !s.is_empty() => Cause::Function(function(s).to_owned()),
        _ => Cause::Unknown,
    };
    Ok(Some(alert))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        wire::push_attr(&mut a, ty, payload);
        a
    }

    fn alert(cmd: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![cmd, 2, 0, 0];
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    fn port(ifindex: u32, name: &str) -> Vec<u8> {
        [
            attr(NET_DM_ATTR_PORT_NETDEV_IFINDEX, &ifindex.to_ne_bytes()),
            attr(NET_DM_ATTR_PORT_NETDEV_NAME, format!("{name}\0").as_bytes()),
        ]
        .concat()
    }

    #[test]
    fn a_software_drop_with_its_reason_and_device() {
        let m = alert(
            NET_DM_CMD_PACKET_ALERT,
            &[
                attr(NET_DM_ATTR_SYMBOL, b"tun_net_xmit+0x1f4/0x5a0\0"),
                attr(NET_DM_ATTR_IN_PORT, &port(7, "tap0")),
                attr(NET_DM_ATTR_ORIG_LEN, &54u32.to_ne_bytes()),
                attr(NET_DM_ATTR_ORIGIN, &NET_DM_ORIGIN_SW.to_ne_bytes()),
                attr(NET_DM_ATTR_REASON, b"FULL_RING\0"),
                attr(NET_DM_ATTR_PAYLOAD, &[0xfa, 0x16, 0x3e, 0, 0, 1, 0xaa]),
            ],
        );
        assert_eq!(
            parse_alert(&m).unwrap(),
            Some(Alert {
                origin: Origin::Software,
                ifindex: Some(7),
                device: Some("tap0".into()),
                cause: Cause::Reason("FULL_RING".into()),
                orig_len: Some(54),
                dst: Some([0xfa, 0x16, 0x3e, 0, 0, 1]),
            })
        );
    }

    #[test]
    fn before_reasons_the_function_stands_in_and_hardware_is_said_apart() {
        // Linux 5.10: no NET_DM_ATTR_REASON.
        let m = alert(
            NET_DM_CMD_PACKET_ALERT,
            &[attr(NET_DM_ATTR_SYMBOL, b"nf_hook_slow+0x96/0xc0\0")],
        );
        let a = parse_alert(&m).unwrap().unwrap();
        assert_eq!(a.cause, Cause::Function("nf_hook_slow".into()));
        assert_eq!((a.ifindex, a.device), (None, None));
        let m = alert(
            NET_DM_CMD_PACKET_ALERT,
            &[
                attr(NET_DM_ATTR_ORIGIN, &NET_DM_ORIGIN_HW.to_ne_bytes()),
                attr(NET_DM_ATTR_HW_TRAP_NAME, b"ingress_vlan_filter\0"),
            ],
        );
        let a = parse_alert(&m).unwrap().unwrap();
        assert_eq!(
            (a.origin, a.cause),
            (Origin::Hardware, Cause::Trap("ingress_vlan_filter".into()))
        );
    }

    fn stats(sw: u64, hw: u64) -> Vec<u8> {
        alert(
            NET_DM_CMD_STATS_NEW,
            &[
                attr(
                    NET_DM_ATTR_STATS,
                    &attr(NET_DM_ATTR_STATS_DROPPED, &sw.to_ne_bytes()),
                ),
                attr(
                    NET_DM_ATTR_HW_STATS,
                    &attr(NET_DM_ATTR_STATS_DROPPED, &hw.to_ne_bytes()),
                ),
            ],
        )
    }

    #[test]
    fn statistics_and_configuration_replies() {
        assert_eq!(
            parse(&stats(12, 3)).unwrap(),
            Message::Stats {
                software: 12,
                hardware: 3
            }
        );
        let c = Config {
            mode: NET_DM_ALERT_MODE_PACKET,
            trunc_len: 6,
            queue_len: 1000,
        };
        let mut m = vec![NET_DM_CMD_CONFIG_NEW, 2, 0, 0];
        m.extend(c.attrs());
        assert_eq!(parse(&m).unwrap(), Message::Config(c));
        // A short payload (a frame cut before six bytes) gives no destination.
        let m = alert(
            NET_DM_CMD_PACKET_ALERT,
            &[attr(NET_DM_ATTR_PAYLOAD, &[1, 2])],
        );
        assert_eq!(parse_alert(&m).unwrap().unwrap().dst, None);
        // A counter of the wrong size names its attribute.
        let m = alert(
            NET_DM_CMD_STATS_NEW,
            &[attr(
                NET_DM_ATTR_STATS,
                &attr(NET_DM_ATTR_STATS_DROPPED, &[1, 2, 3, 4]),
            )],
        );
        let e = parse(&m).unwrap_err().to_string();
        assert!(e.contains("NET_DM_ATTR_STATS_DROPPED"), "{e}");
        assert_eq!(
            parse(&alert(NET_DM_CMD_START, &[])).unwrap(),
            Message::Other
        );
    }

    #[test]
    fn other_commands_unknown_attributes_and_bad_sizes() {
        assert_eq!(parse_alert(&alert(1, &[])).unwrap(), None);
        // Unknown attributes are ignored.
        let m = alert(NET_DM_CMD_PACKET_ALERT, &[attr(99, b"x")]);
        assert_eq!(parse_alert(&m).unwrap().unwrap().cause, Cause::Unknown);
        // A wrong size names the attribute.
        let m = alert(
            NET_DM_CMD_PACKET_ALERT,
            &[attr(NET_DM_ATTR_ORIGIN, &[1, 0, 0])],
        );
        let e = parse_alert(&m).unwrap_err().to_string();
        assert!(e.contains("NET_DM_ATTR_ORIGIN"), "{e}");
        // Shorter than genlmsghdr.
        assert!(parse_alert(&[5, 2]).is_err());
        // A truncated attribute is an error, not a panic.
        let mut m = alert(
            NET_DM_CMD_PACKET_ALERT,
            &[attr(NET_DM_ATTR_REASON, b"FULL_RING\0")],
        );
        m.truncate(m.len() - 3);
        assert!(parse_alert(&m).is_err());
    }
}
