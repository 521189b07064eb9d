//! The hub's rules with simulated time: every input, the effects it produces.

use super::*;
use crate::protocol::HistoryPage;

const TYPING: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(30);
const SILENCE: Duration = Duration::from_secs(60);
const REFETCH: Duration = Duration::from_secs(10);

fn config(rate_limit: u32) -> HubConfig {
    HubConfig {
        typing_timeout: TYPING,
        heartbeat_interval: HEARTBEAT,
        connection_timeout: SILENCE,
        refetch_interval: REFETCH,
        rate_limit,
        rate_burst: 3,
        history_budget: 1 << 20,
    }
}

fn wall() -> String {
    "2026-11-30T12:00:00.000Z".into()
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        name: format!("{id} name").into(),
    }
}

fn chats(ids: &[&str]) -> Vec<Arc<str>> {
    ids.iter().map(|c| Arc::from(*c)).collect()
}

/// The JSON inside a server frame (unmasked, one frame): its payload's fields, with `type`.
fn json(frame: &Bytes) -> serde_json::Value {
    let len = usize::from(frame[1] & 0x7f);
    let start = match len {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let v: serde_json::Value = serde_json::from_slice(&frame[start..]).expect("a JSON frame");
    let mut fields = v["payload"].clone();
    if fields.is_object() {
        fields["type"] = v["type"].clone();
        fields
    } else {
        v
    }
}

/// A hub at `t0`, and helpers that take its effects.
struct World {
    hub: Hub<&'static str>,
    t0: Instant,
}

impl World {
    fn new(rate_limit: u32) -> Self {
        let t0 = Instant::now();
        Self {
            hub: Hub::new(config(rate_limit), t0, wall),
            t0,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn effects(&mut self) -> Vec<Effect> {
        std::iter::from_fn(|| self.hub.poll()).collect()
    }

    fn open(&mut self, id: &str, chat_ids: &[&str]) -> usize {
        let slot = self.hub.open(user(id), chats(chat_ids), "io", self.t0);
        self.effects();
        slot
    }

    /// The events published, as (rooms, JSON, excluded connection).
    fn published(&mut self) -> Vec<(Vec<String>, serde_json::Value, Option<usize>)> {
        self.effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Publish {
                    rooms,
                    frame,
                    exclude,
                    ..
                } => Some((
                    rooms.iter().map(|r| r.to_string()).collect(),
                    json(&frame),
                    exclude,
                )),
                _ => None,
            })
            .collect()
    }
}

fn typing(chat: &str, is_typing: bool) -> Command {
    Command::Typing {
        chat_id: chat.into(),
        is_typing,
    }
}

fn message(chat: &str) -> Command {
    Command::SendMessage {
        chat_id: chat.into(),
        content: "hi".into(),
        client_message_id: Some("c1".into()),
    }
}

fn stored(chat: &str) -> ChatMessage {
    ChatMessage {
        id: "m1".into(),
        chat_id: chat.into(),
        sender_id: "u1".into(),
        sender_name: "u1 name".into(),
        content: "hi".into(),
        created_at: wall(),
        client_message_id: Some("c1".into()),
    }
}

fn not_participant() -> Failure {
    Failure {
        code: ErrorCode::NotParticipant,
        message: "no".into(),
        status: None,
    }
}

#[test]
fn connected_comes_first_then_rooms_then_presence() {
    let mut w = World::new(0);
    let slot = w.hub.open(user("u1"), chats(&["a", "b"]), "io", w.t0);
    let effects = w.effects();
    let Effect::Send { conn, frame } = &effects[0] else {
        panic!("first effect: {effects:?}");
    };
    assert_eq!(*conn, slot);
    let v = json(frame);
    assert_eq!(v["type"], "connected");
    assert_eq!(v["userId"], "u1");
    assert_eq!(v["chatIds"], serde_json::json!(["a", "b"]));
    assert_eq!(
        effects[1..3],
        [
            Effect::Interest {
                room: "a".into(),
                joined: true
            },
            Effect::Interest {
                room: "b".into(),
                joined: true
            },
        ]
    );
    assert_eq!(
        effects[3],
        Effect::Presence(PresenceChange {
            user: "u1".into(),
            chats: chats(&["a", "b"]),
            opened: true
        })
    );
    assert_eq!(effects.len(), 4);
    // A second member of the same rooms opens no interest.
    w.hub.open(user("u2"), chats(&["a"]), "io", w.t0);
    assert!(!w
        .effects()
        .iter()
        .any(|e| matches!(e, Effect::Interest { .. })));
}

#[test]
fn only_typing_excludes_its_sender_and_it_expires_once() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    w.open("u2", &["c"]);
    assert_eq!(w.hub.command(a, typing("c", true), w.at(1.0)), Step::Done);
    let published = w.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].1["isTyping"], true);
    assert_eq!(published[0].2, Some(a), "the typing connection is excluded");
    // The deadline is the hub's next timeout, not a fixed tick.
    assert_eq!(w.hub.poll_timeout(), w.at(1.0) + TYPING);
    w.hub.handle_timeout(w.at(5.9));
    assert!(w.published().is_empty(), "not yet");
    w.hub.handle_timeout(w.at(6.0));
    let expired = w.published();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].1["isTyping"], false);
    assert_eq!(expired[0].2, Some(a));
    w.hub.handle_timeout(w.at(7.0));
    assert!(w.published().is_empty(), "announced once");
    // A message is published to everyone, the sender's devices included.
    let Step::Call(call) = w.hub.command(a, message("c"), w.at(8.0)) else {
        panic!("a message is stored first");
    };
    let step = w
        .hub
        .reply(a, call, Ok(Answer::Created(stored("c"))), w.at(8.0));
    assert_eq!(step, Step::Pace("c".into()));
    let published = w.published();
    assert_eq!(published[0].2, None);
    assert_eq!(published[0].1["type"], "chat:message");
    assert_eq!(published[0].1["message"]["clientMessageId"], "c1");
}

