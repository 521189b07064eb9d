//! Admission: the process-wide connection caps (`MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_IP`)
//! and the count of live tasks the drain waits for.

use super::*;

/// Process-wide connection counts. Touched on connect and disconnect only, never per message.
#[derive(Default)]
pub struct ConnectionCounts {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections over the caps being read for a health probe (`connection::serve_refused`).
    pub probes: AtomicUsize,
    /// Open connections on `API_PORT` (`net::api`).
    pub api: AtomicUsize,
}

impl ConnectionCounts {
    /// Open connections in the process.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Counts a live connection task for the drain; decrements when dropped.
pub struct TaskGuard {
    worker: Rc<Worker>,
    ip: Option<IpAddr>,
}

impl TaskGuard {
    /// The worker the connection was admitted to.
    pub fn worker(&self) -> &Rc<Worker> {
        &self.worker
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let w = &self.worker;
        w.tasks.set(w.tasks.get() - 1);
        w.shared.counts.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = w
                .shared
                .counts
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A task the drain waits for; see [`Worker::track_task`].
pub struct TaskCount(Rc<Worker>);

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.tasks.set(self.0.tasks.get() - 1);
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `MAX_CONNECTIONS` reached.
    #[error("too many connections")]
    ProcessFull,
    /// `MAX_CONNECTIONS_PER_IP` reached for this address.
    #[error("too many connections from this address")]
    AddressFull,
}

impl Worker {
    /// Marks a connection task as live until the guard drops (the drain waits for it).
    /// Admits a new connection from `ip` under the connection caps; the guard releases it.
    pub fn admit(self: &Rc<Self>, ip: Option<IpAddr>) -> Result<TaskGuard, Refused> {
        let cfg = self.config();
        let counts = &self.shared.counts;
        if counts.open.fetch_add(1, Ordering::Relaxed) >= cfg.listen.max_connections {
            counts.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::ProcessFull);
        }
        let ip = ip.filter(|_| cfg.listen.max_connections_per_ip > 0);
        if let Some(ip) = ip {
            let mut per_ip = counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= cfg.listen.max_connections_per_ip {
                drop(per_ip);
                counts.open.fetch_sub(1, Ordering::Relaxed);
                return Err(Refused::AddressFull);
            }
            *n += 1;
        }
        self.tasks.set(self.tasks.get() + 1);
        Ok(TaskGuard {
            worker: self.clone(),
            ip,
        })
    }

    /// Counts a task the drain must wait for (a server API request on `API_PORT`) until the
    /// guard drops. Not subject to the connection caps.
    pub fn track_task(self: &Rc<Self>) -> TaskCount {
        self.tasks.set(self.tasks.get() + 1);
        TaskCount(self.clone())
    }
}
