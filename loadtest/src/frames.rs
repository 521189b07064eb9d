//! WebSocket frames (RFC 6455) without JSON: the load generator's hot path.
//!
//! Guarantees:
//! - [`parse_header`] reads a frame header (7-bit, 16-bit and 64-bit lengths, optional mask)
//!   from the front of a buffer, or says it needs more bytes; it never reads past the buffer.
//! - [`RecvBuf`] turns a byte stream cut at arbitrary points (one read may end mid-header or
//!   mid-payload) into whole frames, in order, each exactly once, without copying a frame
//!   that arrived whole. It grows only for a frame larger than itself, up to a bound.
//! - [`Inbox`] is the client's receiving side: it answers every ping with a masked pong of the
//!   same payload (queued on the caller's outgoing buffer), remembers a close, reassembles
//!   fragmented messages, and hands each complete data message to the caller with its
//!   [`Kind`], found from the `"type"` field by a byte comparison, never a JSON parse.
//! - [`encode_masked`] writes a client frame, masked as RFC 6455 requires of clients.
//!
//! Everything here is pure (no I/O), so it is unit-tested directly.

/// Continuation frame opcode.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// Largest header: 2 bytes + 8 bytes of length + 4 bytes of mask.
pub const MAX_HEADER: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Bytes taken by the header itself.
    pub header_len: usize,
    /// Payload length announced by the header.
    pub payload_len: u64,
}

/// A violation of the framing rules (the connection cannot go on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set without a negotiated extension.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    BadControlFrame,
    /// A frame (or reassembled message) larger than the configured bound.
    TooLarge(u64),
    /// A masked frame where unmasked ones are required, or the reverse.
    WrongMasking,
    /// A continuation without a message in progress, or a new message inside one.
    BadFragmentation,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ReservedBits => write!(f, "reserved bits set"),
            Self::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            Self::BadControlFrame => write!(f, "fragmented or oversized control frame"),
            Self::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the bound"),
            Self::WrongMasking => write!(f, "frame masking does not match the peer's role"),
            Self::BadFragmentation => write!(f, "bad fragmentation"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses the header at the front of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || (b1 & 0x7F) > 125 {
                return Err(FrameError::BadControlFrame);
            }
        }
        other => return Err(FrameError::UnknownOpcode(other)),
    }
    let masked = b1 & 0x80 != 0;
    let (payload_len, mut pos) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let k = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(k)
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len: pos,
        payload_len,
    }))
}

/// XORs `data` with the masking key, starting at key offset 0 (masking is its own inverse).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ k64).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize, masked: bool) {
    let m = if masked { 0x80 } else { 0 };
    out.push(0x80 | (opcode & 0x0F));
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends one complete (FIN) client frame to `out`, masked with `key`.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    push_header(out, opcode, payload.len(), true);
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// Appends one complete (FIN) unmasked frame to `out`, as a server sends it (tests use this).
pub fn encode_unmasked(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    push_header(out, opcode, payload.len(), false);
    out.extend_from_slice(payload);
}

/// Masking keys for client frames: xorshift64*, seeded per connection.
///
/// RFC 6455 wants unpredictable keys against cache-poisoning proxies; a load generator talking
/// to its own loopback server needs only that every frame is masked, so a fast PRNG is enough.
#[derive(Debug, Clone)]
pub struct MaskGen(u64);

impl MaskGen {
    /// A generator from a seed (any value; 0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next masking key.
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((r >> 32) as u32).to_ne_bytes()
    }
}

/// Which side of the connection reads with this buffer (decides the masking rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads server frames: they must be unmasked.
    Client,
    /// Reads client frames: they must be masked (unmasked here in place).
    Server,
}

/// One complete frame, payload already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Receive buffer: the socket reads into [`RecvBuf::spare`], whole frames come out of
/// [`RecvBuf::next_frame`].
#[derive(Debug)]
pub struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Size of the frame at `start` when it is known but not yet complete.
    need: usize,
    max_frame: usize,
    role: Role,
}