#[test]
fn a_typing_indicator_ends_when_a_refetch_removes_the_chat_not_again_at_expiry() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c", "d"]);
    w.hub.command(a, typing("c", true), w.at(0.0));
    w.effects();
    // A command for an unknown chat re-fetches the list, which no longer has "c".
    let Step::Call(call) = w.hub.command(a, typing("e", true), w.at(1.0)) else {
        panic!("an unknown chat asks for the list");
    };
    assert_eq!(
        call,
        Call::Chats {
            then: Some(typing("e", true))
        }
    );
    let step = w.hub.reply(
        a,
        call,
        Ok(Answer::Chats(vec!["d".into(), "e".into()])),
        w.at(1.0),
    );
    assert_eq!(step, Step::Done);
    let effects = w.effects();
    let stopped: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { rooms, frame, .. } => Some((rooms[0].to_string(), json(frame))),
            _ => None,
        })
        .collect();
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    assert_eq!(stopped[0].0, "c");
    assert_eq!(stopped[0].1["isTyping"], false, "ended when leaving");
    assert_eq!(stopped[1].0, "e");
    assert_eq!(stopped[1].1["isTyping"], true, "then the command ran");
    assert!(effects.contains(&Effect::Interest {
        room: "c".into(),
        joined: false
    }));
    assert_eq!(w.hub.users_in("c").len(), 0);
    assert_eq!(w.hub.users_in("e").len(), 1);
    // The expiry of "c" is gone; "e" expires on its own deadline.
    w.hub.handle_timeout(w.at(5.5));
    assert!(w.published().is_empty());
    w.hub.handle_timeout(w.at(6.0));
    let expired = w.published();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].0, vec!["e".to_string()]);
}

#[test]
fn not_participant_from_the_backend_refetches_once_per_interval() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    w.open("u2", &["c"]);
    let Step::Call(call) = w.hub.command(a, message("c"), w.at(0.0)) else {
        panic!()
    };
    // The user was removed from "c" upstream: the answer, then a re-fetch to verify.
    let step = w.hub.reply(a, call, Err(not_participant()), w.at(0.0));
    assert_eq!(step, Step::Call(Call::Chats { then: None }));
    assert!(w.effects().iter().any(|e| matches!(
        e,
        Effect::Error {
            code: ErrorCode::NotParticipant,
            ..
        }
    )));
    let Step::Call(call) = step else { panic!() };
    w.hub.reply(a, call, Ok(Answer::Chats(vec![])), w.at(0.0));
    w.effects();
    assert!(w.hub.users_in("c").contains_key("u2"));
    assert!(!w.hub.users_in("c").contains_key("u1"), "left the room");
    // Within the interval: a command for "c" is answered without another re-fetch.
    assert_eq!(w.hub.command(a, message("c"), w.at(5.0)), Step::Done);
    assert!(matches!(
        &w.effects()[..],
        [Effect::Error {
            code: ErrorCode::NotParticipant,
            ..
        }]
    ));
    // After it: the list is asked again.
    assert!(matches!(
        w.hub.command(a, message("c"), w.at(10.0)),
        Step::Call(Call::Chats { then: Some(_) })
    ));
}

