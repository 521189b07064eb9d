//! Server API routes: method and path to a [`Route`], with percent-decoded ids.
//!
//! Guarantees: only `/api/...` paths match; each id segment is percent-decoded and must be a
//! valid id (non-empty, at most [`super::MAX_ID_LEN`] bytes, no control characters); a known
//! path with the wrong method is 405 with the allowed method, not 404.

use std::sync::Arc;

use percent_encoding::percent_decode_str;

use super::action::check_id;
use super::ApiError;

/// A server API route, with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /api/chats/{chatId}/messages`
    Publish {
        /// The chat.
        chat: Arc<str>,
    },
    /// `POST /api/chats/{chatId}/members`
    AddMember {
        /// The chat.
        chat: Arc<str>,
    },
    /// `DELETE /api/chats/{chatId}/members/{userId}`
    RemoveMember {
        /// The chat.
        chat: Arc<str>,
        /// The user.
        user: Arc<str>,
    },
    /// `POST /api/users/{userId}/disconnect`
    Disconnect {
        /// The user.
        user: Arc<str>,
    },
    /// `GET /api/chats/{chatId}/presence`
    Presence {
        /// The chat.
        chat: Arc<str>,
    },
    /// `POST /api/events`
    Events,
}

impl Route {
    /// The label used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Publish { .. } => "publish",
            Route::AddMember { .. } => "add_member",
            Route::RemoveMember { .. } => "remove_member",
            Route::Disconnect { .. } => "disconnect",
            Route::Presence { .. } => "presence",
            Route::Events => "events",
        }
    }

    /// Whether the route reads a request body.
    pub fn has_body(&self) -> bool {
        !matches!(self, Route::Presence { .. } | Route::RemoveMember { .. })
    }
}

/// Whether `path` belongs to the server API.
pub fn is_api_path(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// The route for `method` and `path` (without query).
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let Some(rest) = path.strip_prefix("/api/") else {
        return Err(ApiError::NotFound);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (route, allow) = match segments.as_slice() {
        ["chats", chat, "messages"] => (
            Route::Publish {
                chat: id(chat, "chatId")?,
            },
            "POST",
        ),
        ["chats", chat, "members"] => (
            Route::AddMember {
                chat: id(chat, "chatId")?,
            },
            "POST",
        ),
        ["chats", chat, "members", user] => (
            Route::RemoveMember {
                chat: id(chat, "chatId")?,
                user: id(user, "userId")?,
            },
            "DELETE",
        ),
        ["chats", chat, "presence"] => (
            Route::Presence {
                chat: id(chat, "chatId")?,
            },
            "GET",
        ),
        ["users", user, "disconnect"] => (
            Route::Disconnect {
                user: id(user, "userId")?,
            },
            "POST",
        ),
        ["events"] => (Route::Events, "POST"),
        _ => return Err(ApiError::NotFound),
    };
    let method_ok = method == allow || (allow == "GET" && method == "HEAD");
    if method_ok {
        Ok(route)
    } else {
        Err(ApiError::MethodNotAllowed(allow))
    }
}

fn id(segment: &str, field: &'static str) -> Result<Arc<str>, ApiError> {
    let decoded = percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::Invalid {
            field: field.to_string(),
            rule: "must be UTF-8 once percent-decoded",
        })?;
    check_id(&decoded, field)?;
    Ok(decoded.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_their_ids() {
        assert_eq!(
            route("POST", "/api/chats/team%20a/messages"),
            Ok(Route::Publish {
                chat: "team a".into()
            })
        );
        assert_eq!(
            route("DELETE", "/api/chats/c1/members/u%2F2"),
            Ok(Route::RemoveMember {
                chat: "c1".into(),
                user: "u/2".into()
            })
        );
        assert_eq!(route("POST", "/api/events"), Ok(Route::Events));
        assert_eq!(
            route("GET", "/api/chats/c1/presence"),
            Ok(Route::Presence { chat: "c1".into() })
        );
    }

    #[test]
    fn wrong_method_is_405_and_unknown_path_404() {
        assert_eq!(
            route("GET", "/api/events"),
            Err(ApiError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route("POST", "/api/chats/c1/presence"),
            Err(ApiError::MethodNotAllowed("GET"))
        );
        assert_eq!(route("POST", "/api/chats/c1"), Err(ApiError::NotFound));
        assert_eq!(
            route("POST", "/api/chats//messages").map_err(|e| e.status()),
            Err(400)
        );
        assert_eq!(route("GET", "/healthz"), Err(ApiError::NotFound));
        assert!(is_api_path("/api/events") && !is_api_path("/apix"));
    }
}
