//! The server API: what the product's backend may tell the gateway about live users, as plain
//! data. No sockets here: the shell (`net::api`) reads a request, [`route`]s it, turns its body
//! into [`Action`]s with [`parse_body`], has every worker carry them out, and renders the
//! [`Reply`] built here.
//!
//! | route | action |
//! |---|---|
//! | `POST /api/chats/{chatId}/messages` | deliver a message stored elsewhere as `chat:message` |
//! | `POST /api/chats/{chatId}/members` `{userId}` | the user's live connections join the chat (`chat:new`) |
//! | `DELETE /api/chats/{chatId}/members/{userId}` | they leave it (`chat:removed`) |
//! | `POST /api/users/{userId}/disconnect` `{code?, reason?}` | close every connection of the user |
//! | `GET /api/chats/{chatId}/presence` | users online in the chat, with connection counts |
//! | `POST /api/events` `{events:[...]}` | several of the above, in order |
//!
//! Guarantees: a request is validated whole before anything is applied (a batch with one bad
//! event applies none, and the 400 names the field, e.g. `events[2].userId`); ids are non-empty,
//! at most [`MAX_ID_LEN`] bytes and free of control characters; a batch has at most
//! [`MAX_BATCH`] events. Not guaranteed / not here: authentication of the caller (the shell
//! checks the key before reading a body), body size and read deadlines (the shell), and
//! nothing is stored: a message posted here is delivered, not persisted.

mod action;
mod error;
mod route;

pub use action::{announcements, parse_body, Action, Outcome, MAX_BATCH, MAX_ID_LEN};
pub use error::ApiError;
pub use route::{is_api_path, route, Route};

use serde_json::{json, Value};

/// An answer, before it is rendered as HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// `Allow` header (405 answers).
    pub allow: Option<&'static str>,
}

impl Reply {
    /// A 200 with `body`.
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            allow: None,
        }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        let mut error = json!({ "code": e.code(), "message": e.to_string() });
        if let Some(field) = e.field() {
            error["field"] = Value::from(field);
        }
        Self {
            status: e.status(),
            body: json!({ "error": error }),
            allow: e.allow(),
        }
    }
}

/// The body answering `route` once every worker applied its actions; `outcomes` holds one
/// merged [`Outcome`] per action, in order.
pub fn success(route: &Route, actions: &[Action], outcomes: &[Outcome]) -> Reply {
    match route {
        Route::Events => Reply::ok(json!({
            "results": actions
                .iter()
                .zip(outcomes)
                .map(|(a, o)| result_of(a, o))
                .collect::<Vec<_>>()
        })),
        _ => match (actions.first(), outcomes.first()) {
            (Some(a), Some(o)) => Reply::ok(result_of(a, o)),
            _ => Reply::from(ApiError::Internal("no outcome")),
        },
    }
}

fn result_of(action: &Action, outcome: &Outcome) -> Value {
    match (action, outcome) {
        (Action::Presence { chat }, Outcome::Presence(users)) => {
            let mut users: Vec<_> = users.iter().collect();
            users.sort();
            json!({
                "chatId": &**chat,
                "users": users
                    .iter()
                    .map(|(u, n)| json!({ "userId": &***u, "connections": n }))
                    .collect::<Vec<_>>()
            })
        }
        (Action::Publish { message_id, .. }, Outcome::Count(n)) => {
            json!({ "type": "message", "messageId": message_id, "delivered": n })
        }
        (Action::Join { .. }, Outcome::Count(n)) => json!({ "type": "join", "connections": n }),
        (Action::Leave { .. }, Outcome::Count(n)) => json!({ "type": "leave", "connections": n }),
        (Action::Disconnect { .. }, Outcome::Count(n)) => {
            json!({ "type": "disconnect", "connections": n })
        }
        _ => json!({ "error": "outcome does not match its action" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn errors_render_with_code_message_and_field() {
        let r = Reply::from(ApiError::Invalid {
            field: "events[1].userId".into(),
            rule: "is required",
        });
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(r.body["error"]["field"], "events[1].userId");
        assert_eq!(r.body["error"]["message"], "events[1].userId is required");
    }

    #[test]
    fn presence_lists_users_sorted_with_counts() {
        let chat: Arc<str> = "c".into();
        let mut users = HashMap::new();
        users.insert(Arc::<str>::from("bob"), 2);
        users.insert(Arc::<str>::from("ann"), 1);
        let r = success(
            &Route::Presence { chat: chat.clone() },
            &[Action::Presence { chat }],
            &[Outcome::Presence(users)],
        );
        assert_eq!(
            r.body,
            json!({"chatId":"c","users":[{"userId":"ann","connections":1},{"userId":"bob","connections":2}]})
        );
    }
}
