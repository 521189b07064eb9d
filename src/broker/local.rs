//! The in-process bus: every worker of this node, through their mailboxes.
//!
//! Guarantees: a published event is posted, as one shared `Arc`, to every worker of the node
//! but its origin; a presence change goes to the one worker that counts the user
//! ([`owner_of`]), the caller included, so each user's transitions are counted in one place
//! and in the order they were sent. Interest (join/leave) is not tracked: every worker gets
//! every event and filters by its own rooms, which costs one queue push per worker.

use std::sync::Arc;

use super::{Bus, Envelope, Mailbox, PresenceChange, RoomEvent};
use crate::core::presence::owner_of;

/// The in-process bus over the workers' mailboxes (indexed by worker id).
pub struct Local {
    mailboxes: Vec<Arc<Mailbox>>,
}

impl Local {
    /// A bus over `mailboxes`, by worker id.
    pub fn new(mailboxes: Vec<Arc<Mailbox>>) -> Self {
        Self { mailboxes }
    }
}

impl Bus for Local {
    fn publish(&self, event: Arc<RoomEvent>) {
        let origin = event.origin.worker;
        for (i, mb) in self.mailboxes.iter().enumerate() {
            if i != origin {
                mb.post(Envelope::Room(event.clone()));
            }
        }
    }

    fn join(&self, _worker: usize, _room: &Arc<str>) {}

    fn leave(&self, _worker: usize, _room: &Arc<str>) {}

    fn presence(&self, _from: usize, change: PresenceChange) {
        let owner = owner_of(&change.user, self.mailboxes.len());
        self.mailboxes[owner].post(Envelope::Presence(change));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{EventKind, NodeId, Origin};

    fn drained(mb: &Mailbox) -> Vec<Envelope> {
        let mut out = Vec::new();
        mb.take_now(&mut out);
        out
    }

    #[test]
    fn an_event_reaches_every_worker_but_its_origin_once() {
        let mbs: Vec<Arc<Mailbox>> = (0..3).map(|_| Arc::default()).collect();
        let bus = Local::new(mbs.clone());
        bus.publish(Arc::new(RoomEvent {
            rooms: vec!["c".into()],
            frame: bytes::Bytes::from_static(b"x"),
            origin: Origin {
                node: NodeId(7),
                worker: 1,
            },
            exclude: None,
            kind: EventKind::Message,
        }));
        let got: Vec<usize> = mbs.iter().map(|m| drained(m).len()).collect();
        assert_eq!(got, vec![1, 0, 1]);
    }

    #[test]
    fn presence_goes_to_the_owner_only_even_from_the_owner() {
        let mbs: Vec<Arc<Mailbox>> = (0..4).map(|_| Arc::default()).collect();
        let bus = Local::new(mbs.clone());
        for user in ["a", "b", "c", "d", "e"] {
            let owner = owner_of(user, 4);
            let change = PresenceChange {
                user: user.into(),
                chats: vec![],
                opened: true,
            };
            bus.presence(owner, change.clone());
            for (i, mb) in mbs.iter().enumerate() {
                let got = drained(mb);
                if i == owner {
                    assert!(matches!(&got[..], [Envelope::Presence(c)] if *c == change));
                } else {
                    assert!(got.is_empty());
                }
            }
        }
    }
}
