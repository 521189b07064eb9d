//! The validated configuration, by subsystem, in the units each subsystem uses.
//!
//! [`Config`](super::Config) is what was given (flags, environment, `.env`, defaults: raw
//! numbers of milliseconds and bytes). [`Settings`] is what the server runs with: only
//! [`Config::validate`](super::Config::validate) builds one, so a value that breaks a rule
//! cannot reach a worker; durations are [`Duration`]s, choices are enums (one backend, an
//! optional rate limit, an optional server API), derived values (the worker count, the drain's
//! wait, the allowed origins) are resolved once. Nothing changes a `Settings` after it is
//! built: the shell holds it behind a shared reference.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::{ApiKey, FixtureSize, CLOSE_GRACE};

/// Everything the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listening and admission.
    pub listen: Listen,
    /// One connection's rules after authentication.
    pub session: SessionRules,
    /// What one client message may be.
    pub frames: FrameLimits,
    /// Outgoing queues: caps, budget, the stall rule.
    pub flow: Flow,
    /// Shutdown.
    pub drain: Drain,
    /// Where users, chats and messages come from.
    pub backend: BackendChoice,
    /// The server API, if on.
    pub api: Option<ApiSettings>,
    /// `LOG_LEVEL`.
    pub log_level: String,
    /// `TRANSPARENT_HUGE_PAGES`.
    pub transparent_huge_pages: bool,
    /// `REDIS_URL`: multi-node mode when set (a `redis://` URL with a host; only with the
    /// REST backend or the benchmark fixture).
    pub redis_url: Option<String>,
    /// `NODE_ID`: this node's name (non-empty); random when unset.
    pub node_id: Option<String>,
    /// `PRESENCE_LEASE`: at least 300 ms.
    pub presence_lease: Duration,
}

/// The workers' I/O driver (`IO_DRIVER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring, or epoll where the kernel refuses io_uring.
    #[default]
    IoUring,
    /// epoll only.
    Epoll,
}

impl IoDriver {
    /// `io_uring` or `epoll` (any case); `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "io_uring" => Some(Self::IoUring),
            "epoll" => Some(Self::Epoll),
            _ => None,
        }
    }
}

/// Listening and admission.
#[derive(Debug, Clone)]
pub struct Listen {
    /// `HOST`:`WS_PORT`.
    pub addr: SocketAddr,
    /// Worker threads (`WORKERS`, 0 resolved to the number of cores): at least 1.
    pub workers: usize,
    /// `IO_DRIVER`.
    pub io_driver: IoDriver,
    /// Parsed `CORS_ORIGIN`.
    pub allowed_origins: Vec<String>,
    /// `AUTH_TIMEOUT`: request head and authentication together, from accept.
    pub auth_timeout: Duration,
    /// `MAX_CONNECTIONS`: at least 1.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_IP`; 0 is off.
    pub max_connections_per_ip: usize,
}

/// One connection's rules after authentication (what `core::hub` enforces).
#[derive(Debug, Clone)]
pub struct SessionRules {
    /// `HEARTBEAT_INTERVAL`: more than zero.
    pub heartbeat_interval: Duration,
    /// `CONNECTION_TIMEOUT`: at least the heartbeat interval.
    pub connection_timeout: Duration,
    /// `TYPING_TIMEOUT`: more than zero.
    pub typing_timeout: Duration,
    /// `CHATS_REFETCH_INTERVAL`.
    pub refetch_interval: Duration,
    /// `RATE_LIMIT` and `RATE_BURST`; `None` when off (`RATE_LIMIT=0`, or the benchmark
    /// fixture, whose clients send far above any per-user rate).
    pub rate: Option<Rate>,
}

/// A message rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages per second.
    pub per_second: NonZeroU32,
    /// Burst above the rate.
    pub burst: NonZeroU32,
}

/// What one client message may be.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// `MAX_MESSAGE_SIZE`, bytes after reassembly: 16 B..=16 MiB.
    pub max_message_size: usize,
    /// `MAX_FRAGMENTS`: at least 1.
    pub max_fragments: usize,
}

/// Outgoing queues.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// `MAX_OUTBOX_BYTES`: one connection's queue cap, at least 2 x `MAX_MESSAGE_SIZE` + 1 KiB,
    /// at most 1 GiB.
    pub max_outbox_bytes: usize,
    /// `OUTBOX_BUDGET`: all of a worker's queues, at least `MAX_OUTBOX_BYTES`.
    pub outbox_budget: usize,
    /// `STALL_TIMEOUT`: at least 100 ms.
    pub stall_timeout: Duration,
}

/// Shutdown.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// How long the drain waits for work already accepted: `SHUTDOWN_TIMEOUT`, raised with
    /// the REST backend to the longest a REST call can take.
    pub wait: Duration,
    /// `DRAIN_WINDOW`: the closes are spread over it.
    pub window: Duration,
}

impl Drain {
    /// Longest a drain can take: the wait, the closes spread over the window (jitter up to
    /// 1.5x), then [`CLOSE_GRACE`]. A service manager's stop timeout must exceed it.
    pub fn worst_stop_time(&self) -> Duration {
        self.wait + self.window.mul_f64(1.5) + CLOSE_GRACE
    }
}

/// Where users, chats and messages come from: exactly one.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    /// The product's REST API (`HTTP_API_URL`).
    Rest(RestSettings),
    /// The in-memory benchmark fixture (`BENCH_FIXTURE`).
    Fixture(FixtureSize),
    /// The embedded SQLite store (`STORE_PATH`), seeded for the demo when `demo`.
    Store {
        /// `STORE_PATH`.
        path: PathBuf,
        /// `DEMO`.
        demo: bool,
    },
}

impl BackendChoice {
    /// Whether demo mode is on (the demo page is served).
    pub fn demo(&self) -> bool {
        matches!(self, BackendChoice::Store { demo: true, .. })
    }
}

/// The REST backend's settings.
#[derive(Debug, Clone)]
pub struct RestSettings {
    /// `HTTP_API_URL`: http(s), a host, no query or fragment.
    pub url: String,
    /// `BACKEND_POOL_SIZE`: blocking threads making calls, 1..=1024.
    pub threads: usize,
    /// `BACKEND_TIMEOUT`: per attempt, more than zero.
    pub timeout: Duration,
    /// `BACKEND_RETRIES`: at most 5.
    pub retries: u32,
    /// `BREAKER_THRESHOLD`: consecutive failures that open the breaker (0: never).
    pub breaker_threshold: u32,
    /// `BREAKER_COOLDOWN`.
    pub breaker_cooldown: Duration,
    /// `AUTH_CACHE_TTL` (zero: no cache).
    pub auth_cache_ttl: Duration,
}

/// The server API's settings (on only with a valid `API_KEY`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `API_KEY`: at least 16 visible ASCII characters (redacted in `Debug`).
    pub key: ApiKey,
    /// `API_HOST`:`API_PORT` when the API has a listener of its own; `None`: on `WS_PORT`.
    pub own_addr: Option<SocketAddr>,
    /// `API_MAX_BODY`, bytes: 1 KiB..=64 MiB.
    pub max_body: usize,
}
