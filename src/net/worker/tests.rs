//! A worker carrying out its hub's effects against a recording bus: what leaves the worker,
//! with which origin and exclusion, and what is delivered here.

use clap::Parser;

use super::*;
use crate::backend::fixture::Fixture;
use crate::broker::recording::{Record, Recording};
use crate::config::FixtureSize;
use crate::protocol::Command;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: crate::config::Config,
}

fn worker() -> (Worker, Arc<Recording>) {
    let settings = Cli::try_parse_from(["test", "--workers", "2"])
        .expect("flags")
        .config
        .validate()
        .expect("valid");
    let recording = Arc::new(Recording::default());
    let mailboxes = Mailbox::for_workers(2);
    let backend = Arc::new(Fixture::new(FixtureSize { users: 4, rooms: 1 }));
    let shared = Shared::with_bus(
        settings,
        backend,
        Metrics::new(),
        NodeId(7),
        mailboxes,
        Box::new(recording.clone()),
    );
    (Worker::new(0, Arc::new(shared)), recording)
}

fn open(w: &Worker, user: &str, chats: &[&str]) -> (usize, Rc<Outbox>) {
    let conn = Rc::new(Outbox::new(1 << 20));
    let user = User {
        id: user.into(),
        name: user.into(),
    };
    let chats = chats.iter().map(|c| Arc::from(*c)).collect();
    (w.open(user, chats, conn.clone()), conn)
}

fn typing(chat: &str) -> Command {
    Command::Typing {
        chat_id: chat.into(),
        is_typing: true,
    }
}

#[test]
fn opening_and_closing_go_through_the_bus_even_for_the_owner() {
    let (w, bus) = worker();
    let (a, _) = open(&w, "u1", &["c"]);
    let calls = bus.take();
    assert!(
        matches!(&calls[0], Record::Join(0, room) if &**room == "c"),
        "the first member opens the room's interest: {calls:?}"
    );
    assert!(
        matches!(&calls[1], Record::Presence(0, change) if change.opened && &*change.user == "u1"),
        "{calls:?}"
    );
    open(&w, "u2", &["c"]);
    assert!(
        !bus.take().iter().any(|r| matches!(r, Record::Join(..))),
        "a second member opens nothing"
    );
    w.close(a);
    assert!(bus
        .take()
        .iter()
        .any(|r| matches!(r, Record::Presence(0, change) if !change.opened)));
}

#[test]
fn a_typing_event_leaves_once_naming_its_origin_and_the_one_connection_it_skips() {
    let (w, bus) = worker();
    let (a, conn_a) = open(&w, "u1", &["c"]);
    let (_, conn_b) = open(&w, "u2", &["c"]);
    bus.take();
    let (before_a, before_b) = (conn_a.queued(), conn_b.queued());
    assert!(matches!(
        w.command(a, typing("c"), Instant::now()),
        Step::Done
    ));
    let calls = bus.take();
    let [Record::Publish(event)] = &calls[..] else {
        panic!("one publish: {calls:?}");
    };
    let here = Origin {
        node: w.shared.node(),
        worker: 0,
    };
    assert_eq!(event.origin, here);
    assert_eq!(event.exclude, Some(ConnId { at: here, slot: a }));
    assert_eq!(conn_a.queued(), before_a, "the typist does not hear itself");
    assert!(conn_b.queued() > before_b, "the other member does");
}

#[test]
fn an_exclusion_from_elsewhere_never_hits_the_connection_with_the_same_slot_here() {
    let (w, _bus) = worker();
    let (a, conn_a) = open(&w, "u1", &["c"]);
    let here = Origin {
        node: w.shared.node(),
        worker: 0,
    };
    let elsewhere = [
        Origin {
            node: NodeId(here.node.0 ^ 1),
            worker: 0,
        },
        Origin {
            node: here.node,
            worker: 1,
        },
    ];
    for other in elsewhere {
        let before = conn_a.queued();
        w.handle(Envelope::Room(Arc::new(RoomEvent {
            rooms: vec!["c".into()],
            frame: Bytes::from_static(b"\x81\x02{}"),
            origin: other,
            exclude: Some(ConnId { at: other, slot: a }),
            kind: EventKind::Typing,
        })));
        assert!(
            conn_a.queued() > before,
            "excluded {other:?}'s slot {a}, not this one"
        );
    }
    let before = conn_a.queued();
    w.handle(Envelope::Room(Arc::new(RoomEvent {
        rooms: vec!["c".into()],
        frame: Bytes::from_static(b"\x81\x02{}"),
        origin: here,
        exclude: Some(ConnId { at: here, slot: a }),
        kind: EventKind::Typing,
    })));
    assert_eq!(conn_a.queued(), before, "this one, here");
}
