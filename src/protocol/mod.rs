//! The wire protocol, compatible with the seed: JSON envelopes `{type, payload}` in WebSocket
//! text frames.
//!
//! Guarantees: parsing never panics on client input and never allocates from a length read off
//! the wire; every error a client can see has one code and at most one close code, listed in
//! [`catalogue`]. Not here: sockets, storage, timing (see `core` and `net`).

pub mod catalogue;
pub mod frame;
pub mod inbound;
pub mod outbound;
pub mod timestamp;

pub use catalogue::{CloseCode, ErrorCode};
pub use inbound::{Command, InboundError};
pub use outbound::{ChatMessage, Outbound};
