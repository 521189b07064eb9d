//! Server API request bodies into [`Action`]s: validated whole, frames encoded once.
//!
//! Guarantees: every field error names the field's path; frames (`chat:message`, `chat:new`,
//! `chat:removed`, the close frame) are encoded here once and shared by every worker and
//! connection; a message keeps the shape clients already know from `chat:message`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{ApiError, Route};
use crate::protocol::frame::{close_frame_with, MAX_CLOSE_REASON};
use crate::protocol::inbound::MAX_CLIENT_MESSAGE_ID_LEN;
use crate::protocol::outbound::ChatRef;
use crate::protocol::{ChatMessage, Outbound};

/// Longest chat or user id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Most events in one `POST /api/events`.
pub const MAX_BATCH: usize = 1000;
/// Close code of `disconnect` when none is given: authentication failed (the token was
/// revoked), which the seed's clients already treat as "log in again".
pub const DEFAULT_DISCONNECT_CODE: u16 = 4001;
/// Close reason of `disconnect` when none is given.
pub const DEFAULT_DISCONNECT_REASON: &str = "Disconnected by the server";

/// One thing every worker does for the API, in request order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Deliver a `chat:message` frame to every connection in `chat`.
    Publish {
        /// The chat.
        chat: Arc<str>,
        /// The message id (for the answer and logs).
        message_id: String,
        /// The encoded `chat:message` frame.
        frame: Bytes,
    },
    /// `user`'s connections join `chat` and get `frame` (`chat:new`).
    Join {
        /// The chat.
        chat: Arc<str>,
        /// The user.
        user: Arc<str>,
        /// The encoded `chat:new` frame.
        frame: Bytes,
    },
    /// `user`'s connections leave `chat` and get `frame` (`chat:removed`).
    Leave {
        /// The chat.
        chat: Arc<str>,
        /// The user.
        user: Arc<str>,
        /// The encoded `chat:removed` frame.
        frame: Bytes,
    },
    /// Close every connection of `user` with `frame`.
    Disconnect {
        /// The user.
        user: Arc<str>,
        /// The close code (for metrics and logs).
        code: u16,
        /// The encoded close frame.
        frame: Bytes,
    },
    /// Count the connections in `chat` by user.
    Presence {
        /// The chat.
        chat: Arc<str>,
    },
}

/// What one worker (or, merged, all of them) did for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connections reached (delivered to, joined, left, closed).
    Count(usize),
    /// Connections in the chat, by user.
    Presence(HashMap<Arc<str>, usize>),
}

impl Action {
    /// The outcome of this action where it found nothing to act on.
    pub fn nothing(&self) -> Outcome {
        match self {
            Action::Presence { .. } => Outcome::Presence(HashMap::new()),
            _ => Outcome::Count(0),
        }
    }
}

/// Presence announcements owed once every worker applied `actions`: a user whose live
/// connections joined a chat is announced online there (`user:online` otherwise reaches a
/// chat only when the user's first connection opens, so its members would never learn it, yet
/// would see the user go offline later). One `(chat, frame)` per join that reached someone.
pub fn announcements(actions: &[Action], outcomes: &[Outcome]) -> Vec<(Arc<str>, Bytes)> {
    let left_later = |i: usize, chat: &str, user: &str| {
        actions[i + 1..].iter().any(
            |a| matches!(a, Action::Leave { chat: c, user: u, .. } if &**c == chat && &**u == user),
        )
    };
    actions
        .iter()
        .zip(outcomes)
        .enumerate()
        .filter_map(|(i, (a, o))| match (a, o) {
            (Action::Join { chat, user, .. }, Outcome::Count(n))
                if *n > 0 && !left_later(i, chat, user) =>
            {
                Some((chat.clone(), online_frame(user)))
            }
            _ => None,
        })
        .collect()
}

fn online_frame(user: &str) -> Bytes {
    Outbound::UserOnline {
        user_id: user,
        online: true,
    }
    .to_frame()
}

