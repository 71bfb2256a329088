//! Netlink access behind a small trait, so tests replay bytes captured from a real kernel
//! through the same decoders the live exporter uses.

pub mod genl;
pub mod subscribe;
pub mod wire;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

/// The netlink protocols the exporter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Route,
    Netfilter,
    Generic,
}

impl Protocol {
    pub(crate) fn family(self) -> NlFamily {
        match self {
            Protocol::Route => NlFamily::Route,
            Protocol::Netfilter => NlFamily::Netfilter,
            Protocol::Generic => NlFamily::Generic,
        }
    }
}

/// One request the exporter sends; `name` (and `scope`, when the same request is sent per
/// datapath or per device) identifies it in captures and replays.
#[derive(Debug, Clone)]
pub struct Request {
    pub protocol: Protocol,
    pub name: &'static str,
    pub scope: Option<u32>,
    /// Message type and flags; the transport assigns the sequence number.
    pub ty: u16,
    pub flags: u16,
    /// Everything after the netlink header: the family header (ifinfomsg, nfgenmsg,
    /// genlmsghdr + ovs_header, ...) and any request attributes.
    pub payload: Vec<u8>,
}

impl Request {
    fn file_name(&self) -> String {
        match self.scope {
            Some(s) => format!("{}@{s}.bin", self.name),
            None => format!("{}.bin", self.name),
        }
    }
}

/// How a streamed reply ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamEnd {
    /// The kernel flagged the dump NLM_F_DUMP_INTR: it raced a change and may be inconsistent.
    pub interrupted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("open netlink socket ({protocol:?}): {source}")]
    Socket {
        protocol: Protocol,
        source: std::io::Error,
    },
    #[error("{name}: send: {source}")]
    Send {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("{name}: receive: {source}")]
    Recv {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("{name}: {source}")]
    Decode {
        name: &'static str,
        source: wire::DecodeError,
    },
    #[error("{name}: this transport has no subscriptions (not a running kernel)")]
    NoSubscriptions { name: &'static str },
    #[error("{name}: replay file {path}: {source}")]
    Replay {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TransportError {
    /// The errno behind this failure, whether from a syscall or the kernel's reply.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TransportError::Socket { source, .. }
            | TransportError::Send { source, .. }
            | TransportError::Recv { source, .. } => source.raw_os_error(),
            TransportError::Decode { source, .. } => source.errno(),
            TransportError::Replay { .. } | TransportError::NoSubscriptions { .. } => None,
        }
    }
}

