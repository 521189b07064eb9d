//! Backends: where users, chats and messages live. The gateway only ever talks to them through
//! the [`Backend`] trait.
//!
//! - [`rest::RestBackend`]: the product's REST API (the seed's contract), when `HTTP_API_URL` is set.
//! - [`store::Store`]: the embedded SQLite store, the default.
//! - [`fixture::Fixture`]: the in-memory benchmark fixture (`--bench-fixture USERS:ROOMS`).
//!
//! Every method returns at once with a [`Reply`], a one-shot channel the calling worker awaits:
//! the REST backend runs calls on its own small blocking pool, the store on its own thread with
//! batched commits, and the fixture answers inline. A worker therefore never blocks on a backend.
//! Guarantee: a reply of `Ok` for `create_message`/`mark_read` means the write is durable in the
//! backend (the store replies only after its transaction commits).

pub mod breaker;
pub mod fixture;
pub mod pool;
pub mod rest;
pub mod store;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::oneshot;
use serde::Deserialize;

use crate::protocol::{ChatMessage, ErrorCode, HistoryPage};

/// A user profile, as `GET /auth/profile` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Stable user id (a JSON string, or a number taken as its decimal text).
    #[serde(deserialize_with = "id_text")]
    pub user_id: String,
    /// E-mail address (may be empty).
    #[serde(default)]
    pub email: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Role (may be empty).
    #[serde(default)]
    pub role: String,
}

/// Deserializes an id the API may send as a JSON string or as an integer (`42` → `"42"`).
pub(crate) fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Signed(i64),
        Unsigned(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::Text(s) => s,
        Id::Signed(n) => n.to_string(),
        Id::Unsigned(n) => n.to_string(),
    })
}

/// Like [`id_text`], for an optional id.
pub(crate) fn opt_id_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "id_text")] String);
    Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
}

/// A message to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Target chat.
    pub chat_id: String,
    /// Text.
    pub content: String,
    /// The client's own id for it, echoed back.
    pub client_message_id: Option<String>,
    /// Sender's id (already authenticated).
    pub sender_id: String,
    /// Sender's display name.
    pub sender_name: String,
}

/// A page of a chat's stored messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    /// Oldest first, at most the page's `limit`.
    pub messages: Vec<ChatMessage>,
    /// Whether more exist beyond the page in the direction asked (after the last for
    /// `after`; before the first otherwise).
    pub has_more: bool,
}

/// Why a backend call failed. Each variant names the broken rule and maps to one wire code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The token is unknown, expired or was rejected (HTTP 401).
    #[error("{0}")]
    TokenRejected(String),
    /// The user may not act in this chat (HTTP 403/404).
    #[error("{0}")]
    NotParticipant(String),
    /// The request was refused as invalid (HTTP 400/422).
    #[error("{0}")]
    InvalidRequest(String),
    /// The API answered with another error status.
    #[error("{message}")]
    UpstreamStatus {
        /// HTTP status.
        status: u16,
        /// The API's own error text, or a generic one.
        message: String,
    },
    /// The API did not answer within the per-call timeout.
    #[error("HTTP API timed out")]
    UpstreamTimeout,
    /// The API could not be reached, or the connection broke before its answer was complete.
    #[error("HTTP API unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The API answered in full, but not in the contract's shape. Not retried (the same
    /// request would get the same answer) and not counted by the breaker (the API is up).
    #[error("HTTP API answered in an unexpected shape: {0}")]
    UpstreamBadResponse(String),
    /// The embedded store failed.
    #[error("store failure: {0}")]
    StoreFailed(String),
    /// The backend stopped before answering (shutdown).
    #[error("backend stopped")]
    Stopped,
}

impl BackendError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::TokenRejected(_) => ErrorCode::AuthFailed,
            BackendError::NotParticipant(_) => ErrorCode::NotParticipant,
            BackendError::InvalidRequest(_) => ErrorCode::ValidationError,
            BackendError::UpstreamStatus { .. }
            | BackendError::UpstreamTimeout
            | BackendError::UpstreamUnavailable(_)
            | BackendError::UpstreamBadResponse(_) => ErrorCode::HttpError,
            BackendError::StoreFailed(_) | BackendError::Stopped => ErrorCode::InternalError,
        }
    }

    /// The upstream HTTP status, when there is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            BackendError::UpstreamStatus { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Text safe to show to a client: internal faults are not described.
    pub fn client_message(&self) -> String {
        match self {
            BackendError::StoreFailed(_) | BackendError::Stopped => "Internal server error".into(),
            other => other.to_string(),
        }
    }
}

/// Result of a backend call.
pub type BackendResult<T> = Result<T, BackendError>;

/// A pending backend answer; await it from any runtime.
#[derive(Debug)]
pub struct Reply<T>(oneshot::Receiver<BackendResult<T>>);

/// The sending side of a [`Reply`].
pub type Responder<T> = oneshot::Sender<BackendResult<T>>;

impl<T> Reply<T> {
    /// A reply and the responder that completes it.
    pub fn channel() -> (Responder<T>, Reply<T>) {
        let (tx, rx) = oneshot::channel();
        (tx, Reply(rx))
    }

    /// A reply that is already complete (inline backends).
    pub fn ready(result: BackendResult<T>) -> Reply<T> {
        let (tx, rx) = Self::channel();
        // The receiver is alive in `rx`, so the send cannot fail.
        let _ = tx.send(result);
        rx
    }
}

impl<T> Future for Reply<T> {
    type Output = BackendResult<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(BackendError::Stopped)))
    }
}

/// Where users, chats and messages live. Calls never block the caller.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs (`rest`, `store`, `fixture`).
    fn name(&self) -> &'static str;
    /// Who the token belongs to.
    fn authenticate(&self, token: &str) -> Reply<Profile>;
    /// The ids of the chats the token's user is in.
    fn chats(&self, token: &str) -> Reply<Vec<String>>;
    /// Persists a message; the reply carries it as stored.
    fn create_message(&self, token: &str, message: NewMessage) -> Reply<ChatMessage>;
    /// Records a read receipt; the reply carries `readAt` when the backend set one.
    fn mark_read(&self, token: &str, chat_id: &str, message_id: &str) -> Reply<Option<String>>;
    /// A page of `chat_id`'s messages for the token's user. An `after`/`before` id that is not
    /// a message of the chat is `InvalidRequest`; a chat the user is not in, `NotParticipant`.
    fn history(&self, token: &str, chat_id: &str, page: &HistoryPage) -> Reply<History>;
    /// Whether the backend is reachable (for `/readyz`).
    fn probe(&self) -> Reply<()>;
}
