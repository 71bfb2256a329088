//! Netlink wire decoding: message framing and attribute walking.
//!
//! Everything here is pure and total: any byte string yields either values or a
//! [`DecodeError`] naming the family and the attribute, never a panic.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::fmt;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLA_HDRLEN: usize = 4;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
/// Marks a nested attribute; families with strict validation (ethtool) require it.
pub const NLA_F_NESTED: u16 = 0x8000;
/// Flags carried in `nla_type` (nested, network byte order); the rest is the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{family}: truncated message header ({len} bytes left, need 16)")]
    ShortHeader { family: &'static str, len: usize },
    #[error("{family}: message claims {declared} bytes but {available} remain")]
    BadLength {
        family: &'static str,
        declared: usize,
        available: usize,
    },
    #[error("{family}: {what} is {len} bytes, need at least {need}")]
    ShortStruct {
        family: &'static str,
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{family}: attribute header in {context} truncated ({len} bytes left)")]
    ShortAttr {
        family: &'static str,
        context: &'static str,
        len: usize,
    },
    #[error("{family}: attribute {attr} claims {declared} bytes but {available} remain")]
    AttrOverrun {
        family: &'static str,
        attr: &'static str,
        declared: usize,
        available: usize,
    },
    #[error("{family}: attribute {attr} is {len} bytes, expected {expected}")]
    AttrSize {
        family: &'static str,
        attr: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{family}: attribute {attr} is not a valid string")]
    AttrString {
        family: &'static str,
        attr: &'static str,
    },
    #[error("{family}: kernel answered {}", Errno(*errno))]
    Kernel { family: &'static str, errno: i32 },
    #[error("{family}: attribute {attr} nests deeper than the kernel allows")]
    Nesting {
        family: &'static str,
        attr: &'static str,
    },
    #[error("{family}: reply ended without NLMSG_DONE")]
    Unterminated { family: &'static str },
}

impl DecodeError {
    /// The positive errno the kernel returned, if this is a kernel error reply.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DecodeError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Formats an errno like strerror, with its symbolic value.
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0);
        write!(f, "errno {} ({text})", self.0)
    }
}

/// One netlink message: header fields and the payload after the 16-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

pub fn read_u16_ne(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([
        s.first().copied()?,
        s.get(1).copied()?,
    ]))
}

pub fn read_u32_ne(b: &[u8], at: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_ne_bytes(s))
}

pub fn read_u64_ne(b: &[u8], at: usize) -> Option<u64> {
    let s: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_ne_bytes(s))
}

/// Iterates over the netlink messages in a buffer of concatenated datagrams.
pub struct Messages<'a> {
    family: &'static str,
    rest: &'a [u8],
    failed: bool,
}

pub fn messages<'a>(family: &'static str, buf: &'a [u8]) -> Messages<'a> {
    Messages {
        family,
        rest: buf,
        failed: false,
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let family = self.family;
        let parsed = (|| {
            let b = self.rest;
            let header = || DecodeError::ShortHeader {
                family,
                len: b.len(),
            };
            let len = read_u32_ne(b, 0).ok_or_else(header)? as usize;
            let ty = read_u16_ne(b, 4).ok_or_else(header)?;
            let flags = read_u16_ne(b, 6).ok_or_else(header)?;
            let seq = read_u32_ne(b, 8).ok_or_else(header)?;
            if len < NLMSG_HDRLEN || len > b.len() {
                return Err(DecodeError::BadLength {
                    family,
                    declared: len,
                    available: b.len(),
                });
            }
            let payload = b.get(NLMSG_HDRLEN..len).unwrap_or_default();
            self.rest = b.get(align4(len)..).unwrap_or_default();
            Ok(Message {
                ty,
                flags,
                seq,
                payload,
            })
        })();
        if parsed.is_err() {
            self.failed = true;
        }
        Some(parsed)
    }
}

/// Outcome of looking at one message of a dump reply.
pub enum Control<'a> {
    /// A data message for the caller.
    Data(Message<'a>),
    /// NLMSG_DONE or a zero ack: the reply is complete.
    Done,
    /// NOOP or anything else to skip.
    Skip,
}

/// How the walk of one chunk of a dump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The chunk is used up; the dump goes on.
    More,
    /// NLMSG_DONE (or a zero ack): the dump is complete.
    Done,
    /// The caller asked to stop (a capped dump).
    Stopped,
}

