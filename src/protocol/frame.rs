//! Frame-level rules on top of fastwebsockets: encoding server frames without I/O, and
//! reassembling fragmented client messages under hard caps.
//!
//! fastwebsockets parses each frame and checks its announced size against the cap before
//! reserving room for it, so one frame header can make a connection reserve up to
//! `MAX_MESSAGE_SIZE` (never more). [`MessageAssembler`] enforces what a per-frame check cannot:
//! the size of the whole message and the number of fragments; it only ever grows its buffer by
//! bytes that actually arrived and that fit under the cap.

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode};

use super::CloseCode;

/// Bytes reserved in front of a payload for the largest server frame header (no mask).
pub const FRAME_HEAD_GAP: usize = 10;

/// Spare capacity above which a finished frame is copied into an allocation of its own size.
const MAX_FRAME_SLACK: usize = 1024;

/// Turns `buf` (a [`FRAME_HEAD_GAP`]-byte gap followed by the payload) into a complete
/// unmasked final frame, writing the header into the tail of the gap. A frame whose buffer
/// grew by doubling is copied to its exact size: a frame may wait in many backlogs for long,
/// and a 4.2 KB message in an 8 KB buffer would hold twice its memory there.
pub fn finish_frame(mut buf: Vec<u8>, opcode: OpCode) -> Bytes {
    let len = buf.len() - FRAME_HEAD_GAP;
    let first = 0x80 | opcode as u8;
    let start = if len < 126 {
        buf[8] = first;
        buf[9] = len as u8;
        8
    } else if len < 65_536 {
        buf[6] = first;
        buf[7] = 126;
        buf[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        6
    } else {
        buf[0] = first;
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        0
    };
    if buf.capacity() - buf.len() > MAX_FRAME_SLACK {
        return Bytes::copy_from_slice(&buf[start..]);
    }
    Bytes::from(buf).slice(start..)
}

/// A complete server frame with the given opcode and payload.
pub fn control_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(FRAME_HEAD_GAP + payload.len());
    buf.resize(FRAME_HEAD_GAP, 0);
    buf.extend_from_slice(payload);
    finish_frame(buf, opcode)
}

/// A close frame carrying `code` and its catalogue reason.
pub fn close_frame(code: CloseCode) -> Bytes {
    let mut payload = Vec::with_capacity(2 + code.reason().len());
    payload.extend_from_slice(&code.code().to_be_bytes());
    payload.extend_from_slice(code.reason().as_bytes());
    control_frame(OpCode::Close, &payload)
}

/// A close frame with any `code` and `reason` (the server API's disconnect). The caller keeps
/// `reason` within [`MAX_CLOSE_REASON`] bytes; longer reasons are cut at a character boundary,
/// since a control frame carries at most 125 bytes.
pub fn close_frame_with(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    control_frame(OpCode::Close, &payload)
}

/// Longest close reason, in bytes: a control frame's 125-byte payload minus the 2-byte code.
pub const MAX_CLOSE_REASON: usize = 123;

/// Bytes a masked client frame with a `payload`-byte payload occupies on the wire, with the
/// minimal length encoding RFC 6455 requires. Used to know when the parser has consumed every
/// byte it was given.
pub fn client_frame_len(payload: usize) -> u64 {
    let ext = if payload < 126 {
        0
    } else if payload < 65_536 {
        2
    } else {
        8
    };
    (2 + ext + 4 + payload) as u64
}

/// Why a client's frames cannot form a message; each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A continuation frame arrived with no message in progress.
    #[error("continuation frame without a message in progress")]
    StrayContinuation,
    /// A new text/binary frame arrived while a fragmented message was in progress.
    #[error("new message started before the previous one finished")]
    InterleavedMessage,
    /// The whole message exceeds `MAX_MESSAGE_SIZE`.
    #[error("message exceeds the size limit")]
    MessageTooBig,
    /// The message has more fragments than `MAX_FRAGMENTS`.
    #[error("message exceeds the fragment limit")]
    TooManyFragments,
    /// A text message is not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

