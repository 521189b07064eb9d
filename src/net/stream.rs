//! An accepted TCP connection's socket in the form the worker drives it: readiness I/O
//! (monoio's poll-io) over the bare file descriptor, in 8 bytes.
//!
//! monoio's `TcpStreamPoll` is 80 bytes, 64 of them a cache of the connection's two socket
//! addresses. Every idle connection keeps its socket (in its outbox), and the gateway reads
//! the peer address once, before this conversion (admission by IP), so the cache is dead
//! weight. [`Stream`] is monoio's smallest poll-io stream, `UnixStreamPoll`, which is the
//! shared descriptor alone: its operations are the socket calls `recv`, `send`, `writev` and
//! `shutdown(SHUT_WR)`, the very calls `TcpStreamPoll` makes, and the gateway calls nothing
//! else on it. Measured: 64 bytes less per idle connection (BENCHMARKS.md, idle memory).
//!
//! Guarantees: the descriptor has exactly one owner at every step of [`from_tcp`] and is
//! closed once, when the [`Stream`] drops (or when a step fails). Not guaranteed: address or
//! credential queries on a [`Stream`] (they would answer as for a Unix socket); take them
//! from the `TcpStream` before the conversion.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};

use monoio::net::unix::stream_poll::UnixStreamPoll;
use monoio::net::{TcpStream, UnixStream};

/// A connected TCP socket, driven with readiness I/O (see the module doc).
pub type Stream = UnixStreamPoll;

/// Converts an accepted (and configured: `TCP_NODELAY` is set before) `tcp` stream.
///
/// The one `unsafe` block of the crate, for the measured 64 bytes per connection above:
/// monoio offers no safe way to move a descriptor from one stream type to another.
#[allow(unsafe_code)]
pub fn from_tcp(tcp: TcpStream) -> io::Result<Stream> {
    // Releases the descriptor without closing it (the stream was just accepted: nothing else
    // shares it).
    let fd = tcp.into_raw_fd();
    // SAFETY: `fd` is an open descriptor that nothing owns since `into_raw_fd` above; the std
    // stream takes sole ownership of it and closes it if it drops (on the error path below).
    let owned = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    UnixStream::from_std(owned)?
        .try_into_poll_io()
        .map_err(|(e, _)| e)
}
