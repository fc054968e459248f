//! Builds the tests' hello-world program: a static, libc-free executable that
//! becomes the nested container's image.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from("fixtures/hello.c");
    println!("cargo::rerun-if-changed={}", source.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("hello");
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(["-static", "-nostdlib", "-fno-pie", "-no-pie", "-Os", "-s", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("running {} for {}: {e}", compiler.path().display(), source.display()));
    assert!(status.success(), "compiling {} failed", source.display());
    println!("cargo::rustc-env=USMOL_TEST_HELLO_BIN={}", out.display());
}
