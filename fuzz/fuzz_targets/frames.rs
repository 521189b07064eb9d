//! The frame reader (fastwebsockets with the production rules: limits, masking, control
//! frames, reassembly) fed an arbitrary client byte stream: must never panic nor hand over a
//! message above the size limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use socket_server::net::reader::{decode_stream, Limits, Step};

const LIMITS: Limits = Limits { max_message_size: 10_000, max_fragments: 64 };

fuzz_target!(|data: &[u8]| {
    for step in decode_stream(data, LIMITS) {
        if let Step::Message(m) = step {
            assert!(m.payload.len() <= LIMITS.max_message_size);
        }
    }
});
