//! Client → server messages: `chat:message`, `chat:read`, `chat:typing`, `chat:history`,
//! `ping`.
//!
//! [`parse`] turns one complete client message into a validated [`Command`] in one pass of
//! simd-json over the frame's own buffer (which it mutates in place; strings are borrowed until
//! the command is built). Errors say which rule was broken and map to the seed's codes:
//! malformed JSON or an unknown `type` is `INVALID_MESSAGE`; a missing or wrongly typed field
//! is `VALIDATION_ERROR`. Unknown payload fields are ignored, as the seed ignores them.

use std::borrow::Cow;

use serde::Deserialize;
use simd_json::ErrorType;

use super::ErrorCode;

/// Messages in a `chat:history` page when the client gives no `limit`.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// Most messages a client may ask for in one `chat:history` page.
pub const MAX_HISTORY_LIMIT: u32 = 100;
/// Longest accepted `requestId` of `chat:history`, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Longest accepted `clientMessageId`, in bytes.
pub const MAX_CLIENT_MESSAGE_ID_LEN: usize = 128;
/// Deepest nesting of arrays and objects accepted in a client message.
pub const MAX_NESTING: usize = 32;
/// Messages up to this many bytes are parsed without the nesting scan (they cannot nest more
/// than half as deep, far from any stack limit).
const SHALLOW_ENOUGH: usize = 256;
/// Longest `type` echoed back in an "unknown type" error, in bytes.
const MAX_ECHOED_TYPE_LEN: usize = 64;

/// A validated client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `chat:message`: persist and broadcast a message.
    SendMessage {
        /// Target chat.
        chat_id: String,
        /// Message text (non-empty).
        content: String,
        /// Optional client-side id, echoed in the broadcast.
        client_message_id: Option<String>,
    },
    /// `chat:read`: record and broadcast a read receipt.
    MarkRead {
        /// Chat of the message.
        chat_id: String,
        /// The message read.
        message_id: String,
    },
    /// `chat:typing`: start or stop the typing indicator.
    Typing {
        /// Chat typed in.
        chat_id: String,
        /// Whether the user is typing.
        is_typing: bool,
    },
    /// `chat:history`: a page of a chat's stored messages, answered to this connection only.
    /// Boxed: a rare command, and a `Command` is held in every connection's read-loop state.
    History(Box<HistoryRequest>),
    /// `ping`: answered with `pong`.
    Ping,
}

/// A `chat:history` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    /// The chat.
    pub chat_id: String,
    /// Which page.
    pub page: HistoryPage,
    /// Echoed in the answer when given.
    pub request_id: Option<String>,
}

/// Which messages a `chat:history` asks for: at most `limit`, oldest first, either right after
/// one message, right before one, or the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Messages after this id (exclusive).
    pub after: Option<String>,
    /// Messages before this id (exclusive). Never set together with `after`.
    pub before: Option<String>,
    /// 1..=[`MAX_HISTORY_LIMIT`].
    pub limit: u32,
}

impl Command {
    /// The chat a command targets (none for `ping`).
    pub fn chat_id(&self) -> Option<&str> {
        match self {
            Command::SendMessage { chat_id, .. }
            | Command::MarkRead { chat_id, .. }
            | Command::Typing { chat_id, .. } => Some(chat_id),
            Command::History(h) => Some(&h.chat_id),
            Command::Ping => None,
        }
    }

    /// The wire `type` of the command.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::SendMessage { .. } => "chat:message",
            Command::MarkRead { .. } => "chat:read",
            Command::Typing { .. } => "chat:typing",
            Command::History(_) => "chat:history",
            Command::Ping => "ping",
        }
    }
}

/// Why a client message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The bytes are not a JSON object.
    #[error("Invalid JSON format")]
    InvalidJson,
    /// The envelope has no `type`.
    #[error("Missing message type")]
    MissingType,
    /// The `type` is not a string.
    #[error("Message type must be a string")]
    TypeNotAString,
    /// The `type` is not one the server knows.
    #[error("Unknown message type: {0}")]
    UnknownType(String),
    /// Arrays and objects nested deeper than [`MAX_NESTING`].
    #[error("Message nested too deeply")]
    TooDeep,
    /// A required payload field is missing, empty or of the wrong type.
    #[error("{0}")]
    InvalidPayload(&'static str),
}

