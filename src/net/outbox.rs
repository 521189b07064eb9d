//! A connection's outgoing bytes.
//!
//! Everything queued for a socket during one pass of the event loop leaves in one write: the
//! outbox joins its worker's flush list once, and one flush task for the pass, which runs
//! after the tasks that queued, takes the whole queue and writes it without waiting
//! (uWebSockets' "cork"). Only what a socket cannot take at once is left to a writer task of
//! that connection's own, which waits for the socket and hands it back once the queue is
//! empty; an idle connection has no writer task. Frames arrive already encoded (a room event
//! is encoded once for all its recipients). A room event for a connection whose socket is idle
//! is copied once per worker into the pass's arena (`net::arena`) and the outbox keeps a span
//! of it; consecutive events merge into one span, so a pass's events leave in one vectored
//! write read from one shared copy, and what the socket does not take leaves the arena before
//! the writer task waits with it (up to a write chunk copied, the rest shared; `net::arena`). While a writer task has the socket, a frame is copied into the
//! queue's tail (a `memcpy`) as long as the connection is less than one write chunk behind;
//! once it is behind, further room events of 1 KiB or more are held by reference
//! ([`Outbox::push_event`]), so a burst that many slow readers hold costs its distinct bytes
//! once, not once per reader. A backlog leaves in vectored writes of at most [`WRITE_CHUNK`]
//! bytes, copying nothing.
//!
//! The queue is capped at `cap` bytes (`MAX_OUTBOX_BYTES`), counted as if every frame were
//! this connection's own. [`Class::Volatile`] frames (typing, presence, pings) are dropped
//! once half the cap is used, so they never push reliable ones out. A [`Class::Reliable`]
//! frame (messages, receipts, replies) that would exceed the cap marks the client a slow
//! consumer: the unsent queue is discarded, a close 4009 is queued in its place, and the
//! connection ends. So a client that stops reading holds at most `cap` bytes of server memory
//! here (plus the one write in flight) and never slows anyone else. Every outbox of a worker
//! adds to one thread-local total ([`queued_here`]), counted the same way (an upper bound on
//! the memory, which shared frames make smaller), which the worker keeps under
//! `OUTBOX_BUDGET` by shedding connections; and a connection whose socket accepts nothing
//! while bytes wait is found by the stall rule ([`Outbox::look`]). A connection over a
//! quarter of its cap behind that is still draining asks for its senders to be slowed down
//! ([`Outbox::pressing`], `core::pressure`).
//!
//! States: open → closing (a close frame is queued; nothing more is accepted; the writer sends
//! what is queued, then shuts the socket's write side) → done. Closing also wakes the reader,
//! which stops reading; so does [`Outbox::interrupt`] (the drain), without closing. Abort
//! ([`Outbox::abort`]) ends the writer even mid-write, for peers that never read. Each side
//! has a single waker slot: at most one waiting writer task and one reader task wait here.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::rc::{Rc, Weak};
use std::sync::OnceLock;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes};

use super::arena::{EventFrame, Span};
use super::split::Socket;
pub use crate::core::event::Class;
use crate::core::stall::{Look, StallWatch};
use crate::protocol::frame::close_frame;
use crate::protocol::CloseCode;

/// First allocation of an outbox that receives a frame.
const INITIAL_CAPACITY: usize = 512;
/// Largest single write: a long backlog leaves in bounded steps, so the stall rule sees its
/// progress as it goes. Also how far behind a connection may be before room events are held
/// by reference rather than copied.
pub const WRITE_CHUNK: usize = 256 * 1024;
/// Smallest frame held by reference when behind: copying a short frame costs less CPU than
/// counting a reference to it (two atomic operations and a 32-byte slot), and writing many
/// short parts would take many more system calls than writing one copied run of them.
const SHARE_MIN: usize = 1024;
/// Most frames gathered into one vectored write.
const MAX_SLICES: usize = 64;
/// A connection counts as draining for publisher back-pressure while its socket accepted
/// bytes this recently. Generous: Linux wakes a blocked writer only once a third
/// of the socket's send buffer (up to 4 MB) is free, so a reader draining 1 MB/s shows
/// progress about once a second.
const DRAINING_WITHIN_MS: u32 = 2000;

/// Milliseconds on a process-wide clock (wrapping): the unit of `core::pressure`, and of the
/// backlog progress stamps here. Never 0, which means "never".
pub fn now_ms() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    (epoch.elapsed().as_millis() as u32).max(1)
}

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

/// Frames held by reference (shared with other outboxes), oldest first. Boxed: only a
/// connection that fell behind has them, and idle connections must stay small.
#[derive(Default)]
struct Held {
    parts: VecDeque<Part>,
    /// Bytes in `parts`.
    len: usize,
}

/// A queued run of bytes not copied into the outbox's tail.
enum Part {
    /// A frame held by reference (shared with other outboxes), or a sealed tail.
    Bytes(Bytes),
    /// Frames in the worker's arena, kept only until the end of the pass.
    Span(Span),
}

impl Part {
    fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::Span(s) => s.len(),
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Part::Bytes(b) => b.advance(n),
            Part::Span(s) => s.advance(n),
        }
    }
}

/// The queued bytes, in order: `held` frames first, then the copied `tail`.
#[derive(Default)]
struct Queue {
    held: Option<Box<Held>>,
    /// Frames copied in after `held`.
    tail: Vec<u8>,
}

