//! The HTTP/1.1 request that opens a connection: a WebSocket upgrade, or a plain GET for the
//! HTTP endpoints.
//!
//! Parsing is httparse's; this module applies the rules on top: RFC 6455 upgrade requirements,
//! the token carriers (`?token=`, `Authorization: Bearer`, `Sec-WebSocket-Protocol: bearer,
//! <token>`), the Origin allow-list, and absolute-form targets (`GET http://host/path`).
//! Guarantees: the head is capped at [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers; the
//! logged path never contains the query string (tokens travel there).
//! Not guaranteed / not here: the token is only extracted (and [`token_is_well_formed`] checks
//! its shape), never authenticated; [`parse`] does not apply the Origin rule (callers call
//! [`origin_allowed`]); no socket I/O or timeouts; no extension (e.g. compression) is negotiated.

use base64::Engine;
use percent_encoding::percent_decode_str;
use sha1::{Digest, Sha1};

/// Largest request head accepted, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers accepted.
pub const MAX_HEADERS: usize = 48;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request was refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not parseable as HTTP/1.x.
    #[error("malformed HTTP request")]
    Malformed,
    /// The head exceeded [`MAX_HEAD`] or [`MAX_HEADERS`].
    #[error("request head too large")]
    TooLarge,
    /// An upgrade without a valid key, version or method.
    #[error("invalid WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// The browser origin is not allowed by `CORS_ORIGIN`.
    #[error("origin not allowed")]
    OriginRejected,
}

impl HandshakeError {
    /// The HTTP status and reason phrase to answer with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HandshakeError::Malformed | HandshakeError::BadUpgrade(_) => (400, "Bad Request"),
            HandshakeError::TooLarge => (431, "Request Header Fields Too Large"),
            HandshakeError::OriginRejected => (403, "Forbidden"),
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request method.
    pub method: String,
    /// Path without query, for routing and logs.
    pub path: String,
    /// `Host` header.
    pub host: Option<String>,
    /// `Origin` header.
    pub origin: Option<String>,
    /// Present when the request asks for a WebSocket upgrade.
    pub upgrade: Option<Upgrade>,
    /// `Authorization` header (the server API's key travels here); redacted in `Debug`.
    pub authorization: Option<Redacted>,
    /// `Content-Length`, when present.
    pub content_length: Option<u64>,
    /// Whether a `Transfer-Encoding` header is present (the server API refuses it: bodies must
    /// announce their length).
    pub transfer_encoding: bool,
    /// `Expect: 100-continue`: the client waits for an interim answer before the body.
    pub expect_continue: bool,
}

/// A header value that may carry a secret: usable, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The WebSocket part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// The token, from whichever carrier had one.
    pub token: Option<String>,
    /// Whether the token came through `Sec-WebSocket-Protocol` (answer with `bearer`).
    pub bearer_protocol: bool,
}

/// Parses a head from `buf`. `Ok(None)`: incomplete, read more. `Ok(Some((req, n)))`: the head
/// is the first `n` bytes. Long on purpose: one pass over the headers applying every RFC 6455
/// and body-framing rule in order, which the fuzz target and property tests drive as a whole.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        // A complete head can arrive in one read larger than the cap: still refused.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(HandshakeError::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let method = req.method.ok_or(HandshakeError::Malformed)?.to_string();
    let target = req.path.ok_or(HandshakeError::Malformed)?;
    let (path, query) = split_target(target);

    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let host = header("host").map(str::to_string);
    let content_length = content_length(req.headers)?;
    let transfer_encoding = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if transfer_encoding && content_length.is_some() {
        // RFC 9112 6.1: a request smuggling vector; refuse rather than guess.
        return Err(HandshakeError::Malformed);
    }
    let expect_continue = header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let authorization = header("authorization").map(|v| Redacted(v.to_string()));
    let origin = header("origin").map(str::to_string);
    let wants_upgrade = header("upgrade").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    });

    let upgrade = if wants_upgrade {
        if method != "GET" {
            return Err(HandshakeError::BadUpgrade("method must be GET"));
        }
        if !header("connection").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        }) {
            return Err(HandshakeError::BadUpgrade(
                "Connection must include Upgrade",
            ));
        }
        if header("sec-websocket-version") != Some("13") {
            return Err(HandshakeError::BadUpgrade(
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let key = header("sec-websocket-key")
            .filter(|k| !k.is_empty())
            .ok_or(HandshakeError::BadUpgrade("Sec-WebSocket-Key is required"))?;
        let (token, bearer_protocol) = find_token(
            query,
            header("authorization"),
            header("sec-websocket-protocol"),
        );
        Some(Upgrade {
            accept: accept_key(key),
            token,
            bearer_protocol,
        })
    } else {
        None
    };
    Ok(Some((
        Request {
            method,
            path: path.to_string(),
            host,
            origin,
            upgrade,
            authorization,
            content_length,
            transfer_encoding,
            expect_continue,
        },
        n,
    )))
}

/// The `Content-Length`: digits only, and every copy of the header equal (RFC 9112 6.3);
/// anything else is malformed.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HandshakeError> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let v = std::str::from_utf8(h.value)
            .map(str::trim)
            .map_err(|_| HandshakeError::Malformed)?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HandshakeError::Malformed);
        }
        let n = v.parse::<u64>().map_err(|_| HandshakeError::Malformed)?;
        if found.is_some_and(|f| f != n) {
            return Err(HandshakeError::Malformed);
        }
        found = Some(n);
    }
    Ok(found)
}

/// Splits an origin-form or absolute-form target into path and query.
fn split_target(target: &str) -> (&str, &str) {
    let rest = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = &target[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        _ => target,
    };
    match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    }
}

