//! The server API's shell: reads one request (head already parsed, then its body), checks the
//! key, has the workers carry it out, and answers with JSON. Served on `WS_PORT` next to the
//! WebSocket upgrades, or on a listener of its own when `API_PORT` is set. The rules (routes,
//! bodies, answers) are in `crate::api`.
//!
//! Guarantees: the key is checked (in constant time) before any body byte is read; a body is
//! read only up to `API_MAX_BODY`, only as far as it arrives (never reserved from the announced
//! length), within [`BODY_TIMEOUT`]; every request is counted in
//! `socket_server_api_requests_total` and logged with route, status and duration, never with
//! the key or a body. Not guaranteed: keep-alive (every answer closes its connection; batch
//! with `POST /api/events`); chunked request bodies (answered 411).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::TcpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::read_head;
use super::handshake::Request;
use super::stream::Stream;
use super::worker::Worker;
use crate::api::{self, ApiError, Reply, Route};
use crate::protocol::timestamp;

/// How long a request body may take to arrive, from the end of the head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the head may take on the `API_PORT` listener (a backend sends it at once).
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// Most connections open at once on `API_PORT`; more are answered 503 at once. The backend
/// batches with `/api/events`, so a few dozen are plenty; the cap keeps a flood of idle sockets
/// from taking the file descriptors WebSocket clients need.
pub const MAX_API_CONNECTIONS: usize = 256;
/// After answering, unread request bytes (a refused body still being sent) are read and
/// dropped for at most this long and this much, so the client gets the answer instead of a
/// reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;
/// How long the answer may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read step while a body arrives.
const READ_STEP: usize = 64 * 1024;

/// Where a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `WS_PORT`, shared with WebSockets.
    Shared,
    /// `API_PORT`.
    Own,
}

/// Answers one server API request on `stream`, whose head is `req`; `rest` holds whatever
/// arrived behind the head. Closes the connection afterwards.
pub async fn serve(
    worker: &Rc<Worker>,
    stream: &mut Stream,
    req: &Request,
    rest: BytesMut,
    port: Port,
) {
    let started = Instant::now();
    let (route, reply) = match answer(worker, stream, req, rest, port).await {
        Ok((route, reply)) => (route.name(), reply),
        Err((route, e)) => (route.map_or("unknown", |r| r.name()), Reply::from(e)),
    };
    let seconds = started.elapsed().as_secs_f64();
    worker
        .shared
        .metrics
        .api_request(route, reply.status, seconds);
    if reply.status == 401 {
        tracing::warn!(route, method = %req.method, path = %req.path, "API request refused: missing or wrong key");
    } else {
        tracing::info!(route, method = %req.method, path = %req.path, status = reply.status, ms = seconds * 1e3, "API request");
    }
    let response = render(&reply, req.method == "HEAD");
    respond(stream, &response).await;
}

