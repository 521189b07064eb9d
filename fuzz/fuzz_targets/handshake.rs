//! The upgrade-request parser fed arbitrary bytes: must never panic, and a parsed head never
//! claims more bytes than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use socket_server::net::handshake;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_req, used))) = handshake::parse(data) {
        assert!(used <= data.len());
    }
});
