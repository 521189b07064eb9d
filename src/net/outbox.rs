//! A connection's outgoing bytes.
//!
//! Everything queued for a socket during one pass of the event loop is appended to one buffer
//! and leaves in one write: the writer task is woken once, runs after the tasks that queued, and
//! takes the whole buffer (uWebSockets' "cork"). Frames arrive already encoded (a room event is
//! encoded once for all its recipients), so queuing is a `memcpy`.
//!
//! States: open → closing (a close frame is queued; nothing more is accepted; the writer sends
//! what is queued, then shuts the socket's write side) → done. Closing also wakes the reader
//! task, which stops reading; so does [`Outbox::interrupt`] (the drain), without closing.
//! Each side has a single waker slot: exactly one writer task and one reader task wait here.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::split::WriteHalf;
use crate::protocol::frame::close_frame;
use crate::protocol::CloseCode;

/// First allocation of an outbox that receives a frame.
const INITIAL_CAPACITY: usize = 512;

/// Outgoing bytes of one connection.
#[derive(Default)]
pub struct Outbox {
    buf: RefCell<Vec<u8>>,
    closing: Cell<bool>,
    writer_done: Cell<bool>,
    interrupted: Cell<bool>,
    writer: Cell<Option<Waker>>,
    reader: Cell<Option<Waker>>,
}

impl Outbox {
    /// A new, open outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an encoded frame; returns `false` (and drops it) once closing.
    pub fn push(&self, frame: &[u8]) -> bool {
        if self.closing.get() {
            return false;
        }
        let mut buf = self.buf.borrow_mut();
        if buf.capacity() == 0 {
            // Idle outboxes hold no allocation; start with room for a few frames.
            buf.reserve(frame.len().max(INITIAL_CAPACITY));
        }
        buf.extend_from_slice(frame);
        drop(buf);
        self.wake_writer();
        true
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

    /// Whether the writer has finished (socket write side shut or failed).
    pub fn writer_done(&self) -> bool {
        self.writer_done.get()
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

    /// The writer task: sends queued bytes until closing and drained, or a write fails.
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
            std::mem::swap(&mut *self.buf.borrow_mut(), &mut spare);
            if !spare.is_empty() {
                if socket.write_all(&spare).await.is_err() {
                    // The peer is gone: stop accepting frames and let the reader finish.
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
