//! Arbitrary bytes through the Asterisk manager banner, framing and event
//! mapping. The body lives in the library so `cargo test` replays this
//! target's corpus and past crashes without a fuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sipwarden::fuzzing::fuzz_ami(data);
});
