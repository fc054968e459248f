//! PID 1 inside the UML guest.
fn main() {}
