use super::counts::*;
use super::record::*;
use super::settings::*;
use crate::netlink::wire;
use std::path::Path;
use std::sync::atomic::Ordering;

#[test]
fn reasons_from_kernel_texts() {
    assert_eq!(
        reason_of("nf_ct_proto_6: bad checksum "),
        Reason::BadChecksum
    );
    assert_eq!(
        reason_of("nf_ct_proto_17: bad checksum "),
        Reason::BadChecksum
    );
    assert_eq!(
        reason_of("nf_ct_proto_6: SEQ is over the upper bound (over the window of the receiver)"),
        Reason::OutOfWindow
    );
    assert_eq!(
        reason_of("nf_ct_proto_6: ACK is under the lower bound (possible overly delayed ACK)"),
        Reason::OutOfWindow
    );
    assert_eq!(
        reason_of("nf_ct_proto_6: invalid tcp flag combination "),
        Reason::InvalidFlags
    );
    assert_eq!(
        reason_of("nf_ct_proto_6: truncated packet "),
        Reason::Truncated
    );
    assert_eq!(
        reason_of("nf_ct_proto_6: invalid state "),
        Reason::InvalidState
    );
    assert_eq!(reason_of("nf_ct_proto_1: something new "), Reason::Other);
    // Matched without regard to ASCII case or surrounding blanks; no ": " means all of it.
    assert_eq!(reason_of("nf_ct_tcp:   Seq Is under "), Reason::OutOfWindow);
    assert_eq!(reason_of("BAD CHECKSUM"), Reason::BadChecksum);
    assert_eq!(reason_of("nf_ct_proto_6: seq"), Reason::Other);
    assert_eq!(reason_of(": "), Reason::Other);
    assert_eq!(reason_of(""), Reason::Other);
}

#[test]
fn tcp_flag_classes() {
    assert_eq!(flags_of(0x02), TcpFlags::Syn);
    assert_eq!(flags_of(0x12), TcpFlags::SynAck);
    assert_eq!(flags_of(0x11), TcpFlags::Fin);
    assert_eq!(flags_of(0x04), TcpFlags::Rst);
    assert_eq!(flags_of(0x14), TcpFlags::Rst);
    assert_eq!(flags_of(0x18), TcpFlags::Ack);
    assert_eq!(flags_of(0x07), TcpFlags::Other);
    assert_eq!(flags_of(0x00), TcpFlags::Other);
}

#[test]
fn frame_sizes() {
    // The seed's FIN/ACK: 20 + 20 bytes of IP and TCP, a 54-byte frame.
    assert_eq!(size_of_frame(40), SizeClass::Lt60);
    assert_eq!(size_of_frame(46), SizeClass::S60to127);
    assert_eq!(size_of_frame(113), SizeClass::S60to127);
    assert_eq!(size_of_frame(114), SizeClass::S128to1023);
    assert_eq!(size_of_frame(1500), SizeClass::Ge1024);
}

fn packet_msg(family: u8, prefix: &[u8], payload: &[u8], seq: u32) -> Vec<u8> {
    let mut p = vec![family, 0, 0, 0];
    wire::push_attr(&mut p, NFULA_PREFIX, prefix);
    wire::push_attr(&mut p, NFULA_IFINDEX_INDEV, &7u32.to_be_bytes());
    wire::push_attr(&mut p, NFULA_SEQ, &seq.to_be_bytes());
    wire::push_attr(&mut p, NFULA_PAYLOAD, payload);
    let mut m = wire::request(NFNL_SUBSYS_ULOG << 8, 0, 0, &p);
    m[..4].copy_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
    m
}

fn finack_v4() -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    let mut tcp = vec![0u8; 20];
    tcp[12] = 5 << 4;
    tcp[13] = 0x11;
    ip.extend(tcp);
    ip
}

