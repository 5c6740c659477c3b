//! Arbitrary bytes through the Event Socket framing, both event formats and
//! the event mapping. The body lives in the library so `cargo test` replays
//! this target's corpus and past crashes without a fuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sipwarden::source::esl::fuzz_frames(data);
});
