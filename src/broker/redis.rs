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
//! [`Bus::connected`] says so (`/readyz` answers 503). Presence is counted in Redis across
//! nodes, with leases (see [`presence`]); announcements go out on one channel all nodes hear.
//!
//! The server API works on any node: the node a request reaches publishes it once on a
//! channel every node hears, each node's subscriber has that node's workers apply it (in the
//! order Redis published requests, so every node applies concurrent requests in one order)
//! and sends its outcomes back on the asker's own channel; the asker answers once every node
//! that got the request (`PUBLISH` counts them) did (see [`fanout`]). While Redis is
//! unreachable a request is refused, not applied to this node alone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::metrics::BrokerHooks;

use super::fanout::{self, Answer, ClusterError, Requests};
use super::{presence, wire, Bus, Envelope, Local, Mailbox, NodeId, PresenceChange, RoomEvent};
use crate::api::Action;

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
/// The channel of presence announcements: every node subscribes to it, so an announcement in
/// several chats reaches each node once (a connection in two of them gets it once).
const PRESENCE_CHANNEL: &str = "ss:presence";
/// The channel of server API requests: every node subscribes to it.
const API_CHANNEL: &str = "ss:api";
/// What a node's own channel carries to wake its subscriber (anything else there is an
/// answer to one of its server API requests).
const RESYNC: &[u8] = b"resync";

/// The Redis channel of a chat.
pub fn chat_channel(room: &str) -> String {
    let mut name = String::new();
    write_chat_channel(&mut name, room);
    name
}

/// Writes the Redis channel of chat `room` into `name` (cleared first).
fn write_chat_channel(name: &mut String, room: &str) {
    name.clear();
    name.push_str(PREFIX);
    name.push_str("chat:");
    name.push_str(room);
}

/// The channel of node `node`: wake-ups of its subscriber and answers to its requests.
fn node_channel(node: NodeId) -> String {
    format!("{PREFIX}node:{node}")
}

/// What the publisher sends.
enum Outgoing {
    /// One record to one chat's channel (named on the publisher thread, not the worker's).
    Publish { room: Arc<str>, record: Bytes },
    /// A server API request of this node, to every node.
    Request { id: u64, record: Bytes },
    /// This node's answer to another node's request.
    Reply { to: NodeId, record: Bytes },
    /// Wake the node's own subscriber: its interest changed.
    Resync,
    /// A user's connection opened or closed on this node.
    Presence(PresenceChange),
    /// The node is stopping: give up its lease.
    Resign,
    /// The subscriber lost Redis: the publisher's connection to the same server is most
    /// likely dead too, so it connects again before its next command instead of learning it
    /// from a failed one (which would drop an event or refuse a server API request).
    Reconnect,
}

/// The multi-node bus over Redis.
pub struct RedisBus {
    local: Local,
    node: NodeId,
    out: Sender<Outgoing>,
    interest: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    requests: Arc<Requests>,
    stats: BrokerHooks,
}

impl RedisBus {
    /// Starts the publisher and subscriber threads for `node` against the Redis at `url`;
    /// events from other nodes go to `mailboxes` (this node's workers).
    /// `lease` is how long the node's presence counts survive it (`PRESENCE_LEASE`); the
    /// broker's metrics go to `hooks`.
    pub fn start(
        url: &str,
        node: NodeId,
        lease: Duration,
        mailboxes: Vec<Arc<Mailbox>>,
        hooks: BrokerHooks,
    ) -> std::io::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (out, queue) = bounded(QUEUE);
        let interest: Arc<Mutex<HashMap<Arc<str>, usize>>> = Arc::default();
        let stats = hooks;
        let control = node_channel(node);
        let requests: Arc<Requests> = Arc::default();
        std::thread::Builder::new()
            .name("redis-pub".into())
            .spawn({
                let publisher = Publisher {
                    client: client.clone(),
                    node,
                    lease,
                    control: control.clone(),
                    mailboxes: mailboxes.clone(),
                    stats: stats.clone(),
                    scripts: presence::Scripts::default(),
                    counts: Default::default(),
                    epoch: Default::default(),
                    resigned: Default::default(),
                    requests: requests.clone(),
                };
                move || publisher.run(queue)
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
                    requests: requests.clone(),
                    out: out.clone(),
                };
                move || subscriber.run()
            })?;
        Ok(Self {
            local: Local::new(mailboxes),
            node,
            out,
            interest,
            requests,
            stats,
        })
    }

    fn send(&self, o: Outgoing) -> bool {
        send(&self.out, &self.stats, o)
    }
}

