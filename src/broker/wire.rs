//! How room events and server API requests travel between nodes: one binary record each,
//! encoded once.
//!
//! Layouts (integers big-endian):
//! - a room event: `b"ss2"`, origin node `u64`, origin worker `u16`, publication time `u64`
//!   (microseconds since the Unix epoch, for the lag metric), kind `u8`, exclusion
//!   flag `u8` (1: then node `u64`, worker `u16`, slot `u32`), room count `u16`, each room as
//!   length `u16` and UTF-8 bytes, then the encoded WebSocket frame (the rest);
//! - a server API request: `b"sq1"`, asking node `u64`, request id `u64`, action count `u32`,
//!   each action as a tag `u8` and its fields (texts and frames as length `u32` and bytes, the
//!   close code as `u16`);
//! - a node's answer to it: `b"sr1"`, request id `u64`, answering node `u64`, outcome count
//!   `u32`, each outcome as tag `u8` then a count `u64`, or a user count `u32` and that many
//!   (user id, connections `u64`).
//!
//! Guarantees: decoding never panics and never allocates from a length it read before
//! checking that many bytes are there; anything malformed is an error naming what broke.
//! Encoding refuses what a field's width cannot hold (a room id over 65,535 bytes) instead of
//! truncating it. The frame is not re-encoded: the receiving node delivers the very bytes the
//! publisher encoded. Not here: which channel a record goes to (see `redis`).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use std::collections::HashMap;

use super::{ConnId, EventKind, NodeId, Origin, RoomEvent};
use crate::api::{Action, Outcome};

/// Leading bytes of a room event record (format version 2: with its publication time).
const MAGIC: &[u8; 3] = b"ss2";
/// Leading bytes of a server API request record.
const REQUEST: &[u8; 3] = b"sq1";
/// Leading bytes of a node's answer to a request.
const REPLY: &[u8; 3] = b"sr1";