impl Queue {
    fn len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.len) + self.tail.len()
    }

    fn is_empty(&self) -> bool {
        self.held.is_none() && self.tail.is_empty()
    }

    fn copy_in(&mut self, frame: &[u8]) {
        if self.tail.capacity() == 0 {
            // Idle outboxes hold no allocation; start with room for a few frames.
            self.tail.reserve(frame.len().max(INITIAL_CAPACITY));
        }
        self.tail.extend_from_slice(frame);
    }

    fn hold(&mut self, frame: Bytes) {
        let held = self.held_after_tail();
        held.len += frame.len();
        held.parts.push_back(Part::Bytes(frame));
    }

    /// Queues an arena span, merged into the last part when it follows it.
    fn hold_span(&mut self, span: &Span) {
        let held = self.held_after_tail();
        held.len += span.len();
        if let Some(Part::Span(last)) = held.parts.back_mut() {
            if last.extend(span) {
                return;
            }
        }
        held.parts.push_back(Part::Span(span.clone()));
    }

    /// The held parts, with what was copied so far moved to their end (keeping the order).
    fn held_after_tail(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default);
        self.seal_tail();
        self.held.get_or_insert_with(Box::default)
    }

    /// Moves the copied tail to the end of `held` (no copy) if there is a `held`.
    fn seal_tail(&mut self) {
        if let Some(held) = &mut self.held {
            if !self.tail.is_empty() {
                let tail = Bytes::from(std::mem::take(&mut self.tail));
                held.len += tail.len();
                held.parts.push_back(Part::Bytes(tail));
            }
        }
    }

    /// Empties the queue, freeing its memory; returns how many bytes it held.
    fn clear(&mut self) -> usize {
        let n = self.len();
        *self = Queue::default();
        n
    }
}

/// `n` in 32 bits, saturating (byte counts of one outbox stay below its cap, at most 1 GiB).
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The right to write an outbox's socket. There is one per outbox with a socket, so whoever
/// holds it is the only writer; it is never handed back once the writer is done.
struct WriteTurn;

/// Outgoing bytes of one connection.
pub struct Outbox {
    /// Most bytes queued (`MAX_OUTBOX_BYTES`, at most 1 GiB, so 32 bits hold it and every
    /// count below it; every connection keeps an outbox, so its fields are kept small).
    cap: u32,
    queue: RefCell<Queue>,
    closing: Cell<bool>,
    interrupted: Cell<bool>,
    aborted: Cell<bool>,
    writer_done: Cell<bool>,
    /// Set while this outbox waits in its worker's flush list.
    listed: Cell<bool>,
    /// The right to write the socket while nobody writes to it: taken by the flusher for the
    /// length of one write, or by a [`Outbox::write_slowly`] task until the backlog is out;
    /// gone for good once the writer is done. `None` from the start without a socket.
    turn: Cell<Option<WriteTurn>>,
    /// The connection's socket, kept here so that socket and queue are one allocation; its
    /// reader reads it through [`Outbox::socket`]. `None` for outboxes emptied by hand.
    socket: Option<Socket>,
    /// This outbox, for the flush list (empty without a socket).
    me: Weak<Outbox>,
    /// The waiting writer's wake-up (a [`Outbox::write_slowly`] task; abort wakes it).
    writer: Cell<Option<Waker>>,
    reader: Cell<Option<Waker>>,
    /// Bytes the socket accepted (wrapping): the stall rule's progress counter.
    written: Cell<u32>,
    /// Whether the writer holds bytes it has not finished writing.
    writing: Cell<bool>,
    /// Bytes the writer took from the queue and has not written yet (they count for the cap).
    in_flight: Cell<u32>,
    /// When the socket last accepted bytes ([`now_ms`]; 0 = never).
    drained_at: Cell<u32>,
    /// The stall rule's state, advanced by [`Outbox::look`].
    watch: Cell<StallWatch>,
}

/// The reader's wait for [`Outbox::interrupted`] or [`Outbox::closed`]. A named future (16
/// bytes) rather than an `async fn` (64): it sits in every idle connection's task.
pub struct ReaderWait<'a> {
    outbox: &'a Outbox,
    closing_only: bool,
}

impl std::future::Future for ReaderWait<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let o = self.outbox;
        if o.closing.get() || (!self.closing_only && o.interrupted.get()) {
            return Poll::Ready(());
        }
        o.reader.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        queued_sub(self.queue.get_mut().len());
    }
}

impl Outbox {
    /// A new, open outbox holding at most `cap` queued bytes, with no socket: its queue is
    /// emptied by hand (tests, benchmarks).
    pub fn new(cap: usize) -> Self {
        Self::with(cap, None, Weak::new())
    }

    /// A new, open outbox for `socket`, flushed by the worker's flusher. Must be called on a
    /// monoio worker thread (the flusher is spawned there on first use).
    pub fn attached(cap: usize, socket: Socket) -> Rc<Self> {
        Rc::new_cyclic(|me| Self::with(cap, Some(socket), me.clone()))
    }