impl Outcome {
    /// Adds another worker's outcome for the same action.
    pub fn merge(&mut self, other: Outcome) {
        match (self, other) {
            (Outcome::Count(a), Outcome::Count(b)) => *a += b,
            (Outcome::Presence(a), Outcome::Presence(b)) => {
                for (user, n) in b {
                    *a.entry(user).or_insert(0) += n;
                }
            }
            // Both sides come from the same action list; a mismatch would be a bug here.
            _ => {}
        }
    }
}

/// The actions a request asks for. `now` is the timestamp used for a message without
/// `createdAt`.
pub fn parse_body(route: &Route, body: &[u8], now: &str) -> Result<Vec<Action>, ApiError> {
    let json = || -> Result<Value, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::Invalid {
                field: "body".into(),
                rule: "is required (a JSON object)",
            });
        }
        serde_json::from_slice(body).map_err(|e| ApiError::NotJson(e.to_string()))
    };
    match route {
        Route::Publish { chat } => {
            let v = json()?;
            let obj = object(&v, "body")?;
            // The product's REST answer (`{"message": {...}}`) or the message itself.
            let (msg, prefix) = match obj.get("message") {
                Some(inner) if !obj.contains_key("content") => {
                    (object(inner, "message")?, "message.")
                }
                _ => (obj, ""),
            };
            Ok(vec![publish(chat, msg, prefix, now)?])
        }
        Route::AddMember { chat } => {
            let v = json()?;
            let user = id_field(object(&v, "body")?, "userId", "")?;
            Ok(vec![join(chat.clone(), user)])
        }
        Route::RemoveMember { chat, user } => Ok(vec![leave(chat.clone(), user.clone())]),
        Route::Disconnect { user } => {
            // The body is optional here: no body means the defaults.
            let v = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Map::new())
            } else {
                json()?
            };
            Ok(vec![disconnect(user.clone(), object(&v, "body")?, "")?])
        }
        Route::Presence { chat } => Ok(vec![Action::Presence { chat: chat.clone() }]),
        Route::Events => {
            let v = json()?;
            let events = object(&v, "body")?
                .get("events")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("events", "is required (an array of events)"))?;
            if events.is_empty() {
                return Err(invalid("events", "must not be empty"));
            }
            if events.len() > MAX_BATCH {
                return Err(invalid("events", "has more than 1000 events"));
            }
            events
                .iter()
                .enumerate()
                .map(|(i, e)| event(e, &format!("events[{i}].")))
                .collect()
        }
    }
}

fn event(v: &Value, prefix: &str) -> Result<Action, ApiError> {
    let here = prefix.trim_end_matches('.');
    let obj = object(v, here)?;
    let field = |name: &str| format!("{prefix}{name}");
    let kind = obj.get("type").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            &field("type"),
            "is required: message, join, leave or disconnect",
        )
    })?;
    match kind {
        "message" => {
            let chat: Arc<str> = id_field(obj, "chatId", prefix)?;
            let msg = object(
                obj.get("message").unwrap_or(&Value::Null),
                &field("message"),
            )?;
            publish(
                &chat,
                msg,
                &field("message."),
                &crate::protocol::timestamp::now(),
            )
        }
        "join" => Ok(join(
            id_field(obj, "chatId", prefix)?,
            id_field(obj, "userId", prefix)?,
        )),
        "leave" => Ok(leave(
            id_field(obj, "chatId", prefix)?,
            id_field(obj, "userId", prefix)?,
        )),
        "disconnect" => disconnect(id_field(obj, "userId", prefix)?, obj, prefix),
        _ => Err(invalid(
            &field("type"),
            "must be message, join, leave or disconnect",
        )),
    }
}

