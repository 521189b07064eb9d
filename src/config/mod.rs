//! Configuration: one struct, read from command-line flags, environment variables and `.env`,
//! validated once into typed [`Settings`] by subsystem.
//!
//! Precedence is flag > environment > `.env` > default (the `.env` file is loaded into the
//! environment at start-up, without overriding variables that are already set, as the seed
//! does). Every field names its environment variable, unit and default; defaults are the named
//! constants below. [`Config::validate`] rejects values that cannot work and names the variable,
//! so a bad deployment stops at start-up (`socket-server check-config`) rather than at the
//! first connection; it is the only way to a [`Settings`], which is all the server runs on.
//!
//! Guarantees: a [`Settings`] has every duration within one day,
//! `MAX_MESSAGE_SIZE` within 16 B..16 MiB, an http(s) `HTTP_API_URL` with a host and no query,
//! no conflicting backend modes (`HTTP_API_URL`, `DEMO`, `BENCH_FIXTURE`), and an `API_KEY` of
//! at least 16 visible characters whenever `API_PORT`/`API_HOST` are set.
//! Not guaranteed / not here: parsing alone does not validate; only the first broken rule is
//! reported; API reachability, a free port and a writable `STORE_PATH` are not checked.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

mod settings;

pub use settings::{
    ApiSettings, BackendChoice, Drain, Flow, FrameLimits, IoDriver, Listen, Rate, RestSettings,
    SessionRules, Settings,
};

/// Default `STALL_TIMEOUT`, in milliseconds.
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 15_000;
/// Shortest `STALL_TIMEOUT`, in milliseconds (it is checked in four looks).
pub const MIN_STALL_TIMEOUT_MS: u64 = 100;

/// Shortest `API_KEY` accepted, in bytes: a key anyone can guess protects nothing.
pub const MIN_API_KEY_LEN: usize = 16;
/// Default largest server API request body, in bytes (`API_MAX_BODY`).
pub const DEFAULT_API_MAX_BODY: usize = 1 << 20;
/// Largest `API_MAX_BODY` accepted, in bytes: a body is held whole in memory while handled.
pub const API_MAX_BODY_LIMIT: usize = 64 << 20;

/// Default WebSocket port (the seed's `WS_PORT`).
pub const DEFAULT_WS_PORT: u16 = 8080;
/// Default bind address: every interface, as the seed.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// Default allowed browser origin (the seed's `CORS_ORIGIN`).
pub const DEFAULT_CORS_ORIGIN: &str = "http://localhost:5173";
/// Default interval between server pings, in milliseconds.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 30_000;
/// Default typing-indicator lifetime, in milliseconds.
pub const DEFAULT_TYPING_TIMEOUT_MS: u64 = 3_000;
/// Default largest accepted client message, in bytes (after reassembly of fragments).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 10_000;
/// Default silence after which a connection is closed, in milliseconds.
pub const DEFAULT_CONNECTION_TIMEOUT_MS: u64 = 60_000;
/// Default log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default I/O driver of the workers.
pub const DEFAULT_IO_DRIVER: &str = "io_uring";
/// Default path of the embedded SQLite store.
pub const DEFAULT_STORE_PATH: &str = "socket-server.db";
/// Default number of blocking backend threads (REST calls).
pub const DEFAULT_BACKEND_POOL_SIZE: usize = 4;
/// Default per-call backend timeout, in milliseconds.
pub const DEFAULT_BACKEND_TIMEOUT_MS: u64 = 5_000;
/// Default time allowed for the handshake and authentication, in milliseconds.
pub const DEFAULT_AUTH_TIMEOUT_MS: u64 = 10_000;
/// Default drain deadline on shutdown, in milliseconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 5_000;
/// How long the drain gives close handshakes after the last close is queued.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// `TimeoutStopSec` of `deploy/socket-server.service`: a worst-case drain longer than this is
/// cut short by SIGKILL under that unit (see [`Config::worst_stop_time`]).
pub const UNIT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest accepted `MAX_MESSAGE_SIZE`: a frame header announcing this much makes its
/// connection reserve it, so the bound keeps a crowd of such headers from exhausting memory.
pub const MAX_MESSAGE_SIZE_LIMIT: usize = 16 << 20;
/// Default window over which the drain closes connections, in milliseconds.
pub const DEFAULT_DRAIN_WINDOW_MS: u64 = 2_000;
/// Default minimum interval between two re-fetches of one connection's chat list, in ms.
pub const DEFAULT_CHATS_REFETCH_INTERVAL_MS: u64 = 2_000;
/// Default cap on fragments in one client message.
pub const DEFAULT_MAX_FRAGMENTS: usize = 64;
/// Default cap on bytes queued for one connection.
pub const DEFAULT_MAX_OUTBOX_BYTES: usize = 16 << 20;
/// Largest `MAX_OUTBOX_BYTES` accepted (the stall rule's counters are 32-bit).
pub const MAX_OUTBOX_BYTES_LIMIT: usize = 1 << 30;
/// Default `OUTBOX_BUDGET`: bytes queued per worker, all its connections together. Sized for
/// this machine class (24 GiB, 2 cores: 2 workers x 512 MiB = 1 GiB at most in queues).
pub const DEFAULT_OUTBOX_BUDGET: usize = 512 << 20;
/// Default sustained client message rate per connection, messages per second.
pub const DEFAULT_RATE_LIMIT: u32 = 50;
/// Default burst of client messages allowed above the rate.
pub const DEFAULT_RATE_BURST: u32 = 100;
/// Default retries of a failed REST call (idempotent calls, and POSTs with an idempotency key).
pub const DEFAULT_BACKEND_RETRIES: u32 = 2;
/// First retry backoff of a REST call; each further retry waits four times longer.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// The longest one REST call can take: every attempt timing out, plus the backoffs between
/// them. The drain waits at least this long for calls in flight.
pub fn longest_call(timeout: Duration, retries: u32) -> Duration {
    let backoffs: Duration = (0..retries).map(|i| RETRY_BACKOFF * 4u32.pow(i)).sum();
    timeout * (retries + 1) + backoffs
}

