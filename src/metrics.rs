//! Prometheus metrics, served as OpenMetrics text at `GET /metrics`.
//!
//! Every hot-path metric is labelled by worker, and each worker holds its own handles
//! ([`WorkerMetrics`]), so an increment touches only that worker's atomic: no cache line is
//! shared between workers on the message path. The registry is read only when scraped.
//!
//! Guarantees: every metric is registered in [`Metrics::new`] and a worker's series are created
//! in [`Metrics::for_worker`], before use; [`Metrics::encode`] never fails.
//! Not guaranteed / not here: a scrape is not a consistent snapshot across metrics; values are
//! per process and reset on restart; the `code` and `reason` series appear only once first
//! counted (those calls look their series up on every call).
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `socket_server_connections` | worker | authenticated connections open |
//! | `socket_server_messages_in_total` | worker, type | client messages by type (`invalid` if unparseable) |
//! | `socket_server_deliveries_total` | worker, type | frames queued to connections, by event type |
//! | `socket_server_dropped_total` | worker | volatile frames dropped for clients that are behind |
//! | `socket_server_slow_consumer_closes_total` | worker | connections closed with 4009 (queue over the cap) |
//! | `socket_server_budget_sheds_total` | worker | connections closed with 4009 to bring the worker's queues under `OUTBOX_BUDGET` |
//! | `socket_server_queued_bytes` | worker | bytes waiting in the worker's connection queues (sampled at each stall-rule look) |
//! | `socket_server_stall_closes_total` | worker | connections closed with 4009 by the stall rule (no progress for `STALL_TIMEOUT`) |
//! | `socket_server_publisher_pauses_total` | worker | pauses in reading from a sender whose chat has a draining reader far behind (publisher back-pressure) |
//! | `socket_server_errors_total` | code | error frames sent, by wire code |
//! | `socket_server_backend_call_seconds` | worker, call | backend call latency histogram |
//! | `socket_server_connections_refused_total` | reason | connections refused by the caps |
//! | `socket_server_auth_cache_hits_total` | | authentications answered from the cache |
//! | `socket_server_breaker_state` | | REST circuit breaker: 0 closed, 1 open, 2 half-open |
//! | `socket_server_broker_connected` | | multi-node: 1 while the Redis subscriber is subscribed |
//! | `socket_server_broker_subscriptions` | | multi-node: chat channels the node is subscribed to |
//! | `socket_server_broker_published_total` | | multi-node: records published to Redis |
//! | `socket_server_broker_received_total` | | multi-node: records received from other nodes |
//! | `socket_server_broker_dropped_total` | | multi-node: events not published (queue full, Redis down) |
//! | `socket_server_broker_connects_total` | | multi-node: Redis connections (re)established |
//! | `socket_server_broker_queued` | | multi-node: events waiting for the publisher thread |
//! | `socket_server_broker_lag_seconds` | | multi-node: histogram, publication on another node to arrival here |
//! | `socket_server_server_closes_total` | code | connections the server closed, by close code |
//! | `socket_server_api_requests_total` | route, status | server API requests by route and answer |
//! | `socket_server_api_request_seconds` | route | server API handling time histogram |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::protocol::ErrorCode;

/// Client message types counted in `messages_in`.
pub const MESSAGE_TYPES: [&str; 6] = [
    "chat:message",
    "chat:read",
    "chat:typing",
    "ping",
    "chat:history",
    "invalid",
];
/// Event types counted in `deliveries`.
pub const EVENT_TYPES: [&str; 4] = ["chat:message", "chat:read", "chat:typing", "user:online"];
/// Backend calls timed in `backend_call_seconds`.
pub const CALLS: [&str; 6] = [
    "authenticate",
    "chats",
    "create_message",
    "mark_read",
    "probe",
    "history",
];

