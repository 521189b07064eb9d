//! The drain (SIGTERM/SIGINT): stop accepting and reading, finish the work already accepted
//! (bounded by `SHUTDOWN_TIMEOUT`, raised to the longest REST call), then `SERVER_SHUTDOWN`
//! and close 1001 in jittered batches over `DRAIN_WINDOW`.

use super::*;

/// Most batches the drain closes connections in.
const DRAIN_BATCHES: usize = 10;

impl Worker {
    pub(super) async fn drain(&self) {
        let cfg = self.config();
        let deadline = Instant::now() + cfg.drain.wait;
        for (_, m) in self.hub.borrow().iter() {
            m.io.interrupt();
        }
        // Every connection finishes what it already read (answers, deliveries, backend calls)
        // and parks; then nobody can start new work.
        while (self.parked.get() < self.connections() || self.inflight.get() > 0)
            && Instant::now() < deadline
        {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then wait for every other worker to get there too: until then one of them may still
        // publish a message to chats that have members here.
        self.shared.settled.fetch_add(1, Ordering::AcqRel);
        while self.shared.settled.load(Ordering::Acquire) < self.shared.workers()
            && Instant::now() < deadline
        {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        // Everything they published before settling is queued here now: deliver it before
        // the closes below.
        let mut pending = Vec::new();
        self.shared.mailboxes[self.id].take_now(&mut pending);
        for e in pending {
            self.handle(e);
        }
        // Close in jittered batches over DRAIN_WINDOW, so clients do not all reconnect (to the
        // next instance) at the same instant.
        let slots: Vec<usize> = self.hub.borrow().iter().map(|(slot, _)| slot).collect();
        let batches = slots.len().clamp(1, DRAIN_BATCHES);
        let per_batch = slots.len().div_ceil(batches).max(1);
        let pause = cfg.drain.window / batches as u32;
        let notice = error_frame(ErrorCode::ServerShutdown, "Server is shutting down");
        for (i, batch) in slots.chunks(per_batch).enumerate() {
            if i > 0 && !pause.is_zero() {
                let jitter = rand::random::<f64>() + 0.5; // 0.5x .. 1.5x
                monoio::time::sleep(pause.mul_f64(jitter)).await;
            }
            let hub = self.hub.borrow();
            for slot in batch {
                if let Some(m) = hub.get(*slot) {
                    m.io.push(&notice);
                    self.shared.metrics.closed(CloseCode::GoingAway);
                    m.io.close(CloseCode::GoingAway);
                }
            }
        }
        // Connection tasks end after their close handshake (or its linger); their writers
        // must finish before the runtime is dropped, or queued frames are lost.
        let deadline = Instant::now() + CLOSE_GRACE;
        while self.tasks.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A connection finished its accepted work during the drain and waits to be closed.
    pub fn park(&self) {
        self.parked.set(self.parked.get() + 1);
    }
}