/// Default consecutive REST failures that open the circuit breaker.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before probing, in milliseconds.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 5_000;
/// Longest duration any setting accepts, in milliseconds (one day).
pub const MAX_DURATION_MS: u64 = 86_400_000;
/// Default `PRESENCE_LEASE`, in milliseconds.
pub const DEFAULT_PRESENCE_LEASE_MS: u64 = 15_000;
/// Shortest `PRESENCE_LEASE`, in milliseconds (renewed every third of it).
pub const MIN_PRESENCE_LEASE_MS: u64 = 300;

/// Default cap on open connections per process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Every setting of the server. Field docs give the variable, unit and default.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// TCP port for WebSockets and the plain-HTTP endpoints. 0 picks a free port. Env `WS_PORT`.
    #[arg(long = "port", env = "WS_PORT", default_value_t = DEFAULT_WS_PORT)]
    pub ws_port: u16,

    /// Address to bind. Env `HOST`. Default `0.0.0.0`.
    #[arg(long, env = "HOST", default_value = DEFAULT_HOST)]
    pub host: IpAddr,

    /// Base URL of the product's REST API. When unset, the embedded SQLite store is used.
    /// Env `HTTP_API_URL`.
    #[arg(long, env = "HTTP_API_URL")]
    pub http_api_url: Option<String>,

    /// Comma-separated browser origins allowed to open WebSockets (`*` allows any). Requests
    /// without `Origin` and same-origin requests are always allowed. Env `CORS_ORIGIN`.
    #[arg(long, env = "CORS_ORIGIN", default_value = DEFAULT_CORS_ORIGIN)]
    pub cors_origin: String,

    /// Interval between server pings, in milliseconds. Env `HEARTBEAT_INTERVAL`. Default 30000.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value_t = DEFAULT_HEARTBEAT_INTERVAL_MS)]
    pub heartbeat_interval_ms: u64,

    /// Lifetime of a typing indicator without renewal, in milliseconds. Env `TYPING_TIMEOUT`.
    /// Default 3000.
    #[arg(long, env = "TYPING_TIMEOUT", default_value_t = DEFAULT_TYPING_TIMEOUT_MS)]
    pub typing_timeout_ms: u64,

    /// Largest client message in bytes (whole message, after reassembly). Env
    /// `MAX_MESSAGE_SIZE`. Default 10000.
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,

    /// A connection silent (no frame of any kind) for this long is closed, in milliseconds.
    /// Env `CONNECTION_TIMEOUT`. Default 60000.
    #[arg(long, env = "CONNECTION_TIMEOUT", default_value_t = DEFAULT_CONNECTION_TIMEOUT_MS)]
    pub connection_timeout_ms: u64,

    /// `debug`, `info`, `warn` or `error`. Env `LOG_LEVEL`. Default `info`.
    #[arg(long, env = "LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    pub log_level: String,

    /// Worker threads, each with its own listener and connections. 0 means one per core.
    /// Env `WORKERS`. Default 0.
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// The workers' I/O driver: `io_uring` (falls back to epoll where the kernel refuses
    /// io_uring; the start-up log says which ran) or `epoll` (never tries io_uring). Sockets
    /// use readiness I/O under both; BENCHMARKS.md compares them. Env `IO_DRIVER`. Default
    /// `io_uring`.
    #[arg(long, env = "IO_DRIVER", default_value = DEFAULT_IO_DRIVER)]
    pub io_driver: String,

    /// Path of the embedded SQLite store (used when `HTTP_API_URL` is unset). Env `STORE_PATH`.
    /// Default `socket-server.db`.
    #[arg(long, env = "STORE_PATH", default_value = DEFAULT_STORE_PATH)]
    pub store_path: PathBuf,

    /// Threads making blocking REST calls. Env `BACKEND_POOL_SIZE`. Default 4.
    #[arg(long, env = "BACKEND_POOL_SIZE", default_value_t = DEFAULT_BACKEND_POOL_SIZE)]
    pub backend_pool_size: usize,

    /// Timeout of one backend call, in milliseconds. Env `BACKEND_TIMEOUT`. Default 5000.
    #[arg(long, env = "BACKEND_TIMEOUT", default_value_t = DEFAULT_BACKEND_TIMEOUT_MS)]
    pub backend_timeout_ms: u64,

    /// Retries of a REST call that failed with a timeout, a connection error or a 5xx (GETs,
    /// the read PUT, and message POSTs, which carry an `Idempotency-Key`). Env
    /// `BACKEND_RETRIES`. Default 2.
    #[arg(long, env = "BACKEND_RETRIES", default_value_t = DEFAULT_BACKEND_RETRIES)]
    pub backend_retries: u32,

    /// Consecutive REST failures that open the circuit breaker (calls then fail fast with
    /// `HTTP_ERROR` until a probe succeeds). 0 disables. Env `BREAKER_THRESHOLD`. Default 5.
    #[arg(long, env = "BREAKER_THRESHOLD", default_value_t = DEFAULT_BREAKER_THRESHOLD)]
    pub breaker_threshold: u32,

    /// How long the breaker stays open before one probe call, in milliseconds. Env
    /// `BREAKER_COOLDOWN`. Default 5000.
    #[arg(long, env = "BREAKER_COOLDOWN", default_value_t = DEFAULT_BREAKER_COOLDOWN_MS)]
    pub breaker_cooldown_ms: u64,

    /// How long a successful `/auth/profile` answer is reused for the same token, in
    /// milliseconds (a revoked token keeps working this long). 0 disables. Env
    /// `AUTH_CACHE_TTL`. Default 0.
    #[arg(long, env = "AUTH_CACHE_TTL", default_value_t = 0)]
    pub auth_cache_ttl_ms: u64,

    /// Deadline, from accept, for the upgrade request to arrive and authentication to finish,
    /// in milliseconds.
    /// Env `AUTH_TIMEOUT`. Default 10000.
    #[arg(long, env = "AUTH_TIMEOUT", default_value_t = DEFAULT_AUTH_TIMEOUT_MS)]
    pub auth_timeout_ms: u64,

    /// How long shutdown waits for in-flight backend calls and queued writes, in milliseconds;
    /// with `HTTP_API_URL` set, never less than the longest a REST call can take
    /// (`BACKEND_TIMEOUT` x (`BACKEND_RETRIES` + 1) + backoffs; 15250 with the defaults).
    /// Env `SHUTDOWN_TIMEOUT`. Default 5000.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_MS)]
    pub shutdown_timeout_ms: u64,

    /// Window over which the drain closes connections, in jittered batches, so clients do not
    /// all reconnect at once, in milliseconds. Env `DRAIN_WINDOW`. Default 2000.
    #[arg(long, env = "DRAIN_WINDOW", default_value_t = DEFAULT_DRAIN_WINDOW_MS)]
    pub drain_window_ms: u64,

    /// Minimum interval between two re-fetches of a connection's chat list (triggered by a
    /// chat it is not known to be in), in milliseconds. Env `CHATS_REFETCH_INTERVAL`.
    /// Default 2000.
    #[arg(long, env = "CHATS_REFETCH_INTERVAL", default_value_t = DEFAULT_CHATS_REFETCH_INTERVAL_MS)]
    pub chats_refetch_interval_ms: u64,

    /// Most fragments accepted in one client message. Env `MAX_FRAGMENTS`. Default 64.
    #[arg(long, env = "MAX_FRAGMENTS", default_value_t = DEFAULT_MAX_FRAGMENTS)]
    pub max_fragments: usize,

    /// Milliseconds a connection with bytes waiting may go without its socket accepting any,
    /// before it is closed as stuck (4009) and its queue freed; any accepted byte also counts
    /// as the client being alive (a client draining a backlog cannot answer a ping queued
    /// behind it). Checked in four looks per period, so a stuck client goes within 1.25x this.
    /// At least 100. Env `STALL_TIMEOUT`. Default 15000.
    #[arg(long = "stall-timeout-ms", env = "STALL_TIMEOUT", default_value_t = DEFAULT_STALL_TIMEOUT_MS)]
    pub stall_timeout_ms: u64,

    /// Bytes queued for one connection before it is closed as a reader that can never keep up
    /// (4009); volatile events are dropped from half of it. Large enough for bursts: a reader
    /// that keeps reading is judged by the stall rule (`STALL_TIMEOUT`), not by this, and the
    /// worker's `OUTBOX_BUDGET` bounds all queues together. At most 1 GiB. Env
    /// `MAX_OUTBOX_BYTES`. Default 16777216.
    #[arg(long, env = "MAX_OUTBOX_BYTES", default_value_t = DEFAULT_MAX_OUTBOX_BYTES)]
    pub max_outbox_bytes: usize,

    /// Bytes queued on one worker's connections together (queued or being written). Past it,
    /// connections are shed (closed 4009, queue freed) until 90% of it: the largest of those
    /// not draining first, draining ones only when none other is left. Worst case for the
    /// whole process: `WORKERS x OUTBOX_BUDGET` in queues, plus one frame over it per worker.
    /// At least `MAX_OUTBOX_BYTES`. Env `OUTBOX_BUDGET`. Default 536870912 (512 MiB).
    #[arg(long, env = "OUTBOX_BUDGET", default_value_t = DEFAULT_OUTBOX_BUDGET)]
    pub outbox_budget: usize,

    /// Sustained client messages per second per connection; above it messages are answered
    /// `RATE_LIMITED`, and a connection that keeps going is closed (4029). 0 disables.
    /// Env `RATE_LIMIT`. Default 50.
    #[arg(long, env = "RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,

    /// Messages a connection may send at once above `RATE_LIMIT`. Env `RATE_BURST`.
    /// Default 100.
    #[arg(long, env = "RATE_BURST", default_value_t = DEFAULT_RATE_BURST)]
    pub rate_burst: u32,

    /// Open connections per process; more are refused with HTTP 503. Env `MAX_CONNECTIONS`.
    /// Default 100000.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Open connections per client IP address; more are refused with HTTP 503. 0 disables
    /// (the default: clients behind one NAT or proxy share an address). Env
    /// `MAX_CONNECTIONS_PER_IP`.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Let the kernel back the allocator's memory with transparent huge pages. Off by default:
    /// mimalloc asks for them on its whole arena, so each touched 2 MiB region costs 2 MiB of
    /// RSS; measured here, off saves ~8 MB at start and ~19% per idle connection (2.44 → 1.98
    /// KB at 15,000) with no measurable CPU cost (BENCHMARKS.md). Env
    /// `TRANSPARENT_HUGE_PAGES` (`1`/`true`/`on` to allow). Default off.
    #[arg(long, env = "TRANSPARENT_HUGE_PAGES", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub transparent_huge_pages: bool,

    /// Key of the server API (`/api/...`, for the product's backend): requests must carry
    /// `Authorization: Bearer <API_KEY>`. Unset (the default), the API is off and its routes
    /// answer 404. At least 16 visible ASCII characters. Env `API_KEY`. Never logged or printed.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKey>,

    /// Port of the server API. Unset (the default), the API is served on `WS_PORT`; set, only
    /// here (so it can be bound to an internal interface with `API_HOST`). 0 picks a free port.
    /// Env `API_PORT`.
    #[arg(long, env = "API_PORT")]
    pub api_port: Option<u16>,

    /// Address the `API_PORT` listener binds. Default: `HOST`. Env `API_HOST`.
    #[arg(long, env = "API_HOST")]
    pub api_host: Option<IpAddr>,

    /// Largest server API request body, in bytes (1 KiB – 64 MiB); larger requests get 413.
    /// Env `API_MAX_BODY`. Default 1048576.
    #[arg(long, env = "API_MAX_BODY", default_value_t = DEFAULT_API_MAX_BODY)]
    pub api_max_body: usize,

    /// Demo mode: seed users alice, bob and carol (tokens `demo-alice`, …) and a chat `general`
    /// into the embedded store, and serve the demo chat page at `GET /`. Env `DEMO` (`1`,
    /// `true`, `yes`, `on` / `0`, `false`, `no`, `off`). Default off.
    #[arg(long, env = "DEMO", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,

    /// Benchmark fixture `USERS:ROOMS`: token `t<i>` is user `u<i>` in chat `c<i mod ROOMS>`,
    /// kept in memory; no real data is touched. Env `BENCH_FIXTURE`.
    #[arg(long, env = "BENCH_FIXTURE")]
    pub bench_fixture: Option<String>,

    /// Redis for multi-node mode (`redis://host:port/`): nodes behind one load balancer share
    /// chats through it. Unset (the default): one node, no Redis. Needs the REST backend
    /// (`HTTP_API_URL`) or the benchmark fixture: the embedded store is per node. Env
    /// `REDIS_URL`.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// This node's name in a cluster (logged; events carry a 64-bit hash of it). Default: a
    /// random id per start. Env `NODE_ID`.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// How long a node's presence counts outlive it, in milliseconds (multi-node mode): a
    /// node renews its lease every third of it; when it lapses, the other nodes announce its
    /// users offline. Env `PRESENCE_LEASE`. Default 15000.
    #[arg(long = "presence-lease-ms", env = "PRESENCE_LEASE", default_value_t = DEFAULT_PRESENCE_LEASE_MS)]
    pub presence_lease_ms: u64,
}

