//! Plain-HTTP requests on the WebSocket port: `GET /healthz` (the process is alive),
//! `GET /readyz` (every worker listens and the backend answers), `GET /metrics` (Prometheus,
//! OpenMetrics text; see `crate::metrics`), and in demo mode `GET /`, a
//! small chat page embedded in the binary. Every response closes its connection; this is not a
//! general web server.

use std::time::Duration;

use crate::net::handshake::{http_response, Request};
use crate::net::worker::Worker;

/// The demo chat page.
const DEMO_PAGE: &str = include_str!("demo.html");
/// How long a `/readyz` probe result is reused.
const PROBE_CACHE: Duration = Duration::from_secs(1);
/// How long `/readyz` waits for the backend probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The full response to a plain request; a `HEAD` gets the same head without the body.
pub async fn respond(worker: &Worker, req: &Request) -> Vec<u8> {
    let mut response = respond_get(worker, req).await;
    if req.method == "HEAD" {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            response.truncate(end + 4);
        }
    }
    response
}

async fn respond_get(worker: &Worker, req: &Request) -> Vec<u8> {
    if req.method != "GET" && req.method != "HEAD" {
        return http_response(
            405,
            "Method Not Allowed",
            "text/plain",
            b"method not allowed",
        );
    }
    match req.path.as_str() {
        "/healthz" => http_response(200, "OK", "application/json", br#"{"status":"ok"}"#),
        "/metrics" => http_response(
            200,
            "OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            worker.shared.metrics.encode().as_bytes(),
        ),
        "/readyz" => {
            let shared = &worker.shared;
            let listening = shared.listening.load(std::sync::atomic::Ordering::SeqCst);
            let stopping = shared.stopping.load(std::sync::atomic::Ordering::SeqCst);
            let backend = shared.backend.clone();
            // One probe per worker per PROBE_CACHE at most: readiness checks must not crowd
            // the REST pool that serves users.
            let backend_ok = match worker.cached_probe(PROBE_CACHE) {
                Some(ok) => ok,
                None => {
                    let probe = monoio::time::timeout(
                        PROBE_TIMEOUT,
                        worker.backend_call(crate::metrics::call::PROBE, backend.probe()),
                    )
                    .await;
                    let ok = matches!(probe, Ok(Ok(())));
                    worker.remember_probe(ok);
                    ok
                }
            };
            let ready = listening == shared.workers() && backend_ok && !stopping;
            let body = format!(
                r#"{{"ready":{ready},"workersListening":{listening},"workers":{},"backend":"{}","backendReachable":{backend_ok},"stopping":{stopping}}}"#,
                shared.workers(),
                backend.name()
            );
            if ready {
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
        "/" | "/index.html" if worker.config().demo => {
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
