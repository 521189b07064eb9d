//! The JSON envelope parser (simd-json, in place) fed arbitrary bytes: must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use socket_server::protocol::inbound;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let _ = inbound::parse(&mut buf);
});
