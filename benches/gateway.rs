//! Micro-benchmarks of the message path, in memory (no sockets):
//! - `envelope_parse`: one client `chat:message` parsed and validated into a `Command` by
//!   `inbound::parse` (simd-json, in place) next to the same types and rules on serde_json;
//! - `frame_encode`: one `chat:message` broadcast serialised into a ready-to-send frame
//!   (`Outbound::to_frame`: JSON written behind a header gap) next to serde_json + fastwebsockets'
//!   `Frame::write` (the obvious alternative);
//! - `fan_out_1000`: one encoded room event delivered to 1,000 local connections (room lookup +
//!   append to each connection's outbox), the per-event work of a worker;
//! - `outbox_push`: queueing one frame in an outbox, copied while the connection keeps up and
//!   held by reference once it is a write chunk behind (the two rules of `Outbox::push_event`);
//! - `write_path_32_frames` (with a socket): 32 frames queued for one loopback TCP socket and
//!   written as the worker's flusher writes them (one write for the pass), next to the same
//!   frames written one `write` each. The peer is a thread that reads everything; the kernel's
//!   loopback work is included, as it is for the server (most of a delivery's cost).
//! - `fan_out_32_sockets` (with sockets): 32 room events delivered to 32 connections on loopback
//!   sockets and flushed, as a busy pass of a worker does: the events copied once into the
//!   worker's arena with each outbox holding a span (`Outbox::push_event`, the gateway's path),
//!   next to every outbox copying every frame (`Outbox::push_class`, the path before the arena).
//!
//! Run: `cargo bench --bench gateway`. Results and their context are in BENCHMARKS.md.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use socket_server::core::room::Rooms;
use socket_server::net::arena::EventFrame;
use socket_server::net::outbox::{Class, Outbox, WRITE_CHUNK};
use socket_server::net::split;
use socket_server::protocol::{inbound, ChatMessage, Outbound};

const CLIENT_MESSAGE: &[u8] = br#"{"type":"chat:message","payload":{"chatId":"c0","content":"hello from the benchmark, round 17","clientMessageId":"k-123456"}}"#;

fn envelope_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_parse");
    g.throughput(Throughput::Elements(1));
    let mut buf = CLIENT_MESSAGE.to_vec();
    g.bench_function("simd_json_inbound_parse", |b| {
        b.iter(|| {
            // simd-json parses in place, so each iteration starts from a fresh copy; the copy
            // is part of what the server does too (the frame buffer is consumed).
            buf.copy_from_slice(CLIENT_MESSAGE);
            black_box(inbound::parse(black_box(&mut buf)).is_ok())
        })
    });
    g.bench_function("serde_json_same_rules", |b| {
        b.iter(|| black_box(inbound::parse_with_serde_json(black_box(CLIENT_MESSAGE)).is_ok()))
    });
    g.finish();
}

fn message() -> ChatMessage {
    ChatMessage {
        id: "8f14e45f-ceea-467f-a0e6-1b2c3d4e5f60".into(),
        chat_id: "c0".into(),
        sender_id: "u17".into(),
        sender_name: "User 17".into(),
        content: "hello from the benchmark, round 17".into(),
        created_at: "2026-11-26T05:00:00.000Z".into(),
        client_message_id: Some("k-123456".into()),
    }
}

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    g.throughput(Throughput::Elements(1));
    let m = message();
    g.bench_function("outbound_to_frame", |b| {
        b.iter(|| {
            black_box(
                Outbound::ChatMessage {
                    chat_id: "c0",
                    message: black_box(&m),
                }
                .to_frame(),
            )
        })
    });
    g.bench_function("serde_json_then_fastwebsockets_write", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let json = serde_json::to_vec(&Outbound::ChatMessage {
                chat_id: "c0",
                message: black_box(&m),
            })
            .expect("serialises");
            let mut f = fastwebsockets::Frame::text(fastwebsockets::Payload::Owned(json));
            black_box(f.write(&mut out).len())
        })
    });
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    const N: usize = 1000;
    let mut g = c.benchmark_group("fan_out_1000");
    g.throughput(Throughput::Elements(N as u64));
    let room: Arc<str> = "c0".into();
    let mut rooms = Rooms::default();
    let outboxes: Vec<Outbox> = (0..N).map(|_| Outbox::new(1 << 20)).collect();
    for i in 0..N {
        rooms.join(&room, i);
    }
    let frame = Outbound::ChatMessage {
        chat_id: "c0",
        message: &message(),
    }
    .to_frame();
    let targets = vec![room.clone()];
    let mut scratch = Vec::new();
    g.bench_function("deliver_encoded_event", |b| {
        b.iter(|| {
            rooms.for_each_member(&targets, None, &mut scratch, |k| {
                outboxes[k].push(&frame);
            });
            // Empty every outbox, as each connection's writer does once per pass of the event
            // loop (this also frees the buffer, as an idle outbox does).
            for o in &outboxes {
                black_box(o.take_for_bench());
            }
        })
    });
    g.finish();
}

