//! Subscriptions: a netlink socket that listens (multicast groups, an NFLOG group bound to
//! it) rather than asks. One design for every listener: the caller waits with `poll`, then
//! drains what is queued without blocking into a reused buffer; the kernel's ENOBUFS is
//! counted as an overrun, never ignored; requests on the same socket (the NFLOG
//! configuration) get transport-assigned sequence numbers and a timeout on their
//! acknowledgement. What is received can be recorded to a file and replayed from it, so a
//! listener's tests run from captured bytes through the same code.
//!
//! A recording is the datagrams back to back, each behind its length as a little-endian
//! u32: `<name>.stream` beside the request captures.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use neli::consts::socket::Msg;
use neli::socket::NlSocket;
use neli::utils::Groups;

use super::wire;
use super::{Protocol, TransportError};

/// Receive buffer for one datagram: the kernel batches NFLOG messages up to the size the
/// instance was configured with (`nlbufsiz`), and a larger datagram would be cut.
pub const DATAGRAM_MAX: usize = 256 * 1024;

/// What a subscription asks of the kernel when it opens.
#[derive(Debug, Clone)]
pub struct Spec {
    pub protocol: Protocol,
    /// Names the recording (`<name>.stream`) and errors.
    pub name: &'static str,
    /// Multicast groups to join (generic netlink group ids); none for NFLOG, whose group
    /// is bound by a configuration request instead.
    pub groups: Vec<u32>,
    /// SO_RCVBUF(FORCE) in bytes: room for bursts while the reader is busy.
    pub rcvbuf: i32,
}

/// What a subscription has received since it opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub datagrams: u64,
    pub bytes: u64,
    /// ENOBUFS: the socket overflowed and the kernel dropped messages.
    pub overruns: u64,
}

/// Why a request on a subscription's socket failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    /// The kernel answered with this errno.
    #[error("{}", wire::Errno(*.0))]
    Errno(i32),
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
}

enum Source {
    Kernel(Arc<NlSocket>),
    Replay(BufReader<File>),
}

/// Waits on a subscription without holding it (and whatever lock is around it).
pub enum Waiter {
    Kernel(Arc<NlSocket>),
    Replay { ended: bool },
}

impl Waiter {
    /// Waits until something can be read, or `timeout`; true if something can.
    pub fn wait(&self, timeout: Duration) -> bool {
        match self {
            Waiter::Kernel(sock) => {
                let mut pfd = libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
            }
            // A replay has its datagrams at once; at the end there is nothing to wait for.
            Waiter::Replay { ended: true } => {
                std::thread::sleep(timeout.min(Duration::from_millis(10)));
                false
            }
            Waiter::Replay { ended: false } => true,
        }
    }
}

pub struct Subscription {
    spec: Spec,
    source: Source,
    record: Option<BufWriter<File>>,
    seq: u32,
    buf: Vec<u8>,
    received: Received,
    /// A replay has handed over its last datagram.
    ended: bool,
}

impl Subscription {
    /// Opens a socket on the running kernel and joins `spec.groups`; with `record`, every
    /// datagram received is also appended to `record/<name>.stream`.
    pub fn open(spec: Spec, record: Option<&Path>) -> Result<Subscription, TransportError> {
        let protocol = spec.protocol;
        let socket_error = |source| TransportError::Socket { protocol, source };
        let sock =
            NlSocket::connect(protocol.family(), None, Groups::empty()).map_err(socket_error)?;
        super::set_recv_buffer(&sock, spec.rcvbuf);
        if !spec.groups.is_empty() {
            sock.add_mcast_membership(Groups::new_groups(&spec.groups))
                .map_err(socket_error)?;
        }
        let record = match record {
            Some(dir) => {
                let path = dir.join(format!("{}.stream", spec.name));
                Some(BufWriter::new(File::create(&path).map_err(|source| {
                    TransportError::Replay {
                        name: spec.name,
                        path,
                        source,
                    }
                })?))
            }
            None => None,
        };
        Ok(Subscription::new(
            spec,
            Source::Kernel(Arc::new(sock)),
            record,
        ))
    }

    /// Replays `dir/<name>.stream`; requests are answered by the acknowledgements recorded.
    pub fn replay(spec: Spec, dir: &Path) -> Result<Subscription, TransportError> {
        let path = dir.join(format!("{}.stream", spec.name));
        let file = File::open(&path).map_err(|source| TransportError::Replay {
            name: spec.name,
            path,
            source,
        })?;
        Ok(Subscription::new(
            spec,
            Source::Replay(BufReader::new(file)),
            None,
        ))
    }

    fn new(spec: Spec, source: Source, record: Option<BufWriter<File>>) -> Subscription {
        Subscription {
            spec,
            source,
            record,
            seq: 1,
            buf: Vec::new(),
            received: Received::default(),
            ended: false,
        }
    }

    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    pub fn received(&self) -> Received {
        self.received
    }

