//! PID 1 inside the UML guest; see the library for the boot sequence. The
//! same binary is the guest's OCI runtime entry and docker's network hook
//! (`usmol_init::oci`), told apart by `argv[0]`.
use usmol_init::oci::{self, Role};

fn main() {
    match oci::role(std::env::args_os().next().as_deref()) {
        Role::Init => usmol_init::run(),
        Role::OciRuntime => oci::runtime_main(),
        Role::SetKey => oci::setkey_main(),
    }
}