fn outbox_push(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbox_push");
    g.throughput(Throughput::Elements(1));
    let frame = Outbound::ChatMessage {
        chat_id: "c0",
        message: &message(),
    }
    .to_frame();
    g.bench_function("copy_while_keeping_up", |b| {
        let outbox = Outbox::new(16 << 20);
        let mut n = 0;
        b.iter(|| {
            black_box(outbox.push_event(&mut EventFrame::new(black_box(&frame)), Class::Reliable));
            n += 1;
            if n == 32 {
                // As the writer does once per pass: take the queue (which frees it when idle).
                black_box(outbox.take_for_bench());
                n = 0;
            }
        })
    });
    // A connection over one write chunk behind: 1 KiB events are held by reference.
    let big = Bytes::from(vec![b'x'; 1024]);
    g.bench_function("hold_1k_event_when_behind", |b| {
        let outbox = Outbox::new(64 << 20);
        outbox.push(&vec![0u8; WRITE_CHUNK]);
        let mut n = 0;
        b.iter(|| {
            black_box(outbox.push_event(&mut EventFrame::new(black_box(&big)), Class::Reliable));
            n += 1;
            if n == 4096 {
                black_box(outbox.take_for_bench());
                outbox.push(&vec![0u8; WRITE_CHUNK]);
                n = 0;
            }
        })
    });
    g.finish();
}

/// A connected loopback pair: the server side as the worker holds it (poll-io), the peer a
/// thread that reads until EOF (not joined: monoio closes a socket only when its runtime runs
/// again).
async fn loopback_pair() -> socket_server::net::stream::Stream {
    let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).expect("connect loopback");
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let (stream, _) = listener.accept().await.expect("accept");
    let _ = stream.set_nodelay(true);
    socket_server::net::stream::from_tcp(stream).expect("poll io")
}

/// Writes `data` to `socket` without waiting, as the server's writes are made; when the socket
/// is full, gives the runtime a moment (the reader thread drains it).
async fn write_all_now(socket: &split::Socket, mut data: &[u8]) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while !data.is_empty() {
        match socket.poll_write(&mut cx, data) {
            std::task::Poll::Ready(Ok(n)) => data = &data[n..],
            std::task::Poll::Ready(Err(e)) => panic!("loopback write: {e}"),
            std::task::Poll::Pending => {
                monoio::time::sleep(std::time::Duration::from_micros(20)).await
            }
        }
    }
}

fn write_path(c: &mut Criterion) {
    const FRAMES: usize = 32;
    let mut g = c.benchmark_group("write_path_32_frames");
    g.throughput(Throughput::Elements(FRAMES as u64));
    let frame = Outbound::ChatMessage {
        chat_id: "c0",
        message: &message(),
    }
    .to_frame();
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime");
    g.bench_function("outbox_flush", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let stream = loopback_pair().await;
                let outbox = Outbox::attached(64 << 20, split::Socket::new(stream));
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    for _ in 0..FRAMES {
                        outbox.push(&frame);
                    }
                    outbox.flush_for_bench();
                    // A socket that could not take it all: its writer task finishes the write.
                    while outbox.queued() > 0 {
                        monoio::time::sleep(std::time::Duration::from_micros(20)).await;
                    }
                }
                let took = start.elapsed();
                outbox.abort();
                took
            })
        })
    });
    g.bench_function("one_write_per_frame", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let stream = loopback_pair().await;
                let socket = split::Socket::new(stream);
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    for _ in 0..FRAMES {
                        write_all_now(&socket, &frame).await;
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn fan_out_sockets(c: &mut Criterion) {
    const SOCKETS: usize = 32;
    const EVENTS: usize = 32;
    let mut g = c.benchmark_group("fan_out_32_sockets");
    g.throughput(Throughput::Elements((SOCKETS * EVENTS) as u64));
    let frame = Bytes::from(
        Outbound::ChatMessage {
            chat_id: "c0",
            message: &message(),
        }
        .to_frame()
        .to_vec(),
    );
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime");
    for (name, arena) in [("arena_spans", true), ("copied_per_recipient", false)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut outboxes = Vec::with_capacity(SOCKETS);
                    for _ in 0..SOCKETS {
                        let stream = loopback_pair().await;
                        outboxes.push(Outbox::attached(64 << 20, split::Socket::new(stream)));
                    }
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        for _ in 0..EVENTS {
                            let mut event = EventFrame::new(&frame);
                            for o in &outboxes {
                                if arena {
                                    black_box(o.push_event(&mut event, Class::Reliable));
                                } else {
                                    black_box(o.push_class(&frame, Class::Reliable));
                                }
                            }
                        }
                        for o in &outboxes {
                            o.flush_for_bench();
                        }
                        // Sockets that could not take it all: their writer tasks finish.
                        while outboxes.iter().any(|o| o.queued() > 0) {
                            monoio::time::sleep(std::time::Duration::from_micros(20)).await;
                        }
                    }
                    let took = start.elapsed();
                    for o in &outboxes {
                        o.abort();
                    }
                    took
                })
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    envelope_parse,
    frame_encode,
    fan_out,
    outbox_push,
    write_path,
    fan_out_sockets
);
criterion_main!(benches);
