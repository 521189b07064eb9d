//! Read and write halves of one socket, for the connection's reader task and writer task.
//!
//! Both halves live on the same worker thread and are only polled from it, one at a time, so a
//! `RefCell` is enough: a borrow lasts for one `poll_*` call and never overlaps another. The
//! read half first yields any bytes that arrived behind the upgrade request (a client may send
//! frames without waiting for the 101).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The reading side.
pub struct ReadHalf {
    stream: Rc<RefCell<TcpStreamPoll>>,
    prefix: BytesMut,
}

/// The writing side.
pub struct WriteHalf {
    stream: Rc<RefCell<TcpStreamPoll>>,
}

/// Splits `stream`; `prefix` holds bytes already read past the upgrade request.
pub fn split(stream: TcpStreamPoll, prefix: BytesMut) -> (ReadHalf, WriteHalf) {
    let stream = Rc::new(RefCell::new(stream));
    (
        ReadHalf {
            stream: stream.clone(),
            prefix,
        },
        WriteHalf { stream },
    )
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let mut s = self.stream.borrow_mut();
        Pin::new(&mut *s).poll_read(cx, buf)
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
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.stream.borrow_mut();
        Pin::new(&mut *s).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.stream.borrow_mut();
        Pin::new(&mut *s).poll_shutdown(cx)
    }
}