    /// Sends one request on this socket (message type and flags; ACK is added, the
    /// sequence number assigned here) and waits up to `timeout` for its acknowledgement.
    /// Anything else read meanwhile is handed to `other`.
    pub fn request(
        &mut self,
        ty: u16,
        flags: u16,
        payload: &[u8],
        timeout: Duration,
        other: &mut dyn FnMut(&[u8]),
    ) -> Result<(), AckError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        // A replay answers from the recording: the kernel's acknowledgement (or errno)
        // was recorded in order, under the same sequence number.
        if let Source::Kernel(sock) = &self.source {
            let msg = wire::request(
                ty,
                flags | wire::NLM_F_REQUEST | wire::NLM_F_ACK,
                seq,
                payload,
            );
            sock.send(&msg, Msg::empty())
                .map_err(|e| AckError::Io(format!("send: {e}")))?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait(left) {
                return Err(AckError::Timeout(timeout));
            }
            let mut ack = None;
            self.read_some(1, &mut |datagram| {
                for m in wire::messages("netlink", datagram).flatten() {
                    if m.seq == seq && m.ty == wire::NLMSG_ERROR {
                        let code = wire::read_u32_ne(m.payload, 0).map_or(0, |c| c as i32);
                        ack = Some(code);
                    }
                }
                if ack.is_none() {
                    other(datagram);
                }
            })
            .map_err(|e| AckError::Io(format!("receive: {e}")))?;
            match ack {
                Some(0) => return Ok(()),
                Some(code) => return Err(AckError::Errno(code.saturating_neg())),
                None => {}
            }
        }
    }

    /// Waits until something can be read, or `timeout`; true if something can.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.waiter().wait(timeout)
    }

    /// A handle to wait on without holding the subscription.
    pub fn waiter(&self) -> Waiter {
        match &self.source {
            Source::Kernel(sock) => Waiter::Kernel(sock.clone()),
            Source::Replay(_) => Waiter::Replay { ended: self.ended },
        }
    }

    /// Reads what is queued, without waiting, at most `max` datagrams, handing each to
    /// `sink`. ENOBUFS is counted and reading goes on; only a broken socket fails.
    pub fn drain(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> std::io::Result<()> {
        self.read_some(max, sink)
    }

    fn read_some(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> std::io::Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0; DATAGRAM_MAX];
        }
        for _ in 0..max {
            let n = match &mut self.source {
                Source::Kernel(sock) => match sock.recv(&mut self.buf[..], Msg::DONTWAIT) {
                    Ok((n, _)) => n,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        self.received.overruns += 1;
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                },
                Source::Replay(r) => match next_recorded(r, &mut self.buf)? {
                    Some(n) => n,
                    None => {
                        self.ended = true;
                        break;
                    }
                },
            };
            let datagram = self.buf.get(..n).unwrap_or_default();
            self.received.datagrams += 1;
            self.received.bytes += n as u64;
            if let Some(w) = self.record.as_mut() {
                let len = u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
                if let Err(e) = w.write_all(&len).and_then(|()| w.write_all(datagram)) {
                    tracing::warn!(subscription = self.spec.name, error = %e, "could not record; recording stops");
                    self.record = None;
                }
            }
            sink(datagram);
        }
        if let Some(w) = self.record.as_mut() {
            let _ = w.flush();
        }
        Ok(())
    }
}

/// The next recorded datagram into `buf`; None at the end of the recording.
fn next_recorded(r: &mut BufReader<File>, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    let Some(into) = buf.get_mut(..n) else {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("a recorded datagram of {n} bytes, over {DATAGRAM_MAX}"),
        ));
    };
    r.read_exact(into)?;
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay of `datagrams`, recorded under a directory of its own.
    fn replay_of(name: &'static str, datagrams: &[Vec<u8>]) -> (Subscription, std::path::PathBuf) {
        let mut f = Vec::new();
        for d in datagrams {
            f.extend_from_slice(&(d.len() as u32).to_le_bytes());
            f.extend_from_slice(d);
        }
        replay_raw(name, &f)
    }

    /// A replay of a recording file holding `bytes`.
    fn replay_raw(name: &'static str, bytes: &[u8]) -> (Subscription, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("pp-subscribe-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.stream")), bytes).unwrap();
        let spec = Spec {
            protocol: Protocol::Netfilter,
            name,
            groups: vec![],
            rcvbuf: 0,
        };
        (Subscription::replay(spec, &dir).unwrap(), dir)
    }

    #[test]
    fn a_recording_replays_datagram_by_datagram() {
        let datagrams = [b"first".to_vec(), vec![], b"third datagram".to_vec()];
        let (mut s, dir) = replay_of("order", &datagrams);
        let mut got = Vec::new();
        s.drain(2, &mut |d| got.push(d.to_vec())).unwrap();
        assert_eq!(got, datagrams[..2]);
        s.drain(10, &mut |d| got.push(d.to_vec())).unwrap();
        assert_eq!(got, datagrams);
        assert_eq!(
            s.received(),
            Received {
                datagrams: 3,
                bytes: 19,
                overruns: 0
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
        // A length past the buffer is an error, not a panic.
        let (mut s, dir) = replay_raw("long", &u32::MAX.to_le_bytes());
        assert!(s.drain(1, &mut |_| {}).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An NLMSG_ERROR for `seq` with `code` (0 is an acknowledgement).
    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]);
        let mut m = wire::request(wire::NLMSG_ERROR, 0, seq, &payload);
        let len = (m.len() as u32).to_ne_bytes();
        m.get_mut(..4).unwrap().copy_from_slice(&len);
        m
    }

    #[test]
    fn requests_are_answered_by_their_own_acknowledgement() {
        // Something unrelated first (handed to `other`), then the answers to sequence
        // numbers 2 (EBUSY) and 3 (success), as the kernel sent them.
        let (mut s, dir) = replay_of(
            "acks",
            &[b"noise".to_vec(), ack(2, -libc::EBUSY), ack(3, 0)],
        );
        let t = Duration::from_secs(1);
        let mut other = 0;
        assert_eq!(
            s.request(1, 0, &[], t, &mut |_| other += 1),
            Err(AckError::Errno(libc::EBUSY))
        );
        assert_eq!(other, 1);
        assert_eq!(s.request(1, 0, &[], t, &mut |_| {}), Ok(()));
        // Nothing left to answer a third: it times out instead of waiting for ever.
        let short = Duration::from_millis(50);
        assert_eq!(
            s.request(1, 0, &[], short, &mut |_| {}),
            Err(AckError::Timeout(short))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
