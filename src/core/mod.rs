//! The sans-IO core: chat rules as plain data structures driven by explicit calls and an
//! explicit `now`.
//!
//! Nothing here touches sockets, threads, clocks or storage, so every rule is unit tested with
//! simulated time. The `net` shell owns one instance of each structure per worker and feeds it
//! events; the core answers with decisions (deliver to these connections, start a backend call,
//! close with this code).
//!
//! - [`hub`]: every chat rule of one worker, fed inputs and answering with effects; it owns
//!   the structures below.
//! - [`clock`]: 4-byte millisecond timestamps for state every connection keeps.
//! - [`event`]: the kinds of room events and how each may be treated when a reader is behind.
//! - [`room`]: which local connections are in which chat, with de-duplicated fan-out.
//! - [`presence`]: per-user connection counts, reporting only first-open and last-close.
//! - [`typing`]: typing indicators with deadlines.
//! - [`history`]: cutting a `chat:history` page to a byte budget from the right end.
//! - [`pressure`]: which chats have readers behind, so their senders pause briefly.
//! - [`rate`]: the per-connection message rate limit (token bucket).
//! - [`stall`]: the stall rule (no progress while bytes wait), counted in looks.
//! - [`table`]: hash maps with an entry per connection or room, from the system allocator.
//! - [`session`]: one connection's rules — membership checks, rate-limited re-fetch of the
//!   user's chats, liveness.

pub mod clock;
pub mod event;
pub mod history;
pub mod hub;
pub mod presence;
pub mod pressure;
pub mod rate;
pub mod room;
pub mod session;
pub mod stall;
pub mod table;
pub mod typing;
