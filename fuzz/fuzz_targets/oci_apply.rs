//! libFuzzer target: the input is one or more layer tars (see `layer.rs`).
#![no_main]

#[path = "../src/layer.rs"]
mod layer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| layer::check(data));
