//! A connection's outgoing bytes, written by the connection's own task.
//!
//! Everything queued for a socket during one pass of the event loop is appended to one buffer
//! and leaves in one write: a push wakes the connection's task once; the task runs after the
//! tasks that queued and writes the whole buffer (uWebSockets' "cork"). Frames arrive already
//! encoded (a room event is encoded once for all its recipients), so queuing is a `memcpy`.
//! There is no writer task: the connection task polls [`Outbox::drive`] next to whatever else
//! it waits for (input, a backend call), so an idle connection is one small task.
//!
//! The queue is capped at `cap` bytes (`MAX_OUTBOX_BYTES`). [`Class::Volatile`] frames (typing,
//! presence, pings) are dropped once half the cap is used, so they never push reliable ones
//! out. A [`Class::Reliable`] frame (messages, receipts, replies) that would exceed the cap
//! marks the client a slow consumer: the unsent queue is discarded and replaced by a close 4009
//! (or, if a frame is half written, the connection is abandoned), and the connection ends. So a
//! client that stops reading holds at most `cap` bytes here and never slows anyone else.
//!
//! States: open → closing (a close frame is queued; nothing more is accepted) → drained (the
//! connection shuts the socket's write side). Closing also wakes the reader side of the task,
//! which stops reading; so does [`Outbox::interrupt`] (the drain), without closing. A write
//! error or an abandoned queue makes the outbox dead: nothing more is written.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::split::WriteHalf;
use crate::protocol::frame::close_frame;
use crate::protocol::CloseCode;

/// First allocation of an outbox that receives a frame.
const INITIAL_CAPACITY: usize = 512;

/// How a frame may be treated under back-pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Must arrive, or the connection ends (messages, receipts, replies).
    Reliable,
    /// May be dropped when the client is behind (typing, presence, pings).
    Volatile,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Dropped: volatile and the queue is over half full, or the outbox is closing.
    Dropped,
    /// Reliable and over the cap: the connection is being closed as a slow consumer.
    Overflow,
}

/// Outgoing bytes of one connection.
pub struct Outbox {
    cap: usize,
    buf: RefCell<Vec<u8>>,
    /// Bytes of `buf` already written.
    sent: Cell<usize>,
    closing: Cell<bool>,
    interrupted: Cell<bool>,
    dead: Cell<bool>,
    writer: Cell<Option<Waker>>,
    reader: Cell<Option<Waker>>,
}