impl FrameError {
    /// The close code the server sends for this error.
    pub fn close_code(self) -> CloseCode {
        match self {
            FrameError::StrayContinuation | FrameError::InterleavedMessage => {
                CloseCode::ProtocolError
            }
            FrameError::MessageTooBig | FrameError::TooManyFragments => CloseCode::MessageTooBig,
            FrameError::InvalidUtf8 => CloseCode::InvalidPayload,
        }
    }
}

/// A complete client data message.
#[derive(Debug)]
pub struct Message {
    /// Text or binary.
    pub opcode: OpCode,
    /// The payload, unmasked and (for text) valid UTF-8.
    pub payload: BytesMut,
}

/// Reassembles fragmented data messages with caps on total size and fragment count.
#[derive(Debug)]
pub struct MessageAssembler {
    max_size: usize,
    max_fragments: usize,
    opcode: Option<OpCode>,
    fragments: usize,
    buf: BytesMut,
    /// Bytes of `buf` known to be valid UTF-8 (text messages).
    checked: usize,
}

impl MessageAssembler {
    /// A new assembler; nothing is allocated until a fragmented message arrives.
    pub fn new(max_size: usize, max_fragments: usize) -> Self {
        Self {
            max_size,
            max_fragments,
            opcode: None,
            fragments: 0,
            buf: BytesMut::new(),
            checked: 0,
        }
    }

    /// Whether a fragmented message is open (its first frame arrived, its last has not).
    pub fn in_progress(&self) -> bool {
        self.opcode.is_some()
    }