/// Indices into [`CALLS`].
pub mod call {
    /// Authentication (profile + chats) at connect.
    pub const AUTHENTICATE: usize = 0;
    /// A re-fetch of the chat list.
    pub const CHATS: usize = 1;
    /// Persisting a message.
    pub const CREATE_MESSAGE: usize = 2;
    /// Recording a read receipt.
    pub const MARK_READ: usize = 3;
    /// The readiness probe.
    pub const PROBE: usize = 4;
    /// A `chat:history` page.
    pub const HISTORY: usize = 5;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerType {
    worker: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerCall {
    worker: String,
    call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    connections: Family<WorkerLabel, Gauge>,
    messages_in: Family<WorkerType, Counter>,
    deliveries: Family<WorkerType, Counter>,
    dropped: Family<WorkerLabel, Counter>,
    slow_consumers: Family<WorkerLabel, Counter>,
    stall_closes: Family<WorkerLabel, Counter>,
    queued_bytes: Family<WorkerLabel, Gauge>,
    budget_sheds: Family<WorkerLabel, Counter>,
    publisher_pauses: Family<WorkerLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    backend: Family<WorkerCall, Histogram, fn() -> Histogram>,
    refused: Family<ReasonLabel, Counter>,
    auth_cache_hits: Counter,
    breaker_state: Gauge,
    broker: BrokerHooks,
    closes: Family<CodeLabel, Counter>,
    api_requests: Family<RouteStatus, Counter>,
    api_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
}

/// Handles the multi-node broker updates (all zero on a single node).
#[derive(Clone, Debug)]
pub struct BrokerHooks {
    /// 1 while the subscriber is subscribed.
    pub connected: Gauge,
    /// Chat channels subscribed.
    pub subscriptions: Gauge,
    /// Records published.
    pub published: Counter,
    /// Records received from other nodes.
    pub received: Counter,
    /// Events not published: queue full or Redis down.
    pub dropped: Counter,
    /// Connections (re)established by either broker thread.
    pub connects: Counter,
    /// Events waiting for the publisher thread (its queue holds at most 65,536).
    pub queued: Gauge,
    /// Seconds from an event's publication on its node to its arrival here.
    pub lag: Histogram,
}

impl Default for BrokerHooks {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            subscriptions: Gauge::default(),
            published: Counter::default(),
            received: Counter::default(),
            dropped: Counter::default(),
            connects: Counter::default(),
            queued: Gauge::default(),
            lag: latency_histogram(),
        }
    }
}

/// Handles the REST backend updates.
#[derive(Clone, Default)]
pub struct RestHooks {
    /// `/auth/profile` answers served from the cache.
    pub auth_cache_hits: Counter,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric. Long on purpose: one registration per metric, in the order of
    /// the table in the module documentation.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("socket_server");
        let m = Self {
            connections: Family::default(),
            messages_in: Family::default(),
            deliveries: Family::default(),
            dropped: Family::default(),
            slow_consumers: Family::default(),
            stall_closes: Family::default(),
            queued_bytes: Family::default(),
            budget_sheds: Family::default(),
            publisher_pauses: Family::default(),
            errors: Family::default(),
            backend: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            refused: Family::default(),
            auth_cache_hits: Counter::default(),
            breaker_state: Gauge::default(),
            broker: BrokerHooks::default(),
            closes: Family::default(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Authenticated connections open",
            m.connections.clone(),
        );
        registry.register(
            "messages_in",
            "Client messages received, by type",
            m.messages_in.clone(),
        );
        registry.register(
            "deliveries",
            "Frames queued to connections, by event type",
            m.deliveries.clone(),
        );
        registry.register(
            "dropped",
            "Volatile frames dropped for clients that are behind",
            m.dropped.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed as slow consumers (4009)",
            m.slow_consumers.clone(),
        );
        registry.register(
            "stall_closes",
            "Connections closed by the stall rule (4009: bytes waiting, none accepted for STALL_TIMEOUT)",
            m.stall_closes.clone(),
        );
        registry.register(
            "queued_bytes",
            "Bytes waiting in the worker's connection queues, sampled at each stall-rule look (STALL_TIMEOUT / 4)",
            m.queued_bytes.clone(),
        );
        registry.register(
            "budget_sheds",
            "Connections closed (4009) to bring the worker's queues under OUTBOX_BUDGET",
            m.budget_sheds.clone(),
        );
        registry.register(
            "publisher_pauses",
            "Pauses in reading from a sender whose chat has a draining reader over a quarter of MAX_OUTBOX_BYTES behind",
            m.publisher_pauses.clone(),
        );
        registry.register("errors", "Error frames sent, by code", m.errors.clone());
        registry.register(
            "backend_call_seconds",
            "Backend call latency",
            m.backend.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused by the caps",
            m.refused.clone(),
        );
        registry.register(
            "auth_cache_hits",
            "Authentications answered from the profile cache",
            m.auth_cache_hits.clone(),
        );
        registry.register(
            "server_closes",
            "Connections the server closed, by close code (limits, timeouts, auth, drain)",
            m.closes.clone(),
        );
        registry.register(
            "breaker_state",
            "REST circuit breaker: 0 closed, 1 open, 2 half-open",
            m.breaker_state.clone(),
        );
        let b = &m.broker;
        for (name, help, gauge) in [
            (
                "broker_connected",
                "Multi-node: 1 while the Redis subscriber is subscribed",
                &b.connected,
            ),
            (
                "broker_subscriptions",
                "Multi-node: chat channels the node is subscribed to",
                &b.subscriptions,
            ),
            (
                "broker_queued",
                "Multi-node: events waiting for the publisher thread",
                &b.queued,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        for (name, help, counter) in [
            (
                "broker_published",
                "Multi-node: records published to Redis",
                &b.published,
            ),
            (
                "broker_received",
                "Multi-node: records received from other nodes",
                &b.received,
            ),
            (
                "broker_dropped",
                "Multi-node: events not published (queue full or Redis down)",
                &b.dropped,
            ),
            (
                "broker_connects",
                "Multi-node: Redis connections (re)established",
                &b.connects,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "broker_lag_seconds",
            "Multi-node: from an event's publication on another node to its arrival here \
             (across hosts this includes their clock difference)",
            b.lag.clone(),
        );
        registry.register(
            "api_requests",
            "Server API requests, by route and answer status",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_seconds",
            "Server API request handling time (after the head arrived), by route",
            m.api_seconds.clone(),
        );
        Self { registry, ..m }
    }

    /// The handles one worker increments.
    pub fn for_worker(&self, worker: usize) -> WorkerMetrics {
        let w = worker.to_string();
        let typed = |f: &Family<WorkerType, Counter>, t: &str| {
            f.get_or_create(&WorkerType {
                worker: w.clone(),
                r#type: t.to_string(),
            })
            .clone()
        };
        WorkerMetrics {
            connections: self
                .connections
                .get_or_create(&WorkerLabel { worker: w.clone() })
                .clone(),
            messages_in: MESSAGE_TYPES.map(|t| typed(&self.messages_in, t)),
            deliveries: EVENT_TYPES.map(|t| typed(&self.deliveries, t)),
            dropped: self
                .dropped
                .get_or_create(&WorkerLabel { worker: w.clone() })
                .clone(),
            slow_consumers: self
                .slow_consumers
                .get_or_create(&WorkerLabel { worker: w.clone() })
                .clone(),
            stall_closes: self
                .stall_closes
                .get_or_create(&WorkerLabel { worker: w.clone() })
                .clone(),
            queued_bytes: self
                .queued_bytes
                .get_or_create(&WorkerLabel { worker: w.clone() })
                .clone(),
            budget_sheds: self
                .budget_sheds
                .get_or_create(&WorkerLabel { worker: w.clone() })
                .clone(),
            publisher_pauses: self
                .publisher_pauses
                .get_or_create(&WorkerLabel { worker: w.clone() })
                .clone(),
            backend: CALLS.map(|c| {
                self.backend
                    .get_or_create(&WorkerCall {
                        worker: w.clone(),
                        call: c.to_string(),
                    })
                    .clone()
            }),
        }
    }

    /// The handles the REST backend updates.
    pub fn rest_hooks(&self) -> RestHooks {
        RestHooks {
            auth_cache_hits: self.auth_cache_hits.clone(),
            breaker_state: self.breaker_state.clone(),
        }
    }

    /// The handles the multi-node broker updates.
    pub fn broker_hooks(&self) -> BrokerHooks {
        self.broker.clone()
    }

    /// Counts an error frame sent with `code`.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_string(),
            })
            .inc();
    }

