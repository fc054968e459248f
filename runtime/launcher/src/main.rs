//! The image entrypoint: boots the UML guest around a command.
fn main() {}