impl InboundError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            InboundError::InvalidJson
            | InboundError::MissingType
            | InboundError::TypeNotAString
            | InboundError::TooDeep
            | InboundError::UnknownType(_) => ErrorCode::InvalidMessage,
            InboundError::InvalidPayload(_) => ErrorCode::ValidationError,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Kind<'a>>,
    #[serde(borrow, default)]
    payload: Option<Fields<'a>>,
}

#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(rename = "chatId", borrow, default)]
    chat_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(rename = "clientMessageId", borrow, default)]
    client_message_id: Option<Cow<'a, str>>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(rename = "isTyping", default)]
    is_typing: Option<bool>,
    #[serde(borrow, default)]
    after: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    before: Option<Cow<'a, str>>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<Cow<'a, str>>,
}

/// The envelope's `type`: a string, or anything else (rejected as `INVALID_MESSAGE`, not as a
/// payload error, because without a type there is no payload rule to break).
enum Kind<'a> {
    Name(Cow<'a, str>),
    NotAString,
}

impl<'de: 'a, 'a> Deserialize<'de> for Kind<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kind<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message type")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Kind::Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Kind::Name(Cow::Owned(v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Kind::NotAString)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Kind::NotAString)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Kind::NotAString)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Kind::NotAString)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Kind::NotAString)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Kind::NotAString)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Kind::NotAString)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Kind::NotAString)
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `[`/`{` nest deeper than `max` anywhere outside strings.
fn nesting_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A structural JSON error (the bytes are not JSON) as opposed to JSON of the wrong shape.
/// Literal errors (`ExpectedNull`, `ExpectedTrue`, …) are syntax: `not json` fails as a bad
/// `null`.
fn is_syntax_error(e: &ErrorType) -> bool {
    !matches!(
        e,
        ErrorType::Serde(_)
            | ErrorType::ExpectedString
            | ErrorType::ExpectedBoolean
            | ErrorType::Unexpected(..)
            | ErrorType::ExpectedSigned
            | ErrorType::ExpectedUnsigned
            | ErrorType::ExpectedInteger
            | ErrorType::ExpectedFloat
            | ErrorType::ExpectedNumber
            | ErrorType::ExpectedArray
            | ErrorType::ExpectedEnum
    )
}

fn non_empty(v: Option<Cow<'_, str>>, rule: &'static str) -> Result<String, InboundError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s.into_owned()),
        _ => Err(InboundError::InvalidPayload(rule)),
    }
}

/// Parses and validates one client message. `bytes` is used as simd-json's scratch space.
pub fn parse(bytes: &mut [u8]) -> Result<Command, InboundError> {
    // Only an object can be an envelope; anything else is not a message at all.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(InboundError::InvalidJson);
    }
    // Deserialising ignored values recurses once per nesting level with no limit of its own:
    // bound it before parsing. Short messages cannot nest deeply enough to matter.
    if bytes.len() > SHALLOW_ENOUGH && nesting_depth_exceeds(bytes, MAX_NESTING) {
        return Err(InboundError::TooDeep);
    }
    let env: Envelope<'_> = simd_json::serde::from_slice(bytes).map_err(|e| {
        if is_syntax_error(e.error()) {
            InboundError::InvalidJson
        } else {
            InboundError::InvalidPayload("payload fields have the wrong type")
        }
    })?;
    validate(env)
}

/// The same parse with serde_json, for the side-by-side benchmark only (error classification
/// is coarser: every serde_json error is `InvalidJson`).
#[doc(hidden)]
pub fn parse_with_serde_json(bytes: &[u8]) -> Result<Command, InboundError> {
    let env: Envelope<'_> = serde_json::from_slice(bytes).map_err(|_| InboundError::InvalidJson)?;
    validate(env)
}