/// An IPv6 packet: fixed header with `first` as Next Header, then `rest`.
fn v6(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend((rest.len() as u16).to_be_bytes());
    ip.extend([first, 64]);
    ip.extend([0u8; 32]);
    ip.extend(rest);
    ip
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport() {
    let mut fin_ack = vec![0u8; 20];
    fin_ack[12] = 5 << 4;
    fin_ack[13] = 0x11;
    let ext = |next: u8, len8: u8| -> Vec<u8> {
        let mut h = vec![next, len8];
        h.resize((usize::from(len8) + 1) * 8, 0);
        h
    };
    let frag = |next: u8, offset: u16| -> Vec<u8> {
        let mut h = vec![next, 0];
        h.extend((offset << 3).to_be_bytes());
        h.extend([0, 0, 0, 1]);
        h
    };
    let ah = [vec![6, 4], vec![0; 22]].concat(); // (4 + 2) * 4 bytes
    let cases: Vec<(&str, Vec<u8>, Proto, TcpFlags)> = vec![
        ("no extension", v6(6, &fin_ack), Proto::Tcp, TcpFlags::Fin),
        (
            "hop-by-hop, destination options",
            v6(0, &[ext(60, 0), ext(6, 1), fin_ack.clone()].concat()),
            Proto::Tcp,
            TcpFlags::Fin,
        ),
        (
            "routing, first fragment",
            v6(43, &[ext(44, 0), frag(6, 0), fin_ack.clone()].concat()),
            Proto::Tcp,
            TcpFlags::Fin,
        ),
        (
            "AH",
            v6(51, &[ah, fin_ack.clone()].concat()),
            Proto::Tcp,
            TcpFlags::Fin,
        ),
        (
            "later fragment: no TCP header in it",
            v6(44, &[frag(6, 185), vec![0xff; 16]].concat()),
            Proto::Tcp,
            TcpFlags::Other,
        ),
        (
            "cut inside an extension",
            v6(60, &[60, 2, 0, 0]),
            Proto::Other,
            TcpFlags::None,
        ),
        (
            "ICMPv6 after hop-by-hop",
            v6(0, &[ext(58, 0), vec![128, 0, 0, 0]].concat()),
            Proto::Icmpv6,
            TcpFlags::None,
        ),
    ];
    for (what, packet, proto, flags) in cases {
        let m = packet_msg(10, b"nf_ct_proto_6: bad checksum \0", &packet, 1);
        let msg = wire::messages(FAMILY, &m).next().unwrap().unwrap();
        let r = parse_record(&msg).unwrap().unwrap();
        assert_eq!(
            (r.family, r.proto, r.flags),
            (IpFamily::V6, proto, flags),
            "{what}"
        );
    }
}

#[test]
fn classifies_a_seed_finack_and_counts_gaps() {
    let counts = Counts::new(4);
    let mut dgram = packet_msg(2, b"nf_ct_proto_6: bad checksum \0", &finack_v4(), 10);
    dgram.extend(packet_msg(
        2,
        b"nf_ct_proto_6: bad checksum \0",
        &finack_v4(),
        13,
    ));
    counts.ingest(&dgram);
    assert_eq!(counts.messages.load(Ordering::Relaxed), 2);
    assert_eq!(counts.lost.load(Ordering::Relaxed), 2);
    let r = Record {
        family: IpFamily::V4,
        proto: Proto::Tcp,
        reason: Reason::BadChecksum,
        size: SizeClass::Lt60,
        flags: TcpFlags::Fin,
        indev: Some(7),
        seq: None,
        zone: None,
        from_conntrack: true,
    };
    assert_eq!(counts.classes[class_index(&r)].load(Ordering::Relaxed), 2);
    let mut out = Vec::new();
    crate::render::encode_text(counts.render(), &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("packetpath_conntrack_invalid_packets_total{family=\"ipv4\",protocol=\"tcp\",reason=\"bad_checksum\",size_class=\"lt60\",tcp_flags=\"fin\"} 2\n"), "{text}");
}

#[test]
fn undecodable_and_uncounted_messages_are_not_lost_messages() {
    let counts = Counts::new(4);
    let bad = b"nf_ct_proto_6: bad checksum \0";
    let mut dgram = packet_msg(2, bad, &finack_v4(), 1);
    // Seq 2: an IP header cut short (a decode error); seq 3: a bridge-family message.
    dgram.extend(packet_msg(2, bad, &[0x45], 2));
    dgram.extend(packet_msg(7, bad, &finack_v4(), 3));
    dgram.extend(packet_msg(2, bad, &finack_v4(), 4));
    counts.ingest(&dgram);
    assert_eq!(counts.messages.load(Ordering::Relaxed), 2);
    assert_eq!(counts.errors.load(Ordering::Relaxed), 1);
    assert_eq!(counts.lost.load(Ordering::Relaxed), 0);
}

#[test]
fn other_nflog_users_are_not_counted_as_invalid() {
    let counts = Counts::new(4);
    let mut dgram = packet_msg(2, b"nf_ct_proto_6: bad checksum \0", &finack_v4(), 1);
    dgram.extend(packet_msg(2, b"DROP-IN \0", &finack_v4(), 2));
    dgram.extend(packet_msg(
        2,
        b"nf_ct_proto_6: bad checksum \0",
        &finack_v4(),
        3,
    ));
    counts.ingest(&dgram);
    assert_eq!(counts.messages.load(Ordering::Relaxed), 2);
    assert_eq!(counts.lost.load(Ordering::Relaxed), 0);
}

#[test]
fn malformed_messages_are_counted_never_panic() {
    let counts = Counts::new(4);
    let good = packet_msg(2, b"nf_ct_proto_6: bad checksum \0", &finack_v4(), 1);
    for end in 0..good.len() {
        counts.ingest(&good[..end]);
    }
    // A payload cut before the IP header's protocol field.
    counts.ingest(&packet_msg(2, b"x\0", &[0x45, 0], 2));
    assert!(counts.errors.load(Ordering::Relaxed) >= 2);
    let mut x: u32 = 99;
    for _ in 0..2000 {
        let junk: Vec<u8> = (0..64)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        counts.ingest(&junk);
    }
}

#[test]
fn device_cardinality_is_capped_and_gone_devices_free_their_slot() {
    let counts = Counts::new(2);
    let from = |dev: u32| Record {
        family: IpFamily::V4,
        proto: Proto::Udp,
        reason: Reason::Other,
        size: SizeClass::Lt60,
        flags: TcpFlags::None,
        indev: Some(dev),
        seq: None,
        zone: None,
        from_conntrack: true,
    };
    for dev in 1..=5 {
        counts.record(&from(dev));
    }
    let name = |gone: u32| {
        move |i: u32| match i {
            OTHER_DEVICE => Some("other".to_owned()),
            i => (i != gone).then(|| format!("d{i}")),
        }
    };
    let mut live = counts.live_devices(name(0));
    live.sort();
    let want = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(d, n)| (d.to_string(), *n)).collect()
    };
    assert_eq!(live, want(&[("d1", 1), ("d2", 1), ("other", 3)]));
    // Device 1 is deleted: its series ends and device 6 takes its slot.
    counts.live_devices(name(1));
    counts.record(&from(6));
    counts.record(&from(7));
    let mut live = counts.live_devices(name(1));
    live.sort();
    assert_eq!(live, want(&[("d2", 1), ("d6", 1), ("other", 4)]));
}

