//! What a room event is, and how it may be treated when a reader is behind.
//!
//! Guarantees: messages and receipts are [`Class::Reliable`] (they arrive, or the connection
//! ends with 4009); typing and presence are [`Class::Volatile`] (dropped for a reader that is
//! behind, since a later one supersedes them). Not here: the queues that apply the classes
//! (`net::outbox`).

/// The kinds of room events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `chat:message`.
    Message = 0,
    /// `chat:read`.
    Read = 1,
    /// `chat:typing`.
    Typing = 2,
    /// `user:online`.
    Presence = 3,
}

impl EventKind {
    /// Messages and receipts must arrive; typing and presence may be dropped.
    pub fn class(self) -> Class {
        match self {
            EventKind::Message | EventKind::Read => Class::Reliable,
            EventKind::Typing | EventKind::Presence => Class::Volatile,
        }
    }
}

/// How a frame may be treated under back-pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Must arrive, or the connection ends (messages, receipts, replies).
    Reliable,
    /// May be dropped when the client is behind (typing, presence, pings).
    Volatile,
}
