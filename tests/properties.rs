//! Property tests of the three entry points that take bytes from the network: the handshake
//! parser, the frame reader (with the production rules) and the JSON envelope. The same entry
//! points are fuzzed in fuzz/ (cargo-fuzz); these run in the normal test suite.

mod support;

use proptest::prelude::*;
use socket_server::net::handshake;
use socket_server::net::reader::{decode_stream, End, Limits, Step};
use socket_server::protocol::{inbound, CloseCode, Command};
use support::client_frame;

const LIMITS: Limits = Limits {
    max_message_size: 4096,
    max_fragments: 16,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn handshake_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = handshake::parse(&bytes);
    }

    #[test]
    fn every_token_carrier_round_trips(token in "[A-Za-z0-9._~-]{1,64}", carrier in 0u8..3) {
        let (target, header) = match carrier {
            0 => (format!("/ws?token={token}"), String::new()),
            1 => ("/".to_string(), format!("Authorization: Bearer {token}\r\n")),
            _ => ("/".to_string(), format!("Sec-WebSocket-Protocol: bearer, {token}\r\n")),
        };
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{header}\r\n"
        );
        let (parsed, used) = handshake::parse(req.as_bytes()).unwrap().unwrap();
        prop_assert_eq!(used, req.len());
        // The logged path never carries the query (where the token may travel).
        let expected_path = if carrier == 0 { "/ws" } else { "/" };
        prop_assert_eq!(parsed.path.as_str(), expected_path);
        prop_assert_eq!(parsed.upgrade.unwrap().token, Some(token));
    }

    #[test]
    fn envelope_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = bytes;
        let _ = inbound::parse(&mut bytes);
    }

    #[test]
    fn commands_round_trip_through_json(
        chat in "\\PC{1,40}",
        content in "\\PC{1,200}",
        id in proptest::option::of("[a-z0-9-]{1,40}"),
        typing in any::<bool>(),
        which in 0u8..4,
    ) {
        let (json, want) = match which {
            0 => (
                serde_json::json!({"type": "chat:message", "payload": {"chatId": chat, "content": content, "clientMessageId": id}}),
                Command::SendMessage { chat_id: chat.clone(), content: content.clone(), client_message_id: id.clone() },
            ),
            1 => (
                serde_json::json!({"type": "chat:read", "payload": {"chatId": chat, "messageId": content}}),
                Command::MarkRead { chat_id: chat.clone(), message_id: content.clone() },
            ),
            2 => (
                serde_json::json!({"type": "chat:typing", "payload": {"chatId": chat, "isTyping": typing}}),
                Command::Typing { chat_id: chat.clone(), is_typing: typing },
            ),
            _ => (serde_json::json!({"type": "ping", "payload": {}}), Command::Ping),
        };
        let mut bytes = serde_json::to_vec(&json).unwrap();
        prop_assert_eq!(inbound::parse(&mut bytes), Ok(want));
    }

    #[test]
    fn frame_reader_never_panics_nor_exceeds_limits(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        for step in decode_stream(&bytes, LIMITS) {
            if let Step::Message(m) = step {
                prop_assert!(m.payload.len() <= LIMITS.max_message_size);
            }
        }
    }

    #[test]
    fn messages_around_the_size_limit_are_taken_whole_or_refused_with_1009(
        over in -8i64..=8,
        pieces in 1usize..=3,
        mask in any::<[u8; 4]>(),
    ) {
        // Random bytes almost never form a message near the limit; these always do.
        let len = (LIMITS.max_message_size as i64 + over) as usize;
        let payload = vec![b'a'; len];
        let cut = len / pieces;
        let mut stream = Vec::new();
        for i in 0..pieces {
            let end = if i + 1 == pieces { len } else { (i + 1) * cut };
            let opcode = if i == 0 { 0x1 } else { 0x0 };
            stream.extend(client_frame(i + 1 == pieces, opcode, &payload[i * cut..end], mask));
        }
        let steps = decode_stream(&stream, LIMITS);
        let messages: Vec<_> = steps.iter().filter_map(|s| match s { Step::Message(m) => Some(m), _ => None }).collect();
        if len <= LIMITS.max_message_size {
            prop_assert_eq!(messages.len(), 1, "steps: {:?}", steps);
            prop_assert_eq!(messages[0].payload.len(), len);
        } else {
            prop_assert!(messages.is_empty(), "steps: {:?}", steps);
            prop_assert!(
                matches!(steps.last(), Some(Step::End(End::Violation(CloseCode::MessageTooBig)))),
                "steps: {:?}", steps
            );
        }
    }

    #[test]
    fn fragments_with_interleaved_pings_reassemble(
        text in "\\PC{0,600}",
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ping_after in proptest::collection::vec(any::<bool>(), 8),
        mask in any::<[u8; 4]>(),
    ) {
        let payload = text.as_bytes();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([payload.len()]) {
            if p >= last {
                pieces.push(&payload[last..p]);
                last = p;
            }
        }
        let mut stream = Vec::new();
        let mut pings = 0;
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = if i == 0 { 0x1 } else { 0x0 };
            stream.extend(client_frame(i + 1 == pieces.len(), opcode, piece, mask));
            if ping_after[i % ping_after.len()] {
                stream.extend(client_frame(true, 0x9, b"hb", mask));
                pings += 1;
            }
        }
        let steps = decode_stream(&stream, LIMITS);
        let messages: Vec<_> = steps.iter().filter_map(|s| match s { Step::Message(m) => Some(m), _ => None }).collect();
        let pongs = steps.iter().filter(|s| matches!(s, Step::Pong(_))).count();
        prop_assert_eq!(pongs, pings);
        if pieces.len() > LIMITS.max_fragments {
            prop_assert!(matches!(steps.last(), Some(Step::End(End::Violation(_)))));
        } else {
            prop_assert_eq!(messages.len(), 1, "steps: {:?}", steps);
            prop_assert_eq!(&messages[0].payload[..], payload);
        }
    }
}