    fn with(cap: usize, socket: Option<Socket>, me: Weak<Outbox>) -> Self {
        Self {
            cap: to_u32(cap),
            queue: RefCell::default(),
            closing: Cell::new(false),
            interrupted: Cell::new(false),
            aborted: Cell::new(false),
            writer_done: Cell::new(false),
            listed: Cell::new(false),
            turn: Cell::new(socket.as_ref().map(|_| WriteTurn)),
            socket,
            me,
            writer: Cell::new(None),
            reader: Cell::new(None),
            written: Cell::new(0),
            writing: Cell::new(false),
            in_flight: Cell::new(0),
            drained_at: Cell::new(0),
            watch: Cell::new(StallWatch::default()),
        }
    }

    /// One look of the stall rule (see `core::stall`): has the socket accepted bytes since
    /// the last look, and is anything waiting?
    pub fn look(&self) -> Look {
        let pending = self.writing.get() || !self.queue.borrow().is_empty();
        let mut watch = self.watch.get();
        let look = watch.look(self.written.get(), pending);
        self.watch.set(watch);
        look
    }

    /// Queues a copy of an encoded frame of the given class.
    pub fn push_class(&self, frame: &[u8], class: Class) -> Pushed {
        self.push_with(frame.len(), class, |q, _| q.copy_in(frame))
    }

    /// Queues a room event's frame, shared with its other recipients. While the socket is
    /// idle (this pass's flush writes it) the outbox keeps a span of the worker's one copy
    /// (`net::arena`). While a waiting writer has the socket, the frame is copied as long as
    /// the connection keeps up (cheaper than counting a reference), and held by reference once
    /// it is a write chunk behind, unless it is shorter than `SHARE_MIN`.
    pub fn push_event(&self, event: &mut EventFrame<'_>, class: Class) -> Pushed {
        let frame = event.bytes();
        let idle = self.turn_here();
        self.push_with(frame.len(), class, |q, pending| {
            if idle {
                q.hold_span(event.span())
            } else if pending < WRITE_CHUNK || frame.len() < SHARE_MIN {
                q.copy_in(frame)
            } else {
                q.hold(frame.clone())
            }
        })
    }

    /// The cap and class rules, then `add` (which queues exactly `len` bytes; it is told how
    /// many are pending already).
    fn push_with(&self, len: usize, class: Class, add: impl FnOnce(&mut Queue, usize)) -> Pushed {
        if self.closing.get() {
            return Pushed::Dropped;
        }
        let mut queue = self.queue.borrow_mut();
        let pending = queue.len() + self.in_flight.get() as usize;
        let after = pending + len;
        match class {
            Class::Volatile if after > self.cap as usize / 2 => return Pushed::Dropped,
            Class::Reliable if after > self.cap as usize => {
                // Slow consumer: what is queued will not be read in time; replace it with
                // the close frame and let the connection end.
                queued_sub(queue.clear());
                let close = close_frame(CloseCode::SlowConsumer);
                queue.copy_in(&close);
                queued_add(close.len());
                drop(queue);
                self.closing.set(true);
                self.wake_writer();
                self.wake_reader();
                return Pushed::Overflow;
            }
            _ => {}
        }
        if len == 0 {
            return Pushed::Queued;
        }
        add(&mut queue, pending);
        queued_add(len);
        drop(queue);
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
        self.queue.borrow_mut().copy_in(frame);
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
        queued_sub(self.queue.borrow_mut().clear());
        self.abort();
    }

    /// Whether this connection should slow down the senders of what it receives: over a
    /// quarter of its cap behind, and its socket accepted bytes in the last
    /// `DRAINING_WITHIN_MS` (a reader that is not draining is left to the stall rule;
    /// slowing senders for it would help nobody). Reads the clock only when behind.
    pub fn pressing(&self) -> bool {
        if !self.behind() {
            return false;
        }
        let at = self.drained_at.get();
        at != 0 && now_ms().wrapping_sub(at) < DRAINING_WITHIN_MS
    }

    /// Whether the connection counts as draining (see `core::stall::StallWatch::draining`).
    pub fn draining(&self) -> bool {
        self.watch.get().draining(self.written.get())
    }

    /// Ends the writer now, even in the middle of a write (peers that never read).
    pub fn abort(&self) {
        self.closing.set(true);
        self.aborted.set(true);
        if self.turn.take().is_some() {
            // Nobody is writing: the writer is done now.
            self.writer_done.set(true);
        }
        self.wake_writer();
        self.wake_reader();
    }

