//! libFuzzer target: the input is the `data.tar` of a package.
#![no_main]

#[path = "../src/deb.rs"]
mod deb;

libfuzzer_sys::fuzz_target!(|data: &[u8]| deb::check(data));