fn publish(
    chat: &Arc<str>,
    msg: &Map<String, Value>,
    prefix: &str,
    now: &str,
) -> Result<Action, ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    let id: Arc<str> = id_field(msg, "id", prefix)?;
    let sender_id: Arc<str> = id_field(msg, "senderId", prefix)?;
    if let Some(c) = msg.get("chatId") {
        if id_value(c).as_deref() != Some(&**chat) {
            return Err(invalid(&field("chatId"), "must match the chat in the path"));
        }
    }
    let content = match msg.get("content") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(invalid(&field("content"), "must not be empty")),
        Some(_) => return Err(invalid(&field("content"), "must be a string")),
        None => return Err(invalid(&field("content"), "is required")),
    };
    let sender_name = match msg.get("senderName") {
        None | Some(Value::Null) => sender_id.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => sender_id.to_string(),
        Some(_) => return Err(invalid(&field("senderName"), "must be a string")),
    };
    let created_at = match msg.get("createdAt") {
        None | Some(Value::Null) => now.to_string(),
        Some(Value::String(s)) if humantime::parse_rfc3339_weak(s).is_ok() => s.clone(),
        Some(_) => {
            return Err(invalid(
                &field("createdAt"),
                "must be an RFC 3339 timestamp, e.g. 2024-01-01T12:00:00.000Z",
            ))
        }
    };
    let client_message_id = match msg.get("clientMessageId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.len() <= MAX_CLIENT_MESSAGE_ID_LEN => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                &field("clientMessageId"),
                "must be a string of at most 128 bytes",
            ))
        }
    };
    let message = ChatMessage {
        id: id.to_string(),
        chat_id: chat.to_string(),
        sender_id: sender_id.to_string(),
        sender_name,
        content,
        created_at,
        client_message_id,
    };
    let frame = Outbound::ChatMessage {
        chat_id: chat,
        message: &message,
    }
    .to_frame();
    Ok(Action::Publish {
        chat: chat.clone(),
        message_id: message.id,
        frame,
    })
}

fn join(chat: Arc<str>, user: Arc<str>) -> Action {
    let frame = Outbound::ChatNew {
        chat: ChatRef { id: &chat },
    }
    .to_frame();
    Action::Join { chat, user, frame }
}

fn leave(chat: Arc<str>, user: Arc<str>) -> Action {
    let frame = Outbound::ChatRemoved { chat_id: &chat }.to_frame();
    Action::Leave { chat, user, frame }
}

fn disconnect(user: Arc<str>, obj: &Map<String, Value>, prefix: &str) -> Result<Action, ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    let code = match obj.get("code") {
        None | Some(Value::Null) => DEFAULT_DISCONNECT_CODE,
        Some(v) => match v.as_u64().and_then(|c| u16::try_from(c).ok()) {
            Some(c) if matches!(c, 1000 | 1001 | 1008 | 1011 | 1013 | 3000..=4999) => c,
            _ => {
                return Err(invalid(
                    &field("code"),
                    "must be 1000, 1001, 1008, 1011, 1013 or 3000-4999",
                ))
            }
        },
    };
    let reason = match obj.get("reason") {
        None | Some(Value::Null) => DEFAULT_DISCONNECT_REASON,
        Some(Value::String(s)) if s.len() <= MAX_CLOSE_REASON => s.as_str(),
        Some(_) => {
            return Err(invalid(
                &field("reason"),
                "must be a string of at most 123 bytes",
            ))
        }
    };
    Ok(Action::Disconnect {
        user,
        code,
        frame: close_frame_with(code, reason),
    })
}

fn invalid(field: &str, rule: &'static str) -> ApiError {
    ApiError::Invalid {
        field: field.to_string(),
        rule,
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| invalid(field, "must be a JSON object"))
}

/// An id given as a string or an integer (product APIs use both).
fn id_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn id_field(obj: &Map<String, Value>, name: &str, prefix: &str) -> Result<Arc<str>, ApiError> {
    let field = format!("{prefix}{name}");
    let v = obj
        .get(name)
        .ok_or_else(|| invalid(&field, "is required"))?;
    let id = id_value(v).ok_or_else(|| invalid(&field, "must be a string or an integer"))?;
    check_id(&id, &field)?;
    Ok(id.into())
}

