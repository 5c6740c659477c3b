//! Fuzz target; the body is `sipwarden::fuzzing::fuzz_wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sipwarden::fuzzing::fuzz_wire(data);
});
