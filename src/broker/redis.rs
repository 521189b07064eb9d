//! The multi-node bus: room events cross nodes over Redis PUB/SUB, one channel per chat.
//!
//! Two threads per node, each with its own connection (redis-rs, blocking), bridging into the
//! workers' lock-free mailboxes:
//! - the publisher takes encoded events from a bounded queue and pipelines one `PUBLISH` per
//!   event and room (a chat message is one `PUBLISH`, not one per recipient or node);
//! - the subscriber holds the node's subscriptions and posts every event it receives from
//!   another node to the local workers. A node is subscribed to a chat's channel while at
//!   least one of its connections is in the chat (one count across its workers). Changes of
//!   interest wake the subscriber through a channel of the node's own, so it never polls.
//!
//! Guarantees: an event is delivered locally by its publisher and to other workers in-process
//! (as with the [`Local`] bus); on other nodes once per subscribed node, never back on its
//! own node (the subscriber skips its own node's records); per publishing worker, order is
//! kept end to end (one queue, one connection, one subscriber). A full queue or a Redis that
//! is down drops cross-node events (counted, logged) instead of buffering them without bound;
//! both threads reconnect with backoff and jitter, and the subscriber resubscribes everything.
//! After the subscriber lost Redis, it tells the local members of every chat it holds that
//! events may have been lost (`chat:resync`), once it is subscribed again; while it is not,
//! [`Bus::connected`] says so (`/readyz` answers 503). Not yet: presence counted across nodes
//! (each node counts its own connections).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use super::{wire, Bus, Envelope, Local, Mailbox, NodeId, PresenceChange, RoomEvent};

/// Events waiting for the publisher; more are dropped (and counted) rather than queued.
const QUEUE: usize = 65_536;
/// Most events in one pipeline.
const BATCH: usize = 512;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First reconnect pause; doubled per failure up to [`MAX_BACKOFF`], with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest reconnect pause.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Prefix of every channel (several deployments may share one Redis).
const PREFIX: &str = "ss:";

/// The Redis channel of a chat.
pub fn chat_channel(room: &str) -> String {
    format!("{PREFIX}chat:{room}")
}

/// What the publisher sends.
enum Outgoing {
    /// One record to one chat's channel.
    Publish { channel: String, record: Bytes },
    /// Wake the node's own subscriber: its interest changed.
    Resync,
}

/// Counters of the broker, for logs and tests.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Whether the subscriber is connected and subscribed.
    pub subscribed: AtomicBool,
    /// Records published.
    pub published: AtomicU64,
    /// Records received from other nodes.
    pub received: AtomicU64,
    /// Events not published: queue full or Redis down.
    pub dropped: AtomicU64,
    /// Connections (re)established by either thread.
    pub connects: AtomicU64,
}

/// The multi-node bus over Redis.
pub struct RedisBus {
    local: Local,
    node: NodeId,
    out: Sender<Outgoing>,
    interest: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    stats: Arc<BrokerStats>,
}

impl RedisBus {
    /// Starts the publisher and subscriber threads for `node` against the Redis at `url`;
    /// events from other nodes go to `mailboxes` (this node's workers).
    pub fn start(url: &str, node: NodeId, mailboxes: Vec<Arc<Mailbox>>) -> std::io::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (out, queue) = bounded(QUEUE);
        let interest: Arc<Mutex<HashMap<Arc<str>, usize>>> = Arc::default();
        let stats: Arc<BrokerStats> = Arc::default();
        let control = format!("{PREFIX}node:{node}");
        std::thread::Builder::new()
            .name("redis-pub".into())
            .spawn({
                let (client, control, stats) = (client.clone(), control.clone(), stats.clone());
                move || publisher(client, queue, control, stats)
            })?;
        std::thread::Builder::new()
            .name("redis-sub".into())
            .spawn({
                let subscriber = Subscriber {
                    client,
                    node,
                    control,
                    interest: interest.clone(),
                    mailboxes: mailboxes.clone(),
                    stats: stats.clone(),
                };
                move || subscriber.run()
            })?;
        Ok(Self {
            local: Local::new(mailboxes),
            node,
            out,
            interest,
            stats,
        })
    }

    /// The broker's counters.
    pub fn stats(&self) -> Arc<BrokerStats> {
        self.stats.clone()
    }

    fn send(&self, o: Outgoing) {
        match self.out.try_send(o) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Bus for RedisBus {
    fn publish(&self, event: Arc<RoomEvent>) {
        // Events that came from another node are delivered, never published again: only the
        // node that made an event publishes it.
        if event.origin.node != self.node {
            return;
        }
        self.local.publish(event.clone());
        let record = wire::encode(&event);
        for room in &event.rooms {
            self.send(Outgoing::Publish {
                channel: chat_channel(room),
                record: record.clone(),
            });
        }
    }

    fn join(&self, _worker: usize, room: &Arc<str>) {
        let first = {
            let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
            let n = interest.entry(room.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.send(Outgoing::Resync);
        }
    }

    fn leave(&self, _worker: usize, room: &Arc<str>) {
        let last = {
            let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
            match interest.get_mut(room) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    interest.remove(room);
                    true
                }
                None => false,
            }
        };
        if last {
            self.send(Outgoing::Resync);
        }
    }

    fn presence(&self, from: usize, change: PresenceChange) {
        self.local.presence(from, change);
    }

    fn connected(&self) -> Option<bool> {
        Some(self.stats.subscribed.load(Ordering::SeqCst))
    }
}