    /// Counts a close the server initiated with `code`.
    pub fn closed(&self, code: crate::protocol::CloseCode) {
        self.closed_with(code.code());
    }

    /// Counts a close the server initiated with a numeric `code` (the server API's
    /// disconnect chooses its own).
    pub fn closed_with(&self, code: u16) {
        self.closes
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// Counts a server API request by route and answer status, and times it.
    pub fn api_request(&self, route: &str, status: u16, seconds: f64) {
        self.api_requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.api_seconds
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One worker's metric handles (each an atomic of its own).
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Open authenticated connections.
    pub connections: Gauge,
    /// Indexed like [`MESSAGE_TYPES`].
    pub messages_in: [Counter; 6],
    /// Indexed like [`EVENT_TYPES`].
    pub deliveries: [Counter; 4],
    /// Volatile frames dropped.
    pub dropped: Counter,
    /// Slow-consumer closes.
    pub slow_consumers: Counter,
    /// Stall-rule closes.
    pub stall_closes: Counter,
    /// Bytes queued on the worker's connections (sampled).
    pub queued_bytes: Gauge,
    /// Budget sheds.
    pub budget_sheds: Counter,
    /// Publisher pauses.
    pub publisher_pauses: Counter,
    /// Indexed like [`CALLS`].
    pub backend: [Histogram; 6],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_handles_feed_the_exposition() {
        let m = Metrics::new();
        let w = m.for_worker(1);
        w.messages_in[0].inc_by(3);
        w.deliveries[0].inc_by(7);
        w.backend[2].observe(0.002);
        m.error(ErrorCode::NotParticipant);
        let text = m.encode();
        assert!(
            text.contains(r#"socket_server_messages_in_total{worker="1",type="chat:message"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"socket_server_deliveries_total{worker="1",type="chat:message"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"socket_server_errors_total{code="NOT_PARTICIPANT"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"socket_server_backend_call_seconds_count{worker="1",call="create_message"} 1"#
            ),
            "{text}"
        );
    }
}