    /// Whether a close was queued.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// The writer's state, for the log line of a stall close: whether a write is in progress
    /// (waiting for the socket) or the writer waits for a wake-up with bytes queued.
    pub fn writer_state(&self) -> &'static str {
        match (self.writing.get(), self.writer_done.get()) {
            (_, true) => "ended",
            (true, _) => "writing",
            (false, _) if self.queue.borrow().is_empty() => "idle",
            (false, _) => "queued, not writing",
        }
    }

    /// Bytes waiting to be written, including those of the write in progress.
    pub fn queued(&self) -> usize {
        self.queue.borrow().len() + self.in_flight.get() as usize
    }

    /// Completes once the outbox is closing or interrupted. For the reader task only.
    pub fn interrupted(&self) -> ReaderWait<'_> {
        ReaderWait {
            outbox: self,
            closing_only: false,
        }
    }

    /// Completes once the outbox is closing. For the reader task only.
    pub fn closed(&self) -> ReaderWait<'_> {
        ReaderWait {
            outbox: self,
            closing_only: true,
        }
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
        let mut queue = self.queue.borrow_mut();
        let mut out = Vec::with_capacity(queue.len());
        for part in queue.held.iter().flat_map(|h| h.parts.iter()) {
            match part {
                Part::Bytes(b) => out.extend_from_slice(b),
                Part::Span(s) => out.extend_from_slice(s.bytes_in(&s.chunk())),
            }
        }
        out.extend_from_slice(&queue.tail);
        queued_sub(queue.clear());
        out
    }

    /// Something was queued (or the outbox closed): have it written. An outbox whose socket is
    /// idle joins its worker's flush list, once per pass; one whose socket a waiting writer
    /// holds is left to that writer, which looks at the queue again when its write is done;
    /// a waiting writer is also woken, which matters only for abort.
    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
        if self.listed.get() || self.writer_done.get() {
            return;
        }
        if let (true, Some(me)) = (self.turn_here(), self.me.upgrade()) {
            self.listed.set(true);
            flusher::list(me);
        }
    }

    /// Whether nobody writes the socket now: the next flush pass will (see `wake_writer`).
    fn turn_here(&self) -> bool {
        let present = self.turn.take();
        let here = present.is_some();
        self.turn.set(present);
        here
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

    /// The socket, for its reader ([`super::split::Input`]); an error for an outbox made
    /// without one (there is nothing to read).
    pub fn socket(&self) -> std::io::Result<&Socket> {
        self.socket.as_ref().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotConnected, "outbox without a socket")
        })
    }

    /// The socket, for the holder of the write `turn` (there is one whenever a turn exists).
    fn socket_for(&self, _turn: &mut WriteTurn) -> std::io::Result<&Socket> {
        self.socket()
    }

    /// Counts `n` bytes the socket accepted.
    fn progress(&self, n: usize) {
        // Only change matters to the stall rule: wrapping keeps the counter small.
        self.written.set(self.written.get().wrapping_add(n as u32));
        self.in_flight
            .set(self.in_flight.get().saturating_sub(to_u32(n)));
        queued_sub(n);
        if n > 0 {
            // Every write, not only those of a backlog: a backlog forms while the writer waits
            // for a send buffer of megabytes to drain (see DRAINING_WITHIN_MS), so the last
            // progress before it formed is what says the reader drains. A clock read (tens of
            // ns) is small next to the system call that wrote the bytes.
            self.drained_at.set(now_ms());
        }
    }

    /// Over a quarter of the cap queued: far enough behind to slow down senders.
    fn behind(&self) -> bool {
        self.queued() > self.cap as usize / 4
    }

    /// Writes all of `data` in steps of at most [`WRITE_CHUNK`], counting what the socket
    /// accepts as it goes.
    async fn write_counted(&self, turn: &mut WriteTurn, mut data: &[u8]) -> std::io::Result<()> {
        let socket = self.socket_for(turn)?;
        while !data.is_empty() {
            let chunk = &data[..data.len().min(WRITE_CHUNK)];
            let n = poll_fn(|cx| socket.poll_write(cx, chunk)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.progress(n);
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes every part of `parts` in vectored steps (see [`Outbox::write_step`]), waiting
    /// for the socket as needed.
    async fn write_parts(
        &self,
        turn: &mut WriteTurn,
        parts: &mut VecDeque<Part>,
    ) -> std::io::Result<()> {
        let socket = self.socket_for(turn)?;
        while !parts.is_empty() {
            let n =
                poll_fn(|cx| self.write_step(parts, |s| socket.poll_write_vectored(cx, s))).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Writes what the socket takes of `parts` now, without waiting.
    fn write_parts_now(
        &self,
        turn: &mut WriteTurn,
        parts: &mut VecDeque<Part>,
    ) -> std::io::Result<()> {
        let socket = self.socket_for(turn)?;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while !parts.is_empty() {
            match self.write_step(parts, |s| socket.poll_write_vectored(&mut cx, s)) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// One vectored write from the front of `parts`: at most [`WRITE_CHUNK`] bytes and
    /// [`MAX_SLICES`] parts, and spans of one arena chunk only (the chunk is borrowed for the
    /// write). What the socket accepts is counted and dropped from `parts`.
    fn write_step(
        &self,
        parts: &mut VecDeque<Part>,
        write: impl FnOnce(&[IoSlice<'_>]) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        let polled = {
            let first_span = parts.iter().find_map(|p| match p {
                Part::Span(s) => Some(s),
                Part::Bytes(_) => None,
            });
            let chunk = first_span.map(Span::chunk);
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let (mut count, mut total) = (0, 0);
            for part in parts.iter().take(MAX_SLICES) {
                if total >= WRITE_CHUNK {
                    break;
                }
                let bytes: &[u8] = match (part, first_span, &chunk) {
                    (Part::Bytes(b), _, _) => b,
                    (Part::Span(s), Some(first), Some(chunk)) if s.same_chunk(first) => {
                        s.bytes_in(chunk)
                    }
                    // Another chunk: the next step borrows it.
                    (Part::Span(_), _, _) => break,
                };
                let take = bytes.len().min(WRITE_CHUNK - total);
                slices[count] = IoSlice::new(&bytes[..take]);
                count += 1;
                total += take;
            }
            write(&slices[..count])
        };
        if let Poll::Ready(Ok(n)) = polled {
            self.progress(n);
            let mut left = n;
            while left > 0 {
                let Some(front) = parts.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    parts.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        polled
    }

    /// Writes what the socket takes of `data` now, without waiting: the bytes written.
    fn write_now(&self, turn: &mut WriteTurn, data: &[u8]) -> std::io::Result<usize> {
        let socket = self.socket_for(turn)?;
        // A write that cannot go on registers this no-op waker; the waiting write that follows
        // registers the task's own before it sleeps.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut done = 0;
        while done < data.len() {
            let chunk = &data[done..data.len().min(done + WRITE_CHUNK)];
            match socket.poll_write(&mut cx, chunk) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.progress(n);
                    done += n;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(done)
    }

    /// Writes `rest` and then the `held` parts, waiting for the socket as needed, unless the
    /// writer is aborted first; whether everything was written.
    async fn write_rest(&self, turn: &mut WriteTurn, rest: &[u8], held: Option<Box<Held>>) -> bool {
        monoio::select! {
            r = async {
                self.write_counted(turn, rest).await?;
                match held {
                    // Boxed too: its 64 slices are large, and rare.
                    Some(mut held) => Box::pin(self.write_parts(turn, &mut held.parts)).await,
                    None => Ok(()),
                }
            } => r.is_ok(),
            _ = self.abort_signal() => false,
        }
    }

    /// Takes the whole queue (the copied bytes and any held parts, counted as in flight) and
    /// writes what the socket takes of it now. `Ok` gives the bytes, how many
    /// were written, and the held parts; `writing` stays set unless everything was written.
    fn write_queue_now(
        &self,
        turn: &mut WriteTurn,
    ) -> std::io::Result<(Vec<u8>, usize, Option<Box<Held>>)> {
        let (data, mut held) = {
            let mut queue = self.queue.borrow_mut();
            self.in_flight.set(to_u32(queue.len()));
            queue.seal_tail();
            let held = queue.held.take();
            (std::mem::take(&mut queue.tail), held)
        };
        self.writing.set(true);
        let written = match held.as_deref_mut() {
            // Sealed: with held parts, everything queued is in them and `data` is empty.
            Some(h) => self.write_parts_now(turn, &mut h.parts).map(|()| 0),
            None => self.write_now(turn, &data),
        };
        if let (Some(h), Ok(_)) = (held.as_deref_mut(), &written) {
            // The rest waits for the socket: take it out of the arena rather than pin a chunk
            // for as long as this reader takes. Up to a write chunk is copied for this reader
            // alone (as frames queued while it keeps up are); past that, the reader shares one
            // frozen copy of the chunk with every other reader left behind in this pass.
            let mut own = 0;
            for part in h.parts.iter_mut() {
                if let Part::Span(span) = part {
                    let bytes = if own + span.len() <= WRITE_CHUNK {
                        own += span.len();
                        span.to_bytes()
                    } else {
                        span.to_shared_bytes()
                    };
                    *part = Part::Bytes(bytes);
                }
            }
        }
        if held.as_ref().is_some_and(|h| h.parts.is_empty()) {
            held = None;
        }
        let done = matches!(written, Ok(n) if n == data.len() && held.is_none());
        if written.is_err() || done {
            self.writing.set(false);
        }
        Ok((data, written?, held))
    }

    /// The writer failed or was aborted with the `turn` in hand: what was not written leaves
    /// the budget, the outbox accepts nothing more, and the reader is told (the peer is gone
    /// or never reads). The turn ends: nothing writes the socket again.
    fn fail(&self, _turn: WriteTurn) {
        queued_sub(self.in_flight.replace(0) as usize);
        queued_sub(self.queue.borrow_mut().clear());
        self.closing.set(true);
        self.writer_done.set(true);
        self.wake_reader();
    }

    /// Written everything, with the `turn` in hand: once closing, shut the write side and
    /// end; otherwise give the turn back for the next flush.
    fn idle(&self, turn: WriteTurn) {
        if self.closing.get() {
            let mut cx = std::task::Context::from_waker(Waker::noop());
            if let Some(socket) = &self.socket {
                // `shutdown(SHUT_WR)` is one system call that never waits.
                let _ = socket.poll_shutdown(&mut cx);
            }
            self.writer_done.set(true);
        } else {
            self.turn.set(Some(turn));
        }
    }

    /// What the flusher does for this outbox, called directly (benchmarks time the write path
    /// without the scheduler around it).
    #[doc(hidden)]
    pub fn flush_for_bench(&self) {
        self.flush()
    }

    /// One flush by a flush pass of the worker: writes what is queued without waiting. What the
    /// socket cannot take now is left to a task of its own ([`Outbox::write_slowly`]), so an
    /// idle connection has no writer task at all.
    fn flush(&self) {
        self.listed.set(false);
        let Some(mut turn) = self.turn.take() else {
            return; // a waiting writer has it, or the writer is done
        };
        if self.aborted.get() {
            return self.fail(turn);
        }
        if self.queue.borrow().is_empty() {
            return self.idle(turn);
        }
        match self.write_queue_now(&mut turn) {
            Err(_) => self.fail(turn),
            // Going idle keeps no buffer: `data` is freed here.
            Ok((data, n, None)) if n == data.len() => self.idle(turn),
            Ok((data, n, held)) => {
                let Some(me) = self.me.upgrade() else {
                    return self.fail(turn);
                };
                monoio::spawn(async move { me.write_slowly(turn, data, n, held).await });
            }
        }
    }

    /// A connection the socket could not take whole: writes the rest of `data` from `done`,
    /// then `held`, waiting for the socket as needed, then whatever was queued meanwhile, and
    /// hands the socket back to the flusher once the queue is empty. Ends early on failure or
    /// abort.
    async fn write_slowly(
        &self,
        mut turn: WriteTurn,
        mut data: Vec<u8>,
        mut done: usize,
        mut held: Option<Box<Held>>,
    ) {
        loop {
            let written = self.write_rest(&mut turn, &data[done..], held).await;
            self.writing.set(false);
            if !written || self.aborted.get() {
                return self.fail(turn);
            }
            if self.queue.borrow().is_empty() {
                drop(data);
                return self.idle(turn);
            }
            match self.write_queue_now(&mut turn) {
                Ok(next) => (data, done, held) = next,
                Err(_) => return self.fail(turn),
            }
        }
    }
}

/// The worker's flusher: writes every outbox that received frames, once per pass of the event
/// loop, after the tasks that queued them ran (uWebSockets' "cork"). A pass is one short task,
/// spawned when the first outbox is listed, instead of a writer task per connection: an idle
/// connection keeps no task for writing (measured: 144 bytes each), and a pass that reaches 32
/// sockets runs one task, not 32. A pass task belongs to the runtime that runs it, so nothing
/// outlives a runtime on its thread (a long-lived flusher would: its waker, kept here, keeps
/// its task alive after its runtime is gone).
mod flusher {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::Outbox;

    #[derive(Default)]
    struct Flusher {
        /// Outboxes to write, in the order they were first queued to in this pass.
        listed: RefCell<Vec<Rc<Outbox>>>,
        /// Whether a pass task is spawned and has not taken the list yet.
        pending: Cell<bool>,
    }

    thread_local! {
        static FLUSHER: Flusher = Flusher::default();
    }

    /// Clears `pending` however the pass ends, run or dropped unrun with its runtime.
    struct Pending;

    impl Drop for Pending {
        fn drop(&mut self) {
            // `try_with`: the thread's locals may already be gone at thread exit.
            let _ = FLUSHER.try_with(|f| f.pending.set(false));
        }
    }

    /// Lists `outbox` for the next pass (the caller lists each outbox once per pass).
    pub(super) fn list(outbox: Rc<Outbox>) {
        FLUSHER.with(|f| {
            f.listed.borrow_mut().push(outbox);
            if !f.pending.replace(true) {
                let pending = Pending;
                monoio::spawn(async move {
                    let mut batch = FLUSHER.with(|f| std::mem::take(&mut *f.listed.borrow_mut()));
                    // From here on, a new listing needs a new pass.
                    drop(pending);
                    for outbox in batch.drain(..) {
                        outbox.flush();
                    }
                    crate::net::arena::end_of_pass();
                    // Keep the list's allocation for the next pass.
                    FLUSHER.with(|f| {
                        let mut listed = f.listed.borrow_mut();
                        if listed.is_empty() {
                            *listed = batch;
                        }
                    });
                });
            }
        })
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
    fn a_connection_behind_holds_room_events_by_reference_in_order() {
        let o = Outbox::new(64 << 20);
        let copied = Bytes::from(vec![1u8; WRITE_CHUNK - 10]);
        assert_eq!(
            o.push_event(&mut EventFrame::new(&copied), Class::Reliable),
            Pushed::Queued
        );
        // Still under one chunk behind: copied.
        assert!(o.queue.borrow().held.is_none());
        let second = Bytes::from(vec![2u8; 4096]);
        let third = Bytes::from(vec![3u8; 4096]);
        assert_eq!(
            o.push_event(&mut EventFrame::new(&second), Class::Reliable),
            Pushed::Queued
        );
        // Now behind: the next event is the caller's bytes, not a copy.
        assert_eq!(
            o.push_event(&mut EventFrame::new(&third), Class::Reliable),
            Pushed::Queued
        );
        assert!(o.push(b"reply"));
        {
            let queue = o.queue.borrow();
            let held = queue.held.as_ref().expect("held parts");
            assert!(
                matches!(held.parts.back(), Some(Part::Bytes(b)) if b.as_ptr() == third.as_ptr())
            );
            assert!(
                queue.tail == b"reply",
                "the tail was sealed before the held frame"
            );
        }
        assert_eq!(o.queued(), copied.len() + 8192 + 5);
        let mut want = copied.to_vec();
        want.extend_from_slice(&second);
        want.extend_from_slice(&third);
        want.extend_from_slice(b"reply");
        assert!(
            o.take_for_bench() == want,
            "one order across copied and held frames"
        );
    }

    #[test]
    fn short_frames_are_copied_even_when_behind() {
        let o = Outbox::new(64 << 20);
        assert!(o.push(&vec![0; WRITE_CHUNK]));
        let short = Bytes::from(vec![1u8; SHARE_MIN - 1]);
        assert_eq!(
            o.push_event(&mut EventFrame::new(&short), Class::Reliable),
            Pushed::Queued
        );
        assert!(o.queue.borrow().held.is_none());
    }

    #[test]
    fn held_frames_count_for_the_cap_like_copies() {
        let o = Outbox::new(WRITE_CHUNK + 3000);
        assert!(o.push(&vec![0; WRITE_CHUNK]));
        let frame = Bytes::from(vec![1u8; 2000]);
        assert_eq!(
            o.push_event(&mut EventFrame::new(&frame), Class::Reliable),
            Pushed::Queued
        );
        assert!(o.queue.borrow().held.is_some());
        assert_eq!(
            o.push_event(&mut EventFrame::new(&frame), Class::Volatile),
            Pushed::Dropped
        );
        assert_eq!(
            o.push_event(&mut EventFrame::new(&frame), Class::Reliable),
            Pushed::Overflow
        );
        assert_eq!(
            o.take_for_bench(),
            close_frame(CloseCode::SlowConsumer).to_vec()
        );
    }

    #[test]
    fn only_a_backlog_that_drains_presses_its_senders() {
        let o = Outbox::new(4000);
        assert!(o.push(&[0; 900]));
        o.progress(0);
        assert!(!o.pressing(), "under a quarter of the cap");
        assert!(o.push(&[0; 200]));
        assert!(!o.pressing(), "behind, but its socket never accepted bytes");
        o.progress(10);
        assert!(o.pressing(), "behind and draining");
        o.drained_at
            .set(now_ms().wrapping_sub(DRAINING_WITHIN_MS + 1).max(1));
        assert!(
            !o.pressing(),
            "behind, but no progress lately: the stall rule's case"
        );
    }

    #[test]
    fn a_backlog_that_formed_while_the_writer_waited_presses_its_senders_at_once() {
        // The writer wrote, then waited for the send buffer while the backlog grew: that
        // last write is the reader's progress, though the connection was not behind then.
        let o = Outbox::new(4000);
        assert!(o.push(&[0; 100]));
        o.progress(100);
        assert!(o.push(&[0; 1100]));
        assert!(o.pressing(), "behind, and its socket accepted bytes lately");
    }

    #[test]
    fn closing_accepts_nothing_more() {
        let o = Outbox::new(1000);
        o.close(CloseCode::Normal);
        o.close(CloseCode::AuthFailed);
        assert!(!o.push(b"x"));
        assert_eq!(o.take_for_bench(), close_frame(CloseCode::Normal).to_vec());
    }

    /// One runtime's flusher writes an attached outbox's frames to a real loopback socket,
    /// and closing shuts the write side (the peer reads EOF after the close frame).
    /// An outbox on the server side of a loopback connection, and its peer.
    async fn attached_pair(cap: usize) -> (Rc<Outbox>, std::net::TcpStream) {
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // A loopback connect completes from the listen backlog, before the accept.
        let peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let stream = super::super::stream::from_tcp(stream).expect("poll io");
        let outbox = Outbox::attached(cap, super::super::split::Socket::new(stream));
        (outbox, peer)
    }

    fn runtime() -> monoio::FusionRuntime<
        monoio::time::TimeDriver<monoio::IoUringDriver>,
        monoio::time::TimeDriver<monoio::LegacyDriver>,
    > {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    /// `n` room events of 64 KiB, each filled with its own byte.
    fn burst(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 64 * 1024]))
            .collect()
    }

    /// Closes `outbox`, waits (20 s at most) until its writer is done while a thread reads
    /// `peer`, and gives what `peer` got.
    async fn close_and_read(outbox: Rc<Outbox>, peer: std::net::TcpStream) -> Vec<u8> {
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut peer = peer;
            peer.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .expect("timeout");
            let mut got = Vec::new();
            peer.read_to_end(&mut got).expect("read to EOF");
            got
        });
        outbox.close(CloseCode::Normal);
        for _ in 0..20_000 {
            if outbox.writer_done() {
                break;
            }
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(outbox.writer_done(), "written and shut within 20 s");
        drop(outbox);
        // monoio closes the socket when the runtime runs again.
        monoio::time::sleep(std::time::Duration::from_millis(5)).await;
        reader.join().expect("reader")
    }

    #[test]
    fn room_events_for_idle_sockets_are_one_copy_held_as_one_span_each() {
        let events: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 100])).collect();
        let (got_a, got_b) = runtime().block_on(async {
            let (a, peer_a) = attached_pair(1 << 20).await;
            let (b, peer_b) = attached_pair(1 << 20).await;
            assert!(a.push(b"reply"));
            for event in &events {
                let mut frame = EventFrame::new(event);
                assert_eq!(a.push_event(&mut frame, Class::Reliable), Pushed::Queued);
                assert_eq!(b.push_event(&mut frame, Class::Reliable), Pushed::Queued);
            }
            {
                let (qa, qb) = (a.queue.borrow(), b.queue.borrow());
                let parts = |q: &Queue| -> Vec<(bool, usize)> {
                    let held = q.held.as_ref().expect("held parts");
                    held.parts
                        .iter()
                        .map(|p| (matches!(p, Part::Span(_)), p.len()))
                        .collect()
                };
                assert_eq!(parts(&qb), [(true, 300)], "three events, one span");
                assert_eq!(parts(&qa), [(false, 5), (true, 300)], "the reply first");
                let (Some(Part::Span(sa)), Some(Part::Span(sb))) = (
                    qa.held.as_ref().and_then(|h| h.parts.back()),
                    qb.held.as_ref().and_then(|h| h.parts.back()),
                ) else {
                    panic!("spans")
                };
                assert!(sa.same_chunk(sb), "both outboxes hold the one copy");
            }
            assert_eq!(a.queued(), 305);
            (
                close_and_read(a, peer_a).await,
                close_and_read(b, peer_b).await,
            )
        });
        let close = close_frame(CloseCode::Normal);
        let mut want_b: Vec<u8> = events.concat();
        want_b.extend_from_slice(&close);
        let mut want_a = b"reply".to_vec();
        want_a.extend_from_slice(&want_b);
        assert!(got_a == want_a, "a: reply, events, close in order");
        assert!(got_b == want_b, "b: events, close in order");
    }

    #[test]
    fn what_a_full_socket_cannot_take_is_copied_out_of_the_arena() {
        // 12 MiB: more than loopback's socket buffers take while the peer does not read, less
        // than one arena chunk holds.
        let events = burst(192);
        let got = runtime().block_on(async {
            let (o, peer) = attached_pair(64 << 20).await;
            let mut probe = None;
            for event in &events {
                let mut frame = EventFrame::new(event);
                assert_eq!(o.push_event(&mut frame, Class::Reliable), Pushed::Queued);
                probe = Some(frame.span().clone());
            }
            let probe = probe.expect("a span");
            assert!(probe.refs() >= 3, "the outbox holds spans of the chunk");
            // Let the flush pass run: it writes what the socket takes and leaves the rest to a
            // writer task of the connection's own.
            monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(o.queued() > 0, "the peer has not read: a backlog is left");
            // The arena let go of the chunk too: the burst grew it past what it keeps.
            assert_eq!(
                probe.refs(),
                1,
                "only the probe refers to the chunk: the backlog is a copy"
            );
            close_and_read(o, peer).await
        });
        let mut want: Vec<u8> = events.concat();
        want.extend_from_slice(&close_frame(CloseCode::Normal));
        assert_eq!(got.len(), want.len());
        assert!(got == want, "every byte, in order");
    }

    #[test]
    fn readers_left_behind_by_one_burst_share_one_copy_of_it() {
        // 8 MiB in one pass to two readers that do not read: each socket takes a few MiB at
        // most, and the rest, over a write chunk each, is one frozen copy shared by both.
        let events = burst(128);
        let got = runtime().block_on(async {
            let (a, peer_a) = attached_pair(64 << 20).await;
            let (b, peer_b) = attached_pair(64 << 20).await;
            let before = crate::net::arena::freezes();
            let mut probe = None;
            for event in &events {
                let mut frame = EventFrame::new(event);
                assert_eq!(a.push_event(&mut frame, Class::Reliable), Pushed::Queued);
                assert_eq!(b.push_event(&mut frame, Class::Reliable), Pushed::Queued);
                probe = Some(frame.span().clone());
            }
            let probe = probe.expect("a span");
            monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert!(
                a.queued() > WRITE_CHUNK && b.queued() > WRITE_CHUNK,
                "both behind"
            );
            assert_eq!(
                crate::net::arena::freezes() - before,
                1,
                "one copy of the burst for both readers"
            );
            // Only the probe: the backlogs do not pin the chunk, and the arena let go of it
            // (the burst grew it past what it keeps between passes).
            assert_eq!(probe.refs(), 1, "the backlogs do not pin the arena's chunk");
            drop(probe);
            let got_a = close_and_read(a, peer_a).await;
            let got_b = close_and_read(b, peer_b).await;
            (got_a, got_b)
        });
        let mut want: Vec<u8> = events.concat();
        want.extend_from_slice(&close_frame(CloseCode::Normal));
        for got in [got.0, got.1] {
            assert_eq!(got.len(), want.len());
            assert!(got == want, "every byte, in order");
        }
    }

    fn flush_once_in_a_runtime(payload: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        let (outbox, mut peer) = rt.block_on(async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            // A loopback connect completes from the listen backlog, before the accept.
            let peer = std::net::TcpStream::connect(listener.local_addr().expect("addr"))
                .expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            let stream = super::super::stream::from_tcp(stream).expect("poll io");
            let outbox = Outbox::attached(1 << 20, super::super::split::Socket::new(stream));
            assert!(outbox.push(payload));
            outbox.close(CloseCode::Normal);
            for _ in 0..2000 {
                if outbox.writer_done() {
                    break;
                }
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(
                outbox.writer_done(),
                "the flusher wrote and shut the socket within 2 s"
            );
            (outbox, peer)
        });
        drop(outbox);
        drop(rt);
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        peer.read_to_end(&mut got).expect("read to EOF");
        got
    }

    #[test]
    fn each_runtime_on_a_thread_gets_a_flusher_of_its_own() {
        let close = close_frame(CloseCode::Normal);
        for payload in [&b"first runtime"[..], b"second runtime"] {
            let got = flush_once_in_a_runtime(payload);
            assert_eq!(&got[..payload.len()], payload);
            assert_eq!(&got[payload.len()..], &close[..]);
        }
    }
}
