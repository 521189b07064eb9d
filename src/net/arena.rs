//! The worker's frame arena: a room event's frame copied once per worker and pass of the event
//! loop, then written from there to every local recipient.
//!
//! Without it, each recipient's outbox copies the frame into a buffer of its own: 32 copies of
//! every message in a 32-member chat, and 32 buffers that grow (and move) as a pass queues
//! more. With it, the first recipient copies the frame into the arena and every recipient's
//! outbox keeps a [`Span`] of it (an offset pair); the spans of one chunk that follow each
//! other merge, so an outbox that gets every event of a pass holds one span, written with the
//! others in one vectored write, and the kernel reads the same cache-warm bytes for every
//! socket.
//!
//! Guarantees: a span's bytes never change while it exists (the arena only appends to a chunk,
//! and clears one only when no span refers to it). Not guaranteed: that a chunk is short-lived.
//! A span kept past its pass would pin its whole chunk, so an outbox keeps spans only while its
//! socket is idle (it is flushed at the end of the pass) and takes out what the socket does
//! not take before it waits ([`crate::net::outbox`]): a copy of its own up to a write chunk,
//! past that a slice of one frozen copy of the chunk that every reader left behind in the pass
//! shares, so a burst that many readers cannot take costs its bytes once more, not once per
//! reader. At the end of each flush pass the arena drops that frozen copy and any chunk grown
//! past `CHUNK_KEEP`.

use std::cell::{Ref, RefCell};
use std::rc::Rc;

use bytes::Bytes;

/// First capacity of a chunk.
const CHUNK_INITIAL: usize = 16 * 1024;
/// Most bytes a chunk keeps between passes; a chunk that grew larger (one big pass) is
/// replaced by a new one rather than kept.
const CHUNK_KEEP: usize = 4 << 20;
/// Most bytes appended to one chunk before the next frame starts a new one (offsets are 32-bit,
/// and a chunk pinned by a span should stay bounded).
const CHUNK_MAX: usize = 16 << 20;

/// A run of bytes in an arena chunk, and the frozen copy of it that readers left behind in
/// this pass share (see [`Span::to_shared_bytes`]).
pub struct Chunk {
    /// The frames, appended one after the other.
    bytes: RefCell<Vec<u8>>,
    /// A frozen copy of `bytes` (or of a prefix of it), shared by readers left behind.
    frozen: RefCell<Option<Bytes>>,
}

thread_local! {
    /// The chunk this thread appends to.
    static CURRENT: RefCell<Option<Rc<Chunk>>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Frozen copies made on this thread (tests count them).
    static FREEZES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Frozen copies made on this thread so far.
#[cfg(test)]
pub(crate) fn freezes() -> usize {
    FREEZES.with(|f| f.get())
}

/// Called at the end of each flush pass: the current chunk lets go of its frozen copy (the
/// readers that share it hold their own references), and a chunk that one large pass grew
/// past `CHUNK_KEEP` is freed now rather than kept until the next event.
pub fn end_of_pass() {
    let _ = CURRENT.try_with(|current| {
        let mut current = current.borrow_mut();
        if let Some(chunk) = current.as_ref() {
            chunk.frozen.borrow_mut().take();
            if chunk.bytes.borrow().capacity() > CHUNK_KEEP {
                // Spans still referring to it keep it alive; the arena starts a new one.
                current.take();
            }
        }
    });
}

/// Bytes `start..end` of an arena chunk.
#[derive(Clone)]
pub struct Span {
    chunk: Rc<Chunk>,
    start: u32,
    end: u32,
}

impl Span {
    /// Copies `frame` into this thread's arena.
    pub fn copy(frame: &[u8]) -> Span {
        CURRENT.with(|current| {
            let mut current = current.borrow_mut();
            let chunk = match current.take() {
                // No span refers to it any more: start over in the same memory.
                Some(chunk) if Rc::strong_count(&chunk) == 1 => {
                    let keep = chunk.bytes.borrow().capacity() <= CHUNK_KEEP;
                    if keep {
                        chunk.bytes.borrow_mut().clear();
                        chunk.frozen.borrow_mut().take();
                        chunk
                    } else {
                        Self::fresh()
                    }
                }
                Some(chunk) if chunk.bytes.borrow().len() + frame.len() <= CHUNK_MAX => chunk,
                // Too full (or none yet): the old chunk lives on while its spans do.
                _ => Self::fresh(),
            };
            let span = {
                let mut bytes = chunk.bytes.borrow_mut();
                let start = bytes.len();
                bytes.extend_from_slice(frame);
                Span {
                    chunk: chunk.clone(),
                    // Within CHUNK_MAX, or a single frame larger than it starting at 0.
                    start: u32::try_from(start).unwrap_or(u32::MAX),
                    end: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                }
            };
            *current = Some(chunk);
            span
        })
    }

    fn fresh() -> Rc<Chunk> {
        Rc::new(Chunk {
            bytes: RefCell::new(Vec::with_capacity(CHUNK_INITIAL)),
            frozen: RefCell::new(None),
        })
    }

    /// Bytes in the span.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Grows this span by `next` if `next` starts where this one ends, in the same chunk.
    pub fn extend(&mut self, next: &Span) -> bool {
        let follows = self.end == next.start && Rc::ptr_eq(&self.chunk, &next.chunk);
        if follows {
            self.end = next.end;
        }
        follows
    }

    /// Drops the first `n` bytes (at most the span's length).
    pub fn advance(&mut self, n: usize) {
        self.start = self.end.min(
            self.start
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX)),
        );
    }

    /// Whether `self` and `other` lie in the same chunk.
    pub fn same_chunk(&self, other: &Span) -> bool {
        Rc::ptr_eq(&self.chunk, &other.chunk)
    }

    /// The span's chunk, borrowed for reading (see [`Span::bytes_in`]).
    pub fn chunk(&self) -> Ref<'_, Vec<u8>> {
        self.chunk.bytes.borrow()
    }

    /// The span's bytes within its chunk, as borrowed by [`Span::chunk`] of this span or of one
    /// in the same chunk.
    pub fn bytes_in<'c>(&self, chunk: &'c [u8]) -> &'c [u8] {
        &chunk[self.start as usize..self.end as usize]
    }

    /// How many spans (and the arena itself, while current) refer to the span's chunk.
    #[cfg(test)]
    pub(crate) fn refs(&self) -> usize {
        Rc::strong_count(&self.chunk)
    }

    /// A copy of the span's bytes that does not pin the chunk.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.bytes_in(&self.chunk()))
    }

    /// The span's bytes as a slice of one frozen copy of the whole chunk, made by the first
    /// span that asks and shared by every later one (until the chunk grows past it): a burst
    /// that several readers cannot take costs its bytes once more, not once per reader.
    pub fn to_shared_bytes(&self) -> Bytes {
        let mut frozen = self.chunk.frozen.borrow_mut();
        let end = self.end as usize;
        let copy = match frozen.as_ref() {
            Some(copy) if copy.len() >= end => copy.clone(),
            _ => {
                #[cfg(test)]
                FREEZES.with(|f| f.set(f.get() + 1));
                let copy = Bytes::copy_from_slice(&self.chunk());
                *frozen = Some(copy.clone());
                copy
            }
        };
        copy.slice(self.start as usize..end)
    }
}

