//! The catalogue: every error code a client can receive, and the close code that goes with it.
//!
//! Each layer's error enum (`InboundError`, `BackendError`, `SessionError`) maps each variant to
//! one [`ErrorCode`] here; the code decides whether the connection stays open. This is the only
//! place where wire codes and close codes are spelled.
//!
//! Guarantees: each [`ErrorCode`] has one wire spelling ([`ErrorCode::as_str`], equal to its
//! serde form) and at most one close code: only `AUTH_FAILED` (4001) and `SERVER_SHUTDOWN`
//! (1001) close; each [`CloseCode`] has one fixed reason text.
//! Not guaranteed / not here: nothing is sent or counted here, and closes not tied to an error
//! code (1002, 1007, 1009, 4008, 4009, 4029, …) are chosen by the layers that detect them.

use serde::Serialize;

/// An `error.code` sent to clients: the seed's six codes plus `SERVER_SHUTDOWN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The token was missing or rejected. Closes with 4001.
    AuthFailed,
    /// The frame was not a JSON envelope, or its `type` is unknown.
    InvalidMessage,
    /// The user is not a participant of the chat.
    NotParticipant,
    /// The REST API failed, timed out or was unreachable.
    HttpError,
    /// A fault inside the gateway.
    InternalError,
    /// The payload lacks a field or has a wrong value.
    ValidationError,
    /// The server is shutting down. Closes with 1001.
    ServerShutdown,
    /// The connection sends faster than `RATE_LIMIT`; the message was dropped. Sustained
    /// abuse closes with 4029.
    RateLimited,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::NotParticipant => "NOT_PARTICIPANT",
            ErrorCode::HttpError => "HTTP_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::ServerShutdown => "SERVER_SHUTDOWN",
            ErrorCode::RateLimited => "RATE_LIMITED",
        }
    }

    /// The close code that follows this error, if the connection must end.
    pub fn close_code(self) -> Option<CloseCode> {
        match self {
            ErrorCode::AuthFailed => Some(CloseCode::AuthFailed),
            ErrorCode::ServerShutdown => Some(CloseCode::GoingAway),
            _ => None,
        }
    }
}

/// Close codes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: the client closed, and we echo it.
    Normal = 1000,
    /// 1001: server shutdown (after `SERVER_SHUTDOWN`).
    GoingAway = 1001,
    /// 1002: the client broke RFC 6455 framing.
    ProtocolError = 1002,
    /// 1007: a text message was not UTF-8.
    InvalidPayload = 1007,
    /// 1009: a message exceeded `MAX_MESSAGE_SIZE` or `MAX_FRAGMENTS`.
    MessageTooBig = 1009,
    /// 1011: an internal fault.
    InternalError = 1011,
    /// 1013: the REST API is unavailable during authentication; retry later.
    TryAgainLater = 1013,
    /// 4001: authentication failed (the seed's code).
    AuthFailed = 4001,
    /// 4008: no frame from the client for `CONNECTION_TIMEOUT`.
    IdleTimeout = 4008,
    /// 4009: the client does not read fast enough; its queue exceeded `MAX_OUTBOX_BYTES`.
    SlowConsumer = 4009,
    /// 4029: the client kept sending far above `RATE_LIMIT`.
    RateLimited = 4029,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The reason text sent with the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "",
            CloseCode::GoingAway => "Server shutting down",
            CloseCode::ProtocolError => "Protocol error",
            CloseCode::InvalidPayload => "Invalid UTF-8",
            CloseCode::MessageTooBig => "Message too big",
            CloseCode::InternalError => "Internal error",
            CloseCode::TryAgainLater => "Backend unavailable",
            CloseCode::AuthFailed => "Authentication failed",
            CloseCode::IdleTimeout => "Connection timeout",
            CloseCode::SlowConsumer => "Slow consumer",
            CloseCode::RateLimited => "Rate limit exceeded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_matches_serde() {
        for code in [
            ErrorCode::AuthFailed,
            ErrorCode::InvalidMessage,
            ErrorCode::NotParticipant,
            ErrorCode::HttpError,
            ErrorCode::InternalError,
            ErrorCode::ValidationError,
            ErrorCode::ServerShutdown,
            ErrorCode::RateLimited,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn only_auth_and_shutdown_close() {
        assert_eq!(
            ErrorCode::AuthFailed.close_code().map(CloseCode::code),
            Some(4001)
        );
        assert_eq!(
            ErrorCode::ServerShutdown.close_code().map(CloseCode::code),
            Some(1001)
        );
        assert_eq!(ErrorCode::NotParticipant.close_code(), None);
    }
}
