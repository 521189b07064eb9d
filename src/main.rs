//! The `socket-server` command: serve (the default), check the configuration, or administer
//! the embedded store.
//!
//! Guarantees: `serve` validates the configuration before binding (exit status 2 if invalid, 1
//! on other errors); signals are handled and systemd told READY only once every worker listens,
//! within `STARTUP_TIMEOUT` (10 s) or start-up fails.
//! Not guaranteed / not here: a signal before that ends the process without a drain; `user` and
//! `chat` do not validate the configuration; the benchmark fixture turns the rate limit off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use socket_server::backend::fixture::Fixture;
use socket_server::backend::rest::RestBackend;
use socket_server::backend::store::{Admin, Store, DEMO_CHATS, DEMO_USERS};
use socket_server::backend::Backend;
use socket_server::broker::{redis::RedisBus, Mailbox};
use socket_server::config::{BackendChoice, Config, Settings};
use socket_server::metrics::Metrics;
use socket_server::net::worker::{self, Shared};
use socket_server::{shutdown, telemetry};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long start-up waits for every worker to bind.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "socket-server",
    version,
    about = "Real-time chat gateway over WebSockets"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve WebSockets (the default).
    Serve,
    /// Validate the configuration and print it; exit 2 if invalid.
    CheckConfig,
    /// Conformance echo for the Autobahn testsuite: the production WebSocket layer echoing
    /// every message, with raised limits. No authentication; bind to loopback only.
    #[command(hide = true)]
    Echo {
        /// Port (0 picks a free one; the log line "Echo listening" gives it).
        #[arg(long, default_value_t = 9001)]
        port: u16,
        /// Largest message, bytes.
        #[arg(long, default_value_t = socket_server::net::echo::ECHO_MAX_MESSAGE_SIZE)]
        max_message_size: usize,
        /// Most fragments per message.
        #[arg(long, default_value_t = socket_server::net::echo::ECHO_MAX_FRAGMENTS)]
        max_fragments: usize,
    },
    /// Manage users of the embedded store.
    User {
        #[command(subcommand)]
        command: UserCmd,
    },
    /// Manage chats of the embedded store.
    Chat {
        #[command(subcommand)]
        command: ChatCmd,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create (or update) a user and print a new token for them.
    Add {
        /// User id.
        id: String,
        /// Display name (defaults to the id).
        #[arg(long)]
        name: Option<String>,
        /// E-mail address.
        #[arg(long, default_value = "")]
        email: String,
    },
}

#[derive(Subcommand)]
enum ChatCmd {
    /// Create a chat (if missing) and add members to it.
    Add {
        /// Chat id.
        id: String,
        /// Comma-separated user ids.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
}

fn main() {
    // Transparent huge pages off (TRANSPARENT_HUGE_PAGES re-allows them): first, before the
    // allocator touches much of its arena, which mimalloc reserved with MADV_HUGEPAGE. The flag
    // is process-wide and also covers memory mapped before it.
    let huge_pages_off = rustix::thread::disable_transparent_huge_pages(true).is_ok();
    // `.env` fills in variables that are not already set, as in the seed.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let result = match cli.command {
        None | Some(Cmd::Serve) => serve(&cli.config, huge_pages_off),
        Some(Cmd::CheckConfig) => check_config(&cli.config),
        Some(Cmd::Echo {
            port,
            max_message_size,
            max_fragments,
        }) => {
            let _log = telemetry::init(&cli.config.log_level);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let limits = socket_server::net::reader::Limits {
                max_message_size,
                max_fragments,
            };
            socket_server::net::echo::run(addr, limits).map_err(anyhow::Error::from)
        }
        Some(Cmd::User { command }) => user(&cli.config, command),
        Some(Cmd::Chat { command }) => chat(&cli.config, command),
    };
    if let Err(e) = result {
        eprintln!("socket-server: {e:#}");
        std::process::exit(
            if e.downcast_ref::<socket_server::config::ConfigError>()
                .is_some()
            {
                2
            } else {
                1
            },
        );
    }
}

/// Set when the worst-case drain outlasts the shipped unit's `TimeoutStopSec`.
fn stop_time_warning(settings: &Settings) -> Option<String> {
    let worst = settings.drain.worst_stop_time();
    (worst > socket_server::config::UNIT_STOP_TIMEOUT).then(|| {
        format!(
            "a drain can take up to {:.1} s (SHUTDOWN_TIMEOUT, or with HTTP_API_URL \
             BACKEND_TIMEOUT x (BACKEND_RETRIES+1) + backoffs, then DRAIN_WINDOW and 3 s of close \
             handshakes); TimeoutStopSec in deploy/socket-server.service is {} s: raise it above \
             that, or lower BACKEND_TIMEOUT / BACKEND_RETRIES",
            worst.as_secs_f64(),
            socket_server::config::UNIT_STOP_TIMEOUT.as_secs()
        )
    })
}

fn check_config(config: &Config) -> anyhow::Result<()> {
    let settings = config.validate()?;
    println!("configuration is valid");
    if let Some(warning) = stop_time_warning(&settings) {
        println!("warning: {warning}");
    }
    println!("{settings:#?}");
    Ok(())
}

