//! The server API everywhere: one request applied by every worker (of every node), the
//! outcomes merged into one answer.
//!
//! On one node, a request goes to every worker's mailbox as an [`Envelope::Api`] carrying a
//! [`Share`]; each worker applies the actions to its own connections and hands its outcomes
//! in. When the node's last share is in, the merged outcomes go to the node's `done`. A share
//! that is dropped unanswered (its worker already ended, so its mailbox dropped the request)
//! counts as a worker that found nothing to act on, so a node always answers.
//!
//! Across nodes (see `redis`), the asking node publishes the request once on a channel every
//! node hears; Redis says how many nodes got it. Each node applies it as above and sends its
//! merged outcomes back; [`Requests`] collects them on the asking node until every node that
//! got the request answered, then completes the [`Answer`].
//!
//! Guarantees: every worker applies requests in the order they were posted (one poster at a
//! time: a process-wide lock on one node, the single subscriber thread across nodes, which
//! hears requests in the one order Redis published them); an answer merges each node's
//! outcomes at most once. Not guaranteed: a node that did not get the request (its subscriber
//! was reconnecting) is not waited for and its connections are not acted on; the asker bounds
//! its wait (the caller's timeout), after which the actions may be partly applied.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_channel::oneshot;

use super::{Envelope, Mailbox, NodeId};
use crate::api::{Action, Outcome};

/// Where a node's merged outcomes go.
type Done = Box<dyn FnOnce(Vec<Outcome>) + Send>;

/// One node's request in flight: shares still out and what came back so far.
struct Gather {
    state: Mutex<Collected>,
}

struct Collected {
    remaining: usize,
    outcomes: Vec<Outcome>,
    done: Option<Done>,
}

impl Gather {
    fn give(&self, outcomes: Option<Vec<Outcome>>) {
        let finished = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for (mine, theirs) in s.outcomes.iter_mut().zip(outcomes.into_iter().flatten()) {
                mine.merge(theirs);
            }
            s.remaining = s.remaining.saturating_sub(1);
            (s.remaining == 0).then(|| (s.done.take(), std::mem::take(&mut s.outcomes)))
        };
        // Outside the lock: `done` may publish or wake a waiting worker.
        if let Some((Some(done), outcomes)) = finished {
            done(outcomes);
        }
    }
}

/// One worker's part of a request: give it the worker's outcomes.
#[derive(Debug)]
pub struct Share(Option<Arc<Gather>>);

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gather")
    }
}

impl Share {
    /// This worker's outcomes, one per action.
    pub fn give(mut self, outcomes: Vec<Outcome>) {
        if let Some(g) = self.0.take() {
            g.give(Some(outcomes));
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            g.give(None);
        }
    }
}

/// Posts `actions` to every mailbox; once every worker answered, `done` gets the outcomes
/// merged (one per action; nothing found is a zero count or an empty presence).
///
/// The caller keeps posts in one order across callers (see the module doc).
pub fn post_all(
    mailboxes: &[Arc<Mailbox>],
    actions: Arc<[Action]>,
    done: impl FnOnce(Vec<Outcome>) + Send + 'static,
) {
    let gather = Arc::new(Gather {
        state: Mutex::new(Collected {
            remaining: mailboxes.len(),
            outcomes: actions.iter().map(Action::nothing).collect(),
            done: Some(Box::new(done)),
        }),
    });
    if mailboxes.is_empty() {
        // Nobody to ask: the answer is "nothing found", now.
        gather.give(None);
        return;
    }
    for mb in mailboxes {
        mb.post(Envelope::Api {
            actions: actions.clone(),
            share: Share(Some(gather.clone())),
        });
    }
}

/// Why a request across nodes got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The request could not be published (Redis unreachable, or the broker's queue full).
    #[error("the broker could not reach the other nodes")]
    Unavailable,
}

/// A request this node asked every node to apply, waiting for their answers.
struct Waiting {
    /// How many nodes got it (from `PUBLISH`), once known.
    expected: Option<usize>,
    answered: HashSet<NodeId>,
    outcomes: Vec<Outcome>,
    tx: Option<oneshot::Sender<Result<Vec<Outcome>, ClusterError>>>,
}

impl Waiting {
    /// Completes the request if every node that got it answered.
    fn complete_if_done(&mut self) -> bool {
        match self.expected {
            Some(n) if self.answered.len() >= n => {
                if let Some(tx) = self.tx.take() {
                    let _ = tx.send(Ok(std::mem::take(&mut self.outcomes)));
                }
                true
            }
            _ => false,
        }
    }
}

/// The requests this node asked the cluster to apply and is waiting on, by id.
#[derive(Default)]
pub struct Requests {
    next: AtomicU64,
    table: Mutex<HashMap<u64, Waiting>>,
}