/// A room event's frame on its way to a worker's recipients: copied into the arena by the
/// first recipient that takes a span of it, shared by the rest.
pub struct EventFrame<'a> {
    frame: &'a Bytes,
    span: Option<Span>,
}

impl<'a> EventFrame<'a> {
    /// The event's encoded frame, not copied yet.
    pub fn new(frame: &'a Bytes) -> Self {
        Self { frame, span: None }
    }

    /// The encoded frame.
    pub fn bytes(&self) -> &'a Bytes {
        self.frame
    }

    /// The frame's span in the arena, copied there on first use.
    pub fn span(&mut self) -> &Span {
        let frame = self.frame;
        self.span.get_or_insert_with(|| Span::copy(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(span: &Span) -> Vec<u8> {
        span.bytes_in(&span.chunk()).to_vec()
    }

    #[test]
    fn frames_copied_in_a_row_merge_into_one_span() {
        let mut a = Span::copy(b"one,");
        let b = Span::copy(b"two");
        assert!(a.extend(&b));
        assert_eq!(read(&a), b"one,two");
        assert_eq!(a.len(), 7);
        // Not adjacent: `a` now ends where `b` ends, and `b` does not follow `b`.
        let mut b2 = b.clone();
        assert!(!b2.extend(&b));
    }

    #[test]
    fn readers_left_behind_share_one_frozen_copy_until_the_chunk_grows() {
        let a = Span::copy(b"first,");
        let b = Span::copy(b"second");
        let before = freezes();
        let (sa, sb) = (a.to_shared_bytes(), b.to_shared_bytes());
        assert_eq!((&sa[..], &sb[..]), (&b"first,"[..], &b"second"[..]));
        assert_eq!(freezes() - before, 1, "one copy for both spans");
        // Both are slices of that one copy: `b` lies right behind `a` in it.
        assert_eq!(sb.as_ptr() as usize, sa.as_ptr() as usize + sa.len());
        let c = Span::copy(b"third");
        assert_eq!(&c.to_shared_bytes()[..], b"third");
        assert_eq!(
            freezes() - before,
            2,
            "the chunk grew past the copy: copied again"
        );
        end_of_pass();
        assert_eq!(&a.to_shared_bytes()[..], b"first,");
        assert_eq!(freezes() - before, 3, "the pass ended: the copy was let go");
        assert_eq!(&sa[..], b"first,", "slices already taken stay valid");
    }

    #[test]
    fn a_chunk_is_reused_only_once_no_span_refers_to_it() {
        let a = Span::copy(b"kept");
        let b = Span::copy(b"next");
        assert!(a.same_chunk(&b), "appended while spans exist");
        assert_eq!(read(&a), b"kept", "earlier bytes stay as they were");
        drop((a, b));
        let c = Span::copy(b"over");
        assert_eq!(
            (c.start, c.end),
            (0, 4),
            "an unreferenced chunk starts over"
        );
    }

    #[test]
    fn an_event_is_copied_once_however_many_take_its_span() {
        let frame = Bytes::from_static(b"event");
        let mut event = EventFrame::new(&frame);
        let first = event.span().clone();
        let second = event.span().clone();
        assert!(first.same_chunk(&second) && first.start == second.start);
        assert_eq!(read(&second), b"event");
    }

    #[test]
    fn advancing_drops_written_bytes_and_stops_at_the_end() {
        let mut s = Span::copy(b"abcdef");
        s.advance(2);
        assert_eq!(read(&s), b"cdef");
        s.advance(100);
        assert!(s.is_empty());
        assert_eq!(s.to_bytes().len(), 0);
    }
}
