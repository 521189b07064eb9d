//! One client connection: TCP connect (optionally from a chosen 127.0.0.x source address),
//! the upgrade, authentication, then reading frames and writing masked frames.
//!
//! Guarantees:
//! - [`connect`] returns only once the server's `connected` frame arrived, with the time each
//!   step took measured from just before the TCP connect; it fails with the server's own words
//!   on a refused upgrade, an `error` frame or a close.
//! - Every frame [`Conn`] writes is masked; every server ping is answered (see [`crate::frames`]).
//! - Pongs queued while reading are written by the next [`Conn::flush`]; [`Conn::pump`] reads,
//!   scans and flushes in one step, so a connection that only listens still answers pings.
//! - The only JSON parse on a connection is of its one `connected` frame.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::frames::{encode_masked, Drained, Inbox, Kind, MaskGen, OP_TEXT};
use crate::handshake::{self, Target};

/// Largest message accepted from the server (frames above it end the connection).
pub const MAX_MESSAGE: usize = 16 << 20;

/// How to open one connection.
#[derive(Debug, Clone)]
pub struct ConnectOpts<'a> {
    /// The server.
    pub target: &'a Target,
    /// Token to authenticate with.
    pub token: String,
    /// Source address to bind before connecting (`None`: let the kernel choose).
    pub source: Option<Ipv4Addr>,
    /// Initial receive buffer size (it grows only for larger frames).
    pub recv_capacity: usize,
    /// Seed for the masking keys (and the handshake key).
    pub seed: u64,
}

/// Time from just before the TCP connect to the end of each step.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectTiming {
    /// TCP connection established.
    pub tcp: Duration,
    /// 101 response head received.
    pub upgraded: Duration,
    /// `connected` frame received.
    pub authenticated: Duration,
}

/// An authenticated connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// Receiving side (frame scanner).
    pub inbox: Inbox,
    /// Bytes queued for the server (pongs, messages), written by [`Conn::flush`].
    pub tx: Vec<u8>,
    /// Masking keys.
    pub masks: MaskGen,
    /// `userId` from the `connected` frame.
    pub user_id: String,
    /// `chatIds` from the `connected` frame.
    pub chat_ids: Vec<String>,
    /// Frames other than `connected` that arrived during authentication.
    pub early_messages: u64,
}

#[derive(serde::Deserialize)]
struct ConnectedFrame {
    payload: ConnectedPayload,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectedPayload {
    user_id: String,
    #[serde(default)]
    chat_ids: Vec<String>,
}

/// Opens a TCP connection from `source` (if given) to `addr`, with TCP_NODELAY.
pub async fn tcp_connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        // Lets a bound port be reused while an old connection from it sits in TIME_WAIT.
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::from((ip, 0)))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects, upgrades and waits for `connected`.
pub async fn connect(opts: ConnectOpts<'_>) -> Result<(Conn, ConnectTiming)> {
    let t0 = Instant::now();
    let mut stream = tcp_connect(opts.target.socket_addr(), opts.source)
        .await
        .with_context(|| format!("TCP connect to {}", opts.target.addr))?;
    let tcp = t0.elapsed();
    let mut masks = MaskGen::new(opts.seed);
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&masks.next_key());
    key[4..8].copy_from_slice(&masks.next_key());
    key[8..12].copy_from_slice(&masks.next_key());
    key[12..].copy_from_slice(&masks.next_key());
    let req = handshake::request(opts.target, &opts.token, &handshake::key_from(key));
    stream
        .write_all(req.as_bytes())
        .await
        .context("writing the upgrade request")?;

    let mut head = Vec::with_capacity(512);
    let head_len = loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .context("reading the upgrade response")?;
        if n == 0 {
            bail!("server closed the connection during the upgrade");
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(len) = handshake::parse_response(&head)? {
            break len;
        }
        if head.len() > 16 * 1024 {
            bail!("upgrade response head larger than 16 KiB");
        }
    };
    let upgraded = t0.elapsed();

    let mut conn = Conn {
        stream,
        inbox: Inbox::new(opts.recv_capacity, MAX_MESSAGE),
        tx: Vec::with_capacity(256),
        masks,
        user_id: String::new(),
        chat_ids: Vec::new(),
        early_messages: 0,
    };
    conn.inbox.extend(&head[head_len..]);
    let mut connected: Option<Vec<u8>> = None;
    let mut failure: Option<String> = None;
    loop {
        let mut early = 0;
        let d = {
            let Conn {
                inbox, tx, masks, ..
            } = &mut conn;
            inbox.drain(tx, masks, |kind, payload| match kind {
                Kind::Connected if connected.is_none() => connected = Some(payload.to_vec()),
                Kind::Error if connected.is_none() => {
                    failure = Some(String::from_utf8_lossy(payload).into_owned());
                }
                _ => early += 1,
            })
        }
        .map_err(|e| anyhow!("framing error during authentication: {e}"))?;
        conn.early_messages += early;
        if let Some(f) = failure {
            bail!("server error during authentication: {f}");
        }
        if let Some(code) = d.closed {
            bail!("server closed during authentication (code {code})");
        }
        if connected.is_some() {
            break;
        }
        conn.flush().await?;
        if conn.read().await? == 0 {
            bail!("server closed the connection before `connected`");
        }
    }
    let frame: ConnectedFrame = serde_json::from_slice(connected.as_deref().unwrap_or_default())
        .context("parsing the `connected` frame")?;
    conn.user_id = frame.payload.user_id;
    conn.chat_ids = frame.payload.chat_ids;
    conn.flush().await?;
    let authenticated = t0.elapsed();
    Ok((
        conn,
        ConnectTiming {
            tcp,
            upgraded,
            authenticated,
        },
    ))
}

