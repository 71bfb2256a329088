//! The ethtool generic netlink family: the features of one device or a dump of every
//! device's (compact bitsets), and the feature names from the kernel's `ETH_SS_FEATURES`
//! string set.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use crate::netlink::Request;
use crate::netlink::genl;
use crate::netlink::wire::{self, DecodeError};

pub const FAMILY: &str = "ethtool";
const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_STRSET_GET: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
const ETHTOOL_FLAG_COMPACT_BITSETS: u32 = 1;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_BITSET_NOMASK: u16 = 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_VALUE: u16 = 4;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_INDEX: u16 = 1;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;
const ETHTOOL_A_STRSET_HEADER: u16 = 1;
const ETHTOOL_A_STRSET_STRINGSETS: u16 = 2;
const ETHTOOL_A_STRINGSETS_STRINGSET: u16 = 1;
const ETHTOOL_A_STRINGSET_ID: u16 = 1;
const ETHTOOL_A_STRINGSET_STRINGS: u16 = 3;
const ETHTOOL_A_STRINGS_STRING: u16 = 1;
const ETHTOOL_A_STRING_INDEX: u16 = 1;
const ETHTOOL_A_STRING_VALUE: u16 = 2;
const ETH_SS_FEATURES: u32 = 4;

/// One device's features: bit indices wanted and active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub ifindex: u32,
    pub name: String,
    pub wanted: Vec<u32>,
    pub active: Vec<u32>,
}

fn header(flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    wire::push_attr(&mut h, ETHTOOL_A_HEADER_FLAGS, &flags.to_ne_bytes());
    h
}

/// The features of every device, in one dump.
pub fn features_request(family: u16) -> Request {
    features_get(family, None)
}

/// The features of the device with index `ifindex` (captured and replayed as
/// `ethtool_features_get@<ifindex>.bin`).
pub fn device_features_request(family: u16, ifindex: u32) -> Request {
    features_get(family, Some(ifindex))
}

fn features_get(family: u16, ifindex: Option<u32>) -> Request {
    let mut h = Vec::new();
    if let Some(i) = ifindex {
        wire::push_attr(&mut h, ETHTOOL_A_HEADER_DEV_INDEX, &i.to_ne_bytes());
    }
    h.extend(header(ETHTOOL_FLAG_COMPACT_BITSETS));
    let mut body = Vec::new();
    wire::push_attr(
        &mut body,
        ETHTOOL_A_FEATURES_HEADER | wire::NLA_F_NESTED,
        &h,
    );
    let mut r = genl::request(
        family,
        ETHTOOL_MSG_FEATURES_GET,
        ETHTOOL_GENL_VERSION,
        "ethtool_features_get",
        ifindex.is_none(),
        &body,
    );
    r.scope = ifindex;
    r
}

/// The global (no device) ETH_SS_FEATURES string set: every feature's name by bit.
pub fn names_request(family: u16) -> Request {
    let mut id = Vec::new();
    wire::push_attr(
        &mut id,
        ETHTOOL_A_STRINGSET_ID,
        &ETH_SS_FEATURES.to_ne_bytes(),
    );
    let mut set = Vec::new();
    wire::push_attr(
        &mut set,
        ETHTOOL_A_STRINGSETS_STRINGSET | wire::NLA_F_NESTED,
        &id,
    );
    let mut body = Vec::new();
    wire::push_attr(
        &mut body,
        ETHTOOL_A_STRSET_HEADER | wire::NLA_F_NESTED,
        &header(0),
    );
    wire::push_attr(
        &mut body,
        ETHTOOL_A_STRSET_STRINGSETS | wire::NLA_F_NESTED,
        &set,
    );
    genl::request(
        family,
        ETHTOOL_MSG_STRSET_GET,
        ETHTOOL_GENL_VERSION,
        "ethtool_strset_features",
        false,
        &body,
    )
}

