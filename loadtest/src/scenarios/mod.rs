//! The scenarios, and the steps they share: opening the chat's clients, idling until the run
//! starts, and checking that setup worked.
//!
//! Guarantees: a scenario measures only after every one of its clients authenticated and all
//! are in the same chat (otherwise it stops with the server's reasons); while waiting, clients
//! keep reading (and answering pings), so no socket buffer fills before the start.

pub mod chat;
pub mod connections;
pub mod hold;
pub mod latency;
pub mod storm;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;

use crate::client::{connect, token_for, Conn, ConnectOpts};
use crate::common::Common;
use crate::frames::Kind;
use crate::handshake::Target;
use crate::run::{wait_phase, wait_until, Phase, Shared, Window};

/// What every chat client task needs.
#[derive(Debug)]
pub struct ChatCtx {
    /// The servers (the nodes of a cluster): client j connects to `targets[j % len]`.
    pub targets: Vec<Target>,
    /// Counters and phase.
    pub shared: Arc<Shared>,
    /// Clients in the chat.
    pub clients: u64,
    /// First user index.
    pub first_user: u64,
    /// The server's ROOMS (token stride).
    pub rooms: u64,
    /// Bound on connect + authentication.
    pub connect_timeout: Duration,
    /// The chat every client must be in (set by the first to connect).
    pub chat: OnceLock<String>,
}

impl ChatCtx {
    /// Context for `clients` clients from the common options.
    pub fn new(common: &Common, clients: u64, shared: Arc<Shared>) -> Result<Self> {
        Ok(Self {
            targets: common.targets()?,
            shared,
            clients,
            first_user: common.first_user,
            rooms: common.rooms.max(1),
            connect_timeout: common.connect_timeout,
            chat: OnceLock::new(),
        })
    }
}

/// Opens client `j` of the chat; returns it with its chat id as a JSON string literal.
pub async fn open_chat_client(
    ctx: &ChatCtx,
    j: u64,
    recv_capacity: usize,
) -> Result<(Conn, String)> {
    let opts = ConnectOpts {
        target: &ctx.targets[j as usize % ctx.targets.len()],
        token: token_for(j, ctx.first_user, ctx.rooms, ctx.clients),
        source: None,
        recv_capacity,
        seed: j + 1,
    };
    let token = opts.token.clone();
    let (conn, _) = tokio::time::timeout(ctx.connect_timeout, connect(opts))
        .await
        .with_context(|| format!("{token}: no `connected` within {:?}", ctx.connect_timeout))?
        .context(token.clone())?;
    let chat = conn
        .chat_ids
        .first()
        .cloned()
        .with_context(|| format!("{token}: connected without any chat"))?;
    let first = ctx.chat.get_or_init(|| chat.clone());
    if *first != chat {
        bail!(
            "{token} is in chat {chat}, the first client in {first}: set --rooms to the server's \
             ROOMS so all clients share one chat"
        );
    }
    ctx.shared.other.fetch_add(conn.early_messages, Relaxed);
    Ok((conn, serde_json::to_string(&chat)?))
}

/// Walks the frames just read: counts chat messages (added to `deliveries`, and returned) and
/// other frames, records server errors, and fails on a server close.
pub fn count_frames(conn: &mut Conn, shared: &Shared) -> Result<u64> {
    drain_frames(conn, shared, |_| {})
}

/// [`count_frames`], also handing each chat message's payload to `on_chat`.
pub fn drain_frames(
    conn: &mut Conn,
    shared: &Shared,
    mut on_chat: impl FnMut(&[u8]),
) -> Result<u64> {
    let (mut chat, mut other) = (0u64, 0u64);
    let d = conn.drain(|k, p| match k {
        Kind::ChatMessage => {
            chat += 1;
            on_chat(p);
        }
        Kind::Error => shared.server_error(p),
        _ => other += 1,
    })?;
    if let Some(code) = d.closed {
        bail!("server sent close (code {code})");
    }
    shared.deliveries.fetch_add(chat, Relaxed);
    if other > 0 {
        shared.other.fetch_add(other, Relaxed);
    }
    Ok(chat)
}

/// Keeps reading (counting and answering pings) until the phase reaches `until`.
pub async fn idle_until(
    conn: &mut Conn,
    rx: &mut watch::Receiver<Phase>,
    until: Phase,
    shared: &Shared,
) -> Result<()> {
    loop {
        tokio::select! {
            biased;
            _ = wait_phase(rx, until) => return Ok(()),
            r = conn.read() => {
                if r? == 0 {
                    bail!("server closed the connection");
                }
                count_frames(conn, shared)?;
                conn.flush().await?;
            }
        }
    }
}

/// Waits until `n` clients connected or failed (bounded by `timeout`); errors if any failed.
pub fn await_setup(shared: &Shared, n: u64, timeout: Duration) -> Result<()> {
    let done = wait_until(timeout + Duration::from_secs(1), || {
        shared.connected.load(Relaxed) + shared.failed.load(Relaxed) >= n
    });
    let failed = shared.failed.load(Relaxed);
    if failed > 0 || !done {
        shared.set_phase(Phase::Done);
        let connected = shared.connected.load(Relaxed);
        let errors = shared.errors();
        bail!(
            "setup failed: {connected} of {n} clients connected, {failed} failed{}\n  {}",
            if done { "" } else { " (timed out)" },
            errors.join("\n  ")
        );
    }
    Ok(())
}

/// A warning when this process used (nearly) all of its CPUs while the server had spare.
pub fn bottleneck_note(w: &Window, threads: usize) -> Option<String> {
    let client_busy = w.client.cores >= 0.9 * threads as f64;
    match w.server {
        Some(s) if client_busy && s.cores < 0.9 => Some(format!(
            "the load generator was CPU-bound ({:.0}% of {threads} CPU) while the server used \
             {:.0}% of a core: throughput is client-limited; server CPU per delivery still holds",
            w.client.cores * 100.0,
            s.cores * 100.0
        )),
        None if client_busy => Some(format!(
            "the load generator was CPU-bound ({:.0}% of {threads} CPU); pass --server-pid to see \
             the server's side",
            w.client.cores * 100.0
        )),
        _ => None,
    }
}
