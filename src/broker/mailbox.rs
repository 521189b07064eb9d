//! Cross-worker delivery: a lock-free queue per worker with at most one wake-up per batch.
//!
//! A sender pushes onto the receiver's `SegQueue` and wakes its runtime only if no wake-up is
//! already pending; the receiver drains everything queued before it sleeps again. A burst of
//! events therefore costs one cross-thread wake-up, not one per event (a wake-up round trip
//! between monoio threads is tens of microseconds).
//!
//! Guarantees: [`Mailbox::post`] never blocks or fails; a post racing the owner going to sleep
//! still wakes it; once [`Mailbox::close`]d (the owner ended) nothing queued stays queued; a
//! batch comes out in queue (FIFO) order.
//! Not guaranteed / not here: the queue is unbounded (no back-pressure); one receiving task per
//! mailbox (one `AtomicWaker`); `rooms` and `exclude` are applied by the receiving worker.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;

use super::{PresenceChange, RoomEvent};

/// What workers send each other.
#[derive(Debug)]
pub enum Envelope {
    /// Deliver to local members.
    Room(Arc<RoomEvent>),
    /// A user's connection opened or closed; sent to the user's presence owner.
    Presence(PresenceChange),
    /// Server API actions to apply to local connections, in order; the outcomes (one per
    /// action) go to `share`.
    Api {
        /// The actions.
        actions: Arc<[crate::api::Action]>,
        /// This worker's part of the answer.
        share: super::fanout::Share,
    },
    /// Events of these chats may have been lost on the way between nodes: tell their local
    /// members to recover (`chat:resync`).
    Resync(Arc<[Arc<str>]>),
    /// Start draining.
    Shutdown,
}

/// One worker's inbox.
#[derive(Default)]
pub struct Mailbox {
    queue: SegQueue<Envelope>,
    waker: AtomicWaker,
    scheduled: AtomicBool,
    closed: AtomicBool,
}

impl Mailbox {
    /// Queues an envelope, waking the owner unless a wake-up is already pending.
    pub fn post(&self, e: Envelope) {
        self.queue.push(e);
        if self.closed.load(Ordering::SeqCst) {
            // The owner is gone: drop what it will never read (a server API request waiting
            // on a reply learns at once that nobody is there).
            while self.queue.pop().is_some() {}
            return;
        }
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Marks the owner as gone (its runtime ended) and drops everything queued. Posts after
    /// this are dropped too.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        while self.queue.pop().is_some() {}
    }

    /// Waits for envelopes and returns everything queued so far, in order.
    pub async fn recv_batch(&self, out: &mut Vec<Envelope>) {
        poll_fn(|cx| {
            self.waker.register(cx.waker());
            if !self.queue.is_empty() {
                return Poll::Ready(());
            }
            // Arm the wake-up, then look again: a push between the check and the store would
            // otherwise see `scheduled == true` and skip the wake.
            self.scheduled.store(false, Ordering::SeqCst);
            if self.queue.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        while let Some(e) = self.queue.pop() {
            out.push(e);
        }
    }
}

impl Mailbox {
    /// One mailbox per worker, by worker id.
    pub fn for_workers(workers: usize) -> Vec<Arc<Mailbox>> {
        (0..workers).map(|_| Arc::default()).collect()
    }

    /// Takes everything queued now, without waiting (the drain's last delivery pass).
    pub fn take_now(&self, out: &mut Vec<Envelope>) {
        while let Some(e) = self.queue.pop() {
            out.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_request(
        mb: &Arc<Mailbox>,
    ) -> futures_channel::oneshot::Receiver<Vec<crate::api::Outcome>> {
        let (reply, rx) = futures_channel::oneshot::channel();
        super::super::fanout::post_all(std::slice::from_ref(mb), Vec::new().into(), move |o| {
            let _ = reply.send(o);
        });
        rx
    }

    #[test]
    fn a_closed_mailbox_drops_what_it_holds_and_what_comes_later() {
        let mb = Arc::new(Mailbox::default());
        let mut queued = api_request(&mb);
        assert_eq!(
            queued.try_recv(),
            Ok(None),
            "waiting while the owner may still read"
        );
        mb.close();
        assert_eq!(
            queued.try_recv(),
            Ok(Some(Vec::new())),
            "the request learns at once that nobody is there to act"
        );
        let mut late = api_request(&mb);
        assert_eq!(
            late.try_recv(),
            Ok(Some(Vec::new())),
            "a post after close is dropped at once"
        );
        let mut out = Vec::new();
        mb.take_now(&mut out);
        assert!(out.is_empty());
    }
}