impl Outbox {
    /// A new, open outbox holding at most `cap` queued bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: RefCell::default(),
            sent: Cell::new(0),
            closing: Cell::new(false),
            interrupted: Cell::new(false),
            dead: Cell::new(false),
            writer: Cell::new(None),
            reader: Cell::new(None),
        }
    }

    /// Queues an encoded frame of the given class.
    pub fn push_class(&self, frame: &[u8], class: Class) -> Pushed {
        if self.closing.get() {
            return Pushed::Dropped;
        }
        let mut buf = self.buf.borrow_mut();
        let after = buf.len() - self.sent.get() + frame.len();
        match class {
            Class::Volatile if after > self.cap / 2 => return Pushed::Dropped,
            Class::Reliable if after > self.cap => {
                // Slow consumer: what is queued will not be read in time. Replace it with the
                // close frame, unless a frame is half written (then abandon the connection).
                if self.sent.get() == 0 {
                    *buf = close_frame(CloseCode::SlowConsumer).to_vec();
                } else {
                    *buf = Vec::new();
                    self.sent.set(0);
                    self.dead.set(true);
                }
                drop(buf);
                self.closing.set(true);
                self.wake_writer();
                self.wake_reader();
                return Pushed::Overflow;
            }
            _ => {}
        }
        if buf.capacity() == 0 {
            // Idle outboxes hold no allocation; start with room for a few frames.
            buf.reserve(frame.len().max(INITIAL_CAPACITY));
        }
        buf.extend_from_slice(frame);
        drop(buf);
        self.wake_writer();
        Pushed::Queued
    }

    /// Queues a reliable frame; `false` if it was not queued.
    pub fn push(&self, frame: &[u8]) -> bool {
        self.push_class(frame, Class::Reliable) == Pushed::Queued
    }

    /// Queues a close frame with `code` and stops accepting frames. Idempotent.
    pub fn close(&self, code: CloseCode) {
        self.close_with(&close_frame(code));
    }

    /// Queues `frame` (an encoded close frame) and stops accepting frames. Idempotent.
    pub fn close_with(&self, frame: &Bytes) {
        if self.closing.replace(true) {
            return;
        }
        self.buf.borrow_mut().extend_from_slice(frame);
        self.wake_writer();
        self.wake_reader();
    }

    /// Asks the reader to stop reading (the drain) without closing.
    pub fn interrupt(&self) {
        self.interrupted.set(true);
        self.wake_reader();
    }

    /// Whether a close was queued.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.buf.borrow().len() - self.sent.get()
    }

    /// Whether everything queued was written (or can never be).
    pub fn is_drained(&self) -> bool {
        self.dead.get() || self.queued() == 0
    }

    /// Completes once the outbox is closing or interrupted. For the reader task only.
    pub async fn interrupted(&self) {
        self.reader_wait(|| self.closing.get() || self.interrupted.get())
            .await
    }

    /// Completes once the outbox is closing. For the reader task only.
    pub async fn closed(&self) {
        self.reader_wait(|| self.closing.get()).await
    }

    async fn reader_wait(&self, done: impl Fn() -> bool) {
        poll_fn(|cx| {
            if done() {
                return Poll::Ready(());
            }
            self.reader.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn wake_reader(&self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// Empties the queue as a writer would (benchmarks drive outboxes without sockets).
    #[doc(hidden)]
    pub fn take_for_bench(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.borrow_mut())
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Writes what is queued whenever there is something, forever: poll it next to whatever
    /// else the connection waits for. It never completes; a write error makes the outbox dead
    /// (and wakes the reader side, which then ends the connection).
    pub async fn drive(&self, socket: &mut WriteHalf) {
        poll_fn(|cx| {
            if !self.dead.get() {
                match self.poll_flush(cx, socket) {
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    Poll::Ready(Err(_)) => self.die(),
                }
            }
            Poll::<()>::Pending
        })
        .await
    }

    /// Writes what is queued and completes when nothing is (or a write failed).
    pub async fn flush(&self, socket: &mut WriteHalf) {
        poll_fn(|cx| {
            if self.dead.get() {
                return Poll::Ready(());
            }
            match self.poll_flush(cx, socket) {
                Poll::Ready(Ok(())) => Poll::Ready(()),
                Poll::Ready(Err(_)) => {
                    self.die();
                    Poll::Ready(())
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Shuts the socket's write side once the close frame is out.
    pub async fn shutdown(&self, socket: &mut WriteHalf) {
        if !self.dead.get() {
            let _ = socket.shutdown().await;
        }
    }

    fn die(&self) {
        self.dead.set(true);
        self.closing.set(true);
        *self.buf.borrow_mut() = Vec::new();
        self.sent.set(0);
        self.wake_reader();
    }

    /// Writes `buf[sent..]` until it is empty (Ready) or the socket is full (Pending, with the
    /// task's waker registered both for writability and for new pushes). Progress lives in
    /// `sent`, so dropping the future between polls loses nothing.
    fn poll_flush(&self, cx: &mut Context<'_>, socket: &mut WriteHalf) -> Poll<io::Result<()>> {
        loop {
            let result = {
                let buf = self.buf.borrow();
                if self.sent.get() >= buf.len() {
                    None
                } else {
                    Some(Pin::new(&mut *socket).poll_write(cx, &buf[self.sent.get()..]))
                }
            };
            match result {
                None => {
                    // Everything is out: going idle keeps no buffer (idle connections must
                    // stay small); wait for the next push.
                    *self.buf.borrow_mut() = Vec::new();
                    self.sent.set(0);
                    self.writer.set(Some(cx.waker().clone()));
                    return Poll::Ready(Ok(()));
                }
                Some(Poll::Ready(Ok(0))) => {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)))
                }
                Some(Poll::Ready(Ok(n))) => self.sent.set(self.sent.get() + n),
                Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                Some(Poll::Pending) => {
                    self.writer.set(Some(cx.waker().clone()));
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_frames_give_way_at_half_the_cap() {
        let o = Outbox::new(100);
        assert_eq!(o.push_class(&[0; 40], Class::Volatile), Pushed::Queued);
        assert_eq!(o.push_class(&[0; 20], Class::Volatile), Pushed::Dropped);
        assert_eq!(o.push_class(&[0; 50], Class::Reliable), Pushed::Queued);
        assert_eq!(o.queued(), 90);
        assert!(!o.is_closing());
    }

    #[test]
    fn reliable_overflow_replaces_the_queue_with_a_4009_close() {
        let o = Outbox::new(100);
        assert!(o.push(&[1; 80]));
        assert_eq!(o.push_class(&[1; 30], Class::Reliable), Pushed::Overflow);
        assert!(o.is_closing());
        let queued = o.take_for_bench();
        assert_eq!(queued, close_frame(CloseCode::SlowConsumer).to_vec());
        assert_eq!(o.push_class(&[1; 1], Class::Reliable), Pushed::Dropped);
    }

    #[test]
    fn closing_accepts_nothing_more() {
        let o = Outbox::new(1000);
        o.close(CloseCode::Normal);
        o.close(CloseCode::AuthFailed);
        assert!(!o.push(b"x"));
        assert_eq!(o.take_for_bench(), close_frame(CloseCode::Normal).to_vec());
    }
}
