//! Server → client messages, serialised once into a ready-to-send WebSocket frame.
//!
//! [`Outbound::to_frame`] writes the JSON straight after a reserved header gap and fills in the
//! header afterwards, so the returned [`Bytes`] is the complete unmasked server frame: every
//! recipient (local or on another worker) gets a clone of the same bytes, never a re-encoding.
//!
//! Guarantees: one `{"type","payload"}` JSON object with camelCase fields per message, in a
//! single final (FIN) text frame; `to_frame` cannot fail except through a bug here (it panics).
//! Not guaranteed / not here: no size cap on outgoing frames, and no queuing, ordering or
//! delivery (the connection's outbox and the worker mailboxes do that).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::frame::{finish_frame, FRAME_HEAD_GAP};
use super::ErrorCode;

/// A stored chat message, as broadcast in `chat:message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// Message id assigned by the backend.
    pub id: String,
    /// Chat the message belongs to.
    pub chat_id: String,
    /// Author's user id.
    pub sender_id: String,
    /// Author's display name.
    #[serde(default)]
    pub sender_name: String,
    /// Message text.
    pub content: String,
    /// Creation time, RFC 3339 UTC with milliseconds.
    pub created_at: String,
    /// The sender's own id for the message, echoed so it can match its optimistic copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

/// A chat named in `chat:new`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChatRef<'a> {
    /// The chat id.
    pub id: &'a str,
}

/// `details` of an error: empty, or the rule's subject.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorDetails {
    /// The backend's HTTP status, when the error came from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Every message the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "payload")]
pub enum Outbound<'a> {
    /// Sent once, after authentication and room registration.
    #[serde(rename = "connected", rename_all = "camelCase")]
    Connected {
        /// The authenticated user.
        user_id: &'a str,
        /// The chats the connection receives events from.
        chat_ids: &'a [Arc<str>],
    },
    /// Events of these chats may have been lost (multi-node mode: the broker was unreachable);
    /// the client recovers them with `chat:history` from the last id it saw.
    #[serde(rename = "chat:resync", rename_all = "camelCase")]
    ChatResync {
        /// The chats that may have gaps.
        chat_ids: &'a [Arc<str>],
    },
    /// A new message in a chat.
    #[serde(rename = "chat:message", rename_all = "camelCase")]
    ChatMessage {
        /// The chat.
        chat_id: &'a str,
        /// The stored message.
        message: &'a ChatMessage,
    },
    /// A read receipt.
    #[serde(rename = "chat:read", rename_all = "camelCase")]
    ChatRead {
        /// The chat.
        chat_id: &'a str,
        /// The message read.
        message_id: &'a str,
        /// Who read it.
        user_id: &'a str,
        /// When, RFC 3339.
        read_at: &'a str,
    },
    /// A typing indicator change.
    #[serde(rename = "chat:typing", rename_all = "camelCase")]
    ChatTyping {
        /// The chat.
        chat_id: &'a str,
        /// Who types.
        user_id: &'a str,
        /// Their display name.
        user_name: &'a str,
        /// Started or stopped.
        is_typing: bool,
    },
    /// A presence change: first connection opened or last closed.
    #[serde(rename = "user:online", rename_all = "camelCase")]
    UserOnline {
        /// The user.
        user_id: &'a str,
        /// Whether any of their connections is open.
        online: bool,
    },
    /// The connection joined a chat (the product's backend added the user through the server
    /// API). The seed declares this type but never sends it.
    #[serde(rename = "chat:new")]
    ChatNew {
        /// The chat joined.
        chat: ChatRef<'a>,
    },
    /// The connection left a chat (the product's backend removed the user); nothing more of
    /// the chat reaches it.
    #[serde(rename = "chat:removed", rename_all = "camelCase")]
    ChatRemoved {
        /// The chat left.
        chat_id: &'a str,
    },
    /// A page of a chat's stored messages, oldest first: the answer to `chat:history`.
    #[serde(rename = "chat:history", rename_all = "camelCase")]
    ChatHistory {
        /// The chat.
        chat_id: &'a str,
        /// The messages, oldest first, shaped as in `chat:message`.
        messages: &'a [ChatMessage],
        /// Whether more messages exist beyond the page in the direction asked (after the last
        /// for `after`; before the first otherwise).
        has_more: bool,
        /// The request's `requestId`, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<&'a str>,
    },
    /// Answer to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// Server time, RFC 3339.
        timestamp: &'a str,
    },
    /// A rejected request or a connection-level failure.
    #[serde(rename = "error")]
    Error {
        /// The catalogue code.
        code: ErrorCode,
        /// Human-readable text (the backend's own text when it has one).
        message: &'a str,
        /// Extra context; `{}` when there is none.
        details: &'a ErrorDetails,
    },
}

