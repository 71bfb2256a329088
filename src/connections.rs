//! Connection slots: a cap on open connections that keeps descriptors for the collectors
//! and cannot be turned against Prometheus.
//!
//! When every slot is taken, a new connection does not wait for one to be given back: the
//! connection idle longest (between requests) is closed to make room, or else the one
//! whose reader has left a response waiting longest. Every response must be written
//! within the write timeout, so a client that never reads gives its slot and buffers back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Far enough to mean "never" for a deadline, and near enough to add to any instant.
const FAR: Duration = Duration::from_secs(86_400 * 365);

/// A write that has waited this long for its reader makes the connection a candidate for
/// eviction; a healthy reader drains the socket buffer far sooner.
const STALLED: Duration = Duration::from_secs(1);

/// What a connection is doing, as seen from its reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request (since accept, or since its last response was written).
    Idle(Instant),
    /// A request arrived; its response is being made.
    Busy,
    /// Writing a response that began at `started`; `stalled` since when a write waits.
    Writing {
        started: Instant,
        stalled: Option<Instant>,
    },
}

/// One connection's state, shared by its I/O and the slot registry.
pub struct State {
    phase: Mutex<Phase>,
    evicted: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

impl State {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.read_waker.wake();
        self.write_waker.wake();
    }
}

/// The slots of one listener.
pub struct Slots {
    free: Arc<Semaphore>,
    open: Mutex<Vec<Weak<State>>>,
    write_timeout: Duration,
}

/// A taken slot, given back when the connection drops it.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    state: Arc<State>,
    write_timeout: Duration,
}

impl Slots {
    pub fn new(cap: usize, write_timeout: Duration) -> Arc<Slots> {
        Arc::new(Slots {
            free: Arc::new(Semaphore::new(cap)),
            open: Mutex::new(Vec::new()),
            write_timeout,
        })
    }

    /// A slot for a connection just accepted. With none free, the connection idle
    /// longest is closed, or else the one whose response has waited longest for its
    /// reader; with neither (every connection busy making a response), this waits.
    pub async fn acquire(&self) -> Slot {
        let permit = match self.free.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.evict_one();
                match self.free.clone().acquire_owned().await {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let state = Arc::new(State {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            evicted: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&state));
        Slot {
            _permit: permit,
            state,
            write_timeout: self.write_timeout,
        }
    }

    /// Closes the best candidate, if there is one; true when one was closed.
    fn evict_one(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut idle: Option<(Instant, Arc<State>)> = None;
        let mut stalled: Option<(Instant, Arc<State>)> = None;
        for s in open.iter().filter_map(Weak::upgrade) {
            if s.evicted.load(Ordering::Acquire) {
                continue;
            }
            match s.phase() {
                Phase::Idle(since) if idle.as_ref().is_none_or(|(t, _)| since < *t) => {
                    idle = Some((since, s))
                }
                Phase::Writing {
                    stalled: Some(since),
                    ..
                } if now.duration_since(since) >= STALLED
                    && stalled.as_ref().is_none_or(|(t, _)| since < *t) =>
                {
                    stalled = Some((since, s))
                }
                _ => {}
            }
        }
        match idle.or(stalled) {
            Some((_, s)) => {
                s.evict();
                true
            }
            None => false,
        }
    }
}

/// An accepted connection holding a slot until dropped.
pub struct Counted<T> {
    io: T,
    slot: Slot,
    /// Wakes a waiting write when the response's time is up.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> Counted<T> {
    pub fn new(io: T, slot: Slot) -> Self {
        Counted {
            io,
            slot,
            deadline: None,
        }
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed to make room for a new connection",
    )
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "response not read within the write timeout",
    )
}