fn user(config: &Config, cmd: UserCmd) -> anyhow::Result<()> {
    let admin = Admin::open(&config.store_path)
        .with_context(|| format!("opening store {}", config.store_path.display()))?;
    match cmd {
        UserCmd::Add { id, name, email } => {
            if id.trim().is_empty() {
                bail!("user id must not be empty");
            }
            let name = name.unwrap_or_else(|| id.clone());
            let token = admin.add_user(&id, &name, &email)?;
            println!("{token}");
        }
    }
    Ok(())
}

fn chat(config: &Config, cmd: ChatCmd) -> anyhow::Result<()> {
    let mut admin = Admin::open(&config.store_path)
        .with_context(|| format!("opening store {}", config.store_path.display()))?;
    match cmd {
        ChatCmd::Add { id, members, name } => {
            if id.trim().is_empty() {
                bail!("chat id must not be empty");
            }
            admin.add_chat(&id, &name, &members).context(
                "adding the chat failed (every member must exist: add users with `user add`)",
            )?;
            println!("{id}");
        }
    }
    Ok(())
}

fn backend(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Arc<dyn Backend>> {
    match &settings.backend {
        BackendChoice::Rest(rest) => {
            tracing::info!(url = %rest.url, pool = rest.threads, "Using the REST API backend");
            Ok(Arc::new(RestBackend::new(rest, metrics.rest_hooks())?))
        }
        BackendChoice::Fixture(size) => {
            tracing::warn!(
                users = size.users,
                rooms = size.rooms,
                "BENCHMARK MODE: in-memory fixture, tokens t0..t<users-1>, rate limit off; no real data is used"
            );
            Ok(Arc::new(Fixture::new(*size)))
        }
        BackendChoice::Store { path, demo } => {
            if *demo {
                let mut admin = Admin::open(path)?;
                admin.seed_demo()?;
                let tokens: Vec<&str> = DEMO_USERS.iter().map(|u| u.2).collect();
                let chats: Vec<&str> = DEMO_CHATS.iter().map(|c| c.0).collect();
                tracing::info!(chats = ?chats, tokens = ?tokens, "Demo mode: seeded users and chats");
            }
            let shown = path.display().to_string();
            tracing::info!(path = %shown, "Using the embedded store");
            Ok(Arc::new(
                Store::start(path).with_context(|| format!("opening store {shown}"))?,
            ))
        }
    }
}

fn serve(config: &Config, huge_pages_off: bool) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let _log = telemetry::init(&settings.log_level);
    if settings.transparent_huge_pages {
        // `main` turned them off before anything else; the operator wants them back.
        if let Err(e) = rustix::thread::disable_transparent_huge_pages(false) {
            tracing::warn!(error = %e, "Could not allow transparent huge pages");
        }
    } else if !huge_pages_off {
        tracing::warn!("Could not turn transparent huge pages off; RSS will count 2 MiB pages");
    }
    if let Some(warning) = stop_time_warning(&settings) {
        tracing::warn!("{warning}");
    }
    let metrics = Metrics::new();
    let backend = backend(&settings, &metrics)?;
    let addr = settings.listen.addr;
    let first = worker::bind_first(addr).with_context(|| format!("binding {addr}"))?;
    let local = first.local_addr()?;
    let api_first = match settings.api.as_ref().and_then(|a| a.own_addr) {
        Some(api) => {
            Some(worker::bind_first(api).with_context(|| format!("binding API_PORT {api}"))?)
        }
        None => None,
    };
    let api_local = api_first.as_ref().map(|l| l.local_addr()).transpose()?;
    let workers = settings.listen.workers;
    let shared = Arc::new(match settings.redis_url.clone() {
        None => Shared::new(settings, backend.clone(), metrics),
        Some(url) => {
            let node = Shared::node_of(&settings);
            let mailboxes = Mailbox::for_workers(workers);
            let hooks = metrics.broker_hooks();
            let bus = RedisBus::start(
                &url,
                node,
                settings.presence_lease,
                mailboxes.clone(),
                hooks,
            )
            .with_context(|| format!("starting the Redis broker for {url}"))?;
            tracing::info!(node = %node, name = ?settings.node_id, "Multi-node mode over Redis");
            Shared::with_bus(
                settings,
                backend.clone(),
                metrics,
                node,
                mailboxes,
                Box::new(bus),
            )
        }
    });
    let handles = worker::start(shared.clone(), first, api_first)?;
    let started = Instant::now();
    while shared.listening() < workers {
        if started.elapsed() > STARTUP_TIMEOUT || shared.stopping() {
            bail!("workers failed to start listening");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let stopper = shared.clone();
    shutdown::install(move || stopper.shutdown())?;
    socket_server::systemd::ready();
    socket_server::systemd::start_watchdog(shared.liveness())?;
    tracing::info!(
        host = %local.ip(),
        port = local.port(),
        workers,
        node = %shared.node(),
        backend = backend.name(),
        demo = shared.config().backend.demo(),
        api = match (&shared.config().api, api_local) {
            (None, _) => "off".to_string(),
            (Some(_), None) => "on WS_PORT".to_string(),
            (Some(_), Some(a)) => a.to_string(),
        },
        api_port = api_local.map(|a| a.port()),
        "Server listening"
    );
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("Server stopped");
    Ok(())
}