pub trait Transport: Send + Sync {
    /// Sends one request and hands the reply to `sink` chunk by chunk, in order, through
    /// NLMSG_DONE or the final ack/error; a message never spans two chunks. `sink` returns
    /// false to abandon the rest of the reply (a capped dump). Callers decode with [`wire`].
    fn stream(
        &self,
        req: &Request,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StreamEnd, TransportError>;

    /// Whether this talks to a running kernel, where multicast groups can be joined; a
    /// replay of captured replies has no notifications to offer.
    fn live(&self) -> bool {
        false
    }

    /// Opens a listener: on a running kernel a socket joined to `spec`'s groups; a replay
    /// of a recording; or nothing, where the transport has no notifications to offer.
    fn subscribe(&self, spec: subscribe::Spec) -> Result<subscribe::Subscription, TransportError> {
        Err(TransportError::NoSubscriptions { name: spec.name })
    }

    /// The whole reply in one buffer.
    fn exchange(&self, req: &Request) -> Result<Vec<u8>, TransportError> {
        let mut out = Vec::new();
        read_whole(self, req, &mut out)?;
        Ok(out)
    }
}

/// Dumps that were still interrupted after every retry: their replies were used as they
/// came and may have missed or repeated an entry. Logged with the request's name.
static INCONSISTENT: AtomicU64 = AtomicU64::new(0);

/// How many dumps ended inconsistent since start (for the exporter's own series).
pub fn inconsistent_dumps() -> u64 {
    INCONSISTENT.load(Ordering::Relaxed)
}

const DUMP_TRIES: usize = 4;

/// Fills `out` with the whole reply; a dump that raced a change is taken again, a few
/// times at most, and one that still raced is counted and logged.
fn read_whole<T: Transport + ?Sized>(
    t: &T,
    req: &Request,
    out: &mut Vec<u8>,
) -> Result<(), TransportError> {
    out.clear();
    stream_consistent(t, req, &mut |piece| {
        match piece {
            Some(chunk) => out.extend_from_slice(chunk),
            None => out.clear(),
        }
        true
    })
}

/// Hands the reply to `sink` chunk by chunk, as [`Transport::stream`] does, and takes a
/// dump that raced a change again, as [`Transport::exchange`] does: `sink(None)` says
/// a new try begins, and the caller drops what the last one gave it. For a dump decoded
/// as it arrives, never held whole (2,000 links are 3 MB).
pub fn stream_consistent<T: Transport + ?Sized>(
    t: &T,
    req: &Request,
    sink: &mut dyn FnMut(Option<&[u8]>) -> bool,
) -> Result<(), TransportError> {
    for attempt in 0..DUMP_TRIES {
        if attempt > 0 {
            sink(None);
        }
        let end = t.stream(req, &mut |chunk| sink(Some(chunk)))?;
        if !end.interrupted {
            return Ok(());
        }
    }
    tracing::warn!(
        request = req.name,
        tries = DUMP_TRIES,
        "netlink dump kept racing changes; its last reply is used as it is"
    );
    INCONSISTENT.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Talks to the running kernel, in the network namespace of the calling thread.
pub struct KernelTransport {
    seq: AtomicU32,
    timeout: Duration,
    /// Reply sizes seen per request, so a large dump lands in one allocation, not in a
    /// buffer that doubles (and copies) its way up.
    last_len: Mutex<HashMap<(&'static str, Option<u32>), usize>>,
}

impl KernelTransport {
    pub fn new(timeout: Duration) -> Self {
        KernelTransport {
            seq: AtomicU32::new(1),
            timeout,
            last_len: Mutex::new(HashMap::new()),
        }
    }
}

/// Reply-size hints kept at most (dumps per datapath; datapaths are few).
const MAX_HINTS: usize = 64;

/// Large enough for any dump datagram (the kernel caps them at 32 KiB by default).
const RECV_BUF: usize = 64 * 1024;

impl Transport for KernelTransport {
    fn live(&self) -> bool {
        true
    }

    fn subscribe(&self, spec: subscribe::Spec) -> Result<subscribe::Subscription, TransportError> {
        subscribe::Subscription::open(spec, None)
    }

    fn stream(
        &self,
        req: &Request,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StreamEnd, TransportError> {
        let protocol = req.protocol;
        let sock = NlSocket::connect(protocol.family(), None, Groups::empty())
            .map_err(|source| TransportError::Socket { protocol, source })?;
        set_recv_timeout(&sock, self.timeout)
            .map_err(|source| TransportError::Socket { protocol, source })?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let dump = req.flags & wire::NLM_F_DUMP == wire::NLM_F_DUMP;
        let bytes = wire::request(req.ty, req.flags, seq, &req.payload);
        sock.send(&bytes, Msg::empty())
            .map_err(|source| TransportError::Send {
                name: req.name,
                source,
            })?;

        let mut end = StreamEnd::default();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let (n, _) =
                sock.recv(&mut buf[..], Msg::empty())
                    .map_err(|source| TransportError::Recv {
                        name: req.name,
                        source,
                    })?;
            let datagram = buf.get(..n).unwrap_or_default();
            let mut finished = n == 0;
            for m in wire::messages(req.name, datagram) {
                let m = m.map_err(|source| TransportError::Decode {
                    name: req.name,
                    source,
                })?;
                if m.seq != seq {
                    continue;
                }
                end.interrupted |= m.flags & wire::NLM_F_DUMP_INTR != 0;
                // A non-dump request gets one reply, sometimes flagged MULTI all the same
                // (ctnetlink's GET_STATS) and with no DONE after it.
                let multi = m.flags & wire::NLM_F_MULTI != 0;
                if m.ty == wire::NLMSG_DONE || m.ty == wire::NLMSG_ERROR || !multi || !dump {
                    finished = true;
                }
            }
            // Closing the socket (on return) abandons whatever the kernel has not sent.
            if !sink(datagram) || finished {
                return Ok(end);
            }
        }
    }

    fn exchange(&self, req: &Request) -> Result<Vec<u8>, TransportError> {
        // Sized from the last reply, so a large dump lands in one allocation instead of a
        // buffer that doubles (and copies) its way up.
        let expected = self
            .last_len
            .lock()
            .map(|m| m.get(&(req.name, req.scope)).copied().unwrap_or(0))
            .unwrap_or(0);
        let mut out = Vec::with_capacity(expected + expected / 8);
        read_whole(self, req, &mut out)?;
        // Only dumps are worth a hint; a request per device (one per ifindex ever seen)
        // would grow the map without bound, so it is also capped.
        if req.flags & wire::NLM_F_DUMP == wire::NLM_F_DUMP {
            if let Ok(mut m) = self.last_len.lock() {
                if m.len() >= MAX_HINTS && !m.contains_key(&(req.name, req.scope)) {
                    m.clear();
                }
                m.insert((req.name, req.scope), out.len());
            }
        }
        Ok(out)
    }
}

/// SO_RCVTIMEO: a receive that waits longer fails with EAGAIN instead of blocking.
pub fn set_recv_timeout(sock: &NlSocket, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: a valid fd and a correctly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks for a receive buffer of `bytes`: SO_RCVBUFFORCE (CAP_NET_ADMIN, past rmem_max)
/// first, then SO_RCVBUF, which the kernel caps at rmem_max. Listeners on busy multicast
/// groups need the room; a smaller buffer shows up as counted overruns, not as a failure.
pub fn set_recv_buffer(sock: &NlSocket, bytes: i32) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid fd and an int option.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Serves replies from `DIR/<request name>.bin`, files written by [`CaptureTransport`].
pub struct ReplayTransport {
    pub dir: PathBuf,
}

impl ReplayTransport {
    fn read(&self, req: &Request) -> Result<Vec<u8>, TransportError> {
        let path = self.dir.join(req.file_name());
        std::fs::read(&path).map_err(|source| TransportError::Replay {
            name: req.name,
            path,
            source,
        })
    }
}

impl Transport for ReplayTransport {
    fn subscribe(&self, spec: subscribe::Spec) -> Result<subscribe::Subscription, TransportError> {
        subscribe::Subscription::replay(spec, &self.dir)
    }

    fn stream(
        &self,
        req: &Request,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StreamEnd, TransportError> {
        sink(&self.read(req)?);
        Ok(StreamEnd::default())
    }

    fn exchange(&self, req: &Request) -> Result<Vec<u8>, TransportError> {
        self.read(req)
    }
}

/// Passes requests to an inner transport and saves each reply as `DIR/<request name>.bin`.
pub struct CaptureTransport<T> {
    pub inner: T,
    pub dir: PathBuf,
}

impl<T: Transport> Transport for CaptureTransport<T> {
    fn live(&self) -> bool {
        self.inner.live()
    }

    fn subscribe(&self, spec: subscribe::Spec) -> Result<subscribe::Subscription, TransportError> {
        subscribe::Subscription::open(spec, Some(&self.dir))
    }

    fn stream(
        &self,
        req: &Request,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<StreamEnd, TransportError> {
        let mut saved = Vec::new();
        let end = self.inner.stream(req, &mut |chunk| {
            saved.extend_from_slice(chunk);
            sink(chunk)
        })?;
        let path = self.dir.join(req.file_name());
        if let Err(e) = std::fs::write(&path, &saved) {
            tracing::warn!(path = %path.display(), error = %e, "could not save netlink capture");
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel whose dumps always race a change.
    struct Racing;

    impl Transport for Racing {
        fn stream(
            &self,
            _req: &Request,
            sink: &mut dyn FnMut(&[u8]) -> bool,
        ) -> Result<StreamEnd, TransportError> {
            sink(b"reply");
            Ok(StreamEnd { interrupted: true })
        }
    }

    #[test]
    fn a_dump_that_keeps_racing_is_used_and_counted() {
        let req = Request {
            protocol: Protocol::Route,
            name: "racing",
            scope: None,
            ty: 0,
            flags: wire::NLM_F_REQUEST | wire::NLM_F_DUMP,
            payload: vec![],
        };
        let before = inconsistent_dumps();
        assert_eq!(Racing.exchange(&req).unwrap(), b"reply");
        assert_eq!(inconsistent_dumps() - before, 1);
    }
}