/// Queues `o` for the publisher; a full queue drops it (counted).
fn send(out: &Sender<Outgoing>, stats: &BrokerHooks, o: Outgoing) -> bool {
    match out.try_send(o) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            stats.dropped.inc_by(1);
            false
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
        let record = match wire::encode(&event, wire::now_us()) {
            Ok(record) => record,
            Err(e) => {
                self.stats.dropped.inc_by(1);
                tracing::warn!(error = %e, "Event not sent to the other nodes");
                return;
            }
        };
        for room in &event.rooms {
            self.send(Outgoing::Publish {
                room: room.clone(),
                record: record.clone(),
            });
        }
    }

    fn api(&self, actions: &Arc<[Action]>) -> Option<Answer> {
        if self.connected() != Some(true) {
            return Some(Answer::failed(
                &self.requests,
                actions,
                ClusterError::Unavailable,
            ));
        }
        let (id, answer) = self.requests.open(actions);
        let sent = match wire::encode_request(self.node, id, actions) {
            Ok(record) => self.send(Outgoing::Request { id, record }),
            Err(e) => {
                tracing::warn!(error = %e, "Server API request not sent to the other nodes");
                false
            }
        };
        if !sent {
            self.requests.fail(id, ClusterError::Unavailable);
        }
        Some(answer)
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

    fn presence(&self, _from: usize, change: PresenceChange) {
        // Counted in Redis, across nodes; never by this node's workers.
        self.send(Outgoing::Presence(change));
    }

    fn stop(&self) {
        self.send(Outgoing::Resign);
    }

    fn connected(&self) -> Option<bool> {
        Some(self.stats.connected.get() == 1)
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

/// The publisher thread's state.
struct Publisher {
    client: redis::Client,
    node: NodeId,
    lease: Duration,
    control: String,
    mailboxes: Vec<Arc<Mailbox>>,
    stats: BrokerHooks,
    scripts: presence::Scripts,
    counts: std::cell::RefCell<presence::Local>,
    /// The epoch of the Redis data last seen (see [`presence::epoch`]).
    epoch: std::cell::RefCell<Option<String>>,
    /// The node is stopping and gave up its lease: do not renew it.
    resigned: std::cell::Cell<bool>,
    /// This node's server API requests, told how many nodes got them.
    requests: Arc<Requests>,
}

impl Publisher {
    /// Publishes what the workers queue, keeps the node's lease and reaps dead nodes, until
    /// the queue is gone.
    fn run(self, queue: Receiver<Outgoing>) {
        let mut con: Option<redis::Connection> = None;
        let mut failures = 0;
        let mut batch = Vec::with_capacity(BATCH);
        let beat = self.lease / 3;
        let mut next_beat = std::time::Instant::now();
        loop {
            let wait = next_beat.saturating_duration_since(std::time::Instant::now());
            match queue.recv_timeout(wait) {
                Ok(first) => batch.push(first),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            self.stats.queued.set(queue.len() as i64);
            // Counted locally whatever Redis does: registered again after a reconnect.
            for o in &batch {
                match o {
                    Outgoing::Presence(c) => {
                        self.counts.borrow_mut().count(&c.user, &c.chats, c.opened);
                    }
                    Outgoing::Reconnect => con = None,
                    _ => {}
                }
            }
            batch.retain(|o| !matches!(o, Outgoing::Reconnect));
            if con.is_none() {
                match self.connect() {
                    Ok(c) => {
                        con = Some(c);
                        failures = 0;
                    }
                    Err(e) => {
                        self.drop_all(&mut batch);
                        tracing::warn!(error = %e, "Redis unreachable: cross-node events dropped");
                        std::thread::sleep(backoff(failures));
                        failures += 1;
                        continue;
                    }
                }
            }
            let Some(c) = con.as_mut() else { continue };
            let mut result = self.send_batch(c, &mut batch);
            if result.is_ok() && std::time::Instant::now() >= next_beat {
                next_beat = std::time::Instant::now() + beat;
                result = self.beat(c);
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "Redis publish failed: reconnecting");
                con = None;
            }
        }
    }

    /// Drops what could not be sent: events counted, requests failed (their askers answer at
    /// once instead of waiting out their timeout).
    fn drop_all(&self, batch: &mut Vec<Outgoing>) {
        for o in batch.drain(..) {
            match o {
                Outgoing::Publish { .. } | Outgoing::Reply { .. } => {
                    self.stats.dropped.inc_by(1);
                }
                Outgoing::Request { id, .. } => self.requests.fail(id, ClusterError::Unavailable),
                Outgoing::Presence(c) => self.counts.borrow_mut().unsent(&c.user, &c.chats),
                Outgoing::Resync | Outgoing::Resign | Outgoing::Reconnect => {}
            }
        }
    }

    /// A new connection: the node's lease, then its presence counts as they are (Redis may
    /// have lost them, or missed changes), announcing what the node's users did meanwhile.
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let mut c = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        let epoch = presence::epoch(&mut c)?;
        // Same data as before, yet no longer registered: the others reaped this node while it
        // was cut off, and announced its users offline.
        let reaped = self.epoch.borrow().as_deref() == Some(epoch.as_str())
            && !self.resigned.get()
            && !presence::registered(&mut c, self.node)?;
        if !self.resigned.get() {
            presence::renew(&mut c, self.node, self.lease)?;
        }
        let moved = presence::restore(
            &mut c,
            &self.scripts,
            self.node,
            &mut self.counts.borrow_mut(),
            reaped,
        )?;
        if reaped {
            tracing::warn!(
                users = moved.len(),
                "This node was taken for dead while cut off from Redis: its users are announced again"
            );
        }
        for (user, chats, online) in moved {
            self.announce(&mut c, &user, chats, online)?;
        }
        *self.epoch.borrow_mut() = Some(epoch);
        self.stats.connects.inc_by(1);
        tracing::info!("Redis publisher connected");
        Ok(c)
    }

    /// Sends `batch` in order: publications pipelined, presence changes and requests one
    /// command each. After a failure, the rest of the batch is dropped ([`Self::drop_all`]).
    fn send_batch(
        &self,
        c: &mut redis::Connection,
        batch: &mut Vec<Outgoing>,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let mut records = 0;
        let mut channel = String::new();
        let mut queued = std::mem::take(batch).into_iter();
        while let Some(o) = queued.next() {
            let sent = self.send_one(c, &mut pipe, &mut records, &mut channel, o);
            if let Err(e) = sent {
                batch.extend(queued);
                self.drop_all(batch);
                return Err(e);
            }
        }
        self.flush(c, &mut pipe, &mut records)
    }

    /// Sends (or pipelines) one item of a batch.
    fn send_one(
        &self,
        c: &mut redis::Connection,
        pipe: &mut redis::Pipeline,
        records: &mut u64,
        channel: &mut String,
        o: Outgoing,
    ) -> redis::RedisResult<()> {
        match o {
            Outgoing::Publish { room, record } => {
                write_chat_channel(channel, &room);
                pipe.cmd("PUBLISH")
                    .arg(channel.as_str())
                    .arg(&record[..])
                    .ignore();
                *records += 1;
            }
            Outgoing::Reply { to, record } => {
                pipe.cmd("PUBLISH")
                    .arg(node_channel(to))
                    .arg(&record[..])
                    .ignore();
            }
            Outgoing::Request { id, record } => {
                // What was queued before it goes first; then how many nodes heard it.
                self.flush(c, pipe, records)?;
                let heard = redis::cmd("PUBLISH")
                    .arg(API_CHANNEL)
                    .arg(&record[..])
                    .query::<usize>(c);
                match heard {
                    Ok(n) => self.requests.expect(id, n),
                    Err(e) => {
                        self.requests.fail(id, ClusterError::Unavailable);
                        return Err(e);
                    }
                }
            }
            Outgoing::Resync => {
                pipe.cmd("PUBLISH").arg(&self.control).arg(RESYNC).ignore();
            }
            // Taken out of every batch before it is sent.
            Outgoing::Reconnect => {}
            Outgoing::Resign => {
                self.flush(c, pipe, records)?;
                self.resigned.set(true);
                presence::resign(c, self.node)?;
                tracing::info!("Presence lease given up: the other nodes take over");
            }
            Outgoing::Presence(change) => {
                // What was queued before it goes first: per-sender order.
                self.flush(c, pipe, records)?;
                let first_or_last = presence::change(
                    c,
                    &self.scripts,
                    self.node,
                    &change.user,
                    &change.chats,
                    change.opened,
                )
                .inspect_err(|_| self.counts.borrow_mut().unsent(&change.user, &change.chats))?;
                if first_or_last {
                    self.announce(c, &change.user, change.chats, change.opened)?;
                }
            }
        }
        Ok(())
    }

    fn flush(
        &self,
        c: &mut redis::Connection,
        pipe: &mut redis::Pipeline,
        records: &mut u64,
    ) -> redis::RedisResult<()> {
        if pipe.cmd_iter().next().is_none() {
            return Ok(());
        }
        let sent = std::mem::take(records);
        let result = pipe.query::<()>(c);
        *pipe = redis::pipe();
        match result {
            Ok(()) => {
                self.stats.published.inc_by(sent);
                Ok(())
            }
            Err(e) => {
                self.stats.dropped.inc_by(sent);
                Err(e)
            }
        }
    }

    /// `user:online` in `chats`: to this node's workers, and once to every other node.
    fn announce(
        &self,
        c: &mut redis::Connection,
        user: &Arc<str>,
        chats: Vec<Arc<str>>,
        online: bool,
    ) -> redis::RedisResult<()> {
        if chats.is_empty() {
            return Ok(());
        }
        tracing::debug!(user_id = %user, online, "Presence changed (cluster)");
        let frame = crate::protocol::Outbound::UserOnline {
            user_id: user,
            online,
        }
        .to_frame();
        let event = Arc::new(RoomEvent {
            rooms: chats,
            frame,
            origin: super::Origin {
                node: self.node,
                worker: 0,
            },
            exclude: None,
            kind: super::EventKind::Presence,
        });
        for mb in &self.mailboxes {
            mb.post(Envelope::Room(event.clone()));
        }
        let record = match wire::encode(&event, wire::now_us()) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, "Presence change not sent to the other nodes");
                return Ok(());
            }
        };
        redis::cmd("PUBLISH")
            .arg(PRESENCE_CHANNEL)
            .arg(&record[..])
            .query::<()>(c)?;
        self.stats.published.inc_by(1);
        Ok(())
    }

    /// Every third of the lease: renew this node's, and reap the nodes whose lapsed
    /// (announcing their users who have no connection left, exactly once cluster-wide).
    fn beat(&self, c: &mut redis::Connection) -> redis::RedisResult<()> {
        if !self.resigned.get() {
            presence::renew(c, self.node, self.lease)?;
        }
        for (user, chats) in presence::reap(c, &self.scripts, self.node)? {
            tracing::info!(user_id = %user, "A dead node's user went offline");
            self.announce(c, &user, chats, false)?;
        }
        Ok(())
    }
}

