//! Plain-HTTP requests on the WebSocket port: `GET /healthz` (the process is alive),
//! `GET /readyz` (every worker listens and the backend answers), `GET /metrics` (Prometheus,
//! OpenMetrics text; see `crate::metrics`), and in demo mode `GET /`, a
//! small chat page embedded in the binary. Every response closes its connection; this is not a
//! general web server.
//!
//! This module knows nothing of workers: it answers through [`Health`], the narrow view the
//! server gives it (metrics text, readiness, whether demo mode is on).

use std::future::Future;

/// The demo chat page.
const DEMO_PAGE: &str = include_str!("demo.html");

/// What `/readyz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Workers whose listener is bound.
    pub listening: usize,
    /// Workers configured.
    pub workers: usize,
    /// The backend's name.
    pub backend: &'static str,
    /// Whether the backend answered its probe.
    pub backend_reachable: bool,
    /// Whether shutdown began.
    pub stopping: bool,
    /// Whether the multi-node broker is connected (`None`: a single node, no broker).
    pub broker_connected: Option<bool>,
}

impl Readiness {
    /// Ready: every worker listens, the backend answers, the broker (if any) is connected,
    /// and no shutdown began.
    pub fn ready(&self) -> bool {
        self.listening == self.workers
            && self.backend_reachable
            && !self.stopping
            && self.broker_connected != Some(false)
    }
}

/// What the plain-HTTP answers need from the server.
pub trait Health {
    /// The metrics in OpenMetrics text.
    fn metrics_text(&self) -> String;
    /// Whether demo mode (and so the demo page) is on.
    fn demo(&self) -> bool;
    /// The current readiness (may probe the backend; the implementation bounds and caches it).
    fn readiness(&self) -> impl Future<Output = Readiness>;
}

/// A complete plain-HTTP response that closes the connection.
pub fn http_response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The full response to a plain request; a `HEAD` gets the same head without the body.
pub async fn respond(server: &impl Health, method: &str, path: &str) -> Vec<u8> {
    let mut response = respond_get(server, method, path).await;
    if method == "HEAD" {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            response.truncate(end + 4);
        }
    }
    response
}

async fn respond_get(server: &impl Health, method: &str, path: &str) -> Vec<u8> {
    if method != "GET" && method != "HEAD" {
        return http_response(
            405,
            "Method Not Allowed",
            "text/plain",
            b"method not allowed",
        );
    }
    match path {
        "/healthz" => http_response(200, "OK", "application/json", br#"{"status":"ok"}"#),
        "/metrics" => http_response(
            200,
            "OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            server.metrics_text().as_bytes(),
        ),
        "/readyz" => {
            let r = server.readiness().await;
            let broker = match r.broker_connected {
                Some(up) => format!(r#","brokerConnected":{up}"#),
                None => String::new(),
            };
            let body = format!(
                r#"{{"ready":{},"workersListening":{},"workers":{},"backend":"{}","backendReachable":{},"stopping":{}{broker}}}"#,
                r.ready(),
                r.listening,
                r.workers,
                r.backend,
                r.backend_reachable,
                r.stopping
            );
            if r.ready() {
                http_response(200, "OK", "application/json", body.as_bytes())
            } else {
                http_response(
                    503,
                    "Service Unavailable",
                    "application/json",
                    body.as_bytes(),
                )
            }
        }
        "/" | "/index.html" if server.demo() => {
            http_response(200, "OK", "text/html; charset=utf-8", DEMO_PAGE.as_bytes())
        }
        _ => http_response(
            426,
            "Upgrade Required",
            "text/plain",
            b"this endpoint speaks WebSocket; see /healthz and /readyz",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    struct Fake {
        readiness: Readiness,
        demo: bool,
    }

    impl Health for Fake {
        fn metrics_text(&self) -> String {
            "# EOF\n".into()
        }
        fn demo(&self) -> bool {
            self.demo
        }
        fn readiness(&self) -> impl Future<Output = Readiness> {
            std::future::ready(self.readiness.clone())
        }
    }

    fn fake(stopping: bool, demo: bool) -> Fake {
        Fake {
            readiness: Readiness {
                listening: 2,
                workers: 2,
                backend: "store",
                backend_reachable: true,
                stopping,
                broker_connected: None,
            },
            demo,
        }
    }

    /// The answer, for a fake whose futures are ready at once.
    fn answer(server: &Fake, method: &str, path: &str) -> String {
        let mut fut = pin!(respond(server, method, path));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => String::from_utf8(r).expect("utf-8"),
            Poll::Pending => panic!("the fake never waits"),
        }
    }

    #[test]
    fn readiness_is_503_once_stopping_and_names_every_field() {
        let ok = answer(&fake(false, false), "GET", "/readyz");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.ends_with(r#"{"ready":true,"workersListening":2,"workers":2,"backend":"store","backendReachable":true,"stopping":false}"#), "{ok}");
        let mut cut_off = fake(false, false);
        cut_off.readiness.broker_connected = Some(false);
        let cut_off = answer(&cut_off, "GET", "/readyz");
        assert!(cut_off.starts_with("HTTP/1.1 503"), "{cut_off}");
        assert!(
            cut_off.ends_with(r#""stopping":false,"brokerConnected":false}"#),
            "{cut_off}"
        );
        let stopping = answer(&fake(true, false), "GET", "/readyz");
        assert!(stopping.starts_with("HTTP/1.1 503"), "{stopping}");
        assert!(stopping.contains(r#""ready":false"#), "{stopping}");
    }

    #[test]
    fn head_gets_the_head_alone_and_other_methods_405() {
        let head = answer(&fake(false, false), "HEAD", "/healthz");
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(answer(&fake(false, false), "POST", "/healthz").starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn the_demo_page_only_in_demo_mode() {
        assert!(answer(&fake(false, true), "GET", "/").contains("text/html"));
        assert!(answer(&fake(false, false), "GET", "/").starts_with("HTTP/1.1 426"));
    }
}
