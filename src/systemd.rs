//! systemd integration (`Type=notify`): `READY=1` once every worker listens, `STOPPING=1` when
//! the drain starts, and `WATCHDOG=1` every half `WATCHDOG_USEC` — but only while every
//! worker's loop has ticked recently, so a wedged worker makes systemd restart the service.
//!
//! Everything is a no-op without `NOTIFY_SOCKET` (not under systemd). The watchdog follows
//! sd_watchdog_enabled(3): enabled by `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another
//! process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// When each worker's loop last ticked, in milliseconds since start-up.
pub struct Liveness {
    start: Instant,
    ticks: Vec<AtomicU64>,
}

impl Liveness {
    /// For `workers` workers, none of which has ticked yet.
    pub fn new(workers: usize) -> Self {
        Self {
            start: Instant::now(),
            ticks: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records that `worker`'s loop is running.
    pub fn tick(&self, worker: usize) {
        let ms = self.start.elapsed().as_millis() as u64;
        if let Some(t) = self.ticks.get(worker) {
            t.store(ms.max(1), Ordering::Relaxed);
        }
    }

    /// Whether every worker ticked within `window`.
    pub fn all_alive(&self, window: Duration) -> bool {
        let now = self.start.elapsed().as_millis() as u64;
        let window = window.as_millis() as u64;
        self.ticks.iter().all(|t| {
            let last = t.load(Ordering::Relaxed);
            last > 0 && now.saturating_sub(last) <= window
        })
    }
}

fn notify(state: NotifyState<'_>) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, &[state]) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// `READY=1`.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// `STOPPING=1`.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

/// The watchdog interval systemd asked for, per sd_watchdog_enabled(3).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC")
        .ok()?
        .parse()
        .ok()
        .filter(|u| *u > 0)?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Starts the watchdog thread if systemd asked for one; it reads only the workers' `liveness`.
pub fn start_watchdog(liveness: Arc<Liveness>) -> std::io::Result<()> {
    let Some(interval) = watchdog_interval() else {
        return Ok(());
    };
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(());
    }
    let period = interval / 2;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            if liveness.all_alive(interval) {
                notify(NotifyState::Watchdog);
            } else {
                tracing::error!("a worker loop is stalled; withholding WATCHDOG=1");
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_alive_needs_every_worker_recently() {
        let l = Liveness::new(2);
        assert!(!l.all_alive(Duration::from_secs(1)));
        l.tick(0);
        assert!(!l.all_alive(Duration::from_secs(1)));
        l.tick(1);
        assert!(l.all_alive(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!l.all_alive(Duration::from_millis(10)));
    }
}
