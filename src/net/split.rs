//! The two sides of one socket: [`Input`] for the connection's reader, and the [`Socket`]
//! itself, which lives in the connection's outbox (written by the worker's flusher, or by a
//! writer task while the socket is full) so that a connection makes one allocation for its
//! socket and its outgoing queue.
//!
//! Both sides live on one worker thread and are polled one at a time, so a `RefCell` suffices:
//! a borrow lasts one `poll_*` call. [`Input`] keeps idle connections cheap: it waits for data
//! with no buffer of its own, reading into the worker's shared scratch buffer during the poll
//! and keeping only the bytes that arrived (its `staging`). The frame parser is created only
//! while those bytes are parsed (see `connection`). [`Feed`] counts every byte handed to the
//! parser, so the connection knows when the parser holds no partial frame and can be dropped.
//!
//! Guarantees: `staging` is freed as soon as the parser has taken all of it; [`Feed`] counts
//! exactly the bytes it hands over; [`Input::poll_fill`] reports EOF as `Ok(false)`.
//! Not guaranteed / not here: the sides are `!Send` (`Rc`) and stay on the worker that made
//! them; framing, limits and timeouts are the reader's; who may write when is the outbox's.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::outbox::Outbox;
use super::stream::Stream;

/// Most bytes one read of the frame parser takes from the socket.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// One connection's socket, borrowed for one poll at a time by its reader or its writer.
pub struct Socket(RefCell<Stream>);

impl Socket {
    /// Wraps `stream`.
    pub fn new(stream: Stream) -> Self {
        Self(RefCell::new(stream))
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }

    /// Writes what the socket takes of `buf` (`Pending` with `cx` registered if nothing).
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    /// Writes what the socket takes of `bufs`, in order.
    pub fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut stream = self.0.borrow_mut();
        match bufs {
            // One buffer (every socket of a quiet pass): `send` spares the kernel the iovec
            // import and file layer of `writev` (window 1, benches/syscalls.sh).
            [one] => Pin::new(&mut *stream).poll_write(cx, one),
            _ => Pin::new(&mut *stream).poll_write_vectored(cx, bufs),
        }
    }

    /// Shuts the write side (`shutdown(SHUT_WR)`).
    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_shutdown(cx)
    }
}

/// The reading side: bytes read but not yet parsed (the socket is read through the outbox
/// that holds it, which every caller has at hand: 8 bytes fewer in every idle task).
pub struct Input {
    staging: BytesMut,
}

impl Input {
    /// An input starting with `prefix`, the bytes that arrived behind the upgrade request.
    pub fn new(prefix: BytesMut) -> Self {
        Self { staging: prefix }
    }

    /// Whether read bytes are waiting to be parsed.
    pub fn has_staged(&self) -> bool {
        !self.staging.is_empty()
    }

    /// Stages whatever `outbox`'s socket has, reading through `scratch` (a buffer shared by the
    /// worker's connections; borrowed only for this call); `Pending` (with `cx` registered)
    /// while it has nothing. `Ok(false)` on EOF. The reader's idle wait polls this directly, so
    /// an idle connection's task holds no future of its own for it.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        scratch: &RefCell<Vec<u8>>,
    ) -> Poll<io::Result<bool>> {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        match outbox.socket()?.poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                self.staging.extend_from_slice(got);
                Poll::Ready(Ok(!got.is_empty()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An [`Input`] as seen by the frame parser, counting the bytes handed over.
pub struct Feed<'a> {
    input: &'a mut Input,
    outbox: &'a Outbox,
    fed: &'a Cell<u64>,
}

impl<'a> Feed<'a> {
    /// A feed of `input`, then of `outbox`'s socket, adding to `fed`.
    pub fn new(input: &'a mut Input, outbox: &'a Outbox, fed: &'a Cell<u64>) -> Self {
        Self { input, outbox, fed }
    }
}

impl AsyncRead for Feed<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if !this.input.staging.is_empty() {
            let n = this.input.staging.len().min(buf.remaining());
            buf.put_slice(&this.input.staging[..n]);
            this.input.staging.advance(n);
            if this.input.staging.is_empty() {
                // Release the staging allocation now rather than when the connection next idles.
                this.input.staging = BytesMut::new();
            }
        } else {
            // At most MAX_READ_AHEAD per read, whatever room the parser offers: fastwebsockets
            // offers all of its buffer's spare capacity and grows that buffer by doubling, so
            // a sender with megabytes waiting in the kernel would otherwise be read ahead by
            // megabytes (measured: 1-4 MiB buffers mid-burst), which is memory, and reading
            // that the sender's back-pressure pause could not stop.
            let mut chunk = [MaybeUninit::<u8>::uninit(); MAX_READ_AHEAD];
            let limit = buf.remaining().min(MAX_READ_AHEAD);
            let mut small = ReadBuf::uninit(&mut chunk[..limit]);
            if let Poll::Ready(r) = this.outbox.socket()?.poll_read(cx, &mut small) {
                r?;
            } else {
                return Poll::Pending;
            }
            buf.put_slice(small.filled());
        }
        this.fed
            .set(this.fed.get() + (buf.filled().len() - before) as u64);
        Poll::Ready(Ok(()))
    }
}
