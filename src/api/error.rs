//! Why a server API request was refused: one variant per broken rule, each with one HTTP
//! status and one `error.code` (the API's own catalogue; the WebSocket codes are in
//! `protocol::catalogue`).

/// A refused server API request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The API is off (`API_KEY` unset), on another port, or the path names no route.
    #[error("no such route")]
    NotFound,
    /// The route exists but not with this method.
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    /// No `Authorization: Bearer <API_KEY>`, or the wrong key.
    #[error("missing or wrong API key (Authorization: Bearer <API_KEY>)")]
    Unauthorized,
    /// A body sent without `Content-Length` (chunked transfer encoding is not accepted).
    #[error("send the body with a Content-Length header (chunked encoding is not accepted)")]
    LengthRequired,
    /// The body is larger than `API_MAX_BODY`.
    #[error("body larger than API_MAX_BODY ({0} bytes)")]
    TooLarge(usize),
    /// The body did not arrive in time.
    #[error("body not received within {0} ms")]
    BodyTimeout(u64),
    /// The client closed before sending the whole body it announced.
    #[error("body ended after {got} of {announced} bytes")]
    BodyIncomplete {
        /// Bytes received.
        got: usize,
        /// `Content-Length`.
        announced: usize,
    },
    /// Too many server API connections open at once on `API_PORT`.
    #[error("too many server API connections; retry shortly")]
    Busy,
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// A field is missing or breaks a rule; `field` is its path in the body.
    #[error("{field} {rule}")]
    Invalid {
        /// Path of the field, e.g. `message.content` or `events[2].userId`.
        field: String,
        /// The rule it breaks, e.g. `is required`.
        rule: &'static str,
    },
    /// The server is draining.
    #[error("server is shutting down")]
    ShuttingDown,
    /// A worker did not confirm in time; the action may have reached only some connections.
    #[error("not every worker confirmed within {0} ms; the action may be partly applied")]
    WorkerTimeout(u64),
    /// Multi-node mode, and Redis cannot be reached: the request would reach only some
    /// connections, so it is refused.
    #[error("the broker cannot reach the other nodes (Redis unreachable); nothing was applied")]
    BrokerUnavailable,
    /// Multi-node mode, and a node that got the request did not confirm in time.
    #[error("not every node confirmed within {0} ms; the action may be partly applied")]
    NodeTimeout(u64),
    /// A bug in the gateway.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Unauthorized => 401,
            ApiError::LengthRequired => 411,
            ApiError::TooLarge(_) => 413,
            ApiError::BodyTimeout(_) => 408,
            ApiError::BodyIncomplete { .. } => 400,
            ApiError::Busy => 503,
            ApiError::NotJson(_) | ApiError::Invalid { .. } => 400,
            ApiError::ShuttingDown => 503,
            ApiError::WorkerTimeout(_) => 504,
            ApiError::BrokerUnavailable => 503,
            ApiError::NodeTimeout(_) => 504,
            ApiError::Internal(_) => 500,
        }
    }

    /// The `error.code` in the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::LengthRequired => "LENGTH_REQUIRED",
            ApiError::TooLarge(_) => "BODY_TOO_LARGE",
            ApiError::BodyTimeout(_) => "BODY_TIMEOUT",
            ApiError::BodyIncomplete { .. } => "BODY_INCOMPLETE",
            ApiError::Busy => "TOO_MANY_CONNECTIONS",
            ApiError::NotJson(_) | ApiError::Invalid { .. } => "VALIDATION_ERROR",
            ApiError::ShuttingDown => "SERVER_SHUTDOWN",
            ApiError::WorkerTimeout(_) => "WORKER_TIMEOUT",
            ApiError::BrokerUnavailable => "BROKER_UNAVAILABLE",
            ApiError::NodeTimeout(_) => "NODE_TIMEOUT",
            ApiError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The field at fault, for `Invalid`.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            ApiError::MethodNotAllowed(allow) => Some(allow),
            _ => None,
        }
    }
}
