//! The broker seam: the only way a room event or a presence change leaves the worker that
//! caused it.
//!
//! A worker delivers a room event to its own members itself, then hands the same shared
//! [`RoomEvent`] to the [`Bus`], which brings it to every other worker of this node (and, with
//! a multi-node broker, to the other nodes). Presence changes go through the bus too, to the
//! one place that counts the user's connections.
//!
//! Every event names its origin (node, worker) and, for typing, the one connection it must not
//! reach, by node, worker and slot: an event that comes back from another node is never
//! delivered twice on the node that published it, and the exclusion never hits a connection
//! that merely has the same slot number elsewhere.
//!
//! Guarantees: [`Bus::publish`] never blocks; events from one worker reach another worker in
//! the order they were published. Not guaranteed: order between events of different origins;
//! delivery to workers that already ended.
//!
//! - [`mailbox`]: a worker's lock-free inbox, one wake-up per batch.
//! - [`local`]: the in-process bus over the workers' mailboxes.
//! - [`fanout`]: the server API applied by every worker (and node), outcomes merged.
//! - [`recording`]: a bus that records its calls, the test double for publishers.
//! - [`redis`]: the multi-node bus over Redis PUB/SUB; [`wire`]: its record format;
//!   [`presence`]: presence counted across nodes, with leases.

pub mod fanout;
pub mod local;
pub mod mailbox;
pub mod presence;
pub mod recording;
pub mod redis;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;

pub use crate::core::event::{Class, EventKind};
pub use crate::core::hub::PresenceChange;
pub use local::Local;
pub use mailbox::{Envelope, Mailbox};

/// Which gateway process an event comes from: random per process unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A random id for this process.
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process; hashing the pid and the time on top
        // keeps two processes started in the same instant apart.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        Self(h.finish())
    }
}

impl NodeId {
    /// The id of a node named `name` (`NODE_ID`), stable across starts.
    pub fn named(name: &str) -> Self {
        Self(crate::core::presence::stable_hash(name))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where an event was published: a worker of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The node.
    pub node: NodeId,
    /// The worker on that node.
    pub worker: usize,
}

/// One connection anywhere in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The worker (and node) that holds it.
    pub at: Origin,
    /// Its slot in that worker's table.
    pub slot: usize,
}

impl ConnId {
    /// The slot, if the connection lives on `here`.
    pub fn slot_on(&self, here: Origin) -> Option<usize> {
        (self.at == here).then_some(self.slot)
    }
}

/// An event for every connection in some chats.
#[derive(Debug)]
pub struct RoomEvent {
    /// Target chats; a connection in several of them gets the event once.
    pub rooms: Vec<Arc<str>>,
    /// The encoded frame, shared by all deliveries.
    pub frame: Bytes,
    /// Who published it.
    pub origin: Origin,
    /// A connection that must not receive it (the sender of a typing event).
    pub exclude: Option<ConnId>,
    /// What it is (decides whether it may be dropped for a client that is behind).
    pub kind: EventKind,
}

/// Where room events and presence changes go beyond the worker that caused them.
pub trait Bus: Send + Sync {
    /// Brings `event` to every worker that may have members of its rooms, except its origin
    /// (which delivered it already).
    fn publish(&self, event: Arc<RoomEvent>);
    /// `worker` has its first member of `room`: events of the room must reach it.
    fn join(&self, worker: usize, room: &Arc<str>);
    /// `worker` lost its last member of `room`.
    fn leave(&self, worker: usize, room: &Arc<str>);
    /// Brings a presence change to the user's owner (possibly `from` itself).
    fn presence(&self, from: usize, change: PresenceChange);
    /// The node is stopping: its part in the cluster can end now (a multi-node bus gives up
    /// the node's presence lease, so the others announce its users offline at their next
    /// look instead of after the lease).
    fn stop(&self) {}
    /// Has every node (this one included) apply server API `actions` and answers with their
    /// merged outcomes; `None` for a bus with no other nodes (the caller has its own workers
    /// apply them, see [`fanout::post_all`]).
    fn api(&self, _actions: &Arc<[crate::api::Action]>) -> Option<fanout::Answer> {
        None
    }
    /// Whether the bus reaches the other nodes; `None` for a bus with no other nodes.
    fn connected(&self) -> Option<bool> {
        None
    }
}