/// A pause before the next attempt: doubling from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], times
/// 0.5–1.5 so nodes that lost Redis together do not return together.
fn backoff(failures: u32) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1 << failures.min(6))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::random::<f64>() + 0.5)
}

fn publisher(
    client: redis::Client,
    queue: Receiver<Outgoing>,
    control: String,
    stats: Arc<BrokerStats>,
) {
    let mut con: Option<redis::Connection> = None;
    let mut failures = 0;
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        if con.is_none() {
            match client.get_connection_with_timeout(CONNECT_TIMEOUT) {
                Ok(c) => {
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("Redis publisher connected");
                    con = Some(c);
                    failures = 0;
                }
                Err(e) => {
                    stats
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    tracing::warn!(error = %e, "Redis unreachable: cross-node events dropped");
                    std::thread::sleep(backoff(failures));
                    failures += 1;
                    continue;
                }
            }
        }
        let mut pipe = redis::pipe();
        let mut records = 0;
        for o in batch.drain(..) {
            match o {
                Outgoing::Publish { channel, record } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(&record[..]).ignore();
                    records += 1;
                }
                Outgoing::Resync => {
                    pipe.cmd("PUBLISH").arg(&control).arg("resync").ignore();
                }
            }
        }
        let Some(c) = con.as_mut() else { continue };
        match pipe.query::<()>(c) {
            Ok(()) => {
                stats.published.fetch_add(records, Ordering::Relaxed);
            }
            Err(e) => {
                stats.dropped.fetch_add(records, Ordering::Relaxed);
                tracing::warn!(error = %e, "Redis publish failed: reconnecting");
                con = None;
            }
        }
    }
}

/// The subscriber thread's state.
struct Subscriber {
    client: redis::Client,
    node: NodeId,
    control: String,
    interest: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    mailboxes: Vec<Arc<Mailbox>>,
    stats: Arc<BrokerStats>,
}

impl Subscriber {
    /// Connects, subscribes, relays; after any failure, again (with backoff).
    fn run(self) {
        let mut failures = 0;
        let mut lost = false;
        loop {
            match self.session(std::mem::take(&mut lost)) {
                Ok(()) => failures = 0,
                Err(e) => {
                    lost = lost || self.stats.subscribed.swap(false, Ordering::SeqCst);
                    tracing::warn!(error = %e, "Redis subscriber lost its connection: resubscribing");
                    std::thread::sleep(backoff(failures));
                    failures += 1;
                }
            }
        }
    }

    /// One connection's life: subscribe the node's channel and every chat of interest, then
    /// relay until the connection fails. After a lost connection (`recovering`), the local
    /// members of every subscribed chat are told that its events may have gaps.
    fn session(&self, recovering: bool) -> redis::RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let mut ps = con.as_pubsub();
        ps.subscribe(&self.control)?;
        let mut subscribed = HashSet::new();
        self.resync(&mut ps, &mut subscribed)?;
        self.stats.subscribed.store(true, Ordering::SeqCst);
        tracing::info!(
            chats = subscribed.len(),
            recovering,
            "Redis subscriber connected"
        );
        if recovering && !subscribed.is_empty() {
            let gaps: Arc<[Arc<str>]> = subscribed.iter().cloned().collect();
            for mb in &self.mailboxes {
                mb.post(Envelope::Resync(gaps.clone()));
            }
        }
        loop {
            let msg = ps.get_message()?;
            if msg.get_channel_name() == self.control {
                self.resync(&mut ps, &mut subscribed)?;
                continue;
            }
            let record = Bytes::copy_from_slice(msg.get_payload_bytes());
            match wire::decode(record) {
                Ok(event) if event.origin.node == self.node => {}
                Ok(event) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let event = Arc::new(event);
                    for mb in &self.mailboxes {
                        mb.post(Envelope::Room(event.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(channel = msg.get_channel_name(), error = %e, "Unreadable record on a chat channel");
                }
            }
        }
    }

    /// Subscribes the chats of interest not yet subscribed, unsubscribes the others.
    fn resync(
        &self,
        ps: &mut redis::PubSub<'_>,
        subscribed: &mut HashSet<Arc<str>>,
    ) -> redis::RedisResult<()> {
        let wanted: HashSet<Arc<str>> = self
            .interest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let join: Vec<String> = wanted
            .difference(subscribed)
            .map(|r| chat_channel(r))
            .collect();
        let leave: Vec<String> = subscribed
            .difference(&wanted)
            .map(|r| chat_channel(r))
            .collect();
        if !join.is_empty() {
            ps.subscribe(&join)?;
        }
        if !leave.is_empty() {
            ps.unsubscribe(&leave)?;
        }
        *subscribed = wanted;
        Ok(())
    }
}