#[test]
fn state_file_is_per_namespace() {
    let plain = Path::new("/run/x.state");
    assert_eq!(per_namespace(plain), plain);
    let p = per_namespace(Path::new("/run/x-{netns}.state"))
        .display()
        .to_string();
    let id = p.trim_start_matches("/run/x-").trim_end_matches(".state");
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()),
        "{p}"
    );
}

#[test]
fn state_file_round_trip() {
    let s = Settings {
        log_invalid: "0".into(),
        nf_log_v4: "nf_log_ipv4".into(),
        nf_log_v6: "NONE".into(),
    };
    assert_eq!(Settings::from_state(&s.to_state()), Some(s));
    assert_eq!(Settings::from_state("nf_log/2 x\n"), None);
}

#[test]
fn the_label_space_is_every_combination_exactly_once() {
    let mut seen = vec![false; CLASSES];
    for &family in IpFamily::ALL {
        for &proto in Proto::ALL {
            for &reason in Reason::ALL {
                for &size in SizeClass::ALL {
                    for &flags in TcpFlags::ALL {
                        let r = Record {
                            family,
                            proto,
                            reason,
                            size,
                            flags,
                            indev: None,
                            seq: None,
                            zone: None,
                            from_conntrack: true,
                        };
                        let slot = seen.get_mut(class_index(&r)).expect("inside the space");
                        assert!(!*slot, "{r:?} shares a slot");
                        *slot = true;
                    }
                }
            }
        }
    }
    assert!(seen.iter().all(|s| *s));
}