#[test]
fn a_failed_verification_refetch_changes_nothing_but_a_failed_needed_one_is_told() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    let down = Failure {
        code: ErrorCode::HttpError,
        message: "down".into(),
        status: Some(503),
    };
    let step = w
        .hub
        .reply(a, Call::Chats { then: None }, Err(down.clone()), w.at(0.0));
    assert_eq!(step, Step::Done);
    assert!(w.effects().is_empty());
    let step = w.hub.reply(
        a,
        Call::Chats {
            then: Some(message("x")),
        },
        Err(down),
        w.at(0.0),
    );
    assert_eq!(step, Step::Done);
    assert_eq!(
        w.effects(),
        [Effect::Error {
            conn: a,
            code: ErrorCode::HttpError,
            message: "down".into(),
            status: Some(503)
        }]
    );
}

#[test]
fn presence_counts_devices_and_announces_first_open_and_last_close() {
    let mut w = World::new(0);
    let open = |opened| PresenceChange {
        user: "u1".into(),
        chats: chats(&["c"]),
        opened,
    };
    w.hub.presence(open(true));
    assert_eq!(w.published()[0].1["online"], true);
    w.hub.presence(open(true));
    assert!(w.published().is_empty(), "a second device is not news");
    w.hub.presence(open(false));
    assert!(w.published().is_empty());
    w.hub.presence(open(false));
    let last = w.published();
    assert_eq!(last[0].1["type"], "user:online");
    assert_eq!(last[0].1["online"], false);
    // A user in no chat has no one to tell.
    w.hub.presence(PresenceChange {
        user: "u2".into(),
        chats: vec![],
        opened: true,
    });
    assert!(w.published().is_empty());
}

#[test]
fn the_rate_limit_rejects_then_closes_sustained_abuse() {
    let mut w = World::new(1);
    let a = w.open("u1", &["c"]);
    let now = w.at(0.0);
    for _ in 0..3 {
        assert!(w.hub.admit(a, now), "the burst passes");
    }
    assert!(!w.hub.admit(a, now));
    assert!(matches!(
        &w.effects()[..],
        [Effect::Error {
            code: ErrorCode::RateLimited,
            ..
        }]
    ));
    let mut closed = false;
    for _ in 0..10 {
        w.hub.admit(a, now);
        closed |= w.effects().contains(&Effect::Close {
            conn: a,
            code: CloseCode::RateLimited,
        });
    }
    assert!(closed, "sustained abuse closes with 4029");
}

#[test]
fn closing_ends_typing_and_presence_but_draining_announces_nothing() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    let b = w.open("u2", &["c"]);
    w.hub.command(a, typing("c", true), w.at(0.0));
    w.hub.command(b, typing("c", true), w.at(0.0));
    w.effects();
    assert_eq!(w.hub.close(a), Some("io"));
    let effects = w.effects();
    assert!(
        matches!(&effects[0], Effect::Publish { frame, exclude: None, .. } if json(frame)["isTyping"] == false)
    );
    assert_eq!(
        effects[1],
        Effect::Presence(PresenceChange {
            user: "u1".into(),
            chats: chats(&["c"]),
            opened: false
        })
    );
    assert_eq!(w.hub.close(a), None, "closed once");
    w.hub.drain();
    w.hub.close(b);
    assert_eq!(
        w.effects(),
        [Effect::Interest {
            room: "c".into(),
            joined: false
        }],
        "no typing or presence news while draining"
    );
    w.hub.handle_timeout(w.at(100.0));
    assert!(w.effects().is_empty(), "no timers while draining");
}

#[test]
fn heartbeat_pings_then_closes_silent_connections() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    let b = w.open("u2", &["c"]);
    assert_eq!(w.hub.poll_timeout(), w.at(30.0));
    w.hub.handle_timeout(w.at(29.0));
    assert!(w.effects().is_empty());
    w.hub.seen(b, w.at(45.0));
    w.hub.handle_timeout(w.at(30.0));
    assert_eq!(
        w.effects(),
        [Effect::Ping { conn: a }, Effect::Ping { conn: b }]
    );
    w.hub.handle_timeout(w.at(60.0));
    assert_eq!(
        w.effects(),
        [
            Effect::Close {
                conn: a,
                code: CloseCode::IdleTimeout
            },
            Effect::Ping { conn: b }
        ]
    );
}