/// Writes `response`, closes the write side, then reads and drops what the client still sends
/// (bounded), so a refused upload sees the answer rather than a reset.
async fn respond(stream: &mut Stream, response: &[u8]) {
    let written = monoio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = monoio::time::timeout(LINGER, async {
        let mut sink = vec![0u8; 4096];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

type Failure = (Option<Route>, ApiError);

async fn answer(
    worker: &Rc<Worker>,
    stream: &mut Stream,
    req: &Request,
    rest: BytesMut,
    port: Port,
) -> Result<(Route, Reply), Failure> {
    let Some(api) = &worker.config().api else {
        return Err((None, ApiError::NotFound));
    };
    let key = &api.key;
    // With API_PORT set the API lives there only, so it can be kept off the public interface.
    let here = if api.own_addr.is_some() {
        Port::Own
    } else {
        Port::Shared
    };
    if port != here || !api::is_api_path(&req.path) {
        return Err((None, ApiError::NotFound));
    }
    let offered = req
        .authorization
        .as_ref()
        .and_then(|h| bearer(&h.0))
        .unwrap_or("");
    if !key.matches(offered) {
        return Err((None, ApiError::Unauthorized));
    }
    let route = api::route(&req.method, &req.path).map_err(|e| (None, e))?;
    let fail = |e| (Some(route.clone()), e);
    if worker.draining() {
        return Err(fail(ApiError::ShuttingDown));
    }
    let body = if route.has_body() {
        let len = body_len(req, api.max_body).map_err(fail)?;
        if req.expect_continue {
            // The key, route and size are fine: the client may send the body now.
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        read_body(stream, rest, len).await.map_err(fail)?
    } else {
        BytesMut::new()
    };
    let actions = api::parse_body(&route, &body, &timestamp::now()).map_err(fail)?;
    drop(body);
    let outcomes = worker.api(actions.clone()).await.map_err(fail)?;
    let reply = api::success(&route, &actions, &outcomes);
    Ok((route, reply))
}

/// The token of a `Bearer` authorization header (scheme case-insensitive).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The body length `req` announces, if acceptable: at most `max`, never chunked.
fn body_len(req: &Request, max: usize) -> Result<usize, ApiError> {
    if req.transfer_encoding {
        return Err(ApiError::LengthRequired);
    }
    // No Content-Length and no Transfer-Encoding: HTTP/1.1 says there is no body.
    let len = req.content_length.unwrap_or(0);
    usize::try_from(len)
        .ok()
        .filter(|n| *n <= max)
        .ok_or(ApiError::TooLarge(max))
}

/// Reads a `len`-byte body (`buf` holds what came behind the head), growing only by what
/// arrives.
async fn read_body(
    stream: &mut Stream,
    mut buf: BytesMut,
    len: usize,
) -> Result<BytesMut, ApiError> {
    let read = async {
        while buf.len() < len {
            buf.reserve((len - buf.len()).min(READ_STEP));
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    };
    match monoio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(true) => {
            buf.truncate(len);
            Ok(buf)
        }
        Ok(false) => Err(ApiError::BodyIncomplete {
            got: buf.len(),
            announced: len,
        }),
        Err(_) => Err(ApiError::BodyTimeout(BODY_TIMEOUT.as_millis() as u64)),
    }
}

/// The HTTP response for `reply`.
fn render(reply: &Reply, head_only: bool) -> Vec<u8> {
    let body = reply.body.to_string();
    let mut extra = String::new();
    if let Some(allow) = reply.allow {
        extra.push_str(&format!("Allow: {allow}\r\n"));
    }
    if reply.status == 401 {
        extra.push_str("WWW-Authenticate: Bearer\r\n");
    }
    let mut r = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\nCache-Control: no-store\r\n\r\n",
        reply.status,
        reason(reply.status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        r.extend_from_slice(body.as_bytes());
    }
    r
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Serves one connection accepted on `API_PORT`.
pub async fn serve_own_port(worker: Rc<Worker>, stream: TcpStream, _peer: SocketAddr) {
    /// Holds one of the [`MAX_API_CONNECTIONS`] slots.
    struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    // TCP_NODELAY: inherited from the listener (`worker::bind_first`).
    let Ok(mut stream) = super::stream::from_tcp(stream) else {
        return;
    };
    // The drain waits for this request like for a WebSocket connection.
    let _task = worker.track_task();
    let open = &worker.shared.counts.api;
    let _slot = Slot(open);
    if open.fetch_add(1, Ordering::Relaxed) >= MAX_API_CONNECTIONS {
        tracing::warn!("API connection refused: {MAX_API_CONNECTIONS} already open");
        worker.shared.metrics.api_request("unknown", 503, 0.0);
        respond(&mut stream, &render(&Reply::from(ApiError::Busy), false)).await;
        return;
    }
    let mut buf = BytesMut::with_capacity(1024);
    let (req, consumed) = match read_head(&mut stream, &mut buf, HEAD_TIMEOUT).await {
        Ok(Some(found)) => found,
        Ok(None) => return, // closed or too slow before a full head
        Err(e) => {
            let (status, _) = e.status();
            let reply = Reply {
                status,
                body: serde_json::json!({ "error": { "code": "BAD_REQUEST", "message": e.to_string() } }),
                allow: None,
            };
            worker.shared.metrics.api_request("unknown", status, 0.0);
            respond(&mut stream, &render(&reply, false)).await;
            return;
        }
    };
    let rest = buf.split_off(consumed);
    serve(&worker, &mut stream, &req, rest, Port::Own).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn answers_carry_allow_and_www_authenticate() {
        let r = render(&Reply::from(ApiError::MethodNotAllowed("POST")), false);
        let text = String::from_utf8(r).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: POST\r\n"), "{text}");
        let r = render(&Reply::from(ApiError::Unauthorized), true);
        let text = String::from_utf8(r).expect("ascii");
        assert!(text.contains("WWW-Authenticate: Bearer"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text}");
    }
}