/// The token from the first carrier that has one: query, then Authorization, then protocol.
fn find_token(
    query: &str,
    authorization: Option<&str>,
    protocol: Option<&str>,
) -> (Option<String>, bool) {
    // A browser that offered the `bearer` subprotocol fails the handshake unless it is
    // selected, wherever the token itself came from.
    let mut offered = protocol
        .map(|p| p.split(',').map(str::trim))
        .into_iter()
        .flatten();
    let bearer_offered = offered
        .next()
        .is_some_and(|first| first.eq_ignore_ascii_case("bearer"));
    let from_protocol = if bearer_offered {
        offered.next().filter(|t| !t.is_empty())
    } else {
        None
    };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("token=") {
            let v = percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            if !v.is_empty() {
                return (Some(v), bearer_offered);
            }
        }
    }
    if let Some(auth) = authorization {
        if let Some((scheme, t)) = auth.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() {
                return (Some(t.trim().to_string()), bearer_offered);
            }
        }
    }
    (from_protocol.map(str::to_string), bearer_offered)
}

/// Whether a token can travel in an `Authorization` header: visible ASCII only (RFC 6750's
/// b64token is a subset). Anything else is rejected before any backend call.
pub fn token_is_well_formed(token: &str) -> bool {
    !token.is_empty() && token.len() <= 4096 && token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether a browser `origin` may connect: absent (not a browser), same-origin with `host`, or
/// listed in `allowed` (`*` allows any).
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(up: &Upgrade) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        up.accept
    );
    if up.bearer_protocol {
        r.push_str("Sec-WebSocket-Protocol: bearer\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(extra: &str, target: &str) -> Result<Option<(Request, usize)>, HandshakeError> {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        );
        parse(req.as_bytes())
    }

    #[test]
    fn body_framing_headers_are_strict() {
        let post = |extra: &str| {
            let req = format!("POST /api/events HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
            parse(req.as_bytes()).map(|r| r.map(|(r, _)| (r.content_length, r.transfer_encoding)))
        };
        assert_eq!(post("Content-Length: 12\r\n"), Ok(Some((Some(12), false))));
        assert_eq!(
            post("Content-Length: 12\r\nContent-Length: 12\r\n"),
            Ok(Some((Some(12), false)))
        );
        for bad in [
            "Content-Length: +5\r\n",
            "Content-Length: 1,2\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(post(bad), Err(HandshakeError::Malformed), "{bad:?}");
        }
        assert_eq!(
            post("Transfer-Encoding: chunked\r\n"),
            Ok(Some((None, true)))
        );
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn finds_the_token_in_each_carrier() {
        let (r, _) = upgrade("", "/?token=a%2Bb").unwrap().unwrap();
        assert_eq!(r.upgrade.unwrap().token.as_deref(), Some("a+b"));
        assert_eq!(r.path, "/");
        let (r, _) = upgrade("Authorization: Bearer xyz\r\n", "/ws")
            .unwrap()
            .unwrap();
        assert_eq!(r.upgrade.unwrap().token.as_deref(), Some("xyz"));
        let (r, _) = upgrade("Sec-WebSocket-Protocol: bearer, tok\r\n", "/")
            .unwrap()
            .unwrap();
        let up = r.upgrade.unwrap();
        assert_eq!(up.token.as_deref(), Some("tok"));
        assert!(up.bearer_protocol);
        assert!(String::from_utf8(switching_protocols(&up))
            .unwrap()
            .contains("Sec-WebSocket-Protocol: bearer\r\n"));
        let (r, _) = upgrade("", "http://h:1/ws?x=1&token=abc").unwrap().unwrap();
        assert_eq!(r.path, "/ws");
        assert_eq!(r.upgrade.unwrap().token.as_deref(), Some("abc"));
        let (r, _) = upgrade("", "/").unwrap().unwrap();
        assert_eq!(r.upgrade.unwrap().token, None);
        // Offered `bearer` is selected even when the token came in the query.
        let (r, _) = upgrade("Sec-WebSocket-Protocol: bearer, other\r\n", "/?token=q")
            .unwrap()
            .unwrap();
        let up = r.upgrade.unwrap();
        assert_eq!((up.token.as_deref(), up.bearer_protocol), (Some("q"), true));
        assert!(token_is_well_formed("sst_abc-DEF.~+/="));
        assert!(!token_is_well_formed("caf\u{e9}"));
        assert!(!token_is_well_formed("a b"));
        assert!(!token_is_well_formed("a\nb"));
    }

    #[test]
    fn rejects_broken_upgrades_and_oversized_heads() {
        let bad = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: k\r\n\r\n";
        assert!(matches!(
            parse(bad.as_bytes()),
            Err(HandshakeError::BadUpgrade(_))
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(huge.as_bytes()), Err(HandshakeError::TooLarge));
        let complete = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(complete.as_bytes()), Err(HandshakeError::TooLarge));
        let fits = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD - 64));
        assert!(parse(fits.as_bytes()).is_ok());
        assert_eq!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Err(HandshakeError::Malformed)
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn plain_get_is_not_an_upgrade() {
        let (r, n) = parse(b"GET /healthz?x HTTP/1.1\r\nHost: a\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((r.path.as_str(), r.upgrade, n), ("/healthz", None, 36));
    }

    #[test]
    fn origin_rules() {
        let allowed = vec!["http://localhost:5173".to_string()];
        assert!(origin_allowed(None, None, &allowed));
        assert!(origin_allowed(
            Some("http://localhost:5173"),
            Some("x"),
            &allowed
        ));
        assert!(origin_allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080"),
            &allowed
        ));
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("127.0.0.1:8080"),
            &allowed
        ));
        assert!(origin_allowed(
            Some("http://evil.example"),
            None,
            &["*".to_string()]
        ));
    }
}
