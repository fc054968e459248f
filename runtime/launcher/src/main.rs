//! The image entrypoint (`run`): boots the UML guest around a command.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(usmol_launcher::main_with(args))
}