impl<T> Counted<T> {
    /// Before a write: the response's start, and an error once its time is up.
    fn before_write(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        let s = &self.slot.state;
        s.write_waker.register(cx.waker());
        if s.evicted.load(Ordering::Acquire) {
            return Err(closed());
        }
        let started = match s.phase() {
            Phase::Writing { started, .. } => started,
            _ => {
                let now = Instant::now();
                s.set(Phase::Writing {
                    started: now,
                    stalled: None,
                });
                // Flags bound the timeout; a far-off deadline stands in for one past the
                // clock's end.
                let until = now
                    .checked_add(self.slot.write_timeout)
                    .unwrap_or(now + FAR);
                self.deadline = Some(Box::pin(tokio::time::sleep_until(until.into())));
                now
            }
        };
        if started.elapsed() >= self.slot.write_timeout {
            return Err(timed_out());
        }
        Ok(())
    }

    /// After a write: progress clears the stall; waiting starts it and arms the deadline.
    fn after_write<R>(&mut self, cx: &mut Context<'_>, r: &Poll<R>) -> Option<std::io::Error> {
        let s = &self.slot.state;
        if let Phase::Writing { started, stalled } = s.phase() {
            let stalled = match r {
                Poll::Ready(_) => None,
                Poll::Pending => Some(stalled.unwrap_or_else(Instant::now)),
            };
            s.set(Phase::Writing { started, stalled });
        }
        if r.is_pending()
            && let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Some(timed_out());
        }
        None
    }

    /// One write-side call of the inner stream, inside the response's bookkeeping.
    fn write_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>>
    where
        T: Unpin,
    {
        if let Err(e) = self.before_write(cx) {
            return Poll::Ready(Err(e));
        }
        let r = f(Pin::new(&mut self.io), cx);
        match self.after_write(cx, &r) {
            Some(e) => Poll::Ready(Err(e)),
            None => r,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let s = self.slot.state.clone();
        s.read_waker.register(cx.waker());
        if s.evicted.load(Ordering::Acquire) {
            // An error, not end of stream: hyper ends the connection on it at once.
            return Poll::Ready(Err(closed()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => s.set(Phase::Busy),
            Poll::Pending => {
                // Waiting for the next request once the last response is out. hyper also
                // polls reads while a write waits for its reader: that is not idle.
                if matches!(s.phase(), Phase::Writing { stalled: None, .. }) {
                    s.set(Phase::Idle(Instant::now()));
                    self.deadline = None;
                }
            }
            _ => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_with(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.write_with(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // hyper flushes on every turn, idle or not: only a flush inside a response counts.
        if matches!(self.slot.state.phase(), Phase::Writing { .. }) {
            self.write_with(cx, |io, cx| io.poll_flush(cx))
        } else {
            Pin::new(&mut self.io).poll_flush(cx)
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_house_makes_room_by_closing_the_idle_longest() {
        let slots = Slots::new(2, Duration::from_secs(30));
        let a = slots.acquire().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = slots.acquire().await;
        b.state.set(Phase::Busy);
        // Full: the third closes a (idle), not b (making a response).
        let c = tokio::time::timeout(Duration::from_secs(1), async {
            let c = slots.acquire();
            tokio::pin!(c);
            // a's connection sees the eviction and drops its slot.
            tokio::select! {
                c = &mut c => c,
                _ = async {
                    while !a.state.evicted.load(Ordering::Acquire) {
                        tokio::task::yield_now().await;
                    }
                } => {
                    assert!(!b.state.evicted.load(Ordering::Acquire));
                    drop(a);
                    c.await
                }
            }
        })
        .await
        .expect("room made");
        assert!(!c.state.evicted.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_stalled_writer_goes_when_nobody_is_idle() {
        let slots = Slots::new(1, Duration::from_secs(30));
        let a = slots.acquire().await;
        a.state.set(Phase::Writing {
            started: Instant::now(),
            stalled: Some(Instant::now() - STALLED),
        });
        assert!(slots.evict_one());
        assert!(a.state.evicted.load(Ordering::Acquire));
        // A busy connection (its response being made) is never closed.
        let slots = Slots::new(1, Duration::from_secs(30));
        let b = slots.acquire().await;
        b.state.set(Phase::Busy);
        assert!(!slots.evict_one());
    }
}
