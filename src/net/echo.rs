//! The conformance echo (`socket-server echo`): the production handshake, frame loop and
//! outbox, with chat handling replaced by "send every message back". It exists so the
//! Autobahn|Testsuite can test the server's WebSocket layer itself, with raised size limits
//! (section 9 sends messages of up to 16 MiB and 65,536 fragments), without touching the
//! production defaults. No authentication, no rooms; loopback use only.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::TcpListener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handshake::{self, MAX_HEAD};
use super::outbox::Outbox;
use super::reader::{finish, linger, read_loop, End, Handler, Limits};
use super::split::{Input, Socket};
use crate::protocol::frame::{control_frame, Message};
use crate::protocol::CloseCode;

/// Default message size limit of the echo, in bytes (Autobahn section 9 needs 16 MiB).
pub const ECHO_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Default fragment limit of the echo (cases 9.3.1/9.4.1 send 65,536 fragments).
pub const ECHO_MAX_FRAGMENTS: usize = 100_000;

struct Echo<'a> {
    outbox: &'a Outbox,
    scratch: &'a RefCell<Vec<u8>>,
    limits: Limits,
}

impl Handler for Echo<'_> {
    fn outbox(&self) -> &Outbox {
        self.outbox
    }
    fn scratch(&self) -> &RefCell<Vec<u8>> {
        self.scratch
    }
    fn limits(&self) -> Limits {
        self.limits
    }
    fn seen(&self, _now: Instant) {}
    fn draining(&self) -> bool {
        false
    }
    async fn message(&self, message: Message, _now: Instant) {
        self.outbox
            .push(&control_frame(message.opcode, &message.payload));
    }
}

async fn serve(stream: monoio::net::TcpStream, scratch: Rc<RefCell<Vec<u8>>>, limits: Limits) {
    let _ = stream.set_nodelay(true);
    let Ok(mut stream) = super::stream::from_tcp(stream) else {
        return;
    };
    let mut buf = BytesMut::with_capacity(1024);
    let (req, consumed) = loop {
        match handshake::parse(&buf) {
            Ok(Some(found)) => break found,
            Ok(None) => {}
            Err(_) => return,
        }
        buf.reserve(1024.min(MAX_HEAD + 1 - buf.len()));
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    };
    let Some(upgrade) = req.upgrade else { return };
    if stream
        .write_all(&handshake::switching_protocols(&upgrade))
        .await
        .is_err()
    {
        return;
    }
    let outbox = Outbox::attached(
        limits.max_message_size.saturating_mul(4),
        Socket::new(stream),
    );
    let mut input = Input::new(BytesMut::from(&buf[consumed..]));
    let echo = Echo {
        outbox: &outbox,
        scratch: &scratch,
        limits,
    };
    let end = read_loop(&mut input, &echo).await;
    if let End::Violation(code) = end {
        outbox.close(code);
    }
    outbox.close(CloseCode::Normal);
    if matches!(end, End::Gone | End::ClientClosed) {
        finish(&outbox).await;
    } else {
        linger(&mut input, &outbox).await;
    }
}

/// Runs the echo on `addr` (one thread) until the process is killed.
pub fn run(addr: SocketAddr, limits: Limits) -> std::io::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        tracing::info!(
            port = local.port(),
            max_message_size = limits.max_message_size,
            max_fragments = limits.max_fragments,
            "Echo listening"
        );
        let scratch = Rc::new(RefCell::new(vec![0u8; 64 * 1024]));
        loop {
            let (stream, _) = listener.accept().await?;
            monoio::spawn(serve(stream, scratch.clone(), limits));
        }
    })
}
