//! The runtime of a worker: its thread (a monoio runtime pinned to a core), its listeners,
//! the accept loop, the mailbox loop and the ticker.

use super::*;

use crate::config::IoDriver;

/// Longest pause of the ticker: the liveness beat the systemd watchdog reads.
const LIVENESS_BEAT: Duration = Duration::from_millis(100);
/// Shortest pause of the ticker: a deadline already past (or a burst of them) is handled in
/// the next pass, not in a busy loop.
const MIN_TICK: Duration = Duration::from_millis(1);
/// Stack of a worker thread (virtual; only touched pages count). Generous, as parsing and
/// serialisation recurse.
const WORKER_STACK: usize = 8 << 20;

async fn mailbox_loop(worker: Rc<Worker>) {
    let mailbox = worker.shared.mailboxes[worker.id].clone();
    let mut batch = Vec::new();
    loop {
        mailbox.recv_batch(&mut batch).await;
        for e in batch.drain(..) {
            worker.handle(e);
        }
    }
}

/// Wakes when the hub's next timer (typing expiry, heartbeat) or the next stall look is due,
/// and at least every [`LIVENESS_BEAT`] so the watchdog sees the loop alive.
async fn ticker(worker: Rc<Worker>) {
    let stall_period =
        (worker.config().flow.stall_timeout / u32::from(crate::core::stall::PASSES)).max(MIN_TICK);
    let mut next_stall_look = Instant::now() + stall_period;
    // Runs until the runtime ends (through the drain too, so the watchdog sees it alive).
    loop {
        worker.shared.liveness.tick(worker.id);
        let now = Instant::now();
        let wake = if worker.draining() {
            now + LIVENESS_BEAT
        } else {
            // Read each pass: a timer started since the last pass (a typing indicator) may be
            // due sooner than the last answer; one started during the pause waits at most a
            // beat, which is far below any timer's length.
            worker.hub.borrow().poll_timeout().min(next_stall_look)
        };
        let pause = wake
            .saturating_duration_since(now)
            .clamp(MIN_TICK, LIVENESS_BEAT);
        monoio::time::sleep(pause).await;
        if worker.draining() {
            continue;
        }
        let now = Instant::now();
        if now >= next_stall_look {
            next_stall_look = now + stall_period;
            worker.check_stalls(now);
        }
        worker.timers(now);
    }
}

/// Accepts connections on `listener` until the drain starts, serving each in a task of its own
/// with `serve` (`what` names the listener in logs).
pub async fn accept_loop<F, Fut>(
    worker: Rc<Worker>,
    listener: TcpListener,
    what: &'static str,
    serve: F,
) where
    F: Fn(Rc<Worker>, monoio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = worker.stop.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                monoio::spawn(serve(worker.clone(), stream, peer));
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on the error.
                tracing::warn!(worker = worker.id, listener = what, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Binds a listener on `addr` that every worker can bind too (`SO_REUSEPORT`); the first one
/// resolves port 0 for the others.
///
/// `TCP_NODELAY` is set here, once, instead of on every accepted socket: Linux copies it to
/// the sockets a listener accepts (checked by `accepted_sockets_inherit_nodelay`), one system
/// call per connection fewer.
pub fn bind_first(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts every worker thread. Worker 0 takes `first` (and `api_first`, the `API_PORT`
/// listener); the others bind the same addresses.
pub fn start(
    shared: Arc<Shared>,
    first: std::net::TcpListener,
    api_first: Option<std::net::TcpListener>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let addr = first.local_addr()?;
    let api_addr = api_first.as_ref().map(|l| l.local_addr()).transpose()?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut first = Some(first);
    let mut api_first = api_first;
    let mut handles = Vec::new();
    for id in 0..shared.workers() {
        let shared = shared.clone();
        let listeners = Listeners {
            ws: first.take(),
            ws_addr: addr,
            api: api_first.take(),
            api_addr,
        };
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        let handle = std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                if let Err(e) = run(id, shared.clone(), listeners) {
                    tracing::error!(worker = id, error = %e, "worker failed");
                    shared.shutdown();
                }
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// A worker's listeners: pre-bound (worker 0) or to bind at these addresses.
struct Listeners {
    ws: Option<std::net::TcpListener>,
    ws_addr: SocketAddr,
    api: Option<std::net::TcpListener>,
    api_addr: Option<SocketAddr>,
}

fn run(id: usize, shared: Arc<Shared>, listeners: Listeners) -> std::io::Result<()> {
    let mut rt: monoio::FusionRuntime<_, _> = match shared.config.listen.io_driver {
        IoDriver::IoUring => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()?,
        IoDriver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .into(),
    };
    let result = rt.block_on({
        let shared = shared.clone();
        async move {
            let listener = match listeners.ws {
                Some(l) => TcpListener::from_std(l)?,
                None => TcpListener::from_std(bind_first(listeners.ws_addr)?)?,
            };
            let api_listener = match (listeners.api, listeners.api_addr) {
                (Some(l), _) => Some(TcpListener::from_std(l)?),
                (None, Some(addr)) => Some(TcpListener::from_std(bind_first(addr)?)?),
                (None, None) => None,
            };
            let io_uring = !monoio::utils::is_legacy();
            tracing::info!(
                worker = id,
                io_uring,
                driver = if io_uring { "io_uring" } else { "epoll" },
                "Worker listening"
            );
            let worker = Rc::new(Worker::new(id, shared.clone()));
            shared.listening.fetch_add(1, Ordering::SeqCst);
            monoio::spawn(mailbox_loop(worker.clone()));
            monoio::spawn(ticker(worker.clone()));
            if let Some(api) = api_listener {
                monoio::spawn(accept_loop(
                    worker.clone(),
                    api,
                    "API",
                    crate::net::api::serve_own_port,
                ));
            }
            accept_loop(worker.clone(), listener, "WebSocket", connection::serve).await;
            worker.drain().await;
            tracing::debug!(worker = id, "Worker drained");
            Ok(())
        }
    });
    // Nobody reads this mailbox any more: let requests waiting on it know now.
    shared.mailboxes[id].close();
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = super::bind_first("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        listener.set_nonblocking(false).expect("blocking");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(
            accepted.nodelay().expect("getsockopt"),
            "TCP_NODELAY inherited"
        );
    }
}