/// Walks one chunk of a dump reply, handing every data message to `on_data`, which
/// returns false to stop; a kernel error or an undecodable message ends the walk as an
/// error. The one loop every streamed dump (links, counters, flows) is read with.
pub fn walk<'a>(
    family: &'static str,
    chunk: &'a [u8],
    on_data: &mut dyn FnMut(Message<'a>) -> Result<bool, DecodeError>,
) -> Result<Walk, DecodeError> {
    for m in messages(family, chunk) {
        match control(family, m?)? {
            Control::Data(m) => {
                if !on_data(m)? {
                    return Ok(Walk::Stopped);
                }
            }
            Control::Skip => {}
            Control::Done => return Ok(Walk::Done),
        }
    }
    Ok(Walk::More)
}

/// Classifies a message of a request's reply, turning kernel errors into [`DecodeError::Kernel`].
pub fn control<'a>(family: &'static str, m: Message<'a>) -> Result<Control<'a>, DecodeError> {
    match m.ty {
        NLMSG_ERROR | NLMSG_DONE => {
            // Both carry a signed errno first (DONE does since 2.6.x for dumps that fail late).
            let code = read_u32_ne(m.payload, 0).map(|v| v as i32).unwrap_or(0);
            if code < 0 {
                Err(DecodeError::Kernel {
                    family,
                    errno: code.saturating_neg(),
                })
            } else {
                Ok(Control::Done)
            }
        }
        NLMSG_NOOP => Ok(Control::Skip),
        _ => Ok(Control::Data(m)),
    }
}

/// Walks a reply buffer and returns its data messages, or the kernel's error.
/// A reply that ends without DONE/ack is accepted only if `need_done` is false.
pub fn data_messages<'a>(
    family: &'static str,
    buf: &'a [u8],
    need_done: bool,
) -> Result<Vec<Message<'a>>, DecodeError> {
    let mut out = Vec::new();
    for m in messages(family, buf) {
        match control(family, m?)? {
            Control::Data(m) => out.push(m),
            Control::Done => return Ok(out),
            Control::Skip => {}
        }
    }
    if need_done {
        Err(DecodeError::Unterminated { family })
    } else {
        Ok(out)
    }
}

/// One attribute: its type (flags masked off) and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub ty: u16,
    pub payload: &'a [u8],
}

pub struct Attrs<'a> {
    family: &'static str,
    context: &'static str,
    rest: &'a [u8],
    failed: bool,
}

/// Iterates over the attributes in `buf`; `context` names the enclosing structure in errors.
pub fn attrs<'a>(family: &'static str, context: &'static str, buf: &'a [u8]) -> Attrs<'a> {
    Attrs {
        family,
        context,
        rest: buf,
        failed: false,
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        let parsed = match (read_u16_ne(b, 0), read_u16_ne(b, 2)) {
            (Some(len), Some(ty)) => {
                let len = len as usize;
                if len < NLA_HDRLEN || len > b.len() {
                    Err(DecodeError::AttrOverrun {
                        family: self.family,
                        attr: self.context,
                        declared: len,
                        available: b.len(),
                    })
                } else {
                    self.rest = b.get(align4(len)..).unwrap_or_default();
                    Ok(Attr {
                        ty: ty & NLA_TYPE_MASK,
                        payload: b.get(NLA_HDRLEN..len).unwrap_or_default(),
                    })
                }
            }
            _ => Err(DecodeError::ShortAttr {
                family: self.family,
                context: self.context,
                len: b.len(),
            }),
        };
        if parsed.is_err() {
            self.failed = true;
        }
        Some(parsed)
    }
}

impl<'a> Attr<'a> {
    /// The payload as exactly `N` bytes.
    pub fn exact<const N: usize>(
        &self,
        family: &'static str,
        name: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        self.payload.try_into().map_err(|_| DecodeError::AttrSize {
            family,
            attr: name,
            len: self.payload.len(),
            expected: N,
        })
    }

    pub fn u8(&self, family: &'static str, name: &'static str) -> Result<u8, DecodeError> {
        let [v] = self.exact::<1>(family, name)?;
        Ok(v)
    }

    pub fn u16_ne(&self, family: &'static str, name: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_ne_bytes(self.exact(family, name)?))
    }

    pub fn u16_be(&self, family: &'static str, name: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.exact(family, name)?))
    }

    pub fn u32_ne(&self, family: &'static str, name: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_ne_bytes(self.exact(family, name)?))
    }

    pub fn u32_be(&self, family: &'static str, name: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.exact(family, name)?))
    }

