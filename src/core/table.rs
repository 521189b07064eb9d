//! Tables with an entry per connection or per room: hash maps whose storage comes from the
//! system allocator.
//!
//! A hash map grows by moving into a table twice the size and freeing the old one. Freed by
//! the process allocator (mimalloc), old tables stay resident: mimalloc returns free memory to
//! the system only after a delay and only while it is being called, so after a connect storm
//! the tables a worker outgrew remain in its RSS (measured: 20-70 bytes per idle connection at
//! 15,000 connections, see BENCHMARKS.md). From the system allocator, tables this large are
//! mappings of their own (glibc serves requests above its mmap threshold with `mmap`, and a
//! table that grows is always larger than the last one freed), so an outgrown table goes back
//! to the system when it is freed. Lookups and inserts are hashbrown's, as in `std`.
//!
//! Not guaranteed: small tables (below glibc's threshold, 128 KiB at first) come from glibc's
//! heap like any small allocation.

use std::alloc::System;
use std::hash::RandomState;

/// A hash map with its table from the system allocator (see the module documentation).
pub type Table<K, V> = hashbrown::HashMap<K, V, RandomState, System>;

/// An empty [`Table`].
pub fn table<K, V>() -> Table<K, V> {
    hashbrown::HashMap::with_hasher_in(RandomState::new(), System)
}
