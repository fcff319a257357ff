#![no_main]
//! Fuzz target; the body lives in burrow-conformance so the committed corpus replays in `cargo xtask test`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    burrow_conformance::fuzz::offload(data);
});