/// The rules every id follows: non-empty, at most [`MAX_ID_LEN`] bytes, no control characters.
pub(super) fn check_id(id: &str, field: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(field, "must be at most 256 bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2024-01-01T12:00:00.000Z";

    fn publish_route() -> Route {
        Route::Publish { chat: "c1".into() }
    }

    fn field_of(r: Result<Vec<Action>, ApiError>) -> String {
        match r {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    fn frame_json(frame: &Bytes) -> Value {
        // Server frames here are short: a 2- or 4-byte header.
        let start = if frame[1] == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[start..]).expect("frame carries JSON")
    }

    #[test]
    fn a_message_becomes_the_chat_message_clients_know() {
        let body = br#"{"message":{"id":7,"chatId":"c1","senderId":"bot","content":"hi","clientMessageId":"k1"}}"#;
        let actions = parse_body(&publish_route(), body, NOW).expect("valid");
        let [Action::Publish {
            frame,
            message_id,
            chat,
        }] = actions.as_slice()
        else {
            panic!("one publish")
        };
        assert_eq!((&**chat, message_id.as_str()), ("c1", "7"));
        assert_eq!(
            frame_json(frame),
            serde_json::json!({"type":"chat:message","payload":{"chatId":"c1","message":{
                "id":"7","chatId":"c1","senderId":"bot","senderName":"bot","content":"hi",
                "createdAt":NOW,"clientMessageId":"k1"}}})
        );
        // The unwrapped form is the same message.
        let bare = br#"{"id":7,"senderId":"bot","content":"hi","clientMessageId":"k1"}"#;
        let again = parse_body(&publish_route(), bare, NOW).expect("valid");
        let [Action::Publish { frame: f2, .. }] = again.as_slice() else {
            panic!("publish")
        };
        assert_eq!(frame_json(f2), frame_json(frame));
    }

    #[test]
    fn bad_messages_name_the_field() {
        let r = &publish_route();
        assert_eq!(
            field_of(parse_body(r, br#"{"id":"1","senderId":"u"}"#, NOW)),
            "content"
        );
        assert_eq!(
            field_of(parse_body(
                r,
                br#"{"message":{"id":"1","content":"x"}}"#,
                NOW
            )),
            "message.senderId"
        );
        assert_eq!(
            field_of(parse_body(
                r,
                br#"{"id":"1","senderId":"u","content":"x","chatId":"c2"}"#,
                NOW
            )),
            "chatId"
        );
        assert_eq!(
            field_of(parse_body(
                r,
                br#"{"id":"","senderId":"u","content":"x"}"#,
                NOW
            )),
            "id"
        );
        assert_eq!(
            field_of(parse_body(
                r,
                br#"{"id":"1","senderId":"u","content":"x","createdAt":"yesterday"}"#,
                NOW
            )),
            "createdAt"
        );
        assert_eq!(field_of(parse_body(r, b"", NOW)), "body");
        assert!(matches!(
            parse_body(r, b"{nope", NOW),
            Err(ApiError::NotJson(_))
        ));
        assert_eq!(field_of(parse_body(r, b"[1]", NOW)), "body");
    }

    #[test]
    fn batches_validate_every_event_before_any_applies() {
        let body = br#"{"events":[
            {"type":"join","chatId":"c1","userId":"u1"},
            {"type":"leave","chatId":"c1"}
        ]}"#;
        assert_eq!(
            field_of(parse_body(&Route::Events, body, NOW)),
            "events[1].userId"
        );
        let body = br#"{"events":[{"type":"shout"}]}"#;
        assert_eq!(
            field_of(parse_body(&Route::Events, body, NOW)),
            "events[0].type"
        );
        assert_eq!(
            field_of(parse_body(&Route::Events, br#"{"events":[]}"#, NOW)),
            "events"
        );
        let many = format!(
            r#"{{"events":[{}]}}"#,
            vec![r#"{"type":"join","chatId":"c","userId":"u"}"#; MAX_BATCH + 1].join(",")
        );
        assert_eq!(
            field_of(parse_body(&Route::Events, many.as_bytes(), NOW)),
            "events"
        );
        let body = br#"{"events":[
            {"type":"message","chatId":"c1","message":{"id":"m","senderId":"u","content":"x"}},
            {"type":"join","chatId":"c1","userId":2},
            {"type":"leave","chatId":"c1","userId":"u3"},
            {"type":"disconnect","userId":"u4","code":4403,"reason":"banned"}
        ]}"#;
        let actions = parse_body(&Route::Events, body, NOW).expect("valid");
        assert!(matches!(
            actions.as_slice(),
            [
                Action::Publish { .. },
                Action::Join { .. },
                Action::Leave { .. },
                Action::Disconnect { code: 4403, .. }
            ]
        ));
    }

    #[test]
    fn disconnect_defaults_to_4001_and_checks_the_code() {
        let route = Route::Disconnect { user: "u".into() };
        let actions = parse_body(&route, b"", NOW).expect("no body is fine");
        let [Action::Disconnect { code, frame, .. }] = actions.as_slice() else {
            panic!("disconnect")
        };
        assert_eq!(*code, 4001);
        assert_eq!(&frame[4..], DEFAULT_DISCONNECT_REASON.as_bytes());
        for bad in [
            r#"{"code":1005}"#,
            r#"{"code":999}"#,
            r#"{"code":"4001"}"#,
            r#"{"code":5000}"#,
        ] {
            assert_eq!(
                field_of(parse_body(&route, bad.as_bytes(), NOW)),
                "code",
                "{bad}"
            );
        }
        let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(124));
        assert_eq!(field_of(parse_body(&route, long.as_bytes(), NOW)), "reason");
    }

    #[test]
    fn ids_must_be_sane() {
        let route = Route::AddMember { chat: "c".into() };
        assert_eq!(
            field_of(parse_body(&route, br#"{"userId":"a\u0000b"}"#, NOW)),
            "userId"
        );
        let long = format!(r#"{{"userId":"{}"}}"#, "u".repeat(MAX_ID_LEN + 1));
        assert_eq!(field_of(parse_body(&route, long.as_bytes(), NOW)), "userId");
        assert_eq!(
            field_of(parse_body(&route, br#"{"userId":1.5}"#, NOW)),
            "userId"
        );
        assert!(parse_body(&route, br#"{"userId":42}"#, NOW).is_ok());
    }

    #[test]
    fn joins_that_reached_someone_are_announced_online() {
        let body = br#"{"events":[
            {"type":"join","chatId":"c1","userId":"u1"},
            {"type":"join","chatId":"c2","userId":"u2"}
        ]}"#;
        let actions = parse_body(&Route::Events, body, NOW).expect("valid");
        let owed = announcements(&actions, &[Outcome::Count(2), Outcome::Count(0)]);
        assert_eq!(owed.len(), 1, "only the join that reached connections");
        assert_eq!(&*owed[0].0, "c1");
        assert_eq!(
            frame_json(&owed[0].1),
            serde_json::json!({"type":"user:online","payload":{"userId":"u1","online":true}})
        );
        assert_eq!(actions[0].nothing(), Outcome::Count(0));
        // Joined and left again in the same batch: nothing to announce.
        let body = br#"{"events":[
            {"type":"join","chatId":"c1","userId":"u1"},
            {"type":"leave","chatId":"c1","userId":"u1"}
        ]}"#;
        let actions = parse_body(&Route::Events, body, NOW).expect("valid");
        assert!(announcements(&actions, &[Outcome::Count(2), Outcome::Count(2)]).is_empty());
    }

    #[test]
    fn outcomes_merge_across_workers() {
        let mut a = Outcome::Count(2);
        a.merge(Outcome::Count(3));
        assert_eq!(a, Outcome::Count(5));
        let mut p = Outcome::Presence(HashMap::from([(Arc::<str>::from("u"), 1)]));
        p.merge(Outcome::Presence(HashMap::from([
            (Arc::<str>::from("u"), 2),
            (Arc::<str>::from("v"), 1),
        ])));
        assert_eq!(
            p,
            Outcome::Presence(HashMap::from([("u".into(), 3), ("v".into(), 1)]))
        );
    }
}
