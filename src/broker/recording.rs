//! A bus that only records what it is given: the test double for code that publishes.
//!
//! Guarantees: every call is recorded in order, and nothing is delivered anywhere.

use std::sync::{Arc, Mutex};

use super::{Bus, PresenceChange, RoomEvent};

/// One call on the bus.
#[derive(Debug, Clone)]
pub enum Record {
    /// [`Bus::publish`].
    Publish(Arc<RoomEvent>),
    /// [`Bus::join`].
    Join(usize, Arc<str>),
    /// [`Bus::leave`].
    Leave(usize, Arc<str>),
    /// [`Bus::presence`].
    Presence(usize, PresenceChange),
}

/// Records every call; [`Recording::take`] hands them over.
#[derive(Debug, Default)]
pub struct Recording {
    calls: Mutex<Vec<Record>>,
}

impl Recording {
    /// The calls so far, oldest first; the record starts again empty.
    pub fn take(&self) -> Vec<Record> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn push(&self, r: Record) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
}

impl Bus for Recording {
    fn publish(&self, event: Arc<RoomEvent>) {
        self.push(Record::Publish(event));
    }

    fn join(&self, worker: usize, room: &Arc<str>) {
        self.push(Record::Join(worker, room.clone()));
    }

    fn leave(&self, worker: usize, room: &Arc<str>) {
        self.push(Record::Leave(worker, room.clone()));
    }

    fn presence(&self, from: usize, change: PresenceChange) {
        self.push(Record::Presence(from, change));
    }
}

impl Bus for Arc<Recording> {
    fn publish(&self, event: Arc<RoomEvent>) {
        (**self).publish(event);
    }

    fn join(&self, worker: usize, room: &Arc<str>) {
        (**self).join(worker, room);
    }

    fn leave(&self, worker: usize, room: &Arc<str>) {
        (**self).leave(worker, room);
    }

    fn presence(&self, from: usize, change: PresenceChange) {
        (**self).presence(from, change);
    }
}