/// The messages captured in the OVS test bed with NFULA_CT (tests/fixtures/nflog-ct).
fn ovs_zone_fixture() -> Vec<Vec<u8>> {
    include_str!("../../../tests/fixtures/nflog-ct/ovs-zone7.hex")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn the_conntrack_zone_comes_from_nfula_ct() {
    let msgs = ovs_zone_fixture();
    let parse = |d: &[u8]| {
        let m = wire::messages(FAMILY, d).next().unwrap().unwrap();
        parse_record(&m).unwrap().unwrap()
    };
    let r = parse(&msgs[0]);
    assert_eq!(
        (
            r.family, r.proto, r.reason, r.size, r.flags, r.indev, r.zone
        ),
        (
            IpFamily::V4,
            Proto::Tcp,
            Reason::BadChecksum,
            SizeClass::Lt60,
            TcpFlags::Syn,
            None,
            Some(7)
        )
    );
    let r = parse(&msgs[1]);
    assert_eq!(
        (r.reason, r.flags, r.zone),
        (Reason::InvalidState, TcpFlags::Fin, Some(7))
    );
    // Counted by zone and reason.
    let counts = Counts::new(4);
    for m in &msgs {
        counts.ingest(m);
    }
    let zones = counts.zones.snapshot();
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[&7][Reason::BadChecksum as usize], 1);
    assert_eq!(zones[&7][Reason::InvalidState as usize], 1);
    // Every truncation is an error or a shorter message, never a panic.
    for m in &msgs {
        for end in 0..m.len() {
            counts.ingest(&m[..end]);
        }
    }
}

#[test]
fn nfula_ct_without_cta_zone_is_zone_0_and_a_bad_zone_is_an_error() {
    let ct = |inner: &[u8]| {
        let mut p = vec![2, 0, 0, 0];
        wire::push_attr(&mut p, NFULA_PREFIX, b"nf_ct_proto_6: bad checksum \0");
        wire::push_attr(&mut p, NFULA_PAYLOAD, &finack_v4());
        wire::push_attr(&mut p, NFULA_CT | 0x8000, inner);
        let mut m = wire::request(NFNL_SUBSYS_ULOG << 8, 0, 0, &p);
        m[..4].copy_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
        m
    };
    let zone = |d: &[u8]| {
        let m = wire::messages(FAMILY, d).next().unwrap().unwrap();
        parse_record(&m).map(|r| r.unwrap().zone)
    };
    let mut status = Vec::new();
    wire::push_attr(&mut status, 3, &8u32.to_be_bytes());
    assert_eq!(zone(&ct(&status)), Ok(Some(0)));
    let mut odd = status.clone();
    wire::push_attr(&mut odd, CTA_ZONE, &[0, 7, 0]);
    assert!(zone(&ct(&odd)).is_err());
    let mut z = status;
    wire::push_attr(&mut z, CTA_ZONE, &513u16.to_be_bytes());
    assert_eq!(zone(&ct(&z)), Ok(Some(513)));
    // No NFULA_CT at all: no zone.
    let plain = packet_msg(2, b"nf_ct_proto_6: bad checksum \0", &finack_v4(), 1);
    assert_eq!(zone(&plain), Ok(None));
}
