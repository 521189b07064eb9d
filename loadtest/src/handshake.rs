//! The WebSocket opening handshake, done by hand (no WebSocket library on the client side).
//!
//! Guarantees:
//! - [`Target::parse`] accepts only `ws://` URLs whose host is on the loopback network
//!   (127.0.0.0/8, `localhost`): this tool never sends load anywhere else.
//! - [`request`] writes a complete HTTP/1.1 upgrade request carrying the token as `?token=`.
//! - [`parse_response`] reads the response head with `httparse`, demands status 101, and says
//!   where the head ends, so bytes after it (the first frames) are not lost.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Loopback address to connect to.
    pub addr: SocketAddrV4,
    /// The `Host` header value, as given in the URL.
    pub host_header: String,
    /// Path part of the URL (`/` when absent), without a query.
    pub path: String,
}

impl Target {
    /// Parses `ws://HOST[:PORT][/PATH]`; HOST must be `localhost` or an IPv4 loopback address.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = path.split('?').next().unwrap_or("/");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("bad port in {url}"))?,
            ),
            None => (authority, 80),
        };
        let ip = if host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse::<Ipv4Addr>()
                .with_context(|| format!("{host}: give an IPv4 loopback address"))?
        };
        if !ip.is_loopback() {
            bail!("{ip} is not a loopback address: this tool only loads servers on 127.0.0.0/8");
        }
        Ok(Self {
            addr: SocketAddrV4::new(ip, port),
            host_header: authority.to_string(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
        })
    }

    /// The socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::V4(self.addr)
    }
}

/// A `Sec-WebSocket-Key` value from 16 bytes.
pub fn key_from(bytes: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The upgrade request for `token` (tokens of the fixture need no escaping: `t12`, `t12.3`).
pub fn request(target: &Target, token: &str, key: &str) -> String {
    format!(
        "GET {path}?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        path = target.path,
        host = target.host_header,
    )
}

/// Parses the response head at the front of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(n))`: a 101 head of `n` bytes (frames follow).
/// An error for any other status (with the status line) or a malformed head.
pub fn parse_response(buf: &[u8]) -> Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf).context("malformed HTTP response")? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => {
            let code = resp.code.unwrap_or(0);
            if code != 101 {
                let body = String::from_utf8_lossy(&buf[n..buf.len().min(n + 200)]);
                bail!(
                    "upgrade refused: HTTP {code} {} {}",
                    resp.reason.unwrap_or(""),
                    body.trim()
                );
            }
            let upgrade_ok = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && std::str::from_utf8(h.value)
                        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
            });
            if !upgrade_ok {
                bail!("101 response without Upgrade: websocket");
            }
            Ok(Some(n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls_only() {
        let t = Target::parse("ws://127.0.0.1:8090/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8090".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = Target::parse("ws://localhost:9/ws?x=1").unwrap();
        assert_eq!(t.path, "/ws");
        assert_eq!(t.host_header, "localhost:9");
        let t = Target::parse("ws://127.0.0.3:1").unwrap();
        assert_eq!(t.path, "/");
        assert!(Target::parse("ws://10.0.0.1:80/").is_err());
        assert!(Target::parse("ws://example.com/").is_err());
        assert!(Target::parse("http://127.0.0.1/").is_err());
    }

    #[test]
    fn request_has_the_token_and_headers() {
        let t = Target::parse("ws://127.0.0.1:8090/").unwrap();
        let r = request(&t, "t7.2", &key_from([0; 16]));
        assert!(r.starts_with("GET /?token=t7.2 HTTP/1.1\r\n"));
        assert!(r.contains("Host: 127.0.0.1:8090\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn response_101_partial_and_refused() {
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: x\r\n\r\n\x81\x02hi";
        let n = parse_response(ok).unwrap().unwrap();
        assert_eq!(&ok[n..], b"\x81\x02hi");
        assert_eq!(parse_response(&ok[..20]).unwrap(), None);
        let e =
            parse_response(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\nUnauthorized")
                .unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
        assert!(parse_response(b"HTTP/1.1 101 OK\r\n\r\n").is_err());
    }
}
