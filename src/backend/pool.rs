//! A small pool of blocking threads for backend calls.
//!
//! Jobs go over a bounded MPMC channel; each thread owns whatever per-thread state the backend
//! gives it (a keep-alive HTTP agent). A full queue rejects the job at once instead of growing
//! without bound. Dropping the pool lets queued jobs finish and then stops the threads.
//!
//! Guarantees: at least one thread; at most `threads` x 1024 jobs queued; [`Pool::submit`] never
//! blocks (a full or stopped pool hands the job back); a job runs at most once, on one thread.
//! Not guaranteed / not here: no order between threads, no timeout or cancellation of a running
//! job (one that panics is caught: its caller gets no answer, the thread goes on), and dropping
//! the pool does not join them.

use crossbeam_channel::{bounded, Sender, TrySendError};

fn name_of_thread() -> String {
    std::thread::current().name().unwrap_or("pool").to_string()
}

/// A job run on a pool thread with that thread's state.
pub type Job<S> = Box<dyn FnOnce(&S) + Send>;

/// Jobs queued beyond the running ones, per thread.
const QUEUE_PER_THREAD: usize = 1024;

/// A fixed set of threads running [`Job`]s.
pub struct Pool<S> {
    tx: Sender<Job<S>>,
}

impl<S: 'static> Pool<S> {
    /// Starts `threads` threads named `name-<i>`, each with state made by `make_state`.
    pub fn new(
        name: &str,
        threads: usize,
        make_state: impl Fn() -> S + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded::<Job<S>>(threads.max(1) * QUEUE_PER_THREAD);
        let make_state = std::sync::Arc::new(make_state);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let make_state = make_state.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let state = make_state();
                    while let Ok(job) = rx.recv() {
                        // A panicking job (a bug) must not take its thread with it: the pool
                        // would shrink for good. Its caller's reply is dropped unanswered, which
                        // the caller sees as the backend stopping (INTERNAL_ERROR).
                        let run = std::panic::AssertUnwindSafe(|| job(&state));
                        if std::panic::catch_unwind(run).is_err() {
                            tracing::error!(pool = %name_of_thread(), "backend job panicked");
                        }
                    }
                })?;
        }
        Ok(Self { tx })
    }

    /// Queues a job; gives it back if the queue is full or the pool stopped.
    pub fn submit(&self, job: Job<S>) -> Result<(), Job<S>> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_does_not_take_its_thread() {
        let pool = Pool::new("p", 1, || ()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let lost = tx.clone();
        assert!(pool
            .submit(Box::new(move |_: &()| {
                let _keep = &lost;
                panic!("bug in a job");
            }))
            .is_ok());
        assert!(pool
            .submit(Box::new(move |_: &()| tx.send(1).unwrap()))
            .is_ok());
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(got, Ok(1), "the only thread must still run jobs");
    }

    #[test]
    fn runs_jobs_with_thread_state() {
        let pool = Pool::new("t", 2, || 7u32).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..10u32 {
            let tx = tx.clone();
            assert!(pool
                .submit(Box::new(move |s: &u32| tx.send(i * s).unwrap()))
                .is_ok());
        }
        let mut got: Vec<u32> = (0..10).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..10).map(|i| i * 7).collect::<Vec<_>>());
    }
}