    /// Feeds one data frame (text, binary or continuation); returns a message once complete.
    /// Control frames must not be passed here.
    pub fn push(&mut self, frame: Frame<'_>) -> Result<Option<Message>, FrameError> {
        match (frame.opcode, self.opcode) {
            (OpCode::Continuation, None) => Err(FrameError::StrayContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => Err(FrameError::InterleavedMessage),
            (OpCode::Text | OpCode::Binary, None) if frame.fin => {
                if frame.payload.len() > self.max_size {
                    return Err(FrameError::MessageTooBig);
                }
                let payload = BytesMut::from(&frame.payload[..]);
                check_utf8(frame.opcode, &payload)?;
                Ok(Some(Message {
                    opcode: frame.opcode,
                    payload,
                }))
            }
            (opcode, current) => {
                self.fragments += 1;
                if self.fragments > self.max_fragments {
                    return Err(FrameError::TooManyFragments);
                }
                if self.buf.len() + frame.payload.len() > self.max_size {
                    return Err(FrameError::MessageTooBig);
                }
                self.buf.extend_from_slice(&frame.payload);
                let opcode = current.unwrap_or(opcode);
                self.opcode = Some(opcode);
                if opcode == OpCode::Text {
                    // Fail fast: invalid UTF-8 is refused at the fragment that carries it, not
                    // when the message completes (RFC 6455 §8.1); only a character split across
                    // fragments may wait for the next one.
                    self.checked = utf8_prefix(&self.buf, self.checked)?;
                }
                if !frame.fin {
                    return Ok(None);
                }
                let payload = std::mem::take(&mut self.buf);
                let checked = std::mem::take(&mut self.checked);
                self.opcode = None;
                self.fragments = 0;
                if opcode == OpCode::Text && checked != payload.len() {
                    return Err(FrameError::InvalidUtf8);
                }
                Ok(Some(Message { opcode, payload }))
            }
        }
    }
}

/// How much of `buf` is valid UTF-8 given the first `from` bytes were: everything, or up to a
/// character still incomplete at the end. An invalid sequence anywhere is an error.
fn utf8_prefix(buf: &[u8], from: usize) -> Result<usize, FrameError> {
    match std::str::from_utf8(&buf[from..]) {
        Ok(_) => Ok(buf.len()),
        Err(e) if e.error_len().is_none() => Ok(from + e.valid_up_to()),
        Err(_) => Err(FrameError::InvalidUtf8),
    }
}

fn check_utf8(opcode: OpCode, payload: &[u8]) -> Result<(), FrameError> {
    if opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
        return Err(FrameError::InvalidUtf8);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::Payload;

    fn reference(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut f = Frame::new(true, opcode, None, Payload::Owned(payload.to_vec()));
        f.write(&mut out).to_vec()
    }

    #[test]
    fn encoding_matches_fastwebsockets_at_every_length_class() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            assert_eq!(
                &control_frame(OpCode::Text, &payload)[..],
                &reference(OpCode::Text, &payload)[..],
                "len {len}"
            );
        }
    }

    #[test]
    fn client_frame_len_counts_header_mask_and_payload() {
        assert_eq!(client_frame_len(0), 6);
        assert_eq!(client_frame_len(125), 131);
        assert_eq!(client_frame_len(126), 134);
        assert_eq!(client_frame_len(65_536), 65_550);
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        let f = close_frame(CloseCode::AuthFailed);
        assert_eq!(f[0], 0x88);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4001);
        assert_eq!(&f[4..], b"Authentication failed");
    }

    #[test]
    fn custom_close_frames_cut_long_reasons_at_a_character() {
        let f = close_frame_with(4403, "banned");
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4403);
        assert_eq!(&f[4..], b"banned");
        let long = "é".repeat(100); // 200 bytes
        let f = close_frame_with(4001, &long);
        assert_eq!(
            f[1] as usize,
            2 + 122,
            "cut to 122 bytes, the last whole character"
        );
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    fn frag(fin: bool, opcode: OpCode, p: &[u8]) -> Frame<'static> {
        Frame::new(fin, opcode, None, Payload::Owned(p.to_vec()))
    }

    #[test]
    fn reassembles_fragments_and_enforces_caps() {
        let mut a = MessageAssembler::new(10, 3);
        assert!(a.push(frag(false, OpCode::Text, b"ab")).unwrap().is_none());
        assert!(a
            .push(frag(false, OpCode::Continuation, b"cd"))
            .unwrap()
            .is_none());
        let m = a
            .push(frag(true, OpCode::Continuation, b"ef"))
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"abcdef");
        assert_eq!(m.opcode, OpCode::Text);

        let mut a = MessageAssembler::new(10, 3);
        a.push(frag(false, OpCode::Text, b"123456")).unwrap();
        assert_eq!(
            a.push(frag(true, OpCode::Continuation, b"78901"))
                .unwrap_err(),
            FrameError::MessageTooBig
        );

        let mut a = MessageAssembler::new(100, 2);
        a.push(frag(false, OpCode::Binary, b"1")).unwrap();
        a.push(frag(false, OpCode::Continuation, b"2")).unwrap();
        assert_eq!(
            a.push(frag(true, OpCode::Continuation, b"3")).unwrap_err(),
            FrameError::TooManyFragments
        );

        let mut a = MessageAssembler::new(10, 3);
        assert_eq!(
            a.push(frag(true, OpCode::Continuation, b"x")).unwrap_err(),
            FrameError::StrayContinuation
        );
        assert_eq!(
            a.push(frag(true, OpCode::Text, &[0xff])).unwrap_err(),
            FrameError::InvalidUtf8
        );
        assert_eq!(
            a.push(frag(true, OpCode::Text, b"12345678901"))
                .unwrap_err(),
            FrameError::MessageTooBig
        );
    }

    #[test]
    fn invalid_utf8_fails_at_its_fragment() {
        let mut a = MessageAssembler::new(100, 10);
        a.push(frag(false, OpCode::Text, b"ok")).unwrap();
        assert_eq!(
            a.push(frag(false, OpCode::Continuation, &[0xff]))
                .unwrap_err(),
            FrameError::InvalidUtf8
        );
        // A truncated character at the very end is invalid too.
        let mut a = MessageAssembler::new(100, 10);
        a.push(frag(false, OpCode::Text, &"é".as_bytes()[..1]))
            .unwrap();
        assert_eq!(
            a.push(frag(true, OpCode::Continuation, b"")).unwrap_err(),
            FrameError::InvalidUtf8
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_accepted() {
        let mut a = MessageAssembler::new(10, 3);
        let e = "é".as_bytes();
        a.push(frag(false, OpCode::Text, &e[..1])).unwrap();
        let m = a
            .push(frag(true, OpCode::Continuation, &e[1..]))
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], e);
    }
}
