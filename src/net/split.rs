//! The two sides of one socket: [`Input`] for the connection's reader, [`WriteHalf`] for its
//! outbox (written by the worker's flusher, or by a writer task while the socket is full).
//!
//! Both live on one worker thread and are polled one at a time, so a `RefCell` suffices: a
//! borrow lasts one `poll_*` call. [`Input`] keeps idle connections cheap: it waits for data
//! with no buffer of its own, reading into the worker's shared scratch buffer during the poll
//! and keeping only the bytes that arrived (its `staging`). The frame parser is created only
//! while those bytes are parsed (see `connection`). [`Feed`] counts every byte handed to the
//! parser, so the connection knows when the parser holds no partial frame and can be dropped.
//!
//! Guarantees: `staging` is freed as soon as the parser has taken all of it; [`Feed`] counts
//! exactly the bytes it hands over; [`Input::poll_fill`] reports EOF as `Ok(false)`.
//! Not guaranteed / not here: the halves are `!Send` (`Rc`) and stay on the worker that split
//! them; framing, limits and timeouts are the reader's.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes one read of the frame parser takes from the socket.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// The reading side: the socket plus bytes read but not yet parsed.
pub struct Input {
    stream: Rc<RefCell<TcpStreamPoll>>,
    staging: BytesMut,
}

/// The writing side.
pub struct WriteHalf {
    stream: Rc<RefCell<TcpStreamPoll>>,
}

/// Splits `stream`; `prefix` holds bytes that arrived behind the upgrade request.
pub fn split(stream: TcpStreamPoll, prefix: BytesMut) -> (Input, WriteHalf) {
    let stream = Rc::new(RefCell::new(stream));
    (
        Input {
            stream: stream.clone(),
            staging: prefix,
        },
        WriteHalf { stream },
    )
}

impl Input {
    /// Whether read bytes are waiting to be parsed.
    pub fn has_staged(&self) -> bool {
        !self.staging.is_empty()
    }

    /// Stages whatever the socket has, reading through `scratch` (a buffer shared by the
    /// worker's connections; borrowed only for this call); `Pending` (with `cx` registered)
    /// while it has nothing. `Ok(false)` on EOF. The reader's idle wait polls this directly, so
    /// an idle connection's task holds no future of its own for it.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &RefCell<Vec<u8>>,
    ) -> Poll<io::Result<bool>> {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        let mut s = self.stream.borrow_mut();
        match Pin::new(&mut *s).poll_read(cx, &mut buf) {
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
    fed: &'a Cell<u64>,
}

impl<'a> Feed<'a> {
    /// A feed adding to `fed`.
    pub fn new(input: &'a mut Input, fed: &'a Cell<u64>) -> Self {
        Self { input, fed }
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
            let mut s = this.input.stream.borrow_mut();
            if let Poll::Ready(r) = Pin::new(&mut *s).poll_read(cx, &mut small) {
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

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.stream.borrow_mut();
        Pin::new(&mut *s).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.stream.borrow_mut();
        Pin::new(&mut *s).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.stream.borrow_mut();
        Pin::new(&mut *s).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.stream.borrow_mut();
        Pin::new(&mut *s).poll_shutdown(cx)
    }
}
