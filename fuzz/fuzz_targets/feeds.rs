//! Fuzz target; the body is `sipwarden::fuzzing::fuzz_feeds`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sipwarden::fuzzing::fuzz_feeds(data);
});