impl Outbound<'_> {
    /// Serialises the message into a complete, unmasked WebSocket text frame.
    pub fn to_frame(&self) -> Bytes {
        let mut buf = Vec::with_capacity(self.size_hint());
        buf.resize(FRAME_HEAD_GAP, 0);
        // Serialising these plain structs into a Vec has no failure path (no I/O, no maps
        // with non-string keys); an error here would be a bug in this file.
        serde_json::to_writer(&mut buf, self).expect("outbound messages always serialise");
        finish_frame(buf, fastwebsockets::OpCode::Text)
    }

    /// A first buffer size for the frame: room for the fixed parts, plus the message texts,
    /// so a long message is written into one allocation instead of a chain of doublings
    /// (whose garbage a burst of them turns into megabytes of allocator churn).
    fn size_hint(&self) -> usize {
        const FIXED: usize = 192;
        let message = |m: &ChatMessage| {
            FIXED
                + m.id.len()
                + m.chat_id.len()
                + m.sender_id.len()
                + m.sender_name.len()
                // Escapes can lengthen it; one doubling then covers them.
                + m.content.len()
                + m.client_message_id.as_deref().map_or(0, str::len)
        };
        match self {
            Outbound::ChatMessage { message: m, .. } => message(m),
            _ => FIXED,
        }
    }

    /// The JSON text alone (tests and logs).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("outbound messages always serialise")
    }
}

/// Builds an `error` frame.
pub fn error_frame(code: ErrorCode, message: &str) -> Bytes {
    Outbound::Error {
        code,
        message,
        details: &ErrorDetails::default(),
    }
    .to_frame()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_seed() {
        let chats: Vec<Arc<str>> = vec!["c1".into(), "c2".into()];
        assert_eq!(
            Outbound::Connected {
                user_id: "u1",
                chat_ids: &chats
            }
            .to_json(),
            r#"{"type":"connected","payload":{"userId":"u1","chatIds":["c1","c2"]}}"#
        );
        let m = ChatMessage {
            id: "m1".into(),
            chat_id: "c1".into(),
            sender_id: "u1".into(),
            sender_name: "Ann".into(),
            content: "hi".into(),
            created_at: "2024-01-01T12:00:00.000Z".into(),
            client_message_id: None,
        };
        assert_eq!(
            Outbound::ChatMessage {
                chat_id: "c1",
                message: &m
            }
            .to_json(),
            r#"{"type":"chat:message","payload":{"chatId":"c1","message":{"id":"m1","chatId":"c1","senderId":"u1","senderName":"Ann","content":"hi","createdAt":"2024-01-01T12:00:00.000Z"}}}"#
        );
        assert_eq!(
            Outbound::Error {
                code: ErrorCode::AuthFailed,
                message: "Invalid token",
                details: &ErrorDetails::default()
            }
            .to_json(),
            r#"{"type":"error","payload":{"code":"AUTH_FAILED","message":"Invalid token","details":{}}}"#
        );
        assert_eq!(
            Outbound::UserOnline {
                user_id: "u1",
                online: true
            }
            .to_json(),
            r#"{"type":"user:online","payload":{"userId":"u1","online":true}}"#
        );
        assert_eq!(
            Outbound::ChatTyping {
                chat_id: "c",
                user_id: "u",
                user_name: "N",
                is_typing: true
            }
            .to_json(),
            r#"{"type":"chat:typing","payload":{"chatId":"c","userId":"u","userName":"N","isTyping":true}}"#
        );
        assert_eq!(
            Outbound::ChatNew {
                chat: ChatRef { id: "c" }
            }
            .to_json(),
            r#"{"type":"chat:new","payload":{"chat":{"id":"c"}}}"#
        );
        assert_eq!(
            Outbound::ChatRemoved { chat_id: "c" }.to_json(),
            r#"{"type":"chat:removed","payload":{"chatId":"c"}}"#
        );
    }

    #[test]
    fn frame_is_header_plus_json() {
        let out = Outbound::Pong { timestamp: "t" };
        let frame = out.to_frame();
        let json = out.to_json();
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1] as usize, json.len());
        assert_eq!(&frame[2..], json.as_bytes());
    }
}
