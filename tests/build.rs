//! Builds the tests' static programs, which become the nested containers'
//! images (no registry is reachable):
//! - `hello`: a libc-free hello-world (image `hello-world:latest`);
//! - `tool`: a multi-call file helper (image `usmol-tool:latest`);
//! - `hostfs_probe`: tries to leave hostfs's confinement from the guest;
//! - `prefault_probe`: which pages of a fresh mapping a few writes bring in;
//! - `clock_probe`: what the vDSO's clocks read, and whether they trap.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let fixture = |name: &str, flags: &[&str], env: &str| {
        let bin = compile(&format!("fixtures/{name}.c"), flags, &out_dir.join(name));
        println!("cargo::rustc-env={env}={}", bin.display());
    };
    fixture(
        "hello",
        &["-nostdlib", "-fno-pie", "-no-pie"],
        "USMOL_TEST_HELLO_BIN",
    );
    fixture("tool", &["-Wall", "-Werror"], "USMOL_TEST_TOOL_BIN");
    fixture(
        "hostfs_probe",
        &["-Wall", "-Werror", "-D_GNU_SOURCE"],
        "USMOL_TEST_HOSTFS_PROBE_BIN",
    );
    fixture(
        "prefault_probe",
        &["-Wall", "-Werror"],
        "USMOL_TEST_PREFAULT_PROBE_BIN",
    );
    fixture(
        "clock_probe",
        &["-Wall", "-Werror"],
        "USMOL_TEST_CLOCK_PROBE_BIN",
    );
}

/// Compiles one C file into a static, stripped executable.
fn compile(source: &str, flags: &[&str], out: &Path) -> PathBuf {
    println!("cargo::rerun-if-changed={source}");
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(["-static", "-Os", "-s"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("running {} for {source}: {e}", compiler.path().display()));
    assert!(status.success(), "compiling {source} failed");
    out.to_owned()
}