impl Conn {
    /// Reads once into the inbox; returns the byte count (0: the server closed).
    ///
    /// A read that did not fill the buffer drained the socket, so the readiness is cleared right
    /// away instead of by a second `recv` failing with EAGAIN: one syscall per wake-up, not two
    /// (tokio keeps any readiness that arrived in between, so no wake-up is lost).
    /// Cancel-safe: bytes are committed in the same step as they are read.
    pub async fn read(&mut self) -> std::io::Result<usize> {
        loop {
            self.stream.readable().await?;
            let spare = self.inbox.spare();
            let room = spare.len();
            match self.stream.try_read(spare) {
                Ok(n) => {
                    self.inbox.commit(n);
                    if n > 0 && n < room {
                        let _ = self.stream.try_io(Interest::READABLE, || {
                            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                        });
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Scans every complete frame (see [`Inbox::drain`]).
    pub fn drain<F: FnMut(Kind, &[u8])>(&mut self, on_message: F) -> Result<Drained> {
        self.inbox
            .drain(&mut self.tx, &mut self.masks, on_message)
            .map_err(|e| anyhow!("framing error: {e}"))
    }

    /// Queues a masked text frame.
    pub fn queue_text(&mut self, payload: &[u8]) {
        let key = self.masks.next_key();
        encode_masked(&mut self.tx, OP_TEXT, payload, key);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.tx.is_empty() {
            self.stream.write_all(&self.tx).await?;
            self.tx.clear();
        }
        Ok(())
    }

    /// Reads once, scans, writes any pongs; errors on EOF, framing errors and a close.
    pub async fn pump<F: FnMut(Kind, &[u8])>(&mut self, on_message: F) -> Result<Drained> {
        if self.read().await? == 0 {
            bail!("server closed the connection");
        }
        let d = self.drain(on_message)?;
        if let Some(code) = d.closed {
            bail!("server sent close (code {code})");
        }
        self.flush().await?;
        Ok(d)
    }
}

/// The token of the `j`-th connection: `t<first + j*stride>` while that stays below
/// `first + users*stride`, then second devices `t<i>.<d>` (socket-server only).
///
/// `stride` is the server's ROOMS, so that every token lands in the same chat
/// (`c<first mod ROOMS>`); `users` is how many distinct users to use.
pub fn token_for(j: u64, first: u64, stride: u64, users: u64) -> String {
    let users = users.max(1);
    let i = first + (j % users) * stride.max(1);
    let device = j / users;
    if device == 0 {
        format!("t{i}")
    } else {
        format!("t{i}.{device}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_fixture_convention() {
        assert_eq!(token_for(0, 0, 1, 100), "t0");
        assert_eq!(token_for(5, 0, 1, 100), "t5");
        assert_eq!(token_for(5, 0, 4, 100), "t20");
        assert_eq!(token_for(5, 2, 4, 100), "t22");
        assert_eq!(token_for(100, 0, 1, 100), "t0.1");
        assert_eq!(token_for(205, 0, 1, 100), "t5.2");
    }
}
