//! `usmol`: the builder's command line.
fn main() {}
