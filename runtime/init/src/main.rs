//! PID 1 inside the UML guest; see the library for the boot sequence.
fn main() {
    usmol_init::run()
}