/// The server API key. Its `Debug` form is redacted, so `check-config` and logs never show it;
/// [`ApiKey::matches`] compares in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::str::FromStr for ApiKey {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey(<{} bytes, redacted>)", self.0.len())
    }
}

impl ApiKey {
    /// Whether `offered` is the key. Both are hashed first, so the comparison's time depends
    /// on neither the key's length nor the position of the first differing byte; the digests
    /// are compared with `subtle`'s constant-time equality.
    pub fn matches(&self, offered: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(offered.as_bytes());
        a.ct_eq(&b).into()
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.0.len() < MIN_API_KEY_LEN {
            return Err(bad("API_KEY", "must be at least 16 characters"));
        }
        if !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "API_KEY",
                "must be visible ASCII (no spaces or control characters)",
            ));
        }
        Ok(())
    }
}

/// A setting that cannot work; the message names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// Why its value was rejected.
    pub reason: String,
}

fn bad(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

/// The parsed `BENCH_FIXTURE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixtureSize {
    /// Number of users (`t0`…`t<users-1>`).
    pub users: u64,
    /// Number of chats (`c0`…`c<rooms-1>`).
    pub rooms: u64,
}

/// A Redis URL: `redis://`, a host, no query or fragment.
fn check_redis_url(text: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(text).map_err(|e| bad("REDIS_URL", e.to_string()))?;
    if url.scheme() != "redis" {
        return Err(bad("REDIS_URL", "must start with redis://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("REDIS_URL", "must name a host"));
    }
    Ok(())
}

/// An API base URL the REST client can call: http or https, a host, no query or fragment.
fn check_api_url(text: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(text)
        .map_err(|e| bad("HTTP_API_URL", format!("is not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("HTTP_API_URL", "must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("HTTP_API_URL", "must name a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "HTTP_API_URL",
            "must not have a query or fragment (paths are appended to it)",
        ));
    }
    Ok(())
}

impl Config {
    /// Checks every field and returns the typed settings; the first broken rule is returned,
    /// naming its variable.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.check_timers()?;
        self.check_limits()?;
        self.check_process()?;
        self.check_backend()?;
        self.check_api()?;
        self.settings()
    }

    /// The settings of a configuration that passed every check.
    fn settings(&self) -> Result<Settings, ConfigError> {
        let ms = Duration::from_millis;
        let backend = match (&self.http_api_url, self.fixture_size()?) {
            (Some(url), _) => BackendChoice::Rest(RestSettings {
                url: url.clone(),
                threads: self.backend_pool_size,
                timeout: ms(self.backend_timeout_ms),
                retries: self.backend_retries,
                breaker_threshold: self.breaker_threshold,
                breaker_cooldown: ms(self.breaker_cooldown_ms),
                auth_cache_ttl: ms(self.auth_cache_ttl_ms),
            }),
            (None, Some(size)) => BackendChoice::Fixture(size),
            (None, None) => BackendChoice::Store {
                path: self.store_path.clone(),
                demo: self.demo,
            },
        };
        // Benchmark clients send far above any per-user rate; the limit would measure itself.
        let rate = match (
            NonZeroU32::new(self.rate_limit),
            NonZeroU32::new(self.rate_burst),
        ) {
            (Some(per_second), Some(burst)) if !matches!(backend, BackendChoice::Fixture(_)) => {
                Some(Rate { per_second, burst })
            }
            _ => None,
        };
        let mut wait = ms(self.shutdown_timeout_ms);
        if let BackendChoice::Rest(rest) = &backend {
            // A message in flight is always answered before its connection closes.
            wait = wait.max(longest_call(rest.timeout, rest.retries));
        }
        let api = self.api_key.clone().map(|key| ApiSettings {
            key,
            own_addr: self.api_addr(),
            max_body: self.api_max_body,
        });
        Ok(Settings {
            listen: Listen {
                addr: std::net::SocketAddr::new(self.host, self.ws_port),
                workers: self.worker_count(),
                io_driver: IoDriver::parse(&self.io_driver).unwrap_or_default(),
                allowed_origins: self.allowed_origins(),
                auth_timeout: ms(self.auth_timeout_ms),
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
            },
            session: SessionRules {
                heartbeat_interval: ms(self.heartbeat_interval_ms),
                connection_timeout: ms(self.connection_timeout_ms),
                typing_timeout: ms(self.typing_timeout_ms),
                refetch_interval: ms(self.chats_refetch_interval_ms),
                rate,
            },
            frames: FrameLimits {
                max_message_size: self.max_message_size,
                max_fragments: self.max_fragments,
            },
            flow: Flow {
                max_outbox_bytes: self.max_outbox_bytes,
                outbox_budget: self.outbox_budget,
                stall_timeout: ms(self.stall_timeout_ms),
            },
            drain: Drain {
                wait,
                window: ms(self.drain_window_ms),
            },
            backend,
            api,
            log_level: self.log_level.clone(),
            transparent_huge_pages: self.transparent_huge_pages,
            redis_url: self.redis_url.clone(),
            node_id: self.node_id.clone(),
            presence_lease: ms(self.presence_lease_ms),
        })
    }

    /// Heartbeat, timeouts and every duration (at most one day).
    fn check_timers(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_ms == 0 {
            return Err(bad("HEARTBEAT_INTERVAL", "must be at least 1 ms"));
        }
        if self.connection_timeout_ms < self.heartbeat_interval_ms {
            return Err(bad(
                "CONNECTION_TIMEOUT",
                "must be at least HEARTBEAT_INTERVAL, or healthy clients are cut off",
            ));
        }
        if self.typing_timeout_ms == 0 {
            return Err(bad("TYPING_TIMEOUT", "must be at least 1 ms"));
        }
        for (var, ms) in [
            ("HEARTBEAT_INTERVAL", self.heartbeat_interval_ms),
            ("CONNECTION_TIMEOUT", self.connection_timeout_ms),
            ("TYPING_TIMEOUT", self.typing_timeout_ms),
            ("BACKEND_TIMEOUT", self.backend_timeout_ms),
            ("AUTH_TIMEOUT", self.auth_timeout_ms),
            ("SHUTDOWN_TIMEOUT", self.shutdown_timeout_ms),
            ("DRAIN_WINDOW", self.drain_window_ms),
            ("CHATS_REFETCH_INTERVAL", self.chats_refetch_interval_ms),
            ("BREAKER_COOLDOWN", self.breaker_cooldown_ms),
            ("AUTH_CACHE_TTL", self.auth_cache_ttl_ms),
            ("STALL_TIMEOUT", self.stall_timeout_ms),
            ("PRESENCE_LEASE", self.presence_lease_ms),
        ] {
            if ms > MAX_DURATION_MS {
                return Err(bad(var, "must be at most 86400000 ms (one day)"));
            }
        }
        if self.presence_lease_ms < MIN_PRESENCE_LEASE_MS {
            return Err(bad("PRESENCE_LEASE", "must be at least 300 ms"));
        }
        if self.stall_timeout_ms < MIN_STALL_TIMEOUT_MS {
            return Err(bad("STALL_TIMEOUT", "must be at least 100 ms"));
        }
        if self.backend_timeout_ms == 0 {
            return Err(bad("BACKEND_TIMEOUT", "must be at least 1 ms"));
        }
        if self.auth_timeout_ms == 0 {
            return Err(bad("AUTH_TIMEOUT", "must be at least 1 ms"));
        }
        Ok(())
    }

    /// Sizes, queues and caps: what one client or the whole process may take.
    fn check_limits(&self) -> Result<(), ConfigError> {
        if self.max_message_size < 16 || self.max_message_size > MAX_MESSAGE_SIZE_LIMIT {
            return Err(bad(
                "MAX_MESSAGE_SIZE",
                "must be between 16 bytes and 16 MiB (each connection reading a frame may reserve this much)",
            ));
        }
        if self.max_outbox_bytes < 2 * self.max_message_size + 1024 {
            return Err(bad(
                "MAX_OUTBOX_BYTES",
                "must be at least 2 x MAX_MESSAGE_SIZE + 1024, or one large message closes its readers",
            ));
        }
        if self.max_outbox_bytes > MAX_OUTBOX_BYTES_LIMIT {
            return Err(bad("MAX_OUTBOX_BYTES", "must be at most 1 GiB"));
        }
        if self.outbox_budget < self.max_outbox_bytes {
            return Err(bad(
                "OUTBOX_BUDGET",
                "must be at least MAX_OUTBOX_BYTES (one connection's queue must fit)",
            ));
        }
        if self.rate_limit > 0 && self.rate_burst == 0 {
            return Err(bad(
                "RATE_BURST",
                "must be at least 1 when RATE_LIMIT is set",
            ));
        }
        if self.max_connections == 0 {
            return Err(bad("MAX_CONNECTIONS", "must be at least 1"));
        }
        if self.max_fragments == 0 {
            return Err(bad("MAX_FRAGMENTS", "must be at least 1"));
        }
        Ok(())
    }

    /// Logging, threads and the REST pool.
    fn check_process(&self) -> Result<(), ConfigError> {
        if !matches!(
            self.log_level.to_ascii_lowercase().as_str(),
            "debug" | "info" | "warn" | "error" | "trace"
        ) {
            return Err(bad("LOG_LEVEL", "must be one of debug, info, warn, error"));
        }
        if self.workers > 1024 {
            return Err(bad("WORKERS", "must be at most 1024"));
        }
        if IoDriver::parse(&self.io_driver).is_none() {
            return Err(bad("IO_DRIVER", "must be io_uring or epoll"));
        }
        if self.backend_pool_size == 0 || self.backend_pool_size > 1024 {
            return Err(bad("BACKEND_POOL_SIZE", "must be between 1 and 1024"));
        }
        if self.backend_retries > 5 {
            return Err(bad("BACKEND_RETRIES", "must be at most 5"));
        }
        Ok(())
    }

    /// The backend choice: REST API, embedded store, demo, benchmark fixture.
    fn check_backend(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.http_api_url {
            check_api_url(url)?;
            if self.demo {
                return Err(bad(
                    "DEMO",
                    "demo mode uses the embedded store; unset HTTP_API_URL",
                ));
            }
        }
        if self.bench_fixture.is_some() {
            if self.http_api_url.is_some() || self.demo {
                return Err(bad(
                    "BENCH_FIXTURE",
                    "the benchmark fixture replaces the backend; unset HTTP_API_URL and DEMO",
                ));
            }
            self.fixture_size()?;
        }
        if let Some(url) = &self.redis_url {
            check_redis_url(url)?;
            if self.http_api_url.is_none() && self.bench_fixture.is_none() {
                return Err(bad(
                    "REDIS_URL",
                    "multi-node mode needs the REST backend (set HTTP_API_URL): the embedded store is per node",
                ));
            }
        }
        if self.node_id.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(bad("NODE_ID", "must not be empty"));
        }
        Ok(())
    }

    /// The server API: key, port, host, body size.
    fn check_api(&self) -> Result<(), ConfigError> {
        match &self.api_key {
            Some(key) => key.check()?,
            None if self.api_port.is_some() => {
                return Err(bad(
                    "API_PORT",
                    "needs API_KEY (the API is off without a key)",
                ))
            }
            None if self.api_host.is_some() => {
                return Err(bad("API_HOST", "needs API_KEY and API_PORT"))
            }
            None => {}
        }
        if self.api_host.is_some() && self.api_port.is_none() {
            return Err(bad(
                "API_HOST",
                "needs API_PORT (without it the API shares WS_PORT and HOST)",
            ));
        }
        if let Some(port) = self.api_port {
            if port != 0 && port == self.ws_port && self.api_host.unwrap_or(self.host) == self.host
            {
                return Err(bad(
                    "API_PORT",
                    "must differ from WS_PORT (unset it to serve the API on WS_PORT)",
                ));
            }
        }
        if !(1024..=API_MAX_BODY_LIMIT).contains(&self.api_max_body) {
            return Err(bad("API_MAX_BODY", "must be between 1024 bytes and 64 MiB"));
        }
        Ok(())
    }

    /// The benchmark fixture size, if one is configured.
    pub fn fixture_size(&self) -> Result<Option<FixtureSize>, ConfigError> {
        let Some(spec) = &self.bench_fixture else {
            return Ok(None);
        };
        let parse = |s: &str| s.trim().parse::<u64>().ok().filter(|n| *n > 0);
        match spec.split_once(':').map(|(u, r)| (parse(u), parse(r))) {
            Some((Some(users), Some(rooms))) => Ok(Some(FixtureSize { users, rooms })),
            _ => Err(bad(
                "BENCH_FIXTURE",
                "must be USERS:ROOMS, two positive integers",
            )),
        }
    }

    /// The allowed origins, parsed from `CORS_ORIGIN`.
    pub fn allowed_origins(&self) -> Vec<String> {
        self.cors_origin
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Number of workers to start (resolving 0 to the number of cores).
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Where the server API listens when it has a port of its own (`API_PORT` set).
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        let port = self.api_port.filter(|_| self.api_key.is_some())?;
        Some(std::net::SocketAddr::new(
            self.api_host.unwrap_or(self.host),
            port,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_call_counts_every_attempt_and_backoff() {
        let t = Duration::from_millis(5000);
        assert_eq!(longest_call(t, 0), t);
        // 3 attempts + 50 ms + 200 ms of backoff.
        assert_eq!(longest_call(t, 2), Duration::from_millis(15_250));
    }
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["socket-server"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parse").config
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = parse(&[]);
        assert_eq!(c.ws_port, 8080);
        assert_eq!(c.heartbeat_interval_ms, 30_000);
        assert_eq!(c.typing_timeout_ms, 3_000);
        assert_eq!(c.max_message_size, 10_000);
        assert_eq!(c.connection_timeout_ms, 60_000);
        assert_eq!(
            c.allowed_origins(),
            vec!["http://localhost:5173".to_string()]
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn invalid_values_name_their_variable() {
        let c = parse(&["--heartbeat-interval-ms", "0"]);
        assert_eq!(c.validate().unwrap_err().var, "HEARTBEAT_INTERVAL");
        let c = parse(&["--bench-fixture", "10"]);
        assert_eq!(c.validate().unwrap_err().var, "BENCH_FIXTURE");
        let c = parse(&["--http-api-url", "ftp://x"]);
        assert_eq!(c.validate().unwrap_err().var, "HTTP_API_URL");
        let c = parse(&[
            "--connection-timeout-ms",
            "10",
            "--heartbeat-interval-ms",
            "20",
        ]);
        assert_eq!(c.validate().unwrap_err().var, "CONNECTION_TIMEOUT");
        let c = parse(&["--max-outbox-bytes", "8192"]);
        assert_eq!(c.validate().unwrap_err().var, "MAX_OUTBOX_BYTES");
        let c = parse(&["--typing-timeout-ms", "99999999999"]);
        assert_eq!(c.validate().unwrap_err().var, "TYPING_TIMEOUT");
        let c = parse(&["--stall-timeout-ms", "50"]);
        assert_eq!(c.validate().unwrap_err().var, "STALL_TIMEOUT");
        let c = parse(&["--outbox-budget", "1048576"]);
        assert_eq!(c.validate().unwrap_err().var, "OUTBOX_BUDGET");
        let c = parse(&[
            "--max-outbox-bytes",
            "2147483648",
            "--outbox-budget",
            "4294967296",
        ]);
        assert_eq!(c.validate().unwrap_err().var, "MAX_OUTBOX_BYTES");
    }

    #[test]
    fn worst_stop_time_adds_the_wait_the_window_and_the_grace() {
        // Store: SHUTDOWN_TIMEOUT 5 s + 1.5 x DRAIN_WINDOW 2 s + 3 s.
        let worst = |c: Config| c.validate().expect("valid").drain.worst_stop_time();
        assert_eq!(worst(parse(&[])), Duration::from_millis(11_000));
        // REST: the wait rises to 3 x 5 s + 50 + 200 ms of backoff.
        let rest = worst(parse(&["--http-api-url", "http://api"]));
        assert_eq!(rest, Duration::from_millis(21_250));
        assert!(rest < UNIT_STOP_TIMEOUT);
    }

    #[test]
    fn api_urls_are_parsed_not_just_prefix_checked() {
        for bad_url in [
            "https://",
            "http://api:80a",
            "http:// api",
            "ftp://api",
            "http://api/v1?x=1",
            "http://api/#top",
            "api.example.com",
        ] {
            let c = parse(&["--http-api-url", bad_url]);
            assert_eq!(
                c.validate().map(|_| ()).map_err(|e| e.var),
                Err("HTTP_API_URL"),
                "{bad_url} must be refused"
            );
        }
        for good in [
            "http://127.0.0.1:3000",
            "https://api.example.com/v1/",
            "http://[::1]:8000/api",
        ] {
            assert!(
                parse(&["--http-api-url", good]).validate().is_ok(),
                "{good}"
            );
        }
        let c = parse(&["--http-api-url", "http://api", "--bench-fixture", "10:1"]);
        assert_eq!(c.validate().unwrap_err().var, "BENCH_FIXTURE");
    }

    #[test]
    fn api_settings_are_checked_and_the_key_never_printed() {
        let key = "k3y-k3y-k3y-k3y-k3y";
        let c = parse(&["--api-key", key]);
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains(key), "Debug must redact API_KEY");
        let k = c.api_key.as_ref().expect("key");
        assert!(k.matches(key));
        assert!(!k.matches("k3y-k3y-k3y-k3y-k3"));
        assert!(!k.matches(""));
        assert_eq!(c.api_addr(), None, "no API_PORT: the API shares WS_PORT");
        for (args, var) in [
            (vec!["--api-key", "short"], "API_KEY"),
            (vec!["--api-key", "has a space in it!!"], "API_KEY"),
            (vec!["--api-port", "9000"], "API_PORT"),
            (vec!["--api-key", key, "--api-port", "8080"], "API_PORT"),
            (
                vec!["--api-key", key, "--api-host", "127.0.0.1"],
                "API_HOST",
            ),
            (
                vec!["--api-key", key, "--api-max-body", "10"],
                "API_MAX_BODY",
            ),
        ] {
            assert_eq!(
                parse(&args).validate().map(|_| ()).map_err(|e| e.var),
                Err(var),
                "{args:?}"
            );
        }
        let c = parse(&[
            "--api-key",
            key,
            "--api-port",
            "9000",
            "--api-host",
            "10.0.0.5",
        ]);
        let api = c.validate().expect("valid").api.expect("on");
        assert_eq!(api.own_addr, Some("10.0.0.5:9000".parse().expect("addr")));
        assert!(
            !format!("{api:?}").contains(key),
            "Debug must redact API_KEY"
        );
    }

    #[test]
    fn fixture_and_origins_parse() {
        let c = parse(&[
            "--bench-fixture",
            "100:4",
            "--cors-origin",
            "http://a, http://b/",
        ]);
        assert_eq!(
            c.fixture_size(),
            Ok(Some(FixtureSize {
                users: 100,
                rooms: 4
            }))
        );
        assert_eq!(
            c.allowed_origins(),
            vec!["http://a".to_string(), "http://b".to_string()]
        );
    }

    #[test]
    fn settings_are_typed_and_the_fixture_turns_the_rate_limit_off() {
        let s = parse(&["--typing-timeout-ms", "1500", "--workers", "3"])
            .validate()
            .expect("valid");
        assert_eq!(s.session.typing_timeout, Duration::from_millis(1500));
        assert_eq!(s.listen.workers, 3);
        assert_eq!(
            s.session.rate.map(|r| (r.per_second.get(), r.burst.get())),
            Some((50, 100))
        );
        assert!(matches!(
            s.backend,
            BackendChoice::Store { demo: false, .. }
        ));
        let fixture = parse(&["--bench-fixture", "10:2"])
            .validate()
            .expect("valid");
        assert_eq!(
            fixture.session.rate, None,
            "benchmark clients are not limited"
        );
        assert!(matches!(fixture.backend, BackendChoice::Fixture(_)));
        let off = parse(&["--rate-limit", "0"]).validate().expect("valid");
        assert_eq!(off.session.rate, None);
        let rest = parse(&["--http-api-url", "http://api"])
            .validate()
            .expect("valid");
        assert!(matches!(rest.backend, BackendChoice::Rest(ref r) if r.url == "http://api"));
        assert_eq!(rest.drain.wait, Duration::from_millis(15_250));
    }
}