/// Feature names by bit index, from the string set reply.
pub fn parse_names(buf: &[u8]) -> Result<Vec<String>, DecodeError> {
    let mut names = Vec::new();
    for m in wire::data_messages(FAMILY, buf, false)? {
        let (_, attrs) = genl::split(FAMILY, m.payload)?;
        for a in wire::attrs(FAMILY, "ETHTOOL_A_STRSET", attrs) {
            let a = a?;
            if a.ty != ETHTOOL_A_STRSET_STRINGSETS {
                continue;
            }
            for set in wire::attrs(FAMILY, "ETHTOOL_A_STRINGSETS", a.payload) {
                let set = set?;
                if set.ty != ETHTOOL_A_STRINGSETS_STRINGSET {
                    continue;
                }
                let (mut id, mut strings) = (None, None);
                for s in wire::attrs(FAMILY, "ETHTOOL_A_STRINGSET", set.payload) {
                    let s = s?;
                    match s.ty {
                        ETHTOOL_A_STRINGSET_ID => {
                            id = Some(s.u32_ne(FAMILY, "ETHTOOL_A_STRINGSET_ID")?)
                        }
                        ETHTOOL_A_STRINGSET_STRINGS => strings = Some(s.payload),
                        _ => {}
                    }
                }
                if id != Some(ETH_SS_FEATURES) {
                    continue;
                }
                for st in wire::attrs(FAMILY, "ETHTOOL_A_STRINGS", strings.unwrap_or_default()) {
                    let st = st?;
                    if st.ty != ETHTOOL_A_STRINGS_STRING {
                        continue;
                    }
                    let (mut index, mut value) = (None, None);
                    for f in wire::attrs(FAMILY, "ETHTOOL_A_STRING", st.payload) {
                        let f = f?;
                        match f.ty {
                            ETHTOOL_A_STRING_INDEX => {
                                index = Some(f.u32_ne(FAMILY, "ETHTOOL_A_STRING_INDEX")?)
                            }
                            ETHTOOL_A_STRING_VALUE => value = Some(f.name()),
                            _ => {}
                        }
                    }
                    // The kernel sends indices in order; an index past a sane bound
                    // would only make the table huge, so it is ignored.
                    if let (Some(i), Some(v)) = (index, value) {
                        let i = i as usize;
                        if i < 4096 {
                            if names.len() <= i {
                                names.resize(i + 1, String::new());
                            }
                            if let Some(slot) = names.get_mut(i) {
                                *slot = v;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(names)
}

/// The bits set in a bitset: compact (a u32 array, bit i of word i/32) or verbose (one
/// nest per bit; in a list without a mask every listed bit is set).
fn bitset(payload: &[u8]) -> Result<Vec<u32>, DecodeError> {
    let mut set = Vec::new();
    let mut nomask = false;
    let mut verbose = None;
    for a in wire::attrs(FAMILY, "ETHTOOL_A_BITSET", payload) {
        let a = a?;
        match a.ty {
            ETHTOOL_A_BITSET_NOMASK => nomask = true,
            ETHTOOL_A_BITSET_VALUE => {
                for (w, chunk) in a.payload.chunks_exact(4).enumerate() {
                    let word = u32::from_ne_bytes([
                        chunk.first().copied().unwrap_or(0),
                        chunk.get(1).copied().unwrap_or(0),
                        chunk.get(2).copied().unwrap_or(0),
                        chunk.get(3).copied().unwrap_or(0),
                    ]);
                    for b in 0..32u32 {
                        if word & (1 << b) != 0 {
                            set.push(w as u32 * 32 + b);
                        }
                    }
                }
            }
            ETHTOOL_A_BITSET_BITS => verbose = Some(a.payload),
            _ => {}
        }
    }
    for bit in wire::attrs(FAMILY, "ETHTOOL_A_BITSET_BITS", verbose.unwrap_or_default()) {
        let bit = bit?;
        if bit.ty != ETHTOOL_A_BITSET_BITS_BIT {
            continue;
        }
        let (mut index, mut value) = (None, false);
        for f in wire::attrs(FAMILY, "ETHTOOL_A_BITSET_BIT", bit.payload) {
            let f = f?;
            match f.ty {
                ETHTOOL_A_BITSET_BIT_INDEX => {
                    index = Some(f.u32_ne(FAMILY, "ETHTOOL_A_BITSET_BIT_INDEX")?)
                }
                ETHTOOL_A_BITSET_BIT_VALUE => value = true,
                _ => {}
            }
        }
        if let Some(i) = index.filter(|_| value || nomask) {
            set.push(i);
        }
    }
    Ok(set)
}

/// Decodes a FEATURES_GET dump: one message per device.
pub fn parse_features(buf: &[u8]) -> Result<Vec<Features>, DecodeError> {
    decode_features(buf, true)
}

/// Decodes the reply to one device's FEATURES_GET (no dump, so no NLMSG_DONE); the
/// kernel's error, ENODEV for a device that is gone, comes back as
/// [`DecodeError::Kernel`].
pub fn parse_device_features(buf: &[u8]) -> Result<Option<Features>, DecodeError> {
    Ok(decode_features(buf, false)?.into_iter().next())
}

fn decode_features(buf: &[u8], dump: bool) -> Result<Vec<Features>, DecodeError> {
    let mut out = Vec::new();
    for m in wire::data_messages(FAMILY, buf, dump)? {
        let (_, attrs) = genl::split(FAMILY, m.payload)?;
        let mut f = Features {
            ifindex: 0,
            name: String::new(),
            wanted: Vec::new(),
            active: Vec::new(),
        };
        for a in wire::attrs(FAMILY, "ETHTOOL_A_FEATURES", attrs) {
            let a = a?;
            match a.ty {
                ETHTOOL_A_FEATURES_HEADER => {
                    for h in wire::attrs(FAMILY, "ETHTOOL_A_HEADER", a.payload) {
                        let h = h?;
                        match h.ty {
                            ETHTOOL_A_HEADER_DEV_INDEX => {
                                f.ifindex = h.u32_ne(FAMILY, "ETHTOOL_A_HEADER_DEV_INDEX")?
                            }
                            ETHTOOL_A_HEADER_DEV_NAME => f.name = h.name(),
                            _ => {}
                        }
                    }
                }
                ETHTOOL_A_FEATURES_WANTED => f.wanted = bitset(a.payload)?,
                ETHTOOL_A_FEATURES_ACTIVE => f.active = bitset(a.payload)?,
                _ => {}
            }
        }
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_verbose_bitsets_agree() {
        let mut compact = Vec::new();
        wire::push_attr(&mut compact, ETHTOOL_A_BITSET_NOMASK, &[]);
        wire::push_attr(&mut compact, 2, &40u32.to_ne_bytes());
        let words = [(1u32 << 3) | (1 << 31), 1 << 2];
        wire::push_attr(
            &mut compact,
            ETHTOOL_A_BITSET_VALUE,
            &[words[0].to_ne_bytes(), words[1].to_ne_bytes()].concat(),
        );
        assert_eq!(bitset(&compact).unwrap(), vec![3, 31, 34]);

        let mut bits = Vec::new();
        for (i, on) in [(3u32, true), (5, false), (34, true)] {
            let mut b = Vec::new();
            wire::push_attr(&mut b, ETHTOOL_A_BITSET_BIT_INDEX, &i.to_ne_bytes());
            wire::push_attr(&mut b, 2, b"x\0");
            if on {
                wire::push_attr(&mut b, ETHTOOL_A_BITSET_BIT_VALUE, &[]);
            }
            wire::push_attr(&mut bits, ETHTOOL_A_BITSET_BITS_BIT, &b);
        }
        let mut verbose = Vec::new();
        wire::push_attr(&mut verbose, ETHTOOL_A_BITSET_BITS, &bits);
        assert_eq!(bitset(&verbose).unwrap(), vec![3, 34]);
        // Truncated input is an error naming the attribute, never a panic.
        let err = bitset(&verbose[..verbose.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("ETHTOOL_A_BITSET"), "{err}");
    }

    #[test]
    fn one_device_or_every_device() {
        let attrs_of = |r: &Request| {
            let mut out = Vec::new();
            for a in wire::attrs(FAMILY, "test", &r.payload[genl::GENL_HDRLEN..]) {
                let a = a.unwrap();
                assert_eq!(a.ty, ETHTOOL_A_FEATURES_HEADER);
                for h in wire::attrs(FAMILY, "test", a.payload) {
                    let h = h.unwrap();
                    out.push((h.ty, h.u32_ne(FAMILY, "test").unwrap()));
                }
            }
            out
        };
        let one = device_features_request(21, 7);
        assert_eq!((one.name, one.scope), ("ethtool_features_get", Some(7)));
        assert_eq!(one.flags & wire::NLM_F_DUMP, 0);
        assert_eq!(
            attrs_of(&one),
            vec![
                (ETHTOOL_A_HEADER_DEV_INDEX, 7),
                (ETHTOOL_A_HEADER_FLAGS, ETHTOOL_FLAG_COMPACT_BITSETS)
            ]
        );
        let all = features_request(21);
        assert_eq!(all.scope, None);
        assert_eq!(all.flags & wire::NLM_F_DUMP, wire::NLM_F_DUMP);
        assert_eq!(
            attrs_of(&all),
            vec![(ETHTOOL_A_HEADER_FLAGS, ETHTOOL_FLAG_COMPACT_BITSETS)]
        );
    }

    #[test]
    fn one_device_reply_has_no_done() {
        let mut h = Vec::new();
        wire::push_attr(&mut h, ETHTOOL_A_HEADER_DEV_INDEX, &7u32.to_ne_bytes());
        wire::push_attr(&mut h, ETHTOOL_A_HEADER_DEV_NAME, b"vx0\0");
        let mut bits = Vec::new();
        wire::push_attr(&mut bits, ETHTOOL_A_BITSET_VALUE, &5u32.to_ne_bytes());
        let mut p = vec![ETHTOOL_MSG_FEATURES_GET + 1, 1, 0, 0];
        wire::push_attr(&mut p, ETHTOOL_A_FEATURES_HEADER | wire::NLA_F_NESTED, &h);
        wire::push_attr(
            &mut p,
            ETHTOOL_A_FEATURES_ACTIVE | wire::NLA_F_NESTED,
            &bits,
        );
        let m = wire::request(21, 0, 1, &p);
        let f = parse_device_features(&m).unwrap().unwrap();
        assert_eq!((f.ifindex, f.name.as_str()), (7, "vx0"));
        assert_eq!((f.active, f.wanted), (vec![0, 2], vec![]));
        // The same message as a dump would need its DONE.
        assert!(parse_features(&m).is_err());
    }
}
