//! The REST API backend: the seed's contract, every call carrying the user's
//! `Authorization: Bearer <token>`.
//!
//! | call | request | success |
//! |---|---|---|
//! | authenticate | `GET /auth/profile` | 200 `{user:{userId,email,name,role}}` |
//! | chats | `GET /chats` | 200 `{chats:[{id,...}]}` |
//! | create_message | `POST /chats/{chatId}/messages {content}` | 201 `{message:{id,chatId,senderId,senderName?,content,createdAt}}` |
//! | mark_read | `PUT /chats/{chatId}/messages/{messageId}/read` | 2xx, optional `{readAt}` |
//!
//! Errors: 401 → `AUTH_FAILED`, 403/404 → `NOT_PARTICIPANT`, 400/422 → `VALIDATION_ERROR`,
//! anything else, a timeout or an unreachable API → `HTTP_ERROR`, each with the API's own
//! `error`/`message` text when its body has one. Path segments are percent-encoded, so a chat id
//! from a client can never change the path. Calls run on a [`Pool`] of threads sharing one
//! keep-alive [`ureq::Agent`], with a per-call timeout; the worker that asked awaits the reply.
//!
//! Upstream faults: a call that times out, cannot connect or gets a 5xx is retried up to
//! `BACKEND_RETRIES` times with backoff — GETs and the read PUT because they are idempotent,
//! and message POSTs because every POST carries an `Idempotency-Key`
//! (`<senderId>:<chatId>:<clientMessageId>`, or a generated UUID), the same on every attempt,
//! so an API that honours the header never stores a message twice. Consecutive failures open a circuit
//! [`Breaker`] (calls then fail fast with `HTTP_ERROR`) which probes the API back. Successful
//! `/auth/profile` answers may be cached for `AUTH_CACHE_TTL` so a reconnect storm does not
//! stampede the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::breaker::{Breaker, State};
use super::pool::{Job, Pool};
use super::store::hash_token;
use super::{
    id_text, opt_id_text, Backend, BackendError, BackendResult, History, NewMessage, Profile, Reply,
};
use crate::config::{RestSettings, RETRY_BACKOFF};
use crate::metrics::RestHooks;
use crate::protocol::{timestamp, ChatMessage, HistoryPage};

/// Characters left as they are in a path segment: RFC 3986 unreserved minus `.`, so that no
/// id can become a `.` or `..` segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Most cached profiles; a full cache drops expired entries, then everything.
const AUTH_CACHE_MAX: usize = 100_000;

struct Guard {
    retries: u32,
    breaker: Mutex<Breaker>,
    hooks: RestHooks,
}