/// The rules of each message type, applied to a parsed envelope. Long on purpose: one arm
/// per client message type, each the complete list of that type's rules, so the whole
/// inbound contract reads in one place (as in the README's protocol table).
fn validate(env: Envelope<'_>) -> Result<Command, InboundError> {
    let kind = match env.kind {
        Some(Kind::Name(k)) => k,
        Some(Kind::NotAString) => return Err(InboundError::TypeNotAString),
        None => return Err(InboundError::MissingType),
    };
    let p = env.payload.unwrap_or_default();
    match &*kind {
        "chat:message" => {
            const RULE: &str = "chatId and content are required";
            let chat_id = non_empty(p.chat_id, RULE)?;
            let content = non_empty(p.content, RULE)?;
            let client_message_id = match p.client_message_id {
                Some(id) if id.len() > MAX_CLIENT_MESSAGE_ID_LEN => {
                    return Err(InboundError::InvalidPayload("clientMessageId is too long"))
                }
                Some(id) if id.is_empty() => None,
                other => other.map(Cow::into_owned),
            };
            Ok(Command::SendMessage {
                chat_id,
                content,
                client_message_id,
            })
        }
        "chat:read" => {
            const RULE: &str = "chatId and messageId are required";
            let chat_id = non_empty(p.chat_id, RULE)?;
            let message_id = non_empty(p.message_id, RULE)?;
            Ok(Command::MarkRead {
                chat_id,
                message_id,
            })
        }
        "chat:typing" => {
            const RULE: &str = "chatId and isTyping are required";
            let chat_id = non_empty(p.chat_id, RULE)?;
            let is_typing = p.is_typing.ok_or(InboundError::InvalidPayload(RULE))?;
            Ok(Command::Typing { chat_id, is_typing })
        }
        "chat:history" => {
            let chat_id = non_empty(p.chat_id, "chatId is required")?;
            let id = |v: Option<Cow<'_, str>>| match v {
                Some(s) if s.is_empty() => Err(InboundError::InvalidPayload(
                    "after and before must be message ids",
                )),
                other => Ok(other.map(Cow::into_owned)),
            };
            let (after, before) = (id(p.after)?, id(p.before)?);
            if after.is_some() && before.is_some() {
                return Err(InboundError::InvalidPayload(
                    "give at most one of after and before",
                ));
            }
            let limit = match p.limit {
                None => DEFAULT_HISTORY_LIMIT,
                Some(n) if (1..=i64::from(MAX_HISTORY_LIMIT)).contains(&n) => n as u32,
                Some(_) => {
                    return Err(InboundError::InvalidPayload(
                        "limit must be an integer from 1 to 100",
                    ))
                }
            };
            let request_id = match p.request_id {
                Some(r) if r.len() > MAX_REQUEST_ID_LEN => {
                    return Err(InboundError::InvalidPayload("requestId is too long"))
                }
                other => other.map(Cow::into_owned),
            };
            Ok(Command::History(Box::new(HistoryRequest {
                chat_id,
                page: HistoryPage {
                    after,
                    before,
                    limit,
                },
                request_id,
            })))
        }
        "ping" => Ok(Command::Ping),
        other => {
            let mut end = other.len().min(MAX_ECHOED_TYPE_LEN);
            while !other.is_char_boundary(end) {
                end -= 1;
            }
            Err(InboundError::UnknownType(other[..end].to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, InboundError> {
        parse(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn parses_every_type() {
        assert_eq!(
            p(
                r#"{"type":"chat:message","payload":{"chatId":"c1","content":"hi \"x\"","clientMessageId":"k"}}"#
            ),
            Ok(Command::SendMessage {
                chat_id: "c1".into(),
                content: "hi \"x\"".into(),
                client_message_id: Some("k".into())
            })
        );
        assert_eq!(
            p(r#"{"type":"chat:read","payload":{"chatId":"c1","messageId":"m1","extra":[1,2]}}"#),
            Ok(Command::MarkRead {
                chat_id: "c1".into(),
                message_id: "m1".into()
            })
        );
        assert_eq!(
            p(r#"{"type":"chat:typing","payload":{"chatId":"c1","isTyping":false}}"#),
            Ok(Command::Typing {
                chat_id: "c1".into(),
                is_typing: false
            })
        );
        assert_eq!(p(r#"{"type":"ping","payload":{}}"#), Ok(Command::Ping));
        assert_eq!(p(r#"{"type":"ping"}"#), Ok(Command::Ping));
    }

    #[test]
    fn history_requests_are_validated() {
        assert_eq!(
            p(r#"{"type":"chat:history","payload":{"chatId":"c1"}}"#),
            Ok(Command::History(Box::new(HistoryRequest {
                chat_id: "c1".into(),
                page: HistoryPage {
                    after: None,
                    before: None,
                    limit: DEFAULT_HISTORY_LIMIT
                },
                request_id: None
            })))
        );
        assert_eq!(
            p(
                r#"{"type":"chat:history","payload":{"chatId":"c1","after":"m9","limit":100,"requestId":"r1"}}"#
            ),
            Ok(Command::History(Box::new(HistoryRequest {
                chat_id: "c1".into(),
                page: HistoryPage {
                    after: Some("m9".into()),
                    before: None,
                    limit: 100
                },
                request_id: Some("r1".into())
            })))
        );
        for bad in [
            r#"{"chatId":"c1","limit":0}"#,
            r#"{"chatId":"c1","limit":101}"#,
            r#"{"chatId":"c1","limit":"5"}"#,
            r#"{"chatId":"c1","limit":2.5}"#,
            r#"{"chatId":"c1","after":5}"#,
            r#"{"chatId":"c1","after":"a","before":"b"}"#,
            r#"{"chatId":"c1","before":""}"#,
            r#"{"after":"a"}"#,
        ] {
            let e = p(&format!(r#"{{"type":"chat:history","payload":{bad}}}"#)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ValidationError, "{bad}: {e:?}");
        }
    }

    #[test]
    fn classifies_errors_like_the_seed() {
        assert_eq!(p("not json").unwrap_err().code(), ErrorCode::InvalidMessage);
        assert_eq!(p("{\"type\":").unwrap_err(), InboundError::InvalidJson);
        assert_eq!(p("{}").unwrap_err(), InboundError::MissingType);
        assert_eq!(p("[1,2,3]").unwrap_err(), InboundError::InvalidJson);
        assert_eq!(p(" 42").unwrap_err(), InboundError::InvalidJson);
        assert_eq!(
            p(r#"{"type":42,"payload":{}}"#).unwrap_err(),
            InboundError::TypeNotAString
        );
        assert_eq!(
            p(r#"{"type":{"a":[1]}}"#).unwrap_err(),
            InboundError::TypeNotAString
        );
        assert_eq!(
            p(r#"{"type":"nope","payload":{}}"#).unwrap_err(),
            InboundError::UnknownType("nope".into())
        );
        let e = p(r#"{"type":"chat:message","payload":{"chatId":"c1"}}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ValidationError);
        let e = p(r#"{"type":"chat:message","payload":{"chatId":"c1","content":""}}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ValidationError);
        let e =
            p(r#"{"type":"chat:typing","payload":{"chatId":"c1","isTyping":"yes"}}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ValidationError);
        let e = p(r#"{"type":"chat:read","payload":{"chatId":5,"messageId":"m"}}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ValidationError);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!(
            r#"{{"type":"ping","x":{}{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(p(&deep).unwrap_err(), InboundError::TooDeep);
        let bracket_in_string = format!(r#"{{"type":"ping","x":"{}"}}"#, "[".repeat(5000));
        assert_eq!(p(&bracket_in_string), Ok(Command::Ping));
        let escaped_quote = format!(r#"{{"type":"ping","x":"\"{}"}}"#, "[".repeat(500));
        assert_eq!(p(&escaped_quote), Ok(Command::Ping));
        let fine = format!(
            r#"{{"type":"ping","x":{}{}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        assert_eq!(p(&fine), Ok(Command::Ping));
    }

    #[test]
    fn long_unknown_type_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        match p(&format!(r#"{{"type":"{long}"}}"#)).unwrap_err() {
            InboundError::UnknownType(t) => assert!(t.len() <= MAX_ECHOED_TYPE_LEN),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b"{}[]\":,ab01 \\tnul"[(seed % 17) as usize]
                })
                .collect();
            let _ = parse(&mut buf);
        }
    }
}