impl RecvBuf {
    /// A buffer of `capacity` bytes that accepts frames up to `max_frame` payload bytes.
    pub fn new(capacity: usize, max_frame: usize, role: Role) -> Self {
        Self {
            buf: vec![0; capacity.max(MAX_HEADER * 2)],
            start: 0,
            end: 0,
            need: 0,
            max_frame,
            role,
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Current capacity (grows only for frames larger than the buffer).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes (for data that arrived outside a read, e.g. after the handshake head).
    pub fn extend(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let spare = self.spare();
            let n = spare.len().min(data.len());
            spare[..n].copy_from_slice(&data[..n]);
            self.commit(n);
            data = &data[n..];
        }
    }

    /// Free space to read into; call [`RecvBuf::commit`] with the number of bytes read.
    /// Never empty.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let cap = self.buf.len();
        // Compact when the tail is short, so reads stay large and a partial frame is moved
        // (a few hundred bytes) at most once per buffer's worth of data.
        if self.start > 0 && (cap - self.end < cap / 4 || self.start + self.need > cap) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let wanted = self.need.max(self.end + 1);
        if wanted > self.buf.len() {
            let new_len = wanted.max(self.buf.len() * 2);
            self.buf.resize(new_len, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into the slice from [`RecvBuf::spare`].
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// The next complete frame, or `Ok(None)` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        let Some(h) = parse_header(avail)? else {
            return Ok(None);
        };
        match (self.role, h.mask.is_some()) {
            (Role::Client, false) | (Role::Server, true) => {}
            _ => return Err(FrameError::WrongMasking),
        }
        if h.payload_len > self.max_frame as u64 {
            return Err(FrameError::TooLarge(h.payload_len));
        }
        let total = h.header_len + h.payload_len as usize;
        if avail.len() < total {
            self.need = total;
            return Ok(None);
        }
        self.need = 0;
        let p0 = self.start + h.header_len;
        let p1 = self.start + total;
        self.start = p1;
        let payload = &mut self.buf[p0..p1];
        if let Some(key) = h.mask {
            apply_mask(payload, key);
        }
        Ok(Some(Frame {
            fin: h.fin,
            opcode: h.opcode,
            payload,
        }))
    }
}

/// What a text message is, from its `"type"` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `chat:message` broadcast.
    ChatMessage,
    /// `connected`: authentication done.
    Connected,
    /// `user:online` presence event.
    Presence,
    /// `pong` (the JSON one, answer to a JSON ping).
    Pong,
    /// `error`.
    Error,
    /// Any other type, a binary message, or no recognisable type.
    Other,
}