impl Guard {
    /// Runs `attempt` under the breaker, retrying failures.
    fn call<T>(&self, attempt: impl Fn() -> BackendResult<T>) -> BackendResult<T> {
        let mut tries = 0;
        loop {
            let allowed = self.lock().allow(Instant::now());
            if !allowed {
                self.publish_state();
                return Err(BackendError::UpstreamUnavailable("circuit open".into()));
            }
            let result = attempt();
            let failed = is_failure(&result);
            self.lock().record(!failed, Instant::now());
            self.publish_state();
            if !failed || tries >= self.retries {
                return result;
            }
            std::thread::sleep(RETRY_BACKOFF * 4u32.pow(tries));
            tries += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_state(&self) {
        let state: State = self.lock().state();
        self.hooks.breaker_state.set(state as i64);
    }
}

/// A failure of the API itself (worth a retry, counted by the breaker), not an answer.
fn is_failure<T>(r: &BackendResult<T>) -> bool {
    matches!(
        r,
        Err(BackendError::UpstreamTimeout | BackendError::UpstreamUnavailable(_))
    ) || matches!(r, Err(BackendError::UpstreamStatus { status, .. }) if *status >= 500)
}

type ProfileCache = Mutex<HashMap<String, (Profile, Instant)>>;

/// The REST API client.
pub struct RestBackend {
    base: String,
    pool: Pool<ureq::Agent>,
    guard: Arc<Guard>,
    cache_ttl: Duration,
    cache: Arc<ProfileCache>,
}

impl RestBackend {
    /// A client of the API at `opts.url` (no trailing slash needed), behaving under faults as
    /// `opts` says (timeouts, retries, breaker, profile cache).
    pub fn new(opts: &RestSettings, hooks: RestHooks) -> std::io::Result<Self> {
        let agent = ureq::AgentBuilder::new()
            .timeout(opts.timeout)
            .max_idle_connections_per_host(opts.threads.max(1) * 2)
            .build();
        let pool = Pool::new("rest", opts.threads, move || agent.clone())?;
        let guard = Guard {
            retries: opts.retries,
            breaker: Mutex::new(Breaker::new(opts.breaker_threshold, opts.breaker_cooldown)),
            hooks,
        };
        Ok(Self {
            base: opts.url.trim_end_matches('/').to_string(),
            pool,
            guard: Arc::new(guard),
            cache_ttl: opts.auth_cache_ttl,
            cache: Arc::default(),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        call: impl Fn(&ureq::Agent) -> BackendResult<T> + Send + 'static,
    ) -> Reply<T> {
        let (tx, reply) = Reply::channel();
        let guard = self.guard.clone();
        let job = Box::new(move |agent: &ureq::Agent| {
            let started = Instant::now();
            let result = guard.call(|| call(agent));
            let ms = started.elapsed().as_secs_f64() * 1e3;
            match &result {
                Ok(_) => tracing::debug!(call = what, duration_ms = ms, "HTTP API call"),
                Err(e) => {
                    tracing::warn!(call = what, duration_ms = ms, error = %e, "HTTP API call failed")
                }
            }
            let _ = tx.send(result);
        });
        self.submit(job, reply)
    }

    /// Queues a job on the pool; a full queue fails the call at once.
    fn submit<T>(&self, job: Job<ureq::Agent>, reply: Reply<T>) -> Reply<T> {
        if self.pool.submit(job).is_err() {
            return Reply::ready(Err(BackendError::UpstreamUnavailable(
                "too many calls in flight".into(),
            )));
        }
        reply
    }

    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base.clone();
        for s in segments {
            url.push('/');
            url.extend(utf8_percent_encode(s, SEGMENT));
        }
        url
    }
}

/// The `Idempotency-Key` of a message POST, the same on every attempt so a retry can never
/// create a second message: `<senderId>:<chatId>:<clientMessageId>` (each part percent-encoded,
/// so the key is always a valid header and the parts cannot run into each other; the chat is in
/// it because clients may number their ids per chat), or a UUID without a `clientMessageId`.
fn idempotency_key(m: &NewMessage) -> String {
    match &m.client_message_id {
        Some(id) => format!(
            "{}:{}:{}",
            utf8_percent_encode(&m.sender_id, SEGMENT),
            utf8_percent_encode(&m.chat_id, SEGMENT),
            utf8_percent_encode(id, SEGMENT)
        ),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Maps a ureq outcome to the gateway's error rules.
fn map_error(e: ureq::Error) -> BackendError {
    match e {
        ureq::Error::Status(status, resp) => {
            let body: ErrorBody = resp.into_json().unwrap_or_default();
            let text = body.message.or(body.error);
            let text = |default: &str| text.clone().unwrap_or_else(|| default.to_string());
            match status {
                401 => BackendError::TokenRejected(text("Invalid token")),
                403 | 404 => BackendError::NotParticipant(text("Not a participant of this chat")),
                400 | 422 => BackendError::InvalidRequest(text("Invalid request")),
                _ => BackendError::UpstreamStatus {
                    status,
                    message: text(&format!("HTTP API error {status}")),
                },
            }
        }
        ureq::Error::Transport(t) if t.kind() == ureq::ErrorKind::BadHeader => {
            // The request itself could not be formed (client-supplied bytes in a header): an
            // answer to that client, not a fault of the API, so never retried nor counted by the
            // breaker. (URLs cannot fail this way: the base is validated at start-up and every
            // path segment is percent-encoded.)
            BackendError::InvalidRequest("Request cannot be sent to the HTTP API".into())
        }
        ureq::Error::Transport(t) => {
            let timed_out = std::error::Error::source(&t)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    )
                });
            if timed_out || t.to_string().contains("timed out") {
                BackendError::UpstreamTimeout
            } else {
                BackendError::UpstreamUnavailable(t.kind().to_string())
            }
        }
    }
}

/// Reads a success body in full, then parses it. A body cut short by the connection is an
/// upstream failure (retried: every call is idempotent or carries an `Idempotency-Key`); a
/// complete body in the wrong shape is [`BackendError::UpstreamBadResponse`] (not retried).
fn read_json<T: serde::de::DeserializeOwned>(resp: ureq::Response) -> BackendResult<T> {
    use std::io::ErrorKind;
    let body = resp.into_string().map_err(|e| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => BackendError::UpstreamTimeout,
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => {
            BackendError::UpstreamUnavailable(format!("response cut short: {e}"))
        }
        // Over ureq's 10 MiB body limit, or not text: a complete answer, just not one we take.
        _ => BackendError::UpstreamBadResponse(e.to_string()),
    })?;
    serde_json::from_str(&body).map_err(|e| BackendError::UpstreamBadResponse(e.to_string()))
}

/// The API was asked for `limit + 1` messages (oldest first): more than `limit` means there
/// are more, and the extra one is on the far side (the newest for `after`, the oldest
/// otherwise).
fn trim_extra(page: &HistoryPage, messages: &mut Vec<ChatMessage>) -> History {
    let limit = page.limit as usize;
    let has_more = messages.len() > limit;
    if has_more {
        if page.after.is_some() {
            messages.truncate(limit);
        } else {
            messages.drain(..messages.len() - limit);
        }
    }
    History {
        messages: std::mem::take(messages),
        has_more,
    }
}

#[derive(Deserialize)]
struct ProfileBody {
    user: Profile,
}

#[derive(Deserialize)]
struct ChatRef {
    #[serde(deserialize_with = "id_text")]
    id: String,
}

#[derive(Deserialize)]
struct ChatsBody {
    chats: Vec<ChatRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredMessage {
    #[serde(deserialize_with = "id_text")]
    id: String,
    #[serde(default, deserialize_with = "opt_id_text")]
    chat_id: Option<String>,
    #[serde(default, deserialize_with = "opt_id_text")]
    sender_id: Option<String>,
    #[serde(default)]
    sender_name: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    client_message_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageBody {
    message: StoredMessage,
}

#[derive(Deserialize)]
struct MessagesBody {
    messages: Vec<StoredMessage>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ReadBody {
    #[serde(default)]
    read_at: Option<String>,
}

impl Backend for RestBackend {
    fn name(&self) -> &'static str {
        "rest"
    }

    fn authenticate(&self, token: &str) -> Reply<Profile> {
        let cache_key = (!self.cache_ttl.is_zero()).then(|| hash_token(token));
        if let Some(key) = &cache_key {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((profile, expires)) = cache.get(key) {
                if *expires > Instant::now() {
                    self.guard.hooks.auth_cache_hits.inc();
                    return Reply::ready(Ok(profile.clone()));
                }
            }
        }
        let (url, auth) = (self.url(&["auth", "profile"]), bearer(token));
        let (cache, ttl) = (self.cache.clone(), self.cache_ttl);
        self.run("GET /auth/profile", move |agent| {
            let resp = agent
                .get(&url)
                .set("Authorization", &auth)
                .call()
                .map_err(map_error)?;
            let body: ProfileBody = read_json(resp)?;
            if body.user.user_id.is_empty() {
                return Err(BackendError::TokenRejected("Profile has no userId".into()));
            }
            if let Some(key) = &cache_key {
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= AUTH_CACHE_MAX {
                    let now = Instant::now();
                    cache.retain(|_, (_, expires)| *expires > now);
                    if cache.len() >= AUTH_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(key.clone(), (body.user.clone(), Instant::now() + ttl));
            }
            Ok(body.user)
        })
    }

    fn chats(&self, token: &str) -> Reply<Vec<String>> {
        let (url, auth) = (self.url(&["chats"]), bearer(token));
        self.run("GET /chats", move |agent| {
            let resp = agent
                .get(&url)
                .set("Authorization", &auth)
                .call()
                .map_err(map_error)?;
            let body: ChatsBody = read_json(resp)?;
            Ok(body.chats.into_iter().map(|c| c.id).collect())
        })
    }

    fn create_message(&self, token: &str, m: NewMessage) -> Reply<ChatMessage> {
        let (url, auth) = (self.url(&["chats", &m.chat_id, "messages"]), bearer(token));
        let key = idempotency_key(&m);
        self.run("POST /chats/:id/messages", move |agent| {
            let resp = agent
                .post(&url)
                .set("Authorization", &auth)
                .set("Idempotency-Key", &key)
                .send_json(serde_json::json!({ "content": m.content }))
                .map_err(map_error)?;
            let body: MessageBody = read_json(resp)?;
            let s = body.message;
            Ok(ChatMessage {
                id: s.id,
                chat_id: s.chat_id.unwrap_or_else(|| m.chat_id.clone()),
                sender_id: s.sender_id.unwrap_or_else(|| m.sender_id.clone()),
                sender_name: s.sender_name.unwrap_or_else(|| m.sender_name.clone()),
                content: s.content.unwrap_or_else(|| m.content.clone()),
                created_at: s.created_at.unwrap_or_else(timestamp::now),
                client_message_id: m.client_message_id.clone(),
            })
        })
    }

    fn mark_read(&self, token: &str, chat_id: &str, message_id: &str) -> Reply<Option<String>> {
        let url = self.url(&["chats", chat_id, "messages", message_id, "read"]);
        let auth = bearer(token);
        self.run("PUT /chats/:id/messages/:id/read", move |agent| {
            let resp = agent
                .put(&url)
                .set("Authorization", &auth)
                .call()
                .map_err(map_error)?;
            let body = resp.into_string().unwrap_or_default();
            let parsed: ReadBody = serde_json::from_str(&body).unwrap_or_default();
            Ok(parsed.read_at)
        })
    }

    fn history(&self, token: &str, chat_id: &str, page: &HistoryPage) -> Reply<History> {
        let (url, auth) = (self.url(&["chats", chat_id, "messages"]), bearer(token));
        let (chat, page) = (chat_id.to_string(), page.clone());
        self.run("GET /chats/:id/messages", move |agent| {
            // One more than asked tells whether there are more.
            let mut req = agent
                .get(&url)
                .set("Authorization", &auth)
                .query("limit", &(page.limit + 1).to_string());
            if let Some(after) = &page.after {
                req = req.query("after", after);
            }
            if let Some(before) = &page.before {
                req = req.query("before", before);
            }
            let body: MessagesBody = read_json(req.call().map_err(map_error)?)?;
            let mut messages: Vec<ChatMessage> = body
                .messages
                .into_iter()
                .map(|s| {
                    let sender_id = s.sender_id.unwrap_or_default();
                    ChatMessage {
                        id: s.id,
                        chat_id: s.chat_id.unwrap_or_else(|| chat.clone()),
                        sender_name: s.sender_name.unwrap_or_else(|| sender_id.clone()),
                        sender_id,
                        content: s.content.unwrap_or_default(),
                        created_at: s.created_at.unwrap_or_default(),
                        client_message_id: s.client_message_id,
                    }
                })
                .collect();
            Ok(trim_extra(&page, &mut messages))
        })
    }

    fn probe(&self) -> Reply<()> {
        // Reachability only, and outside the breaker: any HTTP answer means reachable, and a
        // readiness check must neither reset nor close the breaker.
        let url = self.base.clone();
        let (tx, reply) = Reply::channel();
        let job = Box::new(move |agent: &ureq::Agent| {
            let result = match agent.get(&url).call() {
                Ok(_) | Err(ureq::Error::Status(..)) => Ok(()),
                Err(e) => Err(map_error(e)),
            };
            let _ = tx.send(result);
        });
        self.submit(job, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_per_sender_and_chat_and_header_safe() {
        let m = |chat: &str, id: Option<&str>| NewMessage {
            chat_id: chat.into(),
            content: "x".into(),
            client_message_id: id.map(str::to_string),
            sender_id: "u:1".into(),
            sender_name: "U".into(),
        };
        assert_eq!(idempotency_key(&m("a", Some("1"))), "u%3A1:a:1");
        assert_ne!(
            idempotency_key(&m("a", Some("1"))),
            idempotency_key(&m("b", Some("1")))
        );
        // Parts cannot run into each other.
        assert_ne!(
            idempotency_key(&m("a:b", Some("c"))),
            idempotency_key(&m("a", Some("b:c")))
        );
        assert_eq!(
            idempotency_key(&m("a", Some("caf\u{e9}\n"))),
            "u%3A1:a:caf%C3%A9%0A"
        );
        let (k1, k2) = (
            idempotency_key(&m("a", None)),
            idempotency_key(&m("a", None)),
        );
        assert_ne!(
            k1, k2,
            "a message without clientMessageId gets a fresh UUID"
        );
    }

    #[test]
    fn one_extra_message_means_more_and_is_dropped_on_the_far_side() {
        let msg = |id: &str| ChatMessage {
            id: id.into(),
            chat_id: "c".into(),
            sender_id: "u".into(),
            sender_name: "U".into(),
            content: "x".into(),
            created_at: String::new(),
            client_message_id: None,
        };
        let page = |after: Option<&str>| HistoryPage {
            after: after.map(Into::into),
            before: None,
            limit: 2,
        };
        let ids = |h: &History| h.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        let mut three = vec![msg("a"), msg("b"), msg("c")];
        let h = trim_extra(&page(Some("z")), &mut three.clone());
        assert_eq!((ids(&h), h.has_more), (vec!["a".into(), "b".into()], true));
        let h = trim_extra(&page(None), &mut three);
        assert_eq!((ids(&h), h.has_more), (vec!["b".into(), "c".into()], true));
        let h = trim_extra(&page(None), &mut vec![msg("a"), msg("b")]);
        assert_eq!((ids(&h), h.has_more), (vec!["a".into(), "b".into()], false));
    }

    #[test]
    fn path_segments_are_encoded() {
        let opts = RestSettings {
            url: "http://127.0.0.1:1/api/".into(),
            threads: 1,
            timeout: Duration::from_millis(10),
            retries: 0,
            breaker_threshold: 0,
            breaker_cooldown: Duration::from_secs(1),
            auth_cache_ttl: Duration::ZERO,
        };
        let b = RestBackend::new(&opts, RestHooks::default()).unwrap();
        assert_eq!(
            b.url(&["chats", "../a b/c", "messages"]),
            "http://127.0.0.1:1/api/chats/%2E%2E%2Fa%20b%2Fc/messages"
        );
    }
}