/// Why a record could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not a record of this format.
    #[error("not a socket-server event (bad magic)")]
    Magic,
    /// It ended before the field named.
    #[error("truncated at {0}")]
    Truncated(&'static str),
    /// An unknown event kind.
    #[error("unknown event kind {0}")]
    Kind(u8),
    /// A text field that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// An unknown server API action or outcome tag.
    #[error("unknown {0} tag {1}")]
    Tag(&'static str, u8),
    /// A field too long for its width in the record (refused when encoding).
    #[error("{0} too long for the record")]
    TooLong(&'static str),
}

/// Now, in microseconds since the Unix epoch (0 for a clock before it).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Encodes `event`, published at `sent_us` ([`now_us`]), as one record; an event with a room
/// id over 65,535 bytes, or more than 65,535 rooms, is refused.
pub fn encode(event: &RoomEvent, sent_us: u64) -> Result<Bytes, WireError> {
    let count = u16::try_from(event.rooms.len()).map_err(|_| WireError::TooLong("room list"))?;
    if event.rooms.iter().any(|r| r.len() > usize::from(u16::MAX)) {
        return Err(WireError::TooLong("room id"));
    }
    let rooms: usize = event.rooms.iter().map(|r| 2 + r.len()).sum();
    let mut out = BytesMut::with_capacity(32 + rooms + event.frame.len());
    out.put_slice(MAGIC);
    out.put_u64(event.origin.node.0);
    out.put_u16(event.origin.worker as u16);
    out.put_u64(sent_us);
    out.put_u8(event.kind as u8);
    match event.exclude {
        Some(c) => {
            out.put_u8(1);
            out.put_u64(c.at.node.0);
            out.put_u16(c.at.worker as u16);
            out.put_u32(c.slot as u32);
        }
        None => out.put_u8(0),
    }
    out.put_u16(count);
    for room in &event.rooms {
        // Checked above.
        out.put_u16(room.len() as u16);
        out.put_slice(room.as_bytes());
    }
    out.put_slice(&event.frame);
    Ok(out.freeze())
}

/// Appends `bytes` with a `u32` length.
fn put_long(out: &mut BytesMut, bytes: &[u8], what: &'static str) -> Result<(), WireError> {
    let len = u32::try_from(bytes.len()).map_err(|_| WireError::TooLong(what))?;
    out.put_u32(len);
    out.put_slice(bytes);
    Ok(())
}

/// Encodes server API request `id` of node `asker`.
pub fn encode_request(asker: NodeId, id: u64, actions: &[Action]) -> Result<Bytes, WireError> {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(REQUEST);
    out.put_u64(asker.0);
    out.put_u64(id);
    out.put_u32(u32::try_from(actions.len()).map_err(|_| WireError::TooLong("action list"))?);
    for a in actions {
        match a {
            Action::Publish {
                chat,
                message_id,
                frame,
            } => {
                out.put_u8(0);
                put_long(&mut out, chat.as_bytes(), "chat id")?;
                put_long(&mut out, message_id.as_bytes(), "message id")?;
                put_long(&mut out, frame, "frame")?;
            }
            Action::Join { chat, user, frame } | Action::Leave { chat, user, frame } => {
                out.put_u8(if matches!(a, Action::Join { .. }) {
                    1
                } else {
                    2
                });
                put_long(&mut out, chat.as_bytes(), "chat id")?;
                put_long(&mut out, user.as_bytes(), "user id")?;
                put_long(&mut out, frame, "frame")?;
            }
            Action::Disconnect { user, code, frame } => {
                out.put_u8(3);
                put_long(&mut out, user.as_bytes(), "user id")?;
                out.put_u16(*code);
                put_long(&mut out, frame, "frame")?;
            }
            Action::Presence { chat } => {
                out.put_u8(4);
                put_long(&mut out, chat.as_bytes(), "chat id")?;
            }
        }
    }
    Ok(out.freeze())
}

/// A server API request read off the wire.
#[derive(Debug)]
pub struct Request {
    /// The node that asked (and waits for the answers).
    pub asker: NodeId,
    /// Its id on that node.
    pub id: u64,
    /// The actions, in order.
    pub actions: Vec<Action>,
}

/// Decodes a server API request; frames share `record`'s memory.
pub fn decode_request(record: Bytes) -> Result<Request, WireError> {
    let mut r = Reader { rest: record };
    if r.take(3, "magic")?[..] != REQUEST[..] {
        return Err(WireError::Magic);
    }
    let asker = NodeId(r.u64("asking node")?);
    let id = r.u64("request id")?;
    let count = r.u32("action count")?;
    let mut actions = Vec::new();
    for _ in 0..count {
        let action = match r.u8("action tag")? {
            0 => Action::Publish {
                chat: r.text("chat id")?,
                message_id: r.text("message id")?.to_string(),
                frame: r.long("frame")?,
            },
            tag @ (1 | 2) => {
                let (chat, user, frame) =
                    (r.text("chat id")?, r.text("user id")?, r.long("frame")?);
                if tag == 1 {
                    Action::Join { chat, user, frame }
                } else {
                    Action::Leave { chat, user, frame }
                }
            }
            3 => Action::Disconnect {
                user: r.text("user id")?,
                code: r.u16("close code")?,
                frame: r.long("frame")?,
            },
            4 => Action::Presence {
                chat: r.text("chat id")?,
            },
            other => return Err(WireError::Tag("action", other)),
        };
        actions.push(action);
    }
    Ok(Request { asker, id, actions })
}

/// Encodes node `from`'s outcomes of request `id`.
pub fn encode_reply(id: u64, from: NodeId, outcomes: &[Outcome]) -> Result<Bytes, WireError> {
    let mut out = BytesMut::with_capacity(32 + 8 * outcomes.len());
    out.put_slice(REPLY);
    out.put_u64(id);
    out.put_u64(from.0);
    out.put_u32(u32::try_from(outcomes.len()).map_err(|_| WireError::TooLong("outcome list"))?);
    for o in outcomes {
        match o {
            Outcome::Count(n) => {
                out.put_u8(0);
                out.put_u64(*n as u64);
            }
            Outcome::Presence(users) => {
                out.put_u8(1);
                out.put_u32(
                    u32::try_from(users.len()).map_err(|_| WireError::TooLong("user list"))?,
                );
                for (user, n) in users {
                    put_long(&mut out, user.as_bytes(), "user id")?;
                    out.put_u64(*n as u64);
                }
            }
        }
    }
    Ok(out.freeze())
}

/// A node's answer to a request read off the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request it answers.
    pub id: u64,
    /// The node that answers.
    pub from: NodeId,
    /// What that node did, one per action.
    pub outcomes: Vec<Outcome>,
}

/// Decodes a node's answer.
pub fn decode_reply(record: Bytes) -> Result<Reply, WireError> {
    let mut r = Reader { rest: record };
    if r.take(3, "magic")?[..] != REPLY[..] {
        return Err(WireError::Magic);
    }
    let id = r.u64("request id")?;
    let from = NodeId(r.u64("answering node")?);
    let count = r.u32("outcome count")?;
    let mut outcomes = Vec::new();
    for _ in 0..count {
        outcomes.push(match r.u8("outcome tag")? {
            0 => Outcome::Count(r.count("count")?),
            1 => {
                let users = r.u32("user count")?;
                let mut by_user = HashMap::new();
                for _ in 0..users {
                    let user = r.text("user id")?;
                    by_user.insert(user, r.count("connections")?);
                }
                Outcome::Presence(by_user)
            }
            other => return Err(WireError::Tag("outcome", other)),
        });
    }
    Ok(Reply { id, from, outcomes })
}

/// A cursor over a record that fails instead of reading past its end.
struct Reader {
    rest: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated(what));
        }
        Ok(self.rest.split_to(n))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }

    /// Bytes behind a `u32` length.
    fn long(&mut self, what: &'static str) -> Result<Bytes, WireError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    /// UTF-8 text behind a `u32` length.
    fn text(&mut self, what: &'static str) -> Result<Arc<str>, WireError> {
        let bytes = self.long(what)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| WireError::NotUtf8(what))?;
        Ok(Arc::from(text))
    }

    /// A `u64` count that fits this machine's `usize`.
    fn count(&mut self, what: &'static str) -> Result<usize, WireError> {
        usize::try_from(self.u64(what)?).map_err(|_| WireError::TooLong(what))
    }
}