/// The value of the `"type"` field among the first bytes of a JSON object, without parsing it.
///
/// Both target servers put `type` first (`{"type":"chat:message",...`), which takes one
/// prefix comparison; otherwise the first `"type"` key anywhere is used (the bytes `"type"`
/// cannot occur inside a JSON string, where quotes are escaped; a nested object's `type`
/// before the top-level one would be mistaken for it, which no target server does).
pub fn type_name(p: &[u8]) -> Option<&[u8]> {
    const FAST: &[u8] = b"{\"type\":\"";
    let rest = if let Some(rest) = p.strip_prefix(FAST) {
        rest
    } else {
        const KEY: &[u8] = b"\"type\"";
        let at = find(p, KEY)?;
        let mut r = &p[at + KEY.len()..];
        while let [b' ' | b'\t' | b'\n' | b'\r' | b':', tail @ ..] = r {
            r = tail;
        }
        r.strip_prefix(b"\"")?
    };
    let end = rest.iter().take(32).position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// Classifies a text message by its type.
pub fn classify(payload: &[u8]) -> Kind {
    match type_name(payload) {
        Some(b"chat:message") => Kind::ChatMessage,
        Some(b"connected") => Kind::Connected,
        Some(b"user:online") => Kind::Presence,
        Some(b"pong") => Kind::Pong,
        Some(b"error") => Kind::Error,
        _ => Kind::Other,
    }
}

/// First position of `needle` in `hay` (short needles, short haystacks: a plain scan).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(off) => {
                let at = i + off;
                if &hay[at + 1..at + needle.len()] == rest {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// What one [`Inbox::drain`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Complete data messages handed to the callback.
    pub messages: u64,
    /// Pings answered (a pong was queued for each).
    pub pings: u64,
    /// The close code, if the server sent a close frame (1005 when it carried none).
    pub closed: Option<u16>,
}

/// The client's receiving side of one connection.
#[derive(Debug)]
pub struct Inbox {
    recv: RecvBuf,
    frag: Vec<u8>,
    frag_opcode: Option<u8>,
    max_message: usize,
    closed: Option<u16>,
}

impl Inbox {
    /// An inbox reading into a `capacity`-byte buffer, accepting messages up to `max_message`.
    pub fn new(capacity: usize, max_message: usize) -> Self {
        Self {
            recv: RecvBuf::new(capacity, max_message, Role::Client),
            frag: Vec::new(),
            frag_opcode: None,
            max_message,
            closed: None,
        }
    }

    /// Free space to read into.
    pub fn spare(&mut self) -> &mut [u8] {
        self.recv.spare()
    }

    /// Records `n` bytes read into [`Inbox::spare`].
    pub fn commit(&mut self, n: usize) {
        self.recv.commit(n);
    }

    /// Appends bytes received outside a read (after the handshake head).
    pub fn extend(&mut self, data: &[u8]) {
        self.recv.extend(data);
    }

    /// The close code, once a close frame was seen.
    pub fn closed(&self) -> Option<u16> {
        self.closed
    }

    /// Takes every complete frame: data messages go to `on_message(kind, payload)`, pings are
    /// answered by a masked pong appended to `tx`, a close is remembered (and stops the scan).
    pub fn drain<F>(
        &mut self,
        tx: &mut Vec<u8>,
        masks: &mut MaskGen,
        mut on_message: F,
    ) -> Result<Drained, FrameError>
    where
        F: FnMut(Kind, &[u8]),
    {
        let mut out = Drained::default();
        while self.closed.is_none() {
            let Some(f) = self.recv.next_frame()? else {
                break;
            };
            match f.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.frag_opcode.is_some() {
                        return Err(FrameError::BadFragmentation);
                    }
                    if f.fin {
                        let kind = if f.opcode == OP_TEXT {
                            classify(f.payload)
                        } else {
                            Kind::Other
                        };
                        on_message(kind, f.payload);
                        out.messages += 1;
                    } else {
                        self.frag.clear();
                        self.frag.extend_from_slice(f.payload);
                        self.frag_opcode = Some(f.opcode);
                    }
                }
                OP_CONTINUATION => {
                    let Some(op) = self.frag_opcode else {
                        return Err(FrameError::BadFragmentation);
                    };
                    if self.frag.len() + f.payload.len() > self.max_message {
                        return Err(FrameError::TooLarge(
                            (self.frag.len() + f.payload.len()) as u64,
                        ));
                    }
                    self.frag.extend_from_slice(f.payload);
                    if f.fin {
                        self.frag_opcode = None;
                        let kind = if op == OP_TEXT {
                            classify(&self.frag)
                        } else {
                            Kind::Other
                        };
                        on_message(kind, &self.frag);
                        out.messages += 1;
                    }
                }
                OP_PING => {
                    encode_masked(tx, OP_PONG, f.payload, masks.next_key());
                    out.pings += 1;
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let code = match f.payload {
                        [a, b, ..] => u16::from_be_bytes([*a, *b]),
                        _ => 1005,
                    };
                    self.closed = Some(code);
                    out.closed = Some(code);
                }
                _ => unreachable!("parse_header rejects other opcodes"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(i: usize) -> Vec<u8> {
        format!(
            r#"{{"type":"chat:message","payload":{{"chatId":"c0","message":{{"id":"m{i}","content":"hello {i}"}}}}}}"#
        )
        .into_bytes()
    }

    fn server_frame(op: u8, p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_unmasked(&mut v, op, p);
        v
    }

    type Fed = (Vec<(Kind, Vec<u8>)>, Vec<u8>, Drained);

    /// Feeds `stream` to an inbox in pieces of `chunk` bytes, collecting messages and pongs.
    fn feed(stream: &[u8], chunk: usize, cap: usize) -> Fed {
        let mut inbox = Inbox::new(cap, 1 << 20);
        let mut tx = Vec::new();
        let mut masks = MaskGen::new(7);
        let mut msgs = Vec::new();
        let mut total = Drained::default();
        for piece in stream.chunks(chunk) {
            let mut piece = piece;
            while !piece.is_empty() {
                let spare = inbox.spare();
                let n = spare.len().min(piece.len());
                spare[..n].copy_from_slice(&piece[..n]);
                inbox.commit(n);
                piece = &piece[n..];
                let d = inbox
                    .drain(&mut tx, &mut masks, |k, p| msgs.push((k, p.to_vec())))
                    .unwrap();
                total.messages += d.messages;
                total.pings += d.pings;
                total.closed = total.closed.or(d.closed);
            }
        }
        (msgs, tx, total)
    }

    #[test]
    fn header_lengths_7_16_64_bits() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let f = server_frame(OP_TEXT, &payload);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len, len as u64);
            let expect_hdr = if len < 126 {
                2
            } else if len <= 65_535 {
                4
            } else {
                10
            };
            assert_eq!(h.header_len, expect_hdr, "len {len}");
            assert_eq!(f.len(), expect_hdr + len);
            // Every strict prefix of the header asks for more bytes.
            for cut in 0..expect_hdr {
                assert_eq!(
                    parse_header(&f[..cut]).unwrap(),
                    None,
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            parse_header(&[0x81 | 0x40, 0]),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(parse_header(&[0x83, 0]), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(parse_header(&[0x09, 0]), Err(FrameError::BadControlFrame));
        assert_eq!(parse_header(&[0x89, 126]), Err(FrameError::BadControlFrame));
    }

    #[test]
    fn mask_roundtrip_and_known_vector() {
        // RFC 6455 section 5.7: masked "Hello".
        let mut out = Vec::new();
        encode_masked(&mut out, OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let mut rb = RecvBuf::new(64, 1024, Role::Server);
        rb.extend(&out);
        let f = rb.next_frame().unwrap().unwrap();
        assert_eq!(f.payload, b"Hello");
        // Long payloads go through the 8-byte path and back.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut m = data.clone();
        apply_mask(&mut m, [1, 2, 3, 4]);
        assert_ne!(m, data);
        apply_mask(&mut m, [1, 2, 3, 4]);
        assert_eq!(m, data);
    }

    #[test]
    fn masking_rule_per_role() {
        let mut rb = RecvBuf::new(64, 1024, Role::Client);
        let mut masked = Vec::new();
        encode_masked(&mut masked, OP_TEXT, b"x", [1, 2, 3, 4]);
        rb.extend(&masked);
        assert_eq!(rb.next_frame(), Err(FrameError::WrongMasking));
        let mut rb = RecvBuf::new(64, 1024, Role::Server);
        rb.extend(&server_frame(OP_TEXT, b"x"));
        assert_eq!(rb.next_frame(), Err(FrameError::WrongMasking));
    }

    #[test]
    fn frames_split_across_reads_at_every_size() {
        let mut stream = Vec::new();
        let mut expect = Vec::new();
        for i in 0..50 {
            let p = chat(i);
            stream.extend(server_frame(OP_TEXT, &p));
            expect.push(p);
        }
        // A 16-bit and a 64-bit length frame in the middle.
        let big16 = vec![b'a'; 300];
        let big64 = vec![b'b'; 70_000];
        stream.extend(server_frame(OP_TEXT, &big16));
        stream.extend(server_frame(OP_BINARY, &big64));
        stream.extend(server_frame(OP_TEXT, &chat(99)));
        for chunk in [1, 2, 3, 7, 13, 64, 100, 1000, 4096, stream.len()] {
            for cap in [32, 256, 65_536] {
                let (msgs, tx, d) = feed(&stream, chunk, cap);
                assert!(tx.is_empty());
                assert_eq!(d.messages, 53, "chunk {chunk} cap {cap}");
                assert_eq!(msgs.len(), 53);
                for (i, p) in expect.iter().enumerate() {
                    assert_eq!(&msgs[i].1, p);
                    assert_eq!(msgs[i].0, Kind::ChatMessage);
                }
                assert_eq!(msgs[50].1, big16);
                assert_eq!(msgs[50].0, Kind::Other);
                assert_eq!(msgs[51].1, big64);
                assert_eq!(msgs[52].1, chat(99));
            }
        }
    }

    #[test]
    fn buffer_does_not_grow_for_small_frames() {
        let mut stream = Vec::new();
        for i in 0..10_000 {
            stream.extend(server_frame(OP_TEXT, &chat(i)));
        }
        let mut inbox = Inbox::new(4096, 1 << 20);
        let (mut tx, mut masks, mut n) = (Vec::new(), MaskGen::new(1), 0);
        for piece in stream.chunks(1500) {
            inbox.extend(piece);
            n += inbox
                .drain(&mut tx, &mut masks, |_, _| {})
                .unwrap()
                .messages;
        }
        assert_eq!(n, 10_000);
        assert_eq!(inbox.recv.capacity(), 4096);
    }

    #[test]
    fn control_frames_interleaved_and_ping_answered() {
        let mut stream = Vec::new();
        stream.extend(server_frame(OP_TEXT, &chat(1)));
        stream.extend(server_frame(OP_PING, b"beat-1"));
        // A fragmented message with a ping between its fragments (allowed by RFC 6455).
        let whole = chat(2);
        let (a, b) = whole.split_at(10);
        let mut f1 = server_frame(OP_TEXT, a);
        f1[0] &= 0x7F; // clear FIN
        stream.extend(f1);
        stream.extend(server_frame(OP_PING, b""));
        stream.extend(server_frame(OP_PONG, b"ignored"));
        stream.extend(server_frame(OP_CONTINUATION, b));
        stream.extend(server_frame(
            OP_TEXT,
            br#"{"type":"user:online","payload":{}}"#,
        ));
        for chunk in [1, 5, 1000] {
            let (msgs, tx, d) = feed(&stream, chunk, 64);
            assert_eq!(d.messages, 3);
            assert_eq!(d.pings, 2);
            assert_eq!(msgs[0], (Kind::ChatMessage, chat(1)));
            assert_eq!(msgs[1], (Kind::ChatMessage, whole.clone()));
            assert_eq!(msgs[2].0, Kind::Presence);
            // The answers: two masked pongs carrying the pings' payloads, in order.
            let mut rb = RecvBuf::new(64, 1024, Role::Server);
            rb.extend(&tx);
            let p1 = rb.next_frame().unwrap().unwrap();
            assert_eq!(
                (p1.opcode, p1.fin, p1.payload),
                (OP_PONG, true, &b"beat-1"[..])
            );
            let p2 = rb.next_frame().unwrap().unwrap();
            assert_eq!((p2.opcode, p2.payload), (OP_PONG, &b""[..]));
            assert_eq!(rb.next_frame().unwrap(), None);
        }
    }

    #[test]
    fn close_stops_the_scan() {
        let mut stream = server_frame(OP_TEXT, &chat(1));
        stream.extend(server_frame(OP_CLOSE, &4001u16.to_be_bytes()));
        stream.extend(server_frame(OP_TEXT, &chat(2)));
        let (msgs, _, d) = feed(&stream, 1000, 256);
        assert_eq!(msgs.len(), 1);
        assert_eq!(d.closed, Some(4001));
    }

    #[test]
    fn bad_fragmentation_and_size() {
        let mut inbox = Inbox::new(64, 100);
        inbox.extend(&server_frame(OP_CONTINUATION, b"x"));
        let r = inbox.drain(&mut Vec::new(), &mut MaskGen::new(1), |_, _| {});
        assert_eq!(r, Err(FrameError::BadFragmentation));
        let mut inbox = Inbox::new(64, 100);
        inbox.extend(&server_frame(OP_TEXT, &[b'x'; 101]));
        let r = inbox.drain(&mut Vec::new(), &mut MaskGen::new(1), |_, _| {});
        assert_eq!(r, Err(FrameError::TooLarge(101)));
    }

    #[test]
    fn classify_types() {
        assert_eq!(classify(&chat(1)), Kind::ChatMessage);
        assert_eq!(
            classify(br#"{"type":"connected","payload":{"userId":"u1"}}"#),
            Kind::Connected
        );
        assert_eq!(classify(br#"{"type":"pong","payload":{}}"#), Kind::Pong);
        assert_eq!(classify(br#"{"type":"error","payload":{}}"#), Kind::Error);
        assert_eq!(
            classify(br#"{ "type" : "chat:message" }"#),
            Kind::ChatMessage
        );
        assert_eq!(
            classify(br#"{"payload":{},"type":"user:online"}"#),
            Kind::Presence
        );
        assert_eq!(classify(br#"{"type":"chat:typing"}"#), Kind::Other);
        // Sorted keys put type last, far from the start.
        let sorted = br#"{"payload":{"chatId":"c0","message":{"content":"say \"type\": \"x\"","id":"m1"}},"type":"chat:message"}"#;
        assert_eq!(classify(sorted), Kind::ChatMessage);
        assert_eq!(classify(b"not json"), Kind::Other);
        assert_eq!(classify(br#"{"type":"unterminated"#), Kind::Other);
    }

    #[test]
    fn find_substring() {
        assert_eq!(find(b"abc\"lt:1:2:3\"", b"\"lt:"), Some(3));
        assert_eq!(find(b"lt", b"lt:"), None);
        assert_eq!(find(b"xxlt:", b"lt:"), Some(2));
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"aaab", b"ab"), Some(2));
    }

    #[test]
    fn mask_keys_vary() {
        let mut g = MaskGen::new(0);
        let a = g.next_key();
        let b = g.next_key();
        assert_ne!(a, b);
    }
}
