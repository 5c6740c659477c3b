//! Fuzz target; the body is `sipwarden::fuzzing::fuzz_hep` (the HEP
//! decoder, stream framing and intake), replayed by `cargo test`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sipwarden::fuzzing::fuzz_hep(data);
});
