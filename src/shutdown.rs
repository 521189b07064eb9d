//! Signals: SIGTERM or SIGINT starts the drain on every worker; a second signal exits at once.
//!
//! The handler runs on its own thread (signal-hook's iterator), so nothing async-signal-unsafe
//! happens in signal context.
//!
//! Guarantees: the first signal calls the given `shutdown` once; any later one exits at once
//! with status 130.
//! Not guaranteed / not here: the drain itself (the workers'); that exit skips the drain and
//! destructors, so queued log lines may be lost; signals before [`install`] keep their default
//! action, and only SIGTERM and SIGINT are handled.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Starts the signal thread; the first signal calls `shutdown` (which starts the drain).
pub fn install(shutdown: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            for sig in signals.forever() {
                received += 1;
                if received > 1 {
                    tracing::warn!(signal = sig, "Second signal: exiting now");
                    std::process::exit(130);
                }
                tracing::info!(signal = sig, "Shutdown signal received, draining");
                shutdown();
            }
        })?;
    Ok(())
}
