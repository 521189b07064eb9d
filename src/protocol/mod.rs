//! The wire protocol, compatible with the seed: JSON envelopes `{type, payload}` in WebSocket
//! text frames.
//!
//! Guarantees: parsing never panics on client input, and no length read off the wire makes it
//! allocate more than `MAX_MESSAGE_SIZE` (fastwebsockets reserves a frame's announced length
//! once the header passes its size check; [`frame::MessageAssembler`] grows only by bytes that
//! arrived); every error a client can see has one code and at most one close code, listed in
//! [`catalogue`]. Not here: sockets, storage, timing (see `core` and `net`).

pub mod catalogue;
pub mod frame;
pub mod inbound;
pub mod outbound;
pub mod timestamp;

pub use catalogue::{CloseCode, ErrorCode};
pub use inbound::{Command, HistoryPage, HistoryRequest, InboundError};
pub use outbound::{ChatMessage, Outbound};