fn kind(byte: u8) -> Result<EventKind, WireError> {
    Ok(match byte {
        0 => EventKind::Message,
        1 => EventKind::Read,
        2 => EventKind::Typing,
        3 => EventKind::Presence,
        other => return Err(WireError::Kind(other)),
    })
}

/// A room event read off the wire.
#[derive(Debug)]
pub struct Received {
    /// The event.
    pub event: RoomEvent,
    /// When its node published it, microseconds since the Unix epoch (that node's clock).
    pub sent_us: u64,
}

/// Decodes one record; the frame shares `record`'s memory.
pub fn decode(record: Bytes) -> Result<Received, WireError> {
    let mut r = Reader { rest: record };
    if r.take(3, "magic")?[..] != MAGIC[..] {
        return Err(WireError::Magic);
    }
    let origin = Origin {
        node: NodeId(r.u64("origin node")?),
        worker: usize::from(r.u16("origin worker")?),
    };
    let sent_us = r.u64("publication time")?;
    let kind = kind(r.u8("kind")?)?;
    let exclude = match r.u8("exclusion flag")? {
        0 => None,
        _ => Some(ConnId {
            at: Origin {
                node: NodeId(r.u64("excluded node")?),
                worker: usize::from(r.u16("excluded worker")?),
            },
            slot: r.u32("excluded slot")? as usize,
        }),
    };
    let count = r.u16("room count")?;
    // Not `with_capacity(count)`: the count was read off the network.
    let mut rooms = Vec::new();
    for _ in 0..count {
        let len = usize::from(r.u16("room length")?);
        let bytes = r.take(len, "room")?;
        let room = std::str::from_utf8(&bytes).map_err(|_| WireError::NotUtf8("room id"))?;
        rooms.push(Arc::<str>::from(room));
    }
    let event = RoomEvent {
        rooms,
        frame: r.rest,
        origin,
        exclude,
        kind,
    };
    Ok(Received { event, sent_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RoomEvent {
        let origin = Origin {
            node: NodeId(0x0123_4567_89ab_cdef),
            worker: 3,
        };
        RoomEvent {
            rooms: vec!["general".into(), "ünïcode".into()],
            frame: Bytes::from_static(b"\x81\x05hello"),
            origin,
            exclude: Some(ConnId {
                at: origin,
                slot: 77,
            }),
            kind: EventKind::Typing,
        }
    }

    #[test]
    fn a_record_comes_back_as_the_event_it_was() {
        let e = event();
        let back = decode(encode(&e, 1_700_000_000_123_456).expect("encodes")).expect("decodes");
        assert_eq!(back.sent_us, 1_700_000_000_123_456);
        let back = back.event;
        assert_eq!(back.rooms, e.rooms);
        assert_eq!(back.frame, e.frame);
        assert_eq!(back.origin, e.origin);
        assert_eq!(back.exclude, e.exclude);
        assert_eq!(back.kind, e.kind);
        let plain = RoomEvent {
            exclude: None,
            kind: EventKind::Message,
            ..event()
        };
        let back = decode(encode(&plain, 0).expect("encodes"))
            .expect("decodes")
            .event;
        assert_eq!((back.exclude, back.kind), (None, EventKind::Message));
    }

    #[test]
    fn every_truncation_and_bad_byte_is_an_error_not_a_panic() {
        let whole = encode(&event(), 7).expect("encodes");
        let frame_at = whole.len() - 7;
        for cut in 0..frame_at {
            assert!(
                decode(whole.slice(..cut)).is_err(),
                "a record cut at {cut} must not decode"
            );
        }
        let mut bad = whole.to_vec();
        bad[0] = b'x';
        assert_eq!(decode(bad.into()).err(), Some(WireError::Magic));
        let mut bad = whole.to_vec();
        bad[21] = 9; // the kind byte
        assert_eq!(decode(bad.into()).err(), Some(WireError::Kind(9)));
        // A room count far beyond the bytes there: an error, and nothing reserved for it.
        let mut huge = whole.slice(..39).to_vec();
        huge[37] = 0xff;
        huge[38] = 0xff;
        assert_eq!(
            decode(huge.into()).err(),
            Some(WireError::Truncated("room length"))
        );
    }

    #[test]
    fn a_room_id_too_long_for_its_width_is_refused_not_truncated() {
        let long = RoomEvent {
            rooms: vec!["x".repeat(65_536).into()],
            ..event()
        };
        assert_eq!(encode(&long, 0).err(), Some(WireError::TooLong("room id")));
        let longest = RoomEvent {
            rooms: vec!["x".repeat(65_535).into()],
            ..event()
        };
        let back = decode(encode(&longest, 0).expect("encodes")).expect("decodes");
        assert_eq!(back.event.rooms[0].len(), 65_535);
    }

    fn actions() -> Vec<Action> {
        vec![
            Action::Publish {
                chat: "c1".into(),
                message_id: "m1".into(),
                frame: Bytes::from_static(b"\x81\x02hi"),
            },
            Action::Join {
                chat: "c2".into(),
                user: "ü1".into(),
                frame: Bytes::from_static(b"join"),
            },
            Action::Leave {
                chat: "c3".into(),
                user: "u2".into(),
                frame: Bytes::from_static(b"leave"),
            },
            Action::Disconnect {
                user: "u3".into(),
                code: 4003,
                frame: Bytes::from_static(b"\x88\x02\x0f\xa3"),
            },
            Action::Presence { chat: "c4".into() },
        ]
    }

    #[test]
    fn a_request_and_its_reply_come_back_as_they_were() {
        let record = encode_request(NodeId(7), 42, &actions()).expect("encodes");
        let back = decode_request(record).expect("decodes");
        assert_eq!((back.asker, back.id), (NodeId(7), 42));
        assert_eq!(format!("{:?}", back.actions), format!("{:?}", actions()));
        let mut users = HashMap::new();
        users.insert(Arc::<str>::from("u1"), 2);
        users.insert(Arc::<str>::from("ü2"), 1);
        let outcomes = vec![Outcome::Count(3), Outcome::Presence(users)];
        let reply = decode_reply(encode_reply(42, NodeId(9), &outcomes).expect("encodes"))
            .expect("decodes");
        assert_eq!(
            reply,
            Reply {
                id: 42,
                from: NodeId(9),
                outcomes
            }
        );
    }

    #[test]
    fn every_truncated_request_or_reply_is_an_error_not_a_panic() {
        let request = encode_request(NodeId(7), 42, &actions()).expect("encodes");
        for cut in 0..request.len() {
            assert!(
                decode_request(request.slice(..cut)).is_err(),
                "request cut at {cut}"
            );
        }
        let mut users = HashMap::new();
        users.insert(Arc::<str>::from("u1"), 2);
        let reply = encode_reply(1, NodeId(2), &[Outcome::Count(1), Outcome::Presence(users)])
            .expect("encodes");
        for cut in 0..reply.len() {
            assert!(
                decode_reply(reply.slice(..cut)).is_err(),
                "reply cut at {cut}"
            );
        }
        // A request is not a reply, nor an event, and an unknown action tag is named.
        assert_eq!(decode_reply(request.clone()).err(), Some(WireError::Magic));
        assert_eq!(decode(request.clone()).err(), Some(WireError::Magic));
        let mut bad = request.to_vec();
        bad[23] = 9; // the first action's tag
        assert_eq!(
            decode_request(bad.into()).err(),
            Some(WireError::Tag("action", 9))
        );
    }
}