impl Requests {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new request for `actions`: its id (for the record) and its answer.
    pub fn open(self: &Arc<Self>, actions: &[Action]) -> (u64, Answer) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.table().insert(
            id,
            Waiting {
                expected: None,
                answered: HashSet::new(),
                outcomes: actions.iter().map(Action::nothing).collect(),
                tx: Some(tx),
            },
        );
        let answer = Answer {
            rx,
            requests: self.clone(),
            id,
        };
        (id, answer)
    }

    /// `n` nodes got request `id` (what `PUBLISH` returned).
    pub fn expect(&self, id: u64, n: usize) {
        let mut table = self.table();
        if let Some(w) = table.get_mut(&id) {
            if n == 0 {
                // Not even this node heard it: its own subscriber is not connected.
                if let Some(tx) = w.tx.take() {
                    let _ = tx.send(Err(ClusterError::Unavailable));
                }
                table.remove(&id);
                return;
            }
            w.expected = Some(n);
            if w.complete_if_done() {
                table.remove(&id);
            }
        }
    }

    /// Node `from` applied request `id` with `outcomes`. A second answer from the same node,
    /// or one for a request no longer waited on, is ignored.
    pub fn answer(&self, id: u64, from: NodeId, outcomes: Vec<Outcome>) {
        let mut table = self.table();
        if let Some(w) = table.get_mut(&id) {
            if !w.answered.insert(from) {
                return;
            }
            for (mine, theirs) in w.outcomes.iter_mut().zip(outcomes) {
                mine.merge(theirs);
            }
            if w.complete_if_done() {
                table.remove(&id);
            }
        }
    }

    /// Request `id` could not be sent.
    pub fn fail(&self, id: u64, why: ClusterError) {
        if let Some(mut w) = self.table().remove(&id) {
            if let Some(tx) = w.tx.take() {
                let _ = tx.send(Err(why));
            }
        }
    }

    /// Requests still waiting.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.table().len()
    }
}

/// The merged outcomes of a request across nodes, once every node that got it answered.
/// Dropping it (a caller that gave up) forgets the request.
pub struct Answer {
    rx: oneshot::Receiver<Result<Vec<Outcome>, ClusterError>>,
    requests: Arc<Requests>,
    id: u64,
}

impl Answer {
    /// An answer that is already a failure.
    pub fn failed(requests: &Arc<Requests>, actions: &[Action], why: ClusterError) -> Answer {
        let (id, answer) = requests.open(actions);
        requests.fail(id, why);
        answer
    }
}

impl Future for Answer {
    type Output = Result<Vec<Outcome>, ClusterError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClusterError::Unavailable)))
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.requests.table().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(chat: &str) -> Action {
        Action::Presence { chat: chat.into() }
    }

    fn count(o: &Outcome) -> usize {
        match o {
            Outcome::Count(n) => *n,
            Outcome::Presence(p) => p.values().sum(),
        }
    }

    fn ready(answer: &mut Answer) -> Option<Result<Vec<Outcome>, ClusterError>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match Pin::new(answer).poll(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_node_answers_once_every_share_is_in_or_dropped() {
        let mailboxes: Vec<Arc<Mailbox>> = (0..3).map(|_| Arc::default()).collect();
        let (tx, mut rx) = oneshot::channel();
        let actions: Arc<[Action]> = vec![presence("c")].into();
        post_all(&mailboxes, actions, move |o| {
            let _ = tx.send(o);
        });
        let mut shares = Vec::new();
        for mb in &mailboxes {
            let mut batch = Vec::new();
            mb.take_now(&mut batch);
            for e in batch {
                if let Envelope::Api { share, .. } = e {
                    shares.push(share);
                }
            }
        }
        assert_eq!(shares.len(), 3);
        let mut users = HashMap::new();
        users.insert(Arc::<str>::from("u1"), 2);
        shares
            .remove(0)
            .give(vec![Outcome::Presence(users.clone())]);
        shares.remove(0).give(vec![Outcome::Presence(users)]);
        assert_eq!(
            rx.try_recv().expect("not canceled"),
            None,
            "one share is out"
        );
        drop(shares); // the third worker ended without answering
        let merged = rx.try_recv().expect("answered").expect("answered");
        assert_eq!(count(&merged[0]), 4);
    }

    #[test]
    fn an_answer_waits_for_every_node_publish_counted_and_ignores_repeats() {
        let requests = Arc::new(Requests::default());
        let actions = vec![Action::Publish {
            chat: "c".into(),
            message_id: "m".into(),
            frame: bytes::Bytes::new(),
        }];
        let (id, mut answer) = requests.open(&actions);
        // Answers may come before PUBLISH says how many nodes got the request.
        requests.answer(id, NodeId(1), vec![Outcome::Count(2)]);
        requests.answer(id, NodeId(1), vec![Outcome::Count(2)]);
        assert!(ready(&mut answer).is_none());
        requests.expect(id, 2);
        assert!(ready(&mut answer).is_none(), "node 2 has not answered");
        requests.answer(id, NodeId(2), vec![Outcome::Count(3)]);
        let merged = ready(&mut answer).expect("done").expect("ok");
        assert_eq!(count(&merged[0]), 5, "node 1 counted once");
        assert_eq!(requests.waiting(), 0);
    }

    #[test]
    fn a_request_nobody_heard_or_that_could_not_be_sent_fails_and_a_dropped_one_is_forgotten() {
        let requests = Arc::new(Requests::default());
        let actions = vec![presence("c")];
        let (id, mut answer) = requests.open(&actions);
        requests.expect(id, 0);
        assert_eq!(ready(&mut answer), Some(Err(ClusterError::Unavailable)));
        let mut failed = Answer::failed(&requests, &actions, ClusterError::Unavailable);
        assert_eq!(ready(&mut failed), Some(Err(ClusterError::Unavailable)));
        let (_, answer) = requests.open(&actions);
        assert_eq!(requests.waiting(), 1);
        drop(answer);
        assert_eq!(
            requests.waiting(),
            0,
            "a caller that gave up leaves nothing behind"
        );
    }
}
