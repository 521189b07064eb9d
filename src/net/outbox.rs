//! A connection's outgoing bytes.
//!
//! Everything queued for a socket during one pass of the event loop is appended to one buffer
//! and leaves in one write: the writer task is woken once, runs after the tasks that queued, and
//! takes the whole buffer (uWebSockets' "cork"). Frames arrive already encoded (a room event is
//! encoded once for all its recipients), so queuing is a `memcpy`.
//!
//! The queue is capped at `cap` bytes (`MAX_OUTBOX_BYTES`). [`Class::Volatile`] frames (typing,
//! presence, pings) are dropped once half the cap is used, so they never push reliable ones
//! out. A [`Class::Reliable`] frame (messages, receipts, replies) that would exceed the cap
//! marks the client a slow consumer: the unsent queue is discarded, a close 4009 is queued in
//! its place, and the connection ends. So a client that stops reading holds at most `cap`
//! bytes of server memory here (plus the one write in flight) and never slows anyone else.
//! Every outbox of a worker adds to one thread-local total ([`queued_here`]), which the
//! worker keeps under `OUTBOX_BUDGET` by shedding connections; and a connection whose socket
//! accepts nothing while bytes wait is found by the stall rule ([`Outbox::look`]).
//!
//! States: open → closing (a close frame is queued; nothing more is accepted; the writer sends
//! what is queued, then shuts the socket's write side) → done. Closing also wakes the reader,
//! which stops reading; so does [`Outbox::interrupt`] (the drain), without closing. Abort
//! ([`Outbox::abort`]) ends the writer even mid-write, for peers that never read. Each side
//! has a single waker slot: exactly one writer task and one reader task wait here.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::split::WriteHalf;
use crate::core::stall::{Look, StallWatch};
use crate::protocol::frame::close_frame;
use crate::protocol::CloseCode;

/// First allocation of an outbox that receives a frame.
const INITIAL_CAPACITY: usize = 512;
/// Largest single write: a long backlog leaves in bounded steps, so the stall rule sees its
/// progress as it goes.
const WRITE_CHUNK: usize = 256 * 1024;

thread_local! {
    /// Bytes queued (or being written) in every outbox of this thread, i.e. of one worker:
    /// what `OUTBOX_BUDGET` bounds. A thread-local, so idle connections carry nothing for it.
    static QUEUED: Cell<usize> = const { Cell::new(0) };
}

fn queued_add(n: usize) {
    QUEUED.with(|q| q.set(q.get() + n));
}

fn queued_sub(n: usize) {
    QUEUED.with(|q| q.set(q.get().saturating_sub(n)));
}

/// Bytes queued in every outbox of the calling thread (one worker's).
pub fn queued_here() -> usize {
    QUEUED.with(Cell::get)
}

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
    closing: Cell<bool>,
    interrupted: Cell<bool>,
    aborted: Cell<bool>,
    writer_done: Cell<bool>,
    writer: Cell<Option<Waker>>,
    reader: Cell<Option<Waker>>,
    /// Bytes the socket accepted (wrapping): the stall rule's progress counter.
    written: Cell<u32>,
    /// Whether the writer holds bytes it has not finished writing.
    writing: Cell<bool>,
    /// The stall rule's state, advanced by [`Outbox::look`].
    watch: Cell<StallWatch>,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        queued_sub(self.buf.get_mut().len());
    }
}

