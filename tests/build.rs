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
    let hello = compile(
        "fixtures/hello.c",
        &["-nostdlib", "-fno-pie", "-no-pie"],
        &out_dir.join("hello"),
    );
    println!("cargo::rustc-env=USMOL_TEST_HELLO_BIN={}", hello.display());
    let tool = compile(
        "fixtures/tool.c",
        &["-Wall", "-Werror"],
        &out_dir.join("tool"),
    );
    println!("cargo::rustc-env=USMOL_TEST_TOOL_BIN={}", tool.display());
    let probe = compile(
        "fixtures/hostfs_probe.c",
        &["-Wall", "-Werror", "-D_GNU_SOURCE"],
        &out_dir.join("hostfs_probe"),
    );
    println!(
        "cargo::rustc-env=USMOL_TEST_HOSTFS_PROBE_BIN={}",
        probe.display()
    );
    let prefault = compile(
        "fixtures/prefault_probe.c",
        &["-Wall", "-Werror"],
        &out_dir.join("prefault_probe"),
    );
    println!(
        "cargo::rustc-env=USMOL_TEST_PREFAULT_PROBE_BIN={}",
        prefault.display()
    );
    let clock = compile(
        "fixtures/clock_probe.c",
        &["-Wall", "-Werror"],
        &out_dir.join("clock_probe"),
    );
    println!(
        "cargo::rustc-env=USMOL_TEST_CLOCK_PROBE_BIN={}",
        clock.display()
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