#[test]
fn server_api_join_sends_chat_new_first_and_leave_sends_chat_removed_last() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    let new = Bytes::from_static(b"new");
    assert!(w.hub.join(a, &"d".into(), &new));
    assert_eq!(
        w.effects(),
        [
            Effect::Send {
                conn: a,
                frame: new.clone()
            },
            Effect::Interest {
                room: "d".into(),
                joined: true
            }
        ]
    );
    assert!(!w.hub.join(a, &"d".into(), &new), "already in it");
    w.hub.command(a, typing("d", true), w.at(0.0));
    w.effects();
    let removed = Bytes::from_static(b"removed");
    assert!(w.hub.leave(a, "d", &removed));
    let effects = w.effects();
    assert_eq!(
        effects.last(),
        Some(&Effect::Send {
            conn: a,
            frame: removed.clone()
        })
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Publish { frame, .. } if json(frame)["isTyping"] == false)));
    assert!(!w.hub.leave(a, "d", &removed));
}

#[test]
fn read_receipts_fall_back_to_the_wall_clock_and_ping_is_answered() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    let read = Command::MarkRead {
        chat_id: "c".into(),
        message_id: "m1".into(),
    };
    let Step::Call(call) = w.hub.command(a, read, w.at(0.0)) else {
        panic!()
    };
    assert_eq!(
        w.hub.reply(a, call, Ok(Answer::Read(None)), w.at(0.0)),
        Step::Pace("c".into())
    );
    let published = w.published();
    assert_eq!(published[0].1["readAt"], wall());
    assert_eq!(published[0].1["userId"], "u1");
    assert_eq!(w.hub.command(a, Command::Ping, w.at(0.0)), Step::Done);
    let Effect::Send { frame, .. } = &w.effects()[0] else {
        panic!()
    };
    assert_eq!(json(frame)["type"], "pong");
    assert_eq!(json(frame)["timestamp"], wall());
}

#[test]
fn history_is_cut_to_the_budget_and_answered_to_the_asker_only() {
    let mut w = World::new(0);
    w.hub = Hub::new(
        HubConfig {
            history_budget: 600,
            ..config(0)
        },
        w.t0,
        wall,
    );
    let a = w.open("u1", &["c"]);
    let req = HistoryRequest {
        chat_id: "c".into(),
        page: HistoryPage {
            after: None,
            before: None,
            limit: 50,
        },
        request_id: Some("r1".into()),
    };
    let Step::Call(call) = w.hub.command(a, Command::History(Box::new(req)), w.at(0.0)) else {
        panic!()
    };
    let messages = (0..10).map(|_| stored("c")).collect();
    let step = w.hub.reply(
        a,
        call,
        Ok(Answer::History {
            messages,
            has_more: false,
        }),
        w.at(0.0),
    );
    assert_eq!(step, Step::Done);
    let Effect::Send { conn, frame } = &w.effects()[0] else {
        panic!()
    };
    assert_eq!(*conn, a);
    let v = json(frame);
    assert_eq!(v["requestId"], "r1");
    let kept = v["messages"].as_array().map(Vec::len).unwrap_or(0);
    assert!((1..10).contains(&kept), "cut to the budget: {kept}");
    assert_eq!(v["hasMore"], true);
}

#[test]
fn an_answer_of_the_wrong_shape_is_an_internal_error_not_a_guess() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c"]);
    let step = w.hub.reply(
        a,
        Call::Chats { then: None },
        Ok(Answer::Read(None)),
        w.at(0.0),
    );
    assert_eq!(step, Step::Done);
    assert!(matches!(
        &w.effects()[..],
        [
            Effect::Error {
                code: ErrorCode::InternalError,
                ..
            },
            ..
        ]
    ));
}

#[test]
fn resync_tells_each_member_only_its_own_chats_that_may_have_gaps() {
    let mut w = World::new(0);
    let a = w.open("u1", &["c", "d"]);
    let b = w.open("u2", &["d"]);
    w.open("u3", &["e"]);
    w.hub.resync(&chats(&["c", "e2", "d"]));
    let sent: Vec<(usize, serde_json::Value)> = w
        .effects()
        .into_iter()
        .map(|e| match e {
            Effect::Send { conn, frame } => (conn, json(&frame)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].0, a);
    assert_eq!(sent[0].1["type"], "chat:resync");
    assert_eq!(sent[0].1["chatIds"], serde_json::json!(["c", "d"]));
    assert_eq!(sent[1].0, b);
    assert_eq!(sent[1].1["chatIds"], serde_json::json!(["d"]));
}