impl Outbox {
    /// A new, open outbox holding at most `cap` queued bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: RefCell::default(),
            closing: Cell::new(false),
            interrupted: Cell::new(false),
            aborted: Cell::new(false),
            writer_done: Cell::new(false),
            writer: Cell::new(None),
            reader: Cell::new(None),
            written: Cell::new(0),
            writing: Cell::new(false),
            watch: Cell::new(StallWatch::default()),
        }
    }

    /// One look of the stall rule (see `core::stall`): has the socket accepted bytes since
    /// the last look, and is anything waiting?
    pub fn look(&self) -> Look {
        let pending = self.writing.get() || !self.buf.borrow().is_empty();
        let mut watch = self.watch.get();
        let look = watch.look(self.written.get(), pending);
        self.watch.set(watch);
        look
    }

    /// Queues an encoded frame of the given class.
    pub fn push_class(&self, frame: &[u8], class: Class) -> Pushed {
        if self.closing.get() {
            return Pushed::Dropped;
        }
        let mut buf = self.buf.borrow_mut();
        let after = buf.len() + frame.len();
        match class {
            Class::Volatile if after > self.cap / 2 => return Pushed::Dropped,
            Class::Reliable if after > self.cap => {
                // Slow consumer: what is queued will not be read in time; replace it with
                // the close frame and let the connection end.
                queued_sub(buf.len());
                *buf = close_frame(CloseCode::SlowConsumer).to_vec();
                queued_add(buf.len());
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
        queued_add(frame.len());
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
        queued_add(frame.len());
        self.wake_writer();
        self.wake_reader();
    }

    /// Asks the reader to stop reading (the drain) without closing.
    pub fn interrupt(&self) {
        self.interrupted.set(true);
        self.wake_reader();
    }

    /// Drops everything queued now (the memory is freed at once) and aborts the writer: the
    /// budget sheds a connection this way.
    pub fn discard(&self) {
        let dropped = std::mem::take(&mut *self.buf.borrow_mut());
        queued_sub(dropped.len());
        self.abort();
    }

    /// Whether the connection counts as draining (see `core::stall::StallWatch::draining`).
    pub fn draining(&self) -> bool {
        self.watch.get().draining(self.written.get())
    }

    /// Ends the writer now, even in the middle of a write (peers that never read).
    pub fn abort(&self) {
        self.closing.set(true);
        self.aborted.set(true);
        self.wake_writer();
        self.wake_reader();
    }

    /// Whether a close was queued.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.buf.borrow().len()
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

    /// Whether the writer has finished (socket write side shut, failed or aborted).
    pub fn writer_done(&self) -> bool {
        self.writer_done.get()
    }

    /// Empties the queue as a writer would (benchmarks drive outboxes without sockets).
    #[doc(hidden)]
    pub fn take_for_bench(&self) -> Vec<u8> {
        let taken = std::mem::take(&mut *self.buf.borrow_mut());
        queued_sub(taken.len());
        taken
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    async fn abort_signal(&self) {
        poll_fn(|cx| {
            if self.aborted.get() {
                return Poll::Ready(());
            }
            self.writer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Writes all of `data` in steps of at most [`WRITE_CHUNK`], counting what the socket
    /// accepts as it goes.
    async fn write_counted(&self, socket: &mut WriteHalf, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = socket.write(&data[..data.len().min(WRITE_CHUNK)]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            // Only change matters to the stall rule: wrapping keeps the counter small.
            self.written.set(self.written.get().wrapping_add(n as u32));
            queued_sub(n);
            data = &data[n..];
        }
        Ok(())
    }

    /// The writer task: sends queued bytes until closing and drained, a write fails, or abort.
    pub async fn run_writer(&self, mut socket: WriteHalf) {
        let mut spare = Vec::new();
        loop {
            poll_fn(|cx| {
                if !self.buf.borrow().is_empty() || self.closing.get() {
                    Poll::Ready(())
                } else {
                    self.writer.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            if self.aborted.get() {
                break;
            }
            std::mem::swap(&mut *self.buf.borrow_mut(), &mut spare);
            if !spare.is_empty() {
                self.writing.set(true);
                let before = self.written.get();
                let written = monoio::select! {
                    r = self.write_counted(&mut socket, &spare) => r.is_ok(),
                    _ = self.abort_signal() => false,
                };
                self.writing.set(false);
                if !written {
                    // What was not written leaves the budget with this buffer.
                    let sent = self.written.get().wrapping_sub(before) as usize;
                    queued_sub(spare.len().saturating_sub(sent));
                    // The peer is gone (or never reads): stop accepting frames and let the
                    // reader finish.
                    self.closing.set(true);
                    self.wake_reader();
                    break;
                }
                spare.clear();
                let mut queued = self.buf.borrow_mut();
                if queued.is_empty() {
                    // Going idle: keep no buffers (idle connections must stay small).
                    spare = Vec::new();
                    *queued = Vec::new();
                }
            }
            if self.closing.get() && self.buf.borrow().is_empty() {
                let _ = socket.shutdown().await;
                break;
            }
        }
        self.writer_done.set(true);
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
    fn queued_bytes_without_progress_are_looked_at_as_waiting() {
        let o = Outbox::new(1000);
        assert_eq!(o.look(), Look::Idle);
        assert!(o.push(b"abc"));
        assert_eq!(o.look(), Look::Waiting);
        o.written.set(3);
        assert_eq!(o.look(), Look::Progress);
    }

    #[test]
    fn the_thread_total_follows_every_queue() {
        let base = queued_here();
        let a = Outbox::new(1000);
        let b = Outbox::new(1000);
        assert!(a.push(&[0; 100]) && b.push(&[0; 50]));
        assert_eq!(queued_here(), base + 150);
        a.discard();
        assert_eq!(queued_here(), base + 50);
        assert_eq!(b.take_for_bench().len(), 50);
        assert_eq!(queued_here(), base);
        let c = Outbox::new(1000);
        assert!(c.push(&[0; 70]));
        drop(c);
        assert_eq!(queued_here(), base, "a dropped outbox leaves the total");
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
