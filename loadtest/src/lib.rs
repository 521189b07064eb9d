//! A native load generator for WebSocket chat servers speaking the socket-server protocol
//! (the gateway and its Bun reference peer).
//!
//! Layout, one file per concept:
//! - [`frames`]: WebSocket frame scanning and encoding (the hot path, pure, unit-tested).
//! - [`handshake`]: the HTTP/1.1 upgrade; [`client`]: one authenticated connection.
//! - [`rate`]: the open-loop send schedule; [`run`]: worker threads, phases, the monitor.
//! - [`procstat`]: CPU and RSS from `/proc`; [`report`]: numbers and tables; [`plot`]: SVGs.
//! - [`scenarios`]: `chat`, `latency`, `connections` (+ its `hold` child), `storm`.
//!
//! Network: only loopback addresses (127.0.0.0/8) are accepted as targets or sources.

pub mod client;
pub mod common;
pub mod frames;
pub mod handshake;
pub mod plot;
pub mod procstat;
pub mod rate;
pub mod report;
pub mod run;
pub mod scenarios;