    /// The bytes of a NUL-terminated (or unterminated) string attribute.
    fn until_nul(&self) -> &'a [u8] {
        match self.payload.iter().position(|&c| c == 0) {
            Some(end) => self.payload.get(..end).unwrap_or_default(),
            None => self.payload,
        }
    }

    /// A NUL-terminated (or unterminated) string attribute.
    pub fn string(&self, family: &'static str, name: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.until_nul())
            .map_err(|_| DecodeError::AttrString { family, attr: name })
    }

    /// A device or datapath name: Linux allows any bytes but '/' and NUL in one, so bytes
    /// that are not UTF-8 become U+FFFD rather than failing the whole reply.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(self.until_nul()).into_owned()
    }
}

/// Builds a request: the netlink header, then `payload` (family header and attributes).
pub fn request(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(align4(len));
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    out.extend_from_slice(payload);
    out.resize(align4(len), 0);
    out
}

/// Appends one attribute (header, data, padding) to a request payload.
pub fn push_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = NLA_HDRLEN + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + (align4(len) - len), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = request(ty, flags, 7, payload);
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_lossily() {
        let mut a = Vec::new();
        push_attr(&mut a, 3, b"tap\xff\xfe1\0");
        let attr = attrs("rtnetlink", "IFLA", &a).next().unwrap().unwrap();
        assert_eq!(attr.name(), "tap\u{fffd}\u{fffd}1");
        assert!(attr.string("rtnetlink", "IFLA_IFNAME").is_err());
    }

    #[test]
    fn walks_messages_and_stops_at_done() {
        let mut buf = msg(16, NLM_F_MULTI, &[1, 2, 3]);
        buf.extend(msg(NLMSG_DONE, NLM_F_MULTI, &0i32.to_ne_bytes()));
        buf.extend(msg(16, 0, &[9]));
        let data = data_messages("t", &buf, true).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].payload, &[1, 2, 3]);
        assert_eq!(data[0].seq, 7);
    }

    #[test]
    fn kernel_error_is_reported_with_errno() {
        let buf = msg(NLMSG_ERROR, 0, &(-1i32).to_ne_bytes());
        let err = data_messages("ctnetlink", &buf, true).unwrap_err();
        assert_eq!(err.errno(), Some(1));
        assert!(
            err.to_string()
                .starts_with("ctnetlink: kernel answered errno 1")
        );
    }

    #[test]
    fn missing_done_is_an_error_when_required() {
        let buf = msg(16, NLM_F_MULTI, &[]);
        assert_eq!(
            data_messages("t", &buf, true).unwrap_err(),
            DecodeError::Unterminated { family: "t" }
        );
    }

    #[test]
    fn truncated_message_lengths_are_errors() {
        let mut buf = msg(16, 0, &[1, 2, 3, 4]);
        buf.truncate(18);
        let all: Vec<_> = messages("t", &buf).collect();
        assert_eq!(
            all,
            vec![Err(DecodeError::BadLength {
                family: "t",
                declared: 20,
                available: 18
            })]
        );
        let all: Vec<_> = messages("t", &buf[..5]).collect();
        assert_eq!(
            all,
            vec![Err(DecodeError::ShortHeader {
                family: "t",
                len: 5
            })]
        );
    }

    #[test]
    fn attributes_mask_flags_and_reject_overruns() {
        // len 8, type 0x8001 (nested flag), u32 payload; then a header claiming 12 bytes in 6.
        let mut b = vec![8, 0, 1, 0x80, 1, 0, 0, 0];
        b.extend([12, 0, 2, 0, 0, 0]);
        let got: Vec<_> = attrs("t", "ctx", &b).collect();
        assert_eq!(got.len(), 2);
        let a = got[0].as_ref().unwrap();
        assert_eq!(a.ty, 1);
        assert_eq!(a.u32_ne("t", "A").unwrap(), 1);
        assert_eq!(
            a.u8("t", "A"),
            Err(DecodeError::AttrSize {
                family: "t",
                attr: "A",
                len: 4,
                expected: 1
            })
        );
        assert!(matches!(
            got[1],
            Err(DecodeError::AttrOverrun { declared: 12, .. })
        ));
    }

    #[test]
    fn never_panics_on_any_short_prefix_of_arbitrary_bytes() {
        // A cheap exhaustive-ish sweep: every prefix of a pseudo-random buffer.
        let mut x: u32 = 0x1234_5678;
        let buf: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0xff) as u8
            })
            .collect();
        for end in 0..buf.len() {
            for m in messages("t", &buf[..end]).flatten() {
                let _ = attrs("t", "c", m.payload).count();
            }
            let _ = attrs("t", "c", &buf[..end]).count();
        }
    }
}
