//! How a room event travels between nodes: one binary record per event, encoded once.
//!
//! Layout (integers big-endian):
//! `b"ss1"`, origin node `u64`, origin worker `u16`, kind `u8`, exclusion flag `u8`
//! (1: then node `u64`, worker `u16`, slot `u32`), room count `u16`, each room as length `u16`
//! and UTF-8 bytes, then the encoded WebSocket frame (the rest).
//!
//! Guarantees: [`decode`] never panics and never allocates from a length it read before
//! checking that many bytes are there; anything malformed is an error naming what broke.
//! The frame is not re-encoded: the receiving node delivers the very bytes the publisher
//! encoded. Not here: which channel a record goes to (see `redis`).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{ConnId, EventKind, NodeId, Origin, RoomEvent};

/// Leading bytes of every record (format version 1).
const MAGIC: &[u8; 3] = b"ss1";

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
    /// A room id that is not UTF-8.
    #[error("room id is not UTF-8")]
    Room,
}

/// Encodes `event` as one record.
pub fn encode(event: &RoomEvent) -> Bytes {
    let rooms: usize = event.rooms.iter().map(|r| 2 + r.len()).sum();
    let mut out = BytesMut::with_capacity(32 + rooms + event.frame.len());
    out.put_slice(MAGIC);
    out.put_u64(event.origin.node.0);
    out.put_u16(event.origin.worker as u16);
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
    out.put_u16(event.rooms.len() as u16);
    for room in &event.rooms {
        out.put_u16(room.len() as u16);
        out.put_slice(room.as_bytes());
    }
    out.put_slice(&event.frame);
    out.freeze()
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

/// Decodes one record; the frame shares `record`'s memory.
pub fn decode(record: Bytes) -> Result<RoomEvent, WireError> {
    let mut r = Reader { rest: record };
    if r.take(3, "magic")?[..] != MAGIC[..] {
        return Err(WireError::Magic);
    }
    let origin = Origin {
        node: NodeId(r.u64("origin node")?),
        worker: usize::from(r.u16("origin worker")?),
    };
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
        let room = std::str::from_utf8(&bytes).map_err(|_| WireError::Room)?;
        rooms.push(Arc::<str>::from(room));
    }
    Ok(RoomEvent {
        rooms,
        frame: r.rest,
        origin,
        exclude,
        kind,
    })
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
        let back = decode(encode(&e)).expect("decodes");
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
        let back = decode(encode(&plain)).expect("decodes");
        assert_eq!((back.exclude, back.kind), (None, EventKind::Message));
    }

    #[test]
    fn every_truncation_and_bad_byte_is_an_error_not_a_panic() {
        let whole = encode(&event());
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
        bad[13] = 9; // the kind byte
        assert_eq!(decode(bad.into()).err(), Some(WireError::Kind(9)));
        // A room count far beyond the bytes there: an error, and nothing reserved for it.
        let mut huge = whole.slice(..31).to_vec();
        huge[29] = 0xff;
        huge[30] = 0xff;
        assert_eq!(
            decode(huge.into()).err(),
            Some(WireError::Truncated("room length"))
        );
    }
}
