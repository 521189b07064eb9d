//! The worker's side of `crate::http::Health`: what `/metrics` and `/readyz` read.
//!
//! Guarantees: at most one backend probe per worker per `PROBE_CACHE`, bounded by
//! `PROBE_TIMEOUT`, so readiness checks never crowd the backend that serves users.

use std::time::Duration;

use super::worker::Worker;
use crate::http::{Health, Readiness};
use crate::metrics::call;

/// How long a `/readyz` probe result is reused.
const PROBE_CACHE: Duration = Duration::from_secs(1);
/// How long `/readyz` waits for the backend probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Health for Worker {
    fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    fn demo(&self) -> bool {
        self.config().backend.demo()
    }

    async fn readiness(&self) -> Readiness {
        let shared = &self.shared;
        let backend = shared.backend.clone();
        let backend_reachable = match self.cached_probe(PROBE_CACHE) {
            Some(ok) => ok,
            None => {
                let probe = monoio::time::timeout(
                    PROBE_TIMEOUT,
                    self.backend_call(call::PROBE, backend.probe()),
                )
                .await;
                let ok = matches!(probe, Ok(Ok(())));
                self.remember_probe(ok);
                ok
            }
        };
        Readiness {
            listening: shared.listening(),
            workers: shared.workers(),
            backend: backend.name(),
            backend_reachable,
            stopping: shared.stopping(),
            broker_connected: shared.broker_connected(),
        }
    }
}