/// The subscriber thread's state.
struct Subscriber {
    client: redis::Client,
    node: NodeId,
    control: String,
    interest: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    mailboxes: Vec<Arc<Mailbox>>,
    stats: BrokerHooks,
    /// This node's server API requests, told the other nodes' answers.
    requests: Arc<Requests>,
    /// The publisher's queue, for this node's answers to other nodes' requests.
    out: Sender<Outgoing>,
}

impl Subscriber {
    /// Connects, subscribes, relays; after any failure, again (with backoff).
    fn run(self) {
        let mut failures = 0;
        // Set when a subscribed connection is lost; cleared only once a new one subscribed
        // and told the clients (attempts that fail while Redis is still down keep it).
        let mut lost = false;
        loop {
            match self.session(&mut lost) {
                Ok(()) => failures = 0,
                Err(e) => {
                    if self.stats.connected.set(0) == 1 {
                        lost = true;
                    }
                    send(&self.out, &self.stats, Outgoing::Reconnect);
                    self.stats.subscriptions.set(0);
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
    fn session(&self, recovering: &mut bool) -> redis::RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        self.stats.connects.inc_by(1);
        let mut ps = con.as_pubsub();
        ps.subscribe(&self.control)?;
        ps.subscribe(PRESENCE_CHANNEL)?;
        ps.subscribe(API_CHANNEL)?;
        let mut subscribed = HashSet::new();
        self.resync(&mut ps, &mut subscribed)?;
        self.stats.connected.set(1);
        self.stats.subscriptions.set(subscribed.len() as i64);
        tracing::info!(
            chats = subscribed.len(),
            recovering = *recovering,
            "Redis subscriber connected"
        );
        if std::mem::take(recovering) && !subscribed.is_empty() {
            let gaps: Arc<[Arc<str>]> = subscribed.iter().cloned().collect();
            for mb in &self.mailboxes {
                mb.post(Envelope::Resync(gaps.clone()));
            }
        }
        loop {
            let msg = ps.get_message()?;
            let channel = msg.get_channel_name();
            let record = Bytes::copy_from_slice(msg.get_payload_bytes());
            if channel == self.control {
                if record == RESYNC {
                    self.resync(&mut ps, &mut subscribed)?;
                } else {
                    self.answered(record);
                }
                continue;
            }
            if channel == API_CHANNEL {
                self.apply(record);
                continue;
            }
            match wire::decode(record) {
                Ok(r) if r.event.origin.node == self.node => {}
                Ok(r) => {
                    self.stats.received.inc();
                    let lag_us = wire::now_us().saturating_sub(r.sent_us);
                    self.stats.lag.observe(lag_us as f64 / 1e6);
                    let event = Arc::new(r.event);
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

    /// A server API request (of any node, this one included): this node's workers apply it,
    /// and the merged outcomes go back to the asker.
    fn apply(&self, record: Bytes) {
        let request = match wire::decode_request(record) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Unreadable server API request");
                return;
            }
        };
        let (id, node) = (request.id, self.node);
        if request.asker == node {
            let requests = self.requests.clone();
            fanout::post_all(&self.mailboxes, request.actions.into(), move |o| {
                requests.answer(id, node, o);
            });
            return;
        }
        let (out, stats, to) = (self.out.clone(), self.stats.clone(), request.asker);
        fanout::post_all(
            &self.mailboxes,
            request.actions.into(),
            move |o| match wire::encode_reply(id, node, &o) {
                Ok(record) => {
                    send(&out, &stats, Outgoing::Reply { to, record });
                }
                Err(e) => tracing::warn!(error = %e, "Server API answer not sent"),
            },
        );
    }

    /// Another node's answer to one of this node's requests.
    fn answered(&self, record: Bytes) {
        match wire::decode_reply(record) {
            Ok(r) => self.requests.answer(r.id, r.from, r.outcomes),
            Err(e) => tracing::warn!(error = %e, "Unreadable server API answer"),
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
        self.stats.subscriptions.set(subscribed.len() as i64);
        Ok(())
    }
}
