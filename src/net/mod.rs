//! The monoio shell: threads, sockets and timers around the sans-IO core.
//!
//! - [`worker`]: one thread per core, each a monoio runtime (io_uring, or epoll where io_uring
//!   is unavailable) with its own `SO_REUSEPORT` listener and its [`crate::core::hub::Hub`]
//!   (connections, rooms, typing timers, presence shard), whose effects it carries out.
//! - [`api`]: the server API's requests (on `WS_PORT` or `API_PORT`), rules in `crate::api`.
//! - [`health`]: what `/metrics` and `/readyz` read from a worker (`crate::http::Health`).
//! - [`handshake`]: the HTTP/1.1 upgrade, parsed with httparse; Origin and token rules.
//! - [`connection`]: a connection's handshake, authentication and chat handling.
//! - [`reader`]: the frame loop (RFC 6455 obligations, limits), shared with the echo.
//! - [`echo`]: the conformance echo for Autobahn, on the same frame loop.
//! - [`outbox`]: a connection's outgoing bytes, coalesced into one write per tick.
//! - [`arena`]: room events' frames, copied once per worker and pass, written from there to
//!   every local recipient.
//! - [`split`]: the two sides of a connection's socket: its reader's input, and the socket in its
//!   outbox, which the flusher (or a writer task while the socket is full) writes.
//! - [`stream`]: an accepted socket as the worker drives it (readiness I/O, 8 bytes).
//!
//! Guarantee: nothing here takes a lock shared with another worker on the message path; what
//! crosses workers goes through the broker seam ([`crate::broker`]).

pub mod api;
pub mod arena;
pub mod connection;
pub mod echo;
pub mod handshake;
pub mod health;
pub mod outbox;
pub mod reader;
pub mod split;
pub mod stream;
pub mod worker;
