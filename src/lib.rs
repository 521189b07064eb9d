//! socket-server: a real-time chat gateway.
//!
//! It terminates WebSockets, authenticates users against a [`backend::Backend`] (the product's
//! REST API, or an embedded SQLite store), and routes chat messages, read receipts, typing
//! indicators and presence between the connections of a chat. It speaks the wire protocol of the
//! original Bun/TypeScript server (see the README) and fixes its known defects.
//!
//! The crate is layered along the road a message travels:
//! - [`protocol`]: the wire — inbound/outbound message types, the error-code and close-code
//!   catalogue, frame encoding. No sockets, no storage.
//! - [`core`]: sans-IO logic — the hub (every chat rule of a worker: room membership,
//!   presence counting, typing timers, the per-connection session rules), driven by explicit
//!   inputs and an explicit `now`, answering with effects.
//! - [`backend`]: the `Backend` trait and its implementations (REST API, SQLite store, benchmark
//!   fixture), run off the I/O threads on a small blocking pool.
//! - [`broker`]: the seam where room events and presence changes leave a worker; the
//!   in-process bus over the workers' mailboxes.
//! - [`net`]: the monoio shell — one worker thread per core, each with its own `SO_REUSEPORT`
//!   listener and hub, carrying out the hub's effects.
//! - [`api`]: the server API for the product's backend (deliver a message, add or remove a
//!   chat member, disconnect a user, presence), as plain data; `net::api` serves it.
//! - [`http`]: plain-HTTP requests served on the WebSocket port (health, readiness, demo page),
//!   answered through its narrow `Health` trait.
//!
//! No module uses one above it: only `net` (and `main`) use the shell's peers, and `core` and
//! `api` touch no sockets, threads, runtimes or clock; `tests/layers.rs` checks both.
//!
//! Guarantees: per connection, `chat:message` and `chat:read` are processed in arrival order;
//! a room event is serialised once and shared by every delivery; workers share no lock on the
//! message path. Not guaranteed: delivery to a connection whose socket is gone (a client
//! recovers what it missed with `chat:history`), and ordering between events published by
//! different workers.
// `deny`, not `forbid`: `net::stream` holds the crate's one `unsafe` block, allowed there
// with its measured reason and safety argument.
#![deny(unsafe_code)]

pub mod api;
pub mod backend;
pub mod broker;
pub mod config;
pub mod core;
pub mod http;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;
